"""The vectorised sigmoid / tanh / exp of the C kernels against NumPy float64.

Error is measured in float32 (float64) ulps of the reference value, on a dense grid that
includes large |x|, tiny |x|, +-inf and the switch points of the approximations.
"""
import numpy as np
import pytest

from fastrnn import _kernels


def _grid(dtype):
    lin = np.linspace(-30, 30, 400_001)
    fine = np.linspace(-1, 1, 200_001)
    logs = np.logspace(-30, 2.9, 20_000)
    g = np.concatenate([lin, fine, logs, -logs, [0.0, -0.0, 0.625, -0.625, 9.0, 88.0, -87.3,
                                                 100.0, -100.0, 1e4, -1e4]])
    return g.astype(dtype)


def _ulp_err(y, ref, dtype):
    ref_t = ref.astype(dtype)
    ulp = np.spacing(np.abs(ref_t)).astype(np.float64)
    tiny = np.finfo(dtype).tiny
    return np.abs(y.astype(np.float64) - ref) / np.maximum(ulp, tiny)


REFS = {0: lambda x: 1 / (1 + np.exp(-x)), 1: np.tanh}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", [0, 1], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("level", [-1, 0, 1])
def test_activation_accuracy(dtype, which, level):
    x = _grid(dtype)
    _kernels._set_isa_level(level)
    try:
        y = _kernels._act_test(which, x)
    finally:
        _kernels._set_isa_level(-1)
    with np.errstate(over="ignore"):
        ref = REFS[which](x.astype(np.float64))
    err = _ulp_err(y, ref, dtype)
    assert np.isfinite(y).all()
    assert err.max() <= 3.0, (err.max(), x[np.argmax(err)])
    assert np.all(y <= 1) and np.all(y >= (0 if which == 0 else -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("level", [-1, 0, 1])
def test_activation_limits(dtype, level):
    """+-inf give the limits and NaN stays NaN at every ISA level (the clamps are one
    max / min instruction each on x86, whose operand order decides what a NaN gives)."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -np.nan, 1e30, -1e30], dtype)
    _kernels._set_isa_level(level)
    try:
        s = _kernels._act_test(0, x)
        t = _kernels._act_test(1, x)
        e = _kernels._act_test(2, x)
    finally:
        _kernels._set_isa_level(-1)
    assert s[0] == 1 and 0 <= s[1] < 1e-37 and np.isnan(s[2]) and s[3] == 0.5
    assert t[0] == 1 and t[1] == -1 and np.isnan(t[2]) and t[3] == 0
    assert np.isnan(s[4]) and np.isnan(t[4]) and np.isnan(e[2]) and np.isnan(e[4])
    assert s[5] == 1 and 0 <= s[6] < 1e-37 and t[5] == 1 and t[6] == -1
    assert np.isfinite(e[0]) and np.isfinite(e[5]) and 0 <= e[1] < 1e-37


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy(dtype):
    x = np.linspace(-80, 80, 100_001).astype(dtype)
    y = _kernels._act_test(2, x)
    err = _ulp_err(y, np.exp(x.astype(np.float64)), dtype)
    assert err.max() <= 2.0, (err.max(), x[np.argmax(err)])


def _levels():
    from fastrnn import _backward
    return list(range(_backward.small_gemm_level() + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", [0, 1], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_training_activation_accuracy(dtype, which, level):
    """The training kernels' gate math (_backward_gemm.h) builds the same activations
    (fr_act_t.h) per ISA level: same bound, every level this CPU runs, and the same
    values as the inference kernels' at the best level."""
    from fastrnn import _backward
    if level not in _levels():
        pytest.skip(f"ISA level {level} not available on this CPU")
    x = _grid(dtype)
    y = _backward._act_test(which, x, level)
    with np.errstate(over="ignore"):
        ref = REFS[which](x.astype(np.float64))
    assert np.isfinite(y).all()
    assert _ulp_err(y, ref, dtype).max() <= 3.0
    lim = _backward._act_test(which, np.array([np.inf, -np.inf, 0.0], dtype), level)
    if which == 0:    # sigmoid(-inf): the clamped exp gives a denormal-scale value
        assert lim[0] == 1 and 0 <= lim[1] < 1e-37 and lim[2] == 0.5
    else:
        assert lim.tolist() == [1.0, -1.0, 0.0]
    if level == _levels()[-1]:
        np.testing.assert_array_equal(y, _kernels._act_test(which, x))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 17, 33])
def test_training_activation_tails(n):
    """Lengths around the vector width: the zero-padded tail gives the same values as
    the full vectors (no lane read or written past n)."""
    from fastrnn import _backward
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(64).astype(dtype) * 4
        full = _backward._act_test(1, x)
        buf = np.full(n + 8, 7.0, dtype)
        buf[:n] = x[:n]
        out = _backward._act_test(1, buf[:n])
        np.testing.assert_array_equal(out, full[:n])
    with pytest.raises(ValueError, match="ISA level"):
        _backward._act_test(0, np.zeros(3, np.float32), 9)
    with pytest.raises(TypeError, match="float32 or float64"):
        _backward._act_test(0, np.zeros(3, np.int32))
