"""Keras attention layers: fastrnn.model's Attention, AdditiveAttention and
MultiHeadAttention (checked against direct float64 loops over (batch, query step) written
from Keras 3.15.1's source), and Keras functional models using them (fixtures
k3_attn_* / k3_mha_* by real Keras 3.15.1 with JAX, tests/fixtures/make_keras3.py)."""
import json
import math

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import (INPUT, AdditiveAttention, Attention, Dense,  # noqa: E402
                           GlobalPooling1D, Model, MultiHeadAttention, model_from_config)
from test_keras import _edit_config, as_list, model_path, reference  # noqa: E402

FIXTURES = ["k3_attn_self_masked", "k3_attn_seq2seq_additive", "k3_attn_causal_concat_h5",
            "k3_mha_bilstm_ln", "k3_mha_causal_scores_h5", "k3_attn_mha_policy64"]
TOL = 1e-5
# k3_attn_mha_policy64 (float64): Keras 3.15's JAX MultiHeadAttention without scores runs
# jax.nn.dot_product_attention, which computes the softmax in float32 (its own two paths
# differ by ~1.6e-7 in float64); fastrnn's float64 is float64 throughout
TOL64 = 1e-6


# ----------------------------------------------------------------------------- fixtures

@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_match_keras(name):
    model = load_keras(model_path(name))
    x, ys = reference(name)
    for bs in (None, 2):
        out = as_list(model.predict(x, batch_size=bs))
        assert len(out) == len(ys)
        for a, b in zip(out, ys):
            assert a.shape == b.shape and a.dtype == b.dtype
            tol = TOL64 if b.dtype == np.float64 else TOL
            assert float(np.max(np.abs(a - b))) <= tol


def test_fixture_max_errors_are_small():
    """The errors vs Keras (float32 rounding; see TOL64 for the float64 one)."""
    errs = {}
    for name in FIXTURES:
        x, ys = reference(name)
        out = as_list(load_keras(model_path(name)).predict(x))
        errs[name] = max(float(np.max(np.abs(a - b))) for a, b in zip(out, ys))
    assert max(v for k, v in errs.items() if "policy64" not in k) <= 2.5e-7
    assert errs["k3_attn_mha_policy64"] <= 1e-7


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_save_and_load(name, tmp_path):
    model = load_keras(model_path(name))
    x, _ = reference(name)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    for a, b in zip(as_list(model.predict(x)), as_list(again.predict(x))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    kinds = {type(l).__name__ for l in again.layers}
    assert kinds & {"Attention", "AdditiveAttention", "MultiHeadAttention"}


def test_loaded_layers_and_options():
    m = load_keras(model_path("k3_attn_seq2seq_additive"))
    att = [l for l in m.layers if isinstance(l, AdditiveAttention)]
    assert len(att) == 1 and att[0].return_attention_scores and att[0].scale.shape == (4,)
    m = load_keras(model_path("k3_attn_causal_concat_h5"))
    att = [l for l in m.layers if isinstance(l, Attention)][0]
    assert att.use_causal_mask and att.score_mode == "concat"
    assert att.scale.shape == () and att.concat_score_weight.shape == ()
    m = load_keras(model_path("k3_mha_causal_scores_h5"))
    mha = [l for l in m.layers if isinstance(l, MultiHeadAttention)][0]
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 3, 5)
    assert mha.output_kernel.shape == (2, 5, 6) and mha.query_bias is None
    assert mha.use_causal_mask and mha.return_attention_scores and mha.zero_masked
    m = load_keras(model_path("k3_mha_bilstm_ln"))
    mha = [l for l in m.layers if isinstance(l, MultiHeadAttention)][0]
    assert not mha.zero_masked and mha.query_bias.shape == (2, 4)


def test_stream_refuses_attention_models():
    with pytest.raises(ValueError, match="cannot stream"):
        fastrnn.Stream(load_keras(model_path("k3_attn_self_masked")))


# ----------------------------------------------------------------------------- reference loops

def _softmax(s):
    e = [math.exp(v - max(s)) for v in s]
    t = sum(e)
    return [v / t for v in e]


