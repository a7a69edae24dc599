"""An RNN cell written as an ONNX ``Scan`` body (tests/test_onnx_scan.py's ``_rnn_model``:
h_t = tanh(x_t W + h_{t-1} R + b), T = 100, I = H = 64): fastrnn, which runs the body
op by op, beside ONNX Runtime.

    PYTHONPATH=. python bench/onnx_scan.py [--rounds 7] [--batches 1,32]

Each round times ``n`` calls of fastrnn, then of ONNX Runtime; a figure is the median of
the rounds' per-call times, with the range.  The outputs are checked against ONNX
Runtime's first.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_onnx_scan import _rnn_model  # noqa: E402

from fastrnn.io.onnx import load_onnx  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", default="1,32")
    a = ap.parse_args()
    T, I, H = 100, 64, 64
    print("| B | fastrnn ms | ONNX Runtime ms | fastrnn / ORT |")
    print("|---|---|---|---|")
    for B in (int(b) for b in a.batches.split(",")):
        data = _rnn_model(B, I, H)
        m = load_onnx(data)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {"h0": np.zeros((B, H), np.float32),
                 "X": rng.standard_normal((T, B, I)).astype(np.float32)}
        got, ref = m.run(dict(feeds)), s.run(None, feeds)
        for r, k in zip(ref, ("hT", "Y", "XW")):
            np.testing.assert_allclose(got[k], r, rtol=1e-3, atol=1e-4)   # (float32, 100 steps)
        fns = {"fr": lambda: m.run(dict(feeds)), "ort": lambda: s.run(None, feeds)}
        tl = {k: [] for k in fns}
        n = 20
        for k, fn in fns.items():
            fn()
        for _ in range(a.rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                tl[k].append((time.perf_counter() - t0) / n * 1e3)
        fr, o = statistics.median(tl["fr"]), statistics.median(tl["ort"])
        print(f"| {B} | {fr:.3f} ({min(tl['fr']):.3f}-{max(tl['fr']):.3f}) | {o:.3f} "
              f"({min(tl['ort']):.3f}-{max(tl['ort']):.3f}) | {fr / o:.2f} |")


if __name__ == "__main__":
    main()
