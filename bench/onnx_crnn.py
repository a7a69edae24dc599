"""A CRNN (conv blocks, then a bidirectional LSTM) exported to ONNX: fastrnn beside ONNX
Runtime and PyTorch.

    PYTHONPATH=. python bench/onnx_crnn.py [--rounds 7] [--calls 20] [--threads N]
                                           [--batches 1,16] [--profile]

Needs torch and onnxruntime.  The model is the OCR / speech shape: an input image or
spectrogram (B, 1, 32, 128); three blocks Conv2d 3x3 (padding 1) -> BatchNorm2d -> ReLU
-> MaxPool2d of 32, 64 and 128 channels (pools (2, 2), (2, 2), (2, 1)); the width as
time, (T=32, B, 128 * 4); a bidirectional LSTM of 128; a Linear to 37 classes.  It is
exported with ``torch.onnx.export(..., dynamo=False)`` and dynamic batch and width.

Each round visits each runner in turn (the order rotated each round, a 0.15 s pause
before each visit so another library's spinning threads sleep, one warm-up call) and
times ``--calls`` calls; a runner's figure is the median of its rounds' medians, its
range the rounds' lowest and highest.  Every runner's output is checked against ONNX
Runtime's first.  fastrnn's Convs run on its own kernel (fastrnn._conv: the 3x3
ones of 16+ channels as Winograd F(2x2, 3x3) products); column "direct": the
kernel's direct products instead (``_onnx_conv._WINOGRAD = False``); "im2col": the
im2col + BLAS path of before (``_onnx_conv._KERNEL = False``: blocks of copied windows
through scipy's OpenBLAS, shared with a helper thread).  ``--threads N``: N threads
for all (default: each library's own).
``--profile``: fastrnn's time per step of its kept program (a node, or a Conv with
what it fused) for one call at each batch (the median of 10 calls), with each Conv's
multiply-adds and rate.  The load average is printed before and after.
"""
import argparse
import io
import os
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

import fastrnn
from _timing import median_call   # (bench/ is the script's directory)
from fastrnn.io import _onnx_conv


class CRNN(torch.nn.Module):
    def __init__(self, channels=(32, 64, 128), H=32, hidden=128, classes=37):
        super().__init__()
        layers, c = [], 1
        for j, co in enumerate(channels):
            layers += [torch.nn.Conv2d(c, co, 3, padding=1), torch.nn.BatchNorm2d(co),
                       torch.nn.ReLU(), torch.nn.MaxPool2d((2, 2) if j < 2 else (2, 1))]
            c = co
        self.cnn = torch.nn.Sequential(*layers)
        self.rnn = torch.nn.LSTM(c * (H // 8), hidden, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, classes)
        with torch.no_grad():
            for m in self.cnn:
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.cnn(x).permute(3, 0, 1, 2)                 # (W', B, C, H')
        out, _ = self.rnn(y.reshape(y.shape[0], y.shape[1], -1))
        return self.head(out)                               # (T, B, classes)


def export(net, x):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 3: "w"}, "y": {0: "t", 1: "b"}})
    return f.getvalue()


def profile(data, feed):
    """fastrnn's seconds per step of the kept program (a node, or fused nodes) over one
    call (the median of 10 calls' figures)."""
    m = fastrnn.load(data)      # (one kept program: this feed's)
    m.run(None, feed)
    prog = next(iter(m._progs.values()))
    real, spent = list(prog.steps), {}

    def timed(run, where):
        def r(*a):
            t = time.perf_counter()
            try:
                return run(*a)
            finally:
                spent.setdefault(where, []).append(time.perf_counter() - t)
        return r
    prog.steps = [(timed(run, where), get, outs, where) for run, get, outs, where in real]
    try:
        total = median_call(lambda: m.run(None, feed), 10)
    finally:
        prog.steps = real
    return total, {w: statistics.median(v) for w, v in spent.items()}


def im2col(m, feed):
    """fastrnn's call with its Convs on the im2col + BLAS path."""
    before = _onnx_conv._KERNEL
    _onnx_conv._KERNEL = False
    try:
        return m.run(None, feed)
    finally:
        _onnx_conv._KERNEL = before


