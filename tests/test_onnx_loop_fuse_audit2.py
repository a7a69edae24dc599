"""Loop fusion (fastrnn/io/_onnx_loop_fuse.py), from a second audit (2026-12-07): NaN or
inf under a mask (tf2onnx selects by arithmetic, m * new + (1 - m) * old, so ONNX
Runtime's NaNs spread where a select would not), and read-only arrays over memory
writeable elsewhere (compared by value, not trusted by identity)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fastrnn.io.onnx import load_onnx  # noqa: E402

from test_onnx_loop import _ort  # noqa: E402
from test_onnx_loop_fuse import _compare, _feeds, _loop_graph, _loops  # noqa: E402


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "gru_before"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("zero_out", [False, True])
def test_masked_non_finite_step_runs_op_by_op(cell, value, zero_out):
    """tf2onnx's Keras mask selects by arithmetic (m * new + (1 - m) * old): a NaN or
    inf at a masked step makes NaN from then on in ONNX Runtime (0 * NaN); the layer's
    select would not.  That call runs op by op (ORT's NaNs); the next, finite, fused."""
    data, _ = _loop_graph(cell, 3, 4, mask=True, zero_out=zero_out)
    m = load_onnx(data)
    feeds = _feeds(3, 3, 5, np.float32, mask=True)
    feeds["m"][0, 2] = False
    feeds["x"][0, 2] = value
    with np.errstate(all="ignore"):
        got = m.run(dict(feeds))
    ref = _ort(data, feeds)
    for k in ref:
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]), err_msg=k)
    assert np.isnan(got["h_f"][0]).all()
    _compare(data, _feeds(3, 3, 5, np.float32, mask=True), np.float32, model=m)


def test_masked_overflow_runs_op_by_op():
    """A relu LSTM whose values overflow to inf under a mask: ORT's NaN positions."""
    data, _ = _loop_graph("lstm", 3, 5, mask=True, act="Relu", gact="Relu")
    feeds = _feeds(3, 4, 7, np.float32, mask=True)
    feeds["x"] *= 8
    m = load_onnx(data)
    with np.errstate(all="ignore"):
        got = m.run(dict(feeds))
        ref = _ort(data, feeds)
    for k in ref:
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]), err_msg=k)


def _sources():
    def strided(b):
        src = b.copy()
        return src, np.lib.stride_tricks.as_strided(src, writeable=False)

    def frombuffer(b):
        buf = bytearray(b.tobytes())
        ro = np.frombuffer(buf, b.dtype).reshape(b.shape)
        ro.flags.writeable = False
        return np.frombuffer(buf, b.dtype).reshape(b.shape), ro
    return {"as_strided": strided, "frombuffer": frombuffer}


@pytest.mark.parametrize("kind", ["as_strided", "frombuffer"])
def test_read_only_array_of_writeable_memory_is_followed(kind):
    """A fed weight read-only but over memory writeable elsewhere (as_strided's
    DummyArray base, a bytearray's memoryview): changed in place between calls, the
    next call must see it (compared by value, not trusted by identity)."""
    data, w = _loop_graph("rnn", 3, 5, weights="input")
    src, b = _sources()[kind](w["b"])
    feeds = dict(_feeds(3, 2, 4, np.float32), W=w["W"], R=w["R"], b=b)
    m = load_onnx(data)
    _compare(data, feeds, np.float32, model=m)
    plan = _loops(m)[0]._fusion.cache[2]
    src[...] += 0.7
    _compare(data, {k: np.array(v) for k, v in feeds.items()}, np.float32, model=m)
    got = m.run(dict(feeds))
    ref = _ort(data, {k: np.array(v) for k, v in feeds.items()})
    np.testing.assert_allclose(got["h_f"], ref["h_f"], rtol=1e-4, atol=1e-5)
    assert _loops(m)[0]._fusion.cache[2] is not plan


def test_fed_array_frozen_again_after_a_change_is_followed():
    """A fed weight read-only, made writeable, changed and made read-only again between
    calls (numpy lets the flag go back): the next call must see the change.  Only the
    arrays a model keeps are trusted by identity."""
    data, w = _loop_graph("gru", 3, 5, weights="input")
    b = w["b"].copy()
    b.flags.writeable = False
    feeds = dict(_feeds(3, 2, 4, np.float32), W=w["W"], R=w["R"], b=b)
    m = load_onnx(data)
    _compare(data, feeds, np.float32, model=m)
    plan = _loops(m)[0]._fusion.cache[2]
    b.flags.writeable = True
    b += 0.5
    b.flags.writeable = False
    _compare(data, feeds, np.float32, model=m)
    assert _loops(m)[0]._fusion.cache[2] is not plan
