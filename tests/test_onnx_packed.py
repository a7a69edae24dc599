"""PyTorch's unsorted packed sequences in ONNX: ``pack_padded_sequence(x, lengths,
enforce_sorted=False)`` / ``pad_packed_sequence`` exported by the TorchScript exporter sort
the batch by length with TopK and unsort it with ScatterElements (opset 10: Scatter and a
NonZero range).  The fixtures (tests/fixtures/make_onnx.py, ``PACKED``), live exports
against ONNX Runtime and torch, and each op against ONNX Runtime on small hand-made graphs.
"""
from __future__ import annotations

import io
import os
import sys
import threading
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io import onnx as fonnx  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "onnx")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_onnx  # noqa: E402

TOL = 1e-5
_SO = ort.SessionOptions()
_SO.log_severity_level = 4


def _ort_run(data, feeds):
    s = ort.InferenceSession(data, _SO, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _read(name):
    with open(os.path.join(FIX, name + ".onnx"), "rb") as f:
        return f.read()


def _torch(model, feeds):
    return make_onnx.torch_outputs(model, feeds)


# ---------------------------------------------------------------------- fixtures
def test_packed_fixture_files_present():
    assert make_onnx.PACKED_MODELS == ("packed_lstm_bi_bf", "packed_gru_2l_op11",
                                       "packed_rnn_op10")
    for name in make_onnx.PACKED_MODELS:
        assert os.path.exists(os.path.join(FIX, name + ".onnx")), name
        assert os.path.exists(os.path.join(FIX, name + ".npz")), name


def test_packed_fixtures_use_the_sorting_ops():
    """The fixtures hold what the audit found refused: TopK + ScatterElements, and at
    opset 10 NonZero + Scatter; each recurrent node gets the sorted lengths."""
    for name, want in (("packed_lstm_bi_bf", {"TopK", "ScatterElements"}),
                       ("packed_gru_2l_op11", {"TopK", "ScatterElements"}),
                       ("packed_rnn_op10", {"TopK", "Scatter", "NonZero"})):
        m = onnx.load(os.path.join(FIX, name + ".onnx"))
        ops = {n.op_type for n in m.graph.node}
        assert want <= ops, (name, ops)
        rec = [n for n in m.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
        assert rec and all(len(n.input) > 4 and n.input[4] for n in rec)


@pytest.mark.parametrize("name", make_onnx.PACKED_MODELS)
def test_packed_fixture_matches_stored_ort_and_torch(name):
    d = np.load(os.path.join(FIX, name + ".npz"))
    feeds = {k[3:]: d[k] for k in d.files if k.startswith("in:")}
    m = load_onnx(os.path.join(FIX, name + ".onnx"))
    assert m.input_names == ["x", "lengths"]
    has_ort = any(k.startswith("ort:") for k in d.files)
    assert has_ort == (name != "packed_rnn_op10")
    for _ in range(2):          # (the second call: the kept program)
        res = m.run(feeds)
        for i, k in enumerate(m.output_names):
            np.testing.assert_allclose(res[k], d[f"torch:{i}"], rtol=TOL, atol=TOL,
                                       err_msg=k)
            if has_ort:
                np.testing.assert_allclose(res[k], d["ort:" + k], rtol=TOL, atol=TOL,
                                           err_msg=k)


def _length_sets(B, T, rng):
    """Unsorted with ties, all equal (T and shorter), descending, ascending."""
    out = []
    if B > 1:
        u = rng.integers(1, T + 1, B)
        u[rng.integers(B)] = T
        u[-1] = u[0]        # (a tie)
        out.append(u)
    out.append(np.full(B, T))
    desc = np.sort(rng.integers(1, T + 1, B))[::-1].copy()
    desc[0] = T
    out += [desc, desc[::-1].copy()]
    return out


@pytest.mark.parametrize("name", make_onnx.PACKED_MODELS)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 6), (4, 3), (9, 11)])
def test_packed_fixture_live_other_sizes(name, B, T):
    """Batch and time sizes other than the export's, lengths unsorted with ties, all
    equal, descending, ascending: ONNX Runtime (opset >= 11) and torch live, every call
    after the first running the kept program with new lengths."""
    data = _read(name)
    model = make_onnx.PACKED[name][0]().eval()
    m = load_onnx(data)
    rng = np.random.default_rng(B * 100 + T)
    for lengths in _length_sets(B, T, rng):
        feeds = make_onnx.packed_inputs(name, seed=int(rng.integers(1 << 30)),
                                        lengths=lengths, T_=T)
        tref = _torch(model, feeds)
        ref = _ort_run(data, feeds) if name != "packed_rnn_op10" else None
        got = m.run(feeds)
        for i, k in enumerate(m.output_names):
            assert got[k].shape == tref[i].shape
            np.testing.assert_allclose(got[k], tref[i], rtol=TOL, atol=TOL,
                                       err_msg=f"{k} {lengths}")
            if ref is not None:
                np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL,
                                           err_msg=f"{k} {lengths}")


