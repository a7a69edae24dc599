/* fastrnn C kernels: vectorised activations, packed small-batch recurrent kernels.
 *
 * Written with GCC vector extensions (64-byte vectors: 16 floats / 8 doubles).  On
 * x86-64 Linux with GCC the hot functions are compiled three times (AVX-512, AVX2+FMA,
 * baseline x86-64) and a dispatcher picks the best at run time, so
 * the binary runs on any x86-64 and is fast on the machine that runs it (no
 * instruction beyond the baseline runs unless the CPU reports it).
 *
 * The float and double kernels are the same source, included twice (fr_kern_t.h).
 *
 * Packed recurrent weights ("unit-block" layout): units are grouped in blocks of U (U =
 * vector width: 16 float / 8 double).  Block ``ub`` holds, for k in 0..K, the G gate
 * columns of its U units: ``Wp[ub][k][g][u]`` = ``W^T[k][g*H + ub*U + u]`` (zero for
 * padding units past H).  A thread owning a range of blocks reads one contiguous slice.
 */
#ifndef FR_KERN_H
#define FR_KERN_H

#include <stddef.h>
#include <string.h>
#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define FR_CAT_(a, b) a##b
#define FR_CAT(a, b) FR_CAT_(a, b)

/* Runtime ISA dispatch: each hot function is written once as an always-inline body and
 * compiled three times (AVX-512, AVX2+FMA, baseline) under GCC/Clang on x86-64; a
 * dispatcher picks the version once per call from __builtin_cpu_supports. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FR_NO_DISPATCH)
#define FR_HAVE_CLONES 1
#define FR_TGT_512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")))
#define FR_TGT_256 __attribute__((target("avx2,fma,f16c")))
static int fr_level_cache = -1;
static int fr_force_level = -1;   /* tests: force a lower ISA level (-1: automatic) */
static int fr_level(void) {
    if (fr_force_level >= 0 && fr_level_cache >= 0 && fr_force_level < fr_level_cache)
        return fr_force_level;
    if (fr_level_cache < 0) {
        int l = 0;
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
        if (l && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) l = 2;
        fr_level_cache = l;
    }
    if (fr_force_level >= 0 && fr_force_level < fr_level_cache) return fr_force_level;
    return fr_level_cache;
}
#define FR_MULTI(ret, name, impl, params, args)                                    \
    FR_TGT_512 static ret FR_CAT(name, _l2) params { return impl args; }            \
    FR_TGT_256 static ret FR_CAT(name, _l1) params { return impl args; }            \
    static ret FR_CAT(name, _l0) params { return impl args; }                       \
    static ret name params {                                                        \
        int l_ = fr_level();                                                        \
        if (l_ == 2) return FR_CAT(name, _l2) args;                                 \
        if (l_ == 1) return FR_CAT(name, _l1) args;                                 \
        return FR_CAT(name, _l0) args;                                              \
    }
#else
#define FR_HAVE_CLONES 0
static int fr_force_level = -1;
static int fr_level(void) { return 0; }
#define FR_MULTI(ret, name, impl, params, args) \
    static ret name params { return impl args; }
#endif

#define FR_INLINE static inline __attribute__((always_inline))

#ifndef FR_PREFETCH
#define FR_PREFETCH 32     /* vectors ahead in the single-row weight stream */
#endif

/* multiply-adds per step below which a layer runs on one thread (tests set 0) */
static long fr_min_par_work = 16384;

typedef float fr_vf __attribute__((vector_size(64), aligned(4), may_alias));
typedef int fr_vfi __attribute__((vector_size(64), aligned(4), may_alias));
typedef double fr_vd __attribute__((vector_size(64), aligned(8), may_alias));
typedef long long fr_vdi __attribute__((vector_size(64), aligned(8), may_alias));

/* activation codes (must match _kernels.pyx) */
enum { FR_SIGMOID = 0, FR_TANH, FR_RELU, FR_HARDSIGMOID, FR_LEAKYRELU, FR_AFFINE,
       FR_SCALEDTANH, FR_ELU, FR_SOFTSIGN, FR_SOFTPLUS, FR_THRESHOLDEDRELU, FR_LINEAR };

/* One direction of one layer, as the kernels see it. */
typedef struct {
    int cell;            /* 0 RNN, 1 LSTM, 2 GRU */
    int G, H, K;         /* gates, hidden units, recurrent input size (K == H: no proj) */
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

#define FR_T float
#define FR_V fr_vf
#define FR_VI fr_vfi
#define FR_IT int
#define FR_W 16
#define FR_SFX(name) name##_f
#include "fr_kern_t.h"
#undef FR_T
#undef FR_V
#undef FR_VI
#undef FR_IT
#undef FR_W
#undef FR_SFX

#define FR_DOUBLE 1
#define FR_T double
#define FR_V fr_vd
#define FR_VI fr_vdi
#define FR_IT long long
#define FR_W 8
#define FR_SFX(name) name##_d
#include "fr_kern_t.h"
#undef FR_T
#undef FR_V
#undef FR_VI
#undef FR_IT
#undef FR_W
#undef FR_SFX
#undef FR_DOUBLE

static int fr_have_clones(void) { return FR_HAVE_CLONES; }

static const char* fr_isa(void) {
    int l = fr_level();
    return l == 2 ? "avx512" : (l == 1 ? "avx2+fma" : "x86-64 baseline");
}

#endif
