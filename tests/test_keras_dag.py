"""Models whose layers branch and merge (a graph, not a chain): fastrnn.model.Model's
``inputs`` graph, the merge layers, and Keras functional models made of them (fixtures
k3_dag_* by real Keras 3.15, tests/fixtures/make_keras3.py)."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("h5py")
import h5py  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras, model_from_keras_config  # noqa: E402
from fastrnn.model import (INPUT, Add, Average, Concatenate, Dense, Masking, Maximum,  # noqa: E402
                           Minimum, Model, Multiply, Subtract)
from test_keras import _edit_config, assert_matches, as_list, k2_ref, model_path, reference  # noqa: E402

DAG = ["k3_dag_bilstm_pool_concat", "k3_dag_residual_add_ln", "k3_dag_gru_two_heads",
       "k3_dag_concat_time_masks", "k3_dag_merge_ops_masking", "k3_refused_branched_encdec"]
TOL = 1e-5


def check(model, name, **kw):
    return assert_matches(model, name, tol=TOL, **kw)


@pytest.mark.parametrize("name", DAG)
def test_graph_fixtures_match_keras(name, tmp_path):
    model = load_keras(model_path(name))
    assert model.inputs is not None           # a graph, not a chain
    check(model, name)
    check(model, name, batch_size=2)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert again.inputs == model.inputs and repr(again) == repr(model)
    check(again, name, batch_size=1)


def test_graph_shape_and_summary():
    model = load_keras(model_path("k3_dag_bilstm_pool_concat"))
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Embedding", "Bidirectional", "GlobalPooling1D", "GlobalPooling1D",
                     "Concatenate", "Dense"]
    assert model.inputs == [[(INPUT, 0)], [(0, 0)], [(1, 0)], [(1, 0)], [(2, 0), (3, 0)],
                            [(4, 0)]]
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "reads" in text and "global_average_pooling1d" in text
    row = next(r for r in text.splitlines() if r.startswith("concatenate"))
    assert "global_average_pooling1d" in row and "global_max_pooling1d" in row
    assert " <- [embedding" in repr(model)
    # a head reading a returned state names the tensor
    heads = load_keras(model_path("k3_dag_gru_two_heads"))
    assert any(f"{heads.layers[0].name}[1]" in r for r in repr(heads).splitlines())


def test_keras2_inbound_form_of_a_graph(tmp_path):
    """tf.keras 2 writes a merge layer's inputs as one node of several entries
    ([[name, node, tensor, kwargs], ...]): the same graph in that form gives the same."""
    name = "k3_dag_residual_add_ln"
    p = tmp_path / "k2form.h5"
    shutil.copy(model_path(name), p)

    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        for l in c["config"]["layers"]:
            node = (l.get("inbound_nodes") or [None])[0]
            if node is None:
                continue
            a = node["args"][0]
            l["inbound_nodes"] = [[k2_ref(t) for t in a] if isinstance(a, list) else [k2_ref(a)]]
        f.attrs["model_config"] = json.dumps(c)
        f.attrs["keras_version"] = "2.15.0"
    check(load_keras(str(p)), name)


# ----------------------------------------------------------------------------- masks

def _seq(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def test_merge_masks_follow_keras():
    """Keras 3.15 (base_merge.py, concatenate.py, multiply.py): the elementwise merges'
    output mask is any-of the inputs' masks when every input has one (else none);
    Multiply counts a masked entry as 1 and zeroes the output where all are masked;
    Maximum / Minimum take the other side's value at a masked entry; Concatenate spreads
    the masks (all True for an input without one) and joins them along its axis."""
    rng = np.random.RandomState(0)
    a, b = _seq(rng, 2, 5, 3), _seq(rng, 2, 5, 3)
    ma = np.array([[1, 1, 0, 0, 1], [0, 1, 1, 1, 1]], bool)
    mb = np.array([[1, 0, 0, 1, 1], [0, 0, 1, 1, 1]], bool)
    y, m = Add().call([a, b], [ma, mb])
    assert np.array_equal(y, a + b) and np.array_equal(m, ma | mb)
    assert Add().call([a, b], [ma, None])[1] is None
    y, m = Multiply().call([a, b], [ma, mb])
    want = np.where(ma[..., None], a, 1) * np.where(mb[..., None], b, 1)
    assert np.array_equal(y, np.where((ma | mb)[..., None], want, 0))
    assert np.array_equal(m, ma | mb)
    y, m = Multiply().call([a, b], [ma, None])       # no output mask, masked entries still 1
    assert m is None and np.array_equal(y, np.where(ma[..., None], a, 1) * b)
    y, m = Maximum().call([a, b], [ma, mb])
    bb = np.where(mb[..., None], b, a)
    aa = np.where(ma[..., None], a, bb)
    assert np.array_equal(y, np.maximum(aa, bb)) and np.array_equal(m, ma | mb)
    y, _ = Minimum().call([a, b], [None, mb])
    assert np.array_equal(y, np.minimum(a, np.where(mb[..., None], b, a)))
    y, m = Average().call([a, b, a], None)
    assert m is None and np.allclose(y, (a + b + a) / 3)
    y, m = Subtract().call([a, b], [ma, ma])
    assert np.array_equal(y, a - b) and np.array_equal(m, ma)
    # Concatenate: features (any-of, missing = all kept), steps (one after the other)
    y, m = Concatenate().call([a, b], [ma, mb])
    assert y.shape == (2, 5, 6) and np.array_equal(m, ma | mb)
    assert Concatenate().call([a, b], [ma, None])[1].all()
    y, m = Concatenate(axis=1).call([a, b], [ma, None])
    assert y.shape == (2, 10, 3)
    assert np.array_equal(m, np.concatenate([ma, np.ones_like(mb)], axis=1))
    assert Concatenate(axis=1).call([a, b], None)[1] is None


def test_masks_travel_per_tensor_in_a_graph():
    """Two Masking branches with different masks merged: the GRU after the Add sees
    any-of them (not the first branch's mask)."""
    from fastrnn import GRU
    from fastrnn.model import KerasRNN
    rng = np.random.RandomState(1)
    x = _seq(rng, 2, 6, 3)
    x[0, 1] = 0.0
    x[1, 4] = 0.0
    x2 = x.copy()
    x2[:, :, :] += 0.5
    core = GRU(3, 2, batch_first=True)
    rnn = KerasRNN(core, return_sequences=True)
    model = Model([Masking(0.0), Masking(0.5), Add(), rnn],
                  inputs=[[(INPUT, 0)], [(INPUT, 0)], [(0, 0), (1, 0)], [(2, 0)]])
    y = model(x)
    ma = np.any(x != 0, -1)
    mb = np.any(x != 0.5, -1)
    want = rnn.call(x * ma[..., None] + x * mb[..., None], ma | mb)[0]
    assert np.array_equal(y, want)


# ----------------------------------------------------------------------------- errors

def _dense(i, o, seed=0):
    return Dense(np.random.RandomState(seed).normal(size=(i, o)).astype(np.float32))


def test_graph_model_errors():
    d1, d2, d3 = _dense(4, 3), _dense(4, 5), _dense(3, 2)
    x = np.ones((2, 4), np.float32)
    # shape mismatch: named, at call time
    m = Model([d1, d2, Add(name="sum")], inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0)]])
    with pytest.raises(ValueError, match=r"sum: Add got incompatible shapes"):
        m(x)
    m = Model([_dense(4, 3, 1), _dense(4, 3, 2), Concatenate(axis=0, name="cat")],
              inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0)]])
    with pytest.raises(ValueError, match="cat: axis 0 is out of range"):
        m(x)
    with pytest.raises(ValueError, match="sum: Add needs tensors of one batch size"):
        Add(name="sum").call([x, x[:1, None]])
    # a reference to the layer itself or a later one (no cycle can be written)
    with pytest.raises(ValueError, match="must come before"):
        Model([d1, d3], inputs=[[(1, 0)], [(0, 0)]])
    with pytest.raises(ValueError, match="must come before"):
        Model([d1, d3], inputs=[[(INPUT, 0)], [(1, 0)]])
    # unknown references: no such layer, tensor, input
    with pytest.raises(ValueError, match="must come before"):
        Model([d1, d3], inputs=[[(INPUT, 0)], [(7, 0)]])
    with pytest.raises(ValueError, match="return tensor 1"):
        Model([d1, d3], inputs=[[(INPUT, 0)], [(0, 1)]])
    with pytest.raises(ValueError, match="one input, tensor 0"):
        Model([d1, d3], inputs=[[(INPUT, 1)], [(0, 0)]])
    with pytest.raises(ValueError, match="one entry per layer"):
        Model([d1, d3], inputs=[[(INPUT, 0)]])
    # how many tensors a layer reads
    with pytest.raises(ValueError, match=r"'sub'.*reads 2, given 3"):
        Model([d1, _dense(4, 3), Subtract(name="sub")],
              inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0), (0, 0)]])
    with pytest.raises(ValueError, match="reads 1, given 2"):
        Model([d1, _dense(4, 3), _dense(3, 2)],
              inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0)]])
    # a stranded layer, a merge layer in a chain
    with pytest.raises(ValueError, match="feeds no other layer and no output"):
        Model([d1, _dense(4, 3), d3], inputs=[(INPUT, 0), (INPUT, 0), (0, 0)])
    with pytest.raises(ValueError, match="merges several tensors: give the model's inputs"):
        Model([d1, Add()])


