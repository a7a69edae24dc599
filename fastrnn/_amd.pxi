# The AMD hook (fr_cache.h's fr_amd), included by _kernels.pyx and _backward.pyx: each
# module has its own copy of the CPUID answer (in _kernels the overlapped unit split's
# and the batch-lane kernel's rules read it, in _backward the LSTM route's).

cdef extern from "fr_cache.h":
    int fr_amd() nogil              # any AMD
    int fr_amd_cache


def amd():
    """Whether this CPU is an AMD (any family; :func:`_set_amd` may say otherwise).  In
    ``fastrnn._kernels``: the packed kernel's unit split never overlaps there
    (``step_overlap_applies``); LSTM / GRU take the batch-lane kernel only from four
    panels of rows or 4 MiB of weights (``wide_gates_at``); a ragged batch whose panels
    the threads would split leaves it (LSTM / GRU) or splits it by unit groups
    (SimpleRNN; ``wide_ragged_mode``).  In ``fastrnn._backward``: the LSTM route has its
    own rule (``fused_lstm_route_at``)."""
    return bool(fr_amd())


def _set_amd(int mode):
    """Test hook: treat this CPU as an AMD (1) or not (0) in this module's rules
    (``fastrnn._kernels``: the overlapped unit split's and the batch-lane kernel's;
    ``fastrnn._backward``: the LSTM route's); -1 reads CPUID again.
    Returns the previous value."""
    global fr_amd_cache
    _hooks_changed()
    old = fr_amd()
    fr_amd_cache = -1 if mode < 0 else (1 if mode else 0)
    return old
