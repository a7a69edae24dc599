"""Read files written by ``torch.save`` without importing torch.

Two on-disk formats exist:

* the zip format (torch >= 1.6, the default): a zip archive with one top
  folder ``<name>/`` holding ``data.pkl`` (the pickled object tree),
  ``data/<key>`` (one raw storage per key), ``byteorder`` and ``version``;
* the legacy format (``_use_new_zipfile_serialization=False``): a stream of
  pickles (magic number, protocol version, system info, the object tree, the
  list of storage keys) followed by the raw storages, each prefixed by its
  element count as a little-endian int64.  Both are read here.

Safety: the pickle is read with :class:`_RestrictedUnpickler`, which resolves
only an allow-list of globals, each replaced by a fastrnn function that builds
numpy arrays.  Any other global is refused with :class:`UnsafeFileError`
before anything from the file runs.

Whole-module pickles (``torch.save(model)``): classes under
``torch.nn.modules.*`` (and classes the caller names in ``module_classes``)
are replaced by :class:`ModuleStub`, an inert container that only records
the pickled instance ``__dict__``.  No torch class is imported or called and
no ``__setstate__`` other than the stub's own runs.  The stub's
``_parameters``/``_buffers``/``_modules`` are flattened into the same dotted
names ``module.state_dict()`` would give.  Saving ``model.state_dict()`` is
still the recommended way; a user-defined model class (``__main__.Net``) is
refused unless listed in ``module_classes``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
from typing import Any, BinaryIO, Iterable

import numpy as np

from . import LoadError, UnsafeFileError, open_file
from .detect import LEGACY_MAGIC, is_legacy_head

__all__ = ["read_torch_file", "read_torch_object", "ModuleStub", "flatten_tensors"]

# a tensor may only be bigger than the bytes backing it (stride-0 "expanded"
# views) up to this size; everything else is bounded by the file itself
_MAX_EXPANDED_BYTES = 64 << 20
_MAX_NESTING = 100


# --------------------------------------------------------------------------
# dtypes

class _Frozen:
    """Base of every object find_class hands to the unpickler.

    They are shared by all loads in the process, so a hostile pickle must not
    be able to change them with a BUILD opcode (``setattr``): no ``__dict__``,
    no ``__setstate__``, ``__setattr__`` refused after construction.
    """

    __slots__ = ()

    def __setattr__(self, name, value):
        raise LoadError("pickle tried to modify a fastrnn loader object")

    __delattr__ = __setattr__

    def __reduce__(self):  # never pickled back out either
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _SafeFn(_Frozen):
    """An allow-listed callable (one of the safe replacement functions below)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<fastrnn safe {self.fn.__name__}>"


class _Marker(_Frozen):
    """Stand-in for a torch class object that is only compared, never called."""

    __slots__ = ("name",)

    def __init__(self, name):
        object.__setattr__(self, "name", name)


class _DType(_Frozen):
    """Stand-in for a torch dtype or typed-storage class named in the pickle."""

    __slots__ = ("torch_name", "np_name", "itemsize")

    def __init__(self, torch_name: str, np_name: str | None, itemsize: int):
        object.__setattr__(self, "torch_name", torch_name)
        object.__setattr__(self, "np_name", np_name)  # None: recognised but not supported
        object.__setattr__(self, "itemsize", itemsize)

    def __repr__(self):
        return f"<torch dtype {self.torch_name}>"


# (storage class, torch dtype attribute names, numpy dtype or None, itemsize)
_DTYPE_TABLE = [
    ("DoubleStorage", ("float64", "double"), "f8", 8),
    ("FloatStorage", ("float32", "float"), "f4", 4),
    ("HalfStorage", ("float16", "half"), "f2", 2),
    ("BFloat16Storage", ("bfloat16",), "bf16", 2),
    ("LongStorage", ("int64", "long"), "i8", 8),
    ("IntStorage", ("int32", "int"), "i4", 4),
    ("ShortStorage", ("int16", "short"), "i2", 2),
    ("CharStorage", ("int8",), "i1", 1),
    ("ByteStorage", ("uint8",), "u1", 1),
    ("BoolStorage", ("bool",), "b1", 1),
    ("UntypedStorage", (), "u1", 1),
    ("ComplexFloatStorage", ("complex64", "cfloat"), None, 8),
    ("ComplexDoubleStorage", ("complex128", "cdouble"), None, 16),
    ("QInt8Storage", ("qint8",), None, 1),
    ("QUInt8Storage", ("quint8",), None, 1),
    ("QInt32Storage", ("qint32",), None, 4),
]

_TORCH_ATTRS: dict[str, _DType] = {}
for _storage, _aliases, _np, _size in _DTYPE_TABLE:
    _dt = _DType(_aliases[0] if _aliases else "uint8", _np, _size)
    _TORCH_ATTRS[_storage] = _dt
    for _a in _aliases:
        _TORCH_ATTRS[_a] = _dt
del _storage, _aliases, _np, _size, _dt


# --------------------------------------------------------------------------
# storages and tensors

class _StorageRef(_Frozen):
    """What ``persistent_load`` returns: a reference to raw bytes in the file.
    Frozen: a BUILD opcode must not be able to change ``numel`` after the
    size was checked against the archive."""

    __slots__ = ("key", "dtype", "numel", "_reader")

    def __init__(self, key, dtype, numel, reader):
        for k, v in (("key", key), ("dtype", dtype), ("numel", numel), ("_reader", reader)):
            object.__setattr__(self, k, v)


class _Budget:
    """Caps the bytes all rebuilt tensors may allocate (hostile pickles can
    rebuild the same storage many times)."""

    def __init__(self):
        self.storage_bytes = 0
        self.used = 0

    def charge(self, nbytes: int, what: str):
        self.used += nbytes
        if self.used > 2 * self.storage_bytes + _MAX_EXPANDED_BYTES:
            raise LoadError(
                f"{what}: tensors would need {self.used} bytes, far more than the "
                f"{self.storage_bytes} bytes of storage in the file"
            )


def _np_dtype(dt: _DType, byteorder: str) -> np.dtype:
    if dt.np_name is None:
        raise LoadError(f"unsupported tensor dtype torch.{dt.torch_name}")
    if dt.np_name == "bf16":
        return np.dtype(byteorder + "u2")
    if dt.np_name in ("b1", "i1", "u1"):
        return np.dtype(dt.np_name)
    return np.dtype(byteorder + dt.np_name)


