"""ONNX ``Loop`` nodes (fastrnn/io/_onnx_loop.py): hand-built graphs compared live with
ONNX Runtime (trip count, condition, both, none; zero iterations; scan outputs of
several ranks and types; outer-scope reads; nested loops; opsets; float32 / float64; a
Loop beside an LSTM node), the error cases (unsupported body ops, malformed bodies, bad
values at run, hostile GRAPH attribute bytes), and tf2onnx exports of Keras RNN layers
it writes as a Loop (tests/fixtures/onnx/loop/, made by tests/fixtures/make_tf2onnx.py:
stored Keras and ONNX Runtime outputs, live ONNX Runtime at other sizes)."""
from __future__ import annotations

import os
import pickle
import sys
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io import _onnx_loop  # noqa: E402
from fastrnn.io import _onnx_proto as P  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "onnx", "loop")
F32, F64, I64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
TOL = 1e-6


def _vi(name, t=F32, shape=None):
    return helper.make_tensor_value_info(name, t, shape)


def _body(nodes, ins, outs, inits=(), name="body"):
    """A body graph: ``ins`` / ``outs`` lists of names or (name, type, shape)."""
    def vis(xs):
        return [_vi(*x) if isinstance(x, tuple) else _vi(x) for x in xs]
    return helper.make_graph(nodes, name, vis(ins), vis(outs), list(inits))


def _model(nodes, ins, outs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [_vi(*x) for x in ins],
                          [_vi(*x) if isinstance(x, tuple) else _vi(x) for x in outs],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 19 else 10
    return m.SerializeToString()


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _ort(data, feeds):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _same(got, ref, tol=TOL):
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol, err_msg=k)


def _check(data, feeds, calls=2, tol=TOL, model=None):
    """fastrnn's outputs against ONNX Runtime's: ``calls`` calls (the first keeps a
    program for the feeds' shapes, the later ones run it), then a pickled copy's."""
    ref = _ort(data, feeds)
    m = load_onnx(data) if model is None else model
    for _ in range(calls):
        _same(m.run(dict(feeds)), ref, tol)
    _same(pickle.loads(pickle.dumps(m)).run(dict(feeds)), ref, tol)
    return ref


def _counter_body(dtype=F32, scan_shape=None, cond="keep"):
    """x_out = x_in * a + cast(i); cond_out: cond_in passed on ("keep"), or x_out's sum <
    limit ("less"); scans: x_out * 2 (as x_in's rank), cast(i) (0-d)."""
    a = _const("a", 0.9, np.float64 if dtype == F64 else np.float32)
    limit = _const("limit", 40.0, np.float64 if dtype == F64 else np.float32)
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=dtype),
             helper.make_node("Mul", ["x_in", "a"], ["xa"]),
             helper.make_node("Add", ["xa", "fi"], ["x_out"]),
             helper.make_node("Add", ["x_out", "x_out"], ["y"])]
    if cond == "keep":
        cond_out = "cond_in"
    else:
        nodes += [helper.make_node("ReduceSum", ["x_out"], ["s"], keepdims=0),
                  helper.make_node("Less", ["s", "limit"], ["cond_out"])]
        cond_out = "cond_out"
    return _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), ("x_in", dtype, None)],
                 [(cond_out, BOOL, []), ("x_out", dtype, None), ("y", dtype, scan_shape),
                  ("fi", dtype, [])], [a, limit])


def _loop_model(body, m=True, c=True, opset=17, dtype=F32, xshape=(2, 3)):
    ins = [("x0", dtype, list(xshape))]
    li = []
    if m:
        ins.append(("M", I64, []))
    li.append("M" if m else "")
    if c:
        ins.append(("c", BOOL, []))
    li.append("c" if c else "")
    node = helper.make_node("Loop", li + ["x0"], ["xf", "ys", "fis"], name="loop", body=body)
    return _model([node], ins, [("xf", dtype), ("ys", dtype), ("fis", dtype)], opset=opset)


