"""Single-step recurrent cells: torch.nn.LSTMCell, GRUCell and RNNCell equivalents.

>>> import numpy as np
>>> from fastrnn.cells import LSTMCell
>>> cell = LSTMCell(8, 16)
>>> h, c = cell(np.ones((3, 8), np.float32))         # hx=None: zero state
>>> h, c = cell(np.ones((3, 8), np.float32), (h, c))  # carry it, as in a decoder loop

Each cell holds a one-layer :class:`~fastrnn.LSTM` / :class:`~fastrnn.GRU` /
:class:`~fastrnn.SimpleRNN` and runs a call as one time step of it through the layer's
streaming entry (``RNNBase._step_fast``, what :meth:`fastrnn.Stream.step` uses: the
kept step plan of the packed kernel, GIL released), so the numerics, threading and
dtype handling are the layers'.  Weights are named as torch's cells name them
(``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``, ``bias_ih``, ``bias_hh``;
gate order LSTM i f g o, GRU r z n).  No torch import.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import _threads
from . import layers as _layers
from .layers import _as_dtype, _flag, _float_array, _Params, _positive_int

__all__ = ["LSTMCell", "GRUCell", "RNNCell", "RNNCellBase", "from_torch_cell",
           "cell_from_config"]

# torch's cell names <-> the inner one-layer module's
_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_TO_LAYER = {k: k + "_l0" for k in _NAMES}


# A step of B sequences runs through the layers' step entry (RNNBase._step_fast, what
# Stream.step uses), on several threads from layers._step_min_rows rows on.


class RNNCellBase:
    """Common machinery of :class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell`.

    ``cell(input, hx=None)`` as torch: ``input`` ``(B, I)`` or unbatched ``(I,)``, any
    real floating dtype (cast to the cell's), numpy arrays or torch tensors; ``hx``
    ``(B, H)`` / ``(H,)`` (LSTMCell: a tuple ``(h, c)`` of those), zeros when None.
    Returns new arrays of the cell's dtype: ``h'`` (LSTMCell ``(h', c')``); ``hx`` is
    never written.  ``num_threads`` (keyword) overrides the cell's thread count for one
    call.  A cell may be called from several threads at once.
    """

    _cell = "RNN"           # the inner layer's kind
    _layer_cls: Any = None

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype=None, num_threads: int | None = None, seed: int | None = None,
                 _layer_kw: dict | None = None) -> None:
        # (the layer's helpers: the same checks and messages as the layers')
        input_size = _positive_int("input_size", input_size)
        hidden_size = _positive_int("hidden_size", hidden_size)
        bias = _flag("bias", bias)
        dt = _as_dtype("float32" if dtype is None else dtype)
        self._layer = self._layer_cls(input_size, hidden_size, 1, bias=bias, dtype=dt,
                                      num_threads=num_threads, seed=seed, **(_layer_kw or {}))

    # ---------------------------------------------------------------- structure
    @property
    def input_size(self) -> int:
        return self._layer.input_size

    @property
    def hidden_size(self) -> int:
        return self._layer.hidden_size

    @property
    def bias(self) -> bool:
        return self._layer.bias

    @property
    def dtype(self) -> np.dtype:
        return self._layer.dtype

    @property
    def num_threads(self) -> int | None:
        """The cell's thread count (None: the global setting)."""
        return self._layer.num_threads

    @num_threads.setter
    def num_threads(self, n) -> None:
        self._layer.num_threads = None if n is None else _threads._check_threads(n)

    @property
    def gate_count(self) -> int:
        return self._layer.gate_count

    @property
    def layer(self):
        """The one-layer module the cell runs on (it shares the cell's weights)."""
        return self._layer

    # ---------------------------------------------------------------- weights
    def _shapes(self) -> dict:
        G, H, I = self._layer.gate_count, self.hidden_size, self.input_size
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, H)}
        if self.bias:
            shapes["bias_ih"] = shapes["bias_hh"] = (G * H,)
        return shapes

    def parameters(self) -> dict[str, np.ndarray]:
        """The weights themselves (not copies), torch's cell names; call
        :meth:`mark_weights_changed` after changing them in place (an optimizer of
        :mod:`fastrnn.train` given this dict or the cell does)."""
        p = self._layer.parameters()
        # (owned by the cell: an optimizer given this dict reads the cell's arrays at
        # each step, under these names, and re-packs the cell)
        return _Params(self, ((k, p[_TO_LAYER[k]]) for k in self._shapes()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the weights: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``
        (torch's cell names and layout)."""
        return {k: v.copy() for k, v in self.parameters().items()}

    def mark_weights_changed(self) -> None:
        """Re-pack after the arrays returned by :meth:`parameters` were modified in place."""
        self._layer.mark_weights_changed()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, *,
                        _adopt: set | None = None):
        """Set weights from arrays named as torch's cells name them; validated (names,
        shapes, dtype, finite).  With ``strict=False`` missing names keep their values
        and unknown names are ignored; returns ``(missing_keys, unexpected_keys)`` as
        torch's does.  Nothing changes when any array is rejected."""
        shapes = self._shapes()
        checked = _layers.checked_weights(type(self).__name__, shapes, state_dict, strict,
                                          self.dtype)
        # (checked: the layer's own checks pass; it keeps copies or adopts)
        self._layer.load_state_dict({_TO_LAYER[n]: a for n, a in checked.items()},
                                    strict=False, _adopt=_adopt)
        return _layers.incompatible_keys(shapes, state_dict)

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        """JSON-able constructor arguments (see :func:`cell_from_config`)."""
        return {"class_name": type(self).__name__, "input_size": self.input_size,
                "hidden_size": self.hidden_size, "bias": self.bias,
                "dtype": self.dtype.name}

    def _extra_repr(self) -> list:
        return []

    def __repr__(self) -> str:
        parts = [f"{self.input_size}", f"{self.hidden_size}"]
        if not self.bias:
            parts.append("bias=False")
        parts += self._extra_repr()
        if self.dtype != np.float32:
            parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ---------------------------------------------------------------- forward
    def _input(self, x):
        """(x as a C-contiguous (B, I) array of the cell's dtype, unbatched)."""
        layer = self._layer
        if type(x) is not np.ndarray or x.dtype != layer.dtype:
            x = _float_array("input", x, layer.dtype)
        I = layer.input_size
        if x.ndim in (1, 2) and x.shape[-1] == I:
            if not (x.flags.c_contiguous and x.flags.aligned):
                x = x.copy()            # (C order, aligned)
            return (x, False) if x.ndim == 2 else (x.reshape(1, I), True)
        if x.ndim not in (1, 2):
            raise ValueError(f"{type(self).__name__}: input must have shape (B, {I}) or "
                             f"({I},) for an unbatched input, got shape {x.shape}")
        raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, the "
                         f"cell expects input_size={I} (input shape {x.shape})")

    def _given(self, name, s, B, unbatched, shape):
        """A copy of a user's state (B, H) (or (H,) unbatched) as a new C (B, H) array
        (``shape``: the state's shape (B, H) of the common case, checked first, or None
        when unbatched)."""
        dt, H = self._layer.dtype, self._layer.hidden_size
        if type(s) is np.ndarray and s.dtype == dt and s.shape == shape:
            return s.copy()             # (C order)
        if type(s) is not np.ndarray or s.dtype != dt:
            s = _float_array(name, s, dt)
        want = (H,) if unbatched else (B, H)
        if s.shape != want:
            raise ValueError(f"{type(self).__name__}: {name} must have shape {want}"
                             f"{' (the input is unbatched)' if unbatched else ''}, "
                             f"got {s.shape}")
        return np.array(s.reshape(B, H), dtype=dt, order="C", copy=True)

    def _prepared(self, x):
        """(input as a C-ordered (B, I) array of the cell's dtype, whether it was
        unbatched, the state's shape (B, H) or None when unbatched); the common case
        checked inline: ~1 us of Python on top of the step's kernel."""
        layer = self._layer
        if type(x) is np.ndarray and x.dtype == layer.dtype and len(x.shape) == 2 \
                and x.shape[1] == layer.input_size and x.flags.carray:
            return x, False, (x.shape[0], layer.hidden_size)
        x, unbatched = self._input(x)
        return x, unbatched, None if unbatched else (x.shape[0], layer.hidden_size)

    def forward(self, input, hx=None, *, num_threads: int | None = None):
        """Same as calling the cell."""
        return self(input, hx, num_threads=num_threads)

    # ------------------------------------------------ torch.nn.Module's idioms
    def __getattr__(self, name):
        # (only for names not found the usual way: the weights, as torch's attributes)
        if name in _NAMES and "_layer" in self.__dict__:
            p = self.parameters()
            if name in p:
                return p[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        # ``cell.weight_ih = w`` (or ``*=``) loads that weight, as for the layers
        if name in _NAMES and "_layer" in self.__dict__ and name in self._shapes():
            self.load_state_dict({name: value}, strict=False)
        else:
            object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """``(name, array)`` pairs of the weights themselves, torch's cell names."""
        pre = prefix + "." if prefix else ""
        return iter([(pre + k, v) for k, v in self.parameters().items()])

    @property
    def training(self) -> bool:
        return self._layer.training

    def eval(self):
        """Returns the cell (calls are inference); see the layers' ``eval``."""
        self._layer.eval()
        return self

    def train(self, mode: bool = True):
        """Sets ``training``, returns the cell (calls compute the same either way)."""
        self._layer.train(mode)
        return self

    def to(self, *args, **kwargs):
        """As the layers' ``to``: float32 / float64 in place, the CPU only; the cell."""
        self._layer.to(*args, **kwargs)
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def cpu(self):
        return self

    def requires_grad_(self, requires_grad: bool = True):
        self._layer.requires_grad_(requires_grad)
        return self


class LSTMCell(RNNCellBase):
    """``torch.nn.LSTMCell``: ``(h', c') = cell(input, (h, c))`` (gate order i, f, g, o).

    ``LSTMCell(input_size, hidden_size, bias=True, *, dtype=None, num_threads=None,
    seed=None)``; dtype float32 (default) or float64; ``seed`` for torch's
    initialisation U(-1/sqrt(H), 1/sqrt(H))."""

    _cell = "LSTM"
    _layer_cls = _layers.LSTM

    def __call__(self, input, hx=None, *, num_threads: int | None = None):
        layer = self._layer
        dt = layer.dtype
        x, unbatched, shape = self._prepared(input)
        if hx is None:
            h = np.zeros(shape or (1, layer.hidden_size), dt)
            c = np.zeros(h.shape, dt)
        else:
            if type(hx) is not tuple and type(hx) is not list or len(hx) != 2:
                raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two arrays, got "
                                f"{type(hx).__name__}"
                                + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
            h = self._given("hx[0]", hx[0], x.shape[0], unbatched, shape)
            c = self._given("hx[1]", hx[1], x.shape[0], unbatched, shape)
        # one step of the layer, the state updated in place (the views are (1, B, H))
        layer._step_fast(x, h[None], c[None], num_threads)
        if unbatched:
            return h[0], c[0]
        return h, c


class _OneStateCell(RNNCellBase):
    def __call__(self, input, hx=None, *, num_threads: int | None = None):
        layer = self._layer
        dt = layer.dtype
        x, unbatched, shape = self._prepared(input)
        if hx is None:
            h = np.zeros(shape or (1, layer.hidden_size), dt)
        elif isinstance(hx, (tuple, list)):
            raise TypeError(f"{type(self).__name__}: hx must be one array h (B, H), "
                            f"got a {type(hx).__name__} (only LSTMCell takes (h, c))")
        else:
            h = self._given("hx", hx, x.shape[0], unbatched, shape)
        layer._step_fast(x, h[None], None, num_threads)
        return h[0] if unbatched else h


class GRUCell(_OneStateCell):
    """``torch.nn.GRUCell``: ``h' = cell(input, h)`` (gate order r, z, n; reset after).

    ``GRUCell(input_size, hidden_size, bias=True, *, dtype=None, num_threads=None,
    seed=None)``."""

    _cell = "GRU"
    _layer_cls = _layers.GRU


class RNNCell(_OneStateCell):
    """``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act ``"tanh"``
    or ``"relu"``.

    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity="tanh", *, dtype=None,
    num_threads=None, seed=None)``."""

    _cell = "RNN"
    _layer_cls = _layers.SimpleRNN

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", *, dtype=None, num_threads: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, dtype=dtype,
                         num_threads=num_threads, seed=seed,
                         _layer_kw={"nonlinearity": nonlinearity})

    @property
    def nonlinearity(self) -> str:
        return self._layer.nonlinearity

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["nonlinearity"] = self.nonlinearity
        return cfg

    def _extra_repr(self) -> list:
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []


_CLASSES = {"LSTMCell": LSTMCell, "GRUCell": GRUCell, "RNNCell": RNNCell}


def cell_from_config(cfg: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None):
    """Rebuild a cell from :meth:`RNNCellBase.get_config` (then load ``state_dict``,
    strict, where given)."""
    name, cfg = _layers.config_class(cfg, _CLASSES, "cell")
    if state_dict is not None and "seed" not in cfg:
        cfg["seed"] = _layers._WEIGHTS_FOLLOW       # (the weights follow, strict)
    try:
        cell = _CLASSES[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad config for {name}: {e}") from None
    if state_dict is not None:
        cell.load_state_dict(state_dict)
    return cell


def _torch_cell_kind(module) -> str | None:
    """"LSTMCell" / "GRUCell" / "RNNCell" where module is (a subclass of) that torch.nn
    cell, else None (torch is not imported: the classes are read by name)."""
    from .convert import _torch_base
    base = _torch_base(type(module))
    if base is not None and base.__name__ in _CLASSES:
        return base.__name__
    if type(module).__name__ == "RecursiveScriptModule":     # torch.jit.script(cell)
        name = getattr(module, "original_name", None)
        if name in _CLASSES and hasattr(module, "weight_ih"):
            return name
    return None


def from_torch_cell(module, *, dtype=None, num_threads: int | None = None):
    """The fastrnn equivalent of a live ``torch.nn.LSTMCell``, ``GRUCell`` or ``RNNCell``.

    Weights are copied; the result does not depend on torch.  ``dtype`` defaults to the
    module's (float64 stays float64, anything else becomes float32)."""
    kind = _torch_cell_kind(module)
    if kind is None:
        raise TypeError("from_torch_cell expects torch.nn.LSTMCell, GRUCell or RNNCell, "
                        f"got {type(module).__name__}")
    # (a parametrized, weight-normed or pruned cell's effective weights)
    from .convert import torch_weights
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    sd = torch_weights(module, names)
    if dtype is None:
        w = sd.get("weight_ih")
        dtype = np.float64 if w is not None and w.dtype == np.float64 else np.float32
    kw = dict(dtype=dtype, num_threads=num_threads, seed=_layers._WEIGHTS_FOLLOW)
    if kind == "RNNCell":
        kw["nonlinearity"] = module.nonlinearity
    cell = _CLASSES[kind](module.input_size, module.hidden_size, bool(module.bias), **kw)
    cell.load_state_dict(sd)
    return cell
