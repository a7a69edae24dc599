"""The layers of :mod:`fastrnn.model` that join tensors: Keras's merge layers
(``Concatenate``, ``Add``, ...) and attention layers (``Attention``,
``AdditiveAttention``, ``MultiHeadAttention``), with Keras 3's masks."""
from __future__ import annotations

import functools
import math

import numpy as np

from ._model_base import Layer, _float_input, _index, matmul


# ----------------------------------------------------------------------------- merge layers

def _or_masks(masks):
    """Keras's ``Merge.compute_mask``: no mask when an input has none, else any-of."""
    if any(m is None for m in masks):
        return None
    out = np.asarray(masks[0], dtype=bool)
    for m in masks[1:]:
        out = out | np.asarray(m, dtype=bool)
    return out


_MASK_RULES = ("keras3", "keras2")


class _Merge(Layer):
    """Base of the merge layers: ``call(xs, masks)`` with a list of one or more tensors
    (and their masks, or None), as Keras's merge layers are called.  ``masks``: whose
    rules join the inputs' masks, ``"keras3"`` (Keras 3's, the default) or ``"keras2"``
    (tf.keras 2's, which a tf.keras 2 file's model is loaded with where they differ:
    the masks present joined with all-of, an unmasked input counting as all kept, and
    the values merged as they are)."""

    n_inputs = None

    def __init__(self, name=None, masks: str = "keras3"):
        super().__init__(name)
        if masks not in _MASK_RULES:
            raise ValueError(f"{self.name}: masks must be one of {_MASK_RULES}, got "
                             f"{masks!r}")
        self.masks = masks

    def get_config(self):
        cfg = super().get_config()
        if self.masks != "keras3":
            cfg["masks"] = self.masks
        return cfg

    def _extra_repr(self):
        return "" if self.masks == "keras3" else "masks='keras2'"

    def _arrays(self, x, mask):
        if not isinstance(x, (list, tuple)) or not x:
            raise ValueError(f"{self.name}: {type(self).__name__} takes a list of one or more "
                             f"tensors, got {type(x).__name__}")
        xs = [_float_input(a, self.name) for a in x]
        if isinstance(self.n_inputs, int) and len(xs) != self.n_inputs:
            raise ValueError(f"{self.name}: {type(self).__name__} takes exactly "
                             f"{self.n_inputs} tensors, got {len(xs)}")
        masks = [None] * len(xs) if mask is None else list(mask)
        if len(masks) != len(xs):
            raise ValueError(f"{self.name}: {len(masks)} masks for {len(xs)} tensors")
        return xs, [None if m is None else np.asarray(m, dtype=bool) for m in masks]

    def _mask_like(self, m, x):
        """A (B, T) mask spread over the features of ``x`` (Keras's broadcast_to of
        expand_dims(mask, -1))."""
        try:
            return np.broadcast_to(m[..., None], x.shape)
        except ValueError:
            raise ValueError(f"{self.name}: a mask of shape {m.shape} for a tensor of shape "
                             f"{x.shape}") from None


class _Elementwise(_Merge):
    """Add, Subtract, Multiply, Average, Maximum, Minimum: tensors of one batch size
    whose sizes agree or are 1 (broadcast), as Keras 3 checks them; the output is masked
    where any input is, when every input has a mask.

    Tensors of different ranks (a sequence ``(B, T, H)`` and a vector ``(B, H)``) merge
    as in Keras 3's ``Merge.call``: each lower-rank one gains axes of size 1 at axis 1
    until the ranks agree (``(B, 1, H)``, broadcast over the steps) and reaches the
    merge without a mask; the output's mask is Keras's ``compute_mask`` of the inputs'
    own masks, none when an input has none (when all have one, masks of different
    ranks, Keras's mask is not defined: refused)."""

    def call(self, x, mask=None):
        xs, masks = self._arrays(x, mask)
        shapes = [a.shape for a in xs]
        if not all(shapes) or len({s[0] for s in shapes}) > 1:
            raise ValueError(f"{self.name}: {type(self).__name__} needs tensors of one batch "
                             f"size, got shapes {shapes}")
        nd = max(a.ndim for a in xs)
        if any(a.ndim < nd for a in xs):
            if self.masks == "keras2" and any(
                    m is not None and a.ndim < nd for a, m in zip(xs, masks)):
                raise ValueError(f"{self.name}: {type(self).__name__} of tensors of "
                                 f"different ranks (shapes {shapes}), a lower-rank one "
                                 "masked: tf.keras 2 cannot join those masks")
            if all(m is not None for m in masks):
                raise ValueError(f"{self.name}: {type(self).__name__} of masked tensors of "
                                 f"different ranks (shapes {shapes}) is not supported")
            masks = [m if a.ndim == nd else None for a, m in zip(xs, masks)]
            xs = [a.reshape(a.shape[:1] + (1,) * (nd - a.ndim) + a.shape[1:]) for a in xs]
        try:
            np.broadcast_shapes(*(a.shape for a in xs))
        except ValueError:
            raise ValueError(f"{self.name}: {type(self).__name__} got incompatible shapes "
                             f"{shapes}") from None
        if self.masks == "keras2":
            return self._merge_keras2(xs, masks)
        return self._merge(xs, masks)

    def _merge(self, xs, masks):
        return self._op(xs), _or_masks(masks)

    def _merge_keras2(self, xs, masks):
        """tf.keras 2's merge: the op on the values as they are, the output masked
        where all the masks present are (none where no input has one)."""
        present = [m for m in masks if m is not None]
        if len({m.shape for m in present}) > 1:
            raise ValueError(f"{self.name}: tf.keras 2 cannot join masks of shapes "
                             f"{[m.shape for m in present]}")
        keep = functools.reduce(np.logical_and, present) if present else None
        return self._op(xs), keep


