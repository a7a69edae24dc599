"""Keras importer: every fixture made by real Keras 3 / tf-keras 2 (tests/fixtures/make_keras*.py)
is loaded without Keras and must reproduce Keras's own outputs to 1e-5 (fp32)."""
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")  # in the test extra: always present in CI

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import Bidirectional, KerasRNN  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "keras")
ALL_NAMES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIX, "*.npz")))
# models fastrnn must refuse (npz: what Keras computes); k3_refused_branched_encdec (a
# decoder reading the model's input, started from an encoder's states) was refused while
# fastrnn ran chains of layers only: a graph now, it must match Keras like the others
GRAPH_NOW = ("k3_refused_branched_encdec",)
# k3_reshape_permute_masking: its outputs are Keras-on-JAX's, which keeps a mask through a
# Reshape / Permute that leaves the shape as it is, where Keras on TensorFlow drops it
BACKEND_DEPENDENT = ("k3_reshape_permute_masking",)
REFUSED = [n for n in ALL_NAMES if (n.startswith("k3_refused_") and n not in GRAPH_NOW)
           or n in BACKEND_DEPENDENT]
# known differences from Keras that fastrnn warns about (npz: what Keras computes)
KNOWN_DIFFERENT = ("k3_known_mha_mask_cleared",)
NAMES = [n for n in ALL_NAMES if n not in REFUSED and n not in KNOWN_DIFFERENT]
TOL = 1e-5


def model_path(name):
    for ext in (".keras", ".weights.h5", ".h5"):
        p = os.path.join(FIX, name + ext)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(name)


def reference(name):
    """(the input, Keras's outputs); a model of several inputs: a list of its inputs,
    in Keras's order of model.inputs (the npz's x0, x1, ...)."""
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        ys = [z[f"y{i}"] for i in range(sum(f.startswith("y") for f in z.files))]
        if "x" in z.files:
            return z["x"], ys
        return [z[f"x{k}"] for k in range(sum(f.startswith("x") for f in z.files))], ys


def input_names(name):
    """The names a fixture of several inputs takes a dict by (a dict model's keys)."""
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        return [str(v) for v in z["input_names"]]


def architecture(name):
    p = os.path.join(FIX, name + ".json")
    if os.path.exists(p):
        with open(p) as f:
            return f.read()
    return None


def as_list(out):
    return out if isinstance(out, list) else [out]


def assert_matches(model, name, batch_size=None, tol=TOL):
    """``model``'s outputs on fixture ``name``'s input match Keras's (shape, dtype, max
    abs error <= ``tol``); returns them."""
    x, ys = reference(name)
    out = as_list(model.predict(x, batch_size=batch_size))
    assert len(out) == len(ys)
    for a, b in zip(out, ys):
        assert a.shape == b.shape
        assert a.dtype == b.dtype            # float32, float64 for k3_float64
        err = float(np.max(np.abs(a - b)))
        assert err <= tol, f"{name}: max abs error {err}"
    return out


def test_fixture_set_is_complete():
    # every combination named in the issue has a fixture; guard against losing files
    # (+11 nested-model, +5 k2_merge_*, +10 k3_nested_res_*, +1 k3_norm_inner_axis,
    # +7 k*_td_*: TimeDistributed of other layers than Dense; +7: activation, scaling,
    # padding / cropping layers; +4 k*_sepconv*: depthwise / separable convolutions;
    # +4: k3_td_nested, k2_identity_masked, k3_td_embed_mask_zero, k3_td_sepconv;
    # +1 k3_causal_conv_stream: causal convolutions a stream runs; +5 k*_td_model_*:
    # TimeDistributed of a model; +4 k2_td_masks_*, k2_td_model_mask_out: tf.keras 2's
    # masks through them; +8 k*_ops_*: keras.ops calls, tf.keras 2's TensorFlow ops)
    assert len(NAMES) == 160 and len(REFUSED) == 9
    for n in NAMES:
        model_path(n)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_matches_keras(name):
    model = load_keras(model_path(name), architecture(name))
    assert_matches(model, name)
    assert_matches(model, name, batch_size=2)  # chunked predict gives the same


def test_span_masks_match_keras(monkeypatch):
    """A model whose masks are one span a sequence (pre-, post- and both-sides padding of
    Embedding(mask_zero=True) ids; Bidirectional LSTM, go_backwards GRU, SimpleRNN with
    its state): Keras's outputs on the mask kernels (this small call's rule), packed
    from each span (the rule off: the lean ragged call runs), and one sequence at a
    time (dense over its span)."""
    import fastrnn.layers as layers_mod
    from fastrnn.layers import RNNBase
    name = "k3_spans_embed"
    model = load_keras(model_path(name))
    x, ys = reference(name)
    taken = []
    real = RNNBase._ragged_call
    monkeypatch.setattr(RNNBase, "_ragged_call",
                        lambda *a, **k: taken.append(1) or real(*a, **k))
    assert_matches(model, name)
    assert not taken
    for knob in ("_SPAN_MIN_MACS", "_SPAN_MIN_SKIP", "_SPAN_MIN_SKIP_NARROW"):
        monkeypatch.setattr(layers_mod, knob, 0)
    assert_matches(model, name)
    assert len(taken) == 3                      # (each recurrent layer once)
    for b in range(len(x)):
        out = as_list(model.predict(x[b:b + 1]))
        for a, y in zip(out, ys):
            assert float(np.max(np.abs(a - y[b:b + 1]))) <= TOL
    assert len(taken) == 3


@pytest.mark.parametrize("name", [n for n in NAMES if architecture(n) is None])
def test_fastrnn_load_dispatches_keras(name):
    model = fastrnn.load(model_path(name))
    assert_matches(model, name)


# ---------------------------------------------------------------- what the fixtures exercise

def _layers(name):
    return load_keras(model_path(name), architecture(name)).layers


def _rnns(layers):
    for l in layers:
        if isinstance(l, KerasRNN):
            yield l
        elif isinstance(l, Bidirectional):
            yield l.forward
            yield l.backward


def test_fixtures_cover_the_combinations():
    seen = set()
    for name in NAMES:
        ls = _layers(name)
        for l in ls:
            seen.add(type(l).__name__)
            if isinstance(l, Bidirectional):
                seen.add(f"merge:{l.merge_mode}")
        for r in _rnns(ls):
            core = r.core
            seen.add(type(core).__name__)
            for flag in ("return_sequences", "return_state", "go_backwards",
                         "zero_output_for_mask"):
                if getattr(r, flag):
                    seen.add(flag)
            if type(core).__name__ == "GRU":
                seen.add(f"reset_after:{core.reset_after}")
            for a in core._acts[0]:
                if a[0] == "hardsigmoid":
                    seen.add(f"hard_sigmoid:{round(a[1], 4)}")
                if a[0] == "relu":
                    seen.add("relu_rnn")
    want = {"Embedding", "Masking", "Dense", "Dropout", "TimeDistributed", "Bidirectional",
            "KerasRNN", "SimpleRNN", "LSTM", "GRU", "merge:concat", "merge:sum", "merge:mul",
            "merge:ave", "merge:None", "return_sequences", "return_state", "go_backwards",
            "zero_output_for_mask", "reset_after:True", "reset_after:False",
            "hard_sigmoid:0.2", "hard_sigmoid:0.1667", "relu_rnn"}
    assert want <= seen, want - seen


def test_hard_sigmoid_follows_keras_version():
    # Keras 2 file: 0.2x+0.5 ; Keras 3 legacy h5: x/6+0.5.  The other formula is wrong.
    for name, wrong in (("k2_lstm_gru_hsig", "keras3"), ("k3_legacy_hsig", "keras2"),
                        ("k3_gru_noreset_hsig", "keras2")):
        x, ys = reference(name)
        right = load_keras(model_path(name)).predict(x)
        bad = load_keras(model_path(name), hard_sigmoid=wrong).predict(x)
        assert np.max(np.abs(right - ys[0])) <= TOL
        assert np.max(np.abs(bad - ys[0])) > 1e-3
    with pytest.raises(ValueError):
        load_keras(model_path("k3_legacy_hsig"), hard_sigmoid="keras4")


def test_cudnn_weights_become_lstm_and_gru():
    ls = _layers("k2_cudnn_lstm")
    assert type(ls[0].core).__name__ == "LSTM"
    ls = _layers("k2_cudnn_bi_gru")
    assert type(ls[0].forward.core).__name__ == "GRU" and ls[0].forward.core.reset_after
    with h5py.File(model_path("k2_cudnn_lstm")) as f:
        assert "CuDNNLSTM" in f.attrs["model_config"]
        assert f["model_weights/cu_dnnlstm/cu_dnnlstm/bias:0"].shape == (8 * 4,)


@pytest.mark.parametrize("name", ["k2_cudnn_lstm", "k2_cudnn_bi_gru"])
def test_cudnn_weights_into_the_plain_architecture(name):
    """A cuDNN model's save_weights file given the plain LSTM / GRU model's architecture
    (a GPU-trained model's weights run on its CPU twin; tf-keras's load_weights converts
    them): refused before ("bias has shape (32,), expected (16,)"); Keras's outputs now.
    A GRU with reset_after=False cannot take them: refused naming CuDNNGRU."""
    w = os.path.join(FIX, name + ".cudnn_weights.h5")
    with open(os.path.join(FIX, name + ".plain.json")) as f:
        plain = f.read()
    assert "CuDNN" not in plain
    assert_matches(load_keras(w, plain), name)
    if "gru" in name:
        with pytest.raises(LoadError, match="CuDNNGRU weights .* reset_after=True"):
            load_keras(w, plain.replace('"reset_after": true', '"reset_after": false'))


def test_bidirectional_fused_equals_two_layers():
    for name in ("k3_bi_concat_lstm_embed", "k3_bi_sum_gru_masking", "k2_bi_modes_embed",
                 "k2_bi_none_state_masking"):
        model = load_keras(model_path(name))
        bis = [l for l in model.layers if isinstance(l, Bidirectional)]
        assert bis and all(b._fused is not None for b in bis)
        x, _ = reference(name)
        fused = as_list(model.predict(x))
        for b in bis:
            b._fused = None
        for a, c in zip(fused, as_list(model.predict(x))):
            np.testing.assert_allclose(a, c, atol=1e-6)
    # a Bidirectional with different forward/backward cells runs unfused
    model = load_keras(model_path("k3_bi_none_gobw_masking"))
    assert model.layers[1]._fused is None


