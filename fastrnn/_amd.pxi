# The AMD hook (fr_cache.h's fr_amd), included by _kernels.pyx and _backward.pyx: each
# module has its own copy of the CPUID answer (in _kernels the overlapped unit split's
# and the batch-lane kernel's ragged rules read it, in _backward the LSTM route's).

cdef extern from "fr_cache.h":
    int fr_amd() nogil              # any AMD
    int fr_amd_cache


def amd():
    """Whether this CPU is an AMD (any family; :func:`_set_amd` may say otherwise): in
    ``fastrnn._kernels`` the packed kernel's unit split never overlaps there
    (``step_overlap_applies``) and ragged LSTM / GRU batches leave the batch-lane
    kernel where its threads would split the panels, and ragged SimpleRNN batches
    split it by unit groups (``wide_ragged_mode``), in
    ``fastrnn._backward`` the LSTM route has its own rule (``fused_lstm_route_at``)."""
    return bool(fr_amd())


def _set_amd(int mode):
    """Test hook: treat this CPU as an AMD (1) or not (0) in this module's rules
    (``fastrnn._kernels``: the overlapped unit split's and the batch-lane kernel's
    ragged rule; ``fastrnn._backward``: the LSTM route's); -1 reads CPUID again.
    Returns the previous value."""
    global fr_amd_cache
    _hooks_changed()
    old = fr_amd()
    fr_amd_cache = -1 if mode < 0 else (1 if mode else 0)
    return old