def _sum(xs):
    out = xs[0]
    for a in xs[1:]:
        out = out + a
    return out


class Add(_Elementwise):
    """Keras's ``Add``: the sum of the tensors."""

    def _op(self, xs):
        return _sum(xs)


class Subtract(_Elementwise):
    """Keras's ``Subtract``: the first tensor minus the second (exactly two)."""

    n_inputs = 2

    def _op(self, xs):
        return xs[0] - xs[1]


class Average(_Elementwise):
    """Keras's ``Average``: the sum of the tensors over their number."""

    def _op(self, xs):
        out = _sum(xs)
        return (out / out.dtype.type(len(xs))).astype(out.dtype, copy=False)


class Multiply(_Elementwise):
    """Keras's ``Multiply``: the product; a masked step of an input counts as 1 and,
    when every input has a mask, the output is 0 where all of them are masked (Keras 3's
    masks; tf.keras 2's: the product of the values as they are)."""

    def _op(self, xs):
        return functools.reduce(lambda a, b: a * b, xs)

    def _merge(self, xs, masks):
        full = [None if m is None else self._mask_like(m, a) for a, m in zip(xs, masks)]
        out = None
        for a, m in zip(xs, full):
            if m is not None:
                a = np.where(m, a, a.dtype.type(1))
            out = a if out is None else out * a
        if any(m is None for m in full):
            return out, None
        keep = functools.reduce(np.logical_or, full)
        return np.where(keep, out, out.dtype.type(0)), keep.any(axis=-1)


class _MinMax(_Elementwise):
    """Maximum / Minimum, with Keras 3's masks: a masked entry of one side takes the
    other side's value before the op, and the output is masked where all inputs are
    (tf.keras 2's: the op on the values as they are)."""

    def _op(self, xs):
        return functools.reduce(self._fn, xs)

    def _merge(self, xs, masks):
        out = out_mask = None
        for a, m in zip(xs, masks):
            m = None if m is None else self._mask_like(m, a)
            if out is None:
                out, out_mask = a, m
                continue
            if m is not None:
                a = np.where(m, a, out)
            if out_mask is not None:
                out = np.where(out_mask, out, a)
            out_mask = None if m is None or out_mask is None else out_mask | m
            out = self._fn(out, a)
        return out, None if out_mask is None else out_mask.any(axis=-1)


class Maximum(_MinMax):
    """Keras's ``Maximum``: the elementwise maximum."""

    _fn = staticmethod(np.maximum)


class Minimum(_MinMax):
    """Keras's ``Minimum``: the elementwise minimum."""

    _fn = staticmethod(np.minimum)


