"""Edge cases of the Keras-style model layers and the ONNX conv helpers a production
audit found (each test failed before its fix): non-numbers into a Dense, empty batches
and empty sequences, helper threads past the CPU count, a Bidirectional re-fusing its
core while another thread loads weights."""
import os
import threading

import numpy as np
import pytest
import fastrnn
import fastrnn.model as fm

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.parametrize("bad", [np.array([[1 + 5j, 2, 3]], np.complex64),
                                 np.array([["1.5", "2", "3"]]),
                                 np.array([[1.0, 2.0, 3.0]], object)])
def test_dense_reading_a_model_input_refuses_non_numbers(bad):
    # (a multi-input Keras model's numeric branch, a Dense, took these silently,
    # a complex input's imaginary part dropped, unlike every other layer)
    m = fm.Model([fm.Dense(np.ones((3, 2), np.float32))])
    with pytest.raises(TypeError, match="dtype"):
        m.predict(bad)
    assert np.array_equal(m.predict(np.array([[1, 2, 3]], np.int32)), [[6.0, 6.0]])


@pytest.mark.parametrize("core", [fastrnn.LSTM(4, 8, batch_first=True),
                                  fastrnn.GRU(4, 8, batch_first=True),
                                  fastrnn.LSTM(4, 8, batch_first=True, proj_size=3)])
def test_empty_batch_through_a_last_output_rnn(core):
    # (B = 0 was "cannot reshape array of size 0 into shape (0,newaxis)")
    m = fm.Model([fm.KerasRNN(core, return_sequences=False)])
    want = m.predict(np.zeros((2, 5, 4), np.float32)).shape[1:]
    y = m.predict(np.zeros((0, 5, 4), np.float32))
    assert y.shape == (0,) + want


def test_empty_batch_multi_input_keras_model():
    m = fastrnn.load(os.path.join(FIX, "keras", "k3_multi_text_num.keras"))
    y = m.predict([np.zeros((0, 7), np.int32), np.zeros((0, 3), np.float32)])
    assert y.shape == (0, 2)


@pytest.mark.parametrize("name", ["k3_attn_self_masked.keras", "k3_mha_causal_scores_h5.h5"])
def test_attention_over_zero_steps(name):
    # (was NumPy's "zero-size array to reduction operation maximum")
    m = fastrnn.load(os.path.join(FIX, "keras", name))
    x = np.zeros((2, 0), np.int32) if "self_masked" in name else np.zeros((2, 0, 4), np.float32)
    y = m.predict(x)
    for a in (y if isinstance(y, list) else [y]):
        assert a.shape[0] == 2      # (a masked average over 0 steps is NaN, as Keras's 0 / 0)


def test_global_max_pool_over_zero_steps_names_the_layer():
    m = fm.Model([fm.GlobalPooling1D("max", name="gmp")])
    with pytest.raises(ValueError, match="gmp"):
        m.predict(np.zeros((2, 0, 3), np.float32))


def test_conv_helper_threads_capped_at_the_cpus(tmp_path):
    # (each worker of a big Conv is a helper thread kept for good: num_threads=16 on
    # a 2-CPU machine left 15)
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1))
    p = tmp_path / "conv.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 16, 32),), str(p), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "B"}})
    m = fastrnn.load(str(p))
    x = np.random.default_rng(0).standard_normal((8, 1, 16, 32)).astype(np.float32)
    ref = m.run({"x": x})
    y = m.run({"x": x}, num_threads=16)
    assert np.array_equal(list(y.values())[0], list(ref.values())[0])
    helpers = sum(t.name == "fastrnn-conv" for t in threading.enumerate())
    assert helpers <= max(1, len(os.sched_getaffinity(0)) - 1)


def _first(v):
    while isinstance(v, (list, tuple)):
        v = v[0]
    return np.asarray(v)


def test_bidirectional_refuse_keeps_a_concurrent_load():
    # (a load_state_dict on a direction landing while a call re-fuses the
    # Bidirectional's core was undone, and the old weights recorded as current)
    km = fastrnn.load(os.path.join(FIX, "keras", "k3_shared_bi_h5.h5"))
    bi = [l for l in km.layers if isinstance(l, fm.Bidirectional)][0]
    assert bi._fused is not None
    f = bi.forward.core
    A = {k: v.copy() for k, v in f.state_dict().items()}
    rng = np.random.default_rng(1)
    B = {k: v + rng.standard_normal(v.shape).astype(v.dtype) for k, v in A.items()}
    x = rng.standard_normal((2, 4, f.input_size)).astype(np.float32)
    f.load_state_dict(A)
    ya = _first(bi.call(x))
    fused = bi._fused
    orig = type(fused).load_state_dict
    fired = []

    def hooked(self, *a, **k):
        res = orig(self, *a, **k)
        if self is fused and not fired:          # another thread's load lands here
            fired.append(1)
            t = threading.Thread(target=f.load_state_dict, args=(A,))
            t.start()
            t.join()
        return res
    f.load_state_dict(B)
    type(fused).load_state_dict = hooked
    try:
        bi.call(x)
    finally:
        type(fused).load_state_dict = orig
    assert fired
    assert all(np.array_equal(f.state_dict()[k], A[k]) for k in A)
    assert np.array_equal(_first(bi.call(x)), ya)


def test_single_input_model_takes_its_array_in_a_list_as_keras_does():
    """``predict([x])`` (Keras's habit) is ``predict(x)``; a list of several arrays to a
    model of one input is refused by name (np.asarray stacked it into a 4-D batch and
    the first layer named only the shape)."""
    m = fastrnn.load(os.path.join(FIX, "keras", "k3_lstm_basic.keras"))
    x = np.load(os.path.join(FIX, "keras", "k3_lstm_basic.npz"))["x"]
    want = m.predict(x)
    np.testing.assert_array_equal(m.predict([x]), want)
    np.testing.assert_array_equal(m((x,)), want)
    np.testing.assert_array_equal(m.predict(x.tolist()), want)   # nested lists: an array
    with pytest.raises(ValueError, match="takes 1 input, got a list of 2 arrays"):
        m.predict([x, x])


def test_convolutions_and_pools_over_zero_steps():
    """An input of no steps: a causal or "same" Conv1D / pool gives no steps (Keras's
    output length there); a "valid" window longer than the input names the input's
    length (it named the padded length: "does not fit in 4 steps" for 0)."""
    from fastrnn._model_conv import Conv1D, Pooling1D
    m = fastrnn.load(os.path.join(FIX, "keras", "k3_causal_conv_stream.keras"))
    x = np.zeros((3, 0, 4), np.float32)
    assert m.predict(x).shape == (3, 0, 2)
    assert m.forward_train(x)[0].shape == (3, 0, 2)
    k = np.ones((3, 4, 5), np.float32)
    for padding in ("causal", "same"):
        assert Conv1D(k, padding=padding, dilation_rate=2).call(x)[0].shape == (3, 0, 5)
    assert Pooling1D("max", 2, padding="same").call(x)[0].shape == (3, 0, 4)
    with pytest.raises(ValueError, match=r"3 taps \(dilation 2\) does not fit in an "
                                         r"input of 0 steps"):
        Conv1D(k, dilation_rate=2).call(x)
    with pytest.raises(ValueError, match=r"3 taps \(dilation 1\) does not fit in an "
                                         r"input of 2 steps$"):
        Conv1D(k).call(np.zeros((3, 2, 4), np.float32))
