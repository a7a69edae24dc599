"""ONNX models: torch.onnx.export fixtures, live comparison with ONNX Runtime and PyTorch,
the simple ops around recurrent nodes, loading entry points and errors.

Fixtures come from tests/fixtures/make_onnx.py (TorchScript exporter, ``dynamo=False``).
"""
from __future__ import annotations

import importlib
import io
import os
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastrnn  # noqa: E402
from reference import allocations  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.onnx import OnnxModel, load_onnx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "onnx")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_onnx  # noqa: E402

TOL = 1e-5


def _ort(data, feeds):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _same_as_ort(m, data, feeds, calls=2):
    """``m``'s outputs for ``feeds`` in ``calls`` calls (the first finds and keeps a
    program, the later ones run it) against ONNX Runtime's; the last call's."""
    ref = _ort(data, feeds)
    for _ in range(calls):
        got = m.run(feeds)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    return got


# ---------------------------------------------------------------------- stored fixtures
def test_fixture_files_present():
    for name in make_onnx.MODELS:
        assert os.path.exists(os.path.join(FIX, name + ".onnx")), name
        assert os.path.exists(os.path.join(FIX, name + ".npz")), name


@pytest.mark.parametrize("name", make_onnx.MODELS)
def test_fixture_matches_stored_ort_and_torch(name):
    path = os.path.join(FIX, name + ".onnx")
    m = load_onnx(path)
    d = np.load(os.path.join(FIX, name + ".npz"))
    feeds = {k[3:]: d[k] for k in d.files if k.startswith("in:")}
    assert sorted(m.input_names) == sorted(feeds)
    res = m.run(feeds)
    assert list(res) == m.output_names
    for i, out_name in enumerate(m.output_names):
        np.testing.assert_allclose(res[out_name], d["ort:" + out_name], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(res[out_name], d[f"torch:{i}"], rtol=TOL, atol=TOL)
    assert m.recurrent_layers and all(layer is not None for layer in m.recurrent_layers)


@pytest.mark.parametrize("name", make_onnx.MODELS)
@pytest.mark.parametrize("T,B", [(1, 1), (13, 5), (4, 9)])
def test_fixture_live_vs_ort_and_torch_other_sizes(name, T, B):
    """Dynamic axes: fresh inputs of other batch and time sizes, ORT and torch live."""
    factory, batch_first, states, opset, kind = make_onnx._models()[name]
    model = factory().eval()
    feeds = make_onnx.model_inputs(name, model, batch_first, states, kind, seed=T * 100 + B,
                                   T_=T, B_=B)
    with open(os.path.join(FIX, name + ".onnx"), "rb") as f:
        data = f.read()
    ref = _ort(data, feeds)
    m = load_onnx(data)
    m.run({k: np.ones_like(v) for k, v in feeds.items()})
    got = m.run(feeds)          # (the model's kept program for these shapes)
    tref = make_onnx.torch_outputs(model, feeds)
    for i, k in enumerate(ref):
        assert got[k].shape == ref[k].shape
        np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(got[k], tref[i], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cls,kw", [
    ("LSTM", dict(num_layers=3, bidirectional=True)),
    ("LSTM", dict(num_layers=1, batch_first=True, bias=False)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=1, bias=False)),
    ("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu")),
    ("RNN", dict(num_layers=3, batch_first=True)),
])
@pytest.mark.parametrize("opset", [9, 11, 14, 18])
@pytest.mark.parametrize("with_state", [False, True])
def test_live_torch_export_matrix(cls, kw, opset, with_state):
    """Export fresh torch modules (uni/bi, 1-3 layers, batch_first, +-state, opsets 9-18)
    and compare fastrnn with ONNX Runtime and torch to 1e-5."""
    torch.manual_seed(opset + len(kw))
    rnn = getattr(torch.nn, cls)(4, 6, **kw).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, *st):
            if cls == "LSTM" and st:
                out, (h, c) = self.rnn(x, (st[0], st[1]))
                return out, h, c
            out, h = self.rnn(x, *st)
            return (out, h[0], h[1]) if isinstance(h, tuple) else (out, h)

    bf = kw.get("batch_first", False)
    D = 2 if kw.get("bidirectional") else 1
    L = kw["num_layers"]
    rng = np.random.default_rng(opset)
    T, B = 6, 3
    feeds = {"x": rng.standard_normal((B, T, 4) if bf else (T, B, 4)).astype(np.float32)}
    if with_state:
        feeds["h0"] = rng.standard_normal((D * L, B, 6)).astype(np.float32)
        if cls == "LSTM":
            feeds["c0"] = rng.standard_normal((D * L, B, 6)).astype(np.float32)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = {"x": {0: "b", 1: "t"} if bf else {0: "t", 1: "b"}}
        torch.onnx.export(Wrap().eval(), tuple(torch.from_numpy(v) for v in feeds.values()), f,
                          dynamo=False, opset_version=opset, input_names=list(feeds),
                          dynamic_axes=dyn)
    data = f.getvalue()
    feeds2 = dict(feeds)
    feeds2["x"] = rng.standard_normal(feeds["x"].shape).astype(np.float32)
    ref = _ort(data, feeds2)
    m = load_onnx(data)
    ref1 = _ort(data, feeds)
    for k, v in m.run(feeds).items():
        np.testing.assert_allclose(v, ref1[k], rtol=TOL, atol=TOL)
    got = m.run(feeds2)         # (the model's kept program for these shapes)
    with torch.no_grad():
        tout = Wrap().eval()(*(torch.from_numpy(v) for v in feeds2.values()))
    for i, k in enumerate(ref):
        np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(got[k], tout[i].numpy(), rtol=TOL, atol=TOL)
    assert len(m.recurrent_layers) == L


# -------------------------------------------------------------------- entry points
def test_fastrnn_load_dispatches_onnx(tmp_path):
    src = os.path.join(FIX, "lstm_1l.onnx")
    m = fastrnn.load(src)
    assert isinstance(m, OnnxModel)
    # the format is recognised from the content, not the suffix
    p = tmp_path / "model.bin"
    p.write_bytes(open(src, "rb").read())
    m2 = fastrnn.load(str(p))
    assert isinstance(m2, OnnxModel)
    d = np.load(os.path.join(FIX, "lstm_1l.npz"))
    np.testing.assert_allclose(m2.predict(d["in:x"]), d["ort:y"], rtol=TOL, atol=TOL)


def test_load_from_path_bytes_proto_fileobj():
    src = os.path.join(FIX, "gru_3l.onnx")
    data = open(src, "rb").read()
    d = np.load(os.path.join(FIX, "gru_3l.npz"))
    x = d["in:x"]
    for arg in (src, data, onnx.load(src), io.BytesIO(data)):
        m = load_onnx(arg)
        np.testing.assert_allclose(m(x)["y"], d["ort:y"], rtol=TOL, atol=TOL)


def test_run_input_forms_and_outputs_selection():
    m = load_onnx(os.path.join(FIX, "lstm_bi_2l_bf_h0.onnx"))
    d = np.load(os.path.join(FIX, "lstm_bi_2l_bf_h0.npz"))
    x, h0, c0 = d["in:x"], d["in:h0"], d["in:c0"]
    assert m.input_names == ["x", "h0", "c0"]
    assert m.output_names == ["y", "h_n", "c_n"]
    a = m.run({"x": x, "h0": h0, "c0": c0})
    b = m.run([x, h0, c0])
    c = m(x=x, h0=h0, c0=c0)
    e = m.run({"x": torch.from_numpy(x), "h0": h0, "c0": c0})   # torch tensors accepted
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])
        np.testing.assert_array_equal(a[k], e[k])
    only = m.run([x, h0, c0], outputs=["c_n"])
    assert list(only) == ["c_n"]
    np.testing.assert_array_equal(only["c_n"], a["c_n"])
    np.testing.assert_array_equal(m.predict([x, h0, c0]), a["y"])
    # float64 input to a float32 graph input is cast like the declared type
    np.testing.assert_allclose(m.run([x.astype(np.float64), h0, c0])["y"], a["y"], atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        m.run({"x": x})
    with pytest.raises(ValueError, match="unknown input"):
        m.run({"x": x, "h0": h0, "c0": c0, "zz": x})
    with pytest.raises(ValueError, match="pass a dict"):
        m.run(x)
    with pytest.raises(ValueError, match="unknown output"):
        m.run([x, h0, c0], outputs=["nope"])
    with pytest.raises(TypeError, match="dtype"):
        m.run([x.astype(np.int32), h0, c0])


def test_onnx_runtime_calling_convention():
    """``run(output_names, input_feed)`` in ONNX Runtime's order (None or a list / tuple
    of names, then a mapping) returns ORT's list; fastrnn's own order still returns a
    dict (an ORT-style call was a "missing input" / dtype error about the names)."""
    path = os.path.join(FIX, "lstm_bi_2l_bf_h0.onnx")
    d = np.load(os.path.join(FIX, "lstm_bi_2l_bf_h0.npz"))
    feeds = {k[3:]: d[k] for k in d.files if k.startswith("in:")}
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = load_onnx(path)
    for _ in range(2):      # (the first call, then the kept program)
        for names in (None, ["c_n", "y"], ("h_n",)):
            ref = s.run(names, feeds)
            got = m.run(names, feeds)
            assert isinstance(got, list) and len(got) == len(ref)
            for a, b in zip(got, ref):
                np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
        assert isinstance(m.run(feeds), dict)
        assert list(m.run(feeds, ["c_n"])) == ["c_n"]
        assert list(m([feeds["x"], feeds["h0"], feeds["c0"]])) == m.output_names
    with pytest.raises(ValueError, match="unknown output"):
        m.run(["nope"], feeds)


def _graph(nodes, inputs, outputs, inits=(), opset=14):
    g = helper.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name=o) for o in outputs],
                          list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def test_constant_outputs_are_copies():
    """A graph output that is a constant (an initializer, an Identity of one folded at
    load) is the caller's own array, on the first call too: writing into it changes
    nothing later calls compute (it was the model's array: later calls, and the nodes
    reading it, saw the caller's writes)."""
    rng = np.random.default_rng(0)
    I, H = 3, 4
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(np.ones(H, np.float32), "c")]
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], hidden_size=H),
             helper.make_node("Identity", ["c"], ["bias"]),
             helper.make_node("Add", ["Y_h", "bias"], ["out"])]
    data = _graph(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["t", "b", I])],
                  ["out", "bias", "c"], inits)
    m = load_onnx(data)
    for T, B in ((5, 2), (5, 2), (5, 2), (2, 3)):   # (first call, kept program, new shape)
        feeds = {"X": rng.standard_normal((T, B, I)).astype(np.float32)}
        ref = _ort(data, feeds)
        got = m.run(feeds)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
            got[k] *= 1000      # (writeable, the caller's)


def test_outputs_never_share_memory_with_feeds():
    """Outputs that are an input, or a view of one (Identity, Reshape, Squeeze), are
    copies, as ONNX Runtime's: writing into a result leaves the caller's input as it
    was (on the first call and from the kept program)."""
    nodes = [helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Reshape", ["x", "s"], ["xr"]),
             helper.make_node("Squeeze", ["x", "ax"], ["xs"]),
             helper.make_node("Relu", ["x"], ["y"])]
    data = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, "n"])],
                  ["xi", "xr", "xs", "y", "x"],
                  [numpy_helper.from_array(I64(-1), "s"), numpy_helper.from_array(I64(1), "ax")])
    m = load_onnx(data)
    x = np.random.default_rng(1).standard_normal((2, 1, 3)).astype(np.float32)
    x0 = x.copy()
    ref = _ort(data, {"x": x})
    for feeds in ({"x": x}, {"x": x}, [x], {"x": torch.from_numpy(x)}):
        got = m.run(feeds)
        for k, v in got.items():
            np.testing.assert_array_equal(v, ref[k])
            assert not np.shares_memory(v, x), k
            v[...] = 42
        np.testing.assert_array_equal(x, x0)


def test_declared_static_input_dims_are_checked():
    """A feed whose size differs from a fixed (integer) size the model declares for that
    input, or of another rank than the declared shape, is refused naming the input, the
    axis and both sizes, as ONNX Runtime refuses it; named and unknown sizes, and inputs
    of no declared shape, take any size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "t", 4])
    x.type.tensor_type.shape.dim[1].Clear()          # (and an unknown size)
    free = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["z"], ["w"])]
    data = _graph(nodes, [x, helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, "t", 4]),
                          free], ["y", "w", "v"])
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    m = load_onnx(data)
    ok = np.ones((2, 7, 4), np.float32)
    for z in (np.ones(3, np.float32), np.ones((5, 1, 2), np.float32)):
        for feeds in ({"x": ok, "v": ok, "z": z}, {"x": ok[:, :1], "v": ok[:, :3], "z": z}):
            ref = s.run(None, feeds)
            for a, b in zip(m.run(feeds).values(), ref):
                np.testing.assert_array_equal(a, b)
    for name, bad, match in [
            ("x", np.ones((3, 7, 4), np.float32),
             r"input 'x': axis 0 has size 3, but the model declares size 2 .*\(2, \?, 4\)"),
            ("v", np.ones((2, 7, 5), np.float32), r"input 'v': axis 2 has size 5.*size 4"),
            ("x", np.ones((2, 7), np.float32), r"input 'x' must have rank 3"),
            ("v", np.ones((1, 2, 7, 4), np.float32), r"input 'v' must have rank 3")]:
        feeds = {"x": ok, "v": ok, "z": ok, name: bad}
        with pytest.raises(Exception, match="dimensions|rank"):
            s.run(None, feeds)
        for _ in range(2):      # (a kept program for the good shapes exists)
            with pytest.raises(ValueError, match=match):
                m.run(feeds)


def test_repr_names_layers_and_ops():
    m = load_onnx(os.path.join(FIX, "embed_lstm_linear.onnx"))
    r = repr(m)
    assert "embed_lstm_linear.onnx" in r and "LSTM(6, 8)" in r and "ids" in r
    assert "LogSoftmax" in r


def test_unsupported_ops_listed_at_load():
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("RoiAlign", ["a", "a"], ["b"], name="roi1"),
             helper.make_node("TopK", ["b", "b"], ["c", "ci"]),
             helper.make_node("RoiAlign", ["c", "c"], ["d"]),
             helper.make_node("FusedGemm", ["d"], ["y"], domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(nodes, "g", [X], [Y]),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(LoadError) as ei:
        load_onnx(model)
    msg = str(ei.value)
    assert "RoiAlign" in msg and "TopK" in msg and "com.microsoft.FusedGemm" in msg
    assert "roi1" in msg
    assert msg.count("'RoiAlign'") == 1     # each type once


def test_loop_scan_if_unsupported():
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    body = helper.make_graph([], "body", [], [])
    nodes = [helper.make_node("If", ["x"], ["y"], then_branch=body, else_branch=body)]
    model = helper.make_model(helper.make_graph(nodes, "g", [X], [X]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(LoadError, match="If"):
        load_onnx(model)


def test_bad_files(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"\x08\x07garbage-not-protobuf\xff\xff\xff")
    with pytest.raises(LoadError):
        load_onnx(str(p))
    with pytest.raises(FileNotFoundError):
        load_onnx(str(tmp_path / "missing.onnx"))
    with pytest.raises(TypeError):
        load_onnx(12)


def test_loads_and_runs_without_the_onnx_package(monkeypatch):
    """fastrnn reads ONNX's protobuf itself: with ``import onnx`` failing, every fixture
    loads (path, bytes, file object) and matches ONNX Runtime's stored outputs."""
    import fastrnn.io.onnx as mod
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError):
        importlib.import_module("onnx")
    names = sorted(f for f in os.listdir(FIX) if f.endswith(".onnx"))
    assert len(names) >= 5
    for fname in names:
        path = os.path.join(FIX, fname)
        ref = np.load(path[:-5] + ".npz")
        feeds = {k[3:]: ref[k] for k in ref.files if k.startswith("in:")}
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "rb") as f:
            models = [mod.load_onnx(path), mod.load_onnx(data), mod.load_onnx(f)]
        for m in models:
            out = m.run(feeds)
            for k in ref.files:
                if k.startswith("ort:"):
                    np.testing.assert_allclose(out[k[4:]], ref[k], rtol=1e-5, atol=1e-5,
                                               err_msg=f"{fname} {k}")


def _export_and_load(mod, tmp_path):
    """(the model of ``mod``'s TorchScript export, held and peak allocations of the
    load, the file's size), for an input of shape (3, 1, 96)."""
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(mod, (torch.zeros(3, 1, 96),), path, dynamo=False,
                          input_names=["x"])
    m, held, peak = allocations(lambda: load_onnx(path))
    return m, held, peak, os.path.getsize(path)


class _LstmHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(96, 96, num_layers=2, bidirectional=True)
        self.head = torch.nn.Linear(192, 64)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_load_reads_initializers_in_place_and_frees_the_file(tmp_path):
    """Initializers are read as views of the file's bytes (a recurrent node's weights are
    converted from them without a copy in between: the load's allocation peak is about
    twice the file, was three times), and the constants the model keeps (the Linear's
    weights) are copied, so the file's bytes are not held after loading."""
    torch.manual_seed(0)
    mod = _LstmHead().eval()
    m, held, peak, size = _export_and_load(mod, tmp_path)
    assert held < 1.3 * size, (held, size)
    assert peak < 2.4 * size, (peak, size)
    x = np.random.default_rng(0).standard_normal((3, 1, 96)).astype(np.float32)
    with torch.no_grad():
        ref = mod(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m.predict(x), ref, rtol=1e-5, atol=1e-5)


