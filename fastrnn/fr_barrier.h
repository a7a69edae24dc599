/* Spin barrier for the per-step hand-over between the threads of a team, shared by the
 * inference kernels (fr_kern.h, the unit split) and the training kernels
 * (_backward_gemm.h).  bar[0] counts arrivals, bar[1] is the generation; both start at 0
 * and belong to one parallel region.  The other thread is a few microseconds away, so
 * waiting spins with pause and yields the core after a while (a busy machine).  Measured
 * against OpenMP's barrier in the inference kernel (2-vCPU AVX2 EPYC, B=1, T=100):
 * SimpleRNN H=128/256 0.91-0.96x, GRU H=256 0.96-0.97x, LSTM H=256 0.97-0.99x. */
#ifndef FASTRNN_FR_BARRIER_H
#define FASTRNN_FR_BARRIER_H
#include <sched.h>
static void fr_barrier_wait(int* bar, int n) {
#if defined(__GNUC__) || defined(__clang__)
    int gen = __atomic_load_n(&bar[1], __ATOMIC_ACQUIRE), spins = 0;
    if (n <= 1) return;
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[1], gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&bar[1], __ATOMIC_ACQUIRE) == gen) {
#if defined(__x86_64__) || defined(__i386__)
        if (++spins < 4000) __builtin_ia32_pause();
        else sched_yield();
#else
        if (++spins >= 4000) sched_yield();
#endif
    }
#else
    (void)bar;
    (void)n;
#ifdef _OPENMP
#pragma omp barrier
#endif
#endif
}
#endif
