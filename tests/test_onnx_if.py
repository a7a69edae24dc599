"""ONNX ``If`` nodes (fastrnn/io/_onnx_if.py): PyTorch's TorchScript export of
``x.squeeze(d)`` on a dynamic axis (``If(Shape(x)[d] == 1)`` then Squeeze else Identity)
exported live and compared with torch and ONNX Runtime at sizes taking either branch;
hand-built graphs compared live with ONNX Runtime (both branches, outer values read by
the branches, branch initializers hiding outer names, nested Ifs, an If in a Loop body
and a Loop in a branch, a recurrent node in a branch, sequences, constant conditions,
opsets, float32 / float64, kept programs, pickling) and the error cases."""
from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io import onnx as fonnx  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

F32, F64, I64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _vi(name, t=F32, shape=None):
    return helper.make_tensor_value_info(name, t, shape)


def _graph(nodes, outs, inits=(), name="branch", ins=()):
    """A subgraph: ``outs`` / ``ins`` lists of names or (name, type, shape)."""
    def vis(xs):
        return [_vi(*x) if isinstance(x, tuple) else _vi(x) for x in xs]
    return helper.make_graph(nodes, name, vis(ins), vis(outs), list(inits))


def _model(nodes, ins, outs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [_vi(*x) for x in ins],
                          [_vi(*x) if isinstance(x, tuple) else _vi(x) for x in outs],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8 if opset < 19 else 10
    return m.SerializeToString()


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _if(cond, outs, then, else_, name="if"):
    return helper.make_node("If", [cond], list(outs), name=name, then_branch=then,
                            else_branch=else_)


def _ort(data, feeds):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _same(got, ref, tol=1e-6):
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol, err_msg=k)


def _check(data, feeds, m=None, tol=1e-6, calls=2):
    """fastrnn against ONNX Runtime: ``calls`` calls (the first keeps a program for the
    feeds' shapes, the later ones run it), then a pickled copy's."""
    ref = _ort(data, feeds)
    m = load_onnx(data) if m is None else m
    for _ in range(calls):
        _same(m.run(dict(feeds)), ref, tol)
    _same(pickle.loads(pickle.dumps(m)).run(dict(feeds)), ref, tol)
    return ref


def _ops(m) -> set:
    return {s[1].op if s[0] == "rnn" else s[1][1] for s in m._steps}


# ------------------------------------------------------------------ PyTorch exports
class _SqueezeHead(torch.nn.Module):
    """A GRU and a Linear on each step, then ``squeeze(1)``: the time axis goes where a
    call has one step, stays otherwise (TorchScript: an If on Shape(y)[1] == 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(3, 5, batch_first=True)
        self.lin = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.lin(self.gru(x)[0]).squeeze(1)


def _export(net, args, opset, names, dynamic_axes, dtype=torch.float32):
    net = net.to(dtype).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buf, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["y"], dynamic_axes=dynamic_axes)
    return buf.getvalue()


@pytest.mark.parametrize("opset,dtype", [(11, np.float32), (13, np.float64),
                                         (17, np.float32), (21, np.float64)])
def test_torchscript_squeeze_on_a_dynamic_axis(opset, dtype):
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    net = _SqueezeHead()
    data = _export(net, (torch.zeros(2, 4, 3, dtype=tdt),), opset, ["x"],
                   {"x": {0: "b", 1: "t"}}, tdt)
    assert "If" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    m = load_onnx(data)
    assert "If" in _ops(m)
    rng = np.random.default_rng(opset)
    tol = TOL[dtype]
    # both branches, each shape twice (the second call runs the kept program), and
    # back to an earlier shape
    for B, T in [(2, 1), (2, 1), (2, 4), (2, 4), (1, 1), (3, 7), (2, 1)]:
        x = rng.standard_normal((B, T, 3)).astype(dtype)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = m.run({"x": x})["y"]
        assert got.shape == ref.shape == ((B, 2) if T == 1 else (B, T, 2))
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        if dtype == np.float32:     # (ONNX Runtime's GRU has no float64 kernel)
            np.testing.assert_allclose(got, _ort(data, {"x": x})["y"], rtol=tol, atol=tol)
    m2 = pickle.loads(pickle.dumps(m))
    for T in (1, 5):
        x = rng.standard_normal((2, T, 3)).astype(dtype)
        np.testing.assert_array_equal(m2.run({"x": x})["y"], m.run({"x": x})["y"])


class _LastValid(torch.nn.Module):
    """The output at each sequence's last valid step: ``out.gather(1, idx).squeeze(1)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.rnn = torch.nn.LSTM(4, 6, batch_first=True, bidirectional=True)
        self.lin = torch.nn.Linear(12, 3)

    def forward(self, x, lengths):
        out, _ = self.rnn(x)
        idx = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
        return self.lin(out.gather(1, idx).squeeze(1))


