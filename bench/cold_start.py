"""A fresh process's cold start: ``import numpy``, ``import fastrnn``, the first layer
call (the kernels' extension modules and scipy's BLAS loaded, the weights packed) and the
calls after it, in new Python processes.

    PYTHONPATH=. python bench/cold_start.py [--runs 7] [--cell LSTM] [--hidden 256] [--calls 100]
    PYTHONPATH=. python bench/cold_start.py --model tests/fixtures/keras/k2_bi_modes_embed.h5

Prints each phase's median over the runs (one process each, run one after another,
byte-code caches written by the first).  ``--model FILE``: instead of a layer made in
the process, ``fastrnn.load(FILE)`` and its ``predict`` (a PyTorch checkpoint: the layer)
on the input stored beside it (``FILE`` with ``.npz`` for its suffix, array ``x`` or the
first ``in:`` one: the test fixtures' layouts).
``--train``: the calls are training steps (``forward_train`` + ``backward`` of ones).
``--calls N``: after the first call, N more back to back: the second's time, their
median, total and how many took over twice their median (a process's first ~0.1 s, while
threads made at load may still be spinning).  Only fastrnn; no timing thresholds.
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
calls, argv = int(sys.argv[1]), sys.argv[2:]
if argv[0] == "--model":
    m = fastrnn.load(argv[1])
    layer = getattr(m, "predict", m)              # (a PyTorch checkpoint: its layer)
    npz = np.load(argv[1].rsplit(".", 1)[0] + ".npz")
    x = npz["x"] if "x" in npz.files else npz[[k for k in npz.files if k[:3] == "in:"][0]]
else:
    layer = getattr(fastrnn, argv[0])(int(argv[1]), int(argv[1]), seed=0)
    x = np.zeros((100, 1, int(argv[1])), np.float32)
    if argv[2:] == ["train"]:
        from fastrnn import train
        lay = layer

        def layer(x):
            out, _, cache = train.forward_train(lay, x)
            train.backward(lay, cache, np.ones_like(out))
t3 = time.perf_counter()
layer(x)
t4 = time.perf_counter()
after = []
for _ in range(calls):
    t5 = time.perf_counter()
    layer(x)
    after.append(time.perf_counter() - t5)
print(json.dumps(dict(numpy=t1 - t0, fastrnn=t2 - t1, layer=t3 - t2, first=t4 - t3,
                      after=after, linalg="scipy.linalg" in sys.modules,
                      special="scipy.special" in sys.modules)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--model", default=None)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args(argv)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)       # (as an installed package: cached)
    runs = []
    for _ in range(a.runs + 1):
        args = (["--model", a.model] if a.model
                else [a.cell, str(a.hidden)] + (["train"] if a.train else []))
        r = subprocess.run([sys.executable, "-c", PROBE, str(max(1, a.calls))] + args,
                           capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(r.stdout))
    runs = runs[1:]                                 # (the first wrote the caches)
    for r in runs:
        t = np.array(r["after"])
        r.update(second=t[0], median=np.median(t), total=t.sum(),
                 slow=float(np.sum(t > 2 * np.median(t))))
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
    n = len(runs[0]["after"])
    print(f"the {n} calls after the first: median {med(runs, 'median')} ms, total "
          f"{med(runs, 'total')} ms, over twice the median: {med(runs, 'slow', 1)} calls "
          f"(medians of the processes; per process {[int(r['slow']) for r in runs]})")


def med(runs, key, scale=1e3):
    return f"{np.median([r[key] for r in runs]) * scale:.{1 if scale == 1 else 2}f}"


if __name__ == "__main__":
    main()
