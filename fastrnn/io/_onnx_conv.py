"""ONNX's window ops on 1-D, 2-D and 3-D inputs: ``Conv``, ``MaxPool``, ``AveragePool``.

The CNN front-ends of CRNN models (OCR, speech, sound event detection) and tf2onnx's
Keras ``Conv1D`` (a 2-D Conv of kernel ``[1, k]`` over a unit axis) run these before
the recurrent nodes.  Inputs are ``(N, C, *spatial)`` with 1 to 3 spatial axes; the
attributes are ONNX's: ``pads`` (every axis' begin, then every axis' end), ``auto_pad``
(NOTSET, VALID, SAME_UPPER, SAME_LOWER), ``strides``, ``dilations``, ``group`` (a Conv's;
depthwise included), ``kernel_shape`` (a Conv's from its weights), ``ceil_mode`` and
``count_include_pad`` (the pools').

A kept program's Conv (ConvChain), the first call's Conv op and Keras's Conv1D /
Conv2D run on fastrnn's own kernel where it applies (fastrnn._conv, _conv_kern.h: 1-D
and 2-D, float32 / float64, groups of 8+ filters): the Conv, bias, activation and
MaxPool in one OpenMP region of the model's threads, each output pixel's windows read
from the padded channels-last input by register tiles (no im2col copy, no BLAS), 3x3
Convs of stride 1 as Winograd F(2x2, 3x3) products; a ConvChain's output keeps a zero
border the next Conv reads as its padding (_BORDERED).  Otherwise (depthwise, 3-D,
other dtypes, or _KERNEL False) a Conv is a GEMM per group, channels last
(_conv_nhwc): the padded input is copied
(N, *spatial, C), a window of it is then runs of C / group contiguous values, copied
into GEMM rows (im2col) a cache-sized block at a time and multiplied by the group's
weights into the output's rows (N, *n, M) with scipy's BLAS (_gemm: the OpenBLAS
fastrnn's kernels call, through ``scipy.linalg.cython_blas`` and ctypes, which releases
the GIL), on one BLAS thread (_GEMM_THREADS) while the blocks are shared between the
calling thread and helper threads (_Helpers; the model's thread count, from
``_SPLIT_MACS`` multiply-adds).  The op returns that as a C-contiguous (N, M, *n)
array; a kept program's Conv with fixed weights (ConvChain, from fastrnn.io.onnx's
_Program) also takes in a following BatchNormalization (folded into its weights), a
Relu / LeakyRelu / Clip and a MaxPool whose windows lie inside its input (pooled block
by block, before the bias and the activation), and returns an (N, M, *n) view of its
channels-last result.  A MaxPool takes the max one axis at a time (_max_axes); an
AveragePool sums its taps in turn, each a strided view of the padded input over all
the outputs.

Refused, each a ValueError naming the op (the model adds the node's name): 4-D and
larger spatial inputs, dilated windows with ``auto_pad`` SAME (ONNX Runtime refuses a
dilated Conv so and pads its pools as if undilated), a pool's pads as large as its
window, and windows, pads or copies beyond ``_POOL_WORK`` element steps (a file's
kernel_shape or pads asking for minutes of work or terabytes).  A pool's window that
does not fit in its padded input gives ONNX Runtime's output: none, or (where its size
rule gives one step) one window cut at the input's end.
"""
from __future__ import annotations

import itertools
import math
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

# _POOL_WORK: a window op's element steps (taps x outputs, padded size, a Conv's copied
# windows: each times N x C) beyond which it is refused (the Keras layers' limit too)
from .._model_conv import _POOL_WORK, _pads
from .._threads import _scope, cpu_cap, idle_single_macs, resolve as _resolve

# A Conv's block: copied windows (im2col) and GEMM outputs of at most this many
# elements (batch slices, or rows of one item's first output axis), so the GEMM reads
# the copy and the pool reads the output from cache.  bench/onnx_crnn.py's convs at
# batch 16 (2 threads), 2^16 .. 2^20 and 2^24 elements: 32 -> 64 channels 7.4, 6.1,
# 5.6, 5.9, 5.9, 7.5 ms; 64 -> 128 5.6, 4.6, 4.9, 4.1, 4.6, 3.9 ms (noisy); 1 -> 32
# channels pooled after one block of the whole batch took 7.9 ms against 1.6 in blocks
_IM2COL_CHUNK = 1 << 19
_MAX_DIMS = 3
# A Conv's GEMMs on at most this many OpenBLAS threads; None: the model's count.  One:
# OpenBLAS's workers spin ~0.1 s after a call while the recurrent nodes' OpenMP team
# needs the cores (and libgomp's worker spins after the LSTM while they would need
# them): bench/onnx_crnn.py, 2 vCPUs, batch 1 8.0 ms a call on 2 OpenBLAS threads
# against 1.7-1.9 ms; batch 16 26-40 ms against 17.5-22 ms with the blocks split
# between threads instead (_WORKERS)
_GEMM_THREADS: int | None = 1
# Threads that share a Conv's blocks (the caller and _Helpers, each GEMM on
# _GEMM_THREADS); None: the model's count
_WORKERS: int | None = None
# A Conv of fewer multiply-adds runs in the calling thread alone (handing blocks to a
# helper cost more than it saved: bench/onnx_crnn.py batch 1, convs of 19M
# multiply-adds, 1.97-2.02 ms a call split against 1.72-1.86 ms not)
_SPLIT_MACS = 1 << 25
_blas_fns: dict = {}        # dtype char -> scipy.linalg.cython_blas's ?gemm (ctypes), or None

