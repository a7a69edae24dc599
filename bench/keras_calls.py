"""Calls of the small Keras models in tests/fixtures/keras (masks, Bidirectional,
Embedding, TimeDistributed) on their stored inputs: where a model call's Python around
tiny layers decides.

    PYTHONPATH=. python bench/keras_calls.py [--models k3_bi_concat_lstm_embed.keras,...]
                                             [--rounds 7]

Each round times a burst of calls of each model in turn; the table gives each one's
median over rounds of the per-burst median, in us, beside the summed time of its
recurrent layers' own calls on the same inputs (the rest is the model's Python and its
other layers).  Only fastrnn (Keras's own predict costs milliseconds a call).  For a
before / after of two builds run this file of each checkout.  No timing thresholds.
"""
import argparse
import os

import numpy as np

import fastrnn
import fastrnn.io
from _timing import median_call   # (bench/ is the script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, os.pardir, "tests", "fixtures", "keras")
DEFAULT = ("k3_bi_concat_lstm_embed.keras,k2_gru_gobw_masking.h5,k3_bi_sum_gru_masking.keras,"
           "k3_bi_none_lstm_masking.keras,k2_bi_modes_embed.h5,k3_gru_gobw.keras")


def _recurrent_calls(model, x):
    """Calls of the model's recurrent cores with the inputs and masks they get in the
    model (one per KerasRNN / Bidirectional layer)."""
    calls, h, mask = [], x, None
    for layer in model.layers:
        core = getattr(layer, "_fused", None) or getattr(layer, "core", None)
        if core is not None:
            zero = getattr(layer, "zero_output_for_mask", None)
            if zero is None:
                zero = layer.forward.zero_output_for_mask
            kw = dict(mask=None if mask is None else np.asarray(mask, bool),
                      masked_output="zero" if zero else "carry")
            calls.append(lambda core=core, h=np.asarray(h), kw=kw: core(h, **kw))
        out, mask = layer.call(h, mask)
        h = out[0] if isinstance(out, list) else out
    return calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    cases = []
    for name in a.models.split(","):
        model = fastrnn.io.load(os.path.join(FIX, name))
        x = np.load(os.path.join(FIX, name.rsplit(".", 1)[0] + ".npz"))["x"]
        rec = _recurrent_calls(model, x)
        cases.append((name, lambda m=model, x=x: m(x), lambda rec=rec: [f() for f in rec],
                      len(rec)))
    for _, f, g, _ in cases:
        for _ in range(100):
            f()
            g()
    got = {c[0]: ([], []) for c in cases}
    for _ in range(a.rounds):
        for name, f, g, _ in cases:
            got[name][0].append(median_call(f, 200))
            got[name][1].append(median_call(g, 200))
    print(f"{'model':36s} {'model call':>11s} {'its RNN calls':>14s}  (us, medians)")
    for name, _, _, n in cases:
        t, r = (float(np.median(v)) * 1e6 for v in got[name])
        print(f"{name:36s} {t:11.1f} {r:14.1f}  ({n} recurrent layer{'s' * (n > 1)})")


if __name__ == "__main__":
    main()
