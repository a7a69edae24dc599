"""Calls in a process whose CPUs are limited after ``import fastrnn``: a calling thread
pinned to one CPU, (as root, where a cgroup can be made) a cgroup CPU quota, and a
``num_threads`` above the CPUs.

    PYTHONPATH=. python bench/cpu_limits.py [--calls 100] [--rounds 3]
    sudo PYTHONPATH=. python bench/cpu_limits.py --quota 1      (adds the quota case)

Each case runs in a child process: fastrnn imported and called on every CPU first, then
the limit applied, then ``--calls`` calls timed back to back per case (median, 95th percentile, maximum,
mean in ms), with the default thread count as fastrnn reads it now ("default": the calling
thread's affinity and the cgroup quota, re-read at most every
``_threads.CPUS_RECHECK_S`` seconds) and as it was read before (``CPUS_RECHECK_S``
infinite, no quota: "read at import"), and on one thread.  Cases: GRU B=1 T=100 H=256
and LSTM B=16 T=100 H=256.  Pinning: to each CPU in turn (the worker thread keeps the
CPU it was placed on, so one of them is the CPU the worker shares).  Quota: a cgroup of
``--quota`` CPUs (v2 under /sys/fs/cgroup, else v1's cpu controller), removed after.
Above the CPUs: ``num_threads`` = CPUs + 1 and + 2, capped (as now) and not
(``_threads.CAP_AT_CPUS`` False, as before).  No timing thresholds.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
mode, pin, calls, cg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ask = int(sys.argv[5]) if len(sys.argv) > 5 else 0    # (an explicit num_threads)
if cg:                               # (a container: the process starts in its cgroup)
    with open(cg, "w") as f:
        f.write(str(os.getpid()))
import numpy as np
import fastrnn
from fastrnn import _threads
if mode == "import":                 # as before: the affinity read at import, no quota
    _threads.CPUS_RECHECK_S = float("inf")
    _threads._forget_cpus = lambda: None
    _threads._quota = (float("inf"), None)
    _threads._read_cpus()
if mode == "uncapped":               # as before: an explicit count above the CPUs kept
    _threads.CAP_AT_CPUS = False
    _threads._read_cpus()
cases = {"GRU B=1": (fastrnn.GRU(256, 256), (100, 1, 256)),
         "LSTM B=16": (fastrnn.LSTM(256, 256), (100, 16, 256))}
xs = {k: np.random.default_rng(0).standard_normal(s).astype(np.float32)
      for k, (_, s) in cases.items()}
for k, (layer, _) in cases.items():
    for _ in range(3):
        layer(xs[k])
if pin >= 0:
    os.sched_setaffinity(0, {pin})
time.sleep(0.3)
nt = 1 if mode == "one" else ask or None
out = {"threads": _threads.resolve(nt)}
for k, (layer, _) in cases.items():
    for _ in range(3):
        layer(xs[k], num_threads=nt)
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        layer(xs[k], num_threads=nt)
        ts.append((time.perf_counter() - t) * 1e3)
    out[k] = ts
print(json.dumps(out))
"""


def _cgroup(quota):
    """A new cgroup limited to ``quota`` CPUs: the file to write a pid to, and its dir."""
    period = 100000
    base = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(base, "cgroup.controllers")):        # v2
        d = tempfile.mkdtemp(prefix="fastrnn-bench-", dir=base)
        with open(os.path.join(d, "cpu.max"), "w") as f:
            f.write(f"{int(quota * period)} {period}")
    else:                                                               # v1
        d = tempfile.mkdtemp(prefix="fastrnn-bench-", dir=os.path.join(base, "cpu"))
        with open(os.path.join(d, "cpu.cfs_period_us"), "w") as f:
            f.write(str(period))
        with open(os.path.join(d, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(quota * period)))
    return os.path.join(d, "cgroup.procs"), d


def _child(mode, pin, calls, cg="", ask=0):
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(pin), str(calls), cg,
                          str(ask)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _row(label, mode, res):
    import numpy as np
    cells = []
    for k in ("GRU B=1", "LSTM B=16"):
        t = np.array(res[k])
        cells.append(f"{np.median(t):.2f} / {np.percentile(t, 95):.2f} / {t.max():.2f} / "
                     f"{t.mean():.2f}")
    print(f"| {label} | {mode} | {res['threads']} | " + " | ".join(cells) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quota", type=float, default=0.0,
                    help="also run under a cgroup of this many CPUs (root)")
    a = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    print("| limit | thread count | threads | GRU B=1 ms (median / p95 / max / mean) | "
          "LSTM B=16 ms (median / p95 / max / mean) |")
    print("|---|---|---|---|---|")
    for r in range(a.rounds):
        for pin in cpus:
            for mode, label in (("import", "read at import"), ("default", "default"),
                                ("one", "1 thread")):
                _row(f"pinned to CPU {pin}", label, _child(mode, pin, a.calls))
        if a.quota:
            for mode, label in (("import", "read at import"), ("default", "default"),
                                ("one", "1 thread")):
                procs, d = _cgroup(a.quota)
                try:
                    _row(f"quota {a.quota:g} CPU", label, _child(mode, -1, a.calls, procs))
                finally:
                    os.rmdir(d)
        for ask in (len(cpus) + 1, len(cpus) + 2):
            for mode, label in (("uncapped", "not capped"), ("default", "capped")):
                _row(f"num_threads={ask}", label, _child(mode, -1, a.calls, ask=ask))


if __name__ == "__main__":
    main()
