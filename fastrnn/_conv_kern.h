/* fastrnn's 2-D convolution kernel (_conv.pyx): Conv + bias (a BatchNormalization
 * folded in by the caller) + activation + MaxPool in one OpenMP region.
 *
 * The input (N, C, H, W; any strides) is copied once channels last with its padding
 * (N, Hpi, Wpi, C), rows split between the threads (the copy skipped where the input
 * is already that); after one barrier the threads take work items in turn (an atomic
 * counter): an item is one image's band of output rows (pooled rows with a pool) and
 * a set of the weight panels.  Its pixels are cut into register tiles (_conv_t.h:
 * mr pixels x nv vectors of output channels, each pixel reading its own windows in
 * the padded input: no im2col copy), products land in the thread's band buffer, which
 * is then pooled (max over each window, NaN kept), biased and activated into the
 * output (N, Hq, Wq, M) channels last; without a pool each tile is biased, activated
 * and stored as it is done.  A non-decreasing activation and a bias commute with the
 * max (rounding is monotone), so pooling first gives the same numbers.  A 3x3 Conv of
 * stride and dilation 1 may run as Winograd F(2x2, 3x3) products instead (_conv_t.h's
 * frc_wino_item: the same register tiles over transformed inputs and weights).  The
 * input is read in place where it needs no padding and its pixels' channels are
 * contiguous (a caller passes another Conv's output with its zero border so); the
 * output's rows and images may lie apart, and a border of zeros around it is written
 * on request (yb).  Results do not depend on the thread count (the work is cut by
 * image, band of rows and panel of channels, never along a sum).
 *
 * The kernel is compiled for AVX-512, AVX2+FMA and plain x86-64 (GCC vector
 * extensions, target regions as fr_kern.h's) and the level is picked at run time;
 * the weights are packed for a level's panel width (frc_panel_vecs, frc_vbytes). */
#ifndef FASTRNN_CONV_KERN_H
#define FASTRNN_CONV_KERN_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define FRC_CAT_(a, b) a##b
#define FRC_CAT(a, b) FRC_CAT_(a, b)
#define FRC_INLINE static inline __attribute__((always_inline))
#define FRC_MRMAX 8          /* pixels of a register tile at most */
#define FRC_POOLMAX 64       /* taps of a fused pool window at most (_conv.pyx checks) */
#define FRC_WTILES 32        /* Winograd tiles transformed and multiplied at a time */

enum { FRC_NONE = 0, FRC_RELU = 1, FRC_LEAKY = 2, FRC_CLIP = 3 };
typedef struct { int kind, has_lo, has_hi; double alpha, lo, hi; } frc_act_t;
/* a weight panel: K rows of nv * VL values at off (elements) of the packed weights,
 * output channels [col0, col0 + w), of group `group`; boff: its first value in the
 * panels' padded bias (the panels' nv * VL before it); woff: its 16 positions' C rows
 * of nv * VL values in the Winograd weights */
typedef struct { ptrdiff_t off, woff; int nv, col0, w, group, boff; } frc_panel_t;
typedef struct {
    int N, C, H, W;                 /* input (N, C, H, W) */
    ptrdiff_t sN, sC, sH, sW;       /* its element strides */
    int pt, pl, Hpi, Wpi;           /* padding before (top, left); padded sizes */
    int KH, KW, sh, sw, dh, dw;     /* kernel, strides, dilations */
    int g, cg, M, Ho, Wo;           /* groups, channels a group, filters, conv output */
    int pool, pkh, pkw, psh, psw, Hq, Wq;   /* a MaxPool (pool = 0: none) */
    frc_act_t act;
    const frc_panel_t* panels;
    int npanels;
    ptrdiff_t ysN, ysH;             /* the output's image and row strides (elements) */
    int yb;                         /* a border of yb zeros around it, written here */
    int wino;                       /* 1: Winograd F(2x2, 3x3) (3x3, stride, dilation 1) */
    /* set by the driver */
    ptrdiff_t xsN, xsH;             /* the padded input's image and row strides */
    int Wu, ntap, L;
    const ptrdiff_t* toff;
} frc_plan_t;

