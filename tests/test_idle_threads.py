"""A call after a pause: the OpenMP worker of an idle team sleeps, and waking it costs
milliseconds on a virtual machine, so a batch of one on the packed kernel (whose
arithmetic does not depend on the thread count) runs on one thread after
``_threads.IDLE_SINGLE_S`` without a call (streaming steps: ``_set_step_idle_single``)."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastrnn
from fastrnn import _kernels, _threads, layers

CELLS = {"RNN": fastrnn.SimpleRNN, "LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}


@pytest.fixture
def idle_rule(monkeypatch):
    from fastrnn import layers
    old = _threads.IDLE_SINGLE_S
    old_work = _kernels._set_min_parallel_work(0)
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", -1)
    yield
    _threads.IDLE_SINGLE_S = old
    _kernels._set_min_parallel_work(old_work)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [40, 256])
def test_batch_of_one_same_bits_on_any_thread_count(idle_rule, cell, dtype, H):
    """The property the rule relies on: B=1 on the packed kernel gives the same bits on 1,
    2 and 3 threads (the overlapped unit split's halves included: H=256; the batched
    gate math on one thread, per block on a team), stacked, bidirectional (both
    directions at once) and not (the unit split), with lengths and a mask, T=1; and an
    idle call (rule forced) equals a non-idle one."""
    rng = np.random.default_rng(H)
    for bi, T, kw in ((True, 9, {}), (True, 9, {"lengths": [6]}),
                      (True, 9, {"mask": rng.random((9, 1)) > 0.3}), (True, 1, {}),
                      (False, 9, {}), (False, 9, {"lengths": [6]})):
        layer = CELLS[cell](H, H, num_layers=2, bidirectional=bi, dtype=dtype, seed=3)
        x = rng.standard_normal((T, 1, H)).astype(dtype)
        _threads.IDLE_SINGLE_S = -1
        runs = [layer(x, num_threads=nt, **kw) for nt in (1, 2, 3)]
        _threads.IDLE_SINGLE_S = 0
        runs.append(layer(x, num_threads=2, **kw))
        for out, st in runs[1:]:
            np.testing.assert_array_equal(out, runs[0][0])
            for a, b in zip(st if isinstance(st, tuple) else (st,),
                            runs[0][1] if isinstance(st, tuple) else (runs[0][1],)):
                np.testing.assert_array_equal(a, b)


def _kernel_threads(monkeypatch):
    """Record the thread count each run_layer call is given (its num_threads, the 23rd
    positional argument)."""
    seen = []
    real = _kernels.run_layer

    def spy(*args, **kw):
        seen.append(args[22])
        return real(*args, **kw)
    monkeypatch.setattr(_kernels, "run_layer", spy)
    monkeypatch.setattr(layers, "_DENSE_RUN", 0)     # (every call through run_layer)
    return seen


def test_idle_call_runs_on_one_thread(idle_rule, monkeypatch):
    seen = _kernel_threads(monkeypatch)
    layer = fastrnn.GRU(64, 64, num_layers=2, seed=1, num_threads=2)
    x = np.zeros((5, 1, 64), np.float32)
    _threads.IDLE_SINGLE_S = 0.05
    layer(x)
    layer(x)                            # back to back: two threads
    assert seen[-2:] == [2, 2]
    time.sleep(0.08)
    layer(x)                            # after a pause: one, for both layers
    assert seen[-2:] == [1, 1]
    time.sleep(0.08)
    layer(np.zeros((5, 3, 64), np.float32))   # B > 1 keeps its threads
    assert seen[-2:] == [2, 2]
    _threads.IDLE_SINGLE_S = -1
    time.sleep(0.08)
    layer(x)
    assert seen[-2:] == [2, 2]
    # from IDLE_SINGLE_MACS multiply-adds on, two threads after a pause too
    _threads.IDLE_SINGLE_S = 0.05
    macs = layer._macs(x.shape[0])
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", macs + 1)
    time.sleep(0.08)
    layer(x)
    assert seen[-2:] == [1, 1]
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", macs)
    time.sleep(0.08)
    layer(x)
    assert seen[-2:] == [2, 2]


def test_model_layers_share_the_outer_decision(idle_rule, monkeypatch):
    """A Keras-style model's layers follow the model call's decision: the second RNN
    layer does not see the first one's end as a recent call."""
    from fastrnn.model import KerasRNN, Model
    seen = _kernel_threads(monkeypatch)
    m = Model([KerasRNN(fastrnn.LSTM(16, 64, batch_first=True, seed=1, num_threads=2),
                        return_sequences=True),
               KerasRNN(fastrnn.GRU(64, 64, batch_first=True, seed=2, num_threads=2))])
    _threads.IDLE_SINGLE_S = 0.05
    x = np.zeros((1, 12, 16), np.float32)    # (above the small-call rule's size)
    m(x)
    m(x)
    assert seen[-2:] == [2, 2]
    time.sleep(0.08)
    m(x)
    assert seen[-2:] == [1, 1]


