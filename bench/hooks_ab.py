"""In-process A/B of the kernels' tuning hooks: each variant against the automatic rules.

    PYTHONPATH=. python bench/hooks_ab.py --cases LSTM:1:100:256,GRU:1:100:256,BiLSTM:8:100:256 \
        --variants overlap0,swpf0,rows8 [--rounds 12] [--calls 15] [--pre overlap0] [--ragged]

A case is CELL:B:T:H (CELL one of LSTM, GRU, RNN, or BiLSTM / BiGRU / BiRNN for a 2-layer
bidirectional layer; input size = H; float32, or float64 with a fifth field ``f64``).  A
variant sets one or more ``fastrnn._kernels`` hooks for its calls (the names below); the
variants of a round run in turn (the order reversed every other round), each timing
``--calls`` calls of every case after a warm-up call, and the report gives per case the
median time of the base (no hook set) and, per variant, the median over rounds of its time
over the base's.  ``--pre`` sets variants' hooks for the whole run (the base included).
``--ragged``: lengths T/2..T (the first T), as ``bench_paths.py --ragged``; ``--threads``:
the layers' thread count (2).  Same
arithmetic either way for every hook here; no peers, no timing thresholds.
"""
import argparse

import numpy as np
from _timing import median_call, ragged_lengths   # (bench/ is the script's directory)

import fastrnn
from fastrnn import _backward, _kernels, layers

VARIANTS = {
    "overlap0": {"_set_step_overlap": 0},   # the unit split's overlap off
    "overlap1": {"_set_step_overlap": 1},   # ... forced on
    "swpf0": {"_set_swpf": 0},              # the matvec's software prefetch off
    "swpf1": {"_set_swpf": 1},
    "defer0": {"_set_gate_defer": 0},       # gate math per block
    "bar1": {"_set_spin_barrier": 1},       # (the default)
    "bar0": {"_set_spin_barrier": 0},       # OpenMP's barrier
    "place0": {"_set_worker_placement": 0},
    "rows8": {"_set_rowsplit_min": 8},      # Zen 4's row split
    "pair1": {"_set_pair": 1},              # both directions at once, forced
    "pair2": {"_set_pair": 2},              # ... never
    "f19": {"_set_amd_f19": 1},             # AMD Zen 3 / 4's rules
    "amd0": {"_set_amd": 0},                # rules as on a CPU other than AMD
    "small": {"_set_path": 1},              # the packed kernel wherever it applies
    "wide": {"_set_path": 3},               # the batch-lane kernel wherever it applies
    "route0": {"layers._FUSED_LSTM_MIN_B": 0},   # the LSTM route never
    "route1": {"layers._FUSED_LSTM_MIN_B": 1},   # ... wherever it applies
}


def _apply(hooks):
    """Set each hook (a _kernels / _backward setter, or a module variable "layers.NAME");
    returns the previous values in the same form."""
    old = {}
    for k, v in hooks.items():
        if k.startswith("layers."):
            old[k] = getattr(layers, k[7:])
            setattr(layers, k[7:], v)
        else:
            old[k] = getattr(_kernels if hasattr(_kernels, k) else _backward, k)(v)
    return old


def _case(spec, ragged=False, threads=2):
    f = spec.split(":")
    cell, B, T, H = f[0], int(f[1]), int(f[2]), int(f[3])
    dt = "float64" if "f64" in f[4:] else "float32"
    bi = cell.startswith("Bi")
    cls = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}[cell[2:] if bi else cell]
    layer = cls(H, H, num_layers=2 if bi else 1, bidirectional=bi, seed=0, num_threads=threads,
                dtype=dt)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(dt)
    kw = {"lengths": ragged_lengths(T, B)} if ragged else {}
    return spec, layer, x, kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="LSTM:1:100:256,GRU:1:100:256")
    ap.add_argument("--variants", default="overlap0,swpf0")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--pre", default="")
    ap.add_argument("--ragged", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for name in filter(None, a.pre.split(",")):
        _apply(VARIANTS[name])
    names = ["base"] + [v for v in a.variants.split(",") if v]
    hooks = {"base": {}, **{n: VARIANTS[n] for n in names[1:]}}
    cases = [_case(c, a.ragged, a.threads) for c in a.cases.split(",")]
    res = {}
    for r in range(a.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            old = _apply(hooks[name])
            try:
                for spec, layer, x, kw in cases:
                    layer(x, **kw)
                    res.setdefault((spec, name), []).append(
                        median_call(lambda: layer(x, **kw), a.calls))
            finally:
                _apply(old)
    for spec, *_ in cases:
        base = np.array(res[(spec, "base")])
        print(f"{spec}: base {np.median(base) * 1e3:.3f} ms; " + "; ".join(
            f"{n} {np.median(np.array(res[(spec, n)]) / base):.3f}" for n in names[1:]))


if __name__ == "__main__":
    main()