def test_recurrent_weights_are_not_kept_twice(tmp_path):
    """An exported model's W / R / B initializers become its layers' weights at load and
    are not also kept as ONNX arrays: what loading holds is about the file's size (it
    was twice that); results unchanged; asking for such an initializer as an output is
    a clear error."""
    mod = torch.nn.LSTM(96, 96, num_layers=2, bidirectional=True)
    m, held, _, size = _export_and_load(mod, tmp_path)
    assert held < 1.3 * size, (held, size)
    # (the shape the export declares: no dynamic axes; another is refused, as by ORT)
    x = np.random.default_rng(0).standard_normal((3, 1, 96)).astype(np.float32)
    with torch.no_grad():
        want = mod(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(m.run({"x": x})[m.output_names[0]], want, rtol=1e-4, atol=1e-5)
    wname = [s[1].inputs[1] for s in m._steps if s[0] == "rnn"][0]
    with pytest.raises(ValueError, match="became recurrent layers' weights"):
        m.run({"x": x}, outputs=[wname])


def test_index_errors_are_clear():
    m = load_onnx(os.path.join(FIX, "embed_lstm_linear.onnx"))
    with pytest.raises(IndexError, match="Gather"):
        m.run({"ids": np.full((2, 3), 25, np.int64)})


def _one_node_model(node, inputs, out="y", inits=()):
    g = helper.make_graph([node], "g", inputs, [onnx.ValueInfoProto(name=out)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_malformed_nodes_are_load_errors():
    """A node without an attribute its op requires, or with a tensor attribute that does
    not read, is refused at load naming the node and the attribute, and an input of an
    unsupported element type naming the input (a KeyError / an error from inside the
    run before; found by the fuzz test running the models that load)."""
    x3 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    with pytest.raises(LoadError, match=r"Concat.*'axis'"):
        load_onnx(_one_node_model(helper.make_node("Concat", ["x", "x"], ["y"]), [x3]))
    bad = onnx.TensorProto(data_type=TensorProto.FLOAT, dims=[3])
    bad.float_data.extend([1.0, 2.0])   # (2 values for a tensor of 3)
    shp = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    with pytest.raises(LoadError, match=r"attribute 'value'"):
        load_onnx(_one_node_model(helper.make_node("ConstantOfShape", ["s"], ["y"], value=bad),
                                  [shp]))
    node = helper.make_node("ConstantOfShape", ["s"], ["y"])
    node.attribute.add(name="value")    # (type UNDEFINED: no value)
    with pytest.raises(LoadError, match=r"attribute 'value' has no value"):
        load_onnx(_one_node_model(node, [shp]))
    # an input of an element type NumPy has no dtype for (float8): at load, not at run
    f8 = helper.make_tensor_value_info("x", 17, [2])
    with pytest.raises(LoadError, match=r"input 'x'.*type 17"):
        load_onnx(_one_node_model(helper.make_node("Identity", ["x"], ["y"]), [f8]))


def test_run_time_errors_name_model_and_node():
    """Errors NumPy raises inside a node come back naming the model and the node, on the
    first call and from the kept program: an axis out of range (NumPy's AxisError, as a
    ValueError) and a shape too large to allocate (a MemoryError)."""
    x3 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    m = load_onnx(_one_node_model(helper.make_node("Concat", ["x", "x"], ["y"], axis=33),
                                  [x3]))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"Concat.*axis 33"):
            m.run(np.ones((2, 3), np.float32))
    shp = helper.make_tensor_value_info("s", TensorProto.INT64, [3])
    m = load_onnx(_one_node_model(helper.make_node("ConstantOfShape", ["s"], ["y"]), [shp]))
    np.testing.assert_array_equal(m.run(np.array([2, 1, 3]))["y"], np.zeros((2, 1, 3)))
    for _ in range(2):
        with pytest.raises(MemoryError, match=r"ConstantOfShape"):
            m.run(np.array([2 ** 20, 2 ** 20, 2 ** 20]))


def test_num_threads_passed_to_layers():
    m = load_onnx(os.path.join(FIX, "lstm_bi_2l_op11.onnx"), num_threads=1)
    assert all(layer.num_threads == 1 for layer in m.recurrent_layers)


# ------------------------------------------------------------------- simple ops vs ORT
def _op_model(op, inputs, attrs=None, opset=17, n_out=1, consts=()):
    """Graph with one ``op`` node; inputs named i0, i1...; names in ``consts`` become
    initializers (as exporters emit shape arguments)."""
    vin, inits, feeds = [], [], {}
    names = []
    for k, a in enumerate(inputs):
        n = f"i{k}" if a is not None else ""
        names.append(n)
        if a is None:
            continue
        a = np.asarray(a)
        if k in consts:
            inits.append(numpy_helper.from_array(a, n))
        else:
            vin.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                     a.shape))
            feeds[n] = a
    outs = [f"o{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    g = helper.make_graph([node], "g", vin, [onnx.ValueInfoProto(name=o) for o in outs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return model, feeds


_r = np.random.default_rng(0)
X34 = _r.standard_normal((3, 4)).astype(np.float32)
X234 = _r.standard_normal((2, 3, 4)).astype(np.float32)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731

OP_CASES = [
    ("Identity", [X34], {}, 17, ()),
    ("Transpose", [X234], dict(perm=[1, 0, 2]), 17, ()),
    ("Transpose", [X234], {}, 17, ()),
    ("Squeeze", [X234[:, :1]], dict(axes=[1]), 11, ()),
    ("Squeeze", [X234[:, :1], I64(1)], {}, 13, (1,)),
    ("Squeeze", [X234[:1, :1]], {}, 13, ()),
    ("Unsqueeze", [X34], dict(axes=[0, 3]), 11, ()),
    ("Unsqueeze", [X34, I64(-1, 0)], {}, 13, (1,)),
    ("Reshape", [X234, I64(0, -1)], {}, 17, (1,)),
    ("Reshape", [X234, I64(4, 0, 2)], {}, 17, (1,)),
    ("Flatten", [X234], dict(axis=2), 17, ()),
    ("Flatten", [X234], dict(axis=0), 17, ()),
    ("Flatten", [X234], dict(axis=-1), 17, ()),     # negative: axis + rank
    ("Flatten", [X234], dict(axis=-2), 17, ()),
    ("Flatten", [X234], dict(axis=-3), 17, ()),
    ("Concat", [X34, X34 * 2], dict(axis=-1), 17, ()),
    ("Split", [X234, I64(1, 3)], dict(axis=2), 17, (1,)),
    ("Split", [X234], dict(axis=1, split=[1, 2]), 11, ()),
    ("Split", [X234], dict(axis=2, num_outputs=2), 18, ()),
    ("Slice", [X234, I64(1), I64(9223372036854775807), I64(2)], {}, 17, (1, 2, 3)),
    ("Slice", [X234, I64(-1, 0), I64(-4, 9), I64(1, 0), I64(-1, 1)], {}, 17, (1, 2, 3, 4)),
    ("Slice", [X234, I64(0, 1), I64(2, 3), I64(1, 2), I64(1, 2)], {}, 17, (1, 2, 3, 4)),
    ("Slice", [X234], dict(starts=[1], ends=[3], axes=[1]), 9, ()),
    ("Gather", [X34, I64(2, 0, -1)], dict(axis=0), 17, (1,)),
    ("Gather", [X234, np.array(1, np.int64)], dict(axis=1), 17, (1,)),
    ("MatMul", [X234, X34.T.copy()], {}, 17, ()),
    ("Gemm", [X34, X34, np.ones(3, np.float32)], dict(transB=1, alpha=0.5, beta=2.0), 17, ()),
    ("Gemm", [X34.T.copy(), X34.T.copy()], dict(transA=1), 17, ()),
    ("Add", [X234, X34[0]], {}, 17, ()),
    ("Sub", [X234, X34], {}, 17, ()),
    ("Mul", [X234, np.float32(3)], {}, 17, ()),
    ("Div", [X234, np.float32(3)], {}, 17, ()),
    ("Div", [I64(7, -7, 9), I64(2, 2, 3)], {}, 17, ()),
    ("Pow", [np.abs(X34), np.float32(2.5)], {}, 17, ()),
    ("Relu", [X34], {}, 17, ()),
    ("Tanh", [X34], {}, 17, ()),
    ("Sigmoid", [X34], {}, 17, ()),
    ("LeakyRelu", [X34], dict(alpha=0.3), 17, ()),
    ("Elu", [X34], dict(alpha=0.7), 17, ()),
    ("Selu", [X34], {}, 17, ()),
    ("HardSigmoid", [X34], dict(alpha=0.3, beta=0.4), 17, ()),
    ("Softsign", [X34], {}, 17, ()),
    ("Softplus", [X34], {}, 17, ()),
    ("ThresholdedRelu", [X34], dict(alpha=0.2), 17, ()),
    ("Clip", [X34, np.float32(-0.5), np.float32(0.5)], {}, 17, ()),
    ("Clip", [X34], dict(min=-0.2, max=0.3), 6, ()),
    ("Softmax", [X234], {}, 17, ()),
    ("Softmax", [X234], dict(axis=1), 17, ()),
    ("Softmax", [X234], dict(axis=1), 11, ()),    # legacy 2-D coercion
    ("LogSoftmax", [X234], dict(axis=-1), 17, ()),
    ("LogSoftmax", [X234], {}, 11, ()),
    ("Exp", [X34], {}, 17, ()),
    ("Log", [np.abs(X34) + 0.1], {}, 17, ()),
    ("Sqrt", [np.abs(X34)], {}, 17, ()),
    ("Neg", [X34], {}, 17, ()),
    ("Abs", [X34], {}, 17, ()),
    ("Erf", [X34], {}, 17, ()),
    ("Shape", [X234], {}, 17, ()),
    ("Shape", [X234], dict(start=1), 17, ()),
    ("Size", [X234], {}, 17, ()),
    ("Cast", [X34], dict(to=TensorProto.INT64), 17, ()),
    ("Cast", [I64(1, 2)], dict(to=TensorProto.FLOAT), 17, ()),
    ("ConstantOfShape", [I64(2, 3)], dict(value=numpy_helper.from_array(np.array([1.5], np.float32))), 17, ()),
    ("ConstantOfShape", [I64(2, 3)], {}, 17, ()),
    ("Expand", [X34[:, :1], I64(2, 3, 4)], {}, 17, (1,)),
    ("Where", [X34 > 0, X34, -X34], {}, 17, ()),
    ("Equal", [I64(1, 2, 3), I64(1, 0, 3)], {}, 17, ()),
    ("Less", [X34, np.float32(0)], {}, 17, ()),
    ("Greater", [X34, np.float32(0)], {}, 17, ()),
    ("Not", [X34 > 0], {}, 17, ()),
    ("Range", [np.array(1, np.int64), np.array(9, np.int64), np.array(3, np.int64)], {}, 17, ()),
    ("Tile", [X34, I64(2, 1)], {}, 17, (1,)),
    ("ReduceMean", [X234], dict(axes=[1], keepdims=0), 17, ()),
    ("ReduceMean", [X234, I64(1)], dict(keepdims=1), 18, (1,)),
    ("ReduceSum", [X234, I64(-1)], dict(keepdims=0), 17, (1,)),
    ("ReduceMax", [X234], dict(axes=[0, 2]), 17, ()),
    ("ArgMax", [X234], dict(axis=2, keepdims=0), 17, ()),
    ("Max", [X34, -X34, X34 * 0.5], {}, 17, ()),
    ("Min", [X34, -X34], {}, 17, ()),
    ("Sum", [X34, X34, X34], {}, 17, ()),
    ("Gelu", [X34], {}, 20, ()),
    ("LayerNormalization", [X234, np.ones(4, np.float32), np.zeros(4, np.float32)], {}, 17, ()),
]


@pytest.mark.parametrize("case", OP_CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(OP_CASES)])
def test_simple_op_matches_ort(case):
    op, inputs, attrs, opset, consts = case
    n_out = 2 if op == "Split" else 1
    model, feeds = _op_model(op, inputs, attrs, opset, n_out=n_out, consts=consts)
    ref = _ort(model.SerializeToString(), feeds)
    m = load_onnx(model)
    got = m.run(feeds)
    for k in ref:
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [
    ("Flatten", [X234], dict(axis=4), 17, ()),
    ("Flatten", [X234], dict(axis=-4), 17, ()),
    ("Unsqueeze", [X34, I64(3)], {}, 13, (1,)),
    ("ReduceSum", [X234, I64(-4)], {}, 17, (1,)),
    ("Squeeze", [X234[:, :1], I64(-4)], {}, 13, (1,)),
], ids=lambda c: f"{c[0]}-{c[2] or c[1][1].tolist()}")
def test_axes_out_of_range_are_errors(case):
    """An axis outside [-rank, rank - 1] ([-rank, rank] for Flatten) is an error naming
    the op, as ONNX Runtime's (they were taken modulo the rank: wrong shapes)."""
    op, inputs, attrs, opset, consts = case
    model, feeds = _op_model(op, inputs, attrs, opset, consts=consts)
    with pytest.raises(Exception):
        _ort(model.SerializeToString(), feeds)
    m = load_onnx(model)
    with pytest.raises(ValueError, match=f"{op}.*out of range"):
        m.run(feeds)
    # all inputs constant: folded at load, refused there
    g = model.graph
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in feeds.items())
    del g.input[:]
    with pytest.raises(LoadError, match=f"{op}.*out of range"):
        load_onnx(model)


def test_constant_folding_at_load():
    """Nodes whose inputs are all constants are computed once at load."""
    m = load_onnx(os.path.join(FIX, "lstm_bi_2l_op11.onnx"))
    kinds = [s[1].op if s[0] == "rnn" else s[1][1] for s in m._steps]
    assert "Constant" not in kinds
    assert kinds.count("LSTM") == 2
    assert all(layer is not None for layer in m.recurrent_layers)   # weights converted at load
    # a constant-only chain (Constant -> Transpose -> Mul) is folded, leaving only the Add
    c = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    nodes = [helper.make_node("Constant", [], ["k"], value=c),
             helper.make_node("Transpose", ["k"], ["kt"]),
             helper.make_node("Mul", ["kt", "kt"], ["k2"]),
             helper.make_node("Add", ["x", "k2"], ["y"])]
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])
    model = helper.make_model(helper.make_graph(nodes, "g", [X], [onnx.ValueInfoProto(name="y")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    m = load_onnx(model)
    assert [s[1][1] for s in m._steps] == ["Add"]
    np.testing.assert_array_equal(m.predict(np.ones((3, 2), np.float32)),
                                  1 + np.arange(6, dtype=np.float32).reshape(2, 3).T ** 2)


def _folding_model(nodes, inits, out="big"):
    """An LSTM on x and a constant sub-graph ``nodes`` on initializers {name: array}."""
    W, R = np.zeros((1, 16, 2), np.float32), np.zeros((1, 16, 4), np.float32)
    inits = dict(inits, W=W, R=R)
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4)] + nodes
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 2])
    return _graph(nodes, [X], ["y", out], [numpy_helper.from_array(np.asarray(v), k)
                                           for k, v in inits.items()], opset=17)


_N = 2 ** 24 + 1    # (one more than load-time folding may make in a small model)
_I64 = np.int64
_BIG_FOLDS = {
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["n"], ["big"])],
                        {"n": np.array([_N], _I64)}, _N),
    "Range": ([helper.make_node("Range", ["a", "b", "c"], ["big"])],
              {"a": _I64(0), "b": _I64(_N), "c": _I64(1)}, _N),
    "Tile": ([helper.make_node("Tile", ["one", "n"], ["big"])],
             {"one": np.ones(1, np.float32), "n": np.array([_N], _I64)}, _N),
    "Expand": ([helper.make_node("Expand", ["one", "n"], ["big"])],
               {"one": np.ones(1, np.float32), "n": np.array([_N], _I64)}, _N),
    "OneHot": ([helper.make_node("OneHot", ["i", "n", "v"], ["big"])],
               {"i": np.zeros(1, _I64), "n": np.array([_N], _I64),
                "v": np.array([0, 1], np.float32)}, _N),
    "Gather": ([helper.make_node("ConstantOfShape", ["n"], ["c"]),
                helper.make_node("Gather", ["c", "i"], ["big"])],
               {"n": np.array([2, 8193], _I64), "i": np.zeros(2048, _I64)}, 2048 * 8193),
    "Add": ([helper.make_node("ConstantOfShape", ["n"], ["c"]),
             helper.make_node("Transpose", ["c"], ["t"]),
             helper.make_node("Add", ["c", "t"], ["big"])],
            {"n": np.array([4097, 1], _I64)}, 4097 ** 2),
    "MatMul": ([helper.make_node("ConstantOfShape", ["n"], ["c"]),
                helper.make_node("Transpose", ["c"], ["t"]),
                helper.make_node("MatMul", ["c", "t"], ["big"])],
               {"n": np.array([4097, 1], _I64)}, 4097 ** 2),
    "Gemm": ([helper.make_node("ConstantOfShape", ["n"], ["c"]),
              helper.make_node("Gemm", ["c", "c"], ["big"], transA=1)],
             {"n": np.array([1, 4097], _I64)}, 4097 ** 2),
    # each op within the bound, not all of them: a Concat of a value with itself, again
    "Concat": ([helper.make_node("ConstantOfShape", ["n"], ["c0"])]
               + [helper.make_node("Concat", [f"c{k}", f"c{k}"], [f"c{k + 1}"], axis=0)
                  for k in range(4)] + [helper.make_node("Identity", ["c4"], ["big"])],
               {"n": np.array([2 ** 20], _I64)}, 2 ** 24),
}


@pytest.mark.parametrize("op", sorted(_BIG_FOLDS))
def test_load_time_folding_is_bounded(op):
    """A small model whose constant sub-graph, computed at load, is large (an audit
    finding: a 1.8 KB model's ConstantOfShape / Range / Tile / Expand of [4e8] made 1.5 GB
    while loading) is refused before the op runs, naming the node and the size: the
    values folded at load may hold 2**24 elements in all, or 4 times the initializers'
    elements where that is more."""
    import tracemalloc
    nodes, inits, size = _BIG_FOLDS[op]
    data = _folding_model(nodes, inits)
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match=rf"node \d+ {op} '': its constant output would "
                                            rf"have {size} elements, more than the \d+ left"):
            load_onnx(data)
        # (the Concats: up to the bound's 2**24 float32 values in all; 1.5 GB before)
        assert tracemalloc.get_traced_memory()[1] < (80 if op == "Concat" else 16) << 20
    finally:
        tracemalloc.stop()


