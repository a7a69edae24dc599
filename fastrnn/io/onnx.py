"""Run ONNX graphs whose recurrent nodes are LSTM, GRU or RNN, without ONNX Runtime.

``load_onnx(path | bytes | ModelProto)`` reads the model's protobuf itself
(:mod:`fastrnn.io._onnx_proto`: no ``onnx`` package needed), converts every recurrent
node's weights once into a :mod:`fastrnn.layers` layer (ONNX gate order LSTM i o f c ->
i f g o, GRU z r h -> r z n, peepholes i o f -> i f o) and runs the rest of the graph
(the small ops exporters put around recurrent nodes: Transpose, Squeeze, Reshape, Gather,
MatMul, Gemm, Shape arithmetic, activations, Softmax, ...; the TopK / ScatterElements
sort and unsort of PyTorch's pack_padded_sequence(enforce_sorted=False); a CNN
front-end's 1-D, 2-D and 3-D Conv / MaxPool / AveragePool: :mod:`fastrnn.io._onnx_conv`)
with NumPy; a ``Loop`` node (tf2onnx's Keras RNN layers it could not fuse) runs its body
graph, compiled at load with the same op table, iteration by iteration
(:mod:`fastrnn.io._onnx_loop`); an ``If`` node (PyTorch's TorchScript export of
``squeeze`` on a dynamic axis) runs the branch its condition chooses, both compiled so
(:mod:`fastrnn.io._onnx_if`); a ``Scan`` node runs its body so along its scan inputs
(:mod:`fastrnn.io._onnx_scan`).
Anything else is refused at load time with a :class:`fastrnn.io.LoadError` naming every
unsupported op type.

Recurrent node attributes supported: ``direction`` (forward, reverse, bidirectional),
``activations`` with ``activation_alpha``/``activation_beta``, ``clip``,
``input_forget``, ``linear_before_reset``, ``layout`` (0 and 1), ``hidden_size``, inputs
``B``, ``sequence_lens``, ``initial_h``, ``initial_c``, ``P`` and the optional outputs
``Y``, ``Y_h``, ``Y_c``.
"""
from __future__ import annotations

import math
import os
import weakref
from operator import itemgetter
from typing import Any, Callable, Mapping

import numpy as np

from . import LoadError, _check_args, open_file
from . import _onnx_proto as _proto
from . import _onnx_if as _if
from . import _onnx_loop as _loop
from . import _onnx_scan as _scan
from . import _onnx_unrolled as _unrolled
from ._onnx_conv import ConvChain, _op_avgpool, _op_conv, _op_maxpool, fusable_maxpool
from .._model_base import matmul
from .._threads import CALL_SCOPE, _scope, threads_for_calls

__all__ = ["load_onnx", "load", "OnnxModel", "SUPPORTED_OPS"]


def _is_onnx_proto(obj) -> bool:
    """An ``onnx.ModelProto`` (told without importing onnx: ~0.6 s)."""
    return type(obj).__name__ == "ModelProto" and hasattr(obj, "SerializeToString")


def _parse(data, base=None, name=None) -> _proto.Model:
    try:
        return _proto.parse_model(data, base)
    except _proto.ProtoError as e:
        raise LoadError(f"{name + ': ' if name else ''}not a valid ONNX model ({e})") from None


# ----------------------------------------------------------------------------- helpers
def _attrs(node) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.type in (a.GRAPH, a.GRAPHS):
            out[a.name] = a  # (a Loop's body, an If's branches: their compilers read a.g)
            continue
        if a.type == a.TENSOR:      # (read here, at load: Constant, ConstantOfShape)
            if a.t is None:
                raise LoadError(f"node {node.name or node.op_type!r}: attribute {a.name!r} "
                                "has no value")
            try:
                v = _tensor(a.t)
                out[a.name] = v.copy() if _views_file(v) else v   # (never pin the file)
            except LoadError as e:
                raise LoadError(f"node {node.name or node.op_type!r}: attribute {a.name!r}: "
                                f"{e}") from None
            continue
        try:
            v = a.value()
            if isinstance(v, bytes):
                v = v.decode("utf-8")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode("utf-8") for s in v]
        except (ValueError, TypeError) as e:  # UnicodeDecodeError is a ValueError
            raise LoadError(f"node {node.name or node.op_type!r}: attribute {a.name!r} "
                            f"cannot be read ({type(e).__name__}: {e})") from None
        if v is None:           # (type UNDEFINED)
            raise LoadError(f"node {node.name or node.op_type!r}: attribute {a.name!r} "
                            "has no value")
        out[a.name] = v
    return out


def _tensor(t) -> np.ndarray:
    try:
        return t.to_array()
    except _proto.ProtoError as e:
        raise LoadError(str(e)) from None
    except (ValueError, TypeError, OSError, MemoryError) as e:
        raise LoadError(f"tensor {t.name!r} cannot be read ({type(e).__name__}: {e})") from None


def _ints(a) -> list[int]:
    v = np.asarray(a).reshape(-1)
    # (tolist gives Python ints at once: iterating NumPy scalars cost ~1 us a call)
    return v.tolist() if v.dtype.kind in "iu" else [int(t) for t in v.tolist()]


def _np_dtype(onnx_type: int):
    try:
        return _proto.DTYPES[onnx_type]
    except (KeyError, TypeError):
        raise LoadError(f"unsupported ONNX tensor type {onnx_type} ({_proto.dtype_name(onnx_type)})"
                        ) from None


def _axis_list(axes, rank):
    if not rank:
        return [0] * len(axes)
    bad = [int(a) for a in axes if not -rank <= int(a) < rank]
    if bad:     # (ONNX: axes in [-rank, rank - 1])
        raise ValueError(f"axes {bad} out of range [{-rank}, {rank - 1}]")
    return sorted([int(a) % rank for a in axes])


def _softmax(x, axis, log=False, legacy=False):
    if legacy:  # opset < 13: coerce to 2-D at ``axis``
        shape = x.shape
        axis = axis % max(x.ndim, 1)
        x2 = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
        return _softmax(x2, 1, log).reshape(shape)
    m = np.max(x, axis=axis, keepdims=True)
    e = x - m
    if log:
        return e - np.log(np.sum(np.exp(e), axis=axis, keepdims=True))
    e = np.exp(e)
    return e / np.sum(e, axis=axis, keepdims=True)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(x.dtype, copy=False)


def _same(x, y):
    return np.asarray(y).astype(x.dtype, copy=False)


def _same_values(a, b) -> bool:
    """Whether arrays ``a`` and ``b`` have the same dtype, shape and values."""
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
            and a.shape == b.shape and np.array_equal(a, b))


# ----------------------------------------------------------------------- simple ops
# Each op: fn(inputs: list[np.ndarray | None], attrs: dict, opset: int) -> list[np.ndarray]

def _op_identity(i, a, o):
    return [i[0]]


def _tensor_attr(a, op):
    v = a["value"]
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{op}: attribute 'value' is not a tensor ({type(v).__name__})")
    return v


def _op_constant(i, a, o):
    if "value" in a:
        return [_tensor_attr(a, "Constant")]
    for k, dt in (("value_float", np.float32), ("value_floats", np.float32),
                  ("value_int", np.int64), ("value_ints", np.int64)):
        if k in a:
            return [np.asarray(a[k], dtype=dt)]
    raise LoadError(f"Constant node with unsupported attributes {sorted(a)}")


def _op_constant_of_shape(i, a, o):
    v = _tensor_attr(a, "ConstantOfShape") if "value" in a else np.zeros(1, np.float32)
    if v.size != 1:
        raise ValueError(f"ConstantOfShape: 'value' has {v.size} values, not one")
    return [np.full(_ints(i[0]), v.reshape(-1)[0], dtype=v.dtype)]


def _op_shape(i, a, o):
    s = np.asarray(i[0].shape, dtype=np.int64)
    n = len(s)
    start = a.get("start", 0)
    end = a.get("end", n)
    return [s[start:end]]


def _op_size(i, a, o):
    return [np.asarray(i[0].size, dtype=np.int64)]


def _op_cast(i, a, o):
    return [np.asarray(i[0]).astype(_np_dtype(a["to"]))]


def _op_castlike(i, a, o):
    return [np.asarray(i[0]).astype(i[1].dtype)]


def _op_transpose(i, a, o):
    perm = a.get("perm")
    return [np.transpose(i[0], perm)]


def _op_squeeze(i, a, o):
    x = i[0]
    axes = a.get("axes") if o < 13 else (i[1] if len(i) > 1 else None)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(_axis_list(_ints(axes), x.ndim)))]


def _op_unsqueeze(i, a, o):
    x = i[0]
    axes = a.get("axes") if o < 13 else i[1]
    axes = _ints(axes)
    rank = x.ndim + len(axes)
    for ax in _axis_list(axes, rank):
        x = np.expand_dims(x, ax)
    return [x]


def _op_reshape(i, a, o):
    x = i[0]
    shape = _ints(a["shape"]) if o < 5 else _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [np.reshape(x, shape)]


def _op_flatten(i, a, o):
    x = i[0]
    axis = a.get("axis", 1) if x.ndim else 0
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Flatten: axis {axis} out of range [{-x.ndim}, {x.ndim}]")
    axis = axis + x.ndim if axis < 0 else axis     # (ONNX: a negative axis counts from the end)
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(lead, -1) if x.size else x.reshape(lead, int(np.prod(x.shape[axis:])))]


def _op_concat(i, a, o):
    xs = [x for x in i if x is not None]
    return [np.concatenate(xs, axis=a["axis"])]


def _op_split(i, a, o, nout=None):
    x = i[0]
    axis = a.get("axis", 0)
    split = a.get("split") if o < 13 else (i[1] if len(i) > 1 and i[1] is not None else None)
    if split is None:
        n = a.get("num_outputs", nout)
        size = x.shape[axis]
        step = -(-size // n)
        split = [min(step, size - k * step) for k in range(n)]
    else:
        # (as ONNX Runtime: sizes that do not cover the axis exactly are an error, not
        # empty or longer parts)
        sizes = _ints(split)
        size = x.shape[axis]
        if any(k < 0 for k in sizes) or sum(sizes) != size or (
                nout is not None and len(sizes) != nout):
            want = "as many" if nout is None else f"{nout}"
            raise ValueError(f"Split: sizes {sizes} must be {want} sizes >= 0 summing to "
                             f"axis {axis}'s size {size} (input shape {x.shape})")
    idx = np.cumsum(_ints(split))[:-1]
    return list(np.split(x, idx, axis=axis))


def _op_slice(i, a, o):
    x = i[0]
    if o < 10:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    sl = [slice(None)] * x.ndim
    big = np.iinfo(np.int64).max
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.ndim
        dim = x.shape[ax]
        # clamp the int64 sentinels exporters use
        s = max(-big, min(int(s), big))
        e = max(-big, min(int(e), big))
        if st > 0:
            s = s + dim if s < 0 else s
            e = e + dim if e < 0 else e
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            sl[ax] = slice(s, e, st)
        else:
            s = s + dim if s < 0 else s
            e = e + dim if e < 0 else e
            s = min(max(s, -1), dim - 1)
            e = min(max(e, -1), dim - 1)
            sl[ax] = slice(s, e if e >= 0 else None, st)
    return [x[tuple(sl)]]


def _op_gather(i, a, o):
    x, idx = i[0], np.asarray(i[1])
    axis = a.get("axis", 0)
    n = x.shape[axis]
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise IndexError(f"Gather: index out of range [{-n}, {n - 1}] "
                         f"(got {idx.min()}..{idx.max()})")
    return [np.take(x, idx.astype(np.int64), axis=axis)]


def _op_gather_elements(i, a, o):
    x, idx = i[0], i[1].astype(np.int64)
    axis = a.get("axis", 0)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take_along_axis(x, idx, axis=axis)]


def _op_matmul(i, a, o):
    return [matmul(i[0], i[1])]


def _op_gemm(i, a, o):
    A, B = i[0], i[1]
    if a.get("transA", 0):
        A = A.T
    if a.get("transB", 0):
        B = B.T
    y = matmul(A, B)
    alpha = a.get("alpha", 1.0)
    if alpha != 1.0:
        y = y * _same(y, alpha)
    if len(i) > 2 and i[2] is not None:
        beta = a.get("beta", 1.0)
        c = i[2] if beta == 1.0 else i[2] * _same(i[2], beta)
        y = y + c
    return [y]


def _legacy_y(x, y, a, o):
    """A binary op's second input as it broadcasts: before opset 7, ``broadcast`` with
    ``axis`` lines its axes up with x's from ``axis`` on."""
    if o < 7 and a.get("broadcast", 0) and "axis" in a and y.ndim:
        ax = a["axis"] % x.ndim
        y = y.reshape(y.shape + (1,) * (x.ndim - ax - y.ndim))
    return y


def _binary(fn):
    def op(i, a, o):
        x, y = i[0], i[1]
        return [np.asarray(fn(x, _legacy_y(x, y, a, o)))]
    return op


def _div(x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return (np.trunc(x / y)).astype(np.result_type(x, y))
    return x / y


def _unary(fn):
    def op(i, a, o):
        return [np.asarray(fn(i[0])).astype(i[0].dtype, copy=False)]
    return op


def _variadic(fn):
    def op(i, a, o):
        xs = [x for x in i if x is not None]
        r = xs[0]
        for x in xs[1:]:
            r = fn(r, x)
        return [np.asarray(r)]
    return op


def _op_leakyrelu(i, a, o):
    x = i[0]
    return [np.where(x >= 0, x, x * _same(x, a.get("alpha", 0.01)))]


def _op_elu(i, a, o):
    x = i[0]
    al = _same(x, a.get("alpha", 1.0))
    return [np.where(x >= 0, x, al * np.expm1(np.minimum(x, 0)))]


def _op_selu(i, a, o):
    x = i[0]
    al = _same(x, a.get("alpha", 1.67326319217681884765625))
    g = _same(x, a.get("gamma", 1.05070102214813232421875))
    return [g * np.where(x > 0, x, al * np.expm1(np.minimum(x, 0)))]


def _op_hardsigmoid(i, a, o):
    x = i[0]
    return [np.clip(x * _same(x, a.get("alpha", 0.2)) + _same(x, a.get("beta", 0.5)), 0, 1)
            .astype(x.dtype, copy=False)]


def _op_thresholdedrelu(i, a, o):
    x = i[0]
    return [np.where(x > a.get("alpha", 1.0), x, 0).astype(x.dtype, copy=False)]


def _op_softplus(i, a, o):
    x = i[0]
    return [np.logaddexp(0, x).astype(x.dtype, copy=False)]


def _op_gelu(i, a, o):
    x = i[0]
    if a.get("approximate", "none") == "tanh":
        c = np.sqrt(2 / np.pi)
        y = 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))
    else:
        from scipy.special import erf
        y = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    return [y.astype(x.dtype, copy=False)]


