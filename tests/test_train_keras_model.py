"""Gradients through whole Keras models (Model.forward_train / backward) against REAL
Keras 3: the fixtures of tests/fixtures/make_keras_model_grads.py hold each model's
outputs and, by ``jax.grad`` through the model, the gradients of every weight and float
input for fixed output gradients.  No Keras or JAX is needed here.

A weight's Keras gradient is compared with fastrnn's in fastrnn's layout by loading
the Keras gradients as if they were the layers' weights (``model_from_keras_config``:
the loader's conversion only re-indexes, so it maps gradients as it maps weights)."""
import glob
import json
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io.keras import load_keras, model_from_keras_config  # noqa: E402
from fastrnn.model import (INPUT, Add, Dense, Embedding, KerasRNN, Masking,  # noqa: E402
                           Model)
from fastrnn.train import Adam  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "keras", "model_grads")
NAMES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIX, "mgrad_*.npz")))


def fixture(name):
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        d = {k: z[k] for k in z.files}
    xs = [d["x"]] if "x" in d else [d[f"x{j}"] for j in range(sum(
        k.startswith("x") for k in d))]
    n_out = sum(k.startswith("gy") for k in d)
    return d, xs, [d[f"y{j}"] for j in range(n_out)], [d[f"gy{j}"] for j in range(n_out)]


def keras_grads(name, d):
    """The Keras weight gradients as a fastrnn model's parameters() (fastrnn's layout)."""
    with zipfile.ZipFile(os.path.join(FIX, name + ".keras")) as f:
        config = json.loads(f.read("config.json"))
    per_layer = {}
    for layer in d["grad_layers"]:
        layer = str(layer)
        k, key = 0, layer.replace("/", "__")
        while f"g_{key}_{k}" in d:
            per_layer.setdefault(layer, []).append(d[f"g_{key}_{k}"])
            k += 1
    return model_from_keras_config(config, per_layer, keras_version="3").parameters()


def close(got, want, what, tol=2e-5):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g}"


def numeric(arr, loss, eps=1e-6, skip=None, refresh=None):
    """Central differences of ``loss()`` in each entry of ``arr`` (edited in place and
    restored); ``skip(i)``: entries left at 0; ``refresh()``: run after each edit (a
    model's mark_weights_changed: a convolution keeps its kernel packed)."""
    num = np.zeros(arr.shape)
    for i in np.ndindex(arr.shape):
        if skip is not None and skip(i):
            continue
        old, vals = arr[i], []
        for v in (old + eps, old - eps):
            arr[i] = v
            if refresh is not None:
                refresh()
            vals.append(loss())
        arr[i] = old
        num[i] = (vals[0] - vals[1]) / (2 * eps)
    if refresh is not None:
        refresh()
    return num


def test_fixtures_present():
    assert len(NAMES) == 10


@pytest.mark.parametrize("name", NAMES)
def test_outputs_and_gradients_match_keras(name):
    d, xs, ys, gys = fixture(name)
    model = fastrnn.load(os.path.join(FIX, name + ".keras"))
    out, cache = model.forward_train(xs if len(xs) > 1 else xs[0])
    outs = out if isinstance(out, list) else [out]
    for j, (o, y) in enumerate(zip(outs, ys)):
        close(o, y, f"output {j}", 1e-5)
    grads = model.backward(cache, gys if len(gys) > 1 else gys[0])
    dx = grads["input"] if len(xs) > 1 else [grads["input"]]
    for j, (x, g) in enumerate(zip(xs, dx)):
        key = "dx" if len(xs) == 1 else f"dx{j}"
        if x.dtype.kind == "f":
            close(g, d[key], key)
        else:
            assert g is None and key not in d
    want = keras_grads(name, d)
    params = model.parameters()
    assert set(want) == set(params) == set(grads) - {"input"}
    for k, w in want.items():
        if k.endswith("bias_hh_l0") and not np.any(w) and np.any(grads[k]):
            # Keras's one bias is the core's bias_ih (bias_hh zero): both enter the
            # same pre-activation, so their gradients are Keras's bias gradient
            w = want[k.replace("bias_hh", "bias_ih")]
        close(grads[k], w, k)
        assert grads[k].dtype == params[k].dtype


