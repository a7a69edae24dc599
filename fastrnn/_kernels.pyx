# cython: language_level=3, auto_pickle=False
"""Forward kernels for SimpleRNN, LSTM and GRU layers (one direction of one layer a call).

Layout conventions (all C-ordered, float32 or float64):

* The batch is *packed* like PyTorch's PackedSequence: sequences are sorted by length,
  longest first, and the rows of time step ``t`` are the ``n_t`` first sequences, stored
  at rows ``offsets[t] .. offsets[t] + n_t`` of a 2-D array.  A dense (T, B) batch is the
  special case ``n_t = B``, ``offsets[t] = t * B``, which costs nothing to build.
* ``wx`` is ``W_ih`` (G*H, I) and ``wh`` is ``W_hh`` (G*H, Hrec), PyTorch's layout and
  gate order (LSTM i f g o, GRU r z n): the layer's own arrays, no copy (the kernels
  that stream weights take unit-block / batch-lane packings of them instead; the BLAS
  path multiplies by their transposes).  ``bias`` (G*H) holds ``b_ih + b_hh`` except
  for the GRU candidate gate with ``reset_after`` where ``bhn`` keeps ``b_hn`` apart.
* The reverse direction reads each sequence backwards within its own length; outputs
  are written at the input's time index.

Paths (``choose_path``): the packed kernel (fr_kern_t.h: weights in unit blocks, a
persistent parallel region over the time loop, every cell and option, LSTM projection
included), the batch-lane kernel (fr_wide_t.h, larger batches where its rules say) and
the BLAS path (``_run_layer``: per chunk of time steps one GEMM for the input
projection, then per step one recurrent GEMM and a fused gate pass), which only the test
hook ``_set_path(2)`` selects now: the tests check the kernels against it.  Everything
after argument checking runs without the GIL.  Scratch memory is allocated per call, so
concurrent calls never share it.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, log1p, log1pf, fabs, fabsf, sqrt
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport intptr_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastrnn._blas cimport gemm_rm

import numpy as np
cimport numpy as cnp

from fastrnn._mem import aligned_copy

cnp.import_array()

# Bumped by every test / tuning hook (the ``_set_*`` functions here and in _backward):
# a layer keeps the decisions of its calls per shape (layers.RNNBase._plan) and makes
# them again when this changed, since the hooks steer them.
cdef long _hooks_gen = 0


def _hooks_changed():
    """A hook changed a setting the kernels or a layer's decisions read."""
    global _hooks_gen
    _hooks_gen += 1


def hooks_generation():
    """How many times a hook changed a setting (see :func:`_hooks_changed`)."""
    return _hooks_gen

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fr_omp_max_threads(void) { return omp_get_max_threads(); }
    static int fr_has_openmp(void) { return 1; }
    /* the CPUs of the OpenMP runtime's place list, 0 where it binds no threads */
    static int fr_omp_bound_cpus(void) {
    #if _OPENMP >= 201511
        int p, n = 0, np = omp_get_num_places();
        if (omp_get_proc_bind() == omp_proc_bind_false) return 0;
        for (p = 0; p < np; p++) n += omp_get_place_num_procs(p);
        return n;
    #else
        return 0;
    #endif
    }
    #else
    static int fr_omp_max_threads(void) { return 1; }
    static int fr_has_openmp(void) { return 0; }
    static int fr_omp_bound_cpus(void) { return 0; }
    #endif
    typedef int (*fr_set_threads_t)(int);
    typedef int (*fr_get_threads_t)(void);
    static fr_set_threads_t fr_blas_set_local = 0;
    static fr_get_threads_t fr_blas_get = 0;
    /* OpenBLAS's thread count while kernel calls run (the training kernels use these
       too, _backward gets their addresses).  scipy's OpenBLAS (pthreads build) keeps
       one count a process, so calls that overlap (Python threads) share it: while any
       runs it is the smallest count a running call wants (never more threads than a
       call asked for), and when the last one leaves, the count found before the first
       (a save / restore a call would leave at another call's count, e.g. 1 after calls
       of 1 and 2 threads overlapped).  It is set only where it differs: a set also
       makes OpenBLAS's workers again where they were ended
       (_threads.end_fresh_blas_workers).  fr_blas_enter returns the token for
       fr_blas_leave, -1 where there is no setter. */
    #define FR_BLAS_MAXN 256
    static int fr_blas_mu = 0, fr_blas_users = 0, fr_blas_saved = -1;
    static int fr_blas_count[FR_BLAS_MAXN + 1];
    static void fr_blas_lock(void) {
        while (__atomic_exchange_n(&fr_blas_mu, 1, __ATOMIC_ACQUIRE)) {
            while (__atomic_load_n(&fr_blas_mu, __ATOMIC_RELAXED)) { }
        }
    }
    static void fr_blas_unlock(void) { __atomic_store_n(&fr_blas_mu, 0, __ATOMIC_RELEASE); }
    static void fr_blas_apply(void) {       /* (under the lock) */
        int want = fr_blas_saved, k;
        for (k = 1; k <= FR_BLAS_MAXN; k++)
            if (fr_blas_count[k]) { want = k; break; }
        if (want < 1 || (fr_blas_get && fr_blas_get() == want)) return;
        fr_blas_set_local(want);
    }
    static int fr_blas_enter(int n) {
        if (!fr_blas_set_local) return -1;
        if (n < 1) n = 1;
        if (n > FR_BLAS_MAXN) n = FR_BLAS_MAXN;
        fr_blas_lock();
        if (fr_blas_users++ == 0)
            fr_blas_saved = fr_blas_get ? fr_blas_get() : fr_blas_set_local(n);
        fr_blas_count[n]++;
        fr_blas_apply();
        fr_blas_unlock();
        return n;
    }
    static void fr_blas_leave(int n) {
        if (n < 1 || n > FR_BLAS_MAXN) return;
        fr_blas_lock();
        fr_blas_count[n]--;
        fr_blas_users--;
        fr_blas_apply();
        if (fr_blas_users == 0) fr_blas_saved = -1;
        fr_blas_unlock();
    }
    static void fr_blas_after_fork(void) {  /* (a child: no other thread runs) */
        int k;
        for (k = 0; k <= FR_BLAS_MAXN; k++) fr_blas_count[k] = 0;
        fr_blas_users = 0;
        fr_blas_saved = -1;
        __atomic_store_n(&fr_blas_mu, 0, __ATOMIC_RELEASE);
    }
    static intptr_t fr_blas_enter_addr(void) { return (intptr_t)&fr_blas_enter; }
    static intptr_t fr_blas_leave_addr(void) { return (intptr_t)&fr_blas_leave; }
    """
    int fr_omp_max_threads() nogil
    int fr_has_openmp() nogil
    int fr_omp_bound_cpus() nogil
    ctypedef int (*fr_set_threads_t)(int) noexcept nogil
    ctypedef int (*fr_get_threads_t)() noexcept nogil
    fr_set_threads_t fr_blas_set_local
    fr_get_threads_t fr_blas_get
    int fr_blas_enter(int n) nogil
    void fr_blas_leave(int n) nogil
    void fr_blas_after_fork() nogil
    void fr_blas_lock() nogil
    void fr_blas_unlock() nogil
    intptr_t fr_blas_enter_addr()
    intptr_t fr_blas_leave_addr()


cdef extern from "fr_kern.h":
    void* fr_amalloc(size_t bytes) nogil   # fr_cache.h: 64-byte aligned, free() releases
    void* fr_keep_get(void** slot, size_t bytes) nogil   # fr_cache.h: kept scratch
    void fr_keep_put(void** slot, void* q) nogil
    size_t fr_keep_release(void** slots, int n) nogil
    long fr_l1d_bytes() nogil              # fr_cache.h: a core's caches (sysconf; 0: unknown)
    int fr_wake_force                      # a streaming step's sleeping team (fr_kern.h)
    int FR_WAKE_SINGLE_MIN, FR_WAKE_SINGLE_MAX
    void fr_wake_begin(int nt) nogil
    int fr_wake_single() nogil
    void fr_wake_after() nogil
    void fr_wake_state(int* st) nogil
    long fr_l2_bytes() nogil
    int fr_amd_f19() nogil                 # fr_cache.h: AMD family 0x19 (Zen 3 / 4)
    int fr_row_cut(const Py_ssize_t* lens, int B, int varlen, int tid, int nth) nogil
    int fr_f19_cache
    ctypedef struct fr_cell:
        int cell, G, H, K, P, U, nb, fast, rnn_relu, f, g, h
        double fa, fb, ga, gb, ha, hb, clip
        int input_forget, reset_after, rz_split
        const void* wp
        const void* bias
        const void* bhn
        const void* peep
        const void* wrp
    ctypedef struct fr_seq_f:
        int nT, B, I, reverse, varlen, chunk
        const Py_ssize_t* offsets
        const Py_ssize_t* nsteps
        const Py_ssize_t* lens
        const float* x
        Py_ssize_t x_ld
        const float* wxp
        const unsigned char* mask
        int mask_zero
        float* out
        Py_ssize_t out_ld, out_col
        float* h
        float* c
        float* xp
        float* hbuf
        float* lastout
        float* hraw
        int flip
        float* rh
        float* zb
        float* xt
        float* ht
        float* ct
        int wide_groups
    ctypedef struct fr_seq_d:
        int nT, B, I, reverse, varlen, chunk
        const Py_ssize_t* offsets
        const Py_ssize_t* nsteps
        const Py_ssize_t* lens
        const double* x
        Py_ssize_t x_ld
        const double* wxp
        const unsigned char* mask
        int mask_zero
        double* out
        Py_ssize_t out_ld, out_col
        double* h
        double* c
        double* xp
        double* hbuf
        double* lastout
        double* hraw
        int flip
        double* rh
        double* zb
        double* xt
        double* ht
        double* ct
        int wide_groups
    void fr_small_layer_f(const fr_cell* cl, fr_seq_f* q, int nt) nogil
    void fr_small_layer_d(const fr_cell* cl, fr_seq_d* q, int nt) nogil
    void fr_small_pair_f(const fr_cell* cl0, fr_seq_f* q0, const fr_cell* cl1,
                         fr_seq_f* q1) nogil
    void fr_small_pair_d(const fr_cell* cl0, fr_seq_d* q0, const fr_cell* cl1,
                         fr_seq_d* q1) nogil
    void fr_rows_f(const fr_cell* cl, int n, const float* acc, Py_ssize_t acc_ld,
                   float** xrows, const float* hprev, Py_ssize_t hp_ld, float* c,
                   float* hout, Py_ssize_t ho_ld) nogil
    void fr_rows_d(const fr_cell* cl, int n, const double* acc, Py_ssize_t acc_ld,
                   double** xrows, const double* hprev, Py_ssize_t hp_ld, double* c,
                   double* hout, Py_ssize_t ho_ld) nogil
    int fr_wide_layer_f(const fr_cell* cl, fr_seq_f* q, int nt) nogil
    int fr_wide_layer_d(const fr_cell* cl, fr_seq_d* q, int nt) nogil
    int fr_wide_rows() nogil
    int fr_level() nogil
    void fr_act_array_f(int which, const float* x, float* y, Py_ssize_t n) nogil
    void fr_act_array_d(int which, const double* x, double* y, Py_ssize_t n) nogil
    void fr_dense_rows_f(int m, int k, int n, const float* x, const float* w,
                         const float* b, int act, float* y) nogil
    void fr_dense_rows_d(int m, int k, int n, const double* x, const double* w,
                         const double* b, int act, double* y) nogil
    const char* fr_isa()
    int fr_unit(int elsize) nogil
    int fr_rowsplit_min
    int fr_force_level
    int fr_wide_force_groups
    int fr_wide_pairs
    long fr_min_par_work
    int fr_dgate_mode
    int fr_step_overlap
    int fr_swpf_on
    void fr_swpf_init()
    int fr_overlap_auto(int cell, int G, int K, int U, int nb, int nthr, int B,
                        int elsize) nogil
    int fr_barrier_spin


# Activation codes (ONNX names).  ACT_* values are part of the Python API of this module.
cdef enum:
    A_SIGMOID = 0
    A_TANH = 1
    A_RELU = 2
    A_HARDSIGMOID = 3
    A_LEAKYRELU = 4
    A_AFFINE = 5
    A_SCALEDTANH = 6
    A_ELU = 7
    A_SOFTSIGN = 8
    A_SOFTPLUS = 9
    A_THRESHOLDEDRELU = 10
    A_LINEAR = 11

ACTIVATION_CODES = {
    "sigmoid": A_SIGMOID, "tanh": A_TANH, "relu": A_RELU, "hardsigmoid": A_HARDSIGMOID,
    "leakyrelu": A_LEAKYRELU, "affine": A_AFFINE, "scaledtanh": A_SCALEDTANH, "elu": A_ELU,
    "softsign": A_SOFTSIGN, "softplus": A_SOFTPLUS, "thresholdedrelu": A_THRESHOLDEDRELU,
    "linear": A_LINEAR,
}

CELL_RNN = 0
CELL_LSTM = 1
CELL_GRU = 2


def has_openmp():
    """True when the extension was compiled with OpenMP."""
    return bool(fr_has_openmp())


def omp_max_threads():
    return fr_omp_max_threads()


def omp_bound_cpus():
    """The CPUs in the OpenMP runtime's place list where it binds threads to places
    (``OMP_PROC_BIND`` / ``OMP_PLACES`` / ``GOMP_CPU_AFFINITY``), else 0."""
    return fr_omp_bound_cpus()


def _set_blas_local_setter(intptr_t address, intptr_t getter=0):
    """Install OpenBLAS's ``openblas_set_num_threads_local`` (0 to disable) and its
    ``openblas_get_num_threads`` (``getter``; 0: none)."""
    global fr_blas_set_local, fr_blas_get
    fr_blas_set_local = <fr_set_threads_t>address
    fr_blas_get = <fr_get_threads_t>getter


def _blas_hooks():
    """Addresses of ``fr_blas_enter`` / ``fr_blas_leave`` (the training kernels call
    them: one shared OpenBLAS thread count, see their comment)."""
    return fr_blas_enter_addr(), fr_blas_leave_addr()


def _blas_after_fork():
    """In a forked child: the shared OpenBLAS count's state as if no call ran (a call of
    another thread may have held its lock at the fork: that thread is not in the child)."""
    fr_blas_after_fork()


def _blas_hold(bint hold):
    """Test hook: take (True) or give back (False) the shared OpenBLAS count's lock."""
    if hold:
        fr_blas_lock()
    else:
        fr_blas_unlock()


def _blas_enter(int n):
    """Test hook: ``fr_blas_enter(n)`` (the token)."""
    return fr_blas_enter(n)


def _blas_leave(int token):
    """Test hook: ``fr_blas_leave(token)``."""
    fr_blas_leave(token)


# ----------------------------------------------------------------------------- math
from fastrnn._scalar_math cimport _exp, _tanh, _sigmoid


cdef inline floating _act(int code, floating a, floating b, floating x) noexcept nogil:
    cdef floating y
    if code == A_SIGMOID:
        return _sigmoid(x)
    elif code == A_TANH:
        return _tanh(x)
    elif code == A_RELU:
        return x if not x <= 0 else 0    # (NaN stays NaN)
    elif code == A_HARDSIGMOID:
        y = a * x + b
        return 0 if y < 0 else (1 if y > 1 else y)
    elif code == A_LEAKYRELU:
        return x if x >= 0 else a * x
    elif code == A_AFFINE:
        return a * x + b
    elif code == A_SCALEDTANH:
        return a * _tanh(b * x)
    elif code == A_ELU:
        return x if x >= 0 else a * (_exp(x) - 1)
    elif code == A_SOFTSIGN:
        if floating is float:
            return x / (1 + fabsf(x))
        else:
            return x / (1 + fabs(x))
    elif code == A_SOFTPLUS:
        # log(1 + e^x), overflow-safe
        if x > 0:
            if floating is float:
                return x + log1pf(expf(-x))
            else:
                return x + log1p(exp(-x))
        if floating is float:
            return log1pf(expf(x))
        else:
            return log1p(exp(x))
    elif code == A_THRESHOLDEDRELU:
        return x if x > a else 0
    return x  # linear


cdef inline floating _clip(floating x, floating c) noexcept nogil:
    return c if x > c else (-c if x < -c else x)


cdef struct Acts:
    int f, g, h          # gate, candidate/cell, output (ONNX f, g, h)
    double fa, fb, ga, gb, ha, hb
    int is_default       # f=sigmoid, g=h=tanh (or g=tanh for RNN): fast path
    double clip          # <= 0: no clip


# ------------------------------------------------------------------ fused gate passes
cdef void _rnn_rows(int n0, int n1, int H, floating* acc, int acc_ld,
                    floating** xrows, const floating* bias, floating* h, int h_ld,
                    const Acts* A) noexcept nogil:
    cdef int b, j
    cdef floating v
    cdef floating* a
    cdef const floating* xr
    cdef floating clip = <floating>A.clip
    for b in range(n0, n1):
        a = acc + <Py_ssize_t>b * acc_ld
        xr = xrows[b]
        if A.is_default and A.clip <= 0:
            if A.f == A_TANH:
                for j in range(H):
                    h[<Py_ssize_t>b * h_ld + j] = _tanh(a[j] + xr[j] + bias[j])
            else:
                for j in range(H):
                    v = a[j] + xr[j] + bias[j]
                    h[<Py_ssize_t>b * h_ld + j] = v if not v <= 0 else 0    # (NaN stays NaN)
        else:
            for j in range(H):
                v = a[j] + xr[j] + bias[j]
                if A.clip > 0:
                    v = _clip(v, clip)
                h[<Py_ssize_t>b * h_ld + j] = _act(A.f, <floating>A.fa, <floating>A.fb, v)