def _op_erf(i, a, o):
    from scipy.special import erf
    return [erf(i[0]).astype(i[0].dtype, copy=False)]


def _op_prelu(i, a, o):
    x, s = i[0], i[1]
    return [np.where(x >= 0, x, x * s)]


def _op_clip(i, a, o):
    x = i[0]
    if o < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = i[1] if len(i) > 1 and i[1] is not None else None
        hi = i[2] if len(i) > 2 and i[2] is not None else None
    if lo is not None:
        x = np.maximum(x, _same(x, lo))
    if hi is not None:
        x = np.minimum(x, _same(x, hi))
    return [x]


def _op_softmax(i, a, o, log=False):
    legacy = o < 13
    axis = a.get("axis", 1 if legacy else -1)
    return [_softmax(i[0], axis, log=log, legacy=legacy).astype(i[0].dtype, copy=False)]


def _op_expand(i, a, o):
    x = i[0]
    shape = _ints(i[1])
    out_shape = np.broadcast_shapes(x.shape, tuple(shape))
    return [np.broadcast_to(x, out_shape).copy()]


def _op_where(i, a, o):
    return [np.where(i[0].astype(bool), i[1], i[2])]


def _op_not(i, a, o):
    return [np.logical_not(i[0])]


def _op_range(i, a, o):
    start, limit, delta = (np.asarray(v).reshape(()) for v in i[:3])
    dt = np.result_type(start, limit, delta)
    return [np.arange(start, limit, delta, dtype=dt)]


def _op_tile(i, a, o):
    return [np.tile(i[0], _ints(i[1]))]


def _reduce(fn):
    def op(i, a, o, name=""):
        x = i[0]
        axes = a.get("axes")
        if axes is None and len(i) > 1 and i[1] is not None:
            axes = _ints(i[1])
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0) and axes is not None:
                return [x]
            ax = None
        else:
            ax = tuple(_axis_list(axes, x.ndim))
        return [np.asarray(fn(x, axis=ax, keepdims=keep)).astype(x.dtype, copy=False)]
    return op


def _op_einsum(i, a, o):
    """Einsum (tf2onnx: Keras MultiHeadAttention's projections and scores, EinsumDense)."""
    eq = a.get("equation", "")
    if isinstance(eq, bytes):
        eq = eq.decode()
    eq = eq.replace(" ", "")
    if not eq:
        raise ValueError("Einsum: no equation")
    dt = np.result_type(*i)
    return [np.asarray(np.einsum(eq, *i, optimize=len(i) > 2)).astype(dt, copy=False)]


def _op_argmax(i, a, o, fn=np.argmax):
    x = i[0]
    axis = a.get("axis", 0)
    keep = bool(a.get("keepdims", 1))
    if a.get("select_last_index", 0):
        r = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
    else:
        r = fn(x, axis=axis)
    r = r.astype(np.int64)
    return [np.expand_dims(r, axis) if keep else r]


def _op_dropout(i, a, o):
    x = i[0]
    return [x, np.ones(x.shape, bool)]


def _op_attention(i, a, o):
    """ONNX Attention (opset 23, 24): softmax(softcap(Q K^T * scale) + mask) V per head,
    as ONNX Runtime runs it.  Q / K / V of rank 4 (batch, heads, sequence, head size) or
    3 (batch, sequence, heads * head size: ``q_num_heads`` / ``kv_num_heads``); fewer K / V
    heads than Q's shared by groups of Q heads (GQA / MQA); ``scale`` (default
    1/sqrt(head size)); ``softcap``; ``is_causal`` (query i attends key j <= i: no cache,
    so no offset); ``attn_mask`` boolean (True attends) or added to the scores, its last
    axis the keys'.  A query that attends no key gives zeros, as ONNX Runtime's (and the
    ONNX specification's).  The KV-cache inputs and outputs are refused at load
    (OnnxModel.__init__).  torch's dynamo export writes it at opset 23+ for
    F.scaled_dot_product_attention and nn.MultiheadAttention."""
    q, k, v = (np.asarray(x) for x in i[:3])
    mask = i[3] if len(i) > 3 else None
    three = q.ndim == 3
    if three:
        hq, hk = a.get("q_num_heads"), a.get("kv_num_heads")
        if not hq or not hk or k.ndim != 3 or v.ndim != 3:
            raise ValueError("Attention: 3-D Q, K and V need q_num_heads and kv_num_heads")
        Bq, Sq = q.shape[:2]
        q = q.reshape(Bq, Sq, hq, -1).transpose(0, 2, 1, 3)
        k = k.reshape(k.shape[0], k.shape[1], hk, -1).transpose(0, 2, 1, 3)
        v = v.reshape(v.shape[0], v.shape[1], hk, -1).transpose(0, 2, 1, 3)
    elif not q.ndim == k.ndim == v.ndim == 4:
        raise ValueError(f"Attention: Q, K and V must have rank 3 or 4, got {q.ndim}, "
                         f"{k.ndim}, {v.ndim}")
    hq, hk = q.shape[1], k.shape[1]
    if v.shape[1] != hk or hq % hk or k.shape[2] != v.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"Attention: Q {q.shape}, K {k.shape} and V {v.shape} (batch, heads, "
                         "sequence, head size) do not fit")
    if hq != hk:
        k, v = np.repeat(k, hq // hk, axis=1), np.repeat(v, hq // hk, axis=1)
    scale = a.get("scale")
    if scale is None:
        scale = 1 / math.sqrt(q.shape[3])
    s = matmul(q, np.swapaxes(k, -1, -2)) * q.dtype.type(scale)
    cap = a.get("softcap", 0.0)
    if cap and cap > 0:
        s = q.dtype.type(cap) * np.tanh(s / q.dtype.type(cap))
    Sq, Sk = s.shape[-2:]
    allowed = np.tri(Sq, Sk, dtype=bool) if a.get("is_causal", 0) else None
    if mask is not None:
        mask = np.asarray(mask)
        if not 2 <= mask.ndim <= 4 or mask.shape[-1] != Sk:    # (as ONNX Runtime)
            raise ValueError(f"Attention: attn_mask {mask.shape} must have rank 2, 3 or 4 "
                             f"and end in the keys' length {Sk}")
        if mask.dtype == np.bool_:
            allowed = mask if allowed is None else allowed & mask
        else:
            s = s + mask.astype(s.dtype, copy=False)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    dead = ~np.isfinite(m)                 # (no key attended: a zero row)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(s - np.where(dead, 0, m))
        w = e / np.sum(e, axis=-1, keepdims=True)
    y = matmul(np.where(dead, 0, w), v)
    if three:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], Sq, -1)
    return [y.astype(q.dtype, copy=False)]


def _op_pow(i, a, o):
    x, y = i[0], i[1]
    return [np.power(x, y.astype(x.dtype) if x.dtype.kind == "f" else y).astype(x.dtype, copy=False)]


def _op_mod(i, a, o):
    """ONNX Mod: ``fmod=1`` C's fmod (the dividend's sign), else the floor modulo (the
    divisor's sign, as Python's %), which takes integers only before opset 28 (ONNX
    Runtime refuses floats there).  PyTorch's TorchScript export of
    nn.MultiheadAttention writes one on its shape arithmetic."""
    x, y = np.asarray(i[0]), np.asarray(i[1])
    if a.get("fmod", 0):
        with np.errstate(divide="ignore", invalid="ignore"):    # (x % 0: nan, as ORT)
            return [np.fmod(x, y)]
    if (x.dtype.kind == "f" or y.dtype.kind == "f") and o < 28:
        raise ValueError("Mod: fmod=0 takes integers before opset 28 (set fmod=1 for "
                         "floats)")
    if y.dtype.kind in "iu" and not np.all(y):
        raise ValueError("Mod: integer division by zero")
    with np.errstate(divide="ignore", invalid="ignore"):
        return [np.mod(x, y)]


def _op_layernorm(i, a, o):
    x, scale = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    axis = a.get("axis", -1) % x.ndim
    eps = a.get("epsilon", 1e-5)
    ax = tuple(range(axis, x.ndim))
    mu = x.mean(axis=ax, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=ax, keepdims=True)
    y = (x - mu) / np.sqrt(var + _same(x, eps)) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype, copy=False)]


def _op_global_pool(reduce):
    def op(i, a, o):
        x = i[0]
        if x.ndim < 3:
            raise ValueError(f"a global pool needs (N, C, ...) input, got shape {x.shape}")
        return [reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype,
                                                                                copy=False)]
    return op


def _op_batchnorm(i, a, o):
    """BatchNormalization at inference (the running mean and variance) over axis 1."""
    if a.get("training_mode", 0):
        raise ValueError("BatchNormalization: training_mode=1 is not supported (inference "
                         "only)")
    x, scale, bias, mean, var = i[:5]
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: input of shape {x.shape} has no channel axis")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = _same(x, a.get("epsilon", 1e-5))
    inv = (scale / np.sqrt(var + eps)).reshape(shape)
    y = (x - mean.reshape(shape)) * inv + bias.reshape(shape)
    return [y.astype(x.dtype, copy=False)]


def _op_onehot(i, a, o):
    idx, depth, values = i[0], int(np.asarray(i[1]).reshape(-1)[0]), i[2]
    axis = a.get("axis", -1)
    idx = np.where(idx < 0, idx + depth, idx).astype(np.int64)
    eye = (np.arange(depth) == idx[..., None])
    out = np.where(eye, values[1], values[0])
    if axis != -1:
        out = np.moveaxis(out, -1, axis)
    return [out]


# Sequences (ONNX ``seq(tensor)`` values) are Python lists of arrays.  Only the ops in
# _SEQ_OUTPUTS make them and only the inputs in _SEQ_INPUTS (and Identity) read them:
# OnnxModel.__init__ checks every value is used as what it is, and refuses a graph output
# that is a sequence (a model's results are arrays).
def _op_split_to_sequence(i, a, o):
    x = i[0]
    if x.ndim == 0:
        raise ValueError("SplitToSequence: the input must have rank >= 1, got a scalar")
    axis = int(a.get("axis", 0))
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"SplitToSequence: axis {axis} out of range [{-x.ndim}, {x.ndim - 1}]")
    axis %= x.ndim
    n = x.shape[axis]
    split = i[1] if len(i) > 1 and i[1] is not None else None
    if split is None:           # (parts of 1; keepdims=0: that axis dropped)
        if a.get("keepdims", 1):
            return [np.split(x, n, axis=axis) if n else []]
        v = np.moveaxis(x, axis, 0)
        return [[v[k, ...] for k in range(n)]]    # (arrays: a rank-1 input's are 0-d)
    split = np.asarray(split)
    if split.dtype.kind not in "iu":
        raise ValueError(f"SplitToSequence: 'split' must be integers, got {split.dtype}")
    sizes = _ints(split)        # (1-D; more axes read as one, as ONNX Runtime does)
    # (keepdims is ignored with a 'split', as the ONNX specification says; ONNX Runtime
    # drops the axis for a scalar 1 and fails on other scalars)
    if split.ndim == 0:         # (parts of that size, the last one the rest)
        s = sizes[0]
        if s <= 0:
            raise ValueError(f"SplitToSequence: 'split' must be positive, got {s}")
        return [[x[(slice(None),) * axis + (slice(k, k + s),)] for k in range(0, n, s)]]
    if any(s < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"SplitToSequence: 'split' {sizes} must be sizes >= 0 summing to "
                         f"the size {n} of axis {axis}")
    return [np.split(x, np.cumsum(sizes)[:-1], axis=axis) if sizes else []]


def _op_sequence_at(i, a, o):
    seq, pos = i[0], np.asarray(i[1])
    if pos.size != 1 or pos.dtype.kind not in "iu":
        raise ValueError(f"SequenceAt: 'position' must be one integer, got {pos.dtype} of "
                         f"shape {pos.shape}")
    p, n = _ints(pos)[0], len(seq)
    if not -n <= p < n:
        raise IndexError(f"SequenceAt: position {p} out of range [{-n}, {n - 1}] "
                         f"(a sequence of {n})")
    return [seq[p]]


def _op_reverse_sequence(i, a, o):
    x, lens = i[0], np.asarray(i[1])
    ba, ta = int(a.get("batch_axis", 1)), int(a.get("time_axis", 0))
    if sorted((ba, ta)) != [0, 1]:
        raise ValueError(f"ReverseSequence: batch_axis and time_axis must be 0 and 1, one "
                         f"each, got {ba} and {ta}")
    if x.ndim < 2:
        raise ValueError(f"ReverseSequence: the input must have rank >= 2, got shape {x.shape}")
    B, T = x.shape[ba], x.shape[ta]
    if lens.shape != (B,) or (lens.size and lens.dtype.kind not in "iu"):
        raise ValueError(f"ReverseSequence: sequence_lens must be integers of shape ({B},), "
                         f"got {lens.dtype} of shape {lens.shape}")
    L = lens.astype(np.int64)[:, None]
    if L.size and (L.min() < 0 or L.max() > T):
        raise ValueError(f"ReverseSequence: sequence_lens must be in [0, {T}], got "
                         f"{lens.tolist()}")
    t = np.arange(T)
    idx = np.where(t < L, L - 1 - t, t)             # (B, T): each row's time order
    b = np.arange(B)[:, None]
    return [x[b, idx] if ba == 0 else x[idx.T, b.T]]


def _pad_args(i, a, o):
    """(pads as [(before, after)] per axis, constant value, mode) of a Pad node: before
    opset 11 from the attributes (opset 1: ``paddings``), from then on from the inputs
    ``pads``, ``constant_value`` (absent or empty: 0) and, from opset 18, ``axes``."""
    x = i[0]
    mode = a.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if o < 11:
        pads = [int(p) for p in a.get("pads", a.get("paddings", []))]
        value = a.get("value", 0.0)
        axes = None
    else:
        pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else []
        cv = i[2] if len(i) > 2 and i[2] is not None else None
        value = np.asarray(cv).reshape(-1)[0] if cv is not None and np.asarray(cv).size else 0
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else None
    axes = (list(range(x.ndim)) if axes is None
            else [_axis_of("Pad", ax, x.ndim) for ax in axes])
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: pads must have {2 * len(axes)} values (begins, then ends, "
                         f"for axes {axes}), got {len(pads)}")
    width = [(0, 0)] * x.ndim
    for k, ax in enumerate(axes):
        width[ax] = (pads[k], pads[k + len(axes)])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"Pad: unknown mode {mode!r}")
    return width, value, mode


