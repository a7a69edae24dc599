"""Variable-length batches (``lengths=``) and Keras-style masks (``mask=``).

* ``lengths`` equals running every sequence alone, for every cell, uni/bidirectional,
  1-3 layers, with and without an initial state, time-major and batch_first;
* ``lengths`` equals PyTorch's ``pack_padded_sequence(..., enforce_sorted=False)`` path,
  compared live;
* ``lengths`` validation errors;
* ``mask`` equals a direct NumPy implementation of Keras's rule (state carried through
  masked steps, output repeated or zero), which is what fastrnn.model's Keras layers rely on.
"""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")  # in the test extra; never skipped there

CELLS = {
    "rnn_tanh": lambda **kw: fastrnn.SimpleRNN(4, 6, **kw),
    "rnn_relu": lambda **kw: fastrnn.SimpleRNN(4, 6, nonlinearity="relu", **kw),
    "lstm": lambda **kw: fastrnn.LSTM(4, 6, **kw),
    "lstm_proj": lambda **kw: fastrnn.LSTM(4, 6, proj_size=3, **kw),
    "gru": lambda **kw: fastrnn.GRU(4, 6, **kw),
}
T, B = 9, 6
LENS = np.array([3, 9, 1, 5, 9, 2])


@pytest.fixture(autouse=True)
def spans_packed_at_any_size(monkeypatch):
    """Masks of spans run as packed lengths at these small sizes too, and lengths stay
    packed whatever their padding (the rules have their own tests:
    test_span_packing_rule, test_lengths_with_little_padding_run_on_the_mask_kernels)."""
    import fastrnn.layers as layers_mod
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_MACS", 0)
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_SKIP", 0.0)
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_SKIP_NARROW", 0.0)


def _inputs(layer, seed, T_=T, B_=B, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T_, B_, layer.input_size)).astype(dtype)
    L = layer.num_layers * layer.num_directions
    h0 = rng.standard_normal((L, B_, layer.output_size)).astype(dtype)
    c0 = rng.standard_normal((L, B_, layer.hidden_size)).astype(dtype)
    hx = (h0, c0) if isinstance(layer, fastrnn.LSTM) else h0
    return x, hx


def _bf(a, batch_first):
    return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a


def _states(hn):
    return list(hn) if isinstance(hn, tuple) else [hn]


def _packed_plans(layer):
    """Whether the layer keeps a plan of a packed (ragged) call: its calls since its
    plans were dropped packed their sequences (plans are kept when calls never pause)."""
    plans = vars(layer).get("_plans")
    return bool(plans) and any(key[4] for key in plans[2])


def _sel(hx, b):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(s[:, b:b + 1] for s in hx)
    return hx[:, b:b + 1]


CONFIGS = list(itertools.product(sorted(CELLS), [False, True], [1, 2, 3], [False, True],
                                 [False, True]))