def test_fused_bidirectional_keeps_each_weight_once(tmp_path):
    """A loaded fused Bidirectional's direction layers hold the fused core's arrays, not
    copies (the model kept every weight twice), from the Keras file and from fastrnn's
    own save of the model; the unfused path still gives the same outputs."""
    name = "k2_bi_modes_embed"
    model = load_keras(model_path(name))
    path = str(tmp_path / "m.safetensors")
    model.save(path)
    x, _ = reference(name)
    for m in (model, fastrnn.load(path)):
        bis = [l for l in m.layers if isinstance(l, Bidirectional) and l._fused is not None]
        assert bis
        for b in bis:
            for k, arr in b._fused._params.items():
                core = b.backward.core if k.endswith("_reverse") else b.forward.core
                assert core._params[k.replace("_reverse", "")] is arr, k
        fused = as_list(m.predict(x))
        for b in bis:
            b._fused = None
        for a, c in zip(fused, as_list(m.predict(x))):
            np.testing.assert_allclose(a, c, atol=1e-6)


# ---------------------------------------------------------------- weights-only + architecture

def _specs_k3():
    return [("InputLayer", {"batch_shape": [None, 7]}),
            {"class_name": "Embedding", "config": {"input_dim": 20, "output_dim": 3,
                                                   "mask_zero": True}},
            {"class_name": "GRU", "units": 4, "return_sequences": True},
            ("LSTM", {"units": 3}), ("Dense", {"units": 2})]


def _specs_k2():
    return [("Embedding", {"input_dim": 20, "output_dim": 3, "mask_zero": True}),
            ("Bidirectional", {"layer": {"class_name": "LSTM",
                                         "config": {"units": 3, "return_sequences": True}}}),
            ("GRU", {"units": 4, "recurrent_activation": "hard_sigmoid"}),
            ("Dense", {"units": 2})]


def _specs_k2_newfmt():
    return [("Masking", {"mask_value": 0.0}),
            ("Bidirectional", {"merge_mode": "ave", "layer": {
                "class_name": "GRU", "config": {"units": 3, "return_sequences": True,
                                                "reset_after": False,
                                                "recurrent_activation": "hard_sigmoid"}}}),
            ("TimeDistributed", {"layer": {"class_name": "Dense",
                                           "config": {"units": 2, "activation": "softmax"}}})]


@pytest.mark.parametrize("name,specs", [("k3_weights_only", _specs_k3),
                                        ("k2_weights_only", _specs_k2),
                                        ("k2_weights_newfmt", _specs_k2_newfmt)])
def test_weights_only_with_user_architecture(name, specs):
    path = model_path(name)
    arch = architecture(name)
    assert_matches(load_keras(path, arch), name)                  # JSON string
    assert_matches(load_keras(path, json.loads(arch)), name)      # dict
    assert_matches(load_keras(path, specs()), name)               # list of layer specs
    assert_matches(fastrnn.load(path, specs()), name)
    with pytest.raises(LoadError, match="weights only"):
        load_keras(path)


def test_weights_only_architecture_mismatch():
    path = model_path("k2_weights_only")
    with pytest.raises(LoadError, match="weights for 4 layers"):
        load_keras(path, _specs_k2() + [("Dense", {"units": 2})])
    bad = _specs_k2()
    bad[2] = ("GRU", {"units": 5})
    with pytest.raises(LoadError, match=r"'layer_2' \(GRU\): kernel has shape \(6, 12\), "
                                        r"expected \(6, 15\)"):
        load_keras(path, bad)
    with pytest.raises(LoadError, match="architecture item 0"):
        load_keras(path, [42])
    with pytest.raises(LoadError, match="not valid JSON"):
        load_keras(path, "{nope")


def test_user_can_state_old_hard_sigmoid():
    # a pre-2.3 weights-only file does not record the activation: the spec list says it
    path = model_path("k2_weights_only")
    specs = _specs_k2()
    specs[2] = ("GRU", {"units": 4})  # sigmoid: wrong for this file
    x, ys = reference("k2_weights_only")
    assert np.max(np.abs(load_keras(path, specs).predict(x) - ys[0])) > 1e-4


# ---------------------------------------------------------------- broken files

def test_truncated_keras_zip(tmp_path):
    data = open(model_path("k3_lstm_basic"), "rb").read()
    p = tmp_path / "t.keras"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError):
        load_keras(str(p))
    with pytest.raises(LoadError):
        fastrnn.load(str(p))


def _rewrite_zip(src, dst, edit):
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for item in zi.infolist():
            data = zi.read(item.filename)
            data = edit(item.filename, data)
            if data is not None:
                zo.writestr(item, data)


def test_keras_zip_missing_member(tmp_path):
    p = tmp_path / "m.keras"
    _rewrite_zip(model_path("k3_lstm_basic"), p,
                 lambda n, d: None if n == "model.weights.h5" else d)
    with pytest.raises(LoadError, match="model.weights.h5"):
        load_keras(str(p))


def _edit_config(name, tmp_path, fn):
    p = tmp_path / (name + ".keras")

    def edit(n, d):
        if n == "config.json":
            c = json.loads(d)
            fn(c)
            return json.dumps(c).encode()
        return d
    _rewrite_zip(model_path(name), p, edit)
    return str(p)


def test_unsupported_layer_is_named(tmp_path):
    def conv(c):
        c["config"]["layers"][-1]["class_name"] = "Conv1D"
    p = _edit_config("k3_lstm_basic", tmp_path, conv)
    with pytest.raises(LoadError, match=r"'dense' \(Conv1D\)"):
        load_keras(p)

    def attention(c):
        c["config"]["layers"][1]["config"]["layer"]["class_name"] = "ConvLSTM1D"
    p = _edit_config("k3_bi_mul_simplernn", tmp_path, attention)
    with pytest.raises(LoadError, match="ConvLSTM1D"):
        load_keras(p)

    def selu(c):
        c["config"]["layers"][1]["config"]["activation"] = "selu"
    p = _edit_config("k3_lstm_basic", tmp_path, selu)
    with pytest.raises(LoadError, match="selu"):
        load_keras(p)


@pytest.mark.parametrize("cls,match", [
    ("Conv3D", r"unsupported Keras layer\(s\): 'ln' \(Conv3D\)"),
    # (supported, but the file holds no weights for it)
    ("LayerNormalization", r"the architecture has 3 layers with weights \(\['simple_rnn', "
                           r"'ln', 'dense_2'\]\)")])
def test_unsupported_layer_in_legacy_h5(tmp_path, cls, match):
    p = tmp_path / "u.h5"
    shutil.copy(model_path("k2_simplernn_relu_gobw"), p)
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        c["config"]["layers"].insert(2, {"class_name": cls, "config": {"name": "ln"}})
        f.attrs["model_config"] = json.dumps(c)
    with pytest.raises(LoadError, match=match):
        load_keras(str(p))


def test_branch_without_weights_is_named(tmp_path):
    def branch(c):
        layers = c["config"]["layers"]
        extra = json.loads(json.dumps(layers[-1]))
        extra["name"] = extra["config"]["name"] = "side_dense"
        layers.append(extra)
        c["config"]["output_layers"] = [c["config"]["output_layers"][0], ["side_dense", 0, 0]]
    p = _edit_config("k3_state_bi_gru_masking", tmp_path, branch)
    # side_dense reads the same tensor as dense: a second branch (graphs load now), but
    # the file holds no weights for it
    with pytest.raises(LoadError, match="no weights found for layer 'side_dense' \\(Dense\\)"):
        load_keras(p)


def test_h5_weight_with_wrong_shape(tmp_path):
    p = tmp_path / "w.h5"
    shutil.copy(model_path("k2_lstm_gru_hsig"), p)
    with h5py.File(p, "r+") as f:
        g = f["model_weights/lstm/lstm/lstm_cell"]
        del g["recurrent_kernel:0"]
        g["recurrent_kernel:0"] = np.zeros((5, 16), np.float32)
    with pytest.raises(LoadError, match=r"'lstm' \(LSTM\): recurrent_kernel has shape \(5, 16\), "
                                        r"expected \(5, 20\)"):
        load_keras(str(p))


def test_h5_missing_weight(tmp_path):
    p = tmp_path / "m.h5"
    shutil.copy(model_path("k2_lstm_gru_hsig"), p)
    with h5py.File(p, "r+") as f:
        del f["model_weights/gru/gru/gru_cell/bias:0"]
    with pytest.raises(LoadError, match="bias:0.*missing"):
        load_keras(str(p))
    # a whole layer's weights gone
    p2 = tmp_path / "m2.h5"
    shutil.copy(model_path("k2_lstm_gru_hsig"), p2)
    with h5py.File(p2, "r+") as f:
        del f["model_weights/dense"]
        f["model_weights"].attrs["layer_names"] = [b"lstm", b"gru", b"dropout"]
    with pytest.raises(LoadError, match="dense"):
        load_keras(str(p2))


def _without_weights(name, dst, group):
    """A copy of fixture ``name`` (.keras) at ``dst`` whose model.weights.h5 lacks
    ``group``."""
    def edit(n, d):
        if n != "model.weights.h5":
            return d
        buf = io.BytesIO(d)
        with h5py.File(buf, "r+") as f:
            del f[group]
        return buf.getvalue()
    _rewrite_zip(model_path(name), dst, edit)


def test_keras3_missing_weight(tmp_path):
    p = tmp_path / "k.keras"
    _without_weights("k3_lstm_basic", p, "layers/lstm/cell/vars/2")
    with pytest.raises(LoadError, match="'lstm' .*2 weight arrays, expected 3"):
        load_keras(str(p))