def test_load_time_folding_bound_follows_the_initializers(monkeypatch):
    """The bound grows with the model's initializers (4 times their elements); what
    folding makes within it is kept, and run-time ops of huge shapes fed by the caller
    are errors naming the node, never crashes (an infinite repeat count, an
    OverflowError, was raised as it was)."""
    import fastrnn.io.onnx as fo
    monkeypatch.setattr(fo, "_FOLD_ELEMENTS", 1000)
    cos = [helper.make_node("ConstantOfShape", ["n"], ["big"])]
    w = {"w": np.zeros(400, np.float32)}
    m = load_onnx(_folding_model(cos, dict(w, n=np.array([1000], np.int64))))
    assert m.run(np.zeros((1, 1, 2), np.float32))["big"].shape == (1000,)
    with pytest.raises(LoadError, match=r"ConstantOfShape.*1001 elements.*1000 left"):
        load_onnx(_folding_model(cos, {"n": np.array([1001], np.int64)}))
    # (W, R: 96 elements; w 400; n 1: 497 * 4 = 1988)
    load_onnx(_folding_model(cos, dict(w, n=np.array([1988], np.int64))))
    with pytest.raises(LoadError, match=r"1989 elements, more than the 1988 left"):
        load_onnx(_folding_model(cos, dict(w, n=np.array([1989], np.int64))))
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    for op, feed, err in (("Tile", [2.0 ** 62], ValueError), ("Tile", [np.inf], OverflowError),
                          ("Expand", [2.0 ** 62], ValueError)):
        nodes = [helper.make_node("Cast", ["x"], ["n"], to=TensorProto.INT64),
                 helper.make_node(op, ["one", "n" if feed[0] < np.inf else "x"], ["y"])]
        m = load_onnx(_graph(nodes, [X], ["y"], [one]))
        with pytest.raises(err, match=rf"^g: node 1 {op}"):
            m.run(np.array(feed, np.float32))


def test_sequence_lens_computed_from_padding_ids():
    """A Keras/tf2onnx-style graph: ids -> embedding; lengths = ReduceSum(Cast(ids != 0));
    a bidirectional LSTM reads sequence_lens from that; Y_h -> Gemm -> Softmax."""
    rng = np.random.default_rng(5)
    V, E, Hh, C = 12, 5, 6, 3
    inits = [numpy_helper.from_array(rng.standard_normal((V, E)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (2, 4 * Hh, E)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (2, 4 * Hh, Hh)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (2, 8 * Hh)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((2 * Hh, C)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "fc_b"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),                     # (B, T, E)
        helper.make_node("Transpose", ["e"], ["x"], perm=[1, 0, 2]),            # (T, B, E)
        helper.make_node("Equal", ["ids", "zero"], ["pad"]),
        helper.make_node("Not", ["pad"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_i"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", ["keep_i", "ax1"], ["lens"], keepdims=0),
        helper.make_node("LSTM", ["x", "W", "R", "B", "lens"], ["", "Y_h"], hidden_size=Hh,
                         direction="bidirectional"),
        helper.make_node("Transpose", ["Y_h"], ["hb"], perm=[1, 0, 2]),        # (B, 2, H)
        helper.make_node("Shape", ["hb"], ["hs"]),
        helper.make_node("Reshape", ["hb", "flat"], ["h2"]),
        helper.make_node("Gemm", ["h2", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    g = helper.make_graph(nodes, "keras_like", [helper.make_tensor_value_info(
        "ids", TensorProto.INT64, ["B", "T"])], [helper.make_tensor_value_info(
            "probs", TensorProto.FLOAT, ["B", C])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    ids = rng.integers(1, V, size=(4, 9))
    ids[0, 3:] = 0
    ids[2, 6:] = 0
    ids[3, 1:] = 0
    m = load_onnx(model)
    ref = _ort(model.SerializeToString(), {"ids": ids})
    got = m.run({"ids": ids})
    np.testing.assert_allclose(got["probs"], ref["probs"], rtol=1e-5, atol=1e-6)
    # and it is the same as cutting each sequence to its length
    for b in range(4):
        n = int((ids[b] != 0).sum())
        np.testing.assert_allclose(m.predict(ids[b:b + 1, :n]), got["probs"][b:b + 1],
                                   rtol=1e-5, atol=1e-6)


def test_initializers_listed_as_inputs():
    """Old-style graphs list the initializers among the inputs (keep_initializers_as_inputs):
    they are weights, not required inputs, but may be overridden by a feed."""
    torch.manual_seed(0)
    net = torch.nn.GRU(4, 5).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(3, 2, 4),), f, dynamo=False, opset_version=9,
                          input_names=["x"], keep_initializers_as_inputs=True)
    proto = onnx.load_from_string(f.getvalue())
    assert len(proto.graph.input) > 1
    m = load_onnx(proto)
    assert m.input_names == ["x"]
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    ref = _ort(f.getvalue(), {"x": x})
    got = m.run(x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
    # overriding a weight through a feed is honoured
    wname = next(i.name for i in proto.graph.input if i.name != "x")
    w = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == wname))
    feeds = {"x": x, wname: np.zeros_like(w)}
    ref2 = _ort(f.getvalue(), feeds)
    got2 = m.run(feeds)
    for k in ref2:
        np.testing.assert_allclose(got2[k], ref2[k], rtol=TOL, atol=TOL)
    assert not np.allclose(got2[m.output_names[0]], got[m.output_names[0]])
    # another value of the same shape next call: honoured too (not kept with the shapes)
    feeds[wname] = (w * 0.5).astype(w.dtype)
    ref3, got3 = _ort(f.getvalue(), feeds), m.run(feeds)
    for k in ref3:
        np.testing.assert_allclose(got3[k], ref3[k], rtol=TOL, atol=TOL)
    assert not np.allclose(got3[m.output_names[0]], got2[m.output_names[0]])


# ----------------------------------------------------- values from the inputs' shapes
def test_shape_only_values_computed_once_per_shape(monkeypatch):
    """PyTorch's exports build their zero initial states from the input's shape (Shape,
    Gather, Unsqueeze, Concat, ConstantOfShape or Expand): those nodes run once per
    feeds' shapes, and the
    answers stay those of ONNX Runtime as the batch size changes back and forth."""
    from fastrnn.io import onnx as fonnx
    calls = []
    real = fonnx._SIMPLE_OPS["Shape"]
    monkeypatch.setitem(fonnx._SIMPLE_OPS, "Shape", lambda *a: calls.append(1) or real(*a))
    with open(os.path.join(FIX, "lstm_bi_2l_op11.onnx"), "rb") as f:
        data = f.read()
    m = load_onnx(data)
    ops = {s[1][1] for s in m._steps if s[0] == "op" and set(s[3]) & m._shaped}
    assert {"Shape", "ConstantOfShape", "Slice"} <= ops and "Transpose" not in ops  # (reads Y)
    rng = np.random.default_rng(3)
    seen = []
    for B in (2, 5, 2, 5, 1):
        x = rng.standard_normal((4, B, 5)).astype(np.float32)
        ref = _ort(data, {"input": x} if "input" in m.input_names else {m.input_names[0]: x})
        got = m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
        seen.append(len(calls))
    n = seen[0]
    assert n > 0 and seen == [n, 2 * n, 2 * n, 2 * n, 3 * n]
    assert len(m._progs) == 3


def test_shape_of_a_value_sized_by_values_is_not_kept():
    """Shape of a value whose shape depends on the input's values (Range up to the
    input's maximum) is computed every call; a graph output that depends on shapes only
    comes back writeable and changing it changes nothing kept."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("Cast", ["mx"], ["lim"], to=TensorProto.INT64),
             helper.make_node("Range", ["zero", "lim", "one"], ["r"]),
             helper.make_node("Shape", ["r"], ["n"]),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Mul", ["xs", "two"], ["xs2"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k)
             for k, v in (("zero", 0), ("one", 1), ("two", 2))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N"])], [onnx.ValueInfoProto(name="n"),
                                          onnx.ValueInfoProto(name="xs2")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = load_onnx(model)
    assert m._shaped == {"xs", "xs2"}
    for top in (3.0, 7.0, 2.0):
        x = np.array([1.0, top, 0.5], np.float32)
        ref = _ort(model.SerializeToString(), {"x": x})
        got = m.run({"x": x})
        np.testing.assert_array_equal(got["n"], ref["n"])
        np.testing.assert_array_equal(got["xs2"], ref["xs2"])
        assert got["xs2"].flags.writeable
        got["xs2"][0] = 99
    assert m.run({"x": x})["xs2"].tolist() == [6]


# ------------------------------------------------------------------- kept programs
def test_kept_program_runs_layers_lean(monkeypatch):
    """From the second call with the same feeds' shapes, a PyTorch export runs its
    layers' lean calls directly (no _RecurrentNode.run) and its bidirectional Y comes
    out already transposed (no Transpose node); answers stay ONNX Runtime's for fresh
    values, and other shapes take the full path once, then their own program."""
    from fastrnn.io import onnx as fonnx
    calls = {"rnn": 0, "Transpose": 0}
    real_run, real_t = fonnx._RecurrentNode.run, fonnx._SIMPLE_OPS["Transpose"]

    def rnn_run(self, vals):
        calls["rnn"] += 1
        return real_run(self, vals)

    def transpose(*a):
        calls["Transpose"] += 1
        return real_t(*a)
    monkeypatch.setattr(fonnx._RecurrentNode, "run", rnn_run)
    monkeypatch.setitem(fonnx._SIMPLE_OPS, "Transpose", transpose)
    with open(os.path.join(FIX, "lstm_bi_2l_op11.onnx"), "rb") as f:
        data = f.read()
    m = load_onnx(data)
    rng = np.random.default_rng(11)
    seen = []
    for B in (3, 3, 3, 1, 1, 3):
        x = rng.standard_normal((4, B, 5)).astype(np.float32)
        ref, got = _ort(data, {m.input_names[0]: x}), m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
            assert got[k].flags.writeable and got[k].flags.c_contiguous
        seen.append(dict(calls))
    first = seen[0]
    assert first["rnn"] == 2 and first["Transpose"] == 2
    assert seen[1] == seen[2] == first                  # B=3 again: the program
    assert seen[3] == {k: 2 * v for k, v in first.items()} == seen[4] == seen[5]


@pytest.mark.parametrize("D", [1, 2])
def test_kept_program_input_sized_by_values(D):
    """Within one set of feeds' shapes a recurrent node's input may still change shape
    (sliced to a length given as a feed): the kept program's lean runner, its
    Squeeze-as-reshape and its Y made (T, B, D, H) for the Transpose fall back to the
    full path then, still ONNX Runtime's answers."""
    H, I = 4, 3
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.uniform(-.5, .5, (D, H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (D, H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0, 0, -1], np.int64), "tbh")]
    nodes = [helper.make_node("Slice", ["x", "zero", "n", "zero"], ["xs"]),
             helper.make_node("RNN", ["xs", "W", "R"], ["Y", "Yh"], hidden_size=H,
                              direction="bidirectional" if D == 2 else "forward")]
    if D == 1:
        nodes.append(helper.make_node("Squeeze", ["Y", "one"], ["y"]))
    else:
        nodes += [helper.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["Yt", "tbh"], ["y"])]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name="y"), onnx.ValueInfoProto(name="Yh")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    data = model.SerializeToString()
    m = load_onnx(model)
    x = rng.standard_normal((6, 2, I)).astype(np.float32)
    for n in (4, 4, 2, 6, 1, 4):
        feeds = {"x": x, "n": np.array([n], np.int64)}
        ref, got = _ort(data, feeds), m.run(feeds)
        assert got["y"].shape == (n, 2, D * H)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
    assert len(m._progs) == 1


def _transposed_lstm_model(I=3, H=4):
    """x (B, T, I) -> Slice to the first n steps -> Transpose(perm=[1, 0, 2]) -> LSTM ->
    Squeeze -> Transpose(perm=[1, 0, 2]) -> y (B, n, H), as PyTorch's batch_first
    exports have it; also ``xr``: Transpose(x) without perm (all axes reversed)."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(rng.uniform(-.5, .5, (1, 4 * H, I)).astype(np.float32),
                                     "W"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (1, 4 * H, H)).astype(np.float32),
                                     "R"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("Slice", ["x", "zero", "n", "one"], ["xs"]),
             helper.make_node("Transpose", ["xs"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R"], ["Y", "Yh"], hidden_size=H),
             helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),
             helper.make_node("Transpose", ["Ys"], ["y"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["x"], ["xr"])]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", I]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name=o) for o in ("y", "Yh", "xr")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_kept_program_transposes_as_views():
    """A kept program runs a Transpose of an input of the first call's shape as one
    view step (no op call); where values change that shape (a Slice to a fed length)
    the op runs; ONNX Runtime's answers every call, a transpose of a feed is the
    caller's own array (not a view of the feed), and ONNX Runtime's call order
    (``run(names, feeds)``, names None or repeated) gives lists in that order."""
    model = _transposed_lstm_model()
    data = model.SerializeToString()
    m = load_onnx(model)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    for n in (6, 6, 4, 6, 1):
        feeds = {"x": x, "n": np.array([n], np.int64)}
        got = _same_as_ort(m, data, feeds, calls=1)
        assert got["y"].shape == (2, n, 4) and got["xr"].shape == (3, 6, 2)
        got["xr"][...] = 7.0
        assert not (x == 7.0).any()
    assert len(m._progs) == 1
    kinds = _step_kinds(m)
    assert "_generic" not in kinds[1:] and kinds.count("_reshape") == 4, kinds
    feeds = {"x": x, "n": np.array([5], np.int64)}
    ref = _ort(data, feeds)
    for names in (["xr", "y"], ["y", "y"], None):
        for _ in range(2):
            got = m.run(names, feeds)
            assert isinstance(got, list)
            for k, v in zip(names or ["y", "Yh", "xr"], got):
                np.testing.assert_allclose(v, ref[k], rtol=TOL, atol=TOL, err_msg=k)
    with pytest.raises(ValueError, match="unknown output"):
        m.run(["nope"], feeds)


def test_kept_program_linear_heads_and_selects_lean():
    """In a kept program a Gemm (PyTorch's Linear: transB, bias) or MatMul with fixed
    weights runs as one product (and the bias added), a Gather of one constant index
    as a view of its input; a Gemm with alpha or a fed weight runs the op; where values
    change a shape (a Slice to a fed length) the op runs. ONNX Runtime's answers, the
    same bits in every call, and no result is a view of a feed."""
    rng = np.random.default_rng(12)
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.standard_normal((5, 4)).astype(f32), "W"),
             numpy_helper.from_array(rng.standard_normal((5,)).astype(f32), "b"),
             numpy_helper.from_array(rng.standard_normal((1, 5)).astype(f32), "b2"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(f32), "M"),
             numpy_helper.from_array(np.array(-1, np.int64), "last"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Gather", ["x", "last"], ["xl"], axis=1),
             helper.make_node("Gemm", ["xl", "W", "b"], ["lin"], transB=1),
             helper.make_node("Gemm", ["xl", "W", "b2"], ["lin2"], transB=1, alpha=2.0),
             helper.make_node("Gemm", ["lin", "V"], ["fed"]),
             helper.make_node("MatMul", ["x", "M"], ["mm"]),
             helper.make_node("Slice", ["x", "zero", "n", "zero"], ["xs"]),
             helper.make_node("Gather", ["xs", "last"], ["xsl"], axis=1),
             helper.make_node("Gemm", ["xsl", "W"], ["slin"], transB=1)]
    outs = ["xl", "lin", "lin2", "fed", "mm", "slin"]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4]),
        helper.make_tensor_value_info("V", TensorProto.FLOAT, [5, 2]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name=o) for o in outs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    data = model.SerializeToString()
    m = load_onnx(model)
    x = rng.standard_normal((3, 6, 4)).astype(f32)
    V = rng.standard_normal((5, 2)).astype(f32)
    first = None
    for n in (6, 6, 6, 2, 6):
        feeds = {"x": x, "V": V, "n": np.array([n], np.int64)}
        got = _same_as_ort(m, data, feeds, calls=1)
        if n == 6:
            first = first or {k: v.copy() for k, v in got.items()}
            for k in outs:
                assert np.array_equal(got[k], first[k]), k
        got["xl"][...] = 9.0
        assert not (x == 9.0).any()
    assert len(m._progs) == 1
    kinds = _step_kinds(m)
    # (lin, mm, slin lean; lin2 (alpha), fed (a fed weight), the Slice as ops)
    assert kinds.count("_linear") == 3 and kinds.count("_generic") == 3, kinds
    assert kinds.count("_gather") == 2, kinds


def test_kept_program_only_final_state_wanted():
    """A graph that reads only Y_h of a recurrent node (Y unused) runs the layer without
    per-step outputs in its program; Y_h is ONNX Runtime's, B=1 and B=3, both layouts'
    exports."""
    for bf in (False, True):
        torch.manual_seed(2)
        net = torch.nn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=bf).eval()

        class Last(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)[1]
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Last().eval(), (torch.zeros(2, 5, 4) if bf else torch.zeros(5, 2, 4),),
                              f, dynamo=False, opset_version=14, input_names=["x"],
                              dynamic_axes={"x": {0: "b", 1: "t"} if bf else {0: "t", 1: "b"}})
        data = f.getvalue()
        m = load_onnx(data)
        rng = np.random.default_rng(bf)
        for B in (1, 1, 3, 3):
            x = rng.standard_normal((B, 5, 4) if bf else (5, B, 4)).astype(np.float32)
            ref, got = _ort(data, {"x": x}), m.run(x)
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)


def test_kept_program_errors_name_the_node():
    """A failure inside a kept program (an index out of range in the second call with
    the same shapes) names the model and the node, like the first call's."""
    m = load_onnx(os.path.join(FIX, "embed_lstm_linear.onnx"))
    name = m.input_names[0]
    ids = np.ones((3, 4), np.int64)
    m.run({name: ids})
    assert m._progs
    ids[1, 2] = 10 ** 6
    with pytest.raises(IndexError, match="Gather"):
        m.run({name: ids})


def _export(net, x, opset=14):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=opset,
                          input_names=["x"],
                          dynamic_axes={"x": {0: "b", 1: "t"} if net.batch_first
                                        else {0: "t", 1: "b"}})
    return f.getvalue()


def _count_node_runs(monkeypatch):
    from fastrnn.io import onnx as fonnx
    runs = []
    real = fonnx._RecurrentNode.run
    monkeypatch.setattr(fonnx._RecurrentNode, "run",
                        lambda self, vals: runs.append(self.where) or real(self, vals))
    return runs


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layers,bi,bf", [(2, False, False), (3, False, True),
                                          (2, True, False), (3, True, True)])
