"""A/B of the two rules that keep small calls on one thread, in one process.

    PYTHONPATH=. python bench/small_threads.py --knob call --values 2^17,2^19 \\
        --cases LSTM:1:10:64,GRU:1:5:64:bi [--rounds 11] [--threads 2]

``--knob call``: ``fastrnn.layers._SMALL_CALL_MACS`` (a call of at most that many
multiply-adds runs on one thread; 0 turns the rule off); ``--knob step``: the kernels'
``fr_min_par_work`` (multiply-adds a step below which the packed kernel keeps one
thread; ``_kernels._set_min_parallel_work``).  A case is CELL:B:T:H[:bi] (CELL one of
LSTM, GRU, SimpleRNN; input size = H; float32, random weights).  Each round calls the
layer under every value in turn (a burst each); the table gives each value's median
over rounds and its time over the first value's.  Two-thread small calls depend on
the machine's cross-core hand-over cost (on a shared VM it changes from minute to
minute): compare values within one run only.  No thresholds.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import median_call  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import _kernels, layers  # noqa: E402


def _value(v: str) -> int:
    return 1 << int(v[2:]) if v.startswith("2^") else int(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--knob", choices=("call", "step"), default="call")
    ap.add_argument("--values", default="2^17,2^19")
    ap.add_argument("--cases", default="LSTM:1:10:64,SimpleRNN:1:20:128,GRU:1:5:64:bi")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    values = [_value(v) for v in a.values.split(",")]
    old_call = layers._SMALL_CALL_MACS
    old_step = _kernels._set_min_parallel_work(16384)
    _kernels._set_min_parallel_work(old_step)

    def apply(v):
        if a.knob == "call":
            layers._SMALL_CALL_MACS = v
        else:
            _kernels._set_min_parallel_work(v)
    print(f"{'case':24s} {'multiply-adds':>13s}  " + "  ".join(f"{v:>9d}" for v in values)
          + "   (us, medians; ratios to the first)")
    try:
        for case in a.cases.split(","):
            cell, B, T, H, *opts = case.split(":")
            B, T, H = int(B), int(T), int(H)
            layer = getattr(fastrnn, cell)(H, H, bidirectional="bi" in opts, seed=0)
            x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
            layer(x)
            n = max(20, int(3e-3 / max(median_call(lambda: layer(x), 5), 1e-7)))
            res = {v: [] for v in values}
            for _ in range(a.rounds):
                for v in values:
                    apply(v)
                    layer(x)
                    res[v].append(median_call(lambda: layer(x), n))
            m = [float(np.median(res[v])) * 1e6 for v in values]
            print(f"{case:24s} {B * layer._macs(T):13d}  " + "  ".join(f"{t:9.1f}" for t in m)
                  + "   " + " ".join(f"{t / m[0]:.2f}" for t in m[1:]), flush=True)
    finally:
        layers._SMALL_CALL_MACS = old_call
        _kernels._set_min_parallel_work(old_step)


if __name__ == "__main__":
    main()
