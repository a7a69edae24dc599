"""Read and write the safetensors format without the ``safetensors`` package.

Layout: an 8-byte little-endian unsigned header length ``N``, ``N`` bytes of
UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, then the data section (raw little-endian
bytes; offsets are relative to its start).  Everything in the header is
validated against the file size before any tensor memory is allocated.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping

import numpy as np

from . import LoadError, open_file

__all__ = ["read_safetensors", "read_safetensors_metadata", "write_safetensors", "save", "load_fastrnn_safetensors",
           "SAFETENSORS_DTYPES"]

# safetensors dtype -> numpy dtype ("bf16" is widened to float32 on read)
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_NP_TO_ST = {np.dtype(v).str if v != "bf16" else None: k for k, v in SAFETENSORS_DTYPES.items()}
_NP_TO_ST.pop(None, None)
_NP_TO_ST[np.dtype("?").str] = "BOOL"

MAX_HEADER = 100 * 1024 * 1024  # same limit as the reference implementation
_MAX_DIMS = 64


def _header_error(name, msg):
    return LoadError(f"{name}: invalid safetensors header: {msg}")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _parse_header(raw: bytes, data_len: int, name: str):
    # (a duplicate key or deep nesting is said as such: both were "not valid JSON",
    # of JSON that is valid)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise _header_error(name, f"duplicate key {e.args[0]!r}"[:300]) from None
    except RecursionError:
        raise _header_error(name, "the JSON nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _header_error(name, f"not valid JSON ({e})"[:300]) from e
    if not isinstance(header, dict):
        raise _header_error(name, "top level is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _header_error(name, "__metadata__ must map strings to strings")
    entries = []
    for key, info in header.items():
        if not isinstance(info, dict):
            raise _header_error(name, f"entry {key!r} is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _header_error(name, f"tensor {key!r} has no dtype")
        if dtype not in _ITEMSIZE:
            raise LoadError(f"{name}: tensor {key!r} has unsupported dtype {dtype[:20]!r} "
                            f"(supported: {', '.join(_ITEMSIZE)})")
        if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
                or not all(type(s) is int and s >= 0 for s in shape)):
            raise _header_error(name, f"tensor {key!r}: shape must be a list of non-negative ints")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int and o >= 0 for o in offs)):
            raise _header_error(name, f"tensor {key!r}: data_offsets must be two non-negative ints")
        begin, end = offs
        if begin > end or end > data_len:
            raise _header_error(
                name, f"tensor {key!r}: data_offsets [{begin}, {end}] outside the data section "
                f"of {data_len} bytes")
        numel = nominal = 1
        for s in shape:
            numel *= s
            nominal *= max(s, 1)
        if numel * _ITEMSIZE[dtype] != end - begin:
            raise _header_error(
                name, f"tensor {key!r}: shape {shape} of {dtype} needs {numel * _ITEMSIZE[dtype]} "
                f"bytes but data_offsets span {end - begin}")
        if nominal * _ITEMSIZE[dtype] >= 1 << 62:
            # empty, but numpy refuses the shape (its size check multiplies the other
            # dimensions)
            raise _header_error(name, f"tensor {key!r}: shape {shape} is too large")
        entries.append((key, dtype, tuple(shape), begin, end))
    # Each tensor is read into an array of its own, so byte ranges shared by many
    # entries would make a small file allocate many times its size.  Overlaps are
    # refused (as the reference reader does; empty tensors take no bytes).  Gaps
    # and trailing bytes, which it also refuses, are accepted: they cost nothing,
    # and the tensors' total then stays within the data section.
    prev = None
    for e in sorted((e for e in entries if e[4] > e[3]), key=lambda e: e[3]):
        if prev is not None and e[3] < prev[4]:
            raise _header_error(name, f"tensors {prev[0]!r} and {e[0]!r} overlap (data_offsets "
                                      f"[{prev[3]}, {prev[4]}] and [{e[3]}, {e[4]}])")
        prev = e
    return entries, meta


def _to_array(buf, dtype, shape, begin, end):
    if dtype == "BF16":
        u = np.frombuffer(buf, dtype="<u2", count=(end - begin) // 2, offset=begin)
        arr = (u.astype(np.uint32) << 16).view(np.float32)
    else:
        dt = np.dtype(SAFETENSORS_DTYPES[dtype])
        arr = np.frombuffer(buf, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin)
        arr = arr.astype(dt.newbyteorder("="), copy=True)
    return arr.reshape(shape)


def _read_array(f, pos, dtype, shape, begin, end, name):
    """The tensor at file position ``pos`` (bytes ``begin`` .. ``end`` of the data
    section), read into an array of its own, as :func:`_to_array` makes it."""
    dt = np.dtype("<u2" if dtype == "BF16" else SAFETENSORS_DTYPES[dtype])
    arr = np.empty(shape, dt)               # (its own memory: a loader may keep it)
    view = memoryview(arr.reshape(-1)).cast("B")    # (a view: 0 in a shape)
    f.seek(pos)
    got = 0
    while got < len(view):
        k = f.readinto(view[got:]) if hasattr(f, "readinto") else None
        if k is None:                       # (a file object without readinto)
            chunk = f.read(len(view) - got)
            k = len(chunk)
            view[got:got + k] = chunk
        if not k:
            raise LoadError(f"{name}: file truncated while reading tensor data")
        got += k
    if dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    return arr


def read_safetensors_metadata(path_or_bytes) -> dict[str, str]:
    """Only the ``__metadata__`` of a safetensors file (the header is still
    fully validated; tensor data is not read)."""
    return read_safetensors(path_or_bytes, _header_only=True)[1]


def read_safetensors(path_or_bytes, *, _header_only=False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file (path, bytes-like or binary file object).

    Returns ``(tensors, metadata)``; arrays are writable native-endian
    copies, BF16 is widened to float32.  Raises :class:`LoadError` for any
    malformed or unsupported content.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        buf = memoryview(path_or_bytes).cast("B")
        name = "<bytes>"
        total = len(buf)
        if total < 8:
            raise LoadError(f"{name}: too short for a safetensors file ({total} bytes)")
        (n,) = struct.unpack("<Q", buf[:8])
        if n > MAX_HEADER or 8 + n > total:
            raise LoadError(f"{name}: header length {n} exceeds the file size ({total} bytes)")
        entries, meta = _parse_header(bytes(buf[8:8 + n]), total - 8 - n, name)
        if _header_only:
            return {}, meta
        data = buf[8 + n:]
        return {k: _to_array(data, dt, shp, b, e) for k, dt, shp, b, e in entries}, meta

    if isinstance(path_or_bytes, (str, os.PathLike)):
        name = os.fspath(path_or_bytes)
        f, close = open_file(name), True
    elif hasattr(path_or_bytes, "read"):
        f, name, close = path_or_bytes, getattr(path_or_bytes, "name", "<file object>"), False
    else:
        raise TypeError(f"expected a path, bytes or a binary file, got {type(path_or_bytes).__name__}")
    try:
        start = f.tell()
        f.seek(0, os.SEEK_END)
        total = f.tell() - start
        f.seek(start)
        head = f.read(8)
        if len(head) < 8:
            raise LoadError(f"{name}: too short for a safetensors file ({total} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > total:
            raise LoadError(f"{name}: header length {n} exceeds the file size ({total} bytes)")
        raw = f.read(n)
        data_len = total - 8 - n
        entries, meta = _parse_header(raw, data_len, name)
        if _header_only:
            return {}, meta
        # each tensor read straight into its own array (no copy of the whole data
        # section beside them: a load's peak is the weights once, not twice)
        at = start + 8 + n
        return {k: _read_array(f, at + b, dt, shp, b, e, name)
                for k, dt, shp, b, e in entries}, meta
    finally:
        if close:
            f.close()


def _st_dtype(arr: np.ndarray, key: str) -> str:
    dt = arr.dtype
    if dt.kind in "biuf" and dt.byteorder in ("=", "|", "<", ">"):
        st = _NP_TO_ST.get(dt.newbyteorder("<").str) or _NP_TO_ST.get(dt.str)
        if st is not None:
            return st
    # (a TypeError, as for metadata of the wrong type: the caller's array, not a file,
    # is at fault; it was a LoadError, a loading error raised by a write)
    raise TypeError(f"cannot write tensor {key!r} as safetensors: dtype {dt} is not one "
                    "fastrnn writes (float64/32/16, int64/32/16/8, uint64/32/16/8, bool)")


def write_safetensors(path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> numpy array) as a safetensors file.

    The header is padded with spaces to a multiple of 8 bytes so the data
    section is 8-byte aligned, like the reference writer; tensors are laid
    out in name order.  ``path`` may also be a binary file object.  Files
    are written atomically (temporary file + rename) when given a path.

    Raises ``TypeError`` for an array of a dtype it does not write (complex,
    object, strings, structured ...; the message names the tensor and its dtype)
    and for ``tensors`` or ``metadata`` that are no mapping of the right types,
    ``ValueError`` for an invalid tensor name; nothing is written then.
    """
    header: dict = {}
    if not isinstance(tensors, Mapping):
        raise TypeError("safetensors tensors must be a mapping of str to arrays, got "
                        f"{type(tensors).__name__}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError("safetensors metadata must be a mapping of str to str, got "
                        f"{type(metadata).__name__}")
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    arrays = []
    pos = 0
    for key in tensors:         # (before sorting: a name that is no str does not sort)
        if not isinstance(key, str) or key == "__metadata__":
            raise ValueError(f"invalid tensor name {key!r}")
    for key in sorted(tensors):
        arr = np.asarray(tensors[key])
        st = _st_dtype(arr, key)
        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # keeps 0-d
        nbytes = arr.nbytes
        header[key] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [pos, pos + nbytes]}
        arrays.append(arr)
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)

    def _write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())

    if hasattr(path, "write"):
        _write(path)
        return
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastrnn-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------
# fastrnn's own files: a safetensors file whose metadata carries the config

