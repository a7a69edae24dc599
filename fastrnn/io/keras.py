"""Read Keras models without Keras: Keras 3 ``.keras`` zips, legacy ``.h5`` files (Keras 2 /
tf.keras, or Keras 3's legacy writer) and weights-only files plus an architecture.

HDF5 is read by fastrnn's own pure-Python reader (:mod:`fastrnn.io.hdf5`): no h5py, no
HDF5 C library, so Keras files need only NumPy.  Files are treated as untrusted: anything
malformed or unsupported ends in :class:`fastrnn.io.LoadError` naming the file and, where it
applies, the layer and the config key.

Weights are converted once, at load, to the PyTorch layout fastrnn's core layers use:
Keras LSTM gates i, f, c, o are PyTorch's i, f, g, o; Keras GRU gates z, r, h become r, z, n;
kernels are transposed.  Old CuDNNLSTM / CuDNNGRU weights (bias 8H / 6H) are converted as
Keras 2's own loader does.  hard_sigmoid follows the file's Keras version: Keras 2's
``clip(0.2 x + 0.5, 0, 1)``, Keras 3's ``clip(x / 6 + 0.5, 0, 1)``.

``keras.layers.RNN(cell)`` with an LSTMCell, GRUCell or SimpleRNNCell is the LSTM, GRU or
SimpleRNN layer (the cell's config, the RNN's flags); stacked cells (``RNN([cells])``,
``RNN(StackedRNNCells(...))``) become a stack of such layers, one per cell.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from . import hdf5

try:  # the shared error class (fastrnn.io); a local one only if the package is missing
    from . import LoadError
except ImportError:  # pragma: no cover
    class LoadError(ValueError):
        pass

__all__ = ["load_keras", "LoadError", "model_from_keras_config", "is_keras_file"]

_H5_MAGIC = b"\x89HDF\r\n\x1a\n"
_RNN_CLASSES = ("SimpleRNN", "LSTM", "GRU", "CuDNNLSTM", "CuDNNGRU")
# keras.layers.RNN(cell): the cells it may hold, and the layer each one is the cell of
_CELL_CLASSES = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}
# RNN(cell)'s own config keys (the cell's config holds the rest)
_WRAPPER_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
                 "time_major", "zero_output_for_mask")
_RECURRENT = _RNN_CLASSES + ("RNN",)
_NOOP_CLASSES = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout", "ActivityRegularization", "SpatialDropout2D",
                 "SpatialDropout3D", "Identity")
# activation layers (fastrnn.model.Activation, PReLU: the mask passes on)
_ACT_LAYERS = ("ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "PReLU")
# affine preprocessing layers (fastrnn.model's of the same names: Keras 3's pass the mask
# on, tf.keras 2's end it)
_SCALE_LAYERS = ("Rescaling", "Normalization")
# depthwise and separable convolutions: fastrnn's Conv1D / Conv2D with groups (a
# separable one: that, then a 1 x 1 convolution); nearest up-sampling
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
_UPSAMPLING = ("UpSampling1D", "UpSampling2D")
# shape and normalisation layers around the recurrent ones (fastrnn.model)
_SHAPE_CLASSES = ("GlobalAveragePooling1D", "GlobalMaxPooling1D", "Flatten", "RepeatVector",
                  "LayerNormalization", "BatchNormalization", "Conv1D", "MaxPooling1D",
                  "AveragePooling1D", "ZeroPadding1D", "Cropping1D")
# a CRNN's front-end: 2-D convolution and pooling of an image (B, rows, cols, channels),
# then Reshape / Permute into the recurrent layers' sequence (fastrnn.model's Conv2D,
# Pooling2D, Reshape, Permute)
_IMAGE_CLASSES = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "Reshape", "Permute",
                  "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D",
                  "Cropping2D")
# merge layers (several inputs: fastrnn.model's classes of the same names; Dot: two, its
# output unmasked)
_MERGE_LAYERS = ("Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum",
                 "Minimum", "Dot")
# attention layers (a list [query, value(, key)] / MultiHeadAttention's query=, value=,
# key=: fastrnn.model's classes of the same names)
_ATTENTION_LAYERS = ("Attention", "AdditiveAttention", "MultiHeadAttention")
# a TimeDistributed of a model is inlined as a fold of its input's steps into the batch
# (a layer of class _FOLD named "<TimeDistributed>/fold"), the model's layers on it and an
# unfold named as the TimeDistributed (class TimeDistributed, the key _UNFOLD -> the fold's
# name), reading [the model's output, the TimeDistributed's input]
_FOLD = "TimeDistributed(fold)"
_UNFOLD = object()
_SUPPORTED = ("InputLayer", "Embedding", "Masking", "Dense", "Activation", "Softmax",
              "TimeDistributed", _FOLD, "Bidirectional") + _RECURRENT + _NOOP_CLASSES \
    + _SHAPE_CLASSES + _IMAGE_CLASSES + _MERGE_LAYERS + _ATTENTION_LAYERS + _ACT_LAYERS \
    + _SCALE_LAYERS + _DEPTHWISE + _UPSAMPLING
# the call arguments of the attention layers that fastrnn runs (a layer object keeps them)
_ATTENTION_OPTIONS = ("return_attention_scores", "use_causal_mask")
_MHA_ARGS = ("query", "value", "key")
# layers whose output has no mask (as Keras's: GlobalMaxPooling1D and Conv1D drop it;
# Reshape and Permute too, except where their output is their input: _check_masks)
_MASK_ENDS = ("GlobalAveragePooling1D", "GlobalMaxPooling1D", "Flatten", "RepeatVector",
              "Conv1D", "MaxPooling1D", "AveragePooling1D", "Conv2D", "MaxPooling2D",
              "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
              "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D") + _DEPTHWISE \
    + _UPSAMPLING
# functional-graph operations Keras 3 records when Embedding(mask_zero) / Masking and
# the merge layers compute their masks (the ops.concatenate of a Concatenate's masks is a
# "Concatenate" too; a float64 layer on a float32 input casts it first: "Cast"); off the
# data graph they only feed `mask=` arguments, which fastrnn recomputes with Keras's own
# propagation rules.  On the data graph an operation runs as fastrnn.model.Op where it
# is one of its table's (_runs_op), else it is refused.
_MASK_OPS = ("NotEqual", "Any", "All", "LogicalAnd", "LogicalOr", "LogicalNot", "Equal",
             "ExpandDims", "ZerosLike", "OnesLike", "Concatenate", "Cast",
             "ConvertToTensor")
# what to use instead of an operation on the data path
_USE_LAYERS = ("fastrnn runs Keras layers and a table of operations (arithmetic, "
               "reductions, softmax, slicing, concatenate, transpose, matmul, ...: "
               "docs/keras.md); use a layer instead (to add, multiply or concatenate "
               "tensors: the merge layers Add, Multiply, Concatenate, ...)")
# the modules of Keras 3's operations (keras.ops) as a .keras config records them
_OP_MODULES = ("keras.src.ops", "keras.ops")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# tf.keras 2's form of a constant call argument: ["_CONSTANT_VALUE", -1, value]
_K2_CONSTANT = "_CONSTANT_VALUE"


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

# largest members of a .keras zip read into memory (declared, uncompressed sizes)
_MAX_JSON = 64 << 20
_MAX_H5 = 8 << 30


def load_keras(path, architecture=None, *, hard_sigmoid: str | None = None,
               dtype=None, num_threads: int | None = None):
    """Load a Keras model file into a :class:`fastrnn.model.Model`.

    ``path``: a ``.keras`` zip (Keras 3), a full-model ``.h5`` (Keras 2 / tf.keras / Keras 3
    legacy), or a weights-only h5 (``model.save_weights``; Keras 2 ``.h5`` or Keras 3
    ``.weights.h5``), which needs ``architecture``: the model's Keras config (``model.to_json()``
    string, or its dict), or a list of layer specs such as
    ``[{"class_name": "LSTM", "config": {"units": 8}}, ("Dense", {"units": 2})]`` (missing
    keys take Keras's defaults).  ``architecture`` also overrides the config stored in a file.

    ``hard_sigmoid``: ``"keras2"`` (``0.2 x + 0.5``) or ``"keras3"`` (``x / 6 + 0.5``);
    by default taken from the file's Keras version; a file that records none is taken as
    Keras 3 when Keras 3 wrote its weights (``layers/.../vars`` groups with a ``name``
    attribute, as Keras 3 writes them), else as Keras 2.

    ``dtype``: the dtype of the loaded model's weights and outputs.  By default
    (``None``) float64 when every layer of the Keras config has dtype (policy) float64,
    else float32 (with a warning when only some are); the ``Input`` layers do not count.
    Keras converts each input of the model to its ``Input``'s dtype before the layers
    run: float64 layers after a float32 Input (``set_dtype_policy("float64")`` with a
    default ``keras.Input``) compute in float64 on float32-ROUNDED inputs.  fastrnn
    loads such a model as float64 and reproduces the rounding with an
    :class:`~fastrnn.model.InputCast` layer right after each float Input whose dtype
    (float16, float32 or float64) is not the model's (a float64 Input of a float32
    model: cast down, as Keras's float32 layers do; a Sequential config without an
    InputLayer: tf.keras 2's Input, of its first layer's dtype).  An integer Input (an
    Embedding's ids) gets none; a bfloat16 Input none either, and counts as a layer.
    The casts follow the dtype Keras's layers compute in, not ``dtype=``: a float32
    model run in float64 takes its inputs as given.

    Functional models may branch and merge (a graph of layers: the merge layers
    Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum, Dot (with Softmax
    or Activation("softmax"): Luong attention built from layers), a layer feeding
    several, several outputs), with an RNN started from an earlier RNN's returned states
    (``initial_state=[h, c]``, encoder-decoder style).  They may take several inputs (a
    list of them, or a dict: the model takes a list in Keras's order of
    ``model.inputs``, sorted keys for a dict, or a dict by name: ``input_names``), and
    call a layer more than once (a shared layer: one fastrnn layer object at each of
    its places, its weights held once).  Dict outputs come back as a list in sorted key
    order (Keras's own ``model.outputs`` order).  Call arguments fastrnn cannot honour
    (a ``mask=`` other than the one the Embedding / Masking layers give,
    ``training=True``, other tensors) are refused, never ignored.

    Any malformed, truncated or unsupported file raises :class:`fastrnn.io.LoadError`;
    a bad ``dtype``, ``num_threads`` or ``hard_sigmoid`` is the caller's ``TypeError`` /
    ``ValueError`` (as the layers raise it), before the file is read.
    """
    _check_args(hard_sigmoid, dtype, num_threads)
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else \
        str(getattr(path, "name", "<file>"))
    ctx = _Ctx(name)
    try:
        return _load(path, name, architecture, hard_sigmoid, dtype, num_threads, ctx)
    except LoadError as e:
        if name in str(e):
            raise
        raise type(e)(f"{name}: {e}") from e       # every message names the file
    except RecursionError:
        raise LoadError(f"{name}: Keras config nests too deeply{ctx.where()}") from None
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, OverflowError,
            UnicodeError, zipfile.BadZipFile, EOFError) as e:
        raise LoadError(f"{name}: malformed Keras config or weights{ctx.where()}: "
                        f"{type(e).__name__}: {e}"[:600]) from e


class _Ctx:
    """Where the loader is (file, layer, key): named by errors the checks did not foresee."""

    def __init__(self, fname):
        self.fname = fname
        self.layer = None

    def where(self):
        return f" (layer {self.layer})" if self.layer else ""


def _load(path, name, architecture, hard_sigmoid, dtype, num_threads, ctx):
    from . import hdf5
    try:
        if hasattr(path, "read"):
            pos = path.tell()
            head = path.read(8)
            path.seek(pos)
        else:
            from . import open_file
            with open_file(path) as f:
                head = f.read(8)
    except OSError as e:
        raise LoadError(f"cannot read {name}: {e}") from e
    user = None if architecture is None else _parse_architecture(architecture, "architecture")
    if head[:2] == b"PK":
        config, version, data = _open_keras_zip(path, name)
        with hdf5.File(data, name=f"{name}[model.weights.h5]") as h5file:
            store = _Keras3Store(h5file, name)
            return _build(config if user is None else user, store, version, hard_sigmoid,
                          dtype, num_threads, name, ctx)
    if head != _H5_MAGIC:
        raise LoadError(f"{name}: not a Keras file (neither a .keras zip nor HDF5)")
    with hdf5.File(path, name=name) as f:
        attrs = f.attrs
        version = _attr_str(attrs.get("keras_version"), name, "keras_version")
        if "model_config" in attrs:
            config = _parse_architecture(_attr_str(attrs["model_config"], name, "model_config"),
                                         f"{name}: model_config")
            group = f["model_weights"] if "model_weights" in f else f
            store = _LegacyStore(_group(group, name, "model_weights"), name)
        elif "layer_names" in attrs or "layer_names0" in attrs:
            config, store = None, _LegacyStore(f, name)
        elif "layers" in f or _K212_ROOT in f:
            config, store = None, _Keras3Store(f, name)
        else:
            raise LoadError(f"{name}: HDF5 file holds no Keras model or weights "
                            "(no model_config, layer_names or layers group)")
        if version is None and "model_weights" in f:
            mw = _group(f["model_weights"], name, "model_weights")
            version = _attr_str(mw.attrs.get("keras_version"), name, "keras_version")
        if user is not None:
            config = user
        if config is None:
            raise LoadError(f"{name} holds weights only: pass architecture= (the model's "
                            "Keras config, e.g. model.to_json(), or a list of layer specs)")
        return _build(config, store, version, hard_sigmoid, dtype, num_threads, name, ctx)


def model_from_keras_config(architecture, weights, *, keras_version="3", hard_sigmoid=None,
                            dtype=None, num_threads=None):
    """Build a model from a Keras config and weights given as ``{layer_name: [arrays]}``
    (each layer's arrays in Keras's own order, as ``layer.get_weights()`` returns them)."""
    _check_args(hard_sigmoid, dtype, num_threads)
    if not isinstance(weights, Mapping):
        raise TypeError("weights must be a mapping of layer name to a list of arrays, got "
                        f"{type(weights).__name__}")
    return _build(_parse_architecture(architecture, "architecture"), _DictStore(weights),
                  keras_version, hard_sigmoid, dtype, num_threads, "<weights>", _Ctx("<weights>"))


def _check_args(hard_sigmoid, dtype, num_threads):
    """The caller's own arguments, checked before any file is read: a bad one is the
    caller's TypeError / ValueError, as the layers raise it (a dtype or num_threads the
    layers refused was reported as a LoadError, "malformed Keras config or weights")."""
    if hard_sigmoid is not None and hard_sigmoid not in ("keras2", "keras3"):
        raise ValueError(f"hard_sigmoid must be 'keras2' or 'keras3', got {hard_sigmoid!r}")
    from . import _check_args as check
    check(dtype, num_threads)


def _json(raw, what):
    try:
        return json.loads(raw)
    except RecursionError:
        raise LoadError(f"{what} nests too deeply") from None
    except (ValueError, UnicodeError) as e:
        raise LoadError(f"{what} is not valid JSON: {e}") from e


def _open_keras_zip(path, name):
    """-> (parsed architecture, Keras version or None, bytes of model.weights.h5)."""
    try:
        z = zipfile.ZipFile(path)
        with z:
            infos = {i.filename: i for i in z.infolist()}
            missing = {"config.json", "model.weights.h5"} - set(infos)
            if missing:
                raise LoadError(f"{name}: not a complete .keras file, missing {sorted(missing)}")

            # only config.json, metadata.json and model.weights.h5 are ever read (the h5 is
            # parsed from these bytes, the zip is not opened again): three members, each at
            # most 200 times its compressed bytes + 16 MiB, so together at most 200 times
            # the archive + 48 MiB however many members it has
            def member(n, limit):
                info = infos[n]
                if info.file_size > limit or (info.compress_type != zipfile.ZIP_STORED and
                                              info.file_size > 200 * info.compress_size + (16 << 20)):
                    raise LoadError(f"{name}: member {n} declares {info.file_size} bytes "
                                    "(too large or a decompression bomb)")
                return z.read(n)

            config = _json(member("config.json", _MAX_JSON), f"{name}: config.json")
            meta = (_json(member("metadata.json", _MAX_JSON), f"{name}: metadata.json")
                    if "metadata.json" in infos else {})
            data = member("model.weights.h5", _MAX_H5)
    except LoadError:
        raise
    except Exception as e:  # BadZipFile, zlib.error, OSError, EOFError, NotImplementedError...
        raise LoadError(f"{name}: corrupt or truncated .keras zip: {type(e).__name__}: {e}"
                        [:600]) from e
    if not isinstance(meta, dict):
        raise LoadError(f"{name}: metadata.json must hold a JSON object")
    version = meta.get("keras_version")
    if version is not None and not isinstance(version, (str, int, float)):
        raise LoadError(f"{name}: metadata.json: keras_version must be a string")
    if data[:8] != _H5_MAGIC:
        raise LoadError(f"{name}: model.weights.h5 inside the zip is not an HDF5 file")
    return _parse_architecture(config, f"{name}: config.json"), \
        (None if version is None else str(version)), data


def _attr_str(v, fname="<file>", key="attribute"):
    """An HDF5 string attribute (str, bytes, or a one-element array of them) -> str."""
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "SUO":
        v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise LoadError(f"{fname}: attribute {key!r} is not UTF-8 text") from e
    if isinstance(v, str):
        return v
    raise LoadError(f"{fname}: attribute {key!r} must be a string, got {type(v).__name__}")


def _attr_names(attrs, key, fname):
    """A list-of-strings attribute (Keras's layer_names / weight_names), also when Keras
    split it into ``key0``, ``key1``, ... because it was too large for one attribute."""
    if key in attrs:
        parts = [attrs[key]]
    else:
        parts = []
        for i in range(1 << 16):
            if f"{key}{i}" not in attrs:
                break
            parts.append(attrs[f"{key}{i}"])
        if not parts:
            return []
    out = []
    for v in parts:
        if isinstance(v, hdf5.Empty):
            continue
        if isinstance(v, (str, bytes, np.bytes_)):
            v = [v]
        elif isinstance(v, np.ndarray):
            if v.size and v.dtype.kind not in "SUO":
                raise LoadError(f"{fname}: attribute {key!r} must hold strings, "
                                f"got {v.dtype} values")
            v = list(v.reshape(-1))
        else:
            raise LoadError(f"{fname}: attribute {key!r} must hold strings, "
                            f"got {type(v).__name__}")
        out += [_attr_str(n, fname, key) for n in v]
    return out


def _group(obj, fname, what):
    if not isinstance(obj, hdf5.Group):
        raise LoadError(f"{fname}: {what} must be an HDF5 group, found a dataset")
    return obj


# ============================================================================ architecture

_MAX_LAYERS = 100_000
_MAX_NEST = 32


def _need_dict(v, what):
    if not isinstance(v, dict):
        raise LoadError(f"{what} must be a JSON object, got {type(v).__name__}")
    return v


def _need_list(v, what):
    if not isinstance(v, (list, tuple)):
        raise LoadError(f"{what} must be a JSON list, got {type(v).__name__}")
    if len(v) > _MAX_LAYERS:
        raise LoadError(f"{what} has {len(v)} entries, more than fastrnn accepts")
    return v


def _need_str(v, what):
    if not isinstance(v, str):
        raise LoadError(f"{what} must be a string, got {type(v).__name__}")
    return v


class _LayerDesc:
    """One layer of the model: Keras class name, its config, its name."""

    def __init__(self, class_name, config, name):
        self.class_name = class_name
        self.config = config
        self.name = name
        # (functional models) [(desc index, tensor index)]: the tensors it reads, and
        # those given as initial_state; which call of the layer it is (its node index);
        # for an InputLayer, which of the model's inputs it is
        self.inputs = None
        self.states = None
        self.node = 0
        self.input_index = None
        self.order = 0          # the layer's place in the config (its weights' order)
        self.nested = None      # an inlined nested model's layer: where its weights are
        self.outer = None       # a TimeDistributed's wrapped layer: the TimeDistributed
        self.unfold = False     # the unfold of a TimeDistributed of a model (_UNFOLD)
        self.is_op = False      # an operation (Keras 3's keras.ops, tf.keras 2's
        self.op = None          # TFOpLambda): its Op class, op_args, op_shapes, op_attrs

    def __repr__(self):
        return f"{self.class_name}({self.name!r})"


def _spec_to_layer(spec, i, what) -> dict:
    """Normalise a list item of a user architecture into a Keras layer config dict."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        spec = {"class_name": spec[0],
                "config": dict(_need_dict(spec[1], f"{what} item {i} config"))}
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise LoadError(f"{what} item {i} must be a Keras layer config dict with "
                        f"'class_name' (or a (class_name, config) pair), got {spec!r}"[:400])
    if "config" not in spec:  # flat form {"class_name": "LSTM", "units": 3, ...}
        spec = {"class_name": spec["class_name"],
                "config": {k: v for k, v in spec.items() if k != "class_name"}}
    return spec


def _version_hint(arch):
    """Keras version a model config was written by: its own 'keras_version' (Keras 2's
    to_json), else 3 for Keras 3's serialisation (module / build_config keys), else None."""
    if not isinstance(arch, dict):
        return None
    v = arch.get("keras_version")
    if v:
        if not isinstance(v, (str, int, float)):
            raise LoadError(f"keras_version must be a string, got {type(v).__name__}")
        return str(v)
    if "module" in arch or "build_config" in arch:
        return "3"
    return None


def _parse_architecture(arch, what="architecture"):
    """-> (list of _LayerDesc in execution order, outputs [(index, tensor)] or None,
    the inputs' names or None, (Keras version hint or None, model name or None))."""
    if isinstance(arch, (str, bytes)):
        arch = _json(arch, what)
    if isinstance(arch, (list, tuple)):
        _need_list(arch, what)
        layers = [_spec_to_layer(s, i, what) for i, s in enumerate(arch)]
        if _has_models(layers):
            return (*_functional(_Inliner(what).run(_seq_as_functional(layers, what)),
                                 what), (None, None))
        return _sequential(layers, what), None, None, (None, None)
    if not isinstance(arch, dict):
        raise LoadError(f"{what} must be a Keras config (JSON or dict) or a list of "
                        f"layer specs, got {type(arch).__name__}")
    cls = arch.get("class_name")
    cfg = arch.get("config", {})
    hint = _version_hint(arch)
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if name is not None and not isinstance(name, str):
        name = None
    if cls == "Sequential":
        if isinstance(cfg, dict):
            layers = cfg.get("layers", [])
        else:
            layers = cfg
        layers = _need_list(layers, f"{what}: layers")
        if _has_models(layers):     # (a model among its layers: inlined, as a graph)
            return (*_functional(_Inliner(what).run(_seq_as_functional(layers, what)),
                                 what), (hint, name))
        return (_sequential(layers, what), None, None, (hint, name))
    if cls in ("Functional", "Model"):
        cfg = _need_dict(cfg, f"{what}: config")
        if _has_models(cfg.get("layers")):
            cfg = _Inliner(what).run(cfg)
        return (*_functional(cfg, what), (hint, name))
    raise LoadError(f"{what}: unsupported model class {cls!r}: fastrnn reads Sequential "
                    "and functional models"[:400])


def _layer_name(l, i):
    n = l.get("name")
    if n is None:
        c = l.get("config")
        n = c.get("name") if isinstance(c, dict) else None
    if n is None:
        return f"layer_{i}"
    if not isinstance(n, str) or not n:
        raise LoadError(f"layer {i}: name must be a non-empty string, got {n!r}"[:200])
    return n


def _desc(l, i, what):
    l = _need_dict(l, f"{what}: layer {i}")
    cls = _need_str(l.get("class_name"), f"{what}: layer {i} class_name")
    name = _layer_name(l, i)
    cfg = l.get("config", {})
    cfg = {} if cfg is None else _need_dict(cfg, f"{what}: layer {name!r} config")
    d = _LayerDesc(cls, dict(cfg), name)
    d.order = i
    d.nested = l.get(_NESTED)
    d.unfold = _UNFOLD in l
    d.op = _tf_op(l) or (cls if _is_op(l) else None)
    d.is_op = d.op is not None
    return d


def _sequential(layers, what="architecture"):
    return [_desc(l, i, what) for i, l in enumerate(layers)]


def _int_of(v, what):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    raise LoadError(f"{what} must be an integer, got {v!r}"[:200])


def _history(t):
    """Keras tensor reference -> (layer name, node index, tensor index) or None (not a
    tensor: a constant among the arguments, tf.keras 2's ``["_CONSTANT_VALUE", -1, v]``
    too)."""
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__":
        c = _need_dict(t.get("config"), "keras tensor config")
        h = _need_list(c.get("keras_history"), "keras_history")
        if len(h) < 3:
            raise LoadError(f"keras_history must have 3 entries, got {len(h)}")
        r = (_need_str(h[0], "keras_history layer"), _int_of(h[1], "keras_history node"),
             _int_of(h[2], "keras_history tensor"))
    elif isinstance(t, (list, tuple)) and len(t) >= 3 and isinstance(t[0], str) and \
            t[0] != _K2_CONSTANT:
        r = t[0], _int_of(t[1], "node index"), _int_of(t[2], "tensor index")
    else:
        return None
    if r[1] < 0 or r[2] < 0:
        raise LoadError(f"the reference to layer {r[0]!r} reads call {r[1]}, tensor {r[2]}: "
                        "indexes must be >= 0"[:300])
    return r


def _is_op(l):
    """Whether a functional config's entry is a Keras 3 operation (a ``keras.ops`` call
    Keras records in the graph: the not_equal / any of a mask, an ``ops.add`` of the
    user's), not a layer.  Some share a merge layer's class name (``ops.add`` is an
    "Add", ``ops.concatenate`` a "Concatenate"): a .keras config tells them apart by
    module (``keras.src.ops.numpy``; a layer's is ``keras.layers``), while Keras 3's
    legacy h5 writer records no module: an op's config then lacks the ``trainable`` /
    ``dtype`` keys every layer's has, in a Keras 3 node (args / kwargs).  A mask op's
    own name (NotEqual, Any, ...) is an op's in any form.  (tf.keras 2 records its ops
    as TFOpLambda layers, refused as unsupported.)"""
    m = l.get("module")
    if m is not None:
        return isinstance(m, str) and any(m == p or m.startswith(p + ".") for p in _OP_MODULES)
    cls, c, nodes = l.get("class_name"), l.get("config"), l.get("inbound_nodes")
    if cls in _MASK_OPS and cls not in _SUPPORTED:
        return True
    return (isinstance(c, dict) and "trainable" not in c and "dtype" not in c and
            isinstance(nodes, list) and any(isinstance(n, dict) for n in nodes))


class _Call:
    """A functional layer's single call: its data inputs (tensor references), the
    tensors given as ``initial_state`` (or None) and its ``mask`` argument: ``_NO_MASK``
    when the call does not record one, else None or the mask tensor's reference."""

    def __init__(self):
        self.data = []
        self.states = None
        self.mask = _NO_MASK
        self.keras3 = False         # a Keras 3 node (args / kwargs)
        self.options = {}           # an attention layer's return_attention_scores, ...
        self.named = {}             # MultiHeadAttention's query= / value= / key= tensors
        self.masks_kw = {}          # its query_mask= / value_mask= / key_mask= (ref / None)


_NO_MASK = object()
# call arguments that change nothing at inference: training=False/None only
_RNN_LIKE = _RECURRENT + ("Bidirectional",)


def _tensor_refs(v, what, depth=0):
    """References of a tensor argument (one tensor or a list of them)."""
    r = _history(v)
    if r is not None:
        return [r]
    if isinstance(v, (list, tuple)) and depth < 2:
        return [x for item in v for x in _tensor_refs(item, what, depth + 1)]
    raise LoadError(f"{what} must be a tensor or a list of tensors, got {v!r}"[:300])


def _show(v):
    """A short text for a call argument in an error message."""
    r = _history(v)
    if r is not None:
        return f"<output {r[2]} of {r[0]!r}>"
    if isinstance(v, (list, tuple)) and v and all(_history(x) for x in v):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, dict) and v.get("class_name") in ("__numpy__", "__tensor__"):
        c = v.get("config") if isinstance(v.get("config"), dict) else {}
        shape, x = [], c.get("value")
        while isinstance(x, list) and len(shape) < 8:
            shape.append(len(x))
            x = x[0] if x else None
        return f"a constant array ({v['class_name']}) of shape {tuple(shape)}"
    if isinstance(v, (list, tuple)) and v and v[0] == _K2_CONSTANT:
        return f"a constant ({_K2_CONSTANT}) {repr(v[2] if len(v) > 2 else None)[:40]}"
    return repr(v)[:80]