def test_packed_onnx_runtime_refuses_the_opset10_export():
    """Why packed_rnn_op10 is checked against torch only: TopK-10 takes float inputs
    and the export sorts int64 lengths (fastrnn runs the graph)."""
    with pytest.raises(Exception, match="TopK"):
        ort.InferenceSession(_read("packed_rnn_op10"), _SO,
                             providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["packed_lstm_bi_bf", "packed_gru_2l_op11",
                                  "packed_rnn_op10"])
def test_packed_lengths_reach_the_layers_lean_call(name, monkeypatch):
    """After the first call, the kept program runs each recurrent node's lean call with
    the call's sorted lengths (no _RecurrentNode.run), new lengths every call."""
    calls = [0]
    real = fonnx._RecurrentNode.run

    def run(self, vals):
        calls[0] += 1
        return real(self, vals)
    monkeypatch.setattr(fonnx._RecurrentNode, "run", run)
    m = load_onnx(os.path.join(FIX, name + ".onnx"))
    n_rec = len(m.recurrent_layers)
    model = make_onnx.PACKED[name][0]().eval()
    for k, lengths in enumerate(([7, 2, 7, 5, 2], [1, 7, 7, 7, 3], [7] * 5, [3, 3, 4, 7, 1])):
        feeds = make_onnx.packed_inputs(name, seed=k, lengths=lengths)
        got = m.run(feeds)
        for i, out in enumerate(m.output_names):
            np.testing.assert_allclose(got[out], _torch(model, feeds)[i], rtol=TOL,
                                       atol=TOL)
        assert calls[0] == n_rec, (k, calls[0])


def test_packed_two_threads_same_results():
    m = load_onnx(os.path.join(FIX, "packed_lstm_bi_bf.onnx"))
    feeds = [make_onnx.packed_inputs("packed_lstm_bi_bf", seed=s, lengths=L)
             for s, L in ((1, [7, 3, 3, 7, 1]), (2, [2, 7, 5, 5, 7]))]
    refs = [m.run(f) for f in feeds]
    errors = []

    def work(k):
        try:
            for j in range(40):
                f = feeds[(j + k) % 2]
                got = m.run(f)
                ref = refs[(j + k) % 2]
                if not all(np.array_equal(got[n], ref[n]) for n in ref):
                    errors.append((k, j))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ts = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


# ----------------------------------------------------------------- live exports
class _Packed(torch.nn.Module):
    def __init__(self, rnn, h0=False):
        super().__init__()
        self.rnn, self.h0 = rnn, h0

    def forward(self, x, lengths, *hx):
        bf = self.rnn.batch_first
        p = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=bf,
                                                    enforce_sorted=False)
        lstm = isinstance(self.rnn, torch.nn.LSTM)
        if self.h0:
            y, s = self.rnn(p, (hx[0], hx[1]) if lstm else hx[0])
        else:
            y, s = self.rnn(p)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=bf,
                                                      total_length=x.shape[1 if bf else 0])
        return (y, s[0], s[1]) if lstm else (y, s)


