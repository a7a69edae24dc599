"""ONNX ``Scan`` nodes: the body graph compiled once at load, run step by step along the
scan inputs.

Semantics (opsets 9, 11, 16, 19, 21: the same for tensors; 11 allowed negative axes,
which are read so in every opset as ONNX Runtime reads them; 16+ only more element
types, none of which NumPy has): ``N`` state variables' initial values, then ``M`` scan
inputs (attribute ``num_scan_inputs``, 1 <= M <= the inputs, as ONNX Runtime requires);
the body takes the states' values and one slice of each scan input (the input without its
scan axis, ``scan_input_axes``, default 0, walked forwards or backwards,
``scan_input_directions``) and gives the states' next values, then ``K`` scan outputs'
values for the step; the node's outputs are the states' last values, then each scan
output's values stacked along ``scan_output_axes[k]`` (default 0; an axis of the output,
of one rank more than the body's value: ``-r-1 <= axis <= r``) in the order the steps ran
or reversed (``scan_output_directions``).  The scan inputs must have the same length
along their axes (a ValueError naming them, as ONNX Runtime's error).  A state may
change shape from one step to the next; a scan output's values must be alike (shape and
element type).

Opset 8 (``Scan-8``): a batch axis.  Inputs ``sequence_lens`` (optional, int64 of shape
``[batch]``: each batch item's steps, 1 to the scan inputs' length, as ONNX Runtime
requires), then the states (``[batch, ...]``) and the scan inputs (``[batch, sequence,
...]``: scan axis 1, attribute ``directions``); the body runs on each batch item's values
(without the batch axis) for its length; the outputs are stacked on axis 0, the scan
outputs ``[batch, sequence, ...]`` with zeros after an item's length (as ONNX Runtime).

No steps (scan inputs of length 0): the states come back as given, and each scan output
is empty, of the body output's declared shape with 0 inserted at its axis (opset 8: of
shape ``[batch, 0, ...]``) and its declared element type, where the body declares both
in full; else a ValueError naming the output.  (ONNX Runtime fails on any Scan of
length 0 from opset 9, and gives the opset-8 states uninitialised.)

The body reads any value of the enclosing graphs by name, as a Loop's
(:func:`fastrnn.io._onnx_loop.compile_subgraph`): those names are the Scan step's inputs
after the node's own (:attr:`Body.outer`).  A Scan is never computed at load; the body's
own nodes of constant inputs are.  Body nodes whose inputs do not change from one step
to the next (constants, outer values, states the body passes on unchanged; opset 8: not
the states, which differ between batch items) run once per call
(:attr:`Body.invariant`).  Errors at run name the Scan node, the step (opset 8: and the
batch item) and the body node ("node 3 Scan 's': iteration 4, body node 1 MatMul 'm':
...").

A body that is one SimpleRNN / LSTM / GRU cell (opset 9+: one scan input, x_t; the
states the cell's or passed on unchanged; the scan outputs its new h) runs as one
fastrnn layer call where the call's values allow
(:func:`fastrnn.io._onnx_loop_fuse.analyse_scan`: the Loop fusion's probes and checks),
else op by op as above, with the same results or errors; ``_onnx_loop.FUSE = False``
turns that off for Scans and Loops alike.
"""
from __future__ import annotations

import numpy as np

from . import LoadError
from . import _onnx_loop
from . import _onnx_proto as _proto
from ._onnx_loop import (BodyNode, _body_graph, _invariant, _located, compile_subgraph,
                         slot_map, split_steps)

__all__ = ["ScanNode", "compile_scan", "op_scan"]

_V9_ATTRS = ("scan_input_axes", "scan_input_directions", "scan_output_axes",
             "scan_output_directions")


def op_scan(ins, attrs, opset):
    """The Scan step's op function (``_SIMPLE_OPS["Scan"]``): its compiled node is
    ``attrs["_scan"]`` (so that a pickled step, whose function is looked up again by op
    type, keeps its body)."""
    return attrs["_scan"].run(ins)


