# cython: language_level=3
"""Training kernels: a forward pass that keeps what the backward needs, and the backward
pass (gradients through time) for SimpleRNN, LSTM (optional projection) and GRU (both
``reset_after`` variants).  One call handles one direction of one layer.

Layout (all C-ordered, float32 or float64).  Rows are in *step order*: the rows of step
``s`` are the ``n_s = nsteps[s]`` first (longest) sequences, stored at rows
``offsets[s] .. offsets[s] + n_s``, as in a PyTorch PackedSequence.  The caller gathers
the rows of a reverse direction into step order first, so these kernels only ever run
forwards in ``s``; the rows of step ``s - 1`` that continue at step ``s`` are then the
first ``n_s`` rows of step ``s - 1``, which makes ``H[:-1]`` of the weight-gradient GEMM
a plain slice.

Weights are the layer's own arrays in PyTorch layout (``W_ih (G*H, I)``, ``W_hh (G*H,
Hout)``, ``W_hr (P, H)``); the GEMM shim transposes, so nothing is packed.

What the forward keeps (per row = per (time step, sequence)), besides the layer output
``y`` (``Hout`` values, which the next layer or the caller needs anyway):

* SimpleRNN: nothing (``act'`` is computed from ``y``);
* LSTM: the activated gates ``i, f, g, o`` (4H) and the cell ``c`` (H), 5H in all
  (``tanh(c)`` and, with a projection, ``o * tanh(c)`` are recomputed);
* GRU ``reset_after=True``: ``r, z, n`` (3H) and ``W_hn h + b_hn`` (H), 4H;
* GRU ``reset_after=False``: ``r, z, n`` (3H).

The backward then does, per step, one fused elementwise pass and one recurrent GEMM
``dh_{t-1} = dG_t @ W_hh`` (GRU ``reset_after=False``: two, the second through the reset
gate), and after the loop the weight gradients as large GEMMs over every step at once:
``dW_ih = dG^T X``, ``dW_hh = dG[1:]^T Y[:-1]`` (one GEMM per run of equal batch sizes),
``dX = dG W_ih``, biases as ``1^T dG``.  Everything after argument checking runs without
the GIL; scratch memory is allocated per call.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from libc.stdint cimport intptr_t

from fastrnn._blas cimport gemm_rm

import numpy as np

from fastrnn._mem import aligned_empty

cdef extern from *:
    """
    typedef int (*frb_enter_t)(int);
    typedef void (*frb_leave_t)(int);
    static frb_enter_t frb_blas_enter_fn = 0;
    static frb_leave_t frb_blas_leave_fn = 0;
    /* _kernels' fr_blas_enter / fr_blas_leave (one OpenBLAS thread count shared by
       every kernel call; see there) */
    static int frb_blas_enter(int n) { return frb_blas_enter_fn ? frb_blas_enter_fn(n) : -1; }
    static void frb_blas_leave(int t) { if (frb_blas_leave_fn && t >= 0) frb_blas_leave_fn(t); }
    """
    int frb_blas_enter(int n) nogil
    void frb_blas_leave(int t) nogil
    ctypedef int (*frb_enter_t)(int) noexcept nogil
    ctypedef void (*frb_leave_t)(int) noexcept nogil
    frb_enter_t frb_blas_enter_fn
    frb_leave_t frb_blas_leave_fn



def release_scratch():
    """Free the scratch blocks the backward keeps between calls; returns the bytes."""
    return frbg_scratch_release()


def _act_test(int which, x, int level=-1):
    """Test hook: the training kernels' vector activation ``which`` (0 sigmoid, 1 tanh) of
    a 1-D float32/float64 array at ISA level ``level`` (-1: the best this CPU runs; 0, 1,
    2 as ``small_gemm_level``; a level above the CPU's is refused).  It switches the
    module's ISA level for the call: not for use while another thread trains."""
    global frbg_level_cache
    cdef float[::1] xf, yf
    cdef double[::1] xd, yd
    cdef int best = small_gemm_level(), saved
    if which not in (0, 1):
        raise ValueError(f"which must be 0 (sigmoid) or 1 (tanh), got {which}")
    if level > best:
        raise ValueError(f"ISA level {level} is beyond this CPU's ({best})")
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    saved = frbg_level_cache
    frbg_level_cache = best if level < 0 else level
    try:
        if x.dtype == np.float32:
            xf, yf = x, y
            if x.shape[0]:
                frbg_act_f(which, &xf[0], &yf[0], <int>x.shape[0])
        elif x.dtype == np.float64:
            xd, yd = x, y
            if x.shape[0]:
                frbg_act_d(which, &xd[0], &yd[0], <int>x.shape[0])
        else:
            raise TypeError(f"float32 or float64 expected, got {x.dtype}")
    finally:
        frbg_level_cache = saved
    return y


def _hooks_changed():
    """This module's hooks steer the layers' decisions too (the LSTM route): tell
    fastrnn._kernels (``hooks_generation``)."""
    from fastrnn import _kernels
    _kernels._hooks_changed()


# After _hooks_changed: the include runs _set_worker_placement(0) at import when
# FASTRNN_WORKER_PLACEMENT=0, and that calls _hooks_changed.
include "_place.pxi"


def _set_blas_hooks(intptr_t enter, intptr_t leave):
    """Install ``_kernels``' ``fr_blas_enter`` / ``fr_blas_leave`` (0, 0 to disable)."""
    global frb_blas_enter_fn, frb_blas_leave_fn
    frb_blas_enter_fn = <frb_enter_t>enter
    frb_blas_leave_fn = <frb_leave_t>leave


cdef extern from "_backward_gemm.h":
    int frbg_level() nogil
    int fr_amd_f19() nogil          # fr_cache.h: AMD family 0x19 (Zen 3 / 4)
    int frbg_nb(int level, int elsize) nogil
    float* frbg_pack_f(const float* W, int ldw, int k, int n, int trans, int nb) nogil
    double* frbg_pack_d(const double* W, int ldw, int k, int n, int trans, int nb) nogil
    float* frbg_pack_rows_f(const float* const* rows, int k, int n, int nb, int ones) nogil
    float* frbg_pack_rows_f_into(const float* const* rows, int k, int n, int nb, int ones,
                                 float* out) nogil
    double* frbg_pack_rows_d_into(const double* const* rows, int k, int n, int nb, int ones,
                                  double* out) nogil
    float* frbg_pack_f_into(const float* W, int ldw, int k, int n, int trans, int nb,
                            float* out) nogil
    double* frbg_pack_d_into(const double* W, int ldw, int k, int n, int trans, int nb,
                             double* out) nogil
    int frbg_lstm_fwd_f(int level, int nt, int S, const Py_ssize_t* offsets,
                        const Py_ssize_t* nsteps, int I, int H, const float* x,
                        const float* wih, const float* whh, const float* bias,
                        const float* h0, const float* c0, float* y, int ldy, float* gates,
                        float* cs, float* pre, int pack_only) nogil
    int frbg_lstm_fwd_d(int level, int nt, int S, const Py_ssize_t* offsets,
                        const Py_ssize_t* nsteps, int I, int H, const double* x,
                        const double* wih, const double* whh, const double* bias,
                        const double* h0, const double* c0, double* y, int ldy,
                        double* gates, double* cs, double* pre, int pack_only) nogil
    size_t frbg_lstm_fwd_packed_size(int level, int I, int H, int elsize)
    int frbg_lstm_fwd_layout(int nt, int B, int I, int H, int elsize)
    int frbg_gru_fwd_f(int level, int nt, int S, const Py_ssize_t* offsets,
                       const Py_ssize_t* nsteps, int I, int H, const float* x,
                       const float* wih, const float* whh, const float* bias,
                       const float* bhn, const float* h0, float* y, int ldy, float* gates,
                       float* hn) nogil
    int frbg_gru_fwd_d(int level, int nt, int S, const Py_ssize_t* offsets,
                       const Py_ssize_t* nsteps, int I, int H, const double* x,
                       const double* wih, const double* whh, const double* bias,
                       const double* bhn, const double* h0, double* y, int ldy,
                       double* gates, double* hn) nogil
    int frbg_bwd_units_f(int level, int cell, int nt, int S, const Py_ssize_t* offsets,
                         const Py_ssize_t* nsteps, int I, int H, const float* x,
                         const float* wih, const float* whh, const float* h0,
                         const float* c0, const float* y, int ldy, const float* gates,
                         const float* cs, const float* dy, float* dh, float* dc, float* dx,
                         float* dwih, float* dwhh, float* dbih, float* dbhh,
                         float* dg) nogil
    int frbg_bwd_units_d(int level, int cell, int nt, int S, const Py_ssize_t* offsets,
                         const Py_ssize_t* nsteps, int I, int H, const double* x,
                         const double* wih, const double* whh, const double* h0,
                         const double* c0, const double* y, int ldy, const double* gates,
                         const double* cs, const double* dy, double* dh, double* dc,
                         double* dx, double* dwih, double* dwhh, double* dbih,
                         double* dbhh, double* dg) nogil
    size_t frbg_wgemm_work(int K) nogil
    void frbg_wgemm_f(int level, int M, int N, int K, const float* A, int lda,
                      const float* Bp, float* C, int ldc, float* bias, float* work) nogil
    void frbg_wgemm_d(int level, int M, int N, int K, const double* A, int lda,
                      const double* Bp, double* C, int ldc, double* bias, double* work) nogil
    void* fr_amalloc(size_t bytes) nogil
    void* frbg_scratch_get(int slot, size_t bytes) nogil
    void frbg_scratch_put(int slot, void* q) nogil
    size_t frbg_scratch_release() nogil
    void frbg_scratch_set(int set) nogil
    size_t frbg_scratch_kept(int i) nogil
    int FRBG_SLOTS
    void* frbg_place_team(int nthr) nogil
    void frbg_place_join(void* p, int t) nogil
    double* frbg_pack_rows_d(const double* const* rows, int k, int n, int nb, int ones) nogil
    void frbg_gemm_f(int level, int m, int n, int k, const float* A, int lda, int aks,
                     const float* Bp, float* C, int ldc, int beta, int p0, int p1) nogil
    void frbg_gemm_d(int level, int m, int n, int k, const double* A, int lda, int aks,
                     const double* Bp, double* C, int ldc, int beta, int p0, int p1) nogil
    void frbg_act_f(int act, const float* a, float* out, int n) nogil
    void frbg_act_d(int act, const double* a, double* out, int n) nogil
    int frbg_level_cache
    void frbg_sigmoid_f(const float* a, float* out, int n) nogil
    void frbg_tanh_f(const float* a, float* out, int n) nogil
    void frbg_sigmoid_d(const double* a, double* out, int n) nogil
    void frbg_tanh_d(const double* a, double* out, int n) nogil
    void frbg_lstm_bwd_f(int r0, int r1, int H, const float* gs, const float* cs,
                         const float* cp, const float* src, int ldsrc, float* dc, float* dg,
                         float* aux) nogil
    void frbg_lstm_bwd_d(int r0, int r1, int H, const double* gs, const double* cs,
                         const double* cp, const double* src, int ldsrc, double* dc,
                         double* dg, double* aux) nogil
    void frbg_gru_bwd_f(int kind, int r0, int r1, int H, const float* gs, const float* hn,
                        const float* hp, int ldhp, float* dh, float* dg, float* dnx,
                        const float* tmp, float* aux) nogil
    int fr_can_pipeline() nogil
    void fr_store(int* p, int v) nogil
    void fr_add(int* p, int v) nogil
    int frbg_team_size() nogil
    int fr_load(int* p) nogil
    bint fr_claim(int* p) nogil
    void fr_pause() nogil
    void fr_wait_gt(int* p, int v) nogil
    void frbg_gru_bwd_d(int kind, int r0, int r1, int H, const double* gs, const double* hn,
                        const double* hp, int ldhp, double* dh, double* dg, double* dnx,
                        const double* tmp, double* aux) nogil

# float/double dispatch of the packing and weight-gradient helpers
cdef inline void* _pack_rows(const floating* const* rows, int k, int n, int nb,
                             int ones) noexcept nogil:
    if floating is float:
        return frbg_pack_rows_f(rows, k, n, nb, ones)
    else:
        return frbg_pack_rows_d(rows, k, n, nb, ones)


cdef inline void _pack_rows_into(const floating* const* rows, int k, int n, int nb,
                                 floating* out) noexcept nogil:
    if floating is float:
        frbg_pack_rows_f_into(rows, k, n, nb, 0, out)
    else:
        frbg_pack_rows_d_into(rows, k, n, nb, 0, out)


cdef inline void _pack_into(const floating* W, int ldw, int k, int n, int nb,
                            floating* out) noexcept nogil:
    if floating is float:
        frbg_pack_f_into(W, ldw, k, n, 0, nb, out)
    else:
        frbg_pack_d_into(W, ldw, k, n, 0, nb, out)


cdef inline void _wgemm_packed(int level, int M, int N, int K, const floating* A, int lda,
                               const floating* Bp, floating* C, int ldc, floating* bias,
                               floating* work) noexcept nogil:
    if floating is float:
        frbg_wgemm_f(level, M, N, K, A, lda, Bp, C, ldc, bias, work)
    else:
        frbg_wgemm_d(level, M, N, K, A, lda, Bp, C, ldc, bias, work)


# batches up to this size use the packed small-M kernel for the per-step products
cdef enum:
    SMALL_GEMM_MAX_ROWS = 128


cdef extern from "_backward_gemm.h":
    int frbg_use43
    int frbg_use83
    int frbg_fwd_rowsplit
    int frbg_fwd_rowsplit_at(int nt, int B, int I, int H, int elsize)
    int frbg_bwd_rowsplit
    int frbg_gru_fwd_rowsplit
    int frbg_gru_fwd_rowsplit_at(int level, int nt, int B, int I, int H, int elsize)
    int frbg_bwd_rowsplit_at(int level, int lstm, int nt, int B, int H, int elsize)
    int frbg_rows3
    int frbg_rows6
    int frbg_wgemm_mode
    int frbg_wgemm_big(int MR)
    long fr_l2_bytes()


def _set_gemm43(int on):
    """Tests / A-B runs: which AVX2 training kernels use the 4 x 3 micro-kernel (bit 1:
    LSTM forward, bit 2: GRU forward and the backward's per-step product; 3, the default:
    both; 0: the 3 x 4 kernel everywhere).  Module-global: not while another thread runs
    a layer.  Returns the previous value."""
    global frbg_use43
    _hooks_changed()
    old = frbg_use43
    frbg_use43 = on
    return old


def _set_gemm83(int on):
    """Tests / A-B runs: the AVX-512 LSTM training forward and the row-split backward's
    dh product on the 8 x 3 micro-kernel by its rule (1, the default: blocks of 7-8
    rows), never (0) or always (2).  Returns the previous value.  Module-global: not
    while another thread runs a layer."""
    global frbg_use83
    _hooks_changed()
    old = frbg_use83
    frbg_use83 = on
    return old


def _set_rows3(int on):
    """Tests / A-B runs: the AVX2 4 x 3 training kernels end a block of rows with
    three-row blocks instead of a lone one or two rows (1, the default) or not (0).
    Returns the previous value.  Module-global: not while another thread runs a layer."""
    global frbg_rows3
    _hooks_changed()
    old = frbg_rows3
    frbg_rows3 = on
    return old


def _set_rows6(int on):
    """Tests / A-B runs: the AVX-512 6-row training kernels end a block of rows with two
    near-equal blocks instead of a lone one or two rows (1, the default) or not (0).
    Returns the previous value.  Module-global: not while another thread runs a layer."""
    global frbg_rows6
    _hooks_changed()
    old = frbg_rows6
    frbg_rows6 = on
    return old


def _set_wgemm_blocks(int mode):
    """Tests / A-B runs: the AVX-512 weight-gradient GEMM's blocks where its B panel
    outgrows L2 (more than 2048 rows of a step batch): -1 (the default) the larger
    blocks where a core has 2 MiB of L2 or more, 0 the smaller, 1 the larger.  Returns
    the previous value.  Module-global: not while another thread runs a layer."""
    global frbg_wgemm_mode
    _hooks_changed()
    old = frbg_wgemm_mode
    frbg_wgemm_mode = mode
    return old


def wgemm_big_blocks():
    """Whether the AVX-512 weight-gradient GEMM uses its larger blocks here."""
    return bool(frbg_wgemm_big(6))


def l2_bytes():
    """One core's L2 in bytes as the training kernels' rules read it (C sysconf; 0 when
    unknown)."""
    return fr_l2_bytes()


def _set_gru_fwd_rowsplit(int n):
    """Tests / A-B runs: the GRU training forward split by batch rows (1), by units (-1)
    or by its rule (0, the default).  Returns the previous value.  Module-global: not
    while another thread runs a layer."""
    global frbg_gru_fwd_rowsplit
    _hooks_changed()
    old = frbg_gru_fwd_rowsplit
    frbg_gru_fwd_rowsplit = n
    return old


def gru_forward_splits_rows(int nt, int B, int I, int H, int itemsize):
    """Whether the GRU training forward of B sequences on nt threads splits by batch rows
    (else by units), input size I, hidden size H."""
    return frbg_gru_fwd_rowsplit_at(frbg_level(), nt, B, I, H, itemsize) != 0


def _set_bwd_rowsplit(int n):
    """Tests / A-B runs: the LSTM / GRU backward's time loop split by batch rows (1), by
    units (-1) or by the rule (0, the default).  Returns the previous value.
    Module-global: not while another thread runs a layer."""
    global frbg_bwd_rowsplit
    _hooks_changed()
    old = frbg_bwd_rowsplit
    frbg_bwd_rowsplit = n
    return old


cdef double _pipe_share = -1.0


def _set_pipe_share(double share):
    """Tests / A-B runs: the share of the pipelined backward's chunks thread 0 computes
    after its time loop (negative: the rule, by multiply-adds).  Returns the previous."""
    global _pipe_share
    _hooks_changed()
    old = _pipe_share
    _pipe_share = share
    return old


# _bwd_pair_mode is a test hook: 0 automatic (pair_applies' rule), 1 both directions at
# once wherever there are 2 threads, 2 never (one direction after the other).
cdef int _bwd_pair_mode = 0


def _set_bwd_pair(int mode):
    """Test hook: 0 automatic, 1 force :func:`backward_pair` for every bidirectional layer
    on 2+ threads, 2 never.  Returns the previous value."""
    global _bwd_pair_mode
    _hooks_changed()
    old = _bwd_pair_mode
    _bwd_pair_mode = mode
    return old


def pair_applies(int cell, int batch, int hidden_size, int proj_size, int input_size,
                 int reset_after, int num_threads, int itemsize=4):
    """Whether the backward of a bidirectional layer runs its two directions at the same
    time (:func:`backward_pair`, one thread each) rather than one after the other on
    ``num_threads`` threads each (``batch``: the first step's rows; ``input_size``: the
    layer's, for callers; the rule reads the recurrent weights only).

    The single-direction backward on 2+ threads either splits the units of every step
    (LSTM without projection, GRU reset_after: a barrier per step) or pipelines (thread 0
    the time loop, the others each chunk's weight-gradient GEMMs: SimpleRNN, GRU
    reset_after=False, LSTM proj_size).  The pair has no barrier at all, but each thread
    reads all of its direction's recurrent weights every step (the unit split: half).
    Measured on a 2-vCPU Zen 5 (AVX-512, 1 MiB L2), T=50, I=H, bidirectional, 1-2 layers,
    in-process interleaved (bench/backward_pair.py), pair / one direction after the
    other, in a quiet hour (wrec: one direction's W_hh in bytes):

    * the pipelined cells: SimpleRNN B <= 8 0.43-0.97 (H=64-128 at B=8 0.88-1.02),
      B=16 0.82-1.12, B=64 1.04-1.44; GRU reset_after=False and LSTM proj_size (a
      loaded hour) B <= 8 0.4-0.9, B=64 1.0-1.9;
    * LSTM: wrec <= L2/16 (float32 H=64) 0.59-0.89 at B=1-64; wrec <= L2/4 (float32
      H=128, float64 H=64) 0.70-0.93 at B <= 4, 0.92-1.11 at B=8-16, 1.09-1.19 at B=64;
      float64 H=128 0.86-1.01 at B <= 4, 1.02-1.08 beyond; float32 H=256-512 1.09-1.18
      at B=1, 0.95-1.09 at B=4-64 (and float64 up to 1.32);
    * GRU reset_after: wrec <= 64 KiB (float32 H=64) 0.60-0.90 (B=1 1.01); wrec <=
      L2/4 (float32 H=128, float64 H=64) 0.48-0.91 at B <= 8, 0.70-1.17 at B=16,
      1.05-1.15 at B=64; 3/8 of the L2 (float64 H=128) 0.80-1.00 at B <= 4, 1.01-1.12
      from B=8; float32 H=256 0.94-1.06, H=512 and float64 H=256 1.07-1.20 at B <= 4.

    On a loaded machine (another process on the cores) the pair wins far more widely
    (a barrier per step waits for a descheduled thread: LSTM float32 H=256 B=4 0.28,
    float64 H=512 0.62-0.86); the rule follows the quiet hour.

    Not measured at the BLAS level (no AVX2) nor on more than 2 threads (the pair would
    leave the others idle): never there."""
    cdef long G = 4 if cell == 1 else (3 if cell == 2 else 1)
    cdef long P = proj_size if proj_size > 0 else hidden_size
    cdef long wrec = G * hidden_size * P * itemsize    # one direction's W_hh in bytes
    cdef long l2 = fr_l2_bytes()
    if _bwd_pair_mode == 2 or num_threads < 2 or batch <= 0:
        return False
    if _bwd_pair_mode == 1:
        return True
    if frbg_level() == 0 or num_threads != 2:
        return False
    if l2 <= 0:
        l2 = 1 << 20
    if cell == 1 and proj_size == 0:
        return wrec * 16 <= l2 or (wrec * 4 <= l2 and batch <= 16)
    if cell == 2 and reset_after:
        return (wrec <= (64 << 10) or (batch <= 8 and wrec * 4 <= l2)
                or (batch <= 4 and wrec * 8 <= 3 * l2))
    return batch <= 8


def _set_fwd_rowsplit(int n):
    """Tests / A-B runs: the LSTM training forward splits by batch rows (each thread its
    own rows of every step) from n sequences on with 2+ threads, below that by units;
    0 (the default): by the measured rule (rows from 11 sequences on with 2 threads, and
    at 4 rows a thread).  Returns the previous value.  Module-global: not while another
    thread runs a layer."""
    global frbg_fwd_rowsplit
    _hooks_changed()
    old = frbg_fwd_rowsplit
    frbg_fwd_rowsplit = n
    return old


def fused_lstm_forward_fast():
    """True where the LSTM training forward (frbg_lstm_fwd) runs on its own kernels: the
    AVX2 4 x 3 one or the AVX-512 one (plain LSTM inference then takes it where
    fused_lstm_route_at says)."""
    cdef int level = frbg_level()
    return fr_can_pipeline() != 0 and (level == 2 or (level == 1 and (frbg_use43 & 1) != 0))


include "_amd.pxi"


def fused_lstm_route_at(int nt, int B, int H=0, int itemsize=4, long l2=1 << 20,
                        bint wide=False, bint ragged=False, int half=-1, int amd=-1):
    """Whether a plain LSTM direction of B sequences on nt threads runs faster through
    the training forward than through the inference kernels (where
    fused_lstm_forward_fast()); H, itemsize: its recurrent weights (4H x H values), l2:
    the bytes of L2 a core has, wide: whether the batch-lane kernel would run it,
    ragged: sequences of different lengths (layers takes the route for those only from
    16 sequences on); half, amd: whether the CPU runs AVX-512 at half width (Zen 4) / is
    an AMD (< 0: this CPU's answer).

    Full-width AVX-512 on an AMD (``amd``; measured on a Zen 5 EPYC, 1 MiB L2 a core,
    ``bench_paths.py`` 10-16 rounds, three runs, route / packed kernel, T = 100): the
    route won where the training forward splits by rows, H = 256 B = 8 0.95, B = 12
    0.98-1.00, B = 16 0.89-0.94, B = 24 0.93-1.03, B = 32 0.90-0.91; H = 128 B = 8 0.86,
    B = 16 0.87-0.93, B = 32 0.86; H = 384 B = 16 0.91; H = 512 B = 16 0.97-0.99, B = 24
    0.95, B = 32 0.96 (the automatic choice before it: 0.97-1.06 of the packed kernel).
    Against the build before (``bench/ab_builds.py``, separate processes, 6 rounds,
    medians) with the half-width rule: H = 256 B = 16 0.89, B = 32 0.98, B = 12 and 24
    0.99-1.00, H = 128 B = 16 0.98, H = 512 B = 16 0.97, but B = 8 1.05 and H = 128 B = 4
    1.14.  So there: the half-width rule from 12 sequences (2+ threads, H >= 128, 12 to
    39 sequences, split by rows); ragged batches keep the full-width rule (not measured).
    A later session there, in-process steady loops (``PYTHONPATH=. python
    bench/hooks_ab.py --variants route1``, route wherever it applies / this rule, 10-12
    rounds of 5 calls): B = 40 H = 128, 256, 384, 512 0.88, 0.92, 0.97, 0.98, B = 44 H =
    256 0.94, B = 48 1.00-1.01, B = 56 0.96; below 12 it spiked (B = 8 H = 96-256
    0.86-0.97 but H = 512 1.13, B = 10 H = 128 0.90 but H = 256 1.38).  Against the build
    before (``bench/ab_builds.py``, 6 rounds, medians / minima): B = 40 H = 128 0.94 /
    0.93, H = 256 0.99 / 0.96, B = 44 0.98 / 0.95, but H = 512 1.02 / 1.00: so up to 47
    sequences where H <= 256.

    AVX-512, re-measured after the packed kernel's later changes (Intel Xeon, 2 MiB L2,
    T = 50, in-process alternating, automatic / route off; the figures below this
    paragraph are the earlier ones): dense batches route only on 2+ threads, from 8 to
    15 sequences, H >= 64 and recurrent weights within 0.3 of an L2 (float32 H = 64-192
    B = 8-14 0.86-0.97, float64 H = 64-128 B = 10-14 0.89-0.96).  Elsewhere the route
    had become slower: one thread 1.02-1.44 (B = 3-32, H = 32-384), B <= 6 1.03-1.43
    (H = 64 B = 6: 0.93), H = 32 1.04-1.53, B = 16-64 1.00-1.53 (B = 24-32 at H >= 128
    0.92-0.99), H = 256 B = 5-10 1.04-1.26, H = 384 and 512 B = 6-14 1.04-1.32, float64
    H = 192-256 1.07-1.27.  Ragged batches (lengths T/2..T, T = 100) keep the earlier
    rule: B = 16-64 at H = 128, 256 0.81-0.91 (where the batch-lane kernel runs B = 16:
    1.00).

    AVX2 (measured on a Zen 3 VM, H = 128..512, in-process alternating, routed / kernel
    time, with the weights packed per call): 2 threads, wherever the training forward
    splits by rows (B = 8: 0.81-0.93, 11-15: 0.84-0.96, 16-128: 0.80-0.92) and not where
    it splits by units (B = 4, 6, 10: 1.10-1.22); 1 thread, B = 4: 0.81-0.90, 7-13:
    0.84-0.95 (B = 1: 1.19, 2, 3, 5, 6: 0.96-1.03).

    AVX-512 (measured on an Intel Xeon, 2 MiB L2 a core, T = 100 (H = 512: 50), weights
    packed once per layer): where the recurrent weights take at most half of one core's
    L2 (H = 256 float32; float64, all of it, B = 8: 1.12), 2 threads from B = 5
    (0.65-0.94 of the packed kernel's time; B = 4: 1.11), 1 thread from B = 2
    (0.75-1.00), but not where the batch-lane kernel runs 16 to 31 rows (B = 16:
    0.94-1.04 of its time, B = 32: 0.84-0.86, B = 64: 0.98); where they do not (H = 384,
    512), never where the batch-lane kernel runs (1.00-1.30 of its time), 2 threads
    split by units from B = 6 (B = 6, 10: 0.76-0.92; B = 5 at H = 512: 1.13) and from
    B = 12 (0.77-0.96; B = 8, four rows a thread each reading all the weights:
    1.19-1.20), 1 thread from B = 12 (0.91-0.95; B = 6-8: 1.06-1.25).  Since the
    training forward splits weights beyond one L2 by units at every batch size there
    (AVX-512, 2 MiB+ L2), B = 8 routes as well: ``bench_paths.py``, H = 512 B = 8, 12,
    14: 0.93, 0.91, 0.84 of the packed kernel's time, H = 384 B = 8: 0.92; float64
    H = 256 B = 6, 8, 12: 0.87, 1.02, 0.91.  B = 4 on 2 threads where the training
    forward splits such small weights by rows (within 0.6 of an L2; a later session
    there, ``bench_paths.py``): H = 64, 128, 192 0.79, 0.78, 0.87 (B = 3, units: 1.26).
    (``H`` stands in for the input size in that split's rule.)

    Half-width AVX-512 (``half``; < 0: whether this CPU runs it, ``_kernels.avx512_half``),
    dense batches, measured on a Zen 4 EPYC (1 MiB L2 a core; ``bench_paths.py``, T = 50
    and 100, route / packed kernel): 2 threads where the training forward splits by rows,
    H = 128-512 B = 8-32 0.85-0.99 (H = 128 B = 4, 6: 0.81-0.97), B = 40 0.98-1.03, B = 48
    1.00-1.19, B = 64, 128 1.00-1.08; where it splits by units (H >= 192, B = 4, 6)
    1.24-1.43; H = 64 0.99-1.17; one thread 0.98-1.68.  So there: 2+ threads, H >= 128,
    fewer than 40 sequences, split by rows.  Ragged batches there (lengths T/2..T, 2
    threads): B = 16-64 at H = 128-512 0.85-1.01 of the packed kernel's time, where the
    batch-lane kernel took 1.05-1.36 of it: routed from 16 sequences, H >= 96 (smaller
    ones re-measured there later, route / packed kernel, T = 50, B = 16 and 64:
    ``bench_paths.py --ragged``, 15 rounds, H = 32 1.00-1.14, H = 64 0.96-0.99, H = 96
    0.93, H = 128 0.91-0.97; a scratch A/B of 9 rounds, H = 32 1.15-1.27, H = 64
    1.01-1.07); on one thread never (``bench_paths.py --ragged --threads 1``, 9-11
    rounds: float32 B = 16-64, H = 32-512 1.03-1.24, float64 H = 32-256 0.99-1.09)."""
    cdef bint hw = (fr_amd_f19() if half < 0 else half) != 0
    cdef bint amd_cpu = (fr_amd() if amd < 0 else amd) != 0
    if frbg_level() != 2:
        if nt <= 1:
            return B == 4 or B >= 7
        return B >= 16 or frbg_fwd_rowsplit_at(nt, B, H, H, itemsize) != 0
    if (hw or amd_cpu) and not ragged:
        return (nt >= 2 and H >= 128
                and (B < 40 if hw else 12 <= B < (48 if H <= 256 else 40))
                and frbg_fwd_rowsplit_at(nt, B, H, H, itemsize) != 0)
    if hw:
        return nt >= 2 and H >= 96      # ragged: layers asks from 16 sequences on
    if not ragged:
        return (nt >= 2 and 8 <= B < 16 and H >= 64
                and <long>40 * H * H * itemsize <= 3 * l2)
    if <long>8 * H * H * itemsize <= l2:
        return ((B >= (2 if nt <= 1 else 5)
                 or (B == 4 and frbg_fwd_rowsplit_at(nt, B, H, H, itemsize) != 0))
                and (not wide or B >= 32))
    if wide:
        return False
    return B >= 12 or (nt >= 2 and B >= 6 and frbg_fwd_rowsplit_at(nt, B, H, H, itemsize) == 0)


def small_gemm_level():
    """0: per-step products through BLAS; 1: AVX2+FMA kernel; 2: AVX-512 kernel."""
    return frbg_level()


# ------------------------------------------------------------ recurrent products
cdef struct Rec:
    # B (k x n) of a per-step product C = A @ B: packed panels, or NULL to use BLAS on W
    void* bp
    const void* w
    int k, n, np, level, ldw, wtrans


cdef bint _rec_init(Rec* R, const floating* W, int ldw, int k, int n, bint wtrans,
                    int use_packed) noexcept nogil:
    """B = W^T (wtrans) or W.  Returns False when packing ran out of memory."""
    cdef int nb
    R.w = W
    R.k = k
    R.n = n
    R.ldw = ldw
    R.wtrans = wtrans
    R.bp = NULL
    R.level = frbg_level() if use_packed else 0
    R.np = 0
    if R.level == 0 or k <= 0 or n <= 0:
        R.level = 0
        return True
    nb = frbg_nb(R.level, sizeof(floating))
    R.np = (n + nb - 1) // nb
    if floating is float:
        R.bp = frbg_pack_f(W, ldw, k, n, wtrans, nb)
    else:
        R.bp = frbg_pack_d(W, ldw, k, n, wtrans, nb)
    if R.bp == NULL:        # out of memory for the packed copy: BLAS on W instead
        R.level = 0
    return True


cdef void _pgemm(int level, int m, int n, int k, const floating* A, int lda, int aks,
                 const floating* Bp, floating* C, int ldc, int beta, int nt) noexcept nogil:
    """Packed-kernel GEMM, split over threads by panels (a thread keeps the same panels,
    hence the same part of B in its cache, call after call) or, when there are too few
    panels, by rows."""
    cdef int nb = frbg_nb(level, sizeof(floating))
    cdef int np = (n + nb - 1) // nb
    cdef int t, p0, p1, r0, r1, per, nth
    cdef bint by_panels = np >= nt and (np % nt == 0 or m < 12 * nt)
    if m <= 0 or n <= 0:
        return
    if nt <= 1 or <long>m * n * k < 65536 or (not by_panels and m < 12 * nt):
        if floating is float:
            frbg_gemm_f(level, m, n, k, A, lda, aks, Bp, C, ldc, beta, 0, np)
        else:
            frbg_gemm_d(level, m, n, k, A, lda, aks, Bp, C, ldc, beta, 0, np)
    elif by_panels:
        for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
            p0 = t * np // nt
            p1 = (t + 1) * np // nt
            if floating is float:
                frbg_gemm_f(level, m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1)
            else:
                frbg_gemm_d(level, m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1)
    else:
        per = ((m + nt - 1) // nt + 5) // 6 * 6
        for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
            r0 = t * per
            r1 = r0 + per
            if r1 > m:
                r1 = m
            if r0 < r1:
                if floating is float:
                    frbg_gemm_f(level, r1 - r0, n, k, A + <Py_ssize_t>r0 * lda, lda, aks, Bp,
                                C + <Py_ssize_t>r0 * ldc, ldc, beta, 0, np)
                else:
                    frbg_gemm_d(level, r1 - r0, n, k, A + <Py_ssize_t>r0 * lda, lda, aks, Bp,
                                C + <Py_ssize_t>r0 * ldc, ldc, beta, 0, np)


cdef void _rec_gemm(const Rec* R, int m, const floating* A, int lda, floating* C, int ldc,
                    int beta, int nt) noexcept nogil:
    """C (m x n) = A @ B (+ C when beta)."""
    if m <= 0:
        return
    if R.bp == NULL:
        gemm_rm(False, R.wtrans, m, R.n, R.k, <floating>1, A, lda, <const floating*>R.w,
                R.ldw, <floating>beta, C, ldc)
    else:
        _pgemm(R.level, m, R.n, R.k, A, lda, 1, <const floating*>R.bp, C, ldc, beta, nt)


cdef bint _wgrad(int level, int m, int N, const floating* A, int aks,
                 const floating* const* rows, int n, floating* dw, int lddw, floating* db,
                 int nt) noexcept nogil:
    """dW (m x n, ld lddw) = A^T-stored (element (r, kk) at A[r + kk*aks]) @ B and
    db (m) = its row sums, in one GEMM: B (N x n) has rows ``rows[kk]`` plus a column of
    ones.  False when memory ran out (nothing written)."""
    cdef void* bp
    cdef floating* tmp
    cdef int r, j
    cdef int nb = frbg_nb(level, sizeof(floating))
    bp = _pack_rows(rows, N, n, nb, 1)
    tmp = <floating*>fr_amalloc(sizeof(floating) * m * (n + 1) + 1)
    if bp == NULL or tmp == NULL:
        free(bp)
        free(tmp)
        return False
    _pgemm(level, m, n + 1, N, A, 1, aks, <const floating*>bp, tmp, n + 1, 0, nt)
    for r in range(m):
        for j in range(n):
            dw[<Py_ssize_t>r * lddw + j] = tmp[<Py_ssize_t>r * (n + 1) + j]
        db[r] = tmp[<Py_ssize_t>r * (n + 1) + n]
    free(bp)
    free(tmp)
    return True


cdef void _wgemm(int level, int m, int n, int k, const floating* A, int lda, int aks,
                 const floating* W, int ldw, bint wtrans, floating* C, int ldc, int beta,
                 int nt) noexcept nogil:
    """C (m x n) = op(A) @ B (+ C when beta), B (k x n) = W^T (wtrans) or W (leading
    dimension ldw).  A's element (r, kk) is A[r*lda + kk*aks]: aks == 1 is A as stored,
    lda == 1 is A stored transposed.  B is packed for the kernel (level > 0), else BLAS."""
    cdef void* bp = NULL
    cdef int nb
    if m <= 0 or n <= 0:
        return
    if level > 0 and k > 0:
        nb = frbg_nb(level, sizeof(floating))
        if floating is float:
            bp = frbg_pack_f(W, ldw, k, n, wtrans, nb)
        else:
            bp = frbg_pack_d(W, ldw, k, n, wtrans, nb)
    if bp != NULL:
        _pgemm(level, m, n, k, A, lda, aks, <const floating*>bp, C, ldc, beta, nt)
        free(bp)
    elif aks == 1:
        gemm_rm(False, wtrans, m, n, k, <floating>1, A, lda, W, ldw, <floating>beta, C, ldc)
    else:
        gemm_rm(True, wtrans, m, n, k, <floating>1, A, aks, W, ldw, <floating>beta, C, ldc)


# ----------------------------------------------------------------------------- math
from fastrnn._scalar_math cimport _exp, _tanh, _sigmoid


cdef inline void _vsig(const floating* a, floating* out, int n) noexcept nogil:
    """out[:n] = sigmoid(a[:n]), vectorised (a == out allowed)."""
    if floating is float:
        frbg_sigmoid_f(a, out, n)
    else:
        frbg_sigmoid_d(a, out, n)


cdef inline void _vtanh(const floating* a, floating* out, int n) noexcept nogil:
    if floating is float:
        frbg_tanh_f(a, out, n)
    else:
        frbg_tanh_d(a, out, n)


# ------------------------------------------------------------ forward row passes
# kinds: 0 RNN, 1 LSTM, 2 GRU reset_after, 3 GRU (r, z) first half, 4 GRU n second half
cdef void _frows(int kind, int r0, int r1, int H, int relu, floating* gs,
                 const floating* acc, const floating* bias, const floating* bhn,
                 const floating* hp, int ldhp, const floating* cp, floating* cs,
                 floating* ys, int ldy, floating* rh) noexcept nogil:
    """Gate math of rows [r0, r1) of one step: pre-activations plus biases, then the
    activations as vectorised passes over contiguous gate blocks, then the state update."""
    cdef int b, j
    cdef floating v, f, c, r, z, hn
    cdef floating* gb
    cdef floating* yb
    cdef floating* cb
    cdef const floating* ab
    cdef const floating* hb
    cdef const floating* cpb
    cdef Py_ssize_t G
    if kind == 0:
        for b in range(r0, r1):
            yb = ys + <Py_ssize_t>b * ldy
            if relu:
                for j in range(H):
                    v = yb[j] + bias[j]
                    yb[j] = v if not v <= 0 else 0    # (NaN stays NaN)
            else:
                for j in range(H):
                    yb[j] = yb[j] + bias[j]
                _vtanh(yb, yb, H)
    elif kind == 1:
        G = 4 * H
        for b in range(r0, r1):
            gb = gs + b * G
            yb = ys + <Py_ssize_t>b * ldy
            cb = cs + <Py_ssize_t>b * H
            cpb = cp + <Py_ssize_t>b * H
            for j in range(4 * H):
                gb[j] = gb[j] + bias[j]
            _vsig(gb, gb, 2 * H)
            _vtanh(gb + 2 * H, gb + 2 * H, H)
            _vsig(gb + 3 * H, gb + 3 * H, H)
            for j in range(H):
                cb[j] = gb[H + j] * cpb[j] + gb[j] * gb[2 * H + j]
            _vtanh(cb, yb, H)
            for j in range(H):
                yb[j] = yb[j] * gb[3 * H + j]
    elif kind == 2:
        G = 3 * H
        for b in range(r0, r1):
            gb = gs + b * G
            ab = acc + b * G
            hb = hp + <Py_ssize_t>b * ldhp
            yb = ys + <Py_ssize_t>b * ldy
            cb = cs + <Py_ssize_t>b * H
            for j in range(2 * H):
                gb[j] = gb[j] + bias[j] + ab[j]
            _vsig(gb, gb, 2 * H)
            for j in range(H):
                hn = ab[2 * H + j] + bhn[j]
                cb[j] = hn
                gb[2 * H + j] = gb[2 * H + j] + bias[2 * H + j] + gb[j] * hn
            _vtanh(gb + 2 * H, gb + 2 * H, H)
            for j in range(H):
                z = gb[H + j]
                yb[j] = (1 - z) * gb[2 * H + j] + z * hb[j]
    elif kind == 3:
        G = 3 * H
        for b in range(r0, r1):
            gb = gs + b * G
            hb = hp + <Py_ssize_t>b * ldhp
            for j in range(2 * H):
                gb[j] = gb[j] + bias[j]
            _vsig(gb, gb, 2 * H)
            for j in range(H):
                rh[<Py_ssize_t>b * H + j] = gb[j] * hb[j]
    else:
        G = 3 * H
        for b in range(r0, r1):
            gb = gs + b * G
            hb = hp + <Py_ssize_t>b * ldhp
            yb = ys + <Py_ssize_t>b * ldy
            for j in range(H):
                gb[2 * H + j] = gb[2 * H + j] + bias[2 * H + j]
            _vtanh(gb + 2 * H, gb + 2 * H, H)
            for j in range(H):
                z = gb[H + j]
                yb[j] = (1 - z) * gb[2 * H + j] + z * hb[j]


cdef void _fpar(int kind, int n, int nt, int H, int relu, floating* gs,
                const floating* acc, const floating* bias, const floating* bhn,
                const floating* hp, int ldhp, const floating* cp, floating* cs,
                floating* ys, int ldy, floating* rh) noexcept nogil:
    cdef int nchunks, ci, r0, r1, per
    if nt > 1 and n >= 2 and <long>n * H >= 8192:
        nchunks = nt if n >= nt else n
        per = (n + nchunks - 1) // nchunks
        for ci in prange(nchunks, nogil=True, num_threads=nt, schedule='static'):
            r0 = ci * per
            r1 = r0 + per
            if r1 > n:
                r1 = n
            if r0 < r1:
                _frows(kind, r0, r1, H, relu, gs, acc, bias, bhn, hp, ldhp, cp, cs, ys, ldy, rh)
    else:
        _frows(kind, 0, n, H, relu, gs, acc, bias, bhn, hp, ldhp, cp, cs, ys, ldy, rh)


# ----------------------------------------------------------- backward row passes
# kinds: 0 RNN, 1 LSTM, 2 GRU reset_after, 3 GRU (z, n) part, 4 GRU r part
cdef void _brows(int kind, int r0, int r1, int H, int relu, const floating* gs,
                 const floating* cs, const floating* cp, const floating* hp, int ldhp,
                 const floating* ys, int ldy, const floating* src, int ldsrc,
                 floating* dh, floating* dc, floating* dg, floating* dnx,
                 const floating* tmp, floating* aux) noexcept nogil:
    """Gate gradients of rows [r0, r1) of one step (LSTM and GRU passes in
    _backward_gemm.h).

    LSTM, with tc = tanh(c):  dc_t = dc + dh o (1 - tc^2);  d(i, f, g, o)_pre =
    (dc_t g i(1-i), dc_t c_prev f(1-f), dc_t i (1-g^2), dh tc o(1-o));  dc_prev = dc_t f.
    GRU reset_after:  dn_pre = dh (1-z)(1-n^2);  dr_pre = dn_pre (W_hn h + b_hn) r(1-r);
    dz_pre = dh (h_prev - n) z(1-z);  recurrent n-gradient dn_pre r;  dh_prev = dh z + ...
    GRU reset before (two passes around the W_hn product t = dn_pre W_hn):
    dr_pre = t h_prev r(1-r);  dh_prev = dh z + t r + ...
    """
    cdef int b, j
    cdef floating one = 1
    cdef const floating* yb
    cdef floating* db
    cdef floating* dhb
    if kind == 0:
        for b in range(r0, r1):
            yb = ys + <Py_ssize_t>b * ldy
            dhb = dh + <Py_ssize_t>b * H
            db = dg + <Py_ssize_t>b * H
            if relu:
                for j in range(H):
                    db[j] = dhb[j] if yb[j] > 0 else 0
            else:
                for j in range(H):
                    db[j] = dhb[j] * (one - yb[j] * yb[j])
    elif kind == 1:
        if floating is float:
            frbg_lstm_bwd_f(r0, r1, H, gs, cs, cp, src, ldsrc, dc, dg, aux)
        else:
            frbg_lstm_bwd_d(r0, r1, H, gs, cs, cp, src, ldsrc, dc, dg, aux)
    else:
        if floating is float:
            frbg_gru_bwd_f(kind, r0, r1, H, gs, cs, hp, ldhp, dh, dg, dnx, tmp, aux)
        else:
            frbg_gru_bwd_d(kind, r0, r1, H, gs, cs, hp, ldhp, dh, dg, dnx, tmp, aux)


cdef void _bpar(int kind, int n, int nt, int H, int relu, const floating* gs,
                const floating* cs, const floating* cp, const floating* hp, int ldhp,
                const floating* ys, int ldy, const floating* src, int ldsrc,
                floating* dh, floating* dc, floating* dg, floating* dnx,
                const floating* tmp, floating* aux) noexcept nogil:
    cdef int nchunks, ci, r0, r1, per
    if nt > 1 and n >= 2 and <long>n * H >= 8192:
        nchunks = nt if n >= nt else n
        per = (n + nchunks - 1) // nchunks
        for ci in prange(nchunks, nogil=True, num_threads=nt, schedule='static'):
            r0 = ci * per
            r1 = r0 + per
            if r1 > n:
                r1 = n
            if r0 < r1:
                _brows(kind, r0, r1, H, relu, gs, cs, cp, hp, ldhp, ys, ldy, src, ldsrc,
                       dh, dc, dg, dnx, tmp, aux)
    else:
        _brows(kind, 0, n, H, relu, gs, cs, cp, hp, ldhp, ys, ldy, src, ldsrc,
               dh, dc, dg, dnx, tmp, aux)


# ------------------------------------------------------------------------ the layer
cdef struct Dims:
    int cell, S, N, B, I, H, P, G, reset_after, relu, proj, nt, ldy, want_dx


cdef void _fwd_step(Dims* d, int s, int nt, const Rec* R1, const Rec* R2,
                    const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                    const floating* h0, const floating* c0, const floating* bias,
                    const floating* bhn, floating* y, floating* gates, floating* cs,
                    floating* acc, floating* hraw, floating* rh) noexcept nogil:
    """Step s of the training forward; the input projection of its rows is in gates
    (SimpleRNN: in y) already."""
    cdef int H = d.H, P = d.P, GH = d.G * d.H, ldy = d.ldy, n, ldhp
    cdef Py_ssize_t r
    cdef const floating* hp
    cdef const floating* cp
    cdef floating* ys
    cdef floating* gs
    n = <int>nsteps[s]
    r = offsets[s]
    if s == 0:
        hp = h0
        ldhp = P
        cp = c0
    else:
        hp = y + offsets[s - 1] * ldy
        ldhp = ldy
        cp = cs + offsets[s - 1] * H
    ys = y + r * ldy
    gs = gates + r * GH
    if d.cell == 0:
        _rec_gemm(R1, n, hp, ldhp, ys, ldy, 1, nt)
        _fpar(0, n, nt, H, d.relu, gs, acc, bias, bhn, hp, ldhp, cp, cs, ys, ldy, rh)
    elif d.cell == 1:
        _rec_gemm(R1, n, hp, ldhp, gs, GH, 1, nt)
        if d.proj:
            _fpar(1, n, nt, H, 0, gs, acc, bias, bhn, hp, ldhp, cp, cs + r * H, hraw, H, rh)
            _rec_gemm(R2, n, hraw, H, ys, ldy, 0, nt)
        else:
            _fpar(1, n, nt, H, 0, gs, acc, bias, bhn, hp, ldhp, cp, cs + r * H, ys, ldy, rh)
    elif d.reset_after:
        _rec_gemm(R1, n, hp, ldhp, acc, GH, 0, nt)
        _fpar(2, n, nt, H, 0, gs, acc, bias, bhn, hp, ldhp, cp, cs + r * H, ys, ldy, rh)
    else:
        _rec_gemm(R1, n, hp, ldhp, gs, GH, 1, nt)
        _fpar(3, n, nt, H, 0, gs, acc, bias, bhn, hp, ldhp, cp, cs, ys, ldy, rh)
        _rec_gemm(R2, n, rh, H, gs + 2 * H, GH, 1, nt)
        _fpar(4, n, nt, H, 0, gs, acc, bias, bhn, hp, ldhp, cp, cs, ys, ldy, rh)


cdef void _fwd_chunk_proj(Dims* d, int level, int c, int cs_steps,
                          const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                          const floating* x, const floating* wihp, floating* y,
                          floating* gates) noexcept nogil:
    """Input projection of the rows of chunk c (steps [c*cs_steps, (c+1)*cs_steps))."""
    cdef int s_lo = c * cs_steps, s_hi = s_lo + cs_steps, GH = d.G * d.H
    cdef Py_ssize_t R0, R1
    if s_hi > d.S:
        s_hi = d.S
    R0 = offsets[s_lo]
    R1 = offsets[s_hi - 1] + nsteps[s_hi - 1]
    if d.cell == 0:
        _pgemm(level, <int>(R1 - R0), d.H, d.I, x + R0 * d.I, d.I, 1, wihp, y + R0 * d.ldy,
               d.ldy, 0, 1)
    else:
        _pgemm(level, <int>(R1 - R0), GH, d.I, x + R0 * d.I, d.I, 1, wihp, gates + R0 * GH,
               GH, 0, 1)


cdef int _forward_pipelined(Dims* d, int level, int nt, const Rec* R1, const Rec* R2,
                            const floating* x, const floating* wih,
                            const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                            const floating* h0, const floating* c0, const floating* bias,
                            const floating* bhn, floating* y, floating* gates, floating* cs,
                            floating* acc, floating* hraw, floating* rh) noexcept nogil:
    """Thread 0 runs the recurrence alone (no barrier per step) while the other threads
    compute the input projections of the chunks of steps ahead of it."""
    cdef int S = d.S, N = d.N, I = d.I, GH = d.G * d.H
    cdef int nb = frbg_nb(level, sizeof(floating))
    cdef void* wihp = NULL
    cdef int* flags = NULL
    cdef int C, cs_steps, c, s, s_lo, s_hi, tid
    cdef Py_ssize_t target
    cdef void* pl
    target = N // (4 * nt)
    if target < 256:
        target = 256
    cs_steps = <int>((target + d.B - 1) // d.B)
    if cs_steps < 1:
        cs_steps = 1
    C = (S + cs_steps - 1) // cs_steps
    if floating is float:
        wihp = frbg_pack_f(wih, I, I, d.H if d.cell == 0 else GH, 1, nb)
    else:
        wihp = frbg_pack_d(wih, I, I, d.H if d.cell == 0 else GH, 1, nb)
    flags = <int*>calloc(2 * C + 1, sizeof(int))     # claimed[c], ready[C + c]
    if wihp == NULL or flags == NULL:
        free(wihp)
        free(flags)
        return -1
    tid = c = s = s_lo = s_hi = 0
    # worker placement as the C kernels' regions (fr_barrier.h): without it a worker the
    # previous region placed could share its master's CPU here
    pl = frbg_place_team(nt)
    with parallel(num_threads=nt):
        tid = threadid()
        frbg_place_join(pl, tid)
        if tid == 0:
            for c in range(C):
                if fr_claim(&flags[c]):
                    _fwd_chunk_proj(d, level, c, cs_steps, offsets, nsteps, x,
                                    <const floating*>wihp, y, gates)
                else:
                    fr_wait_gt(&flags[C + c], 0)
                s_lo = c * cs_steps
                s_hi = s_lo + cs_steps
                if s_hi > S:
                    s_hi = S
                for s in range(s_lo, s_hi):
                    _fwd_step(d, s, 1, R1, R2, offsets, nsteps, h0, c0, bias, bhn, y, gates,
                              cs, acc, hraw, rh)
        else:
            for c in range(C):
                if fr_claim(&flags[c]):
                    _fwd_chunk_proj(d, level, c, cs_steps, offsets, nsteps, x,
                                    <const floating*>wihp, y, gates)
                    fr_store(&flags[C + c], 1)
    free(wihp)
    free(flags)
    return 0


cdef int _forward(Dims* d, const floating* x, const floating* wih, const floating* whh,
                  const floating* bias, const floating* bhn, const floating* whr,
                  const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                  const floating* h0, const floating* c0, floating* y, floating* gates,
                  floating* cs, floating* pre) noexcept nogil:
    cdef int S = d.S, N = d.N, I = d.I, H = d.H, P = d.P, GH = d.G * d.H, B = d.B
    cdef int ldy = d.ldy, nt = d.nt, s, n, ldhp
    cdef Py_ssize_t r
    cdef const floating* hp
    cdef const floating* cp
    cdef floating* ys
    cdef floating* gs
    cdef floating* acc = NULL
    cdef floating* hraw = NULL
    cdef floating* rh = NULL
    cdef int blas_tok, rc
    cdef bint pipe
    cdef bint ok = True
    cdef Rec R1, R2
    cdef int small = d.B <= SMALL_GEMM_MAX_ROWS
    cdef int level = frbg_level()
    R1.bp = NULL
    R2.bp = NULL
    if ((d.cell == 1 and not d.proj) or (d.cell == 2 and d.reset_after)) and level > 0 \
            and fr_can_pipeline():
        # LSTM, GRU (reset_after): both threads through every step, split by units (one
        # barrier per step; LSTM from 16 sequences on: by batch rows); GRU keeps
        # hn = h W_hn + b_hn in cs
        blas_tok = frb_blas_enter(nt)
        if d.cell == 1:
            if floating is float:
                rc = frbg_lstm_fwd_f(level, nt, S, offsets, nsteps, I, H, x, wih, whh, bias,
                                     h0, c0, y, ldy, gates, cs, pre, 0)
            else:
                rc = frbg_lstm_fwd_d(level, nt, S, offsets, nsteps, I, H, x, wih, whh, bias,
                                     h0, c0, y, ldy, gates, cs, pre, 0)
        elif floating is float:
            rc = frbg_gru_fwd_f(level, nt, S, offsets, nsteps, I, H, x, wih, whh, bias, bhn,
                                h0, y, ldy, gates, cs)
        else:
            rc = frbg_gru_fwd_d(level, nt, S, offsets, nsteps, I, H, x, wih, whh, bias, bhn,
                                h0, y, ldy, gates, cs)
        frb_blas_leave(blas_tok)
        return rc
    if d.cell == 0:
        ok = _rec_init(&R1, whh, H, H, H, True, small)
    elif d.cell == 1:
        ok = _rec_init(&R1, whh, P, P, GH, True, small)
        if d.proj:
            ok = _rec_init(&R2, whr, H, H, P, True, small) and ok
    elif d.reset_after:
        ok = _rec_init(&R1, whh, H, H, GH, True, small)
    else:
        ok = _rec_init(&R1, whh, H, H, 2 * H, True, small)
        ok = _rec_init(&R2, whh + 2 * H * H, H, H, H, True, small) and ok
    if d.cell == 2 and d.reset_after:
        acc = <floating*>fr_amalloc(sizeof(floating) * B * GH + 1)
        ok = ok and acc != NULL
    if d.cell == 2 and not d.reset_after:
        rh = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and rh != NULL
    if d.cell == 1 and d.proj:
        hraw = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and hraw != NULL
    if not ok:
        free(acc)
        free(rh)
        free(hraw)
        free(R1.bp)
        free(R2.bp)
        return -1
    pipe = level > 0 and nt >= 2 and S > 1 and fr_can_pipeline()
    # (pipelined: thread 0 multiplies inside the OpenMP region, so OpenBLAS on one
    # thread there; with more it oversubscribed the cores, and OpenBLAS warned "Detect
    # OpenMP Loop and this application may hang" where libgomp was loaded globally)
    blas_tok = frb_blas_enter(1 if pipe else nt)
    if pipe:
        rc = _forward_pipelined(d, level, nt, &R1, &R2, x, wih, offsets, nsteps, h0, c0,
                                bias, bhn, y, gates, cs, acc, hraw, rh)
        frb_blas_leave(blas_tok)
        free(acc)
        free(rh)
        free(hraw)
        free(R1.bp)
        free(R2.bp)
        return rc
    # input projection of every step in one GEMM
    if d.cell == 0:
        _wgemm(level, N, H, I, x, I, 1, wih, I, True, y, ldy, 0, nt)
    else:
        _wgemm(level, N, GH, I, x, I, 1, wih, I, True, gates, GH, 0, nt)
    for s in range(S):
        _fwd_step(d, s, nt, &R1, &R2, offsets, nsteps, h0, c0, bias, bhn, y, gates, cs, acc,
                  hraw, rh)
    frb_blas_leave(blas_tok)
    free(acc)
    free(rh)
    free(hraw)
    free(R1.bp)
    free(R2.bp)
    return 0


cdef void _colsum(int N, int ncols, const floating* ones, const floating* a, int lda,
                  floating* out) noexcept nogil:
    cdef Py_ssize_t r
    cdef int j
    cdef const floating* row
    memset(out, 0, sizeof(floating) * ncols)
    for r in range(N):
        row = a + r * lda
        for j in range(ncols):
            out[j] += row[j]


cdef void _bwd_step(Dims* d, int s, int nt, const Rec* R1, const Rec* R2,
                    const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                    const floating* h0, const floating* c0, const floating* y,
                    const floating* gates, const floating* cs, floating* dy, floating* dh,
                    floating* dc, floating* dg, floating* dnx, floating* dhr, floating* aux,
                    floating* tmp) noexcept nogil:
    """Backward through step s: dh (B, Hout) / dc hold the gradient reaching h_s / c_s
    from step s + 1 on entry, the one reaching h_{s-1} / c_{s-1} on exit; writes dG_s."""
    cdef int H = d.H, P = d.P, GH = d.G * d.H, ldy = d.ldy, n, ldhp, b, j, ldsrc
    cdef bint gru_ra = d.cell == 2 and d.reset_after
    cdef Py_ssize_t r
    cdef const floating* hp
    cdef const floating* cp
    cdef floating* src
    cdef floating* dys
    n = <int>nsteps[s]
    r = offsets[s]
    if s == 0:
        hp = h0
        ldhp = P
        cp = c0
    else:
        hp = y + offsets[s - 1] * ldy
        ldhp = ldy
        cp = cs + offsets[s - 1] * H
    # total gradient reaching h_s: from the output and from step s + 1
    dys = dy + r * P
    for b in range(n):
        for j in range(P):
            dh[b * P + j] += dys[b * P + j]
    if d.proj:      # keep the total for dW_hr
        for b in range(n):
            for j in range(P):
                dys[b * P + j] = dh[b * P + j]
    if d.cell == 0:
        _bpar(0, n, nt, H, d.relu, gates, cs, cp, hp, ldhp, y + r * ldy, ldy, dh, H,
              dh, dc, dg + r * GH, dnx, tmp, aux)
        _rec_gemm(R1, n, dg + r * GH, GH, dh, H, 0, nt)
    elif d.cell == 1:
        if d.proj:
            _rec_gemm(R2, n, dh, P, dhr, H, 0, nt)
            src = dhr
            ldsrc = H
        else:
            src = dh
            ldsrc = H
        _bpar(1, n, nt, H, 0, gates + r * GH, cs + r * H, cp, hp, ldhp, y, ldy, src, ldsrc,
              dh, dc, dg + r * GH, dnx, tmp, aux + r * H if aux != NULL else NULL)
        _rec_gemm(R1, n, dg + r * GH, GH, dh, P, 0, nt)
    elif gru_ra:
        _bpar(2, n, nt, H, 0, gates + r * GH, cs + r * H, cp, hp, ldhp, y, ldy, dh, H,
              dh, dc, dg + r * GH, dnx + r * H, tmp, aux)
        _rec_gemm(R1, n, dg + r * GH, GH, dh, H, 1, nt)
    else:
        _bpar(3, n, nt, H, 0, gates + r * GH, cs, cp, hp, ldhp, y, ldy, dh, H,
              dh, dc, dg + r * GH, dnx, tmp, aux)
        _rec_gemm(R2, n, dg + r * GH + 2 * H, GH, tmp, H, 0, nt)
        _bpar(4, n, nt, H, 0, gates + r * GH, cs, cp, hp, ldhp, y, ldy, dh, H,
              dh, dc, dg + r * GH, dnx, tmp, aux + r * H)
        _rec_gemm(R1, n, dg + r * GH, GH, dh, H, 1, nt)


cdef bint _chunk_grads(Dims* d, int level, Py_ssize_t R0, Py_ssize_t R1,
                       const floating** xrows, const floating** hrows,
                       const floating* wihp, const floating* wihp_n, const floating* dg,
                       const floating* dnx, const floating* aux, const floating* dy,
                       floating* dx, floating* accih, floating* acchh,
                       floating* accx) noexcept nogil:
    """Gradients that rows [R0, R1) contribute, on the calling thread: dX rows, and into
    the accumulators accih (G*H, I+1) = [dW_ih | db_ih], acchh (ncols, Hout+1) =
    [dW_hh | db_hh], accx (GRU reset before: dW_hn; LSTM projection: dW_hr).  False when
    memory ran out."""
    cdef int I = d.I, H = d.H, P = d.P, GH = d.G * d.H
    cdef int m = <int>(R1 - R0)
    cdef int nb = frbg_nb(level, sizeof(floating))
    cdef bint gru_ra = d.cell == 2 and d.reset_after
    cdef bint gru_nra = d.cell == 2 and not d.reset_after
    cdef int ncols = 2 * H if gru_nra else GH
    cdef void* bp
    if m <= 0:
        return True
    if d.want_dx:
        if gru_ra:
            _pgemm(level, m, I, 2 * H, dg + R0 * GH, GH, 1, wihp, dx + R0 * I, I, 0, 1)
            _pgemm(level, m, I, H, dnx + R0 * H, H, 1, wihp_n, dx + R0 * I, I, 1, 1)
        else:
            _pgemm(level, m, I, GH, dg + R0 * GH, GH, 1, wihp, dx + R0 * I, I, 0, 1)
    bp = _pack_rows(xrows + R0, m, I, nb, 1)
    if bp == NULL:
        return False
    if gru_ra:
        _pgemm(level, 2 * H, I + 1, m, dg + R0 * GH, 1, GH, <const floating*>bp, accih,
               I + 1, 1, 1)
        _pgemm(level, H, I + 1, m, dnx + R0 * H, 1, H, <const floating*>bp,
               accih + 2 * H * (I + 1), I + 1, 1, 1)
    else:
        _pgemm(level, GH, I + 1, m, dg + R0 * GH, 1, GH, <const floating*>bp, accih, I + 1,
               1, 1)
    free(bp)
    bp = _pack_rows(hrows + R0, m, P, nb, 1)
    if bp == NULL:
        return False
    _pgemm(level, ncols, P + 1, m, dg + R0 * GH, 1, GH, <const floating*>bp, acchh, P + 1,
           1, 1)
    free(bp)
    if gru_nra or (d.cell == 1 and d.proj):
        if floating is float:
            bp = frbg_pack_f(aux + R0 * H, H, m, H, 0, nb)
        else:
            bp = frbg_pack_d(aux + R0 * H, H, m, H, 0, nb)
        if bp == NULL:
            return False
        if gru_nra:
            _pgemm(level, H, H, m, dg + R0 * GH + 2 * H, 1, GH, <const floating*>bp, accx, H,
                   1, 1)
        else:
            _pgemm(level, P, H, m, dy + R0 * P, 1, P, <const floating*>bp, accx, H, 1, 1)
        free(bp)
    return True


cdef void _chunk_unit(Dims* d, int level, int kind, Py_ssize_t R0, Py_ssize_t R1,
                      const floating** xrows, const floating** hrows, const floating* wihp,
                      const floating* dg, const floating* aux, const floating* dy,
                      floating* dx, floating* acc, floating* bp,
                      floating* work) noexcept nogil:
    """One unit of the weight-gradient work of rows [R0, R1) (SimpleRNN, LSTM), on the
    calling thread.  kind 0: [dW_ih | db] += dG^T X (the bias from the column sums of dG,
    taken while packing it); 1: dW_hh += dG^T H_prev (and dW_hr); 2: the dX rows.  acc
    (per thread): dW_ih (G*H, I), dW_hh (G*H, Hout), db (G*H), dW_hr (P, H).  bp, work:
    the thread's scratch for the packed rows and the packed dG."""
    cdef int I = d.I, H = d.H, P = d.P, GH = d.G * d.H
    cdef int m = <int>(R1 - R0)
    cdef int nb = frbg_nb(level, sizeof(floating))
    cdef floating* acc_hh = acc + <Py_ssize_t>GH * I
    cdef floating* accb = acc_hh + <Py_ssize_t>GH * P
    cdef floating* accx = accb + GH
    if m <= 0:
        return
    # kinds 0: dW_ih (and db), 1: dW_hh (and dW_hr), 2: the dX rows
    if kind == 0:
        _pack_rows_into(xrows + R0, m, I, nb, bp)
        _wgemm_packed(level, GH, I, m, dg + R0 * GH, GH, bp, acc, I, accb, work)
    elif kind == 1:
        _pack_rows_into(hrows + R0, m, P, nb, bp)
        _wgemm_packed(level, GH, P, m, dg + R0 * GH, GH, bp, acc_hh, P, NULL, work)
        if d.cell == 1 and d.proj:
            # dW_hr += dY^T (o * tanh(c)), dY the total gradient reaching each h
            _pack_into(aux + R0 * H, H, m, H, nb, bp)
            _wgemm_packed(level, P, H, m, dy + R0 * P, P, bp, accx, H, NULL, work)
    elif d.want_dx:
        _pgemm(level, m, I, GH, dg + R0 * GH, GH, 1, wihp, dx + R0 * I, I, 0, 1)


cdef void _sum_seg(const floating* acc, Py_ssize_t per, int nt, Py_ssize_t k0,
                   Py_ssize_t k1, Py_ssize_t s0, Py_ssize_t s1, floating* out,
                   floating* out2) noexcept nogil:
    """out[k - s0] (and out2) = sum over threads of acc[k], k in [k0, k1) & [s0, s1)."""
    cdef Py_ssize_t k, a = k0 if k0 > s0 else s0, b = k1 if k1 < s1 else s1
    cdef int t
    cdef floating v
    for k in range(a, b):
        v = acc[k]
        for t in range(1, nt):
            v = v + acc[t * per + k]
        out[k - s0] = v
        if out2 != NULL:
            out2[k - s0] = v


cdef void _release_pipeline(void* scratch, void* acc, void* xrows, void* hrows,
                            void* claimed, void* wihp, void* wihp_n) noexcept nogil:
    """Return the pipelined backward's scratch slots (NULL-safe) and free its buffers."""
    frbg_scratch_put(2, scratch)
    frbg_scratch_put(1, acc)
    free(xrows)
    free(hrows)
    free(claimed)
    free(wihp)
    free(wihp_n)


cdef int _backward_pipelined(Dims* d, int level, int nt, const Rec* R1, const Rec* R2,
                             const floating* x, const floating* wih,
                             const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                             const floating* h0, const floating* c0, const floating* y,
                             const floating* gates, const floating* cs, floating* dy,
                             floating* dh, floating* dc, floating* dx, floating* dwih,
                             floating* dwhh, floating* dbih, floating* dbhh, floating* dwhr,
                             floating* dg, floating* dnx, floating* dhr, floating* aux,
                             floating* tmp) noexcept nogil:
    """Thread 0 runs the time loop alone (no barrier per step); as each chunk of steps is
    done, the other threads compute that chunk's dX rows and weight-gradient GEMMs into
    per-thread accumulators (each unit of work on a fixed thread).  When the loop ends,
    thread 0 computes the last chunks'.  The accumulators are summed at the end."""
    cdef int S = d.S, N = d.N, I = d.I, H = d.H, P = d.P, GH = d.G * d.H
    cdef bint gru_ra = d.cell == 2 and d.reset_after
    cdef bint gru_nra = d.cell == 2 and not d.reset_after
    cdef int ncols = 2 * H if gru_nra else GH
    cdef int nb = frbg_nb(level, sizeof(floating))
    cdef Py_ssize_t sz_ih = <Py_ssize_t>GH * (I + 1), sz_hh = <Py_ssize_t>GH * (P + 1)
    cdef Py_ssize_t sz_x = <Py_ssize_t>H * H if gru_nra else <Py_ssize_t>P * H
    cdef Py_ssize_t per = sz_ih + sz_hh + sz_x
    cdef floating* acc = NULL
    cdef const floating** xrows = NULL
    cdef const floating** hrows = NULL
    cdef void* wihp = NULL
    cdef void* wihp_n = NULL
    cdef int* claimed = NULL
    cdef floating* scratch = NULL
    cdef void* pl
    cdef Py_ssize_t kmax, wmax, sz_bp = 0, sz_w = 0
    cdef int u, kind, first, ndone = 0, nth
    cdef Py_ssize_t k0, k1
    cdef Py_ssize_t o_hh = <Py_ssize_t>GH * I, o_b = <Py_ssize_t>GH * (I + P)
    cdef Py_ssize_t o_x = o_b + GH
    cdef Py_ssize_t tot = o_x + (sz_x if d.cell == 1 and d.proj else 0)
    # SimpleRNN / LSTM: work units (chunk, kind) of _chunk_unit; GRU: whole chunks
    cdef bint units = d.cell != 2
    cdef int NU = 3 if units else 1
    cdef int progress = 0, failed = 0
    cdef int C, cs_steps, c, s, s_hi, s_lo, b, t, tid, j, r, mlast
    cdef double wl, ww
    cdef Py_ssize_t k, R0, R1r, target
    cdef bint ok
    # chunks of steps, processed from the last step backwards
    target = N // (4 * nt)
    if target < 256:
        target = 256
    cs_steps = <int>((target + d.B - 1) // d.B)
    if cs_steps < 1:
        cs_steps = 1
    # a short first chunk: the other threads start on it early
    first = cs_steps // 4
    if first < 1:
        first = 1
    if first > S:
        first = S
    C = 1 + (S - first + cs_steps - 1) // cs_steps
    acc = <floating*>frbg_scratch_get(1, sizeof(floating) * (per * nt + 1))
    if acc != NULL:
        memset(acc, 0, sizeof(floating) * (per * nt + 1))
    xrows = <const floating**>malloc(sizeof(floating*) * N + 1)
    hrows = <const floating**>malloc(sizeof(floating*) * N + 1)
    ok = acc != NULL and xrows != NULL and hrows != NULL
    if ok and units:
        # per thread: packed rows (up to max(I, Hout, H) columns) and the packed dG block
        kmax = <Py_ssize_t>cs_steps * nsteps[0]
        wmax = I if I > P else P
        if H > wmax:
            wmax = H
        sz_bp = ((wmax + nb - 1) // nb) * nb * kmax + 16
        sz_w = <Py_ssize_t>frbg_wgemm_work(<int>kmax) + 16
        scratch = <floating*>frbg_scratch_get(2, sizeof(floating) * (sz_bp + sz_w) * nt)
        ok = scratch != NULL
    if ok and d.want_dx:
        if floating is float:
            wihp = frbg_pack_f(wih, I, 2 * H if gru_ra else GH, I, 0, nb)
            if gru_ra:
                wihp_n = frbg_pack_f(wih + 2 * H * I, I, H, I, 0, nb)
        else:
            wihp = frbg_pack_d(wih, I, 2 * H if gru_ra else GH, I, 0, nb)
            if gru_ra:
                wihp_n = frbg_pack_d(wih + 2 * H * I, I, H, I, 0, nb)
        ok = wihp != NULL and (wihp_n != NULL or not gru_ra)
    if not ok:
        _release_pipeline(scratch, acc, xrows, hrows, claimed, wihp, wihp_n)
        return -1
    for k in range(N):
        xrows[k] = x + k * I
    for s in range(S):
        for b in range(<int>nsteps[s]):
            if s == 0:
                hrows[b] = h0 + <Py_ssize_t>b * P
            else:
                hrows[offsets[s] + b] = y + (offsets[s - 1] + b) * d.ldy

    # Which thread computes a unit is fixed, never claimed on the fly: each accumulator
    # then sums the same units in the same order on every run, so the gradients are the
    # same bits run to run (claiming made them differ in the last digits, by timing).
    # Thread 0 takes the last ``mlast`` chunks after its loop, the others the rest round
    # robin; ``mlast`` (rounded down) balances the two by multiply-adds a row: the loop's
    # products (GH x P, and P x H for LSTM's projection) against a chunk's GEMMs (dW_ih,
    # dW_hh, dX, dW_hr).  Training steps B=64 T=50-100 H=128-256, 2 threads, Zen 4
    # (_set_pipe_share to try others): the best of the shares tried for SimpleRNN, GRU
    # reset_after=False and LSTM proj_size.
    wl = <double>GH * P + (<double>P * H if d.cell == 1 and d.proj else 0.0)
    ww = <double>GH * I + <double>GH * P + (<double>GH * I if d.want_dx else 0.0) + \
        (<double>P * H if d.cell == 1 and d.proj else 0.0)
    mlast = <int>(C * (ww - (nt - 1) * wl) / (ww * nt))
    if _pipe_share >= 0:
        mlast = <int>(C * _pipe_share + 0.5)
    if mlast < 1:
        mlast = 1
    if mlast > C:
        mlast = C
    tid = c = s = s_hi = s_lo = 0
    R0 = R1r = 0
    pl = frbg_place_team(nt)      # (as in _forward_pipelined)
    with parallel(num_threads=nt):
        tid = threadid()
        frbg_place_join(pl, tid)
        nth = frbg_team_size()
        if tid == 0:
            for c in range(C):
                s_hi = S if c == 0 else S - first - (c - 1) * cs_steps
                s_lo = s_hi - (first if c == 0 else cs_steps)
                if s_lo < 0:
                    s_lo = 0
                for s in range(s_hi - 1, s_lo - 1, -1):
                    _bwd_step(d, s, 1, R1, R2, offsets, nsteps, h0, c0, y, gates, cs, dy, dh,
                              dc, dg, dnx, dhr, aux, tmp)
                fr_store(&progress, c + 1)
        for u in range(C * NU):
            c = u // NU
            kind = u - c * NU
            if c >= C - mlast or nth == 1:
                j = 0
            else:
                j = 1 + u % (nth - 1)
            if j != tid:
                continue
            fr_wait_gt(&progress, c)
            s_hi = S if c == 0 else S - first - (c - 1) * cs_steps
            s_lo = s_hi - (first if c == 0 else cs_steps)
            if s_lo < 0:
                s_lo = 0
            R0 = offsets[s_lo]
            R1r = offsets[s_hi - 1] + nsteps[s_hi - 1]
            if units:
                _chunk_unit(d, level, kind, R0, R1r, xrows, hrows,
                            <const floating*>wihp, dg, aux, dy, dx, acc + per * tid,
                            scratch + (sz_bp + sz_w) * tid,
                            scratch + (sz_bp + sz_w) * tid + sz_bp)
            elif not _chunk_grads(d, level, R0, R1r, xrows, hrows,
                                  <const floating*>wihp, <const floating*>wihp_n, dg,
                                  dnx, aux, dy, dx, acc + per * tid,
                                  acc + per * tid + sz_ih,
                                  acc + per * tid + sz_ih + sz_hh):
                fr_store(&failed, 1)
        if units:
            # when every thread is done, each sums its slice of the accumulators into
            # the outputs: acc = dW_ih (GH, I), dW_hh (GH, P), db (GH), dW_hr (P, H)
            fr_add(&ndone, 1)
            fr_wait_gt(&ndone, nth - 1)
            k0 = tid * tot // nth
            k1 = (tid + 1) * tot // nth
            _sum_seg(acc, per, nt, k0, k1, 0, o_hh, dwih, NULL)
            _sum_seg(acc, per, nt, k0, k1, o_hh, o_b, dwhh, NULL)
            _sum_seg(acc, per, nt, k0, k1, o_b, o_x, dbih, dbhh)
            if d.cell == 1 and d.proj:
                _sum_seg(acc, per, nt, k0, k1, o_x, tot, dwhr, NULL)

    if units:
        _release_pipeline(scratch, acc, xrows, hrows, claimed, wihp, wihp_n)
        return -1 if failed else 0
    # sum the per-thread accumulators into thread 0's, then scatter
    for t in range(1, nt):
        for k in range(per):
            acc[k] += acc[per * t + k]
    for r in range(GH):
        for j in range(I):
            dwih[<Py_ssize_t>r * I + j] = acc[<Py_ssize_t>r * (I + 1) + j]
        dbih[r] = acc[<Py_ssize_t>r * (I + 1) + I]
    for r in range(ncols):
        for j in range(P):
            dwhh[<Py_ssize_t>r * P + j] = acc[sz_ih + <Py_ssize_t>r * (P + 1) + j]
        dbhh[r] = acc[sz_ih + <Py_ssize_t>r * (P + 1) + P]
    if gru_nra:
        for k in range(sz_x):
            dwhh[2 * H * H + k] = acc[sz_ih + sz_hh + k]
        for j in range(2 * H, GH):
            dbhh[j] = dbih[j]
    elif d.cell == 1 and d.proj:
        for k in range(sz_x):
            dwhr[k] = acc[sz_ih + sz_hh + k]
    _release_pipeline(scratch, acc, xrows, hrows, claimed, wihp, wihp_n)
    return -1 if failed else 0


cdef int _backward(Dims* d, const floating* x, const floating* wih, const floating* whh,
                   const floating* whr, const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                   const floating* h0, const floating* c0, const floating* y,
                   const floating* gates, const floating* cs, floating* dy, floating* dh,
                   floating* dc, floating* dx, floating* dwih, floating* dwhh,
                   floating* dbih, floating* dbhh, floating* dwhr) noexcept nogil:
    cdef int S = d.S, N = d.N, I = d.I, H = d.H, P = d.P, GH = d.G * d.H, B = d.B
    cdef int ldy = d.ldy, nt = d.nt, s, e, n, ldhp, b, j, ncols, kind
    cdef bint gru_ra = d.cell == 2 and d.reset_after
    cdef bint gru_nra = d.cell == 2 and not d.reset_after
    cdef Py_ssize_t r, k
    cdef const floating* hp
    cdef const floating* cp
    cdef floating* dg = NULL
    cdef floating* dnx = NULL
    cdef floating* dhr = NULL
    cdef floating* aux = NULL      # LSTM proj: o*tanh(c) (N, H); GRU no-ra: r*h_prev (N, H)
    cdef floating* tmp = NULL
    cdef floating* ones = NULL
    cdef floating* src
    cdef floating* dys
    cdef int ldsrc
    cdef int blas_tok
    cdef bint pipe
    cdef bint ok
    cdef Rec R1, R2
    cdef int small = d.B <= SMALL_GEMM_MAX_ROWS
    cdef int level = frbg_level()
    cdef const floating** rows = NULL
    cdef bint done
    cdef int rc
    R1.bp = NULL
    R2.bp = NULL
    if (gru_ra or (d.cell == 1 and not d.proj)) and level > 0 and fr_can_pipeline():
        # LSTM and GRU (reset_after): every thread through every step, split by units
        # (one barrier per step), then each thread's own rows of the weight gradients;
        # dG rows of 4H in both (see the helper)
        # dG: every row where dX is wanted, else two steps' rows (the helper alternates)
        dg = <floating*>frbg_scratch_get(
            0, sizeof(floating) * <Py_ssize_t>(N if d.want_dx else min(N, 2 * B)) * 4 * H + 1)
        if dg == NULL:
            return -1
        if floating is float:
            rc = frbg_bwd_units_f(level, d.cell, nt, S, offsets, nsteps, I, H, x, wih, whh,
                                  h0, c0, y, ldy, gates, cs, dy, dh, dc,
                                  dx if d.want_dx else NULL, dwih, dwhh, dbih, dbhh, dg)
        else:
            rc = frbg_bwd_units_d(level, d.cell, nt, S, offsets, nsteps, I, H, x, wih, whh,
                                  h0, c0, y, ldy, gates, cs, dy, dh, dc,
                                  dx if d.want_dx else NULL, dwih, dwhh, dbih, dbhh, dg)
        frbg_scratch_put(0, dg)
        return rc
    dg = <floating*>frbg_scratch_get(0, sizeof(floating) * <Py_ssize_t>N * GH + 1)
    ones = <floating*>fr_amalloc(sizeof(floating) * N + 1)
    ok = dg != NULL and ones != NULL
    if gru_ra:
        dnx = <floating*>fr_amalloc(sizeof(floating) * <Py_ssize_t>N * H + 1)
        ok = ok and dnx != NULL
    if gru_nra:
        aux = <floating*>fr_amalloc(sizeof(floating) * <Py_ssize_t>N * H + 1)
        tmp = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and aux != NULL and tmp != NULL
    if d.cell == 1 and d.proj:
        aux = <floating*>fr_amalloc(sizeof(floating) * <Py_ssize_t>N * H + 1)
        dhr = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and aux != NULL and dhr != NULL
    if d.cell == 0:
        ok = _rec_init(&R1, whh, H, H, H, False, small) and ok
    elif d.cell == 1:
        ok = _rec_init(&R1, whh, P, GH, P, False, small) and ok
        if d.proj:
            ok = _rec_init(&R2, whr, H, P, H, False, small) and ok
    elif gru_ra:
        ok = _rec_init(&R1, whh, H, GH, H, False, small) and ok
    else:
        ok = _rec_init(&R1, whh, H, 2 * H, H, False, small) and ok
        ok = _rec_init(&R2, whh + 2 * H * H, H, H, H, False, small) and ok
    if not ok:
        free(R1.bp)
        free(R2.bp)
        frbg_scratch_put(0, dg)
        free(ones)
        free(dnx)
        free(aux)
        free(tmp)
        free(dhr)
        return -1
    pipe = level > 0 and nt >= 2 and fr_can_pipeline()
    blas_tok = frb_blas_enter(1 if pipe else nt)    # (as in _forward)
    for k in range(N):
        ones[k] = 1
    kind = d.cell
    if pipe:
        rc = _backward_pipelined(d, level, nt, &R1, &R2, x, wih, offsets, nsteps, h0, c0, y,
                                 gates, cs, dy, dh, dc, dx, dwih, dwhh, dbih, dbhh, dwhr,
                                 dg, dnx, dhr, aux, tmp)
        frb_blas_leave(blas_tok)
        free(R1.bp)
        free(R2.bp)
        frbg_scratch_put(0, dg)
        free(ones)
        free(dnx)
        free(aux)
        free(tmp)
        free(dhr)
        return rc
    for s in range(S - 1, -1, -1):
        _bwd_step(d, s, nt, &R1, &R2, offsets, nsteps, h0, c0, y, gates, cs, dy, dh, dc, dg,
                  dnx, dhr, aux, tmp)

    # ---- input side: dX over every step at once
    if d.want_dx:
        if gru_ra:
            _wgemm(level, N, I, 2 * H, dg, GH, 1, wih, I, False, dx, I, 0, nt)
            _wgemm(level, N, I, H, dnx, H, 1, wih + 2 * H * I, I, False, dx, I, 1, nt)
        else:
            _wgemm(level, N, I, GH, dg, GH, 1, wih, I, False, dx, I, 0, nt)
    ncols = 2 * H if gru_nra else GH

    # ---- weight and bias gradients, each one GEMM over all steps (biases as an extra
    # column of ones): dW_ih = dG^T X, dW_hh = dG^T H_prev (H_prev packed from h0 and y)
    done = False
    if level > 0:
        rows = <const floating**>malloc(sizeof(floating*) * N + 1)
        if rows != NULL:
            for k in range(N):
                rows[k] = x + k * I
            if gru_ra:
                done = (_wgrad(level, 2 * H, N, dg, GH, rows, I, dwih, I, dbih, nt)
                        and _wgrad(level, H, N, dnx, H, rows, I, dwih + 2 * H * I, I,
                                   dbih + 2 * H, nt))
            else:
                done = _wgrad(level, GH, N, dg, GH, rows, I, dwih, I, dbih, nt)
            if done:
                for s in range(S):
                    for b in range(<int>nsteps[s]):
                        if s == 0:
                            rows[b] = h0 + <Py_ssize_t>b * P
                        else:
                            rows[offsets[s] + b] = y + (offsets[s - 1] + b) * ldy
                done = _wgrad(level, ncols, N, dg, GH, rows, P, dwhh, P, dbhh, nt)
                if done and gru_nra:
                    for j in range(2 * H, GH):
                        dbhh[j] = dbih[j]
            free(rows)
    if not done:
        # BLAS path: dW_ih in one GEMM, dW_hh one GEMM per run of equal batch sizes
        if gru_ra:
            _wgemm(0, 2 * H, I, N, dg, 1, GH, x, I, False, dwih, I, 0, nt)
            _wgemm(0, H, I, N, dnx, 1, H, x, I, False, dwih + 2 * H * I, I, 0, nt)
            _colsum(N, 2 * H, ones, dg, GH, dbih)
            _colsum(N, H, ones, dnx, H, dbih + 2 * H)
        else:
            _wgemm(0, GH, I, N, dg, 1, GH, x, I, False, dwih, I, 0, nt)
            _colsum(N, GH, ones, dg, GH, dbih)
        _colsum(N, GH, ones, dg, GH, dbhh)
        memset(dwhh, 0, sizeof(floating) * GH * P)
        gemm_rm(True, False, ncols, P, <int>nsteps[0], <floating>1, dg, GH, h0, P,
                <floating>1, dwhh, P)
        s = 1
        while s < S:
            n = <int>nsteps[s]
            e = s + 1
            while e < S and nsteps[e] == n and nsteps[e - 2] == n:
                e += 1
            gemm_rm(True, False, ncols, P, (e - s) * n, <floating>1, dg + offsets[s] * GH, GH,
                    y + offsets[s - 1] * ldy, ldy, <floating>1, dwhh, P)
            s = e
    if gru_nra:
        _wgemm(level, H, H, N, dg + 2 * H, 1, GH, aux, H, False, dwhh + 2 * H * H, H, 0, nt)
    if d.cell == 1 and d.proj:
        _wgemm(level, P, H, N, dy, 1, P, aux, H, False, dwhr, H, 0, nt)
    frb_blas_leave(blas_tok)
    free(R1.bp)
    free(R2.bp)
    frbg_scratch_put(0, dg)
    free(ones)
    free(dnx)
    free(aux)
    free(tmp)
    free(dhr)
    return 0


cdef void _dims(Dims* d, int cell, x, h0, y, int hidden_size, int proj_size,
                int reset_after, int relu, int num_threads, Py_ssize_t S):
    d.cell = cell
    d.S = <int>S
    d.N = x.shape[0]
    d.B = h0.shape[0]
    d.I = x.shape[1]
    d.H = hidden_size
    d.P = proj_size if proj_size > 0 else hidden_size
    d.proj = proj_size > 0
    d.G = 4 if cell == 1 else (3 if cell == 2 else 1)
    d.reset_after = reset_after
    d.relu = relu
    d.nt = num_threads if num_threads > 0 else 1
    d.ldy = y.shape[1]
    d.want_dx = 1


def forward(int cell, const floating[:, ::1] x, floating[:, ::1] wih, floating[:, ::1] whh,
            floating[::1] bias, floating[::1] bhn, floating[:, ::1] whr,
            Py_ssize_t[::1] offsets, Py_ssize_t[::1] nsteps,
            floating[:, ::1] h0, floating[:, ::1] c0, floating[:, ::1] y, int y_col,
            floating[:, ::1] gates, floating[:, ::1] cs, int hidden_size, int proj_size,
            int reset_after, int relu, int num_threads, floating[::1] prepacked=None,
            int prepacked_layout=-1):
    """Training forward of one direction of one layer, rows in step order.

    x (N, I); h0 (B, Hout), c0 (B, H) (LSTM); y (N, >= y_col + Hout) receives the
    outputs at columns ``y_col:``; gates (N, G*H) (unused for SimpleRNN) and cs (N, H)
    (LSTM: c, GRU reset_after: W_hn h + b_hn; unused otherwise) receive the cache.
    ``bias`` (G*H) is ``b_ih + b_hh`` except the GRU reset_after candidate block, which
    holds ``b_in`` (``bhn`` holds ``b_hn``).  ``prepacked``: a plain LSTM's weights from
    :func:`pack_lstm_forward` (same weights), packed in ``prepacked_layout``
    (:func:`lstm_forward_layout` of the packing's thread count and batch), so they are
    not packed again; refused unless that is this call's layout.  The caller validates
    every shape.
    """
    cdef Dims d
    cdef int rc
    cdef floating* pre = NULL
    if offsets.shape[0] == 0 or x.shape[0] == 0:
        return
    _dims(&d, cell, x, h0, y, hidden_size, proj_size, reset_after, relu, num_threads,
          offsets.shape[0])
    if prepacked is not None:
        if prepacked_layout != frbg_lstm_fwd_layout(num_threads, <int>nsteps[0], d.I, d.H,
                                                    sizeof(floating)):
            raise ValueError("fastrnn: prepacked LSTM weights of another layout")
        if <size_t>prepacked.shape[0] != frbg_lstm_fwd_packed_size(
                frbg_level(), d.I, d.H, sizeof(floating)):
            raise ValueError("fastrnn: prepacked LSTM weights of another size")
        pre = &prepacked[0]
        if <intptr_t>pre % 64:
            raise ValueError("fastrnn: prepacked LSTM weights not 64-byte aligned")
    with nogil:
        rc = _forward(&d, &x[0, 0], &wih[0, 0], &whh[0, 0], &bias[0], &bhn[0], &whr[0, 0],
                      &offsets[0], &nsteps[0], &h0[0, 0], &c0[0, 0], &y[0, y_col],
                      &gates[0, 0], &cs[0, 0], pre)
    if rc == -2:
        raise ValueError("fastrnn: prepacked LSTM weights serve the row split only")
    if rc != 0:
        raise MemoryError("fastrnn: could not allocate scratch memory for the training forward")


def forward_splits_rows(int nt, int B, int I, int H, int itemsize):
    """Whether the LSTM training forward of B sequences (the first step's rows) on nt
    threads splits by rows (else by units), for input size I, hidden size H."""
    return frbg_fwd_rowsplit_at(nt, B, I, H, itemsize) != 0


def backward_splits_rows(bint lstm, int nt, int B, int H, int itemsize):
    """Whether the LSTM (else GRU) backward of B sequences on nt threads splits its time
    loop by batch rows (else by units), hidden size H."""
    return frbg_bwd_rowsplit_at(frbg_level(), lstm, nt, B, H, itemsize) != 0


def lstm_forward_layout(int nt, int B, int I, int H, int itemsize):
    """The layout (ISA level; the 4 x 3 / 8 x 3 kernel's or the 4-vector panels')
    :func:`pack_lstm_forward` packs in now for B sequences on nt threads (input size I,
    hidden size H); a packing is valid for calls whose layout is the same."""
    return frbg_lstm_fwd_layout(nt, B, I, H, itemsize)


def pack_lstm_forward(floating[:, ::1] wih, floating[:, ::1] whh, int num_threads,
                      int batch):
    """A plain LSTM direction's weights (wih (4H, I), whh (4H, H), PyTorch layout)
    packed as the training forward reads them when it splits ``batch`` rows over
    ``num_threads`` threads by rows, for :func:`forward`'s ``prepacked``; None where the
    forward would split by units or not run its fused kernel (those pack per call)."""
    cdef int H = whh.shape[1], I = wih.shape[1], level = frbg_level(), rc
    cdef Py_ssize_t nst = batch, off = 0
    if not (level > 0 and fr_can_pipeline()
            and frbg_fwd_rowsplit_at(num_threads, batch, I, H, sizeof(floating))):
        return None
    dt = np.float32 if floating is float else np.float64
    n = frbg_lstm_fwd_packed_size(level, I, H, sizeof(floating))
    # 64-byte aligned, as the kernels' vector loads of the panels want
    out = aligned_empty(n, dt)
    cdef floating[::1] o = out
    with nogil:
        if floating is float:
            rc = frbg_lstm_fwd_f(level, num_threads, 0, &off, &nst, I, H, NULL, &wih[0, 0],
                                 &whh[0, 0], NULL, NULL, NULL, NULL, 0, NULL, NULL, &o[0], 1)
        else:
            rc = frbg_lstm_fwd_d(level, num_threads, 0, &off, &nst, I, H, NULL, &wih[0, 0],
                                 &whh[0, 0], NULL, NULL, NULL, NULL, 0, NULL, NULL, &o[0], 1)
    if rc != 0:
        raise MemoryError("fastrnn: could not pack the LSTM weights")
    return out


cdef struct BwdCall:
    # one direction's backward: Dims and the arrays' first elements (float or double,
    # per is64); empty: nothing to do (no steps or no rows)
    Dims d
    bint is64, empty
    const void* x
    const void* wih
    const void* whh
    const void* whr
    const Py_ssize_t* offsets
    const Py_ssize_t* nsteps
    const void* h0
    const void* c0
    const void* y
    const void* gates
    const void* cs
    void* dy
    void* dh
    void* dc
    void* dx
    void* dwih
    void* dwhh
    void* dbih
    void* dbhh
    void* dwhr


cdef void _fill_call(BwdCall* c, int cell, const floating[:, ::1] x, floating[:, ::1] wih,
                     floating[:, ::1] whh, floating[:, ::1] whr, Py_ssize_t[::1] offsets,
                     Py_ssize_t[::1] nsteps, floating[:, ::1] h0, floating[:, ::1] c0,
                     floating[:, ::1] y, int y_col, floating[:, ::1] gates,
                     floating[:, ::1] cs, floating[:, ::1] dy, floating[:, ::1] dh,
                     floating[:, ::1] dc, floating[:, ::1] dx, floating[:, ::1] dwih,
                     floating[:, ::1] dwhh, floating[::1] dbih, floating[::1] dbhh,
                     floating[:, ::1] dwhr, int hidden_size, int proj_size,
                     int reset_after, int relu, int num_threads, int want_dx):
    """:func:`backward`'s arguments into c (the caller keeps the arrays alive)."""
    c.is64 = floating is double
    c.empty = offsets.shape[0] == 0 or x.shape[0] == 0
    if c.empty:
        return
    _dims(&c.d, cell, x, h0, y, hidden_size, proj_size, reset_after, relu, num_threads,
          offsets.shape[0])
    c.d.want_dx = want_dx
    c.x = &x[0, 0]
    c.wih = &wih[0, 0]
    c.whh = &whh[0, 0]
    c.whr = &whr[0, 0]
    c.offsets = &offsets[0]
    c.nsteps = &nsteps[0]
    c.h0 = &h0[0, 0]
    c.c0 = &c0[0, 0]
    c.y = &y[0, y_col]
    c.gates = &gates[0, 0]
    c.cs = &cs[0, 0]
    c.dy = &dy[0, 0]
    c.dh = &dh[0, 0]
    c.dc = &dc[0, 0]
    c.dx = &dx[0, 0]
    c.dwih = &dwih[0, 0]
    c.dwhh = &dwhh[0, 0]
    c.dbih = &dbih[0]
    c.dbhh = &dbhh[0]
    c.dwhr = &dwhr[0, 0]


cdef int _run_call(BwdCall* c) noexcept nogil:
    if c.empty:
        return 0
    if c.is64:
        return _backward[double](
            &c.d, <const double*>c.x, <const double*>c.wih, <const double*>c.whh,
            <const double*>c.whr, c.offsets, c.nsteps, <const double*>c.h0,
            <const double*>c.c0, <const double*>c.y, <const double*>c.gates,
            <const double*>c.cs, <double*>c.dy, <double*>c.dh, <double*>c.dc,
            <double*>c.dx, <double*>c.dwih, <double*>c.dwhh, <double*>c.dbih,
            <double*>c.dbhh, <double*>c.dwhr)
    return _backward[float](
        &c.d, <const float*>c.x, <const float*>c.wih, <const float*>c.whh,
        <const float*>c.whr, c.offsets, c.nsteps, <const float*>c.h0,
        <const float*>c.c0, <const float*>c.y, <const float*>c.gates,
        <const float*>c.cs, <float*>c.dy, <float*>c.dh, <float*>c.dc,
        <float*>c.dx, <float*>c.dwih, <float*>c.dwhh, <float*>c.dbih,
        <float*>c.dbhh, <float*>c.dwhr)


def backward(int cell, const floating[:, ::1] x, floating[:, ::1] wih, floating[:, ::1] whh,
             floating[:, ::1] whr, Py_ssize_t[::1] offsets, Py_ssize_t[::1] nsteps,
             floating[:, ::1] h0, floating[:, ::1] c0, floating[:, ::1] y, int y_col,
             floating[:, ::1] gates, floating[:, ::1] cs, floating[:, ::1] dy,
             floating[:, ::1] dh, floating[:, ::1] dc, floating[:, ::1] dx,
             floating[:, ::1] dwih, floating[:, ::1] dwhh, floating[::1] dbih,
             floating[::1] dbhh, floating[:, ::1] dwhr, int hidden_size, int proj_size,
             int reset_after, int relu, int num_threads, int want_dx=1):
    """Backward of one direction of one layer over the cache of :func:`forward`.

    dy (N, Hout): gradient w.r.t. this direction's outputs, step order (with a projection
    overwritten with the total gradient reaching each h; otherwise only read).  dh (B, Hout) / dc (B, H): on entry the gradient
    w.r.t. the final state, on exit w.r.t. the initial state.  dx (N, I), dwih, dwhh,
    dbih, dbhh, dwhr (LSTM projection) receive the gradients (overwritten); dx is left
    alone when ``want_dx`` is 0.
    """
    cdef BwdCall c
    cdef int rc
    _fill_call(&c, cell, x, wih, whh, whr, offsets, nsteps, h0, c0, y, y_col, gates, cs,
               dy, dh, dc, dx, dwih, dwhh, dbih, dbhh, dwhr, hidden_size, proj_size,
               reset_after, relu, num_threads, want_dx)
    with nogil:
        rc = _run_call(&c)
    if rc != 0:
        raise MemoryError("fastrnn: could not allocate scratch memory for the backward pass")


cdef class BackwardCall:
    """One direction's :func:`backward` arguments, prepared for :func:`backward_pair`
    (:func:`prepare_backward`); holds the arrays until it is dropped."""
    cdef BwdCall c
    cdef object keep


def prepare_backward(int cell, const floating[:, ::1] x, floating[:, ::1] wih,
                     floating[:, ::1] whh, floating[:, ::1] whr, Py_ssize_t[::1] offsets,
                     Py_ssize_t[::1] nsteps, floating[:, ::1] h0, floating[:, ::1] c0,
                     floating[:, ::1] y, int y_col, floating[:, ::1] gates,
                     floating[:, ::1] cs, floating[:, ::1] dy, floating[:, ::1] dh,
                     floating[:, ::1] dc, floating[:, ::1] dx, floating[:, ::1] dwih,
                     floating[:, ::1] dwhh, floating[::1] dbih, floating[::1] dbhh,
                     floating[:, ::1] dwhr, int hidden_size, int proj_size,
                     int reset_after, int relu, int want_dx=1):
    """:func:`backward`'s arguments but the thread count (the pair runs each direction
    on one thread), for :func:`backward_pair`."""
    cdef BackwardCall call = BackwardCall.__new__(BackwardCall)
    _fill_call(&call.c, cell, x, wih, whh, whr, offsets, nsteps, h0, c0, y, y_col, gates,
               cs, dy, dh, dc, dx, dwih, dwhh, dbih, dbhh, dwhr, hidden_size, proj_size,
               reset_after, relu, 1, want_dx)
    # the pointers above are into these arrays
    call.keep = (x, wih, whh, whr, offsets, nsteps, h0, c0, y, gates, cs, dy, dh, dc, dx,
                 dwih, dwhh, dbih, dbhh, dwhr)
    return call


def backward_pair(BackwardCall first, BackwardCall second):
    """The backward of both directions of a bidirectional layer at the same time, one
    thread each (an OpenMP region of 2; one after the other where the runtime gives one
    thread), each on the single-thread kernel: every gradient has the bits of
    :func:`backward` with ``num_threads=1`` (the same kernel, the same order).  The
    second direction keeps its scratch in the second slot set (frbg_scratch_set).  BLAS
    (the level-0 path) runs on one thread meanwhile.  Use where :func:`pair_applies`
    says so."""
    cdef BwdCall* a = &first.c
    cdef BwdCall* b = &second.c
    cdef int rcs[2]
    cdef int tok, tid
    cdef void* pl
    if a.is64 != b.is64:
        raise TypeError("backward_pair: both directions must have one dtype")
    a.d.nt = 1
    b.d.nt = 1
    rcs[0] = 0
    rcs[1] = 0
    # values read once on first use: read here, before two threads could fill them at once
    frbg_level()
    fr_can_pipeline()
    fr_l2_bytes()
    fr_amd_f19()
    with nogil:
        tok = frb_blas_enter(1)
        pl = frbg_place_team(2)
        with parallel(num_threads=2):
            tid = threadid()
            frbg_place_join(pl, tid)
            if frbg_team_size() < 2:
                rcs[0] = _run_call(a)
                rcs[1] = _run_call(b)
            elif tid == 0:
                rcs[0] = _run_call(a)
            else:
                frbg_scratch_set(1)
                rcs[1] = _run_call(b)
                frbg_scratch_set(0)
        frb_blas_leave(tok)
    if rcs[0] != 0 or rcs[1] != 0:
        raise MemoryError("fastrnn: could not allocate scratch memory for the backward pass")


def _scratch_kept():
    """Test hook: the bytes kept now in each scratch slot (the first set's, then the
    second's, which the pair's second direction uses)."""
    return [frbg_scratch_kept(i) for i in range(FRBG_SLOTS)]
