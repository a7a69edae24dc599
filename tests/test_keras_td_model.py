"""A Keras TimeDistributed wrapping a model (a sentence encoder of a hierarchical network,
the per-frame CNN of a CNN-LSTM): the loader inlines the model's layers between a
FoldTime (the steps folded into the batch) and an UnfoldTime, so masks made inside the
model reach its layers as in Keras.  Parity with real Keras on the fixtures
k3_td_model_* (Keras 3.15) and k2_td_model_* (tf-keras 2.21) runs in test_keras.py
(test_matches_keras over every fixture); here: the structure, the model's own format,
batch splits, float64, the refusals and the two layers themselves; and tf.keras 2's masks
through TimeDistributed layers (k2_td_masks_*, TimeDistributed(masks="keras2"))."""
import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import FoldTime, UnfoldTime  # noqa: E402
from test_keras import _edit_config, model_path, reference  # noqa: E402

NAMES = ["k3_td_model_han", "k3_td_model_video_h5", "k3_td_model_nested",
         "k2_td_model_han", "k2_td_model_video", "k2_td_model_mask_out"]
TOL = 1e-6


def _types(model):
    return [(l.name, type(l).__name__) for l in model.layers]


def test_the_model_runs_between_a_fold_and_an_unfold():
    m = load_keras(model_path("k3_td_model_han"))
    t = _types(m)
    assert t[0] == ("time_distributed/fold", "FoldTime")
    assert ("time_distributed/embedding", "Embedding") in t
    assert ("time_distributed/attention", "Attention") in t
    i = t.index(("time_distributed", "UnfoldTime"))
    # (the unfold reads the model's output and the TimeDistributed's own input)
    assert m.inputs[i] == [(i - 1, 0), (fastrnn.model.INPUT, 0)]
    assert m.count_params() == sum(l.count_params() for l in m.layers)


