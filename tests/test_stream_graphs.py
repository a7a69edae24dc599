"""Streams of functional graphs: branches and merges, several inputs, several outputs.

A stream runs a graph's layers in the model's order, each on the tensors it reads; a
merge joins each step's tensors (or, after recurrent layers that return their last
step, each step's rows).  Checked against Keras's outputs of the real-Keras fixtures
(tests/fixtures/make_keras*.py) and against the whole call on every prefix."""
import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn import GRU, LSTM  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import (INPUT, Add, Concatenate, Dense, Dot, KerasRNN,  # noqa: E402
                           Masking, Model, Multiply, Op)
from test_keras import NAMES, architecture, as_list, model_path, reference  # noqa: E402

TOL = 1e-5

# the fixtures whose model streams: chains (since the first sessions) and graphs
STREAMS = sorted("""
k2_act_layers_masked k2_attn_causal_config k2_cudnn_lstm k2_identity_masked k2_lstm_gru_hsig
k2_nested_fn_two_out k2_nested_seq_deep k2_nested_seq_in_fn k2_pad_crop_pool2d
k2_rescale_norm_masked k2_td_hier_weights_newfmt k2_td_hierarchical k2_td_masks_pool
k2_td_masks_seq k2_td_model_han k2_td_model_mask_out k2_td_model_video k2_td_video
k3_attn_causal_concat_h5 k3_causal_conv_stream k3_cell_stacked_masking k3_dag_residual_add_ln k3_dict_io
k3_gru_noreset_hsig k3_legacy_hsig k3_lstm_basic k3_multi_dict k3_nested_fn_shared
k3_nested_fn_shared_h5 k3_nested_res_add k3_nested_res_deep k3_nested_res_deep_h5
k3_nested_res_shared k3_nested_seq_deep k3_nested_seq_in_fn k3_nested_two_in_out
k3_pad_crop_pool2d k3_policy64_f32_input k3_policy64_multi k3_shared_siamese
k3_td_conv1d_pool k3_td_embed_mask_zero k3_td_hierarchical k3_td_masked_fold
k3_td_model_nested k3_td_model_video_h5 k3_td_nested k3_td_sepconv k3_td_video_h5
k3_weights_hsig k3_weights_only
""".split())


def _load(name):
    return load_keras(model_path(name), architecture(name))


def _streams(name):
    x, _ = reference(name)
    B = (x[0] if isinstance(x, list) else x).shape[0]
    try:
        return fastrnn.Stream(_load(name), batch_size=B)
    except ValueError:
        return None


def _fed(stream, x, size):
    """The stream's outputs (a list) over ``x`` fed in chunks of ``size`` steps."""
    xs = x if isinstance(x, list) else [x]
    parts = []
    for t in range(0, xs[0].shape[1], size):
        c = [a[:, t:t + size] for a in xs]
        parts.append(as_list(stream.feed(c if isinstance(x, list) else c[0])))
    return [np.concatenate(p, axis=1) for p in zip(*parts)]


def _as_keras(outs, ys):
    """Each stream output as Keras's: every step's, or the last step's where the
    whole call returns only that."""
    return [o if o.shape == y.shape else o[:, -1] for o, y in zip(outs, ys)]


def test_the_fixtures_that_stream_are_the_listed_ones():
    """Every other fixture is refused when the stream is made (never at a feed)."""
    assert sorted(n for n in NAMES if _streams(n) is not None) == STREAMS


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("size", [1, 3, 100])
def test_fixture_streams_give_keras_outputs(name, size):
    x, ys = reference(name)
    s = _streams(name)
    got = _as_keras(_fed(s, x, size), ys)
    assert [g.shape for g in got] == [y.shape for y in ys]
    for g, y in zip(got, ys):
        np.testing.assert_allclose(g, y, rtol=0, atol=TOL)
    assert s.steps_seen == (x[0] if isinstance(x, list) else x).shape[1]


@pytest.mark.parametrize("name", ["k3_multi_dict", "k3_nested_two_in_out",
                                  "k2_nested_fn_two_out", "k3_shared_siamese",
                                  "k3_dag_residual_add_ln"])
