"""The forward kernel paths of one build side by side, in one process.

    PYTHONPATH=. python bench/bench_paths.py                       # the default cases
    PYTHONPATH=. python bench/bench_paths.py --cases RNN:16:100:256,LSTM:64:50:512 \
        --rounds 25 --threads 2 --dtype float32 [--ragged] [--calls 5]

For each case (CELL:B:T:H, I = H; CELL one of RNN, LSTM, GRU, GRU0 = GRU with
reset_after=False) the layer runs on the packed kernel ("small"), the
batch-lane kernel with its automatic split ("wide-panels": by panels of rows where each
thread gets whole panels, else by groups) and split by unit groups ("wide-groups"), and
an LSTM also through the training forward ("lstm-route", ``layers._fused_lstm_dir``),
and the automatic choice ("auto": whichever of these a user's call takes), one call each
(``--calls N``: a warm-up call, then the median of N) in turn, the order rotating every
round, so a noisy minute slows all of them alike.  Prints per path the fastest call (or
per-round median), its GFLOP/s and the median over rounds of
(path time / small time) of the same round.  These are the figures behind
``_kernels.choose_path``'s choice of the batch-lane kernel (and, with
``--cases LSTM:...``, ``_backward.fused_lstm_route_at``'s).
"""
from __future__ import annotations

import argparse

import numpy as np
from _timing import median_call, ragged_lengths   # (bench/ is the script's directory)

import fastrnn
from fastrnn import _backward, _kernels, layers

CELLS = {"RNN": fastrnn.SimpleRNN, "LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU,
         "GRU0": lambda *a, **k: fastrnn.GRU(*a, reset_after=False, **k)}
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3, "GRU0": 3}
PATHS = ("small", "wide-panels", "wide-groups", "auto")
DEFAULT = ("RNN:8:100:256,RNN:16:100:256,RNN:64:50:512,LSTM:16:100:256,LSTM:64:50:512,"
           "GRU:16:100:256,GRU:64:50:512")


def _set(path: str) -> None:
    if path == "auto":          # the automatic choice (as a user's call)
        _kernels._set_path(0)
        _kernels._set_wide_split(0)
        layers._FUSED_LSTM_MIN_B = -1
        return
    _kernels._set_path(1 if path in ("small", "lstm-route") else 3)
    _kernels._set_wide_split(1 if path == "wide-groups" else 0)
    layers._FUSED_LSTM_MIN_B = 1 if path == "lstm-route" else 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--ragged", action="store_true",
                    help="lengths T/2..T (the first T) instead of a dense batch")
    ap.add_argument("--calls", type=int, default=1,
                    help="calls a path per round (more than 1: a warm-up call first and "
                         "the median of these; one call right after a path switch can "
                         "misjudge a path's steady cost)")
    a = ap.parse_args(argv)
    dt = np.dtype(a.dtype)
    print(f"isa {_kernels.isa()}, {a.threads} threads, {dt.name}, {a.rounds} rounds")
    try:
        for case in a.cases.split(","):
            cell, B, T, H = case.split(":")
            B, T, H = int(B), int(T), int(H)
            layer = CELLS[cell](H, H, seed=0, num_threads=a.threads, dtype=dt)
            x = np.random.default_rng(0).standard_normal((T, B, H)).astype(dt)
            kw = {}
            if a.ragged:
                kw["lengths"] = ragged_lengths(T, B)
            paths = PATHS + (("lstm-route",) if cell == "LSTM"
                             and _backward.fused_lstm_forward_fast() else ())
            times = {p: [] for p in paths}
            for p in paths:
                _set(p)
                layer(x, **kw)                # warm-up (packing, pages)
            for r in range(a.rounds):
                k = r % len(paths)
                for p in paths[k:] + paths[:k]:
                    _set(p)
                    if a.calls > 1:
                        layer(x, **kw)
                    times[p].append(median_call(lambda: layer(x, **kw), a.calls))
            flops = 2.0 * B * T * GATES[cell] * H * 2 * H
            small = np.array(times["small"])
            parts = []
            for p in paths:
                t = np.array(times[p])
                parts.append(f"{p} {t.min() * 1e3:.2f} ms ({flops / t.min() / 1e9:.0f} GFLOP/s, "
                             f"x{np.median(t / small):.2f})")
            print(f"{cell} B={B} T={T} H={H}: " + "; ".join(parts))
    finally:
        _kernels._set_path(0)
        _kernels._set_wide_split(0)
        layers._FUSED_LSTM_MIN_B = -1


if __name__ == "__main__":
    main()