cdef void _lstm_rows(int n0, int n1, int H, floating* acc, int acc_ld,
                     floating** xrows, const floating* bias, floating* c, floating* hraw,
                     int hraw_ld, const floating* peep, int input_forget,
                     const Acts* A) noexcept nogil:
    """acc (n, 4H): recurrent part; writes c in place and h_raw = o * act_h(c)."""
    cdef int b, j
    cdef floating gi, gf, gg, go, ct
    cdef floating* a
    cdef floating* cb
    cdef floating* hb
    cdef const floating* xr
    cdef floating clip = <floating>A.clip
    cdef bint fast = A.is_default and A.clip <= 0 and peep == NULL and not input_forget
    for b in range(n0, n1):
        a = acc + <Py_ssize_t>b * acc_ld
        xr = xrows[b]
        cb = c + <Py_ssize_t>b * H
        hb = hraw + <Py_ssize_t>b * hraw_ld
        if fast:
            for j in range(H):
                gi = _sigmoid(a[j] + xr[j] + bias[j])
                gf = _sigmoid(a[H + j] + xr[H + j] + bias[H + j])
                gg = _tanh(a[2 * H + j] + xr[2 * H + j] + bias[2 * H + j])
                go = _sigmoid(a[3 * H + j] + xr[3 * H + j] + bias[3 * H + j])
                ct = gf * cb[j] + gi * gg
                cb[j] = ct
                hb[j] = go * _tanh(ct)
        else:
            for j in range(H):
                gi = a[j] + xr[j] + bias[j]
                gf = a[H + j] + xr[H + j] + bias[H + j]
                gg = a[2 * H + j] + xr[2 * H + j] + bias[2 * H + j]
                go = a[3 * H + j] + xr[3 * H + j] + bias[3 * H + j]
                if peep != NULL:
                    gi = gi + peep[j] * cb[j]
                    gf = gf + peep[H + j] * cb[j]
                if A.clip > 0:
                    gi = _clip(gi, clip)
                    gf = _clip(gf, clip)
                    gg = _clip(gg, clip)
                gi = _act(A.f, <floating>A.fa, <floating>A.fb, gi)
                if input_forget:
                    gf = 1 - gi
                else:
                    gf = _act(A.f, <floating>A.fa, <floating>A.fb, gf)
                gg = _act(A.g, <floating>A.ga, <floating>A.gb, gg)
                ct = gf * cb[j] + gi * gg
                if peep != NULL:
                    go = go + peep[2 * H + j] * ct
                if A.clip > 0:
                    go = _clip(go, clip)
                go = _act(A.f, <floating>A.fa, <floating>A.fb, go)
                cb[j] = ct
                hb[j] = go * _act(A.h, <floating>A.ha, <floating>A.hb, ct)


cdef void _gru_rz_rows(int n0, int n1, int H, floating* acc, int acc_ld,
                       floating** xrows, const floating* bias, const floating* h,
                       floating* rh, const Acts* A) noexcept nogil:
    """reset_after=False, first half: acc[:, :2H] <- (r, z) activated; rh <- r * h."""
    cdef int b, j
    cdef floating r, z
    cdef floating* a
    cdef const floating* xr
    cdef floating clip = <floating>A.clip
    for b in range(n0, n1):
        a = acc + <Py_ssize_t>b * acc_ld
        xr = xrows[b]
        for j in range(H):
            r = a[j] + xr[j] + bias[j]
            z = a[H + j] + xr[H + j] + bias[H + j]
            if A.clip > 0:
                r = _clip(r, clip)
                z = _clip(z, clip)
            if A.f == A_SIGMOID:
                r = _sigmoid(r)
                z = _sigmoid(z)
            else:
                r = _act(A.f, <floating>A.fa, <floating>A.fb, r)
                z = _act(A.f, <floating>A.fa, <floating>A.fb, z)
            a[H + j] = z
            rh[<Py_ssize_t>b * H + j] = r * h[<Py_ssize_t>b * H + j]


cdef void _gru_rows(int n0, int n1, int H, floating* acc, int acc_ld,
                    floating** xrows, const floating* bias, const floating* bhn,
                    floating* h, int reset_after, const Acts* A) noexcept nogil:
    """reset_after: acc (n, 3H) = h @ W_hh^T.  Otherwise acc[:, H:2H] holds z already and
    acc[:, 2H:] = (r*h) @ W_hn^T.  Updates h in place."""
    cdef int b, j
    cdef floating r, z, nn, hp
    cdef floating* a
    cdef floating* hb
    cdef const floating* xr
    cdef floating clip = <floating>A.clip
    cdef bint fast = A.is_default and A.clip <= 0
    for b in range(n0, n1):
        a = acc + <Py_ssize_t>b * acc_ld
        xr = xrows[b]
        hb = h + <Py_ssize_t>b * H
        if reset_after:
            if fast:
                for j in range(H):
                    r = _sigmoid(a[j] + xr[j] + bias[j])
                    z = _sigmoid(a[H + j] + xr[H + j] + bias[H + j])
                    nn = _tanh(xr[2 * H + j] + bias[2 * H + j] + r * (a[2 * H + j] + bhn[j]))
                    hb[j] = (1 - z) * nn + z * hb[j]
            else:
                for j in range(H):
                    r = a[j] + xr[j] + bias[j]
                    z = a[H + j] + xr[H + j] + bias[H + j]
                    if A.clip > 0:
                        r = _clip(r, clip)
                        z = _clip(z, clip)
                    r = _act(A.f, <floating>A.fa, <floating>A.fb, r)
                    z = _act(A.f, <floating>A.fa, <floating>A.fb, z)
                    nn = xr[2 * H + j] + bias[2 * H + j] + r * (a[2 * H + j] + bhn[j])
                    if A.clip > 0:
                        nn = _clip(nn, clip)
                    nn = _act(A.g, <floating>A.ga, <floating>A.gb, nn)
                    hb[j] = (1 - z) * nn + z * hb[j]
        else:
            for j in range(H):
                z = a[H + j]
                nn = a[2 * H + j] + xr[2 * H + j] + bias[2 * H + j]
                if A.clip > 0:
                    nn = _clip(nn, clip)
                if fast:
                    nn = _tanh(nn)
                else:
                    nn = _act(A.g, <floating>A.ga, <floating>A.gb, nn)
                hb[j] = (1 - z) * nn + z * hb[j]


cdef inline void _rows_c(const fr_cell* cl, int n, floating* acc, int acc_ld,
                         floating** xrows, floating* hprev, Py_ssize_t hp_ld, floating* c,
                         floating* hout, Py_ssize_t ho_ld) noexcept nogil:
    """Vectorised fused gate pass (C, ISA-dispatched) over rows [0, n)."""
    if floating is float:
        fr_rows_f(cl, n, acc, acc_ld, xrows, hprev, hp_ld, c, hout, ho_ld)
    else:
        fr_rows_d(cl, n, acc, acc_ld, xrows, hprev, hp_ld, c, hout, ho_ld)


# ------------------------------------------------------------------------ the layer
cdef struct Dims:
    int cell, T, I, H, P, G, nrows_max, reverse, varlen, reset_after, input_forget
    int out_ld, out_col, num_threads, has_mask, mask_zero_output, chunk, write_out
    int wide_groups     # the batch-lane kernel split by unit groups (wide_ragged_mode 2)


cdef inline void _parallel_rows(int kind, int n, int nt, int H, floating* acc, int acc_ld,
                                floating** xrows, const floating* bias, const floating* bhn,
                                floating* h, floating* c, floating* hraw, int hraw_ld,
                                floating* rh, const floating* peep, int input_forget,
                                int reset_after, const Acts* A) noexcept nogil:
    """Run one fused gate pass over ``n`` rows, split over threads when it pays."""
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
                _rows_dispatch(kind, r0, r1, H, acc, acc_ld, xrows, bias, bhn, h, c, hraw,
                               hraw_ld, rh, peep, input_forget, reset_after, A)
    else:
        _rows_dispatch(kind, 0, n, H, acc, acc_ld, xrows, bias, bhn, h, c, hraw, hraw_ld,
                       rh, peep, input_forget, reset_after, A)


cdef inline void _rows_dispatch(int kind, int r0, int r1, int H, floating* acc, int acc_ld,
                                floating** xrows, const floating* bias, const floating* bhn,
                                floating* h, floating* c, floating* hraw, int hraw_ld,
                                floating* rh, const floating* peep, int input_forget,
                                int reset_after, const Acts* A) noexcept nogil:
    if kind == 0:
        _rnn_rows(r0, r1, H, acc, acc_ld, xrows, bias, h, H, A)
    elif kind == 1:
        _lstm_rows(r0, r1, H, acc, acc_ld, xrows, bias, c, hraw, hraw_ld, peep,
                   input_forget, A)
    elif kind == 2:
        _gru_rows(r0, r1, H, acc, acc_ld, xrows, bias, bhn, h, reset_after, A)
    else:
        _gru_rz_rows(r0, r1, H, acc, acc_ld, xrows, bias, h, rh, A)


cdef int _run_layer(Dims* d, const floating* x, int x_ld, const floating* wx,
                    const floating* wh, const floating* bias, const floating* bhn,
                    const floating* wr, const floating* peep,
                    const Py_ssize_t* offsets, const Py_ssize_t* nsteps, const Py_ssize_t* lens,
                    const unsigned char* mask, floating* h, floating* c, floating* out,
                    const Acts* A, const fr_cell* cl) noexcept nogil:
    """Returns 0 on success, -1 when scratch memory could not be allocated."""
    cdef int T = d.T, I = d.I, H = d.H, G = d.G, GH = d.G * d.H
    cdef int P = d.P if d.P > 0 else d.H          # size of h (recurrent input / output)
    cdef int B = d.nrows_max, nt = d.num_threads
    cdef int chunk = d.chunk
    cdef int s, s0, s1, b, n, t, j, kind
    cdef Py_ssize_t row0, nrows, rr, src, dst
    cdef floating* xp = NULL
    cdef floating* stage = NULL
    cdef floating* acc = NULL
    cdef floating* hraw = NULL
    cdef floating* rh = NULL
    cdef floating* hprev = NULL
    cdef floating* cprev = NULL
    cdef floating* lastout = NULL
    cdef floating** xrows = NULL
    cdef int rc = -1
    cdef bint gather = d.reverse and d.varlen
    cdef Py_ssize_t maxrows = 0
    cdef bint ok

    # the largest number of packed rows a chunk of time steps can hold
    s0 = 0
    while s0 < T:
        s1 = s0 + chunk
        if s1 > T:
            s1 = T
        rr = offsets[s1 - 1] + nsteps[s1 - 1] - offsets[s0]
        if rr > maxrows:
            maxrows = rr
        s0 = s1

    xp = <floating*>fr_amalloc(sizeof(floating) * maxrows * GH + 1)
    acc = <floating*>fr_amalloc(sizeof(floating) * B * GH + 1)
    xrows = <floating**>malloc(sizeof(floating*) * B + 1)
    ok = xp != NULL and acc != NULL and xrows != NULL
    if gather:
        stage = <floating*>fr_amalloc(sizeof(floating) * maxrows * I + 1)
        ok = ok and stage != NULL
    if d.cell == 1 and d.P > 0:
        hraw = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and hraw != NULL
    if d.cell == 2 and not d.reset_after:
        rh = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        ok = ok and rh != NULL
    if d.has_mask:
        hprev = <floating*>fr_amalloc(sizeof(floating) * B * P + 1)
        cprev = <floating*>fr_amalloc(sizeof(floating) * B * H + 1)
        lastout = <floating*>fr_amalloc(sizeof(floating) * B * P + 1)
        ok = ok and hprev != NULL and cprev != NULL and lastout != NULL
        if lastout != NULL:
            memset(lastout, 0, sizeof(floating) * B * P)
    if ok:
        _time_loop(d, x, x_ld, wx, wh, bias, bhn, wr, peep, offsets, nsteps, lens, mask,
                   h, c, out, A, maxrows, xp, stage, acc, hraw, rh, hprev, cprev, lastout, xrows,
                   cl)
        rc = 0
    free(xp)
    free(stage)
    free(acc)
    free(hraw)
    free(rh)
    free(hprev)
    free(cprev)
    free(lastout)
    free(xrows)
    return rc


cdef void _time_loop(Dims* d, const floating* x, int x_ld, const floating* wx,
                     const floating* wh, const floating* bias, const floating* bhn,
                     const floating* wr, const floating* peep,
                     const Py_ssize_t* offsets, const Py_ssize_t* nsteps, const Py_ssize_t* lens,
                     const unsigned char* mask, floating* h, floating* c, floating* out,
                     const Acts* A, Py_ssize_t maxrows, floating* xp, floating* stage,
                     floating* acc, floating* hraw, floating* rh, floating* hprev,
                     floating* cprev, floating* lastout, floating** xrows,
                     const fr_cell* cl) noexcept nogil:
    cdef int T = d.T, I = d.I, H = d.H, G = d.G, GH = d.G * d.H
    cdef int P = d.P if d.P > 0 else d.H
    cdef int nt = d.num_threads
    cdef int chunk = d.chunk
    cdef int s, s0, s1, b, n, t, kind
    cdef Py_ssize_t row0, nrows, dst
    cdef bint gather = d.reverse and d.varlen
    cdef int blas_tok = fr_blas_enter(nt)
    if d.cell == 0:
        kind = 0
    elif d.cell == 1:
        kind = 1
    else:
        kind = 2

    s0 = 0
    while s0 < T:
        s1 = s0 + chunk
        if s1 > T:
            s1 = T
        # ---- input projection of steps [s0, s1) in one GEMM
        if gather:
            # step s, row b reads input time lens[b]-1-s: stage those rows contiguously
            dst = 0
            for s in range(s0, s1):
                for b in range(nsteps[s]):
                    t = <int>lens[b] - 1 - s
                    memcpy(stage + dst * I, x + (offsets[t] + b) * x_ld, sizeof(floating) * I)
                    dst += 1
            gemm_rm(False, True, <int>dst, GH, I, <floating>1, stage, I, wx, I,
                    <floating>0, xp, GH)
        elif d.reverse:
            # dense reverse: steps [s0, s1) are input times (T-s1 .. T-1-s0), contiguous
            row0 = offsets[T - s1]
            nrows = offsets[T - 1 - s0] + nsteps[T - 1 - s0] - row0
            gemm_rm(False, True, <int>nrows, GH, I, <floating>1, x + row0 * x_ld, x_ld,
                    wx, I, <floating>0, xp, GH)
        else:
            row0 = offsets[s0]
            nrows = offsets[s1 - 1] + nsteps[s1 - 1] - row0
            gemm_rm(False, True, <int>nrows, GH, I, <floating>1, x + row0 * x_ld, x_ld,
                    wx, I, <floating>0, xp, GH)

        # ---- time steps
        for s in range(s0, s1):
            n = <int>nsteps[s]
            # where each active row's projected input lives, and its input time
            for b in range(n):
                if gather:
                    xrows[b] = xp + (offsets[s] - offsets[s0] + b) * GH
                elif d.reverse:
                    xrows[b] = xp + (offsets[T - 1 - s] - offsets[T - s1] + b) * GH
                else:
                    xrows[b] = xp + (offsets[s] - offsets[s0] + b) * GH
            if d.has_mask:
                memcpy(hprev, h, sizeof(floating) * n * P)
                if d.cell == 1:
                    memcpy(cprev, c, sizeof(floating) * n * H)
            # recurrent GEMM (BLAS, nt threads), then a serial vectorised gate pass: no
            # OpenMP region here, so OpenBLAS's threads have the cores to themselves
            if kind == 2 and not d.reset_after:
                gemm_rm(False, True, n, 2 * H, P, <floating>1, h, P, wh, P,
                        <floating>0, acc, GH)
                _parallel_rows(3, n, 1, H, acc, GH, xrows, bias, bhn, h, c, hraw, H, rh,
                               peep, d.input_forget, d.reset_after, A)
                gemm_rm(False, True, n, H, H, <floating>1, rh, H, wh + 2 * H * P, P,
                        <floating>0, acc + 2 * H, GH)
                _parallel_rows(2, n, 1, H, acc, GH, xrows, bias, bhn, h, c, hraw, H, rh,
                               peep, d.input_forget, d.reset_after, A)
            else:
                gemm_rm(False, True, n, GH, P, <floating>1, h, P, wh, P,
                        <floating>0, acc, GH)
                if kind == 1 and d.P > 0:
                    _rows_c(cl, n, acc, GH, xrows, <floating*>NULL, 0, c, hraw, H)
                    gemm_rm(False, True, n, P, H, <floating>1, hraw, H, wr, H,
                            <floating>0, h, P)
                elif kind == 1:
                    _rows_c(cl, n, acc, GH, xrows, <floating*>NULL, 0, c, h, H)
                else:
                    _rows_c(cl, n, acc, GH, xrows, h, H, <floating*>NULL, h, H)
            # masked rows (Keras semantics): carry the state, repeat or zero the output
            for b in range(n):
                if gather:
                    t = <int>lens[b] - 1 - s
                elif d.reverse:
                    t = T - 1 - s
                else:
                    t = s
                dst = (offsets[t] + b) * d.out_ld + d.out_col
                if d.has_mask and not mask[offsets[t] + b]:
                    memcpy(h + <Py_ssize_t>b * P, hprev + <Py_ssize_t>b * P, sizeof(floating) * P)
                    if d.cell == 1:
                        memcpy(c + <Py_ssize_t>b * H, cprev + <Py_ssize_t>b * H,
                               sizeof(floating) * H)
                    if not d.write_out:
                        pass
                    elif d.mask_zero_output:
                        memset(out + dst, 0, sizeof(floating) * P)
                    else:
                        memcpy(out + dst, lastout + <Py_ssize_t>b * P, sizeof(floating) * P)
                else:
                    if d.write_out:
                        memcpy(out + dst, h + <Py_ssize_t>b * P, sizeof(floating) * P)
                    if d.has_mask:
                        memcpy(lastout + <Py_ssize_t>b * P, h + <Py_ssize_t>b * P,
                               sizeof(floating) * P)
        s0 = s1
    if blas_tok >= 0:
        fr_blas_leave(blas_tok)


