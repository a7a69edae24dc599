# cython: language_level=3
"""A call's start and end for the thread rules of :mod:`fastrnn._threads` (which calls
run crowded, which after a pause), as a context manager written in C.

Python raises a KeyboardInterrupt (any signal handler's exception) only between
bytecodes.  ``__enter__`` runs Python code (``_forget_cpus``) only before it changes
anything, then records the call without running any; ``__exit__`` runs none.  A
``with`` whose ``__enter__`` returned enters its block at once, and leaving the block
always calls ``__exit__``, so an interrupt cannot land between the record and its undo.
(Python functions paired by ``try`` / ``finally`` could be interrupted between the two,
or at the start of the undo: one Ctrl-C then left every later call of the process
counted as crowded, or a thread's calls as nested, for good.)
"""
from time import monotonic as _monotonic


cdef class CallScope:
    """``with scope as idle``: 0, PAUSED or CROWDED (the answer of the rules in
    ``_threads``: CALL_SCOPE); nested calls share the outermost call's answer, and the outermost call's
    end is the new time of the last call.  One object serves every thread: the state
    is the ``_threads`` module's (a thread-local depth and answer, the list of calls
    running, the crowd share, the last end)."""

    cdef object t

    def __cinit__(self, threads_module):
        self.t = threads_module

    def __enter__(self):
        t = self.t
        sc = t._scope
        depth = getattr(sc, "depth", 0)
        if depth:
            sc.depth = depth + 1
            return sc.idle
        crowd = 0
        active = t._active
        busy = len(active) > 0
        cr = t._crowd
        if busy or cr[0]:       # (else, a thread alone and no share: nothing to update)
            share = cr[0]
            share += ((1.0 if busy else 0.0) - share) * t.CROWD_EMA
            cr[0] = share if share > 1e-3 else 0.0
            limit = t.CROWD_SHARE
            if limit is not None and (busy or share >= limit):
                crowd = t.CROWDED
        idle_s = t.IDLE_SINGLE_S
        if idle_s >= 0 and _monotonic() - t._last_end[0] > idle_s:
            # (a pause since the last call ended; a call still running in another
            # thread keeps this one crowded: an audit)
            t._forget_cpus()            # (Python code: before any change)
            if not (busy and crowd):
                crowd = t.PAUSED
        # the record: no Python code from here to the block
        sc.idle = crowd
        active.append(None)
        sc.depth = 1
        return crowd

    def __exit__(self, exc_type, exc, tb):
        t = self.t
        sc = t._scope
        depth = sc.depth - 1
        sc.depth = depth
        if not depth:
            t._active.pop()
            t._last_end[0] = _monotonic()
        return False
