"""ONNX ``Scan`` nodes (fastrnn/io/_onnx_scan.py): hand-built graphs compared live with
ONNX Runtime (cumulative sums, an RNN cell written as a Scan body, several scan inputs
and outputs of different axes and directions, negative axes, states of several shapes,
outer values read by the body, opsets 8 (batch axis, sequence_lens) to 21, float32 /
float64, Scan inside Loop / If / Scan and Loop inside Scan, pickling, threads), no steps
(ONNX Runtime fails there; fastrnn's empty outputs of the declared shapes) and the error
cases (at load and at run, naming the node, the step and the body node)."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io import onnx as fonnx  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402
from test_onnx_loop import (BOOL, F32, F64, I64, _body, _check, _const, _model,  # noqa: E402
                            _ort, _same, _x)

NP = {F32: np.float32, F64: np.float64}
TOLS = {F32: 1e-5, F64: 1e-12}
OPSETS = [9, 11, 16, 19, 21]


def _scan(ins, outs, body, n_scan, name="scan", **attrs):
    return helper.make_node("Scan", list(ins), list(outs), name=name, body=body,
                            num_scan_inputs=n_scan, **attrs)


def _cumsum_body(dtype=F32, shape=(2,)):
    """s_out = s_in + x; y = s_out (declared shapes: ``shape``)."""
    return _body([helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                  helper.make_node("Identity", ["s_out"], ["y"])],
                 [("s_in", dtype, list(shape)), ("x", dtype, list(shape))],
                 [("s_out", dtype, list(shape)), ("y", dtype, list(shape))])


def _cumsum_model(opset=17, dtype=F32, shape=(2,), **attrs):
    node = _scan(["s0", "xs"], ["sf", "ys"], _cumsum_body(dtype, shape), 1, **attrs)
    return _model([node], [("s0", dtype, list(shape)), ("xs", dtype, None)],
                  [("sf", dtype), ("ys", dtype)], opset=opset)


def _scan_node(m):
    """The ScanNode of model ``m``'s (first) Scan step."""
    return next(obj[2]["_scan"] for kind, obj, *_ in m._steps
                if kind == "op" and obj[1] == "Scan")


# ----------------------------------------------------------------------- basic semantics
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_cumulative_sum(opset, dtype):
    data = _cumsum_model(opset, dtype)
    for T in (1, 2, 7):
        x = _x((T, 2), NP[dtype], seed=T)
        ref = _check(data, {"s0": _x((2,), NP[dtype]), "xs": x}, tol=TOLS[dtype])
        np.testing.assert_allclose(ref["ys"], np.cumsum(x, 0) + _x((2,), NP[dtype]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_dir,out_dir", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumulative_sum_directions(in_dir, out_dir):
    data = _cumsum_model(11, scan_input_directions=[in_dir], scan_output_directions=[out_dir])
    x = _x((5, 2), seed=3)
    ref = _check(data, {"s0": np.zeros(2, np.float32), "xs": x})
    want = np.cumsum(x[::-1] if in_dir else x, 0)
    np.testing.assert_allclose(ref["ys"], want[::-1] if out_dir else want, rtol=1e-5)
    np.testing.assert_allclose(ref["sf"], x.sum(0), rtol=1e-5)


def _rnn_model(B, I, H, dtype=F32, opset=17, seed=0, reverse=False, xw=True):
    """h_t = tanh(x_t W + h_{t-1} R + b): state h [B, H], scan input x [T, B, I] (W, R,
    b initializers of the graph, read by the body), scan outputs h_t and (``xw``) x_t W
    (an output that does not depend on the state; without it the body is one cell, run
    as one layer call: tests/test_onnx_scan_fuse.py)."""
    rng = np.random.default_rng(seed)
    t = NP[dtype]
    W = _const("W", rng.standard_normal((I, H)) * 0.3, t)
    R = _const("R", rng.standard_normal((H, H)) * 0.3, t)
    b = _const("b", rng.standard_normal(H) * 0.1, t)
    body = _body([helper.make_node("MatMul", ["x", "W"], ["xw"]),
                  helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
                  helper.make_node("Add", ["xw", "hr"], ["s"]),
                  helper.make_node("Add", ["s", "b"], ["sb"]),
                  helper.make_node("Tanh", ["sb"], ["h_out"]),
                  helper.make_node("Identity", ["h_out"], ["y"])],
                 [("h_in", dtype, [B, H]), ("x", dtype, [B, I])],
                 [("h_out", dtype, [B, H]), ("y", dtype, [B, H])]
                 + [("xw", dtype, [B, H])] * xw)
    attrs = {"scan_input_directions": [1]} if reverse else {}
    node = _scan(["h0", "X"], ["hT", "Y"] + ["XW"] * xw, body, 1, name="rnn/scan", **attrs)
    return _model([node], [("h0", dtype, [B, H]), ("X", dtype, ["T", B, I])],
                  [("hT", dtype), ("Y", dtype)] + [("XW", dtype)] * xw, [W, R, b],
                  opset=opset)


def _rnn_numpy(data, x, h):
    """The same recurrence in NumPy (the model's own initializers)."""
    m = onnx.load_from_string(data)
    w = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    ys = []
    for xt in x:
        h = np.tanh(xt @ w["W"] + h @ w["R"] + w["b"])
        ys.append(h)
    return h, np.stack(ys)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 9), (4, 6)])