def direct(m, feed):
    """fastrnn's call with its Convs on its kernel's direct products (no Winograd)."""
    before = _onnx_conv._WINOGRAD
    _onnx_conv._WINOGRAD = False
    try:
        return m.run(None, feed)
    finally:
        _onnx_conv._WINOGRAD = before


def conv_macs(data, B):
    """Multiply-adds of each Conv node of the ONNX model ``data`` at batch ``B``, by
    node name (the bench's model: 3x3 Convs of padding 1, the pools halving)."""
    import onnx
    g = onnx.load_from_string(data).graph
    init = {t.name: t for t in g.initializer}
    out, H, W = {}, 32, 128
    for node in g.node:
        if node.op_type == "Conv":
            M, C, kh, kw = init[node.input[1]].dims
            out[node.name] = B * H * W * M * C * kh * kw
        elif node.op_type == "MaxPool":
            k = next(a.ints for a in node.attribute if a.name == "kernel_shape")
            H, W = H // k[0], W // k[1]
    return out


def load():
    return " ".join(open("/proc/loadavg").read().split()[:3]) \
        if os.path.exists("/proc/loadavg") else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
        fastrnn.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = CRNN().eval()
    rng = np.random.default_rng(0)
    data = export(net, rng.standard_normal((1, 1, 32, 128)).astype(np.float32))
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    m = fastrnn.load(data)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{ort.__version__}, numpy {np.__version__}, fastrnn "
          f"{getattr(fastrnn, '__version__', '?')}; median [range] of {args.rounds} rounds"
          f" x {args.calls} calls; load average {load()}")
    print(f"{'input':>18s} {'fastrnn ms':>20s} {'direct ms':>20s} {'im2col ms':>20s} "
          f"{'ORT ms':>20s} {'torch ms':>20s} {'/ORT':>6s} {'/torch':>7s}")
    for B in (int(b) for b in args.batches.split(",")):
        x = rng.standard_normal((B, 1, 32, 128)).astype(np.float32)
        feed = {"x": x}

        def run_torch():
            with torch.no_grad():
                return [net(torch.from_numpy(x)).numpy()]
        runners = {"fastrnn": lambda: m.run(None, feed), "direct": lambda: direct(m, feed),
                   "im2col": lambda: im2col(m, feed), "ORT": lambda: sess.run(None, feed),
                   "torch": run_torch}
        ref = sess.run(None, feed)[0]
        for k, fn in runners.items():
            got = fn()
            got = got[0] if isinstance(got, list) else got["y"]
            assert float(np.abs(got - ref).max()) < 1e-4, k
        meds = {k: [] for k in runners}
        order = list(runners)
        for r in range(args.rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                time.sleep(0.15)
                runners[k]()
                meds[k].append(median_call(runners[k], args.calls))
        r = {k: statistics.median(v) for k, v in meds.items()}

        def cell(k):
            v = meds[k]
            return f"{r[k] * 1e3:.2f} [{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f}]"
        print(f"{str(x.shape):>18s} {cell('fastrnn'):>20s} {cell('direct'):>20s} "
              f"{cell('im2col'):>20s} "
              f"{cell('ORT'):>20s} {cell('torch'):>20s} {r['fastrnn'] / r['ORT']:6.2f} "
              f"{r['fastrnn'] / r['torch']:7.2f}", flush=True)
        if args.profile:
            total, spent = profile(data, feed)
            macs = conv_macs(data, B)
            parts = []
            for w, v in spent.items():
                if v < 2e-5:
                    continue
                name = w.split(" ", 2)[-1]
                mac = next((c for n, c in macs.items() if f"'{n}'" in w), None)
                parts.append(f"{name} {v * 1e3:.3f}" + (
                    f" ({mac / 1e6:.0f}M MACs, {mac / v / 1e9:.0f} GMAC/s)" if mac else ""))
            print(f"   fastrnn by step, a call of {total * 1e3:.2f} ms: " + ", ".join(parts))
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