def test_not_a_keras_file(tmp_path):
    p = tmp_path / "x.keras"
    p.write_bytes(b"hello world, not a model")
    with pytest.raises(LoadError):
        load_keras(str(p))
    p = tmp_path / "e.h5"
    with h5py.File(p, "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(LoadError, match="no Keras model"):
        load_keras(str(p))
    assert issubclass(LoadError, ValueError)


@pytest.mark.parametrize("name", ["k3_lstm_basic", "k2_lstm_gru_hsig", "k3_legacy_hsig"])
def test_h5py_is_not_needed(name):
    # fastrnn reads HDF5 itself: with h5py made unimportable every kind of Keras file loads
    code = ("import sys; sys.modules['h5py'] = None\n"
            "import numpy as np\n"
            "from fastrnn.io.keras import load_keras\n"
            "m = load_keras(sys.argv[1])\n"
            "x = np.load(sys.argv[2])['x']\n"
            "print(type(m.predict(x)).__name__, 'h5py' in sys.modules and sys.modules['h5py'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code, model_path(name),
                          os.path.join(FIX, name + ".npz")],
                         capture_output=True, text=True, cwd=os.path.dirname(HERE))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"


def test_keras_and_tensorflow_not_imported():
    code = ("import sys, numpy as np, fastrnn; "
            "m = fastrnn.load(sys.argv[1]); m.predict(np.zeros((1, 6, 4), 'f4')); "
            "print(sorted(k for k in ('keras', 'tensorflow', 'tf_keras', 'jax', 'torch') "
            "if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, model_path("k3_lstm_basic")],
                         capture_output=True, text=True, cwd=os.path.dirname(HERE), check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- malformed configs

def _set(path, value):
    def fn(c):
        obj = c
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return fn


LSTM_CFG = ["config", "layers", 1, "config"]


@pytest.mark.parametrize("path,value,match", [
    (LSTM_CFG + ["units"], "abc", r"'lstm' \(LSTM\).*'units'"),
    (LSTM_CFG + ["units"], 2 ** 62, r"'lstm' \(LSTM\).*'units'"),
    (LSTM_CFG + ["units"], None, r"'lstm' \(LSTM\).*'units'"),
    (LSTM_CFG + ["use_bias"], [1, 2], r"'lstm' \(LSTM\).*'use_bias'"),
    (LSTM_CFG + ["return_sequences"], "yes", r"'lstm' \(LSTM\).*'return_sequences'"),
    (LSTM_CFG + ["activation"], [1], r"'lstm'.*activation"),
    (LSTM_CFG + ["activation"], {"config": 3}, r"'lstm'.*activation"),
    (["config", "layers", 3, "config", "units"], 1.5, r"'dense' \(Dense\).*'units'"),
    (["config", "layers", 2, "config", "rate"], "x", r"'dropout' \(Dropout\).*'rate'"),
    (["config", "layers", 0, "config", "batch_shape"], 7, r"'input_layer'.*'batch_shape'"),
    (["config", "layers", 0, "config", "batch_shape"], [None, 6, "4"], r"'batch_shape'"),
    (["config", "layers", 1, "config"], "not a dict", r"layer 'layer_1' config must be a JSON object"),
    (["config", "layers", 1], [], r"layer 1 must be a JSON object"),
    (["config", "layers", 1, "class_name"], 5, r"class_name must be a string"),
    (["config", "layers"], "LSTM", r"layers must be a JSON list"),
    (["config"], [1, 2], r"layer 0 must be a JSON object"),
    (["class_name"], "Transformer", r"unsupported model class"),
    (["keras_version"], {"a": 1}, r"keras_version"),
])
def test_malformed_config_value_names_layer_and_key(tmp_path, path, value, match):
    p = _edit_config("k3_lstm_basic", tmp_path, _set(path, value))
    with pytest.raises(LoadError, match=match) as e:
        load_keras(p)
    assert p in str(e.value)
    with pytest.raises(LoadError):
        fastrnn.load(p)


def test_malformed_functional_configs(tmp_path):
    name = "k3_bi_none_gobw_masking"
    c = json.loads(zipfile.ZipFile(model_path(name)).read("config.json"))
    assert c["class_name"] == "Functional"
    layers = c["config"]["layers"]

    def cycle(c):   # the input layer takes its input from the last layer
        c["config"]["layers"][0]["inbound_nodes"] = c["config"]["layers"][-1]["inbound_nodes"]
        c["config"]["layers"][-1]["inbound_nodes"] = [{"args": [{
            "class_name": "__keras_tensor__",
            "config": {"keras_history": [c["config"]["layers"][-1]["name"], 0, 0]}}],
            "kwargs": {}}]
    p = _edit_config(name, tmp_path, cycle)
    with pytest.raises(LoadError, match="cycle"):
        load_keras(p)

    def deep(c):    # output references nested 100000 lists deep
        v = [layers[-1]["name"], 0, 0]
        for _ in range(100):
            v = [[v]]
        c["config"]["output_layers"] = v
    p = _edit_config(name, tmp_path, deep)
    with pytest.raises(LoadError, match="nest too deeply"):
        load_keras(p)

    def history(c):
        c["config"]["layers"][-1]["inbound_nodes"] = [{"args": [{
            "class_name": "__keras_tensor__", "config": {"keras_history": ["x", "0", 0]}}]}]
    p = _edit_config(name, tmp_path, history)
    with pytest.raises(LoadError, match="keras_history"):
        load_keras(p)


def test_deeply_nested_json_config(tmp_path):
    p = tmp_path / "deep.keras"
    _rewrite_zip(model_path("k3_lstm_basic"), p,
                 lambda n, d: (b"[" * 200000 + b"]" * 200000) if n == "config.json" else d)
    with pytest.raises(LoadError, match="nests too deeply"):
        load_keras(str(p))
    with pytest.raises(LoadError):
        load_keras(model_path("k3_weights_only"), "[" * 200000 + "]" * 200000)


def test_weights_of_wrong_kind(tmp_path):
    # a weight that is a group, or a string dataset, is a LoadError naming it
    p = tmp_path / "w.h5"
    shutil.copy(model_path("k2_simplernn_relu_gobw"), p)
    with h5py.File(p, "r+") as f:
        g = f["model_weights"]
        lname = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["layer_names"]]
        for ln in lname:
            wn = g[ln].attrs["weight_names"]
            if len(wn):
                w0 = wn[0].decode() if isinstance(wn[0], bytes) else wn[0]
                del g[ln][w0]
                g[ln][w0] = np.array(["a", "b"], dtype=h5py.string_dtype())
                break
    with pytest.raises(LoadError, match="numeric array"):
        load_keras(str(p))


# ----------------------------------------------------------------------------- call arguments

def test_initial_state_from_earlier_rnn():
    """Encoder-decoder chains (an RNN started from an earlier RNN's return_state outputs,
    Keras 3's node kwargs): run with those states, as Keras does; not from zeros."""
    for name, want in (("k3_init_state_bi_lstm", {1: [(0, 1), (0, 2), (0, 3), (0, 4)]}),
                       ("k3_init_state_gru", {1: [(0, 1)], 2: [(1, 1)]})):
        model = load_keras(model_path(name))
        assert model.initial_states == want
        assert_matches(model, name)
        x, ys = reference(name)
        model.initial_states = {}                   # what fastrnn computed before
        assert np.max(np.abs(model.predict(x) - ys[0])) > 1e-3
    # the legacy .h5 of the GRU chain, fused bidirectional path and two-layer path
    model = load_keras(model_path("k3_init_state_bi_lstm"))
    assert model.layers[1]._fused is not None
    model.layers[1]._fused = None
    assert_matches(model, "k3_init_state_bi_lstm")
    # a stream cannot know the encoder's final states before the sequence ends
    with pytest.raises(ValueError, match="starts from the final states of layer"):
        fastrnn.Stream(load_keras(model_path("k3_init_state_gru")))


def k2_ref(ref):
    """A Keras 3 tensor reference in tf.keras 2's inbound form: [layer, node, tensor,
    kwargs]."""
    h = ref["config"]["keras_history"]
    return [h[0], h[1], h[2], {}]


def test_initial_state_keras2_inbound_form(tmp_path):
    """tf.keras 2 records an RNN's initial_state tensors as further inbound entries
    ([[name, node, tensor, kwargs], ...]): the same chain in that form gives the same."""
    p = tmp_path / "k2form.h5"
    shutil.copy(model_path("k3_init_state_gru"), p)

    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        for l in c["config"]["layers"]:
            nodes = l.get("inbound_nodes") or []
            if not nodes:
                continue
            node = nodes[0]
            st = node.get("kwargs", {}).get("initial_state")
            st = [] if st is None else st if isinstance(st, list) else [st]
            l["inbound_nodes"] = [[k2_ref(node["args"][0])] + [k2_ref(t) for t in st]]
        f.attrs["model_config"] = json.dumps(c)
        f.attrs["keras_version"] = "2.15.0"
    assert_matches(load_keras(str(p)), "k3_init_state_gru")


def test_initial_state_survives_save(tmp_path):
    model = load_keras(model_path("k3_init_state_gru"))
    path = str(tmp_path / "m.safetensors")
    model.save(path)
    again = fastrnn.load(path)
    assert again.initial_states == model.initial_states
    assert_matches(again, "k3_init_state_gru")


@pytest.mark.parametrize("name,match", [
    ("k3_refused_mask_ops", r"layer 'lstm_\d+' \(LSTM\) is called with mask=any\(not_equal"
                            r".*0\.5\), axis=-1\): not supported.*give no mask"),
    ("k3_refused_mask_other", r"layer 'lstm_\d+' \(LSTM\) is called with mask=not_equal\(.*, 3\)"
                              r": not supported.*give not_equal\(.*, 0\)"),
    ("k3_refused_init_state_nomask", r"layer 'gru_\d+' \(GRU\) is called with initial_state, so "
                                     r"Keras 3 runs it without the mask"),
    ("k3_refused_init_state_mask", r"layer 'lstm_\d+' \(LSTM\) is called with both "
                                   r"initial_state and a mask: not supported"),
])
def test_call_arguments_fastrnn_cannot_honour_are_refused(name, match):
    # (Keras computed these models; fastrnn used to load them and compute something else)
    with pytest.raises(LoadError, match=match):
        load_keras(model_path(name))
    with pytest.raises(LoadError, match=match):
        fastrnn.load(model_path(name))


def test_batchnorm_renorm_is_refused_by_name():
    with pytest.raises(LoadError, match=r"'batch_normalization_\d+' \(BatchNormalization\): "
                                        r"renorm / synchronized BatchNormalization is not "
                                        r"supported"):
        load_keras(model_path("k3_refused_bn_renorm"))