@pytest.mark.parametrize("cls,opset,bf,bidir,layers,h0", [
    ("LSTM", 10, True, False, 1, False),
    ("GRU", 10, False, True, 2, False),
    ("RNN", 11, True, True, 1, False),
    ("LSTM", 11, False, False, 2, True),
    ("GRU", 13, True, False, 2, True),
    ("LSTM", 13, False, True, 2, False),
    ("RNN", 17, False, False, 2, True),
    ("GRU", 17, True, True, 1, False),
    ("LSTM", 20, True, True, 2, True),
    ("RNN", 20, True, False, 1, False),
])
def test_packed_live_exports(cls, opset, bf, bidir, layers, h0):
    """Fresh exports (LSTM / GRU / RNN, batch_first or not, 1-2 layers, one or two
    directions, with and without initial states, opsets 10-20) against torch and, from
    opset 11, ONNX Runtime, at the export's and other sizes."""
    I, H, D = 3, 5, 2 if bidir else 1
    torch.manual_seed(opset + layers)
    rnn = getattr(torch.nn, cls)(I, H, num_layers=layers, bidirectional=bidir,
                                 batch_first=bf)
    net = _Packed(rnn, h0).eval()
    rng = np.random.default_rng(opset)

    def feeds_for(B, T, lengths):
        f = {"x": rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(np.float32),
             "lengths": np.asarray(lengths, np.int64)}
        if h0:
            f["h0"] = rng.standard_normal((D * layers, B, H)).astype(np.float32)
            if cls == "LSTM":
                f["c0"] = rng.standard_normal((D * layers, B, H)).astype(np.float32)
        return f
    f0 = feeds_for(3, 4, [2, 4, 2])
    outs = ["y", "h_n"] + (["c_n"] if cls == "LSTM" else [])
    seq = {0: "b", 1: "t"} if bf else {0: "t", 1: "b"}
    dyn = {"x": seq, "lengths": {0: "b"}, "y": seq}
    dyn.update({n: {1: "b"} for n in list(f0)[2:] + outs[1:]})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, tuple(torch.from_numpy(v) for v in f0.values()), buf,
                          dynamo=False, opset_version=opset, input_names=list(f0),
                          output_names=outs, dynamic_axes=dyn)
    data = buf.getvalue()
    m = load_onnx(data)
    for B, T, lengths in ((3, 4, [2, 4, 2]), (1, 5, [5]), (5, 6, [6, 1, 3, 3, 6]),
                          (4, 2, [2, 2, 2, 2]), (4, 5, [1, 2, 3, 5])):
        feeds = feeds_for(B, T, lengths)
        with torch.no_grad():
            tref = [t.numpy() for t in net(*(torch.from_numpy(v) for v in feeds.values()))]
        ref = _ort_run(data, feeds) if opset >= 11 else None
        for _ in range(2):
            got = m.run(feeds)
            for i, k in enumerate(outs):
                np.testing.assert_allclose(got[k], tref[i], rtol=TOL, atol=TOL, err_msg=k)
                if ref is not None:
                    np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)


