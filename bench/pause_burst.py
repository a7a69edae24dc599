"""Calls in a burst after a pause: per position in the burst, the median time over rounds.

    PYTHONPATH=. python bench/pause_burst.py [--cell GRU] [--hidden 256] [--rounds 8]
                                             [--calls 6] [--pause 0.15] [--threads 2]
                                             [--onnxruntime]
    FASTRNN_WORKER_PLACEMENT=0 PYTHONPATH=. python bench/pause_burst.py   (placement off)

Each round sleeps ``--pause`` seconds (the OpenMP worker goes to sleep), then times
``--calls`` calls of B=1 T=100 back to back (``--threads``, default 2).  The first
position shows the pause rule (one thread below ``_threads.IDLE_SINGLE_MACS``), the next
ones the wake of the worker (README, Threads and concurrency).  With ``--calls 30`` the
line ends with calls 2-6 over calls 20-30 (how long the burst runs slow after the pause).
``--onnxruntime``: the same rounds for ONNX Runtime on the same weights (needs torch and
onnxruntime; its session made as bench_speed.py makes it).  No timing thresholds.
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnxruntime", action="store_true")
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    x = np.random.default_rng(0).standard_normal((100, 1, a.hidden)).astype(np.float32)
    runs = {}
    if a.onnxruntime:
        import os
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch
        from bench_speed import models, ort_session
        torch.set_num_threads(a.threads)
        cell = {"SimpleRNN": "RNN"}.get(a.cell, a.cell)
        tm, fm = models(cell, 1, False, a.hidden, "float32")
        sess = ort_session(tm, x)
        runs["fastrnn"] = lambda: fm(x)
        runs["onnxruntime"] = lambda: sess.run(None, {"x": x})
    else:
        layer = getattr(fastrnn, a.cell)(a.hidden, a.hidden, seed=0)
        runs["fastrnn"] = lambda: layer(x)
    rows = {k: [] for k in runs}
    for fn in runs.values():
        for _ in range(20):
            fn()
    for _ in range(a.rounds):
        for k, fn in runs.items():
            time.sleep(a.pause)
            ts = []
            for _ in range(a.calls):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            rows[k].append(ts)
    for k, r in rows.items():
        r = np.array(r)
        med = np.median(r, axis=0) * 1e3
        tail = (f"; calls 2-6 / calls 20-30: {np.median(r[:, 1:6]) / np.median(r[:, 19:30]):.2f}"
                if a.calls >= 30 else "")
        print(f"{k}: {a.cell} B=1 T=100 H={a.hidden}, {a.threads} thread(s), after {a.pause} s: "
              "per-position medians (ms): " + ", ".join(f"{v:.2f}" for v in med) + tail)


if __name__ == "__main__":
    main()