@pytest.mark.parametrize("cell,bi,layers,init,batch_first", CONFIGS)
def test_lengths_equal_each_sequence_alone(cell, bi, layers, init, batch_first):
    dt = np.float64
    layer = CELLS[cell](num_layers=layers, bidirectional=bi, batch_first=batch_first,
                        dtype=dt, seed=layers)
    x, hx = _inputs(layer, seed=layers * 7 + bi, dtype=dt)
    hx = hx if init else None
    out, hn = layer(_bf(x, batch_first), hx, lengths=LENS)
    out = _bf(out, batch_first)
    Dh = layer.num_directions * layer.output_size
    assert out.shape == (T, B, Dh)
    for b, n in enumerate(LENS):
        o1, h1 = layer(_bf(x[:n, b:b + 1], batch_first), _sel(hx, b))
        o1 = _bf(o1, batch_first)
        np.testing.assert_allclose(out[:n, b], o1[:, 0], rtol=1e-12, atol=1e-12)
        assert np.all(out[n:, b] == 0)                   # past the end: exactly zero
        for s, s1 in zip(_states(hn), _states(h1)):
            np.testing.assert_allclose(s[:, b], s1[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bi", [False, True])
def test_lengths_float32_and_special_cases(cell, bi):
    layer = CELLS[cell](num_layers=2, bidirectional=bi, seed=3)
    x, hx = _inputs(layer, seed=5)
    # all lengths == T: identical to the dense path
    o_dense, h_dense = layer(x, hx)
    o_full, h_full = layer(x, hx, lengths=np.full(B, T))
    np.testing.assert_allclose(o_full, o_dense, rtol=1e-6, atol=1e-6)
    for a, b in zip(_states(h_full), _states(h_dense)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # float32 against each sequence alone
    out, hn = layer(x, hx, lengths=LENS)
    for b, n in enumerate(LENS):
        o1, h1 = layer(x[:n, b:b + 1], _sel(hx, b))
        np.testing.assert_allclose(out[:n, b], o1[:, 0], rtol=1e-5, atol=1e-6)
        for s, s1 in zip(_states(hn), _states(h1)):
            np.testing.assert_allclose(s[:, b], s1[:, 0], rtol=1e-5, atol=1e-6)
    # padding content never matters
    x2 = x.copy()
    for b, n in enumerate(LENS):
        x2[n:, b] = 1e3
    out2, hn2 = layer(x2, hx, lengths=LENS)
    np.testing.assert_array_equal(out2, out)
    # list and int32 lengths, unbatched input
    out3, _ = layer(x, hx, lengths=[int(v) for v in LENS])
    np.testing.assert_array_equal(out3, out)
    out4, _ = layer(x, hx, lengths=LENS.astype(np.int32))
    np.testing.assert_array_equal(out4, out)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_zero_length_sequences(cell):
    layer = CELLS[cell](bidirectional=True, seed=1)
    x, hx = _inputs(layer, seed=2)
    lens = np.array([0, 4, 0, 9, 2, 0])
    out, hn = layer(x, hx, lengths=lens)
    for b in np.flatnonzero(lens == 0):
        assert np.all(out[:, b] == 0)
        for s, s0 in zip(_states(hn), _states(hx)):   # final state = initial state
            np.testing.assert_array_equal(s[:, b], s0[:, b])
    out0, hn0 = layer(x, hx, lengths=np.zeros(B, int))
    assert np.all(out0 == 0)


TORCH_CONFIGS = list(itertools.product(sorted(CELLS), [False, True], [1, 3], [False, True],
                                       [False, True]))


@pytest.mark.parametrize("cell,bi,layers,init,batch_first", TORCH_CONFIGS)
def test_lengths_equal_torch_pack_padded_sequence(cell, bi, layers, init, batch_first):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    layer = CELLS[cell](num_layers=layers, bidirectional=bi, batch_first=batch_first, seed=11)
    kw = dict(num_layers=layers, bidirectional=bi, batch_first=batch_first)
    if cell.startswith("rnn"):
        tm = torch.nn.RNN(4, 6, nonlinearity="relu" if cell == "rnn_relu" else "tanh", **kw)
    elif cell == "gru":
        tm = torch.nn.GRU(4, 6, **kw)
    else:
        tm = torch.nn.LSTM(4, 6, proj_size=3 if cell == "lstm_proj" else 0, **kw)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x, hx = _inputs(layer, seed=13)
    hx = hx if init else None
    xi = _bf(x, batch_first)
    out, hn = layer(xi, hx, lengths=LENS)
    packed = pack_padded_sequence(torch.from_numpy(xi), torch.from_numpy(LENS),
                                  batch_first=batch_first, enforce_sorted=False)
    thx = None
    if hx is not None:
        thx = (tuple(torch.from_numpy(s) for s in hx) if isinstance(hx, tuple)
               else torch.from_numpy(hx))
    with torch.no_grad():
        tout, thn = tm(packed, thx)
    tout, _ = pad_packed_sequence(tout, batch_first=batch_first, total_length=T)
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-5, atol=1e-5)
    thn = list(thn) if isinstance(thn, tuple) else [thn]
    for a, b in zip(_states(hn), thn):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


def test_lengths_validation():
    layer = fastrnn.GRU(4, 6, batch_first=True)
    x = np.zeros((3, 5, 4), np.float32)
    with pytest.raises(ValueError, match="shape"):
        layer(x, lengths=[1, 2])                       # wrong count
    with pytest.raises(ValueError, match="shape"):
        layer(x, lengths=np.ones((3, 1), int))         # wrong rank
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        layer(x, lengths=[1, -1, 2])                   # negative
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        layer(x, lengths=[1, 6, 2])                    # longer than T
    with pytest.raises(TypeError, match=r"whole numbers, got \[1.5\]"):
        layer(x, lengths=[1.5, 2.0, 3.0])              # fractional floats
    for big in (np.inf, 1e30):      # (named as given, not as a cast to int64 makes them)
        with pytest.raises(ValueError, match=r"\[0, 5\].*got min 1.0 max " +
                           re.escape(str(big))):
            layer(x, lengths=[1.0, big, 2.0])
    with pytest.raises(ValueError, match=r"\[0, 5\].*got min -inf"):
        layer(x, lengths=[-np.inf, 1.0, 2.0])
    # an empty batch's lengths=[] (numpy makes it float64) is no lengths
    assert layer(np.zeros((0, 5, 4), np.float32), lengths=[])[0].shape == (0, 5, 6)
    with pytest.raises(TypeError, match="integers"):
        layer(x, lengths=np.array([True, False, True]))
    with pytest.raises(TypeError, match="integers"):
        layer(x, lengths=np.array(["1", "2", "3"]))


# ------------------------------------------------------------------ Keras-style masks
def _np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _keras_rule(layer, x, mask, hx=None, zero_output=False):
    """Keras's masked recurrence written directly (default activations), time-major:
    at a masked step the states keep their values and the output is the previous output
    (zeros before the first unmasked step), or zero with ``zero_output``.  The mask is the
    same for every stacked layer; the reverse direction walks t = T-1 .. 0."""
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    cell = type(layer).__name__
    Tn, Bn = x.shape[:2]
    D, L, H, P = layer.num_directions, layer.num_layers, layer.hidden_size, layer.output_size
    if hx is None:
        h0 = np.zeros((L * D, Bn, P))
        c0 = np.zeros((L * D, Bn, H))
    elif cell == "LSTM":
        h0, c0 = (np.asarray(s, np.float64) for s in hx)
    else:
        h0, c0 = np.asarray(hx, np.float64), None
    hn, cn = np.zeros_like(h0), np.zeros((L * D, Bn, H))
    inp = x.astype(np.float64)
    for li in range(L):
        out = np.zeros((Tn, Bn, D * P))
        for d in range(D):
            k = li * D + d
            s = f"_l{li}" + ("_reverse" if d else "")
            W, R = sd["weight_ih" + s], sd["weight_hh" + s]
            bi, bh = sd["bias_ih" + s], sd["bias_hh" + s]
            h, c = h0[k].copy(), (c0[k].copy() if cell == "LSTM" else None)
            prev = np.zeros((Bn, P))
            for t in (range(Tn - 1, -1, -1) if d else range(Tn)):
                xt = inp[t]
                if cell == "SimpleRNN":
                    z = xt @ W.T + bi + h @ R.T + bh
                    hnew = np.tanh(z) if layer.nonlinearity == "tanh" else np.maximum(z, 0)
                    cnew = None
                elif cell == "GRU":
                    gx, gh = xt @ W.T + bi, h @ R.T + bh
                    r = _np_sigmoid(gx[:, :H] + gh[:, :H])
                    zz = _np_sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
                    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
                    hnew, cnew = (1 - zz) * n + zz * h, None
                else:
                    g = xt @ W.T + bi + h @ R.T + bh
                    i_, f_ = _np_sigmoid(g[:, :H]), _np_sigmoid(g[:, H:2 * H])
                    gg, o_ = np.tanh(g[:, 2 * H:3 * H]), _np_sigmoid(g[:, 3 * H:])
                    cnew = f_ * c + i_ * gg
                    hnew = o_ * np.tanh(cnew)
                    if layer.proj_size:
                        hnew = hnew @ sd["weight_hr" + s].T
                m = mask[t][:, None]
                h = np.where(m, hnew, h)
                if cell == "LSTM":
                    c = np.where(m, cnew, c)
                o = np.where(m, hnew, 0.0 if zero_output else prev)
                prev = o
                out[t, :, d * P:(d + 1) * P] = o
            hn[k] = h
            if cell == "LSTM":
                cn[k] = c
        inp = out
    return inp, hn, (cn if cell == "LSTM" else None)


def _random_mask(seed, T_=T, B_=B):
    rng = np.random.default_rng(seed)
    m = rng.random((T_, B_)) > 0.35
    m[:, 0] = True                 # a row never masked
    m[:, 1] = False                # a row always masked
    m[:3, 2] = False               # leading masked steps (Keras: post-padding is typical,
    m[-3:, 3] = False              # pre-padding too), trailing masked steps
    return m


MASK_CONFIGS = list(itertools.product(sorted(CELLS), [False, True], [1, 2], [False, True],
                                      ["carry", "zero"]))


@pytest.mark.parametrize("cell,bi,layers,init,masked_output", MASK_CONFIGS)
def test_mask_equals_keras_rule(cell, bi, layers, init, masked_output):
    layer = CELLS[cell](num_layers=layers, bidirectional=bi, dtype=np.float64, seed=21)
    x, hx = _inputs(layer, seed=22, dtype=np.float64)
    hx = hx if init else None
    mask = _random_mask(23)
    _assert_keras_rule(layer, x, hx, mask, masked_output)


def _assert_keras_rule(layer, x, hx, mask, masked_output):
    """The layer's masked call (float64) equals _keras_rule: outputs and final states."""
    out, hn = layer(x, hx, mask=mask, masked_output=masked_output)
    ref_out, ref_h, ref_c = _keras_rule(layer, x, mask, hx, zero_output=masked_output == "zero")
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    st = _states(hn)
    np.testing.assert_allclose(st[0], ref_h, rtol=1e-10, atol=1e-12)
    if ref_c is not None:
        np.testing.assert_allclose(st[1], ref_c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_mask_batch_first_float32_and_all_true(cell):
    layer = CELLS[cell](bidirectional=True, batch_first=True, seed=31)
    x, hx = _inputs(layer, seed=32)
    mask = _random_mask(33)
    out, hn = layer(_bf(x, True), hx, mask=mask.T)           # mask (B, T) with batch_first
    ref_out, ref_h, _ = _keras_rule(layer, x, mask, hx)
    np.testing.assert_allclose(_bf(out, True), ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_states(hn)[0], ref_h, rtol=1e-5, atol=1e-5)
    # an all-True mask is the unmasked computation
    o1, _ = layer(_bf(x, True), hx, mask=np.ones((B, T), bool))
    o2, _ = layer(_bf(x, True), hx)
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-6)
    # a post-padding mask gives the lengths result at valid steps and the same final state
    lens = LENS
    pm = np.arange(T)[:, None] < lens[None, :]
    om, hm = layer(_bf(x, True), hx, mask=pm.T, masked_output="zero")
    ol, hl = layer(_bf(x, True), hx, lengths=lens)
    fwd = slice(0, layer.hidden_size)
    np.testing.assert_allclose(om[..., fwd], ol[..., fwd], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_states(hm)[0][0], _states(hl)[0][0], rtol=1e-5, atol=1e-6)


def test_mask_with_lengths_matches_reference():
    from reference import rnn_forward  # tests/reference.py, the project's NumPy reference

    layer = fastrnn.LSTM(4, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=41)
    x, hx = _inputs(layer, seed=42, dtype=np.float64)
    mask = _random_mask(43)
    out, (h, c) = layer(x, hx, lengths=LENS, mask=mask)
    r_out, r_h, r_c = rnn_forward(layer, x, hx, lengths=LENS, mask=mask)
    np.testing.assert_allclose(out, r_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, r_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, r_c, rtol=1e-10, atol=1e-12)


def test_mask_validation():
    layer = fastrnn.LSTM(4, 6)
    x = np.zeros((5, 3, 4), np.float32)
    with pytest.raises(ValueError, match="shape"):
        layer(x, mask=np.ones((3, 5), bool))
    with pytest.raises(TypeError, match="boolean"):
        layer(x, mask=np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="masked_output"):
        layer(x, mask=np.ones((5, 3), bool), masked_output="repeat")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
def test_keras_wrapper_mask_follows_keras_definition(cell, go_backwards, zero_output):
    """fastrnn.model.KerasRNN (used by the Keras importer) with a mask equals Keras's
    definition: go_backwards reverses the input and the mask, then runs forwards."""
    from fastrnn.model import KerasRNN

    core = CELLS[cell](batch_first=True, go_backwards=go_backwards, dtype=np.float64, seed=51)
    fwd = CELLS[cell](batch_first=True, dtype=np.float64, seed=51)
    fwd.load_state_dict(core.state_dict())
    x, _ = _inputs(core, seed=52, dtype=np.float64)
    mask = _random_mask(53)
    k = KerasRNN(core, return_sequences=True, return_state=True, zero_output_for_mask=zero_output)
    res = k(_bf(x, True), mask=mask.T)
    seq, h = res[0], res[1]
    xs, ms = (x[::-1], mask[::-1]) if go_backwards else (x, mask)
    ref_out, ref_h, _ = _keras_rule(fwd, np.ascontiguousarray(xs), ms, zero_output=zero_output)
    np.testing.assert_allclose(seq, _bf(ref_out, True), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, ref_h[0], rtol=1e-10, atol=1e-12)


def _span_mask(pad):
    """(T, B) masks of the lengths [3, 9, 0, 5, 9, 2] padded on the right, the left, or
    both sides (one span of each sequence)."""
    lens = np.array([3, 9, 0, 5, 9, 2])
    begin = {"right": 0 * lens, "left": T - lens, "both": np.array([4, 0, 3, 2, 0, 1])}[pad]
    t = np.arange(T)[:, None]
    return (t >= begin) & (t < begin + lens)


@pytest.mark.parametrize("cell,bi,layers,init,masked_output", MASK_CONFIGS)
@pytest.mark.parametrize("pad", ["right", "left", "both"])
def test_span_mask_runs_as_lengths(cell, bi, layers, init, masked_output, pad, monkeypatch):
    """A mask whose unmasked steps are one span of each sequence (right padding, left
    padding (Keras's pad_sequences default), both) runs as lengths from those steps
    (the padding is not computed): Keras's rule, and the mask kernels' results (the
    conversion off), for the outputs (carry repeats a forward direction's last output
    after a span, a reverse one's first before it) and the final states;
    return_sequences=False, batch_first, go_backwards, unbatched; a mask that is not
    spans keeps the mask kernels."""
    import fastrnn.layers as layers_mod
    calls = []      # calls that ran as lengths: packed, or all of one length (a prefix)
    orig = layers_mod.ragged_index
    monkeypatch.setattr(layers_mod, "ragged_index",
                        lambda *a: calls.append(1) or orig(*a))
    layer = CELLS[cell](num_layers=layers, bidirectional=bi, dtype=np.float64, seed=24)
    x, hx = _inputs(layer, seed=25, dtype=np.float64)
    hx = hx if init else None
    mask = _span_mask(pad)
    _assert_keras_rule(layer, x, hx, mask, masked_output)
    assert len(calls) == 1
    monkeypatch.setattr(layers_mod, "_MASK_AS_LENGTHS", False)
    variants = [(layer, x, hx, mask, {}), (layer, x, hx, mask, dict(return_sequences=False))]
    bf = CELLS[cell](num_layers=layers, bidirectional=bi, dtype=np.float64, seed=24,
                     batch_first=True)
    variants.append((bf, _bf(x, True), hx, mask.T, {}))
    variants.append((bf, _bf(x, True), hx, mask.T, dict(return_sequences=False)))
    gb = CELLS[cell](num_layers=layers, go_backwards=True, dtype=np.float64, seed=24)
    variants.append((gb, x, None, mask, {}))
    variants.append((layer, x[:, 0], None, mask[:, 0], {}))             # unbatched
    variants.append((layer, x[:, 2], None, mask[:, 2], {}))             # all padding
    variants.append((layer, x[:, 3], None, mask[:, 3], {}))             # unbatched
    variants.append((gb, x[:, :1], None, mask[:, 3:4], {}))             # one sequence
    for lay, xx, h, m, extra in variants:
        monkeypatch.setattr(layers_mod, "_MASK_AS_LENGTHS", False)
        a = lay(xx, h, mask=m, masked_output=masked_output, **extra)
        monkeypatch.setattr(layers_mod, "_MASK_AS_LENGTHS", True)
        n0 = len(calls)
        b = lay(xx, h, mask=m, masked_output=masked_output, **extra)
        assert len(calls) == n0 + 1
        for u, v in zip([a[0]] + _states(a[1]), [b[0]] + _states(b[1])):
            assert u.shape == v.shape
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
    n0 = len(calls)
    full = np.ones_like(mask)                            # nothing masked: the dense call
    o2, h2 = layer(x, hx, mask=full, masked_output=masked_output)
    o3, h3 = layer(x, hx)
    assert len(calls) == n0
    for u, v in zip([o2] + _states(h2), [o3] + _states(h3)):
        np.testing.assert_array_equal(u, v)
    holes = mask.copy()
    holes[1, 1] = False                                  # not spans: the mask kernels
    o1, _ = layer(x, hx, mask=holes, masked_output=masked_output)
    assert len(calls) == n0
    ref1, _, _ = _keras_rule(layer, x, holes, hx, zero_output=masked_output == "zero")
    np.testing.assert_allclose(o1, ref1, rtol=1e-10, atol=1e-12)


def test_prefix_mask_takes_the_lstm_route(monkeypatch):
    """A right-padded Keras-style mask on a plain LSTM batch of 16+ runs through the
    training forward's route (lengths), with Keras's outputs (the route taken from 16
    sequences whatever the size and thread rules say: a small layer)."""
    import fastrnn.layers as layers
    from fastrnn import _backward
    monkeypatch.setattr(layers, "_FUSED_LSTM_MIN_B", 16)
    calls = []
    orig = fastrnn.LSTM._fused_lstm_dir
    layer = fastrnn.LSTM(4, 6, bidirectional=True, seed=3, num_threads=2)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, 16, 4)).astype(np.float32)
    lens = rng.integers(0, T + 1, 16)
    mask = np.arange(T)[:, None] < lens[None, :]
    try:
        fastrnn.LSTM._fused_lstm_dir = lambda self, *a: calls.append(1) or orig(self, *a)
        out, (h, c) = layer(x, mask=mask)
    finally:
        fastrnn.LSTM._fused_lstm_dir = orig
    assert len(calls) == (2 if _backward.fused_lstm_forward_fast() else 0)
    ref_out, ref_h, ref_c = _keras_rule(layer, x, mask)
    np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(h, ref_h, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(c, ref_c, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_return_sequences_false_layouts(cell):
    """return_sequences=False with batch_first and with unbatched input (both used to fail
    in the unpacking): the last layer's final states, as from the full output."""
    layer = CELLS[cell](num_layers=2, bidirectional=True, seed=5, batch_first=True)
    x, _ = _inputs(layer, seed=6)
    xb = _bf(x, True)
    out, hn = layer(xb)
    last, hn2 = layer(xb, return_sequences=False)
    H = layer.output_size
    assert last.shape == (B, 2 * H)
    np.testing.assert_allclose(last[:, :H], out[:, -1, :H], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(last[:, H:], out[:, 0, H:], rtol=1e-6, atol=1e-7)
    for u, v in zip(_states(hn), _states(hn2)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    one, h1 = layer(xb[2], return_sequences=False)              # unbatched (T, I)
    assert one.shape == (2 * H,)
    np.testing.assert_allclose(one, last[2], rtol=1e-6, atol=1e-7)
    assert _states(h1)[0].shape == (4, H)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bi,batch_first,go_backwards", [(False, False, False),
                                                         (True, False, False),
                                                         (True, True, False),
                                                         (False, True, True)])
@pytest.mark.parametrize("B,init,dtype", [(1, False, np.float32), (3, True, np.float64),
                                          (4, False, np.float32), (70, True, np.float32)])
def test_equal_lengths_run_dense_over_the_prefix(cell, bi, batch_first, go_backwards, B,
                                                  init, dtype, monkeypatch):
    """Lengths all equal to one L < T (a batch of one always) run as a dense call over the
    first L steps (the lean call, or _call's own with num_threads), the rest of the
    outputs filled as the packed call fills them (zeros with lengths; a prefix mask with
    "carry" repeats a forward direction's last output): the same outputs and final
    states as the packed call (the shortcut off), which never runs; lengths of T are the
    dense call.  Masks of L steps from one later step (left padding, a span in the
    middle) alike (a reverse direction's first output repeated before them)."""
    import fastrnn.layers as layers_mod
    layer = CELLS[cell](bidirectional=bi, batch_first=batch_first, go_backwards=go_backwards,
                        num_layers=2 if bi else 1, dtype=dtype, seed=31)
    x, hx = _inputs(layer, seed=32, B_=B, dtype=dtype)
    hx = hx if init else None
    xx = _bf(x, batch_first)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(fastrnn._threads, "IDLE_SINGLE_S", -1.0)   # (plans kept)
    for L in (1, 4, T):
        lens = np.full(B, L)
        mask = np.arange(T)[:, None] < lens[None, :]
        left = mask[::-1]                               # (the last L steps)
        mid = np.roll(mask, (T - L) // 2, axis=0)       # (L steps in the middle)
        mask, left, mid = (m.T if batch_first else m for m in (mask, left, mid))
        for kw in (dict(lengths=lens), dict(mask=mask), dict(mask=mask, masked_output="zero"),
                   dict(lengths=lens, return_sequences=False), dict(lengths=lens, num_threads=1),
                   dict(mask=mask, num_threads=2), dict(mask=left), dict(mask=mid),
                   dict(mask=left, masked_output="zero"), dict(mask=mid, num_threads=2),
                   dict(mask=left, return_sequences=False)):
            vars(layer).pop("_plans", None)
            got = layer(xx, hx, **kw)
            assert not _packed_plans(layer)
            with monkeypatch.context() as m:
                m.setattr(layers_mod, "_one_length", lambda ent: 0)
                ref = layer(xx, hx, **kw)
            assert _packed_plans(layer) == (L < T or "lengths" in kw)
            for u, v in zip([got[0]] + _states(got[1]), [ref[0]] + _states(ref[1])):
                assert u.shape == v.shape
                np.testing.assert_allclose(u, v, **tol)
            if L < T and "lengths" in kw and kw.get("return_sequences", True):
                tail = got[0][:, L:] if batch_first else got[0][L:]
                assert not tail.any()


@pytest.mark.parametrize("B", [2, 3, 70])
def test_nearly_equal_lengths_are_packed(B, monkeypatch):
    """One length differing from the rest (first, or last) is not one length: the call
    is packed, and that sequence's final state and outputs are those of its own prefix."""
    layer = fastrnn.GRU(4, 6, seed=33)
    x, _ = _inputs(layer, seed=34, B_=B)
    monkeypatch.setattr(fastrnn._threads, "IDLE_SINGLE_S", -1.0)   # (plans kept)
    for k in (0, B - 1):
        lens = np.full(B, 7)
        lens[k] = 5
        vars(layer).pop("_plans", None)
        out, h = layer(x, lengths=lens)
        assert _packed_plans(layer)
        ref_out, ref_h = layer(np.ascontiguousarray(x[:5, k:k + 1]))
        np.testing.assert_allclose(h[:, k], ref_h[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[:5, k], ref_out[:, 0], rtol=1e-5, atol=1e-6)
        assert not out[5:, k].any()


def _prefix_rule(m):
    """Reference: (lengths or None) of a time-major bool mask (T, B) that is a prefix
    of each sequence; "dense" when nothing is masked; None when it is not a prefix."""
    T, B = m.shape
    lens = m.sum(axis=0)
    if not np.array_equal(m, np.arange(T)[:, None] < lens[None, :]):
        return None
    return "dense" if B == 0 or (lens == T).all() else lens


def _span_rule(m):
    """None where a column of the (T, B) mask ``m`` is not one run of True; "dense" where
    all is True (or T or B is 0); else each column's (length, first True step) (0, 0
    where all False)."""
    T, B = m.shape
    if B == 0 or T == 0 or m.all():
        return "dense"
    lens, begin = np.zeros(B, np.intp), np.zeros(B, np.intp)
    for b in range(B):
        idx = np.flatnonzero(m[:, b])
        if len(idx):
            if idx[-1] - idx[0] + 1 != len(idx):
                return None
            lens[b], begin[b] = len(idx), idx[0]
    return lens, begin


@pytest.mark.parametrize("py_limit", [0, 1 << 20])
def test_mask_as_lengths_both_checks(py_limit, monkeypatch):
    """A mask is converted to lengths exactly when it is a prefix of each sequence, by
    the Python check of small masks and the NumPy check of large ones alike: random
    right padding, holes, left padding, all True, all False, T = 0 and 1, B = 0,
    batch_first and unbatched."""
    import fastrnn.layers as layers_mod
    monkeypatch.setattr(layers_mod, "_MASK_BYTES_PY", py_limit)
    rng = np.random.default_rng(40)
    lay, lay_bf = fastrnn.GRU(2, 3), fastrnn.GRU(2, 3, batch_first=True, bidirectional=True)
    for T, B in [(7, 3), (1, 4), (5, 1), (0, 3), (4, 0), (9, 70)]:
        for kind in ("prefix", "holes", "left", "true", "false"):
            lens = rng.integers(0, T + 1, B)
            m = np.arange(T)[:, None] < lens[None, :]
            if kind == "holes" and T > 2 and B:
                m = m.copy()
                m[rng.integers(0, T - 1), rng.integers(0, B)] ^= True
            elif kind == "left":
                m = m[::-1]
            elif kind in ("true", "false"):
                m = np.full((T, B), kind == "true")
            want = _prefix_rule(m)
            for layer, mm, carry in ((lay, m, True), (lay_bf, m.T.astype(np.uint8), False)):
                lengths, mask, cols = layer._mask_as_lengths(mm, None, T, B, False, carry)
                if want is None:
                    assert lengths is None and mask is mm and cols == ()
                elif isinstance(want, str):
                    assert lengths is None and mask is None and cols == ()
                else:
                    assert mask is None and lengths.dtype == np.intp
                    np.testing.assert_array_equal(lengths, want)
                    assert list(cols) == ([0] if carry else [])
            if B == 1:          # unbatched (T,)
                lengths, mask, _ = lay._mask_as_lengths(m[:, 0], None, T, 1, True, True)
                if want is None:
                    assert mask is not None
                elif not isinstance(want, str):
                    np.testing.assert_array_equal(lengths, want)


@pytest.mark.parametrize("py_limit", [0, 1 << 20])
def test_mask_as_spans_both_checks(py_limit, monkeypatch):
    """A call's mask becomes lengths and first steps exactly when each sequence's
    unmasked steps are one span, by the Python check of small masks and the NumPy check
    of large ones alike (first steps None where all are 0): right, left and both-sides
    padding, holes, all True, all False, T = 0 and 1, B = 0, batch_first and unbatched;
    the carried directions: forward ones after a span, reverse ones before it (only
    with first steps), none without carry, go_backwards swapping them."""
    import fastrnn.layers as layers_mod
    monkeypatch.setattr(layers_mod, "_MASK_BYTES_PY", py_limit)
    rng = np.random.default_rng(44)
    lay, lay_bf = fastrnn.GRU(2, 3), fastrnn.GRU(2, 3, batch_first=True, bidirectional=True)
    lay_gb = fastrnn.GRU(2, 3, bidirectional=True, go_backwards=True)
    for T, B in [(7, 3), (1, 4), (5, 1), (0, 3), (4, 0), (9, 70), (2, 5)]:
        for kind in ("right", "left", "both", "holes", "true", "false"):
            lens = rng.integers(0, T + 1, B)
            begin = {"right": 0 * lens, "left": T - lens}.get(kind)
            if begin is None:
                begin = rng.integers(0, T - lens + 1)
            t = np.arange(T)[:, None]
            m = (t >= begin) & (t < begin + lens)
            if kind == "holes" and T > 2 and B:
                m[:, 0] = True
                m[rng.integers(1, T - 1), 0] = False
            elif kind in ("true", "false"):
                m = np.full((T, B), kind == "true")
            want = _span_rule(m)
            for layer, mm, carry in ((lay, m, True), (lay_bf, m.T.astype(np.uint8), False),
                                     (lay_gb, m, True)):
                lengths, first, mask, cols, rcols = layer._mask_as_spans(mm, T, B, False,
                                                                         carry)
                if want is None:
                    assert lengths is None and first is None and mask is mm
                    assert cols == rcols == ()
                    continue
                assert mask is None
                if isinstance(want, str):
                    assert lengths is None and first is None and cols == rcols == ()
                    continue
                assert lengths.dtype == np.intp
                np.testing.assert_array_equal(lengths, want[0])
                if not want[1].any():
                    assert first is None
                else:
                    assert first.dtype == np.intp
                    np.testing.assert_array_equal(first, want[1])
                fwd = {lay: [0], lay_bf: [], lay_gb: [1]}[layer]
                assert list(cols) == fwd
                assert list(rcols) == ([] if first is None or not carry
                                       else [d for d in range(layer.num_directions)
                                             if d not in fwd])
            if B == 1 and not isinstance(want, str):          # unbatched (T,)
                lengths, first, mask, _, _ = lay._mask_as_spans(m[:, 0], T, 1, True, True)
                if want is None:
                    assert mask is not None
                else:
                    np.testing.assert_array_equal(lengths, want[0])
                    assert (first is None) == (not want[1].any())


@pytest.mark.parametrize("py_limit", [0, 1 << 20])
@pytest.mark.parametrize("hidden", [6, 64])
def test_span_packing_rule(py_limit, hidden, monkeypatch):
    """Spans of different lengths or first steps run packed only in a call of at least
    _SPAN_MIN_MACS multiply-adds with at least _SPAN_MIN_SKIP of its steps masked
    (_SPAN_MIN_SKIP_NARROW below 64 units; else the mask kernels, Keras's rule's
    answers either way); spans of one length from one step (a batch of one always)
    always run as lengths (dense over them); a smaller call's check (sequences masked
    alike), in Python and with NumPy alike."""
    import fastrnn.layers as layers_mod
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_SKIP", 0.2 if hidden >= 64 else 0.9)
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_SKIP_NARROW", 0.2 if hidden < 64 else 0.9)
    monkeypatch.setattr(layers_mod, "_MASK_BYTES_PY", py_limit)
    layer = fastrnn.GRU(4, hidden, bidirectional=True, dtype=np.float64, seed=50)
    x, _ = _inputs(layer, seed=51, dtype=np.float64)
    macs = B * layer._macs(T)
    t = np.arange(T)[:, None]

    def spans(lens, begin):
        return (t >= begin) & (t < begin + lens)
    differ = spans(np.array([9, 8, 7, 9, 6, 5]), np.array([0, 1, 2, 0, 3, 3]))   # 10/54 masked
    more = spans(np.array([9, 8, 7, 9, 5, 5]), np.array([0, 1, 2, 0, 3, 3]))     # 11/54
    one = spans(np.full(B, 4), np.full(B, 3))
    apart = spans(np.full(B, 4), np.arange(B) % 5)
    holes = one.copy()
    holes[5] = False                                    # (alike, but not a span)
    for limit, m, packed in ((macs, more, True), (macs + 1, more, False),
                             (macs, differ, False), (1 << 40, one, True),
                             (1 << 40, apart, False), (macs, apart, True),
                             (1 << 40, holes, False), (macs, holes, False),
                             (1 << 40, np.ones_like(one), None),
                             (1 << 40, more[:, 4:5], True)):
        monkeypatch.setattr(layers_mod, "_SPAN_MIN_MACS", limit)
        Bm = m.shape[1]
        lengths, begin, rest, _, _ = layer._mask_as_spans(m, T, Bm, False, True)
        if packed is None:                              # (all True: the dense call)
            assert lengths is None and rest is None
            continue
        assert (rest is None) == packed and (lengths is not None) == packed
        if packed:
            np.testing.assert_array_equal(lengths, m.sum(axis=0))
        else:
            assert rest is m
        _assert_keras_rule(layer, np.ascontiguousarray(x[:, :Bm]), None, m, "carry")


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bi,batch_first,go_backwards,layers", [
    (False, False, False, 1), (True, True, False, 2), (False, True, True, 1),
    (True, False, True, 1)])
def test_lengths_with_little_padding_run_on_the_mask_kernels(cell, bi, batch_first,
                                                             go_backwards, layers,
                                                             monkeypatch):
    """Lengths that differ with less than _SPAN_MIN_SKIP of the steps padding run on the
    mask kernels (the lengths as a mask, masked_output "zero"), with the packed call's
    results (the rule off) and PyTorch's semantics: zero outputs past a length, final
    states at each sequence's last step; the lean call and the general one (a thread
    count) alike and bit for bit; given states, return_sequences=False, float32; more
    padding, or fewer sequences than _LENGTHS_ON_MASK_MIN_B, stays packed."""
    import fastrnn.layers as layers_mod
    from fastrnn.layers import RNNBase
    monkeypatch.setattr(layers_mod, "_SPAN_MIN_SKIP", 0.2)
    monkeypatch.setattr(layers_mod, "_LENGTHS_ON_MASK_MIN_B", B)
    layer = CELLS[cell](bidirectional=bi, batch_first=batch_first, go_backwards=go_backwards,
                        num_layers=layers, dtype=np.float64, seed=52)
    x, hx = _inputs(layer, seed=53, dtype=np.float64)
    xx = _bf(x, batch_first)
    taken = {"mask": 0, "ragged": 0}
    for name, attr in (("mask", "_masked_call"), ("ragged", "_ragged_call")):
        real = getattr(RNNBase, attr)
        monkeypatch.setattr(RNNBase, attr, lambda *a, _r=real, _n=name, **k:
                            taken.__setitem__(_n, taken[_n] + 1) or _r(*a, **k))
    flat = lambda r: [r[0]] + _states(r[1])
    little = np.array([9, 8, 9, 9, 7, 9])          # 4 of 54 steps padding
    much = np.array([9, 3, 9, 5, 2, 9])            # 26 of 54
    few = np.array([9, 8, 9, 9, 7])                # fewer sequences than the rule's
    for lens, on_mask in ((little, True), (much, False), (few, False)):
        if len(lens) < B:
            xx = np.ascontiguousarray(xx[:5] if batch_first else xx[:, :5])
            hx = tuple(h[:, :5] for h in hx) if isinstance(hx, tuple) else hx[:, :5]
        for h, extra in ((None, {}), (hx, {}), (hx, dict(return_sequences=False))):
            taken.update(mask=0, ragged=0)
            got = layer(xx, h, lengths=lens, **extra)
            general = layer(xx, h, lengths=lens, num_threads=layer.num_threads or 2, **extra)
            assert taken == ({"mask": 1, "ragged": 0} if on_mask else
                             {"mask": 0, "ragged": 1})
            with monkeypatch.context() as m:
                m.setattr(layers_mod, "_SPAN_MIN_SKIP", 0.0)
                packed = layer(xx, h, lengths=lens, **extra)
            for a, b, c in zip(flat(got), flat(general), flat(packed)):
                assert a.shape == b.shape == c.shape
                np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-13)
                if layer.num_threads is None:
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
            if not extra:
                tm = _bf(got[0], batch_first)      # (time-major)
                assert not tm[np.arange(T)[:, None] >= lens].any()
    xx = _bf(x, batch_first)
    lay32 = CELLS[cell](bidirectional=bi, num_layers=layers, seed=52)
    a = lay32(x.astype(np.float32), lengths=little)
    b = lay32._call(x.astype(np.float32), None, little, None, "carry", None, True, False)
    for u, v in zip(flat(a), flat(b)):
        np.testing.assert_array_equal(u, v)


def test_carry_fill_as_the_rule():
    """carry_fill repeats a sequence's last output in the directions asked, after its
    length, in a C-contiguous output and in a strided view alike (NumPy's rule beside,
    written out here), keeping the outputs of length-0 sequences zero; with first steps
    (spans), after each span, and its first output before it in the reverse directions
    asked."""
    from fastrnn.layers import carry_fill
    rng = np.random.default_rng(41)
    for T, B, D in [(7, 3, 2), (7, 3, 1), (1, 1, 1), (9, 70, 2), (5, 4, 1), (0, 3, 1),
                    (4, 0, 2)]:
        for _ in range(4):
            lens = rng.integers(0, T + 1, B)
            for cols in ([0], [1], [0, 1]) if D == 2 else ([0],):
                o = rng.standard_normal((T, B, D * 3))
                o[np.arange(T)[:, None] >= lens] = 0
                want = o.copy()
                t_src = np.minimum(np.arange(T)[:, None], np.maximum(lens - 1, 0))
                for d in cols:
                    c = slice(d * 3, d * 3 + 3)
                    want[:, :, c] = o[t_src, np.arange(B), c]
                got = o.copy()
                carry_fill(got, lens, cols, 3)
                np.testing.assert_array_equal(got, want)
                view = np.ascontiguousarray(o.transpose(1, 0, 2)).transpose(1, 0, 2)
                carry_fill(view, list(lens), cols, 3)
                np.testing.assert_array_equal(view, want)
            begin = rng.integers(0, T - lens + 1) if B else lens
            for cols, rcols in (([0], []), ([], [0]), ([0], [1]), ([1], [0]), ([], [0, 1])):
                if D == 1 and (1 in cols or 1 in rcols):
                    continue
                o = rng.standard_normal((T, B, D * 3))
                t = np.arange(T)[:, None]
                o[(t < begin) | (t >= begin + lens)] = 0
                want = o.copy()
                end = begin + lens
                for dirs, t_src in ((cols, np.where(t >= end, end - 1, t)),
                                    (rcols, np.where(t < begin, begin, t))):
                    for d in dirs:
                        c = slice(d * 3, d * 3 + 3)
                        keep = lens > 0
                        want[:, keep, c] = o[t_src[:, keep], np.arange(B)[keep], c]
                view = np.ascontiguousarray(o.transpose(1, 0, 2)).transpose(1, 0, 2)
                for arr in (o.copy(), view):
                    carry_fill(arr, lens, cols, 3, begin.astype(np.intp), rcols)
                    np.testing.assert_array_equal(arr, want)


def test_mask_not_a_prefix_checked_once(monkeypatch):
    """A plain call with a mask that is not one span a sequence (a hole) checks it once
    (then the mask kernels), with Keras's rule's answers."""
    layer = fastrnn.LSTM(4, 6, seed=42)
    x, _ = _inputs(layer, seed=43)
    mask = np.arange(T)[:, None] < LENS[None, :]
    mask[1, 1] = False
    seen = []
    real = layer._mask_spans
    monkeypatch.setattr(layer, "_mask_spans", lambda *a: seen.append(1) or real(*a))
    out, _ = layer(x, mask=mask)
    assert seen == [1]
    ref, _, _ = _keras_rule(layer, x, mask, None)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
