import os
import sys

# tests import the NumPy reference as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# tests run more threads than this machine has CPUs (1, 2, 3 threads on a 2-CPU machine),
# to check how the work splits: lift the cap every count has in use
# (tests/test_cpu_count.py puts it back where it tests it)
from fastrnn import _threads  # noqa: E402

_threads.CAP_AT_CPUS = False
_threads._read_cpus()
