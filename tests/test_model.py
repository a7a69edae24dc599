"""fastrnn.model: the container and the non-recurrent layers, checked against plain numpy
(including a step-by-step reference of Keras's masking rules)."""
import numpy as np
import pytest

import fastrnn
from fastrnn.model import (Activation, Bidirectional, Dense, Dropout, Embedding, KerasRNN,
                           Masking, Model, TimeDistributed, activation_function)

rng = np.random.RandomState(0)


def simple_rnn(I, H, go_backwards=False, act="tanh", seed=0):
    r = np.random.RandomState(seed)
    core = fastrnn.SimpleRNN(I, H, nonlinearity=act, batch_first=True, go_backwards=go_backwards)
    core.load_state_dict({"weight_ih_l0": r.uniform(-.8, .8, (H, I)).astype("f4"),
                          "weight_hh_l0": r.uniform(-.8, .8, (H, H)).astype("f4"),
                          "bias_ih_l0": r.uniform(-.5, .5, H).astype("f4"),
                          "bias_hh_l0": r.uniform(-.5, .5, H).astype("f4")})
    return core


def keras_reference(core, x, mask, zero_output, go_backwards):
    """Keras backend.rnn for a SimpleRNN: sequence in Keras order and the final state."""
    sd = core.state_dict()
    W, U, b = sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]
    B, T, _ = x.shape
    h = np.zeros((B, W.shape[0]), "f8")
    prev = np.zeros_like(h)
    outs = []
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in steps:
        new = np.tanh(x[:, t] @ W.T + h @ U.T + b)
        m = np.ones(B, bool) if mask is None else mask[:, t]
        h = np.where(m[:, None], new, h)
        out = np.where(m[:, None], new, 0.0 if zero_output else prev)
        prev = out
        outs.append(out)
    return np.stack(outs, 1), h


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
def test_keras_rnn_masking_semantics(go_backwards, zero_output):
    x = rng.normal(size=(4, 7, 3)).astype("f4")
    mask = rng.rand(4, 7) > 0.35
    mask[0, 0] = False          # masked first step
    mask[1, -1] = False         # masked last step
    mask[2] = False             # fully masked row
    core = simple_rnn(3, 5, go_backwards)
    layer = KerasRNN(core, return_sequences=True, return_state=True,
                     zero_output_for_mask=zero_output)
    (seq, h), out_mask = layer.call(x, mask)[0], layer.call(x, mask)[1]
    ref_seq, ref_h = keras_reference(core, x, mask, zero_output, go_backwards)
    np.testing.assert_allclose(seq, ref_seq, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)
    assert out_mask is mask
    last = KerasRNN(core, zero_output_for_mask=zero_output)
    y, m = last.call(x, mask)
    np.testing.assert_allclose(y, ref_seq[:, -1], atol=1e-5)
    assert m is None


@pytest.mark.parametrize("go_backwards", [False, True])
def test_last_output_only_asks_the_core_for_final_states(go_backwards):
    """Without return_sequences (and no masked output made zero), a KerasRNN and a fused
    Bidirectional ask their core for the final states only (no per-step outputs), with
    the Keras rule's last outputs; with zero_output_for_mask and a mask they keep the
    sequence (its last step may be a zero)."""
    x = rng.normal(size=(4, 6, 3)).astype("f4")
    mask = np.ones((4, 6), bool)
    mask[0, 3:] = False
    mask[1, 1] = False
    mask[2] = False
    core = simple_rnn(3, 5, go_backwards)
    asked = []
    real = core.__call__

    def spy(*a, **kw):
        asked.append(kw.get("return_sequences", True))
        return real(*a, **kw)
    layer = KerasRNN(core)
    layer.core = type("Spy", (), {"__call__": staticmethod(spy),
                                  "go_backwards": go_backwards,
                                  "hidden_size": 5})()
    for m in (None, mask):
        y, _ = layer.call(x, m)
        ref_seq, _ = keras_reference(core, x, m, False, go_backwards)
        np.testing.assert_allclose(y, ref_seq[:, -1], atol=1e-5)
    layer.return_state = True       # (the output and the state: separate arrays)
    (y, h), _ = layer.call(x, mask)
    assert not np.shares_memory(y, h)
    np.testing.assert_array_equal(y, h)
    assert asked == [False, False, False]
    layer.return_state = False
    layer.zero_output_for_mask = True
    y, _ = layer.call(x, mask)
    np.testing.assert_allclose(y, keras_reference(core, x, mask, True, go_backwards)[0][:, -1],
                               atol=1e-5)
    assert asked[3:] == [True]


