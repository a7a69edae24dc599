"""Keras 3 operations (``keras.ops`` calls a functional model records in its graph:
``x[:, -1]``, ``ops.mean(h, axis=1)``, ``h * a``, ``ops.softmax(s, axis=1)``) as a model
layer.  Only the operations of a fixed table run, each by NumPy, with the constant
arguments the config gives (numbers, slices, axes): nothing from a file is executed.
An operation gives no mask (as Keras 3's: only layers carry masks)."""
from __future__ import annotations

import numpy as np

from ._model_base import Layer, _log_softmax, _sigmoid, _softmax, matmul

# the NumPy function of each class name
_BINARY = {"Add": np.add, "Subtract": np.subtract, "Multiply": np.multiply,
           "Divide": np.true_divide, "TrueDivide": np.true_divide, "Maximum": np.maximum,
           "Minimum": np.minimum, "Power": np.power}
_UNARY = {"Tanh": np.tanh, "Sigmoid": _sigmoid, "Relu": lambda x: np.maximum(x, 0),
          "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Square": np.square,
          "Abs": np.abs, "Absolute": np.abs, "Negative": np.negative}
_REDUCE = {"Mean": np.mean, "Sum": np.sum, "Max": np.max, "Min": np.min}
# the attributes each class takes from its config (any other is refused)
_ATTRS = {**{k: () for k in _BINARY}, **{k: () for k in _UNARY},
          **{k: ("axis", "keepdims") for k in _REDUCE},
          "Softmax": ("axis",), "LogSoftmax": ("axis",), "GetItem": (),
          "Concatenate": ("axis",), "Stack": ("axis",), "ExpandDims": ("axis",),
          "Squeeze": ("axis",), "Transpose": ("axes",), "Matmul": (),
          "Reshape": ("newshape",), "Clip": ("x_min", "x_max"), "Cast": ("dtype",)}
# the dtypes a Cast gives
_CAST = ("float16", "float32", "float64", "int32", "int64")
OPS = tuple(_ATTRS)
# GetItem's key items that keep a whole axis (the batch's, a step's)
WHOLE_AXIS = ({"slice": [None, None, None]}, {"ellipsis": True})


def _is_tensor(a):
    return isinstance(a, dict) and set(a) == {"input"} and isinstance(a["input"], int)


def _is_number(a):
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _is_key_item(a):
    return a is None or (isinstance(a, int) and not isinstance(a, bool)) or (
        isinstance(a, dict) and (a == {"ellipsis": True} or (
            set(a) == {"slice"} and isinstance(a["slice"], list) and len(a["slice"]) == 3
            and all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                    for v in a["slice"]))))


def _is_axis(v, many=True):
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        many and isinstance(v, list) and all(_is_axis(a, False) for a in v))


def _check(op, args, attrs):
    """Its arguments and attributes as the operation takes them, or ValueError."""
    n = len(args)
    tensors = [_is_tensor(a) for a in args]
    if op in _BINARY:
        ok = n == 2 and any(tensors) and all(t or _is_number(a) for t, a in zip(tensors, args))
    elif op == "Matmul":
        ok = n == 2 and all(tensors)
    elif op == "GetItem":
        k = args[1] if n == 2 else None
        ok = n == 2 and tensors[0] and (_is_key_item(k) or (
            isinstance(k, list) and all(_is_key_item(i) for i in k)))
    elif op in ("Concatenate", "Stack"):
        ok = n == 1 and isinstance(args[0], list) and args[0] and all(
            _is_tensor(t) for t in args[0])
    else:
        ok = n == 1 and tensors[0]
    if not ok:
        raise ValueError(f"{op} does not take the arguments {args!r}"[:300])
    for k, v in attrs.items():
        good = {"axis": (v is None and op in _REDUCE) or _is_axis(
                    v, op in _REDUCE or op in ("Softmax", "LogSoftmax", "Squeeze")),
                "keepdims": isinstance(v, bool),
                "axes": v is None or (isinstance(v, list) and all(_is_axis(a, False)
                                                                   for a in v)),
                "newshape": isinstance(v, list) and all(_is_axis(a, False) for a in v),
                "x_min": _is_number(v), "x_max": _is_number(v),
                "dtype": v in _CAST}[k]
        if not good:
            raise ValueError(f"{op}: {k}={v!r} is not supported"[:200])


def _key(item):
    """A GetItem key's item from its JSON form: an int, None (a new axis), a slice
    ``{"slice": [start, stop, step]}`` or ``{"ellipsis": true}``."""
    if isinstance(item, dict):
        if "slice" in item:
            return slice(*item["slice"])
        return Ellipsis
    return item


