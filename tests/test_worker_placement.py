"""Worker placement (fr_barrier.h): a parallel region's workers keep off the CPU their
master runs on, so that a worker woken after a pause is not queued behind its master on
one vCPU.  Checked through the affinity Linux reports for each thread."""
import os
import sys
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _backward, _kernels, _threads

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _kernels.has_openmp()
    or len(os.sched_getaffinity(0)) < 2,
    reason="worker placement is for Linux builds with OpenMP on 2 or more CPUs")


def _allowed(tid):
    """The CPUs thread ``tid`` of this process may run on (/proc)."""
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                cpus = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    lo, _, hi = part.partition("-")
                    cpus.update(range(int(lo), int(hi or lo) + 1))
                return cpus
    raise AssertionError(f"no Cpus_allowed_list for thread {tid}")


@pytest.fixture
def two_threads_always(monkeypatch):
    from fastrnn import layers
    old_idle, old_work = _threads.IDLE_SINGLE_S, _kernels._set_min_parallel_work(0)
    _threads.IDLE_SINGLE_S = -1
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", -1)
    yield
    _threads.IDLE_SINGLE_S = old_idle
    _kernels._set_min_parallel_work(old_work)


def _in_fresh_thread(fn):
    """Run fn in a new Python thread (a new OpenMP team, a new placement record)."""
    out, err = [], []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            err.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def test_workers_keep_off_the_master_cpu(two_threads_always):
    """The worker of a 2-thread packed-kernel call may run anywhere but on the master's
    CPU; when the master has moved (the test hook stands for the master's CPU), the next
    call moves the same worker; the master's own affinity is left alone; the numbers
    are those of an unplaced call; the training kernels' regions (their own record)
    place their worker by the same rule."""
    allowed = os.sched_getaffinity(0)
    a, b = sorted(allowed)[:2]
    layer = fastrnn.GRU(64, 64, seed=1, num_threads=2)
    x = np.random.default_rng(0).standard_normal((5, 1, 64)).astype(np.float32)
    old = _kernels._set_worker_placement(0)
    ref = layer(x)[0]
    _kernels._set_worker_placement(old)

    def body():
        seen = []
        try:
            for cpu in (a, b):
                _kernels._set_placement_cpu(cpu)
                np.testing.assert_array_equal(layer(x)[0], ref)
                rec_cpu, tid, away = _kernels._placement_record(1)
                assert (rec_cpu, away) == (cpu, cpu)
                assert tid > 0 and tid != threading.get_native_id()
                assert _allowed(tid) == allowed - {cpu}
                assert _allowed(threading.get_native_id()) == allowed
                seen.append(tid)
        finally:
            _kernels._set_placement_cpu(-1)
        lstm = fastrnn.LSTM(128, 128, seed=2, num_threads=2)
        out, _, cache = lstm.forward_train(np.ones((6, 8, 128), np.float32))
        lstm.backward(cache, np.ones_like(out))
        cpu, tid, away = _backward._placement_record(1)
        assert cpu >= 0 and away == cpu and tid > 0
        assert _allowed(tid) == allowed - {cpu}
        return seen
    tids = _in_fresh_thread(body)
    assert tids[0] == tids[1]                   # the same worker, moved


def test_placement_off_leaves_workers_alone(two_threads_always):
    layer = fastrnn.GRU(64, 64, seed=1, num_threads=2)
    x = np.ones((5, 1, 64), np.float32)
    old = _kernels._set_worker_placement(0)
    try:
        def body():
            layer(x)
            return _kernels._placement_record(1)[:2]
        assert _in_fresh_thread(body) == (-1, 0)
    finally:
        _kernels._set_worker_placement(old)


def test_macs_counts_every_weight():
    """``_macs`` (the pause rule's measure): T times the multiply-adds of one step, i.e.
    the sizes of the input and recurrent weights of every layer and direction."""
    for cls, kw in ((fastrnn.LSTM, {}), (fastrnn.GRU, {"bidirectional": True}),
                    (fastrnn.SimpleRNN, {}), (fastrnn.LSTM, {"bidirectional": True})):
        layer = cls(24, 40, num_layers=3, seed=0, **kw)
        per_step = sum(v.size for k, v in layer.state_dict().items()
                       if k.startswith(("weight_ih", "weight_hh")))
        assert layer._macs(7) == 7 * per_step


@pytest.mark.parametrize("cell,H,B,dtype", [
    ("GRU", 48, 4, np.float32), ("GRU", 128, 4, np.float32), ("GRU", 48, 4, np.float64),
    ("GRU", 64, 2, np.float32), ("SimpleRNN", 96, 2, np.float32),
    ("SimpleRNN", 128, 2, np.float32), ("LSTM", 32, 6, np.float32),
    ("LSTM", 64, 3, np.float32), ("GRU", 24, 12, np.float64)])
def test_unit_split_of_a_small_batch_needs_blocks_and_work(monkeypatch, request, cell, H,
                                                           B, dtype):
    """The packed kernel splits the units of 2-15 rows between threads only with at
    least 4 unit blocks and W / 8 x 16k multiply-adds a step in the recurrent product
    (W: the unit block); the placement record says whether the call's region had a
    second thread.  fr_min_par_work = 0 (the test hook) lifts the rule."""
    from fastrnn import layers
    old_rows = _kernels._set_rowsplit_min(16)      # (Zen 4 splits rows from 8 rows)
    request.addfinalizer(lambda: _kernels._set_rowsplit_min(old_rows))
    monkeypatch.setattr(_threads, "IDLE_SINGLE_S", -1.0)
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", -1)
    monkeypatch.setattr(layers, "_FUSED_LSTM_MIN_B", 0)      # (LSTM: the packed kernel)
    G = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1}[cell]
    W = _kernels.unit_block(dtype)
    work = G * H * H * B
    want = 1 if (work < 16384 or H < 4 * W or 8 * work < 16384 * W) else 2
    layer = getattr(fastrnn, cell)(H, H, seed=1, num_threads=2, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((5, B, H)).astype(dtype)
    assert _kernels.choose_path({"SimpleRNN": 0, "LSTM": 1, "GRU": 2}[cell], B, H, 0, 1, 2,
                                1, H, np.dtype(dtype).itemsize) == "small"

    def threads():
        layer(x)
        return 2 if _kernels._placement_record(1)[0] >= 0 else 1
    assert _in_fresh_thread(threads) == want
    old = _kernels._set_min_parallel_work(0)
    try:
        assert _in_fresh_thread(threads) == 2
    finally:
        _kernels._set_min_parallel_work(old)


def test_environment_variable_turns_placement_off_in_both_modules():
    # FASTRNN_WORKER_PLACEMENT=0 is read as each module imports; _backward's import
    # raised a NameError with it once (its include ran before _hooks_changed existed).
    import subprocess
    code = ("import fastrnn._backward as b, fastrnn._kernels as k; "
            "print(b._set_worker_placement(0), k._set_worker_placement(0))")
    out = {}
    for value in ("0", "1"):
        env = dict(os.environ, FASTRNN_WORKER_PLACEMENT=value)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        out[value] = run.stdout.split()
    assert out == {"0": ["0", "0"], "1": ["1", "1"]}
