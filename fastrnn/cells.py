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

Training: ``out, cache = cell.forward_train(input, hx)`` (``out`` as the call returns it)
and ``grads = cell.backward(cache, grad_h, grad_c)`` (``grad_c``: LSTMCell only) run the
inner layer's :meth:`~fastrnn.LSTM.forward_train` / :meth:`~fastrnn.LSTM.backward` on a
sequence of one step; ``grads`` holds ``"input"``, ``"hx"`` (LSTMCell also ``"cx"``) and
the weights' gradients under the cell's names.  A decoder loop runs ``backward`` step by
step in reverse, adding each step's ``"hx"`` (and ``"cx"``) to the previous step's
``grad_h`` (``grad_c``) and summing the weight gradients.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

from . import _threads
from . import layers as _layers
from .layers import _as_dtype, _flag, _float_array, _Params, _positive_int

__all__ = ["LSTMCell", "GRUCell", "RNNCell", "RNNCellBase", "CellCache", "from_torch_cell",
           "cell_from_config"]

# torch's cell names <-> the inner one-layer module's
_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_TO_LAYER = {k: k + "_l0" for k in _NAMES}
_FROM_LAYER = {v: k for k, v in _TO_LAYER.items()}


class CellCache:
    """What :meth:`RNNCellBase.forward_train` keeps for :meth:`RNNCellBase.backward`
    (opaque): the inner layer's training cache of one step, the cell it belongs to and
    the call's shape.  It holds its own copies of the input and state (the caller may
    refill those arrays) and may be used again, as long as the cell's weights do not
    change."""
    __slots__ = ("cache", "cell_id", "batch", "unbatched")

    def __init__(self, cache, cell_id, batch, unbatched):
        self.cache, self.cell_id, self.batch, self.unbatched = cache, cell_id, batch, unbatched

    @property
    def nbytes(self) -> int:
        """Bytes of activations held (input, gates, state)."""
        return self.cache.nbytes

    def __repr__(self) -> str:
        return f"<fastrnn CellCache {self.nbytes / 1e6:.3f} MB>"


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

    # ---------------------------------------------------------------- training
    def forward_train(self, input, hx=None, *, num_threads: int | None = None):
        """One step that keeps what :meth:`backward` needs: returns ``(out, cache)``,
        ``out`` what calling the cell returns (``h'``; LSTMCell ``(h', c')``), computed by
        the inner layer's ``forward_train`` on a sequence of one step (the same numbers
        as a call up to rounding).  Same arguments and checks as the call."""
        layer = self._layer
        x, unbatched, shape = self._prepared(input)
        # (the layer's forward_train copies x[None], a view: the cache never holds the
        # caller's memory)
        B = x.shape[0]
        states = None if hx is None else self._states(hx, B, unbatched, shape)
        if states is not None:
            states = tuple(s[None] for s in states) if len(states) == 2 else states[0][None]
        out, state, cache = layer.forward_train(x[None], states, num_threads=num_threads)
        ccache = CellCache(cache, id(self), B, unbatched)
        if type(state) is tuple:
            h, c = state[0][0], state[1][0]
            return ((h[0], c[0]) if unbatched else (h, c)), ccache
        return (state[0][0] if unbatched else state[0]), ccache

    def _grad(self, name, g, cache):
        """A state gradient as a (1, B, H) array of the cell's dtype (None stays None)."""
        if g is None:
            return None
        cls = type(self).__name__
        if type(g) is tuple and any(a is None or hasattr(a, "shape") for a in g):
            raise TypeError(f"{cls}.backward: {name} must be one array (dL/dh'"
                            + (", and grad_c dL/dc' a second argument" if self._cell == "LSTM"
                               else "") + f"), got a {type(g).__name__}")
        H = self.hidden_size
        g = _float_array(name, g, self.dtype)
        want = (H,) if cache.unbatched else (cache.batch, H)
        if g.shape != want:
            raise ValueError(f"{cls}: {name} must have shape {want}, the shape of "
                             f"{name[-1]}'{' (the input is unbatched)' if cache.unbatched else ''}"
                             f", got {g.shape}")
        return g.reshape(1, cache.batch, H)

    def _backward(self, cache, grad_h, grad_c, need_input_grad, num_threads) -> dict:
        cls = type(self).__name__
        need_input_grad = _flag("need_input_grad", need_input_grad)
        if not isinstance(cache, CellCache):
            from .train import TrainCache
            raise TypeError(f"{cls}.backward needs the cache returned by forward_train"
                            + (" of the cell, not a layer's cache"
                               if isinstance(cache, TrainCache) else
                               f", got {type(cache).__name__}"))
        if cache.cell_id != id(self) or cache.cache.layer_id != id(self._layer):
            raise ValueError(f"{cls}.backward: this cache was made by another cell")
        layer, tc = self._layer, cache.cache
        if (layer._weights_version != tc.version
                or any(layer._params.get(k) is not v for k, v in tc.params.items())):
            raise RuntimeError(f"{cls}: the cell's weights changed since forward_train; run "
                               "forward_train again (gradients must use the forward's "
                               "weights)")
        gh = self._grad("grad_h", grad_h, cache)
        if self._cell == "LSTM":
            gc = self._grad("grad_c", grad_c, cache)
            grad_state = None if gh is None and gc is None else (gh, gc)
        else:
            grad_state = gh
        g = layer.backward(tc, None, grad_state, need_input_grad=need_input_grad,
                           num_threads=num_threads)
        u = cache.unbatched
        out = {}
        if need_input_grad:
            out["input"] = g["input"][0, 0] if u else g["input"][0]
        out["hx"] = g["h0"][0, 0] if u else g["h0"][0]
        if "c0" in g:
            out["cx"] = g["c0"][0, 0] if u else g["c0"][0]
        for k, v in g.items():
            if k in _FROM_LAYER:
                out[_FROM_LAYER[k]] = v
        return out

    # ---------------------------------------------------------------- files
    def save(self, path) -> None:
        """Write the cell to a safetensors file (weights + config in its metadata);
        :func:`fastrnn.load` reads it back as the same cell."""
        from .io import save
        save(self, path)

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
            h, c = self._states(hx, x.shape[0], unbatched, shape)
        # one step of the layer, the state updated in place (the views are (1, B, H))
        layer._step_fast(x, h[None], c[None], num_threads)
        if unbatched:
            return h[0], c[0]
        return h, c

    def _states(self, hx, B, unbatched, shape):
        """Copies of a given ``(h, c)`` as new C-ordered (B, H) arrays, checked."""
        if type(hx) is not tuple and type(hx) is not list or len(hx) != 2:
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two arrays, got "
                            f"{type(hx).__name__}"
                            + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        return (self._given("hx[0]", hx[0], B, unbatched, shape),
                self._given("hx[1]", hx[1], B, unbatched, shape))

    def backward(self, cache, grad_h=None, grad_c=None, *, need_input_grad: bool = True,
                 num_threads: int | None = None) -> dict:
        """Gradients from a :meth:`forward_train` cache given ``grad_h`` = dL/dh' and
        ``grad_c`` = dL/dc' (None: zero; shapes as h' and c').  Returns ``{"input",
        "hx", "cx", "weight_ih", "weight_hh", ["bias_ih", "bias_hh"]}``, shaped as the
        input, the state and :meth:`parameters` (``"hx"`` / ``"cx"`` also when ``hx``
        was None; no ``"input"`` with ``need_input_grad=False``).  In a loop, pass
        the next step's ``"hx"`` / ``"cx"`` (plus any loss gradient on h', c') here."""
        return self._backward(cache, grad_h, grad_c, need_input_grad, num_threads)


