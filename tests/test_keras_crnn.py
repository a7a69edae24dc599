"""Keras CRNN front-ends (OCR, speech, sound event detection): Conv2D, MaxPooling2D /
AveragePooling2D, Reshape and Permute, loaded without Keras and matched against real
Keras 3.15.1's outputs (tests/fixtures/make_keras3.py, the k3_crnn_* fixtures and
k3_reshape_permute_masking), kept by model.save, refused by name where unsupported."""
import glob
import json
import os
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn.io import LoadError
from fastrnn.io.keras import load_keras
from fastrnn.model import Conv2D, Model, Permute, Pooling2D, Reshape

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "keras")
CRNN = ["k3_crnn_ocr", "k3_crnn_permute_bn_avg", "k3_crnn_strided_valid_dilated",
        "k3_crnn_h5", "k3_crnn_float64"]
# max abs error against Keras: float32 (as the other Keras fixtures, ~1e-6), float64
TOL = {"float32": 1e-6, "float64": 1e-9}


def model_path(name):
    (p,) = [p for p in glob.glob(os.path.join(FIX, name + ".*")) if not p.endswith(".npz")]
    return p


def reference(name):
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        return z["x"], z["y0"]


def max_error(model, name, **kw):
    x, y = reference(name)
    out = model.predict(x, **kw)
    assert out.shape == y.shape and out.dtype == y.dtype
    return float(np.max(np.abs(out - y)))


def edit_config(name, tmp_path, fn):
    """A copy of fixture ``name`` (a .keras zip) with its config.json edited by ``fn``."""
    dst = tmp_path / (name + ".keras")
    with zipfile.ZipFile(model_path(name)) as zi, zipfile.ZipFile(dst, "w") as zo:
        for item in zi.infolist():
            data = zi.read(item.filename)
            if item.filename == "config.json":
                c = json.loads(data)
                fn(c)
                data = json.dumps(c).encode()
            zo.writestr(item, data)
    return str(dst)


def set_layer(cls, index=0, **cfg):
    """An edit: config keys of the ``index``-th layer of class ``cls``."""
    def fn(c):
        layer = [l for l in c["config"]["layers"] if l["class_name"] == cls][index]
        layer["config"].update(cfg)
    return fn


# ----------------------------------------------------------------------------- vs Keras

@pytest.mark.parametrize("name", CRNN)
def test_crnn_fixture_matches_keras(name):
    model = load_keras(model_path(name))
    dt = reference(name)[1].dtype.name
    assert max_error(model, name) <= TOL[dt]
    assert max_error(model, name, batch_size=2) <= TOL[dt]     # (chunked: the same)
    assert max_error(fastrnn.load(model_path(name)), name) <= TOL[dt]


def test_fixtures_cover_the_layers_and_options():
    seen = set()
    for name in CRNN:
        for l in load_keras(model_path(name)).layers:
            seen.add(type(l).__name__)
            if isinstance(l, Conv2D):
                seen.update({f"conv:{l.padding}", f"bias:{l.bias is not None}"})
                if max(l.strides) > 1:
                    seen.add("conv:strides")
                if max(l.dilation_rate) > 1:
                    seen.add("conv:dilation")
                if l.groups > 1:
                    seen.add("conv:groups")
            elif isinstance(l, Pooling2D):
                seen.add(f"pool:{l.op}:{l.padding}")
            elif isinstance(l, Permute):
                seen.add(f"permute:{'identity' if l.identity else 'transpose'}")
            elif isinstance(l, Reshape) and -1 in l.target_shape:
                seen.add("reshape:-1")
    want = {"Conv2D", "Pooling2D", "Reshape", "Permute", "BatchNormalization",
            "Bidirectional", "conv:same", "conv:valid", "bias:True", "bias:False",
            "conv:strides", "conv:dilation", "conv:groups", "pool:max:valid", "pool:max:same",
            "pool:average:same", "pool:average:valid", "permute:transpose", "reshape:-1"}
    assert want <= seen, want - seen


def test_ocr_model_is_the_keras_io_shape():
    layers = load_keras(model_path("k3_crnn_ocr")).layers
    kinds = [type(l).__name__ for l in layers]
    assert kinds == ["Conv2D", "Pooling2D", "Conv2D", "Pooling2D", "Reshape", "Dense",
                     "Dropout", "Bidirectional", "Bidirectional", "Dense"]
    assert layers[4].target_shape == (4, 12)
    x, _ = reference("k3_crnn_ocr")
    assert x.shape == (3, 16, 8, 1)


