"""Build script: cythonizes every fastrnn/_*.pyx with OpenMP when the compiler has it.

Set FASTRNN_NO_OPENMP=1 to force a serial build.  Without OpenMP every kernel still
works; only the multi-threaded paths run on one thread.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_has_openmp(compiler_cmd):
    """Try to compile and link a tiny OpenMP program; True when it works."""
    if os.environ.get("FASTRNN_NO_OPENMP"):
        return False
    if sys.platform == "win32":
        return True  # MSVC: /openmp
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        r = subprocess.run(compiler_cmd + [path, "-fopenmp", "-o", os.path.join(tmp, "t")],
                           capture_output=True)
        return r.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        cc = list(self.compiler.compiler_so[:1]) if hasattr(self.compiler, "compiler_so") else ["cc"]
        openmp = _compiler_has_openmp(cc)
        for ext in self.extensions:
            if sys.platform == "win32":
                ext.extra_compile_args += ["/O2"] + (["/openmp"] if openmp else [])
            else:
                # (-g0: Python's flags ask for debug info, 18 of the 22 MB of the .so files)
                ext.extra_compile_args += ["-O3", "-fno-math-errno", "-fno-trapping-math",
                                           "-Wno-unused-function", "-Wno-unreachable-code", "-Wno-psabi",
                                           "-g0"]
                if openmp:
                    ext.extra_compile_args.append("-fopenmp")
                    ext.extra_link_args.append("-fopenmp")
        if not openmp:
            print("fastrnn: building WITHOUT OpenMP (serial kernels)", file=sys.stderr)
        super().build_extensions()


here = os.path.dirname(os.path.abspath(__file__))


def _depends(pyx):
    """The headers an extension is rebuilt for: the convolution kernel's (_conv*.h) and
    the shared CPU probe (fr_cpu.h) for fastrnn._conv, every other header for the others."""
    headers = sorted(glob.glob(os.path.join(here, "fastrnn", "*.h")))
    conv = [h for h in headers if os.path.basename(h).startswith("_conv")]
    if os.path.basename(pyx).startswith("_conv"):
        return conv + [os.path.join(here, "fastrnn", "fr_cpu.h")]
    return [h for h in headers if h not in conv]


extensions = [
    Extension(
        "fastrnn." + os.path.splitext(os.path.basename(p))[0],
        [os.path.relpath(p, here)],
        include_dirs=[np.get_include(), os.path.join(here, "fastrnn")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=_depends(p),
    )
    for p in sorted(glob.glob(os.path.join(here, "fastrnn", "_*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
