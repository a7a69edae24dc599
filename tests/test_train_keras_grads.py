"""Training path against REAL Keras 3: gradients of masked sequences and non-default
activations.

Fixtures: tests/fixtures/keras/grads/grad_*.keras + .npz, made by
tests/fixtures/make_keras_grads.py with Keras 3 + JAX (``jax.grad`` through the Keras model in
stateless form).  Each model is ``Masking(0.0) -> one recurrent layer`` and each npz holds the
input ``x``, a fixed output gradient ``gy``, Keras's output ``y``, ``dx`` = d sum(y*gy)/dx and
the gradient of every trainable variable in Keras's layout.  No Keras or JAX is needed here.

For every fixture the model is loaded with ``fastrnn.load``; each recurrent wrapper's core
layer runs ``forward_train`` with the mask ``any(x != 0, axis=-1)`` and the wrapper's own
masked-output mode, and ``backward`` with ``gy`` routed exactly as the wrapper (and, for
Bidirectional, the merge) routes the output.  The output must equal Keras's ``y``, the input
gradient Keras's ``dx`` and every weight gradient Keras's, converted to PyTorch layout by the
loader itself (``model_from_keras_config`` with the gradients given as the layer's weights:
the conversion is a pure re-indexing, so it maps gradients as it maps weights).
"""
import glob
import json
import os
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn.io.keras import model_from_keras_config
from fastrnn.model import Bidirectional, KerasRNN

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "keras", "grads")
NAMES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIX, "grad_*.npz")))
TOL = 1e-5


def fixture(name):
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        return {k: z[k] for k in z.files}


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    tol = TOL * max(1.0, float(np.max(np.abs(want))) if want.size else 0.0)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"
    return err


def recurrent_layer(model):
    rnns = [l for l in model.layers if isinstance(l, (KerasRNN, Bidirectional))]
    assert len(rnns) == 1, model.layers
    return rnns[0]


def wrappers(layer):
    return [layer.forward, layer.backward] if isinstance(layer, Bidirectional) else [layer]


def keras_grads_in_torch_layout(name, z):
    """The Keras gradients, converted by the loader as if they were the layer's weights:
    one core per wrapper, in the order of :func:`wrappers`."""
    with zipfile.ZipFile(os.path.join(FIX, name + ".keras")) as f:
        config = json.loads(f.read("config.json"))
    per_layer = {}
    for n, l in zip(z["grad_names"], z["grad_layers"]):
        per_layer.setdefault(str(l), []).append(z[str(n)])
    gmodel = model_from_keras_config(config, per_layer, keras_version="3")
    return [w.core for w in wrappers(recurrent_layer(gmodel))]


# ----------------------------------------------------------------- mirror of the wrappers

def masked_output(w):
    return "zero" if w.zero_output_for_mask else "carry"


def run(w, x, mask):
    """KerasRNN.run with forward_train: (sequence in Keras order, final state, cache)."""
    out, state, cache = w.core.forward_train(x, mask=mask, masked_output=masked_output(w))
    if w.core.go_backwards:
        out = out[:, ::-1]
    return out, state, cache


def to_core(w, gseq):
    """Gradient of the sequence in Keras order -> gradient of the core's output."""
    return np.ascontiguousarray(gseq[:, ::-1] if w.core.go_backwards else gseq)


def last_grad(seq_shape, g_last):
    """Gradient of ``seq[:, -1]`` (KerasRNN's last output) -> gradient of ``seq``."""
    g = np.zeros(seq_shape, np.float32)
    g[:, -1] = g_last
    return g


def forward_and_output_grads(layer, x, mask, gy):
    """Run the recurrent layer as the model does; returns (y, [(wrapper, cache, core output
    gradient)])."""
    if isinstance(layer, KerasRNN):
        seq, _, cache = run(layer, x, mask)
        if layer.return_sequences:
            return seq, [(layer, cache, to_core(layer, gy))]
        return seq[:, -1], [(layer, cache, to_core(layer, last_grad(seq.shape, gy)))]
    f, b = layer.forward, layer.backward
    yf, _, cf = run(f, x, mask)
    yb, _, cb = run(b, x, mask)               # yb in the backward layer's Keras order
    rs = layer.return_sequences
    if rs:
        yb_in = yb[:, ::-1]                   # back to input order (Bidirectional.call)
    else:
        yf_seq, yb_seq = yf, yb
        yf, yb_in = yf[:, -1], yb[:, -1]
    mm = layer.merge_mode
    if mm == "concat":
        H = yf.shape[-1]
        y, gf, gb = np.concatenate([yf, yb_in], -1), gy[..., :H], gy[..., H:]
    elif mm == "sum":
        y, gf, gb = yf + yb_in, gy, gy
    elif mm == "mul":
        y, gf, gb = yf * yb_in, gy * yb_in, gy * yf
    elif mm == "ave":
        y, gf, gb = (yf + yb_in) / 2, gy / 2, gy / 2
    else:  # pragma: no cover - the fixtures have one output
        raise AssertionError(mm)
    if rs:
        gb = gb[:, ::-1]                      # gradient of yb (Keras order of the backward layer)
    else:
        gf, gb = last_grad(yf_seq.shape, gf), last_grad(yb_seq.shape, gb)
    return y, [(f, cf, to_core(f, gf)), (b, cb, to_core(b, gb))]


def single_keras_bias(core):
    """Keras has one bias where the core has b_ih and b_hh (all but reset_after GRUs): the
    loader puts it in b_ih and zeros in b_hh, and both enter the same pre-activation, so
    dL/db_hh must equal dL/db_ih, i.e. Keras's bias gradient."""
    return core.bias and not (isinstance(core, fastrnn.GRU) and core.reset_after)


