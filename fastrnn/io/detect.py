"""Recognise a model file's format from its content (the suffix only breaks ties)."""

from __future__ import annotations

import importlib
import io
import os
import struct
import zipfile

from . import LoadError, open_file

__all__ = ["sniff_format", "load", "FORMATS"]

FORMATS = ("torch-zip", "torch-legacy", "torch-export", "safetensors", "keras-zip", "hdf5",
           "onnx", "npz")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# the legacy torch.save format starts with its magic number, pickled (protocol 2: this)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")


def is_legacy_head(head: bytes) -> bool:
    """Whether ``head`` (a file's first 28 bytes or more) starts the legacy format: its
    magic number pickled under any protocol ``torch.save(..., pickle_protocol=)`` takes
    (2, the default: ``LEGACY_PREFIX``; 3; 4 and 5 put the pickle in a FRAME; 0 and 1
    write it as text)."""
    head = bytes(head[:28])
    if head.startswith(b"L%dL\n." % LEGACY_MAGIC):     # (protocols 0 and 1: a text long)
        return True
    head = head[:23]
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    body = head[2:]
    if body[:1] == b"\x95":                # FRAME + its 8-byte length
        body = body[9:]
    return body[:12] == LEGACY_PREFIX[2:]


_ONNX_SUFFIXES = (".onnx", ".ort")


def _varint(b: bytes, i: int):
    """Decode a protobuf varint at ``b[i]``; returns (value, next index) or None."""
    val = 0
    for shift in range(0, 64, 7):
        if i >= len(b):
            return None
        c = b[i]
        i += 1
        val |= (c & 0x7F) << shift
        if not c & 0x80:
            return val, i
    return None


def _looks_like_onnx(head: bytes) -> bool:
    """Cheap check for an ONNX ModelProto: it starts with field 1 ``ir_version``
    (varint, 1..64) followed by another ModelProto field tag (producer_name,
    producer_version, domain, model_version, doc_string, graph, opset_import,
    metadata_props, training_info, functions, configuration)."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    r = _varint(head, 1)
    if r is None or not 1 <= r[0] <= 64 or r[1] >= len(head):
        return False
    return head[r[1]] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82, 0x8A)


def _zip_kind(f, name: str) -> str:
    try:
        names = zipfile.ZipFile(f).namelist()
    except Exception as e:  # BadZipFile, NotImplementedError, OSError, ... on damaged archives
        raise LoadError(f"{name}: looks like a zip archive but cannot be read "
                        f"({type(e).__name__}: {e})"[:400]) from e
    from .pt2 import is_pt2
    if is_pt2(names):
        return "torch-export"
    if any((n == "data.pkl" or n.endswith("/data.pkl")) and n.count("/") <= 1 for n in names):
        return "torch-zip"
    if "config.json" in names and "model.weights.h5" in names:
        return "keras-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise LoadError(f"{name}: a zip archive that is neither a torch.save file, a .keras "
                    f"model nor an .npz file (entries: {', '.join(names[:5])}"
                    f"{', ...' if len(names) > 5 else ''})")


def sniff_format(path_or_fileobj) -> str:
    """One of ``'torch-zip'``, ``'torch-legacy'``, ``'torch-export'`` (``.pt2``),
    ``'safetensors'``, ``'keras-zip'``,
    ``'hdf5'``, ``'onnx'``, ``'npz'``; :class:`LoadError` naming the file otherwise.

    File objects are left at the position they had."""
    if isinstance(path_or_fileobj, (bytes, bytearray, memoryview)):
        f, name, suffix, close = io.BytesIO(bytes(path_or_fileobj)), "<bytes>", "", True
    elif isinstance(path_or_fileobj, (str, os.PathLike)):
        name = os.fspath(path_or_fileobj)
        suffix = os.path.splitext(name)[1].lower()
        f, close = open_file(name), True
    elif hasattr(path_or_fileobj, "read") and hasattr(path_or_fileobj, "seek"):
        f, close = path_or_fileobj, False
        name = str(getattr(f, "name", "<file object>"))
        suffix = os.path.splitext(name)[1].lower()
    else:
        raise TypeError(f"expected a path or a binary file object, got {type(path_or_fileobj).__name__}")
    start = f.tell()
    try:
        head = f.read(64)
        f.seek(0, os.SEEK_END)
        size = f.tell() - start
        f.seek(start)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _zip_kind(f, name)
        if head[:8] == _HDF5_MAGIC:
            return "hdf5"
        # HDF5 with a user block: the superblock sits at 512, 1024, 2048, ...
        off = 512
        while off + 8 <= min(size, 1 << 16):
            f.seek(start + off)
            if f.read(8) == _HDF5_MAGIC:
                return "hdf5"
            off *= 2
        if is_legacy_head(head):
            return "torch-legacy"
        if len(head) >= 9:
            (n,) = struct.unpack("<Q", head[:8])
            if 2 <= n <= size - 8 and head[8:9] == b"{":
                return "safetensors"
        if suffix in _ONNX_SUFFIXES or _looks_like_onnx(head):
            if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
                return "onnx"
        hint = ""
        if head[:1] == b"\x80":
            hint = " (a plain pickle: fastrnn only reads torch.save files)"
        elif len(head) >= 9 and head[8:9] == b"{" and (
                suffix == ".safetensors" or head[9:10] == b'"'):
            (n,) = struct.unpack("<Q", head[:8])
            hint = (f" (a safetensors header of {n} bytes in a file of {size}: truncated "
                    "or damaged?)")
        raise LoadError(f"{name}: unknown model file format{hint}")
    finally:
        if close:
            f.close()
        else:
            f.seek(start)


def _format_loader(module: str, names: tuple[str, ...], fmt: str):
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ImportError as e:
        raise LoadError(f"no loader for {fmt} files is available ({e})") from e
    for n in names:
        fn = getattr(mod, n, None)
        if callable(fn):
            return fn
    raise LoadError(f"fastrnn.io.{module} has no loader function for {fmt} files")


def load(path, *args, **kwargs):
    """Load a model or layer, choosing the reader from the file's content.

    torch.save files and safetensors go to :func:`fastrnn.io.load_any_torchlike`;
    Keras (``.keras`` zip, ``.h5``) and ONNX files go to their loaders.
    """
    from . import _check_args, _name_the_file
    # the caller's own arguments first, before the file is opened (a TypeError /
    # ValueError, as each format's loader raises it, not a LoadError about the file)
    _check_args(kwargs.get("dtype"), kwargs.get("num_threads"))
    try:
        return _load(path, args, kwargs)
    except LoadError as e:      # (every one names the file)
        raise _name_the_file(e, path)


def _load(path, args, kwargs):
    fmt = sniff_format(path)
    if fmt == "onnx" and kwargs.get("dtype") is not None:
        raise TypeError(f"{path}: ONNX models take no dtype= (each value keeps the type "
                        "the graph gives it)")
    if fmt in ("torch-zip", "torch-legacy", "torch-export", "safetensors"):
        from .statedict import load_any_torchlike

        return load_any_torchlike(path, *args, **kwargs)
    if fmt in ("keras-zip", "hdf5"):
        return _format_loader("keras", ("load", "load_keras", "load_model"), fmt)(path, *args, **kwargs)
    if fmt == "onnx":
        return _format_loader("onnx", ("load", "load_onnx", "load_model"), fmt)(path, *args, **kwargs)
    raise LoadError(f"{path}: {fmt} files hold arrays, not a model; "
                    "use numpy.load and fastrnn.io.load_state_dict(mapping)")
