"""tf2onnx exports whose recurrences are ONNX ``Loop`` nodes (tests/fixtures/onnx/loop/:
tf.keras 2 SimpleRNN, GRU(reset_after=False), Masking + LSTM, a bidirectional SimpleRNN;
Keras 3 GRU): fastrnn beside ONNX Runtime.

    PYTHONPATH=. python bench/onnx_loop.py [--rounds 11] [--T 100] [--batches 1,32]

Each round times ``n`` calls of fastrnn, then of ONNX Runtime (inputs (B, T, 4) of the
fixtures' feature size); a figure is the median of the rounds' per-call times, with the
range.  The outputs are checked against ONNX Runtime's first.  A Loop runs its body op by
op in NumPy (fastrnn/io/_onnx_loop.py), so its time is a few microseconds a step,
not a fused layer's.
"""
import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort

import fastrnn

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "onnx", "loop")
NAMES = ("tf2onnx_k2_simplernn", "tf2onnx_k2_gru_reset_before", "tf2onnx_k2_masking_lstm",
         "tf2onnx_k2_bi_simplernn", "tf2onnx_k3_gru")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batches", default="1,32")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, onnxruntime {ort.__version__}")
    print("| model | B | T | fastrnn ms | ONNX Runtime ms | fastrnn / ORT |")
    print("|---|---|---|---|---|---|")
    for name in NAMES:
        path = os.path.join(HERE, name + ".onnx")
        m = fastrnn.load(path)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feat = int(np.load(path[:-5] + ".npz")["in:x"].shape[-1])
        for B in (int(b) for b in a.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((B, a.T, feat)).astype(np.float32)
            feeds = {m.input_names[0]: x}
            got, ref = m.run(feeds), sess.run(None, feeds)
            for u, v in zip(got.values(), ref):
                np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
            n = 10 if B == 1 else 4
            ts = {"fr": [], "ort": []}
            fns = {"fr": lambda: m.run(feeds), "ort": lambda: sess.run(None, feeds)}
            for _ in range(a.rounds):
                for k, fn in fns.items():
                    fn()
                    t = time.perf_counter()
                    for _ in range(n):
                        fn()
                    ts[k].append((time.perf_counter() - t) / n * 1e3)
            f, o = statistics.median(ts["fr"]), statistics.median(ts["ort"])
            print(f"| {name} | {B} | {a.T} | {f:.3f} ({min(ts['fr']):.3f}-{max(ts['fr']):.3f}) "
                  f"| {o:.3f} ({min(ts['ort']):.3f}-{max(ts['ort']):.3f}) | {f / o:.2f} |")


if __name__ == "__main__":
    main()
