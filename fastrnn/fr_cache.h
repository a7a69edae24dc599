/* Cache facts shared by the inference kernels (fr_kern.h) and the training kernels
 * (_backward_gemm.h).
 * fr_l2_bytes: the L2 cache of a core in bytes (sysconf; 0 when unknown), read once (the
 * overlapped unit split; the weight-gradient blocking, the backward's row split; the
 * pair rule, with fr_l1d_bytes).
 * fr_amalloc: scratch that starts on a cache line (free() releases it): malloc's 16-byte
 * alignment makes every 64-byte vector load or store of a buffer touch two lines.
 * fr_keep_get / fr_keep_put / fr_keep_release: scratch kept between calls (below). */
#ifndef FASTRNN_FR_CACHE_H
#define FASTRNN_FR_CACHE_H
#include <stdlib.h>
#include <unistd.h>
static void* fr_amalloc(size_t bytes) {
    void* p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}
/* a sysconf value read once into *cache (< 0: not read yet); name < 0 or a failed read:
 * 0 (unknown) */
static long fr_sysconf_once(long* cache, int name) {
    if (*cache < 0) {
        long v = name >= 0 ? sysconf(name) : 0;
        *cache = v > 0 ? v : 0;
    }
    return *cache;
}
#ifdef _SC_LEVEL2_CACHE_SIZE
#define FR_SC_L2 _SC_LEVEL2_CACHE_SIZE
#else
#define FR_SC_L2 (-1)
#endif
#ifdef _SC_LEVEL1_DCACHE_SIZE
#define FR_SC_L1D _SC_LEVEL1_DCACHE_SIZE
#else
#define FR_SC_L1D (-1)
#endif
static long fr_l2_size = -1, fr_l1d_size = -1;
static long fr_l2_bytes(void) { return fr_sysconf_once(&fr_l2_size, FR_SC_L2); }
/* the L1 data cache of a core in bytes (sysconf; 0 when unknown), read once */
static long fr_l1d_bytes(void) { return fr_sysconf_once(&fr_l1d_size, FR_SC_L1D); }
/* 1 on an AMD CPU of family 0x19 (Zen 3, Zen 4), read once by CPUID.  Its Zen 4 runs a
 * 512-bit vector instruction as two 256-bit halves (Zen 5 server parts, family 0x1A, run
 * it full width; Zen 3 has no AVX-512): the 32 registers without the doubled FMA
 * throughput, so the kernel choices measured on full-width AVX-512 (the batch-lane
 * kernel's, the LSTM route's) take their own rules there; and the packed kernel's
 * overlapped unit split (fr_overlap_auto) measured slower there at every size. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define FR_HAVE_CPUID 1
#else
#define FR_HAVE_CPUID 0
#endif
static int fr_f19_cache = -1;      /* < 0: not read yet; _kernels._set_amd_f19 (tests) */
static int fr_amd_f19(void) {
    if (fr_f19_cache < 0) {
        fr_f19_cache = 0;
#if FR_HAVE_CPUID
        unsigned a = 0, b = 0, c = 0, d = 0, fam;
        /* vendor "AuthenticAMD": ebx "Auth" */
        if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u
                && __get_cpuid(1, &a, &b, &c, &d)) {
            fam = (a >> 8) & 0xfu;
            if (fam == 0xfu) fam += (a >> 20) & 0xffu;
            fr_f19_cache = fam == 0x19u;
        }
#endif
    }
    return fr_f19_cache;
}

/* 1 on an AMD CPU of any family (CPUID vendor "AuthenticAMD"), read once: the packed
 * kernel's overlapped unit split (fr_overlap_auto) measured slower on every AMD tried
 * (Zen 3 / 4, family 0x19; Zen 5, family 0x1A). */
static int fr_amd_cache = -1;      /* < 0: not read yet; _kernels._set_amd (tests) */
static int fr_amd(void) {
    if (fr_amd_cache < 0) {
        fr_amd_cache = 0;
#if FR_HAVE_CPUID
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u) fr_amd_cache = 1;
#endif
    }
    return fr_amd_cache;
}

/* Scratch blocks kept between calls, one per slot (a void* the caller owns): large
 * per-call buffers come back to the next call instead of fresh pages from the OS, a page
 * fault each (measured: up to 15k faults, +50 ms, in a 60 ms LSTM backward; ~790 a call,
 * ~2 ms, for a bidirectional layer's projected inputs when glibc trimmed them away).
 * fr_keep_get takes the slot's block when it is large enough (else allocates, 64-byte
 * aligned), fr_keep_put returns it to the slot (or frees it when the slot is taken, e.g.
 * by a concurrent call); blocks over 512 MiB are never kept.  Lock-free (atomic
 * exchange); the block's size is in its first 64 bytes. */
static void* fr_keep_get(void** slot, size_t bytes) {
    void* p = NULL;
#if defined(__GNUC__) || defined(__clang__)
    p = __atomic_exchange_n(slot, (void*)NULL, __ATOMIC_ACQ_REL);
#endif
    if (p && *(size_t*)p >= bytes) return (char*)p + 64;
    free(p);
    p = fr_amalloc(bytes + 64);
    if (!p) return NULL;
    *(size_t*)p = bytes;
    return (char*)p + 64;
}
static void fr_keep_put(void** slot, void* q) {
    void* p;
    if (!q) return;
    p = (char*)q - 64;
#if defined(__GNUC__) || defined(__clang__)
    if (*(size_t*)p <= ((size_t)512 << 20)) {
        void* expected = NULL;
        if (__atomic_compare_exchange_n(slot, &expected, p, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return;
    }
#endif
    free(p);
}
/* Free the kept blocks of n slots (those of calls running now are returned and kept
 * later); returns the bytes freed. */
static size_t fr_keep_release(void** slots, int n) {
    size_t total = 0;
    int i;
    for (i = 0; i < n; i++) {
        void* p = NULL;
#if defined(__GNUC__) || defined(__clang__)
        p = __atomic_exchange_n(&slots[i], (void*)NULL, __ATOMIC_ACQ_REL);
#endif
        if (p) { total += *(size_t*)p + 64; free(p); }
    }
    return total;
}
#endif
