"""ONNX's window ops on 1-D, 2-D and 3-D inputs: ``Conv``, ``MaxPool``, ``AveragePool``.

The CNN front-ends of CRNN models (OCR, speech, sound event detection) and tf2onnx's
Keras ``Conv1D`` (a 2-D Conv of kernel ``[1, k]`` over a unit axis) run these before
the recurrent nodes.  Inputs are ``(N, C, *spatial)`` with 1 to 3 spatial axes; the
attributes are ONNX's: ``pads`` (every axis' begin, then every axis' end), ``auto_pad``
(NOTSET, VALID, SAME_UPPER, SAME_LOWER), ``strides``, ``dilations``, ``group`` (a Conv's;
depthwise included), ``kernel_shape`` (a Conv's from its weights), ``ceil_mode`` and
``count_include_pad`` (the pools').

A Conv is a GEMM per group: the padded input's windows are copied out of a strided view
of it (im2col: ``(group, C / group * taps, N * outputs)``, a batch slice or a block of
output rows at a time when that is large) and multiplied by the group's weights
``(M / group, C / group * taps)`` with ``np.matmul``, numpy's OpenBLAS on one thread
(:class:`_blas_threads`).  A pool takes its taps in turn: each is a strided view of the
padded input over all the outputs, kept by ``np.maximum`` or summed.

Refused, each a ValueError naming the op (the model adds the node's name): 4-D and
larger spatial inputs, dilated windows with ``auto_pad`` SAME (ONNX Runtime refuses a
dilated Conv so and pads its pools as if undilated), a pool's pads as large as its
window, a window that does not fit where ONNX Runtime's output size is not 0, and
windows, pads or copies beyond ``_POOL_WORK`` element steps (a file's kernel_shape or
pads asking for minutes of work or terabytes).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

# A window op's element steps (taps x outputs, padded size, a Conv's copied windows:
# each times N x C) beyond which it is refused
_POOL_WORK = 1 << 31
# A Conv's copied windows (im2col) at most this many elements at a time (batch slices,
# or blocks of one item's first output axis)
_IM2COL_CHUNK = 1 << 24
_MAX_DIMS = 3
# numpy's OpenBLAS threads (this thread's, restored after) for a Conv's GEMMs; None: as
# numpy has them.  See _blas_threads.
_BLAS_THREADS: int | None = 1
_blas_setter: list = []     # [numpy's openblas_set_num_threads_local, or None], found once


def _numpy_blas_setter():
    """numpy's OpenBLAS's ``openblas_set_num_threads_local`` (the calling thread's count;
    returns the one before), from numpy's wheel (``numpy.libs``); None elsewhere."""
    if not _blas_setter:
        fn = None
        try:
            import ctypes
            import glob
            import os
            libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
            for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                    break
        except (OSError, AttributeError):
            fn = None
        _blas_setter.append(fn)
    return _blas_setter[0]


class _blas_threads:
    """``with _blas_threads():`` this thread's numpy OpenBLAS calls on _BLAS_THREADS
    threads.  A Conv's GEMMs on numpy's default (every core) left OpenBLAS's workers
    spinning after each call (~0.1 s, sched_yield) while the recurrent nodes' OpenMP team
    needed the same cores, and the team's threads spinning after a layer call while the
    next call's GEMMs needed them.  bench/onnx_crnn.py's CRNN on two cores (Zen 4 VM,
    medians): batch 1 8.0 ms a call against 1.9-2.0 ms with the GEMMs on one thread;
    batch 16 37-40 ms either way (the GEMMs twice as long, the LSTM half as long)."""
    __slots__ = ("prev", "fn")

    def __enter__(self):
        self.fn = _numpy_blas_setter() if _BLAS_THREADS else None
        if self.fn is not None:
            self.prev = self.fn(_BLAS_THREADS)

    def __exit__(self, *exc):
        if self.fn is not None:
            self.fn(self.prev)


