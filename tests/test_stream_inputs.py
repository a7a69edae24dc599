"""Stream inputs the layers take (unaligned arrays, torch tensors), the masks they refuse,
and the errors a Stream gives for bad state, step input and objects it cannot stream."""
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import Stream
from fastrnn.model import Dense, Embedding, KerasRNN, Model

torch = pytest.importorskip("torch")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _torch_lstm(I=4, H=6, L=2, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(I, H, num_layers=L)
    return m, fastrnn.from_torch(m)


def _unaligned(values):
    """values (C order) copied into an array at an odd byte offset of a buffer, as
    np.frombuffer gives for a record behind a 1-byte header: C-contiguous, not aligned."""
    values = np.ascontiguousarray(values)
    buf = bytearray(values.nbytes + 1)
    a = np.frombuffer(buf, dtype=values.dtype, count=values.size, offset=1)
    a = a.reshape(values.shape)
    a[...] = values
    return a


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [1, 3])
def test_step_takes_unaligned_arrays(dtype, B):
    """A C-contiguous but unaligned frame (it raised "StepPlan.step: x must be
    C-contiguous, aligned") gives torch's outputs, as the layer call and feed do."""
    m, layer = _torch_lstm()
    m, layer = m.to(getattr(torch, dtype)), layer.to(dtype)
    x = np.random.default_rng(0).standard_normal((5, B, 4)).astype(dtype)
    with torch.no_grad():
        want = m(torch.from_numpy(x))[0].numpy()
    s = Stream(layer, batch_size=B)
    frames = [_unaligned(x[t]) for t in range(5)]
    assert not frames[0].flags.aligned and frames[0].flags.c_contiguous
    got = np.stack([s.step(f) for f in frames])
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_stream_takes_torch_tensors_as_the_layers_do():
    """Tensors that require grad and bfloat16 tensors (the layers take them) work in
    step, feed and state=, as their float32 values (they raised torch's RuntimeError /
    "Got unsupported ScalarType BFloat16")."""
    m, layer = _torch_lstm()
    x = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1))
    enc = torch.nn.LSTM(4, 6, num_layers=2)
    _, (h0, c0) = enc(torch.randn(3, 2, 4))              # grad-tracking states
    assert h0.requires_grad
    with torch.no_grad():
        want = m(x, (h0, c0))[0].numpy()
        want_bf = m(x.bfloat16().float(), (h0, c0))[0].numpy()
    s = Stream(layer, batch_size=2)
    s.state = (h0, c0)
    xg = x.clone().requires_grad_(True)
    got = np.concatenate([s.step(xg[0])[None], s.feed(xg[1:4]), s.feed(xg[4:])])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s.state = (h0.detach().bfloat16(), c0.detach().bfloat16())
    s.state = (h0, c0)                                    # (bfloat16 state accepted)
    xb = x.bfloat16()
    got = np.concatenate([s.step(xb[0])[None], s.feed(xb[1:])])
    np.testing.assert_allclose(got, want_bf, rtol=1e-5, atol=1e-6)


