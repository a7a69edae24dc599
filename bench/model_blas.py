"""Keras-style models whose layers multiply big matrices (Dense over every step,
attention) and an ONNX graph of an LSTM and a MatMul over every step (PyTorch's
LSTM + Linear), with those products on scipy's BLAS inside the kernels' shared thread
count (``fastrnn._model_base.matmul``) against NumPy's own ``@`` (its bundled OpenBLAS,
whose woken workers spin against the kernels' OpenMP threads), alternating in one
process.

    PYTHONPATH=. python bench/model_blas.py
    PYTHONPATH=. python bench/model_blas.py --rounds 8 --calls 30

``--user-loop``: instead, a user's loop of an LSTM(64, 128) layer call at B=1 T=100 and
a NumPy ``y @ W`` (128 x 128) of its output, and an LSTM(256, 512) call at B=64 T=50
(fastrnn's own products), to run with and without ``OPENBLAS_NUM_THREADS=1``:

    PYTHONPATH=. python bench/model_blas.py --user-loop
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python bench/model_blas.py --user-loop

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


def onnx_lstm_matmul(F, rng, H=128, I=64):
    """An ONNX graph (built with onnx.helper) as torch.onnx gives a batch-first nn.LSTM
    then nn.Linear: Transpose (B, T, I) to time-major, LSTM, Squeeze, Transpose back,
    MatMul by (H, F) (one product of B*T rows), Add a bias."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    u = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (u(1, 4 * H, I), "W"), (u(1, 4 * H, H), "R"), (u(1, 8 * H), "Bi"),
        (u(H, F), "Wo"), (u(F), "bo"), (np.array([1], np.int64), "ax"))]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R", "Bi"], ["y"], hidden_size=H),
             helper.make_node("Squeeze", ["y", "ax"], ["ys"]),
             helper.make_node("Transpose", ["ys"], ["yb"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["yb", "Wo"], ["m"]),
             helper.make_node("Add", ["m", "bo"], ["out"])]
    g = helper.make_graph(nodes, "lstm_matmul",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["B", "T", I])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    return fastrnn.load(model.SerializeToString())


def _median_ms(f, n):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def user_loop(a, rng):
    layer = fastrnn.LSTM(64, 128, batch_first=True, seed=1)
    W = rng.standard_normal((128, 128)).astype(np.float32)
    x = rng.standard_normal((1, 100, 64)).astype(np.float32)
    big = fastrnn.LSTM(256, 512, batch_first=True, seed=1)
    xb = rng.standard_normal((64, 50, 256)).astype(np.float32)
    n = a.rounds * a.calls
    print(f"layer call + NumPy y @ W: {_median_ms(lambda: layer(x)[0] @ W, n):.3f} ms; "
          f"LSTM(256, 512) B=64 T=50: {_median_ms(lambda: big(xb), a.rounds * 5):.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--user-loop", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    if a.user_loop:
        return user_loop(a, rng)
    cases = [("LSTM(64,128) -> Dense(128), B=1 T=100", lstm_dense(128, rng), (1, 100)),
             ("LSTM(64,128) -> Dense(1024), B=1 T=100", lstm_dense(1024, rng), (1, 100)),
             ("LSTM(64,128) -> Dense(512), B=64 T=50", lstm_dense(512, rng), (64, 50)),
             ("LSTM -> causal MultiHeadAttention(4x32) -> Add -> Dense, B=1 T=100",
              decoder(rng), (1, 100)),
             ("LSTM -> causal MultiHeadAttention(4x32) -> Add -> Dense, B=1 T=1000",
              decoder(rng), (1, 1000))]
    try:
        cases.append(("ONNX: LSTM(64,128) -> MatMul(128) + Add, B=1 T=100",
                      onnx_lstm_matmul(128, rng), (1, 100)))
    except ImportError:
        print("(onnx not installed: its case left out)")
    print("| model | NumPy's @, ms | scipy's BLAS in the shared count, ms | ratio |")
    print("|---|---|---|---|")
    for name, m, (B, T) in cases:
        x = rng.standard_normal((B, T, 64)).astype(np.float32)
        if name.startswith("ONNX"):
            m = (lambda run: lambda v: run(None, {"x": v}))(m.run)
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
