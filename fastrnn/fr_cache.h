/* Cache facts shared by the inference kernels (fr_kern.h) and the training kernels
 * (_backward_gemm.h).
 * fr_l2_bytes: the L2 cache of a core in bytes (sysconf; 0 when unknown), read once (the
 * overlapped unit split; the weight-gradient blocking, the backward's row split; the
 * pair rule, with fr_l1d_bytes).
 * fr_amalloc: scratch that starts on a cache line (free() releases it): malloc's 16-byte
 * alignment makes every 64-byte vector load or store of a buffer touch two lines. */
#ifndef FASTRNN_FR_CACHE_H
#define FASTRNN_FR_CACHE_H
#include <stdlib.h>
#include <unistd.h>
static void* fr_amalloc(size_t bytes) {
    void* p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}
static long fr_l2_size = -1, fr_l1d_size = -1;
static long fr_l2_bytes(void) {
    if (fr_l2_size < 0) {
        long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
        l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        fr_l2_size = l2 > 0 ? l2 : 0;
    }
    return fr_l2_size;
}
/* the L1 data cache of a core in bytes (sysconf; 0 when unknown), read once */
static long fr_l1d_bytes(void) {
    if (fr_l1d_size < 0) {
        long l1 = 0;
#ifdef _SC_LEVEL1_DCACHE_SIZE
        l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
#endif
        fr_l1d_size = l1 > 0 ? l1 : 0;
    }
    return fr_l1d_size;
}
#endif