def _op_pad(i, a, o):
    x = i[0]
    width, value, mode = _pad_args(i, a, o)
    # negative pads crop: crop first, then pad by the positive parts
    crop = tuple(slice(max(-b, 0), x.shape[k] - max(-e, 0)) for k, (b, e) in enumerate(width))
    if any(b < 0 or e < 0 for b, e in width):
        if any(x.shape[k] + min(b, 0) + min(e, 0) < 0 for k, (b, e) in enumerate(width)):
            raise ValueError(f"Pad: pads {width} crop more than the input's shape {x.shape}")
        x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        return [np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))]
    if mode != "wrap" and any((b or e) and x.shape[k] == 0 for k, (b, e) in enumerate(width)):
        raise ValueError(f"Pad: mode {mode!r} cannot pad an axis of size 0")
    return [np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


# TopK, ScatterElements / Scatter, NonZero: what PyTorch's TorchScript export of
# pack_padded_sequence(..., enforce_sorted=False) sorts the batch by length with (TopK of
# the lengths; opset 10: NonZero as a range) and unsorts the results with (the inverse
# permutation, ScatterElements / Scatter of a range at the sort's indices, then Gather).
def _axis_of(op, axis, rank):
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} out of range [{-rank}, {rank - 1}] for an "
                         f"input of rank {rank}")
    return axis % rank


def _op_topk(i, a, o):
    """TopK as ONNX Runtime's: the k largest (smallest) along ``axis``, sorted, ties in
    index order (lower index first), NaN above every number (largest: first, smallest:
    last); ``sorted=0`` gives the same k values and indices in that order too (ONNX
    leaves their order open)."""
    x = np.asarray(i[0])
    if o < 10:
        if "k" not in a:
            raise ValueError("TopK: attribute 'k' is required (opset < 10)")
        k = int(a["k"])
    else:
        kk = np.asarray(i[1]) if len(i) > 1 and i[1] is not None else None
        if kk is None or kk.shape != (1,) or kk.dtype.kind not in "iu":
            raise ValueError("TopK: 'K' must be a 1-D tensor of one integer, got "
                             + ("nothing" if kk is None else f"{kk.dtype} of shape {kk.shape}"))
        k = int(kk[0])
    if x.ndim == 0:
        raise ValueError("TopK: the input must have rank >= 1, got a scalar")
    if x.dtype.kind not in "iuf":
        raise TypeError(f"TopK: the input must be numbers, got {x.dtype}")
    axis = _axis_of("TopK", a.get("axis", -1), x.ndim)
    n = x.shape[axis]
    if k < 0:
        raise ValueError(f"TopK: k must not be negative, got {k}")
    if k > n:
        raise ValueError(f"TopK: k = {k} is larger than axis {axis}'s size {n} (input shape "
                         f"{x.shape})")
    largest = int(a.get("largest", 1)) if o >= 11 else 1
    if x.ndim == 1:             # (PyTorch's sort of the lengths: plain indexing)
        if largest:
            idx = (n - 1) - np.argsort(x[::-1], kind="stable")[::-1][:k]
        else:
            idx = np.argsort(x, kind="stable")[:k]
        idx = idx.astype(np.int64, copy=False)
        return [x[idx], idx]
    if largest:
        # stable ascending order of the reversed axis, read backwards: descending, ties
        # (and NaNs, first) in index order; no negation (unsigned, the int minimum)
        rev = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        idx = (n - 1) - np.flip(rev, axis)
    else:
        idx = np.argsort(x, axis=axis, kind="stable")    # (NaNs last, in index order)
    idx = idx[(slice(None),) * axis + (slice(0, k),)].astype(np.int64, copy=False)
    return [np.take_along_axis(x, idx, axis=axis), idx]


def _scatter_targets(op, data, idx, upd, axis):
    """The flat positions in ``data`` that ``upd``'s elements go to (ScatterElements),
    checked as ONNX Runtime checks them."""
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got {idx.dtype}")
    if idx.ndim != data.ndim:
        raise ValueError(f"{op}: indices must have the rank of data ({data.ndim}), got shape "
                         f"{idx.shape}")
    if upd.shape != idx.shape:
        raise ValueError(f"{op}: updates must have the shape of indices {idx.shape}, got "
                         f"{upd.shape}")
    big = [d for d in range(data.ndim) if d != axis and idx.shape[d] > data.shape[d]]
    if big:
        raise ValueError(f"{op}: indices of shape {idx.shape} are larger than data of shape "
                         f"{data.shape} on axis {big[0]} (only the scatter axis {axis} may be)")
    n = data.shape[axis]
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].reshape(-1)[0]
        raise IndexError(f"{op}: index {bad} out of range [{-n}, {n - 1}] (axis {axis} of "
                         f"data of shape {data.shape})")
    if idx.size and idx.min() < 0:
        idx = np.where(idx < 0, idx + n, idx)
    if data.ndim == 1:          # (PyTorch's unsort: a permutation's inverse)
        return idx
    pos = list(np.indices(idx.shape, sparse=True))
    pos[axis] = idx
    return np.ravel_multi_index(tuple(pos), data.shape).reshape(-1)


def _op_scatter_elements(i, a, o, op="ScatterElements"):
    data, idx, upd = (np.asarray(v) for v in i[:3])
    if data.ndim == 0:
        raise ValueError(f"{op}: data must have rank >= 1, got a scalar")
    axis = _axis_of(op, a.get("axis", 0), data.ndim)
    red = a.get("reduction", "none") if op == "ScatterElements" else "none"
    if red not in ("none", "add", "mul", "max", "min"):
        raise ValueError(f"{op}: unknown reduction {red!r} (none, add, mul, max, min)")
    flat = _scatter_targets(op, data, idx, upd, axis)
    out = data.copy()           # (data may be a kept, read-only value)
    o_flat = out.reshape(-1)    # (a view: a copy is contiguous)
    u = upd.reshape(-1).astype(data.dtype, copy=False)
    if not flat.size:
        return [out]
    if red == "none":
        srt = np.sort(flat)
        if (srt[1:] == srt[:-1]).any():
            # repeated positions: the last update wins, as ONNX Runtime writes them in
            # order (NumPy's assignment promises no order)
            last = flat.size - 1 - np.unique(flat[::-1], return_index=True)[1]
            flat, u = flat[last], u[last]
        o_flat[flat] = u
    elif red in ("add", "mul"):
        (np.add if red == "add" else np.multiply).at(o_flat, flat, u)   # (in order)
    else:
        # in order, each step as ONNX Runtime's std::max(update, out) / std::min(update,
        # out) (NaN and signed zeros included): the k-th repeats of positions per round
        order = np.argsort(flat, kind="stable")
        f = flat[order]
        start = np.r_[0, np.flatnonzero(f[1:] != f[:-1]) + 1]
        rank = np.arange(f.size) - np.repeat(start, np.diff(np.r_[start, f.size]))
        for r in range(int(rank.max()) + 1):
            sel = order[rank == r]
            t, v = flat[sel], u[sel]
            cur = o_flat[t]
            o_flat[t] = np.where(v < cur, cur, v) if red == "max" else \
                np.where(cur < v, cur, v)
    return [out]


def _op_nonzero(i, a, o):
    x = np.asarray(i[0])
    if x.ndim == 0:             # (ONNX Runtime: a scalar as one element, shape (1, nnz))
        x = x.reshape(1)
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


_SIMPLE_OPS: dict[str, Callable] = {
    "Identity": _op_identity,
    "Constant": _op_constant,
    "ConstantOfShape": _op_constant_of_shape,
    "Shape": _op_shape,
    "Size": _op_size,
    "Cast": _op_cast,
    "CastLike": _op_castlike,
    "Transpose": _op_transpose,
    "Squeeze": _op_squeeze,
    "Unsqueeze": _op_unsqueeze,
    "Reshape": _op_reshape,
    "Flatten": _op_flatten,
    "Concat": _op_concat,
    "Split": _op_split,
    "Slice": _op_slice,
    "Gather": _op_gather,
    "GatherElements": _op_gather_elements,
    "MatMul": _op_matmul,
    "Gemm": _op_gemm,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
    "Mod": _op_mod,
    "Pow": _op_pow,
    "Attention": _op_attention,
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "LessOrEqual": _binary(np.less_equal),
    "Greater": _binary(np.greater),
    "GreaterOrEqual": _binary(np.greater_equal),
    "And": _binary(np.logical_and),
    "Or": _binary(np.logical_or),
    "Xor": _binary(np.logical_xor),
    "Not": _op_not,
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
    "Sum": _variadic(np.add),
    "Mean": lambda i, a, o: [np.asarray(sum(x for x in i if x is not None)
                                        / len([x for x in i if x is not None])).astype(i[0].dtype)],
    "Where": _op_where,
    "Expand": _op_expand,
    "Range": _op_range,
    "Tile": _op_tile,
    "Pad": _op_pad,
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Sqrt": _unary(np.sqrt),
    "Exp": _unary(np.exp),
    "Log": _unary(np.log),
    "Reciprocal": _unary(np.reciprocal),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Round": _unary(np.rint),
    "Sign": _unary(np.sign),
    "Erf": _op_erf,
    "Relu": _unary(lambda x: np.maximum(x, 0)),
    "Tanh": _unary(np.tanh),
    "Sigmoid": lambda i, a, o: [_sigmoid(i[0])],
    "Softsign": _unary(lambda x: x / (1 + np.abs(x))),
    "Softplus": _op_softplus,
    "LeakyRelu": _op_leakyrelu,
    "Elu": _op_elu,
    "Selu": _op_selu,
    "HardSigmoid": _op_hardsigmoid,
    "HardSwish": _unary(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "ThresholdedRelu": _op_thresholdedrelu,
    "PRelu": _op_prelu,
    "Gelu": _op_gelu,
    "Clip": _op_clip,
    "Softmax": _op_softmax,
    "LogSoftmax": lambda i, a, o: _op_softmax(i, a, o, log=True),
    "ReduceMean": _reduce(np.mean),
    "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
    "ReduceProd": _reduce(np.prod),
    "ReduceSumSquare": _reduce(lambda x, axis, keepdims: np.sum(np.square(x), axis=axis,
                                                                keepdims=keepdims)),
    "ReduceL2": _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis,
                                                                 keepdims=keepdims))),
    "Einsum": _op_einsum,
    "ArgMax": _op_argmax,
    "ArgMin": lambda i, a, o: _op_argmax(i, a, o, fn=np.argmin),
    "Dropout": _op_dropout,
    "LayerNormalization": _op_layernorm,
    "Conv": _op_conv,
    "MaxPool": _op_maxpool,
    "AveragePool": _op_avgpool,
    "GlobalAveragePool": _op_global_pool(np.mean),
    "GlobalMaxPool": _op_global_pool(np.max),
    "BatchNormalization": _op_batchnorm,
    "OneHot": _op_onehot,
    "SplitToSequence": _op_split_to_sequence,
    "SequenceAt": _op_sequence_at,
    "ReverseSequence": _op_reverse_sequence,
    "TopK": _op_topk,
    "ScatterElements": _op_scatter_elements,
    "Scatter": lambda i, a, o: _op_scatter_elements(i, a, o, op="Scatter"),
    "NonZero": _op_nonzero,
    # (its branches compiled at load, in its attributes: _onnx_if.compile_if)
    "If": _if.op_if,
    # (its body compiled at load, in its attributes: _onnx_scan.compile_scan)
    "Scan": _scan.op_scan,
}
# the ops whose outputs are sequences (lists of arrays), and the inputs that must be ones
_SEQ_OUTPUTS = {"SplitToSequence"}
_SEQ_INPUTS = {"SequenceAt": (0,)}
# ops whose value depends on nothing but their inputs (safe to fold at load time)
_NO_FOLD = {"Dropout"}
# attributes an op needs (up to the opset where an input took their place):
# (name, first opset without it)
_REQUIRED_ATTRS = {"Concat": (("axis", 10 ** 9),), "Cast": (("to", 10 ** 9),),
                   "Reshape": (("shape", 5),), "Slice": (("starts", 10), ("ends", 10))}

_RECURRENT = ("LSTM", "GRU", "RNN")
# the inputs whose values, not only their shapes, decide an op's output shape (every
# other input of these ops and of the recurrent ones decides it by its shape alone)
_SHAPE_ARGS = {"Squeeze": (1,), "Unsqueeze": (1,), "Reshape": (1,), "Expand": (1,),
               "Pad": (1, 3),
               "Tile": (1,), "Slice": (1, 2, 3, 4), "Split": (1,), "ConstantOfShape": (0,),
               "Range": (0, 1, 2), "OneHot": (1,), "ReduceMean": (1,), "ReduceSum": (1,),
               "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
               "ReduceSumSquare": (1,), "ReduceL2": (1,),
               "SplitToSequence": (1,), "SequenceAt": (1,), "TopK": (1,), "NonZero": (0,)}
SUPPORTED_OPS = tuple(sorted(set(_SIMPLE_OPS) | set(_RECURRENT) | {"Loop"}))

# Load-time constant folding (OnnxModel.__init__) makes at most this many elements in all
# (64 MiB of float32), or _FOLD_PER_ELEMENT times the initializers' elements where that is
# more: the size of every folded op's output is found first (_fold_size), and an op that
# would pass the rest of it is refused, naming it.  Without a bound a 2 KB file (a
# ConstantOfShape, Range, Tile or Expand of [4e8]; a Concat of a value with itself, again
# and again) filled gigabytes while loading.  PyTorch's exports fold their constants
# themselves: what is left to fold at load is shape arithmetic and small constants, far
# below the floor; a bound growing with the initializers (which are in the model's files,
# so cost their size on disk) leaves room for an exporter folding nothing (a transposed
# or cast copy of each weight: 4 times the weights' elements).
_FOLD_ELEMENTS = 1 << 24
_FOLD_PER_ELEMENT = 4


def _prod(dims) -> int:
    """The elements of an array of shape ``dims`` (negative sizes as 0: the op refuses
    them)."""
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n


def _max_shape(shapes) -> list:
    """The largest size of each axis of ``shapes`` lined up at their last axes (at least
    1): no smaller than the shape they broadcast to, nor than any of them."""
    out = [1] * max((len(s) for s in shapes), default=0)
    for s in shapes:
        for k, d in enumerate(s, len(out) - len(s)):
            out[k] = max(out[k], int(d))
    return out


