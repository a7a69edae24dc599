"""A small Keras-style model container and the non-recurrent layers around RNNs.

``Model`` runs a chain of layers, or a graph of them that branches and merges (the merge
layers ``Concatenate``, ``Add``, ...), reads one input or several and may call a layer more
than once (a shared layer), passing a (B, T) boolean mask along with each tensor
with Keras's rules: ``Embedding(mask_zero=True)`` and ``Masking`` make a mask, ``Dense``,
``Dropout``, ``Activation``, ``TimeDistributed`` and the normalisation layers pass it on, a
recurrent layer consumes it and passes it on only when it returns sequences, and
``GlobalPooling1D`` (the average uses it), ``Flatten`` and ``RepeatVector`` end it, as do
the convolutions, the poolings, ``Reshape`` and ``Permute`` (Keras's drop it; a Reshape
that keeps the shape and the identity Permute keep it, as Keras 3 on JAX).  ``Dot`` (the
scores and context of Luong-style attention built from layers) ignores its inputs' masks
and gives none; ``Softmax`` applies one that reaches it as Keras's Softmax layer does and
passes it on.
``InputCast`` converts a model's input to its Keras ``Input``'s dtype, as Keras does
before the layers run.

The layers here work on numpy arrays, batch first (``(B, T, features)``), and hold their
weights in Keras's layout (``Dense.kernel`` is ``(in, out)``, ``Embedding.weights`` is
``(vocab, dim)``), so any importer (Keras, ONNX, ...) can build them directly.  Recurrent
layers are fastrnn core layers (:mod:`fastrnn.layers`) wrapped in :class:`KerasRNN` /
:class:`Bidirectional`, which add ``return_sequences`` / ``return_state`` /
``go_backwards`` / mask handling exactly as Keras does.

The layers live in four modules, all importable from here: this one (the container,
the recurrent wrappers and the simple layers, with save / restore),
:mod:`fastrnn._model_base` (``Layer`` and the activations), :mod:`fastrnn._model_conv`
(``Conv1D``, ``Pooling1D``, and the CRNN front-end's ``Conv2D``, ``Pooling2D``,
``Reshape``, ``Permute``) and :mod:`fastrnn._model_merge` (the merge layers, ``Dot``
among them, the attention layers and ``Softmax``).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from . import _threads
from ._model_base import (  # noqa: F401 (re-exported: the importers use them)
    Layer, _act_name, _default_name, _float_input, _index, activation_function, matmul)
from ._model_conv import (Conv1D, Conv2D, Cropping, GlobalPooling2D, Permute, Pooling1D,
                          Pooling2D, Reshape, UpSampling, ZeroPadding)
from ._model_ops import Op
from ._model_merge import (  # noqa: F401
    _ATTENTION_CLASSES, _MERGE_CLASSES, Add, AdditiveAttention, Attention, Average,
    Concatenate, Dot, Maximum, Minimum, MultiHeadAttention, Multiply, Softmax, Subtract,
    _AttentionBase, _Merge)

__all__ = [
    "Model", "Layer", "Embedding", "Masking", "Dense", "Dropout", "Activation",
    "TimeDistributed", "FoldTime", "UnfoldTime", "KerasRNN", "Bidirectional",
    "GlobalPooling1D", "Flatten",
    "RepeatVector", "LayerNormalization", "BatchNormalization", "Conv1D", "Pooling1D",
    "Conv2D", "Pooling2D", "Reshape", "Permute", "GlobalPooling2D", "ZeroPadding", "Cropping",
    "UpSampling",
    "Rescaling", "Normalization", "PReLU",
    "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot",
    "Softmax", "Attention", "AdditiveAttention", "MultiHeadAttention",
    "InputCast", "Op", "INPUT", "activation_function",
]


class Embedding(Layer):
    """Lookup ``weights[x]``; ``weights`` is ``(vocab, dim)``.  With ``mask_zero`` the
    output mask is ``x != 0``."""

    def __init__(self, weights, mask_zero: bool = False, name=None, dtype="float32"):
        super().__init__(name)
        w = np.asarray(weights)
        if w.ndim != 2:
            raise ValueError(f"Embedding weights must be 2-D (vocab, dim), got shape {w.shape}")
        self.weights = np.ascontiguousarray(w, dtype=dtype)
        self.mask_zero = bool(mask_zero)

    @property
    def input_dim(self):
        return self.weights.shape[0]

    @property
    def output_dim(self):
        return self.weights.shape[1]

    def call(self, x, mask=None):
        ids = np.asarray(x)
        if ids.dtype.kind == "i" and 0 < ids.size <= 64:
            # a few ids (a streaming step's tokens): checked in Python, looked up by take
            # (2.67 -> 0.79 us a call; NumPy's min / max reductions ~1.5 us)
            flat = ids.ravel().tolist()
            lo, hi = min(flat), max(flat)
            if lo < 0 or hi >= self.weights.shape[0]:
                raise ValueError(f"{self.name}: ids must lie in [0, {self.input_dim}), got "
                                 f"min {lo} max {hi}")
            return self.weights.take(ids, axis=0), (ids != 0) if self.mask_zero else None
        if ids.dtype.kind == "f":
            if not np.all(ids == np.round(ids)):
                raise ValueError(f"{self.name}: Embedding input must hold integer ids")
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: Embedding input must be integer ids, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            raise ValueError(f"{self.name}: ids must lie in [0, {self.input_dim}), got "
                             f"min {ids.min()} max {ids.max()}")
        out = self.weights[ids]
        # (no mask without mask_zero: Keras's Embedding.compute_mask gives none)
        return out, (ids != 0) if self.mask_zero else None

    def get_weights(self):
        return [self.weights]

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim, "mask_zero": self.mask_zero}

    def _extra_repr(self):
        return f"{self.input_dim}, {self.output_dim}" + (", mask_zero=True" if self.mask_zero else "")


class Masking(Layer):
    """Masks time steps whose features all equal ``mask_value`` and zeroes them (Keras)."""

    def __init__(self, mask_value: float = 0.0, name=None):
        super().__init__(name)
        self.mask_value = float(mask_value)

    def call(self, x, mask=None):
        if type(x) is np.ndarray:
            # (float rows in one pass: _kernels.masking_rows, None where it does not
            # apply; a call on one step of 32 features 3.6 -> 0.2 us)
            r = (_masking or _row_kernels()[3])(x, self.mask_value)
            if r is not None:
                return r
        x = np.asarray(x)
        keep = np.any(x != self.mask_value, axis=-1)
        # (zeros by where, as Keras's ops.where: x * keep made an inf mask_value's masked
        # steps NaN: an audit)
        return np.where(keep[..., None], x, x.dtype.type(0)), keep

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}

    def _extra_repr(self):
        return f"mask_value={self.mask_value}"


# Dense's activations by their code for _kernels.dense_call (a call of few rows)
_DENSE_ROW_ACTS = {"linear": 11, "sigmoid": 0, "tanh": 1, "relu": 2, "softmax": -1}
# the kernels' row passes (Dense, LayerNormalization, BatchNormalization, Masking), loaded
# by the first call needing them
_dense_call = _layer_norm = _batch_norm = _masking = None


def _row_kernels():
    """``(_kernels.dense_call, _kernels.layer_norm_rows, _kernels.batch_norm_rows,
    _kernels.masking_rows)``, kept in this module."""
    global _dense_call, _layer_norm, _batch_norm, _masking
    from . import _kernels
    assert _kernels.DENSE_ACTS == _DENSE_ROW_ACTS
    _dense_call, _layer_norm, _batch_norm, _masking = (
        _kernels.dense_call, _kernels.layer_norm_rows, _kernels.batch_norm_rows,
        _kernels.masking_rows)
    return _dense_call, _layer_norm, _batch_norm, _masking


class Dense(Layer):
    """``activation(x @ kernel + bias)`` on the last axis; ``kernel`` is ``(in, out)``."""

    def __init__(self, kernel, bias=None, activation="linear", name=None, dtype="float32"):
        super().__init__(name)
        k = np.asarray(kernel)
        if k.ndim != 2:
            raise ValueError(f"Dense kernel must be 2-D (in, out), got shape {k.shape}")
        self.kernel = np.ascontiguousarray(k, dtype=dtype)
        if bias is not None:
            b = np.asarray(bias, dtype=dtype).reshape(-1)
            if b.shape != (k.shape[1],):
                raise ValueError(f"Dense bias must have shape ({k.shape[1]},), got {b.shape}")
            bias = b
        self.bias = bias
        self.activation = activation
        self._act = activation_function(activation)
        # the activation's code for a call of few rows (_kernels.dense_call), or None
        name = activation.lower() if isinstance(activation, str) else None
        self._rows_act = _DENSE_ROW_ACTS.get("linear" if name in ("none", "identity")
                                             else name)

    @property
    def units(self):
        return self.kernel.shape[1]

    def call(self, x, mask=None):
        if self._rows_act is not None and type(x) is np.ndarray:
            # a few rows (a streaming step, a one-step call): one pass a row through the
            # kernels (_kernels.dense_call; None where it does not apply): Dense(256,
            # 256, tanh) on one row 4.2 -> 1.5 us, numpy's matmul, bias and activation
            # passes avoided
            y = (_dense_call or _row_kernels()[0])(x, self.kernel, self.bias,
                                                   self._rows_act)
            if y is not None:
                return y, mask
        x = np.asarray(x)
        if x.dtype.kind not in "fbiu":
            # (np.asarray(x, dtype=float32) parsed strings, converted objects and dropped
            # a complex input's imaginary part silently: an audit)
            raise TypeError(f"{self.name}: expected a floating-point array (or integers / "
                            f"bools), got dtype {x.dtype}")
        x = x.astype(self.kernel.dtype, copy=False)
        if x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"{self.name}: expected {self.kernel.shape[0]} input features, "
                             f"got {x.shape[-1]}")
        y = matmul(x, self.kernel)      # (scipy's BLAS beside the kernels: _model_base)
        if self.bias is not None:
            y += self.bias
        return self._act(y).astype(self.kernel.dtype, copy=False), mask

    def get_weights(self):
        return [self.kernel] + ([self.bias] if self.bias is not None else [])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.bias is not None,
                "activation": _act_name(self.activation)}

    def _extra_repr(self):
        return f"{self.kernel.shape[0]} -> {self.units}, activation={_act_name(self.activation)}"


class Dropout(Layer):
    """Identity at inference (Dropout, SpatialDropout1D, GaussianNoise, Identity, ...).
    ``keeps_mask``: whether a mask passes on (tf.keras 2's Identity ends it)."""

    def __init__(self, rate: float = 0.0, name=None, keeps_mask: bool = True):
        super().__init__(name)
        self.rate = float(rate)
        self.keeps_mask = bool(keeps_mask)

    def call(self, x, mask=None):
        return x, (mask if self.keeps_mask else None)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                **({} if self.keeps_mask else {"keeps_mask": False})}


class Activation(Layer):
    def __init__(self, activation, name=None):
        super().__init__(name)
        self.activation = activation
        self._act = activation_function(activation)

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        return self._act(x).astype(x.dtype, copy=False), mask

    def get_config(self):
        return {**super().get_config(), "activation": _act_name(self.activation)}

    def _extra_repr(self):
        return _act_name(self.activation)


