"""Streaming (fastrnn.stream.Stream): chunked feeding equals whole-sequence runs."""
import os

import numpy as np
import pytest

import fastrnn
import fastrnn.io
from fastrnn.model import Dense, Embedding, KerasRNN, Masking, Model, Bidirectional, Dropout
from fastrnn.stream import Stream

T = 11
CHUNKS = [1, 2, 3, 7, T]
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _chunks(n, size):
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _make(cell, **kw):
    cls = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}[cell]
    return cls(5, 7, seed=3, **kw)


LAYER_CASES = [
    ("LSTM", {}), ("GRU", {}), ("RNN", {}),
    ("LSTM", {"num_layers": 2}), ("GRU", {"num_layers": 3}), ("RNN", {"num_layers": 2}),
    ("LSTM", {"proj_size": 4, "num_layers": 2}), ("GRU", {"reset_after": False}),
    ("LSTM", {"batch_first": True}), ("GRU", {"dtype": "float64", "num_layers": 2}),
]


@pytest.mark.parametrize("cell,kw", LAYER_CASES)
@pytest.mark.parametrize("size", CHUNKS)
def test_layer_chunks_equal_whole(cell, kw, size):
    layer = _make(cell, **kw)
    B = 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, 5)).astype(layer.dtype)
    xin = x.transpose(1, 0, 2) if layer.batch_first else x
    whole, hn = layer(xin)
    s = Stream(layer, batch_size=B)
    parts = []
    for a, b in _chunks(T, size):
        c = x[a:b]
        parts.append(s.feed(c.transpose(1, 0, 2) if layer.batch_first else c))
    got = np.concatenate(parts, axis=1 if layer.batch_first else 0)
    tol = 1e-12 if layer.dtype == np.float64 else 2e-5
    _close(got, whole, tol)
    st = s.state
    if cell == "LSTM":
        _close(st[0], hn[0], tol)
        _close(st[1], hn[1], tol)
    else:
        _close(st, hn, tol)
    assert s.steps_seen == T


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_step_equals_whole_and_state_roundtrip(cell):
    layer = _make(cell, num_layers=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, 2, 5)).astype(np.float32)
    whole, _ = layer(x)
    s = Stream(layer, batch_size=2)
    ys = []
    for t in range(T):
        if t == 5:
            saved = s.state
            s2 = Stream(layer, batch_size=2)
            s2.state = saved         # continue from a copy of the state
            s = s2
        y = s.step(x[t])
        assert y.shape == (2, 7)
        ys.append(y)
    _close(np.stack(ys), whole)
    # state is a copy: changing it does not change the stream
    st = s.state
    (st[0] if cell == "LSTM" else st)[...] = 99
    assert not np.any((s.state[0] if cell == "LSTM" else s.state) == 99)


def test_initial_state_and_reset():
    layer = fastrnn.LSTM(5, 7, num_layers=2, seed=0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, 1, 5)).astype(np.float32)
    h0 = rng.standard_normal((2, 1, 7)).astype(np.float32)
    c0 = rng.standard_normal((2, 1, 7)).astype(np.float32)
    whole, _ = layer(x, (h0, c0))
    s = Stream(layer)
    s.state = (h0, c0)
    _close(s.feed(x), whole)
    s.reset()
    _close(s.feed(x), layer(x)[0])
    s.reset(batch_size=4)
    assert s.step(np.zeros((4, 5), np.float32)).shape == (4, 7)
    assert "batch_size=4" in repr(s)
    # None is the zero state (as hx=None), keeping the batch size and steps seen
    s.reset(batch_size=1)
    s.feed(x[:5])
    s.state = None
    assert s.steps_seen == 5
    assert all(not a.any() for a in s.state)
    _close(s.feed(x), layer(x)[0])


def test_model_state_none_zeroes_one_layer():
    m1, _ = _models()
    ids = np.array([[3, 4, 0, 5, 9, 1]])
    s = Stream(m1)
    s.feed(ids)
    kept = s.state
    s.state = [None, kept[1]]
    st = s.state
    assert not st[0][0].any() and not st[0][1].any()
    np.testing.assert_array_equal(st[1][0], kept[1][0])
    s.state = None
    assert not any(a.any() for layer_state in s.state for a in layer_state)
    _close(s.feed(ids), Stream(m1).feed(ids))