def test_graph_model_save_round_trip(tmp_path):
    a, b = _dense(4, 3, 1), _dense(4, 3, 2)
    model = Model([a, b, Maximum(), Concatenate(axis=-1), _dense(6, 2, 3)],
                  inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0)], [(2, 0), (0, 0)],
                          [(3, 0)]], outputs=[(4, 0), (2, 0)], name="g")
    x = np.random.RandomState(4).normal(size=(5, 4)).astype(np.float32)
    want = model(x)
    assert json.loads(json.dumps(model.get_config()))["inputs"][3] == [[2, 0], [0, 0]]
    path = tmp_path / "g.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    got = again.predict(x, batch_size=2)
    assert len(got) == 2 and all(np.allclose(p, q, atol=1e-6) for p, q in zip(got, want))
    assert repr(again) == repr(model)


def test_stream_refuses_a_merge_along_the_steps_by_name():
    with pytest.raises(ValueError, match=r"cannot stream layer 'concatenate\w*' of type "
                                         r"Concatenate along axis 1"):
        fastrnn.Stream(load_keras(model_path("k3_dag_concat_time_masks")))


def test_keras_refusals_name_the_layer(tmp_path):
    name = "k3_dag_bilstm_pool_concat"

    def dot(c):             # Dot over the batch axis (Keras's refuses it)
        for l in c["config"]["layers"]:
            if l["class_name"] == "Concatenate":
                l["class_name"] = "Dot"
                l["config"]["axes"] = 0
    with pytest.raises(LoadError, match=r"layer 'concatenate\w*' \(Dot\): axes=0 is out of "
                                        r"range \(or the batch axis\) for the first input"):
        load_keras(_edit_config(name, tmp_path, dot))

    def shared(c):          # a second call of the Dense that nothing reads
        l = next(l for l in c["config"]["layers"] if l["class_name"] == "Dense")
        l["inbound_nodes"] = l["inbound_nodes"] * 2
    with pytest.raises(LoadError, match=r"layer 'dense\w*' \(Dense\) is called 2 times, "
                                        r"and its call 1 \(counting from 0\) is not on the "
                                        "way from the model's inputs to its outputs"):
        load_keras(_edit_config(name, tmp_path, shared))

    def two_inputs(c):      # a Dense given both pooled tensors, not a merge layer
        ls = c["config"]["layers"]
        cat = next(l for l in ls if l["class_name"] == "Concatenate")
        dense = next(l for l in ls if l["class_name"] == "Dense")
        dense["inbound_nodes"] = cat["inbound_nodes"]
        ls.remove(cat)
    with pytest.raises(LoadError, match=r"'dense\w*' \(Dense\) takes 2 inputs; fastrnn "
                                        "supports several only for the merge layers"):
        load_keras(_edit_config(name, tmp_path, two_inputs))

    def other_mask(c):      # the Dense after the Concatenate given the Embedding's mask
        ls = c["config"]["layers"]
        ne = next(l for l in ls if l["class_name"] == "NotEqual")
        gap = next(l for l in ls if l["class_name"] == "GlobalAveragePooling1D")
        mask = gap["inbound_nodes"][0]["kwargs"]["mask"]
        assert mask["config"]["keras_history"][0] == ne["name"]
        cat = next(l for l in ls if l["class_name"] == "Concatenate")
        cat["inbound_nodes"][0]["kwargs"] = {"mask": mask}
    with pytest.raises(LoadError, match=r"'concatenate\w*' \(Concatenate\) is called with "
                                        r"mask=not_equal\(.*not supported"):
        load_keras(_edit_config(name, tmp_path, other_mask))