class TimeDistributed(Layer):
    """Applies a layer to every time step: ``(B, T, ...)`` in, the layer on each step's
    ``(B, ...)``, ``(B, T, ...)`` out (Keras's TimeDistributed).  Any one-input,
    one-output layer: Dense, Dropout and Activation act on the last axis directly;
    others (Conv1D / Conv2D, pooling, Flatten, normalisation, Embedding, recurrent layers,
    another TimeDistributed) run once on the steps folded into the batch, ``(B*T, ...)``.
    ``masks="keras3"``: the mask of the input passes on unchanged (as Keras 3's); the
    wrapped layer sees none: a recurrent layer or a global pooling inside it on a masked
    input is refused (Keras 3 hands it one step's ``(B,)`` mask as its own), and a mask
    the wrapped layer makes (``Embedding(mask_zero=True)``, ``Masking``) is dropped, as
    Keras 3 drops it.  ``masks="keras2"`` (tf.keras 2's): the input's mask, folded as
    the steps are, is the wrapped layer's, and the output's mask is the one the wrapped
    layer gives, unfolded, or else the input's reduced to ``(B, T)`` (any of its other
    axes): a ``TimeDistributed(Embedding(mask_zero=True))`` masks the words a
    ``TimeDistributed(GRU)`` after it reads, and the sentences of padding alone are
    masked for a recurrent layer after that."""

    def __init__(self, layer: Layer, name=None, masks: str = "keras3"):
        super().__init__(name)
        self.masks = _masks_mode(masks, "TimeDistributed")
        if not isinstance(layer, Layer):
            raise TypeError(f"TimeDistributed wraps a fastrnn.model layer, got "
                            f"{type(layer).__name__}")
        if layer.n_inputs != 1 or layer.n_outputs() != 1 or isinstance(layer, InputCast):
            raise TypeError(f"TimeDistributed wraps a layer of one input and one output, "
                            f"got {type(layer).__name__} {layer.name!r}")
        self.layer = layer

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim < 3:
            raise ValueError(f"{self.name}: TimeDistributed needs (B, T, ...) input, got {x.shape}")
        if self.masks == "keras2":
            return self._call_keras2(x, mask)
        if isinstance(self.layer, (Dense, Dropout, Activation)):    # (the last axis alone)
            return self.layer.call(x, None)[0], mask
        if mask is not None and _reads_mask(self.layer):
            raise ValueError(f"{self.name}: TimeDistributed of {type(self.layer).__name__} "
                             "on a masked input is not supported (Keras 3 gives the wrapped "
                             "layer one step's (B,) mask)")
        B, T = x.shape[:2]
        y = np.asarray(self.layer.call(x.reshape((B * T,) + x.shape[2:]), None)[0])
        return y.reshape((B, T) + y.shape[1:]), mask

    def _call_keras2(self, x, mask):
        B, T = x.shape[:2]
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape[:2] != (B, T):
                raise ValueError(f"{self.name}: a mask of shape {mask.shape} for an input of "
                                 f"shape {x.shape}")
        y, m = self.layer.call(x.reshape((B * T,) + x.shape[2:]), None if mask is None
                               else mask.reshape((B * T,) + mask.shape[2:]))
        y = np.asarray(y)
        y = y.reshape((B, T) + y.shape[1:])
        if m is not None:
            m = np.asarray(m)
            return y, m.reshape((B, T) + m.shape[1:])
        if mask is None or mask.ndim == 2:
            return y, mask
        return y, mask.reshape(B, T, -1).any(-1)

    def get_weights(self):
        return self.layer.get_weights()

    def count_params(self) -> int:
        return self.layer.count_params()       # (a recurrent layer's: Keras's count)

    def get_config(self):
        return {**super().get_config(), "layer": self.layer.get_config(), "masks": self.masks}

    def _extra_repr(self):
        return repr(self.layer) + (", masks='keras2'" if self.masks == "keras2" else "")


class FoldTime(Layer):
    """``(B, T, ...)`` in, ``(B*T, ...)`` out: the steps folded into the batch, as a Keras
    TimeDistributed runs the model it wraps (the Keras loader puts that model's layers
    between a FoldTime and an :class:`UnfoldTime`).  A masked input is refused: Keras 3
    hands the wrapped model one step's ``(B,)`` mask, which fastrnn does not run."""

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim < 3:
            raise ValueError(f"{self.name}: FoldTime needs (B, T, ...) input, got shape "
                             f"{x.shape}")
        if mask is not None:
            raise ValueError(f"{self.name}: FoldTime (a TimeDistributed of a model) on a "
                             "masked input is not supported")
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), None


class UnfoldTime(Layer):
    """``[y, x]`` in: ``y`` of ``(B*T, ...)`` (computed from a :class:`FoldTime` of
    ``x``), ``x`` of ``(B, T, ...)``; ``y`` as ``(B, T, ...)`` out, with ``x``'s mask (a
    Keras 3 TimeDistributed passes its input's mask on; a mask of ``y`` is dropped), or
    with ``masks="keras2"`` ``y``'s mask unfolded where it has one (tf.keras 2's)."""

    n_inputs = 2

    def __init__(self, name=None, masks: str = "keras3"):
        super().__init__(name)
        self.masks = _masks_mode(masks, "UnfoldTime")

    def get_config(self):
        return {**super().get_config(), "masks": self.masks}

    def call(self, x, mask=None):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ValueError(f"{self.name}: UnfoldTime takes [y, x], two tensors")
        y, src = np.asarray(x[0]), np.shape(x[1])
        if len(src) < 2 or y.ndim < 1 or y.shape[0] != src[0] * src[1]:
            raise ValueError(f"{self.name}: UnfoldTime needs y of (B*T, ...) for x of "
                             f"(B, T, ...), got y {y.shape} and x {tuple(src)}")
        m = mask if isinstance(mask, (list, tuple)) and len(mask) == 2 else (None, None)
        if self.masks == "keras2" and m[0] is not None:
            ym = np.asarray(m[0])
            return y.reshape(tuple(src[:2]) + y.shape[1:]), \
                ym.reshape(tuple(src[:2]) + ym.shape[1:])
        return y.reshape(tuple(src[:2]) + y.shape[1:]), m[1]


def _masks_mode(masks, what):
    if masks not in ("keras3", "keras2"):
        raise ValueError(f"{what} masks must be 'keras3' or 'keras2', got {masks!r}"[:200])
    return masks


def _reads_mask(layer) -> bool:
    """Whether ``layer`` computes with the mask of its input (then a TimeDistributed of
    it cannot run on a masked input the way Keras does)."""
    return isinstance(layer, (KerasRNN, Bidirectional, GlobalPooling1D, Softmax,
                              TimeDistributed))


# the dtypes an InputCast rounds through (those numpy has) and those it gives (a model's)
_INPUT_DTYPES = ("float16", "float32", "float64")
_MODEL_DTYPES = ("float32", "float64")


def _dtype_name(v, allowed, what) -> str:
    name = None
    if v is not None:       # (np.dtype(None) is float64)
        try:
            name = np.dtype(v).name
        except (TypeError, ValueError):
            pass
    if name not in allowed:
        raise TypeError(f"{what} must be one of {', '.join(allowed)}, got {v!r}"[:200])
    return name


class InputCast(Layer):
    """The model's input converted to its Keras ``Input``'s dtype ``input_dtype``, then
    given in the model's ``dtype``: ``x.astype(input_dtype).astype(dtype)``.

    Keras converts each input of a model to its ``Input``'s dtype before any layer
    runs, and each layer then casts it to its own dtype: a model made under
    ``keras.config.set_dtype_policy("float64")`` with a default ``keras.Input`` (float32)
    computes in float64 on float32-ROUNDED inputs, which this layer reproduces (the Keras
    loader puts one after such an Input; an integer Input, an Embedding's ids, gets
    none).  Numbers of other kinds (ints, bools) are converted as the Input converts
    them; the mask passes on unchanged."""

    def __init__(self, input_dtype="float32", dtype="float32", name=None):
        super().__init__(name)
        self.input_dtype = _dtype_name(input_dtype, _INPUT_DTYPES, "InputCast input_dtype")
        self.dtype = _dtype_name(dtype, _MODEL_DTYPES, "InputCast dtype")

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.dtype.kind not in "fbiu":
            raise TypeError(f"{self.name}: expected numbers, got {x.dtype}")
        x = x.astype(self.input_dtype, copy=False)
        return x.astype(self.dtype, copy=False), mask

    def get_config(self):
        return {**super().get_config(), "input_dtype": self.input_dtype, "dtype": self.dtype}

    def _extra_repr(self):
        return f"{self.input_dtype} -> {self.dtype}"


def _data_format(v) -> str:
    if v not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {v!r}")
    return v


class GlobalPooling1D(Layer):
    """Keras's ``GlobalAveragePooling1D`` (``op="average"``) and ``GlobalMaxPooling1D``
    (``op="max"``): the mean or the maximum over the steps of ``(B, T, F)``
    (``data_format="channels_first"``: ``(B, F, T)``), ``(B, 1, F)`` with ``keepdims``.
    The average takes only the steps a mask keeps (a sequence with none gives NaN, as
    Keras's 0 / 0); the maximum ignores a mask, as Keras's does (which warns that it
    drops it).  The output has no mask."""

    def __init__(self, op: str = "average", data_format: str = "channels_last",
                 keepdims: bool = False, name=None):
        if op not in ("average", "max"):
            raise ValueError(f"op must be 'average' or 'max', got {op!r}")
        super().__init__(name or _default_name(
            "GlobalAveragePooling1D" if op == "average" else "GlobalMaxPooling1D"))
        self.op, self.data_format = op, _data_format(data_format)
        self.keepdims = bool(keepdims)

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        if x.ndim != 3:
            raise ValueError(f"{self.name}: expected (batch, steps, features) input, got "
                             f"shape {x.shape}")
        axis = 1 if self.data_format == "channels_last" else 2
        if self.op == "max" and not x.shape[axis]:
            raise ValueError(f"{self.name}: a max over 0 steps (input shape {x.shape}) has no "
                             "value")
        if self.op == "max":
            return x.max(axis=axis, keepdims=self.keepdims), None
        if mask is None:
            return x.mean(axis=axis, keepdims=self.keepdims, dtype=x.dtype), None
        m = np.asarray(mask, dtype=x.dtype)
        if m.shape != (x.shape[0], x.shape[axis]):
            raise ValueError(f"{self.name}: a mask of shape {m.shape} for input of shape "
                             f"{x.shape} (steps on axis {axis})")
        m = m[:, :, None] if axis == 1 else m[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            y = (x * m).sum(axis=axis, keepdims=self.keepdims) / m.sum(
                axis=axis, keepdims=self.keepdims)
        return y.astype(x.dtype, copy=False), None

    def get_config(self):
        return {**super().get_config(), "op": self.op, "data_format": self.data_format,
                "keepdims": self.keepdims}

    def _extra_repr(self):
        return f"{self.op}" + (", keepdims=True" if self.keepdims else "") + (
            ", channels_first" if self.data_format == "channels_first" else "")


class Flatten(Layer):
    """Keras's ``Flatten``: ``(B, ...)`` to ``(B, prod(...))`` (``channels_first``: the
    second axis moved last first).  The output has no mask."""

    def __init__(self, data_format: str = "channels_last", name=None):
        super().__init__(name)
        self.data_format = _data_format(data_format)

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"{self.name}: expected a batch, got a scalar")
        if self.data_format == "channels_first" and x.ndim > 2:
            x = x.transpose(0, *range(2, x.ndim), 1)
        # (the size, not -1: an empty batch could not be reshaped, an audit)
        return np.ascontiguousarray(x).reshape(x.shape[0], int(np.prod(x.shape[1:]))), None

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class RepeatVector(Layer):
    """Keras's ``RepeatVector(n)``: ``(B, F)`` to ``(B, n, F)`` (a sequence-to-sequence
    autoencoder's decoder input).  The output has no mask."""

    def __init__(self, n: int, name=None):
        super().__init__(name)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"RepeatVector n must be a positive int, got {n!r}")
        self.n = int(n)

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"{self.name}: RepeatVector needs (batch, features) input, got "
                             f"shape {x.shape}")
        return np.repeat(x[:, None, :], self.n, axis=1), None

    def get_config(self):
        return {**super().get_config(), "n": self.n}

    def _extra_repr(self):
        return f"n={self.n}"