def test_float64_crnn_runs_in_float64():
    model = load_keras(model_path("k3_crnn_float64"))
    conv = model.layers[0]
    assert isinstance(conv, Conv2D) and conv.kernel.dtype == np.float64
    x, y = reference("k3_crnn_float64")
    assert model.predict(x).dtype == np.float64


# ----------------------------------------------------------------------------- masks

def test_reshape_and_permute_masks_follow_keras():
    """A Reshape that keeps the shape and the identity Permute keep a mask on Keras 3.15
    on JAX (they return their input tensor, the mask still on it) and drop it on
    TensorFlow (and in tf.keras 2): a file does not say its backend, so a model with one
    on a masked tensor is refused, naming the layer (the fixture, made on JAX, is 0.2
    off what TensorFlow computes).  fastrnn's own layers follow JAX; any other Reshape /
    Permute, Conv2D and the 2-D poolings drop the mask."""
    name = "k3_reshape_permute_masking"
    with pytest.raises(LoadError, match=r"layer 'reshape\w*' \(Reshape\) reads a masked "
                                        r"tensor and may leave its shape as it is"):
        load_keras(model_path(name))
    x, y = reference(name)
    mask = np.any(x != 0, axis=-1)
    r = Reshape((6, 4), name="r")
    assert r.call(x, mask)[1] is mask
    assert r.call(x.reshape(3, 4, 6), mask)[1] is None     # (shape changed: dropped)
    assert Reshape((-1, 2), name="r2").call(x, mask)[1] is None
    assert Permute((1, 2)).call(x, mask)[1] is mask
    assert Permute((2, 1)).call(x, mask)[1] is None
    img = np.ones((2, 4, 4, 1), np.float32)
    m4 = np.ones((2, 4, 4), bool)
    assert Conv2D(np.ones((1, 1, 1, 1), np.float32)).call(img, m4)[1] is None
    assert Pooling2D("max").call(img, m4)[1] is None
    assert Pooling2D("average").call(img, m4)[1] is None


def _insert_before_lstm(*layers):
    """An edit of k3_state_lstm_embed (Input -> Embedding(mask_zero) -> LSTM, given the
    Embedding's mask as mask= in its recorded call): ``layers`` ((class, config) pairs)
    inserted between the Embedding and the LSTM."""
    def fn(c):
        ls = c["config"]["layers"]
        lstm = next(l for l in ls if l["class_name"] == "LSTM")
        src = lstm["inbound_nodes"][0]["args"][0]
        for k, (cls, cfg) in enumerate(layers):
            name = f"inserted_{k}"
            ls.insert(ls.index(lstm), {
                "module": "keras.layers", "class_name": cls, "registered_name": None,
                "name": name, "config": {"name": name, "trainable": True, **cfg},
                "inbound_nodes": [{"args": [src], "kwargs": {}}]})
            src = json.loads(json.dumps(src))
            src["config"]["keras_history"] = [name, 0, 0]
        lstm["inbound_nodes"][0]["args"][0] = src
    return fn


def test_explicit_masks_after_reshape_and_permute(tmp_path):
    """The LSTM of k3_state_lstm_embed is given its input's mask explicitly (mask=
    not_equal(ids, 0)).  An identity Permute on the masked tensor is refused (the backends
    differ there: test_reshape_and_permute_masks_follow_keras).  After Permutes that transpose (the
    mask dropped) it is not; after a Reshape (kept only where the shape does not change,
    known when the model runs) it cannot tell: refused, naming the layer."""
    name = "k3_state_lstm_embed"
    p = edit_config(name, tmp_path, _insert_before_lstm(("Permute", {"dims": [1, 2]})))
    with pytest.raises(LoadError, match=r"layer 'inserted_0' \(Permute\) reads a masked "
                                        r"tensor and may leave its shape as it is"):
        load_keras(p)
    for edit, shown in (
            (_insert_before_lstm(("Permute", {"dims": [2, 1]}),
                                 ("Permute", {"dims": [2, 1]})), "no mask"),
            (_insert_before_lstm(("Reshape", {"target_shape": [7, 4]})),
             r"reshape\(not_equal\(<output 0 of 'input_layer_\d+'>, 0\)\)")):
        with pytest.raises(LoadError, match=r"layer 'lstm_\d+' \(LSTM\) is called with "
                                            r"mask=not_equal\(.*\): not supported; .*which "
                                            r"here give " + shown):
            load_keras(edit_config(name, tmp_path, edit))