def ref_attention(q, v, k=None, qm=None, vm=None, causal=False, mode="dot", scale=None,
                  concat_w=None, additive_scale=None, additive=False, dtype=np.float64):
    """Keras 3.15's Attention / AdditiveAttention, one (batch, query step) at a time in
    float64 (masked value steps: score - 1e9, the subtraction rounded in ``dtype`` as
    Keras computes it in the layer's dtype; masked query steps: output 0)."""
    rnd = np.dtype(dtype).type
    k = v if k is None else k
    B, Tq, _ = q.shape
    Tv, D = v.shape[1], v.shape[2]
    out = np.zeros((B, Tq, D))
    W = np.zeros((B, Tq, Tv))
    for b in range(B):
        for i in range(Tq):
            s = []
            for j in range(Tv):
                if additive:
                    t = np.tanh(q[b, i] + k[b, j])
                    val = float(np.sum(t * (1.0 if additive_scale is None else additive_scale)))
                elif mode == "dot":
                    val = float(np.dot(q[b, i], k[b, j])) * (1.0 if scale is None else scale)
                else:
                    t = (q[b, i] + k[b, j]) * (1.0 if scale is None else scale)
                    val = concat_w * float(np.sum(np.tanh(t)))
                keep = (vm is None or vm[b, j]) and (not causal or j <= i)
                s.append(val if keep else float(rnd(val) - rnd(1e9)))
            w = _softmax(s)
            W[b, i] = w
            if qm is None or qm[b, i]:
                out[b, i] = sum(w[j] * v[b, j] for j in range(Tv))
    return out, W


def ref_mha(query, value, key, wq, bq, wk, bk, wv, bv, wo, bo, qm=None, vm=None, km=None,
            causal=False, zero_masked=False):
    """Keras 3.15's MultiHeadAttention (JAX), per (batch, head, query step), float64."""
    B, T, _ = query.shape
    S = value.shape[1]
    N, K = wq.shape[1], wq.shape[2]
    V = wv.shape[2]
    out = np.zeros((B, T, wo.shape[2]))
    W = np.zeros((B, N, T, S))
    for b in range(B):
        for i in range(T):
            heads = np.zeros((N, V))
            for n in range(N):
                qv = query[b, i] @ wq[:, n, :] + (0 if bq is None else bq[n])
                s, keep = [], []
                for j in range(S):
                    kv = key[b, j] @ wk[:, n, :] + (0 if bk is None else bk[n])
                    s.append(float(np.dot(qv / math.sqrt(K), kv)))
                    keep.append((qm is None or qm[b, i]) and (vm is None or vm[b, j]) and
                                (km is None or km[b, j]) and (not causal or j <= i))
                w = _softmax([x if ok else -1e9 for x, ok in zip(s, keep)])
                if zero_masked:
                    w = [x if ok else 0.0 for x, ok in zip(w, keep)]
                W[b, n, i] = w
                for j in range(S):
                    heads[n] += w[j] * (value[b, j] @ wv[:, n, :] + (0 if bv is None else bv[n]))
            out[b, i] = np.einsum("nd,nde->e", heads, wo) + (0 if bo is None else bo)
    return out, W


def _data(seed, dtype, Tq=4, Tv=5, D=3):
    rng = np.random.RandomState(seed)
    q = rng.normal(size=(3, Tq, D)).astype(dtype)
    v = rng.normal(size=(3, Tv, D)).astype(dtype)
    k = rng.normal(size=(3, Tv, D)).astype(dtype)
    qm = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], bool)[:, :Tq]
    # batch 0: every value step masked (a fully masked row); 1: some; 2: none
    vm = np.array([[0, 0, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], bool)[:, :Tv]
    return q, v, k, qm, vm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", ["dot", "dot_scale", "concat", "concat_scale", "key",
                                  "nomask"])
