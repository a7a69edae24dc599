"""Turn a pytest-benchmark JSON from bench/bench_speed.py (or the same layout from
bench/bench_interleaved.py) into a markdown table (+ PNG).

    PYTHONPATH=. python -m pytest bench/bench_speed.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results.json
    python bench/report.py bench/results.json [--stat median|min] [--out bench/speed.md]
        [--png bench/speed.png]
    python bench/report.py run1.json run2.json ... [--stat median] [--out spread.md]

With several JSON files (runs of the same suite, e.g. at different hours or with
``bench_interleaved.py --alone``), one table of each target's ratio in every run, their
median and range, and in how many runs it was met: on a noisy machine one run's ratio
can move by a third.

Ratios are fastrnn / best peer of the same group in the same run (below 1: fastrnn is
faster).  GFLOP/s counts the input and recurrent products; "peak" is numpy's sgemm
2048^3 with the same thread count measured in the same run.
"""
import argparse
import json
import statistics
import sys

# case -> (peer the target is relative to: "best" / "onnxruntime" / "torch", max ratio)
TARGETS = {
    "LSTM B=1 T=100 H=256": ("onnxruntime", 0.5),
    "LSTM B=1 T=100 H=512": ("onnxruntime", 0.6),
    "LSTM B=16 T=100 H=256": ("best", 0.9),
    "LSTM B=64 T=50 H=512": ("best", 0.95),
    "2-layer BiLSTM B=8 T=100 H=256": ("torch", 0.8),
    "GRU B=1 T=100 H=256": ("onnxruntime", 0.55),
    "GRU B=16 T=100 H=256": ("onnxruntime", 0.8),
    "GRU B=64 T=50 H=512": ("onnxruntime", 0.8),
    "SimpleRNN B=1 T=100 H=256": ("best", 0.5),
    "float64 LSTM B=16 T=100 H=256": ("torch", 0.9),
}
STEP_GROUP = "one LSTM step B=1 H=256 (state carried)"


def load(path, stat):
    with open(path) as f:
        data = json.load(f)
    groups = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        groups.setdefault(b["group"], []).append(
            dict(impl=info.get("impl", b["name"]), t=b["stats"][stat], flops=info.get("flops"),
                 threads=info.get("threads"), info=info))
    return data, groups


def case_ratios(rows, ref):
    """For one case's rows {impl: row}: (best peer (name, row) or None, fastrnn / best
    peer, fastrnn / the target's peer ("best" or an implementation))."""
    fr = rows["fastrnn"]
    peers = {k: v for k, v in rows.items() if k != "fastrnn"}
    best = min(peers.items(), key=lambda kv: kv[1]["t"]) if peers else None
    refrow = best[1] if ref == "best" and best else peers.get(ref)
    return (best, fr["t"] / best[1]["t"] if best else float("nan"),
            fr["t"] / refrow["t"] if refrow else float("nan"))


def spread(paths, stat):
    """The several-runs table (module docstring)."""
    runs = [load(p, stat)[1] for p in paths]
    lines = [f"Target ratios in {len(runs)} runs ({stat} of each benchmark): "
             + ", ".join(f"`{p}`" for p in paths) + ".", "",
             "| case | target | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
             + " | median | range | met in |",
             "|---|---|" + "---|" * len(runs) + "---|---|---|"]
    for case, (ref, lim) in TARGETS.items():
        rs = []
        for groups in runs:
            rows = {r["impl"]: r for r in groups.get(case, [])}
            rs.append(case_ratios(rows, ref)[2] if "fastrnn" in rows else float("nan"))
        ok = [r for r in rs if r == r]
        if not ok:
            continue
        med = statistics.median(ok)
        who = "best peer" if ref == "best" else ref
        lines.append(f"| {case} | <= {lim}x {who} | " + " | ".join(
            f"{r:.2f}" if r == r else "-" for r in rs)
            + f" | {med:.2f} | {min(ok):.2f}-{max(ok):.2f} | "
            f"{sum(r <= lim for r in ok)} of {len(ok)} |")
    return "\n".join(lines) + "\n"


