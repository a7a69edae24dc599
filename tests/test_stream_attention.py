"""Streams of causal attention: each chunk's queries attend to every step so far, the
layer keeping the keys and values it has read (MultiHeadAttention: their projections).

Checked against Keras's outputs of the real-Keras fixtures in tests/fixtures/keras/stream/
(tests/fixtures/make_keras_stream.py) in chunks of every size, and against the whole call
of hand-built layers of every kind (float32 and float64, masks, both MultiHeadAttention
mask paths)."""
import glob
import os

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn import GRU, LSTM  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import INPUT, Dense, KerasRNN, Masking, Model  # noqa: E402
from fastrnn.model import AdditiveAttention, Attention, MultiHeadAttention  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "keras", "stream")
NAMES = sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(FIX, "*.keras")))
REFUSED = "stream_mha_refused_padding"
KNOWN = "stream_known_mha_residual_mask"    # (the whole call differs from Keras 3.15)
STREAMS = [n for n in NAMES if n not in (REFUSED, KNOWN)]
TOL = 1e-5


def _fixture(name):
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        xs = [z["x"]] if "x" in z.files else \
            [z[f"x{j}"] for j in range(sum(f.startswith("x") for f in z.files))]
        ys = [z[f"y{j}"] for j in range(sum(f.startswith("y") for f in z.files))]
    return load_keras(os.path.join(FIX, name + ".keras")), xs, ys


def _feed(s, xs, t0, t1):
    c = [a[:, t0:t1] for a in xs]
    out = s.feed(c if len(c) > 1 else c[0])
    return out if isinstance(out, list) else [out]


def _fed(s, xs, sizes):
    """The stream's outputs over ``xs`` fed in chunks of ``sizes`` (cycled)."""
    T, t, parts, k = xs[0].shape[1], 0, [], 0
    while t < T:
        n = sizes[k % len(sizes)]
        parts.append(_feed(s, xs, t, t + n))
        t, k = t + n, k + 1
    return [np.concatenate(p, axis=1) for p in zip(*parts)]


