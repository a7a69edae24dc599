"""An RNN cell written as an ONNX ``Scan`` body (tests/test_onnx_scan.py's ``_rnn_model``:
h_t = tanh(x_t W + h_{t-1} R + b), T = 100, I = H = 64; scan output h_t): fastrnn, which
runs the body as one SimpleRNN layer call (_onnx_loop_fuse), and op by op
(``_onnx_loop.FUSE = False``), beside ONNX Runtime.

    PYTHONPATH=. python bench/onnx_scan.py [--rounds 7] [--batches 1,32] [--xw]

``--xw``: the model with its second scan output x_t W too (not the cell's h: op by op
in both fastrnn columns).  fastrnn, fastrnn op by op, then ONNX Runtime, each alone:
5 calls of warm-up, then rounds of ``n`` calls; a figure is the median of the rounds'
per-call times, with the range.  The outputs are checked against ONNX Runtime's first.
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

from fastrnn.io import _onnx_loop  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402


def _slow(fn):
    """``fn`` run op by op."""
    def run():
        _onnx_loop.FUSE = False
        try:
            return fn()
        finally:
            _onnx_loop.FUSE = True
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--xw", action="store_true")
    a = ap.parse_args()
    T, I, H = 100, 64, 64
    print("| B | fastrnn ms | op by op ms | ONNX Runtime ms | fastrnn / ORT | "
          "op by op / ORT |")
    print("|---|---|---|---|---|---|")
    for B in (int(b) for b in a.batches.split(",")):
        data = _rnn_model(B, I, H, xw=a.xw)
        m = load_onnx(data)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {"h0": np.zeros((B, H), np.float32),
                 "X": rng.standard_normal((T, B, I)).astype(np.float32)}
        got, ref = m.run(dict(feeds)), s.run(None, feeds)
        slow = _slow(lambda: m.run(dict(feeds)))()
        for r, k in zip(ref, ("hT", "Y", "XW")):
            np.testing.assert_allclose(got[k], r, rtol=1e-3, atol=1e-4)   # (float32, 100 steps)
            np.testing.assert_allclose(slow[k], r, rtol=1e-3, atol=1e-4)
        fns = {"fr": lambda: m.run(dict(feeds)), "slow": _slow(lambda: m.run(dict(feeds))),
               "ort": lambda: s.run(None, feeds)}
        tl = {k: [] for k in fns}
        n = 20
        # (each alone, after its own warm-up: interleaved, ONNX Runtime's threads spin
        # after its calls and take the cores from fastrnn's next ones, 0.84 -> 2.0 ms
        # at B = 32)
        for k, fn in fns.items():
            for _ in range(5):
                fn()
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                tl[k].append((time.perf_counter() - t0) / n * 1e3)
        med = {k: statistics.median(v) for k, v in tl.items()}
        cols = " | ".join(f"{med[k]:.3f} ({min(tl[k]):.3f}-{max(tl[k]):.3f})"
                          for k in ("fr", "slow", "ort"))
        print(f"| {B} | {cols} | {med['fr'] / med['ort']:.2f} | "
              f"{med['slow'] / med['ort']:.2f} |")


if __name__ == "__main__":
    main()