def _call_kwargs(call, kw, name, cls):
    """Check a call's keyword arguments (Keras 3 node kwargs / Keras 2 inbound kwargs):
    every one that can change the result is either understood (initial_state, mask) or
    refused, never dropped."""
    kw = _need_dict(kw, f"layer {name!r} call arguments")
    for k, v in kw.items():
        if k == "training":
            if v is None or v is False or v == 0:
                continue
            raise LoadError(f"layer {name!r} ({cls}) is called with training={v!r}: not "
                            "supported (fastrnn runs inference; training-mode dropout / "
                            "noise cannot be reproduced)"[:400])
        if cls in _ATTENTION_LAYERS and k in _ATTENTION_OPTIONS:
            if v is None or isinstance(v, bool):
                call.options[k] = bool(v)
                continue
            raise LoadError(f"layer {name!r} ({cls}) is called with {k}={_show(v)}: not "
                            "supported (True or False expected)"[:400])
        if cls == "MultiHeadAttention" and k in _MHA_ARGS:
            if v is not None:
                call.named[k] = _tensor_refs(v, f"layer {name!r} {k} argument")
                if len(call.named[k]) != 1:
                    raise LoadError(f"layer {name!r} ({cls}): {k}= must be one tensor")
            continue
        if cls == "MultiHeadAttention" and k in ("query_mask", "value_mask", "key_mask"):
            r = None if v is None else _tensor_refs(v, f"layer {name!r} {k} argument")
            if r is not None and len(r) != 1:
                raise LoadError(f"layer {name!r} ({cls}): {k}= must be one tensor")
            call.masks_kw[k] = None if r is None else r[0]
            continue
        if cls == "MultiHeadAttention" and k == "attention_mask" and v is not None:
            raise LoadError(f"layer {name!r} ({cls}) is called with attention_mask="
                            f"{_show(v)}: not supported (fastrnn computes the attention mask "
                            "from the inputs' masks and use_causal_mask only, as Keras does "
                            "without it)"[:400])
        if k == "mask" and cls in ("Attention", "AdditiveAttention") and \
                isinstance(v, (list, tuple)) and _history(v) is None:
            call.mask = [None if m is None else
                         _tensor_refs(m, f"layer {name!r} mask argument")[0] for m in v]
            if len(call.mask) not in (2, 3) or any(
                    m is not None and len(_tensor_refs(m, "mask")) != 1 for m in v):
                raise LoadError(f"layer {name!r} ({cls}) is called with mask={_show(v)}: "
                                "not supported (a list [query_mask, value_mask(, key_mask)] "
                                "expected)"[:400])
            continue
        if k == "mask":
            if v is None:
                call.mask = None
                continue
            if cls in _ATTENTION_LAYERS:
                raise LoadError(f"layer {name!r} ({cls}) is called with mask={_show(v)}: not "
                                "supported (a list [query_mask, value_mask] expected)"[:400])
            refs = _tensor_refs(v, f"layer {name!r} mask argument")
            if len(refs) != 1:
                raise LoadError(f"layer {name!r} ({cls}) is called with mask={_show(v)}: "
                                "not supported (one mask tensor expected)"[:400])
            call.mask = refs[0]
            continue
        if k == "initial_state" and v is not None:
            if cls not in _RNN_LIKE:
                raise LoadError(f"layer {name!r} ({cls}) is called with "
                                f"initial_state={_show(v)}: not supported"[:400])
            refs = _tensor_refs(v, f"layer {name!r} initial_state")
            if call.states is not None and call.states != refs:
                raise LoadError(f"layer {name!r} ({cls}) is given two different initial "
                                "states")
            call.states = refs
            continue
        if v is None:               # (an optional argument left at its default)
            continue
        raise LoadError(f"layer {name!r} ({cls}) is called with {k}={_show(v)}: not "
                        "supported (fastrnn would ignore it and compute something else)"[:400])


def _op_arg(a, call, name, cls, depth=0):
    """An operation's argument in Op's form (a tensor {"input": k}, its reference
    and recorded shape added to ``call``; a list of them; a number; None; GetItem's key
    items: slices and Ellipsis), or LoadError."""
    r = _history(a)
    if r is not None:
        call.data.append(r)
        shape = a["config"].get("shape") if isinstance(a, dict) else None
        call.op_shapes.append(shape if isinstance(shape, list) else None)
        return {"input": len(call.data) - 1}
    if not isinstance(a, bool) and depth <= 2:     # (True: no number an op takes)
        if a is None or isinstance(a, (int, float)):
            return a
        if isinstance(a, list):
            return [_op_arg(x, call, name, cls, depth + 1) for x in a]
        if isinstance(a, dict) and a.get("class_name") == "__slice__" and isinstance(
                a.get("config"), dict) and set(a["config"]) == {"start", "stop", "step"}:
            parts = [a["config"][k] for k in ("start", "stop", "step")]
            if all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                   for v in parts):
                return {"slice": parts}
        if isinstance(a, dict) and a.get("class_name") == "__ellipsis__":
            return {"ellipsis": True}
    raise LoadError(f"operation {name!r} ({cls}) is called with {_show(a)}: not supported "
                    "(fastrnn takes tensors, numbers, slices)"[:400])


def _op_call(node, name, cls):
    """The :class:`_Call` of a Keras 3 operation's node (fastrnn.model.Op runs it): its
    tensors, its arguments (``op_args``) and its tensors' recorded shapes."""
    call = _Call()
    call.keras3 = True
    call.op_args, call.op_shapes = [], []
    if not isinstance(node, dict):
        raise LoadError(f"operation {name!r} ({cls}): a Keras 3 node (args / kwargs) "
                        "expected")
    kw = node.get("kwargs") or {}
    if not isinstance(kw, dict) or any(v is not None for v in kw.values()):
        raise LoadError(f"operation {name!r} ({cls}) is called with keyword arguments "
                        f"{_show(kw)}: not supported"[:400])
    for a in _need_list(node.get("args", []), f"operation {name!r} arguments"):
        call.op_args.append(_op_arg(a, call, name, cls))
    return call


# tf.keras 2's TensorFlow operations (TFOpLambda / SlicingOpLambda layers, by their
# "function") that fastrnn runs as fastrnn.model.Op: (the Op, the keyword of its second
# operand, None for one of one tensor); its other keyword arguments are its config
_TF_OPS = {
    **{f: ("Add", "y") for f in ("math.add", "__operators__.add", "math.add_v2")},
    **{f: ("Subtract", "y") for f in ("math.subtract", "__operators__.sub")},
    **{f: ("Multiply", "y") for f in ("math.multiply", "__operators__.mul")},
    **{f: ("TrueDivide", "y") for f in ("math.truediv", "__operators__.truediv",
                                        "math.divide")},
    "math.maximum": ("Maximum", "y"), "math.minimum": ("Minimum", "y"),
    "math.pow": ("Power", "y"), "linalg.matmul": ("Matmul", "b"),
    **{f: (op, None) for f, op in (
        ("math.tanh", "Tanh"), ("nn.tanh", "Tanh"), ("math.sigmoid", "Sigmoid"),
        ("nn.sigmoid", "Sigmoid"), ("nn.relu", "Relu"), ("math.exp", "Exp"),
        ("math.log", "Log"), ("math.sqrt", "Sqrt"), ("math.square", "Square"),
        ("math.abs", "Abs"), ("math.negative", "Negative"), ("math.reduce_mean", "Mean"),
        ("math.reduce_sum", "Sum"), ("math.reduce_max", "Max"), ("math.reduce_min", "Min"),
        ("nn.softmax", "Softmax"), ("nn.log_softmax", "LogSoftmax"), ("concat", "Concatenate"),
        ("stack", "Stack"), ("expand_dims", "ExpandDims"), ("squeeze", "Squeeze"),
        ("compat.v1.squeeze", "Squeeze"), ("transpose", "Transpose"),
        ("compat.v1.transpose", "Transpose"), ("__operators__.getitem", "GetItem"),
        ("reshape", "Reshape"), ("clip_by_value", "Clip"), ("cast", "Cast"))}}
# tf.keras 2's keyword arguments by Op's attribute names
_TF_ATTRS = {"perm": "axes", "shape": "newshape", "clip_value_min": "x_min",
             "clip_value_max": "x_max"}
# keyword arguments of those that change nothing at these values (and name=, any)
_TF_NEUTRAL = {"conjugate": False, "transpose_a": False, "transpose_b": False,
               "adjoint_a": False, "adjoint_b": False, "a_is_sparse": False,
               "b_is_sparse": False, "output_type": None}
_TF_OP_CLASSES = ("TFOpLambda", "SlicingOpLambda")


def _tf_op(l):
    """The Op class name of tf.keras 2 operation layer ``l``, or None."""
    c = l.get("config") if isinstance(l.get("config"), dict) else {}
    f = c.get("function")
    if l.get("class_name") not in _TF_OP_CLASSES or not isinstance(f, str):
        return None
    return _TF_OPS.get(f.removeprefix("tf."), (None,))[0]


def _tf_op_call(node, name, l):
    """The :class:`_Call` of a tf.keras 2 operation's node (``[tensor, node, index,
    kwargs]``, or a list of such entries, tensors or ``["_CONSTANT_VALUE", -1, value]``:
    the first argument's items) in Op's form (as :func:`_op_call`; no shapes
    recorded)."""
    cls = str(l["config"]["function"])
    op, second = _TF_OPS[cls.removeprefix("tf.")]
    call = _Call()
    call.op_args, call.op_shapes, call.op_attrs = [], [], {}
    entries = _need_list(node, f"operation {name!r} inbound node")
    if entries and isinstance(entries[0], str):
        entries = [entries]     # (one argument: the node is its entry)
    kw = {}
    firsts = []
    for t in entries:
        if not isinstance(t, (list, tuple)) or len(t) < 3:
            raise LoadError(f"operation {name!r} ({cls}) is called with {_show(t)}: not "
                            "supported"[:400])
        firsts.append(_op_arg(list(t[:3]) if t[0] != _K2_CONSTANT else t[2], call, name, cls))
        if len(t) > 3 and isinstance(t[3], dict):
            if kw and t[3] != kw:
                raise LoadError(f"operation {name!r} ({cls}): its entries give different "
                                "keyword arguments")
            kw = dict(t[3])
    if op in ("Concatenate", "Stack"):
        call.op_args.append(firsts)
    elif len(firsts) != 1:
        raise LoadError(f"operation {name!r} ({cls}) is called on {len(firsts)} tensors")
    else:
        call.op_args.append(firsts[0])
    if second:
        if second not in kw:
            raise LoadError(f"operation {name!r} ({cls}) has no {second}= argument")
        v = kw.pop(second)
        call.op_args.append(_op_arg(list(v) if _history(v) else v, call, name, cls))
    if op == "GetItem":
        call.op_args.append(_op_arg(_k2_slices(kw.pop("slice_spec", None)), call, name, cls))
    for k, v in kw.items():
        k = _TF_ATTRS.get(k, k)
        if k in ("axis", "keepdims", "axes", "newshape", "x_min", "x_max", "dtype"):
            call.op_attrs[k] = v
        elif k != "name" and (k not in _TF_NEUTRAL or v != _TF_NEUTRAL[k]):
            raise LoadError(f"operation {name!r} ({cls}) is called with {k}={_show(v)}: not "
                            "supported"[:400])
    return call


def _k2_slices(spec):
    """tf.keras 2's slice_spec in Keras 3's form (``__slice__`` dicts)."""
    def one(v):
        if isinstance(v, dict) and set(v) == {"start", "stop", "step"}:
            return {"class_name": "__slice__", "config": v}
        return v
    return [one(v) for v in spec] if isinstance(spec, list) else one(spec)


def _runs_op(l):
    """Whether fastrnn runs Keras 3 operation ``l`` on the data path (fastrnn.model.Op)."""
    from .._model_ops import OPS
    nodes = l.get("inbound_nodes")
    return l.get("class_name") in OPS and isinstance(nodes, list) and \
        all(isinstance(n, dict) for n in nodes)


def _inbound(l, name):
    """The :class:`_Call` of each call of a functional layer (its ``inbound_nodes``, in
    order: a tensor reference's node index picks one; an InputLayer lists none, and is
    referred to as node 0)."""
    nodes = l.get("inbound_nodes", [])
    if nodes is None:
        return []
    nodes = _need_list(nodes, f"layer {name!r} inbound_nodes")
    if _is_op(l):
        return [_op_call(node, name, l.get("class_name")) for node in nodes]
    if _tf_op(l):
        return [_tf_op_call(node, name, l) for node in nodes]
    return [_node_call(node, name, l.get("class_name")) for node in nodes]


def _node_call(node, name, cls):
    """The :class:`_Call` of one node of layer ``name``: Keras 3's form
    ``{"args": [...], "kwargs": {...}}``, or Keras 2's ``[[layer, node, tensor, kwargs],
    ...]``."""
    call = _Call()
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        call.keras3 = True
        for i, a in enumerate(_need_list(node.get("args", []), f"layer {name!r} inbound args")):
            if isinstance(a, list) and a and _history(a) is None:
                for x in a:         # (a merge layer's list: of tensors only)
                    r = _history(x)
                    if r is None:
                        raise LoadError(_constant_input(name, cls, x))
                    call.data.append(r)
            else:
                r = _history(a)
                if r:
                    call.data.append(r)
                elif i > 0 and a is not None:
                    raise LoadError(f"layer {name!r} ({cls}) is called with an extra "
                                    f"argument {_show(a)}: not supported"[:300])
        _call_kwargs(call, node.get("kwargs") or {}, name, cls)
        _attention_inputs(call, name, cls)
        return call
    # Keras 2: [[name, node, tensor, kwargs], ...]: an RNN called with initial_state has
    # the states as further entries (tf.keras adds them to the layer's inputs); the call's
    # keyword arguments are repeated on each entry (a MultiHeadAttention's value= / key=
    # among them: its entry is the query)
    node = _need_list(node, f"layer {name!r} inbound node")
    for t in node:
        r = _history(t)
        if r is None:
            if isinstance(t, (list, tuple)) and t and t[0] == _K2_CONSTANT:
                raise LoadError(_constant_input(name, cls, t))
            continue
        call.data.append(r)
        if len(t) > 3 and t[3]:
            _call_kwargs(call, t[3], name, cls)
    if cls in _RNN_LIKE and len(call.data) > 1:
        if call.states is not None:
            raise LoadError(f"layer {name!r} ({cls}) is given two different initial states")
        call.data, call.states = call.data[:1], call.data[1:]
    _attention_inputs(call, name, cls)
    return call


def _attention_inputs(call, name, cls):
    """An attention layer's call: its data inputs as [query, value(, key)] (a
    MultiHeadAttention's from its positional and keyword tensors)."""
    if cls == "MultiHeadAttention":
        given = dict(zip(_MHA_ARGS, ([r] for r in call.data)))
        if len(call.data) > 3 or set(given) & set(call.named):
            raise LoadError(f"layer {name!r} ({cls}) is given its query / value / key "
                            "twice or too many tensors")
        given.update(call.named)
        if "query" not in given or "value" not in given:
            raise LoadError(f"layer {name!r} ({cls}) is called without a query and a "
                            "value tensor")
        call.data = [given[k][0] for k in _MHA_ARGS if k in given]
    elif cls in _ATTENTION_LAYERS and not 2 <= len(call.data) <= 3:
        raise LoadError(f"layer {name!r} ({cls}) is called on {len(call.data)} tensors; "
                        "it takes [query, value] or [query, value, key]")


def _constant_input(name, cls, v):
    return (f"layer {name!r} ({cls}) is called with {_show(v)} among its inputs: not "
            "supported (fastrnn merges tensors of the model only, and would drop it where "
            "Keras computes with it)")[:400]


def _refs(v, depth=0):
    """Tensor references of model inputs / outputs: a tensor, a list of them, or a dict
    (Keras 3 ``keras.Model({"a": x}, {"y": out, ...})``): its values in sorted key order,
    the order Keras itself flattens a dict in (``model.outputs``)."""
    if v is None:
        return []
    if depth > _MAX_NEST:
        raise LoadError("model inputs/outputs nest too deeply")
    r = _history(v)
    if r is not None:
        return [r]
    if isinstance(v, dict) and v.get("class_name") != "__keras_tensor__":
        if not all(isinstance(k, str) for k in v):
            raise LoadError("model inputs/outputs: dict keys must be strings")
        return [x for k in sorted(v) for x in _refs(v[k], depth + 1)]
    if not isinstance(v, (list, tuple)):
        raise LoadError(f"model inputs/outputs: unexpected entry {v!r} (expected a Keras "
                        "tensor reference, or a list or dict of them)"[:300])
    return [x for item in v for x in _refs(item, depth + 1)]


def _input_names(v, refs):
    """The names a model's inputs go by: a dict's keys (in Keras's order of
    ``model.inputs``: sorted, as it flattens a dict), else the InputLayers' names."""
    if isinstance(v, dict) and v.get("class_name") != "__keras_tensor__" and \
            len(v) == len(refs):
        return sorted(v)
    return [r[0] for r in refs]


