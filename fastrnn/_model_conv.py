"""Keras's 1-D convolution and pooling layers for :mod:`fastrnn.model` (``Conv1D``,
``Pooling1D``), batch first and channels last."""
from __future__ import annotations

import numpy as np

from ._model_base import Layer, _act_name, _default_name, _float_input, activation_function


def _pads(T, k, stride, dilation, padding):
    """(before, after) padding of ``T`` steps for a window of ``k`` taps ``dilation``
    apart, as Keras (TensorFlow's SAME: the odd step after; causal: all before)."""
    span = (k - 1) * dilation + 1
    if padding == "causal":
        return span - 1, 0
    if padding == "same":
        total = max((-(-T // stride) - 1) * stride + span - T, 0)
        return total // 2, total - total // 2
    return 0, 0


def _windows(xp, k, stride, dilation):
    """The number of windows of ``k`` taps over the steps of ``xp`` and, per tap, the
    view of the steps it reads (``xp`` (B, T, C))."""
    n = (xp.shape[1] - (k - 1) * dilation - 1) // stride + 1
    if n < 1:
        raise ValueError(f"a window of {k} taps (dilation {dilation}) does not fit in "
                         f"{xp.shape[1]} steps")
    return n, [xp[:, j * dilation: j * dilation + (n - 1) * stride + 1: stride]
               for j in range(k)]


def _conv_int(v, what) -> int:
    """A Keras size given as an int or a list of one (``kernel_size=[3]``)."""
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}"[:200])
    return int(v)


def _padding(v) -> str:
    if v not in ("valid", "same", "causal"):
        raise ValueError(f"padding must be 'valid', 'same' or 'causal', got {v!r}"[:200])
    return v


class Conv1D(Layer):
    """Keras's ``Conv1D`` (``channels_last``): ``kernel`` ``(k, in / groups, filters)``,
    ``strides``, ``padding`` ``"valid"`` / ``"same"`` / ``"causal"``, ``dilation_rate``,
    ``groups``, then the activation.  Computed tap by tap (one product a tap).  Keras's
    convolution drops a mask (with a warning): so does this."""

    def __init__(self, kernel, bias=None, strides=1, padding="valid", dilation_rate=1,
                 groups=1, activation="linear", name=None, dtype="float32"):
        super().__init__(name)
        w = np.asarray(kernel)
        if w.ndim != 3:
            raise ValueError(f"Conv1D kernel must be 3-D (taps, in / groups, filters), got "
                             f"shape {w.shape}")
        self.kernel = np.ascontiguousarray(w, dtype=dtype)
        self.groups = _conv_int(groups, "Conv1D groups")
        if w.shape[2] % self.groups:
            raise ValueError(f"Conv1D filters {w.shape[2]} are not a multiple of groups "
                             f"{self.groups}")
        if bias is not None:
            bias = np.asarray(bias, dtype=dtype).reshape(-1)
            if bias.shape != (w.shape[2],):
                raise ValueError(f"Conv1D bias must have shape ({w.shape[2]},), got "
                                 f"{bias.shape}")
        self.bias = bias
        self.strides = _conv_int(strides, "Conv1D strides")
        self.dilation_rate = _conv_int(dilation_rate, "Conv1D dilation_rate")
        self.padding = _padding(padding)
        self.activation = activation
        self._act = activation_function(activation)

    @property
    def filters(self):
        return self.kernel.shape[2]

    def call(self, x, mask=None):
        x = np.asarray(x, dtype=self.kernel.dtype)
        k, cg, F = self.kernel.shape
        if x.ndim != 3 or x.shape[2] != cg * self.groups:
            raise ValueError(f"{self.name}: expected (batch, steps, {cg * self.groups}) input, "
                             f"got shape {x.shape}")
        before, after = _pads(x.shape[1], k, self.strides, self.dilation_rate, self.padding)
        xp = np.pad(x, ((0, 0), (before, after), (0, 0))) if before or after else x
        n, taps = _windows(xp, k, self.strides, self.dilation_rate)
        y = np.zeros((x.shape[0], n, F), x.dtype)
        fg = F // self.groups
        for g in range(self.groups):
            ci, co = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            for j, v in enumerate(taps):
                y[:, :, co] += (v if self.groups == 1 else v[:, :, ci]) @ self.kernel[j][:, co]
        if self.bias is not None:
            y += self.bias
        return self._act(y).astype(x.dtype, copy=False), None

    def get_weights(self):
        return [self.kernel] + ([self.bias] if self.bias is not None else [])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel.shape[0], "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate,
                "groups": self.groups, "use_bias": self.bias is not None,
                "activation": _act_name(self.activation)}

    def _extra_repr(self):
        return (f"{self.kernel.shape[1] * self.groups} -> {self.filters}, "
                f"kernel_size={self.kernel.shape[0]}, strides={self.strides}, "
                f"padding={self.padding!r}, dilation_rate={self.dilation_rate}"
                + (f", groups={self.groups}" if self.groups > 1 else "")
                + f", activation={_act_name(self.activation)}")


class Pooling1D(Layer):
    """Keras's ``MaxPooling1D`` (``op="max"``) and ``AveragePooling1D``
    (``op="average"``), ``channels_last``: windows of ``pool_size`` steps, ``strides``
    apart (default ``pool_size``), ``padding`` ``"valid"`` or ``"same"`` (the average
    counts only the steps inside the input there, as Keras's).  The output has no
    mask."""

    def __init__(self, op: str = "max", pool_size=2, strides=None, padding="valid",
                 name=None):
        if op not in ("average", "max"):
            raise ValueError(f"op must be 'average' or 'max', got {op!r}")
        super().__init__(name or _default_name(
            "AveragePooling1D" if op == "average" else "MaxPooling1D"))
        self.op = op
        self.pool_size = _conv_int(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _conv_int(strides, "strides")
        self.padding = _padding(padding)
        if self.padding == "causal":
            raise ValueError("pooling padding must be 'valid' or 'same'")

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        if x.ndim != 3:
            raise ValueError(f"{self.name}: expected (batch, steps, features) input, got "
                             f"shape {x.shape}")
        p, s = self.pool_size, self.strides
        before, after = _pads(x.shape[1], p, s, 1, self.padding)
        if x.shape[0] * x.shape[2] * max(p * (x.shape[1] + before + after) // s,
                                         x.shape[1] + before + after) > 1 << 31:
            # (a file's pool_size: a window of millions of steps ran for minutes)
            raise ValueError(f"{self.name}: a window of {p} steps over {x.shape[1]} is "
                             "beyond what fastrnn runs")
        if before or after:
            fill = -np.inf if self.op == "max" else 0
            xp = np.pad(x, ((0, 0), (before, after), (0, 0)), constant_values=fill)
        else:
            xp = x
        n, taps = _windows(xp, p, s, 1)
        y = taps[0].copy()
        for v in taps[1:]:
            if self.op == "max":
                np.maximum(y, v, out=y)
            else:
                y += v
        if self.op == "average":
            if before or after:
                inside = np.zeros(xp.shape[1], x.dtype)
                inside[before: before + x.shape[1]] = 1
                count = sum(inside[j: j + (n - 1) * s + 1: s] for j in range(p))
                y /= count[None, :, None]
            else:
                y /= x.dtype.type(p)
        return y, None

    def get_config(self):
        return {**super().get_config(), "op": self.op, "pool_size": self.pool_size,
                "strides": self.strides, "padding": self.padding}

    def _extra_repr(self):
        return f"{self.op}, pool_size={self.pool_size}, strides={self.strides}, " \
            f"padding={self.padding!r}"
