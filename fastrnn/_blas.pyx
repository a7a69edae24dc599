# cython: language_level=3
"""Row-major GEMM shim over ``scipy.linalg.cython_blas``.

``gemm_rm`` computes ``C (m, n) = alpha * op(A) @ op(B) + beta * C`` for C-ordered
matrices, where ``op`` transposes when asked.  A row-major matrix is the transpose of
a column-major one, so the call is forwarded as ``C^T = op(B)^T op(A)^T``.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer

# scipy.linalg.cython_blas's functions, as its capsules give them (_bind, at import)
ctypedef void (*_sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                          float*, float*, int*) noexcept nogil
ctypedef void (*_dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*,
                          int*, double*, double*, int*) noexcept nogil
ctypedef void (*_sgemv_t)(char*, int*, int*, float*, float*, int*, float*, int*, float*,
                          float*, int*) noexcept nogil
ctypedef void (*_dgemv_t)(char*, int*, int*, double*, double*, int*, double*, int*, double*,
                          double*, int*) noexcept nogil
cdef _sgemm_t sgemm
cdef _dgemm_t dgemm
cdef _sgemv_t sgemv
cdef _dgemv_t dgemv


def _cython_blas():
    """scipy.linalg.cython_blas, and where that loads scipy's OpenBLAS into the process,
    that library's just-made worker threads ended (``_threads.end_fresh_blas_workers``)."""
    from fastrnn import _threads
    libs = _threads.scipy_openblas_paths()
    fresh = [p for p in libs if p not in _threads.loaded_libraries(libs)]
    m = _load_cython_blas()
    if fresh:
        _threads.end_fresh_blas_workers(_threads.loaded_libraries(fresh))
    return m


def _load_cython_blas():
    """scipy.linalg.cython_blas.  ``cimport`` of it imports the module as a submodule,
    which runs scipy.linalg's package ``__init__`` first: LAPACK wrappers and array-API
    shims fastrnn never uses, ~110 ms of a process's first fastrnn call (the module
    itself: ~20 ms).  So where scipy.linalg is not imported yet the module is loaded from
    its file; it is the module a later ``import scipy.linalg.cython_blas`` gives (a
    Cython extension module is made once a process), so it is left out of sys.modules
    for that import to bind it to its package.  Elsewhere, or where that fails, the
    plain import."""
    import importlib
    import sys
    name = "scipy.linalg.cython_blas"
    m = sys.modules.get(name)
    if m is not None:
        return m
    if "scipy.linalg" not in sys.modules:
        try:
            import os
            import importlib.machinery as mach
            import importlib.util
            import scipy
            spec = mach.FileFinder(os.path.join(os.path.dirname(scipy.__file__), "linalg"),
                                   (mach.ExtensionFileLoader, mach.EXTENSION_SUFFIXES)
                                   ).find_spec(name)
            if spec is not None and spec.loader is not None:
                m = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(m)
                if sys.modules.get(name) is m:
                    del sys.modules[name]
                return m
        except Exception:
            pass
    return importlib.import_module(name)


cdef void* _fn(dict capi, str fname, str sig) except NULL:
    """The C function ``fname`` of cython_blas's capsules, whose name is its C signature
    as scipy's Cython wrote it: a different one raises (as a cimport would)."""
    cap = capi.get(fname)
    if cap is None:
        raise ImportError(f"fastrnn: scipy.linalg.cython_blas has no {fname}")
    try:
        return PyCapsule_GetPointer(cap, sig.encode())
    except ValueError:
        raise ImportError(f"fastrnn: scipy.linalg.cython_blas's {fname} has another "
                          f"signature than {sig!r}") from None


def _bind():
    global sgemm, dgemm, sgemv, dgemv
    capi = _cython_blas().__pyx_capi__
    gemm = ("void (char *, char *, int *, int *, int *, {0} *, {0} *, int *, {0} *, int *, "
            "{0} *, {0} *, int *)")
    gemv = "void (char *, int *, int *, {0} *, {0} *, int *, {0} *, int *, {0} *, {0} *, int *)"
    s, d = ("__pyx_t_5scipy_6linalg_11cython_blas_" + t for t in "sd")
    sgemm = <_sgemm_t>_fn(capi, "sgemm", gemm.format(s))
    dgemm = <_dgemm_t>_fn(capi, "dgemm", gemm.format(d))
    sgemv = <_sgemv_t>_fn(capi, "sgemv", gemv.format(s))
    dgemv = <_dgemv_t>_fn(capi, "dgemv", gemv.format(d))


_bind()


cdef void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                  const floating* a, int lda, const floating* b, int ldb,
                  floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    # the row-vector product below (C row i = a_i op(B)) takes op(B)^T, i.e. B seen
    # column-major, with ta: a row-major B (k, n) is the column-major (n, k) matrix
    # B^T ('N'), a row-major B (n, k) with trans_b the column-major (k, n) one ('T')
    cdef int rows = k if trans_b else n, cols = n if trans_b else k
    cdef int incx = lda if trans_a else 1, one = 1, i
    cdef const floating* ai
    if m <= 0 or n <= 0:
        return
    if 0 < m <= 4 and k > 0 and <long>k * n >= (1 << 19):
        # up to 4 rows by a large matrix (2^19 values or more): a matrix-vector product
        # per row.  scipy's OpenBLAS runs a GEMM of so few rows as a whole GEMM, packing
        # the large operand at every call.  On the Intel Xeon (2 threads; gemm / gemv per
        # row, us): 1-4 rows by 256 x 2048 48-137 / 14-50, by 512 x 2048 249-310 /
        # 59-211; 8 rows 130 / 136.  Smaller matrices stay on GEMM: 256 x 1024 by 2 rows
        # 18 / 23, 128 x 1024 by 4 rows 9.7 / 23.5, and in a layer (bench/ab_builds.py,
        # LSTM proj_size B=1 T=100) H=256 P=128 1.05x, H=128 P=64 1.09-1.20x the time
        # with the matrix-vector products, H=512 P=256 0.38x
        for i in range(m):
            ai = a + (i if trans_a else <Py_ssize_t>i * lda)
            if floating is float:
                sgemv(&ta, &rows, &cols, &alpha, <float*>b, &ldb, <float*>ai, &incx, &beta,
                      c + <Py_ssize_t>i * ldc, &one)
            else:
                dgemv(&ta, &rows, &cols, &alpha, <double*>b, &ldb, <double*>ai, &incx, &beta,
                      c + <Py_ssize_t>i * ldc, &one)
        return
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


def _gemm_check(a, b, bint trans_a=False, bint trans_b=False, c=None, beta=0.0):
    """Test hook: row-major ``op(a) @ op(b) + beta * c`` through the shim (float32 /
    float64 C-contiguous; ``op`` transposes where asked; c defaults to zeros)."""
    import numpy as np
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    c = (np.zeros((m, n), dtype=a.dtype) if c is None
         else np.array(c, dtype=a.dtype, order="C", copy=True))
    cdef float[:, ::1] af, bf, cf
    cdef double[:, ::1] ad, bd, cd
    if a.dtype == np.float32:
        af, bf, cf = a, b, c
        gemm_rm[float](trans_a, trans_b, m, n, k, 1.0, &af[0, 0], a.shape[1], &bf[0, 0],
                       b.shape[1], beta, &cf[0, 0], n)
    else:
        ad, bd, cd = a, b, c
        gemm_rm[double](trans_a, trans_b, m, n, k, 1.0, &ad[0, 0], a.shape[1], &bd[0, 0],
                        b.shape[1], beta, &cd[0, 0], n)
    return c
