"""Find PyTorch recurrent modules in a state dict and build fastrnn layers from them.

A ``torch.nn.RNN/LSTM/GRU`` stores ``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}`` (LSTM projection) and the
same names with ``_reverse`` for the backward direction.  Everything about the
module except the RNN nonlinearity (tanh/relu) and ``batch_first`` can be
read from these names and shapes:

* ``H``: columns of ``weight_hh`` (or of ``weight_hr`` when projected);
* gates ``G = rows(weight_hh) / H``: 4 LSTM, 3 GRU, 1 RNN (unambiguous,
  because ``H`` comes from the recurrent matrix, not from ``weight_ih``);
* ``proj_size``: rows of ``weight_hr`` (then ``weight_hh`` is ``(4H, P)``);
* ``input_size``: columns of ``weight_ih_l0``; deeper layers must take
  ``D * (P or H)`` inputs.

A ``torch.nn.LSTMCell/GRUCell/RNNCell`` stores ``weight_ih`` ``(G*H, I)``,
``weight_hh`` ``(G*H, H)`` and optionally ``bias_ih``, ``bias_hh`` (no layer
suffix); ``G`` is again rows over columns of ``weight_hh`` (4 LSTMCell, 3 GRUCell,
1 RNNCell, tanh unless told).  Cells are looked for only where no layer module
answers: a file without any (or ``prefix=`` naming a cell), so files that loaded a
layer before still load it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import LoadError, _check_args

__all__ = ["RNNSpec", "find_rnn_modules", "find_rnn_cells", "extract_module",
           "read_state_dict", "load_state_dict", "list_modules", "load_any_torchlike",
           "build_layer", "build_cell"]

_KEY = re.compile(
    r"^(?:(?P<prefix>.*)\.)?(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>0|[1-9][0-9]{0,3})(?P<rev>_reverse)?$"
)
_CELLS = {4: "LSTM", 3: "GRU", 1: "RNN"}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# a torch.nn cell's parameters (no layer suffix)
_CELL_KEY = re.compile(
    r"^(?:(?P<prefix>.*)\.)?(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)$"
)
_CELL_CLASSES = {4: "LSTMCell", 3: "GRUCell", 1: "RNNCell"}


@dataclass(frozen=True)
class RNNSpec:
    """A recurrent module found in a state dict.

    ``prefix`` is the dotted module path without a trailing dot (``""`` for a
    bare ``nn.LSTM`` state dict).  ``nonlinearity`` (RNN only) cannot be
    read from weights: it is ``"tanh"`` unless the file recorded it (whole
    module pickles) or the caller overrides it.  ``cell`` is ``"LSTMCell"``,
    ``"GRUCell"`` or ``"RNNCell"`` for a torch.nn cell (:func:`find_rnn_cells`;
    one layer, one direction).
    """

    prefix: str
    cell: str  # 'LSTM' | 'GRU' | 'RNN'
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool
    proj_size: int = 0
    nonlinearity: str | None = None
    dtype: str = "float32"
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def torch_class(self) -> str:
        return "RNN" if self.cell == "RNN" else self.cell

    @property
    def is_cell(self) -> bool:
        return self.cell.endswith("Cell")


def _shape(a) -> tuple[int, ...]:
    return tuple(int(s) for s in np.shape(a))


def _group(state_dict: Mapping[str, Any], pattern=_KEY) -> dict[str, dict[str, Any]]:
    """The parameters whose names ``pattern`` matches, by prefix, under their local
    names (the name after the prefix)."""
    groups: dict[str, dict[str, Any]] = {}
    for key, val in state_dict.items():
        if not isinstance(key, str):
            continue
        m = pattern.match(key)
        if m is None:
            continue
        prefix = m.group("prefix") or ""
        local = key[len(prefix) + 1:] if prefix else key
        groups.setdefault(prefix, {})[local] = val
    return groups


def _near_misses(key: str, keys, n: int = 3) -> list:
    """Keys of the file that look like ``key`` misspelt (``weight_ih_10``,
    ``Weight_ih_l0``) and are no recurrent parameter's name themselves."""
    import difflib
    keys = [k for k in keys if isinstance(k, str) and _KEY.match(k) is None]
    if len(keys) > 10000:
        return []
    low = {k.lower(): k for k in keys}
    return [low[k] for k in difflib.get_close_matches(key.lower(), list(low), n, 0.85)]


