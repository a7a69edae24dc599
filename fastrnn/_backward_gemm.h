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
#include <string.h>

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

static void* frbg_alloc(size_t bytes) {
    void* p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

/* Pack B (k x n) into panels of nb columns.  trans=0: B[kk][j] = W[kk*ldw + j];
 * trans=1: B[kk][j] = W[j*ldw + kk] (B = W^T).  Returns NULL when out of memory. */
#define FRBG_PACK(NAME, T)                                                             \
static T* NAME(const T* W, int ldw, int k, int n, int trans, int nb) {                 \
    int np = (n + nb - 1) / nb, p, kk, j;                                              \
    T* out = (T*)frbg_alloc(sizeof(T) * (size_t)np * k * nb);                          \
    if (!out) return NULL;                                                             \
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
}
FRBG_PACK(frbg_pack_f, float)
FRBG_PACK(frbg_pack_d, double)

/* Pack B (k x n + ones) whose row kk starts at rows[kk] (contiguous n values); with
 * ones, B gets an extra last column of ones (so that A @ B also yields A's row sums). */
#define FRBG_PACK_ROWS(NAME, T)                                                        \
static T* NAME(const T* const* rows, int k, int n, int nb, int ones) {                 \
    int nt = n + (ones ? 1 : 0);                                                       \
    int np = (nt + nb - 1) / nb, p, kk, j;                                             \
    T* out = (T*)frbg_alloc(sizeof(T) * (size_t)np * k * nb);                          \
    if (!out) return NULL;                                                             \
    for (kk = 0; kk < k; kk++) {                                                       \
        const T* src = rows[kk];                                                       \
        for (p = 0; p < np; p++) {                                                     \
            T* row = out + ((size_t)p * k + kk) * nb;                                  \
            int j0 = p * nb, w = n - j0 < nb ? n - j0 : nb;                            \
            if (w < 0) w = 0;                                                          \
            if (w > 0) memcpy(row, src + j0, sizeof(T) * w);                           \
            for (j = w; j < nb; j++) row[j] = (ones && j0 + j == n) ? (T)1 : (T)0;     \
        }                                                                              \
    }                                                                                  \
    return out;                                                                        \
}
FRBG_PACK_ROWS(frbg_pack_rows_f, float)
FRBG_PACK_ROWS(frbg_pack_rows_d, double)

#if FRBG_X86
/* micro-kernel: MR (compile-time constant after inlining) rows x 4 vectors */
#define FRBG_MICRO(NAME, T, VT, VTU, VL, ATTR)                                          \
ATTR static inline __attribute__((always_inline)) void                                \
NAME(const int mr, int k, const T* A, int lda, int aks, const T* P, T* C, int ldc,    \
     int w, int beta) {                                                                \
    VT acc[6][4];                                                                      \
    int r, v, kk, j;                                                                   \
    for (r = 0; r < mr; r++)                                                           \
        for (v = 0; v < 4; v++) acc[r][v] = (VT){0};                                   \
    for (kk = 0; kk < k; kk++) {                                                       \
        const VT* b = (const VT*)(P + (size_t)kk * 4 * VL);                            \
        VT b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];                                 \
        for (r = 0; r < mr; r++) {                                                     \
            VT a = (VT){0} + A[(size_t)r * lda + (size_t)kk * aks];                    \
            acc[r][0] += a * b0; acc[r][1] += a * b1;                                  \
            acc[r][2] += a * b2; acc[r][3] += a * b3;                                  \
        }                                                                              \
    }                                                                                  \
    if (w == 4 * VL) {                                                                 \
        for (r = 0; r < mr; r++) {                                                     \
            VTU* c = (VTU*)(C + (size_t)r * ldc);                                      \
            for (v = 0; v < 4; v++) c[v] = beta ? c[v] + acc[r][v] : acc[r][v];       \
        }                                                                              \
    } else {                                                                           \
        T tmp[4 * VL];                                                                 \
        for (r = 0; r < mr; r++) {                                                     \
            memcpy(tmp, acc[r], sizeof(tmp));                                          \
            T* c = C + (size_t)r * ldc;                                                \
            for (j = 0; j < w; j++) c[j] = beta ? c[j] + tmp[j] : tmp[j];              \
        }                                                                              \
    }                                                                                  \
}