# Path choice.  "small": packed per-thread matvec kernel in one persistent parallel region
# (no BLAS in the time loop; units in the vector lanes); "wide": the batch-lane kernel
# (fr_wide_t.h: batch rows in the lanes, weights broadcast, input projection fused into the
# step), chosen for SimpleRNN where wide_rnn_at says; "blas": per-step BLAS GEMM +
# vectorised gate pass.
# Measured on the 2-core AVX2 EPYC (in-process, paths alternating call by call, 12-25
# rounds, ratio of medians wide/small; the rule with AVX2, WIDE_MIN_BATCH; AVX-512's in
# wide_rnn_at): SimpleRNN B=8 0.76-0.83, B=16 0.79-0.80, B=64 H=512
# 0.76, B=256 H=128 0.77, float64 B=8/16 0.76/0.80, B=4 1.5 (half the lanes empty), B=12
# 0.97; LSTM B=8/16/32/64 1.07/1.01/0.98/1.06, GRU B=16/64 1.04/1.13 (the gate math, the
# same in both, and two threads' memory traffic weigh more than the weight stream the
# lanes save): LSTM and GRU stay on the packed kernel.
# _force_path is a test hook: 0 automatic, 1 small whenever possible, 2 BLAS, 3 wide
# whenever possible (else small).
cdef int _force_path = 0
SMALL_MAX_BATCH = 8
WIDE_MIN_BATCH = 8


def _set_path(int mode):
    """Test hook: 0 automatic, 1 force the small-batch kernel (where it applies), 2 BLAS,
    3 the batch-lane kernel (where it applies, else the small-batch one).  Returns the
    previous value."""
    global _force_path
    _hooks_changed()
    old = _force_path
    _force_path = mode
    return old


include "_place.pxi"


def _set_min_parallel_work(long n):
    """Test hook: multiply-adds per step below which a layer runs on one thread
    (default 16384; 0 makes every multi-thread path run on tiny test shapes).
    Returns the previous value."""
    global fr_min_par_work
    _hooks_changed()
    old = fr_min_par_work
    fr_min_par_work = n
    return old


def _set_rowsplit_min(int n):
    """Tuning hook: batch rows from which the packed kernel splits rows rather than
    units between threads (16; 8 on Zen 4, set at import).  Returns the previous value."""
    global fr_rowsplit_min
    _hooks_changed()
    old = fr_rowsplit_min
    fr_rowsplit_min = n
    return old


def _set_spin_barrier(int mode):
    """Test hook: the packed kernel's per-step barrier (unit split) spins on counters (1,
    the default) or is OpenMP's (0).  Returns the previous value."""
    global fr_barrier_spin
    _hooks_changed()
    old = fr_barrier_spin
    fr_barrier_spin = mode
    return old


fr_swpf_init()


def _set_swpf(int mode):
    """Tuning / test hook: the packed matvec's software prefetch at the AVX-512 level on
    (1) or off (0); -1 chooses by the CPU again (AMD on but family 0x19, others off).
    Returns the previous setting (0 / 1).  The arithmetic is the same either way."""
    global fr_swpf_on
    _hooks_changed()
    old = fr_swpf_on
    if mode < 0:
        fr_swpf_init()
    else:
        fr_swpf_on = 1 if mode else 0
    return old


def _set_step_overlap(int mode):
    """Tuning / test hook: the packed kernel's unit split overlaps the wait for the other
    threads' h with the product over the thread's own units (1), or ends every step at a
    barrier (0); -1 (the default) chooses by the size of a thread's recurrent weights
    against the L2 cache.  Returns the previous value."""
    global fr_step_overlap
    _hooks_changed()
    old = fr_step_overlap
    fr_step_overlap = mode
    return old


def step_overlap_applies(int cell, int batch, int hidden_size, int num_threads,
                         int itemsize=4):
    """Whether the packed kernel's unit split (batch below 16) overlaps each step's wait
    for the other thread's h with the product over the thread's own half of the units,
    by the automatic rule (LSTM / GRU reset_after, recurrent weights of one of 2 threads
    between an eighth (batch 1: any) and half of the L2 cache; never on an AMD CPU,
    :func:`amd`, nor where :func:`amd_f19` is forced on).  Only on 2 threads; where the rule holds, other thread counts
    sum the product in the same halves (same bits) without overlapping.  cell: CELL_*
    code."""
    cdef int G = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    cdef int U = fr_unit(itemsize)
    cdef int nb = (hidden_size + U - 1) // U
    if num_threads != 2 or nb < 2 or batch >= fr_rowsplit_min:
        return False
    return bool(fr_overlap_auto(cell, G, hidden_size, U, nb, 2, batch, itemsize))


def _set_gate_defer(int mode):
    """Test hook: the packed kernel's LSTM / GRU gate math batched over several (row,
    unit block) pairs (1, the default) or run per block (0).  Returns the previous value."""
    global fr_dgate_mode
    _hooks_changed()
    old = fr_dgate_mode
    fr_dgate_mode = mode
    return old


def _set_isa_level(int level):
    """Test hook: cap the ISA level of the C kernels (0 baseline, 1 AVX2+FMA, 2 AVX-512;
    -1 automatic).  Returns the previous value."""
    global fr_force_level
    _hooks_changed()
    old = fr_force_level
    fr_force_level = level
    return old


def isa():
    """Instruction set the C kernels dispatch to on this CPU."""
    return fr_isa().decode()


def small_path_applies(int cell, int proj_size, int reset_after):
    """Whether the packed kernel supports this configuration at all (every one: a
    projection only on LSTM, which is the only cell with one)."""
    return proj_size == 0 or cell == CELL_LSTM


def wide_path_applies(int cell, int proj_size, int reset_after, int fast=1):
    """Whether the batch-lane kernel supports this configuration: no projection, the
    default activations (``fast``; clip, peepholes and input_forget allowed)."""
    return proj_size == 0 and bool(fast)


def avx512_half():
    """Whether the C kernels run AVX-512 on a CPU that executes each 512-bit instruction
    as two 256-bit halves (AMD Zen 4): the 32 registers without the doubled FMA
    throughput, where the batch-lane kernel and the LSTM route have their own rules."""
    return fr_level() == 2 and bool(fr_amd_f19())


def amd_f19():
    """Whether this CPU is an AMD of family 0x19 (Zen 3, Zen 4): the batch-lane kernel,
    the LSTM route, the row split and the pair take their own rules there."""
    return bool(fr_amd_f19())


def _set_amd_f19(int mode):
    """Test hook: treat this CPU as an AMD family 0x19 (1) or not (0) in this module's
    rules (the batch-lane kernel's, the overlapped unit split's); -1 reads CPUID again.
    Returns the previous value."""
    global fr_f19_cache
    _hooks_changed()
    old = fr_amd_f19()
    fr_f19_cache = -1 if mode < 0 else (1 if mode else 0)
    return old


include "_amd.pxi"


def wide_ragged_mode(int cell, int batch, int num_threads, int lanes, int half=-1,
                     int amd_cpu=-1):
    """How a ragged batch (lengths that differ, sorted longest first) runs where the
    size rules choose the batch-lane kernel (and its lanes are filled: _lanes_filled):
    0 on the packed kernel instead, 1 as a dense batch, 2 on the batch-lane kernel split
    by unit groups (not by panels of rows); ``lanes``: rows a panel; ``half`` /
    ``amd_cpu`` < 0: this CPU's answers.

    Half-width AVX-512 (Zen 4): 0 (bench_paths.py --ragged, lengths T/2..T, batch-lane /
    packed time: 2 threads GRU B = 64, 128 at H = 256, 512 1.18-1.24, SimpleRNN B = 64
    H = 512 1.11; one thread GRU B = 64 1.05, SimpleRNN 1.04; dense batches there
    0.97-1.01).  Other AMD CPUs, where the threads would split the panels
    (fr_wide_layer's bypanel: 2+ threads, at least two panels a thread for LSTM / GRU,
    one for SimpleRNN, as many each): the rows sorted longest first, the first thread's
    panels hold the longest sequences and it works longest, so an LSTM / GRU 0 and a
    SimpleRNN 2 (Zen 5, ``PYTHONPATH=. python bench/bench_paths.py --ragged``, lengths
    T/2..T, T = 50, 2 threads, time / packed kernel, medians of 8-10 rounds: LSTM B = 64,
    128 at H = 256, 512 panels 1.12-1.19, unit groups 1.00-1.05; GRU 1.16-1.19 /
    1.02-1.03; float64 LSTM B = 64 1.13-1.18 / 1.00-1.02; SimpleRNN B = 32-128 H = 256,
    512 panels 0.96-1.05, unit groups 0.86-0.97).  Elsewhere 1 (the Intel Xeon's rules,
    not measured there)."""
    cdef int nP = (batch + lanes - 1) // max(1, lanes)
    cdef int nt = max(1, num_threads)
    if (fr_level() == 2 and fr_amd_f19() != 0) if half < 0 else half != 0:
        return 0
    if ((fr_amd() if amd_cpu < 0 else amd_cpu) != 0 and nt > 1 and nP % nt == 0
            and nP >= (nt if cell == CELL_RNN else 2 * nt) and not fr_wide_force_groups):
        return 2 if cell == CELL_RNN else 0
    return 1


cdef inline bint _lanes_full(Py_ssize_t padded, Py_ssize_t rows) noexcept nogil:
    """The batch-lane kernel's bound on empty lanes: ``rows`` real rows in ``padded``
    lanes, at most 1/8 of them padding (dense batches: wide_gates_at, wide_rnn_at; ragged
    ones, summed over the steps: _lanes_filled)."""
    return 8 * padded <= 9 * rows


cdef inline bint _half(int half):
    """half < 0: whether this CPU is an AMD of family 0x19 (the callers have checked
    that the kernels run AVX-512, so this is avx512_half()); else the caller's value."""
    return bool(fr_amd_f19()) if half < 0 else half != 0


