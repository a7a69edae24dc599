"""Models loaded from Keras files round-trip through fastrnn's own safetensors file."""
import pickle

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError, read_safetensors  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import Dense, Model, model_from_config  # noqa: E402
from test_keras import NAMES, architecture, as_list, model_path, reference  # noqa: E402


@pytest.mark.parametrize("name", NAMES)
def test_keras_model_round_trips_through_safetensors(name, tmp_path):
    model = load_keras(model_path(name), architecture(name))
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert isinstance(again, Model)
    x, ys = reference(name)
    for a, b in zip(as_list(again.predict(x)), ys):
        assert np.abs(a - b).max() <= 1e-5
    assert repr(again) == repr(model)
    # the same arrays, under stable names
    tensors, meta = read_safetensors(path)
    assert set(tensors) == set(model.state_dict())
    assert "fastrnn" in meta


def test_model_from_config_errors():
    m = Model([Dense(np.ones((3, 2), np.float32), None, "relu")])
    cfg, sd = m.save_config(), m.state_dict()
    assert model_from_config(cfg, sd)(np.ones((1, 3), np.float32)).tolist() == [[3.0, 3.0]]
    with pytest.raises(KeyError, match="kernel"):
        model_from_config(cfg, {})
    with pytest.raises(ValueError, match="unknown model layer class"):
        model_from_config({**cfg, "layers": [{"class_name": "Conv3D"}]}, sd)
    with pytest.raises(ValueError, match="not a fastrnn Model config"):
        model_from_config({"layers": []}, sd)


