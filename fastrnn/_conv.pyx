# cython: language_level=3
"""2-D convolutions for the CNN front-ends of CRNNs (fastrnn.io._onnx_conv's Conv and
ConvChain, the Keras Conv2D / Conv1D): Conv + bias + activation + MaxPool in one
OpenMP region of the library's thread team, no BLAS (_conv_kern.h).

``Packed(wm, KH, KW, level)`` packs a Conv's weights once (``wm``: (groups, K * C /
groups, M / groups), rows taps then channels, _onnx_conv._conv_weights's layout) into
the panels of an ISA level (``level()``: the machine's; ``_set_level`` forces a lower
one in tests), and for a 3x3 Conv of one group also Winograd F(2x2, 3x3)'s
transformed weights; ``Packed.run`` convolves an (N, C, H, W) input of any strides
into an (N, Hq, Wq, M) output (pooled sizes with a pool, else the Conv's) whose pixels
are contiguous runs of M values."""
import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "_conv_kern.h" nogil:
    ctypedef struct frc_act_t:
        int kind, has_lo, has_hi
        double alpha, lo, hi
    ctypedef struct frc_panel_t:
        Py_ssize_t off, woff
        int nv, col0, w, group, boff
    ctypedef struct frc_plan_t:
        int N, C, H, W
        Py_ssize_t sN, sC, sH, sW
        int pt, pl, Hpi, Wpi
        int KH, KW, sh, sw, dh, dw
        int g, cg, M, Ho, Wo
        int pool, pkh, pkw, psh, psw, Hq, Wq
        frc_act_t act
        const frc_panel_t* panels
        int npanels
        Py_ssize_t ysN, ysH
        int yb, wino
    int frc_hw_level()
    int frc_level()
    int frc_force
    long long frc_min_par
    int frc_band_pix
    int frc_vbytes(int level)
    int frc_panel_vecs(int level)
    size_t frc_scratch_release()
    enum: FRC_POOLMAX
    int frc_conv_f(frc_plan_t* P, int level, const float* x, const float* wp,
                   const float* uw, const float* bias, float* y, int nthreads)
    int frc_conv_d(frc_plan_t* P, int level, const double* x, const double* wp,
                   const double* uw, const double* bias, double* y, int nthreads)

ACTS = {None: 0, "Relu": 1, "LeakyRelu": 2, "Clip": 3}
# Winograd's products for 3x3 Convs of at least this many input and output channels
# (fewer: the transforms cost more than the products they save; one thread's CPU time
# against the direct products, batch 4, 16 x 32 pixels: C 8 M 64 1.33x, C 12 M 64
# 1.09x, C 16 M 16 1.01x, C 16 M 64 0.78x, C 32 M 16 0.84x, C 32 M 64 0.68x)
WINOGRAD_MIN_C = 16
WINOGRAD_MIN_M = 32
POOL_TAPS = FRC_POOLMAX


def level():
    """The ISA level the kernel runs at: 2 AVX-512, 1 AVX2+FMA, 0 plain."""
    return frc_level()


def _set_level(int lv):
    """Tests: run (and pack for) a lower level than the machine's (-1: the machine's)."""
    global frc_force
    frc_force = lv


def _set_min_parallel(long long macs):
    """Multiply-adds below which a Conv runs on the calling thread alone; the old value."""
    global frc_min_par
    old = frc_min_par
    frc_min_par = macs
    return old


def _set_band_pixels(int pix):
    """A work item's band: output rows added until it has this many pixels; old value."""
    global frc_band_pix
    old = frc_band_pix
    frc_band_pix = max(1, pix)
    return old


def release_scratch():
    """Free the scratch kept between calls; the bytes freed."""
    return frc_scratch_release()


