"""Nested models (a Sequential or functional model used as a layer of another, any depth):
fastrnn inlines each call of the submodel into the outer graph, its layers renamed
"<model>/<layer>", the calls of a shared submodel running the same layers (one set of
weights).  Fixtures k3_nested_* by real Keras 3.15 (tests/fixtures/make_keras3.py) and
k2_nested_* by tf-keras 2.21 (tests/fixtures/make_keras2.py)."""
import copy
import json
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras, model_from_keras_config  # noqa: E402
from test_keras import _edit_config, assert_matches, model_path  # noqa: E402
from test_keras2_more import _edit_h5  # noqa: E402

K3 = ["k3_nested_seq_in_fn", "k3_nested_fn_shared", "k3_nested_two_in_out",
      "k3_nested_seq_deep", "k3_nested_mask_out", "k3_nested_fn_shared_h5",
      "k3_nested_seq_deep_h5"]
K2 = ["k2_nested_seq_in_fn", "k2_nested_mask_out_bn", "k2_nested_seq_deep",
      "k2_nested_fn_two_out"]
# Keras 3's Functional.call attaches the mask its call is given to the input tensor; the
# merge layers inside read their tensors' own masks (they take no mask= argument).  Fixtures
# k3_nested_res_* (tests/fixtures/make_keras3.py): residual Add, Multiply / Maximum /
# Subtract / Average / Minimum / Dot, Concatenate on the features and on the steps, two
# deep, a submodel called twice, a masked input merged with an unmasked one and with one
# of other masked steps; most also return the merged values at the masked steps.
RES = ["k3_nested_res_add", "k3_nested_res_ops", "k3_nested_res_cat", "k3_nested_res_deep",
       "k3_nested_res_shared", "k3_nested_res_two_in", "k3_nested_res_two_masks",
       "k3_nested_res_add_h5", "k3_nested_res_deep_h5", "k3_nested_res_two_masks_h5"]
TOL = 1e-5


def check(model, name, **kw):
    return assert_matches(model, name, tol=TOL, **kw)


@pytest.mark.parametrize("name", K3 + K2 + RES)
def test_nested_fixtures_match_keras(name, tmp_path):
    model = load_keras(model_path(name))
    check(model, name)
    check(model, name, batch_size=1)
    path = tmp_path / "m.safetensors"
    model.save(path)
    check(fastrnn.load(path), name, batch_size=2)


def _names(model):
    return [l.name for l in model.layers]


def test_inlined_layer_names_and_shared_weights():
    m = load_keras(model_path("k3_nested_fn_shared"))
    names = _names(m)
    # the submodel's layers renamed "<model>/<layer>"; called twice, its two layers
    # (Dense, GRU) sit at both calls' places as the same objects (weights held once)
    fsub = [l for l in m.layers if l.name.startswith("fsub/")]
    assert len(fsub) == 4 and len({id(l) for l in fsub}) == 2
    assert any(n.startswith("sseq/lstm") for n in names)
    deep = load_keras(model_path("k3_nested_seq_deep"))
    assert any(n.startswith("mid/innermost/gru") for n in _names(deep))
    two = load_keras(model_path("k3_nested_fn_shared_h5"))
    core = [l for l in two.layers if l.name.startswith("mid/core/lstm")]
    assert len(core) == 2 and core[0] is core[1]


def test_shared_submodel_uses_one_weight_set():
    """The two calls of k2_nested_seq_in_fn's Sequential run one LSTM object."""
    m = load_keras(model_path("k2_nested_seq_in_fn"))
    lstm = [l for l in m.layers if l.name.startswith("inner_seq/lstm")]
    assert len(lstm) == 2 and lstm[0] is lstm[1]


# ---------------------------------------------------------------- still refused, clearly

def _layers(c):
    return c["config"]["layers"]


def _sub(c, name):
    return next(l for l in _layers(c) if l["name"] == name)


def test_unsupported_inner_layer_named(tmp_path):
    def edit(c):
        inner = _sub(c, "inner_seq")["config"]["layers"]
        lstm = next(l for l in inner if l["class_name"] == "LSTM")
        lstm["class_name"] = "ConvLSTM1D"
    with pytest.raises(LoadError, match=r"unsupported Keras layer\(s\): 'inner_seq/lstm\w*' "
                                        r"\(ConvLSTM1D\)"):
        load_keras(_edit_config("k3_nested_seq_in_fn", tmp_path, edit))


def test_unsupported_layer_two_deep_named(tmp_path):
    def edit(c):
        mid = _sub(c, "mid")["config"]["layers"]
        core = next(l for l in mid if l["class_name"] == "Functional")
        gru = next(l for l in core["config"]["layers"] if l["class_name"] == "LSTM")
        gru["class_name"] = "Lambda"
    p = tmp_path / "m.h5"
    shutil.copy(model_path("k3_nested_fn_shared_h5"), p)
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        edit(c)
        f.attrs["model_config"] = json.dumps(c)
    with pytest.raises(LoadError, match=r"'mid/core/lstm\w*' \(Lambda\)"):
        load_keras(str(p))


