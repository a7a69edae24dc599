"""ONNX Attention, opsets 23-24 (audit_dynamo finding F2): torch 2.13's dynamo exporter
writes F.scaled_dot_product_attention and nn.MultiheadAttention as one Attention node when
asked for opset 23 or later, so an RNN with an attention head exported so was refused at
load.  Compared with ONNX Runtime (random nodes) and PyTorch (exports)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from onnx import TensorProto, helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

TOL = 1e-5


def _attention_model(opset, attrs, mask=None, extra_inputs=(), extra_outputs=()):
    names = ["Q", "K", "V"] + (["M"] if mask is not None else []) + list(extra_inputs)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Q", "K", "V")]
    if mask is not None:
        ins.append(helper.make_tensor_value_info("M", mask, None))
    ins += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_inputs if n]
    outs = ["Y"] + list(extra_outputs)
    node = helper.make_node("Attention", names, outs, name="att", **attrs)
    return helper.make_model(helper.make_graph(
        [node], "g", ins, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs if n]),
        opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("seed", range(40))
def test_random_attention_nodes_match_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    B, Sq, Sk, hk = (int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6)),
                     int(rng.choice([1, 2])))
    hq = hk * int(rng.choice([1, 2, 3]))
    D, Dv = int(rng.choice([1, 4, 8])), int(rng.choice([2, 4]))
    three = seed % 2 == 1
    attrs = {}
    if seed % 3 == 0:
        attrs["is_causal"] = 1
    if seed % 5 == 1:
        attrs["scale"] = float(rng.uniform(0.1, 2))
    if seed % 7 == 2:
        attrs["softcap"] = float(rng.uniform(0.5, 3))
    if three:
        attrs.update(q_num_heads=hq, kv_num_heads=hk)
        feeds = {"Q": rng.standard_normal((B, Sq, hq * D)), "K": rng.standard_normal((B, Sk, hk * D)),
                 "V": rng.standard_normal((B, Sk, hk * Dv))}
    else:
        feeds = {"Q": rng.standard_normal((B, hq, Sq, D)), "K": rng.standard_normal((B, hk, Sk, D)),
                 "V": rng.standard_normal((B, hk, Sk, Dv))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    kind = ("bool", "float", None)[seed % 3]
    mask = None
    if kind is not None:
        shape = [(Sq, Sk), (B, 1, Sq, Sk), (1, hq, Sq, Sk)][seed % 3 if seed % 4 else 0]
        mask = TensorProto.BOOL if kind == "bool" else TensorProto.FLOAT
        feeds["M"] = (rng.random(shape) < 0.7 if kind == "bool" else
                      np.where(rng.random(shape) < 0.2, -np.inf, rng.standard_normal(shape))
                      .astype(np.float32))
    model = _attention_model(int(rng.choice([23, 24])), attrs, mask)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    m = load_onnx(model)
    for _ in range(2):          # (the second call: the kept program)
        got = m.run(feeds)["Y"]
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=TOL, atol=TOL)


def test_a_query_attending_no_key_gives_zeros_as_onnxruntime():
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in (("Q", (1, 2, 3, 4)), ("K", (1, 2, 5, 4)), ("V", (1, 2, 5, 4)))}
    feeds["M"] = np.ones((3, 5), bool)
    feeds["M"][1] = False
    model = _attention_model(23, {}, TensorProto.BOOL)
    got = load_onnx(model).run(feeds)["Y"]
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert not np.isnan(got).any() and not got[:, :, 1].any()
    np.testing.assert_allclose(got, ref, rtol=TOL, atol=TOL)


def test_kv_cache_and_bad_masks_are_refused():
    with pytest.raises(LoadError, match="'att'.*KV cache"):
        load_onnx(_attention_model(23, {}, None, extra_inputs=("", "pk", "pv"),
                                   extra_outputs=("presk", "presv")))
    m = load_onnx(_attention_model(23, {}, TensorProto.BOOL))
    q = np.ones((1, 1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="'att'.*attn_mask"):
        m.run({"Q": q, "K": q, "V": q, "M": np.ones(2, bool)})        # (rank 1: ORT refuses)


class _GruSdpa(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        torch.manual_seed(1)
        self.rnn = torch.nn.GRU(4, 8, batch_first=True, bidirectional=True)
        self.q, self.k, self.v = (torch.nn.Linear(16, n) for n in (16, 8, 8))
        self.lin = torch.nn.Linear(16, 3)
        self.mask = mask

    def forward(self, x, lengths):
        o, _ = self.rnn(x)
        B, T, _ = o.shape
        q = self.q(o).view(B, T, 2, 8).transpose(1, 2)
        k = self.k(o).view(B, T, 1, 8).transpose(1, 2)      # (one K / V head: grouped)
        v = self.v(o).view(B, T, 1, 8).transpose(1, 2)
        m = None
        if self.mask:
            m = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                             enable_gqa=True)
        return self.lin(a.transpose(1, 2).reshape(B, T, 16).mean(1))


@pytest.mark.parametrize("opset,mask", [(23, False), (25, True)])
def test_dynamo_export_of_an_rnn_with_attention_runs(tmp_path, opset, mask):
    net = _GruSdpa(mask).eval()
    p = str(tmp_path / "m.onnx")
    Dim = torch.export.Dim
    torch.onnx.export(net, (torch.randn(2, 5, 4), torch.tensor([5, 3])), p, dynamo=True,
                      opset_version=opset, dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},
                                                           {0: Dim.AUTO}))
    assert "Attention" in {n.op_type for n in onnx.load(p).graph.node}
    m = load_onnx(p)
    rng = np.random.default_rng(opset)
    shapes = [(2, 5), (1, 5), (4, 5)] + ([(1, 1), (3, 7)] if not mask else [])
    for B, T in shapes:
        x = rng.standard_normal((B, T, 4)).astype(np.float32)
        L = rng.integers(1, T + 1, B).astype(np.int64)
        with torch.no_grad():
            ref = net(torch.from_numpy(x), torch.from_numpy(L)).numpy()
        got = m.run(None, {n: v for n, v in (("x", x), ("lengths", L)) if n in m.input_names})[0]
        np.testing.assert_allclose(got, ref, rtol=TOL, atol=TOL)
