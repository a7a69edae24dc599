/* Type- and ISA-generic part of fr_kern.h: included (by fr_kern_lvl.h) once per ISA level
 * with FR_T = float and once with double.  Macros in scope: FR_T (scalar), FR_V (the
 * level's native vector), FR_VI (same-width integer vector), FR_IT (its element), FR_W
 * (lanes = units per packed block), FR_SEQ (sequence descriptor type), FR_NREG (vector
 * registers of the level), FR_SFX(name) (type and level suffix); FR_DOUBLE for double.
 * It undefines them all at its end. */

#define V FR_V
#define VI FR_VI
#define T FR_T
#define W FR_W
#define F(name) FR_SFX(name)

/* ------------------------------------------------------------------ vector helpers */
FR_INLINE V F(vld)(const T* p) { return *(const V*)p; }
FR_INLINE void F(vst)(T* p, V v) { *(V*)p = v; }
/* first n (< W) lanes from p, the rest zero */
FR_INLINE V F(vldn)(const T* p, int n) {
    T tmp[W];
    int i;
    for (i = 0; i < W; i++) tmp[i] = 0;
    for (i = 0; i < n; i++) tmp[i] = p[i];
    return *(const V*)tmp;
}
FR_INLINE void F(vstn)(T* p, V v, int n) {
    T tmp[W];
    int i;
    *(V*)tmp = v;
    for (i = 0; i < n; i++) p[i] = tmp[i];
}
FR_INLINE V F(vload)(const T* p, int n) { return n == W ? F(vld)(p) : F(vldn)(p, n); }
FR_INLINE void F(vstore)(T* p, V v, int n) { if (n == W) F(vst)(p, v); else F(vstn)(p, v, n); }
#include "fr_act_t.h"   /* vset1, vsel, vmin, vmax, vexp, vtanh, vsigmoid */

/* scalar activations of the generic (ONNX options) path: libm */
FR_INLINE T F(sexp)(T x) {
#ifndef FR_DOUBLE
    return expf(x);
#else
    return exp(x);
#endif
}
FR_INLINE T F(stanh)(T x) {
#ifndef FR_DOUBLE
    return tanhf(x);
#else
    return tanh(x);
#endif
}
FR_INLINE T F(sact)(int code, T a, T b, T x) {
    T y;
    switch (code) {
    case FR_SIGMOID: return 1 / (1 + F(sexp)(-x));
    case FR_TANH: return F(stanh)(x);
    case FR_RELU: return x > 0 ? x : 0;
    case FR_HARDSIGMOID: y = a * x + b; return y < 0 ? 0 : (y > 1 ? 1 : y);
    case FR_LEAKYRELU: return x >= 0 ? x : a * x;
    case FR_AFFINE: return a * x + b;
    case FR_SCALEDTANH: return a * F(stanh)(b * x);
    case FR_ELU: return x >= 0 ? x : a * (F(sexp)(x) - 1);
    case FR_SOFTSIGN: return x / (1 + (x < 0 ? -x : x));
    case FR_SOFTPLUS:
#ifndef FR_DOUBLE
        return x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x));
#else
        return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
#endif
    case FR_THRESHOLDEDRELU: return x > a ? x : 0;
    default: return x;
    }
}
FR_INLINE T F(sclip)(T x, T c) { return x > c ? c : (x < -c ? -c : x); }

/* the activation code (alpha a, beta b) on a vector: sact's formulas, softplus (no
 * vector log here) lane by lane */
FR_INLINE V F(vact)(int code, T a, T b, V x) {
    const V zero = F(vset1)(0);
    switch (code) {
    case FR_SIGMOID: return F(vsigmoid)(x);
    case FR_TANH: return F(vtanh)(x);
    case FR_RELU: return F(vmax)(x, zero);
    case FR_HARDSIGMOID: return F(vmin)(F(vmax)(a * x + b, zero), F(vset1)(1));
    case FR_LEAKYRELU: return F(vsel)(x >= zero, x, a * x);
    case FR_AFFINE: return a * x + b;
    case FR_SCALEDTANH: return a * F(vtanh)(b * x);
    case FR_ELU: return F(vsel)(x >= zero, x, a * (F(vexp)(x) - 1));
    case FR_SOFTSIGN: return x / (1 + F(vmax)(x, -x));
    case FR_THRESHOLDEDRELU: return F(vsel)(x > F(vset1)(a), x, zero);
    case FR_SOFTPLUS: {
        T t[W];
        int j;
        *(V*)t = x;
        for (j = 0; j < W; j++) t[j] = F(sact)(code, a, b, t[j]);
        return *(V*)t;
    }
    default: return x;
    }
}

/* The default-activation cell updates on whole vectors, shared by the packed and the
 * batch-lane kernel: LSTM c' = sig(f) c + sig(i) tanh(g), h' = sig(o) tanh(c'); GRU
 * (reset_after) h' = n + z (h - n) with n = tanh(nx + r nh); SimpleRNN tanh or relu. */
FR_INLINE V F(lstm_fast)(V pi, V pf, V pg, V po, V cp, V* cn) {
    const V ct = F(vsigmoid)(pf) * cp + F(vsigmoid)(pi) * F(vtanh)(pg);
    *cn = ct;
    return F(vsigmoid)(po) * F(vtanh)(ct);
}
FR_INLINE V F(gru_fast)(V pr, V pz, V nx, V nh, V hp) {
    const V r = F(vsigmoid)(pr), z = F(vsigmoid)(pz);
    const V n = F(vtanh)(nx + r * nh);
    return n + z * (hp - n);
}
FR_INLINE V F(rnn_fast)(int relu, V v) { return relu ? F(vmax)(v, F(vset1)(0)) : F(vtanh)(v); }

/* The same cells with the cell's activations (f, g, h: ONNX codes) and ONNX's options:
 * pre-activations clipped to [-clip, clip] (clip > 0), LSTM peepholes (pe_i, pe_f on
 * the previous c, pe_o on the new one; peep 0: none) and input_forget (f = 1 - i);
 * ONNX's order of operations. */
FR_INLINE V F(vclip)(V v, T clip) {
    if (clip > 0) return F(vmin)(F(vmax)(v, F(vset1)(-clip)), F(vset1)(clip));
    return v;
}
#define FR_ACT_F(cl, x) F(vact)((cl)->f, (T)(cl)->fa, (T)(cl)->fb, (x))
#define FR_ACT_G(cl, x) F(vact)((cl)->g, (T)(cl)->ga, (T)(cl)->gb, (x))
FR_INLINE V F(lstm_opt)(const fr_cell* cl, V pi, V pf, V pg, V po, V cp, V* cn, int peep,
                        V pe_i, V pe_f, V pe_o) {
    const T clip = (T)cl->clip;
    V gi, gf, ct;
    if (peep) {
        pi += pe_i * cp;
        pf += pe_f * cp;
    }
    gi = FR_ACT_F(cl, F(vclip)(pi, clip));
    if (cl->input_forget) gf = F(vset1)(1) - gi;
    else gf = FR_ACT_F(cl, F(vclip)(pf, clip));
    ct = gf * cp + gi * FR_ACT_G(cl, F(vclip)(pg, clip));
    if (peep) po += pe_o * ct;
    *cn = ct;
    return FR_ACT_F(cl, F(vclip)(po, clip)) * F(vact)(cl->h, (T)cl->ha, (T)cl->hb, ct);
}
FR_INLINE V F(gru_opt)(const fr_cell* cl, V pr, V pz, V nx, V nh, V hp) {
    const T clip = (T)cl->clip;
    const V r = FR_ACT_F(cl, F(vclip)(pr, clip)), z = FR_ACT_F(cl, F(vclip)(pz, clip));
    const V n = FR_ACT_G(cl, F(vclip)(nx + r * nh, clip));
    return (F(vset1)(1) - z) * n + z * hp;
}