def wide_gates_at(int cell, int batch, int hidden_size, int input_size=-1,
                  int itemsize=4, int num_threads=2, int half=-1, int amd_cpu=-1):
    """Whether an LSTM / GRU direction of ``batch`` rows runs faster on the batch-lane
    kernel than on the packed one: with AVX-512 only (32 registers: 24 accumulators per
    weight broadcast), from 16 rows with at most 1/8 of the lanes padding, and weights
    (G*H*(I+H) values) of at least 1 MiB.  Measured on an Intel Xeon with AVX-512 (2
    cores, 2 MiB L2 each; bench/bench_paths.py, batch-lane / packed time, 2 threads):
    H=512 B=16..128 0.69-0.79 (B=72: 0.79), H=384 0.80-0.82, H=256 B=16/32/48 0.84-0.94,
    LSTM H=192 0.95, one thread 0.79-0.88, float64 B=16/64 0.76-0.86; slower with padded
    lanes (B=8, 12, 24: 1.07-1.58; float64 B=8 1.02) and small weights (GRU H=192 1.07,
    H=128 1.0-1.16).  With AVX2 (16 registers) it measured 0.98-1.15 (Zen 3/4): not
    taken there.

    Half-width AVX-512 (``half``; < 0: this CPU's :func:`avx512_half`), measured on a
    Zen 4 EPYC (2 cores, 1 MiB L2 each, T = 50, 2 threads): the packed kernel already
    runs at 85-90% of the FMA ceiling there, and the batch-lane kernel loses where a
    thread has one or two panels of rows (float32 B = 16, 32, 48 at H = 192-512:
    1.03-1.17; float64 GRU B = 16: 1.25) and wins a little from 32 rows a thread with
    the panels shared evenly (B = 64, 128 at H = 192-512: 0.97-1.00; float64 B = 64
    0.98-0.99; one thread B = 32 0.93-0.98).  So there: at least 32 rows a thread and
    the panels a multiple of the threads.

    Other AMD CPUs (full-width AVX-512, ``amd_cpu``; < 0: this CPU's :func:`amd`),
    measured on a Zen 5 EPYC (2 cores, 1 MiB L2 each; ``PYTHONPATH=. python
    bench/bench_paths.py``, T = 50-100, 6-8 rounds, medians of batch-lane / packed): the
    packed kernel runs at 83-85% of the FMA ceiling there too, and the batch-lane kernel
    wins from four panels of rows (LSTM B = 64 H = 256-512 0.93-0.98, GRU H = 384, 512
    0.97-0.99, float64 B = 64 0.92-0.94; one thread LSTM H = 512 0.92-0.95, H = 256
    1.01-1.02) or large weights (LSTM B = 32 H = 384, 4.5 MiB, 0.92-0.95; GRU B = 16
    H = 512 0.99) but loses with fewer panels and smaller weights (GRU B = 16 H = 256 1.04,
    B = 32 H = 320 1.08, float64 B = 16 H = 192, 256 1.01-1.04; one thread LSTM / GRU
    B = 16 H = 256 1.06 / 1.09): so there from four panels or 4 MiB of weights.
    ``input_size`` < 0: the hidden size."""
    cdef long G, lanes, padded, I = hidden_size if input_size < 0 else input_size
    cdef long nt = max(1, num_threads)
    if cell == CELL_RNN or fr_level() != 2 or batch < 16 or itemsize <= 0:
        return False
    G = 4 if cell == CELL_LSTM else 3
    lanes = 64 // itemsize
    padded = (batch + lanes - 1) // lanes * lanes
    cdef long wbytes = G * hidden_size * (I + hidden_size) * itemsize
    if _half(half):
        if batch < 32 * nt or (padded // lanes) % nt != 0:
            return False
    elif (fr_amd() if amd_cpu < 0 else amd_cpu) != 0 and padded // lanes < 4 \
            and wbytes < (4 << 20):
        return False
    return _lanes_full(padded, batch) and wbytes >= (1 << 20)


def wide_rnn_at(int cell, int batch, int hidden_size, int num_threads, int input_size=-1,
                int itemsize=4, int half=-1):
    """Whether a SimpleRNN direction of ``batch`` rows on ``num_threads`` threads runs
    faster on the batch-lane kernel than on the packed one.  With AVX2, from
    WIDE_MIN_BATCH rows (see above).  With AVX-512 (16 float32 / 8 float64 lanes, the
    kernel's panel of rows): lanes at most 1/8 padding, H >= 64, and each thread gets
    the same number of panels, or the weights (H*(I+H) values) take at least 1 MiB.
    Measured on an Intel Xeon (2 MiB L2 a core; ``bench_paths.py``, T = 100, batch-lane
    / packed time), float32, 2 threads: B = 32, 64, 96, 128, 256 at H = 64..512
    0.78-0.95 (B = 128 H = 64: 1.02), H = 32 1.09-1.23; one panel (B = 16) H = 512
    0.83, H = 256 1.03, H = 64-128 1.28-1.66; three or five panels (B = 48, 80) H = 64-128
    1.15-1.68, H = 256 0.99-1.04; half-empty lanes (B = 8) 1.57-2.63.  One thread: B = 16
    H = 64-512 0.77-0.88, H = 32 1.03.  float64, 2 threads: B = 16, 32, 48, 64 H = 64-512
    0.75-0.85 (B = 16 H = 512: 1.07); one panel (B = 8) H = 256, 512 0.93, 0.84, H = 32,
    64 1.37, 1.21; three panels (B = 24) H = 256, 512 0.94, 0.81, H = 32, 64 1.44-1.48.
    Half-width AVX-512 (``half``, as in :func:`wide_gates_at`; Zen 4, 2 threads): the
    panels shared evenly still win (B = 32, 64, 128 at H = 64-512 0.83-1.03, float64
    B = 16-64 0.92-0.97; one thread B = 16-48 0.97-0.98) but large weights no longer
    make up for an uneven share (B = 16, 48 at H = 256, 512: 1.07-1.11), so there only
    the even share counts.  ``input_size`` < 0: the hidden size."""
    cdef long lanes, panels, I = hidden_size if input_size < 0 else input_size
    if cell != CELL_RNN or batch < 1 or itemsize <= 0:
        return False
    if fr_level() != 2:
        return batch >= WIDE_MIN_BATCH
    lanes = 64 // itemsize
    panels = (batch + lanes - 1) // lanes
    if not _lanes_full(panels * lanes, batch) or hidden_size < 64:
        return False
    return (panels % max(1, num_threads) == 0
            or (not _half(half)
                and <long>hidden_size * (I + hidden_size) * itemsize >= (1 << 20)))


def choose_path(int cell, int batch, int hidden_size, int proj_size, int reset_after,
                int num_threads, int fast=1, int input_size=-1, int itemsize=4):
    """'small', 'wide' or 'blas' for one layer direction with ``batch`` rows (``fast``:
    the cell's default activations, whatever clip, peepholes or input_forget;
    ``input_size`` < 0: the hidden size)."""
    if not small_path_applies(cell, proj_size, reset_after) or _force_path == 2:
        return "blas"
    if _force_path == 1:
        return "small"
    if wide_path_applies(cell, proj_size, reset_after, fast) and (
            _force_path == 3
            or wide_rnn_at(cell, batch, hidden_size, num_threads, input_size, itemsize)
            or wide_gates_at(cell, batch, hidden_size, input_size, itemsize,
                             num_threads)):
        return "wide"
    return "small"


# _pair_mode is a test hook: 0 automatic, 1 both directions at once wherever possible,
# 2 never (one direction after the other).
cdef int _pair_mode = 0
cdef Py_ssize_t _pair_chunk_bytes = 256 << 10


def _set_pair_chunk_bytes(Py_ssize_t n):
    """Tuning hook: bytes of projected input per direction and chunk in :func:`run_pair`."""
    global _pair_chunk_bytes
    _hooks_changed()
    old = _pair_chunk_bytes
    _pair_chunk_bytes = n
    return old


def _set_pair(int mode):
    """Test hook: 0 automatic, 1 force :func:`run_pair` where it applies, 2 never.
    Returns the previous value."""
    global _pair_mode
    _hooks_changed()
    old = _pair_mode
    _pair_mode = mode
    return old


def _sysfs_l2_bytes():
    """cpu0's L2 cache in bytes from Linux sysfs, or 0."""
    import glob
    try:
        for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
            with open(d + "/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(d + "/size") as f:
                txt = f.read().strip().upper()
            return int(txt.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(txt[-1:], 1)
    except (OSError, ValueError):
        pass
    return 0


# per-core caches: one thread running a whole direction wants its recurrent weights in
# L2; the unit split wins while each thread's half of them fits in L1.  Read by the C
# library's sysconf (Python's os.sysconf lacks these names on some builds, this one
# included, and the pair rule then saw 32 KiB / 1 MiB on every machine), the L2 else
# from sysfs; the layers' rules (route, chunk size) read the same value.
_L1_BYTES = fr_l1d_bytes() or (32 << 10)
_L2_BYTES = fr_l2_bytes() or _sysfs_l2_bytes() or (1 << 20)


def _zen4():
    """AMD family 0x19 with 1 MiB of L2 a core or more: Zen 4 (Zen 3 has 512 KiB), where
    the pair rule and the row split have their own measurements."""
    return bool(fr_amd_f19()) and _L2_BYTES >= (1 << 20)


# Zen 4: the packed kernel splits rows between threads from 8 rows (each thread 4+ rows
# and all the weights) rather than 16.  Measured there (2 threads, T=100, in-process
# alternating, rows from 8 / from 16): SimpleRNN B=8-12 H=64-1024 0.58-0.95, GRU B=8
# H=64-512 0.74-1.00, B=10-12 H=128-512 0.90-1.04, LSTM H=64-96 (larger ones take the
# LSTM route there) B=8-12 0.94-1.03.
if _zen4():
    fr_rowsplit_min = 8


def pair_applies(int cell, int batch, int steps, int hidden_size, int proj_size,
                 int reset_after, int num_threads, int itemsize=4, int fast=1):
    """Whether a bidirectional layer runs its two directions at the same time
    (:func:`run_pair`, one thread each) rather than one after the other: 0 no, 1 yes
    where the layer does not go through the LSTM route (layers._fused_lstm_ok), 2 yes,
    before that route too.  Chosen when the packed kernel would split the units of a
    small batch between threads (a barrier per step): two independent single-thread
    loops have no barrier at all; on Zen 4 (``_zen4``) below 16 rows whatever the split."""
    cdef long G = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    # recurrent multiply-adds a row and step (with a projection: the gates' over P
    # inputs and the projection's)
    cdef long rec = (G * (proj_size or hidden_size) + proj_size) * hidden_size
    if _pair_mode == 2 or num_threads < 2 or batch <= 0:
        return 0
    if choose_path(cell, batch, hidden_size, proj_size, reset_after, num_threads,
                   fast, -1, itemsize) != "small":
        return 0
    if _pair_mode == 1:
        return 1
    # tiny layers: the thread start-up costs more than the second direction
    if rec * batch * steps < fr_min_par_work:
        return 0
    cdef long wbytes = rec * itemsize
    if _zen4():
        # Measured on a Zen 4 EPYC (1 MiB L2, 2 threads), 2-layer bidirectional T=100,
        # in-process alternating, pair (before the LSTM route) / the choice before this
        # branch (unit split, row split or the route): B=1-8 at H=64-512 0.55-0.99
        # (LSTM 0.55-0.97, GRU 0.56-0.99, SimpleRNN H=128-1024 0.55-0.97); against the
        # LSTM route B=4-12 0.61-0.93, B=15 H=256 0.86; GRU B=12 H=256 0.87, SimpleRNN
        # 0.80, GRU B=15 H=512 1.00; at batch 1 beyond two L2s GRU H=512 (3 MiB)
        # 1.05-1.06, LSTM H=512 (4 MiB) 0.97-0.99.
        if batch >= 16:
            return 0
        return 0 if batch == 1 and wbytes > 2 * _L2_BYTES else 2
    if batch >= fr_rowsplit_min:
        return 0        # row split: already barrier-free
    # Smaller L2: measured on a 2-vCPU EPYC (32 KiB L1d, 1 MiB L2), fresh processes:
    # * batch 1, one direction's recurrent weights in L2 but not half of them in L1: the
    #   per-step barrier dominates, pair wins (LSTM H=96/192 0.45-0.8x, GRU H=256 0.92x,
    #   RNN H=256 0.88x);
    # * batch 8-15 with weights beyond L2 (2-layer BiLSTM H=256 B=8): as fast as the unit
    #   split when its scratch is warm (0.99-1.01x), 0.88x when the allocator hands it
    #   fresh pages (run_pair's capped chunk keeps the scratch small);
    # * otherwise mixed or slower (LSTM H=192 B=2 0.9-1.15x, GRU H=128 B=4 1.35x, LSTM
    #   H=64 B=8 1.4x (half the weights in L1), LSTM H=256 B=1 1.12x): one direction
    #   after the other, as before.
    if _L2_BYTES >= (2 << 20):
        # Measured on an Intel Xeon (2 vCPUs, 48 KiB L1d, 2 MiB L2), 2-layer
        # bidirectional T=100, in-process interleaved, pair / the automatic choice before
        # this branch (unit split or the LSTM route): wherever one direction's recurrent
        # weights fit in 3/4 of the L2 the pair won at every batch below the row split,
        # route included (LSTM H=16-128 B=2-12 0.54-0.89x, H=192 0.77-0.93x, H=256
        # 0.90-0.98x; GRU H=32-128 B=2-8 0.57-0.78x, H=256 0.90-0.92x); beyond it it lost
        # (LSTM H=384 B=2-12 1.01-1.25x, H=512 1.17-1.46x; GRU H=384 0.99-1.12x).  At
        # batch 1 it won small layers too (LSTM H=16-64 0.75-0.81x), tied at LSTM
        # H=128-256 and GRU H=256 (0.99-1.01x), and lost from half the L2 on (GRU H=320
        # 1.06x, LSTM H=320 1.13x).  2: before the LSTM route as well.  The EPYC below
        # (1 MiB L2) had measured the opposite at batch 2-8; which property of the two
        # machines decides is not known, so the rule keys on the L2 it can see.
        if batch == 1:
            return 2 if wbytes * 2 <= _L2_BYTES else 0
        return 2 if wbytes * 4 <= 3 * _L2_BYTES else 0
    if batch == 1:
        return int(wbytes > 2 * _L1_BYTES and wbytes * 4 <= 3 * _L2_BYTES)
    if batch >= 8:
        return int(wbytes * 4 > 3 * _L2_BYTES)
    return 0


def pack_recurrent(wh, int hidden_size, int gates, int cell, int reset_after):
    """Packed recurrent weights for the packed kernel; GRU reset_after=False keeps r, z
    and n apart (n multiplies r*h, known only after r)."""
    if cell == CELL_GRU and not reset_after:
        H = hidden_size
        return aligned_copy(np.concatenate([pack_units(np.ascontiguousarray(wh[:, :2 * H]), H, 2),
                                            pack_units(np.ascontiguousarray(wh[:, 2 * H:]), H, 1)]))
    return pack_units(wh, hidden_size, gates)


def pack_units(w, int hidden_size, int gates):
    """Unit-block packing of a transposed weight ``w`` (K, G*H) for the small-batch
    kernel: ``(nb, K, G, U)`` with U = :func:`unit_block` (the vector width of the ISA level
    the kernels run now), zero padded, flat and 64-byte aligned (fastrnn._mem)."""
    w = np.asarray(w)
    if w.dtype != np.float32 and w.dtype != np.float64:
        raise TypeError(f"pack_units: float32 or float64 weights required, got {w.dtype}")
    cdef int U = fr_unit(w.dtype.itemsize)
    cdef int H = hidden_size, G = gates
    cdef int K = w.shape[0]
    cdef int nb = (H + U - 1) // U
    w3 = w.reshape(K, G, H)
    if nb * U != H:
        w3 = np.concatenate([w3, np.zeros((K, G, nb * U - H), w.dtype)], axis=2)
    return aligned_copy(w3.reshape(K, G, nb, U).transpose(2, 0, 1, 3))


def wide_rows():
    """Accumulator rows per unit group of the batch-lane kernel at the current ISA level
    (24 with AVX-512's 32 registers, else 12); packings are valid only for it."""
    return fr_wide_rows()


def _wide_groups(wx, wh, bias, bhn, int H, int Gr, int gate0, int R):
    """pack_wide's groups of gates gate0 .. gate0 + Gr - 1 (bhn: the h bias of a
    reset_after GRU's n gate, else None)."""
    cdef int UG = R // Gr
    cdef int nG = (H + UG - 1) // UG
    j = np.arange(nG * UG).reshape(nG, UG, 1)
    q = np.arange(Gr).reshape(1, 1, Gr)
    valid = np.broadcast_to(j < H, (nG, UG, Gr)).reshape(nG, R)
    cols = ((gate0 + q) * H + np.minimum(j, H - 1)).reshape(nG, R)
    px = np.where(valid[:, None, :], wx[:, cols].transpose(1, 0, 2), 0)      # (nG, I, R)
    ph = np.where(valid[:, None, :], wh[:, cols].transpose(1, 0, 2), 0)      # (nG, H, R)
    bx = np.where(valid, np.asarray(bias)[cols], 0)[:, None, :]
    if bhn is not None:
        bh = np.where(valid & (np.broadcast_to(q, (nG, UG, Gr)).reshape(nG, R) == 2),
                      np.asarray(bhn)[np.minimum(j, H - 1)].reshape(nG, UG, 1).repeat(Gr, 2)
                      .reshape(nG, R), 0)[:, None, :]
    else:
        bh = np.zeros((nG, 1, R), wx.dtype)
    return np.concatenate([px, ph, bx, bh], axis=1)


def pack_wide(wx, wh, bias, bhn, int hidden_size, int cell, int reset_after=1):
    """Row-group packing for the batch-lane kernel (see fr_wide_t.h): per group of
    UG = rows / Gr hidden units ``[x panel (I, R)][h panel (H, R)][x bias (R)][h bias (R)]``
    with row ``u * Gr + q`` = gate q of unit ``g * UG + u`` (zero past H).  ``wx`` (I, G*H),
    ``wh`` (H, G*H) transposed weights, ``bias`` (G*H) fused, ``bhn`` (H) GRU b_hn.  A GRU
    with reset_after=False has the r, z groups (Gr 2) and then the n groups (Gr 1)."""
    wx = np.asarray(wx)
    wh = np.asarray(wh)
    dt = wx.dtype
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"pack_wide: float32 or float64 weights required, got {dt}")
    cdef int R = fr_wide_rows(), H = hidden_size
    if cell == CELL_GRU and not reset_after:
        packed = np.concatenate([_wide_groups(wx, wh, bias, None, H, 2, 0, R),
                                 _wide_groups(wx, wh, bias, None, H, 1, 2, R)])
    else:
        packed = _wide_groups(wx, wh, bias, bhn if cell == CELL_GRU else None, H,
                              4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1),
                              0, R)
    return aligned_copy(packed.astype(dt, copy=False))


def unit_block(dtype):
    """Units per packed block (the vector width of the current ISA level) for a dtype:
    16/8/4 float32, 8/4/2 float64 (AVX-512 / AVX2 / baseline).  Packed weights are valid
    only for the unit block they were packed with."""
    # a layer asks on every call: skip the dtype conversion when it already is one
    return fr_unit((dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)).itemsize)


