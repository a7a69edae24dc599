"""How fast a core streams weights through a matrix-vector product: the B=1 floor.

    python bench/stream_peak.py          # KiB per thread 64 .. 4096, 1 and 2 threads

At batch 1 every weight of the recurrent matrix is read once per time step for one
multiply-add, so a step costs at least (its weights' bytes) / (the rate a core reads
them from its caches).  This compiles a small C program (gcc, OpenMP) that runs that
product the way the packed kernel does (16 or 8 units x 4 gates a panel, two k-steps in
flight, one output vector per panel) over a matrix of the given size per thread, many
passes in a row, and prints the best microseconds per pass and GB/s per thread.  With 2
threads each runs its own matrix (the unit split's halves) and the threads meet at a
spin barrier after every pass, as the kernel's time steps do.  Compare the LSTM B=1
H=256 recurrent step (512 KiB a thread on 2 threads) with the matching row.
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
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET(x) _mm512_set1_ps(x)
#define LOAD(p) _mm512_load_ps(p)
#define STORE(p, v) _mm512_store_ps(p, v)
#define ZERO() _mm512_setzero_ps()
#define ADD(a, b) _mm512_add_ps(a, b)
#else
typedef __m256 vec;
#define LANES 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET(x) _mm256_set1_ps(x)
#define LOAD(p) _mm256_load_ps(p)
#define STORE(p, v) _mm256_store_ps(p, v)
#define ZERO() _mm256_setzero_ps()
#define ADD(a, b) _mm256_add_ps(a, b)
#endif
static int bar[2] __attribute__((aligned(64)));
static void barrier(int n) {
    int gen = __atomic_load_n(&bar[1], __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[1], gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&bar[1], __ATOMIC_ACQUIRE) == gen) __builtin_ia32_pause();
}
int main(int argc, char** argv) {
    const long kib = atol(argv[1]);
    const int K = 256, G = 4, P = LANES * G;          /* k length, floats a k-step */
    const long panels = kib * 1024 / (4L * K * P) > 0 ? kib * 1024 / (4L * K * P) : 1;
    const int passes = (int)(200000000L / (panels * K * P) + 20);
    double best_us = 1e30;
    #pragma omp parallel
    {
        const int nt = omp_get_num_threads();
        float* w = aligned_alloc(64, sizeof(float) * panels * K * P);
        float* h = aligned_alloc(64, sizeof(float) * 2 * K);
        float* y = aligned_alloc(64, sizeof(float) * panels * LANES);
        long i;
        int p, k, r;
        double t0, us;
        for (i = 0; i < panels * K * P; i++) w[i] = (float)(i % 7) * 1e-3f;
        for (i = 0; i < 2 * K; i++) h[i] = 1e-2f;
        for (r = 0; r < 3; r++) {
            #pragma omp barrier
            t0 = omp_get_wtime();
            for (i = 0; i < passes; i++) {
                const float* hp = h + (i & 1) * K;
                for (p = 0; p < panels; p++) {
                    const float* wp = w + (long)p * K * P;
                    vec a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO();
                    vec b0 = ZERO(), b1 = ZERO(), b2 = ZERO(), b3 = ZERO();
                    for (k = 0; k < K; k += 2, wp += 2 * P) {
                        vec x0 = SET(hp[k]), x1 = SET(hp[k + 1]);
                        a0 = FMA(LOAD(wp), x0, a0);
                        a1 = FMA(LOAD(wp + LANES), x0, a1);
                        a2 = FMA(LOAD(wp + 2 * LANES), x0, a2);
                        a3 = FMA(LOAD(wp + 3 * LANES), x0, a3);
                        b0 = FMA(LOAD(wp + P), x1, b0);
                        b1 = FMA(LOAD(wp + P + LANES), x1, b1);
                        b2 = FMA(LOAD(wp + P + 2 * LANES), x1, b2);
                        b3 = FMA(LOAD(wp + P + 3 * LANES), x1, b3);
                    }
                    STORE(y + p * LANES, ADD(ADD(ADD(a0, b0), ADD(a1, b1)),
                                             ADD(ADD(a2, b2), ADD(a3, b3))));
                }
                h[((i + 1) & 1) * K + (i % K)] = y[i % (panels * LANES)] * 1e-9f;
                if (nt > 1) barrier(nt);
            }
            us = (omp_get_wtime() - t0) / passes * 1e6;
            #pragma omp critical
            if (us < best_us) best_us = us;
        }
    }
    const double bytes = 4.0 * panels * K * P;
    printf("%6ld KiB a thread: %8.2f us a pass, %6.1f GB/s a thread\n",
           (long)(bytes / 1024), best_us, bytes / best_us / 1e3);
    return 0;
}
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        c, exe = os.path.join(d, "stream.c"), os.path.join(d, "stream")
        with open(c, "w") as f:
            f.write(SRC)
        subprocess.run(["gcc", "-O2", "-march=native", "-fopenmp", c, "-o", exe], check=True)
        for nt in (1, 2):
            print(f"{nt} thread(s){' (a barrier after every pass)' if nt > 1 else ''}:",
                  flush=True)
            for kib in (64, 256, 512, 768, 1024, 2048, 4096):
                subprocess.run([exe, str(kib)], check=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(nt)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
