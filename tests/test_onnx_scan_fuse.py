"""Scan bodies run as one fastrnn layer call (fastrnn/io/_onnx_loop_fuse.py's
:class:`_ScanFusion`, the probes and classification shared with Loop fusion).

Hand-built Scan bodies that are one Keras cell (tests/test_onnx_loop_fuse.py's
``_cell_nodes``: x_t, the states h [, c] and the weights W, R, b read by name), states
carried by the Scan, x the one scan input, h_t the scan output(s): SimpleRNN (tanh, relu,
linear), GRU (reset after / before; Keras's h' = z h + (1 - z) n, ONNX's (1 - z) n + z h
and PyTorch's n + z (h - n)), LSTM, float32 and float64, odd sizes, scan axes and
directions; each compared live with ONNX Runtime, with a NumPy reference of the cell and
with the op-by-op run (``_onnx_loop.FUSE = False``), and its plan made.  Near misses
(a scan output that is not h, two scan inputs, x_t read again outside the cell's math,
a state with an extra term, ...) must run op by op with ONNX Runtime's numbers; calls
whose values do not allow the layer run op by op with the same results or errors."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from fastrnn.io import _onnx_loop  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

from test_onnx_loop import _ort  # noqa: E402
from test_onnx_loop_fuse import (_cell_nodes, _reference, _tol, _weights,  # noqa: E402
                                 assert_outputs, check_pickles_and_threads)
from test_onnx_scan import F32, F64, _body, _model, _scan, _scan_node  # noqa: E402


def _scan_graph(cell, I, H, dtype=np.float32, act="Tanh", gact="Sigmoid", weights="init",
                change=None, in_axis=0, in_dir=0, out_axis=0, out_dir=0, n_out=1,
                passed=False, opset=17, B=None):
    """A Scan over x (scan input "X", [T, B, I] (``in_axis`` 0) or [B, T, I] (1)) whose
    body is Keras's ``cell`` (states h [, c] "h0" [, "c0"] -> "hT" [, "cT"]; scan outputs
    "Y0" ... "Y{n_out-1}", each h_t (an Identity of the new h)).  ``weights``: "init"
    (graph initializers W, R, b) or "input" (graph inputs); ``passed``: one more state,
    passed on unchanged (through an Identity; "direct": the body output is its input,
    whose value ONNX Runtime gives uninitialised); ``change``: a body that is not a
    cell scan ("scan_pre": the scan output the pre-activation, "two_inputs": a second scan
    input added into x_t's place, "two_unused": a second scan input nothing reads,
    "x_skip": h' = cell + x V, "x_twice": x_t's square through W added, "extra_term":
    h' = cell + 0.1 h, "gru_onnx": the GRU's h' = (1 - z) n + z h, "gru_lerp": n + z (h -
    n), "gather": x_t read through a Gather (not a cell op), "no_x": h's first I
    columns in x_t's place, x_t read by nothing).  Returns (model bytes,
    weights)."""
    ft = np.dtype(dtype)
    tt = F64 if ft == np.float64 else F32
    w = _weights(cell, I, H, ft)
    lstm = cell == "lstm"
    x_in = "x"
    pre_nodes, b_inits = [], []
    if change == "two_inputs":
        pre_nodes.append(helper.make_node("Add", ["x", "x2"], ["xx"]))
        x_in = "xx"
    elif change == "x_skip":            # (h' = cell + x V: x read again, affine)
        b_inits.append(numpy_helper.from_array(
            np.random.default_rng(5).uniform(-0.5, 0.5, (I, H)).astype(ft), "V"))
    elif change == "gather":
        b_inits.append(numpy_helper.from_array(np.arange(I, dtype=np.int64), "perm"))
        pre_nodes.append(helper.make_node("Gather", ["x", "perm"], ["xg"], axis=1))
        x_in = "xg"
    out_h = "h_cell" if change in ("extra_term", "x_skip") else "h_out"
    if change == "no_x":                # (x_t's place: h's first I columns)
        b_inits += [numpy_helper.from_array(np.array([v], np.int64), k)
                    for k, v in (("s0x", 0), ("eIx", I), ("a1x", 1))]
        pre_nodes.append(helper.make_node("Slice", ["h_in", "s0x", "eIx", "a1x"], ["x0z"]))
        x_in = "x0z"
    nodes, inits = _cell_nodes(cell, H, act, x_in, "h_in", "c_in", out_h, "c_out", ft,
                               gact)
    nodes = pre_nodes + nodes
    if change in ("gru_onnx", "gru_lerp"):
        assert cell in ("gru", "gru_before")
        k = next(j for j, nd in enumerate(nodes) if list(nd.output) == ["h_out"])
        if change == "gru_onnx":        # ((1 - z) n + z h)
            nodes[k] = helper.make_node("Add", ["zn", "zh"], ["h_out"])
        else:                           # (n + z (h - n))
            nodes = nodes[:k - 3] + [helper.make_node("Sub", ["h_in", "nn"], ["hmn"]),
                                     helper.make_node("Mul", ["z", "hmn"], ["zhn"]),
                                     helper.make_node("Add", ["nn", "zhn"], ["h_out"])]
    if change == "x_twice":             # (x W + (x x) W: not affine in x)
        k = next(j for j, nd in enumerate(nodes) if list(nd.output) == ["xw"])
        nodes[k:k + 1] = [helper.make_node("MatMul", ["x", "W"], ["xw1"]),
                          helper.make_node("Mul", ["x", "x"], ["xsq"]),
                          helper.make_node("MatMul", ["xsq", "W"], ["xw2"]),
                          helper.make_node("Add", ["xw1", "xw2"], ["xw"])]
    if change == "x_skip":
        nodes += [helper.make_node("MatMul", ["x", "V"], ["xv"]),
                  helper.make_node("Add", [out_h, "xv"], ["h_out"])]
    if passed == "identity":
        nodes.append(helper.make_node("Identity", ["p_in"], ["p_out"]))
    if change == "extra_term":
        b_inits.append(numpy_helper.from_array(np.array(0.1, ft), "tenth"))
        nodes += [helper.make_node("Mul", ["h_in", "tenth"], ["h01"]),
                  helper.make_node("Add", [out_h, "h01"], ["h_out"])]
    scan_src = "pre" if change == "scan_pre" else "h_out"
    for k in range(n_out):
        nodes.append(helper.make_node("Identity", [scan_src], [f"y{k}"]))
    # (ONNX Runtime needs the body's output shapes; Scan-8's body sees one batch item)
    hs, xs = (["B", H], ["B", I]) if opset >= 9 else ([H], [I])
    pp = bool(passed)
    b_in = [("h_in", tt, hs)] + [("c_in", tt, hs)] * lstm + [("p_in", tt, [2])] * pp
    b_in.append(("x", tt, xs))
    if change in ("two_inputs", "two_unused"):
        b_in.append(("x2", tt, xs))
    b_out = [("h_out", tt, hs)] + [("c_out", tt, hs)] * lstm + \
        [("p_out" if passed == "identity" else "p_in", tt, [2])] * pp + \
        [(f"y{k}", tt, hs) for k in range(n_out)]
    body = _body(nodes, b_in, b_out, inits + b_inits)
    n_scan = 2 if change in ("two_inputs", "two_unused") else 1
    attrs = {}
    if in_axis:
        attrs["scan_input_axes"] = [in_axis] * n_scan
    if in_dir:
        attrs["scan_input_directions"] = [in_dir] * n_scan
    if out_axis:
        attrs["scan_output_axes"] = [out_axis] * n_out
    if out_dir:
        attrs["scan_output_directions"] = [out_dir] * n_out
    ins = ["h0"] + ["c0"] * lstm + ["p0"] * pp + ["X"] + ["X2"] * (n_scan - 1)
    outs = ["hT"] + ["cT"] * lstm + ["pT"] * pp + [f"Y{k}" for k in range(n_out)]
    node = _scan([""] * (opset < 9) + ins, outs, body, n_scan, name="cell/scan", **attrs)
    g_in = [("h0", tt, [B, H])] + [("c0", tt, [B, H])] * lstm + [("p0", tt, [2])] * pp
    g_in += [(n, tt, None) for n in ins[-n_scan:]]
    g_init = []
    if weights == "init":
        g_init = [numpy_helper.from_array(v, k) for k, v in w.items()]
    else:
        g_in += [(k, tt, list(v.shape)) for k, v in w.items()]
    g_out = [(n, tt) for n in outs]
    return _model([node], g_in, g_out, g_init, opset=opset), w


def _fused(m) -> bool:
    """Whether the Scan of ``m`` has a plan (its body runs as a layer)."""
    f = _scan_node(m)._fusion
    return f is not None and f.cache is not None and f.cache[2] is not None


def _feeds(cell, I, H, B, T, dtype, in_axis=0, seed=1, w=None, passed=False, scale=1.0):
    rng = np.random.default_rng(seed)
    shape = (T, B, I) if in_axis in (0, -3) else (B, T, I)
    f = {"X": (rng.standard_normal(shape) * scale).astype(dtype),
         "h0": rng.uniform(-1, 1, (B, H)).astype(dtype)}
    if cell == "lstm":
        f["c0"] = rng.uniform(-1, 1, (B, H)).astype(dtype)
    if passed:
        f["p0"] = np.array([1.5, -2.0], dtype)
    if w is not None:
        f.update(w)
    return f


def _slow(data, feeds):
    try:
        _onnx_loop.FUSE = False
        m = load_onnx(data)
        out = m.run(dict(feeds))
        assert not _fused(m)
        return out
    finally:
        _onnx_loop.FUSE = True


def _compare(data, feeds, dtype, fused=True, model=None):
    """fastrnn (``fused``: its plan made, else not) against ONNX Runtime and the op-by-op
    run; returns fastrnn's outputs."""
    ref = _ort(data, feeds)
    m = load_onnx(data) if model is None else model
    got = m.run(dict(feeds))
    assert _fused(m) == fused
    slow = _slow(data, feeds)
    assert set(got) == set(ref) == set(slow)
    assert_outputs(got, ref, slow, dtype)
    return got