def test_the_fixtures():
    assert NAMES == ["stream_additive_two_inputs", "stream_attention_query_key",
                     "stream_known_mha_residual_mask", "stream_mha_decoder",
                     "stream_mha_query_key_value", "stream_mha_refused_padding",
                     "stream_mha_scores_masked"]


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("sizes", [[1], [2], [4], [9], [3, 1, 5]])
def test_fixture_streams_give_keras_outputs(name, sizes):
    model, xs, ys = _fixture(name)
    s = fastrnn.Stream(model, batch_size=xs[0].shape[0])
    got = _fed(s, xs, sizes)
    assert [g.shape for g in got] == [y.shape for y in ys]
    for g, y in zip(got, ys):
        np.testing.assert_allclose(g, y, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", STREAMS)
def test_fixture_steps_and_state_handover(name):
    """step() a step at a time; at step 4 the state (the recurrent layers' and the
    attention layers' keys and values) moves into a new stream, which goes on."""
    model, xs, ys = _fixture(name)
    s = fastrnn.Stream(model, batch_size=xs[0].shape[0])
    outs = []
    for t in range(xs[0].shape[1]):
        if t == 4:
            again = fastrnn.Stream(_fixture(name)[0], batch_size=xs[0].shape[0])
            again.state = s.state
            s = again
        a = [x[:, t] for x in xs]
        y = s.step(a if len(a) > 1 else a[0])
        outs.append(y if isinstance(y, list) else [y])
    for g, y in zip([np.stack(k, axis=1) for k in zip(*outs)], ys):
        np.testing.assert_allclose(g, y, rtol=0, atol=TOL)


def test_a_query_that_sees_nothing_is_refused_at_its_step():
    """Keras's default MultiHeadAttention path spreads a masked query step's weights
    over every step, later ones too: the stream runs up to that step, refuses it with
    every state put back, and goes on once the step is unmasked."""
    model, (x,), (y,) = _fixture(REFUSED)
    assert not x[1, 3].any()           # (the hole the fixture puts there)
    s = fastrnn.Stream(model, batch_size=3)
    got = s.feed(x[:, :3])
    np.testing.assert_allclose(got, y[:, :3], rtol=0, atol=TOL)
    before = s.state
    with pytest.raises(ValueError, match=r"at step 3 of sequence 1: its query step is "
                                         r"masked.*later ones too"):
        s.feed(x[:, 3:6])
    after = s.state
    assert s.steps_seen == 3
    for a, b in zip(before, after):     # (the LSTM's (h, c), the attention's keys ...)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    x2 = x.copy()
    x2[1, 3] = 0.5
    want = model(x2)
    got = np.concatenate([got, s.feed(x2[:, 3:6])], axis=1)
    np.testing.assert_allclose(got, want[:, :6], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at step 6 of sequence 0"):
        s.step(x2[:, 6])


def test_attention_that_is_not_causal_is_refused_when_the_stream_is_made():
    rnn = KerasRNN(LSTM(3, 4, batch_first=True), return_sequences=True)
    m = Model([rnn, Attention(name="att")], inputs=[(INPUT, 0), [(0, 0), (0, 0)]], name="m")
    with pytest.raises(ValueError, match="'att' of type Attention: it is not causal"):
        fastrnn.Stream(m)


def _layers(kind, dtype, rng):
    u = lambda *s: rng.uniform(-0.8, 0.8, size=s).astype(dtype)
    if kind == "dot":
        return Attention(use_causal_mask=True, dtype=dtype)
    if kind == "dot_scale":
        return Attention(scale=u(), use_causal_mask=True, dtype=dtype)
    if kind == "concat":
        return Attention(scale=u(), score_mode="concat", concat_score_weight=u(),
                         use_causal_mask=True, dtype=dtype)
    if kind == "additive":
        return AdditiveAttention(scale=u(4), use_causal_mask=True, dtype=dtype)
    bias = kind != "mha_nobias"
    return MultiHeadAttention(u(4, 2, 3), u(4, 2, 3), u(4, 2, 5), u(2, 5, 4),
                              *((u(2, 3), u(2, 3), u(2, 5), u(4)) if bias else ()),
                              use_causal_mask=True, dtype=dtype,
                              zero_masked=kind == "mha_zero",
                              additive_mask=kind == "mha_additive")


KINDS = ["dot", "dot_scale", "concat", "additive", "mha", "mha_nobias", "mha_zero",
         "mha_additive"]


def _hand_built(kind, dtype, rng, query_masked):
    """Masking -> LSTMs and a GRU -> causal attention over [query, value, key] (the
    value and key of the masked input; the query of it or of the input unmasked) ->
    Dense."""
    rnn = lambda cell: KerasRNN(cell(5, 4, batch_first=True, dtype=dtype),
                                return_sequences=True)
    q, v, k = rnn(LSTM), rnn(LSTM), rnn(GRU)
    for r in (q, v, k):
        r.core.load_state_dict({n: rng.uniform(-0.5, 0.5, w.shape)
                                for n, w in r.core.state_dict().items()})
    dense = Dense(rng.uniform(-1, 1, (4, 2)), dtype=dtype)
    return Model([Masking(0.0), q, v, k, _layers(kind, dtype, rng), dense],
                 inputs=[(INPUT, 0), (0 if query_masked else INPUT, 0), (0, 0), (0, 0),
                         [(1, 0), (2, 0), (3, 0)], (4, 0)], name="m")


def _holes(rng, B, T, dtype):
    """An input with masked steps (never a first step, so every query sees a key)."""
    x = rng.normal(size=(B, T, 5)).astype(dtype)
    x[0, [4, 9, 10]] = 0.0
    if B > 1:
        x[B - 1, T - 5:] = 0.0
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("query_masked", [False, True])
def test_hand_built_layers_stream_as_the_whole_call(kind, dtype, B, query_masked):
    """Fed in random chunks, then whole, against the whole call.  A masked query step
    of Keras's default MultiHeadAttention path (not ``zero_masked``) is refused."""
    rng = np.random.RandomState(KINDS.index(kind) * 10 + B)
    T = 23
    m = _hand_built(kind, dtype, rng, query_masked)
    x = _holes(rng, B, T, dtype)
    want = m(x)
    assert want.dtype == dtype
    s = fastrnn.Stream(m, batch_size=B)
    sizes = list(rng.randint(1, 6, size=8))
    if query_masked and kind in ("mha", "mha_nobias", "mha_additive"):
        with pytest.raises(ValueError, match="at step 4 of sequence 0: its query step is "
                                             "masked"):
            _fed(s, [x], sizes)
        return
    got = _fed(s, [x], sizes)[0]
    tol = 2e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    s.reset()
    np.testing.assert_allclose(_fed(s, [x], [T])[0], want, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_a_query_before_any_unmasked_key_is_refused(kind):
    """The values' and keys' first step masked under an unmasked query: Keras's
    weights there spread over every step (later ones too), except MultiHeadAttention's
    ``zero_masked`` path (weights 0), which streams."""
    rng = np.random.RandomState(7)
    m = _hand_built(kind, "float32", rng, query_masked=False)
    x = _holes(rng, 2, 12, "float32")
    x[1, :2] = 0.0
    s = fastrnn.Stream(m, batch_size=2)
    if kind != "mha_zero":
        with pytest.raises(ValueError, match="at step 0 of sequence 1: every step so far "
                                             "is masked"):
            s.feed(x[:, :3])
        assert s.steps_seen == 0 and s.state[-1] is None
        return
    np.testing.assert_allclose(_fed(s, [x], [1, 2]), [m(x)], rtol=0, atol=2e-6)


def test_setting_an_attention_state_is_checked():
    model, xs, ys = _fixture("stream_mha_decoder")
    s = fastrnn.Stream(model, batch_size=3)
    s.feed(xs[0][:, :4])
    st = s.state
    k, v, m = st[-1]
    assert k.shape == (3, 4, 2, 4) and v.shape == (3, 4, 2, 4) and m is None
    bad = [((k, v), ValueError, "must be a tuple"),
           ((k[:, :, :1], v, None), ValueError, r"keys / values of shapes"),
           ((k[:2], v[:2], None), ValueError, "batch 3"),
           ((k, v[:, :3], None), ValueError, "the same steps"),
           ((k.astype(int), v, None), TypeError, "floating point"),
           ((k, v, np.ones((3, 4))), ValueError, "the mask must be bool"),
           ((object(), v, None), TypeError, "floating point, got object")]
    for value, err, msg in bad:
        with pytest.raises(err, match=msg):
            s.state = st[:-1] + [value]
        assert s.state[-1][0].shape == (3, 4, 2, 4)      # (unchanged)
    again = fastrnn.Stream(model, batch_size=3)
    again.state = st[:-1] + [(k, v, np.ones((3, 4), bool))]
    np.testing.assert_allclose(again.feed(xs[0][:, 4:]), ys[0][:, 4:], rtol=0, atol=TOL)
    again.state = None
    assert again.state[-1] is None and again.steps_seen == 5


@pytest.mark.parametrize("kind", ["mha", "mha_zero", "dot"])
def test_a_masked_query_over_unmasked_keys(kind):
    """Only the query masked (the value and key of an unmasked input): Keras's default
    MultiHeadAttention path spreads a masked query step over every step, so the stream
    refuses it (it streamed, 5.3 off at that step: an audit); zero_masked and
    Attention stream."""
    rng = np.random.RandomState(11)
    rnn = lambda cell: KerasRNN(cell(5, 4, batch_first=True), return_sequences=True)
    q, v = rnn(LSTM), rnn(GRU)
    m = Model([Masking(0.0), q, v, _layers(kind, "float32", rng),
               Dense(rng.uniform(-1, 1, (4, 2)))],
              inputs=[(INPUT, 0), (0, 0), (INPUT, 0), [(1, 0), (2, 0)], (3, 0)], name="m")
    x = rng.normal(size=(2, 8, 5)).astype("float32")
    x[1, 2] = 0.0
    s = fastrnn.Stream(m, batch_size=2)
    if kind == "mha":
        s.feed(x[:, :2])
        with pytest.raises(ValueError, match="at step 2 of sequence 1: its query step is "
                                             "masked"):
            s.feed(x[:, 2:4])
        return
    np.testing.assert_allclose(_fed(s, [x], [1, 3]), [m(x)], rtol=0, atol=2e-6)


def test_a_residual_add_of_a_masked_query_is_warned_and_streams_as_the_whole_call():
    """Keras 3.15's MultiHeadAttention clears the mask of the tensors it reads, so
    Keras's residual Add of its masked query carries no mask and the AdditiveAttention
    over the sum attends to the masked steps; fastrnn keeps the mask (0.08 apart here;
    an audit found it, 0.19 in its model): warned at load naming the Add.  The stream
    gives the whole call's outputs."""
    with pytest.warns(UserWarning, match=r"read by MultiHeadAttention .* and by 'add"):
        model, xs, (y,) = _fixture(KNOWN)
    want = model(xs)
    assert np.abs(want - y).max() > 1e-2           # (the known difference)
    s = fastrnn.Stream(model, batch_size=3)
    np.testing.assert_allclose(_fed(s, xs, [1, 2])[0], want, rtol=0, atol=1e-6)


def test_a_state_set_in_float64_runs_in_the_models_dtype():
    """Keys and values set in another dtype take the model's at the next feed (the
    outputs stay float32, within float32 rounding of the float32 state's)."""
    model, xs, ys = _fixture("stream_mha_decoder")
    s = fastrnn.Stream(model, batch_size=3)
    s.feed(xs[0][:, :4])
    st = s.state
    k, v, m = st[-1]
    again = fastrnn.Stream(model, batch_size=3)
    again.state = st[:-1] + [(k.astype(np.float64), v.astype(np.float64), m)]
    got = again.feed(xs[0][:, 4:])
    assert got.dtype == np.float32 and again.state[-1][0].dtype == np.float32
    np.testing.assert_allclose(got, ys[0][:, 4:], rtol=0, atol=TOL)
