"""ONNX ops tf2onnx writes for common Keras layers (found by a differential audit of
tf2onnx 1.17 exports of Keras models: every file fastrnn loaded matched, these were
refused): Pad (Conv1D(padding="causal"), dilated Conv1D / Conv2D with padding="same"),
Einsum (MultiHeadAttention), ReduceSumSquare / ReduceL2 (LayerNormalization below opset
17), and the hint a refused Loop (a Keras RNN tf2onnx could not fuse) gives.  Tiny graphs
built with onnx.helper, checked against ONNX Runtime (no TensorFlow needed)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402


def _graph(nodes, ins, inits=(), opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ins],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _ort(data, feeds):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("eq,shapes", [
    ("abc,cde->abde", [(2, 5, 8), (8, 2, 4)]),          # MHA query/key/value projection
    ("aecd,abcd->acbe", [(2, 5, 2, 4), (2, 7, 2, 4)]),  # MHA scores
    ("acbe,aecd->abcd", [(2, 2, 7, 5), (2, 5, 2, 4)]),  # MHA weighted values
    ("abcd,cde->abe", [(2, 7, 2, 4), (2, 4, 8)]),       # MHA output projection
    ("...ij,jk->...ik", [(2, 3, 4, 5), (5, 2)]),
    ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 2)]),
])
def test_einsum_matches_onnxruntime(eq, shapes):
    rng = np.random.default_rng(0)
    names = [f"x{k}" for k in range(len(shapes))]
    data = _graph([helper.make_node("Einsum", names, ["y"], equation=eq)], names)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    m = load_onnx(data)
    for _ in range(2):
        np.testing.assert_allclose(m.run(feeds)["y"], _ort(data, feeds), rtol=1e-5, atol=1e-5)


def test_einsum_with_constant_weight_folds_and_runs():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 3)).astype(np.float32)
    data = _graph([helper.make_node("Einsum", ["x", "w"], ["y"], equation="abc,cde->abde")], ["x"],
                  [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(load_onnx(data).run({"x": x})["y"], _ort(data, {"x": x}), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL2"])
def test_reduce_sum_square_and_l2(op, opset):
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    if opset >= 18:
        inits = [helper.make_tensor("ax", TensorProto.INT64, [1], [-1])]
        node = helper.make_node(op, ["x", "ax"], ["y"], keepdims=1)
    else:
        inits = []
        node = helper.make_node(op, ["x"], ["y"], axes=[-1], keepdims=1)
    data = _graph([node], ["x"], inits, opset)
    np.testing.assert_allclose(load_onnx(data).run({"x": x})["y"], _ort(data, {"x": x}), rtol=1e-5, atol=1e-6)


def test_loop_runs_and_a_malformed_scan_error_names_the_node():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    inits = [helper.make_tensor("n", TensorProto.INT64, [], [3]),
             helper.make_tensor("c", TensorProto.BOOL, [], [True])]
    node = helper.make_node("Loop", ["n", "c", "x"], ["y"], name="model/simple_rnn/while_loop", body=body)
    data = _graph([node], ["x"], inits)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # a Loop runs (tests/test_onnx_loop.py); so do If and Scan (tests/test_onnx_if.py,
    # tests/test_onnx_scan.py): a Scan given a Loop's body is a LoadError naming it
    np.testing.assert_array_equal(load_onnx(data).run({"x": x})["y"], _ort(data, {"x": x}))
    scan = helper.make_node("Scan", ["x"], ["y"], name="model/simple_rnn/scan", body=body,
                            num_scan_inputs=1)
    with pytest.raises(LoadError, match=r"Scan 'model/simple_rnn/scan': its body takes 3 "
                                        r"inputs; a Scan with 0 state\(s\) and 1 scan "
                                        r"input\(s\) needs 1"):
        load_onnx(_graph([scan], ["x"], []))


def _model(nodes, inits, opset, tt=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", tt, None)],
                          [helper.make_tensor_value_info("y", tt, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _ort1(data, x):
    return _ort(data, {"x": x})


@pytest.mark.parametrize("opset,mode", [(o, m) for o in (2, 11, 13, 18, 19)
                                         for m in ("constant", "reflect", "edge", "wrap")
                                         if m != "wrap" or o >= 19])    # (wrap: opset 19)
def test_pad_node_matches_onnxruntime(opset, mode):
    rng = np.random.default_rng(opset)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    pads = [0, 2, 1, 1, 0, 2] if mode != "constant" else [0, 2, -1, 1, 0, 2]
    if opset < 11:
        nodes = [helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=0.5)]
        inits = []
    else:
        ins = ["x", "pads"] + (["cv"] if mode == "constant" else [])
        inits = [helper.make_tensor("pads", TensorProto.INT64, [6], pads)]
        if mode == "constant":
            inits.append(helper.make_tensor("cv", TensorProto.FLOAT, [], [0.5]))
        nodes = [helper.make_node("Pad", ins, ["y"], mode=mode)]
    data = _model(nodes, inits, opset)
    m = load_onnx(data)
    for _ in range(2):                    # (the second call runs the kept program)
        np.testing.assert_array_equal(m.run({"x": x})["y"], _ort1(data, x))


def test_pad_axes_input_opset18():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    inits = [helper.make_tensor("pads", TensorProto.INT64, [2], [2, 0]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [-2])]
    data = _model([helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])], inits, 18)
    np.testing.assert_array_equal(load_onnx(data).run({"x": x})["y"], _ort1(data, x))


def test_tf2onnx_causal_conv1d_pad_then_conv():
    """The shape of tf2onnx's Keras Conv1D(4, 3, padding="causal") export: Pad the time
    axis of (B, T, C) by k-1 in front, Unsqueeze to (B, 1, T, C), Transpose to NCHW, a
    Conv of kernel [1, 3]; dynamic B and T."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 1, 3)).astype(np.float32)
    inits = [helper.make_tensor("pads", TensorProto.INT64, [6], [0, 2, 0, 0, 0, 0]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
             helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Unsqueeze", ["p", "ax"], ["u"]),
             helper.make_node("Transpose", ["u"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[1, 3])]
    data = _model(nodes, inits, 13)
    m = load_onnx(data)
    for shape in ((2, 9, 2), (3, 13, 2), (1, 1, 2)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(m.run({"x": x})["y"], _ort1(data, x), rtol=1e-5, atol=1e-5)


def test_pad_errors_name_the_problem():
    x = np.zeros((2, 3), np.float32)
    inits = [helper.make_tensor("pads", TensorProto.INT64, [3], [1, 1, 1])]
    data = _model([helper.make_node("Pad", ["x", "pads"], ["y"])], inits, 13)
    with pytest.raises(ValueError, match="Pad: pads must have 4 values"):
        load_onnx(data).run({"x": x})