try:
    from .. import _conv as _ck     # (the Conv kernel; absent from an unbuilt checkout)
except ImportError:
    _ck = None
# Convs (a kept program's ConvChain, the Conv op, Keras's Conv1D / Conv2D) on fastrnn's
# own kernel (fastrnn._conv: the Conv, bias, activation and MaxPool in one OpenMP
# region of the model's threads, no BLAS) where it applies (1-D and 2-D, float32 /
# float64, not a group of fewer than _KERNEL_MIN_GROUP filters: depthwise runs its own
# loop).  None: the kernel unless a knob of the im2col path above is set away from its
# default (as tests do to run that path); True / False: always / never.
# bench/onnx_crnn.py (2 vCPUs, AMD EPYC Zen 4, five runs at load 0.4-1.9): batch 1
# 0.63-0.81 ms a call against 1.68-2.18 on the im2col path (ONNX Runtime 0.79-0.87),
# batch 16 8.6-9.9 against 17.9-20.6 ms (ONNX Runtime 9.7-10.6)
_KERNEL: bool | None = None
_KERNEL_MIN_GROUP = 8
# The kernel's 3x3 Convs of stride and dilation 1 (one group, 16+ input channels, 32+
# filters: fastrnn._conv.WINOGRAD_MIN_C / _M) as Winograd F(2x2, 3x3) products (2.25x
# fewer multiply-adds); False: the direct products.  bench/onnx_crnn.py's 32 -> 64 and
# 64 -> 128 channel Convs, one thread's CPU time: 0.60x and 0.54x the direct products'
# at batch 1, 0.66x / 0.55x at batch 16.  Their float32 errors against float64 are no
# larger than the direct products' (fewer terms summed in turn: largest 0.4-0.6x, rms
# 0.6-0.9x at 8-128 input channels), but they differ from the im2col path's by ~1e-6
# of outputs of ~10 where the direct ones agree to ~1e-7
_WINOGRAD = True
_IM2COL_DEFAULTS = (1 << 19, 1, None, 1 << 25)


def _use_kernel() -> bool:
    if _ck is None or _KERNEL is False:
        return False
    return bool(_KERNEL) or \
        (_IM2COL_CHUNK, _GEMM_THREADS, _WORKERS, _SPLIT_MACS) == _IM2COL_DEFAULTS