def test_graph_steps_equal_the_fed_chunks(name):
    """step() of a graph: a list of (B, ...) inputs in, one (B, out) a step (a list for
    several outputs), as the fed chunks; the state resumes in another stream."""
    x, ys = reference(name)
    xs = x if isinstance(x, list) else [x]
    s = _streams(name)
    whole = _fed(s, x, 100)
    s.reset()
    T = xs[0].shape[1]
    steps = []
    for t in range(T):
        if t == 3:      # the state (one entry per recurrent layer) into a new stream
            assert s.steps_seen == 3
            again = _streams(name)
            again.state = s.state
            s = again
        a = [v[:, t] for v in xs]
        steps.append(as_list(s.step(a if isinstance(x, list) else a[0])))
    got = [np.stack(k, axis=1) for k in zip(*steps)]
    assert len(got) == len(whole) == len(ys)
    for g, w in zip(got, whole):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    assert s.steps_seen == T - 3


def test_several_inputs_by_name_and_their_errors():
    name = "k3_multi_dict"
    (feats, tokens), ys = reference(name)
    model = _load(name)
    assert model.input_names == ["feats", "tokens"]
    s = fastrnn.Stream(model, batch_size=3)
    got = s.feed({"tokens": tokens, "feats": feats})
    np.testing.assert_allclose(got[:, -1], ys[0], rtol=0, atol=TOL)
    s.reset()
    with pytest.raises(ValueError, match=r"the inputs disagree on the number of steps: "
                                         r"input 'feats' has 7, input 'tokens' has 6"):
        s.feed([feats, tokens[:, :6]])
    with pytest.raises(ValueError, match=r"takes 2 inputs \('feats', 'tokens'\), got 1"):
        s.feed([feats])
    with pytest.raises(ValueError, match=r"this stream has batch_size=3, got a batch of 2"):
        s.feed([feats[:2], tokens[:2]])
    with pytest.raises(ValueError, match=r"missing input\(s\) 'tokens'"):
        s.step({"feats": feats[:, 0]})
    with pytest.raises(ValueError, match=r"input 'tokens' must be an array with a batch "
                                         "axis, got a scalar"):
        s.step([feats[:, 0], np.int32(1)])
    assert s.steps_seen == 0        # (every refusal before a layer ran)


def _prefix_check(model, x, atol=1e-6):
    """Stream output at each step == the whole call on the steps so far (the last
    step's output of a model that returns the last step)."""
    xs = x if isinstance(x, list) else [x]
    s = fastrnn.Stream(model, batch_size=xs[0].shape[0])
    got = as_list(s.feed(x))
    for t in range(xs[0].shape[1]):
        pre = [a[:, :t + 1] for a in xs]
        want = as_list(model(pre if isinstance(x, list) else pre[0]))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[:, t] if w.ndim == g.ndim - 1 else g[:, :t + 1],
                                       w, rtol=0, atol=atol)


def _rnn(cls, i, h, seq, seed, dtype="float32"):
    return KerasRNN(cls(i, h, batch_first=True, seed=seed, dtype=dtype), return_sequences=seq)