def test_bidirectional_merge_modes_and_fusion():
    x = rng.normal(size=(3, 6, 4)).astype("f4")
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False
    mask[1, 2] = False
    f, r = simple_rnn(4, 3, False, seed=1), simple_rnn(4, 3, True, seed=2)
    results = {}
    for rs in (True, False):
        fw = KerasRNN(f, return_sequences=rs, zero_output_for_mask=rs)
        bw = KerasRNN(r, return_sequences=rs, zero_output_for_mask=rs)
        a = fw(x, mask)
        b = bw(x, mask)
        if rs:
            b = b[:, ::-1]
        expect = {"concat": np.concatenate([a, b], -1), "sum": a + b, "mul": a * b,
                  "ave": (a + b) / 2}
        for mode, e in expect.items():
            bi = Bidirectional(fw, bw, merge_mode=mode)
            out, m = bi.call(x, mask)
            np.testing.assert_allclose(out, e, atol=1e-6)
            assert (m is mask) if rs else (m is None)
            results[(rs, mode)] = out
        pair = Bidirectional(fw, bw, merge_mode=None)(x, mask)
        np.testing.assert_allclose(pair[0], a, atol=1e-6)
        np.testing.assert_allclose(pair[1], b, atol=1e-6)
        # the same layer run by one bidirectional core
        fused = fastrnn.SimpleRNN(4, 3, batch_first=True, bidirectional=True)
        sd = dict(f.state_dict())
        sd.update({k + "_reverse": v for k, v in r.state_dict().items()})
        fused.load_state_dict(sd)
        bi = Bidirectional(fw, bw, merge_mode="concat")
        bi.fuse(fused)
        np.testing.assert_allclose(bi(x, mask), results[(rs, "concat")], atol=1e-6)
    with pytest.raises(ValueError):
        Bidirectional(fw, bw, merge_mode="max")
    with pytest.raises(ValueError):
        Bidirectional(bw, fw).fuse(fused)


def test_return_state_lstm_and_go_backwards_order():
    x = rng.normal(size=(2, 5, 3)).astype("f4")
    core = fastrnn.LSTM(3, 4, batch_first=True, go_backwards=True)
    fwd = fastrnn.LSTM(3, 4, batch_first=True)
    fwd.load_state_dict(core.state_dict())
    seq, h, c = KerasRNN(core, return_sequences=True, return_state=True)(x)
    # Keras order: reading backwards == reading the flipped input forwards
    ref, (hn, cn) = fwd(np.ascontiguousarray(x[:, ::-1]))
    np.testing.assert_allclose(seq, ref, atol=1e-6)
    np.testing.assert_allclose(h, hn[0], atol=1e-6)
    np.testing.assert_allclose(c, cn[0], atol=1e-6)


def test_dense_activations():
    k = rng.normal(size=(4, 3)).astype("f4")
    b = rng.normal(size=3).astype("f4")
    x = rng.normal(size=(2, 5, 4)).astype("f4")
    z = x @ k + b
    sig = 1 / (1 + np.exp(-z))
    cases = {"linear": z, "relu": np.maximum(z, 0), "tanh": np.tanh(z), "sigmoid": sig,
             "softmax": np.exp(z) / np.exp(z).sum(-1, keepdims=True),
             ("hard_sigmoid", 1 / 6, 0.5): np.clip(z / 6 + 0.5, 0, 1),
             "hard_sigmoid": np.clip(0.2 * z + 0.5, 0, 1), "swish": z * sig,
             "elu": np.where(z > 0, z, np.exp(z) - 1)}
    for act, want in cases.items():
        d = Dense(k, b, act)
        out = d(x)
        assert out.dtype == np.float32 and out.shape == (2, 5, 3)
        np.testing.assert_allclose(out, want, atol=1e-5, err_msg=str(act))
    np.testing.assert_allclose(Dense(k, None)(x), x @ k, atol=1e-5)
    with pytest.raises(ValueError):
        Dense(k, b)(x[..., :3])
    with pytest.raises(ValueError):
        Dense(k, b[:2])
    with pytest.raises(ValueError):
        activation_function("nope")
    big = np.array([[-1000.0, 0.0, 1000.0]], "f4")
    assert np.all(np.isfinite(Dense(np.eye(3, dtype="f4"), None, "sigmoid")(big)))


