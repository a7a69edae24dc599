"""The base of :mod:`fastrnn.model`: the activations its layers take by name, the
``Layer`` base class and the small checks the layer modules share."""
from __future__ import annotations

import functools
import math

import numpy as np


# ----------------------------------------------------------------------------- activations

_sig = None


def _sigmoid(x):
    # the kernels' vectorised sigmoid (_kernels.sigmoid): stable for large |x|, in x's
    # dtype, ~1 us for a small array (by masked halves a small array's sigmoid took ~7
    # us of a ~20 us Keras model call), without scipy.special's ~100-200 ms import;
    # other dtypes as NumPy computes them
    global _sig
    if _sig is None:
        from . import _kernels
        _sig = _kernels.sigmoid
    if isinstance(x, np.ndarray) and (x.dtype == np.float32 or x.dtype == np.float64):
        return _sig(x)
    with np.errstate(over="ignore"):        # (exp(-x) -> inf: sigmoid 0)
        return 1.0 / (1.0 + np.exp(-np.asarray(x)))


def _softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805

def _linear(x):
    return x


def _relu(x):
    return np.maximum(x, 0)


def _relu6(x):
    return np.clip(x, 0, 6)


def _log_softmax(x, axis=-1):
    z = x - x.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _selu(x):
    return _SELU_S * np.where(x > 0, x, _SELU_A * np.expm1(np.minimum(x, 0)))


def _softplus(x):
    return np.logaddexp(0, x)


def _softsign(x):
    return x / (1 + np.abs(x))


def _swish(x):
    return x * _sigmoid(x)


def _mish(x):
    return x * np.tanh(np.logaddexp(0, x))


def _hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0, 1)


def _leaky_relu(x, alpha):
    return np.where(x >= 0, x, alpha * x)


def _relu_keras(x, negative_slope, max_value, threshold):
    """Keras's ``relu(x, negative_slope, max_value, threshold)`` (its ReLU layer), step
    by step as Keras 3 and tf.keras 2 compute it."""
    if negative_slope != 0 and max_value is None and threshold == 0:
        return _leaky_relu(x, negative_slope)
    neg = np.maximum(threshold - x, 0) if negative_slope != 0 else None
    clip_max = max_value is not None
    if threshold != 0:
        y = np.where(x > threshold, x, 0).astype(x.dtype, copy=False)
    elif max_value == 6:
        y, clip_max = _relu6(x), False
    else:
        y = _relu(x)
    if clip_max:
        y = np.clip(y, 0, max_value).astype(x.dtype, copy=False)
    if neg is not None:
        y = y - x.dtype.type(negative_slope) * neg
    return y


def _elu_alpha(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _thresholded_relu(x, theta):
    return np.where(x > theta, x, 0).astype(x.dtype, copy=False)


# module-level functions (no lambdas) so that models pickle with the standard pickle
_ACTIVATIONS = {
    "linear": _linear,
    "relu": _relu,
    "relu6": _relu6,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "elu": _elu,
    "selu": _selu,
    "softplus": _softplus,
    "softsign": _softsign,
    "swish": _swish,
    "silu": _swish,
    "gelu": _gelu,
    "exponential": np.exp,
    "mish": _mish,
}


def activation_function(spec):
    """A numpy function for a Keras activation name, or for ``(name, alpha, beta)``.

    ``"hard_sigmoid"`` alone is Keras 2's ``clip(0.2 x + 0.5, 0, 1)``; Keras 3's is
    ``("hard_sigmoid", 1/6, 0.5)``.  ``("leaky_relu", alpha)`` has slope ``alpha``
    (Keras 3's default is 0.2).  Keras's ReLU / ELU / ThresholdedReLU layers:
    ``("relu", negative_slope, max_value, threshold)`` (``max_value`` None: no cap),
    ``("elu", alpha)``, ``("thresholded_relu", theta)``.  Unknown names raise
    ``ValueError``.
    """
    if callable(spec):
        return spec
    if spec is None:
        spec = "linear"
    name, args = (spec, ()) if isinstance(spec, str) else (spec[0], tuple(spec[1:]))
    key = name.lower()
    if key in ("hard_sigmoid", "hardsigmoid"):
        alpha = float(args[0]) if len(args) > 0 else 0.2
        beta = float(args[1]) if len(args) > 1 else 0.5
        return functools.partial(_hard_sigmoid, alpha=alpha, beta=beta)
    if key in ("leaky_relu", "leakyrelu"):
        alpha = float(args[0]) if args else 0.2
        return functools.partial(_leaky_relu, alpha=alpha)
    if key == "relu" and args:
        ns, mx, th = (tuple(args) + (0.0, None, 0.0)[len(args):])[:3]
        return functools.partial(_relu_keras, negative_slope=float(ns),
                                 max_value=None if mx is None else float(mx),
                                 threshold=float(th))
    if key == "elu" and args:
        return functools.partial(_elu_alpha, alpha=float(args[0]))
    if key == "thresholded_relu":
        return functools.partial(_thresholded_relu, theta=float(args[0]) if args else 1.0)
    if key in ("none", "identity"):
        key = "linear"
    fn = _ACTIVATIONS.get(key)
    if fn is None:
        known = sorted(_ACTIVATIONS) + ["hard_sigmoid", "leaky_relu", "thresholded_relu"]
        raise ValueError(f"unknown activation {name!r}; known: {known}")
    return fn


def _act_name(spec) -> str:
    if spec is None:
        return "linear"
    if isinstance(spec, str):
        return spec
    if callable(spec):
        return getattr(spec, "__name__", "custom")
    return "(" + ", ".join(str(s) for s in spec) + ")"


# ----------------------------------------------------------------------------- layers

class Layer:
    """Base class.  ``call(x, mask)`` returns ``(outputs, mask)``; ``outputs`` is an array
    or a list of arrays (return_state, merge_mode=None), ``mask`` the mask of the first
    output (or None; :meth:`output_mask` gives each output's).  ``n_inputs``: how many
    tensors the layer reads (1: ``x`` is an array; None: a merge layer's list of one or
    more, ``mask`` then their list of masks)."""

    n_inputs: int | None = 1

    def __init__(self, name: str | None = None):
        self.name = name or _default_name(type(self).__name__)

    def call(self, x, mask=None):
        raise NotImplementedError

    def __call__(self, x, mask=None):
        return self.call(x, mask)[0]

    def count_params(self) -> int:
        return int(sum(np.size(w) for w in self.get_weights()))

    def n_outputs(self) -> int:
        """How many tensors ``call`` returns (a list where more than one)."""
        return 1

    def output_mask(self, index: int, mask):
        """The mask of output ``index``, given the mask ``call`` returned (that of the
        first output; the others, a recurrent layer's states, have none)."""
        return mask if index == 0 else None

    def get_weights(self) -> list:
        return []

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, "name": self.name}

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return f"{type(self).__name__}(name={self.name!r}{', ' + extra if extra else ''})"


