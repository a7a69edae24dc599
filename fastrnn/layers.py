"""Recurrent layers: SimpleRNN, LSTM, GRU (stacked, bidirectional, float32/float64).

Weights are held in PyTorch's layout and naming (``weight_ih_l0`` ``(G*H, I)``,
``weight_hh_l0`` ``(G*H, H)``, ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0`` for the
LSTM projection, ``_reverse`` for the second direction; gate order LSTM i f g o, GRU
r z n).  Every source format is converted to this layout by its loader.  When weights
change they are validated once and packed once for the kernels (unit blocks, biases
fused; the matrices themselves are not copied); a call never converts weights.

Layers own validation; the kernels in ``_kernels.pyx`` trust their arguments.
"""
from __future__ import annotations

import importlib
import math
import numbers
import weakref
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import _threads

__all__ = ["SimpleRNN", "LSTM", "GRU", "RNNBase", "layer_from_config", "parse_activation"]

# (name, alpha default, beta default) of the activations ONNX allows in RNN nodes.
_ACT_DEFAULTS = {
    "sigmoid": (0.0, 0.0), "tanh": (0.0, 0.0), "relu": (0.0, 0.0),
    "hardsigmoid": (0.2, 0.5), "leakyrelu": (0.01, 0.0), "affine": (1.0, 0.0),
    "scaledtanh": (1.0, 1.0), "elu": (1.0, 0.0), "softsign": (0.0, 0.0),
    "softplus": (0.0, 0.0), "thresholdedrelu": (1.0, 0.0), "linear": (0.0, 0.0),
}
_ACT_ALIASES = {"hard_sigmoid": "hardsigmoid", "leaky_relu": "leakyrelu",
                "identity": "linear", "none": "linear", "scaled_tanh": "scaledtanh",
                "thresholded_relu": "thresholdedrelu"}

# kernels' cell codes
_CELL_CODE = {"RNN": 0, "LSTM": 1, "GRU": 2}
_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
# the activations PyTorch uses (a repr names any others)
_PLAIN_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
# about this many bytes of projected inputs live at once: the BLAS path's projection
# GEMM (now only behind the test hook _kernels._set_path(2)) wants many rows per GEMM;
# the packed kernel wants its chunk
# to stay in the cores' L2 between projecting it and reading it back.  Measured on an
# AVX2 EPYC (1 MiB L2 per core, 2 threads, in-process interleaved, 512 KiB vs 4 MiB):
# LSTM B=16 T=100 H=256 min 0.87-0.95x, median 0.93-0.96x; GRU B=16 0.79x / 0.92x;
# LSTM B=32 0.90x / 0.91x; SimpleRNN B=64 0.84x / 0.90x; B <= 8, B=64 H=512, float64
# and SimpleRNN B=16 within +-8% with no consistent direction
_CHUNK_BYTES = 4 << 20
_SMALL_CHUNK_BYTES = 512 << 10
# ... except where a thread's share of a direction's weights (input and recurrent)
# exceeds 3/4 of its L2: then every chunk's projection pass evicts the recurrent weights
# the steps read next, and fewer, larger chunks pay that fewer times.  Measured on an Intel
# Xeon (2 MiB L2, 2 threads, in-process interleaved, 4 MiB / 512 KiB): LSTM B=1 T=100
# H=512 0.94-0.96x, B=2 0.95x, B=4 0.93-0.95x, B=8 0.98-0.99x, H=384 0.94-0.97x, GRU
# H=512 0.95-0.96x; H=320 (0.8 of the L2) B=1-2 0.99-1.00x; weights in half the L2
# (H=256) 1.00-1.02x, so they keep 512 KiB.  The pair (one thread a
# direction): BiLSTM B=8 H=256 layer 1 (2 MiB) 0.985x, B=4 0.975x, 2 layers ~0.96x;
# within 3/4 of the L2 it caps its chunk lower (_kernels.run_pair).
_SMALL_CHUNK_BYTES_BEYOND_L2 = 4 << 20


def _chunk_steps(small, G, H, I, B, T, itemsize, share):
    """Time steps per chunk of projected inputs for one layer (input size I); share:
    the threads that split a direction's weights (1 for the pair)."""
    if not small:
        nbytes = _CHUNK_BYTES
    elif G * H * (I + H) * itemsize * 4 > 3 * share * _l2_bytes():
        nbytes = _SMALL_CHUNK_BYTES_BEYOND_L2
    else:
        nbytes = _SMALL_CHUNK_BYTES
    n = nbytes // (B * G * H * itemsize or 1)
    return T if n >= T else (n if n > 1 else 1)


# Plain LSTM directions run through the training forward (``_fused_lstm_dir``, AVX2
# 4 x 3 kernel) at the batch sizes where it measured faster than the packed inference
# kernel (``_backward.fused_lstm_route_at``), in chunks of steps with about
# _FUSED_LSTM_CHUNK_BYTES of scratch (gates, cell states, outputs).  -1: that rule;
# 0: never; n > 0: from n sequences on (tests).
_FUSED_LSTM_MIN_B = -1
# prefix masks run as lengths (False: through the mask kernels; tests)
_MASK_AS_LENGTHS = True
# A call's mask of spans of different lengths or first steps runs as packed lengths
# (_mask_as_spans) only with at least _SPAN_MIN_MACS multiply-adds (all steps,
# sequences, layers) and _SPAN_MIN_SKIP of its steps masked (_SPAN_MIN_SKIP_NARROW
# where hidden_size < 64); else the mask kernels, which compute the padding too but
# skip the packing, gathers and fills (~8-12 us) and run dense rows, which the packed
# kernels run slower the narrower they are.  A smaller call checks only whether its
# sequences are masked alike (one span for all: dense over it).  Measured (Zen 4, 2
# threads, ``bench/span_rule.py``: left padding, packed spans / mask kernels, median of
# 7 alternating rounds): where this rule packs 0.54-1.00; T = 50, B = 4-64, H = 128-256
# with 10% masked 0.93-1.08, 30% 0.77-0.98, 50% 0.54-0.85; H = 64 30% 0.91-1.00 from
# 8M multiply-adds, 0.86-1.20 below; H = 32 at 50% 0.79-1.17 (GRU 0.89-1.17); T = 7,
# B = 3, H = 16-64 1.33-2.36; T = 20, B = 8, H = 16-32 1.07-1.65.
_SPAN_MIN_MACS = 1 << 23
_SPAN_MIN_SKIP = 0.2
_SPAN_MIN_SKIP_NARROW = 0.5
# Calls of at least _LENGTHS_ON_MASK_MIN_B sequences with lengths that differ
# (PyTorch's packed sequences) and less than _SPAN_MIN_SKIP of their steps padding run
# on the mask kernels with the lengths as a mask and masked_output "zero" (the same
# results: zero outputs past a length, the final state at a sequence's last step, a
# reverse direction from it); else packed.  Measured (``bench/span_rule.py --lengths``,
# the call packed / on the mask kernels, T = 50, H = 32-256, 5-10% padding): B = 16
# LSTM 0.92-1.08, GRU 0.94-1.05, B = 64 LSTM 0.93-1.10, GRU 0.96-1.28 (H = 32-64
# 0.98-1.28); B = 4 0.85-1.25 (LSTM 0.85-1.07: packed); 30% padding 0.75-0.98.
_LENGTHS_ON_MASK_MIN_B = 16
_FUSED_LSTM_CHUNK_BYTES = 32 << 20


# The route costs ~20 us more a call than the packed kernel (its Python, per-call packing
# where it splits by units), so short or tiny calls stay on the packed kernel: at least
# _FUSED_LSTM_MIN_ROWS rows (steps x sequences) and _FUSED_LSTM_MIN_MACS multiply-adds.
# Measured (Intel Xeon, 2 threads, route / packed): LSTM B=4 H=8 T=1 2.14x, B=8 H=256
# T=1 2.10x, B=4 H=128 T=10 1.25x, B=8 H=16 T=64 1.46x, B=4 H=16 T=64 1.61x (all now
# packed); B=4 H=32 T=100 0.82x, B=8 H=64 T=16 0.86x, B=12 H=256 T=16 0.89x (still
# routed); near the line B=4 H=64 T=32 1.08x (routed), B=8 H=64 T=10 0.94x (packed).
_FUSED_LSTM_MIN_ROWS = 128
_FUSED_LSTM_MIN_MACS = 2_000_000


def _fused_lstm_ok(B, nt, ragged, H, itemsize, wide, T=None, I=None):
    """Whether a plain LSTM direction of B sequences (T steps, input size I; None: not
    counted) goes through the training forward (see _FUSED_LSTM_MIN_B).  ``wide``:
    whether the batch-lane kernel would run it, or a function that says so (asked only
    where the size rules leave the question open)."""
    if _FUSED_LSTM_MIN_B == 0:
        return False
    _backward = _ext("_backward")
    if not _backward.fused_lstm_forward_fast():
        return False
    if _FUSED_LSTM_MIN_B > 0:
        return B >= _FUSED_LSTM_MIN_B
    if T is not None and (T * B < _FUSED_LSTM_MIN_ROWS
                          or T * B * 4 * H * (I + H) < _FUSED_LSTM_MIN_MACS):
        return False
    # ragged batches from 16 sequences on (routed / kernel with lengths T/2..T, 2
    # threads, AVX2: B = 8 and 12 1.03-1.07x, B = 16 0.81x, B = 32 0.85x)
    if callable(wide):
        wide = wide()
    return (_backward.fused_lstm_route_at(nt, B, H, itemsize, _l2_bytes(), wide, ragged)
            and (not ragged or B >= 16))


# A call of at most _SMALL_CALL_MACS multiply-adds (all its steps, sequences and layers)
# runs on one thread: starting the second costs more than it saves.  Measured (Intel
# Xeon, B=1-8, 2 threads / 1 thread): T=1 LSTM H=64 B=1-4 1.07-1.10x, SimpleRNN H=128
# B=1-4 1.03-1.10x, GRU H=64 B=2-4 1.07-1.13x, LSTM H=32 B=4-8 1.08-1.13x; at 2^17
# SimpleRNN H=256 T=1 0.99x, LSTM H=128 T=1 1.00x; beyond, GRU H=128 T=2 (196k) 0.99x,
# T=4 0.93x, GRU H=256 T=1 (393k) 0.58x.
_SMALL_CALL_MACS = 1 << 17

# a layer call's plan (RNNBase._plan): per layer the packed kernel (one direction after
# the other), both directions at once (run_pair) or the LSTM route; plans kept a layer
_PACKED, _PAIR, _ROUTED = 0, 1, 2
_PLANS_KEPT = 32


def _plan_knobs():
    """What a layer's kept plans were made under besides its own configuration: the
    hooks' generation and this module's knobs (every int knob a plan reads: a test
    checks that each one changes this)."""
    return (_kernels_module().hooks_generation(), _CHUNK_BYTES, _SMALL_CHUNK_BYTES,
            _SMALL_CHUNK_BYTES_BEYOND_L2, _FUSED_LSTM_MIN_B, _FUSED_LSTM_MIN_ROWS,
            _FUSED_LSTM_MIN_MACS, _SMALL_CALL_MACS, _L2)

_L2 = None
# masks of at most this many steps x sequences are checked for spans (or a prefix) in
# Python (_mask_spans), larger ones with NumPy
_MASK_BYTES_PY = 4096
# plain calls of packed layers through one DenseRun (0: layer by layer through
# run_layer, as every other call: tests that watch run_layer's arguments)
_DENSE_RUN = 1
# the kernels' lengths and mask arguments of a call without them (never written)
_NO_LENGTHS = np.zeros(1, np.intp)
_NO_MASK = np.zeros(1, np.uint8)
# the unused cell-state argument of a GRU / SimpleRNN direction, per dtype (never read)
_NO_C = {np.dtype(np.float32): np.zeros((1, 1), np.float32),
         np.dtype(np.float64): np.zeros((1, 1), np.float64)}
# (offsets, nsteps) of a dense batch of B sequences of T steps, shared by the calls of
# that shape (never written; making them cost ~1 us of a small layer's call)
_DENSE_INDEX: dict = {}


def _dense_index(T: int, B: int):
    """Step offsets ``0, B, 2B, ...`` and step sizes (all B) of a dense (T, B) batch."""
    ent = _DENSE_INDEX.get((T, B))
    if ent is None:
        if len(_DENSE_INDEX) >= 64:
            _DENSE_INDEX.clear()
        nsteps = np.empty(T, np.intp)
        nsteps.fill(B)
        ent = _DENSE_INDEX[(T, B)] = (np.arange(0, T * B, B, dtype=np.intp) if B
                                      else np.zeros(T, np.intp), nsteps)
    return ent