cdef int _check_packed(Py_ssize_t n, int H, int K, int G, int U) except -1:
    """Raise unless n values are a unit-block packing of (K, G*H) weights with U units."""
    cdef Py_ssize_t want = <Py_ssize_t>((H + U - 1) // U) * K * G * U
    if n != want:
        raise ValueError(f"packed weights have {n} values, expected {want} for unit block "
                         f"{U}: they were packed for another ISA level; pack them again")
    return 0


cdef void _fill_cell(fr_cell* cl, int cell, int G, int H, int K, int U, const Acts* A,
                     int use_peep, int input_forget, int reset_after, const void* wp,
                     const void* bias, const void* bhn, const void* peep) noexcept nogil:
    cl.cell = cell
    cl.G = G
    cl.H = H
    cl.K = K
    cl.U = U
    cl.nb = (H + U - 1) // U
    cl.fast = A.is_default and A.clip <= 0 and not use_peep and not input_forget
    cl.rnn_relu = cell == 0 and A.f == A_RELU
    cl.f = A.f
    cl.g = A.g
    cl.h = A.h
    cl.fa = A.fa
    cl.fb = A.fb
    cl.ga = A.ga
    cl.gb = A.gb
    cl.ha = A.ha
    cl.hb = A.hb
    cl.clip = A.clip
    cl.input_forget = input_forget
    cl.reset_after = reset_after
    cl.rz_split = cell == 2 and not reset_after
    cl.wp = wp
    cl.bias = bias
    cl.bhn = bhn
    cl.peep = peep if use_peep else NULL
    cl.P = 0            # (run_layer sets the projection)
    cl.wrp = NULL


cdef struct SmallScratch:
    void* xp
    void* hbuf
    void* lastout
    void* rh
    void* zb
    void* hraw
    int slot


# The projected inputs of a packed-kernel call (up to a few MiB) kept between calls, one
# block per direction of a pair (fr_keep_get): freed and allocated anew each call, glibc
# gave a 2-layer BiLSTM B=8 H=256's blocks back to the OS every call (~790 page faults,
# ~2 ms, a call).  release_scratch() frees them.
cdef void* _xp_kept[2]


def release_scratch():
    """Free the packed kernel's kept scratch blocks; returns the bytes freed."""
    return fr_keep_release(_xp_kept, 2)


cdef void _free_scratch(SmallScratch* m) noexcept nogil:
    fr_keep_put(&_xp_kept[m.slot], m.xp)
    free(m.hbuf)
    free(m.lastout)
    free(m.rh)
    free(m.zb)
    free(m.hraw)
    m.xp = m.hbuf = m.lastout = m.rh = m.zb = m.hraw = NULL


cdef int _prep_small(Dims* d, const fr_cell* cl, const floating* x, Py_ssize_t x_ld,
                     const floating* wxp, const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                     const Py_ssize_t* lens, const unsigned char* mask, floating* h,
                     floating* c, floating* out, SmallScratch* m, fr_seq_f* qf,
                     fr_seq_d* qd, int slot) noexcept nogil:
    """Allocate the scratch of one small-kernel call and fill its sequence descriptor
    (qf for float, qd for double); slot: the kept block of projected inputs to take (0,
    or 1 for a pair's second direction).  Returns -1 (nothing left allocated) on
    failure."""
    cdef int B = d.nrows_max, H = d.H, GH = d.G * d.H
    cdef int chunk = d.chunk
    cdef floating* xp = <floating*>fr_keep_get(&_xp_kept[slot],
                                               sizeof(floating) * <Py_ssize_t>chunk * B * GH + 64)
    cdef floating* hbuf = <floating*>fr_amalloc(sizeof(floating) * 2 * B * H + 64)
    cdef floating* lastout = NULL
    cdef floating* rh = NULL
    cdef floating* zb = NULL
    cdef floating* hraw = NULL
    if cl.P > 0:
        hraw = <floating*>fr_amalloc(sizeof(floating) * B * H + 64)
    if d.has_mask:
        lastout = <floating*>fr_amalloc(sizeof(floating) * B * H + 64)
    if cl.rz_split:
        rh = <floating*>fr_amalloc(sizeof(floating) * B * H + 64)
        zb = <floating*>fr_amalloc(sizeof(floating) * B * H + 64)
    m.xp = xp
    m.slot = slot
    m.hbuf = hbuf
    m.lastout = lastout
    m.rh = rh
    m.zb = zb
    m.hraw = hraw
    if (xp == NULL or hbuf == NULL or (d.has_mask and lastout == NULL)
            or (cl.rz_split and (rh == NULL or zb == NULL)) or (cl.P > 0 and hraw == NULL)):
        _free_scratch(m)
        return -1
    if floating is float:
        qf.nT = d.T
        qf.B = B
        qf.I = d.I
        qf.reverse = d.reverse
        qf.varlen = d.varlen
        qf.chunk = chunk
        qf.offsets = offsets
        qf.nsteps = nsteps
        qf.lens = lens
        qf.x = x
        qf.x_ld = x_ld
        qf.wxp = wxp
        qf.mask = mask if d.has_mask else NULL
        qf.mask_zero = d.mask_zero_output
        qf.out = out if d.write_out else NULL
        qf.out_ld = d.out_ld
        qf.out_col = d.out_col
        qf.h = h
        qf.c = c if d.cell == 1 else NULL
        qf.xp = xp
        qf.hbuf = hbuf
        qf.lastout = lastout
        qf.hraw = hraw
        qf.flip = 0
        qf.rh = rh
        qf.zb = zb
        qf.xt = qf.ht = qf.ct = NULL
    else:
        qd.nT = d.T
        qd.B = B
        qd.I = d.I
        qd.reverse = d.reverse
        qd.varlen = d.varlen
        qd.chunk = chunk
        qd.offsets = offsets
        qd.nsteps = nsteps
        qd.lens = lens
        qd.x = x
        qd.x_ld = x_ld
        qd.wxp = wxp
        qd.mask = mask if d.has_mask else NULL
        qd.mask_zero = d.mask_zero_output
        qd.out = out if d.write_out else NULL
        qd.out_ld = d.out_ld
        qd.out_col = d.out_col
        qd.h = h
        qd.c = c if d.cell == 1 else NULL
        qd.xp = xp
        qd.hbuf = hbuf
        qd.lastout = lastout
        qd.hraw = hraw
        qd.flip = 0
        qd.rh = rh
        qd.zb = zb
        qd.xt = qd.ht = qd.ct = NULL
    return 0


cdef int _run_small(Dims* d, const fr_cell* cl, const floating* x, Py_ssize_t x_ld,
                    const floating* wxp, const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                    const Py_ssize_t* lens, const unsigned char* mask, floating* h,
                    floating* c, floating* out) noexcept nogil:
    cdef fr_seq_f qf
    cdef fr_seq_d qd
    cdef SmallScratch m
    if _prep_small(d, cl, x, x_ld, wxp, offsets, nsteps, lens, mask, h, c, out, &m,
                   &qf, &qd, 0) != 0:
        return -1
    if floating is float:
        fr_small_layer_f(cl, &qf, d.num_threads)
    else:
        fr_small_layer_d(cl, &qd, d.num_threads)
    _free_scratch(&m)
    return 0


cdef Py_ssize_t _wide_chunk_bytes = 256 << 10


def _set_wide_split(int by_groups):
    """Test hook: 1 makes the batch-lane kernel split its threads by unit groups (a barrier
    per step) even where whole panels of rows would do; 0 automatic.  Returns the old."""
    global fr_wide_force_groups
    _hooks_changed()
    old = fr_wide_force_groups
    fr_wide_force_groups = by_groups
    return old


def _set_wide_pairs(int on):
    """Test / A-B hook: 1 (the default) makes the batch-lane kernel run two panels of rows
    at a time where a thread has two (each weight broadcast feeds both), 0 one at a time.
    Returns the old value."""
    global fr_wide_pairs
    _hooks_changed()
    old = fr_wide_pairs
    fr_wide_pairs = on
    return old


def _set_wide_chunk_bytes(Py_ssize_t n):
    """Tuning/test hook: bytes of transposed input per chunk of the batch-lane kernel.
    Returns the previous value."""
    global _wide_chunk_bytes
    _hooks_changed()
    old = _wide_chunk_bytes
    _wide_chunk_bytes = n
    return old


cdef int _check_wide(Py_ssize_t n, int cell, int I, int H, int reset_after) except -1:
    """Raise unless n values are a :func:`pack_wide` packing for this level's rows."""
    cdef int R = fr_wide_rows()
    cdef int Gr = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    cdef int UG = R // Gr
    cdef Py_ssize_t groups = (H + UG - 1) // UG
    if cell == CELL_GRU and not reset_after:
        groups = (H + R // 2 - 1) // (R // 2) + (H + R - 1) // R
    cdef Py_ssize_t want = groups * (I + H + 2) * R
    if n != want:
        raise ValueError(f"batch-lane packed weights have {n} values, expected {want} for "
                         f"{R} rows per group: they were packed for another ISA level; "
                         f"pack them again")
    return 0


cdef int _run_wide(Dims* d, const fr_cell* cl, const floating* x, Py_ssize_t x_ld,
                   const Py_ssize_t* offsets, const Py_ssize_t* nsteps,
                   const Py_ssize_t* lens, const unsigned char* mask, floating* h,
                   floating* c, floating* out) noexcept nogil:
    """One direction on the batch-lane kernel: scratch, descriptor, call (-1: no memory)."""
    cdef fr_seq_f qf
    cdef fr_seq_d qd
    cdef int W = fr_unit(sizeof(floating))
    cdef int B = d.nrows_max, H = d.H, I = d.I
    cdef Py_ssize_t nP = (B + W - 1) // W
    cdef Py_ssize_t per_step = nP * I * W * sizeof(floating)
    cdef Py_ssize_t chunk = _wide_chunk_bytes // per_step if per_step > 0 else 1
    cdef int rc
    if chunk < 1:
        chunk = 1
    if chunk > d.T:
        chunk = d.T
    cdef floating* xt = <floating*>fr_amalloc(sizeof(floating) * chunk * nP * I * W + 64)
    cdef floating* ht = <floating*>fr_amalloc(sizeof(floating) * 2 * nP * H * W + 64)
    cdef floating* ct = <floating*>fr_amalloc(sizeof(floating) * nP * H * W + 64)
    cdef floating* rh = NULL
    cdef floating* zb = NULL
    if cl.rz_split:     # GRU reset_after=False: r * h and z in the lane layout
        rh = <floating*>fr_amalloc(sizeof(floating) * 2 * nP * H * W + 64)
        zb = rh + nP * H * W if rh != NULL else NULL
    if xt == NULL or ht == NULL or ct == NULL or (cl.rz_split and rh == NULL):
        free(xt)
        free(ht)
        free(ct)
        free(rh)
        return -1
    if floating is float:
        memset(&qf, 0, sizeof(qf))
        qf.nT = d.T
        qf.B = B
        qf.I = I
        qf.reverse = d.reverse
        qf.varlen = d.varlen
        qf.chunk = <int>chunk
        qf.offsets = offsets
        qf.nsteps = nsteps
        qf.lens = lens
        qf.x = x
        qf.x_ld = x_ld
        qf.mask = mask if d.has_mask else NULL
        qf.mask_zero = d.mask_zero_output
        qf.out = out if d.write_out else NULL
        qf.out_ld = d.out_ld
        qf.out_col = d.out_col
        qf.h = h
        qf.c = c if d.cell == 1 else NULL
        qf.xt = xt
        qf.ht = ht
        qf.ct = ct
        qf.rh = rh
        qf.zb = zb
        qf.wide_groups = d.wide_groups
        rc = fr_wide_layer_f(cl, &qf, d.num_threads)
    else:
        memset(&qd, 0, sizeof(qd))
        qd.nT = d.T
        qd.B = B
        qd.I = I
        qd.reverse = d.reverse
        qd.varlen = d.varlen
        qd.chunk = <int>chunk
        qd.offsets = offsets
        qd.nsteps = nsteps
        qd.lens = lens
        qd.x = x
        qd.x_ld = x_ld
        qd.mask = mask if d.has_mask else NULL
        qd.mask_zero = d.mask_zero_output
        qd.out = out if d.write_out else NULL
        qd.out_ld = d.out_ld
        qd.out_col = d.out_col
        qd.h = h
        qd.c = c if d.cell == 1 else NULL
        qd.xt = xt
        qd.ht = ht
        qd.ct = ct
        qd.rh = rh
        qd.zb = zb
        qd.wide_groups = d.wide_groups
        rc = fr_wide_layer_d(cl, &qd, d.num_threads)
    free(xt)
    free(ht)
    free(ct)
    free(rh)
    return rc


cdef int _fill_dims(Dims* d, Acts* A, int cell, int T, int I, int hidden_size,
                    int proj_size, int nrows_max, int reverse, int varlen, int reset_after,
                    int input_forget, int out_ld, int out_col, int num_threads, int has_mask,
                    int mask_zero_output, int chunk, int write_out, acts,
                    double clip) except -1:
    """The per-call descriptors of one layer direction (shared by run_layer/run_pair)."""
    d.cell = cell
    d.wide_groups = 0
    d.T = T
    d.I = I
    d.H = hidden_size
    d.P = proj_size
    d.G = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    d.nrows_max = nrows_max
    d.reverse = reverse
    d.varlen = varlen
    d.reset_after = reset_after
    d.input_forget = input_forget
    d.out_ld = out_ld
    d.out_col = out_col
    d.num_threads = num_threads if num_threads > 0 else 1
    d.has_mask = has_mask
    d.mask_zero_output = mask_zero_output
    d.chunk = chunk if chunk > 0 else 1
    d.write_out = write_out
    (A.f, A.fa, A.fb), (A.g, A.ga, A.gb), (A.h, A.ha, A.hb) = acts
    A.clip = clip
    if cell == CELL_RNN:
        A.is_default = A.f == A_TANH or A.f == A_RELU
    else:
        A.is_default = A.f == A_SIGMOID and A.g == A_TANH and A.h == A_TANH
    return 0


cdef class PackedDir:
    """One direction's kernel-ready weights for :func:`run_layer`: wx = W_ih (G*H, I),
    wh = W_hh (G*H, K), bias, bhn, wr = W_hr (P, H) (PyTorch's layout: the layer's own
    arrays, not copies), peep, and wxp / whp (:func:`pack_units` / :func:`pack_recurrent`
    of wx.T / wh.T, enabling the small-batch kernel) or None; with a projection also wrp
    (``pack_units(wr.T, P, 1)``), else the small-batch kernel is not enabled.  Their
    typed memoryviews are taken once per packing: taken from the arrays at every call
    they cost ~0.1 us each (about 1 us of a small layer's ~12 us call)."""
    cdef readonly bint is_double
    cdef readonly bint small
    cdef readonly bint has_wrp
    cdef float[:, ::1] wx_f, wh_f, wr_f
    cdef float[::1] bias_f, bhn_f, peep_f, wxp_f, whp_f, wrp_f
    cdef double[:, ::1] wx_d, wh_d, wr_d
    cdef double[::1] bias_d, bhn_d, peep_d, wxp_d, whp_d, wrp_d

    def __init__(self, wx, wh, bias, bhn, wr, peep, wxp=None, whp=None, wrp=None):
        self.is_double = np.asarray(wx).dtype == np.float64
        self.small = wxp is not None and whp is not None
        self.has_wrp = self.small and wrp is not None
        if self.is_double:
            self.wx_d, self.wh_d, self.wr_d = wx, wh, wr
            self.bias_d, self.bhn_d, self.peep_d = bias, bhn, peep
            if self.small:
                self.wxp_d, self.whp_d = wxp, whp
                if wrp is not None:
                    self.wrp_d = wrp
        else:
            self.wx_f, self.wh_f, self.wr_f = wx, wh, wr
            self.bias_f, self.bhn_f, self.peep_f = bias, bhn, peep
            if self.small:
                self.wxp_f, self.whp_f = wxp, whp
                if wrp is not None:
                    self.wrp_f = wrp


cdef cnp.ndarray _checked(object a, int typenum, bint writeable, str who, str name,
                          bint aligned=True):
    """a, an ndarray of typenum in native byte order, C-contiguous, aligned (unless
    ``aligned`` is 0: an input the kernels read element by element, as run_layer's typed
    memoryview takes it) and writeable (if ``writeable``); raises naming who, the array
    and what differs.  For the hot entries' arrays (run_layer, StepPlan.step, DenseRun):
    a typed memoryview costs ~0.1 us each to take."""
    cdef cnp.ndarray arr
    cdef int flags = (cnp.NPY_ARRAY_C_CONTIGUOUS
                      | (cnp.NPY_ARRAY_ALIGNED if aligned else 0)
                      | (cnp.NPY_ARRAY_WRITEABLE if writeable else 0))
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{who}: {name} must be a numpy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"{who}: {name} has dtype {a.dtype.str}, expected "
                        f"{np.dtype(cnp.PyArray_TypeObjectFromType(typenum)).name} "
                        "(native byte order)")
    if (cnp.PyArray_FLAGS(arr) & flags) != flags:
        raise ValueError(f"{who}: {name} must be C-contiguous"
                         + (", aligned" if aligned else "")
                         + (" and writeable" if writeable else ""))
    return arr


cdef char _no_data[1]


cdef void* _shaped_data(object a, int typenum, bint writeable, bint aligned, int nd,
                        Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2, str who,
                        str name) except NULL:
    """The data of a (``_checked``), an array of shape (d0, d1[, d2]) (nd 2 or 3);
    raises naming who, the array and what differs.  An empty array may have no data
    pointer: then any non-NULL one, never read (a call with no rows returns before the
    kernel)."""
    cdef cnp.ndarray arr = _checked(a, typenum, writeable, who, name, aligned)
    if (cnp.PyArray_NDIM(arr) != nd or cnp.PyArray_DIM(arr, 0) != d0
            or cnp.PyArray_DIM(arr, 1) != d1 or (nd == 3 and cnp.PyArray_DIM(arr, 2) != d2)):
        raise ValueError(f"{who}: {name} has shape {a.shape}, expected {(d0, d1, d2)[:nd]}")
    return cnp.PyArray_DATA(arr) if cnp.PyArray_SIZE(arr) else <void*>_no_data


cdef int _arr(object a, int typenum, int ndim, str name, void** data, Py_ssize_t* n0,
              Py_ssize_t* n1) except -1:
    """data, n0 (and n1 for 2 dims) of run_layer's array a (``_checked``, writeable,
    ndim dimensions)."""
    cdef cnp.ndarray arr = _checked(a, typenum, True, "run_layer", name)
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"run_layer: {name} must have {ndim} dimension(s), got shape "
                         f"{a.shape}")
    data[0] = cnp.PyArray_DATA(arr)
    n0[0] = cnp.PyArray_DIM(arr, 0)
    if ndim == 2:
        n1[0] = cnp.PyArray_DIM(arr, 1)
    return 0


cdef bint _lanes_filled(const Py_ssize_t* nst, Py_ssize_t T, Py_ssize_t lanes) noexcept nogil:
    """Whether a batch of sequences sorted longest first (step s runs rows [0, nst[s]))
    fills the batch-lane kernel's panels of ``lanes`` rows, summed over the steps, with
    at most 1/8 padding: the dense rule's bound (wide_gates_at, wide_rnn_at) for a
    ragged batch, whose panels run as long as their longest row."""
    cdef Py_ssize_t s, real = 0, padded = 0
    for s in range(T):
        real += nst[s]
        padded += (nst[s] + lanes - 1) // lanes * lanes
    return _lanes_full(padded, real)


cdef long _wide_runs = 0      # run_layer calls that took the batch-lane kernel (tests)
cdef long _wide_group_runs = 0    # ... of them split by unit groups for a ragged batch


def _wide_run_count(bint ragged_groups=False):
    """Test hook: how many :func:`run_layer` calls ran the batch-lane kernel so far
    (``ragged_groups``: those split by unit groups by :func:`wide_ragged_mode`)."""
    return _wide_group_runs if ragged_groups else _wide_runs


def _row_cuts(lens, int nth, bint varlen=True):
    """Test hook: the packed kernel's row split of a batch with these (sorted) lengths
    between nth threads, as the nth + 1 row boundaries (fr_row_cut)."""
    cdef Py_ssize_t[::1] n = np.ascontiguousarray(lens, dtype=np.intp)
    cdef int B = n.shape[0], t
    cdef const Py_ssize_t* p = &n[0] if B else NULL
    return [fr_row_cut(p, B, varlen, t, nth) for t in range(nth + 1)]


def put_rows(dst, rows, src):
    """``dst[rows] = src`` for 2-D arrays of one dtype and width (``rows`` intp): where
    both arrays' rows are contiguous (any row stride: a column block of a wider array
    too) a copy a row, where NumPy's fancy assignment spent ~13 ns a row on its
    indexing (a ragged call's scatter of 800 rows of 32 floats: ~10 -> ~3 us).  Every
    row index is checked to lie inside ``dst`` (IndexError) before anything is
    written."""
    cdef cnp.ndarray d = dst, s = src
    cdef Py_ssize_t[::1] r = rows
    cdef Py_ssize_t n = r.shape[0], m, i, k, sd, ss, width
    if d.ndim != 2 or s.ndim != 2 or d.dtype != s.dtype or d.shape[1] != s.shape[1]:
        raise ValueError(f"put_rows: {dst.dtype} {dst.shape} and {src.dtype} "
                         f"{src.shape} are not 2-D arrays of one dtype and width")
    if s.shape[0] != n:
        raise ValueError(f"put_rows: {n} row indices for {s.shape[0]} rows")
    if not d.flags.writeable:
        raise ValueError("put_rows: the destination is read-only")
    m = d.shape[0]
    for i in range(n):
        if not 0 <= r[i] < m:
            raise IndexError(f"put_rows: row {r[i]} outside the {m} rows of dst")
    width = d.shape[1] * d.itemsize
    if width == 0 or n == 0:
        return
    if d.strides[1] != d.itemsize or s.strides[1] != s.itemsize:
        dst[rows] = src             # (rows with gaps between their values)
        return
    sd, ss = d.strides[0], s.strides[0]
    cdef char* dp = <char*>cnp.PyArray_DATA(d)
    cdef const char* sp = <const char*>cnp.PyArray_DATA(s)
    with nogil:
        for i in range(n):
            k = r[i]
            memcpy(dp + k * sd, sp + i * ss, width)


def wide_fills_lanes(nsteps, int itemsize=4):
    """Whether a ragged batch with rows per step ``nsteps`` (sorted longest first) stays
    on the batch-lane kernel where the size rules choose it (:func:`run_layer`): its
    panels of one vector of rows, step by step, at most 1/8 padding.  A skewed batch
    (lengths mostly 10-20 and one of 200, B=64: 3.4x the real row steps) would run one
    thread's panel for the long sequence alone, 16 lanes for 1 row: measured on Zen 4,
    GRU B=64 T=200 H=256 31.3 ms there against 11.6-11.8 ms on the packed kernel (7.7 ms
    once layers stopped copying the padded batch to pack it)."""
    cdef Py_ssize_t[::1] n = np.ascontiguousarray(nsteps, dtype=np.intp)
    if n.shape[0] == 0:
        return True
    return _lanes_filled(&n[0], n.shape[0], fr_unit(itemsize))