class Concatenate(_Merge):
    """Keras's ``Concatenate(axis)``: tensors of one rank and equal sizes except on
    ``axis`` (not the batch axis).  Masks as Keras's: when any input has one, each
    input's (all True where it has none) spread over its features, joined along
    ``axis``, then any-of over the last axis (the features: per step, any-of the
    inputs; the steps, ``axis=1``: the masks one after the other).  tf.keras 2's
    (``masks="keras2"``): each input's mask (all True where it has none; a ``(B, T)``
    one given an axis of size 1, not spread over the features) joined along ``axis``,
    then all-of over the last axis: on the features, the steps every masked input
    keeps; on the steps, the masks one after the other (inputs of other than one
    feature there must all be masked)."""

    def __init__(self, axis: int = -1, name=None, masks: str = "keras3"):
        super().__init__(name, masks)
        self.axis = _index(axis, "Concatenate axis")

    def call(self, x, mask=None):
        xs, masks = self._arrays(x, mask)
        nd = xs[0].ndim
        if not -nd <= self.axis < nd or self.axis % nd == 0:
            raise ValueError(f"{self.name}: axis {self.axis} is out of range (or the batch "
                             f"axis) for {nd}-D tensors")
        ax = self.axis % nd
        cut = [a.shape[:ax] + a.shape[ax + 1:] for a in xs]
        if any(a.ndim != nd for a in xs) or len(set(cut)) > 1:
            raise ValueError(f"{self.name}: Concatenate(axis={self.axis}) needs tensors of "
                             "one rank and equal sizes except on that axis, got shapes "
                             f"{[a.shape for a in xs]}")
        out = np.concatenate(xs, axis=ax)
        if all(m is None for m in masks):
            return out, None
        if self.masks == "keras2":
            full = [np.ones(a.shape, bool) if m is None else m[..., None]
                    if m.ndim < a.ndim else m for a, m in zip(xs, masks)]
            try:
                return out, np.concatenate(full, axis=ax).all(axis=-1)
            except ValueError:
                raise ValueError(f"{self.name}: tf.keras 2 cannot join masks of shapes "
                                 f"{[f.shape for f in full]} on axis {self.axis}") from None
        full = [np.ones(a.shape, bool) if m is None else
                self._mask_like(m, a) if m.ndim < a.ndim else m for a, m in zip(xs, masks)]
        return out, np.concatenate(full, axis=ax).any(axis=-1)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    def _extra_repr(self):
        more = super()._extra_repr()
        return f"axis={self.axis}" + (f", {more}" if more else "")


def _axis_int(v, what):
    """An axis given as an int (not a bool)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {v!r}")
    return int(v)


class Dot(_Merge):
    """Keras's ``Dot(axes, normalize)``: the dot product of two tensors along one axis
    of each, per sample (Keras's ``batch_dot``).  ``axes``: an int (the same axis of
    both; a negative one counts from each tensor's own end) or a pair; not the batch
    axis.  The output: the first tensor's axes without the summed one, then the
    second's without its batch axis and the summed one (``(B, 1)`` when nothing is
    left), e.g. ``Dot(axes=[2, 2])`` of ``(B, Tq, H)`` and ``(B, Tv, H)`` gives the
    scores ``(B, Tq, Tv)`` and ``Dot(axes=[2, 1])`` of those (after a softmax) and
    ``(B, Tv, H)`` the context ``(B, Tq, H)``.  ``normalize``: each tensor is first
    L2-normalised along its axis, ``x * min(1 / sqrt(sum(x ** 2)), 1 / epsilon)``
    (the cosine similarity; ``epsilon`` 1e-7: Keras 3's ``backend.epsilon()``;
    tf.keras 2's ``l2_normalize`` floors the squared norm at 1e-12: 1e-6).  Masks are
    ignored and the output has none, as Keras's (its ``compute_mask`` gives None)."""

    n_inputs = 2

    def __init__(self, axes=-1, normalize: bool = False, epsilon: float = 1e-7, name=None):
        super().__init__(name)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2:
                raise ValueError(f"{self.name}: Dot axes must be an int or a pair of ints, "
                                 f"got {axes!r}")
            axes = tuple(_axis_int(a, f"{self.name}: Dot axes") for a in axes)
        else:
            axes = _axis_int(axes, f"{self.name}: Dot axes")
        self.axes = axes
        self.normalize = bool(normalize)
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"{self.name}: Dot epsilon must be > 0, got {epsilon!r}")

    def _resolve(self, r0, r1):
        """The two axes for tensors of ranks ``r0``, ``r1`` (Keras's rule: a negative
        int counts from each tensor's end, modulo its rank as Keras takes it, each entry
        of a pair from its own tensor's end); a ValueError naming the layer when one is
        out of range or the batch axis."""
        if isinstance(self.axes, int):
            axes = ((self.axes % r0, self.axes % r1) if self.axes < 0
                    else (self.axes, self.axes))
        else:
            # (a pair's entry below -rank: Keras's build indexes the shape with it, and
            # fails)
            axes = tuple(a % r if -r <= a < 0 else a for a, r in zip(self.axes, (r0, r1)))
        for a, r, k in zip(axes, (r0, r1), ("first", "second")):
            if not 0 < a < r:
                raise ValueError(f"{self.name}: Dot axes={self._show_axes()} is out of range "
                                 f"(or the batch axis) for the {k} input, of rank {r}")
        return axes

    def _show_axes(self):
        return list(self.axes) if isinstance(self.axes, tuple) else self.axes

    def _l2(self, x, axis):
        s = np.sum(np.square(x), axis=axis, keepdims=True)
        with np.errstate(divide="ignore"):
            inv = np.minimum(x.dtype.type(1) / np.sqrt(s), x.dtype.type(1.0 / self.epsilon))
        return x * inv

    def call(self, x, mask=None):
        xs, _ = self._arrays(x, mask)       # (masks are ignored, as Keras's Dot ignores them)
        a, b = xs
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"{self.name}: Dot needs tensors of rank >= 2 (batch, ...), got "
                             f"shapes {a.shape} and {b.shape}")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"{self.name}: Dot needs tensors of one batch size, got shapes "
                             f"{a.shape} and {b.shape}")
        a0, a1 = self._resolve(a.ndim, b.ndim)
        if a.shape[a0] != b.shape[a1]:
            raise ValueError(f"{self.name}: Dot axes={self._show_axes()}: the sizes along "
                             f"the axes differ: {a.shape[a0]} (axis {a0} of {a.shape}) and "
                             f"{b.shape[a1]} (axis {a1} of {b.shape})")
        dt = np.result_type(a, b)
        a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
        if self.normalize:
            a, b = self._l2(a, a0), self._l2(b, a1)
        a, b = np.moveaxis(a, a0, -1), np.moveaxis(b, a1, 1)
        n, k = a.shape[0], a.shape[-1]
        # (the sizes, not -1: an empty batch could not be reshaped, an audit)
        out = matmul(a.reshape(n, int(np.prod(a.shape[1:-1])), k),
                     b.reshape(n, k, int(np.prod(b.shape[2:]))))
        shape = (n,) + a.shape[1:-1] + b.shape[2:]
        return out.reshape(shape if len(shape) > 1 else (n, 1)), None

    def output_rank(self, r0, r1):
        """The rank of the output for inputs of ranks ``r0``, ``r1``."""
        return max(r0 + r1 - 3, 2)

    def get_config(self):
        return {**super().get_config(), "axes": self._show_axes(),
                "normalize": self.normalize, "epsilon": self.epsilon}

    def _extra_repr(self):
        return f"axes={self._show_axes()}" + (", normalize" if self.normalize else "")