def _rows(x, n: int, width: int):
    """The ``n`` rows of ``width`` of a time-major (T, B, width) array, C-contiguous (the
    kernels' layout): a view where ``x`` is C-contiguous, else a copy."""
    return x.reshape(n, width) if x.flags.c_contiguous else \
        np.ascontiguousarray(x).reshape(n, width)


def _l2_bytes():
    """One core's L2 cache in bytes for the route's rule and the chunk size: the value
    the pair rule uses too (``_kernels._L2_BYTES``)."""
    global _L2
    if _L2 is None:
        _L2 = _kernels_module()._L2_BYTES
    return _L2


_EXT = {}   # fastrnn's compiled modules, imported on first use (`import fastrnn` stays light)


def _ext(name):
    """fastrnn._kernels or fastrnn._backward (an import statement costs ~0.3-0.6 us, too
    much for a call's hot path)."""
    m = _EXT.get(name)
    if m is None:
        m = _EXT[name] = importlib.import_module("fastrnn." + name)
    return m


def _kernels_module():
    m = _EXT.get("_kernels")
    return m if m is not None else _ext("_kernels")


_STEP_THREADS_MACS = 1 << 17


def _step_min_rows(layer) -> int:
    """Rows (batch size) from which a time step runs on several threads: its first
    layer's multiply-adds at least 2^17 (fork/join of a parallel region costs about a
    microsecond).  Streaming steps, 2 threads / 1 thread (Zen 4, ``StepPlan.step``): GRU
    H=64 B=4 0.99, B=8 0.76, B=64 0.59; LSTM H=64 B=1 1.13, B=4 0.87, B=64 0.57; GRU H=128
    B=1 0.76; LSTM H=256 B=1 0.59 (it looked at the weights alone, so a step of a small
    layer ran on one thread at any batch: 1.7x slower at B=64)."""
    G, H = _GATES[layer._cell], layer.hidden_size
    work = G * H * (layer.input_size + H)
    return -(-_STEP_THREADS_MACS // work)


def parse_activation(spec) -> tuple[str, float, float]:
    """Normalise an activation spec to ``(name, alpha, beta)``.

    A spec is a name (``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"hard_sigmoid"``
    (ONNX HardSigmoid: ``clip(0.2 x + 0.5, 0, 1)``, the Keras 2 formula), ``"linear"``,
    ``"leakyrelu"``, ``"affine"``, ``"scaledtanh"``, ``"elu"``, ``"softsign"``,
    ``"softplus"``, ``"thresholdedrelu"``; case-insensitive) or a tuple
    ``(name, alpha, beta)`` with ONNX's meaning of alpha and beta, e.g.
    ``("hardsigmoid", 1/6, 0.5)`` for Keras 3's hard_sigmoid.
    """
    if isinstance(spec, str):
        name, alpha, beta = spec, None, None
    elif isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3 and isinstance(spec[0], str):
        name = spec[0]
        alpha = spec[1] if len(spec) > 1 else None
        beta = spec[2] if len(spec) > 2 else None
    else:
        raise ValueError(f"activation must be a name or a (name, alpha, beta) tuple, got {spec!r}")
    key = name.lower()
    key = _ACT_ALIASES.get(key, key)
    if key not in _ACT_DEFAULTS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACT_DEFAULTS)}")
    da, db = _ACT_DEFAULTS[key]
    alpha = da if alpha is None else float(alpha)
    beta = db if beta is None else float(beta)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"activation {name!r}: alpha and beta must be finite")
    return key, alpha, beta


def _as_dtype(dtype) -> np.dtype:
    if type(dtype).__name__ == "dtype" and type(dtype).__module__ == "torch":
        dtype = str(dtype).rpartition(".")[2]       # torch.float64 -> "float64"
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name, v, minimum=1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _flag(name, v) -> bool:
    """A True/False argument: bool (NumPy's too) or the ints 0 / 1; anything else (a
    string, a float such as a dropout given where PyTorch's order puts it) a TypeError,
    not a truthy surprise."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r}")


def _dropout(v) -> float:
    """PyTorch's ``dropout`` argument: a number in [0, 1]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"dropout must be a number in [0, 1], got {v!r} (the arguments "
                        "follow torch.nn's order: ..., batch_first, dropout, bidirectional)")
    if not 0 <= v <= 1:
        raise ValueError(f"dropout must be in [0, 1], got {v}")
    return float(v)


def _torch_numpy(t, name: str = "tensor") -> np.ndarray:
    """A torch tensor's values as a NumPy array (torch is not imported): floating types
    NumPy has no dtype for (bfloat16, float8) as float32."""
    t = t.detach().cpu()
    try:
        return t.numpy()
    except TypeError:
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}") from None
        return t.float().numpy()


def _float_array(name: str, a, dtype: np.dtype) -> np.ndarray:
    """A real floating array from user input, cast to ``dtype``; clear errors otherwise."""
    if type(a) is np.ndarray and a.dtype == dtype:
        return a                                    # (the common case, ~0.1 us)
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, without importing torch
        a = _torch_numpy(a, name)
    elif type(a).__name__ == "PackedSequence" and hasattr(a, "batch_sizes"):
        raise TypeError(f"{name}: a torch PackedSequence is not taken; pass the padded "
                        "batch and its lengths: layer(padded, lengths=lengths) gives what "
                        "the packed call gives (outputs past each length are zero)")
    arr = np.asarray(a)
    if arr.dtype.kind not in "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def reverse_rows(offsets, nsteps, lens):
    """The rows of a reverse direction in the packed layout (steps at ``offsets``, step s
    holding the ``nsteps[s]`` longest sequences; ``lens`` their sorted lengths): its
    step-order row k reads time-order row ``ridx[k]`` (each sequence reversed within its
    length; an involution)."""
    N = int(np.sum(nsteps))
    if N == 0:
        return np.zeros(0, np.intp)
    s_of = np.repeat(np.arange(len(nsteps), dtype=np.intp), nsteps)
    b_of = np.arange(N, dtype=np.intp) - offsets[s_of]
    return offsets[lens[b_of] - 1 - s_of] + b_of


_CARRY_ROWS: dict = {}      # _carry_rows's kept answers (at most 64)


def _carry_rows(lengths, T: int, B: int, begin=None, before=False):
    """The rows ``t*B + b`` of a time-major (T, B) batch outside the span of a sequence
    of length L > 0 (steps ``begin`` .. ``begin + L - 1``; begin 0 where None): those
    after it and the rows they repeat (its last), or with ``before`` those before it and
    its first; kept per lengths and begin (their bytes, with T and B; at most 64; never
    written)."""
    lens = lengths if type(lengths) is np.ndarray else np.asarray(lengths)
    key = (T, B, before, lens.dtype.str, lens.shape, lens.tobytes(),
           None if begin is None else begin.tobytes())
    ent = _CARRY_ROWS.get(key)
    if ent is None:
        lens = lens.astype(np.intp)
        b0 = np.zeros_like(lens) if begin is None else begin.astype(np.intp)
        t = np.arange(T)[:, None]
        dst = np.flatnonzero(((t < b0) if before else (t >= b0 + lens)) & (lens > 0))
        b = dst % B if len(dst) else dst
        ent = (dst, (b0[b] if before else b0[b] + lens[b] - 1) * B + b)
        if len(_CARRY_ROWS) >= 64:
            _CARRY_ROWS.clear()
        _CARRY_ROWS[key] = ent
    return ent