def _x(shape=(2, 3), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------- trip count / cond
@pytest.mark.parametrize("trips", [0, 1, 2, 5, -3])
def test_trip_count_only(trips):
    """input (M, ""): a for loop of M iterations (a negative M: none, as ONNX Runtime)."""
    data = _loop_model(_counter_body(), c=False)
    ref = _check(data, {"x0": _x(), "M": np.array(trips, np.int64)})
    assert ref["ys"].shape[0] == max(trips, 0)


@pytest.mark.parametrize("start", [True, False])
def test_condition_only(start):
    """input ("", cond): a while loop that the body's condition ends (after 5
    iterations here), or none at all for a false cond."""
    data = _loop_model(_counter_body(cond="less"), m=False)
    x = np.ones((2, 3), np.float32)
    ref = _check(data, {"x0": x, "c": np.array(start)})
    assert ref["ys"].shape[0] == (5 if start else 0)


@pytest.mark.parametrize("trips,start", [(3, True), (9, True), (0, True), (4, False)])
def test_trip_count_and_condition(trips, start):
    """input (M, cond): whichever ends it first (the condition after 5 iterations)."""
    data = _loop_model(_counter_body(cond="less"))
    x = np.ones((2, 3), np.float32)
    ref = _check(data, {"x0": x, "M": np.array(trips, np.int64), "c": np.array(start)})
    assert ref["ys"].shape[0] == (min(trips, 5) if start else 0)


def test_no_trip_count_no_condition_ends_by_the_body_condition():
    """input ("", ""): ONNX Runtime reads the body's condition (the specification says
    it is ignored there, which would make the loop endless): fastrnn does as ORT; and
    with M but no cond too."""
    data = _loop_model(_counter_body(cond="less"), m=False, c=False)
    ref = _check(data, {"x0": np.ones((2, 3), np.float32)})
    assert ref["ys"].shape[0] == 5
    data = _loop_model(_counter_body(cond="less"), c=False)
    ref = _check(data, {"x0": np.ones((2, 3), np.float32), "M": np.array(8, np.int64)})
    assert ref["ys"].shape[0] == 5


@pytest.mark.parametrize("shape", [None, [2, 3], ["N", 3], [2, -1]])
def test_zero_iterations_scan_shape_as_onnxruntime(shape):
    """No iteration (M = 0, or cond false): the carried values are the initial ones; a
    scan output is empty, of shape (0, *declared shape) (sizes not given: 0; no shape
    declared: (0,)), of its declared type.  (Where a body output declares no shape,
    ONNX Runtime also uses what its shape inference finds through the body; fastrnn
    reads the declaration only.  tf2onnx declares them.)"""
    data = _loop_model(_counter_body(scan_shape=shape))
    want = (0,) + tuple(d if isinstance(d, int) and d > 0 else 0 for d in shape or ())
    for feeds in ({"M": np.array(0, np.int64), "c": np.array(True)},
                  {"M": np.array(5, np.int64), "c": np.array(False)}):
        ref = _check(data, dict(feeds, x0=_x()))
        assert ref["ys"].shape == want and ref["fis"].shape == (0,)
        np.testing.assert_array_equal(ref["xf"], _x())


def test_zero_iteration_results_are_the_callers_own():
    """With no iteration the final carried value is the initial one: returned as a copy
    (never the caller's feed, nor the model's constant), also from an unpickled model."""
    body = _counter_body()
    node = helper.make_node("Loop", ["M", "", "x0", "k"], ["xf", "kf", "ys", "fis"],
                            body=_body(body.node, [("i", I64, []), ("cond_in", BOOL, []),
                                                   "x_in", "k_in"],
                                       [("cond_in", BOOL, []), "x_out", "k_in", "y",
                                        ("fi", F32, [])], body.initializer))
    data = _model([node], [("x0", F32, [2, 3]), ("M", I64, [])], ["xf", "kf", "ys", "fis"],
                  [_const("k", [1.0, 2.0])])
    x = _x()
    for m in (load_onnx(data), pickle.loads(pickle.dumps(load_onnx(data)))):
        for _ in range(3):
            res = m.run({"x0": x, "M": np.array(0, np.int64)})
            np.testing.assert_array_equal(res["kf"], [1, 2])
            assert not np.shares_memory(res["xf"], x) and res["xf"].flags.writeable
            assert res["kf"].flags.writeable
            res["kf"][:] = 7        # (not the model's constant)
    # a body constant given back as a carried value (and after pickling: the arrays
    # unpickled are made read-only again)
    body = _body([], [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "kb"], [_const("kb", [3.0, 4.0])])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf"], body=body)
    data = _model([node], [("v", F32, [2]), ("M", I64, [])], ["vf"])
    for m in (load_onnx(data), pickle.loads(pickle.dumps(load_onnx(data)))):
        for _ in range(3):
            res = m.run({"v": np.zeros(2, np.float32), "M": np.array(2, np.int64)})
            np.testing.assert_array_equal(res["vf"], [3, 4])
            res["vf"][:] = 7


# ----------------------------------------------------------------------- scan outputs
@pytest.mark.parametrize("dtype", [F32, F64])
def test_scan_outputs_of_several_ranks_and_types(dtype):
    """Scan outputs of a 0-d, 1-d and 3-d value, an int64 one (the iteration number) and
    a bool one, stacked on a new axis 0; float32 and float64."""
    npdt = np.float64 if dtype == F64 else np.float32
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=dtype),
             helper.make_node("Add", ["v_in", "fi"], ["v_out"]),
             helper.make_node("ReduceSum", ["v_out"], ["s0"], keepdims=0),
             helper.make_node("ReduceSum", ["v_out"], ["s1"], axes=[0, 2], keepdims=0),
             helper.make_node("Unsqueeze", ["v_out"], ["s3"], axes=[0]),
             helper.make_node("Identity", ["i"], ["si"]),
             helper.make_node("Greater", ["s0", "fz"], ["sb"])]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), ("v_in", dtype)],
                 [("cond_in", BOOL, []), ("v_out", dtype), ("s0", dtype), ("s1", dtype),
                  ("s3", dtype), ("si", I64), ("sb", BOOL)],
                 [_const("fz", 0.0, npdt)])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "a", "b", "c", "d", "e"],
                            body=body)
    data = _model([node], [("v", dtype, [2, 3, 4]), ("M", I64, [])],
                  [("vf", dtype), ("a", dtype), ("b", dtype), ("c", dtype), ("d", I64),
                   ("e", BOOL)], opset=11)
    ref = _check(data, {"v": _x((2, 3, 4), npdt), "M": np.array(4, np.int64)})
    assert [ref[k].shape for k in "abcde"] == [(4,), (4, 3), (4, 1, 2, 3, 4), (4,), (4,)]


def test_scan_values_of_different_shapes_are_an_error():
    """A scan output whose value changes shape from one iteration to the next (ONNX
    Runtime refuses it too): a ValueError naming the Loop node and the output."""
    nodes = [helper.make_node("Concat", ["v_in", "one"], ["v_out"], axis=0)]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out", "v_out"], [_const("one", [1.0])])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "vs"], name="grow", body=body)
    data = _model([node], [("v", F32, [1]), ("M", I64, [])], ["vf", "vs"])
    with pytest.raises(Exception):
        _ort(data, {"v": np.ones(1, np.float32), "M": np.array(3, np.int64)})
    m = load_onnx(data)
    with pytest.raises(ValueError, match=r"^g: node 0 Loop 'grow': scan output 0 .*"
                                         r"iteration 1 gave float32 of shape \(3,\)"):
        m.run({"v": np.ones(1, np.float32), "M": np.array(3, np.int64)})
    # (carried values may change shape: as ONNX Runtime)
    ok = m.run({"v": np.ones(1, np.float32), "M": np.array(1, np.int64)})
    assert ok["vf"].shape == (2,) and ok["vs"].shape == (1, 2)


def test_carried_values_swapped_each_iteration():
    """(a, b) -> (b, a + b): the body's outputs become its inputs all at once."""
    nodes = [helper.make_node("Add", ["a_in", "b_in"], ["ab"]),
             helper.make_node("Identity", ["b_in"], ["b_id"])]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "a_in", "b_in"],
                 [("cond_in", BOOL, []), "b_in", "ab", "a_in"])
    node = helper.make_node("Loop", ["M", "", "a", "b"], ["af", "bf", "as"], body=body)
    data = _model([node], [("a", F32, [2]), ("b", F32, [2]), ("M", I64, [])],
                  ["af", "bf", "as"])
    ref = _check(data, {"a": np.array([0, 2], np.float32), "b": np.array([1, 1], np.float32),
                        "M": np.array(7, np.int64)})
    np.testing.assert_array_equal(ref["af"], [13, 29])
    np.testing.assert_array_equal(ref["as"][:, 0], [0, 1, 1, 2, 3, 5, 8])