class Op(Layer):
    """A Keras 3 operation: ``op`` (a class name of :data:`OPS`), ``args`` its positional
    arguments with each tensor as ``{"input": k}`` (the layer's input k; a list of them
    for Concatenate / Stack) and constants as they are (numbers; GetItem's key: ints,
    None, ``{"slice": [start, stop, step]}``, ``{"ellipsis": True}``), ``attrs`` its
    config (``axis``, ``keepdims``, ``axes``, ``newshape``, ``x_min`` / ``x_max``,
    ``dtype``); ``ranks``: each input's rank, checked at a call (None: any)."""

    n_inputs = None         # (a list of its tensors, as a merge layer's)

    def __init__(self, op: str, args, attrs=None, ranks=None, name=None):
        super().__init__(name)
        if op not in _ATTRS:
            raise ValueError(f"unknown operation {op!r}; fastrnn runs {', '.join(OPS)}"[:300])
        attrs = dict(attrs or {})
        extra = set(attrs) - set(_ATTRS[op])
        if extra:
            raise ValueError(f"{op} takes no {sorted(extra)}"[:200])
        args = list(args)
        _check(op, args, attrs)
        self.op, self.args, self.attrs = op, args, attrs
        self.n_tensors = _count(self.args)
        if ranks is not None and (len(ranks) != self.n_tensors or not all(
                isinstance(r, int) and r >= 1 for r in ranks)):
            raise ValueError(f"{op}: ranks {ranks!r} for {self.n_tensors} tensors"[:200])
        self.ranks = None if ranks is None else list(ranks)
        # the output's shape where the Keras loader found it (None: a size it does not
        # know; not saved)
        self.shape = None

    def _fill(self, xs, a):
        if _is_tensor(a):
            return xs[a["input"]]
        if isinstance(a, list) and a and all(_is_tensor(t) for t in a):
            return [xs[t["input"]] for t in a]
        return a

    def call(self, x, mask=None):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != self.n_tensors:
            raise ValueError(f"{self.name}: {self.op} reads {self.n_tensors} tensors, got "
                             f"{len(xs)}")
        xs = [np.asarray(t) for t in xs]
        for k, t in enumerate(xs):
            if t.dtype.kind not in "biuf":
                raise ValueError(f"{self.name}: {self.op} reads numbers, got {t.dtype}")
            if self.ranks is not None and t.ndim != self.ranks[k]:
                raise ValueError(f"{self.name}: {self.op}'s input {k} must have "
                                 f"{self.ranks[k]} axes, got shape {t.shape}")
        try:
            y = self._run([self._fill(xs, a) for a in self.args])
        except (IndexError, TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: {self.op} on inputs of shapes "
                             f"{[t.shape for t in xs]}: {e}"[:400]) from None
        if y.dtype.kind == "f" and not any(t.dtype.kind == "f" for t in xs) and \
                self.op != "Cast":
            y = y.astype(np.float32)    # (integers to floats: Keras's float32)
        # (a 0-d result stays 0-d: ascontiguousarray makes it (1,))
        return (y if y.ndim == 0 else np.ascontiguousarray(y)), None

    def _run(self, args):
        op, at = self.op, self.attrs
        ax = at.get("axis")
        ax = tuple(ax) if isinstance(ax, list) else ax
        if op in _BINARY:
            a, b = args
            dt = next(t.dtype for t in (a, b) if isinstance(t, np.ndarray))
            y = _BINARY[op](a, b)
            return y.astype(dt, copy=False) if y.dtype.kind == "f" and dt.kind == "f" else y
        if op in _UNARY:
            return _UNARY[op](args[0])
        if op in _REDUCE:
            return _REDUCE[op](args[0], axis=ax, keepdims=bool(at.get("keepdims", False)))
        if op in ("Softmax", "LogSoftmax"):
            return (_softmax if op == "Softmax" else _log_softmax)(
                args[0], -1 if ax is None else ax)
        if op == "GetItem":
            k = args[1]
            return args[0][tuple(_key(i) for i in k) if isinstance(k, list) else _key(k)]
        if op in ("Concatenate", "Stack"):
            f = np.concatenate if op == "Concatenate" else np.stack
            return f(args[0], axis=0 if ax is None else ax)
        if op == "ExpandDims":
            return np.expand_dims(args[0], ax)
        if op == "Squeeze":
            return np.squeeze(args[0], axis=ax)
        if op == "Transpose":
            return np.transpose(args[0], at.get("axes"))
        if op == "Reshape":
            return np.reshape(args[0], at["newshape"])
        if op == "Clip":
            t = args[0]
            return np.clip(t, t.dtype.type(at["x_min"]), t.dtype.type(at["x_max"]))
        if op == "Cast":
            return args[0].astype(at["dtype"])
        return matmul(args[0], args[1])         # (Matmul; np.matmul's rules)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "args": self.args,
                "attrs": self.attrs, "ranks": self.ranks}

    def _extra_repr(self):
        return self.op


def _count(args) -> int:
    n = 0
    for a in args:
        if _is_tensor(a):
            n += 1
        elif isinstance(a, list) and a and all(_is_tensor(t) for t in a):
            n += len(a)
    return n