def test_returned_states_carry_no_mask():
    """A masked RNN's returned state (B, H) has no mask (Keras's compute_mask): a merge
    of it sees none (the sequence's (B, T) mask would not even fit it)."""
    from fastrnn import LSTM
    from fastrnn.model import KerasRNN
    x = np.random.RandomState(2).normal(size=(2, 5, 3)).astype(np.float32)
    x[0, 3:] = 0.0
    rnn = KerasRNN(LSTM(3, 2, batch_first=True), return_sequences=True, return_state=True)
    model = Model([Masking(0.0), rnn, Multiply()],
                  inputs=[(INPUT, 0), (0, 0), [(1, 1), (1, 2)]])
    _, h, c = rnn.call(x * np.any(x != 0, -1)[..., None], np.any(x != 0, -1))[0]
    assert np.array_equal(model(x), h * c)


def test_stream_refuses_a_layer_reading_off_the_chain():
    """A graph without a merge layer: a Dense on the LSTM's returned cell state (not its
    sequence) must be refused by Stream, which would feed it the sequence."""
    from fastrnn import LSTM
    from fastrnn.model import KerasRNN
    rnn = KerasRNN(LSTM(3, 2, batch_first=True), return_sequences=True, return_state=True)
    model = Model([rnn, _dense(2, 4)], inputs=[(INPUT, 0), (0, 2)], name="g")
    with pytest.raises(ValueError, match=r"cannot stream model 'g': layer 'dense\w*' reads "
                                         r"\w+\[2\], not the first tensor of layer"):
        fastrnn.Stream(model)
    # the same layers as a chain stream
    chain = Model([KerasRNN(LSTM(3, 2, batch_first=True), return_sequences=True),
                   _dense(2, 4)])
    assert chain.inputs is None
    fastrnn.Stream(chain)