def carry_fill(output, lengths, cols, Hout, begin=None, rcols=()):
    """Time-major output (T, B, D*Hout), in place: in directions ``cols``, step t >= the
    end of a sequence's span (``begin`` + length; begin 0 where None) repeats its last
    step; in directions ``rcols``, step t < begin repeats step begin (zeros stay zeros
    for length 0)."""
    T, B, F = output.shape
    for cs, before in ((cols, False), (rcols, True)):
        if not len(cs):
            continue
        dst, src = _carry_rows(lengths, T, B, begin, before)
        if not len(dst):
            continue
        flat = output.reshape(T * B, F) if output.flags.c_contiguous else None
        for d in cs:
            c = slice(d * Hout, (d + 1) * Hout)
            if flat is None:        # (a view: indexed by step and sequence)
                output[dst // B, dst % B, c] = output[src // B, src % B, c]
            elif F == Hout:
                flat[dst] = flat.take(src, axis=0)
            else:
                flat[dst, c] = flat[src, c]


def pad_steps(out, T: int, cols, Hout: int, batch_first: bool = False, start: int = 0,
              rcols=()):
    """Outputs ``out`` (L, B, F) of sequences that all have the same L < T steps from
    step ``start`` (time-major; a view will do) placed in T steps as a packed call
    places them: zeros around, but in directions ``cols`` step start + L - 1 repeated
    after, in ``rcols`` step start repeated before (carry_fill for one span).
    (T, B, F), or (B, T, F) with ``batch_first``."""
    L, B, F = out.shape
    full = np.zeros((B, T, F) if batch_first else (T, B, F), out.dtype)
    tm = full.transpose(1, 0, 2) if batch_first else full      # (time-major view)
    end = start + L
    tm[start:end] = out
    for d in cols:
        tm[end:, :, d * Hout:(d + 1) * Hout] = tm[end - 1, :, d * Hout:(d + 1) * Hout]
    for d in rcols:
        tm[:start, :, d * Hout:(d + 1) * Hout] = tm[start, :, d * Hout:(d + 1) * Hout]
    return full


def carry_grad(go, lengths, cols, Hout, begin=None, rcols=()):
    """The output gradient for carry_fill's outputs: a copy of time-major ``go`` where, in
    directions ``cols``, the gradients of steps after a sequence's span (``begin`` +
    length; begin 0 where None) are added to its last step, and in directions
    ``rcols`` those of steps before it to its first (dropped for length 0, whose outputs
    are constant)."""
    go = np.array(go, copy=True)
    T = go.shape[0]
    lens = np.asarray(lengths)
    b0 = np.zeros_like(lens) if begin is None else begin
    t = np.arange(T)[:, None]
    has = np.nonzero(lens > 0)[0]
    for dirs, outside, src in ((cols, t >= b0 + lens, b0 + lens - 1), (rcols, t < b0, b0)):
        for d in dirs:
            c = slice(d * Hout, (d + 1) * Hout)
            tail = np.where(outside[:, :, None], go[:, :, c], 0).sum(axis=0)   # (B, Hout)
            go[src[has], has, c] += tail[has]
            go[:, :, c][outside] = 0
    return go


def packed_rows(perm, valid, B: int):
    """The packed rows' places in the padded ``(T*B)`` rows of a time-major batch:
    step-major, longest first within a step (``perm`` / ``valid`` from
    :func:`sort_by_length`).  Gathering and scattering by these, not by
    ``x[:Teff][:, perm][valid]`` (whose fancy index copies every padded row first: a B=64
    T=200 H=256 batch with one long sequence spent ~3.7 ms of 6.3 in such copies)."""
    ts, bs = np.nonzero(valid)
    return ts * B + perm[bs]


def sort_by_length(lengths, B: int, T: int):
    """Validate per-sequence ``lengths`` of a ``(T, B)`` batch and sort them longest
    first, as the packed kernels want.  Returns ``(perm, sorted_lengths, T_eff, valid,
    nsteps)``: ``valid`` ``(T_eff, B)`` marks the real steps in sorted order and
    ``nsteps[t]`` counts the sequences still running at step ``t``."""
    lens = np.asarray(lengths)
    if lens.dtype.kind not in "iu":
        if lens.dtype.kind == "f" and lens.size and np.all(lens == np.round(lens)):
            if not (lens.min() >= 0 and lens.max() <= T):  # (before the cast: inf, 1e30)
                raise ValueError(f"lengths must lie in [0, {T}] (the padded length), "
                                 f"got min {lens.min()} max {lens.max()}")
            lens = lens.astype(np.int64)
        elif lens.dtype.kind == "f" and not lens.size:     # (np.asarray([]): float64)
            lens = lens.astype(np.int64)
        elif lens.dtype.kind == "f" and lens.size:
            raise TypeError(f"lengths must be whole numbers, got {lens[lens != np.round(lens)][:3]}")
        else:
            raise TypeError(f"lengths must be integers, got dtype {lens.dtype}")
    if lens.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {lens.shape}")
    if lens.size and (lens.min() < 0 or lens.max() > T):
        raise ValueError(f"lengths must lie in [0, {T}] (the padded length), "
                         f"got min {lens.min()} max {lens.max()}")
    lens = lens.astype(np.intp)
    perm = np.argsort(-lens, kind="stable")
    slens = np.ascontiguousarray(lens[perm])
    Teff = int(slens[0]) if B else 0
    valid = slens[None, :] > np.arange(Teff)[:, None]
    nsteps = valid.sum(axis=1).astype(np.intp)
    return perm, slens, Teff, valid, nsteps


_RAGGED_INDEX: dict = {}    # ragged_index's kept answers (at most 64)

# ``seed`` of a layer whose weights are all loaded right after it is made (the loaders,
# layer_from_config with weights): zeros, no random draw (RNNBase._init_params)
_WEIGHTS_FOLLOW = object()


def ragged_index(lengths, B: int, T: int, begin=None):
    """:func:`sort_by_length` and the packing a call builds on it, kept per lengths
    (their bytes, with B and T; at most 64): ``(perm, slens, Teff, nsteps, rows,
    offsets, inv)``, ``rows`` from :func:`packed_rows`, ``offsets`` each step's first
    packed row, ``inv`` the inverse of ``perm``.  The arrays are shared by the calls
    with these lengths and never written.  (A small call with lengths spent ~20 us
    building them.)  ``begin`` (intp, B): the sequences start at these steps (a mask's
    spans, _mask_as_spans): the rows move by them, the rest is the lengths' own."""
    if begin is None:
        return _lengths_index(lengths, B, T)
    key = ("begin", B, T, lengths.tobytes(), begin.tobytes())
    ent = _RAGGED_INDEX.get(key)
    if ent is None:
        if len(_RAGGED_INDEX) >= 63:
            _RAGGED_INDEX.clear()       # (before: the lengths' own entry stays with this)
        ent = _lengths_index(lengths, B, T)
        rows = ent[4]
        ent = ent[:4] + (rows + begin.take(rows % B) * B,) + ent[5:]
        _RAGGED_INDEX[key] = ent
    return ent


def _lengths_index(lengths, B: int, T: int):
    """ragged_index of sequences from step 0."""
    lens = lengths if type(lengths) is np.ndarray else np.asarray(lengths)
    key = (B, T, lens.dtype.str, lens.shape, lens.tobytes()) if lens.dtype.kind in "iu" \
        else None
    ent = _RAGGED_INDEX.get(key) if key is not None else None
    if ent is None:
        perm, slens, Teff, valid, nsteps = sort_by_length(lens, B, T)   # (validates)
        rows = packed_rows(perm, valid, B)
        offsets = np.zeros(Teff, np.intp)
        if Teff > 1:
            np.cumsum(nsteps[:-1], out=offsets[1:])
        inv = np.empty_like(perm)
        inv[perm] = np.arange(B)
        ent = (perm, slens, Teff, nsteps, rows, offsets, inv)
        if key is not None:
            if len(_RAGGED_INDEX) >= 64:
                _RAGGED_INDEX.clear()
            _RAGGED_INDEX[key] = ent
    return ent


def unpack_rows(packed, rows, T: int, B: int):
    """The (T, B, width) array, zeros but for the packed rows ``packed`` (N, width) put at
    ``rows`` (their flat time-major indices, :func:`ragged_index`; the same dtype)."""
    out = np.zeros((T, B, packed.shape[1]), packed.dtype)
    _kernels_module().put_rows(out.reshape(T * B, packed.shape[1]), rows, packed)
    return out


def _one_length(ent) -> int:
    """L where the lengths of a :func:`ragged_index` answer are all one L > 0, else 0
    (they differ, or are all 0)."""
    slens, Teff = ent[1], ent[2]
    return Teff if len(slens) and slens[-1] == Teff else 0


def _lengths_on_mask(ent, T: int, B: int) -> bool:
    """Whether a call with these lengths (a :func:`ragged_index` answer) runs on the mask
    kernels: at least _LENGTHS_ON_MASK_MIN_B sequences, less than _SPAN_MIN_SKIP of its
    steps padding."""
    return B >= _LENGTHS_ON_MASK_MIN_B and T * B - len(ent[4]) < _SPAN_MIN_SKIP * T * B


def _length_mask(lengths, T: int, batch_first: bool):
    """Lengths as a mask: (T, B) bool, (B, T) with ``batch_first``."""
    m = np.arange(T)[:, None] < np.asarray(lengths)
    return m.T if batch_first else m


def _one_span(ent, begin):
    """``(L, s)``: the sequences of a :func:`ragged_index` answer all have one length
    L > 0 from one step s (``begin``; 0 where None); ``(0, 0)`` where not."""
    L = _one_length(ent)
    if not L or begin is None:
        return L, 0
    s = int(begin[0])
    return (0, 0) if (begin != s).any() else (L, s)


_PACK_LOCK = _threads.pack_lock   # (a packing kept / weights changed; see _threads._FORK_LOCKS)


class _Params(dict):
    """A layer's weights by name (what :meth:`RNNBase.parameters` returns), knowing its
    layer: an optimizer given this dict re-packs the layer after each step, as when
    given the layer (inference calls went on with the old weights).  Pickled and
    copied as a plain dict."""
    __slots__ = ("owner",)

    def __init__(self, owner, items=()):
        super().__init__(items)
        self.owner = weakref.ref(owner)

    def __reduce__(self):
        return dict, (dict(self),)


_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta", "hip", "xla", "vulkan", "ipu", "hpu")


def _to_device(device) -> None:
    text = str(device)
    if text.split(":")[0] != "cpu":
        raise ValueError(f"fastrnn layers run on the CPU; cannot move to {text!r}")


class IncompatibleKeys(NamedTuple):
    """What :meth:`RNNBase.load_state_dict` did not match (torch's ``_IncompatibleKeys``)."""
    missing_keys: list
    unexpected_keys: list


def incompatible_keys(shapes: Mapping, state_dict: Mapping) -> IncompatibleKeys:
    return IncompatibleKeys(sorted(set(shapes) - set(state_dict)),
                            sorted(str(k) for k in set(state_dict) - set(shapes)))


def checked_weights(owner: str, shapes: Mapping[str, tuple], state_dict: Mapping[str, Any],
                    strict: bool, dtype: np.dtype) -> dict:
    """The arrays of ``state_dict`` named in ``shapes`` (name -> shape) as real floating
    arrays of ``dtype`` (not copied where they are already), each checked: shape and
    finite values; with ``strict`` no name missing or unexpected (a ``KeyError`` naming
    them).  Raises before anything is kept (``owner``'s ``load_state_dict``)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to arrays, "
                        f"got {type(state_dict).__name__}")
    if strict:
        missing, unexpected = incompatible_keys(shapes, state_dict)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"{owner}.load_state_dict: " + "; ".join(parts))
    out = {}
    for name, shape in shapes.items():
        if name not in state_dict:
            continue
        try:
            arr = _float_array(f"weight {name!r}", state_dict[name], dtype)
        except TypeError as e:
            raise TypeError(str(e)) from None
        if arr.shape != shape:
            raise ValueError(f"weight {name!r}: expected shape {shape}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"weight {name!r} contains NaN or infinite values")
        out[name] = arr
    return out


class _Packing(list):
    """Kernel-ready weights per (layer, direction) (:meth:`RNNBase._pack`) and, in
    ``wide``, the batch-lane and route packings made from them on first use."""
    __slots__ = ("wide",)

    def __init__(self):
        super().__init__()
        self.wide = {}


class RNNBase:
    """Common machinery of the recurrent layers; use :class:`SimpleRNN`, :class:`LSTM`
    or :class:`GRU`.

    The constructors take torch.nn.RNN / LSTM / GRU's arguments in torch's order
    (``input_size, hidden_size, num_layers, [nonlinearity,] bias, batch_first, dropout,
    bidirectional, [proj_size]``); the rest by keyword (``dtype``, ...).  Flags must be
    True / False (or 0 / 1).  ``dropout`` is kept (config, repr) but never applied:
    calls are inference, as a torch module in ``eval()``, and :mod:`fastrnn.train`
    does not drop between layers (it warns where dropout is set).

    Call ``layer(x, hx=None, *, lengths=None, mask=None)``:

    * ``x``: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``) or unbatched ``(T, I)``;
      any real floating dtype (cast to the layer's dtype); any memory order.
    * ``hx``: initial state ``(D*num_layers, B, H_out)`` (LSTM: a tuple ``(h0, c0)``,
      ``c0`` ``(D*num_layers, B, H)``); zeros when omitted.  ``H_out`` is ``proj_size``
      when set, else ``hidden_size``.
    * ``lengths``: optional ``(B,)`` ints, as PyTorch's ``pack_padded_sequence``: outputs
      past a sequence's end are zero, its final state is the one at its last step, the
      reverse direction reads each sequence backwards within its own length.
    * ``mask``: optional bool ``(T, B)`` (``(B, T)`` with ``batch_first``), Keras
      semantics: at a masked step the state is carried unchanged and the output repeats
      the previous output (``masked_output="carry"``) or is zero (``"zero"``).

    Returns ``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``) like PyTorch, with output
    ``(T, B, D*H_out)``.  Empty inputs (``T == 0`` or ``B == 0``) return empty outputs
    and the initial state as the final state.

    ``return_sequences=False`` (Keras's name): ``output`` is only the last layer's final
    state, ``(B, D*H_out)`` (directions concatenated; ``(D*H_out,)`` unbatched), which is
    Keras's last output; the per-step outputs of the last layer are never materialised,
    so a long sequence costs no output memory.
    """

    _weights_version = 0     # (mark_weights_changed counts; kept per instance from then)
    dropout = 0.0            # (layers pickled before the argument existed)

    _cell = "RNN"
    _step_entry = None          # _step_fast's last (packing, thread count, plan)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, dtype="float32", proj_size: int = 0,
                 go_backwards: bool = False,
                 activations=None, clip: float | None = None, input_forget: bool = False,
                 reset_after: bool = True, peepholes: bool = False,
                 num_threads: int | None = None, seed: int | None = None) -> None:
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = _flag("bias", bias)
        self.batch_first = _flag("batch_first", batch_first)
        self.dropout = _dropout(dropout)
        self.bidirectional = _flag("bidirectional", bidirectional)
        self.dtype = _as_dtype(dtype)
        self.proj_size = _positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size and self._cell != "LSTM":
            raise ValueError("proj_size is only supported by LSTM")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size ({self.proj_size}) must be smaller than hidden_size "
                             f"({self.hidden_size})")
        self.go_backwards = _flag("go_backwards", go_backwards)
        if clip is not None:
            clip = float(clip)
            if not clip > 0:
                raise ValueError(f"clip must be a positive number, got {clip}")
            if math.isinf(clip):
                clip = None     # (ONNX Runtime runs clip=inf as no clip)
        self.clip = clip
        self.input_forget = _flag("input_forget", input_forget)
        if self.input_forget and self._cell != "LSTM":
            raise ValueError("input_forget is only supported by LSTM")
        self.reset_after = _flag("reset_after", reset_after)
        self.peepholes = _flag("peepholes", peepholes)
        if self.peepholes and self._cell != "LSTM":
            raise ValueError("peepholes are only supported by LSTM")
        self.num_threads = None if num_threads is None else _threads._check_threads(num_threads)
        self._acts = self._parse_activations(activations)
        self._params: dict[str, np.ndarray] = _Params(self)
        self._packed: _Packing | None = None
        self._packed_unit = 0
        self._init_params(seed)

    # ---------------------------------------------------------------- structure
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of ``h`` per direction (``proj_size`` when set)."""
        return self.proj_size or self.hidden_size

    @property
    def gate_count(self) -> int:
        return _GATES[self._cell]

    def _default_activations(self) -> list:
        raise NotImplementedError

    def _parse_activations(self, activations) -> list[list[tuple[str, float, float]]]:
        """Per direction, the ONNX-style list (f, g, h) of (name, alpha, beta)."""
        default = self._default_activations()
        n = len(default)
        D = self.num_directions
        if activations is None:
            per_dir = [list(default) for _ in range(D)]
        else:
            acts = [parse_activation(a) for a in activations]
            if len(acts) == n:
                per_dir = [list(acts) for _ in range(D)]
            elif len(acts) == n * D:
                per_dir = [acts[d * n:(d + 1) * n] for d in range(D)]
            else:
                raise ValueError(f"{self._cell} takes {n} activations per direction "
                                 f"({n} or {n * D} in all), got {len(acts)}")
            names = ["tanh"] if self._cell == "RNN" else _PLAIN_ACTS[self._cell]
            if default != [parse_activation(a) for a in names] and any(
                    per != default for per in per_dir):
                what = ("nonlinearity" if self._cell == "RNN" else
                        "gate_activation / activation" if self._cell == "GRU" else
                        "gate_activation / cell_activation / hidden_activation")
                raise ValueError(f"activations= and {what} disagree: give one of them")
        return per_dir

    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        G, H, P = self.gate_count, self.hidden_size, self.proj_size
        Hout = self.output_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else Hout * self.num_directions
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes["weight_ih" + sfx] = (G * H, in_size)
                shapes["weight_hh" + sfx] = (G * H, Hout)
                if self.bias:
                    shapes["bias_ih" + sfx] = (G * H,)
                    shapes["bias_hh" + sfx] = (G * H,)
                if P:
                    shapes["weight_hr" + sfx] = (P, H)
                if self.peepholes:
                    shapes["weight_ph" + sfx] = (3 * H,)
        return shapes

    def _init_params(self, seed) -> None:
        """PyTorch's default initialisation: U(-1/sqrt(H), 1/sqrt(H)); peepholes zero.
        ``seed`` _WEIGHTS_FOLLOW (the loaders, which load every weight next, strict): zeros
        (views of one) instead, no draw (the draw was ~55% of loading a 168 MB checkpoint)."""
        if seed is _WEIGHTS_FOLLOW:
            # (read-only views of one zero: nothing allocated for weights about to be
            # replaced, so a load's peak is the loaded weights alone)
            zero = np.zeros((), self.dtype)
            for name, shape in self._param_shapes().items():
                self._params[name] = np.broadcast_to(zero, shape)
            self.mark_weights_changed()
            return
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in self._param_shapes().items():
            if name.startswith("weight_ph"):
                self._params[name] = np.zeros(shape, self.dtype)
            else:
                self._params[name] = rng.uniform(-k, k, size=shape).astype(self.dtype)
        self.mark_weights_changed()

    # ---------------------------------------------------------------- weights
    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the weights, PyTorch names and layout."""
        return {k: v.copy() for k, v in self._params.items()}

    def parameters(self) -> dict[str, np.ndarray]:
        """The weights themselves (not copies); call :meth:`load_state_dict` after
        changing them in place, or use :meth:`mark_weights_changed`."""
        return self._params

    def mark_weights_changed(self) -> None:
        """Re-pack after the arrays returned by :meth:`parameters` were modified in place.

        A packing made by a call that overlapped the change is used by that call only,
        never kept (each change counts in ``_weights_version``, read before the weights
        and compared before keeping: a call packing while another thread loaded weights
        kept a half-old packing for good)."""
        with _PACK_LOCK:
            self._weights_version += 1
            self._packed = None

    # ------------------------------------------------ torch.nn.Module's idioms
    def __getattr__(self, name):
        # (only for names not found the usual way: the weights, as torch's attributes)
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        # ``layer.weight_ih_l0 = w`` (and ``layer.weight_ih_l0 *= 0.5``) loads that weight
        # (validated, re-packed), as assigning a torch module's parameter changes it
        if name[:2] in ("we", "bi") and name in self.__dict__.get("_params", ()):
            inplace = value is self._params[name]
            try:
                self.load_state_dict({name: value}, strict=False)
            except ValueError as e:
                if not inplace:
                    raise
                # (``*=`` wrote the layer's own array before this saw it: its old values
                # are gone; every path now uses the edited ones, as after an edit
                # announced with mark_weights_changed)
                self.mark_weights_changed()
                raise ValueError(f"{e}; the array was edited in place, so the layer now "
                                 "holds those values and every call uses them") from None
        else:
            object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """``(name, array)`` pairs of the weights themselves, in torch's order (as
        ``torch.nn.Module.named_parameters``, ``prefix`` and ``recurse`` too; see
        :meth:`parameters` on in-place edits)."""
        pre = prefix + "." if prefix else ""
        return iter([(pre + k, v) for k, v in self._params.items()])

    @property
    def all_weights(self) -> list:
        """The weights per layer and direction, as ``torch.nn.LSTM.all_weights``."""
        out, per = [], []
        for name, arr in self._params.items():
            if name.startswith("weight_ih") and per:
                out.append(per)
                per = []
            per.append(arr)
        return out + [per]

    training = False

    def eval(self):
        """Returns the layer (calls are always inference, as a torch module in eval())."""
        object.__setattr__(self, "training", False)
        return self

    def train(self, mode: bool = True):
        """Sets ``training`` and returns the layer.  Calls compute the same either way:
        fastrnn never applies dropout (training is :meth:`forward_train` /
        :meth:`backward`)."""
        object.__setattr__(self, "training", _flag("mode", mode))
        return self

    def flatten_parameters(self) -> None:
        """Nothing to do (torch's cuDNN idiom; the weights are packed on first use)."""

    def to(self, *args, dtype=None, **kwargs):
        """Torch's ``module.to(...)``: a dtype (NumPy's or torch's float32 / float64, or
        a tensor's) converts the weights in place; the CPU is the only device (another
        is a ``ValueError``); returns the layer.  Not while other threads call the layer
        (as torch's: their calls may fail with a dtype error)."""
        for a in args + tuple(kwargs.values()):
            if isinstance(a, bool):
                continue                # (non_blocking / copy)
            if hasattr(a, "device") and hasattr(a, "dtype") and hasattr(a, "detach"):
                _to_device(a.device)    # a torch tensor: its device and dtype
                a = a.dtype
            if type(a).__name__ == "device" or (
                    isinstance(a, str) and a.split(":")[0] in _DEVICES):
                _to_device(a)
                continue
            dtype = a                   # (checked below: float32 or float64)
        if dtype is not None:
            self._set_dtype(_as_dtype(dtype))
        return self

    def cpu(self):
        """Returns the layer (it is on the CPU)."""
        return self

    def requires_grad_(self, requires_grad: bool = True):
        """Returns the layer (gradients come from :meth:`backward`, not autograd)."""
        _flag("requires_grad", requires_grad)
        return self

    def float(self):
        """Converts the weights to float32 in place (as torch's); returns the layer."""
        return self.to(np.float32)

    def double(self):
        """Converts the weights to float64 in place (as torch's); returns the layer."""
        return self.to(np.float64)

    def _set_dtype(self, dt: np.dtype) -> None:
        if dt == self.dtype:
            return
        cfg = self.get_config()
        cfg["dtype"] = dt.name
        new = layer_from_config(cfg, {k: v.astype(dt) for k, v in self._params.items()},
                                _adopt=set())
        new.num_threads = self.num_threads
        state = dict(new.__dict__)      # (every cache of the old dtype goes)
        state["_params"] = _Params(self, new._params)
        state["training"] = self.training
        # one assignment: a call racing the change (documented as unsupported) sees the
        # old layer or the new one, never one half emptied (an AttributeError)
        object.__setattr__(self, "__dict__", state)
        self.mark_weights_changed()

    def release_packings(self) -> None:
        """Drop what calls keep besides the weights: the kernels' packed copies of them
        (per path, each made on the path's first call) and the kept call plans.  The next
        call makes what it needs again (a packing costs about one pass over the weights).
        For a long-running process that called a layer at many shapes once; the weights,
        and training caches made before, stay valid.  (The kernels' scratch buffers are
        per thread: :func:`fastrnn.train.release_scratch`.)"""
        with _PACK_LOCK:
            self._packed = None
            for key in ("_plans", "_step_plans", "_step_entry"):
                self.__dict__.pop(key, None)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, *,
                        _adopt: set | None = None) -> "IncompatibleKeys":
        """Set weights from arrays in PyTorch naming; validated (names, shapes, dtype, finite).

        With ``strict=False`` missing names keep their values and unknown names are ignored.
        Returns ``(missing_keys, unexpected_keys)`` as a named tuple, as torch's does
        (with ``strict``, a mismatch is a ``KeyError`` naming the keys).
        Nothing changes when any array is rejected.  The layer keeps copies (``_adopt``,
        for loaders whose arrays nobody else holds: the ids of arrays kept so far in
        this load; an array that owns its data, C-ordered, writeable, of the layer's
        dtype and not kept yet (a file may name one tensor twice) is kept as it is, so
        a load's peak is the weights once).
        """
        shapes = self._param_shapes()
        new = {}
        for name, arr in checked_weights(type(self).__name__, shapes, state_dict, strict,
                                         self.dtype).items():
            own = (_adopt is not None and id(arr) not in _adopt and arr.dtype == self.dtype
                   and arr.flags.c_contiguous and arr.flags.writeable and arr.flags.owndata)
            new[name] = arr if own else np.array(arr, dtype=self.dtype, order="C", copy=True)
            if own:
                _adopt.add(id(arr))
        self._params.update(new)
        self.mark_weights_changed()
        return incompatible_keys(shapes, state_dict)

    def _pack(self) -> list:
        """Kernel-ready weights per (layer, direction): the weight matrices themselves
        (PyTorch's layout, the arrays :meth:`parameters` returns: no copy), biases fused,
        and the small-batch kernel's unit-block packings of them.  A transposed copy
        of every matrix was kept here too until the BLAS path (the only one reading it)
        learnt to multiply by the transposes: a layer held its weights three times
        after a first call (``bench/load_time.py --calls``)."""
        _kernels = _kernels_module()
        # (an import statement costs ~0.6 us: too much for the per-step streaming path)
        unit = _kernels.unit_block(self.dtype)
        if self._packed is not None and self._packed_unit == unit:
            return self._packed
        version = self._weights_version          # (before the weights: see mark_weights_changed)
        # one set of weights: a load_state_dict in another thread replaces them all at
        # once (one dict update), so a packing is of the old ones or of the new ones
        p = dict(self._params)
        G, H, P = self.gate_count, self.hidden_size, self.proj_size
        dt = self.dtype
        packed = _Packing()
        for layer in range(self.num_layers):
            per_dir = []
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                # (C-ordered in this dtype already, as load_state_dict keeps them:
                # these are the same arrays)
                wx = np.ascontiguousarray(p["weight_ih" + sfx], dtype=dt)
                wh = np.ascontiguousarray(p["weight_hh" + sfx], dtype=dt)
                if self.bias:
                    b_ih, b_hh = p["bias_ih" + sfx], p["bias_hh" + sfx]
                else:
                    b_ih = b_hh = np.zeros(G * H, dt)
                bias = (b_ih + b_hh).astype(dt)
                bhn = np.zeros(H, dt)
                if self._cell == "GRU" and self.reset_after:
                    bias[2 * H:] = b_ih[2 * H:]
                    bhn = b_hh[2 * H:].copy()   # (packed: never the live array)
                wr = (np.ascontiguousarray(p["weight_hr" + sfx], dtype=dt) if P
                      else np.zeros((1, 1), dt))
                peep = (np.ascontiguousarray(p["weight_ph" + sfx]) if self.peepholes
                        else np.zeros(1, dt))
                # unit-block packing for the small-batch kernel (where it applies)
                if _kernels.small_path_applies(_CELL_CODE[self._cell], P,
                                               int(self.reset_after)):
                    wxp = _kernels.pack_units(wx.T, H, G)
                    whp = _kernels.pack_recurrent(wh.T, H, G, _CELL_CODE[self._cell],
                                                  int(self.reset_after))
                    wrp = _kernels.pack_units(wr.T, P, 1) if P else None
                else:
                    wxp = whp = wrp = None
                per_dir.append((wx, wh, bias, bhn, wr, peep, wxp, whp,
                                _kernels.PackedDir(wx, wh, bias, bhn, wr, peep, wxp, whp,
                                                   wrp), wrp))
            packed.append(per_dir)
        with _PACK_LOCK:
            if self._weights_version == version:
                self._packed = packed
                self._packed_unit = unit   # the ISA level's unit block (tests can lower it)
        return packed

    @property
    def _wide(self) -> dict:
        """The kept packing's batch-lane and route packings (tests look at them)."""
        return {} if self._packed is None else self._packed.wide

    def _fast_acts(self, d: int) -> bool:
        """Direction d has the default activations and no clip/peepholes/input_forget
        (what the LSTM route implements; the batch-lane kernel takes those options)."""
        if self.clip or self.peepholes or self.input_forget:
            return False
        return self._act_codes()[d][1]

    def _act_codes(self) -> list:
        """Per direction: the kernels' activation triples (code, alpha, beta) for f, g,
        h (padded to three) and whether they are the cell's defaults.  Made once (the
        activations are fixed at construction; a call asks for them per direction)."""
        per = self.__dict__.get("_act_codes_cache")
        if per is None:
            _kernels = _kernels_module()
            per = []
            for acts in self._acts:
                codes = [a[0] for a in acts]
                if self._cell == "RNN":
                    plain = codes[0] in ("tanh", "relu")
                else:
                    plain = codes[0] == "sigmoid" and all(c == "tanh" for c in codes[1:])
                triples = [(_kernels.ACTIVATION_CODES[a[0]], a[1], a[2]) for a in acts]
                per.append((triples + [(1, 0.0, 0.0)] * (3 - len(triples)), plain))
            self.__dict__["_act_codes_cache"] = per
        return per

    def _pack_wide(self, packed: "_Packing", layer: int, d: int):
        """The batch-lane packing of (layer, direction) of ``packed``, kept with it."""
        key = (layer, d)
        w = packed.wide.get(key)
        if w is None:
            _kernels = _kernels_module()
            wx, wh, bias, bhn = packed[layer][d][:4]
            w = _kernels.pack_wide(wx.T, wh.T, bias, bhn, self.hidden_size,
                                   _CELL_CODE[self._cell], int(self.reset_after))
            packed.wide[key] = w
        return w

    def _pack_route(self, packed: "_Packing", layer, d, nt, B):
        """The training forward's packing of (layer, direction) for the LSTM route
        (``_fused_lstm_dir``) where it splits by rows, and its layout (which kernel's:
        ``_backward.lstm_forward_layout``; all panels whatever the team), cached
        with the other packings per layout; (None, -1) where it splits by units (it
        packs per call then)."""
        from . import _backward
        wih, whh = packed[layer][d][:2]
        sizes = (wih.shape[1], whh.shape[1], wih.dtype.itemsize)
        if not _backward.forward_splits_rows(nt, B, *sizes):
            return None, -1
        lay = _backward.lstm_forward_layout(nt, B, *sizes)
        key = ("route", layer, d, lay)
        w = packed.wide.get(key)
        if w is None:
            w = _backward.pack_lstm_forward(wih, whh, nt, B)
            packed.wide[key] = w
        return w, lay

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        """JSON-able constructor arguments (see :func:`layer_from_config`)."""
        cfg = {
            "class_name": type(self).__name__,
            "input_size": self.input_size, "hidden_size": self.hidden_size,
            "num_layers": self.num_layers, "bias": self.bias,
            "batch_first": self.batch_first, "bidirectional": self.bidirectional,
            "dtype": self.dtype.name, "go_backwards": self.go_backwards,
            "activations": [list(a) for per in self._acts for a in per],
            "clip": self.clip,
        }
        if self._cell == "LSTM":
            cfg.update(proj_size=self.proj_size, input_forget=self.input_forget,
                       peepholes=self.peepholes)
        if self._cell == "GRU":
            cfg["reset_after"] = self.reset_after
        if self.dropout:
            cfg["dropout"] = self.dropout
        return cfg

    def __repr__(self) -> str:
        parts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.proj_size:                  # (torch's order)
            parts.append(f"proj_size={self.proj_size}")
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout:g}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self._cell == "RNN" and self.nonlinearity != "tanh":
            parts.append(f"nonlinearity={self.nonlinearity!r}")
        if self._cell == "GRU" and not self.reset_after:
            parts.append("reset_after=False")
        if self.go_backwards:
            parts.append("go_backwards=True")
        names = [self.nonlinearity] if self._cell == "RNN" else _PLAIN_ACTS[self._cell]
        plain = [parse_activation(a) for a in names]
        if any(per != plain for per in self._acts):
            parts.append("activations=" + ";".join(
                ",".join(a[0] if a[1:] == _ACT_DEFAULTS[a[0]] else f"{a[0]}({a[1]:g},{a[2]:g})"
                         for a in per) for per in self._acts))
        if self.dtype != np.float32:
            parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # pickling: weights travel, packed copies are rebuilt on first use
    def __setstate__(self, state):
        self.__dict__.update(state)
        self._params = _Params(self, self._params)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        state.pop("_step_plans", None)
        state.pop("_plans", None)
        state.pop("_step_entry", None)
        state.pop("_wide", None)        # (an older version's batch-lane / route packings)
        return state

    def save(self, path) -> None:
        """Write the layer to a safetensors file (weights + config in its metadata)."""
        from .io import save
        save(self, path)

    # ---------------------------------------------------------------- forward
    def _check_input(self, x):
        x = _float_array("input", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"input must have 3 dimensions ({'B, T' if self.batch_first else 'T, B'}"
                             f", I) or 2 for an unbatched sequence (T, I); got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects "
                             f"input_size={self.input_size} (input shape {x.shape})")
        return x

    def _check_state(self, name, s, B, size, unbatched):
        L = self.num_layers * self.num_directions
        s = _float_array(name, s, self.dtype)
        want = (L, size) if unbatched else (L, B, size)
        if s.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {s.shape}")
        if unbatched:
            s = s[:, None, :]
        return s

    def _prepare(self, x, hx):
        """Validated time-major input ``(T, B, I)``, whether it was unbatched, and the
        initial states ``h0`` ``(L*D, B, H_out)`` / ``c0`` (LSTM, else None), zeros when
        not given.  Shared by the forward and the training forward."""
        x = self._check_input(x)
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        B = x.shape[1]
        LD, dt = self.num_layers * (2 if self.bidirectional else 1), self.dtype
        Hout = self.proj_size or self.hidden_size       # (output_size, without the call)
        h0, c0 = self._split_hx(hx)
        h0 = (np.zeros((LD, B, Hout), dt) if h0 is None
              else self._check_state("h0", h0, B, Hout, unbatched))
        if self._cell == "LSTM":
            c0 = (np.zeros((LD, B, self.hidden_size), dt) if c0 is None
                  else self._check_state("c0", c0, B, self.hidden_size, unbatched))
        return x, unbatched, h0, c0

    def _mask_as_lengths(self, mask, lengths, T, B, unbatched, carry):
        """``(lengths, mask, carry_cols)``: a mask that is a prefix of each sequence (right
        padding) becomes lengths, an all-True one nothing; carry_cols: the directions
        whose outputs past a length then repeat its last output (``carry``: the forward
        ones; a reverse direction starts in the padding, where Keras's outputs are
        zeros).  Anything else is returned as it came.  (The training forward's; a
        call's is _mask_as_spans.)"""
        if mask is None or lengths is not None or not _MASK_AS_LENGTHS:
            return lengths, mask, ()
        lens, _, rest = self._mask_spans(mask, T, B, unbatched, False)
        if rest is not None:
            return lengths, mask, ()
        return lens, None, (self._carry_dirs(carry)[0] if lens is not None else ())

    def _mask_as_spans(self, mask, T, B, unbatched, carry, always=False):
        """A call's mask as ``(lengths, begin, mask, cols, rcols)``: where each sequence's
        unmasked steps are one span (right padding, left padding (Keras's
        ``pad_sequences`` default), or both), its ``lengths`` and the steps they
        ``begin`` at (None where all begin at step 0: a prefix), then run as packed
        lengths whose rows start there: a masked step only carries the state.  The
        outputs outside a span (``carry``): in the directions ``cols`` (forward) the
        steps after it repeat its last output, in ``rcols`` (reverse; only with
        ``begin``) the steps before it repeat its first; else zeros, as Keras's rule
        gives.  An all-True mask: all None.  Any other mask, and spans of different
        lengths or first steps where packing does not pay (_SPAN_MIN_MACS; not
        ``always``: the training forward, whose other path is NumPy's), come back as
        ``mask`` (the mask kernels)."""
        if not _MASK_AS_LENGTHS:
            return None, None, mask, (), ()
        # a small call: only one span for all (dense over it), checked on one sequence
        small = not always and B > 1 and B * self._macs(T) < _SPAN_MIN_MACS
        lens, begin, rest = self._mask_spans(mask, T, B, unbatched, True, small)
        if lens is None:
            return None, None, rest, (), ()
        skip = _SPAN_MIN_SKIP if self.hidden_size >= 64 else _SPAN_MIN_SKIP_NARROW
        if (not always and not small and B > 1 and T * B - int(lens.sum()) < skip * T * B
                and ((lens != lens[0]).any()
                     or (begin is not None and (begin != begin[0]).any()))):
            return None, None, mask, (), ()     # (packing would not pay: _SPAN_MIN_SKIP)
        cols, rcols = self._carry_dirs(carry)
        return lens, begin, None, cols, (rcols if begin is not None else ())

    def _carry_dirs(self, carry):
        """The directions processed forward and those processed in reverse (go_backwards
        swaps them); both empty without ``carry``."""
        if not carry:
            return (), ()
        fwd = [d for d in range(self.num_directions) if (d == 1) == self.go_backwards]
        return fwd, [d for d in range(self.num_directions) if d not in fwd]

    def _mask_spans(self, mask, T, B, unbatched, spans, same=False):
        """The user's mask checked for one span of unmasked steps per sequence (with
        ``spans``; else a prefix; with ``same``, one span for all sequences):
        ``(lengths, begin, None)`` (``begin`` None where every span starts at step 0),
        ``(None, None, None)`` where nothing is masked (or T or B is 0),
        ``(None, None, mask)`` where the sequences' steps are not so."""
        m = self._time_major_mask(mask, T, B, unbatched)
        if not T or not B:
            return None, None, None                     # (no step to mask)
        if B * T <= _MASK_BYTES_PY:
            # (a few bytes: quicker in Python than NumPy's reductions, ~1 us of a small
            # call's ~6): each sequence's span (the first one's, where all are alike)
            seqs, lens, starts = m.T.tobytes(), [], []
            if same and seqs != seqs[:T] * B:
                return None, None, mask
            for k in range(0, T if same else B * T, T):
                s = seqs.find(1, k, k + T)
                if s < 0:
                    lens.append(0)
                    starts.append(0)
                    continue
                if s > k and not spans:
                    return None, None, mask             # not a prefix
                e = seqs.find(0, s, k + T)
                if e < 0:
                    e = k + T
                elif seqs.find(1, e, k + T) >= 0:
                    return None, None, mask             # a step unmasked after a masked one
                lens.append(e - s)
                starts.append(s - k)
            if same:
                lens, starts = lens * B, starts * B
            if min(lens) == T:
                return None, None, None                 # nothing masked: the dense call
            return (np.array(lens, np.intp),
                    np.array(starts, np.intp) if any(starts) else None, None)
        if same and not (m == m[:, :1]).all():
            return None, None, mask
        rises = np.greater(m[1:], m[:-1])               # (unmasked after masked)
        if spans:
            if (rises.sum(axis=0) + m[0]).max() > 1:
                return None, None, mask
        elif rises.any():
            return None, None, mask
        mlens = m.sum(axis=0)
        if mlens.min() == T:
            return None, None, None
        begin = m.argmax(axis=0) if spans else None     # (0 for an all-masked sequence)
        return mlens, (begin if begin is not None and begin.any() else None), None

    def _time_major_mask(self, mask, T, B, unbatched):
        """The user's mask, validated, as a bool ``(T, B)`` array."""
        m = np.asarray(mask)
        if m.dtype.kind not in "biu":
            raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
        want = (B, T) if (self.batch_first and not unbatched) else (T, B)
        if unbatched:
            want = (T,)
        if m.shape != want:
            raise ValueError(f"mask must have shape {want}, got {m.shape}")
        m = m.astype(bool)
        if unbatched:
            m = m[:, None]
        elif self.batch_first:
            m = m.T
        return m

    def _split_hx(self, hx):
        """(h0, c0-or-None) from the user's hx."""
        if hx is None:
            return None, None
        if self._cell == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTM initial state must be a tuple (h0, c0)")
            return hx[0], hx[1]
        return hx, None

    def forward(self, x, hx=None, *, lengths=None, mask=None, masked_output: str = "carry",
                num_threads: int | None = None, return_sequences: bool = True):
        """Same as calling the layer."""
        return self(x, hx, lengths=lengths, mask=mask, masked_output=masked_output,
                    num_threads=num_threads, return_sequences=return_sequences)

    def _macs(self, T: int) -> int:
        """Multiply-adds of T steps of one sequence through every layer (projections
        and recurrent products)."""
        step = self.__dict__.get("_step_macs")
        if step is None:        # (fixed by the configuration: counted once)
            G, H, D = self.gate_count, self.hidden_size, self.num_directions
            K = self.proj_size or H
            inputs = self.input_size + (self.num_layers - 1) * D * K
            step = self.__dict__["_step_macs"] = D * G * H * (inputs + self.num_layers * K)
        return T * step

    def _step_fast(self, x_t, h, c=None, num_threads: int | None = None, copy: bool = False):
        """Lean one-time-step forward for streaming (internal API).

        ``x_t`` ``(B, I)``; ``h`` ``(num_layers, B, H_out)`` and, for LSTM, ``c``
        ``(num_layers, B, H)``: C-contiguous arrays of the layer's dtype, updated in place
        to the state after this step.  Returns ``h[-1]`` (a view: the step's output;
        with ``copy`` a new array holding it, made by the kernel's entry).
        Uni-directional layers only (not ``go_backwards``).  The kernel's entry checks the
        buffers' dtype, layout and shapes; the caller (e.g. :class:`fastrnn.Stream`) owns
        them.  About 0.3 us of Python on top of the kernel (vs tens of us for
        ``layer(x[None], state)``): the last plan used is kept with the packing and the
        thread count it was made for, and taken while both still hold.
        """
        nt = _threads.step_threads(num_threads if num_threads is not None
                                   else self.num_threads)
        ent = self._step_entry
        if ent is not None and ent[0] is self._packed and ent[1] == nt and type(nt) is int:
            if copy:
                y = ent[2].step_copy(x_t, h, c)
                if y is not None:
                    return y
            elif ent[2].step(x_t, h, c):
                return h[-1]
        y = self._step_slow(x_t, h, c, nt)
        return y.copy() if copy else y

    def _step_slow(self, x_t, h, c, nt):
        """_step_fast's way when its kept plan does not apply: (re)pack, validate the
        thread count, find or make the plan for it."""
        nt = _threads._granted(_threads._check_threads(nt))
        packed = self._pack()
        plans = self.__dict__.get("_step_plans")
        if plans is None or plans[0] is not packed:
            plans = (packed, {})
            self.__dict__["_step_plans"] = plans
        plan = plans[1].get(nt)
        if plan is None:
            plan = self._make_step_plan(packed, nt)
            plans[1][nt] = plan
        if plan is False:
            # configurations the packed kernel does not cover: the general path
            hx = (h, c) if self._cell == "LSTM" else h
            # (one time step: (B, 1, I) for a batch_first layer, else (1, B, I))
            out, st = self(x_t[:, None] if self.batch_first else x_t[None], hx,
                           num_threads=nt)
            if self._cell == "LSTM":
                h[...] = st[0]
                c[...] = st[1]
            else:
                h[...] = st
            return h[-1]
        self._step_entry = (packed, nt, plan)
        if not plan.step(x_t, h, c):
            raise RuntimeError("fastrnn: the ISA level changed during a step")
        return h[-1]

    def _make_step_plan(self, packed, nt):
        _kernels = _kernels_module()
        if self.bidirectional or self.go_backwards:
            raise ValueError("_step_fast: uni-directional layers only")
        if packed[0][0][6] is None:
            return False
        _threads.hook_blas()
        layers = [(p[0][6], p[0][7], p[0][2], p[0][3], p[0][5], p[0][9]) for p in packed]
        acts = self._act_codes()[0][0]
        return _kernels.StepPlan(_CELL_CODE[self._cell], self.input_size, self.hidden_size,
                                 layers, acts, self.clip or 0.0, int(self.peepholes),
                                 int(self.input_forget), int(self.reset_after), self.dtype,
                                 nt, self.proj_size, _step_min_rows(self))

    def _fused_lstm_dir(self, packed, layer, d, inp, offsets, nsteps, lens, h_k, c_k, out,
                        last_only, nt, ridx):
        """One direction of a plain LSTM layer through the training forward
        (``_backward.forward``: weights packed for the AVX2 4 x 3 kernel, rows or units
        split over the threads), which measured faster than the packed inference kernel
        where ``_fused_lstm_ok`` says.  Its gate and cell-state rows are scratch here, so
        the steps go in chunks of about ``_FUSED_LSTM_CHUNK_BYTES`` of scratch, the state
        carried from one to the next (memory O(B*H) however long the input).  A reverse
        direction (``ridx`` from ``reverse_rows``, else None) runs on its rows gathered
        in step order and scatters its outputs back.  ``lens``: the sorted lengths.
        Updates h_k, c_k (final states, sorted order) and writes the outputs into out
        unless last_only."""
        from . import _backward
        dt, H, I = self.dtype, self.hidden_size, inp.shape[1]
        wih, whh, bias = packed[layer][d][:3]       # (the packing's: see _pack)
        S = len(nsteps)
        reverse = ridx is not None
        own_y = last_only or reverse
        # scratch per row: gates 4H, cell states H, outputs H (own_y), input I (reverse)
        row_bytes = (5 * H + (H if own_y else 0) + (I if reverse else 0)) * dt.itemsize
        rows_max = max(int(nsteps[0]), _FUSED_LSTM_CHUNK_BYTES // max(1, row_bytes))
        ends = offsets + nsteps                     # row after each step's last
        dummy = np.zeros((1, 1), dt)
        zeros_h = np.zeros(H, dt)
        s0 = 0
        scratch = None
        while s0 < S:
            # steps [s0, s1): as many as fit in rows_max rows (at least one)
            r0 = int(offsets[s0])
            s1 = max(s0 + 1, int(np.searchsorted(ends, r0 + rows_max, side="right")))
            s1 = min(s1, S)
            r1 = int(ends[s1 - 1])
            n = r1 - r0
            if scratch is None:
                rows = n if s1 == S else rows_max
                scratch = (np.empty((rows, 4 * H), dt), np.empty((rows, H), dt),
                           np.empty((rows, H), dt) if own_y else None)
            gates, cs = scratch[0][:n], scratch[1][:n]
            if own_y:
                y, ycol = scratch[2][:n], 0
            else:
                y, ycol = out[r0:r1], d * H
            x = inp[ridx[r0:r1]] if reverse else inp[r0:r1]
            offs = np.ascontiguousarray(offsets[s0:s1] - r0)
            nst = np.ascontiguousarray(nsteps[s0:s1])
            # (a chunk's first step may hold fewer rows than the call's: its own layout)
            pre, lay = self._pack_route(packed, layer, d, nt, int(nst[0]))
            _backward.forward(1, x, wih, whh, bias, zeros_h, dummy, offs, nst, h_k, c_k,
                              y, ycol, gates, cs, H, 0, 0, 0, nt, pre, lay)
            # sequences active in the chunk: their state after their last step in it
            act = int(nsteps[s0])
            last = offsets[np.minimum(lens[:act], s1) - 1] + np.arange(act) - r0
            h_k[:act] = y[last, ycol:ycol + H]
            c_k[:act] = cs[last]
            if reverse and not last_only:
                _kernels_module().put_rows(out[:, d * H:(d + 1) * H], ridx[r0:r1], y)
            s0 = s1

    def _plan(self, T, Teff, B, nt, idle, ragged, has_mask):
        """A call's decisions: ``(threads, per layer (kind, chunk, per direction what
        its kernel takes from the packing), the plan's DenseRuns (_dense_call: per
        return_sequences and go_backwards))``, kind one of _PACKED, _PAIR, _ROUTED.
        They follow from the arguments, the packing, the configuration and the knobs
        (``_plan_knobs``) alone, so they are kept per arguments (up to _PLANS_KEPT)
        with the packing and knobs they were made for: ~1.5 us of a small call."""
        if idle == _threads.PAUSED:     # (the pause rule: not kept)
            return self._make_plan(self._pack(), T, Teff, B, nt, idle, ragged, has_mask)
        knobs = (_plan_knobs(), self.clip, self.input_forget, self.peepholes)
        store = self.__dict__.get("_plans")
        # (a kept plan's packing is the current one: the unit block _pack checks changes
        # only through a hook, i.e. with the knobs)
        if store is None or store[0] is not self._packed or store[1] != knobs \
                or len(store[2]) >= _PLANS_KEPT:
            store = self.__dict__["_plans"] = (self._pack(), knobs, {})
        key = (T, Teff, B, nt, ragged, has_mask, idle)
        plan = store[2].get(key)
        if plan is None:
            plan = store[2][key] = self._make_plan(store[0], T, Teff, B, nt, idle, ragged,
                                                   has_mask)
        return plan

    def _make_plan(self, packed, T, Teff, B, nt, idle, ragged, has_mask):
        """_plan's decisions, made."""
        _kernels = _kernels_module()
        H, L, P, dt = self.hidden_size, self.num_layers, self.proj_size, self.dtype
        D = self.num_directions
        cell, G = _CELL_CODE[self._cell], _GATES[self._cell]
        macs = self._macs(T)
        if nt > 1 and B * macs <= _SMALL_CALL_MACS:
            nt = 1          # (_SMALL_CALL_MACS)
        if idle and nt > 1 and B == 1 \
                and (idle == _threads.CROWDED or macs < _threads.idle_single_macs()) \
                and _kernels.choose_path(cell, 1, H, P, int(self.reset_after), nt, 1,
                                         self.input_size, dt.itemsize) == "small":
            # after a pause the OpenMP worker sleeps (see _threads.IDLE_SINGLE_S); a
            # small batch of one on the packed kernel does the same arithmetic on one
            # thread without waking it; while calls from other Python threads run, any
            # batch of one does (_threads.CROWD_SHARE)
            nt = 1
        small = _kernels.choose_path(cell, B, H, P, int(self.reset_after), nt, 1,
                                     self.input_size, dt.itemsize) == "small"
        # plain LSTM layers through the training forward (see _fused_lstm_ok)
        can_route = cell == 1 and not P and not has_mask
        # both directions at once (the same answer for every layer)
        pair = D == 2 and _kernels.pair_applies(
            cell, B, Teff, H, P, int(self.reset_after), nt, dt.itemsize,
            int(self._act_codes()[0][1]))
        specs = []
        for layer in range(L):
            I_l = self.input_size if layer == 0 else D * (P or H)
            # (the pair first where the rule says 2; a route forced by the test hook
            # _FUSED_LSTM_MIN_B > 0 before any pair)
            routed = (can_route and (pair != 2 or _FUSED_LSTM_MIN_B > 0)
                      and _fused_lstm_ok(
                B, nt, ragged, H, dt.itemsize,
                lambda: _kernels.choose_path(cell, B, H, 0, 1, nt, 1, I_l,
                                             dt.itemsize) == "wide", Teff, I_l)
                      and all(self._fast_acts(d) for d in range(D)))
            chunk = _chunk_steps(small, G, H, I_l, B, Teff, dt.itemsize,
                                 1 if pair and not routed else nt)
            if routed:
                specs.append((_ROUTED, chunk, [(packed, layer, d) for d in range(D)]))
            elif pair:
                specs.append((_PAIR, chunk, [
                    (p[2], p[3], p[5], p[6], p[7], p[9], self._act_codes()[d][0])
                    for d, p in enumerate(packed[layer])]))
            else:
                dirs = []
                for d in range(D):
                    wide = _kernels.choose_path(cell, B, H, P, int(self.reset_after), nt,
                                                self._act_codes()[d][1], I_l,
                                                dt.itemsize) == "wide"
                    dirs.append((packed[layer][d][8], self._act_codes()[d][0],
                                 self._pack_wide(packed, layer, d) if wide else None))
                specs.append((_PACKED, chunk, dirs))
        return nt, specs, {}

    def __call__(self, x, hx=None, *, lengths=None, mask=None, masked_output: str = "carry",
                 num_threads: int | None = None, return_sequences: bool = True):
        with _threads.CALL_SCOPE as idle:      # (in C: see fastrnn/_scope.pyx)
            if num_threads is None and type(x) is np.ndarray and (
                    masked_output == "carry" or masked_output == "zero"):
                res = (self._dense_call(x, hx, return_sequences, idle)
                       if lengths is None and mask is None else
                       self._prefix_call(x, hx, lengths, mask, return_sequences, idle,
                                         masked_output))
                if res is not None:
                    return res
            return self._call(x, hx, lengths, mask, masked_output, num_threads,
                              return_sequences, idle)

    def _prefix_call(self, x, hx, lengths, mask, return_sequences, idle,
                     masked_output="carry"):
        """A call with ``lengths``, or a ``mask`` whose unmasked steps are one span of
        each sequence (_mask_as_spans): where they all have one length L from one step
        s (a batch of one always), the lean call (_dense_call) over those steps, the
        outputs around them filled as _call fills them (zeros; with a mask and "carry",
        a forward direction's last output repeated after, a reverse one's first before);
        spans that differ, _ragged_call; any other mask, _masked_call (the mask
        kernels).  None where none of this applies (then _call runs)."""
        if x.ndim != 3:
            return None
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        cols = rcols = ()
        begin, mask_given = None, mask
        if mask is not None:
            if lengths is not None:
                return None
            lengths, begin, mask, cols, rcols = self._mask_as_spans(
                mask, T, B, False, return_sequences and masked_output == "carry")
            if mask is not None:        # (not spans: the mask kernels, not checked again)
                return self._masked_call(x, hx, mask, masked_output, return_sequences, idle)
        L, s = T, 0
        if lengths is not None:
            if x.dtype != self.dtype or x.shape[2] != self.input_size or not T or not B:
                return None     # (_call: its checks, in its order)
            ent = ragged_index(lengths, B, T, begin)    # (validates the lengths)
            L, s = _one_span(ent, begin)
            if not L and mask_given is None and _lengths_on_mask(ent, T, B):
                return self._masked_call(x, hx, _length_mask(lengths, T, self.batch_first),
                                         "zero", return_sequences, idle)
            if not L and ent[2]:
                return self._ragged_call(x, hx, ent, lengths, cols, return_sequences, idle,
                                         begin, rcols)
        if not L:
            return None
        res = self._dense_call((x[:, s:s + L] if self.batch_first else x[s:s + L])
                               if L < T else x, hx, return_sequences, idle)
        if res is None or L == T or not return_sequences:
            return res
        out, states = res
        return pad_steps(out.transpose(1, 0, 2) if self.batch_first else out, T, cols,
                         self.proj_size or self.hidden_size, self.batch_first, s,
                         rcols), states

    def _ragged_call(self, x, hx, ent, lengths, cols, return_sequences, idle, begin=None,
                     rcols=()):
        """_prefix_call's call of sequences of different ``lengths`` (``ent``: their
        ragged_index, from steps ``begin``; ``cols`` / ``rcols``: the directions whose
        outputs after / before a span repeat its last / first output, from a mask) on a
        batched array of the layer's dtype and input size, lean: the packing kept per
        lengths, the layers run as one DenseRun kept with the plan per lengths; the same
        kernels and arithmetic as _call (a tiny call ~19 -> ~10 us)."""
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        perm, slens, Teff, nsteps, rows, offsets, inv = ent
        if not _threads._blas_hooked:
            _threads.hook_blas()
        Hout = self.proj_size or self.hidden_size
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        xin = x.reshape(T * B, self.input_size).take(rows, axis=0)      # (N, I) packed
        h_state, c_state = self._start_states(hx, B)
        if hx is not None:
            h_state = np.ascontiguousarray(h_state[:, perm])
            c_state = np.ascontiguousarray(c_state[:, perm]) if c_state is not None else None
        nt, specs, runs = self._plan(T, Teff, B, _threads.resolve(None, self.num_threads),
                                     idle, True, 0)
        # a DenseRun per lengths (their packing's arrays: kept alive by the run, so
        # their id names them while it is kept)
        run = self._kept_run(runs, (return_sequences, self.go_backwards, id(offsets)), nt,
                             specs, offsets, nsteps, B, return_sequences, slens)
        if run:
            out = run.run(xin, h_state, c_state)
        else:
            out = self._run_stack(nt, specs, xin, offsets, nsteps, slens, _NO_MASK, 0,
                                  h_state, c_state, 0, B, Teff, return_sequences)
        output = None
        if return_sequences:
            output = unpack_rows(out, rows, T, B)
            carry_fill(output, lengths, cols, Hout, begin, rcols)
        return self._finish(output, h_state.take(inv, axis=1),
                            c_state.take(inv, axis=1) if c_state is not None else None, B,
                            False)

    def _masked_call(self, x, hx, mask, masked_output, return_sequences, idle):
        """_prefix_call's call with a mask that is not one span a sequence (holes):
        on a batched array of the layer's dtype and input size, lean (the layers run as
        one DenseRun with the mask, kept with the plan); else _call.  The same kernels
        and arithmetic as _call."""
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        if x.dtype != self.dtype or x.shape[2] != self.input_size or not T or not B:
            return self._call(x, hx, None, mask, masked_output, None, return_sequences,
                              idle, True)
        if not _threads._blas_hooked:
            _threads.hook_blas()
        pmask = self._time_major_mask(mask, T, B, False).view(np.uint8)
        if not pmask.flags.c_contiguous:
            pmask = np.ascontiguousarray(pmask)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        xin = _rows(x, T * B, self.input_size)
        h_state, c_state = self._start_states(hx, B)
        nt, specs, runs = self._plan(T, T, B, _threads.resolve(None, self.num_threads),
                                     idle, False, 1)
        zero = int(masked_output == "zero")
        offsets, nsteps = _dense_index(T, B)
        run = self._kept_run(runs, (return_sequences, self.go_backwards, "mask", zero), nt,
                             specs, offsets, nsteps, B, return_sequences, None, zero)
        if run:
            out = run.run(xin, h_state, c_state, pmask)
        else:
            out = self._run_stack(nt, specs, xin, offsets, nsteps, _NO_LENGTHS,
                                  pmask.reshape(-1), 1, h_state, c_state, zero, B, T,
                                  return_sequences)
        return self._finish(out.reshape(T, B, -1) if return_sequences else None,
                            h_state, c_state, B, False)

    def _dense_call(self, x, hx, return_sequences, idle):
        """The common call, lean: a batched (3-D) array of the layer's dtype and input
        size, without lengths, mask or a per-call thread count; None where x is not such
        an array (then :meth:`_call` runs, and raises where it must).  The same plan,
        kernels and arithmetic as _call, without its checks and branches for the rest
        (a tiny layer's call ~8 -> ~4 us)."""
        if x.ndim != 3 or x.dtype != self.dtype or x.shape[2] != self.input_size:
            return None
        if self.batch_first:
            B, T = x.shape[0], x.shape[1]
            x = x.transpose(1, 0, 2)
        else:
            T, B = x.shape[0], x.shape[1]
        if not T or not B:
            return None
        if not _threads._blas_hooked:
            _threads.hook_blas()
        h_state, c_state = self._start_states(hx, B)
        xin = _rows(x, T * B, self.input_size)
        nt, specs, runs = self._plan(T, T, B, _threads.resolve(None, self.num_threads),
                                     idle, False, 0)
        # a plan of packed layers only runs as one DenseRun, kept with the plan
        key = (return_sequences, self.go_backwards)
        run = runs.get(key) if _DENSE_RUN else False
        if run is None:
            offsets, nsteps = _dense_index(T, B)
            run = self._kept_run(runs, key, nt, specs, offsets, nsteps, B, return_sequences)
        if run:
            out = run.run(xin, h_state, c_state)
            if return_sequences and not self.batch_first:
                # (_finish's common case: the states are this call's own C arrays)
                out = out.reshape(T, B, -1)
                return (out, h_state) if c_state is None else (out, (h_state, c_state))
        else:
            offsets, nsteps = _dense_index(T, B)
            out = self._run_stack(nt, specs, xin, offsets, nsteps, _NO_LENGTHS, _NO_MASK, 0,
                                  h_state, c_state, 0, B, T, return_sequences)
        return self._finish(out.reshape(T, B, -1) if return_sequences else None,
                            h_state, c_state, B, False)

    def _start_states(self, hx, B):
        """A lean call's initial states (L*D, B, .): zeros, or copies of the user's."""
        if hx is not None:
            return self._given_state(hx, B, False)
        LD, dt = self.num_layers * (2 if self.bidirectional else 1), self.dtype
        return (np.zeros((LD, B, self.proj_size or self.hidden_size), dt),
                np.zeros((LD, B, self.hidden_size), dt) if self._cell == "LSTM" else None)

    def _kept_run(self, runs, key, nt, specs, offsets, nsteps, B, return_sequences,
                  lens=None, mask_zero=None):
        """The plan's DenseRun for ``key`` (made and kept in ``runs`` the first time:
        False where the plan is not of packed layers only, or _DENSE_RUN is off);
        ``lens``: a packed ragged batch's sorted lengths; ``mask_zero`` (0 / 1): a run
        with a mask and that masked output."""
        run = runs.get(key) if _DENSE_RUN else False
        if run is None:
            if len(runs) >= _PLANS_KEPT:
                runs.clear()
            run = runs[key] = all(s[0] == _PACKED for s in specs) and _kernels_module(
            ).DenseRun(_CELL_CODE[self._cell], [s[1:] for s in specs], offsets, nsteps, B,
                       self.input_size, self.hidden_size, self.proj_size,
                       int(self.reset_after), int(self.input_forget), self.clip or 0.0,
                       int(self.peepholes), nt, int(self.go_backwards),
                       2 if self.bidirectional else 1, self.dtype, return_sequences, lens,
                       int(mask_zero is not None), mask_zero or 0)
        return run

    def _given_state(self, hx, B, unbatched):
        """Copies of the user's initial states (h0, c0-or-None), validated, (L*D, B, .)."""
        h0, c0 = self._split_hx(hx)
        h0 = self._check_state("h0", h0, B, self.proj_size or self.hidden_size, unbatched)
        h_state = np.array(h0, dtype=self.dtype, order="C", copy=True)
        if self._cell != "LSTM":
            return h_state, None
        c0 = self._check_state("c0", c0, B, self.hidden_size, unbatched)
        return h_state, np.array(c0, dtype=self.dtype, order="C", copy=True)

    def _run_stack(self, nt, specs, xin, offsets, nsteps, slens, pmask, has_mask, h_state,
                   c_state, zero, B, Teff, return_sequences):
        """Run the layers of a plan (:meth:`_plan`) over the packed rows ``xin`` (N, I);
        h_state / c_state hold the initial states (sorted like the rows) and receive the
        final ones; returns the last layer's outputs (N, D*Hout), or (1, D*Hout) unused
        without return_sequences."""
        _kernels = _kernels_module()
        H, L, D = self.hidden_size, self.num_layers, 2 if self.bidirectional else 1
        Hout, dt = self.proj_size or H, self.dtype
        N = xin.shape[0]
        cell = _CELL_CODE[self._cell]
        ragged = int(slens is not _NO_LENGTHS)
        ra, ifg, clip, peep = (int(self.reset_after), int(self.input_forget),
                               self.clip or 0.0, int(self.peepholes))
        dummy_c = _NO_C[dt]
        out = xin
        lens = ridx = None
        for layer in range(L):
            kind, chunk, dirs = specs[layer]
            inp = out
            last_only = layer == L - 1 and not return_sequences
            if kind == _ROUTED and lens is None:  # sorted lengths, the reverse rows: once a call
                lens = slens if ragged else np.full(B, Teff, np.intp)
                ridx = (reverse_rows(offsets, nsteps, lens)
                        if D == 2 or self.go_backwards else None)
            out = np.empty((1, D * Hout) if last_only else (N, D * Hout), dt)
            if kind == _PAIR:
                # both directions at the same time, one thread each (no barriers)
                args = []
                for d in range(2):
                    k = layer * D + d
                    bias, bhn, peepw, wxp, whp, wrp, acts = dirs[d]
                    args += [bias, bhn, peepw, wxp, whp, wrp, h_state[k],
                             c_state[k] if c_state is not None else dummy_c, acts,
                             int((d == 1) != self.go_backwards), d * Hout]
                _kernels.run_pair(
                    cell, inp, offsets, nsteps, slens, pmask, out, ragged, H, ra, ifg,
                    clip, peep, has_mask, zero, chunk, int(not last_only), self.proj_size,
                    *args)
                continue
            for d in range(D):
                k = layer * D + d
                reverse = (d == 1) != self.go_backwards
                if kind == _ROUTED:
                    self._fused_lstm_dir(*dirs[d], inp, offsets, nsteps, lens,
                                         h_state[k], c_state[k], out, last_only, nt,
                                         ridx if reverse else None)
                    continue
                pw, acts, wdp = dirs[d]
                _kernels.run_layer(
                    cell, inp, pw, offsets, nsteps, slens, pmask,
                    h_state[k], c_state[k] if c_state is not None else dummy_c,
                    out, d * Hout, int(reverse), ragged, H, self.proj_size, ra, ifg,
                    acts, clip, peep, has_mask, zero, nt, chunk, int(not last_only), wdp)
        return out

    def _finish(self, output, h_state, c_state, B, unbatched):
        """A call's result from the outputs (T, B, D*Hout) time-major, or None without
        return_sequences (then the last layer's final states), and the final states."""
        if output is None:
            # last layer's final state per direction, concatenated: (B, D*Hout)
            D = 2 if self.bidirectional else 1
            output = np.ascontiguousarray(
                h_state[(self.num_layers - 1) * D:].transpose(1, 0, 2)
                .reshape(B, D * h_state.shape[-1]))     # (not -1: B may be 0)
            if unbatched:
                output = output[0]
        elif unbatched:
            output = output[:, 0]
        elif self.batch_first:
            output = np.ascontiguousarray(output.transpose(1, 0, 2))
        if unbatched:
            h_state = h_state[:, 0]
            if c_state is not None:
                c_state = c_state[:, 0]
        h_state = np.ascontiguousarray(h_state)
        if self._cell == "LSTM":
            return output, (h_state, np.ascontiguousarray(c_state))
        return output, h_state

    def _call(self, x, hx, lengths, mask, masked_output, num_threads, return_sequences,
              idle, mask_checked=False):
        """The general call (``mask_checked``: the mask is known not to be spans, as
        _mask_as_spans found)."""
        if not _threads._blas_hooked:
            _threads.hook_blas()
        nt = _threads.resolve(num_threads, self.num_threads)
        x, unbatched, h0, c0 = self._prepare(x, hx)
        T, B = x.shape[0], x.shape[1]
        Hout, D = self.proj_size or self.hidden_size, 2 if self.bidirectional else 1
        dt = self.dtype
        if masked_output not in ("carry", "zero"):
            raise ValueError(f"masked_output must be 'carry' or 'zero', got {masked_output!r}")

        # a mask whose unmasked steps are one span per sequence (right padding, as
        # Keras's mask_zero on padded ids gives; left padding, pad_sequences' default)
        # means lengths from those steps: the padding is then not computed.  Masked
        # steps carry the state, so only the outputs differ: "carry" repeats the last
        # output of a forward direction after a span, the first output of a reverse one
        # before it (each starts in its padding: zeros)
        begin, rcols, carry_cols, mask_given = None, (), (), mask
        if mask is not None and lengths is None and not mask_checked:
            lengths, begin, mask, carry_cols, rcols = self._mask_as_spans(
                mask, T, B, unbatched, masked_output == "carry" and return_sequences)

        # ---- packing (sorted by length, longest first) or dense; every sequence of one
        # length L from one step s: dense over those steps (B=1 always), the rest filled
        # as the packed call would (zeros, or the carried outputs)
        perm = None
        Teff, s0 = T, 0
        if lengths is not None:
            ent = ragged_index(lengths, B, T, begin)    # (validates the lengths)
            L, s = _one_span(ent, begin)
            if mask is None and L:
                Teff, lengths, s0 = L, None, s
            elif mask_given is None and _lengths_on_mask(ent, T, B):
                # (the user's lengths, little padding: the mask kernels; a batch of one
                # is one length, never here)
                mask = _length_mask(lengths, T, self.batch_first)
                lengths, masked_output = None, "zero"
        if lengths is not None:
            perm, slens, Teff, nsteps, rows, offsets, inv = ent
            xin = x.reshape(T * B, self.input_size)[rows]               # (N, I) packed
        else:
            slens = _NO_LENGTHS
            if not B:       # (no sequence: no step to run, however long T)
                Teff = 0
            offsets, nsteps = _dense_index(Teff, B)
            xin = _rows(x[s0:s0 + Teff] if Teff < T else x, Teff * B, self.input_size)
        xin = np.ascontiguousarray(xin, dtype=dt)
        N = xin.shape[0]

        if mask is not None:
            m = self._time_major_mask(mask, T, B, unbatched)
            if perm is not None:
                pmask = np.ascontiguousarray(m.reshape(T * B)[rows], dtype=np.uint8)
            else:
                pmask = np.ascontiguousarray(m, dtype=np.uint8).reshape(-1)
            has_mask = 1
        else:
            pmask = _NO_MASK
            has_mask = 0

        # sorted initial states, final states in the same order
        if hx is None:
            h_state, c_state = h0, c0      # _prepare's own zeros (in any order)
        elif perm is not None:
            h_state = np.ascontiguousarray(h0[:, perm])
            c_state = np.ascontiguousarray(c0[:, perm]) if c0 is not None else None
        else:
            h_state = np.array(h0, dtype=dt, order="C", copy=True)
            c_state = np.array(c0, dtype=dt, order="C", copy=True) if c0 is not None else None

        if N > 0:
            # (one length: the plan of a dense call of that many steps)
            nt, specs, _ = self._plan(T if perm is not None else Teff, Teff, B, nt, idle,
                                      perm is not None, has_mask)
            out = self._run_stack(nt, specs, xin, offsets, nsteps, slens, pmask, has_mask,
                                  h_state, c_state, int(masked_output == "zero"), B, Teff,
                                  return_sequences)
        else:
            out = np.zeros((0, D * Hout), dt)

        # ---- unpack
        if perm is not None:
            if return_sequences:
                output = unpack_rows(out, rows, T, B)
                carry_fill(output, lengths, carry_cols, Hout, begin, rcols)
            h_state = h_state[:, inv]
            if c_state is not None:
                c_state = c_state[:, inv]
        elif return_sequences and Teff < T:
            output = pad_steps(out.reshape(Teff, B, D * Hout), T, carry_cols, Hout, False,
                               s0, rcols)
        elif return_sequences:
            output = out.reshape(T, B, D * Hout)
        return self._finish(output if return_sequences else None, h_state, c_state, B,
                            unbatched)

    # ------------------------------------------------------------------ training
    # (backward pass: methods added here delegate to fastrnn.train / fastrnn._backward)
    def forward_train(self, x, hx=None, *, lengths=None, mask=None,
                      masked_output: str = "carry", num_threads: int | None = None):
        """Forward pass that keeps what :meth:`backward` needs: returns ``(output, h_n,
        cache)`` (LSTM: ``(output, (h_n, c_n), cache)``); same arguments and outputs as
        calling the layer.  See :mod:`fastrnn.train` for the memory kept."""
        from . import train
        return train.forward_train(self, x, hx, lengths=lengths, mask=mask,
                                   masked_output=masked_output, num_threads=num_threads)

    def backward(self, cache, grad_output=None, grad_state=None, *,
                 need_input_grad: bool = True, num_threads: int | None = None) -> dict:
        """Gradients from a :meth:`forward_train` cache, given ``dL/doutput`` and
        ``dL/dh_n`` (LSTM: ``(dL/dh_n, dL/dc_n)``), either None for zero.  Returns
        ``{"input", "h0", ["c0",] "weight_ih_l0", ...}``, weights named and shaped as in
        :meth:`state_dict` (no ``"input"`` with ``need_input_grad=False``)."""
        from . import train
        need_input_grad = _flag("need_input_grad", need_input_grad)
        return train.backward(self, cache, grad_output, grad_state,
                              need_input_grad=need_input_grad, num_threads=num_threads)
    # ---------------------------------------------------------------- end training


class SimpleRNN(RNNBase):
    """Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``; ``nonlinearity`` tanh or
    relu (or any activation spec through ``activations=[spec]``)."""

    _cell = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, **kwargs) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)

    def _default_activations(self):
        return [parse_activation(self.nonlinearity)]

    def get_config(self):
        cfg = super().get_config()
        cfg["nonlinearity"] = self.nonlinearity
        return cfg


