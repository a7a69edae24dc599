"""2-D (and 3-D) convolutions and pools in ONNX graphs: the CNN front-ends of CRNN models.

(a) hand-written Conv / MaxPool / AveragePool nodes against ONNX Runtime, live, over
pads, auto_pad, strides, dilations, group (depthwise too), ceil_mode,
count_include_pad, odd sizes, float32 and float64 (where ONNX Runtime has no float64
kernel, against a direct loop); (b) torch CRNN models (Conv2d, BatchNorm2d, ReLU,
MaxPool2d, then permute / reshape to (T, B, C*H), a bidirectional LSTM or GRU and a
Linear) exported with ``torch.onnx.export(..., dynamo=False)``, against ONNX Runtime and
torch; (c) tf2onnx's form of a Keras Conv1D (NHWC Transpose, Unsqueeze, Conv of kernel
[1, k], Squeeze, Transpose) feeding an LSTM node; (d) what is refused.
"""
from __future__ import annotations

import io
import itertools
import threading
import time
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io import _onnx_conv  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

TOL = 1e-5
_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def _ort(data, feeds):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _same_as_ort(m, data, feeds, calls=2, tol=TOL):
    """``m``'s outputs for ``feeds`` in ``calls`` calls against ONNX Runtime's; the last
    call's."""
    ref = _ort(data, feeds)
    for _ in range(calls):
        got = m.run(feeds)
        for k in ref:
            assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
            assert got[k].dtype == ref[k].dtype, k
            np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol, err_msg=k)
    return got


