/* Small-M GEMM for the per-step recurrent products of the training kernels.
 *
 * C (m x n, ldc) = [C +] A (m x k, lda) @ B, where B (k x n) was packed once per call into
 * panels of NB columns (panel p: k rows of NB contiguous values, zero padded), 64-byte
 * aligned.  A register-blocked micro-kernel (MR rows x NB columns of accumulators) walks
 * k; a panel (k * NB values) stays in the L2 cache of the thread that owns it for the
 * whole time loop.  Compiled for AVX-512 and AVX2+FMA with GCC/Clang target attributes
 * and chosen at run time (__builtin_cpu_supports); elsewhere frbg_level() returns 0 and
 * the caller uses BLAS.  scipy's OpenBLAS spends ~30 us of overhead per small call (and
 * runs its Haswell kernels on AVX-512 machines), which at batch 16 is several times the
 * arithmetic; hence this file.
 */
#ifndef FASTRNN_BACKWARD_GEMM_H
#define FASTRNN_BACKWARD_GEMM_H

#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>   /* the activations' clamps (fr_act_t.h) */
#endif
#include <unistd.h>
#include "fr_cache.h"   /* fr_l2_bytes (L2 bytes of a core), fr_amalloc */

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FRBG_X86 1
#else
#define FRBG_X86 0
#endif

/* 0: none (use BLAS), 1: AVX2+FMA, 2: AVX-512F */
static int frbg_level_cache = -1;
static int frbg_level(void) {
#if FRBG_X86
    if (frbg_level_cache < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) frbg_level_cache = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) frbg_level_cache = 1;
        else frbg_level_cache = 0;
        if (getenv("FASTRNN_NO_SMALL_GEMM")) frbg_level_cache = 0;   /* tests: BLAS path */
        else if (getenv("FASTRNN_SMALL_GEMM_AVX2") && frbg_level_cache == 2)
            frbg_level_cache = 1;                                    /* tests: AVX2 path */
    }
    return frbg_level_cache;
#else
    return 0;
#endif
}

/* panel width (columns) for a level and element size: 4 vectors */
static int frbg_nb(int level, int elsize) {
    int vbytes = level == 2 ? 64 : 32;
    return 4 * (vbytes / elsize);
}

/* Scratch blocks kept between calls (fr_keep_get, fr_cache.h), one per slot: a training
 * step allocates the same large buffers (dG: N x 4H values) every call.  Two sets of
 * FRBG_SET slots: the bidirectional pair (_backward.backward_pair) runs its second
 * direction with set 1 (frbg_slot_set, the calling thread's), so the two directions,
 * running at the same time, each find their own blocks kept (a shared slot stays correct,
 * fr_keep_get being atomic, but one of the two would take fresh pages every call). */
#define FRBG_SET 4
#define FRBG_SLOTS (2 * FRBG_SET)
static void* frbg_slot[FRBG_SLOTS];
static __thread int frbg_slot_set;
static void frbg_scratch_set(int set) { frbg_slot_set = set ? FRBG_SET : 0; }
static void* frbg_scratch_get(int slot, size_t bytes) {
    return fr_keep_get(&frbg_slot[frbg_slot_set + slot], bytes);
}
static void frbg_scratch_put(int slot, void* q) { fr_keep_put(&frbg_slot[frbg_slot_set + slot], q); }
/* test hook: the bytes kept in slot i (0 .. FRBG_SLOTS - 1) now */
static size_t frbg_scratch_kept(int i) {
    void* p = NULL;
#if defined(__GNUC__) || defined(__clang__)
    if (i >= 0 && i < FRBG_SLOTS) p = __atomic_load_n(&frbg_slot[i], __ATOMIC_ACQUIRE);
#endif
    return p ? *(size_t*)p : 0;
}
/* worker placement (fr_barrier.h) for the parallel regions written in Cython
 * (_backward.pyx: the pipelined forward and backward, the pair) */
#include "fr_barrier.h"
static void* frbg_place_team(int nthr) { return (void*)fr_place_team(nthr); }
static void frbg_place_join(void* p, int t) { fr_place_join((fr_place*)p, t); }
/* Free every kept block; returns the bytes freed. */
static size_t frbg_scratch_release(void) { return fr_keep_release(frbg_slot, FRBG_SLOTS); }

/* Pack B (k x n) into panels of nb columns.  trans=0: B[kk][j] = W[kk*ldw + j];
 * trans=1: B[kk][j] = W[j*ldw + kk] (B = W^T).  Returns NULL when out of memory. */
#define FRBG_PACK(NAME, T)                                                             \
static T* NAME##_into(const T* W, int ldw, int k, int n, int trans, int nb, T* out) {  \
    int np = (n + nb - 1) / nb, p, kk, j;                                              \
    for (p = 0; p < np; p++) {                                                         \
        T* P = out + (size_t)p * k * nb;                                               \
        int j0 = p * nb, w = n - j0 < nb ? n - j0 : nb;                                \
        for (kk = 0; kk < k; kk++) {                                                   \
            T* row = P + (size_t)kk * nb;                                              \
            if (trans) for (j = 0; j < w; j++) row[j] = W[(size_t)(j0 + j) * ldw + kk];\
            else memcpy(row, W + (size_t)kk * ldw + j0, sizeof(T) * w);                \
            for (j = w; j < nb; j++) row[j] = 0;                                       \
        }                                                                              \
    }                                                                                  \
    return out;                                                                        \
}                                                                                      \
static T* NAME(const T* W, int ldw, int k, int n, int trans, int nb) {                 \
    T* out = (T*)fr_amalloc(sizeof(T) * (size_t)((n + nb - 1) / nb) * k * nb);         \
    if (!out) return NULL;                                                             \
    return NAME##_into(W, ldw, k, n, trans, nb, out);                                  \
}
FRBG_PACK(frbg_pack_f, float)
FRBG_PACK(frbg_pack_d, double)

/* Pack B (k x n + ones) whose row kk starts at rows[kk] (contiguous n values); with
 * ones, B gets an extra last column of ones (so that A @ B also yields A's row sums). */
/* Row kk of a packed B (K rows, panels of nb columns): the n values at src (with ones,
 * a 1 after them: the extra column). */
#define FRBG_PACK_ROW(SUF, T)                                                          \
static void frbg_pack_row_##SUF(const T* src, int n, int nb, ptrdiff_t K, ptrdiff_t kk, \
                                int ones, T* out) {                                    \
    int np = (n + (ones ? 1 : 0) + nb - 1) / nb, p;                                    \
    for (p = 0; p < np; p++) {                                                         \
        T* row = out + ((size_t)p * K + kk) * nb;                                      \
        int j0 = p * nb, w = n - j0 < nb ? n - j0 : nb;                                \
        if (w < 0) w = 0;                                                              \
        if (w > 0) memcpy(row, src + j0, sizeof(T) * w);                               \
        if (w < nb) memset(row + w, 0, sizeof(T) * (nb - w));                          \
        if (ones && n >= j0 && n < j0 + nb) row[n - j0] = (T)1;                        \
    }                                                                                  \
}
FRBG_PACK_ROW(f, float)
FRBG_PACK_ROW(d, double)
#define FRBG_PACK_ROWS(NAME, SUF, T)                                                   \
static T* NAME##_into(const T* const* rows, int k, int n, int nb, int ones, T* out) {  \
    int kk;                                                                            \
    for (kk = 0; kk < k; kk++) frbg_pack_row_##SUF(rows[kk], n, nb, k, kk, ones, out); \
    return out;                                                                        \
}                                                                                      \
static T* NAME(const T* const* rows, int k, int n, int nb, int ones) {                 \
    int np = (n + (ones ? 1 : 0) + nb - 1) / nb;                                       \
    T* out = (T*)fr_amalloc(sizeof(T) * (size_t)np * k * nb);                          \
    if (!out) return NULL;                                                             \
    return NAME##_into(rows, k, n, nb, ones, out);                                     \
}
FRBG_PACK_ROWS(frbg_pack_rows_f, f, float)
FRBG_PACK_ROWS(frbg_pack_rows_d, d, double)

/* Pack B = W^T (k x 4H), W (4H x k, ldw) in PyTorch layout, in the unit-block layout of
 * frbg_gemmu_*: panel p, row kk = [i | f | g | o] of units p*U .. p*U+U-1 (zero past H).
 * In blocks of FRBG_PACK_KB rows kk: the block's destination rows (4 KiB for float
 * AVX-512) stay in L1 while the 4U source rows fill them.  Walking all k rows per source
 * row instead rewrote the whole panel (64 KiB at k = 256) 4U times from L2: 4x slower
 * (float AVX-512, Intel Xeon: W_ih and W_hh at H = 256 0.48 -> 0.12 ms, H = 512 2.05 ->
 * 0.61 ms on 2 threads; KB = 32: 0.12 / 0.87, 64: 0.15 / 0.72).  The 4 x 3 kernel's
 * packing below (rows of at most 3 vectors) measured no different blocked. */
#ifndef FRBG_PACK_KB
#define FRBG_PACK_KB 16
#endif
#define FRBG_PACK_UNITS(NAME, T)                                                       \
static void NAME(const T* W, int ldw, int k, int H, int U, int p0, int p1, T* out) {  \
    int p, g, u, kk, k0, k1;                                                           \
    for (p = p0; p < p1; p++)                                                          \
        for (k0 = 0; k0 < k; k0 = k1) {                                                \
            k1 = k - k0 < FRBG_PACK_KB ? k : k0 + FRBG_PACK_KB;                        \
            for (g = 0; g < 4; g++)                                                    \
                for (u = 0; u < U; u++) {                                              \
                    int unit = p * U + u;                                              \
                    T* dst = out + (size_t)p * k * 4 * U + g * U + u;                  \
                    if (unit < H) {                                                    \
                        const T* src = W + (size_t)(g * H + unit) * ldw;               \
                        for (kk = k0; kk < k1; kk++) dst[(size_t)kk * 4 * U] = src[kk]; \
                    } else                                                             \
                        for (kk = k0; kk < k1; kk++) dst[(size_t)kk * 4 * U] = 0;      \
                }                                                                      \
        }                                                                              \
}
FRBG_PACK_UNITS(frbg_pack_units_f, float)
FRBG_PACK_UNITS(frbg_pack_units_d, double)
/* vectors in the next group of a run of rem vector columns for the 4 x 3 micro-kernel:
 * 3s, with 4 -> 2 + 2 (a lone vector needs 4 broadcasts per 4 FMAs) */
static inline int frbg_m43_group(int rem) { return rem == 4 || rem == 2 ? 2 : rem < 3 ? rem : 3; }
static int frbg_m43_ngroups(int n) { int g = 0; while (n > 0) { n -= frbg_m43_group(n); g++; } return g; }
/* The same weights for the 4 x 3 kernel (AVX2): vector column c = gate c % 4 of unit
 * block c / 4 (U units); the columns [c0, c1) grouped from c0 by frbg_m43_group, each
 * group of nv columns dense (row kk: nv * U values) at out + c * U * k for its first
 * column c; only groups [g0, g1) of the run are written (a share of the packing). */