def test_rnn_cell_as_a_scan_body(dtype, B, T):
    I, H = 3, 5
    data = _rnn_model(B, I, H, dtype)
    x = _x((T, B, I), NP[dtype], seed=B + T)
    h0 = _x((B, H), NP[dtype], seed=7)
    ref = _check(data, {"h0": h0, "X": x}, tol=TOLS[dtype])
    h, ys = _rnn_numpy(data, x, h0)
    np.testing.assert_allclose(ref["Y"], ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref["hT"], h, rtol=1e-5, atol=1e-5)


def test_rnn_cell_reverse_and_other_lengths_on_one_model():
    data = _rnn_model(2, 3, 4, reverse=True)
    m = load_onnx(data)
    for T in (5, 1, 12, 5):
        feeds = {"h0": _x((2, 4), seed=T), "X": _x((T, 2, 3), seed=T + 1)}
        _same(m.run(feeds), _ort(data, feeds), 1e-5)


def _multi_model(in_axes, in_dirs, out_axes, out_dirs, opset=17, dtype=F32):
    """Two states (a [3] sum and a scalar count), two scan inputs (a: slices [3], b:
    slices [2, 3]), three scan outputs (a + s ([3]), b * s ([2, 3]), the count ([]))."""
    one = _const("one", 1.0, NP[dtype])
    body = _body([helper.make_node("Add", ["s_in", "a"], ["s_out"]),
                  helper.make_node("Add", ["c_in", "one"], ["c_out"]),
                  helper.make_node("Add", ["a", "s_in"], ["y1"]),
                  helper.make_node("Mul", ["bb", "s_out"], ["y2"]),
                  helper.make_node("Identity", ["c_out"], ["y3"])],
                 [("s_in", dtype, [3]), ("c_in", dtype, []), ("a", dtype, [3]),
                  ("bb", dtype, [2, 3])],
                 [("s_out", dtype, [3]), ("c_out", dtype, []), ("y1", dtype, [3]),
                  ("y2", dtype, [2, 3]), ("y3", dtype, [])], [one])
    node = _scan(["s0", "c0", "A", "Bv"], ["sf", "cf", "Y1", "Y2", "Y3"], body, 2,
                 scan_input_axes=list(in_axes), scan_input_directions=list(in_dirs),
                 scan_output_axes=list(out_axes), scan_output_directions=list(out_dirs))
    return _model([node], [("s0", dtype, [3]), ("c0", dtype, []), ("A", dtype, None),
                           ("Bv", dtype, None)],
                  [("sf", dtype), ("cf", dtype), ("Y1", dtype), ("Y2", dtype),
                   ("Y3", dtype)], opset=opset)


def _multi_feeds(T, in_axes, dtype=np.float32, seed=0):
    a = _x((T, 3), dtype, seed)                 # (scan axis first, then moved)
    b = _x((T, 2, 3), dtype, seed + 1)
    return {"s0": _x((3,), dtype, seed + 2), "c0": np.array(0.5, dtype),
            "A": np.moveaxis(a, 0, in_axes[0]), "Bv": np.moveaxis(b, 0, in_axes[1])}


@pytest.mark.parametrize("in_axes,in_dirs,out_axes,out_dirs", [
    ((0, 0), (0, 0), (0, 0, 0), (0, 0, 0)),
    ((1, 2), (1, 0), (1, 2, 0), (0, 1, 1)),
    ((-1, -2), (0, 1), (-1, -1, -1), (1, 0, 0)),     # (negative axes)
    ((-2, 1), (1, 1), (-2, -3, 0), (1, 1, 0)),
    ((1, -3), (0, 0), (0, 1, -1), (0, 1, 0)),
])
@pytest.mark.parametrize("opset", [11, 21])
def test_several_scan_inputs_and_outputs_axes_and_directions(in_axes, in_dirs, out_axes,
                                                             out_dirs, opset):
    data = _multi_model(in_axes, in_dirs, out_axes, out_dirs, opset)
    for T in (1, 4):
        _check(data, _multi_feeds(T, in_axes, seed=T), tol=1e-5)


