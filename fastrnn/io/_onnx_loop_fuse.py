"""Loop bodies that are one recurrent cell, run as one fastrnn layer call.

tf2onnx writes a Keras recurrent layer it cannot map to an ONNX LSTM / GRU / RNN node
(tf.keras 2 SimpleRNN and ``GRU(reset_after=False)``, Keras 3 GRU, ...) as a ``Loop``
over TensorFlow's while_loop: each iteration reads step ``t`` of a time-major input
(``Gather(X, t)``), computes the cell from it and the carried state and passes the new
state on, as a carried value and a scan output.  Op by op (_onnx_loop.LoopNode.run) that
is 10-30 NumPy calls a step; as one layer call, one kernel call for the sequence.

A body is recognised in two stages.

By structure, at load (:func:`analyse`):

- each carried value is a counter (the body gives back ``t + 1``, the one a body
  constant; int32 / int64), a state, or a value given back unchanged;
- one Gather (axis 0) reads a value ``X`` fixed for the call at a counter (``x_t``), a
  second one may read a bool mask so;
- the cell (the steps the states and the scan outputs are computed by) reads only
  ``x_t``, the mask, the states and values fixed for the call (none computed from
  ``X``), and is made of the ops of a cell's math (``_CELL_OPS``); a Min, Max or Clip
  could act on values random probes never reach, so it is allowed only in a chain whose
  function, composed exactly from its constants, is Keras's hard_sigmoid
  (:func:`_hard_sigmoids`);
- the condition is an ``And`` of ``Less(counter, bound)`` terms (through Casts), each
  bound fixed for the call: the number of iterations follows from the bounds, the trip
  count M and the counters' first values (:meth:`_Fusion._trips`).

By value, at the first call with given weights (the Loop's inputs the cell reads,
compared by identity where the model keeps them, else by value, at each call:
:meth:`_Fusion._plan`):

- the cell's steps run in float64 on probe rows (:func:`_make`): random rows tell which
  activation inputs are affine and which states they read; a zero row and the unit rows
  of ``x`` and of those states (128 at a time) give each affine input's bias and weight
  rows exactly, the random rows check them;
- a SimpleRNN is one activation or none (linear); a GRU two gate activations of affine
  inputs and a candidate's, ``h' = z h + (1 - z) n``, its candidate's input read again
  with the reset gate forced to 1 and to 0, which gives its weights and tells whether
  the reset gate acts after the recurrent product (Keras ``reset_after=True``) or before
  it; an LSTM three gate activations and a candidate's of affine inputs and one of the
  new ``c`` (``c' = f c + i g``, ``h' = o act(c')``), each state order, gate order and
  candidate tried (:func:`_classify`);
- a GRU's or an LSTM's ``activation`` may be none too (Keras ``linear``: ONNX's Affine
  of alpha 1, beta 0 on the layer): two gate activations alone (GRU), or three (LSTM);
  the candidate is then a value of the cell's steps, the one whose probe values make
  ``z h + (1 - z) n`` the new h (read again with the reset gate forced, as above), or
  make ``f c + i g`` the new c, affine, with ``h' = o c'``;
- under a mask, all-masked rows give back the states, and the output either as it was
  (the layer's ``masked_output="carry"``) or zero (``"zero"``: Keras's Bidirectional);
  the scan outputs must be the new output;
- then the layer and the body's own ops, in the call's dtype, run on random rows (some
  masked) and must agree.

Anything else (a body that is no such cell, values that disagree, a call whose values
do not allow it: a counter not starting in range, an input too short for the
iterations, ...) runs op by op, as before: the same results or the same errors.

``Scan`` bodies (opset 9+; _onnx_scan.ScanNode) that are one cell run so too
(:func:`analyse_scan`, :class:`_ScanFusion`): the same cell analysis (:func:`_cell`),
plan cache and probes (:class:`_Cell`, :func:`_make`, :func:`_classify`), with a Scan's
own structure: one scan input, read by the cell as x_t (the body's input, no Gather, no
counter, no condition); each state the cell's (1: SimpleRNN, GRU; 2: LSTM) or passed on
unchanged (as it came, or through Identity steps); the scan outputs (any number, none
too) the new h; no mask.  At a call: x a float (3-D) of its dtype, the layer run over x
with its scan axis moved first (any axis of the three) and flipped for a reverse scan
input; each scan output the layer's outputs flipped for a reverse one and its step axis
moved to the output's axis (an array of its own); no steps (T = 0), an axis out of
range, states of another dtype or shape: op by op.  Opset 8's Scan (a batch axis) is
never fused.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np

__all__ = ["analyse", "analyse_scan"]

# the ops a fused cell may be made of (besides the Gathers of x_t and the mask)
# (Not: a bool in the cell comes from the mask's Gather alone, no op here makes one)
# (Shape, ConstantOfShape: tf.keras 2's recurrent_dropout at inference, a mask of ones
# made each step; Min, Max, Clip only in a hard_sigmoid chain: _hard_sigmoids)
_CELL_OPS = frozenset({"MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Relu", "Split",
                       "Slice", "Squeeze", "Unsqueeze", "Identity", "Concat", "Reshape",
                       "Cast", "Not", "Shape", "ConstantOfShape"})
_CLAMPS = ("Min", "Max", "Clip")
_SCALAR_OPS = ("Add", "Sub", "Mul", "Div")
_ACTS = ("Sigmoid", "Tanh", "Relu")
_FLOATS = (1, 11)           # (ONNX float, double: the Casts a cell may do)
_NUMBERS = (1, 11, 6, 7)    # (and int32, int64: the Casts a condition may do)
_RANDOM_ROWS = 8
_CHUNK = 128                # (unit rows a probe runs at once: bounds its memory)
_EXACT = 1 << 24            # (counters and bounds compared exactly in float32 below this)


def _op(st):
    kind, obj = st[0], st[1]
    return obj[1] if kind == "op" else None


def analyse(loop):
    """The :class:`_Fusion` of a LoopNode whose body has a recurrent cell's structure,
    else None."""
    try:
        return _analyse(loop)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _analyse(loop):
    body, K, slot = loop.body, loop.K, loop._slot
    if K < 2:
        return None
    info = loop._iter_info
    prod = _producers(info)
    inv = {slot[n] for n in body.invariant if n in slot}
    outs = [slot[n] for n in body.outputs]
    consts = {slot[n]: v for n, v in body.consts.items()}
    counters, states = {}, []
    for k in range(K):
        i_s, o_s = 2 + k, outs[1 + k]
        if o_s == i_s:              # (passed on unchanged)
            continue
        j = prod.get(o_s)
        if j is not None and _increment(info[j], i_s, consts):
            counters[k] = j
        else:
            states.append(k)
    if not counters or len(states) not in (1, 2, 3):
        return None
    # the cell: the steps the states and the scan outputs are computed by
    state_out = [outs[1 + k] for k in states]
    cell = _ancestors(state_out + list(outs[1 + K:]), prod, info)
    gathers = [j for j in cell if _op(info[j][0]) == "Gather"]
    if len(gathers) not in (1, 2):
        return None
    reads_g = []
    for g in gathers:
        (gst, g_in, g_out) = info[g]
        if len(g_in) != 2 or g_in[0] not in inv or g_in[1] - 2 not in counters \
                or gst[1][2].get("axis", 0) != 0:
            return None
        reads_g.append((g_in[0], g_out[0], g_in[1] - 2))
    # the Loop's inputs the cell's invariant values come from: the plan's key
    by_name = {}
    for k in range(K):
        by_name[body.inputs[2 + k]] = 2 + k
    for j, n in enumerate(body.outer):
        by_name[n] = 2 + K + j
    f = _Fusion()
    mine = {2 + k for k in states} | {2 + k for k in counters}
    reads = _cell(f, loop, cell, info, prod, consts, inv, state_out, outs[1 + K:],
                  {2 + k for k in states}, set(gathers), by_name, mine)
    if reads is None:
        return None
    terms = _cond(outs[0], prod, info, inv, counters, outs, K)
    if not terms:
        return None
    # (every live step is the cell's, the condition's or a counter's: the outputs need
    # nothing else)
    # the values the Gathers read x_t and the mask from (X, the mask) may be read by no
    # other step of the cell, nor be the source of any other value the cell reads (a
    # value computed from X once per call, ReduceMean(X)): the probes put their own rows
    # in X's slot, and the plan's key leaves out the Loop inputs X comes from
    srcs = {s for s, _, _ in reads_g}
    x_names = {n for n, s in slot.items() if s in srcs}
    src = _sources(reads, body, by_name)
    if reads & x_names or src & _sources(x_names, body, by_name):
        return None
    f.counters = {k: consts[_other(info[j][1], 2 + k)] for k, j in counters.items()}
    f.states, f.gathers = states, reads_g
    f.state_in = [2 + k for k in states]
    f.terms = terms
    return f


def analyse_scan(scan):
    """The :class:`_ScanFusion` of a ScanNode (opset 9+) whose body is a recurrent cell
    by structure (one scan input, x_t; the states the cell's or passed on), else None."""
    try:
        return _analyse_scan(scan)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _analyse_scan(scan):
    """As :func:`_analyse` for a Scan (opset 9+): its body's inputs are the N states
    (slots 0 .. N-1) and x_t (slot N, the one scan input's slice: no Gather, no counter,
    no condition); its outputs the states' next values and the scan outputs."""
    if scan.batch or scan.M != 1:
        return None
    body, N, slot = scan.body, scan.N, scan._slot
    info = scan._iter_info
    prod = _producers(info)
    inv = {slot[n] for n in body.invariant if n in slot}
    outs = [slot[n] for n in body.outputs]
    consts = {slot[n]: v for n, v in body.consts.items()}
    # (the rest: passed on unchanged, as they came or through Identity steps)
    states = [k for k in range(N) if not _passed(outs[k], k, prod, info)]
    if len(states) not in (1, 2):
        return None
    state_out = [outs[k] for k in states]
    cell = _ancestors(state_out + list(outs[N:]), prod, info)
    if not any(N in info[j][1] for j in cell):
        return None                 # (a cell of no x)
    # the Scan step's inputs (ScanNode.run's ins): the states, the scan input, then the
    # outer values
    by_name = {n: k for k, n in enumerate(body.inputs)}
    for j, n in enumerate(body.outer):
        by_name[n] = N + 1 + j
    f = _ScanFusion()
    if _cell(f, scan, cell, info, prod, consts, inv, state_out, outs[N:], set(states),
             set(), by_name, set(states) | {N}, {N}) is None:
        return None
    f.states, f.x_slot = states, N
    f.state_in = list(states)
    return f


def _passed(s, k, prod, info) -> bool:
    """Whether slot ``s`` is the value in slot ``k``, as it is or through Identity
    steps."""
    while s != k:
        j = prod.get(s)
        if j is None or _op(info[j][0]) != "Identity":
            return False
        s = info[j][1][0]
    return True


def _producers(info) -> dict:
    """slot -> index in ``info`` (a body's per-step ``(step, in slots, out slots)``) of
    the step computing it."""
    prod = {}
    for j, (_, _, o_s) in enumerate(info):
        for o in o_s:
            prod[o] = j
    return prod


def _cell(f, node, cell, info, prod, consts, inv, state_out, scan, state_in, skip, by_name,
          mine, x_in=frozenset()):
    """The analysis a Loop's and a Scan's cell share: the steps ``cell`` (indices into
    ``info``, those computing the states' next values ``state_out`` and the scan outputs
    ``scan``) must be of a cell's ops (:data:`_CELL_OPS`, hard_sigmoid chains) and read
    only the states (slots ``state_in``), x_t (``x_in``: a Scan's input slot; a Loop's
    x_t is its Gather's output), values fixed for the call (``inv``) and values the cell
    makes; ``skip``: steps of the caller's (a Loop's Gathers of x_t and the mask: not
    checked here, their data input not counted as read).  Sets ``f``'s cell fields
    (the steps, their probe runners, the activations, the values read fixed for the call
    with the node's inputs (``by_name``: a body input's or outer value's position in the
    node step's inputs; ``mine``: those left out) they come from: the plan's key) and
    returns the names the cell reads that it does not make; None: no cell."""
    body, slot = node.body, node._slot
    made = {o for j in cell for o in info[j][2]}
    readers: dict = {}
    for j in cell:
        for i in info[j][1]:
            readers[i] = readers.get(i, 0) + 1
    for o in list(state_out) + list(scan):
        readers[o] = readers.get(o, 0) + 1
    hard = _hard_sigmoids(cell, info, prod, consts, readers, node.opset)
    if hard is None:
        return None
    hard_acts, covered = hard
    for j in cell:
        st, i_s, _ = info[j]
        op = _op(st)
        if j in skip or j in covered:
            continue
        if op not in _CELL_OPS or (op == "Cast" and st[1][2].get("to") not in _FLOATS):
            return None
        if any(s not in inv and s not in state_in and s not in made and s not in x_in
               for s in i_s):
            return None
    # a value computed from a Shape (a number of rows: the call's batch, or the probes'
    # and the final check's own, which differ) may only give a ConstantOfShape its
    # shape (tf.keras 2's recurrent_dropout: a mask of ones), through the ops that pass
    # a shape on; read by any other op, the cell's math could depend on the number of
    # rows, which the probes cannot see
    shaped = set()
    for j in sorted(cell):
        st, i_s, o_s = info[j]
        op = _op(st)
        if op == "Shape":
            shaped.update(o_s)
            continue
        hit = [k for k, s in enumerate(i_s) if s in shaped]
        if not hit:
            continue
        if op == "ConstantOfShape":
            continue
        if op in ("Identity", "Concat", "Squeeze", "Unsqueeze") or (op == "Slice"
                                                                     and hit == [0]):
            shaped.update(o_s)
            continue
        return None
    acts = [(info[j][0][1][1], info[j][1][0], info[j][2][0]) for j in cell
            if _op(info[j][0]) in _ACTS] + [a[:3] for a in hard_acts]
    made_n = {o for j in cell for o in info[j][0][3] if o}
    reads = set()
    for j in cell:
        names = info[j][0][2]
        reads.update(n for n in (names[1:] if j in skip else names)
                     if n and n not in made_n)
    # per value the cell reads of those fixed for the call: the node's inputs it comes
    # from (the plan's key: _Cell._plan)
    f.inv_reads = tuple((slot[n], frozenset(_sources({n}, body, by_name) - mine))
                        for n in sorted(reads) if slot.get(n) in inv)
    f.state_out = list(state_out)
    f.scan = list(scan)
    f.cell = [node._iter[j] for j in sorted(cell)]
    # (the probes' own: a MatMul of unit rows picks weight rows, _probe_matmul)
    f.finite = None
    f.probe_cell = [_probe_runner(f, info[j][1], info[j][2][0])
                    if _op(info[j][0]) == "MatMul" and len(info[j][1]) == 2
                    and len(info[j][2]) == 1 else node._iter[j] for j in sorted(cell)]
    f.cell_outs = [info[j][2] for j in sorted(cell)]
    # (the values the cell's steps make, by name: where a linear candidate may be)
    f.made = [o for j in sorted(cell) for o, n in zip(info[j][2], info[j][0][3]) if n]
    f.acts = sorted(acts)
    f.params = {a[2]: a[3] for a in hard_acts}     # (HardSigmoid's alpha, beta)
    f.cache = None
    return reads


def _unit_rows(a):
    """``(rows, cols)`` where float64 matrix ``a``'s rows are each zeros or one unit row
    (``a[rows[k], cols[k]] == 1``, all else 0), else None."""
    nz = a != 0
    cnt = nz.sum(1)
    if cnt.size and cnt.max() > 1:
        return None
    one = np.flatnonzero(cnt)
    col = nz[one].argmax(1)
    return (one, col) if np.all(a[one, col] == 1) else None


def _probe_matmul(a, b, finite=None):
    """``np.matmul(a, b)`` for the probes: where ``a`` is float64 rows that are each
    zero or one unit row (the unit-row probes of :func:`_make`, through any ops that keep
    them) and ``b`` a finite float64 matrix, each row of the product is the row of ``b``
    the one picks, or zeros: the product's values (one term 1 * w, the others +-0; a -0
    weight read as +0), without its (rows x I x gates H) multiply-adds.  ``finite``: a
    dict keeping whether a ``b`` is finite (id -> (b, bool)), for the probes of one
    plan."""
    if not (a.__class__ is np.ndarray and b.__class__ is np.ndarray and a.ndim == 2
            and b.ndim == 2 and a.shape[1] == b.shape[0] >= 1
            and a.dtype == np.float64 and b.dtype == np.float64):
        return np.matmul(a, b)
    rc = _unit_rows(a)
    if rc is None:
        return np.matmul(a, b)
    got = None if finite is None else finite.get(id(b))
    if got is None or got[0] is not b:
        got = (b, bool(np.isfinite(b).all()))
        if finite is not None:
            finite[id(b)] = got
    if not got[1]:
        return np.matmul(a, b)      # (0 * inf: NaN, as the product has it)
    out = np.zeros((a.shape[0], b.shape[1]))
    out[rc[0]] = b[rc[1]] + 0.0
    return out


def _probe_runner(f, i_s, o):
    a, b = i_s

    def run(vals):
        vals[o] = _probe_matmul(vals[a], vals[b], f.finite)
    return run


def _hard_sigmoids(cell, info, prod, consts, readers, opset):
    """Keras's hard_sigmoid in the cell: ``([("HardSigmoid", p, out, (alpha, beta)),
    ...], the steps they cover)``, each a chain of scalar ops (Add, Sub, Mul, Div of a
    constant) and clamps (Min, Max, Clip of constants) from a value p to out whose
    function is ``clamp(alpha p + beta, 0, 1)``, each step's output read by the next
    alone (tf.keras 2: Max(Min(0.2 p + 0.5, 1), 0); Keras 3: Clip(p + 3, 0, 6) / 6);
    None: a clamp of another kind (it could act only on values the probes never reach)."""
    acts, covered = [], set()
    for j in sorted(cell):
        if _op(info[j][0]) not in _CLAMPS or j in covered:
            continue
        chain = [j]
        x = _scalar_step(info[j], consts, opset)
        if x is None:
            return None
        p, ops = x[0], [x[1]]
        while readers.get(p) == 1 and prod.get(p) in cell:
            k = prod[p]
            y = _scalar_step(info[k], consts, opset)
            if y is None or _op(info[k][0]) in _CLAMPS:
                break
            chain.insert(0, k)
            ops.insert(0, y[1])
            p = y[0]
        fn = (1.0, 0.0, -math.inf, math.inf)
        for op in ops:
            fn = _compose(fn, op)
        out = info[chain[-1]][2][0]
        while not _unit(fn) and readers.get(out) == 1:
            nxt = [k for k in cell if out in info[k][1] and k not in chain]
            y = _scalar_step(info[nxt[0]], consts, opset) if len(nxt) == 1 else None
            if y is None or y[0] != out:
                break
            chain.append(nxt[0])
            fn = _compose(fn, y[1])
            out = info[nxt[0]][2][0]
        a, b, lo, hi = fn
        if not _unit(fn) or not (a > 0 and math.isfinite(a) and math.isfinite(b)):
            return None
        acts.append(("HardSigmoid", p, out, (a, b)))
        covered.update(chain)
    return acts, covered


def _unit(fn) -> bool:
    """Whether the clamp of ``fn`` is to [0, 1] (to float32's rounding of the constants:
    Keras 3's Clip(p + 3, 0, 6) * float32(1 / 6))."""
    return abs(fn[2]) < 1e-6 and abs(fn[3] - 1) < 1e-6


def _scalar_step(step, consts, opset):
    """(data input slot, (op, constant...)) of a step applying a scalar constant
    elementwise (Add, Sub, Mul, Div, Min, Max, Clip; the data one input), else None."""
    st, i_s, o_s = step
    op = _op(st)
    if len(o_s) != 1:
        return None

    def c(s):
        v = consts.get(s)
        return float(v.reshape(())) if isinstance(v, np.ndarray) and v.size == 1 \
            and v.dtype.kind == "f" else None
    if op == "Clip":
        if opset < 11:
            lo, hi = st[1][2].get("min", -math.inf), st[1][2].get("max", math.inf)
        else:
            lo = c(i_s[1]) if len(i_s) > 1 and i_s[1] in consts else -math.inf
            hi = c(i_s[2]) if len(i_s) > 2 and i_s[2] in consts else math.inf
            if lo is None or hi is None or any(s not in consts for s in i_s[1:] if s):
                return None
        return i_s[0], ("Clip", float(lo), float(hi))
    if op not in _SCALAR_OPS + ("Min", "Max") or len(i_s) != 2:
        return None
    a, b = c(i_s[0]), c(i_s[1])
    if (a is None) == (b is None):
        return None
    if b is not None:
        return i_s[0], (op, b)
    if op in ("Add", "Mul", "Min", "Max"):
        return i_s[1], (op, a)
    return (i_s[1], ("Rsub", a)) if op == "Sub" else None


def _compose(fn, f):
    """``clamp(a x + b, lo, hi)`` (fn) followed by the scalar op f, the same form."""
    a, b, lo, hi = fn
    op, *c = f
    if op in ("Add", "Sub", "Rsub"):
        if op == "Rsub":            # (c - y: -y, then + c)
            a, b, lo, hi = -a, -b, -hi, -lo
        d = -c[0] if op == "Sub" else c[0]
        return a, b + d, lo + d, hi + d
    if op in ("Mul", "Div"):
        m = c[0] if op == "Mul" else (1.0 / c[0] if c[0] else math.nan)
        if not m or not math.isfinite(m):
            return math.nan, math.nan, math.nan, math.nan
        if m < 0:
            lo, hi = hi, lo
        return a * m, b * m, lo * m, hi * m
    if op in ("Max", "Clip"):
        lo, hi = max(lo, c[0]), max(hi, c[0])
    if op in ("Min", "Clip"):
        lo, hi = min(lo, c[-1]), min(hi, c[-1])
    return a, b, lo, hi


def _other(i_s, s):
    return i_s[1] if i_s[0] == s else i_s[0]


def _increment(step, i_s, consts) -> bool:
    """Whether ``step`` is ``t + 1`` of the carried value in slot ``i_s`` (the one an
    integer body constant)."""
    st, ins, _ = step
    if _op(st) != "Add" or len(ins) != 2 or i_s not in ins:
        return False
    one = consts.get(_other(ins, i_s))
    return (isinstance(one, np.ndarray) and one.dtype.kind in "iu" and one.size == 1
            and int(one.reshape(())) == 1 and one.ndim == 0)


def _ancestors(want, prod, info) -> set:
    seen, todo = set(), list(want)
    while todo:
        s = todo.pop()
        j = prod.get(s)
        if j is None or j in seen:
            continue
        seen.add(j)
        todo.extend(info[j][1])
    return seen


def _sources(names, body, by_name) -> set:
    """The Loop step's input positions the values ``names`` are computed from (through
    the body's steps)."""
    maker = {}
    for st in body.steps:
        for o in st[3]:
            if o:
                maker[o] = st
    out, seen, todo = set(), set(), list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in by_name:
            out.add(by_name[n])
        elif n in maker:
            todo.extend(m for m in maker[n][2] if m)
    return out


def _cond(s, prod, info, inv, counters, outs, K):
    """The condition output's terms ``(base, offset, bound slot)``: the loop goes on
    while every ``base + offset < bound``, base the iteration number (None) or counter
    k's value at the iteration's start; None: not of that form."""
    j = prod.get(s)
    if j is None:
        return None
    st, i_s, _ = info[j]
    op = _op(st)
    if op == "Identity":
        return _cond(i_s[0], prod, info, inv, counters, outs, K)
    if op == "And" and len(i_s) == 2:
        a = _cond(i_s[0], prod, info, inv, counters, outs, K)
        b = _cond(i_s[1], prod, info, inv, counters, outs, K)
        return None if a is None or b is None else a + b
    if op in ("Less", "Greater") and len(i_s) == 2:
        left, right = i_s if op == "Less" else i_s[::-1]
        c = _count(left, prod, info, counters, outs)
        if c is None or right not in inv:
            return None
        return [(c[0], c[1], right)]
    return None


def _count(s, prod, info, counters, outs):
    """``(base, offset)`` if slot ``s`` is the iteration number (base None), a counter's
    value (base k) or its next value (offset 1), through Casts to numbers."""
    if s == 0:
        return (None, 0)
    for k in counters:
        if s == 2 + k:
            return (k, 0)
        if s == outs[1 + k]:
            return (k, 1)
    j = prod.get(s)
    if j is None:
        return None
    st, i_s, _ = info[j]
    op = _op(st)
    if op == "Identity" or (op == "Cast" and st[1][2].get("to") in _NUMBERS):
        return _count(i_s[0], prod, info, counters, outs)
    return None


class _Cell:
    """A cell found by structure in a Loop's or a Scan's body (:func:`_cell`): the plan
    of each call's weights (:meth:`_plan`, :func:`_make`) and the probes of its steps
    (:meth:`probe`).  What is the node's own (how x_t and the states reach the body's
    value list, and how a call runs) is its subclass's: :class:`_Fusion` (a Loop),
    :class:`_ScanFusion` (a Scan).  ``roles``: per call, ``(x_t's, the mask's or None)``
    (what :meth:`_put` needs), part of the plan's signature."""

    # the node's own: put the probe rows ``x`` (and ``mask``) where the body reads them
    def _put(self, v, vals, roles, x, mask):     # pragma: no cover (subclasses')
        raise NotImplementedError

    def _plan(self, node, ins, vals, roles, dt, B, I, H):
        """(layer, the states' order (h[, c]) as indices into self.states, the state
        holding the last output under a mask or None, the layer's ``masked_output``) for
        this call's weights: found once per weights (the node's inputs the values the cell
        reads come from, ``ins`` the node step's inputs: compared by identity, then by
        value), dtype and roles; None: the body is no cell found here.  A value the cell
        reads that is zeros of the batch's rows (Keras's zero output at masked steps,
        made per call) is not a weight: it must be such zeros in every call."""
        zero = tuple(s for s, _ in self.inv_reads if _zero_rows(vals[s], B))
        pos = sorted(set().union(*(p for s, p in self.inv_reads if s not in zero)))
        key = [ins[k] for k in pos]
        sig = (dt, I, H, roles, zero, tuple(pos))
        c = self.cache
        if c is not None and c[1] == sig and all(
                _same_key(a, b, kept) for a, (b, kept) in zip(key, c[0])):
            return c[2]
        self.finite = {}
        try:
            plan = _make(self, node, vals, roles, dt, I, H, zero)
        except (ValueError, TypeError, IndexError, ArithmeticError, np.linalg.LinAlgError):
            plan = None
        finally:
            self.finite = None      # (it holds the probes' float64 weights)
        # (each key value and, unless it is read-only (the model's constants), a copy
        # of it: a fed array may be changed in place before the next call)
        self.cache = ([(k, None if _read_only(k) else k.copy()
                        if isinstance(k, np.ndarray) else None) for k in key], sig, plan)
        return plan

    def _layer_call(self, plan, x, st, mask=None):
        """The plan's layer run on ``x`` (T, B, I) from the states ``st`` (under a
        ``mask``, with the plan's ``masked_output``): ``(Y, {index into self.states:
        its new value})`` (the state repeating the last output under a mask: Y's last
        step), or None where x, a state or a result is not finite (_finite: op by op)."""
        layer, order, yk, mode = plan
        if not _finite(x, st):
            return None
        h0 = st[order[0]][None]
        hx = (h0, st[order[1]][None]) if len(order) == 2 else h0
        if mask is None:
            Y, hn = layer(x, hx)
        else:
            Y, hn = layer(x, hx, mask=mask, masked_output=mode)
        if not _finite(Y, hn if len(order) == 2 else (hn,)):
            return None
        new = {self.states[order[0]]: (hn[0] if len(order) == 1 else hn[0][0])}
        if len(order) == 2:
            new[self.states[order[1]]] = hn[1][0]
        if yk is not None:
            new[self.states[yk]] = Y[-1].copy()
        return Y, new

    # --------------------------------------------------------------------- probing
    def probe(self, vals, roles, x, states, mask=None, force=None, zero=(), probe=True):
        """The value list after the cell's steps ran on rows ``x``, ``states`` and the
        mask rows ``mask`` (``vals``: the call's, after the invariant steps; ``force``:
        slot -> a value put in every element of that step output; ``zero``: slots of zeros of
        the batch's rows, made zeros of the probe's; ``probe``: False, the body's own steps
        alone, no :func:`_probe_matmul`)."""
        v = list(vals)
        self._put(v, vals, roles, x, mask)
        for s in zero:
            v[s] = np.zeros((len(x),) + vals[s].shape[1:], vals[s].dtype)
        for sl, s in zip(self.state_in, states):
            v[sl] = s
        for run, o_s in zip(self.probe_cell if probe else self.cell, self.cell_outs):
            run(v)
            if force:
                for o in o_s:
                    if o in force:
                        v[o] = np.full_like(v[o], force[o])
        return v


class _Fusion(_Cell):
    """A Loop's cell found by structure (:func:`analyse`); :meth:`run` runs a call as
    one layer call where its values allow, else returns None."""

    # ------------------------------------------------------------------------ a call
    def run(self, loop, ins):
        K = loop.K
        M, cond = ins[0], ins[1]
        num = (np.ndarray, np.generic)
        if cond is not None and not (isinstance(cond, num) and cond.dtype == np.bool_
                                     and cond.size == 1 and bool(cond.reshape(()))):
            return None
        if M is not None and not (isinstance(M, num) and M.dtype.kind in "iu"
                                  and M.size == 1):
            return None
        t0 = {}
        for k in self.counters:
            t = ins[2 + k]
            # (int32 / int64 only: a narrower counter wraps around op by op, and its
            # final value t0 + n may not fit it)
            if not (isinstance(t, num) and t.dtype in (np.int32, np.int64) and t.size == 1):
                return None
            t0[k] = int(t.reshape(()))
        vals = _call_values(loop, ins)
        if vals is None:
            return None
        roles = self._roles(vals)
        if roles is None:
            return None
        (xs, _, xk), m = roles
        X = vals[xs]
        T, B, I = X.shape
        dt = X.dtype
        st = [vals[2 + k] for k in self.states]
        H = _state_size(st, dt, B)
        if H is None:
            return None
        n = self._trips(vals, t0, M, loop.limit.n)
        if n is None or not 0 <= t0[xk] <= T - n:
            return None
        mask = None
        if m is not None:
            mv = vals[m[0]]
            tm = t0[m[2]]
            if mv.shape[1:] not in ((B,), (B, 1)) or not 0 <= tm <= mv.shape[0] - n:
                return None
            mask = mv[tm:tm + n].reshape(n, B)
        plan = self._plan(loop, ins, vals, roles, dt, B, I, H)
        if plan is None:
            return None
        yk, mode = plan[2:]
        if mode == "carry" and st[yk].any():
            return None         # (the layer's masked steps repeat a zero first output)
        # (under a mask the body selects by arithmetic, m * new + (1 - m) * old, so a
        # NaN or inf at a masked step gives NaN there (0 * inf), where the layer's
        # select does not: _layer_call runs such calls op by op, as any non-finite one)
        got = self._layer_call(plan, X[t0[xk]:t0[xk] + n], st, mask)
        if got is None:
            return None
        Y, new = got
        res = []
        for k in range(K):
            if k in self.counters:
                r = np.asarray(np.add(ins[2 + k], self.counters[k]))
                r[...] = t0[k] + n
                res.append(r)
            elif k in new:
                res.append(new[k])
            else:
                res.append(ins[2 + k])
        for j in range(len(self.scan)):
            res.append(Y if j == 0 else Y.copy())
        return res

    def _roles(self, vals):
        """((source slot, Gather output slot, counter) of x_t, the same of the mask or
        None) for the call's values, or None: x a float (T, B, I), the mask bool."""
        x = m = None
        for g in self.gathers:
            v = vals[g[0]]
            if v.__class__ is not np.ndarray:
                return None
            if v.dtype == np.bool_ and m is None:
                m = g
            elif v.dtype in (np.float32, np.float64) and v.ndim == 3 and x is None:
                x = g
            else:
                return None
        return None if x is None or (m is None) != (len(self.gathers) == 1) else (x, m)

    def _trips(self, vals, t0, M, limit):
        """The number of iterations the Loop runs (None: not found here)."""
        n = None
        for base, off, r in self.terms:
            R = vals[r]
            if not (isinstance(R, (np.ndarray, np.generic)) and R.size == 1
                    and R.dtype.kind in "iuf"):
                return None
            R = float(R.reshape(()))
            start = 0 if base is None else t0[base]
            if not (abs(R) < _EXACT and abs(start) < _EXACT):
                return None
            # iteration k (from 0) goes on while start + off + k < R
            nj = max(0, math.ceil(R - start - off)) + 1
            n = nj if n is None else min(n, nj)
        if M is not None:
            n = min(n, int(M.reshape(())))
        elif n > limit:
            return None
        if n < 1 or n >= _EXACT:
            return None
        return n

    def _put(self, v, vals, roles, x, mask):
        """A Loop's probe: ``x`` as X's only row read (X's slot: ``x[None]``, its
        counter 0), the mask so."""
        (xs, _, xk), m = roles
        v[xs] = x[None]
        v[2 + xk] = np.zeros_like(vals[2 + xk])
        if m is not None:
            v[m[0]] = mask.reshape((1, len(mask)) + vals[m[0]].shape[2:])
            v[2 + m[2]] = np.zeros_like(vals[2 + m[2]])


class _ScanFusion(_Cell):
    """A Scan's cell found by structure (:func:`analyse_scan`); :meth:`run` runs a call
    as one layer call where its values allow, else returns None.  ``roles``: ``(x_t's
    slot, None)`` (no mask)."""

    def run(self, scan, ins):
        N, nd = scan.N, np.ndarray
        X = ins[N]
        if X.__class__ is not nd or X.ndim != 3 or X.dtype not in (np.float32, np.float64):
            return None
        a = scan.in_axes[0]
        if not -3 <= a < 3 or any(not -3 <= b <= 2 for b in scan.out_axes):
            return None             # (op by op: the error)
        # step i reads x[i] of x (T, B, I): X with its scan axis first, reversed for a
        # reverse scan input
        x = np.moveaxis(X, a, 0)
        if scan.in_dirs[0]:
            x = x[::-1]
        T, B, I = x.shape
        dt = X.dtype
        st = [ins[k] for k in self.states]
        H = _state_size(st, dt, B)
        if H is None or T < 1 or I < 1:
            return None
        vals = _call_values(scan, ins)
        if vals is None:
            return None
        plan = self._plan(scan, ins, vals, (self.x_slot, None), dt, B, I, H)
        if plan is None:
            return None
        got = self._layer_call(plan, x, st)
        if got is None:
            return None
        Y, new = got
        res = [new[k] if k in new else ins[k] for k in range(N)]
        # each scan output: Y (the steps' order), reversed for a reverse one, its step
        # axis moved to the output's axis; an array of its own (as np.stack's)
        mine = True
        for k in range(scan.K):
            y = Y[::-1] if scan.out_dirs[k] else Y
            b = scan.out_axes[k] % 3
            if b:
                y = np.moveaxis(y, 0, b)
            if y is Y:
                res.append(Y if mine else Y.copy())
                mine = False
            else:
                res.append(np.ascontiguousarray(y))
        return res

    def _put(self, v, vals, roles, x, mask):
        """A Scan's probe: ``x`` as x_t."""
        v[roles[0]] = x


def _state_size(st, dt, B):
    """H of the call's states ``st`` where each is a (B, H) ndarray of dtype ``dt``
    (B, H >= 1), else None (op by op)."""
    nd = np.ndarray
    H = st[0].shape[-1] if st[0].__class__ is nd and st[0].ndim == 2 else -1
    if any(s.__class__ is not nd or s.dtype != dt or s.shape != (B, H) for s in st) \
            or B < 1 or H < 1:
        return None
    return H


def _call_values(node, ins):
    """The value list of a fused call of a Loop or Scan ``node`` (its step's inputs
    ``ins``) after the steps run once a call, or None where one fails (op by op: the
    error, named)."""
    vals = node.values(ins)
    try:
        for run in node._pre:
            run(vals)
    except Exception:
        return None
    return vals


def _finite(a, more=()) -> bool:
    """Whether ``a`` and the arrays ``more`` hold no NaN or inf.  A fused call's
    inputs and states, and its layer's results, must not: the body's own ops give IEEE
    values there (0 * inf = NaN, sigmoid(-inf) = 0 exactly) the layer's kernels do not
    keep (vector sigmoid and tanh, a select under a mask), so such calls run op by op."""
    return bool(np.isfinite(a).all()) and all(bool(np.isfinite(b).all()) for b in more)


def _read_only(a) -> bool:
    """An array nothing changes: one a model keeps (its constants, read-only since
    loading: onnx._freeze notes them).  A fed array, even read-only, may be changed in
    place (its flag set back, memory writeable elsewhere): compared by value."""
    from .onnx import _KEPT
    return isinstance(a, np.ndarray) and not a.flags.writeable and _KEPT.get(id(a)) is a


def _same_key(a, b, kept) -> bool:
    """Whether key value ``a`` of this call is the one the plan was made for: ``b``
    itself, read-only, or an array equal to ``kept`` (b's copy then)."""
    if a is b and kept is None:
        return True
    ref = b if kept is None else kept
    return (isinstance(a, np.ndarray) and isinstance(ref, np.ndarray)
            and a.shape == ref.shape and a.dtype == ref.dtype and np.array_equal(a, ref))


def _zero_rows(v, B) -> bool:
    return (v.__class__ is np.ndarray and v.dtype.kind == "f" and v.ndim >= 1
            and v.shape[0] == B and not v.any())


def _close(a, b, tol) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= tol * (1 + np.abs(b))))