#define FRBG_PACK_UNITS43(NAME, T)                                                     \
static void NAME(const T* W, int ldw, int k, int H, int U, int c0, int c1, int g0,     \
                 int g1, T* out) {                                                     \
    int c = c0, gi = 0, nv, v, u, kk;                                                  \
    for (; c < c1; c += nv, gi++) {                                                    \
        nv = frbg_m43_group(c1 - c);                                                   \
        if (gi < g0 || gi >= g1) continue;                                             \
        for (v = 0; v < nv; v++) {                                                     \
            int p = (c + v) / 4, g = (c + v) % 4;                                      \
            for (u = 0; u < U; u++) {                                                  \
                int unit = p * U + u;                                                  \
                T* dst = out + (size_t)c * U * k + (size_t)v * U + u;                  \
                if (unit < H) {                                                        \
                    const T* src = W + (size_t)(g * H + unit) * ldw;                   \
                    for (kk = 0; kk < k; kk++) dst[(size_t)kk * nv * U] = src[kk];     \
                } else                                                                 \
                    for (kk = 0; kk < k; kk++) dst[(size_t)kk * nv * U] = 0;           \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}
FRBG_PACK_UNITS43(frbg_pack_units43_f, float)
FRBG_PACK_UNITS43(frbg_pack_units43_d, double)
/* B (k x n) for the 4 x 3 kernel: vector column c = columns c*VL .. c*VL+VL-1 (zero past
 * n), the vector columns [c0, c1) grouped from c0 as above, dense, group at out + c*VL*k.
 * trans as frbg_pack. */
#define FRBG_PACK43(NAME, T)                                                           \
static void NAME(const T* W, int ldw, int k, int n, int trans, int VL, int c0, int c1, \
                 T* out) {                                                             \
    int c, nv, v, j, kk;                                                               \
    for (c = c0; c < c1; c += nv) {                                                    \
        nv = frbg_m43_group(c1 - c);                                                   \
        for (kk = 0; kk < k; kk++) {                                                   \
            T* row = out + (size_t)c * VL * k + (size_t)kk * nv * VL;                  \
            for (v = 0; v < nv; v++)                                                   \
                for (j = 0; j < VL; j++) {                                             \
                    int col = (c + v) * VL + j;                                        \
                    row[v * VL + j] = col >= n ? (T)0 : trans ? W[(size_t)col * ldw + kk] \
                                                               : W[(size_t)kk * ldw + col]; \
                }                                                                      \
        }                                                                              \
    }                                                                                  \
}
FRBG_PACK43(frbg_pack43_f, float)
FRBG_PACK43(frbg_pack43_d, double)

/* The larger blocks (64 micro-panels x 8 panels x 512 rows: the B block in L2, a C tile
 * loaded and stored once per 512 rows instead of 128) for the 6-row (AVX-512) kernel
 * where a core has 2 MiB of L2 or more (A block ~0.8 MiB, C block ~0.8 MiB, B block
 * 128 KiB for float).  Measured (Intel Xeon, 2 MiB L2, backward of one layer, 2
 * threads, in-process A/B): LSTM B=64 T=50 H=512 0.96x, GRU 0.97x, LSTM B=32 T=100
 * H=256 0.93x; float64 unchanged (1.00).  Smaller L2s keep the smaller blocks (not
 * measured there).  frbg_wgemm_mode: -1 by the L2 size, 0 / 1 forced (tests, A/B). */
static int frbg_wgemm_mode = -1;
static int frbg_wgemm_big(int MR) {
    if (MR != 6) return 0;
    if (frbg_wgemm_mode >= 0) return frbg_wgemm_mode;
    return fr_l2_bytes() >= (2L << 20);
}
#if FRBG_X86
/* micro-kernel: MR (compile-time constant after inlining) rows x 4 vectors */
#define FRBG_MICRO(NAME, T, VT, VTU, VL, ATTR)                                          \
ATTR static inline __attribute__((always_inline)) void                                \
NAME(const int mr, int k, const T* A, int lda, int aks, const T* P, T* C, int ldc,    \
     int w, int beta, int vs) {                                                        \
    VT acc[6][4];                                                                      \
    int r, v, kk, j;                                                                   \
    for (r = 0; r < mr; r++)                                                           \
        for (v = 0; v < 4; v++) acc[r][v] = (VT){0};                                   \
    _Pragma("GCC unroll 2")                                                            \
    for (kk = 0; kk < k; kk++) {                                                       \
        const VT* b = (const VT*)(P + (size_t)kk * 4 * VL);                            \
        VT b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];                                 \
        for (r = 0; r < mr; r++) {                                                     \
            VT a = A[(size_t)r * lda + (size_t)kk * aks] - (VT){0};  /* broadcast */  \
            acc[r][0] += a * b0; acc[r][1] += a * b1;                                  \
            acc[r][2] += a * b2; acc[r][3] += a * b3;                                  \
        }                                                                              \
    }                                                                                  \
    /* vs: distance between the 4 vectors' columns in C (VL: one contiguous panel of w  \
     * valid columns; else the unit-block layout: w valid lanes in each vector) */     \
    if (vs == VL ? w == 4 * VL : w == VL) {                                            \
        for (r = 0; r < mr; r++)                                                       \
            for (v = 0; v < 4; v++) {                                                  \
                VTU* c = (VTU*)(C + (size_t)r * ldc + (size_t)v * vs);                 \
                *c = beta ? *c + acc[r][v] : acc[r][v];                                \
            }                                                                          \
    } else {                                                                           \
        T tmp[4 * VL];                                                                 \
        for (r = 0; r < mr; r++) {                                                     \
            memcpy(tmp, acc[r], sizeof(tmp));                                          \
            for (v = 0; v < 4; v++)                                                    \
                for (j = 0; j < VL; j++) {                                             \
                    if (vs == VL ? v * VL + j >= w : j >= w) break;                    \
                    T* c = C + (size_t)r * ldc + (size_t)v * vs + j;                   \
                    *c = beta ? *c + tmp[v * VL + j] : tmp[v * VL + j];                \
                }                                                                      \
        }                                                                              \
    }                                                                                  \
}

/* C rows [0, m), panels [p0, p1); A (m x k) element (r, kk) at A[r*lda + kk*aks];
 * k is walked in blocks of KC so a block of a panel stays in L2 for large k. */
#define FRBG_KC 1024
/* rows in the next register block of an MR-row micro-kernel when rem rows are left:
 * MR, but with MR = 6 (AVX-512) the last 7-12 rows go in two near-equal blocks instead
 * of six and a lone one or two (32 = 6+6+6+6+4+4, 64 = 9 x 6 + 5+5, 8 = 4+4): a 1- or
 * 2-row block does 4-8 FMAs per 4 weight loads.  The same sums per element. */
static int frbg_rows6 = 1;   /* 0: plain sixes (_backward._set_rows6, tests, A/B runs) */
static inline int frbg_mr_rows(int MR, int rem) {
    if (rem <= MR) return rem;
    if (MR == 6 && frbg_rows6 && rem <= 12) return (rem + 1) / 2;
    return MR;
}
/* MICRO over rows [0, m) in blocks of frbg_mr_rows (i: the block's first row, used in
 * the arguments after the row count) */
#define FRBG_MICRO_BLOCKS(MICRO, MR, m, i, ...)                                         \
    do {                                                                               \
        int mr_;                                                                       \
        for (i = 0; i < (m); i += mr_) {                                               \
            mr_ = frbg_mr_rows(MR, (m) - i);                                           \
            switch (mr_) {                                                             \
            case 1: MICRO(1, __VA_ARGS__); break;                                      \
            case 2: MICRO(2, __VA_ARGS__); break;                                      \
            case 3: MICRO(3, __VA_ARGS__); break;                                      \
            case 4: if (MR >= 4) MICRO(4, __VA_ARGS__); break;                         \
            case 5: if (MR >= 5) MICRO(5, __VA_ARGS__); break;                         \
            default: if (MR >= 6) MICRO(6, __VA_ARGS__); break;                        \
            }                                                                          \
        }                                                                              \
    } while (0)
#define FRBG_GEMM(NAME, MICRO, T, VL, MR, ATTR)                                         \
ATTR static void NAME(int m, int n, int k, const T* A, int lda, int aks, const T* Bp,  \
                      T* C, int ldc, int beta, int p0, int p1) {                       \
    int p, i, k0, kc, bt;                                                              \
    for (p = p0; p < p1; p++) {                                                        \
        int j0 = p * 4 * VL, w = n - j0 < 4 * VL ? n - j0 : 4 * VL;                    \
        for (k0 = 0; k0 < k || k0 == 0; k0 += FRBG_KC) {                               \
            const T* P = Bp + ((size_t)p * k + k0) * 4 * VL;                           \
            const T* Ak = A + (size_t)k0 * aks;                                        \
            kc = k - k0 < FRBG_KC ? k - k0 : FRBG_KC;                                  \
            bt = beta || k0 > 0;                                                       \
            FRBG_MICRO_BLOCKS(MICRO, MR, m, i, kc, Ak + (size_t)i * lda, lda, aks, P,  \
                              C + (size_t)i * ldc + j0, ldc, w, bt, VL);               \
            if (k == 0) break;                                                         \
        }                                                                              \
    }                                                                                  \
}

typedef float frbg_v16f __attribute__((vector_size(64)));
typedef float frbg_v16f_u __attribute__((vector_size(64), aligned(4)));
typedef double frbg_v8d __attribute__((vector_size(64)));
typedef double frbg_v8d_u __attribute__((vector_size(64), aligned(8)));
typedef float frbg_v8f __attribute__((vector_size(32)));
typedef float frbg_v8f_u __attribute__((vector_size(32), aligned(4)));
typedef double frbg_v4d __attribute__((vector_size(32)));
typedef double frbg_v4d_u __attribute__((vector_size(32), aligned(8)));

#define FRBG_A512 __attribute__((target("avx512f,fma")))
#define FRBG_A2 __attribute__((target("avx2,fma")))

FRBG_MICRO(frbg_micro_f512, float, frbg_v16f, frbg_v16f_u, 16, FRBG_A512)
FRBG_MICRO(frbg_micro_d512, double, frbg_v8d, frbg_v8d_u, 8, FRBG_A512)
FRBG_MICRO(frbg_micro_f2, float, frbg_v8f, frbg_v8f_u, 8, FRBG_A2)
FRBG_MICRO(frbg_micro_d2, double, frbg_v4d, frbg_v4d_u, 4, FRBG_A2)
FRBG_GEMM(frbg_gemm_f512, frbg_micro_f512, float, 16, 6, FRBG_A512)
FRBG_GEMM(frbg_gemm_d512, frbg_micro_d512, double, 8, 6, FRBG_A512)
FRBG_GEMM(frbg_gemm_f2, frbg_micro_f2, float, 8, 3, FRBG_A2)
FRBG_GEMM(frbg_gemm_d2, frbg_micro_d2, double, 4, 3, FRBG_A2)

/* AVX2 (16 vector registers): a micro-kernel of 4 rows x 3 vectors (12 accumulators,
 * 3 B vectors, 1 broadcast).  The 3 x 4 kernel above needs 17 registers there, so GCC
 * reads two of each k's four B vectors from memory once per row (11 loads per 12 FMAs
 * against 7 here).  Measured alone on a Zen 3 core (8 rows x 96 columns, K = 128..1024):
 * 91-92 GFLOP/s (3 + 3 + 2 rows) -> 96-99; in the training forward (dense groups below)
 * LSTM B=16 H=256 0.89-0.92x the time.  B vector v at bp[v] (the next k at + bks: the
 * groups of frbg_pack43 / frbg_pack_units43 are dense, bks = nv * VL; reading three
 * vectors out of the 4-vector panels instead was no faster in place), C column v at cp[v]
 * (row r at + r * ldc), wv[v] of its lanes valid (the rest are padding).  Rows (mr) and
 * vectors (nv) are compile-time constants after inlining (FRBG_M43 dispatches). */
#define FRBG_MICRO43(NAME, T, VT, VTU, VL, ATTR)                                         \
ATTR static inline __attribute__((always_inline)) void                                \
NAME(const int mr, const int nv, int k, const T* A, int lda, int aks,                  \
     const T* const* bp, int bks, T* const* cp, const int* wv, int ldc, int beta) {    \
    VT acc[8][3];                 /* (AVX2: mr <= 4; AVX-512: the 8 x 3 kernel) */      \
    const T* b0 = bp[0];                                                               \
    const T* b1 = nv > 1 ? bp[1] : bp[0];                                              \
    const T* b2 = nv > 2 ? bp[2] : bp[0];                                              \
    const T* a0 = A;                                                                   \
    int r, v, kk, j;                                                                   \
    for (r = 0; r < mr; r++)                                                           \
        for (v = 0; v < nv; v++) acc[r][v] = (VT){0};                                  \
    _Pragma("GCC unroll 2")                                                            \
    for (kk = 0; kk < k; kk++) {                                                       \
        VT x0 = *(const VT*)b0, x1 = x0, x2 = x0;                                      \
        if (nv > 1) x1 = *(const VT*)b1;                                               \
        if (nv > 2) x2 = *(const VT*)b2;                                               \
        for (r = 0; r < mr; r++) {                                                     \
            VT a = a0[(size_t)r * lda] - (VT){0};  /* broadcast */                    \
            acc[r][0] += a * x0;                                                       \
            if (nv > 1) acc[r][1] += a * x1;                                           \
            if (nv > 2) acc[r][2] += a * x2;                                           \
        }                                                                              \
        b0 += bks; b1 += bks; b2 += bks; a0 += aks;                                    \
    }                                                                                  \
    for (v = 0; v < nv; v++) {                                                         \
        if (wv[v] == VL) {                                                             \
            for (r = 0; r < mr; r++) {                                                 \
                VTU* c = (VTU*)(cp[v] + (size_t)r * ldc);                              \
                *c = beta ? *c + acc[r][v] : acc[r][v];                                \
            }                                                                          \
        } else {                                                                       \
            T tmp[VL];                                                                 \
            for (r = 0; r < mr; r++) {                                                 \
                T* c = cp[v] + (size_t)r * ldc;                                        \
                memcpy(tmp, &acc[r][v], sizeof(tmp));                                  \
                for (j = 0; j < wv[v]; j++) c[j] = beta ? c[j] + tmp[j] : tmp[j];      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}
/* the 4 x 3 micro-kernel for mr (1..4) rows and nv (1..3) vectors, as constants */
#define FRBG_M43_NV(MICRO, mr, nv, ...)                                                 \
    switch (nv) {                                                                      \
    case 1: MICRO(mr, 1, __VA_ARGS__); break;                                          \
    case 2: MICRO(mr, 2, __VA_ARGS__); break;                                          \
    default: MICRO(mr, 3, __VA_ARGS__); break;                                         \
    }
#define FRBG_M43(MICRO, mr, nv, ...)                                                    \
    switch (mr) {                                                                      \
    case 1: FRBG_M43_NV(MICRO, 1, nv, __VA_ARGS__) break;                              \
    case 2: FRBG_M43_NV(MICRO, 2, nv, __VA_ARGS__) break;                              \
    case 3: FRBG_M43_NV(MICRO, 3, nv, __VA_ARGS__) break;                              \
    default: FRBG_M43_NV(MICRO, 4, nv, __VA_ARGS__) break;                             \
    }
/* the 8 x 3 micro-kernel (AVX-512, 32 registers: 24 accumulators, 3 B vectors, 1
 * broadcast) for mr (1..8) rows */
#define FRBG_M83(MICRO, mr, nv, ...)                                                    \
    switch (mr) {                                                                      \
    case 1: FRBG_M43_NV(MICRO, 1, nv, __VA_ARGS__) break;                              \
    case 2: FRBG_M43_NV(MICRO, 2, nv, __VA_ARGS__) break;                              \
    case 3: FRBG_M43_NV(MICRO, 3, nv, __VA_ARGS__) break;                              \
    case 4: FRBG_M43_NV(MICRO, 4, nv, __VA_ARGS__) break;                              \
    case 5: FRBG_M43_NV(MICRO, 5, nv, __VA_ARGS__) break;                              \
    case 6: FRBG_M43_NV(MICRO, 6, nv, __VA_ARGS__) break;                              \
    case 7: FRBG_M43_NV(MICRO, 7, nv, __VA_ARGS__) break;                              \
    default: FRBG_M43_NV(MICRO, 8, nv, __VA_ARGS__) break;                             \
    }
/* rows in the next block of m83 rows when rem are left: eights, the last 9-16 rows in
 * two near-equal blocks */
static inline int frbg_m83_rows(int rem) {
    return rem <= 8 ? rem : rem <= 16 ? (rem + 1) / 2 : 8;
}
/* rows in the next block of m43 rows when rem are left: fours, but three-row blocks
 * instead of a last block of one or two (13 = 4+3+3+3, 10 = 4+3+3, 5 = 3+2): a 1-row
 * block does 3 FMAs per 4 loads.  Same sums per element (the k order is unchanged).
 * Measured (Zen 3, LSTM training forward H=256): B = 5, 9, 10, 13 0.96-0.97, row split
 * B = 10, 12, 20 (5, 6, 10 rows a thread) 0.94-0.95 of four-row blocks' time. */
static int frbg_rows3 = 1;   /* 0: plain fours (_backward._set_rows3, A/B runs) */
static inline int frbg_m43_rows(int rem) {
    if (!frbg_rows3) return rem < 4 ? rem : 4;
    return rem <= 4 ? rem : rem == 5 || rem == 6 || rem == 9 ? 3 : 4;
}
/* rows [0, m) of C (cp[v] + r * ldc) in blocks of frbg_m43_rows: A (m x kc) element
 * (r, kk) at A[r * lda + kk * aks], B vectors bp[v] (bks apart per k) */
#define FRBG_M43_ROWS(MICRO, m, nv, kc, A, lda, aks, bp, bks, cp, wv, ldc, bt)          \
    FRBG_MX3_ROWS(FRBG_M43, frbg_m43_rows, MICRO, m, nv, kc, A, lda, aks, bp, bks, cp, wv, \
                  ldc, bt)
#define FRBG_M83_ROWS(MICRO, m, nv, kc, A, lda, aks, bp, bks, cp, wv, ldc, bt)          \
    FRBG_MX3_ROWS(FRBG_M83, frbg_m83_rows, MICRO, m, nv, kc, A, lda, aks, bp, bks, cp, wv, \
                  ldc, bt)
#define FRBG_MX3_ROWS(DISPATCH, RULE, MICRO, m, nv, kc, A, lda, aks, bp, bks, cp, wv,    \
                      ldc, bt)                                                         \
    do {                                                                               \
        int i_, mr_;                                                                   \
        for (i_ = 0; i_ < (m); i_ += mr_) {                                            \
            mr_ = RULE((m) - i_);                                                      \
            __typeof__((cp)[0]) cpi_[3] = {(cp)[0] + (size_t)i_ * (ldc),                \
                                          (cp)[1] + (size_t)i_ * (ldc),                \
                                          (cp)[2] + (size_t)i_ * (ldc)};               \
            DISPATCH(MICRO, mr_, nv, kc, (A) + (size_t)i_ * (lda), lda, aks, bp, bks,  \
                     cpi_, wv, ldc, bt)                                                \
        }                                                                              \
    } while (0)
/* AVX2 training kernels on the 4 x 3 micro-kernel (else the 3 x 4): bit 1 the LSTM
 * forward (frbg_gemmu43), bit 2 the GRU forward and the split-by-units backward's
 * per-step product (frbg_gemm43); default both, _backward._set_gemm43 (tests, A/B) */
static int frbg_use43 = 3;
FRBG_MICRO43(frbg_micro43_f2, float, frbg_v8f, frbg_v8f_u, 8, FRBG_A2)
FRBG_MICRO43(frbg_micro43_d2, double, frbg_v4d, frbg_v4d_u, 4, FRBG_A2)
FRBG_MICRO43(frbg_micro83_f512, float, frbg_v16f, frbg_v16f_u, 16, FRBG_A512)
FRBG_MICRO43(frbg_micro83_d512, double, frbg_v8d, frbg_v8d_u, 8, FRBG_A512)
/* AVX-512 LSTM training forward on the 8 x 3 kernel (in the 4 x 3 kernel's layout) where
 * its blocks of rows (a thread's rows of a step in the row split, all of a step's rows
 * in the unit split) number 7 or 8: the 6 x 4 kernel runs those as 4 + 3 / 4 + 4 rows,
 * streaming the weights twice.  Measured (Intel Xeon, forward_train time 8 x 3 / 6 x 4,
 * in-process A/B, H = 256 unless said): 2 threads B = 14, 15, 16 0.76, 0.87, 0.96-0.97
 * (H = 384 0.86, H = 512 0.99, H = 128 1.02, float64 0.93), B = 7 (unit split) 0.92;
 * 1 thread B = 7, 8 0.85, 0.97.  Other block sizes lose with it (4, 6, 10 and 16 rows
 * 1.04-1.07: 18 accumulators or two blocks against the 6 x 4's 24 in 6-row blocks).
 * frbg_use83: 1 that rule, 0 never, 2 always (_backward._set_gemm83: tests, A/B). */
static int frbg_use83 = 1;
/* C (m x n) [+]= A @ B over the vector columns [c0, c1) of B packed by frbg_pack43 with
 * the same c0: rows in fours, each group of vector columns with k in blocks of KC. */
#define FRBG_GEMM43(NAME, MICRO, T, VL, ATTR, ROWS)                                     \
ATTR static void NAME(int m, int n, int k, const T* A, int lda, int aks, const T* Bp,  \
                      T* C, int ldc, int beta, int c0, int c1) {                       \
    int c, nv, v, k0, kc, bt;                                                          \
    const T* bp[3];                                                                    \
    T* cp[3];                                                                          \
    int wv[3];                                                                         \
    for (c = c0; c < c1; c += nv) {                                                    \
        nv = frbg_m43_group(c1 - c);                                                   \
        for (k0 = 0; k0 < k || k0 == 0; k0 += FRBG_KC) {                               \
            kc = k - k0 < FRBG_KC ? k - k0 : FRBG_KC;                                  \
            bt = beta || k0 > 0;                                                       \
            for (v = 0; v < nv; v++) {                                                 \
                int w = n - (c + v) * VL;                                              \
                bp[v] = Bp + (size_t)c * VL * k + (size_t)k0 * nv * VL + (size_t)v * VL; \
                cp[v] = C + (size_t)(c + v) * VL;                                      \
                wv[v] = w < 0 ? 0 : w < VL ? w : VL;                                   \
            }                                                                          \
            ROWS(MICRO, m, nv, kc, A + (size_t)k0 * aks, lda, aks, bp, nv * VL, cp, wv, \
                 ldc, bt);                                                             \
            if (k == 0) break;                                                         \
        }                                                                              \
    }                                                                                  \
}
FRBG_GEMM43(frbg_gemm43_f2, frbg_micro43_f2, float, 8, FRBG_A2, FRBG_M43_ROWS)
FRBG_GEMM43(frbg_gemm43_d2, frbg_micro43_d2, double, 4, FRBG_A2, FRBG_M43_ROWS)
FRBG_GEMM43(frbg_gemm83_f512, frbg_micro83_f512, float, 16, FRBG_A512, FRBG_M83_ROWS)
FRBG_GEMM43(frbg_gemm83_d512, frbg_micro83_d512, double, 8, FRBG_A512, FRBG_M83_ROWS)

/* the micro-kernel for `rows` (1..MR) rows, each count a compile-time constant */
#define FRBG_MICRO_ROWS(MICRO, MR, rows, ...)                                           \
    switch (rows) {                                                                    \
    case 1: MICRO(1, __VA_ARGS__); break;                                              \
    case 2: MICRO(2, __VA_ARGS__); break;                                              \
    case 3: MICRO(3, __VA_ARGS__); break;                                              \
    case 4: MICRO(4, __VA_ARGS__); break;                                              \
    case 5: MICRO(5, __VA_ARGS__); break;                                              \
    default: MICRO(MR, __VA_ARGS__); break;                                            \
    }
/* Weight-gradient GEMM over a pre-packed A: C rows += A^T B, B (K x N) packed by
 * frbg_pack_rows (panels of 4 vectors), A given as nq micro-panels of MR columns (the
 * values of micro-panel q for row kk at Ap[(q*K + kk)*MR ..]).  The columns of A come in
 * groups of nqg micro-panels (one LSTM gate each, L valid columns, zero padded): micro-
 * panel q = g*nqg + qq updates C rows g*gstride + qq*MR .. (at most L - qq*MR of them).
 * Blocking (frbg_wgemmp_* picks it): a B panel of K rows small enough for L2 is walked
 * whole by every micro-panel (the C tile stays in registers over all of K); otherwise
 * blocks of 32 micro-panels x 8 panels x 128 rows (C block and A slice in L2, the B
 * block in L1).  Measured on Zen 5 (one core): 255 GFLOP/s at K=1600, N=256; 210 at
 * K=3200, N=512. */
#define FRBG_WGEMMP(NAME, MICRO, T, VL, MR, ATTR)                                       \
/* blocks of QB micro-panels x PB panels x KC rows */                                 \
ATTR static void NAME##_blk(int nq, int nqg, int L, int gstride, int N, int K,         \
                            const T* Ap, const T* Bp, T* C, int ldc, int QB, int PB,   \
                            int KC) {                                                  \
    int np = (N + 4 * VL - 1) / (4 * VL), q0, q1, pb, pe, k0, kc, p, q;                \
    for (q0 = 0; q0 < nq; q0 += QB) {                                                  \
      q1 = nq - q0 < QB ? nq : q0 + QB;                                                \
      for (pb = 0; pb < np; pb += PB) {                                                \
        pe = np - pb < PB ? np : pb + PB;                                              \
        for (k0 = 0; k0 < K; k0 += KC) {                                               \
          kc = K - k0 < KC ? K - k0 : KC;                                              \
          for (p = pb; p < pe; p++) {                                                  \
            int j0 = p * 4 * VL, w = N - j0 < 4 * VL ? N - j0 : 4 * VL;                \
            const T* P = Bp + ((size_t)p * K + k0) * 4 * VL;                           \
            for (q = q0; q < q1; q++) {                                                \
              int g = q / nqg, qq = q - g * nqg;                                       \
              int rows = L - qq * MR < MR ? L - qq * MR : MR;                          \
              const T* Aq = Ap + ((size_t)q * K + k0) * MR;                            \
              T* Cq = C + (size_t)(g * gstride + qq * MR) * ldc + j0;                  \
              FRBG_MICRO_ROWS(MICRO, MR, rows, kc, Aq, 1, MR, P, Cq, ldc, w, 1, VL);   \
            }                                                                          \
          }                                                                            \
        }                                                                              \
      }                                                                                \
    }                                                                                  \
}                                                                                      \
ATTR static void NAME(int nq, int nqg, int L, int gstride, int N, int K, const T* Ap,  \
                      const T* Bp, T* C, int ldc) {                                    \
    if ((size_t)K * 4 * VL * sizeof(T) <= ((size_t)512 << 10))                         \
        NAME##_blk(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc, nq, 1, K);               \
    else if (frbg_wgemm_big(MR))                                                       \
        NAME##_blk(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc, 64, 8, 512);             \
    else                                                                               \
        NAME##_blk(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc, 32, 8, 128);             \
}
FRBG_WGEMMP(frbg_wgemmp_f512, frbg_micro_f512, float, 16, 6, FRBG_A512)
FRBG_WGEMMP(frbg_wgemmp_d512, frbg_micro_d512, double, 8, 6, FRBG_A512)
FRBG_WGEMMP(frbg_wgemmp_f2, frbg_micro_f2, float, 8, 3, FRBG_A2)
FRBG_WGEMMP(frbg_wgemmp_d2, frbg_micro_d2, double, 4, 3, FRBG_A2)

/* Weight-gradient GEMM, C (M x N, ldc) += A^T B, where A (K x M) is stored row-major
 * with leading dimension lda (the gate gradients dG: one row per (step, sequence)) and
 * B (K x N) was packed by frbg_pack_rows (panels of 4 vectors).  Blocks of MC columns of
 * A are first packed into micro-panels of MR values per k (so the micro-kernel reads A
 * contiguously instead of one value per row 4 KB apart), and while packing, their column
 * sums are added to bias[0..M) (when bias != NULL): the bias gradients for free.
 * work: scratch of MC * K values (64-byte aligned). */
#ifndef FRBG_PFD
#define FRBG_PFD 20
#endif
#ifndef FRBG_WKC
#define FRBG_WKC 128
#endif
#define FRBG_WGEMM(NAME, PACKED, T, VL, MR, ATTR)                                       \
ATTR static void NAME(int M, int N, int K, const T* A, int lda, const T* Bp, T* C,     \
                      int ldc, T* bias, T* work) {                                     \
    enum { MC = 8 * MR };                                                              \
    int np = (N + 4 * VL - 1) / (4 * VL), i0, mc, kk, q, r, nq;                                \
    for (i0 = 0; i0 < M; i0 += MC) {                                                   \
        mc = M - i0 < MC ? M - i0 : MC;                                                \
        nq = (mc + MR - 1) / MR;                                                       \
        if (mc == MC) {                          /* full block: fixed trip counts */ \
            for (kk = 0; kk < K; kk++) {                                               \
                const T* row = A + (size_t)kk * lda + i0;                              \
                if (kk + FRBG_PFD < K) {  /* rows are a page apart: no HW prefetch */   \
                    const char* pf = (const char*)(row + (size_t)FRBG_PFD * lda);      \
                    for (r = 0; r < (int)(MC * sizeof(T)); r += 64)                    \
                        __builtin_prefetch(pf + r, 0, 3);                              \
                }                                                                      \
                for (q = 0; q < MC / MR; q++)                                          \
                    for (r = 0; r < MR; r++)                                           \
                        work[((size_t)q * K + kk) * MR + r] = row[q * MR + r];         \
                if (bias) for (r = 0; r < MC; r++) bias[i0 + r] += row[r];             \
            }                                                                          \
        } else                                                                         \
        for (kk = 0; kk < K; kk++) {                                                   \
            const T* row = A + (size_t)kk * lda + i0;                                  \
            for (q = 0; q < nq; q++) {                                                 \
                T* dst = work + ((size_t)q * K + kk) * MR;                             \
                int w = mc - q * MR < MR ? mc - q * MR : MR;                           \
                for (r = 0; r < w; r++) dst[r] = row[q * MR + r];                      \
                for (; r < MR; r++) dst[r] = 0;                                        \
            }                                                                          \
            if (bias) for (r = 0; r < mc; r++) bias[i0 + r] += row[r];                 \
        }                                                                              \
        /* the packed block: one group of nq micro-panels, all panels, FRBG_WKC rows */ \
        PACKED##_blk(nq, nq, mc, 0, N, K, work, Bp, C + (size_t)i0 * ldc, ldc, nq, np, \
                     FRBG_WKC);                                                        \
    }                                                                                  \
}
FRBG_WGEMM(frbg_wgemm_f512, frbg_wgemmp_f512, float, 16, 6, FRBG_A512)
FRBG_WGEMM(frbg_wgemm_d512, frbg_wgemmp_d512, double, 8, 6, FRBG_A512)
FRBG_WGEMM(frbg_wgemm_f2, frbg_wgemmp_f2, float, 8, 3, FRBG_A2)
FRBG_WGEMM(frbg_wgemm_d2, frbg_wgemmp_d2, double, 4, 3, FRBG_A2)

static int frbg_mr(int level) { return level == 2 ? 6 : 3; }
static void frbg_wgemmp_f(int level, int nq, int nqg, int L, int gstride, int N, int K,
                          const float* Ap, const float* Bp, float* C, int ldc) {
    if (level == 2) frbg_wgemmp_f512(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc);
    else frbg_wgemmp_f2(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc);
}
static void frbg_wgemmp_d(int level, int nq, int nqg, int L, int gstride, int N, int K,
                          const double* Ap, const double* Bp, double* C, int ldc) {
    if (level == 2) frbg_wgemmp_d512(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc);
    else frbg_wgemmp_d2(nq, nqg, L, gstride, N, K, Ap, Bp, C, ldc);
}

/* scratch values frbg_wgemm_* needs for a given K */
static size_t frbg_wgemm_work(int K) { return (size_t)48 * (K > 0 ? K : 1); }

static void frbg_wgemm_f(int level, int M, int N, int K, const float* A, int lda,
                         const float* Bp, float* C, int ldc, float* bias, float* work) {
    if (level == 2) frbg_wgemm_f512(M, N, K, A, lda, Bp, C, ldc, bias, work);
    else frbg_wgemm_f2(M, N, K, A, lda, Bp, C, ldc, bias, work);
}
static void frbg_wgemm_d(int level, int M, int N, int K, const double* A, int lda,
                         const double* Bp, double* C, int ldc, double* bias, double* work) {
    if (level == 2) frbg_wgemm_d512(M, N, K, A, lda, Bp, C, ldc, bias, work);
    else frbg_wgemm_d2(M, N, K, A, lda, Bp, C, ldc, bias, work);
}

/* Unit-block GEMM for the LSTM training forward: B = W^T packed by frbg_pack_units
 * (panel p = units p*VL .. p*VL+VL-1, its 4 vectors the gates i, f, g, o of those units),
 * C in the gate layout [i | f | g | o] (H columns each): C[r][g*H + u] (+)= (A @ B).
 * Panels [p0, p1); A (m x k) element (r, kk) at A[r*lda + kk]. */
/* NAME##_panel: rows [0, m) of panel p (k walked in blocks of FRBG_KC) */
#define FRBG_GEMMU(NAME, MICRO, T, VL, MR, ATTR)                                        \
ATTR static inline __attribute__((always_inline)) void NAME##_panel(int p, int m, int H, \
        int k, const T* A, int lda, const T* Bp, T* C, int ldc, int beta) {            \
    int i, k0, kc, bt;                                                                 \
    int u0 = p * VL, wu = H - u0 < VL ? H - u0 : VL;                                   \
    /* H == VL: the four gate vectors are adjacent in C, which the micro-kernel reads   \
     * (vs == VL) as one contiguous panel: all 4 VL columns valid, not VL of them */   \
    if (H == VL) wu = 4 * VL;                                                          \
    for (k0 = 0; k0 < k || k0 == 0; k0 += FRBG_KC) {                                   \
        const T* P = Bp + ((size_t)p * k + k0) * 4 * VL;                               \
        const T* Ak = A + k0;                                                          \
        T* Cp = C + u0;                                                                \
        kc = k - k0 < FRBG_KC ? k - k0 : FRBG_KC;                                      \
        bt = beta || k0 > 0;                                                           \
        FRBG_MICRO_BLOCKS(MICRO, MR, m, i, kc, Ak + (size_t)i * lda, lda, 1, P,        \
                          Cp + (size_t)i * ldc, ldc, wu, bt, H);                       \
        if (k == 0) break;                                                             \
    }                                                                                  \
}                                                                                      \
ATTR static void NAME(int m, int H, int k, const T* A, int lda, const T* Bp, T* C,     \
                      int ldc, int beta, int p0, int p1) {                             \
    int p;                                                                             \
    for (p = p0; p < p1; p++) NAME##_panel(p, m, H, k, A, lda, Bp, C, ldc, beta);      \
}                                                                                      \
/* The same over steps [s0, s1) of a packed sequence batch, rows [b0, b1) of each (as   \
 * many as the step has): A rows at x + (offsets[s] + b) * k, C rows at C + (offsets[s] \
 * + b) * ldc; panel-major, so a panel serves every step's rows while it is in cache. */ \
ATTR static void NAME##_steps(int s0, int s1, const ptrdiff_t* offsets,                \
        const ptrdiff_t* nsteps, int b0, int b1, int H, int k, const T* x,             \
        const T* Bp, T* C, int ldc, int p0, int p1) {                                  \
    int p, s;                                                                          \
    for (p = p0; p < p1; p++)                                                          \
        for (s = s0; s < s1; s++) {                                                    \
            int e = b1 < (int)nsteps[s] ? b1 : (int)nsteps[s];                         \
            if (e > b0)                                                                \
                NAME##_panel(p, e - b0, H, k, x + (offsets[s] + b0) * k, k, Bp,        \
                             C + (offsets[s] + b0) * ldc, ldc, 0);                     \
        }                                                                              \
}
FRBG_GEMMU(frbg_gemmu_f512, frbg_micro_f512, float, 16, 6, FRBG_A512)
FRBG_GEMMU(frbg_gemmu_d512, frbg_micro_d512, double, 8, 6, FRBG_A512)
FRBG_GEMMU(frbg_gemmu_f2, frbg_micro_f2, float, 8, 3, FRBG_A2)
FRBG_GEMMU(frbg_gemmu_d2, frbg_micro_d2, double, 4, 3, FRBG_A2)
/* The same two with the 4 x 3 kernel (AVX2): vector column c of panels [p0, p1) is gate
 * c % 4 of panel p0 + c / 4 (C columns (c % 4) * H + p * VL ..); groups of 3 columns, and
 * for _steps every step's rows per group while the group's B (3 vectors x k) is in L1. */
