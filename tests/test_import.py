"""`import fastrnn` is light: fast in a fresh process, no heavy optional imports."""
import json
import os
import subprocess
import sys

import pytest

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
after = sorted(m for m in sys.modules
               if m.startswith(("torch", "onnx", "h5py", "scipy.linalg")))
print(json.dumps({"numpy": t1 - t0, "fastrnn": t2 - t0, "first_call": t3 - t2, "mods": mods,
                  "after_call": after}))
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
    # no framework is imported by running a layer either, nor scipy.linalg's package
    # (~110 ms of a first call: the kernels load scipy.linalg.cython_blas from its file)
    assert runs[0]["after_call"] == []


BLAS_LATER = r"""
import sys, numpy as np
{before}
import fastrnn
from fastrnn import _blas
a = np.arange(12.0).reshape(3, 4)
b = np.arange(8.0).reshape(4, 2)
assert np.array_equal(_blas._gemm_check(a, b), a @ b)
assert np.array_equal(_blas._gemm_check(a.astype(np.float32), b.astype(np.float32)),
                      (a @ b).astype(np.float32))
print("linalg before the layer call:", "scipy.linalg" in sys.modules)
import scipy.linalg
import scipy.linalg.cython_blas as cb
assert scipy.linalg.cython_blas is cb and sys.modules["scipy.linalg.cython_blas"] is cb
assert "sgemm" in cb.__pyx_capi__
from scipy.linalg import cython_blas
assert cython_blas is cb
assert np.allclose(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)), 0.5)
print("ok")
"""


def _run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cython_blas_loaded_without_scipy_linalg_and_later_imports_bind_it():
    """The BLAS shim takes scipy.linalg.cython_blas's functions from the module loaded from
    its file (scipy.linalg's package not imported); a later ``import scipy.linalg`` and
    ``import scipy.linalg.cython_blas`` give the same module, bound to the package, and
    scipy.linalg works.  With scipy.linalg imported first, and where loading from the
    file fails (the plain import then), the same."""
    out = _run(BLAS_LATER.format(before=""))
    assert "linalg before the layer call: False" in out and out.endswith("ok\n")
    out = _run(BLAS_LATER.format(before="import scipy.linalg"))
    assert "linalg before the layer call: True" in out and out.endswith("ok\n")
    # the file's lookup fails once (the shim's own): the plain import then
    broken = ("import importlib.machinery as m\n"
              "_fs, _n = m.FileFinder.find_spec, []\n"
              "def _once(self, name, target=None):\n"
              "    if name == 'scipy.linalg.cython_blas' and not _n:\n"
              "        _n.append(1)\n"
              "        raise OSError('no file')\n"
              "    return _fs(self, name, target)\n"
              "m.FileFinder.find_spec = _once")
    out = _run(BLAS_LATER.format(before=broken))
    assert "linalg before the layer call: True" in out and out.endswith("ok\n")


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


def test_keras_model_call_imports_no_scipy_package():
    """A fresh process's first call of a Keras model (Embedding, Bidirectional layers,
    Dense with a sigmoid) imports neither scipy.special (its sigmoid is the kernels') nor
    scipy.linalg: ~100-200 ms each of a first request."""
    fix = os.path.join(ROOT, "tests", "fixtures", "keras", "k2_bi_modes_embed")
    code = ("import sys, numpy as np, fastrnn\n"
            f"m = fastrnn.load({fix + '.h5'!r})\n"
            f"y = m.predict(np.load({fix + '.npz'!r})['x'])\n"
            "print(sorted(k for k in sys.modules if k.startswith(('scipy.special', "
            "'scipy.linalg'))))")
    assert _run(code).strip() == "[]"


