"""Variable-length batches and the cost of generic activations (pytest-benchmark).

    PYTHONPATH=. python -m pytest bench/bench_varlen.py --benchmark-only \
        --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

Groups:

* ``varlen-skewed <cell> B=64 T=200 H=256``: one batch whose lengths are mostly 10-20 and
  one of 200 (1151 real steps of 12800 padded ones), run by
    - ``fastrnn lengths``: ``layer(x, lengths=lens)`` (packed; padding never computed),
    - ``fastrnn dense, same real steps``: a dense (T=18, B=64) batch, 1152 steps,
    - ``fastrnn dense, same real steps as shape``: dense (T=15, B=64) + one (T=200, B=1)
      sequence, the same work shaped exactly like the skewed batch,
    - ``fastrnn padded (no lengths)``: the padded batch as if dense (what padding costs),
    - ``torch packed`` / ``torch padded``: PyTorch with ``pack_padded_sequence``
      (enforce_sorted=False) and on the padded tensor.
* ``activations <cell> B=16 T=100 H=256``: the default sigmoid/tanh layer, the same
  activations given explicitly as an ONNX-style spec, and a really generic spec
  (hardsigmoid) for scale.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")

B, T, H, I = 64, 200, 256, 256


def _lengths(seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(10, 21, size=B)
    lens[17] = T
    return lens


LENS = _lengths()
REAL = int(LENS.sum())


def _layer(cell, **kw):
    return getattr(fastrnn, cell)(I, H, seed=0, **kw)


def _torch_layer(cell, layer):
    tm = getattr(torch.nn, {"LSTM": "LSTM", "GRU": "GRU"}[cell])(I, H)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return tm.eval()


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(fastrnn.get_num_threads())
    yield


def _x(T_, B_, seed=1):
    return np.random.default_rng(seed).standard_normal((T_, B_, I)).astype(np.float32)


CELLS = ["LSTM", "GRU"]


def _group(cell):
    return f"varlen-skewed {cell} B={B} T={T} H={H} ({REAL} real steps)"


@pytest.mark.parametrize("cell", CELLS)
def test_fastrnn_lengths(benchmark, cell):
    benchmark.group = _group(cell)
    benchmark.name = "fastrnn lengths"
    layer, x = _layer(cell), _x(T, B)
    out, _ = benchmark(layer, x, lengths=LENS)
    assert out.shape == (T, B, H)


@pytest.mark.parametrize("cell", CELLS)
def test_fastrnn_dense_same_real_steps(benchmark, cell):
    benchmark.group = _group(cell)
    benchmark.name = "fastrnn dense, same real steps (T=18 B=64)"
    layer = _layer(cell)
    Td = -(-REAL // B)
    x = _x(Td, B)
    benchmark(layer, x)


@pytest.mark.parametrize("cell", CELLS)
def test_fastrnn_dense_same_shape_of_work(benchmark, cell):
    benchmark.group = _group(cell)
    benchmark.name = "fastrnn dense (T=15 B=64) + (T=200 B=1)"
    layer = _layer(cell)
    Tshort = int(round((REAL - T) / (B - 1)))
    xa, xb = _x(Tshort, B), _x(T, 1)

    def run():
        layer(xa)
        layer(xb)
    benchmark(run)


@pytest.mark.parametrize("cell", CELLS)
def test_fastrnn_padded_no_lengths(benchmark, cell):
    benchmark.group = _group(cell)
    benchmark.name = "fastrnn padded, no lengths (12800 steps)"
    layer, x = _layer(cell), _x(T, B)
    benchmark.pedantic(layer, args=(x,), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_packed(benchmark, cell):
    from torch.nn.utils.rnn import pack_padded_sequence

    benchmark.group = _group(cell)
    benchmark.name = "torch packed (enforce_sorted=False)"
    layer = _layer(cell)
    tm = _torch_layer(cell, layer)
    x = torch.from_numpy(_x(T, B))
    lens = torch.from_numpy(LENS)

    def run():
        with torch.no_grad():
            return tm(pack_padded_sequence(x, lens, enforce_sorted=False))
    benchmark(run)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_padded(benchmark, cell):
    benchmark.group = _group(cell)
    benchmark.name = "torch padded (12800 steps)"
    layer = _layer(cell)
    tm = _torch_layer(cell, layer)
    x = torch.from_numpy(_x(T, B))

    def run():
        with torch.no_grad():
            return tm(x)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


# ----------------------------------------------------------- default vs generic activations
AB, AT = 16, 100
SPECS = {
    "LSTM": {"default": None, "explicit sigmoid,tanh,tanh": ["sigmoid", "tanh", "tanh"],
             "generic hardsigmoid,tanh,tanh": ["hardsigmoid", "tanh", "tanh"]},
    "GRU": {"default": None, "explicit sigmoid,tanh": ["sigmoid", "tanh"],
            "generic hardsigmoid,tanh": ["hardsigmoid", "tanh"]},
    "SimpleRNN": {"default": None, "explicit tanh": ["tanh"], "generic softsign": ["softsign"]},
}
ACT_CASES = [(c, k) for c in SPECS for k in SPECS[c]]


@pytest.mark.parametrize("cell,spec", ACT_CASES)
def test_activation_cost(benchmark, cell, spec):
    benchmark.group = f"activations {cell} B={AB} T={AT} H={H}"
    benchmark.name = f"fastrnn {spec}"
    acts = SPECS[cell][spec]
    layer = getattr(fastrnn, cell)(I, H, seed=0, activations=acts)
    x = _x(AT, AB)
    benchmark(layer, x)