def _set_kwargs(layer_name, **kw):
    def fn(c):
        for l in c["config"]["layers"]:
            if l["name"] == layer_name:
                l["inbound_nodes"][0].setdefault("kwargs", {}).update(kw)
    return fn


def test_other_call_kwargs_are_refused_or_harmless(tmp_path):
    name = "k3_state_lstm_embed"
    c = json.loads(zipfile.ZipFile(model_path(name)).read("config.json"))
    lstm = [l["name"] for l in c["config"]["layers"] if l["class_name"] == "LSTM"][0]
    ref = {"class_name": "__keras_tensor__", "config": {"keras_history": [lstm, 0, 1]}}
    for kw, match in ((dict(training=True), r"is called with training=True: not supported"),
                      (dict(constants=[ref]), r"is called with constants=\[<output 1 of"),
                      (dict(mask=None), r"is called with mask=None: not supported.*"
                                        r"give not_equal")):
        p = _edit_config(name, tmp_path, _set_kwargs(lstm, **kw))
        with pytest.raises(LoadError, match=rf"layer '{lstm}' \(LSTM\) " + match):
            load_keras(p)
    for kw in (dict(training=False), dict(training=None), dict(constants=None)):
        p = _edit_config(name, tmp_path, _set_kwargs(lstm, **kw))
        assert_matches(load_keras(p), name)
    # initial_state from something else than an earlier RNN's states
    emb = [l["name"] for l in c["config"]["layers"] if l["class_name"] == "Embedding"][0]
    bad = {"class_name": "__keras_tensor__", "config": {"keras_history": [emb, 0, 0]}}
    p = _edit_config(name, tmp_path, _set_kwargs(lstm, initial_state=[bad, bad]))
    with pytest.raises(LoadError, match=rf"'{lstm}' \(LSTM\) is called with "
                                        rf"initial_state=<output 0 of '{emb}'>: not supported"):
        load_keras(p)


def test_dict_inputs_and_outputs():
    model = load_keras(model_path("k3_dict_io"))
    assert model.outputs == [(0, 0), (1, 0)]        # sorted keys: "seq", "y"
    assert_matches(model, "k3_dict_io")


# ----------------------------------------------------------------------------- Keras version, dtype

def _specs_hsig():
    return [("LSTM", {"units": 4, "recurrent_activation": "hard_sigmoid",
                      "return_sequences": True}),
            ("GRU", {"units": 3, "recurrent_activation": "hard_sigmoid"}),
            ("Dense", {"units": 2})]


def test_keras3_weights_file_with_specs_uses_keras3_hard_sigmoid():
    """A Keras 3 .weights.h5 (no version recorded) + a list of specs: Keras 3's
    hard_sigmoid; a tf-keras .weights.h5 (same layout, no name attributes) stays Keras 2."""
    path = model_path("k3_weights_hsig")
    assert_matches(load_keras(path, _specs_hsig()), "k3_weights_hsig")
    assert_matches(load_keras(path, architecture("k3_weights_hsig")), "k3_weights_hsig")
    x, ys = reference("k3_weights_hsig")
    bad = load_keras(path, _specs_hsig(), hard_sigmoid="keras2").predict(x)
    assert np.max(np.abs(bad - ys[0])) > 1e-3
    assert_matches(load_keras(model_path("k2_weights_newfmt"), _specs_k2_newfmt()),
                   "k2_weights_newfmt")


def test_float64_model_loads_as_float64(recwarn):
    name = "k3_float64"
    x, ys = reference(name)
    assert ys[0].dtype == np.float64
    model = load_keras(model_path(name))
    out = model.predict(x)
    assert out.dtype == np.float64
    assert np.max(np.abs(out - ys[0])) <= 1e-7   # (Keras/JAX float64 on CPU: ~5e-9)
    assert_matches(fastrnn.load(model_path(name)), name)
    f32 = load_keras(model_path(name), dtype="float32").predict(x)
    assert f32.dtype == np.float32 and np.max(np.abs(f32 - ys[0])) <= TOL
    assert not [w for w in recwarn if "float64" in str(w.message)]


def test_partly_float64_model_warns(tmp_path):
    def one_layer(c):
        c["config"]["layers"][-1]["config"]["dtype"] = "float32"
    p = _edit_config("k3_float64", tmp_path, one_layer)
    with pytest.warns(UserWarning, match="some layers of the Keras model are float64"):
        model = load_keras(p)
    x, ys = reference("k3_float64")
    assert model.predict(x).dtype == np.float32


def _input_dtype(dtype):
    def edit(c):
        c["config"]["layers"][0]["config"]["dtype"] = dtype
    return edit


def _rounds(x):
    """Float64 values float32 cannot hold, next to ``x``'s (its nonzero ones)."""
    rng = np.random.RandomState(11)
    out = np.where(x == 0, 0.0, x + rng.uniform(0.3, 0.7, x.shape) * np.spacing(
        np.abs(x).astype(np.float32)).astype(np.float64))
    assert not np.array_equal(out.astype(np.float32).astype(np.float64), out)
    return out


def test_float64_layers_on_a_float32_input_round_it(tmp_path, recwarn):
    """Keras converts the input to the Input's dtype first: float64 layers after a
    float32 Input compute on float32-rounded inputs.  fastrnn loads the model as
    float64 (no warning) with an InputCast after the Input that rounds them so; an
    integer Input (ids) gets none, a bfloat16 one (numpy has no such dtype) counts as
    a layer, as before (partly float64: float32, with the warning)."""
    from fastrnn.model import InputCast
    name = "k3_float64"
    plain = load_keras(model_path(name))                 # (a float64 Input)
    model = load_keras(_edit_config(name, tmp_path, _input_dtype("float32")))
    assert not [w for w in recwarn if "float64" in str(w.message)]
    cast = model.layers[0]
    assert isinstance(cast, InputCast) and (cast.input_dtype, cast.dtype) == \
        ("float32", "float64")
    assert not any(isinstance(l, InputCast) for l in plain.layers)
    assert len(model.layers) == len(plain.layers) + 1 and model.inputs is None   # a chain
    x, ys = reference(name)        # (float32 values: the rounding changes nothing)
    out = model.predict(x)
    assert out.dtype == np.float64 and np.array_equal(out, plain.predict(x))
    x64 = _rounds(x)
    out = model.predict(x64)
    assert np.array_equal(out, plain.predict(x64.astype(np.float32).astype(np.float64)))
    assert np.max(np.abs(out - plain.predict(x64))) > 0
    # an integer Input: no cast, float64
    ints = load_keras(_edit_config(name, tmp_path, _input_dtype("int32")))
    assert not any(isinstance(l, InputCast) for l in ints.layers)
    assert ints.predict(x).dtype == np.float64
    assert not [w for w in recwarn if "float64" in str(w.message)]
    with pytest.warns(UserWarning, match=r"some layers of the Keras model are float64, "
                                         r"others \['bfloat16'\]"):
        bf = load_keras(_edit_config(name, tmp_path, _input_dtype("bfloat16")))
    assert not any(isinstance(l, InputCast) for l in bf.layers)
    assert bf.predict(x).dtype == np.float32
    # a float32 model run in float64 (dtype=) takes its inputs as given: dtype= asks for
    # more precision than Keras's own float32 layers have
    f32 = load_keras(model_path("k3_lstm_basic"), dtype="float64")
    assert not any(isinstance(l, InputCast) for l in f32.layers)
    x, ys = reference("k3_lstm_basic")
    assert f32.predict(x).dtype == np.float64
    assert np.max(np.abs(f32.predict(x) - ys[0])) <= TOL
    # and a float64 model (float32 Input) run in float32 still rounds as Keras does
    m32 = load_keras(_edit_config(name, tmp_path, _input_dtype("float32")), dtype="float32")
    assert isinstance(m32.layers[0], InputCast) and m32.predict(x).dtype == np.float32


def test_a_float64_input_of_float32_layers_is_cast_down(tmp_path, recwarn):
    """A float64 Input of float32 layers: each Keras layer casts its input to float32
    (the Masking's mask too: a Cast before its not_equal), which the InputCast after
    the Input does once (float32 model, no warning): a step of values float32 rounds
    to 0 is masked, as in Keras (checked against Keras 3.15.1 on such a model)."""
    from fastrnn.model import InputCast
    name = "k3_bi_sum_gru_masking"
    plain = load_keras(model_path(name))
    model = load_keras(_edit_config(name, tmp_path, _input_dtype("float64")))
    assert not [w for w in recwarn if "float64" in str(w.message)]
    assert isinstance(model.layers[0], InputCast)
    assert (model.layers[0].input_dtype, model.layers[0].dtype) == ("float64", "float32")
    x, ys = reference(name)
    x = x.astype(np.float64)
    x[2, 1] = 1e-50                         # (float32: 0, a masked step)
    out = model.predict(x)
    assert out.dtype == np.float32
    assert np.array_equal(out, plain.predict(x.astype(np.float32)))
    assert np.max(np.abs(out - plain.predict(x))) > 1e-3    # (unmasked there)


POLICY64 = ("k3_policy64_f32_input", "k3_policy64_multi")