def _one_node(op, x, inits=(), **attrs):
    names = ["x"] + [t.name for t in inits]
    g = helper.make_graph([helper.make_node(op, names, ["y"], name="the_node", **attrs)],
                          "g", [helper.make_tensor_value_info("x", _TYPES[x.dtype.type],
                                                              list(x.shape))],
                          [onnx.ValueInfoProto(name="y")], list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model.SerializeToString()


def _pads_of(L, k, s, d, attrs):
    """ONNX's (before, after) per axis, for the direct references (auto_pad as the
    spec: SAME pads ceil(L / s) outputs' worth)."""
    auto = attrs.get("auto_pad", "NOTSET")
    D = len(L)
    if auto == "VALID":
        return [(0, 0)] * D
    if auto.startswith("SAME"):
        out = []
        for LL, kk, ss, dd in zip(L, k, s, d):
            total = max((-(-LL // ss) - 1) * ss + (kk - 1) * dd + 1 - LL, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return out
    p = attrs.get("pads", [0] * 2 * D)
    return list(zip(p[:D], p[D:]))


def _conv_direct(x, w, b, s, d, pads, g):
    """A direct float64 loop over output positions (independent of the im2col GEMM)."""
    N, C = x.shape[:2]
    M, cg = w.shape[:2]
    k = w.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0)) + tuple(pads))
    n = [(P - (kk - 1) * dd - 1) // ss + 1 for P, kk, ss, dd in zip(xp.shape[2:], k, s, d)]
    y = np.zeros((N, M) + tuple(n))
    mg = M // g
    for pos in itertools.product(*(range(m) for m in n)):
        win = xp[(slice(None), slice(None)) + tuple(
            slice(p * ss, p * ss + (kk - 1) * dd + 1, dd) for p, ss, kk, dd in zip(pos, s, k, d))]
        for q in range(g):
            part = win[:, q * cg:(q + 1) * cg]          # (N, cg, *k)
            y[(slice(None), slice(q * mg, (q + 1) * mg)) + pos] = np.tensordot(
                part, w[q * mg:(q + 1) * mg].astype(np.float64),
                axes=(list(range(1, part.ndim)), list(range(1, part.ndim))))
    if b is not None:
        y += b.reshape((1, M) + (1,) * len(k))
    return y


# ------------------------------------------------------------- (a) single nodes vs ORT
_CONV_CASES = [
    # (N, C, M, spatial, kernel, strides, dilations, group, attrs)
    (2, 3, 4, (7, 9), (3, 3), (1, 1), (1, 1), 1, dict(pads=[1, 1, 1, 1])),
    (1, 4, 6, (8, 11), (3, 2), (2, 1), (1, 1), 2, dict(pads=[0, 1, 2, 0])),
    (2, 2, 4, (9, 7), (2, 3), (2, 3), (1, 1), 1, dict(auto_pad="SAME_UPPER")),
    (1, 3, 3, (6, 10), (3, 4), (1, 2), (1, 1), 3, dict(auto_pad="SAME_LOWER")),
    (2, 4, 8, (10, 9), (3, 3), (1, 1), (2, 3), 4, dict(pads=[2, 3, 1, 0])),
    (1, 6, 6, (5, 5), (3, 3), (2, 2), (1, 1), 6, dict(pads=[1, 1, 1, 1])),      # depthwise
    (3, 5, 7, (4, 6), (1, 1), (1, 1), (1, 1), 1, dict()),                      # 1x1
    (2, 2, 3, (5, 13), (5, 1), (1, 1), (1, 1), 1, dict(auto_pad="VALID")),
    (1, 2, 2, (3, 3), (3, 3), (1, 1), (1, 1), 1, dict()),                      # 1 output
    (2, 1, 4, (6, 17), (1, 5), (1, 3), (1, 2), 1, dict(pads=[0, 4, 0, 4])),    # [1, k]
    (1, 2, 4, (4, 5, 6), (2, 3, 2), (1, 2, 1), (1, 1, 2), 2,
     dict(pads=[1, 0, 1, 0, 1, 1])),                                          # 3-D
    (2, 3, 2, (5, 4, 3), (3, 2, 2), (2, 1, 1), (1, 1, 1), 1,
     dict(auto_pad="SAME_UPPER")),                                            # 3-D SAME
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N,C,M,L,k,s,d,g,attrs", _CONV_CASES)
def test_conv_matches_ort(N, C, M, L, k, s, d, g, attrs, bias):
    rng = np.random.default_rng(sum(L) * 7 + sum(k) + g)
    x = rng.standard_normal((N, C) + L).astype(np.float32)
    w = rng.standard_normal((M, C // g) + k).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if bias
                                                  else [])
    kw = dict(strides=list(s), dilations=list(d), group=g, **attrs)
    if g == 1:
        kw["kernel_shape"] = list(k)
    data = _one_node("Conv", x, inits, **kw)
    got = _same_as_ort(load_onnx(data), data, {"x": x})["y"]
    want = _conv_direct(x, w, b if bias else None, s, d, _pads_of(L, k, s, d, attrs), g)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("N,C,M,L,k,s,d,g,attrs", _CONV_CASES[::2])
def test_conv_float64(N, C, M, L, k, s, d, g, attrs):
    """float64 (ONNX Runtime has no float64 Conv kernel): against a direct float64 loop,
    to float64's precision, and in float64."""
    rng = np.random.default_rng(sum(L) + sum(k))
    x = rng.standard_normal((N, C) + L)
    w = rng.standard_normal((M, C // g) + k)
    b = rng.standard_normal(M)
    data = _one_node("Conv", x, [numpy_helper.from_array(w, "W"),
                                 numpy_helper.from_array(b, "B")],
                     strides=list(s), dilations=list(d), group=g, **attrs)
    got = load_onnx(data).run({"x": x})["y"]
    assert got.dtype == np.float64
    want = _conv_direct(x, w, b, s, d, _pads_of(L, k, s, d, attrs), g)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("L,k,s,attrs", [
    ((8, 10), (2, 2), (2, 2), dict()),
    ((7, 9), (3, 3), (2, 2), dict(pads=[1, 1, 1, 1], ceil_mode=1)),
    ((7, 9), (3, 2), (2, 1), dict(pads=[1, 0, 1, 1], ceil_mode=1, count_include_pad=1)),
    ((9, 7), (3, 3), (1, 1), dict(auto_pad="SAME_UPPER")),
    ((9, 8), (4, 3), (3, 2), dict(auto_pad="SAME_LOWER", count_include_pad=1)),
    ((10, 7), (4, 3), (3, 2), dict(pads=[2, 1, 1, 2], ceil_mode=1, count_include_pad=1)),
    ((9, 9), (2, 3), (1, 2), dict(dilations=[2, 1])),
    ((6, 11), (2, 3), (2, 3), dict(auto_pad="VALID", ceil_mode=1)),
    ((5, 32), (2, 1), (2, 1), dict()),                      # a CRNN's (2, 1) pool
    ((5, 4, 7), (2, 3, 2), (2, 1, 2), dict(pads=[1, 0, 1, 0, 1, 1], ceil_mode=1)),   # 3-D
    ((4, 5, 6), (2, 2, 3), (1, 2, 2), dict(auto_pad="SAME_UPPER", count_include_pad=1)),
])
def test_pool_matches_ort(op, L, k, s, attrs):
    x = np.random.default_rng(sum(L) * sum(k)).standard_normal((2, 3) + L).astype(np.float32)
    kw = dict(kernel_shape=list(k), strides=list(s), **attrs)
    if op == "MaxPool":
        kw.pop("count_include_pad", None)
    data = _one_node(op, x, **kw)
    _same_as_ort(load_onnx(data), data, {"x": x})


def test_pools_float64():
    """float64 MaxPool against ONNX Runtime's; AveragePool (no float64 kernel there)
    against its float32 result, and kept in float64."""
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 8))
    for op, kw in (("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                                    ceil_mode=1)),
                   ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 1],
                                        pads=[1, 1, 1, 1], count_include_pad=0))):
        data = _one_node(op, x, **kw)
        got = load_onnx(data).run({"x": x})["y"]
        assert got.dtype == np.float64
        if op == "MaxPool":
            np.testing.assert_array_equal(got, _ort(data, {"x": x})["y"])
        else:
            x32 = x.astype(np.float32)
            want = _ort(_one_node(op, x32, **kw), {"x": x32})["y"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batchnorm_and_global_pools_1d_2d_3d():
    """(the 1-D case was tests/test_onnx.py's test_batchnorm_and_global_pools_match_ort,
    with the same draws)"""
    rng = np.random.default_rng(6)
    for shape in ((2, 3, 7), (2, 3, 5, 7), (2, 3, 4, 3, 5)):
        x = rng.standard_normal(shape).astype(np.float32)
        stats = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in (
            (rng.standard_normal(3), "scale"), (rng.standard_normal(3), "bias"),
            (rng.standard_normal(3), "mean"), (rng.uniform(0.5, 2, 3), "var"))]
        for op, inits, kw in (("BatchNormalization", stats, dict(epsilon=1e-3)),
                              ("GlobalAveragePool", (), {}), ("GlobalMaxPool", (), {})):
            data = _one_node(op, x, inits, **kw)
            _same_as_ort(load_onnx(data), data, {"x": x})


@pytest.mark.parametrize("chunk", [2 * (4 * 9 + 6) * 5 * 8, 2 * (4 * 9 + 6) * 8, 1])
def test_conv_in_blocks(monkeypatch, chunk):
    """A Conv whose copied windows and outputs are beyond ``_IM2COL_CHUNK`` runs a batch
    slice at a time (here 2 items of 5), or a block of output rows of one item at a time
    (2 rows of 5; 1 row): the same numbers."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 4, 9, 8)).astype(np.float32)
    w = numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "B")
    data = _one_node("Conv", x, [w, b], pads=[1, 1, 1, 1], group=2, strides=[2, 1])
    want = load_onnx(data).run({"x": x})["y"]
    monkeypatch.setattr(_onnx_conv, "_IM2COL_CHUNK", chunk)
    got = _same_as_ort(load_onnx(data), data, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gemm_layouts_and_threads(monkeypatch):
    """_gemm (scipy's BLAS through ctypes) against np.matmul for row-major, transposed
    and strided operands, float32 and float64, beta; float16 through np.matmul; a Conv's
    GEMMs on _GEMM_THREADS BLAS threads (1), or the model's count where that is None,
    entered and left in pairs (fr_blas_enter / fr_blas_leave)."""
    from fastrnn import _kernels
    rng = np.random.default_rng(5)
    for dt in (np.float32, np.float64, np.float16):
        tol = 1e-5 if dt == np.float32 else 1e-12 if dt == np.float64 else 1e-2
        a = rng.standard_normal((13, 7)).astype(dt)
        b = rng.standard_normal((7, 5)).astype(dt)
        big = rng.standard_normal((20, 30)).astype(dt)
        for aa in (a, np.asfortranarray(a), big[2:15, 3:10]):
            for bb in (b, np.asfortranarray(b), big[1:8, 20:25]):
                for c in (np.zeros((13, 5), dt), np.zeros((5, 13), dt).T,
                          np.zeros((13, 9), dt)[:, 2:7]):
                    c[...] = 1
                    _onnx_conv._gemm(aa, bb, c, beta=0.5)
                    want = aa.astype(np.float64) @ bb.astype(np.float64) + 0.5
                    np.testing.assert_allclose(c, want, rtol=tol, atol=tol)
    assert _onnx_conv._blas_gemm(np.dtype(np.float32)) is not None
    seen, enter, leave = [], _kernels._blas_enter, _kernels._blas_leave

    def spy_enter(n):
        seen.append(n)
        return enter(n)

    def spy_leave(tok):
        seen.append(-tok)
        leave(tok)
    monkeypatch.setattr(_kernels, "_blas_enter", spy_enter)
    monkeypatch.setattr(_kernels, "_blas_leave", spy_leave)
    x = rng.standard_normal((2, 8, 12, 16)).astype(np.float32)
    w = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W")
    data = _one_node("Conv", x, [w], pads=[1, 1, 1, 1])
    y1 = load_onnx(data, num_threads=2).run({"x": x})["y"]
    assert seen == [1, -1], seen
    monkeypatch.setattr(_onnx_conv, "_GEMM_THREADS", None)
    seen.clear()
    y2 = load_onnx(data, num_threads=2).run({"x": x})["y"]
    assert seen == [2, -2], seen
    # (float32 sums of 72 products, split differently on 1 and 2 BLAS threads: 4.8e-6
    # apart on a Zen 5)
    np.testing.assert_allclose(y1, y2, rtol=2e-5, atol=2e-5)


def _graph(nodes, x, inits, outs=("y",), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", _TYPES[x.dtype.type], ["N", x.shape[1]] + [f"L{i}" for i in range(x.ndim - 2)])],
        [onnx.ValueInfoProto(name=o) for o in outs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _block(x, M=6, k=(3, 3), group=1, bias=True, conv=None, bn=False, act="Relu",
           act_kw=None, pool=None, extra=(), outs=("y",), seed=0):
    """A graph: Conv [-> BatchNormalization] [-> act] [-> MaxPool(**pool)] ending in
    "y", plus ``extra`` nodes; its initializers made here."""
    rng = np.random.default_rng(seed)
    dt = x.dtype.type
    C = x.shape[1]
    inits = [numpy_helper.from_array(rng.standard_normal((M, C // group) + k).astype(dt), "W")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(M).astype(dt), "B"))
    chain = ["c"]
    nodes = [helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["c"],
                              group=group, **(conv or dict(pads=[1] * 2 * len(k))))]
    if bn:
        for n, v in (("scale", rng.uniform(0.5, 1.5, M)), ("shift", rng.standard_normal(M)),
                     ("mean", rng.standard_normal(M)), ("var", rng.uniform(0.5, 2, M))):
            inits.append(numpy_helper.from_array(v.astype(dt), n))
        nodes.append(helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean",
                                                             "var"], ["n"], epsilon=1e-3))
        chain.append("n")
    if act:
        ins = [chain[-1]]
        if act == "Clip":
            inits += [numpy_helper.from_array(np.array(v, dt), n) for v, n in
                      ((-0.5, "lo"), (0.7, "hi"))]
            ins += ["lo", "hi"]
        nodes.append(helper.make_node(act, ins, ["a"], **(act_kw or {})))
        chain.append("a")
    if pool is not None:
        nodes.append(helper.make_node("MaxPool", [chain[-1]], ["p"], **pool))
        chain.append("p")
    nodes.append(helper.make_node("Identity", [chain[-1]], ["y"]))
    nodes += list(extra)
    return _graph(nodes, x, inits, outs)


def _prog_ops(m):
    """The op types a model's (only) kept program runs as steps, by the node names in
    their ``where``."""
    (prog,) = m._progs.values()
    return [w.split(" ")[2] for _, _, _, w in prog.steps]


_POOL2 = dict(kernel_shape=[2, 2], strides=[2, 2])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    dict(),                                                     # Conv + Relu
    dict(pool=_POOL2),                                          # + 2x2 MaxPool
    dict(bn=True, pool=_POOL2),                                 # BN folded
    dict(bn=True, bias=False, pool=dict(kernel_shape=[2, 1], strides=[2, 1])),
    dict(act="LeakyRelu", act_kw=dict(alpha=0.1), pool=dict(kernel_shape=[3, 3],
                                                            strides=[2, 2])),
    dict(act="Clip", pool=dict(kernel_shape=[2, 3], strides=[3, 2], ceil_mode=1)),
    dict(act=None, pool=_POOL2, group=2),
    dict(group=6, M=12, pool=_POOL2),                           # depthwise, multiplier 2
    dict(group=6, M=6, k=(1, 1), conv={}, bn=True),             # 1x1 depthwise
    dict(M=5, k=(1, 1), conv={}, pool=_POOL2),                  # 1x1: no window copies
    dict(conv=dict(strides=[2, 1], dilations=[1, 2], pads=[0, 2, 1, 2])),
])
def test_fused_conv_blocks(case, dt):
    """Conv -> [BatchNormalization] -> [Relu / LeakyRelu / Clip] -> [MaxPool] as one
    step of the kept program (ConvChain), odd sizes (the pool's floor drops a row and a
    column), groups, depthwise, 1x1, float64: as ONNX Runtime (float64: against the
    graph run unfused, to float64's precision), in every call."""
    x = np.random.default_rng(1).standard_normal((3, 6, 11, 13)).astype(dt)
    data = _block(x, **case)
    m = load_onnx(data)
    if dt == np.float32:
        got = _same_as_ort(m, data, {"x": x}, calls=3)["y"]
    else:
        want = m.run({"x": x})["y"]          # (the first call: every node on its own)
        got = m.run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert got.dtype == np.float64
    ops = _prog_ops(m)
    assert ops[0] == "Conv" and not {"Relu", "LeakyRelu", "Clip", "BatchNormalization",
                                     "MaxPool"} & set(ops), ops


@pytest.mark.parametrize("pool", [
    dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),    # adds a window on 11, 13
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]),
    dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1]),
])
def test_maxpool_not_fused_where_windows_leave_the_input(pool):
    """A MaxPool with padding, ceil_mode's extra window or dilation stays its own step
    (the Relu before it still fused); the same numbers as ONNX Runtime."""
    x = np.random.default_rng(2).standard_normal((2, 6, 11, 13)).astype(np.float32)
    data = _block(x, pool=pool)
    m = load_onnx(data)
    _same_as_ort(m, data, {"x": x}, calls=3)
    assert _prog_ops(m)[:2] == ["Conv", "MaxPool"], _prog_ops(m)


