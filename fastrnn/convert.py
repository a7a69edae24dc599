"""Build fastrnn layers from live framework objects (torch is never imported here)."""
from __future__ import annotations

import warnings

import numpy as np

from .layers import _WEIGHTS_FOLLOW, GRU, LSTM, SimpleRNN, _torch_numpy

_TORCH_RNN = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


def _torch_base(cls):
    """The torch.nn.RNN / LSTM / GRU class ``cls`` derives from, or None."""
    for c in cls.__mro__:
        if c.__module__ == "torch.nn.modules.rnn" and c.__name__ in _TORCH_RNN:
            return c
    return None


def _weight_hook(hook) -> str | None:
    """"weight_norm" / "prune" for the forward pre-hooks with which old-style
    ``weight_norm`` and ``torch.nn.utils.prune`` compute a weight from its factors, else
    None."""
    kind = type(hook)
    if kind.__name__ == "WeightNorm":
        return "weight_norm"
    if kind.__module__.startswith("torch.nn.utils.prune"):
        return "prune"
    return None


def _behaviour_beyond_weights(module) -> list:
    """What a module does besides torch's computation on its weights, which a copy of
    the weights leaves out: a ``forward`` of its own, forward hooks (weight_norm's and
    pruning's pre-hooks only refresh the weights read here: they are fine)."""
    found = []
    base = _torch_base(type(module))
    if base is not None:
        for c in type(module).__mro__:
            if c is base:
                break
            if "forward" in c.__dict__:
                found.append(f"{c.__name__} overrides forward()")
                break
    for what in ("_forward_pre_hooks", "_forward_hooks"):
        for hook in dict(getattr(module, what, None) or {}).values():
            if _weight_hook(hook):
                continue
            found.append(f"a forward {'pre-' if 'pre' in what else ''}hook "
                         f"({getattr(hook, '__name__', type(hook).__name__)})")
    return found


def _hooked_weights(module) -> dict:
    """The weights that old-style ``weight_norm`` and ``torch.nn.utils.prune`` compute in
    their forward pre-hooks, from the module's current factors: the attribute is only
    refreshed by the next forward, so after an optimizer step it still holds the
    previous weights (torch's own ``compute_weight`` / ``apply_mask``, not called on
    anything read from a file)."""
    out = {}
    for hook in dict(getattr(module, "_forward_pre_hooks", None) or {}).values():
        kind = _weight_hook(hook)
        if kind == "weight_norm" and hasattr(hook, "compute_weight"):
            out[hook.name] = hook.compute_weight(module)
        elif kind == "prune":
            for h in getattr(hook, "_pruning_methods", None) or [hook]:
                name = getattr(h, "_tensor_name", None)
                if isinstance(name, str) and hasattr(hook, "apply_mask"):
                    out[name] = hook.apply_mask(module)
    return out


def torch_weights(module, names) -> dict:
    """The weights torch's forward uses, by name: read as attributes (so parametrized,
    weight-normed and pruned modules give their effective weights, not the stored
    factors; the latter two computed as their hooks would), else from the state dict."""
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        try:
            hooked = _hooked_weights(module)
            return {n: _torch_numpy(hooked[n] if n in hooked else getattr(module, n), n)
                    for n in names}
        except AttributeError:
            pass
    return {k: _torch_numpy(v, k) for k, v in module.state_dict().items()}


def from_torch(module, *, dtype=None, num_threads=None):
    """The fastrnn equivalent of a live ``torch.nn.RNN``, ``LSTM`` or ``GRU`` module (or
    ``RNNCell`` / ``LSTMCell`` / ``GRUCell``: :func:`fastrnn.cells.from_torch_cell`).

    Weights are copied; the result does not depend on torch.  ``dtype`` defaults to the
    module's (float64 stays float64, anything else becomes float32).  A module made by
    ``torch.compile`` is unwrapped; parametrized, weight-normed or pruned modules give
    the weights their forward uses.  fastrnn computes torch's RNN on those weights and
    nothing else: a subclass's own ``forward`` or a forward hook is left out (a
    warning says so), as is dropout (a module in training mode with dropout warns).
    Dynamically quantized modules are refused (convert the float module).
    """
    if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
        module = module._orig_mod                  # torch.compile's wrapper
    kind = type(module).__name__
    if "quantized" in type(module).__module__:
        raise TypeError(f"from_torch: {type(module).__module__}.{kind} is a quantized module; "
                        "convert the float module (before quantize_dynamic) instead")
    from .cells import _torch_cell_kind, from_torch_cell
    cell = _torch_cell_kind(module)
    mode = getattr(module, "mode", None)
    if cell is None and mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        raise TypeError(f"from_torch expects torch.nn.RNN, LSTM, GRU or their cells, "
                        f"got {kind}")
    extra = _behaviour_beyond_weights(module)
    if extra:
        warnings.warn(f"from_torch: {kind}: {', '.join(extra)}; fastrnn copies the weights "
                      "only and computes torch.nn's recurrence on them, so its outputs "
                      "differ wherever that code changes them", stacklevel=2)
    if cell is not None:
        return from_torch_cell(module, dtype=dtype, num_threads=num_threads)
    drop = float(getattr(module, "dropout", 0.0) or 0.0)
    if getattr(module, "training", False) and drop and module.num_layers > 1:
        warnings.warn(f"from_torch: {kind} is in training mode with dropout={drop:g}; "
                      "fastrnn computes what the module does in eval() (no dropout)",
                      stacklevel=2)
    sd = torch_weights(module, getattr(module, "_flat_weights_names", None))
    if dtype is None:
        first = next(iter(sd.values()))
        dtype = np.float64 if first.dtype == np.float64 else np.float32
    common = dict(num_layers=module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, bidirectional=module.bidirectional,
                  dropout=drop, dtype=dtype, num_threads=num_threads,
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
