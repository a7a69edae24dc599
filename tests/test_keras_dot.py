"""Keras's ``Dot`` merge layer and ``Softmax`` layer: Luong-style attention built from
layers, as in the seq2seq tutorials (encoder LSTM returning its sequence and states, decoder
LSTM started from them, ``Dot(axes=[2, 2])`` scores, a softmax, ``Dot(axes=[2, 1])``
context), and the cosine similarity ``Dot(normalize=True)``.  Fixtures k3_dot_* by real
Keras 3.15.1 (tests/fixtures/make_keras3.py) and k2_dot_* by tf-keras 2.21
(tests/fixtures/make_keras2.py).

Mask behaviour found with real Keras (both versions): ``Dot`` ignores its inputs' masks and
its ``compute_mask`` gives None, so a masked encoder's padded steps are attended to (their
scores are not lowered) and nothing after the Dot is masked.  The ``Softmax`` layer passes a
mask reaching it on, and applies it by broadcasting it against its input's last axes:
Keras 3.15 sets the masked entries to -1e9 before the softmax and to 0 after it; tf.keras 2
adds -1e9 in the input's dtype (``robust_masking=True``: sets it) and zeroes nothing.  A
``(B, T)`` mask of a ``(B, T, F)`` tensor fits only by accident (B 1, T equal to F): else
Keras raises, and so does fastrnn (a ValueError naming the layer)."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("h5py")
import h5py  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402
from fastrnn.model import INPUT, Dot, Embedding, Model, Softmax  # noqa: E402
from test_keras import _edit_config, assert_matches, as_list, model_path, reference  # noqa: E402

FIXTURES = ["k3_dot_seq2seq_attn", "k3_dot_seq2seq_masked_softmax", "k3_dot_cosine_siamese",
            "k3_dot_attn_h5", "k2_dot_seq2seq_attn"]
TOL = 1e-6


def _check(model, name, **kw):
    return assert_matches(model, name, tol=TOL, **kw)


@pytest.mark.parametrize("name", FIXTURES)
def test_dot_fixtures_match_keras(name, tmp_path):
    model = load_keras(model_path(name))
    assert any(isinstance(l, Dot) for l in model.layers)
    out = _check(model, name)
    _check(model, name, batch_size=1)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = fastrnn.load(path)
    assert repr(again) == repr(model)
    for a, b in zip(as_list(again.predict(reference(name)[0])), out):
        assert np.array_equal(a, b)


def test_fixture_layers():
    # the tutorial model: Activation("softmax"); the others a Softmax layer, of each
    # file's Keras version's masking
    m = load_keras(model_path("k3_dot_seq2seq_attn"))
    assert [l.axes for l in m.layers if isinstance(l, Dot)] == [(2, 2), (2, 1)]
    assert not any(isinstance(l, Softmax) for l in m.layers)
    m = load_keras(model_path("k3_dot_attn_h5"))
    assert [l.axes for l in m.layers if isinstance(l, Dot)][0] == (-1, -1)
    assert [l.masking for l in m.layers if isinstance(l, Softmax)] == ["keras3"]
    m = load_keras(model_path("k2_dot_seq2seq_attn"))
    assert [l.masking for l in m.layers if isinstance(l, Softmax)] == ["add"]
    dots = [l for l in m.layers if isinstance(l, Dot)]
    assert [(l.normalize, l.epsilon) for l in dots] == [(False, 1e-6), (False, 1e-6),
                                                        (True, 1e-6)]
    m = load_keras(model_path("k3_dot_cosine_siamese"))
    assert [(l.normalize, l.epsilon) for l in m.layers if isinstance(l, Dot)] == \
        [(True, 1e-7), (True, 1e-7)]
    assert [l.axis for l in m.layers if isinstance(l, Softmax)] == [(1, 2)]


def test_masked_encoder_steps_are_attended_to():
    # Keras's Dot ignores the encoder's mask: the weights of the padded encoder steps
    # are not 0 (the fixture's Keras weights say so too)
    name = "k3_dot_seq2seq_masked_softmax"
    (enc, _), (_, w) = reference(name)
    pad = enc == 0
    assert pad.any()
    assert (w.transpose(0, 2, 1)[pad] > 1e-3).all()
    out = load_keras(model_path(name)).predict(reference(name)[0])
    assert np.abs(out[1] - w).max() <= TOL


@pytest.mark.parametrize("axes, s1, s2", [
    ([2, 2], (2, 5, 3), (2, 6, 3)),
    ([2, 1], (2, 5, 6), (2, 6, 3)),
    (1, (2, 4), (2, 4)),
    (-1, (2, 4), (2, 6, 4)),
    ((1, 2), (2, 4), (2, 6, 4)),
    ((2, 1), (2, 5, 4), (2, 4)),
    ((-2, 1), (2, 5, 4, 3), (2, 4, 7)),
    ((3, 2), (2, 5, 4, 3), (2, 2, 3, 6)),
    (-4, (2, 5, 3), (2, 6, 3)),             # (an int wraps modulo the rank, as in Keras)
])
def test_dot_is_kerass_batch_dot(axes, s1, s2):
    rng = np.random.RandomState(0)
    a, b = rng.normal(size=s1).astype("f4"), rng.normal(size=s2).astype("f4")
    r = lambda ax, n: ax % n
    a0, a1 = (axes, axes) if isinstance(axes, int) else axes
    a0, a1 = r(a0, a.ndim), r(a1, b.ndim)
    # the letters: batch z, summed k
    la = [chr(ord("a") + i) for i in range(a.ndim)]
    lb = [chr(ord("m") + i) for i in range(b.ndim)]
    la[0] = lb[0] = "z"
    la[a0] = lb[a1] = "k"
    lo = ["z"] + [c for c in la[1:] if c != "k"] + [c for c in lb[1:] if c != "k"]
    want = np.einsum(f"{''.join(la)},{''.join(lb)}->{''.join(lo)}", a, b)
    if want.ndim == 1:
        want = want[:, None]
    got, mask = Dot(axes).call([a, b], [np.ones(s1[:2], bool), None])
    assert mask is None
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


def test_dot_normalize_is_cosine_with_kerass_floor():
    rng = np.random.RandomState(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    got = Dot(1, normalize=True).call([a, b])[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.abs(got[:, 0] - cos).max() < 1e-12
    # a norm under epsilon is taken as epsilon (Keras 3: 1e-7, tf.keras 2: 1e-6)
    tiny = np.full((1, 4), 1e-9)
    one = np.ones((1, 4))
    assert np.isclose(Dot(-1, normalize=True).call([tiny, one])[0][0, 0],
                      4e-9 / 1e-7 / 2)
    assert np.isclose(Dot(-1, normalize=True, epsilon=1e-6).call([tiny, one])[0][0, 0],
                      4e-9 / 1e-6 / 2)
    assert Dot(-1, normalize=True).call([np.zeros((1, 4)), one])[0][0, 0] == 0


def test_dot_errors_name_the_layer():
    a, b = np.ones((2, 5, 3), "f4"), np.ones((2, 6, 3), "f4")
    with pytest.raises(ValueError, match=r"scores: Dot axes=\[1, 1\]: the sizes along the "
                                         r"axes differ: 5 \(axis 1 of \(2, 5, 3\)\) and 6"):
        Dot([1, 1], name="scores").call([a, b])
    with pytest.raises(ValueError, match=r"scores: Dot axes=3 is out of range \(or the "
                                         r"batch axis\) for the first input, of rank 3"):
        Dot(3, name="scores").call([a, b])
    with pytest.raises(ValueError, match=r"scores: Dot axes=\[0, 2\] is out of range"):
        Dot([0, 2], name="scores").call([a, b])
    with pytest.raises(ValueError, match=r"scores: Dot axes=\[2, -4\] is out of range \(or "
                                         "the batch axis\\) for the second input"):
        Dot([2, -4], name="scores").call([a, b])     # (Keras's build fails on it)
    with pytest.raises(ValueError, match=r"scores: Dot takes exactly 2 tensors, got 3"):
        Dot(2, name="scores").call([a, b, b])
    with pytest.raises(ValueError, match=r"scores: Dot needs tensors of one batch size"):
        Dot(2, name="scores").call([a, b[:1]])
    with pytest.raises(ValueError, match=r"scores: Dot axes must be an int or a pair"):
        Dot([1, 2, 2], name="scores")
    with pytest.raises(ValueError, match=r"scores: Dot axes must be an integer"):
        Dot(True, name="scores")


def test_a_mismatch_at_predict_names_the_layer(tmp_path):
    # the context Dot given axes [2, 2]: weights (B, 7, 7) and the encoder's (B, 7, 5)
    def edit(c):
        for l in c["config"]["layers"]:
            if l["class_name"] == "Dot" and l["config"]["axes"] == [2, 1]:
                l["config"]["axes"] = [2, 2]
    p = _edit_config("k3_dot_seq2seq_attn", tmp_path, edit)
    model = load_keras(p)
    with pytest.raises(ValueError, match=r"dot_1: Dot axes=\[2, 2\]: the sizes along "
                                         r"the axes differ: 7 \(axis 2 of \(3, 7, 7\)\) and 5"):
        model.predict(reference("k3_dot_seq2seq_attn")[0])


def _dot_layers(c):
    return [l for l in c["config"]["layers"] if l["class_name"] == "Dot"]


def test_bad_dot_configs_are_refused(tmp_path):
    name = "k3_dot_seq2seq_attn"

    def axes(v):
        def fn(c):
            _dot_layers(c)[0]["config"]["axes"] = v
        return fn
    for v, msg in [([3, 2], r"axes=\[3, 2\] is out of range \(or the batch axis\) for the "
                            "first input, of rank 3"),
                   (0, "axes=0 is out of range"),
                   ([2, -4], r"axes=\[2, -4\] is out of range .* the second input"),
                   ([2], r"axes must be an int or a pair of ints, got \[2\]"),
                   ("2", "axes must be an int or a pair of ints, got '2'")]:
        with pytest.raises(LoadError, match=r"layer 'dot' \(Dot\): " + msg):
            load_keras(_edit_config(name, tmp_path, axes(v)))

    def normalize(c):
        _dot_layers(c)[0]["config"]["normalize"] = "yes"
    with pytest.raises(LoadError, match=r"layer 'dot' \(Dot\): config key 'normalize'"):
        load_keras(_edit_config(name, tmp_path, normalize))

    def embedding_as_key(c):   # the scores of the decoder (5) and the embedding (4)
        d = _dot_layers(c)[0]
        emb = next(l for l in c["config"]["layers"] if l["class_name"] == "Embedding")
        d["inbound_nodes"][0]["args"][0][1]["config"]["keras_history"] = [
            emb["config"]["name"], 0, 0]
    with pytest.raises(LoadError, match=r"layer 'dot' \(Dot\): axes=\[2, 2\]: the sizes "
                                        r"along the axes differ: 5 .* and 4"):
        load_keras(_edit_config(name, tmp_path, embedding_as_key))

    def three(c):
        d = _dot_layers(c)[0]
        args = d["inbound_nodes"][0]["args"][0]
        args.append(args[1])
    with pytest.raises(LoadError, match=r"layer 'dot' \(Dot\) takes exactly 2 inputs, "
                                        "given 3"):
        load_keras(_edit_config(name, tmp_path, three))


def test_bad_softmax_configs_are_refused(tmp_path):
    name = "k3_dot_seq2seq_masked_softmax"

    def edit(**kw):
        def fn(c):
            s = next(l for l in c["config"]["layers"] if l["class_name"] == "Softmax")
            s["config"].update(kw)
        return fn
    for kw, msg in [(dict(axis=3), r"axis 3 is out of range \(or the batch axis\) "
                                   "for a 3-D input"),
                    (dict(axis=0), "axis 0 is out of range"),
                    (dict(axis=[1, -2]), r"axis \[1, -2\] repeats an axis"),
                    (dict(axis="1"), "axis must be an int or a list of ints"),
                    (dict(robust_masking=True), "config key robust_masking in a Keras 3 "
                                                "config: not supported")]:
        with pytest.raises(LoadError, match=r"layer 'softmax\w*' \(Softmax\): " + msg):
            load_keras(_edit_config(name, tmp_path, edit(**kw)))


def test_keras2_softmax_robust_masking_is_read(tmp_path):
    p = tmp_path / "robust.h5"
    shutil.copy(model_path("k2_dot_seq2seq_attn"), p)
    with h5py.File(p, "r+") as f:
        c = json.loads(f.attrs["model_config"])
        for l in c["config"]["layers"]:
            if l["class_name"] == "Softmax":
                l["config"]["robust_masking"] = True
        f.attrs["model_config"] = json.dumps(c)
    m = load_keras(p)
    assert [l.masking for l in m.layers if isinstance(l, Softmax)] == ["where"]
    _check(m, "k2_dot_seq2seq_attn")        # (no mask reaches it: the same outputs)


# ----------------------------------------------------------------------------- Softmax masks

def _sm(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_softmax_masks_follow_each_keras():
    # a (1, 4) mask of a (1, 4, 4) input (B = 1, T = F: one of the cases where Keras's
    # broadcast fits): mask[0, j] masks column j of every row, as real Keras 3.15 and
    # tf.keras 2 computed for this case (Embedding(mask_zero) -> Softmax(axis=1))
    rng = np.random.RandomState(0)
    x = rng.normal(size=(1, 4, 4)).astype("f4")
    mask = np.array([[True, False, True, False]])
    k3, m3 = Softmax(axis=1).call(x, mask)
    assert m3 is mask
    want = np.where(mask, _sm(np.where(mask, x, np.float32(-1e9)), 1), 0)
    assert np.abs(k3 - want).max() < 1e-7
    assert (k3[..., 1] == 0).all() and (k3[..., 3] == 0).all()
    k2, _ = Softmax(axis=1, masking="add").call(x, mask)
    # float32: x - 1e9 rounds to -1e9 everywhere: the masked columns are uniform
    assert np.allclose(k2[..., 1], 0.25) and np.allclose(k2[..., 3], 0.25)
    assert np.abs(k2[..., [0, 2]] - want[..., [0, 2]]).max() < 1e-7
    # float64: the -1e9 keeps the values' differences: a masked column softmaxes its own
    k2d, _ = Softmax(axis=1, masking="add").call(x.astype("f8"), mask)
    assert np.abs(k2d - _sm(x.astype("f8"), 1)).max() < 1e-6
    rob, _ = Softmax(axis=1, masking="where").call(x, mask)
    assert np.allclose(rob[..., 1], 0.25) and rob.dtype == np.float32


def test_softmax_mask_that_does_not_fit_names_the_layer():
    # Embedding(mask_zero) -> Softmax: a (2, 4) mask of a (2, 4, 4) output, which Keras
    # 3.15 refuses when it runs ("The `mask` must be broadcastable to `inputs`")
    emb = Embedding(np.random.RandomState(0).normal(size=(10, 4)), mask_zero=True)
    model = Model([emb, Softmax(axis=1, name="sm")], inputs=[[(INPUT, 0)], [(0, 0)]])
    ids = np.array([[1, 0, 3, 0], [2, 2, 0, 5]])
    with pytest.raises(ValueError, match=r"sm: Softmax is given a mask of shape \(2, 4\) for "
                                         r"an input of shape \(2, 4, 4\)"):
        model.predict(ids)
    out = model.predict(ids[:1])            # (B = 1: it fits, as in Keras)
    assert (out[0][:, [1, 3]] == 0).all()


def test_softmax_axes():
    x = np.random.RandomState(2).normal(size=(2, 3, 4))
    assert np.allclose(Softmax().call(x)[0], _sm(x, -1))
    assert np.allclose(Softmax(axis=1).call(x)[0], _sm(x, 1))
    both = Softmax(axis=[1, 2]).call(x)[0]
    assert np.allclose(both.sum((1, 2)), 1) and np.allclose(
        both, np.exp(x) / np.exp(x).sum((1, 2), keepdims=True))
    with pytest.raises(ValueError, match="sm: Softmax axis 0 is out of range"):
        Softmax(axis=0, name="sm").call(x)
    with pytest.raises(ValueError, match="sm: masking must be one of"):
        Softmax(masking="mul", name="sm")


def test_hand_built_round_trip(tmp_path):
    rng = np.random.RandomState(3)
    layers = [Dot((-1, 2), normalize=True, epsilon=1e-6, name="cos"),
              Softmax(axis=(1, 2), masking="add", name="sm"),
              Dot([2, 1], name="ctx")]
    model = Model(layers, inputs=[[(INPUT, 0), (INPUT, 1)], [(0, 0)], [(1, 0), (INPUT, 1)]],
                  n_inputs=2)
    x = [rng.normal(size=(2, 5, 3)).astype("f4"), rng.normal(size=(2, 6, 3)).astype("f4")]
    y = model.predict(x)
    assert y.shape == (2, 5, 3)
    model.save(tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    assert repr(again) == repr(model)
    assert [(l.axes, l.normalize, l.epsilon) for l in again.layers if isinstance(l, Dot)] == \
        [((-1, 2), True, 1e-6), ((2, 1), False, 1e-7)]
    assert (again.layers[1].axis, again.layers[1].masking) == ((1, 2), "add")
    assert np.array_equal(again.predict(x), y)
