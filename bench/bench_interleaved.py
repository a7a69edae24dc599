"""The cases of bench_speed.py, with fastrnn and the peers interleaved round by round.

    PYTHONPATH=. python bench/bench_interleaved.py --json bench/results_interleaved.json
    python bench/report.py bench/results_interleaved.json --out bench/speed_interleaved.md

(``FASTRNN_BENCH_THREADS=1`` in the environment: every implementation on one thread.)

pytest-benchmark (bench_speed.py) times all rounds of one implementation, then all of the
next; on a shared VM whose speed drifts from minute to minute (steal time, neighbours on
the memory system) a slow phase then lands on one implementation only, and a ratio from
one run can move by a third.  Here every round visits every case and, inside a case, every
implementation (the order rotates from round to round), so a slow phase hits them all:
the ratios of medians are far steadier.  Per visit: a pause (``--gap``, so thread pools
that spin after a call, ONNX Runtime's, PyTorch's OpenMP, OpenBLAS's, have gone to sleep
and do not steal the cores from the next implementation), one warm-up call (the weights
back in cache after the other implementations evicted them), then ``--calls`` timed
calls, whose median is the visit's sample.  The JSON has pytest-benchmark's layout (per
case and implementation: median and min over the samples), so report.py reads it.
Same models, inputs and thread counts as bench_speed.py; no timing thresholds.

``--alone``: instead, every implementation of every case runs in a process of its own,
back to back (``--rounds`` rounds of ``--calls`` calls after a warm-up of at least three
calls and half a second, no pause), so no other implementation's threads or weights are
around: what a user running only one of them sees.  Same JSON layout; compare its
ratios with the interleaved ones.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleave import visit  # noqa: E402
from bench_speed import (CASES, NT, fastrnn, flops, models, ort, ort_session, ov,  # noqa: E402
                         ov_request, torch)


def _runners(case):
    """impl -> zero-argument callable for one case (peers that cannot run it omitted)."""
    name, cell, L, bi, B, T, H, dtype = case
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(dtype)
    tm, fm = models(cell, L, bi, H, dtype)
    xt = torch.from_numpy(x)

    def run_torch():
        with torch.inference_mode():
            return tm(xt)
    out = {"fastrnn": lambda: fm(x), "torch": run_torch}
    if ort is not None:
        try:
            sess = ort_session(tm, x)
            out["onnxruntime"] = lambda: sess.run(None, {"x": x})
        except Exception:  # ORT's CPU LSTM/GRU kernels are float32 only
            pass
    if ov is not None and dtype == "float32":
        req = ov_request(tm, x)
        out["openvino"] = lambda: req.infer({0: x})
    return out


def _sgemm():
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    b = a.copy()

    def run():
        with threadpool_limits(NT):
            return np.matmul(a, b)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.15,
                    help="seconds of pause before each visit (ONNX Runtime's threads spin "
                         "for ~50-60 ms after a call, PyTorch's ~10-20 ms, by CPU time)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cases", default=None, help="substring filter on case names")
    ap.add_argument("--alone", action="store_true",
                    help="each implementation of each case in a process of its own")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(NT)
    torch.set_num_threads(NT)
    cases = [c for c in CASES if a.cases is None or a.cases in c[0]]
    fl = {c[0]: flops(c[1], c[2], c[3], c[4], c[5], c[6]) for c in cases}
    fl["SGEMM peak (numpy 2048^3)"] = 2 * 2048 ** 3
    if a.child:
        return _child(a, *a.child)
    if a.alone:
        samples, mins = _alone(a, cases)
    else:
        samples, mins = _interleaved(a, cases)
    _write(a, argv, samples, mins, fl)


def _case_runner(group, impl):
    if group.startswith("SGEMM"):
        return _sgemm()
    return _runners(next(c for c in CASES if c[0] == group))[impl]


def _child(a, group, impl):
    """--alone's process for one implementation of one case: prints its samples."""
    fn = _case_runner(group, impl)
    t0 = time.perf_counter()          # warm-up: 3 calls and at least half a second
    for k in range(10 ** 6):
        fn()
        if k >= 2 and time.perf_counter() - t0 > 0.5:
            break
    meds, mn = [], float("inf")
    for _ in range(a.rounds):
        med, m = visit(fn, a.calls, 0.0, warmup=False)
        meds.append(med)
        mn = min(mn, m)
    print(json.dumps(dict(meds=meds, min=mn)))


def _alone(a, cases):
    import subprocess
    groups = [(c[0], impl) for c in cases for impl in _impls(c)]
    groups.append(("SGEMM peak (numpy 2048^3)", "numpy"))
    samples, mins = {}, {}
    for g, impl in groups:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", g, impl,
               "--rounds", str(a.rounds), "--calls", str(a.calls)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        samples[(g, impl)], mins[(g, impl)] = res["meds"], res["min"]
        print(f"{g} [{impl}] done", file=sys.stderr)
    return samples, mins


def _impls(case):
    """The implementations _runners gives for a case (without building them all)."""
    dtype = case[7]
    out = ["fastrnn", "torch"]
    if ort is not None and dtype == "float32":
        out.append("onnxruntime")
    if ov is not None and dtype == "float32":
        out.append("openvino")
    return out


def _interleaved(a, cases):
    runners = {c[0]: _runners(c) for c in cases}
    runners["SGEMM peak (numpy 2048^3)"] = {"numpy": _sgemm()}
    samples = {(g, i): [] for g, rs in runners.items() for i in rs}
    mins = dict.fromkeys(samples, float("inf"))
    for r in range(a.rounds):
        for g, rs in runners.items():
            impls = list(rs)
            impls = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in impls:
                med, mn = visit(rs[impl], a.calls, a.gap)
                samples[(g, impl)].append(med)
                mins[(g, impl)] = min(mins[(g, impl)], mn)
        print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    return samples, mins


def _write(a, argv, samples, mins, fl):
    benches = []
    for (g, impl), v in samples.items():
        benches.append(dict(group=g, name=f"{g} [{impl}]",
                            stats=dict(median=float(np.median(v)), min=mins[(g, impl)],
                                       mean=float(np.mean(v)), rounds=len(v)),
                            extra_info=dict(case=g, impl=impl, flops=fl[g], threads=NT)))
    cmd = ("" if NT == 2 else f"FASTRNN_BENCH_THREADS={NT} ") + \
        "PYTHONPATH=. python bench/bench_interleaved.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    data = dict(benchmarks=benches, datetime=datetime.datetime.now(
        datetime.timezone.utc).isoformat(), command=cmd,
        machine_info=dict(cpu=dict(brand_raw=platform.processor() or _cpu_name(),
                                   count=os.cpu_count())),
        statistic=(f"each implementation alone in its own process: per round the median "
                   f"of {a.calls} calls; median over {a.rounds} rounds" if a.alone else
                   f"per visit the median of {a.calls} calls; median over {a.rounds} "
                   f"interleaved rounds"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1)
    for b in benches:
        print(f"{b['name']:<55} median {b['stats']['median'] * 1e3:9.3f} ms  "
              f"min {b['stats']['min'] * 1e3:9.3f} ms")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    main()