# ----------------------------------------------------------------------------- audit fixes

def _tensor(name, t=0, node=0):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": None, "dtype": "float32", "keras_history": [name, node, t]}}


def _layer(c, name):
    return next(l for l in c["config"]["layers"] if l["name"] == name)


def test_a_constant_among_a_merge_layers_inputs_is_refused(tmp_path):
    """Keras records L.Add()([a, np.ones(...)])'s constant as a __numpy__ value (tf.keras
    2 as ["_CONSTANT_VALUE", -1, v]): refused, naming the layer, not dropped."""
    def const(c):
        _layer(c, "multiply")["inbound_nodes"][0]["args"][0][1] = {
            "class_name": "__numpy__", "config": {"value": [[[1.0] * 4]], "dtype": "float32"}}
    with pytest.raises(LoadError, match=r"layer 'multiply' \(Multiply\) is called with a "
                                        r"constant array \(__numpy__\) of shape \(1, 1, 4\) "
                                        "among its inputs: not supported"):
        load_keras(_edit_config("k3_dag_merge_ops_masking", tmp_path, const))
    from fastrnn.io.keras import model_from_keras_config
    arch = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "a", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 4, 3], "name": "a"}},
        {"class_name": "Add", "name": "add", "config": {"name": "add"},
         "inbound_nodes": [[["a", 0, 0, {}], ["_CONSTANT_VALUE", -1, 1.0]]]}],
        "input_layers": [["a", 0, 0]], "output_layers": [["add", 0, 0]]}}
    with pytest.raises(LoadError, match=r"'add' \(Add\) is called with a constant "
                                        r"\(_CONSTANT_VALUE\) 1.0 among its inputs"):
        model_from_keras_config(arch, {}, keras_version="2.15.0")


