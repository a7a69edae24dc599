"""Keras's convolution, pooling and reshaping layers for :mod:`fastrnn.model`, batch
first and channels last: the 1-D ``Conv1D`` and ``Pooling1D`` (a sequence's steps), the
2-D ``Conv2D`` and ``Pooling2D`` of CRNN front-ends (OCR, speech, sound event detection:
an image ``(B, W, H, C)`` convolved and pooled, then ``Reshape`` / ``Permute`` into a
sequence for the recurrent layers), ``Reshape`` and ``Permute``.

``Conv2D`` runs as the ONNX Conv does (:mod:`fastrnn.io._onnx_conv`): on fastrnn's
own kernel (``fastrnn._conv``: Conv, bias and relu in one OpenMP region of the model's
threads) where it applies, else the channels-last im2col path (cache-sized blocks of
copied windows multiplied through BLAS)."""
from __future__ import annotations

import numpy as np

from ._model_base import (Layer, _act_name, _default_name, _float_input, activation_function,
                          matmul)

# A window op's element steps (taps x outputs, padded size: each times batch x channels)
# beyond which it is refused (a file's pool_size: a window of millions of steps ran for
# minutes); the ONNX convolutions and pools share it (fastrnn.io._onnx_conv)
_POOL_WORK = 1 << 31


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


def _windows(xp, k, stride, dilation, steps):
    """The number of windows of ``k`` taps over the steps of ``xp`` (B, T, C), the
    input of ``steps`` steps padded, and, per tap, the view of the steps it reads.  An
    input of no steps padded to fewer than a window gives none (as Keras's)."""
    n = (xp.shape[1] - (k - 1) * dilation - 1) // stride + 1
    if n < 1 and not (n == 0 and steps == 0):
        raise ValueError(f"a window of {k} taps (dilation {dilation}) does not fit in "
                         f"an input of {steps} steps" +
                         (f" ({xp.shape[1]} padded)" if xp.shape[1] != steps else ""))
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