def _dense(i, o, seed, dtype="float32"):
    r = np.random.default_rng(seed)
    return Dense(r.normal(size=(i, o)), r.normal(size=o), activation="tanh", dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_merges_of_last_step_branches_run_on_each_steps_rows(dtype):
    """Two recurrent branches returning their last step, merged (Concatenate, Multiply,
    Dot), then a Dense: at each step the stream gives the whole call on the steps so far."""
    layers = [_rnn(LSTM, 3, 4, False, 1, dtype), _rnn(GRU, 3, 4, False, 2, dtype),
              Concatenate(), Multiply(), Dot(axes=1), Concatenate(), _dense(13, 2, 3, dtype)]
    model = Model(layers, inputs=[(INPUT, 0), (INPUT, 0), [(0, 0), (1, 0)],
                                  [(0, 0), (1, 0)], [(0, 0), (1, 0)],
                                  [(2, 0), (3, 0), (4, 0)], (5, 0)])
    x = np.random.default_rng(0).normal(size=(3, 6, 3)).astype(dtype)
    _prefix_check(model, x, 1e-12 if dtype == "float64" else 1e-6)
    got = fastrnn.Stream(model, batch_size=3).feed(x)
    assert got.dtype == dtype and got.shape == (3, 6, 2)


def test_step_merges_of_sequences_and_operations_of_two_tensors():
    """Sequences merged per step: a residual Add, a masked Multiply (the masks joined
    as the whole call joins them), a keras.ops add and a concatenation of two tensors on
    the features; two outputs."""
    layers = [Masking(0.0), _rnn(GRU, 3, 3, True, 1), Add(), _rnn(LSTM, 3, 3, True, 2),
              Multiply(), Op("Add", [{"input": 0}, {"input": 1}], ranks=[3, 3]),
              Op("Concatenate", [[{"input": 0}, {"input": 1}]], {"axis": -1}, ranks=[3, 3]),
              _rnn(GRU, 6, 2, False, 3)]
    model = Model(layers, inputs=[(INPUT, 0), (0, 0), [(0, 0), (1, 0)], (2, 0),
                                  [(1, 0), (3, 0)], [(4, 0), (2, 0)], [(5, 0), (3, 0)],
                                  (6, 0)],
                  outputs=[(7, 0), (5, 0)])
    x = np.random.default_rng(1).normal(size=(3, 7, 3)).astype(np.float32)
    x[0, 5:] = 0.0          # (masked steps at the end of one sequence)
    x[2, 2] = 0.0
    _prefix_check(model, x)


def test_two_inputs_two_outputs_built_by_hand():
    layers = [_rnn(LSTM, 3, 4, True, 1), _dense(2, 4, 2), Add(), _rnn(GRU, 4, 2, True, 3)]
    model = Model(layers, inputs=[(INPUT, 0), (INPUT, 1), [(0, 0), (1, 0)], (2, 0)],
                  outputs=[(3, 0), (2, 0)], n_inputs=2)
    r = np.random.default_rng(2)
    x = [r.normal(size=(2, 5, 3)).astype(np.float32),
         r.normal(size=(2, 5, 2)).astype(np.float32)]
    _prefix_check(model, x)
    s = fastrnn.Stream(model, batch_size=2)
    y, z = s.step([x[0][:, 0], x[1][:, 0]])
    assert y.shape == (2, 2) and z.shape == (2, 4)


def _refused(model, match):
    with pytest.raises(ValueError, match=match):
        fastrnn.Stream(model)


def test_graph_refusals_name_the_layer_and_why():
    rnn = _rnn(LSTM, 3, 3, True, 1)
    last = _rnn(GRU, 3, 3, False, 2)
    # along the steps
    _refused(Model([rnn, Concatenate(axis=1)], inputs=[(INPUT, 0), [(0, 0), (INPUT, 0)]]),
             r"layer 'concatenate\w*' of type Concatenate along axis 1: a stream joins each "
             r"step's tensors")
    _refused(Model([rnn, Concatenate(axis=-2)], inputs=[(INPUT, 0), [(0, 0), (INPUT, 0)]]),
             r"Concatenate along axis -2")
    # a dot product of two sequences (across the steps)
    _refused(Model([rnn, Dot(axes=2)], inputs=[(INPUT, 0), [(0, 0), (INPUT, 0)]]),
             r"layer 'dot\w*' of type Dot on sequences: it reads across the steps")
    # a last step merged with every step of a sequence (Keras broadcasts it)
    _refused(Model([last, Add()], inputs=[(INPUT, 0), [(0, 0), (INPUT, 0)]], name="m"),
             r"cannot stream model 'm': layer 'add\w*' merges \w+, input: the last step of "
             r"layer '\w+' \(return_sequences=False\) with every step of another tensor")
    # an operation across the steps, and one of tensors of unequal ranks
    _refused(Model([rnn, Op("Matmul", [{"input": 0}, {"input": 1}], ranks=[3, 3])],
                   inputs=[(INPUT, 0), [(0, 0), (INPUT, 0)]]),
             r"of type Op on sequences")
    _refused(Model([rnn, Op("Mean", [{"input": 0}], {"axis": -1}, ranks=[3]),
                    Op("Multiply", [{"input": 0}, {"input": 1}], ranks=[3, 2])],
                   inputs=[(INPUT, 0), (0, 0), [(0, 0), (1, 0)]]),
             r"layer 'op\w*' of type Op on sequences")
    # a returned state
    rs = KerasRNN(LSTM(3, 3, batch_first=True, seed=0), return_sequences=True,
                  return_state=True)
    _refused(Model([rs, Add()], inputs=[(INPUT, 0), [(0, 0), (0, 1)]], name="m"),
             r"layer 'add\w*' reads \w+\[1\], not the first tensor of layer '\w+' \(a "
             "returned state")


def test_a_merge_of_sequences_of_different_ranks_is_refused_before_it_runs():
    """Keras broadcasts a (B, T) tensor against a (B, T, F) one over the steps' axis: the
    stream refuses it at the merge, with nothing written to its output."""
    layers = [_rnn(LSTM, 3, 3, True, 1), Op("Mean", [{"input": 0}], {"axis": -1}, ranks=[3]),
              Add(), _rnn(GRU, 3, 2, True, 2)]
    model = Model(layers, inputs=[(INPUT, 0), (0, 0), [(0, 0), (1, 0)], (2, 0)])
    s = fastrnn.Stream(model, batch_size=2)
    x = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"cannot stream layer 'add\w*': it merges tensors of "
                                         r"different ranks \(shapes \[\(2, 3, 3\), \(2, 3\)\]\)"):
        s.feed(x)