# one direction of one layer, set up (_dir_setup) for its kernel (_dir_exec)
cdef enum:
    _DIR_NONE = 0       # nothing to run (no steps or no rows)
    _DIR_SMALL = 1      # the packed small-batch kernel
    _DIR_WIDE = 2       # the batch-lane kernel
    _DIR_BLAS = 3       # BLAS products and the gate pass


cdef struct DirRun:
    Dims d
    Acts A
    fr_cell cl
    int mode            # _DIR_*
    Py_ssize_t x_ld
    const void* wxp     # packed input weights (_DIR_SMALL)
    const void* wx      # (_DIR_BLAS:)
    const void* wh
    const void* bias
    const void* bhn
    const void* wr
    const void* peep


cdef void _dir_weights(DirRun* e, floating[:, ::1] wx, floating[:, ::1] wh,
                       floating[:, ::1] wr, floating[::1] bias, floating[::1] bhn,
                       floating[::1] peep, floating[::1] wxp, floating[::1] whp,
                       floating[::1] wrp, bint small, bint has_wrp, int use_peep,
                       const void** whp_p, const void** wrp_p, Py_ssize_t* nwxp,
                       Py_ssize_t* nwhp, Py_ssize_t* nwrp):
    """A direction's weight addresses (one dtype's views of a PackedDir); the packed
    ones (and their lengths) only where the packing made them (small, has_wrp)."""
    e.wx, e.wh, e.wr = &wx[0, 0], &wh[0, 0], &wr[0, 0]
    e.bias, e.bhn = &bias[0], &bhn[0]
    e.peep = &peep[0] if use_peep else NULL
    if small:
        nwxp[0], nwhp[0] = wxp.shape[0], whp.shape[0]
        e.wxp = &wxp[0] if nwxp[0] else NULL
        whp_p[0] = &whp[0] if nwhp[0] else NULL
        if has_wrp:
            nwrp[0] = wrp.shape[0]
            wrp_p[0] = &wrp[0] if nwrp[0] else NULL


cdef int _dir_setup(DirRun* e, int cell, Py_ssize_t I, PackedDir pw, Py_ssize_t nT,
                    const Py_ssize_t* p_nst, Py_ssize_t nh, Py_ssize_t ldout, int out_col,
                    int reverse, int varlen, int hidden_size, int proj_size,
                    int reset_after, int input_forget, acts, double clip, int use_peep,
                    int has_mask, int mask_zero_output, int num_threads, int chunk,
                    int write_out, const void* wdp, Py_ssize_t wdp_n, bint dbl) except -1:
    """run_layer's decisions and descriptors for one direction (the kernel, its cell,
    the weights' addresses), from everything but the call's arrays (p_nst: the step
    sizes, which a ragged batch's kernel choice reads)."""
    cdef Dims* d = &e.d
    cdef int U, rmode, isz = 8 if dbl else 4
    cdef bint small
    cdef Py_ssize_t nwxp = 0, nwhp = 0, nwrp = 0
    cdef const void* whp = NULL
    cdef const void* wrp = NULL
    if dbl and not pw.is_double:
        raise TypeError("run_layer: float32 weights for a float64 input")
    if not dbl and pw.is_double:
        raise TypeError("run_layer: float64 weights for a float32 input")
    e.mode = _DIR_NONE
    e.x_ld = I
    _fill_dims(d, &e.A, cell, nT, I, hidden_size, proj_size,
               nh, reverse, varlen, reset_after, input_forget, ldout, out_col,
               num_threads, has_mask, mask_zero_output, chunk, write_out, acts, clip)
    if d.T == 0 or d.nrows_max == 0:
        return 0
    if dbl:
        _dir_weights(e, pw.wx_d, pw.wh_d, pw.wr_d, pw.bias_d, pw.bhn_d, pw.peep_d,
                     pw.wxp_d, pw.whp_d, pw.wrp_d, pw.small, pw.has_wrp, use_peep, &whp,
                     &wrp, &nwxp, &nwhp, &nwrp)
    else:
        _dir_weights(e, pw.wx_f, pw.wh_f, pw.wr_f, pw.bias_f, pw.bhn_f, pw.peep_f,
                     pw.wxp_f, pw.whp_f, pw.wrp_f, pw.small, pw.has_wrp, use_peep, &whp,
                     &wrp, &nwxp, &nwhp, &nwrp)
    U = fr_unit(isz)
    path = choose_path(cell, d.nrows_max, hidden_size, proj_size, reset_after,
                       d.num_threads, e.A.is_default, d.I, isz)
    if path == "wide" and varlen and _force_path != 3:
        # a skewed ragged batch (mostly empty lanes) on the packed kernel; else
        # wide_ragged_mode's answer
        rmode = wide_ragged_mode(cell, d.nrows_max, d.num_threads, U)
        if rmode == 0 or not _lanes_filled(p_nst, d.T, U):
            path = "small"
        d.wide_groups = rmode == 2
    if path == "wide" and wdp != NULL and wdp_n > 0:
        _check_wide(wdp_n, cell, d.I, d.H, reset_after)
        _fill_cell(&e.cl, cell, d.G, d.H, d.H, fr_wide_rows(), &e.A, use_peep, input_forget,
                   reset_after, wdp, e.bias, e.bhn, e.peep)
        e.mode = _DIR_WIDE
        return 0
    small = (pw.small and nwxp > 0 and path != "blas"
             and (d.P == 0 or (pw.has_wrp and nwrp > 0)))
    if small:
        _check_packed(nwxp, d.H, d.I, d.G, U)
        _check_packed(nwhp, d.H, d.P if d.P > 0 else d.H, d.G, U)
        if d.P > 0:
            _check_packed(nwrp, d.P, d.H, 1, U)
    _fill_cell(&e.cl, cell, d.G, d.H, d.P if d.P > 0 else d.H, U, &e.A, use_peep,
               input_forget, reset_after, whp if small else NULL, e.bias, e.bhn, e.peep)
    if small and d.P > 0:
        e.cl.P = d.P
        e.cl.wrp = wrp
    e.mode = _DIR_SMALL if small else _DIR_BLAS
    return 0


cdef int _dir_exec(const DirRun* e, const floating* x, const Py_ssize_t* off,
                   const Py_ssize_t* nst, const Py_ssize_t* lens, const unsigned char* msk,
                   floating* h, floating* c, floating* out) noexcept nogil:
    """Run a direction set up by _dir_setup on the call's arrays (0, or -1: no memory)."""
    cdef Dims d = e.d       # (the kernels take a Dims of their own)
    if e.mode == _DIR_WIDE:
        return _run_wide(&d, &e.cl, x, e.x_ld, off, nst, lens, msk, h, c, out)
    if e.mode == _DIR_SMALL:
        return _run_small(&d, &e.cl, x, e.x_ld, <const floating*>e.wxp, off, nst, lens,
                          msk, h, c, out)
    if e.mode == _DIR_BLAS:
        return _run_layer(&d, x, <int>e.x_ld, <const floating*>e.wx, <const floating*>e.wh,
                          <const floating*>e.bias, <const floating*>e.bhn,
                          <const floating*>e.wr, <const floating*>e.peep, off, nst, lens,
                          msk, h, c, out, &e.A, &e.cl)
    return 0


def run_layer(int cell, const floating[:, ::1] x, PackedDir pw, offsets, nsteps, lens, mask,
              h, c, out, int out_col, int reverse, int varlen,
              int hidden_size, int proj_size, int reset_after, int input_forget,
              acts, double clip, int use_peep, int has_mask, int mask_zero_output,
              int num_threads, int chunk, int write_out=1, floating[::1] wdp=None):
    """Run one direction of one layer over a packed batch (see the module docstring).

    x (N, I) packed input rows; ``pw`` the direction's weights (:class:`PackedDir`, of
    x's dtype); h (B, P or H) and c (B, H) hold the initial state on entry and the final
    state on exit (c unused except for LSTM); out (N, >= out_col + P) receives the
    outputs at columns ``out_col:out_col+P`` (not written when ``write_out`` is 0).
    ``pw``'s wxp/whp enable the small-batch kernel; ``wdp``: :func:`pack_wide`, enabling
    the batch-lane kernel (each chosen by :func:`choose_path`).  The caller validates
    shapes.
    """
    cdef DirRun e
    cdef int rc
    cdef void* vp[7]
    cdef Py_ssize_t nT, nst, nh, nout, ldout, n_, m_
    cdef int ft = cnp.NPY_FLOAT64 if floating is double else cnp.NPY_FLOAT32
    _arr(offsets, cnp.NPY_INTP, 1, "offsets", &vp[0], &nT, NULL)
    _arr(nsteps, cnp.NPY_INTP, 1, "nsteps", &vp[1], &nst, NULL)
    _arr(lens, cnp.NPY_INTP, 1, "lens", &vp[2], &n_, NULL)
    _arr(mask, cnp.NPY_UINT8, 1, "mask", &vp[3], &n_, NULL)
    _arr(h, ft, 2, "h", &vp[4], &nh, &m_)
    _arr(c, ft, 2, "c", &vp[5], &n_, &m_)
    _arr(out, ft, 2, "out", &vp[6], &nout, &ldout)
    if nst < nT:
        raise ValueError("run_layer: fewer step sizes than step offsets")
    _dir_setup(&e, cell, x.shape[1], pw, nT, <Py_ssize_t*>vp[1], nh, ldout, out_col,
               reverse, varlen, hidden_size, proj_size, reset_after, input_forget, acts,
               clip, use_peep, has_mask, mask_zero_output, num_threads, chunk, write_out,
               &wdp[0] if wdp is not None and wdp.shape[0] > 0 else NULL,
               wdp.shape[0] if wdp is not None else 0, floating is double)
    if e.mode == _DIR_NONE:
        return
    if e.mode == _DIR_WIDE:
        global _wide_runs, _wide_group_runs
        _wide_runs += 1
        _wide_group_runs += e.d.wide_groups
    with nogil:
        rc = _dir_exec(&e, &x[0, 0], <Py_ssize_t*>vp[0], <Py_ssize_t*>vp[1],
                       <Py_ssize_t*>vp[2], <unsigned char*>vp[3], <floating*>vp[4],
                       <floating*>vp[5], <floating*>vp[6])
    if rc != 0:
        raise MemoryError("fastrnn: could not allocate scratch memory for the forward pass")


# a dense call's lengths, mask and non-LSTM cell state as the kernels see them (never
# read or written there: varlen, has_mask 0, the cell state LSTM's only), as run_layer
# passes its callers' one-element arrays
cdef Py_ssize_t _no_lens[1]
cdef unsigned char _no_mask[1]
cdef double _no_c[1]


cdef class DenseRun:
    """The kernels of one plain call shape of a stack of layers: every layer on the
    packed, batch-lane or BLAS kernel, one direction after the other (a plan of
    layers.py made only of _PACKED layers), on a dense batch of B rows and T steps.
    :func:`run_layer`'s set-up of each direction is done once here; :meth:`run` takes
    the call's arrays and runs them (a small layer's call ~1 us less per direction).

    ``layers``: per layer ``(chunk, [(PackedDir, acts, wdp or None) per direction])``;
    offsets / nsteps: the dense batch's (kept); with ``lens`` (the sorted lengths of a
    packed ragged batch, as run_layer's ``lens`` with ``varlen``) the packed batch's
    offsets / nsteps, of sum(nsteps) rows."""
    cdef DirRun* runs
    cdef int L, D, Hout, H, I, is_double, last_only, cell, has_mask
    cdef Py_ssize_t B, N, T
    cdef object keep
    cdef const Py_ssize_t* off
    cdef const Py_ssize_t* nst
    cdef const Py_ssize_t* lens

    def __cinit__(self):
        self.runs = NULL

    def __init__(self, int cell, list layers, offsets, nsteps, Py_ssize_t B, int input_size,
                 int hidden_size, int proj_size, int reset_after, int input_forget,
                 double clip, int use_peep, int num_threads, int go_backwards,
                 int directions, dtype, bint return_sequences, lens=None,
                 int has_mask=0, int mask_zero=0):
        cdef void* vp[3]
        cdef Py_ssize_t nT, nst, n_, s
        cdef int l, d, k, I_l
        cdef const void* wp
        cdef Py_ssize_t wn
        cdef float[::1] f1
        cdef double[::1] d1
        _arr(offsets, cnp.NPY_INTP, 1, "offsets", &vp[0], &nT, NULL)
        _arr(nsteps, cnp.NPY_INTP, 1, "nsteps", &vp[1], &nst, NULL)
        if nst < nT:
            raise ValueError("DenseRun: fewer step sizes than step offsets")
        self.off = <const Py_ssize_t*>vp[0]
        self.nst = <const Py_ssize_t*>vp[1]
        self.lens = _no_lens
        self.N = nT * B
        self.T = nT
        self.has_mask = has_mask != 0
        if lens is not None and has_mask:
            raise ValueError("DenseRun: lengths and a mask together")
        if lens is not None:
            _arr(lens, cnp.NPY_INTP, 1, "lens", &vp[2], &n_, NULL)
            if n_ < B:
                raise ValueError("DenseRun: fewer lengths than sequences")
            self.lens = <const Py_ssize_t*>vp[2]
            self.N = 0
            for s in range(nT):
                self.N += self.nst[s]
            for s in range(B):
                if not 0 <= self.lens[s] <= nT:
                    raise ValueError("DenseRun: a length outside [0, T]")
        for s in range(nT):     # (the kernels trust these: rows inside the batch's)
            if not (0 <= self.nst[s] <= B and 0 <= self.off[s]
                    and self.off[s] + self.nst[s] <= self.N):
                raise ValueError("DenseRun: a step's rows outside the batch")
        self.cell = cell
        self.L = len(layers)
        self.D = directions
        self.H = hidden_size
        self.Hout = proj_size if proj_size > 0 else hidden_size
        self.I = input_size
        self.B = B
        self.is_double = np.dtype(dtype) == np.float64
        self.last_only = not return_sequences
        self.keep = (layers, offsets, nsteps, lens)
        self.runs = <DirRun*>malloc(sizeof(DirRun) * self.L * self.D)
        if self.runs == NULL:
            raise MemoryError()
        for l in range(self.L):
            chunk, dirs = layers[l]
            I_l = input_size if l == 0 else self.D * self.Hout
            for d in range(self.D):
                pw, acts, wdp = dirs[d]
                wp, wn = NULL, 0
                if wdp is not None and len(wdp):
                    if self.is_double:
                        d1 = wdp
                        wp = &d1[0]
                    else:
                        f1 = wdp
                        wp = &f1[0]
                    wn = len(wdp)
                k = l * self.D + d
                _dir_setup(&self.runs[k], cell, I_l, pw, nT, self.nst, B,
                           self.D * self.Hout, d * self.Hout,
                           int((d == 1) != go_backwards), int(lens is not None),
                           hidden_size, proj_size,
                           reset_after, input_forget, acts, clip, use_peep,
                           self.has_mask, mask_zero, num_threads, chunk,
                           int(not (self.last_only and l == self.L - 1)), wp, wn,
                           self.is_double)

    def __dealloc__(self):
        free(self.runs)

    def run(self, x, h, c, mask=None):
        """x (T*B, I) time-major rows; h (L*D, B, Hout) and c (L*D, B, H, LSTM; else
        None) the initial states, replaced by the final ones; ``mask`` (T, B) uint8, a
        run made with ``has_mask`` only (Keras's rule: run_layer's mask).  Returns the
        last layer's outputs (T*B, D*Hout) (without return_sequences a (1, D*Hout)
        array, unused)."""
        cdef const unsigned char* mp = _no_mask
        cdef int ft = cnp.NPY_FLOAT64 if self.is_double else cnp.NPY_FLOAT32
        cdef cnp.npy_intp dims[2]
        cdef char* cp = NULL
        cdef char* op
        cdef int l, d, k, rc = 0
        cdef Py_ssize_t isz = 8 if self.is_double else 4
        cdef Py_ssize_t LD = <Py_ssize_t>self.L * self.D
        # (x read element by element: any alignment, as run_layer's typed memoryview)
        cdef char* xp = <char*>_shaped_data(x, ft, False, False, 2, self.N, self.I, 0,
                                            "DenseRun.run", "x")
        cdef char* hp = <char*>_shaped_data(h, ft, True, True, 3, LD, self.B, self.Hout,
                                            "DenseRun.run", "h")
        if self.cell == CELL_LSTM:
            cp = <char*>_shaped_data(c, ft, True, True, 3, LD, self.B, self.H,
                                     "DenseRun.run", "c")
        if self.has_mask:
            mp = <const unsigned char*>_shaped_data(mask, cnp.NPY_UINT8, False, False, 2,
                                                    self.T, self.B, 0, "DenseRun.run",
                                                    "mask")
        elif mask is not None:
            raise ValueError("DenseRun.run: a mask for a run made without one")
        inp = x
        for l in range(self.L):
            dims[0] = 1 if (self.last_only and l == self.L - 1) else self.N
            dims[1] = self.D * self.Hout
            out = cnp.PyArray_EMPTY(2, dims, ft, 0)
            op = <char*>cnp.PyArray_DATA(<cnp.ndarray>out)
            for d in range(self.D):
                k = l * self.D + d
                if self.runs[k].mode == _DIR_WIDE:
                    global _wide_runs, _wide_group_runs
                    _wide_runs += 1
                    _wide_group_runs += self.runs[k].d.wide_groups
                with nogil:
                    if self.is_double:
                        rc = _dir_exec(&self.runs[k], <const double*>xp, self.off, self.nst,
                                       self.lens, mp,
                                       <double*>(hp + k * self.B * self.Hout * isz),
                                       <double*>(cp + k * self.B * self.H * isz)
                                       if cp != NULL else _no_c, <double*>op)
                    else:
                        rc = _dir_exec(&self.runs[k], <const float*>xp, self.off, self.nst,
                                       self.lens, mp,
                                       <float*>(hp + k * self.B * self.Hout * isz),
                                       <float*>(cp + k * self.B * self.H * isz)
                                       if cp != NULL else <float*>_no_c, <float*>op)
                if rc != 0:
                    raise MemoryError("fastrnn: could not allocate scratch memory for the "
                                      "forward pass")
            inp = out
            xp = op
        return inp