#define FRBG_GEMMU43(NAME, MICRO, T, VL, ATTR, ROWS)                                    \
ATTR static inline __attribute__((always_inline)) void NAME##_cols(int c0, int nv,     \
        int H, int k, int k0, const T* Bp, T* C, const T** bp, T** cp,         \
        int* wv) {                                                                     \
    int v;                                                                             \
    for (v = 0; v < nv; v++) {                                                         \
        int c = c0 + v, p = c / 4, g = c % 4, w = H - p * VL;                          \
        bp[v] = Bp + (size_t)c0 * VL * k + (size_t)k0 * nv * VL + (size_t)v * VL;     \
        cp[v] = C + (size_t)g * H + p * VL;                                            \
        wv[v] = w < VL ? w : VL;                                                       \
    }                                                                                  \
}                                                                                      \
ATTR static inline __attribute__((always_inline)) void NAME##_rows(int m, int nv,      \
        int kc, const T* A, int lda, const T* const* bp, T* const* cp, const int* wv,  \
        int ldc, int bt) {                                                             \
    ROWS(MICRO, m, nv, kc, A, lda, 1, bp, nv * VL, cp, wv, ldc, bt);                   \
}                                                                                      \
/* rows [b0, b1) of steps [s0, s1) (as many as each step has): A rows at x + (offsets[s]  \
 * + b) * lda, C rows at C + (offsets[s] + b) * ldc; group-major, so a group's B serves  \
 * every step's rows while it is in L1 */                                              \
