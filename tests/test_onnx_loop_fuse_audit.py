"""Loop fusion (fastrnn/io/_onnx_loop_fuse.py): bodies an audit (2026-12-07: 277 tf2onnx
exports, all right, and hand-made graphs) found fused wrongly or not fused.

Hand-built SimpleRNN-like Loops (a counter ``t``, ``Gather(X, t)``, ``tanh(x W + h R +
b)``, ``t + 1 < T``) with one change each, compared live with ONNX Runtime and the
op-by-op run (``_onnx_loop.FUSE = False``):

- the cell reads X itself besides the Gather of x_t (X[0] added at every step): the
  probes put their own rows in X's slot, so X[0] was taken for x_t;
- the cell's bias is computed from X once per call (ReduceMean(X)): the plan's key
  leaves out the Loop inputs X comes from, so a later call with another X reused the
  first call's bias;
- an int8 counter carried beside the int64 one (its last value wraps, as in ONNX
  Runtime): the fused path set t0 + n into an int8 and raised OverflowError;
- under a mask, the output state carried after h (not before it): not fused (the first
  state tried as the output state passed _classify and a later check returned None
  instead of trying the next).
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io.onnx import load_onnx  # noqa: E402

from test_onnx_loop_fuse import _compare  # noqa: E402

F32, I8, I64, BOOL = TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT64, TensorProto.BOOL
H = 4


def _i64(name, v):
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _rnn_loop(change=None):
    """X (T, B, H) time-major, h0 (B, H) -> Y (T, B, H), h (B, H); I == H so that X can
    be added to a pre-activation.  ``change``: "x_direct", "x_bias", "int8_counter",
    "mask_y_last"."""
    rng = np.random.default_rng(0)
    W, R = (rng.uniform(-0.8, 0.8, (H, H)).astype(np.float32) for _ in range(2))
    b = rng.uniform(-0.5, 0.5, H).astype(np.float32)
    mk = helper.make_node
    bn = [mk("Add", ["t", "one"], ["t1"]),
          mk("Gather", ["X", "t"], ["xt"], axis=0),
          mk("MatMul", ["xt", "W"], ["a1"]),
          mk("MatMul", ["h", "R"], ["a2"]),
          mk("Add", ["a1", "a2"], ["a3"])]
    b_inits = [_i64("one", 1), _i64("ax0", [0]), _i64("s0", [0]), _i64("s1", [1])]
    if change == "x_direct":            # (+ X[0], read from X itself)
        bn += [mk("Add", ["a3", "b"], ["a4"]),
               mk("Unsqueeze", ["a4", "ax0"], ["a5"]),
               mk("Add", ["a5", "X"], ["a6"]),
               mk("Slice", ["a6", "s0", "s1", "ax0"], ["a7"]),
               mk("Squeeze", ["a7", "ax0"], ["pre"])]
    elif change == "x_bias":            # (+ the mean of X, once per call)
        bn += [mk("ReduceMean", ["X"], ["xb"], axes=[0, 1], keepdims=0),
               mk("Add", ["a3", "xb"], ["pre"])]
    else:
        bn.append(mk("Add", ["a3", "b"], ["pre"]))
    bn += [mk("Tanh", ["pre"], ["hn0" if change == "mask_y_last" else "hn"]),
           mk("Less", ["t1", "T"], ["c"])]
    b_in = [helper.make_tensor_value_info("i", I64, []),
            helper.make_tensor_value_info("cin", BOOL, []),
            helper.make_tensor_value_info("t", I64, []),
            helper.make_tensor_value_info("h", F32, None)]
    b_out = [helper.make_tensor_value_info("c", BOOL, []),
             helper.make_tensor_value_info("t1", I64, []),
             helper.make_tensor_value_info("hn", F32, None)]
    carried = ["t0", "h0"]
    louts = ["t_end", "h_end"]
    g_in = [helper.make_tensor_value_info("X", F32, None),
            helper.make_tensor_value_info("h0", F32, None)]
    g_inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
               numpy_helper.from_array(b, "b"), _i64("zero", 0), _i64("t0", 0),
               numpy_helper.from_array(np.array(True), "true")]
    outer = [mk("Shape", ["X"], ["shp"]), mk("Gather", ["shp", "zero"], ["T"], axis=0)]
    scan = "hn"
    if change == "int8_counter":        # (a second counter, int8, carried out)
        bn.append(mk("Add", ["k", "one8"], ["k1"]))
        b_inits.append(numpy_helper.from_array(np.array(1, np.int8), "one8"))
        b_in.append(helper.make_tensor_value_info("k", I8, []))
        b_out.append(helper.make_tensor_value_info("k1", I8, []))
        carried.append("k0")
        louts.append("k_end")
        g_inits.append(numpy_helper.from_array(np.array(120, np.int8), "k0"))
    if change == "mask_y_last":         # (states h, y: the output state after h)
        bn += [mk("Gather", ["Mk", "t"], ["mt"], axis=0),
               mk("Cast", ["mt"], ["mf"], to=F32),
               mk("Unsqueeze", ["mf", "ax1"], ["m1"]),
               mk("Sub", ["one_f", "m1"], ["nm"]),
               mk("Mul", ["hn0", "m1"], ["p1"]), mk("Mul", ["h", "nm"], ["p2"]),
               mk("Add", ["p1", "p2"], ["hn"]),
               mk("Mul", ["y", "nm"], ["q2"]), mk("Add", ["p1", "q2"], ["yn"])]
        b_inits += [_i64("ax1", [1]), numpy_helper.from_array(np.array(1, np.float32), "one_f")]
        b_in.append(helper.make_tensor_value_info("y", F32, None))
        b_out.append(helper.make_tensor_value_info("yn", F32, None))
        g_in.append(helper.make_tensor_value_info("Mk", BOOL, None))
        outer.append(mk("Mul", ["h0", "zf"], ["y0"]))
        g_inits.append(numpy_helper.from_array(np.array(0, np.float32), "zf"))
        carried.append("y0")
        louts.append("y_end")
        scan = "yn"
    b_out.append(helper.make_tensor_value_info(scan, F32, None))
    body = helper.make_graph(bn, "body", b_in, b_out, b_inits)
    outer.append(mk("Loop", ["T", "true"] + carried, louts + ["Y"], body=body))
    g_out = [helper.make_tensor_value_info(n, F32 if n != "k_end" else I8, None)
             for n in ["Y", "h_end"] + (["k_end"] if change == "int8_counter" else [])]
    g = helper.make_graph(outer, "g", g_in, g_out, g_inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _feeds(T, B, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return {"X": (rng.uniform(-1, 1, (T, B, H)) + shift).astype(np.float32),
            "h0": rng.uniform(-1, 1, (B, H)).astype(np.float32)}


def _plan(m):
    (lp,) = [s[1][0] for s in m._steps if s[0] == "op" and s[1][1] == "Loop"]
    f = lp._fusion
    return None if f is None or f.cache is None else f.cache[2]


def _check(data, feeds, m):
    """fastrnn (model ``m``, fused where it may be) against ONNX Runtime and the op-by-op
    run."""
    _compare(data, feeds, np.float32, fused=None, model=m)


def test_cell_reading_x_besides_its_gather_is_not_fused():
    data = _rnn_loop("x_direct")
    m = load_onnx(data)
    _check(data, _feeds(6, 2, 1), m)
    assert _plan(m) is None


def test_value_computed_from_x_is_followed_from_call_to_call():
    """A bias computed from X (ReduceMean) once per call: each call's own (not fused, or
    a plan that follows X)."""
    data = _rnn_loop("x_bias")
    m = load_onnx(data)
    for k in range(3):
        _check(data, _feeds(6, 2, 10 + k, shift=k), m)


def test_narrow_counter_wraps_as_op_by_op():
    """An int8 counter carried beside t ends past 127: it wraps (ONNX Runtime's and the
    op-by-op result), no OverflowError."""
    data = _rnn_loop("int8_counter")
    m = load_onnx(data)
    _check(data, _feeds(20, 2, 3), m)


def test_masked_output_state_after_h_is_fused():
    """Under a mask, the carried output y after h in the Loop's inputs (tf2onnx puts it
    first; the order is the writer's): fused as well, Keras's numbers."""
    data = _rnn_loop("mask_y_last")
    m = load_onnx(data)
    f = _feeds(6, 3, 4)
    mask = np.ones((6, 3), bool)
    mask[:2, 0] = False
    mask[3, 1] = False
    mask[4:, 2] = False
    f["Mk"] = mask
    _check(data, f, m)
    assert _plan(m) is not None
