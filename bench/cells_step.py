"""Per-call time of fastrnn's cells against torch.nn's, one decoder step at a time.

    python bench/cells_step.py                       # LSTMCell(256, 256), B=1
    python bench/cells_step.py --cell gru --batch 8 --hidden 512

Each call carries its state into the next (``h, c = cell(x, (h, c))``, a decoder
loop).  Prints the minimum and the median over ``--calls`` calls (in 10 alternating
rounds, each after 50 warm-up calls), in microseconds, for: the fastrnn cell,
``torch.nn.<Cell>`` under ``torch.inference_mode()`` with
``torch.set_num_threads(--threads)``, and, for reference, ``fastrnn.Stream.step`` on
the cell's own one-layer module (the same kernel entry without the cell's argument
checks and fresh output arrays).  Both libraries run on ``--threads`` threads.  With
``--no-torch`` also ``Stream.step`` of a Keras-style model holding one such layer
(``fastrnn.model.Model([KerasRNN(...)])``: a loaded Keras model's stream).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _times(fns, n, rounds=10, warm=50):
    """Per-call times of each of ``fns`` (name -> callable), n calls each, measured in
    ``rounds`` alternating rounds (so a busy machine weighs on all alike): name ->
    (min, median) in microseconds."""
    ts = {k: [] for k in fns}
    per = max(1, n // rounds)
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(warm):
                fn()
            for _ in range(per):
                t = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t)
    return {k: (min(v) * 1e6, float(np.median(v)) * 1e6) for k, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    ap.add_argument("--input", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--no-torch", action="store_true",
                    help="fastrnn only (torch's threads spin after each of its calls and "
                         "slow a two-thread step that follows)")
    a = ap.parse_args(argv)

    import fastrnn
    if a.no_torch:
        cls = {"lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell, "rnn": fastrnn.RNNCell}[a.cell]
        fastrnn.set_num_threads(a.threads)
        cell = cls(a.input, a.hidden, dtype=a.dtype, seed=0)
        x = np.random.default_rng(0).standard_normal((a.batch, a.input)).astype(a.dtype)
        st = {"f": cell(x)}

        def f_only():
            st["f"] = cell(x, st["f"])

        stream = fastrnn.Stream(cell.layer, batch_size=a.batch)
        from fastrnn.model import KerasRNN, Model
        lcls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.SimpleRNN}[a.cell]
        core = lcls(a.input, a.hidden, batch_first=True, dtype=a.dtype, seed=0)
        mstream = fastrnn.Stream(Model([KerasRNN(core, return_sequences=True)]),
                                 batch_size=a.batch)
        res = _times({"fastrnn." + cls.__name__: f_only,
                      "fastrnn.Stream.step": lambda: stream.step(x),
                      "Stream.step (model)": lambda: mstream.step(x)}, a.calls)
        _report(cell, a, res)
        return 0

    import torch

    from fastrnn.cells import from_torch_cell

    torch.set_num_threads(a.threads)
    fastrnn.set_num_threads(a.threads)
    torch.manual_seed(0)
    tcls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[a.cell]
    tcell = tcls(a.input, a.hidden).to(getattr(torch, a.dtype)).eval()
    cell = from_torch_cell(tcell)

    x = np.random.default_rng(0).standard_normal((a.batch, a.input)).astype(a.dtype)
    xt = torch.from_numpy(x)
    st = {"f": cell(x), "t": None}

    def f_cell():
        st["f"] = cell(x, st["f"])

    with torch.inference_mode():
        st["t"] = tcell(xt)

        def t_cell():
            st["t"] = tcell(xt, st["t"])

        stream = fastrnn.Stream(cell.layer, batch_size=a.batch)
        res = _times({"fastrnn." + type(cell).__name__: f_cell,
                      f"torch.nn.{tcls.__name__}": t_cell,
                      "fastrnn.Stream.step": lambda: stream.step(x)}, a.calls)
    _report(cell, a, res)
    return 0


def _report(cell, a, res):
    print(f"{type(cell).__name__}({a.input}, {a.hidden}) B={a.batch} {a.dtype}, "
          f"{a.threads} threads, {a.calls} calls (us per call)")
    for name, (mn, med) in res.items():
        print(f"  {name:<24} min {mn:8.2f}   median {med:8.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