@pytest.mark.parametrize("name", ["mgrad_bigru_residual_ln", "mgrad_conv_bn_norms_minmax"])
def test_a_fine_tuning_loop_lowers_the_loss_and_the_cache_follows_the_weights(name,
                                                                               tmp_path):
    """Adam on the model (its parameters; the recurrent layers re-packed and the
    convolutions' kept layouts dropped after each step) fits a target; a cache made
    before a step is refused after it."""
    _, (x,), (y,), _ = fixture(name)
    model = fastrnn.load(os.path.join(FIX, name + ".keras"))
    target = np.zeros_like(y)
    opt = Adam(model, lr=0.05)
    losses = []
    for _ in range(15):
        out, cache = model.forward_train(x)
        losses.append(float(np.mean((out - target) ** 2)))
        opt.step(model.backward(cache, 2 * (out - target) / out.size))
    assert losses[-1] < 0.5 * losses[0]
    # the model's own call follows the updated weights: as a copy saved and loaded
    # (which packs them afresh) computes
    model.save(str(tmp_path / "m.safetensors"))
    again = fastrnn.load(str(tmp_path / "m.safetensors"))
    np.testing.assert_allclose(model(x), again(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model(x), model.forward_train(x)[0], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="weights changed since forward_train"):
        model.backward(cache, np.ones_like(y))


def test_shared_layers_sum_their_gradients_and_refusals_name_the_layer():
    rng = np.random.default_rng(0)
    core = fastrnn.GRU(3, 3, batch_first=True, seed=1)
    shared = KerasRNN(core, return_sequences=True)
    dense = Dense(rng.normal(size=(3, 3)), rng.normal(size=3), activation="tanh")
    model = Model([Masking(0.0), shared, dense, shared, Add()],
                  inputs=[(INPUT, 0), (0, 0), (1, 0), (2, 0), [(3, 0), (1, 0)]])
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    x[1, 3:] = 0
    out, cache = model.forward_train(x)
    np.testing.assert_allclose(out, model(x), rtol=0, atol=1e-6)
    gy = rng.normal(size=out.shape).astype(np.float32)
    g = model.backward(cache, gy)
    assert [k for k in g if k.startswith(shared.name)] == [
        f"{shared.name}/{k}" for k in core.parameters()]
    # central differences (float64 copy of the loss) of one shared weight and the input
    w = core.parameters()["weight_hh_l0"]
    i = (1, 2)
    old = w[i]
    eps = 1e-3

    def loss():
        core.mark_weights_changed()
        return float(np.sum(model(x).astype(np.float64) * gy))
    w[i] = old + eps
    up = loss()
    w[i] = old - eps
    down = loss()
    w[i] = old
    core.mark_weights_changed()
    assert abs((up - down) / (2 * eps) - g[f"{shared.name}/weight_hh_l0"][i]) < 2e-3
    # refused before anything runs, by name
    from fastrnn.model import GlobalPooling1D, Layer

    class Mine(Layer):          # (a layer of one's own: no backward)
        def call(self, x, mask=None):
            return x, mask
    bad = Model([Masking(0.0), Mine(name="mine")])
    with pytest.raises(ValueError, match=r"cannot train through layer 'mine' of type "
                                         r"Mine: its backward is not implemented"):
        bad.forward_train(x)
    odd = Model([Dense(np.ones((3, 2)), activation=np.cos, name="d")])
    with pytest.raises(ValueError, match=r"layer 'd': the derivative of activation 'cos' "
                                         "is not implemented"):
        odd.forward_train(x)
    ok = Model([Embedding(np.ones((5, 2)), mask_zero=True), GlobalPooling1D("max")])
    out, cache = ok.forward_train(np.array([[1, 2, 0]]))
    with pytest.raises(ValueError, match=r"1 output\(s\), got 2 output gradient"):
        ok.backward(cache, [out, out])
    with pytest.raises(ValueError, match=r"has shape \(2,\), the output \(1, 2\)"):
        ok.backward(cache, np.ones(2))
    g = ok.backward(cache, np.ones((1, 2)))
    assert g["input"] is None       # (ids: no gradient)
    # three equal steps tie for the maximum: each gets a third (JAX's and TensorFlow's
    # rule for a max's ties)
    np.testing.assert_allclose(g[f"{ok.layers[0].name}/embeddings"][:3], 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("axis", [-1, [1, 2], 1])
def test_layer_normalization_gradients_by_central_differences(rms, axis):
    """Over the last axis, over the steps and features together, over the steps."""
    from fastrnn.model import LayerNormalization
    rng = np.random.default_rng(3)
    size = {-1: 5, 1: 3}.get(axis, 15) if not isinstance(axis, list) else 15
    wshape = (3, 5) if isinstance(axis, list) else (size,)
    ln = LayerNormalization(rng.normal(size=wshape), None if rms else rng.normal(size=wshape),
                            axis=axis, rms_scaling=rms, dtype="float64")
    model = Model([Dense(rng.normal(size=(4, 5)), dtype="float64"), ln])
    x = rng.normal(size=(2, 3, 4))
    gy = rng.normal(size=(2, 3, 5))
    out, cache = model.forward_train(x)
    g = model.backward(cache, gy)
    for arr, key in ((x, "input"), (ln.gamma, f"{ln.name}/gamma"),
                     (model.layers[0].kernel, f"{model.layers[0].name}/kernel")):
        num = numeric(arr, lambda: np.sum(model(x) * gy))
        np.testing.assert_allclose(g[key], num, rtol=1e-6, atol=1e-8)


def test_embedding_gradient_sums_repeated_ids():
    """Repeated ids (and the padding id) add up in the table's gradient."""
    model = load_keras(os.path.join(FIX, "mgrad_embed_lstm_head.keras"))
    ids = np.array([[3, 3, 3, 0, 0, 0]], np.int32)
    out, cache = model.forward_train(ids)
    # (not ones: the gradient of a softmax's sum is zero)
    g = model.backward(cache, np.array([[1.0, -2.0, 0.5]], np.float32))
    emb = next(k for k in g if k.endswith("/embeddings"))
    rows = np.flatnonzero(np.any(g[emb] != 0, axis=1))
    assert set(rows) <= {0, 3} and 3 in rows


def test_audit_fixes_masked_whole_sequence_and_stale_caches():
    """(An audit.) A sequence masked whole under an average pooling: its output NaN (as
    Keras), the gradients finite (they were NaN in every weight); a cache of a model
    without a recurrent layer is refused after an optimizer step (it was taken, mixing
    old activations with new weights)."""
    from fastrnn.model import GlobalPooling1D
    rng = np.random.default_rng(5)
    m = Model([Masking(0.0), Dense(rng.normal(size=(2, 2)), np.zeros(2)),
               GlobalPooling1D("average")])
    x = rng.normal(size=(2, 3, 2)).astype(np.float32)
    x[1] = 0
    out, cache = m.forward_train(x)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    gy = np.zeros_like(out)
    gy[0] = 1
    g = m.backward(cache, gy)
    assert all(np.isfinite(v).all() for v in (g["input"], *(g[k] for k in m.parameters())))
    assert not g["input"][1].any()
    Adam(m, lr=0.1).step(g)
    with pytest.raises(RuntimeError, match="weights changed since forward_train"):
        m.backward(cache, gy)



T0, T1 = {"input": 0}, {"input": 1}
OPS = [  # (op, args, attrs, shapes of the tensors)
    ("Add", [T0, T1], {}, [(2, 3, 4), (2, 3, 4)]),
    ("Subtract", [T0, 2.5], {}, [(2, 3, 4)]),
    ("Subtract", [1.5, T0], {}, [(2, 3, 4)]),
    ("Multiply", [T0, T1], {}, [(2, 3, 4), (2, 3, 1)]),
    ("Divide", [T0, T1], {}, [(2, 3, 4), (2, 3, 4)]),
    ("Maximum", [T0, T1], {}, [(2, 3, 4), (2, 3, 4)]),
    ("Minimum", [T0, 0.1], {}, [(2, 3, 4)]),
    ("Power", [T0, 3], {}, [(2, 3, 4)]),
    ("Tanh", [T0], {}, [(2, 3, 4)]), ("Sigmoid", [T0], {}, [(2, 3, 4)]),
    ("Relu", [T0], {}, [(2, 3, 4)]), ("Exp", [T0], {}, [(2, 3, 4)]),
    ("Square", [T0], {}, [(2, 3, 4)]), ("Abs", [T0], {}, [(2, 3, 4)]),
    ("Negative", [T0], {}, [(2, 3, 4)]),
    ("Mean", [T0], {"axis": 1}, [(2, 3, 4)]),
    ("Sum", [T0], {"axis": [1, 2], "keepdims": True}, [(2, 3, 4)]),
    ("Max", [T0], {"axis": -1}, [(2, 3, 4)]),
    ("Softmax", [T0], {"axis": 1}, [(2, 3, 4)]),
    ("LogSoftmax", [T0], {"axis": -1}, [(2, 3, 4)]),
    ("GetItem", [T0, [{"slice": [None, None, None]}, -1]], {}, [(2, 3, 4)]),
    ("GetItem", [T0, [{"slice": [None, None, None]}, {"slice": [0, 3, 2]}, None]], {},
     [(2, 3, 4)]),
    ("Concatenate", [[T0, T1]], {"axis": -1}, [(2, 3, 4), (2, 3, 2)]),
    ("Stack", [[T0, T1]], {"axis": 1}, [(2, 3, 4), (2, 3, 4)]),
    ("ExpandDims", [T0], {"axis": 1}, [(2, 3, 4)]),
    ("Reshape", [T0], {"newshape": [2, 12]}, [(2, 3, 4)]),
    ("Transpose", [T0], {"axes": [0, 2, 1]}, [(2, 3, 4)]),
    ("Transpose", [T0], {"axes": [0, -1, 1]}, [(2, 3, 4)]),
    ("Sum", [T0], {}, [(2, 3, 4)]),
    ("Max", [T0], {"axis": None}, [(2, 3, 4)]),
    ("Clip", [T0], {"x_min": -0.5, "x_max": 0.5}, [(2, 3, 4)]),
    ("Matmul", [T0, T1], {}, [(2, 3, 4), (2, 4, 5)]),
    ("Matmul", [T0, T1], {}, [(2, 4), (2, 4, 5)]),
]


@pytest.mark.parametrize("op,args,attrs,shapes", OPS,
                         ids=[f"{o[0]}{i}" for i, o in enumerate(OPS)])
def test_operation_gradients_by_central_differences(op, args, attrs, shapes):
    """keras.ops in a graph (fastrnn.model.Op): each input's gradient, in float64, by
    central differences (ties and kinks avoided by the random inputs)."""
    from fastrnn.model import Op
    rng = np.random.default_rng(len(op) + len(shapes))
    xs = [rng.normal(size=s) + (2.0 if op in ("Divide", "Log", "Sqrt") else 0.0)
          for s in shapes]
    n = len(xs)
    model = Model([Op(op, args, attrs, ranks=[len(s) for s in shapes])],
                  inputs=[[(INPUT, k) for k in range(n)]], n_inputs=n)
    feed = xs if n > 1 else xs[0]
    out, cache = model.forward_train(feed)
    gy = rng.normal(size=out.shape)
    g = model.backward(cache, gy)
    gx = g["input"] if n > 1 else [g["input"]]
    for k, x in enumerate(xs):
        num = numeric(x, lambda: np.sum(model(feed) * gy))
        np.testing.assert_allclose(gx[k], num, rtol=1e-6, atol=1e-8)


def _attention_cases():
    from fastrnn.model import AdditiveAttention, Attention, MultiHeadAttention
    r = np.random.default_rng(8)

    def mha(**kw):
        return MultiHeadAttention(*(r.normal(size=s) for s in ((3, 2, 2), (3, 2, 2),
                                                               (3, 2, 2), (2, 2, 3))),
                                  *(r.normal(size=s) for s in ((2, 2), (2, 2), (2, 2), 3)),
                                  dtype="float64", **kw)
    out = []
    for causal in (False, True):
        for scores in (False, True):
            kw = dict(use_causal_mask=causal, return_attention_scores=scores)
            out += [Attention(dtype="float64", **kw),
                    Attention(scale=0.7, dtype="float64", **kw),
                    Attention(score_mode="concat", concat_score_weight=0.8, scale=1.3,
                              dtype="float64", **kw),
                    AdditiveAttention(dtype="float64", float32_tanh=False, **kw),
                    AdditiveAttention(scale=r.normal(size=3), dtype="float64", **kw)]
            out += [mha(zero_masked=z, additive_mask=a, **kw)
                    for z in (False, True) for a in (False, True)]
    return out


@pytest.mark.parametrize("att", _attention_cases(), ids=lambda a: repr(a)[:60])
def test_attention_gradients_by_central_differences(att):
    """Attention, AdditiveAttention, MultiHeadAttention (causal or not, their scores as
    a second output, each mask rule): the query's and the masked value's gradients and
    the weights', in float64, by central differences."""
    rng = np.random.default_rng(9)
    model = Model([Masking(0.0), att], inputs=[(INPUT, 0), [(INPUT, 1), (0, 0)]],
                  outputs=[(1, k) for k in range(att.n_outputs())], n_inputs=2)
    q, v = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 5, 3))
    v[0, 3:] = 0            # (masked value steps; never a query's every step)
    v[1, 2] = 0
    out, cache = model.forward_train([q, v])
    outs = out if isinstance(out, list) else [out]
    gys = [rng.normal(size=o.shape) for o in outs]
    g = model.backward(cache, gys if len(gys) > 1 else gys[0])

    def loss():
        o = model([q, v])
        return sum(np.sum(a * b) for a, b in zip(o if isinstance(o, list) else [o], gys))
    params = model.parameters()
    checks = [(q, g["input"][0]), (v, g["input"][1])] + [
        (params[k], g[k]) for k in params]
    for arr, want in checks:
        # (a masked step left out: the mask would change)
        num = numeric(arr, loss, skip=(lambda i: not v[i[:2]].any()) if arr is v else None)
        if arr is v:
            num = np.where(np.any(v != 0, axis=-1, keepdims=True), num, want)
        np.testing.assert_allclose(want, num, rtol=1e-5, atol=1e-7)


