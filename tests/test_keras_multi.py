"""Models of several inputs and shared layers (a layer called more than once):
fastrnn.model.Model's ``(INPUT, k)`` references, ``input_names`` and layer objects at
several positions, and Keras functional models made of them (fixtures k3_multi_* and
k3_shared_* by real Keras 3.15, tests/fixtures/make_keras3.py)."""
import copy
import json
import pickle
import shutil

import numpy as np
import pytest

pytest.importorskip("h5py")
import h5py  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.io import LoadError, read_safetensors  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import (INPUT, Concatenate, Dense, KerasRNN, Masking, Model,  # noqa: E402
                           Subtract, model_from_config)
from test_keras import (_edit_config, as_list, input_names, k2_ref, model_path,  # noqa: E402
                        reference)

MULTI = ["k3_multi_text_num", "k3_multi_dict", "k3_shared_siamese",
         "k3_shared_seq2seq_embed", "k3_shared_bi_h5"]
SHARED = [n for n in MULTI if n.startswith("k3_shared_")] + ["k3_multi_text_num"]
TOL = 1e-5


def check(out, ys):
    out = as_list(out)
    assert len(out) == len(ys)
    for a, b in zip(out, ys):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() <= TOL


@pytest.mark.parametrize("name", MULTI)
def test_fixtures_match_keras_given_a_list_tuple_or_dict(name):
    model = load_keras(model_path(name))
    xs, ys = reference(name)
    names = input_names(name)
    assert model.n_inputs == len(xs) == 2 and model.input_names == names
    check(model.predict(xs), ys)
    check(model(tuple(xs)), ys)
    check(model.predict(dict(zip(names, xs)), batch_size=2), ys)
    check(model.predict(dict(zip(names[::-1], xs[::-1])), batch_size=1), ys)


def test_dict_inputs_come_in_keras_order():
    """Keras 3.15 flattens a dict of inputs in sorted key order (model.inputs): the
    model's list order; the names are the dict's keys, not the Input layers' names
    (the generator checked the order against Keras's model.inputs)."""
    model = load_keras(model_path("k3_multi_dict"))
    assert model.input_names == ["feats", "tokens"]       # (inserted tokens, feats)
    assert "frame_feats" not in model.input_names          # (the Input's own name)
    xs, ys = reference("k3_multi_dict")
    assert xs[0].ndim == 3 and xs[1].ndim == 2              # frames (B, T, I), token ids
    check(model.predict({"tokens": xs[1], "feats": xs[0]}), ys)
    with pytest.raises((ValueError, TypeError)):
        model.predict(xs[::-1])                              # (ids where the frames go)


def test_each_input_starts_without_a_mask():
    """Each input carries its own mask from the start: none (Keras), or the one given
    for it; a mask made on one input's path does not reach the other's."""
    from fastrnn import GRU
    from fastrnn.model import Add
    rng = np.random.RandomState(0)
    a = rng.normal(size=(2, 5, 3)).astype(np.float32)
    b = rng.normal(size=(2, 5, 3)).astype(np.float32)
    a[0, 3:] = 0.0
    b[0, 3:] = 0.0                     # (zeros: masked only where a mask says so)
    rnn = KerasRNN(GRU(3, 2, batch_first=True), return_sequences=True)
    model = Model([Masking(0.0), Add(), rnn],
                  inputs=[(INPUT, 0), [(0, 0), (INPUT, 1)], (1, 0)], n_inputs=2)
    m = np.any(a != 0, -1)
    # (Add: no mask unless every input has one: the second input has none)
    assert np.array_equal(model([a, b]), rnn.call(a + b, None)[0])
    mb = np.ones((2, 5), bool)
    mb[0, 3:] = False
    assert not (m | mb).all()
    got = model([a, b], mask=[None, mb])
    assert np.array_equal(got, rnn.call(a + b, m | mb)[0])
    assert np.array_equal(model((a, b), mask=(None, mb)), got)


