"""Layer API, validation and bad input: clear exceptions, never a crash."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _blas
from reference import rnn_forward

CLASSES = [fastrnn.SimpleRNN, fastrnn.LSTM, fastrnn.GRU]


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_shim_matches_numpy(dtype):
    """The row-major shim: GEMM, and up to 4 rows by a large matrix one matrix-vector
    product a row; every transpose, accumulating into C (beta), k = 0."""
    rng = np.random.default_rng(0)
    tol = (dict(rtol=1e-5, atol=1e-4) if dtype == np.float32      # (sums of up to 512
           else dict(rtol=1e-12, atol=1e-11))                       # products ~ N(0, 1))
    for m, k, n in [(1, 1, 1), (1, 37, 129), (2, 5, 7), (3, 5, 7), (1, 512, 1024),
                    (2, 512, 1024), (4, 300, 1800), (5, 512, 1024), (64, 33, 129),
                    (2, 0, 3)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        np.testing.assert_allclose(_blas._gemm_check(a, b), a @ b, **tol)
        for ta in (False, True):
            for tb in (False, True):
                got = _blas._gemm_check(a.T.copy() if ta else a, b.T.copy() if tb else b,
                                        ta, tb, c0, 0.5)
                np.testing.assert_allclose(got, a @ b + 0.5 * c0, **tol)


@pytest.mark.parametrize("cls", CLASSES)
def test_default_layer_matches_reference(cls):
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    out, st = layer(x)
    out_r, h_r, _ = rnn_forward(layer, x)
    assert np.abs(out - out_r).max() < 1e-5
    assert np.abs(_h(st) - h_r).max() < 1e-5


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), ()])
def test_wrong_rank(cls, shape):
    layer = cls(5 if shape else 3, 4)
    with pytest.raises(ValueError, match="dimensions"):
        layer(np.zeros(shape, np.float32))


@pytest.mark.parametrize("cls", CLASSES)
def test_wrong_feature_size(cls):
    layer = cls(3, 4)
    with pytest.raises(ValueError, match="input_size=3"):
        layer(np.zeros((5, 2, 4), np.float32))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [
    np.zeros((5, 2, 3), np.int64), np.zeros((5, 2, 3), np.int8), np.zeros((5, 2, 3), bool),
    np.zeros((5, 2, 3), np.complex64), np.full((5, 2, 3), None, dtype=object),
    np.array([["a", "b", "c"]] * 5),
])
def test_wrong_dtype(cls, bad):
    layer = cls(3, 4)
    with pytest.raises(TypeError, match="floating-point"):
        layer(bad)


@pytest.mark.parametrize("cls", CLASSES)
def test_other_float_dtypes_are_cast(cls):
    layer = cls(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out64 = layer(x.astype(np.float64))[0]
    out16 = layer(x.astype(np.float16))[0]
    out32 = layer(x.astype(np.float32))[0]
    assert out64.dtype == out16.dtype == np.float32
    np.testing.assert_array_equal(out64, layer(x.astype(np.float32).astype(np.float64))[0])
    assert np.abs(out16 - out32).max() < 1e-2


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_rejected(cls, value):
    layer = cls(3, 4)
    sd = layer.state_dict()
    before = layer.state_dict()
    sd["weight_hh_l0"][1, 2] = value
    with pytest.raises(ValueError, match="weight_hh_l0.*NaN or infinite"):
        layer.load_state_dict(sd)
    # nothing changed
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("cls", CLASSES)
def test_weight_validation_messages(cls):
    layer = cls(3, 4, num_layers=2)
    sd = layer.state_dict()
    bad = dict(sd, weight_ih_l1=np.zeros((7, 7), np.float32))
    with pytest.raises(ValueError, match=r"weight_ih_l1.*expected shape"):
        layer.load_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "bias_hh_l1"}
    with pytest.raises(KeyError, match="missing keys.*bias_hh_l1"):
        layer.load_state_dict(missing)
    layer.load_state_dict(missing, strict=False)  # fine without strict
    with pytest.raises(KeyError, match="unexpected keys.*weight_ih_l2"):
        layer.load_state_dict(dict(sd, weight_ih_l2=sd["weight_ih_l1"]))
    with pytest.raises(TypeError, match="weight_hh_l0"):
        layer.load_state_dict(dict(sd, weight_hh_l0=sd["weight_hh_l0"].astype(np.int32)))
    with pytest.raises(TypeError, match="mapping"):
        layer.load_state_dict([1, 2])


@pytest.mark.parametrize("cls", CLASSES)
def test_noncontiguous_and_fortran_inputs_work(cls):
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    ref = layer(x)[0]
    np.testing.assert_array_equal(layer(np.asfortranarray(x))[0], ref)
    big = rng.standard_normal((12, 5, 6)).astype(np.float32)
    big[::2, :, ::2] = x
    view = big[::2, :, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(layer(view)[0], ref)
    np.testing.assert_array_equal(layer(x.transpose(1, 0, 2).copy().transpose(1, 0, 2))[0], ref)
    h0 = np.asfortranarray(rng.standard_normal((4, 5, 4)).astype(np.float32))
    hx = (h0, h0.copy()) if cls is fastrnn.LSTM else h0
    hx_c = (np.ascontiguousarray(h0), np.ascontiguousarray(h0)) if cls is fastrnn.LSTM \
        else np.ascontiguousarray(h0)
    np.testing.assert_array_equal(layer(x, hx)[0], layer(x, hx_c)[0])


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bf", [False, True])
def test_empty_sequences(cls, bf):
    """T == 0 or B == 0: an empty output and the initial state as the final state."""
    layer = cls(3, 4, num_layers=2, bidirectional=True, batch_first=bf)
    for T, B in [(0, 2), (5, 0), (0, 0)]:
        shape = (B, T, 3) if bf else (T, B, 3)
        out, st = layer(np.zeros(shape, np.float32))
        assert out.shape == ((B, T, 8) if bf else (T, B, 8))
        assert _h(st).shape == (4, B, 4)
        assert not np.any(_h(st))
    rng = np.random.default_rng(0)
    h0 = rng.standard_normal((4, 2, 4)).astype(np.float32)
    hx = (h0, h0 + 1) if cls is fastrnn.LSTM else h0
    out, st = layer(np.zeros((2, 0, 3) if bf else (0, 2, 3), np.float32), hx)
    np.testing.assert_array_equal(_h(st), h0)
    if cls is fastrnn.LSTM:
        np.testing.assert_array_equal(st[1], h0 + 1)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kw", [{}, {"mask": True}, {"lengths": True}])
def test_an_empty_batch_of_many_steps_costs_nothing(cls, kw):
    """B == 0 with T = 10^7 (an input of zero bytes): no array of T entries (the step
    index of a dense batch took 80 MB here, 8 TiB at T = 2^40), in a call and in
    training."""
    import tracemalloc
    T = 10 ** 7
    layer = cls(3, 4, num_layers=2, bidirectional=True)
    x = np.zeros((T, 0, 3), np.float32)
    kw = {k: (np.zeros((T, 0), bool) if k == "mask" else np.zeros(0, int)) for k in kw}
    f = layer.forward_train(x[:2])      # (a first call's own allocations, ~2.7 MB)
    layer.backward(f[-1], np.zeros_like(f[0]))
    tracemalloc.start()
    try:
        out, st = layer(x, **kw)
        fout = layer.forward_train(x, **kw)
        grads = layer.backward(fout[-1], np.zeros_like(fout[0]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == fout[0].shape == (T, 0, 8) and grads["input"].shape == (T, 0, 3)
    assert peak < 2 ** 20, peak


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_initial_state(cls):
    layer = cls(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    bad = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 4\)"):
        layer(x, (bad, bad) if cls is fastrnn.LSTM else bad)
    if cls is fastrnn.LSTM:
        with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
            layer(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        hi = np.zeros((2, 2, 4), np.int32)
        layer(x, (hi, hi) if cls is fastrnn.LSTM else hi)


@pytest.mark.parametrize("kwargs,err", [
    (dict(input_size=0, hidden_size=4), ValueError),
    (dict(input_size=3, hidden_size=-1), ValueError),
    (dict(input_size=3.5, hidden_size=4), TypeError),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError),
    (dict(input_size=3, hidden_size=4, dtype="int32"), TypeError),
    (dict(input_size=3, hidden_size=4, dtype="float16"), TypeError),
    (dict(input_size=3, hidden_size=4, num_threads=0), ValueError),
    (dict(input_size=3, hidden_size=4, clip=-1.0), ValueError),
    (dict(input_size=3, hidden_size=4, activations=["nope"]), ValueError),
])
def test_constructor_validation(kwargs, err):
    for cls in CLASSES:
        with pytest.raises(err):
            cls(**kwargs)


def test_cell_specific_options_validated():
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="smaller than hidden_size"):
        fastrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.SimpleRNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="activations per direction"):
        fastrnn.LSTM(3, 4, activations=["sigmoid", "tanh"])


def test_arguments_in_torch_order():
    """Positional arguments mean what they mean to torch.nn (dropout 6th, bidirectional
    7th, LSTM's proj_size 8th; SimpleRNN's nonlinearity 4th), checked against torch's
    own modules; a flag given anything but True / False (0 / 1) is a TypeError, not a
    truthy surprise (a dropout where fastrnn once took bidirectional built a
    bidirectional layer)."""
    torch = pytest.importorskip("torch")
    cases = [(fastrnn.LSTM, torch.nn.LSTM, (8, 16, 2, True, False, 0.2)),
             (fastrnn.LSTM, torch.nn.LSTM, (8, 16, 2, False, True, 0.0, True, 4)),
             (fastrnn.GRU, torch.nn.GRU, (8, 16, 3, True, True, 0.5, True)),
             (fastrnn.SimpleRNN, torch.nn.RNN, (8, 16, 2, "relu", True, False, 0.1, True))]
    for ours, theirs, args in cases:
        a, b = ours(*args), theirs(*args)
        for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                  "dropout", "bidirectional", "proj_size", "nonlinearity"):
            if hasattr(b, k):
                assert getattr(a, k) == getattr(b, k), (ours.__name__, args, k)
        assert sorted(a.state_dict()) == sorted(b.state_dict())
        assert a.get_config()["dropout"] == b.dropout if b.dropout else "dropout" not in \
            a.get_config()
        clone = fastrnn.layer_from_config(a.get_config())
        assert clone.dropout == a.dropout and repr(clone) == repr(a)
    assert "dropout=0.2" in repr(fastrnn.LSTM(8, 16, 2, True, False, 0.2))
    with pytest.raises(TypeError, match="dropout must be a number"):
        fastrnn.LSTM(8, 16, 1, True, False, True)          # fastrnn's old order
    with pytest.raises(ValueError, match="dropout"):
        fastrnn.GRU(8, 16, dropout=1.5)
    for kw in (dict(batch_first="no"), dict(bidirectional=2), dict(bias=0.5)):
        with pytest.raises(TypeError, match="must be True or False"):
            fastrnn.GRU(8, 16, **kw)
    assert fastrnn.GRU(8, 16, batch_first=1, bidirectional=np.bool_(True)).bidirectional
    with pytest.raises(TypeError):
        fastrnn.GRU(8, 16, 1, True, False, 0.0, False, "float64")   # dtype: a keyword


def test_training_warns_that_dropout_is_not_applied():
    from fastrnn import train
    x = np.ones((3, 2, 4), np.float32)
    with pytest.warns(UserWarning, match="does not drop"):
        train.forward_train(fastrnn.LSTM(4, 5, 2, dropout=0.3), x)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.forward_train(fastrnn.LSTM(4, 5, 2), x)
        train.forward_train(fastrnn.LSTM(4, 5, 1, dropout=0.3), x)   # (nothing to drop)


def test_bfloat16_torch_modules_and_tensors():
    """A bfloat16 module (mixed-precision training) converts as float32 (NumPy has no
    bfloat16), its numbers those of torch run in float32 on the same weights; a
    bfloat16 tensor as input too.  Both failed inside torch's .numpy()."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.GRU(4, 5, num_layers=2).to(torch.bfloat16)
    layer = fastrnn.from_torch(m)
    assert layer.dtype == np.float32
    x = torch.randn(6, 3, 4).to(torch.bfloat16)
    with torch.no_grad():
        want = m.float()(x.float())[0].numpy()
    np.testing.assert_allclose(layer(x)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(6, 3, 4, dtype=torch.int32))