def test_inner_call_training_true_refused(tmp_path):
    def edit(c):
        inner = _sub(c, "fsub")["config"]["layers"]
        gru = next(l for l in inner if l["class_name"] == "GRU")
        gru["inbound_nodes"][0]["kwargs"]["training"] = True
    with pytest.raises(LoadError, match=r"layer 'fsub/gru\w*' \(GRU\) is called with "
                                        r"training=True"):
        load_keras(_edit_config("k3_nested_fn_shared", tmp_path, edit))


def test_nested_model_call_arguments_refused(tmp_path):
    def training(c):
        _sub(c, "fsub")["inbound_nodes"][1]["kwargs"]["training"] = True
    with pytest.raises(LoadError, match=r"nested model 'fsub' \(Functional\) is called "
                                        r"with training=True: not supported"):
        load_keras(_edit_config("k3_nested_fn_shared", tmp_path, training))

    def other_mask(c):      # a mask other than the Embedding's own, given to the submodel
        node = _sub(c, "sseq")["inbound_nodes"][0]
        node["kwargs"]["mask"]["config"]["keras_history"] = ["ids", 0, 0]
    with pytest.raises(LoadError, match=r"'sseq/lstm\w*' \(LSTM\) is called with "
                                        r"mask=<output 0 of 'ids'>: not supported"):
        load_keras(_edit_config("k3_nested_fn_shared", tmp_path, other_mask))

    def other_mask_fn(c):   # the same into a functional submodel (Keras 3 nodes inside)
        node = _sub(c, "fsub")["inbound_nodes"][0]
        node["kwargs"]["mask"]["config"]["keras_history"] = ["ids", 0, 0]
    with pytest.raises(LoadError, match=r"'fsub/dense\w*' \(Dense\) is called with "
                                        r"mask=<output 0 of 'ids'>: not supported"):
        load_keras(_edit_config("k3_nested_fn_shared", tmp_path, other_mask_fn))

    def extra_arg(c):
        node = _sub(c, "fsub")["inbound_nodes"][0]
        node["args"].append(3)
    with pytest.raises(LoadError, match=r"nested model 'fsub' \(Functional\) is called "
                                        r"with an extra argument 3"):
        load_keras(_edit_config("k3_nested_fn_shared", tmp_path, extra_arg))


def test_nested_model_references_checked(tmp_path):
    def bad_output(c):      # tensor 2 of a model of 2 outputs
        c["config"]["output_layers"][1] = ["two", 1, 2]
    with pytest.raises(LoadError, match=r"nested model 'two' reads its output 2; it has 2"):
        load_keras(_edit_config("k3_nested_two_in_out", tmp_path, bad_output))

    def own_node(c):        # Keras 3 counts a Functional's own first node in outputs
        c["config"]["output_layers"][1] = ["two", 0, 0]
    with pytest.raises(LoadError, match=r"reads call 0 of nested model 'two', its own node"):
        load_keras(_edit_config("k3_nested_two_in_out", tmp_path, own_node))

    def no_call(c):
        c["config"]["output_layers"][1] = ["two", 2, 0]
    with pytest.raises(LoadError, match=r"reads call 1 \(counting from 0\) of nested model "
                                        r"'two', which is called 1 time"):
        load_keras(_edit_config("k3_nested_two_in_out", tmp_path, no_call))

    def wrong_inputs(c):    # the two-input model called on one tensor
        node = _sub(c, "two")["inbound_nodes"][0]
        node["args"][0] = node["args"][0][:1]
        node["kwargs"]["mask"] = node["kwargs"]["mask"][:1]
    with pytest.raises(LoadError, match=r"nested model 'two' takes 2 input\(s\), is called "
                                        r"on 1 tensor"):
        load_keras(_edit_config("k3_nested_two_in_out", tmp_path, wrong_inputs))

    def no_layers(c):       # a "model" without a model's config
        del _sub(c, "two")["config"]["layers"]
    with pytest.raises(LoadError, match=r"nested model 'two' \(Functional\) has no layers"):
        load_keras(_edit_config("k3_nested_two_in_out", tmp_path, no_layers))


def test_name_clash_refused(tmp_path):
    def clash(c):           # an outer layer named as an inlined one
        gru = next(l for l in _layers(c) if l["class_name"] == "GRU")
        old = gru["name"]
        inner = _sub(c, "inner_seq")["config"]["layers"]
        lstm = next(l for l in inner if l["class_name"] == "LSTM")
        new = "inner_seq/" + lstm["config"]["name"]
        gru["name"] = gru["config"]["name"] = new
        for ref in (c["config"]["output_layers"],):
            if ref[0] == old:
                ref[0] = new
    with pytest.raises(LoadError, match=r"two layers named 'inner_seq/lstm"):
        load_keras(_edit_config("k3_nested_seq_in_fn", tmp_path, clash))


