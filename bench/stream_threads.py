"""Streaming steps in the main thread and in another Python thread (GRU(256, 256), B=1,
1,000 steps; num_threads None / 1 / 2), and whole calls of 100 steps, per place.

    PYTHONPATH=. python bench/stream_threads.py
    OMP_WAIT_POLICY=active PYTHONPATH=. python bench/stream_threads.py

Each Python thread that runs a parallel region gets its own OpenMP team; once the teams'
threads outnumber the CPUs, libgomp's threads sleep between regions and in its barriers
instead of spinning, and a streaming step (a region of its own) pays their wake-ups; such
steps move to one thread by themselves (fr_kern.h, fr_wake_after).  No timing thresholds.
"""
import threading, time, numpy as np, fastrnn
from fastrnn import _threads
layer = fastrnn.GRU(256, 256)
T = 1000
x = np.random.default_rng(0).standard_normal((T, 1, 256)).astype(np.float32)
ref = layer(x, num_threads=1)[0]
def run(nt, out):
    s = fastrnn.Stream(layer, num_threads=nt); ts = []; ys = []
    for t in range(T):
        a = time.perf_counter(); ys.append(s.step(x[t])); ts.append(time.perf_counter() - a)
    out.append((np.median(ts) * 1e6, np.percentile(ts, 90) * 1e6, np.abs(np.stack(ys) - ref).max(), _threads.step_threads(nt)))
def whole(nt, out):
    ts = []
    for _ in range(30):
        a = time.perf_counter(); layer(x[:100], num_threads=nt); ts.append(time.perf_counter() - a)
    out.append(np.median(ts) * 1e3)
for where in ("main", "thread", "main"):
    for nt in (None, 1, 2):
        o = []; w = []
        if where == "main": run(nt, o); whole(nt, w)
        else:
            t = threading.Thread(target=lambda: (run(nt, o), whole(nt, w))); t.start(); t.join()
        print(f"{where:6s} nt={nt}: step median {o[0][0]:.1f} us p90 {o[0][1]:.1f} (count {o[0][3]}, maxdiff {o[0][2]:.1e}); whole-call T=100 {w[0]:.2f} ms", flush=True)
