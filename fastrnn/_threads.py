"""Thread-count control shared by every kernel.

Resolution order for a call: the ``num_threads`` argument of the call, then the layer's
``num_threads``, then :func:`set_num_threads`, then ``OMP_NUM_THREADS``, then the CPUs
the calling thread may run on (its affinity, capped by a cgroup CPU quota; re-read at
most every :data:`CPUS_RECHECK_S` seconds); whichever it is, the CPUs the calling thread
may run on and ``OMP_THREAD_LIMIT`` cap it (the OpenMP runtime gives a region no more
threads than that).  The same count is given to OpenMP
regions and to scipy's OpenBLAS (per calling thread, through
``openblas_set_num_threads_local``), so the two never oversubscribe the cores.
"""
from __future__ import annotations

import ctypes
import glob
import operator
import os
import sys
import threading
import time

_lock = threading.Lock()
_MAX_THREADS = 1 << 16      # (the kernels take a C int; OpenMP teams are far smaller)
_default: int | None = None
_blas_hooked = False


# The CPUs a call may use: the calling thread's CPU affinity, capped by a cgroup CPU
# quota (a container's --cpus, a Kubernetes CPU limit: the affinity still lists every
# CPU of the machine there, and threads beyond the quota get the group throttled).  Read
# per thread, at its first call and again at most every CPUS_RECHECK_S seconds, so a
# thread pinned after import (a server's post-fork hook, a pool initializer,
# os.sched_setaffinity) stops running two threads on one CPU: their per-step spin
# hand-over made a 2-thread GRU B=1 T=100 H=256 call take 10-16 ms there instead of
# 0.6 ms on one thread.  Where the OpenMP runtime binds its threads to places
# (OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY), the CPUs of its place list instead
# (libgomp pins the main thread to one place when it loads: its affinity says 1), or,
# before the kernels load it, the affinity read at import.
#
# Every count, an explicit one too, is capped at those CPUs (not at the quota, under
# which threads still run side by side until the group is throttled): threads beyond
# the CPUs hand each step over by spinning on a shared CPU, and on this 2-CPU machine
# num_threads=3 / 4 made a GRU B=1 T=100 H=256 call 10 / 20 ms instead of 0.36 ms on
# two.  CAP_AT_CPUS False: no cap (tests that run more threads than this machine has,
# to check how the work splits).
CPUS_RECHECK_S = 0.1
QUOTA_RECHECK_S = 1.0       # (the quota files, ~20 us a read: at most this often)
CAP_AT_CPUS = True
_monotonic = time.monotonic
_tl = threading.local()     # .c: (valid until, CPUs, cap of every count, CPUs unquota'd)
_affinity_at_import: int | None = None
_binds = False              # (_omp_binds() at import: the environment libgomp reads)
_bound: int | None = None   # (the place list's CPUs once the kernels are loaded; 0: none)
_CGROUP_ROOT = ""           # (a prefix of the /proc and /sys paths read: tests)
_cgroup_files = None        # (the quota files, found once: a list of (kind, dir))
_quota = (0.0, None)        # (valid until, the quota's CPUs or None)


def _omp_binds() -> bool:
    """Whether the OpenMP runtime will bind threads to CPUs (its environment, as libgomp
    reads it: OMP_PROC_BIND false turns binding off whatever the places say)."""
    env = os.environ
    bind = env.get("OMP_PROC_BIND", "").strip().lower()
    if bind.startswith("false"):
        return False
    return bool(bind) or bool(env.get("OMP_PLACES", "").strip()) \
        or bool(env.get("GOMP_CPU_AFFINITY", "").strip())


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(limit)
    except (OSError, ValueError):
        return None