# ----------------------------------------------------------------------------- shared layers

def test_a_shared_layer_is_one_object_counted_once():
    model = load_keras(model_path("k3_shared_siamese"))
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[:4] == ["Embedding", "Embedding", "KerasRNN", "KerasRNN"]
    assert model.layers[0] is model.layers[1] and model.layers[2] is model.layers[3]
    assert model.inputs[:4] == [[(INPUT, 0)], [(INPUT, 1)], [(0, 0)], [(1, 0)]]
    unique = {id(l): l for l in model.layers}.values()
    assert model.count_params() == sum(l.count_params() for l in unique)
    assert model.count_params() < sum(l.count_params() for l in model.layers)
    sd = model.state_dict()
    assert any(k.startswith("0.") for k in sd) and not any(k.startswith("1.") for k in sd)
    assert not any(k.startswith("3.") for k in sd)
    assert model.save_config()["layers"][1] == {"class_name": "Shared", "layer": 0}
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "inputs: left, right" in text
    row = next(r for r in text.splitlines() if r.startswith("lstm") and "#1" in r)
    assert "shared" in row and "embedding" in row and "#1" in row
    assert f"total params: {model.count_params()}" in text
    assert "<layer 2 again" in repr(model) and "input_names=['left', 'right']" in repr(model)


@pytest.mark.parametrize("name", SHARED)
def test_shared_weights_are_saved_once_and_load_as_one_object(name, tmp_path):
    model = load_keras(model_path(name))
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    xs, ys = reference(name)
    check(again.predict(xs, batch_size=2), ys)
    assert again.input_names == model.input_names and repr(again) == repr(model)
    assert again.count_params() == model.count_params()
    same = [(i, j) for i, a in enumerate(model.layers) for j, b in enumerate(model.layers)
            if i < j and a is b]
    assert same and same == [(i, j) for i, a in enumerate(again.layers)
                             for j, b in enumerate(again.layers) if i < j and a is b]
    # the file holds each weight once: as many arrays as the distinct layers hold, and
    # smaller than the same model with its shared layers copied
    tensors, _ = read_safetensors(path)
    unique = {id(l): l for l in model.layers}.values()
    assert len(tensors) == len(model.state_dict())
    assert sum(t.size for t in tensors.values()) == \
        sum(np.size(w) for l in unique for w in l.get_weights())
    copies = Model([copy.deepcopy(l) for l in model.layers], outputs=model.outputs,
                   inputs=model.inputs, initial_states=model.initial_states,
                   input_names=model.input_names)
    assert copies.count_params() > model.count_params()
    copies.save(tmp_path / "copies.safetensors")
    assert (tmp_path / "copies.safetensors").stat().st_size > path.stat().st_size
    # and a pickle keeps the sharing too
    p = pickle.loads(pickle.dumps(model))
    assert [(i, j) for i, a in enumerate(p.layers) for j, b in enumerate(p.layers)
            if i < j and a is b] == same
    check(p.predict(xs), ys)


def test_keras2_inbound_form_of_shared_layers(tmp_path):
    """tf.keras 2 writes each call of a layer as a list of [layer, node, tensor, kwargs]
    entries; the node index picks the call of the layer read (here the shared
    Masking / Bidirectional's second call, and a Dense reading its own first call)."""
    name = "k3_shared_bi_h5"
    p = tmp_path / "k2form.h5"
    shutil.copy(model_path(name), p)

    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        nodes = 0
        for l in c["config"]["layers"]:
            new = []
            for node in l.get("inbound_nodes") or []:
                a = node["args"][0]
                new.append([k2_ref(t) for t in a] if isinstance(a, list) else [k2_ref(a)])
            nodes += len(new) > 1
            l["inbound_nodes"] = new
        assert nodes == 3                       # (masking, bidirectional, dense)
        f.attrs["model_config"] = json.dumps(c)
        f.attrs["keras_version"] = "2.15.0"
    model = load_keras(str(p), hard_sigmoid="keras3")
    xs, ys = reference(name)
    check(model.predict(xs), ys)
    assert model.layers[2] is model.layers[3]