def test_torchscript_last_valid_step_head():
    net = _LastValid().eval()
    data = _export(net, (torch.zeros(2, 5, 4), torch.tensor([5, 3])), 14, ["x", "lengths"],
                   {"x": {0: "b", 1: "t"}, "lengths": {0: "b"}})
    m = load_onnx(data)
    rng = np.random.default_rng(0)
    for B, T in [(2, 5), (2, 5), (1, 1), (3, 7), (1, 4), (3, 7)]:
        x = rng.standard_normal((B, T, 4)).astype(np.float32)
        lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
        with torch.no_grad():
            ref = net(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
        got = m.run({"x": x, "lengths": lengths})["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, _ort(data, {"x": x, "lengths": lengths})["y"],
                                   rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hand-built graphs
def _neg_exp(opset=17, t=F32):
    then = _graph([helper.make_node("Neg", ["x"], ["a"])], [("a", t)], name="then")
    else_ = _graph([helper.make_node("Exp", ["x"], ["b"])], [("b", t)], name="else")
    return _model([_if("c", ["y"], then, else_)], [("x", t, [3]), ("c", BOOL, None)],
                  [("y", t)], opset=opset)


@pytest.mark.parametrize("opset", [7, 11, 13, 16, 19, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_branches_each_opset(opset, dtype):
    data = _neg_exp(opset, F32 if dtype == np.float32 else F64)
    m = load_onnx(data)
    x = np.array([0.5, -1.0, 2.0], dtype)
    for c in (True, False, True):
        ref = _check(data, {"x": x, "c": np.array(c)}, m, TOL[dtype])
        np.testing.assert_allclose(ref["y"], -x if c else np.exp(x), rtol=TOL[dtype])
    # a condition of one element in any shape, as ONNX Runtime
    for c in (np.array([False]), np.array([[True]])):
        _same(m.run({"x": x, "c": c}), _ort(data, {"x": x, "c": c}), TOL[dtype])


def test_branches_read_outer_values_and_own_initializers():
    # then: (x + w) * s - u: w a branch initializer, s an outer initializer, u an outer
    # node's output; else: x + v, v an initializer of the branch's hiding the outer one
    # (as in ONNX Runtime, where the other branch does not read v)
    then = _graph([helper.make_node("Add", ["x", "w"], ["t1"]),
                   helper.make_node("Mul", ["t1", "s"], ["t2"]),
                   helper.make_node("Sub", ["t2", "u"], ["t3"])], ["t3"],
                  [_const("w", [10.0, 20.0, 30.0])], name="then")
    else_ = _graph([helper.make_node("Add", ["x", "v"], ["e1"])], ["e1"],
                   [_const("v", [-7.0, -7.0, -7.0])], name="else")
    nodes = [helper.make_node("Abs", ["x"], ["u"]),
             helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
             helper.make_node("Greater", ["sum", "zero"], ["c"]),
             _if("c", ["y"], then, else_)]
    inits = [_const("v", [1.0, 2.0, 3.0]), _const("s", 3.0), _const("zero", 0.0)]
    data = _model(nodes, [("x", F32, [3])], ["y"], inits, opset=13)
    m = load_onnx(data)
    x = np.array([1.0, -2.0, 4.0], np.float32)
    ref = _check(data, {"x": x}, m)
    np.testing.assert_allclose(ref["y"], (x + [10, 20, 30]) * 3 - np.abs(x), rtol=1e-6)
    ref = _check(data, {"x": -x}, m)
    np.testing.assert_allclose(ref["y"], -x - 7, rtol=1e-6)
    # the If step reads the outer values its branches read (not the hidden v)
    step = next(s for s in m._steps if s[1][1] == "If")
    assert step[2][0] == "c" and sorted(step[2][1:]) == ["s", "u", "x"]


def test_branch_node_outputs_hide_outer_values():
    # (ONNX Runtime refuses a name assigned twice; fastrnn runs it, the branch's own
    # value read after its node, as in a Loop body)
    then = _graph([helper.make_node("Neg", ["x"], ["u"]),
                   helper.make_node("Add", ["u", "u"], ["t"])], ["t"], name="then")
    else_ = _graph([helper.make_node("Identity", ["u"], ["e"])], ["e"], name="else")
    data = _model([helper.make_node("Abs", ["x"], ["u"]), _if("c", ["y"], then, else_)],
                  [("x", F32, [3]), ("c", BOOL, [])], ["y"])
    m = load_onnx(data)
    x = np.array([1.0, -2.0, 4.0], np.float32)
    np.testing.assert_array_equal(m.run({"x": x, "c": np.array(True)})["y"], -2 * x)
    np.testing.assert_array_equal(m.run({"x": x, "c": np.array(False)})["y"], np.abs(x))


def test_branch_outputs_of_other_shapes_and_types_and_several_outputs():
    then = _graph([helper.make_node("Shape", ["x"], ["sh"]),
                   helper.make_node("Neg", ["x"], ["n"])], [("sh", I64), "n"], name="then")
    else_ = _graph([helper.make_node("Size", ["x"], ["sz"]),
                    helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0)],
                   [("sz", I64), "r"], name="else")
    data = _model([_if("c", ["a", "b"], then, else_)], [("x", F32, ["n", 2]), ("c", BOOL, [])],
                  [("a", I64), "b"], opset=13)
    m = load_onnx(data)
    for c in (True, False):
        for n in (1, 3):
            _check(data, {"x": np.ones((n, 2), np.float32) * 0.5, "c": np.array(c)}, m)


def test_nested_if_and_values_read_two_levels_up():
    vi = "r"
    inner_then = _graph([helper.make_node("Mul", ["x", "k"], ["r"])], [vi], name="it")
    inner_else = _graph([helper.make_node("Sub", ["x", "k2"], ["r"])], [vi], name="ie",
                        inits=[_const("k2", 100.0)])
    outer_then = _graph([helper.make_node("Greater", ["sum", "zero"], ["c2"]),
                         _if("c2", ["r1"], inner_then, inner_else, name="inner"),
                         helper.make_node("Exp", ["x"], ["e"])], ["r1", "e"], name="ot")
    outer_else = _graph([helper.make_node("Sigmoid", ["x"], ["s1"]),
                         helper.make_node("Tanh", ["x"], ["s2"])], ["s1", "s2"], name="oe")
    nodes = [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
             helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Greater", ["n", "two"], ["c"]),
             _if("c", ["y", "z"], outer_then, outer_else, name="outer")]
    inits = [_const("two", 2, np.int64), _const("zero", 0.0), _const("k", 3.0)]
    data = _model(nodes, [("x", F32, ["n"])], ["y", "z"], inits)
    m = load_onnx(data)
    for x in ([1.0, 2.0, 3.0], [-1.0, -2.0, 0.5], [0.3, -0.2], [4.0]):
        ref = _check(data, {"x": np.array(x, np.float32)}, m)
    assert ref["y"].shape == (1,)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], x * 3)
    np.testing.assert_allclose(m.run({"x": -x})["y"], -x - 100)


def _loop_body(nodes, ins, outs):
    return _graph(nodes, outs, ins=ins, name="body")


def test_if_inside_a_loop_body():
    # v <- If(i is even) then v * w + x[i] else v - b: w an outer initializer, b one of
    # the body's, x[i] a Gather of the outer input at the iteration number
    then = _graph([helper.make_node("Gather", ["x", "i"], ["xi"], axis=0),
                   helper.make_node("Mul", ["v_in", "w"], ["t1"]),
                   helper.make_node("Add", ["t1", "xi"], ["t2"])], ["t2"], name="then")
    else_ = _graph([helper.make_node("Sub", ["v_in", "b"], ["e1"])], ["e1"], name="else")
    body = _loop_body([helper.make_node("Mod", ["i", "two"], ["r"]),
                       helper.make_node("Equal", ["r", "zero"], ["even"]),
                       _if("even", ["v_out"], then, else_, name="in_body"),
                       helper.make_node("Identity", ["c_in"], ["c_out"])],
                      [("i", I64, []), ("c_in", BOOL, []), "v_in"],
                      [("c_out", BOOL, []), "v_out"])
    body.initializer.extend([_const("b", [0.5, 0.25]), _const("two", 2, np.int64),
                             _const("zero", 0, np.int64)])
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "z0"], ["M"], axis=0),
             helper.make_node("Loop", ["M", "", "v0"], ["y"], name="L", body=body)]
    inits = [_const("w", [1.5, -1.0]), _const("z0", 0, np.int64), _const("v0", [1.0, 2.0])]
    data = _model(nodes, [("x", F32, ["t", 2])], ["y"], inits)
    m = load_onnx(data)
    rng = np.random.default_rng(3)
    for t in (0, 1, 4, 4, 7):
        _check(data, {"x": rng.standard_normal((t, 2)).astype(np.float32)}, m)
    # the Loop step reads the outer values the If reads (x, w), not the body's own ones
    step = next(s for s in m._steps if s[1][1] == "Loop")
    assert {"x", "w"} <= set(step[2]) and "b" not in step[2]


