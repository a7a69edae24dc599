"""fastrnn.cells: torch.nn.LSTMCell / GRUCell / RNNCell equivalents, parity with live
PyTorch, weights, loading from state dicts, errors, pickling."""
import copy
import pickle
import threading

import numpy as np
import pytest

import fastrnn
import fastrnn.io as fio
from fastrnn.cells import GRUCell, LSTMCell, RNNCell, cell_from_config, from_torch_cell
from fastrnn.io import LoadError
from fastrnn.io.statedict import find_rnn_cells

torch = pytest.importorskip("torch")

TOL = {np.float32: 1e-5, np.float64: 1e-12}

KINDS = {
    "lstm": lambda I, H, bias: torch.nn.LSTMCell(I, H, bias=bias),
    "gru": lambda I, H, bias: torch.nn.GRUCell(I, H, bias=bias),
    "rnn_tanh": lambda I, H, bias: torch.nn.RNNCell(I, H, bias=bias, nonlinearity="tanh"),
    "rnn_relu": lambda I, H, bias: torch.nn.RNNCell(I, H, bias=bias, nonlinearity="relu"),
}


def _torch_cell(kind, I, H, bias=True, dtype=np.float32, seed=0):
    torch.manual_seed(seed)
    m = KINDS[kind](I, H, bias)
    if dtype == np.float64:
        m = m.double()
    # (non-trivial biases and weights of the size the inputs give)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.0)
    return m


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _torch_step(m, x, hx):
    with torch.no_grad():
        if hx is None:
            r = m(_t(x))
        elif isinstance(hx, tuple):
            r = m(_t(x), tuple(_t(a) for a in hx))
        else:
            r = m(_t(x), _t(hx))
    return tuple(a.numpy() for a in r) if isinstance(r, tuple) else r.numpy()


def _err(ref, got):
    """Max abs difference, asserting shapes and dtypes match."""
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref)
        return max(_err(a, b) for a, b in zip(ref, got))
    assert isinstance(got, np.ndarray)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    return float(np.abs(got - ref).max()) if ref.size else 0.0


def _state(kind, rng, shape, dtype):
    if kind == "lstm":
        return (rng.standard_normal(shape).astype(dtype),
                rng.standard_normal(shape).astype(dtype))
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- parity with torch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_step_matches_torch(kind, bias, dtype):
    """B=1 and 3, H=1 and 7, batched / unbatched, hx None / given."""
    rng = np.random.default_rng(1)
    I = 5
    for H in (1, 7):
        m = _torch_cell(kind, I, H, bias, dtype)
        cell = from_torch_cell(m)
        assert cell.dtype == dtype
        for B in (1, 3):
            for unbatched in ((False, True) if B == 1 else (False,)):
                xs = (I,) if unbatched else (B, I)
                hs = (H,) if unbatched else (B, H)
                for given in (False, True):
                    x = rng.standard_normal(xs).astype(dtype)
                    hx = _state(kind, rng, hs, dtype) if given else None
                    want = _torch_step(m, x, hx)
                    got = cell(x, hx)
                    err = _err(want, got)
                    assert err <= TOL[dtype], (H, B, unbatched, given, err)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("I,H,B", [(5, 7, 3), (4, 1, 1), (48, 64, 1), (16, 96, 5)])
def test_trajectory_matches_torch(kind, I, H, B, dtype):
    """20 steps of a decoder loop carrying the state, the whole trajectory compared."""
    m = _torch_cell(kind, I, H, True, dtype, seed=3)
    cell = from_torch_cell(m)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((20, B, I)).astype(dtype)
    st_t = st_f = None
    traj_t, traj_f = [], []
    for x in xs:
        st_t = _torch_step(m, x, st_t)
        st_f = cell(x, st_f)
        traj_t.append(st_t)
        traj_f.append(st_f)
    for t, (a, b) in enumerate(zip(traj_t, traj_f)):
        err = _err(a, b)
        # (float32 errors grow a little over 20 steps with relu's unbounded states)
        assert err <= TOL[dtype] * (10 if kind == "rnn_relu" else 1), (t, err)