class _OneStateCell(RNNCellBase):
    def __call__(self, input, hx=None, *, num_threads: int | None = None):
        layer = self._layer
        dt = layer.dtype
        x, unbatched, shape = self._prepared(input)
        if hx is None:
            h = np.zeros(shape or (1, layer.hidden_size), dt)
        else:
            h = self._states(hx, x.shape[0], unbatched, shape)[0]
        layer._step_fast(x, h[None], None, num_threads)
        return h[0] if unbatched else h

    def _states(self, hx, B, unbatched, shape):
        """A copy of a given ``h`` as a new C-ordered (B, H) array, checked (a 1-tuple)."""
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"{type(self).__name__}: hx must be one array h (B, H), "
                            f"got a {type(hx).__name__} (only LSTMCell takes (h, c))")
        return (self._given("hx", hx, B, unbatched, shape),)

    def backward(self, cache, grad_h=None, *, need_input_grad: bool = True,
                 num_threads: int | None = None) -> dict:
        """Gradients from a :meth:`forward_train` cache given ``grad_h`` = dL/dh'
        (None: zero; the shape of h').  Returns ``{"input", "hx", "weight_ih",
        "weight_hh", ["bias_ih", "bias_hh"]}``, shaped as the input, the state and
        :meth:`parameters` (``"hx"`` also when ``hx`` was None; no ``"input"`` with
        ``need_input_grad=False``).  In a loop, pass the next step's ``"hx"`` (plus any
        loss gradient on h') here."""
        return self._backward(cache, grad_h, None, need_input_grad, num_threads)


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
# what a config may hold besides class_name (get_config's keys, num_threads, seed)
_BASE_KEYS = frozenset(("input_size", "hidden_size", "bias", "dtype", "num_threads", "seed"))
_CONFIG_KEYS = {"LSTMCell": _BASE_KEYS, "GRUCell": _BASE_KEYS,
                "RNNCell": _BASE_KEYS | {"nonlinearity"}}