# ----------------------------------------------------------------------------- save

@pytest.mark.parametrize("name", CRNN)
def test_save_and_load_give_identical_outputs(name, tmp_path):
    model = load_keras(model_path(name))
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert isinstance(again, Model)
    assert repr(again) == repr(model)
    x, _ = reference(name)
    assert np.array_equal(again.predict(x), model.predict(x))
    for a, b in zip(model.layers, again.layers):
        assert type(a) is type(b)
        for k in ("strides", "padding", "dilation_rate", "groups", "pool_size", "op",
                  "target_shape", "dims"):
            assert getattr(a, k, None) == getattr(b, k, None), (name, a.name, k)


def test_hand_built_crnn_round_trips(tmp_path):
    rng = np.random.RandomState(5)
    layers = [Conv2D(rng.normal(size=(3, 3, 1, 4)), rng.normal(size=4), strides=(1, 2),
                     padding="same", dilation_rate=1, activation="relu", name="c1"),
              Conv2D(rng.normal(size=(2, 2, 2, 4)), None, dilation_rate=(2, 1), groups=2,
                     activation="elu", name="c2"),
              Pooling2D("average", (2, 1), strides=1, padding="same", name="p1"),
              Pooling2D("max", 2, name="p2"),
              Permute((2, 1, 3), name="perm"), Reshape((-1, 4), name="resh")]
    model = Model(layers, name="front")
    x = rng.normal(size=(2, 12, 8, 1)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 5, 4)
    model.save(tmp_path / "f.safetensors")
    again = fastrnn.load(tmp_path / "f.safetensors")
    assert np.array_equal(again(x), y)
    assert again.layers[0].strides == (1, 2) and again.layers[1].dilation_rate == (2, 1)
    assert again.layers[1].bias is None and again.layers[1].groups == 2


# ----------------------------------------------------------------------------- vs a loop