def test_call_scope():
    old = _threads.IDLE_SINGLE_S
    try:
        _threads.IDLE_SINGLE_S = 0.05
        with _threads.call_scope():
            pass
        with _threads.call_scope() as idle:
            assert not idle
            time.sleep(0.08)
            with _threads.call_scope() as inner:     # nested: the outer answer
                assert not inner
        time.sleep(0.08)
        with _threads.call_scope() as idle:
            assert idle
            with _threads.call_scope() as inner:
                assert inner
        with _threads.call_scope() as idle:          # the outer end counted
            assert not idle
        with pytest.raises(RuntimeError):
            with _threads.call_scope():
                raise RuntimeError("x")
        assert _threads._scope.depth == 0
        # a layer call (CALL_SCOPE) that raises leaves the scope too,
        # and its end counts as the last call
        layer = fastrnn.GRU(4, 8, seed=0)
        time.sleep(0.08)
        with pytest.raises(ValueError, match="features"):
            layer(np.zeros((3, 1, 5), np.float32))
        assert _threads._scope.depth == 0
        with _threads.call_scope() as idle:
            assert not idle
    finally:
        _threads.IDLE_SINGLE_S = old


def test_small_call_runs_on_one_thread(monkeypatch):
    """A call of at most layers._SMALL_CALL_MACS multiply-adds (steps x sequences x
    every layer's products) runs on one thread, whatever the batch; one more runs on
    the threads it was given."""
    from fastrnn import layers
    seen = _kernel_threads(monkeypatch)
    layer = fastrnn.LSTM(16, 32, num_layers=2, seed=1, num_threads=2)
    x = np.random.default_rng(0).standard_normal((3, 2, 16)).astype(np.float32)
    macs = 2 * layer._macs(3)
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", macs)
    y1 = layer(x)[0]
    assert seen[-2:] == [1, 1]
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", macs - 1)
    y2 = layer(x)[0]
    assert seen[-2:] == [2, 2]
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)


def test_idle_threshold_by_cpu(monkeypatch):
    """IDLE_SINGLE_MACS None: 2^24 multiply-adds, 2^22 on Zen 4 (AMD family 0x19 with
    1 MiB of L2), whose worker wakes sooner; a number set wins."""
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", None)
    monkeypatch.setattr(_kernels, "_L2_BYTES", 1 << 20)
    old = _kernels._set_amd_f19(1)
    try:
        assert _threads.idle_single_macs() == 1 << 22
        _kernels._set_amd_f19(0)
        assert _threads.idle_single_macs() == 1 << 24
    finally:
        _kernels._set_amd_f19(-1)
    assert _kernels.amd_f19() == old
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", 12345)
    assert _threads.idle_single_macs() == 12345


@pytest.fixture
def crowd_rule(idle_rule, monkeypatch):
    """The crowded-call rule on (tests/conftest.py turns it off), the pause rule off."""
    monkeypatch.setattr(_threads, "CROWD_SHARE", 0.25)
    monkeypatch.setattr(_threads, "CROWD_EMA", 1 / 16)
    monkeypatch.setattr(_threads, "_crowd", [0.0])
    _threads.IDLE_SINGLE_S = -1


def _call_in_another_thread():
    """A thread inside a fastrnn call scope until the returned event is set."""
    import threading
    inside, release = threading.Event(), threading.Event()

    def other():
        with _threads.call_scope():
            inside.set()
            release.wait(10)
    th = threading.Thread(target=other)
    th.start()
    assert inside.wait(10)
    return th, release


def test_crowded_call_runs_on_one_thread(crowd_rule, monkeypatch):
    """A batch of one that starts while another Python thread's call runs, or where the
    running share of calls that did is CROWD_SHARE or more, runs on one thread (the same
    bits); a batch of several keeps its threads; CROWD_SHARE None turns the rule off.  At
    any size (the pause rule's IDLE_SINGLE_MACS bound does not apply)."""
    seen = _kernel_threads(monkeypatch)
    monkeypatch.setattr(_threads, "IDLE_SINGLE_MACS", 1)
    layer = fastrnn.GRU(64, 64, num_layers=2, seed=1, num_threads=2)
    x = np.random.default_rng(1).standard_normal((5, 1, 64)).astype(np.float32)
    xb = np.zeros((5, 3, 64), np.float32)
    alone = layer(x)
    assert seen[-2:] == [2, 2]
    th, release = _call_in_another_thread()
    try:
        crowded = layer(x)
        assert seen[-2:] == [1, 1]
        np.testing.assert_array_equal(crowded[0], alone[0])
        np.testing.assert_array_equal(crowded[1], alone[1])
        layer(xb)                       # B > 1 keeps its threads
        assert seen[-2:] == [2, 2]
    finally:
        release.set()
        th.join()
    assert _threads._crowd[0] == pytest.approx(1 - (15 / 16) ** 2)   # 2 of 4 calls, last 2
    layer(x)                            # alone, few calls crowded: its threads
    assert seen[-2:] == [2, 2]
    # a process where half the recent calls were crowded: one thread until the running
    # share falls below a quarter (0.5 (15/16)^k < 0.25 from k = 11 on)
    _threads._crowd[0] = 0.5
    for k in range(1, 12):
        layer(x)
        assert seen[-2:] == ([1, 1] if k < 11 else [2, 2]), k
    assert _threads._active == []
    _threads.CROWD_SHARE = None         # off: no call is crowded
    _threads._crowd[0] = 1.0
    th, release = _call_in_another_thread()
    try:
        layer(x)
        assert seen[-2:] == [2, 2]
    finally:
        release.set()
        th.join()