def test_body_outputs_that_are_inputs_constants_and_outer_values():
    """Body outputs naming a body input (the iteration number, a carried value) or a
    body initializer directly, with no node between; and an outer value (ONNX Runtime
    refuses that one: "an outer scope value being returned directly"; fastrnn runs it)."""
    body = _body([], [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_in", ("i", I64, []), "k"],
                 [_const("k", [3.0, 4.0])])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "is", "ks"], body=body)
    data = _model([node], [("v", F32, [2]), ("M", I64, [])], ["vf", ("is", I64), "ks"])
    feeds = {"v": _x((2,)), "M": np.array(3, np.int64)}
    ref = _ort(data, feeds)
    got = load_onnx(data).run(feeds)
    # (ONNX Runtime 1.32 gives [3, 3, 3] for the iteration number returned directly: its
    # counter, changed in place after being stacked; through an Identity, [0, 1, 2])
    np.testing.assert_array_equal(got["is"], [0, 1, 2])
    del ref["is"], got["is"]
    _same(got, ref)
    body = _body([], [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_in", "w"])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "ws"], body=body)
    data = _model([node], [("v", F32, [2]), ("w", F32, [3]), ("M", I64, [])], ["vf", "ws"])
    feeds = {"v": _x((2,)), "w": _x((3,), seed=1), "M": np.array(3, np.int64)}
    with pytest.raises(Exception, match="outer scope value being returned directly"):
        _ort(data, feeds)
    got = load_onnx(data).run(feeds)
    np.testing.assert_array_equal(got["ws"], np.stack([feeds["w"]] * 3))
    np.testing.assert_array_equal(got["vf"], feeds["v"])


# ------------------------------------------------------------------ outer-scope values
def _tf2onnx_like(opset=13, dtype=F32):
    """A tf2onnx-shaped SimpleRNN loop: the body reads step t of an outer Transpose's
    output (x time-major) with Gather, the weights W (an outer initializer, read only in
    the body), R and the bias as carried values it passes on unchanged, the step count
    from the input's shape; h's steps are a scan output."""
    npdt = np.float64 if dtype == F64 else np.float32
    rng = np.random.default_rng(3)
    W = _const("W", rng.uniform(-0.5, 0.5, (4, 5)), npdt)
    R = _const("R", rng.uniform(-0.5, 0.5, (5, 5)), npdt)
    b = _const("bias", rng.uniform(-0.5, 0.5, (5,)), npdt)
    one = _const("one", 1, np.int64)
    bnodes = [helper.make_node("Gather", ["xt", "t_in"], ["x_t"]),
              helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
              helper.make_node("MatMul", ["h_in", "r_in"], ["hr"]),
              helper.make_node("Add", ["xw", "b_in"], ["xwb"]),
              helper.make_node("Add", ["xwb", "hr"], ["pre"]),
              helper.make_node("Tanh", ["pre"], ["h_out"]),
              helper.make_node("Add", ["t_in", "one"], ["t_out"]),
              helper.make_node("Less", ["t_out", "n_in"], ["cond_out"])]
    body = _body(bnodes, [("i", I64, []), ("cond_in", BOOL, []), ("t_in", I64, []),
                          ("h_in", dtype), ("n_in", I64, []), ("r_in", dtype),
                          ("b_in", dtype)],
                 [("cond_out", BOOL, []), ("t_out", I64, []), ("h_out", dtype),
                  ("n_in", I64, []), ("r_in", dtype), ("b_in", dtype), ("h_out", dtype)],
                 [one])
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("Shape", ["xt"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["n"]),
             helper.make_node("Gather", ["sh", "one"], ["bsz"]),
             helper.make_node("Unsqueeze", ["bsz"] + (["zero1"] if opset >= 13 else []),
                              ["bsz1"], **({} if opset >= 13 else {"axes": [0]})),
             helper.make_node("Concat", ["bsz1", "five"], ["hshape"], axis=0),
             helper.make_node("ConstantOfShape", ["hshape"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, npdt))),
             helper.make_node("Less", ["zero", "n"], ["go"]),
             helper.make_node("Loop", ["", "go", "zero", "h0", "n", "R", "bias"],
                              ["tf", "hf", "nf", "rf", "bf", "hs"], name="rnn/while_loop",
                              body=body),
             helper.make_node("Transpose", ["hs"], ["y"], perm=[1, 0, 2])]
    inits = [W, R, b, one, _const("zero", 0, np.int64), _const("zero1", [0], np.int64),
             _const("five", [5], np.int64)]
    return _model(nodes, [("x", dtype, ["B", "T", 4])], [("y", dtype), ("hf", dtype)],
                  inits, opset)


@pytest.mark.parametrize("opset", [9, 11, 13, 16, 19, 21])
def test_outer_values_opsets(opset):
    """Outer values read in the body: a graph input's Transpose (a node output), an
    initializer read only there (W), constants; shape-derived trip count; opsets 9
    (Loop-1) to 21, batch and length of any size."""
    data = _tf2onnx_like(opset)
    m = load_onnx(data)
    for B, T in ((2, 7), (1, 1), (3, 12), (1, 7)):
        _check(data, {"x": _x((B, T, 4), seed=B * T)}, model=m)
    assert "W" in m._consts      # (read by the body only: kept)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_float32_and_float64(dtype):
    data = _tf2onnx_like(13, dtype)
    npdt = np.float64 if dtype == F64 else np.float32
    ref = _check(data, {"x": _x((3, 6, 4), npdt)}, tol=1e-12 if dtype == F64 else TOL)
    assert ref["y"].dtype == npdt


def test_outer_graph_input_read_in_body_and_outputs_subset():
    """The body reads a graph input directly; asking for an output the Loop does not
    make does not run it (liveness through the body's reads)."""
    nodes = [helper.make_node("Mul", ["v_in", "scale"], ["v_out"])]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out"])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf"], body=body)
    other = helper.make_node("Neg", ["v"], ["nv"])
    data = _model([node, other], [("v", F32, [3]), ("scale", F32, [3]), ("M", I64, None)],
                  ["vf", "nv"])
    feeds = {"v": _x((3,)), "scale": _x((3,), seed=1), "M": np.array(3, np.int64)}
    _check(data, feeds)
    m = load_onnx(data)
    bad = dict(feeds, M=np.array([1, 2], np.int64))     # (the Loop would refuse it)
    np.testing.assert_array_equal(m.run(bad, outputs=["nv"])["nv"], -feeds["v"])
    with pytest.raises(ValueError, match="trip count M must be one integer"):
        m.run(bad)


def test_loop_value_decides_shapes_in_kept_programs():
    """A Shape of a scan output follows the trip count's value, not only the feeds'
    shapes: two calls with feeds of the same shapes and different M."""
    body = _counter_body(scan_shape=[2, 3])
    node = helper.make_node("Loop", ["M", "", "x0"], ["xf", "ys", "fis"], body=body)
    shape = helper.make_node("Shape", ["ys"], ["s"])
    data = _model([node, shape], [("x0", F32, [2, 3]), ("M", I64, [])], ["xf", ("s", I64)])
    m = load_onnx(data)
    for n in (3, 5, 0, 5, 2):
        feeds = {"x0": _x(), "M": np.array(n, np.int64)}
        _same(m.run(feeds), _ort(data, feeds))
        assert list(m.run(feeds)["s"]) == [n, 2, 3]


def test_body_constants_folded_once_and_outer_constant_kept():
    """A body node of constants only (an outer initializer and a body one) is computed
    at load; the outer initializer read only by the body stays in the model."""
    nodes = [helper.make_node("Add", ["k_outer", "k_body"], ["kk"]),
             helper.make_node("Mul", ["v_in", "kk"], ["v_out"])]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out"], [_const("k_body", [0.5, 1.0])])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf"], body=body)
    data = _model([node], [("v", F32, [2]), ("M", I64, [])], ["vf"],
                  [_const("k_outer", [1.0, -1.0])])
    m = load_onnx(data)
    loop = m._steps[0][1][0]
    assert [st[1][1] for st in loop.body.steps] == ["Mul"]
    np.testing.assert_array_equal(loop.body.consts["kk"], [1.5, 0.0])
    assert not loop.body.consts["kk"].flags.writeable
    _check(data, {"v": _x((2,)), "M": np.array(3, np.int64)}, model=m)