def _check_reference(cell, w, feeds, got, act="Tanh", dtype=np.float32):
    """The Keras cell in NumPy (float64) from h0 (and c0: _reference starts c at 0, so
    LSTM's c0 is zeros here)."""
    x = feeds["X"].transpose(1, 0, 2)               # (B, T, I)
    y, h, c = _reference(cell, w, x, act=act, h0=feeds["h0"])
    rtol, atol = _tol(dtype)
    sc = max(1.0, float(np.abs(y).max()))
    np.testing.assert_allclose(got["Y0"], y.transpose(1, 0, 2), rtol=rtol * 5,
                               atol=atol * 5 * sc)
    np.testing.assert_allclose(got["hT"], h, rtol=rtol * 5, atol=atol * 5 * sc)
    if cell == "lstm":
        np.testing.assert_allclose(got["cT"], c, rtol=rtol * 5, atol=atol * 5 * sc)


CASES = [("rnn", "Tanh"), ("rnn", "Relu"), ("rnn", "linear"), ("lstm", "Tanh"),
         ("gru", "Tanh"), ("gru_before", "Tanh")]


# ------------------------------------------------------------------------------ fused
@pytest.mark.parametrize("cell,act", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I,H,B,T", [(1, 1, 1, 1), (3, 7, 3, 6), (16, 32, 2, 9),
                                     (4, 5, 1, 1)])