/* C rows [0, m), panels [p0, p1); A (m x k) element (r, kk) at A[r*lda + kk*aks];
 * k is walked in blocks of KC so a block of a panel stays in L2 for large k. */
#define FRBG_KC 1024
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
            for (i = 0; i + MR <= m; i += MR)                                          \
                MICRO(MR, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); \
            switch (m - i) {                                                           \
            case 1: MICRO(1, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); break; \
            case 2: MICRO(2, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); break; \
            case 3: MICRO(3, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); break; \
            case 4: MICRO(4, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); break; \
            case 5: MICRO(5, kc, Ak + (size_t)i * lda, lda, aks, P, C + (size_t)i * ldc + j0, ldc, w, bt); break; \
            default: break;                                                            \
            }                                                                          \
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
static void frbg_gemm_f(int level, int m, int n, int k, const float* A, int lda, int aks,
                        const float* Bp, float* C, int ldc, int beta, int p0, int p1) {}
static void frbg_gemm_d(int level, int m, int n, int k, const double* A, int lda, int aks,
                        const double* Bp, double* C, int ldc, int beta, int p0, int p1) {}
#endif

/* ------------------------------------------------------------ vector sigmoid / tanh
 * out[i] = sigmoid(in[i]) / tanh(in[i]) over an array (in == out allowed).  float:
 * Cephes expf / tanhf (polynomials, ~2 ulp) in AVX-512 or AVX2 vectors, chosen at run
 * time; the tail and machines without either use libm.  double: libm (exact to ~1 ulp).
 */
#include <math.h>
#if FRBG_X86
#define FRBG_VACT(SUF, VF, VI, VL, ATTR)                                                 \
ATTR static inline __attribute__((always_inline)) VF frbg_vexp_##SUF(VF x) {           \
    VF hi = (VF){0} + 88.3762626647949f, lo = (VF){0} - 87.3365447504f;                \
    x = (VF)(((VI)(x > hi) & (VI)hi) | (~(VI)(x > hi) & (VI)x));                       \
    x = (VF)(((VI)(x < lo) & (VI)lo) | (~(VI)(x < lo) & (VI)x));                       \
    VF fx = x * 1.44269504088896341f + 0.5f;                                           \
    VI n = __builtin_convertvector(fx, VI);                                            \
    VF fn = __builtin_convertvector(n, VF);                                            \
    n = n - ((VI)(fn > fx) & 1);                 /* floor */                           \
    fn = __builtin_convertvector(n, VF);                                               \
    VF r = x - fn * 0.693359375f + fn * 2.12194440e-4f;                                \
    VF p = (VF){0} + 1.9875691500E-4f;                                                 \
    p = p * r + 1.3981999507E-3f;                                                      \
    p = p * r + 8.3334519073E-3f;                                                      \
    p = p * r + 4.1665795894E-2f;                                                      \
    p = p * r + 1.6666665459E-1f;                                                      \
    p = p * r + 5.0000001201E-1f;                                                      \
    p = p * r * r + r + 1.0f;                                                          \
    return p * (VF)((n + 127) << 23);                                                  \
}                                                                                      \
ATTR static void frbg_sigmoid_v##SUF(const float* in, float* out, int len) {          \
    int i = 0;                                                                         \
    for (; i + VL <= len; i += VL) {                                                   \
        VF x; memcpy(&x, in + i, sizeof(VF));                                          \
        VF y = 1.0f / (1.0f + frbg_vexp_##SUF(-x));                                    \
        memcpy(out + i, &y, sizeof(VF));                                               \
    }                                                                                  \
    for (; i < len; i++) out[i] = 1.0f / (1.0f + expf(-in[i]));                        \
}                                                                                      \
ATTR static void frbg_tanh_v##SUF(const float* in, float* out, int len) {             \
    int i = 0;                                                                         \
    for (; i + VL <= len; i += VL) {                                                   \
        VF x; memcpy(&x, in + i, sizeof(VF));                                          \
        VI sbit = (VI){0} + (int)0x80000000u;                                          \
        VI sign = (VI)x & sbit;                                                        \
        VF ax = (VF)((VI)x & ~sbit);                                                   \
        VF z = x * x;                                                                  \
        VF ps = (VF){0} - 5.70498872745E-3f;                                           \
        ps = ps * z + 2.06390887954E-2f;                                               \
        ps = ps * z - 5.37397155531E-2f;                                               \
        ps = ps * z + 1.33314422036E-1f;                                               \
        ps = ps * z - 3.33332819422E-1f;                                               \
        ps = ps * z * x + x;                                                           \
        VF e = frbg_vexp_##SUF(ax + ax);                                               \
        VF pl = 1.0f - 2.0f / (e + 1.0f);                                              \
        pl = (VF)((VI)pl | sign);                                                      \
        VI small = (VI)(ax < 0.625f);                                                  \
        VF y = (VF)((small & (VI)ps) | (~small & (VI)pl));                             \
        memcpy(out + i, &y, sizeof(VF));                                               \
    }                                                                                  \
    for (; i < len; i++) out[i] = tanhf(in[i]);                                        \
}
typedef int frbg_v16i __attribute__((vector_size(64)));
typedef int frbg_v8i __attribute__((vector_size(32)));
FRBG_VACT(512, frbg_v16f, frbg_v16i, 16, FRBG_A512)
FRBG_VACT(2, frbg_v8f, frbg_v8i, 8, FRBG_A2)
#endif