def test_attention_matches_loop(dtype, causal, case):
    q, v, k, qm, vm = _data(1, dtype)
    scale = 0.7 if case in ("dot_scale", "concat_scale") else None
    mode = "concat" if case.startswith("concat") else "dot"
    cw = -1.3 if mode == "concat" else None
    key = k if case == "key" else None
    masks = None if case == "nomask" else [qm, vm] + ([None] if key is not None else [])
    layer = Attention(scale, mode, cw, return_attention_scores=True, use_causal_mask=causal,
                      dtype=dtype)
    ins = [q, v] + ([key] if key is not None else [])
    (out, w), m = layer.call(ins, masks)
    ro, rw = ref_attention(*(a.astype(np.float64) for a in (q, v)),
                           k=None if key is None else key.astype(np.float64),
                           qm=None if masks is None else qm, vm=None if masks is None else vm,
                           causal=causal, mode=mode, scale=scale, concat_w=cw, dtype=dtype)
    assert out.dtype == w.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ro, atol=tol)
    np.testing.assert_allclose(w, rw, atol=tol)
    assert (m is None) == (masks is None)
    if masks is not None:
        np.testing.assert_array_equal(m, qm)
        assert np.all(out[~qm] == 0)


def test_fully_masked_rows_follow_keras():
    """Keras lowers masked scores by 1e9: in float32 a row with every step masked rounds
    to equal scores (uniform weights), in float64 it keeps the unmasked softmax."""
    q, v, _, _, vm = _data(2, np.float32)
    (o32, w32) = Attention(return_attention_scores=True).call([q, v], [None, vm])[0]
    np.testing.assert_allclose(w32[0], np.full((4, 5), 0.2), atol=1e-7)
    (o64, w64) = Attention(return_attention_scores=True).call(
        [q.astype(np.float64), v.astype(np.float64)], [None, vm])[0]
    s = q[0].astype(np.float64) @ v[0].astype(np.float64).T
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(w64[0], e / e.sum(-1, keepdims=True), atol=1e-6)
    assert np.all(np.isfinite(o32)) and np.all(np.isfinite(o64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_scale", [False, True])
def test_additive_attention_matches_loop(dtype, causal, use_scale):
    q, v, _, qm, vm = _data(3, dtype)
    scale = np.random.RandomState(4).uniform(-1, 1, 3).astype(dtype) if use_scale else None
    layer = AdditiveAttention(scale, return_attention_scores=True, use_causal_mask=causal,
                              dtype=dtype)
    (out, w), m = layer.call([q, v], [qm, vm])
    # (float64 without scale: Keras 3.15's float32 tanh keeps the scores float32, their
    # masked steps' - 1e9 rounded in float32)
    rdt = np.float32 if dtype == np.float64 and not use_scale else dtype
    ro, rw = ref_attention(q.astype(np.float64), v.astype(np.float64), qm=qm, vm=vm,
                           causal=causal, additive=True, dtype=rdt,
                           additive_scale=None if scale is None else scale.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-6 if rdt == np.float32 else 1e-12
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ro, atol=tol)
    np.testing.assert_allclose(w, rw, atol=tol)
    np.testing.assert_array_equal(m, qm)


def _mha_weights(seed, dtype, F=3, N=2, K=4, V=5, O=6, bias=True, Fk=None):
    rng = np.random.RandomState(seed)
    r = lambda *s: rng.uniform(-0.7, 0.7, s).astype(dtype)
    Fk = F if Fk is None else Fk
    ws = [r(F, N, K), r(Fk, N, K), r(F, N, V), r(N, V, O)]
    bs = [r(N, K), r(N, K), r(N, V), r(O)] if bias else [None] * 4
    return ws, bs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scores", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_multi_head_attention_matches_loop(dtype, causal, scores, bias):
    q, v, k, qm, vm = _data(5, dtype, Tq=5)
    qm = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)
    km = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 0, 1, 1, 1]], bool)
    ws, bs = _mha_weights(6, dtype, bias=bias)
    layer = MultiHeadAttention(*ws, *bs, return_attention_scores=scores,
                               use_causal_mask=causal, dtype=dtype)
    res, m = layer.call([q, v, k], [qm, vm, km])
    out, w = res if scores else (res, None)
    ro, rw = ref_mha(*(a.astype(np.float64) for a in (q, v, k)),
                     *[None if a is None else a.astype(np.float64)
                       for pair in zip(ws, bs) for a in pair],
                     qm=qm, vm=vm, km=km, causal=causal, zero_masked=scores)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert out.dtype == dtype and out.shape == (3, 5, 6)
    np.testing.assert_allclose(out, ro, atol=tol)
    if scores:
        assert w.shape == (3, 2, 5, 5)
        np.testing.assert_allclose(w, rw, atol=tol)
    np.testing.assert_array_equal(m, qm)