def _ints(model, attrs, key, n, where, what, choices=None) -> tuple:
    """Attribute ``key``: ``n`` integers (default: n zeros)."""
    v = attrs.get(key)
    if v is None:
        return (0,) * n
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                          for x in v):
        raise LoadError(f"{model.name}: {where}: attribute {key!r} must be a list of "
                        f"integers, got {v!r}")
    if len(v) != n:
        raise LoadError(f"{model.name}: {where}: attribute {key!r} has {len(v)} value(s); "
                        f"its {n} {what} need {n}")
    if choices is not None and any(x not in choices for x in v):
        raise LoadError(f"{model.name}: {where}: attribute {key!r} is {v}; each must be 0 "
                        "(forward) or 1 (reverse)")
    return tuple(v)


def compile_scan(model, node, attrs, consts: dict, known: set, seqs: set, budget: list,
                 where: str) -> "ScanNode":
    """The ScanNode of ``node`` (a Scan) of ``model`` (an OnnxModel being loaded), its
    body compiled with the model's own step compiler (compile_subgraph); ``consts``,
    ``known``, ``seqs``: the enclosing graph's constants, defined names and sequences at
    the node."""
    name = model.name
    g = _body_graph(model, node, attrs, where)
    batch = model.opset < 9
    ins = list(node.input)
    if batch:                       # (opset 8: sequence_lens first, maybe empty)
        ins = ins[1:]
    M = attrs.get("num_scan_inputs")
    if M is None:
        raise LoadError(f"{name}: {where}: no 'num_scan_inputs' attribute (required)")
    if not isinstance(M, int) or isinstance(M, bool) or not 1 <= M <= len(ins):
        raise LoadError(f"{name}: {where}: num_scan_inputs is {M!r}; it must be between 1 "
                        f"and its {len(ins)} state and scan input(s) (as ONNX Runtime "
                        "requires)")
    N = len(ins) - M
    if any(not n for n in ins):
        raise LoadError(f"{name}: {where}: a state or scan input has no name (inputs "
                        f"{list(node.input)})")
    b_in = [v.name for v in g.input]
    b_out = [v.name for v in g.output]
    if len(b_in) != N + M:
        raise LoadError(f"{name}: {where}: its body takes {len(b_in)} inputs; a Scan with "
                        f"{N} state(s) and {M} scan input(s) needs {N + M}")
    if len(b_out) < N:
        raise LoadError(f"{name}: {where}: its body gives {len(b_out)} outputs; a Scan with "
                        f"{N} state(s) needs at least {N} (the states, then any scan "
                        "outputs)")
    K = len(b_out) - N
    if len(node.output) != N + K:
        raise LoadError(f"{name}: {where}: {len(node.output)} outputs; its body's {N} "
                        f"state(s) and {K} scan output(s) make {N + K} (every one listed; "
                        "an empty name for one not used)")
    if any(not n for n in b_in + b_out) or len(set(b_in)) != len(b_in):
        raise LoadError(f"{name}: {where}: its body's inputs and outputs must have names, "
                        f"the inputs different ones (inputs {b_in}, outputs {b_out})")
    if batch:
        extra = [k for k in _V9_ATTRS if k in attrs]
        if extra:
            raise LoadError(f"{name}: {where}: attribute(s) {extra} are Scan-9's; the "
                            f"model's opset {model.opset} has Scan-8 (batch axis 0, scan "
                            "axis 1, attribute 'directions')")
        in_dirs = _ints(model, attrs, "directions", M, where, "scan input(s)", (0, 1))
        in_axes, out_axes, out_dirs = (0,) * M, (0,) * K, (0,) * K
    else:
        if "directions" in attrs:
            raise LoadError(f"{name}: {where}: attribute 'directions' is Scan-8's; opset "
                            f"{model.opset}'s Scan has scan_input_directions")
        in_axes = _ints(model, attrs, "scan_input_axes", M, where, "scan input(s)")
        in_dirs = _ints(model, attrs, "scan_input_directions", M, where, "scan input(s)",
                        (0, 1))
        out_axes = _ints(model, attrs, "scan_output_axes", K, where, "scan output(s)")
        out_dirs = _ints(model, attrs, "scan_output_directions", K, where,
                         "scan output(s)", (0, 1))
    body, bad = compile_subgraph(model, g, consts, known, seqs, budget, where, "body")
    if bad:
        raise LoadError(f"{name}: {where}: body output(s) {[n for n in b_out if n in bad]} "
                        "are sequences (a Scan's values must be tensors here)")
    # (opset 8: the states differ between batch items, so none is invariant)
    body.invariant = _invariant(body, 0 if batch else N, 0, 0)
    empty = []                      # per scan output: (dtype, dims) declared, else None
    for v in g.output[N:]:
        dt = _proto.DTYPES.get(v.elem_type)
        dims = None if v.shape is None else tuple(v.shape)
        if dt is None or dims is None or not all(isinstance(d, int) and d >= 0
                                                  for d in dims):
            empty.append(None)
        else:
            empty.append((np.dtype(dt), dims))
    return ScanNode(model, body, N, M, K, (in_axes, in_dirs, out_axes, out_dirs), batch,
                    empty, tuple(ins[N:]), where)