def _functional(cfg, what="architecture"):
    """-> (descs, one a call of a layer (a node), in an order they can run in, with
    ``inputs`` and ``states`` references ``(desc index, tensor index)`` and, for the
    model's inputs, ``input_index``; outputs ``[(desc index, tensor index)]``; the
    inputs' names): the calls the outputs are computed from, from the model's inputs
    (InputLayers, in Keras's order of ``model.inputs``).  A reference's node index picks
    a layer's call: its place in the layer's ``inbound_nodes`` (Keras 3 and Keras 2
    configs alike list only the model's own calls, and number them so)."""
    layers = _need_list(cfg.get("layers", []), f"{what}: layers")
    by_name, config_order = {}, {}
    for i, l in enumerate(layers):
        l = _need_dict(l, f"{what}: layer {i}")
        _need_str(l.get("class_name"), f"{what}: layer {i} class_name")
        name = _layer_name(l, i)
        by_name[name] = l
        config_order.setdefault(name, i)
    outputs = _refs(cfg.get("output_layers"))
    inputs = _refs(cfg.get("input_layers"))
    if not inputs:
        raise LoadError("functional model config has no input_layers")
    if not outputs:
        raise LoadError("functional model config has no output_layers")
    if len(outputs) > 1024 or len(inputs) > 1024:
        raise LoadError(f"functional model config has {len(inputs)} inputs and "
                        f"{len(outputs)} outputs")
    input_of = {}           # (layer name, node index) of a model input -> its number
    for k, (n, node, t) in enumerate(inputs):
        if n not in by_name:
            raise LoadError(f"functional config refers to unknown layer {n!r}"[:300])
        cls = by_name[n].get("class_name")
        if cls != "InputLayer" or node != 0 or t != 0:
            raise LoadError(f"model input {k} is <output {t} of {n!r}> ({cls}); fastrnn "
                            "takes a model's inputs from its InputLayers"[:300])
        if (n, 0) in input_of:
            raise LoadError(f"model input {n!r} is given twice")
        input_of[(n, 0)] = k
    layer_calls, calls = {}, {}     # layer name -> its calls; (name, node) -> that call

    def call_of(key, reader):
        n, node = key
        if key not in calls:
            l = by_name.get(n)
            if l is None:
                raise LoadError(f"functional config refers to unknown layer {n!r}"[:300])
            if _is_model(l):     # (inlined before: a config that is not a model's)
                raise LoadError(f"layer {n!r} is a model ({l['class_name']}) used as a "
                                "layer, with no model config of its own"[:300])
            if _is_op(l) and not _runs_op(l):
                cls = str(l.get("class_name"))
                raise LoadError(
                    f"{n!r} is a Keras operation, not a layer ({cls}: keras.ops."
                    f"{_snake(cls)} or an operator such as +, module "
                    f"{l.get('module') or 'not recorded'}), on the way to the model's "
                    f"outputs: not supported; {_USE_LAYERS}"[:500])
            if l.get("class_name") in _TF_OP_CLASSES and not _tf_op(l):
                c = l.get("config") if isinstance(l.get("config"), dict) else {}
                raise LoadError(
                    f"{n!r} is a TensorFlow operation tf.keras 2 recorded as a "
                    f"{l['class_name']} layer ({str(c.get('function', 'an operator'))[:60]}), "
                    f"on the way to the model's outputs: not supported; {_USE_LAYERS}"[:500])
            if n not in layer_calls:
                layer_calls[n] = _inbound(l, n) or [_Call()]   # (an InputLayer: node 0)
            if not 0 <= node < len(layer_calls[n]):
                raise LoadError(f"{reader} reads call {node} (counting from 0) of layer "
                                f"{n!r}, which is called {len(layer_calls[n])} time(s)"[:300])
            calls[key] = layer_calls[n][node]
        return calls[key]

    def sources(key):
        call = calls[key]
        return call.data + (call.states or [])

    # walk back from the outputs through the calls' data inputs and initial states
    # (iteratively: graphs can be deep), in post-order: a call after those it reads
    done, post = set(), []
    for out in outputs:
        stack = [((out[0], out[1]), None, "the model's outputs")]
        on_path = set()
        while stack:
            key, deps, reader = stack.pop()
            if deps is None:
                if key in done:
                    continue
                if key in on_path:
                    raise LoadError(f"functional config has a cycle through layer "
                                    f"{key[0]!r}"[:300])
                call_of(key, reader)
                on_path.add(key)
                stack.append((key, True, reader))
                stack.extend(((src, node), None, f"layer {key[0]!r}")
                             for src, node, _ in reversed(sources(key)))
            else:
                on_path.discard(key)
                done.add(key)
                post.append(key)
    for key in post:
        if not calls[key].data and key not in input_of:
            raise LoadError(f"layer {key[0]!r} ({by_name[key[0]]['class_name']}) reads no "
                            "tensor and is not one of the model's inputs")
    for i, l in enumerate(layers):
        n, cls = _layer_name(l, i), l["class_name"]
        nodes = l.get("inbound_nodes")
        count = len(nodes) if isinstance(nodes, list) else 0
        for k in range(max(count, 1)):
            if (cls in _MASK_OPS and _is_op(l)) or (n, k) in done or (n, k) in input_of:
                continue
            which = (f" is called {count} times, and its call {k} (counting from 0)"
                     if count > 1 else "")
            raise LoadError(f"layer {n!r} ({cls}){which} is not on the way from the model's "
                            "inputs to its outputs; fastrnn runs the layers the outputs are "
                            "computed from"[:400])
    # Keras lists a model's layers in an order they run in (the order its weights file
    # counts them in), a layer's calls in the order it was called: kept where it is one
    order = sorted(done, key=lambda key: (config_order[key[0]], key[1]))
    pos = {key: i for i, key in enumerate(order)}
    if any(pos[(src, node)] >= pos[key] for key in order for src, node, _ in sources(key)):
        order = post
        pos = {key: i for i, key in enumerate(order)}
    states = _graph_states(order, calls, by_name, pos)
    _check_masks(order, calls, by_name, cfg.get(_CALL_MASKS, ()))
    descs = []
    for key in order:
        n, node = key
        d = _desc(by_name[n], config_order[n], what)
        d.name, d.node = n, node
        d.inputs = [(pos[(src, nd)], t) for src, nd, t in calls[key].data]
        d.states = states.get(key)
        d.input_index = input_of.get(key)
        d.options = dict(calls[key].options)
        # (an attention layer follows the Keras its call's form was written by)
        d.keras2_call = not calls[key].keras3
        d.k2_merge_same = getattr(calls[key], "k2_merge_same", None)
        d.op_args = getattr(calls[key], "op_args", None)
        d.op_shapes = getattr(calls[key], "op_shapes", None)
        d.op_attrs = getattr(calls[key], "op_attrs", None)
        descs.append(d)
    return (descs, [(pos[(o[0], o[1])], o[2]) for o in outputs],
            _input_names(cfg.get("input_layers"), inputs))



# ============================================================================ nested models

# a model used as a layer of another (Keras 3 and tf.keras 2 record it so: its own config,
# with the outer model's inbound_nodes): inlined, its layers renamed "<model>/<layer>"
_MODEL_CLASSES = ("Functional", "Sequential", "Model")
# key of an inlined layer's config dict (no JSON key can equal it): where its weights are
# stored, a dict {"k3": path under a Keras 3 file's "layers" group, "top": the name of the
# outermost model holding it (its legacy h5 group), "local": its own name in its model,
# "tree": that outermost model's {"leaves": {name: count}, "models": set of names}}
_NESTED = object()
# key of a layer dict of a Sequential made a functional config (_seq_as_functional)
_LISTED = object()
# key of an inlined config (_Inliner.run): the masks Keras 3 records on the nested models'
# calls, [(the tensor given, the mask given for it, its input index, the call's
# description)], checked in _check_masks against the masks fastrnn computes for those
# tensors (Keras 3's Functional.call attaches each to its tensor, read as the tensor's own
# mask by the layers inside, a merge layer's among them)
_CALL_MASKS = object()


def _is_model(l):
    return isinstance(l, dict) and l.get("class_name") in _MODEL_CLASSES


def _td_model(l):
    """Whether layer dict ``l`` is a TimeDistributed wrapping a model."""
    c = l.get("config") if isinstance(l, dict) else None
    return isinstance(c, dict) and l.get("class_name") == "TimeDistributed" and \
        _is_model(c.get("layer"))


def _fold_name(l):
    """The name of the fold of TimeDistributed ``l`` of a model: "fold" (or "fold_1",
    ...: one no layer of the model has)."""
    c = l["config"]["layer"].get("config")
    layers = c.get("layers") if isinstance(c, dict) else None
    taken = {x.get("name") or (x.get("config") or {}).get("name") for x in layers
             if isinstance(x, dict)} if isinstance(layers, list) else set()
    k = 0
    while (name := "fold" if k == 0 else f"fold_{k}") in taken:
        k += 1
    return name


def _has_models(layers):
    return isinstance(layers, (list, tuple)) and any(
        _is_model(l) or _td_model(l) for l in layers)


def _returns_several(l):
    """Whether a layer config returns several tensors (an RNN's return_state, a
    Bidirectional's merge_mode=None pair): a Sequential passes them all on."""
    c = l.get("config") if isinstance(l.get("config"), dict) else {}
    inner = c.get("layer") if isinstance(c.get("layer"), dict) else {}
    ic = inner.get("config") if isinstance(inner.get("config"), dict) else {}
    if l.get("class_name") == "Bidirectional":
        return bool(ic.get("return_state")) or ("merge_mode" in c and c["merge_mode"] is None)
    if _is_model(l):
        return len(_refs(c.get("output_layers"))) > 1 if l.get("class_name") != \
            "Sequential" else False
    return bool(c.get("return_state"))


def _seq_as_functional(layers, what, model=None):
    """A Sequential's layers (one of them a model) as a functional config: each layer
    called on the one before (tf.keras 2's form of nodes), from its InputLayer (or, as
    tf.keras 2 makes it, an Input of the first layer's batch_input_shape and dtype)."""
    where = f"{what}: " + (f"nested model {model!r} (Sequential)" if model else "Sequential")
    layers = [_need_dict(l, f"{what}: layer {i}") for i, l in enumerate(
        _need_list(layers, f"{what}: layers"))]
    names = [_layer_name(l, i) for i, l in enumerate(layers)]
    if not layers:
        raise LoadError(f"{where} has no layers")
    if layers[0].get("class_name") == "InputLayer":
        out = [{**layers[0], "name": names[0], "inbound_nodes": []}]
        start = 1
    else:
        first = layers[0]
        c = first.get("config") if isinstance(first.get("config"), dict) else {}
        ic = {} if _is_model(first) else {
            k: c[k] for k in ("batch_input_shape", "batch_shape", "dtype") if k in c}
        iname = f"{names[0]}_input"
        out = [{"class_name": "InputLayer", "config": {**ic, "name": iname}, "name": iname,
                "inbound_nodes": []}]
        start = 0
    prev = out[0]["name"]
    for i in range(start, len(layers)):
        l, n = layers[i], names[i]
        cls = l.get("class_name")
        if cls == "InputLayer" or cls in _MERGE_LAYERS or cls in _ATTENTION_LAYERS:
            raise LoadError(f"{where}: layer {n!r} ({cls}) in a Sequential holding a "
                            "nested model: not supported"[:400])
        if i > start and _returns_several(layers[i - 1]):
            raise LoadError(f"{where}: layer {n!r} ({cls}) is given the several outputs "
                            f"of {names[i - 1]!r}: not supported in a Sequential holding a "
                            "nested model"[:400])
        # (references to it count its calls as listed: _skipped_node)
        out.append({**l, "name": n, "inbound_nodes": [[[prev, 0, 0, {}]]], _LISTED: True})
        prev = n
    return {"layers": out, "input_layers": [[out[0]["name"], 0, 0]],
            "output_layers": [[prev, 0, 0]]}


def _map_refs(v, fn):
    """``v`` (a node, its arguments) with every tensor reference ``r`` replaced by
    ``fn(r)``, in the form it is written in."""
    if isinstance(v, dict):
        if v.get("class_name") == "__keras_tensor__":
            r = _history(v)
            c = dict(v["config"])
            c["keras_history"] = list(fn(r))
            return {**v, "config": c}
        return {k: _map_refs(x, fn) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        r = _history(v)
        if r is not None:
            return [*fn(r), *[_map_refs(x, fn) for x in v[3:]]]
        return [_map_refs(x, fn) for x in v]
    return v


def _tensor(ref, like):
    """A reference ``ref`` written in the form of ``like`` (a Keras 3 tensor dict or a
    tf.keras 2 list)."""
    if isinstance(like, dict):
        return {"class_name": "__keras_tensor__", "config": {"keras_history": list(ref)}}
    return list(ref)


def _drop_none_masks(node):
    """Keras 3 fills a call's ``mask=None`` with its (one) tensor's own mask (Layer.__call__):
    a nested model records it wherever a mask only reaches the layer through the model's
    boundary, so in an inlined graph it says nothing: dropped (a mask tensor is kept and
    checked)."""
    if isinstance(node, dict):
        kw = node.get("kwargs")
        if isinstance(kw, dict) and "mask" in kw and kw["mask"] is None:
            node["kwargs"] = {k: v for k, v in kw.items() if k != "mask"}
    elif isinstance(node, list):
        for t in node:
            if isinstance(t, list) and len(t) > 3 and isinstance(t[3], dict) and \
                    "mask" in t[3] and t[3]["mask"] is None:
                t[3] = {k: v for k, v in t[3].items() if k != "mask"}


class _Inliner:
    """A functional config whose layers include models, as one flat functional config:
    each call of a nested model (any depth) becomes a copy of its graph, its layers
    renamed "<model>/<layer>"; the copies of a model called several times are calls of
    the same layers (their weights held once)."""

    def __init__(self, what):
        self.what = what
        self.entries = {}       # inlined name -> its layer dict (inbound_nodes grow)
        self.placed = {}        # a model's prefix -> the list its layers are placed in
        self.done = set()       # the prefixes of the models inlined once already
        self.call_masks = []    # _CALL_MASKS

    def run(self, cfg):
        top = []
        outs = self.expand(cfg, "", None, None, (), "", None, 0, top)
        flat = []

        def put(items):
            for it in items:
                if isinstance(it, list):
                    put(it)
                else:
                    flat.append(self.entries[it])
        put(top)
        seen = set()
        for l in flat:
            if l["name"] in seen:
                raise LoadError(f"{self.what}: inlining nested models gives two layers "
                                f"named {l['name']!r}"[:300])
            seen.add(l["name"])
        return {**cfg, "layers": flat, "output_layers": [list(r) for r in outs],
                _CALL_MASKS: self.call_masks}

    def expand(self, cfg, prefix, in_refs, in_masks, scope, k3base, tree, depth, place):
        """Inline one call of the functional config ``cfg`` (``in_refs``: the outer
        tensors its inputs are, None for the outermost model; ``in_masks``: the masks
        the call records for them) -> the outer references of its outputs."""
        where = f"{self.what}: nested model {scope[-1]!r}" if scope else self.what
        if depth > _MAX_NEST:
            raise LoadError(f"{where}: models nest more than {_MAX_NEST} deep")
        layers = _need_list(cfg.get("layers", []), f"{where}: layers")
        by_name, names = {}, []
        for i, l in enumerate(layers):
            l = _need_dict(l, f"{where}: layer {i}")
            _need_str(l.get("class_name"), f"{where}: layer {i} class_name")
            n = _layer_name(l, i)
            if n in by_name:
                raise LoadError(f"{where}: two layers named {n!r}"[:300])
            by_name[n] = l
            names.append(n)
        inputs = _refs(cfg.get("input_layers"))
        outputs = _refs(cfg.get("output_layers"))
        input_map = {}
        if in_refs is not None:
            if not inputs or not outputs:
                raise LoadError(f"{where} has no input_layers or output_layers")
            if len(inputs) != len(in_refs):
                raise LoadError(f"{where} takes {len(inputs)} input(s), is called on "
                                f"{len(in_refs)} tensor(s)")
            for k, (n, node, t) in enumerate(inputs):
                if by_name.get(n, {}).get("class_name") != "InputLayer" or node or t:
                    raise LoadError(f"{where}: input {k} is <output {t} of {n!r}>; "
                                    "fastrnn takes a model's inputs from its InputLayers"
                                    [:300])
                input_map[n] = k
        first = prefix not in self.done
        self.done.add(prefix)
        counts, offsets, models, tds = {}, {}, {}, {}
        for n in names:
            l = by_name[n]
            cls = l["class_name"]
            seg = None
            if not _is_op(l):
                s = _snake(cls)
                c = counts[s] = counts.get(s, -1) + 1
                seg = s if c == 0 else f"{s}_{c}"
            if _is_model(l):
                models[n] = seg
                if first:
                    place.append([])
                    self.placed[prefix + n + "/"] = place[-1]
                continue
            if n in input_map:
                continue
            full = prefix + n
            if _td_model(l):
                tds[n] = seg
            if first and n in tds:
                # (no weights of their own: a nested one's marked so, k3 None, that the
                # outer model's layers are counted as Keras names them)
                fname = f"{full}/{_fold_name(l)}"
                fold = {"class_name": _FOLD, "name": fname, "module": "fastrnn",
                        "config": {"name": fname}, "inbound_nodes": []}
                e = {k: v for k, v in l.items() if k != "inbound_nodes"}
                e.update(name=full, inbound_nodes=[])
                e[_UNFOLD] = fold["name"]
                for x in (fold, e) if in_refs is not None else ():
                    x[_NESTED] = {"k3": None, "top": scope[0], "local": n, "tree": tree}
                self.entries[fold["name"]], self.entries[full] = fold, e
                place += [fold["name"], [], full]
                self.placed[full + "/"] = place[-2]
            elif first:
                e = {k: v for k, v in l.items() if k != "inbound_nodes"}
                e["name"] = full
                e["inbound_nodes"] = []
                if in_refs is not None:
                    cfg_ = e.get("config")
                    if isinstance(cfg_, dict) and "name" in cfg_:
                        e["config"] = {**cfg_, "name": full}
                    e[_NESTED] = {"k3": k3base + seg if seg else None, "top": scope[0],
                                  "local": n, "tree": tree}
                    tree["leaves"][n] = tree["leaves"].get(n, 0) + 1
                self.entries[full] = e
                place.append(full)
            elif full not in self.entries:
                raise LoadError(f"{where}: layer {n!r} is new in a later call")
            offsets[n] = len(self.entries[full]["inbound_nodes"])
        memo = {}
        busy = object()

        def resolve(ref, out=False, listed=False):
            # (out: a reference of the model's outputs; listed: counting a nested
            # model's calls as its inbound_nodes list them)
            n, node, t = ref
            if n in input_map:
                if node or t:
                    raise LoadError(f"{where}: the reference to input {n!r} reads call "
                                    f"{node}, tensor {t}"[:300])
                return in_refs[input_map[n]]
            l = by_name.get(n)
            if l is None:
                raise LoadError(f"{where}: config refers to unknown layer {n!r}"[:300])
            if n in models:
                node -= 0 if listed else _skipped_node(l, out)
                if node < 0:
                    raise LoadError(f"{where}: a reference reads call {ref[1]} of nested "
                                    f"model {n!r}, its own node (not a call)"[:300])
                key = (n, node)
                if memo.get(key) is busy:
                    raise LoadError(f"{where}: config has a cycle through layer {n!r}"[:300])
                if key not in memo:
                    memo[key] = busy
                    memo[key] = self.call(l, n, node, resolve, prefix, scope, models[n],
                                          k3base, tree, depth, where)
                outs = memo[key]
                if t >= len(outs):
                    raise LoadError(f"{where}: the reference to nested model {n!r} reads "
                                    f"its output {t}; it has {len(outs)}"[:300])
                return outs[t]
            return (prefix + n, node + offsets[n], t)

        for n in names:
            l = by_name[n]
            if n in models or n in input_map:
                continue
            nodes = l.get("inbound_nodes") or []
            nodes = _need_list(nodes, f"{where}: layer {n!r} inbound_nodes")
            entry = self.entries[prefix + n]
            for node in nodes:
                new = _map_refs(node, resolve)
                if in_masks is not None and not _is_op(l):
                    new = self.give_mask(new, node, input_map, in_masks, n, l, where)
                _drop_none_masks(new)
                if n in tds:
                    new = self.distribute(l, n, new, prefix, scope, tds[n], k3base, tree,
                                          depth, where)
                entry["inbound_nodes"].append(new)
        for n in models:        # (every call of a model, read or not)
            nodes = by_name[n].get("inbound_nodes") or []
            for k in range(len(_need_list(nodes, f"{where}: layer {n!r} inbound_nodes"))):
                resolve((n, k, 0), listed=True)
        return [resolve(r, out=True) for r in outputs]

    def give_mask(self, new, node, input_map, in_masks, n, l, where):
        """A nested model's call gives its input ``k`` a mask (Keras 3 records it; its
        Functional.call attaches it to the input tensor, whose own mask the layers inside
        then read; checked as the call's, _CALL_MASKS): the call of one of its layers
        reading that input as its one tensor takes it as its ``mask=`` (checked there as
        any recorded mask), a merge layer reading it among other tensors reads the
        tensors' own masks as it does outside a nested model (Keras 3's merge layers take
        no mask= argument); read in another way, refused."""
        reads = set()
        for r in _node_refs(node):
            if r[0] in input_map and in_masks[input_map[r[0]]] is not None:
                reads.add(input_map[r[0]])
        if not reads:
            return new
        if isinstance(new, dict) and l.get("class_name") in _MERGE_LAYERS:
            return new
        k = next(iter(reads))
        m = in_masks[k]
        if isinstance(new, dict):
            args, kw = new.get("args") or [], new.get("kwargs") or {}
            single = len(args) == 1 and _history(args[0]) is not None and \
                _history(node["args"][0])[0] in input_map and \
                all(v is None for key, v in kw.items() if key not in ("mask", "training"))
            if single and len(reads) == 1:
                if kw.get("mask") is None:
                    new["kwargs"] = {**kw, "mask": _tensor(m, args[0])}
                return new
        elif isinstance(new, list) and len(new) == 1 and isinstance(new[0], list) and \
                len(reads) == 1:
            t = new[0]
            kw = t[3] if len(t) > 3 and isinstance(t[3], dict) else {}
            if all(v is None for key, v in kw.items() if key not in ("mask", "training")):
                if kw.get("mask") is None:
                    new[0] = [*t[:3], {**kw, "mask": list(m)}]
                return new
        raise LoadError(f"{where}: layer {n!r} ({l.get('class_name')}) reads the model's "
                        "masked input with other tensors: not supported (fastrnn supports a "
                        "layer reading the input alone, and a merge layer reading it among "
                        "the tensors it merges)"[:400])

    def distribute(self, l, n, node, prefix, scope, seg, k3base, tree, depth, where):
        """One call of TimeDistributed ``n`` of a model (its ``node``, references mapped):
        the fold reads what it reads, the model is inlined on the fold's output (its
        weights: Keras 3's under "<TimeDistributed>/layer/layers/", a legacy h5 file's in
        the TimeDistributed's group, as a nested model's) -> the unfold's node."""
        what = f"{where}: layer {n!r} (TimeDistributed of a model)"
        fold = self.entries[self.entries[prefix + n][_UNFOLD]]
        k = len(fold["inbound_nodes"])
        fold["inbound_nodes"].append(node)
        data = _node_call(node, n, "TimeDistributed").data
        if len(data) != 1:
            raise LoadError(f"{what} is called on {len(data)} tensors; it takes one")
        inner = l["config"]["layer"]
        c = _need_dict(inner.get("config"), f"{what}: the model's config")
        if inner["class_name"] == "Sequential":
            sub = _seq_as_functional(c.get("layers", []), self.what, n)
        elif "layers" not in c:
            raise LoadError(f"{what}: the model has no layers in its config")
        else:
            sub = c
        n_in, n_out = len(_refs(sub.get("input_layers"))), len(_refs(sub.get("output_layers")))
        if not n_in or not n_out:
            raise LoadError(f"{what}: the model has no input_layers or output_layers")
        if n_in != 1 or n_out != 1:
            raise LoadError(f"{what}: a model of several inputs or outputs is not "
                            "supported inside TimeDistributed")
        if tree is None:
            tree = {"leaves": {}, "models": set()}
        outs = self.expand(sub, prefix + n + "/", [(fold["name"], k, 0)], None,
                           scope + (n,), f"{k3base}{seg}/layer/layers/", tree, depth + 1,
                           self.placed[prefix + n + "/"])
        if isinstance(node, dict):
            like = {"class_name": "__keras_tensor__"}
            return {"args": [[_tensor(outs[0], like), _tensor(data[0], like)]],
                    "kwargs": {}}
        return [[*outs[0], {}], [*data[0], {}]]

    def call(self, l, n, node, resolve, prefix, scope, seg, k3base, tree, depth, where):
        """Inline call ``node`` of nested model ``l`` (named ``n``) -> its outputs."""
        cls = l["class_name"]
        what = f"{where}: nested model {n!r} ({cls})"
        nodes = _need_list(l.get("inbound_nodes") or [], f"{what} inbound_nodes")
        if not 0 <= node < len(nodes):
            raise LoadError(f"{where}: a reference reads call {node} (counting from 0) of "
                            f"nested model {n!r}, which is called {len(nodes)} time(s)"[:300])
        raw = nodes[node]
        kwargs = {}
        if isinstance(raw, dict):       # Keras 3: {"args": [...], "kwargs": {...}}
            args = _need_list(raw.get("args", []), f"{what} call arguments")
            if not args:
                raise LoadError(f"{what} is called on no tensor")
            for a in args[1:]:
                if a is not None:
                    raise LoadError(f"{what} is called with an extra argument {_show(a)}: "
                                    "not supported"[:300])
            data = _refs(args[0])
            kwargs = dict(_need_dict(raw.get("kwargs") or {}, f"{what} call arguments"))
        else:                           # tf.keras 2: [[name, node, tensor, kwargs], ...]
            data = []
            for t in _need_list(raw, f"{what} inbound node"):
                r = _history(t)
                if r is None:
                    raise LoadError(f"{what} is called with {_show(t)}: not supported"[:300])
                data.append(r)
                if len(t) > 3 and isinstance(t[3], dict):
                    kwargs.update(t[3])
        masks = kwargs.pop("mask", None)
        for k, v in kwargs.items():
            if k == "training" and (v is None or v is False or v == 0):
                continue
            if v is not None:
                raise LoadError(f"{what} is called with {k}={_show(v)}: not supported"[:300])
        refs = [resolve(r) for r in data]
        if masks is None:
            mrefs = [None] * len(refs)
        else:
            if isinstance(masks, dict) and masks.get("class_name") != "__keras_tensor__":
                masks = [masks[key] for key in sorted(masks)]
            elif _history(masks) is not None:
                masks = [masks]
            masks = _need_list(masks, f"{what} mask argument")
            if len(masks) != len(refs):
                raise LoadError(f"{what} is given {len(masks)} masks for {len(refs)} inputs")
            mrefs = []
            for m in masks:
                r = None if m is None else _history(m)
                if m is not None and r is None:
                    raise LoadError(f"{what} is called with mask={_show(m)}: not "
                                    "supported"[:300])
                mrefs.append(None if r is None else resolve(r))
        if isinstance(raw, dict):
            # (a mask given is the mask of its tensor inside the model, any layer reading it
            # there: it must be the one fastrnn computes for the tensor; a tf.keras 2 call
            # records none)
            self.call_masks += [(r, m, k, what) for k, (r, m) in enumerate(zip(refs, mrefs))
                                if m is not None]
        c = _need_dict(l.get("config"), f"{what} config")
        if cls == "Sequential":
            sub = _seq_as_functional(c.get("layers", []), self.what, n)
        else:
            if "layers" not in c:
                raise LoadError(f"{what} has no layers in its config")
            sub = c
        if tree is None:
            tree = {"leaves": {}, "models": set()}
        tree["models"].add(n)
        p = prefix + n + "/"
        place = self.placed.get(p)
        if place is None:
            raise LoadError(f"{what}: not placed")     # pragma: no cover
        return self.expand(sub, p, refs, mrefs, scope + (n,), f"{k3base}{seg}/layers/",
                           tree, depth + 1, place)


def _skipped_node(l, out):
    """How a reference counts the calls of nested model ``l``: 1 where it counts the
    model's own first node (the one linking its inputs to its outputs, which no config
    lists), else 0.  tf.keras 2 counts it for a Functional (and a Sequential built from
    an input shape) in every reference; Keras 3 for a Functional in the model's
    output_layers only (its inbound node arguments drop it)."""
    if l.get(_LISTED):
        return 0
    nodes = l.get("inbound_nodes")
    keras3 = isinstance(nodes, list) and any(isinstance(n, dict) for n in nodes)
    cls = l.get("class_name")
    if keras3:
        return int(out and cls in ("Functional", "Model"))
    if cls in ("Functional", "Model"):
        return 1
    c = l.get("config") if isinstance(l.get("config"), dict) else {}
    layers = c.get("layers") if isinstance(c.get("layers"), list) else []
    head = layers[0] if layers and isinstance(layers[0], dict) else {}
    hc = head.get("config") if isinstance(head.get("config"), dict) else {}
    return int(head.get("class_name") == "InputLayer" or "batch_input_shape" in hc)


def _node_refs(v, depth=0):
    """Every tensor reference in a node (its arguments, keyword arguments)."""
    if depth > _MAX_NEST:
        return []
    r = _history(v) if isinstance(v, (list, tuple, dict)) else None
    if r is not None:
        out = [r]
        if isinstance(v, (list, tuple)):
            for x in v[3:]:
                out += _node_refs(x, depth + 1)
        return out
    if isinstance(v, dict):
        return [x for k in v for x in _node_refs(v[k], depth + 1)]
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _node_refs(item, depth + 1)]
    return []


