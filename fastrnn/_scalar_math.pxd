# Scalar exp / tanh / sigmoid for the fused float/double kernels, shared by the forward
# (_kernels.pyx) and training (_backward.pyx) modules.  The hot default paths use the
# vectorised C versions in fr_kern_t.h / _backward_gemm.h; these serve the generic paths.
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # exp overflows to inf for very negative x, giving exactly 0; no NaN for +-inf.
    return 1 / (1 + _exp(-x))