/* ------------------------------------------------------------- fused gate math, one block
 * pre[g] holds the recurrent product of gate g for units u0..u0+nu of one row; xr the
 * row's projected input (G*H, gate-major); hprev the row's previous h (H); c the row's
 * cell state (H, updated); hout receives h' (nu values at hout[0..nu)). */
FR_INLINE void F(gate_block)(const fr_cell* cl, int u0, int nu, const V* pre, const T* xr,
                             const T* hprev, T* c, T* hout, const T* zr) {
    const int H = cl->H;
    const T* bias = (const T*)cl->bias;
    if (cl->rz_split) {
        /* GRU reset_after=False, second half: pre[0] = W_hn (r*h); z from the first half */
        V z = F(vload)(zr + u0, nu);
        V pn = pre[0] + F(vload)(xr + 2 * H + u0, nu) + F(vload)(bias + 2 * H + u0, nu);
        V hp = F(vload)(hprev + u0, nu);
        const V n = FR_ACT_G(cl, F(vclip)(pn, (T)cl->clip));
        /* ONNX's order ((1 - z) n + z h, as gru_opt): n + z (h - n) loses h where
         * z is 1 and |n| >> |h| (a relu or linear candidate) */
        F(vstore)(hout, (F(vset1)(1) - z) * n + z * hp, nu);
        return;
    }
    /* per cell: the pre-activations (recurrent product + projected input + bias, in
     * that order, as the deferred gate math sums them), then the default activations
     * (fast) or the cell's activations with clip, peepholes, input_forget */
    if (cl->cell == 1) {
        const V pi = pre[0] + F(vload)(xr + u0, nu) + F(vload)(bias + u0, nu);
        const V pf = pre[1] + F(vload)(xr + H + u0, nu) + F(vload)(bias + H + u0, nu);
        const V pg = pre[2] + F(vload)(xr + 2 * H + u0, nu) + F(vload)(bias + 2 * H + u0, nu);
        const V po = pre[3] + F(vload)(xr + 3 * H + u0, nu) + F(vload)(bias + 3 * H + u0, nu);
        const V cp = F(vload)(c + u0, nu);
        V ct, hv;
        if (cl->fast) {
            hv = F(lstm_fast)(pi, pf, pg, po, cp, &ct);
        } else {
            const T* peep = (const T*)cl->peep;
            V pe[3];
            int g;
            for (g = 0; g < 3; g++)
                pe[g] = peep ? F(vload)(peep + g * H + u0, nu) : F(vset1)(0);
            hv = F(lstm_opt)(cl, pi, pf, pg, po, cp, &ct, peep != NULL, pe[0], pe[1], pe[2]);
        }
        F(vstore)(c + u0, ct, nu);
        F(vstore)(hout, hv, nu);
    } else if (cl->cell == 2) {
        const V pr = pre[0] + F(vload)(xr + u0, nu) + F(vload)(bias + u0, nu);
        const V pz = pre[1] + F(vload)(xr + H + u0, nu) + F(vload)(bias + H + u0, nu);
        const V nx = F(vload)(xr + 2 * H + u0, nu) + F(vload)(bias + 2 * H + u0, nu);
        const V nh = pre[2] + F(vload)((const T*)cl->bhn + u0, nu);
        const V hp = F(vload)(hprev + u0, nu);
        if (cl->fast) F(vstore)(hout, F(gru_fast)(pr, pz, nx, nh, hp), nu);
        else F(vstore)(hout, F(gru_opt)(cl, pr, pz, nx, nh, hp), nu);
    } else {
        const V v = pre[0] + F(vload)(xr + u0, nu) + F(vload)(bias + u0, nu);
        if (cl->fast) F(vstore)(hout, F(rnn_fast)(cl->rnn_relu, v), nu);
        else F(vstore)(hout, FR_ACT_F(cl, F(vclip)(v, (T)cl->clip)), nu);
    }
}

/* Software prefetch of the weight stream in the one- and two-row matvec loops: AVX-512
 * only (one prefetch per 64-byte line there; measured ~10% at B=1 on a Zen 5), and there
 * only where fr_swpf_on says (AMD; on an Intel Xeon, weights aligned, B=1 ran 0.88-0.93x
 * the time without them: LSTM H=256 / 512, GRU and SimpleRNN H=256, one step).  With
 * 32- or 16-byte vectors it is two or four prefetches per line, and on an AVX2 EPYC
 * (Zen 4, AVX-512 hidden) B=1 ran faster without them: LSTM / GRU / SimpleRNN H=256 and
 * LSTM H=512 medians 0.82-1.05x (10 of 12 below 1) at level 1, 0.79-0.99x at level 0
 * (bench/ab_builds.py, alternating processes, three runs, both orders). */
#if FR_VBYTES >= 64
#define FR_SWPF(p) __builtin_prefetch(p)
#define FR_SWPF_ON fr_swpf_on
#else
#define FR_SWPF(p) ((void)(p))
#define FR_SWPF_ON 0
#endif
/* rows per register block of the packed matvec for G gates: RB * G accumulators (plus
 * a broadcast and a weight) must fit the level's vector registers */
#define FR_RB(G) (FR_NREG >= 32 || (G) < 4 ? 4 : 3)
/* rows per register block of the input projection (one pass over a block's input
 * weights serves that many rows): with 32 registers LSTM 6 (24 accumulators), GRU 5
 * (15) and SimpleRNN 8, else FR_RB.  Intel Xeon, bench/ab_builds.py both orders: GRU
 * B=1-4 H=256 0.91-0.99x the time, SimpleRNN B=1-4 0.96-0.98x; LSTM 6 (once mv zeroed
 * only the accumulators it uses: before, the unused ones were cleared in memory, rep
 * stos, 10% of the projection's samples, and LSTM 5 / 6 measured slower) B=1 H=512
 * 0.95-0.97x, B=4 H=256 0.91-0.96x, B=1 H=256 0.96-1.03x; a single-core C
 * microbenchmark of the loop (weights from L2) gave 6 rows 1.12-1.34x the GFLOP/s of 4 */
#define FR_RBP(G) (FR_NREG < 32 ? FR_RB(G) : (G) == 4 ? 6 : (G) == 3 ? 5 : (G) == 1 ? 8 : FR_RB(G))

/* ------------------------------------------------------------------ packed matvec
 * acc[r*G + g] = sum_k rows[r][k] * Wb[k][g][0..W)  for r < RB (RB, G compile-time).
 * Small blocks keep two or four k-steps in flight (independent FMA chains at one row). */
