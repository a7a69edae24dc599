"""ONNX Mod (audit_dynamo finding F3): torch's TorchScript export of nn.MultiheadAttention
(an RNN encoder's attention head) writes a Mod on its shape arithmetic, so the model was
refused at load.  Compared with ONNX Runtime and PyTorch."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402

from fastrnn.io.onnx import load_onnx  # noqa: E402


def _mod_model(dtype, fmod, opset=13):
    T = {np.int64: TensorProto.INT64, np.int32: TensorProto.INT32,
         np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[dtype]
    g = helper.make_graph([helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod, name="m")], "g",
                          [helper.make_tensor_value_info("a", T, None),
                           helper.make_tensor_value_info("b", T, None)],
                          [helper.make_tensor_value_info("y", T, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("dtype,fmod", [(np.int64, 0), (np.int64, 1), (np.int32, 0),
                                        (np.float32, 1), (np.float64, 1)])
def test_mod_matches_onnxruntime(dtype, fmod):
    model = _mod_model(dtype, fmod)
    a = np.array([[-7, 7, -7, 7, 5, 0], [9, -9, 3, -3, 2, 1]], dtype)
    b = np.array([3, -3, -3, 3, 5, 4], dtype)             # (broadcast over the rows)
    if np.dtype(dtype).kind == "f":
        a = a + np.asarray(0.5, dtype)
    got = load_onnx(model).run({"a": a, "b": b})["y"]
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
    assert got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_mod_refuses_what_onnxruntime_refuses():
    m = load_onnx(_mod_model(np.float32, 0))          # floats take fmod=1 before opset 28
    with pytest.raises(ValueError, match="'m'.*fmod=0 takes integers"):
        m.run({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    m = load_onnx(_mod_model(np.int64, 0))
    with pytest.raises(ValueError, match="division by zero"):
        m.run({"a": np.ones(2, np.int64), "b": np.array([1, 0], np.int64)})


class _RnnMha(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = torch.nn.LSTM(4, 8, batch_first=True, bidirectional=True)
        self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.lin = torch.nn.Linear(16, 3)

    def forward(self, x):
        o, _ = self.rnn(x)
        a, w = self.mha(o, o, o)
        return self.lin(a.mean(1)), w


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_torchscript_export_of_multihead_attention_head_runs(opset):
    net = _RnnMha().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 5, 4),), buf, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y", "w"],
                      dynamic_axes={"x": {0: "batch"}})
    data = buf.getvalue()
    assert "Mod" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    m = load_onnx(data)
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(opset)
    for B in (2, 1, 3, 1):       # (the export keeps T = 5 in nn.MultiheadAttention's Reshapes)
        x = rng.standard_normal((B, 5, 4)).astype(np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        got = m.run(None, {"x": x})
        for g_, r_, o_ in zip(got, ref, s.run(None, {"x": x})):
            np.testing.assert_allclose(g_, r_, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g_, o_, rtol=1e-5, atol=1e-5)
