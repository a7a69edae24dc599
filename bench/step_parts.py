"""Where a streaming step's time goes: fastrnn.Stream.step against the layers under it.

    PYTHONPATH=. python bench/step_parts.py                  # LSTM H=256 B=1, 2 threads
    PYTHONPATH=. python bench/step_parts.py --hidden 8 --threads 1

Times (median and minimum over ``--calls`` calls in 5 rounds, each after 200 warm-up
calls, microseconds) of the same one-step call made at each level:

* ``Stream.step``: the public streaming entry (what ``bench/cells_step.py`` times);
* ``layer._step_fast``: the layer's lean step entry it calls (thread count, kept plan);
* ``StepPlan.step_copy``: the kernel module's entry (argument checks, a new output array);
* ``StepPlan.step``: the same without the output array;
* an empty Python call, the timer's own cost.

The differences are the Python layers' costs; ``StepPlan.step`` is the kernel with its
thread hand-over.  At a tiny size (``--hidden 8 --threads 1``) the kernel's work is
negligible and the figures are the fixed costs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _median_min(fn, n):
    ts = []
    for _ in range(5):
        for _ in range(200):
            fn()
        for _ in range(n // 5):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6, min(ts) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3000)
    a = ap.parse_args(argv)

    import fastrnn
    fastrnn.set_num_threads(a.threads)
    H = a.hidden
    cell = fastrnn.LSTMCell(H, H, seed=0)
    x = np.random.default_rng(0).standard_normal((1, H)).astype(np.float32)
    stream = fastrnn.Stream(cell.layer, batch_size=1)
    stream.step(x)                      # (makes and keeps the layer's step plan)
    layer = cell.layer
    h, c = stream._runners[0].state
    plan = layer._step_entry[2]
    nt = a.threads
    print(f"LSTM H={H} B=1 float32, {nt} thread(s), {a.calls} calls (us: median, min)")
    for label, fn in (("Stream.step", lambda: stream.step(x)),
                      ("layer._step_fast", lambda: layer._step_fast(x, h, c, nt, True)),
                      ("StepPlan.step_copy", lambda: plan.step_copy(x, h, c)),
                      ("StepPlan.step", lambda: plan.step(x, h, c)),
                      ("empty call", lambda: None)):
        med, lo = _median_min(fn, a.calls)
        print(f"  {label:<20} {med:8.2f} {lo:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