def test_conv_output_read_elsewhere_is_not_fused():
    """A Conv output also read by another node (or wanted), a LeakyRelu of negative
    alpha: not fused; a wanted intermediate value is computed."""
    x = np.random.default_rng(3).standard_normal((2, 6, 9, 10)).astype(np.float32)
    # the Conv's output read by the Relu and an Add
    data = _block(x, pool=_POOL2, extra=[helper.make_node("Add", ["c", "c"], ["z"])],
                  outs=("y", "z"))
    m = load_onnx(data)
    _same_as_ort(m, data, {"x": x}, calls=3)
    assert _prog_ops(m)[:3] == ["Conv", "Relu", "MaxPool"], _prog_ops(m)
    # the Relu's output wanted: Conv + Relu fused, the pool its own step
    data = _block(x, pool=_POOL2, outs=("y", "a"))
    m = load_onnx(data)
    got = _same_as_ort(m, data, {"x": x}, calls=3)
    assert _prog_ops(m)[:2] == ["Conv", "MaxPool"], _prog_ops(m)
    assert got["a"].flags.c_contiguous
    # a LeakyRelu of alpha -0.5 does not commute with the max: Conv alone
    data = _block(x, act="LeakyRelu", act_kw=dict(alpha=-0.5), pool=_POOL2)
    m = load_onnx(data)
    _same_as_ort(m, data, {"x": x}, calls=3)
    assert _prog_ops(m)[:3] == ["Conv", "LeakyRelu", "MaxPool"], _prog_ops(m)