def test_layer_mask_chunks():
    layer = fastrnn.GRU(5, 7, seed=4)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, 3, 5)).astype(np.float32)
    mask = rng.random((T, 3)) > 0.4
    mask[:4, 0] = False          # leading masked steps, across a chunk boundary
    mask[3:6, 1] = False
    whole, hn = layer(x, mask=mask)
    for size in CHUNKS:
        s = Stream(layer, batch_size=3)
        got = np.concatenate([s.feed(x[a:b], mask=mask[a:b]) for a, b in _chunks(T, size)])
        _close(got, whole)
        _close(s.state, hn)


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_steps_then_masked_chunk(cls):
    """A chunk after step() calls whose first steps are masked carries the last step's
    output (the runner reads it from the state), whatever the caller did to the array
    step() returned; steps given other dtypes / layouts are converted."""
    layer = cls(5, 7, num_layers=2, seed=4)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 5)).astype(np.float32)
    mask = np.ones((8, 3), bool)
    mask[3:6, 0] = False
    mask[3, 2] = False
    whole, hn = layer(x, mask=mask)
    s = Stream(layer, batch_size=3)
    outs = [s.step(x[0]), s.step(x[1].astype(np.float64)),
            s.step(np.asfortranarray(x[2]))]
    _close(np.array(outs), whole[:3])
    outs[-1][...] = 99.0
    got = s.feed(x[3:], mask=mask[3:])
    _close(got, whole[3:])
    _close(s.state, hn)


def test_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        Stream(fastrnn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="go_backwards"):
        Stream(fastrnn.GRU(3, 4, go_backwards=True))
    with pytest.raises(TypeError):
        Stream(object())
    for cell in (fastrnn.LSTMCell(3, 4), fastrnn.GRUCell(3, 4), fastrnn.RNNCell(3, 4)):
        with pytest.raises(TypeError, match=r"Stream\(cell\.layer\)"):
            Stream(cell)
        Stream(cell.layer).step(np.zeros((1, 3), np.float32))   # (what it suggests works)
    with pytest.raises(ValueError):
        Stream(fastrnn.GRU(3, 4), batch_size=0)
    s = Stream(fastrnn.GRU(3, 4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size=2"):
        s.step(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="features|input_size"):
        s.step(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.state = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(TypeError):
        s.state = (np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))
    with pytest.raises(TypeError):
        Stream(fastrnn.LSTM(3, 4)).state = np.zeros((1, 1, 4))


# ---------------------------------------------------------------- models

def _rnn(core_cls, i, h, rs, **kw):
    return KerasRNN(core_cls(i, h, batch_first=True, seed=5, **kw), return_sequences=rs)


def _models():
    rng = np.random.default_rng(7)
    emb = Embedding(rng.standard_normal((10, 6)).astype(np.float32), mask_zero=True)
    m1 = Model([emb, _rnn(fastrnn.LSTM, 6, 8, True), Dropout(0.1),
                _rnn(fastrnn.GRU, 8, 5, False),
                Dense(rng.standard_normal((5, 4)).astype(np.float32), np.zeros(4, np.float32),
                      activation="softmax")], name="emb_lstm_gru")
    m2 = Model([Masking(0.0), _rnn(fastrnn.SimpleRNN, 3, 6, True),
                Dense(rng.standard_normal((6, 2)).astype(np.float32), None, activation="tanh")],
               name="masking_rnn")
    return m1, m2


@pytest.mark.parametrize("size", CHUNKS)
def test_model_chunks(size):
    m1, m2 = _models()
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 10, size=(3, T))
    ids[0, :4] = 0                    # masked (mask_zero) leading and inner steps
    ids[1, 5:8] = 0
    want = m1(ids)                    # (B, out): last step only
    s = Stream(m1, batch_size=3)
    got = np.concatenate([s.feed(ids[:, a:b]) for a, b in _chunks(T, size)], axis=1)
    assert got.shape == (3, T, 4)
    _close(got[:, -1], want)

    x = rng.standard_normal((2, T, 3)).astype(np.float32)
    x[0, 2:5] = 0.0
    x[1, :3] = 0.0
    want2 = m2(x)                     # (B, T, 2)
    s2 = Stream(m2, batch_size=2)
    got2 = np.concatenate([s2.feed(x[:, a:b]) for a, b in _chunks(T, size)], axis=1)
    _close(got2, want2)


def test_model_step_and_state():
    m1, _ = _models()
    ids = np.array([[3, 4, 0, 5, 9, 1]])
    s = Stream(m1)
    for t in range(ids.shape[1]):
        y = s.step(ids[:, t])
    assert y.shape == (1, 4)
    _close(y, m1(ids))
    st = s.state
    assert isinstance(st, list) and len(st) == 2 and isinstance(st[0], tuple)
    s.reset()
    s.state = st
    with pytest.raises(ValueError, match="list of 2"):
        s.state = st[:1]


def test_model_refusals():
    core_f = fastrnn.LSTM(3, 4, batch_first=True)
    core_b = fastrnn.LSTM(3, 4, batch_first=True, go_backwards=True)
    bi = Bidirectional(KerasRNN(core_f, return_sequences=True), KerasRNN(core_b, return_sequences=True))
    with pytest.raises(ValueError, match="Bidirectional"):
        Stream(Model([bi]))
    with pytest.raises(ValueError, match="go_backwards"):
        Stream(Model([KerasRNN(core_b)]))
    with pytest.raises(ValueError, match="no recurrent"):
        Stream(Model([Dropout(0.0)]))


def test_keras_file_model_streams():
    pytest.importorskip("h5py")
    path = os.path.join(FIXTURES, "keras", "k3_lstm_basic.keras")
    if not os.path.exists(path):
        pytest.skip("no keras fixture")
    model = fastrnn.load(path)
    ref = np.load(os.path.join(FIXTURES, "keras", "k3_lstm_basic.npz"))
    x = ref["x"]
    s = Stream(model, batch_size=x.shape[0])
    got = np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(x.shape[1], 2)], axis=1)
    want = model.predict(x)
    if want.ndim == 2:
        got = got[:, -1]
    _close(got, want)


