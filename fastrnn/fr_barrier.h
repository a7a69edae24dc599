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
/* ------------------------------------------------------------------ worker placement
 * A team's workers keep off the CPU their master runs on when the region starts (Linux
 * with OpenMP).  Why: on a virtual machine whose scheduler packs woken threads onto busy
 * vCPUs (the benchmark machine, a Firecracker guest), the OpenMP worker woken after a
 * pause landed on its master's vCPU, and the per-step spin hand-over then shared one
 * vCPU until the load balancer moved it: GRU B=1 T=100 H=256 on 2 threads took ~9 ms
 * instead of ~0.5 ms on the second call after a 0.15 s pause.  Each worker's affinity is
 * the master's minus the master's current CPU: set by the worker itself in its first
 * region, and by the master before a region when the master has moved since.  Nothing is
 * set where that leaves no CPU, or with fr_place_mode 0 (FASTRNN_WORKER_PLACEMENT=0).
 * The master's own affinity is never changed.  Cost a region: one sched_getcpu. */
static int fr_place_mode = 1;
static int fr_place_cpu_test = -1;   /* test hook: >= 0 stands for the master's CPU */
#if defined(__linux__) && defined(_OPENMP) && defined(CPU_SETSIZE)
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
#define FR_PLACE_MAX 64
typedef struct {
    int cpu;                    /* the master's CPU at this region's start; -1: no placing */
    int have_mask;
    cpu_set_t mask;             /* the master's affinity, read when a worker is placed */
    int tid[FR_PLACE_MAX];      /* per team slot: the OS thread placed there, 0: none */
    int away[FR_PLACE_MAX];     /* the master CPU its mask leaves out */
} fr_place;
static __thread fr_place fr_place_rec = {-1, 0};
static __thread int fr_self_tid;

static int fr_place_mask(const fr_place* p, int cpu, cpu_set_t* m) {
    *m = p->mask;
    CPU_CLR(cpu, m);
    return CPU_COUNT(m) > 0;
}

/* master, before a region of nthr threads: the record its workers read */
static fr_place* fr_place_team(int nthr) {
    fr_place* p = &fr_place_rec;
    cpu_set_t m;
    int t;
    p->cpu = -1;
    if (!fr_place_mode || nthr < 2) return p;
    p->cpu = fr_place_cpu_test >= 0 ? fr_place_cpu_test : sched_getcpu();
    if (p->cpu < 0 || p->cpu >= CPU_SETSIZE) {
        p->cpu = -1;
        return p;
    }
    /* the master's affinity now, where a slot is new or its worker has to move (a
     * steady team: no system call but sched_getcpu) */
    for (t = 1; t < nthr && t < FR_PLACE_MAX; t++)
        if (!p->tid[t] || p->away[t] != p->cpu) break;
    if (t < nthr && t < FR_PLACE_MAX)
        p->have_mask = sched_getaffinity(0, sizeof p->mask, &p->mask) == 0;
    if (!p->have_mask || !fr_place_mask(p, p->cpu, &m)) {
        p->cpu = -1;
        return p;
    }
    for (t = 1; t < nthr && t < FR_PLACE_MAX; t++) {
        if (!p->tid[t] || p->away[t] == p->cpu) continue;
        /* the master moved onto this worker's CPUs: move the worker (if it is still a
         * thread of this process: not after a fork) */
        if (syscall(SYS_tgkill, (long)getpid(), (long)p->tid[t], 0) == 0
            && sched_setaffinity(p->tid[t], sizeof m, &m) == 0)
            p->away[t] = p->cpu;
        else
            p->tid[t] = 0;
    }
    return p;
}

/* thread t of the team, first thing in the region */
static void fr_place_join(fr_place* p, int t) {
    cpu_set_t m;
    if (t <= 0 || t >= FR_PLACE_MAX || p->cpu < 0) return;
    if (!fr_self_tid) fr_self_tid = (int)syscall(SYS_gettid);
    if (p->tid[t] == fr_self_tid) return;
    if (fr_place_mask(p, p->cpu, &m) && sched_setaffinity(0, sizeof m, &m) == 0) {
        p->tid[t] = fr_self_tid;
        p->away[t] = p->cpu;
    }
}
/* test hook: the calling thread's record (its CPU at its last placed region, -1: none;
 * slot t's thread and the CPU its mask leaves out) */
static int fr_place_get(int t, int* tid, int* away) {
    const fr_place* p = &fr_place_rec;
    *tid = t > 0 && t < FR_PLACE_MAX ? p->tid[t] : 0;
    *away = t > 0 && t < FR_PLACE_MAX ? p->away[t] : -1;
    return p->cpu;
}
#else
typedef int fr_place;
static fr_place* fr_place_team(int nthr) { (void)nthr; return NULL; }
static void fr_place_join(fr_place* p, int t) { (void)p; (void)t; }
static int fr_place_get(int t, int* tid, int* away) { (void)t; *tid = 0; *away = -1; return -1; }
#endif
#endif
