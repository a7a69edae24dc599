"""A process forked after fastrnn ran on several threads (a gunicorn --preload worker
after a warm-up call, a multiprocessing "fork" pool): GCC's OpenMP runtime cannot start
threads again there, so fastrnn runs the child's calls on one thread and warns once,
instead of waiting forever for workers fork did not copy (``fastrnn._threads``)."""
import os
import signal
import sys
import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn import _threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"),
                                reason="fork is a POSIX start method (tested on Linux)")


def _in_child(fn, timeout_s=30):
    """Run fn() in a forked child; its exit status: 0 when fn returned True.  A child
    that hangs is killed by SIGALRM (the test then fails instead of hanging)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            signal.alarm(timeout_s)
            code = 0 if fn() else 2
        except BaseException:  # noqa: BLE001 (the parent only sees the exit status)
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def test_child_forked_after_threads_runs_on_one_thread():
    layer = fastrnn.GRU(256, 256, seed=0, num_threads=2)
    lstm = fastrnn.LSTM(256, 256, num_layers=2, seed=1)
    x = np.random.default_rng(0).standard_normal((20, 1, 256)).astype(np.float32)
    ref = layer(x)[0]                         # two threads: the OpenMP pool exists now
    ref_b = lstm(np.repeat(x, 3, axis=1), num_threads=2)[0]
    h = np.zeros((2, 1, 256), np.float32)
    c = np.zeros_like(h)
    for t in range(3):
        lstm._step_fast(x[t], h, c, num_threads=2)
    ref_step = h.copy()

    def child():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            same = np.array_equal(layer(x)[0], ref)            # B=1: the same bits
            same &= np.array_equal(layer(x, num_threads=2)[0], ref)
            out_b = lstm(np.repeat(x, 3, axis=1), num_threads=2)[0]
            close = np.allclose(out_b, ref_b, rtol=1e-5, atol=1e-6)
            hs, cs = np.zeros_like(h), np.zeros_like(c)
            for t in range(3):
                lstm._step_fast(x[t], hs, cs, num_threads=2)
            same &= np.array_equal(hs, ref_step)
        told = [w for w in caught if "forked" in str(w.message)]
        return (same and close and len(told) == 1 and _threads.get_num_threads() == 1)

    status = _in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"child status {status} (signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else '-'})")
    assert not _threads._fork_single          # the parent keeps its threads
    assert layer(x, num_threads=2)[0].tolist() == ref.tolist()


def test_child_forked_before_any_threads_keeps_them():
    """The rule itself: a child only goes to one thread when the parent used threads."""
    old = _threads._threads_used, _threads._fork_single, _threads._default
    try:
        _threads._threads_used = False
        _threads._after_fork_in_child()
        assert not _threads._fork_single
        _threads._threads_used = True
        _threads._after_fork_in_child()
        assert _threads._fork_single and _threads.get_num_threads() == 1
        with pytest.warns(RuntimeWarning, match="forked"):
            assert _threads.resolve(4) == 1
        _threads._fork_warned = False       # a call with the default count warns too
        _threads._default = 3
        with pytest.warns(RuntimeWarning, match="forked"):
            assert _threads.resolve(None, None) == 1
    finally:
        _threads._threads_used, _threads._fork_single, _threads._default = old
        _threads._fork_warned = False


_FORK_DURING_FIRST_CALL = r"""
import os, sys, threading, time, warnings, faulthandler
import numpy as np
import fastrnn
warnings.simplefilter("ignore")
layer = fastrnn.LSTM(16, 64, seed=0)
x = np.random.default_rng(0).standard_normal((30, 4, 16)).astype(np.float32)
first = {"call": lambda: layer(x), "train": lambda: layer.forward_train(x)}[sys.argv[1]]
t = threading.Thread(target=first)
t.start()                       # (its first call imports the kernels / training module)
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)
    o, s, c = layer.forward_train(x)
    layer.backward(c, np.ones_like(o))
    layer(x)
    os._exit(0)
t.join()
_, status = os.waitpid(pid, 0)
print("child status", status)
"""


@pytest.mark.parametrize("first", ["call", "train"])
def test_fork_while_another_thread_makes_its_first_call(first):
    """A fork while another thread is in its first call (importing the kernels, the
    training module, setting up BLAS under a lock): the child inherited a lock held by
    a thread it does not have and hung for good (every time, in a fresh process).  The
    fork hooks now wait for those locks and imports."""
    import subprocess
    for _ in range(3):
        res = subprocess.run([sys.executable, "-c", _FORK_DURING_FIRST_CALL, first],
                             capture_output=True, text=True, timeout=120,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert "child status 0" in res.stdout, res.stdout + res.stderr[-2000:]
        assert "Exception ignored" not in res.stderr, res.stderr[-2000:]