def test_fused_step_other_input_runs_the_ops():
    """The fused step given an input of another shape or dtype (a value the first call
    did not see) runs the nodes it covers, one by one."""
    x = np.random.default_rng(4).standard_normal((2, 6, 9, 10)).astype(np.float32)
    data = _block(x, bn=True, pool=_POOL2)
    m = load_onnx(data)
    m.run({"x": x})
    m.run({"x": x})
    (prog,) = m._progs.values()
    run = prog.steps[0][0]
    other = np.random.default_rng(5).standard_normal((1, 6, 7, 8))
    got = run(other.astype(np.float32))[0]
    want = _ort(data, {"x": other.astype(np.float32)})["y"]
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    assert run(other)[0].dtype == np.float64


@pytest.mark.parametrize("workers,chunk", [(2, 1 << 19), (3, 200), (2, 1)])
def test_conv_split_between_threads(monkeypatch, workers, chunk):
    """A Conv's blocks shared by the calling thread and helpers (_SPLIT_MACS 0: every
    Conv; small _IM2COL_CHUNK: many blocks of rows): the numbers of one thread."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 10, 9)).astype(np.float32)
    cases = [dict(pool=_POOL2), dict(bn=True, pool=dict(kernel_shape=[3, 3], strides=[2, 2])),
             dict(group=2, act=None), dict(k=(1, 1), conv={}, M=5)]
    want = [load_onnx(_block(x, **c)).run({"x": x})["y"] for c in cases]
    monkeypatch.setattr(_onnx_conv, "_SPLIT_MACS", 0)
    monkeypatch.setattr(_onnx_conv, "_WORKERS", workers)
    monkeypatch.setattr(_onnx_conv, "_IM2COL_CHUNK", chunk)
    for c, wnt in zip(cases, want):
        m = load_onnx(_block(x, **c), num_threads=workers)
        for _ in range(2):
            np.testing.assert_allclose(m.run({"x": x})["y"], wnt, rtol=1e-5, atol=1e-5)


def test_conv_helper_error_reaches_the_caller(monkeypatch):
    """An error in a helper's part of a Conv is raised in the calling thread, and the
    next call runs."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 4, 10, 9)).astype(np.float32)
    data = _block(x, pool=_POOL2)
    monkeypatch.setattr(_onnx_conv, "_SPLIT_MACS", 0)
    monkeypatch.setattr(_onnx_conv, "_WORKERS", 2)
    m = load_onnx(data, num_threads=2)
    want = m.run({"x": x})["y"]
    real = _onnx_conv._gemm
    main = threading.get_ident()

    def gemm(*a, **k):      # (the calling thread slow: a helper takes blocks)
        if threading.get_ident() != main:
            raise MemoryError("helper")
        time.sleep(0.005)
        return real(*a, **k)
    monkeypatch.setattr(_onnx_conv, "_gemm", gemm)
    monkeypatch.setattr(_onnx_conv, "_IM2COL_CHUNK", 200)       # (many blocks)
    with pytest.raises(MemoryError, match="helper"):
        for _ in range(5):
            m.run({"x": x})
    monkeypatch.setattr(_onnx_conv, "_gemm", real)
    np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-6, atol=1e-6)