def test_float64_model_of_a_float32_keras_input_streams():
    """A Keras float64 model on a default (float32) Input: its InputCast (the input
    rounded to float32) runs step by step; chunks and single steps give Keras's outputs
    (float64 inputs float32 cannot hold) to ~1e-16."""
    pytest.importorskip("h5py")
    from fastrnn.model import InputCast
    name = "k3_policy64_f32_input"
    model = fastrnn.load(os.path.join(FIXTURES, "keras", name + ".keras"))
    assert isinstance(model.layers[0], InputCast)
    ref = np.load(os.path.join(FIXTURES, "keras", name + ".npz"))
    x, want = ref["x"], ref["y0"]
    for size in (1, 2, x.shape[1]):
        s = Stream(model, batch_size=x.shape[0])
        got = np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(x.shape[1], size)],
                             axis=1)
        assert got.dtype == np.float64
        assert np.max(np.abs(got - want)) <= 1e-12
    s = Stream(model, batch_size=x.shape[0])
    got = np.stack([s.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    assert np.max(np.abs(got - want)) <= 1e-12


def test_normalisations_over_the_features_stream():
    """LayerNormalization over the last axis and BatchNormalization on the features run
    step by step (chunks give the whole call's outputs); over the steps they are refused,
    as are pooling, Flatten and RepeatVector."""
    from fastrnn.model import (BatchNormalization, Flatten, GlobalPooling1D,
                               LayerNormalization, RepeatVector)
    rng = np.random.default_rng(3)
    core = fastrnn.GRU(3, 4, batch_first=True, seed=1)
    g, b = rng.standard_normal(4), rng.standard_normal(4)
    model = Model([Masking(0.0), KerasRNN(core, return_sequences=True),
                   LayerNormalization(g, b, axis=[2]),
                   BatchNormalization(b, g * g + 0.5, g, b, axis=-1),
                   Dense(rng.standard_normal((4, 2)), None)])
    x = rng.standard_normal((2, T, 3)).astype(np.float32)
    x[1, 3:5] = 0.0
    for size in (1, 3, T):
        s = Stream(model, batch_size=2)
        got = np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(T, size)], axis=1)
        _close(got, model(x))
    for extra in (LayerNormalization(g[:1].repeat(T), None, axis=1),
                  BatchNormalization(b[:1].repeat(T), g[:1].repeat(T) ** 2 + .5, axis=1),
                  GlobalPooling1D("average"), Flatten()):
        with pytest.raises(ValueError, match=f"cannot stream layer .* {type(extra).__name__}"):
            Stream(Model([KerasRNN(core, return_sequences=True), extra]))
    with pytest.raises(ValueError, match="cannot stream layer .* RepeatVector"):
        Stream(Model([RepeatVector(2), KerasRNN(core)]))