def _make(f, node, vals, roles, dt, I, H, zero):
    """The plan of :meth:`_Cell._plan` for the call's values ``vals`` (``node``: the
    LoopNode or ScanNode), or None."""
    S = len(f.states)
    masked = roles[1] is not None
    rng = np.random.default_rng(0)
    nr = _RANDOM_ROWS
    v64 = list(vals)                # (the values the cell reads, in float64)
    for sl, _ in f.inv_reads:
        a = vals[sl]
        if isinstance(a, np.ndarray) and a.dtype == np.float32:
            v64[sl] = a.astype(np.float64)
    # the activations' inputs (no activation: the states, a linear cell): which are
    # affine (an affine combination of random rows gives the same combination of
    # values), and which states they read (each changed alone); unit rows are for the
    # states the affine ones read (an LSTM's h, not its c nor a masked cell's output)
    watch = [i for _, i, _ in f.acts] or list(f.state_out)
    xs = rng.standard_normal((nr, I))
    ss = [rng.uniform(-1, 1, (nr, H)) for _ in range(S)]
    xb = rng.standard_normal((nr, I))
    sb = [rng.uniform(-1, 1, (nr, H)) for _ in range(S)]
    on = np.ones(nr, bool) if masked else None
    pc = f.probe(v64, roles, np.vstack([xs, xb, 0.3 * xs + 0.7 * xb]),
                 [np.vstack([a, b, 0.3 * a + 0.7 * b]) for a, b in zip(ss, sb)],
                 None if on is None else np.ones(3 * nr, bool), zero=zero)
    linear = {}
    for i in watch:
        q = np.asarray(pc[i])
        linear[i] = q.ndim == 2 and q.shape[0] == 3 * nr and _close(
            q[2 * nr:], 0.3 * q[:nr] + 0.7 * q[nr:2 * nr], 1e-9)
    base = f.probe(v64, roles, xs, ss, on, zero=zero)
    reads = []
    for s in range(S):
        other = list(ss)
        other[s] = sb[s]
        p = f.probe(v64, roles, xs, other, on, zero=zero)
        if any(linear[i] and not np.array_equal(p[i], base[i]) for i in watch):
            reads.append(s)
    # the probe the cell is told by: a row of zeros and the random rows
    x = np.vstack([np.zeros((1, I)), xs])
    sts = [np.vstack([np.zeros((1, H)), s_]) for s_ in ss]
    ones = np.ones(1 + nr, bool) if masked else None
    v = f.probe(v64, roles, x, sts, ones, zero=zero)
    units = [(None, j) for j in range(I)] + [(s, j) for s in reads for j in range(H)]
    chunks = [units[c:c + _CHUNK] for c in range(0, len(units), _CHUNK)]

    def fit(slots, force=None):
        """Per slot, ``(W (I, m), [R_s (H, m)], b (m,))`` of its value if it is affine in
        ``x`` and the states read, else None: the bias from the zero row, a weight row
        from each unit row (run _CHUNK at a time, kept in the call's dtype: exact, the
        body's weights are of it), checked on the random rows.  ``force``: slot -> a
        value put in every element of that step output."""
        pz = v if force is None else f.probe(v64, roles, x, sts, ones, force, zero)
        base = {}
        for sl in slots:
            p0 = np.asarray(pz[sl])
            if (force is not None or linear.get(sl, True)) and p0.ndim == 2 and \
                    p0.shape[0] == 1 + nr and p0.dtype == np.float64:
                base[sl] = p0
        got: dict = {sl: [] for sl in base}
        for ch in chunks:
            xc = np.zeros((len(ch), I))
            sc = [np.zeros((len(ch), H)) for _ in range(S)]
            for r, (s, j) in enumerate(ch):
                (xc[r] if s is None else sc[s][r])[j] = 1.0
            pc = f.probe(v64, roles, xc, sc, None if ones is None else np.ones(len(ch), bool),
                         force, zero)
            for sl in list(got):
                g = np.asarray(pc[sl])
                if g.shape != (len(ch), base[sl].shape[1]):
                    del got[sl]
                else:
                    got[sl].append((g - base[sl][0]).astype(dt, copy=False))
        res = []
        for sl in slots:
            if sl not in got:
                res.append(None)
                continue
            p0 = base[sl]
            b = p0[0]
            D = np.concatenate(got.pop(sl))     # (I >= 1: never empty)
            W = D[:I]
            # (a state not read: zeros, a view of one element)
            Rs = [np.broadcast_to(dt.type(0), (H, p0.shape[1])) for _ in range(S)]
            for k, s in enumerate(reads):
                Rs[s] = D[I + k * H:I + (k + 1) * H]
            pred = b + xs @ W + sum(ss[s] @ Rs[s] for s in reads)
            res.append((W, Rs, b) if _close(p0[1:], pred, 1e-9) else None)
        return res

    outs = [v[o] for o in f.state_out]
    fits = fit([i for _, i, _ in f.acts])
    # (under a mask: each state in turn the one repeating the last output, until one
    # passes every check below)
    v0 = f.probe(v64, roles, xs, ss, ~on, zero=zero) if masked else None
    for yk in (range(S) if masked else (None,)):
        cell = [s for s in range(S) if s != yk]
        found = _classify(f, v, x, sts, fits, outs, cell, H, fit, f.made)
        if found is None:
            continue
        op, attrs, order, W, R, Bias, used = found
        if yk is not None and not np.array_equal(outs[yk], outs[order[0]]):
            continue
        # the gates read the h state alone
        if any(not _close(fits[j][1][s], 0 * fits[j][1][s], 1e-9)
               for j in used for s in range(S) if s != order[0]):
            continue
        # the scan outputs: the new h (under a mask: the output repeated at masked steps)
        if any(not np.array_equal(v[s], outs[order[0]]) for s in f.scan):
            continue
        mode = None
        if masked:
            # all masked: every state as it was, but the output state y; y and the scan
            # outputs as y was (the layer's masked_output "carry") or zero ("zero":
            # Keras's Bidirectional with return_sequences)
            if any(not _close(v0[o], ss[s], 0) for s, o in enumerate(f.state_out)
                   if s != yk):
                continue
            for mode, want in (("carry", ss[yk]), ("zero", 0 * ss[yk])):
                if all(_close(v0[o], want, 0) for o in [f.state_out[yk]] + f.scan):
                    break
            else:
                continue
        break
    else:
        return None
    v64.clear()                     # (the probes' float64 copies: done with)
    fits = v = None
    from .onnx import _RecurrentNode
    onode = SimpleNamespace(op_type=op, input=["x", "W", "R", "B"])
    attrs = dict(attrs, hidden_size=H)
    rec = _RecurrentNode(onode, attrs, {}, f"{node.where}: its body as one {op} layer",
                         node.num_threads)
    # (no copy where it is one already: made here, the layer owns it)
    W, R, Bias = (np.ascontiguousarray(a.astype(dt, copy=False)[None])
                  for a in (W, R, Bias))
    layer = rec._get_layer(W, R, Bias, None, own=True)
    # the check: the layer and the body's own ops, in the call's dtype, on random rows
    # (under a mask: some rows masked, the repeated output starting at zero)
    tol = 1e-4 if dt == np.float32 else 1e-10
    for scale in (1.0, 3.0):
        xr = (rng.standard_normal((6, I)) * scale).astype(dt)
        sr = [rng.uniform(-1, 1, (6, H)).astype(dt) for _ in range(S)]
        mr = None
        if masked:
            sr[yk][...] = 0
            mr = np.array([True, False] * 3)
        ref = f.probe(vals, roles, xr, sr, mr, zero=zero, probe=False)
        h0 = sr[order[0]][None]
        hx = (h0, sr[order[1]][None]) if len(order) == 2 else h0
        if mr is None:
            Y, hn = layer(xr[None], hx)
        else:
            Y, hn = layer(xr[None], hx, mask=mr[None], masked_output=mode)
        got = {order[0]: hn[0][0] if len(order) == 2 else hn[0]}
        if len(order) == 2:
            got[order[1]] = hn[1][0]
        if yk is not None:
            got[yk] = Y[0]
        for s in range(S):
            r = ref[f.state_out[s]]
            if not (isinstance(r, np.ndarray) and r.dtype == dt and _close(got[s], r, tol)):
                return None
        # (a scan output of another dtype than the layer's, a Cast of h: op by op)
        for s in f.scan:
            r = ref[s]
            if not (isinstance(r, np.ndarray) and r.dtype == dt and _close(Y[0], r, tol)):
                return None
    return layer, order, yk, mode