def _as_op(l, args):
    """Layer entry ``l`` as Keras 3 records a keras.ops call of the same class name."""
    l.update(module="keras.src.ops.numpy", registered_name=l["class_name"],
             config={"name": l["name"]})
    l["inbound_nodes"] = [{"args": args, "kwargs": {}}]


def test_keras_ops_named_like_merge_layers_run_as_ops():
    """ops.multiply / ops.subtract / ops.concatenate ... share the merge layers' class
    names (Keras's plain ops apply no mask rules, take other arguments): told apart by
    module (a legacy h5 config records none: by the layer keys an op's config lacks),
    they run as fastrnn.model.Op (k3_ops_*: Keras's numbers, test_keras)."""
    from fastrnn.model import Op, _Merge
    for name, ops in (("k3_ops_attention", {"multiply", "multiply_1", "concatenate"}),
                      ("k3_ops_masked_h5", {"subtract"})):
        m = load_keras(model_path(name))
        got = {l.name for l in m.layers if isinstance(l, Op)}
        assert ops <= got and not any(isinstance(l, _Merge) for l in m.layers), (name, got)


@pytest.mark.parametrize("legacy", [False, True])
def test_keras_ops_outside_the_table_are_refused(tmp_path, legacy):
    """An operation fastrnn does not run is refused on the data path, named; the mask
    ops Keras records off it still load."""
    def op(c):
        l = _layer(c, "multiply")
        _as_op(l, l["inbound_nodes"][0]["args"][0])
        l["class_name"] = l["registered_name"] = "Einsum"
        if legacy:
            for e in c["config"]["layers"]:
                e.pop("module", None)
                e.pop("registered_name", None)
    with pytest.raises(LoadError, match=r"'multiply' is a Keras operation, not a layer "
                                        r"\(Einsum: keras.ops.einsum"):
        load_keras(_edit_config("k3_dag_merge_ops_masking", tmp_path, op))


def test_a_merge_of_a_sequence_and_a_vector_follows_keras(tmp_path):
    """Keras 3 merges a (B, T, H) sequence with a (B, H) vector by expanding the vector
    at axis 1 (broadcast over the steps): Add([gru sequence, its max over time])."""
    name = "k3_dag_gru_two_heads"

    def seq_vec(c):
        ls = c["config"]["layers"]
        add = {"module": "keras.layers", "class_name": "Add", "registered_name": None,
               "name": "add_sv", "config": {"name": "add_sv", "trainable": True,
                                            "dtype": "float32"},
               "inbound_nodes": [{"args": [[_tensor("gru_23"),
                                            _tensor("global_max_pooling1d_4")]],
                                  "kwargs": {}}]}
        ls.insert(ls.index(_layer(c, "time_distributed_4")), add)
        _layer(c, "time_distributed_4")["inbound_nodes"][0]["args"] = [_tensor("add_sv")]
    model = load_keras(_edit_config(name, tmp_path, seq_vec))
    base = load_keras(model_path(name))
    x = reference(name)[0]
    gru = next(l for l in base.layers if type(l).__name__ == "KerasRNN")
    td = base.layers[-1]
    seq = gru(x)[0]
    want = td(seq + seq.max(axis=1)[:, None])
    got = as_list(model.predict(x))
    assert np.allclose(got[1], want, rtol=1e-6, atol=1e-6)

    # the Concatenate of a sequence and a vector Keras cannot make: refused at load
    def cat(c):
        _layer(c, "concatenate_1")["inbound_nodes"][0]["args"] = [
            [_tensor("gru_23"), _tensor("global_max_pooling1d_4")]]
    with pytest.raises(LoadError, match=r"'concatenate_1' \(Concatenate\) needs inputs of "
                                        r"one rank, given tensors of ranks \[3, 2\]"):
        load_keras(_edit_config(name, tmp_path, cat))
    for axis in (5, -3, 2):
        def cat_axis(c):
            _layer(c, "concatenate_1")["config"]["axis"] = axis
        with pytest.raises(LoadError, match=rf"axis {axis} is out of range \(or the batch "
                                            r"axis\) for its 2-D inputs"):
            load_keras(_edit_config(name, tmp_path, cat_axis))


