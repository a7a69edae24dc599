"""A fresh process's cold start: ``import numpy``, ``import fastrnn``, the first layer
call (the kernels' extension modules and scipy's BLAS loaded, the weights packed) and the
second, in new Python processes.

    PYTHONPATH=. python bench/cold_start.py [--runs 7] [--cell LSTM] [--hidden 256]
    PYTHONPATH=. python bench/cold_start.py --model tests/fixtures/keras/k2_bi_modes_embed.h5

Prints each phase's median over the runs (one process each, run one after another,
byte-code caches written by the first).  ``--model FILE``: instead of a layer made in
the process, ``fastrnn.load(FILE)`` and two ``predict`` calls on the input stored beside
it (``FILE`` with ``.npz`` for its suffix, array ``x``: the test fixtures' layout).
``--train``: the calls are training steps (``forward_train`` + ``backward`` of ones).
Only fastrnn; no timing thresholds.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import fastrnn
t2 = time.perf_counter()
if sys.argv[1] == "--model":
    layer = fastrnn.load(sys.argv[2]).predict
    x = np.load(sys.argv[2].rsplit(".", 1)[0] + ".npz")["x"]
else:
    layer = getattr(fastrnn, sys.argv[1])(int(sys.argv[2]), int(sys.argv[2]), seed=0)
    x = np.zeros((100, 1, int(sys.argv[2])), np.float32)
    if sys.argv[3:] == ["train"]:
        from fastrnn import train
        lay = layer

        def layer(x):
            out, _, cache = train.forward_train(lay, x)
            train.backward(lay, cache, np.ones_like(out))
t3 = time.perf_counter()
layer(x)
t4 = time.perf_counter()
layer(x)
t5 = time.perf_counter()
print(json.dumps(dict(numpy=t1 - t0, fastrnn=t2 - t1, layer=t3 - t2, first=t4 - t3,
                      second=t5 - t4, linalg="scipy.linalg" in sys.modules,
                      special="scipy.special" in sys.modules)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--model", default=None)
    ap.add_argument("--train", action="store_true")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)       # (as an installed package: cached)
    runs = []
    for _ in range(a.runs + 1):
        args = (["--model", a.model] if a.model
                else [a.cell, str(a.hidden)] + (["train"] if a.train else []))
        r = subprocess.run([sys.executable, "-c", PROBE] + args,
                           capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(r.stdout))
    runs = runs[1:]                                 # (the first wrote the caches)
    parts = [f"{k} {np.median([r[k] for r in runs]) * 1e3:.1f} ms"
             for k in ("numpy", "fastrnn", "layer", "first", "second")]
    what = (f"{os.path.basename(a.model)} (load, predict)" if a.model
            else f"{a.cell}({a.hidden}) B=1 T=100 (make the layer, "
                 f"{'training step' if a.train else 'call'})")
    val = [p.split(" ", 1)[1] for p in parts]
    print(f"{what}, median of {a.runs} processes: import numpy {val[0]}, import fastrnn "
          f"{val[1]}, {'load' if a.model else 'make the layer'} {val[2]}, first call "
          f"{val[3]}, second call {val[4]}; scipy.linalg imported: {runs[0]['linalg']}, "
          f"scipy.special: {runs[0]['special']}")


if __name__ == "__main__":
    main()