def _full(prefix, local):
    return f"{prefix}.{local}" if prefix else local


def _infer(prefix: str, d: Mapping[str, Any], keys=()) -> RNNSpec:
    """``keys``: the state dict's keys, for a missing key's near misses."""
    def err(local, msg):
        if msg.startswith("missing"):
            near = _near_misses(_full(prefix, local), keys)
            if near:
                msg += f" (the file has {', '.join(map(repr, near))})"
        return LoadError(f"state dict key {_full(prefix, local)!r}: {msg}")

    layers = set()
    reverse = set()
    for local in d:
        m = _KEY.match(local)
        layers.add(int(m.group("layer")))
        if m.group("rev"):
            reverse.add(int(m.group("layer")))
    L = max(layers) + 1
    for k in range(L):
        if k not in layers:
            raise err(f"weight_ih_l{k}", f"missing: layers present are {sorted(layers)} (a gap)")
    bidirectional = bool(reverse)
    sfxs = [""] + (["_reverse"] if bidirectional else [])

    # every layer/direction needs both weight matrices
    for k in range(L):
        for s in sfxs:
            for w in ("weight_ih", "weight_hh"):
                if f"{w}_l{k}{s}" not in d:
                    raise err(f"{w}_l{k}{s}", "missing")
    for local, v in d.items():
        m = _KEY.match(local)
        want_ndim = 1 if m.group("kind").startswith("bias") else 2
        if len(_shape(v)) != want_ndim:
            raise err(local, f"expected a {want_ndim}-D array, got shape {_shape(v)}")

    first = "weight_hh_l0"
    has_bias = any(k.startswith("bias_") for k in d)
    has_proj = any(k.startswith("weight_hr") for k in d)
    for k in range(L):
        for s in sfxs:
            for b in ("bias_ih", "bias_hh") if has_bias else ():
                if f"{b}_l{k}{s}" not in d:
                    other = next(x for x in d if x.startswith("bias_"))
                    raise err(f"{b}_l{k}{s}", f"missing although {_full(prefix, other)!r} exists")
            if has_proj and f"weight_hr_l{k}{s}" not in d:
                raise err(f"weight_hr_l{k}{s}", "missing although other layers have a projection")

    whh = _shape(d[first])
    if has_proj:
        P, H = _shape(d["weight_hr_l0"])
        if P < 1 or H < 1 or whh != (4 * H, P):
            raise err(first, f"shape {whh} does not fit an LSTM with projection "
                             f"weight_hr_l0 {(P, H)} (expected {(4 * H, P)})")
        G, cell, Hout = 4, "LSTM", P
        if P >= H:
            raise err("weight_hr_l0", f"proj_size {P} must be smaller than hidden size {H}")
    else:
        rows, H = whh
        if H < 1 or rows % H or rows // H not in _CELLS:
            raise err(first, f"shape {whh}: rows must be 1, 3 or 4 times the columns "
                             "(RNN, GRU, LSTM)")
        G = rows // H
        cell, P, Hout = _CELLS[G], 0, H
    D = 2 if bidirectional else 1
    I = _shape(d["weight_ih_l0"])[1]
    if I < 1:
        raise err("weight_ih_l0", "has zero input columns")
    for k in range(L):
        for s in sfxs:
            in_k = I if k == 0 else D * Hout
            expect = {
                f"weight_ih_l{k}{s}": (G * H, in_k),
                f"weight_hh_l{k}{s}": (G * H, Hout),
            }
            if has_bias:
                expect[f"bias_ih_l{k}{s}"] = (G * H,)
                expect[f"bias_hh_l{k}{s}"] = (G * H,)
            if has_proj:
                expect[f"weight_hr_l{k}{s}"] = (P, H)
            for local, shp in expect.items():
                got = _shape(d[local])
                if got != shp:
                    raise err(local, f"shape {got}, expected {shp} for a {cell} with "
                                     f"input_size={I}, hidden_size={H}"
                                     + (f", proj_size={P}" if P else "")
                                     + (f" at layer {k}" if k else ""))
    extra = set(d) - {f"{w}_l{k}{s}" for k in range(L) for s in sfxs
                      for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
    if extra:
        x = sorted(extra)[0]
        raise err(x, "does not belong to the module (a direction or layer without the others)")
    dtypes = {np.asarray(v).dtype for v in d.values()} if d else set()
    dtype = "float64" if dtypes == {np.dtype(np.float64)} else "float32"
    return RNNSpec(prefix=prefix, cell=cell, input_size=I, hidden_size=H, num_layers=L,
                   bidirectional=bidirectional, bias=has_bias, proj_size=P,
                   nonlinearity="tanh" if cell == "RNN" else None, dtype=dtype,
                   keys=tuple(_full(prefix, x) for x in d))


# an RNN or cell weight kept in another form, under names of its own: parametrized
# (torch.nn.utils.parametrize: parametrizations.weight_norm, spectral_norm, orthogonal,
# your own), weight-normed (the old torch.nn.utils.weight_norm: <name>_g, <name>_v) or
# pruned (torch.nn.utils.prune: <name>_orig, <name>_mask).  The state dict says how only
# by those names, so such a weight is refused naming its key (it was "missing").
# (pattern, the key beside it that makes it one (a parameter of another module that
# merely ends in _g is not taken for one), what it is, the torch call that undoes it)
_RNN_PARAM = r"(?P<name>(?:weight|bias)_(?:ih|hh|hr)(?:_l(?:0|[1-9][0-9]{0,3})(?:_reverse)?)?)"
_PARAMETRIZED = [
    (re.compile(r"^(?:(?P<prefix>.*)\.)?parametrizations\." + _RNN_PARAM
                + r"\.(?:original[0-9]*|[0-9]+\..+)$"), None,
     "parametrized (torch.nn.utils.parametrize: parametrizations.weight_norm, spectral_norm, "
     "...)", "torch.nn.utils.parametrize.remove_parametrizations(module, {n!r})"),
    (re.compile(r"^(?:(?P<prefix>.*)\.)?" + _RNN_PARAM + r"_g$"), "_v",
     "weight-normed (torch.nn.utils.weight_norm)",
     "torch.nn.utils.remove_weight_norm(module, {n!r})"),
    (re.compile(r"^(?:(?P<prefix>.*)\.)?" + _RNN_PARAM + r"_orig$"), "_mask",
     "pruned (torch.nn.utils.prune)", "torch.nn.utils.prune.remove(module, {n!r})"),
]


def _refuse_parametrized(state_dict: Mapping[str, Any], prefix: str | None = None) -> None:
    """LoadError naming the first key that holds an RNN or cell weight in a parametrized,
    weight-normed or pruned form (whose plain weight the state dict lacks); only those of
    the module at ``prefix`` when given."""
    for key in state_dict:
        if not isinstance(key, str):
            continue
        for pattern, partner, kind, remove in _PARAMETRIZED:
            m = pattern.match(key)
            if m is None:
                continue
            p, n = m.group("prefix") or "", m.group("name")
            w = _full(p, n)
            if (prefix is None or p == prefix) and w not in state_dict and (
                    partner is None or w + partner in state_dict):
                raise LoadError(
                    f"state dict key {key!r}: {n}{f' of module {p!r}' if p else ''} is {kind}, "
                    f"and fastrnn reads plain weights only; in torch, {remove.format(n=n)} "
                    "before saving the state dict, or fastrnn.from_torch(module) (the "
                    "effective weights)")


def find_rnn_modules(state_dict: Mapping[str, Any]) -> list[RNNSpec]:
    """The recurrent modules in ``state_dict``, in order of first appearance.

    Keys that do not look like recurrent parameters (``fc.weight``,
    ``embedding.weight``, optimizer state, ...) are ignored.  Raises
    :class:`LoadError` naming the key when a module's parameters are
    inconsistent (wrong shape, missing bias or layer, gaps).
    """
    _refuse_parametrized(state_dict)
    return [_infer(p, d, state_dict) for p, d in _group(state_dict).items()]


def _group_cells(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The torch.nn cells' parameters by prefix: groups holding ``weight_ih`` or
    ``weight_hh`` (a module's other parameters named ``bias_ih`` alone are no cell)."""
    return {p: d for p, d in _group(state_dict, _CELL_KEY).items()
            if "weight_ih" in d or "weight_hh" in d}


def _infer_cell(prefix: str, d: Mapping[str, Any]) -> RNNSpec:
    """The spec of the cell whose parameters (local names) are ``d``; LoadError naming
    the key where they do not make one."""
    def err(local, msg):
        return LoadError(f"state dict key {_full(prefix, local)!r}: {msg}")

    for w in ("weight_ih", "weight_hh"):
        if w not in d:
            other = "weight_hh" if w == "weight_ih" else "weight_ih"
            raise err(w, f"missing although {_full(prefix, other)!r} exists (a torch.nn "
                         "cell's weights)")
    for local, v in d.items():
        want_ndim = 1 if local.startswith("bias") else 2
        if len(_shape(v)) != want_ndim:
            raise err(local, f"expected a {want_ndim}-D array, got shape {_shape(v)}")
    has_bias = "bias_ih" in d or "bias_hh" in d
    for b in ("bias_ih", "bias_hh") if has_bias else ():
        if b not in d:
            other = "bias_hh" if b == "bias_ih" else "bias_ih"
            raise err(b, f"missing although {_full(prefix, other)!r} exists")
    rows, H = _shape(d["weight_hh"])
    if H < 1 or rows % H or rows // H not in _CELL_CLASSES:
        raise err("weight_hh", f"shape {(rows, H)}: rows must be 1, 3 or 4 times the "
                               "columns (RNNCell, GRUCell, LSTMCell)")
    cell = _CELL_CLASSES[rows // H]
    I = _shape(d["weight_ih"])[1]
    if I < 1:
        raise err("weight_ih", "has zero input columns")
    expect = {"weight_ih": (rows, I), "weight_hh": (rows, H)}
    if has_bias:
        expect["bias_ih"] = expect["bias_hh"] = (rows,)
    for local, shp in expect.items():
        got = _shape(d[local])
        if got != shp:
            raise err(local, f"shape {got}, expected {shp} for a {cell} with "
                             f"input_size={I}, hidden_size={H}")
    dtypes = {np.asarray(v).dtype for v in d.values()}
    dtype = "float64" if dtypes == {np.dtype(np.float64)} else "float32"
    return RNNSpec(prefix=prefix, cell=cell, input_size=I, hidden_size=H, num_layers=1,
                   bidirectional=False, bias=has_bias, proj_size=0,
                   nonlinearity="tanh" if cell == "RNNCell" else None, dtype=dtype,
                   keys=tuple(_full(prefix, x) for x in d))


def find_rnn_cells(state_dict: Mapping[str, Any]) -> list[RNNSpec]:
    """The ``torch.nn.LSTMCell / GRUCell / RNNCell`` modules in ``state_dict`` (keys
    ``[prefix.]weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), in order of first
    appearance; :class:`LoadError` naming the key where a cell's parameters are
    inconsistent."""
    return [_infer_cell(p, d) for p, d in _group_cells(state_dict).items()]


def _norm_prefix(prefix: str | None) -> str:
    return (prefix or "").rstrip(".")


def extract_module(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The recurrent parameters under ``prefix`` with the prefix stripped
    (keys exactly ``weight_ih_l0``, ...)."""
    prefix = _norm_prefix(prefix)
    groups = _group(state_dict)
    if prefix not in groups:
        known = ", ".join(repr(p) for p in groups) or "none"
        raise LoadError(f"no recurrent module with prefix {prefix!r} (found: {known})")
    return dict(groups[prefix])


# --------------------------------------------------------------------------
# files -> layers

def read_state_dict(path_or_mapping, **kw) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """``(tensors, hints)`` from a torch file, a safetensors file or a mapping.

    ``hints`` maps module prefixes to attributes recorded in whole-module
    pickles (``nonlinearity``, ``batch_first``, ...); empty otherwise.
    """
    if isinstance(path_or_mapping, Mapping):
        return {k: np.asarray(v) for k, v in path_or_mapping.items()}, {}
    from .detect import sniff_format

    fmt = sniff_format(path_or_mapping)
    if fmt in ("torch-zip", "torch-legacy"):
        from .torchfile import flatten_tensors, module_hints, read_torch_object

        obj = read_torch_object(path_or_mapping, module_classes=kw.get("module_classes", ()))
        return flatten_tensors(obj), module_hints(obj)
    if fmt == "torch-export":
        from .pt2 import read_pt2

        tensors, hints = read_pt2(path_or_mapping, _display(path_or_mapping))
        # modules no recurrent node of the graph names (an export after
        # run_decompositions(): the steps are computed op by op): their batch_first and
        # nonlinearity are unknown (build_layer / build_cell warn)
        for p in list(_group(tensors)) + list(_group_cells(tensors)):
            hints.setdefault(p, {_NO_NODE: True})
        return tensors, hints
    if fmt == "safetensors":
        from .safetensors import read_safetensors

        tensors, meta = read_safetensors(path_or_mapping)
        # safetensors.torch.save_model keeps one of tensors that share memory (tied
        # weights) and names each one dropped in the metadata: {dropped: kept}
        for k, v in meta.items():
            if k not in tensors and isinstance(v, str) and v in tensors:
                tensors[k] = tensors[v]
        return tensors, {}
    raise LoadError(f"{_display(path_or_mapping)}: a {fmt} file, not a PyTorch state dict "
                    "(use fastrnn.load for other formats)")


_NO_NODE = "_no_graph_node"


def _warn_unknown(spec: RNNSpec, hints: Mapping, overrides: Mapping, settings) -> None:
    """A warning where a ``.pt2`` graph has no recurrent node for ``spec``'s module and
    the caller did not give ``settings`` (``batch_first``, ``nonlinearity``)."""
    missing = [k for k in settings if k not in overrides]
    if hints.get(_NO_NODE) and missing:
        from . import _warn_user
        _warn_user(
            f"module {spec.prefix!r}: the torch.export graph has no recurrent node for it "
            "(an export after run_decompositions()), so its "
            f"{' and '.join(missing)} cannot be read: assumed "
            + ", ".join({"batch_first": "batch_first=False",
                         "nonlinearity": "nonlinearity='tanh'"}[k] for k in missing)
            + f"; pass {', '.join(k + '=' for k in missing)} to say")


def _display(p):
    return os.fspath(p) if isinstance(p, (str, os.PathLike)) else "<file>"


def _cells_beside(tensors, hints, strict: bool) -> list[RNNSpec]:
    """The torch.nn cells of ``tensors`` (hints applied); where not ``strict`` (layers
    were found), parameters that look like a cell's but do not make one are skipped."""
    out = []
    for p, d in _group_cells(tensors).items():
        try:
            out.append(_apply_hints(_infer_cell(p, d), hints))
        except LoadError:
            if strict:
                raise
    return out


def list_modules(path_or_mapping, **kw) -> list[RNNSpec]:
    """The recurrent modules in a torch/safetensors file (or a mapping): layers, then
    torch.nn cells (``spec.is_cell``)."""
    tensors, hints = read_state_dict(path_or_mapping, **kw)
    return ([_apply_hints(s, hints) for s in find_rnn_modules(tensors)]
            + _cells_beside(tensors, hints, strict=False))


def _apply_hints(spec: RNNSpec, hints) -> RNNSpec:
    h = hints.get(spec.prefix)
    if not h or spec.cell not in ("RNN", "RNNCell"):
        return spec
    mode = h.get("mode")
    nl = h.get("nonlinearity")
    if mode == "RNN_RELU" or nl == "relu":
        return _replace(spec, nonlinearity="relu")
    return spec


def _replace(spec, **kw):
    from dataclasses import replace

    return replace(spec, **kw)


_LAYER_ARGS = {"batch_first", "dtype", "num_threads", "nonlinearity", "cell"}


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    """The options a caller gives a state dict's layer, checked before the file is read:
    a keyword the loader does not take (a typo such as ``batchfirst=``, or what the weights
    fix: ``bidirectional=``, ``proj_size=``, ``num_layers=`` ...) is the caller's TypeError
    naming it, as for fastrnn's own files and the layers; a bad ``batch_first`` /
    ``nonlinearity`` / ``dtype`` / ``num_threads`` value the layers' TypeError / ValueError.
    (They were LoadErrors "module '': cannot build a LSTM: ...", raised after reading the
    whole file: the file blamed for the call.)"""
    bad = sorted(k for k in overrides if k not in _LAYER_ARGS)
    if bad:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(repr(k) for k in bad)} for a PyTorch "
            "state dict: its weights fix the module's sizes, layers, directions, bias and "
            "proj_size; it takes prefix=, batch_first=, nonlinearity= (nn.RNN / RNNCell "
            "weights), dtype=, num_threads=, cell= and module_classes=")
    from .. import layers as _layers     # (lazy, as build_layer)
    if "batch_first" in overrides:
        _layers._flag("batch_first", overrides["batch_first"])
    nl = overrides.get("nonlinearity")
    if nl is not None and nl not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nl!r}")
    _check_args(overrides.get("dtype"), overrides.get("num_threads"))


def load_state_dict(path_or_mapping, prefix: str | None = None, **overrides):
    """Build a fastrnn layer from a PyTorch state dict file (``torch.save`` zip or
    legacy, safetensors) or a mapping of arrays.

    ``prefix`` selects the module when the file holds several (``"encoder.lstm"``);
    without it the file must hold exactly one.  A file without any layer module
    (``weight_ih_l0`` ...) may hold one ``torch.nn.LSTMCell / GRUCell / RNNCell``
    (``weight_ih``, ``weight_hh`` ...; a cell is also picked by its prefix,
    ``"decoder.cell"``): then a :mod:`fastrnn.cells` cell is built, the kind from the
    shapes (rows of ``weight_ih`` over columns of ``weight_hh``: 4 LSTMCell, 3
    GRUCell, 1 RNNCell; ``nonlinearity="relu"`` for an ``RNNCell(nonlinearity="relu")``
    whose weights are all the file holds).  ``overrides`` go to the layer:
    ``nonlinearity="relu"`` for an ``nn.RNN(nonlinearity="relu")`` (weights cannot
    tell), ``batch_first=True``, ``dtype="float64"``, ``num_threads``; ``cell=`` asserts
    the expected cell type.  ``module_classes`` is passed to the torch reader.
    """
    module_classes = overrides.pop("module_classes", ())
    _check_overrides(overrides)                                         # (before the file)
    try:
        return _load_state_dict(path_or_mapping, prefix, module_classes, overrides)
    except LoadError as e:
        from . import _name_the_file
        raise _name_the_file(e, path_or_mapping)


def _load_state_dict(path_or_mapping, prefix, module_classes, overrides):
    """load_state_dict's work, after the caller's arguments were checked."""
    tensors, hints = read_state_dict(path_or_mapping, module_classes=module_classes)
    name = _display(path_or_mapping) if not isinstance(path_or_mapping, Mapping) else "<mapping>"
    adopt = None if isinstance(path_or_mapping, Mapping) else set()
    if prefix is None:
        specs = [_apply_hints(s, hints) for s in find_rnn_modules(tensors)]
        # (torch.nn cells count too: an encoder LSTM and a decoder LSTMCell are two)
        cells = _cells_beside(tensors, hints, strict=not specs)
        if not specs and not cells:
            raise LoadError(f"{name}: no recurrent module (weight_ih_l0/weight_hh_l0 ...) "
                            "found, nor a cell (weight_ih/weight_hh)")
        if len(specs) + len(cells) > 1:
            listing = "; ".join(
                [f"{s.prefix!r} ({s.cell} {s.input_size}->{s.hidden_size}, "
                 f"{s.num_layers} layer(s){', bidirectional' if s.bidirectional else ''})"
                 for s in specs]
                + [f"{s.prefix!r} ({s.cell} {s.input_size}->{s.hidden_size})" for s in cells])
            raise LoadError(f"{name}: holds {len(specs) + len(cells)} recurrent modules, pass "
                            f"prefix= one of: {listing}")
        if cells:
            return build_cell(cells[0], _group_cells(tensors)[cells[0].prefix],
                              hints.get(cells[0].prefix), _adopt=adopt, **overrides)
        spec = specs[0]
    else:
        # (only the module asked for is read: another one that does not load, a tied
        # or parametrized weight saved under another name, is no reason to refuse it)
        want = _norm_prefix(prefix)
        _refuse_parametrized(tensors, want)
        groups = _group(tensors)
        if want not in groups:
            cells = _group_cells(tensors)
            if want in cells:
                spec = _apply_hints(_infer_cell(want, cells[want]), hints)
                return build_cell(spec, cells[want], hints.get(want), _adopt=adopt,
                                  **overrides)
            found = [repr(p) for p in groups] + [f"{p!r} (cell)" for p in cells]
            raise LoadError(f"{name}: no recurrent module with prefix {want!r} "
                            f"(found: {', '.join(found) or 'none'})")
        spec = _apply_hints(_infer(want, groups[want], tensors), hints)
    # (arrays read from a file here are nobody else's: the layer keeps them, no copy)
    return build_layer(spec, extract_module(tensors, spec.prefix), hints.get(spec.prefix),
                       _adopt=adopt, **overrides)


def build_layer(spec: RNNSpec, weights: Mapping[str, Any], hints: Mapping | None = None, *,
                _adopt: set | None = None, **overrides):
    """A fastrnn layer for ``spec`` with ``weights`` (local names) loaded (``_adopt``: see
    ``RNNBase.load_state_dict``)."""
    from .. import layers as _layers  # lazy: the io package never imports the core at import time

    cell = overrides.pop("cell", None)
    if cell is not None:
        c = {"SIMPLERNN": "RNN", "RNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}.get(str(cell).upper())
        if c != spec.cell:
            raise LoadError(f"module {spec.prefix!r} is a {spec.cell} (from its weight shapes), "
                            f"not a {cell}")
    hints = hints or {}
    _warn_unknown(spec, hints, overrides,
                  ("batch_first", "nonlinearity") if spec.cell == "RNN" else ("batch_first",))
    kw: dict[str, Any] = dict(num_layers=spec.num_layers, bias=spec.bias,
                              bidirectional=spec.bidirectional, dtype=spec.dtype,
                              batch_first=bool(hints.get("batch_first", False)),
                              seed=_layers._WEIGHTS_FOLLOW)    # (loaded below, strict)
    if spec.cell == "RNN":
        kw["nonlinearity"] = spec.nonlinearity or "tanh"
    elif "nonlinearity" in overrides:       # (as build_cell says it)
        raise LoadError(f"module {spec.prefix!r} is a {spec.cell}: nonlinearity does not "
                        "apply (nn.RNN and nn.RNNCell weights only)")
    kw.update(overrides)
    extra = {"proj_size": spec.proj_size} if spec.cell == "LSTM" else {}
    cls = {"LSTM": _layers.LSTM, "GRU": _layers.GRU}.get(spec.cell, _layers.SimpleRNN)
    return _built(spec, lambda: cls(spec.input_size, spec.hidden_size, **extra, **kw),
                  weights, _adopt)


def _built(spec: RNNSpec, make, weights: Mapping[str, Any], adopt):
    """``make()``'s module with ``weights`` loaded (strict), errors as LoadErrors naming
    the module (build_layer, build_cell)."""
    try:
        obj = make()
    except (ValueError, TypeError) as e:
        raise LoadError(f"module {spec.prefix!r}: cannot build a {spec.cell}: {e}") from e
    try:
        obj.load_state_dict(dict(weights), strict=True, _adopt=adopt)
    except (KeyError, ValueError, TypeError) as e:
        raise LoadError(f"module {spec.prefix!r}: {e}") from e
    return obj


_CELL_KIND = {"LSTMCELL": "LSTMCell", "LSTM": "LSTMCell", "GRUCELL": "GRUCell",
              "GRU": "GRUCell", "RNNCELL": "RNNCell", "RNN": "RNNCell",
              "SIMPLERNN": "RNNCell"}


def build_cell(spec: RNNSpec, weights: Mapping[str, Any], hints: Mapping | None = None, *,
               _adopt: set | None = None, **overrides):
    """A fastrnn cell (:mod:`fastrnn.cells`) for a cell ``spec`` with ``weights``
    (local names ``weight_ih`` ...) loaded.  ``overrides``: ``nonlinearity`` (RNNCell),
    ``dtype``, ``num_threads``; ``cell=`` asserts the kind (``"LSTMCell"`` or
    ``"LSTM"``, ...)."""
    from .. import cells as _cells, layers as _layers   # lazy, as build_layer

    cell = overrides.pop("cell", None)
    if cell is not None and _CELL_KIND.get(str(cell).upper()) != spec.cell:
        raise LoadError(f"module {spec.prefix!r} is a {spec.cell} (from its weight shapes), "
                        f"not a {cell}")
    kw: dict[str, Any] = dict(bias=spec.bias, dtype=spec.dtype,
                              seed=_layers._WEIGHTS_FOLLOW)     # (loaded below, strict)
    if spec.cell == "RNNCell":
        kw["nonlinearity"] = spec.nonlinearity or "tanh"
        _warn_unknown(spec, hints or {}, overrides, ("nonlinearity",))
    allowed = {"dtype", "num_threads"} | ({"nonlinearity"} if spec.cell == "RNNCell" else set())
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise LoadError(f"module {spec.prefix!r} is a {spec.cell}: {', '.join(bad)} does not "
                        f"apply (a {spec.cell} takes {', '.join(sorted(allowed))})")
    kw.update(overrides)
    cls = _cells._CLASSES[spec.cell]
    return _built(spec, lambda: cls(spec.input_size, spec.hidden_size, **kw), weights, _adopt)


def load_any_torchlike(path, prefix: str | None = None, **kw):
    """Dispatcher entry for ``torch-zip``, ``torch-legacy``, ``torch-export`` and
    ``safetensors`` files.

    A safetensors file written by fastrnn itself (config in its metadata) is
    rebuilt exactly; anything else goes through :func:`load_state_dict`.
    """
    from .detect import sniff_format

    if sniff_format(path) == "safetensors":
        from .safetensors import METADATA_KEY, load_fastrnn_safetensors, read_safetensors_metadata

        meta = read_safetensors_metadata(path)
        if METADATA_KEY in meta and prefix is None:
            kw.pop("module_classes", None)      # (for torch pickles: nothing to do here)
            return load_fastrnn_safetensors(path, **kw)
    return load_state_dict(path, prefix=prefix, **kw)
