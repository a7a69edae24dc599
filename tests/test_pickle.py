"""Layers and models pickle with their weights (so they ship to worker processes)."""
import pickle
import subprocess
import sys
import os

import numpy as np
import pytest

import fastrnn
from fastrnn.model import Dense, Embedding, KerasRNN, Model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

LAYERS = [
    fastrnn.LSTM(6, 16, num_layers=2, seed=0),
    fastrnn.LSTM(6, 16, proj_size=8, bidirectional=True, seed=0),
    fastrnn.GRU(6, 16, reset_after=False, batch_first=True, seed=0),
    fastrnn.GRU(6, 16, dtype="float64", num_threads=1, seed=0),
    fastrnn.SimpleRNN(6, 16, nonlinearity="relu", bias=False, seed=0),
    fastrnn.LSTM(6, 16, peepholes=True, clip=3.0, activations=["hardsigmoid", "tanh", "tanh"],
                 seed=0),
]


def _run(obj, x):
    out = obj(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_layer_roundtrip(layer, protocol):
    x = np.random.default_rng(0).standard_normal((5, 3, 6))
    want = _run(layer, x)                       # packed copies exist now
    blob = pickle.dumps(layer, protocol=protocol)
    nbytes = sum(v.nbytes for v in layer.state_dict().values())
    # weights once (the packed copies are dropped), little overhead; protocol 2 writes
    # array bytes as latin-1 text (a byte >= 0x80 takes two): measured on the weights
    weights = len(pickle.dumps(layer.state_dict(), protocol=protocol))
    assert nbytes <= len(blob) <= weights + 8192, (len(blob), weights)
    other = pickle.loads(blob)
    assert type(other) is type(layer)
    assert repr(other) == repr(layer)
    assert other.get_config() == layer.get_config()
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
        assert other.state_dict()[k].dtype == v.dtype
    np.testing.assert_array_equal(_run(other, x), want)


def test_unpickled_layer_is_independent():
    layer = fastrnn.GRU(3, 4, seed=1)
    other = pickle.loads(pickle.dumps(layer))
    other.parameters()["weight_ih_l0"][...] = 0
    other.mark_weights_changed()
    assert np.any(layer.parameters()["weight_ih_l0"] != 0)


def test_unpickle_in_fresh_process_without_recompiling(tmp_path):
    """A fresh interpreter unpickles and runs a layer (only the compiled extension that
    is already installed is used: no build step, no torch)."""
    layer = fastrnn.LSTM(4, 8, num_layers=2, seed=2)
    x = np.random.default_rng(2).standard_normal((7, 2, 4)).astype(np.float32)
    p = tmp_path / "layer.pkl"
    p.write_bytes(pickle.dumps(layer))
    np.save(tmp_path / "x.npy", x)
    code = ("import pickle, sys, numpy as np; l = pickle.load(open(sys.argv[1], 'rb'));"
            "np.save(sys.argv[2], l(np.load(sys.argv[3]))[0]);"
            "assert 'torch' not in sys.modules")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(fastrnn.__file__)), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", code, str(p), str(tmp_path / "y.npy"),
                    str(tmp_path / "x.npy")], check=True, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), layer(x)[0])


def _model(activation):
    rng = np.random.default_rng(3)
    return Model([Embedding(rng.standard_normal((9, 5)).astype(np.float32), mask_zero=True),
                  KerasRNN(fastrnn.LSTM(5, 6, batch_first=True, seed=3), return_sequences=True),
                  Dense(rng.standard_normal((6, 3)).astype(np.float32),
                        np.zeros(3, np.float32), activation=activation)])


@pytest.mark.parametrize("activation", ["softmax", "tanh", "sigmoid"])
def test_model_roundtrip(activation):
    m = _model(activation)
    ids = np.array([[1, 2, 0, 4], [3, 3, 3, 8]])
    other = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(other.predict(ids), m.predict(ids))
    assert repr(other) == repr(m)


@pytest.mark.parametrize("activation", ["relu", "linear", ("hard_sigmoid", 1 / 6, 0.5)])
def test_model_roundtrip_lambda_activations(activation):
    m = _model(activation)
    ids = np.array([[1, 2, 0, 4]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).predict(ids), m.predict(ids))


def test_model_cloudpickle_any_activation():
    cloudpickle = pytest.importorskip("cloudpickle")
    for act in ["relu", "linear", ("hard_sigmoid", 1 / 6, 0.5)]:
        m = _model(act)
        ids = np.array([[1, 2, 0, 4]])
        np.testing.assert_array_equal(cloudpickle.loads(cloudpickle.dumps(m)).predict(ids),
                                      m.predict(ids))


def test_loaded_keras_model_pickles():
    pytest.importorskip("h5py")
    path = os.path.join(FIXTURES, "keras", "k3_bi_concat_lstm_embed.keras")
    if not os.path.exists(path):
        pytest.skip("fixture missing")
    m = fastrnn.load(path)
    x = np.load(os.path.join(FIXTURES, "keras", "k3_bi_concat_lstm_embed.npz"))["x"]
    try:
        blob = pickle.dumps(m)
    except (pickle.PicklingError, AttributeError):
        cloudpickle = pytest.importorskip("cloudpickle")
        blob = cloudpickle.dumps(m)
    other = pickle.loads(blob)
    a, b = other.predict(x), m.predict(x)
    for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        np.testing.assert_array_equal(u, v)


def test_stream_pickles_with_state():
    from fastrnn.stream import Stream
    layer = fastrnn.GRU(3, 5, seed=4)
    s = Stream(layer, batch_size=2)
    x = np.random.default_rng(4).standard_normal((6, 2, 3)).astype(np.float32)
    s.feed(x[:3])
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.feed(x[3:]), s.feed(x[3:]))


def test_onnx_model_pickles_and_copies_after_calls():
    """An ONNX model pickles and deep-copies after it has run as before (its kept
    programs are made again; pickling failed, and deep-copying one crashed the process:
    the kernels' objects had Cython's default pickling, which does not cover their
    buffers — they now refuse to pickle, with a TypeError)."""
    import copy
    from fastrnn import _kernels
    path = os.path.join(FIXTURES, "onnx", "lstm_bi_2l_op11.onnx")
    model = fastrnn.load(path)
    with np.load(path.replace(".onnx", ".npz")) as z:
        feeds = {k[3:]: z[k] for k in z.files if k.startswith("in:")}
    want = model.run(feeds)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        got = other.run(feeds)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    pw = fastrnn.GRU(3, 4, seed=0)._pack()[0][0][8]
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(pw)
    with pytest.raises(TypeError, match="pickle"):
        copy.deepcopy(pw)
    assert isinstance(pw, _kernels.PackedDir)