def run_pair(int cell, const floating[:, ::1] x, Py_ssize_t[::1] offsets, Py_ssize_t[::1] nsteps,
             Py_ssize_t[::1] lens, unsigned char[::1] mask, floating[:, ::1] out, int varlen,
             int hidden_size, int reset_after, int input_forget, double clip, int use_peep,
             int has_mask, int mask_zero_output, int chunk, int write_out, int proj_size,
             floating[::1] bias0, floating[::1] bhn0, floating[::1] peep0, floating[::1] wxp0,
             floating[::1] whp0, floating[::1] wrp0, floating[:, ::1] h0,
             floating[:, ::1] c0, acts0, int reverse0, int out_col0,
             floating[::1] bias1, floating[::1] bhn1, floating[::1] peep1, floating[::1] wxp1,
             floating[::1] whp1, floating[::1] wrp1, floating[:, ::1] h1,
             floating[:, ::1] c1, acts1, int reverse1, int out_col1):
    """Both directions of one bidirectional layer at the same time, one thread each, on
    the packed small-batch kernel: the same arguments as two :func:`run_layer` calls
    sharing input, lengths, mask and output (wrp: the packed projection, with
    ``proj_size``; else None).  Use only where :func:`pair_applies` says so."""
    cdef Dims d0, d1
    cdef Acts A0, A1
    cdef fr_cell cl0, cl1
    cdef SmallScratch m0, m1
    cdef fr_seq_f qf0, qf1
    cdef fr_seq_d qd0, qd1
    cdef int rc = 0, U, K = proj_size if proj_size > 0 else hidden_size
    _fill_dims(&d0, &A0, cell, offsets.shape[0], x.shape[1], hidden_size, proj_size, h0.shape[0],
               reverse0, varlen, reset_after, input_forget, out.shape[1], out_col0, 2,
               has_mask, mask_zero_output, chunk, write_out, acts0, clip)
    _fill_dims(&d1, &A1, cell, offsets.shape[0], x.shape[1], hidden_size, proj_size, h1.shape[0],
               reverse1, varlen, reset_after, input_forget, out.shape[1], out_col1, 2,
               has_mask, mask_zero_output, chunk, write_out, acts1, clip)
    if d0.T == 0 or d0.nrows_max == 0:
        return
    if (wxp0.shape[0] == 0 or wxp1.shape[0] == 0 or whp0.shape[0] == 0
            or whp1.shape[0] == 0 or h1.shape[0] != h0.shape[0]
            or (proj_size > 0 and (wrp0 is None or wrp1 is None))):
        raise ValueError("run_pair: packed weights of both directions required")
    U = fr_unit(sizeof(floating))
    for wp_n, k_n in ((wxp0.shape[0], d0.I), (whp0.shape[0], K), (wxp1.shape[0], d1.I),
                      (whp1.shape[0], K)):
        _check_packed(wp_n, d0.H, k_n, d0.G, U)
    if proj_size > 0:
        _check_packed(wrp0.shape[0], proj_size, d0.H, 1, U)
        _check_packed(wrp1.shape[0], proj_size, d0.H, 1, U)
    # one thread runs a whole direction: keep its projected-input chunk cache-sized (the
    # input weights are re-read once per chunk, small next to the recurrent ones per
    # step) while its weights fit 3/4 of its L2; beyond, each chunk's projection evicts
    # the recurrent weights anyway, and the caller's larger chunk stands
    # (layers._chunk_steps)
    cdef Py_ssize_t row_bytes = <Py_ssize_t>d0.nrows_max * d0.G * d0.H * sizeof(floating)
    cdef Py_ssize_t cap = _pair_chunk_bytes // row_bytes if row_bytes > 0 else 1
    cdef Py_ssize_t wbytes = (<Py_ssize_t>d0.G * d0.H * (d0.I + K)
                              + <Py_ssize_t>proj_size * d0.H) * sizeof(floating)
    if cap < 1:
        cap = 1
    if d0.chunk > cap and wbytes * 4 <= 3 * _L2_BYTES:
        d0.chunk = <int>cap
        d1.chunk = <int>cap
    _fill_cell(&cl0, cell, d0.G, d0.H, K, U, &A0, use_peep, input_forget, reset_after,
               &whp0[0], &bias0[0], &bhn0[0], &peep0[0] if use_peep else NULL)
    _fill_cell(&cl1, cell, d1.G, d1.H, K, U, &A1, use_peep, input_forget, reset_after,
               &whp1[0], &bias1[0], &bhn1[0], &peep1[0] if use_peep else NULL)
    if proj_size > 0:
        cl0.P = cl1.P = proj_size
        cl0.wrp = &wrp0[0]
        cl1.wrp = &wrp1[0]
    with nogil:
        if _prep_small(&d0, &cl0, &x[0, 0], x.shape[1], &wxp0[0], &offsets[0], &nsteps[0],
                       &lens[0], &mask[0], &h0[0, 0], &c0[0, 0], &out[0, 0], &m0,
                       &qf0, &qd0, 0) != 0:
            rc = -1
        elif _prep_small(&d1, &cl1, &x[0, 0], x.shape[1], &wxp1[0], &offsets[0], &nsteps[0],
                         &lens[0], &mask[0], &h1[0, 0], &c1[0, 0], &out[0, 0], &m1,
                         &qf1, &qd1, 1) != 0:
            _free_scratch(&m0)
            rc = -1
        else:
            if floating is float:
                fr_small_pair_f(&cl0, &qf0, &cl1, &qf1)
            else:
                fr_small_pair_d(&cl0, &qd0, &cl1, &qd1)
            _free_scratch(&m0)
            _free_scratch(&m1)
    if rc != 0:
        raise MemoryError("fastrnn: could not allocate scratch memory for the forward pass")


def sigmoid(x):
    """The logistic sigmoid of a float32 / float64 array of any shape (a new array of its
    dtype and shape), by the recurrent kernels' vectorised sigmoid (Cephes exp, within
    ~2 ulp; no overflow for any input, NaN stays NaN).  The Keras models' Dense and
    Activation layers use it: scipy.special's expit cost a process's first call of such
    a model ~100-200 ms of imports."""
    a = np.ascontiguousarray(x)
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"sigmoid: float32 or float64 only, got {a.dtype}")
    return _act_test(0, a.reshape(-1)).reshape(a.shape)


# the activations dense_rows takes by name: the codes above, softmax -1
DENSE_ACTS = {"linear": A_LINEAR, "sigmoid": A_SIGMOID, "tanh": A_TANH, "relu": A_RELU,
              "softmax": -1}


def dense_rows(x, w, b, int act):
    """``act(x @ w + b)`` for a few rows: x ``(m, k)``, w ``(k, n)`` (Keras's kernel), b
    ``(n,)`` or None, C-contiguous arrays of one dtype (float32 / float64); act a value
    of :data:`DENSE_ACTS` (softmax over each row).  A new ``(m, n)`` array.  One pass a
    row through the ISA-dispatched kernel (fr_kern_t.h, dense_rows_impl): a Keras-style
    model's Dense on a streaming step's rows without numpy's matmul, bias and activation
    passes (``fastrnn.model.Dense``)."""
    cdef cnp.ndarray xa = x, wa = w, ba = b
    cdef int m, k, n
    cdef bint dbl
    if (cnp.PyArray_NDIM(xa) != 2 or cnp.PyArray_NDIM(wa) != 2
            or not cnp.PyArray_IS_C_CONTIGUOUS(xa) or not cnp.PyArray_IS_C_CONTIGUOUS(wa)
            or not cnp.PyArray_ISBEHAVED_RO(xa) or not cnp.PyArray_ISBEHAVED_RO(wa)):
        raise ValueError("dense_rows: x and w must be 2-D C-contiguous arrays (aligned, "
                         "native byte order)")
    dbl = cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT64
    if not dbl and cnp.PyArray_TYPE(xa) != cnp.NPY_FLOAT32:
        raise TypeError("dense_rows: float32 or float64 only")
    if cnp.PyArray_TYPE(wa) != cnp.PyArray_TYPE(xa):
        raise TypeError("dense_rows: x and w must have one dtype")
    if max(xa.shape[0], xa.shape[1], wa.shape[1]) > 2147483647:
        raise ValueError("dense_rows: sizes must be below 2^31")
    m, k, n = xa.shape[0], xa.shape[1], wa.shape[1]
    if wa.shape[0] != k:
        raise ValueError(f"dense_rows: x has {k} features, w {wa.shape[0]} rows")
    if ba is not None and (cnp.PyArray_TYPE(ba) != cnp.PyArray_TYPE(xa)
                           or cnp.PyArray_NDIM(ba) != 1 or ba.shape[0] != n
                           or not cnp.PyArray_IS_C_CONTIGUOUS(ba)
                           or not cnp.PyArray_ISBEHAVED_RO(ba)):
        raise ValueError(f"dense_rows: b must be a contiguous ({n},) array of x's dtype")
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = m, n
    return _dense_run(xa, wa, ba, act, m, 2, dims)


cdef cnp.ndarray _dense_run(cnp.ndarray x, cnp.ndarray w, cnp.ndarray b, int act,
                            Py_ssize_t rows, int nd, cnp.npy_intp* dims):
    """dense_rows / dense_call's pass: x's rows (rows of w.shape[0]) by w into a new
    array of shape dims[:nd] (checked by the callers, but the activation code)."""
    cdef int tw = cnp.PyArray_TYPE(w), k = <int>w.shape[0], n = <int>w.shape[1]
    if act != -1 and act != A_LINEAR and act != A_SIGMOID and act != A_TANH \
            and act != A_RELU:
        raise ValueError(f"dense_rows: activation code {act} not supported")
    cdef cnp.ndarray y = cnp.PyArray_EMPTY(nd, dims, tw, 0)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef const void* wp = cnp.PyArray_DATA(w)
    cdef const void* bp = NULL if b is None else cnp.PyArray_DATA(b)
    cdef void* yp = cnp.PyArray_DATA(y)
    if rows == 0 or n == 0:
        return y
    with nogil:
        if tw == cnp.NPY_FLOAT64:
            fr_dense_rows_d(<int>rows, k, n, <const double*>xp, <const double*>wp,
                            <const double*>bp, act, <double*>yp)
        else:
            fr_dense_rows_f(<int>rows, k, n, <const float*>xp, <const float*>wp,
                            <const float*>bp, act, <float*>yp)
    return y


# Dense.call's few rows (dense_call): up to 2 rows, or fewer multiply-adds than
# _dense_work, with a kernel of at most _dense_max values; else NumPy's matmul.  Measured
# (float32, tanh, us a call, dense_rows / numpy, this machine busy with another job): 256
# x 256 by 1, 2, 4 rows 1.5 / 4.1, 3.2 / 18, 6.2 / 16; 64 x 64 by 1-8 rows 0.33-1.7 /
# 1.9-3.1; 512 x 512 by 1 row 8.9 / 11.7 (numpy's OpenBLAS threads, spinning on a busy
# machine, made its 2-6 rows 0.8-2.7 ms)
cdef Py_ssize_t _dense_max = 1 << 21
cdef Py_ssize_t _dense_work = 1 << 17
# (dense_rows sums a row's k products one after the other in the input's type: float32
# relative error ~1e-5 at k = 65536, 5.6e-4 at 2^21 against NumPy's blocked 2e-6 / 8e-7,
# a review; up to 4096 inputs, ~1e-6 like NumPy's)
cdef Py_ssize_t _dense_k = 4096


def _set_dense_rows(Py_ssize_t max_values):
    """Tuning / test hook: the largest kernel (values) dense_call takes (-1: none, NumPy's
    path always).  Returns the previous value."""
    global _dense_max
    _hooks_changed()
    old = _dense_max
    _dense_max = max_values
    return old


def dense_call(cnp.ndarray x not None, w, b, int act):
    """``act(x @ w + b)`` over x's last axis by :func:`dense_rows` where that applies (x
    C-contiguous of w's dtype with few rows, see ``_dense_work``), as a new array of shape
    ``x.shape[:-1] + (n,)``; else None (the caller runs NumPy's path).  Checks in C: a
    Keras-style model's Dense on a streaming step costs ~0.3 us of Python around it."""
    cdef int nd = cnp.PyArray_NDIM(x)
    cdef Py_ssize_t k, n, rows
    cdef cnp.ndarray ba
    cdef cnp.npy_intp dims[32]
    cdef int i
    # (weights set to lists or other objects after construction: NumPy's path, a review)
    if not cnp.PyArray_Check(w) or (b is not None and not cnp.PyArray_Check(b)):
        return None
    cdef int tw = cnp.PyArray_TYPE(<cnp.ndarray>w)
    if nd == 0 or nd > 32 or cnp.PyArray_TYPE(x) != tw or cnp.PyArray_NDIM(w) != 2 \
            or (tw != cnp.NPY_FLOAT32 and tw != cnp.NPY_FLOAT64) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_IS_C_CONTIGUOUS(w) \
            or not cnp.PyArray_ISBEHAVED_RO(x) or not cnp.PyArray_ISBEHAVED_RO(w):
        return None     # (ISBEHAVED_RO: aligned, native byte order)
    k, n = w.shape[0], w.shape[1]
    if x.shape[nd - 1] != k or k == 0 or k > _dense_k or k * n > _dense_max:
        return None
    rows = cnp.PyArray_SIZE(x) // k
    if rows == 0 or (rows > 2 and rows * k * n >= _dense_work) or rows > 2147483647:
        return None
    if b is not None:
        ba = b
        if cnp.PyArray_TYPE(ba) != tw or cnp.PyArray_NDIM(ba) != 1 or ba.shape[0] != n \
                or not cnp.PyArray_IS_C_CONTIGUOUS(ba) or not cnp.PyArray_ISBEHAVED_RO(ba):
            return None
    for i in range(nd - 1):
        dims[i] = x.shape[i]
    dims[nd - 1] = n
    return _dense_run(x, w, b, act, rows, nd, dims)


cdef Py_ssize_t _row_len(cnp.ndarray x):
    """The size of x's rows (its last axis) where a row pass takes x: C-contiguous
    float32 / float64 of 2+ axes (1-D: the batch axis, which NumPy's paths refuse),
    aligned, native byte order, rows not empty; else 0."""
    cdef int nd = cnp.PyArray_NDIM(x), tx = cnp.PyArray_TYPE(x)
    if nd < 2 or (tx != cnp.NPY_FLOAT32 and tx != cnp.NPY_FLOAT64) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_ISBEHAVED_RO(x):
        return 0
    return x.shape[nd - 1]


cdef int _norm_weight(w, int tx, Py_ssize_t n):
    """Whether ``w`` is None or an array a row pass reads as n values of x's type."""
    return w is None or (cnp.PyArray_Check(w) and cnp.PyArray_TYPE(<cnp.ndarray>w) == tx
                         and cnp.PyArray_SIZE(<cnp.ndarray>w) == n
                         and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>w)
                         and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>w))


cdef const void* _data(w):
    return NULL if w is None else cnp.PyArray_DATA(<cnp.ndarray>w)


cdef void _ln_rows(floating* y, const floating* x, Py_ssize_t m, Py_ssize_t n,
                   const floating* g, const floating* b, floating eps,
                   bint rms) noexcept nogil:
    """layer_norm_rows' loop: per row, mean and variance summed in double, rounded to
    x's type, then LayerNormalization's arithmetic in x's type."""
    cdef Py_ssize_t r, j
    cdef double s, d, mean_d
    cdef floating mean, var, inv, res, gi
    cdef const floating* xr
    cdef floating* yr
    for r in range(m):
        xr = x + r * n
        yr = y + r * n
        s = 0
        for j in range(n):
            s += xr[j]
        mean_d = s / n
        s = 0
        for j in range(n):
            d = xr[j] - mean_d
            s += d * d
        mean = <floating>mean_d
        var = <floating>(s / n)
        inv = <floating>1 / <floating>sqrt(var + eps)
        if rms:
            if g != NULL:
                for j in range(n):
                    yr[j] = xr[j] * inv * g[j]
            else:
                for j in range(n):
                    yr[j] = xr[j] * inv
            continue
        for j in range(n):
            gi = inv if g == NULL else inv * g[j]     # (inv * gamma in x's type)
            res = -mean * gi
            if b != NULL:
                res = res + b[j]
            yr[j] = xr[j] * gi + res


