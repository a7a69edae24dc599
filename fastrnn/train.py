"""Training: gradients through time for SimpleRNN / LSTM / GRU layers, and optimizers.

Usage (the layer methods delegate here)::

    out, state, cache = layer.forward_train(x, hx, lengths=lengths)
    grads = layer.backward(cache, grad_output=dL_dout, grad_state=dL_dstate)
    opt = fastrnn.train.Adam(layer, lr=1e-3)
    opt.step(grads)

``forward_train`` computes the same outputs as calling the layer and keeps what the
backward needs; a plain call (inference) keeps nothing and pays nothing.  ``backward``
returns a dict: ``"input"`` (same shape as ``x``), ``"h0"`` (and ``"c0"`` for LSTM; same
shapes as the initial states, also when ``hx`` was omitted) and one entry per weight,
named and shaped as in ``layer.state_dict()``.  ``grad_output`` / ``grad_state`` may be
``None`` (zero); ``grad_state`` is ``dL/dh_n`` or, for LSTM, ``(dL/dh_n, dL/dc_n)``
(either may be None).

Memory kept by the cache, in elements of the layer's dtype, per layer and direction for
every (time step, sequence) pair that is not padding, ``H = hidden_size``,
``Hout = proj_size or H``:

=========================  ===============  ======================================
cell                       kept             what
=========================  ===============  ======================================
SimpleRNN                  ``Hout``          the output ``h``
LSTM                       ``5H + Hout``     gates i, f, g, o; cell c; output h
GRU ``reset_after=True``   ``4H + Hout``     gates r, z, n; ``W_hn h + b_hn``; h
GRU ``reset_after=False``  ``3H + Hout``     gates r, z, n; h
=========================  ===============  ======================================

plus the packed input of the first layer (``I`` per pair).  E.g. a 1-layer LSTM, T=100,
B=16, H=256, float32: 100*16*(5*256+256)*4 B = 9.8 MB (+ 1.6 MB input); PyTorch's CPU
autograd keeps about as much (gates, cell states and outputs).  The backward needs
transient scratch of about ``G*H`` per pair for one direction (the gate gradients, ``G``
= 1, 4, 3 gates; GRU ``reset_after=True``: ``4H``) plus ``H`` more for LSTM with
projection and GRU ``reset_after=False``, packed copies of the weights, and per thread
one ``G*H x (I + Hout + 2)`` weight-gradient accumulator.

How it runs (``fastrnn/_backward.pyx``, ``fastrnn/_backward_gemm.h``): every product is
a GEMM over packed panels of the right-hand matrix with an AVX-512 or AVX2+FMA
register-blocked kernel chosen at run time (BLAS through ``fastrnn._blas`` on other
CPUs).  The weight gradients are one GEMM over all time steps per weight (``dW_ih =
dG^T X``, ``dW_hh = dG^T H_prev``, the bias gradients as an extra column of ones); per
step only the recurrent ``dh_{t-1} = dG_t W_hh`` and one fused elementwise pass run.
With two or more threads, the LSTM (without projection) and GRU (``reset_after=True``)
time loops split the units over the threads (a barrier per step) or, where the shapes
favour it (README, Training and gradients), the batch rows; for SimpleRNN, GRU
``reset_after=False`` and LSTM with ``proj_size`` one thread runs the recurrence while
the others compute, chunk by finished chunk, the input projections (forward) or the
weight gradients and ``dX`` (backward).  Everything runs without the GIL; the thread
count is resolved like the forward's (call, layer, ``set_num_threads``,
``OMP_NUM_THREADS``) and OpenBLAS is limited to it.

Masks other than one span of steps a sequence (right or left padding, which runs as
lengths on the kernels), activations other than PyTorch's (SimpleRNN tanh/relu, LSTM
sigmoid/tanh/tanh, GRU sigmoid/tanh), cell ``clip``, ``peepholes`` and ``input_forget``
run on the NumPy path of :mod:`fastrnn._train_general` instead (same API and results;
slower, and its cache keeps every gate's input and output per step).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np

from . import _threads

__all__ = ["forward_train", "backward", "TrainCache", "SGD", "Adam", "AdamW",
           "clip_grad_norm", "clip_grad_value", "release_scratch"]

_CELL_CODE = {"RNN": 0, "LSTM": 1, "GRU": 2}
_hook_lock = _threads.train_hook_lock      # (a fork waits for it: _threads._FORK_LOCKS)
_hooked = False


def _hook_blas() -> None:
    """Give the training kernels the forward kernels' OpenBLAS thread-count functions
    (once; one count shared by every kernel call, see :mod:`fastrnn._threads`)."""
    global _hooked
    if _hooked:
        return
    with _hook_lock:
        if _hooked:
            return
        from . import _backward, _kernels
        _threads.hook_blas()
        _backward._set_blas_hooks(*_kernels._blas_hooks())
        _hooked = True


class TrainCache:
    """What :func:`forward_train` keeps for :func:`backward` (opaque; see ``nbytes``)."""

    general = False       # made by the NumPy path (fastrnn._train_general)
    carry = None          # (lengths, directions) when a right-padding mask ran as lengths

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def nbytes(self) -> int:
        """Bytes of activations held (inputs, outputs, gates)."""
        if self.general:
            return _nbytes(self.state)
        total = self.xin.nbytes + sum(o.nbytes for o in self.outs)
        for per in self.saved:
            for gates, cs in per:
                total += gates.nbytes + cs.nbytes
        return total

    def __repr__(self) -> str:
        return f"<fastrnn TrainCache {self.nbytes / 1e6:.1f} MB>"


def _nbytes(obj) -> int:
    """Bytes of the distinct arrays in a nest of dicts / lists / tuples."""
    seen, total, todo = set(), 0, [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, np.ndarray):
            if id(o) not in seen:
                seen.add(id(o))
                total += o.nbytes
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return total


def _forward_general(layer, x, unbatched, h0, c0, lengths, mask, zero_out, snapshot):
    """forward_train on the NumPy path (time-major x from ``layer._prepare``);
    ``snapshot``: the weights' ``_snapshot`` taken before the forward started."""
    from . import _train_general
    from .layers import sort_by_length
    T, B = x.shape[0], x.shape[1]
    if lengths is not None:
        sort_by_length(lengths, B, T)            # validates
        lengths = np.asarray(lengths).astype(np.intp)
    m = layer._time_major_mask(mask, T, B, unbatched) if mask is not None else None
    out, h_n, c_n, state = _train_general.forward(layer, x, h0, c0, lengths, m, zero_out)
    if unbatched:
        out, h_n = out[:, 0], h_n[:, 0]
        c_n = c_n[:, 0] if c_n is not None else None
    elif layer.batch_first:
        out = out.transpose(1, 0, 2)
    params, version = snapshot
    cache = TrainCache(
        general=True, state=state, layer_id=id(layer), params=params, version=version,
        T=T, B=B, unbatched=unbatched, batch_first=layer.batch_first, perm=None,
        input_shape=(T, B, layer.input_size), used=False)
    out = np.ascontiguousarray(out)
    if c_n is not None:
        return out, (np.ascontiguousarray(h_n), np.ascontiguousarray(c_n)), cache
    return out, np.ascontiguousarray(h_n), cache