def _conv_weights(cls, layout, kernel, bias, groups, dtype, empty_ok=True):
    """A convolution's checked (kernel, bias, groups): ``kernel`` of ``layout`` (its rank
    first, the filters last), ``bias`` None or one a filter, the filters a multiple of
    ``groups``; ``cls`` names the layer class in the errors."""
    w = np.asarray(kernel)
    rank = int(layout[0])
    if w.ndim != rank:
        raise ValueError(f"{cls} kernel must be {layout}, got shape {w.shape}")
    if (not empty_ok and 0 in w.shape) or 0 in w.shape[:rank - 2]:
        raise ValueError(f"{cls} kernel has an empty axis: shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=dtype)
    groups = _conv_int(groups, f"{cls} groups")
    F = w.shape[-1]
    if F % groups:
        raise ValueError(f"{cls} filters {F} are not a multiple of groups {groups}")
    if bias is not None:
        bias = np.asarray(bias, dtype=dtype).reshape(-1)
        if bias.shape != (F,):
            raise ValueError(f"{cls} bias must have shape ({F},), got {bias.shape}")
    return w, bias, groups


class _Conv(Layer):
    """What Conv1D and Conv2D share: ``kernel`` (taps..., in / groups, filters), ``bias``,
    ``groups``, ``strides`` / ``dilation_rate`` / ``kernel_size`` (ints for Conv1D,
    pairs for Conv2D), ``padding``, ``activation``; their weights, config and repr.

    The calls keep the kernel rearranged for the GEMMs and packed for fastrnn._conv:
    assigning ``layer.kernel`` (same shape) drops them; after an in-place edit of the
    kernel array call :meth:`mark_weights_changed` (until then calls may use the old
    weights, as the recurrent layers' packings)."""

    @property
    def kernel(self):
        return self.__dict__["_kernel"]

    @kernel.setter
    def kernel(self, v):
        old = self.__dict__.get("_kernel")
        if old is not None:
            w = np.asarray(v)
            if w.dtype.kind not in "fiu" or w.shape != old.shape:
                raise ValueError(f"{self.name}: kernel must be a numeric array of shape "
                                 f"{old.shape}, got {w.dtype} {w.shape}")
            v = np.ascontiguousarray(w, dtype=old.dtype)
        self.__dict__["_kernel"] = v
        self.mark_weights_changed()

    def mark_weights_changed(self) -> None:
        """Drop what the calls keep made from the kernel (its GEMM layout and packings)
        after an in-place edit of ``layer.kernel`` (a kernel kept as it was, else: an
        audit)."""
        self.__dict__.pop("_wm", None)
        self.__dict__.pop("_packs", None)

    def __setstate__(self, state):
        if "kernel" in state:            # (pickles of versions before the property)
            state = dict(state)
            state["_kernel"] = state.pop("kernel")
        self.__dict__.update(state)

    def _gemm_weights(self):
        """Each group's GEMM operand ``(groups, taps * in / groups, filters / groups)``:
        rows the taps, then the channels (made on first use, kept)."""
        wm = self.__dict__.get("_wm")
        if wm is None:
            k = self.kernel
            g, F = self.groups, k.shape[-1]
            taps = int(np.prod(k.shape[:-2]))
            wm = self._wm = np.ascontiguousarray(
                k.reshape(taps, k.shape[-2], g, F // g).transpose(2, 0, 1, 3)
            ).reshape(g, taps * k.shape[-2], F // g)
        return wm

    @property
    def filters(self):
        return self.kernel.shape[-1]

    def get_weights(self):
        return [self.kernel] + ([self.bias] if self.bias is not None else [])

    def get_config(self):
        js = lambda v: list(v) if isinstance(v, tuple) else v    # noqa: E731
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": js(self.kernel_size), "strides": js(self.strides),
                "padding": self.padding, "dilation_rate": js(self.dilation_rate),
                "groups": self.groups, "use_bias": self.bias is not None,
                "activation": _act_name(self.activation)}

    def _extra_repr(self):
        return (f"{self.kernel.shape[-2] * self.groups} -> {self.filters}, "
                f"kernel_size={self.kernel_size}, strides={self.strides}, "
                f"padding={self.padding!r}, dilation_rate={self.dilation_rate}"
                + (f", groups={self.groups}" if self.groups > 1 else "")
                + f", activation={_act_name(self.activation)}")


class Conv1D(_Conv):
    """Keras's ``Conv1D`` (``channels_last``): ``kernel`` ``(k, in / groups, filters)``,
    ``strides``, ``padding`` ``"valid"`` / ``"same"`` / ``"causal"``, ``dilation_rate``,
    ``groups``, then the activation.  Computed on fastrnn's Conv kernel (a 1 x k Conv,
    as the ONNX Conv: fastrnn.io._onnx_conv) where it applies, else tap by tap (one
    product a tap).  Keras's convolution drops a mask (with a warning): so does this."""

    def __init__(self, kernel, bias=None, strides=1, padding="valid", dilation_rate=1,
                 groups=1, activation="linear", name=None, dtype="float32"):
        super().__init__(name)
        self.kernel, self.bias, self.groups = _conv_weights(
            "Conv1D", "3-D (taps, in / groups, filters)", kernel, bias, groups, dtype)
        self.strides = _conv_int(strides, "Conv1D strides")
        self.dilation_rate = _conv_int(dilation_rate, "Conv1D dilation_rate")
        self.padding = _padding(padding)
        self.activation = activation
        self._act = activation_function(activation)

    @property
    def kernel_size(self):
        return self.kernel.shape[0]

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.dtype.kind not in "fbiu":      # (complex: numpy would drop the imaginary part)
            raise TypeError(f"{self.name}: expected real numbers, got {x.dtype}")
        x = x.astype(self.kernel.dtype, copy=False)
        k, cg, F = self.kernel.shape
        if x.ndim != 3 or x.shape[2] != cg * self.groups:
            raise ValueError(f"{self.name}: expected (batch, steps, {cg * self.groups}) input, "
                             f"got shape {x.shape}")
        before, after = _pads(x.shape[1], k, self.strides, self.dilation_rate, self.padding)
        y = self._on_kernel(x, before, after)
        if y is not None:
            return y, None
        xp = np.pad(x, ((0, 0), (before, after), (0, 0))) if before or after else x
        n, taps = _windows(xp, k, self.strides, self.dilation_rate, x.shape[1])
        y = np.zeros((x.shape[0], n, F), x.dtype)
        fg = F // self.groups
        for g in range(self.groups):
            ci, co = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            for j, v in enumerate(taps):
                y[:, :, co] += matmul(v if self.groups == 1 else v[:, :, ci],
                                      self.kernel[j][:, co])
        if self.bias is not None:
            y += self.bias
        return self._act(y).astype(x.dtype, copy=False), None

    def _on_kernel(self, x, before, after):
        """The layer's output on fastrnn._conv (a 1 x k Conv, bias and relu fused), or
        None where it does not apply (the tap loop runs)."""
        from .io._onnx_conv import _kernel_conv, _kernel_plan, _use_kernel
        k, cg, F = self.kernel.shape
        s, d, T = self.strides, self.dilation_rate, x.shape[1]
        n = (T + before + after - (k - 1) * d - 1) // s + 1
        if n < 1 or not x.shape[0] or not _use_kernel():
            return None         # (an empty batch: the tap loop; the kernel refused it)
        plan = _kernel_plan((self.groups, [k], [s], [d], [(before, after)],
                             [T + before + after], [n], x.dtype), F)
        if plan is None:
            return None
        wm = self._gemm_weights()
        relu = isinstance(self.activation, str) and self.activation == "relu"
        y = _kernel_conv(np.moveaxis(x, 2, 1), wm, plan, self.__dict__.setdefault(
            "_packs", {}), None, None if self.bias is None else
            np.ascontiguousarray(self.bias), ("Relu",) if relu else None)
        return y if relu else self._act(y).astype(x.dtype, copy=False)


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
                                         x.shape[1] + before + after) > _POOL_WORK:
            raise ValueError(f"{self.name}: a window of {p} steps over {x.shape[1]} is "
                             "beyond what fastrnn runs")
        if before or after:
            fill = -np.inf if self.op == "max" else 0
            xp = np.pad(x, ((0, 0), (before, after), (0, 0)), constant_values=fill)
        else:
            xp = x
        n, taps = _windows(xp, p, s, 1, x.shape[1])
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


# ----------------------------------------------------------------------------- 2-D

def _conv_pair(v, what) -> tuple:
    """A Keras 2-D size: an int (both axes) or a list of two positive ints."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or two ints, got {v!r}"[:200])
        return tuple(_conv_int(a, what) for a in v)
    a = _conv_int(v, what)
    return a, a


def _padding2d(v) -> str:
    if v not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {v!r}"[:200])
    return v


def _image_input(x, name, channels=None):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected (batch, rows, cols, channels) input, got shape "
                         f"{x.shape}")
    if channels is not None and x.shape[3] != channels:
        raise ValueError(f"{name}: expected {channels} input channels (the last axis), got "
                         f"input shape {x.shape}")


def _out_sizes(name, shape, k, s, d, padding):
    """Per spatial axis of ``shape`` (rows, cols): the (before, after) padding and the
    number of windows, as Keras (TensorFlow's SAME; valid: windows inside only)."""
    pads, n = [], []
    for L, kk, ss, dd in zip(shape, k, s, d):
        p, q = _pads(L, kk, ss, dd, padding)
        m = (L + p + q - (kk - 1) * dd - 1) // ss + 1
        if m < 1:
            raise ValueError(f"{name}: a window of {tuple(k)} (dilation {tuple(d)}) does not "
                             f"fit in an input of {tuple(shape)} (rows, cols) with padding "
                             f"{padding!r}")
        pads.append((p, q))
        n.append(m)
    return pads, n


class Conv2D(_Conv):
    """Keras's ``Conv2D`` (``channels_last``): ``kernel`` ``(kh, kw, in / groups,
    filters)``, ``strides``, ``padding`` ``"valid"`` / ``"same"`` (TensorFlow's: the odd
    step after), ``dilation_rate``, ``groups``, then the activation, on ``(B, rows, cols,
    channels)``.  Computed as fastrnn's ONNX Conv: im2col blocks through BLAS, channels
    last.  Keras's convolution drops a mask (with a warning): so does this."""

    def __init__(self, kernel, bias=None, strides=1, padding="valid", dilation_rate=1,
                 groups=1, activation="linear", name=None, dtype="float32"):
        super().__init__(name)
        self.kernel, self.bias, self.groups = _conv_weights(
            "Conv2D", "4-D (rows, cols, in / groups, filters)", kernel, bias, groups, dtype,
            empty_ok=False)
        self.strides = _conv_pair(strides, "Conv2D strides")
        self.dilation_rate = _conv_pair(dilation_rate, "Conv2D dilation_rate")
        self.padding = _padding2d(padding)
        self.activation = activation
        self._act = activation_function(activation)

    @property
    def kernel_size(self):
        return tuple(self.kernel.shape[:2])

    def call(self, x, mask=None):
        from .io._onnx_conv import (_blas_scope, _conv_geometry, _conv_nhwc, _kernel_conv,
                                    _kernel_plan, _use_kernel)
        x = np.asarray(x)
        if x.dtype.kind not in "fbiu":
            raise TypeError(f"{self.name}: expected numbers, got {x.dtype}")
        x = x.astype(self.kernel.dtype, copy=False)
        kh, kw, cg, F = self.kernel.shape
        _image_input(x, self.name, cg * self.groups)
        pads, n = _out_sizes(self.name, x.shape[1:3], (kh, kw), self.strides,
                             self.dilation_rate, self.padding)
        if not x.shape[0]:      # (an empty batch: the kernel refused it, an audit)
            return np.zeros((0, *n, F), x.dtype), None
        attrs = {"strides": list(self.strides), "dilations": list(self.dilation_rate),
                 "group": self.groups, "pads": [p for p, _ in pads] + [q for _, q in pads]}
        xv = np.moveaxis(x, 3, 1)                   # (a view: (B, C, rows, cols))
        w_shape = np.broadcast_to(self.kernel.dtype.type(0), (F, cg, kh, kw))
        try:
            geo = _conv_geometry(xv, w_shape, attrs)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        bias, act = self.bias, self.activation
        plan = _kernel_plan(geo, F) if _use_kernel() else None
        if plan is not None:        # (fastrnn._conv: bias and relu in the kernel)
            y = _kernel_conv(xv, self._gemm_weights(), plan,
                             self.__dict__.setdefault("_packs", {}),
                             None, None if bias is None else np.ascontiguousarray(bias),
                             ("Relu",) if act == "relu" else None)
        else:
            def post(yb, *_):
                if bias is not None:
                    yb += bias
                if act == "relu":
                    np.maximum(yb, 0, out=yb)
            with _blas_scope(None) as sc:
                y = _conv_nhwc(xv, self._gemm_weights(), geo, sc.workers,
                               post if bias is not None or act == "relu" else None)
        if act not in ("relu", "linear", None):
            y = self._act(y).astype(x.dtype, copy=False)
        return y, None


class Pooling2D(Layer):
    """Keras's ``MaxPooling2D`` (``op="max"``) and ``AveragePooling2D``
    (``op="average"``), ``channels_last``: windows of ``pool_size`` (rows, cols),
    ``strides`` apart (default ``pool_size``), ``padding`` ``"valid"`` or ``"same"``
    (TensorFlow's; the average divides by the values of the window inside the input
    there, as Keras's).  The output has no mask (Keras's pooling drops it)."""

    def __init__(self, op: str = "max", pool_size=2, strides=None, padding="valid",
                 name=None):
        if op not in ("average", "max"):
            raise ValueError(f"op must be 'average' or 'max', got {op!r}")
        super().__init__(name or _default_name(
            "AveragePooling2D" if op == "average" else "MaxPooling2D"))
        self.op = op
        self.pool_size = _conv_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _conv_pair(strides, "strides")
        self.padding = _padding2d(padding)

    def call(self, x, mask=None):
        from .io._onnx_conv import _max_axes
        x = _float_input(x, self.name)
        _image_input(x, self.name)
        k, s = self.pool_size, self.strides
        pads, n = _out_sizes(self.name, x.shape[1:3], k, s, (1, 1), self.padding)
        P = [L + p + q for L, (p, q) in zip(x.shape[1:3], pads)]
        if x.shape[0] * x.shape[3] * max(k[0] * k[1] * n[0] * n[1], P[0] * P[1]) > _POOL_WORK:
            raise ValueError(f"{self.name}: a window of {k} over {x.shape[1:3]} is beyond "
                             "what fastrnn runs")
        if any(p or q for p, q in pads):
            fill = -np.inf if self.op == "max" else 0
            xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
        else:
            xp = x
        if self.op == "max":
            y = _max_axes(xp, (1, 2), k, s, (1, 1), n)
            return (y.copy() if y is x else y), None
        y = None
        for i in range(k[0]):
            for j in range(k[1]):
                v = xp[:, i: i + (n[0] - 1) * s[0] + 1: s[0], j: j + (n[1] - 1) * s[1] + 1: s[1]]
                y = v.copy() if y is None else np.add(y, v, out=y)
        if any(p or q for p, q in pads):
            count = None
            for ax, (L, kk, ss, m, (p, _), PP) in enumerate(zip(x.shape[1:3], k, s, n,
                                                                pads, P)):
                inside = np.zeros(PP, x.dtype)
                inside[p: p + L] = 1
                c = sum(inside[t: t + (m - 1) * ss + 1: ss] for t in range(kk))
                c = c[:, None] if ax == 0 else c[None, :]
                count = c if count is None else count * c
            y /= count[None, :, :, None]
        else:
            y /= x.dtype.type(k[0] * k[1])
        return y, None

    def get_config(self):
        return {**super().get_config(), "op": self.op, "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}

    def _extra_repr(self):
        return f"{self.op}, pool_size={self.pool_size}, strides={self.strides}, " \
            f"padding={self.padding!r}"


def _shape_tuple(v, what, allow_minus=False) -> tuple:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{what} must be a list of ints, got {v!r}"[:200])
    out = []
    for a in v:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not (
                a >= 1 or (allow_minus and a == -1)) or a > 1 << 31:
            raise ValueError(f"{what} must hold positive ints"
                             + (" (one may be -1)" if allow_minus else "") + f", got {v!r}"[:200])
        out.append(int(a))
    return tuple(out)


class Reshape(Layer):
    """Keras's ``Reshape(target_shape)``: ``(B, ...)`` to ``(B, *target_shape)`` in C
    order (one entry may be -1: the size left).  A mask ends here, as Keras's (a
    layer that does not support masking drops it, with a warning) -- except where the
    shape does not change: Keras 3 on JAX then keeps it (the reshape returns its input
    tensor, the mask still attached), and so does this."""

    def __init__(self, target_shape, name=None):
        super().__init__(name)
        t = _shape_tuple(target_shape, "Reshape target_shape", allow_minus=True)
        if t.count(-1) > 1:
            raise ValueError(f"Reshape target_shape may hold one -1, got {list(t)}")
        self.target_shape = t

    def output_shape(self, in_shape) -> tuple:
        """The shape (without the batch axis) of the output for an input of
        ``in_shape`` (without the batch axis), or a ValueError naming the layer."""
        size = int(np.prod(in_shape, dtype=np.int64))
        t = self.target_shape
        if -1 in t:
            known = int(np.prod([a for a in t if a != -1], dtype=np.int64))
            if size % known:
                raise ValueError(f"{self.name}: cannot reshape an input of shape "
                                 f"{tuple(in_shape)} ({size} values a sample) to "
                                 f"target_shape {list(t)}: {size} is not a multiple of "
                                 f"{known}")
            return tuple(size // known if a == -1 else a for a in t)
        if int(np.prod(t, dtype=np.int64)) != size:
            raise ValueError(f"{self.name}: cannot reshape an input of shape "
                             f"{tuple(in_shape)} ({size} values a sample) to target_shape "
                             f"{list(t)} ({int(np.prod(t, dtype=np.int64))} values)")
        return t

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"{self.name}: expected a batch, got a scalar")
        shape = self.output_shape(x.shape[1:])
        y = np.ascontiguousarray(x).reshape((x.shape[0],) + shape)
        return y, (mask if shape == x.shape[1:] else None)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}

    def _extra_repr(self):
        return f"target_shape={self.target_shape}"


class Permute(Layer):
    """Keras's ``Permute(dims)``: the axes after the batch axis reordered, ``dims`` a
    permutation of 1 .. n (``(2, 1, 3)``: a ``(B, H, W, C)`` image to ``(B, W, H, C)``,
    its columns as the steps).  A mask ends here, as Keras's -- except for the identity
    permutation, which Keras 3 on JAX runs as its input tensor, the mask kept (so does
    this)."""

    def __init__(self, dims, name=None):
        super().__init__(name)
        d = _shape_tuple(dims, "Permute dims")
        if sorted(d) != list(range(1, len(d) + 1)):
            raise ValueError(f"Permute dims must be a permutation of 1 .. {len(d)}, got "
                             f"{list(d)}")
        self.dims = d

    @property
    def identity(self) -> bool:
        return self.dims == tuple(range(1, len(self.dims) + 1))

    def call(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim != len(self.dims) + 1:
            raise ValueError(f"{self.name}: dims {list(self.dims)} permute a "
                             f"{len(self.dims) + 1}-D input (batch axis included), got "
                             f"shape {x.shape}")
        if self.identity:
            return x, mask
        return np.ascontiguousarray(x.transpose((0,) + self.dims)), None

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}

    def _extra_repr(self):
        return f"dims={self.dims}"


class GlobalPooling2D(Layer):
    """Keras's ``GlobalAveragePooling2D`` (``op="average"``) and ``GlobalMaxPooling2D``
    (``op="max"``), ``channels_last``: ``(B, rows, cols, C)`` -> ``(B, C)`` (``keepdims``:
    ``(B, 1, 1, C)``).  The output has no mask."""

    def __init__(self, op: str = "average", keepdims: bool = False, name=None):
        if op not in ("average", "max"):
            raise ValueError(f"op must be 'average' or 'max', got {op!r}")
        super().__init__(name or _default_name(
            "GlobalAveragePooling2D" if op == "average" else "GlobalMaxPooling2D"))
        self.op = op
        self.keepdims = bool(keepdims)

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        _image_input(x, self.name)
        f = np.mean if self.op == "average" else np.max
        return f(x, axis=(1, 2), keepdims=self.keepdims), None

    def get_config(self):
        return {**super().get_config(), "op": self.op, "keepdims": self.keepdims}

    def _extra_repr(self):
        return self.op + (", keepdims=True" if self.keepdims else "")


def _pad_pairs(v, rank: int, what: str) -> tuple:
    """Keras's ``padding`` / ``cropping`` of a ``rank``-D layer (1 or 2) as ``rank``
    (before, after) pairs of ints >= 0: an int (every side), a pair (1-D: before and
    after; 2-D: each axis's both sides), or ``rank`` pairs."""
    def ok(a):
        return isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= 0

    if ok(v):
        return ((int(v), int(v)),) * rank
    seq = list(v) if isinstance(v, (list, tuple)) else None
    if seq is not None and len(seq) == 2 and all(ok(a) for a in seq):
        return ((int(seq[0]), int(seq[1])),) if rank == 1 else \
            tuple((int(a), int(a)) for a in seq)
    if seq is not None and len(seq) == rank and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(ok(a) for a in p)
            for p in seq):
        return tuple((int(p[0]), int(p[1])) for p in seq)      # (the pairs, as saved)
    raise ValueError(f"{what} must be an int >= 0, a pair of them or {rank} pair(s) of "
                     f"them, got {v!r}"[:200])


class _Spatial(Layer):
    """What ZeroPadding, Cropping and UpSampling share: ``rank`` 1 (the steps of
    ``(B, T, C)``) or 2 (rows and columns of ``(B, rows, cols, C)``, ``channels_last``),
    a default name after Keras's class (``ZeroPadding1D``, ...), an input of ``rank + 2``
    axes; the output has no mask (Keras's end it)."""

    _KERAS = ""

    def __init__(self, rank, name):
        if rank not in (1, 2):
            raise ValueError(f"{type(self).__name__} rank must be 1 or 2, got {rank!r}")
        super().__init__(name or _default_name(f"{self._KERAS}{rank}D"))
        self.rank = rank

    def _input(self, x):
        x = _float_input(x, self.name)
        if x.ndim != self.rank + 2:
            raise ValueError(f"{self.name}: expected a {self.rank + 2}-D input, got shape "
                             f"{x.shape}")
        return x

    def get_config(self):
        return {**super().get_config(), "rank": self.rank}


class ZeroPadding(_Spatial):
    """Keras's ``ZeroPadding1D`` (``rank=1``) and ``ZeroPadding2D`` (``rank=2``): zeros
    added before and after along each axis."""

    _KERAS = "ZeroPadding"

    def __init__(self, padding=1, rank: int = 1, name=None):
        super().__init__(rank, name)
        self.padding = _pad_pairs(padding, rank, f"ZeroPadding{rank}D padding")

    def call(self, x, mask=None):
        x = self._input(x)
        size = x.shape[0] * x.shape[-1] * int(np.prod(
            [n + a + b for n, (a, b) in zip(x.shape[1:], self.padding)]))
        if size > _POOL_WORK:
            raise ValueError(f"{self.name}: padding {self.padding} of input shape {x.shape} "
                             "is beyond what fastrnn runs")
        return np.pad(x, ((0, 0),) + self.padding + ((0, 0),)), None

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}

    def _extra_repr(self):
        return f"padding={self.padding}"