@pytest.mark.parametrize("name", POLICY64)
def test_float64_policy_with_a_default_input_matches_keras(name, recwarn, monkeypatch,
                                                          tmp_path):
    """``set_dtype_policy("float64")`` with a default (float32) ``keras.Input``, made by
    real Keras 3.15.1 on float64 inputs float32 cannot hold: fastrnn loads it as
    float64 and rounds the float Input's values through float32 as Keras does:
    Keras's outputs to ~1e-16 (the fixtures use no tanh: Keras's float64 tanh is
    float32's).  Unrounded they would be ~4e-9 off, and the float32 load of before
    ~3e-8: the test fails without the rounding."""
    from fastrnn.model import INPUT, Embedding, InputCast
    x, ys = reference(name)
    xs = x if isinstance(x, list) else [x]
    floats = [a for a in xs if a.dtype.kind == "f"]
    assert floats and all(a.dtype == np.float64 for a in floats)
    for a in floats:                            # (the rounding changes them)
        assert not np.array_equal(a.astype(np.float32).astype(np.float64), a)
    model = load_keras(model_path(name))
    assert not [w for w in recwarn if "float64" in str(w.message)]
    casts = [l for l in model.layers if isinstance(l, InputCast)]
    assert len(casts) == 1 and (casts[0].input_dtype, casts[0].dtype) == ("float32",
                                                                          "float64")
    out = as_list(model.predict(x))
    assert all(a.dtype == np.float64 for a in out)
    err = max(float(np.max(np.abs(a - b))) for a, b in zip(out, ys))
    assert err <= 1e-12, err
    graph = model._graph()
    for i, l in enumerate(model.layers):
        if isinstance(l, Embedding):            # (the ids: read as given)
            assert graph[i] == [(INPUT, 0)]
    # the model saved and loaded keeps its InputCast
    model.save(tmp_path / "model.safetensors")
    again = fastrnn.load(tmp_path / "model.safetensors")
    assert [type(l).__name__ for l in again.layers] == [type(l).__name__ for l in model.layers]
    assert all(np.array_equal(a, b) for a, b in zip(as_list(again.predict(x)), out))
    # without the rounding (the input only converted to float64): ~4e-9 off
    monkeypatch.setattr(InputCast, "call",
                        lambda self, x, mask=None: (np.asarray(x, self.dtype), mask))
    unrounded = max(float(np.max(np.abs(a - b))) for a, b in zip(
        as_list(model.predict(x)), ys))
    assert unrounded > 1e-9, unrounded
    monkeypatch.undo()
    # float32 (what fastrnn loaded before): ~3e-8 off
    f32 = as_list(load_keras(model_path(name), dtype="float32").predict(x))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(f32, ys)) > 1e-8


def test_sequential_first_layer_input_dtype():
    """A Sequential config whose first layer holds the input shape (tf.keras 2's form):
    its Input is of the layer's dtype: a float64 one of a model whose layers are
    partly float32 (loaded as float32) is cast down; one of the layers' own dtype, or
    a float32 model run in float64 (dtype=), takes the input as given."""
    from fastrnn.io.keras import model_from_keras_config
    from fastrnn.model import Dense, InputCast
    rng = np.random.RandomState(3)
    w = [rng.normal(size=(3, 2)), rng.normal(size=2)]
    x = _rounds(rng.normal(size=(4, 3)))

    def specs(dtype):
        return [("Dense", {"name": "d", "units": 2, "batch_input_shape": [None, 3],
                           "dtype": dtype})]
    m = model_from_keras_config(specs("float32"), {"d": w}, dtype="float64")
    assert isinstance(m.layers[0], Dense) and len(m.layers) == 1
    assert np.array_equal(m.predict(x), Dense(w[0], w[1], dtype="float64")(x))
    with pytest.warns(UserWarning, match="some layers of the Keras model are float64"):
        m = model_from_keras_config(specs("float64") + [("Dense", {"name": "e", "units": 2,
                                                                   "dtype": "float32"})],
                                    {"d": w, "e": [np.eye(2), np.zeros(2)]})
    assert isinstance(m.layers[0], InputCast) and m.layers[0].name == "d_input"
    assert (m.layers[0].input_dtype, m.layers[0].dtype) == ("float64", "float32")
    m = model_from_keras_config(specs("float64"), {"d": w})
    assert isinstance(m.layers[0], Dense) and len(m.layers) == 1
    assert np.array_equal(m.predict(x), Dense(w[0], w[1], dtype="float64")(x))


def test_fused_bidirectional_follows_its_directions_weights():
    """A loaded Bidirectional runs one fused core made from its directions: new
    weights given to a direction (load_state_dict, an optimizer step on its core) reach
    the fused core before the next call (predict kept the old ones)."""
    from fastrnn import train
    name = "k3_bi_concat_lstm_embed"
    x = reference(name)[0]

    def bi_of(m):
        return [l for l in m.layers if type(l).__name__ == "Bidirectional"][0]

    def unfused_twin(m):
        twin = load_keras(model_path(name))
        b, tb = bi_of(m), bi_of(twin)
        tb._fused = None
        tb.forward.core.load_state_dict(b.forward.core.state_dict())
        tb.backward.core.load_state_dict(b.backward.core.state_dict())
        return twin.predict(x)

    model = load_keras(model_path(name))
    bi = bi_of(model)
    assert bi._fused is not None
    before = model.predict(x)
    sd = {k: v * 0.5 for k, v in bi.backward.core.state_dict().items()}
    bi.backward.core.load_state_dict(sd)
    after = model.predict(x)
    assert np.max(np.abs(after - before)) > 1e-4
    np.testing.assert_array_equal(after, unfused_twin(model))
    core = bi.forward.core
    xi = np.random.default_rng(0).standard_normal((3, 4, core.input_size)).astype(np.float32)
    out, _, cache = train.forward_train(core, xi)
    train.Adam(core, lr=0.05).step(train.backward(core, cache, np.ones_like(out)))
    stepped = model.predict(x)
    assert np.max(np.abs(stepped - after)) > 1e-4
    np.testing.assert_array_equal(stepped, unfused_twin(model))