def _graph_states(order, calls, by_name, pos):
    """{(layer name, node): [(desc index, tensor index), ...]} of the calls given
    ``initial_state``: fastrnn runs it when the states are outputs of an earlier
    recurrent layer (an encoder's ``return_state``), and refuses it otherwise."""
    out = {}
    for key in order:
        call = calls[key]
        if call.states is None:
            continue
        n = key[0]
        cls = by_name[n]["class_name"]
        refs = []
        for src, node, t in call.states:
            if by_name[src]["class_name"] not in _RNN_LIKE:
                raise LoadError(
                    f"layer {n!r} ({cls}) is called with initial_state=<output {t} of "
                    f"{src!r}>: not supported (fastrnn supports initial states returned "
                    "by an earlier recurrent layer, return_state=True)"[:400])
            refs.append((pos[(src, node)], t))
        out[key] = refs
    return out


class _E(tuple):
    """A mask expression; :class:`_Masks` makes equal ones one object (compared by
    identity, so shared parts never make a comparison or a walk grow exponentially)."""


class _Masks:
    """Masks as expressions: those Keras 3 records as graph operations (``not_equal``,
    ``any``, ``logical_or``, the ``expand_dims`` / ``zeros_like`` / ``ones_like`` /
    ``concatenate`` of a Concatenate's mask) and those fastrnn computes, in one form:
    ``("ne", tensor, value)``, ``("any", e)``, ``("or", a, b)``, ``("expand", e)``,
    ``("zeros_like", tensor)``, ``("ones_like", tensor)``, ``("concat", axis, parts)``."""

    def __init__(self, by_name):
        self.by_name, self.table, self.memo = by_name, {}, {}

    def mk(self, *parts):
        key = tuple(id(p) if isinstance(p, _E) else
                    tuple(map(id, p)) if isinstance(p, list) else p for p in parts)
        e = self.table.get(key)
        if e is None:
            e = self.table[key] = _E(tuple(p) if isinstance(p, list) else p for p in parts)
        return e

    def parse(self, ref):
        """The expression of a mask tensor Keras recorded, or None (anything else).
        Iterative (a deep graph's masks nest deeply), each tensor read once: the work is
        bounded by the config's size."""
        memo, nodes, open_ = self.memo, {}, set()
        stack = [ref]
        while stack:
            r = stack[-1]
            if r in memo:
                stack.pop()
                continue
            if r not in nodes:
                nodes[r] = self._node(r)
            if nodes[r] is None:
                memo[r] = None
                stack.pop()
                continue
            kids, make = nodes[r]
            todo = [k for k in kids if k not in memo]
            if todo and r not in open_:
                open_.add(r)
                stack.extend(todo)
                continue
            # (its operands parsed; one still open is a cycle: no mask Keras makes)
            memo[r] = None if todo or any(memo[k] is None for k in kids) else \
                make([memo[k] for k in kids])
            open_.discard(r)
            stack.pop()
        return memo[ref]

    def _node(self, ref):
        """The operation Keras recorded as mask tensor ``ref``: (its operands' references,
        a function of their expressions giving its own), or None (not a mask op)."""
        l = self.by_name.get(ref[0])
        if l is None or ref[2] != 0 or not _is_op(l):
            return None
        cls = l.get("class_name")
        nodes = l.get("inbound_nodes")
        if not isinstance(nodes, list) or not 0 <= ref[1] < len(nodes) or \
                not isinstance(nodes[ref[1]], dict):
            return None
        node = nodes[ref[1]]
        args, kw = node.get("args"), node.get("kwargs") or {}
        cfg = l.get("config") if isinstance(l.get("config"), dict) else {}
        if not isinstance(args, list) or kw:
            return None
        refs = [_history(a) for a in args]
        if cls == "NotEqual" and len(args) == 2:
            a, b = args
            if refs[1] is not None:
                a, b = b, a
            r = _history(a)
            if r is None or isinstance(b, bool) or not isinstance(b, (int, float)):
                return None
            return [], lambda _: self.mk("ne", self._uncast(r), float(b))
        if cls in ("ZerosLike", "OnesLike") and len(args) == 1 and refs[0] is not None:
            op = "zeros_like" if cls == "ZerosLike" else "ones_like"
            return [], lambda _: self.mk(op, self._uncast(refs[0]))
        if cls == "Concatenate" and len(args) == 1 and isinstance(args[0], list) and \
                isinstance(cfg.get("axis"), int) and not isinstance(cfg["axis"], bool):
            parts = [_history(a) for a in args[0]]
            if None in parts:
                return None
            return parts, lambda es: self.mk("concat", cfg["axis"], es)
        if not refs or None in refs:
            return None
        if cls == "Any" and len(refs) == 1 and cfg.get("axis") in (-1, [-1]) \
                and not cfg.get("keepdims"):
            return refs, lambda es: self.mk("any", es[0])
        if cls == "ExpandDims" and len(refs) == 1 and cfg.get("axis") in (-1, [-1]):
            return refs, lambda es: self.mk("expand", es[0])
        if cls == "ConvertToTensor" and len(refs) == 1 and cfg.get("dtype") in (None, "bool"):
            # (Attention's compute_mask: its query's mask as it is)
            return refs, lambda es: es[0]
        if cls == "LogicalOr" and len(refs) == 2:
            return refs, lambda es: self.mk("or", *es)
        return None

    def _uncast(self, ref):
        """The tensor a chain of Cast ops to float dtypes reads (``ref`` itself when it
        is no such op's output): Keras casts a float32 input to a float64 layer's dtype
        before the not_equal of its mask, and the cast changes no comparison with the
        mask value (a downcast could only round values that close to it)."""
        seen = set()
        while ref not in seen:
            seen.add(ref)
            l = self.by_name.get(ref[0])
            if l is None or l.get("class_name") != "Cast" or not _is_op(l) or ref[2] != 0:
                break
            c = l.get("config") if isinstance(l.get("config"), dict) else {}
            nodes = l.get("inbound_nodes")
            node = nodes[ref[1]] if isinstance(nodes, list) and ref[1] < len(nodes) else None
            if not isinstance(node, dict) or node.get("kwargs") or \
                    c.get("dtype") not in _FLOAT_DTYPES:
                break
            args = node.get("args")
            if not isinstance(args, list) or len(args) != 1 or _history(args[0]) is None:
                break
            ref = _history(args[0])
        return ref

    def merged(self, cls, axis, refs, masks, keras2=False):
        """The mask Keras gives a merge layer's output (None: none); ``keras2``: tf.keras
        2's where it differs from Keras 3's (:func:`_k2_merge_same`): a mask no recorded
        one can equal, as fastrnn computes it only while the model runs."""
        if keras2 and not _k2_merge_same(cls, masks):
            return self.mk("k2_merge", cls, axis, [
                self.mk("ones_like", r) if m is None else m for r, m in zip(refs, masks)])
        if cls != "Concatenate":
            if any(m is None for m in masks):
                return None
            return functools.reduce(lambda a, b: self.mk("or", a, b), masks)
        if all(m is None for m in masks):
            return None
        return self.mk("any", self.mk("concat", axis, [
            self.mk("ones_like", r) if m is None else
            self.mk("or", self.mk("expand", m), self.mk("zeros_like", r))
            for r, m in zip(refs, masks)]))


def _k2_merge_same(cls, masks):
    """Whether a merge layer of inputs with ``masks`` (expressions; None: none) gives the
    same output and mask by tf.keras 2's rules as by Keras 3's (which fastrnn's merge
    layers follow): no input masked, or every input given one mask (one object) by a
    merge whose values ignore masks.  (tf.keras 2 joins the masks present with all():
    an unmasked input counts as all True; Keras 3 with any(), none for the elementwise
    merges where an input has none; Keras 3's Multiply, Maximum and Minimum also replace
    masked entries, tf.keras 2's ignore masks.  A Concatenate on another axis than the
    last joins the masks one after the other in both when all inputs have one.)"""
    if all(m is None for m in masks):
        return True
    if any(m is None for m in masks) or cls in ("Multiply", "Maximum", "Minimum"):
        return False
    return all(m is masks[0] for m in masks)


def _show_mask(e, depth=0):
    if e is None:
        return "no mask"
    if depth > 4:
        return "..."
    op, *args = e
    if op == "concat":          # ("concat", axis, parts)
        return "concatenate([" + ", ".join(_show_mask(p, depth + 1) for p in args[1]) + \
            f"], axis={args[0]})"
    sub = [_show_mask(a, depth + 1) if isinstance(a, _E) else
           f"<output {a[2]} of {a[0]!r}>" if isinstance(a, tuple) else f"{a:g}"
           if isinstance(a, float) else str(a) for a in args]
    name = {"ne": "not_equal", "or": "logical_or", "expand": "expand_dims"}.get(op, op)
    return f"{name}({', '.join(sub)}" + (", axis=-1)" if op in ("any", "expand") else ")")


def _mask_mismatch(ex, ref, want):
    """None when the mask tensor ``ref`` Keras records for a call (None: none) is the
    mask fastrnn computes there (``want``, an expression); else how to show ``ref``."""
    given = None if ref is None else ex.parse(ref)
    if given is want and (ref is None or given is not None):
        return None
    return ("None" if ref is None else _show_mask(given) if given is not None
            else f"<output {ref[2]} of {ref[0]!r}>")


def _check_masks(order, calls, by_name, call_masks=()):
    """Keras 3 records the mask each call of a layer is given (computed by ops such as
    not_equal / any from the Embedding / Masking layers, or given by the user), and the
    mask each call of a nested model inlined gives each of its inputs (``call_masks``,
    _CALL_MASKS): accept it only when it is exactly the mask fastrnn computes there, else
    refuse."""
    masks = {}          # fastrnn's mask of each (layer, node, tensor), as an expression
    ex = _Masks(by_name)
    for n, node in order:
        l = by_name[n]
        cls = l["class_name"]
        call = calls[(n, node)]
        src = call.data[0] if call.data else None
        ins = [masks.get(r) for r in call.data]
        c = l.get("config") if isinstance(l.get("config"), dict) else {}
        if _is_op(l) or _tf_op(l):
            fast = None         # (an operation gives no mask: only Keras layers carry one)
        elif cls == "Dot":
            fast = None         # (Keras's Dot gives no mask)
        elif cls in _MERGE_LAYERS:
            fast = ex.merged(cls, c.get("axis", -1), call.data, ins, not call.keras3)
            # (a tf.keras 2 file's merge runs with tf.keras 2's masks where they differ)
            call.k2_merge_same = _k2_merge_same(cls, ins)
        elif _UNFOLD in l:
            fast = ins[1] if len(ins) == 2 else None     # (its input's, as Keras 3's)
        else:
            fast = ins[0] if ins else None      # (an attention layer's: the query's)
        mask = call.mask
        if cls in _ATTENTION_LAYERS:
            # the masks Keras passes it: its inputs' own; any given explicitly must be
            # exactly those (fastrnn applies the inputs' masks)
            given = (list(enumerate(mask)) if isinstance(mask, list) else []) + [
                # (MultiHeadAttention reads the query's own mask whatever query_mask=
                # says, and fills a value_mask= / key_mask= of None from the tensor's)
                (_MHA_ARGS.index(k[:-5]), r) for k, r in call.masks_kw.items()
                if k != "query_mask" and r is not None]
            for j, r in given:
                want = ins[j] if j < len(ins) else None
                what = _mask_mismatch(ex, r, want)
                if what is not None:
                    raise LoadError(
                        f"layer {n!r} ({cls}) is given the mask {what} for its input {j}: "
                        "not supported; fastrnn applies its inputs' own masks, which here "
                        f"give {_show_mask(want)}"[:500])
            mask = _NO_MASK
        if mask is _NO_MASK and call.keras3 and cls in _RNN_LIKE \
                and call.states:
            # Keras 3 passes a layer its input's mask only when that input is its one
            # tensor argument: an RNN given initial_state tensors runs without one.  (A
            # call that records no mask otherwise runs masked as before: Keras versions
            # may not record the mask they pass.)
            if fast is not None:
                raise LoadError(
                    f"layer {n!r} ({cls}) is called with initial_state, so Keras 3 runs it "
                    f"without the mask ({_show_mask(fast)}) of its input: not supported "
                    "(fastrnn would apply it; pass the mask explicitly, mask=..., to run "
                    "it masked)"[:500])
        elif mask is not _NO_MASK:
            what = _mask_mismatch(ex, mask, fast)
            if what is not None:
                raise LoadError(
                    f"layer {n!r} ({cls}) is called with mask={what}: not supported; "
                    "fastrnn computes masks only from Embedding(mask_zero=True) and Masking "
                    f"layers, which here give {_show_mask(fast)}"[:500])
        if call.states is not None and fast is not None:
            # a masked step before the first unmasked one outputs the initial h with
            # Keras 3's JAX backend, zeros with TensorFlow / PyTorch (and fastrnn)
            raise LoadError(
                f"layer {n!r} ({cls}) is called with both initial_state and a mask: not "
                "supported (Keras's outputs at leading masked steps then depend on the "
                "backend that ran the model)")
        if cls in ("InputLayer",) + _MASK_ENDS:
            fast = None
        elif cls == "Permute" and fast is not None:
            # (Keras 3 on JAX: the identity permutation returns its input tensor, the
            # mask still attached; any other drops it)
            dims = c.get("dims")
            if not (isinstance(dims, list) and dims == list(range(1, len(dims) + 1))):
                fast = None
        elif cls == "Reshape" and fast is not None:
            # (kept where the shape does not change, as Permute's, known only when the
            # model runs: a mask no recorded one can equal, which refuses an explicit
            # mask= after it and initial_state= on it)
            fast = ex.mk("reshape", fast)
        elif cls == "Embedding" and c.get("mask_zero") and src is not None:
            fast = ex.mk("ne", src, 0.0)
        elif cls == "Embedding":
            fast = None         # (Keras's Embedding gives a mask only with mask_zero)
        elif cls == "Masking" and src is not None:
            v = c.get("mask_value", 0.0)
            fast = ex.mk("any", ex.mk("ne", src, float(v) if isinstance(v, (int, float))
                                      else repr(v)))
        elif cls in _RECURRENT and not c.get("return_sequences"):
            fast = None
        masks[(n, node, 0)] = fast
        if cls == "Bidirectional":
            inner = c.get("layer")
            ic = inner.get("config") if isinstance(inner, dict) else None
            if not (isinstance(ic, dict) and ic.get("return_sequences")):
                masks[(n, node, 0)] = None
            elif c.get("merge_mode", "concat") is None:
                masks[(n, node, 1)] = fast        # (both directions' sequences)
    ran = set(order)
    for ref, given, k, what in call_masks:
        if (ref[0], ref[1]) not in ran:
            continue        # (a tensor not on the way to the outputs)
        want = masks.get(ref)
        shown = _mask_mismatch(ex, given, want)
        if shown is not None:
            raise LoadError(
                f"{what} is called with mask={shown} for its input {k} (<output {ref[2]} of "
                f"{ref[0]!r}>): not supported; fastrnn computes masks only from "
                "Embedding(mask_zero=True) and Masking layers, which here give "
                f"{_show_mask(want)}"[:500])


# ============================================================================ weight stores