/* ------------------------------------------------------------------ ISA levels */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FRC_NO_DISPATCH)
#define FRC_X86 1
#include "fr_cpu.h"
static int frc_hw_level(void) { return fr_cpu_level(); }
#else
#define FRC_X86 0
static int frc_hw_level(void) { return 0; }
#endif
static int frc_force = -1;      /* tests: a lower level (-1: the machine's) */
static int frc_level(void) {
    int l = frc_hw_level();
    return frc_force >= 0 && frc_force < l ? frc_force : l;
}
static int frc_vbytes(int level) { return level == 2 ? 64 : level == 1 ? 32 : 16; }
/* vectors of a full weight panel at a level */
static int frc_panel_vecs(int level) { return level == 2 ? 4 : 2; }

/* minimum multiply-adds for a second thread (smaller convs run on the caller alone) */
static long long frc_min_par = 1 << 18;
/* band sizing: a band's pixels at least this many (rows added until it is) */
static int frc_band_pix = 48;

#if FRC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,\
avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
#define FRC_VB 64
#define FRC_LSFX _l2
#define FRC_NVMAX 4
#define FRC_MR(nv) ((nv) >= 4 ? 6 : 8)
#include "_conv_lvl.h"
#undef FRC_VB
#undef FRC_LSFX
#undef FRC_NVMAX
#undef FRC_MR
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FRC_VB 32
#define FRC_LSFX _l1
#define FRC_NVMAX 2
#define FRC_MR(nv) ((nv) >= 2 ? 6 : 8)
#include "_conv_lvl.h"
#undef FRC_VB
#undef FRC_LSFX
#undef FRC_NVMAX
#undef FRC_MR
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#define FRC_VB 16
#define FRC_LSFX _l0
#define FRC_NVMAX 2
#define FRC_MR(nv) ((nv) >= 2 ? 6 : 8)
#include "_conv_lvl.h"
#undef FRC_VB
#undef FRC_LSFX
#undef FRC_NVMAX
#undef FRC_MR

/* ------------------------------------------------------------------ scratch */
/* One block kept between calls (a batch-16 call's padded copy is megabytes: fresh
 * pages each call cost page faults); a concurrent call takes its own.  Blocks over
 * 64 MiB are not kept. */