FRESH_WORKERS = r"""
import ctypes, os, sys, numpy as np
import fastrnn
from fastrnn import _threads
if {keep}:
    _threads.end_fresh_blas_workers = lambda paths: None
assert not _threads.loaded_libraries(_threads.scipy_openblas_paths())
fastrnn.LSTM(8, 8)(np.zeros((3, 1, 8), np.float32))
paths = _threads.loaded_libraries(_threads.scipy_openblas_paths())
lib = ctypes.CDLL(paths[0])
get = getattr(lib, "scipy_openblas_get_num_threads", None) or lib.openblas_get_num_threads
tasks = len(os.listdir("/proc/self/task"))
# a training step on two threads, OpenBLAS's count: its thread count is not set again,
# which would make the workers again
from fastrnn import train
lay = fastrnn.LSTM(64, 64, num_threads=2)
out, _, cache = train.forward_train(lay, np.ones((20, 1, 64), np.float32))
train.backward(lay, cache, np.ones_like(out))
print(tasks, get(), len(os.listdir("/proc/self/task")) - tasks)
# OpenBLAS makes its workers again for a threaded call: results right, scipy.linalg works
from fastrnn import _blas
a = np.random.default_rng(0).standard_normal((400, 300))
b = np.random.default_rng(1).standard_normal((300, 500))
assert np.allclose(_blas._gemm_check(a, b), a @ b)
af, bf = a.astype(np.float32), b.astype(np.float32)
assert np.allclose(_blas._gemm_check(af, bf), af @ bf, rtol=1e-4, atol=1e-3)
import scipy.linalg
assert np.allclose(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)), 0.5)
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_first_call_ends_the_workers_of_the_openblas_it_loads():
    """scipy's OpenBLAS, loaded by the kernels' first call, makes its worker threads at
    load, and they spin ~0.1 s before they sleep (slowing that time's calls): the kernels
    end them (``_threads.end_fresh_blas_workers``); a later threaded BLAS call makes them
    again, a call whose thread count is OpenBLAS's does not.  Compared with the same
    process where the ending is undone."""
    from fastrnn import _threads
    if not _threads.scipy_openblas_paths():
        pytest.skip("scipy here has no OpenBLAS of its own (not a wheel)")
    ended = _run(FRESH_WORKERS.format(keep=False)).split()
    kept = _run(FRESH_WORKERS.format(keep=True)).split()
    assert ended[-1] == kept[-1] == "ok"
    nblas = int(kept[1])
    assert int(ended[0]) == int(kept[0]) - (nblas - 1), (ended, kept)
    # the training step adds the same threads (OpenMP's) to both: no OpenBLAS worker
    assert ended[2] == kept[2], (ended, kept)


def test_training_steps_import_no_scipy_package():
    """A fresh process's training steps, on the kernels and on the NumPy path (``clip``
    needs it), import neither scipy.special (the kernels' sigmoid) nor scipy.linalg."""
    code = ("import sys, numpy as np, fastrnn\n"
            "from fastrnn import train\n"
            "x = np.ones((5, 2, 3), np.float32)\n"
            "for lay in (fastrnn.LSTM(3, 4), fastrnn.LSTM(3, 4, clip=1.0)):\n"
            "    out, _, cache = train.forward_train(lay, x)\n"
            "    g = train.backward(lay, cache, np.ones_like(out))\n"
            "print(sorted(k for k in sys.modules if k.startswith(('scipy.special', "
            "'scipy.linalg', 'fastrnn._train_general'))))")
    assert _run(code).strip() == "['fastrnn._train_general']"


def test_onnx_model_loads_and_runs_without_importing_onnx():
    """fastrnn reads ONNX's protobuf itself: a fresh process loading and running an ONNX
    model imports neither ``onnx`` (~0.6 s of imports) nor ``google.protobuf``."""
    fix = os.path.join(ROOT, "tests", "fixtures", "onnx", "lstm_1l")
    code = ("import sys, numpy as np, fastrnn\n"
            f"m = fastrnn.load({fix + '.onnx'!r})\n"
            f"ref = np.load({fix + '.npz'!r})\n"
            "y = m.run({'x': ref['in:x']})\n"
            "assert np.allclose(y['y'], ref['ort:y'], atol=1e-5)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('onnx', 'google', "
            "'onnxruntime', 'ml_dtypes')))")
    assert _run(code).strip() == "[]"


def test_unbuilt_source_tree_says_so(tmp_path):
    """Python started in a checkout whose extensions are not built imports that tree's
    fastrnn: a clear ImportError at import (it was "cannot import name '_kernels'" at
    the first call)."""
    import shutil
    src = os.path.dirname(fastrnn.__file__)
    shutil.copytree(src, tmp_path / "fastrnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    res = subprocess.run([sys.executable, "-c", "import fastrnn"], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "source tree whose compiled kernels are not built" in res.stderr, res.stderr
