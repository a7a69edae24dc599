"""Model layers on few rows (a streaming step, a one-step call): ``_kernels.dense_rows``
(one pass a row, fr_kern_t.h dense_rows_impl) against NumPy float64 at every ISA level,
and ``fastrnn.model.Dense`` taking it where it applies, with the same results as its
NumPy path otherwise (NaN and infinities included); LayerNormalization's row pass; an
Embedding's few ids."""
import numpy as np
import pytest

from fastrnn import _kernels, model as fmodel
from fastrnn.model import Dense

ACTS = {"linear": lambda z: z, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh,
        "relu": lambda z: np.maximum(z, 0),
        "softmax": lambda z: np.exp(z - z.max(-1, keepdims=True))
        / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)}
# (column counts around the vector widths and the register blocks: 8 / 16 lanes, blocks of
# 8 / 16 vectors)
SHAPES = [(1, 256, 256), (1, 256, 10), (3, 7, 33), (4, 64, 100), (1, 1, 1), (2, 300, 1),
          (1, 5, 513), (2, 3, 129), (1, 0, 4), (1, 9, 255), (1, 17, 257), (2, 2, 64)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("level", [-1, 0, 1])
def test_dense_rows_against_float64(dtype, level):
    rng = np.random.default_rng(level + 5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    _kernels._set_isa_level(level)
    try:
        for m, k, n in SHAPES:
            x = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((k, n)).astype(dtype)
            b = rng.standard_normal(n).astype(dtype)
            for name, code in _kernels.DENSE_ACTS.items():
                for bias in (b, None):
                    y = _kernels.dense_rows(x, w, bias, code)
                    assert y.dtype == dtype and y.shape == (m, n)
                    z = x.astype(np.float64) @ w.astype(np.float64)
                    ref = ACTS[name](z + (0 if bias is None else b.astype(np.float64)))
                    # (relative to the products' size: the sums' rounding, before the
                    # activation)
                    err = np.abs(y - ref).max() / max(1.0, np.abs(z).max(initial=0))
                    assert err < tol, (m, k, n, name, bias is None, err)
    finally:
        _kernels._set_isa_level(-1)


def test_dense_rows_refuses_bad_arrays():
    x = np.ones((1, 4), np.float32)
    w = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.dense_rows(np.ones((4, 2), np.float32).T, w, None, 11)
    with pytest.raises(TypeError, match="float32 or float64"):
        _kernels.dense_rows(x.astype(np.int32), w, None, 11)
    with pytest.raises(TypeError, match="one dtype"):
        _kernels.dense_rows(x, w.astype(np.float64), None, 11)
    with pytest.raises(ValueError, match="4 features, w 5 rows"):
        _kernels.dense_rows(x, np.ones((5, 3), np.float32), None, 11)
    with pytest.raises(ValueError, match=r"b must be a contiguous \(3,\)"):
        _kernels.dense_rows(x, w, np.ones(4, np.float32), 11)
    with pytest.raises(ValueError, match="activation code 7"):
        _kernels.dense_rows(x, w, None, 7)
    assert _kernels.dense_rows(np.ones((0, 4), np.float32), w, None, 11).shape == (0, 3)


def _spy(monkeypatch):
    """The shapes of the inputs Dense.call ran through dense_call's kernel."""
    calls = []
    real = fmodel._row_kernels()[0]

    def spy(*a):
        y = real(*a)
        if y is not None:
            calls.append(a[0].shape[:-1] + (a[1].shape[0],))
        return y
    monkeypatch.setattr(fmodel, "_dense_call", spy)
    return calls


@pytest.mark.parametrize("act", list(ACTS) + ["elu", ("leaky_relu", 0.1)])
def test_dense_few_rows_path(monkeypatch, act):
    """Dense.call takes dense_rows for few rows of its dtype (C order), NumPy's path
    otherwise; both give the same values (within float32 rounding; NaN and infinities
    alike)."""
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((24, 40)).astype(np.float32)
    d = Dense(k, rng.standard_normal(40).astype(np.float32), activation=act)
    fast = isinstance(act, str) and act in ACTS
    for shape, taken in (((1, 24), True), ((1, 1, 24), True), ((2, 1, 24), True),
                         ((3, 5, 24), True), ((64, 24), True), ((200, 24), False)):
        x = rng.standard_normal(shape).astype(np.float32)
        x[0, ..., :3] = [np.nan, np.inf, -np.inf] if shape[0] == 1 else x[0, ..., :3]
        n0 = len(calls)
        y, _ = d.call(x)
        assert (len(calls) > n0) == (taken and fast), (shape, act)
        ref, _ = d.call(np.repeat(x, 2, axis=-1)[..., ::2])
        assert len(calls) == n0 + (taken and fast)      # (a strided view: NumPy's path)
        assert y.shape == shape[:-1] + (40,) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)
        assert np.array_equal(np.isnan(y), np.isnan(ref))
    n0 = len(calls)
    x = rng.standard_normal((1, 24)).astype(np.float32)
    for other in (x.astype(">f4"), np.frombuffer(b"\0" + x.tobytes(), np.float32, 24,
                                                  1).reshape(1, 24)):
        # another byte order, an unaligned array: NumPy's path, the same values
        assert not other.flags.aligned or other.dtype.byteorder == ">"
        np.testing.assert_allclose(d.call(other)[0], d.call(x)[0], rtol=2e-6, atol=2e-6)
    assert len(calls) == n0 + (2 if fast else 0)
    n0 = len(calls)
    d.call(np.ones((1, 24), np.float64))            # another dtype: NumPy's path
    d.call(np.ones((1, 24), np.float32)[:, ::1].repeat(2, 0)[::2])
    assert len(calls) == n0 + (1 if fast else 0)     # (a strided view of one row is C order)


def test_dense_few_rows_float64_and_no_bias(monkeypatch):
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(2)
    k = rng.standard_normal((7, 5))
    d = Dense(k, None, activation="softmax", dtype="float64")
    x = rng.standard_normal((2, 7))
    y, _ = d.call(x)
    assert calls == [(2, 7)]
    old = _kernels._set_dense_rows(-1)                  # (the hook: off)
    try:
        d.call(x)
    finally:
        _kernels._set_dense_rows(old)
    assert calls == [(2, 7)]
    z = x @ k
    np.testing.assert_allclose(y, np.exp(z) / np.exp(z).sum(-1, keepdims=True), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_rows_against_numpy_path(dtype):
    """LayerNormalization over the last axis runs one pass a row
    (_kernels.layer_norm_rows): the NumPy path's values (a strided input takes it),
    every combination of gamma / beta / rms_scaling, float64 reference too; NaN rows stay
    NaN; other axes, dtypes and layouts take NumPy's path (None)."""
    from fastrnn.model import LayerNormalization
    rng = np.random.default_rng(3)
    tol = 3e-6 if dtype == np.float32 else 1e-13
    for shape in ((1, 1, 128), (2, 5, 7), (3, 1), (1, 1000), (4, 2, 3, 9)):
        n = shape[-1]
        g = rng.standard_normal(n).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        for gamma, beta in ((g, b), (None, None), (g, None), (None, b)):
            for rms in (False, True):
                ln = LayerNormalization(gamma, beta, epsilon=1e-3, rms_scaling=rms,
                                        dtype=dtype)
                x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
                y = _kernels.layer_norm_rows(x, ln.gamma, ln.beta, ln.epsilon, rms)
                assert y is not None and y.shape == shape and y.dtype == dtype
                slow = ln.call(np.repeat(x, 2, -1)[..., ::2])[0]
                np.testing.assert_array_equal(ln.call(x)[0], y)
                err = np.abs(y - slow).max() / max(1, np.abs(slow).max())
                assert err < tol, (shape, rms, gamma is None, beta is None, err)
                xd = x.astype(np.float64)
                inv = 1 / np.sqrt(xd.var(-1, keepdims=True) + 1e-3)
                ref = xd * inv if rms else (xd - xd.mean(-1, keepdims=True)) * inv
                ref = ref * (1 if gamma is None else gamma) + (0 if beta is None or rms
                                                                else beta)
                assert np.abs(y - ref).max() / max(1, np.abs(ref).max()) < tol * 3
    x = np.ones((2, 4), dtype)
    x[1, 2] = np.nan
    y = _kernels.layer_norm_rows(x, None, None, 1e-3, False)
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()
    for other in (x.astype(">f8" if dtype == np.float64 else ">f4"), x.T.copy().T[:, ::2],
                  x.astype(np.float16), np.zeros((2, 0), dtype)):
        assert _kernels.layer_norm_rows(other, None, None, 1e-3, False) is None
    assert _kernels.layer_norm_rows(x, np.ones(3, dtype), None, 1e-3, False) is None


def test_embedding_few_ids():
    """An Embedding's few integer ids (checked in Python, looked up by take) give what
    the general path gives: the rows, the mask, the same errors."""
    from fastrnn.model import Embedding
    w = np.random.default_rng(4).standard_normal((50, 6)).astype(np.float32)
    for mask_zero in (False, True):
        e = Embedding(w, mask_zero=mask_zero)
        for ids in (np.array([[5]]), np.array([5, 0, 49], np.int32),
                    np.array([[1, 2], [3, 0]], np.int16), np.arange(50).reshape(5, 10),
                    np.arange(100).reshape(10, 10) % 50, np.array([3], np.uint8),
                    np.array([[2.0, 0.0]])):
            y, m = e.call(ids)
            np.testing.assert_array_equal(y, w[ids.astype(np.int64)])
            assert y.flags.c_contiguous and y.dtype == np.float32
            if mask_zero:
                np.testing.assert_array_equal(m, ids != 0)
            else:
                assert m is None
        for bad, lo, hi in ((np.array([[50]]), 50, 50), (np.array([-1, 3]), -1, 3),
                            (np.arange(-1, 99), -1, 98)):
            with pytest.raises(ValueError, match=rf"ids must lie in \[0, 50\), got min "
                                                 rf"{lo} max {hi}"):
                e.call(bad)


def test_few_row_paths_review_cases(monkeypatch):
    """Cases a review found: gamma / beta that are not arrays (a crash), a 1-D input to
    LayerNormalization (refused, as NumPy's path refuses it), sizes past a C int
    (refused), a softmax class far below the maximum (exactly 0, as NumPy's exp gives),
    a Dense of many inputs (NumPy's blocked sums: the row pass only up to 4096)."""
    from fastrnn.model import LayerNormalization
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for g in (np.float32(2.0), [1.0, 1.0, 1.0, 1.0], 2.0):
        assert _kernels.layer_norm_rows(x, g, None, 1e-3, False) is None
        assert _kernels.layer_norm_rows(x, None, g, 1e-3, False) is None
    ln = LayerNormalization(np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="out of range for a 1-D input"):
        ln.call(np.arange(4, dtype=np.float32))
    with pytest.raises(ValueError, match="below 2"):
        _kernels.dense_rows(np.empty((2 ** 32 + 1, 0), np.float32),
                            np.empty((0, 3), np.float32), None, 11)
    d = Dense(np.eye(3, dtype=np.float32), activation="softmax")
    xs = np.array([[1e30, -1e30, 0.0]], np.float32)
    y = d.call(xs)[0]
    np.testing.assert_array_equal(y, [[1, 0, 0]])
    np.testing.assert_array_equal(y, d.call(np.repeat(xs, 2, -1)[..., ::2])[0])
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(6)
    for k, taken in ((4096, True), (4097, False)):
        dk = Dense(rng.standard_normal((k, 2)).astype(np.float32))
        dk.call(rng.standard_normal((1, k)).astype(np.float32))
        assert bool(calls) == taken, k
        calls.clear()


def test_dense_weights_replaced_by_other_objects(monkeypatch):
    """A Dense whose bias was set to a list after construction runs NumPy's path (the
    row pass takes arrays only; a review found a TypeError), and its kernel's row pass
    is not given other objects either."""
    calls = _spy(monkeypatch)
    d = Dense(np.eye(3, dtype=np.float32), np.zeros(3, np.float32), activation="relu")
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    d.bias = [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(d.call(x)[0], [[2, 0, 4]])
    assert calls == []
    assert _kernels.dense_call(x, [[1.0] * 3] * 3, None, 11) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_rows_same_bits_as_numpy_path(dtype):
    """BatchNormalization over the last axis runs one pass (_kernels.batch_norm_rows):
    the NumPy path's values bit for bit (a strided input takes that path), every
    combination of gamma / beta; other layouts, dtypes and weights take NumPy's path."""
    from fastrnn.model import BatchNormalization
    rng = np.random.default_rng(5)
    for shape in ((1, 1, 128), (3, 5, 7), (2, 1), (1, 1000), (2, 2, 3, 9)):
        n = shape[-1]
        mean, g, b = (rng.standard_normal(n).astype(dtype) for _ in range(3))
        var = (rng.random(n) * 3).astype(dtype)
        for gamma, beta in ((g, b), (None, None), (g, None), (None, b)):
            bn = BatchNormalization(mean, var, gamma, beta, epsilon=1e-3, dtype=dtype)
            x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
            y = _kernels.batch_norm_rows(x, bn.moving_mean, bn.moving_variance, bn.gamma,
                                         bn.beta, bn.epsilon)
            assert y is not None and y.shape == shape and y.dtype == dtype
            np.testing.assert_array_equal(y, bn.call(np.repeat(x, 2, -1)[..., ::2])[0])
            np.testing.assert_array_equal(bn.call(x)[0], y)
            ref = (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + 1e-3) * (
                1 if gamma is None else gamma) + (0 if beta is None else beta)
            assert np.abs(y - ref).max() <= 1e-5 * max(1, np.abs(ref).max())
    x = np.ones((2, 4), dtype)
    w = np.ones(4, dtype)
    assert _kernels.batch_norm_rows(x, w, w, None, None, 1e-3) is not None
    for other in (x.astype(">f8" if dtype == np.float64 else ">f4"), x.T.copy().T[:, ::2],
                  x.astype(np.float16), np.zeros((2, 0), dtype), x[0]):
        assert _kernels.batch_norm_rows(other, w[:other.shape[-1]], w[:other.shape[-1]],
                                        None, None, 1e-3) is None
    for bad in (np.ones(3, dtype), w.astype(np.float16), [1.0] * 4, 2.0, None):
        assert _kernels.batch_norm_rows(x, w, bad, None, None, 1e-3) is None
        if bad is not None:
            assert _kernels.batch_norm_rows(x, w, w, bad, None, 1e-3) is None
    # a float64 input to a float32 layer: NumPy's path (the weights cast), as before
    bn = BatchNormalization(np.zeros(4), np.ones(4), dtype=np.float32)
    y = bn.call(np.full((1, 4), 0.1))[0]
    assert y.dtype == np.float64 and np.allclose(y, 0.1 / np.sqrt(np.float32(1.001)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masking_rows_as_numpy_path(dtype):
    """Masking in one pass (_kernels.masking_rows): the rows equal to mask_value (rounded
    to the input's type, as NumPy compares) zeroed and masked, NaN rows kept, -0.0 equal
    to 0.0; other layouts and dtypes take NumPy's path."""
    from fastrnn.model import Masking
    rng = np.random.default_rng(6)
    for value in (0.0, 0.5, 0.1, -3.0, np.inf, np.nan):
        x = rng.standard_normal((3, 4, 5)).astype(dtype)
        x[0, 1] = value
        x[2, 3] = value
        x[1, 2, 0] = np.nan
        x[1, 0] = -0.0 if value == 0.0 else value
        x[1, 1, :4] = value
        m = Masking(value)
        y, keep = _kernels.masking_rows(x, m.mask_value)
        ys, ks = m.call(np.repeat(x, 2, -1)[..., ::2])
        np.testing.assert_array_equal(y, ys)
        np.testing.assert_array_equal(keep, ks)
        assert keep.dtype == bool and keep.shape == (3, 4) and y.dtype == dtype
        if value == value:
            assert keep.sum() == 12 - 3 and not keep[1, 0] and keep[1, 1]
        assert m.call(x)[0] is not x
    for other in (np.ones(3, dtype), np.ones((2, 0), dtype), np.ones((2, 4), np.int32),
                  np.ones((2, 4), dtype)[:, ::2]):
        assert _kernels.masking_rows(other, 0.0) is None


def test_masking_and_batch_norm_calls_take_the_row_passes(monkeypatch):
    """A float array reaches the row passes (an int input or another axis does not)."""
    from fastrnn import model as fmodel
    from fastrnn.model import BatchNormalization, Masking
    fmodel._row_kernels()
    seen = []
    bn_k, mask_k = fmodel._batch_norm, fmodel._masking
    monkeypatch.setattr(fmodel, "_batch_norm", lambda *a: seen.append("bn") or bn_k(*a))
    monkeypatch.setattr(fmodel, "_masking", lambda *a: seen.append("mask") or mask_k(*a))
    x = np.ones((2, 3, 4), np.float32)
    Masking(1.0).call(x)
    Masking(1.0).call(x.astype(np.int64))      # (ints: NumPy's comparison)
    Masking(1.0).call(x.tolist())
    BatchNormalization(np.zeros(4), np.ones(4)).call(x)
    BatchNormalization(np.zeros(3), np.ones(3), axis=1).call(x)
    assert seen == ["mask", "mask", "bn"]