def test_kept_program_runs_stacked_nodes_as_one_layer(cell, layers, bi, bf, monkeypatch):
    """PyTorch's export of a stacked layer (one ONNX node a layer, Y reshaped for the
    next, the final states concatenated) runs in the kept program as one multi-layer
    layer, kept by the model: no node's own run after the first call, ONNX Runtime's
    answers for fresh inputs, B = 1 and 3, both layouts of the export; outputs writeable
    and not shared between calls."""
    torch.manual_seed(layers + 3 * bi)
    net = getattr(torch.nn, cell)(5, 6, num_layers=layers, bidirectional=bi,
                                  batch_first=bf).eval()
    rng = np.random.default_rng(layers)
    shape = lambda B: (B, 4, 5) if bf else (4, B, 5)
    data = _export(net, rng.standard_normal(shape(2)).astype(np.float32))
    runs = _count_node_runs(monkeypatch)
    m = load_onnx(data)
    got_before = None
    for B in (3, 3, 1, 1, 3):
        x = rng.standard_normal(shape(B)).astype(np.float32)
        ref, got = _ort(data, {"x": x}), m.run(x)
        assert list(got) == list(ref)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
            assert got[k].flags.writeable
        if got_before is not None:
            for v in got.values():
                assert not any(np.shares_memory(v, w) for w in got_before.values())
        got_before = got
    assert len(runs) == 2 * layers          # (the first call of each shape)
    assert len(m._stacks) == 1
    fused = next(iter(m._stacks.values()))[0]
    assert fused.num_layers == layers and fused.bidirectional == bi


def _two_rnns(outputs, H=4, I=3, x_from=None, cat=("Yh0", "Yh1"), attrs1=None,
              link="squeeze", direction="forward"):
    """Two stacked RNN nodes as PyTorch exports them (Squeeze between, or for two
    directions, ``link="transpose"``, Transpose(perm=[0, 2, 1, 3]) and Reshape; "reshape":
    a Reshape alone, which is not the same), the final states concatenated (``cat``),
    with graph ``outputs`` among y, Y0, Yh0, Yh1, hn."""
    rng = np.random.default_rng(9)
    D = 1 if link == "squeeze" else 2
    w = lambda *s: numpy_helper.from_array(rng.uniform(-.5, .5, s).astype(np.float32))
    inits = [w(D, H, I), w(D, H, H), w(D, H, D * H), w(D, H, H),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0, 0, -1], np.int64), "tbh")]
    for t, n in zip(inits, ("W0", "R0", "W1", "R1")):
        t.name = n
    kw = dict(hidden_size=H, direction=direction if D == 1 else "bidirectional")
    between = {"squeeze": [helper.make_node("Squeeze", ["Y0", "one"], ["s0"])],
               "transpose": [helper.make_node("Transpose", ["Y0"], ["t0"], perm=[0, 2, 1, 3]),
                             helper.make_node("Reshape", ["t0", "tbh"], ["s0"])],
               "reshape": [helper.make_node("Reshape", ["Y0", "tbh"], ["s0"])]}[link]
    nodes = [helper.make_node("RNN", ["x", "W0", "R0"], ["Y0", "Yh0"], **kw)] + between + [
        helper.make_node("RNN", ["s0", "W1", "R1"], ["Y1", "Yh1"], **kw, **(attrs1 or {})),
        helper.make_node("Transpose", ["Y1"], ["y"], perm=[0, 2, 1, 3]),
        helper.make_node("Concat", list(cat), ["hn"], axis=0)]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])]
    if x_from is not None:          # x = the input sliced to n steps (n a feed)
        nodes.insert(0, helper.make_node("Slice", ["xx", "zero", "n", "zero"], ["x"]))
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
        ins = [helper.make_tensor_value_info("xx", TensorProto.FLOAT, ["T", "B", I]),
               helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
    g = helper.make_graph(nodes, "g", ins, [onnx.ValueInfoProto(name=n) for n in outputs],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("outputs,kw,fused", [
    (["y", "hn"], {}, True), (["y"], {}, True), (["hn"], {}, True),
    (["y", "Yh0"], {}, True),           # (a node's own final state: not the Concat's)
    (["y", "hn"], dict(link="transpose"), True),
    (["y", "hn"], dict(cat=("Yh1", "Yh0")), True),      # (the Concat not the layer's)
    (["y", "Y0"], {}, False),           # (the first node's Y is an output)
    (["y", "hn"], dict(attrs1=dict(clip=0.3)), False),  # (configurations differ)
    (["y", "hn"], dict(link="reshape"), False),     # (directions not made (T, B, 2H))
    (["y", "hn"], dict(direction="reverse"), True),     # (go_backwards every layer)
])
def test_stacked_nodes_outputs(outputs, kw, fused, monkeypatch):
    """Which graphs a stacked chain is fused in: with the last Y, one node's final
    state, the concatenated final states (in either order), two directions; a first
    node's Y that is itself an output, nodes of different configurations, or two
    directions reshaped without PyTorch's Transpose keep the nodes apart.  ONNX
    Runtime's answers in every call either way."""
    model = _two_rnns(outputs, **kw)
    data = model.SerializeToString()
    runs = _count_node_runs(monkeypatch)
    m = load_onnx(model)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((5, 2, 3)).astype(np.float32)
        ref, got = _ort(data, {"x": x}), m.run(x)
        assert all(got[k].flags.writeable for k in outputs)
        for k in outputs:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    assert bool(m._stacks) == fused
    assert len(runs) == 2           # (fused or not, lean after the first call)


def test_stacked_nodes_input_sized_by_values(monkeypatch):
    """A stacked chain whose input changes shape within one set of feeds' shapes (sliced
    to a length given as a feed) runs the nodes' own steps then: ONNX Runtime's answers."""
    model = _two_rnns(["y", "hn"], x_from="n")
    data = model.SerializeToString()
    m = load_onnx(model)
    xx = np.random.default_rng(3).standard_normal((6, 2, 3)).astype(np.float32)
    for n in (4, 4, 2, 6, 4):
        feeds = {"xx": xx, "n": np.array([n], np.int64)}
        ref, got = _ort(data, feeds), m.run(feeds)
        assert got["y"].shape == (n, 2, 1, 4)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    assert m._stacks and len(m._progs) == 1


def test_stacked_nodes_follow_changed_layers(monkeypatch):
    """After a stacked chain was fused, new weights or a thread count set on a node's
    layer (``recurrent_layers``) are used: the same answers as a model that never fuses,
    in the kept program and in a new one."""
    from fastrnn.io import onnx as fonnx
    model = _two_rnns(["y", "hn"], link="transpose")
    m, apart = load_onnx(model), load_onnx(model)

    def run_apart(x):
        with monkeypatch.context() as mp:
            mp.setattr(fonnx, "_STACK_BYTES", 0)
            return apart.run(x)
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    m.run(x)
    m.run(x)
    run_apart(x)
    assert m._stacks and not apart._stacks
    for mm in (m, apart):
        lay = mm.recurrent_layers[1]
        lay.load_state_dict({k: v * 0.5 for k, v in lay.state_dict().items()})
    got, ref = m.run(x), run_apart(x)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    assert not np.allclose(got["hn"], _ort(model.SerializeToString(), {"x": x})["hn"])
    x3 = np.random.default_rng(7).standard_normal((5, 3, 3)).astype(np.float32)
    for _ in range(2):      # (other shapes: a new program fuses the new weights)
        got, ref3 = m.run(x3), run_apart(x3)
        for k in ref3:
            np.testing.assert_allclose(got[k], ref3[k], rtol=TOL, atol=TOL)
    assert len(m._stacks) == 2
    m.recurrent_layers[0].num_threads = 1
    seen = []
    real = m.recurrent_layers[0]._dense_call
    monkeypatch.setattr(m.recurrent_layers[0], "_dense_call",
                        lambda *a: seen.append(1) or real(*a))
    np.testing.assert_array_equal(m.run(x)["hn"], ref["hn"])
    assert seen


def test_stacked_nodes_of_large_layers_stay_apart(monkeypatch):
    """Weights over _STACK_BYTES (the fused layer holds a copy) are not fused: each
    node's lean call, the same answers."""
    from fastrnn.io import onnx as fonnx
    monkeypatch.setattr(fonnx, "_STACK_BYTES", 64)
    model = _two_rnns(["y", "hn"])
    m = load_onnx(model)
    x = np.random.default_rng(4).standard_normal((5, 2, 3)).astype(np.float32)
    ref = _ort(model.SerializeToString(), {"x": x})
    for _ in range(2):
        got = m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    assert not m._stacks


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_initial_state_from_shapes_zero_or_not(fill):
    """An initial state built from the input's shape (Expand of a constant to (1, B, H))
    is kept per shapes; a zero one runs as an absent state, any other value is used:
    both match ONNX Runtime on every call, the kept ones too."""
    H, I = 4, 3
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.uniform(-.5, .5, (1, H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (1, H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array(fill, np.float32), "v"),
             numpy_helper.from_array(np.array([1], np.int64), "i1"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([H], np.int64), "h")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["b"]),
             helper.make_node("Concat", ["one", "b", "h"], ["shp"], axis=0),
             helper.make_node("Expand", ["v", "shp"], ["h0"]),
             helper.make_node("RNN", ["x", "W", "R", "", "", "h0"], ["Y", "Yh"], hidden_size=H)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["T", "B", I])], [onnx.ValueInfoProto(name="Y"),
                                                  onnx.ValueInfoProto(name="Yh")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    data = model.SerializeToString()
    m = load_onnx(model)
    assert "h0" in m._shaped
    for B in (2, 2, 3, 2):
        x = rng.standard_normal((5, B, I)).astype(np.float32)
        ref, got = _ort(data, {"x": x}), m.run(x)
        for k in ("Y", "Yh"):
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
    assert [bool(z) for z in (p.zero for p in m._progs.values())] == [fill == 0.0] * 2


def test_run_takes_a_per_call_thread_count(monkeypatch):
    """``model(x, num_threads=n)`` / ``predict(x, num_threads=n)``: the recurrent nodes
    run on n threads (it was taken for an input name: "unknown input(s)"), the same
    numbers; kept programs too; a bad count is a ValueError."""
    from fastrnn import _threads
    net = torch.nn.GRU(5, 7, num_layers=2)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(4, 3, 5),), buf, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "t", 1: "b"}})
    m = load_onnx(buf.getvalue())
    x = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
    want = m.predict(x)
    seen = []
    resolve = _threads.resolve

    def spy(call=None, layer=None):
        n = resolve(call, layer)
        seen.append(n)
        return n

    monkeypatch.setattr(_threads, "resolve", spy)
    fastrnn.set_num_threads(2)
    try:
        for _ in range(2):              # (the second call runs the kept program)
            np.testing.assert_array_equal(m.predict(x, num_threads=1), want)
            assert seen and set(seen) == {1}, seen
            seen.clear()
        m.run({"x": x})
        assert seen and set(seen) == {2}, seen
        assert set(m(x, num_threads=1)) == set(m.output_names)
    finally:
        fastrnn.set_num_threads(None)
    with pytest.raises(ValueError, match="num_threads"):
        m.predict(x, num_threads=0)


# ------------------------------------- constant zero initial states (dynamo's static export)
def _const_state_model(op="LSTM", fill=0.0, state_batch=2, as_node=False, layout=0,
                       sliced=False, H=4, I=3, D=1):
    """One ``op`` node whose initial_h (and initial_c) is a constant of ``fill``, of the
    state shape for batch ``state_batch`` (an initializer, or ``as_node`` a Constant
    node), as torch 2.13's dynamo export without dynamic_shapes stores its zero states.
    ``sliced``: X is x[:, :n] (layout 1: x[:n]) for a feed n, so X's batch changes within
    one set of feeds' shapes."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(3)
    shape = (D, state_batch, H) if layout == 0 else (state_batch, D, H)
    state = np.full(shape, fill, np.float32)
    inits = [numpy_helper.from_array(rng.uniform(-.5, .5, (D, G * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (D, G * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.uniform(-.5, .5, (D, 2 * G * H)).astype(np.float32), "B")]
    nodes = []
    if as_node:
        nodes.append(helper.make_node("Constant", [], ["h0"],
                                      value=numpy_helper.from_array(state)))
    else:
        inits.append(numpy_helper.from_array(state, "h0"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", I])]
    xin = "x"
    if sliced:
        inits += [numpy_helper.from_array(I64(0), "zero"),
                  numpy_helper.from_array(I64(1 - layout), "bax")]
        inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, [1]))
        nodes.append(helper.make_node("Slice", ["x", "zero", "n", "bax"], ["xs"]))
        xin = "xs"
    states = ["h0", "h0"] if op == "LSTM" else ["h0"]
    outs = ["Y", "Yh", "Yc"] if op == "LSTM" else ["Y", "Yh"]
    nodes.append(helper.make_node(op, [xin, "W", "R", "B", ""] + states, outs, hidden_size=H,
                                  layout=layout,
                                  direction="bidirectional" if D == 2 else "forward"))
    g = helper.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name=o) for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def _step_kinds(m):
    """The kind of each step of a model's one kept program: "compiled" (a recurrent
    node's lean call), "_stack" (stacked nodes as one layer), "_generic", "_reshape"
    (a reshape or transpose view), "_gather" (a view), "_linear" (a product)."""
    (prog,) = m._progs.values()
    return [s[0].__qualname__.split(".<locals>")[0].split(".")[-1] for s in prog.steps]


@pytest.mark.parametrize("op,D", [("LSTM", 1), ("GRU", 2), ("RNN", 1)])
@pytest.mark.parametrize("as_node", [False, True])
@pytest.mark.parametrize("fill", [0.0, 0.25])
def test_constant_zero_initial_states_run_as_absent(op, D, as_node, fill, monkeypatch):
    """A constant initial state of zeros (initializer or Constant node) of the node's
    state shape runs as an absent one: from the second call the node calls its layer's
    lean path (no _RecurrentNode.run); a constant of any other value is used (the node
    runs each call). ONNX Runtime's answers for fresh inputs, every call."""
    model = _const_state_model(op, fill, state_batch=2, as_node=as_node, D=D)
    data = model.SerializeToString()
    runs = _count_node_runs(monkeypatch)
    m = load_onnx(data)
    rng = np.random.default_rng(4)
    for _ in range(3):
        x = rng.standard_normal((5, 2, 3)).astype(np.float32)
        ref, got = _ort(data, {"x": x}), m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    assert len(runs) == (1 if fill == 0 else 3)
    assert ("compiled" in _step_kinds(m)) == (fill == 0)


def test_constant_zero_initial_states_layout_1():
    """Layout 1 (ONNX Runtime's CPU provider does not run it): a zero constant of shape
    (B, D, H) runs lean and gives the answers of the same node without initial states."""
    H = 4
    m = load_onnx(_const_state_model("LSTM", 0.0, state_batch=3, layout=1, D=2))
    plain = _const_state_model("LSTM", 0.0, state_batch=3, layout=1, D=2)
    plain.graph.node[-1].input[5:] = []
    del plain.graph.initializer[-1]
    p = load_onnx(plain)
    x = np.random.default_rng(5).standard_normal((3, 6, 3)).astype(np.float32)
    for _ in range(2):
        got, want = m.run(x), p.run(x)
        assert got["Y"].shape == (3, 6, 2, H) and got["Yh"].shape == (3, 2, H)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert "compiled" in _step_kinds(m)


@pytest.mark.parametrize("layout", [0, 1])
def test_constant_zero_initial_state_of_another_batch_is_still_an_error(layout):
    """A zero constant state of another batch size than X's is the error it always was
    (ONNX Runtime's too): in a first call, and in a kept program whose X changes batch
    within the same feeds' shapes (X sliced by a feed): the program's lean runner gives
    the node the constant state then, not an absent one."""
    model = _const_state_model("LSTM", 0.0, state_batch=2, layout=layout, sliced=True)
    x = np.random.default_rng(6).standard_normal((2, 3, 3) if layout else (5, 3, 3)
                                                 ).astype(np.float32)
    if layout == 0:
        with pytest.raises(Exception):
            _ort(model.SerializeToString(), {"x": x, "n": I64(1)})
        ref = _ort(model.SerializeToString(), {"x": x, "n": I64(2)})
    else:
        x = x[:, :3].copy()
    msg = r"initial_h must have shape \(1, 1, 4\)"      # ((B, D, H) for layout 1)
    fresh = load_onnx(model)
    with pytest.raises(ValueError, match=msg):
        fresh.run({"x": x, "n": I64(1)})                # (the first call: as before)
    m = load_onnx(model)
    for _ in range(2):
        got = m.run({"x": x, "n": I64(2)})
        if layout == 0:
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
    assert "compiled" in _step_kinds(m)
    with pytest.raises(ValueError, match=msg):           # (the kept program)
        m.run({"x": x, "n": I64(1)})
    # a constant of the wrong batch for the input fed: the first call's error, as before
    with pytest.raises(ValueError, match=r"initial_h must have shape"):
        load_onnx(_const_state_model("GRU", 0.0, state_batch=1, layout=layout)).run(
            np.zeros((3, 3, 3), np.float32))


# ------------------------------------------------ torch 2.13's dynamo exporter, live
_AUTO = object()


