"""Small calls beside the peers: where a call's fixed cost decides.

    PYTHONPATH=. python bench/small_calls.py [--cases GRU:1:1:32,LSTM:4:20:128]
                                             [--rounds 5] [--threads 2]

A case is CELL:B:T:H (CELL one of LSTM, GRU, RNN; input size = H; float32, one layer,
weights of a torch module with seed 0), optionally followed by ``:L2`` (two layers, or
any count) and ``:bi`` (bidirectional), or LSTM:B:T:H:P for an LSTM with proj_size P
(no ONNX Runtime column: ONNX's LSTM has no projection).  Each round times a burst of calls of fastrnn,
ONNX Runtime (the module exported to ONNX) and PyTorch in turn, so a noisy minute slows
all of them alike; the table gives each one's median over rounds of the per-burst
median, and fastrnn's time over the faster peer's.  The interleaved suite
(``bench_interleaved.py``) covers the issue's large cases; this one the small layers
and short sequences (T = 1 to 20) where ~10 us of call overhead is most of the time.
For T = 1 the last column times ``fastrnn.Stream.step`` (one step, state carried: the
streaming API, which skips the layer call's checks and set-up).  The "fastrnn ONNX"
column runs the same exported ONNX model ONNX Runtime runs, loaded with
``fastrnn.load`` (its shape nodes, the recurrent node, the Squeeze after it), beside
its time over ONNX Runtime's.  No timing thresholds.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import median_call  # noqa: E402
from bench_speed import _onnx_bytes, fastrnn, models, ort_session, torch  # noqa: E402

DEFAULT = ("GRU:1:1:32,GRU:1:20:32,GRU:4:1:32,LSTM:1:1:32,LSTM:1:5:64,LSTM:4:1:32,"
           "LSTM:32:1:32,GRU:1:1:128,GRU:1:20:128,LSTM:1:1:128,LSTM:4:1:128,"
           "RNN:1:1:16,RNN:8:1:64,RNN:1:1:128,RNN:1:20:128")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    print(f"{'case':16s} {'fastrnn':>9s} {'ORT':>9s} {'PyTorch':>9s}  (us, medians)"
          "  fastrnn / best peer   Stream.step (T=1)   fastrnn ONNX  / ORT")
    for case in a.cases.split(","):
        cell, B, T, H, *opts = case.split(":")
        B, T, H = int(B), int(T), int(H)
        P = [o for o in opts if o.isdigit()]
        if P:               # LSTM:B:T:H:P, proj_size P (ONNX has no projection: no ORT)
            torch.manual_seed(0)
            tm = torch.nn.LSTM(H, H, proj_size=int(P[0])).eval()
            fm = fastrnn.from_torch(tm)
        else:
            layers = int(next((o[1:] for o in opts if o.startswith("L")), 1))
            tm, fm = models(cell, layers, "bi" in opts, H, "float32")
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        xt = torch.from_numpy(x)
        sess = None if P else ort_session(tm, x)

        def run_torch():
            with torch.inference_mode():
                return tm(xt)
        fns = {"fastrnn": lambda: fm(x), "PyTorch": run_torch}
        if sess is not None:
            fns["ORT"] = lambda: sess.run(None, {"x": x})
            om = fastrnn.load(_onnx_bytes(tm, x))
            for r, f in zip(sess.run(None, {"x": x}), om.run({"x": x}).values()):
                np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-5)
            fns["onnx"] = lambda: om.run({"x": x})
        if T == 1:
            stream, x1 = fastrnn.Stream(fm, batch_size=B), np.ascontiguousarray(x[0])
            fns["stream"] = lambda: stream.step(x1)
        n = max(20, min(300, int(3e7 / (B * T * H * H))))
        res = {k: [] for k in fns}
        for _ in range(a.rounds):
            for k, fn in fns.items():
                fn()
                res[k].append(median_call(fn, n))
        m = {k: float(np.median(v)) * 1e6 for k, v in res.items()}
        m.setdefault("ORT", float("nan"))
        best = min(m["PyTorch"], m["ORT"]) if sess is not None else m["PyTorch"]
        step = f"{m['stream']:9.1f}" if "stream" in m else " " * 9
        onnx = (f"{m['onnx']:21.1f}  {m['onnx'] / m['ORT']:5.2f}" if "onnx" in m else "")
        print(f"{case:16s} {m['fastrnn']:9.1f} {m['ORT']:9.1f} {m['PyTorch']:9.1f}"
              f"  {m['fastrnn'] / best:19.2f}   {step}{onnx}", flush=True)


if __name__ == "__main__":
    main()