static void frbg_sigmoid_f(const float* in, float* out, int len) {
#if FRBG_X86
    int lv = frbg_level();
    if (lv == 2) { frbg_sigmoid_v512(in, out, len); return; }
    if (lv == 1) { frbg_sigmoid_v2(in, out, len); return; }
#endif
    for (int i = 0; i < len; i++) out[i] = 1.0f / (1.0f + expf(-in[i]));
}
static void frbg_tanh_f(const float* in, float* out, int len) {
#if FRBG_X86
    int lv = frbg_level();
    if (lv == 2) { frbg_tanh_v512(in, out, len); return; }
    if (lv == 1) { frbg_tanh_v2(in, out, len); return; }
#endif
    for (int i = 0; i < len; i++) out[i] = tanhf(in[i]);
}
static void frbg_sigmoid_d(const double* in, double* out, int len) {
    for (int i = 0; i < len; i++) out[i] = 1.0 / (1.0 + exp(-in[i]));
}
static void frbg_tanh_d(const double* in, double* out, int len) {
    for (int i = 0; i < len; i++) out[i] = tanh(in[i]);
}

/* ------------------------------------------------------ backward gate-gradient passes
 * Rows [r0, r1) of one step (see _backward.pyx for the formulas); restrict-qualified
 * loops the compiler vectorises, built for AVX-512, AVX2+FMA and the baseline. */