FR_INLINE void F(mv)(const int RB, const int G, const T* const* rows, int K, const T* Wb,
                     V* acc) {
    /* a2 (two k-steps in flight) below 8 accumulators, a3 and a4 (four) below 3 */
    V a[24], a2[8], a3[2], a4[2];
    int r, g, k = 0;
    for (r = 0; r < RB * G; r++) a[r] = F(vset1)(0);
    if (RB * G < 8)
        for (r = 0; r < RB * G; r++) a2[r] = F(vset1)(0);
    if (RB * G < 3)
        for (r = 0; r < RB * G; r++) { a3[r] = F(vset1)(0); a4[r] = F(vset1)(0); }
    /* the k loops twice: with the weight prefetch and without (FR_SWPF_ON) */
#define FR_MV_K4(PF)                                                                      \
        for (; k + 3 < K; k += 4) {                                                       \
            const T* w0 = Wb + (size_t)k * G * W;                                         \
            if (PF)                                                                       \
                for (g = 0; g < 4 * G; g++)                                               \
                    FR_SWPF(w0 + FR_PREFETCH / (int)sizeof(T) + g * W);                   \
            for (r = 0; r < RB; r++) {                                                    \
                const T h0 = rows[r][k], h1 = rows[r][k + 1];                             \
                const T h2 = rows[r][k + 2], h3 = rows[r][k + 3];                         \
                for (g = 0; g < G; g++) {                                                 \
                    a[r * G + g] += h0 * F(vld)(w0 + g * W);                              \
                    a2[r * G + g] += h1 * F(vld)(w0 + (G + g) * W);                       \
                    a3[r * G + g] += h2 * F(vld)(w0 + (2 * G + g) * W);                   \
                    a4[r * G + g] += h3 * F(vld)(w0 + (3 * G + g) * W);                   \
                }                                                                         \
            }                                                                             \
        }
#define FR_MV_K2(PF)                                                                      \
        for (; k + 1 < K; k += 2) {                                                       \
            const T* w0 = Wb + (size_t)k * G * W;                                         \
            const T* w1 = w0 + G * W;                                                     \
            if (PF)                                                                       \
                for (g = 0; g < 2 * G; g++)                                               \
                    FR_SWPF(w0 + FR_PREFETCH / (int)sizeof(T) + g * W);                   \
            for (r = 0; r < RB; r++) {                                                    \
                T h0 = rows[r][k], h1 = rows[r][k + 1];                                   \
                for (g = 0; g < G; g++) {                                                 \
                    a[r * G + g] += h0 * F(vld)(w0 + g * W);                              \
                    a2[r * G + g] += h1 * F(vld)(w1 + g * W);                             \
                }                                                                         \
            }                                                                             \
        }
    if (RB * G < 3) {
        /* four k-steps in flight: one or two gates at one row (SimpleRNN, GRU r/z) */
        if (FR_SWPF_ON) { FR_MV_K4(1) } else { FR_MV_K4(0) }
    }
    if (RB * G < 8) {
        /* two k-steps in flight: enough independent FMA chains at one row */
        if (FR_SWPF_ON) { FR_MV_K2(1) } else { FR_MV_K2(0) }
    }
#undef FR_MV_K4
#undef FR_MV_K2
#if FR_NREG >= 32   /* AVX-512 only: the AVX2 build unrolled ran LSTM B=1 1.02-1.09x */
#pragma GCC unroll 2
#endif
    for (; k < K; k++) {
        const T* w0 = Wb + (size_t)k * G * W;
        for (r = 0; r < RB; r++) {
            T h0 = rows[r][k];
            for (g = 0; g < G; g++) a[r * G + g] += h0 * F(vld)(w0 + g * W);
        }
    }
    for (r = 0; r < RB * G; r++) {
        if (RB * G < 3) acc[r] = (a[r] + a2[r]) + (a3[r] + a4[r]);
        else if (RB * G < 8) acc[r] = a[r] + a2[r];
        else acc[r] = a[r];
    }
}

FR_INLINE void F(mv_any)(int rb, int G, const T* const* rows, int K, const T* Wb, V* acc) {
#define FR_MVCASE(R, GG) case (R) * 8 + (GG): F(mv)(R, GG, rows, K, Wb, acc); break;
    switch (rb * 8 + G) {
        FR_MVCASE(1, 1) FR_MVCASE(2, 1) FR_MVCASE(3, 1) FR_MVCASE(4, 1)
        FR_MVCASE(1, 2) FR_MVCASE(2, 2) FR_MVCASE(3, 2) FR_MVCASE(4, 2)
        FR_MVCASE(1, 3) FR_MVCASE(2, 3) FR_MVCASE(3, 3) FR_MVCASE(4, 3)
        FR_MVCASE(1, 4) FR_MVCASE(2, 4) FR_MVCASE(3, 4) FR_MVCASE(4, 4)
    default: break;
    }
#undef FR_MVCASE
}

/* register blocks of rows in a batch of B (G gates) */
FR_INLINE int F(nrb)(int B, int G) { return (B + FR_RB(G) - 1) / FR_RB(G); }

/* the product over k in [k0, k1) only (rows and weights offset to k0) */
FR_INLINE void F(mv_range)(int rb, int G, const T* const* rows, int k0, int k1,
                           const T* Wb, V* acc) {
    const T* rr[4];
    int r;
    for (r = 0; r < rb; r++) rr[r] = rows[r] + k0;
    F(mv_any)(rb, G, rr, k1 - k0, Wb + (size_t)k0 * G * W, acc);
}

/* The halves form of the recurrent product (the overlapped unit split's, fr_small_layer):
 * acc = P[0, hm) + P[hm, K), P the product over those units of h, whatever the threads.
 * part (the overlap, 2 threads: the thread's own half, done before the wait; own_lo: it
 * is [0, hm)): acc = part + the other half (IEEE addition commutes: the same bits).
 * Out of line: inlined, its two more copies of every matvec shape in step_impl made the
 * barrier path's SimpleRNN B=1 1.07-1.09x slower (bench/ab_builds.py). */
static __attribute__((noinline)) void F(mv_halves)(int rb, int G, const T* const* rows,
                                                   int K, int hm, const V* part,
                                                   int own_lo, const T* Wb, V* acc) {
    V lo[16];
    int r;
    if (part) {
        F(mv_range)(rb, G, rows, own_lo ? hm : 0, own_lo ? K : hm, Wb, acc);
        for (r = 0; r < rb * G; r++) acc[r] = part[r] + acc[r];
    } else {
        F(mv_range)(rb, G, rows, 0, hm, Wb, lo);
        F(mv_range)(rb, G, rows, hm, K, Wb, acc);
        for (r = 0; r < rb * G; r++) acc[r] = lo[r] + acc[r];
    }
}

/* ------------------------------------------------------------------ small-batch layer */
FR_INLINE int F(in_time)(const FR_SEQ* q, int s, int b) {
    if (q->reverse && q->varlen) return (int)q->lens[b] - 1 - s;
    if (q->reverse) return q->nT - 1 - s;
    return s;
}

/* a projection block of nr <= FR_RBP(G) rows */
FR_INLINE void F(mv_proj)(int nr, int G, const T* const* rows, int K, const T* Wb, V* acc) {
    if (FR_RBP(4) == 6 && nr == 6 && G == 4) F(mv)(6, 4, rows, K, Wb, acc);
    else if (FR_RBP(3) == 5 && nr == 5 && G == 3) F(mv)(5, 3, rows, K, Wb, acc);
    else if (FR_RBP(1) == 8 && nr == 8 && G == 1) F(mv)(8, 1, rows, K, Wb, acc);
    else if (nr > 4) {
        F(mv_any)(4, G, rows, K, Wb, acc);
        F(mv_any)(nr - 4, G, rows + 4, K, Wb, acc + 4 * G);
    } else F(mv_any)(nr, G, rows, K, Wb, acc);
}

