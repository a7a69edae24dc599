"""A/B of two fastrnn build trees on a noisy machine: alternating fresh processes.

    python bench/ab_builds.py TREE_A TREE_B [--cases LSTM:16:100:256,GRU:1:100:256]
                              [--rounds 6] [--reps 20] [--threads 2] [--isa-level L]
                              [--train]

TREE_A and TREE_B are checkouts with the extensions built in place (``git worktree add
/tmp/a HEAD && cd /tmp/a && python setup.py build_ext --inplace``).  Each round runs one
process per tree, A then B; a process times every case ``--reps`` times (after a warm-up
call) and reports the minimum and the median.  The summary gives, per case, the minimum
over all rounds and the median of the per-process medians, and B/A for both.

Why processes that alternate: on a shared VM with steal time the same call moves by a
third from minute to minute, so only A/B measured close together means anything; and one
process cannot hold two builds of the same extension.  No peers run here (their thread
pools spin after a call and slow whatever runs next); bench_speed.py compares with them.
A case is CELL:B:T:H (CELL one of LSTM, GRU, RNN; input size = H; float32; weights of a
torch module with seed 0, so torch 2.13 must be importable), or LSTM:B:T:H:P with
proj_size P.  T=0 times streaming steps
instead: a call is 1000 ``_step_fast`` steps (state carried), so its "ms" reads as us a
step.  With ``--train`` a call is a training step instead of an inference call:
``forward_train`` then ``backward`` with gradients of ones for the outputs and no input
gradient (bench_backward.py's "fastrnn").
"""
import argparse
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import sys, time
import numpy as np
tree, cases, reps, nt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
train = sys.argv[6] == "1"
sys.path.insert(0, tree)
import fastrnn
import torch
assert fastrnn.__file__.startswith(tree), fastrnn.__file__
from fastrnn import _kernels
_kernels._set_isa_level(int(sys.argv[5]))   # -1: the best the CPU has
out = []
for case in cases.split(","):
    cell, B, T, H, *P = case.split(":")
    B, T, H = int(B), int(T), int(H)
    torch.manual_seed(0)
    kw = {"proj_size": int(P[0])} if P else {}
    fm = fastrnn.from_torch(getattr(torch.nn, cell)(H, H, **kw), num_threads=nt)
    x = np.random.default_rng(0).standard_normal((max(T, 1), B, H)).astype(np.float32)
    if T == 0:
        x1 = np.ascontiguousarray(x[0])
        hc = [np.zeros((1, B, int(P[0]) if P else H), np.float32),
              np.zeros((1, B, H), np.float32)]
    ones = np.ones((T, B, int(P[0]) if P else H), np.float32) if train else None

    def call():
        if T == 0:
            for _ in range(1000):
                fm._step_fast(x1, hc[0], hc[1] if cell == "LSTM" else None)
            return None
        if train:
            cache = fm.forward_train(x)[2]
            return fm.backward(cache, ones, need_input_grad=False)
        return fm(x)
    call()
    v = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        v.append(time.perf_counter() - t0)
    out.append(f"{min(v) * 1e3:.4f} {np.median(v) * 1e3:.4f}")
print("|".join(out))
"""


def _run(tree, cases, reps, nt, level, train=False):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(tree), cases,
                        str(reps), str(nt), str(level), "1" if train else "0"],
                       capture_output=True, text=True,
                       env=env, check=True)
    line = r.stdout.strip().splitlines()[-1]
    return [[float(v) for v in c.split()] for c in line.split("|")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("--cases", default="LSTM:1:100:256,LSTM:16:100:256,GRU:1:100:256")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa-level", type=int, default=-1,
                    help="cap the kernels' ISA level (0 baseline, 1 AVX2, 2 AVX-512)")
    ap.add_argument("--train", action="store_true",
                    help="time forward_train + backward instead of inference")
    a = ap.parse_args(argv)
    res = {"A": [], "B": []}
    for i in range(a.rounds):
        for key, tree in (("A", a.tree_a), ("B", a.tree_b)):
            res[key].append(_run(tree, a.cases, a.reps, a.threads, a.isa_level, a.train))
        print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)
    A, B = np.array(res["A"]), np.array(res["B"])   # (rounds, cases, [min, median])
    print(f"{'case':<22} {'A min':>9} {'A med':>9} {'B min':>9} {'B med':>9} "
          f"{'B/A min':>8} {'B/A med':>8}   (ms, {a.threads} threads, ISA level "
          f"{a.isa_level}{', training step' if a.train else ''})")
    for j, case in enumerate(a.cases.split(",")):
        amin, bmin = A[:, j, 0].min(), B[:, j, 0].min()
        amed, bmed = np.median(A[:, j, 1]), np.median(B[:, j, 1])
        print(f"{case:<22} {amin:9.3f} {amed:9.3f} {bmin:9.3f} {bmed:9.3f} "
              f"{bmin / amin:8.3f} {bmed / amed:8.3f}")


if __name__ == "__main__":
    main()