def test_negative_axes_in_opset_9_as_onnxruntime_reads_them():
    data = _multi_model((-1, -2), (0, 1), (-1, 1, -1), (1, 0, 0), opset=9)
    _check(data, _multi_feeds(3, (-1, -2)), tol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_float64_multi(dtype):
    data = _multi_model((1, 2), (1, 0), (1, 2, 0), (0, 1, 1), dtype=dtype)
    _check(data, _multi_feeds(5, (1, 2), NP[dtype]), tol=TOLS[dtype])


def _states_model(direct):
    """States: a 0-d one, a [2, 3] matrix, one passed on unchanged (k), two swapped each
    step (p, q), an int64 counter; a scan output that is the state k passed on.
    ``direct``: the body gives k, p, q back as its own inputs (else through Identity
    nodes)."""
    one = _const("one", 1, np.int64)
    nodes = [helper.make_node("Add", ["m_in", "x"], ["m_out"]),
             helper.make_node("ReduceSum", ["m_out"], ["z_out"], keepdims=0),
             helper.make_node("Add", ["n_in", "one"], ["n_out"]),
             helper.make_node("Mul", ["m_out", "k_in"], ["y"])]
    k, p, q, kk = "k_in", "q_in", "p_in", "k_in"
    if not direct:
        nodes += [helper.make_node("Identity", [a], [a + "_"]) for a in (k, p, q)]
        nodes.append(helper.make_node("Identity", ["k_in"], ["kk"]))
        k, p, q, kk = k + "_", p + "_", q + "_", "kk"
    body = _body(nodes,
                 [("z_in", F32, []), ("m_in", F32, [2, 3]), ("k_in", F32, [3]),
                  ("p_in", F32, [2]), ("q_in", F32, [2]), ("n_in", I64, []),
                  ("x", F32, [2, 3])],
                 [("z_out", F32, []), ("m_out", F32, [2, 3]), (k, F32, [3]),
                  (p, F32, [2]), (q, F32, [2]), ("n_out", I64, []),
                  ("y", F32, [2, 3]), (kk, F32, [3])], [one])
    node = _scan(["z", "m", "k", "p", "q", "n", "X"],
                 ["zf", "mf", "kf", "pf", "qf", "nf", "Y", "K"], body, 1)
    return _model([node], [("z", F32, []), ("m", F32, [2, 3]), ("k", F32, [3]),
                           ("p", F32, [2]), ("q", F32, [2]), ("n", I64, []),
                           ("X", F32, None)],
                  [("zf", F32), ("mf", F32), ("kf", F32), ("pf", F32), ("qf", F32),
                   ("nf", I64), ("Y", F32), ("K", F32)])


def test_states_of_several_shapes_passed_on_swapped_and_of_other_types():
    """Compared with ONNX Runtime through Identity nodes; given back directly (the body's
    inputs as its outputs), the same values (ONNX Runtime 1.x gives such states
    uninitialised memory, so those are checked here against the Identity form)."""
    data, direct = _states_model(False), load_onnx(_states_model(True))
    for T in (1, 2, 5):
        feeds = {"z": np.array(0.0, np.float32), "m": _x((2, 3)), "k": _x((3,), seed=1),
                 "p": np.array([1, 2], np.float32), "q": np.array([3, 4], np.float32),
                 "n": np.array(0, np.int64), "X": _x((T, 2, 3), seed=T)}
        ref = _check(data, feeds, tol=1e-5)
        got = direct.run(dict(feeds))
        _same(got, ref, 1e-6)
        np.testing.assert_array_equal(got["kf"], feeds["k"])
        np.testing.assert_array_equal(got["pf"], feeds["q" if T % 2 else "p"])
        assert ref["nf"] == T and ref["K"].shape == (T, 3)
        assert not np.shares_memory(got["kf"], feeds["k"])  # (the caller's own)
        assert not np.shares_memory(got["K"], got["kf"])


def test_scan_without_states():
    body = _body([helper.make_node("Mul", ["x", "x"], ["y"])], [("x", F32, [2])],
                 [("y", F32, [2])])
    data = _model([_scan(["X"], ["Y"], body, 1, scan_output_axes=[1])],
                  [("X", F32, None)], [("Y", F32)])
    _check(data, {"X": _x((4, 2))})


# ------------------------------------------------------------------------ outer values
def _outer_model(direct):
    inner_c = _const("ic", 0.5)
    nodes = [helper.make_node("Mul", ["x", "g"], ["xg"]),
             helper.make_node("Add", ["xg", "pre"], ["a"]),
             helper.make_node("Add", ["a", "s_in"], ["b"]),
             helper.make_node("Mul", ["b", "ic"], ["c"]),
             helper.make_node("Add", ["c", "w"], ["s_out"])]
    if not direct:
        nodes += [helper.make_node("Identity", ["pre"], ["pre_"]),
                  helper.make_node("Identity", ["s_out"], ["s_"])]
    body = _body(nodes, [("s_in", F32, [3]), ("x", F32, [3])],
                 [("s_out", F32, [3]), ("pre" if direct else "pre_", F32, [3]),
                  ("s_out" if direct else "s_", F32, [3])], [inner_c])
    nodes = [helper.make_node("Exp", ["u"], ["pre"]),
             _scan(["s0", "X"], ["sf", "P", "S"], body, 1)]
    return _model(nodes, [("s0", F32, [3]), ("X", F32, None), ("g", F32, [3]),
                          ("u", F32, [3])],
                  [("sf", F32), ("P", F32), ("S", F32)], [_const("w", [0.1, 0.2, 0.3])])


def test_body_reads_outer_values_inputs_node_outputs_and_initializers():
    """The body reads a graph input, a node output before the Scan, an initializer of
    the graph and one of its own, and gives an outer value and a state as scan outputs
    (through Identity nodes: ONNX Runtime refuses an outer value returned directly; so
    returned, fastrnn gives the same)."""
    data = _outer_model(False)
    feeds = {"s0": _x((3,)), "X": _x((6, 3), seed=1), "g": _x((3,), seed=2),
             "u": _x((3,), seed=3)}
    ref = _check(data, feeds, tol=1e-5)
    m = load_onnx(_outer_model(True))
    _same(m.run(dict(feeds)), ref, 1e-6)
    sn = _scan_node(m)
    assert set(sn.body.outer) == {"g", "pre", "w"}
    assert len(sn._iter) == 5 and not sn._pre   # (every step reads x or the state)


def test_invariant_steps_run_once_a_call(monkeypatch):
    """Body steps reading only values the same in every step (outer values, constants,
    states passed on unchanged) run once per call of the Scan; the others every step;
    with no steps, none."""
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
             helper.make_node("Add", ["a", "sw"], ["b"]),
             helper.make_node("Add", ["b", "x"], ["v_out"])]
    body = _body(nodes, [("v_in", F32, [2]), ("k_in", F32, [2]), ("x", F32, [2])],
                 [("v_out", F32, [2]), ("k_in", F32, [2]), ("sw", F32, [2])])
    node = _scan(["v", "k", "X"], ["vf", "kf", "SW"], body, 1)
    ins = [("v", F32, [2]), ("k", F32, [2]), ("w", F32, [2]), ("X", F32, None)]
    m = load_onnx(_model([node], ins, ["vf", "kf", "SW"]))
    # (ONNX Runtime gives a state passed on directly uninitialised memory: compared with
    # the same body passing it on through an Identity node, a step run every time)
    body.node.append(helper.make_node("Identity", ["k_in"], ["k_"]))
    body.output[1].name = "k_"
    data = _model([_scan(["v", "k", "X"], ["vf", "kf", "SW"], body, 1)], ins,
                  ["vf", "kf", "SW"])
    feeds = {"v": _x((2,)), "k": np.array([4.0, 9.0], np.float32),
             "w": np.array([1.0, 16.0], np.float32), "X": _x((5, 2), seed=1)}
    for _ in range(2):
        calls.update(Sqrt=0, Softsign=0)
        got = m.run(feeds)
        assert calls == {"Sqrt": 2, "Softsign": 5}
    _same(got, _ort(data, feeds), 1e-5)
    calls.update(Sqrt=0, Softsign=0)
    _same(load_onnx(data).run(feeds), got)
    assert calls == {"Sqrt": 6, "Softsign": 5}
    calls.update(Sqrt=0, Softsign=0)
    got = m.run(dict(feeds, X=np.zeros((0, 2), np.float32)))
    assert calls == {"Sqrt": 0, "Softsign": 0}
    assert got["SW"].shape == (0, 2)


