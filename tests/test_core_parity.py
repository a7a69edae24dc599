"""Forward parity with live PyTorch 2.13 and with the NumPy reference."""
import itertools

import numpy as np
import pytest

import fastrnn
from reference import rnn_forward

torch = pytest.importorskip("torch")

TOL = {np.float32: 1e-5, np.float64: 1e-10}

CELLS = {
    "rnn_tanh": lambda I, H, **kw: torch.nn.RNN(I, H, nonlinearity="tanh", **kw),
    "rnn_relu": lambda I, H, **kw: torch.nn.RNN(I, H, nonlinearity="relu", **kw),
    "lstm": lambda I, H, **kw: torch.nn.LSTM(I, H, **kw),
    "lstm_proj": lambda I, H, **kw: torch.nn.LSTM(I, H, proj_size=H // 2, **kw),  # H=1: none
    "gru": lambda I, H, **kw: torch.nn.GRU(I, H, **kw),
}


def _torch_run(mod, x, hx):
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if hx is None:
            out, st = mod(xt)
        elif isinstance(hx, tuple):
            out, st = mod(xt, tuple(torch.from_numpy(a) for a in hx))
        else:
            out, st = mod(xt, torch.from_numpy(hx))
    if isinstance(st, tuple):
        return out.numpy(), tuple(s.numpy() for s in st)
    return out.numpy(), st.numpy()


def _compare(ref, got, tol):
    out_r, st_r = ref
    out_g, st_g = got
    assert out_g.shape == out_r.shape
    assert out_g.dtype == out_r.dtype
    err = np.abs(out_g - out_r).max() if out_r.size else 0.0
    if isinstance(st_r, tuple):
        for a, b in zip(st_r, st_g):
            assert a.shape == b.shape
            err = max(err, np.abs(a - b).max())
    else:
        assert st_r.shape == st_g.shape
        err = max(err, np.abs(st_r - st_g).max())
    assert err <= tol, f"max abs error {err} > {tol}"


def _make(cell, I, H, L, bi, bf, bias, dtype, seed=0):
    torch.manual_seed(seed)
    mod = CELLS[cell](I, H, num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    if dtype == np.float64:
        mod = mod.double()
    return mod


def _inputs(mod, T, B, I, init, dtype, seed=1):
    rng = np.random.default_rng(seed)
    shape = (B, T, I) if mod.batch_first else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    hx = None
    if init:
        D = 2 if mod.bidirectional else 1
        Hout = getattr(mod, "proj_size", 0) or mod.hidden_size
        h0 = rng.standard_normal((D * mod.num_layers, B, Hout)).astype(dtype)
        if isinstance(mod, torch.nn.LSTM):
            c0 = rng.standard_normal((D * mod.num_layers, B, mod.hidden_size)).astype(dtype)
            hx = (h0, c0)
        else:
            hx = h0
    return x, hx


GRID = list(itertools.product(CELLS, [1, 2, 3], [False, True], [False, True],
                              [True, False], [False, True]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,L,bi,bf,bias,init", GRID)
def test_parity_grid(cell, L, bi, bf, bias, init, dtype):
    I, H, T, B = 4, 6, 5, 3
    mod = _make(cell, I, H, L, bi, bf, bias, dtype)
    layer = fastrnn.from_torch(mod)
    assert layer.dtype == dtype
    x, hx = _inputs(mod, T, B, I, init, dtype)
    _compare(_torch_run(mod, x, hx), layer(x, hx), TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("I,H,T,B", [(3, 1, 4, 2), (3, 7, 1, 1), (1, 7, 6, 5), (5, 2, 3, 1),
                                     (3, 7, 9, 5)])
def test_parity_odd_sizes(cell, I, H, T, B, dtype):
    for bi in (False, True):
        mod = _make(cell, I, H, 2, bi, False, True, dtype)
        layer = fastrnn.from_torch(mod)
        x, hx = _inputs(mod, T, B, I, True, dtype)
        _compare(_torch_run(mod, x, hx), layer(x, hx), TOL[dtype])


@pytest.mark.parametrize("cell", list(CELLS))
def test_parity_long_sequence(cell):
    """T=1000 with unit-scale inputs: errors must not build up."""
    for dtype in (np.float32, np.float64):
        mod = _make(cell, 8, 16, 1, True, False, True, dtype)
        layer = fastrnn.from_torch(mod)
        x, hx = _inputs(mod, 1000, 2, 8, False, dtype)
        _compare(_torch_run(mod, x, hx), layer(x, hx), TOL[dtype])


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8, 16, 33, 64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_parity_batch_sizes(cell, B):
    """Every batch size a kernel path may switch at, with wider layers."""
    mod = _make(cell, 32, 64, 1, True, False, True, np.float32)
    layer = fastrnn.from_torch(mod)
    x, hx = _inputs(mod, 7, B, 32, True, np.float32)
    _compare(_torch_run(mod, x, hx), layer(x, hx), 1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_unbatched_matches_torch(cell):
    mod = _make(cell, 3, 5, 2, True, False, True, np.float32)
    layer = fastrnn.from_torch(mod)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    _compare(_torch_run(mod, x, None), layer(x), 1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_numpy_reference_agrees_with_torch(cell):
    """The NumPy reference used for non-torch options is itself checked against torch."""
    mod = _make(cell, 3, 5, 2, True, False, True, np.float64)
    layer = fastrnn.from_torch(mod)
    x, hx = _inputs(mod, 4, 2, 3, True, np.float64)
    out_t, st_t = _torch_run(mod, x, hx)
    out_r, h_r, c_r = rnn_forward(layer, x, hx)
    assert np.abs(out_r - out_t).max() < 1e-12
    h_t = st_t[0] if isinstance(st_t, tuple) else st_t
    assert np.abs(h_r - h_t).max() < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bi", [False, True])
def test_gru_reset_before_matches_reference(bi, dtype):
    """reset_after=False is not in torch: check it against the NumPy formula."""
    layer = fastrnn.GRU(4, 7, num_layers=2, bidirectional=bi, reset_after=False,
                        dtype=dtype, seed=5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4)).astype(dtype)
    h0 = rng.standard_normal((2 * (2 if bi else 1), 3, 7)).astype(dtype)
    out, hn = layer(x, h0)
    out_r, hn_r, _ = rnn_forward(layer, x, h0)
    tol = TOL[dtype]
    assert np.abs(out - out_r).max() <= tol
    assert np.abs(hn - hn_r).max() <= tol
    # and it really differs from reset_after=True with the same weights
    other = fastrnn.GRU(4, 7, num_layers=2, bidirectional=bi, dtype=dtype)
    other.load_state_dict(layer.state_dict())
    assert np.abs(other(x, h0)[0] - out).max() > 1e-3


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_go_backwards_reads_reversed(cell):
    """A go_backwards layer equals a forward layer on the time-reversed input, with the
    outputs aligned to input time."""
    cls = getattr(fastrnn, cell)
    fwd = cls(3, 5, seed=1)
    back = cls(3, 5, go_backwards=True)
    back.load_state_dict(fwd.state_dict())
    x = np.random.default_rng(2).standard_normal((6, 2, 3)).astype(np.float32)
    out_b, st_b = back(x)
    out_f, st_f = fwd(x[::-1])
    np.testing.assert_allclose(out_b, out_f[::-1], atol=1e-6)
    h_b = st_b[0] if isinstance(st_b, tuple) else st_b
    h_f = st_f[0] if isinstance(st_f, tuple) else st_f
    np.testing.assert_allclose(h_b, h_f, atol=1e-6)
