"""fastrnn.model layers built by hand (README: "Every layer exists in fastrnn.model, to
build models by hand"): the Keras rules a hand-built layer must follow without the
loader's help.  From an audit of the API (500+ random hand-built models against Keras
3.15.1): a Bidirectional left at KerasRNN's default zero_output_for_mask, or of two
layers reading the same way; a Conv kernel assigned after a call; Masking's zeros;
Keras's parameter count; torch inputs of a model.  Reference numbers: the Keras 3
fixtures in tests/fixtures/keras (their outputs, and the weights Keras saved)."""
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import model as M
from fastrnn.io import hdf5

FIX = Path(__file__).parent / "fixtures" / "keras"


def _load(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastrnn.load(FIX / f"{name}.keras")


def _by_hand(model):
    """``model`` again, each Bidirectional made anew from its directions' cores with
    KerasRNN's defaults (what a user building it by hand writes)."""
    layers = []
    for l in model.layers:
        if isinstance(l, M.Bidirectional):
            f, b = l.forward, l.backward
            l = M.Bidirectional(M.KerasRNN(f.core, f.return_sequences, f.return_state),
                                M.KerasRNN(b.core, b.return_sequences, b.return_state),
                                l.merge_mode)
        layers.append(l)
    return M.Model(layers, outputs=model.outputs, inputs=model.inputs,
                   initial_states=model.initial_states, input_names=model.input_names,
                   n_inputs=model.n_inputs)


# (each returns a Bidirectional's masked sequence, or a layer of it that keeps the
# masked steps' values: a later RNN or pooling reading the mask would skip them)
@pytest.mark.parametrize("name", ["k3_bi_sum_gru_masking", "k3_bi_none_lstm_masking",
                                  "k3_bi_none_gobw_masking"])
def test_hand_built_bidirectional_matches_keras_on_masked_steps(name):
    """Keras's Bidirectional makes both directions output zeros at masked steps when it
    returns sequences; a hand-built one gets the same rule (it repeated the previous
    output there, 0.06 off Keras)."""
    d = np.load(FIX / f"{name}.npz")
    ys = _by_hand(_load(name))(d["x"])
    ys = ys if isinstance(ys, list) else [ys]
    for k, y in enumerate(ys):
        np.testing.assert_allclose(y, d[f"y{k}"], atol=2e-6)


def test_bidirectional_refuses_two_layers_reading_the_same_way():
    f = M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True), return_sequences=True)
    g = M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True), return_sequences=True)
    with pytest.raises(ValueError, match="opposite directions"):
        M.Bidirectional(f, g)
    back = M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True, go_backwards=True))
    with pytest.raises(ValueError, match="opposite directions"):
        M.Bidirectional(back, M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True,
                                                      go_backwards=True)))


def _keras_values(name):
    """How many numbers Keras saved for the model (its count_params: every variable)."""
    with zipfile.ZipFile(FIX / f"{name}.keras") as z:
        data = z.read("model.weights.h5")
    total = [0]
    with hdf5.File(data) as f:
        f.visititems(lambda _, o: total.__setitem__(0, total[0] + int(np.prod(o.shape)))
                     if isinstance(o, hdf5.Dataset) else None)
    return total[0]


# (k3_reshape_permute_masking is refused: its outputs are Keras-on-JAX's, test_keras.py)
K3 = sorted(p.stem for p in FIX.glob("k3_*.keras")
            if "refused" not in p.stem and p.stem != "k3_reshape_permute_masking")


@pytest.mark.parametrize("name", K3)
def test_count_params_is_keras_count(name):
    """count_params (and summary's total) counts a recurrent layer's weights as Keras
    does: one bias vector where the core keeps bias_ih and bias_hh."""
    model = _load(name)
    assert model.count_params() == _keras_values(name)