def test_merges_of_tensors_of_different_ranks():
    rng = np.random.RandomState(4)
    seq, vec = _seq(rng, 2, 5, 3), _seq(rng, 2, 3)
    m = np.ones((2, 5), bool)
    m[0, 3:] = False
    for layer in (Add(), Subtract(), Average(), Multiply(), Maximum(), Minimum()):
        ref = type(layer)().call([seq, np.broadcast_to(vec[:, None], seq.shape)])[0]
        out, mask = layer.call([seq, vec])
        assert np.array_equal(out, ref) and mask is None
        # the vector, expanded, reaches the merge without a mask: the sequence's applies
        want = type(layer)().call([seq, np.broadcast_to(vec[:, None], seq.shape)],
                                  [m, None])[0]
        assert np.array_equal(layer.call([seq, vec], [m, None])[0], want)
    with pytest.raises(ValueError, match="masked tensors of different ranks"):
        Add().call([seq, vec], [m, np.ones(2, bool)])


def test_refusals_that_show_a_concatenates_mask(tmp_path):
    """A refusal naming the mask a masked Concatenate gives (an expression of
    concatenate(...)) shows it (was: IndexError, "malformed Keras config")."""
    def no_mask(c):
        _layer(c, "lstm_31")["inbound_nodes"][0]["kwargs"]["mask"] = None
    with pytest.raises(LoadError, match=r"'lstm_31' \(LSTM\) is called with mask=None: not "
                                        r"supported; .* which here give any\(concatenate\(\["
                                        r"logical_or\(expand_dims\("):
        load_keras(_edit_config("k3_dag_concat_time_masks", tmp_path, no_mask))


def _deep_add_config(n):
    """Keras 3's config of Masking -> n x Add([h, Dense(h)]) -> LSTM, with the masks it
    records (Add's: logical_or of its inputs' masks, one op per Add)."""
    def layer(cls, name, cfg, args, kwargs=None, module="keras.layers"):
        return {"module": module, "class_name": cls, "name": name,
                "registered_name": None if module == "keras.layers" else cls,
                "config": {"name": name, **cfg},
                "inbound_nodes": [{"args": args, "kwargs": kwargs or {}}] if args else []}
    lay = {"trainable": True, "dtype": "float32"}
    ls = [layer("InputLayer", "inp", {"batch_shape": [None, 5, 4], "dtype": "float32"}, []),
          layer("NotEqual", "ne", {}, [_tensor("inp"), 0.0], module="keras.src.ops.numpy"),
          layer("Any", "any", {"axis": -1, "keepdims": False}, [_tensor("ne")],
                module="keras.src.ops.numpy"),
          layer("Masking", "mask", {**lay, "mask_value": 0.0}, [_tensor("inp")])]
    h, m = "mask", "any"
    for k in range(n):
        ls.append(layer("Dense", f"d{k}", {**lay, "units": 4}, [_tensor(h)]))
        ls.append(layer("LogicalOr", f"or{k}", {}, [_tensor(m), _tensor(m)],
                        module="keras.src.ops.numpy"))
        ls.append(layer("Add", f"add{k}", lay, [[_tensor(h), _tensor(f"d{k}")]]))
        h, m = f"add{k}", f"or{k}"
    ls.append(layer("LSTM", "lstm", {**lay, "units": 3}, [_tensor(h)],
                    {"training": False, "mask": _tensor(m)}))
    return {"class_name": "Functional", "config": {
        "name": "deep", "layers": ls, "input_layers": [["inp", 0, 0]],
        "output_layers": [["lstm", 0, 0]]}}