def _conv_loop(x, w, b, s, d, padding):
    """Keras's Conv2D (channels_last) as a direct loop, in float64."""
    kh, kw, cg, F = w.shape
    g = x.shape[3] // cg
    pads = []
    for L, k, ss, dd in zip(x.shape[1:3], (kh, kw), s, d):
        span = (k - 1) * dd + 1
        total = max((-(-L // ss) - 1) * ss + span - L, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    n = [(P - (k - 1) * dd - 1) // ss + 1
         for P, k, ss, dd in zip(xp.shape[1:3], (kh, kw), s, d)]
    y = np.zeros((x.shape[0], n[0], n[1], F))
    fg = F // g
    for i in range(n[0]):
        for j in range(n[1]):
            for a in range(kh):
                for c in range(kw):
                    v = xp[:, i * s[0] + a * d[0], j * s[1] + c * d[1]]
                    for t in range(g):
                        y[:, i, j, t * fg:(t + 1) * fg] += \
                            v[:, t * cg:(t + 1) * cg] @ w[a, c, :, t * fg:(t + 1) * fg]
    return y + (0 if b is None else b)


def _pool_loop(x, op, k, s, padding):
    pads = []
    for L, kk, ss in zip(x.shape[1:3], k, s):
        total = max((-(-L // ss) - 1) * ss + kk - L, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
    n = [(L + p + q - kk) // ss + 1 for L, (p, q), kk, ss in zip(x.shape[1:3], pads, k, s)]
    y = np.zeros((x.shape[0], n[0], n[1], x.shape[3]))
    for i in range(n[0]):
        for j in range(n[1]):
            r0, c0 = i * s[0] - pads[0][0], j * s[1] - pads[1][0]
            win = x[:, max(r0, 0):r0 + k[0], max(c0, 0):c0 + k[1]]      # (inside only)
            y[:, i, j] = win.max(axis=(1, 2)) if op == "max" else win.mean(axis=(1, 2))
    return y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_matches_a_direct_loop(dtype):
    rng = np.random.RandomState(1)
    tol = 2e-5 if dtype == "float32" else 1e-12
    cases = [((3, 3), 1, 1, "same", 1, 1), ((3, 2), (2, 1), 1, "valid", 1, 3),
             ((2, 3), 1, (2, 1), "same", 2, 1), ((1, 1), 1, 1, "valid", 1, 2),
             ((1, 1), 2, 1, "same", 1, 1), ((3, 3), 2, 2, "same", 1, 1),
             ((2, 2), 3, 1, "same", 4, 1), ((4, 1), 1, 1, "valid", 1, 1)]
    for k, s, d, pad, g, C in cases:
        Cin = g * 2 if g > 1 else C
        w = rng.normal(size=k + (Cin // g, 4 if g != 4 else 8)).astype(dtype)
        b = rng.normal(size=w.shape[3]).astype(dtype)
        x = rng.normal(size=(2, 7, 9, Cin)).astype(dtype)
        s2, d2 = (s, s) if isinstance(s, int) else s, (d, d) if isinstance(d, int) else d
        for bias in (b, None):
            layer = Conv2D(w, bias, s, pad, d, g, dtype=dtype)
            y = layer(x)
            assert y.dtype == dtype
            ref = _conv_loop(x, w, bias, s2, d2, pad)
            assert y.shape == ref.shape, (k, s, d, pad, g)
            assert np.max(np.abs(y - ref)) <= tol, (k, s, d, pad, g)
    # activations: relu (applied block by block) and another (after)
    w = rng.normal(size=(3, 3, 2, 3)).astype(dtype)
    x = rng.normal(size=(2, 5, 6, 2)).astype(dtype)
    ref = _conv_loop(x, w, None, (1, 1), (1, 1), "same")
    assert np.max(np.abs(Conv2D(w, None, padding="same", activation="relu", dtype=dtype)(x)
                         - np.maximum(ref, 0))) <= tol
    assert np.max(np.abs(Conv2D(w, None, padding="same", activation="tanh", dtype=dtype)(x)
                         - np.tanh(ref))) <= tol


def test_conv2d_on_two_threads_equals_one():
    # a conv big enough for fastrnn's helper thread (the ONNX Conv's blocks)
    rng = np.random.RandomState(2)
    w = rng.normal(size=(3, 3, 16, 32)).astype(np.float32)
    layer = Conv2D(w, rng.normal(size=32), padding="same", activation="relu")
    x = rng.normal(size=(4, 64, 64, 16)).astype(np.float32)
    model = Model([layer])
    one = model(x, num_threads=1)
    two = model(x, num_threads=2)
    assert np.array_equal(one, two)
    ref = np.maximum(_conv_loop(x[:1, :6, :6], w, layer.bias, (1, 1), (1, 1), "same"), 0)
    assert np.max(np.abs(Model([layer])(x[:1, :6, :6]) - ref)) <= 1e-4


@pytest.mark.parametrize("op", ["max", "average"])
def test_pooling2d_matches_a_direct_loop(op):
    rng = np.random.RandomState(3)
    x = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    for k, s, pad in [((2, 2), None, "valid"), ((3, 3), (2, 2), "same"), ((2, 1), 1, "same"),
                      ((3, 2), (1, 3), "valid"), ((1, 2), (1, 1), "same"), (4, 3, "same"),
                      ((2, 3), (3, 2), "same")]:
        layer = Pooling2D(op, k, s, pad)
        kk = (k, k) if isinstance(k, int) else k
        ss = kk if s is None else (s, s) if isinstance(s, int) else s
        y = layer(x)
        ref = _pool_loop(x, op, kk, ss, pad)
        assert y.shape == ref.shape and y.dtype == x.dtype, (k, s, pad)
        assert np.max(np.abs(y - ref)) <= 1e-6, (k, s, pad)


# ----------------------------------------------------------------------------- refused

@pytest.mark.parametrize("name,edit,match", [
    ("k3_crnn_ocr", set_layer("Conv2D", data_format="channels_first"),
     r"layer 'conv2d' \(Conv2D\): data_format 'channels_first' is not supported"),
    ("k3_crnn_ocr", set_layer("MaxPooling2D", 1, data_format="channels_first"),
     r"layer 'max_pooling2d_1' \(MaxPooling2D\): data_format 'channels_first' is not "
     r"supported"),
    ("k3_crnn_permute_bn_avg", set_layer("AveragePooling2D", padding="causal"),
     r"layer 'average_pooling2d' \(AveragePooling2D\): padding must be 'valid' or 'same', "
     r"got 'causal'"),
    ("k3_crnn_ocr", set_layer("Conv2D", padding="full"),
     r"layer 'conv2d' \(Conv2D\): padding must be 'valid' or 'same'"),
    ("k3_crnn_ocr", set_layer("Conv2D", 1, strides=[2, 0]),
     r"layer 'conv2d_1' \(Conv2D\): Conv2D strides must be a positive int, got 0"),
    ("k3_crnn_ocr", set_layer("Conv2D", 1, dilation_rate=[1, 2, 3]),
     r"layer 'conv2d_1' \(Conv2D\): Conv2D dilation_rate must be an int or two ints"),
    ("k3_crnn_ocr", set_layer("Conv2D", kernel_size=[3, 3, 3]),
     r"layer 'conv2d' \(Conv2D\): kernel_size must be two positive ints, got \[3, 3, 3\]"),
    ("k3_crnn_ocr", set_layer("Conv2D", kernel_size=[3, 2]),
     r"layer 'conv2d' \(Conv2D\): kernel has shape \(3, 3, 1, 4\), expected \(3, 2, 1, 4\)"),
    ("k3_crnn_ocr", set_layer("Conv2D", 1, groups=3),
     r"layer 'conv2d_1' \(Conv2D\): groups 3 must divide the 4 input channels and the 6 "
     r"filters"),
    ("k3_crnn_ocr", set_layer("Conv2D", 1, filters=5),
     r"layer 'conv2d_1' \(Conv2D\): kernel has shape \(3, 3, 4, 6\), expected "
     r"\(3, 3, 4, 5\)"),
    ("k3_crnn_ocr", set_layer("Conv2D", activation="swishy"),
     r"layer 'conv2d'.*unsupported activation 'swishy'"),
    ("k3_crnn_ocr", set_layer("MaxPooling2D", pool_size=[0, 2]),
     r"layer 'max_pooling2d' \(MaxPooling2D\): pool_size must be a positive int, got 0"),
    ("k3_crnn_ocr", set_layer("Reshape", target_shape=[-1, -1]),
     r"layer 'reshape' \(Reshape\): Reshape target_shape may hold one -1, got \[-1, -1\]"),
    ("k3_crnn_ocr", set_layer("Reshape", target_shape=[4, 0]),
     r"layer 'reshape' \(Reshape\): Reshape target_shape must hold positive ints \(one may "
     r"be -1\), got \[4, 0\]"),
    ("k3_crnn_ocr", set_layer("Reshape", target_shape="4x12"),
     r"layer 'reshape' \(Reshape\): Reshape target_shape must be a list of ints"),
    ("k3_crnn_permute_bn_avg", set_layer("Permute", dims=[2, 3, 3]),
     r"layer 'permute' \(Permute\): Permute dims must be a permutation of 1 \.\. 3, got "
     r"\[2, 3, 3\]"),
    ("k3_crnn_permute_bn_avg", set_layer("Permute", dims=[0, 1, 2]),
     r"layer 'permute' \(Permute\): Permute dims must hold positive ints"),
])
def test_bad_configs_are_refused_naming_the_layer(tmp_path, name, edit, match):
    with pytest.raises(LoadError, match=match):
        load_keras(edit_config(name, tmp_path, edit))


def test_unsupported_image_layers_are_refused_by_name(tmp_path):
    def conv3d(c):
        c["config"]["layers"][1]["class_name"] = "Conv3D"
    with pytest.raises(LoadError, match=r"unsupported Keras layer\(s\): 'conv2d' \(Conv3D\)"):
        load_keras(edit_config("k3_crnn_ocr", tmp_path, conv3d))

    def tconv(c):
        c["config"]["layers"][2]["class_name"] = "Conv2DTranspose"
    with pytest.raises(LoadError, match=r"'max_pooling2d' \(Conv2DTranspose\)"):
        load_keras(edit_config("k3_crnn_ocr", tmp_path, tconv))


def test_stream_refuses_the_conv_front_end_by_name():
    with pytest.raises(ValueError, match=r"cannot stream layer 'conv2d' of type Conv2D"):
        fastrnn.Stream(load_keras(model_path("k3_crnn_ocr")))


# ----------------------------------------------------------------------------- shapes

def test_reshape_that_does_not_fit_names_the_layer(tmp_path):
    model = load_keras(edit_config("k3_crnn_ocr", tmp_path,
                                   set_layer("Reshape", target_shape=[3, 12])))
    x, _ = reference("k3_crnn_ocr")
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an input of shape "
                                         r"\(4, 2, 6\) \(48 values a sample\) to "
                                         r"target_shape \[3, 12\] \(36 values\)"):
        model.predict(x)
    model = load_keras(edit_config("k3_crnn_ocr", tmp_path,
                                   set_layer("Reshape", target_shape=[5, -1])))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an input of shape "
                                         r"\(4, 2, 6\) \(48 values a sample\) to "
                                         r"target_shape \[5, -1\]: 48 is not a multiple "
                                         r"of 5"):
        model.predict(x)
    # (a target whose last axis the next layer's weights contradict: refused at load)
    with pytest.raises(LoadError, match=r"layer 'dense_60' \(Dense\): kernel has shape "
                                        r"\(12, 8\), expected \(13, 8\)"):
        load_keras(edit_config("k3_crnn_ocr", tmp_path,
                               set_layer("Reshape", target_shape=[4, 13])))


def test_images_that_do_not_fit_name_the_layer():
    model = load_keras(model_path("k3_crnn_ocr"))
    x, _ = reference("k3_crnn_ocr")
    with pytest.raises(ValueError, match=r"conv2d: expected 1 input channels \(the last "
                                         r"axis\), got input shape \(3, 16, 8, 2\)"):
        model.predict(np.concatenate([x, x], axis=3))
    with pytest.raises(ValueError, match=r"conv2d: expected \(batch, rows, cols, "
                                         r"channels\) input, got shape \(3, 16, 8\)"):
        model.predict(x[..., 0])
    # a "valid" window larger than the image: Keras's output would have no rows
    with pytest.raises(ValueError, match=r"mp: a window of \(3, 3\) \(dilation \(1, 1\)\) "
                                         r"does not fit in an input of \(2, 5\)"):
        Pooling2D("max", 3, name="mp")(np.ones((1, 2, 5, 1), np.float32))
    with pytest.raises(ValueError, match=r"pm: dims \[2, 1, 3\] permute a 4-D input"):
        Permute((2, 1, 3), name="pm")(np.ones((1, 2, 5), np.float32))
    # (a smaller image runs through the convs, then fails at the Reshape, by name)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an input of shape "
                                         r"\(2, 2, 6\)"):
        model.predict(x[:, :8])


def test_layer_arguments_are_checked():
    w = np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"Conv2D kernel must be 4-D"):
        Conv2D(np.ones((3, 2, 4)))
    with pytest.raises(ValueError, match=r"Conv2D filters 4 are not a multiple of groups 3"):
        Conv2D(w, groups=3)
    with pytest.raises(ValueError, match=r"Conv2D bias must have shape \(4,\)"):
        Conv2D(w, np.ones(3))
    with pytest.raises(ValueError, match=r"padding must be 'valid' or 'same', got 'causal'"):
        Conv2D(w, padding="causal")
    with pytest.raises(ValueError, match=r"op must be 'average' or 'max'"):
        Pooling2D("min")


def test_stacked_cells_behind_a_reshape_of_a_masked_input():
    """A Reshape of a masked input that may keep its shape is refused (the backends
    differ there); one that cannot (a target whose last axis differs from the input's)
    drops the mask, and stacked cells reading go_backwards behind it load."""
    from fastrnn.io.keras import model_from_keras_config
    rng = np.random.RandomState(4)

    def specs(target):
        return [("InputLayer", {"name": "in", "batch_shape": [None, 6, 4]}),
                ("Masking", {"name": "m"}), ("Reshape", {"name": "r", "target_shape": target}),
                ("RNN", {"name": "rnn", "go_backwards": True,
                         "cell": [{"class_name": "GRUCell", "config": {"units": 3}},
                                  {"class_name": "GRUCell", "config": {"units": 2}}]})]

    def weights(i):
        return {"rnn": [rng.normal(size=s) for s in ((i, 9), (3, 9), (2, 9), (3, 6), (2, 6),
                                                      (2, 6))]}
    for target in ([6, 4], [-1, 4]):
        with pytest.raises(LoadError, match=r"layer 'r' \(Reshape\) reads a masked tensor "
                                            r"and may leave its shape as it is"):
            model_from_keras_config(specs(target), weights(4))
    m = model_from_keras_config(specs([4, 6]), weights(6))
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    assert m.predict(x).shape == (2, 2)