def _ints(a) -> list[int]:
    v = np.asarray(a).reshape(-1)
    return v.tolist() if v.dtype.kind in "iu" else [int(t) for t in v.tolist()]


def _show(v):
    """A per-axis list as messages show it: one axis' value alone (as a 1-D op's were)."""
    return v[0] if len(v) == 1 else list(v)


def _spatial(x, op) -> int:
    """The spatial axes of ``x`` as a window op takes it, ``(N, C, *spatial)``: 1 to 3."""
    D = x.ndim - 2
    if not 1 <= D <= _MAX_DIMS:
        raise ValueError(f"{op}: only 1-D, 2-D and 3-D {op} is supported (an input of "
                         f"shape (N, C, L), (N, C, H, W) or (N, C, D, H, W)), got shape "
                         f"{x.shape}")
    return D


def _per_axis(a, key, default, D, op) -> list[int]:
    """Attribute ``key``: ``D`` positive ints (default ``default`` on every axis; a
    default of 0: required)."""
    v = _ints(a[key]) if key in a else [default] * D
    if len(v) != D or min(v) < 1:
        what = "one positive int" if D == 1 else f"{D} positive ints"
        raise ValueError(f"{op}: {key} must be {what} for a {D}-D {op}, got {v}")
    return v


def _window_pads(Ls, k, s, d, a, op) -> list[tuple[int, int]]:
    """(before, after) padding of each spatial axis (``Ls`` steps) for ``k`` taps ``d``
    apart, ``s`` apart, from ``auto_pad`` / ``pads`` (ONNX's rules)."""
    D = len(Ls)
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if max(d) > 1:      # (ONNX Runtime refuses a Conv so; its pools pad as if undilated)
            raise ValueError(f"{op}: auto_pad {auto} with dilations > 1 is not supported")
        out = []
        for L, kk, ss, dd in zip(Ls, k, s, d):
            total = max((-(-L // ss) - 1) * ss + (kk - 1) * dd + 1 - L, 0)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else
                       (total - small, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * D
    if auto != "NOTSET":
        raise ValueError(f"{op}: unknown auto_pad {auto!r}")
    pads = _ints(a.get("pads", [0] * (2 * D)))
    if len(pads) != 2 * D or min(pads) < 0:
        raise ValueError(f"{op}: pads must be {'two' if D == 1 else 2 * D} non-negative ints "
                         f"for a {D}-D {op}, got {pads}")
    return list(zip(pads[:D], pads[D:]))


def _onnx_pads(pads) -> list[int]:
    """Per-axis (before, after) pairs as ONNX writes them: the befores, then the afters."""
    return [p for p, _ in pads] + [q for _, q in pads]


def _windows(xp, lead, k, n, s, d):
    """A read-only view of ``xp`` ``(N, C, *spatial)``:
    ``lead`` (shape and strides of the leading axes) then ``(*k, N, *n)``, the taps of
    each window (``k`` taps ``d`` apart) of the ``n`` windows ``s`` apart."""
    st = xp.strides
    shape = tuple(lead[0]) + tuple(k) + (xp.shape[0],) + tuple(n)
    strides = tuple(lead[1]) + tuple(dd * t for dd, t in zip(d, st[2:])) + (st[0],) + \
        tuple(ss * t for ss, t in zip(s, st[2:]))
    return as_strided(xp, shape, strides, writeable=False)


def _op_conv(i, a, o):
    """Conv of ``x`` (N, C, *spatial) by ``W`` (M, C / group, *k): a GEMM per group."""
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    D = _spatial(x, "Conv")
    if w.ndim != x.ndim:
        raise ValueError(f"Conv: weights of shape {w.shape} for a {D}-D Conv")
    M, cg = w.shape[:2]
    k = list(w.shape[2:])
    g = int(a.get("group", 1))
    if g < 1 or x.shape[1] != cg * g or M % g:
        raise ValueError(f"Conv: input of {x.shape[1]} channels, weights {w.shape}, group "
                         f"{g} do not fit")
    if "kernel_shape" in a and _ints(a["kernel_shape"]) != k:
        raise ValueError(f"Conv: kernel_shape {_ints(a['kernel_shape'])} for weights {w.shape}")
    s, d = _per_axis(a, "strides", 1, D, "Conv"), _per_axis(a, "dilations", 1, D, "Conv")
    Ls = list(x.shape[2:])
    pads = _window_pads(Ls, k, s, d, a, "Conv")
    N, C = x.shape[:2]
    padded = [L + p + q for L, (p, q) in zip(Ls, pads)]
    if N * max(C, M) * math.prod(padded) > _POOL_WORK:
        raise ValueError(f"Conv: pads {_onnx_pads(pads)} for {_show(Ls)} steps are beyond "
                         f"what fastrnn runs ({_POOL_WORK} elements)")
    n = [(P - (kk - 1) * dd - 1) // ss + 1 for P, kk, ss, dd in zip(padded, k, s, d)]
    if min(n) < 1:
        raise ValueError(f"Conv: a kernel of {_show(k)} taps (dilation {_show(d)}) does not "
                         f"fit in {_show(padded)} steps")
    K, nn = math.prod(k), math.prod(n)
    if N * C * K * nn > _POOL_WORK:
        raise ValueError(f"Conv: a kernel of {_show(k)} taps over {_show(n)} outputs with pads "
                         f"{_onnx_pads(pads)} is beyond what fastrnn runs ({_POOL_WORK} "
                         f"element steps)")
    dt = np.result_type(x.dtype, w.dtype)
    if any(p or q for p, q in pads):
        xp = np.zeros((N, C) + tuple(padded), dt)
        xp[(slice(None), slice(None)) + tuple(slice(p, p + L) for (p, _), L in
                                              zip(pads, Ls))] = x
    else:
        xp = x.astype(dt, copy=False)
    mg = M // g
    wg = w.astype(dt, copy=False).reshape(g, mg, cg * K)
    # windows (g, cg, *k, N, *n) -> columns (g, cg * K, N * nn): a batch slice at a
    # time, or a block of a batch item's first output axis where one item is too large
    lead = ((g, cg), (cg * xp.strides[1], xp.strides[1]))
    rest = nn // n[0]
    if C * K * nn <= _IM2COL_CHUNK:
        step = _IM2COL_CHUNK // (C * K * nn)
        blocks = [(b0, min(N, b0 + step), 0, n[0]) for b0 in range(0, N, step)]
    else:
        rows = max(1, _IM2COL_CHUNK // (C * K * rest))
        blocks = [(b0, b0 + 1, r0, min(n[0], r0 + rows)) for b0 in range(N)
                  for r0 in range(0, n[0], rows)]
    y = np.empty((g, mg, N * nn), dt)
    with _blas_threads():
        for b0, b1, r0, r1 in blocks:
            cols = _windows(xp[b0:b1, :, r0 * s[0]:], lead, k, [r1 - r0] + n[1:], s, d)
            cols = cols.reshape(g, cg * K, -1)
            if len(blocks) == 1:
                np.matmul(wg, cols, out=y)
            else:
                y[:, :, b0 * nn + r0 * rest:(b1 - 1) * nn + r1 * rest] = np.matmul(wg, cols)
    y = y.reshape(M, N, nn)
    if b is not None:
        y += b.astype(dt, copy=False).reshape(M, 1, 1)
    return [np.ascontiguousarray(y.reshape((M, N) + tuple(n)).swapaxes(0, 1))]


def _pool(i, a, o, op):
    x = i[0]
    D = _spatial(x, op)
    k = _per_axis(a, "kernel_shape", 0, D, op)
    s = _per_axis(a, "strides", 1, D, op)
    d = _per_axis(a, "dilations", 1, D, op)
    Ls = list(x.shape[2:])
    pads = _window_pads(Ls, k, s, d, a, op)
    if any(max(p, q) >= kk for (p, q), kk in zip(pads, k)):
        # (as ONNX Runtime: a window of padding alone)
        raise ValueError(f"{op}: pads {_onnx_pads(pads)} must be smaller than the kernel "
                         f"({_show(k)})")
    ceil = a.get("ceil_mode", 0)
    n, extra = [], []
    for L, kk, ss, dd, (p, q) in zip(Ls, k, s, d, pads):
        span = (kk - 1) * dd + 1
        room = L + p + q - span
        if room < 0:
            # no window fits: no output steps where ONNX Runtime's size rule gives 0 (its
            # C division truncates; ceil_mode rounds up), else an error, as there
            zero = math.ceil(room / ss + 1) if ceil else int(room / ss) + 1
            if zero:
                raise ValueError(f"{op}: a window of {_show(k)} (dilation {_show(d)}) does "
                                 f"not fit in {_show(Ls)} steps")
            n.append(0)
            extra.append(0)
            continue
        m = (-(-room // ss) if ceil else room // ss) + 1
        if ceil and (m - 1) * ss >= L + p:
            m -= 1          # (the last window starts in the padding at the end: dropped)
        n.append(m)
        extra.append(max((m - 1) * ss + span - (L + p + q), 0))    # (ceil_mode's tail)
    if 0 in n:
        return [np.zeros(x.shape[:2] + tuple(n), x.dtype)]
    NC = x.shape[0] * x.shape[1]
    padded = [L + p + q + e for L, (p, q), e in zip(Ls, pads, extra)]
    if NC * max(math.prod(k) * math.prod(n), math.prod(padded)) > _POOL_WORK:
        # (a file's kernel_shape / pads: a window of millions of taps ran for minutes)
        raise ValueError(f"{op}: a window of {_show(k)} taps over {_show(n)} outputs with "
                         f"pads {_onnx_pads(pads)} is beyond what fastrnn runs "
                         f"({_POOL_WORK} element steps)")
    if op == "MaxPool":
        fill = -np.inf if x.dtype.kind in "fc" else np.iinfo(x.dtype).min
    else:
        fill = 0
    widths = ((0, 0), (0, 0)) + tuple((p, q + e) for (p, q), e in zip(pads, extra))
    xp = np.pad(x, widths, constant_values=fill) if any(map(any, widths)) else x
    y = None
    for offs in itertools.product(*(range(kk) for kk in k)):
        v = xp[(slice(None), slice(None)) + tuple(
            slice(j * dd, j * dd + (m - 1) * ss + 1, ss) for j, dd, m, ss in zip(offs, d, n, s))]
        if y is None:
            y = v.copy()
        elif op == "MaxPool":
            np.maximum(y, v, out=y)
        else:
            y += v
    if op == "AveragePool":
        # the divisor: the window's steps inside the input, or also inside the pads, on
        # each axis (a box's: their product)
        count = None
        for ax, (L, kk, ss, dd, m, (p, q), P) in enumerate(zip(Ls, k, s, d, n, pads, padded)):
            lo, hi = (0, L + p + q) if a.get("count_include_pad", 0) else (p, p + L)
            inside = np.zeros(P, x.dtype)
            inside[lo:hi] = 1
            c = sum(inside[j * dd: j * dd + (m - 1) * ss + 1: ss] for j in range(kk))
            c = c.reshape((m,) + (1,) * (D - 1 - ax))
            count = c if count is None else count * c
        y /= count
    return [y.astype(x.dtype, copy=False)]


def _op_maxpool(i, a, o):
    return _pool(i, a, o, "MaxPool")       # (its Indices output: refused at load)


def _op_avgpool(i, a, o):
    return _pool(i, a, o, "AveragePool")