def test_crowded_model_and_scope(crowd_rule, monkeypatch):
    """A Keras-style model's layers follow the model call's answer (CROWDED); a layer
    call that raises leaves the count of calls in progress as it was; another thread's
    call in progress wins over a pause (CROWDED), a pause over a crowded share (PAUSED)."""
    from fastrnn.model import KerasRNN, Model
    seen = _kernel_threads(monkeypatch)
    m = Model([KerasRNN(fastrnn.LSTM(16, 64, batch_first=True, seed=1, num_threads=2),
                        return_sequences=True),
               KerasRNN(fastrnn.GRU(64, 64, batch_first=True, seed=2, num_threads=2))])
    x = np.zeros((1, 12, 16), np.float32)
    m(x)
    assert seen[-2:] == [2, 2]
    th, release = _call_in_another_thread()
    try:
        m(x)
        assert seen[-2:] == [1, 1]
        with pytest.raises(ValueError, match="features"):
            fastrnn.GRU(4, 8, seed=0)(np.zeros((3, 1, 5), np.float32))
        assert len(_threads._active) == 1           # (the other thread's)
        with _threads.call_scope() as answer:
            assert answer == _threads.CROWDED
        # a pause since the last call ended, but another thread's call still runs:
        # crowded (an audit found it answered PAUSED: two threads' teams at once)
        _threads.IDLE_SINGLE_S = 0.05
        time.sleep(0.08)
        with _threads.call_scope() as answer:
            assert answer == _threads.CROWDED
    finally:
        release.set()
        th.join()
    assert _threads._active == []
    _threads._crowd[0] = 0.9            # alone after a pause: PAUSED, whatever the share
    time.sleep(0.08)
    with _threads.call_scope() as answer:
        assert answer == _threads.PAUSED


def test_fork_forgets_other_threads_calls(crowd_rule):
    """A child forked while another thread was inside a call has no such call, nor the
    parent's share of crowded calls: its calls are not crowded."""
    import os
    _threads._crowd[0] = 0.9
    th, release = _call_in_another_thread()
    try:
        pid = os.fork()
        if pid == 0:        # (the child: report through the exit status)
            code = 1
            try:
                with _threads.call_scope() as answer:
                    code = 0 if answer == 0 and len(_threads._active) == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        release.set()
        th.join()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers here")
def test_interrupts_never_leave_a_call_counted():
    """KeyboardInterrupts raised every ~70 us into layer and model calls (what Ctrl-C
    does, at any bytecode) for 4 s: afterwards no call is counted as running and the
    thread is at depth 0 (with the bookkeeping in two Python functions, one landed
    between a record and its undo within ~900 interrupts, and every later call of the
    process counted as crowded, or the thread's calls as nested)."""
    code = """
import signal, time, numpy as np, fastrnn
from fastrnn import _threads
from fastrnn.model import Dense, KerasRNN, Model
layer = fastrnn.GRU(8, 32, seed=0)
model = Model([KerasRNN(fastrnn.LSTM(8, 16, batch_first=True, seed=1)),
               Dense(np.ones((16, 2), np.float32))])
x = np.zeros((5, 1, 8), np.float32)
armed = [False]
def handler(*a):
    if armed[0]:
        armed[0] = False
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 1e-4, 7e-5)
n = k = 0
end = time.monotonic() + 4.0
while time.monotonic() < end:
    k += 1
    try:
        armed[0] = True
        layer(x) if k % 2 else model(np.swapaxes(x, 0, 1))
        armed[0] = False
    except KeyboardInterrupt:
        n += 1
    armed[0] = False
    assert not _threads._active and not getattr(_threads._scope, "depth", 0), (n, k)
signal.setitimer(signal.ITIMER_REAL, 0)
assert n > 100, n
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
