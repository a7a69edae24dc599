"""The backward of a bidirectional layer with both directions at the same time
(``_backward.backward_pair``, one thread each): the same bits as one-thread backwards of
each direction one after the other, the gradients torch's, safe beside other training
threads, its own kept scratch for the second direction, and the rule that picks it."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _backward, train

from test_backward import _run_case


@pytest.fixture
def pair_mode():
    """Sets ``_backward._set_bwd_pair`` for a test and restores the automatic mode."""
    old = _backward._set_bwd_pair(0)
    yield _backward._set_bwd_pair
    _backward._set_bwd_pair(old)


@pytest.fixture
def pair_calls(monkeypatch):
    """Counts the calls of backward_pair (the tests below must run it, not just pass)."""
    n = [0]
    real = _backward.backward_pair

    def counted(a, b):
        n[0] += 1
        return real(a, b)
    monkeypatch.setattr(_backward, "backward_pair", counted)
    return n


def _layer(kind, I, H, dtype, **kw):
    cls = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}[kind]
    return cls(I, H, bidirectional=True, dtype=dtype, seed=3, num_threads=2, **kw)


def _grads(layer, mode, nt, x, lengths=None, mask=None, grad_state=False,
           need_input_grad=True):
    """forward_train (2 threads) then backward on ``nt`` threads with the pair mode."""
    out, st, cache = layer.forward_train(x, lengths=lengths, mask=mask)
    rng = np.random.default_rng(11)
    gy = rng.standard_normal(out.shape).astype(layer.dtype)
    gs = None
    if grad_state:
        sts = st if isinstance(st, tuple) else (st,)
        gs = tuple(rng.standard_normal(s.shape).astype(layer.dtype) for s in sts)
        gs = gs if len(gs) == 2 else gs[0]
    old = _backward._set_bwd_pair(mode)
    try:
        return layer.backward(cache, gy, gs, need_input_grad=need_input_grad,
                              num_threads=nt)
    finally:
        _backward._set_bwd_pair(old)


def _assert_same_bits(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


# kind, options, I, H: every cell and kernel path of the backward (LSTM and GRU
# reset_after on the unit kernel, SimpleRNN, GRU reset_after=False and the projected LSTM
# on the step loop), odd and vector-width sizes
CASES = [("LSTM", {}, 5, 7), ("LSTM", {}, 16, 64), ("LSTM", dict(proj_size=3), 4, 7),
         ("LSTM", dict(proj_size=16), 8, 64), ("GRU", {}, 5, 7), ("GRU", {}, 16, 64),
         ("GRU", dict(reset_after=False), 5, 7), ("GRU", dict(reset_after=False), 8, 64),
         ("RNN", {}, 4, 7), ("RNN", dict(nonlinearity="relu"), 8, 64), ("LSTM", {}, 3, 1),
         ("GRU", {}, 2, 1), ("RNN", {}, 1, 1)]


@pytest.mark.parametrize("kind,kw,I,H", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_same_bits_as_one_thread_each(kind, kw, I, H, dtype, pair_calls):
    """Pair (forced, 2 threads) vs one direction after the other on one thread: the
    same bits, over batch 1-16, T=1 and more, 1-2 layers, ragged lengths, given state
    gradients, no input gradient, go_backwards."""
    rng = np.random.default_rng(5)
    for B, T, L, ragged, gs, nig, gb in [(1, 1, 1, False, False, False, False),
                                          (3, 6, 2, True, True, False, False),
                                          (8, 9, 1, False, True, True, True),
                                          (16, 4, 2, True, False, False, True),
                                          (3, 1, 2, False, True, False, False)]:
        layer = _layer(kind, I, H, dtype, num_layers=L, go_backwards=gb, **kw)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = rng.integers(1, T + 1, size=B) if ragged else None
        if ragged:
            lengths[0] = T
        before = pair_calls[0]
        a = _grads(layer, 1, 2, x, lengths, grad_state=gs, need_input_grad=not nig)
        assert pair_calls[0] == before + L          # one pair a layer
        b = _grads(layer, 2, 1, x, lengths, grad_state=gs, need_input_grad=not nig)
        assert pair_calls[0] == before + L
        _assert_same_bits(a, b)
        _assert_same_bits(a, _grads(layer, 1, 2, x, lengths, grad_state=gs,
                                    need_input_grad=not nig))   # run to run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_with_span_mask_and_batch_first(dtype, pair_calls):
    """A mask of one span a sequence trains as lengths on the kernels: the pair runs
    there too, with the same bits; batch_first and unbatched inputs."""
    rng = np.random.default_rng(2)
    T, B = 7, 4
    t = np.arange(T)[:, None]
    mask = ((t >= np.array([0, 2, 0, 1])) & (t < np.array([7, 5, 3, 6]))).T   # (B, T)
    layer = _layer("GRU", 5, 9, dtype, num_layers=2, batch_first=True)
    x = rng.standard_normal((B, T, 5)).astype(dtype)
    a = _grads(layer, 1, 2, x, mask=mask, grad_state=True)
    assert pair_calls[0] == 2
    _assert_same_bits(a, _grads(layer, 2, 1, x, mask=mask, grad_state=True))
    layer = _layer("LSTM", 5, 9, dtype)
    x = rng.standard_normal((T, 5)).astype(dtype)
    _assert_same_bits(_grads(layer, 1, 2, x, grad_state=True),
                      _grads(layer, 2, 1, x, grad_state=True))
    assert pair_calls[0] == 3


@pytest.mark.parametrize("cell,L,B,H,init,use_len,dtype", [
    ("lstm", 2, 3, 5, True, True, np.float32), ("lstm_proj", 2, 8, 7, True, True, np.float64),
    ("gru", 1, 16, 64, False, True, np.float32), ("gru", 2, 1, 7, True, False, np.float64),
    ("rnn_tanh", 2, 3, 5, True, True, np.float64), ("rnn_relu", 1, 8, 64, True, False,
                                                    np.float32),
    ("lstm", 1, 16, 64, True, True, np.float64)])
def test_pair_vs_torch(cell, L, B, H, init, use_len, dtype, pair_mode, pair_calls):
    """Forced pair: the gradients torch autograd computes (test_backward's checks)."""
    pair_mode(1)
    _run_case(cell, L, True, False, True, init, use_len, dtype, T=6, B=B, I=4, H=H,
              seed=L * 100 + B)
    assert pair_calls[0] == L


def test_pair_beside_other_training_threads(pair_mode):
    """Two Python threads training a bidirectional layer each (LSTM, GRU), both
    directions of each at once: the results of the same calls one after the other."""
    pair_mode(1)
    rng = np.random.default_rng(0)
    jobs = []
    for kind, H in (("LSTM", 48), ("GRU", 40)):
        layer = _layer(kind, 12, H, np.float32, num_layers=2)
        x = rng.standard_normal((20, 6, 12)).astype(np.float32)
        jobs.append((layer, x))
    serial = [_grads(layer, 1, 2, x) for layer, x in jobs]
    got = [[], []]
    errors = []

    def work(i):
        try:
            for _ in range(15):
                got[i].append(_grads(*jobs[i][:1], 1, 2, jobs[i][1]))
        except Exception as e:       # noqa: BLE001  (reported below)
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    for i in range(2):
        assert len(got[i]) == 15
        for g in got[i]:
            _assert_same_bits(g, serial[i])


def test_second_direction_keeps_its_own_scratch(pair_mode):
    """The pair's second direction takes its kept scratch from the second slot set (so
    the two directions running at once each find their blocks again next call): after a
    pair, both sets hold blocks; after one direction after the other, only the first."""
    layer = _layer("LSTM", 8, 40, np.float32)
    x = np.random.default_rng(0).standard_normal((10, 4, 8)).astype(np.float32)
    train.release_scratch()
    assert not any(_backward._scratch_kept())
    kept = len(_backward._scratch_kept()) // 2
    _grads(layer, 2, 2, x)
    k = _backward._scratch_kept()
    assert any(k[:kept]) and not any(k[kept:])
    train.release_scratch()
    g1 = _grads(layer, 1, 2, x)
    k = _backward._scratch_kept()
    assert any(k[:kept]) and any(k[kept:])
    g2 = _grads(layer, 1, 2, x)                # the kept blocks again: the same bits
    _assert_same_bits(g1, g2)
    assert train.release_scratch() >= sum(k)
    assert not any(_backward._scratch_kept())


def test_set_bwd_pair_hook():
    from fastrnn import _kernels
    gen = _kernels.hooks_generation()
    old = _backward._set_bwd_pair(1)
    try:
        assert _kernels.hooks_generation() > gen
        assert _backward._set_bwd_pair(2) == 1
        assert _backward._set_bwd_pair(1) == 2
        # forced: any batch with two threads; never with one thread or none to run
        assert _backward.pair_applies(1, 1, 1, 0, 1, 1, 2, 4)
        assert not _backward.pair_applies(1, 16, 64, 0, 64, 1, 1, 4)
        assert not _backward.pair_applies(1, 0, 64, 0, 64, 1, 2, 4)
        _backward._set_bwd_pair(2)
        assert not _backward.pair_applies(1, 16, 64, 0, 64, 1, 2, 4)
    finally:
        _backward._set_bwd_pair(old)


def test_pair_rule(pair_mode):
    """The automatic rule's decisions (measured and documented at pair_applies), read
    with the L2 size the rule reads."""
    pair_mode(0)
    ap = _backward.pair_applies
    lvl = _backward.small_gemm_level()
    l2 = _backward.l2_bytes() or (1 << 20)
    h16 = int((l2 // 16 // 16) ** 0.5)         # float32 LSTM: 4 H^2 * 4 <= L2 / 16
    h4 = int((l2 // 4 // 16) ** 0.5)           # ... <= L2 / 4
    g4 = int((l2 // 4 // 12) ** 0.5)           # float32 GRU: 3 H^2 * 4 <= L2 / 4
    g38 = int((3 * l2 // 8 // 12) ** 0.5)      # ... <= 3/8 L2
    # (cell, batch, hidden, proj, input, reset_after, threads, itemsize) -> expected
    cases = [
        ((1, 64, h16, 0, 64, 1, 2, 4), True),            # LSTM within L2/16: any batch
        ((1, 64, h16 + 1, 0, 64, 1, 2, 4), False),
        ((1, 16, h4, 0, 64, 1, 2, 4), True),             # within L2/4: up to 16 rows
        ((1, 17, h4, 0, 64, 1, 2, 4), False),
        ((1, 1, h4 + 1, 0, 64, 1, 2, 4), False),         # beyond: never
        ((1, 1, int(h4 / 2 ** 0.5) + 1, 0, 64, 1, 2, 8), False),   # (float64 bytes)
        ((1, 8, 64, 0, 64, 1, 1, 4), False),             # one thread
        ((1, 8, 64, 0, 64, 1, 4, 4), False),             # 4 threads: not measured
        ((1, 0, 64, 0, 64, 1, 2, 4), False),             # no rows
        ((2, 64, 73, 0, 64, 1, 2, 4), True),             # GRU within 64 KiB: any batch
        ((2, 9, max(74, g4), 0, 64, 1, 2, 4), False),
        ((2, 8, g4, 0, 64, 1, 2, 4), True),              # within L2/4: up to 8 rows
        ((2, 4, g38, 0, 64, 1, 2, 4), True),             # within 3/8 L2: up to 4 rows
        ((2, 5, g38, 0, 64, 1, 2, 4), False),
        ((2, 1, g38 + 1, 0, 64, 1, 2, 4), False),        # beyond: never
        ((2, 8, 512, 0, 64, 0, 2, 4), True),             # GRU reset_after=False: B <= 8
        ((2, 9, 16, 0, 64, 0, 2, 4), False),
        ((0, 8, 512, 0, 64, 1, 2, 8), True),             # SimpleRNN
        ((0, 9, 64, 0, 64, 1, 2, 4), False),
        ((1, 8, 512, 128, 64, 1, 2, 4), True),           # LSTM proj_size
        ((1, 16, 16, 8, 64, 1, 2, 4), False),
    ]
    for args, want in cases:
        assert bool(ap(*args)) == (want and lvl > 0), args
