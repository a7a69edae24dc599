"""tf.keras 2 (tf-keras 2.21) files beyond the recurrent layers: the attention layers
(Attention, AdditiveAttention, MultiHeadAttention in Keras 2's inbound form, with
tf.keras 2's own masking), CRNN front-ends (Conv2D, 2-D pooling, Permute, Reshape) and 1-D
convolutions, and the masks Reshape / Permute drop.  Fixtures k2_attn_*, k2_mha_*,
k2_crnn_*, k2_conv1d_pools, k2_reshape_permute_masked by real tf-keras 2.21.0
(tests/fixtures/make_keras2.py); every reference output is also what tf-keras's own
reload of the file computes."""
import json
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import (AdditiveAttention, Attention, Conv1D, Conv2D,  # noqa: E402
                           MultiHeadAttention, Permute, Pooling1D, Pooling2D, Reshape)
from test_keras import _edit_config, as_list, model_path, reference  # noqa: E402

ATTENTION = ["k2_attn_self_causal_bilstm", "k2_attn_concat_qvk", "k2_attn_causal_config",
             "k2_attn_additive_scores", "k2_mha_self_causal_scores",
             "k2_mha_nobias_key_residual", "k2_attn_float64"]
CONV = ["k2_crnn_ocr", "k2_crnn_avg_strided", "k2_conv1d_pools",
        "k2_reshape_permute_masked"]
FIXTURES = ATTENTION + CONV
TOL = 1e-5
# (k2_attn_float64: its LSTM's float64 differs from TensorFlow's by ~8e-9, as the other
# float64 fixtures'; its attention layers alone match to 1e-16:
# test_float64_attention_layers_alone)
TOL64 = 1e-7


def _check(model, name, bs=None, tol=None):
    x, ys = reference(name)
    out = as_list(model.predict(x, batch_size=bs))
    assert len(out) == len(ys)
    errs = []
    for a, b in zip(out, ys):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, a.dtype, b.dtype)
        errs.append(float(np.max(np.abs(a - b))))
        assert errs[-1] <= (tol or (TOL64 if b.dtype == np.float64 else TOL)), (name, errs)
    return max(errs)


def _edit_h5(name, tmp_path, fn):
    """A copy of fixture ``name`` whose model_config ``fn`` edits."""
    p = tmp_path / (name + ".h5")
    shutil.copy(model_path(name), p)
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        fn(c)
        f.attrs["model_config"] = json.dumps(c)
    return str(p)


def _layer_cfg(c, name):
    return next(l["config"] for l in c["config"]["layers"] if l["config"]["name"] == name)


def _first(c, cls):
    """The config of the first layer of class ``cls``."""
    return next(l["config"] for l in c["config"]["layers"] if l["class_name"] == cls)


def _of(model, cls):
    return [l for l in model.layers if isinstance(l, cls)]


# ----------------------------------------------------------------------------- fixtures

@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_match_tf_keras2(name):
    model = load_keras(model_path(name))
    _check(model, name)
    _check(model, name, bs=2)          # chunked predict gives the same


def test_fixture_max_errors_are_small():
    errs = {n: _check(load_keras(model_path(n)), n) for n in FIXTURES}
    assert max(v for k, v in errs.items() if k != "k2_attn_float64") <= 2.5e-7, errs
    assert errs["k2_attn_float64"] <= 2e-8, errs


def test_files_are_tf_keras2():
    for name in FIXTURES:
        with h5py.File(model_path(name), "r") as f:
            v = f.attrs["keras_version"]
            assert (v.decode() if isinstance(v, bytes) else v) == "2.21.0"
            c = json.loads(f.attrs["model_config"])
        nodes = [n for l in c["config"]["layers"] for n in l.get("inbound_nodes", [])]
        assert all(isinstance(n, list) for n in nodes)      # Keras 2's inbound form


@pytest.mark.parametrize("name", FIXTURES)
def test_save_and_load_give_identical_outputs(name, tmp_path):
    model = load_keras(model_path(name))
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    x, _ = reference(name)
    a_out, b_out = as_list(model.predict(x)), as_list(again.predict(x))
    for a, b in zip(a_out, b_out):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- attention