def test_layers_after_a_last_step_rnn_stream_as_the_whole_call_runs_them():
    """After an RNN with return_sequences=False the whole call gives the next layers
    (B, features): a normalisation over axis 1 is over the features there, and streams
    (each step's output is that of the sequence so far); a TimeDistributed or an RNN
    after it fails in the whole call and is refused by the Stream."""
    from fastrnn.model import BatchNormalization, LayerNormalization, TimeDistributed
    rng = np.random.default_rng(4)
    core = fastrnn.LSTM(3, 4, batch_first=True, seed=2)
    g, b = rng.standard_normal(4), rng.standard_normal(4)
    model = Model([KerasRNN(core, return_sequences=False),
                   LayerNormalization(g, b, axis=1),
                   BatchNormalization(b, g * g + 0.5, g, b, axis=1),
                   Masking(0.0), Dense(rng.standard_normal((4, 2)), None, "softmax")])
    x = rng.standard_normal((3, T, 3)).astype(np.float32)
    for size in (1, 4, T):
        s = Stream(model, batch_size=3)
        got = np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(T, size)], axis=1)
        assert got.shape == (3, T, 2)
        for t in (0, 5, T - 1):
            _close(got[:, t], model(x[:, :t + 1]))
    s = Stream(model, batch_size=3)
    _close(np.stack([s.step(x[:, t]) for t in range(T)], axis=1), got)
    for extra in (TimeDistributed(Dense(rng.standard_normal((4, 2)))),
                  KerasRNN(fastrnn.GRU(4, 2, batch_first=True, seed=1))):
        bad = Model([KerasRNN(core), extra])
        with pytest.raises(ValueError, match="(batch, time, features)|(B, T, ...)"):
            bad(x)
        with pytest.raises(ValueError, match=f"cannot stream .* {type(extra).__name__} "
                                             r"needs \(B, T, ...\) input, but it follows "
                                             "layer .*return_sequences=False"):
            Stream(bad)


# ---------------------------------------------------------------- greedy decoding

def _seq2seq_state_dict(V=12, E=6, H=10, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)

    class Seq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.encoder = torch.nn.LSTM(E, H, num_layers=2, batch_first=True)
            self.decoder = torch.nn.LSTM(E, H, num_layers=2, batch_first=True)
            self.out = torch.nn.Linear(H, V)

    return torch, Seq2Seq()


def greedy_decode_fastrnn(sd, src, bos, eos, max_len):
    """The README example: an encoder-decoder from a dict of arrays in PyTorch naming."""
    emb = sd["embedding.weight"]
    enc = fastrnn.io.load_state_dict(sd, prefix="encoder")
    dec = fastrnn.io.load_state_dict(sd, prefix="decoder")
    W, b = sd["out.weight"], sd["out.bias"]
    _, state = enc(emb[src][:, None, :])                # (T, 1, E) -> final (h, c)
    stream = Stream(dec, batch_size=1)
    stream.state = state
    tok, result = bos, []
    for _ in range(max_len):
        h = stream.step(emb[[tok]])                     # (1, H)
        tok = int(np.argmax(h @ W.T + b))
        if tok == eos:
            break
        result.append(tok)
    return result


def greedy_decode_torch(torch, m, src, bos, eos, max_len):
    with torch.no_grad():
        _, state = m.encoder(m.embedding(torch.as_tensor(src)[None]))
        tok, result = bos, []
        for _ in range(max_len):
            y, state = m.decoder(m.embedding(torch.tensor([[tok]])), state)
            tok = int(m.out(y[0, -1]).argmax())
            if tok == eos:
                break
            result.append(tok)
    return result