_NP_ACTS = {"Sigmoid": lambda a: 1 / (1 + np.exp(-a)), "Tanh": np.tanh,
            "Relu": lambda a: np.maximum(a, 0)}


def _key(f, j):
    """Activation j's kind and parameters (HardSigmoid's alpha, beta)."""
    op, _, o = f.acts[j]
    return op, f.params.get(o)


def _act_attrs(f, js) -> dict:
    """The ONNX ``activations`` (and ``activation_alpha`` / ``_beta``: HardSigmoid's, and
    Affine's 1, 0) of activations ``js``, in the node's order (None: none, a linear
    candidate or output: ONNX's Affine of alpha 1, beta 0)."""
    names, ps = [], []
    for j in js:
        if j is None:
            names.append("Affine")
            ps.append((1.0, 0.0))
            continue
        names.append(f.acts[j][0])
        if f.acts[j][2] in f.params:
            ps.append(f.params[f.acts[j][2]])
    attrs = {"activations": names}
    if ps:
        attrs["activation_alpha"] = [a for a, _ in ps]
        attrs["activation_beta"] = [b for _, b in ps]
    return attrs


def _classify(f, v, x, sts, fits, outs, cell, H, fit, slots=()):
    """The cell of states ``cell`` (indices into f.states) found in the probe ``v``:
    (op, attrs, the states' order (h[, c]), W, R, B in ONNX's layout, the activations
    whose fits were used), or None.  Keras's activations: the gates' (its
    ``recurrent_activation``) act on affine inputs, its ``activation`` on the candidate
    (affine in an LSTM) and on an LSTM's new c; any of Sigmoid, Tanh, Relu, or none
    (``linear``: ONNX's Affine of alpha 1, beta 0; a GRU's or an LSTM's candidate is
    then looked for among the values ``slots`` of the cell's steps)."""
    acts = f.acts
    aff = [j for j in range(len(acts)) if fits[j] is not None]
    rest = [j for j in range(len(acts)) if fits[j] is None]
    if len(cell) == 1 and len(acts) == 1:
        op, _, o = acts[0]
        if fits[0] is None or not np.array_equal(v[o], outs[cell[0]]):
            return None
        W, Rs, b = fits[0]
        return ("RNN", _act_attrs(f, [0]), (cell[0],), W.T, Rs[cell[0]].T,
                np.concatenate([b, np.zeros(H)]), (0,))
    if len(cell) == 1 and not acts:     # (linear: the new h itself affine)
        lin = fit([f.state_out[cell[0]]])[0]
        if lin is None:
            return None
        W, Rs, b = lin
        for s in range(len(Rs)):
            if s != cell[0] and not _close(Rs[s], 0 * Rs[s], 1e-9):
                return None
        return ("RNN", _act_attrs(f, [None]), (cell[0],), W.T, Rs[cell[0]].T,
                np.concatenate([b, np.zeros(H)]), ())
    if len(cell) == 1 and len(acts) in (2, 3) and len(aff) == 2 and \
            _key(f, aff[0]) == _key(f, aff[1]):
        # (two gates and the candidate's activation, or none: a linear candidate)
        return _gru(f, v, x, sts, fits, outs, cell[0], H, fit, aff,
                    rest[0] if rest else None, slots)
    if len(cell) == 2 and len(acts) == 5 and len(rest) == 1:
        return _lstm(f, v, sts, fits, outs, cell, H, aff, rest[0])
    if len(cell) == 2 and len(acts) == 3 and len(aff) == 3 and \
            len({_key(f, j) for j in aff}) == 1:
        # (three gates: a linear candidate and output)
        return _lstm(f, v, sts, fits, outs, cell, H, aff, None, slots, fit)
    return None


