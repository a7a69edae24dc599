"""The float32 FMA peak of this machine's cores (AVX-512 or AVX2), for scale.

    python bench/fma_peak.py            # 1 and 2 threads, GFLOP/s per thread and total

Compiles a small C program (gcc, OpenMP) that runs independent chains of vector fused
multiply-adds per thread (16 on AVX-512's 32 registers, 12 on AVX2's 16: more would
spill to the stack), registers only (no memory traffic), and prints the GFLOP/s
reached.  This is the ceiling any float32 matrix kernel can approach on the core;
numpy's SGEMM figure (bench_speed.py) is lower on AVX-512 machines because scipy's and
numpy's OpenBLAS detect those CPUs as Haswell and run AVX2 kernels.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SRC = r"""
#include <immintrin.h>
#include <stdio.h>
#include <omp.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET(x) _mm512_set1_ps(x)
static float first(vec v) { return _mm512_cvtss_f32(v); }
#else
typedef __m256 vec;
#define LANES 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET(x) _mm256_set1_ps(x)
static float first(vec v) { return _mm256_cvtss_f32(v); }
#endif
int main(void) {
    double total = 0;
    #pragma omp parallel reduction(+:total)
    {
        const int tid = omp_get_thread_num();
        vec b = SET(1.0000001f), c = SET(1e-7f);
        DECL
        long n, N = 100000000;
        double t0, t;
        #pragma omp barrier
        t0 = omp_get_wtime();
        for (n = 0; n < N; n++) { BODY }
        t = omp_get_wtime() - t0;
        total = N * CHAINS * LANES * 2.0 / t / 1e9;
        #pragma omp critical
        printf("  thread %d: %.1f GFLOP/s (%g)\n", tid, total, (double)first(SUM));
    }
    printf("  total: %.1f GFLOP/s\n", total);
    return 0;
}
"""


def _native_avx512() -> bool:
    r = subprocess.run(["gcc", "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                       capture_output=True, text=True, check=True)
    return "__AVX512F__" in r.stdout


def main() -> int:
    CHAINS = 16 if _native_avx512() else 12
    # distinct starting values per chain so the compiler cannot merge the chains
    decl = "vec " + ", ".join(f"a{i} = SET({i + 1}.0f + tid)" for i in range(CHAINS)) + ";"
    body = " ".join(f"a{i} = FMA(a{i}, b, c);" for i in range(CHAINS))
    summ = " + ".join(f"a{i}" for i in range(CHAINS))
    src = (SRC.replace("DECL", decl).replace("BODY", body).replace("SUM", f"({summ})")
           .replace("CHAINS", str(CHAINS)))
    with tempfile.TemporaryDirectory() as d:
        c, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(c, "w") as f:
            f.write(src)
        flags = ["-O2", "-march=native", "-fopenmp"]
        subprocess.run(["gcc", *flags, c, "-o", exe], check=True)
        for nt in (1, 2):
            print(f"{nt} thread(s):", flush=True)
            subprocess.run([exe], check=True, env={**os.environ, "OMP_NUM_THREADS": str(nt)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