def _dynamo_export(net, x, dynamic=False, extra=(), **kw):
    """``torch.onnx.export(..., dynamo=True)`` of ``net`` on ``x`` (and tensors
    ``extra``) as bytes (the default since torch 2.9; without ``dynamic``, the export's
    shapes are fixed)."""
    import contextlib
    import logging
    if dynamic:
        A = torch.export.Dim.AUTO
        kw["dynamic_shapes"] = ({0: A, 1: A},)
    f = io.BytesIO()
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.from_numpy(x),) + tuple(extra), f, dynamo=True,
                              **kw)
    finally:
        logging.disable(level)
    return f.getvalue()


class _CellLoop(torch.nn.Module):
    """An LSTMCell run over 3 steps in Python (the dynamo exporter unrolls it; with
    ``optimize=False`` each step's gates come out of SplitToSequence / SequenceAt)."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTMCell(5, 6)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 6)
        c = x.new_zeros(x.shape[0], 6)
        for t in range(3):
            h, c = self.cell(x[:, t], (h, c))
        return h


# name: (module factory, example input shape, dynamic shapes, export keywords)
_DYNAMO_MODELS = {
    "lstm_bf_static": (lambda: torch.nn.LSTM(5, 6, batch_first=True), (2, 4, 5), False, {}),
    "gru_2l_bi_static": (lambda: torch.nn.GRU(5, 6, num_layers=2, bidirectional=True),
                         (4, 2, 5), False, {}),
    "lstm_2l_bi_bf_dyn": (lambda: torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True,
                                                batch_first=True), (2, 4, 5), True, {}),
    "gru_dyn": (lambda: torch.nn.GRU(5, 6), (4, 2, 5), True, {}),
    "rnn_bf_dyn": (lambda: torch.nn.RNN(5, 6, batch_first=True), (2, 3, 5), True, {}),
    "lstmcell_loop": (_CellLoop, (2, 3, 5), False, dict(optimize=False)),
}


@pytest.fixture(scope="module")
def dynamo_models():
    """Each model of _DYNAMO_MODELS exported once: {name: (module, bytes)}."""
    pytest.importorskip("onnxscript")
    out = {}
    for name, (factory, shape, dynamic, kw) in _DYNAMO_MODELS.items():
        torch.manual_seed(len(name))
        net = factory().eval()
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out[name] = net, _dynamo_export(net, x, dynamic, **kw)
    return out


def _torch_flat(net, x):
    with torch.no_grad():
        res = net(torch.from_numpy(x))
    flat = []
    stack = [res]
    while stack:
        v = stack.pop(0)
        if isinstance(v, (tuple, list)):
            stack[:0] = list(v)
        else:
            flat.append(v.numpy())
    return flat


def _check_dynamo(net, data, shapes):
    """Run ``data`` on inputs of each shape (each twice: the second call runs the kept
    program) against ONNX Runtime and PyTorch; the model."""
    m = load_onnx(data)
    rng = np.random.default_rng(len(data))
    for shape in shapes:
        for _ in range(2):
            x = rng.standard_normal(shape).astype(np.float32)
            ref = _ort(data, {m.input_names[0]: x})
            got = m.run(None, {m.input_names[0]: x})
            assert len(got) == len(ref)
            for g, r, t in zip(got, ref.values(), _torch_flat(net, x)):
                assert g.shape == r.shape == t.shape and g.dtype == r.dtype
                np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
                np.testing.assert_allclose(g, t, rtol=TOL, atol=TOL)
    return m


@pytest.mark.parametrize("name", ["lstm_bf_static", "gru_2l_bi_static", "lstm_2l_bi_bf_dyn",
                                  "gru_dyn"])
def test_dynamo_export_lstm_gru(dynamo_models, name):
    """torch 2.13's default exporter: one LSTM / GRU node a layer, Transposes for
    batch_first; static exports (zero initial states stored as initializers, fixed
    shapes) and dynamic ones: ONNX Runtime's and PyTorch's answers.  (B and T free for
    batch_first; time-major, torch 2.13 keeps the example's T in the Reshape after the
    node though the input declares it free: other lengths fail, or for some sizes give
    another shape, in ONNX Runtime as in fastrnn, so only B changes here.)"""
    net, data = dynamo_models[name]
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert ops & {"LSTM", "GRU"}
    shape = _DYNAMO_MODELS[name][1]
    if name.endswith("static"):
        shapes = [shape]
    elif "_bf" in name:
        shapes = [shape, (1, 1, 5), (3, 7, 5)]
    else:
        shapes = [shape, (shape[0], 1, 5), (shape[0], 3, 5)]
    _check_dynamo(net, data, shapes)


@pytest.mark.parametrize("name,kind", [("lstm_bf_static", "compiled"),
                                       ("gru_2l_bi_static", "_stack")])
def test_dynamo_static_export_runs_lean(dynamo_models, name, kind, monkeypatch):
    """The static export's zero initial states are initializers: its kept program still
    calls the layer's lean path (the 2-layer bidirectional GRU: both nodes as one
    layer), as the dynamic export's does, with no node run after the first call."""
    net, data = dynamo_models[name]
    g = onnx.load_from_string(data).graph
    rec = [n for n in g.node if n.op_type in ("LSTM", "GRU")]
    inits = {t.name for t in g.initializer}
    assert all(n.input[5] in inits for n in rec)        # (what this is about)
    runs = _count_node_runs(monkeypatch)
    m = _check_dynamo(net, data, [_DYNAMO_MODELS[name][1]])
    assert len(runs) == len(rec)                         # (the first call only)
    (prog,) = m._progs.values()         # (a step's "where": "node k OP 'name'")
    assert [k for k, s in zip(_step_kinds(m), prog.steps)
            if s[3].split()[2] in ("LSTM", "GRU")] == [kind]


@pytest.mark.parametrize("name", ["rnn_bf_dyn", "lstmcell_loop"])
def test_dynamo_export_unrolled_with_sequence_ops(dynamo_models, name):
    """The dynamo exporter has no RNN node: nn.RNN with dynamic shapes and an LSTMCell
    loop (optimize=False) come unrolled, their steps read through SplitToSequence /
    SequenceAt. fastrnn runs them op by op: ONNX Runtime's and PyTorch's answers (the
    batch is free; the unrolled time length is the example's)."""
    net, data = dynamo_models[name]
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert "SplitToSequence" in ops and "SequenceAt" in ops
    assert not {"RNN", "LSTM", "GRU"} & set(ops)
    shape = _DYNAMO_MODELS[name][1]
    shapes = [shape, (1,) + shape[1:], (4,) + shape[1:]] if name.endswith("dyn") else [shape]
    m = _check_dynamo(net, data, shapes)
    if name == "rnn_bf_dyn":            # (longer inputs: ONNX Runtime's first 3 steps)
        x = np.random.default_rng(1).standard_normal((2, 5, 5)).astype(np.float32)
        ref = _ort(data, {"input": x})
        got = m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)


# ------------------------------------- unrolled recurrences (nn.RNN from the dynamo exporter)
def _unrolled_steps(m):
    """The steps of a model's one kept program that run an unrolled recurrence as one
    layer call (_onnx_unrolled), and the op types of the rest."""
    (prog,) = m._progs.values()
    fused = [s for s in prog.steps if "(unrolled " in s[3]]
    return fused, [s[3].split()[2] for s in prog.steps if s not in fused]


def _op_by_op(data, feeds, monkeypatch):
    """``data`` run on ``feeds`` as the interpreter runs it, nothing fused."""
    from fastrnn.io import _onnx_unrolled
    with monkeypatch.context() as mp:
        mp.setattr(_onnx_unrolled, "fuse", lambda *a: ({}, set()))
        return load_onnx(data).run(feeds)


class _WithState(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h0):
        return self.rnn(x, h0)


# name: (nn.RNN keywords, input shape, dynamic shapes, an h0 input, dtype)
_UNROLLED = {
    "tanh_bf_static": (dict(batch_first=True), (3, 5, 4), False, False, np.float32),
    "relu_dyn": (dict(nonlinearity="relu"), (5, 3, 4), True, False, np.float32),
    "nobias_static": (dict(bias=False, batch_first=True), (2, 4, 4), False, False, np.float32),
    "2l_bi_static": (dict(num_layers=2, bidirectional=True), (5, 3, 4), False, False,
                     np.float32),
    "bi_bf_h0_dyn": (dict(bidirectional=True, batch_first=True), (3, 5, 4), True, True,
                     np.float32),
    "2l_float64_static": (dict(num_layers=2, batch_first=True), (1, 6, 4), False, False,
                          np.float64),
}


@pytest.mark.parametrize("name", list(_UNROLLED))
def test_dynamo_unrolled_rnn_runs_as_one_layer_call(name, monkeypatch):
    """torch's dynamo export of nn.RNN (no RNN node: each step a MatMul, Adds and a
    Tanh / Relu, the inputs read by Slice or SequenceAt, the reverse direction from a
    flipped projection, a zero initial state folded into a constant or computed from the
    shapes, or an h0 input): from the second call each layer and direction is one
    SimpleRNN call and no step's ops run (the first call runs op by op).  ONNX Runtime's
    and PyTorch's answers; pickled and run again; on one thread the same numbers."""
    import pickle
    kw, shape, dynamic, with_h0, dt = _UNROLLED[name]
    torch.manual_seed(len(name))
    rnn = torch.nn.RNN(4, 7, **kw).eval()
    if dt == np.float64:
        rnn = rnn.double()
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(dt)
    LD = rnn.num_layers * (2 if rnn.bidirectional else 1)
    B = shape[0] if kw.get("batch_first") else shape[1]
    args = [x] + ([rng.standard_normal((LD, B, 7)).astype(dt)] if with_h0 else [])
    net = _WithState(rnn) if with_h0 else rnn
    if with_h0:
        A = torch.export.Dim.AUTO
        data = _dynamo_export(net, x, extra=(torch.from_numpy(args[1]),),
                              dynamic_shapes=({0: A, 1: A}, {1: A}) if dynamic else None)
    else:
        data = _dynamo_export(net, x, dynamic)
    assert not {"RNN", "LSTM", "GRU"} & {n.op_type for n in onnx.load_from_string(data).graph.node}
    m = load_onnx(data)
    feeds = dict(zip(m.input_names, args))
    tol = TOL if dt == np.float32 else 1e-10
    with torch.no_grad():
        want_t = net(*[torch.from_numpy(a) for a in args])
    want_t = [want_t[0].numpy(), want_t[1].numpy()]
    for call in range(2):
        got = m.run(None, feeds)
        ref = _ort(data, feeds)
        for g, r, t in zip(got, ref.values(), want_t):
            assert g.dtype == r.dtype == dt and g.shape == r.shape == t.shape
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
            np.testing.assert_allclose(g, t, rtol=tol, atol=tol)
    fused, rest = _unrolled_steps(m)
    assert len(fused) == LD
    # (h0's Slices, one a direction, stay)
    assert not {"MatMul", "Tanh", "Relu", "SequenceAt", "Add"} & set(rest), rest
    assert with_h0 or "Slice" not in rest
    plain = _op_by_op(data, feeds, monkeypatch)
    for k, v in m.run(feeds).items():
        np.testing.assert_allclose(v, plain[k], rtol=tol, atol=tol)
    again = pickle.loads(pickle.dumps(m))
    for k, v in again.run(feeds, num_threads=1).items():
        np.testing.assert_allclose(v, plain[k], rtol=tol, atol=tol)
    assert len(_unrolled_steps(again)[0]) == LD


def test_dynamo_unrolled_rnn_first_call_of_zeros_and_longer_inputs():
    """What the first call's values are does not decide the fusing (it is checked on
    inputs of its own): zeros first, then random inputs; a longer input than the export's
    (dynamic shapes: its first steps, as ONNX Runtime) and another batch size run their
    own fused programs."""
    torch.manual_seed(3)
    data = _dynamo_export(torch.nn.RNN(4, 7, batch_first=True).eval(),
                          np.zeros((2, 3, 4), np.float32), True)
    m = load_onnx(data)
    rng = np.random.default_rng(5)
    for shape in [(2, 3, 4), (2, 3, 4), (1, 5, 4), (4, 3, 4)]:
        x = np.zeros(shape, np.float32) if not m._progs else \
            rng.standard_normal(shape).astype(np.float32)
        ref = _ort(data, {"input": x})
        got = m.run(x)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
    assert len(m._progs) == 3
    assert all(any("unrolled RNN" in s[3] for s in p.steps) for p in m._progs.values())


def _unrolled_graph(rows, act="Tanh", per_step_r=False, T=4, B=2, H=3, want_add=False):
    """A hand-written unrolled recurrence: P = X @ W + b (X (T, B, H)), step k reads
    P[rows[k]] (Slice + Squeeze) and makes h_k = act(h_{k-1} @ R_k + c + P[rows[k]])
    from a zero initializer h_0; outputs Concat(h_k) and, with ``want_add``, the last
    step's sum as a second output."""
    rng = np.random.default_rng(len(rows))
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5   # noqa: E731
    inits = [numpy_helper.from_array(f(H, H), "W"), numpy_helper.from_array(f(H), "b"),
             numpy_helper.from_array(f(H), "c"),
             numpy_helper.from_array(np.zeros((B, H), np.float32), "hinit"),
             numpy_helper.from_array(np.array([0], np.int64), "ax")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["P"])]
    R = f(H, H)
    h = "hinit"
    for k, r in enumerate(rows):
        Rk = f(H, H) if per_step_r else R
        inits += [numpy_helper.from_array(Rk, f"R{k}"),
                  numpy_helper.from_array(np.array([r], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([r + 1], np.int64), f"e{k}")]
        nodes += [helper.make_node("Slice", ["P", f"s{k}", f"e{k}", "ax"], [f"p{k}"]),
                  helper.make_node("Squeeze", [f"p{k}", "ax"], [f"x{k}"]),
                  helper.make_node("MatMul", [h, f"R{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", "c"], [f"a{k}"]),
                  helper.make_node("Add", [f"a{k}", f"x{k}"], [f"s_{k}"]),
                  helper.make_node(act, [f"s_{k}"], [f"h{k}"])]
        h = f"h{k}"
    nodes.append(helper.make_node("Concat", [f"h{k}" for k in range(len(rows))], ["y"],
                                  axis=0))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if want_add:
        outs.append(helper.make_tensor_value_info(f"s_{len(rows) - 1}", TensorProto.FLOAT,
                                                  None))
    g = helper.make_graph(nodes, "unrolled",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, H])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("rows,per_step_r,want_add,fused", [
    ([0, 1, 2, 3], False, False, 1),      # in order: one layer call
    ([3, 2, 1, 0], False, False, 1),      # backwards in time: one call on the reversed rows
    ([1, 2, 3], False, False, 1),         # a part of the input
    ([0, 2, 1, 3], False, False, 0),      # out of order: op by op
    ([0, 1, 2, 3], True, False, 0),       # another R each step: op by op
    ([0, 1, 2, 3], False, True, 0),       # a step's sum is an output: op by op
])
@pytest.mark.parametrize("act", ["Tanh", "Relu"])
def test_unrolled_recurrence_fused_only_where_it_is_one(rows, per_step_r, want_add, fused,
                                                        act):
    """Only a chain of steps with one weight, reading the projection's rows one after
    another, with nothing but its h read elsewhere, is run as one layer call; the rest
    runs op by op.  ONNX Runtime's answers either way."""
    data = _unrolled_graph(rows, act, per_step_r, want_add=want_add)
    m = load_onnx(data)
    x = np.random.default_rng(9).standard_normal((4, 2, 3)).astype(np.float32)
    _same_as_ort(m, data, {"x": x})
    assert len(_unrolled_steps(m)[0]) == fused


class _Loop(torch.nn.Module):
    """A torch cell run over the input's steps in Python, as a decoder or a custom
    encoder does: ``state`` "zero" (zeros made in forward), "h0" (h0 an input);
    ``feed`` "input" (step t reads x[:, t]) or "own" (step t > 0 reads a Linear of the
    previous h: autoregressive); returns the stacked h and the last state."""

    def __init__(self, cell, state="zero", feed="input", **kw):
        super().__init__()
        self.cell = getattr(torch.nn, cell)(4, 6, **kw)
        self.state, self.feed = state, feed
        self.back = torch.nn.Linear(6, 4)

    def forward(self, x, h0=None):
        h = x.new_zeros(x.shape[0], 6) if h0 is None else h0
        c = x.new_zeros(x.shape[0], 6)
        hs, inp = [], x[:, 0]
        for t in range(x.shape[1]):
            if isinstance(self.cell, torch.nn.LSTMCell):
                h, c = self.cell(inp, (h, c))
            else:
                h = self.cell(inp, h)
            hs.append(h)
            inp = self.back(h) if self.feed == "own" else x[:, min(t + 1, x.shape[1] - 1)]
        out = torch.stack(hs, 1)
        return (out, h, c) if isinstance(self.cell, torch.nn.LSTMCell) else (out, h)


