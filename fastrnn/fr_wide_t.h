/* The batch-lane ("wide") kernel: included by fr_kern_t.h once per (ISA level, float /
 * double), with its macros (V, VI, T, W, F) in scope.
 *
 * Why: the packed kernel above puts hidden units in the vector lanes and broadcasts the
 * batch rows, so every register block of 3 rows streams the thread's whole weight slice
 * again (4 weight vectors per 12 FMAs): at B >= 8 a step re-reads the weights several
 * times from L2/L3 and the weight stream, not the FMA units, sets the pace.  Here the
 * vector lanes are batch rows: the previous h and the step's input are kept transposed
 * ((k, lanes) per panel of W rows, a few KiB in L1), and each weight is a scalar
 * broadcast into FR_WROWS accumulators, so a weight is read once per panel of W rows
 * (a twelfth of a vector per FMA) and the input projection is fused into the step
 * (k runs over the input, then over h).  The loop is FMA-bound wherever the weights sit.
 * Where a thread has two panels, half a group's rows run for both at once (wkb2): each
 * broadcast feeds two FMAs, half the broadcast loads.
 *
 * Packed weights ("row-group" layout, pack_wide in _kernels.pyx): hidden units in groups
 * of UG = FR_WROWS / Gr (Gr rows per unit: 4 LSTM i f g o, 3 GRU r z n, 1 RNN); group g
 * holds [x panel (I, R)][h panel (H, R)][x bias (R)][h bias (R)], row u*Gr + q being gate
 * q of unit g*UG + u (zero past H).  LSTM/RNN add both panels into one set of
 * accumulators (the fused bias is the x bias); GRU (reset_after) keeps them apart:
 * n = tanh(a_x + r * a_h), b_hn in the h bias.
 *
 * Threads own ranges of panels (rows are independent: no barrier) or, where the panels
 * do not divide evenly (LSTM / GRU: fewer than two a thread), ranges of groups for the
 * whole call; then a step needs one barrier (the new h complete before any thread reads
 * it), a chunk of steps one more (its inputs transposed by all threads first).  Finished sequences (packed lengths), masked steps
 * (Keras masking: state carried, output repeated or zero) and padding lanes are
 * blended per lane. */

#define FR_WROWS (FR_NREG >= 32 ? 24 : 12)

/* acc[r] += sum_{k < K} pw[k*R + r] * z[k*W .. +W)  (R compile-time; acc in memory, a
 * panel's accumulators between blocks of k).  Here and in wkb2 a software prefetch runs
 * FR_PREFETCH bytes ahead in the weight stream (AVX-512 only, as the packed kernel's):
 * GRU B=64 T=50 H=512 (6 MiB of weights from L3 every step) 0.92-0.96x on the Intel
 * Xeon, H=256 (weights in L2) neutral (bench/ab_builds.py). */
FR_INLINE void F(wkb)(const int R, const T* pw, const T* z, int K, V* acc) {
    V a[24];
    int k, r;
    /* (unrolled early: as loops, GCC turns these copies into rep movsq) */
#pragma GCC unroll 24
    for (r = 0; r < R; r++) a[r] = acc[r];
#if FR_NREG >= 32   /* AVX-512 only: the AVX2 build unrolled ran GRU B=16 1.2x slower */
#pragma GCC unroll 2
#endif
    for (k = 0; k < K; k++) {
        const V zv = F(vld)(z + (size_t)k * W);
        const T* wk = pw + (size_t)k * R;
        FR_SWPF(wk + FR_PREFETCH / (int)sizeof(T));
#pragma GCC unroll 24
        for (r = 0; r < R; r++) a[r] += wk[r] * zv;
    }
#pragma GCC unroll 24
    for (r = 0; r < R; r++) acc[r] = a[r];
}
FR_FN(void, F(wkb_r), F(wkb), (const T* pw, const T* z, int K, V* acc), (FR_WROWS, pw, z, K, acc))

/* The same for two panels at once, rows [r0, r0 + FR_WROWS / 2) of a group: each
 * broadcast weight feeds both panels' lanes (12 weight loads and 2 input loads per 24
 * FMAs instead of 24 and 1); R: the group's rows (stride of pw per k) */