def test_embedding_and_masking():
    w = rng.normal(size=(10, 3)).astype("f4")
    ids = np.array([[1, 2, 0, 0], [0, 5, 9, 3]])
    out, mask = Embedding(w, mask_zero=True).call(ids)
    np.testing.assert_array_equal(out, w[ids])
    np.testing.assert_array_equal(mask, ids != 0)
    assert Embedding(w).call(ids)[1] is None
    with pytest.raises(ValueError):
        Embedding(w)(np.array([[10]]))
    with pytest.raises(ValueError):
        Embedding(w)(np.array([[-1]]))
    x = rng.normal(size=(2, 4, 3)).astype("f4")
    x[0, 1] = 0.0
    x[1, 3] = 2.5
    out, mask = Masking(0.0).call(x)
    np.testing.assert_array_equal(mask, [[True, False, True, True], [True] * 4])
    out, mask = Masking(2.5).call(x)
    assert not mask[1, 3] and np.all(out[1, 3] == 0)


def test_model_mask_flow_and_outputs():
    V, E, H = 12, 3, 4
    emb = Embedding(rng.normal(size=(V, E)).astype("f4"), mask_zero=True)
    r1 = KerasRNN(simple_rnn(E, H, seed=3), return_sequences=True)
    td = TimeDistributed(Dense(rng.normal(size=(H, H)).astype("f4"), None, "tanh"))
    r2 = KerasRNN(simple_rnn(H, H, seed=4), return_state=True)
    dense = Dense(rng.normal(size=(H, 2)).astype("f4"), np.zeros(2, "f4"), "softmax")
    ids = np.array([[3, 4, 5, 0, 0], [0, 0, 7, 8, 1], [2, 0, 6, 0, 9]])
    mask = ids != 0
    model = Model([emb, Dropout(0.5), r1, td, r2], name="m")
    out, h = model(ids)
    e = emb(ids)
    s1 = r1(e, mask)
    s2 = td(s1)
    ref, refh = r2(s2, mask)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(h, refh, atol=1e-6)
    # pick tensors from different layers
    m2 = Model([emb, r1, r2, dense], outputs=[(3, 0), (2, 1)])
    p, hh = m2.predict(ids)
    np.testing.assert_allclose(hh, r2(r1(e, mask), mask)[1], atol=1e-6)
    assert p.shape == (3, 2)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-6)
    chunks = m2.predict(ids, batch_size=2)
    for a, b in zip(chunks, (p, hh)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # introspection
    cfg = model.get_config()
    assert [l["class_name"] for l in cfg["layers"]] == [
        "Embedding", "Dropout", "KerasRNN", "TimeDistributed", "KerasRNN"]
    assert "Embedding" in repr(model)
    lines = []
    model.summary(print_fn=lines.append)
    assert "total params" in lines[0] and "KerasRNN" in lines[0]
    # (Keras's count: a SimpleRNN's one bias vector, where the core keeps two)
    assert model.count_params() == sum(np.size(w) for l in model.layers
                                       for w in l.get_weights()) - 2 * H
    with pytest.raises(ValueError):
        Model([])
    with pytest.raises(TypeError):
        Model([np.zeros(3)])
    with pytest.raises(TypeError, match="wraps a fastrnn.model layer"):
        TimeDistributed(np.zeros(3))
    with pytest.raises(TypeError, match="one input and one output"):
        TimeDistributed(r2)                     # (return_state: several outputs)
    assert Activation("relu")(np.array([-1.0, 2.0])).tolist() == [0.0, 2.0]


def test_time_distributed_folds_the_steps_into_the_batch(tmp_path):
    """TimeDistributed of a layer other than Dense / Dropout / Activation runs it once on
    (B*T, ...): the same as running it on each step's (B, ...) alone; the input's mask
    passes on; a layer that reads masks is refused on a masked input; the model saves
    and loads back."""
    from fastrnn.model import BatchNormalization, Conv1D, Flatten, GlobalPooling1D
    r = np.random.RandomState(5)
    B, T, L, C = 3, 4, 7, 2
    x = r.normal(size=(B, T, L, C)).astype("f4")
    conv = Conv1D(r.normal(size=(3, C, 5)).astype("f4"), r.normal(size=5).astype("f4"),
                  activation="relu")
    rnn = KerasRNN(fastrnn.GRU(C, 3, batch_first=True, seed=2), return_sequences=False)
    bi = Bidirectional(KerasRNN(simple_rnn(C, 2, seed=6), return_sequences=True),
                       KerasRNN(simple_rnn(C, 2, go_backwards=True, seed=7),
                                return_sequences=True), merge_mode="sum")
    g = r.uniform(0.5, 1.5, 5).astype("f4")
    layers = [conv, rnn, bi, Flatten(), GlobalPooling1D("max"),
              BatchNormalization(g, g, g - 1, g, axis=-1)]
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]], bool)
    for inner in layers:
        td = TimeDistributed(inner)
        xi = x if not isinstance(inner, BatchNormalization) else r.normal(
            size=(B, T, L, 5)).astype("f4")
        y, m = td.call(xi, None)
        want = np.stack([inner.call(xi[:, t], None)[0] for t in range(T)], axis=1)
        assert y.shape == want.shape
        # (a recurrent layer's batch of B*T rows may take another kernel path than B)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        assert m is None
        if isinstance(inner, (KerasRNN, Bidirectional, GlobalPooling1D)):
            with pytest.raises(ValueError, match="masked input is not supported"):
                td.call(xi, mask)
        else:
            assert td.call(xi, mask)[1] is mask
    model = Model([TimeDistributed(conv), TimeDistributed(Flatten()),
                   KerasRNN(fastrnn.LSTM(25, 4, batch_first=True, seed=1))])
    model.save(tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(again(x), model(x))
    assert repr(again) == repr(model)


def test_sigmoid_of_the_kernels_for_model_layers():
    """The Keras layers' sigmoid (``_kernels.sigmoid``, the recurrent kernels' vectorised
    one): within 4 ulp of scipy's expit over float32 / float64's range, the limits at
    +-inf, NaN kept, any shape and memory order, its dtype kept; other dtypes refused by
    the kernel and computed by NumPy's formula in the model's activation."""
    from scipy.special import expit
    from fastrnn import _kernels
    from fastrnn.model import activation_function
    sig = activation_function("sigmoid")
    for dt, lo in ((np.float32, -80.0), (np.float64, -700.0)):
        x = np.linspace(lo, 80.0, 200001).astype(dt)
        got, want = _kernels.sigmoid(x), expit(x)
        assert got.dtype == dt and got.shape == x.shape
        ulp = np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(dt))
        assert ulp.max() <= 4, (dt, float(ulp.max()), x[ulp.argmax()])
        ends = _kernels.sigmoid(np.array([np.inf, -np.inf, np.nan, 0.0, -1e30, 1e30], dt))
        assert ends[0] == 1 and 0 <= ends[1] < 1e-37 and np.isnan(ends[2])
        assert ends[3] == 0.5 and 0 <= ends[4] < 1e-37 and ends[5] == 1
        cube = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(dt)
        for arr in (cube, cube.transpose(2, 0, 1), cube[:, ::2], cube[:0]):
            out = sig(arr)
            assert out.shape == arr.shape and out.dtype == dt
            np.testing.assert_allclose(out, expit(arr), rtol=1e-6 if dt == np.float32 else 1e-14)
    with pytest.raises(TypeError, match="float32 or float64 only"):
        _kernels.sigmoid(np.zeros(3, np.float16))
    h = sig(np.array([-2.0, 0.0, 3.0], np.float16))
    np.testing.assert_allclose(h, expit(np.array([-2.0, 0.0, 3.0])), rtol=1e-3)