def test_loop_inside_a_branch():
    body = _loop_body([helper.make_node("Mul", ["v_in", "x"], ["v_out"]),
                       helper.make_node("Identity", ["c_in"], ["c_out"])],
                      [("i", I64, []), ("c_in", BOOL, []), "v_in"],
                      [("c_out", BOOL, []), "v_out"])
    then = _graph([helper.make_node("Loop", ["n", "", "one"], ["p"], name="pow", body=body)],
                  ["p"], name="then")
    else_ = _graph([helper.make_node("Neg", ["x"], ["q"])], ["q"], name="else")
    nodes = [helper.make_node("Greater", ["n", "zero"], ["c"]),
             _if("c", ["y"], then, else_)]
    inits = [_const("one", [1.0, 1.0]), _const("zero", 0, np.int64)]
    data = _model(nodes, [("x", F32, [2]), ("n", I64, [])], ["y"], inits)
    m = load_onnx(data)
    x = np.array([1.5, -2.0], np.float32)
    for n in (3, 0, 1, 3):
        ref = _check(data, {"x": x, "n": np.array(n, np.int64)}, m)
    np.testing.assert_allclose(ref["y"], x ** 3, rtol=1e-6)


def test_recurrent_node_inside_a_branch():
    rng = np.random.default_rng(5)
    H, I = 3, 2
    W = rng.standard_normal((1, 3 * H, I)).astype(np.float32)
    R = rng.standard_normal((1, 3 * H, H)).astype(np.float32)
    then = _graph([helper.make_node("GRU", ["x", "W", "R"], ["Y", "Yh"], hidden_size=H)],
                  ["Yh"], inits=[_const("R", R)], name="then")     # (W outer, R its own)
    else_ = _graph([helper.make_node("RNN", ["x", "W1", "R1"], ["Y2", "Yh2"], hidden_size=H)],
                   ["Yh2"], name="else")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             _if("c", ["y"], then, else_)]
    inits = [_const("W", W), _const("zero", 0.0),
             _const("W1", W[:, :H]), _const("R1", R[:, :H])]
    data = _model(nodes, [("x", F32, ["t", "b", I])], ["y"], inits)
    m = load_onnx(data)
    for shape in [(4, 2, I), (4, 2, I), (1, 3, I)]:
        x = np.abs(rng.standard_normal(shape)).astype(np.float32)
        _check(data, {"x": x}, m, 1e-5)
        _check(data, {"x": -x}, m, 1e-5)