def _fold_size(op_type, vals, attrs, opset) -> int:
    """Without running it, a bound of the elements of op ``op_type``'s largest output on
    the constant inputs ``vals``: from the values that set it (ConstantOfShape, Tile,
    Expand, Range, OneHot, Gather) or the inputs' shapes (a Concat: their sum; a Gemm:
    its product's; SplitToSequence, all its parts, ReverseSequence, TopK and
    ScatterElements / Scatter: their (first) input's; NonZero: its input's times its rank;
    a SequenceAt: the sequence's largest; the rest make at most the shape their inputs
    broadcast to)."""
    arrs = [v for v in vals if isinstance(v, np.ndarray)]
    if op_type in ("SplitToSequence", "ReverseSequence", "TopK", "ScatterElements",
                   "Scatter"):
        return vals[0].size
    if op_type == "NonZero":
        return vals[0].size * max(vals[0].ndim, 1)
    if op_type == "SequenceAt":
        return max((v.size for v in vals[0]), default=0)
    if op_type == "ConstantOfShape":
        return _prod(_ints(vals[0]))
    if op_type == "Tile":
        return vals[0].size * _prod(_ints(vals[1]))
    if op_type == "Pad":
        width = _pad_args(vals, attrs, opset)[0]
        return _prod(d + max(b, 0) + max(e, 0) for d, (b, e) in zip(vals[0].shape, width))
    if op_type == "Expand":
        return _prod(_max_shape([vals[0].shape, _ints(vals[1])]))
    if op_type == "Range":
        start, limit, delta = (np.asarray(v).reshape(()).item() for v in vals[:3])
        return max(math.ceil((limit - start) / delta), 0) if delta else 0
    if op_type == "OneHot":
        return vals[0].size * max(_ints(vals[1])[0], 0)
    if op_type == "Gather":
        x, axis = vals[0], attrs.get("axis", 0)
        ok = -x.ndim <= axis < x.ndim and x.shape[axis]     # (else the op refuses it)
        return vals[1].size * (x.size // x.shape[axis]) if ok else 0
    if op_type == "Concat":
        return sum(v.size for v in arrs)
    if op_type == "Einsum":     # (no output is larger than the product of its inputs)
        return _prod(v.size for v in arrs)
    shapes = [v.shape for v in arrs]
    if op_type == "Gemm" and arrs[0].ndim == arrs[1].ndim == 2:
        shapes[:2] = [(arrs[0].shape[1 if attrs.get("transA", 0) else 0],
                       arrs[1].shape[0 if attrs.get("transB", 0) else 1])]
    elif len(arrs) == 2:        # (and as _binary's legacy broadcast lines them up)
        shapes.append(_legacy_y(arrs[0], arrs[1], attrs, opset).shape)
    return _prod(_max_shape(shapes))


# ------------------------------------------------------------------- recurrent nodes
_LSTM_PERM = [0, 2, 3, 1]   # ONNX i o f c -> fastrnn i f g o
_GRU_PERM = [1, 0, 2]       # ONNX z r h -> fastrnn r z n
_PEEP_PERM = [0, 2, 1]      # ONNX i o f -> fastrnn i f o
_N_ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                 "RNN": ["Tanh"]}
# ONNX RNN activations that take alpha / beta (how many of activation_alpha/beta each
# consumes, as ONNX Runtime reads the lists)
_ALPHA = {"leakyrelu", "thresholdedrelu", "elu", "hardsigmoid", "affine", "scaledtanh"}
_BETA = {"hardsigmoid", "affine", "scaledtanh"}
# When activation_alpha/beta run out, ONNX Runtime uses these (0 for the rest: so Affine
# without alpha is 0, ThresholdedRelu without alpha is x>0, ScaledTanh without alpha is 0).
# We follow ONNX Runtime, the reference users validate their models with.
_ORT_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}


def _reorder(w: np.ndarray, perm, H: int, axis: int = 0) -> np.ndarray:
    blocks = np.split(w, len(perm), axis=axis)
    return np.concatenate([blocks[p] for p in perm], axis=axis)


def _parse_rnn_activations(op: str, attrs: dict, D: int, where: str) -> list:
    n = _N_ACTS[op]
    names = attrs.get("activations")
    if names is None:
        names = _DEFAULT_ACTS[op] * D
    names = list(names)
    if len(names) == n and D == 2:
        names = names * 2
    if len(names) != n * D:
        raise LoadError(f"{where}: {op} with {D} direction(s) takes {n * D} activations, "
                        f"got {len(names)} ({names})")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    specs = []
    for name in names:
        key = name.lower()
        from ..layers import parse_activation
        try:
            parse_activation(key)
        except ValueError:
            raise LoadError(f"{where}: unsupported activation {name!r} in {op} node; supported: "
                            "Sigmoid, Tanh, Relu, HardSigmoid, LeakyRelu, Affine, ScaledTanh, "
                            "Elu, Softsign, Softplus, ThresholdedRelu") from None
        alpha, beta = _ORT_DEFAULTS.get(key, (0.0, 0.0))
        if key in _ALPHA and alphas:
            alpha = float(alphas.pop(0))
        if key in _BETA and betas:
            beta = float(betas.pop(0))
        specs.append((key, alpha, beta))
    return specs