@pytest.mark.parametrize("seed", range(4))
def test_greedy_decoder_matches_torch(seed):
    torch, m = _seq2seq_state_dict(seed=seed)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(seed)
    src = rng.integers(2, 12, size=9)
    # eos=-1 never stops early: 15 decoded tokens compared one by one
    got = greedy_decode_fastrnn(sd, src, bos=0, eos=-1, max_len=15)
    want = greedy_decode_torch(torch, m, src, bos=0, eos=-1, max_len=15)
    assert got == want and len(got) == 15
    assert greedy_decode_fastrnn(sd, src, 0, 1, 15) == greedy_decode_torch(torch, m, src, 0, 1, 15)


def test_fast_step_hook_is_used(monkeypatch):
    """Stream.step goes through the layer's lean per-step entry ``_step_fast`` (same
    results as the generic path)."""
    layer = fastrnn.LSTM(5, 7, num_layers=2, seed=9)
    x = np.random.default_rng(9).standard_normal((T, 2, 5)).astype(np.float32)
    want = layer(x)[0]
    calls = []

    def fake(xt, h, c, num_threads, copy=False):
        assert copy             # the stream asks for a new array, not a view of h
        calls.append(1)
        y, (h2, c2) = layer(xt[None], (h, c), num_threads=num_threads)
        h[...] = h2
        c[...] = c2
        return y[0]

    monkeypatch.setattr(layer, "_step_fast", fake, raising=False)
    s = Stream(layer, batch_size=2)
    got = np.stack([s.step(x[t]) for t in range(T)])
    assert len(calls) == T
    _close(got, want)
    _close(s.state[0], layer(x)[1][0])


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}),
                                    (fastrnn.GRU, {"reset_after": False}),
                                    (fastrnn.SimpleRNN, {"nonlinearity": "relu"}),
                                    (fastrnn.LSTM, {"proj_size": 3}),
                                    (fastrnn.LSTM, {"dtype": "float64"})])
def test_step_fast_path_equals_whole(cls, kw):
    """The real lean step (and its fallback for projections) equals feeding whole; the
    returned outputs are not views of the carried state."""
    layer = cls(5, 7, num_layers=2, seed=3, **kw)
    x = np.random.default_rng(3).standard_normal((9, 2, 5)).astype(layer.dtype)
    out, st = layer(x)
    s = Stream(layer, batch_size=2)
    ys = [s.step(x[t]) for t in range(9)]
    _close(np.stack(ys), out)
    h = st[0] if isinstance(st, tuple) else st
    got = s.state[0] if isinstance(s.state, tuple) else s.state
    _close(got, h)
    assert not np.shares_memory(ys[-1], got)


def test_bad_thread_count_refused_when_the_stream_is_made():
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        fastrnn.Stream(fastrnn.LSTM(3, 4), num_threads=0)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_stream_follows_a_layer_converted_in_place(cell):
    """layer.double() under a stream made before: the next steps run in float64 on the
    carried state (it raised "h has dtype <f4, expected float64")."""
    layer = getattr(fastrnn, cell)(4, 6, seed=0)
    ref = getattr(fastrnn, cell)(4, 6, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    s, r = Stream(layer, batch_size=2), Stream(ref, batch_size=2)
    s.step(x[0])
    r.step(x[0].astype(np.float64))
    layer.double()
    for t in range(1, 5):
        y = s.step(x[t])
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, r.step(x[t].astype(np.float64)), rtol=1e-6, atol=1e-7)