ATTR static void NAME##_gen(int s0, int s1, const ptrdiff_t* offsets,                  \
        const ptrdiff_t* nsteps, int b0, int b1, int H, int k, const T* x, int lda,    \
        const T* Bp, T* C, int ldc, int beta, int p0, int p1) {                        \
    int nvc = 4 * p1, c0, nv, k0, kc, s, v;                                            \
    const T* bp[3];                                                                    \
    T* cp[3];                                                                          \
    T* cps[3];                                                                         \
    int wv[3];                                                                         \
    for (c0 = 4 * p0; c0 < nvc; c0 += nv) {                                            \
        nv = frbg_m43_group(nvc - c0);                                                 \
        for (k0 = 0; k0 < k || k0 == 0; k0 += FRBG_KC) {                               \
            kc = k - k0 < FRBG_KC ? k - k0 : FRBG_KC;                                  \
            NAME##_cols(c0, nv, H, k, k0, Bp, C, bp, cp, wv);                          \
            for (s = s0; s < s1; s++) {                                                \
                int e = b1 < (int)nsteps[s] ? b1 : (int)nsteps[s];                     \
                ptrdiff_t r = offsets[s] + b0;                                         \
                if (e <= b0) continue;                                                 \
                for (v = 0; v < 3; v++) cps[v] = cp[v] + r * ldc;                      \
                NAME##_rows(e - b0, nv, kc, x + r * lda + k0, lda, bp, cps, wv, ldc,   \
                            beta || k0 > 0);                                           \
            }                                                                          \
            if (k == 0) break;                                                         \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
ATTR static void NAME(int m, int H, int k, const T* A, int lda, const T* Bp, T* C,     \
                      int ldc, int beta, int p0, int p1) {                             \
    const ptrdiff_t off0 = 0, nrows = m;                                               \
    NAME##_gen(0, 1, &off0, &nrows, 0, m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);     \
}                                                                                      \
ATTR static void NAME##_steps(int s0, int s1, const ptrdiff_t* offsets,                \
        const ptrdiff_t* nsteps, int b0, int b1, int H, int k, const T* x,             \
        const T* Bp, T* C, int ldc, int p0, int p1) {                                  \
    NAME##_gen(s0, s1, offsets, nsteps, b0, b1, H, k, x, k, Bp, C, ldc, 0, p0, p1);    \
}
FRBG_GEMMU43(frbg_gemmu43_f2, frbg_micro43_f2, float, 8, FRBG_A2, FRBG_M43_ROWS)
FRBG_GEMMU43(frbg_gemmu43_d2, frbg_micro43_d2, double, 4, FRBG_A2, FRBG_M43_ROWS)
FRBG_GEMMU43(frbg_gemmu83_f512, frbg_micro83_f512, float, 16, FRBG_A512, FRBG_M83_ROWS)
FRBG_GEMMU43(frbg_gemmu83_d512, frbg_micro83_d512, double, 8, FRBG_A512, FRBG_M83_ROWS)
static void frbg_gemmu_f(int level, int d43, int m, int H, int k, const float* A, int lda,
                         const float* Bp, float* C, int ldc, int beta, int p0, int p1) {
    if (level == 2 && d43) frbg_gemmu83_f512(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else if (level == 2) frbg_gemmu_f512(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else if (d43) frbg_gemmu43_f2(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else frbg_gemmu_f2(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
}
static void frbg_gemmu_d(int level, int d43, int m, int H, int k, const double* A, int lda,
                         const double* Bp, double* C, int ldc, int beta, int p0, int p1) {
    if (level == 2 && d43) frbg_gemmu83_d512(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else if (level == 2) frbg_gemmu_d512(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else if (d43) frbg_gemmu43_d2(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
    else frbg_gemmu_d2(m, H, k, A, lda, Bp, C, ldc, beta, p0, p1);
}
#define FRBG_GEMMU_STEPS(SUF, T)                                                       \
static void frbg_gemmu_steps_##SUF(int level, int d43, int s0, int s1, const ptrdiff_t* offsets, \
        const ptrdiff_t* nsteps, int b0, int b1, int H, int k, const T* x,             \
        const T* Bp, T* C, int ldc, int p0, int p1) {                                  \
    if (level == 2 && d43)                                                             \
        frbg_gemmu83_##SUF##512_steps(s0, s1, offsets, nsteps, b0, b1, H, k, x, Bp, C, \
                                      ldc, p0, p1);                                    \
    else if (level == 2)                                                               \
        frbg_gemmu_##SUF##512_steps(s0, s1, offsets, nsteps, b0, b1, H, k, x, Bp, C,   \
                                    ldc, p0, p1);                                      \
    else if (d43)                                                                      \
        frbg_gemmu43_##SUF##2_steps(s0, s1, offsets, nsteps, b0, b1, H, k, x, Bp, C,   \
                                    ldc, p0, p1);                                      \
    else                                                                               \
        frbg_gemmu_##SUF##2_steps(s0, s1, offsets, nsteps, b0, b1, H, k, x, Bp, C, ldc, \
                                  p0, p1);                                             \
}
FRBG_GEMMU_STEPS(f, float)
FRBG_GEMMU_STEPS(d, double)

static void frbg_gemm_f(int level, int m, int n, int k, const float* A, int lda, int aks,
                        const float* Bp, float* C, int ldc, int beta, int p0, int p1) {
    if (level == 2) frbg_gemm_f512(m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1);
    else frbg_gemm_f2(m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1);
}
static void frbg_gemm_d(int level, int m, int n, int k, const double* A, int lda, int aks,
                        const double* Bp, double* C, int ldc, int beta, int p0, int p1) {
    if (level == 2) frbg_gemm_d512(m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1);
    else frbg_gemm_d2(m, n, k, A, lda, aks, Bp, C, ldc, beta, p0, p1);
}
#else
static size_t frbg_wgemm_work(int K) { return (size_t)48 * (K > 0 ? K : 1); }
static void frbg_wgemm_f(int level, int M, int N, int K, const float* A, int lda,
                         const float* Bp, float* C, int ldc, float* bias, float* work) {}
static void frbg_wgemm_d(int level, int M, int N, int K, const double* A, int lda,
                         const double* Bp, double* C, int ldc, double* bias, double* work) {}
static void frbg_gemm_f(int level, int m, int n, int k, const float* A, int lda, int aks,
                        const float* Bp, float* C, int ldc, int beta, int p0, int p1) {}
static void frbg_gemm_d(int level, int m, int n, int k, const double* A, int lda, int aks,
                        const double* Bp, double* C, int ldc, int beta, int p0, int p1) {}
#endif

/* ------------------------------------------------------------ vector sigmoid / tanh
 * out[i] = sigmoid(in[i]) / tanh(in[i]) over an array (in == out allowed), float and
 * double: the inference kernels' activations (fr_act_t.h: Cephes expf / tanhf and exp /
 * tanh in vectors, ~1-2 ulp, +-inf give the limits, never NaN), built here per ISA level
 * (AVX-512, AVX2+FMA, baseline) and picked at run time like the GEMMs, so training and
 * inference compute the same gate values. */
#ifndef FR_INLINE
#define FR_INLINE static inline __attribute__((always_inline))
#endif
#ifndef FR_CAT
#define FR_CAT_(a, b) a##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#endif
#if FRBG_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
#define FR_VBYTES 64
#define FR_LSFX _l2
#include "fr_act_lvl.h"
#undef FR_VBYTES
#undef FR_LSFX
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FR_VBYTES 32
#define FR_LSFX _l1
#include "fr_act_lvl.h"
#undef FR_VBYTES
#undef FR_LSFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#define FR_VBYTES 16
#define FR_LSFX _l0
#include "fr_act_lvl.h"
#undef FR_VBYTES
#undef FR_LSFX
#if FRBG_X86
#define FRBG_ACT(SUF, T)                                                               \
static void frbg_act_##SUF(int act, const T* in, T* out, int len) {                    \
    int lv = frbg_level();                                                             \
    if (lv == 2) fr_act_arr_##SUF##_l2(act, in, out, len);                             \
    else if (lv == 1) fr_act_arr_##SUF##_l1(act, in, out, len);                        \
    else fr_act_arr_##SUF##_l0(act, in, out, len);                                     \
}
#else
#define FRBG_ACT(SUF, T)                                                               \
static void frbg_act_##SUF(int act, const T* in, T* out, int len) {                    \
    fr_act_arr_##SUF##_l0(act, in, out, len);                                          \
}
#endif
FRBG_ACT(f, float)
FRBG_ACT(d, double)
static void frbg_sigmoid_f(const float* in, float* out, int len) { frbg_act_f(0, in, out, len); }
static void frbg_tanh_f(const float* in, float* out, int len) { frbg_act_f(1, in, out, len); }
static void frbg_sigmoid_d(const double* in, double* out, int len) { frbg_act_d(0, in, out, len); }
static void frbg_tanh_d(const double* in, double* out, int len) { frbg_act_d(1, in, out, len); }

/* ------------------------------------------------------ backward gate-gradient passes
 * Rows [r0, r1) of one step (see _backward.pyx for the formulas); restrict-qualified
 * loops the compiler vectorises, built for AVX-512, AVX2+FMA and the baseline. */
/* GRU (reset_after) gate gradients of element j: from r, z, n (gr, gz, gn), hn = h W_hn +
 * b_hn (hnb), h_prev (hb) and the incoming dh (dhb, becomes dh * z): dr, dz, dn = dn' * r
 * (the W_hh side) and dx = dn' (the W_ih side). */
#define FRBG_GRU_RA_GRAD(T, j) do {                                                    \
    T r_ = gr[j], z_ = gz[j], n_ = gn[j], dh_ = dhb[j];                                \
    T dnp_ = dh_ * ((T)1 - z_) * ((T)1 - n_ * n_);                                     \
    dr[j] = dnp_ * hnb[j] * r_ * ((T)1 - r_);                                          \
    dz[j] = dh_ * (hb[j] - n_) * z_ * ((T)1 - z_);                                     \
    dn[j] = dnp_ * r_;                                                                 \
    dx[j] = dnp_;                                                                      \
    dhb[j] = dh_ * z_;                                                                 \
} while (0)
#define FRBG_BWD(SUF, T, TANH, ATTR)                                                    \
ATTR static void frbg_lstm_bwd_##SUF(int r0, int r1, int H, int u0, int u1, const T* gs, \
        const T* cs, const T* cp, const T* src, int ldsrc, T* dc, T* dg, T* aux) {     \
    size_t L = (size_t)(u1 - u0);               /* units [u0, u1) */                  \
    for (int b = r0; b < r1; b++) {                                                    \
        const T* restrict g = gs + (size_t)b * 4 * H + u0;                             \
        const T* restrict cpb = cp + (size_t)b * H + u0;                               \
        const T* restrict sb = src + (size_t)b * ldsrc + u0;                           \
        T* restrict dcb = dc + (size_t)b * H + u0;                                     \
        T* restrict d = dg + (size_t)b * 4 * H + u0;                                   \
        /* per-gate pointers: with -fwrapv (Python's flags) g[H + j] in int would not  \
         * vectorise */                                                                \
        const T* restrict gi = g;                                                      \
        const T* restrict gf = g + (size_t)H;                                          \
        const T* restrict gg_ = g + (size_t)2 * H;                                     \
        const T* restrict go = g + (size_t)3 * H;                                      \
        T* restrict di = d;                                                            \
        T* restrict df = d + (size_t)H;                                                \
        T* restrict dgg = d + (size_t)2 * H;                                           \
        T* restrict dop = d + (size_t)3 * H;                                           \
        TANH(cs + (size_t)b * H + u0, dop, (int)L);     /* tanh(c) in the o slot */   \
        for (size_t j = 0; j < L; j++) {                                               \
            T i = gi[j], f = gf[j], gg = gg_[j], o = go[j];                            \
            T tc = dop[j], dh = sb[j];                                                 \
            T dct = dcb[j] + dh * o * ((T)1 - tc * tc);                                \
            di[j] = dct * gg * i * ((T)1 - i);                                         \
            df[j] = dct * cpb[j] * f * ((T)1 - f);                                     \
            dgg[j] = dct * i * ((T)1 - gg * gg);                                       \
            dop[j] = dh * tc * o * ((T)1 - o);                                         \
            dcb[j] = dct * f;                                                          \
        }                                                                              \
        if (aux) {                                                                     \
            T* restrict ab = aux + (size_t)b * H + u0;                                 \
            TANH(cs + (size_t)b * H + u0, ab, (int)L);                                 \
            for (size_t j = 0; j < L; j++) ab[j] *= go[j];                             \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
ATTR static void frbg_gru_bwd_##SUF(int kind, int r0, int r1, int H, const T* gs,       \
        const T* hn, const T* hp, int ldhp, T* dh, T* dg, T* dnx, const T* tmp,        \
        T* aux) {                                                                      \
    for (int b = r0; b < r1; b++) {                                                    \
        const T* restrict g = gs + (size_t)b * 3 * H;                                  \
        const T* restrict hb = hp + (size_t)b * ldhp;                                  \
        T* restrict dhb = dh + (size_t)b * H;                                          \
        T* restrict d = dg + (size_t)b * 3 * H;                                        \
        const T* restrict gr = g;                                                      \
        const T* restrict gz = g + (size_t)H;                                          \
        const T* restrict gn = g + (size_t)2 * H;                                      \
        T* restrict dr = d;                                                            \
        T* restrict dz = d + (size_t)H;                                                \
        T* restrict dn = d + (size_t)2 * H;                                            \
        if (kind == 2) {            /* reset_after */                                  \
            const T* restrict hnb = hn + (size_t)b * H;                                \
            T* restrict dx = dnx + (size_t)b * H;                                      \
            for (size_t j = 0; j < (size_t)H; j++) FRBG_GRU_RA_GRAD(T, j);            \
        } else if (kind == 3) {     /* reset before: z, n */                           \
            for (size_t j = 0; j < (size_t)H; j++) {                                   \
                T z = gz[j], nn = gn[j], dhh = dhb[j];                                 \
                dz[j] = dhh * (hb[j] - nn) * z * ((T)1 - z);                           \
                dn[j] = dhh * ((T)1 - z) * ((T)1 - nn * nn);                           \
                dhb[j] = dhh * z;                                                      \
            }                                                                          \
        } else {                    /* reset before: r, through W_hn (r * h) */        \
            const T* restrict tb = tmp + (size_t)b * H;                                \
            T* restrict ab = aux + (size_t)b * H;                                      \
            for (size_t j = 0; j < (size_t)H; j++) {                                   \
                T r = gr[j], t = tb[j], hv = hb[j];                                    \
                dr[j] = t * hv * r * ((T)1 - r);                                       \
                dhb[j] += t * r;                                                       \
                ab[j] = r * hv;                                                        \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
/* GRU (reset_after) gate pass of rows [0, n), units [u0, u1), for the split-by-units      \
 * backward: dG rows of 4H = [dr | dz | dn*r (W_hh side) | dn (W_ih side)]; dh *= z */    \
ATTR static void frbg_gru_bwdu_##SUF(int n, int H, int u0, int u1, const T* gs,         \
        const T* hn, const T* hp, int ldhp, T* dh, T* dg) {                             \
    size_t L = (size_t)(u1 - u0), Hs = (size_t)H;                                      \
    for (int b = 0; b < n; b++) {                                                      \
        size_t bs = (size_t)b;                                                         \
        const T* restrict gr = gs + bs * 3 * Hs + u0;                                  \
        const T* restrict gz = gr + Hs;                                                \
        const T* restrict gn = gr + 2 * Hs;                                            \
        const T* restrict hnb = hn + bs * Hs + u0;                                     \
        const T* restrict hb = hp + bs * (size_t)ldhp + u0;                            \
        T* restrict dhb = dh + bs * Hs + u0;                                           \
        T* restrict dr = dg + bs * 4 * Hs + u0;                                        \
        T* restrict dz = dr + Hs;                                                      \
        T* restrict dn = dr + 2 * Hs;                                                  \
        T* restrict dx = dr + 3 * Hs;                                                  \
        for (size_t j = 0; j < L; j++) FRBG_GRU_RA_GRAD(T, j);                         \
    }                                                                                  \
}

FRBG_BWD(fb, float, frbg_tanh_f, )
FRBG_BWD(db, double, frbg_tanh_d, )
#if FRBG_X86
FRBG_BWD(f512, float, frbg_tanh_f, FRBG_A512)
FRBG_BWD(d512, double, frbg_tanh_d, FRBG_A512)
FRBG_BWD(f2, float, frbg_tanh_f, FRBG_A2)
FRBG_BWD(d2, double, frbg_tanh_d, FRBG_A2)
#define FRBG_PICK(NAME, SUF, ...)                                                       \
    do { int lv_ = frbg_level();                                                       \
         if (lv_ == 2) NAME##_##SUF##512(__VA_ARGS__);                                 \
         else if (lv_ == 1) NAME##_##SUF##2(__VA_ARGS__);                              \
         else NAME##_##SUF##b(__VA_ARGS__); } while (0)
#else
#define FRBG_PICK(NAME, SUF, ...) NAME##_##SUF##b(__VA_ARGS__)
#endif
#if FRBG_X86
/* float LSTM pass in explicit vectors (the auto-vectorised loop above is versioned for
 * aliasing and, built with Python's -fwrapv, ran its scalar version) */
#define FRBG_LSTM_BWD_V(SUF, LV, VF, VL, ATTR)                                            \
ATTR static void frbg_lstm_bwdv_##SUF(int r0, int r1, int H, int u0, int u1,          \
        const float* gs, const float* cs, const float* cp, const float* src, int ldsrc, \
        float* dc, float* dg, float* aux) {                                            \
    size_t Hs = (size_t)H, L = (size_t)(u1 - u0), j;    /* units [u0, u1) */          \
    for (int b = r0; b < r1; b++) {                                                    \
        const float* g = gs + (size_t)b * 4 * Hs + u0;                                 \
        const float* cpb = cp + (size_t)b * Hs + u0;                                   \
        const float* sb = src + (size_t)b * ldsrc + u0;                                \
        float* dcb = dc + (size_t)b * Hs + u0;                                         \
        float* d = dg + (size_t)b * 4 * Hs + u0;                                       \
        fr_act_arr_f_l##LV(1, cs + (size_t)b * Hs + u0, d + 3 * Hs, (int)L);  /* tanh(c) */ \
        for (j = 0; j + VL <= L; j += VL) {                                            \
            VF i, f, gg, o, tc, dh, dcv, cpv;                                          \
            memcpy(&i, g + j, sizeof(VF)); memcpy(&f, g + Hs + j, sizeof(VF));         \
            memcpy(&gg, g + 2 * Hs + j, sizeof(VF));                                   \
            memcpy(&o, g + 3 * Hs + j, sizeof(VF));                                    \
            memcpy(&tc, d + 3 * Hs + j, sizeof(VF)); memcpy(&dh, sb + j, sizeof(VF));  \
            memcpy(&dcv, dcb + j, sizeof(VF)); memcpy(&cpv, cpb + j, sizeof(VF));      \
            VF dct = dcv + dh * o * (1.0f - tc * tc);                                  \
            VF vi = dct * gg * i * (1.0f - i);                                         \
            VF vf = dct * cpv * f * (1.0f - f);                                        \
            VF vg = dct * i * (1.0f - gg * gg);                                        \
            VF vo = dh * tc * o * (1.0f - o);                                          \
            VF nd = dct * f;                                                           \
            memcpy(d + j, &vi, sizeof(VF)); memcpy(d + Hs + j, &vf, sizeof(VF));       \
            memcpy(d + 2 * Hs + j, &vg, sizeof(VF));                                   \
            memcpy(d + 3 * Hs + j, &vo, sizeof(VF));                                   \
            memcpy(dcb + j, &nd, sizeof(VF));                                          \
        }                                                                              \
        for (; j < L; j++) {                                                           \
            float i = g[j], f = g[Hs + j], gg = g[2 * Hs + j], o = g[3 * Hs + j];      \
            float tc = d[3 * Hs + j], dh = sb[j];                                      \
            float dct = dcb[j] + dh * o * (1.0f - tc * tc);                            \
            d[j] = dct * gg * i * (1.0f - i);                                          \
            d[Hs + j] = dct * cpb[j] * f * (1.0f - f);                                 \
            d[2 * Hs + j] = dct * i * (1.0f - gg * gg);                                \
            d[3 * Hs + j] = dh * tc * o * (1.0f - o);                                  \
            dcb[j] = dct * f;                                                          \
        }                                                                              \
        if (aux) {                                                                     \
            float* ab = aux + (size_t)b * Hs + u0;                                     \
            fr_act_arr_f_l##LV(1, cs + (size_t)b * Hs + u0, ab, (int)L);                 \
            for (j = 0; j < L; j++) ab[j] *= g[3 * Hs + j];                            \
        }                                                                              \
    }                                                                                  \
}
FRBG_LSTM_BWD_V(512, 2, frbg_v16f, 16, FRBG_A512)
FRBG_LSTM_BWD_V(2, 1, frbg_v8f, 8, FRBG_A2)
#endif
/* LSTM gate gradients of rows [r0, r1), units [u0, u1) (see _brows in _backward.pyx) */
static void frbg_lstm_bwdu_f(int r0, int r1, int H, int u0, int u1, const float* gs,
        const float* cs, const float* cp, const float* src, int ldsrc, float* dc, float* dg,
        float* aux) {
#if FRBG_X86
    int lv = frbg_level();
    if (lv == 2) { frbg_lstm_bwdv_512(r0, r1, H, u0, u1, gs, cs, cp, src, ldsrc, dc, dg, aux); return; }
    if (lv == 1) { frbg_lstm_bwdv_2(r0, r1, H, u0, u1, gs, cs, cp, src, ldsrc, dc, dg, aux); return; }
#endif
    FRBG_PICK(frbg_lstm_bwd, f, r0, r1, H, u0, u1, gs, cs, cp, src, ldsrc, dc, dg, aux);
}
static void frbg_lstm_bwdu_d(int r0, int r1, int H, int u0, int u1, const double* gs,
        const double* cs, const double* cp, const double* src, int ldsrc, double* dc,
        double* dg, double* aux) {
    FRBG_PICK(frbg_lstm_bwd, d, r0, r1, H, u0, u1, gs, cs, cp, src, ldsrc, dc, dg, aux);
}
static void frbg_lstm_bwd_f(int r0, int r1, int H, const float* gs, const float* cs,
        const float* cp, const float* src, int ldsrc, float* dc, float* dg, float* aux) {
    frbg_lstm_bwdu_f(r0, r1, H, 0, H, gs, cs, cp, src, ldsrc, dc, dg, aux);
}
static void frbg_lstm_bwd_d(int r0, int r1, int H, const double* gs, const double* cs,
        const double* cp, const double* src, int ldsrc, double* dc, double* dg, double* aux) {
    frbg_lstm_bwdu_d(r0, r1, H, 0, H, gs, cs, cp, src, ldsrc, dc, dg, aux);
}
static void frbg_gru_bwd_f(int kind, int r0, int r1, int H, const float* gs, const float* hn,
        const float* hp, int ldhp, float* dh, float* dg, float* dnx, const float* tmp,
        float* aux) {
    FRBG_PICK(frbg_gru_bwd, f, kind, r0, r1, H, gs, hn, hp, ldhp, dh, dg, dnx, tmp, aux);
}
static void frbg_gru_bwd_d(int kind, int r0, int r1, int H, const double* gs,
        const double* hn, const double* hp, int ldhp, double* dh, double* dg, double* dnx,
        const double* tmp, double* aux) {
    FRBG_PICK(frbg_gru_bwd, d, kind, r0, r1, H, gs, hn, hp, ldhp, dh, dg, dnx, tmp, aux);
}

/* ------------------------------------------------ LSTM training forward, fused
 * Both threads (nt) run every step: thread t owns a range of unit blocks (VL units, all
 * four gates) and computes, per step, its columns of h_{s-1} @ W_hh^T into the gates
 * (which already hold its columns of x W_ih^T, projected up front), then the gate math
 * of its units; one barrier per step (the next step reads all of h_s).  No projection
 * (proj_size), float and double.  Returns -1 when memory ran out. */
#ifdef _OPENMP
#include <omp.h>
#endif
/* rows of x projected at a time (a chunk of steps), just before the steps use them */
#define FRBG_FWD_ROWS 256
/* Barrier of the n threads of a team for the per-step hand-over (fr_barrier.h) */
#include "fr_barrier.h"
#define frbg_barrier fr_barrier_wait
/* gate math of rows [0, n), units [u0, u1) of one training-forward step (bias, sigmoid /
 * tanh, c and h); ISA variants because the outlined OpenMP body that calls it is built
 * for the baseline ISA */
#define FRBG_LSTM_FWD_ROWS(SUF, T, SIG, TANH, ATTR)                                    \
ATTR static void frbg_lstm_fwd_rows_##SUF(int n, int H, int u0, int u1, T* gs,               \
        const T* bias, const T* cp, T* cs, T* ys, int ldy) {                           \
    int b, q, len = u1 - u0;                                                           \
    size_t j, L = (size_t)len;                                                         \
    for (b = 0; b < n; b++) {                                                          \
        T* g = gs + (size_t)b * 4 * H + u0;                                            \
        T* restrict gi = g;                                                            \
        T* restrict gf = g + (size_t)H;                                                \
        T* restrict gg = g + (size_t)2 * H;                                            \
        T* restrict go = g + (size_t)3 * H;                                            \
        const T* restrict cpb = cp + (size_t)b * H + u0;                               \
        T* restrict cb = cs + (size_t)b * H + u0;                                      \
        T* restrict yb = ys + (size_t)b * ldy + u0;                                    \
        for (q = 0; q < 4; q++) {                                                      \
            T* restrict gq = g + (size_t)q * H;                                        \
            const T* restrict bq = bias + (size_t)q * H + u0;                          \
            for (j = 0; j < L; j++) gq[j] += bq[j];                                    \
        }                                                                              \
        SIG(gi, gi, len);                                                              \
        SIG(gf, gf, len);                                                              \
        TANH(gg, gg, len);                                                             \
        SIG(go, go, len);                                                              \
        for (j = 0; j < L; j++) cb[j] = gf[j] * cpb[j] + gi[j] * gg[j];                \
        TANH(cb, yb, len);                                                             \
        for (j = 0; j < L; j++) yb[j] *= go[j];                                        \
    }                                                                                  \
}
/* the ISA variants of a training-forward gate-rows macro (FRBG_PICK chooses one) */
#define FRBG_FWD_ROWS_VARIANTS(M)                                                      \
    M(f512, float, frbg_sigmoid_f, frbg_tanh_f, FRBG_A512)                             \
    M(f2, float, frbg_sigmoid_f, frbg_tanh_f, FRBG_A2)                                 \
    M(fb, float, frbg_sigmoid_f, frbg_tanh_f, )                                        \
    M(d512, double, frbg_sigmoid_d, frbg_tanh_d, FRBG_A512)                            \
    M(d2, double, frbg_sigmoid_d, frbg_tanh_d, FRBG_A2)                                \
    M(db, double, frbg_sigmoid_d, frbg_tanh_d, )
#if FRBG_X86
FRBG_FWD_ROWS_VARIANTS(FRBG_LSTM_FWD_ROWS)
#endif
/* LSTM training forward.  Small batch: split by units (each thread packs and reads only
 * its own panels of the weights, one barrier per step).  From about 5.5 sequences a
 * thread on (frbg_fwd_rowsplit_at): split by batch rows (rows are independent through
 * time: each thread projects and runs its own rows of every step (frbg_row_bound),
 * reading all the packed weights; one barrier in all, after the packing).  Sharing each chunk's projection instead cost a
 * barrier per chunk, and on a noisy VM the threads' drift summed over those barriers
 * (measured on a Zen 3 VM, B=64 H=512: 10-30 ms of waiting in a ~100 ms forward). */
/* Where thread t's rows start in the row split: sequences sorted longest first (step s
 * has rows [0, nsteps[s])), so the first b rows hold W(b) = sum_s min(nsteps[s], b) row
 * steps; the bound is the smallest b with W(b) >= t * N / nt (N = all row steps): even
 * work for ragged batches (the halves of the rows could differ 2x), t * B / nt rounded
 * up for dense ones.  Binary search, O(S log B). */
static int frbg_row_bound(int S, const ptrdiff_t* nsteps, int t, int nt) {
    ptrdiff_t N = 0, target;
    int s, lo = 0, hi = (int)nsteps[0];
    if (t <= 0) return 0;
    if (t >= nt) return hi;
    for (s = 0; s < S; s++) N += nsteps[s];
    target = (ptrdiff_t)((double)N * t / nt);
    while (lo < hi) {            /* smallest b in [0, B] with W(b) >= target */
        int mid = lo + (hi - lo) / 2;
        ptrdiff_t w = 0;
        for (s = 0; s < S && nsteps[s] > 0; s++) w += nsteps[s] < mid ? nsteps[s] : mid;
        if (w >= target) hi = mid; else lo = mid + 1;
    }
    return lo;
}
static int frbg_fwd_rowsplit = 0;   /* _backward._set_fwd_rowsplit (tests, A/B runs) */
static int frbg_fwd_rowsplit_at(int nt, int B, int I, int H, int elsize);
/* the 8 x 3 kernel for the LSTM training forward of B sequences on nt threads (above) */
static int frbg_lstm_fwd_d83(int level, int nt, int B, int I, int H, int elsize) {
    int mb;
    if (level != 2 || !frbg_use83) return 0;
    if (frbg_use83 == 2) return 1;
    mb = frbg_fwd_rowsplit_at(nt, B, I, H, elsize) ? (B + nt - 1) / nt : B;
    return mb >= 7 && mb <= 8;
}
/* the share of one core's L2 that G gates' weights take (W_ih and W_hh: G*H (I + H)
 * values; I = 0: W_hh alone); past any bound where the L2 size is unknown */
static double frbg_l2_share(int G, int I, int H, int elsize) {
    long l2 = fr_l2_bytes();
    return l2 > 0 ? (double)G * H * ((double)I + H) * elsize / (double)l2 : 1e30;
}
/* I, H, elsize: the layer's sizes (W_ih and W_hh packed: 4H (I + H) values) */
static int frbg_fwd_rowsplit_at(int nt, int B, int I, int H, int elsize) {
    double share = frbg_l2_share(4, I, H, elsize);
    if (nt < 2) return 0;
    if (frbg_fwd_rowsplit > 0) return B >= frbg_fwd_rowsplit;
    /* AVX-512 with 2 MiB of L2 or more: weights beyond one L2 split by units (each
     * thread streams half of them a step, not all).  Measured (Intel Xeon, 2 MiB L2,
     * forward_train units / rows, in-process A/B): float32 H = 384 B = 32, 64: 0.87,
     * 0.96; H = 512 B = 16, 32, 64, 128: 0.77, 0.83, 0.90, 0.97; H = 1024 B = 64: 0.91;
     * float64 H = 256 B = 16, 64: 0.83, 0.96, H = 512 B = 64: 0.91; but float32 H = 256
     * (2 MiB, one L2) B = 64, 128: 1.03, 1.10 (rows stay). */
    if (frbg_level() == 2 && fr_l2_bytes() >= (2L << 20) && share > 1.0)
        return 0;
    /* AVX-512: weights within 0.6 of one L2 split by rows from two rows a thread (no
     * barrier per step; each thread reads all of them from its own L2).  Measured
     * (Intel Xeon, 2 MiB L2, forward_train rows / units, in-process A/B): float32 H = 64
     * B = 4..10: 0.46-0.84; H = 128: 0.69-0.95; H = 160 B = 4, 6, 9: 0.76-0.87; H = 192
     * (1.1 MiB): 0.81-1.04; float64 H = 64 B = 4..9: 0.60-0.74, H = 128 (1 MiB):
     * 0.80-0.89; but H = 256 (2 MiB) B = 5, 6: 1.32, 1.21 (units stay), and one row a
     * thread (B = 3) 1.11-1.12 at H = 128, 192. */
    if (frbg_level() == 2 && B >= 2 * nt && share <= 0.6)
        return 1;
    /* measured (Zen 3, 2 threads, H = 128..512, training forward with the 4 x 3 kernel):
     * rows split from 5.5 rows a thread on (B = 11: 0.92, 12-15: 0.85-0.87, 16: 0.97 of
     * the unit split's time) and at 4 rows a thread (B = 8: 0.85-0.95, one full row
     * block); 3 or 5 rows a thread (B = 6, 7, 9, 10) 1.02-1.07 */
    return 2 * B >= 11 * nt || (B >= 4 * nt && B % (4 * nt) == 0);
}
/* The split-by-units backward's time loop split by batch rows instead (each thread the
 * gate pass, dG packing and dh product of its own rows of every step, reading all of
 * W_hh: no barrier per step; the weight-gradient GEMMs after the loop stay split by
 * units).  Measured (Intel Xeon, AVX-512, 2 MiB L2, 2 threads, backward time rows /
 * units, in-process A/B): GRU float32 H=128 B=16 0.90, H=256 B=8..128 0.93-0.98 (W_hh
 * 768 KiB), H=384 B=64 0.98, H=512 B=64..128 0.97-0.98 but B=16, 32, 48 1.18, 1.07,
 * 1.02 (W_hh 3 MiB streamed by each thread for its rows: worth it from ~96 KiB of W_hh
 * a row); float64 GRU H=256 B=16 1.02, H=512 B=64 1.01; LSTM float32 H=256 B=12..64
 * 0.99-1.01 (with the 8 x 3 dh product at B=14-16 0.99-1.01 too), H=128 B=16 0.91,
 * H=512 B=16 1.10-1.12, float64 H=256 B=16 1.09.  So: GRU, AVX-512, 4+ rows a
 * thread, W_hh in half an L2 or at most 96 KiB of it a row.  LSTM at smaller H (a later
 * session there): H=128 B=8..16 0.88-0.90 (B=4, 6 0.94), H=160 B=8..32 0.84-0.90,
 * H=192 B=8..16 0.88-0.91 (B=4, 6 1.03), H=224 B=8..32 0.92-0.96, float64 H=128 B=8,
 * 16 0.93-0.94: so LSTM too, 4+ rows a thread, where W_hh (4H x H) takes at most 0.4
 * of an L2 (H=256 float32, half of it: 0.99-1.01 above).  Once the backward kept only
 * two steps of dG where dX is not wanted (each thread's rows of them stay in its cache)
 * the row split won further (same host, backward rows / units): LSTM float32 H=256
 * B=8..128 0.91-0.98, H=288 B=16 0.90, H=320 B=8..32 0.96-0.97, float64 H=192 B=8..64
 * 0.93-0.96; GRU float32 H=320 B=8, 16 0.94-0.95, H=352 B=16 0.97, float64 H=224 B=16
 * 0.93, H=256 B=16, 64 1.00, 0.95; but LSTM H=384 B=16 1.09 (W_hh 1.1 L2s), H=512 B=16
 * 1.15, float64 H=256 B=16 1.05 (one L2), GRU H=384 B=16 1.00, H=512 B=16, 32 1.13,
 * 1.06; LSTM B=4 (2 rows a thread) 1.05.  So both cells: 4+ rows a thread where W_hh
 * takes at most 0.8 of an L2, GRU also at most 96 KiB of it a row.  frbg_bwd_rowsplit:
 * 0 that rule, 1 rows, -1 units (tests, A/B runs). */
static int frbg_bwd_rowsplit = 0;
static int frbg_bwd_rowsplit_at(int level, int lstm, int nt, int B, int H, int elsize) {
    size_t w = (size_t)3 * H * H * elsize;   /* GRU's W_hh */
    if (nt < 2 || B < 2) return 0;
    if (frbg_bwd_rowsplit) return frbg_bwd_rowsplit > 0;
    if (level != 2 || B < 4 * nt) return 0;
    if (frbg_l2_share(lstm ? 4 : 3, 0, H, elsize) <= 0.8) return 1;
    return !lstm && w * nt <= ((size_t)96 << 10) * B;
}
/* values up to a multiple of 16 (64 bytes for either type): where the second of two
 * arrays in one scratch block starts */
#define FRBG_ROUND16(n) (((n) + 15) / 16 * 16)
/* m x L product of a thread's own packed columns (units): the 4 x 3 kernel over its nvl
 * vector columns (d43, frbg_pack43 layout), else the 4-vector panels' kernel */
#define FRBG_GEMMX(SUF, m, L, k, A, lda, Bp, C, ldc, beta)                             \
    do {                                                                               \
        if (d43) frbg_gemm43_##SUF##2(m, L, k, A, lda, 1, Bp, C, ldc, beta, 0, nvl);    \
        else frbg_gemm_##SUF(level, m, L, k, A, lda, 1, Bp, C, ldc, beta, 0, p1 - p0);  \
    } while (0)
#if FRBG_X86
/* values of the LSTM training forward's packed weights (W_ih then W_hh, by
 * frbg_pack_units or frbg_pack_units43) */
static size_t frbg_lstm_fwd_packed_size(int level, int I, int H, int elsize) {
    int U = frbg_nb(level, elsize) / 4, nbk = (H + U - 1) / U;
    return FRBG_ROUND16((size_t)nbk * (I > 0 ? I : 1) * 4 * U)
           + (size_t)nbk * (H > 0 ? H : 1) * 4 * U;
}
/* the layout of those weights: the ISA level and whether the 4 x 3 / 8 x 3 kernel's
 * (with AVX-512 that depends on the rows of a block: the team and the batch); a packing
 * made under one layout must not be read under another */
static int frbg_lstm_fwd_layout(int nt, int B, int I, int H, int elsize) {
    int level = frbg_level();
    return 2 * level + ((level == 1 && (frbg_use43 & 1))
                        || frbg_lstm_fwd_d83(level, nt, B, I, H, elsize));
}
#endif
/* pre: NULL, or weights packed by an earlier call with pack_only (the row split's layout,
 * which does not depend on the team: each thread reads all of it; where the forward splits
 * by units, returns -2 without computing).  pack_only: pack into pre and return. */
#define FRBG_LSTM_FWD(SUF, T, SIG, TANH)                                               \
static int frbg_lstm_fwd_##SUF(int level, int nt, int S, const ptrdiff_t* offsets,      \
        const ptrdiff_t* nsteps, int I, int H, const T* x, const T* wih, const T* whh,  \
        const T* bias, const T* h0, const T* c0, T* y, int ldy, T* gates, T* cs,       \
        T* pre, int pack_only) {                                                       \
    int U = frbg_nb(level, sizeof(T)) / 4, nbk = (H + U - 1) / U;                      \
    int rowsplit = frbg_fwd_rowsplit_at(nt, (int)nsteps[0], I, H, sizeof(T));          \
    /* the 4 x 3 (AVX2) / 8 x 3 (AVX-512) kernel and its layout */                    \
    int d43 = (level == 1 && (frbg_use43 & 1))                                         \
              || frbg_lstm_fwd_d83(level, nt, (int)nsteps[0], I, H, sizeof(T));        \
    if (pre && !rowsplit) return -2;                                                   \
    /* both packed weights in one kept scratch block (slot 3): no fresh pages per call */ \
    size_t szi = FRBG_ROUND16((size_t)nbk * (I > 0 ? I : 1) * 4 * U);                  \
    T* wi = pre ? pre : (T*)frbg_scratch_get(3, sizeof(T) * frbg_lstm_fwd_packed_size(level, I, H, sizeof(T))); \
    if (!wi) return -1;                                                                \
    T* wh = wi + szi;                                                                  \
    int ch = (int)((FRBG_FWD_ROWS + nsteps[0] - 1) / nsteps[0]);                       \
    if (ch < 1) ch = 1;                                                                \
    if (!rowsplit && nt > nbk) nt = nbk;                                               \
    if (rowsplit && nt > nsteps[0]) nt = (int)nsteps[0];                               \
    if (nt < 1) nt = 1;                                                                \
    int bar[2] = {0, 0};             /* spin barrier: arrivals, generation */          \
    fr_place* frbg_pl = fr_place_team(nt);                                             \
    _Pragma("omp parallel num_threads(nt)")                                            \
    {                                                                                  \
        int t = 0, ntt = 1, s;                                                         \
        FRBG_OMP_IDS(t, ntt);                                                          \
        fr_place_join(frbg_pl, t);                                                     \
        int p0 = t * nbk / ntt, p1 = (t + 1) * nbk / ntt;                              \
        int u0 = p0 * U, u1 = p1 * U < H ? p1 * U : H;                                 \
        /* each thread packs its share of the panels */                                \
        if (pre && !pack_only) {                                                       \
        } else if (!d43) {                                                             \
            frbg_pack_units_##SUF(wih, I, I, H, U, p0, p1, wi);                        \
            frbg_pack_units_##SUF(whh, H, H, H, U, p0, p1, wh);                        \
        } else {   /* groups for the 4 x 3 kernel: own units' run, or a share of all */ \
            int ca = rowsplit ? 0 : 4 * p0, cz = rowsplit ? 4 * nbk : 4 * p1;          \
            int ng = frbg_m43_ngroups(cz - ca);                                        \
            int g0 = rowsplit ? t * ng / ntt : 0, g1 = rowsplit ? (t + 1) * ng / ntt : ng; \
            frbg_pack_units43_##SUF(wih, I, I, H, U, ca, cz, g0, g1, wi);              \
            frbg_pack_units43_##SUF(whh, H, H, H, U, ca, cz, g0, g1, wh);              \
        }                                                                              \
        /* this thread's rows [b0, b1) of every step and panels [q0, q1) (units [v0, v1)): \
         * all rows of its own panels, or its own rows of all panels */               \
        int b0 = rowsplit ? frbg_row_bound(S, nsteps, t, ntt) : 0;                     \
        int b1 = rowsplit ? frbg_row_bound(S, nsteps, t + 1, ntt) : (int)nsteps[0];    \
        int q0 = rowsplit ? 0 : p0, q1 = rowsplit ? nbk : p1;                          \
        int v0 = rowsplit ? 0 : u0, v1 = rowsplit ? H : u1;                            \
        for (s = 0; s < (pack_only ? 0 : S); s++) {                                    \
            if (s % ch == 0) {   /* input projection of the next chunk of steps */      \
                int se = s + ch < S ? s + ch : S;                                      \
                if (rowsplit) {  /* own rows of the chunk; every panel is needed */    \
                    if (s == 0 && !pre) frbg_barrier(bar, ntt);   /* all packed */     \
                    frbg_gemmu_steps_##SUF(level, d43, s, se, offsets, nsteps, b0, b1, H, I, \
                                           x, wi, gates, 4 * H, 0, nbk);               \
                } else {                                                               \
                    ptrdiff_t R0 = offsets[s], R1 = offsets[se - 1] + nsteps[se - 1];  \
                    frbg_gemmu_##SUF(level, d43, (int)(R1 - R0), H, I, x + R0 * I, I, wi,    \
                                     gates + R0 * 4 * H, 4 * H, 0, p0, p1);            \
                }                                                                      \
            }                                                                          \
            int n = (int)nsteps[s], e = b1 < n ? b1 : n;                               \
            if (e > b0 && v0 < v1) {                                                   \
                ptrdiff_t r = offsets[s] + b0;                                         \
                const T* hp = s ? y + (offsets[s - 1] + b0) * ldy : h0 + (size_t)b0 * H; \
                const T* cp = s ? cs + (offsets[s - 1] + b0) * H : c0 + (size_t)b0 * H; \
                frbg_gemmu_##SUF(level, d43, e - b0, H, H, hp, s ? ldy : H, wh,              \
                                 gates + r * 4 * H, 4 * H, 1, q0, q1);                 \
                FRBG_PICK(frbg_lstm_fwd_rows, SUF, e - b0, H, v0, v1, gates + r * 4 * H, \
                          bias, cp, cs + r * H, y + r * ldy, ldy);                     \
            }                                                                          \
            if (!rowsplit) frbg_barrier(bar, ntt);   /* h_s complete for step s + 1 */ \
        }                                                                              \
    }                                                                                  \
    if (!pre) frbg_scratch_put(3, wi);                                                 \
    return 0;                                                                          \
}
/* gate math of rows [0, n), units [u0, u1) of one GRU (reset_after) training-forward
 * step: gs holds x W_i^T (+ h W_h^T for r, z), hn h W_hn^T; writes r, z, n into gs,
 * hn + b_hn into hn, h' into ys.  bias: b_ir + b_hr, b_iz + b_hz, b_in. */
