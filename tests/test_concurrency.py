"""One model called from many Python threads at once: correct results, no shared scratch."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from fastrnn.stream import Stream


def _run_threads(fn, n_threads, n_calls):
    """Start ``n_threads`` threads together (barrier); each makes ``n_calls`` calls."""
    barrier = threading.Barrier(n_threads)
    errors = []

    def worker(k):
        try:
            barrier.wait()
            for i in range(n_calls):
                fn(k, i)
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("cell,kw", [("LSTM", {"num_layers": 2}), ("GRU", {"bidirectional": True}),
                                     ("SimpleRNN", {})])
def test_8_threads_x_200_calls(cell, kw):
    layer = getattr(fastrnn, cell)(6, 16, seed=0, **kw)
    rng = np.random.default_rng(0)
    # different inputs per (thread, call), with different shapes so scratch sizes differ
    inputs = {}
    for k in range(8):
        for i in range(200):
            T = 1 + (k * 7 + i) % 9
            B = 1 + (k + i) % 4
            inputs[k, i] = rng.standard_normal((T, B, 6)).astype(np.float32)
    # single-threaded reference, one thread per call
    ref = {key: layer(x, num_threads=1)[0] for key, x in inputs.items()}
    got = {}

    def call(k, i):
        got[k, i] = layer(inputs[k, i], num_threads=1)[0]

    _run_threads(call, 8, 200)
    assert len(got) == 1600
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])


def test_threads_with_internal_openmp_threads():
    """Concurrent calls that each also use 2 OpenMP threads stay correct."""
    layer = fastrnn.LSTM(8, 32, seed=1)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((20, 5, 8)).astype(np.float32) for _ in range(16)]
    ref = [layer(x, num_threads=2)[0] for x in xs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda x: layer(x, num_threads=2)[0], xs * 5))
    for i, g in enumerate(got):
        np.testing.assert_allclose(g, ref[i % 16], rtol=1e-6, atol=1e-6)


def test_fresh_layer_first_use_from_threads():
    """The weights are packed lazily on first call: a race on that must be harmless."""
    for _ in range(5):
        layer = fastrnn.GRU(4, 8, num_layers=2, seed=2)
        x = np.random.default_rng(2).standard_normal((6, 3, 4)).astype(np.float32)
        ref = fastrnn.GRU(4, 8, num_layers=2, seed=2)(x, num_threads=1)[0]
        res = []
        _run_threads(lambda k, i: res.append(layer(x, num_threads=1)[0]), 6, 3)
        for r in res:
            np.testing.assert_array_equal(r, ref)


def test_streams_per_thread_are_independent():
    layer = fastrnn.LSTM(4, 8, seed=3)
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((50, 1, 4)).astype(np.float32) for _ in range(6)]
    ref = [layer(s, num_threads=1)[0] for s in seqs]
    got = [None] * 6

    def run(k, _):
        st = Stream(layer, num_threads=1)
        got[k] = np.stack([st.step(seqs[k][t]) for t in range(50)])

    _run_threads(run, 6, 1)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_gil_released_during_compute():
    """While a long call runs in one thread, another Python thread keeps running."""
    layer = fastrnn.LSTM(64, 128, seed=4)
    x = np.random.default_rng(4).standard_normal((3000, 8, 64)).astype(np.float32)
    done = threading.Event()
    ticks = [0]

    def spin():
        while not done.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        import time
        t0 = time.perf_counter()
        layer(x, num_threads=1)
        elapsed = time.perf_counter() - t0
    finally:
        done.set()
        t.join()
    # a pure-Python loop does well over 1e5 increments per second when it gets the GIL
    assert elapsed > 0.02
    assert ticks[0] > 1000 * elapsed * 10, (ticks[0], elapsed)


def test_lstm_route_and_masks_from_threads():
    """Plain LSTM calls that take the training-forward route (B = 4 on one thread, 8 and
    16+ on two; the reverse direction gathered; chunks of steps) and right-padding masks
    run as lengths, from 4 Python threads at once: the same bits as one at a time."""
    import fastrnn.layers as layers_mod
    layer = fastrnn.LSTM(6, 24, bidirectional=True, num_layers=2, seed=7)
    rng = np.random.default_rng(7)
    calls = []
    for i in range(24):
        B = (4, 8, 16, 20)[i % 4]
        nt = 1 if B == 4 else 2
        x = rng.standard_normal((9, B, 6)).astype(np.float32)
        lens = rng.integers(0, 10, B)
        kw = [{}, {"lengths": lens}, {"mask": np.arange(9)[:, None] < lens}][i % 3]
        calls.append((x, nt, kw))
    old = layers_mod._FUSED_LSTM_CHUNK_BYTES
    layers_mod._FUSED_LSTM_CHUNK_BYTES = 20000           # a few steps per chunk
    try:
        ref = [layer(x, num_threads=nt, **kw) for x, nt, kw in calls]
        got = {}

        def call(k, i):
            j = (k * 6 + i) % len(calls)
            x, nt, kw = calls[j]
            got[k, i] = (j, layer(x, num_threads=nt, **kw))

        _run_threads(call, 4, 12)
    finally:
        layers_mod._FUSED_LSTM_CHUNK_BYTES = old
    assert len(got) == 48
    for j, (out, (h, c)) in got.values():
        np.testing.assert_array_equal(out, ref[j][0])
        np.testing.assert_array_equal(h, ref[j][1][0])
        np.testing.assert_array_equal(c, ref[j][1][1])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_pair_and_kept_scratch_from_threads(cell):
    """Bidirectional layers whose two directions run at once (the pair, 2 threads) from
    4 Python threads, with shapes that change the size of the kept projected-input blocks
    (fr_keep_get / fr_keep_put slots shared by all calls) from call to call, the packed
    kernel forced: the same bits as one call at a time."""
    from fastrnn import _kernels
    layer = getattr(fastrnn, cell)(6, 40, bidirectional=True, num_layers=2, seed=5)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((3 + (i * 5) % 23, 1 + i % 6, 6)).astype(np.float32)
          for i in range(18)]
    old = _kernels._set_pair(1)
    _kernels._set_path(1)
    try:
        ref = [layer(x, num_threads=2)[0] for x in xs]
        got = {}

        def call(k, i):
            j = (k * 5 + i) % len(xs)
            got[k, i] = (j, layer(xs[j], num_threads=2)[0])

        _run_threads(call, 4, 30)
    finally:
        _kernels._set_pair(old)
        _kernels._set_path(0)
    assert len(got) == 120
    for j, y in got.values():
        np.testing.assert_array_equal(y, ref[j])


def test_onnx_model_kept_programs_from_threads():
    """One ONNX model (a PyTorch export: shape nodes, two bidirectional LSTM layers)
    called from 6 threads at once, each with its own inputs in two batch sizes: every
    answer is the one a single thread gets (the kept programs are shared, read-only)."""
    import os
    pytest.importorskip("onnx")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "onnx",
                        "lstm_bi_2l_op11.onnx")
    m = fastrnn.load(path)
    rng = np.random.default_rng(4)
    inputs = {(k, i): rng.standard_normal((4, 2 + (k + i) % 2, 5)).astype(np.float32)
              for k in range(6) for i in range(40)}
    solo = fastrnn.load(path)
    expected = {key: solo.run(x) for key, x in inputs.items()}
    got = {}
    _run_threads(lambda k, i: got.__setitem__((k, i), m.run(inputs[(k, i)])), 6, 40)
    assert len(m._progs) == 2
    for key, res in got.items():
        for name, v in res.items():
            np.testing.assert_array_equal(v, expected[key][name])


def _openblas_count():
    import ctypes
    from fastrnn import _threads
    paths = _threads.loaded_libraries(_threads.scipy_openblas_paths())
    if not paths:
        pytest.skip("scipy here has no OpenBLAS of its own (not a wheel)")
    lib = ctypes.CDLL(paths[0])
    get = getattr(lib, "scipy_openblas_get_num_threads", None) or lib.openblas_get_num_threads
    return get


def test_openblas_thread_count_shared_by_overlapping_calls():
    """scipy's OpenBLAS keeps one thread count a process: while kernel calls overlap it
    is the smallest count a running call wants, and when the last leaves, the count
    found before the first (a save / restore per call left it at 1 after calls of 1
    and 2 threads overlapped)."""
    from fastrnn import _kernels, _threads
    _threads.hook_blas()
    get = _openblas_count()
    base = get()
    if base < 2:
        pytest.skip("OpenBLAS runs one thread here")
    a = _kernels._blas_enter(2)
    assert get() == 2
    b = _kernels._blas_enter(1)
    assert get() == 1                   # the smallest wanted
    _kernels._blas_leave(a)
    assert get() == 1
    c = _kernels._blas_enter(2)
    _kernels._blas_leave(b)
    assert get() == 2                   # the 2-thread call left alone
    _kernels._blas_leave(c)
    assert get() == base


def test_openblas_thread_count_restored_after_threads_of_different_counts():
    """Training steps of 1 and 2 threads from four Python threads at once, five times:
    scipy's OpenBLAS count is the process's again after each round."""
    from fastrnn import train
    x = np.ones((20, 8, 32), np.float32)
    layers = {nt: fastrnn.LSTM(32, 32, num_threads=nt, seed=0) for nt in (1, 2)}

    def step(k, i):
        lay = layers[1 + k % 2]
        out, _, cache = train.forward_train(lay, x)
        train.backward(lay, cache, np.ones_like(out))

    step(1, 0)
    get = _openblas_count()
    base = get()
    for _ in range(5):
        _run_threads(step, 4, 15)
        assert get() == base


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_fork_while_another_thread_holds_the_openblas_count_lock():
    """A child forked while another thread held the shared OpenBLAS count's lock (in a
    call's enter / leave) starts with the count's state as if no call ran: its training
    step does not wait for a thread that is not in the child."""
    import os
    import time
    from fastrnn import _kernels, _threads, train
    _threads.hook_blas()
    train._hook_blas()
    _kernels._blas_hold(True)
    try:
        pid = os.fork()
        if pid == 0:                                    # child
            code = 1
            try:
                lay = fastrnn.LSTM(8, 8, num_threads=1)
                out, _, cache = train.forward_train(lay, np.ones((4, 2, 8), np.float32))
                train.backward(lay, cache, np.ones_like(out))
                code = 0
            finally:
                os._exit(code)
    finally:
        _kernels._blas_hold(False)
    t_end = time.time() + 30
    while time.time() < t_end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the OpenBLAS count's lock")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@pytest.mark.parametrize("cell,B", [("LSTM", 1), ("LSTM", 32), ("GRU", 64)])
def test_weights_changed_while_a_call_packs_are_not_kept_stale(cell, B, monkeypatch):
    """Another thread loads weights while a call packs them (made to happen
    deterministically: the load runs inside the packing).  That call may mix old and
    new weights, as an overlapping call may, but the packing is not kept: later calls
    use the new weights, also through the batch-lane and route packings (B = 32, 64).
    A half-old packing was kept for good (an audit: 3 of 40 threaded reloads)."""
    from fastrnn import _kernels
    layer = getattr(fastrnn, cell)(8, 40, num_layers=2, seed=0, num_threads=2)
    new = {k: v * 0.5 for k, v in layer.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((5, B, 8)).astype(np.float32)
    fresh = getattr(fastrnn, cell)(8, 40, num_layers=2, seed=0, num_threads=2)
    fresh.load_state_dict(new)
    want = fresh(x)[0]
    pack_units = _kernels.pack_units
    calls = []

    def load_meanwhile(*a):
        calls.append(1)
        if len(calls) == 2:              # after layer 0's first matrix: a half-old packing
            layer.load_state_dict(new)
        return pack_units(*a)

    old = layer(x)[0]
    layer.mark_weights_changed()                # (packs again in the call below)
    monkeypatch.setattr(_kernels, "pack_units", load_meanwhile)
    during = layer(x)[0]
    assert len(calls) >= 2
    # the overlapping call ran one set of weights, all old (not a mix: up to 28 outputs
    # in an audit's threaded run matched neither set)
    np.testing.assert_array_equal(during, old)
    monkeypatch.setattr(_kernels, "pack_units", pack_units)
    for _ in range(2):
        np.testing.assert_array_equal(layer(x)[0], want)
