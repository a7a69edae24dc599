"""Keras-style models whose layers multiply big matrices (Dense over every step,
attention), with those products on scipy's BLAS inside the kernels' shared thread
count (``fastrnn._model_base.matmul``) against NumPy's own ``@`` (its bundled OpenBLAS,
whose woken workers spin against the kernels' OpenMP threads), alternating in one
process.

    PYTHONPATH=. python bench/model_blas.py
    PYTHONPATH=. python bench/model_blas.py --rounds 8 --calls 30

Prints the median time of a call in milliseconds per case and the ratio.  No timing
thresholds.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn import _model_base
from fastrnn.model import INPUT, Add, Dense, KerasRNN, Model, MultiHeadAttention


def lstm_dense(F, rng):
    return Model([KerasRNN(fastrnn.LSTM(64, 128, batch_first=True, seed=1),
                           return_sequences=True),
                  Dense((rng.standard_normal((128, F)) * 0.1).astype(np.float32))])


def decoder(rng, H=128, heads=4, kd=32):
    u = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    rnn = KerasRNN(fastrnn.LSTM(64, H, batch_first=True, seed=1), return_sequences=True)
    mha = MultiHeadAttention(u(H, heads, kd), u(H, heads, kd), u(H, heads, kd),
                             u(heads, kd, H), u(heads, kd), u(heads, kd), u(heads, kd), u(H),
                             use_causal_mask=True)
    return Model([rnn, mha, Add(), Dense(u(H, 10), u(10), activation="softmax")],
                 inputs=[(INPUT, 0), [(0, 0), (0, 0)], [(0, 0), (1, 0)], (2, 0)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [("LSTM(64,128) -> Dense(128), B=1 T=100", lstm_dense(128, rng), (1, 100)),
             ("LSTM(64,128) -> Dense(1024), B=1 T=100", lstm_dense(1024, rng), (1, 100)),
             ("LSTM(64,128) -> Dense(512), B=64 T=50", lstm_dense(512, rng), (64, 50)),
             ("LSTM -> causal MultiHeadAttention(4x32) -> Add -> Dense, B=1 T=100",
              decoder(rng), (1, 100)),
             ("LSTM -> causal MultiHeadAttention(4x32) -> Add -> Dense, B=1 T=1000",
              decoder(rng), (1, 1000))]
    print("| model | NumPy's @, ms | scipy's BLAS in the shared count, ms | ratio |")
    print("|---|---|---|---|")
    for name, m, (B, T) in cases:
        x = rng.standard_normal((B, T, 64)).astype(np.float32)
        times = {True: [], False: []}
        for _ in range(a.rounds):
            for on in (False, True):
                _model_base._set_blas_products(on)
                m(x)
                for _ in range(a.calls):
                    t0 = time.perf_counter()
                    m(x)
                    times[on].append(time.perf_counter() - t0)
        _model_base._set_blas_products(True)
        old, new = (float(np.median(times[k])) * 1e3 for k in (False, True))
        print(f"| {name} | {old:.3f} | {new:.3f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
