/* fastrnn C kernels: vectorised activations, packed small-batch recurrent kernels.
 *
 * Written with GCC vector extensions.  On x86-64 with GCC/Clang the kernels are compiled
 * three times (AVX-512, AVX2+FMA, baseline x86-64), each with vectors of its own register
 * width, and a dispatcher picks one at run time, so the binary runs on any x86-64 and is
 * fast on the machine that runs it (no instruction beyond the baseline runs unless the
 * CPU reports it).
 *
 * The kernel source (fr_kern_t.h) is included once per (level, float/double) through
 * fr_kern_lvl.h.
 *
 * Packed recurrent weights ("unit-block" layout): units are grouped in blocks of U (U =
 * the level's vector width: 16/8/4 floats, 8/4/2 doubles for AVX-512/AVX2/baseline).
 * Block ``ub`` holds, for k in 0..K, the G gate columns of its U units:
 * ``Wp[ub][k][g][u]`` = ``W^T[k][g*H + ub*U + u]`` (zero for padding units past H).  A
 * thread owning a range of blocks reads one contiguous slice.
 */
#ifndef FR_KERN_H
#define FR_KERN_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>   /* the activations' clamps (fr_act_t.h) */
#include <x86intrin.h>   /* __rdtsc (fr_stamp) */
#endif
#include <math.h>
#include <time.h>     /* clock_gettime (fr_stamp) */

/* _kernels.pyx cimports NumPy's C API, whose headers pull in <complex.h> and its macro I
 * (the imaginary unit); the kernels name an input size I */
#undef I

#ifdef _OPENMP
#include <omp.h>
#endif

#define FR_CAT_(a, b) a##b
#define FR_CAT(a, b) FR_CAT_(a, b)

/* Runtime ISA dispatch.  The kernels (fr_kern_t.h) are written once with GCC vector
 * extensions over the native vector of the target and compiled once per ISA level under
 * GCC/Clang on x86-64: level 2 AVX-512 (64-byte vectors), level 1 AVX2+FMA (32-byte),
 * level 0 baseline x86-64 / any other CPU (16-byte).  Each level's vectors are exactly
 * its register width: a vector wider than the registers (64-byte on AVX2) is kept in
 * memory by GCC and every operation goes through the stack (measured: 10-30x slower).
 * The unit block U of the packed weights is the vector width of the level that packed
 * them (fr_unit), and fr_cell.U picks the kernel level at run time. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FR_NO_DISPATCH)
#define FR_HAVE_CLONES 1
#include "fr_cpu.h"
static int fr_force_level = -1;   /* tests: force a lower ISA level (-1: automatic) */
static int fr_hw_level(void) { return fr_cpu_level(); }
static int fr_level(void) {
    int l = fr_hw_level();
    if (fr_force_level >= 0 && fr_force_level < l) return fr_force_level;
    return l;
}
/* the packed matvec's software prefetch at the AVX-512 level (fr_kern_t.h FR_SWPF): on
 * for AMD CPUs but family 0x19, off for the others; fr_swpf_init sets it (once, at
 * import), tests and A/B runs force it through _kernels._set_swpf.  Zen 4 (family 0x19,
 * 1 MiB L2; in-process alternating, B=1 T=100, without / with): weights within L2 LSTM
 * H=128-384, GRU H=256-384 0.99-1.02, beyond it LSTM H=512 0.92-0.94, H=768 0.88, GRU
 * H=640 1.00, SimpleRNN H=1024 0.93. */
#include "fr_cache.h"
static int fr_swpf_on = 0;
static void fr_swpf_init(void) {
    __builtin_cpu_init();
    fr_swpf_on = __builtin_cpu_is("amd") && !fr_amd_f19() ? 1 : 0;
}
#else
#define FR_HAVE_CLONES 0
static int fr_swpf_on = 0;
static void fr_swpf_init(void) {}
static int fr_force_level = -1;
static int fr_hw_level(void) { return 0; }
static int fr_level(void) { return 0; }
#endif

/* vector bytes of a level; units per packed block for an element size */
static int fr_level_bytes(int level) { return level == 2 ? 64 : (level == 1 ? 32 : 16); }
static int fr_unit(int elsize) { return fr_level_bytes(fr_level()) / elsize; }
/* the level whose vectors hold U elements of elsize bytes (-1: none this CPU runs) */
static int fr_level_of_unit(int U, int elsize) {
    int l;
    for (l = fr_hw_level(); l >= 0; l--)
        if (fr_level_bytes(l) == U * elsize) return l;
    return -1;
}