def _candidates(v, slots, shape):
    """The slots of ``slots`` whose probe values are float64 arrays of ``shape``, each
    once: where a linear candidate may be."""
    seen, out = set(), []
    for s in slots:
        a = v[s]
        if s not in seen and a.__class__ is np.ndarray and a.dtype == np.float64 \
                and a.shape == shape:
            seen.add(s)
            out.append(s)
    return out


def _gru(f, v, x, sts, fits, outs, hs, H, fit, gates, nj, slots=()):
    """A GRU (Keras's: ``h' = z h + (1 - z) n``) of state ``hs`` found in the probe
    ``v`` (``gates``: the activations of affine inputs, z and r; ``nj``: the
    candidate's, None: none, the candidate n is one of the values ``slots``: a linear
    candidate, affine with the reset gate fixed), or None."""
    h = sts[hs]
    if nj is not None:      # (n and its activation's input)
        cands = [(f.acts[nj][2], f.acts[nj][1])]
    else:
        cands = [(s, s) for s in _candidates(v, slots, outs[hs].shape)]
    for zj, rj in (gates, gates[::-1]):
        z = v[f.acts[zj][2]]
        for n_s, pre_s in cands:
            if not _close(z * h + (1 - z) * v[n_s], outs[hs], 1e-9):
                continue
            got = _gru_weights(f, v, x, h, fits, hs, H, fit, zj, rj, nj, pre_s)
            if got is not None:
                return got
    return None