@pytest.mark.parametrize("kind,H,B", [("gru", 64, 8), ("rnn_tanh", 128, 32),
                                      ("lstm", 64, 64)])
def test_large_batch_steps_use_the_threads(kind, H, B):
    """A step of a small layer runs on several threads from layers._step_min_rows rows
    on (it ran on one thread at any batch: 1.7x slower at B=64), one below; the results
    are torch's and the one-thread step's."""
    from fastrnn import _kernels, layers as flayers
    m = _torch_cell(kind, H, H, True, np.float32, seed=5)
    cell = from_torch_cell(m, num_threads=2)
    rows = flayers._step_min_rows(cell._layer)
    # (the pause rule off: below the row split's batch, 16 rows but on Zen 4, a first
    # step after 10 ms without one runs on one thread, the test's first step included)
    old_idle = _kernels._set_step_idle_single(-1)
    try:
        _check_large_batch_steps(m, cell, rows, H, B)
    finally:
        _kernels._set_step_idle_single(old_idle)


def _check_large_batch_steps(m, cell, rows, H, B):
    assert 1 < rows <= B
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((5, B, H)).astype(np.float32)
    st_t = st_f = st_1 = None
    for x in xs:
        st_t = _torch_step(m, x, st_t)
        st_f = cell(x, st_f)
        assert cell._layer.__dict__["_step_plans"][1][2].last_threads == 2
        assert _err(st_t, st_f) <= 1e-5
        st_1 = cell(x, st_1, num_threads=1)
    assert _err(st_f, st_1) <= 1e-5
    cell(xs[0][: rows - 1])
    assert cell._layer.__dict__["_step_plans"][1][2].last_threads == 1


def test_zero_batch():
    for kind in KINDS:
        m = _torch_cell(kind, 3, 4)
        cell = from_torch_cell(m)
        x = np.zeros((0, 3), np.float32)
        assert _err(_torch_step(m, x, None), cell(x)) == 0.0


# ---------------------------------------------------------------- construction, repr

def test_constructor_and_repr():
    assert repr(LSTMCell(8, 16)) == "LSTMCell(8, 16)"
    assert repr(GRUCell(8, 16, bias=False)) == "GRUCell(8, 16, bias=False)"
    assert repr(RNNCell(8, 16, nonlinearity="relu")) == "RNNCell(8, 16, nonlinearity='relu')"
    assert repr(RNNCell(8, 16, False, "tanh")) == "RNNCell(8, 16, bias=False)"
    assert repr(LSTMCell(8, 16, dtype="float64")) == "LSTMCell(8, 16, dtype=float64)"
    c = RNNCell(3, 4, True, "relu", dtype=np.float64, num_threads=1, seed=2)
    assert (c.input_size, c.hidden_size, c.bias, c.nonlinearity, c.dtype, c.num_threads) == (
        3, 4, True, "relu", np.dtype(np.float64), 1)
    assert LSTMCell(3, 4).dtype == np.float32           # (dtype=None: the layers' float32)
    assert LSTMCell(3, 4).gate_count == 4 and GRUCell(3, 4).gate_count == 3
    # seeded: torch's initialisation U(-1/sqrt(H), 1/sqrt(H)), reproducible
    a, b = GRUCell(3, 16, seed=7).state_dict(), GRUCell(3, 16, seed=7).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.abs(a[k]).max() <= 0.25
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        LSTMCell(3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        GRUCell(3.0, 4)
    with pytest.raises(TypeError, match="bias must be True or False"):
        LSTMCell(3, 4, "yes")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        GRUCell(3, 4, dtype="int32")
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError):
        GRUCell(3, 4, True, "relu")          # (only RNNCell takes a nonlinearity)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        LSTMCell(3, 4, num_threads=0)
    c = LSTMCell(3, 4)
    c.num_threads = 2
    assert c.num_threads == 2 and c.layer.num_threads == 2
    with pytest.raises(TypeError, match="num_threads"):
        c.num_threads = "2"