class Cropping(_Spatial):
    """Keras's ``Cropping1D`` (``rank=1``) and ``Cropping2D`` (``rank=2``): ``cropping``
    steps (rows, columns) cut before and after along each axis."""

    _KERAS = "Cropping"

    def __init__(self, cropping=1, rank: int = 1, name=None):
        super().__init__(rank, name)
        self.cropping = _pad_pairs(cropping, rank, f"Cropping{rank}D cropping")

    def call(self, x, mask=None):
        x = self._input(x)
        idx = [slice(None)]
        for n, (a, b) in zip(x.shape[1:], self.cropping):
            if a + b >= n:
                raise ValueError(f"{self.name}: cropping {self.cropping} leaves nothing of "
                                 f"input shape {x.shape}")
            idx.append(slice(a, n - b))
        return np.ascontiguousarray(x[tuple(idx)]), None

    def get_config(self):
        return {**super().get_config(), "cropping": [list(p) for p in self.cropping]}

    def _extra_repr(self):
        return f"cropping={self.cropping}"


class UpSampling(_Spatial):
    """Keras's ``UpSampling1D`` (``rank=1``: each step repeated ``size`` times) and
    ``UpSampling2D`` with ``interpolation="nearest"`` (``rank=2``: rows and columns
    repeated)."""

    _KERAS = "UpSampling"

    def __init__(self, size=2, rank: int = 1, name=None):
        super().__init__(rank, name)
        self.size = (_conv_int(size, "UpSampling1D size"),) if rank == 1 else \
            _conv_pair(size, "UpSampling2D size")

    def call(self, x, mask=None):
        x = self._input(x)
        if x.size * int(np.prod(self.size)) > _POOL_WORK:
            raise ValueError(f"{self.name}: size {self.size} of input shape {x.shape} is "
                             "beyond what fastrnn runs")
        for ax, n in enumerate(self.size, start=1):
            x = np.repeat(x, n, axis=ax)
        return x, None

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}

    def _extra_repr(self):
        return f"size={self.size}"