def test_sequence_outputs_of_both_branches():
    then = _graph([helper.make_node("SplitToSequence", ["x"], ["sq"], axis=0)], ["sq"],
                  name="then")
    else_ = _graph([helper.make_node("Neg", ["x"], ["nx"]),
                    helper.make_node("SplitToSequence", ["nx"], ["sq2"], axis=1)], ["sq2"],
                   name="else")
    out = helper.make_tensor_sequence_value_info("s", F32, None)
    then.output[0].CopyFrom(helper.make_tensor_sequence_value_info("sq", F32, None))
    else_.output[0].CopyFrom(helper.make_tensor_sequence_value_info("sq2", F32, None))
    nodes = [_if("c", ["s"], then, else_),
             helper.make_node("SequenceAt", ["s", "k"], ["y"])]
    data = _model(nodes, [("x", F32, [2, 3]), ("c", BOOL, [])], ["y"],
                  [_const("k", 1, np.int64)], opset=13)
    del out
    m = load_onnx(data)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for c in (True, False):
        _check(data, {"x": x, "c": np.array(c)}, m)
    # a sequence in one branch and a tensor in the other: refused at load
    else_t = _graph([helper.make_node("Neg", ["x"], ["nx"])], ["nx"], name="else")
    bad = _model([_if("c", ["s"], then, else_t, name="mixed")],
                 [("x", F32, [2, 3]), ("c", BOOL, [])], ["s"], opset=13)
    with pytest.raises(LoadError, match=r"node 0 If 'mixed': output 0: its then_branch "
                                        r"gives a sequence, its else_branch a tensor"):
        load_onnx(bad)


