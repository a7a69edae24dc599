"""Two threads against one over a grid of small layers, in one process.

    PYTHONPATH=. python bench/thread_grid.py GRU,SimpleRNN 32,48,64,96 2,4,8 \
        [--steps 100] [--dtype float64] [--isa 1] [--packed]

For each cell, hidden size H (input size H) and batch B, the layer runs T steps with
``num_threads=2`` and with ``num_threads=1`` in turn (the order alternating every round,
so a noisy minute slows both alike; each burst starts with an untimed call, which wakes a
worker that slept through the other burst) and the line prints the median over rounds of
(2-thread time / 1-thread time), with the multiply-adds of one step of the batch in
brackets.  ``--isa 1`` caps the kernels at AVX2 (``_kernels._set_isa_level``);
``--packed`` keeps a plain LSTM off the training forward (``layers._FUSED_LSTM_MIN_B
= 0``), so that the packed kernel's split is what is timed.  The pause rule is off (no
call here follows a pause).  These are the figures behind the packed kernel's rule for
splitting the units of 2-15 rows (``small_layer_impl`` in ``fastrnn/fr_kern_t.h``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn import _kernels, _threads, layers

CELLS = {"SimpleRNN": fastrnn.SimpleRNN, "GRU": fastrnn.GRU, "LSTM": fastrnn.LSTM}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells")
    ap.add_argument("hidden")
    ap.add_argument("batches")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--isa", type=int, default=-1)
    ap.add_argument("--packed", action="store_true")
    a = ap.parse_args(argv)
    dt = np.dtype(a.dtype)
    _threads.IDLE_SINGLE_S = -1.0
    _kernels._set_isa_level(a.isa)
    if a.packed:
        layers._FUSED_LSTM_MIN_B = 0
    print(f"isa {_kernels.isa()}, {dt.name}, T={a.steps}, 2 threads / 1 thread")
    for cell in a.cells.split(","):
        for H in (int(v) for v in a.hidden.split(",")):
            row = []
            for B in (int(v) for v in a.batches.split(",")):
                layer = CELLS[cell](H, H, seed=0, dtype=dt)
                x = np.random.default_rng(0).standard_normal((a.steps, B, H)).astype(dt)
                times = {1: [], 2: []}
                for nt in (1, 2):
                    layer(x, num_threads=nt)            # warm-up (packing, plans)
                reps = min(50, max(3, int(3e5 / (B * H * H / 4 + 1))))
                for r in range(a.rounds):
                    for nt in ((1, 2) if r % 2 else (2, 1)):
                        layer(x, num_threads=nt)    # (wakes a worker asleep since the
                        t0 = time.perf_counter()    # other burst: not timed)
                        for _ in range(reps):
                            layer(x, num_threads=nt)
                        times[nt].append((time.perf_counter() - t0) / reps)
                ratio = float(np.median(np.array(times[2]) / np.array(times[1])))
                row.append(f"B={B}:{ratio:.2f}({B * layer._macs(1) // 1000}k)")
            print(cell, f"H={H}", " ".join(row), flush=True)


if __name__ == "__main__":
    main()
