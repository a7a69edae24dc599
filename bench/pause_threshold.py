"""The first call after a pause on one thread against two, by size: where the pause rule's
threshold (``_threads.idle_single_macs``) should sit on this machine.

    PYTHONPATH=. python bench/pause_threshold.py [--rounds 14] [--pause 0.15] \
        [--sizes LSTM:64,GRU:128,LSTM:192,LSTM:256]

Per round and setting (one thread after a pause / two threads, alternating), each layer
(B=1 T=100, input size = H, float32) is called once after ``--pause`` seconds without a
call, and that call is timed.  Prints per layer its multiply-adds and the median times and
their ratio (two threads / one: above 1, one thread is faster after a pause).  No peers,
no timing thresholds.
"""
import argparse
import time

import numpy as np

import fastrnn
from fastrnn import _threads

SIZES = ("LSTM:64,GRU:96,LSTM:96,GRU:128,LSTM:128,GRU:160,LSTM:160,GRU:192,LSTM:192,"
         "GRU:224,LSTM:224,LSTM:256")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--pause", type=float, default=0.15)
    ap.add_argument("--sizes", default=SIZES)
    a = ap.parse_args(argv)
    layers = []
    for spec in a.sizes.split(","):
        cell, H = spec.split(":")
        H = int(H)
        G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cell]
        layer = getattr(fastrnn, cell)(H, H, seed=0, num_threads=2)
        x = np.random.default_rng(0).standard_normal((100, 1, H)).astype(np.float32)
        layer(x)
        layers.append((f"{cell} H={H} ({100 * G * H * 2 * H / 1e6:.1f}M)", layer, x))
    saved, res = _threads.IDLE_SINGLE_MACS, {}
    try:
        for r in range(a.rounds):
            for one in ((True, False) if r % 2 == 0 else (False, True)):
                # one thread after a pause at every size, or at none
                _threads.IDLE_SINGLE_MACS = 1 << 62 if one else 0
                for name, layer, x in layers:
                    time.sleep(a.pause)
                    t0 = time.perf_counter()
                    layer(x)
                    res.setdefault((name, one), []).append(time.perf_counter() - t0)
    finally:
        _threads.IDLE_SINGLE_MACS = saved
    for name, _, _ in layers:
        two, one = np.median(res[(name, False)]), np.median(res[(name, True)])
        print(f"{name:22s} 2 threads {two * 1e3:.3f} ms  1 thread {one * 1e3:.3f} ms  "
              f"2/1 {two / one:.2f}")


if __name__ == "__main__":
    main()