def test_a_layer_reading_inside_a_time_distributed_model_is_refused():
    """A TimeDistributed of a model streams as one block; a layer outside it reading a
    layer inside (which only the whole call computes on the folded steps) is refused."""
    model = _load("k3_td_model_video_h5")
    from fastrnn.model import FoldTime, UnfoldTime
    fold = next(i for i, l in enumerate(model.layers) if isinstance(l, FoldTime))
    unfold = next(i for i, l in enumerate(model.layers) if isinstance(l, UnfoldTime))
    assert unfold > fold + 1
    n = len(model.layers)
    bad = Model(model.layers, inputs=model.inputs, outputs=[(n - 1, 0), (fold + 1, 0)],
                name="m")
    _refused(bad, rf"cannot stream model 'm': its output reads "
                  rf"'{model.layers[fold + 1].name}', a layer inside a TimeDistributed of a "
                  "model, from outside it")
    graph = [list(r) for r in model.inputs]       # (a layer after it reading one inside)
    graph[n - 1] = [(fold + 1, 0)]
    _refused(Model(model.layers, inputs=graph, name="m", outputs=[(n - 1, 0), (n - 2, 0)]),
             rf"layer '{model.layers[-1].name}' reads '{model.layers[fold + 1].name}', a "
             "layer inside")


def test_a_chain_ending_in_returned_states_is_refused():
    """A chain whose last layer returns its states (a Sequential ending in an LSTM with
    return_state: the model returns three arrays) is refused, not streamed as its
    sequence alone (an audit)."""
    rs = KerasRNN(LSTM(3, 3, batch_first=True, seed=0), return_sequences=True,
                  return_state=True)
    model = Model([Masking(0.0), rs], name="m")
    assert len(model(np.ones((1, 2, 3), np.float32))) == 3
    _refused(model, r"cannot stream model 'm': the model's output reads \w+\[1\], not the "
                    "first tensor")


def test_a_refused_input_leaves_every_state_as_it_was():
    """(An audit.) A graph whose second branch refuses its input after the first
    branch's LSTM ran: the states are put back, so the next feed continues as the
    whole call (it was 0.24 off)."""
    a_rnn, b_rnn = _rnn(LSTM, 3, 4, True, 1), _rnn(LSTM, 3, 4, True, 2)
    model = Model([a_rnn, b_rnn, Add()], inputs=[(INPUT, 0), (INPUT, 1), [(0, 0), (1, 0)]],
                  n_inputs=2)
    r = np.random.default_rng(4)
    a, b = (r.normal(size=(1, 6, 3)).astype(np.float32) for _ in range(2))
    s = fastrnn.Stream(model)
    first = s.feed([a[:, :3], b[:, :3]])
    before = s.state
    with pytest.raises(ValueError, match="input has 5 features, the layer expects"):
        s.feed([a[:, 3:], np.zeros((1, 3, 5), np.float32)])
    with pytest.raises(ValueError):
        s.step([a[:, 3], np.zeros((1, 5), np.float32)])
    for x, y in zip(before, s.state):
        for p, q in zip(x, y):
            np.testing.assert_array_equal(p, q)
    assert s.steps_seen == 3
    rest = s.feed([a[:, 3:], b[:, 3:]])
    np.testing.assert_allclose(np.concatenate([first, rest], 1), model([a, b]), rtol=0,
                               atol=1e-6)


def test_softmax_layers_over_the_features_stream():
    """A Softmax layer over the features streams (after a sequence, and as a
    classifier's head after a last-step LSTM); over the steps it is refused."""
    from fastrnn.model import Softmax
    x = np.random.default_rng(6).normal(size=(2, 5, 3)).astype(np.float32)
    _prefix_check(Model([_rnn(GRU, 3, 4, True, 1), Softmax(axis=-1),
                         _rnn(LSTM, 4, 3, True, 2)]), x)
    _prefix_check(Model([_rnn(LSTM, 3, 4, False, 3), _dense(4, 3, 4), Softmax()]), x)
    _refused(Model([_rnn(GRU, 3, 4, True, 1), Softmax(axis=1, name="sm")]),
             r"cannot stream layer 'sm' of type Softmax")