def _check_config_fits(name: str, cfg: Mapping[str, Any], state_dict: Mapping[str, Any]):
    """Before building a cell from an untrusted config: its sizes must be those of the
    given weights (as the layers' ``_check_config_fits``)."""
    H, I = cfg.get("hidden_size"), cfg.get("input_size")
    for k, v in (("hidden_size", H), ("input_size", I)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"config {k} must be an int, got {v!r}")
    H, I = int(H), int(I)
    w = state_dict.get("weight_ih")
    if w is None:
        raise KeyError("config and weights do not fit: missing 'weight_ih'")
    want = (_layers._GATES[_CLASSES[name]._cell] * H, I)
    if tuple(np.shape(w)) != want:
        raise ValueError(f"config and weights do not fit: weight_ih has shape "
                         f"{tuple(np.shape(w))}, config says {want}")


def cell_from_config(cfg: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None,
                     *, _adopt: set | None = None):
    """Rebuild a cell from :meth:`RNNCellBase.get_config`; with ``state_dict`` the config
    is first checked against the weights' shapes (for configs read from files), then the
    weights are loaded (strict).  :func:`fastrnn.layer_from_config` hands cell configs
    here."""
    name, cfg = _layers.config_class(cfg, _CLASSES, "cell")
    # only the constructors' public arguments: a config read from a file must not reach
    # the private _layer_kw (options such as clip or activations for the inner layer that
    # the cell's repr and get_config never show)
    unknown = sorted(map(str, set(cfg) - _CONFIG_KEYS[name]))
    if unknown:
        raise ValueError(f"bad config for {name}: unknown key(s) {unknown}; {name} "
                         f"configs take {sorted(_CONFIG_KEYS[name])}")
    if state_dict is not None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name} weights must be a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        _check_config_fits(name, cfg, state_dict)
        if "seed" not in cfg:
            cfg["seed"] = _layers._WEIGHTS_FOLLOW       # (the weights follow, strict)
    try:
        cell = _CLASSES[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad config for {name}: {e}") from None
    if state_dict is not None:
        cell.load_state_dict(state_dict, _adopt=_adopt)
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
