"""Calls in a burst after a pause: per position in the burst, the median time over rounds.

    PYTHONPATH=. python bench/pause_burst.py [--cell GRU] [--hidden 256] [--rounds 8]
                                             [--calls 6] [--pause 0.15]
    FASTRNN_WORKER_PLACEMENT=0 PYTHONPATH=. python bench/pause_burst.py   (placement off)

Each round sleeps ``--pause`` seconds (the OpenMP worker goes to sleep), then times
``--calls`` calls of B=1 T=100 back to back (2 threads).  The first position shows the
pause rule (one thread below ``_threads.IDLE_SINGLE_MACS``), the next ones the wake of the
worker (README, Threads and concurrency).  No peers; no timing thresholds.
"""
import argparse
import time

import numpy as np

import fastrnn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="GRU", choices=["LSTM", "GRU", "SimpleRNN"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--pause", type=float, default=0.15)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(2)
    layer = getattr(fastrnn, a.cell)(a.hidden, a.hidden, seed=0)
    x = np.random.default_rng(0).standard_normal((100, 1, a.hidden)).astype(np.float32)
    for _ in range(20):
        layer(x)
    rows = []
    for _ in range(a.rounds):
        time.sleep(a.pause)
        ts = []
        for _ in range(a.calls):
            t0 = time.perf_counter()
            layer(x)
            ts.append(time.perf_counter() - t0)
        rows.append(ts)
    med = np.median(np.array(rows), axis=0) * 1e3
    print(f"{a.cell} B=1 T=100 H={a.hidden}, 2 threads, after {a.pause} s: per-position "
          "medians (ms): " + ", ".join(f"{v:.2f}" for v in med))


if __name__ == "__main__":
    main()
