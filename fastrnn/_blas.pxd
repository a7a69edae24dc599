# The only module that touches scipy.linalg.cython_blas (its capsules, _blas.pyx).
# Row-major shims over the column-major Fortran BLAS, for float and double (fused type
# ``floating``).
from cython cimport floating

cdef void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                  const floating* a, int lda, const floating* b, int ldb,
                  floating beta, floating* c, int ldc) noexcept nogil