def test_crnn_from_4_threads(crnns, monkeypatch):
    """The CRNN called from 4 Python threads at once (its Conv GEMMs release the GIL;
    the Conv split between helpers too): each call's answer is the single-thread one."""
    monkeypatch.setattr(_onnx_conv, "_SPLIT_MACS", 0)
    net, dyn, _ = crnns["LSTM"]
    m = load_onnx(dyn)
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((B, 1, 16, 24)).astype(np.float32) for B in (1, 2, 3, 4)]
    ref = [m.run({"x": x})["y"] for x in xs]
    barrier, errors, got = threading.Barrier(4), [], {}

    def worker(k):
        try:
            barrier.wait()
            for i in range(25):
                j = (k + i) % 4
                got[k, i] = (j, m.run({"x": xs[j]})["y"])
        except BaseException as e:     # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 100
    for j, y in got.values():
        np.testing.assert_array_equal(y, ref[j])


# ------------------------------------------------------------ (b) torch CRNN exports
class _CRNN(torch.nn.Module):
    """A CRNN as OCR / speech / sound event detection models are: conv blocks
    (Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d) over an image / spectrogram (B, 1, H, W),
    the width as time: (W', B, C * H'), a bidirectional LSTM or GRU, a Linear."""

    def __init__(self, rnn="LSTM", H=16):
        super().__init__()
        c = (1, 8, 12, 16)
        blocks = []
        for j, (ci, co) in enumerate(zip(c[:-1], c[1:])):
            blocks += [torch.nn.Conv2d(ci, co, 3, padding=1, bias=j != 1),
                       torch.nn.BatchNorm2d(co), torch.nn.ReLU(),
                       torch.nn.MaxPool2d((2, 2) if j < 2 else (2, 1))]
        blocks.insert(-1, torch.nn.Conv2d(16, 16, (3, 1), padding=(1, 0), groups=4))
        self.cnn = torch.nn.Sequential(*blocks)
        self.rnn = getattr(torch.nn, rnn)(16 * (H // 8), 10, bidirectional=True)
        self.head = torch.nn.Linear(20, 7)
        with torch.no_grad():
            for m in self.cnn:
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = self.cnn(x)                                 # (B, C, H', W')
        y = y.permute(3, 0, 1, 2)                       # (W', B, C, H')
        y = y.reshape(y.shape[0], y.shape[1], -1)       # (T, B, C * H')
        out, _ = self.rnn(y)
        return self.head(out)                           # (T, B, classes)


def _export_crnn(net, x, dynamic):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 3: "w"}, "y": {0: "t", 1: "b"}}
                          if dynamic else None)
    return f.getvalue()