def test_bad_tensor_references_refused_at_construction():
    """An output or initial-state reference to a tensor its layer does not return (or
    not an int) is a ValueError when the Model is made — a config read from a file fails
    at load, not with an IndexError at predict."""
    from fastrnn.model import Dense, KerasRNN, Model
    enc = KerasRNN(fastrnn.LSTM(3, 4, batch_first=True, seed=0), return_sequences=True,
                   return_state=True, name="enc")
    dec = KerasRNN(fastrnn.LSTM(4, 4, batch_first=True, seed=1), name="dec")
    head = Dense(np.ones((4, 2), np.float32), None, "linear", name="head")
    ok = Model([enc, dec, head], initial_states={1: [(0, 1), (0, 2)]})
    assert ok.predict(np.ones((2, 5, 3), np.float32)).shape == (2, 2)
    for bad in ({1: [(0, 3)]}, {1: [(0, 99)]}, {1: [(1, 0)]}, {1: [(0, 2 ** 31)]},
                {1: [(0, float("inf"))]}, {1: [(0,)]}, {0: [(0, 1)]}, {2: [(0, 1)]}):
        with pytest.raises(ValueError):
            Model([enc, dec, head], initial_states=bad)
    for bad in ([(2, 1)], [(0, 3)], [(3, 0)], [("a", 0)]):
        with pytest.raises(ValueError):
            Model([enc, dec, head], outputs=bad)
    assert Model([enc, dec, head], outputs=[(0, 2), (2, 0)]).outputs == [(0, 2), (2, 0)]