def test_count_params_of_recurrent_layers():
    c = M.KerasRNN(fastrnn.LSTM(3, 2, batch_first=True))
    assert c.count_params() == 4 * 2 * (3 + 2) + 4 * 2          # Keras's LSTM(2) on 3
    g = M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True))            # reset_after: 2 biases
    assert g.count_params() == 3 * 2 * (3 + 2) + 2 * 3 * 2
    g0 = M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True, reset_after=False))
    assert g0.count_params() == 3 * 2 * (3 + 2) + 3 * 2
    nb = M.KerasRNN(fastrnn.SimpleRNN(3, 2, batch_first=True, bias=False))
    assert nb.count_params() == 2 * (3 + 2)
    # a core Keras has no counterpart for counts all its weights
    p = M.KerasRNN(fastrnn.LSTM(3, 4, batch_first=True, proj_size=2))
    assert p.count_params() == sum(v.size for v in p.core.state_dict().values())


@pytest.mark.parametrize("cls,kshape,xshape", [
    (M.Conv1D, (3, 4, 6), (2, 9, 4)), (M.Conv2D, (2, 3, 4, 6), (2, 5, 7, 4))])
def test_conv_kernel_assigned_or_edited_after_a_call_is_used(cls, kshape, xshape):
    """A Conv keeps its kernel rearranged and packed: assigning ``layer.kernel`` drops
    them, ``mark_weights_changed()`` after an in-place edit (Conv1D ran the first
    kernel after an assignment, Conv2D from construction on; save wrote the new one)."""
    r = np.random.RandomState(0)
    k1, k2 = r.normal(size=kshape).astype("f4"), r.normal(size=kshape).astype("f4")
    b = r.normal(size=kshape[-1]).astype("f4")
    x = r.normal(size=xshape).astype("f4")
    conv = cls(k1, b, padding="same")
    conv(x)
    conv.kernel = k2
    np.testing.assert_array_equal(conv(x), cls(k2, b, padding="same")(x))
    conv.kernel[...] = 0
    conv.mark_weights_changed()
    np.testing.assert_allclose(conv(x), np.broadcast_to(b, conv(x).shape), atol=0)
    conv.kernel = k1
    y = conv(x)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(conv))(x), y)
    with pytest.raises(ValueError, match="kernel must be"):
        conv.kernel = k1[..., :-1]


def test_conv_pickled_before_the_kernel_property_loads():
    """A Conv pickled by earlier versions (its kernel in ``__dict__['kernel']``)."""
    r = np.random.RandomState(1)
    conv = M.Conv1D(r.normal(size=(2, 3, 4)).astype("f4"))
    x = r.normal(size=(1, 5, 3)).astype("f4")
    y = conv(x)
    state = dict(conv.__dict__)
    state["kernel"] = state.pop("_kernel")
    old = M.Conv1D.__new__(M.Conv1D)
    old.__setstate__(state)
    np.testing.assert_array_equal(old(x), y)


def test_masking_zeros_masked_steps_as_keras_where():
    """Keras's Masking sets masked steps to 0 with ops.where; an infinite mask_value's
    steps were NaN (inf * 0)."""
    x = np.array([[[1.0, 2.0], [np.inf, np.inf], [3.0, np.inf]]], "f4")
    y, keep = M.Masking(np.inf).call(x)
    assert keep.tolist() == [[True, False, True]]
    np.testing.assert_array_equal(y, np.where(keep[..., None], x, 0))


def test_model_takes_torch_tensors_as_layers_do():
    torch = pytest.importorskip("torch")
    r = np.random.RandomState(2)
    x = r.normal(size=(3, 5, 4)).astype("f4")
    model = M.Model([M.Masking(), M.KerasRNN(fastrnn.GRU(4, 3, batch_first=True, seed=0)),
                     M.Dense(r.normal(size=(3, 2)).astype("f4"))])
    t = torch.tensor(x, requires_grad=True)
    np.testing.assert_array_equal(model(t), model(x))
    np.testing.assert_array_equal(model.predict(t, batch_size=2), model.predict(x, batch_size=2))
    bf = torch.tensor(x).bfloat16()
    np.testing.assert_array_equal(model(bf), model(bf.float().numpy()))
    ids = M.Model([M.Embedding(r.normal(size=(6, 2)), mask_zero=True)])
    np.testing.assert_array_equal(ids(torch.tensor([[1, 2, 0]])), ids(np.array([[1, 2, 0]])))
    with pytest.raises(TypeError, match="is None"):
        model(None)


