"""The default thread count follows the CPUs a call may use: the calling thread's CPU
affinity (re-read, so a thread pinned after import stops running two threads on one CPU)
and a cgroup CPU quota (a container's --cpus, a Kubernetes CPU limit)."""
import os
import subprocess
import sys
import textwrap

import pytest

from fastrnn import _threads


def _tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


V2_MOUNT = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = ("40 25 0:33 {root} /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup "
            "rw,cpu,cpuacct\n"
            "41 25 0:34 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n")


def test_cgroup_v2_quota_rounds_up(tmp_path):
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/\n", "proc/self/mountinfo": V2_MOUNT,
                            "sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert _threads._cgroup_cpus(root) == 2
    (tmp_path / "sys/fs/cgroup/cpu.max").write_text("50000 100000\n")
    assert _threads._cgroup_cpus(root) == 1
    (tmp_path / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    assert _threads._cgroup_cpus(root) is None


def test_cgroup_v2_takes_the_smallest_quota_of_the_ancestors(tmp_path):
    # (Kubernetes: the pod's cgroup holds a limit, the container's another)
    root = _tree(tmp_path, {
        "proc/self/cgroup": "0::/kubepods/pod1/ctr\n", "proc/self/mountinfo": V2_MOUNT,
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n",
        "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n"})
    assert _threads._cgroup_cpus(root) == 3
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max").write_text("200000 100000")
    assert _threads._cgroup_cpus(root) == 2


def test_cgroup_v1_cpu_controller_and_mount_root(tmp_path):
    # a container without a cgroup namespace: the mount's root is the container's path
    root = _tree(tmp_path, {
        "proc/self/cgroup": "5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        "proc/self/mountinfo": V2_MOUNT + V1_MOUNT.format(root="/docker/abc"),
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu.max": "100000 100000\n"})     # (v2 holds no controller here)
    assert _threads._cgroup_cpus(root) == 3
    (tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert _threads._cgroup_cpus(root) is None


def test_cgroup_v1_nested_path_under_the_mount(tmp_path):
    root = _tree(tmp_path, {
        "proc/self/cgroup": "4:cpu,cpuacct:/batch/job7\n",
        "proc/self/mountinfo": V1_MOUNT.format(root="/"),
        "sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_period_us": "100000\n"})
    assert _threads._cgroup_cpus(root) == 1


def test_cgroup_long_mountinfo_several_mounts_and_escapes(tmp_path):
    # a container's mountinfo runs past 4 KiB (45+ image layers); of two cgroup2 mounts
    # the one whose root holds the cgroup; escaped spaces / backslashes in paths
    layers = "".join(f"{100 + i} 25 0:{200 + i} / /var/lib/layer{i} rw - overlay overlay "
                     f"rw,lowerdir=/var/lib/containerd/snapshots/{i}/fs\n" for i in range(60))
    mounts = (layers + "31 25 0:27 /other /mnt/other rw - cgroup2 cgroup2 rw\n"
              + "30 25 0:26 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n")
    assert len(mounts) > 4096
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/pod/ctr\n",
                            "proc/self/mountinfo": mounts,
                            "sys/fs/cgroup x/pod/cpu.max": "100000 100000\n",
                            "mnt/other/cpu.max": "300000 100000\n"})
    assert _threads._cgroup_cpus(root) == 1
    # a cgroup outside the namespace's root: not a sibling's quota, the mount's own
    (tmp_path / "proc/self/cgroup").write_text("0::/../sib\n")
    for sib in ("sys/fs/cgroup x/sib", "sys/fs/sib"):
        (tmp_path / sib).mkdir()
        (tmp_path / sib / "cpu.max").write_text("100000 100000\n")
    assert _threads._cgroup_cpus(root) is None
    (tmp_path / "sys/fs/cgroup x/cpu.max").write_text("200000 100000\n")
    assert _threads._cgroup_cpus(root) == 2


@pytest.mark.parametrize("files", [
    {},                                                         # no /proc at all
    {"proc/self/cgroup": "0::/\n"},                             # no mountinfo
    {"proc/self/cgroup": "garbage\n", "proc/self/mountinfo": "also garbage -\n"},
    {"proc/self/cgroup": "0::/\n", "proc/self/mountinfo": V2_MOUNT,
     "sys/fs/cgroup/cpu.max": "lots 0\n"},
    {"proc/self/cgroup": "0::/\n", "proc/self/mountinfo": V2_MOUNT,
     "sys/fs/cgroup/cpu.max": "100000 0\n"},
])
def test_cgroup_without_a_readable_quota_is_no_limit(tmp_path, files):
    assert _threads._cgroup_cpus(_tree(tmp_path, files)) is None


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs 2 CPUs to pin to 1")

# (the child's first lines may call it: the quota files read from a tree that has none,
# so the machine's own cgroup limit does not enter the counts checked)
_CHILD_HELPERS = """
def no_quota(root="/nonexistent"):
    from fastrnn import _threads
    _threads._CGROUP_ROOT = root
    _threads._cgroup_files = None
    _threads._quota = (0.0, None)
    _threads._read_cpus()
"""


def _run(code, **env_extra):
    """Run ``code`` in a child Python (the OpenMP variables unset but those given) ->
    its printed words."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES",
                        "GOMP_CPU_AFFINITY", "OMP_THREAD_LIMIT")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD_HELPERS + textwrap.dedent(code)],
                         env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_quota_caps_the_default_count(tmp_path):
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/\n", "proc/self/mountinfo": V2_MOUNT,
                            "sys/fs/cgroup/cpu.max": "100000 100000\n"})
    got = _run(f"""
        import os, numpy as np, fastrnn
        no_quota({root!r})
        x = np.random.default_rng(0).standard_normal((20, 1, 64)).astype(np.float32)
        layer = fastrnn.GRU(64, 64)
        y1 = layer(x, num_threads=1)[0]
        print(len(os.sched_getaffinity(0)), fastrnn.get_num_threads(),
              int(np.array_equal(layer(x)[0], y1)))
        """)
    assert got[1:] == ["1", "1"], got
    assert int(got[0]) >= 1


@needs_two_cpus
def test_thread_pinned_after_import_gets_one_thread():
    # pinned after import and after a call on several threads (a worker process pinned
    # by its server's hook): the next calls use one thread, and all of them again once
    # the pin is lifted; the results stay those of one thread (a batch of one gives the
    # same bits on any count)
    got = _run("""
        import os, time, numpy as np, fastrnn
        from fastrnn import _threads
        no_quota()
        cpus = sorted(os.sched_getaffinity(0))
        x = np.random.default_rng(0).standard_normal((30, 1, 64)).astype(np.float32)
        layer = fastrnn.LSTM(64, 64)
        ref = layer(x, num_threads=1)[0]
        _threads._read_cpus()
        before = fastrnn.get_num_threads()
        layer(x)
        os.sched_setaffinity(0, {cpus[-1]})
        time.sleep(_threads.CPUS_RECHECK_S * 1.5)
        pinned = fastrnn.get_num_threads()
        same = np.array_equal(layer(x)[0], ref)
        os.sched_setaffinity(0, set(cpus))
        time.sleep(_threads.CPUS_RECHECK_S * 1.5)
        print(len(cpus), before, pinned, fastrnn.get_num_threads(), int(same))
        """)
    n = got[0]
    assert got[1:] == [n, "1", n, "1"], got


@pytest.fixture
def capped(monkeypatch):
    """The cap in use (conftest lifts it for the other tests), re-read now."""
    monkeypatch.setattr(_threads, "CAP_AT_CPUS", True)
    _threads._read_cpus()
    yield _threads.cpu_cap()
    monkeypatch.setattr(_threads, "CAP_AT_CPUS", False)
    _threads._read_cpus()


def test_every_count_is_capped_at_the_calling_threads_cpus(capped, monkeypatch):
    # more threads than CPUs hand each step over by spinning on a shared CPU (GRU B=1
    # T=100 H=256: 10-20 ms instead of 0.36 on two): an explicit count, the layer's,
    # set_num_threads and OMP_NUM_THREADS are capped, as OMP_THREAD_LIMIT caps them
    import numpy as np
    import fastrnn
    n = capped
    assert _threads.resolve(n + 2) == n
    assert _threads.resolve(None, n + 1) == n
    assert _threads.resolve(1) == 1
    monkeypatch.setattr(_threads, "_default", n + 3)
    assert fastrnn.get_num_threads() == n
    monkeypatch.setattr(_threads, "_default", None)
    monkeypatch.setattr(_threads, "_env", (n + 5,))
    assert fastrnn.get_num_threads() == n
    # a streaming step's plan is made for the capped count, and kept for the count asked
    layer = fastrnn.GRU(256, 256, num_threads=n + 2)
    s = fastrnn.Stream(layer)
    s.step(np.ones((1, 256), np.float32))
    assert list(layer._step_plans[1]) == [min(n, _threads._limit or n)]
    entry = layer._step_entry
    s.step(np.ones((1, 256), np.float32))
    assert layer._step_entry is entry       # (not made again each step)


def test_omp_num_threads_above_the_cpus_is_capped():
    got = _run("""
        import os, fastrnn
        print(len(os.sched_getaffinity(0)), fastrnn.get_num_threads())
        """, OMP_NUM_THREADS="64")
    assert got[1] == got[0], got


@needs_two_cpus
def test_each_thread_has_its_own_count_and_a_stream_follows_a_pin():
    # the count is the calling thread's: a pinned thread and a free one interleaved get
    # 1 and all CPUs; a stream asked for 2 threads runs its steps on 1 once its thread
    # is pinned (its kept plan was made for 2)
    got = _run("""
        import os, threading, time, numpy as np, fastrnn
        from fastrnn import _threads
        no_quota()
        cpus = sorted(os.sched_getaffinity(0))
        out = {}
        def pinned():
            os.sched_setaffinity(0, {cpus[0]})
            out["pinned"] = [fastrnn.get_num_threads(), _threads.resolve(2)]
        def free():
            out["free"] = [fastrnn.get_num_threads(), _threads.resolve(2)]
        for f in (pinned, free, pinned, free):
            t = threading.Thread(target=f); t.start(); t.join()
        layer = fastrnn.GRU(256, 256, num_threads=2)
        s = fastrnn.Stream(layer)
        x = np.ones((1, 256), np.float32)
        s.step(x)
        before = sorted(layer._step_plans[1])
        os.sched_setaffinity(0, {cpus[-1]})
        time.sleep(_threads.CPUS_RECHECK_S * 1.5)
        s.step(x)
        print(len(cpus), *out["pinned"], *out["free"], *before, layer._step_entry[1])
        """)
    n = got[0]
    assert got[1:] == ["1", "1", n, "2", "2", "1"], got


@pytest.mark.parametrize("env, want", [
    ({"OMP_PROC_BIND": "false", "OMP_PLACES": "cores"}, "1"),  # (no binding: the pin)
    ({"GOMP_CPU_AFFINITY": "0"}, "1"),                         # (one place: one CPU)
    ({"OMP_PROC_BIND": "true"}, "n"),                          # (the places, not the pin
])                                                             # libgomp gave the main thread)
def test_openmp_binding_counts_the_places(env, want):
    got = _run("""
        import os, time, numpy as np, fastrnn
        from fastrnn import _threads
        no_quota()
        n = len(os.sched_getaffinity(0))
        if os.environ.get("OMP_PROC_BIND") == "false":
            os.sched_setaffinity(0, {0})
            time.sleep(_threads.CPUS_RECHECK_S * 1.5)
            assert fastrnn.get_num_threads() == 1       # (before the kernels load)
        fastrnn.GRU(4, 4)(np.zeros((2, 1, 4), np.float32))      # (loads the kernels)
        time.sleep(_threads.CPUS_RECHECK_S * 1.5)
        print(n, fastrnn.get_num_threads())
        """, **env)
    if int(got[0]) < 2:
        pytest.skip("needs 2 CPUs")
    assert got[1] == (got[0] if want == "n" else want), got


@needs_two_cpus
def test_a_pin_is_seen_at_once_after_a_pause_and_in_a_forked_child():
    # the count is read again at the first call after a pause and in a forked child (a
    # post-fork hook or a pool initializer pins, then the first call comes): not up to
    # CPUS_RECHECK_S later
    got = _run("""
        import os, time, numpy as np, fastrnn
        from fastrnn import _threads
        no_quota()
        cpus = sorted(os.sched_getaffinity(0))
        before = fastrnn.get_num_threads()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                            # (threads never ran: no fork rule)
            os.sched_setaffinity(0, {cpus[0]})
            os.write(w, str(fastrnn.get_num_threads()).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(r, 16).decode()
        layer = fastrnn.GRU(8, 8)
        x = np.zeros((3, 1, 8), np.float32)
        layer(x)
        os.sched_setaffinity(0, {cpus[0]})
        time.sleep(_threads.IDLE_SINGLE_S * 2)     # (a pause, shorter than the interval)
        layer(x)
        print(len(cpus), before, child, fastrnn.get_num_threads())
        """)
    n = got[0]
    assert got[1:] == [n, "1", "1"], got
