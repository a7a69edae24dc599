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
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import (INPUT, Add, Average, Concatenate, Dense, Masking, Maximum,  # noqa: E402
                           Minimum, Model, Multiply, Subtract)
from test_keras import _edit_config, as_list, model_path, reference  # noqa: E402

DAG = ["k3_dag_bilstm_pool_concat", "k3_dag_residual_add_ln", "k3_dag_gru_two_heads",
       "k3_dag_concat_time_masks", "k3_dag_merge_ops_masking", "k3_refused_branched_encdec"]
TOL = 1e-5


def check(model, name, **kw):
    x, ys = reference(name)
    out = as_list(model.predict(x, **kw))
    assert len(out) == len(ys)
    for a, b in zip(out, ys):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() <= TOL


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

    def k2(ref):
        h = ref["config"]["keras_history"]
        return [h[0], h[1], h[2], {}]
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        for l in c["config"]["layers"]:
            node = (l.get("inbound_nodes") or [None])[0]
            if node is None:
                continue
            a = node["args"][0]
            l["inbound_nodes"] = [[k2(t) for t in a] if isinstance(a, list) else [k2(a)]]
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
    with pytest.raises(ValueError, match="sum: Add needs tensors of one rank"):
        Add(name="sum").call([x, x[:, None]])
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


def test_stream_refuses_a_merge_layer_by_name():
    with pytest.raises(ValueError, match=r"cannot stream layer 'add' of type Add"):
        fastrnn.Stream(load_keras(model_path("k3_dag_residual_add_ln")))


def test_keras_refusals_name_the_layer(tmp_path):
    name = "k3_dag_bilstm_pool_concat"

    def dot(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "Concatenate":
                l["class_name"] = "Dot"
                l["config"]["axes"] = -1
    with pytest.raises(LoadError, match=r"unsupported Keras layer\(s\): 'concatenate\w*' \(Dot\)"):
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
                                         r"\w+\[2\], not the tensor of the layer before it"):
        fastrnn.Stream(model)
    # the same layers as a chain stream
    chain = Model([KerasRNN(LSTM(3, 2, batch_first=True), return_sequences=True),
                   _dense(2, 4)])
    assert chain.inputs is None
    fastrnn.Stream(chain)