#define FRBG_GRU_FWD_ROWS(SUF, T, SIG, TANH, ATTR)                                     \
ATTR static void frbg_gru_fwd_rows_##SUF(int n, int H, int u0, int u1, T* gs,           \
        const T* bias, const T* bhn, const T* hp, int ldhp, T* hn, T* ys, int ldy) {   \
    int b, len = u1 - u0;                                                              \
    size_t j, L = (size_t)len;                                                         \
    for (b = 0; b < n; b++) {                                                          \
        T* g = gs + (size_t)b * 3 * H + u0;                                            \
        T* restrict gr = g;                                                            \
        T* restrict gz = g + (size_t)H;                                                \
        T* restrict gn = g + (size_t)2 * H;                                            \
        const T* restrict br = bias + u0;                                              \
        const T* restrict bz = bias + (size_t)H + u0;                                  \
        const T* restrict bn = bias + (size_t)2 * H + u0;                              \
        const T* restrict bh = bhn + u0;                                               \
        const T* restrict hb = hp + (size_t)b * ldhp + u0;                             \
        T* restrict hnb = hn + (size_t)b * H + u0;                                     \
        T* restrict yb = ys + (size_t)b * ldy + u0;                                    \
        for (j = 0; j < L; j++) { gr[j] += br[j]; gz[j] += bz[j]; }                    \
        SIG(gr, gr, len);                                                              \
        SIG(gz, gz, len);                                                              \
        for (j = 0; j < L; j++) {                                                      \
            T h = hnb[j] + bh[j];                                                      \
            hnb[j] = h;                                                                \
            gn[j] += bn[j] + gr[j] * h;                                                \
        }                                                                              \
        TANH(gn, gn, len);                                                             \
        for (j = 0; j < L; j++) yb[j] = ((T)1 - gz[j]) * gn[j] + gz[j] * hb[j];        \
    }                                                                                  \
}
#if FRBG_X86
FRBG_FWD_ROWS_VARIANTS(FRBG_GRU_FWD_ROWS)
#endif
/* The GRU training forward split by batch rows instead (each thread its rows of every
 * step: input projection, the three h products over all panels, gate math; no barrier
 * per step; the same sums as the unit split) where its weights (3H x (I + H)) fit one
 * L2.  AVX-512 only (the AVX2 4 x 3 layout is packed per thread's units).  Measured
 * (Intel Xeon, 2 MiB L2, 2 threads, forward_train rows / units, in-process A/B):
 * H = 64 B = 6..32 0.69-0.91 (B = 3, 4: 0.94, 1.01), H = 128 B = 3..32 0.64-0.86,
 * H = 192 (0.4 of the L2) B = 4..32 0.65-0.89 (B = 3: 1.05); H = 256 (0.75 of it)
 * B = 12 0.92, 16 0.99, 32..128 0.85-0.88 but B = 3..6 1.29-1.68, 8 1.01; H = 512
 * (beyond it) B = 32, 64 1.33, 1.13.  So: from two rows a thread within 0.6 of an L2,
 * from six within one.  frbg_gru_fwd_rowsplit: 0 the rule, 1 rows, -1 units (tests,
 * A/B runs). */
