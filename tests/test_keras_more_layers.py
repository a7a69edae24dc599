"""Keras's activation layers (ReLU, LeakyReLU, ELU, ThresholdedReLU, PReLU), Rescaling and
Normalization, ZeroPadding / Cropping (1-D and 2-D), 2-D global pooling and the Dropout
alikes: the model layers against plain NumPy, their refusals, saving and streaming.  (Their
parity with Keras: the fixtures k3_act_layers_masked, k3_rescale_norm_masked,
k3_pad_crop_*, k2_act_layers_masked, k2_rescale_norm_masked, k2_pad_crop_pool2d in
test_keras.py.)"""
import json
import re

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras, model_from_keras_config  # noqa: E402
from fastrnn.model import (Activation, Cropping, Dense, GlobalPooling2D, KerasRNN,  # noqa: E402
                           Model, Normalization, PReLU, Rescaling, UpSampling, ZeroPadding,
                           activation_function)
from test_keras import TOL, model_path, reference  # noqa: E402

R = np.random.RandomState(7)


def _keras_relu(v, ns, mx, th):
    """Keras's relu(x, negative_slope, max_value, threshold) for one float32 number, as
    its documentation defines it piecewise (the threshold compared in float32, as Keras
    casts it to the input's dtype)."""
    th = float(np.float32(th))
    if mx is not None and v >= mx:
        return mx
    if v > th if th != 0 else v >= 0:
        return v
    return ns * (v - th)


@pytest.mark.parametrize("ns,mx,th", [(0.1, 1.5, 0.2), (0.0, 1.5, 0.0), (0.3, None, 0.0),
                                      (0.0, None, 0.4), (0.2, None, 0.4), (0.0, 6.0, 0.0),
                                      (0.5, 6.0, 0.0)])
def test_relu_layer_spec_is_kerass_piecewise_function(ns, mx, th):
    x = np.concatenate([np.linspace(-3, 8, 221), [th, mx or 0.0]]).astype(np.float32)
    y = activation_function(("relu", ns, mx, th))(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [_keras_relu(float(v), ns, mx, th) for v in x],
                               rtol=1e-6, atol=1e-6)