def _weights(layer, layer_idx: int, d: int):
    sfx = f"_l{layer_idx}" + ("_reverse" if d else "")
    p = layer._params
    return sfx, p


def _snapshot(layer):
    # (taken before the forward reads any weight: a change that lands while the forward
    # runs -- another thread's optimizer step or load_state_dict -- then makes the
    # version or the arrays differ and backward refuses the cache; taken after the
    # forward, it stamped a forward of half-old weights as current)
    # (the weights' version counts every change made through load_state_dict, an
    # optimizer step or mark_weights_changed: an in-place edit announced the documented
    # way was not seen when only the optimizers counted)
    return dict(layer._params), layer._weights_version     # (one atomic copy)


def forward_train(layer, x, hx=None, *, lengths=None, mask=None,
                  masked_output: str = "carry", num_threads: int | None = None):
    """Forward pass that keeps the activations the backward needs.

    Same arguments and results as calling the layer, plus the cache: returns
    ``(output, h_n, cache)`` (LSTM: ``(output, (h_n, c_n), cache)``).  Default
    activations without ``mask``, ``clip``, peepholes or ``input_forget`` run on the
    Cython kernels (a mask of one span a sequence too: right, left or both-sides
    padding, as lengths from those steps); anything else on the NumPy path of
    :mod:`fastrnn._train_general`.
    """
    from . import _backward, _train_general
    from .layers import unpack_rows
    _hook_blas()
    nt = _threads.resolve(num_threads, layer.num_threads)
    snapshot = _snapshot(layer)         # (before any weight is read: see _snapshot)
    if layer.dropout and layer.num_layers > 1 and not layer.__dict__.get("_dropout_warned"):
        layer.__dict__["_dropout_warned"] = True
        warnings.warn(f"{type(layer).__name__}(dropout={layer.dropout:g}): fastrnn's training "
                      "does not drop between layers (torch.nn does in train mode)",
                      stacklevel=2)
    given = (x,) + (tuple(hx) if isinstance(hx, (tuple, list)) else (hx,))
    x, unbatched, h0, c0 = layer._prepare(x, hx)
    # the cache keeps the input and the initial states for the backward: copies where
    # they are (views of) the caller's arrays, so refilling an input buffer after
    # forward_train cannot change the gradients (it did, silently)
    x, h0, c0 = (v if v is None or (v.flags.owndata and all(v is not u for u in given))
                 else v.copy() for v in (x, h0, c0))
    if masked_output not in ("carry", "zero"):
        raise ValueError(f"masked_output must be 'carry' or 'zero', got {masked_output!r}")
    from .layers import _dense_index, carry_fill, ragged_index, reverse_rows
    T, B = x.shape[0], x.shape[1]
    # a mask of one span a sequence (right, left or both-sides padding) runs as lengths
    # from those steps on the kernels (as in the layer call, without its size rule: the
    # other path is NumPy's); on the NumPy path, a right-padding mask (_mask_as_lengths)
    begin, rcols = None, ()
    if mask is not None and lengths is None and not _train_general.needs_general(layer, None):
        lengths, begin, mask, carry_cols, rcols = layer._mask_as_spans(
            mask, T, B, unbatched, masked_output == "carry", always=True)
    else:
        lengths, mask, carry_cols = layer._mask_as_lengths(mask, lengths, T, B, unbatched,
                                                           masked_output == "carry")
    if _train_general.needs_general(layer, mask):
        res = _forward_general(layer, x, unbatched, h0, c0, lengths, mask,
                               masked_output == "zero", snapshot)
        if carry_cols:
            carry_fill(_time_major(res[0], unbatched, layer.batch_first), lengths,
                       carry_cols, layer.output_size)
            res[-1].carry = (lengths, carry_cols, None, ())
        return res
    H, Hout, D, L = layer.hidden_size, layer.output_size, layer.num_directions, layer.num_layers
    P = layer.proj_size
    G = layer.gate_count
    dt = layer.dtype
    lstm = layer._cell == "LSTM"

    # ---- packing: sorted by length, longest first (a dense batch needs no sorting)
    # (the packing's arrays are the inference calls', kept per lengths and only read)
    perm = inv = None
    if lengths is not None:
        perm, slens, Teff, nsteps, rows, offsets, inv = ragged_index(lengths, B, T, begin)
        xin = np.ascontiguousarray(x.reshape(T * B, layer.input_size)[rows], dtype=dt)
    else:
        Teff = T if B else 0        # (no sequence: no step to run, however long T)
        slens = np.full(B, T, np.intp)
        rows = None
        offsets, nsteps = _dense_index(Teff, B)
        xin = np.ascontiguousarray(x, dtype=dt).reshape(T * B, layer.input_size)
    N = xin.shape[0]
    ridx = reverse_rows(offsets, nsteps, slens)    # rows of a reverse direction
    last = (offsets[np.maximum(slens, 1) - 1] + np.arange(B)) if Teff else np.zeros(B, np.intp)
    has_len = slens > 0

    if perm is not None:
        h0s = np.ascontiguousarray(h0[:, perm])
        c0s = np.ascontiguousarray(c0[:, perm]) if lstm else None
    else:
        # (the kernels take writeable buffers: a read-only or memory-mapped state is
        # copied, as one in another order is)
        h0s = np.require(h0, requirements=("C", "W"))
        c0s = np.require(c0, requirements=("C", "W")) if lstm else None
    hT = h0s.copy()
    cT = c0s.copy() if lstm else None

    cell = _CELL_CODE[layer._cell]
    relu = int(layer._cell == "RNN" and layer._acts[0][0][0] == "relu")
    reset_after = int(layer.reset_after)
    dummy = np.zeros((1, 1), dt)
    outs, saved = [], []
    inp = xin
    for li in range(L):
        out = np.empty((N, D * Hout), dt)
        per = []
        for d in range(D):
            k = li * D + d
            sfx = f"_l{li}" + ("_reverse" if d else "")
            p = snapshot[0]                 # (the arrays the cache will be checked against)
            wih, whh = p["weight_ih" + sfx], p["weight_hh" + sfx]
            if layer.bias:
                b_ih, b_hh = p["bias_ih" + sfx], p["bias_hh" + sfx]
                bias = (b_ih + b_hh).astype(dt)
                bhn = np.zeros(H, dt)
                if cell == 2 and reset_after:
                    bias[2 * H:] = b_ih[2 * H:]
                    bhn = np.ascontiguousarray(b_hh[2 * H:])
            else:
                bias = np.zeros(G * H, dt)
                bhn = np.zeros(H, dt)
            whr = p["weight_hr" + sfx] if P else dummy
            gates = np.empty((N, G * H), dt) if cell else dummy
            cs = np.empty((N, H), dt) if (lstm or (cell == 2 and reset_after)) else dummy
            reverse = (d == 1) != layer.go_backwards
            if reverse:
                xs = inp[ridx]
                y, ycol = np.empty((N, Hout), dt), 0
            else:
                xs = inp
                y, ycol = out, d * Hout
            c0k = c0s[k] if lstm else dummy
            _backward.forward(cell, xs, wih, whh, bias, bhn, whr, offsets, nsteps,
                              h0s[k], c0k, y, ycol, gates, cs, H, P, reset_after, relu, nt)
            ys = y[:, ycol:ycol + Hout]
            if reverse:
                out[:, d * Hout:(d + 1) * Hout] = ys[ridx]
            if N:
                hT[k][has_len] = ys[last[has_len]]
                if lstm:
                    cT[k][has_len] = cs[last[has_len]]
            per.append((gates, cs))
        outs.append(out)
        saved.append(per)
        inp = out

    # ---- unpack to the caller's layout
    out = outs[-1] if L else xin
    if perm is not None:
        output = unpack_rows(out, rows, T, B)
        carry_fill(output, lengths, carry_cols, Hout, begin, rcols)
        h_n = hT[:, inv]
        c_n = cT[:, inv] if lstm else None
    else:
        output = out.reshape(T, B, D * Hout).copy()
        h_n, c_n = hT, cT
    if unbatched:
        output, h_n = output[:, 0], h_n[:, 0]
        c_n = c_n[:, 0] if lstm else None
    elif layer.batch_first:
        output = output.transpose(1, 0, 2)
    output = np.ascontiguousarray(output)
    h_n = np.ascontiguousarray(h_n)
    params, version = snapshot
    cache = TrainCache(
        layer_id=id(layer), params=params, version=version, T=T, B=B, Teff=Teff,
        unbatched=unbatched, batch_first=layer.batch_first, perm=perm, inv=inv, rows=rows,
        nsteps=nsteps, offsets=offsets, ridx=ridx, xin=xin, outs=outs, saved=saved,
        h0s=h0s, c0s=c0s, input_shape=(T, B, layer.input_size), used=False,
        carry=(lengths, carry_cols, begin, rcols) if carry_cols or rcols else None)
    if lstm:
        return output, (h_n, np.ascontiguousarray(c_n)), cache
    return output, h_n, cache


