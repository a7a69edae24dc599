# Worker placement hooks (fr_barrier.h), included by _kernels.pyx and _backward.pyx: each
# module has its own copy of the mode and of the calling thread's record.

cdef extern from "fr_barrier.h":
    int fr_place_mode
    int fr_place_cpu_test
    int fr_place_get(int t, int* tid, int* away) nogil


def _set_worker_placement(int mode):
    """Worker placement of this module's parallel regions (fr_barrier.h): 1 on (default,
    0 with the environment variable FASTRNN_WORKER_PLACEMENT=0), 0 off.  Returns the
    previous mode.  ``fastrnn._kernels`` and ``fastrnn._backward`` have one each."""
    global fr_place_mode
    _hooks_changed()
    old = fr_place_mode
    fr_place_mode = mode
    return old


if __import__("os").environ.get("FASTRNN_WORKER_PLACEMENT", "").strip() == "0":
    _set_worker_placement(0)


def _set_placement_cpu(int cpu):
    """Test hook: the CPU this module's placement takes for the master's (-1: the real
    one).  Returns the previous value."""
    global fr_place_cpu_test
    _hooks_changed()
    old = fr_place_cpu_test
    fr_place_cpu_test = cpu
    return old


def _placement_record(int slot):
    """Test hook: (cpu, tid, away) of the calling thread's placement record in this
    module: the CPU it ran on at its last placed region (-1: none), the OS thread placed
    in team slot ``slot`` and the CPU that thread's mask leaves out."""
    cdef int tid = 0, away = -1
    cdef int cpu = fr_place_get(slot, &tid, &away)
    return cpu, tid, away
