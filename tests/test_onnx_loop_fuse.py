"""Loop bodies run as one fastrnn layer call (fastrnn/io/_onnx_loop_fuse.py).

Hand-built graphs of the shape tf2onnx writes for a Keras RNN layer (a counter ``t``, a
Gather of ``X[t]``, the cell in Keras's layout, a condition ``t + 1 < T``; a mask's
selects), compared live with ONNX Runtime, with a NumPy reference of Keras's cell math
and with the op-by-op run (``_onnx_loop.FUSE = False``): SimpleRNN (tanh, relu,
sigmoid), LSTM, GRU (reset after / before), with and without a mask, float32 and
float64, odd sizes; each must be fused (its plan made); a GRU's or LSTM's linear
candidate (no activation op) too.  Bodies that look like a cell and are not one (a Clip,
a bias of the iteration number, x read at t + 1, an extra sum after the activation, a
scan output that is not h; a linear GRU / LSTM combined otherwise) must run op by op and
still match; a layer that disagrees with the body's own ops on random rows is not used.
Calls whose values do not allow the layer (a counter starting past the input, a
nonzero first output under a mask) run op by op: the same results or the same errors.
The tf2onnx fixtures (tests/fixtures/onnx/loop/) must be fused too."""
from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import _onnx_loop  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

from test_onnx_loop import FIX, _ort  # noqa: E402

F32, F64, I32, I64, BOOL = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32,
                            TensorProto.INT64, TensorProto.BOOL)
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "gru_before": 3}


def _sig(x):
    return 1 / (1 + np.exp(-x))


_NP_ACT = {"Tanh": np.tanh, "Relu": lambda v: np.maximum(v, 0), "Sigmoid": _sig,
           "linear": lambda v: v,
           "HardSigmoidK2": lambda v: np.clip(0.2 * v + 0.5, 0, 1),   # (tf.keras 2)
           "HardSigmoidK3": lambda v: np.clip(v + 3, 0, 6) / 6,       # (Keras 3)
           "Relu6": lambda v: np.clip(v, 0, 6),
           "HardSigmoidRsub": lambda v: np.clip(0.5 - (-0.2 * v), 0, 1),
           "WideClamp": lambda v: np.clip(0.2 * v + 0.5, 0, 1.2)}
# activations written as chains of scalar ops and clamps, as tf2onnx writes them:
# (op, constant) steps
_CHAINS = {"HardSigmoidK2": [("Mul", 0.2), ("Add", 0.5), ("Min", 1.0), ("Max", 0.0)],
           "HardSigmoidK3": [("Add", 3.0), ("Clip", (0.0, 6.0)), ("Mul", 1 / 6)],
           "Relu6": [("Clip", (0.0, 6.0))],
           "HardSigmoidRsub": [("Mul", -0.2), ("Rsub", 0.5), ("Min", 1.0), ("Max", 0.0)],
           "WideClamp": [("Mul", 0.2), ("Add", 0.5), ("Min", 1.2), ("Max", 0.0)]}