# ------------------------------------------------------------------------------ nesting
def test_scan_inside_a_loop_body():
    """A Loop whose body runs a Scan (cumulative sum of the Loop's carried value's rows
    plus the iteration number) on a carried value and an outer value."""
    inner = _body([helper.make_node("Add", ["s_in", "x"], ["s0_"]),
                   helper.make_node("Add", ["s0_", "off"], ["s_out"]),
                   helper.make_node("Identity", ["s_out"], ["y"])],
                  [("s_in", F32, [3]), ("x", F32, [3])],
                  [("s_out", F32, [3]), ("y", F32, [3])])
    body = _body([helper.make_node("Cast", ["i"], ["fi"], to=F32),
                  helper.make_node("Mul", ["fi", "half"], ["off"]),
                  _scan(["z", "v_in"], ["last", "v_out"], inner, 1, name="inner_scan",
                        scan_input_directions=[1])],
                 [("i", I64, []), ("c", BOOL, []), ("v_in", F32, [4, 3])],
                 [("c", BOOL, []), ("v_out", F32, [4, 3]), ("last", F32, [3])],
                 [_const("half", 0.5)])
    node = helper.make_node("Loop", ["M", "", "v"], ["vf", "lasts"], body=body, name="L")
    data = _model([node], [("v", F32, [4, 3]), ("z", F32, [3]), ("M", I64, [])],
                  ["vf", "lasts"])
    _check(data, {"v": _x((4, 3)), "z": _x((3,), seed=1), "M": np.array(3, np.int64)},
           tol=1e-5)


def test_loop_inside_a_scan_body():
    """A Scan whose body runs a Loop (x_t times 0.9 plus the state, M times, M an outer
    graph input) on its scan input."""
    lb = _body([helper.make_node("Mul", ["u_in", "a"], ["ua"]),
                helper.make_node("Add", ["ua", "s_in"], ["u_out"])],
               [("j", I64, []), ("c", BOOL, []), ("u_in", F32, [2])],
               [("c", BOOL, []), ("u_out", F32, [2])], [_const("a", 0.9)])
    body = _body([helper.make_node("Loop", ["M", "", "x"], ["u"], body=lb, name="inner"),
                  helper.make_node("Add", ["s_in", "u"], ["s_out"])],
                 [("s_in", F32, [2]), ("x", F32, [2])],
                 [("s_out", F32, [2]), ("u", F32, [2])])
    data = _model([_scan(["s0", "X"], ["sf", "U"], body, 1)],
                  [("s0", F32, [2]), ("X", F32, None), ("M", I64, [])], ["sf", "U"])
    for M in (0, 1, 3):
        _check(data, {"s0": _x((2,)), "X": _x((5, 2), seed=M), "M": np.array(M, np.int64)},
               tol=1e-5)