# --------------------------------------------------------------- ops against ORT
def _graph(op, inputs, n_out, opset, consts=(), node_name="the_node", **attrs):
    """A one-node model: ``inputs`` {name: array}, those in ``consts`` as initializers."""
    node = helper.make_node(op, list(inputs), [f"o{k}" for k in range(n_out)],
                            name=node_name, **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                         list(v.shape))
           for n, v in inputs.items() if n not in consts]
    inits = [numpy_helper.from_array(v, n) for n, v in inputs.items() if n in consts]
    g = helper.make_graph([node], "g", ins,
                          [onnx.ValueInfoProto(name=f"o{k}") for k in range(n_out)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString(), {n: v for n, v in inputs.items() if n not in consts}


def _same(data, feeds, exact=True, calls=2):
    ref = _ort_run(data, feeds)
    m = load_onnx(data)
    for _ in range(calls):
        got = m.run(feeds)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            if exact:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    return got, ref


_TIES = np.array([3, 5, 2, 5, 3, 3, 1, 5], np.int64)


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
def test_topk_ties_as_onnx_runtime(largest, k, dtype):
    """ONNX Runtime's order on ties: the lower index first, largest and smallest."""
    data, feeds = _graph("TopK", {"x": _TIES.astype(dtype), "k": np.array([k])}, 2, 13,
                         axis=-1, largest=largest, sorted=1)
    _same(data, feeds)


def test_topk_tie_order_spelled_out():
    m = load_onnx(_graph("TopK", {"x": _TIES, "k": np.array([8])}, 2, 11)[0])
    assert m.run({"x": _TIES, "k": np.array([8])})["o1"].tolist() == [1, 3, 7, 0, 4, 5, 2, 6]


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("largest", [1, 0])
def test_topk_axes_and_nan(axis, largest):
    rng = np.random.default_rng(axis + 3 + 10 * largest)
    x = rng.integers(0, 3, (4, 5, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan      # (NaN: above every number, in ORT)
    k = x.shape[axis] - 1
    data, feeds = _graph("TopK", {"x": x, "k": np.array([k])}, 2, 20, axis=axis,
                         largest=largest)
    got, ref = _same(data, feeds, exact=False)
    np.testing.assert_array_equal(got["o0"], ref["o0"])         # (NaN equal NaN)
    np.testing.assert_array_equal(got["o1"], ref["o1"])


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_unsorted_picks_onnx_runtime_elements(largest):
    """sorted=0: ONNX leaves the order open; the same elements as ONNX Runtime (fastrnn
    returns them sorted)."""
    x = np.array([[3, 5, 2, 5, 3, 3, 1, 5], [1, 1, 1, 2, 2, 0, 0, 0]], np.float32)
    data, feeds = _graph("TopK", {"x": x, "k": np.array([3])}, 2, 11, largest=largest,
                         sorted=0)
    ref = _ort_run(data, feeds)
    got = load_onnx(data).run(feeds)
    np.testing.assert_array_equal(np.sort(got["o1"], 1), np.sort(ref["o1"], 1))


@pytest.mark.parametrize("opset", [1, 10])
def test_topk_old_opsets(opset):
    """Opset 1: k an attribute; opset 10: k an input, always largest and sorted."""
    x = np.array([[1, 5, 5, 0], [3, 3, 7, 3]], np.float32)
    if opset == 1:
        data, feeds = _graph("TopK", {"x": x}, 2, 1, k=2)
    else:
        data, feeds = _graph("TopK", {"x": x, "k": np.array([3])}, 2, 10, axis=1)
    _same(data, feeds)


def test_topk_constant_folded_at_load():
    x = np.array([4, 1, 4, 2], np.int64)
    data, _ = _graph("TopK", {"x": x, "k": np.array([3])}, 2, 13, consts=("x", "k"))
    m = load_onnx(data)
    res = m.run({})
    assert res["o0"].tolist() == [4, 4, 2] and res["o1"].tolist() == [0, 2, 3]
    assert not m._steps         # (computed once, at load)


@pytest.mark.parametrize("k,err,msg", [
    (np.array([9]), ValueError, "larger than axis 0's size 8"),
    (np.array([-1]), ValueError, "must not be negative"),
    (np.array(2), ValueError, "1-D tensor of one integer"),
    (np.array([1, 2]), ValueError, "1-D tensor of one integer"),
    (np.array([2.0], np.float32), ValueError, "1-D tensor of one integer"),
])
def test_topk_bad_k_names_the_node(k, err, msg):
    data, feeds = _graph("TopK", {"x": _TIES, "k": k}, 2, 13)
    m = load_onnx(data)
    with pytest.raises(err, match=msg) as ei:
        m.run(feeds)
    assert "TopK 'the_node'" in str(ei.value)
    with pytest.raises(Exception):      # (ONNX Runtime refuses them too)
        _ort_run(data, feeds)


def test_topk_bad_axis_and_input():
    data, feeds = _graph("TopK", {"x": np.ones((2, 3), np.float32), "k": np.array([1])},
                         2, 13, axis=2)
    with pytest.raises(ValueError, match=r"TopK 'the_node'.*axis 2 out of range \[-2, 1\]"):
        load_onnx(data).run(feeds)
    data, feeds = _graph("TopK", {"x": np.array(1.0, np.float32), "k": np.array([1])}, 2, 13)
    with pytest.raises(ValueError, match="rank >= 1"):
        load_onnx(data).run(feeds)
    # a constant TopK with a bad k: refused at load, naming the node
    data, _ = _graph("TopK", {"x": _TIES, "k": np.array([10])}, 2, 13, consts=("x", "k"))
    with pytest.raises(LoadError, match="TopK 'the_node'.*k = 10 is larger"):
        load_onnx(data)


def test_topk_output_shape_follows_k_not_the_shapes():
    """A TopK of a k fed as an input: its output's shape changes with k's value for one
    set of feeds' shapes (not a value kept from the first call)."""
    x = np.arange(6, dtype=np.float32)
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"]),
             helper.make_node("Shape", ["v"], ["s"])]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name="s")])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]
                             ).SerializeToString()
    m = load_onnx(data)
    for k in (2, 5, 2, 0):
        feeds = {"x": x, "k": np.array([k])}
        assert m.run(feeds)["s"].tolist() == [k] == _ort_run(data, feeds)["s"].tolist()


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_scatter_elements_as_onnx_runtime(axis, dtype, idx_dtype):
    """Negative axes and indices, indices smaller than data, repeated indices (the last
    update wins, as ONNX Runtime writes them in order)."""
    rng = np.random.default_rng(abs(axis) + (dtype == np.int64))
    d = rng.integers(-5, 5, (4, 3)).astype(dtype)
    n = d.shape[axis]
    shape = (6, 2) if axis in (0, -2) else (3, 5)
    idx = rng.integers(-n, n, shape).astype(idx_dtype)
    upd = rng.integers(-9, 9, shape).astype(dtype)
    data, feeds = _graph("ScatterElements", {"d": d, "i": idx, "u": upd}, 1, 13, axis=axis)
    _same(data, feeds)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_reductions(reduction):
    """Reductions (opset 18) over repeated indices, with NaN and signed zeros: max / min
    as ONNX Runtime's std::max(update, out) / std::min(update, out), in order."""
    d = np.array([[1, np.nan, 0.0, 2], [3, -0.0, 4, 5]], np.float32)
    idx = np.array([[1, 1, 3, 1, 2, 1], [0, 1, 1, 2, -1, 1]], np.int64)
    u = np.array([[np.nan, 2, -0.0, 7, -0.0, 3], [1, 4, -0.0, np.nan, 0.0, -0.0]], np.float32)
    data, feeds = _graph("ScatterElements", {"d": d, "i": idx, "u": u}, 1, 18, axis=1,
                         reduction=reduction)
    got, ref = _same(data, feeds, exact=False)
    np.testing.assert_array_equal(got["o0"], ref["o0"])
    np.testing.assert_array_equal(np.signbit(got["o0"]), np.signbit(ref["o0"]))