_MERGE_CLASSES = {c.__name__: c for c in (Concatenate, Add, Subtract, Multiply, Average,
                                          Maximum, Minimum, Dot)}


# ----------------------------------------------------------------------------- softmax layer

_SOFTMAX_MASKING = ("keras3", "add", "where")


class Softmax(Layer):
    """Keras's ``Softmax(axis)`` layer: the softmax over ``axis`` (an int or a list of
    them; not the batch axis 0).  A mask reaching it (its input's) is applied as Keras
    applies its ``mask`` argument: broadcast against the input by numpy's rules (its
    last axes against the input's last: a ``(B, T)`` mask must fit the input's shape,
    else a ValueError naming the layer, as Keras raises one), ``masking``:

    * ``"keras3"`` (Keras 3.15): the masked entries set to -1e9 before the softmax and
      to 0 after it;
    * ``"add"`` (tf.keras 2): -1e9 added to the masked entries, in the input's dtype
      (in float32 a fully masked row then softmaxes uniformly, in float64 its own
      values), nothing zeroed;
    * ``"where"`` (tf.keras 2's ``robust_masking=True``): set to -1e9, nothing zeroed.

    The output carries the input's mask, as Keras's."""

    def __init__(self, axis=-1, masking: str = "keras3", name=None):
        super().__init__(name)
        if isinstance(axis, (list, tuple)):
            if not axis:
                raise ValueError(f"{self.name}: Softmax axis must be an int or a list of "
                                 "ints, got []")
            axis = tuple(_axis_int(a, f"{self.name}: Softmax axis") for a in axis)
        else:
            axis = _axis_int(axis, f"{self.name}: Softmax axis")
        if masking not in _SOFTMAX_MASKING:
            raise ValueError(f"{self.name}: masking must be one of {_SOFTMAX_MASKING}, got "
                             f"{masking!r}")
        self.axis = axis
        self.masking = masking

    def _axes(self, nd):
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        out = []
        for a in axes:
            if not -nd <= a < nd or a % nd == 0:
                raise ValueError(f"{self.name}: Softmax axis {self._show_axis()} is out of "
                                 f"range (or the batch axis) for a {nd}-D input")
            out.append(a % nd)
        if len(set(out)) != len(out):
            raise ValueError(f"{self.name}: Softmax axis {self._show_axis()} repeats an axis")
        return tuple(out)

    def _show_axis(self):
        return list(self.axis) if isinstance(self.axis, tuple) else self.axis

    def call(self, x, mask=None):
        x = _float_input(x, self.name)
        axes = self._axes(x.ndim)
        keep = None
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            try:
                if m.ndim > x.ndim:
                    raise ValueError
                keep = np.broadcast_to(m, x.shape)
            except ValueError:
                raise ValueError(
                    f"{self.name}: Softmax is given a mask of shape {m.shape} for an input of "
                    f"shape {x.shape}: Keras broadcasts the mask against the input's last "
                    "axes, and this one does not fit (each mask axis must be 1 or the "
                    "input's size there)") from None
            big = x.dtype.type(-1e9)
            if self.masking == "add":
                x = x + (x.dtype.type(1) - keep.astype(x.dtype)) * big
            else:
                x = np.where(keep, x, big)
        if len(axes) == 1:
            e = np.exp(x - x.max(axis=axes[0], keepdims=True))
            out = e / e.sum(axis=axes[0], keepdims=True)
        else:       # (Keras: exp(x - logsumexp(x)) over several axes)
            mx = x.max(axis=axes, keepdims=True)
            lse = mx + np.log(np.exp(x - mx).sum(axis=axes, keepdims=True))
            out = np.exp(x - lse)
        out = out.astype(x.dtype, copy=False)
        if keep is not None and self.masking == "keras3":
            out = np.where(keep, out, x.dtype.type(0))
        return out, mask

    def get_config(self):
        return {**super().get_config(), "axis": self._show_axis(), "masking": self.masking}

    def _extra_repr(self):
        return f"axis={self._show_axis()}"


