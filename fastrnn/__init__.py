"""fastrnn: fast CPU recurrent layers (SimpleRNN, LSTM, GRU) that load PyTorch, Keras and
ONNX models without the frameworks.

Public API only; see the README for a tour.
"""
def _check_built() -> None:
    """A source checkout imported without its extensions built (Python started inside
    the checkout while fastrnn is installed elsewhere): say so now, not as "cannot import
    name '_kernels'" at the first call."""
    import importlib.machinery
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        names = os.listdir(here)
    except OSError:
        return
    if "_kernels.pyx" in names and not any(
            n.startswith("_kernels.") and n.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
            for n in names):
        raise ImportError(f"fastrnn is being imported from {here}, a source tree whose "
                          "compiled kernels are not built: build them there (`python "
                          "setup.py build_ext --inplace`) or run Python from another "
                          "directory to use the installed fastrnn")


_check_built()

from ._threads import get_num_threads, set_num_threads  # noqa: E402
from .layers import GRU, LSTM, SimpleRNN, layer_from_config  # noqa: E402
from .cells import GRUCell, LSTMCell, RNNCell, from_torch_cell  # noqa: E402
from .convert import from_torch  # noqa: E402
from .stream import Stream  # noqa: E402

RNN = SimpleRNN     # (torch.nn's name: the same arguments in the same order)

__version__ = "0.1.0"

__all__ = [
    "SimpleRNN", "RNN", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell", "Stream",
    "from_torch", "from_torch_cell", "layer_from_config",
    "set_num_threads", "get_num_threads", "load", "__version__",
]


def load(path, *args, **kwargs):
    """Load a model or layer from a file, recognising the format from its content.

    Supported: PyTorch ``torch.save`` files (zip and legacy; state dicts, checkpoints,
    pickled ``torch.nn`` modules), TorchScript archives, ``torch.export`` ``.pt2``
    archives, safetensors (PyTorch state dicts and fastrnn's own files), Keras
    ``.keras`` / ``.h5`` (a weights-only file with ``architecture=``) and ONNX models;
    other arguments go to the format's loader (see the README, "Loading models").
    """
    from .io import load as _load
    return _load(path, *args, **kwargs)