def _snake(name):
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read(ds, fname, what):
    if not isinstance(ds, hdf5.Dataset):
        raise LoadError(f"{fname}: weight {what} must be an HDF5 dataset, found a group")
    a = ds[()]
    if isinstance(a, np.generic):       # (a scalar dataset: Attention's scale)
        a = np.asarray(a)
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise LoadError(f"{fname}: weight {what} must be a numeric array, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    return a


_K212_ROOT = "_layer_checkpoint_dependencies"


class _Keras3Store:
    """Keras 3 weights file: layers/<snake_class>[_n]/... with vars/0, vars/1, ...  (Also
    tf-keras's ``.weights.h5``; tf-keras 2.12's has its layers under
    ``_layer_checkpoint_dependencies``, numbered by a counter that skips: those groups
    are taken in order, class by class.)"""

    def __init__(self, f, fname):
        self.f = f
        self.fname = fname
        key = "layers" if "layers" in f else _K212_ROOT if _K212_ROOT in f else None
        self.root = _group(f[key], fname, key) if key else None
        self.by_order = key == _K212_ROOT
        self.paths: dict[str, str] = {}

    def _in_order(self):
        """tf-keras 2.12's groups by class (snake case), in the order of their numbers."""
        found: dict[str, list] = {}
        for k in self.root.keys():
            m = re.fullmatch(r"(.*?)(?:_(\d{1,9}))?", k)
            found.setdefault(m.group(1), []).append((int(m.group(2) or 0), k))
        return {s: [k for _, k in sorted(v)] for s, v in found.items()}

    def assign(self, descs):
        counts: dict[str, int] = {}
        ordered = self._in_order() if self.by_order else None
        for d in descs:
            if d.nested is not None:    # (a nested model's: layers/<model>/layers/...)
                if d.nested["k3"]:
                    self.paths[d.name] = d.nested["k3"]
                continue
            s = _snake(d.class_name)
            n = counts.get(s, -1) + 1
            counts[s] = n
            if ordered is not None:
                got = ordered.get(s, [])
                self.paths[d.name] = got[n] if n < len(got) else f"{s}_{n}"
            else:
                self.paths[d.name] = s if n == 0 else f"{s}_{n}"

    def by_keras3(self):
        """Whether Keras 3 wrote the file: its ``vars`` groups carry the object's name
        (attribute ``name``).  tf-keras 2's ``.weights.h5`` has the same layout but no
        attributes (and neither do files of early Keras 3 versions: those stay Keras 2)."""
        groups = [self.f] + ([self.root[k] for k in self.root.keys()][:64]
                             if self.root is not None else [])
        for g in groups:
            v = g["vars"] if isinstance(g, hdf5.Group) and "vars" in g else None
            if isinstance(v, hdf5.Group) and "name" in v.attrs:
                return True
        return False

    def _sub(self, g, key):
        """Subgroup ``key`` of ``g`` or None."""
        if key not in g:
            return None
        return _group(g[key], self.fname, f"{g.name}/{key}")

    def _vars(self, g):
        v = None if g is None else self._sub(g, "vars")
        if v is None:
            return []
        keys = sorted(v.keys(), key=lambda k: (0, int(k), "") if k.isascii() and k.isdigit() and len(k) < 10
                      else (1, 0, k))
        return [_read(v[k], self.fname, f"{v.name}/{k}") for k in keys]

    def _cell_vars(self, g):
        c = self._sub(g, "cell")
        return self._vars(c if c is not None else g)

    def _rnn_vars(self, g, spec, where):
        """A recurrent layer's arrays: ``cell/vars`` (LSTM, ..., RNN(cell)); for
        RNN(StackedRNNCells) each cell's, in the config's order of the cells, from
        ``cell/cells/<snake_case cell class>[_n]/vars`` (Keras 3 names a list's items by
        class, counting from the second of a class, as it names a model's layers)."""
        c = self._sub(g, "cell")
        if c is None or "cells" not in c or not isinstance(spec, dict) or \
                spec.get("class_name") != "RNN":
            return self._cell_vars(g)
        cells, _ = _rnn_cells(_cdict(spec, "config", where), where)
        group = self._sub(c, "cells")
        counts: dict[str, int] = {}
        out = []
        for cls, _ in cells:
            s = _snake(cls)
            n = counts.get(s, -1) + 1
            counts[s] = n
            out += self._vars(self._sub(group, s if n == 0 else f"{s}_{n}"))
        return out

    def get(self, desc):
        if self.root is None:
            return None
        p = self.paths.get(desc.name)
        if p is None:
            return None
        g = self._sub(self.root, p)
        if g is None:
            return None
        return self._layer_vars(g, desc.class_name, desc.config,
                                f"{self.fname}: layer {desc.name!r} ({desc.class_name})")

    def _layer_vars(self, g, cls, config, where):
        """The arrays of a layer of class ``cls`` and ``config`` in group ``g`` (None:
        a group missing)."""
        if cls in _RECURRENT:
            return self._rnn_vars(g, {"class_name": cls, "config": config}, where)
        if cls == "Bidirectional":
            out = []
            inner = config.get("layer")
            for side, spec in (("forward_layer", inner),
                               ("backward_layer", config.get("backward_layer") or inner)):
                sg = self._sub(g, side)
                if sg is None:
                    return None
                out += self._rnn_vars(sg, spec, where)
            return out
        if cls == "TimeDistributed":
            inner = config.get("layer")
            sg = self._sub(g, "layer")
            if not isinstance(inner, dict) or sg is None:
                return self._vars(sg)
            return self._layer_vars(sg, inner.get("class_name"), inner.get("config") or {},
                                    where)
        if cls == "MultiHeadAttention":
            out = []
            for sub in ("query_dense", "key_dense", "value_dense", "output_dense"):
                # (tf-keras 2.13-2.15's .keras / .weights.h5 name them "_query_dense", ...)
                sg = self._sub(g, sub)
                out += self._vars(sg if sg is not None else self._sub(g, "_" + sub))
            return out
        return self._vars(g)


class _LegacyStore:
    """Keras 2 style: layer_names attr, per layer group with weight_names attr."""

    def __init__(self, g, fname):
        self.g = g
        self.fname = fname
        self.layer_names = _attr_names(g.attrs, "layer_names", fname)
        self.map: dict[str, str] = {}

    def _layer(self, lname):
        if lname not in self.g:
            return None
        return _group(self.g[lname], self.fname, f"layer group {lname!r}")

    def _weight_names(self, lname):
        grp = self._layer(lname)
        return [] if grp is None else _attr_names(grp.attrs, "weight_names", self.fname)

    def _weights(self, lname):
        grp = self._layer(lname)
        if grp is None:
            raise LoadError(f"{self.fname}: layer group {lname!r} is missing")
        out = []
        for n in self._weight_names(lname):
            if n not in grp:
                raise LoadError(f"{self.fname}: weight {n!r} of layer {lname!r} is listed but "
                                "missing from the file")
            out.append(_read(grp[n], self.fname, repr(n)))
        return out

    def assign(self, descs):
        with_w = [n for n in self.layer_names if len(self._weight_names(n)) > 0]
        # (a nested model's layers: the group of the outermost model holding them)
        wanted = list(dict.fromkeys(d.nested["top"] if d.nested is not None else d.name
                                    for d in descs if _has_weights(d)))
        if all(n in with_w for n in wanted):
            self.map = {n: n for n in wanted}
            return
        # names differ (weights-only file with a user architecture): match by order
        if len(with_w) != len(wanted):
            raise LoadError(f"{self.fname}: the file has weights for {len(with_w)} layers "
                            f"({with_w}), the architecture has {len(wanted)} layers with "
                            f"weights ({wanted})"[:800])
        self.map = dict(zip(wanted, with_w))

    def get(self, desc):
        if desc.nested is not None:
            n = self.map.get(desc.nested["top"])
            return None if n is None else self._nested(n, desc)
        n = self.map.get(desc.name)
        return None if n is None else self._weights(n)

    def _nested(self, gname, desc):
        """The arrays of a nested model's layer: the model's group lists all its layers'
        weights (trainable ones first: a BatchNormalization's moving statistics come
        last), each named by a path through its own layer's name ("lstm/lstm_cell/kernel:0"
        from tf.keras 2, "<model>/lstm/lstm_cell/kernel" from Keras 3): a weight is the
        layer's whose name is the first segment of its path naming a layer of the model."""
        nest = desc.nested
        leaves, local = nest["tree"]["leaves"], nest["local"]
        if leaves.get(local, 0) > 1:
            raise LoadError(f"{self.fname}: layer {desc.name!r}: nested model {gname!r} has "
                            f"several layers named {local!r}; their weights cannot be told "
                            "apart in a legacy h5 file"[:400])
        grp = self._layer(gname)
        if grp is None:
            raise LoadError(f"{self.fname}: layer group {gname!r} is missing")
        out = []
        for n in self._weight_names(gname):
            owner = next((s for s in n.split("/")[:-1] if s in leaves), None)
            if owner != local:
                continue
            if n not in grp:
                raise LoadError(f"{self.fname}: weight {n!r} of layer {gname!r} is listed but "
                                "missing from the file")
            out.append(_read(grp[n], self.fname, repr(n)))
        return out or None


class _DictStore:
    def __init__(self, weights):
        self.w = weights

    def assign(self, descs):
        pass

    def get(self, desc):
        # (copies: the model never shares memory with the caller's arrays)
        w = self.w.get(desc.name)
        if w is None and desc.nested is not None:   # (by its own name in its model)
            w = self.w.get(desc.nested["local"])
        return None if w is None else [np.array(a, copy=True) for a in w]


def _has_weights(d):
    c = d.class_name
    if c in _RECURRENT or c in ("Embedding", "Dense", "Bidirectional", "Conv1D", "Conv2D",
                                "PReLU") + _DEPTHWISE:
        return True
    if c == "Normalization":        # (adapted: the statistics are weights, not config)
        return not _stats_in_config(d.config)
    if c in ("LayerNormalization", "BatchNormalization"):
        cfg = d.config
        return c == "BatchNormalization" or cfg.get("scale", True) is not False or bool(
            cfg.get("rms_scaling")) or cfg.get("center", True) is not False
    if c == "MultiHeadAttention":
        return True
    if c in ("Attention", "AdditiveAttention"):
        cfg = d.config
        return bool(cfg.get("use_scale", c == "AdditiveAttention")) or (
            c == "Attention" and cfg.get("score_mode", "dot") == "concat")
    if c == "TimeDistributed":
        inner = d.config.get("layer", {})
        return isinstance(inner, dict) and isinstance(inner.get("config"), dict) and \
            _has_weights(_LayerDesc(inner.get("class_name"), inner["config"], d.name))
    return False


# ============================================================================ building

_MAX_DIM = 1 << 31


def _cbool(c, key, default, where):
    v = c.get(key, default)
    if v is None:
        return default
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise LoadError(f"{where}: config key {key!r} must be true or false, got {v!r}"[:300])


def _cint(c, key, where, default=None, lo=1):
    v = c.get(key, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= _MAX_DIM:
        raise LoadError(f"{where}: config key {key!r} must be an integer in "
                        f"[{lo}, {_MAX_DIM}], got {v!r}"[:300])
    return v


def _cfloat(c, key, default, where):
    v = c.get(key, default)
    if v is None:
        return default
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise LoadError(f"{where}: config key {key!r} must be a number, got {v!r}"[:300])


def _stats_in_config(c):
    """Whether a Normalization config gives its statistics (else they are weights)."""
    return c.get("mean") is not None or c.get("variance") is not None


def _channels_last(c, where):
    """Refuse a layer config whose data_format is other than channels_last."""
    fmt = c.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise LoadError(f"{where}: data_format {fmt!r} is not supported (only "
                        "channels_last)"[:300])


def _cnum(c, key, default, where):
    """A config's finite number (absent: ``default``; null refused, as Keras refuses
    it)."""
    v = c.get(key, default)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise LoadError(f"{where}: config key {key!r} must be a finite number, got {v!r}"[:300])


def _number_array(v, where):
    """A config's number or (nested) list of numbers as a float64 array."""
    ok = lambda a: isinstance(a, (int, float)) and not isinstance(a, bool)
    def flat(a):
        return [b for x in a for b in flat(x)] if isinstance(a, list) else [a]
    if not (ok(v) or (isinstance(v, list) and v and all(ok(a) for a in flat(v)))):
        raise LoadError(f"{where} must be a number or a list of numbers, got {v!r}"[:300])
    try:
        return np.array(v, dtype=np.float64)
    except ValueError:              # (ragged lists)
        raise LoadError(f"{where} must be a number or a list of numbers, got {v!r}"[:300]) \
            from None


def _cdict(c, key, where, default=None):
    v = c.get(key, default)
    if v is None:
        v = {} if default is None else default
    if not isinstance(v, dict):
        raise LoadError(f"{where}: config key {key!r} must be a JSON object, got "
                        f"{type(v).__name__}")
    return v


def _last_dim(c, keys, where):
    """Feature size from an input shape key (batch_shape / batch_input_shape) or None."""
    for key in keys:
        shape = c.get(key)
        if not shape:
            continue
        if not isinstance(shape, (list, tuple)):
            raise LoadError(f"{where}: config key {key!r} must be a list, got {shape!r}"[:300])
        for v in shape:     # (each size known or None: a JSON NaN is neither)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or
                                  not 0 <= v <= _MAX_DIM):
                raise LoadError(f"{where}: config key {key!r} holds an invalid size {v!r}; "
                                "sizes are ints or null"[:300])
        if len(shape) >= 3 and shape[-1] is not None:
            v = shape[-1]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= _MAX_DIM:
                raise LoadError(f"{where}: config key {key!r} has an invalid feature size "
                                f"{v!r}"[:300])
            return v
        return None
    return None


def _act_name(a, where):
    """A Keras activation config (name, or serialised function dict) -> name or None."""
    if isinstance(a, dict):  # serialised function {"class_name": "function", "config": "tanh"}
        c = a.get("config")
        if isinstance(c, str):
            a = c
        elif isinstance(c, dict):
            a = c.get("name", a.get("class_name"))
        elif c is None:
            a = a.get("class_name")
        else:
            raise LoadError(f"{where}: unsupported activation {a!r}"[:300])
    if a is not None and not isinstance(a, str):
        raise LoadError(f"{where}: unsupported activation {a!r}"[:300])
    return a


def _keras_before(version, release) -> bool:
    """Whether ``version`` (a file's keras_version) names a Keras 3 release before
    ``release`` (a tuple of ints); False where it says nothing."""
    m = re.match(r"\s*(\d{1,6})\.(\d{1,6})", str(version or ""))
    return bool(m) and int(m.group(1)) == 3 and (int(m.group(1)), int(m.group(2))) < release


def _keras_major(version, override):
    if override is not None:
        if override not in ("keras2", "keras3"):
            raise ValueError(f"hard_sigmoid must be 'keras2' or 'keras3', got {override!r}")
        return 2 if override == "keras2" else 3
    if version:
        m = re.match(r"\s*(\d{1,6})", str(version))
        if m:
            return 3 if int(m.group(1)) >= 3 else 2
    return 2


def _act_spec(a, major, where, key="activation"):
    """Keras activation config -> core activation spec (``key``: the config key it comes
    from, named in the error)."""
    a = _act_name(a, where)
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
    raise LoadError(f"{where}: {key} {a!r} is not supported inside a recurrent layer "
                    "(supported: tanh, sigmoid, hard_sigmoid, relu, linear, elu, softsign, "
                    "softplus, leaky_relu)")


def _dense_act(a, major, where):
    a = _act_name(a, where)
    a = "linear" if a is None else a.lower()
    if a == "hard_sigmoid":
        return ("hard_sigmoid", 0.2, 0.5) if major == 2 else ("hard_sigmoid", 1.0 / 6.0, 0.5)
    from ..model import activation_function
    try:
        activation_function(a)
    except ValueError:
        raise LoadError(f"{where}: unsupported activation {a!r}") from None
    return a


# ============================================================================ RNN(cell)

def _cell_spec(v, where):
    """One cell of an RNN(cell) config (a Keras config dict; in a user's spec also a flat
    dict or a (class_name, config) pair) -> (class name, config dict)."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str):
        v = {"class_name": v[0], "config": v[1]}
    if not isinstance(v, dict):
        raise LoadError(f"{where}: cell must be a Keras cell config (a JSON object), "
                        f"got {v!r}"[:300])
    cls = v.get("class_name")
    if not isinstance(cls, str):
        raise LoadError(f"{where}: cell class_name must be a string, got {cls!r}"[:300])
    reg = v.get("registered_name")
    if reg is not None and reg != cls:      # a custom class, whatever its name
        raise LoadError(f"{where}: custom cell {reg!r} is not supported (fastrnn runs the "
                        "Keras cells LSTMCell, GRUCell, SimpleRNNCell)"[:400])
    if "config" in v:
        c = _cdict(v, "config", f"{where} cell {cls!r}")
    else:                                   # flat form {"class_name": "LSTMCell", "units": 4}
        c = {k: x for k, x in v.items() if k not in ("class_name", "module", "registered_name")}
    return cls, c


def _rnn_cells(c, where):
    """The cells of a keras.layers.RNN config, [(cell class, cell config)], and whether
    they are stacked (a StackedRNNCells, or a list of cells in a user's spec)."""
    cell = c.get("cell")
    if cell is None:
        raise LoadError(f"{where}: config has no 'cell'")
    if isinstance(cell, (list, tuple)) and not (len(cell) == 2 and isinstance(cell[0], str)):
        items, stacked = _need_list(cell, f"{where}: cell"), True
    else:
        cls, cc = _cell_spec(cell, where)
        if cls == "StackedRNNCells":
            items, stacked = _need_list(cc.get("cells"), f"{where}: StackedRNNCells cells"), True
        else:
            items, stacked = [cell], False
    cells = [_cell_spec(v, where) for v in items]
    if not cells:
        raise LoadError(f"{where}: StackedRNNCells holds no cells")
    for cls, _ in cells:
        if cls not in _CELL_CLASSES:
            raise LoadError(f"{where}: unsupported cell {cls!r}; fastrnn runs RNN(cell) with "
                            "LSTMCell, GRUCell, SimpleRNNCell, or a StackedRNNCells (or list) "
                            "of them"[:400])
    return cells, stacked


def _cell_layers(c, where):
    """A keras.layers.RNN config -> the configs of the plain layers (LSTM, GRU,
    SimpleRNN: same maths as their cells) it computes, one per cell, and whether the
    cells are stacked.  Each takes its cell's config and the RNN's own keys
    (return_sequences, go_backwards, ...); of stacked cells, which Keras runs in one
    loop, each cell a step of the sequence after the one below it, every cell but the
    last returns its sequences, and only the first reads the input backwards
    (go_backwards: the layers above read its outputs, already in reading order)."""
    cells, stacked = _rnn_cells(c, where)
    out = []
    for i, (cls, cc) in enumerate(cells):
        cfg = {k: v for k, v in cc.items() if k not in _WRAPPER_KEYS}
        cfg.update({k: c[k] for k in _WRAPPER_KEYS if k in c})
        if i < len(cells) - 1:
            cfg.update(return_sequences=True, return_state=False, zero_output_for_mask=False)
        if i > 0:
            cfg.update(go_backwards=False, stateful=False)
        out.append({"class_name": _CELL_CLASSES[cls], "config": cfg, "cell": cls,
                    "name": cc.get("name")})
    return out, stacked


def _n_weights(spec, where):
    """How many arrays Keras keeps for a recurrent layer config (RNN: all its cells')."""
    cls, c = spec["class_name"], spec["config"]
    if cls == "RNN":
        return sum(_n_weights(s, where) for s in _cell_layers(c, where)[0])
    if cls.startswith("CuDNN"):
        return 3
    return 3 if _cbool(c, "use_bias", True, where) else 2


def _warn_stateful(where, cfgs=()):
    """Warn that the layer ``where`` names is stateful (once a layer: ``cfgs``, the
    configs (copies) of the layers it is built from, lose their ``stateful`` key, so
    those do not warn again)."""
    warnings.warn(f"{where} is stateful; fastrnn starts every predict() from zero states",
                  stacklevel=4)
    for cfg in cfgs:
        cfg.pop("stateful", None)


class _Builder:
    def __init__(self, store, major, dtype, num_threads, fname, ctx=None, keras_dtype=None,
                 keras_version=None):
        self.store, self.major, self.dtype, self.nt, self.fname = (
            store, major, dtype, num_threads, fname)
        self.keras_dtype = np.dtype(keras_dtype or dtype).name
        self.ctx = ctx if ctx is not None else _Ctx(fname)
        # whether a nested model's output keeps the mask it has inside: Keras 3.6 and
        # later; Keras 3.0-3.5 drop it (measured with 3.3.3, 3.4.1, 3.5.0 against 3.6.0,
        # 3.7.0, 3.8.0); a file without a version is taken as the later
        self.nested_masks_out = not _keras_before(keras_version, (3, 6))

    def stored(self, d):
        """The arrays the file holds for ``d`` (a TimeDistributed's wrapped layer: the
        outermost TimeDistributed's), or None."""
        while getattr(d, "outer", None) is not None:
            d = d.outer
        return self.store.get(d)

    def weights(self, d, n_expected):
        w = self.stored(d)
        if w is None:
            shared = "" if d.nested is None and d.outer is None else (
                "; if the model holding it (or the layer) is used in two places, Keras "
                "stored its weights once, under the first: not supported")
            raise LoadError(f"{self.fname}: no weights found for layer {d.name!r} "
                            f"({d.class_name}){shared}")
        if len(w) not in n_expected:
            raise LoadError(f"{self.fname}: layer {d.name!r} ({d.class_name}) has {len(w)} "
                            f"weight arrays, expected {' or '.join(map(str, n_expected))}")
        return w

    def check(self, d, what, arr, shape):
        if tuple(arr.shape) != tuple(shape):
            raise LoadError(f"{self.fname}: layer {d.name!r} ({d.class_name}): {what} has shape "
                            f"{tuple(arr.shape)}, expected {tuple(shape)}")

    # ---- recurrent
    def rnn(self, d, cfg, weights, in_dim, zero_output=None, name=None, label=None):
        from .. import layers as core
        from ..model import KerasRNN
        cls = d.class_name if cfg is None else cfg["class_name"]
        c = d.config if cfg is None else cfg["config"]
        where = f"layer {d.name!r} ({label or cls})"
        fwhere = f"{self.fname}: {where}"
        if c.get("time_major"):
            raise LoadError(f"{self.fname}: {where}: time_major=True is not supported")
        if c.get("stateful"):
            _warn_stateful(where)
        if "units" not in c:
            raise LoadError(f"{self.fname}: {where}: config has no 'units'")
        H = _cint(c, "units", fwhere)
        cudnn = cls.startswith("CuDNN")
        use_bias = True if cudnn else _cbool(c, "use_bias", True, fwhere)
        G = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3, "CuDNNLSTM": 4, "CuDNNGRU": 3}[cls]
        if len(weights) != (3 if use_bias else 2):
            raise LoadError(f"{self.fname}: {where} has {len(weights)} weight arrays, expected "
                            f"{3 if use_bias else 2}")
        k, rk = weights[0], weights[1]
        I = in_dim if in_dim is not None else (k.shape[0] if k.ndim == 2 else -1)
        self.check(d, "kernel", k, (I, G * H))
        self.check(d, "recurrent_kernel", rk, (H, G * H))
        b = weights[2] if use_bias else None
        # a CuDNNLSTM / CuDNNGRU's weights (a bias of both gate sets, 1-D) given a plain
        # LSTM / GRU config, as a weights file of a GPU-trained layer loaded into the CPU
        # model: converted as Keras 2's load_weights converts them
        from_cudnn = cudnn or (cls in ("LSTM", "GRU") and b is not None and b.ndim == 1
                               and b.shape[0] == 2 * G * H)
        reset_after = True
        if cls == "GRU":
            ra = _cbool(c, "reset_after", None, fwhere)
            reset_after = (from_cudnn or (b is not None and b.ndim == 2)) if ra is None else ra
            if from_cudnn and not reset_after:
                raise LoadError(f"{fwhere}: CuDNNGRU weights (a bias of {2 * G * H}) need "
                                "a GRU with reset_after=True")
        if from_cudnn:
            k, rk, b = _from_cudnn(d, self, k, rk, b, G, H, cls if cudnn else "CuDNN" + cls)
        elif use_bias:
            if cls == "GRU" and reset_after:
                self.check(d, "bias", b, (2, G * H))
            else:
                self.check(d, "bias", b, (G * H,))
        act = _act_spec(c.get("activation", "tanh"), self.major, where)
        ract = _act_spec(c.get("recurrent_activation", "sigmoid"), self.major, where,
                         "recurrent_activation")
        kw = dict(bias=use_bias, batch_first=True, dtype=self.dtype, num_threads=self.nt,
                  go_backwards=_cbool(c, "go_backwards", False, fwhere),
                  seed=core._WEIGHTS_FOLLOW)        # (loaded below, strict)
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
        # (the store's arrays are this load's alone, a file's or copies of a caller's:
        # the layer keeps them, transposed or not, instead of copying them again)
        layer.load_state_dict({n: np.ascontiguousarray(v) for n, v in sd.items()},
                              _adopt=set())
        zo = (_cbool(c, "zero_output_for_mask", False, fwhere) if zero_output is None
              else zero_output)
        return KerasRNN(layer, return_sequences=_cbool(c, "return_sequences", False, fwhere),
                        return_state=_cbool(c, "return_state", False, fwhere),
                        zero_output_for_mask=zo, name=name or d.name), H

    def rnn_cells(self, d, in_dim, masked):
        """keras.layers.RNN(cell): one layer (LSTMCell, GRUCell, SimpleRNNCell: the
        LSTM, GRU, SimpleRNN layer), or for stacked cells a list of layers, one per cell.
        ``masked``: whether a mask reaches the layer (Embedding / Masking before it)."""
        where = f"{self.fname}: layer {d.name!r} (RNN)"
        specs, stacked = _cell_layers(d.config, where)
        counts = [_n_weights(s, where) for s in specs]
        if not stacked:
            w = self.weights(d, (sum(counts),))
            return self.rnn(d, specs[0], w, in_dim, label=f"RNN({specs[0]['cell']})")
        what = f"{where} of StackedRNNCells ({', '.join(s['cell'] for s in specs)})"
        if _cbool(d.config, "return_state", False, where):
            raise LoadError(f"{what}: return_state=True is not supported (Keras returns "
                            "each cell's states, nested)")
        if d.states:
            raise LoadError(f"{what} is called with initial_state: not supported")
        if masked and len(specs) > 1 and _cbool(d.config, "go_backwards", False, where):
            raise LoadError(f"{what}: go_backwards=True on a masked input is not supported "
                            "(fastrnn runs stacked cells as a stack of layers, and the mask "
                            "reaches the layers above the first in input order, not in the "
                            "reversed order they read)")
        if d.config.get("stateful"):        # (named as the RNN, not its first cell)
            _warn_stateful(f"layer {d.name!r} (RNN of StackedRNNCells "
                           f"({', '.join(s['cell'] for s in specs)}))",
                           [s["config"] for s in specs])
        w = self.weights(d, (sum(counts),))
        names = [s["name"] for s in specs]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
            names = [f"cell_{i}" for i in range(len(specs))]
        layers, dim, pos = [], in_dim, 0
        for s, n, cname in zip(specs, counts, names):
            sub = _LayerDesc(s["cell"], s["config"], f"{d.name}/{cname}")
            layer, dim = self.rnn(sub, s, w[pos:pos + n], dim, label=s["cell"])
            layers.append(layer)
            pos += n
        return layers, dim

    def _plain(self, d, spec, key):
        """A Bidirectional's RNN(cell) layer config as its plain layer's (one cell)."""
        where = f"{self.fname}: layer {d.name!r} (Bidirectional) {key}"
        specs, stacked = _cell_layers(_cdict(spec, "config", where), where)
        if len(specs) != 1:
            raise LoadError(f"{where}: Bidirectional of StackedRNNCells "
                            f"({', '.join(s['cell'] for s in specs)}) is not supported; "
                            "stack Bidirectional layers of single cells instead")
        if stacked and _cbool(specs[0]["config"], "return_state", False, where):
            raise LoadError(f"{where} (StackedRNNCells): return_state=True is not supported")
        return {"class_name": specs[0]["class_name"], "config": specs[0]["config"]}

    def bidirectional(self, d, in_dim):
        from ..model import Bidirectional
        c = d.config
        for key in ("layer", "backward_layer"):       # (a spec's (class_name, config) pair)
            v = c.get(key)
            if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str):
                c = {**c, key: {"class_name": v[0], "config": v[1]}}
        inner = c.get("layer")
        if isinstance(inner, dict) and inner.get("class_name") == "RNN":
            inner = self._plain(d, inner, "layer")
        if isinstance(c.get("backward_layer"), dict) and \
                c["backward_layer"].get("class_name") == "RNN":
            c = {**c, "backward_layer": self._plain(d, c["backward_layer"], "backward_layer")}
        if not isinstance(inner, dict) or inner.get("class_name") not in _RNN_CLASSES:
            cls = inner.get("class_name") if isinstance(inner, dict) else inner
            raise LoadError(f"{self.fname}: layer {d.name!r} (Bidirectional) wraps unsupported "
                            f"layer {cls!r}")
        where = f"{self.fname}: layer {d.name!r} (Bidirectional)"
        fwd_cfg = {"class_name": inner["class_name"],
                   "config": dict(_cdict(inner, "config", where + " layer"))}
        back = c.get("backward_layer")
        if back is not None:
            if not isinstance(back, dict) or back.get("class_name") not in _RNN_CLASSES:
                back = back if isinstance(back, dict) else {"class_name": back}
                raise LoadError(f"{self.fname}: layer {d.name!r} (Bidirectional) has unsupported "
                                f"backward layer {back.get('class_name')!r}")
            bwd_cfg = {"class_name": back["class_name"],
                       "config": dict(_cdict(back, "config", where + " backward_layer"))}
        else:
            bc = dict(fwd_cfg["config"])
            bc["go_backwards"] = not _cbool(bc, "go_backwards", False, where)
            bwd_cfg = {"class_name": fwd_cfg["class_name"], "config": bc}
        # (one warning for the Bidirectional, naming it: each direction warned, with
        # the wrapped layer's class)
        if fwd_cfg["config"].get("stateful") or bwd_cfg["config"].get("stateful"):
            _warn_stateful(f"layer {d.name!r} (Bidirectional({fwd_cfg['class_name']}))",
                           (fwd_cfg["config"], bwd_cfg["config"]))
        rs = _cbool(fwd_cfg["config"], "return_sequences", False, where)
        w = self.weights(d, range(4, 7))
        nf = 3 if (fwd_cfg["class_name"].startswith("CuDNN")
                   or _cbool(fwd_cfg["config"], "use_bias", True, where)) else 2
        fwd, hf = self.rnn(d, fwd_cfg, w[:nf], in_dim, zero_output=rs, name=d.name + "/forward")
        bwd, hb = self.rnn(d, bwd_cfg, w[nf:], in_dim, zero_output=rs, name=d.name + "/backward")
        if bwd.return_sequences != fwd.return_sequences or bwd.return_state != fwd.return_state:
            raise LoadError(f"{self.fname}: layer {d.name!r}: forward and backward layers "
                            "disagree on return_sequences / return_state")
        mm = c.get("merge_mode", "concat")
        if not (mm is None or (isinstance(mm, str) and mm in ("concat", "sum", "mul", "ave"))):
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
        where = f"{self.fname}: layer {d.name!r} ({d.class_name})"
        use_bias = _cbool(c, "use_bias", True, where)
        w = self.weights(d, (2,) if use_bias else (1,))
        units = (_cint(c, "units", where) if c.get("units") is not None
                 else (w[0].shape[-1] if w[0].ndim == 2 else -1))
        I = in_dim if in_dim is not None else (w[0].shape[0] if w[0].ndim == 2 else -1)
        self.check(d, "kernel", w[0], (I, units))
        if use_bias:
            self.check(d, "bias", w[1], (units,))
        act = _dense_act(c.get("activation", "linear"), self.major, f"layer {d.name!r}")
        return Dense(w[0], w[1] if use_bias else None, act, name=name,
                     dtype=self.dtype), units

    def _conv_weights(self, d, c):
        """A Conv1D / Conv2D's (where, weights (kernel[, bias]), filters, groups)."""
        where = f"{self.fname}: layer {d.name!r} ({d.class_name})"
        use_bias = _cbool(c, "use_bias", True, where)
        return (where, self.weights(d, (2,) if use_bias else (1,)),
                _cint(c, "filters", where), c.get("groups") or 1)

    def _conv_layer(self, cls, d, c, w, F, groups):
        """The Conv1D / Conv2D layer ``cls`` of checked kernel ``w[0]`` (and bias)."""
        if len(w) > 1:
            self.check(d, "bias", w[1], (F,))
        act = _dense_act(c.get("activation", "linear"), self.major, f"layer {d.name!r}")
        return cls(w[0], w[1] if len(w) > 1 else None, c.get("strides", 1),
                   c.get("padding", "valid"), c.get("dilation_rate", 1), groups, act,
                   name=d.name, dtype=self.dtype)

    def conv1d(self, d, c, dim):
        from ..model import Conv1D
        where, w, F, groups = self._conv_weights(d, c)
        k = c.get("kernel_size")
        k = k[0] if isinstance(k, list) and len(k) == 1 else k
        if not isinstance(k, int) or isinstance(k, bool) or not isinstance(groups, int):
            raise LoadError(f"{where}: kernel_size and groups must be ints, got "
                            f"{c.get('kernel_size')!r}, {groups!r}"[:300])
        if groups < 1 or (dim is not None and dim % groups):
            raise LoadError(f"{where}: groups {groups} does not divide the {dim} input "
                            "channels")
        self.check(d, "kernel", w[0], (k, dim // groups if dim is not None
                                       else w[0].shape[1], F))
        return self._conv_layer(Conv1D, d, c, w, F, groups)

    def conv2d(self, d, c, dim):
        from ..model import Conv2D
        where, w, F, groups = self._conv_weights(d, c)
        k = c.get("kernel_size")
        k = [k, k] if isinstance(k, int) and not isinstance(k, bool) else k
        if not (isinstance(k, list) and len(k) == 2 and all(
                isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in k)):
            raise LoadError(f"{where}: kernel_size must be two positive ints, got "
                            f"{c.get('kernel_size')!r}"[:300])
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or (
                dim is not None and dim % groups) or F % groups:
            raise LoadError(f"{where}: groups {groups!r} must divide the "
                            f"{dim if dim is not None else '?'} input channels and the {F} "
                            "filters"[:300])
        self.check(d, "kernel", w[0], (k[0], k[1], dim // groups if dim is not None
                                       else w[0].shape[2] if w[0].ndim == 4 else -1, F))
        return self._conv_layer(Conv2D, d, c, w, F, groups)

    def act_layer(self, d, dim, rank):
        """A ReLU / LeakyReLU / ELU / ThresholdedReLU layer (fastrnn's Activation of the
        matching spec) or a PReLU (its alpha checked against an input of ``rank`` axes)."""
        from ..model import Activation, PReLU
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        if cls == "PReLU":
            (alpha,) = self.weights(d, (1,))
            if rank is not None and alpha.ndim != rank - 1:
                raise LoadError(f"{where}: alpha has shape {tuple(alpha.shape)}, expected "
                                f"{rank - 1} axes for a {rank}-D input")
            shared = c.get("shared_axes")
            shared = [shared] if isinstance(shared, int) else shared
            if shared is not None and not (isinstance(shared, list) and all(
                    isinstance(a, int) and not isinstance(a, bool)
                    and 1 <= a <= alpha.ndim for a in shared)):
                raise LoadError(f"{where}: shared_axes must be axes 1 .. {alpha.ndim} of the "
                                f"input, got {c.get('shared_axes')!r}"[:300])
            if any(alpha.shape[a - 1] != 1 for a in shared or ()) or (
                    dim is not None and alpha.ndim and alpha.shape[-1] not in (1, dim)):
                raise LoadError(f"{where}: alpha has shape {tuple(alpha.shape)}, not one for "
                                f"shared_axes {shared} and {dim} features"[:300])
            return PReLU(alpha, name=d.name, dtype=self.dtype)
        if cls == "ReLU":
            mx = c.get("max_value")
            ns = _cnum(c, "negative_slope", 0.0, where)
            th = _cnum(c, "threshold", 0.0, where)
            mx = None if mx is None else _cfloat(c, "max_value", 0.0, where)
            if (mx is not None and mx < 0) or ns < 0 or th < 0:
                raise LoadError(f"{where}: max_value, negative_slope and threshold must be "
                                f">= 0 (as Keras checks them), got {mx!r}, {ns!r}, {th!r}")
            spec = "relu" if (ns, mx, th) == (0.0, None, 0.0) else ("relu", ns, mx, th)
        elif cls == "LeakyReLU":
            # (Keras 3's negative_slope, tf.keras 2's alpha; both default to 0.3)
            key = "negative_slope" if "negative_slope" in c else "alpha"
            spec = ("leaky_relu", _cnum(c, key, 0.3, where))
        elif cls == "ELU":
            spec = ("elu", _cnum(c, "alpha", 1.0, where))
        else:
            spec = ("thresholded_relu", _cnum(c, "theta", 1.0, where))
        return Activation(spec, name=d.name)

    def scale_layer(self, d, dim, rank):
        """A Rescaling or a Normalization layer (its statistics the file's weights, or
        its config's ``mean`` / ``variance``); the mask passes on in Keras 3 files."""
        from ..model import Normalization, Rescaling, _axes
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        keeps = self.major == 3
        try:
            if cls == "Rescaling":
                scale = _number_array(c.get("scale", 1.0), where + " scale")
                offset = _number_array(c.get("offset", 0.0), where + " offset")
                if self.major == 2:
                    # (tf.keras 2 makes them float32 tensors before its cast to the
                    # layer's dtype: a float64 model scales by the rounded numbers)
                    scale, offset = (a.astype(np.float32) for a in (scale, offset))
                for k, a in (("scale", scale), ("offset", offset)):
                    if a.ndim and dim is not None and a.shape[-1] not in (1, dim):
                        raise LoadError(f"{where}: {k} of shape {a.shape} for an input of "
                                        f"{dim} features")
                return Rescaling(scale, offset, keeps, name=d.name, dtype=self.dtype)
            axis = c.get("axis", -1)
            if isinstance(axis, list):
                axis = tuple(axis)
            given = _stats_in_config(c)
            if given:
                mean = _number_array(c.get("mean"), where + " mean")
                var = _number_array(c.get("variance"), where + " variance")
                w = self.stored(d) or []
                if w:
                    raise LoadError(f"{where}: the file holds {len(w)} arrays for a layer "
                                    "given its mean and variance in its config")
            else:
                w = self.weights(d, (2, 3))        # (mean, variance[, count])
                mean, var = w[0], w[1]
            layer = Normalization(mean, var, axis, _cbool(c, "invert", False, where), keeps,
                                  adapted=not given, name=d.name, dtype=self.dtype)
        except LoadError:
            raise
        except ValueError as e:                 # (the layer's own checks)
            raise LoadError(f"{where}: {e}"[:400]) from None
        keep = None
        if rank is not None and layer.axis:
            try:
                keep = _axes(layer.axis, rank, d.name)
            except ValueError as e:
                raise LoadError(f"{where}: {e}"[:400]) from None
        last = layer.axis == [-1] or keep == [rank - 1 if rank else -1]
        if last and dim is not None and layer.mean.ndim == 1 and layer.mean.size not in (1, dim):
            raise LoadError(f"{where}: statistics of {layer.mean.size} features for an input "
                            f"of {dim}")
        return layer

    def image_layer(self, d, dim):
        """A Conv2D, 2-D pooling, Reshape or Permute layer, and the feature size after
        it (None: unknown)."""
        from ..model import GlobalPooling2D, Permute, Pooling2D, Reshape
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        try:
            if cls == "Reshape":
                layer = Reshape(c.get("target_shape"), name=d.name)
                last = layer.target_shape[-1] if layer.target_shape else -1
                return layer, (None if last == -1 else last)
            if cls == "Permute":
                layer = Permute(c.get("dims"), name=d.name)
                return layer, (dim if layer.dims[-1] == len(layer.dims) else None)
            _channels_last(c, where)
            if cls == "Conv2D":
                return self.conv2d(d, c, dim), _cint(c, "filters", where)
            if cls in ("ZeroPadding2D", "Cropping2D"):
                return self.pad_layer(d, 2), dim
            if cls.startswith("Global"):
                return GlobalPooling2D("max" if cls == "GlobalMaxPooling2D" else "average",
                                       _cbool(c, "keepdims", False, where), name=d.name), dim
            op = "max" if cls == "MaxPooling2D" else "average"
            return Pooling2D(op, c.get("pool_size", 2), c.get("strides"),
                             c.get("padding", "valid"), name=d.name), dim
        except LoadError:
            raise
        except ValueError as e:         # (the layer's own checks of the config)
            raise LoadError(f"{where}: {e}"[:400]) from None

    def shape_layer(self, d, dim, rank=None):
        """A pooling, Flatten, RepeatVector, Conv1D or normalisation layer, and the
        feature size after it (None where it follows from the steps), for an input of
        ``rank`` axes (None: unknown)."""
        from ..model import Flatten, GlobalPooling1D, Pooling1D, RepeatVector
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        fmt = c.get("data_format") or "channels_last"
        if cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D", "Flatten") and \
                fmt not in ("channels_last", "channels_first"):
            raise LoadError(f"{where}: unsupported data_format {fmt!r}"[:300])
        if cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
            op = "average" if cls == "GlobalAveragePooling1D" else "max"
            return (GlobalPooling1D(op, fmt, _cbool(c, "keepdims", False, where), name=d.name),
                    dim if fmt == "channels_last" else None)
        if cls == "Flatten":
            return Flatten(fmt, name=d.name), None
        if cls in ("Conv1D", "MaxPooling1D", "AveragePooling1D"):
            _channels_last(c, where)
            try:
                if cls != "Conv1D":
                    op = "max" if cls == "MaxPooling1D" else "average"
                    return Pooling1D(op, c.get("pool_size", 2), c.get("strides"),
                                     c.get("padding", "valid"), name=d.name), dim
                return self.conv1d(d, c, dim), _cint(c, "filters", where)
            except LoadError:
                raise
            except ValueError as e:         # (the layer's own checks of the config)
                raise LoadError(f"{where}: {e}") from None
        if cls == "RepeatVector":
            return RepeatVector(_cint(c, "n", where), name=d.name), dim
        if cls in ("ZeroPadding1D", "Cropping1D"):
            return self.pad_layer(d, 1), dim
        return self.norm_layer(d, dim, rank)

    def depthwise(self, d, dim):
        """A DepthwiseConv1D / 2D (fastrnn's Conv1D / Conv2D with one group a channel, its
        kernel (taps..., C, depth_multiplier) as (taps..., 1, C * depth_multiplier)) or
        a SeparableConv1D / 2D (that without bias and activation, then a 1 x 1
        convolution with them: a list of two layers), and the channels after it."""
        from ..model import Conv1D, Conv2D
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        two = cls.endswith("2D")
        conv = Conv2D if two else Conv1D
        _channels_last(c, where)
        sep = cls.startswith("Separable")
        use_bias = _cbool(c, "use_bias", True, where)
        w = self.weights(d, ((3,) if use_bias else (2,)) if sep else
                         ((2,) if use_bias else (1,)))
        dk = w[0]
        taps = 2 if two else 1
        if dk.ndim != taps + 2:
            raise LoadError(f"{where}: depthwise kernel has shape {tuple(dk.shape)}, expected "
                            f"{taps + 2} axes (taps..., channels, depth_multiplier)")
        C, dm = dk.shape[-2], dk.shape[-1]
        if dim is not None and C != dim:
            raise LoadError(f"{where}: depthwise kernel of {C} channels for an input of {dim}")
        dm_cfg = c.get("depth_multiplier", 1)
        if dm_cfg != dm:
            raise LoadError(f"{where}: depthwise kernel of depth_multiplier {dm}, the config "
                            f"says {dm_cfg!r}"[:300])
        ks = c.get("kernel_size")
        ks = [ks] * taps if isinstance(ks, int) else ks
        if ks is not None and list(ks) != list(dk.shape[:-2]):
            raise LoadError(f"{where}: depthwise kernel has shape {tuple(dk.shape)}, the "
                            f"config's kernel_size is {c.get('kernel_size')!r}"[:300])
        if c.get("padding") == "causal" and (not sep or self.major == 3):
            # (Keras refuses it there; tf.keras 2's SeparableConv1D takes it)
            raise LoadError(f"{where}: padding 'causal' is not one Keras takes for this "
                            "layer")
        act = _dense_act(c.get("activation", "linear"), self.major, f"layer {d.name!r}")
        kernel = dk.reshape(dk.shape[:-2] + (1, C * dm))
        try:
            first = conv(kernel, None if sep else (w[1] if use_bias else None),
                         c.get("strides", 1), c.get("padding", "valid"),
                         c.get("dilation_rate", 1), C, "linear" if sep else act,
                         name=f"{d.name}/depthwise" if sep else d.name, dtype=self.dtype)
            if not sep:
                if use_bias:
                    self.check(d, "bias", w[1], (C * dm,))
                return first, C * dm
            pk = w[1]
            F = _cint(c, "filters", where)
            self.check(d, "pointwise_kernel", pk, (1,) * taps + (C * dm, F))
            if use_bias:
                self.check(d, "bias", w[2], (F,))
            point = conv(pk, w[2] if use_bias else None, 1, "valid", 1, 1, act, name=d.name,
                         dtype=self.dtype)
        except LoadError:
            raise
        except ValueError as e:         # (the layers' own checks of the config)
            raise LoadError(f"{where}: {e}"[:400]) from None
        return [first, point], F

    def upsampling(self, d):
        """An UpSampling1D / UpSampling2D (nearest) layer."""
        from ..model import UpSampling
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        _channels_last(c, where)
        interp = c.get("interpolation", "nearest")
        if interp != "nearest":
            raise LoadError(f"{where}: interpolation {interp!r} is not supported (only "
                            "nearest)"[:300])
        try:
            return UpSampling(c.get("size", 2), 2 if cls.endswith("2D") else 1, name=d.name)
        except ValueError as e:
            raise LoadError(f"{where}: {e}"[:400]) from None

    def pad_layer(self, d, rank):
        """A ZeroPadding1D / 2D or Cropping1D / 2D layer (channels_last)."""
        from ..model import Cropping, ZeroPadding
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        _channels_last(c, where)
        try:
            if cls.startswith("ZeroPadding"):
                return ZeroPadding(c.get("padding", 1), rank, name=d.name)
            return Cropping(c.get("cropping", 1 if rank == 1 else 0), rank, name=d.name)
        except ValueError as e:
            raise LoadError(f"{where}: {e}"[:400]) from None

    def norm_layer(self, d, dim, rank=None):
        """A LayerNormalization or BatchNormalization layer, and the feature size after
        it (unchanged); its weights checked against ``dim`` where its axis is the last of
        an input of ``rank`` axes (-1, or rank - 1; an axis 2 of a 4-D input is not)."""
        from ..model import BatchNormalization, LayerNormalization
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        center = _cbool(c, "center", True, where)
        scale = _cbool(c, "scale", True, where)
        eps = _cfloat(c, "epsilon", 1e-3, where)
        if not (eps >= 0 and math.isfinite(eps)):
            raise LoadError(f"{where}: epsilon must be a finite number >= 0, got {eps!r}")
        axis = c.get("axis", -1)
        axes = axis if isinstance(axis, list) else [axis]
        if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise LoadError(f"{where}: axis must be an int or a list of ints, got "
                            f"{axis!r}"[:300])
        last = len(axes) == 1 and dim is not None and (
            axes[0] == -1 or (rank is not None and axes[0] == rank - 1))
        if cls == "LayerNormalization":
            rms = _cbool(c, "rms_scaling", False, where)
            # (Keras makes gamma for rms_scaling whatever scale says, and no beta)
            center, scale = center and not rms, scale or rms
            n = int(center) + int(scale)
            w = self.weights(d, (n,)) if n else (self.stored(d) or [])
            if len(w) != n:
                raise LoadError(f"{where}: the file holds {len(w)} weight arrays for a "
                                "layer that takes none")
            gamma = w[0] if scale else None
            beta = w[-1] if center else None
            if gamma is not None and beta is not None and gamma.shape != beta.shape:
                raise LoadError(f"{where}: gamma {gamma.shape} and beta {beta.shape} differ")
            for k, v in (("gamma", gamma), ("beta", beta)):
                if v is not None and last:
                    self.check(d, k, v, (dim,))
            return LayerNormalization(gamma, beta, axes, eps, rms, name=d.name,
                                      dtype=self.dtype), dim
        if len(axes) != 1:
            raise LoadError(f"{where}: only one axis is supported, got {axis!r}"[:300])
        if c.get("renorm") or c.get("synchronized"):
            raise LoadError(f"{where}: renorm / synchronized BatchNormalization is not "
                            "supported")
        w = self.weights(d, (2 + int(center) + int(scale),))
        k = 0
        gamma = w[k] if scale else None
        k += int(scale)
        beta = w[k] if center else None
        k += int(center)
        mean, var = w[k], w[k + 1]
        n = mean.size
        for what, v in (("gamma", gamma), ("beta", beta), ("moving_mean", mean),
                        ("moving_variance", var)):
            if v is not None:
                self.check(d, what, v, (dim,) if last else (n,))
        return BatchNormalization(mean, var, gamma, beta, axes[0], eps, name=d.name,
                                  dtype=self.dtype), dim

    def merge(self, d, dims, ranks, masked):
        """A merge layer of the model, and the feature size after it (None: unknown),
        for inputs of ``dims`` features and ``ranks`` (None: unknown), ``masked`` or not:
        checked here where they are known, as Keras checks them."""
        from .. import model as M
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        if cls == "Subtract" and len(dims) != 2:
            raise LoadError(f"{where} takes exactly 2 inputs, given {len(dims)}")
        # a tf.keras 2 file's merge whose inputs' masks may make tf.keras 2's output or
        # mask differ from Keras 3's (d.k2_merge_same: from the graph's masks; None, not
        # known: whenever a mask reaches it) runs with tf.keras 2's rules
        keras2 = self.major == 2 and cls != "Dot" and any(masked) and \
            not getattr(d, "k2_merge_same", None)
        masks = "keras2" if keras2 else "keras3"
        known = [v for v in dims if v is not None]
        rank = ranks[0] if None not in ranks and len(set(ranks)) == 1 else None
        if cls == "Concatenate":
            axis = c.get("axis", -1)
            if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
                raise LoadError(f"{where}: axis must be an int other than the batch axis 0, "
                                f"got {axis!r}"[:300])
            if None not in ranks and rank is None:
                raise LoadError(f"{where} needs inputs of one rank, given tensors of ranks "
                                f"{list(ranks)}")
            if rank is not None and not (-rank < axis < rank and axis != 0):
                raise LoadError(f"{where}: axis {axis} is out of range (or the batch axis) "
                                f"for its {rank}-D inputs")
            last = axis == -1 or (rank is not None and axis == rank - 1)
            dim = sum(known) if last and len(known) == len(dims) else None
            return M.Concatenate(axis, name=d.name, masks=masks), dim
        if cls == "Dot":
            return self.dot(d, dims, ranks, where)
        if len(set(known) - {1}) > 1:
            raise LoadError(f"{where}: inputs of {dims} features cannot be merged (sizes "
                            "must agree or be 1)")
        if None not in ranks and rank is None and all(masked):
            raise LoadError(f"{where} merges masked tensors of different ranks "
                            f"{list(ranks)}: not supported (Keras gives no mask for them)")
        if keras2 and rank is None and any(
                m and (r is None or r < max(x for x in ranks if x is not None))
                for r, m in zip(ranks, masked)):
            raise LoadError(f"{where} merges tensors of ranks {list(ranks)}, a lower-rank "
                            "(or unknown-rank) one masked: not supported for a tf.keras 2 "
                            "file (tf.keras 2 joins the masks as they are)")
        dim = max(known) if len(known) == len(dims) else None
        return getattr(M, cls)(name=d.name, masks=masks), dim

    def dot(self, d, dims, ranks, where):
        """A Dot layer for inputs of ``dims`` features (last axis) and ``ranks`` (None:
        unknown), checked where they are known, and its output's last axis (None:
        unknown)."""
        from .. import model as M
        c = d.config
        if len(dims) != 2:
            raise LoadError(f"{where} takes exactly 2 inputs, given {len(dims)}")
        axes = c.get("axes", -1)
        ok = lambda a: isinstance(a, int) and not isinstance(a, bool)
        if not (ok(axes) or (isinstance(axes, (list, tuple)) and len(axes) == 2 and
                             all(ok(a) for a in axes))):
            raise LoadError(f"{where}: axes must be an int or a pair of ints, got "
                            f"{axes!r}"[:300])
        normalize = _cbool(c, "normalize", False, where)
        # (the norm's floor: Keras 3's backend.epsilon(), 1e-7; tf.keras 2's
        # l2_normalize floors the squared norm at 1e-12)
        layer = M.Dot(axes if ok(axes) else tuple(axes), normalize,
                      1e-6 if self.major == 2 else 1e-7, name=d.name)
        if None in ranks:
            return layer, None
        try:
            a0, a1 = layer._resolve(*ranks)
        except ValueError as e:
            raise LoadError(f"{where}: {str(e).split(': Dot ', 1)[1]}") from None
        r0, r1 = ranks
        d0 = dims[0] if a0 == r0 - 1 else None
        d1 = dims[1] if a1 == r1 - 1 else None
        if d0 is not None and d1 is not None and d0 != d1:
            raise LoadError(f"{where}: axes={layer._show_axes()}: the sizes along the axes "
                            f"differ: {d0} (axis {a0} of the first input) and {d1} (axis {a1} "
                            "of the second)")
        if r0 == 2 and r1 == 2:
            return layer, 1
        if r1 > 2:
            return layer, (dims[1] if a1 != r1 - 1 else None)
        return layer, (dims[0] if a0 != r0 - 1 else None)

    def attention(self, d, dims, ranks):
        """An attention layer of the model (its call's options: return_attention_scores,
        use_causal_mask), and its output's feature size, for inputs [query, value(, key)]
        of ``dims`` features and ``ranks`` (None: unknown)."""
        from .. import model as M
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        opts = dict(getattr(d, "options", None) or {})
        call = dict(return_attention_scores=bool(opts.get("return_attention_scores")),
                    use_causal_mask=bool(opts.get("use_causal_mask")), name=d.name)
        # a tf.keras 2 call (its inbound node's form): tf.keras 2's semantics, where they
        # differ from Keras 3's (MultiHeadAttention's masking, a float64 AdditiveAttention)
        k2 = bool(getattr(d, "keras2_call", False))
        if cls in ("Attention", "AdditiveAttention") and c.get("causal") is not None:
            # (the constructor's `causal` of tf.keras 2 <= 2.9, kept in their configs and
            # honoured by tf.keras 2.21's loader, which no longer writes it; Keras 3 rejects
            # the key)
            if not k2 and c.get("causal") is not False:
                raise LoadError(f"{where}: config key causal={c.get('causal')!r} in a Keras 3 "
                                "config: not supported (Keras 3 has no such argument; "
                                "use_causal_mask is a call argument there)"[:300])
            if _cbool(c, "causal", False, where):
                call["use_causal_mask"] = True
        if not 2 <= len(dims) <= 3:
            raise LoadError(f"{where} takes [query, value] or [query, value, key], given "
                            f"{len(dims)} tensors")
        if any(r is not None and r != 3 for r in ranks):
            raise LoadError(f"{where}: inputs of ranks {ranks}: fastrnn supports attention "
                            "over sequences (batch, steps, features) only")
        qd, vd = dims[0], dims[1]
        kd = dims[2] if len(dims) > 2 else vd
        dim = vd
        if cls in ("Attention", "AdditiveAttention"):
            if qd is not None and kd is not None and qd != kd:
                raise LoadError(f"{where}: query of {qd} features and key of {kd}: they "
                                "must agree")
            use_scale = _cbool(c, "use_scale", cls == "AdditiveAttention", where)
            mode = c.get("score_mode", "dot") if cls == "Attention" else None
            if cls == "Attention" and mode not in ("dot", "concat"):
                raise LoadError(f"{where}: score_mode {mode!r} is not supported ('dot', "
                                "'concat')"[:300])
            n = int(use_scale) + int(mode == "concat")
            w = self.weights(d, (n,)) if n else []
            if cls == "AdditiveAttention":
                if use_scale and qd is not None:
                    self.check(d, "scale", w[0], (qd,))
                return M.AdditiveAttention(w[0] if use_scale else None, **call,
                                           float32_tanh=not k2, dtype=self.dtype), dim
            for k, a in enumerate(w):
                self.check(d, "scale" if use_scale and k == 0 else "concat_score_weight",
                           a, ())
            return M.Attention(w[0] if use_scale else None, mode,
                               w[-1] if mode == "concat" else None, **call,
                               dtype=self.dtype), dim
        # MultiHeadAttention
        axes = c.get("attention_axes")
        if axes not in (None, 1, -2, [1], [-2], (1,), (-2,)):
            raise LoadError(f"{where}: attention_axes={axes!r} is not supported (fastrnn "
                            "attends over the steps, axis 1: None)"[:300])
        for k in ("use_gate",):
            if c.get(k):
                raise LoadError(f"{where}: {k}=True is not supported")
        if c.get("sliding_window") is not None:
            raise LoadError(f"{where}: sliding_window={c.get('sliding_window')!r} is not "
                            "supported"[:300])
        heads = _cint(c, "num_heads", where)
        kdim = _cint(c, "key_dim", where)
        vdim = _cint(c, "value_dim", where, default=kdim) if c.get("value_dim") else kdim
        bias = _cbool(c, "use_bias", True, where)
        out_shape = c.get("output_shape")
        if out_shape is None or out_shape == [] or out_shape == ():
            odim = qd
        elif isinstance(out_shape, int) and not isinstance(out_shape, bool):
            odim = out_shape
        elif isinstance(out_shape, (list, tuple)) and len(out_shape) == 1 and \
                isinstance(out_shape[0], int) and not isinstance(out_shape[0], bool):
            odim = out_shape[0]
        else:
            raise LoadError(f"{where}: output_shape={out_shape!r} is not supported (None or "
                            "one size)"[:300])
        w = self.weights(d, (8,) if bias else (4,))
        names = ("query", "key", "value", "output")
        ks = w[0::2] if bias else w
        bs = w[1::2] if bias else [None] * 4
        ins = (qd, kd, vd)
        for k, (nm, a) in enumerate(zip(names, ks)):
            want = ((ins[k], heads, vdim if nm == "value" else kdim) if nm != "output"
                    else (heads, vdim, odim))
            if a.ndim != 3 or any(x is not None and x != y for x, y in zip(want, a.shape)):
                raise LoadError(f"{where}: {nm} kernel has shape {tuple(a.shape)}, expected "
                                f"{tuple('?' if x is None else x for x in want)}")
        # (Keras 3.15 with JAX: a query step whose every value step is masked averages the
        # values when the layer runs jax's dot_product_attention, and gets zero weights
        # when it runs its Softmax layer instead: returning the scores, or dropout > 0.
        # tf.keras 2 always runs its Softmax layer, which adds -1e9 to the masked scores
        # (softmax_robust_masking: sets them to -1e9) and zeroes no weights)
        zero = not k2 and (call["return_attention_scores"] or
                           _cfloat(c, "dropout", 0.0, where) > 0)
        adds = k2 and not _cbool(c, "softmax_robust_masking", False, where)
        layer = M.MultiHeadAttention(*ks, *bs, **call, zero_masked=zero, additive_mask=adds,
                                     dtype=self.dtype)
        for nm in names:
            b = getattr(layer, nm + "_bias")
            if b is not None and b.shape != (getattr(layer, nm + "_kernel").shape[1:]
                                             if nm != "output" else (layer.output_kernel.shape[2],)):
                raise LoadError(f"{where}: {nm} bias has shape {b.shape}")
        return layer, layer.output_kernel.shape[2]

    def softmax(self, d, rank, where):
        """A Softmax layer (its ``axis``: an int or a list of them, not the batch axis),
        masking as the file's Keras does: Keras 3 sets the masked entries to -1e9 and
        zeroes them after; tf.keras 2 adds -1e9 (``robust_masking``: sets it)."""
        from ..model import Softmax
        c = d.config
        axis = c.get("axis", -1)
        ok = lambda a: isinstance(a, int) and not isinstance(a, bool)
        if not (ok(axis) or (isinstance(axis, (list, tuple)) and axis and
                             all(ok(a) for a in axis))):
            raise LoadError(f"{where}: axis must be an int or a list of ints, got "
                            f"{axis!r}"[:300])
        if self.major == 2:
            masking = "where" if _cbool(c, "robust_masking", False, where) else "add"
        else:
            if c.get("robust_masking") is not None:
                raise LoadError(f"{where}: config key robust_masking in a Keras 3 config: "
                                "not supported (Keras 3 has no such argument)")
            masking = "keras3"
        layer = Softmax(axis if ok(axis) else tuple(axis), masking, name=d.name)
        if rank is not None:
            try:
                layer._axes(rank)
            except ValueError as e:
                raise LoadError(f"{where}: {str(e).split(': Softmax ', 1)[1]}") from None
        return layer

    def wrapped(self, d, icls, ic, iname, dim, is_masked, rank):
        """The layer a TimeDistributed ``d`` wraps (other than Dense, Dropout and
        Activation), built as that layer on one step of ``d``'s input (``rank`` - 1 axes;
        its weights are ``d``'s), and its output's feature size."""
        from ..model import _reads_mask
        where = f"{self.fname}: layer {d.name!r} (TimeDistributed of {icls})"
        if icls not in _SUPPORTED or icls == "InputLayer" \
                or icls in _MERGE_LAYERS or icls in _ATTENTION_LAYERS:
            raise LoadError(f"{where}: not supported inside TimeDistributed; supported: "
                            "the one-input layers fastrnn loads (Dense, Conv1D, Conv2D, "
                            "pooling, Flatten, normalisation, Embedding, recurrent, ...)")
        inner = _LayerDesc(icls, ic, d.name)
        inner.nested, inner.order, inner.outer = d.nested, d.order, d
        il, dim = self.layer(inner, (dim,), False, (None if rank is None else rank - 1,))
        chain = il if isinstance(il, list) else [il]
        if any(l.n_outputs() != 1 for l in chain):
            raise LoadError(f"{where}: a wrapped layer of several outputs (return_state, "
                            "merge_mode=None) is not supported")
        # (tf.keras 2 hands the wrapped layer the input's mask folded as the steps are,
        # TimeDistributed(masks="keras2"), which a layer that does not support masking
        # refuses there (Layer.compute_mask's TypeError), and a reader needs as a mask of
        # the steps of each step: an input of 4+ axes; Keras 3 one step's (B,) mask)
        if self.major == 2 and is_masked and not all(map(_k2_takes_mask, chain)):
            raise LoadError(f"{where} reads a masked tensor: not supported (tf.keras 2 "
                            "refuses a mask for it: the layer does not support masking)")
        if is_masked and any(_reads_mask(l) for l in chain) and (
                self.major != 2 or rank is None or rank < 4):
            raise LoadError(f"{where} reads a masked tensor: not supported (Keras 3 hands "
                            "the wrapped layer one step's (B,) mask, tf.keras 2 the steps' "
                            "folded (B*T,) mask)")
        for l in chain:     # (named after the wrapped layer, not the TimeDistributed)
            l.name = iname + l.name[len(d.name):] if l.name.startswith(d.name) else iname
        return il, dim

    def op(self, d, in_dims, in_ranks):
        """An operation as fastrnn.model.Op, and its output's feature size, from runs on
        random inputs of the shapes Keras 3 recorded for its tensors (else of their ranks
        and feature sizes): the batch 3 with the unknown sizes 16, then 17 (a size that
        follows an unknown one is unknown), and the first sample alone, which must give
        the first sample's output (an operation across the batch is refused)."""
        from .._model_ops import WHOLE_AXIS, Op
        where = f"{self.fname}: operation {d.name!r} ({d.op})"
        # (Keras 3: its config's attributes, those at a default None aside but axis=None;
        # tf.keras 2: its call's keyword arguments)
        c = d.op_attrs if d.op_attrs is not None else {
            k: v for k, v in d.config.items() if k not in ("name", "trainable")
            and (k != "dtype" or d.op == "Cast") and (v is not None or k == "axis")}
        shapes = []
        for k, shape in enumerate(d.op_shapes):
            shape = shape or (d.in_shapes[k] if k < len(d.in_shapes) else None)
            rank = len(shape) if shape else (in_ranks[k] if k < len(in_ranks) else None)
            if rank is None or rank < 1:
                raise LoadError(f"{where}: the shape of its input {k} is not known")
            if shape and not all(v is None or (isinstance(v, int) and not isinstance(
                    v, bool) and v >= 0) for v in shape):
                raise LoadError(f"{where}: input {k} has the shape {_show(shape)}"[:300])
            if not shape:
                shape = [None] * rank
                if rank > 1 and in_dims[k] is not None:
                    shape[-1] = in_dims[k]
            shapes.append(list(shape))
        _fill_sizes(d.op, shapes)
        try:
            layer = Op(d.op, d.op_args, c, ranks=[len(v) for v in shapes], name=d.name)
        except ValueError as e:
            raise LoadError(f"{where}: {e}") from None
        # (a slice of the batch that a batch of 3 leaves as it is, h[:3], by its key)
        key = d.op_args[1] if d.op == "GetItem" else None
        first = key[0] if isinstance(key, list) and key else key
        slices_batch = key is not None and first not in WHOLE_AXIS
        rng = np.random.default_rng(0)
        outs = []
        for fill in (16, 17):
            dims = [[3] + [fill if v is None else v for v in sh[1:]] for sh in shapes]
            if sum(int(np.prod(v)) for v in dims) > 1 << 23:
                raise LoadError(f"{where}: its inputs are too large to check at load "
                                f"({dims})"[:300])
            xs = [rng.uniform(0.5, 1.5, v).astype(np.float32) for v in dims]
            try:
                with np.errstate(all="ignore"):
                    y = layer.call(xs)[0]
                    y1 = layer.call([x[:1] for x in xs])[0]
            except ValueError as e:
                raise LoadError(f"{where} does not run on its inputs' shapes (unknown sizes "
                                f"taken as {fill}): {e}"[:400]) from None
            if y.ndim == 0 or y.shape[0] != 3 or y1.shape != (1,) + y.shape[1:] or \
                    not np.allclose(y1, y[:1], rtol=1e-5, atol=1e-6, equal_nan=True) or \
                    slices_batch:
                raise LoadError(f"{where} acts across the batch (its first axis): not "
                                "supported (fastrnn runs a model's samples apart)")
            outs.append(y.shape)
        layer.shape = [None] + [a if a == b else None for a, b in zip(outs[0][1:], outs[1][1:])]
        return layer, (layer.shape[-1] if len(outs[0]) > 1 else None)

    def fold(self, d, is_masked, in_ranks):
        """The fold or the unfold around the layers of a TimeDistributed's model."""
        from ..model import FoldTime, UnfoldTime
        td = d.name.rpartition("/")[0] if d.class_name == _FOLD else d.name
        where = f"{self.fname}: layer {td!r} (TimeDistributed of a model)"
        if d.class_name == _FOLD:
            if is_masked:
                raise LoadError(f"{where} reads a masked tensor: not supported (" + (
                    "tf.keras 2 hands the model the mask folded as the steps are"
                    if self.major == 2 else "Keras 3 hands the model one step's (B,) mask")
                                + ")")
            if in_ranks and in_ranks[0] is not None and in_ranks[0] < 3:
                raise LoadError(f"{where} reads a tensor of rank {in_ranks[0]}; it needs "
                                "(B, T, ...)")
            return FoldTime(name=d.name)
        # (tf.keras 2 passes the mask of the model's output on, Keras 3 drops it)
        return UnfoldTime(name=d.name, masks="keras2" if self.major == 2 else "keras3")

    def layer(self, d, in_dims, is_masked, in_ranks=(), in_masked=()):
        """The fastrnn layer (stacked cells: a list of them) for a call of Keras layer
        ``d`` on tensors of ``in_dims`` features and ``in_ranks`` (None: unknown;
        ``is_masked``: whether a mask reaches it; ``in_masked``: each input's), and the
        feature size of its (first) output."""
        from ..model import Activation, Dropout, Embedding, Masking, TimeDistributed
        c, cls = d.config, d.class_name
        where = f"{self.fname}: layer {d.name!r} ({cls})"
        dim = in_dims[0] if in_dims else None
        if dim is None:
            dim = _last_dim(c, ("batch_input_shape", "batch_shape"), where)
        if cls == _FOLD or d.unfold:
            return self.fold(d, is_masked, in_ranks), dim
        if d.is_op:
            return self.op(d, in_dims, in_ranks)
        if cls == "Embedding":
            w = self.weights(d, (1,))
            V, E = c.get("input_dim"), c.get("output_dim")
            if V is not None and E is not None:
                self.check(d, "embeddings", w[0],
                           (_cint(c, "input_dim", where), _cint(c, "output_dim", where)))
            elif w[0].ndim != 2:
                raise LoadError(f"{self.fname}: layer {d.name!r}: embeddings must be 2-D")
            layer = Embedding(w[0], mask_zero=_cbool(c, "mask_zero", False, where),
                              name=d.name, dtype=self.dtype)
            dim = w[0].shape[1]
        elif cls == "Masking":
            layer = Masking(_cfloat(c, "mask_value", 0.0, where), name=d.name)
        elif cls == "Dense":
            layer, dim = self.dense(d, c, dim, d.name)
        elif cls == "Activation":
            layer = Activation(_dense_act(c.get("activation"), self.major,
                                          f"layer {d.name!r}"), name=d.name)
        elif cls == "Softmax":
            layer = self.softmax(d, in_ranks[0] if in_ranks else None, where)
        elif cls in _NOOP_CLASSES:
            # (tf.keras 2's Identity does not support masking: it ends a mask)
            layer = Dropout(_cfloat(c, "rate", 0.0, where), name=d.name,
                            keeps_mask=not (cls == "Identity" and self.major == 2))
        elif cls == "TimeDistributed":
            inner = _cdict(c, "layer", where)
            icls = inner.get("class_name")
            if not isinstance(inner.get("config"), dict):
                raise LoadError(f"{where}: the wrapped layer has no config (a JSON object)")
            ic = inner["config"]
            iname = ic.get("name", "dense")
            if not isinstance(iname, str):
                raise LoadError(f"{where}: inner layer name must be a string")
            if not isinstance(icls, str):
                raise LoadError(f"{where}: inner layer class_name must be a string, "
                                f"got {icls!r}"[:300])
            if icls == "Dense":
                il, dim = self.dense(d, ic, dim, iname)
            elif icls in _NOOP_CLASSES:
                il = Dropout(_cfloat(ic, "rate", 0.0, where))
            elif icls == "Activation":
                il = Activation(_dense_act(ic.get("activation"), self.major, d.name))
            else:
                il, dim = self.wrapped(d, icls, ic, iname, dim, is_masked,
                                       in_ranks[0] if in_ranks else None)
            masks = "keras2" if self.major == 2 else "keras3"
            if isinstance(il, list):
                # (a chain, a separable convolution's two layers: each one distributed,
                # the last under the TimeDistributed's name)
                layer = [TimeDistributed(l, name=f"{d.name}/{l.name}", masks=masks)
                         for l in il[:-1]]
                layer.append(TimeDistributed(il[-1], name=d.name, masks=masks))
            else:
                layer = TimeDistributed(il, name=d.name, masks=masks)
        elif cls in _ACT_LAYERS:
            layer = self.act_layer(d, dim, in_ranks[0] if in_ranks else None)
        elif cls in _SCALE_LAYERS:
            layer = self.scale_layer(d, dim, in_ranks[0] if in_ranks else None)
        elif cls in _DEPTHWISE:
            layer, dim = self.depthwise(d, dim)
        elif cls in _UPSAMPLING:
            layer = self.upsampling(d)
        elif cls in _SHAPE_CLASSES:
            layer, dim = self.shape_layer(d, dim, in_ranks[0] if in_ranks else None)
        elif cls in _IMAGE_CLASSES:
            layer, dim = self.image_layer(d, dim)
        elif cls in _MERGE_LAYERS:
            layer, dim = self.merge(d, list(in_dims), list(in_ranks), list(in_masked))
        elif cls in _ATTENTION_LAYERS:
            layer, dim = self.attention(d, list(in_dims), list(in_ranks))
        elif cls == "Bidirectional":
            layer, dim = self.bidirectional(d, dim)
        elif cls == "RNN":
            layer, dim = self.rnn_cells(d, dim, is_masked)
        else:  # recurrent
            w = self.weights(d, (2, 3))
            layer, dim = self.rnn(d, None, w, dim)
        return layer, dim

    def build(self, descs, outputs, input_names=None):
        """The Model of the descs (one a call of a Keras layer: the calls of a shared
        layer run one fastrnn layer object, built once)."""
        from ..model import (INPUT, Bidirectional, Conv1D, Conv2D, Cropping, Embedding,
                             Flatten, GlobalPooling1D, GlobalPooling2D, InputCast, KerasRNN,
                             Model, Permute, Pooling1D, Pooling2D, Reshape,
                             RepeatVector, UpSampling, ZeroPadding)
        layer_descs = list({d.name: d for d in reversed(descs)}.values())[::-1]
        unsupported = [d for d in layer_descs if not d.is_op and d.class_name not in _SUPPORTED]
        if unsupported:
            raise LoadError(f"{self.fname}: unsupported Keras layer(s): " + ", ".join(
                f"{d.name!r} ({d.class_name})" for d in unsupported)
                + f"; fastrnn supports {', '.join(sorted(set(_SUPPORTED)))}")
        # (each layer once, in the config's order: the order its weights are stored in)
        # (operations are no layers of Keras's: no weights, not counted in the file)
        self.store.assign(sorted((d for d in layer_descs if not d.is_op),
                                 key=lambda d: d.order))
        layers, index_map, input_at, graph = [], {}, {}, []
        # (desc index, tensor index): feature size, rank (None: unknown); mask reaches it;
        # the whole shape where known (an input's, an operation's)
        dims, ranks, masked, full = {}, {}, {}, {}
        built = {}      # Keras layer name -> (its layers, input sizes, output sizes)
        # the model's inputs Keras converts to a float dtype other than the model's
        # (input k -> (its dtype, the InputCast's name)), and the InputCast layer each
        # gets before its first reader (input k -> the layer's index)
        cast_to, casts = {}, {}
        model_dtype = np.dtype(self.dtype).name

        def input_ref(k):
            if k not in cast_to:
                return (INPUT, k)
            if k not in casts:
                casts[k] = len(layers)
                graph.append([(INPUT, k)])
                layers.append(InputCast(cast_to[k][0], model_dtype, name=cast_to[k][1]))
            return (casts[k], 0)

        for i, d in enumerate(descs):
            c, cls = d.config, d.class_name
            self.ctx.layer = f"{d.name!r} ({cls})"
            where = f"{self.fname}: layer {d.name!r} ({cls})"
            if d.inputs is not None:
                refs = d.inputs
            elif i:
                # (a Sequential: Keras passes the next layer every output of the layer
                # before it: a Bidirectional(merge_mode=None)'s pair, an RNN's output and
                # states with return_state; a merge layer takes them all, any other
                # layer is refused as Keras refuses it)
                refs = [(i - 1, t) for t in range(
                    sum(1 for (j, _) in dims if j == i - 1) or 1)]
            else:
                refs = []
            if d.is_op:
                is_masked = False       # (an operation gives no mask: _check_masks)
            elif cls in _MERGE_LAYERS:
                if not refs:
                    raise LoadError(f"{where} is given no inputs")
                # (Dot: no mask, as Keras's; tf.keras 2 joins the masks present, Keras 3
                # an elementwise merge's only when every input has one)
                is_masked = cls != "Dot" and (
                    any if cls == "Concatenate" or self.major == 2 else all)(
                    masked.get(r, False) for r in refs)
            elif cls in _ATTENTION_LAYERS:
                if not 2 <= len(refs) <= 3:
                    raise LoadError(f"{where} is given {len(refs)} inputs; it takes [query, "
                                    "value] or [query, value, key]")
                is_masked = masked.get(refs[0], False)      # (the query's mask)
            elif d.unfold and len(refs) == 2:
                # (the input's mask passes; tf.keras 2's that of the model's output first)
                is_masked = masked.get(refs[1], False) or (
                    self.major == 2 and masked.get(refs[0], False))
            elif len(refs) > 1:
                raise LoadError(f"{where} takes {len(refs)} inputs; fastrnn supports several "
                                "only for the merge layers (" + ", ".join(_MERGE_LAYERS) +
                                ") and the attention layers (" +
                                ", ".join(_ATTENTION_LAYERS) + ")")
            else:
                is_masked = bool(refs) and masked.get(refs[0], False)
            if cls == "InputLayer":
                full[(i, 0)] = c.get("batch_shape") or c.get("batch_input_shape")
                dims[(i, 0)] = _last_dim(c, ("batch_shape", "batch_input_shape"), where)
                ranks[(i, 0)] = _input_rank(c)
                input_at[i] = d.input_index or 0
                cast = _input_cast(c, self.keras_dtype)
                if cast:
                    cast_to[input_at[i]] = (cast, d.name)
                continue
            if i == 0 and d.inputs is None and \
                    any(k in c for k in ("batch_input_shape", "batch_shape")):
                # (a Sequential config whose first layer holds the input shape: tf.keras 2
                # makes its Input of the layer's dtype)
                cast = _input_cast(c, self.keras_dtype)
                if cast:
                    cast_to[0] = (cast, f"{d.name}_input")
            for j, t in refs:
                _check_ref(dims, descs, j, t, where + " reads")
                if not self.nested_masks_out and masked.get((j, t)) and not d.unfold \
                        and _leaves_its_model(descs[j].name, d.name):
                    raise LoadError(
                        f"{where} reads a masked output of nested model layer "
                        f"{descs[j].name!r}: not supported for a file of Keras "
                        "3.0-3.5, which run the outer layers without that mask (Keras 3.6 "
                        "and later, and fastrnn, keep it)"[:500])
            in_dims = tuple(dims[r] for r in refs)
            in_ranks = tuple(ranks[r] for r in refs)
            d.in_shapes = [full.get(r) if isinstance(full.get(r), list) else None
                           for r in refs]
            first = built.get(d.name)
            if first is not None and cls in _ATTENTION_LAYERS and \
                    first[3] != getattr(d, "options", {}):
                raise LoadError(f"{where} is shared, called with different options "
                                f"({first[3]} and {getattr(d, 'options', {})}): not "
                                "supported"[:400])
            if first is not None and first[1] == in_dims and \
                    cls not in (_FOLD, "TimeDistributed"):
                # (a shared layer's call; a TimeDistributed's checks its masks each call)
                new, out_dims = first[0], first[2]
            else:
                layer, dim = self.layer(d, in_dims, is_masked, in_ranks,
                                        tuple(masked.get(r, False) for r in refs))
                new = layer if isinstance(layer, list) else [layer]
                out_dims = _tensor_dims(new[-1], dim)
                if first is None:
                    built[d.name] = (new, in_dims, out_dims, getattr(d, "options", {}))
                else:
                    # (a shared layer called on tensors of other sizes: built again only
                    # to check that it takes them, and to size its outputs)
                    new = first[0]
            src = [input_ref(input_at[j]) if j in input_at else (index_map[j], t)
                   for j, t in refs] or [input_ref(0)]
            for l in new:
                if is_masked and (
                        (isinstance(l, Permute) and l.identity) or
                        (isinstance(l, Cropping) and not any(map(any, l.cropping))) or
                        (isinstance(l, Reshape) and _same_shape_maybe(
                            l, in_ranks[0] if in_ranks else None,
                            in_dims[0] if in_dims else None))):
                    raise LoadError(
                        f"{where} reads a masked tensor and may leave its shape as it is: "
                        "not supported (there Keras 3 on JAX keeps the mask, Keras 3 on "
                        "TensorFlow and tf.keras 2 drop it, and a file does not say its "
                        "backend; a Reshape or Permute that changes the shape, or a "
                        "Cropping that crops, is supported)")
                graph.append(src)
                src = [(len(layers), 0)]
                layers.append(l)
                if _makes_mask(l):
                    is_masked = True
                elif (isinstance(l, (KerasRNN, Bidirectional)) and not l.return_sequences) \
                        or (isinstance(l, Embedding) and not l.mask_zero) or d.is_op \
                        or isinstance(l, (GlobalPooling1D, Flatten, RepeatVector, Conv1D,
                                          Pooling1D, Conv2D, Pooling2D, GlobalPooling2D,
                                          ZeroPadding, Cropping, UpSampling)) \
                        or getattr(l, "keeps_mask", True) is False \
                        or (isinstance(l, Permute) and not l.identity) \
                        or (isinstance(l, Reshape) and not _same_shape_maybe(
                            l, in_ranks[0] if in_ranks else None, in_dims[0] if in_dims
                            else None)):
                    is_masked = False      # (these end the mask, as Keras's do)
            index_map[i] = len(layers) - 1     # (stacked cells: the last layer's outputs)
            for t, (v, r) in enumerate(zip(out_dims, _tensor_ranks(new, in_ranks))):
                dims[(i, t)], ranks[(i, t)] = v, r
                masked[(i, t)] = is_masked and new[-1].output_mask(t, True) is True
            if d.is_op:
                full[(i, 0)] = new[-1].shape
            elif refs and isinstance(full.get(refs[0]), list) and all(
                    _keeps_steps(l) for l in new) and dims.get((i, 0)) is not None:
                # (a layer that keeps its input's leading axes: their sizes, for the
                # operations after it, which a tf.keras 2 config records none of)
                full[(i, 0)] = list(full[refs[0]][:-1]) + [dims[(i, 0)]]
        if not layers:
            raise LoadError(f"{self.fname}: the model has no layers fastrnn can run")
        if self.major == 3:
            self._warn_mha_masks(descs, masked)
        outs = None
        if outputs is not None:
            outs = []
            for a, t in outputs:
                _check_ref(dims, descs, a, t, f"{self.fname}: the model's output is")
                if a not in index_map:
                    raise LoadError(f"{self.fname}: model output comes from layer "
                                    f"{descs[a].name!r} ({descs[a].class_name}), which is not "
                                    "supported as an output")
                outs.append((index_map[a], t))
            if outs == [(len(layers) - 1, 0)] and not _multi(layers[-1]):
                outs = None
        inits = {}
        for i, d in enumerate(descs):
            if d.states:
                inits[index_map[i]] = self.initial_states(d, layers, index_map, descs)
        return Model(layers, outputs=outs, initial_states=inits or None, inputs=graph,
                     input_names=input_names)

    def _warn_mha_masks(self, descs, masked):
        """Keras 3.15's MultiHeadAttention clears the mask of the tensors it reads (its
        query, value, key): a layer that reads such a masked tensor after it, in Keras's
        order of calls, computes without the mask there, while fastrnn keeps it; the
        outputs can differ (an audit: an Attention over an encoder's states after a
        self-attention over them, 0.14).  Warned, not refused: whether the other layer
        runs before or after the attention in Keras, and whether the mask matters to
        it, a file does not say: warned where another attention layer reads the tensor
        (its mask weighs the steps), or a layer whose output reaches one of the layers
        that use masks (attention, recurrent, average pooling over the steps): a residual Add
        beside the attention, then an AdditiveAttention over the sum, was 0.19 off (an
        audit); a residual block's Add -> LayerNormalization -> Dense matches."""
        readers: dict = {}
        for i, d in enumerate(descs):
            for r in set(d.inputs or ()):
                readers.setdefault(r, []).append(i)
        children: dict = {}
        for (j, _), who in readers.items():
            children.setdefault(j, set()).update(who)
        # (Keras 3's GlobalMaxPooling1D takes no mask: k3_mha_bilstm_ln's residual Add
        # before it matches)
        consumers = set(_ATTENTION_LAYERS + _RECURRENT) | {"Bidirectional",
                                                            "GlobalAveragePooling1D"}

        def reaches_consumer(i):
            """Whether a layer that uses masks is ``i`` or computes from it."""
            seen, stack = {i}, [i]
            while stack:
                j = stack.pop()
                if descs[j].class_name in consumers:
                    return True
                for k in children.get(j, ()):
                    if k not in seen:
                        seen.add(k)
                        stack.append(k)
            return False
        for r, who in readers.items():
            mha = [i for i in who if descs[i].class_name == "MultiHeadAttention"]
            # (other attention layers: the value's / key's mask is their weights'; other
            # readers differ only through a mask consumer further on, which the audit's
            # residual blocks did not show)
            if not masked.get(r, False) or not mha:
                continue
            before = _ancestors(descs, mha[0])      # (run before it, in any order)
            others = [descs[i].name for i in who if i != mha[0] and i not in before
                      and reaches_consumer(i)]
            if not others:
                continue
            from . import _warn_user
            _warn_user(
                f"{self.fname}: the masked output of layer {descs[r[0]].name!r} is read by "
                f"MultiHeadAttention {descs[mha[0]].name!r} and by "
                f"{', '.join(map(repr, others))}: Keras 3 clears that tensor's mask when "
                "the attention runs, so a layer Keras calls after it computes without the "
                "mask, while fastrnn keeps it: outputs may differ from Keras's")

    def initial_states(self, d, layers, index_map, descs):
        """Model references of the states layer ``d`` starts from, checked: states an
        earlier recurrent layer returns, as many as ``d`` takes, of its sizes."""
        self.ctx.layer = f"{d.name!r} ({d.class_name})"
        where = f"{self.fname}: layer {d.name!r} ({d.class_name}) is called with initial_state"
        layer = layers[index_map[descs.index(d)]]
        want = _state_sizes(layer)
        if len(d.states) != len(want):
            raise LoadError(f"{where} of {len(d.states)} tensors; it takes {len(want)}")
        refs = []
        for (j, t), size in zip(d.states, want):
            src = layers[index_map[j]] if j in index_map else None
            have = (_state_sizes(src) if getattr(src, "return_state", False) else [])
            first = src.n_outputs() - len(have) if have else 0
            if not have or not first <= t < first + len(have):
                raise LoadError(f"{where}=<output {t} of {descs[j].name!r}>: only states a "
                                "recurrent layer returns with return_state=True are supported")
            if have[t - first] != size:
                raise LoadError(f"{where}=<output {t} of {descs[j].name!r}> of size "
                                f"{have[t - first]}; it needs size {size}")
            refs.append((index_map[j], t))
        return refs