def test_callable_activation_cannot_be_saved(tmp_path):
    m = Model([Dense(np.ones((3, 2), np.float32), None, np.tanh)])
    with pytest.raises(TypeError, match="callable"):
        m.save(tmp_path / "x.safetensors")
    # but it still pickles (module-level functions)
    assert pickle.loads(pickle.dumps(m))(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_corrupt_model_file_is_a_load_error(tmp_path):
    model = load_keras(model_path(NAMES[0]), architecture(NAMES[0]))
    path = tmp_path / "m.safetensors"
    model.save(path)
    tensors, meta = read_safetensors(path)
    tensors.pop(sorted(tensors)[0])
    from fastrnn.io import write_safetensors
    write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(LoadError, match="do not fit"):
        fastrnn.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("change", [
    {"num_layers": 10 ** 9}, {"hidden_size": 10 ** 9}, {"input_size": 10 ** 9},
    {"num_layers": "2"}, {"bidirectional": True}, {"activations": [["tanh"]] * 100},
    {"class_name": "Transformer"},
])
def test_hostile_fastrnn_config_is_refused_before_allocating(change, tmp_path):
    """A fastrnn file whose config lies about the sizes: LoadError, fast, no big allocation."""
    import json
    import time
    import tracemalloc
    from fastrnn.io import write_safetensors
    layer = fastrnn.LSTM(3, 4, num_layers=2)
    cfg = {**layer.get_config(), **change}
    write_safetensors(tmp_path / "h.safetensors", layer.state_dict(),
                      {"fastrnn": json.dumps(cfg)})
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(LoadError):
        fastrnn.load(tmp_path / "h.safetensors")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 50 << 20


def test_saved_model_load_holds_the_weights_once_at_its_peak(tmp_path):
    """A saved Keras-style model's recurrent cores keep the arrays read from the file,
    and a fused Bidirectional keeps its directions' (it copied them: a load peaked at
    ~4x the weights, 50.5 MB for a 12.7 MB Bidirectional(LSTM(512)) model)."""
    from fastrnn.layers import layer_from_config
    from fastrnn.model import Bidirectional, KerasRNN, Model
    from reference import allocation_peak

    def rnn(go_backwards, seed, inputs=64):
        return KerasRNN(fastrnn.LSTM(inputs, 256, batch_first=True, go_backwards=go_backwards,
                                     seed=seed), return_sequences=True)
    bi = Bidirectional(rnn(False, 0), rnn(True, 1))
    bi._fuse_with(layer_from_config(bi._fused_config()))
    model = Model([bi, rnn(False, 2, inputs=512)])
    path = str(tmp_path / "m.safetensors")
    model.save(path)
    weights = sum(a.nbytes for a in model.state_dict().values())
    again, peak = allocation_peak(lambda: fastrnn.load(path))
    assert peak < 1.3 * weights, (peak, weights)
    assert again.layers[0]._fused is not None
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def _loader_files(tmp_path):
    """A file of each kind fastrnn.load reads: (label, path)."""
    import os
    from safetensors.numpy import save_file
    layer = fastrnn.LSTM(3, 4, seed=0)
    own, cell, sd = tmp_path / "own.safetensors", tmp_path / "cell.safetensors", \
        tmp_path / "sd.safetensors"
    layer.save(own)
    fastrnn.GRUCell(3, 4, seed=0).save(cell)
    save_file({k: np.ascontiguousarray(v) for k, v in layer.state_dict().items()}, str(sd))
    here = os.path.dirname(__file__)
    model = tmp_path / "model.safetensors"
    load_keras(model_path(NAMES[0]), architecture(NAMES[0])).save(model)
    return [("own layer", own), ("own cell", cell), ("state dict", sd),
            ("own model", model),
            ("onnx", os.path.join(here, "fixtures", "onnx", "embed_lstm_linear.onnx")),
            ("keras", model_path(NAMES[0]))]


@pytest.mark.parametrize("kw,err", [(dict(num_threads=0), ValueError),
                                    (dict(num_threads="2"), TypeError),
                                    (dict(dtype="int8"), TypeError)])
def test_loaders_refuse_bad_arguments_as_the_callers_errors(kw, err, tmp_path):
    """fastrnn.load's own dtype= / num_threads= arguments, bad, are the caller's
    TypeError / ValueError before the file is read, whatever the file (they were
    LoadErrors, "the file is at fault", from the torch and ONNX readers, and fastrnn's
    own files ignored them)."""
    for label, path in _loader_files(tmp_path):
        if label == "onnx" and "dtype" in kw:
            continue                    # (load_onnx has no dtype=)
        with pytest.raises(err) as e:
            fastrnn.load(path, **kw)
        assert not isinstance(e.value, LoadError), label


@pytest.mark.parametrize("kw,err", [(dict(num_threads=0), ValueError),
                                    (dict(num_threads="2"), TypeError),
                                    (dict(dtype="int8"), TypeError)])
def test_load_checks_its_arguments_before_it_opens_the_file(kw, err, tmp_path):
    """fastrnn.load checks dtype= / num_threads= before it reads the file's first bytes:
    a bad argument is the caller's error even where the file is missing or unreadable
    (those were LoadErrors about the file, hiding the caller's mistake)."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(100)))
    for path in (tmp_path / "missing.pt", junk):
        with pytest.raises(err) as e:
            fastrnn.load(path, **kw)
        assert not isinstance(e.value, LoadError), path


def test_load_says_onnx_models_take_no_dtype(tmp_path):
    """dtype= on an ONNX file is a TypeError that says why (it was Python's
    "unexpected keyword argument" from load_onnx)."""
    path = dict(_loader_files(tmp_path))["onnx"]
    with pytest.raises(TypeError, match="ONNX models take no dtype="):
        fastrnn.load(path, dtype="float64")
    with pytest.raises(TypeError, match="ONNX models take no dtype="):
        fastrnn.load(path, dtype=np.float32)


def test_own_files_apply_dtype_and_threads_and_refuse_other_keywords(tmp_path):
    """A layer or cell fastrnn saved takes dtype= / num_threads= at load (they were
    silently ignored); a saved Model takes neither, and other keywords (which the file's
    config fixes) are a TypeError naming them."""
    files = dict(_loader_files(tmp_path))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    for label in ("own layer", "own cell"):
        plain = fastrnn.load(files[label])
        obj = fastrnn.load(files[label], dtype="float64", num_threads=1)
        assert obj.dtype == np.float64 and obj.num_threads == 1
        assert plain.dtype == np.float32 and plain.num_threads is None
        args = (x,) if label == "own layer" else (x[0],)
        a, b = plain(*args), obj(*args)
        a, b = (a[0], b[0]) if label == "own layer" else (a, b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        with pytest.raises(TypeError, match="batch_first"):
            fastrnn.load(files[label], batch_first=True)
    with pytest.raises(TypeError, match="Model"):
        fastrnn.load(files["own model"], num_threads=1)
    assert isinstance(fastrnn.load(files["own model"]), Model)


def test_input_cast_layer(tmp_path):
    """InputCast: the input rounded through its Keras Input's dtype, then in the model's
    dtype; other numbers converted as the Input converts them; the mask passed on;
    saved, loaded, pickled, shown by summary; bad dtypes refused (a saved file's too)."""
    import json
    import re
    from fastrnn.io import write_safetensors
    from fastrnn.model import INPUT, Concatenate, InputCast, Masking
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4))                     # (float64 values)
    c = InputCast("float32", "float64")
    y, m = c.call(x, mask="the mask")
    assert y.dtype == np.float64 and m == "the mask"
    assert np.array_equal(y, x.astype(np.float32).astype(np.float64))
    assert not np.array_equal(y, x)
    assert np.max(np.abs(y - x)) > 1e-9                     # (float32's ~6e-8 relative)
    assert np.array_equal(InputCast("float16", "float32")(x), x.astype(np.float16).astype(
        np.float32))
    assert np.array_equal(InputCast("float64", "float32")(x), x.astype(np.float32))
    big = np.array([[2 ** 53 + 1]], np.int64)               # (ints as the Input converts)
    assert InputCast("float64", "float64")(big)[0, 0] == float(2 ** 53)
    assert InputCast("float32", "float64")(big)[0, 0] == float(np.float32(2 ** 53))
    assert InputCast(np.float32, np.dtype("float64")).input_dtype == "float32"
    for bad in ("int32", "bfloat16", None, "bogus", {"name": "float32"}):
        with pytest.raises(TypeError, match="InputCast input_dtype"):
            InputCast(bad, "float64")
    with pytest.raises(TypeError, match="InputCast dtype"):
        InputCast("float32", "float16")
    with pytest.raises(TypeError, match="expected numbers"):
        c(np.array([["a"]]))
    assert repr(c) == f"InputCast(name={c.name!r}, float32 -> float64)"
    assert c.count_params() == 0 and c.get_weights() == []
    # a model of two inputs, one cast (a graph): saved and loaded
    model = Model([InputCast("float32", "float64", name="feats"), Masking(0.0),
                   Concatenate()], inputs=[[(INPUT, 1)], [(0, 0)], [(INPUT, 0), (1, 0)]],
                  input_names=["a", "feats"])
    a = rng.standard_normal((2, 3, 2))
    want = np.concatenate([a, x.astype(np.float32).astype(np.float64)], axis=-1)
    assert np.array_equal(model([a, x]), want)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert repr(again) == repr(model) and np.array_equal(again([a, x]), want)
    assert again.layers[0].get_config() == {"class_name": "InputCast", "name": "feats",
                                            "input_dtype": "float32", "dtype": "float64"}
    assert np.array_equal(pickle.loads(pickle.dumps(model))([a, x]), want)
    lines = []
    model.summary(print_fn=lines.append)
    assert re.search(r"\nfeats +InputCast +feats +0  float32 -> float64\n", lines[0])
    # a saved config's bad dtype: a load error
    cfg = model.save_config()
    cfg["layers"][0]["input_dtype"] = "int8"
    write_safetensors(tmp_path / "bad.safetensors", model.state_dict(),
                      {"fastrnn": json.dumps(cfg)})
    with pytest.raises(LoadError, match="InputCast input_dtype"):
        fastrnn.load(tmp_path / "bad.safetensors")