_NAME_COUNTS: dict[str, int] = {}


def _default_name(cls: str) -> str:
    n = _NAME_COUNTS.get(cls, 0)
    _NAME_COUNTS[cls] = n + 1
    base = cls.lower()
    return base if n == 0 else f"{base}_{n}"


def _float_input(x, name):
    """``x`` as a floating array (other numbers as float32, as Keras's float layers)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        if x.dtype.kind not in "biu":
            raise TypeError(f"{name}: expected numbers, got {x.dtype}")
        x = x.astype(np.float32)
    return x


def _index(v, what) -> int:
    """An int index from a config (a file's: anything may be there)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {v!r}"[:200])
    return int(v)


_ONE_THREAD_MACS = 1 << 18
_BLAS_PRODUCTS = True


def _scope():
    """A _blas_scope on every thread the call may use (not the convolutions' cap of one
    BLAS thread a product: a review measured 110 against numpy's 59 ms)."""
    from .io._onnx_conv import _blas_scope
    sc = _blas_scope(None)
    sc.n = sc.threads
    return sc


def _set_blas_products(on):
    """Test / benchmark hook: False makes :func:`matmul` NumPy's ``@``; the old value."""
    global _BLAS_PRODUCTS
    old, _BLAS_PRODUCTS = _BLAS_PRODUCTS, bool(on)
    return old


def matmul(a, b):
    """``a @ b`` (NumPy's rules for stacks of matrices) on scipy's BLAS, inside the
    OpenBLAS thread count fastrnn's kernels share (``_onnx_conv._blas_scope``); NumPy's
    own ``@`` where that does not apply (other dtypes, vectors, empty operands, a
    layout BLAS does not take) and for products of at most 2^18 multiply-adds each,
    which OpenBLAS runs on the calling thread alone (its interface's threshold: 65536
    times GEMM_MULTITHREAD_THRESHOLD, 4), more cheaply than a call through ctypes.

    NumPy bundles its own OpenBLAS, whose workers each product wakes and which then spin
    for ~0.1 s against the kernels' OpenMP threads (and these against them): on 2 CPUs an
    LSTM(64, 128) + Dense(128) model call at B=1 T=100 took 8.0 ms with NumPy's ``@``,
    0.20 ms this way (``PYTHONPATH=. python bench/model_blas.py``)."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 == b.ndim and \
            a.shape[0] * a.shape[1] * b.shape[1] <= _ONE_THREAD_MACS:
        return np.dot(a, b)     # (the common small product, first; dot: ~0.4 us below @)
    a, b = np.asarray(a), np.asarray(b)
    if not _BLAS_PRODUCTS or a.dtype != b.dtype or a.dtype.char not in "fd" or \
            not a.dtype.isnative or \
            a.ndim < 2 or b.ndim < 2 or not a.size or not b.size or \
            a.shape[-1] != b.shape[-2]:
        return a @ b
    if b.ndim == 2:         # every row of a times one matrix: one product
        if math.prod(a.shape) * b.shape[1] <= _ONE_THREAD_MACS:
            return a @ b
        from .io._onnx_conv import _gemm
        rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
        c = np.empty((rows.shape[0], b.shape[1]), a.dtype)
        with _scope():
            _gemm(rows, b, c)
        return c.reshape(a.shape[:-1] + (b.shape[1],))
    if math.prod(a.shape[-2:]) * b.shape[-1] <= _ONE_THREAD_MACS:
        return a @ b
    try:
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        return a @ b        # (NumPy's error)
    from .io._onnx_conv import _gemm
    A = np.broadcast_to(a, lead + a.shape[-2:])
    B = np.broadcast_to(b, lead + b.shape[-2:])
    c = np.empty(lead + (a.shape[-2], b.shape[-1]), a.dtype)
    with _scope():
        for i in np.ndindex(*lead):
            _gemm(A[i], B[i], c[i])
    return c