class LSTM(RNNBase):
    """LSTM (PyTorch gate order i, f, g, o), optional projection ``proj_size``,
    peepholes, cell clip and coupled input-forget gate (ONNX options).

    ``gate_activation`` / ``cell_activation`` / ``hidden_activation`` are ONNX's
    f / g / h (defaults sigmoid / tanh / tanh)."""

    _cell = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *,
                 gate_activation="sigmoid", cell_activation="tanh",
                 hidden_activation="tanh", **kwargs) -> None:
        self._default_acts = [parse_activation(gate_activation),
                              parse_activation(cell_activation),
                              parse_activation(hidden_activation)]
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size=proj_size, **kwargs)

    def _default_activations(self):
        return list(self._default_acts)


class GRU(RNNBase):
    """GRU (PyTorch gate order r, z, n).  ``reset_after=True`` is PyTorch's and Keras's
    default (ONNX ``linear_before_reset=1``); ``reset_after=False`` applies the reset
    gate before the recurrent product (ONNX default, Keras ``reset_after=False``)."""

    _cell = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, reset_after: bool = True,
                 gate_activation="sigmoid", activation="tanh", **kwargs) -> None:
        self._default_acts = [parse_activation(gate_activation), parse_activation(activation)]
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, reset_after=reset_after, **kwargs)

    def _default_activations(self):
        return list(self._default_acts)