@pytest.mark.parametrize("cell,kw,state,feed,optimize,fused", [
    ("LSTMCell", {}, "zero", "input", True, 1),
    ("LSTMCell", {}, "zero", "input", False, 1),
    ("GRUCell", {}, "zero", "input", True, 1),
    ("GRUCell", dict(bias=False), "h0", "input", False, 1),
    ("RNNCell", dict(nonlinearity="relu"), "zero", "input", True, 1),
    ("RNNCell", {}, "h0", "input", True, 1),
    ("GRUCell", {}, "zero", "own", True, -1),   # each step's input from the last h:
    ("LSTMCell", {}, "zero", "own", True, -1),  # fused step by step
    ("LSTMCell", {}, "zero", "own", False, -1),
])
def test_dynamo_unrolled_cell_loop_runs_as_one_layer_call(cell, kw, state, feed, optimize,
                                                          fused, monkeypatch):
    """A loop of LSTMCell / GRUCell / RNNCell steps over the input, written out by the
    dynamo exporter (each step a Gemm of the input, one of the state and torch's cell
    math; the first step's state Gemm folded where the state starts at zero, with
    ``optimize=True``): from the second call one LSTM / GRU / SimpleRNN call and no
    step's ops; an autoregressive loop (each step's input computed from the last h:
    ``fused`` -1) runs each step's cell ops as one step of the layer.  ONNX Runtime's
    and PyTorch's answers either way, the same as op by op, 2 steps and 5."""
    torch.manual_seed(7)
    net = _Loop(cell, state, feed, **kw).eval()
    rng = np.random.default_rng(11)
    for T in (2, 5):
        x = rng.standard_normal((3, T, 4)).astype(np.float32)
        args = [x] + ([rng.standard_normal((3, 6)).astype(np.float32)] if state == "h0" else [])
        data = _dynamo_export(net, x, extra=[torch.from_numpy(a) for a in args[1:]],
                              optimize=optimize)
        m = load_onnx(data)
        feeds = dict(zip(m.input_names, args))
        with torch.no_grad():
            want_t = [v.numpy() for v in net(*[torch.from_numpy(a) for a in args])]
        for call in range(2):
            got, ref = m.run(None, feeds), _ort(data, feeds)
            for g, r, t in zip(got, ref.values(), want_t):
                assert g.shape == r.shape == t.shape
                np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
                np.testing.assert_allclose(g, t, rtol=TOL, atol=TOL)
        steps, rest = _unrolled_steps(m)
        if fused < 0:       # (optimize=False: the first LSTM step's zero c is made from
            # x's shape, which the step does not take: that step stays ops)
            want = T - (cell == "LSTMCell" and not optimize)
            assert len(steps) == want and all(f"{cell} step" in st[3] for st in steps)
            assert want < T or not {"Sigmoid", "Tanh"} & set(rest), rest
        else:
            assert len(steps) == fused, rest
        if fused > 0:
            assert f"{cell} loop, {T} steps" in steps[0][3]
            assert not {"Gemm", "MatMul", "Sigmoid", "Tanh", "Relu"} & set(rest), rest
        plain = _op_by_op(data, feeds, monkeypatch)
        for k, v in m.run(feeds).items():
            np.testing.assert_allclose(v, plain[k], rtol=TOL, atol=TOL)


class _Decoder(torch.nn.Module):
    """A teacher-forced decoder: a cell over x[:, t], a Linear + softmax on each step's h
    (ops between the steps that read the fused loop's outputs)."""

    def __init__(self, cell):
        super().__init__()
        self.cell, self.out = getattr(torch.nn, cell)(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 6)
        ys = []
        for t in range(x.shape[1]):
            if isinstance(self.cell, torch.nn.LSTMCell):
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            ys.append(torch.softmax(self.out(h), -1))
        return torch.stack(ys, 1)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_dynamo_unrolled_decoder_with_a_head_on_each_step_is_fused(cell, monkeypatch):
    """The fused loop runs where its first op was, so a Linear on each step's h between
    the steps (which read its outputs before its last op) does not keep it op by op."""
    torch.manual_seed(4)
    x = np.random.default_rng(4).standard_normal((2, 5, 4)).astype(np.float32)
    net = _Decoder(cell).eval()
    data = _dynamo_export(net, x)
    m = load_onnx(data)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    for _ in range(2):
        got, ref = m.run({"x": x}), _ort(data, {"x": x})
        (k,) = ref
        np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(got[k], want, rtol=TOL, atol=TOL)
    fused, rest = _unrolled_steps(m)
    assert len(fused) == 1 and "Sigmoid" not in rest and "Tanh" not in rest, rest
    np.testing.assert_allclose(m.run({"x": x})[k], _op_by_op(data, {"x": x}, monkeypatch)[k],
                               rtol=TOL, atol=TOL)


def test_dynamo_unrolled_autoregressive_steps_take_the_calls_thread_count(monkeypatch):
    """A step-by-step fused loop runs each step on the call's num_threads= (where the
    model's load set none), as the recurrent nodes do."""
    import fastrnn.layers as fl
    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    data = _dynamo_export(_Loop("GRUCell", "zero", "own").eval(), x)
    seen = []
    real = fl.RNNBase._step_fast
    monkeypatch.setattr(fl.RNNBase, "_step_fast",
                        lambda self, *a: seen.append(a[3] if len(a) > 3 else None) or
                        real(self, *a))
    m = load_onnx(data)
    want = _ort(data, {"x": x})
    for n in (None, 1, 1, 2):
        seen.clear()
        got = m.run({"x": x}) if n is None else m.run({"x": x}, num_threads=n)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=TOL, atol=TOL)
        if m._progs and _unrolled_steps(m)[0] and n is not None:
            assert seen and set(seen) == {n}, seen
    assert len(_unrolled_steps(m)[0]) == 3
    pinned = load_onnx(data, num_threads=1)     # (the load's count: the layer's own)
    pinned.run({"x": x})
    seen.clear()
    pinned.run({"x": x}, num_threads=2)
    assert seen and set(seen) == {None}, seen


def test_dynamo_unrolled_lstm_cell_loop_from_a_given_cell_state_runs_op_by_op():
    """An LSTMCell loop from a c0 the caller gives is not fused (fastrnn's fused loops
    start from a zero cell state); it runs op by op, ONNX Runtime's answers."""

    class FromState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.LSTMCell(4, 6)

        def forward(self, x, c0):
            h, c = torch.zeros_like(c0), c0
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            return h, c

    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 4)).astype(np.float32)
    c0 = rng.standard_normal((2, 6)).astype(np.float32)
    data = _dynamo_export(FromState().eval(), x, extra=[torch.from_numpy(c0)])
    m = load_onnx(data)
    _same_as_ort(m, data, dict(zip(m.input_names, [x, c0])))
    assert not _unrolled_steps(m)[0]


class _ClippedLoop(torch.nn.Module):
    """A cell loop with a Clip in each step, which torch's cells do not have: a ReLU6
    RNNCell (the exporter writes Relu + clamp as one Clip(0, 6)) or an LSTMCell whose
    cell state is clipped to [-3, 3] after each step."""

    def __init__(self, cell):
        super().__init__()
        self.cell = torch.nn.RNNCell(4, 6, nonlinearity="relu") if cell == "RNNCell" \
            else torch.nn.LSTMCell(4, 6)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 6)
        for t in range(x.shape[1]):
            if isinstance(self.cell, torch.nn.LSTMCell):
                h, c = self.cell(x[:, t], (h, c))
                c = c.clamp(-3.0, 3.0)
            else:
                h = self.cell(x[:, t], h).clamp(max=6.0)
        return h, c


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell"])
def test_dynamo_unrolled_cell_loop_with_a_clip_runs_op_by_op(cell):
    """A Clip (or any op but those of torch's cells) in a cell loop's steps is not fused:
    on the random inputs the fusing is checked on, a ReLU6 RNNCell's values stay below 6
    and a clipped LSTM cell state inside [-3, 3], so the checks passed and larger inputs
    got the unclipped cell's answer (off by ~37 for the ReLU6 loop).  ONNX Runtime's."""
    torch.manual_seed(0)
    net = _ClippedLoop(cell).eval()
    if cell == "LSTMCell":
        with torch.no_grad():
            net.cell.bias_ih[6:12] += 3.0        # (a forget gate near 1: c grows)
    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
    data = _dynamo_export(net, x)
    m = load_onnx(data)
    for feed in (x, x, 30 * x):
        got, ref = m.run(None, {m.input_names[0]: feed}), _ort(data, {m.input_names[0]: feed})
        for g, r in zip(got, ref.values()):
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
    assert not _unrolled_steps(m)[0]


def _cell_loop_graph(T=3, B=2, I=3, H=4, log=False, step="tanh", scale=1.0):
    """A hand-written RNNCell loop as the dynamo exporter writes one: step t reads x[:, t]
    (Gather), h_t = tanh(Gemm(x_t, W, b) + Gemm(h_{t-1}, R, c)), h_0 zeros; ``step``
    "relu": Relu for the tanh, "half": h_t = that * 0.5, "linear": without the tanh; W,
    b, c times ``scale``.
    Outputs the last h and, with ``log``, Log of a second input ``s`` (positive in
    use)."""
    rng = np.random.default_rng(4)
    f = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)   # noqa: E731
    inits = [numpy_helper.from_array(f(H, I) * scale, "W"),
             numpy_helper.from_array(f(H) * scale, "b"), numpy_helper.from_array(f(H, H), "R"),
             numpy_helper.from_array(f(H) * scale, "c"),
             numpy_helper.from_array(np.zeros((B, H), np.float32), "hz"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes, h = [], "hz"
    for t in range(T):
        inits.append(numpy_helper.from_array(np.array(t, np.int64), f"t{t}"))
        nodes += [helper.make_node("Gather", ["x", f"t{t}"], [f"x{t}"], axis=1),
                  helper.make_node("Gemm", [f"x{t}", "W", "b"], [f"gx{t}"], transB=1),
                  helper.make_node("Gemm", [h, "R", "c"], [f"gh{t}"], transB=1),
                  helper.make_node("Add", [f"gx{t}", f"gh{t}"],
                                   [f"h{t}" if step == "linear" else f"a{t}"])]
        if step == "half":
            nodes += [helper.make_node("Tanh", [f"a{t}"], [f"th{t}"]),
                      helper.make_node("Mul", [f"th{t}", "half"], [f"h{t}"])]
        elif step != "linear":
            nodes.append(helper.make_node(step.capitalize(), [f"a{t}"], [f"h{t}"]))
        h = f"h{t}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, I])]
    outputs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)]
    if log:
        nodes.append(helper.make_node("Log", ["s"], ["log_s"]))
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [B, H]))
        outputs.append(helper.make_tensor_value_info("log_s", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "cells", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("step,fused", [("tanh", 1), ("relu", 1), ("half", 0), ("linear", 0)])
def test_unrolled_cell_loop_of_small_weights_fused_only_where_it_is_one(step, fused):
    """A model of raw inputs of ~1e5 has weights of ~1e-5: on the unit random inputs the
    fusing is checked on its values are ~1e-5, which the checks took as equal to
    anything within 1e-4, and where tanh is the identity: a step times 0.5 and one
    without the tanh were fused as an RNNCell, and the tanh RNNCell itself with the sum
    before its last tanh taken for its last h (each off by ~0.4 on the model's inputs);
    a relu RNNCell was taken for a tanh one (then not fused).  Now the RNNCell loops
    are fused, right, and the others not.  ONNX Runtime's answers."""
    data = _cell_loop_graph(T=4, step=step, scale=1e-5)
    m = load_onnx(data)
    x = (np.random.default_rng(5).standard_normal((2, 4, 3)) * 1e5).astype(np.float32)
    _same_as_ort(m, data, {"x": x})
    assert len(_unrolled_steps(m)[0]) == fused


def test_unrolled_cell_loop_checks_do_not_warn():
    """Finding a cell loop runs the graph on random inputs, where a Log of an input that
    is positive in use gives NaNs: that warned the caller ("invalid value encountered in
    log") on a call whose own values are fine, and with warnings as errors the loop was
    not fused.  Neither now; ONNX Runtime's answers."""
    data = _cell_loop_graph(log=True)
    rng = np.random.default_rng(6)
    feeds = {"x": rng.standard_normal((2, 3, 3)).astype(np.float32),
             "s": rng.uniform(1, 2, (2, 4)).astype(np.float32)}
    ref = _ort(data, feeds)
    for how in ("always", "error"):
        m = load_onnx(data)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter(how)
            for _ in range(2):
                got = m.run(feeds)
        assert not seen, [str(w.message) for w in seen]
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)
        assert len(_unrolled_steps(m)[0]) == 1


def _bias_free_rnn(T=4, B=2, H=3):
    """A hand-written unrolled RNN without biases whose first step from a zero state is
    just ``tanh(P[0])`` (no Add, no MatMul: as an optimizer leaves ``0 @ R + 0 +
    P[0]``): (nodes, initializers) reading input ``x`` (T, B, H), making ``y``."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array((rng.standard_normal((H, H)) * 0.5).astype(np.float32), n)
             for n in ("W", "R")] + [numpy_helper.from_array(np.array([0], np.int64), "ax")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["P"])]
    for k in range(T):
        inits += [numpy_helper.from_array(np.array([k], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([k + 1], np.int64), f"e{k}")]
        nodes += [helper.make_node("Slice", ["P", f"s{k}", f"e{k}", "ax"], [f"p{k}"]),
                  helper.make_node("Squeeze", [f"p{k}", "ax"], [f"x{k}"])]
        if k:
            nodes += [helper.make_node("MatMul", [f"h{k - 1}", "R"], [f"m{k}"]),
                      helper.make_node("Add", [f"m{k}", f"x{k}"], [f"x{k}_"])]
        nodes.append(helper.make_node("Tanh", [f"x{k}_" if k else "x0"], [f"h{k}"]))
    nodes.append(helper.make_node("Concat", [f"h{k}" for k in range(T)], ["y"], axis=0))
    return nodes, inits


@pytest.mark.parametrize("adds", [0, 3000])
def test_unrolled_rnn_first_step_without_bias_and_a_long_chain_of_adds(adds):
    """An unrolled RNN without biases starting at ``tanh(P[0])`` (_bias_free_rnn) crashed
    every call with an IndexError while fusing; and with a Tanh after a chain of 3000
    Adds (a long running sum of another input, a valid graph) every call raised
    RecursionError (the Add tree was flattened recursively).  Now the RNN is fused, and
    ONNX Runtime's answers."""
    T, B, H = 4, 2, 3
    nodes, inits = _bias_free_rnn(T, B, H)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, H])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if adds:
        prev = "z"
        for k in range(adds):
            nodes.append(helper.make_node("Add", [prev, "eps"], [f"sum{k}"]))
            prev = f"sum{k}"
        nodes.append(helper.make_node("Tanh", [prev], ["tz"]))
        inits.append(numpy_helper.from_array(np.array(1e-4, np.float32), "eps"))
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]))
        outputs.append(helper.make_tensor_value_info("tz", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "nobias", inputs, outputs, inits)
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    m = load_onnx(data)
    rng = np.random.default_rng(9)
    feeds = {"x": rng.standard_normal((T, B, H)).astype(np.float32)}
    if adds:
        feeds["z"] = rng.standard_normal((2, 3)).astype(np.float32)
    _same_as_ort(m, data, feeds)
    assert len(_unrolled_steps(m)[0]) == 1


# ------------------------------------------------------------------ sequence ops
def _seq_model(x, split=None, positions=(0,), attrs=None, feed_split=False, const_x=False,
               opset=17):
    """x -> SplitToSequence(x, split) -> SequenceAt at each of ``positions`` (outputs
    y0, y1, ...): x a feed (or ``const_x`` an initializer), split an initializer (or
    ``feed_split`` a feed), positions initializers."""
    inputs, inits, feeds = [], [], {}
    x = np.asarray(x)
    if const_x:
        inits.append(numpy_helper.from_array(x, "x"))
    else:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
        feeds["x"] = x
    ins = ["x"]
    if split is not None:
        split = np.asarray(split)
        ins.append("split")
        if feed_split:
            inputs.append(helper.make_tensor_value_info(
                "split", helper.np_dtype_to_tensor_dtype(split.dtype), None))
            feeds["split"] = split
        else:
            inits.append(numpy_helper.from_array(split, "split"))
    nodes = [helper.make_node("SplitToSequence", ins, ["q"], **(attrs or {}))]
    outs = []
    for k, p in enumerate(positions):
        inits.append(numpy_helper.from_array(np.asarray(p), f"p{k}"))
        nodes.append(helper.make_node("SequenceAt", ["q", f"p{k}"], [f"y{k}"]))
        outs.append(f"y{k}")
    g = helper.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name=o) for o in outs],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), feeds


_X1 = np.arange(5, dtype=np.float32)
SEQ_CASES = [   # (x, split, attrs, positions)
    (X234, None, {}, (0, 1, -1, -2)),
    (X234, None, dict(axis=-1, keepdims=0), (0, 2, -1, -4)),
    (X234, None, dict(axis=1, keepdims=1), (1, -3)),
    (X234, None, dict(axis=-3, keepdims=0), (-1,)),
    (X234, I64(1, 3), dict(axis=2), (0, -1)),
    (X234, I64(1, 0, 3), dict(axis=-1), (0, 1, 2)),         # an empty part
    (X234, np.array(3, np.int64), dict(axis=2), (0, -1)),   # uneven: 3 then 1
    (X234, np.array(5, np.int64), dict(axis=2), (0,)),      # larger than the axis
    (X234, np.array(2, np.int32), dict(axis=1), (0, 1)),
    (X234, np.array([2, 2], np.int32), dict(axis=2, keepdims=0), (1,)),  # (kept)
    (X234, I64(3), dict(axis=1), (0,)),
    (_X1, None, dict(keepdims=0), (0, -1)),                 # rank 1: scalars
    (np.zeros((2, 0, 3), np.float32), None, dict(axis=2, keepdims=0), (1,)),
]


