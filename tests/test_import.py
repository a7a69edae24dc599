"""`import fastrnn` is light: fast in a fresh process, no heavy optional imports."""
import json
import os
import subprocess
import sys

import fastrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import fastrnn
t2 = time.perf_counter()
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "torch", "onnx", "h5py",
                                                            "dask", "tqdm", "onnxruntime"))
x = numpy.zeros((3, 1, 4), numpy.float32)
fastrnn.GRU(4, 8)(x)
t3 = time.perf_counter()
print(json.dumps({"numpy": t1 - t0, "fastrnn": t2 - t0, "first_call": t3 - t2, "mods": mods,
                  "after_call": sorted(m for m in sys.modules if m.startswith(("torch", "onnx", "h5py")))}))
"""


def _probe():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_import_time_and_modules():
    runs = [_probe() for _ in range(3)]
    best = min(r["fastrnn"] for r in runs)
    print(f"import fastrnn: best {best:.3f} s (numpy alone {min(r['numpy'] for r in runs):.3f} s), "
          f"first call {min(r['first_call'] for r in runs):.3f} s")
    # nothing heavy or optional at import time
    assert runs[0]["mods"] == [], runs[0]["mods"]
    # no framework is imported by running a layer either
    assert runs[0]["after_call"] == []


def test_io_import_is_light():
    code = ("import sys, fastrnn.io; print(sorted(m for m in sys.modules "
            "if m.startswith(('fastrnn.layers', 'fastrnn._kernels', 'h5py', 'onnx', 'torch'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    # fastrnn/__init__ imports layers (public API); the io package adds nothing heavy
    assert "h5py" not in r.stdout and "onnx" not in r.stdout and "torch" not in r.stdout


def test_cli_help_does_not_import_heavy_modules():
    code = ("import sys; from fastrnn.cli import main; main(['--help']);"
            "print('HEAVY', sorted(m for m in sys.modules if m.startswith(('torch', 'onnx', 'h5py', 'dask', 'scipy.linalg'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def _run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_keras_model_call_imports_no_scipy_special():
    """A fresh process's first call of a Keras model (Embedding, Bidirectional layers,
    Dense with a sigmoid) does not import scipy.special (its sigmoid is the kernels'):
    ~100-200 ms of a first request."""
    fix = os.path.join(ROOT, "tests", "fixtures", "keras", "k2_bi_modes_embed")
    code = ("import sys, numpy as np, fastrnn\n"
            f"m = fastrnn.load({fix + '.h5'!r})\n"
            f"y = m.predict(np.load({fix + '.npz'!r})['x'])\n"
            "print(sorted(k for k in sys.modules if k.startswith('scipy.special')))")
    assert _run(code).strip() == "[]"