def _u(r, *shape):
    return r.uniform(-.5, .5, shape).astype("f4")


@pytest.mark.parametrize("name", ["conv1d", "conv1d_same_bias", "conv2d", "conv2d_same_relu",
                                  "flatten3", "flatten2", "dot_seq", "dot_vec"])
def test_empty_batch_through_layers_that_reshape(name):
    """An empty batch gives an empty output of the shape a batch of one has (Conv1D and
    Conv2D raised the kernel's "y must be writeable", Flatten and Dot NumPy's "cannot
    reshape array of size 0")."""
    r = np.random.RandomState(3)
    layer, shapes = {
        "conv1d": (M.Conv1D(_u(r, 2, 4, 3)), [(5, 4)]),
        "conv1d_same_bias": (M.Conv1D(_u(r, 3, 4, 3), _u(r, 3), padding="same"), [(5, 4)]),
        "conv2d": (M.Conv2D(_u(r, 2, 2, 4, 3)), [(6, 5, 4)]),
        "conv2d_same_relu": (M.Conv2D(_u(r, 3, 3, 4, 3), strides=2, padding="same",
                                      activation="relu"), [(6, 7, 4)]),
        "flatten3": (M.Flatten(), [(5, 4)]),
        "flatten2": (M.Flatten(), [(4,)]),
        "dot_seq": (M.Dot((2, 2)), [(3, 4), (5, 4)]),
        "dot_vec": (M.Dot(1), [(4,), (4,)]),
    }[name]
    one = [_u(r, 1, *s) for s in shapes]
    empty = [a[:0] for a in one]
    if len(shapes) == 1:
        y1, y0 = layer(one[0]), layer(empty[0])
    else:
        y1, y0 = layer(one), layer(empty)
    assert y0.shape == (0,) + y1.shape[1:] and y0.dtype == y1.dtype


def test_recurrent_layer_errors_name_the_layer_and_ints_are_numbers():
    """A wrong feature count names the model's layer (the core's error named none);
    integer features are numbers, as Dense takes them (the core refused them)."""
    r = np.random.RandomState(4)
    rnn = M.KerasRNN(fastrnn.LSTM(3, 2, batch_first=True, seed=0), name="enc")
    bi = M.Bidirectional(M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True, seed=1)),
                         M.KerasRNN(fastrnn.GRU(3, 2, batch_first=True, seed=2,
                                                go_backwards=True)), name="bi")
    bi._fuse_with(fastrnn.layer_from_config(bi._fused_config()))   # (as a loader fuses it)
    for layer, name in ((rnn, "enc"), (bi, "bi")):
        with pytest.raises(ValueError, match=f"{name}: expected 3 input features"):
            M.Model([layer])(r.normal(size=(2, 4, 5)).astype("f4"))
        ints = r.randint(-2, 3, (2, 4, 3))
        np.testing.assert_array_equal(M.Model([layer])(ints),
                                      M.Model([layer])(ints.astype("f4")))


@pytest.mark.parametrize("bad", ["2", 1.5, True, None])
def test_predict_batch_size_must_be_an_int(bad):
    model = M.Model([M.Dense(np.ones((3, 2), "f4"))])
    x = np.ones((4, 3), "f4")
    if bad is None:
        np.testing.assert_array_equal(model.predict(x, batch_size=bad), model(x))
        return
    with pytest.raises(ValueError, match="batch_size must be an int"):
        model.predict(x, batch_size=bad)
