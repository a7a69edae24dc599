"""Scan fusion (fastrnn/io/_onnx_loop_fuse.py, _ScanFusion) and Scan
(fastrnn/io/_onnx_scan.py), from an audit (2026-12-07): a body whose math depends on
the number of rows (a Shape read by anything but ConstantOfShape) runs op by op; a scan
output of another dtype than h (a Cast) keeps its dtype; NaN / inf in x runs op by op
(IEEE values the layer's kernels do not keep); the GRU kernel's reset-before path keeps
h where z is 1 and the candidate is huge ((1 - z) n + z h); no steps with a huge
declared output shape names the output."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402

from fastrnn.io.onnx import load_onnx  # noqa: E402
from test_onnx_loop import _ort, _vi  # noqa: E402
from test_onnx_scan_fuse import _feeds, _fused, _scan_graph, _slow  # noqa: E402


def _rnn_scan(I, H, extra, inits, pre, scan_src="h_new", scan_type=TP.FLOAT,
              dt=np.float32):
    """h' = tanh(x W + h R + b [+ extra terms: ``extra`` nodes making ``pre``]); scan
    output Identity(``scan_src``) of type ``scan_type``."""
    tt = TP.DOUBLE if dt == np.float64 else TP.FLOAT
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.uniform(-.5, .5, s).astype(dt), k)
         for k, s in (("W", (I, H)), ("R", (H, H)), ("b", (H,)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
             helper.make_node("Add", ["xw", "hr"], ["s"]),
             helper.make_node("Add", ["s", "b"], ["pre0"])] + list(extra) + [
             helper.make_node("Tanh", [pre], ["h_new"])]
    if scan_src != "h_new":
        nodes.append(helper.make_node("Cast", ["h_new"], [scan_src], to=scan_type))
    nodes.append(helper.make_node("Identity", [scan_src], ["y"]))
    body = helper.make_graph(nodes, "body", [_vi("h_in", tt, ["B", H]), _vi("x", tt, ["B", I])],
                             [_vi("h_new", tt, ["B", H]), _vi("y", scan_type, ["B", H])],
                             w + list(inits))
    node = helper.make_node("Scan", ["h0", "X"], ["hT", "Y"], body=body, num_scan_inputs=1,
                            name="sc")
    g = helper.make_graph([node], "g", [_vi("h0", tt, None), _vi("X", tt, None)],
                          [_vi("hT", tt, None), _vi("Y", scan_type, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _f(B, T, I, H, dt=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((T, B, I)).astype(dt),
            "h0": rng.uniform(-1, 1, (B, H)).astype(dt)}


# ------------------------------------------------------- F1: a term of the batch size
def test_term_of_the_number_of_rows_runs_op_by_op():
    """h' = tanh(x W + h R + b + 0.05 (r - 6)(r - 9)), r = x_t's rows (Shape, Slice,
    Cast): zero for the probes' 9 rows (I + H = 9: the unit rows in one chunk of 9)
    and the final check's 6, not for a call's B; the body must not run as a layer
    (today: fused, and wrong for B = 1 or 32)."""
    I, H = 4, 5
    c = [numpy_helper.from_array(np.array([0], np.int64), "z0"),
         numpy_helper.from_array(np.array([1], np.int64), "z1"),
         numpy_helper.from_array(np.array(6, np.float32), "six"),
         numpy_helper.from_array(np.array(9, np.float32), "nine"),
         numpy_helper.from_array(np.array(0.05, np.float32), "c")]
    ex = [helper.make_node("Shape", ["x"], ["shp"]),
          helper.make_node("Slice", ["shp", "z0", "z1"], ["r_i"]),
          helper.make_node("Cast", ["r_i"], ["r"], to=TP.FLOAT),
          helper.make_node("Sub", ["r", "six"], ["r6"]),
          helper.make_node("Sub", ["r", "nine"], ["r9"]),
          helper.make_node("Mul", ["r6", "r9"], ["q"]),
          helper.make_node("Mul", ["q", "c"], ["term"]),
          helper.make_node("Add", ["pre0", "term"], ["pre1"])]
    data = _rnn_scan(I, H, ex, c, "pre1")
    m = load_onnx(data)
    for B in (1, 32, 6):
        f = _f(B, 5, I, H)
        ref = _ort(data, f)
        got = m.run(dict(f))
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert not _fused(m)


def test_ones_mask_of_shape_still_fused():
    """tf.keras 2's recurrent_dropout (Shape(h) -> ConstantOfShape(1) -> Mul) is still
    a cell: fused, ONNX Runtime's numbers."""
    I, H = 3, 4
    ex = [helper.make_node("Shape", ["pre0"], ["shp"]),
          helper.make_node("ConstantOfShape", ["shp"], ["ones"],
                           value=numpy_helper.from_array(np.ones(1, np.float32))),
          helper.make_node("Mul", ["pre0", "ones"], ["pre1"])]
    data = _rnn_scan(I, H, ex, [], "pre1")
    m = load_onnx(data)
    f = _f(3, 5, I, H)
    ref = _ort(data, f)
    got = m.run(dict(f))
    assert _fused(m)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)


