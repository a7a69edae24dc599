"""File loaders and writers for fastrnn (PyTorch, safetensors, Keras, ONNX).

This module is kept tiny: it defines the error classes and resolves the
public functions lazily, so ``import fastrnn.io`` imports nothing heavy and
never imports ``fastrnn.layers`` (or any training framework).
"""

from __future__ import annotations

import importlib


class LoadError(ValueError):
    """A model or weight file could not be read (corrupt, inconsistent or unsupported)."""


class UnsafeFileError(LoadError):
    """A file asked to run or import code that fastrnn refuses to touch.

    Raised for pickles that reference globals outside the small allow-list
    needed for tensors (for example ``os.system`` or ``builtins.eval``).
    Nothing from the file has been executed when this is raised.
    """


def open_file(name):
    """``open(name, "rb")`` for a regular file; a :class:`LoadError` naming what else it
    is (a FIFO, which a plain open would wait on until a writer came; a device; a socket;
    a directory).  Opened without blocking, then checked, so nothing is read first."""
    import os
    import stat
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError as e:
        raise LoadError(f"cannot open {name}: it is a directory, not a file") from e
    except OSError as e:
        raise LoadError(f"cannot open {name}: {e}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "a special file")
        raise LoadError(f"cannot open {name}: it is {kind}, not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _check_args(dtype=None, num_threads=None) -> None:
    """A loader's own ``dtype`` / ``num_threads`` arguments, checked before any file is
    read: a bad one is the caller's TypeError / ValueError, as the layers raise it (not
    a LoadError, which says the file is at fault)."""
    if dtype is not None:
        from ..layers import _as_dtype
        _as_dtype(dtype)
    if num_threads is not None:
        from .._threads import _check_threads
        _check_threads(num_threads)


def _warn_user(message: str) -> None:
    """``warnings.warn(message)`` pointed at the first caller outside fastrnn (loaders
    reach a warning through different depths of calls)."""
    import os
    import sys
    import warnings
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(pkg):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _name_the_file(err: LoadError, path) -> LoadError:
    """``err`` with the file's name in front of its message where the message does not
    name it already (errors raised about a module, key or tensor deep in a loader)."""
    import os
    if isinstance(path, (str, os.PathLike)) and err.args and isinstance(err.args[0], str):
        name = os.fspath(path)
        if name not in err.args[0] and os.path.basename(name) not in err.args[0]:
            err.args = (f"{name}: {err.args[0]}",) + err.args[1:]
    return err


# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "read_torch_file": "torchfile",
    "read_torch_object": "torchfile",
    "ModuleStub": "torchfile",
    "read_safetensors": "safetensors",
    "write_safetensors": "safetensors",
    "save": "safetensors",
    "load_fastrnn_safetensors": "safetensors",
    "RNNSpec": "statedict",
    "find_rnn_modules": "statedict",
    "extract_module": "statedict",
    "read_state_dict": "statedict",
    "load_state_dict": "statedict",
    "list_modules": "statedict",
    "load_any_torchlike": "statedict",
    "read_safetensors_metadata": "safetensors",
    "build_layer": "statedict",
    "sniff_format": "detect",
    "load_keras": "keras",
    "model_from_keras_config": "keras",
    "load_onnx": "onnx",
    "OnnxModel": "onnx",
    "load": "detect",
}

__all__ = ["LoadError", "UnsafeFileError", *sorted(_LAZY)]


def __getattr__(name: str):
    sub = _LAZY.get(name)
    if sub is None:
        raise AttributeError(f"module 'fastrnn.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
