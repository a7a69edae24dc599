"""tf2onnx exports whose recurrences are ONNX ``Loop`` nodes (tests/fixtures/onnx/loop/:
tf.keras 2 SimpleRNN, GRU(reset_after=False), Masking + LSTM, a bidirectional SimpleRNN;
Keras 3 GRU): fastrnn beside ONNX Runtime.

    PYTHONPATH=. python bench/onnx_loop.py [--rounds 11] [--T 100] [--batches 1,32]
        [--interleaved]
    PYTHONPATH=. python bench/onnx_loop.py --first [--sizes 256,512,1024]

Each round times ``n`` calls (after one more) of fastrnn, of fastrnn with the Loop
bodies run op by op (``_onnx_loop.FUSE = False``: how every Loop ran before
fastrnn/io/_onnx_loop_fuse.py, a few microseconds a step), or of ONNX Runtime (inputs
(B, T, 4) of the fixtures' feature size): all of one implementation's rounds, then the
next's (``--interleaved``: one round of each in turn, as the script did before
2026-12-07: ONNX Runtime's spinning threads then slow the calls after its own); a
figure is the median of the rounds' per-call times, with the range.
The outputs are checked against ONNX Runtime's first.

``--first``: the cost of a fused Loop's first call (its probes: _onnx_loop_fuse), on
Loops of tf2onnx's shape built by tests/test_onnx_loop_fuse.py (I = H, B = 1, T = 100):
load, first call, second call, each in a fresh model, median of 3; the first call's peak
of Python allocations (tracemalloc, the last of the 3) beside the model's weights; then
the later calls of fastrnn, then of ONNX Runtime on the same graph, each alone (median
of 11 rounds of 5 calls after 5 calls of warm-up: interleaved, ONNX Runtime's spinning
threads and numpy's OpenBLAS threads after the probes take the cores from the other).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

import fastrnn
from fastrnn.io import _onnx_loop

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "onnx", "loop")
NAMES = ("tf2onnx_k2_simplernn", "tf2onnx_k2_gru_reset_before", "tf2onnx_k2_masking_lstm",
         "tf2onnx_k2_bi_simplernn", "tf2onnx_k3_gru")


def first_calls(sizes):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_onnx_loop_fuse import _feeds, _fused, _loop_graph
    from fastrnn.io.onnx import load_onnx
    import tracemalloc
    print("| cell | H | load ms | first call ms | second call ms | first call peak MiB "
          "| weights MiB | later calls ms | ONNX Runtime ms | fastrnn / ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for H in sizes:
        for cell, mask in (("rnn", False), ("lstm", False), ("lstm", True), ("gru", False),
                           ("gru_before", True)):
            data, _ = _loop_graph(cell, H, H, mask=mask)
            feeds = _feeds(H, 1, 100, np.float32, mask=mask)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                m = load_onnx(data)
                t1 = time.perf_counter()
                tracemalloc.start()
                m.run(dict(feeds))
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                t2 = time.perf_counter()
                m.run(dict(feeds))
                t3 = time.perf_counter()
                assert _fused(m)
                ts.append((t1 - t0, t2 - t1, t3 - t2))
            med = [statistics.median(c) * 1e3 for c in zip(*ts)]
            name = cell + (" masked" if mask else "")
            wts = sum(v.nbytes for v in m._consts.values()
                      if isinstance(v, np.ndarray)) / 2**20
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
            fns = {"fr": lambda: m.run(dict(feeds)), "ort": lambda: sess.run(None, feeds)}
            tl = {"fr": [], "ort": []}
            for k, fn in fns.items():
                for _ in range(5):
                    fn()
                for _ in range(11):
                    t = time.perf_counter()
                    for _ in range(5):
                        fn()
                    tl[k].append((time.perf_counter() - t) / 5 * 1e3)
            fr, o = statistics.median(tl["fr"]), statistics.median(tl["ort"])
            print(f"| {name} | {H} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.2f} | {peak:.0f} "
                  f"| {wts:.1f} | {fr:.2f} | {o:.2f} | {fr / o:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--first", action="store_true")
    ap.add_argument("--interleaved", action="store_true")
    ap.add_argument("--sizes", default="256,512,1024")
    a = ap.parse_args()
    if a.first:
        first_calls([int(h) for h in a.sizes.split(",")])
        return
    print(f"load average {os.getloadavg()[0]:.1f}, onnxruntime {ort.__version__}")
    print("| model | B | T | fastrnn ms | op by op ms | ONNX Runtime ms | fastrnn / ORT |")
    print("|---|---|---|---|---|---|---|")
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
            ts = {"fr": [], "ops": [], "ort": []}
            fns = {"fr": lambda: m.run(feeds), "ops": lambda: m.run(feeds),
                   "ort": lambda: sess.run(None, feeds)}
            # (each alone (--interleaved: round by round): interleaved, ONNX Runtime's
            # threads spin after its calls and take the cores from the next ones)
            order = ([list(fns)] * a.rounds if a.interleaved
                     else [[k] * a.rounds for k in fns])
            for ks in order:
                for k in ks:
                    _onnx_loop.FUSE = k != "ops"
                    fn = fns[k]
                    fn()
                    t = time.perf_counter()
                    for _ in range(n):
                        fn()
                    ts[k].append((time.perf_counter() - t) / n * 1e3)
            _onnx_loop.FUSE = True
            med = {k: statistics.median(v) for k, v in ts.items()}
            cells = " | ".join(f"{med[k]:.3f} ({min(ts[k]):.3f}-{max(ts[k]):.3f})" for k in ts)
            print(f"| {name} | {B} | {a.T} | {cells} | {med['fr'] / med['ort']:.2f} |")


if __name__ == "__main__":
    main()