def test_body_names_hide_outer_values_of_the_same_name():
    """A body initializer and a body node output named as outer values: inside the body
    the body's own (lexical scope), outside the outer ones."""
    body = _body([helper.make_node("Mul", ["v_in", "k"], ["w"]),
                  helper.make_node("Add", ["w", "k"], ["v_out"])],
                 [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out"], [_const("k", [2.0, 3.0])])
    nodes = [helper.make_node("Loop", ["M", "", "v"], ["vf"], body=body),
             helper.make_node("Add", ["vf", "w"], ["y0"]),
             helper.make_node("Add", ["y0", "k"], ["y"])]
    data = _model(nodes, [("v", F32, [2]), ("w", F32, [2]), ("M", I64, [])], ["y"],
                  [_const("k", [10.0, 100.0])])
    feeds = {"v": np.ones(2, np.float32), "w": np.array([0.5, 0.25], np.float32),
             "M": np.array(2, np.int64)}
    got = load_onnx(data).run(feeds)
    v = np.ones(2)
    for _ in range(2):
        v = v * [2, 3] + [2, 3]
    np.testing.assert_allclose(got["y"], v + [0.5, 0.25] + [10, 100], rtol=1e-6)
    try:
        ref = _ort(data, feeds)
    except Exception as e:      # (ONNX Runtime refuses names shadowing outer ones)
        assert "w" in str(e) or "k" in str(e), e
    else:
        _same(got, ref)


def test_loop_of_constant_inputs_is_not_run_at_load():
    """A Loop whose inputs are all constants is never computed at load (its trip count
    is its own: it may be endless or fail): the model loads, an output not needing it
    runs, and the Loop's own error comes when it runs (at iteration 5: a Gather past a
    table of 5 rows)."""
    body = _body([helper.make_node("Gather", ["tbl", "i"], ["row"]),
                  helper.make_node("Add", ["v_in", "row"], ["v_out"])],
                 [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out"])
    nodes = [helper.make_node("Loop", ["M", "", "v0"], ["vf"], name="L", body=body),
             helper.make_node("Neg", ["x"], ["y"])]
    inits = [_const("tbl", np.ones((5, 2))), _const("M", 8, np.int64),
             _const("v0", [0.0, 0.0])]
    m = load_onnx(_model(nodes, [("x", F32, [2])], ["vf", "y"], inits))
    assert [s[1][1] for s in m._steps] == ["Loop", "Neg"]
    np.testing.assert_array_equal(m.run({"x": np.ones(2, np.float32)}, outputs=["y"])["y"],
                                  [-1, -1])
    with pytest.raises(IndexError, match=r"^g: node 0 Loop 'L': iteration 5, body node 0 "
                                         r"Gather ''"):
        m.run({"x": np.ones(2, np.float32)})


def test_invariant_steps_run_once_a_call(monkeypatch):
    """Body steps reading only what does not change between iterations (outer values,
    constants, carried values passed on unchanged) run once per call of the Loop,
    before its first iteration (none: not at all); the others every iteration."""
    from fastrnn.io import onnx as fonnx
    calls = {"Sqrt": 0, "Softsign": 0}
    for op in calls:
        def spy(i, a, o, op=op, real=fonnx._SIMPLE_OPS[op]):
            calls[op] += 1
            return real(i, a, o)
        monkeypatch.setitem(fonnx._SIMPLE_OPS, op, spy)
    nodes = [helper.make_node("Sqrt", ["k_in"], ["sk"]),          # (k passed on unchanged)
             helper.make_node("Sqrt", ["w"], ["sw"]),             # (an outer input)
             helper.make_node("Softsign", ["v_in"], ["sv"]),
             helper.make_node("Add", ["sv", "sk"], ["a"]),
             helper.make_node("Add", ["a", "sw"], ["v_out"])]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "v_in", "k_in"],
                 [("cond_in", BOOL, []), "v_out", "k_in"])
    node = helper.make_node("Loop", ["M", "", "v", "k"], ["vf", "kf"], body=body)
    data = _model([node], [("v", F32, [2]), ("k", F32, [2]), ("w", F32, [2]),
                           ("M", I64, [])], ["vf", "kf"])
    m = load_onnx(data)
    feeds = {"v": _x((2,)), "k": np.array([4.0, 9.0], np.float32),
             "w": np.array([1.0, 16.0], np.float32), "M": np.array(5, np.int64)}
    for _ in range(2):
        calls.update(Sqrt=0, Softsign=0)
        got = m.run(feeds)
        assert calls == {"Sqrt": 2, "Softsign": 5}
    _same(got, _ort(data, feeds))
    calls.update(Sqrt=0, Softsign=0)
    m.run(dict(feeds, M=np.array(0, np.int64)))
    assert calls == {"Sqrt": 0, "Softsign": 0}


def test_nested_loop():
    """A Loop in a Loop's body: the inner one reads the outer one's iteration number and
    carried value and an outer graph input; its scan output is stacked by the outer."""
    inner = _body([helper.make_node("Cast", ["j"], ["fj"], to=F32),
                   helper.make_node("Cast", ["i"], ["fi"], to=F32),
                   helper.make_node("Mul", ["fi", "fj"], ["ij"]),
                   helper.make_node("Add", ["u_in", "ij"], ["u1"]),
                   helper.make_node("Add", ["u1", "w"], ["u_out"]),
                   helper.make_node("Mul", ["u_out", "v_in"], ["z"])],
                  [("j", I64, []), ("c2", BOOL, []), "u_in"],
                  [("c2", BOOL, []), "u_out", "z"], name="inner")
    outer = _body([helper.make_node("Add", ["i", "two"], ["n_in"]),
                   helper.make_node("Loop", ["n_in", "", "v_in"], ["uf", "zs"],
                                    name="inner_loop", body=inner),
                   helper.make_node("ReduceSum", ["zs"], ["zsum"], axes=[0], keepdims=0),
                   helper.make_node("Add", ["uf", "zsum"], ["v_out"])],
                  [("i", I64, []), ("c1", BOOL, []), "v_in"],
                  [("c1", BOOL, []), "v_out", "v_out"],
                  [_const("two", 2, np.int64)], name="outer")
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "vs"], name="outer_loop",
                            body=outer)
    data = _model([node], [("v", F32, [3]), ("w", F32, [3]), ("M", I64, [])],
                  ["vf", "vs"], opset=11)
    m = load_onnx(data)
    for n in (0, 1, 4):
        _check(data, {"v": _x((3,)) * 0.1, "w": _x((3,), seed=2) * 0.1,
                      "M": np.array(n, np.int64)}, model=m, tol=1e-5)