_CLASSES = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}


def _check_config_fits(name: str, cfg: Mapping[str, Any], state_dict: Mapping[str, Any]) -> None:
    """Before building a layer from an untrusted config: its sizes must be those of the
    given weights, so that building it allocates no more than the weights already take
    (a file cannot ask for a billion layers)."""
    def shape(key):
        a = state_dict.get(key)
        if a is None:
            raise KeyError(f"config and weights do not fit: missing {key!r}")
        return tuple(np.shape(a))

    gates = _GATES["RNN" if name == "SimpleRNN" else name]
    L, H, I = cfg.get("num_layers", 1), cfg.get("hidden_size"), cfg.get("input_size")
    for k, v in (("num_layers", L), ("hidden_size", H), ("input_size", I)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"config {k} must be an int, got {v!r}")
    L, H, I = int(L), int(H), int(I)
    n_ih = sum(1 for k in state_dict if str(k).startswith("weight_ih_l"))
    D = 2 if cfg.get("bidirectional") else 1
    if L * D != n_ih:
        raise ValueError(f"config and weights do not fit: num_layers={L}, "
                         f"{'bi' if D == 2 else 'uni'}directional, but {n_ih} weight_ih tensors")
    if shape("weight_ih_l0") != (gates * H, I):
        raise ValueError(f"config and weights do not fit: weight_ih_l0 has shape "
                         f"{shape('weight_ih_l0')}, config says {(gates * H, I)}")