def _gru_weights(f, v, x, h, fits, hs, H, fit, zj, rj, nj, pre_s):
    """The GRU of :func:`_gru` of gates ``zj``, ``rj`` whose candidate's input (its
    activation's, or the candidate itself: ``nj`` None) is in slot ``pre_s``: that input
    read again with the reset gate forced to 1 and to 0 gives its weights and tells
    whether the reset gate acts after the recurrent product or before it; or None."""
    r_out = f.acts[rj][2]
    a1, = fit([pre_s], {r_out: 1.0})
    a0, = fit([pre_s], {r_out: 0.0})
    if a1 is None or a0 is None:
        return None
    Wn, Rn1, b1 = a1
    Wn0, Rn0, b0 = a0
    Rn = Rn1[hs]
    if not (_close(Wn0, Wn, 1e-9) and all(_close(r, 0 * r, 1e-9) for r in Rn0)
            and all(_close(r, 0 * r, 1e-9) for s, r in enumerate(Rn1) if s != hs)):
        return None
    r = v[r_out]
    pre = v[pre_s]
    xW = x @ Wn
    if _close(pre, xW + b0 + r * (h @ Rn + (b1 - b0)), 1e-9):
        lbr, Rbn = 1, b1 - b0
    elif _close(b1, b0, 1e-12) and _close(pre, xW + b0 + (r * h) @ Rn, 1e-9):
        lbr, Rbn = 0, np.zeros(H)
    else:
        return None
    (Wz, Rz, bz), (Wr, Rr, br) = fits[zj], fits[rj]
    W = np.concatenate([Wz.T, Wr.T, Wn.T])
    R = np.concatenate([Rz[hs].T, Rr[hs].T, Rn.T])
    Bias = np.concatenate([bz, br, b0, np.zeros(2 * H), Rbn])
    attrs = dict(_act_attrs(f, [zj, nj]), linear_before_reset=lbr)
    return "GRU", attrs, (hs,), W, R, Bias, (zj, rj)


