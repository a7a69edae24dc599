"""Python overhead of a model stream's step, against another revision's ``stream.py``.

    PYTHONPATH=. python bench/stream_overhead.py --against HEAD~1

Times ``Stream.step`` of ``Model([KerasRNN(LSTM(8, 8)), Dense(8, 4)])`` at B=1 on one
thread (a tiny layer, so the time is mostly Python): with this checkout's
``fastrnn/stream.py`` and with ``git show REV:fastrnn/stream.py`` loaded beside it as a
second module (the kernels and layers are this checkout's), alternating, minima of
``--repeat`` x ``--number`` calls, in microseconds.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import timeit
import types

import numpy as np


def _stream_module(rev):
    """fastrnn/stream.py of git revision ``rev`` as a module of the fastrnn package."""
    src = subprocess.run(["git", "show", f"{rev}:fastrnn/stream.py"], check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("fastrnn._stream_at_rev")
    mod.__package__ = "fastrnn"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{rev}:fastrnn/stream.py", "exec"), mod.__dict__)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="HEAD", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--number", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)

    import fastrnn
    from fastrnn import stream
    from fastrnn.model import Dense, KerasRNN, Model
    fastrnn.set_num_threads(1)
    core = fastrnn.LSTM(8, 8, batch_first=True, seed=0)

    def model():
        return Model([KerasRNN(core, return_sequences=True), Dense(np.ones((8, 4)))])
    old = _stream_module(a.against).Stream(model(), batch_size=1)
    new = stream.Stream(model(), batch_size=1)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(old.step(x), new.step(x))
    for _ in range(a.rounds):
        t = [min(timeit.repeat(lambda s=s: s.step(x), number=a.number,
                               repeat=a.repeat)) / a.number * 1e6 for s in (old, new)]
        print(f"{a.against}: {t[0]:.3f} us   this checkout: {t[1]:.3f} us   "
              f"difference {t[1] - t[0]:+.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