def test_file_weights_are_kept_not_copied(tmp_path):
    """A file's arrays are the load's alone: the recurrent layer keeps the transposed
    kernels made from them instead of copying them again (allocation peak of a weights-
    only Keras 2 file of one LSTM(256): 3.0x the weights before, now 2.1x)."""
    h5py = pytest.importorskip("h5py")
    from reference import allocation_peak
    rng = np.random.default_rng(0)
    I = H = 256
    k = rng.standard_normal((I, 4 * H)).astype(np.float32) * 0.05
    rk = rng.standard_normal((H, 4 * H)).astype(np.float32) * 0.05
    b = rng.standard_normal(4 * H).astype(np.float32) * 0.05
    path = str(tmp_path / "w.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"lstm"]
        g = f.create_group("lstm")
        names = [b"lstm/kernel:0", b"lstm/recurrent_kernel:0", b"lstm/bias:0"]
        g.attrs["weight_names"] = names
        for n, a in zip(names, (k, rk, b)):
            g.create_dataset(n.decode(), data=a)
    specs = [("InputLayer", {"batch_shape": [None, None, I]}), ("LSTM", {"units": H})]
    load_keras(path, specs)          # (first load: imports, caches)
    model, peak = allocation_peak(lambda: load_keras(path, specs))
    size = k.nbytes + rk.nbytes + b.nbytes
    assert peak < 2.3 * size, (peak / size)
    ref = fastrnn.LSTM(I, H, batch_first=True)
    ref.load_state_dict({"weight_ih_l0": k.T.copy(), "weight_hh_l0": rk.T.copy(),
                         "bias_ih_l0": b, "bias_hh_l0": np.zeros_like(b)})
    x = rng.standard_normal((2, 5, I)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), ref(x)[1][0][-1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- RNN(cell)

CELLS = [n for n in NAMES if n.startswith("k3_cell_")]


def _core_kind(r):
    return type(r.core).__name__


def test_rnn_cell_fixtures_load_as_plain_layers():
    """keras.layers.RNN(LSTMCell / GRUCell / SimpleRNNCell) is the LSTM / GRU / SimpleRNN
    layer: options from the cell's config, flags from the RNN's."""
    assert len(CELLS) == 9
    ls = _layers("k3_cell_basic")
    rnns = [l for l in ls if isinstance(l, KerasRNN)]
    assert [_core_kind(r) for r in rnns] == ["LSTM", "GRU", "SimpleRNN"]
    lstm, gru, srnn = rnns
    assert lstm.return_sequences and not lstm.go_backwards
    assert lstm.core._acts[0][0] == ("hardsigmoid", 1.0 / 6.0, 0.5)      # Keras 3's
    assert gru.core._acts[0][1][0] == "softsign" and srnn.core._acts[0][0][0] == "tanh"
    assert gru.go_backwards and gru.return_sequences and not gru.core.reset_after
    assert not srnn.return_sequences and not srnn.core.bias
    assert [r.name for r in rnns] == [l["config"]["name"] for l in json.loads(
        zipfile.ZipFile(model_path("k3_cell_basic")).read("config.json"))["config"]["layers"]
        if l["class_name"] == "RNN"]
    for name, diff in (("k3_cell_basic", 1e-3), ("k3_cell_legacy", 1e-4)):
        x, ys = reference(name)             # the file's Keras version: x / 6 + 0.5
        bad = load_keras(model_path(name), hard_sigmoid="keras2").predict(x)
        assert np.max(np.abs(bad - ys[0])) > diff
    ls = _layers("k3_cell_masking")
    assert ls[1].zero_output_for_mask and not ls[2].core.bias and ls[2].go_backwards
    model = load_keras(model_path("k3_cell_state"))
    assert model.initial_states == {1: [(0, 1), (0, 2)]}
    assert_matches(model, "k3_cell_state")
    x, ys = reference("k3_cell_state")
    model.initial_states = {}                   # from zeros: not what Keras computed
    assert np.max(np.abs(model.predict(x)[0] - ys[0])) > 1e-3


def test_rnn_cell_bidirectional():
    model = load_keras(model_path("k3_cell_bi_embed"))
    bis = [l for l in model.layers if isinstance(l, Bidirectional)]
    assert [b.merge_mode for b in bis] == ["concat", "ave"]
    assert [_core_kind(b.forward) for b in bis] == ["LSTM", "GRU"]
    assert all(b._fused is not None for b in bis)           # same cell both ways: fused
    x, ys = reference("k3_cell_bi_embed")
    for b in bis:
        b._fused = None
    assert_matches(model, "k3_cell_bi_embed")               # and the two-layer path
    bi = _layers("k3_cell_bi_none_masking")[1]
    assert bi.merge_mode is None and bi._fused is None
    assert (_core_kind(bi.forward), _core_kind(bi.backward)) == ("GRU", "SimpleRNN")
    assert bi.backward.go_backwards and bi.backward.core._acts[0][0][0] == "relu"


def test_stacked_cells_load_as_a_stack_of_layers():
    """RNN([cells]) / RNN(StackedRNNCells(cells)): one layer per cell, named
    '<rnn>/<cell>'; every cell but the last returns sequences; go_backwards: only the
    first reads backwards (the others read its outputs, already reversed)."""
    ls = _layers("k3_cell_stacked")
    rnns = [l for l in ls if isinstance(l, KerasRNN)]
    assert [_core_kind(r) for r in rnns] == ["LSTM", "GRU", "SimpleRNN", "LSTM"]
    assert [r.return_sequences for r in rnns] == [True, True, True, False]
    assert [r.go_backwards for r in rnns] == [True, False, False, False]
    assert [r.units for r in rnns] == [5, 4, 3, 4]
    assert not rnns[3].core.bias and rnns[2].core._acts[0][0][0] == "elu"
    c = json.loads(zipfile.ZipFile(model_path("k3_cell_stacked")).read("config.json"))
    rnn_names = [l["config"]["name"] for l in c["config"]["layers"] if l["class_name"] == "RNN"]
    assert rnns[0].name.startswith(rnn_names[0] + "/lstm_cell")
    assert rnns[3].name.startswith(rnn_names[1] + "/lstm_cell")
    ls = _layers("k3_cell_stacked_masking")
    rnns = [l for l in ls if isinstance(l, KerasRNN)]
    assert [_core_kind(r) for r in rnns] == ["GRU", "LSTM", "LSTM", "SimpleRNN"]
    assert [r.zero_output_for_mask for r in rnns] == [False, True, False, False]
    assert not rnns[0].core.reset_after


def test_stacked_cells_weights_in_config_order(tmp_path):
    """Keras 3 stores stacked cells' weights by class name (cell/cells/gru_cell,
    cell/cells/lstm_cell, lstm_cell_1, ...), which does not sort in the cells' order:
    fastrnn follows the config.  A missing cell's group is an error naming the layer."""
    with zipfile.ZipFile(model_path("k3_cell_stacked")) as z:
        with h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
            assert sorted(f["layers/rnn/cell/cells"]) == ["gru_cell", "lstm_cell"]
            assert sorted(f["layers/rnn_1/cell/cells"]) == ["lstm_cell", "simple_rnn_cell"]
    p = tmp_path / "k.keras"
    _without_weights("k3_cell_stacked", p, "layers/rnn/cell/cells/gru_cell")
    with pytest.raises(LoadError, match=r"layer 'rnn_\d+' \(RNN\) has 3 weight arrays, "
                                        r"expected 6"):
        load_keras(str(p))
    # a cell's weight of the wrong shape names the cell
    p2 = tmp_path / "w.h5"
    shutil.copy(model_path("k3_cell_legacy"), p2)
    with h5py.File(p2, "r+") as f:
        names = []
        f["model_weights"].visititems(
            lambda n, o: names.append(n) if n.endswith("/recurrent_kernel")
            and n.split("/")[-2].startswith("simple_rnn_cell") else None)
        assert len(names) == 1
        del f["model_weights"][names[0]]
        f["model_weights"][names[0]] = np.zeros((3, 2), np.float32)
    with pytest.raises(LoadError, match=r"layer 'rnn_\d+/simple_rnn_cell\w*' \(SimpleRNNCell\): "
                                        r"recurrent_kernel has shape \(3, 2\), expected \(2, 2\)"):
        load_keras(str(p2))


def _specs_cells():
    return [("InputLayer", {"batch_shape": [None, 6, 4]}),
            ("RNN", {"return_sequences": True,
                     "cell": {"class_name": "StackedRNNCells", "config": {"cells": [
                         {"class_name": "LSTMCell", "config": {"units": 4}},
                         {"class_name": "GRUCell", "config": {"units": 3}}]}}}),
            ("Bidirectional", {"layer": {"class_name": "RNN", "config": {
                "cell": {"class_name": "SimpleRNNCell", "config": {"units": 3}}}}}),
            ("Dense", {"units": 2})]


def _specs_cells_short():
    # a list of cells, cells as (class_name, config) pairs and flat dicts
    return [("RNN", {"return_sequences": True,
                     "cell": [("LSTMCell", {"units": 4}), {"class_name": "GRUCell", "units": 3}]}),
            ("Bidirectional", {"layer": {"class_name": "RNN",
                                         "config": {"cell": ("SimpleRNNCell", {"units": 3})}}}),
            ("Dense", {"units": 2})]


def test_rnn_cell_weights_only_with_architecture():
    path = model_path("k3_cell_weights")
    assert_matches(load_keras(path, architecture("k3_cell_weights")), "k3_cell_weights")
    assert_matches(load_keras(path, _specs_cells()), "k3_cell_weights")
    assert_matches(load_keras(path, _specs_cells_short()), "k3_cell_weights")
    bad = _specs_cells_short()
    bad[0][1]["cell"] = bad[0][1]["cell"][::-1]                  # the cells' order matters
    with pytest.raises(LoadError, match=r"'layer_0/cell_1' \(LSTMCell\): kernel has shape "
                                        r"\(4, 16\), expected \(3, 16\)"):
        load_keras(path, bad)


def test_rnn_cell_model_survives_save(tmp_path):
    for name in ("k3_cell_stacked", "k3_cell_state"):
        model = load_keras(model_path(name))
        path = str(tmp_path / (name + ".safetensors"))
        model.save(path)
        assert_matches(fastrnn.load(path), name)


@pytest.mark.parametrize("name,match", [
    ("k3_refused_cell_stacked_gobw_masking",
     r"layer 'rnn_\d+' \(RNN\) of StackedRNNCells \(GRUCell, LSTMCell\): go_backwards=True "
     r"on a masked input is not supported"),
    ("k3_refused_cell_bi_stacked",
     r"layer 'bidirectional_\d+' \(Bidirectional\) layer: Bidirectional of StackedRNNCells "
     r"\(LSTMCell, LSTMCell\) is not supported"),
    ("k3_refused_cell_stacked_state",
     r"layer 'rnn_\d+' \(RNN\) of StackedRNNCells \(LSTMCell, GRUCell\): return_state=True "
     r"is not supported"),
])
def test_rnn_cell_refusals(name, match):
    with pytest.raises(LoadError, match=match):
        load_keras(model_path(name))
    with pytest.raises(LoadError, match=match):
        fastrnn.load(model_path(name))


def _rnn_layer(c, i=0):
    return [l for l in c["config"]["layers"] if l["class_name"] == "RNN"][i]


def test_rnn_cell_config_refusals_and_options(tmp_path):
    def cell_class(cls, reg=None):
        def fn(c):
            cell = _rnn_layer(c)["config"]["cell"]
            cell["class_name"] = cls
            cell["registered_name"] = reg
        return fn
    for fn, match in (
            (cell_class("PeepholeLSTMCell"), r"layer 'rnn' \(RNN\): unsupported cell "
                                             r"'PeepholeLSTMCell'"),
            (cell_class("LSTMCell", "my_pkg>LSTMCell"), r"custom cell 'my_pkg>LSTMCell'"),
            (cell_class("StackedRNNCells"), r"'rnn'.*StackedRNNCells cells must be a JSON list"),
            (lambda c: _rnn_layer(c)["config"].pop("cell"), r"'rnn' \(RNN\): config has no 'cell'"),
            (lambda c: _rnn_layer(c)["config"].update(time_major=True),
             r"'rnn' \(RNN\(LSTMCell\)\): time_major=True is not supported"),
            (lambda c: _rnn_layer(c)["config"]["cell"]["config"].update(units="x"),
             r"'rnn' \(RNN\(LSTMCell\)\).*'units'"),
            (lambda c: _rnn_layer(c)["config"]["cell"]["config"].update(activation="selu"),
             r"'rnn' \(RNN\(LSTMCell\)\): activation 'selu'")):
        p = _edit_config("k3_cell_basic", tmp_path, fn)
        with pytest.raises(LoadError, match=match):
            load_keras(p)
    # a nested StackedRNNCells is refused, naming it
    def nested(c):
        cells = _rnn_layer(c)["config"]["cell"]["config"]["cells"]
        cells[1] = {"class_name": "StackedRNNCells", "config": {"cells": [cells[1]]}}
    p = _edit_config("k3_cell_stacked", tmp_path, nested)
    with pytest.raises(LoadError, match=r"unsupported cell 'StackedRNNCells'"):
        load_keras(p)
    # initial_state given to stacked cells (a stack of one LSTMCell here)
    def stacked_decoder(c):
        dec = _rnn_layer(c, 1)["config"]
        dec["cell"] = {"class_name": "StackedRNNCells", "config": {"cells": [dec["cell"]]}}
    p = _edit_config("k3_cell_state", tmp_path, stacked_decoder)
    with pytest.raises(LoadError, match=r"of StackedRNNCells \(LSTMCell\) is called with "
                                        r"initial_state: not supported"):
        load_keras(p)
    # stateful: a warning, as for the plain layers (once for stacked cells); unroll and
    # the cells' dropout change nothing at inference
    def stateful(c):
        _rnn_layer(c)["config"].update(stateful=True, unroll=True)
        _rnn_layer(c)["config"]["cell"]["config"]["cells"][0]["config"].update(
            dropout=0.5, recurrent_dropout=0.3)
    p = _edit_config("k3_cell_stacked", tmp_path, stateful)
    with pytest.warns(UserWarning, match="stateful") as rec:
        model = load_keras(p)
    assert len([w for w in rec if "stateful" in str(w.message)]) == 1
    assert_matches(model, "k3_cell_stacked")


def test_stacked_cells_backwards_without_mask_after_masked_layers(tmp_path):
    # the mask stops at an RNN returning its last output only: stacked cells read
    # backwards after it load (their input is not masked)
    specs = [("Masking", {"mask_value": 0.0}),
             ("RNN", {"cell": ("GRUCell", {"units": 3})}),
             ("RNN", {"go_backwards": True, "cell": [("LSTMCell", {"units": 2}),
                                                     ("GRUCell", {"units": 2})]})]
    w = {"rnn": [np.zeros((4, 9), np.float32), np.zeros((3, 9), np.float32),
                 np.zeros((2, 9), np.float32)],
         "rnn_1": [np.zeros((3, 8), np.float32), np.zeros((2, 8), np.float32),
                   np.zeros(8, np.float32), np.zeros((2, 6), np.float32),
                   np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32)]}
    from fastrnn.io.keras import model_from_keras_config
    with pytest.raises(LoadError, match="go_backwards=True on a masked input"):
        model_from_keras_config([specs[0], ("RNN", dict(specs[1][1], return_sequences=True)),
                                 specs[2]], {"layer_0": [], "layer_1": w["rnn"],
                                             "layer_2": w["rnn_1"]})
    m = model_from_keras_config(specs, {"layer_1": w["rnn"], "layer_2": w["rnn_1"]})
    assert [type(l).__name__ for l in m.layers] == ["Masking", "KerasRNN", "KerasRNN", "KerasRNN"]


def test_model_from_config_never_shares_the_callers_arrays():
    """model_from_keras_config copies the caller's arrays (Dense / Embedding kept them:
    `w *= 3` on the dict changed the model's predictions, and writing into the model's
    weights changed the caller's dict)."""
    from fastrnn.io.keras import model_from_keras_config
    rng = np.random.default_rng(0)
    specs = [("InputLayer", {"batch_shape": [None, 5]}),
             ("Embedding", {"input_dim": 10, "output_dim": 3}),
             ("LSTM", {"units": 4}), ("Dense", {"units": 2})]
    w = {"layer_1": [rng.standard_normal((10, 3)).astype(np.float32)],
         "layer_2": [rng.standard_normal((3, 16)).astype(np.float32),
                     rng.standard_normal((4, 16)).astype(np.float32),
                     rng.standard_normal(16).astype(np.float32)],
         "layer_3": [rng.standard_normal((4, 2)).astype(np.float32),
                     rng.standard_normal(2).astype(np.float32)]}
    keep = {k: [a.copy() for a in v] for k, v in w.items()}
    m = model_from_keras_config(specs, w)
    ids = rng.integers(0, 10, (3, 5))
    want = m.predict(ids)
    for arrays in w.values():
        for a in arrays:
            a *= 3
    np.testing.assert_array_equal(m.predict(ids), want)
    for arrays in w.values():
        for a in arrays:
            a /= 3
    m2 = model_from_keras_config(specs, keep)
    for layer in m2.layers:
        for attr in ("kernel", "bias", "embeddings"):
            v = getattr(layer, attr, None)
            if isinstance(v, np.ndarray) and v.flags.writeable:
                v[...] = 0
    for k, v in keep.items():
        for a, b in zip(v, w[k]):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def _stateful_warnings(load):
    import warnings
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = load()
    return model, [str(w.message) for w in rec if "stateful" in str(w.message)]


@pytest.mark.parametrize("name", ["k3_bi_concat_lstm_embed", "k3_cell_bi_embed"])
def test_stateful_bidirectional_warns_once_naming_the_wrapper(tmp_path, name):
    """stateful=True inside a Bidirectional (Keras 3 writes it in both the layer and
    the backward_layer config): one warning, naming the Bidirectional layer (each
    direction warned, naming the wrapped layer's class)."""
    bidi = []

    def stateful(c):
        layers = [l for l in c["config"]["layers"] if l["class_name"] == "Bidirectional"]
        cfg = layers[0]["config"]
        bidi.append(cfg["name"])
        for key in ("layer", "backward_layer"):
            cfg[key]["config"]["stateful"] = True
    p = _edit_config(name, tmp_path, stateful)
    model, msgs = _stateful_warnings(lambda: load_keras(p))
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith(f"layer {bidi[0]!r} (Bidirectional("), msgs
    assert_matches(model, name)
    # the same from a config dict: only the forward layer stateful (no backward_layer)
    z = lambda *s: np.zeros(s, np.float32)      # noqa: E731
    specs = [("InputLayer", {"batch_shape": [2, 5, 3]}),
             ("Bidirectional", {"name": "bi", "layer": {
                 "class_name": "GRU", "config": {"name": "inner", "units": 4,
                                                 "stateful": True}}})]
    from fastrnn.io.keras import model_from_keras_config
    gru = [z(3, 12), z(4, 12), z(2, 12)]
    _, msgs = _stateful_warnings(lambda: model_from_keras_config(specs, {"bi": gru + gru}))
    assert msgs == ["layer 'bi' (Bidirectional(GRU)) is stateful; fastrnn starts every "
                    "predict() from zero states"], msgs


def test_stateful_stacked_cells_warning_names_the_rnn_layer(tmp_path):
    """Stacked cells: the one warning names the RNN layer (it named its first cell,
    'rnn_11/lstm_cell_5' (LSTMCell), a layer the Keras model does not have)."""
    def stateful(c):
        _rnn_layer(c)["config"]["stateful"] = True
    p = _edit_config("k3_cell_stacked", tmp_path, stateful)
    model, msgs = _stateful_warnings(lambda: load_keras(p))
    assert msgs == ["layer 'rnn_11' (RNN of StackedRNNCells (LSTMCell, GRUCell)) is "
                    "stateful; fastrnn starts every predict() from zero states"], msgs
    assert_matches(model, "k3_cell_stacked")


def test_bad_arguments_are_the_callers_errors_not_load_errors():
    """A dtype= / num_threads= the layers refuse, and weights that are no mapping, are
    the caller's TypeError / ValueError, raised before any file is read (they were
    LoadErrors: "malformed Keras config or weights (layer ...): ValueError: num_threads
    must be >= 1")."""
    from fastrnn.io.keras import model_from_keras_config
    z = lambda *s: np.zeros(s, np.float32)      # noqa: E731
    specs = [("InputLayer", {"batch_shape": [2, 5, 3]}), ("LSTM", {"name": "l", "units": 4})]
    w = {"l": [z(3, 16), z(4, 16), z(16)]}
    path = model_path("k3_bi_mul_simplernn")
    for kw, err, match in ((dict(num_threads=0), ValueError, "num_threads must be >= 1"),
                           (dict(num_threads=2.5), TypeError, "num_threads must be a positive"),
                           (dict(num_threads=1 << 20), ValueError, "num_threads must be <="),
                           (dict(dtype="int8"), TypeError, "dtype must be float32 or float64"),
                           (dict(dtype="bogus"), TypeError, "dtype must be float32 or float64"),
                           (dict(hard_sigmoid="x"), ValueError, "hard_sigmoid must be")):
        for load in (lambda: model_from_keras_config(specs, w, **kw),
                     lambda: load_keras(path, **kw), lambda: fastrnn.load(path, **kw),
                     lambda: load_keras(os.path.join(FIX, "no such file.keras"), **kw)):
            with pytest.raises(err, match=match) as e:
                load()
            assert not isinstance(e.value, LoadError), (kw, e.value)
    for bad in (None, [], [("l", w["l"])]):
        with pytest.raises(TypeError, match="weights must be a mapping of layer name"):
            model_from_keras_config(specs, bad)
    # good ones still load
    m = model_from_keras_config(specs, w, dtype="float64", num_threads=1)
    assert m.predict(np.zeros((2, 5, 3))).dtype == np.float64
    assert_matches(load_keras(path, num_threads=2), "k3_bi_mul_simplernn")


# tf-keras 2.21's model_config of ``LSTM(3)(inp * 2.0)`` (its initializer entries dropped):
# the multiplication recorded as a TFOpLambda layer whose node passes y=2.0 by keyword
_TFOP_CONFIG = {"class_name": "Functional", "config": {"name": "model", "trainable": True, "layers": [
    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, None, 3], "dtype": "float32",
                                            "sparse": False, "ragged": False, "name": "input_1"},
     "name": "input_1", "inbound_nodes": []},
    {"class_name": "TFOpLambda", "config": {"name": "tf.math.multiply", "trainable": True,
                                            "dtype": "float32", "function": "math.multiply"},
     "name": "tf.math.multiply", "inbound_nodes": [["input_1", 0, 0, {"y": 2.0, "name": None}]]},
    {"class_name": "LSTM", "config": {"name": "lstm", "trainable": True, "dtype": "float32",
                                      "return_sequences": False, "units": 3},
     "name": "lstm", "inbound_nodes": [[["tf.math.multiply", 0, 0, {}]]]}],
    "input_layers": [["input_1", 0, 0]], "output_layers": [["lstm", 0, 0]]}}