def _unescape(field: str) -> str:
    """A mountinfo field: the kernel writes space, tab, newline and backslash as \\ooo."""
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_dirs(root: str) -> list:
    """The directories whose CPU quota bounds this process: its cgroup's and its
    ancestors' up to the hierarchy's mount, as ``[(kind, dir)]``, kind 1 (cgroup v1's
    ``cpu`` controller: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) or 2 (cgroup v2:
    ``cpu.max``); the v1 controller where a hybrid system mounts both.  Of several mounts
    of the hierarchy, the one whose root holds the cgroup most closely; a cgroup outside
    every mount's root (``/..`` in a cgroup namespace): that mount's own directory."""
    own = _read(root + "/proc/self/cgroup", 1 << 16) or ""
    mounts = _read(root + "/proc/self/mountinfo", 1 << 22) or ""
    paths = {}
    for line in own.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths.setdefault(2, parts[2])
        elif "cpu" in parts[1].split(","):
            paths[1] = parts[2]
    kind = 1 if 1 in paths else 2 if 2 in paths else 0
    if not kind:
        return []
    own_path = paths[kind]
    best = None
    for line in mounts.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        fstype, opts = after[0], after[2].split(",")
        if not ((kind == 2 and fstype == "cgroup2")
                or (kind == 1 and fstype == "cgroup" and "cpu" in opts)):
            continue
        mroot, mpoint = _unescape(fields[3]), _unescape(fields[4])
        base = mroot.rstrip("/")
        if own_path == mroot or own_path.startswith(base + "/"):
            rel, fit = own_path[len(base):], len(base) + 1
        else:                   # (outside the mount's root: the mount's own limit)
            rel, fit = "/", -1
        if "/../" in rel + "/" or "/./" in rel + "/":
            rel, fit = "/", 0 if not base else -1
        if best is None or fit > best[0]:
            best = (fit, rel, mpoint)
    if best is None:
        return []
    _, rel, mpoint = best
    parts = [p for p in rel.split("/") if p]
    top = root + mpoint
    return [(kind, os.path.join(top, *parts[:i])) for i in range(len(parts), -1, -1)]