def _axis_list(axis, what) -> list:
    """A normalisation layer's axes: ints (not the batch axis 0), at least one."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not axes or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a == 0
                       for a in axes):
        raise ValueError(f"{what} axis must be an int or a list of ints other than the "
                         f"batch axis 0, got {axis!r}"[:200])
    return [int(a) for a in axes]


def _axes(axis, ndim, name):
    """Sorted non-negative axes of an ``ndim``-D input (not the batch axis)."""
    out = sorted({int(a) % ndim if -ndim <= int(a) < ndim else -1 for a in axis})
    if not out or out[0] < 1:
        raise ValueError(f"{name}: axis {list(axis)} is out of range for a {ndim}-D input "
                         "(or the batch axis)")
    return out


class LayerNormalization(Layer):
    """Keras's ``LayerNormalization``: over ``axis`` (default the last), ``(x - mean) /
    sqrt(var + epsilon) * gamma + beta``, computed as Keras 3 does (``x * inv + (beta -
    mean * inv)``, ``inv = gamma / sqrt(var + epsilon)``); with ``rms_scaling`` Keras's
    ``x / sqrt(var + epsilon) * gamma``.  ``gamma`` / ``beta``: None where Keras's
    ``scale`` / ``center`` is off.  The mask passes through."""

    def __init__(self, gamma=None, beta=None, axis=-1, epsilon: float = 1e-3,
                 rms_scaling: bool = False, name=None, dtype="float32"):
        super().__init__(name)
        self.axis = _axis_list(axis, "LayerNormalization")
        self.epsilon = _epsilon(epsilon, "LayerNormalization")
        self.rms_scaling = bool(rms_scaling)
        self.gamma = None if gamma is None else np.ascontiguousarray(gamma, dtype=dtype)
        self.beta = None if beta is None else np.ascontiguousarray(beta, dtype=dtype)
        shapes = {np.shape(w) for w in (self.gamma, self.beta) if w is not None}
        if len(shapes) > 1:
            raise ValueError(f"LayerNormalization gamma and beta differ in shape: {shapes}")

    def call(self, x, mask=None):
        if type(x) is np.ndarray and self.axis == [-1]:
            # over the last axis: one pass a row (_kernels.layer_norm_rows; None where it
            # does not apply): a streaming step's LayerNormalization(128) 20.7 -> 0.5 us
            y = (_layer_norm or _row_kernels()[1])(x, self.gamma, self.beta, self.epsilon,
                                                   self.rms_scaling)
            if y is not None:
                return y, mask
        x = _float_input(x, self.name)
        axes = _axes(self.axis, x.ndim, self.name)
        shape = [1] * x.ndim
        for a in axes:
            shape[a] = x.shape[a]
        for w in (self.gamma, self.beta):
            if w is not None and w.size != int(np.prod([x.shape[a] for a in axes])):
                raise ValueError(f"{self.name}: weights of shape {w.shape} for input shape "
                                 f"{x.shape} over axes {axes}")
        dt = np.result_type(x.dtype, np.float32)
        x = x.astype(dt, copy=False)
        ax = tuple(axes)
        gamma = None if self.gamma is None else self.gamma.astype(dt).reshape(shape)
        beta = None if self.beta is None else self.beta.astype(dt).reshape(shape)
        var = x.var(axis=ax, keepdims=True)
        inv = (1 / np.sqrt(var + dt.type(self.epsilon))).astype(dt, copy=False)
        if self.rms_scaling:
            out = x * inv
            if gamma is not None:
                out = out * gamma
            return out, mask
        if gamma is not None:
            inv = inv * gamma
        res = -x.mean(axis=ax, keepdims=True) * inv
        if beta is not None:
            res = res + beta
        return x * inv + res, mask

    def get_weights(self):
        return [w for w in (self.gamma, self.beta) if w is not None]

    def get_config(self):
        return {**super().get_config(), "axis": list(self.axis), "epsilon": self.epsilon,
                "center": self.beta is not None, "scale": self.gamma is not None,
                "rms_scaling": self.rms_scaling}

    def _extra_repr(self):
        return f"axis={self.axis}, epsilon={self.epsilon}" + (
            ", rms_scaling=True" if self.rms_scaling else "")


class BatchNormalization(Layer):
    """Keras's ``BatchNormalization`` at inference: with the moving statistics,
    ``x * inv + (beta - moving_mean * inv)``, ``inv = gamma / sqrt(moving_variance +
    epsilon)`` along ``axis`` (default the last), as Keras 3 computes it.  ``gamma`` /
    ``beta``: None where ``scale`` / ``center`` is off.  The mask passes through."""

    def __init__(self, moving_mean, moving_variance, gamma=None, beta=None, axis: int = -1,
                 epsilon: float = 1e-3, name=None, dtype="float32"):
        super().__init__(name)
        self.moving_mean = np.ascontiguousarray(moving_mean, dtype=dtype).reshape(-1)
        self.moving_variance = np.ascontiguousarray(moving_variance, dtype=dtype).reshape(-1)
        self.gamma = None if gamma is None else np.ascontiguousarray(gamma, dtype=dtype).reshape(-1)
        self.beta = None if beta is None else np.ascontiguousarray(beta, dtype=dtype).reshape(-1)
        n = self.moving_mean.size
        if any(w is not None and w.size != n
               for w in (self.moving_variance, self.gamma, self.beta)):
            raise ValueError("BatchNormalization weights differ in size")
        (self.axis,) = _axis_list([axis], "BatchNormalization")
        self.epsilon = _epsilon(epsilon, "BatchNormalization")

    def call(self, x, mask=None):
        if type(x) is np.ndarray and self.axis in (-1, x.ndim - 1):
            # (over the last axis in one pass, the same bits: _kernels.batch_norm_rows,
            # None where it does not apply; a call on one step of 256 features 6.6 ->
            # 0.9 us)
            y = (_batch_norm or _row_kernels()[2])(x, self.moving_mean, self.moving_variance,
                                                   self.gamma, self.beta, self.epsilon)
            if y is not None:
                return y, mask
        x = _float_input(x, self.name)
        (a,) = _axes([self.axis], x.ndim, self.name)
        if x.shape[a] != self.moving_mean.size:
            raise ValueError(f"{self.name}: expected {self.moving_mean.size} features on axis "
                             f"{a}, got input shape {x.shape}")
        dt = np.result_type(x.dtype, np.float32)
        shape = [1] * x.ndim
        shape[a] = x.shape[a]

        def b(w):
            return w.astype(dt).reshape(shape)
        inv = (1 / np.sqrt(b(self.moving_variance) + dt.type(self.epsilon))).astype(dt)
        if self.gamma is not None:
            inv = inv * b(self.gamma)
        res = -b(self.moving_mean) * inv
        if self.beta is not None:
            res = res + b(self.beta)
        return x.astype(dt, copy=False) * inv + res, mask

    def get_weights(self):
        return [w for w in (self.gamma, self.beta) if w is not None] + [
            self.moving_mean, self.moving_variance]

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.beta is not None, "scale": self.gamma is not None}

    def _extra_repr(self):
        return f"{self.moving_mean.size}, axis={self.axis}, epsilon={self.epsilon}"


class Rescaling(Layer):
    """Keras's ``Rescaling``: ``x * scale + offset`` (each a number, or an array
    broadcast against the input's last axes).  ``keeps_mask``: whether a mask passes on
    (Keras 3's does; tf.keras 2's ends it)."""

    def __init__(self, scale=1.0, offset=0.0, keeps_mask: bool = True, name=None,
                 dtype="float32"):
        super().__init__(name)
        self.scale = np.asarray(scale, dtype=dtype)
        self.offset = np.asarray(offset, dtype=dtype)
        for k, v in (("scale", self.scale), ("offset", self.offset)):
            if not np.isfinite(v).all():
                raise ValueError(f"Rescaling {k} must be finite, got {v.tolist()!r}"[:200])
        self.keeps_mask = bool(keeps_mask)

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        dt = np.result_type(x.dtype, self.scale.dtype)
        try:
            y = x.astype(dt, copy=False) * self.scale.astype(dt) + self.offset.astype(dt)
        except ValueError:
            raise ValueError(f"{self.name}: scale {self.scale.shape} and offset "
                             f"{self.offset.shape} do not broadcast against input shape "
                             f"{x.shape}") from None
        return y, (mask if self.keeps_mask else None)

    def get_weights(self):
        return []

    def get_config(self):
        return {**super().get_config(), "scale": self.scale.tolist(),
                "offset": self.offset.tolist(), "keeps_mask": self.keeps_mask,
                "dtype": self.scale.dtype.name}

    def _extra_repr(self):
        return f"scale={self.scale.tolist()}, offset={self.offset.tolist()}"


class Normalization(Layer):
    """Keras's ``Normalization`` (the preprocessing layer, adapted or given its
    statistics): ``(x - mean) / max(sqrt(variance), 1e-7)`` (``invert``: ``mean + x *
    max(sqrt(variance), 1e-7)``), the statistics kept per position of the ``axis`` axes
    (default the last; ``()``: one for all).  ``mean`` / ``variance`` of fewer axes than
    kept are aligned with the last kept axes, as Keras does.  ``keeps_mask``: whether a
    mask passes on (Keras 3's does; tf.keras 2's ends it).  ``adapted``: the statistics
    are Keras weights (with a sample count), not config values (what count_params
    counts, as Keras)."""

    EPSILON = 1e-7          # (Keras's backend.epsilon())

    def __init__(self, mean, variance, axis=-1, invert: bool = False,
                 keeps_mask: bool = True, adapted: bool = True, name=None, dtype="float32"):
        super().__init__(name)
        empty = axis is None or (isinstance(axis, (list, tuple)) and not axis)
        self.axis = [] if empty else _axis_list(axis, "Normalization")
        # (np.array: ascontiguousarray makes a number 1-D)
        self.mean = np.array(mean, dtype=dtype, order="C")
        self.variance = np.array(variance, dtype=dtype, order="C")
        if self.mean.shape != self.variance.shape:
            raise ValueError(f"Normalization mean {self.mean.shape} and variance "
                             f"{self.variance.shape} differ in shape")
        if self.mean.ndim > len(self.axis):
            raise ValueError(f"Normalization statistics of {self.mean.ndim} axes for "
                             f"{len(self.axis)} kept axes {self.axis}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.variance).all()) \
                or (self.variance < 0).any():
            raise ValueError("Normalization mean and variance must be finite, the variance "
                             ">= 0")
        self.invert = bool(invert)
        self.keeps_mask = bool(keeps_mask)
        self.adapted = bool(adapted)

    def count_params(self) -> int:
        # (Keras's: mean, variance and the count where adapted; none where configured)
        return self.mean.size + self.variance.size + 1 if self.adapted else 0

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        keep = sorted(_axes(self.axis, x.ndim, self.name)) if self.axis else []
        shape = [1] * x.ndim
        # (statistics of fewer axes than kept: aligned with the last kept axes)
        for a, n in zip(keep[len(keep) - self.mean.ndim:], self.mean.shape):
            if n not in (1, x.shape[a]):
                raise ValueError(f"{self.name}: statistics of shape {self.mean.shape} for "
                                 f"input shape {x.shape} over axes {keep}")
            shape[a] = n
        dt = np.result_type(x.dtype, np.float32)
        x = x.astype(dt, copy=False)
        mean = self.mean.astype(dt).reshape(shape)
        den = np.maximum(np.sqrt(self.variance.astype(dt)), dt.type(self.EPSILON)).reshape(shape)
        y = mean + x * den if self.invert else (x - mean) / den
        return y, (mask if self.keeps_mask else None)

    def get_weights(self):
        return [self.mean, self.variance]

    def get_config(self):
        return {**super().get_config(), "axis": list(self.axis), "invert": self.invert,
                "keeps_mask": self.keeps_mask, "adapted": self.adapted}

    def _extra_repr(self):
        return f"axis={self.axis}" + (", invert=True" if self.invert else "")


class PReLU(Layer):
    """Keras's ``PReLU``: ``relu(x) - alpha * relu(-x)``, ``alpha`` learned per position
    of the input after the batch axis (size 1 along Keras's ``shared_axes``).  The mask
    passes on."""

    def __init__(self, alpha, name=None, dtype="float32"):
        super().__init__(name)
        self.alpha = np.ascontiguousarray(alpha, dtype=dtype)
        if not np.isfinite(self.alpha).all():
            raise ValueError("PReLU alpha must be finite")

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        if self.alpha.ndim != x.ndim - 1 or any(
                a not in (1, n) for a, n in zip(self.alpha.shape, x.shape[1:])):
            raise ValueError(f"{self.name}: alpha of shape {self.alpha.shape} for input "
                             f"shape {x.shape}")
        dt = np.result_type(x.dtype, np.float32)
        x = x.astype(dt, copy=False)
        return np.maximum(x, 0) - self.alpha.astype(dt) * np.maximum(-x, 0), mask

    def get_weights(self):
        return [self.alpha]

    def _extra_repr(self):
        return f"alpha {self.alpha.shape}"


class KerasRNN(Layer):
    """A fastrnn core layer (one direction, one layer, ``batch_first=True``) used the way
    Keras uses an RNN layer.

    * ``go_backwards``: reads the sequence backwards; with ``return_sequences`` the output
      is in Keras's order (output[:, 0] belongs to the *last* input step).
    * ``mask`` (B, T): masked steps carry the state; the output repeats the previous one, or
      is zero with ``zero_output_for_mask`` (what Bidirectional forces when returning
      sequences).  The last output is the output of the last step read.
    * ``return_state``: outputs ``[output, h]`` (LSTM ``[output, h, c]``).
    """

    def __init__(self, core, return_sequences=False, return_state=False,
                 zero_output_for_mask=False, name=None):
        super().__init__(name)
        if core.num_layers != 1 or core.bidirectional:
            raise ValueError("KerasRNN wraps a single-layer, single-direction core layer")
        if not core.batch_first:
            raise ValueError("KerasRNN wraps a batch_first core layer")
        self.core = core
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.zero_output_for_mask = bool(zero_output_for_mask)

    @property
    def go_backwards(self):
        return self.core.go_backwards

    @property
    def units(self):
        return self.core.hidden_size

    def _last_only(self, mask) -> bool:
        """Whether the last output is the final state h (no masked step's output made
        zero), so the core need not keep per-step outputs."""
        return not self.return_sequences and (mask is None or not self.zero_output_for_mask)

    def run(self, x, mask=None, last=False, initial_state=None):
        """(sequence output in Keras order (B, T, H), list of final states); ``last``:
        the last output (B, H) instead, as the final h (see _last_only).
        ``initial_state``: Keras's list of (B, H) states (LSTM ``[h, c]``), or None."""
        x = _rnn_input(x, self.name, self.core)
        m = None if mask is None else np.asarray(mask, dtype=bool)
        out, state = self.core(x, self._hx(initial_state, 1), mask=m,
                               masked_output="zero" if self.zero_output_for_mask else "carry",
                               return_sequences=not last)
        states = [state[0][0], state[1][0]] if isinstance(state, tuple) else [state[0]]
        if self.core.go_backwards and not last:
            out = out[:, ::-1]
        return out, states

    def n_states(self) -> int:
        """How many state tensors the layer takes and returns (LSTM 2, else 1)."""
        return 2 if self.core._cell == "LSTM" else 1

    def n_outputs(self) -> int:
        return 1 + self.n_states() if self.return_state else 1

    def _hx(self, initial_state, D):
        """Keras's initial states (``D`` directions' lists, one after the other, each
        ``n_states()`` (B, H) arrays) as the core's ``hx`` (None: zeros)."""
        if initial_state is None:
            return None
        n = self.n_states()
        st = list(initial_state)
        if len(st) != n * D:
            raise ValueError(f"{self.name}: expected {n * D} initial state(s), got {len(st)}")
        hs = [np.stack([np.asarray(st[d * n + k]) for d in range(D)]) for k in range(n)]
        return tuple(hs) if n == 2 else hs[0]

    def call(self, x, mask=None, initial_state=None):
        if self._last_only(mask):
            y, states = self.run(x, mask, last=True, initial_state=initial_state)
            if self.return_state:       # (the layer's last output may be a view of h)
                y = y.copy()
            out_mask = None
        elif self.return_sequences:
            seq, states = self.run(x, mask, initial_state=initial_state)
            y, out_mask = np.ascontiguousarray(seq), mask
        else:
            seq, states = self.run(x, mask, initial_state=initial_state)
            y, out_mask = _last(seq, x), None
        if self.return_state:
            return [y] + states, out_mask
        return y, out_mask

    def get_weights(self):
        return list(self.core.state_dict().values())

    def count_params(self) -> int:
        """The weights as Keras counts them: the core's, less the second bias vector it
        keeps where Keras keeps one (LSTM, SimpleRNN, GRU with ``reset_after=False``:
        ``bias_ih + bias_hh`` is Keras's bias); a GRU with ``reset_after`` keeps both, as
        Keras does (``bias (2, 3H)``).  (It counted both: an LSTM(2) on 3 features as 56,
        Keras 48: an audit.)"""
        c = self.core
        n = super().count_params()
        keras_like = not (c.proj_size or c.peepholes or c.input_forget)
        if c.bias and keras_like and not (c._cell == "GRU" and c.reset_after):
            n -= {"LSTM": 4, "GRU": 3}.get(c._cell, 1) * c.hidden_size
        return n

    def get_config(self):
        return {**super().get_config(), "core": self.core.get_config(),
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "zero_output_for_mask": self.zero_output_for_mask}

    def _extra_repr(self):
        flags = [f for f in ("return_sequences", "return_state", "zero_output_for_mask")
                 if getattr(self, f)]
        return repr(self.core) + (", " + ", ".join(f + "=True" for f in flags) if flags else "")


def _rnn_input(x, name, core):
    """A recurrent layer's input, checked with the layer's name: ``(batch, time,
    core.input_size)``; integers and bools converted to the core's dtype, as Dense
    converts them (the core named no layer in its errors, and refused integers)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x                            # (a torch tensor: the core takes it)
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected (batch, time, features) input, got {x.shape}")
    size = getattr(core, "input_size", None)
    if size is not None and x.shape[2] != size:
        raise ValueError(f"{name}: expected {size} input features, got input shape "
                         f"{x.shape}")
    if x.dtype.kind in "biu":
        x = x.astype(getattr(core, "dtype", np.float32))
    return x


def _last(seq, x):
    if seq.shape[1] == 0:
        return np.zeros((seq.shape[0], seq.shape[2]), seq.dtype)
    return np.ascontiguousarray(seq[:, -1])


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _merge_directions(mm, y, yb):
    """A Bidirectional's two outputs merged by ``merge_mode`` (None: not merged)."""
    if mm == "concat":
        return np.concatenate([y, yb], axis=-1)
    if mm == "sum":
        return y + yb
    if mm == "mul":
        return y * yb
    if mm == "ave":
        return (y + yb) / 2
    return None
_REFUSE_LOCK = threading.Lock()        # (Bidirectional._refuse)


class Bidirectional(Layer):
    """Keras's Bidirectional: ``forward`` and ``backward`` are :class:`KerasRNN` reading
    in opposite directions (the backward one's core normally has ``go_backwards=True``;
    the same direction is refused, as Keras refuses it); its sequence output is flipped
    back to input order before merging with ``merge_mode`` (concat, sum, mul, ave or None
    for a ``[forward, backward]`` pair).  As Keras's, it sets both layers'
    ``zero_output_for_mask`` to ``return_sequences`` (a masked step's output is zero in
    a returned sequence).  With ``return_state`` the forward states then the backward
    states follow the output(s)."""

    def __init__(self, forward: KerasRNN, backward: KerasRNN, merge_mode="concat", name=None):
        super().__init__(name)
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {_MERGE_MODES}, got {merge_mode!r}")
        if forward.return_sequences != backward.return_sequences or \
                forward.return_state != backward.return_state:
            raise ValueError("forward and backward layers must agree on return_sequences "
                             "and return_state")
        if forward.go_backwards == backward.go_backwards:
            # (Keras refuses it too; the backward output is flipped back to input order
            # below, which would misalign a forward-reading one: an audit)
            raise ValueError(
                "the forward and backward layers must read in opposite directions: give "
                "the backward layer's core go_backwards=True (both have go_backwards="
                f"{forward.go_backwards})")
        # as Keras's Bidirectional: both directions output zeros at masked steps when
        # returning sequences, else the last unmasked step's output (a hand-built pair
        # left at KerasRNN's default repeated the previous output there: 0.06 off Keras,
        # an audit)
        forward.zero_output_for_mask = backward.zero_output_for_mask = \
            forward.return_sequences
        self.forward, self.backward = forward, backward
        self.merge_mode = merge_mode
        self._fused = None

    @property
    def return_sequences(self):
        return self.forward.return_sequences

    @property
    def return_state(self):
        return self.forward.return_state

    def fuse(self, core) -> None:
        """Run both directions with one bidirectional core layer (``bidirectional=True``,
        ``batch_first=True``) holding the forward weights then the ``_reverse`` ones; only
        valid when the forward layer reads forwards and the backward one backwards."""
        if self.forward.go_backwards or not self.backward.go_backwards:
            raise ValueError("fusing needs a forward-reading forward layer and a "
                             "backward-reading backward layer")
        if not (core.bidirectional and core.batch_first and core.num_layers == 1):
            raise ValueError("fuse() needs a single-layer bidirectional batch_first core")
        if self.forward.zero_output_for_mask != self.backward.zero_output_for_mask:
            raise ValueError("both directions must treat masked outputs alike to be fused")
        self._fused = core
        self._fused_from = self._versions()

    def _versions(self):
        """The directions' weights versions (a fused core made from other ones is
        brought up to date before a call: _run_both)."""
        return self.forward.core._weights_version, self.backward.core._weights_version

    def _fused_config(self) -> dict:
        """The config of the one bidirectional core that runs both directions (the
        forward layer's, both ways; weights to follow: :meth:`_fuse_with`)."""
        from .layers import _WEIGHTS_FOLLOW
        return {**self.forward.core.get_config(), "bidirectional": True,
                "go_backwards": False, "seed": _WEIGHTS_FOLLOW}

    def _directions_state(self) -> dict:
        """The directions' weights as one bidirectional core's state dict (the backward
        direction's as ``*_reverse``)."""
        sd = dict(self.forward.core.parameters())
        sd.update({k + "_reverse": v for k, v in self.backward.core.parameters().items()})
        return sd

    def _fuse_with(self, fused) -> None:
        """Loaders: load the directions' weights into ``fused`` (made from
        :meth:`_fused_config`; it keeps the directions' arrays where they are its
        layout, else copies them once), :meth:`fuse` it, and let the directions' layers
        hold its arrays, so a loaded model keeps each weight once (a Keras Bidirectional
        LSTM(512) of 12.6 MB held 26.5 MB).  ``load_state_dict`` on a direction still
        replaces its arrays, as before (the fused core takes them again before the next
        call: _run_both)."""
        f, r = self.forward.core, self.backward.core
        # (the fused core keeps the directions' own arrays where it can: they share
        # them from here on anyway, so no copy is made)
        fused.load_state_dict(self._directions_state(), _adopt=set())
        fused.num_threads = f.num_threads
        self.fuse(fused)
        for name, arr in fused._params.items():
            rev = name.endswith("_reverse")
            core = r if rev else f
            own = name[:-len("_reverse")] if rev else name
            mine = core._params.get(own)
            if mine is not None and mine.shape == arr.shape and mine.dtype == arr.dtype:
                core._params[own] = arr
                core.mark_weights_changed()
        self._fused_from = self._versions()

    def _refuse(self) -> None:
        """The fused core brought up to the directions' weights, one caller at a time:
        their versions read before their arrays (a load_state_dict landing after that
        leaves them newer than recorded: the next call fuses again); the directions'
        arrays are left alone (_fuse_with's rebinding, run here, undid a
        load_state_dict another thread made meanwhile, and recorded the old weights as
        current: an audit)."""
        with _REFUSE_LOCK:
            seen = self._versions()
            if getattr(self, "_fused_from", None) == seen:
                return
            self._fused.load_state_dict(self._directions_state(), _adopt=set())
            self._fused_from = seen

    def _run_both(self, x, mask, last=False, initial_state=None):
        """(forward output, backward output in the backward layer's Keras order, the
        states); ``last``: each direction's last output (B, H) instead (_last_only).
        ``initial_state``: Keras's list, the forward states then the backward ones."""
        init_f = init_b = None
        if initial_state is not None:
            st = list(initial_state)
            n = self.forward.n_states()
            if len(st) != 2 * n:
                raise ValueError(f"{self.name}: expected {2 * n} initial states, got {len(st)}")
            init_f, init_b = st[:n], st[n:]
        if self._fused is None:
            y, s1 = self.forward.run(x, mask, last, init_f)
            yb, s2 = self.backward.run(x, mask, last, init_b)
            return y, yb, s1 + s2
        if getattr(self, "_fused_from", None) != self._versions():
            # a direction's weights changed (load_state_dict, an optimizer step, an edit
            # announced by mark_weights_changed): the fused core takes them again (it
            # ran the old ones: an audit)
            self._refuse()
        x = _rnn_input(x, self.name, self._fused)
        m = None if mask is None else np.asarray(mask, dtype=bool)
        hx = None if initial_state is None else self.forward._hx(init_f + init_b, 2)
        out, state = self._fused(x, hx, mask=m, masked_output="zero"
                                 if self.forward.zero_output_for_mask else "carry",
                                 return_sequences=not last)
        H = self._fused.hidden_size
        y, yb_aligned = out[..., :H], out[..., H:]
        if isinstance(state, tuple):
            s1, s2 = [state[0][0], state[1][0]], [state[0][1], state[1][1]]
        else:
            s1, s2 = [state[0]], [state[1]]
        return y, (yb_aligned if last else yb_aligned[:, ::-1]), s1 + s2

    def call(self, x, mask=None, initial_state=None):
        last = self.forward._last_only(mask) and self.backward._last_only(mask)
        y, yb, states = self._run_both(x, mask, last, initial_state)  # yb in Keras order of the backward layer
        if self.return_sequences:
            y, yb = y, yb[:, ::-1]                       # back to input order
            out_mask = mask
        else:
            if not last:
                y, yb = _last(y, x), _last(yb, x)
            out_mask = None
        out = _merge_directions(self.merge_mode, y, yb)
        if out is None:             # (merge_mode None: both)
            outs = [np.ascontiguousarray(y), np.ascontiguousarray(yb)]
            return (outs + states if self.return_state else outs), out_mask
        if self.return_state:
            return [out] + states, out_mask
        return out, out_mask

    def get_weights(self):
        return self.forward.get_weights() + self.backward.get_weights()

    def count_params(self) -> int:
        return self.forward.count_params() + self.backward.count_params()

    def n_outputs(self) -> int:
        return ((1 if self.merge_mode is not None else 2)
                + (2 * self.forward.n_states() if self.return_state else 0))

    def output_mask(self, index: int, mask):
        # (merge_mode=None: both directions' sequences carry the mask, as in Keras)
        return mask if index < (1 if self.merge_mode is not None else 2) else None

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "forward": self.forward.get_config(), "backward": self.backward.get_config()}

    def _extra_repr(self):
        flags = [f + "=True" for f in ("return_sequences", "return_state") if getattr(self, f)]
        parts = [f"forward={self.forward.core!r}", f"backward={self.backward.core!r}",
                 f"merge_mode={self.merge_mode!r}"] + flags
        return ", ".join(parts) + (", fused" if self._fused is not None else "")