@pytest.mark.parametrize("cls", ["TFOpLambda", "SlicingOpLambda"])
def test_tf_keras_operation_layers_outside_the_table_refused(cls):
    """tf.keras 2 records ``x * 2``, ``a + b``, ``x[:, -1]`` as TFOpLambda /
    SlicingOpLambda layers: fastrnn runs a table of them (tests/test_keras_ops.py);
    another is refused saying what it is and naming the layers to use (the message was
    "reads no tensor and is not one of the model's inputs")."""
    cfg = json.loads(json.dumps(_TFOP_CONFIG))
    cfg["config"]["layers"][1]["class_name"] = cls
    cfg["config"]["layers"][1]["config"]["function"] = "math.cumsum"
    with pytest.raises(LoadError, match=rf"'tf.math.multiply' is a TensorFlow operation "
                                        rf"tf.keras 2 recorded as a {cls} layer.*merge layers"):
        load_keras(model_path("k2_weights_only"), json.dumps(cfg))


def test_tf_keras_operation_layer_runs():
    """``LSTM(3)(inp * 2.0)`` of tf.keras 2: the multiplication runs as an Op."""
    from fastrnn.io.keras import model_from_keras_config
    from fastrnn.model import Op
    r = np.random.RandomState(0)
    w = [r.normal(size=(3, 12)), r.normal(size=(3, 12)), r.normal(size=12)]
    m = model_from_keras_config(json.dumps(_TFOP_CONFIG), {"lstm": w}, keras_version="2")
    assert isinstance(m.layers[0], Op) and m.layers[0].op == "Multiply"
    x = r.normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), m.layers[1].call(x * 2)[0], rtol=1e-6)


def test_masked_tensor_read_after_multi_head_attention_warns():
    """Keras 3.15's MultiHeadAttention clears the mask of the tensors it reads: the
    Attention that reads the encoder states as its value after it computes without
    their mask in Keras, while fastrnn keeps it (0.14 apart: found by the attention
    audit).  The load warns naming both layers; models where the other attention layer
    runs before the MultiHeadAttention (k3_attn_mha_policy64) do not warn."""
    import warnings
    name = "k3_known_mha_mask_cleared"
    with pytest.warns(UserWarning, match=r"read by MultiHeadAttention .* and by "
                                         r"'attention.*clears that tensor's mask") as w:
        model = load_keras(model_path(name))
    assert w[0].filename == __file__
    x, ys = reference(name)
    assert np.max(np.abs(model.predict(x) - ys[0])) > 1e-2      # (the known difference)
    for other in NAMES:
        if "mha" in other or "attn" in other:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                load_keras(model_path(other), architecture(other))


