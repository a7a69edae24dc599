"""Long fuzz run of every loader: >= 10000 cases per format (see tests/test_fuzz.py).

    PYTHONPATH=. python bench/fuzz_long.py [--n 10000] [--formats torch safetensors ...]
        [--out /tmp/fastrnn-fuzz] [--case-timeout 3]

Each format runs in child processes under RLIMIT_AS = 2 GiB with a per-case watchdog.
Prints per format: cases, files that loaded, files rejected with LoadError, and findings
grouped by kind and location (the offending inputs are kept in --out for reproduction).
Exit status 1 when anything was found.
"""
import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import test_fuzz as H  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", nargs="+", default=H.FORMATS, choices=H.FORMATS)
    ap.add_argument("--out", default="/tmp/fastrnn-fuzz")
    ap.add_argument("--case-timeout", type=float, default=3.0)
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    H.CASE_TIMEOUT = args.case_timeout
    summary = {}
    any_found = False
    for fmt in args.formats:
        t0 = time.time()
        st = H.run_fuzz(fmt, args.n, args.seed, os.path.join(args.out, fmt), total_timeout=6 * 3600)
        dt = time.time() - t0
        groups = collections.Counter((f["kind"], f["where"][-100:], f["msg"][:100]) for f in st["findings"])
        summary[fmt] = {"cases": args.n, "loaded": st["loaded"], "rejected": st["rejected"],
                        "import_error": st["import"], "findings": len(st["findings"]),
                        "seconds": round(dt, 1),
                        "groups": [[n, *k] for k, n in groups.most_common()]}
        any_found |= bool(st["findings"])
        print(f"{fmt:<12} {args.n} cases in {dt:.0f} s: loaded {st['loaded']}, rejected (LoadError) "
              f"{st['rejected']}, ImportError {st['import']}, findings {len(st['findings'])}", flush=True)
        for (kind, where, msg), n in groups.most_common(20):
            print(f"    {n:5d} x {kind}: {msg} [{where}]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if any_found else 0


if __name__ == "__main__":
    sys.exit(main())