def test_get_config_round_trip():
    for c in (LSTMCell(3, 4, seed=1), GRUCell(3, 4, bias=False, dtype="float64", seed=1),
              RNNCell(3, 4, nonlinearity="relu", seed=1)):
        cfg = c.get_config()
        assert cfg["class_name"] == type(c).__name__
        back = cell_from_config(cfg, c.state_dict())
        assert repr(back) == repr(c) and back.get_config() == cfg
        x = np.ones((2, 3))
        np.testing.assert_array_equal(_first(back(x)), _first(c(x)))
    assert RNNCell(3, 4, nonlinearity="relu").get_config()["nonlinearity"] == "relu"
    with pytest.raises(ValueError, match="unknown cell class"):
        cell_from_config({"class_name": "LSTM", "input_size": 3, "hidden_size": 4})
    with pytest.raises(ValueError, match="bad config"):
        cell_from_config({"class_name": "GRUCell", "input_size": 3, "hidden_size": 4,
                          "bogus": 1})


def _first(r):
    return r[0] if isinstance(r, tuple) else r


# ---------------------------------------------------------------- calls

def test_call_inputs_and_outputs():
    m = _torch_cell("lstm", 4, 6)
    cell = from_torch_cell(m)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))                       # float64 into a float32 cell
    hx = (rng.standard_normal((3, 6)).astype(np.float32),
          rng.standard_normal((3, 6)).astype(np.float32))
    keep = tuple(a.copy() for a in hx)
    h, c = cell(x, hx)
    assert h.dtype == c.dtype == np.float32 and h.shape == c.shape == (3, 6)
    assert _err(_torch_step(m, x.astype(np.float32), hx), (h, c)) <= 1e-5
    for a, b in zip(hx, keep):                      # hx is never written
        np.testing.assert_array_equal(a, b)
    assert h is not hx[0] and not np.shares_memory(h, hx[0])
    assert not np.shares_memory(h, c)
    # a list for hx, torch tensors, non-contiguous and float16 inputs: the same results
    ref = cell(x.astype(np.float32), hx)
    for xin, hin in [(x, list(hx)),
                     (torch.from_numpy(x.astype(np.float32)), tuple(map(torch.from_numpy, hx))),
                     (np.asfortranarray(x), tuple(np.asfortranarray(a) for a in hx)),
                     (np.ascontiguousarray(x.T).T, hx)]:
        assert _err(ref, cell(xin, hin)) == 0.0
    # an unaligned input (a view into bytes at an odd offset)
    buf = np.zeros(3 * 4 * 4 + 1, np.uint8)
    xu = np.frombuffer(buf.data, np.float32, 12, 1).reshape(3, 4)
    assert not xu.flags.aligned
    xu_ref = np.ascontiguousarray(xu)
    assert _err(cell(xu_ref, hx), cell(xu, hx)) == 0.0
    # read-only input
    xr = x.astype(np.float32)
    xr.flags.writeable = False
    assert _err(ref, cell(xr, hx)) == 0.0
    # forward is calling
    assert _err(ref, cell.forward(x, hx)) == 0.0
    # unbatched
    h1, c1 = cell(x[0], (hx[0][0], hx[1][0]))
    assert h1.shape == c1.shape == (6,)
    assert _err((ref[0][0], ref[1][0]), (h1, c1)) <= 1e-6
    g = from_torch_cell(_torch_cell("gru", 4, 6))
    assert g(x[0]).shape == (6,) and g(x[0], np.zeros(6)).shape == (6,)


