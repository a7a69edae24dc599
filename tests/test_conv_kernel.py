"""fastrnn._conv, the Conv kernel (Conv + bias + activation + MaxPool in one OpenMP
region of the model's threads; fastrnn.io._onnx_conv's ConvChain and Keras's Conv2D
run on it).

(a) the kernel against a float64 NumPy reference: odd sizes, one input channel, 3 and
7 channels, batch 1 / 3 / 16, strides, dilations, asymmetric pads, groups, 1x1 and
1xk kernels, several weight panels (a partial one), overlapping pools, every
activation, NaN, inputs of any strides; float32 and float64; 1, 2 and 3 threads;
every ISA level this CPU runs; work cut in many items or few; (b) ONNX graphs (a
torch CRNN, Conv blocks) on the kernel against ONNX Runtime and torch, live, and the
im2col path; (c) Keras Conv2D on the kernel against the reference; (d) the same bits
on any thread count and from 4 Python threads at once; its checks, pickling.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import sys
import threading
import warnings

import numpy as np
import pytest

from fastrnn import _conv as _ck
from fastrnn.io import _onnx_conv
from fastrnn.io._onnx_conv import _conv_weights

LEVELS = [lv for lv in (2, 1, 0) if lv <= _ck.level()]


def _ref(x, w, b, s, d, pads, g, act=None, pool=None):
    """The Conv in float64, then bias, activation and MaxPool: (N, Hq, Wq, M)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x.shape
    M, cg, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    Ho = (xp.shape[2] - (KH - 1) * d[0] - 1) // s[0] + 1
    Wo = (xp.shape[3] - (KW - 1) * d[1] - 1) // s[1] + 1
    y = np.zeros((N, M, Ho, Wo))
    mg = M // g
    for j in range(g):
        for kh in range(KH):
            for kw in range(KW):
                v = xp[:, j * cg:(j + 1) * cg,
                       kh * d[0]:kh * d[0] + (Ho - 1) * s[0] + 1:s[0],
                       kw * d[1]:kw * d[1] + (Wo - 1) * s[1] + 1:s[1]]
                y[:, j * mg:(j + 1) * mg] += np.einsum(
                    "nchw,mc->nmhw", v, w[j * mg:(j + 1) * mg, :, kh, kw])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    if act is not None:
        if act[0] == "Relu":
            y = np.maximum(y, 0)
        elif act[0] == "LeakyRelu":
            y = np.where(y < 0, y * act[1], y)
        else:
            if act[1] is not None:
                y = np.maximum(y, act[1])
            if act[2] is not None:
                y = np.minimum(y, act[2])
    if pool is not None:
        (pkh, pkw), (psh, psw) = pool
        Hq, Wq = (Ho - pkh) // psh + 1, (Wo - pkw) // psw + 1
        z = None
        for a in range(pkh):
            for c in range(pkw):
                t = y[:, :, a:a + (Hq - 1) * psh + 1:psh, c:c + (Wq - 1) * psw + 1:psw]
                z = t if z is None else np.maximum(z, t)
        y = z
    return y.transpose(0, 2, 3, 1)


def _out_shape(x, w, s, d, pads, pool):
    N, _, H, W = x.shape
    M, _, KH, KW = w.shape
    Ho = (H + pads[0] + pads[2] - (KH - 1) * d[0] - 1) // s[0] + 1
    Wo = (W + pads[1] + pads[3] - (KW - 1) * d[1] - 1) // s[1] + 1
    if pool is not None:
        (pkh, pkw), (psh, psw) = pool
        Ho, Wo = (Ho - pkh) // psh + 1, (Wo - pkw) // psw + 1
    return N, Ho, Wo, M


def _run(x, w, b, s, d, pads, g, act=None, pool=None, nt=1, level=-1, wino=-1):
    kp = _ck.Packed(_conv_weights(w, g, x.dtype), w.shape[2], w.shape[3], level)
    y = np.full(_out_shape(x, w, s, d, pads, pool), np.nan, x.dtype)
    return kp.run(x, y, s, d, pads, b, act, pool, nt, 0, wino)