METADATA_KEY = "fastrnn"


def save(layer, path) -> None:
    """Save a fastrnn layer/model as safetensors with its config in the
    metadata (``{"fastrnn": json.dumps(layer.get_config())}``), so it can be
    loaded back with :func:`load_fastrnn_safetensors` and nothing else."""
    if not (callable(getattr(layer, "get_config", None)) and callable(getattr(layer, "state_dict", None))):
        raise TypeError(f"fastrnn.io.save needs a fastrnn layer (get_config() and state_dict()), "
                        f"got {type(layer).__name__}")
    cfg = layer.save_config() if hasattr(layer, "save_config") else layer.get_config()
    meta = {METADATA_KEY: json.dumps(cfg, sort_keys=True)}
    write_safetensors(path, layer.state_dict(), meta)


def load_fastrnn_safetensors(path, *, dtype=None, num_threads=None, **other):
    """Load a layer/model written by :func:`save`.  ``dtype`` / ``num_threads``: the
    layer's or cell's (its saved config's otherwise); a saved Model takes neither (pass
    ``num_threads=`` to its call), and the config fixes everything else (another keyword
    is a TypeError: it was silently ignored)."""
    if other:
        raise TypeError(f"{_name(path)} is fastrnn's own file, whose config fixes the rest: "
                        f"only dtype= and num_threads= apply, got {', '.join(sorted(other))}")
    from . import _check_args
    _check_args(dtype, num_threads)
    tensors, meta = read_safetensors(path)
    text = meta.get(METADATA_KEY)
    if text is None:
        raise LoadError(f"{_name(path)}: no 'fastrnn' entry in the safetensors metadata "
                        "(not written by fastrnn; use fastrnn.io.load_state_dict)")
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise LoadError(f"{_name(path)}: the fastrnn config in the metadata is not JSON") from e
    from ..layers import layer_from_config  # lazy: io never imports the core at import time

    if not isinstance(cfg, dict):
        raise LoadError(f"{_name(path)}: the fastrnn config in the metadata is not a JSON object")
    if cfg.get("class_name") == "Model" and (dtype is not None or num_threads is not None):
        raise TypeError(f"{_name(path)} holds a Model, which takes neither dtype= nor "
                        "num_threads= at load (pass num_threads= to its call or predict)")
    try:
        if cfg.get("class_name") == "Model":
            from ..model import model_from_config
            return model_from_config(cfg, tensors, _adopt=set())   # (ours alone too)
        cfg.update((k, v) for k, v in (("dtype", dtype), ("num_threads", num_threads))
                   if v is not None)
        layer = layer_from_config(cfg, tensors, _adopt=set())   # (the arrays are ours alone)
    except LoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError,
            OverflowError) as e:
        # (a number too large for a float, 10**400, in the config: an OverflowError)
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if not msg.startswith("config and weights do not fit"):
            msg = f"config and weights do not fit ({msg})"
        raise LoadError(f"{_name(path)}: {msg}"[:600]) from e
    return layer


def _name(p):
    return os.fspath(p) if isinstance(p, (str, os.PathLike)) else "<file>"