@pytest.fixture(scope="module")
def crnns():
    out = {}
    for rnn in ("LSTM", "GRU"):
        torch.manual_seed(len(rnn))
        net = _CRNN(rnn).eval()
        x = np.random.default_rng(0).standard_normal((1, 1, 16, 24)).astype(np.float32)
        out[rnn] = net, _export_crnn(net, x, True), _export_crnn(net, x, False)
    return out


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_crnn_export_matches_ort_and_torch(crnns, rnn):
    net, dyn, static = crnns[rnn]
    m = load_onnx(dyn)
    ops = {n.op_type for n in onnx.load_from_string(dyn).graph.node}
    assert {"Conv", "MaxPool", rnn}.issubset(ops), ops
    rng = np.random.default_rng(1)
    for B, W in ((1, 24), (3, 24), (3, 40), (1, 8)):       # batch 1 and 3, other widths
        x = rng.standard_normal((B, 1, 16, W)).astype(np.float32)
        got = _same_as_ort(m, dyn, {"x": x})["y"]
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert got.shape == (W // 4, B, 7)
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    x = rng.standard_normal((1, 1, 16, 24)).astype(np.float32)
    got = _same_as_ort(load_onnx(static), static, {"x": x})["y"]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=TOL, atol=TOL)


# ----------------------------------------------- (c) tf2onnx's form of a Keras Conv1D
def _tf2onnx_conv1d_lstm(T, I=3, M=5, k=3, H=4, seed=0):
    """Keras ``Conv1D(M, k, padding="same") -> LSTM(H)`` as tf2onnx writes it: the
    channels-last input (N, T, I) unsqueezed to NHWC (N, 1, T, I), transposed to NCHW,
    a 2-D Conv of kernel [1, k], transposed back to NHWC, squeezed to (N, T, M), and
    time-major for the LSTM node."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((M, I, 1, k)).astype(np.float32) * 0.5
    b = rng.standard_normal(M).astype(np.float32) * 0.1
    W = rng.standard_normal((1, 4 * H, M)).astype(np.float32) * 0.4
    R = rng.standard_normal((1, 4 * H, H)).astype(np.float32) * 0.4
    Bi = rng.standard_normal((1, 8 * H)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (w, "conv_w"), (b, "conv_b"), (W, "W"), (R, "R"), (Bi, "B"),
        (np.array([1], np.int64), "ax1"), (np.array([1], np.int64), "ax1b"),
        (np.array([0], np.int64), "ax0"))]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax1"], ["x4"]),                  # (N, 1, T, I)
        helper.make_node("Transpose", ["x4"], ["xc"], perm=[0, 3, 1, 2]),     # (N, I, 1, T)
        helper.make_node("Conv", ["xc", "conv_w", "conv_b"], ["yc"], name="conv1d",
                         kernel_shape=[1, k], strides=[1, 1], dilations=[1, 1],
                         auto_pad="SAME_UPPER"),                             # (N, M, 1, T)
        helper.make_node("Transpose", ["yc"], ["y4"], perm=[0, 2, 3, 1]),     # (N, 1, T, M)
        helper.make_node("Squeeze", ["y4", "ax1b"], ["y3"]),                  # (N, T, M)
        helper.make_node("Relu", ["y3"], ["r"]),
        helper.make_node("Transpose", ["r"], ["seq"], perm=[1, 0, 2]),        # (T, N, M)
        helper.make_node("LSTM", ["seq", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H),
        helper.make_node("Squeeze", ["Y_h", "ax0"], ["h"]),                   # (N, H)
    ]
    g = helper.make_graph(nodes, "tf2onnx_conv1d",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I])],
                          [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", H]),
                           helper.make_tensor_value_info("y3", TensorProto.FLOAT,
                                                         ["N", T, M])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString(), w, b


def test_tf2onnx_conv1d_lstm():
    T, I = 9, 3
    data, w, b = _tf2onnx_conv1d_lstm(T, I)
    m = load_onnx(data)
    rng = np.random.default_rng(3)
    for N in (1, 4):
        x = rng.standard_normal((N, T, I)).astype(np.float32)
        got = _same_as_ort(m, data, {"x": x})
        # the Conv part against a direct Conv1D over time (SAME: 1 step each side)
        want = _conv_direct(x.transpose(0, 2, 1), w[:, :, 0], b, [1], [1], [(1, 1)], 1)
        np.testing.assert_allclose(got["y3"], want.transpose(0, 2, 1), rtol=TOL, atol=TOL)
        assert got["h"].shape == (N, 4)


# ------------------------------------------------------------------------ (d) refusals
def test_refusals_name_the_node():
    x6 = np.ones((1, 2, 3, 3, 3, 3), np.float32)          # 4 spatial axes
    w6 = numpy_helper.from_array(np.ones((2, 2, 1, 1, 1, 1), np.float32), "W")
    with pytest.raises(ValueError, match=r"the_node.*only 1-D, 2-D and 3-D Conv is supported"):
        load_onnx(_one_node("Conv", x6, [w6])).run({"x": x6})
    for op in ("MaxPool", "AveragePool"):
        with pytest.raises(ValueError, match=rf"the_node.*only 1-D, 2-D and 3-D {op}"):
            load_onnx(_one_node(op, x6, kernel_shape=[2] * 4)).run({"x": x6})
    x = np.ones((1, 2, 6, 7), np.float32)
    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "W")
    with pytest.raises(LoadError, match=r"unsupported ONNX op type\(s\) \['ConvTranspose'\]"):
        load_onnx(_one_node("ConvTranspose", x, [w]))
    g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [onnx.ValueInfoProto(name="y"), onnx.ValueInfoProto(name="i")])
    with pytest.raises(LoadError, match="MaxPool's Indices output is not supported"):
        load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    for op, kw in (("Conv", {}), ("MaxPool", dict(kernel_shape=[3, 3])),
                   ("AveragePool", dict(kernel_shape=[3, 3]))):
        with pytest.raises(ValueError, match=rf"the_node.*{op}: auto_pad SAME_LOWER with "
                                             r"dilations > 1 is not supported"):
            load_onnx(_one_node(op, x, [w] if op == "Conv" else [], dilations=[1, 2],
                                auto_pad="SAME_LOWER", **kw)).run({"x": x})
    # what does not fit the input or the weights
    for kw, msg in ((dict(pads=[1, 1]), r"pads must be 4 non-negative ints for a 2-D Conv"),
                    (dict(strides=[1]), r"strides must be 2 positive ints for a 2-D Conv"),
                    (dict(kernel_shape=[3, 2]), r"kernel_shape \[3, 2\] for weights"),
                    (dict(group=2), r"group 2 do not fit"),
                    (dict(dilations=[4, 1]), r"a kernel of \[3, 3\] taps \(dilation \[4, 1\]\) "
                                             r"does not fit in \[6, 7\] steps")):
        with pytest.raises(ValueError, match=msg):
            load_onnx(_one_node("Conv", x, [w], **kw)).run({"x": x})
    with pytest.raises(ValueError, match=r"pads \[3, 0, 0, 0\] must be smaller than the "
                                         r"kernel \(\[3, 3\]\)"):
        load_onnx(_one_node("MaxPool", x, kernel_shape=[3, 3], pads=[3, 0, 0, 0])).run({"x": x})
    w3 = numpy_helper.from_array(np.ones((2, 2, 3), np.float32), "W")
    with pytest.raises(ValueError, match=r"weights of shape \(2, 2, 3\) for a 2-D Conv"):
        load_onnx(_one_node("Conv", x, [w3])).run({"x": x})
    stats = [numpy_helper.from_array(np.ones(2, np.float32), n)
             for n in ("scale", "bias", "mean", "var")]
    with pytest.raises(ValueError, match="training_mode=1 is not supported"):
        load_onnx(_one_node("BatchNormalization", x, stats, training_mode=1)).run({"x": x})


def test_work_bound():
    """A file's kernel_shape / pads asking for minutes of work or terabytes are refused
    before any is done (2^31 element steps)."""
    x = np.ones((1, 2, 6, 7), np.float32)
    with pytest.raises(ValueError, match=r"the_node.*MaxPool: a window of \[3000, 3000\] "
                                         r"taps .* beyond what fastrnn runs"):
        load_onnx(_one_node("MaxPool", x, kernel_shape=[3000, 3000],
                            pads=[2999] * 4)).run({"x": x})
    x5 = np.ones((1, 2, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"AveragePool: .*beyond what fastrnn runs"):
        load_onnx(_one_node("AveragePool", x5, kernel_shape=[1300] * 3,
                            pads=[1299] * 6)).run({"x": x5})
    w = numpy_helper.from_array(np.ones((3, 2, 2, 2), np.float32), "W")
    with pytest.raises(ValueError, match=r"Conv: pads \[100000, 100000, 100000, 100000\] "
                                         r"for \[6, 7\] steps are beyond what fastrnn runs"):
        load_onnx(_one_node("Conv", x, [w], pads=[10 ** 5] * 4)).run({"x": x})
    # the copied windows (im2col) of a kernel that is large but whose weights are small
    x = np.ones((1, 1, 500, 500), np.float32)
    w = numpy_helper.from_array(np.ones((1, 1, 250, 250), np.float32), "W")
    with pytest.raises(ValueError, match=r"Conv: a kernel of \[250, 250\] taps over \[251, "
                                         r"251\] outputs .* beyond what fastrnn runs"):
        load_onnx(_one_node("Conv", x, [w])).run({"x": x})


# ------------------------------------------------------- (e) windows ORT cuts or pads
def _pool_node(op, x, opset, **attrs):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("opset", [17, 19])
@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict()),
    ("MaxPool", dict(ceil_mode=1)),
    ("AveragePool", dict()),
    ("AveragePool", dict(count_include_pad=1)),
    ("AveragePool", dict(count_include_pad=1, ceil_mode=1)),
    ("AveragePool", dict(count_include_pad=1, pads=[0, 0, 1, 0])),
])
@pytest.mark.parametrize("shape,k,s", [((1, 11), [2, 3], [2, 2]), ((3, 5), [4, 2], [2, 1]),
                                       ((1, 2), [3, 3], [2, 2])])
def test_pool_window_cut_at_the_input_end(opset, op, attrs, shape, k, s):
    """A window longer than the (padded) input where ONNX Runtime's size rule still gives
    one output step (its C division truncates (L - k) / s toward 0): the window's max /
    mean over the steps inside (before opset 19 ORT divides by the whole kernel with
    count_include_pad and no ceil_mode), as ONNX Runtime; this was refused ("does not
    fit")."""
    x = np.random.default_rng(11).standard_normal((2, 3) + shape).astype(np.float32)
    data = _pool_node(op, x, opset, kernel_shape=k, strides=s, **attrs)
    _same_as_ort(load_onnx(data), data, {"x": x})


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_dilated_window_of_padding_alone(op):
    """A dilated window whose taps all fall in the padding (they step over the input):
    ONNX Runtime's MaxPool gives the dtype's lowest value and its AveragePool 0 (was
    -inf and NaN, 0 / 0)."""
    x = np.random.default_rng(12).standard_normal((1, 2, 1, 4)).astype(np.float32)
    data = _pool_node(op, x, 19, kernel_shape=[2, 1], dilations=[2, 1], pads=[1, 0, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _same_as_ort(load_onnx(data), data, {"x": x}, tol=0)["y"]
    assert np.isfinite(got).all()