def test_loaded_attention_layers_and_options():
    m = load_keras(model_path("k2_attn_self_causal_bilstm"))
    (att,) = _of(m, Attention)
    assert att.use_causal_mask and att.score_mode == "dot" and att.scale.shape == ()
    m = load_keras(model_path("k2_attn_concat_qvk"))
    (att,) = _of(m, Attention)
    assert att.score_mode == "concat" and att.scale is not None and not att.use_causal_mask
    assert len(m.inputs[m.layers.index(att)]) == 3                 # [query, value, key]
    m = load_keras(model_path("k2_attn_additive_scores"))
    (att,) = _of(m, AdditiveAttention)
    assert att.return_attention_scores and att.scale.shape == (6,)
    m = load_keras(model_path("k2_mha_self_causal_scores"))
    (mha,) = _of(m, MultiHeadAttention)
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 3, 2)
    assert mha.output_kernel.shape == (2, 2, 5) and mha.query_bias is not None
    assert mha.use_causal_mask and mha.return_attention_scores
    # tf.keras 2: the masked scores lowered by adding -1e9, no weights zeroed
    assert mha.additive_mask and not mha.zero_masked
    m = load_keras(model_path("k2_mha_nobias_key_residual"))
    (mha,) = _of(m, MultiHeadAttention)
    assert mha.query_bias is None and mha.num_heads == 3 and mha.key_kernel.shape == (5, 3, 2)
    assert len(m.inputs[m.layers.index(mha)]) == 3                 # value= and key=


def test_keras3_attention_keeps_keras3_semantics():
    for name in ("k3_mha_bilstm_ln", "k3_mha_causal_scores_h5"):
        (mha,) = _of(load_keras(model_path(name)), MultiHeadAttention)
        assert not mha.additive_mask
    (mha,) = _of(load_keras(model_path("k3_mha_causal_scores_h5")), MultiHeadAttention)
    assert mha.zero_masked


def test_masked_scores_are_not_zeroed_as_keras3_does():
    """tf.keras 2's scores at masked query steps are a softmax (Keras 3 on JAX gives 0
    there when it returns them): checked on the fixture's own weights output."""
    name = "k2_mha_self_causal_scores"
    x, ys = reference(name)
    masked_q = x == 0
    w = ys[1].transpose(0, 2, 1, 3)[masked_q]        # (masked query steps, heads, Tv)
    assert w.size and np.allclose(w.sum(-1), 1.0, atol=1e-6)
    model = load_keras(model_path(name))
    (mha,) = _of(model, MultiHeadAttention)
    mha.zero_masked = True
    with pytest.raises(AssertionError):
        _check(model, name)


def test_float64_attention_layers_alone():
    """On Keras's own LSTM outputs (y3) the float64 layers match to rounding: tf.keras 2's
    MultiHeadAttention adds -1e9 to masked scores (a masked query step then softmaxes its
    own scores in float64, not uniformly) and its AdditiveAttention without scale runs in
    float64 (Keras 3.15 on JAX: float32 tanh)."""
    name = "k2_attn_float64"
    x, ys = reference(name)
    o, a, w, h = ys
    mask = np.any(x != 0, axis=-1)
    model = load_keras(model_path(name))
    (mha,), (add,) = _of(model, MultiHeadAttention), _of(model, AdditiveAttention)
    assert mha.query_kernel.dtype == np.float64
    assert mha.additive_mask and not add.float32_tanh
    out, _ = mha.call([h, h], [mask, mask])
    assert float(np.max(np.abs(out - o))) <= 1e-14
    (ctx, wts), _ = add.call([o, h], [mask, mask])
    assert wts.dtype == np.float64
    assert float(np.max(np.abs(ctx - a))) <= 1e-14
    assert float(np.max(np.abs(wts - w))) <= 1e-14
    # Keras 3's masking (-1e9 set, not added) differs at the masked query steps
    mha.additive_mask = False
    out, _ = mha.call([h, h], [mask, mask])
    assert float(np.max(np.abs(out - o)[~mask])) > 1e-3
    assert float(np.max(np.abs(out - o)[mask])) <= 1e-14


def test_causal_config_key_is_honoured(tmp_path):
    """tf.keras before 2.10 wrote Attention(causal=True) as the config key "causal";
    tf-keras 2.21 still honours it when it loads such a file (the fixture's reference)."""
    name = "k2_attn_causal_config"
    m = load_keras(model_path(name))
    assert all(l.use_causal_mask for l in _of(m, Attention))
    assert len(_of(m, Attention)) == 2          # (AdditiveAttention is an Attention)

    def drop(c):
        for n in ("att_causal", "add_causal"):
            del _layer_cfg(c, n)["causal"]
    m = load_keras(_edit_h5(name, tmp_path, drop))
    assert not any(l.use_causal_mask for l in _of(m, Attention))
    with pytest.raises(AssertionError):
        _check(m, name)