@pytest.mark.parametrize("opset", [9, 10])
def test_scatter_old_op_is_scatter_elements(opset):
    d = np.zeros((3, 3), np.float32)
    idx = np.array([[1, 0, 2], [0, 2, 1]], np.int64)
    if opset == 10:
        idx = -idx - 1
    upd = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    data, feeds = _graph("Scatter", {"d": d, "i": idx, "u": upd}, 1, opset, axis=-2)
    _same(data, feeds)


@pytest.mark.parametrize("op", ["ScatterElements", "Scatter"])
@pytest.mark.parametrize("bad,err,msg", [
    ("high", IndexError, r"index 3 out of range \[-3, 2\]"),
    ("low", IndexError, r"index -4 out of range \[-3, 2\]"),
    ("updates", ValueError, "updates must have the shape of indices"),
    ("rank", ValueError, "indices must have the rank of data"),
    ("wide", ValueError, "larger than data"),
    ("float", TypeError, "indices must be integers"),
])
def test_scatter_bad_inputs_name_the_node(op, bad, err, msg):
    d = np.zeros((3, 3), np.float32)
    idx = np.array([[1, 0, 2], [0, 2, 1]], np.int64)
    upd = np.ones((2, 3), np.float32)
    if bad == "high":
        idx[1, 1] = 3
    elif bad == "low":
        idx[0, 2] = -4
    elif bad == "updates":
        upd = upd[:1]
    elif bad == "rank":
        idx, upd = idx[0], upd[0]
    elif bad == "wide":
        idx, upd = np.zeros((1, 4), np.int64), np.ones((1, 4), np.float32)
    data, feeds = _graph(op, {"d": d, "i": idx if bad != "float" else idx.astype(np.float32),
                              "u": upd}, 1, 13 if op == "ScatterElements" else 10, axis=0)
    m = load_onnx(data)
    with pytest.raises(err, match=msg) as ei:
        m.run(feeds)
    assert f"{op} 'the_node'" in str(ei.value)
    with pytest.raises(Exception):      # (ONNX Runtime refuses them too)
        _ort_run(data, feeds)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (2, 0, 3), (2, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_nonzero_as_onnx_runtime(shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = (rng.random(shape) < 0.5).astype(dtype) if shape else np.asarray(1, dtype)
    for v in (x, np.zeros_like(x)):
        data, feeds = _graph("NonZero", {"x": np.asarray(v)}, 1, 13)
        _same(data, feeds)


def test_nonzero_output_shape_follows_the_values():
    """NonZero's output shape depends on the input's values: a Shape of it is not kept
    from the first call of those feeds' shapes."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Shape", ["nz"], ["s"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [4])],
                          [onnx.ValueInfoProto(name="s")])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]
                             ).SerializeToString()
    m = load_onnx(data)
    for x in ([1, 0, 0, 2], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 2]):
        feeds = {"x": np.array(x, np.float32)}
        assert m.run(feeds)["s"].tolist() == _ort_run(data, feeds)["s"].tolist()


def test_the_pytorch_unsort_graph_alone():
    """The sort / unsort sub-graph of the export, lengths with ties: fastrnn's TopK
    indices and inverse permutation are ONNX Runtime's, element for element."""
    nodes = [helper.make_node("Shape", ["L"], ["n"]),
             helper.make_node("TopK", ["L", "n"], ["sv", "si"], axis=-1, largest=1),
             helper.make_node("Shape", ["si"], ["sh"]),
             helper.make_node("ConstantOfShape", ["sh"], ["z"],
                              value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Squeeze", ["n", "ax"], ["n0"]),
             helper.make_node("Range", ["zero", "n0", "one"], ["r"]),
             helper.make_node("ScatterElements", ["z", "si", "r"], ["inv"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("L", TensorProto.INT64,
                                                                     ["B"])],
                          [onnx.ValueInfoProto(name=n) for n in ("sv", "si", "inv")],
                          [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                           numpy_helper.from_array(np.array(1, np.int64), "one"),
                           numpy_helper.from_array(np.array([0], np.int64), "ax")])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]
                             ).SerializeToString()
    m = load_onnx(data)
    for L in ([3, 5, 2, 5, 3, 3, 1, 5], [4], [2, 2, 2], [1, 2, 3, 4], [4, 3, 3, 1]):
        feeds = {"L": np.array(L, np.int64)}
        ref, got = _ort_run(data, feeds), m.run(feeds)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} {L}")
        assert np.array_equal(np.asarray(L)[got["si"]][got["inv"]], L)


def test_packed_model_pickles():
    """A loaded packed model pickles (op steps by op type: Scatter's runner included) and
    the copy runs as the original, before and after the original kept a program."""
    import pickle
    for name in ("packed_gru_2l_op11", "packed_rnn_op10"):
        m = load_onnx(os.path.join(FIX, name + ".onnx"))
        feeds = make_onnx.packed_inputs(name, seed=4, lengths=[3, 7, 3, 1, 6])
        c = pickle.loads(pickle.dumps(m))
        ref = m.run(feeds)
        c2 = pickle.loads(pickle.dumps(m))
        for copy in (c, c2):
            for _ in range(2):
                got = copy.run(feeds)
                for k in ref:
                    np.testing.assert_array_equal(got[k], ref[k])
