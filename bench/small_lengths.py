"""Small layer calls with per-sequence lengths beside the same layer's plain call.

    PYTHONPATH=. python bench/small_lengths.py [--cases LSTM:3:5:16:5/2/3,GRU:4:10:32:10/7/3/9:bf]
                                               [--rounds 7] [--threads 2]

A case is CELL:B:T:H:LENGTHS (CELL one of LSTM, GRU, RNN; input size = H; float32; one
layer; LENGTHS slash-separated, B of them, or ``LO-HI@SEED``: B random lengths in
[LO, HI], ``numpy.random.default_rng(SEED).integers(LO, HI + 1, B)``), optionally
followed by ``:bf``
(batch_first), ``:bi`` (bidirectional), ``:mask`` (the lengths given as a Keras-style
mask, right padding), ``:left`` (with the mask, left padding instead: Keras's
``pad_sequences`` default), ``:zero`` (with the mask, ``masked_output="zero"``) and
``:train`` (a training step instead of a call: ``forward_train`` and ``backward`` of
ones).  Each round times a burst of calls with ``lengths=`` and a burst of plain calls
(the padding computed), in turn; the table gives each one's median over rounds of the
per-burst median.  Only fastrnn: the peers' ONNX
models with ``sequence_lens`` are in ``onnx_options.py`` (``seq=``).  For a before /
after of two builds run this file of each checkout (it imports the fastrnn on
PYTHONPATH).  No timing thresholds.
"""
import argparse

import numpy as np

import fastrnn
from _timing import median_call   # (bench/ is the script's directory)

DEFAULT = ("LSTM:3:5:16:5/2/3,GRU:4:10:32:10/7/3/9:bf,LSTM:8:20:32:20/15/12/10/8/5/3/1:bi,"
           "LSTM:16:50:64:" + "/".join(str(v) for v in range(50, 18, -2)))
CELLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"{'case':44s} {'lengths':>9s} {'plain':>9s}  (us, medians)  lengths / plain")
    for case in a.cases.split(","):
        cell, B, T, H, lens, *opts = case.split(":")
        B, T, H = int(B), int(T), int(H)
        if "@" in lens:
            span, seed = lens.split("@")
            lo, hi = (int(v) for v in span.split("-"))
            lengths = np.random.default_rng(int(seed)).integers(lo, hi + 1, B)
        else:
            lengths = np.array([int(v) for v in lens.split("/")])
        if lengths.shape != (B,):
            raise SystemExit(f"{case}: {len(lengths)} lengths for B={B}")
        bf = "bf" in opts
        layer = CELLS[cell](H, H, batch_first=bf, bidirectional="bi" in opts, seed=0)
        x = rng.standard_normal((B, T, H) if bf else (T, B, H)).astype(np.float32)
        kw = dict(lengths=lengths)
        if "mask" in opts:
            mask = np.arange(T)[:, None] < lengths[None, :]
            if "left" in opts:
                mask = mask[::-1]
            kw = dict(mask=mask.T if bf else mask,
                      masked_output="zero" if "zero" in opts else "carry")
        calls = [lambda: layer(x, **kw), lambda: layer(x)]
        if "train" in opts:
            def train(**kw):
                out, _, cache = layer.forward_train(x, **kw)
                layer.backward(cache, np.ones_like(out))
            calls = [lambda: train(**kw), lambda: train()]
        for f in calls:
            for _ in range(50):
                f()
        per = max(20, int(2e-3 / max(median_call(calls[0], 20), 1e-7)))
        got = [[], []]
        for _ in range(a.rounds):
            for k, f in enumerate(calls):
                got[k].append(median_call(f, per))
        t = [float(np.median(g)) * 1e6 for g in got]
        print(f"{case[:44]:44s} {t[0]:9.2f} {t[1]:9.2f}  {'':15s} {t[0] / t[1]:.2f}")


if __name__ == "__main__":
    main()