FR_INLINE void F(wkb2)(const T* pw, int R, int r0, const T* z0, const T* z1, int K,
                       V* acc0, V* acc1) {
    enum { H2 = FR_WROWS / 2 };
    V a[H2], b[H2];
    int k, r;
#pragma GCC unroll 12
    for (r = 0; r < H2; r++) { a[r] = acc0[r0 + r]; b[r] = acc1[r0 + r]; }
    for (k = 0; k < K; k++) {
        const V z0v = F(vld)(z0 + (size_t)k * W), z1v = F(vld)(z1 + (size_t)k * W);
        const T* wk = pw + (size_t)k * R + r0;
        FR_SWPF(wk + FR_PREFETCH / (int)sizeof(T));
#pragma GCC unroll 12
        for (r = 0; r < H2; r++) {   /* (scalar * vector: a broadcast load, no add) */
            a[r] += wk[r] * z0v;
            b[r] += wk[r] * z1v;
        }
    }
#pragma GCC unroll 12
    for (r = 0; r < H2; r++) { acc0[r0 + r] = a[r]; acc1[r0 + r] = b[r]; }
}
/* rows of both halves of a group for panels p and p + 1, else one panel */
FR_INLINE void F(wkb_panels)(const T* pw, const T* z0, const T* z1, int K, V* acc0,
                             V* acc1) {
    if (z1 && fr_wide_pairs) {
        F(wkb2)(pw, FR_WROWS, 0, z0, z1, K, acc0, acc1);
        F(wkb2)(pw, FR_WROWS, FR_WROWS / 2, z0, z1, K, acc0, acc1);
    } else {
        F(wkb_r)(pw, z0, K, acc0);
        if (z1) F(wkb_r)(pw, z1, K, acc1);
    }
}

/* k per block: a group's weights of one block (R * KB values, 12 KiB) stay in L1 while
 * every panel of the thread runs through them */
#define FR_WKB ((12 << 10) / (FR_WROWS * (int)sizeof(T)))

/* lane b of step s: its packed row and whether it runs (not finished, not masked) */
FR_INLINE void F(wide_lanes)(const FR_SEQ* q, int s, int b0, int b1, ptrdiff_t* rows,
                             unsigned char* act) {
    int b;
    for (b = b0; b < b1; b++) {
        const int t = F(in_time)(q, s, b);
        rows[b] = q->offsets[t] + b;
        act[b] = q->mask ? (q->mask[rows[b]] != 0) : 1;
    }
}

/* inputs of steps [s0, s1), (step, panel) pairs [i0, i1) of them, transposed into
 * xt[(s - s0) * nP + p][k][lane] (zero for lanes past the step's rows) */
static void F(wide_transpose)(const FR_SEQ* q, int s0, int i0, int i1, int nP) {
    const int I = q->I;
    int i, l, k;
    for (i = i0; i < i1; i++) {
        const int s = s0 + i / nP, p = i % nP;
        const int n = (int)q->nsteps[s];
        T* dst = q->xt + (size_t)i * I * W;
        for (l = 0; l < W; l++) {
            const int b = p * W + l;
            if (b < n) {
                const T* src = q->x + (q->offsets[F(in_time)(q, s, b)] + b) * q->x_ld;
                for (k = 0; k < I; k++) dst[(size_t)k * W + l] = src[k];
            } else {
                for (k = 0; k < I; k++) dst[(size_t)k * W + l] = 0;
            }
        }
    }
}

/* rows per unit of the batch-lane packing's groups: 4 LSTM, 3 GRU, 1 SimpleRNN; GRU
 * reset_after=False (rz_split) has two sets of groups, r and z (2), then n (1) */
FR_INLINE int F(wide_gr)(const fr_cell* cl, int phase) {
    if (cl->rz_split) return phase == 1 ? 2 : 1;
    return cl->cell == 1 ? 4 : (cl->cell == 2 ? 3 : 1);
}

/* one step s for unit groups [g0, g1) and panels [p0, p1): reads ht[cur], writes
 * ht[1 - cur].  acc: scratch of (p1 - p0) * 2 * FR_WROWS vectors.  GRU reset_after=False
 * runs it twice a step: phase 1 over the r, z groups (writes r * h and z, in the lane
 * layout, to q->rh and q->zb), then (every unit's r * h complete) phase 2 over the n
 * groups, whose h panel multiplies r * h; phase 0 otherwise. */