def test_constant_condition_is_resolved_at_load():
    # the condition folds at load (Size of an initializer > 2): the then branch's
    # constant output folds too, and the If is gone; the else branch is never compiled
    then = _graph([helper.make_node("Mul", ["k", "k"], ["kk"])], ["kk"], name="then")
    else_ = _graph([helper.make_node("Neg", ["k"], ["nk"])], ["nk"], name="else")
    nodes = [helper.make_node("Size", ["k"], ["n"]),
             helper.make_node("Greater", ["n", "two"], ["c"]),
             _if("c", ["w"], then, else_),
             helper.make_node("Add", ["x", "w"], ["y"])]
    inits = [_const("k", [1.0, 2.0, 3.0]), _const("two", 2, np.int64)]
    data = _model(nodes, [("x", F32, [3])], ["y"], inits)
    m = load_onnx(data)
    assert "If" not in _ops(m)
    x = np.array([0.5, 0.25, -1.0], np.float32)
    ref = _check(data, {"x": x}, m)
    np.testing.assert_allclose(ref["y"], x + [1, 4, 9])
    # a constant condition choosing a branch that reads the input: one If step, running
    # only that branch (the other is not compiled)
    then2 = _graph([helper.make_node("Mul", ["x", "k"], ["xk"])], ["xk"], name="then")
    data2 = _model(nodes[:2] + [_if("c", ["y"], then2, else_)], [("x", F32, [3])], ["y"],
                   inits)
    m2 = load_onnx(data2)
    ifn = next(s for s in m2._steps if s[1][1] == "If")[1][2]["_if"]
    assert ifn.fixed is True and ifn.else_branch is None
    _check(data2, {"x": x}, m2)