def _cgroup_cpus(root: str | None = None) -> int | None:
    """CPUs the cgroup CPU quota allows (the smallest quota / period of the process's
    cgroup and its ancestors, rounded up, at least 1), None where there is none."""
    global _cgroup_files
    if root is None:
        root = _CGROUP_ROOT
        if _cgroup_files is None:
            _cgroup_files = _cgroup_dirs(root)
        dirs = _cgroup_files
    else:
        dirs = _cgroup_dirs(root)
    best = None
    for kind, d in dirs:
        if kind == 2:
            v = (_read(os.path.join(d, "cpu.max")) or "").split()
            quota, period = (v + ["", ""])[:2]
        else:
            quota = (_read(os.path.join(d, "cpu.cfs_quota_us")) or "").strip()
            period = (_read(os.path.join(d, "cpu.cfs_period_us")) or "").strip()
        if not (quota.isdigit() and period.isdigit()) or not int(quota) or not int(period):
            continue            # ("max", -1: no quota here; unreadable: none known)
        n = max(1, -(-int(quota) // int(period)))
        best = n if best is None else min(best, n)
    return best


def _read_cpus() -> tuple:
    """Read the calling thread's CPUs now (see above): its ``(valid until, CPUs, cap of
    every count, CPUs without the quota)``, kept for CPUS_RECHECK_S."""
    global _affinity_at_import, _binds, _bound, _quota
    now = _monotonic()
    aff = _affinity()
    if _affinity_at_import is None:
        _affinity_at_import = aff
        _binds = _omp_binds()
    if _bound is None:
        kern = sys.modules.get("fastrnn._kernels")
        bound = getattr(kern, "omp_bound_cpus", None)
        if bound is not None:
            _bound = bound()
    if _bound:
        n = _bound
    elif _bound is None and _binds:
        n = _affinity_at_import
    else:
        n = aff
    if now >= _quota[0]:
        try:
            q = _cgroup_cpus()
        except Exception:       # (an unexpected layout: no quota known)
            q = None
        _quota = (now + QUOTA_RECHECK_S, q)
    q = _quota[1]
    c = _tl.c = (now + CPUS_RECHECK_S, n if q is None or q >= n else q,
                 n if CAP_AT_CPUS else _MAX_THREADS, n)
    return c


def _forget_cpus() -> None:
    """Make the calling thread's next call read its CPUs again (its affinity, ~1 us; the
    quota as its own interval says): at a call after a pause, and in a forked child,
    where a pin applied since (a post-fork hook, a pool's initializer) is likely."""
    _tl.__dict__.pop("c", None)


def _cpus_now() -> tuple:
    """The calling thread's ``(valid until, CPUs, cap, CPUs without the quota)``, re-read
    at most every CPUS_RECHECK_S seconds (a read costs ~1 us, the quota files ~20 us
    once a second: paid otherwise by every call that is not told its thread count)."""
    try:
        c = _tl.c
        if _monotonic() < c[0]:
            return c
    except AttributeError:
        pass
    return _read_cpus()


def cpu_cap() -> int:
    """The CPUs the calling thread may run on (its affinity, or the OpenMP places): what
    every count is capped at, also where the tests lift that cap."""
    return _cpus_now()[3]


# (read now, at import, before the kernels load the OpenMP runtime: with OMP_PROC_BIND
# set, libgomp pins the main thread to one place when it loads, and a count read after
# that saw one CPU, so every call ran on one thread)
_read_cpus()

_env: tuple = ()


def _env_threads() -> int | None:
    """OMP_NUM_THREADS, read once (as OpenMP does; the environment lookup cost ~0.7 us,
    paid otherwise by every call that is not told its thread count)."""
    global _env
    if not _env:
        v = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        _env = (int(v) if v.isdigit() and 0 < int(v) <= _MAX_THREADS else None,)
    return _env[0]


_limit: int | None = None


def _parse_thread_limit(v) -> int:
    """An ``OMP_THREAD_LIMIT`` value read as libgomp reads it (``parse_unsigned_long`` in
    its env.c: C ``strtoul``, base 10, spaces around it; zero, a value that is negative
    as a C long, an overflow or anything else invalid is ignored, with libgomp's
    "Invalid value" message; above INT_MAX no limit) -> the cap (no limit:
    ``_MAX_THREADS``, which no count exceeds)."""
    import re
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)0*([0-9]{1,21})[ \t\n\v\f\r]*\Z", v or "")
    if m is None:                           # (not a number, or over 21 digits: ERANGE)
        return _MAX_THREADS
    value = int(m.group(2))
    if value >= 1 << 64:                    # (strtoul: ERANGE)
        return _MAX_THREADS
    if m.group(1) == "-":
        value = -value % (1 << 64)          # (strtoul negates in unsigned long)
    if value == 0 or value >= 1 << 63:      # ((long) value <= 0)
        return _MAX_THREADS
    return min(value, _MAX_THREADS)         # (above INT_MAX: unlimited)


def _thread_limit() -> int:
    """OMP_THREAD_LIMIT, read once (as OMP_NUM_THREADS), as a cap on every count."""
    global _limit
    if _limit is None:
        _limit = _parse_thread_limit(os.environ.get("OMP_THREAD_LIMIT"))
    return _limit


def set_num_threads(n: int | None) -> None:
    """Set the default number of threads of every fastrnn call (None: back to automatic)."""
    global _default
    if n is not None:
        n = _check_threads(n)
    _default = n


def _wanted_default() -> int:
    """The default thread count before the fork rule (below), capped at
    ``OMP_THREAD_LIMIT`` and at the calling thread's CPUs."""
    c = _cpus_now()
    n = _default if _default is not None else (_env[0] if _env else _env_threads()) or c[1]
    if n > c[2]:
        n = c[2]
    lim = _limit or _thread_limit()         # (OMP_THREAD_LIMIT)
    return n if n <= lim else lim


def get_num_threads() -> int:
    """The number of threads a call uses when it is not told otherwise."""
    return 1 if _fork_single else _wanted_default()


# Fork.  GCC's OpenMP runtime (libgomp, which fastrnn links when built with GCC) cannot start its threads
# again in a child forked after the parent ran a parallel region: the child's first
# region waits forever for workers that fork did not copy (measured: a multiprocessing
# "fork" pool after a 2-thread GRU call hung; a gunicorn --preload worker after a
# warm-up call is the same case).  So a process forked after a fastrnn call that could
# use threads runs every fastrnn call on one thread, and warns once.
_threads_used = False
_fork_single = False
_fork_warned = False


def _after_fork_in_child() -> None:
    global _fork_single, _fork_warned, _quota
    if _threads_used:
        _fork_single = True
        _fork_warned = False
    _forget_cpus()
    _quota = (0.0, None)
    # (the parent's other threads, inside calls at the fork, do not exist here)
    _active[:] = [None] if getattr(_scope, "depth", 0) else []
    _crowd[0] = 0.0
    kern = sys.modules.get("fastrnn._kernels")
    hook = getattr(kern, "_blas_after_fork", None)     # (None: a half-done import)
    if hook is not None:
        hook()


_LAZY = ("fastrnn", "scipy", "numpy")       # (what a first call imports)


def _before_fork() -> None:
    """Let imports that another thread has under way (a first call loads the kernels,
    scipy, the training module) finish before the fork: a child inherits a module's
    import lock held by a thread it does not have, and its next import of that module
    waits forever (a process forked while another thread made its first fastrnn call
    hung).  Waits on each such lock held by another thread, again until a pass finds
    none (that thread may go on to its next import meanwhile); CPython's per-module
    import locks: where they are not found, nothing is done."""
    try:
        from importlib import _bootstrap
        table = _bootstrap._module_locks
    except Exception:
        return
    me = threading.get_ident()
    for _ in range(1000):
        waited = False
        for name, ref in list(table.items()):
            if not name.startswith(_LAZY):
                continue
            lock = ref() if callable(ref) else None
            owner = getattr(lock, "owner", None)
            if lock is None or not owner or owner == me:
                continue
            try:
                lock.acquire()              # (until the importing thread is done)
                lock.release()
                waited = True
            except Exception:
                pass
        if not waited:
            return


# Module-level locks a thread may hold across an import or a first-call set-up: taken
# before a fork and released after it in both processes, so a child never inherits one
# held by a thread it does not have (a process forked while another thread made its
# first call hung on _lock, or on train's hook lock).  All made here, at import, so the
# set is fixed before any fork; taken outer first where two nest (train's hook lock,
# then _lock in hook_blas).
train_hook_lock = threading.Lock()  # (fastrnn.train._hook_lock)
pack_lock = threading.Lock()        # (fastrnn.layers._PACK_LOCK)
_FORK_LOCKS = (train_hook_lock, pack_lock, _lock)


def _fork_prepare() -> None:
    for lock in _FORK_LOCKS:
        lock.acquire()
    _before_fork()          # (last: nothing between it and the fork waits)


def _fork_release() -> None:
    for lock in reversed(_FORK_LOCKS):
        lock.release()


def _fork_child() -> None:
    _fork_release()
    _after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_prepare, after_in_parent=_fork_release,
                        after_in_child=_fork_child)