def _kernel_plan(geo, M, pool=None):
    """A Conv's geometry (_conv_geometry's) as fastrnn._conv takes it, or None where the
    kernel does not apply: (kernel (KH, KW), strides, dilations, pads (top, left, bottom,
    right), the kernel's pool ((kh, kw), (sh, sw)) or None, the output's spatial sizes
    (as the Conv's axes), whether ``pool`` is left to do after it, the Conv's output
    pixels an image)."""
    g, k, s, d, pads, padded, n, dt = geo
    D = len(k)
    if D > 2 or dt not in (np.float32, np.float64) or (g > 1 and M // g < _KERNEL_MIN_GROUP):
        return None
    if D == 1:
        k, s, d, n = [1] + list(k), [1] + list(s), [1] + list(d), [1] + list(n)
        pads = [(0, 0)] + list(pads)
    kp, after = None, False
    if pool is not None:
        pk, ps, pn = pool
        if D == 1:
            pk, ps, pn = [1] + list(pk), [1] + list(ps), [1] + list(pn)
        if math.prod(pk) <= _ck.POOL_TAPS:
            kp, n = (tuple(pk), tuple(ps)), pn
        else:
            after = True
    return (tuple(k), tuple(s), tuple(d), (pads[0][0], pads[1][0], pads[0][1], pads[1][1]),
            kp, list(n[2 - D:]), after, math.prod(geo[6]))


# A kept program's Conv outputs (ConvChain's (N, M, H, W) views) whose channels-last
# array has a border of one zero row / column around them (id -> the view): the next
# Conv reads its padding of up to 1 from it instead of copying its input padded
# (bench/onnx_crnn.py batch 16: the copy was 10% of the second Conv's time)
_BORDERED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _kernel_conv(x, wm, plan, packs, threads, bias=None, act=None, border=False):
    """The Conv of ``x`` (N, C, *spatial) by weights ``wm`` (_conv_weights's) on
    fastrnn._conv, ``plan`` _kernel_plan's (not None), then ``bias`` (M values of the
    dtype, or None) and ``act`` (ConvChain's, floats) and the plan's pool: (N, *n, M),
    on ``threads`` (a model's num_threads: resolved as a layer's, at most the CPUs).
    ``packs``: a dict keeping the packed weights per ISA level.  C-contiguous, or with
    ``border`` (2-D) the interior of an array with a zero border of 1 (_BORDERED)."""
    k, s, d, pads, pool, n, _, pixels = plan
    lv = _ck.level()
    kp = packs.get(lv)
    if kp is None:
        kp = packs[lv] = _ck.Packed(wm, k[0], k[1])
    dt = kp.dtype
    if x.dtype != dt:
        x = x.astype(dt)
    # (never more than the CPUs: libgomp keeps each thread of a team for good)
    nt = min(_resolve(None, threads), cpu_cap())
    if nt > 1 and x.shape[0] == 1 and getattr(_scope, "idle", False) and \
            getattr(_scope, "depth", 0) and \
            pixels * kp.M * kp.cg * k[0] * k[1] < idle_single_macs():
        nt = 1      # (a small Conv of a call after a pause: as layers.py's rule, _threads)
    if x.ndim == 3:
        y = np.empty((x.shape[0],) + tuple(n) + (kp.M,), dt)
        kp.run(x[:, :, None, :], y[:, None], s, d, pads, bias, act, pool, nt, 0,
               -1 if _WINOGRAD else 0)
        return y
    if max(pads) <= 1 and _BORDERED.get(id(x)) is x:
        # (another Conv's output: its zero border is this Conv's padding)
        _, _, H, W = x.shape
        x = x.base[:, 1 - pads[0]:1 + H + pads[2], 1 - pads[1]:1 + W + pads[3]].transpose(
            0, 3, 1, 2)
        pads = (0, 0, 0, 0)
    if border:
        H, W = n
        y = np.empty((x.shape[0], H + 2, W + 2, kp.M), dt)[:, 1:1 + H, 1:1 + W]
    else:
        y = np.empty((x.shape[0],) + tuple(n) + (kp.M,), dt)
    kp.run(x, y, s, d, pads, bias, act, pool, nt, 1 if border else 0,
           -1 if _WINOGRAD else 0)
    return y


def _blas_gemm(dt):
    """scipy's ``?gemm`` for dtype ``dt`` (float32, float64) as a ctypes function (from
    ``scipy.linalg.cython_blas``' capsules: the OpenBLAS fastrnn's kernels call, whose
    thread count they manage; a ctypes call releases the GIL), or None."""
    fn = _blas_fns.get(dt.char, False)
    if fn is False:
        fn = None
        name = {"f": "sgemm", "d": "dgemm"}.get(dt.char)
        if name is not None:
            try:
                import ctypes
                from scipy.linalg import cython_blas
                cap = cython_blas.__pyx_capi__[name]
                api = ctypes.pythonapi      # (own prototypes: its attributes are shared)
                get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(
                    ("PyCapsule_GetName", api))
                get_ptr = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object,
                                            ctypes.c_char_p)(("PyCapsule_GetPointer", api))
                ptr = get_ptr(cap, get_name(cap))
                pi, vp = ctypes.POINTER(ctypes.c_int), ctypes.c_void_p
                proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, pi, pi, pi,
                                         vp, vp, pi, vp, pi, vp, vp, pi)
                fn = (proto(ptr), ctypes.c_int, ctypes.byref,
                      ctypes.c_float if name == "sgemm" else ctypes.c_double)
            except (ImportError, AttributeError, KeyError, ValueError, OSError):
                fn = None
        _blas_fns[dt.char] = fn
    return fn


def _ld(v):
    """How BLAS reads 2-D ``v`` (m, k) (no overlapping rows or columns, steps whole
    elements): (leading dimension, False) for rows of unit stride, (leading dimension,
    True) for columns of unit stride (a transposed array); None otherwise."""
    r, c = v.shape
    st, size = v.strides, v.itemsize
    if not (r and c) or max(r, c) >= 1 << 31:
        return None
    for inner, outer, cnt, n, trans in ((1, 0, r, c, False), (0, 1, c, r, True)):
        if n == 1 or st[inner] == size:
            if cnt == 1:
                return n, trans
            if st[outer] % size == 0 and n * size <= st[outer] < size << 31:
                return st[outer] // size, trans
    return None