# ----------------------------------------------------------------------------------- tests

def test_fixtures_present():
    assert len(NAMES) >= 7, NAMES
    for n in NAMES:
        assert os.path.exists(os.path.join(FIX, n + ".keras")), n
        assert os.path.getsize(os.path.join(FIX, n + ".keras")) < 100_000
        z = fixture(n)
        assert {"x", "gy", "y", "dx", "grad_names", "grad_layers"} <= set(z)
        mask = np.any(z["x"] != 0, axis=-1)
        # padding at the end, a masked first step and holes in the middle
        assert not mask[0, -1] and not mask[1, 0] and not mask[1, 3] and not mask[2, 2]


@pytest.mark.parametrize("name", NAMES)
def test_loaded_model_matches_keras_output(name):
    z = fixture(name)
    model = fastrnn.load(os.path.join(FIX, name + ".keras"))
    assert_close(np.asarray(model.predict(z["x"])), z["y"], f"{name}: predict")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_keras(name):
    z = fixture(name)
    x, gy = z["x"], z["gy"]
    mask = np.any(x != 0, axis=-1)
    layer = recurrent_layer(fastrnn.load(os.path.join(FIX, name + ".keras")))
    ws = wrappers(layer)
    assert all(w.core.batch_first for w in ws)

    y, runs = forward_and_output_grads(layer, x, mask, gy)
    assert_close(np.asarray(y), z["y"], f"{name}: forward_train output")

    expected = keras_grads_in_torch_layout(name, z)
    assert len(expected) == len(runs)
    dx = np.zeros_like(x)
    for (w, cache, g_out), gcore in zip(runs, expected):
        g = w.core.backward(cache, g_out)
        dx += g["input"]
        want = gcore.state_dict()
        extra = {"input", "h0", "c0"}
        assert set(g) - extra == set(want), (sorted(g), sorted(want))
        for k, v in want.items():
            if k == "bias_hh_l0" and single_keras_bias(w.core):
                assert not np.any(v)          # the loader's zero b_hh
                v = want["bias_ih_l0"]
            assert_close(np.asarray(g[k]), v, f"{name}: {w.name} {k}")
    assert_close(dx, z["dx"], f"{name}: dL/dx")


@pytest.mark.parametrize("name", [n for n in NAMES if "_bi_" in n])
def test_fused_bidirectional_gradients_match_keras(name):
    """The loader runs a standard Bidirectional as one bidirectional core (fused): its
    training path must give Keras's gradients too (direction 2 = the ``_reverse`` weights)."""
    z = fixture(name)
    x, gy = z["x"], z["gy"]
    mask = np.any(x != 0, axis=-1)
    layer = recurrent_layer(fastrnn.load(os.path.join(FIX, name + ".keras")))
    core = layer._fused
    assert core is not None and core.bidirectional and layer.return_sequences
    H = core.hidden_size
    out, _, cache = core.forward_train(x, mask=mask, masked_output=masked_output(layer.forward))
    yf, yb = out[..., :H], out[..., H:]      # both in input order
    mm = layer.merge_mode
    if mm == "concat":
        y, gout = out, gy
    elif mm == "sum":
        y, gout = yf + yb, np.concatenate([gy, gy], -1)
    elif mm == "mul":
        y, gout = yf * yb, np.concatenate([gy * yb, gy * yf], -1)
    else:
        y, gout = (yf + yb) / 2, np.concatenate([gy, gy], -1) / 2
    assert_close(y, z["y"], f"{name}: fused forward_train output")
    g = core.backward(cache, np.ascontiguousarray(gout))
    assert_close(np.asarray(g["input"]), z["dx"], f"{name}: fused dL/dx")
    gf, gb = keras_grads_in_torch_layout(name, z)
    for suffix, gcore in (("", gf), ("_reverse", gb)):
        want = gcore.state_dict()
        for k, v in want.items():
            if k == "bias_hh_l0" and single_keras_bias(gcore):
                v = want["bias_ih_l0"]
            assert_close(np.asarray(g[k + suffix]), v, f"{name}: fused {k + suffix}")


@pytest.mark.parametrize("name", [n for n in NAMES if "_last" in n])
def test_last_output_gradient_as_state_gradient(name):
    """Without return_sequences Keras's output is the last output, which under a mask (carry)
    is the final state h_n: feeding gy as dL/dh_n gives the same gradients."""
    z = fixture(name)
    x, gy = z["x"], z["gy"]
    mask = np.any(x != 0, axis=-1)
    w = recurrent_layer(fastrnn.load(os.path.join(FIX, name + ".keras")))
    assert isinstance(w, KerasRNN) and not w.return_sequences
    out, state, cache = w.core.forward_train(x, mask=mask, masked_output=masked_output(w))
    h = state[0] if isinstance(state, tuple) else state
    assert_close(h[0], z["y"], f"{name}: h_n")
    gs = (gy[None], np.zeros_like(gy)[None]) if isinstance(state, tuple) else gy[None]
    g = w.core.backward(cache, None, gs)
    assert_close(np.asarray(g["input"]), z["dx"], f"{name}: dL/dx through h_n")
    (gcore,) = keras_grads_in_torch_layout(name, z)
    want = gcore.state_dict()
    for k, v in want.items():
        if k == "bias_hh_l0" and single_keras_bias(gcore):
            v = want["bias_ih_l0"]
        assert_close(np.asarray(g[k]), v, f"{name}: {k} through h_n")