def test_model_stream_takes_torch_ids():
    rng = np.random.default_rng(2)
    model = Model([Embedding(rng.standard_normal((10, 4)), mask_zero=True),
                   KerasRNN(fastrnn.GRU(4, 5, batch_first=True, seed=0), True),
                   Dense(rng.standard_normal((5, 3)), None)])
    ids = rng.integers(0, 10, size=(2, 7))
    want = model(ids)
    s = Stream(model, batch_size=2)
    got = np.concatenate([s.feed(torch.from_numpy(ids[:, :3])),
                          s.step(torch.from_numpy(ids[:, 3]))[:, None],
                          s.feed(torch.from_numpy(ids[:, 4:]))], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_feed_mask_must_be_boolean_as_for_the_layers():
    layer = fastrnn.GRU(3, 4, seed=0)
    x = np.random.default_rng(3).standard_normal((4, 2, 3)).astype(np.float32)
    soft = np.full((4, 2), 0.5)
    with pytest.raises(TypeError, match="mask must be boolean"):
        layer(x, mask=soft)
    with pytest.raises(TypeError, match="mask must be boolean, got dtype float64"):
        Stream(layer, batch_size=2).feed(x, mask=soft)
    ints = np.array([[1, 0], [0, 1], [1, 1], [2, 0]])          # integers: nonzero is True
    np.testing.assert_allclose(Stream(layer, batch_size=2).feed(x, mask=ints),
                               layer(x, mask=ints)[0], rtol=1e-6, atol=1e-7)


def test_state_errors_name_h_and_c():
    s = Stream(fastrnn.LSTM(3, 4, num_layers=2), batch_size=2)
    h = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"state: c must have shape \(2, 2, 4\), got \(2, 2, 5\)"):
        s.state = (h, np.zeros((2, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"state: h must have shape"):
        s.state = (np.zeros((2, 2, 5), np.float32), h)
    with pytest.raises(TypeError, match="state: c must be floating point, got int64"):
        s.state = (h, np.zeros((2, 2, 4), np.int64))


def test_model_step_of_a_scalar_is_a_clear_error():
    rng = np.random.default_rng(4)
    model = Model([Embedding(rng.standard_normal((10, 4))),
                   KerasRNN(fastrnn.LSTM(4, 5, batch_first=True, seed=0), True)])
    s = Stream(model, batch_size=1)
    for bad in (3, None):
        with pytest.raises(ValueError, match=r"step input must be a batch.*got shape \(\)"):
            s.step(bad)
    assert s.step(np.array([3])).shape == (1, 5)


def test_refusals_say_what_to_stream_instead():
    from fastrnn.io.onnx import OnnxModel
    onnx_model = fastrnn.load(os.path.join(FIXTURES, "onnx", "lstm_1l.onnx"))
    assert isinstance(onnx_model, OnnxModel)
    with pytest.raises(TypeError, match="recurrent_layers"):
        Stream(onnx_model)
    Stream(onnx_model.recurrent_layers[0])              # (what it suggests works)
    with pytest.raises(TypeError, match=r"fastrnn\.from_torch"):
        Stream(torch.nn.LSTM(3, 4))
    krnn = KerasRNN(fastrnn.GRU(3, 4, batch_first=True), True)
    with pytest.raises(TypeError, match=r"Stream\(layer\.core\)"):
        Stream(krnn)


def test_step_general_path_of_a_batch_first_layer(monkeypatch):
    """The step entry's general path (a configuration without a step plan; none today)
    runs a batch_first layer on (B, 1, I), not (1, B, I)."""
    torch.manual_seed(5)
    m = torch.nn.GRU(4, 5, batch_first=True)
    layer = fastrnn.from_torch(m)
    assert layer.batch_first
    x = np.random.default_rng(5).standard_normal((3, 6, 4)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x))[0].numpy()
    monkeypatch.setattr(layer, "_make_step_plan", lambda packed, nt: False)
    s = Stream(layer, batch_size=3)
    got = np.stack([s.step(x[:, t]) for t in range(6)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.SimpleRNN])
def test_restored_state_continues_masked_steps_as_the_whole_call(cls):
    """``s.state = saved`` resumes a sequence: at the next chunk's leading masked steps the
    output repeats the last output before the save (the state's top h), as feeding the
    whole sequence does.  (A layer called with ``hx`` instead starts from a zero previous
    output, as tf.keras 2 does: the stream's rule is the resumption's.)"""
    layer = cls(3, 5, num_layers=2, seed=6)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 2, 3)).astype(np.float32)
    mask = np.ones((9, 2), bool)
    mask[4:7, 0] = False                 # masked right after the save point (step 4)
    mask[4, 1] = False
    whole, _ = layer(x, mask=mask)
    a = Stream(layer, batch_size=2)
    first = a.feed(x[:4], mask=mask[:4])
    b = Stream(layer, batch_size=2)
    b.state = a.state
    rest = b.feed(x[4:], mask=mask[4:])
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, rtol=1e-5, atol=1e-6)


def test_returned_states_among_the_outputs_are_refused_by_name():
    """(It printed the internal references: "this model returns [(1, 0), (1, 1), (1, 2)]".)
    A model returning an RNN's states: a stream carries each layer's steps, not the
    states the whole sequence ends with."""
    pytest.importorskip("h5py")
    model = fastrnn.load(os.path.join(FIXTURES, "keras", "k3_state_lstm_embed.keras"))
    rnn = [l for l in model.layers if isinstance(l, KerasRNN)][0]
    with pytest.raises(ValueError, match=rf"the model's output reads {rnn.name}\[1\], not "
                                         rf"the first tensor of layer '{rnn.name}' \(a "
                                         "returned state"):
        Stream(model)