@pytest.mark.parametrize("case", SEQ_CASES, ids=[f"seq{k}" for k in range(len(SEQ_CASES))])
def test_sequence_ops_match_ort(case):
    """SplitToSequence (axis, negative axis, keepdims, a 'split' scalar or list, a feed
    or a constant) and SequenceAt (negative positions): ONNX Runtime's answers, in the
    first call and the kept program; all constant: folded at load, the same values."""
    x, split, attrs, positions = case
    for feed_split in ([False, True] if split is not None else [False]):
        model, feeds = _seq_model(x, split, positions, attrs, feed_split)
        ref = _ort(model.SerializeToString(), feeds)
        m = load_onnx(model)
        for _ in range(2):
            got = m.run(feeds)
            for k in ref:
                assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype, k
                np.testing.assert_array_equal(got[k], ref[k])
                assert got[k].flags.writeable and not np.shares_memory(got[k], x)
    model, _ = _seq_model(x, split, positions, attrs, const_x=True)
    m = load_onnx(model)
    assert not m._steps
    got = m.run({})
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_split_to_sequence_split_ignores_keepdims_as_the_spec_says():
    """With a 'split' input keepdims is ignored (the ONNX specification and onnx's
    reference implementation; ONNX Runtime 1.x drops the axis for a scalar split of 1
    and fails for larger scalars)."""
    from onnx.reference import ReferenceEvaluator
    for split in (np.array(1, np.int64), np.array(2, np.int64), I64(1, 3)):
        model, feeds = _seq_model(X234, split, (0, -1), dict(axis=2, keepdims=0))
        ref = ReferenceEvaluator(model).run(None, feeds)
        got = load_onnx(model).run(None, feeds)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and g.shape[2] >= 1
            np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("split,attrs,pos,err,match", [
    (None, dict(axis=1), 3, IndexError, r"position 3 out of range \[-3, 2\]"),
    (None, dict(axis=1), -4, IndexError, r"position -4 out of range"),
    (None, dict(axis=3), 0, ValueError, r"axis 3 out of range \[-3, 2\]"),
    (I64(1, 2), dict(axis=2), 0, ValueError, r"'split' \[1, 2\] must be sizes >= 0 summing"),
    (I64(-1, 5), dict(axis=2), 0, ValueError, r"'split' \[-1, 5\] must be sizes >= 0"),
    (np.array(0, np.int64), dict(axis=2), 0, ValueError, r"'split' must be positive, got 0"),
])
def test_sequence_op_errors(split, attrs, pos, err, match):
    """Positions, axes and split sizes out of range are errors naming the node, as
    ONNX Runtime's are; all constant: refused at load."""
    model, feeds = _seq_model(X234, split, (pos,), attrs)
    with pytest.raises(Exception):
        _ort(model.SerializeToString(), feeds)
    with pytest.raises(err, match=r"^g: node \d (SplitToSequence|SequenceAt) '': \1: " + match):
        load_onnx(model).run(feeds)
    with pytest.raises(LoadError, match=match):
        load_onnx(_seq_model(X234, split, (pos,), attrs, const_x=True)[0])


def test_sequences_are_checked_at_load():
    """A sequence is read only by SequenceAt (or Identity); a graph output that is one,
    a tensor op reading one, a SequenceAt reading a tensor are LoadErrors naming the
    node; asking run() for a sequence by name is a ValueError."""
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    p = numpy_helper.from_array(np.array(0, np.int64), "p")
    split = helper.make_node("SplitToSequence", ["x"], ["q"])
    ok = [split, helper.make_node("Identity", ["q"], ["q2"]),
          helper.make_node("SequenceAt", ["q2", "p"], ["y"])]
    m = load_onnx(_graph(ok, [X], ["y"], [p], opset=17))
    np.testing.assert_array_equal(m.predict(X234), X234[:1])
    with pytest.raises(ValueError, match=r"\['q'\] are sequences"):
        m.run(X234, outputs=["q"])
    for nodes, outs, match in [
            ([split], ["q"], r"graph output\(s\) \['q'\] are sequences"),
            (ok[:2], ["q2"], r"graph output\(s\) \['q2'\] are sequences"),
            ([split, helper.make_node("Add", ["q", "x"], ["y"])], ["y"],
             r"node 1 Add '': input 0 'q' is a sequence, but Add takes a tensor"),
            ([helper.make_node("SequenceAt", ["x", "p"], ["y"])], ["y"],
             r"node 0 SequenceAt '': input 0 'x' is a tensor, but SequenceAt takes a sequence"),
            ([split, helper.make_node("SequenceAt", ["q", "q"], ["y"])], ["y"],
             r"input 1 'q' is a sequence, but SequenceAt takes a tensor"),
            ([split, helper.make_node("SplitToSequence", ["q"], ["r"]),
              helper.make_node("SequenceAt", ["r", "p"], ["y"])], ["y"], "is a sequence")]:
        with pytest.raises(LoadError, match=match):
            load_onnx(_graph(nodes, [X], outs, [p], opset=17))


def test_sequences_kept_by_the_model_are_read_only():
    """Sequences the model keeps (folded at load from constants, or following from the
    feeds' shapes, kept by a program) hold read-only arrays, not views of the file's
    bytes: what SequenceAt returns of them is the caller's own copy."""
    from fastrnn.io import onnx as fo
    c = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "c")
    p = numpy_helper.from_array(np.array(-1, np.int64), "p")
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B"])
    nodes = [helper.make_node("SplitToSequence", ["c"], ["q"], keepdims=0),
             helper.make_node("SequenceAt", ["q", "p"], ["last"]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("SplitToSequence", ["s"], ["qs"]),
             helper.make_node("SequenceAt", ["qs", "p"], ["b"]),
             helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "bf"], ["y"])]
    m = load_onnx(_graph(nodes, [X], ["last", "b", "y"], [c, p], opset=17))
    # (q, read only by a step folded at load, is not kept; what it made is, read-only)
    assert not isinstance(m._consts["q"], (list, np.ndarray))
    last = m._consts["last"]
    assert not last.flags.writeable and not fo._views_file(last)
    assert {"s", "qs", "b", "bf"} <= m._shaped
    x = np.ones((2, 3), np.float32)
    for _ in range(3):
        got = m.run(x)
        np.testing.assert_array_equal(got["last"], [4, 5])
        np.testing.assert_array_equal(got["b"], [3])
        np.testing.assert_array_equal(got["y"], 3 * x)
        for v in got.values():
            assert v.flags.writeable
            v[...] = 7                  # (never seen by the next call)
    (prog,) = m._progs.values()
    assert all(not a.flags.writeable for a in prog.base["qs"])


def test_sequence_load_time_folding_is_bounded(monkeypatch):
    """Load-time folding counts a sequence's parts against its bound as any value's:
    a SplitToSequence of a constant is refused where its parts would pass it."""
    import fastrnn.io.onnx as fo
    monkeypatch.setattr(fo, "_FOLD_ELEMENTS", 1000)
    p = np.array(0, np.int64)

    def nodes(k):
        return [helper.make_node("ConstantOfShape", ["n"], ["c"])] + [
            helper.make_node("SplitToSequence", ["c"], [f"q{j}"], keepdims=0)
            for j in range(k)] + [helper.make_node("SequenceAt", ["q0", "p"], ["big"])]
    load_onnx(_folding_model(nodes(1), {"n": np.array([400], np.int64), "p": p}))
    with pytest.raises(LoadError, match=r"node 2 SplitToSequence '': its constant output "
                                        r"would have 600 elements, more than the 400 left"):
        load_onnx(_folding_model(nodes(1), {"n": np.array([600], np.int64), "p": p}))
    with pytest.raises(LoadError, match=r"node 3 SplitToSequence '': .* 400 elements, "
                                        r"more than the 200 left"):
        load_onnx(_folding_model(nodes(2), {"n": np.array([400], np.int64), "p": p}))


def _revseq_model(lens_const=None, opset=17, **attrs):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    inits = []
    if lens_const is None:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT64, None))
    else:
        inits.append(numpy_helper.from_array(np.asarray(lens_const, np.int64), "L"))
    g = helper.make_graph([helper.make_node("ReverseSequence", ["x", "L"], ["y"], **attrs)],
                          "g", inputs, [onnx.ValueInfoProto(name="y")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


_X523 = np.arange(30, dtype=np.float32).reshape(5, 2, 3)
REVSEQ_CASES = [    # (x, lens, attrs)
    (_X523, [3, 5], {}),
    (_X523, [0, 1], dict(batch_axis=1, time_axis=0)),
    (_X523.transpose(1, 0, 2).copy(), [5, 2], dict(batch_axis=0, time_axis=1)),
    (_X523[:, :, 0].copy(), [2, 4], {}),
    (_X523.reshape(2, 5, 3, 1), [1, 4], dict(batch_axis=0, time_axis=1)),
    (np.zeros((0, 2, 3), np.float32), [0, 0], {}),
]


@pytest.mark.parametrize("case", REVSEQ_CASES, ids=[f"rev{k}" for k in range(len(REVSEQ_CASES))])
def test_reverse_sequence_matches_ort(case):
    """ReverseSequence (time / batch axes either way, ranks 2-4, lengths 0 to T, lengths
    fed or constant, no time steps): ONNX Runtime's answers, in the kept program too
    with other lengths of the same shape."""
    x, lens, attrs = case
    lens = np.array(lens, np.int64)
    model = _revseq_model(**attrs)
    m = load_onnx(model)
    T = x.shape[attrs.get("time_axis", 0)]
    for L in (lens, lens, np.minimum(lens[::-1], T), np.full_like(lens, T)):
        feeds = {"x": x, "L": L}
        ref, got = _ort(model.SerializeToString(), feeds), m.run(feeds)
        assert got["y"].shape == ref["y"].shape and got["y"].dtype == ref["y"].dtype
        np.testing.assert_array_equal(got["y"], ref["y"])
        assert not np.shares_memory(got["y"], x)
    got = load_onnx(_revseq_model(lens, **attrs)).run({"x": x})
    np.testing.assert_array_equal(got["y"], _ort(model.SerializeToString(),
                                                 {"x": x, "L": lens})["y"])


@pytest.mark.parametrize("lens,attrs,match", [
    ([6, 1], {}, r"sequence_lens must be in \[0, 5\], got \[6, 1\]"),
    ([-1, 1], {}, r"sequence_lens must be in \[0, 5\]"),
    ([1, 1, 1], {}, r"sequence_lens must be integers of shape \(2,\)"),
    ([1, 1], dict(batch_axis=1, time_axis=1), "batch_axis and time_axis must be 0 and 1"),
    ([1, 1, 1], dict(batch_axis=2, time_axis=0), "batch_axis and time_axis must be 0 and 1"),
])
def test_reverse_sequence_errors(lens, attrs, match):
    """Lengths out of [0, T] or of the wrong shape and axes other than 0 and 1 are
    errors naming the node (ONNX Runtime refuses them too)."""
    model = _revseq_model(**attrs)
    feeds = {"x": _X523, "L": np.array(lens, np.int64)}
    with pytest.raises(Exception):
        _ort(model.SerializeToString(), feeds)
    with pytest.raises(ValueError, match=r"^g: node 0 ReverseSequence '': ReverseSequence: "
                                         + match):
        load_onnx(model).run(feeds)


def test_keras_go_backwards_lstm_from_tf2onnx():
    """tests/fixtures/onnx/keras_lstm_go_backwards.onnx: Keras 3.15 (TensorFlow 2.21)
    ``Sequential([Input((None, 8)), LSTM(16, go_backwards=True, return_sequences=True)])``
    converted by tf2onnx 1.17 (``tf2onnx.convert.from_keras(model, input_signature=
    (tf.TensorSpec((None, None, 8), tf.float32, name="x"),), opset=17)``): a
    ReverseSequence (lengths from the input's shape) into an LSTM node. Its .npz holds
    inputs of shapes (3, 7, 8) ("in:x") and (1, 1, 8) ("in2:x"), ONNX Runtime 1.32's
    outputs ("ort:", "ort2:") and Keras's ("keras:0", "keras2:0")."""
    path = os.path.join(FIX, "keras_lstm_go_backwards.onnx")
    d = np.load(path[:-5] + ".npz")
    m = load_onnx(path)
    assert "ReverseSequence" in [s[1][1] for s in m._steps if s[0] == "op"]
    with open(path, "rb") as f:
        data = f.read()
    for pre, k in (("", "keras:0"), ("2", "keras2:0")):
        x = d[f"in{pre}:x"]
        for _ in range(2):
            got = m.run({"x": x})
            np.testing.assert_allclose(got["Identity:0"], d[f"ort{pre}:Identity:0"],
                                       rtol=TOL, atol=TOL)
            np.testing.assert_allclose(got["Identity:0"], d[k], rtol=TOL, atol=TOL)
    x = np.random.default_rng(8).standard_normal((2, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), _ort(data, {"x": x})["Identity:0"],
                               rtol=TOL, atol=TOL)


def test_shape_of_a_sequence_part_follows_split_and_position_values():
    """The shape of a SequenceAt's result depends on the values of its position and of
    the SplitToSequence's 'split' (not only on the feeds' shapes): a Shape of it is
    computed in every call, not kept per feeds' shapes (q1: split fed, position
    constant; q2: split constant, position fed)."""
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B"])
    S = helper.make_tensor_value_info("split", TensorProto.INT64, [2])
    P = helper.make_tensor_value_info("p", TensorProto.INT64, [])
    inits = [numpy_helper.from_array(I64(1, 2), "split12"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes = [helper.make_node("SplitToSequence", ["x", "split"], ["q1"]),
             helper.make_node("SequenceAt", ["q1", "zero"], ["part1"]),
             helper.make_node("Shape", ["part1"], ["s1"]),
             helper.make_node("SplitToSequence", ["x", "split12"], ["q2"]),
             helper.make_node("SequenceAt", ["q2", "p"], ["part2"]),
             helper.make_node("Shape", ["part2"], ["s2"])]
    model = _graph(nodes, [X, S, P], ["s1", "part1", "s2", "part2"], inits, opset=17)
    m = load_onnx(model)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    for split, p in ((I64(1, 2), 0), (I64(1, 2), 0), (I64(1, 2), 1), (I64(2, 1), 0),
                     (I64(2, 1), -1)):
        feeds = {"x": x, "split": split, "p": np.array(p, np.int64)}
        ref, got = _ort(model, feeds), m.run(feeds)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    assert len(m._progs) == 1


def test_constant_zero_initial_state_listed_as_input_is_not_absent():
    """A zero initial state that is an initializer listed among the graph's inputs (an
    override a feed may replace) is not run as absent: a fed state is used, every call
    (ONNX Runtime's answers); without the feed the zeros are."""
    model = _const_state_model("GRU", 0.0, state_batch=2)
    model.graph.input.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 2, 4]))
    data = model.SerializeToString()
    m = load_onnx(data)
    assert m.input_names == ["x"]
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    for feeds in ({"x": x}, {"x": x}, {"x": x, "h0": np.ones((1, 2, 4), np.float32)},
                  {"x": x, "h0": np.ones((1, 2, 4), np.float32)},
                  {"x": x, "h0": rng.standard_normal((1, 2, 4)).astype(np.float32)}):
        ref, got = _ort(data, feeds), m.run(feeds)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=TOL, atol=TOL)


def _graph_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return load_onnx(m.SerializeToString())


def test_models_with_closure_ops_pickle():
    """A model with Add / Tanh / ReduceMean... steps pickles (their functions are
    closures: "Can't pickle local object '_binary.<locals>.op'"); the copy computes the
    same."""
    import pickle
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["y"], keepdims=0)]
    m = _graph_model(nodes, [helper.make_tensor_value_info("x", f, [2, 3])],
                     [helper.make_tensor_value_info("y", f, None)],
                     [numpy_helper.from_array(np.arange(3, dtype=np.float32), "b")])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = m.predict(x)
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.predict(x), want)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again)).predict(x), want)


def test_results_never_share_memory_with_each_other():
    """Two outputs, one a view of the other (y and Squeeze / Slice of y): each is the
    caller's own array, as ONNX Runtime's (writing into one changed the other)."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Tanh", ["x"], ["y"]),
             helper.make_node("Squeeze", ["y", "ax"], ["sq"])]
    m = _graph_model(nodes, [helper.make_tensor_value_info("x", f, [1, 3])],
                     [helper.make_tensor_value_info("y", f, None),
                      helper.make_tensor_value_info("sq", f, None)],
                     [numpy_helper.from_array(np.array([0], np.int64), "ax")])
    x = np.ones((1, 3), np.float32)
    for _ in range(2):                  # (the first call and the kept program)
        res = m.run({"x": x})
        assert not np.shares_memory(res["y"], res["sq"])
        res["y"][...] = 0
        np.testing.assert_allclose(res["sq"], np.tanh(1.0), rtol=1e-6)


def test_dynamo_export_holds_its_weights_once(tmp_path):
    """torch's default exporter slices and concatenates the weights into W / R / B,
    folded at load: the raw initializers and the intermediate results were all kept
    (a model held 4x its weights); now only what a node reads is."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = torch.nn.LSTM(64, 128, num_layers=2).eval()
    path = str(tmp_path / "d.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(net, (torch.zeros(5, 2, 64),), path, dynamo=True, verbose=False)
        finally:
            logging.disable(logging.NOTSET)
    weights = sum(p.numel() * 4 for p in net.parameters())
    m, held, _ = allocations(lambda: load_onnx(path))
    assert held < 1.3 * weights, (held, weights)
    x = np.random.default_rng(0).standard_normal((5, 2, 64)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(m.run({m.input_names[0]: x})[m.output_names[0]], ref,
                               rtol=1e-5, atol=1e-5)


def test_two_unrolled_recurrences_fused_before_the_same_step():
    """Two recurrences whose shared initial state is made after both projections: both
    fused steps run before the step after it (one slot for both kept only the last,
    and the first one's outputs were never made)."""
    T, B, H = 4, 2, 3
    rng = np.random.default_rng(8)
    f = lambda *sh: numpy_helper.from_array(                            # noqa: E731
        (rng.standard_normal(sh) * 0.5).astype(np.float32), f"w{rng.integers(1 << 30)}")
    inits, nodes, outs = [numpy_helper.from_array(np.array([0], np.int64), "ax")], [], []
    for r in "ab":
        W, b, R = f(H, H), f(H), f(H, H)
        inits += [W, b, R]
        nodes += [helper.make_node("MatMul", ["x", W.name], [f"{r}xw"]),
                  helper.make_node("Add", [f"{r}xw", b.name], [f"{r}P"])]
    nodes.append(helper.make_node("Tanh", ["hin"], ["h0"]))     # (after both projections)
    for r in "ab":
        R = inits[3 if r == "a" else 6].name
        h = "h0"
        for k in range(T):
            inits += [numpy_helper.from_array(np.array([k], np.int64), f"{r}s{k}"),
                      numpy_helper.from_array(np.array([k + 1], np.int64), f"{r}e{k}")]
            nodes += [helper.make_node("Slice", [f"{r}P", f"{r}s{k}", f"{r}e{k}", "ax"],
                                       [f"{r}p{k}"]),
                      helper.make_node("Squeeze", [f"{r}p{k}", "ax"], [f"{r}x{k}"]),
                      helper.make_node("MatMul", [h, R], [f"{r}m{k}"]),
                      helper.make_node("Add", [f"{r}m{k}", f"{r}x{k}"], [f"{r}a{k}"]),
                      helper.make_node("Tanh", [f"{r}a{k}"], [f"{r}h{k}"])]
            h = f"{r}h{k}"
        outs.append(helper.make_tensor_value_info(h, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "two", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, H]),
        helper.make_tensor_value_info("hin", TensorProto.FLOAT, [B, H])], outs, inits)
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    m = load_onnx(data)
    feeds = {"x": rng.standard_normal((T, B, H)).astype(np.float32),
             "hin": rng.standard_normal((B, H)).astype(np.float32)}
    _same_as_ort(m, data, feeds)
    assert len(_unrolled_steps(m)[0]) == 2


