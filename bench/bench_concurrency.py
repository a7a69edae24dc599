"""Concurrency and streaming overhead.

    PYTHONPATH=. python bench/bench_concurrency.py            # table
    pytest bench/bench_concurrency.py --benchmark-only         # pytest-benchmark groups

1. Aggregate throughput of one shared model called from 1, 2 (and 4) Python threads, each
   call single-threaded inside (num_threads=1): with the GIL released during compute,
   2 threads on 2 cores approach 2x.
2. Per-call cost of Stream.step for one LSTM step at B=1, H=256 (target <= 10 us of
   overhead on top of the arithmetic, see the speed issue), beside a bare layer call.
"""
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import fastrnn  # noqa: E402
from fastrnn.stream import Stream  # noqa: E402

CASES = [("LSTM", 1, 100, 256), ("LSTM", 16, 50, 256), ("GRU", 8, 50, 128)]


def throughput(layer, x, n_threads, seconds=1.5):
    """Calls per second summed over ``n_threads`` threads running for ``seconds``."""
    counts = [0] * n_threads
    stop = threading.Event()
    barrier = threading.Barrier(n_threads + 1)

    def work(k):
        barrier.wait()
        while not stop.is_set():
            layer(x, num_threads=1)
            counts[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def step_overhead(H=256, n=3000):
    layer = fastrnn.LSTM(H, H, seed=0, num_threads=1)
    x = np.random.default_rng(0).standard_normal((1, H)).astype(np.float32)
    s = Stream(layer)
    for _ in range(200):
        s.step(x)
    t0 = time.perf_counter()
    for _ in range(n):
        s.step(x)
    t_stream = (time.perf_counter() - t0) / n
    h = (np.zeros((1, 1, H), np.float32), np.zeros((1, 1, H), np.float32))
    x3 = x[None]
    for _ in range(200):
        layer(x3, h)
    t0 = time.perf_counter()
    for _ in range(n):
        _, h = layer(x3, h)
    t_layer = (time.perf_counter() - t0) / n
    # the arithmetic alone: numpy matvec of the same sizes (a lower bound of sorts)
    W = np.random.default_rng(1).standard_normal((4 * H, 2 * H)).astype(np.float32)
    v = np.zeros(2 * H, np.float32)
    t0 = time.perf_counter()
    for _ in range(n):
        W @ v
    t_mv = (time.perf_counter() - t0) / n
    return t_stream, t_layer, t_mv


def main():
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"fastrnn {fastrnn.__version__}, {ncpu} cores available")
    print(f"{'case':<24}{'1 thread':>12}{'2 threads':>12}{'4 threads':>12}{'speedup 2/1':>14}")
    for cell, B, T, H in CASES:
        layer = getattr(fastrnn, cell)(H, H, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        layer(x)
        r = [throughput(layer, x, n) for n in (1, 2, 4)]
        print(f"{cell} B={B} T={T} H={H}".ljust(24) + "".join(f"{v:>8.1f}/s   " for v in r)
              + f"{r[1] / r[0]:>10.2f}x")
    ts, tl, tmv = step_overhead()
    print(f"\none LSTM step, B=1, H=256, 1 thread: Stream.step {ts * 1e6:.1f} us, "
          f"layer(x, hx) {tl * 1e6:.1f} us, numpy matvec (4H x 2H) {tmv * 1e6:.1f} us")


# ---------------------------------------------------------------- pytest-benchmark
def test_stream_step_lstm_h256(benchmark):
    layer = fastrnn.LSTM(256, 256, seed=0, num_threads=1)
    s = Stream(layer)
    x = np.ones((1, 256), np.float32)
    benchmark.group = "stream one step LSTM B=1 H=256"
    benchmark(s.step, x)


def test_shared_model_two_threads(benchmark):
    layer = fastrnn.LSTM(256, 256, seed=0)
    x = np.ones((50, 16, 256), np.float32)
    benchmark.group = "shared model, 2 Python threads"
    benchmark.pedantic(lambda: throughput(layer, x, 2, seconds=0.5), rounds=3)


if __name__ == "__main__":
    main()