# ----------------------------------------------------------------------------- container

INPUT = -1
"""The model's inputs in a tensor reference: ``(INPUT, k)`` is input ``k`` (``(INPUT, 0)``
the first, or only, one)."""


class Model:
    """Layers run one after the other, masks flowing as in Keras: a chain, or a graph
    (layers that branch and merge).

    ``inputs``: None for a chain (each layer reads the first tensor of the one before
    it, the first layer the model's input); for a graph, one entry a layer: the
    ``(layer_index, tensor_index)`` references it reads (``(INPUT, k)``: the model's input
    ``k``), each to an earlier layer, so ``layers`` is in an order they can run in.  A
    merge layer (:class:`Concatenate`, :class:`Add`, ...) reads a list of one or more,
    every other layer one (``[(2, 0)]`` or just ``(2, 0)``).  Each tensor carries its own
    mask (:meth:`Layer.output_mask`); the model's inputs start without one.

    ``n_inputs`` / ``input_names``: how many inputs the model takes (default: as many as
    ``input_names``, else one) and their names.  A model of one input is called with one
    array; one of several with a list (or tuple) of arrays in order, or a dict by input
    name (``model({"text": ids, "num": feats})``) where the names are known.

    A layer object may stand at several positions of ``layers``: a shared layer, called
    once a position with the same weights (Keras's layer used more than once; the
    weights are counted and saved once).

    ``outputs``: which tensors the model returns, as ``(layer_index, tensor_index)`` pairs
    (a layer with ``return_state`` or ``merge_mode=None`` produces several tensors); by
    default everything the last layer produces.  ``predict``/``__call__`` return an array
    when there is one output, else a list.

    ``initial_states``: ``{layer_index: [(layer_index, tensor_index), ...]}``: a recurrent
    layer (:class:`KerasRNN`, :class:`Bidirectional`) that starts from states an earlier
    layer returned (Keras's ``initial_state=[h, c]`` of an encoder-decoder chain), in
    Keras's order; the others start from zeros.
    """

    # (what models pickled before multi-input models take)
    _n_inputs = 1
    input_names = None

    def __init__(self, layers: Sequence[Layer], outputs=None, name: str = "model",
                 initial_states=None, inputs=None, n_inputs: int | None = None,
                 input_names: Sequence[str] | None = None):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a Model needs at least one layer")
        for l in self.layers:
            if not isinstance(l, Layer):
                raise TypeError(f"Model layers must be fastrnn.model.Layer objects, got {l!r}")
        self.input_names, self._n_inputs = _check_input_names(n_inputs, input_names)
        if outputs is not None:
            outputs = [_ref(self.layers, r, len(self.layers), "output") for r in outputs]
        self.outputs = outputs
        self.name = name
        self.initial_states = _check_initial_states(self.layers, initial_states)
        self.inputs = _check_inputs(self.layers, inputs, self._n_inputs)
        if self.inputs is None:
            for i, l in enumerate(self.layers):
                if l.n_inputs != 1:
                    raise ValueError(f"layer {i} ({l.name!r}, {type(l).__name__}) merges "
                                     "several tensors: give the model's inputs= graph")
        else:
            _check_used(self)

    @property
    def n_inputs(self) -> int:
        """How many inputs the model takes."""
        return self._n_inputs

    def __call__(self, x, mask=None, num_threads: int | None = None):
        """``x``: the input (one array), or for a model of several inputs a list / tuple
        of them in order or a dict by input name; ``mask``: the inputs' masks alike (or
        None).  ``num_threads``: for every layer of this call that has no count of its
        own (default: the process's; see :mod:`fastrnn._threads`)."""
        xs, masks = self._feed(x, mask)
        with _threads.CALL_SCOPE:        # its layers share one decision (see _threads)
            if num_threads is None:       # (the common case: no thread-local count to set)
                return self._call(xs, masks)
            with _threads.threads_for_calls(num_threads):
                return self._call(xs, masks)

    # ---- the inputs of a call

    def _input_label(self, k) -> str:
        return f"input {self.input_names[k]!r}" if self.input_names else f"input {k}"

    def _feed(self, x, mask):
        """The inputs of a call and their masks as lists, one entry an input, checked:
        a model of one input takes its array as given (or a dict of it by name)."""
        n = self.n_inputs
        if n == 1 and isinstance(x, (list, tuple)) and x \
                and all(hasattr(a, "ndim") and hasattr(a, "__array__") for a in x):
            # a list of arrays, as Keras takes a model's inputs: its one input
            if len(x) > 1:
                raise ValueError(f"model {self.name!r} takes 1 input, got a "
                                 f"{type(x).__name__} of {len(x)} arrays (a batch is one "
                                 "array: np.stack them)")
            x = x[0]
        if n == 1 and not isinstance(x, Mapping):
            xs = [x]
        else:
            xs = self._per_input(x, "arrays")
        if mask is None:
            masks = [None] * n
        else:
            masks = [mask] if n == 1 and not isinstance(mask, Mapping) else \
                self._per_input(mask, "masks")
        # torch tensors as arrays (one that requires grad, a bfloat16 one: the layers'
        # np.asarray raised torch's errors, where a core layer takes them: an audit)
        xs = [_torch_free(a, self._input_label(k)) for k, a in enumerate(xs)]
        masks = [_torch_free(m, f"mask of {self._input_label(k)}")
                 for k, m in enumerate(masks)]
        for k, a in enumerate(xs):
            if a is None:
                raise TypeError(f"model {self.name!r}: {self._input_label(k)} is None")
        if n > 1:
            xs = [np.asarray(a) for a in xs]
            for k, a in enumerate(xs):
                if a.ndim == 0:
                    raise ValueError(f"model {self.name!r}: {self._input_label(k)} must be "
                                     "an array with a batch axis, got a scalar")
            if len({a.shape[0] for a in xs}) > 1:
                raise ValueError(f"model {self.name!r}: the inputs disagree on the batch "
                                 "size: " + ", ".join(f"{self._input_label(k)} has "
                                                      f"{a.shape[0]}" for k, a in enumerate(xs)))
        return xs, masks

    def _per_input(self, v, what):
        """``v`` (a list / tuple in order, or a dict by input name) as a list in order."""
        n, names = self.n_inputs, self.input_names
        known = f" ({', '.join(map(repr, names))})" if names else ""
        if isinstance(v, Mapping):
            if not names:
                raise ValueError(f"model {self.name!r} does not know its inputs' names: pass "
                                 f"its {n} input {what} as a list, not a dict")
            unknown = [k for k in v if k not in names]
            if unknown:
                raise ValueError(f"model {self.name!r}: unknown input name(s) "
                                 f"{', '.join(map(repr, unknown))}; its inputs are "
                                 f"{', '.join(map(repr, names))}"[:500])
            missing = [k for k in names if k not in v]
            if missing:
                raise ValueError(f"model {self.name!r}: missing input(s) "
                                 f"{', '.join(map(repr, missing))}; its inputs are "
                                 f"{', '.join(map(repr, names))}"[:500])
            return [v[k] for k in names]
        if isinstance(v, (list, tuple)):
            if len(v) != n:
                raise ValueError(f"model {self.name!r} takes {n} inputs{known}, got "
                                 f"{len(v)} {what}")
            return list(v)
        raise ValueError(f"model {self.name!r} takes {n} inputs{known}: pass a list or tuple "
                         f"of {n} {what}{', or a dict by input name' if names else ''}, not "
                         f"{type(v).__name__}")

    # ---- running

    def _graph(self):
        """Each layer's input references (a chain's too)."""
        graph = getattr(self, "inputs", None)        # (pickles of older versions)
        return graph if graph is not None else \
            [[(i - 1, 0)] for i in range(len(self.layers))]

    def _call(self, xs, masks, with_mask=False, run=None):
        """Run the layers on the inputs ``xs`` (a list, one array an input) and their
        ``masks``, keeping each layer's outputs until their last reader has run
        (``with_mask``: a model of the last layer's one output returns (it, its mask);
        ``run(i, layer, x, mask, initial_state)``: runs a layer instead of its call, as
        :meth:`forward_train` does)."""
        n = len(self.layers)
        graph = self._graph()
        inits = getattr(self, "initial_states", None) or {}
        last = self._last_reads(graph, inits)
        kept = {INPUT: (xs, masks)}
        for i, layer in enumerate(self.layers):
            ins = [self._pick(kept, a, b) for a, b in graph[i]]
            if layer.n_inputs == 1:
                h, m = ins[0]
            else:
                h, m = [t for t, _ in ins], [k for _, k in ins]
            refs = inits.get(i, ())
            init = [self._pick(kept, a, b)[0] for a, b in refs] if refs else None
            if run is not None:
                kept[i] = run(i, layer, h, m, init)
            elif refs:
                kept[i] = layer.call(h, m, initial_state=init)
            else:
                kept[i] = layer.call(h, m)
            for a, _ in (*graph[i], *refs):
                if last.get(a) == i:
                    kept.pop(a, None)
        if self.outputs is None:
            return kept[n - 1] if with_mask else kept[n - 1][0]
        res = [self._pick(kept, a, b)[0] for a, b in self.outputs]
        return res[0] if len(res) == 1 else res

    def _last_reads(self, graph, inits):
        """After which layer each layer's outputs (``INPUT``: the inputs) are read for
        the last time (the model's outputs: kept to the end)."""
        n = len(self.layers)
        last = {INPUT: 0}
        for i, refs in enumerate(graph):
            for a, _ in refs:
                last[a] = i
        for i, refs in inits.items():
            for a, _ in refs:
                last[a] = max(last.get(a, i), i)
        for a, _ in (self.outputs or [(n - 1, 0)]):
            last[a] = n
        return last

    def _pick(self, kept, a, b):
        """Tensor ``b`` of layer ``a`` (``INPUT``: the model's input ``b``) and its mask."""
        o, m = kept[a]
        if a == INPUT:
            return o[b], m[b]
        if isinstance(o, list):
            return o[b], self.layers[a].output_mask(b, m)
        if b == 0:
            return o, m
        raise ValueError(f"layer {self.layers[a].name!r} has one output, asked for output {b}")

    # ---- training

    def parameters(self) -> dict:
        """The weights the layers compute with (the arrays themselves, not copies), by
        ``"<layer name>/<weight>"``: ``dense/kernel`` ``(in, out)``, ``dense/bias``,
        ``embedding/embeddings``, ``layer_normalization/gamma`` / ``beta``, a recurrent
        layer's core's as its ``state_dict`` names them (``lstm/weight_ih_l0``, ...),
        a Bidirectional's ``<name>/forward/...`` and ``<name>/backward/...``.  A shared
        layer's once.  After changing them in place call :meth:`mark_weights_changed`
        (the optimizers of :mod:`fastrnn.train` do, given the model)."""
        return self._named_params()[0]

    def _named_params(self):
        """(``parameters()``, for each position the names of its layer's arrays: its
        local name -> the model's name).  An array is named once, where first met (a
        shared layer's, or one layer used directly and inside a TimeDistributed)."""
        from . import _model_train
        out, seen, local = {}, {}, []
        for layer in self.layers:
            names = {}
            for k, v in _model_train.layer_params(layer).items():
                if id(v) not in seen:
                    seen[id(v)] = f"{layer.name}/{k}"
                    out[seen[id(v)]] = v
                names[k] = seen[id(v)]
            local.append(names)
        return out, local

    def mark_weights_changed(self) -> None:
        """Re-pack the recurrent layers (and drop a convolution's kept layouts) after
        the arrays of :meth:`parameters` were changed in place."""
        from . import _model_train
        self._weights_version = getattr(self, "_weights_version", 0) + 1
        for layer in self.layers:
            _model_train.repack(layer)

    def forward_train(self, x, mask=None):
        """The call's outputs (as :meth:`__call__` returns them) and a cache for
        :meth:`backward`: ``out, cache = model.forward_train(x)``.  Refuses, naming it,
        a layer whose backward fastrnn does not have (see the README's Training)."""
        from . import _model_train
        _model_train.check(self)
        xs, masks = self._feed(x, mask)
        ctxs = [None] * len(self.layers)

        def run(i, layer, h, m, init):      # (each layer's forward, its record kept)
            y, om, ctxs[i] = _model_train.forward(layer, h, m, init)
            return y, om
        out = self._call(xs, masks, run=run)
        res = out if isinstance(out, list) else [out]
        cache = _ModelCache(self, ctxs, [np.asarray(a) for a in xs],
                            [np.shape(r) for r in res])
        # (copies: the cache keeps some layers' outputs, which an in-place edit of the
        # returned arrays would change under the backward)
        res = [np.array(r, copy=True) for r in res]
        return (res[0] if len(res) == 1 else res), cache

    def backward(self, cache, grad_output) -> dict:
        """Gradients of a loss from :meth:`forward_train`'s cache and ``grad_output``,
        dL/d(output) (a list, one an output, for a model of several; None for an output
        without gradient).  Returns ``{"input": dL/dx}`` (a list for several inputs;
        None for integer inputs, an Embedding's ids) and one entry a weight, named as
        :meth:`parameters` names it (a shared layer's gradients summed)."""
        from . import _model_train
        if not isinstance(cache, _ModelCache) or cache.model is not self:
            raise TypeError("backward needs the cache forward_train of this model returned")
        cache.check()
        n = len(self.layers)
        outs = self.outputs or [(n - 1, k) for k in range(len(cache.out_shapes))]
        gouts = list(grad_output) if isinstance(grad_output, (list, tuple)) else [grad_output]
        if len(gouts) != len(outs):
            raise ValueError(f"model {self.name!r} has {len(outs)} output(s), got "
                             f"{len(gouts)} output gradient(s)")
        pending = {}            # (layer, output index) -> gradient so far

        def add(key, g):
            pending[key] = g if key not in pending else pending[key] + g
        for key, g, shape in zip(outs, gouts, cache.out_shapes):
            if g is not None:
                g = np.asarray(g)
                if g.shape != tuple(shape):
                    raise ValueError(f"gradient of {self._tensor_name(*key, self._labels())} "
                                     f"has shape {g.shape}, the output {tuple(shape)}")
                add(tuple(key), g)
        graph = self._graph()
        inits = getattr(self, "initial_states", None) or {}
        params, local = self._named_params()
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        for i in range(n - 1, -1, -1):
            layer = self.layers[i]
            gys = [pending.pop((i, b), None) for b in range(layer.n_outputs())]
            if all(g is None for g in gys):
                continue
            gx, gw = _model_train.backward(layer, cache.ctxs[i], gys)
            for k, v in gw.items():
                grads[local[i][k]] += v
            refs = list(graph[i])
            if i in inits:          # (and the states it started from: an encoder's)
                gx, g0 = gx
                refs += inits[i]
                gx = [gx] + list(g0)
            elif layer.n_inputs == 1:
                gx = [gx]
            for (a, b), g in zip(refs, gx):
                if g is not None:
                    add((a, b), g)
        dx = []
        for k, x in enumerate(cache.inputs):
            g = pending.get((INPUT, k))
            dx.append(None if x.dtype.kind != "f" else
                      (np.zeros_like(x) if g is None else g.astype(x.dtype, copy=False)))
        return {"input": dx[0] if len(dx) == 1 else dx, **grads}

    def predict(self, x, batch_size: int | None = None, num_threads: int | None = None):
        """Run the model on ``x`` (batch first; several inputs: as for a call), in chunks
        of ``batch_size`` rows if given (``num_threads``: as for a call)."""
        xs = [np.asarray(a) for a in self._feed(x, None)[0]]
        one = self.n_inputs == 1
        if batch_size is not None:
            batch_size = _index(batch_size, "batch_size")

        def run(parts):
            return self(parts[0] if one else parts, num_threads=num_threads)
        if batch_size is None or xs[0].shape[0] <= batch_size:
            return run(xs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts = [run([a[i:i + batch_size] for a in xs])
                 for i in range(0, xs[0].shape[0], batch_size)]
        if isinstance(parts[0], list):
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return np.concatenate(parts)

    # ---- weights and config

    def count_params(self) -> int:
        """The weights of the model, a shared layer's once (as Keras counts them)."""
        first = _first_use(self.layers)
        return sum(l.count_params() for i, l in enumerate(self.layers) if first[i] == i)

    def get_config(self) -> dict[str, Any]:
        first = _first_use(self.layers)
        cfg = {"name": self.name,
               "layers": [l.get_config() if first[i] == i else _shared_json(first[i])
                          for i, l in enumerate(self.layers)],
               "outputs": self.outputs}
        _graph_json(self, cfg)
        return cfg

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every array of the model, named ``"<layer index>.<path>"`` (a shared layer's
        under its first position only)."""
        return _model_state(self)[1]

    def save_config(self) -> dict[str, Any]:
        """The JSON config that :func:`model_from_config` rebuilds the model from, together
        with :meth:`state_dict`."""
        return _model_state(self)[0]

    def save(self, path) -> None:
        """Write the model to a safetensors file (arrays + config in its metadata) that
        :func:`fastrnn.load` reads back with nothing but fastrnn."""
        from .io import save
        save(self, path)

    # ---- display

    def _labels(self) -> list[str]:
        """Each position's layer name; a shared layer's with its call, counted from 0
        as Keras counts a layer's calls (its nodes): ``lstm#1``."""
        first = _first_use(self.layers)
        calls = {}
        for j in first:
            calls[j] = calls.get(j, 0) + 1
        out, seen = [], {}
        for i, l in enumerate(self.layers):
            k = seen[first[i]] = seen.get(first[i], -1) + 1
            out.append(l.name if calls[first[i]] == 1 else f"{l.name}#{k}")
        return out

    def _tensor_name(self, a, b, labels) -> str:
        if a == INPUT:
            if self.n_inputs == 1:
                return "input"
            return self.input_names[b] if self.input_names else f"input[{b}]"
        return labels[a] if self.layers[a].n_outputs() == 1 else f"{labels[a]}[{b}]"

    def _reads(self, i, labels=None) -> str:
        """What layer ``i`` reads, for summary / repr of a graph."""
        labels = labels or self._labels()
        return ", ".join(self._tensor_name(a, b, labels) for a, b in self._graph()[i])

    def _inputs_text(self) -> str:
        names = self.input_names
        return ", ".join(names) if names else f"{self.n_inputs} unnamed"

    def summary(self, print_fn=print) -> None:
        graph = getattr(self, "inputs", None) is not None
        labels, first = self._labels(), _first_use(self.layers)
        rows = [(labels[i], type(l).__name__, l._extra_repr(),
                 l.count_params() if first[i] == i else "shared")
                + ((self._reads(i, labels),) if graph else ())
                for i, l in enumerate(self.layers)]
        w0 = max(len("layer"), *(len(r[0]) for r in rows))
        w1 = max(len("type"), *(len(r[1]) for r in rows))
        w3 = max(len("reads"), *(len(r[4]) for r in rows)) if graph else 0
        reads = lambda v: f"{v:<{w3}}  " if graph else ""      # noqa: E731
        lines = [f'Model "{self.name}"']
        if self.n_inputs > 1:
            lines.append(f"inputs: {self._inputs_text()}")
        lines.append(f"{'layer':<{w0}}  {'type':<{w1}}  {reads('reads')}params  details")
        for name, kind, extra, n, *r in rows:
            lines.append(f"{name:<{w0}}  {kind:<{w1}}  {reads(r[0] if r else '')}{n:>6}  "
                         f"{extra}")
        if graph and self.outputs is not None:
            lines.append("outputs: " + ", ".join(f"{labels[a]}[{b}]"
                                                 for a, b in self.outputs))
        lines.append(f"total params: {self.count_params()}")
        print_fn("\n".join(lines))

    def __repr__(self) -> str:
        graph = getattr(self, "inputs", None) is not None
        labels, first = self._labels(), _first_use(self.layers)
        inner = ",\n".join(
            "  " + (repr(l) if first[i] == i else
                    f"<layer {first[i]} again: {labels[i]}, shared>")
            + (f" <- [{self._reads(i, labels)}]" if graph else "")
            for i, l in enumerate(self.layers))
        head = f"name={self.name!r}"
        if self.n_inputs > 1:
            head += (f", input_names={self.input_names!r}" if self.input_names
                     else f", n_inputs={self.n_inputs}")
        return f"Model({head}, layers=[\n{inner}\n])"


def _torch_free(a, what):
    """A torch tensor as a NumPy array (detached; bfloat16 / float8 as float32:
    layers._torch_numpy), anything else as it is."""
    if hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "is_floating_point"):
        from .layers import _torch_numpy
        return _torch_numpy(a, what)
    return a


