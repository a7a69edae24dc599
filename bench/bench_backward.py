"""Forward + backward (training step) beside torch autograd (pytest-benchmark).

    PYTHONPATH=. python -m pytest bench/bench_backward.py --benchmark-only \
        --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

Groups ``train <cell> B=.. T=.. H=..`` (I = H, one layer, float32, 2 threads each;
``BiLSTM`` / ``BiGRU``: bidirectional, where fastrnn's backward may run the two
directions at once, ``_backward.pair_applies``):

* ``torch autograd``: ``y, _ = m(x); y.sum().backward()`` (grads set to None before; x
  does not require grad, as for the first layer in training),
* ``fastrnn``: ``out, _, cache = layer.forward_train(x)`` then
  ``layer.backward(cache, ones, need_input_grad=False)``: the same work,
* ``torch autograd +dX`` / ``fastrnn +dX``: the same with the input gradient as well
  (``x.requires_grad_()`` / ``need_input_grad=True``),
* ``fastrnn forward_train`` / ``fastrnn inference``: the forward halves, for scale.

Run as a script for a ratio table from interleaved runs (robust on a busy machine):
``PYTHONPATH=. python bench/bench_backward.py [--rounds 9 --calls 3 --gap 0.15]``.  Every
round visits every implementation as bench_interleaved.py does (``_interleave.visit``: a
pause so the other library's spinning threads sleep, one warm-up call, then ``--calls``
timed calls; the visit's sample is their median).  Until 2026-12-04 the script timed one
call per visit, right after the previous implementation's (``--calls 1 --gap 0
--no-warmup``): that call found the other library's thread pool still spinning on the
two cores and its own data evicted, which costs whoever runs second.  Target: fastrnn <=
0.8x torch.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pytest

import fastrnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleave import visit  # noqa: E402

torch = pytest.importorskip("torch")

THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", "2"))     # (as bench_speed.py)
CASES = [("LSTM", 16, 100, 256), ("GRU", 16, 100, 256),
         ("LSTM", 64, 50, 512), ("GRU", 64, 50, 512),
         ("BiLSTM", 8, 100, 128), ("BiGRU", 16, 100, 64)]


def _setup(cell, B, T, H):
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    bi = cell.startswith("Bi")
    m = getattr(torch.nn, cell[2:] if bi else cell)(H, H, bidirectional=bi)
    layer = fastrnn.from_torch(m, num_threads=THREADS)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    xg = torch.from_numpy(x.copy()).requires_grad_()
    ones = np.ones((T, B, (2 if bi else 1) * H), np.float32)

    def run_torch():
        for p in m.parameters():
            p.grad = None
        y, _ = m(xt)
        y.sum().backward()

    def run_torch_dx():
        for p in m.parameters():
            p.grad = None
        xg.grad = None
        y, _ = m(xg)
        y.sum().backward()

    def run_fastrnn():
        out, _, cache = layer.forward_train(x)
        return layer.backward(cache, ones, need_input_grad=False)

    def run_fastrnn_dx():
        out, _, cache = layer.forward_train(x)
        return layer.backward(cache, ones)

    def run_fwd_train():
        layer.forward_train(x)

    def run_infer():
        layer(x)

    return {"torch autograd": run_torch, "fastrnn": run_fastrnn,
            "torch autograd +dX": run_torch_dx, "fastrnn +dX": run_fastrnn_dx,
            "fastrnn forward_train": run_fwd_train, "fastrnn inference": run_infer}


WHO = ["torch autograd", "fastrnn", "torch autograd +dX", "fastrnn +dX",
       "fastrnn forward_train", "fastrnn inference"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}-T{c[2]}-H{c[3]}")
def test_train_step(benchmark, case, who):
    cell, B, T, H = case
    benchmark.group = f"train {cell} B={B} T={T} H={H}"
    fn = _setup(cell, B, T, H)[who]
    fn()
    benchmark.pedantic(fn, rounds=7 if H == 256 else 4, warmup_rounds=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description="forward + backward beside torch autograd, "
                                             "interleaved")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3,
                    help="timed calls per visit (their median is the visit's sample); "
                         "1 with --gap 0 --no-warmup: the older protocol, one call "
                         "right after another implementation's")
    ap.add_argument("--gap", type=float, default=0.15,
                    help="seconds of pause before each visit (spinning thread pools "
                         "go to sleep)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="no untimed call at the start of a visit")
    ap.add_argument("--cases", default=None, help="substring filter, e.g. 'LSTM B=16'")
    a = ap.parse_args(argv)
    for case in CASES:
        cell, B, T, H = case
        name = f"{cell} B={B} T={T} H={H}"
        if a.cases is not None and a.cases not in name:
            continue
        fns = _setup(*case)
        med_s = {k: [] for k in fns}
        best = dict.fromkeys(fns, float("inf"))
        for f in fns.values():
            f()
        for _ in range(a.rounds):      # interleaved, so load changes hit everyone alike
            for k, f in fns.items():
                med, mn = visit(f, a.calls, a.gap, warmup=not a.no_warmup)
                med_s[k].append(med)
                best[k] = min(best[k], mn)
        best = {k: v * 1e3 for k, v in best.items()}
        med = {k: float(np.median(v)) * 1e3 for k, v in med_s.items()}
        print(f"{name}: " + ", ".join(
            f"{k} {best[k]:.1f} ms (median {med[k]:.1f})" for k in fns)
            + f"; ratio fastrnn/torch min {best['fastrnn'] / best['torch autograd']:.2f}"
            f" median {med['fastrnn'] / med['torch autograd']:.2f}"
            f"; +dX min {best['fastrnn +dX'] / best['torch autograd +dX']:.2f}"
            f" median {med['fastrnn +dX'] / med['torch autograd +dX']:.2f}", flush=True)


if __name__ == "__main__":
    main()