def test_a_hand_made_model_with_a_shared_layer(tmp_path):
    """The same Dense on both inputs, compared; saved once, loaded as one object."""
    rng = np.random.RandomState(3)
    enc = Dense(rng.normal(size=(4, 3)).astype(np.float32), name="enc")
    head = Dense(rng.normal(size=(3, 1)).astype(np.float32), name="head")
    model = Model([enc, enc, Subtract(), head],
                  inputs=[(INPUT, 0), (INPUT, 1), [(0, 0), (1, 0)], (2, 0)],
                  input_names=["a", "b"], name="siamese")
    a = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=(5, 4)).astype(np.float32)
    want = (a @ enc.kernel - b @ enc.kernel) @ head.kernel
    np.testing.assert_allclose(model([a, b]), want, rtol=1e-5, atol=1e-6)
    assert model.count_params() == 15
    assert set(model.state_dict()) == {"0.kernel", "3.kernel"}
    path = tmp_path / "s.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert again.layers[0] is again.layers[1] and again.input_names == ["a", "b"]
    np.testing.assert_allclose(again({"b": b, "a": a}), want, rtol=1e-5, atol=1e-6)
    # a config whose shared entry points at itself or a later layer
    cfg, sd = model.save_config(), model.state_dict()
    cfg["layers"][1] = {"class_name": "Shared", "layer": 1}
    with pytest.raises(ValueError, match="layer 1 shares layer 1, which must come before"):
        model_from_config(cfg, sd)
    cfg["layers"][1] = {"class_name": "Shared", "layer": "0"}
    with pytest.raises(ValueError, match="must be an int"):
        model_from_config(cfg, sd)