def test_weights_of_the_legacy_h5_group_and_keras3_paths_agree():
    # the same layers' weights from a Keras 3 .keras file (layers/time_distributed/layer/
    # layers/...) and a tf-keras 2 h5 file (the TimeDistributed's group, weight names
    # through the inner layers' names) give Keras's numbers (test_keras); here the video
    # model's count: Conv2D, BatchNormalization, Dense inside, LSTM and Dense outside
    for name in ("k3_td_model_video_h5", "k2_td_model_video"):
        m = load_keras(model_path(name))
        kinds = [type(l).__name__ for l in m.layers]
        assert kinds == ["FoldTime", "Conv2D", "Pooling2D", "BatchNormalization", "Flatten",
                         "Dense", "UnfoldTime", "KerasRNN", "TimeDistributed"], (name, kinds)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_and_batch_splits(name, tmp_path):
    m = load_keras(model_path(name))
    x, ys = reference(name)
    p = tmp_path / "m.fastrnn"
    m.save(p)
    again = fastrnn.load(str(p))
    assert _types(again) == _types(m)
    np.testing.assert_array_equal(again.predict(x), m.predict(x))
    # (batch splits: the fold of each part is its own)
    np.testing.assert_allclose(m.predict(x, batch_size=1), ys[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(m.predict(x, batch_size=2), ys[0], rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["k3_td_model_han", "k2_td_model_video"])
def test_float64(name):
    m = load_keras(model_path(name), dtype="float64")
    x, ys = reference(name)
    y = m.predict(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ys[0], rtol=0, atol=2e-6)


def test_inner_masks_reach_the_inner_layers():
    """The sentence encoder's Embedding(mask_zero=True) masks its Bidirectional GRU (the
    padding words skipped, as Keras does): without that mask the outputs differ."""
    m = load_keras(model_path("k3_td_model_han"))
    x, ys = reference("k3_td_model_han")
    assert (x == 0).any(axis=-1).sum() >= 10       # (padded sentences)
    emb = next(l for l in m.layers if type(l).__name__ == "Embedding")
    emb.mask_zero = False
    assert np.max(np.abs(m.predict(x) - ys[0])) > 1e-3


def test_keras3_drops_the_inner_output_mask():
    # k3_td_model_nested's wrapped model ends masked (Masking inside); Keras 3's
    # TimeDistributed passes on its input's mask (none), so the pooling after it averages
    # every row (test_keras checks the numbers); the unfold's mask is the input's
    m = load_keras(model_path("k3_td_model_nested"))
    un = [l for l in m.layers if isinstance(l, UnfoldTime)]
    assert len(un) == 2 and un[0] is un[1]      # (the nested model called twice)
    y = np.ones((6, 5, 2), np.float32)
    out, mask = un[0].call([y, np.ones((2, 3, 4))], [np.ones((6, 5), bool), None])
    assert out.shape == (2, 3, 5, 2) and mask is None


def _add_masking(c):
    """A Masking "m" of the TimeDistributed's input, added to config ``c`` -> (the
    TimeDistributed's entry, a reference to m's output)."""
    layers = c["config"]["layers"]
    td = next(l for l in layers if l["class_name"] == "TimeDistributed")
    src = td["inbound_nodes"][0]["args"][0]
    layers.insert(1, {"module": "keras.layers", "class_name": "Masking", "name": "m",
                      "config": {"name": "m", "mask_value": 0, "trainable": True,
                                 "dtype": "float32"},
                      "inbound_nodes": [{"args": [src], "kwargs": {}}]})
    return td, {**src, "config": {**src["config"], "keras_history": ["m", 0, 0]}}


def _masking_before_td(c):
    td, masked = _add_masking(c)
    td["inbound_nodes"][0]["args"][0] = masked


def _two_outputs(c):
    td = next(l for l in c["config"]["layers"] if l["class_name"] == "TimeDistributed")
    inner = td["config"]["layer"]["config"]
    inner["output_layers"] = [inner["output_layers"][0]] * 2 if isinstance(
        inner["output_layers"][0], list) else [inner["output_layers"], inner["output_layers"]]


@pytest.mark.parametrize("edit, match", [
    (_masking_before_td, r"layer 'time_distributed' \(TimeDistributed of a model\) reads a "
                         r"masked tensor: not supported"),
    (_two_outputs, r"'time_distributed' \(TimeDistributed of a model\): a model of several "
                   r"inputs or outputs is not supported"),
])
def test_refused_keras3(tmp_path, edit, match):
    with pytest.raises(LoadError, match=match):
        load_keras(_edit_config("k3_td_model_han", tmp_path, edit))


def _second_call_masked(c):
    # the TimeDistributed called again, on a Masking of the input: a second output
    td, masked = _add_masking(c)
    td["inbound_nodes"].append({"args": [masked], "kwargs": {}})
    c["config"]["output_layers"] = [c["config"]["output_layers"], [td["name"], 1, 0]]


def test_shared_time_distributed_checks_each_call(tmp_path):
    """A TimeDistributed of a model called twice, the second time on a masked tensor:
    refused at load (the checks run for each call, not only the first's)."""
    with pytest.raises(LoadError, match=r"layer 'time_distributed' \(TimeDistributed of a "
                                        r"model\) reads a masked tensor"):
        load_keras(_edit_config("k3_td_model_han", tmp_path, _second_call_masked))


def _no_outputs(c):
    td = next(l for l in c["config"]["layers"] if l["class_name"] == "TimeDistributed")
    td["config"]["layer"]["config"]["output_layers"] = []


def test_model_without_outputs_refused(tmp_path):
    with pytest.raises(LoadError, match=r"'time_distributed' \(TimeDistributed of a model\): "
                                        r"the model has no input_layers or output_layers"):
        load_keras(_edit_config("k3_td_model_han", tmp_path, _no_outputs))


def test_tf_keras2_masked_input_refused(tmp_path):
    """tf.keras 2 hands the model the input's mask folded (fastrnn does not run that)."""
    from test_keras2_more import _edit_h5

    def masking_first(c):
        layers = c["config"]["layers"]
        i = next(k for k, l in enumerate(layers) if l["class_name"] == "TimeDistributed")
        layers.insert(i, {"class_name": "Masking", "config": {"name": "m", "mask_value": 0.0}})
    with pytest.raises(LoadError, match=r"reads a masked tensor: not supported \(tf.keras 2 "
                                        r"hands the model the mask folded"):
        load_keras(_edit_h5("k2_td_model_video", tmp_path, masking_first))


def test_fold_named_apart_from_the_model_layers():
    """The fold takes a name no layer of the wrapped model has ("fold", "fold_1", ...)."""
    from fastrnn.io.keras import model_from_keras_config
    from test_keras import _td_seq
    inner = [{"class_name": "Dense", "config": {"name": n, "units": u, "activation": a}}
             for n, u, a in (("fold", 2, "tanh"), ("fold_1", 3, "linear"))]
    arch = _td_seq(("TimeDistributed", {"name": "td", "layer": {
        "class_name": "Sequential", "config": {"name": "inner", "layers": inner}}}),
        shape=(None, 4, 5))
    r = np.random.RandomState(0)
    w = {"fold": [r.normal(size=(5, 2)), r.normal(size=2)],
         "fold_1": [r.normal(size=(2, 3)), r.normal(size=3)]}
    m = model_from_keras_config(arch, w)
    assert _types(m) == [("td/fold_2", "FoldTime"), ("td/fold", "Dense"),
                         ("td/fold_1", "Dense"), ("td", "UnfoldTime")]
    x = r.normal(size=(2, 4, 5)).astype(np.float32)
    want = np.tanh(x @ w["fold"][0] + w["fold"][1]) @ w["fold_1"][0] + w["fold_1"][1]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)


def test_tf_keras2_passes_the_model_output_mask_on():
    """tf-keras 2's TimeDistributed passes on the mask its model's output has (Keras 3
    drops it): k2_td_model_mask_out's sentence encoder returns its masked word vectors,
    which a TimeDistributed average pools over the words alone (test_keras: the
    numbers); the unfold's mask is the model output's, unfolded."""
    m = load_keras(model_path("k2_td_model_mask_out"))
    un = next(l for l in m.layers if isinstance(l, UnfoldTime))
    assert un.masks == "keras2"
    y, mask = un.call([np.ones((6, 5, 2)), np.ones((2, 3, 5))], [np.ones((6, 5), bool), None])
    assert mask.shape == (2, 3, 5)
    x, ys = reference("k2_td_model_mask_out")
    un.masks = "keras3"
    assert np.max(np.abs(m.predict(x) - ys[0])) > 1e-3


@pytest.mark.parametrize("name", ["k3_td_model_video_h5", "k2_td_model_han",
                                  "k2_td_model_video", "k2_td_model_mask_out"])
def test_streams(name):
    """Each step's frame / sentence through the wrapped model, then the recurrent layers
    carried on: chunks and single steps give Keras's outputs (tf.keras 2's mask of the
    model's output too: k2_td_model_mask_out)."""
    m = load_keras(model_path(name))
    x, ys = reference(name)
    s = fastrnn.Stream(m, batch_size=len(x))
    got = np.concatenate([s.feed(x[:, t:t + 2]) for t in range(0, x.shape[1], 2)], axis=1)
    one = fastrnn.Stream(m, batch_size=len(x))
    steps = np.stack([one.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    want = ys[0] if ys[0].ndim == 3 else ys[0][:, None]      # (the last step's alone)
    np.testing.assert_allclose(got[:, -want.shape[1]:], want, rtol=0, atol=TOL)
    np.testing.assert_allclose(steps, got, rtol=0, atol=TOL)


def test_a_shared_model_called_twice_streams_block_by_block():
    """k3_td_model_nested: one model under two TimeDistributed calls, their layers
    interleaved in the graph; each call's block streams whole, as Keras computes it."""
    m = load_keras(model_path("k3_td_model_nested"))
    x, ys = reference("k3_td_model_nested")
    s = fastrnn.Stream(m, batch_size=len(x))
    got = np.concatenate([s.step(x[:, t])[:, None] for t in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(got[:, -1], ys[0], rtol=0, atol=TOL)


def test_stream_refuses_a_block_layer_reading_outside_it():
    """A layer between a FoldTime and its UnfoldTime that reads the fold's work and a
    tensor from outside (not folded): refused, named."""
    from fastrnn.model import INPUT, Add, Dense, KerasRNN, Model
    d = Dense(np.ones((2, 2), np.float32))
    layers = [FoldTime(), d, Dense(np.ones((2, 2), np.float32), name="outer"), Add(name="a"),
              UnfoldTime(name="u"), KerasRNN(fastrnn.GRU(2, 2, batch_first=True, seed=0))]
    m = Model(layers, inputs=[(INPUT, 0), (0, 0), (INPUT, 0), [(1, 0), (2, 0)],
                              [(3, 0), (INPUT, 0)], (4, 0)], name="g")
    with pytest.raises(ValueError, match=r"cannot stream model 'g': layer 'a' reads \w+, "
                                         r"outer, not a layer of the TimeDistributed 'u'"):
        fastrnn.Stream(m)


def test_fold_and_unfold():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    f, u = FoldTime(name="f"), UnfoldTime(name="u")
    y, mask = f.call(x)
    assert y.shape == (6, 4) and mask is None and np.shares_memory(y, x)
    back, mask = u.call([y * 2, x], [None, np.ones((2, 3), bool)])
    np.testing.assert_array_equal(back, x * 2)
    assert mask.shape == (2, 3)
    with pytest.raises(ValueError, match=r"f: FoldTime needs \(B, T, \.\.\.\) input, got "
                                         r"shape \(2, 3\)"):
        f.call(x[:, :, 0])
    with pytest.raises(ValueError, match="f: FoldTime .* on a masked input is not supported"):
        f.call(x, np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"u: UnfoldTime needs y of \(B\*T, \.\.\.\) for x of "
                                         r"\(B, T, \.\.\.\), got y \(5, 4\) and x \(2, 3, 4\)"):
        u.call([y[:5], x])
    with pytest.raises(ValueError, match=r"u: UnfoldTime takes \[y, x\], two tensors"):
        u.call(y)


@pytest.mark.parametrize("name", ["k2_td_masks_han", "k2_td_masks_pool", "k2_td_masks_seq"])
def test_tf_keras2_masks_through_time_distributed(name, tmp_path):
    """tf.keras 2's TimeDistributed passes the wrapped layer's mask on (the words', then
    the sentences'): the numbers (test_keras), the layers' mode through fastrnn's own
    format, and a stream of the chain models (the masked steps carried)."""
    from fastrnn.model import TimeDistributed
    m = load_keras(model_path(name))
    x, ys = reference(name)
    tds = [l for l in m.layers if isinstance(l, TimeDistributed)]
    assert tds and all(l.masks == "keras2" for l in tds)
    p = tmp_path / "m.fastrnn"
    m.save(p)
    again = fastrnn.load(str(p))
    assert [l.masks for l in again.layers if isinstance(l, TimeDistributed)] == \
        ["keras2"] * len(tds)
    np.testing.assert_array_equal(again.predict(x), m.predict(x))
    # (run as Keras 3 runs it, the numbers differ: the masks matter here)
    for l in tds:
        l.masks = "keras3"
    try:
        assert np.max(np.abs(m.predict(x) - ys[0])) > 1e-3
    except ValueError as e:       # (or Keras 3's refusal of a reader on a masked input)
        assert "on a masked input is not supported" in str(e)
    if name == "k2_td_masks_pool":
        s = fastrnn.Stream(again, batch_size=len(x))
        got = np.concatenate([s.feed(x[:, t:t + 2]) for t in range(0, x.shape[1], 2)], 1)
        np.testing.assert_allclose(got, ys[0], rtol=0, atol=TOL)


def test_time_distributed_masks_argument():
    from fastrnn.model import Dense, TimeDistributed
    d = Dense(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="masks must be 'keras3' or 'keras2', got 'tf'"):
        TimeDistributed(d, masks="tf")
    td = TimeDistributed(d, masks="keras2", name="td")
    x = np.ones((2, 4, 5, 3), np.float32)
    y, m = td.call(x, np.ones((2, 4, 5), bool))
    assert y.shape == (2, 4, 5, 2) and m.shape == (2, 4, 5)
    with pytest.raises(ValueError, match=r"td: a mask of shape \(4, 2\) for an input of "
                                         r"shape \(2, 4, 5, 3\)"):
        td.call(x, np.ones((4, 2), bool))
    assert "masks='keras2'" in repr(td)


@pytest.mark.parametrize("op, ok", [("GlobalAveragePooling1D", True),
                                    ("GlobalMaxPooling1D", False)])
def test_tf_keras2_layers_given_the_folded_mask(op, ok):
    """tf.keras 2 hands a TimeDistributed's folded mask to the wrapped layer, which must
    support masking (GlobalMaxPooling1D does not: Keras refuses that model too)."""
    from fastrnn.io.keras import model_from_keras_config
    from test_keras import _td, _td_seq
    arch = _td_seq(("TimeDistributed", {"name": "te", "layer": {
        "class_name": "Embedding", "config": {"name": "e", "input_dim": 20, "output_dim": 3,
                                              "mask_zero": True}}}), _td(op),
        shape=(None, 4, 5), dtype="int32")
    w = {"te": [np.random.RandomState(0).normal(size=(20, 3))], "td": []}
    if not ok:
        with pytest.raises(LoadError, match=r"layer 'td' \(TimeDistributed of "
                                            r"GlobalMaxPooling1D\) reads a masked tensor: "
                                            r"not supported \(tf.keras 2 refuses"):
            model_from_keras_config(arch, w, keras_version="2")
        return
    m = model_from_keras_config(arch, w, keras_version="2")
    ids = np.array([[[1, 2, 0, 0, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0], [4, 5, 6, 7, 8]]])
    y, mask = m.layers[-1].call(m.layers[0].call(ids)[0], ids != 0)
    e = w["te"][0][ids]
    want = (e * (ids != 0)[..., None]).sum(2) / np.maximum((ids != 0).sum(2), 1)[..., None]
    np.testing.assert_allclose(y[0, [0, 2, 3]], want[0, [0, 2, 3]], rtol=1e-6)
    np.testing.assert_array_equal(mask, [[True, False, True, True]])


def test_embedding_without_mask_zero_gives_no_mask():
    """Keras's Embedding gives a mask only with mask_zero (a masked id tensor's mask ends
    there)."""
    from fastrnn.model import Embedding
    e = Embedding(np.ones((5, 2), np.float32))
    ids = np.array([[1, 0, 2]])
    for x in (ids, np.tile(ids, (1, 30))):       # (the few-ids path and the general one)
        assert e.call(x, x != 0)[1] is None
    assert Embedding(np.ones((5, 2)), mask_zero=True).call(ids, None)[1].tolist() == \
        [[True, False, True]]