@pytest.mark.parametrize("cls", CLASSES)
def test_weights_packed_once(cls):
    layer = cls(3, 4)
    x = np.ones((2, 1, 3), np.float32)
    layer(x)
    packed = layer._packed
    layer(x)
    assert layer._packed is packed            # not re-packed per call
    sd = layer.state_dict()
    sd["weight_ih_l0"] *= 2
    layer.load_state_dict(sd)
    assert layer._packed is None              # invalidated by new weights
    out2 = layer(x)[0]
    assert np.abs(out2 - rnn_forward(layer, x)[0]).max() < 1e-5


@pytest.mark.parametrize("cls", CLASSES)
def test_config_round_trip(cls):
    layer = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype="float64")
    clone = fastrnn.layer_from_config(layer.get_config())
    clone.load_state_dict(layer.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    np.testing.assert_array_equal(layer(x)[0], clone(x)[0])
    assert repr(clone) == repr(layer)
    assert "bidirectional=True" in repr(layer)
    with pytest.raises(ValueError, match="unknown layer class"):
        fastrnn.layer_from_config({"class_name": "Transformer"})


@pytest.mark.parametrize("cls", CLASSES)
def test_config_sizes_may_be_numpy_ints(cls):
    # (as a config read from a file may hold them) checked against the weights like ints
    layer = cls(3, 4, num_layers=2, seed=0)
    cfg = dict(layer.get_config(), input_size=np.int32(3), hidden_size=np.int64(4),
               num_layers=np.int64(2))
    clone = fastrnn.layer_from_config(cfg, layer.state_dict())
    assert clone.get_config() == layer.get_config()
    assert all(type(clone.get_config()[k]) is int
               for k in ("input_size", "hidden_size", "num_layers"))
    # (sizes computed as Python ints: 4 gates * np.uint8(64) would wrap to 0)
    wide = cls(3, 64, seed=0)
    cfg8 = dict(wide.get_config(), hidden_size=np.uint8(64), num_layers=np.uint8(1))
    assert fastrnn.layer_from_config(cfg8, wide.state_dict()).get_config() == wide.get_config()
    with pytest.raises(ValueError, match="config hidden_size must be an int"):
        fastrnn.layer_from_config(dict(cfg, hidden_size=True), layer.state_dict())
    with pytest.raises(ValueError, match="config input_size must be an int"):
        fastrnn.layer_from_config(dict(cfg, input_size=3.0), layer.state_dict())


@pytest.mark.parametrize("name", [["LSTM"], {"LSTM": 1}])
def test_config_class_name_not_a_string(name):
    with pytest.raises(ValueError, match="unknown layer class"):
        fastrnn.layer_from_config({"class_name": name, "input_size": 3, "hidden_size": 4})
    with pytest.raises(ValueError, match="unknown cell class"):
        fastrnn.cells.cell_from_config({"class_name": name, "input_size": 3,
                                        "hidden_size": 4})


@pytest.mark.parametrize("cls", CLASSES)
def test_backward_need_input_grad_is_a_flag(cls):
    layer = cls(3, 4, seed=0)
    x = np.ones((5, 2, 3), np.float32)
    out, _, cache = layer.forward_train(x)
    g = np.ones_like(out)
    for bad in ("no", "False", 0.0, 2, None):
        with pytest.raises(TypeError, match="need_input_grad must be True or False"):
            layer.backward(cache, g, need_input_grad=bad)
    for flag in (True, 1, np.True_):
        assert "input" in layer.backward(cache, g, need_input_grad=flag)
    for flag in (False, 0, np.False_):
        assert "input" not in layer.backward(cache, g, need_input_grad=flag)


def test_state_dict_is_a_copy():
    layer = fastrnn.LSTM(3, 4)
    sd = layer.state_dict()
    sd["weight_ih_l0"][:] = 0
    assert np.any(layer.state_dict()["weight_ih_l0"])


@pytest.mark.parametrize("cls", CLASSES)
def test_thread_counts_agree(cls):
    layer = cls(16, 64, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 33, 16)).astype(np.float32)
    a = layer(x, num_threads=1)[0]
    b = layer(x, num_threads=2)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_thread_control():
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        assert fastrnn.get_num_threads() == 1
        with pytest.raises(ValueError):
            fastrnn.set_num_threads(0)
        with pytest.raises(TypeError):
            fastrnn.set_num_threads("2")
    finally:
        fastrnn.set_num_threads(None)
    assert fastrnn.get_num_threads() == old
    code = "import fastrnn; print(fastrnn.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")     # (above the CPUs: capped, test_cpu_count)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU sets")
