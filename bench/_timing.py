"""Timing helper shared by the small scripts in bench/ (no peers imported here)."""
import time

import numpy as np


def median_call(fn, n):
    """Median wall time in seconds of n calls of fn()."""
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