/* input projection of steps [s0, s1) for unit blocks [ub0, ub1) (no bias) */
FR_INLINE void F(proj_impl)(const fr_cell* cl, const FR_SEQ* q, int s0, int s1, int ub0,
                            int ub1, int rlo, int rhi) {
    const int G = cl->G, H = cl->H, U = W, I = q->I, B = q->B;
    const T* rows[8];
    int slot[8];
    V acc[24];
    int ub, s, b, r, g, nr;
    for (ub = ub0; ub < ub1; ub++) {
        const int u0 = ub * U;
        const int nu = H - u0 < U ? H - u0 : U;
        const T* Wb = q->wxp + (size_t)ub * I * G * U;
        nr = 0;
        for (s = s0; s < s1; s++) {
            const int n = (int)q->nsteps[s] < rhi ? (int)q->nsteps[s] : rhi;
            for (b = rlo; b < n; b++) {
                const int t = F(in_time)(q, s, b);
                rows[nr] = q->x + (q->offsets[t] + b) * q->x_ld;
                slot[nr] = (s - s0) * B + b;
                nr++;
                if (nr == FR_RBP(G)) {
                    F(mv_proj)(nr, G, rows, I, Wb, acc);
                    for (r = 0; r < nr; r++) {
                        T* dst = q->xp + (size_t)slot[r] * G * H + u0;
                        for (g = 0; g < G; g++) F(vstore)(dst + (size_t)g * H, acc[r * G + g], nu);
                    }
                    nr = 0;
                }
            }
        }
        if (nr) {
            F(mv_proj)(nr, G, rows, I, Wb, acc);
            for (r = 0; r < nr; r++) {
                T* dst = q->xp + (size_t)slot[r] * G * H + u0;
                for (g = 0; g < G; g++) F(vstore)(dst + (size_t)g * H, acc[r * G + g], nu);
            }
        }
    }
}
FR_FN(void, F(proj), F(proj_impl), (const fr_cell* cl, const FR_SEQ* q, int s0, int s1, int ub0, int ub1, int rlo, int rhi),
         (cl, q, s0, s1, ub0, ub1, rlo, rhi))

/* GRU reset_after=False, first half of step s: r, z of rows [rlo, n) for unit blocks
 * [ub0, ub1); writes rh = r * h and zb = z */
FR_INLINE void F(rz_impl)(const fr_cell* cl, const FR_SEQ* q, int s, int s0, int cur,
                          int ub0, int ub1, int rlo, int rhi) {
    const int H = cl->H, U = W, K = cl->K, B = q->B, G = cl->G;
    const int n = (int)q->nsteps[s] < rhi ? (int)q->nsteps[s] : rhi;
    const T* hc = q->hbuf + (size_t)cur * B * H;
    const T* bias = (const T*)cl->bias;
    const T* rows[4];
    V acc[16];
    int ub, r0, r, rb;
    for (ub = ub0; ub < ub1; ub++) {
        const int u0 = ub * U;
        const int nu = H - u0 < U ? H - u0 : U;
        const T* Wb = (const T*)cl->wp + (size_t)ub * K * 2 * U;
        for (r0 = rlo; r0 < n; r0 += FR_RB(2)) {
            rb = n - r0 < FR_RB(2) ? n - r0 : FR_RB(2);
            for (r = 0; r < rb; r++) rows[r] = hc + (size_t)(r0 + r) * H;
            F(mv_any)(rb, 2, rows, K, Wb, acc);
            for (r = 0; r < rb; r++) {
                const int b = r0 + r;
                const T* xr = q->xp + (size_t)((s - s0) * B + b) * G * H;
                const T clip = (T)cl->clip;
                const V rv = FR_ACT_F(cl, F(vclip)(acc[2 * r] + F(vload)(xr + u0, nu)
                                                   + F(vload)(bias + u0, nu), clip));
                const V zv = FR_ACT_F(cl, F(vclip)(acc[2 * r + 1] + F(vload)(xr + H + u0, nu)
                                                   + F(vload)(bias + H + u0, nu), clip));
                F(vstore)(q->rh + (size_t)b * H + u0, rv * F(vload)(hc + (size_t)b * H + u0, nu), nu);
                F(vstore)(q->zb + (size_t)b * H + u0, zv, nu);
            }
        }
    }
}
FR_FN(void, F(rz), F(rz_impl), (const fr_cell* cl, const FR_SEQ* q, int s, int s0, int cur, int ub0, int ub1, int rlo, int rhi),
         (cl, q, s, s0, cur, ub0, ub1, rlo, rhi))

/* Deferred gate math (default activations, no mask; LSTM and GRU reset_after).
 * gate_block runs one vector chain per (row, unit block): sigmoid, tanh and their
 * divisions wait on each other, and the next block's product comes before the
 * out-of-order window reaches the next chain.  Instead a step collects up to FR_DG_SLOTS
 * (row, block) pairs (pre-activations with the projection and bias added) and runs each
 * activation over all of them in one loop, so independent vectors are in flight; then
 * it stores c, h and the output.  Same arithmetic as lstm_fast / gru_fast.
 * Only where one thread runs all of a step's unit blocks (q->team 1: one thread, the row
 * split, the pair): in the unit split each block's gate math right after its product
 * overlaps the next block's product from L2, which measured faster (Intel Xeon, 2
 * threads, bench/ab_builds.py: GRU B=2-4 H=64-256 0.81-0.92x, LSTM B=1-4 0.89-0.97x),
 * while one thread still gains from the batch at small H (GRU H=64 1.05-1.11x without). */
#define FR_DG_SLOTS 32
typedef struct {
    /* LSTM: pre-activations i, f, g, o; GRU: r, z, x_n + b_in, h W_hn^T + b_hn */
    V g[4][FR_DG_SLOTS];
    V c[FR_DG_SLOTS];        /* LSTM: previous cell state, then the new one; GRU: h */
    T* cp[FR_DG_SLOTS];      /* LSTM: where c goes */
    T* hn[FR_DG_SLOTS];      /* where h goes (next hbuf) */
    T* out[FR_DG_SLOTS];     /* output row or NULL */
    int nu[FR_DG_SLOTS];
    int n;
} F(dgate);

FR_INLINE void F(dgate_flush)(F(dgate)* d, int lstm) {
    const int n = d->n;
    V* g0 = d->g[0];
    V* g1 = d->g[1];
    V* g2 = d->g[2];
    V* g3 = d->g[3];
    int j;
    for (j = 0; j < n; j++) {
        g0[j] = F(vsigmoid)(g0[j]);
        g1[j] = F(vsigmoid)(g1[j]);
    }
    if (lstm) {
        for (j = 0; j < n; j++) {
            g2[j] = F(vtanh)(g2[j]);
            g3[j] = F(vsigmoid)(g3[j]);
        }
        for (j = 0; j < n; j++) {
            const V ct = g1[j] * d->c[j] + g0[j] * g2[j];
            d->c[j] = ct;
            g0[j] = g3[j] * F(vtanh)(ct);
        }
        for (j = 0; j < n; j++) F(vstore)(d->cp[j], d->c[j], d->nu[j]);
    } else {
        for (j = 0; j < n; j++) {
            const V nv = F(vtanh)(g2[j] + g0[j] * g3[j]);
            g0[j] = nv + g1[j] * (d->c[j] - nv);
        }
    }
    for (j = 0; j < n; j++) {
        const int nu = d->nu[j];
        F(vstore)(d->hn[j], g0[j], nu);
        if (d->out[j]) F(vstore)(d->out[j], g0[j], nu);
    }
    d->n = 0;
}

/* a masked row (Keras masking) of n values: carry the state hp into hn, repeat the
 * last output (or zero it) into the output o (NULL: not written) */