def _first_use(layers) -> list[int]:
    """For each position, the first position holding the same layer object (itself,
    unless the layer is shared)."""
    first: dict[int, int] = {}
    return [first.setdefault(id(l), i) for i, l in enumerate(layers)]


def _shared_json(j) -> dict:
    """A config entry for a position holding the layer of position ``j`` again."""
    return {"class_name": "Shared", "layer": j}


def _check_input_names(n_inputs, input_names):
    """-> (input names or None, the number of inputs), checked."""
    names = input_names
    if names is not None:
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names or \
                not all(isinstance(v, str) and v for v in names):
            raise ValueError("input_names must be a non-empty list of non-empty strings, got "
                             f"{names!r}"[:300])
        names = list(names)
        if len(set(names)) < len(names):
            raise ValueError(f"input_names must differ from each other, got {names}"[:300])
    n = (len(names) if names else 1) if n_inputs is None else _index(n_inputs, "n_inputs")
    if n < 1:
        raise ValueError(f"n_inputs must be at least 1, got {n}")
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} input_names for n_inputs={n}")
    return names, n


def _check_inputs(layers, inputs, n_inputs=1):
    """Validated graph references of the layers (None: a chain)."""
    if inputs is None:
        return None
    if not isinstance(inputs, (list, tuple)) or len(inputs) != len(layers):
        raise ValueError(f"inputs must hold one entry per layer ({len(layers)}), got "
                         f"{inputs!r}"[:300])
    graph = []
    for i, (layer, refs) in enumerate(zip(layers, inputs)):
        if isinstance(refs, (list, tuple)) and len(refs) == 2 and \
                all(isinstance(v, (int, np.integer)) for v in refs):
            refs = [refs]                                   # (one reference)
        if not isinstance(refs, (list, tuple)) or not refs:
            raise ValueError(f"inputs of layer {i} ({layer.name!r}) must be a non-empty "
                             f"list of (layer, tensor) references, got {refs!r}"[:300])
        refs = [_ref(layers, r, i, f"input of layer {i} ({layer.name!r})", n_inputs)
                for r in refs]
        want = layer.n_inputs
        lo, hi = getattr(layer, "_n_range", (1, None))
        if (want is None and not (lo <= len(refs) and (hi is None or len(refs) <= hi))) \
                or (want is not None and len(refs) != want):
            need = (want if want is not None else "one or more tensors" if hi is None
                    else f"{lo} to {hi} tensors")
            raise ValueError(f"layer {i} ({layer.name!r}, {type(layer).__name__}) reads "
                             f"{need}, given {len(refs)}")
        graph.append(refs)
    chain = all(refs == [(i - 1, 0)] for i, refs in enumerate(graph))
    return None if chain and all(l.n_inputs == 1 for l in layers) else graph