def test_cells_fused_match_onnxruntime_and_keras(cell, act, dtype, I, H, B, T):
    data, w = _scan_graph(cell, I, H, dtype, act=act)
    feeds = _feeds(cell, I, H, B, T, dtype)
    if cell == "lstm":
        feeds["c0"][...] = 0            # (the NumPy reference starts c at zeros)
    got = _compare(data, feeds, dtype)
    _check_reference(cell, w, feeds, got, act, dtype)


@pytest.mark.parametrize("cell", ["gru", "gru_before"])
@pytest.mark.parametrize("form", ["gru_onnx", "gru_lerp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_other_formulas_of_the_new_h_fused(cell, form, dtype):
    """ONNX's (and PyTorch's documented) h' = (1 - z) n + z h, and PyTorch's kernel's
    n + z (h - n): the same GRU."""
    data, w = _scan_graph(cell, 3, 5, dtype, change=form)
    feeds = _feeds(cell, 3, 5, 3, 6, dtype)
    got = _compare(data, feeds, dtype)
    _check_reference(cell, w, feeds, got, "Tanh", dtype)


@pytest.mark.parametrize("cell,act,gact", [("lstm", "Relu", "Sigmoid"),
                                           ("gru", "Sigmoid", "Tanh"),
                                           ("gru", "linear", "Sigmoid"),
                                           ("lstm", "linear", "Sigmoid"),
                                           ("lstm", "Tanh", "HardSigmoidK2"),
                                           ("gru_before", "Tanh", "HardSigmoidK3")])
def test_other_activations_fused(cell, act, gact):
    data, w = _scan_graph(cell, 3, 5, act=act, gact=gact)
    feeds = _feeds(cell, 3, 5, 4, 7, np.float32, scale=3.0)
    _compare(data, feeds, np.float32)


@pytest.mark.parametrize("in_axis,in_dir,out_axis,out_dir", [
    (0, 1, 0, 1), (0, 1, 0, 0), (0, 0, 0, 1), (1, 0, 1, 0), (1, 1, 1, 1), (-2, 0, -2, 0),
    (-3, 1, 1, 0), (1, 0, 0, 1), (0, 0, 2, 0), (0, 0, -1, 1)])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_scan_axes_and_directions_fused(in_axis, in_dir, out_axis, out_dir, cell):
    """x time-major (axis 0) or batch-major (axis 1, or negative axes), read forwards or
    backwards; h_t stacked on any axis, in the steps' order or reversed: the layer over
    x with its scan axis first, flipped for a reverse input; its outputs flipped and moved
    as the scan output asks."""
    I, H, B, T = 3, 4, 2, 5
    data, _ = _scan_graph(cell, I, H, in_axis=in_axis, in_dir=in_dir, out_axis=out_axis,
                          out_dir=out_dir)
    _compare(data, _feeds(cell, I, H, B, T, np.float32, in_axis), np.float32)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_several_scan_outputs_of_h_and_a_state_passed_on(cell):
    """Two scan outputs of h (each an array of its own) and a state the body passes on
    unchanged (through an Identity: ONNX Runtime's numbers; as the body's own input:
    ONNX Runtime gives it uninitialised, so the op-by-op run's)."""
    data, _ = _scan_graph(cell, 3, 4, n_out=2, passed="identity")
    feeds = _feeds(cell, 3, 4, 2, 5, np.float32, passed=True)
    got = _compare(data, feeds, np.float32)
    assert not np.shares_memory(got["Y0"], got["Y1"])
    np.testing.assert_array_equal(got["pT"], feeds["p0"])
    direct, _ = _scan_graph(cell, 3, 4, n_out=2, passed="direct")
    m = load_onnx(direct)
    got2 = m.run(dict(feeds))
    assert _fused(m)
    slow = _slow(direct, feeds)
    for k in got:
        np.testing.assert_allclose(got2[k], got[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got2[k], slow[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru_before", "lstm"])
def test_other_lengths_and_batches_on_one_model(cell):
    """T and B change from call to call: one plan (the weights are the same)."""
    data, _ = _scan_graph(cell, 3, 4)
    m = load_onnx(data)
    plans = set()
    for B, T in ((2, 5), (1, 1), (5, 12), (2, 5)):
        _compare(data, _feeds(cell, 3, 4, B, T, np.float32, seed=T), np.float32, model=m)
        plans.add(id(_scan_node(m)._fusion.cache[2]))
    assert len(plans) == 1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fed_weights_are_followed(cell, dtype):
    """Weights as graph inputs: a plan per weights; the same values in new arrays, the
    same plan; other weights, a new plan; a weight changed in place between calls, a new
    plan (compared by value)."""
    I, H = 3, 5
    data, w = _scan_graph(cell, I, H, dtype, weights="input")
    m = load_onnx(data)
    feeds = _feeds(cell, I, H, 2, 4, dtype, w=w)
    _compare(data, feeds, dtype, model=m)
    plan = _scan_node(m)._fusion.cache[2]
    same = {k: v.copy() for k, v in feeds.items()}
    _compare(data, same, dtype, model=m)
    assert _scan_node(m)._fusion.cache[2] is plan
    w2 = _weights(cell, I, H, dtype, seed=9)
    feeds2 = _feeds(cell, I, H, 2, 4, dtype, w=w2)
    _compare(data, feeds2, dtype, model=m)
    plan2 = _scan_node(m)._fusion.cache[2]
    assert plan2 is not plan
    w2["R"][0, 0] += 1.0            # (changed in place between calls)
    got = _compare(data, feeds2, dtype, model=m)
    assert _scan_node(m)._fusion.cache[2] is not plan2
    w3 = {k: v.copy() for k, v in w2.items()}
    w3["R"][0, 0] -= 1.0
    assert not np.allclose(got["hT"], m.run(dict(feeds2, **w3))["hT"])


def test_weights_as_graph_initializers_keep_their_plan():
    """The model's own weights (initializers, read-only): trusted by identity, one plan."""
    data, _ = _scan_graph("gru", 3, 4)
    m = load_onnx(data)
    _compare(data, _feeds("gru", 3, 4, 2, 5, np.float32), np.float32, model=m)
    plan = _scan_node(m)._fusion.cache[2]
    _compare(data, _feeds("gru", 3, 4, 2, 5, np.float32, seed=4), np.float32, model=m)
    assert _scan_node(m)._fusion.cache[2] is plan


@pytest.mark.parametrize("opset", [9, 11, 16, 19, 21])
def test_opsets_9_to_21_fused(opset):
    data, _ = _scan_graph("rnn", 3, 4, opset=opset)
    _compare(data, _feeds("rnn", 3, 4, 2, 5, np.float32), np.float32)


def test_fused_model_pickles_and_threads():
    data, _ = _scan_graph("gru_before", 6, 8)
    m = load_onnx(data)
    feeds = _feeds("gru_before", 6, 8, 4, 10, np.float32)
    want = _compare(data, feeds, np.float32, model=m)
    check_pickles_and_threads(m, feeds, want, _fused)


# ------------------------------------------------------------------------ op by op
@pytest.mark.parametrize("change,cell", [("scan_pre", "rnn")] + [
    (c, cell) for c in ("two_inputs", "two_unused", "x_twice", "x_skip", "extra_term",
                        "gather")
    for cell in ("rnn", "gru", "lstm")])
def test_near_misses_run_op_by_op(change, cell):
    """A scan output of the pre-activation (not h), two scan inputs (the second added to
    x_t, or read by nothing), x_t read again outside the cell's math ((x x) W added, or a
    skip term x V added to h'), a state with an extra term (h' = cell + 0.1 h), x_t read
    through a Gather: no plan, ONNX Runtime's numbers."""
    I, H, B, T = 3, 4, 2, 5
    data, _ = _scan_graph(cell, I, H, change=change)
    feeds = _feeds(cell, I, H, B, T, np.float32)
    if change in ("two_inputs", "two_unused"):
        feeds["X2"] = np.random.default_rng(8).standard_normal((T, B, I)).astype(np.float32)
    _compare(data, feeds, np.float32, fused=False)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_a_cell_of_no_x_runs_op_by_op(cell):
    """A body whose cell does not read x_t (its place: h's first columns, a cell of h
    alone, which the layer could run with W = 0 and W's rows added to R's, in float64
    exactly enough): no plan (the scan input must be the cell's x), ONNX Runtime's
    numbers."""
    data, _ = _scan_graph(cell, 3, 4, np.float64, change="no_x")
    _compare(data, _feeds(cell, 3, 4, 2, 5, np.float64), np.float64, fused=False)


def test_scan_outputs_are_arrays_of_their_own_at_the_node():
    """The node's own outputs (before the model's): each scan output of h a new array,
    none the same object as another."""
    data, _ = _scan_graph("gru", 3, 4, n_out=3)
    m = load_onnx(data)
    node = _scan_node(m)
    f = _feeds("gru", 3, 4, 2, 5, np.float32)
    out = node.run([f["h0"], f["X"]] + [m._consts[n] for n in node.body.outer])
    assert _fused(m) and len(out) == 4
    for i in range(1, 4):
        for j in range(i + 1, 4):
            assert not np.shares_memory(out[i], out[j])
        np.testing.assert_array_equal(out[i], out[1])


def test_node_called_with_other_dtypes_runs_op_by_op():
    """Called at the node with a float64 state and float32 x (the model casts its inputs
    to their declared types; a node inside another body may not be): after a float32
    call made the plan, op by op, its float64 results; x of int64, the same."""
    data, _ = _scan_graph("rnn", 3, 4)
    m = load_onnx(data)
    node = _scan_node(m)
    f = _feeds("rnn", 3, 4, 2, 5, np.float32)
    rest = [m._consts[n] for n in node.body.outer]
    node.run([f["h0"], f["X"]] + rest)
    assert _fused(m)
    for h0, X in ((f["h0"].astype(np.float64), f["X"]),
                  (f["h0"], (f["X"] * 3).astype(np.int64))):
        try:
            got = node.run([h0, X] + rest)
        except Exception as e:
            got = e
        try:
            _onnx_loop.FUSE = False
            want = node.run([h0, X] + rest)
        except Exception as e:
            want = e
        finally:
            _onnx_loop.FUSE = True
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
            continue
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_unused_second_scan_input_of_another_length_is_the_same_error():
    """Two scan inputs of different lengths (the second read by nothing): the op-by-op
    run's error, not the layer over the first."""
    data, _ = _scan_graph("gru", 3, 4, change="two_unused")
    feeds = _feeds("gru", 3, 4, 2, 5, np.float32)
    feeds["X2"] = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match="scan inputs of different lengths") as slow:
        _slow(data, feeds)
    m = load_onnx(data)
    with pytest.raises(ValueError, match="scan inputs of different lengths") as got:
        m.run(dict(feeds))
    assert str(got.value) == str(slow.value)


def test_input_size_other_than_the_weights_is_the_same_error():
    """x of 5 features where W has 3 rows: the probes fail, no plan; the op-by-op run's
    MatMul error, named; a later call of the right size is fused."""
    data, _ = _scan_graph("lstm", 3, 4)
    m = load_onnx(data)
    feeds = _feeds("lstm", 5, 4, 2, 5, np.float32)
    with pytest.raises(ValueError, match="MatMul") as slow:
        _slow(data, feeds)
    with pytest.raises(ValueError, match="MatMul") as got:
        m.run(dict(feeds))
    assert str(got.value) == str(slow.value) and not _fused(m)
    _compare(data, _feeds("lstm", 3, 4, 2, 5, np.float32), np.float32, model=m)


def test_bench_models_scan_of_x_w_runs_op_by_op():
    """tests/test_onnx_scan.py's _rnn_model: a second scan output x_t W (not h): no plan,
    its numbers (and those of the model without it, fused)."""
    from test_onnx_scan import _rnn_model
    for xw, fused in ((True, False), (False, True)):
        data = _rnn_model(2, 3, 4, xw=xw)
        feeds = {"h0": np.zeros((2, 4), np.float32),
                 "X": np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)}
        m = load_onnx(data)
        _compare(data, feeds, np.float32, fused=fused, model=m)


def test_opset8_scan_runs_op_by_op():
    """Scan-8 (a batch axis, sequence_lens): never fused."""
    data, _ = _scan_graph("rnn", 3, 4, opset=8)
    m = load_onnx(data)
    assert _scan_node(m)._fusion is None
    feeds = _feeds("rnn", 3, 4, 2, 5, np.float32)     # (batch axis 0, scan axis 1)
    feeds["X"] = feeds["X"].transpose(1, 0, 2).copy()
    got, ref = m.run(dict(feeds)), _ort(data, feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["state_1d", "state_shape", "x_2d", "x_4d", "empty",
                                  "x_int", "bad_out_axis", "bad_in_axis"])
def test_calls_the_layer_cannot_take_run_op_by_op(case):
    """A state of another rank or shape (broadcast by the body), a 2-D, 4-D or integer
    x, no steps, a scan input or output axis out of range: op by op, the same results
    or the same errors (graph inputs of undeclared shapes: the model does not check
    them)."""
    I, H, B, T = 3, 4, 2, 5
    kw = {"bad_out_axis": {"out_axis": 3}, "bad_in_axis": {"in_axis": 3}}.get(case, {})
    data, _ = _scan_graph("rnn", I, H, **kw)
    feeds = _feeds("rnn", I, H, B, T, np.float32)
    if case == "state_1d":
        feeds["h0"] = feeds["h0"][0]
    elif case == "x_4d":
        feeds["X"] = feeds["X"][:, :, None]
    elif case == "state_shape":
        feeds["h0"] = feeds["h0"][:1]          # (broadcast by the body's Add)
    elif case == "x_2d":
        feeds["X"] = feeds["X"][:, 0]
    elif case == "empty":
        feeds["X"] = feeds["X"][:0]
    elif case == "x_int":
        feeds["X"] = feeds["X"].astype(np.int64)
    m = load_onnx(data)
    try:
        want = _slow(data, feeds)
    except Exception as e:
        with pytest.raises(type(e)) as got:
            m.run(dict(feeds))
        assert str(got.value) == str(e)
    else:
        got = m.run(dict(feeds))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert not _fused(m)


def test_layer_checked_against_the_body(monkeypatch):
    """The final check decides: a layer off by 0.1 % (alpha 0.999) disagrees with the
    body's own ops on random rows, and is not used: no plan, ONNX Runtime's numbers."""
    from fastrnn.io import _onnx_loop_fuse as fz
    real = fz._act_attrs

    def off(f, js):
        a = real(f, js)
        a["activations"] = ["Affine" if n == "Tanh" else n for n in a["activations"]]
        a["activation_alpha"] = [0.999] * len(a["activations"])
        a["activation_beta"] = [0.0] * len(a["activations"])
        return a
    monkeypatch.setattr(fz, "_act_attrs", off)
    data, _ = _scan_graph("rnn", 3, 4, act="linear")
    _compare(data, _feeds("rnn", 3, 4, 2, 5, np.float32), np.float32, fused=False)
