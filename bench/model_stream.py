"""A Keras-style model streamed step by step (``fastrnn.Stream`` of ``fastrnn.model.Model``:
LSTM(F -> 256) then Dense layers, or a LayerNormalization or BatchNormalization; a Masking
before it), and the same model called on one step, with the few-row paths (Dense:
``_kernels.dense_call``; LayerNormalization: ``_kernels.layer_norm_rows``;
BatchNormalization: ``_kernels.batch_norm_rows``; Masking: ``_kernels.masking_rows``) on
and off, alternating in one process.

    PYTHONPATH=. python bench/model_stream.py
    PYTHONPATH=. python bench/model_stream.py --rounds 8 --steps 4000

Prints the median time of a step / call in microseconds.  No timing thresholds.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn import _kernels, model as fmodel
from fastrnn.model import (BatchNormalization, Dense, Embedding, KerasRNN, LayerNormalization,
                           Masking, Model)


def build(F, heads, rng):
    layers = [KerasRNN(fastrnn.LSTM(F, 256, batch_first=True, seed=1), return_sequences=True)]
    if heads >= 1:
        layers.append(Dense(rng.standard_normal((256, F)).astype(np.float32) * 0.1,
                            rng.standard_normal(F).astype(np.float32), activation="tanh"))
    if heads == 2:
        layers.append(Dense(rng.standard_normal((F, 10)).astype(np.float32),
                            rng.standard_normal(10).astype(np.float32), activation="softmax"))
    if heads == 3:
        layers = layers[:1] + [LayerNormalization(rng.standard_normal(256).astype(np.float32),
                                                  rng.standard_normal(256).astype(np.float32))]
    if heads == 4:      # a token stream: Embedding(1000, F) -> LSTM -> Dense(10, softmax)
        layers = [Embedding(rng.standard_normal((1000, F)).astype(np.float32)), layers[0],
                  Dense(rng.standard_normal((256, 10)).astype(np.float32),
                        rng.standard_normal(10).astype(np.float32), activation="softmax")]
    if heads == 5:      # Masking(0) -> LSTM
        layers = [Masking(0.0), layers[0]]
    if heads == 6:      # LSTM -> BatchNormalization
        layers = layers[:1] + [BatchNormalization(
            rng.standard_normal(256).astype(np.float32), rng.random(256).astype(np.float32),
            rng.standard_normal(256).astype(np.float32),
            rng.standard_normal(256).astype(np.float32))]
    return Model(layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    limit = _kernels._set_dense_rows(0)     # (read: set and put back)
    _kernels._set_dense_rows(limit)
    fmodel._layer_norm = fmodel._batch_norm = fmodel._masking = None
    cases = [(F, heads) for F in (32, 256) for heads in (0, 1, 2, 3, 4, 5, 6)]
    off = lambda *a: None       # (a row pass that does not apply: NumPy's path)
    res = {}
    for r in range(a.rounds):
        for on in (True, False):
            _kernels._set_dense_rows(limit if on else -1)     # (-1: NumPy's path)
            for k in ("_layer_norm", "_batch_norm", "_masking"):
                setattr(fmodel, k, None if on else off)     # (None: loaded at first use)
            for F, heads in cases:
                m = build(F, heads, rng)
                x = (np.array([7]) if heads == 4 else
                     rng.standard_normal((1, F)).astype(np.float32))
                s = fastrnn.Stream(m)
                for _ in range(100):
                    s.step(x)
                ts = []
                for _ in range(a.steps):
                    t = time.perf_counter()
                    s.step(x)
                    ts.append(time.perf_counter() - t)
                xc = x[:, None]
                cs = []
                for _ in range(a.steps // 4):
                    t = time.perf_counter()
                    m(xc)
                    cs.append(time.perf_counter() - t)
                key = (F, heads, on)
                res.setdefault(key, []).append((np.median(ts) * 1e6, np.median(cs) * 1e6))
    _kernels._set_dense_rows(limit)
    fmodel._layer_norm = fmodel._batch_norm = fmodel._masking = None
    heads_name = {0: "LSTM", 1: "LSTM + Dense(tanh)", 2: "LSTM + Dense(tanh) + Dense(10, softmax)",
                  3: "LSTM + LayerNormalization", 4: "Embedding + LSTM + Dense(10, softmax)",
                  5: "Masking + LSTM", 6: "LSTM + BatchNormalization"}
    print("model (F features in and out)             Stream.step us (on / off)   one-step call us (on / off)")
    for F, heads in cases:
        on, off = res[(F, heads, True)], res[(F, heads, False)]
        f = lambda v, i: f"{min(x[i] for x in v):6.2f}-{max(x[i] for x in v):6.2f}"
        print(f"F={F:3d} {heads_name[heads]:38s} {f(on, 0)} / {f(off, 0)}   {f(on, 1)} / {f(off, 1)}")


if __name__ == "__main__":
    main()
