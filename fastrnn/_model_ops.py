"""Keras 3 operations (``keras.ops`` calls a functional model records in its graph:
``x[:, -1]``, ``ops.mean(h, axis=1)``, ``h * a``, ``ops.softmax(s, axis=1)``) as a model
layer.  Only the operations of a fixed table run, each by NumPy, with the constant
arguments the config gives (numbers, slices, axes): nothing from a file is executed.
An operation gives no mask (as Keras 3's: only layers carry masks)."""
from __future__ import annotations

import numpy as np

from ._model_base import Layer, _sigmoid, _softmax

# the operation of each class name: (how many tensors it may read, the NumPy function)
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
          "Squeeze": ("axis",), "Transpose": ("axes",), "Matmul": ()}
OPS = tuple(_ATTRS)


def _is_tensor(a):
    return isinstance(a, dict) and set(a) == {"input"}


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
    config (``axis``, ``keepdims``, ``axes``)."""

    n_inputs = None         # (a list of its tensors, as a merge layer's)

    def __init__(self, op: str, args, attrs=None, name=None):
        super().__init__(name)
        if op not in _ATTRS:
            raise ValueError(f"unknown operation {op!r}; fastrnn runs {', '.join(OPS)}"[:300])
        attrs = dict(attrs or {})
        extra = set(attrs) - set(_ATTRS[op])
        if extra:
            raise ValueError(f"{op} takes no {sorted(extra)}"[:200])
        self.op, self.args, self.attrs = op, list(args), attrs
        self.n_tensors = _count(self.args)

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
        args = [self._fill(xs, a) for a in self.args]
        op, at = self.op, self.attrs
        if op in _BINARY:
            a, b = args
            dt = next(t.dtype for t in (a, b) if isinstance(t, np.ndarray))
            y = _BINARY[op](a, b)
            y = y.astype(dt, copy=False) if y.dtype.kind == "f" and dt.kind == "f" else y
        elif op in _UNARY:
            y = _UNARY[op](args[0])
        elif op in _REDUCE:
            ax = at.get("axis")
            y = _REDUCE[op](args[0], axis=tuple(ax) if isinstance(ax, list) else ax,
                            keepdims=bool(at.get("keepdims", False)))
        elif op in ("Softmax", "LogSoftmax"):
            ax = at.get("axis", -1)
            t = np.moveaxis(args[0], ax, -1)
            t = _softmax(t) if op == "Softmax" else t - t.max(-1, keepdims=True) - np.log(
                np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True))
            y = np.moveaxis(t, -1, ax)
        elif op == "GetItem":
            k = args[1]
            y = args[0][tuple(_key(i) for i in k) if isinstance(k, list) else _key(k)]
        elif op in ("Concatenate", "Stack"):
            f = np.concatenate if op == "Concatenate" else np.stack
            y = f(args[0], axis=at.get("axis", 0))
        elif op == "ExpandDims":
            y = np.expand_dims(args[0], at["axis"])
        elif op == "Squeeze":
            ax = at.get("axis")
            y = np.squeeze(args[0], axis=tuple(ax) if isinstance(ax, list) else ax)
        elif op == "Transpose":
            y = np.transpose(args[0], at.get("axes"))
        else:       # Matmul
            y = np.matmul(args[0], args[1])
        return np.ascontiguousarray(y), None

    def get_config(self):
        return {**super().get_config(), "op": self.op, "args": self.args,
                "attrs": self.attrs}

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