def _aligned(n, dtype):
    """n zeros of dtype starting on a 64-byte boundary."""
    raw = np.zeros(n + 64 // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[skip:skip + n]


cdef class Packed:
    """A Conv's weights (groups g, kernel (KH, KW), C / g input channels a group, M
    filters) packed for ISA level ``level``; ``run`` convolves."""
    cdef readonly object buf, ubuf, panels_arr, dtype, wm
    cdef readonly int level, g, KH, KW, cg, M
    cdef frc_panel_t* panels
    cdef int npanels

    def __init__(self, wm, int KH, int KW, int lvl=-1):
        wm = np.asarray(wm)
        if wm.ndim != 3 or wm.dtype not in (np.float32, np.float64):
            raise TypeError("weights (g, K * C / g, M / g) of float32 or float64")
        g, Kc, mg = wm.shape
        if KH < 1 or KW < 1 or Kc % (KH * KW) or not (g and Kc and mg):
            raise ValueError("weights do not fit the kernel")
        self.level = frc_level() if lvl < 0 else min(lvl, frc_hw_level())
        self.wm = wm
        self.dtype = wm.dtype
        self.g, self.KH, self.KW, self.cg, self.M = g, KH, KW, Kc // (KH * KW), g * mg
        vl = frc_vbytes(self.level) // wm.dtype.itemsize
        nbmax = vl * frc_panel_vecs(self.level)
        desc = []
        off = 0
        for j in range(g):
            for c0 in range(0, mg, nbmax):
                w = min(nbmax, mg - c0)
                nv = -(-w // vl)
                desc.append((off, nv, j * mg + c0, w, j))
                off += Kc * nv * vl
        # one 64-byte aligned buffer: each panel's rows of nv * VL values (zero past w)
        buf = _aligned(off, wm.dtype)
        for (o, nv, col0, w, j) in desc:
            c0 = col0 - j * mg
            buf[o:o + Kc * nv * vl].reshape(Kc, nv * vl)[:, :w] = wm[j, :, c0:c0 + w]
        self.buf = buf
        # Winograd F(2x2, 3x3)'s weights (one group, 3x3): U = G g G^T of each input
        # and output channel, in float64; a panel's 16 positions of C rows each
        self.ubuf = None
        uoffs = [0] * len(desc)
        if g == 1 and KH == 3 and KW == 3:
            C = self.cg
            G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
            u = np.einsum("ia,jb,abcm->ijcm", G, G,
                          wm[0].astype(np.float64).reshape(3, 3, C, mg)).reshape(16, C, mg)
            ubuf = _aligned(16 * C * sum(d[1] for d in desc) * vl, wm.dtype)
            uo = 0
            for i, (o, nv, col0, w, j) in enumerate(desc):
                uoffs[i] = uo
                ubuf[uo:uo + 16 * C * nv * vl].reshape(16, C, nv * vl)[:, :, :w] = \
                    u[:, :, col0:col0 + w]
                uo += 16 * C * nv * vl
            self.ubuf = ubuf
        self.npanels = len(desc)
        arr = np.zeros(len(desc) * sizeof(frc_panel_t), np.uint8)
        self.panels_arr = arr
        cdef unsigned char[::1] av = arr
        self.panels = <frc_panel_t*> &av[0]
        boff = 0
        for i, (o, nv, col0, w, j) in enumerate(desc):
            self.panels[i].boff = boff
            boff += nv * vl
            self.panels[i].off = o
            self.panels[i].woff = uoffs[i]
            self.panels[i].nv = nv
            self.panels[i].col0 = col0
            self.panels[i].w = w
            self.panels[i].group = j

    def __reduce__(self):
        return Packed, (self.wm, self.KH, self.KW, self.level)

    def run(self, cnp.ndarray x, cnp.ndarray y, strides, dilations, pads,
            cnp.ndarray bias=None, act=None, pool=None, int nthreads=1, int border=0,
            int winograd=-1):
        """``y`` (N, Hq, Wq, M) of the weights' dtype = the Conv of ``x`` (N, C, H, W;
        any strides, that dtype) by the weights, plus ``bias`` (M values or None), then
        ``act`` (None, ("Relu",), ("LeakyRelu", alpha), ("Clip", lo or None, hi or
        None)), then a MaxPool ``pool`` ((kh, kw), (sh, sw)) of windows inside the Conv's
        output (None: none); ``pads`` (top, left, bottom, right).  ``y``'s pixels are
        runs of M values, M apart in a row (its rows and images any distance apart);
        ``border`` > 0: ``y`` is the interior of an array with that many more rows and
        columns on each side, whose values there are set to zero.  ``winograd``: 1 the
        Winograd F(2x2, 3x3) products where they apply (3x3 weights of one group,
        strides and dilations 1), 0 never, -1 by WINOGRAD_MIN_C and WINOGRAD_MIN_M."""
        cdef frc_plan_t P
        cdef int r, isz = self.dtype.itemsize
        cdef Py_ssize_t xs[4]
        if x.dtype != self.dtype or y.dtype != self.dtype or x.ndim != 4 or y.ndim != 4:
            raise TypeError("x, y: 4-D arrays of the weights' dtype")
        if not y.flags.writeable or y.strides[3] != isz or \
                (y.shape[2] > 1 and y.strides[2] != isz * y.shape[3]) or \
                y.strides[0] % isz or y.strides[1] % isz:
            raise ValueError("y must be writeable, its pixels C-contiguous runs")
        for r in range(4):
            if x.strides[r] % isz:
                raise ValueError("x's strides must be whole elements")
            xs[r] = x.strides[r] // isz
        P.N, P.C, P.H, P.W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        P.sN, P.sC, P.sH, P.sW = xs[0], xs[1], xs[2], xs[3]
        P.pt, P.pl = pads[0], pads[1]
        P.Hpi, P.Wpi = P.H + pads[0] + pads[2], P.W + pads[1] + pads[3]
        P.KH, P.KW = self.KH, self.KW
        P.sh, P.sw = strides
        P.dh, P.dw = dilations
        P.g, P.cg, P.M = self.g, self.cg, self.M
        if P.C != P.g * P.cg or min(P.sh, P.sw, P.dh, P.dw) < 1 or min(pads) < 0:
            raise ValueError("input channels, strides, dilations or pads do not fit")
        P.Ho = (P.Hpi - (P.KH - 1) * P.dh - 1) // P.sh + 1
        P.Wo = (P.Wpi - (P.KW - 1) * P.dw - 1) // P.sw + 1
        if P.Ho < 1 or P.Wo < 1:
            raise ValueError("the kernel does not fit in the padded input")
        P.pool = 0
        P.pkh = P.pkw = P.psh = P.psw = 1
        P.Hq, P.Wq = P.Ho, P.Wo
        if pool is not None:
            (P.pkh, P.pkw), (P.psh, P.psw) = pool
            if min(P.pkh, P.pkw, P.psh, P.psw) < 1 or P.pkh * P.pkw > FRC_POOLMAX or \
                    P.pkh > P.Ho or P.pkw > P.Wo:
                raise ValueError("pool window does not fit")
            P.pool = 1
            P.Hq = (P.Ho - P.pkh) // P.psh + 1
            P.Wq = (P.Wo - P.pkw) // P.psw + 1
        if (y.shape[0], y.shape[1], y.shape[2], y.shape[3]) != (P.N, P.Hq, P.Wq, P.M):
            raise ValueError(f"y of shape {np.shape(y)}, the output is "
                             f"{(P.N, P.Hq, P.Wq, P.M)}")
        P.act.kind = ACTS[None if act is None else act[0]]
        P.act.has_lo = P.act.has_hi = 0
        P.act.alpha = P.act.lo = P.act.hi = 0
        if P.act.kind == 2:
            P.act.alpha = act[1]
        elif P.act.kind == 3:
            if act[1] is not None:
                P.act.has_lo, P.act.lo = 1, act[1]
            if act[2] is not None:
                P.act.has_hi, P.act.hi = 1, act[2]
        P.panels = self.panels
        P.npanels = self.npanels
        P.ysN, P.ysH = y.strides[0] // isz, y.strides[1] // isz
        P.yb = border
        P.wino = 1 if (self.ubuf is not None and winograd != 0 and P.sh == 1 and P.sw == 1
                       and P.dh == 1 and P.dw == 1 and (winograd == 1 or (
                           P.C >= WINOGRAD_MIN_C and P.M >= WINOGRAD_MIN_M))) else 0
        if border < 0 or (border and (y.strides[1] < (y.shape[2] + 2 * border) * y.strides[2]
                                      or P.ysN < (y.shape[1] + 2 * border) * P.ysH)):
            raise ValueError("no room for the border")
        if bias is not None and (bias.dtype != self.dtype or np.shape(bias) != (P.M,)
                                 or not bias.flags.c_contiguous):
            raise ValueError("bias: M contiguous values of the weights' dtype")
        if y.size == 0 or x.size == 0:
            return y
        cdef void* px = cnp.PyArray_DATA(x)
        cdef void* pw = cnp.PyArray_DATA(self.buf)
        cdef void* pu = NULL if self.ubuf is None else cnp.PyArray_DATA(self.ubuf)
        cdef void* py = cnp.PyArray_DATA(y)
        cdef void* pb = NULL if bias is None else cnp.PyArray_DATA(bias)
        cdef int rc, lv = self.level
        if isz == 4:
            with nogil:
                rc = frc_conv_f(&P, lv, <const float*>px, <const float*>pw,
                                <const float*>pu, <const float*>pb, <float*>py, nthreads)
        else:
            with nogil:
                rc = frc_conv_d(&P, lv, <const double*>px, <const double*>pw,
                                <const double*>pu, <const double*>pb, <double*>py, nthreads)
        if rc:
            raise MemoryError("Conv: out of memory for its scratch")
        return y