def _check_used(model):
    """Every layer of a graph feeds another one or the outputs (a stranded layer is
    most likely a wrong reference, and would run for nothing)."""
    n = len(model.layers)
    used = {a for refs in model.inputs for a, _ in refs}
    used |= {a for refs in model.initial_states.values() for a, _ in refs}
    used |= {a for a, _ in (model.outputs or [(n - 1, 0)])}
    for i, l in enumerate(model.layers):
        if i not in used:
            raise ValueError(f"layer {i} ({l.name!r}) feeds no other layer and no output "
                             "of the model")


def _check_initial_states(layers, initial_states):
    """Validated ``{layer index: [(layer index, tensor index), ...]}`` (empty: {})."""
    if not initial_states:
        return {}
    items = (initial_states.items() if isinstance(initial_states, dict)
             else initial_states)           # (also the JSON form [[i, [[a, b], ...]], ...])
    out = {}
    for i, refs in items:
        i = _index(i, "initial_states layer")
        if not 0 <= i < len(layers) or not isinstance(layers[i], (KerasRNN, Bidirectional)):
            raise ValueError(f"initial_states: layer {i} is not a recurrent layer")
        refs = [_ref(layers, r, i, f"initial_states of layer {i}: reference") for r in refs]
        if refs:
            out[i] = refs
    return out