def _weights(cell, I, H, dtype, seed=0):
    """Keras-layout weights: kernel (I, G*H), recurrent (H, G*H), bias (G*H,) (Keras 3
    GRU reset_after: (2, 3H))."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    w = {"W": rng.uniform(-0.6, 0.6, (I, G * H)), "R": rng.uniform(-0.6, 0.6, (H, G * H))}
    w["b"] = rng.uniform(-0.5, 0.5, (2, G * H) if cell == "gru" else (G * H,))
    return {k: v.astype(dtype) for k, v in w.items()}


def _reference(cell, w, x, mask=None, act="Tanh", h0=None, zero_out=False, gact="Sigmoid"):
    """Keras's cell math in float64 over x (B, T, I): (outputs (B, T, H), h, c); under
    a mask the output repeats the last one at masked steps (``zero_out``: is zero)."""
    act = act or "linear"
    W, R, b = (w[k].astype(np.float64) for k in ("W", "R", "b"))
    B, T, _ = x.shape
    H = R.shape[0]
    h = np.zeros((B, H)) if h0 is None else h0.astype(np.float64)
    c = np.zeros((B, H))
    y = np.zeros((B, H))
    ys = []
    for t in range(T):
        xt = x[:, t].astype(np.float64)
        if cell == "rnn":
            hn, cn = _NP_ACT[act](xt @ W + h @ R + b), c
        elif cell == "lstm":
            i, f, g, o = np.split(xt @ W + h @ R + b, 4, axis=1)
            ga, a = _NP_ACT[gact], _NP_ACT[act]
            cn = ga(f) * c + ga(i) * a(g)
            hn = ga(o) * a(cn)
        elif cell == "gru":
            xz, hz = xt @ W + b[0], h @ R + b[1]
            z = _NP_ACT[gact](xz[:, :H] + hz[:, :H])
            r = _NP_ACT[gact](xz[:, H:2 * H] + hz[:, H:2 * H])
            n = _NP_ACT[act](xz[:, 2 * H:] + r * hz[:, 2 * H:])
            hn, cn = z * h + (1 - z) * n, c
        else:
            xz = xt @ W + b
            z = _NP_ACT[gact](xz[:, :H] + h @ R[:, :H])
            r = _NP_ACT[gact](xz[:, H:2 * H] + h @ R[:, H:2 * H])
            n = _NP_ACT[act](xz[:, 2 * H:] + (r * h) @ R[:, 2 * H:])
            hn, cn = z * h + (1 - z) * n, c
        if mask is not None:
            m = mask[:, t:t + 1]
            y = np.where(m, hn, 0 if zero_out else y)
            h, c = np.where(m, hn, h), np.where(m, cn, c)
        else:
            y, h, c = hn, hn, cn
        ys.append(y)
    return np.stack(ys, 1), h, c


def _cell_nodes(cell, H, act, x, h, c, out_h, out_c, ft, gact="Sigmoid", dropout=False,
                change=None):
    """Keras's cell as tf2onnx writes it (inputs x, h, c; weights W, R, b read by
    name; ``act``: Keras's activation, "linear" (or None) none: a SimpleRNN's an
    Identity, a GRU's or LSTM's no op at all, as tf2onnx; ``gact``: its
    recurrent_activation; ``change``: a linear GRU / LSTM that is not one,
    "gru_square" (h' = z h + (1 - z) n n), "gru_gate_swap" (h' = z h + (1 - r) n),
    "lstm_extra_h" (h' = o c' + 0.05 g), "lstm_old_c" (h' = o c)): nodes,
    initializers."""
    n, inits = [], []
    alias = {}                  # (a linear activation's output: its input)
    act = "linear" if act is None else act

    def mk(op, ins, outs, **kw):
        ins = [alias.get(i, i) for i in ins]
        if op == "linear":
            alias[outs[0]] = ins[0]
            return
        if op not in _CHAINS:
            n.append(helper.make_node(op, ins, outs, **kw))
            return
        cur = ins[0]
        for k, (o, c) in enumerate(_CHAINS[op]):
            nm = f"{outs[0]}_{k}"
            dst = outs[0] if k == len(_CHAINS[op]) - 1 else nm
            cs = c if isinstance(c, tuple) else (c,)
            for q, v in enumerate(cs):
                inits.append(numpy_helper.from_array(np.array(v, ft), f"{nm}_c{q}"))
            cn = [f"{nm}_c{q}" for q in range(len(cs))]
            n.append(helper.make_node("Sub", cn + [cur], [dst]) if o == "Rsub" else
                     helper.make_node(o, [cur] + cn, [dst]))
            cur = dst

    if cell == "rnn" and dropout:     # (tf.keras 2's recurrent_dropout at inference)
        mk("Shape", [h], ["hshp"])
        n.append(helper.make_node("ConstantOfShape", ["hshp"], ["ones"],
                                  value=numpy_helper.from_array(np.ones(1, ft))))
        mk("Mul", [h, "ones"], ["hd"])
        h = "hd"
    if cell == "rnn":
        mk("MatMul", [x, "W"], ["xw"])
        mk("Add", ["xw", "b"], ["xb"])
        mk("MatMul", [h, "R"], ["hr"])
        mk("Add", ["xb", "hr"], ["pre"])
        mk("Identity" if act == "linear" else act, ["pre"], [out_h])
    elif cell == "lstm":
        mk("MatMul", [x, "W"], ["xw"])
        mk("MatMul", [h, "R"], ["hr"])
        mk("Add", ["xw", "hr"], ["s"])
        mk("Add", ["s", "b"], ["pre"])
        mk("Split", ["pre"], ["gi", "gf", "gg", "go"], axis=1)
        mk(gact, ["gi"], ["ia"])
        mk(gact, ["gf"], ["fa"])
        mk(act, ["gg"], ["ga"])
        mk(gact, ["go"], ["oa"])
        mk("Mul", ["fa", c], ["fc"])
        mk("Mul", ["ia", "ga"], ["ig"])
        mk("Add", ["fc", "ig"], [out_c])
        mk(act, [out_c], ["tc"])
        if change == "lstm_extra_h":
            inits.append(numpy_helper.from_array(np.array(0.05, ft), "p05"))
            mk("Mul", ["oa", "tc"], ["oc"])
            mk("Mul", ["ga", "p05"], ["g05"])
            mk("Add", ["oc", "g05"], [out_h])
        else:
            mk("Mul", ["oa", c if change == "lstm_old_c" else "tc"], [out_h])
    elif cell == "gru":             # (Keras 3: reset after, bias (2, 3H))
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "ax0"))
        mk("Split", ["b"], ["b_in2", "b_rec2"], axis=0)
        mk("Squeeze", ["b_in2", "ax0"], ["b_in"])
        mk("Squeeze", ["b_rec2", "ax0"], ["b_rec"])
        mk("MatMul", [x, "W"], ["xw"])
        mk("Add", ["xw", "b_in"], ["xb"])
        mk("Split", ["xb"], ["xz", "xr", "xh"], axis=-1)
        mk("MatMul", [h, "R"], ["hr"])
        mk("Add", ["hr", "b_rec"], ["hb"])
        mk("Split", ["hb"], ["hz", "hr_", "hh"], axis=-1)
        mk("Add", ["xz", "hz"], ["pz"])
        mk(gact, ["pz"], ["z"])
        mk("Add", ["xr", "hr_"], ["pr"])
        mk(gact, ["pr"], ["r"])
        mk("Mul", ["r", "hh"], ["rh"])
        mk("Add", ["xh", "rh"], ["pn"])
        mk(act, ["pn"], ["nn"])
    else:                           # (tf.keras 2 reset_after=False: R sliced in the body)
        for k, v in (("s0", [0, 0]), ("e0", [H, 2 * H]), ("s1", [0, 2 * H]),
                     ("e1", [H, 3 * H]), ("axs", [0, 1])):
            inits.append(numpy_helper.from_array(np.array(v, np.int64), k))
        mk("MatMul", [x, "W"], ["xw"])
        mk("Add", ["xw", "b"], ["xb"])
        mk("Split", ["xb"], ["xz", "xr", "xh"], axis=-1)
        mk("Slice", ["R", "s0", "e0", "axs"], ["Rzr"])
        mk("MatMul", [h, "Rzr"], ["hzr"])
        mk("Split", ["hzr"], ["hz", "hr_"], axis=-1)
        mk("Add", ["xz", "hz"], ["pz"])
        mk(gact, ["pz"], ["z"])
        mk("Add", ["xr", "hr_"], ["pr"])
        mk(gact, ["pr"], ["r"])
        mk("Mul", ["r", h], ["rh"])
        mk("Slice", ["R", "s1", "e1", "axs"], ["Rh"])
        mk("MatMul", ["rh", "Rh"], ["rhR"])
        mk("Add", ["xh", "rhR"], ["pn"])
        mk(act, ["pn"], ["nn"])
    if cell in ("gru", "gru_before"):
        inits.append(numpy_helper.from_array(np.array(1, ft), "one_f"))
        mk("Mul", ["z", h], ["zh"])
        mk("Sub", ["one_f", "r" if change == "gru_gate_swap" else "z"], ["omz"])
        if change == "gru_square":
            mk("Mul", ["nn", "nn"], ["nsq"])
        mk("Mul", ["omz", "nsq" if change == "gru_square" else "nn"], ["zn"])
        mk("Add", ["zh", "zn"], [out_h])
    return n, inits


def _loop_graph(cell, I, H, dtype=np.float32, mask=False, act="Tanh", weights="init",
                start=0, trips=False, cond="less", change=None, h0=False, opset=17,
                zero_out=False, gact="Sigmoid", dropout=False):
    """A tf2onnx-like model: x (B, T, I) [, m (B, T) bool] -> y (B, T, H), h (B, H)
    [, c]; its Loop carries t, [y,] h, [c,] T and W (as tf2onnx: the kernel given back
    unchanged), reads R and b from the graph.  ``weights``: "init" (initializers) or
    "input" (graph inputs W, R, b); ``start``: the counter's first value; ``trips``: a
    trip count M = T; ``cond``: "less", "greater" or "and" (also Less(i, T), as Keras
    3); ``change``: a body that is not a cell ("clip", "iter_bias", "next_x",
    "plus_after", "scan_pre", "scan_h", "step2"; a linear GRU's or LSTM's: those of
    _cell_nodes); ``h0``: h's first value a graph input (and, under a mask, the output
    state y's; "h": h's alone); ``zero_out``: under a mask,
    the output zero at masked steps (a carried zeros value, as Keras's Bidirectional with
    return_sequences), not the last one."""
    ft = np.dtype(dtype)
    tt = F64 if ft == np.float64 else F32
    w = _weights(cell, I, H, ft)
    lstm = cell == "lstm"
    nodes, inits = [], []
    outer = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("Shape", ["xt"], ["shp"]),
             helper.make_node("Gather", ["shp", "i0"], ["T"], axis=0),
             helper.make_node("Cast", ["T"], ["Tf"], to=tt),
             helper.make_node("Less", ["zf", "Tf"], ["cond0"]),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Slice", ["xs", "s0b", "e1b", "a0"], ["Bd"]),
             helper.make_node("Concat", ["Bd", "Hd"], ["hshape"], axis=0),
             helper.make_node("Expand", ["zf", "hshape"], ["zeros"])]
    g_inits = [numpy_helper.from_array(np.array(0, np.int64), "i0"),
               numpy_helper.from_array(np.array(0, ft), "zf"),
               numpy_helper.from_array(np.array([0], np.int64), "s0b"),
               numpy_helper.from_array(np.array([1], np.int64), "e1b"),
               numpy_helper.from_array(np.array([0], np.int64), "a0"),
               numpy_helper.from_array(np.array([H], np.int64), "Hd"),
               numpy_helper.from_array(np.array(start, np.int32), "t_init")]
    g_in = [helper.make_tensor_value_info("x", tt, ["B", "T", I])]
    if weights == "init":
        g_inits += [numpy_helper.from_array(v, k) for k, v in w.items()]
    else:
        g_in += [helper.make_tensor_value_info(k, tt, list(v.shape)) for k, v in w.items()]
    if mask:
        g_in.append(helper.make_tensor_value_info("m", BOOL, ["B", "T"]))
        outer += [helper.make_node("Transpose", ["m"], ["mt2"], perm=[1, 0]),
                  helper.make_node("Unsqueeze", ["mt2", "ax2"], ["mt"])]
        g_inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    if h0:
        g_in.append(helper.make_tensor_value_info("h0", tt, ["B", H]))
    # the body
    b_in = [helper.make_tensor_value_info("i", I64, []),
            helper.make_tensor_value_info("cin", BOOL, []),
            helper.make_tensor_value_info("t", I32, [])]
    carried = ["t_init"]
    states = (["y"] if mask else []) + ["h"] + (["c"] if lstm else [])
    for s in states:
        b_in.append(helper.make_tensor_value_info(s, tt, None))
        carried.append("h0" if h0 and (s == "h" or (s == "y" and h0 != "h")) else "zeros")
    b_in += [helper.make_tensor_value_info("Tb", I64, []),
             helper.make_tensor_value_info("W", tt, None)]
    carried += ["T", "W"]
    if zero_out:
        b_in.append(helper.make_tensor_value_info("Zb", tt, None))
        carried.append("zeros")
    bn = [helper.make_node("Add", ["t", "one_i"], ["t1"]),
          helper.make_node("Gather", ["xt", "t1" if change == "next_x" else "t"], ["xk"])]
    b_inits = [numpy_helper.from_array(np.array(2 if change == "step2" else 1, np.int32),
                                       "one_i")]
    out_h = "hn0" if (mask or change == "plus_after") else "hn"
    cn, ci = _cell_nodes(cell, H, act, "xk", "h", "c", out_h, "cn0" if mask else "cn", ft,
                         gact, dropout, change)
    if change == "iter_bias":       # (x W + 0.1 i: the bias grows with the iteration)
        b_inits.append(numpy_helper.from_array(np.array(0.1, ft), "tenth"))
        cn = [helper.make_node("Cast", ["i"], ["if"], to=tt),
              helper.make_node("Mul", ["if", "tenth"], ["ib"]),
              helper.make_node("MatMul", ["xk", "W"], ["xw_i"]),
              helper.make_node("Add", ["xw_i", "ib"], ["xw"])] + cn[1:]
    bn += cn
    b_inits += ci
    if change == "clip":            # (the pre-activation clipped at +-8: probes never
        # get there, large inputs do)
        b_inits += [numpy_helper.from_array(np.array(-8, ft), "lo"),
                    numpy_helper.from_array(np.array(8, ft), "hi")]
        k = next(j for j, nd in enumerate(bn) if list(nd.output) == [out_h])
        bn[k] = helper.make_node(bn[k].op_type, ["prec"], [out_h])
        bn.insert(k, helper.make_node("Clip", ["pre", "lo", "hi"], ["prec"]))
    if change == "plus_after":
        b_inits.append(numpy_helper.from_array(np.array(0.2, ft), "p2"))
        bn.append(helper.make_node("Add", ["hn0", "p2"], ["hn1" if mask else "hn"]))
    if mask:
        src_h = "hn1" if change == "plus_after" else "hn0"
        bn += [helper.make_node("Gather", ["mt", "t"], ["mk"]),
               helper.make_node("Cast", ["mk"], ["mf"], to=tt),
               helper.make_node("Not", ["mk"], ["nm"]),
               helper.make_node("Cast", ["nm"], ["nmf"], to=tt)]
        for new, old, out in ((src_h, "Zb" if zero_out else "y", "yn"), (src_h, "h", "hn"),
                              ("cn0", "c", "cn")):
            if out == "cn" and not lstm:
                continue
            bn += [helper.make_node("Mul", ["mf", new], [out + "_a"]),
                   helper.make_node("Mul", ["nmf", old], [out + "_b"]),
                   helper.make_node("Add", [out + "_a", out + "_b"], [out])]
    if cond == "greater":
        bn += [helper.make_node("Cast", ["t1"], ["t1f"], to=F32),
               helper.make_node("Cast", ["Tb"], ["Tbf"], to=F32),
               helper.make_node("Greater", ["Tbf", "t1f"], ["cout"])]
    else:
        bn += [helper.make_node("Cast", ["t1"], ["t1f"], to=F32),
               helper.make_node("Cast", ["Tb"], ["Tbf"], to=F32),
               helper.make_node("Less", ["t1f", "Tbf"], ["cout" if cond == "less" else "c1"])]
        if cond == "and":
            bn += [helper.make_node("Less", ["i", "Tb"], ["c2"]),
                   helper.make_node("And", ["c2", "c1"], ["cout"])]
    scan = {"scan_pre": "pre", "scan_h": "hn"}.get(change, "yn" if mask else "hn")
    b_out = [helper.make_tensor_value_info("cout", BOOL, []),
             helper.make_tensor_value_info("t1", I32, [])]
    b_out += [helper.make_tensor_value_info(s + "n", tt, None) for s in states]
    b_out += [helper.make_tensor_value_info("Tb", I64, []),
              helper.make_tensor_value_info("W", tt, None)]
    if zero_out:
        b_out.append(helper.make_tensor_value_info("Zb", tt, None))
    b_out.append(helper.make_tensor_value_info(scan, tt, None))
    body = helper.make_graph(bn, "body", b_in, b_out, b_inits)
    louts = ["tf"] + [s + "_f" for s in states] + ["Tf_", "Wf"] + ["Zf"] * zero_out + ["ys"]
    outer.append(helper.make_node("Loop", ["T" if trips else "", "cond0"] + carried,
                                  louts, body=body))
    outer.append(helper.make_node("Transpose", ["ys"], ["y_out"], perm=[1, 0, 2]))
    g_out = [helper.make_tensor_value_info("y_out", tt, None),
             helper.make_tensor_value_info("h_f", tt, None),
             helper.make_tensor_value_info("tf", I32, None)]
    if lstm:
        g_out.append(helper.make_tensor_value_info("c_f", tt, None))
    if mask:
        g_out.append(helper.make_tensor_value_info("y_f", tt, None))
    g = helper.make_graph(outer + nodes, "g", g_in, g_out, g_inits + inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString(), w


def _loops(m):
    return [s[1][0] for s in m._steps if s[0] == "op" and s[1][1] == "Loop"]


def _fused(m) -> bool:
    """Whether every Loop of ``m`` has a plan (its body runs as a layer)."""
    ls = _loops(m)
    return bool(ls) and all(lp._fusion is not None and lp._fusion.cache is not None
                            and lp._fusion.cache[2] is not None for lp in ls)


def _feeds(I, B, T, dtype, mask=False, seed=1, w=None):
    rng = np.random.default_rng(seed)
    f = {"x": rng.standard_normal((B, T, I)).astype(dtype)}
    if mask:
        m = rng.uniform(size=(B, T)) < 0.7
        m[0, :] = True
        if B > 1:
            m[1, :] = False             # (all masked)
        f["m"] = m
    if w is not None:
        f.update(w)
    return f


def _tol(dtype):
    return (1e-4, 1e-5) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)


def _compare(data, feeds, dtype, fused=True, model=None):
    """fastrnn fused (``fused``: its plan made, else not; None: either) against ONNX
    Runtime and the op-by-op run; returns fastrnn's outputs."""
    ref = _ort(data, feeds)
    m = load_onnx(data) if model is None else model
    got = m.run(dict(feeds))
    assert fused is None or _fused(m) == fused
    try:
        _onnx_loop.FUSE = False
        slow = load_onnx(data).run(dict(feeds))
    finally:
        _onnx_loop.FUSE = True
    assert_outputs(got, ref, slow, dtype)
    return got