static int frbg_gru_fwd_rowsplit = 0;
static int frbg_gru_fwd_rowsplit_at(int level, int nt, int B, int I, int H, int elsize) {
    double share = frbg_l2_share(3, I, H, elsize);
    if (level != 2 || nt < 2 || B < 2) return 0;
    if (frbg_gru_fwd_rowsplit) return frbg_gru_fwd_rowsplit > 0;
    return (B >= 2 * nt && share <= 0.6) || (B >= 6 * nt && share <= 1.0);
}
/* GRU (reset_after) training forward split by units, as the LSTM's: each thread owns whole
 * panels of nb units in each gate (W packed per gate), projects the inputs of its units
 * a chunk of steps ahead, and per step computes its columns of h W_h^T (r, z added into
 * the stored gates, n into hn), its units' gates and h; one barrier per step. */
#define FRBG_GRU_FWD(SUF, T)                                                           \
static int frbg_gru_fwd_##SUF(int level, int nt, int S, const ptrdiff_t* offsets,       \
        const ptrdiff_t* nsteps, int I, int H, const T* x, const T* wih, const T* whh,  \
        const T* bias, const T* bhn, const T* h0, T* y, int ldy, T* gates, T* hn) {     \
    int nb = frbg_nb(level, sizeof(T)), nph = (H + nb - 1) / nb, GH = 3 * H;           \
    int d43 = level == 1 && (frbg_use43 & 2), VLs = nb / 4;   /* 4 x 3 kernel, layout */ \
    size_t szi = FRBG_ROUND16((size_t)3 * nph * (I > 0 ? I : 1) * nb);                 \
    size_t szh = (size_t)3 * nph * H * nb;                                             \
    T* wi = (T*)frbg_scratch_get(3, sizeof(T) * (szi + szh));   /* as the LSTM's */    \
    if (!wi) return -1;                                                                \
    T* wh = wi + szi;                                                                  \
    int ch = (int)((FRBG_FWD_ROWS + nsteps[0] - 1) / nsteps[0]);                       \
    int rows = !d43 && frbg_gru_fwd_rowsplit_at(level, nt, (int)nsteps[0], I, H, sizeof(T)); \
    if (ch < 1) ch = 1;                                                                \
    if (!rows && nt > nph) nt = nph;                                                   \
    if (rows && nt > nsteps[0]) nt = (int)nsteps[0];                                   \
    if (nt < 1) nt = 1;                                                                \
    int bar[2] = {0, 0};                                                               \
    fr_place* frbg_pl = fr_place_team(nt);                                             \
    _Pragma("omp parallel num_threads(nt)")                                            \
    {                                                                                  \
        int t = 0, ntt = 1, s, g;                                                      \
        FRBG_OMP_IDS(t, ntt);                                                          \
        fr_place_join(frbg_pl, t);                                                     \
        int p0 = t * nph / ntt, p1 = (t + 1) * nph / ntt;                              \
        int u0 = p0 * nb, u1 = p1 * nb < H ? p1 * nb : H, L = u1 - u0;                 \
        int nvl = (L + VLs - 1) / VLs;         /* own vector columns (4 x 3 kernel) */ \
        /* gate g, panel p at (g * nph + p) * K * nb: own panels, packed by the owner */\
        for (g = 0; g < 3 && L > 0; g++) {                                             \
            T* wig = wi + ((size_t)g * nph + p0) * I * nb;                             \
            T* whg = wh + ((size_t)g * nph + p0) * H * nb;                             \
            if (d43) {   /* the own L units' vector columns, for the 4 x 3 kernel */   \
                frbg_pack43_##SUF(wih + (size_t)(g * H + u0) * I, I, I, L, 1, VLs, 0, nvl, wig); \
                frbg_pack43_##SUF(whh + (size_t)(g * H + u0) * H, H, H, L, 1, VLs, 0, nvl, whg); \
            } else {                                                                   \
                frbg_pack_##SUF##_into(wih + (size_t)(g * H + u0) * I, I, I, L, 1, nb, wig); \
                frbg_pack_##SUF##_into(whh + (size_t)(g * H + u0) * H, H, H, L, 1, nb, whg); \
            }                                                                          \
        }                                                                              \
        if (rows) {      /* own rows [b0, b1) of every step, all panels */             \
            int b0 = frbg_row_bound(S, nsteps, t, ntt);                                \
            int b1 = frbg_row_bound(S, nsteps, t + 1, ntt);                            \
            frbg_barrier(bar, ntt);                        /* every panel packed */    \
            for (s = 0; s < S; s++) {                                                  \
                int n = (int)nsteps[s], m = (b1 < n ? b1 : n) - b0;                    \
                ptrdiff_t r = offsets[s] + b0;                                         \
                if (m <= 0) break;                    /* (lengths only fall) */        \
                const T* hp = s ? y + (offsets[s - 1] + b0) * ldy : h0 + (size_t)b0 * H; \
                int ldhp = s ? ldy : H;                                                \
                for (g = 0; g < 3; g++)                                                \
                    frbg_gemm_##SUF(level, m, H, I, x + r * I, I, 1,                   \
                                    wi + (size_t)g * nph * I * nb, gates + r * GH + g * H, \
                                    GH, 0, 0, nph);                                    \
                for (g = 0; g < 2; g++)                                                \
                    frbg_gemm_##SUF(level, m, H, H, hp, ldhp, 1,                       \
                                    wh + (size_t)g * nph * H * nb, gates + r * GH + g * H, \
                                    GH, 1, 0, nph);                                    \
                frbg_gemm_##SUF(level, m, H, H, hp, ldhp, 1, wh + (size_t)2 * nph * H * nb, \
                                hn + r * H, H, 0, 0, nph);                             \
                FRBG_PICK(frbg_gru_fwd_rows, SUF, m, H, 0, H, gates + r * GH, bias, bhn, \
                          hp, ldhp, hn + r * H, y + r * ldy, ldy);                     \
            }                                                                          \
        }                                                                              \
        for (s = 0; s < (rows ? 0 : S); s++) {                                         \
            int n = (int)nsteps[s];                                                    \
            ptrdiff_t r = offsets[s];                                                  \
            if (L > 0) {                                                               \
                if (s % ch == 0) {   /* input projection of the next chunk of steps */  \
                    int se = s + ch < S ? s + ch : S;                                  \
                    ptrdiff_t R1 = offsets[se - 1] + nsteps[se - 1];                   \
                    for (g = 0; g < 3; g++)                                            \
                        FRBG_GEMMX(SUF, (int)(R1 - r), L, I, x + r * I, I,             \
                                   wi + ((size_t)g * nph + p0) * I * nb,               \
                                   gates + r * GH + g * H + u0, GH, 0);                \
                }                                                                      \
                const T* hp = s ? y + offsets[s - 1] * ldy : h0;                       \
                int ldhp = s ? ldy : H;                                                \
                for (g = 0; g < 2; g++)                                                \
                    FRBG_GEMMX(SUF, n, L, H, hp, ldhp, wh + ((size_t)g * nph + p0) * H * nb, \
                               gates + r * GH + g * H + u0, GH, 1);                    \
                FRBG_GEMMX(SUF, n, L, H, hp, ldhp, wh + ((size_t)2 * nph + p0) * H * nb, \
                           hn + r * H + u0, H, 0);                                     \
                FRBG_PICK(frbg_gru_fwd_rows, SUF, n, H, u0, u1, gates + r * GH, bias,   \
                          bhn, hp, ldhp, hn + r * H, y + r * ldy, ldy);                \
            }                                                                          \
            frbg_barrier(bar, ntt);                                                    \
        }                                                                              \
    }                                                                                  \
    frbg_scratch_put(3, wi);                                                           \
    return 0;                                                                          \
}
#ifdef _OPENMP
#define FRBG_OMP_IDS(t, n) do { t = omp_get_thread_num(); n = omp_get_num_threads(); } while (0)
#else
#define FRBG_OMP_IDS(t, n) do { t = 0; n = 1; } while (0)
#endif
/* threads in the current team (1 outside a parallel region or without OpenMP) */
static int frbg_team_size(void) { int t, n; FRBG_OMP_IDS(t, n); (void)t; return n; }
/* Rows [r, r + n) of the own dG columns (4 gates x L units at dg + q*gs, rows ld apart)
 * into the micro-panels of MR columns frbg_wgemmp reads (nqt per gate, zero padded), and
 * their sums into the bias gradient db (+ q*gs).  Row by row: each dG row is read once,
 * front to back, and its values go to the 4*nqt micro-panels (the next row's values land
 * beside them, so the written lines stay in L1 across the rows of a step).  Walking the
 * micro-panels in the outer loop instead read MR values from each of the n rows per
 * micro-panel; with rows 4H values apart (a multiple of 4 KiB for H % 256 == 0) those all
 * fall in one L1 set, and the packing took 1.5-1.8x as long (measured, AVX2 Zen 3). */
