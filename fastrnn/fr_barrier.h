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
#if defined(__GNUC__) || defined(__clang__)
/* one turn of a wait loop: pause, and after ~4000 turns give the core away */
static inline void fr_spin(int* spins) {
#if defined(__x86_64__) || defined(__i386__)
    if (++*spins < 4000) __builtin_ia32_pause();
    else sched_yield();
#else
    if (++*spins >= 4000) sched_yield();
#endif
}
#endif
static void fr_barrier_wait(int* bar, int n) {
#if defined(__GNUC__) || defined(__clang__)
    int gen = __atomic_load_n(&bar[1], __ATOMIC_ACQUIRE), spins = 0;
    if (n <= 1) return;
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[1], gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&bar[1], __ATOMIC_ACQUIRE) == gen) fr_spin(&spins);
#else
    (void)bar;
    (void)n;
#ifdef _OPENMP
#pragma omp barrier
#endif
#endif
}
/* Per-thread progress counters, one 64-byte line each (prog[t * FR_PROG_STRIDE]): a
 * thread publishes how many steps it has finished and waits only for the counters it
 * needs, so it can work on what is already its own in the meantime (the packed kernel's
 * overlapped unit split, fr_kern_t.h).  Same spin-then-yield policy as the barrier. */
#define FR_PROG_STRIDE 16
#if defined(__GNUC__) || defined(__clang__)
#define FR_PROG_OK 1   /* else the callers keep the barrier */
#else
#define FR_PROG_OK 0
#endif
static void fr_progress_publish(int* prog, int tid, int v) {
#if defined(__GNUC__) || defined(__clang__)
    __atomic_store_n(&prog[tid * FR_PROG_STRIDE], v, __ATOMIC_RELEASE);
#else
    prog[tid * FR_PROG_STRIDE] = v;
#endif
}
/* until every other thread of n has published at least v */
static void fr_progress_wait(int* prog, int tid, int n, int v) {
#if defined(__GNUC__) || defined(__clang__)
    int t, spins = 0;
    for (t = 0; t < n; t++) {
        if (t == tid) continue;
        while (__atomic_load_n(&prog[t * FR_PROG_STRIDE], __ATOMIC_ACQUIRE) < v)
            fr_spin(&spins);
    }
#else
    (void)prog; (void)tid; (void)n; (void)v;
#endif
}
#endif