def _edited(tmp_path, model, edit_tensors=None, edit_cfg=None):
    """``model`` saved, its arrays / config edited, written again: the new path."""
    import json
    from fastrnn.io import write_safetensors
    p = tmp_path / "m.safetensors"
    model.save(p)
    tensors, meta = read_safetensors(p)
    cfg = json.loads(meta["fastrnn"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_cfg:
        edit_cfg(cfg)
    out = tmp_path / "edited.safetensors"
    write_safetensors(out, tensors, {"fastrnn": json.dumps(cfg)})
    return out


def test_saved_model_arrays_are_checked_as_a_layer_files_are(tmp_path):
    """A Model file's arrays: an integer / bool kernel computed in its dtype (predict gave
    [[0]] or [[True]]), a NaN ran silently, a missing bias loaded as "no bias", an array
    no layer takes was ignored, a number too large for a float was an OverflowError: each
    is a LoadError now (found by the saved-formats audit).  Files written before the
    config recorded use_bias / center / scale still load."""
    from fastrnn.model import LayerNormalization
    rng = np.random.default_rng(0)
    m = Model([Dense(rng.standard_normal((3, 2)).astype("float32"),
                     rng.standard_normal(2).astype("float32")),
               LayerNormalization(np.ones(2, "float32"), np.zeros(2, "float32"))])
    x = rng.standard_normal((4, 3)).astype("float32")
    want = m.predict(x)

    def setter(key, value):
        return lambda t: t.__setitem__(key, value)
    cases = [
        (setter("0.kernel", np.ones((3, 2), np.int32)), None, "must be floating point"),
        (setter("0.kernel", np.ones((3, 2), bool)), None, "must be floating point"),
        (setter("0.kernel", np.full((3, 2), np.nan, np.float32)), None, "NaN"),
        (lambda t: t.pop("0.bias"), None, "missing array 'bias'"),
        (lambda t: t.pop("1.gamma"), None, "missing array 'gamma'"),
        (setter("7.bogus", np.zeros(1, np.float32)), None, "no layer of the config takes"),
        (None, lambda c: c["layers"][1].update(epsilon=-1.0), "epsilon"),
        (None, lambda c: c["layers"][1].update(epsilon=10 ** 400), "too large"),
        (None, lambda c: c["layers"][0].update(use_bias="yes"), "use_bias|bias flag"),
    ]
    for et, ec, what in cases:
        with pytest.raises(LoadError, match=what):
            fastrnn.load(_edited(tmp_path, m, et, ec))
    # an older file: no use_bias / center / scale in the config
    def old(c):
        for lc in c["layers"]:
            for k in ("use_bias", "center", "scale"):
                lc.pop(k, None)
    np.testing.assert_array_equal(fastrnn.load(_edited(tmp_path, m, None, old)).predict(x),
                                  want)
    np.testing.assert_array_equal(fastrnn.load(_edited(tmp_path, m)).predict(x), want)