# (N, C, H, W, M, kernel, strides, dilations, pads (t, l, b, r), groups, act, pool)
_CASES = [
    (1, 1, 9, 13, 32, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, ("Relu",),
     ((2, 2), (2, 2))),                                     # a CRNN's first block, odd
    (3, 3, 7, 11, 5, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, None, None),
    (3, 7, 10, 9, 70, (3, 2), (2, 1), (1, 2), (1, 0, 2, 1), 1, ("LeakyRelu", 0.1),
     ((2, 2), (2, 2))),                                     # panels 64 + 6 (float)
    (1, 7, 3, 9, 70, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, ("Relu",),
     ((2, 1), (2, 1))),                                     # one image: panels split
    (16, 3, 6, 5, 17, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, ("Relu",),
     ((2, 1), (2, 1))),
    (2, 6, 8, 9, 16, (3, 3), (1, 2), (2, 1), (0, 1, 2, 0), 2, ("Clip", -0.5, 0.7), None),
    (3, 9, 11, 12, 36, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3, ("Relu",),
     ((3, 3), (2, 2))),                                     # groups, overlapping pool
    (3, 7, 5, 6, 9, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0), 1, ("Clip", None, 0.3), None),
    (1, 2, 13, 5, 3, (5, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1, ("Clip", -0.2, None), None),
    (3, 4, 1, 17, 8, (1, 5), (1, 3), (1, 2), (0, 4, 0, 4), 1, ("Relu",),
     ((1, 2), (1, 2))),                                     # a Conv1D as 1 x k
    (2, 3, 6, 7, 1, (2, 2), (1, 1), (1, 1), (0, 1, 1, 0), 1, None, ((3, 2), (1, 3))),
    (1, 32, 16, 22, 64, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, ("Relu",),
     ((2, 2), (2, 2))),                                     # a CRNN's second block
    (2, 5, 7, 8, 12, (2, 3), (3, 2), (2, 1), (2, 2, 2, 2), 1, None, ((2, 2), (1, 1))),
    (2, 9, 6, 141, 24, (3, 3), (1, 1), (1, 1), (1, 2, 0, 1), 1, ("Relu",),
     ((2, 3), (2, 2))),                                     # wide: Winograd in chunks
    (3, 24, 7, 9, 40, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, ("Relu",),
     ((2, 2), (2, 2))),                                     # Winograd by default
    (2, 16, 9, 10, 32, (3, 3), (1, 1), (1, 1), (1, 1, 0, 0), 1, None, None),  # edges
]
_refs: dict = {}


