"""No leaks: RSS stays flat over many calls and many loads (generous bounds)."""
import gc
import os
import sys

import numpy as np
import pytest

import fastrnn
import fastrnn.io
from fastrnn.stream import Stream

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm")
FIX = os.path.join(os.path.dirname(__file__), "fixtures")


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_100k_calls():
    layer = fastrnn.GRU(4, 8, num_layers=2, seed=0)
    lstm = fastrnn.LSTM(4, 8, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 4)).astype(np.float32)
    lens = np.array([2, 1])
    s = Stream(lstm, batch_size=2)
    for _ in range(3000):                                   # warm-up: caches, allocator pools
        layer(x)
        lstm(x, lengths=lens)
        s.step(x[0])
    before = rss_mb()
    for i in range(40000):
        layer(x, num_threads=1 + (i & 1))
        lstm(x, lengths=lens)
        s.step(x[0])
    after = rss_mb()
    # 120000 calls; a leak of even 200 bytes per call would add ~23 MB
    assert after - before < 16, (before, after)


def test_onnx_model_calls_over_many_shapes():
    """An ONNX model called with many batch sizes and lengths (its kept programs, at most
    32 sets of shapes, replaced as new ones come) stays flat."""
    pytest.importorskip("onnx")
    m = fastrnn.io.load(os.path.join(FIX, "onnx", "lstm_bi_2l_op11.onnx"))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + k % 7, 1 + k % 5, 5)).astype(np.float32) for k in range(40)]
    for _ in range(20):
        for x in xs:
            m.run(x)
    before = rss_mb()
    for _ in range(250):
        for x in xs:
            m.run(x)
    after = rss_mb()
    assert len(m._progs) <= 32
    assert after - before < 16, (before, after)


def test_1000_loads(tmp_path):
    p = str(tmp_path / "m.safetensors")
    fastrnn.LSTM(8, 16, num_layers=2, seed=1).save(p)
    files = [p, os.path.join(FIX, "torch", "checkpoint.pt")]
    for _ in range(50):
        for f in files:
            fastrnn.io.load(f)
    before = rss_mb()
    for _ in range(500):
        for f in files:
            m = fastrnn.io.load(f)
            m(np.zeros((2, 1, m.input_size), np.float32))
    after = rss_mb()
    assert after - before < 24, (before, after)


def test_rejected_loads_do_not_leak(tmp_path):
    bad = tmp_path / "bad.safetensors"
    data = open(os.path.join(FIX, "torch", "gru2.safetensors"), "rb").read()
    bad.write_bytes(data[:len(data) // 2])
    for _ in range(100):
        with pytest.raises(fastrnn.io.LoadError):
            fastrnn.io.load(str(bad))
    before = rss_mb()
    for _ in range(1000):
        with pytest.raises(fastrnn.io.LoadError):
            fastrnn.io.load(str(bad))
    assert rss_mb() - before < 16


def test_release_packings_frees_what_calls_keep():
    """After calls on several paths a layer holds its packings (several times its
    weights); release_packings drops them (the weights and a training cache made before
    stay valid) and the next call packs again, with the same numbers."""
    import gc
    import tracemalloc
    layer = fastrnn.LSTM(128, 128, num_layers=2, bidirectional=True, seed=0)
    weights = sum(v.nbytes for v in layer.parameters().values())
    x = np.random.default_rng(0).standard_normal((6, 16, 128)).astype(np.float32)
    want = layer(x)[0]
    out, _, cache = layer.forward_train(x[:, :2])
    layer.release_packings()        # (the calls below pack afresh on every CPU's paths)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for B in (1, 16, 64):
            layer(np.zeros((10, B, 128), np.float32))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        layer.release_packings()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held > 0.5 * weights and after < 0.05 * weights, (held, after, weights)
    np.testing.assert_array_equal(layer(x)[0], want)
    grads = layer.backward(cache, np.ones_like(out))          # (still valid)
    assert grads["weight_ih_l0"].shape == (512, 128)
