"""Read Keras models without Keras: Keras 3 ``.keras`` zips, legacy ``.h5`` files (Keras 2 /
tf.keras, or Keras 3's legacy writer) and weights-only files plus an architecture.

h5py is imported only when a file is read (``pip install 'fastrnn[keras]'``).

Weights are converted once, at load, to the PyTorch layout fastrnn's core layers use:
Keras LSTM gates i, f, c, o are PyTorch's i, f, g, o; Keras GRU gates z, r, h become r, z, n;
kernels are transposed.  Old CuDNNLSTM / CuDNNGRU weights (bias 8H / 6H) are converted as
Keras 2's own loader does.  hard_sigmoid follows the file's Keras version: Keras 2's
``clip(0.2 x + 0.5, 0, 1)``, Keras 3's ``clip(x / 6 + 0.5, 0, 1)``.
"""
from __future__ import annotations

import io
import json
import os
import re
import warnings
import zipfile
from typing import Any

import numpy as np

try:  # the shared error class (fastrnn.io); a local one only if the package is missing
    from . import LoadError
except ImportError:  # pragma: no cover
    class LoadError(ValueError):
        pass

__all__ = ["load_keras", "LoadError", "model_from_keras_config", "is_keras_file"]

_H5_MAGIC = b"\x89HDF\r\n\x1a\n"
_RNN_CLASSES = ("SimpleRNN", "LSTM", "GRU", "CuDNNLSTM", "CuDNNGRU")
_NOOP_CLASSES = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout", "ActivityRegularization")
_SUPPORTED = ("InputLayer", "Embedding", "Masking", "Dense", "Activation", "TimeDistributed",
              "Bidirectional") + _RNN_CLASSES + _NOOP_CLASSES
# functional-graph operations Keras 3 records when Embedding(mask_zero) / Masking compute
# their masks; off the data chain they only feed `mask=` arguments, which fastrnn
# recomputes with Keras's own propagation rules
_MASK_OPS = ("NotEqual", "Any", "All", "LogicalAnd", "LogicalOr", "LogicalNot", "Equal")


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in tests
        raise ImportError("h5py is needed to read Keras files: pip install 'fastrnn[keras]'") from e
    return h5py