def _case_data(i, dt):
    N, C, H, W, M, k, s, d, pads, g, act, pool = _CASES[i]
    rng = np.random.default_rng(100 + i)
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    w = (rng.standard_normal((M, C // g) + k) / np.sqrt(C // g * k[0] * k[1])).astype(dt)
    b = rng.standard_normal(M).astype(dt) if i % 4 != 1 else None
    key = (i, np.dtype(dt).char)
    if key not in _refs:
        _refs[key] = _ref(x, w, b, s, d, pads, g, act, pool)
    return x, w, b, s, d, pads, g, act, pool, _refs[key]


@pytest.fixture
def many_items():
    """Every Conv on the threads asked for (no minimum size) and its work cut in
    bands of one output row (many items; panel sets split for a single image)."""
    old = _ck._set_min_parallel(0), _ck._set_band_pixels(1)
    yield
    _ck._set_min_parallel(old[0])
    _ck._set_band_pixels(old[1])


def _tol(dt):
    return (dict(rtol=2e-5, atol=2e-5) if dt == np.float32 else
            dict(rtol=1e-12, atol=1e-12))


@pytest.mark.parametrize("wino", [0, 1])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("i", range(len(_CASES)))
def test_kernel_matches_reference(i, dt, level, wino, many_items):
    """Every case at each ISA level, 1 / 2 / 3 threads, the direct products and (the 3x3
    Convs of stride 1, one group: any channels) Winograd's, against float64 NumPy; the
    same bits on every thread count."""
    x, w, b, s, d, pads, g, act, pool, want = _case_data(i, dt)
    first = None
    for nt in (1, 2, 3):
        got = _run(x, w, b, s, d, pads, g, act, pool, nt, level, wino)
        assert got.dtype == dt and got.shape == want.shape
        np.testing.assert_allclose(got, want, **_tol(dt), err_msg=f"threads {nt}")
        if first is None:
            first = got
        else:
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_kernel_default_work_split(dt):
    """The machine's level and the default cut of the work (bands of >= 48 pixels,
    the minimum size for a second thread), every case, 1 and 2 threads."""
    for i in range(len(_CASES)):
        x, w, b, s, d, pads, g, act, pool, want = _case_data(i, dt)
        for nt in (1, 2):
            got = _run(x, w, b, s, d, pads, g, act, pool, nt)
            np.testing.assert_allclose(got, want, **_tol(dt), err_msg=f"case {i}")


@pytest.mark.parametrize("nt", [1, 2, 3])
def test_inputs_of_any_strides(nt, many_items):
    """NCHW, a channels-last array's NCHW view, a strided slice, reversed axes, a
    Fortran-ordered array, reversed channels last: the reference (the padded copy reads each
    layout; an unpadded channels-last input is read in place)."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 5, 14, 11)).astype(np.float32)
    w = rng.standard_normal((20, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    views = [base, np.moveaxis(np.ascontiguousarray(np.moveaxis(base, 1, -1)), -1, 1),
             base[:, :, ::2, :], base[:, ::-1, :, ::-1], np.asfortranarray(base),
             base[::2, 1:4], np.moveaxis(np.ascontiguousarray(np.moveaxis(base, 1, -1))[
                 ..., ::-1], -1, 1)]     # (channels last, reversed: no in-place read)
    for pads in ((1, 1, 1, 1), (0, 0, 0, 0), (0, 2, 1, 0)):
        for v in views:
            want = _ref(v, w[:, :v.shape[1]], b, (1, 1), (1, 1), pads, 1, ("Relu",),
                        ((2, 2), (2, 2)))
            got = _run(v, w[:, :v.shape[1]].copy(), b, (1, 1), (1, 1), pads, 1, ("Relu",),
                       ((2, 2), (2, 2)), nt)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_nan_and_inf_propagate_as_numpy():
    """A NaN in the input gives NaN wherever NumPy's Conv / maximum give it (relu and
    the pool keep it), an inf gives inf or NaN as there; the other outputs exact."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    x[0, 1, 4, 4] = np.nan
    x[1, 2, 0, 9] = np.inf
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    for act in (None, ("Relu",), ("LeakyRelu", 0.2), ("Clip", -1.0, 1.0)):
        for pool in (None, ((2, 2), (2, 2)), ((3, 3), (1, 1))):
            want = _ref(x, w, b, (1, 1), (1, 1), (1, 1, 1, 1), 1, act, pool)
            for nt in (1, 2):
                got = _run(x, w, b, (1, 1), (1, 1), (1, 1, 1, 1), 1, act, pool, nt)
                np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
                assert np.isnan(got).any()


def test_from_four_python_threads():
    """One packed Conv called from 4 Python threads at once (inputs of two sizes: the
    kept scratch changes hands): each answer is the single-thread one."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((24, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    kp = _ck.Packed(_conv_weights(w, 1, np.dtype(np.float32)), 3, 3)
    xs = [rng.standard_normal((B, 6, 12 + B, 15)).astype(np.float32) for B in (1, 5, 2, 7)]
    args = ((1, 1), (1, 1), (1, 1, 1, 1), b, ("Relu",), ((2, 2), (2, 2)))

    def run(x, nt):
        y = np.empty(_out_shape(x, w, (1, 1), (1, 1), (1, 1, 1, 1), ((2, 2), (2, 2))),
                     np.float32)
        return kp.run(x, y, *args, nthreads=nt)
    ref = [run(x, 1) for x in xs]
    barrier, errors, got = threading.Barrier(4), [], {}

    def worker(k):
        try:
            barrier.wait()
            for i in range(20):
                j = (k + i) % 4
                got[k, i] = j, run(xs[j], 1 + (i % 3))
        except BaseException as e:     # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 80
    for j, y in got.values():
        np.testing.assert_array_equal(y, ref[j])


def test_checks_and_pickling():
    """Wrong shapes, dtypes and pools are refused; a packed Conv pickles (its weights
    and level) and gives the same bits."""
    rng = np.random.default_rng(10)
    w = rng.standard_normal((4, 3, 3, 3))
    kp = _ck.Packed(_conv_weights(w, 1, np.dtype(np.float64)), 3, 3)
    x = rng.standard_normal((2, 3, 6, 7))
    y = np.empty((2, 4, 5, 4))
    kp.run(x, y, (1, 1), (1, 1), (0, 0, 0, 0))
    np.testing.assert_allclose(y, _ref(x, w, None, (1, 1), (1, 1), (0, 0, 0, 0), 1),
                               rtol=1e-12, atol=1e-12)
    again = pickle.loads(pickle.dumps(kp))
    y2 = np.empty_like(y)
    again.run(x, y2, (1, 1), (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(y, y2)
    assert again.level == kp.level
    with pytest.raises(ValueError, match="y of shape"):
        kp.run(x, np.empty((2, 4, 5, 5)), (1, 1), (1, 1), (0, 0, 0, 0))
    with pytest.raises(TypeError):
        kp.run(x.astype(np.float32), y, (1, 1), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="C-contiguous runs"):
        kp.run(x, np.empty((2, 4, 5, 8))[..., ::2], (1, 1), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="do not fit"):
        kp.run(x[:, :2], y, (1, 1), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="pool"):
        kp.run(x, np.empty((2, 1, 1, 4)), (1, 1), (1, 1), (0, 0, 0, 0), pool=((5, 9), (1, 1)))
    with pytest.raises(ValueError, match="bias"):
        kp.run(x, y, (1, 1), (1, 1), (0, 0, 0, 0), bias=np.zeros(3))


# ------------------------------------------------------------ (b) ONNX graphs
onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from fastrnn.io.onnx import load_onnx  # noqa: E402


class _Net(torch.nn.Module):
    """A CRNN's front-end and head: Conv blocks (one input channel; 3 and 7 channels,
    a grouped Conv of 8 filters a group, a strided and dilated one), BatchNorm, ReLU /
    LeakyReLU / Hardtanh (Clip), MaxPools, then the width as time into a
    bidirectional LSTM and a Linear."""

    def __init__(self, H=14):
        super().__init__()
        nn = torch.nn
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 7, (3, 2), padding=(1, 1)), nn.BatchNorm2d(7), nn.LeakyReLU(0.1),
            nn.Conv2d(7, 16, 3, padding=1, dilation=(1, 2)), nn.Hardtanh(-0.8, 0.9),
            nn.MaxPool2d((2, 1)),
            nn.Conv2d(16, 16, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(), nn.MaxPool2d((3, 3), (1, 1)))
        self.rnn = nn.LSTM(16, 6, bidirectional=True)
        self.head = nn.Linear(12, 5)
        with torch.no_grad():
            for m in self.cnn:
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.cnn(x)                                     # (B, 16, H', W')
        y = y.mean(2).permute(2, 0, 1)                      # (W', B, 16)
        out, _ = self.rnn(y)
        return self.head(out)


@pytest.fixture(scope="module")
def net_onnx():
    torch.manual_seed(3)
    net = _Net().eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 14, 21)).astype(np.float32)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 3: "w"}, "y": {0: "t", 1: "b"}})
    return net, f.getvalue()


@pytest.fixture
def spy_kernel(monkeypatch):
    """Counts the Convs that ran on the kernel."""
    calls = []
    real = _onnx_conv._kernel_conv

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)
    monkeypatch.setattr(_onnx_conv, "_kernel_conv", spy)
    return calls


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_crnn_on_the_kernel_matches_ort_and_torch(net_onnx, threads, spy_kernel):
    """Batch 1, 3 and 16, two widths, on 1 / 2 / 3 threads: ONNX Runtime's and torch's
    numbers, every Conv on the kernel after the first call (4 a call), and the same
    as the im2col path."""
    net, data = net_onnx
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    m = load_onnx(data, num_threads=threads)
    rng = np.random.default_rng(threads)
    for B, W in ((1, 21), (3, 21), (16, 21), (3, 30)):
        x = rng.standard_normal((B, 1, 14, W)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        with torch.no_grad():
            tw = net(torch.from_numpy(x)).numpy()
        for _ in range(2):
            spy_kernel.clear()
            got = m.run({"x": x})["y"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got, tw, rtol=1e-5, atol=1e-5)
        assert len(spy_kernel) == 4, spy_kernel
        old = _onnx_conv._KERNEL
        _onnx_conv._KERNEL = False
        try:
            spy_kernel.clear()
            np.testing.assert_allclose(m.run({"x": x})["y"], got, rtol=1e-5, atol=1e-5)
            assert not spy_kernel
        finally:
            _onnx_conv._KERNEL = old


@pytest.mark.parametrize("level", LEVELS)
def test_crnn_at_each_level(net_onnx, level, spy_kernel):
    """The CRNN with the kernel forced to each ISA level this CPU runs (packed again for
    it): ONNX Runtime's numbers."""
    net, data = net_onnx
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    m = load_onnx(data, num_threads=2)
    x = np.random.default_rng(11).standard_normal((3, 1, 14, 25)).astype(np.float32)
    want = sess.run(None, {"x": x})[0]
    m.run({"x": x})
    _ck._set_level(level)
    try:
        assert _ck.level() == level
        spy_kernel.clear()
        np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
        assert len(spy_kernel) == 4
    finally:
        _ck._set_level(-1)


def _block64(x, M, k, group, pads, strides, dilations, pool, act):
    """An ONNX graph: Conv -> BatchNormalization -> act -> MaxPool in float64; with the
    Conv's weights and bias with the BatchNormalization folded in."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(12)
    C = x.shape[1]
    w = rng.standard_normal((M, C // group) + k)
    b = rng.standard_normal(M)
    scale, shift = rng.uniform(0.5, 1.5, M), rng.standard_normal(M) * 0.2
    mean, var = rng.standard_normal(M) * 0.3, rng.uniform(0.5, 2, M)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (w, "W"), (b, "B"), (scale, "s"), (shift, "sh"), (mean, "mu"), (var, "var"))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=list(pads), group=group,
                              strides=list(strides), dilations=list(dilations)),
             helper.make_node("BatchNormalization", ["c", "s", "sh", "mu", "var"], ["n"]),
             helper.make_node(act, ["n"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=list(pool[0]),
                              strides=list(pool[1]))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.DOUBLE, ["N", C, "H", "W"])], [onnx.ValueInfoProto(name="y")],
        inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inv = scale / np.sqrt(var + 1e-5)
    return model.SerializeToString(), w * inv[:, None, None, None], (b - mean) * inv + shift


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_float64_blocks_on_the_kernel(threads, spy_kernel):
    """float64 Conv blocks (BatchNorm folded in, Relu / LeakyRelu, pools) in a kept
    program: the float64 reference to 1e-12, on the kernel."""
    rng = np.random.default_rng(13)
    for (N, C, H, W, M, k, g, pads, s, d, pool, act) in [
            (1, 1, 11, 13, 8, (3, 3), 1, (1, 1, 1, 1), (1, 1), (1, 1), ((2, 2), (2, 2)),
             "Relu"),
            (3, 6, 9, 10, 24, (3, 2), 3, (0, 1, 2, 0), (2, 1), (1, 2), ((2, 1), (2, 1)),
             "Relu"),
            (16, 3, 6, 7, 40, (2, 2), 1, (1, 1, 0, 0), (1, 1), (2, 1), ((3, 3), (2, 2)),
             "LeakyRelu")]:
        x = rng.standard_normal((N, C, H, W))
        data, wf, bf = _block64(x, M, k, g, pads, s, d, pool, act)
        m = load_onnx(data, num_threads=threads)
        first = m.run({"x": x})["y"]
        spy_kernel.clear()
        got = m.run({"x": x})["y"]
        assert len(spy_kernel) == 1 and got.dtype == np.float64
        a = ("Relu",) if act == "Relu" else ("LeakyRelu", 0.01)
        want = _ref(x, wf, bf, s, d, (pads[0], pads[1], pads[2], pads[3]), g, a, pool)
        np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, first, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------ (c) Keras Conv2D
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_keras_conv2d_on_the_kernel(dt, spy_kernel):
    """Keras Conv2D (channels last, "same" / "valid", strides, dilations, groups of 8
    filters, relu / linear / tanh) on the kernel, 1 / 2 / 3 threads: the reference."""
    from fastrnn.model import Conv2D, Model
    rng = np.random.default_rng(14)
    tol = _tol(np.dtype(dt).type)
    for k, s, dl, pad, g, C, act in [((3, 3), (1, 1), (1, 1), "same", 1, 1, "relu"),
                                      ((3, 2), (2, 1), (1, 1), "valid", 1, 3, "linear"),
                                      ((2, 3), (1, 1), (2, 1), "same", 2, 6, "tanh"),
                                      ((1, 1), (1, 1), (1, 1), "valid", 1, 7, "relu")]:
        w = rng.normal(size=k + (C // g, 16)).astype(dt)
        b = rng.normal(size=16).astype(dt)
        x = rng.normal(size=(3, 9, 11, C)).astype(dt)
        layer = Conv2D(w, b, s, pad, dl, g, activation=act, dtype=dt)
        # (Keras's SAME: TensorFlow's padding, the odd step after)
        pads = [0, 0, 0, 0]
        if pad == "same":
            for ax in range(2):
                L, kk, ss, dd = x.shape[1 + ax], k[ax], s[ax], dl[ax]
                tot = max((-(-L // ss) - 1) * ss + (kk - 1) * dd + 1 - L, 0)
                pads[ax], pads[2 + ax] = tot // 2, tot - tot // 2
        wt = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
        want = _ref(np.moveaxis(x, -1, 1), wt, b, s, dl, pads, g,
                    ("Relu",) if act == "relu" else None)
        if act == "tanh":
            want = np.tanh(want)
        for nt in (1, 2, 3):
            spy_kernel.clear()
            got = Model([layer])(x, num_threads=nt)
            assert got.dtype == dt and len(spy_kernel) == 1
            np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_conv1d_blocks_match_ort(threads, spy_kernel):
    """1-D Conv blocks (torch Conv1d: strided, dilated, padded; BatchNorm1d, ReLU,
    MaxPool1d) on the kernel as a 1 x k Conv: ONNX Runtime's numbers at batch 1, 3
    and 16."""
    nn = torch.nn
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv1d(3, 16, 5, stride=2, padding=2), nn.BatchNorm1d(16),
                        nn.ReLU(), nn.MaxPool1d(2),
                        nn.Conv1d(16, 9, 3, padding=3, dilation=3), nn.ReLU(),
                        nn.MaxPool1d(3, 2)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    f = io.BytesIO()
    x = np.random.default_rng(15).standard_normal((1, 3, 41)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    m = load_onnx(f.getvalue(), num_threads=threads)
    for B in (1, 3, 16):
        x = np.random.default_rng(B).standard_normal((B, 3, 41)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        m.run({"x": x})
        spy_kernel.clear()
        got = m.run({"x": x})["y"]
        assert len(spy_kernel) == 2, spy_kernel
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_keras_conv1d_on_the_kernel(dt, spy_kernel):
    """Keras Conv1D ("causal": all the padding before; "same" of an even kernel: the
    odd step after; "valid"; strides, dilations, groups of 8 filters; relu / linear /
    tanh) on the kernel as a 1 x k Conv, 1 / 2 / 3 threads: the reference (and the tap
    loop it replaced)."""
    from fastrnn.model import Conv1D, Model
    rng = np.random.default_rng(16)
    tol = _tol(np.dtype(dt).type)
    for k, s, dl, pad, g, C, act in [(4, 1, 1, "causal", 1, 3, "relu"),
                                      (4, 2, 1, "same", 1, 1, "linear"),
                                      (3, 1, 2, "causal", 2, 6, "tanh"),
                                      (5, 3, 1, "valid", 1, 7, "relu"),
                                      (2, 1, 3, "same", 1, 4, "linear")]:
        w = rng.normal(size=(k, C // g, 16)).astype(dt)
        b = rng.normal(size=16).astype(dt)
        x = rng.normal(size=(3, 19, C)).astype(dt)
        layer = Conv1D(w, b, s, pad, dl, g, activation=act, dtype=dt)
        span = (k - 1) * dl + 1
        if pad == "causal":
            before, after = span - 1, 0
        elif pad == "same":
            tot = max((-(-19 // s) - 1) * s + span - 19, 0)
            before, after = tot // 2, tot - tot // 2
        else:
            before = after = 0
        wt = np.ascontiguousarray(w.transpose(2, 1, 0))[:, :, None, :]
        want = _ref(np.moveaxis(x, -1, 1)[:, :, None, :], wt, b, (1, s), (1, dl),
                    (0, before, 0, after), g, ("Relu",) if act == "relu" else None)[:, 0]
        if act == "tanh":
            want = np.tanh(want)
        for nt in (1, 2, 3):
            spy_kernel.clear()
            got = Model([layer])(x, num_threads=nt)
            assert got.dtype == dt and len(spy_kernel) == 1
            np.testing.assert_allclose(got, want, **tol)
        old = _onnx_conv._KERNEL
        _onnx_conv._KERNEL = False
        try:
            np.testing.assert_allclose(Model([layer])(x), want, **tol)
        finally:
            _onnx_conv._KERNEL = old


class _SpyKernel:
    """fastrnn._conv with each packed Conv's run recorded: (its pads, x, threads)."""

    def __init__(self, real):
        self.real, self.runs = real, []
        self.POOL_TAPS, self.level = real.POOL_TAPS, real.level

    def Packed(self, *a, **k):
        kp, runs = self.real.Packed(*a, **k), self.runs

        class Spy:
            def __getattr__(self, name):
                return getattr(kp, name)

            def run(self, x, *rest):
                runs.append((tuple(rest[3]), x, rest[7]))
                return kp.run(x, *rest)
        return Spy()


def _chain_graph(C, pads_list, dt=np.float32, width=8):
    """Conv (3x3, pads_list[0]) -> Relu -> MaxPool 2x2, then a Conv per further pads
    (its own 3x3 kernel; width + 4 j filters), Relu after the second; an Add of the
    last Conv's output to itself, read by a last Conv (pads 1)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(17)
    inits, nodes, cur, c = [], [], "x", C
    for j, pads in enumerate(pads_list):
        M = width + 4 * j
        w = (rng.standard_normal((M, c, 3, 3)) / np.sqrt(9 * c)).astype(dt)
        inits += [numpy_helper.from_array(w, f"W{j}"),
                  numpy_helper.from_array(rng.standard_normal(M).astype(dt), f"B{j}")]
        nodes.append(helper.make_node("Conv", [cur, f"W{j}", f"B{j}"], [f"c{j}"],
                                      pads=list(pads)))
        cur, c = f"c{j}", M
        if j in (0, 1):
            nodes.append(helper.make_node("Relu", [cur], [f"r{j}"]))
            cur = f"r{j}"
        if j == 0:
            nodes.append(helper.make_node("MaxPool", [cur], ["p0"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            cur = "p0"
    w = (rng.standard_normal((5, c, 3, 3)) / np.sqrt(9 * c)).astype(dt)
    inits.append(numpy_helper.from_array(w, "Wl"))
    nodes += [helper.make_node("Add", [cur, cur], ["rl"]),
              helper.make_node("Conv", ["rl", "Wl"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[dt],
        ["N", C, "H", "W"])], [onnx.ValueInfoProto(name="y")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("width", [8, 32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_conv_reads_the_previous_convs_zero_border(threads, width, monkeypatch):
    """A Conv fed by another's output reads its padding (up to 1 a side, asymmetric
    too) from that output's zero border instead of a padded copy (its pads 0); pads of
    2 and a value another node made copy as before; the heap poisoned with NaN before
    each call (a border not zeroed shows): ONNX Runtime's numbers at batch 1, 3 and
    16; direct products (8+ filters) and Winograd's (32+)."""
    spy = _SpyKernel(_ck)
    monkeypatch.setattr(_onnx_conv, "_ck", spy)
    pads_list = [(1, 1, 1, 1), (0, 1, 1, 0), (1, 1, 1, 1), (0, 0, 0, 0), (2, 1, 2, 2)]
    data = _chain_graph(3, pads_list, width=width)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    m = load_onnx(data, num_threads=threads)
    for B, H, W in ((1, 12, 15), (3, 13, 10), (16, 10, 11)):
        for call in range(3):
            x = np.random.default_rng(call + B).standard_normal((B, 3, H, W)).astype(
                np.float32)
            junk = np.full(1 << 18, np.nan)       # (freed: np.empty reuses it)
            del junk
            spy.runs.clear()
            got = m.run({"x": x})["y"]
            np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5,
                                       atol=1e-5)
            if call:        # (a kept program: the Convs in order, the pads they ran)
                assert [r[0] for r in spy.runs] == [(1, 1, 1, 1), (0, 0, 0, 0),
                                                    (0, 0, 0, 0), (0, 0, 0, 0),
                                                    (2, 1, 2, 2), (1, 1, 1, 1)], spy.runs


@pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"),
                    reason="fork is a POSIX start method (tested on Linux)")
def test_child_forked_after_threaded_convs():
    """A process forked after the kernel ran on 2 threads (libgomp cannot start its
    threads again there) runs its Convs on one thread: the same bits, no hang."""
    from fastrnn.model import Conv2D, Model
    rng = np.random.default_rng(18)
    layer = Conv2D(rng.normal(size=(3, 3, 16, 32)).astype(np.float32),
                   rng.normal(size=32).astype(np.float32), padding="same",
                   activation="relu")
    x = rng.normal(size=(4, 40, 40, 16)).astype(np.float32)
    model = Model([layer])
    ref = model(x, num_threads=2)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            signal.alarm(60)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = 0 if np.array_equal(model(x, num_threads=2), ref) else 2
        except BaseException:  # noqa: BLE001 (the parent sees the exit status)
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_small_convs_after_a_pause_run_on_one_thread(monkeypatch):
    """As layers.py's rule (fastrnn._threads): in a call that follows a pause, a batch
    of one's Convs of fewer multiply-adds than idle_single_macs() run on one thread (the
    OpenMP worker sleeps); larger ones, larger batches and calls without a pause on the
    model's threads; the same numbers."""
    from fastrnn import _threads
    spy = _SpyKernel(_ck)
    monkeypatch.setattr(_onnx_conv, "_ck", spy)
    data = _chain_graph(3, [(1, 1, 1, 1), (1, 1, 1, 1)])
    m = load_onnx(data, num_threads=2)
    # (the Convs: 3 -> 8 of 12 x 15 pixels, 8 -> 12 of 6 x 7, 12 -> 5 of 6 x 7)
    small = [12 * 15 * 8 * 3 * 9, 6 * 7 * 12 * 8 * 9, 6 * 7 * 5 * 12 * 9]
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", sorted(small)[1] + 1)
    for B in (1, 3):
        x = np.random.default_rng(B).standard_normal((B, 3, 12, 15)).astype(np.float32)
        want = m.run({"x": x})["y"]
        for pause, ones in ((0.0, B == 1), (-1.0, False)):
            monkeypatch.setattr(_threads, "IDLE_SINGLE_S", pause)
            spy.runs.clear()
            np.testing.assert_array_equal(m.run({"x": x})["y"], want)
            threads = [r[2] for r in spy.runs]
            assert threads == [1 if ones and c < sorted(small)[1] + 1 else 2
                               for c in small], (B, pause, threads)