class ScanNode(BodyNode):
    """A Scan node ready to run: ``run(values)``, ``values`` the Scan step's inputs
    (opset 8: sequence_lens, maybe None; then the states' initial values, the scan
    inputs, then :attr:`Body.outer`'s values)."""
    _BUILT = ("_template", "_slot", "_outer", "_moves", "_scan_src", "_pre", "_iter",
              "_labels", "_iter_info", "_fusion")

    def __init__(self, model, body, N: int, M: int, K: int, axes: tuple, batch: bool,
                 empty: list, scan_names: tuple, where: str):
        self.body = body
        self.N, self.M, self.K = N, M, K
        self.in_axes, self.in_dirs, self.out_axes, self.out_dirs = axes
        self.batch = batch              # (Scan-8: batch axis 0, scan axis 1)
        self.empty = empty              # per scan output: (dtype, dims) declared, or None
        self.scan_names = scan_names    # (the scan inputs' names, for messages)
        self.where = where
        self.name = model.name
        self.opset = model.opset
        self.num_threads = model.num_threads    # (a body Conv's, as the model's)
        self._build()

    # ------------------------------------------------------------------ compiled form
    def _build(self) -> None:
        """The slot-indexed form of the body: each call's value list (``_template``:
        constants in their slots; the body's inputs in slots 0 .. N + M - 1), the slots
        of the outer values and outputs, and the steps run once per call (``_pre``) and
        per step (``_iter``), named by ``_labels``."""
        body, N = self.body, self.N
        slot, none, trash, template = slot_map(body, body.inputs)
        self._template, self._slot = template, slot
        self._outer = tuple(slot[n] for n in body.outer)
        outs = [slot[n] for n in body.outputs]
        self._moves = tuple((d, s) for d, s in zip(range(N), outs[:N]) if d != s)
        self._scan_src = tuple(outs[N:])
        self._pre, self._iter, self._labels, self._iter_info, _ = split_steps(
            body, slot, none, trash, self.where, self.opset, self.num_threads)
        # a body that is one recurrent cell over x_t (opset 9+): run as one layer call
        # where the call's values allow (_onnx_loop_fuse)
        from . import _onnx_loop_fuse
        self._fusion = _onnx_loop_fuse.analyse_scan(self)

    # ------------------------------------------------------------------------ running
    def values(self, ins: list) -> list:
        """A run's value list: the constants and the outer values (``ins``: the Scan
        step's inputs) in their slots, and (opset 9+) the states' first values."""
        off = 1 if self.batch else 0
        N, M = self.N, self.M
        vals = list(self._template)
        for s, v in zip(self._outer, ins[off + N + M:]):
            vals[s] = v
        if not self.batch:
            for s, v in enumerate(ins[:N]):
                vals[s] = v
        return vals

    def run(self, ins: list) -> list:
        """The node's outputs for its step's input values ``ins``."""
        fusion = self._fusion
        if fusion is not None and _onnx_loop.FUSE:
            out = fusion.run(self, ins)
            if out is not None:
                return out
        off = 1 if self.batch else 0
        N, M = self.N, self.M
        states = list(ins[off:off + N])
        xs = [self._array(x, m) for m, x in enumerate(ins[off + N:off + N + M])]
        vals = self.values(ins)
        if self.batch:
            return self._run_batch(ins[0], states, xs, vals)
        T, axes = self._length(xs, 0)
        if T == 0:
            return states + [self._empty(k, ()) for k in range(self.K)]
        self._run_pre(vals)
        scans = self._steps(vals, xs, axes, T)
        out = [vals[s] for s in range(N)]
        for k, lst in enumerate(scans):
            if self.out_dirs[k]:
                lst.reverse()
            out.append(self._stack(lst, self.out_axes[k], f"scan output {k}"))
        return out

    def _array(self, x, m):
        if isinstance(x, np.generic):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"scan input {m} {self.scan_names[m]!r} must be a tensor, got a "
                            f"{type(x).__name__}")
        return x

    def _length(self, xs, lead) -> tuple:
        """The scan inputs' common length along their axes (``lead``: the number of
        leading axes before the scan axes, opset 8's batch axis), and those axes (from 0,
        of the whole input)."""
        T, first, axes = None, 0, []
        for m, x in enumerate(xs):
            r = x.ndim - lead
            a = self.in_axes[m]
            if not -r <= a < r:
                raise ValueError(
                    f"scan input {m} {self.scan_names[m]!r} of shape {x.shape}: its scan "
                    f"axis {a} is out of range for its rank {max(r, 0)}"
                    + (" (without the batch axis)" if lead else ""))
            a = a % r + lead
            axes.append(a)
            if T is None:
                T, first = x.shape[a], m
            elif x.shape[a] != T:
                raise ValueError(
                    f"scan inputs of different lengths: input {first} "
                    f"{self.scan_names[first]!r} has {T} along its scan axis, input {m} "
                    f"{self.scan_names[m]!r} {x.shape[a]} (all must have the same, as "
                    "ONNX Runtime requires)")
        return T, axes

    def _run_pre(self, vals) -> None:
        """The steps run once per call (their values the same in every step)."""
        run = None
        try:
            for run in self._pre:
                run(vals)
        except LoadError:
            raise
        except Exception as e:
            raise _located(e, 0, None if run is None else self._labels.get(id(run))
                           ) from None

    def _steps(self, vals, xs, axes, T, lead=(), item=None):
        """Runs the body ``T`` steps on ``vals`` (states in their slots, the steps run
        once per call done), slicing the scan inputs ``xs`` along ``axes`` (``lead``:
        leading indices, opset 8's batch item ``item``); the states' last values are left
        in their slots.  Returns per scan output its values in the order the steps ran."""
        N = self.N
        feed = []
        for m, (x, a) in enumerate(zip(xs, axes)):
            feed.append((N + m, x, lead + (slice(None),) * (a - len(lead)),
                         self.in_dirs[m]))
        scans: list = [[] for _ in self._scan_src]
        scan = list(zip(scans, self._scan_src))
        moves = self._moves
        dst = [d for d, _ in moves]
        src = [s for _, s in moves]
        last = T - 1
        i = 0
        run = None
        steps = self._iter
        try:
            for i in range(T):
                for s, x, pre, rev in feed:
                    vals[s] = x[pre + (last - i if rev else i,)]
                for run in steps:
                    run(vals)
                run = None
                for lst, s in scan:
                    lst.append(vals[s])
                if dst:
                    new = [vals[s] for s in src]
                    for d, v in zip(dst, new):
                        vals[d] = v
        except LoadError:
            raise
        except Exception as e:
            label = None if run is None else self._labels.get(id(run))
            raise _located(e, i if item is None else f"{i} of batch item {item}",
                           label) from None
        return scans

    def _stack(self, lst, axis, what, step="iteration"):
        """The values ``lst`` (of ``what``, one per ``step``) stacked along ``axis`` (an
        axis of the result); they must be alike."""
        first = lst[0]
        for j, v in enumerate(lst):
            if not isinstance(v, (np.ndarray, np.generic)) or v.shape != first.shape \
                    or v.dtype != first.dtype:
                got = (f"{v.dtype} of shape {v.shape}"
                       if isinstance(v, (np.ndarray, np.generic)) else f"a {type(v).__name__}")
                raise ValueError(
                    f"{what}: {step} {j} gave {got}, {step} 0 {first.dtype} of shape "
                    f"{first.shape} (the values stacked must be alike, as ONNX Runtime "
                    "requires)")
        r = np.ndim(first)
        if not -r - 1 <= axis <= r:
            raise ValueError(f"{what}: its axis {axis} is out of range for values of rank "
                             f"{r} stacked (rank {r + 1})")
        return np.stack(lst, axis)

    def _empty(self, k, lead, n=0):
        """Scan output ``k`` of ``n`` (0) steps at its axis, of the body's declared shape
        and element type (``lead``: leading sizes, opset 8's batch size)."""
        info = self.empty[k]
        if info is None:
            raise ValueError(
                f"scan output {k} (body output {self.N + k} "
                f"{self.body.outputs[self.N + k]!r}): no steps ran (scan inputs of length 0"
                f"{' or batch size 0' if self.batch else ''}), and its shape or element "
                "type is not declared in full in the body, so its empty value's shape is "
                "not known (ONNX Runtime fails on a Scan of length 0)")
        dt, dims = info
        r = len(dims)
        axis = self.out_axes[k]
        if not -r - 1 <= axis <= r:
            raise ValueError(f"scan output {k}: its axis {axis} is out of range for values "
                             f"of rank {r} stacked (rank {r + 1})")
        axis %= r + 1
        shape = tuple(lead) + dims[:axis] + (n,) + dims[axis:]
        try:
            return np.zeros(shape, dt)
        except (ValueError, MemoryError) as e:
            raise ValueError(
                f"scan output {k} (body output {self.N + k} "
                f"{self.body.outputs[self.N + k]!r}): no steps ran, and its empty value of "
                f"the body's declared shape {list(dims)} (as {list(shape)}) cannot be "
                f"made: {e}") from None

    # ------------------------------------------------------------------ opset 8
    def _run_batch(self, seq_lens, states, xs, vals) -> list:
        """Scan-8: each batch item's sequence run (for its length), the results stacked
        on axis 0 (scan outputs zero-padded to the scan inputs' length)."""
        N, K = self.N, self.K
        B, bfirst = None, ""
        named = [(f"state {k}", s) for k, s in enumerate(states)] + \
            [(f"scan input {m} {self.scan_names[m]!r}", x) for m, x in enumerate(xs)]
        for what, v in named:
            rank = 2 if what.startswith("scan") else 1
            if not isinstance(v, (np.ndarray, np.generic)) or np.ndim(v) < rank:
                got = (f"shape {np.shape(v)}" if isinstance(v, (np.ndarray, np.generic))
                       else f"a {type(v).__name__}")
                raise ValueError(f"{what} must have a batch axis 0"
                                 f"{' and a scan axis 1' if rank == 2 else ''} (opset "
                                 f"{self.opset}'s Scan), got {got}")
            if B is None:
                B, bfirst = v.shape[0], what
            elif v.shape[0] != B:
                raise ValueError(f"batch sizes differ: {bfirst} has {B}, {what} "
                                 f"{v.shape[0]} (as ONNX Runtime requires, all the same)")
        T, axes = self._length(xs, 1)
        lens = [T] * B
        if seq_lens is not None:
            sl = seq_lens
            if not (isinstance(sl, (np.ndarray, np.generic)) and sl.dtype.kind in "iu"):
                got = (f"{sl.dtype}" if isinstance(sl, (np.ndarray, np.generic))
                       else f"a {type(sl).__name__}")
                raise TypeError(f"sequence_lens must be integers (int64), got {got}")
            if sl.shape != (B,):
                raise ValueError(f"sequence_lens has shape {sl.shape}; the batch size is {B}"
                                 f" (it must have shape ({B},))")
            lens = [int(n) for n in sl]
            if any(not 1 <= n <= T for n in lens):
                raise ValueError(f"sequence_lens {lens}: each must be from 1 to the scan "
                                 f"inputs' length {T} (as ONNX Runtime requires)")
        if T == 0 or B == 0:
            return list(states) + [self._empty(k, (B,), T) for k in range(K)]
        self._run_pre(vals)
        finals: list = [[] for _ in range(N)]
        outs: list = [[] for _ in range(K)]
        for b in range(B):
            v = list(vals) if b < B - 1 else vals
            for s in range(N):
                v[s] = states[s][b]
            scans = self._steps(v, xs, axes, lens[b], (b,), b)
            for s in range(N):
                finals[s].append(v[s])
            for k, lst in enumerate(scans):
                y = self._stack(lst, 0, f"scan output {k} of batch item {b}")
                if lens[b] < T:
                    y = np.concatenate([y, np.zeros((T - lens[b],) + y.shape[1:],
                                                    y.dtype)])
                outs[k].append(y)
        return ([self._stack(f, 0, f"state {k}'s last value", "batch item")
                 for k, f in enumerate(finals)]
                + [self._stack(o, 0, f"scan output {k}", "batch item")
                   for k, o in enumerate(outs)])
