/* The CPU's ISA level for the kernels' run-time dispatch, probed once: 2 AVX-512 (F, VL,
 * BW, DQ), 1 AVX2 + FMA, 0 otherwise.  Shared by the recurrent kernels (fr_kern.h) and the
 * Conv kernel (_conv_kern.h); included only where GCC / clang build for x86-64. */
#ifndef FR_CPU_H
#define FR_CPU_H
static int fr_cpu_level_cache = -1;
static int fr_cpu_level(void) {
    if (fr_cpu_level_cache < 0) {
        int l = 0;
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
        if (l && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) l = 2;
        fr_cpu_level_cache = l;
    }
    return fr_cpu_level_cache;
}
#endif