def test_attention_of_a_query_step_with_nothing_to_attend_to():
    """A masked query step in a MultiHeadAttention (Keras 3's set -1e9: the step
    averages the values): its scores are constants, no gradient through them (they
    got the softmax's)."""
    from fastrnn.model import MultiHeadAttention
    r = np.random.default_rng(10)
    att = MultiHeadAttention(*(r.normal(size=s) for s in ((3, 2, 2), (3, 2, 2), (3, 2, 2),
                                                          (2, 2, 3), (2, 2), (2, 2), (2, 2),
                                                          3)),
                             zero_masked=False, dtype="float64")
    model = Model([Masking(0.0), att], inputs=[(INPUT, 0), [(0, 0), (0, 0)]])
    x = r.normal(size=(2, 4, 3))
    x[0, 3] = 0
    x[1, 1] = 0
    out, cache = model.forward_train(x)
    gy = r.normal(size=out.shape)
    g = model.backward(cache, gy)["input"]
    masked = np.all(x == 0, axis=-1)
    num = numeric(x, lambda: np.sum(model(x) * gy), skip=lambda i: masked[i[:2]])
    np.testing.assert_allclose(np.where(masked[..., None], num, g), num, rtol=0, atol=1e-6)


def _shape_cases():
    from fastrnn._model_conv import (Conv2D, Cropping, GlobalPooling2D, Permute, Pooling1D,
                                     Pooling2D, Reshape, UpSampling, ZeroPadding)
    from fastrnn.model import (Flatten, GlobalPooling1D, Normalization, PReLU,
                               RepeatVector, Rescaling)
    r = np.random.default_rng(11)

    def d(i, o):
        return Dense(r.normal(size=(i, o)), r.normal(size=o), activation="tanh",
                     dtype="float64")
    x3, x4 = (2, 4, 3), (2, 4, 3, 2)
    return [
        ("flatten", [d(3, 2), Flatten()], x3),
        ("flatten_channels_first", [d(2, 3), Flatten(data_format="channels_first")], x4),
        ("reshape", [d(3, 2), Reshape((2, 4))], x3),
        ("permute", [d(2, 2), Permute((2, 1, 3))], x4),
        ("repeat_vector", [GlobalPooling1D("average"), d(3, 2), RepeatVector(3)], x3),
        ("zero_padding1d", [d(3, 2), ZeroPadding(((1, 2),), rank=1)], x3),
        ("zero_padding2d", [d(2, 2), ZeroPadding(((1, 0), (0, 2)), rank=2)], x4),
        ("cropping1d", [d(3, 2), Cropping(((1, 1),), rank=1)], x3),
        ("upsampling1d", [d(3, 2), UpSampling(2, rank=1)], x3),
        ("upsampling2d", [d(2, 2), UpSampling((2, 3), rank=2)], x4),
        ("rescaling", [d(3, 2), Rescaling(scale=np.array([2.0, -1.0]), offset=np.array(0.5),
                                          dtype="float64")],
         x3),
        ("normalization", [d(3, 2), Normalization(np.array([0.1, -0.2]),
                                                  np.array([2.0, 0.5]), axis=-1,
                                                  dtype="float64")], x3),
        ("prelu", [d(3, 2), PReLU(r.normal(size=(1, 2)), dtype="float64")], x3),
        ("global_max_pooling2d", [d(2, 2), GlobalPooling2D("max")], x4),
        ("max_pooling1d_same", [d(3, 2), Pooling1D("max", 2, 1, "same")], (2, 5, 3)),
        ("average_pooling1d_same", [d(3, 2), Pooling1D("average", 3, 2, "same")], (2, 5, 3)),
        ("max_pooling2d", [d(2, 2), Pooling2D("max", (2, 2), (1, 2), "same")], (2, 4, 5, 2)),
        ("average_pooling2d", [d(2, 2), Pooling2D("average", (2, 3), 1, "same")],
         (2, 4, 5, 2)),
        ("conv2d", [Conv2D(r.normal(size=(2, 3, 2, 4)), r.normal(size=4), strides=(1, 2),
                           padding="same", dilation_rate=1, activation="swish",
                           dtype="float64")], (2, 4, 5, 2)),
        ("conv2d_groups_dilated", [Conv2D(r.normal(size=(2, 2, 1, 4)), None, padding="valid",
                                          dilation_rate=(2, 1), groups=2, activation="relu",
                                          dtype="float64")], (2, 5, 4, 2)),
        ("global_average_pooling2d", [d(2, 2), GlobalPooling2D("average", keepdims=True)], x4),
    ]


