"""Build fastrnn layers from live framework objects (torch is never imported here)."""
from __future__ import annotations

import numpy as np

from .layers import _WEIGHTS_FOLLOW, GRU, LSTM, SimpleRNN, _torch_numpy


def from_torch(module, *, dtype=None, num_threads=None):
    """The fastrnn equivalent of a live ``torch.nn.RNN``, ``LSTM`` or ``GRU`` module.

    Weights are copied; the result does not depend on torch.  ``dtype`` defaults to the
    module's (float64 stays float64, anything else becomes float32).
    """
    kind = type(module).__name__
    mode = getattr(module, "mode", None)
    if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        raise TypeError(f"from_torch expects torch.nn.RNN, LSTM or GRU, got {kind}")
    sd = {k: _torch_numpy(v, k) for k, v in module.state_dict().items()}
    if dtype is None:
        first = next(iter(sd.values()))
        dtype = np.float64 if first.dtype == np.float64 else np.float32
    common = dict(num_layers=module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, bidirectional=module.bidirectional,
                  dropout=float(getattr(module, "dropout", 0.0)),
                  dtype=dtype, num_threads=num_threads,
                  seed=_WEIGHTS_FOLLOW)            # (loaded below, strict)
    if mode == "LSTM":
        layer = LSTM(module.input_size, module.hidden_size,
                     proj_size=getattr(module, "proj_size", 0), **common)
    elif mode == "GRU":
        layer = GRU(module.input_size, module.hidden_size, **common)
    else:
        layer = SimpleRNN(module.input_size, module.hidden_size,
                          nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **common)
    layer.load_state_dict(sd)
    return layer
