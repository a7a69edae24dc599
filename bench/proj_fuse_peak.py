"""Whether a batch-1 step gains from running the input projection inside the recurrent
product: a C microbenchmark of the two loops, alone, one after the other and interleaved.

    python bench/proj_fuse_peak.py            # GRU (3 gates) and LSTM (4), 1 and 2 threads

At batch 1 the recurrent product reads each of the thread's weights once a step from L2
for one multiply-add, so the FMA units wait on the stream, while the input projection
(4 steps at a time here: each input weight read once for 4 multiply-adds) is bound by
the FMA units.  The packed kernel runs them one after the other (a chunk of steps'
projection, then the steps).  This program (gcc, OpenMP, AVX-512; the packed kernel's
layout: 16 units x G gates a panel, 8 panels = 128 units a thread, I = H = 256) times
per step: the recurrent product alone ("rec"), the projection alone ("proj": 1/4 of
the thread's panels for 4 steps, a step's share), both one after the other ("seq"), and
both interleaved by hand ("fused": after each two k-steps of a panel's product one
input of a projection panel for two of its steps), with a spin barrier after every step
on 2 threads, as the kernel's steps.  The best of 5 passes of 20000 steps.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SRC = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#define L 16
#define K 256
#define NP 8      /* panels a thread: 128 units */
#define S 4       /* steps a projection panel serves */
#define W (G * L)
typedef __m512 vec;
static int bar[32] __attribute__((aligned(64)));
static void barrier(int n) {
    int gen = __atomic_load_n(&bar[16], __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[16], gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&bar[16], __ATOMIC_ACQUIRE) == gen) __builtin_ia32_pause();
}
/* one panel's recurrent product, two k-steps in flight */
static void rec_panel(const float* wr, const float* h, float* out) {
    vec a[G], b[G];
    for (int g = 0; g < G; g++) { a[g] = _mm512_setzero_ps(); b[g] = _mm512_setzero_ps(); }
    for (int k = 0; k < K; k += 2) {
        vec h0 = _mm512_set1_ps(h[k]), h1 = _mm512_set1_ps(h[k + 1]);
        for (int g = 0; g < G; g++) a[g] = _mm512_fmadd_ps(_mm512_load_ps(wr + k * W + g * L), h0, a[g]);
        for (int g = 0; g < G; g++) b[g] = _mm512_fmadd_ps(_mm512_load_ps(wr + (k + 1) * W + g * L), h1, b[g]);
    }
    for (int g = 0; g < G; g++) _mm512_store_ps(out + g * L, _mm512_add_ps(a[g], b[g]));
}
/* one panel's projection of S steps */
static void proj_panel(const float* wp, const float* xs, float* out) {
    vec p[S * G];
    for (int j = 0; j < S * G; j++) p[j] = _mm512_setzero_ps();
    for (int i = 0; i < K; i++) {
        vec w[G];
        for (int g = 0; g < G; g++) w[g] = _mm512_load_ps(wp + i * W + g * L);
        for (int s = 0; s < S; s++) {
            vec xb = _mm512_set1_ps(xs[s * K + i]);
            for (int g = 0; g < G; g++) p[s * G + g] = _mm512_fmadd_ps(w[g], xb, p[s * G + g]);
        }
    }
    for (int j = 0; j < S * G; j++) _mm512_store_ps(out + j * L, p[j]);
}
/* 4 panels' recurrent products with one projection panel spread over them */
static void fused4(const float* wr, const float* h, float* outr, const float* wp,
                   const float* xs, float* outp) {
    vec p[S * G];
    for (int j = 0; j < S * G; j++) p[j] = _mm512_setzero_ps();
    for (int pp = 0; pp < 4; pp++) {
        const float* wq = wr + (long)pp * K * W;
        vec a[G], b[G];
        for (int g = 0; g < G; g++) { a[g] = _mm512_setzero_ps(); b[g] = _mm512_setzero_ps(); }
        for (int kk = 0; kk < K / 4; kk++) {
            const int k = 4 * kk, i = pp * (K / 4) + kk;
            vec w[G];
            vec h0 = _mm512_set1_ps(h[k]), h1 = _mm512_set1_ps(h[k + 1]);
            for (int g = 0; g < G; g++) a[g] = _mm512_fmadd_ps(_mm512_load_ps(wq + k * W + g * L), h0, a[g]);
            for (int g = 0; g < G; g++) b[g] = _mm512_fmadd_ps(_mm512_load_ps(wq + (k + 1) * W + g * L), h1, b[g]);
            for (int g = 0; g < G; g++) w[g] = _mm512_load_ps(wp + i * W + g * L);
            for (int s = 0; s < S / 2; s++) {
                vec xb = _mm512_set1_ps(xs[s * K + i]);
                for (int g = 0; g < G; g++) p[s * G + g] = _mm512_fmadd_ps(w[g], xb, p[s * G + g]);
            }
            h0 = _mm512_set1_ps(h[k + 2]);
            h1 = _mm512_set1_ps(h[k + 3]);
            for (int g = 0; g < G; g++) a[g] = _mm512_fmadd_ps(_mm512_load_ps(wq + (k + 2) * W + g * L), h0, a[g]);
            for (int g = 0; g < G; g++) b[g] = _mm512_fmadd_ps(_mm512_load_ps(wq + (k + 3) * W + g * L), h1, b[g]);
            for (int s = S / 2; s < S; s++) {
                vec xb = _mm512_set1_ps(xs[s * K + i]);
                for (int g = 0; g < G; g++) p[s * G + g] = _mm512_fmadd_ps(w[g], xb, p[s * G + g]);
            }
        }
        for (int g = 0; g < G; g++) _mm512_store_ps(outr + pp * W + g * L, _mm512_add_ps(a[g], b[g]));
    }
    for (int j = 0; j < S * G; j++) _mm512_store_ps(outp + j * L, p[j]);
}
int main(int argc, char** argv) {
    const int mode = atoi(argv[1]), steps = 20000;
    double best = 1e30;
    #pragma omp parallel
    {
        const int nth = omp_get_num_threads();
        float* wr = aligned_alloc(64, (size_t)NP * K * W * 4);
        float* wp = aligned_alloc(64, (size_t)NP * K * W * 4);
        float* h = aligned_alloc(64, K * 4);
        float* xs = aligned_alloc(64, S * K * 4);
        float* outr = aligned_alloc(64, NP * W * 4);
        float* outp = aligned_alloc(64, (size_t)NP * S * W * 4);
        for (long i = 0; i < (long)NP * K * W; i++) { wr[i] = (i % 7) * 1e-3f; wp[i] = (i % 5) * 1e-3f; }
        for (int i = 0; i < K; i++) h[i] = 0.01f * i;
        for (int i = 0; i < S * K; i++) xs[i] = 0.02f * (i % 11);
        for (int rep = 0; rep < 5; rep++) {
            barrier(nth);
            double t0 = omp_get_wtime();
            for (int t = 0; t < steps; t++) {
                const int q = 2 * (t % S);    /* this step's two projection panels */
                const float* wq0 = wp + (long)q * K * W;
                const float* wq1 = wp + (long)(q + 1) * K * W;
                if (mode == 0 || mode == 2)
                    for (int p = 0; p < NP; p++) rec_panel(wr + (long)p * K * W, h, outr + p * W);
                if (mode == 1 || mode == 2) {
                    proj_panel(wq0, xs, outp + q * S * W);
                    proj_panel(wq1, xs, outp + (q + 1) * S * W);
                }
                if (mode == 3) {
                    fused4(wr, h, outr, wq0, xs, outp + q * S * W);
                    fused4(wr + 4L * K * W, h, outr + 4 * W, wq1, xs, outp + (q + 1) * S * W);
                }
                h[t & (K - 1)] += outr[t & 63] * 1e-9f;
                if (nth > 1) barrier(nth);
            }
            double us = (omp_get_wtime() - t0) / steps * 1e6;
            #pragma omp critical
            if (us < best) best = us;
        }
    }
    printf(" %7.2f", best);
    return 0;
}
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "fuse.c")
        with open(c, "w") as f:
            f.write(SRC)
        exes = {}
        for name, g in (("GRU", 3), ("LSTM", 4)):
            exes[name] = os.path.join(d, name)
            r = subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", f"-DG={g}", c, "-o",
                                exes[name]], capture_output=True, text=True)
            if r.returncode:
                print("this needs gcc with AVX-512 (-march=native):", r.stderr.strip()[:300])
                return 1
        print("us a step (I = H = 256, 128 units a thread):   rec    proj     seq   fused")
        for name, exe in exes.items():
            for nt in (1, 2):
                print(f"{name:4s} {nt} thread(s)                        ", end="", flush=True)
                for mode in (0, 1, 2, 3):
                    subprocess.run([exe, str(mode)], check=True,
                                   env={**os.environ, "OMP_NUM_THREADS": str(nt)})
                print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
