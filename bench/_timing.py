"""Timing and case helpers shared by the small scripts in bench/ (no peers imported here)."""
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


def ragged_lengths(T, B):
    """The lengths of a ragged batch of B sequences in the rule-measuring scripts
    (bench_paths.py, hooks_ab.py ``--ragged``): T/2..T drawn with seed 1, the first T."""
    lengths = np.random.default_rng(1).integers(T // 2, T + 1, B)
    lengths[0] = T
    return lengths