def test_bad_shapes_name_the_argument():
    lstm, gru = LSTMCell(4, 6, seed=0), GRUCell(4, 6, seed=0)
    x = np.zeros((3, 4), np.float32)
    h = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match=r"input has 5 features.*input_size=4.*\(3, 5\)"):
        lstm(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"input has 5 features"):
        gru(np.zeros(5))
    with pytest.raises(ValueError, match=r"input must have shape \(B, 4\) or \(4,\).*\(1, 3, 4\)"):
        gru(np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"input must have shape"):
        lstm(np.float32(1.0))
    with pytest.raises(ValueError, match=r"hx\[0\] must have shape \(3, 6\), got \(2, 6\)"):
        lstm(x, (np.zeros((2, 6), np.float32), h))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape \(3, 6\), got \(3, 5\)"):
        lstm(x, (h, np.zeros((3, 5), np.float32)))
    with pytest.raises(ValueError, match=r"GRUCell: hx must have shape \(3, 6\), got \(6,\)"):
        gru(x, np.zeros(6, np.float32))
    # unbatched input: hx must be unbatched too (as torch)
    with pytest.raises(ValueError, match=r"hx must have shape \(6,\) \(the input is unbatched\), "
                                         r"got \(1, 6\)"):
        gru(x[0], np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match=r"hx\[0\] must have shape \(6,\)"):
        lstm(x[0], (np.zeros((1, 6), np.float32), np.zeros((1, 6), np.float32)))
    # dtypes
    with pytest.raises(TypeError, match="input: expected a floating-point array"):
        gru(np.zeros((3, 4), np.int64))
    with pytest.raises(TypeError, match="hx: expected a floating-point array"):
        gru(x, np.zeros((3, 6), np.int32))
    with pytest.raises(TypeError, match=r"hx\[1\]: expected a floating-point array"):
        lstm(x, (h, np.zeros((3, 6), bool)))


def test_wrong_hx_structure():
    lstm, gru, rnn = LSTMCell(4, 6, seed=0), GRUCell(4, 6, seed=0), RNNCell(4, 6, seed=0)
    x = np.zeros((3, 4), np.float32)
    h = np.zeros((3, 6), np.float32)
    with pytest.raises(TypeError, match=r"LSTMCell: hx must be a tuple \(h, c\).*ndarray"):
        lstm(x, h)
    with pytest.raises(TypeError, match=r"LSTMCell: hx must be a tuple \(h, c\).*tuple of 3"):
        lstm(x, (h, h, h))
    with pytest.raises(TypeError, match=r"LSTMCell: hx must be a tuple \(h, c\).*tuple of 1"):
        lstm(x, (h,))
    for cell in (gru, rnn):
        with pytest.raises(TypeError, match=type(cell).__name__ + r": hx must be one array h"
                                            r".*got a tuple"):
            cell(x, (h, h))
        with pytest.raises(TypeError, match="hx must be one array"):
            cell(x, [h])


