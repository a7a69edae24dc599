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

# a streaming step's thread count follows what its team's last steps cost (fr_kern.h,
# fr_wake_after): tests that count a step's threads must not depend on the machine's
# minute, so the measured rule is off here (tests/test_kernels_paths.py tests it)
from fastrnn import _kernels  # noqa: E402

_kernels._set_step_wake(0)

# a call that starts while another Python thread's call runs, or in a process where many
# recent calls did, runs a batch of one on one thread (_threads.CROWD_SHARE): off here for
# the same reason, the suite running calls from several threads
# (tests/test_idle_threads.py tests it)
_threads.CROWD_SHARE = None