def _lstm(f, v, sts, fits, outs, cell, H, aff, cj, slots=(), fit=None):
    """An LSTM (Keras's: ``c' = f c + i g``, ``h' = o act(c')``) of the states ``cell``
    found in the probe ``v`` (``aff``: the activations of affine inputs, the gates' and
    the candidate's; ``cj``: the one of the new c; None: none, ``aff`` the gates', the
    candidate g affine and one of the values ``slots``, ``h' = o c'``), or None."""
    if cj is None:
        return _lstm_linear(f, v, sts, fits, outs, cell, H, aff, slots, fit)
    act = f.acts[cj][0]
    out_act = _NP_ACTS.get(act)
    if out_act is None:
        return None
    for gj in aff:
        gates = [j for j in aff if j != gj]
        if f.acts[gj][0] != act or len({_key(f, j) for j in gates}) != 1:
            continue
        g = v[f.acts[gj][2]]
        for hs, cs in (cell, cell[::-1]):
            c = sts[cs]
            for ij, fj, oj in itertools.permutations(gates):
                i_, f_, o_ = (v[f.acts[j][2]] for j in (ij, fj, oj))
                c_new = f_ * c + i_ * g
                if _close(c_new, outs[cs], 1e-9) and \
                        _close(o_ * out_act(c_new), outs[hs], 1e-9):
                    order = (ij, oj, fj, gj)        # (ONNX's gate order: i, o, f, c)
                    W = np.concatenate([fits[j][0].T for j in order])
                    R = np.concatenate([fits[j][1][hs].T for j in order])
                    Bias = np.concatenate([fits[j][2] for j in order] + [np.zeros(4 * H)])
                    attrs = _act_attrs(f, [ij, gj, cj])
                    return "LSTM", attrs, (hs, cs), W, R, Bias, order
    return None


