"""Every forward kernel path against the float64 NumPy reference.

Paths (``fastrnn._kernels.choose_path``): "small" = packed unit-block kernel in one
persistent parallel region (the default wherever it applies, any batch size); "blas" =
per-step BLAS GEMM + vectorised gate pass (LSTM projection, GRU reset_after=False, and
forced here for coverage).  Each is checked at several batch sizes, odd hidden sizes
(tails of the 16/8-unit blocks), uni/bi-directional, all cells, float32/float64, every
ISA level the CPU has, 1 and 2 threads, variable lengths and masks.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _kernels
from reference import rnn_forward

CELLS = {"RNN": fastrnn.SimpleRNN, "LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}


@pytest.fixture(params=[0, 1, 2], ids=["auto", "small", "blas"])
def path(request):
    _kernels._set_path(request.param)
    yield request.param
    _kernels._set_path(0)


@pytest.fixture(autouse=True)
def tiny_shapes_use_threads():
    """The kernels keep tiny problems on one thread; the tests' shapes are tiny, so
    lift that limit to exercise the multi-thread code (unit and row splits)."""
    old = _kernels._set_min_parallel_work(0)
    yield
    _kernels._set_min_parallel_work(old)


def _tol(dtype):
    return (2e-5, 2e-5) if dtype == np.float32 else (1e-11, 1e-11)


def _check(layer, x, **kw):
    out, st = layer(x, **kw)
    ref_out, ref_h, ref_c = rnn_forward(layer, x, lengths=kw.get("lengths"),
                                        mask=kw.get("mask"),
                                        masked_output=kw.get("masked_output", "carry"))
    rtol, atol = _tol(layer.dtype)
    np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol)
    h = st[0] if isinstance(st, tuple) else st
    np.testing.assert_allclose(h, ref_h, rtol=rtol, atol=atol)
    if isinstance(st, tuple):
        np.testing.assert_allclose(st[1], ref_c, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8, 9, 17])
@pytest.mark.parametrize("H", [1, 7, 16, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_batch_and_hidden(path, cell, B, H, dtype):
    rng = np.random.default_rng(B * 100 + H)
    if cell == "GRU-reset-before":
        layer = fastrnn.GRU(5, H, dtype=dtype, seed=H + B, reset_after=False)
    else:
        layer = CELLS[cell](5, H, dtype=dtype, seed=H + B)
    x = rng.standard_normal((6, B, 5)).astype(dtype)
    _check(layer, x)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_paths_bidirectional_stacked_threads(path, cell, bidirectional, nt):
    rng = np.random.default_rng(7)
    layer = CELLS[cell](9, 40, num_layers=2, bidirectional=bidirectional, seed=3,
                        num_threads=nt)
    x = rng.standard_normal((11, 4, 9)).astype(np.float32)
    _check(layer, x)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_lengths_and_reverse(path, cell, dtype):
    rng = np.random.default_rng(11)
    layer = CELLS[cell](4, 20, bidirectional=True, dtype=dtype, seed=5, num_threads=2)
    x = rng.standard_normal((9, 5, 4)).astype(dtype)
    _check(layer, x, lengths=[9, 3, 0, 7, 1])


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("masked_output", ["carry", "zero"])
def test_paths_mask(path, cell, masked_output):
    rng = np.random.default_rng(13)
    layer = CELLS[cell](3, 18, bidirectional=True, seed=2, num_threads=2)
    x = rng.standard_normal((8, 3, 3)).astype(np.float32)
    mask = rng.random((8, 3)) > 0.3
    _check(layer, x, mask=mask, masked_output=masked_output)


@pytest.mark.parametrize("kw", [
    dict(activations=["hardsigmoid", "elu", "softsign"]),
    dict(clip=0.7),
    dict(peepholes=True),
    dict(input_forget=True),
    dict(proj_size=5),
    dict(go_backwards=True),
], ids=["acts", "clip", "peep", "input_forget", "proj", "go_backwards"])
def test_paths_lstm_options(path, kw):
    rng = np.random.default_rng(17)
    layer = fastrnn.LSTM(6, 21, seed=9, num_threads=2, **kw)
    if kw.get("peepholes"):
        sd = layer.state_dict()
        sd["weight_ph_l0"] = rng.standard_normal(sd["weight_ph_l0"].shape).astype(np.float32)
        layer.load_state_dict(sd)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    _check(layer, x)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("kw", [dict(), dict(activations=["hardsigmoid", "softsign"]),
                                dict(clip=0.5)], ids=["default", "acts", "clip"])
@pytest.mark.parametrize("B", [4, 18])
def test_paths_gru_options(path, reset_after, kw, B):
    rng = np.random.default_rng(19)
    layer = fastrnn.GRU(5, 19, reset_after=reset_after, seed=4, num_threads=2,
                        bidirectional=True, **kw)
    x = rng.standard_normal((6, B, 5)).astype(np.float32)
    _check(layer, x)
    _check(layer, x, lengths=rng.integers(0, 7, B))
    _check(layer, x, mask=rng.random((6, B)) > 0.3)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_paths_rnn_relu(path, nonlinearity):
    rng = np.random.default_rng(23)
    layer = fastrnn.SimpleRNN(5, 30, nonlinearity=nonlinearity, seed=1, num_threads=2)
    x = rng.standard_normal((10, 3, 5)).astype(np.float32)
    _check(layer, x)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_isa_levels(level, cell):
    """Every ISA version of the C kernels (those the CPU supports) gives the same answer."""
    rng = np.random.default_rng(29)
    layer = CELLS[cell](8, 37, seed=6, num_threads=2)
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)
    _kernels._set_isa_level(level)
    try:
        _check(layer, x)
    finally:
        _kernels._set_isa_level(-1)


def test_tiny_problems_stay_on_one_thread_and_agree():
    _kernels._set_min_parallel_work(16384)
    rng = np.random.default_rng(47)
    layer = fastrnn.GRU(3, 8, seed=2, num_threads=2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    _check(layer, x)


def test_path_choice_is_automatic():
    assert _kernels.choose_path(1, 1, 256, 0, 1, 2) == "small"
    assert _kernels.choose_path(1, 64, 512, 0, 1, 2) == "small"
    assert _kernels.choose_path(1, 1, 256, 5, 1, 2) == "blas"     # projection
    assert _kernels.choose_path(2, 1, 256, 0, 0, 2) == "small"    # GRU reset_after=False
    assert _kernels.isa() in ("avx512", "avx2+fma", "x86-64 baseline")


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_return_sequences_false(path, cell, bidirectional):
    rng = np.random.default_rng(31)
    layer = CELLS[cell](4, 13, num_layers=2, bidirectional=bidirectional, seed=8)
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    lengths = [7, 2, 5]
    out, st = layer(x, lengths=lengths)
    last, st2 = layer(x, lengths=lengths, return_sequences=False)
    h = st[0] if isinstance(st, tuple) else st
    h2 = st2[0] if isinstance(st2, tuple) else st2
    np.testing.assert_array_equal(h, h2)
    D = 2 if bidirectional else 1
    assert last.shape == (3, D * 13)
    np.testing.assert_array_equal(last, np.concatenate(list(h[-D:]), axis=1))
    # forward direction's last output is its final state
    np.testing.assert_allclose(last[0, :13], out[6, 0, :13], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
def test_step_fast_matches_sequence(cell, dtype, nt):
    rng = np.random.default_rng(37)
    layer = CELLS[cell](6, 40, num_layers=2, dtype=dtype, seed=10, num_threads=nt)
    x = rng.standard_normal((5, 3, 6)).astype(dtype)
    ref, _ = layer(x)
    h = np.zeros((2, 3, 40), dtype)
    c = np.zeros((2, 3, 40), dtype) if cell == "LSTM" else None
    outs = [layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy() for t in range(5)]
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(np.array(outs), ref, rtol=rtol, atol=atol)


def test_step_fast_fallback_configs():
    rng = np.random.default_rng(41)
    for layer in (fastrnn.LSTM(4, 9, proj_size=3, seed=1), fastrnn.GRU(4, 9, reset_after=False, seed=1),
                  fastrnn.GRU(4, 40, reset_after=False, seed=1, num_layers=2)):
        x = rng.standard_normal((4, 2, 4)).astype(np.float32)
        ref, _ = layer(x)
        Hout = layer.output_size
        h = np.zeros((layer.num_layers, 2, Hout), np.float32)
        c = np.zeros((1, 2, 9), np.float32) if layer._cell == "LSTM" else None
        outs = [layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy() for t in range(4)]
        np.testing.assert_allclose(np.array(outs), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("nt", [2, 3])
def test_row_split_lengths_mask(path, cell, nt):
    """B >= 16 with several threads: rows split between threads (no barrier)."""
    rng = np.random.default_rng(43)
    layer = CELLS[cell](5, 23, bidirectional=True, seed=12, num_threads=nt)
    x = rng.standard_normal((9, 21, 5)).astype(np.float32)
    lengths = rng.integers(0, 10, 21)
    _check(layer, x, lengths=lengths)
    mask = rng.random((9, 21)) > 0.25
    _check(layer, x, mask=mask)
