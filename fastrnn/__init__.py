"""fastrnn: fast CPU recurrent layers (SimpleRNN, LSTM, GRU) that load PyTorch, Keras and
ONNX models without the frameworks.

Public API only; see the README for a tour.
"""
from ._threads import get_num_threads, set_num_threads
from .layers import GRU, LSTM, SimpleRNN, layer_from_config
from .cells import GRUCell, LSTMCell, RNNCell, from_torch_cell
from .convert import from_torch
from .stream import Stream

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