def is_keras_file(path) -> bool:
    """True for a Keras 3 zip (holding config.json) or an HDF5 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if head == _H5_MAGIC:
        return True
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                return "config.json" in z.namelist()
        except zipfile.BadZipFile:
            return False
    return False


# ============================================================================ entry point

def load_keras(path, architecture=None, *, hard_sigmoid: str | None = None,
               dtype="float32", num_threads: int | None = None):
    """Load a Keras model file into a :class:`fastrnn.model.Model`.

    ``path``: a ``.keras`` zip (Keras 3), a full-model ``.h5`` (Keras 2 / tf.keras / Keras 3
    legacy), or a weights-only h5 (``model.save_weights``; Keras 2 ``.h5`` or Keras 3
    ``.weights.h5``), which needs ``architecture``: the model's Keras config (``model.to_json()``
    string, or its dict), or a list of layer specs such as
    ``[{"class_name": "LSTM", "config": {"units": 8}}, ("Dense", {"units": 2})]`` (missing
    keys take Keras's defaults).  ``architecture`` also overrides the config stored in a file.

    ``hard_sigmoid``: ``"keras2"`` (``0.2 x + 0.5``) or ``"keras3"`` (``x / 6 + 0.5``);
    by default taken from the file's Keras version (Keras 2 when the file says nothing).
    """
    h5py = _h5py()
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise LoadError(f"cannot read {path}: {e}") from e
    name = os.fspath(path) if not hasattr(path, "read") else "<file>"
    if head[:2] == b"PK":
        config, version, h5file = _open_keras_zip(path, name, h5py)
        with h5file:
            store = _Keras3Store(h5file)
            return _build(config if architecture is None else _parse_architecture(architecture),
                          store, version, hard_sigmoid, dtype, num_threads, name)
    if head != _H5_MAGIC:
        raise LoadError(f"{name}: not a Keras file (neither a .keras zip nor HDF5)")
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise LoadError(f"{name}: cannot open HDF5 file: {e}") from e
    with f:
        attrs = f.attrs
        version = _attr_str(attrs.get("keras_version"))
        if "model_config" in attrs:
            config = _parse_architecture(_attr_str(attrs["model_config"]))
            group = f["model_weights"] if "model_weights" in f else f
            store = _LegacyStore(group, name)
        elif "layer_names" in attrs:
            config, store = None, _LegacyStore(f, name)
        elif "layers" in f:
            config, store = None, _Keras3Store(f)
        else:
            raise LoadError(f"{name}: HDF5 file holds no Keras model or weights "
                            "(no model_config, layer_names or layers group)")
        if version is None and "model_weights" in f:
            version = _attr_str(f["model_weights"].attrs.get("keras_version"))
        if architecture is not None:
            config = _parse_architecture(architecture)
        if config is None:
            raise LoadError(f"{name} holds weights only: pass architecture= (the model's "
                            "Keras config, e.g. model.to_json(), or a list of layer specs)")
        return _build(config, store, version, hard_sigmoid, dtype, num_threads, name)


def model_from_keras_config(architecture, weights, *, keras_version="3", hard_sigmoid=None,
                            dtype="float32", num_threads=None):
    """Build a model from a Keras config and weights given as ``{layer_name: [arrays]}``
    (each layer's arrays in Keras's own order, as ``layer.get_weights()`` returns them)."""
    return _build(_parse_architecture(architecture), _DictStore(weights), keras_version,
                  hard_sigmoid, dtype, num_threads, "<weights>")


def _open_keras_zip(path, name, h5py):
    try:
        z = zipfile.ZipFile(path)
        with z:
            names = set(z.namelist())
            missing = {"config.json", "model.weights.h5"} - names
            if missing:
                raise LoadError(f"{name}: not a complete .keras file, missing {sorted(missing)}")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            data = z.read("model.weights.h5")
    except LoadError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise LoadError(f"{name}: corrupt or truncated .keras zip: {e}") from e
    except Exception as e:  # zlib.error and friends
        raise LoadError(f"{name}: corrupt or truncated .keras zip: {e}") from e
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except Exception as e:
        raise LoadError(f"{name}: model.weights.h5 inside the zip is not readable: {e}") from e
    return _parse_architecture(config), meta.get("keras_version"), f


def _attr_str(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


# ============================================================================ architecture

class _LayerDesc:
    """One layer of the chain: Keras class name, its config, its name."""

    def __init__(self, class_name, config, name):
        self.class_name = class_name
        self.config = config
        self.name = name

    def __repr__(self):
        return f"{self.class_name}({self.name!r})"


def _spec_to_layer(spec, i) -> dict:
    """Normalise a list item of a user architecture into a Keras layer config dict."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        spec = {"class_name": spec[0], "config": dict(spec[1])}
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise LoadError(f"architecture item {i} must be a Keras layer config dict with "
                        f"'class_name' (or a (class_name, config) pair), got {spec!r}")
    if "config" not in spec:  # flat form {"class_name": "LSTM", "units": 3, ...}
        spec = {"class_name": spec["class_name"],
                "config": {k: v for k, v in spec.items() if k != "class_name"}}
    return spec


def _version_hint(arch):
    """Keras version a model config was written by: its own 'keras_version' (Keras 2's
    to_json), else 3 for Keras 3's serialisation (module / build_config keys), else None."""
    if not isinstance(arch, dict):
        return None
    if arch.get("keras_version"):
        return str(arch["keras_version"])
    if "module" in arch or "build_config" in arch:
        return "3"
    return None


def _parse_architecture(arch):
    """-> (list of _LayerDesc in execution order, outputs [(index, tensor)] or None,
    Keras version hint or None)."""
    if isinstance(arch, (str, bytes)):
        try:
            arch = json.loads(arch)
        except ValueError as e:
            raise LoadError(f"architecture is not valid JSON: {e}") from e
    if isinstance(arch, (list, tuple)):
        layers = [_spec_to_layer(s, i) for i, s in enumerate(arch)]
        return _sequential(layers), None, (None, None)
    if not isinstance(arch, dict):
        raise LoadError(f"architecture must be a Keras config (JSON or dict) or a list of "
                        f"layer specs, got {type(arch).__name__}")
    cls = arch.get("class_name")
    cfg = arch.get("config", {})
    hint = _version_hint(arch)
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if cls == "Sequential":
        layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
        return _sequential(layers), None, (hint, name)
    if cls in ("Functional", "Model"):
        return (*_functional(cfg), (hint, name))
    raise LoadError(f"unsupported model class {cls!r}: fastrnn reads Sequential models and "
                    "functional models that are a simple chain of layers")


def _layer_name(l, i):
    return l.get("name") or l.get("config", {}).get("name") or f"layer_{i}"


def _sequential(layers):
    descs = []
    for i, l in enumerate(layers):
        descs.append(_LayerDesc(l["class_name"], dict(l.get("config", {})), _layer_name(l, i)))
    return descs


def _history(t):
    """Keras tensor reference -> (layer name, node index, tensor index) or None."""
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__":
        h = t["config"]["keras_history"]
        return h[0], int(h[1]), int(h[2])
    if isinstance(t, (list, tuple)) and len(t) >= 3 and isinstance(t[0], str):
        return t[0], int(t[1]), int(t[2])
    return None


def _inbound(l):
    """Data inputs (tensor references) of a functional layer's single call."""
    nodes = l.get("inbound_nodes", [])
    if len(nodes) > 1:
        raise LoadError(f"layer {l.get('name')!r} is called {len(nodes)} times; fastrnn "
                        "supports each layer used once (a simple chain)")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        refs = []
        for a in node.get("args", []):
            if isinstance(a, list) and a and _history(a) is None:
                refs.extend(r for r in (_history(x) for x in a) if r)
            else:
                r = _history(a)
                if r:
                    refs.append(r)
        return refs
    return [r for r in (_history(t) for t in node) if r]  # Keras 2: [[name, node, tensor, kw]]


def _refs(v):
    if v is None:
        return []
    r = _history(v)
    if r is not None:
        return [r]
    return [x for item in v for x in _refs(item)]


def _functional(cfg):
    layers = cfg.get("layers", [])
    by_name = {_layer_name(l, i): l for i, l in enumerate(layers)}
    outputs = _refs(cfg.get("output_layers"))
    inputs = _refs(cfg.get("input_layers"))
    if len(inputs) != 1:
        raise LoadError(f"fastrnn supports models with one input, this one has {len(inputs)}")
    if not outputs:
        raise LoadError("functional model config has no output_layers")
    # walk back from the output that is furthest down the chain
    chain_of = {}

    def chain(name):
        if name in chain_of:
            return chain_of[name]
        l = by_name.get(name)
        if l is None:
            raise LoadError(f"functional config refers to unknown layer {name!r}")
        refs = _inbound(l)
        if not refs:
            res = [name]
        else:
            if len(refs) != 1:
                raise LoadError(f"layer {name!r} ({l['class_name']}) takes {len(refs)} inputs; "
                                "fastrnn supports simple chains of single-input layers")
            src, _, tensor = refs[0]
            if tensor != 0:
                raise LoadError(f"layer {name!r} reads output {tensor} of {src!r}; only the "
                                "first output of a layer can feed the next layer")
            res = chain(src) + [name]
        chain_of[name] = res
        return res

    longest = max((chain(o[0]) for o in outputs), key=len)
    for o in outputs:
        c = chain(o[0])
        if longest[:len(c)] != c:
            raise LoadError("the model's outputs are not on one chain of layers")
    on_chain = set(longest)
    for i, l in enumerate(layers):
        n = _layer_name(l, i)
        if n not in on_chain and l["class_name"] not in _MASK_OPS:
            raise LoadError(f"layer {n!r} ({l['class_name']}) is not on the model's chain "
                            "of layers; fastrnn supports simple chains only")
    descs = [_LayerDesc(by_name[n]["class_name"], dict(by_name[n].get("config", {})), n)
             for n in longest]
    index = {n: i for i, n in enumerate(longest)}
    return descs, [(index[o[0]], o[2]) for o in outputs]


# ============================================================================ weight stores

def _snake(name):
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read(ds):
    return np.asarray(ds[()])


class _Keras3Store:
    """Keras 3 weights file: layers/<snake_class>[_n]/... with vars/0, vars/1, ..."""

    def __init__(self, f):
        self.f = f
        self.root = f["layers"] if "layers" in f else None
        self.paths: dict[str, str] = {}

    def assign(self, descs):
        counts: dict[str, int] = {}
        for d in descs:
            s = _snake(d.class_name)
            n = counts.get(s, -1) + 1
            counts[s] = n
            self.paths[d.name] = s if n == 0 else f"{s}_{n}"

    @staticmethod
    def _vars(g):
        if g is None or "vars" not in g:
            return []
        v = g["vars"]
        keys = sorted(v.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
        return [_read(v[k]) for k in keys]

    def get(self, desc):
        if self.root is None:
            return None
        p = self.paths[desc.name]
        if p not in self.root:
            return None
        g = self.root[p]
        cls = desc.class_name
        if cls in _RNN_CLASSES:
            return self._vars(g["cell"]) if "cell" in g else self._vars(g)
        if cls == "Bidirectional":
            out = []
            for side in ("forward_layer", "backward_layer"):
                if side not in g:
                    return None
                sg = g[side]
                out += self._vars(sg["cell"]) if "cell" in sg else self._vars(sg)
            return out
        if cls == "TimeDistributed":
            return self._vars(g["layer"]) if "layer" in g else []
        return self._vars(g)


class _LegacyStore:
    """Keras 2 style: layer_names attr, per layer group with weight_names attr."""

    def __init__(self, g, fname):
        self.g = g
        self.fname = fname
        names = g.attrs.get("layer_names")
        self.layer_names = [_attr_str(n) for n in (names if names is not None else [])]
        self.map: dict[str, str] = {}

    def _weights(self, lname):
        grp = self.g[lname]
        wn = grp.attrs.get("weight_names")
        wn = [_attr_str(n) for n in (wn if wn is not None else [])]
        out = []
        for n in wn:
            if n not in grp:
                raise LoadError(f"{self.fname}: weight {n!r} of layer {lname!r} is listed but "
                                "missing from the file")
            out.append(_read(grp[n]))
        return out

    def assign(self, descs):
        with_w = [n for n in self.layer_names
                  if n in self.g and len(self.g[n].attrs.get("weight_names", [])) > 0]
        wanted = [d for d in descs if _has_weights(d)]
        if all(d.name in with_w for d in wanted):
            self.map = {d.name: d.name for d in wanted}
            return
        # names differ (weights-only file with a user architecture): match by order
        if len(with_w) != len(wanted):
            raise LoadError(f"{self.fname}: the file has weights for {len(with_w)} layers "
                            f"({with_w}), the architecture has {len(wanted)} layers with "
                            f"weights ({[d.name for d in wanted]})")
        self.map = {d.name: n for d, n in zip(wanted, with_w)}

    def get(self, desc):
        n = self.map.get(desc.name)
        return None if n is None else self._weights(n)


class _DictStore:
    def __init__(self, weights):
        self.w = weights

    def assign(self, descs):
        pass

    def get(self, desc):
        w = self.w.get(desc.name)
        return None if w is None else [np.asarray(a) for a in w]


def _has_weights(d):
    c = d.class_name
    if c in _RNN_CLASSES or c in ("Embedding", "Dense", "Bidirectional"):
        return True
    if c == "TimeDistributed":
        inner = d.config.get("layer", {})
        return inner.get("class_name") == "Dense"
    return False


# ============================================================================ building

def _keras_major(version, override):
    if override is not None:
        if override not in ("keras2", "keras3"):
            raise ValueError(f"hard_sigmoid must be 'keras2' or 'keras3', got {override!r}")
        return 2 if override == "keras2" else 3
    if version:
        m = re.match(r"\s*(\d+)", str(version))
        if m:
            return 3 if int(m.group(1)) >= 3 else 2
    return 2


def _act_spec(a, major, where):
    """Keras activation config -> core activation spec."""
    if isinstance(a, dict):  # serialised function {"class_name": "function", "config": "tanh"}
        c = a.get("config")
        a = c if isinstance(c, str) else (c or {}).get("name", a.get("class_name"))
    if a is None:
        a = "linear"
    if not isinstance(a, str):
        raise LoadError(f"{where}: unsupported activation {a!r}")
    a = a.split(">")[-1].lower()
    if a == "hard_sigmoid":
        return ("hardsigmoid", 0.2, 0.5) if major == 2 else ("hardsigmoid", 1.0 / 6.0, 0.5)
    if a == "leaky_relu":
        return ("leakyrelu", 0.2)
    if a in ("linear", "sigmoid", "tanh", "relu", "elu", "softsign", "softplus"):
        return a
    raise LoadError(f"{where}: activation {a!r} is not supported inside a recurrent layer "
                    "(supported: tanh, sigmoid, hard_sigmoid, relu, linear, elu, softsign, "
                    "softplus, leaky_relu)")


def _dense_act(a, major, where):
    if isinstance(a, dict):
        c = a.get("config")
        a = c if isinstance(c, str) else (c or {}).get("name", a.get("class_name"))
    a = "linear" if a is None else str(a).lower()
    if a == "hard_sigmoid":
        return ("hard_sigmoid", 0.2, 0.5) if major == 2 else ("hard_sigmoid", 1.0 / 6.0, 0.5)
    from ..model import activation_function
    try:
        activation_function(a)
    except ValueError:
        raise LoadError(f"{where}: unsupported activation {a!r}") from None
    return a


class _Builder:
    def __init__(self, store, major, dtype, num_threads, fname):
        self.store, self.major, self.dtype, self.nt, self.fname = (
            store, major, dtype, num_threads, fname)

    def weights(self, d, n_expected):
        w = self.store.get(d)
        if w is None:
            raise LoadError(f"{self.fname}: no weights found for layer {d.name!r} "
                            f"({d.class_name})")
        if len(w) not in n_expected:
            raise LoadError(f"{self.fname}: layer {d.name!r} ({d.class_name}) has {len(w)} "
                            f"weight arrays, expected {' or '.join(map(str, n_expected))}")
        return w

    def check(self, d, what, arr, shape):
        if tuple(arr.shape) != tuple(shape):
            raise LoadError(f"{self.fname}: layer {d.name!r} ({d.class_name}): {what} has shape "
                            f"{tuple(arr.shape)}, expected {tuple(shape)}")

    # ---- recurrent
    def rnn(self, d, cfg, weights, in_dim, zero_output=None, name=None):
        from .. import layers as core
        from ..model import KerasRNN
        cls = d.class_name if cfg is None else cfg["class_name"]
        c = d.config if cfg is None else cfg["config"]
        where = f"layer {d.name!r} ({cls})"
        if c.get("time_major"):
            raise LoadError(f"{self.fname}: {where}: time_major=True is not supported")
        if c.get("stateful"):
            warnings.warn(f"{where} is stateful; fastrnn starts every predict() from zero "
                          "states", stacklevel=3)
        if "units" not in c:
            raise LoadError(f"{self.fname}: {where}: config has no 'units'")
        H = int(c["units"])
        cudnn = cls.startswith("CuDNN")
        use_bias = True if cudnn else bool(c.get("use_bias", True))
        G = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3, "CuDNNLSTM": 4, "CuDNNGRU": 3}[cls]
        if len(weights) != (3 if use_bias else 2):
            raise LoadError(f"{self.fname}: {where} has {len(weights)} weight arrays, expected "
                            f"{3 if use_bias else 2}")
        k, rk = weights[0], weights[1]
        I = in_dim if in_dim is not None else (k.shape[0] if k.ndim == 2 else -1)
        self.check(d, "kernel", k, (I, G * H))
        self.check(d, "recurrent_kernel", rk, (H, G * H))
        b = weights[2] if use_bias else None
        reset_after = True
        if cls == "GRU":
            ra = c.get("reset_after")
            reset_after = (b is not None and b.ndim == 2) if ra is None else bool(ra)
        if cudnn:
            k, rk, b = _from_cudnn(d, self, k, rk, b, G, H, cls)
        elif use_bias:
            if cls == "GRU" and reset_after:
                self.check(d, "bias", b, (2, G * H))
            else:
                self.check(d, "bias", b, (G * H,))
        act = _act_spec(c.get("activation", "tanh"), self.major, where)
        ract = _act_spec(c.get("recurrent_activation", "sigmoid"), self.major, where)
        kw = dict(bias=use_bias, batch_first=True, dtype=self.dtype, num_threads=self.nt,
                  go_backwards=bool(c.get("go_backwards", False)))
        Wih, Whh = k.T, rk.T
        bih = bhh = None
        if cls in ("LSTM", "CuDNNLSTM"):
            layer = core.LSTM(I, H, gate_activation=ract, cell_activation=act,
                              hidden_activation=act, **kw)
            if use_bias:
                bih, bhh = b, np.zeros_like(b)
        elif cls in ("GRU", "CuDNNGRU"):
            layer = core.GRU(I, H, reset_after=reset_after, gate_activation=ract,
                             activation=act, **kw)
            perm = np.concatenate([np.arange(H, 2 * H), np.arange(0, H), np.arange(2 * H, 3 * H)])
            Wih, Whh = Wih[perm], Whh[perm]
            if use_bias:
                if reset_after:
                    bih, bhh = b[0][perm], b[1][perm]
                else:
                    bih, bhh = b[perm], np.zeros_like(b)
        else:
            layer = core.SimpleRNN(I, H, activations=[act], **kw)
            if use_bias:
                bih, bhh = b, np.zeros_like(b)
        sd = {"weight_ih_l0": Wih, "weight_hh_l0": Whh}
        if use_bias:
            sd.update(bias_ih_l0=bih, bias_hh_l0=bhh)
        layer.load_state_dict({n: np.ascontiguousarray(v) for n, v in sd.items()})
        zo = bool(c.get("zero_output_for_mask", False)) if zero_output is None else zero_output
        return KerasRNN(layer, return_sequences=bool(c.get("return_sequences", False)),
                        return_state=bool(c.get("return_state", False)),
                        zero_output_for_mask=zo, name=name or d.name), H

    def bidirectional(self, d, in_dim):
        from ..model import Bidirectional
        c = d.config
        inner = c.get("layer")
        if not isinstance(inner, dict) or inner.get("class_name") not in _RNN_CLASSES:
            cls = inner.get("class_name") if isinstance(inner, dict) else inner
            raise LoadError(f"{self.fname}: layer {d.name!r} (Bidirectional) wraps unsupported "
                            f"layer {cls!r}")
        fwd_cfg = {"class_name": inner["class_name"], "config": dict(inner.get("config", {}))}
        back = c.get("backward_layer")
        if back is not None:
            if back.get("class_name") not in _RNN_CLASSES:
                raise LoadError(f"{self.fname}: layer {d.name!r} (Bidirectional) has unsupported "
                                f"backward layer {back.get('class_name')!r}")
            bwd_cfg = {"class_name": back["class_name"], "config": dict(back.get("config", {}))}
        else:
            bc = dict(fwd_cfg["config"])
            bc["go_backwards"] = not bc.get("go_backwards", False)
            bwd_cfg = {"class_name": fwd_cfg["class_name"], "config": bc}
        rs = bool(fwd_cfg["config"].get("return_sequences", False))
        w = self.weights(d, range(4, 7))
        nf = 3 if (fwd_cfg["class_name"].startswith("CuDNN")
                   or fwd_cfg["config"].get("use_bias", True)) else 2
        fwd, hf = self.rnn(d, fwd_cfg, w[:nf], in_dim, zero_output=rs, name=d.name + "/forward")
        bwd, hb = self.rnn(d, bwd_cfg, w[nf:], in_dim, zero_output=rs, name=d.name + "/backward")
        if bwd.return_sequences != fwd.return_sequences or bwd.return_state != fwd.return_state:
            raise LoadError(f"{self.fname}: layer {d.name!r}: forward and backward layers "
                            "disagree on return_sequences / return_state")
        mm = c.get("merge_mode", "concat")
        if mm not in ("concat", "sum", "mul", "ave", None):
            raise LoadError(f"{self.fname}: layer {d.name!r}: unsupported merge_mode {mm!r}")
        layer = Bidirectional(fwd, bwd, merge_mode=mm, name=d.name)
        _try_fuse(layer, self)
        out = hf + hb if mm == "concat" else (hf if hf == hb or mm is None else None)
        if mm not in ("concat", None) and hf != hb:
            raise LoadError(f"{self.fname}: layer {d.name!r}: merge_mode {mm!r} needs equal "
                            f"units in both directions, got {hf} and {hb}")
        return layer, out

    def dense(self, d, c, in_dim, name):
        from ..model import Dense
        use_bias = bool(c.get("use_bias", True))
        w = self.weights(d, (2,) if use_bias else (1,))
        units = int(c.get("units", w[0].shape[-1] if w[0].ndim == 2 else -1))
        I = in_dim if in_dim is not None else (w[0].shape[0] if w[0].ndim == 2 else -1)
        self.check(d, "kernel", w[0], (I, units))
        if use_bias:
            self.check(d, "bias", w[1], (units,))
        act = _dense_act(c.get("activation", "linear"), self.major, f"layer {d.name!r}")
        return Dense(w[0], w[1] if use_bias else None, act, name=name,
                     dtype=self.dtype), units

    def build(self, descs, outputs):
        from ..model import (Activation, Dropout, Embedding, Masking, Model,
                             TimeDistributed)
        unsupported = [d for d in descs if d.class_name not in _SUPPORTED]
        if unsupported:
            raise LoadError(f"{self.fname}: unsupported Keras layer(s): " + ", ".join(
                f"{d.name!r} ({d.class_name})" for d in unsupported)
                + f"; fastrnn supports {', '.join(sorted(set(_SUPPORTED)))}")
        self.store.assign(descs)
        layers, index_map = [], {}
        dim = None
        for i, d in enumerate(descs):
            c, cls = d.config, d.class_name
            if cls == "InputLayer":
                shape = c.get("batch_shape") or c.get("batch_input_shape")
                if shape and len(shape) >= 3 and shape[-1] is not None:
                    dim = int(shape[-1])
                continue
            if dim is None:
                shape = c.get("batch_input_shape") or c.get("batch_shape")
                if shape and len(shape) >= 3 and shape[-1] is not None:
                    dim = int(shape[-1])
            index_map[i] = len(layers)
            if cls == "Embedding":
                w = self.weights(d, (1,))
                V, E = c.get("input_dim"), c.get("output_dim")
                if V is not None and E is not None:
                    self.check(d, "embeddings", w[0], (int(V), int(E)))
                elif w[0].ndim != 2:
                    raise LoadError(f"{self.fname}: layer {d.name!r}: embeddings must be 2-D")
                layer = Embedding(w[0], mask_zero=bool(c.get("mask_zero", False)),
                                  name=d.name, dtype=self.dtype)
                dim = w[0].shape[1]
            elif cls == "Masking":
                layer = Masking(float(c.get("mask_value", 0.0)), name=d.name)
            elif cls == "Dense":
                layer, dim = self.dense(d, c, dim, d.name)
            elif cls == "Activation":
                layer = Activation(_dense_act(c.get("activation"), self.major,
                                              f"layer {d.name!r}"), name=d.name)
            elif cls in _NOOP_CLASSES:
                layer = Dropout(float(c.get("rate", 0.0) or 0.0), name=d.name)
            elif cls == "TimeDistributed":
                inner = c.get("layer", {})
                icls = inner.get("class_name")
                ic = inner.get("config", {})
                if icls == "Dense":
                    il, dim = self.dense(d, ic, dim, ic.get("name", "dense"))
                elif icls in _NOOP_CLASSES:
                    il = Dropout(float(ic.get("rate", 0.0) or 0.0))
                elif icls == "Activation":
                    il = Activation(_dense_act(ic.get("activation"), self.major, d.name))
                else:
                    raise LoadError(f"{self.fname}: layer {d.name!r} (TimeDistributed) wraps "
                                    f"unsupported layer {icls!r}; supported: Dense, Dropout, "
                                    "Activation")
                layer = TimeDistributed(il, name=d.name)
            elif cls == "Bidirectional":
                layer, dim = self.bidirectional(d, dim)
            else:  # recurrent
                w = self.weights(d, (2, 3))
                layer, dim = self.rnn(d, None, w, dim)
            layers.append(layer)
        if not layers:
            raise LoadError(f"{self.fname}: the model has no layers fastrnn can run")
        outs = None
        if outputs is not None:
            outs = []
            for a, t in outputs:
                if a not in index_map:
                    raise LoadError(f"{self.fname}: model output comes from layer "
                                    f"{descs[a].name!r} ({descs[a].class_name}), which is not "
                                    "supported as an output")
                outs.append((index_map[a], t))
            if outs == [(len(layers) - 1, 0)] and not _multi(layers[-1]):
                outs = None
        return Model(layers, outputs=outs)


def _multi(layer):
    return getattr(layer, "return_state", False) or getattr(layer, "merge_mode", "") is None


def _try_fuse(layer, b):
    """Run a standard Bidirectional (same cell both ways) as one bidirectional core layer."""
    f, r = layer.forward.core, layer.backward.core
    if type(f) is not type(r) or f.go_backwards or not r.go_backwards:
        return
    if layer.forward.zero_output_for_mask != layer.backward.zero_output_for_mask:
        return
    if (f.input_size, f.hidden_size, f.bias, f.reset_after, f._acts) != \
            (r.input_size, r.hidden_size, r.bias, r.reset_after, r._acts):
        return
    cfg = f.get_config()
    cfg.update(bidirectional=True, go_backwards=False)
    try:
        from .. import layers as core
        fused = core.layer_from_config(cfg)
    except Exception:  # pragma: no cover - any mismatch: keep the two-layer path
        return
    sd = dict(f.state_dict())
    sd.update({k + "_reverse": v for k, v in r.state_dict().items()})
    fused.load_state_dict(sd)
    fused.num_threads = f.num_threads
    layer.fuse(fused)


def _from_cudnn(d, b, k, rk, bias, G, H, cls):
    """cuDNN-layout weights (Keras 2 CuDNNLSTM / CuDNNGRU) -> Keras LSTM / GRU layout."""
    b.check(d, "bias", bias, (2 * G * H,))
    I = k.shape[0]
    k = np.hstack([blk.T.reshape(blk.shape, order="F") for blk in np.hsplit(k, G)])
    rk = np.hstack([blk.T for blk in np.hsplit(rk, G)])
    if cls == "CuDNNLSTM":
        bias = bias[:G * H] + bias[G * H:]
    else:
        bias = bias.reshape(2, G * H)
    assert k.shape == (I, G * H)
    return k, rk, bias


def _build(parsed, store, version, hard_sigmoid, dtype, num_threads, fname):
    descs, outputs, (hint, name) = parsed
    version = version or hint
    major = _keras_major(version, hard_sigmoid)
    try:
        model = _Builder(store, major, dtype, num_threads, fname).build(descs, outputs)
    except LoadError:
        raise
    except (KeyError, TypeError, IndexError) as e:
        raise LoadError(f"{fname}: malformed Keras config or weights: {e!r}") from e
    if name:
        model.name = str(name)
    return model