FR_INLINE void F(mask_carry)(const FR_SEQ* q, T* hn, const T* hp, T* o, const T* last, int n) {
    memcpy(hn, hp, sizeof(T) * n);
    if (o) {
        if (q->mask_zero) memset(o, 0, sizeof(T) * n);
        else memcpy(o, last, sizeof(T) * n);
    }
}

/* one time step s (chunk starts at s0) for unit blocks [ub0, ub1); reads hbuf[cur],
 * writes hbuf[1-cur] (rows of K: H, or P with a projection, where h' goes to hraw
 * instead and rproj writes hbuf[1-cur], the outputs and the masked rows).  hm > 0: the recurrent product in halves (mv_halves); part
 * (overlapped unit split, else NULL): the products over the thread's own half of h, from
 * step_own, FR_PART_V vectors per (block, row block). */
#define FR_PART_V 16
FR_INLINE void F(step_impl)(const fr_cell* cl, const FR_SEQ* q, int s, int s0, int cur,
                            int ub0, int ub1, int rlo, int rhi, const V* part, int hm) {
    const int G = cl->G, H = cl->H, U = W, K = cl->K, B = q->B, pj = cl->P > 0;
    const int n = (int)q->nsteps[s] < rhi ? (int)q->nsteps[s] : rhi;
    const T* hc = q->hbuf + (size_t)cur * B * K;
    T* hn = q->hbuf + (size_t)(1 - cur) * B * K;
    const T* rows[4];
    V acc[16];
    T hv[W];
    int ub, r0, r, rb, i;
    /* ping-pong traversal: odd steps walk the blocks backwards, so the blocks the last
     * step touched (still in cache) come first when a slice slightly exceeds L2 */
    const int rev = (s & 1) ^ q->flip;
    const int lstm = cl->cell == 1;
    const int defer = fr_dgate_mode && q->team == 1 && cl->fast && !cl->rz_split && !q->mask
                      && (lstm ? q->c != NULL : cl->cell == 2);
    F(dgate) dg;
    dg.n = 0;
    for (i = 0; i < ub1 - ub0; i++) {
        ub = rev ? ub1 - 1 - i : ub0 + i;
        const int u0 = ub * U;
        const int nu = H - u0 < U ? H - u0 : U;
        const T* Wb = cl->rz_split
            ? (const T*)cl->wp + (size_t)cl->nb * K * 2 * U + (size_t)ub * K * U
            : (const T*)cl->wp + (size_t)ub * K * G * U;
        const T* src = cl->rz_split ? q->rh : hc;
        const int Gm = cl->rz_split ? 1 : G;
        for (r0 = rlo; r0 < n; r0 += FR_RB(Gm)) {
            rb = n - r0 < FR_RB(Gm) ? n - r0 : FR_RB(Gm);
            for (r = 0; r < rb; r++) rows[r] = src + (size_t)(r0 + r) * K;
            if (hm)
                F(mv_halves)(rb, Gm, rows, K, hm,
                             part ? part + ((size_t)(ub - ub0) * F(nrb)(B, Gm)
                                            + (r0 - rlo) / FR_RB(Gm)) * FR_PART_V : NULL,
                             ub0 * U < hm, Wb, acc);
            else
                F(mv_any)(rb, Gm, rows, K, Wb, acc);
            if (defer) {
                /* gate_block's sums, in its order (GRU: the fourth is b_hn) */
                const T* bias = (const T*)cl->bias;
                const T* b3 = lstm ? bias + 3 * H : (const T*)cl->bhn;
                const V bi = F(vload)(bias + u0, nu), bf = F(vload)(bias + H + u0, nu);
                const V bg = F(vload)(bias + 2 * H + u0, nu), bo = F(vload)(b3 + u0, nu);
                for (r = 0; r < rb; r++) {
                    const int b = r0 + r, j = dg.n++;
                    const ptrdiff_t prow = q->offsets[F(in_time)(q, s, b)] + b;
                    const T* xr = q->xp + (size_t)((s - s0) * B + b) * G * H + u0;
                    dg.g[0][j] = acc[Gm * r] + F(vload)(xr, nu) + bi;
                    dg.g[1][j] = acc[Gm * r + 1] + F(vload)(xr + H, nu) + bf;
                    if (lstm) {
                        dg.g[2][j] = acc[Gm * r + 2] + F(vload)(xr + 2 * H, nu) + bg;
                        dg.g[3][j] = acc[Gm * r + 3] + F(vload)(xr + 3 * H, nu) + bo;
                        dg.cp[j] = q->c + (size_t)b * H + u0;
                        dg.c[j] = F(vload)(dg.cp[j], nu);
                    } else {
                        dg.g[2][j] = F(vload)(xr + 2 * H, nu) + bg;
                        dg.g[3][j] = acc[Gm * r + 2] + bo;
                        dg.c[j] = F(vload)(hc + (size_t)b * H + u0, nu);
                    }
                    dg.hn[j] = pj ? q->hraw + (size_t)b * H + u0 : hn + (size_t)b * K + u0;
                    dg.out[j] = q->out && !pj ? q->out + prow * q->out_ld + q->out_col + u0
                                              : NULL;
                    dg.nu[j] = nu;
                }
                if (dg.n + FR_RB(Gm) > FR_DG_SLOTS) F(dgate_flush)(&dg, lstm);
                continue;
            }
            for (r = 0; r < rb; r++) {
                const int b = r0 + r;
                const int t = F(in_time)(q, s, b);
                const ptrdiff_t prow = q->offsets[t] + b;
                const T* hp = hc + (size_t)b * K;
                T* hnb = pj ? q->hraw + (size_t)b * H + u0 : hn + (size_t)b * K + u0;
                T* o = q->out && !pj ? q->out + prow * q->out_ld + q->out_col + u0 : NULL;
                if (q->mask && !q->mask[prow]) {
                    /* (with a projection c carries here, rproj carries h and the output) */
                    if (!pj) F(mask_carry)(q, hnb, hp + u0, o, q->lastout + (size_t)b * H + u0, nu);
                    continue;
                }
                F(gate_block)(cl, u0, nu, acc + r * Gm,
                              q->xp + (size_t)((s - s0) * B + b) * G * H, hp,
                              q->c ? q->c + (size_t)b * H : (T*)hv, hv,
                              q->zb ? q->zb + (size_t)b * H : NULL);
                memcpy(hnb, hv, sizeof(T) * nu);
                if (o) memcpy(o, hv, sizeof(T) * nu);
                if (q->mask && !pj) memcpy(q->lastout + (size_t)b * H + u0, hv, sizeof(T) * nu);
            }
        }
        /* finished sequences keep their state: with a projection rproj carries it step
         * by step; without, their rows are left alone in both buffers and the layer's
         * end takes each from the buffer of its own last step (F(final_h)) */
    }
    if (dg.n) F(dgate_flush)(&dg, lstm);
}
FR_FN(void, F(step), F(step_impl), (const fr_cell* cl, const FR_SEQ* q, int s, int s0, int cur, int ub0, int ub1, int rlo, int rhi, const V* part, int hm),
         (cl, q, s, s0, cur, ub0, ub1, rlo, rhi, part, hm))

/* LSTM with a projection, second half of step s: h' = hraw W_hr^T for the projection's
 * unit blocks [pb0, pb1) of rows [rlo, rhi) into hbuf[1-cur] (rows of P) and the
 * outputs; masked rows carry h (and repeat or zero the output), finished rows keep it */