#define FRBG_PACKDG(SUF, T)                                                            \
static inline __attribute__((always_inline)) void frbg_packdg_##SUF(const int MR, int n, \
        int L, int nqt, ptrdiff_t N, ptrdiff_t r, const T* dg, int ld, int gs, T* db, \
        T* ap) {                                                                       \
    size_t q, qq, b, j, Ls = (size_t)L, ns = (size_t)n, lds = (size_t)ld;             \
    size_t full = Ls / (size_t)MR, ps = (size_t)N * MR;                                \
    for (b = 0; b < ns; b++)                                                           \
        for (q = 0; q < 4; q++) {                                                      \
            T* restrict dbq = db + q * (size_t)gs;                                     \
            const T* restrict g = dg + b * lds + q * (size_t)gs;                       \
            T* restrict dst = ap + (q * (size_t)nqt * (size_t)N + (size_t)r + b) * MR; \
            for (j = 0; j < Ls; j++) dbq[j] += g[j];                                   \
            /* constant-size copies of MR values (memcpy: no -fwrapv index math) */    \
            for (qq = 0; qq < full; qq++)                                              \
                memcpy(dst + qq * ps, g + qq * MR, sizeof(T) * MR);                    \
            if (full < (size_t)nqt) {             /* the last, partial micro-panel */  \
                size_t w = Ls - full * MR, rr;                                         \
                for (rr = 0; rr < (size_t)MR; rr++)                                    \
                    dst[full * ps + rr] = rr < w ? g[full * MR + rr] : (T)0;           \
            }                                                                          \
        }                                                                              \
}
FRBG_PACKDG(f, float)
FRBG_PACKDG(d, double)
/* Per-step bookkeeping of the split-by-units backwards around the gate pass, in ISA
 * variants (the outlined OpenMP body that calls them is built for the baseline ISA):
 * dh[b, u0:u0+L] += dy[b, u0:u0+L] (rows of ld H), and the dG packing above. */
#define FRBG_STEPV(SUF, TS, T, ATTR)                                                     \
ATTR static void frbg_dyadd_##SUF(int n, int H, int u0, int L, const T* dy, T* dh) {   \
    size_t b, j, Hs = (size_t)H, Ls = (size_t)L;                                       \
    for (b = 0; b < (size_t)n; b++) {                                                  \
        T* restrict d = dh + b * Hs + u0;                                              \
        const T* restrict a = dy + b * Hs + u0;                                        \
        for (j = 0; j < Ls; j++) d[j] += a[j];                                         \
    }                                                                                  \
}                                                                                      \
ATTR static void frbg_packdgv_##SUF(int MR, int n, int L, int nqt, ptrdiff_t N,        \
        ptrdiff_t r, const T* dg, int ld, int gs, T* db, T* ap) {                      \
    if (MR == 6) frbg_packdg_##TS(6, n, L, nqt, N, r, dg, ld, gs, db, ap);             \
    else frbg_packdg_##TS(3, n, L, nqt, N, r, dg, ld, gs, db, ap);                     \
}
#if FRBG_X86
FRBG_STEPV(f512, f, float, FRBG_A512)
FRBG_STEPV(f2, f, float, FRBG_A2)
FRBG_STEPV(fb, f, float, )
FRBG_STEPV(d512, d, double, FRBG_A512)
FRBG_STEPV(d2, d, double, FRBG_A2)
FRBG_STEPV(db, d, double, )
#endif
/* ------------------------------------------------ LSTM and GRU backward, split by units
 * Both threads run every step of the time loop, from the last step back: thread t owns a
 * range of units (whole panels of nb columns) and computes, per step, the gate gradients
 * of its units (it holds their dh and, LSTM, dc), then, after one barrier (every column
 * of dG_s is written), its columns of dh_{s-1} (+)= dG_s @ W_hh: its packed slice of W_hh
 * (G*H x its units) stays in its core's cache across steps.  After the loop each thread
 * computes the weight and bias gradients of its own gate rows (dW_ih = dG^T X, dW_hh =
 * dG^T H_prev as single GEMMs over every step: no per-thread accumulators to sum) and a
 * share of the dX rows.
 * dG rows have 4H values in both cells: LSTM [di | df | dg | do] (both weight sides);
 * GRU (reset_after) [dr | dz | dn*r | dn]: the first three the W_hh side, dr, dz, dn the
 * W_ih side.  Their column sums (taken while packing) are the bias gradients.
 * cell 1 LSTM (no projection; cs: c, c0, dc), cell 2 GRU (cs: the stored h W_hn + b_hn;
 * c0, dc unused).  dh (B x H) / dc: on entry the gradient reaching the final state, on
 * exit the one reaching the initial state; dg: N x 4H scratch (2B x 4H where dx is NULL);
 * dx NULL when not wanted.
 * Float and double.  Returns -1 when memory ran out. */
/* thread t's packed dG columns (its units from u0) in the split-by-units backward's
 * scratch: the gate passes write them (every thread into every region in the row split),
 * the weight-gradient GEMMs of thread t read them */
#define FRBG_DG_REGION(work, N, u0, t, MR)                                              \
    ((work) + (size_t)4 * (N) * ((size_t)(u0) + (size_t)(t) * (MR)))
/* step s's rows of dG: all of dG (N x 4H) where dX is wanted (its GEMM reads every row
 * after the loop), else two steps' rows, alternating (a thread writes step s - 2's rows
 * only after the barrier of step s - 1, when every thread's dh product of step s has
 * read them; the row split's threads touch only their own rows): 4H * N values the
 * caches no longer have to write back */
