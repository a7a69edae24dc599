"""One visit of an interleaved benchmark (bench_interleaved.py, bench_backward.py).

A pause (``gap`` seconds: thread pools that spin after a call, ONNX Runtime's, PyTorch's
OpenMP, OpenBLAS's, fastrnn's, go to sleep and do not steal the cores from the next
implementation), one warm-up call (its weights and scratch back in cache after the other
implementations evicted them; ``warmup=False`` skips it), then ``calls`` timed calls.
Returns their median and minimum in seconds.
"""
import time

import numpy as np


def visit(fn, calls, gap, warmup=True):
    time.sleep(gap)
    if warmup:
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), min(ts)