def test_node_errors_name_the_node_once():
    """A recurrent node's own error (an initial state of the wrong batch, X of the
    wrong rank) names the model and the node once (it named the node twice)."""
    H, I = 3, 2
    inits = [numpy_helper.from_array(np.ones((1, H, I), np.float32), "W"),
             numpy_helper.from_array(np.ones((1, H, H), np.float32), "R")]
    node = helper.make_node("RNN", ["x", "W", "R", "", "", "h0"], ["y", "hn"], hidden_size=H)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                        helper.make_tensor_value_info("h0", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("hn", TensorProto.FLOAT, None)], inits)
    m = load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]))
    for x, h0, what in [((4, 2, I), (1, 3, H), "initial_h must have shape"),
                        ((4, 2), (1, 2, H), "X must be 3-D")]:
        with pytest.raises(ValueError) as e:
            m.run({"x": np.ones(x, np.float32), "h0": np.ones(h0, np.float32)})
        msg = str(e.value)
        assert msg.startswith("g: node 0 RNN ''") and what in msg
        assert msg.count("node 0 RNN") == 1, msg


# ----------------------------------------- found by an audit of kept programs (stop 43)
class _BigUnitLoop(torch.nn.Module):
    """A relu RNNCell loop whose unit 0 runs at ~1e4 (its bias), with ``h + 0.2`` after
    each step: the extra op is small against the big unit, not against the others."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.RNNCell(3, 4, nonlinearity="relu")
        with torch.no_grad():
            self.cell.bias_ih[0] = 1e4
            self.cell.weight_hh.mul_(0.1)

    def forward(self, x):
        h, outs = x.new_zeros(x.shape[1], 4), []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h) + 0.2
            outs.append(h)
        return torch.stack(outs)


def test_fused_loop_check_is_per_unit():
    """The fusing check's tolerance is per unit (hidden column): a unit of ~1e4 made the
    old check (relative to the largest value) fuse the loop and drop the ``+ 0.2``, off
    by 0.2 on the other units from the second call.  Now it runs op by op: ONNX
    Runtime's answers in every call."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    data = _dynamo_export(_BigUnitLoop().eval(), x)
    m = load_onnx(data)
    _same_as_ort(m, data, {m.input_names[0]: x}, calls=3)
    assert not _unrolled_steps(m)[0]


def _shape_view_model():
    """Cast(Shape(x)) (kept by a program: it follows from the shapes) reshaped by a fed
    shape, and a product of it."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["sf", "shp"], ["y"]),
             helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0),
             helper.make_node("Mul", ["sf", "r"], ["z"])]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
        helper.make_tensor_value_info("shp", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name="y"), onnx.ValueInfoProto(name="z")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_first_call_results_are_not_views_of_kept_values():
    """The first call's results are the caller's own arrays even where they are views of
    a value the new kept program keeps (made before the program froze it): writing into
    one changed every later call."""
    model = _shape_view_model()
    data = model.SerializeToString()
    m = load_onnx(model)
    feeds = {"x": np.ones((3, 4), np.float32), "shp": np.array([-1], np.int64)}
    for _ in range(3):
        y, z = m.run(None, feeds)
        assert y.flags.writeable
        y[:] = 1000.0
        z[:] = -1.0
    ref = _ort(data, feeds)
    y, z = m.run(None, feeds)
    np.testing.assert_array_equal(y, ref["y"])
    np.testing.assert_array_equal(z, ref["z"])


def test_zero_results_and_outputs_as_an_iterator():
    """A 0-d result is a 0-d array (as ONNX Runtime's), not a NumPy scalar, in first and
    kept calls; ``outputs=`` may be any iterable of names, read once."""
    nodes = [helper.make_node("MatMul", ["v", "v"], ["dot"]),
             helper.make_node("Gather", ["v", "i"], ["g"], axis=0)]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [None])],
        [onnx.ValueInfoProto(name="dot"), onnx.ValueInfoProto(name="g")],
        [numpy_helper.from_array(np.array(1, np.int64), "i")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m = load_onnx(model)
    for n in (3, 3, 5):
        v = np.arange(n, dtype=np.float32)
        res = m.run({"v": v}, outputs=iter(["dot", "g"]))
        assert sorted(res) == ["dot", "g"]
        for k, want in (("dot", float(v @ v)), ("g", 1.0)):
            assert type(res[k]) is np.ndarray and res[k].shape == () and res[k] == want
            assert res[k].flags.writeable


def test_feeds_cast_only_where_every_value_fits():
    """A feed of another dtype of the same kind is cast to the input's (float64 into a
    float32 model, as a layer call does); an integer or float16 cast that would wrap or
    overflow to inf is a ValueError naming the input (ONNX Runtime refuses every other
    dtype)."""
    def model(t):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", t, [2])],
                              [helper.make_tensor_value_info("y", t, [2])])
        return load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert model(TensorProto.FLOAT).run({"x": np.array([0.1, 2.0])})["y"].dtype == np.float32
    i32 = model(TensorProto.INT32)
    np.testing.assert_array_equal(i32.run({"x": np.array([7, -3], np.int64)})["y"], [7, -3])
    f16 = model(TensorProto.FLOAT16)
    np.testing.assert_array_equal(f16.run({"x": np.array([1.5, np.inf], np.float32)})["y"],
                                  [1.5, np.inf])
    for m, bad in ((i32, np.array([2 ** 31, 0], np.int64)), (i32, np.array([1, 2], np.uint64) * 2 ** 40),
                   (f16, np.array([1e5, 0], np.float32))):
        for _ in range(2):
            with pytest.raises(ValueError, match="input 'x': values of dtype .* do not fit"):
                m.run({"x": bad})


def test_zero_state_from_shapes_checked_against_another_x():
    """A zero initial state made from a feed's shape (as PyTorch's exports make it) runs
    as an absent one, but where values change X's batch (a Slice by a fed length) it is
    checked against that X, as ONNX Runtime and the first call do, in kept programs
    too."""
    I, H, B, T = 3, 4, 4, 5
    rng = np.random.default_rng(0)
    i64 = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)   # noqa: E731
    nodes = [helper.make_node("Slice", ["xf", "st", "n", "ax"], ["x"]),
             helper.make_node("Shape", ["xf"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "zero"], ["b1"]),
             helper.make_node("Concat", ["d1", "b1", "hh"], ["hs"], axis=0),
             helper.make_node("ConstantOfShape", ["hs"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("LSTM", ["x", "W", "R", "", "", "h0", "h0"], ["Y", "Yh"],
                              hidden_size=H)]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
             i64([0], "st"), i64([1], "ax"), i64(1, "one"), i64([0], "zero"), i64([1], "d1"),
             i64([H], "hh")]
    g = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("xf", TensorProto.FLOAT, [T, B, I]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [onnx.ValueInfoProto(name="Yh")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    data = model.SerializeToString()
    m = load_onnx(model)
    xf = rng.standard_normal((T, B, I)).astype(np.float32)
    for n in (4, 4, 2, 4, 2):
        feeds = {"xf": xf, "n": np.array([n], np.int64)}
        if n == B:
            _same_as_ort(m, data, feeds, calls=1)
        else:
            with pytest.raises(ValueError, match=r"initial_h must have shape \(1, 2, 4\)"):
                m.run(feeds)
    assert len(m._progs) == 1


def test_fed_weight_of_a_recurrent_node():
    """A recurrent node's weight that is also a graph input (IR >= 4: an overridable
    initializer) may be fed: the node's other weights are kept for that (they were
    dropped as converted, and feeding W raised a LoadError)."""
    H, I = 4, 3
    rng = np.random.default_rng(2)
    W = rng.standard_normal((1, 4 * H, I)).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.standard_normal((1, 8 * H)).astype(np.float32), "B")]
    g = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Yh"],
                                            hidden_size=H)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, I]),
                           helper.make_tensor_value_info("W", TensorProto.FLOAT, W.shape)],
                          [onnx.ValueInfoProto(name="Y"), onnx.ValueInfoProto(name="Yh")],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    data = model.SerializeToString()
    m = load_onnx(model)
    x = rng.standard_normal((5, 2, I)).astype(np.float32)
    _same_as_ort(m, data, {"x": x})
    _same_as_ort(m, data, {"x": x, "W": (W * 0.5).astype(np.float32)})
    _same_as_ort(m, data, {"x": x})


# --------------------------------------------- 1-D convolutions and pools (CNN-RNN models)
class _ConvLSTM(torch.nn.Module):
    """A CNN front-end before an LSTM, as speech and sensor models have: Conv1d (padded,
    strided, grouped), BatchNorm1d, ReLU, MaxPool1d, AvgPool1d, then LSTM and a head."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, padding=1, stride=1)
        self.conv2 = torch.nn.Conv1d(8, 6, 2, stride=2, groups=2, dilation=1)
        self.bn = torch.nn.BatchNorm1d(8)
        self.pool = torch.nn.MaxPool1d(2, ceil_mode=True)
        self.avg = torch.nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
        self.rnn = torch.nn.LSTM(6, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):                       # x (B, C=4, L)
        y = self.pool(torch.relu(self.bn(self.conv(x))))
        y = self.avg(self.conv2(y))
        out, _ = self.rnn(y.transpose(1, 2))
        return self.head(out[:, -1]), y.mean(dim=2, keepdim=True)


@pytest.mark.parametrize("dynamo", [False, True])
def test_conv_lstm_export_matches_ort_and_torch(dynamo):
    torch.manual_seed(3)
    net = _ConvLSTM().eval()
    x = np.random.default_rng(1).standard_normal((3, 4, 11)).astype(np.float32)
    if dynamo:
        data = _dynamo_export(net, x)
    else:
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y", "m"])
        data = f.getvalue()
    m = load_onnx(data)
    got = _same_as_ort(m, data, {m.input_names[0]: x}, calls=2)
    with torch.no_grad():
        want = [t.numpy() for t in net(torch.from_numpy(x))]
    for g, w in zip(got.values(), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _one_node(op, x, inits=(), **attrs):
    names = ["x"] + [t.name for t in inits]
    g = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [onnx.ValueInfoProto(name="y")], list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("L,k,s,d,pad,group", [
    (8, 3, 1, 1, dict(pads=[1, 1]), 1), (8, 3, 2, 1, dict(auto_pad="SAME_UPPER"), 2),
    (7, 2, 3, 1, dict(auto_pad="SAME_LOWER"), 1), (9, 3, 1, 2, dict(pads=[2, 0]), 4),
    (5, 1, 2, 1, dict(auto_pad="VALID"), 1), (6, 4, 1, 1, dict(pads=[0, 3]), 2)])
def test_conv_1d_matches_ort(L, k, s, d, pad, group):
    rng = np.random.default_rng(L * k)
    x = rng.standard_normal((2, 4, L)).astype(np.float32)
    W = numpy_helper.from_array(rng.standard_normal((8, 4 // group, k)).astype(np.float32), "W")
    B = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    data = _one_node("Conv", x, (W, B), strides=[s], dilations=[d], group=group, **pad)
    _same_as_ort(load_onnx(data), data, {"x": x})


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("k,s,pad,ceil,cip", [
    (2, 2, dict(), 0, 0), (3, 2, dict(pads=[1, 1]), 1, 0), (3, 2, dict(pads=[1, 1]), 1, 1),
    (3, 1, dict(auto_pad="SAME_UPPER"), 0, 0), (4, 3, dict(auto_pad="SAME_LOWER"), 0, 1),
    (4, 3, dict(pads=[2, 1]), 1, 1), (2, 1, dict(dilations=[2]), 0, 0)])
def test_pool_1d_matches_ort(op, k, s, pad, ceil, cip):
    x = np.random.default_rng(k * 10 + s).standard_normal((2, 3, 9)).astype(np.float32)
    kw = dict(kernel_shape=[k], strides=[s], ceil_mode=ceil, **pad)
    if op == "AveragePool":
        kw["count_include_pad"] = cip
    data = _one_node(op, x, **kw)
    _same_as_ort(load_onnx(data), data, {"x": x})


def test_conv_and_pool_refusals():
    """What fastrnn does not run is a clear error: convolutions and pools of more than 3
    spatial axes, ConvTranspose (at load), MaxPool's Indices output (at load), dilated
    windows with auto_pad SAME (ONNX Runtime refuses a Conv so, and pads its pools as if
    undilated), BatchNormalization in training mode."""
    x6 = np.ones((1, 2, 2, 2, 2, 2), np.float32)
    W = numpy_helper.from_array(np.ones((2, 2, 1, 1, 1, 1), np.float32), "W")
    with pytest.raises(ValueError, match=r"only 1-D, 2-D and 3-D Conv is supported"):
        load_onnx(_one_node("Conv", x6, (W,))).run({"x": x6})
    with pytest.raises(ValueError, match=r"only 1-D, 2-D and 3-D MaxPool"):
        load_onnx(_one_node("MaxPool", x6, kernel_shape=[2] * 4)).run({"x": x6})
    x4 = np.ones((1, 2, 3, 3), np.float32)
    W4 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "W")
    with pytest.raises(LoadError, match=r"unsupported ONNX op type\(s\) \['ConvTranspose'\]"):
        load_onnx(_one_node("ConvTranspose", x4, (W4,)))
    x = np.ones((1, 2, 6), np.float32)
    g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6])],
                          [onnx.ValueInfoProto(name="y"), onnx.ValueInfoProto(name="i")])
    with pytest.raises(LoadError, match="MaxPool's Indices output is not supported"):
        load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    with pytest.raises(ValueError, match="auto_pad SAME_UPPER with dilations > 1"):
        load_onnx(_one_node("AveragePool", x, kernel_shape=[2], dilations=[2],
                            auto_pad="SAME_UPPER")).run({"x": x})
    # a file's kernel_shape / pads asking for minutes of work or terabytes: refused
    with pytest.raises(ValueError, match="beyond what fastrnn runs"):
        load_onnx(_one_node("AveragePool", x, kernel_shape=[5_000_000],
                            pads=[4_999_999, 4_999_999])).run({"x": x})
    W1 = numpy_helper.from_array(np.ones((3, 2, 2), np.float32), "W")
    with pytest.raises(ValueError, match=r"pads \[100000000000, 3\] are beyond 2\^31 "
                                         "element steps"):
        load_onnx(_one_node("Conv", x, (W1,), pads=[10 ** 11, 3])).run({"x": x})
    # a window longer than the input gives a negative size (ONNX Runtime refuses it);
    # a kernel of 2^32 taps: refused before anything runs (an audit: a tap loop ran for
    # minutes, the file 200 bytes)
    with pytest.raises(ValueError, match=r"a window of 10000000 taps .* negative output"):
        load_onnx(_one_node("MaxPool", x, kernel_shape=[10 ** 7])).run({"x": x})
    with pytest.raises(ValueError, match=r"kernel_shape \[4294967296\] is beyond 2\^31"):
        load_onnx(_one_node("MaxPool", x, kernel_shape=[2 ** 32])).run({"x": x})
    stats = [numpy_helper.from_array(np.ones(2, np.float32), n)
             for n in ("scale", "bias", "mean", "var")]
    with pytest.raises(ValueError, match="training_mode=1 is not supported"):
        load_onnx(_one_node("BatchNormalization", x, stats, training_mode=1)).run({"x": x})
    # opset 9's training form: five outputs (batch statistics, running averages)
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                            ["y", "rm", "rv", "sm", "sv"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 6])], [onnx.ValueInfoProto(name="y")], stats)
    with pytest.raises(LoadError, match="BatchNormalization with 5 outputs is its training "
                                        "form"):
        load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_node_clip_inf_runs_unclipped_and_extra_slots_are_refused(op):
    """``clip=inf`` runs as no clip, as ONNX Runtime runs it (it was refused); a GRU / RNN
    node listing a third output (``Y_c``), or any node listing more inputs than its op
    has, is refused at load naming the node (it loaded, and the extra output came back
    None; ONNX Runtime refuses the graph). Found by the ONNX audit."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    H, I, B, T = 5, 4, 3, 6
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((1, G * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(r.standard_normal((1, G * H, H)).astype(np.float32), "R")]
    xin = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    x = r.standard_normal((T, B, I)).astype(np.float32)

    def model(inputs, outputs, **attrs):
        node = helper.make_node(op, inputs, outputs, hidden_size=H, **attrs)
        g = helper.make_graph([node], "g", xin, [helper.make_tensor_value_info(
            o, TensorProto.FLOAT, None) for o in outputs if o], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])

    outs = ["Y", "Y_h"]
    plain = load_onnx(model(["X", "W", "R"], outs)).run(None, {"X": x})
    m = model(["X", "W", "R"], outs, clip=float("inf"))
    got = load_onnx(m).run(None, {"X": x})
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for g_, w_, p_ in zip(got, want, plain):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(g_, p_)
    n_in, n_out = (8, 3) if op == "LSTM" else (6, 2)
    with pytest.raises(LoadError, match=rf"{op} takes at most {n_out} outputs"):
        load_onnx(model(["X", "W", "R"], ["Y", "Y_h", "Y_c", "Y_d"][:n_out + 1]))
    with pytest.raises(LoadError, match=rf"{op} takes at most {n_in} inputs"):
        load_onnx(model(["X", "W", "R"] + [""] * (n_in - 3) + ["X"], outs))
    load_onnx(model(["X", "W", "R"], outs + [""] * (n_out - 1)))   # (empty names: fine)
    with pytest.raises(ValueError, match="clip must be a positive number"):
        fastrnn.LSTM(2, 3, clip=0.0)
    assert fastrnn.LSTM(2, 3, clip=float("inf")).clip is None
