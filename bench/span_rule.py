"""Masks of spans run packed against the same calls on the mask kernels: the measurement
behind the packing rule (fastrnn.layers._SPAN_MIN_MACS, _SPAN_MIN_SKIP,
_SPAN_MIN_SKIP_NARROW).

    PYTHONPATH=. python bench/span_rule.py [--cells LSTM,GRU] [--sizes 4:50,16:50,64:50]
                                           [--hidden 32,64,128,256] [--masked 0.1,0.3,0.5]
                                           [--rounds 7] [--threads 2] [--lengths]

For each cell, batch:steps size, hidden size (= input size), direction count and
masked share f, a left-padded mask with lengths spread evenly so that f of the steps
are masked; each round times a burst of calls packed (the rule off: every mask of
spans packed) and a burst on the mask kernels (the conversion off), in turn.  Prints
the median over rounds of packed / mask kernels (below 1: packing pays), the call's
multiply-adds and whether the rule packs it.  ``--lengths``: calls with ``lengths=``
(right padding, PyTorch's packed sequences) packed against the same calls on the mask
kernels (the lengths as a mask, masked_output "zero": the same results; the route the
call takes with less than _SPAN_MIN_SKIP padding, mask construction included).  Only
fastrnn; no timing thresholds.
"""
import argparse

import numpy as np

import fastrnn
import fastrnn.layers as layers
from _timing import median_call   # (bench/ is the script's directory)

CELLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}
RULE = ("_SPAN_MIN_MACS", "_SPAN_MIN_SKIP", "_SPAN_MIN_SKIP_NARROW")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="LSTM,GRU")
    ap.add_argument("--sizes", default="4:50,16:50,64:50")
    ap.add_argument("--hidden", default="32,64,128,256")
    ap.add_argument("--masked", default="0.1,0.3,0.5")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", action="store_true")
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    rule = {k: getattr(layers, k) for k in RULE}
    rng = np.random.default_rng(0)
    print(f"{'case':28s} {'masked':>6s} {'M mult-adds':>11s} {'packed/mask':>11s}  rule packs")
    for cell in a.cells.split(","):
        for size in a.sizes.split(","):
            B, T = (int(v) for v in size.split(":"))
            for H in (int(v) for v in a.hidden.split(",")):
                for bi in (False, True):
                    layer = CELLS[cell](H, H, bidirectional=bi, seed=0)
                    x = rng.standard_normal((T, B, H)).astype(np.float32)
                    for f in (float(v) for v in a.masked.split(",")):
                        lens = np.round(T * (1 - 2 * f * np.linspace(0, 1, B))).astype(int)
                        lens = lens.clip(1, T)
                        rng.shuffle(lens)
                        mask = (np.arange(T)[:, None] >= T - lens)      # left padding
                        if a.lengths:
                            mask = mask[::-1].copy()                    # right padding
                        packs = (T * B - lens.sum() >= rule["_SPAN_MIN_SKIP"] * T * B
                                 if a.lengths else layers.RNNBase._mask_as_spans(
                                     layer, mask, T, B, False, True)[0] is not None)
                        for k in RULE:
                            setattr(layers, k, 0)
                        if a.lengths:
                            def packed():
                                layers._SPAN_MIN_SKIP = 0.0
                                return layer(x, lengths=lens)

                            def kernels():
                                layers._SPAN_MIN_SKIP = 1.0     # (every lengths call)
                                return layer(x, lengths=lens)
                        else:
                            packed = kernels = lambda: layer(x, mask=mask)  # noqa: E731
                        try:
                            for conv, call in ((True, packed), (False, kernels)):
                                layers._MASK_AS_LENGTHS = conv
                                for _ in range(5):
                                    call()
                            per = max(3, int(2e-3 / max(median_call(packed, 5), 1e-7)))
                            ratios = []
                            for _ in range(a.rounds):
                                layers._MASK_AS_LENGTHS = True
                                p = median_call(packed, per)
                                layers._MASK_AS_LENGTHS = False
                                ratios.append(p / median_call(kernels, per))
                        finally:
                            layers._MASK_AS_LENGTHS = True
                            for k, v in rule.items():
                                setattr(layers, k, v)
                        case = f"{cell}:{B}:{T}:{H}" + (":bi" if bi else "")
                        macs = B * layer._macs(T) / 1e6
                        print(f"{case:28s} {T * B - lens.sum():4d}/{T * B:<4d} "
                              f"{macs:11.1f} {np.median(ratios):11.2f}  "
                              f"{'yes' if packs else 'no'}", flush=True)


if __name__ == "__main__":
    main()
