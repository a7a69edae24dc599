/* One (ISA level, element type) instance of the convolution kernel (_conv_kern.h
 * includes it once per pair, inside the level's target region).
 *
 * The includer defines T (float or double), V (the level's native vector of T), VL
 * (its lanes), F(name) (a name suffixed for the type and level), FRC_NVMAX (vectors
 * of a full weight panel) and FRC_MR(nv) (pixels of a register tile of nv vectors);
 * this file undefines nothing of theirs.
 *
 * The product: each output pixel is a row of the implicit GEMM, each tap's run of
 * input channels (a run of the padded channels-last input: C values, or KW * C where
 * the taps of a kernel row are adjacent) a stretch of its k.  A register tile of
 * mr pixels x nv vectors of output channels walks every tap's run (the pixels' own
 * input pointers, so no window is ever copied: no im2col) against one packed weight
 * panel (K rows of nv * VL values, _conv.pyx's pack). */

/* acc[r][v] = sum over the taps' runs of arow[r][toff[t] + c] * b[(t * L + c)][v], stored
 * to dst (row r at dst + r * ldd, nv full vectors). */
FRC_INLINE void F(frc_tile_body)(const int mr, const int nv, const T* const* arow,
                                 const ptrdiff_t* toff, int ntap, int L, const T* b,
                                 T* dst, ptrdiff_t ldd) {
    V acc[FRC_MRMAX][FRC_NVMAX];
    const T* a[FRC_MRMAX];
    int r, v, t, c;
    const int ldb = nv * VL;
    for (r = 0; r < mr; r++)
        for (v = 0; v < nv; v++) acc[r][v] = (V){0};
    t = 0;
    do {        /* (ntap, L >= 1: loops that run, so the tile stays in registers) */
        for (r = 0; r < mr; r++) a[r] = arow[r] + toff[t];
        c = 0;
        do {
            V bv[FRC_NVMAX];
            for (v = 0; v < nv; v++) bv[v] = *(const V*)(b + v * VL);
            for (r = 0; r < mr; r++) {
                V av = a[r][c] - (V){0};        /* broadcast (x - 0 is x) */
                for (v = 0; v < nv; v++) acc[r][v] += av * bv[v];
            }
            b += ldb;
        } while (++c < L);
    } while (++t < ntap);
    for (r = 0; r < mr; r++)
        for (v = 0; v < nv; v++) *(V*)(dst + r * ldd + v * VL) = acc[r][v];
}

/* One out-of-line tile per (mr, nv) the tiles use (the loops above unrolled for it). */
#define FRC_TILE_FN(MR_, NV_)                                                          \
    static void F(frc_tile_##MR_##_##NV_)(                                             \
            const T* const* arow, const ptrdiff_t* toff, int ntap, int L, const T* b,  \
            T* dst, ptrdiff_t ldd) {                                                   \
        F(frc_tile_body)(MR_, NV_, arow, toff, ntap, L, b, dst, ldd);                  \
    }
#define FRC_TILE_FNS(NV_)                                                              \
    FRC_TILE_FN(1, NV_) FRC_TILE_FN(2, NV_) FRC_TILE_FN(3, NV_) FRC_TILE_FN(4, NV_)    \
    FRC_TILE_FN(5, NV_) FRC_TILE_FN(6, NV_) FRC_TILE_FN(7, NV_) FRC_TILE_FN(8, NV_)
FRC_TILE_FNS(1)
FRC_TILE_FNS(2)
#if FRC_NVMAX >= 3
FRC_TILE_FNS(3)
#endif
#if FRC_NVMAX >= 4
FRC_TILE_FNS(4)
#endif
#undef FRC_TILE_FNS
#undef FRC_TILE_FN

typedef void (*F(frc_tile_t))(const T* const*, const ptrdiff_t*, int, int, const T*, T*,
                              ptrdiff_t);
