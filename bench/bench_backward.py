"""Forward + backward (training step) beside torch autograd (pytest-benchmark).

    PYTHONPATH=. python -m pytest bench/bench_backward.py --benchmark-only \
        --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

Groups ``train <cell> B=.. T=.. H=..`` (I = H, one layer, float32, 2 threads each):

* ``torch autograd``: ``y, _ = m(x); y.sum().backward()`` (grads set to None before; x
  does not require grad, as for the first layer in training),
* ``fastrnn``: ``out, _, cache = layer.forward_train(x)`` then
  ``layer.backward(cache, ones, need_input_grad=False)``: the same work,
* ``torch autograd +dX`` / ``fastrnn +dX``: the same with the input gradient as well
  (``x.requires_grad_()`` / ``need_input_grad=True``),
* ``fastrnn forward_train`` / ``fastrnn inference``: the forward halves, for scale.

Run as a script for a ratio table from interleaved runs (robust on a busy machine):
``PYTHONPATH=. python bench/bench_backward.py``.  Target: fastrnn <= 0.8x torch.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")

THREADS = 2
CASES = [("LSTM", 16, 100, 256), ("GRU", 16, 100, 256),
         ("LSTM", 64, 50, 512), ("GRU", 64, 50, 512)]


def _setup(cell, B, T, H):
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    m = getattr(torch.nn, cell)(H, H)
    layer = fastrnn.from_torch(m, num_threads=THREADS)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    xg = torch.from_numpy(x.copy()).requires_grad_()
    ones = np.ones((T, B, H), np.float32)

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


def main(rounds=9):
    for case in CASES:
        fns = _setup(*case)
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(rounds):          # interleaved, so load changes hit everyone alike
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        best = {k: min(v) * 1e3 for k, v in times.items()}
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        cell, B, T, H = case
        print(f"{cell} B={B} T={T} H={H}: " + ", ".join(
            f"{k} {best[k]:.1f} ms (median {med[k]:.1f})" for k in fns)
            + f"; ratio fastrnn/torch min {best['fastrnn'] / best['torch autograd']:.2f}"
            f" median {med['fastrnn'] / med['torch autograd']:.2f}"
            f"; +dX min {best['fastrnn +dX'] / best['torch autograd +dX']:.2f}")


if __name__ == "__main__":
    main()