# ----------------------------------------------------------------------------- attention layers

def _softmax_last(s):
    """Softmax over the last axis, shifted by the row's maximum (no overflow); over no
    steps (a value of T = 0): no weights (the attention output is then 0)."""
    if not s.shape[-1]:
        return s.copy()
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _heads(a):
    """``(B, T, heads, dim)`` <-> ``(B, heads, T, dim)`` (a view)."""
    return np.swapaxes(a, 1, 2)


def _causal(tq, tv, offset=0):
    """Keras's causal mask ``(Tq, Tv)``: query step i sees value steps j <= i (a
    stream's chunk of queries from step ``offset``: j <= offset + i)."""
    return np.arange(offset, offset + tq)[:, None] >= np.arange(tv)[None, :]


class _AttentionBase(Layer):
    """Keras's attention layers: ``call([query, value(, key)], masks)`` with their masks
    (or None); ``return_attention_scores``: a second output, the weights after masking
    and softmax (no mask); ``use_causal_mask``: step i attends to steps <= i (Keras's
    call arguments, fixed per layer object here)."""

    n_inputs = None
    _n_range = (2, 3)

    def __init__(self, return_attention_scores=False, use_causal_mask=False, name=None):
        super().__init__(name)
        self.return_attention_scores = bool(return_attention_scores)
        self.use_causal_mask = bool(use_causal_mask)

    def n_outputs(self):
        return 2 if self.return_attention_scores else 1

    _query_keeps = False    # (whether the query's mask enters the scores' mask)

    def _key_mask(self, masks):
        """The mask of the keys' steps: the value's (MultiHeadAttention: joined with
        the key's)."""
        return masks[1]

    def _keep(self, qm, km, tq, tv, offset=0):
        """Where the scores ``(B, Tq, Tv)`` stand, as Keras masks them (None:
        everywhere): the keys' mask (``km``), the query's where it enters, causal."""
        keep = qm[:, :, None] if (self._query_keeps and qm is not None) else None
        if km is not None:
            keep = km[:, None, :] if keep is None else keep & km[:, None, :]
        if self.use_causal_mask:
            c = _causal(tq, tv, offset)[None]
            keep = c if keep is None else keep & c
        return keep

    def _tensors(self, x, mask):
        if not isinstance(x, (list, tuple)):
            raise ValueError(f"{self.name}: {type(self).__name__} takes a list [query, value] "
                             f"or [query, value, key], got {type(x).__name__}")
        lo, hi = self._n_range
        if not lo <= len(x) <= hi:
            raise ValueError(f"{self.name}: {type(self).__name__} takes {lo} or {hi} tensors "
                             f"([query, value] or [query, value, key]), got {len(x)}")
        xs = [_float_input(a, self.name) for a in x]
        dt = np.result_type(*xs)
        xs = [np.asarray(a, dtype=dt) for a in xs]
        masks = [None] * len(xs) if mask is None else list(mask)
        if len(masks) != len(xs):
            raise ValueError(f"{self.name}: {len(masks)} masks for {len(xs)} tensors")
        masks = [None if m is None else np.asarray(m, dtype=bool) for m in masks]
        for a, m, what in zip(xs, masks, ("query", "value", "key")):
            if a.ndim != 3:
                raise ValueError(f"{self.name}: the {what} must be 3-D (batch, steps, "
                                 f"features), got shape {a.shape}")
            if m is not None and m.shape != a.shape[:2]:
                raise ValueError(f"{self.name}: a {what} mask of shape {m.shape} for a "
                                 f"tensor of shape {a.shape}")
        if len({a.shape[0] for a in xs}) > 1:
            raise ValueError(f"{self.name}: the tensors disagree on the batch size: "
                             f"{[a.shape for a in xs]}")
        if len(xs) == 3 and xs[1].shape[1] != xs[2].shape[1]:
            raise ValueError(f"{self.name}: value and key need the same steps, got shapes "
                             f"{xs[1].shape} and {xs[2].shape}")
        return xs, masks, dt

    def get_config(self):
        return {**super().get_config(), "return_attention_scores": self.return_attention_scores,
                "use_causal_mask": self.use_causal_mask}