def test_sequential_several_outputs_refused():
    """A Sequential holding a model: a layer given several outputs (an RNN's
    return_state) is refused, never read as its first tensor only."""
    sub = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "i", "batch_input_shape": [None, 5, 3]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 3}}]}}
    arch = {"class_name": "Sequential", "config": {"name": "outer", "layers": [
        {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [None, 5, 3]}},
        {"class_name": "LSTM", "config": {"name": "l", "units": 3, "return_sequences": True,
                                          "return_state": True}},
        sub]}}
    with pytest.raises(LoadError, match=r"layer 's' \(Sequential\) is given the several "
                                        r"outputs of 'l'"):
        model_from_keras_config(arch, {})


def test_model_from_config_with_nested_sequential():
    """model_from_keras_config: a Sequential in a Sequential, weights by the inlined
    name or the layer's own name in its model."""
    rng = np.random.RandomState(0)
    k, b = rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=2).astype("float32")
    sub = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "i", "batch_input_shape": [None, 5, 3]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}}
    arch = {"class_name": "Sequential", "config": {"name": "outer", "layers": [
        {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [None, 5, 3]}},
        sub]}}
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    for w in ({"s/d": [k, b]}, {"d": [k, b]}):
        m = model_from_keras_config(copy.deepcopy(arch), w)
        assert _names(m) == ["s/d"]
        np.testing.assert_allclose(m.predict(x), x @ k + b, rtol=1e-5, atol=1e-6)


def test_legacy_h5_missing_inner_weights_named(tmp_path):
    p = tmp_path / "m.h5"
    shutil.copy(model_path("k2_nested_mask_out_bn"), p)
    with h5py.File(p, "r+") as f:
        g = f["model_weights"]["encoder"]
        names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
        g.attrs["weight_names"] = [n.encode() for n in names
                                   if not n.startswith("batch_normalization")]
    with pytest.raises(LoadError, match=r"no weights found for layer "
                                        r"'encoder/batch_normalization\w*'"):
        load_keras(str(p))


def test_legacy_h5_ambiguous_inner_names_refused(tmp_path):
    """Two layers of the same name inside one nested model (user names at two depths):
    a legacy h5 cannot tell their weights apart: refused, naming the layer."""
    p = tmp_path / "m.h5"
    shutil.copy(model_path("k2_nested_fn_two_out"), p)
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        mid = _sub(c, "mid")["config"]["layers"]
        add = next(l for l in mid if l["class_name"] == "Add")
        two = next(l for l in mid if l["class_name"] == "Functional")
        dense = next(l for l in two["config"]["layers"] if l["class_name"] == "Dense")
        old = add["name"]
        for l in mid:   # (rename the Add as the Dense in the inner model)
            for node in l.get("inbound_nodes", []):
                for t in node:
                    if t[0] == old:
                        t[0] = dense["name"]
        add["name"] = add["config"]["name"] = dense["name"]
        mid_cfg = _sub(c, "mid")["config"]
        for r in mid_cfg["output_layers"] if isinstance(mid_cfg["output_layers"][0], list) \
                else [mid_cfg["output_layers"]]:
            if r[0] == old:
                r[0] = dense["name"]
        f.attrs["model_config"] = json.dumps(c)
    with pytest.raises(LoadError, match=r"several layers named 'dense\w*'"):
        load_keras(str(p))


# ------------------------------------- a submodel's masked input merged with other tensors
# (the k3_nested_res_* fixtures: RES, compared with Keras above)


def test_nested_merge_layers_inlined():
    m = load_keras(model_path("k3_nested_res_shared"))
    # the residual submodel called twice: its Dense and Maximum at both calls' places,
    # one object each
    res = [l for l in m.layers if l.name.startswith("res/")]
    assert sorted(type(l).__name__ for l in res) == ["Dense", "Dense", "Maximum", "Maximum"]
    assert len({id(l) for l in res}) == 2
    deep = _names(load_keras(model_path("k3_nested_res_deep_h5")))
    assert any(n.startswith("mid/inner/add") for n in deep)
    assert any(n.startswith("mid/multiply") for n in deep)


def _ref(name, tensor=0):
    return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, tensor]}}