def _granted(n: int) -> int:
    """The thread count a call gets for a wanted n: capped at ``OMP_THREAD_LIMIT`` and at
    the calling thread's CPUs, 1 in a child forked after threads."""
    if n > 1:
        lim = _limit or _thread_limit()     # (OMP_THREAD_LIMIT: libgomp gives no more)
        if n > lim:
            n = lim
        cap = _cpus_now()[2]
        if n > cap:
            n = cap
    return _fork_rule(n) if n > 1 else n


def step_threads(n):
    """A streaming step's thread count for ``n`` asked (None: the default): capped as
    :func:`resolve` caps it, on every step (a thread pinned after its stream began runs
    on one thread from then on).  Anything but a positive int is returned as it is, for
    the caller to refuse.  (get_num_threads / _granted inline: ~0.1 us a step less.)"""
    if _fork_single:
        return 1
    try:
        c = _tl.c
        if _monotonic() >= c[0]:
            c = _read_cpus()
    except AttributeError:
        c = _read_cpus()
    if n is None:
        n = _default if _default is not None else (_env[0] if _env else _env_threads()) or c[1]
    elif type(n) is not int or n < 2:
        return n
    if n > c[2]:
        n = c[2]
    lim = _limit or _thread_limit()
    return n if n <= lim else lim


def _fork_rule(n: int) -> int:
    """n (> 1), or 1 in a child forked after threads (warned once)."""
    global _threads_used, _fork_warned
    if _fork_single:
        if not _fork_warned:
            _fork_warned = True
            import warnings
            warnings.warn(
                "fastrnn: this process was forked after fastrnn ran on several "
                "threads; the OpenMP runtime cannot start threads again after a fork, "
                "so fastrnn calls here run on one thread (for threads in child "
                "processes, use the 'spawn' or 'forkserver' start method, or make the "
                "first fastrnn call after the fork)", RuntimeWarning, stacklevel=3)
        return 1
    _threads_used = True
    return n




def _check_threads(n) -> int:
    if isinstance(n, bool):
        raise TypeError(f"num_threads must be a positive int, got {n!r}")
    try:
        n = operator.index(n)           # (an int, NumPy's integers; not 2.7 or "2")
    except TypeError:
        raise TypeError(f"num_threads must be a positive int, got {n!r}") from None
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    if n > _MAX_THREADS:
        raise ValueError(f"num_threads must be <= {_MAX_THREADS}, got {n}")
    return n