# ------------------------------------------------ pooling, shape and normalisation layers
# (each against Keras in the k3_pool_* / k3_*norm* / k3_repeat_* / k3_flatten_* fixtures;
# here: the rules in detail against plain numpy in float64)
from fastrnn.model import (BatchNormalization, Flatten, GlobalPooling1D,  # noqa: E402
                           LayerNormalization, RepeatVector)


def test_global_pooling_masks_keepdims_and_channels_first():
    x = np.random.RandomState(4).normal(size=(3, 5, 4)).astype("f4")
    mask = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    avg = GlobalPooling1D("average")
    y, m = avg.call(x, mask)
    assert m is None and y.dtype == np.float32 and y.shape == (3, 4)
    for b in range(2):
        np.testing.assert_allclose(y[b], x[b, mask[b]].astype("f8").mean(0), rtol=1e-6, atol=1e-6)
    assert np.isnan(y[2]).all()            # (no step kept: Keras's 0 / 0)
    np.testing.assert_allclose(avg.call(x)[0], x.astype("f8").mean(1), rtol=1e-6, atol=1e-6)
    mx = GlobalPooling1D("max", keepdims=True)
    y, m = mx.call(x, mask)                 # (the max takes every step, as Keras's)
    assert m is None and y.shape == (3, 1, 4)
    np.testing.assert_array_equal(y[:, 0], x.max(1))
    cf = GlobalPooling1D("average", data_format="channels_first")
    cmask = mask[:, 1:]                     # (steps on the last axis)
    y = cf.call(x, cmask)[0]
    assert y.shape == (3, 5)
    np.testing.assert_allclose(y[1], x[1][:, cmask[1]].astype("f8").mean(1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 5\)"):
        cf.call(x, mask)
    np.testing.assert_allclose(cf.call(x)[0], x.astype("f8").mean(2), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(batch, steps, features\)"):
        avg.call(x[0])
    with pytest.raises(ValueError, match="op must be"):
        GlobalPooling1D("min")
    with pytest.raises(ValueError, match="data_format"):
        GlobalPooling1D("max", data_format="NCW")


def test_flatten_and_repeat_vector():
    x = rng.normal(size=(2, 3, 4)).astype("f4")
    y, m = Flatten().call(x, np.ones((2, 3), bool))
    assert m is None
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    np.testing.assert_array_equal(Flatten("channels_first").call(x)[0],
                                  x.transpose(0, 2, 1).reshape(2, 12))
    v = x[:, 0]
    y, m = RepeatVector(5).call(v, None)
    assert m is None and y.shape == (2, 5, 4) and y.flags.writeable
    assert all(np.array_equal(y[:, t], v) for t in range(5))
    with pytest.raises(ValueError, match=r"\(batch, features\)"):
        RepeatVector(5).call(x)
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="positive int"):
            RepeatVector(bad)


@pytest.mark.parametrize("axis", [-1, 2, [1, 2], [-2]])
@pytest.mark.parametrize("dt", ["f4", "f8"])
def test_layer_normalization_against_its_formula(axis, dt):
    x = (rng.normal(size=(3, 5, 4)) * 3 + 1).astype(dt)
    axes = tuple(sorted(a % 3 for a in (axis if isinstance(axis, list) else [axis])))
    wshape = tuple(x.shape[a] for a in axes)
    g, b = rng.normal(size=wshape), rng.normal(size=wshape)
    bshape = [1, 1, 1]
    for a in axes:
        bshape[a] = x.shape[a]
    x8 = x.astype("f8")
    mu, var = x8.mean(axes, keepdims=True), x8.var(axes, keepdims=True)
    tol = 1e-5 if dt == "f4" else 1e-12
    for gamma, beta in ((g, b), (None, b), (g, None), (None, None)):
        ln = LayerNormalization(gamma, beta, axis, epsilon=0.01, dtype=dt)
        y, m = ln.call(x, "the mask")
        assert m == "the mask" and y.dtype == np.dtype(dt)
        want = (x8 - mu) / np.sqrt(var + 0.01)
        if gamma is not None:
            want = want * gamma.reshape(bshape)
        if beta is not None:
            want = want + beta.reshape(bshape)
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    rms = LayerNormalization(g, None, axis, epsilon=0.01, rms_scaling=True, dtype=dt)
    np.testing.assert_allclose(rms.call(x)[0], x8 / np.sqrt(var + 0.01) * g.reshape(bshape),
                               rtol=tol, atol=tol)


def test_batch_normalization_against_its_formula():
    x = rng.normal(size=(3, 5, 4)).astype("f4")
    mean, var = rng.normal(size=4), rng.uniform(0.2, 2, size=4)
    g, b = rng.normal(size=4), rng.normal(size=4)
    bn = BatchNormalization(mean, var, g, b, epsilon=0.01)
    y, m = bn.call(x, "the mask")
    assert m == "the mask" and y.dtype == np.float32
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 0.01) * g + b, rtol=1e-5,
                               atol=1e-5)
    plain = BatchNormalization(mean, var)
    np.testing.assert_allclose(plain.call(x)[0], (x - mean) / np.sqrt(var + 1e-3),
                               rtol=1e-5, atol=1e-5)
    steps = BatchNormalization(mean[:1].repeat(5), var[:1].repeat(5), axis=1)
    np.testing.assert_allclose(steps.call(x)[0], (x - mean[0]) / np.sqrt(var[0] + 1e-3),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected 4 features on axis 2"):
        bn.call(x[:, :, :3])
    with pytest.raises(ValueError, match="differ in size"):
        BatchNormalization(mean, var[:3])
    for bad in (0, True, "x", [1, 2]):
        with pytest.raises(ValueError, match="axis"):
            BatchNormalization(mean, var, axis=bad)
    with pytest.raises(ValueError, match="batch axis"):
        LayerNormalization(None, None, axis=[0])
    with pytest.raises(ValueError, match="out of range"):
        LayerNormalization(None, None, axis=5).call(x)


def test_normalisation_passes_the_mask_pooling_uses_it():
    """Masking -> LayerNormalization -> BatchNormalization -> GlobalAveragePooling1D: the
    normalisations pass Masking's mask on and the average takes only the kept steps."""
    x = rng.normal(size=(2, 6, 3)).astype("f4")
    x[0, 4:] = 0
    x[1, :2] = 0
    g = rng.normal(size=3).astype("f4")
    model = Model([Masking(0.0), LayerNormalization(g, None),
                   BatchNormalization(np.zeros(3), np.ones(3), epsilon=0.0),
                   GlobalPooling1D("average")])
    y = model(x)
    ln = LayerNormalization(g, None).call(x)[0]
    np.testing.assert_allclose(y[0], ln[0, :4].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[1], ln[1, 2:].mean(0), rtol=1e-5, atol=1e-6)


from fastrnn.model import Conv1D, Pooling1D  # noqa: E402


def _conv_reference(x, w, b, s, pad, d, groups):
    """A direct float64 loop of a grouped, strided, dilated 1-D convolution over x
    already padded by ``pad`` (before, after)."""
    x = np.pad(x.astype("f8"), ((0, 0), pad, (0, 0)))
    k, cg, F = w.shape
    n = (x.shape[1] - (k - 1) * d - 1) // s + 1
    fg = F // groups
    y = np.zeros((x.shape[0], n, F))
    for t in range(n):
        for f in range(F):
            g = f // fg
            for j in range(k):
                y[:, t, f] += x[:, t * s + j * d, g * cg:(g + 1) * cg] @ w[j, :, f]
    return y if b is None else y + b


@pytest.mark.parametrize("k,s,d,groups,padding", [
    (3, 1, 1, 1, "valid"), (3, 1, 1, 1, "same"), (4, 2, 1, 1, "same"), (2, 1, 3, 1, "causal"),
    (3, 2, 2, 1, "same"), (1, 3, 1, 2, "valid"), (3, 1, 2, 3, "causal"), (5, 3, 1, 1, "same")])
def test_conv1d_against_a_direct_loop(k, s, d, groups, padding):
    r = np.random.RandomState(k * 100 + s * 10 + d)
    T, C, F = 11, 6, 6
    x = r.normal(size=(2, T, C)).astype("f4")
    w = r.normal(size=(k, C // groups, F)).astype("f4")
    b = r.normal(size=F).astype("f4")
    span = (k - 1) * d + 1
    if padding == "causal":
        pad = (span - 1, 0)
    elif padding == "same":
        total = max((-(-T // s) - 1) * s + span - T, 0)
        pad = (total // 2, total - total // 2)
    else:
        pad = (0, 0)
    conv = Conv1D(w, b, s, padding, d, groups, "linear")
    y, m = conv.call(x, np.ones((2, T), bool))
    assert m is None and y.dtype == np.float32
    want = _conv_reference(x, w, b, s, pad, d, groups)
    assert y.shape == want.shape
    if padding == "same":
        assert y.shape[1] == -(-T // s)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    relu = Conv1D(w, None, s, padding, d, groups, "relu")
    np.testing.assert_allclose(relu.call(x)[0], np.maximum(want - b, 0), rtol=1e-5, atol=1e-5)


def test_conv1d_errors():
    w = np.ones((3, 2, 4), "f4")
    with pytest.raises(ValueError, match=r"expected \(batch, steps, 2\)"):
        Conv1D(w).call(np.ones((1, 5, 3), "f4"))
    with pytest.raises(ValueError, match="does not fit in an input of 2 steps"):
        Conv1D(w).call(np.ones((1, 2, 2), "f4"))
    with pytest.raises(ValueError, match="multiple of groups"):
        Conv1D(w, groups=3)
    with pytest.raises(ValueError, match="padding"):
        Conv1D(w, padding="full")
    with pytest.raises(ValueError, match="3-D"):
        Conv1D(w[0])
    for bad in (0, 1.5, True, [2, 2]):
        with pytest.raises(ValueError, match="strides must be a positive int"):
            Conv1D(w, strides=bad)


@pytest.mark.parametrize("op", ["max", "average"])
@pytest.mark.parametrize("p,s,padding", [(2, None, "valid"), (3, 1, "same"), (3, 2, "same"),
                                         (4, 3, "valid"), (2, 2, "same")])
def test_pooling1d_against_a_direct_loop(op, p, s, padding):
    r = np.random.RandomState(p * 10 + (s or 0))
    T = 9
    x = r.normal(size=(2, T, 3)).astype("f4")
    st = s or p
    if padding == "same":
        n = -(-T // st)
        before = max((n - 1) * st + p - T, 0) // 2
    else:
        n, before = (T - p) // st + 1, 0
    want = np.zeros((2, n, 3))
    for t in range(n):
        lo, hi = max(t * st - before, 0), min(t * st - before + p, T)   # (inside only)
        win = x[:, lo:hi].astype("f8")
        want[:, t] = win.max(1) if op == "max" else win.mean(1)
    y, m = Pooling1D(op, p, s, padding).call(x, np.ones((2, T), bool))
    assert m is None and y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_pooling_window_beyond_reason_is_refused():
    """A file's pool_size of millions of steps (padding same) ran for minutes."""
    x = np.ones((2, 6, 3), np.float32)
    for p in (10 ** 7, 10 ** 9):
        with pytest.raises(ValueError, match="beyond what fastrnn runs"):
            Pooling1D("average", p, 1, "same").call(x)