# ------------------------------------------- F2: a scan output of another element type
def test_scan_output_cast_to_double_keeps_its_dtype():
    """The scan output Cast(h', double) in a float32 model: ONNX Runtime's (and the
    op-by-op run's) float64; today the fused call gives the layer's float32."""
    data = _rnn_scan(3, 4, [], [], "pre0", scan_src="h64", scan_type=TP.DOUBLE)
    f = _f(2, 5, 3, 4)
    ref = _ort(data, f)
    m = load_onnx(data)
    got = m.run(dict(f))
    slow = _slow(data, f)
    for k in ref:
        assert got[k].dtype == ref[k].dtype == slow[k].dtype, k
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)


# ---------------------------------- F3: GRU reset_after=False with an unbounded candidate
@pytest.mark.parametrize("dtype,big", [(np.float32, 1e30), (np.float64, 1e200)])
def test_gru_before_relu_candidate_keeps_h_where_z_is_one(dtype, big):
    """Keras GRU(reset_after=False, activation='relu', recurrent_activation=
    hard_sigmoid): a huge x_t saturates z to exactly 1, h' = z h + (1 - z) n = h; the
    layer's n + z (h - n) gave 0 (fr_kern_t.h's rz_split path).  Needs the kernel
    patch (fix_gru_before_formula.patch) and a rebuild."""
    data, _ = _scan_graph("gru_before", 1, 2, dtype, act="Relu", gact="HardSigmoidK2")
    f = _feeds("gru_before", 1, 2, 1, 2, dtype)
    f["X"][0, 0, 0] = big
    ref = _ort(data, f)
    m = load_onnx(data)
    got = m.run(dict(f))
    assert _fused(m)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ---------------------------------------------- F5: an empty output of a huge shape
def test_no_steps_with_a_huge_declared_shape_names_the_output():
    """T = 0 and a scan output declared [2**40, 2**40]: a ValueError naming the node and
    the output (today NumPy's bare 'array is too big')."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x"], ["s_out"]),
         helper.make_node("Identity", ["x"], ["y"])], "body",
        [_vi("s_in", TP.FLOAT, [2]), _vi("x", TP.FLOAT, [2])],
        [_vi("s_out", TP.FLOAT, [2]), _vi("y", TP.FLOAT, [2 ** 40, 2 ** 40])])
    node = helper.make_node("Scan", ["s0", "X"], ["sf", "Y"], body=body,
                            num_scan_inputs=1, name="sc")
    g = helper.make_graph([node], "g", [_vi("s0", TP.FLOAT, [2]), _vi("X", TP.FLOAT, None)],
                          [_vi("sf", TP.FLOAT, None), _vi("Y", TP.FLOAT, None)])
    mp = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mp.ir_version = 8
    m = load_onnx(mp.SerializeToString())
    with pytest.raises(ValueError, match=r"'sc'.*scan output 0 \(body output 1 'y'\)"):
        m.run({"s0": np.zeros(2, np.float32), "X": np.zeros((0, 2), np.float32)})


# ------------------------------------------------ F4: inf in x (IEEE values op by op)
def test_inf_in_x_gives_the_op_by_op_values():
    """An LSTM of Keras's linear activation, x_t = -inf in one row: op by op and ONNX
    Runtime o = sigmoid(-inf) = 0, h' = 0 * -inf = NaN; today the fused layer gives
    -inf (its sigmoid never reaches 0).  With the patch a call with a NaN / inf in x or
    a state, or whose results are not finite, runs op by op."""
    data, _ = _scan_graph("lstm", 1, 1, np.float32, act="linear")
    f = _feeds("lstm", 1, 1, 2, 1, np.float32)
    m = load_onnx(data)
    m.run(dict(f))
    assert _fused(m)
    f["X"][0, 1, 0] = -np.inf
    ref = _ort(data, f)
    got = m.run(dict(f))
    for k in ref:
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]), err_msg=k)
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