#define FRBG_BWD(SUF, T, TANH, ATTR)                                                    \
ATTR static void frbg_lstm_bwd_##SUF(int r0, int r1, int H, const T* gs, const T* cs,   \
        const T* cp, const T* src, int ldsrc, T* dc, T* dg, T* aux) {                  \
    for (int b = r0; b < r1; b++) {                                                    \
        const T* restrict g = gs + (size_t)b * 4 * H;                                  \
        const T* restrict cpb = cp + (size_t)b * H;                                    \
        const T* restrict sb = src + (size_t)b * ldsrc;                                \
        T* restrict dcb = dc + (size_t)b * H;                                          \
        T* restrict d = dg + (size_t)b * 4 * H;                                        \
        TANH(cs + (size_t)b * H, d + 3 * H, H);         /* tanh(c) in the o slot */   \
        for (int j = 0; j < H; j++) {                                                  \
            T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];             \
            T tc = d[3 * H + j], dh = sb[j];                                           \
            T dct = dcb[j] + dh * o * ((T)1 - tc * tc);                                \
            d[j] = dct * gg * i * ((T)1 - i);                                          \
            d[H + j] = dct * cpb[j] * f * ((T)1 - f);                                  \
            d[2 * H + j] = dct * i * ((T)1 - gg * gg);                                 \
            d[3 * H + j] = dh * tc * o * ((T)1 - o);                                   \
            dcb[j] = dct * f;                                                          \
        }                                                                              \
        if (aux) {                                                                     \
            T* restrict ab = aux + (size_t)b * H;                                      \
            TANH(cs + (size_t)b * H, ab, H);                                           \
            for (int j = 0; j < H; j++) ab[j] *= g[3 * H + j];                         \
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
        if (kind == 2) {            /* reset_after */                                  \
            const T* restrict hnb = hn + (size_t)b * H;                                \
            T* restrict dx = dnx + (size_t)b * H;                                      \
            for (int j = 0; j < H; j++) {                                              \
                T r = g[j], z = g[H + j], nn = g[2 * H + j], dhh = dhb[j];             \
                T dnp = dhh * ((T)1 - z) * ((T)1 - nn * nn);                           \
                d[j] = dnp * hnb[j] * r * ((T)1 - r);                                  \
                d[H + j] = dhh * (hb[j] - nn) * z * ((T)1 - z);                        \
                d[2 * H + j] = dnp * r;                                                \
                dx[j] = dnp;                                                           \
                dhb[j] = dhh * z;                                                      \
            }                                                                          \
        } else if (kind == 3) {     /* reset before: z, n */                           \
            for (int j = 0; j < H; j++) {                                              \
                T z = g[H + j], nn = g[2 * H + j], dhh = dhb[j];                       \
                d[H + j] = dhh * (hb[j] - nn) * z * ((T)1 - z);                        \
                d[2 * H + j] = dhh * ((T)1 - z) * ((T)1 - nn * nn);                    \
                dhb[j] = dhh * z;                                                      \
            }                                                                          \
        } else {                    /* reset before: r, through W_hn (r * h) */        \
            const T* restrict tb = tmp + (size_t)b * H;                                \
            T* restrict ab = aux + (size_t)b * H;                                      \
            for (int j = 0; j < H; j++) {                                              \
                T r = g[j], t = tb[j], hv = hb[j];                                     \
                d[j] = t * hv * r * ((T)1 - r);                                        \
                dhb[j] += t * r;                                                       \
                ab[j] = r * hv;                                                        \
            }                                                                          \
        }                                                                              \
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
static void frbg_lstm_bwd_f(int r0, int r1, int H, const float* gs, const float* cs,
        const float* cp, const float* src, int ldsrc, float* dc, float* dg, float* aux) {
    FRBG_PICK(frbg_lstm_bwd, f, r0, r1, H, gs, cs, cp, src, ldsrc, dc, dg, aux);
}
static void frbg_lstm_bwd_d(int r0, int r1, int H, const double* gs, const double* cs,
        const double* cp, const double* src, int ldsrc, double* dc, double* dg, double* aux) {
    FRBG_PICK(frbg_lstm_bwd, d, r0, r1, H, gs, cs, cp, src, ldsrc, dc, dg, aux);
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

/* ------------------------------------------------ pipeline flags between threads */
#if defined(__GNUC__) || defined(__clang__)
static int fr_can_pipeline(void) { return getenv("FASTRNN_NO_PIPELINE") == NULL; }
static inline void fr_store(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
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
static inline int fr_load(int* p) { return *(volatile int*)p; }
static inline int fr_claim(int* p) { int v = *p; *p = 1; return v == 0; }
static inline void fr_pause(void) { }
#endif

#endif
