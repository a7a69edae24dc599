"""torch 2.13's default ONNX exporter (``dynamo=True``): fastrnn beside ONNX Runtime.

    PYTHONPATH=. python bench/onnx_dynamo.py [--rounds 5] [--calls 50] [--threads N]
                                             [--quick]

Needs torch, onnxscript (the exporter) and onnxruntime.  Two parts:

1. ``nn.LSTM`` / ``nn.GRU`` exported as the exporter's default does (no
   ``dynamic_shapes``: fixed shapes, the zero initial states stored as initializers) and
   with ``dynamic_shapes`` (the zero states computed from the input's shape).  Columns:
   fastrnn on each export; fastrnn on the static export with constant zero states *not*
   run as absent ones (``_Program._zero_state`` patched to say no: what fastrnn did before
   it took them as absent, timed in the same rounds); ONNX Runtime on each export.
2. Graphs the exporter unrolls (it has no RNN node): ``nn.RNN`` with fixed and with
   dynamic shapes (the latter read each step through SplitToSequence / SequenceAt),
   LSTMCell / GRUCell loops.  fastrnn runs an unrolled ``nn.RNN`` as one SimpleRNN call
   per layer and direction and a cell loop over the input as one LSTM / GRU call
   (``fastrnn.io._onnx_unrolled``; column "op by op": the same model with that off, as
   before, timed in the same rounds); a loop whose step input is made from the last h
   (autoregressive) runs each step's cell ops as one step of the layer.

Each round calls each runner ``--calls`` times in turn; a runner's time is the minimum
over all its calls (small calls: the minimum is the stable figure on a shared machine).
Every runner's outputs are checked against ONNX Runtime's first.  ``--threads N``: N
threads for fastrnn and ONNX Runtime (default: each library's own default).
"""
import argparse
import contextlib
import io
import logging
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

import fastrnn
from fastrnn.io import onnx as fonnx

A = torch.export.Dim.AUTO


def export(net, x, dynamic, **kw):
    if dynamic:
        kw["dynamic_shapes"] = ({0: A, 1: A},)
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.from_numpy(x),), f, dynamo=True, **kw)
    return f.getvalue()


class CellLoop(torch.nn.Module):
    def __init__(self, cell, I, H, steps):
        super().__init__()
        self.c, self.H, self.steps = getattr(torch.nn, cell)(I, H), H, steps
        self.lstm = cell == "LSTMCell"

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.H)
        c = x.new_zeros(x.shape[0], self.H)
        for t in range(self.steps):
            if self.lstm:
                h, c = self.c(x[:, t], (h, c))
            else:
                h = self.c(x[:, t], h)
        return h


class Autoregressive(torch.nn.Module):
    """A greedy-decoder-like loop: each step's input is a Linear of the last h."""

    def __init__(self, cell, I, H, steps):
        super().__init__()
        self.c, self.back, self.H, self.steps = getattr(torch.nn, cell)(I, H), \
            torch.nn.Linear(H, I), H, steps
        self.lstm = cell == "LSTMCell"

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.H)
        c = x.new_zeros(x.shape[0], self.H)
        inp, outs = x[:, 0], []
        for t in range(self.steps):
            if self.lstm:
                h, c = self.c(inp, (h, c))
            else:
                h = self.c(inp, h)
            inp = self.back(h)
            outs.append(inp)
        return torch.stack(outs, 1)


def tmin(fn, n):
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


class Before:
    """fastrnn with constant zero initial states not taken as absent (as before)."""

    def __init__(self, data):
        self.m = fastrnn.load(data)

    def run(self, names, feeds):
        if self.m._progs:           # (the kept program, made below: nothing patched)
            return self.m.run(names, feeds)
        real = fonnx._Program.__dict__["_zero_state"]     # (the staticmethod itself)
        fonnx._Program._zero_state = staticmethod(lambda *a: False)
        try:
            return self.m.run(names, feeds)
        finally:
            fonnx._Program._zero_state = real


class OpByOp:
    """fastrnn with unrolled recurrences run op by op (as before they were fused)."""

    def __init__(self, data):
        self.m = fastrnn.load(data)

    def run(self, names, feeds):
        if self.m._progs:
            return self.m.run(names, feeds)
        from fastrnn.io import _onnx_unrolled
        real = _onnx_unrolled.fuse
        _onnx_unrolled.fuse = lambda *a: ({}, set())
        try:
            return self.m.run(names, feeds)
        finally:
            _onnx_unrolled.fuse = real


def kinds(m):
    prog = next(iter(m._progs.values()))
    return [s[0].__qualname__.split(".<locals>")[0].split(".")[-1] for s in prog.steps]