#define FRBG_DG_STEP(s) (dx ? dg + offsets[s] * G4 : dg + (size_t)((s) & 1) * nsteps[0] * G4)
#define FRBG_BWDU(SUF, T)                                                              \
static int frbg_bwd_units_##SUF(int level, int cell, int nt, int S,                     \
        const ptrdiff_t* offsets, const ptrdiff_t* nsteps, int I, int H, const T* x,   \
        const T* wih, const T* whh, const T* h0, const T* c0, const T* y, int ldy,     \
        const T* gates, const T* cs, const T* dy, T* dh, T* dc, T* dx, T* dwih,        \
        T* dwhh, T* dbih, T* dbhh, T* dg) {                                            \
    const int lstm = cell == 1, G = lstm ? 4 : 3, GH = G * H, G4 = 4 * H;              \
    const int KX = lstm ? G4 : 2 * H;   /* dG columns [0, KX) meet W_ih rows [0, KX) */ \
    int nb = frbg_nb(level, sizeof(T));                                                \
    int nph = (H + nb - 1) / nb, npx = (I + nb - 1) / nb;                              \
    int d43 = level == 1 && (frbg_use43 & 2), VLs = nb / 4;   /* 4 x 3 kernel, layout */ \
    /* rows: the time loop split by batch rows (see frbg_bwd_rowsplit_at) */            \
    int rows = !d43 && frbg_bwd_rowsplit_at(level, lstm, nt, (int)nsteps[0], H, sizeof(T)); \
    if (nt > nph) nt = nph;                                                            \
    if (rows && nt > (int)nsteps[0]) nt = (int)nsteps[0];                              \
    if (nt < 1) nt = 1;                                                                \
    /* the row split's dh product on the 8 x 3 kernel (W_hh in its layout, all of it) \
     * where a thread's rows are 7-8 (as the LSTM training forward): GRU H=256 backward \
     * B=14 0.92x, B=16 0.98x the 6 x 4's 4+3 / 4+4 rows (Intel Xeon, in-process) */    \
    int rpt = ((int)nsteps[0] + nt - 1) / nt;                                          \
    int r83 = rows && level == 2                                                       \
              && (frbg_use83 == 2 || (frbg_use83 == 1 && rpt >= 7 && rpt <= 8));       \
    int nvc = (H + VLs - 1) / VLs;                                                     \
    ptrdiff_t N = offsets[S - 1] + nsteps[S - 1];                                      \
    size_t szx = (size_t)npx * N * nb, szh = (size_t)nph * N * nb;                     \
    size_t szw = (size_t)nph * GH * nb, szi = dx ? (size_t)npx * GH * nb : 0;          \
    size_t szb = (size_t)nt * G4 + 16;   /* per thread in the row split */             \
    int MR = frbg_mr(level);                                                           \
    /* packed dG: thread t (units [u0, u0 + L)) at 4N(u0 + t*MR) (FRBG_DG_REGION),     \
     * 4N(L + MR) values, so the regions never overlap whatever team size OpenMP grants \
     * (<= nt) */                                                                      \
    size_t szk = (size_t)4 * N * ((size_t)nph * nb + (size_t)nt * MR);                 \
    T* buf = (T*)frbg_scratch_get(1, sizeof(T) * (szx + szh + szw + szi + szb + szk + 64)); \
    if (!buf) return -1;                                                               \
    T* xp = buf;                  /* X packed (N x I), panels of nb */                 \
    T* hpk = xp + szx;            /* H_prev packed (N x H) */                          \
    T* whp = hpk + szh;           /* W_hh (G*H x H), panels of nb units */             \
    T* wip = whp + szw;           /* W_ih rows [0, KX) (then GRU: the n rows), for dX */ \
    T* wipn = wip + (size_t)npx * KX * nb;                                             \
    T* dbs = wip + szi;           /* column sums of the four dG blocks (4H; rows: nt) */ \
    T* work = dbs + szb;          /* per thread: its dG columns, packed for the GEMM */ \
    int bar[2] = {0, 0};                                                               \
    fr_place* frbg_pl = fr_place_team(nt);                                             \
    _Pragma("omp parallel num_threads(nt)")                                            \
    {                                                                                  \
        int t = 0, ntt = 1, s, q, b;                                                   \
        FRBG_OMP_IDS(t, ntt);                                                          \
        fr_place_join(frbg_pl, t);                                                     \
        int p0 = t * nph / ntt, p1 = (t + 1) * nph / ntt;                              \
        int u0 = p0 * nb, u1 = p1 * nb < H ? p1 * nb : H, L = u1 - u0;                 \
        int nqt = (L + MR - 1) / MR;     /* micro-panels per gate */                   \
        int nvl = (L + VLs - 1) / VLs;   /* own vector columns (4 x 3 kernel) */       \
        T* ap = FRBG_DG_REGION(work, N, u0, t, MR);                                    \
        /* each thread packs its own W_hh panels, a share of the W_ih panels and of    \
         * the X / H_prev rows; the barriers of the time loop publish them */           \
        if (r83) {       /* a share of the groups of all vector columns */            \
            int c_, gi_ = 0, nvg_;                                                     \
            for (c_ = 0; c_ < nvc; c_ += nvg_, gi_++) {                                \
                nvg_ = frbg_m43_group(nvc - c_);                                       \
                if (gi_ % ntt == t)                                                    \
                    frbg_pack43_##SUF(whh, H, GH, H, 0, VLs, c_, c_ + nvg_, whp);      \
            }                                                                          \
        } else if (L > 0 && d43)                                                       \
            frbg_pack43_##SUF(whh + u0, H, GH, L, 0, VLs, 0, nvl, whp + (size_t)p0 * GH * nb); \
        else if (L > 0)                                                                \
            frbg_pack_##SUF##_into(whh + u0, H, GH, L, 0, nb, whp + (size_t)p0 * GH * nb); \
        if (dx) {                                                                      \
            int a0 = t * npx / ntt, a1 = (t + 1) * npx / ntt;                          \
            int j0 = a0 * nb, j1 = a1 * nb < I ? a1 * nb : I;                          \
            if (j1 > j0) {                                                             \
                frbg_pack_##SUF##_into(wih + j0, I, KX, j1 - j0, 0, nb,                 \
                                       wip + (size_t)a0 * KX * nb);                    \
                if (!lstm)                                                             \
                    frbg_pack_##SUF##_into(wih + (size_t)2 * H * I + j0, I, H, j1 - j0, \
                                           0, nb, wipn + (size_t)a0 * H * nb);         \
            }                                                                          \
        }                                                                              \
        for (s = t * S / ntt; s < (t + 1) * S / ntt; s++)                              \
            for (b = 0; b < (int)nsteps[s]; b++) {                                     \
                ptrdiff_t kk = offsets[s] + b;                                         \
                frbg_pack_row_##SUF(x + kk * I, I, nb, N, kk, 0, xp);                  \
                frbg_pack_row_##SUF(s ? y + (offsets[s - 1] + b) * ldy                 \
                                      : h0 + (size_t)b * H, H, nb, N, kk, 0, hpk);     \
            }                                                                          \
        for (q = 0; q < G && L > 0; q++) {                                             \
            memset(dwih + (size_t)(q * H + u0) * I, 0, sizeof(T) * (size_t)L * I);     \
            memset(dwhh + (size_t)(q * H + u0) * H, 0, sizeof(T) * (size_t)L * H);     \
        }                                                                              \
        for (q = 0; q < 4 && L > 0; q++)                                               \
            memset(dbs + (size_t)q * H + u0, 0, sizeof(T) * L);                        \
        if (rows) {                                                                    \
            int b0 = frbg_row_bound(S, nsteps, t, ntt);                                \
            int b1 = frbg_row_bound(S, nsteps, t + 1, ntt), tt;                        \
            T* dbt = dbs + (size_t)t * G4;    /* this thread's bias sums, all units */ \
            if (t > 0) memset(dbt, 0, sizeof(T) * G4);                                 \
            frbg_barrier(bar, ntt);        /* every panel of W_hh packed, sums zeroed */ \
            for (s = S - 1; s >= 0; s--) {                                             \
                int n = (int)nsteps[s], e = b1 < n ? b1 : n, m = e - b0;               \
                ptrdiff_t r = offsets[s] + b0;                                         \
                T* dgs = FRBG_DG_STEP(s);   /* this step's dG rows */                  \
                if (m <= 0) continue;                                                  \
                FRBG_PICK(frbg_dyadd, SUF, m, H, 0, H, dy + r * H, dh + (size_t)b0 * H); \
                if (lstm)                                                              \
                    frbg_lstm_bwdu_##SUF(b0, e, H, 0, H, gates + offsets[s] * G4,       \
                                         cs + offsets[s] * H,                          \
                                         s ? cs + offsets[s - 1] * H : c0, dh, H, dc,  \
                                         dgs, NULL);                                   \
                else                                                                   \
                    FRBG_PICK(frbg_gru_bwdu, SUF, m, H, 0, H, gates + r * GH,          \
                              cs + r * H, s ? y + (offsets[s - 1] + b0) * ldy          \
                                            : h0 + (size_t)b0 * H,                     \
                              s ? ldy : H, dh + (size_t)b0 * H, dgs + (size_t)b0 * G4); \
                /* own rows into every thread's packed dG region (the weight-gradient  \
                 * GEMMs below stay split by units) */                                 \
                for (tt = 0; tt < ntt; tt++) {                                         \
                    int a0 = tt * nph / ntt, a1 = (tt + 1) * nph / ntt;                \
                    int w0 = a0 * nb, w1 = a1 * nb < H ? a1 * nb : H;                  \
                    if (w1 > w0)                                                       \
                        FRBG_PICK(frbg_packdgv, SUF, MR, m, w1 - w0,                   \
                                  (w1 - w0 + MR - 1) / MR, N, r,                       \
                                  dgs + (size_t)b0 * G4 + w0, G4, H, dbt + w0,         \
                                  FRBG_DG_REGION(work, N, w0, tt, MR));                \
                }                                                                      \
                if (r83)                                                               \
                    frbg_gemm83_##SUF##512(m, H, GH, dgs + (size_t)b0 * G4, G4, 1, whp, \
                                           dh + (size_t)b0 * H, H, !lstm, 0, nvc);     \
                else                                                                   \
                    frbg_gemm_##SUF(level, m, H, GH, dgs + (size_t)b0 * G4, G4, 1, whp,  \
                                    dh + (size_t)b0 * H, H, !lstm, 0, nph);            \
            }                                                                          \
            frbg_barrier(bar, ntt);        /* every dG row packed, every sum taken */  \
            for (tt = 1; tt < ntt; tt++)                                               \
                for (q = 0; q < 4 && L > 0; q++)                                       \
                    for (b = 0; b < L; b++)                                            \
                        dbs[(size_t)q * H + u0 + b] += dbs[(size_t)tt * G4 + q * H + u0 + b]; \
        }                                                                              \
        for (s = rows ? -1 : S - 1; s >= 0; s--) {                                     \
            int n = (int)nsteps[s];                                                    \
            ptrdiff_t r = offsets[s];                                                  \
            T* dgs = FRBG_DG_STEP(s);   /* this step's dG rows */                      \
            if (L > 0) {                                                               \
                /* + the gradient of the output h_s */                                 \
                FRBG_PICK(frbg_dyadd, SUF, n, H, u0, L, dy + r * H, dh);                \
                if (lstm)                                                              \
                    frbg_lstm_bwdu_##SUF(0, n, H, u0, u1, gates + r * G4, cs + r * H,   \
                                         s ? cs + offsets[s - 1] * H : c0, dh, H, dc,  \
                                         dgs, NULL);                                   \
                else                                                                   \
                    FRBG_PICK(frbg_gru_bwdu, SUF, n, H, u0, u1, gates + r * GH,         \
                              cs + r * H, s ? y + offsets[s - 1] * ldy : h0,           \
                              s ? ldy : H, dh, dgs);                                   \
                /* own dG columns: into the bias sums and, packed, for the GEMMs */    \
                FRBG_PICK(frbg_packdgv, SUF, MR, n, L, nqt, N, r, dgs + u0, G4,        \
                          H, dbs + u0, ap);                                            \
            }                                                                          \
            frbg_barrier(bar, ntt);                                                    \
            if (L > 0)   /* GRU: dh already holds dh * z */                            \
                FRBG_GEMMX(SUF, n, L, GH, dgs, G4, whp + (size_t)p0 * GH * nb,         \
                           dh + u0, H, !lstm);                                         \
        }                                                                              \
        /* every dG row is written (the last barrier): weight gradients of own rows */ \
        if (L > 0) {                                                                   \
            frbg_wgemmp_##SUF(level, (KX / H) * nqt, nqt, L, H, I, (int)N, ap, xp,     \
                              dwih + (size_t)u0 * I, I);                               \
            if (!lstm)       /* GRU dW_in from the dn block */                         \
                frbg_wgemmp_##SUF(level, nqt, nqt, L, H, I, (int)N,                    \
                                  ap + (size_t)3 * nqt * N * MR, xp,                   \
                                  dwih + (size_t)(2 * H + u0) * I, I);                 \
            frbg_wgemmp_##SUF(level, G * nqt, nqt, L, H, H, (int)N, ap, hpk,           \
                              dwhh + (size_t)u0 * H, H);                               \
            for (q = 0; q < G; q++) {                                                  \
                memcpy(dbhh + q * H + u0, dbs + (size_t)q * H + u0, sizeof(T) * L);    \
                memcpy(dbih + q * H + u0, dbs + (size_t)(lstm || q < 2 ? q : 3) * H + u0, \
                       sizeof(T) * L);                                                 \
            }                                                                          \
        }                                                                              \
        if (dx) {                                                                      \
            ptrdiff_t R0 = N * t / ntt, R1 = N * (t + 1) / ntt;                        \
            if (R1 > R0) {                                                             \
                frbg_gemm_##SUF(level, (int)(R1 - R0), I, KX, dg + R0 * G4, G4, 1, wip, \
                                dx + R0 * I, I, 0, 0, npx);                            \
                if (!lstm)                                                             \
                    frbg_gemm_##SUF(level, (int)(R1 - R0), I, H, dg + R0 * G4 + 3 * H, \
                                    G4, 1, wipn, dx + R0 * I, I, 1, 0, npx);           \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
    frbg_scratch_put(1, buf);                                                          \
    return 0;                                                                          \
}
#if FRBG_X86
FRBG_LSTM_FWD(f, float, frbg_sigmoid_f, frbg_tanh_f)
FRBG_LSTM_FWD(d, double, frbg_sigmoid_d, frbg_tanh_d)
FRBG_BWDU(f, float)
FRBG_BWDU(d, double)
FRBG_GRU_FWD(f, float)
FRBG_GRU_FWD(d, double)
#else
static int frbg_lstm_fwd_f(int level, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const float* x, const float* wih,
        const float* whh, const float* bias, const float* h0, const float* c0, float* y,
        int ldy, float* gates, float* cs, float* pre, int pack_only) { return -1; }
static int frbg_lstm_fwd_d(int level, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const double* x, const double* wih,
        const double* whh, const double* bias, const double* h0, const double* c0,
        double* y, int ldy, double* gates, double* cs, double* pre, int pack_only) { return -1; }
static size_t frbg_lstm_fwd_packed_size(int level, int I, int H, int elsize) { return 1; }
static int frbg_lstm_fwd_layout(int nt, int B, int I, int H, int elsize) { return 0; }
static int frbg_gru_fwd_f(int level, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const float* x, const float* wih,
        const float* whh, const float* bias, const float* bhn, const float* h0, float* y,
        int ldy, float* gates, float* hn) { return -1; }
static int frbg_gru_fwd_d(int level, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const double* x, const double* wih,
        const double* whh, const double* bias, const double* bhn, const double* h0,
        double* y, int ldy, double* gates, double* hn) { return -1; }
static int frbg_bwd_units_f(int level, int cell, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const float* x, const float* wih,
        const float* whh, const float* h0, const float* c0, const float* y, int ldy,
        const float* gates, const float* cs, const float* dy, float* dh, float* dc,
        float* dx, float* dwih, float* dwhh, float* dbih, float* dbhh, float* dg) { return -1; }
static int frbg_bwd_units_d(int level, int cell, int nt, int S, const ptrdiff_t* offsets,
        const ptrdiff_t* nsteps, int I, int H, const double* x, const double* wih,
        const double* whh, const double* h0, const double* c0, const double* y, int ldy,
        const double* gates, const double* cs, const double* dy, double* dh, double* dc,
        double* dx, double* dwih, double* dwhh, double* dbih, double* dbhh, double* dg) { return -1; }
#endif

/* ------------------------------------------------ pipeline flags between threads */
#if defined(__GNUC__) || defined(__clang__)
static int fr_can_pipeline(void) { return getenv("FASTRNN_NO_PIPELINE") == NULL; }
static inline void fr_store(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fr_add(int* p, int v) { __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline int fr_load(int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int fr_claim(int* p) { return __atomic_exchange_n(p, 1, __ATOMIC_ACQ_REL) == 0; }
#if FRBG_X86
static inline void fr_pause(void) { __builtin_ia32_pause(); }
#else
static inline void fr_pause(void) { }
#endif
/* wait until *p > v: spin briefly, then yield the core (a busy machine must not have a
 * waiting worker steal the time of the thread it waits for) */
#include <sched.h>
static inline void fr_wait_gt(int* p, int v) {
    int spins = 0;
    while (fr_load(p) <= v) {
        if (++spins < 2000) fr_pause();
        else sched_yield();
    }
}
#else
static int fr_can_pipeline(void) { return 0; }
static inline void fr_wait_gt(int* p, int v) { while (*(volatile int*)p <= v) { } }
static inline void fr_store(int* p, int v) { *(volatile int*)p = v; }
static inline void fr_add(int* p, int v) { *(volatile int*)p += v; }
static inline int fr_load(int* p) { return *(volatile int*)p; }
static inline int fr_claim(int* p) { int v = *p; *p = 1; return v == 0; }
static inline void fr_pause(void) { }
#endif

#endif
