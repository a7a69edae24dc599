"""fastrnn._model_base.matmul: the products of a Keras-style model's layers (Dense,
attention, Dot, keras.ops matmul, their backward) on scipy's BLAS inside the kernels'
shared OpenBLAS thread count, NumPy's ``@`` where that does not apply.  The same
numbers as ``@`` up to the order of the sums; the BLAS path taken where the product is
big enough for OpenBLAS to use its threads (bench/model_blas.py measures why)."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _model_base
from fastrnn.io import _onnx_conv
from fastrnn.model import Dense, KerasRNN, Model


@pytest.fixture
def gemms(monkeypatch):
    """The number of scipy BLAS products matmul makes."""
    calls = [0]
    real = _onnx_conv._gemm

    def counted(*args, **kw):
        calls[0] += 1
        return real(*args, **kw)
    monkeypatch.setattr(_onnx_conv, "_gemm", counted)
    return calls


def _arr(rng, shape, dt, layout):
    a = rng.standard_normal(shape).astype(dt)
    if layout == "T":               # (a transposed view: unit stride down the columns)
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
    if layout == "slice":           # (every other row of a bigger array)
        b = rng.standard_normal(shape[:-2] + (2 * shape[-2], shape[-1])).astype(dt)
        return b[..., ::2, :]
    return a


CASES = [((300, 64), (64, 80)),             # one product of 1.5M multiply-adds
         ((4, 90, 64), (64, 70)),           # rows of a stack times one matrix
         ((2, 3, 80, 40), (2, 3, 40, 90)),  # stacks
         ((3, 1, 90, 50), (1, 4, 50, 70)),  # stacks broadcast
         ((200, 70), (2, 70, 30))]          # one matrix times a stack


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["C", "T", "slice"])
@pytest.mark.parametrize("shapes", CASES)
def test_big_products_take_blas_and_match_numpy(gemms, shapes, layout, dt):
    rng = np.random.default_rng(len(shapes[0]) * 10 + len(layout))
    a, b = _arr(rng, shapes[0], dt, layout), _arr(rng, shapes[1], dt, "C")
    want = a @ b
    got = _model_base.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-4 if dt == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert gemms[0] >= 1


@pytest.mark.parametrize("a_shape, b_shape, dts", [
    ((8, 16), (16, 4), ("float32", "float32")),         # small: one thread anyway
    ((300, 64), (64, 80), ("float32", "float64")),      # mixed dtypes
    ((300, 64), (64,), ("float32", "float32")),         # a vector
    ((0, 64), (64, 80), ("float32", "float32")),        # empty
    ((300, 64), (64, 80), ("int64", "int64"))])         # integers
def test_other_products_are_numpys(gemms, a_shape, b_shape, dts):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(a_shape) * 4).astype(dts[0])
    b = (rng.standard_normal(b_shape) * 4).astype(dts[1])
    got = _model_base.matmul(a, b)
    np.testing.assert_array_equal(got, a @ b)
    assert got.dtype == (a @ b).dtype and gemms[0] == 0


def test_mismatched_shapes_are_numpys_error():
    with pytest.raises(ValueError, match="matmul"):
        _model_base.matmul(np.ones((300, 64), np.float32), np.ones((65, 80), np.float32))
    with pytest.raises(ValueError):
        _model_base.matmul(np.ones((2, 300, 64)), np.ones((3, 64, 80)))


def test_a_model_gives_the_same_outputs_either_way(gemms):
    """LSTM -> Dense over every step (the case an 8 ms contention hit): the hook puts
    NumPy's @ back, with the same numbers up to the order of the sums."""
    rng = np.random.default_rng(2)
    m = Model([KerasRNN(fastrnn.LSTM(16, 64, batch_first=True, seed=1),
                        return_sequences=True),
               Dense(rng.standard_normal((64, 300)).astype(np.float32))])
    x = rng.standard_normal((2, 50, 16)).astype(np.float32)
    got = m(x)
    assert gemms[0] == 1
    old = _model_base._set_blas_products(False)
    try:
        assert old is True
        want = m(x)
    finally:
        _model_base._set_blas_products(old)
    assert gemms[0] == 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_big_endian_operands_are_numpys(gemms):
    """(scipy's BLAS would read their bytes as native: 50 off, a review)"""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 100)).astype(">f4")
    b = rng.standard_normal((100, 50)).astype(">f4")
    np.testing.assert_array_equal(_model_base.matmul(a, b), a @ b)
    assert gemms[0] == 0