def test_scan_inside_an_if_branch_and_inside_a_scan():
    inner = _body([helper.make_node("Mul", ["t_in", "e"], ["t_out"]),
                   helper.make_node("Add", ["t_out", "q"], ["z"])],
                  [("t_in", F32, [2]), ("e", F32, [2])],
                  [("t_out", F32, [2]), ("z", F32, [2])])
    # outer Scan: state s [2], scan input rows r [3, 2]; the inner Scan scans r's rows
    # with the state as its initial value and reads q (an outer graph input)
    outer = _body([_scan(["s_in", "r"], ["s_out", "zs"], inner, 1, name="inner",
                         scan_output_directions=[1])],
                  [("s_in", F32, [2]), ("r", F32, [3, 2])],
                  [("s_out", F32, [2]), ("zs", F32, [3, 2])])
    then = helper.make_graph([_scan(["s0", "X"], ["sf", "Z"], outer, 1, name="outer",
                                    scan_input_axes=[1], scan_output_axes=[2])],
                             "then", [], [helper.make_tensor_value_info("sf", F32, None),
                                          helper.make_tensor_value_info("Z", F32, None)])
    other = helper.make_graph([helper.make_node("Neg", ["s0"], ["n"]),
                               helper.make_node("Identity", ["X"], ["xx"])], "else", [],
                              [helper.make_tensor_value_info("n", F32, None),
                               helper.make_tensor_value_info("xx", F32, None)])
    nodes = [helper.make_node("If", ["c"], ["o1", "o2"], then_branch=then,
                              else_branch=other, name="if")]
    data = _model(nodes, [("c", BOOL, []), ("s0", F32, [2]), ("X", F32, [3, 4, 2]),
                          ("q", F32, [2])], ["o1", "o2"])
    for c in (True, False):
        _check(data, {"c": np.array(c), "s0": _x((2,)), "X": _x((3, 4, 2), seed=1),
                      "q": _x((2,), seed=2)}, tol=1e-5)


# ----------------------------------------------------------------------------- opset 8
def _scan8(sl=True, dirs=None, B=3):
    """Scan-8: states s [B, 2] (a sum) and c [B] (a count), scan input x [B, T, 2]."""
    one = _const("one", 1.0)
    body = _body([helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                  helper.make_node("Add", ["c_in", "one"], ["c_out"]),
                  helper.make_node("Mul", ["s_out", "c_out"], ["y"])],
                 [("s_in", F32, [2]), ("c_in", F32, []), ("x", F32, [2])],
                 [("s_out", F32, [2]), ("c_out", F32, []), ("y", F32, [2])], [one])
    attrs = {} if dirs is None else {"directions": dirs}
    node = _scan(["sl" if sl else "", "s", "c", "X"], ["sf", "cf", "Y"], body, 1,
                 name="s8", **attrs)
    ins = [("s", F32, [B, 2]), ("c", F32, [B]), ("X", F32, [B, "T", 2])]
    if sl:
        ins.append(("sl", I64, [B]))
    return _model([node], ins, [("sf", F32), ("cf", F32), ("Y", F32)], opset=8)


@pytest.mark.parametrize("lens", [None, [3, 1, 2], [3, 3, 3], [1, 1, 1]])
@pytest.mark.parametrize("dirs", [None, [0], [1]])
def test_opset8_batch_axis_and_sequence_lens(lens, dirs):
    data = _scan8(lens is not None, dirs)
    feeds = {"s": _x((3, 2)), "c": np.zeros(3, np.float32), "X": _x((3, 3, 2), seed=1)}
    if lens is not None:
        feeds["sl"] = np.array(lens, np.int64)
    ref = _check(data, feeds)
    if lens is not None:                # (zeros after each item's length)
        for b, n in enumerate(lens):
            assert not ref["Y"][b, n:].any()


def _scan8_k(direct):
    """Scan-8 with a state k [B, 2] passed on unchanged (``direct``: as the body's own
    input; else through an Identity node) that the body reads: s += x * k * k."""
    nodes = [helper.make_node("Mul", ["k_in", "k_in"], ["kk"]),
             helper.make_node("Mul", ["x", "kk"], ["xk"]),
             helper.make_node("Add", ["s_in", "xk"], ["s_out"])]
    k = "k_in"
    if not direct:
        nodes.append(helper.make_node("Identity", ["k_in"], ["k_"]))
        k = "k_"
    body = _body(nodes, [("s_in", F32, [2]), ("k_in", F32, [2]), ("x", F32, [2])],
                 [("s_out", F32, [2]), (k, F32, [2]), ("xk", F32, [2])])
    node = _scan(["sl", "s", "k", "X"], ["sf", "kf", "Y"], body, 1, name="s8k")
    return _model([node], [("s", F32, [3, 2]), ("k", F32, [3, 2]), ("X", F32, [3, "T", 2]),
                           ("sl", I64, [3])], ["sf", "kf", "Y"], opset=8)