class Attention(_AttentionBase):
    """Keras's ``Attention`` (Luong): scores ``query @ key^T`` (times ``scale`` where
    given; ``score_mode="concat"``: ``concat_score_weight * sum(tanh(scale * (q + k)))``),
    masked value steps (and, causal, later steps) lowered by 1e9 as Keras does (a fully
    masked row thus softmaxes as Keras's does), softmax over the value steps, times the
    value; the output is 0 at masked query steps and carries the query's mask."""

    def __init__(self, scale=None, score_mode="dot", concat_score_weight=None,
                 return_attention_scores=False, use_causal_mask=False, name=None,
                 dtype="float32"):
        super().__init__(return_attention_scores, use_causal_mask, name)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{self.name}: score_mode must be 'dot' or 'concat', got "
                             f"{score_mode!r}")
        if score_mode == "concat" and concat_score_weight is None:
            raise ValueError(f"{self.name}: score_mode='concat' needs concat_score_weight")
        if score_mode == "dot" and concat_score_weight is not None:
            raise ValueError(f"{self.name}: concat_score_weight is for score_mode='concat'")
        self.score_mode = score_mode
        self.scale = self._scalar(scale, "scale", dtype)
        self.concat_score_weight = self._scalar(concat_score_weight, "concat_score_weight",
                                                dtype)

    def _scalar(self, v, what, dtype):
        if v is None:
            return None
        v = np.asarray(v, dtype=dtype)
        if v.shape != ():
            raise ValueError(f"{self.name}: {what} must be a scalar, got shape {v.shape}")
        return v

    def get_weights(self):
        return [w for w in (self.scale, self.concat_score_weight) if w is not None]

    def _scores(self, q, k, dt):
        if self.score_mode == "dot":
            s = matmul(q, np.swapaxes(k, -1, -2))
            if self.scale is not None:
                s = s * self.scale.astype(dt)
            return s
        t = q[:, :, None, :] + k[:, None, :, :]
        if self.scale is not None:
            t = self.scale.astype(dt) * t
        return self.concat_score_weight.astype(dt) * np.tanh(t).sum(axis=-1)

    def call(self, x, mask=None):
        xs, masks, dt = self._tensors(x, mask)
        q, k, v = self._keys(xs)
        out, w = self._attend(q, k, v, masks[0], masks[1], dt)
        return ([out, w] if self.return_attention_scores else out), masks[0]

    def _keys(self, xs):
        """(query, key, value) of the checked inputs: here the inputs themselves."""
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) > 2 else v
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{self.name}: query and key need the same features, got "
                             f"shapes {q.shape} and {k.shape}")
        return q, k, v

    def _attend(self, q, k, v, qm, vm, dt, offset=0):
        """(output, weights) of queries ``q`` from step ``offset`` (a stream's chunk;
        causal: each sees the keys up to its own step) over keys ``k`` / values ``v``
        from step 0; ``qm`` / ``vm`` the query / value masks or None."""
        # (the scores' own dtype: float32 in a float64 AdditiveAttention without scale)
        s = np.asarray(self._scores(q, k, dt))
        keep = self._keep(qm, vm, s.shape[1], s.shape[2], offset)
        if keep is not None:
            s = np.where(keep, s, s - s.dtype.type(1e9))
        w = _softmax_last(s)
        out = matmul(w, v)
        if qm is not None:
            out = np.where(qm[..., None], out, dt.type(0))
        return out, w

    def _no_view(self, qm, seen):
        """Where the output of a query step that sees no unmasked key (``seen`` False)
        depends on the later steps (Keras then spreads its weights over every step of
        the whole sequence): here unless the query step is masked (its output zeroed)."""
        return ~seen if qm is None else ~seen & qm

    def get_config(self):
        return {**super().get_config(), "score_mode": self.score_mode}

    def _extra_repr(self):
        return (f"score_mode={self.score_mode!r}, use_scale={self.scale is not None}"
                + (", causal" if self.use_causal_mask else ""))