def test_mha_fully_masked_rows_uniform_or_zero():
    """A query step with nothing to attend to: the values' mean (Keras's JAX
    dot_product_attention) or weights 0 (its Softmax path, when returning the scores)."""
    q, v, _, _, vm = _data(7, np.float64, Tq=5)
    ws, bs = _mha_weights(8, np.float64)
    (_, w0), _ = MultiHeadAttention(*ws, *bs, return_attention_scores=True).call(
        [q, v], [None, vm])
    assert np.all(w0[0] == 0)
    (_, w1), _ = MultiHeadAttention(*ws, *bs, return_attention_scores=True,
                                    zero_masked=False).call([q, v], [None, vm])
    np.testing.assert_allclose(w1[0], 0.2)


def test_model_graph_save_and_load(tmp_path):
    """A hand-made graph: Attention over the model's two inputs, pooled; saved, loaded."""
    q, v, _, qm, vm = _data(9, np.float32)
    layers = [Attention(np.float32(0.5), return_attention_scores=True, use_causal_mask=True),
              GlobalPooling1D("average"), Dense(np.ones((3, 2), np.float32))]
    model = Model(layers, inputs=[[(INPUT, 0), (INPUT, 1)], [(0, 0)], [(1, 0)]],
                  outputs=[(2, 0), (0, 1)], n_inputs=2)
    out = model([q, v], mask=[qm, vm])
    assert [a.shape for a in out] == [(3, 2), (3, 4, 5)]
    model.save(tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    for a, b in zip(out, again([q, v], mask=[qm, vm])):
        np.testing.assert_array_equal(a, b)
    cfg = model.save_config()
    assert cfg["layers"][0]["use_causal_mask"] and cfg["layers"][0]["return_attention_scores"]
    again = model_from_config(json.loads(json.dumps(cfg)), model.state_dict())
    np.testing.assert_array_equal(again([q, v], mask=[qm, vm])[1], out[1])


# ----------------------------------------------------------------------------- errors

def test_layer_errors_are_named():
    q, v, _, _, _ = _data(10, np.float32)
    with pytest.raises(ValueError, match=r"Attention takes 2 or 3 tensors"):
        Attention(name="att").call([q])
    with pytest.raises(ValueError, match="query and key need the same features"):
        Attention().call([q, v[..., :2]])
    with pytest.raises(ValueError, match="score_mode must be 'dot' or 'concat'"):
        Attention(score_mode="general")
    with pytest.raises(ValueError, match="the query must be 3-D"):
        Attention().call([q[:, 0], v])
    ws, bs = _mha_weights(11, np.float32)
    with pytest.raises(ValueError, match="give all four biases or none"):
        MultiHeadAttention(*ws, bs[0], None, bs[2], bs[3])
    with pytest.raises(ValueError, match="the query has 2 features, its kernel takes 3"):
        MultiHeadAttention(*ws, *bs).call([q[..., :2], v])
    with pytest.raises(ValueError, match=r"reads 2 to 3 tensors, given 1"):
        Model([Attention()], inputs=[[(INPUT, 0)]])


def _set(layer_cls, fn):
    def edit(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == layer_cls:
                fn(l)
    return edit


def test_loader_refusals_are_named(tmp_path):
    name = "k3_mha_bilstm_ln"

    def amask(l):
        n = l["inbound_nodes"][0]
        n["kwargs"]["attention_mask"] = n["args"][0]
    with pytest.raises(LoadError, match=r"\(MultiHeadAttention\) is called with attention_mask"
                                        r"=<output 0 of 'bidirectional\w*'>: not supported "
                                        r"\(fastrnn computes the attention mask from the "
                                        r"inputs' masks"):
        load_keras(_edit_config(name, tmp_path, _set("MultiHeadAttention", amask)))
    with pytest.raises(LoadError, match=r"attention_axes=\[2\] is not supported"):
        load_keras(_edit_config(name, tmp_path, _set(
            "MultiHeadAttention", lambda l: l["config"].update(attention_axes=[2]))))
    with pytest.raises(LoadError, match=r"use_gate=True is not supported"):
        load_keras(_edit_config(name, tmp_path, _set(
            "MultiHeadAttention", lambda l: l["config"].update(use_gate=True))))
    with pytest.raises(LoadError, match=r"output_shape=\[2, 3\] is not supported"):
        load_keras(_edit_config(name, tmp_path, _set(
            "MultiHeadAttention", lambda l: l["config"].update(output_shape=[2, 3]))))

    def vmask_none(l):
        l["inbound_nodes"][0]["kwargs"]["value_mask"] = None
    # (value_mask=None: Keras fills it from the value's own mask, as fastrnn does)
    m = load_keras(_edit_config(name, tmp_path, _set("MultiHeadAttention", vmask_none)))
    x, ys = reference(name)
    assert float(np.max(np.abs(m.predict(x) - ys[0]))) <= TOL

    name = "k3_attn_self_masked"

    def no_masks(l):
        l["inbound_nodes"][0]["kwargs"]["mask"] = [None, None]
    with pytest.raises(LoadError, match=r"\(Attention\) is given the mask None for its input "
                                        r"0: not supported; fastrnn applies its inputs' own "
                                        r"masks, which here give not_equal"):
        load_keras(_edit_config(name, tmp_path, _set("Attention", no_masks)))

    def training(l):
        l["inbound_nodes"][0]["kwargs"]["use_causal_mask"] = "yes"
    with pytest.raises(LoadError, match=r"use_causal_mask='yes': not supported"):
        load_keras(_edit_config(name, tmp_path, _set("Attention", training)))

    def one_input(l):
        n = l["inbound_nodes"][0]
        n["args"] = [n["args"][0][:1]]
    with pytest.raises(LoadError, match=r"\(Attention\) is called on 1 tensors; it takes "
                                        r"\[query, value\] or \[query, value, key\]"):
        load_keras(_edit_config(name, tmp_path, _set("Attention", one_input)))
    with pytest.raises(LoadError, match=r"score_mode 'general' is not supported"):
        load_keras(_edit_config(name, tmp_path, _set(
            "Attention", lambda l: l["config"].update(score_mode="general"))))


def test_float64_additive_attention_without_scale_keeps_float32_weights(tmp_path):
    """Keras 3.15's tanh runs in float32 in a float64 model (JAX): a float64
    AdditiveAttention(use_scale=False) computes its scores and their softmax in float32
    and returns float32 weights (its output float64: the float32 weights times the
    float64 value), as Keras 3.15.1 does; with the float64 scale the scores are float64."""
    q, v, _, qm, vm = _data(12, np.float64)
    out, w = AdditiveAttention(None, return_attention_scores=True,
                               dtype="float64").call([q, v], [qm, vm])[0]
    s = np.tanh((q[:, :, None] + v[:, None]).astype(np.float32)).sum(-1)
    s = np.where(vm[:, None], s, s - np.float32(1e9))
    want = np.exp(s - s.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert w.dtype == np.float32 and out.dtype == np.float64
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out, np.where(qm[..., None], want @ v, 0), rtol=1e-6,
                               atol=1e-7)
    out, w = AdditiveAttention(np.ones(3), return_attention_scores=True,
                               dtype="float64").call([q, v], [qm, vm])[0]
    assert w.dtype == np.float64 and out.dtype == np.float64

    def f64_no_scale(c):
        for l in c["config"]["layers"]:
            d = l["config"].get("dtype")
            if isinstance(d, dict):
                d["config"]["name"] = "float64"
            if l["class_name"] == "AdditiveAttention":
                l["config"]["use_scale"] = False
    model = load_keras(_edit_config("k3_attn_seq2seq_additive", tmp_path, f64_no_scale))
    x, ys = reference("k3_attn_seq2seq_additive")
    out, w = model.predict(x)
    assert out.dtype == np.float64 and w.dtype == np.float32 and w.shape == ys[1].shape