def test_loop_beside_an_lstm_node():
    """A model with an LSTM node (fastrnn's layer) whose Y a Loop then averages step by
    step (the LSTM's initial state also computed by a Loop)."""
    rng = np.random.default_rng(5)
    H, I = 4, 3
    W = _const("W", rng.uniform(-0.5, 0.5, (1, 4 * H, I)))
    R = _const("R", rng.uniform(-0.5, 0.5, (1, 4 * H, H)))
    B = _const("B", rng.uniform(-0.5, 0.5, (1, 8 * H)))
    avg = _body([helper.make_node("Gather", ["y3", "i"], ["yt"]),
                 helper.make_node("Add", ["acc_in", "yt"], ["acc_out"]),
                 helper.make_node("Mul", ["acc_out", "half"], ["sc"])],
                [("i", I64, []), ("c", BOOL, []), "acc_in"],
                [("c", BOOL, []), "acc_out", "sc"], [_const("half", 0.5)])
    init = _body([helper.make_node("Add", ["h_in", "tenth"], ["h_out"])],
                 [("i", I64, []), ("c", BOOL, []), "h_in"], [("c", BOOL, []), "h_out"],
                 [_const("tenth", 0.1)])
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["T"]),
             helper.make_node("Gather", ["sh", "one"], ["Bsz"]),
             helper.make_node("Unsqueeze", ["Bsz", "zero1"], ["B1"]),
             helper.make_node("Concat", ["one1", "B1", "h"], ["hshape"], axis=0),
             helper.make_node("ConstantOfShape", ["hshape"], ["z"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Loop", ["three", "", "z"], ["h0"], body=init),
             helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                              hidden_size=H),
             helper.make_node("Squeeze", ["Y", "one1"], ["y3"]),
             helper.make_node("Expand", ["zf", "hshape"], ["acc0"]),
             helper.make_node("Loop", ["T", "", "acc0"], ["acc", "scs"], body=avg)]
    inits = [W, R, B, _const("zero", 0, np.int64), _const("one", 1, np.int64),
             _const("zero1", [0], np.int64), _const("one1", [1], np.int64),
             _const("h", [H], np.int64), _const("three", 3, np.int64), _const("zf", 0.0)]
    data = _model(nodes, [("x", F32, ["T", "B", I])], ["acc", "scs", "Y_h"], inits, 14)
    m = load_onnx(data)
    assert len(m.recurrent_layers) == 1
    for T, Bs in ((5, 2), (1, 1), (8, 3)):
        _check(data, {"x": _x((T, Bs, I), seed=T)}, model=m, tol=1e-5)