def _input_cast(c, keras_dtype):
    """The dtype Keras converts a model's input to, from its InputLayer's config (or a
    Sequential's first layer's), when an InputCast must reproduce it: a float dtype
    numpy has, other than ``keras_dtype``, the one the model's layers compute in (a
    float32 Input of a float64 model: the input rounded to float32; a float64 one of a
    float32 model: cast down, as each float32 layer does); None for integer Inputs
    (ids), the layers' own dtype, or none recorded.  (A bfloat16 Input gets none: it
    counts in _config_dtype instead.)  ``dtype=`` of load_keras does not change it: a
    float32 model run in float64 takes its inputs as given."""
    from ..model import _INPUT_DTYPES
    name = _policy_name(c.get("dtype"))
    return name if name in _INPUT_DTYPES and name != keras_dtype else None


def _same_shape_maybe(layer, rank, dim):
    """Whether Reshape ``layer`` may leave its input's shape as it is (which keeps a
    mask, as Keras 3 on JAX) for an input of ``rank`` and last axis ``dim`` (None:
    unknown): decided when the model runs; here only ruled out where it cannot."""
    t = layer.target_shape
    return (rank is None or len(t) + 1 == rank) and (
        dim is None or not t or t[-1] in (-1, dim))


def _ancestors(descs, i) -> set:
    """The indexes of the layer calls the call ``i`` of a functional config depends on."""
    seen, stack = set(), [i]
    while stack:
        for j, _ in descs[stack.pop()].inputs or ():
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def _input_rank(c):
    """An InputLayer's rank (batch axis included) from its config, or None."""
    for key in ("batch_shape", "batch_input_shape"):
        if isinstance(c.get(key), (list, tuple)):
            return len(c[key])
    return None