#define FR_INLINE static inline __attribute__((always_inline))
/* one out-of-line function of a level around an always-inline body (the hot loops stay
 * in their own functions; the level is set by the enclosing target region) */
#define FR_FN(ret, name, impl, params, args) static ret name params { return impl args; }

#ifndef FR_PREFETCH
#define FR_PREFETCH 2048   /* bytes ahead in the single-row weight stream */
#endif

/* test hook: the batch-lane kernel splits by unit groups even where panels would do */
static int fr_wide_force_groups = 0;
/* test / A-B hook: the batch-lane kernel runs panels two at a time (1) or one (0) */
static int fr_wide_pairs = 1;

/* test hook: LSTM / GRU gate math deferred and batched over (row, unit block) pairs (1), per
 * block as the product finishes (0) */
static int fr_dgate_mode = 1;

/* test hook: the unit split's per-step barrier spins on two counters (1, fr_barrier.h)
 * or is OpenMP's (0) */
static int fr_barrier_spin = 1;
#include "fr_barrier.h"
/* the unit split's per-step barrier of a team of n; bar: arrivals, generation */
static void fr_step_barrier(int* bar, int n) {
    if (fr_barrier_spin) {
        fr_barrier_wait(bar, n);
        return;
    }
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* Streaming steps and a sleeping team (StepPlan).  A step is a parallel region of its
 * own.  Where the team's threads sleep between regions and inside OpenMP's barriers
 * (libgomp throttles its spinning once the OpenMP threads of all Python threads' teams
 * outnumber the CPUs; OMP_WAIT_POLICY=passive; a busy CPU), each region pays a futex
 * wake-up at its start and another at its end, tens of microseconds on a VM, and a step on
 * one thread is faster.  While fr_wake_on (the calling thread's StepPlan step), the packed
 * kernel's regions add their wall time to fr_wake_wall and their threads' time in the body
 * to fr_wake_body.  fr_wake_after keeps the calling thread's state: two steps in a row
 * whose regions took longer than their threads' work put together (about what one thread
 * would take) put its bit-identical steps (unit split) on one thread for a phase of
 * FR_WAKE_SINGLE_MIN steps, then two probe steps on the team (the first wakes it, the
 * second decides): slow again, the next phase is twice as long (up to FR_WAKE_SINGLE_MAX:
 * the probes of a lasting condition cost little); else back on the team.  Thread-local:
 * each Python thread has its own team.  fr_wake_force (tests): 1 every measured step
 * counts as slow, 0 as not, -1 as measured. */
#if defined(__GNUC__) || defined(__clang__)
#define FR_TLS __thread
#else
#define FR_TLS
#endif
#define FR_WAKE_SINGLE_MIN 16
#define FR_WAKE_SINGLE_MAX 256
static FR_TLS int fr_wake_on;
static FR_TLS long long fr_wake_wall, fr_wake_body;
/* single-phase steps left, slow steps in a row, probe steps to go, the last phase's length */
static FR_TLS int fr_ws_single, fr_ws_slow, fr_ws_probe, fr_ws_len;
static int fr_wake_force = -1;
/* a time stamp for those sums (compared with each other only): the TSC on x86 (~7 ns a
 * read against ~20 for clock_gettime), else CLOCK_MONOTONIC */
static inline long long fr_stamp(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    return (long long)__rdtsc();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}
/* before a step run on nt threads: measure it where nt > 1 */
static void fr_wake_begin(int nt) {
    fr_wake_on = nt > 1;
    fr_wake_wall = fr_wake_body = 0;
}
/* before a step: whether it runs on one thread (the thread's single phase) */
static int fr_wake_single(void) {
    if (fr_ws_single <= 0) return 0;
    if (--fr_ws_single == 0) fr_ws_probe = 2;
    return 1;
}
/* after a step measured on a team (fr_wake_begin) */
static void fr_wake_after(void) {
    int probe_ends = 0, slow;
    if (!fr_wake_on) return;
    fr_wake_on = 0;
    if (fr_wake_wall <= 0) return;      /* no region ran (the kernel took one thread) */
    slow = fr_wake_force >= 0 ? fr_wake_force : fr_wake_wall > fr_wake_body;
    if (fr_ws_probe > 0) {
        if (--fr_ws_probe > 0) return;      /* the first probe step wakes the team */
        probe_ends = 1;
    }
    if (!slow) {
        fr_ws_slow = 0;
        fr_ws_len = 0;
    } else if (probe_ends) {
        fr_ws_len = fr_ws_len < FR_WAKE_SINGLE_MAX / 2 ? 2 * fr_ws_len : FR_WAKE_SINGLE_MAX;
        fr_ws_single = fr_ws_len;
    } else if (++fr_ws_slow >= 2) {
        fr_ws_single = fr_ws_len = FR_WAKE_SINGLE_MIN;
        fr_ws_slow = 0;
    }
}
/* test hook: the calling thread's state (single steps left, slow steps in a row, probe
 * steps to go, the last phase's length) */
static void fr_wake_state(int* st) {
    st[0] = fr_ws_single;
    st[1] = fr_ws_slow;
    st[2] = fr_ws_probe;
    st[3] = fr_ws_len;
}

/* tuning / test hook: the packed kernel's unit split overlaps each step's wait for the
 * other threads' h with the product over the thread's own units (1), or ends every step
 * at a barrier (0); -1: by the size of a thread's recurrent weights (fr_kern_t.h) */
static int fr_step_overlap = -1;
#include "fr_cache.h"
/* The automatic rule: LSTM / GRU where a thread's recurrent weights (slice: its share of
 * nb blocks of U units, G gates, K inputs) take at most half of its L2, and at B > 1 at
 * least an eighth.  Measured (Intel Xeon, 2 MiB L2, 2 threads, T=100, overlapped /
 * barrier): B=1 LSTM H=128-320 (0.26-0.8 MiB a thread) 0.92-0.98, float64 H=256 (1 MiB)
 * 0.95, GRU H=96-384 0.94-0.98; B=2-4 H=256 0.93-0.98.  Beyond half of L2 the two passes
 * over the weights (the own units' columns, then the others') lose them from L2 between
 * steps: LSTM H=384 (1.15 MiB) 1.00, H=448 1.04, H=512 1.12, GRU H=512 1.04.  Small
 * slices at B > 1 (GRU H=128 B=2-3, LSTM H=64 B=2) 1.01-1.04; SimpleRNN's step is too
 * short for its own half to cover the wait (B=1 H=128-512 0.87-1.03, B=4 H=256 1.12).
 * AMD CPUs (fr_amd, and fr_amd_f19 for the tests' forced Zen 3 / 4): never.  Measured
 * on a Zen 4 EPYC (1 MiB L2, 2 threads, T=100, in-process alternating, barrier /
 * overlapped): B=1 LSTM H=128-256 0.88-0.99, GRU H=128-320 0.87-1.00, B=2-4 LSTM
 * H=192-256 0.86-0.96, GRU H=256 0.92; beyond half of L2 overlapping measured 1.06-1.13
 * as on the Xeon.  Against the build before (this and the prefetch change,
 * bench/ab_builds.py, separate processes): LSTM B=1 H=256 0.93, B=4 0.97, GRU B=1 0.98;
 * streaming steps unchanged (1.00-1.02).  On a Zen 5 EPYC (family 0x1A, full-width
 * AVX-512, 1 MiB L2; the same A/B): B=1 LSTM H=128-192 0.91, H=256 0.75, GRU H=128
 * 0.90, H=256 0.81, B=2 LSTM H=256 0.85, B=4 LSTM / GRU H=256 0.96 / 0.95. */
static int fr_overlap_auto(int cell, int G, int K, int U, int nb, int nthr, int B,
                           int elsize) {
    const long l2 = fr_l2_bytes() > 0 ? fr_l2_bytes() : 1L << 20;
    const long slice = (long)G * K * U * elsize * ((nb + nthr - 1) / nthr);
    if (fr_amd() || fr_amd_f19()) return 0;
    return cell != 0 && 2 * slice <= l2 && (B == 1 || 8 * slice >= l2);
}

/* batch rows from which the packed kernel splits rows instead of units between threads
 * (_kernels sets 8 at import on Zen 4: _kernels._zen4) */
static int fr_rowsplit_min = 16;

/* multiply-adds per step below which a layer runs on one thread (tests set 0) */
static long fr_min_par_work = 16384;

/* The first row of thread tid of nth in the packed kernel's row split: by count, or in
 * a packed ragged batch (``lens``: its B lengths, sorted longest first, where by count
 * the first thread would get the long sequences) where the running sum of the lengths
 * reaches tid/nth of their total, so that the threads run about the same number of row
 * steps (measured on Zen 4, lengths T/2..T, 2 threads: GRU / LSTM B=16-64 calls
 * 0.86-0.95x their time, bench/small_lengths.py on two builds). */
static int fr_row_cut(const ptrdiff_t* lens, int B, int varlen, int tid, int nth) {
    long total = 0, acc = 0, goal;
    int r;
    if (tid <= 0) return 0;
    if (tid >= nth) return B;
    if (!varlen) return (int)((long)tid * B / nth);
    for (r = 0; r < B; r++) total += (long)lens[r];
    goal = (total * tid + nth / 2) / nth;
    for (r = 0; r < B && acc < goal; r++) acc += (long)lens[r];
    return r;
}


/* activation codes (must match _kernels.pyx) */
enum { FR_SIGMOID = 0, FR_TANH, FR_RELU, FR_HARDSIGMOID, FR_LEAKYRELU, FR_AFFINE,
       FR_SCALEDTANH, FR_ELU, FR_SOFTSIGN, FR_SOFTPLUS, FR_THRESHOLDEDRELU, FR_LINEAR };

/* One direction of one layer, as the kernels see it. */
typedef struct {
    int cell;            /* 0 RNN, 1 LSTM, 2 GRU */
    int G, H, K;         /* gates, hidden units, recurrent input size (K == H: no proj) */
    int P;               /* LSTM projection size (K == P), 0 without a projection */
    int U, nb;           /* units per block, number of blocks */
    int fast;            /* default activations, no clip/peepholes/input_forget */
    int rnn_relu;        /* RNN fast path with relu instead of tanh */
    int f, g, h;         /* ONNX activation codes */
    double fa, fb, ga, gb, ha, hb, clip;
    int input_forget, reset_after;
    int rz_split;        /* GRU reset_after=False: wp = [(nb, K, 2, U) r,z | (nb, K, 1, U) n] */
    const void* wp;      /* packed recurrent weights (nb, K, G, U) */
    const void* bias;    /* (G*H) fused biases */
    const void* bhn;     /* (H) GRU reset_after b_hn */
    const void* peep;    /* (3H) or NULL */
    const void* wrp;     /* P > 0: packed projection weights (nbp, H, 1, U), W_hr^T */
} fr_cell;


FR_INLINE int fr_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
FR_INLINE int fr_nthreads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The sequence descriptor of one small-kernel call (packed batch, see _kernels.pyx). */
#define FR_SEQ_STRUCT(T)                                                                  \
    struct {                                                                              \
        int nT, B, I, reverse, varlen, chunk;                                             \
        const ptrdiff_t* offsets;    /* (T) */                                            \
        const ptrdiff_t* nsteps;     /* (T) */                                            \
        const ptrdiff_t* lens;       /* (B) sorted lengths (varlen) */                    \
        const T* x; ptrdiff_t x_ld;  /* packed input rows */                              \
        const T* wxp;                /* packed input weights (nb, I, G, U) */             \
        const unsigned char* mask;   /* packed mask or NULL */                            \
        int mask_zero;                                                                    \
        T* out; ptrdiff_t out_ld; ptrdiff_t out_col;   /* out NULL: outputs not written */\
        T* h; T* c;                  /* (B, K) h and (B, H) c state in/out (c: LSTM) */   \
        /* scratch (caller-allocated) */                                                  \
        T* xp;                       /* (chunk * B, G*H) */                               \
        T* hbuf;                     /* (2, B, K) */                                      \
        T* lastout;                  /* (B, K) mask only */                               \
        T* hraw;                     /* (B, H) LSTM with a projection: h before it */     \
        int flip;                    /* single-step calls: traverse unit blocks backwards */\
        int team;                    /* threads sharing a step's unit blocks (the kernel's) */\
        T* rh; T* zb;                /* (B, H) each: GRU reset_after=False scratch */     \
        T* xt; T* ht; T* ct;         /* batch-lane kernel scratch (fr_wide_t.h) */        \
        int wide_groups;             /* batch-lane kernel: split by unit groups */        \
    }
typedef FR_SEQ_STRUCT(float) fr_seq_f;
typedef FR_SEQ_STRUCT(double) fr_seq_d;

/* One instantiation of the kernels per ISA level (fr_kern_lvl.h: float and double). */
#if FR_HAVE_CLONES
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define FR_VBYTES 64
#define FR_NREG 32
#define FR_LSFX _l2
#include "fr_kern_lvl.h"
#undef FR_VBYTES
#undef FR_NREG
#undef FR_LSFX
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define FR_VBYTES 32
#define FR_NREG 16
#define FR_LSFX _l1
#include "fr_kern_lvl.h"
#undef FR_VBYTES
#undef FR_NREG
#undef FR_LSFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#define FR_VBYTES 16
#define FR_NREG 16
#define FR_LSFX _l0
#include "fr_kern_lvl.h"
#undef FR_VBYTES
#undef FR_NREG
#undef FR_LSFX

/* Entry points.  The small-batch kernels run the level that matches the packing
 * (cl->U); the caller checks that cl->U is a unit this CPU runs (fr_level_of_unit). */
#if FR_HAVE_CLONES
#define FR_AT_LEVEL(lvl, name, args)                                                     \
    do {                                                                                \
        if ((lvl) == 2) { FR_CAT(name, _l2) args; return; }                             \
        if ((lvl) == 1) { FR_CAT(name, _l1) args; return; }                             \
        if ((lvl) == 0) { FR_CAT(name, _l0) args; return; }                             \
    } while (0)
#else
#define FR_AT_LEVEL(lvl, name, args)                                                     \
    do { if ((lvl) == 0) { FR_CAT(name, _l0) args; return; } } while (0)
#endif
/* the batch-lane kernel runs the current level; its packing depends only on the rows
 * per group (fr_wide_rows), which the caller checks */
#if FR_HAVE_CLONES
#define FR_WIDE_AT_LEVEL(name, args)                                                     \
    do {                                                                                \
        const int l_ = fr_level();                                                      \
        if (l_ == 2) return FR_CAT(name, _l2) args;                                     \
        if (l_ == 1) return FR_CAT(name, _l1) args;                                     \
        return FR_CAT(name, _l0) args;                                                  \
    } while (0)
#else
#define FR_WIDE_AT_LEVEL(name, args) do { return FR_CAT(name, _l0) args; } while (0)
#endif
/* accumulator rows per unit group of the batch-lane kernel at the current level */
static int fr_wide_rows(void) { return fr_level() == 2 ? 24 : 12; }
#define FR_ENTRIES(T, S)                                                                \
static void FR_CAT(fr_small_layer, S)(const fr_cell* cl, FR_CAT(fr_seq, S)* q, int nt) { \
    FR_AT_LEVEL(fr_level_of_unit(cl->U, sizeof(T)), FR_CAT(fr_small_layer, S), (cl, q, nt)); \
}                                                                                       \
static void FR_CAT(fr_small_pair, S)(const fr_cell* cl0, FR_CAT(fr_seq, S)* q0,         \
                                     const fr_cell* cl1, FR_CAT(fr_seq, S)* q1) {       \
    FR_AT_LEVEL(fr_level_of_unit(cl0->U, sizeof(T)), FR_CAT(fr_small_pair, S),           \
               (cl0, q0, cl1, q1));                                                     \
}                                                                                       \
static void FR_CAT(fr_rows, S)(const fr_cell* cl, int n, const T* acc, ptrdiff_t acc_ld, \
                               T* const* xrows, const T* hprev, ptrdiff_t hp_ld, T* c,   \
                               T* hout, ptrdiff_t ho_ld) {                              \
    FR_AT_LEVEL(fr_level(), FR_CAT(fr_rows, S),                                          \
               (cl, n, acc, acc_ld, xrows, hprev, hp_ld, c, hout, ho_ld));              \
}                                                                                       \
static int FR_CAT(fr_wide_layer, S)(const fr_cell* cl, FR_CAT(fr_seq, S)* q, int nt) {  \
    FR_WIDE_AT_LEVEL(FR_CAT(fr_wide_layer, S), (cl, q, nt));                             \
}                                                                                       \
static void FR_CAT(fr_act_array, S)(int which, const T* x, T* y, ptrdiff_t n) {         \
    FR_AT_LEVEL(fr_level(), FR_CAT(fr_act_array, S), (which, x, y, n));                  \
}                                                                                       \
static void FR_CAT(fr_dense_rows, S)(int m, int k, int n, const T* x, const T* w,        \
                                     const T* b, int act, T* y) {                       \
    FR_AT_LEVEL(fr_level(), FR_CAT(fr_dense_rows, S), (m, k, n, x, w, b, act, y));       \
}
FR_ENTRIES(float, _f)
FR_ENTRIES(double, _d)
#undef FR_ENTRIES

static int fr_have_clones(void) { return FR_HAVE_CLONES; }

static const char* fr_isa(void) {
    int l = fr_level();
    return l == 2 ? "avx512" : (l == 1 ? "avx2+fma" : "x86-64 baseline");
}

#endif