def test_lstm_node_inside_a_loop_body():
    """An LSTM node in a Loop's body run one step an iteration (an autoregressive
    decoder's shape: the state carried, W an outer initializer, R and B the body's own):
    as ONNX Runtime, and as the same LSTM node run over the whole sequence; the body's
    layer made at load, kept across calls and pickling."""
    rng = np.random.default_rng(7)
    H, I = 5, 3
    W = _const("W", rng.uniform(-0.6, 0.6, (1, 4 * H, I)))
    R = _const("R", rng.uniform(-0.6, 0.6, (1, 4 * H, H)))
    Bb = _const("Bb", rng.uniform(-0.6, 0.6, (1, 8 * H)))
    body = _body([helper.make_node("Gather", ["x", "i"], ["xt"]),
                  helper.make_node("Unsqueeze", ["xt", "zero1"], ["xt1"]),
                  helper.make_node("LSTM", ["xt1", "W", "R", "Bb", "", "h_in", "c_in"],
                                   ["y", "h_out", "c_out"], hidden_size=H),
                  helper.make_node("Squeeze", ["h_out", "zero1"], ["hs"])],
                 [("i", I64, []), ("cond_in", BOOL, []), "h_in", "c_in"],
                 [("cond_in", BOOL, []), "h_out", "c_out", ("hs", F32, [2, H])], [R, Bb])
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["T"]),
             helper.make_node("Loop", ["T", "", "h0", "c0"], ["hf", "cf", "hseq"],
                              name="decoder", body=body),
             helper.make_node("LSTM", ["x", "W", "Ro", "Bo", "", "h0", "c0"],
                              ["Y", "Yh", "Yc"], hidden_size=H)]
    inits = [W, _const("zero", 0, np.int64), _const("zero1", [0], np.int64),
             _const("Ro", numpy_helper.to_array(R)), _const("Bo", numpy_helper.to_array(Bb))]
    data = _model(nodes, [("x", F32, ["T", 2, I]), ("h0", F32, [1, 2, H]),
                          ("c0", F32, [1, 2, H])], ["hf", "cf", "hseq", "Y", "Yh"], inits)
    m = load_onnx(data)
    loop = m._steps[2][1][0]
    rec = [st for st in loop.body.steps if st[0] == "rnn"][0][1]
    layer = rec.layer
    assert layer is not None
    # (the layer keyed by the arrays the body step gets: the model's copy of W, the
    # body's own R and B; never the file's bytes)
    assert rec._made[0][0] is m._consts["W"] and rec._made[0][1] is loop.body.consts["R"]
    assert not loop.body.consts["R"].flags.writeable
    for T in (6, 1, 0):
        feeds = {"x": _x((T, 2, I), seed=T), "h0": _x((1, 2, H), seed=1) * 0.3,
                 "c0": _x((1, 2, H), seed=2) * 0.3}
        got = _check(data, feeds, model=m, tol=1e-5)
        if T:
            np.testing.assert_allclose(got["hseq"], got["Y"][:, 0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got["hf"], got["Yh"], rtol=1e-5, atol=1e-6)
    assert [st for st in loop.body.steps if st[0] == "rnn"][0][1].layer is layer


# ------------------------------------------------------------------------ at run time
def test_loop_limit_ends_an_endless_loop():
    """A Loop whose condition never turns false and that has no M (ONNX Runtime runs on
    forever): a ValueError naming it after the model's loop_limit iterations; with M,
    M bounds it whatever the limit; None: no limit.  (The body reads row i of a table of
    60 rows: past the limit, an IndexError at iteration 60, never an endless test.)"""
    body = _body([helper.make_node("Gather", ["tbl", "i"], ["row"]),
                  helper.make_node("Add", ["v_in", "row"], ["v_out"])],
                 [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("cond_in", BOOL, []), "v_out", "v_out"])
    tbl = _const("tbl", np.arange(120).reshape(60, 2))

    def model(m):
        node = helper.make_node("Loop", ["M" if m else "", "c", "v"], ["vf", "vs"],
                                name="loop", body=body)
        return load_onnx(_model([node], [("v", F32, [2]), ("c", BOOL, [])]
                                + ([("M", I64, [])] if m else []), ["vf", "vs"], [tbl]))
    feeds = {"v": np.zeros(2, np.float32), "c": np.array(True)}
    m = model(False)
    assert m.loop_limit == 1 << 20
    m.loop_limit = 50
    with pytest.raises(ValueError, match=r"^g: node 0 Loop 'loop': ran 50 iterations and "
                                         r"its condition has not ended it.*loop_limit"):
        m.run(feeds)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.loop_limit == 50
    with pytest.raises(ValueError, match="ran 50 iterations"):
        m2.run(feeds)
    m.loop_limit = None
    assert m.loop_limit is None
    with pytest.raises(IndexError, match=r"iteration 60, body node 0 Gather"):
        m.run(feeds)
    # None kept by pickling and copying (the copy had no limit at all: an AttributeError)
    import copy
    for m2 in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert m2.loop_limit is None
        with pytest.raises(IndexError, match=r"iteration 60, body node 0 Gather"):
            m2.run(feeds)
    m = model(True)
    m.loop_limit = 5
    got = m.run(dict(feeds, M=np.array(9, np.int64)))
    assert got["vs"].shape == (9, 2)
    np.testing.assert_array_equal(got["vf"], np.arange(18).reshape(9, 2).sum(0))
    for bad in (0, -1, 2.5, True, "9"):
        with pytest.raises(ValueError, match="loop_limit must be a positive integer"):
            m.loop_limit = bad


@pytest.mark.parametrize("feeds,match", [
    ({"M": np.array(2.0, np.float32)}, r"the trip count M must be one integer \(int64\), "
                                       r"got float32"),
    ({"M": np.array([1, 2], np.int64)}, r"the trip count M must be one integer.*shape "
                                        r"\(2,\)"),
    ({"c": np.array(1.0, np.float32)}, r"the condition 'cond' must be one bool, got float32"),
    ({"c": np.array([True, False])}, r"the condition 'cond' must be one bool, got bool of "
                                     r"shape \(2,\)"),
])
def test_bad_trip_count_or_condition(feeds, match):
    """M not one integer or cond not one bool (ONNX Runtime refuses such a model at load
    by the declared types): a ValueError naming the Loop node."""
    full = dict({"x0": _x(), "M": np.array(2, np.int64), "c": np.array(True)}, **feeds)
    types = {np.dtype(np.float32): F32, np.dtype(np.int64): I64, np.dtype(bool): BOOL}
    ins = [(n, types[v.dtype], None) for n, v in full.items()]
    node = helper.make_node("Loop", ["M", "c", "x0"], ["xf", "ys", "fis"], name="L",
                            body=_counter_body())
    m = load_onnx(_model([node], ins, ["xf", "ys", "fis"]))
    with pytest.raises(ValueError, match=r"^g: node 0 Loop 'L': " + match):
        m.run(full)


def test_body_condition_not_bool_is_an_error():
    nodes = [helper.make_node("ReduceSum", ["v_in"], ["s"], keepdims=0)]
    body = _body(nodes, [("i", I64, []), ("cond_in", BOOL, []), "v_in"],
                 [("s", F32, []), "v_in"])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf"], name="L", body=body)
    m = load_onnx(_model([node], [("v", F32, [2]), ("M", I64, [])], ["vf"]))
    with pytest.raises(ValueError, match=r"^g: node 0 Loop 'L': iteration 0: the body's "
                                         r"condition output \(output 0\) must be one bool, "
                                         r"got float32"):
        m.run({"v": _x((2,)), "M": np.array(3, np.int64)})


def test_errors_in_the_body_name_iteration_and_node():
    """An op failing at iteration 3 (a Gather past the data): the error names the model,
    the Loop node, the iteration and the body node, in both calls (the kept program)."""
    data = _tf2onnx_like()
    x = _x((2, 3, 4))
    # the same graph but a trip count over the input's steps: Gather fails at t = 3
    g = onnx.load_from_string(data)
    loop = [n for n in g.graph.node if n.op_type == "Loop"][0]
    loop.input[0] = "six"
    loop.input[1] = ""
    g.graph.initializer.append(_const("six", 6, np.int64))
    body = [a for a in loop.attribute if a.name == "body"][0].g
    cond = [n for n in body.node if n.op_type == "Less"][0]
    cond.op_type = "LessOrEqual"            # (never false before t = 6)
    bad = g.SerializeToString()
    m = load_onnx(bad)
    for _ in range(2):
        with pytest.raises(IndexError, match=r"^g: node 8 Loop 'rnn/while_loop': iteration "
                                             r"3, body node 0 Gather '': .*out of range"):
            m.run({"x": x})
    with pytest.raises(Exception):
        _ort(bad, {"x": x})


# ----------------------------------------------------------------------- at load time
def test_unsupported_op_in_a_body_is_named_with_the_loop():
    """An op fastrnn does not run inside a Loop body (and inside a nested one): the
    LoadError names it, its node and the Loop node(s) around it, with the top level's."""
    inner = _body([helper.make_node("Hardmax", ["u_in"], ["u_out"], name="hm_inner")],
                  [("j", I64, []), ("c", BOOL, []), "u_in"], [("c", BOOL, []), "u_out"])
    body = _body([helper.make_node("Hardmax", ["v_in"], ["h"], name="hm"),
                  helper.make_node("Loop", ["M", "", "h"], ["v_out"], name="inner",
                                   body=inner),
                  helper.make_node("Det", ["v_out"], ["d"], name="det")],
                 [("i", I64, []), ("c", BOOL, []), "v_in"], [("c", BOOL, []), "v_out"])
    nodes = [helper.make_node("Loop", ["M", "", "v"], ["vf"], name="model/rnn/while_loop",
                              body=body),
             helper.make_node("LpNormalization", ["vf"], ["y"], name="lpn")]
    data = _model(nodes, [("v", F32, [2, 2]), ("M", I64, [])], ["y"])
    with pytest.raises(LoadError) as ei:
        load_onnx(data)
    msg = str(ei.value)
    assert "['Det', 'Hardmax', 'LpNormalization']" in msg, msg
    assert "Hardmax: 'hm' (in the body of Loop 'model/rnn/while_loop')" in msg, msg
    assert "Det: 'det' (in the body of Loop 'model/rnn/while_loop')" in msg, msg
    assert "LpNormalization: 'lpn'" in msg and "Keras" not in msg
    body = _body([helper.make_node("Loop", ["M", "", "v_in"], ["v_out"], name="inner",
                                   body=inner)],
                 [("i", I64, []), ("c", BOOL, []), "v_in"], [("c", BOOL, []), "v_out"])
    nodes[0] = helper.make_node("Loop", ["M", "", "v"], ["y"], name="outer", body=body)
    with pytest.raises(LoadError, match=r"Hardmax: 'hm_inner' \(in the body of Loop "
                                        r"'inner' \(in the body of Loop 'outer'\)\)"):
        load_onnx(_model(nodes[:1], [("v", F32, [2, 2]), ("M", I64, [])], ["y"]))


def test_if_runs_and_a_malformed_scan_is_a_load_error_naming_it():
    then = _body([helper.make_node("Identity", ["x"], ["t"])], [], ["t"])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "z"], ["bb"]),
             helper.make_node("If", ["bb"], ["y"], then_branch=then, else_branch=then)]
    # (If runs: tests/test_onnx_if.py)
    data = _model(nodes, [("x", F32, [2])], ["y"], [_const("z", 0.0)])
    x = np.array([0.0, 2.0], np.float32)
    _same(load_onnx(data).run({"x": x}), _ort(data, {"x": x}))
    # (Scan runs: tests/test_onnx_scan.py; this one's body takes no input)
    scan = helper.make_node("Scan", ["x"], ["y"], name="sc", body=then, num_scan_inputs=1)
    with pytest.raises(LoadError, match=r"node 0 Scan 'sc': its body takes 0 inputs; a "
                                        r"Scan with 0 state\(s\) and 1 scan input\(s\) "
                                        r"needs 1") as ei:
        load_onnx(_model([scan], [("x", F32, [2])], ["y"]))
    assert "Keras" not in str(ei.value)


