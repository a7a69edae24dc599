"""The backward of a bidirectional layer: both directions at once (``backward_pair``, one
thread each) against one after the other (each on the layer's threads), in one process,
interleaved.

    PYTHONPATH=. python bench/backward_pair.py [--rounds 7 --calls 3 --gap 0.05]
        [--cells LSTM,GRU,RNN --hidden 64,128,256,512 --batch 1,4,8,16,64 --layers 1,2
         --dtypes f32,f64 --steps 50 --threads 2]

Cells: LSTM, GRU (reset_after), RNN (tanh), GRU0 (reset_after=False), LSTMP (proj_size
H / 2).  Per case (I = H, T steps, ``need_input_grad=False`` as for a first layer in training):
one ``forward_train``, then rounds that each time ``layer.backward`` with
``_backward._set_bwd_pair(1)`` (pair) and ``_set_bwd_pair(2)`` (sequential), in
alternating order, each a visit of ``_interleave.visit`` (a pause, one warm-up call, then
``--calls`` timed calls; the sample is their median).  Prints the medians, the median of
the per-round ratios pair / sequential with their range, the ratio of the fastest calls
(``best``: least disturbed by other load on a shared machine), and what the automatic rule
(``_backward.pair_applies``) chooses for the layer (its last layer's input size; ``mixed``
when the layers differ).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import fastrnn
from fastrnn import _backward

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleave import visit  # noqa: E402

# cell names: GRU0 is a GRU with reset_after=False, LSTMP an LSTM with proj_size H / 2
CODES = {"RNN": 0, "LSTM": 1, "LSTMP": 1, "GRU": 2, "GRU0": 2}


def _options(cell, H):
    return {"GRU0": dict(reset_after=False), "LSTMP": dict(proj_size=H // 2)}.get(cell, {})


def _layer(cell, H, L, dt, nt):
    cls = {"RNN": fastrnn.RNN, "LSTM": fastrnn.LSTM, "LSTMP": fastrnn.LSTM,
           "GRU": fastrnn.GRU, "GRU0": fastrnn.GRU}[cell]
    return cls(H, H, num_layers=L, bidirectional=True, dtype=np.dtype(dt).name,
               num_threads=nt, seed=0, **_options(cell, H))


def _rule(layer, cell, B, H, nt, dt):
    """The automatic rule's choice for each layer of ``layer`` ('pair', 'seq', 'mixed')."""
    old = _backward._set_bwd_pair(0)
    try:
        P = layer.proj_size
        got = {bool(_backward.pair_applies(CODES[cell], B, H, P, In,
                                           int(layer.reset_after), nt,
                                           np.dtype(dt).itemsize))
               for In in ([H] + [2 * (P or H)] * (layer.num_layers - 1))}
    finally:
        _backward._set_bwd_pair(old)
    return "mixed" if len(got) > 1 else ("pair" if got.pop() else "seq")


def run_case(cell, H, B, L, dt, T, nt, rounds, calls, gap):
    layer = _layer(cell, H, L, dt, nt)
    x = np.random.default_rng(1).standard_normal((T, B, H)).astype(dt)
    out, _, cache = layer.forward_train(x)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(dt)

    def call(mode):
        def fn():
            old = _backward._set_bwd_pair(mode)
            try:
                layer.backward(cache, g, need_input_grad=False)
            finally:
                _backward._set_bwd_pair(old)
        return fn

    fns = {"pair": call(1), "seq": call(2)}
    for f in fns.values():
        f()
    meds = {k: [] for k in fns}
    mins = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):            # alternate who goes first
        for k in (order if r % 2 == 0 else order[::-1]):
            med, mn = visit(fns[k], calls, gap)
            meds[k].append(med)
            mins[k].append(mn)
    ratios = np.array(meds["pair"]) / np.array(meds["seq"])
    return (float(np.median(meds["seq"])) * 1e3, float(np.median(meds["pair"])) * 1e3,
            float(np.median(ratios)), float(ratios.min()), float(ratios.max()),
            min(mins["pair"]) / min(mins["seq"]), _rule(layer, cell, B, H, nt, dt))


def main(argv=None):
    ap = argparse.ArgumentParser(description="bidirectional backward: pair vs sequential")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--cells", default="LSTM,GRU,RNN")
    ap.add_argument("--hidden", default="64,128,256,512")
    ap.add_argument("--batch", default="1,4,8,16,64")
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--dtypes", default="f32,f64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    dts = {"f32": np.float32, "f64": np.float64}
    print(f"T={a.steps} threads={a.threads} rounds={a.rounds} calls={a.calls} "
          f"level={_backward.small_gemm_level()}")
    print("cell  dtype   H   B  L   seq ms  pair ms  pair/seq [min-max]  best  rule",
          flush=True)
    for dname in a.dtypes.split(","):
        for cell in a.cells.split(","):
            for H in ints(a.hidden):
                for B in ints(a.batch):
                    for L in ints(a.layers):
                        seq, pair, r, lo, hi, best, rule = run_case(
                            cell, H, B, L, dts[dname], a.steps, a.threads, a.rounds,
                            a.calls, a.gap)
                        print(f"{cell:5s} {dname:5s} {H:4d} {B:3d} {L:2d} {seq:8.2f} "
                              f"{pair:8.2f}  {r:5.2f} [{lo:4.2f}-{hi:4.2f}]  {best:4.2f}"
                              f"  {rule}", flush=True)


if __name__ == "__main__":
    main()