def test_threads_share_a_cell():
    cell = GRUCell(16, 32, seed=4)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((4, 30, 2, 16)).astype(np.float32)

    def run(seq):
        h = None
        for x in seq:
            h = cell(x, h)
        return h

    want = [run(s) for s in xs]
    got = [None] * 4

    def work(i):
        got[i] = run(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- weights

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_with_torch(kind, bias):
    m = _torch_cell(kind, 3, 5, bias)
    cell = from_torch_cell(m)
    sd = cell.state_dict()
    tsd = m.state_dict()
    assert list(sd) == list(tsd)            # weight_ih, weight_hh[, bias_ih, bias_hh]
    for k in tsd:
        np.testing.assert_array_equal(sd[k], tsd[k].numpy())
    # into a fresh fastrnn cell (from the torch tensors themselves), and back into torch
    cls = {"lstm": LSTMCell, "gru": GRUCell}.get(kind, RNNCell)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    other = cls(3, 5, bias, seed=9, **kw)
    other.load_state_dict(tsd)
    m2 = KINDS[kind](3, 5, bias)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in other.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    assert _err(_torch_step(m2, x, None), other(x)) <= 1e-5
    assert _err(_torch_step(m, x, None), other(x)) <= 1e-5
    # the state dict is a copy
    sd["weight_ih"][...] = 0
    assert np.abs(cell.state_dict()["weight_ih"]).max() > 0


def test_load_state_dict_errors_change_nothing():
    cell = LSTMCell(3, 4, seed=0)
    before = cell.state_dict()
    good = LSTMCell(3, 4, seed=1).state_dict()
    with pytest.raises(KeyError, match=r"LSTMCell.load_state_dict: missing keys \['bias_hh'\]"):
        cell.load_state_dict({k: v for k, v in good.items() if k != "bias_hh"})
    with pytest.raises(KeyError, match=r"unexpected keys \['weight_ih_l0'\]"):
        cell.load_state_dict({**good, "weight_ih_l0": good["weight_ih"]})
    with pytest.raises(ValueError, match=r"weight 'weight_hh': expected shape \(16, 4\), got "
                                         r"\(16, 3\)"):
        cell.load_state_dict({**good, "weight_hh": np.zeros((16, 3), np.float32)})
    with pytest.raises(ValueError, match="'bias_ih' contains NaN"):
        cell.load_state_dict({**good, "bias_ih": np.full(16, np.nan, np.float32)})
    with pytest.raises(TypeError, match="weight 'bias_ih'"):
        cell.load_state_dict({**good, "bias_ih": np.zeros(16, np.int64)})
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        cell.load_state_dict([("weight_ih", good["weight_ih"])])
    for k, v in before.items():
        np.testing.assert_array_equal(cell.state_dict()[k], v)
    # strict=False: missing keys keep their values, unknown names are ignored
    cell.load_state_dict({"weight_hh": good["weight_hh"], "junk": 1}, strict=False)
    np.testing.assert_array_equal(cell.state_dict()["weight_hh"], good["weight_hh"])
    np.testing.assert_array_equal(cell.state_dict()["weight_ih"], before["weight_ih"])
    # a cell without biases has none to load
    nb = GRUCell(3, 4, bias=False, seed=0)
    assert sorted(nb.state_dict()) == ["weight_hh", "weight_ih"]
    with pytest.raises(KeyError, match=r"unexpected keys \['bias_hh', 'bias_ih'\]"):
        nb.load_state_dict(GRUCell(3, 4, seed=0).state_dict())


def test_parameters_in_place_and_mark_weights_changed():
    cell = GRUCell(3, 4, seed=0)
    x = np.ones((1, 3), np.float32)
    y0 = cell(x)
    p = cell.parameters()
    assert sorted(p) == ["bias_hh", "bias_ih", "weight_hh", "weight_ih"]
    assert p["weight_ih"] is cell.layer.parameters()["weight_ih_l0"]   # not copies
    p["bias_ih"][...] += 1.0
    cell.mark_weights_changed()
    y1 = cell(x)
    assert np.abs(y1 - y0).max() > 1e-3
    ref = GRUCell(3, 4, seed=5)
    ref.load_state_dict(cell.state_dict())
    np.testing.assert_array_equal(ref(x), y1)
    # an optimizer of fastrnn.train steps the cell's weights through this dict
    from fastrnn.train import SGD
    opt = SGD(cell, lr=1.0)
    opt.step({"bias_hh": np.ones(12, np.float32)})
    assert np.abs(cell(x) - y1).max() > 1e-3


# ---------------------------------------------------------------- from torch

def test_from_torch_cell():
    m64 = _torch_cell("gru", 3, 4, dtype=np.float64)
    c = from_torch_cell(m64)
    assert c.dtype == np.float64 and isinstance(c, GRUCell)
    assert from_torch_cell(m64, dtype="float32").dtype == np.float32
    c = from_torch_cell(torch.nn.RNNCell(3, 4, bias=False, nonlinearity="relu"), num_threads=1)
    assert isinstance(c, RNNCell) and c.nonlinearity == "relu" and not c.bias
    assert c.num_threads == 1
    assert isinstance(from_torch_cell(torch.nn.LSTMCell(3, 4).half()), LSTMCell)

    class Mine(torch.nn.LSTMCell):
        pass

    assert isinstance(from_torch_cell(Mine(3, 4)), LSTMCell)
    for bad in (torch.nn.LSTM(3, 4), torch.nn.Linear(3, 4), object()):
        with pytest.raises(TypeError, match="from_torch_cell expects"):
            from_torch_cell(bad)


# ---------------------------------------------------------------- state dict files

class _Decoder(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 5)
        self.cell = cell
        self.out = torch.nn.Linear(cell.hidden_size, 11)


class _Seq2Seq(torch.nn.Module):
    def __init__(self, enc, cell):
        super().__init__()
        self.encoder = enc
        self.decoder = _Decoder(cell)


def _check_against(m, cell, steps=6, B=2):
    rng = np.random.default_rng(8)
    dt = np.float64 if m.weight_ih.dtype == torch.float64 else np.float32
    st_t = st_f = None
    for _ in range(steps):
        x = rng.standard_normal((B, m.input_size)).astype(dt)
        st_t = _torch_step(m, x, st_t)
        st_f = cell(x, st_f)
        assert _err(st_t, st_f) <= TOL[dt]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_load_cell_from_torch_save_file(kind, tmp_path):
    torch.manual_seed(0)
    tc = KINDS[kind](5, 7, True)
    model = torch.nn.Module()
    model.decoder = _Decoder(tc)
    p = tmp_path / "dec.pt"
    torch.save(model.state_dict(), p)
    for prefix in (None, "decoder.cell", "decoder.cell."):
        cell = fio.load_state_dict(p, prefix=prefix)
        assert type(cell).__name__ == type(tc).__name__
        assert cell.dtype == np.float32
        _check_against(tc, cell)
    # the format dispatcher too
    assert type(fastrnn.load(p)).__name__ == type(tc).__name__
    [spec] = find_rnn_cells(fio.read_state_dict(p)[0])
    assert (spec.prefix, spec.cell, spec.input_size, spec.hidden_size, spec.bias) == (
        "decoder.cell", type(tc).__name__, 5, 7, True)
    assert spec.is_cell and spec.torch_class == type(tc).__name__


def test_load_cell_from_dict_and_kinds():
    torch.manual_seed(1)
    relu = torch.nn.RNNCell(3, 4, nonlinearity="relu")
    sd = {"dec.rnn." + k: v for k, v in relu.state_dict().items()}
    # weights cannot tell tanh from relu: tanh unless told
    tanh_cell = fio.load_state_dict(sd)
    assert tanh_cell.nonlinearity == "tanh"
    cell = fio.load_state_dict(sd, nonlinearity="relu")
    assert cell.nonlinearity == "relu"
    _check_against(relu, cell)
    # numpy arrays, float64 stays float64; no biases
    g = torch.nn.GRUCell(3, 4, bias=False).double()
    cell = fio.load_state_dict({k: v.numpy() for k, v in g.state_dict().items()})
    assert isinstance(cell, GRUCell) and cell.dtype == np.float64 and not cell.bias
    _check_against(g, cell)
    assert fio.load_state_dict(g.state_dict(), dtype="float32").dtype == np.float32
    # the kind assertion (cell=) takes the cell's or the layer's name
    lstm = torch.nn.LSTMCell(3, 4)
    assert isinstance(fio.load_state_dict(lstm.state_dict(), cell="LSTMCell"), LSTMCell)
    assert isinstance(fio.load_state_dict(lstm.state_dict(), cell="lstm"), LSTMCell)
    with pytest.raises(LoadError, match="is a LSTMCell .*not a GRUCell"):
        fio.load_state_dict(lstm.state_dict(), cell="GRUCell")
    # layer-only overrides are refused by name
    with pytest.raises(LoadError, match="LSTMCell: batch_first does not apply"):
        fio.load_state_dict(lstm.state_dict(), batch_first=True)
    with pytest.raises(LoadError, match="GRUCell: nonlinearity does not apply"):
        fio.load_state_dict(g.state_dict(), nonlinearity="relu")


def test_whole_module_pickle_keeps_cell_nonlinearity(tmp_path):
    torch.manual_seed(2)
    m = torch.nn.Module()
    m.cell = torch.nn.RNNCell(3, 4, nonlinearity="relu")
    p = tmp_path / "whole.pt"
    torch.save(m, p)
    cell = fio.load_state_dict(p, module_classes=["torch.nn.modules.module.Module"])
    assert isinstance(cell, RNNCell) and cell.nonlinearity == "relu"
    _check_against(m.cell, cell)


def test_layers_and_cells_in_one_file(tmp_path):
    torch.manual_seed(3)
    model = _Seq2Seq(torch.nn.LSTM(5, 7), torch.nn.LSTMCell(5, 7))
    p = tmp_path / "s2s.pt"
    torch.save(model.state_dict(), p)
    # an encoder layer and a decoder cell are two modules: without a prefix, an error
    # listing both (the layer was loaded silently), and list_modules shows both
    with pytest.raises(LoadError, match=r"holds 2 recurrent modules, pass prefix= one of: "
                                        r"'encoder' \(LSTM 5->7, 1 layer\(s\)\); "
                                        r"'decoder.cell' \(LSTMCell 5->7\)"):
        fio.load_state_dict(p)
    assert isinstance(fio.load_state_dict(p, prefix="encoder"), fastrnn.LSTM)
    specs = fio.list_modules(p)
    assert [(s.prefix, s.cell, s.is_cell) for s in specs] == [
        ("encoder", "LSTM", False), ("decoder.cell", "LSTMCell", True)]
    cell = fio.load_state_dict(p, prefix="decoder.cell")
    assert isinstance(cell, LSTMCell)
    _check_against(model.decoder.cell, cell)
    with pytest.raises(LoadError, match=r"no recurrent module with prefix 'decoder' "
                                        r"\(found: 'encoder', 'decoder.cell' \(cell\)\)"):
        fio.load_state_dict(p, prefix="decoder")


def test_cell_loading_errors(tmp_path):
    two = {**{"a." + k: v for k, v in torch.nn.GRUCell(3, 4).state_dict().items()},
           **{"b." + k: v for k, v in torch.nn.RNNCell(3, 4).state_dict().items()}}
    with pytest.raises(LoadError, match=r"holds 2 recurrent modules, pass prefix= one of: "
                                        r"'a' \(GRUCell 3->4\); 'b' \(RNNCell 3->4\)"):
        fio.load_state_dict(two)
    assert isinstance(fio.load_state_dict(two, prefix="b"), RNNCell)
    sd = {k: v.numpy() for k, v in torch.nn.LSTMCell(3, 4).state_dict().items()}
    bad = {**sd, "weight_hh": np.zeros((16, 5), np.float32)}
    with pytest.raises(LoadError, match=r"'weight_hh': shape \(16, 5\): rows must be 1, 3 or 4"):
        fio.load_state_dict(bad)
    bad = {**sd, "weight_ih": np.zeros((12, 3), np.float32)}
    with pytest.raises(LoadError, match=r"'weight_ih': shape \(12, 3\), expected \(16, 3\) for a "
                                        r"LSTMCell"):
        fio.load_state_dict(bad)
    bad = {k: v for k, v in sd.items() if k != "bias_hh"}
    with pytest.raises(LoadError, match=r"'bias_hh': missing although 'bias_ih' exists"):
        fio.load_state_dict(bad)
    bad = {"dec.weight_ih": sd["weight_ih"]}
    with pytest.raises(LoadError, match=r"'dec.weight_hh': missing"):
        fio.load_state_dict(bad, prefix="dec")
    bad = {**sd, "bias_ih": np.zeros((16, 1), np.float32)}
    with pytest.raises(LoadError, match=r"'bias_ih': expected a 1-D array"):
        fio.load_state_dict(bad)
    bad = {**sd, "bias_ih": np.full(16, np.inf, np.float32)}
    with pytest.raises(LoadError, match=r"module '': weight 'bias_ih' contains NaN or infinite"):
        fio.load_state_dict(bad)
    with pytest.raises(LoadError, match="no recurrent module"):
        fio.load_state_dict({"fc.weight": np.zeros((2, 2), np.float32),
                             "fc.bias_ih": np.zeros(2, np.float32)})


# ---------------------------------------------------------------- pickling

CELLS = [LSTMCell(6, 16, seed=0), GRUCell(6, 16, bias=False, dtype="float64", seed=0),
         RNNCell(6, 16, nonlinearity="relu", num_threads=1, seed=0)]


@pytest.mark.parametrize("cell", CELLS, ids=repr)
@pytest.mark.parametrize("how", ["pickle2", "pickle", "deepcopy"])
def test_pickle_and_deepcopy(cell, how):
    x = np.random.default_rng(0).standard_normal((3, 6))
    want = cell(x)                          # packed weights exist now
    if how == "deepcopy":
        other = copy.deepcopy(cell)
    else:
        blob = pickle.dumps(cell, protocol=2 if how == "pickle2" else pickle.HIGHEST_PROTOCOL)
        weights = len(pickle.dumps(cell.state_dict(), protocol=2 if how == "pickle2"
                                   else pickle.HIGHEST_PROTOCOL))
        assert len(blob) <= weights + 8192      # the weights once, not the packed copies
        other = pickle.loads(blob)
    assert type(other) is type(cell) and repr(other) == repr(cell)
    assert other.get_config() == cell.get_config()
    assert other.num_threads == cell.num_threads
    assert _err(want, other(x)) == 0.0
    # independent weights
    other.parameters()["weight_ih"][...] = 0
    other.mark_weights_changed()
    assert np.abs(cell.parameters()["weight_ih"]).max() > 0
    assert _err(want, cell(x)) == 0.0


def test_cells_work_without_torch(tmp_path):
    """fastrnn.cells and the cell loader never import torch."""
    import os
    import subprocess
    import sys
    torch.manual_seed(6)
    tc = torch.nn.GRUCell(3, 4)
    p = tmp_path / "gru_cell.pt"
    torch.save({"model": {"cell." + k: v for k, v in tc.state_dict().items()}}, p)
    x = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    want = _torch_step(tc, x, None)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", want)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, fastrnn.io as fio\n"
        "from fastrnn.cells import GRUCell, LSTMCell\n"
        f"cell = fio.load_state_dict({str(p)!r})\n"
        "assert isinstance(cell, GRUCell), cell\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "assert np.abs(cell(x) - want).max() <= 1e-5\n"
        "h, c = LSTMCell(3, 4, seed=0)(x)\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_from_torch_takes_cells_and_their_effective_weights():
    """fastrnn.from_torch hands torch cells to from_torch_cell; a parametrized cell gives
    the weights its forward uses."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for m in (torch.nn.GRUCell(4, 6),
              torch.nn.utils.parametrizations.weight_norm(torch.nn.LSTMCell(4, 6),
                                                          "weight_hh")):
        cell = fastrnn.from_torch(m)
        with torch.no_grad():
            ref = m(torch.from_numpy(x))
        got = cell(x)
        if isinstance(ref, tuple):
            got, ref = got[0], ref[0]
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert fastrnn.RNN is fastrnn.SimpleRNN


@pytest.mark.parametrize("given", ["cell", "params"])
def test_optimizer_updates_a_cell(given):
    """fastrnn.train's optimizers take a cell or its parameters() (torch's cell names);
    a step changes the weights the next call uses, also after a load_state_dict (the
    optimizer on parameters() updated the arrays it replaced)."""
    from fastrnn import train
    cell = GRUCell(3, 4, seed=0)
    x = np.ones((2, 3), np.float32)
    before = cell(x)
    opt = train.SGD(cell if given == "cell" else cell.parameters(), lr=0.1)
    cell.load_state_dict(cell.state_dict())     # (new arrays: the optimizer must see them)
    opt.step({"weight_ih": np.ones((12, 3), np.float32)})
    after = cell(x)
    ref = GRUCell(3, 4, seed=0)
    sd = ref.state_dict()
    sd["weight_ih"] = sd["weight_ih"] - np.float32(0.1)
    ref.load_state_dict(sd)
    np.testing.assert_allclose(after, ref(x), rtol=1e-6, atol=1e-7)
    assert np.abs(after - before).max() > 1e-4