FR_INLINE void F(rproj_impl)(const fr_cell* cl, const FR_SEQ* q, int s, int cur, int pb0,
                             int pb1, int rlo, int rhi) {
    const int H = cl->H, P = cl->P, B = q->B;
    const int n = (int)q->nsteps[s] < rhi ? (int)q->nsteps[s] : rhi;
    const T* hc = q->hbuf + (size_t)cur * B * P;
    T* hn = q->hbuf + (size_t)(1 - cur) * B * P;
    const T* rows[4];
    V acc[4];
    int pb, r0, r, rb;
    for (pb = pb0; pb < pb1; pb++) {
        const int p0 = pb * W;
        const int np = P - p0 < W ? P - p0 : W;
        const T* Wb = (const T*)cl->wrp + (size_t)pb * H * W;
        for (r0 = rlo; r0 < n; r0 += FR_RB(1)) {
            rb = n - r0 < FR_RB(1) ? n - r0 : FR_RB(1);
            for (r = 0; r < rb; r++) rows[r] = q->hraw + (size_t)(r0 + r) * H;
            F(mv_any)(rb, 1, rows, H, Wb, acc);
            for (r = 0; r < rb; r++) {
                const int b = r0 + r;
                const ptrdiff_t prow = q->offsets[F(in_time)(q, s, b)] + b;
                T* hnb = hn + (size_t)b * P + p0;
                T* o = q->out ? q->out + prow * q->out_ld + q->out_col + p0 : NULL;
                if (q->mask && !q->mask[prow]) {
                    F(mask_carry)(q, hnb, hc + (size_t)b * P + p0, o,
                                  q->lastout + (size_t)b * P + p0, np);
                    continue;
                }
                F(vstore)(hnb, acc[r], np);
                if (o) F(vstore)(o, acc[r], np);
                if (q->mask) F(vstore)(q->lastout + (size_t)b * P + p0, acc[r], np);
            }
        }
        for (r = n > rlo ? n : rlo; r < rhi; r++)
            memcpy(hn + (size_t)r * P + p0, hc + (size_t)r * P + p0, sizeof(T) * np);
    }
}
FR_FN(void, F(rproj), F(rproj_impl), (const fr_cell* cl, const FR_SEQ* q, int s, int cur, int pb0, int pb1, int rlo, int rhi),
         (cl, q, s, cur, pb0, pb1, rlo, rhi))

/* overlapped unit split, first half of step s: the products of the thread's blocks
 * [ub0, ub1) over its own units [ka, kb) of h (written by this thread the step before,
 * so no wait) into part */
FR_INLINE void F(step_own_impl)(const fr_cell* cl, const FR_SEQ* q, int s, int cur,
                                int ub0, int ub1, int rlo, int rhi, V* part, int ka,
                                int kb) {
    const int G = cl->G, H = cl->H, K = cl->K, B = q->B;
    const int n = (int)q->nsteps[s] < rhi ? (int)q->nsteps[s] : rhi;
    const T* hc = q->hbuf + (size_t)cur * B * H;
    const T* rows[4];
    int ub, r0, r, rb;
    for (ub = ub0; ub < ub1; ub++) {
        const T* Wb = (const T*)cl->wp + (size_t)ub * K * G * W;
        for (r0 = rlo; r0 < n; r0 += FR_RB(G)) {
            rb = n - r0 < FR_RB(G) ? n - r0 : FR_RB(G);
            for (r = 0; r < rb; r++) rows[r] = hc + (size_t)(r0 + r) * H;
            F(mv_range)(rb, G, rows, ka, kb, Wb,
                        part + ((size_t)(ub - ub0) * F(nrb)(B, G) + (r0 - rlo) / FR_RB(G))
                                   * FR_PART_V);
        }
    }
}
FR_FN(void, F(step_own), F(step_own_impl), (const fr_cell* cl, const FR_SEQ* q, int s, int cur, int ub0, int ub1, int rlo, int rhi, V* part, int ka, int kb),
         (cl, q, s, cur, ub0, ub1, rlo, rhi, part, ka, kb))

/* The whole layer (one direction), on one thread or split between threads:
 * - by unit blocks (small batch): each thread owns a range of unit blocks for the whole
 *   call, projects the inputs of its own units and runs its units' gates, so a step needs
 *   one barrier (the new h must be complete before the next step reads it) and each
 *   thread's weight slice stays in its core's cache;
 * - by batch rows (B >= fr_rowsplit_min): rows are independent, so each thread runs its
 *   own rows through every step with no barrier at all (robust on a busy machine). */

/* bar: the unit split's barrier counters and nbar the team size (NULL: no barriers).
 * ov (overlapped unit split, else NULL): this thread's part scratch and the team's
 * progress counters; a step then starts with the product over the thread's own units
 * (its own h from the step before), waits only for the other threads' h, and needs no
 * barrier. */
typedef struct {
    V* part;
    int* prog;
    int tid;
} F(overlap);
static void F(run_range)(const fr_cell* cl, const FR_SEQ* q, int ub0, int ub1, int pb0,
                         int pb1, int rlo, int rhi, int* bar, int nbar,
                         const F(overlap)* ov, int hm) {
    const int ka = ub0 * W, kb = ub1 * W < cl->H ? ub1 * W : cl->H;
    int s0 = 0, s, cur = 0, i;
    if (q->nT == 1 && !cl->P) {
        /* one step: projection and recurrence block by block (one pass over each
         * block's weights), alternate direction from call to call */
        if (!cl->rz_split) {
            for (i = 0; i < ub1 - ub0; i++) {
                const int ub = q->flip ? ub1 - 1 - i : ub0 + i;
                F(proj)(cl, q, 0, 1, ub, ub + 1, rlo, rhi);
                F(step)(cl, q, 0, 0, 0, ub, ub + 1, rlo, rhi, NULL, 0);
            }
            return;
        }
    }
    for (; s0 < q->nT; s0 += q->chunk) {
        const int s1 = s0 + q->chunk < q->nT ? s0 + q->chunk : q->nT;
        F(proj)(cl, q, s0, s1, ub0, ub1, rlo, rhi);
        for (s = s0; s < s1; s++) {
            if (cl->rz_split) {
                F(rz)(cl, q, s, s0, cur, ub0, ub1, rlo, rhi);
                if (bar) fr_step_barrier(bar, nbar);
            }
            if (ov) {
                F(step_own)(cl, q, s, cur, ub0, ub1, rlo, rhi, ov->part, ka, kb);
                fr_progress_wait(ov->prog, ov->tid, nbar, s);
                F(step)(cl, q, s, s0, cur, ub0, ub1, rlo, rhi, ov->part, hm);
                fr_progress_publish(ov->prog, ov->tid, s + 1);
                cur = 1 - cur;
                continue;
            }
            F(step)(cl, q, s, s0, cur, ub0, ub1, rlo, rhi, NULL, hm);
            if (cl->P) {
                /* the projection reads every unit of hraw */
                if (bar) fr_step_barrier(bar, nbar);
                F(rproj)(cl, q, s, cur, pb0, pb1, rlo, rhi);
            }
            cur = 1 - cur;
            if (bar) fr_step_barrier(bar, nbar);
        }
    }
}

/* The final state: h after the last step, but a row that finished earlier (rows sorted
 * longest first: step s runs rows [0, nsteps[s])) keeps the h of its own last step: a
 * row that ran L steps ends in buffer L & 1 (step s writes buffer (s + 1) & 1), which
 * no later step touches (without a projection the steps do not carry finished rows:
 * a skewed batch, B=64 GRU H=256 with one sequence of 200 steps and 63 of none, copied
 * 63 rows every step, 6.5 -> 6.1 ms of its call); a row of length 0 keeps the initial
 * h in buffer 0. */