def test_opset8_state_passed_on_is_each_batch_items_own():
    """A state the body passes on unchanged is invariant within one batch item's
    sequence, not across the batch: each item reads its own."""
    feeds = {"s": _x((3, 2)), "k": _x((3, 2), seed=1), "X": _x((3, 4, 2), seed=2),
             "sl": np.array([4, 2, 3], np.int64)}
    ref = _check(_scan8_k(False), feeds)
    got = load_onnx(_scan8_k(True)).run(dict(feeds))
    _same(got, ref)
    want = feeds["s"] + [(feeds["X"][b, :n] * feeds["k"][b] ** 2).sum(0)
                         for b, n in enumerate(feeds["sl"])]
    np.testing.assert_allclose(got["sf"], want, rtol=1e-5)


def test_opset8_bad_sequence_lens_and_batch_sizes():
    m = load_onnx(_scan8())
    feeds = {"s": _x((3, 2)), "c": np.zeros(3, np.float32), "X": _x((3, 3, 2))}
    for sl in ([0, 1, 2], [4, 1, 1]):
        with pytest.raises(ValueError, match=r"^g: node 0 Scan 's8': sequence_lens "
                                             r".*each must be from 1 to the scan inputs' "
                                             r"length 3"):
            m.run(dict(feeds, sl=np.array(sl, np.int64)))
        with pytest.raises(Exception, match="sequence_lens"):
            _ort(_scan8(), dict(feeds, sl=np.array(sl, np.int64)))
    m = load_onnx(_scan8(sl=False, B="B"))
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 's8': batch sizes differ: "
                                         r"state 0 has 3, state 1 2"):
        m.run(dict(feeds, c=np.zeros(2, np.float32)))


def test_opset8_scan9_attributes_are_load_errors():
    body = _cumsum_body()
    bad = _scan(["", "s0", "xs"], ["sf", "ys"], body, 1, scan_input_axes=[0])
    data = _model([bad], [("s0", F32, [1, 2]), ("xs", F32, None)], ["sf", "ys"], opset=8)
    with pytest.raises(LoadError, match=r"node 0 Scan 'scan': attribute\(s\) "
                                        r"\['scan_input_axes'\] are Scan-9's"):
        load_onnx(data)
    bad = _scan(["s0", "xs"], ["sf", "ys"], body, 1, directions=[0])
    with pytest.raises(LoadError, match=r"node 0 Scan 'scan': attribute 'directions' is "
                                        r"Scan-8's"):
        load_onnx(_model([bad], [("s0", F32, [2]), ("xs", F32, None)], ["sf", "ys"]))


# ----------------------------------------------------------------------------- no steps
def test_no_steps_gives_empty_outputs_of_the_declared_shapes():
    """Scan inputs of length 0: the states as given, the scan outputs empty (0 at their
    axis of the body's declared shape).  ONNX Runtime fails there (from opset 9)."""
    data = _multi_model((1, 2), (1, 0), (1, 2, 0), (0, 1, 1))
    feeds = _multi_feeds(0, (1, 2))
    got = load_onnx(data).run(dict(feeds))
    assert got["Y1"].shape == (3, 0) and got["Y2"].shape == (2, 3, 0)
    assert got["Y3"].shape == (0,) and got["Y1"].dtype == np.float32
    np.testing.assert_array_equal(got["sf"], feeds["s0"])
    np.testing.assert_array_equal(got["cf"], feeds["c0"])
    assert not np.shares_memory(got["sf"], feeds["s0"])
    # (ONNX Runtime: an error at scan axis 0; at the axes above, the process dies of a
    # floating point exception, so not run here)
    cum = _cumsum_model(11)
    f0 = {"s0": _x((2,)), "xs": np.zeros((0, 2), np.float32)}
    with pytest.raises(Exception):
        _ort(cum, f0)
    got = load_onnx(cum).run(dict(f0))
    assert got["ys"].shape == (0, 2)
    # opset 8: [batch, 0, ...] (ONNX Runtime: the same shape; its states uninitialised)
    f8 = {"s": _x((3, 2)), "c": np.zeros(3, np.float32), "X": np.zeros((3, 0, 2),
                                                                       np.float32)}
    got = load_onnx(_scan8(sl=False)).run(dict(f8))
    assert got["Y"].shape == (3, 0, 2) == _ort(_scan8(sl=False), f8)["Y"].shape
    np.testing.assert_array_equal(got["sf"], f8["s"])


def test_no_steps_and_undeclared_shape_is_an_error_naming_the_output():
    body = _body([helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                  helper.make_node("Identity", ["s_out"], ["y"])],
                 [("s_in", F32, None), ("x", F32, None)],
                 [("s_out", F32, None), ("y", F32, ["n"])])
    data = _model([_scan(["s0", "xs"], ["sf", "ys"], body, 1, name="cum")],
                  [("s0", F32, [2]), ("xs", F32, None)], ["sf", "ys"])
    m = load_onnx(data)
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 'cum': scan output 0 \(body "
                                         r"output 1 'y'\): no steps ran .*not declared in "
                                         r"full"):
        m.run({"s0": _x((2,)), "xs": np.zeros((0, 2), np.float32)})
    # (with steps: fine; ONNX Runtime refuses a body output of no declared shape)
    x = _x((3, 2))
    got = m.run({"s0": np.zeros(2, np.float32), "xs": x})
    np.testing.assert_allclose(got["ys"], np.cumsum(x, 0), rtol=1e-6)