def _conv1d(rng, k, cin, F, dtype=np.float32, **kw):
    from fastrnn.model import Conv1D
    return Conv1D((rng.standard_normal((k, cin // kw.get("groups", 1), F)) * .4).astype(dtype),
                  rng.standard_normal(F).astype(dtype), dtype=np.dtype(dtype).name, **kw)


def test_keras_causal_convolutions_stream_as_keras_computes_them():
    """Causal Conv1D layers (dilated, grouped) and a one-tap Conv1D before a GRU, made by
    Keras (fixture k3_causal_conv_stream): step by step and in chunks of any size, the
    stream gives Keras's outputs; each causal convolution keeps its last
    (kernel_size - 1) * dilation_rate inputs as state."""
    pytest.importorskip("h5py")
    name = "k3_causal_conv_stream"
    model = fastrnn.load(os.path.join(FIXTURES, "keras", name + ".keras"))
    ref = np.load(os.path.join(FIXTURES, "keras", name + ".npz"))
    x, want = ref["x"], ref["y0"]
    B, n = x.shape[:2]
    for size in (1, 2, 3, n):
        s = Stream(model, batch_size=B)
        got = np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(n, size)], axis=1)
        assert np.max(np.abs(got - want)) <= 1e-6
    s = Stream(model, batch_size=B)
    got = np.stack([s.step(x[:, t]) for t in range(n)], axis=1)
    assert np.max(np.abs(got - want)) <= 1e-6
    # the state: the two causal convolutions' last inputs, then the GRU's
    shapes = [np.shape(a) for a in s.state]
    assert shapes == [(B, 4, x.shape[2]), (B, 1, 6), (1, B, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_conv_stream_state_resumes_and_bad_states_change_nothing(dtype):
    from fastrnn.model import Masking
    rng = np.random.default_rng(5)
    core = fastrnn.LSTM(6, 5, batch_first=True, seed=3, dtype=dtype)
    model = Model([Masking(0.0), _conv1d(rng, 3, 4, 6, dtype, padding="causal",
                                         dilation_rate=2, activation="relu"),
                   _conv1d(rng, 1, 6, 6, dtype, padding="same"),
                   KerasRNN(core, return_sequences=True)])
    x = rng.standard_normal((3, T, 4)).astype(dtype)
    x[1, 2:4] = 0.0         # (masked steps: the convolution drops the mask, as Keras's)
    want = model.predict(x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    s = Stream(model, batch_size=3)
    first = s.feed(x[:, :5])
    saved = s.state
    assert len(saved) == 2 and saved[0].shape == (3, 4, 4) and saved[0].dtype == dtype
    rest = s.feed(x[:, 5:])
    assert np.max(np.abs(np.concatenate([first, rest], 1) - want)) <= tol
    s2 = Stream(model, batch_size=3)
    s2.state = saved
    assert np.max(np.abs(s2.feed(x[:, 5:]) - want[:, 5:])) <= tol
    # an entry of the wrong shape names the convolution and leaves every entry as it was
    before = s2.state
    with pytest.raises(ValueError, match="state\\[0\\].*Conv1D"):
        s2.state = [np.zeros((3, 2, 4)), None]
    with pytest.raises(ValueError, match="state\\[1\\]"):
        s2.state = [np.ones((3, 4, 4)), (np.zeros((1, 3, 5)), np.zeros((1, 2, 5)))]
    with pytest.raises(TypeError, match="state\\[0\\].*floating point"):
        s2.state = [np.zeros((3, 4, 4), np.int32), None]
    with pytest.raises(TypeError, match="state\\[0\\].*not an array"):
        s2.state = [[[[0.0] * 4] * 4, [[0.0] * 4]] * 2, None]
    for a, b in zip(s2.state, before):
        np.testing.assert_array_equal(np.asarray(a[0] if isinstance(a, tuple) else a),
                                      np.asarray(b[0] if isinstance(b, tuple) else b))
    # None zeroes an entry; reset zeroes them all
    s2.state = [None, saved[1]]
    assert not s2.state[0].any()
    s.reset()
    assert not s.state[0].any()
    np.testing.assert_allclose(s.feed(x[:, :5]), first, atol=tol)


def test_convolutions_a_stream_cannot_run_are_refused_by_name():
    rng = np.random.default_rng(6)
    core = fastrnn.GRU(4, 3, batch_first=True, seed=1)
    for conv, why in ((_conv1d(rng, 3, 4, 4, padding="same"), "padding='same' with 3 taps"),
                      (_conv1d(rng, 2, 4, 4, padding="valid"), "padding='valid'"),
                      (_conv1d(rng, 2, 4, 4, padding="causal", strides=2), "strides=2"),
                      (_conv1d(rng, 1, 4, 4, strides=2), "strides=2")):
        with pytest.raises(ValueError, match=f"cannot stream layer .* Conv1D: {why}"):
            Stream(Model([conv, KerasRNN(core)]))
    # after an RNN that returns its last step the whole call fails on (B, features) too
    with pytest.raises(ValueError, match="return_sequences=False"):
        Stream(Model([KerasRNN(fastrnn.GRU(4, 4, batch_first=True)),
                      _conv1d(rng, 2, 4, 4, padding="causal")]))
    # a model of causal convolutions alone streams (a TCN); of stateless layers, refused
    tcn = Model([_conv1d(rng, 3, 4, 4, padding="causal", dilation_rate=2),
                 _conv1d(rng, 2, 4, 3, padding="causal")])
    x = rng.standard_normal((2, T, 4)).astype(np.float32)
    s = Stream(tcn, batch_size=2)
    _close(np.concatenate([s.feed(x[:, a:b]) for a, b in _chunks(T, 3)], axis=1),
           tcn.predict(x))
    with pytest.raises(ValueError, match="no recurrent layer .* carries nothing"):
        Stream(Model([_conv1d(rng, 1, 4, 4), Dense(np.ones((4, 2), np.float32), None)]))


def test_conv1d_refuses_complex_input_as_the_recurrent_layers_do():
    rng = np.random.default_rng(8)
    conv = _conv1d(rng, 2, 3, 3, padding="causal")
    x = (rng.standard_normal((1, 4, 3)) + 1j).astype(np.complex64)
    with pytest.raises(TypeError, match="expected real numbers, got complex64"):
        conv.call(x)
    s = Stream(Model([conv, KerasRNN(fastrnn.GRU(3, 2, batch_first=True))]))
    with pytest.raises(TypeError, match="complex"):
        s.feed(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3])
def test_model_step_takes_the_layers_streaming_entry_and_matches_the_whole_call(dtype, B):
    """A model's Stream.step runs each recurrent layer through its streaming entry where
    the step is unmasked (as a layer's stream does), and the general call where it is
    masked: stepping through masked and unmasked ids (leading ones too) gives the whole
    call's outputs, and the entry is taken."""
    rng = np.random.default_rng(9)
    c1 = fastrnn.LSTM(5, 6, batch_first=True, seed=1, dtype=dtype)
    c2 = fastrnn.GRU(6, 4, batch_first=True, seed=2, dtype=dtype)
    name = np.dtype(dtype).name
    model = Model([Embedding(rng.standard_normal((9, 5)), mask_zero=True, dtype=name),
                   KerasRNN(c1, return_sequences=True), KerasRNN(c2),
                   Dense(rng.standard_normal((4, 2)), None, dtype=name)])
    ids = rng.integers(1, 9, size=(B, T))
    ids[0, :2] = 0
    ids[-1, 5:7] = 0
    want = model.predict(ids)
    taken = []
    for core in (c1, c2):
        real = core._step_fast
        core._step_fast = lambda *a, _r=real, **k: taken.append(1) or _r(*a, **k)
    s = Stream(model, batch_size=B)
    got = np.stack([s.step(ids[:, t]) for t in range(T)], axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(got[:, -1] - want)) <= tol
    s2 = Stream(model, batch_size=B)
    assert np.max(np.abs(s2.feed(ids) - got)) <= tol
    # (unmasked steps: all of them where B = 1 but the two masked ones; none where a row
    # of the batch is masked at that step)
    masked_steps = int(np.sum(~np.all(ids != 0, axis=0)))
    assert len(taken) == 2 * (T - masked_steps)


def test_model_step_refuses_what_the_layer_call_refuses():
    # (an integer step into a model whose first layer is recurrent: the layer call's
    # TypeError, not a silent conversion by the streaming entry)
    model = Model([KerasRNN(fastrnn.GRU(3, 2, batch_first=True))])
    s = Stream(model)
    with pytest.raises(TypeError, match="floating-point"):
        s.step(np.ones((1, 3), np.int64))
    assert s.step(np.ones((1, 3), np.float16)).dtype == np.float32