def _loop_node(body, ins=("M", "", "v"), outs=("vf",), name="L"):
    return helper.make_node("Loop", list(ins), list(outs), name=name, body=body)


_OK_BODY = dict(nodes=[helper.make_node("Neg", ["v_in"], ["v_out"])],
                ins=[("i", I64, []), ("c", BOOL, []), "v_in"],
                outs=[("c", BOOL, []), "v_out"])


@pytest.mark.parametrize("change,match", [
    (dict(ins=[("i", I64, []), ("c", BOOL, [])]), r"body takes 2 inputs; a Loop with 1 "
                                                  r"loop-carried value\(s\) needs 3"),
    (dict(ins=[("i", I64, []), ("c", BOOL, []), "v_in", "extra"]), r"body takes 4 inputs"),
    (dict(outs=[("c", BOOL, [])]), r"body gives 1 outputs; .* needs at least 2"),
    (dict(outs=[("c", BOOL, []), "v_out", "v_out"]), r"1 outputs; its body's 1 carried "
                                                     r"value\(s\) and 1 scan output\(s\) "
                                                     r"make 2"),
    (dict(nodes=[helper.make_node("Neg", ["nowhere"], ["v_out"])]),
     r"node 0 Loop 'L': body node 0 Neg '' reads 'nowhere', which no earlier node"),
    (dict(outs=[("c", BOOL, []), "never"]), r"body outputs \['never'\] are never computed"),
    (dict(nodes=[helper.make_node("Neg", ["v_in"], ["v_out"]),
                 helper.make_node("Concat", ["v_out"], ["cc"])]),
     r"node 0 Loop 'L': body node 1 Concat '' has no 'axis' attribute"),
    (dict(ins=[("i", I64, []), ("i", BOOL, []), "v_in"]), r"the inputs different ones"),
    (dict(nodes=[helper.make_node("SplitToSequence", ["v_in"], ["v_out"])]),
     r"body output\(s\) \['v_out'\] are sequences"),
])
def test_malformed_bodies_are_load_errors(change, match):
    spec = dict(_OK_BODY, **change)
    body = _body(spec["nodes"], spec["ins"], spec["outs"])
    data = _model([_loop_node(body)], [("v", F32, [2]), ("M", I64, [])], ["vf"])
    with pytest.raises(LoadError, match=match):
        load_onnx(data)


def test_loop_without_body_or_with_a_sequence_carried():
    node = helper.make_node("Loop", ["M", "", "v"], ["vf"], name="L")
    with pytest.raises(LoadError, match=r"node 0 Loop 'L': no 'body' graph attribute"):
        load_onnx(_model([node], [("v", F32, [2]), ("M", I64, [])], ["vf"]))
    body = _body(**{k: _OK_BODY[k] for k in ("nodes", "ins", "outs")})
    seq = helper.make_node("SplitToSequence", ["v"], ["sq"])
    with pytest.raises(LoadError, match=r"node 1 Loop 'L': input 2 'sq' is a sequence, but "
                                        r"Loop takes a tensor there"):
        load_onnx(_model([seq, _loop_node(body, ins=("M", "", "sq"))],
                         [("v", F32, [2]), ("M", I64, [])], ["vf"]))


def _ld(num, payload):
    """A length-delimited protobuf field (wire type 2)."""
    n, out = len(payload), bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes([num << 3 | 2]) + bytes(out) + payload


def _nested(depth):
    """A model of Loops nested ``depth`` deep (each M = 1; the innermost adds 1), written
    byte by byte (onnx's protobuf refuses messages nested so deep)."""
    vi = {n: _vi(*x).SerializeToString() for n, x in
          (("i", ("i", I64, [])), ("c", ("c", BOOL, [])), ("v_in", ("v_in", F32)),
           ("v_out", ("v_out", F32)))}
    io = b"".join(_ld(11, vi[n]) for n in ("i", "c", "v_in")) + \
        b"".join(_ld(12, vi[n]) for n in ("c", "v_out"))
    add = helper.make_node("Add", ["v_in", "one"], ["v_out"]).SerializeToString()
    graph = _ld(1, add) + _ld(2, b"body") + io

    def loop(g, ins, out, name):
        attr = _ld(1, b"body") + _ld(6, g) + b"\xa0\x01\x05"     # (type GRAPH)
        return b"".join(_ld(1, n) for n in ins) + _ld(2, out) + _ld(3, name) + \
            _ld(4, b"Loop") + _ld(5, attr)
    for _ in range(depth - 1):
        graph = _ld(1, loop(graph, (b"M", b"", b"v_in"), b"v_out", b"")) + _ld(2, b"body") + io
    top = _ld(1, loop(graph, (b"M", b"", b"v"), b"vf", b"top")) + _ld(2, b"g") + \
        _ld(5, _const("one", 1.0).SerializeToString()) + \
        _ld(11, _vi("v", F32, [2]).SerializeToString()) + \
        _ld(11, _vi("M", I64, []).SerializeToString()) + \
        _ld(12, _vi("vf", F32).SerializeToString())
    return b"\x08\x08" + _ld(7, top) + _ld(8, _ld(1, b"") + b"\x10\x11")


def test_nesting_depth_limit():
    """Loops nested MAX_GRAPH_DEPTH deep load and run; one more level is a LoadError
    naming the top node (the reader never recurses without bound)."""
    assert P.MAX_GRAPH_DEPTH == 32
    m = load_onnx(_nested(3))
    _check(_nested(3), {"v": np.zeros(2, np.float32), "M": np.array(2, np.int64)}, model=m)
    m = load_onnx(_nested(32))
    np.testing.assert_array_equal(m.run({"v": np.zeros(2, np.float32),
                                         "M": np.array(1, np.int64)})["vf"], [1, 1])
    with pytest.raises(LoadError, match=r"not a valid ONNX model \(node 'Loop' 'top': "
                                        r"subgraphs nested more than 32 deep"):
        load_onnx(_nested(33))