def _ref(layers, r, below, what, n_inputs=0):
    """A checked ``(layer index, tensor index)``: the layer before ``below``, the tensor
    one it returns (also ``(INPUT, k)``, the model's input ``k``, when it has
    ``n_inputs``)."""
    try:
        a, b = r
    except (TypeError, ValueError):
        raise ValueError(f"{what} {r!r} must be a (layer, tensor) pair"[:200]) from None
    a, b = _index(a, what), _index(b, what)
    if n_inputs and a == INPUT:
        if not 0 <= b < n_inputs:
            have = ("one input, tensor 0" if n_inputs == 1 else
                    f"{n_inputs} inputs, tensors 0 to {n_inputs - 1}")
            raise ValueError(f"bad {what} {(a, b)}: the model has {have} (n_inputs= or "
                             "input_names= give it more)")
        return a, b
    if not 0 <= a < below or not 0 <= b < layers[a].n_outputs():
        raise ValueError(f"bad {what} {(a, b)}: layer {a} must come before {below} and "
                         f"return tensor {b}"[:300])
    return a, b


def _graph_json(model, cfg):
    """The graph's parts of a model config (``inputs``, ``initial_states``), where set."""
    if getattr(model, "initial_states", None):
        cfg["initial_states"] = [[i, [[a, b] for a, b in refs]]
                                 for i, refs in sorted(model.initial_states.items())]
    if getattr(model, "inputs", None) is not None:
        cfg["inputs"] = [[[a, b] for a, b in refs] for refs in model.inputs]
    if model.input_names is not None:
        cfg["input_names"] = list(model.input_names)
    elif model.n_inputs != 1:
        cfg["n_inputs"] = model.n_inputs


# ----------------------------------------------------------------------------- save / restore
# A Model is saved as flat arrays named "<layer index>.<path>" plus a JSON config (see
# fastrnn.io.save); model_from_config rebuilds it from the two, without any framework.

def _spec_json(spec):
    """An activation spec as JSON (a name, or [name, alpha, ...]); callables refused."""
    if spec is None or isinstance(spec, str):
        return spec
    if callable(spec):
        raise TypeError("a Dense/Activation layer with a Python callable as activation "
                        "cannot be saved; use a named activation")
    return [spec[0], *[None if a is None else float(a) for a in spec[1:]]]


def _spec_from_json(spec):
    return tuple(spec) if isinstance(spec, list) else spec


def _layer_state(layer: Layer, prefix: str, out: dict) -> dict:
    """Config of one layer (complete enough to rebuild it) and its arrays into ``out``."""
    cfg = {"class_name": type(layer).__name__, "name": layer.name}
    if isinstance(layer, Embedding):
        cfg["mask_zero"] = layer.mask_zero
        out[prefix + "weights"] = layer.weights
    elif isinstance(layer, Masking):
        cfg["mask_value"] = layer.mask_value
    elif isinstance(layer, Dense):
        cfg.update(activation=_spec_json(layer.activation), use_bias=layer.bias is not None)
        out[prefix + "kernel"] = layer.kernel
        if layer.bias is not None:
            out[prefix + "bias"] = layer.bias
    elif isinstance(layer, InputCast):
        cfg.update(input_dtype=layer.input_dtype, dtype=layer.dtype)
    elif isinstance(layer, Activation):
        cfg["activation"] = _spec_json(layer.activation)
    elif isinstance(layer, Op):
        cfg.update(op=layer.op, args=layer.args, attrs=layer.attrs, ranks=layer.ranks)
    elif isinstance(layer, TimeDistributed):
        cfg.update(layer=_layer_state(layer.layer, prefix + "layer.", out), masks=layer.masks)
    elif isinstance(layer, (GlobalPooling1D, Flatten, RepeatVector, Pooling1D, Pooling2D,
                            Reshape, Permute, _Merge, Softmax, GlobalPooling2D, ZeroPadding,
                            Cropping, Rescaling, UpSampling, Dropout, FoldTime,
                            UnfoldTime)):
        cfg.update({k: v for k, v in layer.get_config().items() if k not in cfg})
    elif isinstance(layer, Normalization):
        cfg.update({k: v for k, v in layer.get_config().items() if k not in cfg})
        out[prefix + "mean"], out[prefix + "variance"] = layer.mean, layer.variance
    elif isinstance(layer, PReLU):
        out[prefix + "alpha"] = layer.alpha
    elif isinstance(layer, (Conv1D, Conv2D)):
        cfg.update(strides=layer.strides, padding=layer.padding, groups=layer.groups,
                   dilation_rate=layer.dilation_rate, activation=_spec_json(layer.activation),
                   use_bias=layer.bias is not None)
        if isinstance(layer, Conv2D):
            cfg.update(strides=list(layer.strides), dilation_rate=list(layer.dilation_rate))
        out[prefix + "kernel"] = layer.kernel
        if layer.bias is not None:
            out[prefix + "bias"] = layer.bias
    elif isinstance(layer, (LayerNormalization, BatchNormalization)):
        cfg.update({k: v for k, v in layer.get_config().items() if k not in cfg})
        names = ("gamma", "beta") + (("moving_mean", "moving_variance")
                                     if isinstance(layer, BatchNormalization) else ())
        for k in names:
            if getattr(layer, k) is not None:
                out[prefix + k] = getattr(layer, k)
    elif isinstance(layer, _AttentionBase):
        cfg.update({k: v for k, v in layer.get_config().items() if k not in cfg})
        if isinstance(layer, MultiHeadAttention):
            for k in ("query", "key", "value", "output"):
                out[prefix + k + "_kernel"] = getattr(layer, k + "_kernel")
                if getattr(layer, k + "_bias") is not None:
                    out[prefix + k + "_bias"] = getattr(layer, k + "_bias")
        else:
            for k in ("scale", "concat_score_weight"):
                if getattr(layer, k) is not None:
                    out[prefix + k] = getattr(layer, k)
    elif isinstance(layer, KerasRNN):
        cfg.update(core=layer.core.get_config(), return_sequences=layer.return_sequences,
                   return_state=layer.return_state,
                   zero_output_for_mask=layer.zero_output_for_mask)
        for k, v in layer.core.state_dict().items():
            out[prefix + "core." + k] = v
    elif isinstance(layer, Bidirectional):
        cfg.update(merge_mode=layer.merge_mode, fused=layer._fused is not None,
                   forward=_layer_state(layer.forward, prefix + "forward.", out),
                   backward=_layer_state(layer.backward, prefix + "backward.", out))
    else:
        raise TypeError(f"cannot save layer {layer.name!r} of type {type(layer).__name__}")
    return cfg


def _epsilon(v, what: str) -> float:
    """A normalisation's epsilon: a finite number >= 0 (as the Keras loader checks it)."""
    v = float(v)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{what}: epsilon must be a finite number >= 0, got {v!r}")
    return v


class _ModelCache:
    """What :meth:`Model.backward` reads: each layer's forward record, the inputs, the
    outputs' shapes and the weights versions (the model's :meth:`Model.mark_weights_changed`
    count, the recurrent cores'): a cache is refused once the weights changed, as a
    layer's is."""

    def __init__(self, model, ctxs, inputs, out_shapes):
        from . import _model_train
        self.model, self.ctxs, self.inputs, self.out_shapes = model, ctxs, inputs, out_shapes
        self._cores = [c for l in model.layers for c in _model_train.cores(l)]
        self._versions = self._now()

    def _now(self):
        # (the model's count of mark_weights_changed, which the optimizers call, and the
        # recurrent cores' weights versions: load_state_dict on a core counts too)
        return [getattr(self.model, "_weights_version", 0)] + [
            c._weights_version for c in self._cores]

    def check(self):
        if self._now() != self._versions:
            raise RuntimeError("the model's weights changed since forward_train (an "
                               "optimizer step, mark_weights_changed): run forward_train "
                               "again")