def test_causal_config_key_in_keras3_config_is_refused(tmp_path):
    def causal(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "Attention":
                l["config"]["causal"] = True
    p = _edit_config("k3_attn_self_masked", tmp_path, causal)
    with pytest.raises(LoadError, match=r"causal=True in a Keras 3 config"):
        load_keras(p)


def test_softmax_robust_masking_sets_the_scores(tmp_path):
    def robust(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "MultiHeadAttention":
                l["config"]["softmax_robust_masking"] = True
    name = "k2_mha_self_causal_scores"
    m = load_keras(_edit_h5(name, tmp_path, robust))
    (mha,) = _of(m, MultiHeadAttention)
    assert not mha.additive_mask and not mha.zero_masked
    _check(m, name)         # (the same in float32: the scores are far below 32)


def test_keras2_mha_call_forms_are_checked(tmp_path):
    def no_value(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "MultiHeadAttention":
                for t in l["inbound_nodes"][0]:
                    t[3].pop("value")
    with pytest.raises(LoadError, match="without a query and a value"):
        load_keras(_edit_h5("k2_mha_self_causal_scores", tmp_path, no_value))

    def mask_arg(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "MultiHeadAttention":
                for t in l["inbound_nodes"][0]:
                    t[3]["attention_mask"] = [t[0], 0, 0]
    with pytest.raises(LoadError, match="attention_mask"):
        load_keras(_edit_h5("k2_mha_self_causal_scores", tmp_path, mask_arg))


# ----------------------------------------------------------------------------- CRNN / conv

def test_conv_fixtures_hold_the_layers():
    kinds = {n: {type(l).__name__ for l in load_keras(model_path(n)).layers} for n in CONV}
    assert {"Conv2D", "Pooling2D", "Permute", "Reshape"} <= kinds["k2_crnn_ocr"]
    assert {"Conv2D", "Pooling2D", "Reshape"} <= kinds["k2_crnn_avg_strided"]
    assert {"Conv1D", "Pooling1D"} <= kinds["k2_conv1d_pools"]
    m = load_keras(model_path("k2_crnn_avg_strided"))
    c = _of(m, Conv2D)
    assert c[0].bias is None and c[1].dilation_rate == (2, 2)
    assert {p.op for p in _of(m, Pooling2D)} == {"max", "average"}
    m = load_keras(model_path("k2_conv1d_pools"))
    assert [c.padding for c in _of(m, Conv1D)] == ["same", "causal"]
    assert {p.op for p in _of(m, Pooling1D)} == {"max", "average"}
    m = load_keras(model_path("k2_crnn_ocr"))
    assert _of(m, Permute)[0].dims == (2, 1, 3) and _of(m, Reshape)[0].target_shape == (4, 12)


def test_reshape_and_permute_drop_the_mask():
    """tf.keras 2's Reshape and Permute drop the mask: a masked Embedding through a Reshape
    there and back runs its LSTM unmasked (outputs change at the padded steps), as the
    fixture's Keras outputs show; beside it a masked LSTM repeats its last kept step."""
    name = "k2_reshape_permute_masked"
    x, ys = reference(name)
    a, _, c = ys
    pad = x[0] == 0                                  # (post-padding in sequence 0)
    last = int(np.flatnonzero(~pad)[-1])
    assert np.allclose(c[0, pad], c[0, last])        # masked: repeated
    assert not np.allclose(a[0, pad], a[0, last])    # mask dropped
    _check(load_keras(model_path(name)), name)


@pytest.mark.parametrize("cls,edit", [
    ("Reshape", lambda cfg: cfg.update(target_shape=[7, 4])),
    ("Permute", lambda cfg: cfg.update(dims=[1, 2]))])
def test_shape_keeping_reshape_permute_on_a_mask_is_refused(tmp_path, cls, edit):
    """Where the shape stays as it is tf.keras 2 drops the mask, as Keras 3 on
    TensorFlow, and Keras 3 on JAX keeps it: refused, naming the layer, whatever
    hard_sigmoid= says."""
    p = _edit_h5("k2_reshape_permute_masked", tmp_path, lambda c: edit(_first(c, cls)))
    for hs in (None, "keras3"):
        with pytest.raises(LoadError, match=rf"layer '\w+' \({cls}\) reads a masked "
                                            r"tensor and may leave its shape as it is"):
            load_keras(p, hard_sigmoid=hs)


def test_shape_changing_reshape_on_a_mask_loads(tmp_path):
    # (the second Reshape, after the first dropped the mask, may keep the shape)
    m = load_keras(model_path("k2_reshape_permute_masked"))
    assert len(_of(m, Reshape)) == 2 and not _of(m, Permute)[0].identity