def _as_int(x, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise LoadError(f"{what} must be an int, got {type(x).__name__}")
    return x


def _as_int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)):
        raise LoadError(f"{what} must be a tuple of ints, got {type(x).__name__}")
    if len(x) > 64:
        raise LoadError(f"{what} has {len(x)} dimensions")
    return tuple(_as_int(v, what) for v in x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Safe replacement for torch._utils._rebuild_tensor(_v2)."""
    if not isinstance(storage, _StorageRef):
        raise LoadError("tensor rebuilt from something that is not a storage")
    off = _as_int(storage_offset, "storage offset")
    size = _as_int_tuple(size, "tensor size")
    stride = _as_int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise LoadError(f"tensor size {size} and stride {stride} differ in length")
    if off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise LoadError(
            f"negative storage offset, size or stride (offset={off}, size={size}, stride={stride})"
        )
    numel = 1
    for s in size:
        numel *= s
    if numel == 0:
        needed = 0
    else:
        needed = off + 1 + sum((n - 1) * st for n, st in zip(size, stride))
    if needed > storage.numel:
        raise LoadError(
            f"tensor of size {size}, stride {stride}, offset {off} needs {needed} elements "
            f"but storage {storage.key!r} holds {storage.numel}"
        )
    return storage._reader.make_tensor(storage, off, size, stride, numel)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    """Safe replacement for torch._utils._rebuild_parameter(_with_state)."""
    if not isinstance(data, (np.ndarray, _LazyTensor)):
        raise LoadError("parameter rebuilt from something that is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    """torch._tensor._rebuild_from_type_v2: a tensor with Python attributes (the state,
    ignored) or of a subclass.  Only the plain Tensor / Parameter types are accepted."""
    if func is not _SAFE_REBUILD_TENSOR and func is not _SAFE_REBUILD_PARAMETER:
        raise UnsafeFileError("_rebuild_from_type_v2 with a function outside the allow-list")
    if new_type is not _TensorType and new_type is not _ParameterType:
        raise UnsafeFileError("_rebuild_from_type_v2 with a tensor subclass outside the allow-list")
    if not isinstance(args, tuple):
        raise LoadError("_rebuild_from_type_v2 arguments are not a tuple")
    return func(*args)


_TensorType = _Marker("torch.Tensor")
_ParameterType = _Marker("torch.nn.Parameter")
_ObjectType = _Marker("builtins.object")


def _reconstructor(cls, base, state=None):
    """copy_reg._reconstructor, with which pickle protocols 0 and 1 make objects
    (``torch.save(model, pickle_protocol=1)``): only a module class read as an inert
    container (a stub class, _stub_factory: a pickle cannot make classes) over object."""
    if not (isinstance(cls, type) and cls.__name__ == "ModuleStubClass"
            and base is _ObjectType and state is None):
        raise UnsafeFileError("copy_reg._reconstructor of something other than a module "
                              "class fastrnn reads as an inert container")
    return cls.__new__(cls)


def _torch_size(dims=()):
    return _as_int_tuple(dims, "torch.Size")


def _torch_device(*args):
    """torch.device('cpu') / ('cuda', 0): kept as a plain string, never used."""
    return ":".join(str(a) for a in args if isinstance(a, (str, int)) and not isinstance(a, bool))[:64]


class ModuleStub:
    """Inert stand-in for a pickled ``torch.nn.Module``.

    ``cls`` is the dotted class name found in the file; ``state`` is the
    pickled instance dict (``_parameters``, ``_buffers``, ``_modules`` and
    plain attributes such as ``hidden_size``).  Nothing else happens.
    """

    __slots__ = ("cls", "state")

    def __init__(self, cls: str):
        self.cls = cls
        self.state: dict = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = state[0] or {}
        if not isinstance(state, dict):
            raise LoadError(f"{self.cls}: pickled module state is not a dict")
        self.state = state

    def __repr__(self):
        return f"ModuleStub({self.cls})"


def _stub_factory(name: str):
    # NEWOBJ calls cls.__new__(cls, *args): give it a real class whose
    # __new__ returns the stub.  The class is created here, by us, and has no
    # behaviour besides that.
    def __new__(cls, *args, **kwargs):
        return ModuleStub(name)

    return type("ModuleStubClass", (), {"__new__": __new__, "__slots__": ()})


# --------------------------------------------------------------------------
# the restricted unpickler

# top-level modules whose globals in a pickle are no nn.Module class (the standard
# library, Python 2's names of two of its modules, NumPy, torch's own): no
# module_classes= advice for them; of those, the ones a code-running pickle names: no
# advice at all
_NOT_MODULE_PLACES = sys.stdlib_module_names | {"__builtin__", "copy_reg", "numpy", "torch"}
_CODE_PLACES = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__")
_SAFE_REBUILD_TENSOR = _SafeFn(_rebuild_tensor)
_SAFE_REBUILD_PARAMETER = _SafeFn(_rebuild_parameter)

# (module, name) -> immutable stand-in; nothing here can be modified by a pickle
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _SAFE_REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _SAFE_REBUILD_TENSOR,
    ("torch._utils", "_rebuild_parameter"): _SAFE_REBUILD_PARAMETER,
    ("torch._utils", "_rebuild_parameter_with_state"): _SAFE_REBUILD_PARAMETER,
    # (torch's is torch._tensor's: a tensor with Python attributes, a torch.nn.Buffer)
    ("torch._tensor", "_rebuild_from_type_v2"): _SafeFn(_rebuild_from_type_v2),
    ("torch._utils", "_rebuild_from_type_v2"): _SafeFn(_rebuild_from_type_v2),
    ("torch._tensor", "Tensor"): _TensorType,
    ("copy_reg", "_reconstructor"): _SafeFn(_reconstructor),
    ("copyreg", "_reconstructor"): _SafeFn(_reconstructor),
    ("__builtin__", "object"): _ObjectType,
    ("builtins", "object"): _ObjectType,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _ParameterType,
    ("torch", "Size"): _SafeFn(_torch_size),
    ("torch", "device"): _SafeFn(_torch_device),
}
def _same(value, *_tag):
    return value


# TorchScript archives' data.pkl: type tags on typed lists / dicts (the value itself)
_TS_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch.jit._pickle", n): _SafeFn(_same)
    for n in ("restore_type_tag", "build_intlist", "build_tensorlist", "build_doublelist",
              "build_boollist")
}
# the callables that hash their argument's items (OrderedDict in state dicts and tensors'
# hooks, set / frozenset in whole-module pickles): handed to the unpickler wrapped, to
# count those items as _scan_ops counts the keys of dict and set opcodes
_HASHING_GLOBALS: dict[tuple[str, str], type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
}



# tensor kinds torch pickles with a rebuild function of their own, which fastrnn does not
# read: a clear LoadError naming the kind (not "unsafe": they are tensors)
_UNSUPPORTED_TENSORS = {
    ("torch._utils", "_rebuild_qtensor"): "quantized",
    ("torch._utils", "_rebuild_sparse_tensor"): "sparse",
    ("torch._utils", "_rebuild_sparse_csr"): "sparse",
    ("torch._utils", "_rebuild_nested_tensor"): "nested",
    ("torch._utils", "_rebuild_mkldnn_tensor"): "MKL-DNN",
    ("torch._utils", "_rebuild_wrapper_subclass"): "tensor-subclass",
}


# torch.nn module classes outside torch.nn.modules read as inert containers too (as
# torch.save(module) of them holds them): nn.DataParallel, whose module is "module"
_TORCH_WRAPPERS = frozenset({"torch.nn.parallel.data_parallel.DataParallel"})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, reader, module_classes: Iterable[str] = (),
                 torchscript: bool = False, numeric_keys: int = 0):
        super().__init__(file, encoding="utf-8")
        self._reader = reader
        self._module_classes = frozenset(module_classes)
        self._torchscript = torchscript
        self._stubs: dict[str, type] = {}
        self._numeric_keys = numeric_keys       # (those _scan_ops counted in this pickle)
        self._hashing = {key: _SafeFn(self._hashed(cls)) for key, cls in _HASHING_GLOBALS.items()}

    def find_class(self, module, name):
        key = (module, name)
        if key in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[key]
        if self._torchscript:
            # a TorchScript archive: its modules' classes (``__torch__.*``, compiled code
            # the file carries: never run, the modules read as inert containers) and the
            # type tags of its typed lists and dicts
            if key in _TS_GLOBALS:
                return _TS_GLOBALS[key]
            if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
                return self._stub(f"{module}.{name}")
        if key in self._hashing:
            return self._hashing[key]
        if module == "torch" and name in _TORCH_ATTRS:
            return _TORCH_ATTRS[name]
        full = f"{module}.{name}"
        kind = _UNSUPPORTED_TENSORS.get(key)
        if kind is not None:
            raise LoadError(f"the file holds {kind} tensors ({full}), which fastrnn does not "
                            "read; save the float tensors (e.g. dequantize() / to_dense() "
                            "before torch.save)")
        parts = set(module.split("."))
        if key == ("torch", "ScriptObject") or (
                module.startswith("torch.") and parts & {"quantized", "quantizable"}):
            # a quantized module (torch.save(model) of one) or its packed weights (TorchScript
            # objects, in its state dict too): refused by name, not as an unsafe file
            what = "TorchScript objects" if name == "ScriptObject" else "a quantized module"
            raise LoadError(f"the file holds {what} ({full}: a quantized module or its packed "
                            "weights), which fastrnn does not read; save the float module's "
                            "state_dict() (before quantize_dynamic / convert)")
        if (
            (module.startswith("torch.nn.modules.") and name[:1].isupper() and "." not in name)
            or full in _TORCH_WRAPPERS or full in self._module_classes
        ):
            return self._stub(full)
        top = module.split(".")[0]
        if module == "__main__" or top not in _NOT_MODULE_PLACES:
            hint = (
                f" If this is a whole-model pickle (torch.save(model)) of your own "
                f"nn.Module class, save model.state_dict() instead, or pass "
                f"module_classes=[{full!r}] to read its parameters as an inert container "
                f"(no code is run)."
            )
        elif top in _CODE_PLACES:
            hint = ""
        else:       # (a datetime, an argparse Namespace, a NumPy array: module_classes= is
            # for module classes and would only lead to the next refusal)
            hint = (" A checkpoint holding Python objects other than tensors, dicts, lists "
                    "and numbers: save the tensors alone (model.state_dict()), other values "
                    "as numbers or strings.")
        raise UnsafeFileError(
            f"refusing to load global {full!r} from the pickle: it is not on fastrnn's "
            f"allow-list of tensor-building functions, and nothing from the file was run.{hint}"
        )

    def _hashed(self, cls):
        """``cls`` called on a list (as pickles of sets call set / frozenset; OrderedDict
        is pickled called on nothing, its items set after): the items that are tuples or
        frozensets, whose hashes a pickle can make collide at will, count against
        _MAX_NUMERIC_KEYS with the keys _scan_ops counted (see there)."""
        def build(items=()):
            if not isinstance(items, (list, tuple)) or (items and cls is collections.OrderedDict):
                raise LoadError(f"pickle calls {cls.__name__} on a {type(items).__name__} "
                                "(torch.save never does)")
            self._numeric_keys += sum(isinstance(v, (tuple, frozenset)) for v in items)
            if self._numeric_keys > _MAX_NUMERIC_KEYS:
                raise LoadError(f"pickle has over {_MAX_NUMERIC_KEYS} dict or set keys built "
                                "from numbers (hash flooding?)")
            return cls(items)

        build.__name__ = cls.__name__
        return build

    def _stub(self, full):
        stub = self._stubs.get(full)
        if stub is None:
            stub = self._stubs[full] = _stub_factory(full)
        return stub

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # the legacy format's torch.nn.Module classes, with their source code (for
            # torch.load's "source has changed" warning; never run here): the class
            # itself, already through find_class (a stub class of this unpickler's)
            if not any(pid[1] is c for c in self._stubs.values()):
                raise LoadError(f"module persistent id names {pid[1]!r:.60}, not a module "
                                "class fastrnn reads as an inert container")
            return pid[1]
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise LoadError(f"unsupported persistent id in pickle: {pid!r:.100}")
        if len(pid) not in (5, 6):
            raise LoadError(f"malformed storage persistent id of length {len(pid)}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, _DType):
            raise LoadError(f"storage type {dtype!r:.60} is not a known torch storage type")
        if dtype.np_name is None:
            raise LoadError(f"unsupported tensor dtype torch.{dtype.torch_name} (storage {key!r:.40})")
        if not isinstance(key, str) or not key or len(key) > 256:
            raise LoadError(f"malformed storage key {key!r:.60}")
        numel = _as_int(numel, "storage size")
        if numel < 0:
            raise LoadError(f"negative storage size {numel} for storage {key!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise LoadError("legacy storage views are not supported")
        return self._reader.storage(key, dtype, numel)


# --------------------------------------------------------------------------
# storage readers for the two container formats

class _ReaderBase:
    byteorder = "<"

    def __init__(self):
        self.budget = _Budget()
        self._refs: dict[str, _StorageRef] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def storage(self, key, dtype, numel):
        ref = self._refs.get(key)
        if ref is not None:
            if ref.dtype is not dtype or ref.numel != numel:
                raise LoadError(f"storage {key!r} is referenced with two different types or sizes")
            return ref
        self.check_storage(key, dtype, numel)
        ref = self._refs[key] = _StorageRef(key, dtype, numel, self)
        self.budget.storage_bytes += numel * dtype.itemsize
        return ref

    def check_storage(self, key, dtype, numel):  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(self, key, nbytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_into(self, key, buf) -> None:
        """Storage ``key``'s first ``len(buf)`` bytes into ``buf`` (readers with a file
        read in pieces: no whole copy of the storage beside ``buf``)."""
        buf[:] = self.raw(key, len(buf))

    def storage_array(self, ref: _StorageRef) -> np.ndarray:
        arr = self._arrays.get(ref.key)
        if arr is None:
            dt = _np_dtype(ref.dtype, self.byteorder)
            raw = self.raw(ref.key, ref.numel * ref.dtype.itemsize)
            arr = np.frombuffer(raw, dtype=dt, count=ref.numel)
            if ref.dtype.np_name == "bf16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            elif not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            self._arrays[ref.key] = arr
        return arr

    def make_tensor(self, ref, off, size, stride, numel):
        itemsize = 4 if ref.dtype.np_name == "bf16" else ref.dtype.itemsize
        self.budget.charge(numel * itemsize, f"storage {ref.key!r}")
        if (numel and off == 0 and numel == ref.numel and ref.key not in self._arrays
                and ref.dtype.np_name != "bf16" and _c_strides(size, stride)):
            dt = _np_dtype(ref.dtype, self.byteorder)
            if dt.isnative:
                # a tensor that is its whole storage, read first (a state dict's usual
                # case): read straight into the tensor's own array, which is also the
                # storage's for any later view of it (no storage copy beside the tensors:
                # a load's peak is the weights once)
                arr = np.empty(size, dt)
                self.read_into(ref.key, memoryview(arr.reshape(-1)).cast("B"))
                self._arrays[ref.key] = arr.reshape(-1)
                return arr
        base = self.storage_array(ref)
        if numel == 0:
            return np.zeros(size, dtype=base.dtype)
        view = np.lib.stride_tricks.as_strided(
            base[off:], shape=size, strides=tuple(s * base.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


class _ZipReader(_ReaderBase):
    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        super().__init__()
        self.zf = zf
        self.prefix = prefix
        self.infos = {i.filename: i for i in zf.infolist()}
        bo = self.infos.get(prefix + "byteorder")
        if bo is not None:
            if bo.file_size > 16:
                raise LoadError("malformed byteorder record")
            text = zf.read(bo).strip()
            if text == b"little":
                self.byteorder = "<"
            elif text == b"big":
                self.byteorder = ">"
            else:
                raise LoadError(f"unknown byteorder record {text[:16]!r}")

    def _info(self, key):
        info = self.infos.get(f"{self.prefix}data/{key}")
        if info is None:
            raise LoadError(f"storage {key!r} is referenced by data.pkl but missing from the archive")
        return info

    def check_storage(self, key, dtype, numel):
        info = self._info(key)
        nbytes = numel * dtype.itemsize
        if info.file_size < nbytes:
            raise LoadError(
                f"storage {key!r} holds {info.file_size} bytes but the pickle says "
                f"{numel} elements of torch.{dtype.torch_name} ({nbytes} bytes)"
            )
        _check_ratio(info)

    def raw(self, key, nbytes):
        info = self._info(key)
        try:
            with self.zf.open(info) as f:
                data = f.read(nbytes)
        except Exception as e:
            raise LoadError(f"storage {key!r}: corrupt zip entry ({type(e).__name__}: {e})"[:400]) from e
        if len(data) != nbytes:
            raise LoadError(f"storage {key!r} is truncated")
        return data

    def read_into(self, key, buf):
        info = self._info(key)
        try:
            with self.zf.open(info) as f:
                _fill(f, buf, key)
        except LoadError:
            raise
        except Exception as e:
            raise LoadError(f"storage {key!r}: corrupt zip entry ({type(e).__name__}: {e})"[:400]) from e


class _LegacyReader(_ReaderBase):
    def __init__(self, f: BinaryIO, size: int):
        super().__init__()
        self.f = f
        self.size = size
        self.offsets: dict[str, tuple[int, int]] = {}  # key -> (data offset, numel)

    deferred = True

    def check_storage(self, key, dtype, numel):
        pass  # checked once the key list and the data section are known

    def make_tensor(self, ref, off, size, stride, numel):
        if self.deferred:
            return _LazyTensor((ref, off, size, stride, numel))
        return super().make_tensor(ref, off, size, stride, numel)

    def index(self, keys, refs):
        pos = self.f.tell()
        for key in keys:
            if not isinstance(key, str):
                raise LoadError("malformed storage key list")
            if pos + 8 > self.size:
                raise LoadError(f"legacy file truncated before storage {key!r}")
            self.f.seek(pos)
            (n,) = struct.unpack("<q", self.f.read(8))
            ref = refs.get(key)
            itemsize = ref.dtype.itemsize if ref is not None else 1
            if n < 0 or pos + 8 + n * itemsize > self.size:
                raise LoadError(f"storage {key!r} claims {n} elements, beyond the end of the file")
            if ref is not None and n < ref.numel:
                raise LoadError(f"storage {key!r} holds {n} elements, the pickle needs {ref.numel}")
            self.offsets[key] = (pos + 8, n)
            pos += 8 + n * itemsize
        missing = set(refs) - set(self.offsets)
        if missing:
            raise LoadError(f"storage {sorted(missing)[0]!r} is referenced but missing from the file")

    def raw(self, key, nbytes):
        off, _ = self.offsets[key]
        self.f.seek(off)
        data = self.f.read(nbytes)
        if len(data) != nbytes:
            raise LoadError(f"storage {key!r} is truncated")
        return data

    def read_into(self, key, buf):
        self.f.seek(self.offsets[key][0])
        _fill(self.f, buf, key)


def _fill(f, buf, key):
    """Fill memoryview ``buf`` from file ``f`` in pieces of at most 1 MiB (a piece is
    what a zip member's reader allocates beside it)."""
    got, n = 0, len(buf)
    while got < n:
        piece = buf[got:min(n, got + (1 << 20))]
        if hasattr(f, "readinto"):
            k = f.readinto(piece)
        else:                               # (a file object without readinto)
            data = f.read(len(piece))
            k = len(data)
            piece[:k] = data
        if not k:
            raise LoadError(f"storage {key!r} is truncated")
        got += k


def _c_strides(size, stride) -> bool:
    """Whether ``stride`` (elements) is the C order of ``size``."""
    want = 1
    for n, st in zip(reversed(size), reversed(stride)):
        if n != 1 and st != want:
            return False
        want *= n
    return True


def _check_ratio(info: zipfile.ZipInfo):
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1100 * info.compress_size + (1 << 20):
        raise LoadError(f"{info.filename}: implausible compression ratio (zip bomb?)")


# torch.save never compresses.  A checkpoint zipped again with DEFLATE shrinks its
# weights less than 2:1 (8:1 for 90% zeros, 60:1 for 99%); only all-zero tensors come
# near DEFLATE's 1032:1, and they are a small part of a real checkpoint.  So all the
# compressed members together may inflate to at most 100 times the archive's bytes
# (the .pt2 reader's rule, there per member) plus 1 MiB for small files: what a file
# can make the reader allocate stays proportional to its size, however many members
# it has (1000 members of 1 MiB of zeros make a 1 MB file).
_MAX_INFLATION = 100


def _check_inflation(zf: zipfile.ZipFile, archive_bytes: int, name: str):
    total = sum(i.file_size for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED)
    if total > _MAX_INFLATION * archive_bytes + (1 << 20):
        raise LoadError(f"{name}: compressed members inflate to {total} bytes, over "
                        f"{_MAX_INFLATION} times the {archive_bytes} bytes of the archive (zip bomb?)")


# --------------------------------------------------------------------------
# entry points

def _open(path_or_fileobj):
    """Returns (binary file object, display name, close-when-done flag)."""
    if isinstance(path_or_fileobj, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(path_or_fileobj)), "<bytes>", True
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        name = os.fspath(path_or_fileobj)
        return open_file(name), name, True
    if hasattr(path_or_fileobj, "read") and hasattr(path_or_fileobj, "seek"):
        return path_or_fileobj, getattr(path_or_fileobj, "name", "<file object>"), False
    raise TypeError(f"expected a path, bytes or a binary file object, got {type(path_or_fileobj).__name__}")


def _file_size(f) -> int:
    here = f.tell()
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(here)
    return end - here


# opcodes fastrnn never needs and would rather not feed to the C unpickler:
# extension registry lookups and protocol-5 out-of-band buffers
_REFUSED_OPS = {"EXT1", "EXT2", "EXT4", "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


# Hash flooding: a dict or set whose keys all hash alike takes quadratic time to build
# (80k keys: a 1 MB file, 50 s).  str and bytes hashes are salted; an int's hash is its
# value modulo 2**61 - 1, so only ints that large can share one (k * (2**61 - 1) all hash
# to 0): they may take at most _MAX_BIG_INT_BYTES in all (each compare walks their
# digits; a numpy PCG64 RNG state holds two ints of 17 bytes).  Floats share a hash only
# by a few dozen (powers of two 2**61 apart in exponent).  Tuples (and frozensets) of
# ints, however small, can be made to collide at will (their hash mixes the items'), so
# dict / set keys built from numbers are counted (state dicts are keyed by str,
# optimizer states by small ints), with the tuples set / frozenset are called on
# (_RestrictedUnpickler._hashed): at most _MAX_NUMERIC_KEYS, which even all colliding
# cost milliseconds.
_HASH_MODULUS = (1 << 61) - 1
_MAX_BIG_INT_BYTES = 4096
_MAX_NUMERIC_KEYS = 1000
_NUMBER_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
_KEYED_OPS = {"SETITEM": slice(-2, -1), "SETITEMS": slice(0, None, 2), "DICT": slice(0, None, 2),
              "ADDITEMS": slice(None), "FROZENSET": slice(None)}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
# opcode -> (items it pops, or how many below its MARK; whether it pops to a MARK; pushes)
_EFFECT = {op.name: (op.stack_before.index(pickletools.markobject) if pickletools.markobject in op.stack_before
                     else len(op.stack_before), pickletools.markobject in op.stack_before, len(op.stack_after))
           for op in pickletools.opcodes}


def _scan_ops(f, name, end=None):
    n = 0
    big = keys = 0
    # the unpickler's stack, each item tagged 1 if a number, 2 if built from numbers
    # (a tuple holding one, a call's result), else 0; and where its marks are
    stack: list = []
    marks: list = []
    memo: dict = {}
    for op, arg, pos in pickletools.genops(f):
        n += 1
        opname = op.name
        if opname in _REFUSED_OPS:
            raise LoadError(f"{name}: pickle opcode {opname} is not supported")
        if opname == "FRAME" and end is not None and arg > end - pos:
            # (the unpickler reads a frame in one piece: a claimed length beyond the
            # file's end allocates it before finding the file truncated)
            raise LoadError(f"{name}: corrupt pickle (a frame of {arg} bytes runs past the "
                            "end of the file)")
        if opname in _PUT_OPS and not (isinstance(arg, int) and 0 <= arg <= n):
            raise LoadError(f"{name}: corrupt pickle (memo index {arg!r:.30})")
        if type(arg) is int and abs(arg) >= _HASH_MODULUS:
            big += arg.bit_length() // 8 + 1
            if big > _MAX_BIG_INT_BYTES:
                raise LoadError(f"{name}: pickle holds over {_MAX_BIG_INT_BYTES} bytes of integers "
                                f"of 2**61 - 1 or more (hash flooding?)")
        pops, to_mark, pushes = _EFFECT[opname]
        fence = marks[-1] if marks else 0
        if to_mark:
            if not marks:
                raise LoadError(f"{name}: corrupt pickle ({opname} without a MARK)")
            items = stack[marks.pop():]
            below = fence - pops
            fence = marks[-1] if marks else 0
        elif opname == "POP" and marks and len(stack) == fence:
            marks.pop()                     # (POP at a mark removes the mark)
            continue
        else:
            below = len(stack) - pops
            items = stack[below:]
        if below < fence:
            raise LoadError(f"{name}: corrupt pickle (stack underflow at {op.name})")
        del stack[below:]
        keyed = _KEYED_OPS.get(opname)
        if keyed is not None:
            keys += sum(t == 2 for t in items[keyed])
            if keys > _MAX_NUMERIC_KEYS:
                raise LoadError(f"{name}: pickle has over {_MAX_NUMERIC_KEYS} dict or set keys "
                                f"built from numbers (hash flooding?)")
        if opname == "MARK":
            marks.append(len(stack))
        elif opname in _PUT_OPS or opname == "MEMOIZE":
            stack += items                  # (MEMOIZE "pops and pushes" its item)
            memo[arg if opname in _PUT_OPS else len(memo)] = stack[-1] if stack else 0
        elif opname in _GET_OPS:
            stack.append(memo.get(arg, 0))
        elif opname == "DUP":
            stack += items * 2
        elif pushes:
            stack += [1 if opname in _NUMBER_OPS else 2 if any(items) else 0] * pushes
    return keys


def _prescan(f, name):
    """Walk the opcodes once (pure Python, nothing built) before unpickling.

    The C unpickler grows its memo table to twice the largest memo index it
    is given and clears every slot, so ``LONG_BINPUT 0xfffffff0`` in a 1 kB
    file would make it allocate and touch tens of GB.  A pickler assigns memo
    indices sequentially, so an index larger than the number of opcodes read
    so far is refused here.  Returns the number of dict / set keys built from numbers
    it counted (the unpickler counts on from there).
    """
    start = f.tell()
    try:
        with warnings.catch_warnings():  # pickletools warns on odd string escapes
            warnings.simplefilter("ignore")
            keys = _scan_ops(f, name, start + _file_size(f))
    except LoadError:
        raise
    except RecursionError as e:
        raise LoadError(f"{name}: pickle nested too deeply") from e
    except Exception as e:  # ValueError from genops on truncated or unknown opcodes
        raise LoadError(f"{name}: corrupt pickle ({type(e).__name__}: {e})"[:400]) from e
    f.seek(start)
    return keys


def _unpickle(data_file, reader, module_classes, name, torchscript=False):
    keys = _prescan(data_file, name)
    try:
        return _RestrictedUnpickler(data_file, reader, module_classes, torchscript, keys).load()
    except LoadError:
        raise
    except RecursionError as e:
        raise LoadError(f"{name}: pickle nested too deeply") from e
    except MemoryError as e:
        raise LoadError(f"{name}: pickle needs too much memory") from e
    except Exception as e:  # UnpicklingError, EOFError, TypeError, ... from bad bytes
        raise LoadError(f"{name}: corrupt pickle ({type(e).__name__}: {e})"[:400]) from e


def _read_zip(f, name, module_classes):
    size = _file_size(f)
    try:
        zf = zipfile.ZipFile(f)
    except Exception as e:  # BadZipFile, NotImplementedError, OSError, ... on damaged archives
        raise LoadError(f"{name}: not a readable zip archive ({type(e).__name__}: {e})"[:400]) from e
    with zf:
        _check_inflation(zf, size, name)
        pkls = [i for i in zf.infolist() if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        pkls = [i for i in pkls if i.filename.count("/") <= 1]
        if len(pkls) != 1:
            raise LoadError(
                f"{name}: not a torch.save archive (expected exactly one '<name>/data.pkl', found {len(pkls)})"
            )
        info = pkls[0]
        prefix = info.filename[: -len("data.pkl")]
        if info.file_size > (256 << 20):
            raise LoadError(f"{name}: data.pkl is implausibly large ({info.file_size} bytes)")
        _check_ratio(info)
        try:
            reader = _ZipReader(zf, prefix)
            with zf.open(info) as pf:
                pkl = pf.read(info.file_size + 1)
        except LoadError:
            raise
        except Exception as e:  # bad CRC, bad local header, unsupported compression, ...
            raise LoadError(f"{name}: corrupt zip archive ({type(e).__name__}: {e})"[:400]) from e
        code = prefix + "code/"
        if not any(i.filename.startswith(code) for i in zf.infolist()):
            return _unpickle(io.BytesIO(pkl), reader, module_classes, name)
        obj = _unpickle(io.BytesIO(pkl), reader, module_classes, name, torchscript=True)
        return _from_torchscript(obj, _CodeText(zf, code, name), name)


def _read_legacy(f, name, module_classes):
    size = _file_size(f)
    start = f.tell()
    reader = _LegacyReader(f, start + size)
    simple = _RestrictedUnpickler  # the three header pickles hold only builtins
    try:
        magic = simple(f, reader, numeric_keys=_prescan(f, name)).load()
        if magic != LEGACY_MAGIC:
            raise LoadError(f"{name}: wrong magic number, not a torch.save file")
        proto = simple(f, reader, numeric_keys=_prescan(f, name)).load()
        if proto != 1001:
            raise LoadError(f"{name}: unsupported legacy protocol version {proto!r:.40}")
        # (sysinfo: its "little_endian" names the writer's machine only, as torch.load
        # reads it: the legacy format writes every storage little-endian, converting on
        # big-endian machines)
        simple(f, reader, numeric_keys=_prescan(f, name)).load()
    except LoadError:
        raise
    except Exception as e:
        raise LoadError(f"{name}: corrupt legacy torch.save header ({type(e).__name__})") from e
    obj = _unpickle(f, reader, module_classes, name)
    keys = _unpickle(f, reader, (), name)
    if not isinstance(keys, list) or len(keys) > 10_000_000:
        raise LoadError(f"{name}: malformed storage key list")
    try:
        reader.index(keys, reader._refs)
    except (OSError, struct.error, ValueError) as e:
        if isinstance(e, LoadError):
            raise
        raise LoadError(f"{name}: corrupt legacy storage section ({e})") from e
    # the storage bytes come after the pickle, so tensors were deferred
    reader.deferred = False
    return _resolve_lazy(obj)


class _LazyTensor:
    __slots__ = ("args",)

    def __init__(self, args):
        self.args = args


def _resolve_lazy(obj, _seen=None, depth=0):
    """Materialise _LazyTensor leaves (legacy format) in place."""
    if depth > _MAX_NESTING:
        raise LoadError("object tree nested too deeply")
    if _seen is None:
        _seen = {}
    if isinstance(obj, _LazyTensor):
        r = _seen.get(id(obj))
        if r is None:
            ref = obj.args[0]
            r = _seen[id(obj)] = ref._reader.make_tensor(*obj.args)
        return r
    if id(obj) in _seen:
        return _seen[id(obj)]
    if isinstance(obj, dict):
        _seen[id(obj)] = obj
        for k in list(obj):
            obj[k] = _resolve_lazy(obj[k], _seen, depth + 1)
        return obj
    if isinstance(obj, list):
        _seen[id(obj)] = obj
        for i, v in enumerate(obj):
            obj[i] = _resolve_lazy(v, _seen, depth + 1)
        return obj
    if isinstance(obj, tuple):
        r = tuple(_resolve_lazy(v, _seen, depth + 1) for v in obj)
        _seen[id(obj)] = r
        return r
    if isinstance(obj, ModuleStub):
        _seen[id(obj)] = obj
        obj.state = _resolve_lazy(obj.state, _seen, depth + 1)
        return obj
    return obj


def read_torch_object(path_or_fileobj, *, module_classes: Iterable[str] = ()) -> Any:
    """Unpickle a ``torch.save`` file safely.

    Returns the object tree with every tensor as a numpy array, dicts,
    lists, tuples and plain values as themselves, and pickled
    ``torch.nn.Module`` objects as :class:`ModuleStub`.
    """
    f, name, close = _open(path_or_fileobj)
    try:
        start = f.tell()
        head = f.read(28)
        f.seek(start)
        if head[:2] == b"PK":
            return _read_zip(f, name, module_classes)
        if is_legacy_head(head):
            return _read_legacy(f, name, module_classes)
        if head[:1] == b"\x80":
            raise LoadError(f"{name}: a plain pickle, not a torch.save file (wrong magic number)")
        raise LoadError(f"{name}: not a torch.save file (neither a zip archive nor the legacy magic number)")
    finally:
        if close:
            f.close()


def flatten_tensors(obj, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a loaded object tree into ``{dotted.name: array}``.

    Dict keys and list indices become name parts; :class:`ModuleStub`
    contributes its ``_parameters`` and persistent ``_buffers`` and recurses
    into ``_modules`` exactly like ``state_dict()``.  Non-tensor leaves
    (epoch numbers, strings, None, ...) are dropped.
    """
    out: dict[str, np.ndarray] = {}
    _flatten(obj, prefix, out, _Walk(), 0)
    return out


def _join(prefix, key):
    return f"{prefix}.{key}" if prefix else str(key)


# A pickle stores a shared object once and may refer to it from many places: a few
# KB can describe a tree of 2^40 paths (a list holding the level below twice, 40
# levels).  The walks below name every path, so they count the containers they enter
# and stop at this many (a checkpoint with its optimizer state enters a few per
# tensor; the largest model files hold thousands of tensors).
_MAX_VISITS = 1 << 18


class _Walk(set):
    """The containers on the current path (a cycle is not followed again) and the
    number entered so far (at most _MAX_VISITS)."""
    visits = 0

    def enter(self, obj) -> bool:
        if id(obj) in self:
            return False
        self.visits += 1
        if self.visits > _MAX_VISITS:
            raise LoadError(f"object tree too large: over {_MAX_VISITS} containers to walk "
                            "(objects shared by many paths)")
        self.add(id(obj))
        return True


def _flatten(obj, prefix, out, active, depth):
    if isinstance(obj, np.ndarray):
        if prefix in out:
            raise LoadError(f"two tensors flatten to the same name {prefix!r}")
        out[prefix] = obj
        return
    if depth > _MAX_NESTING:
        raise LoadError("object tree nested too deeply")
    if isinstance(obj, (dict, list, tuple, ModuleStub)):
        if not active.enter(obj):
            return  # a cycle: its tensors are already reachable by a shorter name
        try:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if isinstance(k, (str, int)) and not isinstance(k, bool):
                        _flatten(v, _join(prefix, k), out, active, depth + 1)
            elif isinstance(obj, (list, tuple)):
                for i, v in enumerate(obj):
                    _flatten(v, _join(prefix, i), out, active, depth + 1)
            else:
                _flatten_module(obj, prefix, out, active, depth)
        finally:
            active.discard(id(obj))


def _flatten_module(stub: ModuleStub, prefix, out, active, depth):
    st = stub.state
    skip = st.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        d = st.get(group)
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(k, str) and isinstance(v, np.ndarray) and not (
                    group == "_buffers" and k in skip
                ):
                    _flatten(v, _join(prefix, k), out, active, depth + 1)
    mods = st.get("_modules")
    if isinstance(mods, dict):
        for k, v in mods.items():
            if isinstance(k, str) and isinstance(v, ModuleStub):
                _flatten(v, _join(prefix, k), out, active, depth + 1)


def module_hints(obj, prefix: str = "") -> dict[str, dict]:
    """For whole-module pickles: ``{dotted prefix: attrs}`` of each pickled
    torch RNN/LSTM/GRU (mode, nonlinearity, batch_first, ...) and RNNCell / LSTMCell /
    GRUCell (nonlinearity, sizes, bias)."""
    out: dict[str, dict] = {}
    _hints(obj, prefix, out, _Walk(), 0)
    return out


_RNN_CLASSES = {"torch.nn.modules.rnn." + c
                for c in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")}


def _holds_rnn_weights(params) -> bool:
    """Whether a module's own parameters (names) include a torch.nn RNN's or cell's
    ``weight_ih...``."""
    return any(isinstance(k, str) and k.startswith("weight_ih") for k in params)


def _rnn_like(st) -> bool:
    """Whether a module's state is a torch.nn RNN's or cell's, whatever its class
    (``class MyLSTM(nn.LSTM)``, allowed by ``module_classes``, or traced): its own
    ``weight_ih`` parameters beside the settings torch.nn's RNNs keep (a TorchScript
    module's: those its code gave, _from_torchscript)."""
    params = st.get("_parameters") if isinstance(st, dict) else None
    return (isinstance(params, dict) and _holds_rnn_weights(params)
            and any(k in st for k in ("mode", "nonlinearity", "batch_first", "hidden_size")))


def _hints(obj, prefix, out, active, depth):
    if depth > _MAX_NESTING or not isinstance(obj, (dict, list, tuple, ModuleStub)) \
            or not active.enter(obj):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                _hints(v, _join(prefix, k), out, active, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _hints(v, _join(prefix, i), out, active, depth + 1)
    else:
        st = obj.state
        if obj.cls in _RNN_CLASSES or _rnn_like(st):
            keep = {}
            for k in ("mode", "nonlinearity", "batch_first", "input_size", "hidden_size",
                      "num_layers", "bidirectional", "proj_size", "bias"):
                v = st.get(k)
                if isinstance(v, (str, int, bool)):
                    keep[k] = v
            out[prefix] = keep
        mods = st.get("_modules")
        if isinstance(mods, dict):
            for k, v in mods.items():
                if isinstance(k, str):
                    _hints(v, _join(prefix, k), out, active, depth + 1)


def read_torch_file(path_or_fileobj, *, module_classes: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` file into ``{name: numpy array}``.

    Accepts a state dict, a checkpoint dict (nested dicts are flattened with
    dotted names, e.g. ``state_dict.lstm.weight_ih_l0``; non-tensor values are
    dropped), or a whole pickled module (see the module docstring).  Raises
    :class:`LoadError` for corrupt files and :class:`UnsafeFileError` for
    pickles that reference anything outside the allow-list.
    """
    return flatten_tensors(read_torch_object(path_or_fileobj, module_classes=module_classes))


# --------------------------------------------------------------------------
# TorchScript archives (torch.jit.save of a scripted or traced module)
#
# Their data.pkl holds each module as an object of its compiled class
# (``__torch__.torch.nn.modules.rnn.LSTM``, ``__torch__.MyNet``, mangled
# ``__torch__.torch.nn.modules.rnn.___torch_mangle_3.GRU``) whose state is one
# flat dict: parameters, submodules and flags side by side.  The hyperparameters
# are not in the pickle but in the archive's code: a scripted torch.nn RNN keeps
# them as ``name : Final[type] = value`` class lines, a traced one passes them to
# ``torch.lstm / gru / rnn_tanh / rnn_relu(...)`` in its forward.  Both are read
# as text with fixed patterns (nothing is compiled or run); each module becomes
# the stub a ``torch.save(module)`` pickle gives, so the rest is that path's.

_TS_FINAL = re.compile(r"^  (\w+) : Final\[(int|bool|str|float)\] = ([^\n]*)", re.M)
_TS_CALL = re.compile(r"torch\.(lstm|gru|rnn_tanh|rnn_relu)(_cell)?\(([^()]*)\)")
_TS_RNN = {"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"}


class _CodeText:
    """The text of a TorchScript archive's code files (``code/<module path>.py``)."""

    def __init__(self, zf, code_prefix, name):
        self._zf, self._prefix, self._name = zf, code_prefix, name
        self._cache: dict = {}

    def get(self, module_path: str) -> str:
        if module_path in self._cache:
            return self._cache[module_path]
        fname = self._prefix + module_path.replace(".", "/") + ".py"
        text = ""
        try:
            info = self._zf.getinfo(fname)
        except KeyError:
            info = None
        if info is not None:
            if info.file_size > (16 << 20):
                raise LoadError(f"{self._name}: {fname} is implausibly large")
            _check_ratio(info)
            try:
                with self._zf.open(info) as f:
                    text = f.read(info.file_size + 1).decode("utf-8", "replace")
            except Exception as e:  # bad CRC, ... on damaged archives
                raise LoadError(f"{self._name}: corrupt zip archive ({type(e).__name__}: "
                                f"{e})"[:400]) from e
        self._cache[module_path] = text
        return text


def _class_block(text: str, cls: str) -> str:
    """The lines of ``class <cls>(...):`` in a code file (up to the next class)."""
    m = re.search(rf"^class {re.escape(cls)}\(", text, re.M)
    if m is None:
        return ""
    end = re.search(r"^class \w", text[m.end():], re.M)
    return text[m.start(): m.end() + end.start() if end else len(text)]


def _ts_literal(kind: str, v: str):
    if kind == "bool":
        return {"True": True, "False": False}.get(v)
    if kind == "int":
        return int(v) if re.fullmatch(r"-?\d{1,9}", v) else None
    if kind == "str":
        return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' and '"' not in v[1:-1] else None
    try:
        return float(v.rstrip("."))
    except ValueError:
        return None


def _ts_hints(block: str, cls: str = "") -> dict:
    """A torch.nn RNN's hyperparameters from its class's code (class ``cls``): the
    ``Final`` lines of a scripted module, else the arguments of a traced module's
    ``torch.<op>(...)`` call (..., has_biases, num_layers, dropout, train,
    bidirectional, batch_first); a traced RNNCell's nonlinearity from its
    ``torch.relu`` / ``torch.tanh`` (after two ``torch.linear``)."""
    out: dict = {}
    for name, kind, v in _TS_FINAL.findall(block):
        v = v.strip()
        if name in ("mode", "batch_first", "bidirectional", "num_layers", "hidden_size",
                    "input_size", "proj_size", "bias", "nonlinearity"):
            val = _ts_literal(kind, v)
            if val is not None:
                out[name] = val
    calls = {(op, cell, args) for op, cell, args in _TS_CALL.findall(block)}
    if len(calls) == 1:
        op, cell, args = calls.pop()
        a = [t.strip() for t in args.split(",")]
        # a traced layer: torch.<op>(..., num_layers, dropout, train, bidirectional,
        # batch_first); a traced cell: torch.<op>_cell(input, hx, w_ih, ...)
        if not cell and "batch_first" not in out and len(a) >= 6 \
                and a[-1] in ("True", "False") and a[-2] in ("True", "False"):
            out["batch_first"] = a[-1] == "True"
            out["bidirectional"] = a[-2] == "True"
            if re.fullmatch(r"\d{1,4}", a[-5]):
                out["num_layers"] = int(a[-5])
        if op in ("rnn_tanh", "rnn_relu"):
            out.setdefault("nonlinearity", op[4:])
    mode = out.get("mode")
    if isinstance(mode, str) and mode.startswith("RNN_"):
        out.setdefault("nonlinearity", mode[4:].lower())
    acts = {a for a in ("relu", "tanh") if f"torch.{a}(" in block}
    if cls == "RNNCell" and "nonlinearity" not in out and len(acts) == 1:
        out["nonlinearity"] = acts.pop()
    return out


def _from_torchscript(obj, code: _CodeText, name):
    """TorchScript module objects as the stubs of ``torch.save(module)`` pickles:
    ``_parameters`` (the state's arrays), ``_modules`` (its modules), and for torch.nn
    RNNs the hyperparameters their code gives."""
    done: dict = {}

    def conv(stub, depth):
        if depth > _MAX_NESTING:
            raise LoadError(f"{name}: modules nested too deeply")
        if id(stub) in done:
            return done[id(stub)]
        mod_path, _, cls = stub.cls.rpartition(".")
        parts = [p for p in mod_path.split(".")[1:] if not p.startswith("___torch_mangle")]
        out = ModuleStub(".".join(parts + [cls]))
        done[id(stub)] = out
        st = stub.state if isinstance(stub.state, dict) else {}
        params = {k: v for k, v in st.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
        mods = {k: conv(v, depth + 1) for k, v in st.items()
                if isinstance(k, str) and isinstance(v, ModuleStub)}
        out.state = {"_parameters": params, "_modules": mods}
        # (torch.nn's RNNs and cells, and modules holding such weights themselves:
        # subclasses, ``class MyLSTM(nn.LSTM)``)
        if (parts[:4] == ["torch", "nn", "modules", "rnn"] and cls in _TS_RNN) \
                or _holds_rnn_weights(params):
            out.state.update(_ts_hints(_class_block(code.get(mod_path), cls), cls))
        return out

    if isinstance(obj, ModuleStub):
        return conv(obj, 0)
    return obj