def _grad_array(name, g, shape, dtype):
    from .layers import _float_array
    g = _float_array(name, g, dtype)
    if g.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (the shape of what it is the "
                         f"gradient of), got {g.shape}")
    return g


def backward(layer, cache: TrainCache, grad_output=None, grad_state=None, *,
             need_input_grad: bool = True,
             num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Gradients of a loss given ``dL/doutput`` and ``dL/dstate`` (None: zero).

    Returns ``{"input": ..., "h0": ..., ["c0": ...,] "weight_ih_l0": ..., ...}`` (weight
    names and shapes as in ``layer.state_dict()``).  ``need_input_grad=False`` skips
    ``dL/dinput`` (one GEMM of the first layer; ``"input"`` is then absent), like a torch
    input without ``requires_grad``.  The cache may be used again (it is not consumed),
    as long as the weights did not change since the forward.
    """
    from . import _backward
    from .layers import unpack_rows
    if not isinstance(cache, TrainCache):
        raise TypeError("backward needs the cache returned by forward_train")
    if cache.layer_id != id(layer):
        raise ValueError("this cache was made by another layer")
    if (layer._weights_version != cache.version
            or any(layer._params.get(k) is not v for k, v in cache.params.items())):
        raise RuntimeError("the layer's weights changed since forward_train; run "
                           "forward_train again (gradients must use the forward's weights)")
    _hook_blas()
    nt = _threads.resolve(num_threads, layer.num_threads)
    H, Hout, D, L = layer.hidden_size, layer.output_size, layer.num_directions, layer.num_layers
    P = layer.proj_size
    G = layer.gate_count
    dt = layer.dtype
    lstm = layer._cell == "LSTM"
    T, B = cache.T, cache.B
    go = _time_major_grad(layer, cache, grad_output)
    if go is not None and cache.carry is not None:    # outputs repeated past a length
        from .layers import carry_grad
        go = carry_grad(go, *cache.carry[:2], Hout, *cache.carry[2:])
    dhs, dcs = _state_grads(layer, cache, grad_state)
    if cache.general:
        from . import _train_general
        if go is None:
            go = np.zeros((T, B, D * Hout), dt)
        dxf, dh0, dc0, grads = _train_general.backward(layer, cache.state, go, dhs, dcs,
                                                       need_input_grad)
        return _package(layer, cache, dxf, dh0, dc0, grads, need_input_grad)

    perm, rows, offsets, nsteps, ridx = (cache.perm, cache.rows, cache.offsets,
                                         cache.nsteps, cache.ridx)
    N = cache.xin.shape[0]

    # ---- output gradient into packed time order (N, D*Hout)
    if go is None:
        dout = np.zeros((N, D * Hout), dt)
    else:
        if perm is not None:
            dout = np.ascontiguousarray(go.reshape(T * B, D * Hout)[rows])
        else:
            dout = np.require(go, requirements=("C", "W")).reshape(N, D * Hout)  # (as h0s)

    cell = _CELL_CODE[layer._cell]
    relu = int(layer._cell == "RNN" and layer._acts[0][0][0] == "relu")
    reset_after = int(layer.reset_after)
    dummy = np.zeros((1, 1), dt)
    grads: dict[str, np.ndarray] = {}
    for li in range(L - 1, -1, -1):
        inp = cache.xin if li == 0 else cache.outs[li - 1]
        out = cache.outs[li]
        In = inp.shape[1]
        want_dx = need_input_grad or li > 0
        # a bidirectional layer's two directions at the same time, one thread each, where
        # _backward.pair_applies says so (measured there); the gradients are then the
        # bits of one-thread backwards of each direction, combined below in the same order
        pair = D == 2 and _backward.pair_applies(
            cell, int(nsteps[0]) if len(nsteps) else 0, H, P, In, reset_after, nt,
            np.dtype(dt).itemsize)
        runs, calls = [], []
        for d in range(D):
            k = li * D + d
            sfx, p = _weights(layer, li, d)
            wih, whh = p["weight_ih" + sfx], p["weight_hh" + sfx]
            whr = p["weight_hr" + sfx] if P else dummy
            gates, cs = cache.saved[li][d]
            reverse = (d == 1) != layer.go_backwards
            cols = slice(d * Hout, (d + 1) * Hout)
            if reverse:
                xs = inp[ridx]
                y, ycol = np.ascontiguousarray(out[ridx, cols]), 0
                dy = dout[ridx, cols]
            else:
                xs = inp
                y, ycol = out, d * Hout
                dy = np.ascontiguousarray(dout[:, cols])
            # the kernel overwrites dy with a projection: never the caller's array
            dy = np.array(dy, dtype=dt, order="C", copy=True) if (P and not reverse) \
                else np.ascontiguousarray(dy)
            dh = dhs[k]
            dc = dcs[k] if lstm else dummy
            dx = np.empty((N, In), dt) if want_dx else dummy
            dwih = np.zeros((G * H, In), dt)
            dwhh = np.zeros((G * H, Hout), dt)
            dbih = np.zeros(G * H, dt)
            dbhh = np.zeros(G * H, dt)
            dwhr = np.zeros((P, H), dt) if P else dummy
            c0k = cache.c0s[k] if lstm else dummy
            args = (cell, xs, wih, whh, whr, offsets, nsteps, cache.h0s[k], c0k, y, ycol,
                    gates, cs, dy, dh, dc, dx, dwih, dwhh, dbih, dbhh, dwhr, H, P,
                    reset_after, relu)
            if pair:
                calls.append(_backward.prepare_backward(*args, int(want_dx)))
            else:
                _backward.backward(*args, nt, int(want_dx))
            runs.append((sfx, reverse, dx, dwih, dwhh, dbih, dbhh, dwhr))
        if pair:
            _backward.backward_pair(*calls)
        din = None
        for sfx, reverse, dx, dwih, dwhh, dbih, dbhh, dwhr in runs:
            if want_dx:
                if reverse:
                    dx = dx[ridx]
                if din is None:
                    din = dx
                else:
                    din += dx
            grads["weight_ih" + sfx] = dwih
            grads["weight_hh" + sfx] = dwhh
            if layer.bias:
                grads["bias_ih" + sfx] = dbih
                grads["bias_hh" + sfx] = dbhh
            if P:
                grads["weight_hr" + sfx] = dwhr
        dout = din

    # ---- unpack input and initial-state gradients
    I = layer.input_size
    if N == 0:
        dout = np.zeros((0, I), dt)
    dxf = None
    if perm is not None:
        if need_input_grad:
            dxf = unpack_rows(dout, rows, T, B)
        dh0 = dhs[:, cache.inv]
        dc0 = dcs[:, cache.inv] if lstm else None
    else:
        if need_input_grad:
            dxf = dout.reshape(T, B, I)
        dh0, dc0 = dhs, dcs
    return _package(layer, cache, dxf, dh0, dc0, grads, need_input_grad)


def _time_major_grad(layer, cache, grad_output):
    """The output gradient as a time-major ``(T, B, D*H_out)`` array (None: zero)."""
    if grad_output is None:
        return None
    T, B, F = cache.T, cache.B, layer.num_directions * layer.output_size
    if cache.unbatched:
        out_shape = (T, F)
    elif cache.batch_first:
        out_shape = (B, T, F)
    else:
        out_shape = (T, B, F)
    go = _grad_array("grad_output", grad_output, out_shape, layer.dtype)
    return _time_major(go, cache.unbatched, cache.batch_first)


def _time_major(a, unbatched, batch_first):
    """A ``(T, B, F)`` view of an array in the caller's layout (``(T, F)`` unbatched,
    ``(B, T, F)`` batch_first)."""
    if unbatched:
        return a[:, None]
    return a.transpose(1, 0, 2) if batch_first else a


def _state_grads(layer, cache, grad_state):
    """Final-state gradients ``(L*D, B, .)`` in the cache's sequence order (sorted by
    length on the packed path): ``(dh, dc)``, ``dc`` None but for LSTM."""
    lstm = layer._cell == "LSTM"
    LD, B, dt, perm = layer.num_layers * layer.num_directions, cache.B, layer.dtype, cache.perm

    def state_grad(name, g, size):
        want = (LD, size) if cache.unbatched else (LD, B, size)
        if g is None:
            return np.zeros((LD, B, size), dt)
        g = _grad_array(name, g, want, dt)
        if cache.unbatched:
            g = g[:, None]
        g = g[:, perm] if perm is not None else g
        return np.array(g, dtype=dt, order="C", copy=True)

    gh = gc = None
    if grad_state is not None:
        if lstm:
            if not isinstance(grad_state, (tuple, list)) or len(grad_state) != 2:
                raise TypeError("LSTM grad_state must be a tuple (dh_n, dc_n) (either may "
                                "be None)")
            gh, gc = grad_state
        elif isinstance(grad_state, tuple):
            raise TypeError(f"{type(layer).__name__} grad_state must be one array dh_n "
                            "(a tuple (dh_n, dc_n) is LSTM's)")
        else:
            gh = grad_state
    dhs = state_grad("grad_state h", gh, layer.output_size)
    dcs = state_grad("grad_state c", gc, layer.hidden_size) if lstm else None
    return dhs, dcs


def _package(layer, cache, dxf, dh0, dc0, grads, need_input_grad):
    """The result dict in the caller's layout: ``input`` (time-major dxf), ``h0``,
    ``c0``, then the weight gradients in ``state_dict`` order."""
    lstm = layer._cell == "LSTM"
    if cache.unbatched:
        dh0 = dh0[:, 0]
        dc0 = dc0[:, 0] if lstm else None
        dxf = dxf[:, 0] if dxf is not None else None
    elif cache.batch_first and dxf is not None:
        dxf = dxf.transpose(1, 0, 2)
    result = {}
    if need_input_grad:
        result["input"] = np.ascontiguousarray(dxf)
    result["h0"] = np.ascontiguousarray(dh0)
    if lstm:
        result["c0"] = np.ascontiguousarray(dc0)
    # weights in state_dict order
    for name in layer._params:
        if name in grads:
            result[name] = grads[name]
    return result


def release_scratch() -> int:
    """Free the scratch memory the backward pass and the packed forward kernel keep
    between calls (so repeated calls do not pay fresh pages; for an LSTM B=64 T=50
    H=512 backward about 70 MB, a forward's projected inputs up to a few MB) and
    return how many bytes were freed.  The next call allocates it again."""
    from . import _backward, _kernels
    return int(_backward.release_scratch()) + int(_kernels.release_scratch())


# (backward's other entries: a layer's "h0" / "c0", a cell's "hx" / "cx")
_NOT_WEIGHTS = ("input", "h0", "c0", "hx", "cx")


def _grad_keys(grads, names):
    """The gradients a clip touches (in place: floating arrays only; an integer one would
    be scaled to zeros, or numpy's casting error)."""
    keys = [k for k in grads if k not in _NOT_WEIGHTS] if names is None else list(names)
    for k in keys:
        g = grads[k]
        if not (isinstance(g, np.ndarray) and g.dtype.kind == "f"):
            raise TypeError(f"gradient {k!r} must be a floating-point NumPy array (clipped "
                            f"in place), got {getattr(g, 'dtype', type(g).__name__)}")
    return keys


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float,
                   names=None, error_if_nonfinite: bool = False,
                   norm_type: float = 2.0) -> float:
    """Scale the weight gradients in place so their global norm is at most ``max_norm``
    (like ``torch.nn.utils.clip_grad_norm_``); returns the norm before.  ``names``:
    which entries count (default: all but ``input``, ``h0``, ``c0`` and a cell's ``hx``,
    ``cx``); ``norm_type``: p of the p-norm (``inf``: the largest magnitude).  A NaN or
    infinite norm makes the gradients NaN (as torch's does), or with ``error_if_nonfinite=True`` raises
    ``RuntimeError`` leaving them unchanged."""
    keys = _grad_keys(grads, names)
    p = float(norm_type)
    if not p > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type}")
    if p == 2.0:
        total = math.sqrt(sum(float(np.vdot(grads[k], grads[k])) for k in keys))
    elif math.isinf(p):
        total = max((float(np.abs(grads[k]).max()) for k in keys if grads[k].size),
                    default=0.0)
    else:
        total = sum(float((np.abs(grads[k], dtype=np.float64) ** p).sum())
                    for k in keys) ** (1.0 / p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of the gradients is {total}: non-finite, "
                           "so they cannot be clipped")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1:             # NaN too: the gradients become NaN, as in torch
        with np.errstate(invalid="ignore"):
            for k in keys:
                grads[k] *= grads[k].dtype.type(coef)
    return total