static void F(wide_step)(const fr_cell* cl, const FR_SEQ* q, int s, int s0, int cur,
                         int g0, int g1, int p0, int p1, const ptrdiff_t* rows,
                         const unsigned char* act, const unsigned char* oflag, V* acc,
                         int phase) {
    const int R = FR_WROWS, KB = FR_WKB;
    const int Gr = F(wide_gr)(cl, phase), UG = R / Gr;
    const int H = cl->H, I = q->I, B = q->B, nP = (B + W - 1) / W;
    const int n = (int)q->nsteps[s];
    const int split = cl->cell == 2 && !cl->rz_split;
    /* panels with a running row: [p0, pe) */
    const int pe = (n + W - 1) / W < p1 ? (n + W - 1) / W : p1;
    const size_t S = (size_t)(I + H + 2) * R;
    /* phase 2: the n groups follow the r, z groups */
    const T* wp = (const T*)cl->wp + (phase == 2 ? (size_t)((H + R / 2 - 1) / (R / 2)) * S : 0);
    const T* hsrc = phase == 2 ? q->rh : q->ht + (size_t)cur * nP * H * W;
    const T* xt = q->xt + (size_t)(s - s0) * nP * I * W;
    int g, p, u, l, r, k0;
    for (g = g0; g < g1; g++) {
        const T* pk = wp + (size_t)g * S;
        const T* bx = pk + (size_t)(I + H) * R;
        const int j0 = g * UG, nu = H - j0 < UG ? H - j0 : UG;
        /* panels whose rows have all finished: carry h */
        for (p = pe > p0 ? pe : p0; p < p1 && phase != 1; p++) {
            const T* hz = q->ht + ((size_t)cur * nP + p) * H * W;
            T* hn = q->ht + ((size_t)(1 - cur) * nP + p) * H * W;
            memcpy(hn + (size_t)j0 * W, hz + (size_t)j0 * W, sizeof(T) * nu * W);
        }
        for (p = p0; p < pe; p++) {
            V* a = acc + (size_t)(p - p0) * 2 * R;
            for (r = 0; r < R; r++) {
                a[r] = F(vset1)(bx[r]);
                a[R + r] = F(vset1)(bx[R + r]);
            }
        }
        for (k0 = 0; k0 < I; k0 += KB) {
            const int kn = I - k0 < KB ? I - k0 : KB;
            for (p = p0; p < pe; p += 2)
                F(wkb_panels)(pk + (size_t)k0 * R, xt + ((size_t)p * I + k0) * W,
                              p + 1 < pe ? xt + ((size_t)(p + 1) * I + k0) * W : NULL, kn,
                              acc + (size_t)(p - p0) * 2 * R,
                              acc + (size_t)(p + 1 - p0) * 2 * R);
        }
        for (k0 = 0; k0 < H; k0 += KB) {
            const int kn = H - k0 < KB ? H - k0 : KB;
            for (p = p0; p < pe; p += 2)
                F(wkb_panels)(pk + (size_t)(I + k0) * R,
                              hsrc + ((size_t)p * H + k0) * W,
                              p + 1 < pe ? hsrc + ((size_t)(p + 1) * H + k0) * W : NULL, kn,
                              acc + (size_t)(p - p0) * 2 * R + (split ? R : 0),
                              acc + (size_t)(p + 1 - p0) * 2 * R + (split ? R : 0));
        }
        for (p = p0; p < pe; p++) {
            const T* hz = q->ht + ((size_t)cur * nP + p) * H * W;
            T* hn = q->ht + ((size_t)(1 - cur) * nP + p) * H * W;
            T* cz = q->ct + (size_t)p * H * W;
            const V* a = acc + (size_t)(p - p0) * 2 * R;
            const V* a2 = a + R;
            VI m;
            T res[24][W];
            for (l = 0; l < W; l++) {
                const int b = p * W + l;
                m[l] = (b < n && act[b]) ? -1 : 0;
            }
            if (phase == 1) {
                /* r * h and z of the step's lanes (the masked ones are blended in phase 2) */
                for (u = 0; u < nu; u++) {
                    const size_t j = ((size_t)p * H + j0 + u) * W;
                    const V rv = FR_ACT_F(cl, F(vclip)(a[2 * u], (T)cl->clip));
                    F(vst)(q->rh + j, rv * F(vld)(hz + (size_t)(j0 + u) * W));
                    F(vst)(q->zb + j, FR_ACT_F(cl, F(vclip)(a[2 * u + 1], (T)cl->clip)));
                }
                continue;
            }
            for (u = 0; u < nu; u++) {
                const size_t j = (size_t)(j0 + u) * W;
                const V hp = F(vld)(hz + j);
                V hv;
                if (phase == 2) {
                    const V z = F(vld)(q->zb + (size_t)p * H * W + j);
                    const V nv = FR_ACT_G(cl, F(vclip)(a[u], (T)cl->clip));
                    hv = (F(vset1)(1) - z) * nv + z * hp;
                } else if (cl->cell == 1) {
                    const V cp = F(vld)(cz + j);
                    V ct;
                    if (cl->fast) {
                        hv = F(lstm_fast)(a[4 * u], a[4 * u + 1], a[4 * u + 2], a[4 * u + 3],
                                          cp, &ct);
                    } else {
                        /* clip, peepholes (one unit's weights, broadcast), input_forget */
                        const T* pe = (const T*)cl->peep;
                        const int k = j0 + u;
                        hv = F(lstm_opt)(cl, a[4 * u], a[4 * u + 1], a[4 * u + 2],
                                         a[4 * u + 3], cp, &ct, pe != NULL,
                                         F(vset1)(pe ? pe[k] : 0),
                                         F(vset1)(pe ? pe[H + k] : 0),
                                         F(vset1)(pe ? pe[2 * H + k] : 0));
                    }
                    F(vst)(cz + j, F(vsel)(m, ct, cp));
                } else if (cl->cell == 2) {
                    if (cl->fast)
                        hv = F(gru_fast)(a[3 * u] + a2[3 * u], a[3 * u + 1] + a2[3 * u + 1],
                                         a[3 * u + 2], a2[3 * u + 2], hp);
                    else
                        hv = F(gru_opt)(cl, a[3 * u] + a2[3 * u], a[3 * u + 1] + a2[3 * u + 1],
                                        a[3 * u + 2], a2[3 * u + 2], hp);
                } else {
                    hv = F(rnn_fast)(cl->rnn_relu, F(vclip)(a[u], (T)cl->clip));
                }
                hv = F(vsel)(m, hv, hp);
                F(vst)(hn + j, hv);
                *(V*)res[u] = hv;
            }
            if (q->out) {
                const int nl = n - p * W < W ? n - p * W : W;
                for (l = 0; l < nl; l++) {
                    const int b = p * W + l;
                    T* o = q->out + rows[b] * q->out_ld + q->out_col + j0;
                    if (oflag[b])
                        for (u = 0; u < nu; u++) o[u] = res[u][l];
                    else
                        for (u = 0; u < nu; u++) o[u] = 0;
                }
            }
        }
    }
}

