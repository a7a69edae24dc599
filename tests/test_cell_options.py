"""The remaining cell options: LSTM ``proj_size``, peepholes, cell clip, coupled
input-forget gate, SimpleRNN relu, per-gate (ONNX f/g/h) activations, GRU
``reset_after=False``, ``go_backwards``.

Checked against PyTorch (proj_size, relu), ONNX Runtime (the ONNX options: each fastrnn
layer is written as the equivalent one-node ONNX model and run by ORT) and the NumPy
reference in tests/reference.py.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastrnn
from reference import rnn_forward

torch = pytest.importorskip("torch")          # in the test extra; never skipped there
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# fastrnn -> ONNX gate orders (inverse of the loader's)
_TO_ONNX = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "SimpleRNN": [0]}   # ifgo->iofc, rzn->zrh
_PEEP_TO_ONNX = [0, 2, 1]                                               # i f o -> i o f
_ONNX_ACT = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "hardsigmoid": "HardSigmoid",
             "leakyrelu": "LeakyRelu", "affine": "Affine", "scaledtanh": "ScaledTanh",
             "elu": "Elu", "softsign": "Softsign", "softplus": "Softplus",
             "thresholdedrelu": "ThresholdedRelu"}


def _blocks(w, perm):
    parts = np.split(w, len(perm), axis=0)
    return np.concatenate([parts[p] for p in perm], axis=0)


def layer_to_onnx(layer):
    """A one-node ONNX model computing single-layer ``layer`` (time-major)."""
    assert layer.num_layers == 1 and not layer.proj_size
    cfg = layer.get_config()
    cls = cfg["class_name"]
    op = {"SimpleRNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}[cls]
    sd = layer.state_dict()
    D = layer.num_directions
    perm = _TO_ONNX[cls]
    W, R, Bs, Ps = [], [], [], []
    for d in range(D):
        s = "_l0" + ("_reverse" if d else "")
        W.append(_blocks(sd["weight_ih" + s], perm))
        R.append(_blocks(sd["weight_hh" + s], perm))
        if layer.bias:
            Bs.append(np.concatenate([_blocks(sd["bias_ih" + s], perm),
                                      _blocks(sd["bias_hh" + s], perm)]))
        if cfg.get("peepholes"):
            Ps.append(_blocks(sd["weight_ph" + s], _PEEP_TO_ONNX))
    inits = [numpy_helper.from_array(np.stack(W), "W"), numpy_helper.from_array(np.stack(R), "R")]
    names = ["X", "W", "R", "B" if Bs else "", "", "h0"]
    if Bs:
        inits.append(numpy_helper.from_array(np.stack(Bs), "B"))
    outs = ["Y", "Y_h"]
    if op == "LSTM":
        names += ["c0", "P" if Ps else ""]
        outs.append("Y_c")
        if Ps:
            inits.append(numpy_helper.from_array(np.stack(Ps), "P"))
    while not names[-1]:
        names.pop()
    acts, alphas, betas = [], [], []
    for name, a, b in (tuple(v) for v in cfg["activations"]):
        acts.append(_ONNX_ACT[name])
        if name in ("leakyrelu", "thresholdedrelu", "elu", "hardsigmoid", "affine", "scaledtanh"):
            alphas.append(a)
        if name in ("hardsigmoid", "affine", "scaledtanh"):
            betas.append(b)
    direction = "bidirectional" if D == 2 else ("reverse" if layer.go_backwards else "forward")
    attrs = dict(hidden_size=layer.hidden_size, direction=direction, activations=acts)
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    if layer.clip:
        attrs["clip"] = layer.clip
    if op == "LSTM" and cfg.get("input_forget"):
        attrs["input_forget"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = int(cfg["reset_after"])
    node = helper.make_node(op, names, outs, **attrs)
    vin = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
           for n in names if n in ("X", "h0", "c0")]
    vout = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs]
    return helper.make_model(helper.make_graph([node], "g", vin, vout, inits),
                             opset_imports=[helper.make_opsetid("", 14)])


def run_ort(layer, x, hx):
    model = layer_to_onnx(layer)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"X": x}
    if isinstance(hx, tuple):
        feeds["h0"], feeds["c0"] = hx
    else:
        feeds["h0"] = hx
    res = sess.run(None, feeds)
    T, D, B, H = res[0].shape
    out = res[0].transpose(0, 2, 1, 3).reshape(T, B, D * H)
    return out, res[1:]


def _data(layer, T=8, B=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size)).astype(np.float32)
    L = layer.num_layers * layer.num_directions
    h0 = rng.standard_normal((L, B, layer.output_size)).astype(np.float32)
    if isinstance(layer, fastrnn.LSTM):
        return x, (h0, rng.standard_normal((L, B, layer.hidden_size)).astype(np.float32))
    return x, h0


def _randomise(layer, seed, scale=0.6):
    rng = np.random.default_rng(seed)
    sd = {k: rng.uniform(-scale, scale, v.shape).astype(v.dtype)
          for k, v in layer.state_dict().items()}
    layer.load_state_dict(sd)


def assert_layer_matches_ort(layer, tol=1e-5, seed=0):
    x, hx = _data(layer, seed=seed)
    out, hn = layer(x, hx)
    r_out, r_states = run_ort(layer, x, hx)
    np.testing.assert_allclose(out, r_out, rtol=tol, atol=tol)
    states = list(hn) if isinstance(hn, tuple) else [hn]
    for a, b in zip(states, r_states):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    # and the float64 NumPy reference
    r_out2, r_h2, r_c2 = rnn_forward(layer, x, hx)
    np.testing.assert_allclose(out, r_out2, rtol=tol, atol=tol)
    np.testing.assert_allclose(states[0], r_h2, rtol=tol, atol=tol)


# ------------------------------------------------------------------------ proj_size
@pytest.mark.parametrize("bi,layers,batch_first", list(itertools.product([False, True], [1, 2],
                                                                         [False, True])))
def test_lstm_proj_size_vs_torch(bi, layers, batch_first):
    tm = torch.nn.LSTM(5, 8, num_layers=layers, bidirectional=bi, batch_first=batch_first,
                       proj_size=3)
    layer = fastrnn.LSTM(5, 8, num_layers=layers, bidirectional=bi, batch_first=batch_first,
                         proj_size=3)
    layer.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x, (h0, c0) = _data(layer, seed=layers)
    xi = x.transpose(1, 0, 2).copy() if batch_first else x
    out, (h, c) = layer(xi, (h0, c0))
    with torch.no_grad():
        tout, (th, tc) = tm(torch.from_numpy(xi), (torch.from_numpy(h0), torch.from_numpy(c0)))
    assert out.shape[-1] == 3 * layer.num_directions and h.shape[-1] == 3 and c.shape[-1] == 8
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, th.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, tc.numpy(), rtol=1e-5, atol=1e-5)
    assert "weight_hr_l0" in layer.state_dict()


def test_proj_size_validation():
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.LSTM(4, 6, proj_size=6)
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.GRU(4, 6, proj_size=2)


# --------------------------------------------------------------- SimpleRNN relu / torch
@pytest.mark.parametrize("bi", [False, True])
def test_simplernn_relu_vs_torch(bi):
    tm = torch.nn.RNN(5, 7, num_layers=2, nonlinearity="relu", bidirectional=bi)
    layer = fastrnn.SimpleRNN(5, 7, num_layers=2, nonlinearity="relu", bidirectional=bi)
    layer.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x, h0 = _data(layer, seed=3)
    out, h = layer(x, h0)
    with torch.no_grad():
        tout, th = tm(torch.from_numpy(x), torch.from_numpy(h0))
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, th.numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(out >= 0)


@pytest.mark.parametrize("bi", [False, True])
def test_simplernn_relu_vs_ort(bi):
    layer = fastrnn.SimpleRNN(5, 7, nonlinearity="relu", bidirectional=bi, seed=1)
    assert_layer_matches_ort(layer)


# ------------------------------------------------------------ peepholes, clip, coupling
@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_lstm_peepholes_vs_ort(bi, go_backwards):
    layer = fastrnn.LSTM(5, 6, bidirectional=bi, peepholes=True, go_backwards=go_backwards and not bi)
    _randomise(layer, 2)
    assert layer.state_dict()["weight_ph_l0"].shape == (18,)
    assert_layer_matches_ort(layer)


def test_peepholes_start_at_zero_and_equal_plain_lstm():
    plain = fastrnn.LSTM(5, 6, seed=3)
    peep = fastrnn.LSTM(5, 6, peepholes=True, seed=3)
    sd = plain.state_dict()
    sd["weight_ph_l0"] = np.zeros(18, np.float32)
    peep.load_state_dict(sd)
    x, hx = _data(plain)
    np.testing.assert_allclose(peep(x, hx)[0], plain(x, hx)[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("clip", [0.05, 0.5, 2.0])
def test_clip_vs_ort(cls, clip):
    kw = dict(clip=clip, bidirectional=True)
    if cls == "GRU":
        layers = [fastrnn.GRU(5, 6, reset_after=ra, **kw) for ra in (True, False)]
    elif cls == "LSTM":
        layers = [fastrnn.LSTM(5, 6, **kw), fastrnn.LSTM(5, 6, peepholes=True, **kw)]
    else:
        layers = [fastrnn.SimpleRNN(5, 6, **kw)]
    for k, layer in enumerate(layers):
        _randomise(layer, 10 + k, scale=1.5)
        assert_layer_matches_ort(layer, seed=k)


def test_clip_changes_the_result_and_validation():
    a = fastrnn.LSTM(5, 6, seed=4)
    b = fastrnn.LSTM(5, 6, seed=4, clip=0.1)
    x, hx = _data(a)
    assert not np.allclose(a(x, hx)[0], b(x, hx)[0])
    for bad in (0, -1.0, float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="clip"):
            fastrnn.LSTM(5, 6, clip=bad)
    # inf: no clip (as ONNX Runtime runs clip=inf)
    c = fastrnn.LSTM(5, 6, seed=4, clip=float("inf"))
    assert c.clip is None
    np.testing.assert_array_equal(c(x, hx)[0], a(x, hx)[0])


@pytest.mark.parametrize("peep", [False, True])
@pytest.mark.parametrize("clip", [None, 0.7])
def test_lstm_input_forget_vs_ort(peep, clip):
    layer = fastrnn.LSTM(5, 6, bidirectional=True, input_forget=True, peepholes=peep, clip=clip)
    _randomise(layer, 5)
    assert_layer_matches_ort(layer)


def test_input_forget_ignores_forget_gate_weights():
    layer = fastrnn.LSTM(5, 6, input_forget=True, seed=6)
    x, hx = _data(layer)
    out1 = layer(x, hx)[0]
    sd = layer.state_dict()
    sd["weight_ih_l0"][6:12] = 123.0       # forget-gate rows
    sd["bias_hh_l0"][6:12] = -5.0
    layer.load_state_dict(sd)
    np.testing.assert_array_equal(layer(x, hx)[0], out1)
    with pytest.raises(ValueError, match="input_forget"):
        fastrnn.GRU(5, 6, input_forget=True)


# --------------------------------------------------------------- per-gate activations
ACT_SPECS = [("sigmoid", 0, 0), ("tanh", 0, 0), ("relu", 0, 0), ("hardsigmoid", 0.3, 0.45),
             ("leakyrelu", 0.1, 0), ("affine", 0.8, 0.1), ("scaledtanh", 1.2, 0.7),
             ("elu", 0.9, 0), ("softsign", 0, 0), ("softplus", 0, 0),
             ("thresholdedrelu", 0.2, 0)]


@pytest.mark.parametrize("f", ACT_SPECS, ids=[a[0] for a in ACT_SPECS])
def test_lstm_gate_activation_vs_ort(f):
    g, h = ("softsign", 0, 0), ("scaledtanh", 0.9, 1.1)
    layer = fastrnn.LSTM(5, 6, activations=[f, g, h], seed=7)
    assert_layer_matches_ort(layer)
    layer = fastrnn.LSTM(5, 6, activations=[("hardsigmoid", 0.2, 0.5), f, f], seed=8)
    assert_layer_matches_ort(layer)


@pytest.mark.parametrize("f", ACT_SPECS, ids=[a[0] for a in ACT_SPECS])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_activations_vs_ort(f, reset_after):
    layer = fastrnn.GRU(5, 6, reset_after=reset_after,
                        activations=[("hardsigmoid", 0.25, 0.5), f], seed=9)
    assert_layer_matches_ort(layer)


@pytest.mark.parametrize("f", ACT_SPECS, ids=[a[0] for a in ACT_SPECS])
def test_simplernn_activation_vs_ort(f):
    layer = fastrnn.SimpleRNN(5, 6, activations=[f], seed=10)
    assert_layer_matches_ort(layer)


def test_activations_per_direction_vs_ort():
    layer = fastrnn.LSTM(5, 6, bidirectional=True, seed=11, activations=[
        "sigmoid", "tanh", "tanh", ("hardsigmoid", 0.2, 0.5), "softsign", "relu"])
    assert_layer_matches_ort(layer)
    layer = fastrnn.GRU(5, 6, bidirectional=True, seed=12, reset_after=False,
                        activations=["sigmoid", "tanh", ("hardsigmoid", 0.3, 0.5), "elu"])
    assert_layer_matches_ort(layer)


def test_named_activation_arguments():
    a = fastrnn.LSTM(5, 6, gate_activation="hard_sigmoid", cell_activation="relu",
                     hidden_activation="softsign", seed=13)
    b = fastrnn.LSTM(5, 6, activations=[("hardsigmoid", 0.2, 0.5), "relu", "softsign"], seed=13)
    x, hx = _data(a)
    np.testing.assert_array_equal(a(x, hx)[0], b(x, hx)[0])
    g1 = fastrnn.GRU(5, 6, gate_activation=("hardsigmoid", 1 / 6, 0.5), activation="relu", seed=14)
    g2 = fastrnn.GRU(5, 6, activations=[("hardsigmoid", 1 / 6, 0.5), "relu"], seed=14)
    np.testing.assert_array_equal(g1(x)[0], g2(x)[0])
    with pytest.raises(ValueError, match="unknown activation"):
        fastrnn.LSTM(5, 6, activations=["sigmoid", "gelu", "tanh"])
    with pytest.raises(ValueError, match="activations"):
        fastrnn.LSTM(5, 6, activations=["sigmoid", "tanh"])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_explicit_default_activations_equal_default(cls):
    """Spelling out sigmoid/tanh gives the default path's numbers."""
    spec = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"],
            "SimpleRNN": ["tanh"]}[cls]
    a = getattr(fastrnn, cls)(5, 6, bidirectional=True, seed=15)
    b = getattr(fastrnn, cls)(5, 6, bidirectional=True, seed=15, activations=spec)
    x, hx = _data(a, T=20, B=4)
    np.testing.assert_allclose(a(x, hx)[0], b(x, hx)[0], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------- go_backwards
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_go_backwards_is_onnx_reverse(cls):
    layer = getattr(fastrnn, cls)(5, 6, go_backwards=True, seed=16)
    assert_layer_matches_ort(layer)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_options_with_lengths_vs_reference(cls):
    kw = dict(bidirectional=True, clip=0.8, num_layers=2, dtype=np.float64, seed=17)
    if cls == "LSTM":
        kw.update(peepholes=True, input_forget=True,
                  activations=["hardsigmoid", "softsign", "elu"])
    elif cls == "GRU":
        kw.update(reset_after=False, activations=["hardsigmoid", "leakyrelu"])
    else:
        kw.update(activations=[("scaledtanh", 0.9, 1.2)])
    layer = getattr(fastrnn, cls)(5, 6, **kw)
    _randomise(layer, 18)
    x, hx = _data(layer, T=9, B=4)
    x = x.astype(np.float64)
    hx = tuple(s.astype(np.float64) for s in hx) if isinstance(hx, tuple) else hx.astype(np.float64)
    lens = np.array([9, 3, 1, 6])
    out, hn = layer(x, hx, lengths=lens)
    r_out, r_h, r_c = rnn_forward(layer, x, hx, lengths=lens)
    np.testing.assert_allclose(out, r_out, rtol=1e-10, atol=1e-12)
    st = list(hn) if isinstance(hn, tuple) else [hn]
    np.testing.assert_allclose(st[0], r_h, rtol=1e-10, atol=1e-12)
