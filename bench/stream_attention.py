"""A decoder with causal self-attention streamed step by step: Input(F) -> LSTM(F -> H) ->
MultiHeadAttention(heads, key_dim, use_causal_mask) -> Add -> Dense(10), batch 1.

Times ``Stream.step`` at growing numbers of steps seen (each step attends to all of
them: its cost grows with them), and, for comparison, what a caller without a stream
would run: the whole model on the sequence so far, once per new step.

    PYTHONPATH=. python bench/stream_attention.py
    PYTHONPATH=. python bench/stream_attention.py --steps 4000 --heads 8 --key-dim 32

``--whole-only``: only the whole model's call at 100, 1000 and 2000 steps (no stream:
it runs on any fastrnn with MultiHeadAttention, e.g. an older build on ``PYTHONPATH``).

Prints median microseconds per step over windows of steps.  No timing thresholds.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn.model import INPUT, Add, Dense, KerasRNN, Model, MultiHeadAttention


def build(F, H, heads, kd, rng):
    u = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    rnn = KerasRNN(fastrnn.LSTM(F, H, batch_first=True, seed=1), return_sequences=True)
    mha = MultiHeadAttention(u(H, heads, kd), u(H, heads, kd), u(H, heads, kd),
                             u(heads, kd, H), u(heads, kd), u(heads, kd), u(heads, kd), u(H),
                             use_causal_mask=True)
    return Model([rnn, mha, Add(), Dense(u(H, 10), u(10), activation="softmax")],
                 inputs=[(INPUT, 0), [(0, 0), (0, 0)], [(0, 0), (1, 0)], (2, 0)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--key-dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--whole-only", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    m = build(a.features, a.hidden, a.heads, a.key_dim, rng)
    if a.whole_only:
        for T in (100, 1000, 2000):
            x = rng.standard_normal((1, T, a.features)).astype(np.float32)
            m(x)
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                m(x)
                ts.append(time.perf_counter() - t0)
            print(f"{fastrnn.__file__}: T={T} the whole model {np.median(ts) * 1e3:.2f} ms "
                  "(median of 7)")
        return
    x = rng.standard_normal((1, a.steps, a.features)).astype(np.float32)
    s = fastrnn.Stream(m, batch_size=1)
    times, outs = [], []
    for t in range(a.steps):
        t0 = time.perf_counter()
        outs.append(s.step(x[:, t]))
        times.append(time.perf_counter() - t0)
    got = np.stack(outs, axis=1)
    err = float(np.abs(got - m(x)).max())
    print(f"LSTM({a.features} -> {a.hidden}) -> MultiHeadAttention({a.heads} heads, "
          f"key_dim {a.key_dim}, causal) -> Add -> Dense(10): Stream.step, batch 1; "
          f"largest difference from the whole call {err:.1e}")
    print("| steps seen | Stream.step, median µs | the whole model on the steps so far, µs |")
    print("|---|---|---|")
    for lo in sorted({10, 100, 500, 1000, 2000, 4000, 8000} & set(range(a.steps + 1))):
        w = times[max(lo - 50, 0):lo + 50] if lo < a.steps else times[-100:]
        prefix = x[:, :lo]
        whole = []
        for _ in range(5):
            t0 = time.perf_counter()
            m(prefix)
            whole.append(time.perf_counter() - t0)
        print(f"| {lo} | {np.median(w) * 1e6:.1f} | {np.median(whole) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