def resolve(call=None, layer=None) -> int:
    """The thread count of a call: ``call`` (the call's num_threads) unless None, else
    ``layer`` (the layer's) unless None (validated), else the count of an enclosing
    model call on this thread (:class:`threads_for_calls`), else :func:`get_num_threads`."""
    c = call if call is not None else layer if layer is not None else \
        getattr(_scope, "threads", None)
    if c is not None:
        return _granted(_check_threads(c))
    n = _wanted_default()                   # (capped already)
    return _fork_rule(n) if n > 1 else n    # (so the fork rule can warn here too)


def scipy_openblas_paths() -> list:
    """The OpenBLAS libraries of scipy's wheel (``scipy.libs``; none for other builds)."""
    try:
        import scipy
    except ImportError:
        return []
    libdir = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs")
    return sorted(glob.glob(os.path.join(libdir, "*openblas*")))


def blas_thread_functions() -> tuple:
    """Addresses of scipy's ``openblas_set_num_threads_local`` and of the same library's
    ``openblas_get_num_threads`` (0 where not found)."""
    def addr(f):
        return (ctypes.cast(f, ctypes.c_void_p).value or 0) if f is not None else 0
    try:
        for path in scipy_openblas_paths():
            lib = ctypes.CDLL(path)
            setter = getattr(lib, "openblas_set_num_threads_local", None)
            if setter is not None:
                getter = (getattr(lib, "openblas_get_num_threads", None)
                          or getattr(lib, "scipy_openblas_get_num_threads", None))
                return addr(setter), addr(getter)
    except OSError:
        pass
    return 0, 0


def loaded_libraries(paths) -> list:
    """Those of ``paths`` this process has loaded already (``RTLD_NOLOAD``: none is
    loaded by asking; where the platform lacks it, every path counts as loaded)."""
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:
        return list(paths)
    out = []
    for path in paths:
        try:
            ctypes.CDLL(path, mode=noload | getattr(os, "RTLD_LAZY", 1))
            out.append(path)
        except OSError:
            pass
    return out


def end_fresh_blas_workers(paths) -> None:
    """End the worker threads of OpenBLAS libraries (``paths``) this process has just
    loaded, before anything used them.  OpenBLAS (pthreads build) makes its workers when
    it is loaded, and a worker with no work spins on ``sched_yield`` for ~0.1 s before
    it sleeps: on two CPUs, a just-loaded library's worker took turns of a few ms with
    the kernels' OpenMP threads, so in the first ~0.1 s after the kernels' first call one
    batch-1 call in four or five took ~5 ms instead of ~0.8 (LSTM(256) T=100, Zen 4 VM;
    ``bench/cold_start.py --calls``).  ``blas_thread_shutdown_`` (what OpenBLAS runs
    before a fork) joins them; OpenBLAS makes them again at its next threaded call.
    Called with the GIL held (``PyDLL``), so no Python thread starts a BLAS call
    meanwhile."""
    for path in paths:
        try:
            lib = ctypes.PyDLL(path)
        except OSError:
            continue
        fn = getattr(lib, "blas_thread_shutdown_", None)
        if fn is not None:
            fn.restype = ctypes.c_int
            fn()


def hook_blas() -> None:
    """Give the kernels scipy's ``openblas_set_num_threads_local`` (once, lazily)."""
    global _blas_hooked
    if _blas_hooked:
        return
    with _lock:
        if _blas_hooked:
            return
        from . import _kernels
        _kernels._set_blas_local_setter(*blas_thread_functions())
        _blas_hooked = True