def emit(text, out):
    """Print the table, and write it to ``out`` if given."""
    if out:
        with open(out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


def fmt_t(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--stat", default="median", choices=["median", "min", "mean"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    a = ap.parse_args(argv)
    if len(a.json) > 1:
        emit(spread(a.json, a.stat), a.out)
        return
    a.json = a.json[0]
    data, groups = load(a.json, a.stat)
    peak, nt = None, 2
    for g, rows in groups.items():
        if g.startswith("SGEMM"):
            peak = rows[0]["flops"] / rows[0]["t"] / 1e9
            nt = rows[0].get("threads") or nt
    lines = []
    mi = data.get("machine_info", {})
    lines.append(f"Machine: {mi.get('cpu', {}).get('brand_raw', '?')}, "
                 f"{mi.get('cpu', {}).get('count', '?')} CPUs; statistic: {a.stat} of each "
                 f"benchmark; run {data.get('datetime', '?')}.")
    made_by = data.get("command") or (
        "PYTHONPATH=. python -m pytest bench/bench_speed.py --benchmark-only "
        f"--benchmark-group-by=group --benchmark-json={a.json}")
    lines.append(f"Commands: `{made_by}` then `python bench/report.py {a.json} --stat {a.stat}`."
                 + (f" Samples: {data['statistic']}." if data.get("statistic") else ""))
    if peak:
        lines.append(f"SGEMM peak (numpy 2048^3, {nt} thread{'s' * (nt > 1)}, same run): "
                     f"**{peak:.0f} GFLOP/s**.")
    lines.append("")
    lines.append("| case | fastrnn | PyTorch | ONNX Runtime | OpenVINO | best peer | "
                 "ratio vs best | target | met | fastrnn GFLOP/s (% of peak) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    chart = []
    for case, (ref, lim) in TARGETS.items():
        rows = {r["impl"]: r for r in groups.get(case, [])}
        if "fastrnn" not in rows:
            continue
        fr = rows["fastrnn"]
        peers = {k: v for k, v in rows.items() if k != "fastrnn"}
        best, ratio_best, ratio_ref = case_ratios(rows, ref)
        met = "yes" if ratio_ref <= lim else "**no**"
        gf = fr["flops"] / fr["t"] / 1e9
        cell = lambda k: fmt_t(peers[k]["t"]) if k in peers else "-"  # noqa: E731
        tgt = f"<= {lim}x {'best peer' if ref == 'best' else ref} ({ratio_ref:.2f})"
        lines.append(f"| {case} | {fmt_t(fr['t'])} | {cell('torch')} | {cell('onnxruntime')} | "
                     f"{cell('openvino')} | {best[0] if best else '-'} | {ratio_best:.2f} | {tgt} | "
                     f"{met} | {gf:.0f}" + (f" ({100 * gf / peak:.0f}%)" if peak else "") + " |")
        chart.append((case, {k: v["t"] for k, v in rows.items()}))
    step = {r["impl"]: r for r in groups.get(STEP_GROUP, [])}
    if step:
        lines.append("")
        lines.append("One LSTM step from Python, B=1 H=256, state carried (target <= 10 us): " +
                     ", ".join(f"{k} {fmt_t(v['t'])}" for k, v in step.items()) + ".")
    scal = [(g, rows) for g, rows in groups.items() if g.startswith("thread scaling")]
    if scal:
        lines.append("")
        lines.append("| thread scaling | fastrnn 1 thread | fastrnn 2 threads | speed-up | "
                     "PyTorch 1 | PyTorch 2 |")
        lines.append("|---|---|---|---|---|---|")
        for g, rows in scal:
            d = {(r["impl"], r["threads"]): r["t"] for r in rows}
            f1, f2 = d.get(("fastrnn", 1)), d.get(("fastrnn", 2))
            t1, t2 = d.get(("torch", 1)), d.get(("torch", 2))
            lines.append(f"| {g[len('thread scaling '):]} | {fmt_t(f1)} | {fmt_t(f2)} | "
                         f"{f1 / f2:.2f}x | {fmt_t(t1)} | {fmt_t(t2)} |")
    for g, rows in groups.items():
        if g.startswith("memory"):
            info = rows[0]["info"]
            lines.append("")
            lines.append(f"{g}: extra peak RSS {info['extra_peak_bytes'] / 2**20:.1f} MiB "
                         f"(input itself {info['input_bytes'] / 2**20:.0f} MiB, not counted), "
                         f"time {fmt_t(rows[0]['t'])}.")
    emit("\n".join(lines) + "\n", a.out)
    if a.png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no chart", file=sys.stderr)
            return
        impls = ["fastrnn", "torch", "onnxruntime", "openvino"]
        fig, ax = plt.subplots(figsize=(11, 5))
        w = 0.2
        for i, impl in enumerate(impls):
            xs, ys = [], []
            for j, (case, ts) in enumerate(chart):
                if impl in ts:
                    xs.append(j + (i - 1.5) * w)
                    ys.append(ts["fastrnn"] / ts[impl])
            ax.bar(xs, ys, w, label=impl)
        ax.set_xticks(range(len(chart)))
        ax.set_xticklabels([c for c, _ in chart], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speed relative to fastrnn (fastrnn = 1, lower is slower)")
        ax.set_title(f"fastrnn vs peers, {nt} thread{'s' * (nt > 1)} ({a.stat}); "
                     "higher = faster")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
        print(f"chart: {a.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