def layer_norm_rows(cnp.ndarray x not None, gamma, beta, double epsilon, bint rms):
    """Keras's LayerNormalization over the last axis of x (C-contiguous float32 / float64,
    aligned, native byte order; gamma / beta None or contiguous arrays of x's dtype and
    the last axis's size), in one pass a row (``fastrnn.model.LayerNormalization``: a
    streaming step's normalisation ~20 us through NumPy's reductions); None where that
    does not apply (the caller runs NumPy's path)."""
    cdef int nd = cnp.PyArray_NDIM(x), tx = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t n = _row_len(x), m
    cdef cnp.ndarray y
    cdef const void* gp = NULL
    cdef const void* bp = NULL
    if n == 0:
        return None
    m = cnp.PyArray_SIZE(x) // n
    if not _norm_weight(gamma, tx, n) or not _norm_weight(beta, tx, n):
        return None
    gp, bp = _data(gamma), _data(beta)
    y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(x), tx, 0)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    with nogil:
        if tx == cnp.NPY_FLOAT64:
            _ln_rows(<double*>yp, <const double*>xp, m, n, <const double*>gp,
                     <const double*>bp, epsilon, rms)
        else:
            _ln_rows(<float*>yp, <const float*>xp, m, n, <const float*>gp,
                     <const float*>bp, <float>epsilon, rms)
    return y


cdef void _bn_rows(floating* y, const floating* x, Py_ssize_t m, Py_ssize_t n,
                   const floating* mean, const floating* var, const floating* g,
                   const floating* b, floating eps, floating* scale) noexcept nogil:
    """batch_norm_rows' loop: each feature's scale and shift once (``scale``: 2n
    values), in x's type and NumPy's order of operations, then x * scale + shift."""
    cdef Py_ssize_t r, j
    cdef floating inv, res
    cdef floating* shift = scale + n
    for j in range(n):
        inv = <floating>1 / <floating>sqrt(var[j] + eps)
        if g != NULL:
            inv = inv * g[j]
        res = -mean[j] * inv
        if b != NULL:
            res = res + b[j]
        scale[j] = inv
        shift[j] = res
    for r in range(m):
        for j in range(n):
            y[r * n + j] = x[r * n + j] * scale[j] + shift[j]


def batch_norm_rows(cnp.ndarray x not None, mean, variance, gamma, beta, double epsilon):
    """Keras's BatchNormalization at inference over the last axis of x (C-contiguous
    float32 / float64 of 2+ axes, aligned, native byte order; the statistics and gamma / beta (or
    None) contiguous arrays of x's dtype and the last axis's size), in one pass
    (``fastrnn.model.BatchNormalization``: a streaming step's ~7 us through NumPy's
    small operations); the NumPy path's values, bit for bit (but the sign of a NaN).  None
    where that does not apply (the caller runs NumPy's path)."""
    cdef int nd = cnp.PyArray_NDIM(x), tx = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t n = _row_len(x), m
    if n == 0 or mean is None or variance is None:
        return None
    m = cnp.PyArray_SIZE(x) // n
    for w in (mean, variance, gamma, beta):
        if not _norm_weight(w, tx, n):
            return None
    cdef cnp.ndarray y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(x), tx, 0)
    cdef void* buf = malloc(2 * n * (sizeof(double) if tx == cnp.NPY_FLOAT64 else sizeof(float)))
    if buf == NULL:
        return None
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef const void* mp = _data(mean)
    cdef const void* vp = _data(variance)
    cdef const void* gp = _data(gamma)
    cdef const void* bp = _data(beta)
    with nogil:
        if tx == cnp.NPY_FLOAT64:
            _bn_rows(<double*>yp, <const double*>xp, m, n, <const double*>mp,
                     <const double*>vp, <const double*>gp, <const double*>bp, epsilon,
                     <double*>buf)
        else:
            _bn_rows(<float*>yp, <const float*>xp, m, n, <const float*>mp,
                     <const float*>vp, <const float*>gp, <const float*>bp,
                     <float>epsilon, <float*>buf)
    free(buf)
    return y


cdef void _mask_rows(floating* y, char* keep, const floating* x, Py_ssize_t m,
                     Py_ssize_t n, floating v) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef char k
    for r in range(m):
        k = 0
        for j in range(n):
            if x[r * n + j] != v:
                k = 1
                break
        keep[r] = k
        if k:
            memcpy(y + r * n, x + r * n, n * sizeof(floating))
        else:
            memset(y + r * n, 0, n * sizeof(floating))


def masking_rows(cnp.ndarray x not None, double value):
    """Keras's Masking on x (C-contiguous float32 / float64 of 2+ axes, aligned, native
    byte order): (x with the rows (last axis) that all equal ``value`` (rounded to x's
    type, as NumPy compares them) zeroed, the mask of the rows kept), in one pass (a
    streaming step's Masking ~5 us through NumPy); None where that does not apply."""
    cdef int nd = cnp.PyArray_NDIM(x), tx = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t n = _row_len(x), m
    if n == 0:
        return None
    m = cnp.PyArray_SIZE(x) // n
    cdef cnp.ndarray y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(x), tx, 0)
    cdef cnp.ndarray keep = cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(x), cnp.NPY_BOOL, 0)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef char* kp = <char*>cnp.PyArray_DATA(keep)
    with nogil:
        if tx == cnp.NPY_FLOAT64:
            _mask_rows(<double*>yp, kp, <const double*>xp, m, n, value)
        else:
            _mask_rows(<float*>yp, kp, <const float*>xp, m, n, <float>value)
    return y, keep


def _act_test(int which, x):
    """The vectorised activation ``which`` (0 sigmoid, 1 tanh, 2 exp) of a 1-D
    float32/float64 array, through the ISA-dispatched C kernel (the activations' test
    hook, and :func:`sigmoid`'s worker)."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    cdef float[::1] xf, yf
    cdef double[::1] xd, yd
    if x.dtype == np.float32:
        xf, yf = x, y
        if x.shape[0]:
            fr_act_array_f(which, &xf[0], &yf[0], x.shape[0])
    elif x.dtype == np.float64:
        xd, yd = x, y
        if x.shape[0]:
            fr_act_array_d(which, &xd[0], &yd[0], x.shape[0])
    else:
        raise TypeError("float32 or float64 only")
    return y


# A StepPlan whose previous step ended longer ago than this (ns) runs the next step on
# one thread (unit split only: the same arithmetic on any thread count).  Measured (2-vCPU
# KVM guest, LSTM H=256 B=1, first step after a pause, 2 threads / 1 thread): 1 ms 21 /
# 58 us, 5 ms 65 / 70, 10 ms 77 / 53, 20 ms 128 / 87, 50 ms 5029 / 173, 100 ms 6256 /
# 298: an OpenMP worker idle that long sleeps, and waking it costs milliseconds there
# (back to back: 13 / 31 us).  -1: never.
cdef long long _idle_single_ns = 10000000


# steps on one thread once the team is found asleep: the first phase's, the longest
STEP_WAKE_SINGLE = (FR_WAKE_SINGLE_MIN, FR_WAKE_SINGLE_MAX)


def _set_step_wake(int slow):
    """Test hook: every streaming step measured on a team counts as slow (1), as not (0),
    or as measured (-1).  Returns the previous value."""
    global fr_wake_force
    _hooks_changed()
    old = fr_wake_force
    fr_wake_force = slow
    return old


def _step_wake_state():
    """Test hook: the calling thread's streaming-step state (fr_kern.h): (steps left on
    one thread, slow steps in a row, probe steps to go, the phase's length)."""
    cdef int st[4]
    fr_wake_state(st)
    return st[0], st[1], st[2], st[3]


def _set_step_idle_single(long long ns):
    """Tuning / test hook: nanoseconds since a StepPlan's previous step after which its
    next step runs on one thread (-1: never; 0: always).  Returns the previous value."""
    global _idle_single_ns
    _hooks_changed()
    old = _idle_single_ns
    _idle_single_ns = ns
    return old


cdef inline long long _monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class StepPlan:
    """One time step of a stack of uni-directional layers, state carried in place.

    Built once per layer object (cached with the packed weights); :meth:`step` is the
    lean entry the streaming API uses: no validation beyond dtype/shape asserts of the
    buffers, no allocation of Python objects, the GIL released inside.
    """
    cdef fr_cell* cells
    cdef int L, H, K, I, G, U, cell, is_double
    cdef int num_threads, flip, min_rows
    cdef object keep
    cdef const void** wxp
    cdef long long last_ns
    cdef readonly int last_threads     # threads the last step ran on (tests)

    def __cinit__(self):
        self.cells = NULL
        self.wxp = NULL

    def __init__(self, int cell, int input_size, int hidden_size, list layers, acts,
                 double clip, int use_peep, int input_forget, int reset_after, dtype,
                 int num_threads, int proj_size=0, int min_rows=1):
        cdef Acts A
        cdef int l, U
        cdef float[::1] f1
        cdef double[::1] d1
        self.L = len(layers)
        self.H = hidden_size
        self.K = proj_size if proj_size > 0 else hidden_size    # size of h
        self.I = input_size
        self.cell = cell
        self.G = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
        self.is_double = np.dtype(dtype) == np.float64
        self.num_threads = num_threads if num_threads > 0 else 1
        self.min_rows = min_rows        # (fewer rows a step: one thread; layers._step_min_rows)
        U = fr_unit(8 if self.is_double else 4)
        self.U = U
        (A.f, A.fa, A.fb), (A.g, A.ga, A.gb), (A.h, A.ha, A.hb) = acts
        A.clip = clip
        if cell == CELL_RNN:
            A.is_default = A.f == A_TANH or A.f == A_RELU
        else:
            A.is_default = A.f == A_SIGMOID and A.g == A_TANH and A.h == A_TANH
        self.cells = <fr_cell*>malloc(sizeof(fr_cell) * self.L)
        self.wxp = <const void**>malloc(sizeof(void*) * self.L)
        if self.cells == NULL or self.wxp == NULL:
            raise MemoryError()
        self.keep = layers
        for l in range(self.L):
            wxp, whp, bias, bhn, peep, wrp = layers[l]
            _check_packed(wxp.shape[0], hidden_size, input_size if l == 0 else self.K,
                          self.G, U)
            _check_packed(whp.shape[0], hidden_size, self.K, self.G, U)
            if proj_size > 0:
                _check_packed(wrp.shape[0], proj_size, hidden_size, 1, U)
            else:
                wrp = wxp       # (not read)
            ptrs = []
            for a in (whp, bias, bhn, peep, wxp, wrp):
                if self.is_double:
                    d1 = a
                    ptrs.append(<Py_ssize_t>&d1[0])
                else:
                    f1 = a
                    ptrs.append(<Py_ssize_t>&f1[0])
            _fill_cell(&self.cells[l], cell, self.G, hidden_size, self.K, U, &A, use_peep,
                       input_forget, reset_after, <const void*><Py_ssize_t>ptrs[0],
                       <const void*><Py_ssize_t>ptrs[1], <const void*><Py_ssize_t>ptrs[2],
                       <const void*><Py_ssize_t>ptrs[3])
            if proj_size > 0:
                self.cells[l].P = proj_size
                self.cells[l].wrp = <const void*><Py_ssize_t>ptrs[5]
            self.wxp[l] = <const void*><Py_ssize_t>ptrs[4]

    def __dealloc__(self):
        free(self.cells)
        free(self.wxp)

    cdef void* _buf(self, a, int nd, int d0, int d1, int d2, str name) except NULL:
        """The data of a, an ndarray of the plan's dtype (_shaped_data; writeable for
        the state)."""
        return _shaped_data(a, cnp.NPY_FLOAT64 if self.is_double else cnp.NPY_FLOAT32,
                            nd == 3, True, nd, d0, d1, d2, "StepPlan.step", name)

    def step(self, x, h, c=None):
        """x (B, I), h (L, B, H), c (L, B, H) (LSTM): C-contiguous arrays of the plan's
        dtype.  h and c are updated in place; returns True (False, nothing done: the
        ISA level changed since the weights were packed; pack them again)."""
        return self._step(x, h, c) == 1

    def step_copy(self, x, h, c=None):
        """As :meth:`step`, but returns the step's output, a new (B, H) array holding
        h[-1] after the step (None where step returns False).  One allocation instead
        of a view and its copy (~0.3 us less for a stream's step)."""
        cdef cnp.npy_intp dims[2]
        if self._step(x, h, c) == 0:
            return None
        dims[0] = cnp.PyArray_DIM(<cnp.ndarray>h, 1)
        dims[1] = self.K
        y = cnp.PyArray_SimpleNew(2, dims, cnp.NPY_FLOAT64 if self.is_double else cnp.NPY_FLOAT32)
        if dims[0]:
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>y),
                   <char*>cnp.PyArray_DATA(<cnp.ndarray>h)
                   + (self.L - 1) * cnp.PyArray_NBYTES(<cnp.ndarray>y),
                   cnp.PyArray_NBYTES(<cnp.ndarray>y))
        return y

    cdef int _step(self, x, h, c) except -1:
        """step's body: 1 done, 0 nothing done (the ISA level changed)."""
        cdef void* xp
        cdef void* hp
        cdef void* cp = NULL
        cdef int B, nt, rc
        if not cnp.PyArray_Check(x) or cnp.PyArray_NDIM(<cnp.ndarray>x) != 2:
            raise ValueError("StepPlan.step: x must be a 2-D numpy array (B, I)")
        B = <int>cnp.PyArray_DIM(<cnp.ndarray>x, 0)
        xp = self._buf(x, 2, B, self.I, 0, "x")
        hp = self._buf(h, 3, self.L, B, self.K, "h")
        if self.cell == CELL_LSTM:
            cp = self._buf(c, 3, self.L, B, self.H, "c")
        if fr_unit(8 if self.is_double else 4) != self.U:
            return 0
        if B == 0:
            return 1
        with nogil:
            # one thread where the team sleeps between steps (the unit split only: the
            # same bits on any count): after a pause (_idle_single_ns), and while this
            # thread's steps find it asleep (fr_wake_single / fr_wake_after, fr_kern.h)
            nt = self.num_threads
            if B < self.min_rows:
                nt = 1
            if nt > 1 and B < fr_rowsplit_min:
                if ((_idle_single_ns >= 0
                        and _monotonic_ns() - self.last_ns > _idle_single_ns)
                        or fr_wake_single()):
                    nt = 1
                fr_wake_begin(nt)
            if self.is_double:
                rc = self._run_d(<double*>xp, <double*>hp, <double*>cp, B, nt)
            else:
                rc = self._run_f(<float*>xp, <float*>hp, <float*>cp, B, nt)
            self.last_ns = _monotonic_ns()
            fr_wake_after()
        self.last_threads = nt
        if rc != 0:
            raise MemoryError("fastrnn: could not allocate scratch memory for a step")
        return 1

    cdef int _run_f(self, float* x, float* h, float* c, int B, int nt) noexcept nogil:
        cdef fr_seq_f q
        cdef Py_ssize_t off = 0, nst = B, lens0 = 0
        cdef int l, GH = self.G * self.H, H = self.H, K = self.K
        cdef float* buf = <float*>fr_amalloc(sizeof(float) * (<Py_ssize_t>B * GH + 4 * B * H) + 64)
        if buf == NULL:
            return -1
        q.nT = 1
        q.B = B
        q.reverse = 0
        q.varlen = 0
        q.chunk = 1
        q.offsets = &off
        q.nsteps = &nst
        q.lens = &lens0
        q.mask = NULL
        q.mask_zero = 0
        q.out = NULL
        q.out_ld = 0
        q.out_col = 0
        q.xp = buf
        q.hbuf = buf + <Py_ssize_t>B * GH
        q.lastout = NULL
        q.rh = q.hbuf + 2 * B * H
        q.zb = q.hbuf + 3 * B * H
        q.hraw = q.rh       # (LSTM: rh and zb are GRU's)
        q.flip = self.flip
        self.flip = 1 - self.flip
        for l in range(self.L):
            q.I = self.I if l == 0 else K
            q.x = x if l == 0 else h + <Py_ssize_t>(l - 1) * B * K
            q.x_ld = q.I
            q.wxp = <const float*>self.wxp[l]
            q.h = h + <Py_ssize_t>l * B * K
            q.c = c + <Py_ssize_t>l * B * H if c != NULL else NULL
            fr_small_layer_f(&self.cells[l], &q, nt)
        free(buf)
        return 0

    cdef int _run_d(self, double* x, double* h, double* c, int B, int nt) noexcept nogil:
        cdef fr_seq_d q
        cdef Py_ssize_t off = 0, nst = B, lens0 = 0
        cdef int l, GH = self.G * self.H, H = self.H, K = self.K
        cdef double* buf = <double*>fr_amalloc(sizeof(double) * (<Py_ssize_t>B * GH + 4 * B * H) + 64)
        if buf == NULL:
            return -1
        q.nT = 1
        q.B = B
        q.reverse = 0
        q.varlen = 0
        q.chunk = 1
        q.offsets = &off
        q.nsteps = &nst
        q.lens = &lens0
        q.mask = NULL
        q.mask_zero = 0
        q.out = NULL
        q.out_ld = 0
        q.out_col = 0
        q.xp = buf
        q.hbuf = buf + <Py_ssize_t>B * GH
        q.lastout = NULL
        q.rh = q.hbuf + 2 * B * H
        q.zb = q.hbuf + 3 * B * H
        q.hraw = q.rh       # (LSTM: rh and zb are GRU's)
        q.flip = self.flip
        self.flip = 1 - self.flip
        for l in range(self.L):
            q.I = self.I if l == 0 else K
            q.x = x if l == 0 else h + <Py_ssize_t>(l - 1) * B * K
            q.x_ld = q.I
            q.wxp = <const double*>self.wxp[l]
            q.h = h + <Py_ssize_t>l * B * K
            q.c = c + <Py_ssize_t>l * B * H if c != NULL else NULL
            fr_small_layer_d(&self.cells[l], &q, nt)
        free(buf)
        return 0