def assert_outputs(got, ref, slow, dtype):
    """fastrnn's outputs ``got`` are ONNX Runtime's ``ref`` (dtype, shape, values) and
    the op-by-op run's ``slow`` (values), within _tol(dtype) of the outputs' scale."""
    rtol, atol = _tol(dtype)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        a = atol * max(1.0, float(np.abs(ref[k]).max(initial=0)))   # (relu grows)
        np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=a, err_msg=k)
        np.testing.assert_allclose(got[k], slow[k], rtol=rtol, atol=a, err_msg=k)


CASES = [("rnn", "Tanh"), ("rnn", "Relu"), ("rnn", "Sigmoid"), ("lstm", "Tanh"),
         ("gru", "Tanh"), ("gru_before", "Tanh")]


@pytest.mark.parametrize("cell,act", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I,H,B,T", [(3, 1, 1, 1), (5, 7, 3, 6), (16, 32, 2, 9)])
def test_cells_fused_match_onnxruntime_and_keras(cell, act, dtype, I, H, B, T):
    data, w = _loop_graph(cell, I, H, dtype, act=act)
    feeds = _feeds(I, B, T, dtype)
    got = _compare(data, feeds, dtype)
    y, h, c = _reference(cell, w, feeds["x"], act=act)
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(got["y_out"], y, rtol=rtol * 5, atol=atol * 5)
    np.testing.assert_allclose(got["h_f"], h, rtol=rtol * 5, atol=atol * 5)
    if cell == "lstm":
        np.testing.assert_allclose(got["c_f"], c, rtol=rtol * 5, atol=atol * 5)


@pytest.mark.parametrize("cell,act", [("rnn", "Tanh"), ("lstm", "Tanh"), ("gru", "Tanh"),
                                      ("gru_before", "Tanh"), ("rnn", "Relu")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_cells_fused(cell, act, dtype):
    """Keras's mask: a masked step keeps the states and repeats the last output (zero
    before the first unmasked step)."""
    I, H, B, T = 4, 7, 5, 8
    data, w = _loop_graph(cell, I, H, dtype, mask=True, act=act)
    feeds = _feeds(I, B, T, dtype, mask=True)
    feeds["m"][2, :3] = False           # (left padding)
    feeds["m"][3, 5:] = False           # (right padding)
    got = _compare(data, feeds, dtype)
    y, h, c = _reference(cell, w, feeds["x"], mask=feeds["m"], act=act)
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(got["y_out"], y, rtol=rtol * 5, atol=atol * 5)
    np.testing.assert_allclose(got["h_f"], h, rtol=rtol * 5, atol=atol * 5)
    assert not got["y_out"][1].any()    # (all masked: zero outputs)


@pytest.mark.parametrize("cell,act,gact", [
    ("rnn", "linear", None), ("lstm", "Relu", "Sigmoid"), ("lstm", "Sigmoid", "Sigmoid"),
    ("lstm", "Tanh", "Tanh"), ("gru", "Relu", "Sigmoid"), ("gru", "Sigmoid", "Tanh"),
    ("gru_before", "Relu", "Sigmoid"), ("gru_before", "Tanh", "Tanh")])
@pytest.mark.parametrize("mask", [False, True])
def test_other_activations_fused(cell, act, gact, mask):
    _other_activations(cell, act, gact, mask)


@pytest.mark.parametrize("cell,act,gact", [
    ("lstm", "Tanh", "HardSigmoidK2"), ("lstm", "Tanh", "HardSigmoidK3"),
    ("gru", "Tanh", "HardSigmoidK2"), ("gru_before", "Tanh", "HardSigmoidK3"),
    ("rnn", "HardSigmoidK2", None), ("gru", "Relu", "HardSigmoidK2"),
    ("lstm", "Tanh", "HardSigmoidRsub")])
@pytest.mark.parametrize("mask", [False, True])
def test_hard_sigmoid_fused(cell, act, gact, mask):
    """Keras's hard_sigmoid (tf.keras 2: Max(Min(0.2 p + 0.5, 1), 0); Keras 3: Clip(p +
    3, 0, 6) / 6), read as ONNX HardSigmoid(alpha, beta); inputs large enough to reach
    both clamps."""
    _other_activations(cell, act, gact, mask, scale=8.0)


def _other_activations(cell, act, gact, mask, scale=1.0):
    """Keras's other ``activation`` / ``recurrent_activation`` (relu, sigmoid, tanh
    gates; a linear SimpleRNN): ONNX activation lists on the layer."""
    I, H, B, T = 3, 5, 4, 7
    data, w = _loop_graph(cell, I, H, mask=mask, act=act, gact=gact or "Sigmoid")
    feeds = _feeds(I, B, T, np.float32, mask=mask)
    feeds["x"] *= scale
    got = _compare(data, feeds, np.float32)
    y, h, c = _reference(cell, w, feeds["x"], mask=feeds.get("m"), act=act,
                         gact=gact or "Sigmoid")
    scale = max(1.0, float(np.abs(y).max()))
    np.testing.assert_allclose(got["y_out"], y, rtol=5e-4, atol=5e-5 * scale)
    np.testing.assert_allclose(got["h_f"], h, rtol=5e-4, atol=5e-5 * scale)


def _plan_layer(m):
    return _loops(m)[0]._fusion.cache[2][0]


@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I,H,B,T", [(1, 1, 1, 1), (4, 7, 3, 6), (16, 32, 2, 9)])
def test_linear_gru_lstm_fused(cell, mask, dtype, I, H, B, T):
    """Keras's ``activation="linear"`` GRU (reset after / before) and LSTM: no op for the
    candidate (nor for an LSTM's new c), as tf2onnx writes it; the candidate found among
    the cell's values, the layer's activation ONNX's Affine (1, 0)."""
    data, w = _loop_graph(cell, I, H, dtype, mask=mask, act="linear")
    assert b"Tanh" not in data
    feeds = _feeds(I, B, T, dtype, mask=mask)
    m = load_onnx(data)
    got = _compare(data, feeds, dtype, model=m)
    layer = _plan_layer(m)
    assert type(layer).__name__ == ("LSTM" if cell == "lstm" else "GRU")
    if cell != "lstm" and H > 1:    # (H = 1: (r h) U = r (h U), either fits)
        assert layer.reset_after == (cell == "gru")
    y, h, c = _reference(cell, w, feeds["x"], mask=feeds.get("m"), act="linear")
    rtol, atol = _tol(dtype)
    sc = max(1.0, float(np.abs(y).max()))
    np.testing.assert_allclose(got["y_out"], y, rtol=rtol * 5, atol=atol * 5 * sc)
    np.testing.assert_allclose(got["h_f"], h, rtol=rtol * 5, atol=atol * 5 * sc)
    if cell == "lstm":
        np.testing.assert_allclose(got["c_f"], c, rtol=rtol * 5, atol=atol * 5 * sc)


@pytest.mark.parametrize("cell,gact", [
    ("gru", "HardSigmoidK2"), ("gru_before", "HardSigmoidK3"), ("gru", "Tanh"),
    ("lstm", "HardSigmoidK2"), ("lstm", "Tanh"), ("gru_before", "Tanh")])
@pytest.mark.parametrize("mask", [False, True])
def test_linear_gru_lstm_other_gates_fused(cell, gact, mask):
    """A linear candidate with Keras's other recurrent_activations (hard_sigmoid as
    tf.keras 2 and Keras 3 write it, tanh): ONNX's alpha / beta lists in the
    node's order (the gates' HardSigmoid's, then Affine's 1, 0)."""
    _other_activations(cell, None, gact, mask, scale=3.0)


@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm"])
def test_linear_masked_zero_output_fused(cell):
    """A linear GRU / LSTM in Keras's Bidirectional with return_sequences (the output
    zero at masked steps)."""
    I, H = 3, 5
    data, w = _loop_graph(cell, I, H, mask=True, zero_out=True, act="linear")
    feeds = _feeds(I, 4, 7, np.float32, mask=True)
    m = load_onnx(data)
    got = _compare(data, feeds, np.float32, model=m)
    assert _loops(m)[0]._fusion.cache[2][3] == "zero"
    y, h, _ = _reference(cell, w, feeds["x"], mask=feeds["m"], zero_out=True,
                         act="linear")
    np.testing.assert_allclose(got["y_out"], y, rtol=5e-4, atol=5e-5)


@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm"])
@pytest.mark.parametrize("mask", [False, True])
def test_linear_layer_checked_against_the_body(cell, mask, monkeypatch):
    """The final check decides: a layer whose Affine is off by 0.1 % (alpha 0.999, the
    probes' findings all right) disagrees with the body's own ops on random rows, and
    is not used: no plan, ONNX Runtime's numbers."""
    from fastrnn.io import _onnx_loop_fuse as fz
    real = fz._act_attrs

    def off(f, js):
        a = real(f, js)
        if None in js:      # (Sigmoid gates: the Affine's alone in the list)
            a["activation_alpha"] = [0.999 * v for v in a["activation_alpha"]]
        return a
    monkeypatch.setattr(fz, "_act_attrs", off)
    data, _ = _loop_graph(cell, 3, 4, mask=mask, act="linear")
    _compare(data, _feeds(3, 3, 6, np.float32, mask=mask), np.float32, fused=False)


@pytest.mark.parametrize("cell,change", [
    ("gru", "gru_square"), ("gru_before", "gru_square"), ("gru", "gru_gate_swap"),
    ("gru_before", "gru_gate_swap"), ("lstm", "lstm_extra_h"), ("lstm", "lstm_old_c")])
@pytest.mark.parametrize("mask", [False, True])
def test_linear_near_misses_run_op_by_op(cell, change, mask):
    """Bodies with a GRU's or LSTM's gates and no candidate activation that are not a
    linear GRU / LSTM: h' = z h + (1 - z) n n (a value n n of the cell's is the
    candidate's place, not affine with r fixed), z h + (1 - r) n (no value of the cell's
    in n's place), an LSTM's h' = o c' + 0.05 g or o c (the old c): no plan, ONNX
    Runtime's numbers."""
    data, _ = _loop_graph(cell, 3, 4, mask=mask, act="linear", change=change)
    feeds = _feeds(3, 3, 6, np.float32, mask=mask)
    _compare(data, feeds, np.float32, fused=False)


@pytest.mark.parametrize("gact", ["Relu6", "clamp_state", "WideClamp"])
def test_clamps_that_are_not_hard_sigmoid_run_op_by_op(gact):
    """GRU gates clamped to [0, 6] (relu6) or to [0, 1.2] (a hard_sigmoid's chain but for
    its top), a SimpleRNN's relu6 activation: no plan, ONNX Runtime's numbers at inputs
    that reach the clamps."""
    if gact != "clamp_state":
        data, _ = _loop_graph("gru", 3, 5, gact=gact)
    else:
        data, _ = _loop_graph("rnn", 3, 5, act="Relu6")
    feeds = _feeds(3, 4, 7, np.float32)
    feeds["x"] *= 8
    _compare(data, feeds, np.float32, fused=False)


@pytest.mark.parametrize("mask", [False, True])
def test_recurrent_dropout_ones_fused(mask):
    """tf.keras 2's recurrent_dropout at inference: h times a mask of ones made each step
    (Shape, ConstantOfShape)."""
    data, w = _loop_graph("rnn", 3, 5, mask=mask, dropout=True)
    feeds = _feeds(3, 4, 7, np.float32, mask=mask)
    got = _compare(data, feeds, np.float32)
    y, h, _ = _reference("rnn", w, feeds["x"], mask=feeds.get("m"))
    np.testing.assert_allclose(got["y_out"], y, rtol=5e-4, atol=5e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "gru_before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_zero_output_fused(cell, dtype):
    """Keras's Bidirectional with return_sequences (tf2onnx): the output at a masked step
    is zero (a carried zeros value of the batch's rows, made per call); the layer's
    masked_output "zero".  Batch sizes change from call to call: the zeros are no
    weights, one plan serves them all."""
    I, H = 4, 6
    data, w = _loop_graph(cell, I, H, dtype, mask=True, zero_out=True)
    m = load_onnx(data)
    plans = set()
    for B, T in ((5, 8), (2, 3), (1, 1), (5, 8)):
        feeds = _feeds(I, B, T, dtype, mask=True, seed=B)
        if B > 2:
            feeds["m"][2, :3] = False
        got = _compare(data, feeds, dtype, model=m)
        plans.add(id(_loops(m)[0]._fusion.cache[2]))
        assert _loops(m)[0]._fusion.cache[2][3] == "zero"
        y, h, _ = _reference(cell, w, feeds["x"], mask=feeds["m"], zero_out=True)
        rtol, atol = _tol(dtype)
        np.testing.assert_allclose(got["y_out"], y, rtol=rtol * 5, atol=atol * 5)
        np.testing.assert_allclose(got["h_f"], h, rtol=rtol * 5, atol=atol * 5)
    assert len(plans) == 1


@pytest.mark.parametrize("cond", ["less", "greater", "and"])
@pytest.mark.parametrize("trips", [False, True])
def test_conditions_and_trip_count(cond, trips):
    data, _ = _loop_graph("gru", 3, 5, cond=cond, trips=trips)
    for T in (1, 2, 7):
        _compare(data, _feeds(3, 2, T, np.float32), np.float32)


@pytest.mark.parametrize("start", [1, 3])
def test_counter_starting_past_zero(start):
    """t from ``start``: the Loop reads x[start:] (one iteration at least: a while
    loop's body runs once when the first condition holds), as ONNX Runtime."""
    data, _ = _loop_graph("lstm", 3, 4, start=start)
    for T in (start + 1, start + 4):
        _compare(data, _feeds(3, 2, T, np.float32), np.float32)


def test_counter_past_the_input_runs_op_by_op_with_its_error():
    """t starting at T: x[T] does not exist; op by op that is a Gather error, and the
    fused path must give the same (it runs op by op), not a result."""
    data, _ = _loop_graph("rnn", 3, 4, start=5)
    feeds = _feeds(3, 2, 5, np.float32)
    with pytest.raises(Exception):
        _ort(data, feeds)
    m = load_onnx(data)
    with pytest.raises(IndexError, match="Gather") as fused:
        m.run(feeds)
    try:
        _onnx_loop.FUSE = False
        with pytest.raises(IndexError, match="Gather") as slow:
            load_onnx(data).run(feeds)
    finally:
        _onnx_loop.FUSE = True
    assert str(fused.value) == str(slow.value)


@pytest.mark.parametrize("change", ["clip", "iter_bias", "next_x", "plus_after", "scan_pre",
                                    "step2"])
@pytest.mark.parametrize("mask", [False, True])
def test_bodies_that_are_not_a_cell_run_op_by_op(change, mask):
    """A Clip (values random probes may never reach), a bias of the iteration number, x
    read at t + 1, a sum after the activation, a scan output of the pre-activation, a
    counter stepping by 2 (every other step of x): no plan, ONNX Runtime's numbers."""
    data, _ = _loop_graph("rnn", 3, 4, mask=mask, change=change)
    T = 6
    feeds = _feeds(3, 2, T, np.float32, mask=mask)
    if change == "clip":
        feeds["x"] *= 20
    if change == "next_x":          # (reads x[T] at the last step: ORT fails, so do we)
        with pytest.raises(Exception):
            _ort(data, feeds)
        with pytest.raises(IndexError, match="Gather"):
            load_onnx(data).run(feeds)
        return
    _compare(data, feeds, np.float32, fused=False)


@pytest.mark.parametrize("mask", [False, True])
def test_fed_first_state(mask):
    """h starting at a fed value: fused.  Under a mask the output state y starts there
    too; the layer's masked steps repeat a zero first output, so that call runs op by
    op (its plan made, not used), with ONNX Runtime's numbers."""
    data, _ = _loop_graph("gru", 3, 4, mask=mask, h0=True)
    feeds = _feeds(3, 3, 5, np.float32, mask=mask)
    feeds["h0"] = np.random.default_rng(3).uniform(-1, 1, (3, 4)).astype(np.float32)
    if mask:
        feeds["m"][2, 0] = False     # (a masked first step: y0 is its output)
    _compare(data, feeds, np.float32)


def test_masked_scan_of_h_is_not_the_layers_output():
    """Under a mask, a scan output of the selected h (not the repeated output y) differs
    from y where h starts elsewhere: no plan, ONNX Runtime's numbers."""
    data, _ = _loop_graph("rnn", 3, 4, mask=True, h0="h", change="scan_h")
    feeds = _feeds(3, 3, 5, np.float32, mask=True)
    feeds["h0"] = np.random.default_rng(3).uniform(-1, 1, (3, 4)).astype(np.float32)
    _compare(data, feeds, np.float32, fused=False)


def test_fed_weights_are_followed():
    """Weights as graph inputs: a plan per weights; other weights in a later call, a
    new plan; the same values in new arrays, the same plan."""
    data, w = _loop_graph("lstm", 3, 5, weights="input")
    m = load_onnx(data)
    feeds = _feeds(3, 2, 4, np.float32, w=w)
    _compare(data, feeds, np.float32, model=m)
    plan = _loops(m)[0]._fusion.cache[2]
    same = {k: v.copy() for k, v in feeds.items()}
    _compare(data, same, np.float32, model=m)
    assert _loops(m)[0]._fusion.cache[2] is plan
    w2 = _weights("lstm", 3, 5, np.float32, seed=9)
    feeds2 = _feeds(3, 2, 4, np.float32, w=w2)
    _compare(data, feeds2, np.float32, model=m)
    assert _loops(m)[0]._fusion.cache[2] is not plan
    w2["R"][0, 0] += 1.0            # (changed in place between calls)
    _compare(data, feeds2, np.float32, model=m)
    # a read-only view of an array changed in place: compared by value too
    base = w2["R"].copy()
    view = base.view()
    view.flags.writeable = False
    feeds3 = dict(feeds2, R=view)
    m3 = load_onnx(data)
    _compare(data, feeds3, np.float32, model=m3)
    base[1, 1] -= 1.0
    _compare(data, feeds3, np.float32, model=m3)


def check_pickles_and_threads(m, feeds, want, fused):
    """``m`` pickled gives ``want`` on ``feeds`` with its plan made (``fused(model)``);
    threads calling that copy, and a copy no call made a plan for yet (the threads make
    it), give it too."""
    m2 = pickle.loads(pickle.dumps(m))
    got = m2.run(dict(feeds))
    assert fused(m2)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    m3 = pickle.loads(pickle.dumps(m))
    assert not fused(m3)
    errs = []

    def work(model):
        try:
            for _ in range(20):
                r = model.run(dict(feeds))
                for k in want:
                    np.testing.assert_array_equal(r[k], want[k])
        except Exception as e:      # pragma: no cover (reported below)
            errs.append(e)
    ts = [threading.Thread(target=work, args=(mm,)) for mm in (m2, m2, m3, m3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    assert fused(m3)


def test_fused_model_pickles_and_threads():
    data, _ = _loop_graph("gru_before", 6, 8, mask=True)
    m = load_onnx(data)
    feeds = _feeds(6, 4, 10, np.float32, mask=True)
    want = _compare(data, feeds, np.float32, model=m)
    check_pickles_and_threads(m, feeds, want, _fused)


@pytest.mark.parametrize("name", ["tf2onnx_k2_simplernn", "tf2onnx_k2_gru_reset_before",
                                  "tf2onnx_k2_masking_lstm", "tf2onnx_k2_bi_simplernn",
                                  "tf2onnx_k3_gru"])
def test_tf2onnx_fixtures_fused(name):
    """tf2onnx 1.17's exports (tests/fixtures/onnx/loop/): every Loop fused, ONNX
    Runtime's numbers, at batch 1 and 4, T = 1 and 50 (masked steps at both ends)."""
    path = os.path.join(FIX, name + ".onnx")
    with open(path, "rb") as f:
        data = f.read()
    m = load_onnx(data)
    rng = np.random.default_rng(5)
    for B, T in ((1, 1), (4, 50)):
        x = rng.uniform(-1, 1, (B, T, 4)).astype(np.float32)
        if "masking" in name:
            x[-1, T // 2:] = 0
            x[0, :T // 3] = 0
        _compare(data, {"x": x}, np.float32, model=m)


# --------------------------------------------------------------- the probes' MatMul
def test_probe_matmul_picks_weight_rows_as_the_product():
    from fastrnn.io._onnx_loop_fuse import _probe_matmul
    rng = np.random.default_rng(3)
    b = rng.standard_normal((7, 5))
    b[2, 1] = -0.0
    a = np.zeros((9, 7))
    for r, c in ((0, 3), (1, 0), (4, 6), (5, 2), (8, 3)):
        a[r, c] = 1.0
    got = _probe_matmul(a, b, {})
    np.testing.assert_array_equal(got, np.matmul(a, b))
    assert got.dtype == np.float64 and got.shape == (9, 5)
    np.testing.assert_array_equal(got[[1, 4, 5]], b[[0, 6, 2]])
    assert not got[[2, 3, 6, 7]].any()


@pytest.mark.parametrize("case", ["two_ones", "two", "nan_a", "inf_b", "nan_b", "f32",
                                  "three_d", "random"])
def test_probe_matmul_otherwise_the_product(case):
    from fastrnn.io import _onnx_loop_fuse as fz
    rng = np.random.default_rng(4)
    a = np.eye(6)[[1, 3, 0, 5]]
    b = rng.standard_normal((6, 4))
    if case == "two_ones":
        a[2, 4] = 1.0
    elif case == "two":
        a[1, 3] = 2.0
    elif case == "nan_a":
        a[3, 2] = np.nan
    elif case == "inf_b":
        b[4, 1] = np.inf        # (a row no unit row picks: 0 * inf in every row)
    elif case == "nan_b":
        b[2, 2] = np.nan
    elif case == "f32":
        a, b = a.astype(np.float32), b.astype(np.float32)
    elif case == "three_d":
        a = a[None]
    else:
        a = rng.standard_normal((4, 6))
    if case in ("two_ones", "two", "nan_a", "random"):
        assert a.ndim != 2 or fz._unit_rows(a) is None
    memo = {}
    with np.errstate(invalid="ignore"):
        got = fz._probe_matmul(a, b, memo)
        ref = np.matmul(a, b)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    if case == "inf_b":
        assert np.isnan(got[:, 1]).all() and memo[id(b)] == (b, False)


def test_fused_probes_read_weight_rows_without_products(monkeypatch):
    """The unit-row probes reach the cell's MatMuls as unit rows, which pick every
    weight row (x's I rows, h's H rows), and the plan's float64 copies are let go."""
    from fastrnn.io import _onnx_loop_fuse as fz
    picked = []
    real = fz._unit_rows

    def spy(a):
        rc = real(a)
        if rc is not None:
            picked.append((a.shape[1], len(rc[0])))
        return rc
    monkeypatch.setattr(fz, "_unit_rows", spy)
    I, H = 5, 7
    data, _ = _loop_graph("lstm", I, H)
    m = load_onnx(data)
    _compare(data, _feeds(I, 3, 6, np.float32), np.float32, model=m)
    assert sum(n for k, n in picked if k == I) >= I
    assert sum(n for k, n in picked if k == H) >= H
    assert all(lp._fusion.finite is None for lp in _loops(m))