class AdditiveAttention(Attention):
    """Keras's ``AdditiveAttention`` (Bahdanau): scores ``sum(scale * tanh(q + k))``
    over the features (``scale``: a vector of the query's features, or None: 1), then
    as :class:`Attention`.  ``float32_tanh`` (default True, Keras 3.15 on JAX): float64
    inputs without ``scale`` get their ``tanh``, scores and weights in float32, as
    Keras 3's do; False: all in float64, as tf.keras 2's."""

    def __init__(self, scale=None, return_attention_scores=False, use_causal_mask=False,
                 name=None, dtype="float32", float32_tanh=True):
        _AttentionBase.__init__(self, return_attention_scores, use_causal_mask, name)
        self.score_mode = "additive"
        self.concat_score_weight = None
        self.float32_tanh = bool(float32_tanh)
        if scale is not None:
            scale = np.asarray(scale, dtype=dtype)
            if scale.ndim != 1:
                raise ValueError(f"{self.name}: scale must be a vector (features,), got shape "
                                 f"{scale.shape}")
        self.scale = scale

    def _scores(self, q, k, dt):
        if self.scale is not None and self.scale.shape[0] != q.shape[-1]:
            raise ValueError(f"{self.name}: scale of {self.scale.shape[0]} features for a "
                             f"query of {q.shape[-1]}")
        t = q[:, :, None, :] + k[:, None, :, :]
        if self.scale is None and dt == np.float64 and self.float32_tanh:
            # Keras 3.15's tanh runs in float32 in a float64 model: without the (float64)
            # scale the scores, their softmax and the returned weights stay float32
            return np.tanh(t.astype(np.float32)).sum(axis=-1)
        t = np.tanh(t)
        if self.scale is not None:
            t = self.scale.astype(dt) * t
        return t.sum(axis=-1)

    def get_config(self):
        return {**_AttentionBase.get_config(self), "float32_tanh": self.float32_tanh}

    def _extra_repr(self):
        return (f"use_scale={self.scale is not None}"
                + (", causal" if self.use_causal_mask else ""))