class _blas_scope:
    """``with _blas_scope(threads):`` the calls of _gemm inside on up to ``threads``
    threads of scipy's OpenBLAS (its count shared by overlapping calls as the kernels
    share it: fr_blas_enter / fr_blas_leave)."""
    __slots__ = ("n", "workers", "tok", "threads")

    def __init__(self, threads):
        from .._threads import cpu_cap, resolve
        n = self.threads = resolve(None, threads)
        self.n = min(n, _GEMM_THREADS) if _GEMM_THREADS else n
        # (never more than the CPUs: a helper thread is made for each worker and kept
        # for the process's life; num_threads=200 left 199 idle threads: an audit)
        self.workers = min(n, _WORKERS or n, cpu_cap())

    def __enter__(self):
        from .. import _kernels
        from .._threads import hook_blas
        hook_blas()
        self.tok = _kernels._blas_enter(self.n)
        return self

    def __exit__(self, *exc):
        from .. import _kernels
        _kernels._blas_leave(self.tok)


def _gemm(a, b, c, beta=0.0):
    """``c = a @ b + beta * c`` in place: ``a`` (m, k), ``b`` (k, n), ``c`` (m, n), one
    float dtype, each with rows or columns of unit stride (any step between them);
    scipy's BLAS where it has the dtype (inside a _blas_scope), else np.matmul."""
    fn = _blas_gemm(c.dtype) if a.dtype == b.dtype == c.dtype else None
    lds = (_ld(a), _ld(b), _ld(c)) if fn is not None else (None,)
    if None in lds:
        if beta:
            if beta != 1:
                c *= beta
            c += np.matmul(a, b)
        else:
            np.matmul(a, b, out=c)
        return c
    call, cint, ref, scalar = fn
    (lda, ta), (ldb, tb), (ldc, tc) = lds
    if tc:
        return _gemm(b.T, a.T, c.T, beta)
    m, k = a.shape
    # row-major c = a @ b is column-major c^T = b^T a^T: ?gemm(n, m, k) of b, then a
    call(b"T" if tb else b"N", b"T" if ta else b"N", ref(cint(b.shape[1])), ref(cint(m)),
         ref(cint(k)), ref(scalar(1.0)), b.ctypes.data, ref(cint(ldb)), a.ctypes.data,
         ref(cint(lda)), ref(scalar(beta)), c.ctypes.data, ref(cint(ldc)))
    return c


class _Helpers:
    """Threads that run parts of a Conv (window copies and GEMMs: NumPy's copies and
    the BLAS call release the GIL) beside the calling thread; made when first wanted,
    blocked on a queue while idle (no spinning), made again in a forked child."""

    def __init__(self):
        import queue
        import threading
        self.lock = threading.Lock()
        self.q = queue.SimpleQueue()
        self.threads: list = []
        self.pid = None

    def _loop(self, q):
        while True:
            (fn, claim), done, errs = q.get()
            if not claim.acquire(blocking=False):
                continue                    # (its caller ran it: nothing left to do)
            try:
                fn()
            except BaseException as e:     # (re-raised in the caller)
                errs.append(e)
            finally:
                done.release()

    def run(self, fns):
        """Run ``fns``: the first in this thread, the others on helpers (those no helper
        has started when this thread is done run here: another caller's parts ahead of
        them in the queue are not waited for); wait for all; the first error raised."""
        import os
        import threading
        need = len(fns) - 1
        if self.pid != os.getpid() or len(self.threads) < need:
            with self.lock:
                if self.pid != os.getpid():         # (a forked child: no helpers)
                    import queue
                    self.q, self.threads, self.pid = queue.SimpleQueue(), [], os.getpid()
                while len(self.threads) < need:
                    t = threading.Thread(target=self._loop, args=(self.q,), daemon=True,
                                         name="fastrnn-conv")
                    t.start()
                    self.threads.append(t)
        done, errs = threading.Semaphore(0), []
        tasks = [(fn, threading.Lock()) for fn in fns[1:]]
        for task in tasks:
            self.q.put((task, done, errs))
        try:
            fns[0]()
        except BaseException as e:
            errs.insert(0, e)
        started = 0
        for fn, claim in tasks:
            if claim.acquire(blocking=False):
                try:
                    fn()
                except BaseException as e:
                    errs.append(e)
            else:
                started += 1
        for _ in range(started):
            done.acquire()
        if errs:
            raise errs[0]


_helpers = _Helpers()


def _run_parallel(fns):
    _helpers.run(fns)


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
    if max(v) >= 1 << 31:
        raise ValueError(f"{op}: {key} {v} is beyond 2^31 element steps (not supported)")
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
        # (SAME_UPPER is TensorFlow's / Keras's "same": the odd step after)
        out = [_pads(L, kk, ss, dd, "same") for L, kk, ss, dd in zip(Ls, k, s, d)]
        return out if auto == "SAME_UPPER" else [(q, p) for p, q in out]
    if auto == "VALID":
        return [(0, 0)] * D
    if auto != "NOTSET":
        raise ValueError(f"{op}: unknown auto_pad {auto!r}")
    pads = _ints(a.get("pads", [0] * (2 * D)))
    if len(pads) != 2 * D or min(pads) < 0:
        raise ValueError(f"{op}: pads must be {'two' if D == 1 else 2 * D} non-negative ints "
                         f"for a {D}-D {op}, got {pads}")
    if max(pads, default=0) >= 1 << 31:
        raise ValueError(f"{op}: pads {pads} are beyond 2^31 element steps (not supported)")
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