def test_nested_model_call_mask_other_than_computed_refused(tmp_path):
    """The mask a submodel's call records for an input is the mask Keras gives that
    tensor inside it, whichever layers read it (a merge layer there reads it as the
    tensor's own): refused unless it is the mask fastrnn computes for the tensor."""
    def not_a_mask(c):      # the ids themselves given as the embedding's mask
        _sub(c, "two")["inbound_nodes"][0]["kwargs"]["mask"][0] = _ref("ids")
    with pytest.raises(LoadError, match=r"nested model 'two' \(Functional\) is called with "
                                        r"mask=<output 0 of 'ids'> for its input 0 \(<output "
                                        r"0 of 'embedding\w*'>\): not supported; fastrnn "
                                        r"computes masks only from .* which here give "
                                        r"not_equal\(<output 0 of 'ids'>, 0\)"):
        load_keras(_edit_config("k3_nested_res_two_in", tmp_path, not_a_mask))

    def mask_on_unmasked(c):    # the embedding's mask given to the unmasked sequence too
        mask = _sub(c, "two")["inbound_nodes"][0]["kwargs"]["mask"]
        mask[1] = mask[0]
    with pytest.raises(LoadError, match=r"nested model 'two' \(Functional\) is called with "
                                        r"mask=not_equal\(<output 0 of 'ids'>, 0\) for its "
                                        r"input 1 \(<output 0 of 'seq'>\): .* which here give "
                                        r"no mask"):
        load_keras(_edit_config("k3_nested_res_two_in", tmp_path, mask_on_unmasked))

    def swapped(c):         # the Embedding's and the Masking's masks swapped
        mask = _sub(c, "two")["inbound_nodes"][0]["kwargs"]["mask"]
        mask[0], mask[1] = mask[1], mask[0]
    with pytest.raises(LoadError, match=r"nested model 'two' \(Functional\) is called with "
                                        r"mask=any\(not_equal\(<output 0 of 'seq'>, 0\), "
                                        r"axis=-1\) for its input 0"):
        load_keras(_edit_h5("k3_nested_res_two_masks_h5", tmp_path, swapped))

    def deep_other(c):      # two deep: the middle model given the ids as its mask (its
        # input read by its Multiply and, through a call that records mask=None, by the
        # inner model, which Keras runs with the tensor's mask: the one given)
        _sub(c, "mid")["inbound_nodes"][0]["kwargs"]["mask"] = _ref("ids")
    with pytest.raises(LoadError, match=r"nested model 'mid' \(Functional\) is called with "
                                        r"mask=<output 0 of 'ids'> for its input 0"):
        load_keras(_edit_config("k3_nested_res_deep", tmp_path, deep_other))

    def inner_only(c):      # the same, the middle model's input read by the inner model only
        deep_other(c)
        mid = _sub(c, "mid")
        mul = next(l for l in mid["config"]["layers"] if l["class_name"] == "Multiply")
        x = mul["inbound_nodes"][0]["args"][0]
        x[:] = [x[1], x[1]]
    with pytest.raises(LoadError, match=r"nested model 'mid' \(Functional\) is called with "
                                        r"mask=<output 0 of 'ids'> for its input 0"):
        load_keras(_edit_config("k3_nested_res_deep", tmp_path, inner_only))


def test_nested_merge_refusals_kept(tmp_path):
    """What Keras refuses (a merge layer called with mask=: a TypeError in Keras 3) and
    what fastrnn does not run (an attention layer reading the masked input with another
    tensor, a constant among a merge's inputs) stay clear LoadErrors."""
    def merge_mask(c):
        add = next(l for l in _sub(c, "res")["config"]["layers"] if l["class_name"] == "Add")
        node = add["inbound_nodes"][0]
        node["kwargs"]["mask"] = [node["args"][0][0], node["args"][0][0]]
    with pytest.raises(LoadError, match=r"layer 'res/add\w*' \(Add\) is called with "
                                        r"mask=\[<output 0 of 'embedding\w*'>, <output 0 of "
                                        r"'embedding\w*'>\]: not supported \(one mask tensor "
                                        r"expected\)"):
        load_keras(_edit_config("k3_nested_res_add", tmp_path, merge_mask))

    def attention(c):
        add = next(l for l in _sub(c, "res")["config"]["layers"] if l["class_name"] == "Add")
        add["class_name"] = "Attention"
    with pytest.raises(LoadError, match=r"nested model 'res': layer 'add\w*' \(Attention\) "
                                        r"reads the model's masked input with other tensors: "
                                        r"not supported"):
        load_keras(_edit_config("k3_nested_res_add", tmp_path, attention))

    def constant(c):
        add = next(l for l in _sub(c, "res")["config"]["layers"] if l["class_name"] == "Add")
        add["inbound_nodes"][0]["args"][0].append(2.0)
    with pytest.raises(LoadError, match=r"layer 'res/add\w*' \(Add\) is called with 2.0 among "
                                        r"its inputs: not supported"):
        load_keras(_edit_config("k3_nested_res_add", tmp_path, constant))