# A call that follows more than IDLE_SINGLE_S seconds without a fastrnn call runs a
# batch of one of fewer than IDLE_SINGLE_MACS multiply-adds on one thread where the
# thread count does not change the arithmetic (the packed kernel; layers.py decides).
# An OpenMP worker idle that long has gone to sleep, and waking it (its vCPU) costs
# ~0.2-0.5 ms on the benchmark VM once the worker keeps off its master's CPU (worker
# placement, fr_barrier.h; before that the woken worker shared the master's vCPU and
# the call took ~9 ms).  After a 100 ms pause, 2 threads / 1 thread, Intel Xeon KVM
# guest, B=1 T=100: LSTM H=64 0.70 / 0.45 ms, H=96 0.73 / 0.56, H=128 0.84 / 0.66,
# H=192 1.04 / 1.19, H=256 1.21 / 1.79, H=512 5.9 / 12.4; GRU H=128 0.80 / 0.59, H=192
# 0.80 / 0.89, H=256 1.04 / 1.47: one thread up to ~13M multiply-adds (LSTM H=128),
# two from ~22M (GRU H=192).  IDLE_SINGLE_S negative: never (test / tuning hook).
# On Zen 4 (``_kernels._zen4``) waking the worker costs less: after 150 ms, first call,
# one process per setting, 2 threads / 1 thread: LSTM H=64 (3.3M) 0.35-0.42 / 0.32 ms,
# GRU H=96 (5.5M) 0.36-0.38 / 0.38, LSTM H=96 (7.4M) 0.41-0.43 / 0.46-0.47, GRU H=128
# (9.8M) 0.43-0.45 / 0.52-0.54, LSTM H=128 (13M) 0.52-0.65 / 0.65-0.70, SimpleRNN
# H=256 (13M) 0.52-0.62 / 0.63-0.67, LSTM H=192 (29M) 0.77-0.87 / 1.17: one thread only
# below 4M there (idle_single_macs).  IDLE_SINGLE_MACS None: by the CPU.
IDLE_SINGLE_S = 0.010
IDLE_SINGLE_MACS = None
_last_end = [0.0]
_scope = threading.local()
# Calls from several Python threads at once (a server's thread pool sharing a model) each
# ran their own OpenMP team: on 2 CPUs, a pool of 4 threads calling GRU B=1 T=100 H=256
# back to back made 2,000-2,200 calls a second, against 2,900-3,300 with num_threads=1;
# requests arriving at random at 1,800 a second waited 2.4-4.8 ms on average (p99 16-26
# ms), at 2,400 a second the queue grew (bench/serve_threads.py): the teams' threads
# outnumber the CPUs and wait for each other by spinning.  So a call is "crowded"
# (CALL_SCOPE gives CROWDED) where it starts while another Python thread's call runs,
# or where at least CROWD_SHARE of the recent calls did (a running mean over about
# 1 / CROWD_EMA calls); a batch of one on the packed kernel (the same bits on any count)
# then runs on one thread (layers._make_plan), as after a pause but at any size.
# CROWD_SHARE None: never (test / tuning hook).
CROWD_SHARE = 0.25
CROWD_EMA = 1 / 16
PAUSED, CROWDED = 1, 2          # CALL_SCOPE's answers besides 0
_active = []                    # an entry per Python thread inside a call (append / pop)
_crowd = [0.0]                  # the running share of calls that started in a crowd


def idle_single_macs():
    """The multiply-adds below which a batch of one after a pause runs on one thread
    (:data:`IDLE_SINGLE_MACS`, or by the CPU where that is None)."""
    if IDLE_SINGLE_MACS is not None:
        return IDLE_SINGLE_MACS
    from . import _kernels
    return 1 << 22 if _kernels._zen4() else 1 << 24


class threads_for_calls:
    """``with threads_for_calls(n):`` the layer calls this thread makes inside run on
    ``n`` threads where neither the call nor the layer says (a model's
    ``num_threads``; None: as they are).  Per thread, so concurrent tasks sharing one
    model each keep their own."""
    __slots__ = ("n", "before")

    def __init__(self, n):
        self.n = None if n is None else _check_threads(n)

    def __enter__(self):
        self.before = getattr(_scope, "threads", None)
        if self.n is not None:
            _scope.threads = self.n

    def __exit__(self, *exc):
        _scope.threads = self.before


# The start and end of a call: ``with CALL_SCOPE as idle`` (a layer, or a model with its
# layers), in C (fastrnn/_scope.pyx, so an interrupt cannot split the record from its
# undo).  ``idle``: CROWDED where another Python thread's call runs, else PAUSED where
# the process had no fastrnn call for IDLE_SINGLE_S, else CROWDED where most recent
# calls were crowded (CROWD_SHARE), else 0; nested calls share the outermost call's
# answer, and the outermost one's end is the new time of the last call.  (In C it costs
# what the two Python functions it replaced did, 370-380 ns a call by `python -m
# timeit`; a context manager in Python took 0.58 us.)
from ._scope import CallScope as _CallScope  # noqa: E402

CALL_SCOPE = _CallScope(sys.modules[__name__])


def call_scope():
    """``with call_scope() as idle``: :data:`CALL_SCOPE`."""
    return CALL_SCOPE