def _check_ref(dims, descs, j, t, what):
    """A reference to tensor ``t`` of desc ``j`` must name one of its outputs."""
    if (j, t) not in dims:
        n = sum(1 for (a, _) in dims if a == j)
        raise LoadError(f"{what} <output {t} of {descs[j].name!r}> ({descs[j].class_name}), "
                        f"which has {n} output(s)"[:300])


def _leaves_its_model(producer: str, consumer: str) -> bool:
    """Whether a tensor of inlined layer ``producer`` ("<model>/<layer>") is read by
    ``consumer`` outside that model."""
    scope = producer.rpartition("/")[0]
    return bool(scope) and not consumer.startswith(scope + "/")


def _k2_takes_mask(layer) -> bool:
    """Whether fastrnn ``layer`` is one of tf.keras 2's layers that support masking (a
    TimeDistributed hands them its input's mask; tf.keras 2 refuses it to the others,
    GlobalMaxPooling1D among them)."""
    from ..model import (Activation, BatchNormalization, Bidirectional, Dense, Dropout,
                         Embedding, GlobalPooling1D, KerasRNN, LayerNormalization, Masking,
                         PReLU, TimeDistributed)
    if isinstance(layer, GlobalPooling1D):
        return layer.op == "average"
    return isinstance(layer, (Activation, BatchNormalization, Bidirectional, Dense, Dropout,
                              Embedding, KerasRNN, LayerNormalization, Masking, PReLU,
                              TimeDistributed))


