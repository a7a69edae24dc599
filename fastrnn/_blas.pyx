# cython: language_level=3
"""Row-major GEMM shim over ``scipy.linalg.cython_blas``.

``gemm_rm`` computes ``C (m, n) = alpha * op(A) @ op(B) + beta * C`` for C-ordered
matrices, where ``op`` transposes when asked.  A row-major matrix is the transpose of
a column-major one, so the call is forwarded as ``C^T = op(B)^T op(A)^T``.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                  const floating* a, int lda, const floating* b, int ldb,
                  floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


def _gemm_check(a, b):
    """Test hook: row-major ``a @ b`` through the shim (float32/float64 C-contiguous)."""
    import numpy as np
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    c = np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)
    cdef float[:, ::1] af, bf, cf
    cdef double[:, ::1] ad, bd, cd
    if a.dtype == np.float32:
        af, bf, cf = a, b, c
        gemm_rm[float](False, False, a.shape[0], b.shape[1], a.shape[1], 1.0,
                       &af[0, 0], a.shape[1], &bf[0, 0], b.shape[1], 0.0, &cf[0, 0], b.shape[1])
    else:
        ad, bd, cd = a, b, c
        gemm_rm[double](False, False, a.shape[0], b.shape[1], a.shape[1], 1.0,
                        &ad[0, 0], a.shape[1], &bd[0, 0], b.shape[1], 0.0, &cd[0, 0], b.shape[1])
    return c