def time_runners(runners, feed, rounds, calls):
    """{label: seconds}: runners (label, object with .run(None, feed)) checked against
    the first, then timed in turn, ``rounds`` times."""
    ref = runners[0][1].run(None, feed)
    for label, r in runners[1:]:
        got = r.run(None, feed)
        r.run(None, feed)           # (the kept program's first run)
        d = max(float(np.abs(a - b).max()) for a, b in zip(got, ref))
        assert d < 1e-4, (label, d)
    best = {label: float("inf") for label, _ in runners}
    for _ in range(rounds):
        for label, r in runners:
            best[label] = min(best[label], tmin(lambda: r.run(None, feed), calls))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="small models only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
        fastrnn.set_num_threads(args.threads)
    sess = lambda data: ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])  # noqa
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, fastrnn "
          f"{getattr(fastrnn, '__version__', '?')}; min of {args.rounds} x {args.calls} calls")

    print("\n1. nn.LSTM / nn.GRU, batch_first (us a call)")
    cases = [("LSTM", 32, 32, 1, 1, 1, False), ("GRU", 32, 32, 1, 5, 2, True),
             ("LSTM", 64, 64, 4, 20, 2, False)]
    if not args.quick:
        cases.insert(0, ("LSTM", 128, 256, 1, 100, 1, False))
    print(f"{'case':34s} {'static':>8s} {'st.before':>9s} {'dynamic':>8s} {'ORT st.':>8s} "
          f"{'ORT dyn':>8s}  static program")
    for cell, I, H, B, T, L, bi in cases:
        net = getattr(torch.nn, cell)(I, H, num_layers=L, bidirectional=bi, batch_first=True)
        x = rng.standard_normal((B, T, I)).astype(np.float32)
        ds, dd = export(net, x, False), export(net, x, True)
        ms, md = fastrnn.load(ds), fastrnn.load(dd)
        r = time_runners([("ORT st.", sess(ds)), ("static", ms), ("st.before", Before(ds)),
                          ("dynamic", md), ("ORT dyn", sess(dd))], {"input": x},
                         args.rounds, args.calls)
        name = f"{cell}({I},{H}) L={L}{' bi' if bi else ''} B={B} T={T}"
        print(f"{name:34s} " + " ".join(f"{r[k] * 1e6:{w}.1f}" for k, w in (
            ("static", 8), ("st.before", 9), ("dynamic", 8), ("ORT st.", 8), ("ORT dyn", 8)))
            + f"  {kinds(ms)}")

    print("\n2. unrolled graphs (us a call)")
    cases = [("RNN(32,64) relu T=20 B=1", torch.nn.RNN(32, 64, batch_first=True,
                                                       nonlinearity="relu"), (1, 20, 32)),
             ("GRUCell(32,64) x10 B=4", CellLoop("GRUCell", 32, 64, 10), (4, 10, 32)),
             ("GRUCell(32,64) autoregr. x10 B=4", Autoregressive("GRUCell", 32, 64, 10),
              (4, 10, 32))]
    if not args.quick:
        cases += [("RNN(128,256) T=100 B=1", torch.nn.RNN(128, 256, batch_first=True),
                   (1, 100, 128)),
                  ("RNN(64,128) L=2 bi T=50 B=16", torch.nn.RNN(
                      64, 128, num_layers=2, bidirectional=True, batch_first=True),
                   (16, 50, 64)),
                  ("LSTMCell(128,256) x10 B=1", CellLoop("LSTMCell", 128, 256, 10),
                   (1, 10, 128))]
    print(f"{'case':34s} {'export':>9s} {'steps':>6s} {'fused':>6s} {'fastrnn':>9s} "
          f"{'op by op':>9s} {'ORT':>9s} {'ratio':>6s}")
    for name, net, shape in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        for tag, dyn, kw in (("static", False, {}), ("dynamic", True, {})) if \
                name.startswith("RNN") else (("static", False, {}),
                                             ("opt=False", False, dict(optimize=False))):
            data = export(net, x, dyn, **kw)
            m = fastrnn.load(data)
            r = time_runners([("ORT", sess(data)), ("fastrnn", m), ("op by op", OpByOp(data))],
                             {m.input_names[0]: x}, args.rounds, args.calls)
            fused = sum("(unrolled " in s[3] for s in next(iter(m._progs.values())).steps)
            print(f"{name:34s} {tag:>9s} {len(m._steps):6d} {fused:6d} "
                  f"{r['fastrnn'] * 1e6:9.1f} {r['op by op'] * 1e6:9.1f} {r['ORT'] * 1e6:9.1f} "
                  f"{r['fastrnn'] / r['ORT']:6.2f}")


if __name__ == "__main__":
    main()