static void* frc_kept = NULL;
static void* frc_scratch_get(size_t bytes) {
    void* p = NULL;
#if defined(__GNUC__) || defined(__clang__)
    p = __atomic_exchange_n(&frc_kept, (void*)NULL, __ATOMIC_ACQ_REL);
#endif
    if (p && *(size_t*)p >= bytes) return (char*)p + 64;
    free(p);
    p = NULL;
    if (posix_memalign(&p, 64, bytes + 64) != 0) return NULL;
    *(size_t*)p = bytes;
    return (char*)p + 64;
}
static void frc_scratch_put(void* q) {
    void* p;
    if (!q) return;
    p = (char*)q - 64;
#if defined(__GNUC__) || defined(__clang__)
    if (*(size_t*)p <= ((size_t)64 << 20)) {
        void* expected = NULL;
        if (__atomic_compare_exchange_n(&frc_kept, &expected, p, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return;
    }
#endif
    free(p);
}
static size_t frc_scratch_release(void) {
    void* p = NULL;
    size_t n = 0;
#if defined(__GNUC__) || defined(__clang__)
    p = __atomic_exchange_n(&frc_kept, (void*)NULL, __ATOMIC_ACQ_REL);
#endif
    if (p) { n = *(size_t*)p + 64; free(p); }
    return n;
}

/* ------------------------------------------------------------------ driver */
#if FRC_X86
#define FRC_PICK(name, level) \
    ((level) == 2 ? name##_l2 : (level) == 1 ? name##_l1 : name##_l0)
#else
#define FRC_PICK(name, level) name##_l0
#endif
static size_t frc_up64(size_t b) { return (b + 63) & ~(size_t)63; }

/* The conv of P at level `level` (the weights' packing) on up to nthreads threads.
 * 0, or -1 when out of memory. */
#define FRC_DRIVER(SUF, T)                                                              \
static int frc_conv_##SUF(frc_plan_t* P, int level, const T* x, const T* wp,            \
                          const T* uw, const T* bias, T* y, int nthreads) {             \
    void (*item)(const frc_plan_t*, const T*, const T*, const T*, T*, T*, int, int,     \
                 int, int, int);                                                        \
    void (*pad)(const frc_plan_t*, const T*, T*, int, int);                             \
    void (*zero)(const frc_plan_t*, T*, int, int);                                      \
    const int VL = frc_vbytes(level) / (int)sizeof(T);                                  \
    int rows, rb, nb, nps, items, nt, copy, brows, nbgmax = 0, s, p;                    \
    ptrdiff_t toff_small[64];                                                           \
    ptrdiff_t* toff = toff_small;                                                       \
    size_t xbytes, bbytes, pbytes;                                                      \
    T* bpad = NULL;                                                                     \
    long long macs;                                                                     \
    char* scratch;                                                                      \
    T* xp;                                                                              \
    int next = 0;                                                                       \
    item = P->wino ? FRC_PICK(frc_wino_item_##SUF, level) : FRC_PICK(frc_item_##SUF, level); \
    if (P->wino) wp = uw;                                                               \
    pad = FRC_PICK(frc_pad_rows_##SUF, level);                                          \
    zero = FRC_PICK(frc_zero_border_##SUF, level);                                      \
    /* the input read in place where it has no padding and each pixel's channels are \
     * contiguous (rows and images any distance apart), else copied padded */           \
    copy = !(P->pt == 0 && P->pl == 0 && P->Hpi == P->H && P->Wpi == P->W               \
             && (P->sC == 1 || P->C == 1) && (P->sW == P->C || P->W == 1));             \
    P->xsN = copy ? (ptrdiff_t)P->Hpi * P->Wpi * P->C : P->sN;                          \
    P->xsH = copy ? (ptrdiff_t)P->Wpi * P->C : P->sH;                                   \
    /* taps' runs: a kernel row's taps are one run where they are adjacent */           \
    if (P->g == 1 && P->dw == 1) { P->ntap = P->KH; P->L = P->KW * P->C; }              \
    else { P->ntap = P->KH * P->KW; P->L = P->cg; }                                     \
    /* each group's runs: toff[group * ntap + run] */                                   \
    if ((long long)P->ntap * P->g > 64) {                                               \
        toff = (ptrdiff_t*)malloc(sizeof(ptrdiff_t) * (size_t)P->ntap * P->g);          \
        if (!toff) return -1;                                                           \
    }                                                                                   \
    for (s = 0; s < P->ntap * P->g; s++) {                                              \
        int t = s % P->ntap, grp = s / P->ntap;                                         \
        int kh = P->ntap == P->KH ? t : t / P->KW, kw = P->ntap == P->KH ? 0 : t % P->KW; \
        toff[s] = (ptrdiff_t)kh * P->dh * P->xsH + (ptrdiff_t)kw * P->dw * P->C         \
                  + (ptrdiff_t)grp * P->cg;                                             \
    }                                                                                   \
    P->toff = toff;                                                                     \
    if (P->pool) {                                                                      \
        rows = P->Hq;                                                                   \
        P->Wu = (P->Wq - 1) * P->psw + P->pkw;                                          \
    } else {                                                                            \
        rows = P->Ho;                                                                   \
        P->Wu = P->Wo;                                                                  \
    }                                                                                   \
    for (rb = 1; rb < rows; rb++) {                                                     \
        brows = P->pool ? (rb - 1) * P->psh + P->pkh : rb;                              \
        if ((long long)brows * P->Wu >= frc_band_pix) break;                            \
    }                                                                                   \
    if (P->wino && !P->pool && (rb & 1) && rb < rows) rb++;   /* (tiles of 2 rows) */   \
    brows = P->pool ? (rb - 1) * P->psh + P->pkh : rb;                                  \
    nb = (rows + rb - 1) / rb;                                                          \
    macs = (long long)P->N * P->Ho * P->Wo * P->M * P->cg * P->KH * P->KW;              \
    nt = nthreads < 1 ? 1 : nthreads;                                                   \
    if (macs < frc_min_par) nt = 1;                                                     \
    nps = 1;                                                                            \
    if ((long long)P->N * nb < 4LL * nt && P->npanels > 1) {                            \
        nps = (int)((4LL * nt + (long long)P->N * nb - 1) / ((long long)P->N * nb));     \
        if (nps > P->npanels) nps = P->npanels;                                         \
    }                                                                                   \
    for (s = 0; s < nps; s++) {                                                         \
        int w = 0;                                                                      \
        for (p = s * P->npanels / nps; p < (s + 1) * P->npanels / nps; p++)             \
            w += P->panels[p].nv * VL;                                                  \
        if (w > nbgmax) nbgmax = w;                                                     \
    }                                                                                   \
    items = P->N * nb * nps;                                                            \
    if (nt > items) nt = items;                                                         \
    xbytes = copy ? frc_up64(sizeof(T) * (size_t)P->N * P->Hpi * P->Wpi * P->C) : 0;    \
    bbytes = P->wino ? frc_up64(sizeof(T) * ((size_t)4 * ((brows + 1) / 2) * ((P->Wu + 1) / 2) \
                                  * nbgmax + (size_t)16 * FRC_WTILES                   \
                                  * ((P->C + VL - 1) / VL * VL + nbgmax)))             \
           : P->pool ? frc_up64(sizeof(T) * (size_t)brows * P->Wu * nbgmax) : 0;        \
    pbytes = bias ? frc_up64(sizeof(T) * (size_t)(P->panels[P->npanels - 1].boff       \
                             + P->panels[P->npanels - 1].nv * VL)) : 0;                 \
    scratch = (char*)frc_scratch_get(xbytes + pbytes + bbytes * (size_t)nt + 64);       \
    if (!scratch) { if (toff != toff_small) free(toff); return -1; }                    \
    xp = copy ? (T*)scratch : (T*)x;                                                    \
    if (bias) {     /* the bias in the panels' layout: each panel's nv * VL values */   \
        bpad = (T*)(scratch + xbytes);                                                  \
        for (p = 0; p < P->npanels; p++) {                                              \
            const frc_panel_t* pp = &P->panels[p];                                      \
            memcpy(bpad + pp->boff, bias + pp->col0, sizeof(T) * (size_t)pp->w);        \
            memset(bpad + pp->boff + pp->w, 0, sizeof(T) * (size_t)(pp->nv * VL - pp->w)); \
        }                                                                               \
    }                                                                                   \
    FRC_PARALLEL(nt)                                                                    \
    {                                                                                   \
        int tid = FRC_TID(), ntr = FRC_NTHREADS(), it;                                  \
        T* buf = (T*)(scratch + xbytes + pbytes + bbytes * (size_t)tid);                \
        if (P->yb) {                                                                    \
            int nr = P->N * P->Hq;                                                      \
            zero(P, y, (int)((long long)nr * tid / ntr), (int)((long long)nr * (tid + 1) / ntr)); \
        }                                                                               \
        if (copy) {                                                                     \
            int nr = P->N * P->Hpi;                                                     \
            pad(P, x, xp, (int)((long long)nr * tid / ntr),                             \
                (int)((long long)nr * (tid + 1) / ntr));                                \
            FRC_BARRIER();                                                              \
        }                                                                               \
        for (;;) {                                                                      \
            int n, b, ps, q0, q1;                                                       \
            it = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);                        \
            if (it >= items) break;                                                     \
            ps = it % nps;                                                              \
            b = (it / nps) % nb;                                                        \
            n = it / nps / nb;                                                          \
            q0 = b * rb;                                                                \
            q1 = q0 + rb < rows ? q0 + rb : rows;                                       \
            item(P, xp, wp, bpad, y, buf, n, q0, q1, ps * P->npanels / nps,             \
                 (ps + 1) * P->npanels / nps);                                          \
        }                                                                               \
    }                                                                                   \
    frc_scratch_put(scratch);                                                           \
    if (toff != toff_small) free(toff);                                                 \
    P->toff = NULL;                                                                     \
    return 0;                                                                           \
}

#ifdef _OPENMP
#define FRC_PRAGMA(x) _Pragma(#x)
#define FRC_PARALLEL(nt) FRC_PRAGMA(omp parallel num_threads(nt) if (nt > 1))
#define FRC_TID() omp_get_thread_num()
#define FRC_NTHREADS() omp_get_num_threads()
#define FRC_BARRIER() FRC_PRAGMA(omp barrier)
#else
#define FRC_PARALLEL(nt)
#define FRC_TID() 0
#define FRC_NTHREADS() 1
#define FRC_BARRIER()
#endif

FRC_DRIVER(f, float)
FRC_DRIVER(d, double)

#endif