/* the steps of one thread: groups [g0, g1) of panels [p0, p1).  Split by groups (sync):
 * every thread reads every panel, so the inputs are transposed by all threads and each
 * step ends at a barrier; split by panels (rows are independent): no barrier at all. */
static void F(wide_run)(const fr_cell* cl, FR_SEQ* q, int g0, int g1, int gn0, int gn1,
                        int p0, int p1, int tid, int nth, int sync, ptrdiff_t* rows,
                        unsigned char* act, unsigned char* seen, unsigned char* oflag,
                        V* acc) {
    const int nP = (q->B + W - 1) / W;
    int s0, s, b, cur = 0;
    for (s0 = 0; s0 < q->nT; s0 += q->chunk) {
        const int s1 = s0 + q->chunk < q->nT ? s0 + q->chunk : q->nT;
        if (sync) {
            const int ni = (s1 - s0) * nP;
            F(wide_transpose)(q, s0, (int)((long)tid * ni / nth),
                              (int)((long)(tid + 1) * ni / nth), nP);
#ifdef _OPENMP
            #pragma omp barrier
#endif
        } else {
            for (s = s0; s < s1; s++)
                F(wide_transpose)(q, s0, (s - s0) * nP + p0, (s - s0) * nP + p1, nP);
        }
        for (s = s0; s < s1; s++) {
            const int n = (int)q->nsteps[s];
            const int bl = p0 * W, bh = p1 * W < n ? p1 * W : n;
            F(wide_lanes)(q, s, bl, bh, rows, act);
            for (b = bl; b < bh; b++) {
                seen[b] |= act[b];
                oflag[b] = act[b] || (!q->mask_zero && seen[b]);
            }
            if (cl->rz_split) {
                /* [g0, g1): r, z groups; [gn0, gn1): n groups */
                F(wide_step)(cl, q, s, s0, cur, g0, g1, p0, p1, rows, act, oflag, acc, 1);
#ifdef _OPENMP
                if (sync) {
                    #pragma omp barrier
                }
#endif
                F(wide_step)(cl, q, s, s0, cur, gn0, gn1, p0, p1, rows, act, oflag, acc, 2);
            } else {
                F(wide_step)(cl, q, s, s0, cur, g0, g1, p0, p1, rows, act, oflag, acc, 0);
            }
            cur = 1 - cur;
#ifdef _OPENMP
            if (sync) {
                #pragma omp barrier
            }
#endif
        }
    }
}

/* The whole layer (one direction).  q->xt (chunk * nP * I * W), q->ht (2 * nP * H * W),
 * q->ct (nP * H * W, LSTM) are caller-allocated scratch; returns -1 when the per-thread
 * lane arrays cannot be allocated. */
