"""A model served from a thread pool: requests arrive at random (Poisson) at a given rate,
a pool of Python threads runs each as one layer call (GRU(256, 256), B=1, T=100, the
default thread count), and the latency from arrival to result is reported, with the
crowded-call rule (``fastrnn._threads.CROWD_SHARE``: a batch of one that starts while
another thread's call runs, or where a quarter of the recent calls did, runs on one
thread) on and off, alternating in one process.

    PYTHONPATH=. python bench/serve_threads.py
    PYTHONPATH=. python bench/serve_threads.py --rates 600 1800 --pool 8 --rounds 3

Also the closed loop (each pool thread calls back to back): calls a second and the
latency's percentiles.  No timing thresholds.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastrnn
from fastrnn import _threads


def open_loop(layer, x, rate, pool, seconds, rng):
    def req(t0):
        layer(x)
        return time.perf_counter() - t0
    with ThreadPoolExecutor(pool) as ex:
        futs = []
        nxt = time.perf_counter()
        end = nxt + seconds
        while nxt < end:
            nxt += rng.exponential(1 / rate)
            d = nxt - time.perf_counter()
            if d > 0:
                time.sleep(d)
            futs.append(ex.submit(req, nxt))
        return np.array([f.result() for f in futs]) * 1e3


def closed_loop(layer, x, pool, calls):
    def worker(_):
        ts = []
        for _ in range(calls):
            a = time.perf_counter()
            layer(x)
            ts.append(time.perf_counter() - a)
        return ts
    t = time.perf_counter()
    with ThreadPoolExecutor(pool) as ex:
        ts = np.concatenate(list(ex.map(worker, range(pool))))
    return len(ts) / (time.perf_counter() - t), ts * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=float, nargs="+", default=[600, 1200, 1800, 2400])
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    a = ap.parse_args()
    layer = fastrnn.GRU(a.hidden, a.hidden, seed=0)
    x = np.random.default_rng(0).standard_normal((100, 1, a.hidden)).astype(np.float32)
    for _ in range(50):
        layer(x)
    share = _threads.CROWD_SHARE
    rng = np.random.default_rng(1)
    print(f"GRU({a.hidden}, {a.hidden}) B=1 T=100, pool of {a.pool} threads, "
          f"{fastrnn.get_num_threads()} threads a call by default; ms")
    for r in range(a.rounds):
        for rule in ("on", "off"):
            _threads.CROWD_SHARE = share if rule == "on" else None
            for rate in a.rates:
                lat = open_loop(layer, x, rate, a.pool, a.seconds, rng)
                print(f"round {r} rule {rule:3s} {rate:6.0f}/s: mean {lat.mean():7.2f} median "
                      f"{np.median(lat):6.2f} p90 {np.percentile(lat, 90):7.2f} p99 "
                      f"{np.percentile(lat, 99):7.2f} (n={len(lat)})", flush=True)
            cps, ts = closed_loop(layer, x, a.pool, 200)
            print(f"round {r} rule {rule:3s} closed loop: {cps:6.0f} calls/s, median "
                  f"{np.median(ts):.2f} p90 {np.percentile(ts, 90):.2f} max {ts.max():.1f}",
                  flush=True)
    _threads.CROWD_SHARE = share


if __name__ == "__main__":
    main()