def _lstm_linear(f, v, sts, fits, outs, cell, H, gates, slots, fit):
    """The LSTM of :func:`_lstm` with a linear candidate and output: gates ``gates``
    (i, f, o in some order) with ``h' = o c'``, and a value of ``slots`` that is g in
    ``c' = f c + i g``, affine in x and h alone; or None."""
    for hs, cs in (cell, cell[::-1]):
        c = sts[cs]
        cands = _candidates(v, slots, outs[cs].shape)
        for ij, fj, oj in itertools.permutations(gates):
            i_, f_, o_ = (v[f.acts[j][2]] for j in (ij, fj, oj))
            if not _close(o_ * outs[cs], outs[hs], 1e-9):
                continue
            for s in cands:
                if not _close(f_ * c + i_ * v[s], outs[cs], 1e-9):
                    continue
                gf, = fit([s])
                if gf is None or any(not _close(r, 0 * r, 1e-9)
                                     for k, r in enumerate(gf[1]) if k != hs):
                    continue
                fs = [fits[ij], fits[oj], fits[fj], gf]     # (ONNX's order: i, o, f, c)
                W = np.concatenate([a[0].T for a in fs])
                R = np.concatenate([a[1][hs].T for a in fs])
                Bias = np.concatenate([a[2] for a in fs] + [np.zeros(4 * H)])
                attrs = _act_attrs(f, [ij, None, None])
                return "LSTM", attrs, (hs, cs), W, R, Bias, (ij, oj, fj)
    return None