class _Arrays(dict):
    """A saved model's arrays under one layer's prefix (local names), noting in a set
    shared by the whole model which ones its layers read: an array none reads is
    refused (model_from_config), as a layer file's unexpected keys are."""
    __slots__ = ("used", "prefix")

    def __init__(self, items, used: set, prefix: str = ""):
        super().__init__(items)
        self.used, self.prefix = used, prefix

    def __getitem__(self, key):
        self.used.add(self.prefix + key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return default

    def all_used(self) -> None:
        self.used.update(self.prefix + k for k in self)


def _sub(tensors: dict, prefix: str) -> dict:
    items = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if isinstance(tensors, _Arrays):
        return _Arrays(items, tensors.used, tensors.prefix + prefix)
    return items


def _optional(tensors: dict, cfg: dict, name, key: str = "bias"):
    """A layer's optional array: required where the config says the layer has it (files
    written since the config records ``use_bias`` / ``center`` / ``scale``), else
    whatever the file holds."""
    flag = cfg.get({"bias": "use_bias", "beta": "center", "gamma": "scale"}[key])
    if flag is None:
        return tensors.get(key)
    if not isinstance(flag, bool):
        raise ValueError(f"{name}: {key} flag must be true or false, got {flag!r}"[:200])
    return _need(tensors, key, name) if flag else None


def _need(tensors: dict, key: str, where: str):
    if key not in tensors:
        raise KeyError(f"{where}: missing array {key!r}")
    return tensors[key]


def _layer_from_state(cfg: dict, tensors: dict, adopt: set | None = None) -> Layer:
    """A model layer from its saved config and arrays (``adopt``: the recurrent cores
    keep arrays nobody else holds, as ``RNNBase.load_state_dict``'s ``_adopt``)."""
    from .layers import layer_from_config
    if not isinstance(cfg, dict):
        raise ValueError(f"layer config must be an object, got {cfg!r}")
    kind, name = cfg.get("class_name"), cfg.get("name")
    if kind == "Embedding":
        w = _need(tensors, "weights", name)
        mz = cfg.get("mask_zero", False)
        if not isinstance(mz, bool):
            raise ValueError(f"{name}: mask_zero must be true or false, got {mz!r}"[:200])
        return Embedding(w, mask_zero=mz, name=name, dtype=w.dtype)
    if kind == "Masking":
        return Masking(cfg.get("mask_value", 0.0), name=name)
    if kind == "Dense":
        k = _need(tensors, "kernel", name)
        return Dense(k, _optional(tensors, cfg, name), _spec_from_json(cfg.get("activation")),
                     name=name, dtype=k.dtype)
    if kind == "Dropout":
        return Dropout(cfg.get("rate", 0.0), name=name, keeps_mask=cfg.get("keeps_mask", True))
    if kind == "InputCast":
        return InputCast(cfg.get("input_dtype", "float32"), cfg.get("dtype", "float32"),
                         name=name)
    if kind == "Activation":
        return Activation(_spec_from_json(cfg.get("activation")), name=name)
    if kind == "TimeDistributed":
        return TimeDistributed(_layer_from_state(cfg["layer"], _sub(tensors, "layer."),
                                                 adopt), name=name,
                               masks=cfg.get("masks", "keras3"))
    if kind == "Op":
        return Op(cfg.get("op"), cfg.get("args", []), cfg.get("attrs"), cfg.get("ranks"),
                  name=name)
    if kind == "FoldTime":
        return FoldTime(name=name)
    if kind == "UnfoldTime":
        return UnfoldTime(name=name, masks=cfg.get("masks", "keras3"))
    if kind == "GlobalPooling1D":
        return GlobalPooling1D(cfg.get("op", "average"), cfg.get("data_format", "channels_last"),
                               cfg.get("keepdims", False), name=name)
    if kind == "Flatten":
        return Flatten(cfg.get("data_format", "channels_last"), name=name)
    if kind == "Pooling1D":
        return Pooling1D(cfg.get("op", "max"), cfg.get("pool_size"), cfg.get("strides"),
                         cfg.get("padding", "valid"), name=name)
    if kind in ("Conv1D", "Conv2D"):
        k = _need(tensors, "kernel", name)
        return (Conv1D if kind == "Conv1D" else Conv2D)(
            k, _optional(tensors, cfg, name), cfg.get("strides", 1),
            cfg.get("padding", "valid"), cfg.get("dilation_rate", 1), cfg.get("groups", 1),
            _spec_from_json(cfg.get("activation")), name=name, dtype=k.dtype)
    if kind == "Pooling2D":
        return Pooling2D(cfg.get("op", "max"), cfg.get("pool_size"), cfg.get("strides"),
                         cfg.get("padding", "valid"), name=name)
    if kind == "Reshape":
        return Reshape(cfg.get("target_shape"), name=name)
    if kind == "Permute":
        return Permute(cfg.get("dims"), name=name)
    if kind == "RepeatVector":
        return RepeatVector(cfg.get("n"), name=name)
    if kind == "GlobalPooling2D":
        return GlobalPooling2D(cfg.get("op", "average"), cfg.get("keepdims", False), name=name)
    if kind in ("ZeroPadding", "Cropping"):
        key = "padding" if kind == "ZeroPadding" else "cropping"
        return (ZeroPadding if kind == "ZeroPadding" else Cropping)(
            cfg.get(key, 1), cfg.get("rank", 1), name=name)
    if kind == "UpSampling":
        return UpSampling(cfg.get("size", 2), cfg.get("rank", 1), name=name)
    if kind == "Rescaling":
        return Rescaling(cfg.get("scale", 1.0), cfg.get("offset", 0.0),
                         cfg.get("keeps_mask", True), name=name,
                         dtype=_dtype_name(cfg.get("dtype", "float32"), _MODEL_DTYPES,
                                          "Rescaling dtype"))
    if kind == "Normalization":
        mean = _need(tensors, "mean", name)
        return Normalization(mean, _need(tensors, "variance", name), cfg.get("axis", -1),
                             cfg.get("invert", False), cfg.get("keeps_mask", True),
                             cfg.get("adapted", True), name=name, dtype=mean.dtype)
    if kind == "PReLU":
        alpha = _need(tensors, "alpha", name)
        return PReLU(alpha, name=name, dtype=alpha.dtype)
    if kind == "LayerNormalization":
        g = _optional(tensors, cfg, name, "gamma")
        b = _optional(tensors, cfg, name, "beta")
        ref = g if g is not None else b
        return LayerNormalization(g, b, cfg.get("axis", -1), cfg.get("epsilon", 1e-3),
                                  cfg.get("rms_scaling", False), name=name,
                                  dtype=ref.dtype if ref is not None else "float32")
    if kind == "BatchNormalization":
        mean = _need(tensors, "moving_mean", name)
        return BatchNormalization(mean, _need(tensors, "moving_variance", name),
                                  _optional(tensors, cfg, name, "gamma"),
                                  _optional(tensors, cfg, name, "beta"),
                                  cfg.get("axis", -1), cfg.get("epsilon", 1e-3), name=name,
                                  dtype=mean.dtype)
    if kind == "Concatenate":
        return Concatenate(cfg.get("axis", -1), name=name, masks=cfg.get("masks", "keras3"))
    if kind == "Dot":
        axes = cfg.get("axes", -1)
        return Dot(axes if isinstance(axes, int) else tuple(axes), cfg.get("normalize", False),
                   cfg.get("epsilon", 1e-7), name=name)
    if kind == "Softmax":
        axis = cfg.get("axis", -1)
        return Softmax(axis if isinstance(axis, int) else tuple(axis),
                       cfg.get("masking", "keras3"), name=name)
    if kind in _MERGE_CLASSES:
        return _MERGE_CLASSES[kind](name=name, masks=cfg.get("masks", "keras3"))
    if kind in _ATTENTION_CLASSES:
        call = dict(return_attention_scores=bool(cfg.get("return_attention_scores", False)),
                    use_causal_mask=bool(cfg.get("use_causal_mask", False)), name=name)
        if kind == "MultiHeadAttention":
            w = {k: tensors.get(k) for k in ("query_kernel", "key_kernel", "value_kernel",
                                              "output_kernel", "query_bias", "key_bias",
                                              "value_bias", "output_bias")}
            for k in ("query_kernel", "key_kernel", "value_kernel", "output_kernel"):
                _need(tensors, k, name)
            return MultiHeadAttention(**w, **call, zero_masked=cfg.get("zero_masked"),
                                      additive_mask=bool(cfg.get("additive_mask", False)),
                                      dtype=w["query_kernel"].dtype)
        sc = tensors.get("scale")
        dt = sc.dtype if sc is not None else tensors.get("concat_score_weight",
                                                          np.float32(0)).dtype
        if kind == "AdditiveAttention":
            return AdditiveAttention(sc, **call, dtype=dt,
                                     float32_tanh=bool(cfg.get("float32_tanh", True)))
        return Attention(sc, cfg.get("score_mode", "dot"), tensors.get("concat_score_weight"),
                         **call, dtype=dt)
    if kind == "KerasRNN":
        arrays = _sub(tensors, "core.")
        core = layer_from_config(cfg["core"], arrays, _adopt=adopt)
        if isinstance(arrays, _Arrays):
            arrays.all_used()           # (loaded strictly: every one is the core's)
        return KerasRNN(core, cfg.get("return_sequences", False), cfg.get("return_state", False),
                        cfg.get("zero_output_for_mask", False), name=name)
    if kind == "Bidirectional":
        fwd = _layer_from_state(cfg["forward"], _sub(tensors, "forward."), adopt)
        bwd = _layer_from_state(cfg["backward"], _sub(tensors, "backward."), adopt)
        layer = Bidirectional(fwd, bwd, cfg.get("merge_mode", "concat"), name=name)
        if cfg.get("fused"):
            layer._fuse_with(layer_from_config(layer._fused_config()))
        return layer
    raise ValueError(f"unknown model layer class {kind!r}")


def _model_state(model: "Model") -> tuple[dict, dict]:
    tensors: dict = {}
    first = _first_use(model.layers)        # (a shared layer: saved once, then referred to)
    layers = [_layer_state(l, f"{i}.", tensors) if first[i] == i else _shared_json(first[i])
              for i, l in enumerate(model.layers)]
    cfg = {"class_name": "Model", "name": model.name, "layers": layers,
           "outputs": model.outputs}
    _graph_json(model, cfg)
    return cfg, tensors


def _check_arrays(tensors: dict) -> None:
    """A saved model's arrays: floating point, and finite outside the recurrent cores
    (which check their own): an integer or boolean kernel computed in its dtype, a NaN
    ran silently (an audit)."""
    for k, v in tensors.items():
        if not (isinstance(v, np.ndarray) and v.dtype.kind == "f"):
            raise ValueError(f"array {k!r} must be floating point, got "
                             f"{getattr(v, 'dtype', type(v).__name__)}"[:200])
        if ".core." not in "." + k and not np.isfinite(v).all():
            raise ValueError(f"array {k!r} holds NaN or infinite values")


def model_from_config(cfg: dict, tensors: dict, *, _adopt: set | None = None) -> "Model":
    """Rebuild a :class:`Model` from ``Model.save_config()`` and ``Model.state_dict()``
    (``_adopt``: see :func:`_layer_from_state`)."""
    if not isinstance(cfg, dict) or cfg.get("class_name") != "Model":
        raise ValueError("not a fastrnn Model config")
    layers_cfg = cfg.get("layers")
    if not isinstance(layers_cfg, list) or not layers_cfg:
        raise ValueError("a Model config needs a non-empty 'layers' list")
    _check_arrays(tensors)
    tensors = _Arrays(tensors, set())
    layers = []
    for i, c in enumerate(layers_cfg):
        if isinstance(c, dict) and c.get("class_name") == "Shared":
            j = _index(c.get("layer"), f"layer {i} (Shared): 'layer'")
            if not 0 <= j < i:
                raise ValueError(f"layer {i} shares layer {j}, which must come before it")
            layers.append(layers[j])            # (the same object: its weights once)
        else:
            layers.append(_layer_from_state(c, _sub(tensors, f"{i}."), _adopt))
    unused = sorted(set(tensors) - tensors.used)
    if unused:
        raise ValueError(f"arrays no layer of the config takes: {', '.join(map(repr, unused))}"
                         [:400])
    return Model(layers, outputs=cfg.get("outputs"), name=cfg.get("name", "model"),
                 initial_states=cfg.get("initial_states"), inputs=cfg.get("inputs"),
                 n_inputs=cfg.get("n_inputs"), input_names=cfg.get("input_names"))