def test_default_thread_count_with_omp_proc_bind():
    """With OMP_PROC_BIND set, libgomp pins the main thread to one place when it loads;
    the default count is the process's CPUs before that (it read 1 after the first call
    had loaded the kernels, and every call ran on one thread)."""
    # (and after the count's re-read: the main thread's affinity is libgomp's binding)
    code = ("import os, time, numpy as np, fastrnn; n = len(os.sched_getaffinity(0)); "
            "fastrnn.LSTM(4, 4)(np.zeros((3, 1, 4), np.float32)); "
            "time.sleep(fastrnn._threads.CPUS_RECHECK_S * 1.5); "
            "print(n, fastrnn.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(OMP_PROC_BIND="close", OMP_PLACES="cores")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    n, got = out.stdout.split()
    assert got == n, out.stdout


def test_import_does_not_need_torch():
    code = ("import sys; sys.modules['torch'] = None; import fastrnn, numpy as np; "
            "l = fastrnn.LSTM(2, 3); print(l(np.ones((2, 1, 2), np.float32))[0].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 1, 3)"


def test_from_torch_rejects_other_modules():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.nn.RNN, LSTM, GRU or their cells"):
        fastrnn.from_torch(torch.nn.Linear(2, 3))


def test_nan_input_propagates_without_crash():
    layer = fastrnn.LSTM(3, 4)
    x = np.ones((4, 2, 3), np.float32)
    x[1, 0, 1] = np.nan
    out, (h, c) = layer(x)
    assert np.isnan(out[1:, 0]).all()
    assert np.isfinite(out[:, 1]).all()


@pytest.mark.parametrize("path", [0, 2])          # (automatic; the BLAS path)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_nan_propagates_through_relu_as_torch(path, dt):
    """A relu SimpleRNN keeps a NaN (NaN > 0 is false: the training forward and the
    BLAS path's scalar relu made it 0, so training on bad data went on silently): the
    call, the training forward and its gradients have NaN where torch has them."""
    torch = pytest.importorskip("torch")
    from fastrnn import _kernels
    torch.manual_seed(0)
    m = torch.nn.RNN(3, 4, nonlinearity="relu", num_layers=2).to(
        torch.float64 if dt == np.float64 else torch.float32)
    layer = fastrnn.from_torch(m)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(dt)
    x[1, 0, 0] = np.nan
    xt = torch.from_numpy(x).requires_grad_(True)
    ref, ref_h = m(xt)
    ref.sum().backward()
    old = _kernels._set_path(path)
    try:
        for out, h in (layer(x), layer.forward_train(x)[:2]):
            assert np.array_equal(np.isnan(out), torch.isnan(ref).numpy())
            assert np.array_equal(np.isnan(h), torch.isnan(ref_h).numpy())
            assert np.isnan(out[1:, 0]).all() and np.isfinite(out[:, 1]).all()
        out, _, cache = layer.forward_train(x)
        grads = layer.backward(cache, np.ones_like(out))
    finally:
        _kernels._set_path(old)
    for name, p in m.named_parameters():
        assert np.array_equal(np.isnan(grads[name]), torch.isnan(p.grad).numpy()), name
    assert np.isnan(grads["weight_hh_l0"]).all()


def test_shared_empty_arguments_stay_zero():
    """A call without lengths or mask hands every kernel (packed, batch-lane, pair, BLAS,
    LSTM route) the same two one-element arrays (``layers._NO_LENGTHS`` / ``_NO_MASK``),
    a GRU / SimpleRNN direction the same unused cell state (``_NO_C``), and calls of one
    dense shape the same step offsets and sizes (``_dense_index``); no kernel may write
    them."""
    from fastrnn import layers
    rng = np.random.default_rng(0)
    layers._DENSE_INDEX.clear()
    for dt in (np.float32, np.float64):
        for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.SimpleRNN):
            for B, H, bi in ((1, 16, False), (3, 8, True), (8, 32, True), (20, 16, False),
                             (64, 8, False)):
                layer = cls(H, H, num_layers=2, bidirectional=bi, seed=1, num_threads=2,
                            dtype=dt)
                x = rng.standard_normal((5, B, H)).astype(dt)
                y = layer(x)[0]
                np.testing.assert_array_equal(layer(x)[0], y)   # the shared arrays again
    assert layers._NO_LENGTHS.tolist() == [0] and layers._NO_MASK.tolist() == [0]
    assert all(not c.any() for c in layers._NO_C.values())
    assert len(layers._DENSE_INDEX) == 5
    for (T, B), (offsets, nsteps) in layers._DENSE_INDEX.items():
        assert offsets.tolist() == list(range(0, T * B, B)) and nsteps.tolist() == [B] * T


def test_run_layer_refuses_weights_of_another_dtype():
    """run_layer takes a direction's weights as one PackedDir; weights of the other
    float type than the input's are refused by name, not read as the wrong type; so
    are per-call arrays of another type, byte order or layout."""
    from fastrnn import _kernels
    layer = fastrnn.GRU(4, 8, seed=0)
    pw64 = fastrnn.GRU(4, 8, seed=0, dtype="float64")._pack()[0][0][8]
    assert pw64.is_double and not layer._pack()[0][0][8].is_double
    x = np.zeros((3, 4), np.float32)
    h, out = np.zeros((1, 8), np.float32), np.zeros((3, 8), np.float32)
    idx = np.arange(3, dtype=np.intp)
    args = (np.ones(3, np.intp), np.zeros(1, np.intp), np.zeros(1, np.uint8), h,
            np.zeros((1, 1), np.float32), out, 0, 0, 0, 8, 0, 1, 0,
            layer._act_codes()[0][0], 0.0, 0, 0, 0, 1, 3)
    with pytest.raises(TypeError, match="float64 weights for a float32 input"):
        _kernels.run_layer(2, x, pw64, idx, *args)
    _kernels.run_layer(2, x, layer._pack()[0][0][8], idx, *args)   # the right one runs
    assert np.abs(out).sum() > 0
    # the per-call arrays are checked by name too (type, byte order, layout)
    pw = layer._pack()[0][0][8]
    with pytest.raises(TypeError, match="offsets has dtype <i4"):
        _kernels.run_layer(2, x, pw, idx.astype(np.int32), *args)
    bad = list(args)
    bad[3] = np.zeros((1, 8), np.float64)
    with pytest.raises(TypeError, match="h has dtype <f8"):
        _kernels.run_layer(2, x, pw, idx, *bad)
    bad[3] = np.zeros((8, 2), np.float32).T
    with pytest.raises(ValueError, match="h must be C-contiguous, aligned and writeable"):
        _kernels.run_layer(2, x, pw, idx, *bad)
    bad[3] = h
    bad[5] = [[0.0] * 8] * 3
    with pytest.raises(TypeError, match="out must be a numpy array, got list"):
        _kernels.run_layer(2, x, pw, idx, *bad)
    bad[5] = out
    bad[0] = np.ones(2, np.intp)
    with pytest.raises(ValueError, match="fewer step sizes than step offsets"):
        _kernels.run_layer(2, x, pw, idx, *bad)


def test_loaders_make_layers_without_drawing_random_weights(monkeypatch, tmp_path):
    """Every loader makes its layers without the random initialisation (the weights are
    all loaded right after, strict: the draw was ~55% of loading a large checkpoint):
    with numpy's generator unavailable, PyTorch .pt and safetensors files (both
    writers), ONNX models, Keras files (a fused Bidirectional too), live torch-like
    modules (torch's) and configs with weights load, with the saved weights; a layer made by the
    user still draws them (and ``layer_from_config`` without weights too)."""
    import fastrnn.layers as layers_mod
    from fastrnn.io import safetensors as st
    fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    lstm = fastrnn.LSTM(5, 7, num_layers=2, bidirectional=True, seed=1)
    st.save(lstm, str(tmp_path / "own.safetensors"))
    want = lstm.state_dict()

    def no_rng(*a, **k):
        raise AssertionError("a loader drew random weights")
    monkeypatch.setattr(layers_mod.np.random, "default_rng", no_rng)
    got = fastrnn.load(str(tmp_path / "own.safetensors")).state_dict()
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    again = fastrnn.layers.layer_from_config(lstm.get_config(), want).state_dict()
    assert all(np.array_equal(again[k], want[k]) for k in want)
    for name in ("torch/checkpoint.pt", "torch/gru2.safetensors", "torch/gru_bi2.pt",
                 "onnx/lstm_bi_2l_bf_h0.onnx", "onnx/gru_3l.onnx",
                 "keras/k3_bi_concat_lstm_embed.keras", "keras/k2_bi_modes_embed.h5"):
        fastrnn.load(os.path.join(fix, name))

    import torch
    m = torch.nn.GRU(3, 4)
    g = fastrnn.from_torch(m)
    assert np.array_equal(g.state_dict()["weight_hh_l0"], m.weight_hh_l0.detach().numpy())
    with pytest.raises(AssertionError, match="drew random"):
        fastrnn.GRU(3, 4)
    with pytest.raises(AssertionError, match="drew random"):
        fastrnn.layers.layer_from_config(lstm.get_config())


@pytest.mark.parametrize("cls", CLASSES)
def test_read_only_and_memory_mapped_inputs(cls, tmp_path):
    """Inputs are never written: read-only arrays (np.frombuffer, a np.load memory map)
    work on every path — packed, batch-lane, both directions at once, LSTM route, one
    thread, last output only, lengths, training (the kernels took writable buffers:
    'buffer source array is read-only')."""
    from fastrnn import train
    rng = np.random.default_rng(0)
    for B in (1, 3, 64):
        x = rng.standard_normal((6, B, 8)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        inputs = [np.frombuffer(x.tobytes(), np.float32).reshape(x.shape),
                  np.load(tmp_path / "x.npy", mmap_mode="r")]
        for layer in (cls(8, 16, seed=1), cls(8, 16, num_layers=2, bidirectional=True,
                                              seed=1)):
            want = layer(x)[0]
            for ro in inputs:
                assert not ro.flags.writeable
                np.testing.assert_array_equal(layer(ro)[0], want)
                np.testing.assert_allclose(layer(ro, num_threads=1)[0], want, rtol=1e-6,
                                           atol=1e-6)      # (another path: rounding)
                np.testing.assert_array_equal(layer(ro, return_sequences=False)[0],
                                              want[-1, :, :16] if not layer.bidirectional
                                              else layer(x, return_sequences=False)[0])
                layer(ro, lengths=np.full(B, 4))
                out, _, cache = train.forward_train(layer, ro)
                np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
                g = train.backward(layer, cache, np.ones_like(out))
                assert g["input"].shape == x.shape


def test_thread_counts_beyond_a_c_int_refused():
    """num_threads past what the kernels take is a ValueError (it was an OverflowError
    deep in a call); such an OMP_NUM_THREADS is ignored, as libgomp ignores it."""
    layer = fastrnn.LSTM(8, 300)
    x = np.zeros((20, 16, 8), np.float32)
    for n in (2 ** 31, 2 ** 17):
        with pytest.raises(ValueError, match="num_threads must be <="):
            layer(x, num_threads=n)
        with pytest.raises(ValueError, match="num_threads must be <="):
            fastrnn.set_num_threads(n)
    code = ("import numpy as np, fastrnn; "
            "print(fastrnn.LSTM(8, 300)(np.zeros((20, 16, 8), np.float32))[0].shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "99999999999999999999"})
    assert r.returncode == 0 and "(20, 16, 300)" in r.stdout, r.stderr[-500:]


_LIMIT_CODE = """
import json, numpy as np, fastrnn
from fastrnn import _threads
layer = fastrnn.LSTM(8, 300, seed=0)
x = np.random.default_rng(0).standard_normal((20, 16, 8)).astype(np.float32)
out = {"default": fastrnn.get_num_threads(), "call": _threads.resolve(2),
       "layer": _threads.resolve(None, 2)}
fastrnn.set_num_threads(2)
out["set"] = fastrnn.get_num_threads()
fastrnn.set_num_threads(None)
with _threads.threads_for_calls(2):
    out["model"] = _threads.resolve()
y2 = layer(x, num_threads=2)[0]
h = np.zeros((1, 16, 300), np.float32)
c = np.zeros_like(h)
layer._step_fast(x[0], h, c, num_threads=2)
out["step"] = max(layer._step_plans[1])          # (the count its plan was made for)
out["same"] = bool(np.array_equal(y2, layer(x, num_threads=1)[0]))
print(json.dumps(out))
"""


def test_omp_thread_limit_caps_every_thread_count():
    """OMP_THREAD_LIMIT=1: libgomp runs every parallel region on one thread, so fastrnn
    plans every call for one (get_num_threads() said the CPU count / OMP_NUM_THREADS,
    and calls were planned for two threads that libgomp did not give)."""
    import json
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_THREAD_LIMIT": "1"}
    r = subprocess.run([sys.executable, "-c", _LIMIT_CODE], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-800:]
    got = json.loads(r.stdout)
    assert got == {"default": 1, "call": 1, "layer": 1, "set": 1, "model": 1, "step": 1,
                   "same": True}, got
    # a limit above the count changes nothing; an invalid one is ignored
    for limit, want in (("3", 2), ("0", 2), ("two", 2), (" +1 ", 1)):
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_THREAD_LIMIT": limit}
        r = subprocess.run([sys.executable, "-c", _LIMIT_CODE], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr[-800:]
        got = json.loads(r.stdout)
        assert (got["default"], got["call"], got["set"], got["step"]) == (want,) * 4, \
            (limit, got)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp (GCC builds)")
def test_omp_thread_limit_read_as_libgomp_reads_it():
    """fastrnn's reading of OMP_THREAD_LIMIT is the OpenMP runtime's own (libgomp's
    omp_get_thread_limit(), INT_MAX where it has no limit), valid and invalid values."""
    code = ("import ctypes, os, fastrnn._kernels\n"
            "from fastrnn import _threads\n"
            "try:\n"
            "    g = ctypes.CDLL('libgomp.so.1', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)\n"
            "except OSError:\n"
            "    print('none'); raise SystemExit\n"
            "print(g.omp_get_thread_limit(), _threads._thread_limit())\n")
    values = ["1", "2", " 3\t", "+2", "0", "-1", "", "abc", "1,2", "2 x", "007",
              "2147483647", "2147483648", "99999999999999999999", "9223372036854775808",
              "-18446744073709551615"]
    for v in values:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "OMP_THREAD_LIMIT": v})
        assert r.returncode == 0, r.stderr[-800:]
        if r.stdout.strip() == "none":
            pytest.skip("the kernels do not link libgomp")
        omp, ours = map(int, r.stdout.split())
        assert ours == min(omp, 1 << 16), (v, omp, ours)


@pytest.mark.parametrize("called_before", [False, True])
def test_inplace_edit_to_nan_is_refused_and_used_consistently(called_before):
    """``layer.weight_ih_l0 *= nan`` raises, but NumPy changed the array first: the layer
    holds the edited values and every path uses them (a layer called before used its
    old packing in some calls and the new values in others)."""
    rng = np.random.default_rng(0)
    layer = fastrnn.GRU(3, 4, seed=0)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    x64 = rng.standard_normal((4, 64, 3)).astype(np.float32)
    if called_before:
        layer(x), layer(x64)
    with pytest.raises(ValueError, match="edited in place"):
        layer.weight_ih_l0 *= np.float32(np.nan)
    assert np.isnan(layer.state_dict()["weight_ih_l0"]).all()
    for out in (layer(x)[0], layer(x64)[0], layer.forward_train(x)[0]):
        assert np.isnan(out).all()
    with pytest.raises(ValueError, match="weight_hh_l0.*NaN") as e:
        layer.weight_hh_l0 = np.full((12, 4), np.nan, np.float32)    # (a new array)
    assert "edited in place" not in str(e.value)
    assert np.isfinite(layer.state_dict()["weight_hh_l0"]).all()


def test_dtype_change_never_leaves_the_layer_half_built():
    """``layer.to(dtype)`` swaps the layer's attributes in one assignment: a call racing
    it (documented as unsupported) met a layer whose attributes had been cleared and not
    yet refilled (an AttributeError, found by the concurrency audit).  Checked at every
    line of the change with a trace function."""
    import sys
    layer = fastrnn.LSTM(3, 4, seed=0)
    seen = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name == "_set_dtype":
            def local(frame, event, arg):
                if event in ("line", "return"):
                    seen.append(all(hasattr(layer, a) for a in
                                    ("num_threads", "go_backwards", "hidden_size", "dtype")))
                return local
            return local
        return None

    sys.settrace(tracer)
    try:
        layer.to(np.float64)
    finally:
        sys.settrace(None)
    assert seen and all(seen)
    assert layer.dtype == np.float64
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    np.testing.assert_allclose(layer(x)[0], fastrnn.LSTM(3, 4, seed=0)(x)[0], rtol=1e-5,
                               atol=1e-6)
