/* The L2 cache of a core in bytes (sysconf; 0 when unknown), read once.  Shared by the
 * inference kernels (fr_kern.h: the overlapped unit split) and the training kernels
 * (_backward_gemm.h: the weight-gradient blocking, the backward's row split). */
#ifndef FASTRNN_FR_CACHE_H
#define FASTRNN_FR_CACHE_H
#include <unistd.h>
static long fr_l2_size = -1;
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
#endif