class MultiHeadAttention(_AttentionBase):
    """Keras's ``MultiHeadAttention`` over the steps (its default ``attention_axes``):
    ``call([query, value(, key)], masks)``.  Projections ``x @ kernel + bias`` with
    kernels ``(features, heads, key_dim)`` (query, key), ``(features, heads, value_dim)``
    (value) and ``(heads, value_dim, out)`` (output), biases ``(heads, dim)`` / ``(out,)``
    or None; scores ``(q / sqrt(key_dim)) . k`` per head, set to -1e9 where Keras's mask
    is False (query mask & value mask & key mask, & causal), softmax over the value steps;
    a query step with no step left to attend to averages the values, or with
    ``zero_masked`` (default: ``return_attention_scores``) gets weights 0 (Keras 3.15 on
    JAX: its dot_product_attention path, or its Softmax layer's path that it takes when
    returning the scores or with dropout).  ``additive_mask`` (tf.keras 2's Softmax
    layer): the masked scores are lowered by 1e9 instead of set to -1e9 (the same in
    float32 for scores under 32 in size; in float64 a query step with every value step
    masked then softmaxes its own scores).  The output carries the query's mask (its
    values at masked query steps are computed, not zeroed, as Keras's);
    ``return_attention_scores``: the weights ``(B, heads, Tq, Tv)`` as a second
    output."""

    def __init__(self, query_kernel, key_kernel, value_kernel, output_kernel, query_bias=None,
                 key_bias=None, value_bias=None, output_bias=None,
                 return_attention_scores=False, use_causal_mask=False, zero_masked=None,
                 name=None, dtype="float32", additive_mask=False):
        super().__init__(return_attention_scores, use_causal_mask, name)
        self.zero_masked = bool(return_attention_scores if zero_masked is None
                                else zero_masked)
        self.additive_mask = bool(additive_mask)
        arr = lambda a: None if a is None else np.ascontiguousarray(np.asarray(a, dtype=dtype))
        self.query_kernel, self.key_kernel = arr(query_kernel), arr(key_kernel)
        self.value_kernel, self.output_kernel = arr(value_kernel), arr(output_kernel)
        self.query_bias, self.key_bias = arr(query_bias), arr(key_bias)
        self.value_bias, self.output_bias = arr(value_bias), arr(output_bias)
        for k in ("query_kernel", "key_kernel", "value_kernel", "output_kernel"):
            if getattr(self, k).ndim != 3:
                raise ValueError(f"{self.name}: {k} must be 3-D, got shape "
                                 f"{getattr(self, k).shape}")
        _, N, K = self.query_kernel.shape
        V = self.value_kernel.shape[2]
        if self.key_kernel.shape[1:] != (N, K) or self.value_kernel.shape[1] != N or \
                self.output_kernel.shape[:2] != (N, V):
            raise ValueError(f"{self.name}: kernels of shapes {self.query_kernel.shape}, "
                             f"{self.key_kernel.shape}, {self.value_kernel.shape}, "
                             f"{self.output_kernel.shape} do not fit (query, key, value: "
                             "(features, heads, dim); output: (heads, value_dim, out))")
        want = {"query_bias": (N, K), "key_bias": (N, K), "value_bias": (N, V),
                "output_bias": (self.output_kernel.shape[2],)}
        biases = [getattr(self, b) for b in want]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            raise ValueError(f"{self.name}: give all four biases or none")
        for b, shape in want.items():
            if getattr(self, b) is not None and getattr(self, b).shape != shape:
                raise ValueError(f"{self.name}: {b} must have shape {shape}, got "
                                 f"{getattr(self, b).shape}")

    _query_keeps = True

    def _key_mask(self, masks):
        vm = masks[1]
        km = masks[2] if len(masks) > 2 else None
        return km if vm is None else vm if km is None else vm & km

    @property
    def num_heads(self):
        return self.query_kernel.shape[1]

    @property
    def key_dim(self):
        return self.query_kernel.shape[2]

    @property
    def value_dim(self):
        return self.value_kernel.shape[2]

    def get_weights(self):
        ws = [self.query_kernel, self.query_bias, self.key_kernel, self.key_bias,
              self.value_kernel, self.value_bias, self.output_kernel, self.output_bias]
        return [w for w in ws if w is not None]

    def _proj(self, x, kernel, bias, what):
        if x.shape[-1] != kernel.shape[0]:
            raise ValueError(f"{self.name}: the {what} has {x.shape[-1]} features, its "
                             f"kernel takes {kernel.shape[0]}")
        F, N, D = kernel.shape
        y = matmul(x, kernel.reshape(F, N * D)).reshape(x.shape[:-1] + (N, D))
        return y if bias is None else y + bias

    def call(self, x, mask=None):
        xs, masks, _ = self._tensors(x, mask)
        q, k, v = self._keys(xs)
        out, w = self._attend(q, k, v, masks[0], self._key_mask(masks))
        return ([out, w] if self.return_attention_scores else out), masks[0]

    def _keys(self, xs):
        """The projected (query scaled by 1 / sqrt(key_dim), key, value) of the checked
        inputs, each ``(B, T, heads, dim)``."""
        dt = self.query_kernel.dtype
        xs = [np.asarray(a, dtype=dt) for a in xs]
        query, value = xs[0], xs[1]
        key = xs[2] if len(xs) > 2 else value
        q = self._proj(query, self.query_kernel, self.query_bias, "query")
        k = self._proj(key, self.key_kernel, self.key_bias, "key")
        v = self._proj(value, self.value_kernel, self.value_bias, "value")
        return q * dt.type(1.0 / math.sqrt(float(self.key_dim))), k, v

    def _attend(self, q, k, v, qm, km, dt=None, offset=0):
        """(output, weights) of the projected queries ``q`` from step ``offset`` (a
        stream's chunk) over the projected keys / values from step 0; ``qm`` the query
        mask, ``km`` the value and key masks joined (or None); ``dt`` unused (the
        kernels' dtype is the computation's)."""
        _, w, _ = self._weights(q, k, qm, km, offset)
        o = _heads(matmul(w, _heads(v)))            # (B, Tq, heads, value_dim)
        B, T, N, V = o.shape
        E = self.output_kernel.shape[2]
        out = matmul(o.reshape(B, T, N * V), self.output_kernel.reshape(N * V, E))
        if self.output_bias is not None:
            out = out + self.output_bias
        return out, w

    def _weights(self, q, k, qm, km, offset=0):
        """(the softmax of the masked scores, the weights applied (``zero_masked``: 0
        where masked), where the scores stand (None: everywhere)), each ``(B, heads,
        Tq, Tk)``, of the projected queries from step ``offset`` and keys."""
        dt = self.query_kernel.dtype
        s = matmul(_heads(q), np.moveaxis(k, 1, 3))     # (B, heads, Tq, Tk)
        keep = self._keep(qm, km, s.shape[2], s.shape[3], offset)
        if keep is not None and self.additive_mask:
            s = s + np.where(keep[:, None], dt.type(0), dt.type(-1e9))
        elif keep is not None:
            s = np.where(keep[:, None], s, dt.type(-1e9))
        w = _softmax_last(s)
        if keep is not None and self.zero_masked:
            return w, np.where(keep[:, None], w, dt.type(0)), keep
        return w, w, keep

    def _no_view(self, qm, seen):
        """Where a query step's output depends on later steps: one that attends to
        nothing (masked, or no unmasked key seen) averages every step's values unless
        ``zero_masked``."""
        if self.zero_masked:
            return np.zeros_like(seen)
        return ~seen if qm is None else ~(seen & qm)

    def get_config(self):
        return {**super().get_config(), "zero_masked": self.zero_masked,
                "additive_mask": self.additive_mask}

    def _extra_repr(self):
        return (f"num_heads={self.num_heads}, key_dim={self.key_dim}, "
                f"value_dim={self.value_dim}" + (", causal" if self.use_causal_mask else ""))


_ATTENTION_CLASSES = {c.__name__: c for c in (Attention, AdditiveAttention,
                                              MultiHeadAttention)}