#define FRC_ROW(NV_)                                                                   \
    { F(frc_tile_1_##NV_), F(frc_tile_2_##NV_), F(frc_tile_3_##NV_), F(frc_tile_4_##NV_), \
      F(frc_tile_5_##NV_), F(frc_tile_6_##NV_), F(frc_tile_7_##NV_), F(frc_tile_8_##NV_) }
static const F(frc_tile_t) F(frc_tiles)[FRC_NVMAX][8] = {
    FRC_ROW(1), FRC_ROW(2),
#if FRC_NVMAX >= 3
    FRC_ROW(3),
#endif
#if FRC_NVMAX >= 4
    FRC_ROW(4),
#endif
};
#undef FRC_ROW

/* select: lanes of a where m is set, else of b */
FRC_INLINE V F(frc_sel)(VI m, V a, V b) { return (V)((m & (VI)a) | (~m & (VI)b)); }

/* The bias (bp: nv vectors, or NULL) and the activation on the nv vectors at t, in
 * place.  Comparisons that keep a NaN, as NumPy's maximum / minimum. */
static void F(frc_finish)(T* t, const T* bp, int nv, const frc_act_t* ac) {
    int v;
    const V zero = (V){0}, alpha = (T)ac->alpha - (V){0};
    const V lo = (T)ac->lo - (V){0}, hi = (T)ac->hi - (V){0};
    for (v = 0; v < nv; v++) {
        V x = *(V*)(t + v * VL);
        if (bp) x += *(const V*)(bp + v * VL);
        switch (ac->kind) {
        case FRC_RELU: x = F(frc_sel)(x < zero, zero, x); break;
        case FRC_LEAKY: x = F(frc_sel)(x < zero, x * alpha, x); break;
        case FRC_CLIP:
            if (ac->has_lo) x = F(frc_sel)(x < lo, lo, x);
            if (ac->has_hi) x = F(frc_sel)(x > hi, hi, x);
            break;
        default: break;
        }
        *(V*)(t + v * VL) = x;
    }
}

/* m (nv vectors) = the max over a pool window's taps (src + tap offsets), NaN kept. */
static void F(frc_poolmax)(T* m, const T* src, const ptrdiff_t* poff, int ntap, int nv) {
    int v, t;
    for (v = 0; v < nv; v++) {
        V u = *(const V*)(src + poff[0] + v * VL);
        for (t = 1; t < ntap; t++) {
            V w = *(const V*)(src + poff[t] + v * VL);
            u = F(frc_sel)((u != u) | (u >= w), u, w);
        }
        *(V*)(m + v * VL) = u;
    }
}

/* w values of the nv vectors at t to o */
FRC_INLINE void F(frc_put)(T* o, const T* t, int nv, int w) {
    int v;
    if (w == nv * VL)
        for (v = 0; v < nv; v++) *(V*)(o + v * VL) = *(const V*)(t + v * VL);
    else
        memcpy(o, t, sizeof(T) * (size_t)w);
}

/* The outputs of a band whose raw products are in buf (rows from conv row r0, wb
 * columns, nbg values a pixel: the panels [p0, p1) side by side): with a pool the
 * pooled rows [q0, q1), else the conv rows [q0, q1); biased, activated, stored. */
static void F(frc_band_out)(const frc_plan_t* P, const T* buf, int wb, int nbg, int r0,
                            const T* bias, T* y, int n, int q0, int q1, int p0, int p1) {
    const frc_panel_t* pan = P->panels;
    const int M = P->M;
    int p, q, j, boff = 0, kh, kw;
    T trow[FRC_NVMAX * VL] __attribute__((aligned(64)));
    ptrdiff_t poff[FRC_POOLMAX];
    const int pkh = P->pool ? P->pkh : 1, pkw = P->pool ? P->pkw : 1;
    const int psh = P->pool ? P->psh : 1, psw = P->pool ? P->psw : 1;
    const int wq = P->pool ? P->Wq : P->Wo;
    for (kh = 0; kh < pkh; kh++)
        for (kw = 0; kw < pkw; kw++)
            poff[kh * pkw + kw] = ((ptrdiff_t)kh * wb + kw) * nbg;
    for (p = p0; p < p1; p++) {
        const frc_panel_t* pp = &pan[p];
        for (q = q0; q < q1; q++)
            for (j = 0; j < wq; j++) {
                const T* src = buf + ((ptrdiff_t)(q * psh - r0) * wb + (ptrdiff_t)j * psw)
                               * nbg + boff;
                T* o = y + (ptrdiff_t)n * P->ysN + (ptrdiff_t)q * P->ysH
                       + (ptrdiff_t)j * M + pp->col0;
                F(frc_poolmax)(trow, src, poff, pkh * pkw, pp->nv);
                F(frc_finish)(trow, bias ? bias + pp->boff : NULL, pp->nv, &P->act);
                F(frc_put)(o, trow, pp->nv, pp->w);
            }
        boff += pp->nv * VL;
    }
}

/* One work item: image n, output rows [q0, q1) (pooled rows with a pool), the panels
 * [p0, p1).  buf: this thread's scratch (with a pool, the band's raw products; without,
 * each tile is finished from the stack as it is done). */
static void F(frc_item)(const frc_plan_t* P, const T* xp, const T* wp, const T* bias,
                        T* y, T* buf, int n, int q0, int q1, int p0, int p1) {
    const frc_panel_t* pan = P->panels;
    const int C = P->C, Wu = P->Wu, M = P->M;
    const T* xn = xp + (ptrdiff_t)n * P->xsN;
    int r0, r1, npix, i0, i, p, nbg = 0;
    int ntile, base, extra;
    T tmp[FRC_MRMAX * FRC_NVMAX * VL] __attribute__((aligned(64)));
    const T* arow[FRC_MRMAX];
    const int MRt[5] = {0, FRC_MR(1), FRC_MR(2), FRC_MR(3), FRC_MR(4)};
    if (P->pool) {
        r0 = q0 * P->psh;
        r1 = (q1 - 1) * P->psh + P->pkh;
    } else {
        r0 = q0;
        r1 = q1;
    }
    npix = (r1 - r0) * Wu;
    for (p = p0; p < p1; p++) nbg += pan[p].nv * VL;
    /* tiles of the band's pixels: as even as they go, of at most the narrowest
     * panel's MR pixels */
    {
        int mr = 8;
        for (p = p0; p < p1; p++)
            if (MRt[pan[p].nv] < mr) mr = MRt[pan[p].nv];
        ntile = (npix + mr - 1) / mr;
        base = npix / ntile;
        extra = npix % ntile;
    }
    for (i0 = 0, i = 0; i < ntile; i++) {
        int mr = base + (i < extra), r, boff = 0;
        {   /* the tile's pixels' windows (pixel i0 + r: row prow, column pcol) */
            int prow = r0 + i0 / Wu, pcol = i0 % Wu;
            for (r = 0; r < mr; r++) {
                arow[r] = xn + (ptrdiff_t)prow * P->sh * P->xsH + (ptrdiff_t)pcol * P->sw * C;
                if (++pcol == Wu) { pcol = 0; prow++; }
            }
        }
        for (p = p0; p < p1; p++) {
            const frc_panel_t* pp = &pan[p];
            const T* wpan = wp + pp->off;
            const ptrdiff_t* toff = P->toff + (ptrdiff_t)pp->group * P->ntap;
            int nv = pp->nv;
            if (P->pool) {
                F(frc_tiles)[nv - 1][mr - 1](arow, toff, P->ntap, P->L, wpan,
                                             buf + (ptrdiff_t)i0 * nbg + boff, nbg);
            } else {
                int prow = r0 + i0 / Wu, pcol = i0 % Wu;
                F(frc_tiles)[nv - 1][mr - 1](arow, toff, P->ntap, P->L, wpan, tmp, nv * VL);
                for (r = 0; r < mr; r++) {
                    T* o = y + (ptrdiff_t)n * P->ysN + (ptrdiff_t)prow * P->ysH
                           + (ptrdiff_t)pcol * M + pp->col0;
                    F(frc_finish)(tmp + r * nv * VL, bias ? bias + pp->boff : NULL, nv,
                                  &P->act);
                    F(frc_put)(o, tmp + r * nv * VL, nv, pp->w);
                    if (++pcol == Wu) { pcol = 0; prow++; }
                }
            }
            boff += nv * VL;
        }
        i0 += mr;
    }
    if (P->pool)
        F(frc_band_out)(P, buf, Wu, nbg, r0, bias, y, n, q0, q1, p0, p1);
}

/* ------------------------------------------------------------------ Winograd F(2x2, 3x3)
 * A 3x3 Conv of stride and dilation 1 (one group) as 16 products of 2.25x fewer
 * multiply-adds: each 2x2 block of outputs ("a tile") from its 4x4 input patch d,
 * V = B^T d B (per input channel), Mp = V[p] U[p] for each of the 16 positions p (a
 * GEMM of tiles x C by C x M, U = G g G^T the weights transformed at packing),
 * Y = A^T M A.  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0;
 * 0 1 -1 -1] (adds only).  A band's tiles go FRC_WTILES at a time: the chunk's
 * transformed inputs V (16 x tiles x Cp) and products (16 x tiles x nbg) stay in L2. */

/* V of the chunk's tiles [k0, k1) of a band (tile k: row k / tw, column k % tw of tiles;
 * its patch: padded input rows r0 + 2 (k / tw) + i, columns 2 (k % tw) + j, zeros
 * past the input's end) */
static void F(frc_wino_in)(const frc_plan_t* P, const T* xn, int r0, int tw, int k0, int k1,
                           T* Vb, int tc, int Cp) {
    const int C = P->C;
    const ptrdiff_t pstride = (ptrdiff_t)tc * Cp;
    int k, i, j, c;
    for (k = k0; k < k1; k++) {
        const T* d[16];
        T* vo = Vb + (ptrdiff_t)(k - k0) * Cp;
        int ir = r0 + 2 * (k / tw), ic = 2 * (k % tw), full = 1;
        for (i = 0; i < 4; i++)
            for (j = 0; j < 4; j++) {
                if (ir + i < P->Hpi && ic + j < P->Wpi)
                    d[4 * i + j] = xn + (ptrdiff_t)(ir + i) * P->xsH + (ptrdiff_t)(ic + j) * C;
                else {
                    d[4 * i + j] = NULL;
                    full = 0;
                }
            }
        for (c = 0; c < C; c += VL) {
            V x[16], t[16];
            int u;
            if (full && c + VL > C && C >= VL)
                c = C - VL;     /* (the last vector overlaps the one before: same values) */
            if (full && c + VL <= C) {
                for (u = 0; u < 16; u++) x[u] = *(const V*)(d[u] + c);
            } else {
                T tmp[16][VL];
                for (u = 0; u < 16; u++)
                    for (i = 0; i < VL; i++)
                        tmp[u][i] = d[u] && c + i < C ? d[u][c + i] : (T)0;
                for (u = 0; u < 16; u++) x[u] = *(const V*)tmp[u];
            }
            for (j = 0; j < 4; j++) {                   /* B^T d */
                t[j] = x[j] - x[8 + j];
                t[4 + j] = x[4 + j] + x[8 + j];
                t[8 + j] = x[8 + j] - x[4 + j];
                t[12 + j] = x[4 + j] - x[12 + j];
            }
            for (i = 0; i < 4; i++) {                   /* (B^T d) B */
                const V* r = t + 4 * i;
                *(V*)(vo + (4 * i + 0) * pstride + c) = r[0] - r[2];
                *(V*)(vo + (4 * i + 1) * pstride + c) = r[1] + r[2];
                *(V*)(vo + (4 * i + 2) * pstride + c) = r[2] - r[1];
                *(V*)(vo + (4 * i + 3) * pstride + c) = r[1] - r[3];
            }
        }
    }
}

/* Y = A^T M A of the chunk's tiles [k0, k1), into the band buffer (2 th rows, 2 tw
 * columns, nbg values a pixel) */
static void F(frc_wino_out)(const T* Mb, int tc, int nbg, int tw, int k0, int k1, T* band) {
    const ptrdiff_t pstride = (ptrdiff_t)tc * nbg, wb = 2 * tw;
    int k, c, u;
    for (k = k0; k < k1; k++) {
        const T* m = Mb + (ptrdiff_t)(k - k0) * nbg;
        T* o = band + ((ptrdiff_t)2 * (k / tw) * wb + 2 * (k % tw)) * nbg;
        for (c = 0; c < nbg; c += VL) {
            V x[16], s0[4], s1[4];
            for (u = 0; u < 16; u++) x[u] = *(const V*)(m + u * pstride + c);
            for (u = 0; u < 4; u++) {                   /* A^T M */
                s0[u] = x[u] + x[4 + u] + x[8 + u];
                s1[u] = x[4 + u] - x[8 + u] - x[12 + u];
            }
            *(V*)(o + c) = s0[0] + s0[1] + s0[2];        /* (A^T M) A */
            *(V*)(o + nbg + c) = s0[1] - s0[2] - s0[3];
            *(V*)(o + wb * nbg + c) = s1[0] + s1[1] + s1[2];
            *(V*)(o + (wb + 1) * nbg + c) = s1[1] - s1[2] - s1[3];
        }
    }
}

/* One work item on Winograd's products: as frc_item; uw: the transformed weights
 * (panel p's 16 positions at uw + woff, C rows of nv * VL values each). */
static void F(frc_wino_item)(const frc_plan_t* P, const T* xp, const T* uw, const T* bias,
                             T* y, T* buf, int n, int q0, int q1, int p0, int p1) {
    const frc_panel_t* pan = P->panels;
    const int C = P->C, Cp = (C + VL - 1) / VL * VL, tc = FRC_WTILES;
    const T* xn = xp + (ptrdiff_t)n * P->xsN;
    int r0, r1, th, tw, nt, k0, k1, u, p, nbg = 0, mr = 8;
    const int MRt[5] = {0, FRC_MR(1), FRC_MR(2), FRC_MR(3), FRC_MR(4)};
    const ptrdiff_t zero = 0;
    T *band, *Vb, *Mb;
    if (P->pool) {
        r0 = q0 * P->psh;
        r1 = (q1 - 1) * P->psh + P->pkh;
    } else {
        r0 = q0;
        r1 = q1;
    }
    th = (r1 - r0 + 1) / 2;
    tw = (P->Wu + 1) / 2;
    nt = th * tw;
    for (p = p0; p < p1; p++) {
        nbg += pan[p].nv * VL;
        if (MRt[pan[p].nv] < mr) mr = MRt[pan[p].nv];
    }
    band = buf;
    Vb = band + (ptrdiff_t)4 * th * tw * nbg;
    Mb = Vb + (ptrdiff_t)16 * tc * Cp;
    for (k0 = 0; k0 < nt; k0 = k1) {
        int cnt, ntile, base, extra, i, i0, r;
        k1 = k0 + tc < nt ? k0 + tc : nt;
        cnt = k1 - k0;
        F(frc_wino_in)(P, xn, r0, tw, k0, k1, Vb, tc, Cp);
        ntile = (cnt + mr - 1) / mr;
        base = cnt / ntile;
        extra = cnt % ntile;
        for (u = 0; u < 16; u++) {
            int boff = 0;
            for (p = p0; p < p1; p++) {
                const frc_panel_t* pp = &pan[p];
                const T* wpan = uw + pp->woff + (ptrdiff_t)u * C * pp->nv * VL;
                for (i0 = 0, i = 0; i < ntile; i++) {
                    const T* arow[FRC_MRMAX];
                    int m = base + (i < extra);
                    for (r = 0; r < m; r++)
                        arow[r] = Vb + ((ptrdiff_t)u * tc + i0 + r) * Cp;
                    F(frc_tiles)[pp->nv - 1][m - 1](arow, &zero, 1, C, wpan,
                                                    Mb + ((ptrdiff_t)u * tc + i0) * nbg + boff,
                                                    nbg);
                    i0 += m;
                }
                boff += pp->nv * VL;
            }
        }
        F(frc_wino_out)(Mb, tc, nbg, tw, k0, k1, band);
    }
    F(frc_band_out)(P, band, 2 * tw, nbg, r0, bias, y, n, q0, q1, p0, p1);
}

/* The padded channels-last copy of image rows [a, b) of the N * Hpi padded rows. */
static void F(frc_pad_rows)(const frc_plan_t* P, const T* x, T* xp, int a, int b) {
    const int C = P->C, W = P->W, Wpi = P->Wpi;
    int rr, w, c;
    for (rr = a; rr < b; rr++) {
        int n = rr / P->Hpi, h = rr % P->Hpi - P->pt;
        T* d = xp + (ptrdiff_t)rr * Wpi * C;
        const T* s;
        if (h < 0 || h >= P->H) {
            memset(d, 0, sizeof(T) * (size_t)Wpi * C);
            continue;
        }
        s = x + (ptrdiff_t)n * P->sN + (ptrdiff_t)h * P->sH;
        if (P->pl) memset(d, 0, sizeof(T) * (size_t)P->pl * C);
        if (Wpi - P->pl - W > 0)
            memset(d + (ptrdiff_t)(P->pl + W) * C, 0, sizeof(T) * (size_t)(Wpi - P->pl - W) * C);
        d += (ptrdiff_t)P->pl * C;
        if (P->sC == 1 && P->sW == C) {
            memcpy(d, s, sizeof(T) * (size_t)W * C);
        } else if (P->sC == 1) {
            for (w = 0; w < W; w++) memcpy(d + (ptrdiff_t)w * C, s + w * P->sW, sizeof(T) * C);
        } else if (C == 1) {
            for (w = 0; w < W; w++) d[w] = s[w * P->sW];
        } else {
            for (c = 0; c < C; c++) {
                const T* sc = s + c * P->sC;
                for (w = 0; w < W; w++) d[(ptrdiff_t)w * C + c] = sc[w * P->sW];
            }
        }
    }
}

/* Zero the border of yb values around the output's rows [a, b) of its N * Hq rows
 * (the rows above the first and below the last of an image included; y points at
 * the interior, rows ysH apart, images ysN apart). */
static void F(frc_zero_border)(const frc_plan_t* P, T* y, int a, int b) {
    const int yb = P->yb, M = P->M, Wq = P->Wq;
    const size_t line = sizeof(T) * (size_t)(Wq + 2 * yb) * M;
    int rr, j;
    for (rr = a; rr < b; rr++) {
        int n = rr / P->Hq, q = rr % P->Hq;
        T* row = y + (ptrdiff_t)n * P->ysN + (ptrdiff_t)q * P->ysH;
        memset(row - (ptrdiff_t)yb * M, 0, sizeof(T) * (size_t)yb * M);
        memset(row + (ptrdiff_t)Wq * M, 0, sizeof(T) * (size_t)yb * M);
        if (q == 0)
            for (j = 1; j <= yb; j++)
                memset(row - (ptrdiff_t)j * P->ysH - (ptrdiff_t)yb * M, 0, line);
        if (q == P->Hq - 1)
            for (j = 1; j <= yb; j++)
                memset(row + (ptrdiff_t)j * P->ysH - (ptrdiff_t)yb * M, 0, line);
    }
}
