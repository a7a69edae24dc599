"""Loading a checkpoint: ``fastrnn.load`` of a safetensors file written by fastrnn, of a
PyTorch ``state_dict`` .pt file and of PyTorch's ONNX export, for a stacked bidirectional
LSTM.

    PYTHONPATH=. python bench/load_time.py [--hidden 1024] [--layers 2] [--runs 5]

Writes the files (the .pt and .onnx ones only where torch is installed) to a temporary directory
and prints, per file, its size, the fastest of ``--runs`` loads in this process (the
file in the page cache after the first) and what one more load holds once done (Python
allocations, ``tracemalloc``: the model's arrays and anything kept with them) and at
most while it ran (peak).  Only
fastrnn; no timing thresholds.  ``--files F ...``: those files instead.  ``--calls``:
also what the model holds after calls at batch 1, 16 and 64 (T=10; the kernels'
packings of the weights, made on first use; layers only).  ``--rss``: also the resident
memory a load in a fresh process adds at its peak (the process's ``VmHWM`` after the
load minus before it; it has imported fastrnn and loaded a small model first; Linux).
"""
import argparse
import gc
import os
import tempfile
import time
import tracemalloc
import warnings

import fastrnn
from fastrnn.io import safetensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", action="store_true",
                    help="also report what the model holds after calls at B = 1, 16, 64")
    ap.add_argument("--rss", action="store_true",
                    help="also the resident memory peak of a load in a fresh process")
    ap.add_argument("--files", nargs="+", default=None,
                    help="measure these model files instead (e.g. a Keras .keras / .h5)")
    a = ap.parse_args(argv)
    H, L = a.hidden, a.layers
    if a.files:
        for f in a.files:
            _measure(f, a.runs, os.path.basename(f), a.calls, a.rss)
        return
    with tempfile.TemporaryDirectory() as d:
        files = [os.path.join(d, "lstm.safetensors")]
        safetensors.save(fastrnn.LSTM(H, H, num_layers=L, bidirectional=True, seed=0),
                         files[0])
        try:
            import torch
            torch.manual_seed(0)
            files.append(os.path.join(d, "lstm.pt"))
            mod = torch.nn.LSTM(H, H, num_layers=L, bidirectional=True)
            torch.save(mod.state_dict(), files[1])
            files.append(os.path.join(d, "lstm.onnx"))
            with warnings.catch_warnings():     # (the exporter's notes on batch sizes)
                warnings.simplefilter("ignore")
                torch.onnx.export(mod, (torch.zeros(3, 1, H),), files[2], dynamo=False,
                                  input_names=["x"])
        except ImportError:
            pass
        for f in files:
            _measure(f, a.runs, f"LSTM({H}, {H}, num_layers={L}, bidirectional=True) "
                                f"{os.path.basename(f)}", a.calls, a.rss)


_RSS = """
import sys
import numpy as np, fastrnn

def hwm():      # (the process's own resident peak: ru_maxrss would carry the parent's)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

fastrnn.load(sys.argv[2])                           # (imports and first-use caches)
before = hwm()
m = fastrnn.load(sys.argv[1])
print((hwm() - before) / 1024)
"""


def _rss_peak(f):
    """MB of resident memory a load of ``f`` adds at its peak, in a fresh process."""
    import subprocess
    import sys
    small = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "fastrnn",
                         "data", "demo_lstm.safetensors")
    out = subprocess.run([sys.executable, "-c", _RSS, f, small], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.split()[-1])


def _measure(f, runs, label, calls=False, rss=False):
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fastrnn.load(f)
        best = min(best, time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    m = fastrnn.load(f)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    after = []
    if calls and hasattr(m, "input_size"):
        import numpy as np
        for B in (1, 16, 64):
            x = np.ones((10, B, m.input_size), m.dtype)
            m(x.transpose(1, 0, 2) if m.batch_first else x)
            gc.collect()
            after.append(f"B={B} {tracemalloc.get_traced_memory()[0] / 1e6:.1f}")
    tracemalloc.stop()
    del m
    print(f"{label} {os.path.getsize(f) / 1e6:.1f} MB: load {best * 1e3:.1f} ms, "
          f"holds {held / 1e6:.1f} MB (peak {peak / 1e6:.1f} MB)"
          + (f"; after a call at {', '.join(after)} MB" if after else "")
          + (f"; resident peak +{_rss_peak(f):.1f} MB" if rss else ""))


if __name__ == "__main__":
    main()
