/* Vectorised exp, sigmoid and tanh (and the few vector helpers they use), written once
 * with GCC vector extensions and included per ISA level and element type: by fr_kern_t.h
 * (the inference kernels) and by _backward_gemm.h (the training kernels' gate math), so
 * inference and training compute the same activations.
 * The includer defines V (the level's native vector of T), VI (same-width integer
 * vector), T (float or double), W (lanes), F(name) (a name suffixed for the type and
 * level), FR_INLINE, and FR_DOUBLE for double; no macro of this file outlives it. */

FR_INLINE V F(vset1)(T a) { V v = {0}; return v + a; }
FR_INLINE V F(vsel)(VI m, V a, V b) { return (V)((m & (VI)a) | (~m & (VI)b)); }
/* min/max that keep a NaN in their first argument (NaN inputs propagate) */
FR_INLINE V F(vmin)(V a, V b) { return F(vsel)(a > b, b, a); }
FR_INLINE V F(vmax)(V a, V b) { return F(vsel)(a < b, b, a); }

/* max(k, x) and min(k, x) for the activations' clamps, a NaN x kept: on x86 one max /
 * min instruction (it returns its second operand when either is NaN) instead of vmax /
 * vmin's compare and blend; the same values */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
/* (P: the width's intrinsic prefix, S: ps / pd, R: its register type) */
#define FR_ACT_KMM(P, S, R)                                                             \
    FR_INLINE V F(vkmax)(T k, V x) { return (V)P##_max_##S(P##_set1_##S(k), (R)x); }   \
    FR_INLINE V F(vkmin)(T k, V x) { return (V)P##_min_##S(P##_set1_##S(k), (R)x); }
#if FR_VBYTES == 64 && !defined(FR_DOUBLE)
FR_ACT_KMM(_mm512, ps, __m512)
#elif FR_VBYTES == 64
FR_ACT_KMM(_mm512, pd, __m512d)
#elif FR_VBYTES == 32 && !defined(FR_DOUBLE)
FR_ACT_KMM(_mm256, ps, __m256)
#elif FR_VBYTES == 32
FR_ACT_KMM(_mm256, pd, __m256d)
#elif !defined(FR_DOUBLE)
FR_ACT_KMM(_mm, ps, __m128)
#else
FR_ACT_KMM(_mm, pd, __m128d)
#endif
#undef FR_ACT_KMM
#else
FR_INLINE V F(vkmax)(T k, V x) { return F(vmax)(x, F(vset1)(k)); }
FR_INLINE V F(vkmin)(T k, V x) { return F(vmin)(x, F(vset1)(k)); }
#endif

/* ------------------------------------------------------------------ exp, sigmoid, tanh
 * float: Cephes expf (range reduction by ln2 in two parts, degree-6 polynomial, ~1 ulp);
 * double: Cephes exp (Pade form, ~1 ulp).  Inputs are clamped so no lane overflows;
 * +-inf give the right limits, never NaN. */
#ifndef FR_DOUBLE
/* exp of x in [-87.3, 88] (or NaN) */
FR_INLINE V F(vexp_in)(V x) {
    V t = x * 1.44269504088896341f + 12582912.0f;       /* round to nearest via 1.5*2^23 */
    V n = t - 12582912.0f;
    V r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    V p = F(vset1)(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    V e = p * (r * r) + r + 1.0f;
    VI ni = __builtin_convertvector(n, VI);
    V scale = (V)((ni + 127) << 23);
    return e * scale;
}
FR_INLINE V F(vexp)(V x) { return F(vexp_in)(F(vkmin)(88.0f, F(vkmax)(-87.3f, x))); }
FR_INLINE V F(vtanh)(V x) {
    const VI signmask = ((VI){0} + 1) << 31;
    V ax = (V)((VI)x & ~signmask);
    /* |x| < 0.625: odd polynomial (Cephes tanhf) */
    V s = x * x;
    V p = F(vset1)(-5.70498872745E-3f);
    p = p * s + 2.06390887954E-2f;
    p = p * s - 5.37397155531E-2f;
    p = p * s + 1.33314422036E-1f;
    p = p * s - 3.33332819422E-1f;
    V small = p * s * x + x;
    /* otherwise 1 - 2 / (exp(2|x|) + 1), sign restored */
    V e = F(vexp_in)(F(vkmin)(10.0f, ax) * 2.0f);
    V big = 1.0f - 2.0f / (e + 1.0f);
    big = (V)((VI)big | ((VI)x & signmask));
    return F(vsel)(ax < 0.625f, small, big);
}
#else
/* exp of x in [-708, 708] (or NaN) */
FR_INLINE V F(vexp_in)(V x) {
    V t = x * 1.4426950408889634073599 + 6755399441055744.0;   /* 1.5 * 2^52 */
    V n = t - 6755399441055744.0;
    V r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    V rr = r * r;
    V px = F(vset1)(1.26177193074810590878E-4);
    px = px * rr + 3.02994407707441961300E-2;
    px = px * rr + 9.99999999999999999910E-1;
    px = px * r;
    V q = F(vset1)(3.00198505138664455042E-6);
    q = q * rr + 2.52448340349684104192E-3;
    q = q * rr + 2.27265548208155028766E-1;
    q = q * rr + 2.00000000000000000009E0;
    V e = 1.0 + 2.0 * (px / (q - px));
    /* n as int64 from t's bits (no packed double->int64 conversion before AVX-512) */
    VI ni = (VI)t - (VI)F(vset1)(6755399441055744.0);
    V scale = (V)((ni + 1023) << 52);
    return e * scale;
}
FR_INLINE V F(vexp)(V x) { return F(vexp_in)(F(vkmin)(708.0, F(vkmax)(-708.0, x))); }
FR_INLINE V F(vtanh)(V x) {
    const VI signmask = ((VI){0} + 1) << 63;
    V ax = (V)((VI)x & ~signmask);
    V z = x * x;
    /* Cephes tanh, |x| < 0.625: x + x z P(z) / Q(z) */
    V p = F(vset1)(-9.64399179425052238628E-1);
    p = p * z - 9.92877231001918586564E1;
    p = p * z - 1.61468768441708447952E3;
    V q = z + 1.12811678491632931402E2;
    q = q * z + 2.23548839060100448583E3;
    q = q * z + 4.84406305325125486048E3;
    V small = x + x * z * (p / q);
    V e = F(vexp_in)(F(vkmin)(20.0, ax) * 2.0);
    V big = 1.0 - 2.0 / (e + 1.0);
    big = (V)((VI)big | ((VI)x & signmask));
    return F(vsel)(ax < 0.625, small, big);
}
#endif
FR_INLINE V F(vsigmoid)(V x) { return 1 / (1 + F(vexp)(-x)); }

/* y[i] = act(x[i]) for i < n (act 0: sigmoid, 1: tanh, 2: exp; x == y allowed): whole
 * vectors, then the tail through a zero-padded vector */
FR_INLINE void F(vact_array)(int act, const T* x, T* y, ptrdiff_t n) {
    ptrdiff_t i = 0;
    /* V is may_alias with element alignment: plain vector loads and stores (a memcpy
     * through a local went via the stack in 16-byte halves, 5x slower measured) */
    if (act == 0)
        for (; i + W <= n; i += W) *(V*)(y + i) = F(vsigmoid)(*(const V*)(x + i));
    else if (act == 1)
        for (; i + W <= n; i += W) *(V*)(y + i) = F(vtanh)(*(const V*)(x + i));
    else
        for (; i + W <= n; i += W) *(V*)(y + i) = F(vexp)(*(const V*)(x + i));
    if (i < n) {
        T tmp[W];
        V v;
        ptrdiff_t j;
        for (j = 0; j < W; j++) tmp[j] = i + j < n ? x[i + j] : (T)0;
        v = *(const V*)tmp;
        *(V*)tmp = act == 0 ? F(vsigmoid)(v) : (act == 1 ? F(vtanh)(v) : F(vexp)(v));
        for (j = 0; i + j < n; j++) y[i + j] = tmp[j];
    }
}