def test_shapes_of_a_value_chosen_branch_are_not_kept():
    # the condition follows from x's values: calls of the same shapes take either branch,
    # whose outputs differ in shape; a Shape of the If's output must follow (a kept
    # program may not keep it as following from the feeds' shapes)
    then = _graph([helper.make_node("Identity", ["x"], ["a"])], ["a"], name="then")
    else_ = _graph([helper.make_node("Concat", ["x", "x"], ["b"], axis=0)], ["b"],
                   name="else")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             _if("c", ["v"], then, else_),
             helper.make_node("Shape", ["v"], ["sh"]),
             helper.make_node("Cast", ["sh"], ["shf"], to=F32),
             helper.make_node("ReduceSum", ["shf"], ["y"], keepdims=0)]
    data = _model(nodes, [("x", F32, [2])], ["y"], [_const("zero", 0.0)])
    m = load_onnx(data)
    for x in ([1.0, 2.0], [-1.0, -2.0], [1.0, 2.0], [-3.0, 1.0]):
        ref = _check(data, {"x": np.array(x, np.float32)}, m)
        assert float(ref["y"]) == (2.0 if sum(x) > 0 else 4.0)


def test_shapes_of_a_shape_chosen_branch_are_kept():
    # the condition follows from x's shape: the If's output shape does too, so the Shape
    # of it is computed once per shapes (kept by the program), and right for each shape
    then = _graph([helper.make_node("Squeeze", ["x", "ax"], ["a"])], ["a"], name="then")
    else_ = _graph([helper.make_node("Identity", ["x"], ["b"])], ["b"], name="else")
    nodes = [helper.make_node("Shape", ["x"], ["s0"]),
             helper.make_node("Gather", ["s0", "one"], ["d"], axis=0),
             helper.make_node("Equal", ["d", "one"], ["c"]),
             _if("c", ["v"], then, else_, name="sq"),
             helper.make_node("Shape", ["v"], ["sh"]),
             helper.make_node("Size", ["sh"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=F32),
             helper.make_node("Mul", ["v", "rf"], ["y"])]
    inits = [_const("ax", [1], np.int64), _const("one", 1, np.int64)]
    data = _model(nodes, [("x", F32, ["b", "t"])], ["y"], inits)
    m = load_onnx(data)
    assert {"sh", "r", "rf"} <= m._shaped and "v" not in m._shaped
    rng = np.random.default_rng(2)
    for shape in [(3, 1), (3, 1), (3, 2), (3, 2), (1, 1)]:
        _check(data, {"x": rng.standard_normal(shape).astype(np.float32)}, m)


# ---------------------------------------------------------------------- errors
def _simple_if(then, else_, name="my_if", outs=("y",)):
    return _model([helper.make_node("Size", ["x"], ["n"]),
                   helper.make_node("Equal", ["n", "n"], ["c"]),
                   helper.make_node("If", ["c"], list(outs), name=name, then_branch=then,
                                    else_branch=else_) if else_ is not None else
                   helper.make_node("If", ["c"], list(outs), name=name, then_branch=then)],
                  [("x", F32, [2])], [o for o in outs if o])


_ID = _graph([helper.make_node("Identity", ["x"], ["o"])], ["o"], name="id")


def test_unsupported_ops_in_branches_are_named_with_where_they_are():
    bad = _graph([helper.make_node("RoiAlign", ["x", "x", "x"], ["o"], name="roi")], ["o"])
    body = _loop_body([helper.make_node("Hardmax", ["v_in"], ["v_out"], name="hm"),
                       helper.make_node("Identity", ["c_in"], ["c_out"])],
                      [("i", I64, []), ("c_in", BOOL, []), "v_in"],
                      [("c_out", BOOL, []), "v_out"])
    nested = _graph([_if("c", ["o1"], bad, _ID, name="inner"),
                     helper.make_node("Loop", ["m", "", "x"], ["o"], name="lp", body=body)],
                    ["o"])
    with pytest.raises(LoadError) as ei:
        load_onnx(_simple_if(_ID, nested))
    msg = str(ei.value)
    assert "unsupported ONNX op type(s) ['Hardmax', 'RoiAlign']" in msg
    assert ("RoiAlign: 'roi' (in the then_branch of If 'inner' (in the else_branch of If "
            "'my_if'))") in msg
    assert "Hardmax: 'hm' (in the body of Loop 'lp' (in the else_branch of If 'my_if'))" in msg
    assert "fastrnn runs LSTM, GRU, RNN, Loop, If, Scan and these simple ops" in msg
    simple = msg.split("simple ops: ")[1].split(", ")
    assert "If" not in simple and "Scan" not in simple and "Add" in simple


@pytest.mark.parametrize("then,else_,outs,match", [
    (_ID, None, ("y",), r"node 2 If 'my_if': no 'else_branch' graph attribute"),
    (_ID, _graph([helper.make_node("Identity", ["x"], ["o"]),
                  helper.make_node("Neg", ["x"], ["o2"])], ["o", "o2"]), ("y",),
     r"node 2 If 'my_if': its then_branch gives 1 output\(s\), its else_branch 2"),
    (_ID, _ID, ("y", "z"), r"node 2 If 'my_if': 2 outputs; its branches give 1"),
    (_graph([helper.make_node("Identity", ["q"], ["o"])], ["o"], ins=["q"]), _ID, ("y",),
     r"node 2 If 'my_if': its then_branch takes inputs \['q'\]; an If's branches take none"),
    (_graph([helper.make_node("Identity", ["x"], ["o"])], ["nope"]), _ID, ("y",),
     r"node 2 If 'my_if': then_branch outputs \['nope'\] are never computed"),
    (_ID, _graph([helper.make_node("Neg", ["x"], ["a"]),
                  helper.make_node("Add", ["a", "undefined"], ["o"], name="add")], ["o"]),
     ("y",), r"node 2 If 'my_if': else_branch node 1 Add 'add' reads 'undefined'"),
    (_ID, _graph([helper.make_node("Reshape", ["k", "s"], ["o"], name="rs")], ["o"],
                 inits=[_const("k", [1.0, 2.0, 3.0]), _const("s", [2], np.int64)]), ("y",),
     r"node 2 If 'my_if': else_branch node 0 Reshape 'rs': ValueError"),
])
def test_malformed_ifs_are_load_errors_naming_the_node(then, else_, outs, match):
    with pytest.raises(LoadError, match=match):
        load_onnx(_simple_if(then, else_, outs=outs))


def test_constant_condition_not_one_bool_is_a_load_error():
    for value, dtype in (([True, False], np.bool_), (1.0, np.float32)):
        data = _model([_if("c", ["y"], _ID, _ID, name="k_if")], [("x", F32, [2])], ["y"],
                      [_const("c", value, dtype)])
        with pytest.raises(LoadError, match=r"node 0 If 'k_if': the condition 'c' must "):
            load_onnx(data)


def test_condition_not_one_bool_at_run():
    data = _model([_if("c", ["y"], _ID, _ID, name="cond_if")],
                  [("x", F32, [2]), ("c", BOOL, None)], ["y"])
    m = load_onnx(data)
    x = np.ones(2, np.float32)
    np.testing.assert_array_equal(m.run({"x": x, "c": np.array([True])})["y"], x)
    for c in (np.array([True, False]), np.zeros((0,), bool)):
        with pytest.raises(ValueError, match=r"node 0 If 'cond_if': the condition must have "
                                             r"exactly one element"):
            m.run({"x": x, "c": c})
        with pytest.raises(Exception, match="exactly one element"):    # (ORT: the same)
            _ort(data, {"x": x, "c": c})
    # a float condition (ORT refuses its type at load; fastrnn's If finds it at run)
    data = _model([helper.make_node("Cast", ["x"], ["c"], to=F32),
                   helper.make_node("ReduceMax", ["c"], ["cm"], keepdims=0),
                   _if("cm", ["y"], _ID, _ID, name="f_if")], [("x", F32, [2])], ["y"])
    with pytest.raises(TypeError, match=r"node 2 If 'f_if': the condition must be a bool "
                                        r"tensor of one element, got float32"):
        load_onnx(data).run({"x": x})


def test_errors_at_run_name_the_if_and_the_branch_node():
    inner = _graph([helper.make_node("Reshape", ["x", "s"], ["o"], name="rs")], ["o"],
                   inits=[_const("s", [3], np.int64)], name="it")
    outer = _graph([_if("c", ["o"], inner, _ID, name="inner")], ["o"], name="ot")
    data = _model([_if("c", ["y"], outer, _ID, name="outer")],
                  [("x", F32, ["n"]), ("c", BOOL, [])], ["y"])
    m = load_onnx(data)
    np.testing.assert_array_equal(m.run({"x": np.ones(3, np.float32), "c": np.array(True)})["y"],
                                  np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"node 0 If 'outer': then_branch node 0 If 'inner': "
                                         r"then_branch node 0 Reshape 'rs': "):
        m.run({"x": np.ones(2, np.float32), "c": np.array(True)})
    # inside a Loop body: the iteration, the body node, the branch node
    body = _loop_body([_if("c_in", ["v_out"], inner, _ID, name="b_if"),
                       helper.make_node("Identity", ["c_in"], ["c_out"])],
                      [("i", I64, []), ("c_in", BOOL, []), "v_in"],
                      [("c_out", BOOL, []), "v_out"])
    body.node[0].input[0] = "c_in"
    body.node[0].attribute[0].g.node[0].input[0] = "v_in"
    data = _model([helper.make_node("Loop", ["m", "c", "x"], ["y"], name="L", body=body)],
                  [("x", F32, ["n"]), ("c", BOOL, []), ("m", I64, [])], ["y"])
    m = load_onnx(data)
    with pytest.raises(ValueError, match=r"node 0 Loop 'L': iteration 0, body node 0 If "
                                         r"'b_if': then_branch node 0 Reshape 'rs': "):
        m.run({"x": np.ones(2, np.float32), "c": np.array(True), "m": np.array(2)})


def test_an_if_output_is_the_callers_own():
    # a branch returning an outer constant, its own constant or the input itself: the
    # result is a copy, in a pickled copy of the model too
    then = _graph([], ["k"], name="then")
    else_ = _graph([], ["kb"], inits=[_const("kb", [4.0, 5.0, 6.0])], name="else")
    in_ = _graph([], ["x"], name="in")
    data = _model([_if("c", ["y"], then, else_), _if("c", ["z"], in_, in_, name="i2")],
                  [("x", F32, [3]), ("c", BOOL, [])], ["y", "z"],
                  [_const("k", [1.0, 2.0, 3.0])])
    m = load_onnx(data)
    for model in (m, pickle.loads(pickle.dumps(m))):
        x = np.zeros(3, np.float32)
        for _ in range(2):
            for c in (True, False):
                res = model.run({"x": x, "c": np.array(c)})
                res["y"][:] = 7
                res["z"][:] = 7
                assert not x.any()
        np.testing.assert_array_equal(model.run({"x": x, "c": np.array(True)})["y"], [1, 2, 3])
        np.testing.assert_array_equal(model.run({"x": x, "c": np.array(False)})["y"], [4, 5, 6])


def test_supported_ops_lists_if():
    assert "If" in fonnx.SUPPORTED_OPS and "Loop" in fonnx.SUPPORTED_OPS