class _RecurrentNode:
    """One ONNX LSTM / GRU / RNN node turned into a fastrnn layer."""

    def __init__(self, node, attrs: dict, consts: Mapping[str, np.ndarray], where: str,
                 num_threads):
        self.op = node.op_type
        self.where = where
        n_in, n_out = (8, 3) if self.op == "LSTM" else (6, 2)
        for what, names, n in (("inputs", node.input, n_in),
                               ("outputs", getattr(node, "output", ()), n_out)):
            if any(names[n:]):
                raise LoadError(f"{where}: {self.op} takes at most {n} {what}, the node "
                                f"lists {len(names)} ({', '.join(map(repr, names))})")
        self.inputs = list(node.input[:n_in]) + [""] * (8 - min(len(node.input), n_in))
        self.attrs = attrs
        self.num_threads = num_threads
        self.direction = attrs.get("direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise LoadError(f"{where}: unknown direction {self.direction!r}")
        self.D = 2 if self.direction == "bidirectional" else 1
        self.layout = int(attrs.get("layout", 0))
        if self.layout not in (0, 1):
            raise LoadError(f"{where}: layout must be 0 or 1, got {self.layout}")
        self.acts = _parse_rnn_activations(self.op, attrs, self.D, where)
        self.clip = attrs.get("clip")
        if self.clip is not None and math.isinf(self.clip) and self.clip > 0:
            self.clip = None    # (as ONNX Runtime: no clip)
        self.input_forget = bool(attrs.get("input_forget", 0))
        self.lbr = bool(attrs.get("linear_before_reset", 0))
        if self.input_forget and self.op != "LSTM":
            raise LoadError(f"{where}: input_forget is an LSTM attribute")
        self._layers: dict = {}
        self._made = None       # (the weights the layer was made from, the layer): _get_layer
        wnames = [self.inputs[k] for k in (1, 2, 3)] + [self.inputs[7] if self.op == "LSTM" else ""]
        self._wnames = wnames
        if all((not n) or n in consts for n in wnames):
            self._get_layer(*[consts.get(n) if n else None for n in wnames], own=True)

    def rekey(self, consts: Mapping) -> None:
        """Key the layer made at load by the objects now in ``consts`` for its weights
        (OnnxModel._drop_converted puts placeholders there): the model's own constants,
        read-only, stand for themselves."""
        vals = tuple(consts.get(n) if n else None for n in self._wnames)
        self._made = (vals, self._made[1])

    def _get_layer(self, W, R, B, P, own=False):
        """The layer of weights W, R, B, P: the one made last if they are the objects it
        was keyed by (rekey) or arrays of the same values (a fed array may have been
        changed in place since: its values are compared with a copy kept), else a new
        one.  (Comparing costs a fraction of making a layer.)  ``own``: the model's
        constants (at load), kept as they are, not copied."""
        made = self._made       # (one read: another thread may replace it)
        if made is not None and all(v is k or _same_values(v, k)
                                    for v, k in zip((W, R, B, P), made[0])):
            return made[1]
        from ..layers import _WEIGHTS_FOLLOW, GRU, LSTM, SimpleRNN   # (import: ~0.6 us)
        op, D, where = self.op, self.D, self.where
        if W is None or R is None:
            raise LoadError(f"{where}: inputs W and R are required")
        W = np.asarray(W)
        R = np.asarray(R)
        if W.ndim != 3 or R.ndim != 3 or W.shape[0] != D or R.shape[0] != D:
            raise LoadError(f"{where}: W {W.shape} / R {R.shape} must be (num_directions={D}, "
                            "gates*hidden, .)")
        G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        H = R.shape[-1]
        hs = self.attrs.get("hidden_size")
        if hs is not None and int(hs) != H:
            raise LoadError(f"{where}: hidden_size={hs} but R has shape {R.shape}")
        if W.shape[1] != G * H or R.shape[1] != G * H:
            raise LoadError(f"{where}: W {W.shape} and R {R.shape} must have {G}*{H} rows")
        dt = np.dtype(np.float64) if W.dtype == np.float64 else np.dtype(np.float32)
        I = W.shape[2]
        if B is not None:
            B = np.asarray(B)
            if B.shape != (D, 2 * G * H):
                raise LoadError(f"{where}: B must have shape {(D, 2 * G * H)}, got {B.shape}")
        if P is not None:
            P = np.asarray(P)
            if P.shape != (D, 3 * H):
                raise LoadError(f"{where}: P must have shape {(D, 3 * H)}, got {P.shape}")
        kw = dict(bidirectional=D == 2, batch_first=self.layout == 1, dtype=dt,
                  activations=self.acts, clip=self.clip, num_threads=self.num_threads,
                  go_backwards=self.direction == "reverse",
                  seed=_WEIGHTS_FOLLOW)             # (loaded below, strict)
        try:
            if op == "LSTM":
                layer = LSTM(I, H, input_forget=self.input_forget, peepholes=P is not None, **kw)
            elif op == "GRU":
                layer = GRU(I, H, reset_after=self.lbr, **kw)
            else:
                layer = SimpleRNN(I, H, **kw)
        except (ValueError, TypeError) as e:
            raise LoadError(f"{where}: {e}") from None
        perm = {"LSTM": _LSTM_PERM, "GRU": _GRU_PERM, "RNN": [0]}[op]
        sd = {}
        for d in range(D):
            sfx = "_l0" + ("_reverse" if d else "")
            sd["weight_ih" + sfx] = _reorder(W[d], perm, H)
            sd["weight_hh" + sfx] = _reorder(R[d], perm, H)
            if B is not None:
                sd["bias_ih" + sfx] = _reorder(B[d, :G * H], perm, H)
                sd["bias_hh" + sfx] = _reorder(B[d, G * H:], perm, H)
            else:
                sd["bias_ih" + sfx] = np.zeros(G * H, dt)
                sd["bias_hh" + sfx] = np.zeros(G * H, dt)
            if P is not None:
                sd["weight_ph" + sfx] = _reorder(P[d], _PEEP_PERM, H)
        try:
            layer.load_state_dict(sd, _adopt=set())   # (sd's arrays: new, the layer's alone)
        except (ValueError, TypeError, KeyError) as e:
            raise LoadError(f"{where}: {e}") from None
        self._made = (tuple(v if v is None or own else np.array(v) for v in (W, R, B, P)),
                      layer)
        return layer

    @property
    def layer(self):
        made = self._made
        return None if made is None else made[1]

    def _state(self, s, name, Bsz, H, dtype):
        """An initial state (initial_h / initial_c) as (D, B, H) of the layer's dtype."""
        s = np.asarray(s)
        if self.layout == 1:
            s = s.transpose(1, 0, 2)
        if s.shape != (self.D, Bsz, H):
            raise ValueError(f"{self.where}: {name} must have shape "
                             f"{(self.D, Bsz, H) if self.layout == 0 else (Bsz, self.D, H)}, "
                             f"got {s.shape if self.layout == 0 else s.transpose(1, 0, 2).shape}")
        return s.astype(dtype, copy=False)

    def run(self, vals: list) -> list:
        X, W, R, B, seq, h0, c0, P = (vals + [None] * 8)[:8]
        if self.op != "LSTM":
            P = None
            c0 = None
        layer = self._get_layer(W, R, B, P)
        H, D, dt = layer.hidden_size, self.D, layer.dtype
        out_dtype = X.dtype
        if X.ndim != 3:
            raise ValueError(f"{self.where}: X must be 3-D, got shape {X.shape}")
        if self.layout == 0:
            T, Bsz = X.shape[0], X.shape[1]
        else:
            Bsz, T = X.shape[0], X.shape[1]
        if h0 is not None:
            h0 = self._state(h0, "initial_h", Bsz, H, dt)
        if c0 is not None:
            c0 = self._state(c0, "initial_c", Bsz, H, dt)
        if T == 0:
            # ONNX Runtime: no time steps end with zero final states, whatever the initial
            # ones (as a sequence of length 0 does, below)
            h0 = c0 = None
        lengths = None
        empty = False           # (a sequence of length 0)
        if seq is not None:
            seq = np.asarray(seq)
            if seq.shape != (Bsz,):
                raise ValueError(f"{self.where}: sequence_lens must have shape ({Bsz},), "
                                 f"got {seq.shape}")
            sl = seq.tolist()   # (a few values: quicker in Python than two NumPy reductions)
            if any(v != T for v in sl):
                lengths = seq.astype(np.int64)
                empty = 0 in sl
        if self.op == "LSTM":
            if h0 is not None or c0 is not None:
                z = np.zeros((D, Bsz, H), dt)
                hx = (z if h0 is None else h0, z if c0 is None else c0)
            else:
                hx = None
        else:
            hx = h0
        x = X if X.dtype == dt else X.astype(dt)
        if x.dtype.kind != "f":
            raise TypeError(f"{self.where}: X must be floating point, got {X.dtype}")
        if lengths is None:
            out, hn = layer(x, hx)
        else:
            out, hn = layer(x, hx, lengths=lengths)
        if self.op == "LSTM":
            hn, cn = hn
        else:
            cn = None
        if empty:
            # ONNX Runtime: a sequence of length 0 has zero final states (not initial ones)
            z = lengths == 0
            hn[:, z] = 0
            if cn is not None:
                cn[:, z] = 0
        res = self._outputs(out, hn, cn, T, Bsz, H)
        if out_dtype != dt:
            return [None if v is None else v.astype(out_dtype) for v in res]
        return res

    def _outputs(self, out, hn, cn, T, Bsz, H):
        """[Y, Y_h, Y_c] in the node's layout from the layer's time-major outputs:
        Y (T, D, B, H) or, layout 1, (B, T, D, H) (None if ``out`` is); one direction
        needs no transpose."""
        D = self.D
        if self.layout == 0:
            Y = None if out is None else out.reshape(T, 1, Bsz, H) if D == 1 else \
                np.ascontiguousarray(out.reshape(T, Bsz, D, H).transpose(0, 2, 1, 3))
            return [Y, hn, cn]
        Y = None if out is None else out.reshape(Bsz, T, D, H)
        hn = np.ascontiguousarray(hn.transpose(1, 0, 2))
        cn = np.ascontiguousarray(cn.transpose(1, 0, 2)) if cn is not None else None
        return [Y, hn, cn]

    def compiled(self, xshape, consts: list, y, lens: bool = False):
        """A runner of this node for an input X of shape ``xshape`` and the node's own
        dtype, fixed weights ``consts`` (vals[1:] as :meth:`run` takes them) and zero
        initial states (absent, from the shapes, or constants of zeros of X's state shape:
        in ``consts`` for :meth:`run`, which checks them): the layer's lean call and the
        reshape, nothing checked again
        (OnnxModel's kept programs).  ``y``: None (Y not needed: the layer keeps no
        per-step outputs), "Y", or "TBDH" (layout 0: Y transposed to (T, B, D, H), as
        PyTorch's exports do next: a view of the layer's output).  ``lens``: the runner
        takes ``(X, sequence_lens)``, integers of shape (B,) (all T: the dense call; else
        the layer's lean call with lengths), else X alone.  Anything else runs
        :meth:`run`."""
        layer = self.layer
        dt, H, D, lstm = layer.dtype, layer.hidden_size, self.D, self.op == "LSTM"
        T, Bsz = (xshape[0], xshape[1]) if self.layout == 0 else (xshape[1], xshape[0])
        outputs, slow, seq = self._outputs, self.run, y is not None
        tbdh = (T, Bsz, D, H) if y == "TBDH" else None
        dense, prefix, scope = layer._dense_call, layer._prefix_call, _scope

        def finish(res):
            out, hn = res
            if lstm:
                hn, cn = hn
            else:
                cn = None
            if tbdh:
                return [out.reshape(tbdh), hn, cn]
            return outputs(out if seq else None, hn, cn, T, Bsz, H)

        def fallback(vals):
            res = slow(vals)
            if tbdh:
                res[0] = res[0].transpose(0, 2, 1, 3)
            return res

        if not lens:
            def run(X):             # (inside the model call's scope: OnnxModel._exec)
                res = dense(X, None, seq, scope.idle) if (
                    type(X) is np.ndarray and X.shape == xshape and X.dtype == dt) else None
                return fallback([X] + consts) if res is None else finish(res)
            return run

        def run_lens(args):
            X, S = args
            res = None
            if (type(X) is np.ndarray and X.shape == xshape and X.dtype == dt
                    and type(S) is np.ndarray and S.shape == (Bsz,) and S.dtype.kind in "iu"):
                sl = S.tolist()
                if all(v == T for v in sl):
                    res = dense(X, None, seq, scope.idle)
                else:
                    # (the lengths checked there; zero initial states: a sequence of
                    # length 0 ends with zero states, as ONNX Runtime's, with nothing done)
                    res = prefix(X, None, S, None, seq, scope.idle)
            return fallback([X] + consts[:3] + [S] + consts[4:]) if res is None else \
                finish(res)
        return run_lens


# ------------------------------------------------------------------------ the model
_SHAPES_KEPT = 32   # sets of feeds' shapes whose _Program a model keeps (OnnxModel.run)
_LOCATED = (ValueError, TypeError, IndexError, MemoryError,     # (OnnxModel._located)
            OverflowError)


def _views_file(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a model file's bytes (tensor_to_array's read-only view
    of the raw data, or of a view of it)."""
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, (memoryview, bytes))


def _elements(v) -> int:
    """The elements of a value: an array's, or all of a sequence's (a list of arrays)."""
    if isinstance(v, np.ndarray):
        return v.size
    return sum(a.size for a in v) if isinstance(v, list) else 0


# the arrays models keep (_freeze), by id, weakly: values nothing changes after, which a
# fused Loop's plan trusts by identity (_onnx_loop_fuse._read_only)
_KEPT: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def _freeze(v) -> None:
    """Make an array, or each array of a sequence, read-only (a value the model keeps:
    _results returns copies of those), and note it as kept (_KEPT)."""
    for a in (v if isinstance(v, list) else (v,)):
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
            _KEPT[id(a)] = a


def _own_constants(consts: dict) -> None:
    """Copy the constants a loaded model keeps that are views of the file's bytes, so the
    bytes are freed after loading.  (Initializers are read as views: those that became a
    recurrent layer's weights were converted from them without a copy in between, so a
    load needs the file's bytes and the layers' arrays, not a third copy.)"""
    for k, v in consts.items():
        if isinstance(v, np.ndarray) and _views_file(v):
            consts[k] = v.copy()
        elif isinstance(v, list):       # (a sequence folded at load: its parts)
            consts[k] = [a.copy() if _views_file(a) else a for a in v]


def _unsupported(nodes, bad: dict, inside: str = "") -> None:
    """Adds to ``bad`` each op type of ``nodes`` fastrnn does not run (with its domain
    where not ONNX's), and the first such node's name, looking into Loop and Scan bodies
    and If branches too (``inside``: the Loop / If / Scan node's name, said after the
    node's)."""
    for node in nodes:
        dom = node.domain or "ai.onnx"
        op = node.op_type
        if dom not in ("ai.onnx", "") or (op not in _SIMPLE_OPS and op not in _RECURRENT
                                          and op != "Loop"):
            label = op if dom == "ai.onnx" else f"{dom}.{op}"
            bad.setdefault(label, repr(node.name or label) + inside)
        elif op == "Loop":
            for a in node.attribute:
                if a.name == "body" and a.g is not None:
                    _unsupported(a.g.node, bad, f" (in the body of Loop "
                                 f"{node.name or '(unnamed)'!r}{inside})")
        elif op == "If":
            for a in node.attribute:
                if a.name in _if.BRANCHES and a.g is not None:
                    _unsupported(a.g.node, bad, f" (in the {a.name} of If "
                                 f"{node.name or '(unnamed)'!r}{inside})")
        elif op == "Scan":
            for a in node.attribute:
                if a.name == "body" and a.g is not None:
                    _unsupported(a.g.node, bad, f" (in the body of Scan "
                                 f"{node.name or '(unnamed)'!r}{inside})")


def _shape_walk(steps, fixed: set, known: set, shaped: set) -> None:
    """OnnxModel._shape_only's walk over ``steps``: adds to ``shaped`` the outputs whose
    values follow from the feeds' shapes (and ``fixed``, the constants), to ``known``
    those whose shapes do.  An If's outputs: shaped where all its inputs are (and its
    branches hold no Dropout or Loop: _onnx_if.IfNode.pure); their shapes known where its
    condition is shaped or fixed and each branch it may take gives outputs of known
    shapes (the same walk over the branch, its own names hiding the outer ones)."""
    for kind, obj, ins, outs, _ in steps:
        op = obj.op if kind == "rnn" else obj[1]
        if op in ("Loop", "Scan"):  # (their outputs' values and shapes follow their body's
            continue                # run: never kept)
        args = [n for n in ins if n]
        new = [o for o in outs if o]
        if op == "If":
            ifn = obj[2]["_if"]
            if ifn.pure and any(n in shaped for n in args) and all(
                    n in shaped or n in fixed for n in args):
                shaped.update(new)
                known.update(new)
            elif (ifn.fixed is not None or ins[0] in shaped or ins[0] in fixed) and all(
                    _branch_shapes(b, fixed, known, shaped) for b in ifn.bodies()):
                known.update(new)
            continue
        if kind == "op" and (
                (op in ("Shape", "Size") and args and args[0] in known)
                or (op not in _NO_FOLD and any(n in shaped for n in args)
                    and all(n in shaped or n in fixed for n in args))):
            shaped.update(new)              # (their values, so their shapes too)
            known.update(new)
        elif all(n in known for n in args) and all(
                k >= len(ins) or not ins[k] or ins[k] in shaped or ins[k] in fixed
                for k in _SHAPE_ARGS.get(op, ())):
            known.update(new)


def _branch_shapes(body, fixed: set, known: set, shaped: set) -> bool:
    """Whether an If branch's outputs have shapes that follow from the feeds' shapes,
    given the enclosing values' (_shape_walk)."""
    own = set(body.consts) | {o for st in body.steps for o in st[3] if o}
    b_fixed = (fixed - own) | set(body.consts)
    b_known = (known - own) | set(body.consts)
    b_shaped = shaped - own
    _shape_walk(body.steps, b_fixed, b_known, b_shaped)
    return all(n in b_known for n in body.outputs)


class _Converted:
    """In an OnnxModel's constants: an initializer converted into a recurrent node's
    layer at load and not kept (OnnxModel._drop_converted)."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<{self.name!r}: converted at load>"


class OnnxModel:
    """An ONNX graph ready to run: recurrent nodes as fastrnn layers, the rest in NumPy.

    ``model.run(inputs)`` takes a dict ``{input name: array}`` (or one array, or a list
    in :attr:`input_names` order) and returns a dict ``{output name: array}``;
    ``model(inputs)`` is the same; ``model.predict(inputs)`` returns the first output.
    The first call with feeds of given names, shapes and dtypes (and wanted outputs)
    runs every node and keeps a program for them (:class:`_Program`: the values that
    follow from the shapes, recurrent nodes calling their layers directly); later such
    calls run that program (up to 32 kept a model).
    """

    def __init__(self, proto, *, num_threads: int | None = None, name: str | None = None):
        if _is_onnx_proto(proto):
            proto = _parse(proto.SerializeToString())
        if not isinstance(proto, _proto.Model):
            raise TypeError(f"expected an onnx.ModelProto, got {type(proto).__name__}")
        self.name = name or proto.graph.name or "onnx-model"
        g = proto.graph
        self.opsets = {(dom or "ai.onnx"): int(ver) for dom, ver in proto.opset_import}
        self.opset = self.opsets.get("ai.onnx", 21)
        self.num_threads = num_threads
        consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            consts[t.name] = _tensor(t)
        if g.sparse_initializer:
            raise LoadError(f"{self.name}: sparse initializers are not supported")
        init_names = set(consts)
        self.input_names = [v.name for v in g.input if v.name not in init_names]
        self._input_info = {v.name: v for v in g.input if v.name not in init_names}
        self._in_dtypes: dict = {}      # declared input dtypes (_feeds converts to them)
        for n, info in self._input_info.items():
            et = info.elem_type
            if et:
                try:
                    self._in_dtypes[n] = _np_dtype(et)
                except LoadError as e:
                    raise LoadError(f"{self.name}: input {n!r}: {e}") from None
        # declared input shapes and their fixed sizes: {name: (shape, ((axis, size), ...))}
        # (_feeds checks them; dimension names, unknown sizes, negative ones (invalid,
        # written by some exporters for unknown ones) and no shape are free, as in ORT)
        self._in_shapes = {}
        for n, info in self._input_info.items():
            if info.shape is not None:
                fixed = tuple((k, d) for k, d in enumerate(info.shape)
                              if isinstance(d, int) and d >= 0)
                self._in_shapes[n] = (tuple(info.shape), fixed)
        self._live: dict = {}           # per tuple of wanted outputs: _live_steps
        # initializers that are also listed as inputs (IR < 4): optional overrides
        self._overridable = [v.name for v in g.input if v.name in init_names]
        self.output_names = [v.name for v in g.output]

        # unsupported ops: all reported at once (inside Loop and Scan bodies and If
        # branches too)
        bad: dict = {}
        _unsupported(g.node, bad)
        if bad:
            raise LoadError(
                f"{self.name}: unsupported ONNX op type(s) {sorted(bad)} "
                f"(first node of each: {', '.join(f'{k}: {v}' for k, v in sorted(bad.items()))})."
                f" fastrnn runs {', '.join(_RECURRENT)}, Loop, If, Scan and these simple ops: "
                f"{', '.join(sorted(set(_SIMPLE_OPS) - {'If', 'Scan'}))}")

        known = set(consts) | set(self.input_names)
        seqs: set = set()               # the values that are sequences (_SEQ_OUTPUTS)
        # elements load-time folding may still make (_FOLD_ELEMENTS)
        budget = [max(_FOLD_ELEMENTS, _FOLD_PER_ELEMENT * sum(
            v.size for v in consts.values()))]
        self._loop_limit = _loop.Limit()        # (every Loop node's: loop_limit)
        steps = self._compile(g.node, consts, known, seqs, budget)
        missing = [o for o in self.output_names if o not in known]
        if missing:
            raise LoadError(f"{self.name}: graph outputs {missing} are never computed")
        bad = [o for o in self.output_names if o in seqs]
        if bad:
            raise LoadError(f"{self.name}: graph output(s) {bad} are sequences; fastrnn "
                            "returns arrays only (read a sequence's tensors with SequenceAt)")
        self._seqs = frozenset(seqs)
        self._consts = consts
        self._steps = steps
        self._shaped = self._shape_only(steps, consts)
        self._dropped = self._drop_converted(steps, consts)
        _own_constants(consts)
        for kind, obj, *_ in steps:     # (the layers made at load: keyed by what is kept)
            if kind == "rnn" and obj.layer is not None:
                obj.rekey(consts)
            elif kind == "op" and obj[1] == "Loop":
                obj[0].own(consts)      # (its body's constants and layers: the same)
            elif kind == "op" and obj[1] == "If":
                obj[2]["_if"].own(consts)   # (its branches' layers: the same)
            elif kind == "op" and obj[1] == "Scan":
                obj[2]["_scan"].own(consts)     # (its body's: the same)
        for v in consts.values():      # (so an output that is one, or a view of one, is
            _freeze(v)                  # returned as a copy: _results)
        self._progs: dict = {}          # per wanted outputs and feeds' shapes: _Program
        self._stacks: dict = {}         # stacked nodes run as one layer: _Program._stack
        self._unrolled: dict = {}       # unrolled recurrences' layers (_onnx_unrolled)
        self._out_key = tuple(self.output_names)

    def _compile(self, nodes, consts: dict, known: set, seqs: set, budget: list,
                 prefix: str = "") -> list:
        """The steps running ``nodes`` (a graph's, in order), each ``(kind, obj, inputs,
        outputs, where)``: ("rnn", _RecurrentNode, its 8 inputs, ...) or ("op", (fn,
        op_type, attrs), ...); a Loop's ``fn`` is its :class:`_onnx_loop.LoopNode`, its
        inputs the node's (M and cond padded) and then the outer values its body reads;
        an If's ``fn`` is _onnx_if.op_if and ``attrs`` ``{"_if": its
        :class:`_onnx_if.IfNode`}``, its inputs the condition and then the outer values
        its branches read (an If of a constant condition whose branch gives constants:
        folded); a Scan's ``fn`` is _onnx_scan.op_scan and ``attrs`` ``{"_scan": its
        :class:`_onnx_scan.ScanNode`}``, its inputs the node's and then the outer values
        its body reads.  Nodes of constant inputs are computed here (not Loops or Scans) and
        their outputs put in
        ``consts``, within ``budget[0]`` elements in all (_FOLD_ELEMENTS); ``known``
        (the names defined so far) and ``seqs`` (the sequences) grow with the nodes'
        outputs.  ``prefix``: before each node's "node k ..." in messages (a Loop's
        body, an If's branch: the node's own and the subgraph's, "node 3 If 'x':
        then_branch ", _onnx_loop.compile_subgraph)."""
        steps = []
        for k, node in enumerate(nodes):
            where = f"{prefix}node {k} {node.op_type} {node.name!r}"
            for inp in node.input:
                if inp and inp not in known:
                    raise LoadError(f"{self.name}: {where} reads {inp!r}, which no earlier "
                                    "node, input or initializer defines (graph not "
                                    "topologically sorted?)")
            attrs = _attrs(node)
            for need, since in _REQUIRED_ATTRS.get(node.op_type, ()):
                if need not in attrs and self.opset < since:
                    raise LoadError(f"{self.name}: {where} has no {need!r} attribute "
                                    "(required)")
            outs = list(node.output)
            if node.op_type == "Attention" and (any(node.input[4:]) or any(outs[1:])):
                raise LoadError(f"{self.name}: {where}: Attention's KV cache (past_key, "
                                "past_value, nonpad_kv_seqlen, present_key, present_value) "
                                "and qk_matmul_output are not supported")
            if node.op_type == "MaxPool" and len(outs) > 1 and outs[1]:
                raise LoadError(f"{self.name}: {where}: MaxPool's Indices output is not "
                                "supported")
            if node.op_type == "BatchNormalization" and any(outs[1:]):
                # (opset 9-13's training form: batch statistics, running averages out)
                raise LoadError(f"{self.name}: {where}: BatchNormalization with "
                                f"{sum(map(bool, outs))} outputs is its training form "
                                "(batch statistics; inference only is supported)")
            self._check_sequences(node, seqs, where)
            if node.op_type == "Loop":     # (never folded: its trip count is its own)
                loop = _loop.compile_loop(self, node, attrs, consts, known, seqs, budget,
                                          where)
                attrs = {k: v for k, v in attrs.items() if k != "body"}   # (compiled)
                ins = (list(node.input) + ["", ""])[:max(2, len(node.input))]
                steps.append(("op", (loop, "Loop", attrs), ins + list(loop.body.outer),
                              outs, where))
            elif node.op_type == "If":     # (folded only where its condition is constant)
                ifn = _if.compile_if(self, node, attrs, consts, known, seqs, budget, where)
                if ifn.folded is not None:
                    for n, v in zip(outs, ifn.folded):
                        if n:
                            consts[n] = v
                else:
                    steps.append(("op", (_SIMPLE_OPS["If"], "If", {"_if": ifn}),
                                  [node.input[0]] + list(ifn.outer), outs, where))
                seqs.update(o for o, sq in zip(outs, ifn.seq_outs) if o and sq)
            elif node.op_type == "Scan":   # (never folded, as a Loop)
                sn = _scan.compile_scan(self, node, attrs, consts, known, seqs, budget,
                                        where)
                steps.append(("op", (_SIMPLE_OPS["Scan"], "Scan", {"_scan": sn}),
                              list(node.input) + list(sn.body.outer), outs, where))
            elif node.op_type in _RECURRENT:
                rec = _RecurrentNode(node, attrs, consts, where, self.num_threads)
                steps.append(("rnn", rec, rec.inputs, outs, where))    # (padded to 8)
            else:
                fn = _SIMPLE_OPS[node.op_type]
                ins = list(node.input)
                foldable = (node.op_type not in _NO_FOLD and
                            all((not n) or (n in consts and n not in self._overridable)
                                for n in ins))
                if foldable:
                    left = budget[0]
                    vals = [consts[n] if n else None for n in ins]
                    try:
                        size = _fold_size(node.op_type, vals, attrs, self.opset)
                        if size <= left:
                            vals = self._call(fn, node.op_type, vals, attrs, len(outs))
                    except Exception as e:
                        raise LoadError(f"{self.name}: {where}: {type(e).__name__}: {e}") from None
                    if size > left:
                        raise LoadError(
                            f"{self.name}: {where}: its constant output would have {size} "
                            f"elements, more than the {left} left of what the model may "
                            "compute at load (the larger of 2**24 and "
                            f"{_FOLD_PER_ELEMENT} times its initializers' elements)")
                    if node.op_type != "Constant":     # (its value is the file's)
                        budget[0] = left - sum(_elements(v) for v in vals)
                    for n, v in zip(outs, vals):
                        if n:
                            consts[n] = v
                else:
                    steps.append(("op", (fn, node.op_type, attrs), ins, outs, where))
            known.update(o for o in outs if o)
        return steps

    def _check_sequences(self, node, seqs: set, where: str) -> None:
        """A LoadError where ``node`` reads a sequence (a value in ``seqs``) as a tensor or
        a tensor as a sequence (only the inputs in _SEQ_INPUTS are sequences; Identity
        passes either on); adds the node's outputs that are sequences to ``seqs``."""
        op, ins = node.op_type, list(node.input)
        want = _SEQ_INPUTS.get(op, ())
        for k, n in enumerate(ins):
            if n and op != "Identity" and (n in seqs) != (k in want):
                what = "a sequence" if n in seqs else "a tensor"
                raise LoadError(
                    f"{self.name}: {where}: input {k} {n!r} is {what}, but {op} takes "
                    f"{'a sequence' if k in want else 'a tensor'} there (sequences are "
                    f"made by {', '.join(sorted(_SEQ_OUTPUTS))} in the graph; sequence "
                    "graph inputs are not supported)")
        if op in _SEQ_OUTPUTS or (op == "Identity" and ins and ins[0] in seqs):
            seqs.update(o for o in node.output if o)

    def _drop_converted(self, steps, consts) -> frozenset:
        """Initializers read only as the weights (W, R, B, P) of recurrent nodes whose
        layers were made at load: those layers hold them, converted, so the ONNX arrays
        are not kept (they doubled a model's memory: a PyTorch export of a 2-layer
        bidirectional LSTM(512), 42 MB, held 84 MB after loading).  Each is replaced by a
        placeholder, the object its node's layer is keyed by (rekeyed by the caller).
        So are the constants no step reads and no output names: what constant folding at
        load read or made on the way (torch's dynamo export slices and concatenates its
        weights into W / R / B: a model held 4x its weights)."""
        keep = set(self.output_names) | set(self._overridable)
        weights = set()
        for kind, obj, ins, outs, _ in steps:
            if kind == "rnn" and obj.layer is not None:
                # (a node one of whose weights a call may feed keeps them all: its layer
                # is made again from them then)
                fed = any(n in self._overridable for k, n in enumerate(ins)
                          if k in (1, 2, 3, 7))
                for k, n in enumerate(ins):
                    if n:
                        (weights if k in (1, 2, 3, 7) and not fed else keep).add(n)
            else:
                keep.update(n for n in ins if n)
        drop = frozenset(n for n in consts if n not in keep)
        for n in drop:
            consts[n] = _Converted(n)
        return drop

    def _shape_only(self, steps, consts) -> frozenset:
        """The values that follow from the inputs' shapes alone: Shape / Size of a value
        whose shape does, and ops on those and constants.  PyTorch's exports compute
        their zero initial states so (Shape, Gather, Unsqueeze, Concat, Expand: ~60 us
        of a small model's call in NumPy); :meth:`run` computes them once per shapes."""
        fixed = {n for n in consts if n not in self._overridable}
        known = set(consts) | set(self.input_names)     # shapes set by the feeds' shapes
        shaped: set = set()
        _shape_walk(steps, fixed, known, shaped)
        return frozenset(shaped)

    def _call(self, fn, op_type, vals, attrs, nout):
        if op_type == "Split":
            return _op_split(vals, attrs, self.opset, nout)
        if op_type == "Conv":       # (its GEMMs on the recurrent nodes' thread count)
            return _op_conv(vals, attrs, self.opset, self.num_threads)
        return fn(vals, attrs, self.opset)

    # ------------------------------------------------------------- introspection
    @property
    def loop_limit(self):
        """The most iterations a ``Loop`` node without a trip count ``M`` runs before its
        call raises a ValueError naming it (default 2**20; None: no limit).  Its
        condition ends such a loop; one whose condition never turns false (ONNX Runtime
        runs it forever) ends so.  A Loop with ``M`` runs at most ``M`` iterations,
        whatever this says."""
        return self._loop_limit.n

    @loop_limit.setter
    def loop_limit(self, n):
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                              or n < 1):
            raise ValueError(f"loop_limit must be a positive integer or None, got {n!r}")
        self._loop_limit.n = None if n is None else int(n)

    @property
    def recurrent_layers(self) -> list:
        """The fastrnn layers built for the recurrent nodes, in graph order."""
        return [s[1].layer for s in self._steps if s[0] == "rnn"]

    def __repr__(self) -> str:
        ops: dict[str, int] = {}
        for s in self._steps:
            t = s[1].op if s[0] == "rnn" else s[1][1]
            ops[t] = ops.get(t, 0) + 1
        rec = ", ".join(repr(l) for l in self.recurrent_layers if l is not None)
        return (f"OnnxModel({self.name!r}, inputs={self.input_names}, outputs={self.output_names}, "
                f"opset={self.opset}, nodes={dict(sorted(ops.items()))}, layers=[{rec}])")

    # ------------------------------------------------------------------- running
    def _feeds(self, inputs, kwargs) -> dict:
        if inputs is None:
            feeds = {}
        elif type(inputs) is dict or isinstance(inputs, Mapping):   # (the ABC check: ~1 us)
            feeds = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.input_names):
                raise ValueError(f"expected {len(self.input_names)} inputs "
                                 f"{self.input_names}, got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        else:
            if len(self.input_names) != 1:
                raise ValueError(f"this model takes {len(self.input_names)} inputs "
                                 f"{self.input_names}: pass a dict")
            feeds = {self.input_names[0]: inputs}
        feeds.update(kwargs)
        unknown = [n for n in feeds if n not in self._input_info and n not in self._overridable]
        if unknown:
            unknown.sort()
            raise ValueError(f"unknown input(s) {unknown}; the model's inputs are "
                             f"{self.input_names}")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing input(s) {missing}")
        out = {}
        for n, v in feeds.items():
            if type(v) is not np.ndarray:
                if hasattr(v, "detach") and hasattr(v, "numpy"):
                    v = v.detach().cpu().numpy()
                v = np.asarray(v)
            want = self._in_dtypes.get(n)
            if want is not None and v.dtype != want:
                if v.dtype.kind == want.kind or (v.dtype.kind in "iu" and want.kind in "iu"):
                    # (as a layer call casts; ONNX Runtime refuses: never a silent wrap
                    # of integers or an overflow to inf)
                    with np.errstate(over="ignore"):
                        c = v.astype(want)
                    if v.size and (
                            (want.kind in "iu" and not np.array_equal(c, v))
                            or (want.kind == "f" and want.itemsize < v.dtype.itemsize
                                and np.isinf(c).any() and not np.isinf(v[np.isinf(c)]).all())):
                        raise ValueError(f"input {n!r}: values of dtype {v.dtype} do not fit "
                                         f"the model's {want}")
                    v = c
                else:
                    raise TypeError(f"input {n!r} must have dtype {want}, got {v.dtype}")
            decl = self._in_shapes.get(n)
            if decl is not None:
                self._check_shape(n, v.shape, *decl)
            out[n] = v
        return out

    @staticmethod
    def _check_shape(n, got, shape, fixed):
        """A ValueError where a feed's shape ``got`` differs from input ``n``'s declared
        ``shape`` in rank or in a fixed size (as ONNX Runtime's "invalid rank" / "invalid
        dimensions")."""
        decl = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        if len(got) != len(shape):
            raise ValueError(f"input {n!r} must have rank {len(shape)} (declared shape "
                             f"{decl}), got shape {got}")
        for k, d in fixed:
            if got[k] != d:
                raise ValueError(f"input {n!r}: axis {k} has size {got[k]}, but the model "
                                 f"declares size {d} there (declared shape {decl}, got "
                                 f"shape {got})")

    def _live_steps(self, want):
        """The steps the wanted outputs need, in order; those of them whose outputs do not
        follow from the feeds' shapes alone (_shape_only); and the constants those read
        or the outputs are."""
        need = set(want)
        live = []
        for s in reversed(self._steps):
            if any(o in need for o in s[3] if o):
                live.append(s)
                need.update(n for n in s[2] if n)
        live.reverse()
        dyn = [s for s in live if not any(o in self._shaped for o in s[3])]
        consts = {n for s in dyn for n in s[2] if n in self._consts}
        consts.update(w for w in want if w in self._consts)
        return live, dyn, consts

    @staticmethod
    def _sig(want: tuple, feeds: dict) -> tuple:
        """The key of a kept program: wanted outputs, feeds' names, types, shapes, dtypes
        (AttributeError for a feed that is not an array)."""
        return (want, *[(n, type(v), v.shape, v.dtype) for n, v in feeds.items()])

    def run(self, inputs=None, outputs=None, **kwargs) -> dict[str, np.ndarray]:
        """Run the graph.  ``outputs``: names to return (default all graph outputs).

        ONNX Runtime's order is accepted too: ``run(output_names, input_feed)``, with
        ``output_names`` None (all graph outputs) or a list / tuple of names and
        ``input_feed`` a mapping, returns a list of arrays in that order, as
        ``InferenceSession.run`` does.  ``num_threads=n`` (unless the graph has an input
        of that name): the recurrent nodes' thread count for this call, where
        ``load_onnx(num_threads=)`` set none (as a Keras-style model's call)."""
        if outputs is not None and type(outputs) not in (list, tuple, str, dict) \
                and not isinstance(outputs, (str, Mapping)):
            outputs = list(outputs)     # (an iterator of names: read once, here)
        if not kwargs and self._progs and type(outputs) is dict and (
                inputs is None or type(inputs) in (list, tuple)):
            # ONNX Runtime's order with an earlier call's feeds: its kept program at once
            names = self.output_names if inputs is None else inputs
            try:
                want = tuple(names)
                prog = self._progs.get(self._sig(want, outputs))
            except (AttributeError, TypeError):   # (run below says what is wrong)
                prog = None
            if prog is not None:
                res = self._exec(prog, outputs, want)
                return [res[n] for n in want]
        if "num_threads" in kwargs and "num_threads" not in self._input_info \
                and "num_threads" not in self._overridable:
            with threads_for_calls(kwargs.pop("num_threads")):
                return self.run(inputs, outputs, **kwargs)
        if outputs is not None and isinstance(outputs, Mapping) and (
                inputs is None or isinstance(inputs, (list, tuple))):
            names = self.output_names if inputs is None else list(inputs)
            res = self.run(outputs, names, **kwargs)
            return [res[n] for n in names]
        if not kwargs and self._progs:
            # arrays of the dtypes, names and shapes of an earlier call: its kept program
            if type(inputs) is dict:
                feeds = inputs
            elif type(inputs) is np.ndarray and len(self.input_names) == 1:
                feeds = {self.input_names[0]: inputs}
            else:
                feeds = None
            if feeds is not None:
                try:
                    want = (self._out_key if outputs is None else (outputs,)
                            if type(outputs) is str else tuple(outputs))
                    prog = self._progs.get(self._sig(want, feeds))
                except (AttributeError, TypeError):   # (run below says what is wrong)
                    prog = None
                if prog is not None:
                    return self._exec(prog, feeds, want)
        feeds = self._feeds(inputs, kwargs)
        want = self.output_names if outputs is None else list(outputs)
        if isinstance(outputs, str):
            want = [outputs]
        if outputs is not None:
            bad = [w for w in want if w not in self.output_names and w not in self._consts
                   and w not in feeds and not any(w in s[3] for s in self._steps)]
            if bad:
                raise ValueError(f"unknown output(s) {bad}; the model's outputs are "
                                 f"{self.output_names}")
            seq = [w for w in want if w in getattr(self, "_seqs", ())]   # (older pickles)
            if seq:
                raise ValueError(f"{seq} are sequences; fastrnn returns arrays only")
            gone = [w for w in want if w in self._dropped]
            if gone:
                raise ValueError(f"constant(s) {gone} became recurrent layers' weights at "
                                 "load (see recurrent_layers), or no node reads them: not "
                                 "kept")
        key = tuple(want)
        sig = self._sig(key, feeds)
        prog = self._progs.get(sig)
        if prog is not None:
            return self._exec(prog, feeds, key)
        live = self._live.get(key)        # (found once per tuple of outputs)
        if live is None:
            live = self._live[key] = self._live_steps(want)
        env = dict(self._consts)
        env.update(feeds)
        where = None
        try:
            for kind, obj, ins, outs, where in live[0]:
                vals = [env[n] if n else None for n in ins]
                if kind == "rnn":
                    res = obj.run(vals)
                else:
                    fn, op_type, attrs = obj
                    res = self._call(fn, op_type, vals, attrs, len(outs))
                for n, v in zip(outs, res):
                    if n:
                        env[n] = v
        except LoadError:
            raise
        except Exception as e:
            raise self._located(e, where)
        if len(self._progs) >= _SHAPES_KEPT:
            self._progs.clear()
        prog = self._progs[sig] = _Program(self, live, env, key)
        # (this call's results may be views of values the program keeps, made before it
        # froze them: copies too)
        return self._results(env, key, list(feeds.values()) + prog.kept())

    def _located(self, e, where):
        """``e`` with the model's name and the failing node in its message (value, type,
        index, memory and overflow errors, e.g. a ConstantOfShape of a shape too large to
        allocate; the rest as they are)."""
        msg = str(e)
        if where and not msg.startswith(f"{where}: "):     # (a node's own errors name it)
            msg = f"{where}: {msg}"
        for kind in _LOCATED:
            # (NumPy's own subclasses, e.g. AxisError, as their first such base)
            if isinstance(e, kind):
                return (type(e) if type(e) in _LOCATED else kind)(f"{self.name}: {msg}")
        return e

    @staticmethod
    def _results(env, want, feeds, check=None) -> dict:
        """The wanted values; those of them (of ``check``, default all) that are
        read-only (a constant, a kept value, or a view of one) or may share memory with
        one of ``feeds`` (an Identity / Reshape of an input) as copies: as ONNX
        Runtime's, a result is the caller's own; and no two results share memory (a
        graph returning ``y`` and ``Squeeze(y)``: the second is a copy)."""
        res = {w: env[w] for w in want}
        for w, v in res.items():
            if isinstance(v, np.generic):     # (a 0-d result: an array, as ONNX Runtime's)
                res[w] = np.array(v)
        for w in want if check is None else check:
            v = res[w]
            if isinstance(v, np.ndarray) and (not v.flags.writeable or any(
                    np.may_share_memory(v, f) for f in feeds)):
                res[w] = v.copy()
        if len(res) > 1:
            seen = []
            for w, v in res.items():
                if isinstance(v, np.ndarray):
                    if any(np.may_share_memory(v, u) for u in seen):
                        v = res[w] = v.copy()
                    seen.append(v)
        return res

    def _exec(self, prog, feeds, want) -> dict:
        """Run a kept program (_Program) on feeds of its names, shapes and dtypes."""
        env = dict(prog.base)
        env.update(feeds)
        where = None
        with CALL_SCOPE:    # (one call of the layers' pause rule for the whole model)
            try:
                for run, get, outs, where in prog.steps:
                    env.update(zip(outs, run(get(env))))
            except LoadError:
                raise
            except Exception as e:
                raise self._located(e, where)
        return self._results(env, want, feeds.values(), prog.check)

    __call__ = run

    def __getstate__(self):
        """Pickled and copied without what calls keep (programs, stacked layers, live
        steps: made again by the next call; a kept program holds kernel objects that
        do not pickle, and copying one crashed the process)."""
        state = self.__dict__.copy()
        state.update(_progs={}, _stacks={}, _live={}, _unrolled={})
        # (an op step's function by its op type: many are closures, which do not pickle;
        # a Loop's is its LoopNode, which pickles its body so)
        state["_steps"] = [(kind, (None,) + obj[1:] if kind == "op" and obj[1] != "Loop"
                            else obj) + tuple(rest) for kind, obj, *rest in self._steps]
        return state

    def __setstate__(self, state):
        state.setdefault("_unrolled", {})      # (pickles of earlier versions)
        state.setdefault("_loop_limit", _loop.Limit())
        state["_steps"] = [(kind, (_SIMPLE_OPS[obj[1]],) + obj[1:]
                            if kind == "op" and obj[0] is None else obj)
                           + tuple(rest) for kind, obj, *rest in state["_steps"]]
        for v in state["_consts"].values():     # (unpickled arrays are writeable: an
            _freeze(v)                          # output that is one is copied, _results)
        self.__dict__.update(state)

    def predict(self, inputs=None, **kwargs) -> np.ndarray:
        """The first graph output for ``inputs``."""
        first = self.output_names[0]
        return self.run(inputs, outputs=[first], **kwargs)[first]


_RESHAPES = ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity")
# weights of stacked recurrent nodes a program runs as one layer (_Program._stack), at
# most: the layer holds its own copy (a small layer's call saves a few us of ~10; a
# large one's would save nothing worth the memory)
_STACK_BYTES = 1 << 20


def _config(layer) -> dict:
    """A layer's configuration but its input size (_Program._chain)."""
    cfg = layer.get_config()
    cfg.pop("input_size")
    return cfg


def _env_itself(env):
    return env


class _Program:
    """What an OnnxModel's later calls with the same feeds' names, shapes and dtypes
    (and wanted outputs) run, made from the first such call's values ``env``.

    ``base``: the values that follow from the shapes alone (_shape_only), kept
    read-only, with the constants the other steps read; ``zero``: which of those are
    float zeros; ``steps``: the other steps, each (runner, getter, outputs, where);
    ``check``: the wanted outputs that may be read-only or views of a feed (_results
    copies those).
    Recurrent nodes with fixed weights and zero or absent initial states (zeros from the
    shapes, or constants of zeros of the node's state shape: _zero_state) call their
    layer's lean path (_RecurrentNode.compiled); Squeeze / Unsqueeze / Reshape / Flatten /
    Identity of an input of the first call's shape is one reshape; the rest runs as in
    the first call."""
    __slots__ = ("base", "zero", "steps", "check")

    def kept(self) -> list:
        """The arrays the program keeps (read-only)."""
        return [v for v in self.base.values() if isinstance(v, np.ndarray)]

    def __init__(self, model: "OnnxModel", live, env: dict, want: tuple):
        known = {n: env[n] for n in model._shaped if n in env}
        for v in known.values():
            _freeze(v)
        self.base = {n: model._consts[n] for n in live[2]}
        self.base.update(known)
        self.zero = frozenset(n for n, v in known.items() if isinstance(v, np.ndarray)
                              and v.dtype.kind == "f" and not v.any())
        dyn = live[1]
        readers: dict = {}
        for k, step in enumerate(dyn):
            for n in step[2]:
                readers.setdefault(n, []).append(k)
        self.steps, skip = [], set()
        fresh: set = set()      # values each call makes anew (writeable)
        # unrolled recurrences (torch's dynamo export of nn.RNN, cell loops): one layer
        # call each, or one layer step a step (_onnx_unrolled)
        fused, covered = _unrolled.fuse(self, model, dyn, env, want, readers)
        for j, (kind, obj, ins, outs, where) in enumerate(dyn):
            for step in fused.get(j, ()):   # (before step j, which may be one they cover)
                self.steps.append(step)
                fresh.update(step[2])
            if j in skip or j in covered:
                continue
            outs = [o or "\0" for o in outs]
            if kind == "rnn":
                stack = self._stack(model, j, env, want, readers, dyn, skip)
                if stack is not None:
                    self.steps.append(stack)
                    fresh.update(stack[2])
                    continue
                run = self._rnn(model, obj, ins, outs, env, want, readers, dyn, skip)
                if run is not None:
                    fresh.update(outs)
            else:
                run = self._conv(model, j, env, want, readers, dyn, skip, outs, covered)
                if run is not None:
                    fresh.add(outs[0])
                if run is None:
                    run = self._reshape(model, obj, ins, outs, env)     # (a view of ins[0])
                if run is not None and ins[0] in fresh:
                    fresh.add(outs[0])
                if run is None:
                    run = self._linear(model, obj, ins, outs, env)  # (a new array)
                    if run is not None:
                        fresh.add(outs[0])
            if run is not None:     # (these take the first input; X, sequence_lens)
                get = itemgetter(ins[0], ins[4]) if kind == "rnn" and ins[4] else \
                    itemgetter(ins[0])
            else:
                run = self._generic(model, kind, obj, ins, outs)

                def get(env, ins=ins):
                    return [env[n] if n else None for n in ins]
            self.steps.append((run, get, tuple(outs), where))
        self.check = tuple(w for w in want if w not in fresh)

    def _fixed(self, model, n) -> bool:
        """Whether input ``n`` has the same value in every call with these shapes."""
        return not n or ((n in self.base or n in model._consts)
                         and n not in model._overridable)

    def _lean(self, model, obj, ins, env) -> bool:
        """Whether a recurrent node (``ins`` padded to 8) can call its layer's lean path:
        an input of the layer's dtype, fixed weights, zero or absent initial states
        (_zero_state), sequence_lens absent or integers."""
        x, layer = env.get(ins[0]), obj.layer
        seq = env.get(ins[4]) if ins[4] else None
        return (isinstance(x, np.ndarray) and layer is not None and x.dtype == layer.dtype
                and all(self._fixed(model, n) for n in ins[1:4] + ins[7:])
                and (seq is None or (isinstance(seq, np.ndarray) and seq.dtype.kind in "iu"))
                and all(not ins[k] or ins[k] in self.zero
                        or self._zero_state(model, obj, ins[k], x) for k in (5, 6)))

    @staticmethod
    def _zero_state(model, obj, n, x) -> bool:
        """Whether initial state ``n`` of recurrent node ``obj`` is a constant of float
        zeros (an initializer or a Constant node: PyTorch's dynamo export without dynamic
        shapes stores its zero states so) of the node's state shape for input ``x``:
        (D, B, H), layout 1 (B, D, H).  Such a state runs as an absent one where X has
        that shape (_rnn; any other X runs the node with the constant, as the first call
        does, so a state of another batch size is the same error)."""
        v = model._consts.get(n)
        if not (isinstance(v, np.ndarray) and n not in model._overridable
                and v.dtype.kind == "f" and x.ndim == 3 and not v.any()):
            return False
        Bsz, D, H = x.shape[1 - obj.layout], obj.D, obj.layer.hidden_size
        return v.shape == ((D, Bsz, H) if obj.layout == 0 else (Bsz, D, H))

    def _y_use(self, obj, y, want, readers, dyn):
        """How a recurrent node's Y is used: (None: not at all; "Y"; "TBDH": read only
        by PyTorch's Transpose(perm=[0, 2, 1, 3]), then also that step's index)."""
        r = readers.get(y, ())
        nxt = dyn[r[0]] if len(r) == 1 and y not in want else None
        if (nxt and obj.layout == 0 and nxt[0] == "op" and nxt[1][1] == "Transpose"
                and _ints(nxt[1][2].get("perm", ())) == [0, 2, 1, 3]):
            return "TBDH", r[0]
        return ("Y" if y in want or y in readers else None), None

    def _rnn(self, model, obj, ins, outs, env, want, readers, dyn, skip):
        """The lean runner of a recurrent node, or None where it does not apply.  Its
        Y is computed only if read or wanted; read only by PyTorch's (T, B, D, H)
        Transpose, it is made so at once and that step skipped (``outs``, ``skip``
        updated)."""
        if not self._lean(model, obj, ins, env):
            return None
        y, t = self._y_use(obj, outs[0], want, readers, dyn)
        if t is not None:
            outs[0] = dyn[t][3][0]
            skip.add(t)
        # (zero states as absent in the lean call, which runs only for X of the first
        # call's shape; passed on to run's fallback, which checks them against another
        # X, as ONNX Runtime does: _zero_state)
        h0, c0 = (env[ins[k]] if ins[k] else None for k in (5, 6))
        consts = [env[ins[1]], env[ins[2]], env.get(ins[3]), None, h0, c0, env.get(ins[7])]
        return obj.compiled(env[ins[0]].shape, consts, y, bool(ins[4]))

    def _chain(self, model, j, env, want, readers, dyn):
        """The recurrent nodes PyTorch's export of a stacked layer makes, from step
        ``j`` on: each node's Y read only through a reshape to (T, B, D*H) (two
        directions: Transpose(perm=[0, 2, 1, 3]) first), read only by the next node as
        its X; every node lean (_lean, no sequence_lens, layout 0), all of one
        configuration but the first's input size.  (node steps, in-between steps)."""
        nodes, links = [j], []
        while True:
            kind, obj, ins, outs, _ = dyn[nodes[-1]]
            H, D = obj.layer.hidden_size, obj.D
            T, Bsz = env[ins[0]].shape[:2]
            cur, path = outs[0], []
            while len(path) < 3:
                r = readers.get(cur, ())
                if not cur or cur in want or len(r) != 1 or dyn[r[0]][0] != "op":
                    break
                _, (fn, op_type, attrs), o_ins, o_outs, _ = dyn[r[0]]
                if op_type == "Transpose" and not path and \
                        _ints(attrs.get("perm", ())) == [0, 2, 1, 3]:
                    pass
                elif not (op_type in _RESHAPES and o_ins[0] == cur and (path or D == 1)
                          and all(self._fixed(model, n) for n in o_ins[1:])):
                    break
                path.append(r[0])
                cur = o_outs[0]
            r = readers.get(cur, ())
            if not (path and len(r) == 1 and cur not in want and dyn[r[0]][0] == "rnn"
                    and dyn[path[-1]][1][1] != "Transpose"
                    and getattr(env.get(cur), "shape", None) == (T, Bsz, D * H)):
                break
            nxt = dyn[r[0]]
            nins = nxt[2]
            if not (nins[0] == cur and nxt[1].layer is not None and nxt[1].op == obj.op
                    and nxt[1].layout == 0 and nxt[1].D == D and not nins[4]
                    and nxt[1].layer.input_size == D * H
                    and nxt[1].layer.num_threads == obj.layer.num_threads
                    and _config(nxt[1].layer) == _config(obj.layer)
                    and self._lean(model, nxt[1], nins, env)):
                break
            nodes.append(r[0])
            links += path
        return nodes, links

    def _stack(self, model, j, env, want, readers, dyn, skip):
        """A step running a chain of stacked recurrent nodes (_chain, at least two;
        weights of at most _STACK_BYTES, copied into one layer kept by the model) as one
        multi-layer layer's lean call: outputs the nodes' Y_h / Y_c and the last one's Y
        (as _rnn makes it); a first input of another shape or dtype runs the chain's
        own steps.  None where it does not apply."""
        obj, ins = dyn[j][1], dyn[j][2]
        if not (obj.layout == 0 and not ins[4] and self._lean(model, obj, ins, env)):
            return None
        nodes, links = self._chain(model, j, env, want, readers, dyn)
        objs = [dyn[k][1] for k in nodes]
        if len(nodes) < 2 or sum(a.nbytes for o in objs for a in o.layer.parameters().values()
                                 ) > _STACK_BYTES:
            return None
        # (the nodes' layers as fused; where they change later (recurrent_layers): new
        # weights, a thread count or clip, their own steps run, and a new program fuses
        # them again)
        stamp = [(o.layer, o.layer._packed, o.layer.num_threads, o.layer.clip) for o in objs]
        key = tuple((id(lay), id(p), n, c) for lay, p, n, c in stamp)
        ent = model._stacks.get(key)
        if ent is None:
            from ..layers import layer_from_config
            sd = {}
            for i, o in enumerate(objs):
                sd.update((k.replace("_l0", f"_l{i}"), v)
                          for k, v in o.layer.state_dict().items())
            fused = layer_from_config(dict(obj.layer.get_config(), num_layers=len(objs)), sd)
            fused.num_threads = obj.layer.num_threads
            if len(model._stacks) >= _SHAPES_KEPT:
                model._stacks.clear()
            ent = model._stacks[key] = (fused, stamp)     # (keeps the ids' objects)
        fused, last = ent[0], dyn[nodes[-1]]
        y, t = self._y_use(last[1], last[3][0], want, readers, dyn)
        lstm = obj.op == "LSTM"
        own = nodes + links + ([t] if t is not None else [])
        # the final states, (name, 0 h / 1 c, node or None): one node's (a slice of the
        # layer's), or all of them where one Concat(axis=0) reads them, in order, and
        # nothing else does (the layer's own)
        states = []
        for s in ((1, 2) if lstm else (1,)):
            per = [(list(dyn[k][3]) + ["", ""])[s] for k in nodes]
            r = readers.get(per[0], ()) if per[0] else ()
            cat = dyn[r[0]] if len(r) == 1 else None
            if (cat and all(per) and cat[0] == "op" and cat[1][1] == "Concat"
                    and list(cat[2]) == per and int(cat[1][2].get("axis", 1)) in (0, -3)
                    and all(readers.get(n) == [r[0]] and n not in want for n in per)):
                states.append((cat[3][0], s - 1, None))
                own.append(r[0])
            else:
                states += [(n, s - 1, i) for i, n in enumerate(per) if n]
        own.sort()
        skip.update(own)
        names = [dyn[t][3][0] if t is not None else (last[3][0] or "\0")]
        names += [n for n, _, _ in states]
        steps = []          # the chain's own steps (as __init__ makes generic ones)
        for k in own:
            kind, o, k_ins, k_outs, _ = dyn[k]
            steps.append((self._generic(model, kind, o, k_ins, k_outs), k_ins,
                          [n or "\0" for n in k_outs]))
        xname, xshape, dt = ins[0], env[ins[0]].shape, fused.dtype
        T, Bsz, D, H = xshape[0], xshape[1], obj.D, obj.layer.hidden_size
        tbdh, seq = (T, Bsz, D, H) if y == "TBDH" else None, y is not None
        dense, scope = fused._dense_call, _scope
        parts = [(s, None if i is None else slice(i * D, (i + 1) * D)) for _, s, i in states]

        def run(env):
            X = env[xname]
            res = dense(X, None, seq, scope.idle) if (
                type(X) is np.ndarray and X.shape == xshape and X.dtype == dt
                and all(lay._packed is p and lay.num_threads == n and lay.clip == c
                        for lay, p, n, c in stamp)) else None
            if res is None:         # (the chain's own steps, on a copy of the values)
                local = dict(env)
                for r, k_ins, k_outs in steps:
                    local.update(zip(k_outs, r([local[n] if n else None for n in k_ins])))
                return [local.get(n) for n in names]
            out, hc = res
            if not lstm:
                hc = (hc,)
            return [None if not seq else out.reshape(tbdh) if tbdh else
                    last[1]._outputs(out, None, None, T, Bsz, H)[0]] + [
                hc[s] if part is None else hc[s][part] for s, part in parts]
        return run, _env_itself, tuple(names), dyn[j][4]

    def _reshape(self, model, obj, ins, outs, env):
        """A reshape-like op's, a Transpose's or a Gather's (of one constant index: a
        view) runner: one reshape (transpose, index) where the input has the first
        call's shape (else the op), or None where it does not apply."""
        x, y = env.get(ins[0]), env.get(outs[0])
        transpose = obj[1] == "Transpose" and len(ins) == 1
        if not ((obj[1] in _RESHAPES or transpose or obj[1] == "Gather")
                and isinstance(x, np.ndarray)
                and isinstance(y, np.ndarray) and all(self._fixed(model, n) for n in ins[1:])):
            return None
        fn, op_type, attrs = obj
        if op_type == "Gather":
            return self._gather(model, obj, ins, x, y, env)
        rest = [env[n] if n else None for n in ins[1:]]
        call, shape, to = model._call, x.shape, y.shape
        if transpose:
            perm = attrs.get("perm")
            perm = None if perm is None else tuple(_ints(perm))

            def run(v):
                if type(v) is np.ndarray and v.shape == shape:
                    return (v.transpose(perm),)
                return call(fn, op_type, [v], attrs, 1)
            return run

        def run(v):
            if type(v) is np.ndarray and v.shape == shape:
                return (v.reshape(to),)
            return call(fn, op_type, [v] + rest, attrs, 1)
        return run

    @staticmethod
    def _gather(model, obj, ins, x, y, env):
        """_reshape's Gather of one constant integer index (x[:, i] in PyTorch's
        exports): the view ``x[..., i]`` along the axis; None for other indices."""
        fn, op_type, attrs = obj
        idx = env.get(ins[1])
        if not (len(ins) == 2 and isinstance(idx, np.ndarray) and idx.ndim == 0
                and idx.dtype.kind in "iu"):
            return None
        axis = int(attrs.get("axis", 0)) % x.ndim
        if not x.shape[axis]:
            return None
        k = int(idx) % x.shape[axis]        # (in range: the first call's op checked it)
        at = (slice(None),) * axis + (k,)
        if x[at].shape != y.shape:
            return None
        call, shape, dt = model._call, x.shape, x.dtype

        def run(v):
            if type(v) is np.ndarray and v.shape == shape and v.dtype == dt:
                return (v[at],)
            return call(fn, op_type, [v, idx], attrs, 1)
        return run

    def _linear(self, model, obj, ins, outs, env):
        """A MatMul's or a Gemm's (no transA, alpha and beta 1: PyTorch's Linear) runner
        where the weight (and bias) are fixed and all are floats of one dtype: ``x @ W``
        (``W`` transposed once here for transB) and the bias added in place, where x has
        the first call's shape and dtype (else the op); None where it does not apply."""
        fn, op_type, attrs = obj
        if op_type not in ("MatMul", "Gemm") or not all(
                self._fixed(model, n) for n in ins[1:]):
            return None
        x, w, y = env.get(ins[0]), env.get(ins[1]), env.get(outs[0])
        bias = env.get(ins[2]) if len(ins) > 2 and ins[2] else None
        arrays = (x, w, y) if bias is None else (x, w, y, bias)
        if not (all(isinstance(a, np.ndarray) for a in arrays)
                and x.dtype.kind == "f" and all(a.dtype == x.dtype for a in arrays)):
            return None
        if op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or (
                    bias is not None and attrs.get("beta", 1.0) != 1.0) or w.ndim != 2 \
                    or x.ndim != 2:
                return None
            if attrs.get("transB", 0):
                w = w.T
        elif bias is not None:
            return None
        call, shape, dt, rest = model._call, x.shape, x.dtype, [env.get(n) for n in ins[1:]]
        try:
            if np.matmul(x, w).shape != y.shape:
                return None
        except ValueError:
            return None

        def run(v):
            if type(v) is np.ndarray and v.shape == shape and v.dtype == dt:
                r = matmul(v, w)
                if bias is not None:
                    r += bias
                return (r,)
            return call(fn, op_type, [v] + rest, attrs, 1)
        return run

    def _conv(self, model, j, env, want, readers, dyn, skip, outs, covered=()):
        """A Conv's runner (fixed float weights and bias, an input of the first call's
        shape and dtype; else the ops), fused with what reads its output alone (not a
        wanted output): a BatchNormalization of fixed values (folded into the weights),
        then a Relu, a LeakyRelu of alpha >= 0 or a Clip of fixed bounds, then a MaxPool
        whose windows lie inside its input (ConvChain); the fused steps skipped and
        ``outs`` the last one's.  None where it does not apply."""
        _, obj, ins, _, _ = dyn[j]
        if obj[1] != "Conv" or not all(self._fixed(model, n) for n in ins[1:]):
            return None
        x, w = env.get(ins[0]), env.get(ins[1])
        b = env.get(ins[2]) if len(ins) > 2 and ins[2] else None
        if not (isinstance(x, np.ndarray) and isinstance(w, np.ndarray)
                and x.dtype.kind == "f" and w.dtype == x.dtype
                and (b is None or (isinstance(b, np.ndarray) and b.dtype == x.dtype))):
            return None
        chain, cur, bn, act, pool = [j], dyn[j][3][0], None, None, None

        def next_op(types):
            """The one step reading ``cur`` (not wanted) as its first input, if of
            ``types``, with a single output."""
            r = readers.get(cur, ())
            if not cur or cur in want or len(r) != 1 or r[0] in skip or r[0] in covered:
                return None
            st = dyn[r[0]]
            if st[0] != "op" or st[1][1] not in types or st[2][0] != cur or \
                    cur in st[2][1:] or any(st[3][1:]) or \
                    not all(self._fixed(model, n) for n in st[2][1:]):
                return None
            return r[0]
        k = next_op(("BatchNormalization",))
        if k is not None:
            a, vals = dyn[k][1][2], [env.get(n) for n in dyn[k][2][1:5]]
            if not a.get("training_mode", 0) and len(vals) == 4 and all(
                    isinstance(v, np.ndarray) and v.dtype.kind == "f"
                    and v.shape == (w.shape[0],) for v in vals):
                bn = vals + [float(a.get("epsilon", 1e-5))]
                chain.append(k)
                cur = dyn[k][3][0]
        k = next_op(("Relu", "LeakyRelu", "Clip"))
        if k is not None:
            op, a, kins = dyn[k][1][1], dyn[k][1][2], dyn[k][2]
            if op == "Relu":
                act = ("Relu",)
            elif op == "LeakyRelu" and float(a.get("alpha", 0.01)) >= 0:
                act = ("LeakyRelu", float(a.get("alpha", 0.01)))
            elif op == "Clip":
                if model.opset < 11:
                    lo, hi = a.get("min"), a.get("max")
                else:
                    lo, hi = (env.get(kins[i]) if len(kins) > i and kins[i] else None
                              for i in (1, 2))
                if all(v is None or np.size(v) == 1 for v in (lo, hi)):
                    act = ("Clip", lo, hi)
            if act is not None:
                chain.append(k)
                cur = dyn[k][3][0]
        k = next_op(("MaxPool",))
        if k is not None and isinstance(env.get(cur), np.ndarray):
            pool = fusable_maxpool(dyn[k][1][2], env[cur].shape)
            if pool is not None:
                chain.append(k)
                cur = dyn[k][3][0]
        y = env.get(cur)
        try:
            fused = ConvChain(x, w, b, dyn[j][1][2], model.num_threads, bn, act, pool,
                              contiguous=cur in want)
            ok = isinstance(y, np.ndarray) and y.dtype == x.dtype and \
                y.shape == tuple(fused.out_shape(x.shape))
        except (ValueError, TypeError):
            ok = False
        if not ok:
            return None
        skip.update(chain[1:])
        outs[:] = [cur]
        steps = []          # (the ops, for another input)
        for k in chain:
            _, o, k_ins, k_outs, _ = dyn[k]
            steps.append((self._generic(model, "op", o, k_ins, k_outs),
                          [env.get(n) if n else None for n in k_ins[1:]], k_outs[0]))
        shape, dt = x.shape, x.dtype

        def run(v):
            if type(v) is np.ndarray and v.shape == shape and v.dtype == dt:
                return (fused(v),)
            for r, rest, _ in steps:
                v = r([v] + rest)[0]
            return (v,)
        return run

    def _generic(self, model, kind, obj, ins, outs):
        """A step as the first call ran it (a recurrent node's zero initial states from
        the shapes as absent ones: the layer starts from its own zeros)."""
        if kind == "rnn":
            zk = [k for k in (5, 6) if ins[k] in self.zero]

            def run(vals):
                x = vals[0]
                if zk and isinstance(x, np.ndarray) and x.ndim == 3 and obj.layer is not None:
                    Bsz = x.shape[1 - obj.layout]
                    want = ((obj.D, Bsz, obj.layer.hidden_size) if obj.layout == 0
                            else (Bsz, obj.D, obj.layer.hidden_size))
                    for k in zk:        # (another shape: run checks it, as ORT)
                        if getattr(vals[k], "shape", None) == want:
                            vals[k] = None
                return obj.run(vals)
            return run
        fn, op_type, attrs = obj
        call, nout = model._call, len(outs)
        return lambda vals: call(fn, op_type, vals, attrs, nout)


def load_onnx(model, *, num_threads: int | None = None) -> OnnxModel:
    """Load an ONNX model from a path, bytes, a file object or an ``onnx.ModelProto``.

    Weights of LSTM / GRU / RNN nodes are converted once here; unsupported nodes raise
    :class:`fastrnn.io.LoadError` naming all of them.
    """
    _check_args(num_threads=num_threads)      # (the caller's error, before the file)
    name = None
    if _is_onnx_proto(model):
        proto = _parse(model.SerializeToString())
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(model))
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        name = os.path.basename(path)
        if not os.path.exists(path):
            raise FileNotFoundError(model)
        with open_file(path) as f:
            data = f.read()
        proto = _parse(data, os.path.dirname(os.path.abspath(path)), name)
    elif hasattr(model, "read"):
        data = model.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("load_onnx: the file object gave text; open the file in binary "
                            "mode ('rb')")
        proto = _parse(bytes(data))
    else:
        raise TypeError(f"load_onnx takes a path, bytes, a file object or an onnx.ModelProto, "
                        f"got {type(model).__name__}")
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{name or 'model'}: empty ONNX graph")
    try:
        return OnnxModel(proto, num_threads=num_threads, name=name)
    except LoadError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
        # malformed graphs (inconsistent shapes, bad attribute types) surface here
        raise LoadError(f"{name or 'model'}: invalid ONNX graph ({type(e).__name__}: {e})") from None


load = load_onnx