# ------------------------------------------------------------------------------- errors
def test_scan_inputs_of_different_lengths_are_an_error():
    data = _multi_model((0, 0), (0, 0), (0, 0, 0), (0, 0, 0))
    feeds = _multi_feeds(4, (0, 0))
    feeds["Bv"] = feeds["Bv"][:3]
    m = load_onnx(data)
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 'scan': scan inputs of "
                                         r"different lengths: input 0 'A' has 4 along its "
                                         r"scan axis, input 1 'Bv' 3"):
        m.run(feeds)
    with pytest.raises(Exception, match="inconsistent sequence lengths"):
        _ort(data, feeds)


def test_scan_axis_out_of_range_is_an_error():
    data = _multi_model((0, 3), (0, 0), (0, 0, 0), (0, 0, 0))
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 'scan': scan input 1 'Bv' of "
                                         r"shape \(4, 2, 3\): its scan axis 3 is out of "
                                         r"range for its rank 3"):
        load_onnx(data).run(_multi_feeds(4, (0, 0)))
    data = _multi_model((0, 0), (0, 0), (0, 3, 0), (0, 0, 0))
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 'scan': scan output 1: its "
                                         r"axis 3 is out of range for values of rank 2"):
        load_onnx(data).run(_multi_feeds(4, (0, 0)))


def test_errors_in_the_body_name_the_scan_the_step_and_the_body_node():
    """An index out of range at step 3: the node, the step and the body node named; a
    scan output whose values differ in shape."""
    table = _const("table", [1.0, 2.0, 3.0])
    body = _body([helper.make_node("Gather", ["table", "k"], ["g"], name="pick"),
                  helper.make_node("Add", ["s_in", "g"], ["s_out"])],
                 [("s_in", F32, []), ("k", I64, [])], [("s_out", F32, []), ("g", F32, [])],
                 [table])
    data = _model([_scan(["s0", "K"], ["sf", "G"], body, 1, name="sc")],
                  [("s0", F32, []), ("K", I64, None)], ["sf", "G"])
    m = load_onnx(data)
    feeds = {"s0": np.array(0.0, np.float32), "K": np.array([0, 2, 1, 7, 0], np.int64)}
    for _ in range(2):
        with pytest.raises(IndexError, match=r"^g: node 0 Scan 'sc': iteration 3, body "
                                             r"node 0 Gather 'pick': .*out of range"):
            m.run(dict(feeds))
    _check(data, dict(feeds, K=np.array([0, 2, 1], np.int64)))
    grow = _body([helper.make_node("Concat", ["s_in", "x"], ["s_out"], axis=0)],
                 [("s_in", F32, None), ("x", F32, None)],
                 [("s_out", F32, None), ("s_out", F32, None)])
    m = load_onnx(_model([_scan(["s0", "X"], ["sf", "Y"], grow, 1, name="grow")],
                         [("s0", F32, [1]), ("X", F32, None)], ["sf", "Y"]))
    with pytest.raises(ValueError, match=r"^g: node 0 Scan 'grow': scan output 0: "
                                         r"iteration 1 gave float32 of shape \(3,\), "
                                         r"iteration 0 float32 of shape \(2,\)"):
        m.run({"s0": _x((1,)), "X": _x((3, 1))})
    # (a state may change shape: fastrnn runs it; ONNX Runtime refuses the model)
    m = load_onnx(_model([_scan(["s0", "X"], ["sf"], _body(
        [helper.make_node("Concat", ["s_in", "x"], ["s_out"], axis=0)],
        [("s_in", F32, None), ("x", F32, None)], [("s_out", F32, None)]), 1)],
        [("s0", F32, [1]), ("X", F32, None)], ["sf"]))
    x = _x((3, 1))
    np.testing.assert_array_equal(m.run({"s0": np.zeros(1, np.float32), "X": x})["sf"],
                                  np.concatenate([[0.0], x[:, 0]]).astype(np.float32))


def test_unsupported_op_in_a_scan_body_is_named_with_the_scan():
    body = _body([helper.make_node("Hardmax", ["s_in"], ["h"], name="hm"),
                  helper.make_node("Add", ["h", "x"], ["s_out"])],
                 ["s_in", "x"], ["s_out"])
    data = _model([_scan(["s0", "X"], ["sf"], body, 1, name="model/scan")],
                  [("s0", F32, [2]), ("X", F32, None)], ["sf"])
    with pytest.raises(LoadError, match=r"unsupported ONNX op type\(s\) \['Hardmax'\] "
                                        r"\(first node of each: Hardmax: 'hm' \(in the body "
                                        r"of Scan 'model/scan'\)\)"):
        load_onnx(data)


_GOOD = dict(ins=["s0", "X"], outs=["sf", "Y"], n=1, b_in=["s_in", "x"],
             b_out=["s_out", "y"], attrs={})