static void F(final_h)(const fr_cell* cl, const FR_SEQ* q) {
    const int B = q->B, K = cl->K, last = (int)(q->nT & 1);
    const T* buf[2] = {q->hbuf, q->hbuf + (size_t)B * K};
    int s, r, lo, hi;
    memcpy(q->h, buf[last], sizeof(T) * B * K);
    if (cl->P) return;
    for (s = -1; s < q->nT - 1; s++) {
        /* rows that ran s + 1 steps: [nsteps[s + 1], nsteps[s]) (s = -1: up to B) */
        hi = s < 0 ? B : (int)q->nsteps[s];
        lo = (int)q->nsteps[s + 1];
        if (((s + 1) & 1) == last || lo >= hi) continue;
        for (r = lo; r < hi; r++)
            memcpy(q->h + (size_t)r * K, buf[(s + 1) & 1] + (size_t)r * K, sizeof(T) * K);
    }
}

/* pair: one direction of the pair (fr_small_pair), on one thread */
static void F(small_layer_impl)(const fr_cell* cl, FR_SEQ* q, int nt, int pair) {
    const int B = q->B, H = cl->H, K = cl->K, nb = cl->nb;
    const int nbp = (cl->P + W - 1) / W;       /* the projection's unit blocks */
    const int rowsplit = nt > 1 && B >= fr_rowsplit_min;
    int nthr = rowsplit ? (nt < B / 4 ? nt : B / 4) : (nt < nb ? nt : nb);
    const long work = ((long)cl->G * K + cl->P) * H * B;
    /* below ~16k multiply-adds per step a barrier costs more than the second thread
     * saves (measured: LSTM H=64 B=1 breaks even, GRU H=64 B=1 is faster on one) */
    if (work < fr_min_par_work) nthr = 1;
    /* Units split at B >= 2 also want at least 4 unit blocks (2 a thread) and 2k
     * vector multiply-adds a step in the recurrent product (W / 8 x fr_min_par_work:
     * AVX-512 float32 32k multiply-adds, float64 and AVX2 float32 16k).
     * Measured on an Intel Xeon (AVX-512, T=100, bench/thread_grid.py, 2 threads / 1
     * thread), float32: GRU H=32 B=6-12 1.11-1.24, H=48 B=3-12 1.09-1.30, H=56 B=2-3
     * 1.19 (B=8-12 0.90), H=64 B=2-3 1.01-1.02 (B=4-12 0.82-0.91), LSTM (packed)
     * H=24-48 1.06-1.70 (H=64 B=3-12 0.75-0.90), SimpleRNN H=48 B=8-12 1.15-1.20, H=64
     * B=4-6 1.06-1.23, H=80 B=3 1.08, H=96 B=2 1.09 (B=3 0.96, H=128 B=2 0.87);
     * float64 (blocks of 8): GRU H=24 B=12 1.21, H=32 1.0, H=48-96 B>=2 0.63-0.93,
     * SimpleRNN H=64 B=4 0.92, H=96 B=2 0.83; AVX2 float32 (its kernels
     * on the same CPU, blocks of 8): GRU H=24 B=12 1.21, H=32 B=8-12 0.89-0.94, H=64
     * B=2 0.82, SimpleRNN H=64 B=4 0.91, H=96 B=2-3 0.77-0.80.  (Tests: fr_min_par_work
     * 0 turns both rules off.) */
    else if (nthr > 1 && !rowsplit && B > 1 && fr_min_par_work > 0
             && (H < 4 * W || 8 * work < fr_min_par_work * W))
        nthr = 1;
    if (nthr < 1) nthr = 1;
    /* the recurrent product in halves (mv_halves) where the overlapped unit split
     * applies on 2 threads (fr_overlap_auto), on any number of threads, so that the
     * thread count does not change the arithmetic (B below the row split); but one
     * pass in the pair at B > 1 (no bits are promised across thread counts there, and
     * the pair's 2-layer BiLSTM B=8 H=256 took 0.96x the time; at B = 1 the pause rule
     * relies on those bits: Threads in the README); not below fr_min_par_work, where
     * every thread count runs one thread (the halves cost GRU B=1 T=100 H=64 1.33x) */
    const int hm = !cl->rz_split && cl->K == H && nb >= 2 && q->nT > 1
                   && work >= fr_min_par_work
                   && B < fr_rowsplit_min && !(pair && B > 1)
                   && (fr_step_overlap > 0
                       || (fr_step_overlap < 0
                           && fr_overlap_auto(cl->cell, cl->G, cl->K, W, nb, 2, B,
                                              (int)sizeof(T))))
                   ? (nb / 2) * W : 0;
    memcpy(q->hbuf, q->h, sizeof(T) * B * K);
    if (q->mask) memset(q->lastout, 0, sizeof(T) * B * K);
    if (cl->P) memset(q->hraw, 0, sizeof(T) * B * H);   /* masked rows' (unused) products */
    q->team = nthr > 1 && !rowsplit ? nthr : 1;
#ifdef _OPENMP
    if (nthr > 1) {
        int bar[2] = {0, 0};     /* fr_step_barrier: arrivals, generation */
        /* overlapped unit split (see run_range): 2 threads, each owning one half */
        const int ovl = hm && nthr == 2 && !rowsplit && FR_PROG_OK;
        const size_t ownb = (size_t)nb / 2 + 1;   /* blocks a thread owns (of 2) */
        const size_t partb = ownb * F(nrb)(B, cl->G) * FR_PART_V * sizeof(V);
        const size_t ovb = (size_t)nthr * partb + (size_t)nthr * FR_PROG_STRIDE * sizeof(int);
        unsigned char* base = ovl ? (unsigned char*)fr_amalloc(ovb) : NULL;
        fr_place* pl = fr_place_team(nthr);
        long long body = 0;     /* the threads' time in the region's body (fr_wake_on) */
        const long long wk0 = fr_wake_on ? fr_stamp() : 0;
        if (base) memset(base, 0, ovb);     /* the progress counters start at 0 */
        #pragma omp parallel num_threads(nthr)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            F(overlap) ov;
            const long long b0 = wk0 ? fr_stamp() : 0;
            fr_place_join(pl, tid);
            ov.part = base ? (V*)(base + (size_t)tid * partb) : NULL;
            ov.prog = base ? (int*)(base + (size_t)nthr * partb) : NULL;
            ov.tid = tid;
            if (rowsplit)   /* (a ragged batch's rows by work: fr_row_cut) */
                F(run_range)(cl, q, 0, nb, 0, nbp,
                             fr_row_cut(q->lens, B, q->varlen, tid, nth),
                             fr_row_cut(q->lens, B, q->varlen, tid + 1, nth),
                             NULL, 0, NULL, hm);
            else
                F(run_range)(cl, q, (int)((long)tid * nb / nth),
                             (int)((long)(tid + 1) * nb / nth),
                             (int)((long)tid * nbp / nth), (int)((long)(tid + 1) * nbp / nth),
                             0, B, bar, nth, base && nth == 2 ? &ov : NULL, hm);
            if (wk0) __atomic_fetch_add(&body, fr_stamp() - b0, __ATOMIC_RELAXED);
        }
        if (wk0) {
            fr_wake_wall += fr_stamp() - wk0;
            fr_wake_body += body;
        }
        free(base);
    } else
#endif
        F(run_range)(cl, q, 0, nb, 0, nbp, 0, B, NULL, 0, NULL, hm);
    F(final_h)(cl, q);
}
static void F(fr_small_layer)(const fr_cell* cl, FR_SEQ* q, int nt) {
    F(small_layer_impl)(cl, q, nt, 0);
}