@pytest.mark.parametrize("name,layers,shape", _shape_cases(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_shape_and_elementwise_layer_gradients_by_central_differences(name, layers, shape):
    """Flatten, Reshape, Permute, RepeatVector, padding, cropping, upsampling,
    Rescaling, Normalization, PReLU (its alpha too), 2-D global pooling, the pooling
    windows, Conv2D: the input's and every weight's gradient in float64 by central
    differences."""
    rng = np.random.default_rng(12)
    model = Model(layers)
    x = rng.normal(size=shape)
    out, cache = model.forward_train(x)
    gy = rng.normal(size=out.shape)
    g = model.backward(cache, gy)
    for arr, want in [(x, g["input"])] + [(v, g[k]) for k, v in model.parameters().items()]:
        num = numeric(arr, lambda: np.sum(model(x) * gy), refresh=model.mark_weights_changed)
        np.testing.assert_allclose(want, num, rtol=1e-6, atol=1e-8)


ACTS = ["linear", "relu", "relu6", "tanh", "sigmoid", "softmax", "log_softmax", "elu",
        ("elu", 0.5), "selu", "softplus", "softsign", "swish", "silu", "exponential", "gelu",
        "mish", "hard_sigmoid", ("hard_sigmoid", 1 / 6, 0.5), ("leaky_relu", 0.3),
        ("relu", 0.1, 1.5, 0.2), ("relu", 0.0, 6.0, 0.0), ("relu", 0.2, None, 0.0),
        ("thresholded_relu", 0.5)]


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_activation_gradients_by_central_differences(act):
    """Every activation a Dense or an Activation layer takes (Keras's names and its
    ReLU / LeakyReLU / ELU / ThresholdedReLU layers' options), in float64."""
    from fastrnn.model import Activation
    rng = np.random.default_rng(13)
    model = Model([Dense(rng.normal(size=(3, 4)) * 0.7, rng.normal(size=4), activation=act,
                         dtype="float64"),
                   Dense(rng.normal(size=(4, 4)) * 0.2, dtype="float64"), Activation(act)])
    x = rng.normal(size=(2, 5, 3))
    out, cache = model.forward_train(x)
    gy = rng.normal(size=out.shape)
    g = model.backward(cache, gy)
    for arr, want in [(x, g["input"])] + [(v, g[k]) for k, v in model.parameters().items()]:
        num = numeric(arr, lambda: np.sum(model(x) * gy))
        np.testing.assert_allclose(want, num, rtol=1e-5, atol=1e-7)


def test_review_fixes_ties_copies_and_one_array_named_once():
    """(A review.) Ties of an operation's maximum and a clip's bounds share the
    gradient as JAX's do (one side got all of it); editing the returned output in place
    leaves the backward alone (the cache held that array); a layer used directly and
    inside a TimeDistributed is one parameter with the sum of both gradients (it was
    two names, each with part of it)."""
    from fastrnn.model import Op, TimeDistributed
    mx = Model([Op("Maximum", [T0, T1], {}, ranks=[3, 3])],
               inputs=[[(INPUT, 0), (INPUT, 1)]], n_inputs=2)
    out, cache = mx.forward_train([np.zeros((1, 1, 2))] * 2)
    g = mx.backward(cache, np.ones_like(out))["input"]
    assert np.array_equal(g[0], [[[0.5, 0.5]]]) and np.array_equal(g[1], [[[0.5, 0.5]]])
    clip = Model([Op("Clip", [T0], {"x_min": -1.0, "x_max": 1.0}, ranks=[3])],
                 inputs=[[(INPUT, 0)]])
    out, cache = clip.forward_train(np.array([[[-1.0, 0.0, 1.0, 2.0]]]))
    assert np.array_equal(clip.backward(cache, np.ones_like(out))["input"],
                          [[[0.5, 1.0, 0.5, 0.0]]])
    rng = np.random.default_rng(14)
    d = Dense(rng.normal(size=(3, 3)), rng.normal(size=3), activation="tanh",
              dtype="float64")
    x = rng.normal(size=(2, 4, 3))
    model = Model([d, TimeDistributed(d)])
    out, cache = model.forward_train(x)
    want = model.backward(cache, np.ones_like(out))
    out -= 1.0
    again = model.backward(cache, np.ones_like(out))
    assert list(model.parameters()) == [f"{d.name}/kernel", f"{d.name}/bias"]
    for k in want:
        np.testing.assert_array_equal(want[k], again[k])
    num = numeric(d.kernel, lambda: np.sum(model(x)))
    np.testing.assert_allclose(want[f"{d.name}/kernel"], num, rtol=1e-6, atol=1e-8)



def test_max_pooling_ties_go_to_the_first_value_of_each_window():
    """As JAX's (Keras 3) and TensorFlow's max pooling: each window's gradient to its
    first largest value (jax.grad of keras.layers.MaxPooling1D(3, strides=1) on
    [1, 1, 1, 0.5]: [1, 1, 0, 0]; of MaxPooling2D((2, 2), strides=1) on ones: the top
    left one)."""
    from fastrnn._model_conv import Pooling1D, Pooling2D
    m1 = Model([Pooling1D("max", 3, 1)])
    out, cache = m1.forward_train(np.array([[[1.0], [1.0], [1.0], [0.5]]]))
    np.testing.assert_array_equal(m1.backward(cache, np.ones_like(out))["input"][0, :, 0],
                                  [1, 1, 0, 0])
    m2 = Model([Pooling2D("max", (2, 2), 1)])
    out, cache = m2.forward_train(np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(m2.backward(cache, np.ones_like(out))["input"][0, :, :, 0],
                                  [[1, 0], [0, 0]])


@pytest.mark.parametrize("name", ["k2_td_masks_pool", "k2_td_video", "k2_merge_mul_max_min",
                                  "k3_dag_merge_ops_masking", "k3_nested_res_two_masks",
                                  "k3_layernorm_rms_axes", "k3_norm_inner_axis"])
def test_fixture_models_in_float64_by_central_differences(name):
    """Keras fixtures (tests/fixtures/keras) loaded in float64: tf.keras 2's
    TimeDistributed masks, Keras 3's masked Maximum / Minimum (a masked entry filled
    from the other side) and tf.keras 2's: the inputs' gradients by central differences
    (steps a Masking masks, all 0 or all 1, left out: the mask would change)."""
    import sys
    sys.path.insert(0, HERE)
    from test_keras import architecture, model_path, reference
    model = load_keras(model_path(name), architecture(name), dtype="float64")
    x, _ = reference(name)
    xs = [a.astype(np.float64) if a.dtype.kind == "f" else a
          for a in (x if isinstance(x, list) else [x])]
    feed = xs if isinstance(x, list) else xs[0]
    out, cache = model.forward_train(feed)
    outs = out if isinstance(out, list) else [out]
    rng = np.random.default_rng(15)
    gys = [rng.normal(size=o.shape) for o in outs]
    g = model.backward(cache, gys if len(gys) > 1 else gys[0])["input"]
    g = g if isinstance(x, list) else [g]

    def loss():
        o = model(feed)
        return sum(np.sum(a * b) for a, b in zip(o if isinstance(o, list) else [o], gys))
    eps = 1e-6
    for a, ga in zip(xs, g):
        if a.dtype.kind != "f":
            assert ga is None       # (ids)
            continue
        for i in list(np.ndindex(a.shape))[::3]:
            row = a[i[:-1]]         # (a Masking's: the features of one position)
            if not row.any() or (row == 1).all():
                continue
            old = a[i]
            a[i] = old + eps
            up = loss()
            a[i] = old - eps
            num = (up - loss()) / (2 * eps)
            a[i] = old
            assert abs(num - ga[i]) <= 1e-7 + 1e-6 * abs(num), (i, num, ga[i])


def test_maximum_layer_ties_share_pairwise_as_keras_on_jax():
    """jax.grad of keras.layers.Maximum()([a, a, a]): 0.25, 0.25, 0.5 (the inputs taken
    pairwise, each tie halved)."""
    from fastrnn.model import Maximum
    model = Model([Maximum()], inputs=[[(INPUT, 0), (INPUT, 1), (INPUT, 2)]], n_inputs=3)
    ones = np.ones((1, 2))
    out, cache = model.forward_train([ones, ones, ones])
    g = model.backward(cache, np.ones_like(out))["input"]
    assert [float(v[0, 0]) for v in g] == [0.25, 0.25, 0.5]