static int F(fr_wide_layer)(const fr_cell* cl, FR_SEQ* q, int nt) {
    const int B = q->B, H = cl->H, nP = (B + W - 1) / W;
    const int UG = FR_WROWS / F(wide_gr)(cl, 1);
    const int nG = (H + UG - 1) / UG;
    const int nGn = (H + FR_WROWS - 1) / FR_WROWS;     /* rz_split: the n groups */
    /* split by panels when every thread gets as many (no barriers), LSTM / GRU only
     * from two panels a thread; else by groups.  With one panel a thread, each thread
     * streams all the gate weights for one panel of rows: measured (Intel Xeon, AVX-512,
     * 2 threads, time / packed kernel's) float64 B=16 LSTM 1.05 by panels, 0.84 by
     * groups, GRU 1.05 / 0.83, float32 B=32 GRU H=384 0.90 / 0.82, LSTM H=256 0.93 /
     * 0.90; at two panels a thread even (LSTM B=64 H=512 0.70 / 0.69); SimpleRNN's
     * panels win from one a thread (AVX2 B=16: 0.79 / 1.10) */
    const int bypanel = nt > 1 && nP >= (cl->cell == 0 ? nt : 2 * nt) && nP % nt == 0
                        && !fr_wide_force_groups && !q->wide_groups;
    int nthr = bypanel ? nt : (nt < nG ? nt : nG), b, j;
    if ((long)cl->G * H * (cl->K + q->I) * B < fr_min_par_work) nthr = 1;
    if (nthr < 1) nthr = 1;
    /* states into the lane layout (padding lanes zero) */
    memset(q->ht, 0, sizeof(T) * 2 * nP * H * W);
    for (b = 0; b < B; b++)
        for (j = 0; j < H; j++)
            q->ht[((size_t)(b / W) * H + j) * W + b % W] = q->h[(size_t)b * H + j];
    if (cl->cell == 1) {
        memset(q->ct, 0, sizeof(T) * nP * H * W);
        for (b = 0; b < B; b++)
            for (j = 0; j < H; j++)
                q->ct[((size_t)(b / W) * H + j) * W + b % W] = q->c[(size_t)b * H + j];
    }
    {
        /* per thread: panel accumulators (nP * 2R vectors), then the lanes' packed rows
         * and active / seen / output flags */
        const size_t accb = (size_t)nP * 2 * FR_WROWS * sizeof(V);
        const size_t per = (accb + (sizeof(ptrdiff_t) + 3) * (size_t)B + 63) & ~(size_t)63;
        unsigned char* base = (unsigned char*)fr_amalloc((size_t)nthr * per);
        if (base == NULL) return -1;
        memset(base, 0, (size_t)nthr * per);
#ifdef _OPENMP
        fr_place* pl = fr_place_team(nthr);
        #pragma omp parallel num_threads(nthr) if (nthr > 1)
#endif
        {
            const int tid = fr_thread_id(), nth = fr_nthreads();
#ifdef _OPENMP
            fr_place_join(pl, tid);
#endif
            unsigned char* ln = base + (size_t)tid * per;
            unsigned char* fl = ln + accb + sizeof(ptrdiff_t) * (size_t)B;
            int g0 = 0, g1 = nG, gn0 = 0, gn1 = nGn, p0 = 0, p1 = nP;
            if (nth > 1 && bypanel) {
                p0 = (int)((long)tid * nP / nth);
                p1 = (int)((long)(tid + 1) * nP / nth);
            } else if (nth > 1) {
                g0 = (int)((long)tid * nG / nth);
                g1 = (int)((long)(tid + 1) * nG / nth);
                gn0 = (int)((long)tid * nGn / nth);
                gn1 = (int)((long)(tid + 1) * nGn / nth);
            }
            F(wide_run)(cl, q, g0, g1, gn0, gn1, p0, p1, tid, nth, nth > 1 && !bypanel,
                        (ptrdiff_t*)(ln + accb), fl, fl + B, fl + 2 * (size_t)B, (V*)ln);
        }
        free(base);
    }
    {
        const T* hf = q->ht + (size_t)(q->nT & 1) * nP * H * W;
        for (b = 0; b < B; b++)
            for (j = 0; j < H; j++)
                q->h[(size_t)b * H + j] = hf[((size_t)(b / W) * H + j) * W + b % W];
        if (cl->cell == 1)
            for (b = 0; b < B; b++)
                for (j = 0; j < H; j++)
                    q->c[(size_t)b * H + j] = q->ct[((size_t)(b / W) * H + j) * W + b % W];
    }
    return 0;
}

#undef FR_WROWS
#undef FR_WKB