def test_a_shared_layer_called_on_tensors_of_other_sizes():
    """A Keras layer without weights (Activation) shared by sequences of 3 and 5
    features (tf.keras 2's config form): one object, each call's output sized by its
    input (the Dense after the Concatenate checks 8)."""
    from fastrnn.io.keras import model_from_keras_config

    def inp(name, n):
        return {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                "config": {"batch_input_shape": [None, 4, n], "name": name}}
    arch = {"class_name": "Functional", "config": {"name": "m", "layers": [
        inp("a", 3), inp("b", 5),
        {"class_name": "Activation", "name": "act", "config": {"activation": "tanh"},
         "inbound_nodes": [[["a", 0, 0, {}]], [["b", 0, 0, {}]]]},
        {"class_name": "Concatenate", "name": "cat", "config": {"axis": -1},
         "inbound_nodes": [[["act", 0, 0, {}], ["act", 1, 0, {}]]]},
        {"class_name": "Dense", "name": "out", "config": {"units": 2},
         "inbound_nodes": [[["cat", 0, 0, {}]]]}],
        "input_layers": [["a", 0, 0], ["b", 0, 0]], "output_layers": [["out", 0, 0]]}}
    rng = np.random.RandomState(5)
    k, bias = rng.normal(size=(8, 2)).astype(np.float32), np.zeros(2, np.float32)
    model = model_from_keras_config(arch, {"out": [k, bias]}, keras_version="2.15.0")
    assert model.layers[0] is model.layers[1] and model.input_names == ["a", "b"]
    x, y = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 5))
    want = np.tanh(np.concatenate([x, y], -1)).astype(np.float32) @ k
    np.testing.assert_allclose(model([x, y]), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- errors

def test_input_errors_name_the_inputs():
    model = load_keras(model_path("k3_multi_text_num"))
    (text, num), _ = reference("k3_multi_text_num")
    with pytest.raises(ValueError, match=r"takes 2 inputs \('text', 'num'\), got 1 arrays"):
        model.predict([text])
    with pytest.raises(ValueError, match=r"takes 2 inputs \('text', 'num'\), got 3 arrays"):
        model([text, num, num])
    with pytest.raises(ValueError, match=r"takes 2 inputs .*: pass a list or tuple of 2 "
                                         "arrays, or a dict by input name, not ndarray"):
        model(text)
    with pytest.raises(ValueError, match=r"disagree on the batch size: input 'text' has 3, "
                                         r"input 'num' has 2"):
        model.predict([text, num[:2]], batch_size=2)
    with pytest.raises(ValueError, match=r"unknown input name\(s\) 'txt'; its inputs are "
                                         r"'text', 'num'"):
        model({"txt": text, "num": num})
    with pytest.raises(ValueError, match=r"missing input\(s\) 'num'; its inputs are"):
        model.predict({"text": text})
    with pytest.raises(ValueError, match="input 'num' must be an array with a batch axis"):
        model([text, 1.0])
    with pytest.raises(ValueError, match=r"takes 2 inputs .*got 1 masks"):
        model([text, num], mask=[None])


def test_model_input_declarations_are_checked():
    d = Dense(np.ones((4, 2), np.float32))
    e = Dense(np.ones((4, 2), np.float32))
    inputs = [(INPUT, 0), (INPUT, 1), [(0, 0), (1, 0)]]
    with pytest.raises(ValueError, match=r"\(-1, 1\): the model has one input, tensor 0"):
        Model([d, e, Concatenate()], inputs=inputs)
    with pytest.raises(ValueError, match=r"\(-1, 2\): the model has 2 inputs, tensors 0 to 1"):
        Model([d, e, Concatenate()], inputs=[(INPUT, 0), (INPUT, 2), [(0, 0), (1, 0)]],
              n_inputs=2)
    with pytest.raises(ValueError, match="input_names must differ"):
        Model([d, e, Concatenate()], inputs=inputs, input_names=["a", "a"])
    with pytest.raises(ValueError, match="2 input_names for n_inputs=3"):
        Model([d, e, Concatenate()], inputs=inputs, input_names=["a", "b"], n_inputs=3)
    with pytest.raises(ValueError, match="input_names must be a non-empty list"):
        Model([d, e, Concatenate()], inputs=inputs, input_names="ab")
    m = Model([d, e, Concatenate()], inputs=inputs, n_inputs=2, name="m")
    x = np.ones((3, 4), np.float32)
    assert m([x, x]).shape == (3, 4) and m.input_names is None
    with pytest.raises(ValueError, match="model 'm' does not know its inputs' names"):
        m({"a": x, "b": x})
    assert "n_inputs=2" in repr(m) and "input[1]" in repr(m)
    # a model pickled before multi-input models (no _n_inputs / input_names): one input
    single = Model([Dense(np.ones((4, 2), np.float32))])
    state = dict(single.__dict__)
    state.pop("_n_inputs", None)
    state.pop("input_names", None)
    old = Model.__new__(Model)
    old.__dict__.update(state)
    assert old.n_inputs == 1 and old(x).shape == (3, 2)


def test_a_single_input_model_also_takes_a_dict_by_its_name():
    model = load_keras(model_path("k3_dict_io"))
    x, ys = reference("k3_dict_io")
    assert model.input_names == ["feats"] and model.n_inputs == 1
    check(model.predict({"feats": x}, batch_size=2), ys)
    check(model.predict(x), ys)
    with pytest.raises(ValueError, match=r"unknown input name\(s\) 'x'"):
        model({"x": x})


def test_stream_refuses_a_per_sample_input_merged_with_a_last_step():
    """Models of several inputs stream (tests/test_stream_graphs.py); this one's second
    input is one vector a sample, merged with the text LSTM's last step: a stream's
    inputs are sequences."""
    with pytest.raises(ValueError, match=r"layer 'concatenate\w*' merges lstm\w*, dense[\w#]*: "
                                         r"the last step of layer 'lstm\w*' "
                                         r"\(return_sequences=False\) with every step of "
                                         r"another tensor \(each input of a stream is a "
                                         r"sequence"):
        fastrnn.Stream(load_keras(model_path("k3_multi_text_num")))


# ----------------------------------------------------------------------------- Keras refusals

def _layer(c, cls, k=0):
    return [l for l in c["config"]["layers"] if l["class_name"] == cls][k]


def _history(node, k=0):
    a = node["args"][0]
    return (a[k] if isinstance(a, list) else a)["config"]["keras_history"]


def test_keras_refusals_of_graphs_with_shared_layers(tmp_path):
    name = "k3_shared_seq2seq_embed"

    def masked(c):          # the shared Embedding masks both calls: the decoder too
        _layer(c, "Embedding")["config"]["mask_zero"] = True
        del _layer(c, "LSTM")["inbound_nodes"][0]["kwargs"]["mask"]     # (was None)
    with pytest.raises(LoadError, match=r"'lstm\w*' \(LSTM\) is called with initial_state, "
                                        "so Keras 3 runs it without the mask"):
        load_keras(_edit_config(name, tmp_path, masked))

    def no_such_call(c):    # the decoder reads a third call of the Embedding
        _history(_layer(c, "LSTM", 1)["inbound_nodes"][0])[1] = 2
    with pytest.raises(LoadError, match=r"layer 'lstm\w*' reads call 2 \(counting from 0\) "
                                        r"of layer 'embedding\w*', which is called 2 time"):
        load_keras(_edit_config(name, tmp_path, no_such_call))

    def not_an_input(c):    # a model input that is no InputLayer
        c["config"]["input_layers"][1] = [_layer(c, "Embedding")["name"], 0, 0]
    with pytest.raises(LoadError, match=r"model input 1 is <output 0 of 'embedding\w*'> "
                                        r"\(Embedding\); fastrnn takes a model's inputs from"):
        load_keras(_edit_config(name, tmp_path, not_an_input))

    def twice(c):
        c["config"]["input_layers"][1] = c["config"]["input_layers"][0]
    with pytest.raises(LoadError, match=r"model input 'encoder_ids' is given twice"):
        load_keras(_edit_config(name, tmp_path, twice))

    def other_size(c):      # the shared tanh Dense's 2nd call given the LSTM's 5 features
        lstm, relu = _layer(c, "LSTM")["name"], _layer(c, "Dense", 1)
        node = _layer(c, "Dense", 0)["inbound_nodes"][1]
        _history(node)[:2] = [lstm, 0]
        args = _layer(c, "Concatenate")["inbound_nodes"][0]["args"][0]
        args.append(copy.deepcopy(args[1]))         # (the relu Dense: still read)
        args[2]["config"]["keras_history"] = [relu["name"], 0, 0]
    with pytest.raises(LoadError, match=r"'dense\w*' \(Dense\): kernel has shape \(3, 3\), "
                                        r"expected \(5, 3\)"):
        load_keras(_edit_config("k3_multi_text_num", tmp_path, other_size))

    def nested(c):          # the decoder LSTM as a model of its own (node 1: Keras's)
        lstm = _layer(c, "LSTM", 1)
        lstm["class_name"] = "Functional"
        _history(_layer(c, "Dense")["inbound_nodes"][0])[1] = 1
    # (nested models are inlined now: this one, an LSTM's config, is no model's)
    with pytest.raises(LoadError, match=r"nested model 'lstm\w*'"):
        load_keras(_edit_config(name, tmp_path, nested))

    def nested_no_layers(c):    # the same, read as Keras counts a model's calls
        lstm = _layer(c, "LSTM", 1)
        lstm["class_name"] = "Functional"
    with pytest.raises(LoadError, match=r"nested model 'lstm\w*' \(Functional\) is called "
                                        r"with initial_state=\[<output 1 of"):
        load_keras(_edit_config(name, tmp_path, nested_no_layers))