# ------------------------------------------------------------ TimeDistributed of any layer

def _td_seq(*layers, shape=(None, 7), dtype="int32"):
    """A Sequential config: an Input of ``shape``, then ``layers`` ((class, config))."""
    first = {"class_name": "InputLayer",
             "config": {"name": "in", "batch_shape": list(shape), "dtype": dtype}}
    return json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [first] + [
        {"class_name": c, "config": cfg} for c, cfg in layers]}})


def _td(cls, **cfg):
    return ("TimeDistributed", {"name": "td", "layer": {"class_name": cls,
                                                        "config": {"name": "inner", **cfg}}})


@pytest.mark.parametrize("case", ["lstm_masked", "pool_masked", "lstm_masked_k2",
                                  "reshape_masked_k2", "return_state", "merge", "unknown"])
def test_time_distributed_refusals(case):
    """What fastrnn cannot run as Keras does inside a TimeDistributed is refused at load,
    naming the layer: a mask-reading layer on a masked input (Keras 3 hands it one
    step's (B,) mask; tf.keras 2 the folded mask, which a layer reading (B, T, ...) steps
    of each step needs of 4+ axes, and which tf.keras 2 refuses to a layer that does not
    support masking), several outputs, merges and unknown layers."""
    from fastrnn.io.keras import model_from_keras_config
    r = np.random.RandomState(0)
    lstm_w = [r.normal(size=(2, 12)), r.normal(size=(3, 12)), r.normal(size=12)]
    emb = ("Embedding", {"name": "emb", "input_dim": 20, "output_dim": 6, "mask_zero": True})
    fold = ("TimeDistributed", {"name": "td_r", "layer": {
        "class_name": "Reshape", "config": {"name": "r", "target_shape": [3, 2]}}})
    weights = {"emb": [r.normal(size=(20, 6))]}
    image = dict(shape=(None, 5, 7, 2), dtype="float32")
    arch, want = {
        "lstm_masked": (_td_seq(emb, fold, _td("LSTM", units=3)), "reads a masked tensor"),
        "pool_masked": (_td_seq(emb, fold, _td("GlobalAveragePooling1D")),
                        "reads a masked tensor"),
        "lstm_masked_k2": (_td_seq(emb, _td("LSTM", units=3)), "reads a masked tensor"),
        "reshape_masked_k2": (_td_seq(emb, fold, _td("LSTM", units=3)),
                              "does not support masking"),
        "return_state": (_td_seq(_td("LSTM", units=3, return_state=True), **image),
                         "several outputs"),
        "merge": (_td_seq(_td("Add"), **image), "not supported inside TimeDistributed"),
        "unknown": (_td_seq(_td("Lambda"), **image), "not supported inside TimeDistributed"),
    }[case]
    weights["td"] = {"lstm_masked": lstm_w, "return_state": lstm_w,
                     "reshape_masked_k2": lstm_w,
                     "lstm_masked_k2": [r.normal(size=(6, 12))] + lstm_w[1:]}.get(case, [])
    version = "2" if case.endswith("_k2") else "3"
    td = "td_r" if case == "reshape_masked_k2" else "td"
    with pytest.raises(LoadError, match=rf"layer '{td}' \(TimeDistributed of \w+\).*{want}"):
        model_from_keras_config(arch, weights, keras_version=version)
    if case == "return_state":      # (the same layer without return_state loads and runs)
        ok = model_from_keras_config(_td_seq(_td("LSTM", units=3), **image), weights)
        x = r.normal(size=(2, 5, 7, 2)).astype("f4")
        core = ok.layers[-1].layer.core
        want_y = np.stack([core(x[:, t])[0][:, -1] for t in range(5)], axis=1)
        np.testing.assert_allclose(ok.predict(x), want_y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["k3_td_video_h5", "k3_td_hierarchical", "k3_td_masked_fold",
                                  "k2_td_video"])
def test_time_distributed_models_stream(name):
    """A model with TimeDistributed layers streams: each step's (B, ...) through the
    wrapped layers, the same as the whole call (Keras's outputs)."""
    model = load_keras(model_path(name), architecture(name))
    x, ys = reference(name)
    s = fastrnn.Stream(model, batch_size=len(x))
    got = np.concatenate([s.feed(x[:, t:t + 2]) for t in range(0, x.shape[1], 2)], axis=1)
    np.testing.assert_allclose(got, ys[0], rtol=0, atol=TOL)


def test_time_distributed_output_ranks():
    """The loader's rank of a TimeDistributed's output is the wrapped layer's on one
    step, plus the steps' axis (what later layers' axis checks read)."""
    from fastrnn.io.keras import _tensor_ranks
    from fastrnn.model import Dense, Flatten, GlobalPooling1D, TimeDistributed
    rnn = KerasRNN(fastrnn.GRU(2, 3, batch_first=True, seed=0), return_sequences=False)
    seq = KerasRNN(fastrnn.GRU(2, 3, batch_first=True, seed=0), return_sequences=True)
    dense = Dense(np.ones((2, 3), np.float32))
    for inner, rank, want in ((Flatten(), 5, 3), (GlobalPooling1D("max"), 4, 3),
                              (rnn, 4, 3), (seq, 4, 4), (dense, 4, 4), (dense, 3, 3),
                              (Flatten(), None, 3), (dense, None, None)):
        assert _tensor_ranks([TimeDistributed(inner)], [rank]) == [want]


# ------------------------------------------------------------ older tf-keras weight layouts

def _copy_h5(src, dst, rename):
    """Copy every dataset of HDF5 file ``src`` (bytes or a path) into a new file ``dst``,
    each at the path ``rename(path)`` gives."""
    with h5py.File(io.BytesIO(src) if isinstance(src, bytes) else src, "r") as f, \
            h5py.File(dst, "w") as g:
        found = []
        f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in found:
            g.create_dataset(rename(n), data=f[n][()])


def test_tf_keras_2_12_weights_layout(tmp_path):
    """tf-keras 2.12's ``save_weights("*.weights.h5")`` (and its ``.keras``) holds the
    layers under ``_layer_checkpoint_dependencies/``, numbered by a counter that skips
    (lstm, lstm_2, lstm_4, ... in an audit with TF 2.12.1): the groups are taken in
    order, class by class.  Made here from a tf-keras 2.21 file by renaming its groups
    so."""
    name = "k2_td_hier_weights_newfmt"

    def rename(path):
        top, _, rest = path.partition("/")
        layer, _, rest = rest.partition("/")
        base, _, n = layer.rpartition("_")
        if base and n.isdigit():
            layer = f"{base}_{2 * int(n)}"      # (_1 -> _2, _2 -> _4, ...)
        return "/".join(["_layer_checkpoint_dependencies", layer, rest]) \
            if top == "layers" else path

    dst = tmp_path / "w.weights.h5"
    _copy_h5(model_path(name), dst, rename)
    with h5py.File(dst, "r") as f:
        assert "layers" not in f and "time_distributed_4" in f["_layer_checkpoint_dependencies"]
    assert_matches(load_keras(str(dst), architecture(name)), name)


def test_tf_keras_2_15_multi_head_attention_names(tmp_path):
    """tf-keras 2.13-2.15's ``.keras`` / ``.weights.h5`` name a MultiHeadAttention's
    parts ``_query_dense``, ``_key_dense``, ... (Keras 3: ``query_dense``, ...; an audit
    with TF 2.15.1): both load.  Made here from a Keras 3 file by renaming them."""
    name = "k3_mha_bilstm_ln"
    with zipfile.ZipFile(model_path(name)) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    renamed = tmp_path / "w.h5"
    _copy_h5(parts["model.weights.h5"], renamed,
             lambda p: re.sub(r"/(query|key|value|output)_dense/", r"/_\1_dense/", p))
    with h5py.File(renamed, "r") as f:
        assert "_query_dense" in f["layers/multi_head_attention"]
    parts["model.weights.h5"] = renamed.read_bytes()
    out = tmp_path / "m.keras"
    with zipfile.ZipFile(out, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    assert_matches(load_keras(str(out)), name)


@pytest.mark.parametrize("version,refused", [("3.5.0", True), ("3.0.5", True),
                                             ("3.6.0", False), ("3.15.1", False)])
def test_nested_model_mask_by_keras_version(tmp_path, version, refused):
    """Keras 3.0-3.5 run the layers after a nested model without the mask its output has
    inside (measured with 3.0.5, 3.3.3, 3.4.1, 3.5.0; 3.6.0 and later keep it, as fastrnn
    does): a file of those versions whose outer layer reads such a masked output is
    refused, by the keras_version its metadata records (here edited)."""
    name = "k3_nested_seq_in_fn"
    with zipfile.ZipFile(model_path(name)) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(parts["metadata.json"])
    meta["keras_version"] = version
    parts["metadata.json"] = json.dumps(meta).encode()
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    if refused:
        with pytest.raises(LoadError, match=r"reads a masked output of nested model layer "
                                            r"'inner_seq/\w+': not supported for a file of "
                                            r"Keras 3.0-3.5"):
            load_keras(str(path))
    else:
        assert_matches(load_keras(str(path)), name)


def test_time_distributed_embedding_mask_by_version():
    """A TimeDistributed(Embedding(mask_zero=True)): Keras 3 drops the mask it makes
    (k3_td_embed_mask_zero), tf.keras 2 passes it on, (B, T, words) (k2_td_masks_*)."""
    from fastrnn.io.keras import model_from_keras_config
    arch = _td_seq(_td("Embedding", input_dim=20, output_dim=6, mask_zero=True),
                   shape=(None, 5, 7))
    weights = {"td": [np.random.RandomState(0).normal(size=(20, 6))]}
    ids = np.array([[[1, 2, 0, 0, 0, 0, 0]] * 5])
    k3 = model_from_keras_config(arch, weights)
    assert k3(ids).shape == (1, 5, 7, 6) and k3.layers[-1].masks == "keras3"
    assert k3.layers[-1].call(ids, None)[1] is None
    k2 = model_from_keras_config(arch, weights, keras_version="2")
    assert k2.layers[-1].masks == "keras2"
    y, m = k2.layers[-1].call(ids, None)
    np.testing.assert_array_equal(y, k3(ids))
    np.testing.assert_array_equal(m, ids != 0)