def _keeps_steps(layer) -> bool:
    """Whether a layer's output keeps its input's axes but the last (a recurrent layer's
    sequences, Dense, the normalisations, ...): the sizes an operation after it reads."""
    from ..model import (Activation, BatchNormalization, Bidirectional, Dense, Dropout,
                         KerasRNN, LayerNormalization, Masking)
    if isinstance(layer, (KerasRNN, Bidirectional)):
        return layer.return_sequences and not getattr(layer, "return_state", False) and \
            getattr(layer, "merge_mode", "concat") is not None
    return isinstance(layer, (Activation, BatchNormalization, Dense, Dropout,
                              LayerNormalization, Masking))


def _fill_sizes(op, shapes):
    """Sizes an operation's input does not know (None) taken from another input that does:
    Matmul's contracted pair, else sizes at the same place counted from the last axis,
    as broadcasting aligns them (a residual ``h + x`` of an Input of known steps)."""
    if op == "Matmul" and len(shapes) == 2 and min(map(len, shapes)) >= 2:
        a, b = shapes
        if a[-1] is None:
            a[-1] = b[-2]
        if b[-2] is None:
            b[-2] = a[-1]
        return
    for sh in shapes:
        for j in range(1, len(sh)):
            if sh[j] is None:
                k = len(sh) - j         # (the place from the end)
                known = {o[-k] for o in shapes if len(o) - k >= 1 and o[-k] is not None}
                if len(known) == 1:
                    sh[j] = known.pop()


def _makes_mask(layer) -> bool:
    """Whether a layer makes a mask: Masking, Embedding(mask_zero=True), a tf.keras 2
    TimeDistributed of one (which passes it on)."""
    from ..model import Embedding, Masking, TimeDistributed
    if isinstance(layer, TimeDistributed):
        return layer.masks == "keras2" and _makes_mask(layer.layer)
    return isinstance(layer, Masking) or (isinstance(layer, Embedding) and layer.mask_zero)


def _tensor_ranks(layers, in_ranks):
    """The ranks of the outputs of a call's layers (stacked cells: a chain of them) on
    tensors of ``in_ranks`` (None: unknown)."""
    from ..model import (Bidirectional, Conv1D, Conv2D, Dot, Embedding, Flatten, FoldTime,
                         Op, UnfoldTime, GlobalPooling1D, KerasRNN, MultiHeadAttention, Pooling1D, Pooling2D, RepeatVector,
                         Reshape, TimeDistributed, _Merge, _AttentionBase, GlobalPooling2D)
    ranks = list(in_ranks)
    for layer in layers:
        r = ranks[0] if ranks else None
        if isinstance(layer, _AttentionBase):
            ranks = [3, 4 if isinstance(layer, MultiHeadAttention) else 3][:layer.n_outputs()]
            continue
        if isinstance(layer, Dot):
            r = None if None in ranks[:2] or len(ranks) != 2 else layer.output_rank(*ranks)
        elif isinstance(layer, _Merge):
            r = None if None in ranks else max(ranks)
        elif isinstance(layer, Embedding):
            r = None if r is None else r + 1
        elif isinstance(layer, (KerasRNN, Bidirectional)):
            r = 3 if layer.return_sequences else 2
        elif isinstance(layer, GlobalPooling1D):
            r = 3 if layer.keepdims else 2
        elif isinstance(layer, Flatten):
            r = 2
        elif isinstance(layer, (RepeatVector, Conv1D, Pooling1D)):
            r = 3
        elif isinstance(layer, (Conv2D, Pooling2D)):
            r = 4
        elif isinstance(layer, GlobalPooling2D):
            r = 4 if layer.keepdims else 2
        elif isinstance(layer, Reshape):
            r = len(layer.target_shape) + 1
        elif isinstance(layer, TimeDistributed):
            r = _tensor_ranks([layer.layer], [None if r is None else r - 1])[0]
            r = None if r is None else r + 1
        elif isinstance(layer, (FoldTime, UnfoldTime)):
            r = None if r is None else r + (1 if isinstance(layer, UnfoldTime) else -1)
        elif isinstance(layer, Op):
            r = None if layer.shape is None else len(layer.shape)
        n_seq = 2 if isinstance(layer, Bidirectional) and layer.merge_mode is None else 1
        ranks = [r if k < n_seq else 2 for k in range(layer.n_outputs())]
    return ranks


def _state_sizes(layer):
    """Sizes of the states a recurrent layer takes (and returns with return_state), in
    Keras's order (Bidirectional: the forward layer's, then the backward layer's)."""
    from ..model import Bidirectional
    rnns = [layer.forward, layer.backward] if isinstance(layer, Bidirectional) else [layer]
    return [r.units for r in rnns for _ in range(r.n_states())]


def _tensor_dims(layer, dim):
    """The feature sizes of a layer's outputs, given that of its first (``dim``)."""
    from ..model import Bidirectional, _AttentionBase
    if isinstance(layer, _AttentionBase):
        return [dim, None][:layer.n_outputs()]
    first = [dim]
    if isinstance(layer, Bidirectional) and layer.merge_mode is None:
        first = [layer.forward.units, layer.backward.units]
    return first + (_state_sizes(layer) if getattr(layer, "return_state", False) else [])


def _policy_name(v):
    """A layer config's dtype: a name, or a (Keras 3 DTypePolicy / Keras 2 Policy) dict."""
    if isinstance(v, dict):
        c = v.get("config")
        v = c.get("name") if isinstance(c, dict) else None
    return v if isinstance(v, str) else None


def _config_dtype(descs, fname, warn=True):
    """float64 when every layer's dtype in the config is float64, else float32 (with a
    warning when only some are).  The Inputs do not count: Keras converts the model's
    input to its Input's dtype first, which an InputCast layer reproduces (float64
    layers on a float32 Input load as float64, on float32-rounded inputs; an integer
    Input, an Embedding's ids, has none); only a bfloat16 Input, which numpy cannot
    round to, counts as a layer."""
    from ..model import _INPUT_DTYPES
    names = [_policy_name(d.config.get("dtype")) for d in descs]
    names = [n for d, n in zip(descs, names) if n is not None and
             (d.class_name != "InputLayer" or
              (n in _FLOAT_DTYPES and n not in _INPUT_DTYPES))]
    f64 = [n == "float64" for n in names]
    if f64 and all(f64):
        return "float64"
    if any(f64) and warn:
        warnings.warn(f"{fname}: some layers of the Keras model are float64, others "
                      f"{sorted(set(n for n in names if n != 'float64'))}; loading it as "
                      "float32 (pass dtype= to choose)", stacklevel=4)
    return "float32"


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
    from ..layers import layer_from_config
    try:
        fused = layer_from_config(layer._fused_config())
    except Exception:  # pragma: no cover - any mismatch: keep the two-layer path
        return
    layer._fuse_with(fused)                         # (its weights loaded there, strict)


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


def _build(parsed, store, version, hard_sigmoid, dtype, num_threads, fname, ctx=None):
    descs, outputs, input_names, (hint, name) = parsed
    for v in (version, hint):       # (a config's own keras_version counts too)
        m = re.match(r"\s*(\d{1,6})", str(v)) if v else None
        if m and int(m.group(1)) < 2:
            raise LoadError(f"{fname}: written by Keras {str(v)[:40]}: Keras 1 configs are "
                            "not supported (their layers' options and weights differ; load "
                            "and save the model with Keras 2 or 3 first)")
    if not version and isinstance(store, _Keras3Store) and store.by_keras3():
        version = "3"
    version = version or hint
    major = _keras_major(version, hard_sigmoid)
    ctx = ctx if ctx is not None else _Ctx(fname)
    # (the dtype Keras's layers compute in, which decides the InputCasts; dtype= may
    # run the model in another)
    own = _config_dtype(descs, fname, warn=dtype is None)
    try:
        model = _Builder(store, major, dtype or own, num_threads, fname, ctx,
                         keras_dtype=own, keras_version=version).build(descs, outputs,
                                                                       input_names)
    except LoadError:
        raise
    except RecursionError:
        raise LoadError(f"{fname}: Keras config nests too deeply{ctx.where()}") from None
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, OverflowError) as e:
        raise LoadError(f"{fname}: malformed Keras config or weights{ctx.where()}: "
                        f"{type(e).__name__}: {e}"[:600]) from e
    if name:
        model.name = str(name)
    return model