@pytest.mark.parametrize("change,match", [
    (dict(n=0), r"num_scan_inputs is 0; it must be between 1 and its 2"),
    (dict(n=3), r"num_scan_inputs is 3; it must be between 1 and its 2"),
    (dict(n=None), r"no 'num_scan_inputs' attribute \(required\)"),
    (dict(b_in=["s_in"]), r"its body takes 1 inputs; a Scan with 1 state\(s\) and 1 scan "
                          r"input\(s\) needs 2"),
    (dict(b_out=[]), r"its body gives 0 outputs; a Scan with 1 state\(s\) needs at least 1"),
    (dict(outs=["sf"]), r"1 outputs; its body's 1 state\(s\) and 1 scan output\(s\) make 2"),
    (dict(ins=["s0", ""]), r"a state or scan input has no name"),
    (dict(b_in=["x", "x"]), r"its body's inputs and outputs must have names, the inputs "
                            r"different ones"),
    (dict(attrs=dict(scan_input_axes=[0, 1])), r"attribute 'scan_input_axes' has 2 "
                                               r"value\(s\); its 1 scan input\(s\) need 1"),
    (dict(attrs=dict(scan_output_directions=[2])),
     r"attribute 'scan_output_directions' is \[2\]; each must be 0 \(forward\) or 1"),
    (dict(attrs=dict(scan_input_directions=[0, 0])),
     r"attribute 'scan_input_directions' has 2"),
    (dict(attrs=dict(scan_output_axes=[0, 0])),
     r"attribute 'scan_output_axes' has 2 value\(s\); its 1 scan output\(s\) need 1"),
])
def test_malformed_scans_are_load_errors_naming_the_node(change, match):
    c = dict(_GOOD, **change)
    nodes = [helper.make_node("Add", ["s_in", "x"], ["s_out"]),
             helper.make_node("Identity", ["s_out"], ["y"])]
    body = _body(nodes, c["b_in"], c["b_out"])
    attrs = dict(c["attrs"])
    if c["n"] is not None:
        attrs["num_scan_inputs"] = c["n"]
    node = helper.make_node("Scan", c["ins"], c["outs"], name="bad", body=body, **attrs)
    data = _model([node], [("s0", F32, [2]), ("X", F32, None)],
                  [o for o in c["outs"] if o])
    with pytest.raises(LoadError, match=r"^g: node 0 Scan 'bad': " + match):
        load_onnx(data)


def test_scan_without_body_or_with_a_sequence_state():
    node = helper.make_node("Scan", ["s0", "X"], ["sf"], name="nb", num_scan_inputs=1)
    with pytest.raises(LoadError, match=r"node 0 Scan 'nb': no 'body' graph attribute"):
        load_onnx(_model([node], [("s0", F32, [2]), ("X", F32, None)], ["sf"]))
    body = _body([helper.make_node("SplitToSequence", ["x"], ["q"]),
                  helper.make_node("Identity", ["s_in"], ["s_out"])],
                 ["s_in", "x"], ["s_out", "q"])
    node = _scan(["s0", "X"], ["sf", "Q"], body, 1, name="sq")
    with pytest.raises(LoadError, match=r"node 0 Scan 'sq': body output\(s\) \['q'\] are "
                                        r"sequences"):
        load_onnx(_model([node], [("s0", F32, [2]), ("X", F32, None)], ["sf", "Q"]))


def test_supported_ops_lists_scan():
    assert "Scan" in fonnx.SUPPORTED_OPS


# ------------------------------------------------------------------- pickle, threads
def test_pickled_model_gives_the_same_results():
    data = _rnn_model(2, 3, 4)
    m = load_onnx(data)
    feeds = {"h0": _x((2, 4)), "X": _x((7, 2, 3), seed=1)}
    want = m.run(dict(feeds))
    for copy in (pickle.loads(pickle.dumps(m)),
                 pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(m))))):
        got = copy.run(dict(feeds))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # (nested: a Loop in the Scan's body, and a pickled model's body constants read-only)
    m2 = pickle.loads(pickle.dumps(load_onnx(_scan8())))
    sn = _scan_node(m2)
    assert all(not v.flags.writeable for v in sn.body.consts.values())


def test_threads_share_a_model():
    data = _rnn_model(2, 3, 8, reverse=True)
    m = load_onnx(data)
    xs = [_x((t, 2, 3), seed=t) for t in (7, 30, 5, 7)]
    h0 = _x((2, 8))
    want = [m.run({"h0": h0, "X": x}) for x in xs]
    errs = []

    def go(k):
        try:
            for _ in range(20):
                got = m.run({"h0": h0, "X": xs[k]})
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
    _same(want[1], _ort(data, {"h0": h0, "X": xs[1]}), 1e-5)


def test_fast_steps_equal_the_op_table_exactly(monkeypatch):
    """The body steps run by _onnx_loop's fast runners give exactly what the op table's
    functions give."""
    from fastrnn.io import _onnx_loop
    data = _rnn_model(3, 4, 5, F64)
    feeds = {"h0": _x((3, 5), np.float64), "X": _x((6, 3, 4), np.float64, seed=2)}
    fast = load_onnx(data).run(dict(feeds))
    monkeypatch.setattr(_onnx_loop, "_FAST", False)
    slow = load_onnx(data).run(dict(feeds))
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k])