def test_deep_mask_expressions_are_accepted():
    """Masks nest as deep as the graph (70 masked Adds: logical_or 70 deep, each
    sharing its operand twice): parsed without a depth limit, each op once."""
    from fastrnn.io.keras import model_from_keras_config
    rng = np.random.RandomState(6)
    n = 70
    w = {f"d{k}": [rng.normal(scale=0.3, size=(4, 4)).astype(np.float32),
                   np.zeros(4, np.float32)] for k in range(n)}
    w["lstm"] = [rng.normal(scale=0.3, size=s).astype(np.float32)
                 for s in ((4, 12), (3, 12), (12,))]
    arch = _deep_add_config(n)
    model = model_from_keras_config(arch, w)
    # the same graph without the recorded masks: fastrnn's own mask propagation
    plain = json.loads(json.dumps(arch))
    for l in plain["config"]["layers"]:
        for node in l["inbound_nodes"]:
            node["kwargs"].pop("mask", None)
    x = _seq(rng, 3, 5, 4)
    x[0, 3:] = 0.0
    x[1, :2] = 0.0
    want = model_from_keras_config(plain, w).predict(x)
    assert np.array_equal(model.predict(x), want)
    # a wrong mask that deep is still refused
    bad = json.loads(json.dumps(arch))
    bad["config"]["layers"][1]["inbound_nodes"][0]["args"][1] = 1.0
    with pytest.raises(LoadError, match=r"'lstm' \(LSTM\) is called with mask="):
        model_from_keras_config(bad, w)


def test_a_cast_in_a_mask_is_accepted(tmp_path):
    """A float64 Masking on a float32 input: Keras casts the input before the mask's
    not_equal (a Cast op): the mask is the Masking layer's all the same."""
    name = "k3_dag_merge_ops_masking"

    def cast(dtype):
        def edit(c):
            ls = c["config"]["layers"]
            ls.insert(1, {"module": "keras.src.ops.core", "class_name": "Cast",
                          "registered_name": "Cast", "name": "cast",
                          "config": {"name": "cast", "dtype": dtype},
                          "inbound_nodes": [{"args": [_tensor("input_layer_55")],
                                             "kwargs": {}}]})
            _layer(c, "not_equal_30")["inbound_nodes"][0]["args"][0] = _tensor("cast")
        return edit
    check(load_keras(_edit_config(name, tmp_path, cast("float64"))), name)
    with pytest.raises(LoadError, match=r"is called with mask=any\(not_equal\(<output 0 "
                                        r"of 'cast'>, 0\), axis=-1\): not supported"):
        load_keras(_edit_config(name, tmp_path, cast("int32")))


def test_references_to_missing_tensors_are_named(tmp_path):
    name = "k3_dag_gru_two_heads"

    def tensor3(c):         # tensor 3 of a Dense of one output
        _layer(c, "concatenate_1")["inbound_nodes"][0]["args"][0][1] = \
            _tensor("global_max_pooling1d_4", 3)
    with pytest.raises(LoadError, match=r"'concatenate_1' \(Concatenate\) reads <output 3 "
                                        r"of 'global_max_pooling1d_4'> "
                                        r"\(GlobalMaxPooling1D\), which has 1 output\(s\)"):
        load_keras(_edit_config(name, tmp_path, tensor3))

    def out5(c):
        c["config"]["output_layers"][0] = ["dense_36", 0, 5]
    with pytest.raises(LoadError, match=r"the model's output is <output 5 of 'dense_36'> "
                                        r"\(Dense\), which has 1 output\(s\)"):
        load_keras(_edit_config(name, tmp_path, out5))

    def negative(c):
        _layer(c, "dense_36")["inbound_nodes"][0]["args"][0] = _tensor("concatenate_1", -1)
    with pytest.raises(LoadError, match=r"the reference to layer 'concatenate_1' reads call "
                                        r"0, tensor -1: indexes must be >= 0"):
        load_keras(_edit_config(name, tmp_path, negative))

    def node1(c):           # node 1 of a layer called once
        c["config"]["output_layers"][0] = ["dense_36", 1, 0]
    with pytest.raises(LoadError, match=r"the model's outputs reads call 1 \(counting from "
                                        r"0\) of layer 'dense_36', which is called 1 time"):
        load_keras(_edit_config(name, tmp_path, node1))