/* Both directions of a bidirectional layer at the same time: one thread per direction,
 * each running its whole time loop alone (no barrier at all).  Pays when the unit split
 * would need a barrier every step (small batch); falls back to one after the other when
 * the runtime gives a single thread. */
static void F(fr_small_pair)(const fr_cell* cl0, FR_SEQ* q0, const fr_cell* cl1,
                             FR_SEQ* q1) {
#ifdef _OPENMP
    fr_place* pl = fr_place_team(2);
    #pragma omp parallel num_threads(2)
    {
        fr_place_join(pl, omp_get_thread_num());
        if (omp_get_num_threads() < 2) {
            F(small_layer_impl)(cl0, q0, 1, 1);
            F(small_layer_impl)(cl1, q1, 1, 1);
        } else if (omp_get_thread_num() == 0) {
            F(small_layer_impl)(cl0, q0, 1, 1);
        } else {
            F(small_layer_impl)(cl1, q1, 1, 1);
        }
    }
#else
    F(small_layer_impl)(cl0, q0, 1, 1);
    F(small_layer_impl)(cl1, q1, 1, 1);
#endif
}

/* ------------------------------------------------- gate pass for the BLAS (large) path
 * rows [0, n): acc (n, acc_ld) recurrent products, xrows[b] projected inputs, h (n, H)
 * previous h (GRU) and/or destination: hout (n, hout_ld) receives h'.  c (n, H). */
FR_INLINE void F(rows_impl)(const fr_cell* cl, int n, const T* acc, ptrdiff_t acc_ld,
                            T* const* xrows, const T* hprev, ptrdiff_t hp_ld, T* c, T* hout,
                            ptrdiff_t ho_ld) {
    const int G = cl->G, H = cl->H;
    V pre[4];
    T hv[W];
    int b, u0, g;
    for (b = 0; b < n; b++) {
        const T* a = acc + b * acc_ld;
        for (u0 = 0; u0 < H; u0 += W) {
            const int nu = H - u0 < W ? H - u0 : W;
            for (g = 0; g < G; g++) pre[g] = F(vload)(a + (size_t)g * H + u0, nu);
            F(gate_block)(cl, u0, nu, pre, xrows[b], hprev ? hprev + b * hp_ld : NULL,
                          c ? c + (size_t)b * H : (T*)hv, hv, NULL);
            memcpy(hout + b * ho_ld + u0, hv, sizeof(T) * nu);
        }
    }
}
FR_FN(void, F(fr_rows), F(rows_impl), (const fr_cell* cl, int n, const T* acc, ptrdiff_t acc_ld,
                            T* const* xrows, const T* hprev, ptrdiff_t hp_ld, T* c, T* hout,
                            ptrdiff_t ho_ld),
         (cl, n, acc, acc_ld, xrows, hprev, hp_ld, c, hout, ho_ld))

#include "fr_wide_t.h"   /* the batch-lane kernel (B >= 8) */

/* ------------------------------------------------------------------ small Dense layers
 * y (m, n) = act(x (m, k) @ w (k, n) + b) row by row, w row-major (Keras's kernel): per
 * block of FR_DENSE_NB vectors of a row's columns (half the registers), k multiply-adds
 * of a broadcast x value by w's rows into registers (w read once a row of x, in runs of
 * the block's width), then bias and activation in place.
 * act: FR_LINEAR, FR_SIGMOID, FR_TANH, FR_RELU, or -1 softmax over the row.  b may be
 * NULL.  A Keras-style model's Dense on a few rows (a streaming step, a one-step call),
 * where numpy's matmul, bias and activation passes cost microseconds of overhead each. */
#ifndef FR_DENSE_NB
#define FR_DENSE_NB (FR_NREG / 2)
#endif
FR_INLINE void F(dense_rows_impl)(int m, int k, int n, const T* x, const T* w, const T* b,
                                  int act, T* y) {
    const V zero = F(vset1)(0);
    int r, i, j, u;
    for (r = 0; r < m; r++) {
        const T* xr = x + (size_t)r * k;
        T* yr = y + (size_t)r * n;
        for (j = 0; j + FR_DENSE_NB * W <= n; j += FR_DENSE_NB * W) {
            V a[FR_DENSE_NB];
            const T* wp = w + j;
#pragma GCC unroll 16
            for (u = 0; u < FR_DENSE_NB; u++) a[u] = zero;
            for (i = 0; i < k; i++, wp += n) {
                const V xv = F(vset1)(xr[i]);
#pragma GCC unroll 16
                for (u = 0; u < FR_DENSE_NB; u++) a[u] += xv * F(vld)(wp + u * W);
            }
#pragma GCC unroll 16
            for (u = 0; u < FR_DENSE_NB; u++) F(vst)(yr + j + u * W, a[u]);
        }
        for (; j + W <= n; j += W) {     /* whole vectors left */
            V a0 = zero;
            const T* wp = w + j;
            for (i = 0; i < k; i++, wp += n) a0 += F(vset1)(xr[i]) * F(vld)(wp);
            F(vst)(yr + j, a0);
        }
        for (; j < n; j += W) {          /* the last columns, part of a vector */
            const int nu = n - j < W ? n - j : W;
            T acc[W];
            for (u = 0; u < W; u++) acc[u] = 0;
            for (i = 0; i < k; i++) {
                const T xv = xr[i];
                const T* wp = w + (size_t)i * n + j;
                for (u = 0; u < nu; u++) acc[u] += xv * wp[u];
            }
            for (u = 0; u < nu; u++) yr[j + u] = acc[u];
        }
        if (b)
            for (j = 0; j < n; j++) yr[j] += b[j];
        if (act == -1) {                 /* softmax: exp(y - max) / sum */
            /* (libm's exp, as NumPy's: the vector exp stops at the smallest normal
             * number, where a class far below the maximum must give 0: a review) */
            T mx = yr[0], sum = 0;
            for (j = 1; j < n; j++) mx = yr[j] > mx ? yr[j] : mx;
            for (j = 0; j < n; j++) yr[j] = F(sexp)(yr[j] - mx);
            for (j = 0; j < n; j++) sum += yr[j];
            for (j = 0; j < n; j++) yr[j] /= sum;
        } else if (act == FR_SIGMOID || act == FR_TANH) {
            F(vact_array)(act == FR_SIGMOID ? 0 : 1, yr, yr, n);
        } else if (act == FR_RELU) {     /* (NaN stays NaN, as numpy's maximum) */
            for (j = 0; j < n; j++) yr[j] = yr[j] < 0 ? (T)0 : yr[j];
        }
    }
}
FR_FN(void, F(fr_dense_rows), F(dense_rows_impl),
      (int m, int k, int n, const T* x, const T* w, const T* b, int act, T* y),
      (m, k, n, x, w, b, act, y))

/* ------------------------------------------------------------------ test hooks */
FR_FN(void, F(fr_act_array), F(vact_array), (int which, const T* x, T* y, ptrdiff_t n), (which, x, y, n))

#undef V
#undef VI
#undef T
#undef W
#undef F
#undef FR_ACT_F
#undef FR_ACT_G
#undef FR_RB
#undef FR_RBP
#undef FR_SWPF
#undef FR_SWPF_ON
/* the parameters of this instantiation */
#undef FR_T
#undef FR_V
#undef FR_VI
#undef FR_IT
#undef FR_W
#undef FR_SEQ
#undef FR_SFX
#undef FR_DOUBLE