def _conv_geometry(x, w, a) -> tuple:
    """A Conv's sizes for input ``x`` (N, C, *spatial) and weights ``w`` (M, C / group,
    *k), checked: (group, k, strides, dilations, pads, padded sizes, output sizes,
    dtype)."""
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
    if N * C * math.prod(k) * math.prod(n) > _POOL_WORK:
        raise ValueError(f"Conv: a kernel of {_show(k)} taps over {_show(n)} outputs with pads "
                         f"{_onnx_pads(pads)} is beyond what fastrnn runs ({_POOL_WORK} "
                         f"element steps)")
    return g, k, s, d, pads, padded, n, np.result_type(x.dtype, w.dtype)


def _conv_weights(w, g, dt):
    """Weights (M, C / g, *k) as each group's GEMM operand (g, K * C / g, M / g), rows in
    the order of _conv_nhwc's window columns (taps, then channels)."""
    M, cg = w.shape[:2]
    k = tuple(w.shape[2:])
    D = len(k)
    wg = w.astype(dt, copy=False).reshape((g, M // g, cg) + k)
    wg = wg.transpose((0,) + tuple(range(3, 3 + D)) + (2, 1))
    return np.ascontiguousarray(wg).reshape(g, math.prod(k) * cg, M // g)


def _conv_nhwc(x, wm, geo, workers=1, post=None, align=0):
    """The Conv of ``x`` (N, C, *spatial; any strides) by weights ``wm`` (_conv_weights)
    without its bias, channels last: (N, *n, M), C-contiguous.

    The input is copied channels last with its padding (``xp``, (N, *padded, C)); a
    window of it is then ``K`` runs of C / group contiguous values, copied into GEMM rows
    (im2col) a block at a time (a batch slice, or rows of one item's first output axis:
    ``_IM2COL_CHUNK`` copied values at most) and multiplied by each group's weights
    (_gemm) into the output's rows: no copy after the GEMM.  ``workers`` > 1: the
    blocks split between this thread and helpers (_Helpers) where the Conv has
    ``_SPLIT_MACS`` multiply-adds.  ``post(yb, b0, b1, r0, r1)``: called on each block's
    output ``yb`` (items b0:b1, first-axis rows r0:r1) while it is in cache; with
    ``align`` > 0 a block is a whole number of ``align`` rows (unless it ends the axis),
    ``yb`` a scratch array and the function's result None.  A 1x1 Conv of stride 1
    multiplies ``xp`` itself, a depthwise one (C / group = 1) adds its taps' products
    in turn: each one block."""
    g, k, s, d, pads, padded, n, dt = geo
    N, C = x.shape[:2]
    cg, mg = C // g, wm.shape[2]
    M, K, D = g * mg, math.prod(k), len(k)
    xt = np.moveaxis(x, 1, -1)
    if any(p or q for p, q in pads):
        xp = np.zeros((N,) + tuple(padded) + (C,), dt)
        xp[(slice(None),) + tuple(slice(p, p + L) for (p, _), L in
                                  zip(pads, x.shape[2:]))] = xt
    else:
        xp = np.ascontiguousarray(xt, dtype=dt)
    nn = math.prod(n)
    R = N * nn
    y = np.empty((N,) + tuple(n) + (M,), dt)
    if not y.size:
        return None if align else y
    y2 = y.reshape(R, M)
    if R * K * cg * M < _SPLIT_MACS:
        workers = 1
    st = xp.strides
    if (K == 1 and max(s) == 1) or (cg == 1 and g > 1):
        if K == 1 and max(s) == 1:
            cols = xp.reshape(R, C)
            cut = [R * t // workers for t in range(workers + 1)]

            def part(lo, hi):
                for j in range(g):
                    _gemm(cols[lo:hi, j * cg:(j + 1) * cg], wm[j],
                          y2[lo:hi, j * mg:(j + 1) * mg])
            if workers > 1 and R >= 2 * workers:
                _run_parallel([lambda t=t: part(cut[t], cut[t + 1]) for t in range(workers)])
            else:
                part(0, R)
        else:
            # depthwise: y[..., c, :] = sum over taps of the tap's input channel c times
            # its (c, M / g) weights
            win = as_strided(xp, (N,) + tuple(n) + tuple(k) + (C,),
                             (st[0],) + tuple(ss * t for ss, t in zip(s, st[1:-1])) +
                             tuple(dd * t for dd, t in zip(d, st[1:-1])) + (st[-1],),
                             writeable=False)
            y5 = y.reshape((N,) + tuple(n) + (g, mg))
            tmp = np.empty_like(y5)
            for t, offs in enumerate(itertools.product(*(range(kk) for kk in k))):
                v = win[(Ellipsis,) + tuple(offs) + (slice(None), None)]
                np.multiply(v, wm[:, t, :], out=y5 if t == 0 else tmp)
                if t:
                    y5 += tmp
        if post is not None:
            post(y, 0, N, 0, n[0])
        return None if align else y
    win = as_strided(xp, (N,) + tuple(n) + tuple(k) + (C,),
                     (st[0],) + tuple(ss * t for ss, t in zip(s, st[1:-1])) +
                     tuple(dd * t for dd, t in zip(d, st[1:-1])) + (st[-1],),
                     writeable=False)
    rest = nn // n[0]
    per = max(1, _IM2COL_CHUNK // (C * K + M))      # (GEMM rows a block, all groups)
    if workers > 1:
        per = min(per, -(-R // workers))
    if nn <= per:
        step = per // nn
        blocks = [(b0, min(N, b0 + step), 0, n[0]) for b0 in range(0, N, step)]
    else:
        rows = max(1, per // rest)
        if align:
            rows = max(align, rows // align * align)
        blocks = [(b0, b0 + 1, r0, min(n[0], r0 + rows)) for b0 in range(N)
                  for r0 in range(0, n[0], rows)]
    if g > 1:
        win = win.reshape(win.shape[:-1] + (g, cg))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in blocks) * rest

    taken = itertools.count()       # (next() of it: atomic under the GIL)

    def work():
        """Blocks in turn, each the next one no thread has taken (a helper that gets no
        CPU, e.g. beside another library's spinning thread, takes fewer)."""
        buf = np.empty(most * K * cg, dt)
        scratch = np.empty(most * M, dt) if align else None
        while True:
            t = next(taken)
            if t >= len(blocks):
                return
            b0, b1, r0, r1 = blocks[t]
            v = win[b0:b1, r0:r1]
            rows = (b1 - b0) * (r1 - r0) * rest
            lo = b0 * nn + r0 * rest
            cols = buf[:rows * K * cg]
            yb = scratch[:rows * M].reshape(rows, M) if align else y2[lo:lo + rows]
            if C == 1:
                # one channel: each tap's values a row of the columns (copies of runs
                # of the last output axis, not of one value), read transposed
                vt = v.reshape(v.shape[:-1]).transpose(
                    tuple(range(1 + D, 1 + 2 * D)) + tuple(range(1 + D)))
                np.copyto(cols.reshape(vt.shape), vt)
                _gemm(cols.reshape(K, rows).T, wm[0], yb)
                g_rest = 0
            else:
                g_rest = g
            for j in range(g_rest):
                vj = v if g == 1 else v[..., j, :]
                np.copyto(cols.reshape(vj.shape), vj)
                _gemm(cols.reshape(rows, K * cg), wm[j], yb[:, j * mg:(j + 1) * mg])
            if post is not None:
                post(yb.reshape((b1 - b0, r1 - r0) + tuple(n[1:]) + (M,)), b0, b1, r0, r1)
    if workers > 1 and len(blocks) > 1:
        _run_parallel([work] * min(workers, len(blocks)))
    else:
        work()
    return None if align else y


def _op_conv(i, a, o, threads=None):
    """Conv of ``x`` (N, C, *spatial) by ``W`` (M, C / group, *k) (_conv_nhwc), on
    ``threads`` BLAS threads (None: the calling thread's default)."""
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    geo = _conv_geometry(x, w, a)
    g, dt = geo[0], geo[-1]
    bias = None if b is None else b.astype(dt, copy=False)
    plan = _kernel_plan(geo, w.shape[0]) if _use_kernel() else None

    def post(yb, *_):
        yb += bias
    with _blas_scope(threads) as sc:
        if plan is not None:    # (as a kept program's: the same bits in every call)
            y = _kernel_conv(x, _conv_weights(w, g, dt), plan, {}, sc.threads,
                             None if bias is None else np.ascontiguousarray(bias))
        else:
            y = _conv_nhwc(x, _conv_weights(w, g, dt), geo, sc.workers,
                           None if b is None else post)
    return [np.ascontiguousarray(np.moveaxis(y, -1, 1))]


def _max_axes(y, axes, k, s, d, n, out=None):
    """Max over windows of ``y`` one axis at a time (a box's max is its rows' maxima's
    max): on each of ``axes``, ``k`` taps ``d`` apart for ``n`` windows ``s`` apart
    (all inside ``y``).  A new array (``y`` itself where every window is one step of
    stride 1), or ``out`` filled."""
    todo = [(ax, kk, ss, dd, m) for ax, kk, ss, dd, m in zip(axes, k, s, d, n)
            if not (kk == 1 and ss == 1 and m == y.shape[ax])]
    for t, (ax, kk, ss, dd, m) in enumerate(todo):
        lead = (slice(None),) * ax

        def tap(j):
            return y[lead + (slice(j * dd, j * dd + (m - 1) * ss + 1, ss),)]
        dst = out if t == len(todo) - 1 else None
        if kk == 1:
            dst = tap(0).copy() if dst is None else (np.copyto(dst, tap(0)), dst)[1]
        else:
            dst = np.maximum(tap(0), tap(1), out=dst)
        for j in range(2, kk):
            np.maximum(dst, tap(j), out=dst)
        y = dst
    if out is not None and not todo:
        np.copyto(out, y)
        return out
    return y


def fusable_maxpool(a, shape):
    """(kernel, strides, output sizes) of a MaxPool of attributes ``a`` over ``shape``
    (N, C, *spatial) whose windows all lie inside the input: no padding (pads 0 or
    VALID), no dilation, ceil_mode only where it adds no window; None otherwise (it
    then runs as its own step)."""
    D = len(shape) - 2
    try:
        k = _per_axis(a, "kernel_shape", 0, D, "MaxPool")
        s = _per_axis(a, "strides", 1, D, "MaxPool")
        d = _per_axis(a, "dilations", 1, D, "MaxPool")
        pads = _window_pads(list(shape[2:]), k, s, d, a, "MaxPool")
    except ValueError:
        return None
    if max(d) > 1 or any(p or q for p, q in pads) or int(a.get("storage_order", 0)):
        return None
    n = []
    for L, kk, ss in zip(shape[2:], k, s):
        if L < kk:
            return None
        m = (L - kk) // ss + 1
        if a.get("ceil_mode", 0) and -(-(L - kk) // ss) + 1 != m:
            return None
        n.append(m)
    return k, s, n


class ConvChain:
    """A Conv with fixed weights and what a kept program fuses into it: a following
    BatchNormalization (folded into the weights and bias here), an activation (``act``:
    ("Relu",), ("LeakyRelu", alpha >= 0), ("Clip", min or None, max or None)) and a
    MaxPool whose windows lie inside its input (``pool``: fusable_maxpool's), for
    inputs of one shape and dtype.  ``chain(x)`` is the last one's output: computed
    channels last (_conv_nhwc), pooled there (_max_axes) before the bias and the
    activation are applied (both non-decreasing, so they commute with the max, exactly),
    returned as an (N, M, *spatial) view of that (``contiguous``: a C-contiguous copy)."""

    def __init__(self, x, w, b, a, threads=None, bn=None, act=None, pool=None,
                 contiguous=False):
        self.geo = geo = _conv_geometry(x, w, a)
        g, dt = geo[0], geo[-1]
        M = w.shape[0]
        if bn is not None:       # (scale, bias, mean, var, epsilon), in float64
            scale, shift, mean, var, eps = (np.asarray(v, np.float64) for v in bn)
            inv = scale / np.sqrt(var + eps)
            w = w.astype(np.float64) * inv.reshape((M,) + (1,) * (w.ndim - 1))
            b = (shift - mean * inv) + (0 if b is None else b.astype(np.float64) * inv)
        self.wm = _conv_weights(w.astype(dt, copy=False), g, dt)
        self.bias_size = M
        self.bias = None if b is None else np.ascontiguousarray(b, dtype=dt)
        self.act, self.pool, self.threads, self.contiguous = act, pool, threads, contiguous
        if act is not None and act[0] != "Relu":
            self.act = (act[0],) + tuple(None if v is None else np.asarray(v).astype(dt)
                                         for v in act[1:])
        # (the kernel's: floats of the dtype's values)
        self.kact = None if act is None else (act[0],) + tuple(
            None if v is None else float(np.asarray(v).reshape(-1)[0]) for v in self.act[1:])
        self.plan = None if _ck is None else _kernel_plan(geo, M, pool)
        self.packs: dict = {}

    def out_shape(self, xshape):
        """The output's shape for an input of shape ``xshape`` (the first call's)."""
        n = self.pool[2] if self.pool is not None else self.geo[6]
        return [xshape[0], self.wm.shape[0] * self.wm.shape[2]] + list(n)

    def _finish(self, y):
        """The bias and the activation, in place."""
        if self.bias is not None:
            y += self.bias
        act = self.act
        if act is not None:
            if act[0] == "Relu":
                np.maximum(y, 0, out=y)
            elif act[0] == "LeakyRelu":
                np.multiply(y, act[1], out=y, where=y < 0)
            else:
                if act[1] is not None:
                    np.maximum(y, act[1], out=y)
                if act[2] is not None:
                    np.minimum(y, act[2], out=y)

    def __call__(self, x):
        D = x.ndim - 2
        if self.plan is not None and _use_kernel():
            after = self.plan[6]        # (a pool of more taps than the kernel's)
            border = D == 2 and not (after or self.contiguous)
            y = _kernel_conv(x, self.wm, self.plan, self.packs, self.threads, self.bias,
                             self.kact, border)
            if after:
                k, s, n = self.pool
                y = _max_axes(y, range(1, D + 1), k, s, [1] * D, n)
            y = y.transpose((0, D + 1) + tuple(range(1, D + 1)))
            if border:
                _BORDERED[id(y)] = y
            return np.ascontiguousarray(y) if self.contiguous else y
        finish, pool = self._finish, self.pool
        with _blas_scope(self.threads) as sc:
            if pool is None:
                y = _conv_nhwc(x, self.wm, self.geo, sc.workers, lambda yb, *_: finish(yb))
            elif pool[0][0] <= pool[1][0]:
                # pooled a block at a time: the block's windows lie inside it
                k, s, n = pool
                y = np.empty((x.shape[0],) + tuple(n) + (self.bias_size,), self.wm.dtype)

                def post(yb, b0, b1, r0, r1):
                    p0 = r0 // s[0]
                    p1 = min(n[0], (r1 - k[0]) // s[0] + 1) if r1 >= k[0] else p0
                    if p1 > p0:
                        dst = y[b0:b1, p0:p1]
                        _max_axes(yb, range(1, D + 1), k, s, [1] * D,
                                  [p1 - p0] + list(n[1:]), out=dst)
                        finish(dst)
                _conv_nhwc(x, self.wm, self.geo, sc.workers, post, align=s[0])
            else:
                k, s, n = pool
                y = _max_axes(_conv_nhwc(x, self.wm, self.geo, sc.workers),
                              range(1, D + 1), k, s, [1] * D, n)
                finish(y)
        y = np.moveaxis(y, -1, 1)
        return np.ascontiguousarray(y) if self.contiguous else y


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
    n, extra, cut = [], [], []
    for L, kk, ss, dd, (p, q) in zip(Ls, k, s, d, pads):
        span = (kk - 1) * dd + 1
        room = L + p + q - span
        cut.append(room < 0)
        if room < 0:
            # no window fits: ONNX Runtime's size rule (its C division truncates;
            # ceil_mode rounds up) gives 0 output steps, or 1 (room > -stride): one
            # window cut at the input's end (its max / mean of the steps inside, as
            # ceil_mode's last window)
            m = math.ceil(room / ss + 1) if ceil else int(room / ss) + 1
            if m < 0:       # (ONNX Runtime: "Calculated output dimension is negative")
                raise ValueError(f"{op}: a window of {_show(k)} taps (dilations "
                                 f"{_show(d)}) over {_show(Ls)} steps with pads "
                                 f"{_onnx_pads(pads)} gives a negative output size")
            if not m:
                n.append(0)
                extra.append(0)
                continue
        else:
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
    if op == "MaxPool":     # (ONNX Runtime's start: a window of padding alone gives it)
        fill = np.finfo(x.dtype).min if x.dtype.kind in "fc" else np.iinfo(x.dtype).min
    else:
        fill = 0
    widths = ((0, 0), (0, 0)) + tuple((p, q + e) for (p, q), e in zip(pads, extra))
    xp = np.pad(x, widths, constant_values=fill) if any(map(any, widths)) else x
    if op == "MaxPool":     # (a box's max, an axis at a time)
        y = _max_axes(xp, range(2, 2 + D), k, s, d, n)
        if y is x:
            y = x.copy()
    else:
        y = None
        for offs in itertools.product(*(range(kk) for kk in k)):
            v = xp[(slice(None), slice(None)) + tuple(
                slice(j * dd, j * dd + (m - 1) * ss + 1, ss)
                for j, dd, m, ss in zip(offs, d, n, s))]
            if y is None:
                y = v.copy()
            else:
                y += v
    if op == "AveragePool":
        # the divisor: the window's steps inside the input, or also inside the pads, on
        # each axis (a box's: their product; ONNX Runtime before opset 19, ceil_mode 0:
        # the whole kernel where it does not fit in the padded input); 0 taps (a dilated
        # window of padding alone): 1, the mean 0 as there
        count = None
        for ax, (L, kk, ss, dd, m, (p, q), P, cu) in enumerate(zip(Ls, k, s, d, n, pads,
                                                                  padded, cut)):
            if a.get("count_include_pad", 0):
                lo, hi = 0, (P if cu and o < 19 and not ceil else L + p + q)
            else:
                lo, hi = p, p + L
            inside = np.zeros(P, x.dtype)
            inside[lo:hi] = 1
            c = sum(inside[j * dd: j * dd + (m - 1) * ss + 1: ss] for j in range(kk))
            c = c.reshape((m,) + (1,) * (D - 1 - ax))
            count = c if count is None else count * c
        y /= np.where(count == 0, 1, count)
    return [y.astype(x.dtype, copy=False)]


def _op_maxpool(i, a, o):
    return _pool(i, a, o, "MaxPool")       # (its Indices output: refused at load)


def _op_avgpool(i, a, o):
    return _pool(i, a, o, "AveragePool")