# ------------------------------------------- a Sequential after a layer of several outputs
# (found by a differential audit against Keras 3.15.1: Keras passes the next layer every
# output of the one before; fastrnn passed the first, silently wrong)

def _seq_lstm_weights(rng, I, H):
    return [rng.normal(0, 0.5, (I, 4 * H)).astype("f4"), rng.normal(0, 0.5, (H, 4 * H)).astype("f4"),
            rng.normal(0, 0.5, 4 * H).astype("f4")]


def _seq_inp(F):
    return ("InputLayer", {"name": "in", "batch_shape": [None, None, F]})


@pytest.mark.parametrize("cls,axis", [("Concatenate", -1), ("Concatenate", 1), ("Add", None)])
def test_sequential_merge_after_bidirectional_none(cls, axis):
    rng = np.random.default_rng(0)
    w = {"bi": _seq_lstm_weights(rng, 3, 4) + _seq_lstm_weights(rng, 3, 4)}
    bi = {"name": "bi", "merge_mode": None,
          "layer": {"class_name": "LSTM", "config": {"name": "f", "units": 4,
                                                      "return_sequences": True}}}
    merge = {"name": "m"} if axis is None else {"name": "m", "axis": axis}
    seq = model_from_keras_config([_seq_inp(3), ("Bidirectional", bi), (cls, merge)], w)
    pair = model_from_keras_config([_seq_inp(3), ("Bidirectional", bi)], w)
    x = rng.normal(size=(2, 5, 3)).astype("f4")
    f, b = pair.predict(x)
    want = f + b if cls == "Add" else np.concatenate([f, b], axis=axis)
    np.testing.assert_allclose(seq.predict(x), want, rtol=0, atol=1e-6)


def test_sequential_merge_after_return_state():
    rng = np.random.default_rng(1)
    w = {"lstm": _seq_lstm_weights(rng, 3, 4)}
    lstm = {"name": "lstm", "units": 4, "return_state": True}
    seq = model_from_keras_config([_seq_inp(3), ("LSTM", lstm), ("Concatenate", {"name": "c"})], w)
    three = model_from_keras_config([_seq_inp(3), ("LSTM", lstm)], w)
    x = rng.normal(size=(2, 5, 3)).astype("f4")
    np.testing.assert_allclose(seq.predict(x), np.concatenate(three.predict(x), -1), atol=1e-6)


def test_sequential_single_input_layer_after_several_outputs_is_refused():
    """(Keras itself refuses a Dense after an RNN returning its states in a Sequential.)"""
    rng = np.random.default_rng(2)
    w = {"lstm": _seq_lstm_weights(rng, 3, 4), "d": [np.ones((4, 2), "f4"), np.zeros(2, "f4")]}
    with pytest.raises(LoadError, match="takes 3 inputs"):
        model_from_keras_config([_seq_inp(3), ("LSTM", {"name": "lstm", "units": 4,
                                                    "return_state": True}),
                                 ("Dense", {"name": "d", "units": 2})], w)

def test_unsupported_recurrent_activation_is_named_as_such():
    """A refused recurrent_activation names that key, not 'activation'."""
    rng = np.random.default_rng(3)
    w = {"g": [rng.normal(size=(2, 6)).astype("f4"), rng.normal(size=(2, 6)).astype("f4"),
               np.zeros((2, 6), "f4")]}
    with pytest.raises(LoadError, match="recurrent_activation 'gelu' is not supported"):
        model_from_keras_config([_seq_inp(2), ("GRU", {"name": "g", "units": 2,
                                                       "recurrent_activation": "gelu"})], w)