def test_elu_thresholded_and_prelu():
    x = np.linspace(-4, 4, 81).astype(np.float32)
    np.testing.assert_allclose(activation_function(("elu", 0.7))(x),
                               np.where(x > 0, x, 0.7 * np.expm1(x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(activation_function(("thresholded_relu", 0.5))(x),
                                  np.where(x > 0.5, x, 0))
    xs = R.normal(size=(3, 5, 4)).astype(np.float32)
    alpha = R.uniform(-1, 1, (1, 4)).astype(np.float32)        # (shared_axes=[1])
    y, m = PReLU(alpha).call(xs, "mask")
    np.testing.assert_allclose(y, np.where(xs > 0, xs, alpha * xs), rtol=1e-6, atol=1e-7)
    assert m == "mask"
    with pytest.raises(ValueError, match="alpha of shape"):
        PReLU(np.ones((2, 4), np.float32)).call(xs)


def test_rescaling_and_normalization():
    x = R.normal(size=(2, 5, 3)).astype(np.float32)
    y, m = Rescaling([1.0, 2.0, 3.0], 0.5).call(x, "mask")
    np.testing.assert_allclose(y, x * [1, 2, 3] + 0.5, rtol=1e-6)
    assert m == "mask" and Rescaling(2.0, keeps_mask=False).call(x, "mask")[1] is None
    mean, var = R.normal(size=3), R.uniform(0, 2, 3)
    var[1] = 0.0                                    # (the 1e-7 floor)
    y, _ = Normalization(mean, var).call(x)
    np.testing.assert_allclose(y, (x - mean) / np.maximum(np.sqrt(var), 1e-7), rtol=1e-5,
                               atol=1e-6)
    # statistics per step (axis 1): aligned with that axis, not the last
    mean5, var5 = R.normal(size=5), R.uniform(0.5, 2, 5)
    y, _ = Normalization(mean5, var5, axis=1).call(x)
    np.testing.assert_allclose(y, (x - mean5[:, None]) / np.sqrt(var5)[:, None], rtol=1e-5,
                               atol=1e-6)
    # statistics of fewer axes than kept: aligned with the last kept axes (Keras)
    y, _ = Normalization(mean, var, axis=(1, 2)).call(x)
    np.testing.assert_allclose(y, (x - mean) / np.maximum(np.sqrt(var), 1e-7), rtol=1e-5,
                               atol=1e-6)
    y, _ = Normalization(mean, var, invert=True).call(x)
    np.testing.assert_allclose(y, mean + x * np.maximum(np.sqrt(var), 1e-7), rtol=1e-5)
    y, _ = Normalization(0.5, 4.0, axis=None).call(x)      # (one for all)
    np.testing.assert_allclose(y, (x - 0.5) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="statistics of shape"):
        Normalization(mean5, var5).call(x)
    with pytest.raises(ValueError, match="variance >= 0"):
        Normalization(mean, -var - 1)
    with pytest.raises(ValueError, match="differ in shape"):
        Normalization(mean, var5)


def test_padding_cropping_and_global_pooling_2d():
    x = R.normal(size=(2, 5, 3)).astype(np.float32)
    y, m = ZeroPadding((2, 1)).call(x, "mask")
    assert y.shape == (2, 8, 3) and m is None
    np.testing.assert_array_equal(y[:, 2:7], x)
    assert not y[:, :2].any() and not y[:, 7:].any()
    y, m = Cropping((1, 2)).call(x, "mask")
    np.testing.assert_array_equal(y, x[:, 1:3])
    assert m is None and y.flags.c_contiguous
    img = R.normal(size=(2, 4, 6, 3)).astype(np.float32)
    y, _ = ZeroPadding(((1, 0), (2, 3)), rank=2).call(img)
    assert y.shape == (2, 5, 11, 3)
    np.testing.assert_array_equal(y[:, 1:, 2:8], img)
    np.testing.assert_array_equal(ZeroPadding(1, rank=2).call(img)[0][:, 1:5, 1:7], img)
    np.testing.assert_array_equal(ZeroPadding((1, 2), rank=2).call(img)[0][:, 1:5, 2:8], img)
    np.testing.assert_array_equal(Cropping(((1, 0), (2, 3)), rank=2).call(img)[0],
                                  img[:, 1:, 2:3])
    with pytest.raises(ValueError, match="leaves nothing"):
        Cropping((3, 2)).call(x)
    with pytest.raises(ValueError, match="pair"):
        ZeroPadding(-1)
    with pytest.raises(ValueError, match="4-D input"):
        ZeroPadding(1, rank=2).call(x)
    y, m = GlobalPooling2D("max").call(img, "mask")
    np.testing.assert_array_equal(y, img.max(axis=(1, 2)))
    assert m is None
    y, _ = GlobalPooling2D("average", keepdims=True).call(img)
    np.testing.assert_allclose(y, img.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    y, m = UpSampling(3).call(x, "mask")
    assert y.shape == (2, 15, 3) and m is None
    np.testing.assert_array_equal(y[:, ::3], x)
    np.testing.assert_array_equal(y[:, 2::3], x)
    y, _ = UpSampling((2, 1), rank=2).call(img)
    assert y.shape == (2, 8, 6, 3)
    np.testing.assert_array_equal(y[:, 1::2], img)
    with pytest.raises(ValueError, match="positive int"):
        UpSampling(0)


def test_new_layers_save_and_load(tmp_path):
    """A model of every new layer round-trips through fastrnn's own file, bit for bit."""
    x = R.normal(size=(2, 6, 4)).astype(np.float32)
    layers = [Rescaling([0.5, 1, 2, 3], 0.1, keeps_mask=False),
              Normalization(R.normal(size=6), R.uniform(0.5, 2, 6), axis=1, invert=True,
                            adapted=False),
              Activation(("relu", 0.1, None, 0.2)), Activation(("elu", 0.5)),
              Activation(("thresholded_relu", 0.3)), PReLU(R.normal(size=(1, 4))),
              ZeroPadding((1, 2)), Cropping((2, 0)),
              KerasRNN(fastrnn.GRU(4, 3, batch_first=True, seed=3), return_sequences=True)]
    model = Model(layers)
    model.save(tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(again(x), model(x))
    assert repr(again) == repr(model)
    assert again.layers[0].keeps_mask is False and again.layers[1].invert
    assert again.layers[1].adapted is False and again.count_params() == model.count_params()
    img = Model([UpSampling((1, 2), 2), GlobalPooling2D("max", keepdims=True),
                 ZeroPadding(((0, 1), (1, 0)), 2)])
    img.save(tmp_path / "i.safetensors")
    xi = R.normal(size=(2, 3, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(fastrnn.load(tmp_path / "i.safetensors")(xi), img(xi))


def _seq(*layers, shape=(None, 6, 4), dtype="float32"):
    first = {"class_name": "InputLayer",
             "config": {"name": "in", "batch_shape": list(shape), "dtype": dtype}}
    return json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [first] + [
        {"class_name": c, "config": {"name": f"l{i}", **cfg}}
        for i, (c, cfg) in enumerate(layers)]}})


@pytest.mark.parametrize("arch,weights,want", [
    (_seq(("ReLU", {"threshold": -0.5})), {}, "threshold must be >= 0"),
    (_seq(("ReLU", {"max_value": -1.0})), {}, "max_value, negative_slope"),
    (_seq(("Rescaling", {"scale": "half"})), {}, "scale must be a number"),
    (_seq(("Rescaling", {"scale": [[1.0], [1.0, 2.0]]})), {}, "scale must be a number"),
    (_seq(("Normalization", {"mean": [0.0] * 4, "variance": [1.0] * 4})),
     {"l0": [np.zeros(4), np.ones(4)]}, "given its mean and variance in its config"),
    (_seq(("Normalization", {"mean": [0.0] * 3, "variance": [1.0] * 3})), {},
     "statistics of 3 features for an input of 4"),
    (_seq(("Normalization", {"axis": 3, "mean": 0.0, "variance": 1.0})), {},
     "out of range"),
    (_seq(("Normalization", {"mean": [0.0] * 4, "variance": [-1.0] * 4})), {}, "variance >= 0"),
    (_seq(("Normalization", {})), {}, "no weights found for layer 'l0' (Normalization)"),
    (_seq(("PReLU", {})), {"l0": [np.ones(4)]}, "expected 2 axes"),
    (_seq(("ZeroPadding1D", {"padding": [1, 2, 3]})), {}, "padding must be"),
    (_seq(("ZeroPadding2D", {"padding": 1, "data_format": "channels_first"}),
          shape=(None, 6, 4, 2)), {}, "data_format 'channels_first'"),
    (_seq(("Cropping2D", {"cropping": [[1, -1], [0, 0]]}), shape=(None, 6, 4, 2)), {},
     "cropping must be"),
    (_seq(("ReLU", {"threshold": None})), {}, "'threshold' must be a finite number"),
    (_seq(("ELU", {"alpha": None})), {}, "'alpha' must be a finite number"),
    (_seq(("LeakyReLU", {"negative_slope": None})), {}, "'negative_slope' must be a finite"),
    (_seq(("ThresholdedReLU", {"theta": float("nan")})), {}, "'theta' must be a finite"),
    (_seq(("Rescaling", {"scale": [1.0, 2.0, 3.0]})), {}, "scale of shape (3,) for an input "
     "of 4 features"),
    (_seq(("PReLU", {"shared_axes": [1]})), {"l0": [np.ones((1, 5))]},
     "alpha has shape (1, 5), not one for shared_axes [1] and 4 features"),
    (_seq(("PReLU", {"shared_axes": [1]})), {"l0": [np.ones((6, 4))]},
     "alpha has shape (6, 4), not one for shared_axes [1]"),
    (_seq(("PReLU", {"shared_axes": [3]})), {"l0": [np.ones((6, 4))]},
     "shared_axes must be axes 1 .. 2"),
    (_seq(("PReLU", {"shared_axes": "x"})), {"l0": [np.ones((6, 4))]}, "shared_axes must be"),
    (_seq(("ZeroPadding1D", {"padding": -1})), {}, "got -1"),
    (_seq(("TimeDistributed", {"layer": {"class_name": "Dense", "config": None}}),
          shape=(None, 6, 4, 2)), {}, "the wrapped layer has no config"),
    (_seq(("UpSampling2D", {"size": 2, "interpolation": "bilinear"}), shape=(None, 6, 4, 2)),
     {}, "interpolation 'bilinear'"),
    (_seq(("UpSampling1D", {"size": -2})), {}, "size must be a positive int"),
    (_seq(("DepthwiseConv1D", {"kernel_size": 2, "depth_multiplier": 2})),
     {"l0": [np.ones((2, 3, 2)), np.ones(6)]}, "kernel of 3 channels for an input of 4"),
    (_seq(("DepthwiseConv1D", {"kernel_size": 2, "depth_multiplier": 3})),
     {"l0": [np.ones((2, 4, 2)), np.ones(8)]}, "depth_multiplier 2, the config says 3"),
    (_seq(("DepthwiseConv1D", {"kernel_size": 2})),
     {"l0": [np.ones((2, 4)), np.ones(4)]}, "expected 3 axes"),
    (_seq(("SeparableConv1D", {"kernel_size": 2, "filters": 5})),
     {"l0": [np.ones((2, 4, 1)), np.ones((1, 4, 6)), np.ones(5)]},
     "pointwise_kernel has shape (1, 4, 6), expected (1, 4, 5)"),
    (_seq(("DepthwiseConv1D", {"kernel_size": 3})),
     {"l0": [np.ones((0, 4, 1)), np.ones(4)]}, "the config's kernel_size is 3"),
    (_seq(("DepthwiseConv1D", {"kernel_size": 2, "padding": "causal"})),
     {"l0": [np.ones((2, 4, 1)), np.ones(4)]}, "padding 'causal' is not one Keras takes"),
    (_seq(("SeparableConv1D", {"kernel_size": 2, "filters": 5, "padding": "causal"})),
     {"l0": [np.ones((2, 4, 1)), np.ones((1, 4, 5)), np.ones(5)]},
     "padding 'causal' is not one Keras takes"),
    (_seq(("SeparableConv2D", {"kernel_size": 2, "filters": 5, "strides": 0}),
          shape=(None, 6, 4, 2)),
     {"l0": [np.ones((2, 2, 2, 1)), np.ones((1, 1, 2, 5)), np.ones(5)]}, "strides"),
])
def test_refusals_name_the_layer(arch, weights, want):
    named = "layer 'l0'" in want            # (else after the layer's name)
    with pytest.raises(LoadError, match=re.escape(want) if named else
                       r"layer 'l0' \(\w+\).*" + re.escape(want)):
        model_from_keras_config(arch, weights)


def test_zero_cropping_of_a_masked_tensor_is_refused():
    """Keras 3 on JAX keeps the mask through a Cropping1D that crops nothing (its slice
    is the input array), other backends end it: refused, as the identity Permute."""
    arch = _seq(("Masking", {"mask_value": 0.0}), ("Cropping1D", {"cropping": [0, 0]}),
                ("GRU", {"units": 2}))
    r = np.random.RandomState(1)
    w = {"l2": [r.normal(size=(4, 6)), r.normal(size=(2, 6)), r.normal(size=(2, 6))]}
    with pytest.raises(LoadError, match=r"layer 'l1' \(Cropping1D\) reads a masked tensor "
                                        "and may leave its shape as it is"):
        model_from_keras_config(arch, w)
    model_from_keras_config(arch.replace("[0, 0]", "[0, 1]"), w)     # (crops: ends it)


def test_tf_keras_rescaling_and_identity():
    """tf.keras 2 rounds a Rescaling's scale and offset to float32 before its cast to a
    float64 layer's dtype; its Identity ends a mask (Keras 3's keeps both as given)."""
    arch = _seq(("Rescaling", {"scale": 0.1, "offset": 0.3}), ("Identity", {}))
    for version, scale, keeps in (("2", float(np.float32(0.1)), False), ("3", 0.1, True)):
        model = model_from_keras_config(arch, {}, keras_version=version, dtype="float64")
        resc, ident = model.layers[-2:]
        assert resc.scale.dtype == np.float64 and float(resc.scale) == scale
        assert float(resc.offset) == (float(np.float32(0.3)) if version == "2" else 0.3)
        assert ident.keeps_mask is keeps and resc.keeps_mask is keeps
        assert ident.call(np.ones((1, 2, 4)), "m")[1] == ("m" if keeps else None)


def test_huge_padding_and_kernels_without_taps_are_refused():
    from fastrnn.model import Conv1D, Conv2D
    with pytest.raises(ValueError, match="beyond what fastrnn runs"):
        ZeroPadding((10 ** 12, 0)).call(np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="empty axis"):
        Conv1D(np.ones((0, 3, 4)))
    with pytest.raises(ValueError, match="empty axis"):
        Conv2D(np.ones((2, 0, 3, 4)))


def test_keras_versions_differ_in_the_mask_after_rescaling():
    """Keras 3's Rescaling / Normalization pass a mask on, tf.keras 2's end it: the same
    layers load with keeps_mask by the file's version (the fixtures' outputs differ by
    that: each matches its own Keras)."""
    for name, keeps in (("k3_rescale_norm_masked", True), ("k2_rescale_norm_masked", False)):
        model = load_keras(model_path(name))
        scaled = [l for l in model.layers if isinstance(l, (Rescaling, Normalization))]
        assert scaled and all(l.keeps_mask is keeps for l in scaled)
        x, ys = reference(name)
        for l in scaled:
            l.keeps_mask = not keeps
        assert np.abs(model.predict(x) - ys[0]).max() > 100 * TOL
        for l in scaled:
            l.keeps_mask = keeps
        assert np.abs(model.predict(x) - ys[0]).max() <= TOL


@pytest.mark.parametrize("name", ["k2_act_layers_masked", "k2_rescale_norm_masked"])
def test_models_of_the_new_layers_stream(name):
    model = load_keras(model_path(name))
    x, ys = reference(name)
    s = fastrnn.Stream(model, batch_size=len(x))
    got = np.stack([s.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(got, ys[0], rtol=0, atol=TOL)


def test_layers_that_vary_along_the_steps_do_not_stream():
    x = R.normal(size=(2, 6, 4)).astype(np.float32)
    dense = Dense(R.normal(size=(4, 2)).astype(np.float32))
    for layer in (Normalization(R.normal(size=6), np.ones(6), axis=1),
                  PReLU(R.normal(size=(6, 4))), Rescaling(np.ones((6, 1))),
                  ZeroPadding(1), Cropping(1)):
        model = Model([layer, dense])
        model(x)
        with pytest.raises(ValueError, match="cannot stream layer"):
            fastrnn.Stream(model, batch_size=2)
    # (Keras 3's PReLU keeps an alpha per step unless shared_axes=[1]; statistics per step)
    for name, layer in (("k3_act_layers_masked", "p_re_lu"),
                        ("k3_rescale_norm_masked", "normalization")):
        with pytest.raises(ValueError, match=f"cannot stream layer '{layer}'"):
            fastrnn.Stream(load_keras(model_path(name)), batch_size=3)