def config_class(cfg, classes: Mapping[str, type], what: str) -> tuple[str, dict]:
    """``(class name, the other arguments)`` of a ``get_config()`` dict whose class is one
    of ``classes``; a ValueError naming ``what`` otherwise."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{what} config must be a mapping, got {type(cfg).__name__}")
    cfg = dict(cfg)
    name = cfg.pop("class_name", None)
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"unknown {what} class {name!r} in config; known: {sorted(classes)}")
    return name, cfg


def layer_from_config(cfg: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None,
                      *, _adopt: set | None = None):
    """Rebuild a layer from :meth:`RNNBase.get_config`; with ``state_dict`` the config is
    first checked against the weights' shapes (for configs read from files), then the
    weights are loaded (strict; ``_adopt``: see :meth:`RNNBase.load_state_dict`).  A
    cell's config (``LSTMCell``, ``GRUCell``, ``RNNCell``) builds that cell
    (:func:`fastrnn.cells.cell_from_config`)."""
    from . import cells         # (lazy: cells imports this module)
    name, cfg = config_class(cfg, {**_CLASSES, **cells._CLASSES}, "layer")
    if name in cells._CLASSES:
        return cells.cell_from_config(dict(cfg, class_name=name), state_dict, _adopt=_adopt)
    if state_dict is not None:
        _check_config_fits(name, cfg, state_dict)
    acts = cfg.pop("activations", None)
    if acts is not None:
        if not isinstance(acts, (list, tuple)) or len(acts) > 6:
            raise ValueError(f"bad activations in config: {acts!r}")
        cfg["activations"] = [tuple(a) if isinstance(a, (list, tuple)) else a for a in acts]
    if state_dict is not None and "seed" not in cfg:
        cfg["seed"] = _WEIGHTS_FOLLOW       # (the weights follow, strict)
    try:
        layer = _CLASSES[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad config for {name}: {e}") from None
    if state_dict is not None:
        layer.load_state_dict(state_dict, _adopt=_adopt)
    return layer