def test_hostile_graph_attribute_bytes():
    """Every truncation of a model with a Loop, and the body's bytes damaged: a
    LoadError (or a model that loads), never another exception; a GRAPH attribute of
    another wire type or with a truncated field inside names the node."""
    data = _tf2onnx_like()
    for n in range(0, len(data), 7):
        try:
            load_onnx(data[:n])
        except LoadError:
            pass
    m = onnx.load_from_string(data)
    loop = [n for n in m.graph.node if n.op_type == "Loop"][0]
    body = [a for a in loop.attribute if a.name == "body"][0]
    gbytes = body.g.SerializeToString()
    start = data.find(gbytes)
    assert start > 0
    rng = np.random.default_rng(9)
    kinds = set()
    for _ in range(300):
        b = bytearray(data)
        for p in rng.integers(start, start + len(gbytes), 3):
            b[p] = int(rng.integers(0, 256))
        try:
            load_onnx(bytes(b))
            kinds.add("loaded")
        except LoadError:
            kinds.add("error")
    assert "error" in kinds
    # the graph field of the attribute as a varint (wire type 0)
    attr = helper.make_attribute("body", body.g)
    raw = attr.SerializeToString()
    i = raw.find(b"\x32")                   # (field 6, wire type 2)
    bad_attr = raw[:i] + b"\x30\x01"        # (field 6, wire type 0)
    with pytest.raises(P.ProtoError, match="attribute graph: wire type 0"):
        P.Attribute(bad_attr, (0, len(bad_attr)))
    # a node whose body has a field claiming more bytes than there are
    ld = _ld
    graph = gbytes + b"\x0a\x05ab"         # (a node field of 5 bytes, 2 there)
    attr = ld(1, b"body") + ld(6, graph) + b"\xa0\x01\x05"    # (type GRAPH)
    node = ld(1, b"M") + ld(2, b"vf") + ld(3, b"L") + ld(4, b"Loop") + ld(5, attr)
    with pytest.raises(P.ProtoError, match=r"^node 'Loop' 'L': subgraph of attribute "
                                           r"'body': field 1: 5 bytes past the end"):
        P.Node(node, (0, len(node)))
    model = ld(7, ld(1, node))
    with pytest.raises(LoadError, match=r"not a valid ONNX model \(node 'Loop' 'L': "
                                        r"subgraph of attribute 'body'"):
        load_onnx(model)
    good = ld(1, b"body") + ld(6, gbytes) + b"\xa0\x01\x05"
    assert P.Attribute(good, (0, len(good))).g is not None


def test_graph_attributes_read_as_onnx_reads_them():
    body = _counter_body()
    a = helper.make_attribute("body", body)
    raw = a.SerializeToString()
    ours = P.Attribute(raw, (0, len(raw)))
    assert ours.type == ours.GRAPH and ours.value() is ours and ours.g is not None
    assert [n.op_type for n in ours.g.node] == [n.op_type for n in body.node]
    assert [v.name for v in ours.g.input] == [v.name for v in body.input]
    assert [(v.name, v.elem_type) for v in ours.g.output] == \
        [(v.name, v.type.tensor_type.elem_type) for v in body.output]
    np.testing.assert_array_equal(ours.g.initializer[0].to_array(),
                                  numpy_helper.to_array(body.initializer[0]))
    a = helper.make_attribute("branches", [body, body])
    raw = a.SerializeToString()
    ours = P.Attribute(raw, (0, len(raw)))
    assert ours.type == ours.GRAPHS and len(ours.graphs) == 2 and ours.g is None


# ------------------------------------------------------------------- threads, pickle
def test_threads_share_a_model():
    data = _tf2onnx_like()
    m = load_onnx(data)
    xs = [_x((b, t, 4), seed=b + t) for b, t in ((2, 7), (1, 30), (3, 5), (2, 7))]
    want = [m.run({"x": x}) for x in xs]
    errs = []

    def go(k):
        try:
            for _ in range(20):
                got = m.run({"x": xs[k]})
                for n in want[k]:
                    np.testing.assert_array_equal(got[n], want[k][n])
        except Exception as e:          # pragma: no cover (the assertion below says it)
            errs.append(e)
    ts = [threading.Thread(target=go, args=(k,)) for k in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs


def test_fast_steps_equal_the_op_table_exactly(monkeypatch):
    """The body steps run directly (_runner: Add, MatMul, Tanh, Gather, Cast, ...)
    compute what the op table's functions compute, bit for bit."""
    datas = [_tf2onnx_like(13), _tf2onnx_like(13, F64)]
    datas += [open(os.path.join(FIX, n + ".onnx"), "rb").read() for n in _FIXTURES]
    results = []
    for generic in (False, True):
        if generic:
            monkeypatch.setattr(_onnx_loop, "_FAST", False)
        out = []
        for data in datas:
            m = load_onnx(data)
            x = _x((3, 9, 4), np.float64 if data is datas[1] else np.float32)
            out.append(m.run({"x": x}))
        results.append(out)
    for a, b in zip(*results):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# -------------------------------------------------------------- tf2onnx export fixtures
_FIXTURES = ["tf2onnx_k2_simplernn", "tf2onnx_k2_gru_reset_before",
             "tf2onnx_k2_masking_lstm", "tf2onnx_k2_bi_simplernn", "tf2onnx_k3_gru"]


@pytest.mark.parametrize("name", _FIXTURES)
def test_tf2onnx_fixture_matches_keras_and_onnxruntime(name, monkeypatch):
    """tests/fixtures/onnx/loop/<name>.onnx (make_tf2onnx.py): a Keras RNN layer tf2onnx
    1.17 wrote as a Loop; fastrnn's outputs (without the onnx package) against the
    stored Keras and ONNX Runtime outputs, then live ONNX Runtime at other batch sizes
    and lengths (T = 1, long, none), in two calls each, after pickling and from two
    threads."""
    path = os.path.join(FIX, name + ".onnx")
    d = np.load(path[:-5] + ".npz")
    with monkeypatch.context() as mp:       # (fastrnn reads the file itself)
        mp.setitem(sys.modules, "onnx", None)
        m = load_onnx(path)
        assert "Loop" in [s[1][1] for s in m._steps if s[0] == "op"]
        names = m.output_names
        for sfx in ("", "2"):
            x = d[f"in{sfx}:x"]
            for _ in range(2):
                got = m.run({"x": x})
                for k, n in enumerate(names):
                    np.testing.assert_allclose(got[n], d[f"ort{sfx}:{n}"], rtol=1e-5,
                                               atol=1e-6)
                    np.testing.assert_allclose(got[n], d[f"keras{sfx}:{k}"], rtol=1e-5,
                                               atol=1e-5)
    with open(path, "rb") as f:
        data = f.read()
    rng = np.random.default_rng(11)
    for B, T in ((1, 1), (2, 40), (5, 3)):
        x = rng.uniform(-1, 1, (B, T, 4)).astype(np.float32)
        if "masking" in name:
            x[-1, T // 2:] = 0
        _check(data, {"x": x}, model=m, tol=1e-5)
    # no step: as ONNX Runtime, empty outputs of the same shapes, or the same node's
    # error (a Squeeze of the empty scan output's time axis)
    x = np.zeros((2, 0, 4), np.float32)
    try:
        ref = _ort(data, {"x": x})
    except Exception as e:
        node = str(e).split("Name:'")[1].split("'")[0]
        with pytest.raises(ValueError, match=f"node [0-9]+ Squeeze '{node}'"):
            m.run({"x": x})
    else:
        _same(m.run({"x": x}), ref)
    x = rng.uniform(-1, 1, (3, 8, 4)).astype(np.float32)
    want = m.run({"x": x})
    errs = []

    def go():
        try:
            for _ in range(5):
                got = m.run({"x": x})
                for n in names:
                    np.testing.assert_array_equal(got[n], want[n])
        except Exception as e:          # pragma: no cover
            errs.append(e)
    ts = [threading.Thread(target=go) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