def clip_grad_value(grads: Mapping[str, np.ndarray], clip_value: float, names=None) -> None:
    """Clamp the weight gradients in place to ``[-clip_value, clip_value]`` (like
    ``torch.nn.utils.clip_grad_value_``; ``names`` as in :func:`clip_grad_norm`)."""
    c = float(clip_value)
    if not c >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for k in _grad_keys(grads, names):
        np.clip(grads[k], -c, c, out=grads[k])


# ------------------------------------------------------------------ optimizers
def _at_least_zero(name: str, v) -> float:
    """``v`` as a float, refused where it is negative or NaN (as torch.optim's)."""
    v = float(v)
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _unwrap(v):
    """A 0-d NumPy array as the value it holds (what ``np.load`` gives back for a number
    or a dict ``np.savez`` saved)."""
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


class _Optimizer:
    """Base of the optimizers: ``step(grads)``, ``state_dict()`` / ``load_state_dict()``
    (resume training: the per-parameter state and the hyperparameters, by parameter
    name)."""
    _hyper: tuple = ("lr",)

    def __init__(self, params, lr: float):
        if hasattr(params, "parameters") and hasattr(params, "mark_weights_changed"):
            self._layer = params
            self._dict = None
        elif isinstance(params, Mapping):
            # (a layer's own parameters() dict: its layer, re-packed after each step)
            # (a layer's or a cell's own parameters(): read from its owner at each step,
            # so arrays a later load_state_dict puts in are the ones updated)
            owner = getattr(params, "owner", None)
            self._layer = owner() if callable(owner) else None
            self._dict = None if self._layer is not None else params
        else:
            raise TypeError("optimizer needs a layer or a dict of name -> array")
        self.lr = _at_least_zero("lr", lr)
        self.state: dict[str, dict[str, Any]] = {}

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """The parameters updated: the layer's own dict, read at each step (a restored
        pickle's or a reloaded layer's current arrays), or the dict given."""
        return self._dict if self._dict is not None else self._layer.parameters()

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Update the parameters in place from ``grads`` (names as the parameters;
        ``input``, ``h0``, ``c0`` and a cell's ``hx``, ``cx`` are ignored; a parameter
        without gradient is left alone; a name that is no parameter's is a ``KeyError``,
        before anything changes: a wrapper's prefixed names or a typo would otherwise update nothing)."""
        if not isinstance(grads, Mapping):
            raise TypeError("step needs the gradients as a mapping of names to arrays "
                            f"(what backward returns), got {type(grads).__name__}")
        params = self.params
        unknown = [k for k in grads if k not in params and k not in _NOT_WEIGHTS]
        if unknown:
            raise KeyError(f"gradients for unknown parameters {sorted(map(str, unknown))[:8]}; "
                           f"the parameters are {list(params)[:8]}"[:600])
        todo = []
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"gradient {name!r} has shape {g.shape}, parameter {p.shape}")
            todo.append((name, p, g))
        for name, p, g in todo:
            self._update(name, p, g.astype(p.dtype, copy=False))
        if self._layer is not None:
            self._layer.mark_weights_changed()

    def _update(self, name, p, g):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """A copy of the optimizer's state: ``{"state": {name: {...}}, "hyper": {...}}``
        (``torch.optim``'s by parameter name; save it with the layer's weights, e.g. by
        ``np.savez`` or pickle, and restore with :meth:`load_state_dict`)."""
        state = {n: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for n, st in self.state.items()}
        return {"state": state, "hyper": {k: getattr(self, k) for k in self._hyper}}

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore :meth:`state_dict`'s result (validated: parameter names and shapes,
        hyperparameters as the constructor checks them; nothing changes on an error).  A
        0-d array stands for the value it holds (as ``np.load`` gives back what
        ``np.savez`` saved: the step count, or the whole nested dict)."""
        sd = _unwrap(sd)
        if not isinstance(sd, Mapping) or set(sd) != {"state", "hyper"}:
            raise ValueError("an optimizer state dict has the keys 'state' and 'hyper'")
        params = self.params
        hyper = {k: _unwrap(v) for k, v in dict(_unwrap(sd["hyper"])).items()}
        if set(hyper) != set(self._hyper):
            raise ValueError(f"{type(self).__name__} hyperparameters are {list(self._hyper)}, "
                             f"got {sorted(hyper)}")
        hyper = self._checked(**{k: type(getattr(self, k))(v) for k, v in hyper.items()})
        state = {}
        for name, st in dict(_unwrap(sd["state"])).items():
            if name not in params:
                raise KeyError(f"optimizer state for unknown parameter {name!r}")
            new = {}
            for k, v in dict(_unwrap(st)).items():
                if k == "step":
                    step = _unwrap(v)
                    if isinstance(step, (bool, np.bool_)) or not float(step).is_integer() \
                            or step < 0:
                        raise ValueError(f"optimizer state {name!r}/'step' must be a count "
                                         f"of steps, got {step!r}")
                    v = int(step)
                elif isinstance(v, np.ndarray) or np.ndim(v):
                    v = np.array(v, dtype=params[name].dtype, copy=True)
                    if v.shape != params[name].shape:
                        raise ValueError(f"optimizer state {name!r}/{k!r} has shape {v.shape}, "
                                         f"parameter {params[name].shape}")
                new[k] = v
            state[name] = new
        for k, v in hyper.items():
            setattr(self, k, v)
        self.state = state

    def _checked(self, **hyper) -> dict:
        """``hyper`` (every hyperparameter) checked as the constructor checks them."""
        return {"lr": _at_least_zero("lr", hyper["lr"])}

    def __setstate__(self, state):
        if "params" in state:           # (pickled before params became the layer's own)
            params = state.pop("params")
            state.setdefault("_dict", None if state.get("_layer") is not None else params)
        self.__dict__.update(state)


class SGD(_Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s formulas::

        g = grad (-grad with maximize) + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) | buf
        p -= lr * g
    """
    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False):
        super().__init__(params, lr)
        self.__dict__.update(self._checked(
            lr=self.lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize))

    def _checked(self, **h) -> dict:
        out = dict(h, lr=_at_least_zero("lr", h["lr"]),
                   momentum=_at_least_zero("momentum", h["momentum"]),
                   dampening=float(h["dampening"]),
                   weight_decay=_at_least_zero("weight_decay", h["weight_decay"]),
                   nesterov=bool(h["nesterov"]), maximize=bool(h["maximize"]))
        if not math.isfinite(out["dampening"]):
            raise ValueError(f"dampening must be a finite number, got {out['dampening']}")
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        return out

    def _update(self, name, p, g):
        if self.maximize:
            g = -g
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            st = self.state.setdefault(name, {})
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(_Optimizer):
    """Adam, ``torch.optim.Adam``'s formulas (L2 ``weight_decay`` added to the gradient;
    ``decoupled=True`` gives AdamW: ``p *= 1 - lr * weight_decay`` instead)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2  (amsgrad: v_max = max(v_max, v))
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    _hyper = ("lr", "betas", "eps", "weight_decay", "decoupled", "amsgrad", "maximize")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, *,
                 amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr)
        self.__dict__.update(self._checked(
            lr=self.lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
            amsgrad=amsgrad, maximize=maximize))

    def _checked(self, **h) -> dict:
        b1, b2 = (float(b) for b in h["betas"])
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {h['betas']}")
        return dict(h, lr=_at_least_zero("lr", h["lr"]), betas=(b1, b2),
                    eps=_at_least_zero("eps", h["eps"]),
                    weight_decay=_at_least_zero("weight_decay", h["weight_decay"]),
                    decoupled=bool(h["decoupled"]), amsgrad=bool(h["amsgrad"]),
                    maximize=bool(h["maximize"]))

    def _update(self, name, p, g):
        b1, b2 = self.betas
        if self.maximize:
            g = -g
        st = self.state.setdefault(name, {})
        if not st:
            st["step"] = 0
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
            if self.amsgrad:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        if self.amsgrad:
            vmax = st.setdefault("max_exp_avg_sq", np.zeros_like(p))
            np.maximum(vmax, v, out=vmax)
            v = vmax
        bc1 = 1 - b1 ** t
        bc2_sqrt = math.sqrt(1 - b2 ** t)
        denom = np.sqrt(v) / bc2_sqrt + self.eps
        p -= (self.lr / bc1) * (m / denom)


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay, default 0.01 as torch's."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, *, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True,
                         amsgrad=amsgrad, maximize=maximize)
