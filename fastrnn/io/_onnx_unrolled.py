"""Unrolled recurrences in ONNX graphs, run as one fastrnn layer call.

torch's default ONNX exporter (``dynamo=True``) has no RNN node for ``nn.RNN``: it
writes the layer out step by step.  Per layer and direction, the input projection of all
steps at once, ``P = X @ W + b_ih`` (X time-major ``(T, B, I)``), then for each step

    h_t = act(h_{t-1} @ R + b_hh + P[t])          act: Tanh or Relu

(``P[t]`` read by Slice + Squeeze, by SplitToSequence + SequenceAt, or from a reversed
copy of P for the reverse direction; the first step with a zero initial state folded
into a constant ``C + P[0]``).  Run op by op that is ~6 NumPy calls a step;
:func:`fuse` finds such chains in a kept program's steps (``_Program``) and runs each
as one :class:`fastrnn.SimpleRNN` call, which gives the same numbers up to float
rounding.

Loops of ``LSTMCell`` / ``GRUCell`` / ``RNNCell`` written out the same way (each step a
Gemm of its input and one of the state, with weights shared by every step, and torch's
cell math) run as one LSTM / GRU / SimpleRNN call where every step reads a row of one
input (:func:`_cell_plans`), else step by step, each step's ops as one step of the
layer (:func:`_step_plans`: an autoregressive decoder).

What is fused is checked twice: by structure (the ops, constant weights, one link
per step; for cells, only the ops torch's decomposition uses) and by value: the ops as
the interpreter runs them and the layer are both run on random inputs of the call's
shapes (and at a spread where ``x @ W`` is ~1) and must agree (a misread pattern is
never fused, it runs op by op as before).  Which rows each step reads is found by
running the steps' own selection ops on a probe array of distinct values; which values
are a cell loop's h and c, by running torch's cell math on the program's values for
random inputs.
"""
from __future__ import annotations

import numpy as np

from .._threads import CALL_SCOPE, _scope

_ACTS = {"Tanh": "tanh", "Relu": "relu"}
# ops that may stand between P and a step's P[t] (data input first, other inputs fixed)
_PICK = frozenset({"Slice", "Squeeze", "Gather", "SequenceAt", "SplitToSequence",
                   "Identity", "Reshape", "Unsqueeze"})
_MIN_STEPS = 2          # chains shorter than this run op by op
# the ops torch's decomposition of a cell's step is made of (a cell loop's steps: _cell_plan);
# (Relu only for a relu RNNCell; Cast / CastLike only to a float type).  Any other op,
# Clip, Max, Where, ..., may act only on values random inputs never reach (a ReLU6
# RNNCell: Clip(0, 6); a clipped cell state): the random checks cannot rule it out
_CELL_OPS = _PICK | {"Gemm", "MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Split",
                     "Cast", "CastLike"}


class _Graph:
    """Read-only questions about a program's dynamic steps."""

    def __init__(self, prog, model, dyn, env, want, readers):
        self.prog, self.model, self.dyn, self.env = prog, model, dyn, env
        self.want, self.readers = set(want), readers
        self.prod = {}
        for k, step in enumerate(dyn):
            for n in step[3]:
                if n:
                    self.prod[n] = k

    def op(self, k):
        step = self.dyn[k]
        return step[1][1] if step[0] == "op" else None

    def const(self, n):
        """The value of ``n`` if it is the same in every call (None: not so)."""
        if not n or not self.prog._fixed(self.model, n):
            return None
        v = self.prog.base.get(n)
        return self.model._consts.get(n) if v is None else v

    def private(self, n) -> bool:
        """Read by one step only, and not a wanted output."""
        return n not in self.want and len(self.readers.get(n, ())) == 1

    def matmul(self, k):
        """(data input, weight as (K, N) for ``data @ weight``, bias or None) of a MatMul
        / Gemm step whose weight is a 2-D constant of the model, else None."""
        kind, obj, ins, outs, _ = self.dyn[k]
        op = self.op(k)
        if op == "MatMul" and len(ins) == 2:
            w = self.model._consts.get(ins[1]) if self.prog._fixed(self.model, ins[1]) \
                else None
            return (ins[0], w, None) if isinstance(w, np.ndarray) and w.ndim == 2 else None
        if op == "Gemm":
            a = obj[2]
            w = self.model._consts.get(ins[1]) if self.prog._fixed(self.model, ins[1]) \
                else None
            if (not isinstance(w, np.ndarray) or w.ndim != 2 or a.get("transA", 0)
                    or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
                return None
            c = None
            if len(ins) > 2 and ins[2]:
                c = self.const(ins[2])
                if c is None:
                    return None
            return ins[0], (w.T if a.get("transB", 0) else w), c
        return None


def _terms(g, n, adds, leaves):
    """Flatten the Add tree under value ``n`` (Adds read once) into ``leaves`` (without
    recursion: a chain of thousands of Adds before a Tanh is a valid graph)."""
    stack = [n]
    while stack:
        n = stack.pop()
        k = g.prod.get(n)
        if k is not None and g.op(k) == "Add" and g.private(n) and len(g.dyn[k][2]) == 2:
            adds.append(k)
            stack.extend(reversed(g.dyn[k][2]))
        else:
            leaves.append(n)


class _Step:
    __slots__ = ("act", "kind", "ops", "h", "hp", "R", "bias", "x", "consts", "mm")

    def __init__(self, act, kind, h):
        self.act, self.kind, self.h = act, kind, h
        self.ops, self.hp, self.R, self.bias, self.x = [act], None, None, [], None
        self.consts, self.mm = [], []


def _candidate(g, k):
    """A step ``h = act(sum of terms)`` at act step ``k``: its constant terms, its
    MatMul / Gemm terms with constant weights and the rest (None: not such a step)."""
    kind, obj, ins, outs, _ = g.dyn[k]
    if kind != "op" or obj[1] not in _ACTS or len(ins) != 1 or not outs[0]:
        return None
    s = _Step(k, _ACTS[obj[1]], outs[0])
    adds, leaves = [], []
    _terms(g, ins[0], adds, leaves)
    s.ops += adds
    rest = []
    for n in leaves:
        c = g.const(n)
        if c is not None:
            s.consts.append(c)
            continue
        p = g.prod.get(n)
        mm = g.matmul(p) if p is not None and g.private(n) else None
        if mm is not None:
            s.mm.append((p, n, mm))
        else:
            rest.append(n)
    s.x = rest
    return s


def _row(v, H):
    """The one row all of constant ``v``'s rows (over its last axis) equal, or None."""
    if v.shape[-1:] != (H,) and v.size != 1:
        return None
    r = np.broadcast_to(v, v.shape[:-1] + (H,)).reshape(-1, H)
    return r[0] if (r == r[0]).all() else None


def _fill(g, s, p, n, mm) -> bool:
    """Make MatMul / Gemm term ``(p, n, mm)`` step ``s``'s recurrent one: ``s.hp`` its
    data input, ``s.R`` its weight (H, H), ``s.bias`` the sum of the constant terms
    (one row, (H,)), ``s.x`` the one other term.  False where that does not fit."""
    hp, R, c = mm
    v = g.env.get(s.h)
    H = v.shape[-1] if isinstance(v, np.ndarray) and v.ndim else None
    if H is None or R.shape != (H, H):
        return False
    x = s.x + [m[1] for m in s.mm if m[0] != p]       # (a projection in the step: as x)
    bias = np.zeros(H, R.dtype)
    for v in s.consts + ([] if c is None else [c]):
        r = _row(np.asarray(v), H)
        if r is None:
            return False
        bias = bias + r
    if len(x) != 1:
        return False
    s.hp, s.R, s.bias, s.x = hp, R, bias, x
    s.ops.append(p)
    return True


def _link(g, cands):
    """Chains of steps, each step's recurrent MatMul reading the previous step's h (the
    first step's: an initial state, or none: _zero_start).  Lists of _Step."""
    by_h = {s.h: s for s in cands}
    nxt = {}                    # a step's h -> the step reading it as its state
    for s in cands:
        hits = [t for t in s.mm if t[2][0] in by_h]
        if len(hits) == 1 and hits[0][2][0] not in nxt and _fill(g, s, *hits[0]):
            nxt[s.hp] = s
    chains = []
    for s in cands:
        pred = by_h.get(s.hp) if s.R is not None else None
        if pred is None or (pred.R is not None and nxt.get(pred.h) is s
                            and _same_kind(pred, s)):
            continue            # (not a recurrent step, or not a chain's first)
        chain = [s]
        while chain[-1].h in nxt and _same_kind(chain[-1], nxt[chain[-1].h]):
            chain.append(nxt[chain[-1].h])
        if pred.R is None and (_zero_start(g, pred, s) or _state_start(g, pred, s)):
            chain.insert(0, pred)
        if len(chain) >= _MIN_STEPS:
            chains.append(chain)
    return chains


def _state_start(g, pred, s) -> bool:
    """Whether ``pred`` is the chain's first step from an initial state that no step
    makes (a graph input, zeros from the shapes): its one MatMul term of s's R."""
    terms = [t for t in pred.mm if t[2][1] is s.R or (t[2][1].shape == s.R.shape
                                                       and np.array_equal(t[2][1], s.R))]
    return (len(terms) == 1 and pred.kind == s.kind and _fill(g, pred, *terms[0])
            and _same_kind(pred, s))


def _same_kind(a, b) -> bool:
    return (a.R is not None and b.R is not None and a.kind == b.kind
            and (a.R is b.R or np.array_equal(a.R, b.R)) and np.array_equal(a.bias, b.bias))


def _zero_start(g, head, s) -> bool:
    """Whether ``head`` is ``act(C + x)`` with constant C = s's bias on every row: the
    first step from a zero state with ``0 @ R + b_hh`` folded (as the exporter writes it
    without dynamic shapes)."""
    if head.mm or len(head.x) != 1 or head.kind != s.kind:
        return False
    H = s.R.shape[0]
    total = np.zeros(H, s.bias.dtype)
    for v in head.consts:
        r = _row(np.asarray(v), H)
        if r is None:
            return False
        total = total + r
    if not np.array_equal(total, s.bias):
        return False
    head.R, head.bias, head.hp = s.R, s.bias, None
    return True


def _sources(g, xs, axes=(0,)):
    """How values ``xs`` are read from one 3-D value: (its name, the steps between it
    and them, the index each reads along ``axis``, axis), or None.  Found by running
    those steps, as the interpreter runs them, on a probe of distinct values."""
    ops, root = set(), None
    for n in xs:
        while True:
            k = g.prod.get(n)
            if k is None or g.op(k) not in _PICK or not all(
                    g.const(m) is not None for m in g.dyn[k][2][1:] if m):
                break
            ops.add(k)
            n = g.dyn[k][2][0]
        if root is None:
            root = n
        elif n != root:
            return None
    P = g.env.get(root)
    if not ops or not isinstance(P, np.ndarray) or P.ndim != 3:
        return None
    probe = np.arange(P.size, dtype=np.float64).reshape(P.shape)
    local = {root: probe}
    order = sorted(ops)
    try:
        for k in order:
            kind, (fn, op_type, attrs), ins, outs, _ = g.dyn[k]
            vals = [local[ins[0]]] + [g.const(m) if m else None for m in ins[1:]]
            for o, v in zip(outs, g.model._call(fn, op_type, vals, attrs, len(outs))):
                local[o] = v
    except Exception:
        return None
    rows, axis = [], None
    for n in xs:
        v = local.get(n)
        if not isinstance(v, np.ndarray) or not v.size:
            return None
        at = np.unravel_index(int(v.flat[0]), P.shape)
        for a in axes if axis is None else (axis,):
            t = int(at[a])
            want = np.take(probe, t, axis=a)
            if v.size == want.size and np.array_equal(v.reshape(want.shape), want):
                axis = a
                break
        else:
            return None
        rows.append(t)
    return root, order, rows, axis


def _projection(g, root):
    """P = X @ W (+ b): (X's name, W (I, H), b (H,) or None, the steps), or None."""
    k = g.prod.get(root)
    if k is None:
        return None
    steps, b = [k], None
    if g.op(k) == "Add":
        ins = g.dyn[k][2]
        for a, c in ((0, 1), (1, 0)):
            bias = g.const(ins[c])
            m = g.prod.get(ins[a])
            if bias is not None and m is not None and g.op(m) == "MatMul" and \
                    g.private(ins[a]):
                b, k = bias, m
                steps.append(m)
                break
        else:
            return None
    mm = g.matmul(k) if g.op(k) == "MatMul" else None
    if mm is None or mm[2] is not None:
        return None
    X, W = mm[0], mm[1]
    xv = g.env.get(X)
    if not isinstance(xv, np.ndarray) or xv.ndim != 3 or xv.shape[2] != W.shape[0]:
        return None
    if b is not None:
        b = _row(np.asarray(b), W.shape[1])
        if b is None:
            return None
    return X, W, b, steps


def fuse(prog, model, dyn, env, want, readers):
    """The fused steps of a program's dynamic steps ``dyn`` (first call's values
    ``env``): ({index: [steps (runner, getter, outputs, where)]}, covered indices);
    each runs before the step of its index (the first of the ops it replaces, or the
    first after its inputs are made)."""
    # (the checks run the graph on random inputs: a Log or Sqrt of one gives NaNs there,
    # which must neither warn the caller nor, under warnings as errors, stop the fusing;
    # np.errstate is the calling thread's own)
    with np.errstate(all="ignore"):
        return _fuse(prog, model, dyn, env, want, readers)


def _fuse(prog, model, dyn, env, want, readers):
    g = _Graph(prog, model, dyn, env, want, readers)
    at, covered = {}, set()

    def rnn_plans():
        cands = [s for s in (_candidate(g, k) for k, st in enumerate(dyn)
                             if st[0] == "op" and st[1][1] in _ACTS) if s is not None]
        return [_rnn_plan(g, c) for c in _link(g, cands)] if len(cands) >= _MIN_STEPS \
            else []
    plans = []
    # (finding them must never fail a call: what raises is left to run op by op)
    for find in (rnn_plans, lambda: list(_cell_plans(g))):
        try:
            plans += find()
        except Exception:
            pass
    flat = []
    for plan in plans:      # (a cell loop run step by step: a list of _OneStep)
        flat += plan if isinstance(plan, list) else [plan]
    for plan in flat:
        if plan is None:
            continue
        try:
            made = (_fused_step if isinstance(plan, _OneStep) else _fused)(g, plan, covered)
        except Exception:
            made = None
        if made is not None:
            k, step, own = made
            at.setdefault(k, []).append(step)    # (two may run before one step)
            covered |= own
    return at, covered


class _Plan:
    """A recurrence found in the graph, to run as one layer call: ``own`` the steps it
    replaces; the layer reads ``X`` (3-D, time along ``axis``) at ``rows`` (in order,
    one apart, up or down) from state ``h0`` (a value's name, or None: zeros; c0 is
    zeros); ``hs`` each step's h, ``cn`` the last step's c (LSTM: its name or None);
    ``layer(dtype)`` the layer; ``label`` for messages; ``scale`` the spread of random
    inputs X for which the layer's input projection is ~1 (_unit_scale)."""
    __slots__ = ("own", "X", "axis", "rows", "h0", "hs", "cn", "layer", "label", "scale")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _rnn_plan(g, chain):
    """The plan of an unrolled nn.RNN chain (_link): its inputs read from a projection
    P = X @ W (+ b) computed once."""
    src = _sources(g, [s.x[0] for s in chain])
    if src is None:
        # (a first step taken for a zero start, act(C + x), whose x is no row of the
        # projection: an act of something else that the chain starts from)
        if chain[0].hp is None and len(chain) > _MIN_STEPS:
            return _rnn_plan(g, chain[1:])
        return None
    root, pick, rows, _ = src
    proj = _projection(g, root)
    if proj is None:
        return None
    X, W, b, pstep = proj
    own = set(pstep) | set(pick)
    for s in chain:
        own.update(s.ops)
    first = chain[0]
    h0 = first.hp
    # (R's name from the last step: the first one's ops have no MatMul where it is the
    # zero start act(C + x), or act(x) without a bias, _zero_start)
    wname, rname = g.dyn[pstep[-1]][2][1], g.dyn[chain[-1].ops[-1]][2][1]
    H = first.R.shape[0]
    bih = np.zeros(H, W.dtype) if b is None else b

    def layer(dt):
        return _layer(g.model, "RNN", first.kind, (wname, rname), W, first.R, bih,
                      first.bias, dt)
    return _Plan(own=own, X=X, axis=0, rows=rows, h0=h0, hs=[s.h for s in chain], cn=None,
                 layer=layer, scale=_unit_scale(W),
                 label=f"{g.dyn[first.act][4]} .. {g.dyn[chain[-1].act][4]} "
                 f"(unrolled RNN, {len(chain)} steps, run as one SimpleRNN call)")


def _fused(g, plan, taken):
    """The fused step of ``plan``: (its index, the step, the steps it replaces), or None
    where it does not apply (then they run op by op)."""
    own, X, hs, rows = set(plan.own), plan.X, plan.hs, plan.rows
    n = len(rows)
    r0, step = rows[0], (rows[1] - rows[0] if n > 1 else 1)
    if n < _MIN_STEPS or step not in (1, -1) or rows != [r0 + step * k for k in range(n)]:
        return None
    xv = g.env.get(X)
    if not isinstance(xv, np.ndarray) or xv.ndim != 3 or plan.axis not in (0, 1):
        return None
    dt = xv.dtype
    if dt not in (np.float32, np.float64) or own & taken:
        return None
    hshape = g.env[hs[0]].shape
    B = xv.shape[1 - plan.axis]
    if any(g.env[h].shape != hshape for h in hs) or hshape[-1:] == () or \
            int(np.prod(hshape)) % B:
        return None
    H = int(np.prod(hshape)) // B
    # a Concat of the chain's h in order (or reversed) is the layer's output itself
    for h in (hs[-1], hs[0]):
        for k in g.readers.get(h, ()):
            kind, obj, ins, outs, _ = g.dyn[k]
            if (kind == "op" and obj[1] == "Concat" and list(ins) in (hs, hs[::-1])
                    and int(obj[2].get("axis", 0)) % len(hshape) == 0):
                own.add(k)
    cats = sorted(k for k in own if g.op(k) == "Concat")
    h0 = plan.h0
    if h0 is not None:
        v = g.env.get(h0)
        if h0 in g.prog.zero or (g.const(h0) is not None and not np.any(g.const(h0))):
            h0 = None
        elif not isinstance(v, np.ndarray) or v.size != B * H or v.dtype != dt:
            return None
    # what the fused step gives: the h read outside it, the Concats' outputs, the last c
    names = []
    for k in sorted(own):
        for o in g.dyn[k][3]:
            if o and (o in g.want or any(r not in own for r in g.readers.get(o, ()))):
                if k in cats or o in hs or o == plan.cn:
                    names.append(o)
                else:
                    return None     # (an intermediate another step reads: not fused)
    at = _slot(g, own, (X, h0), names)
    if at is None:
        return None
    outs_own = {o for j in own for o in g.dyn[j][3]}
    for k in own:               # (inputs: X, h0, each other's outputs, fixed values)
        if any(m and m not in outs_own and m != X and m != h0 and g.const(m) is None
               for m in g.dyn[k][2]):
            return None
    layer = plan.layer(dt)
    if layer is None:
        return None
    lstm = layer._cell == "LSTM"
    idx = {h: k for k, h in enumerate(hs)}
    outs = tuple(names)
    xshape, axis = xv.shape, plan.axis
    lo, hi = (r0, r0 + n) if step == 1 else (r0 - n + 1, r0 + 1)
    whole = lo == 0 and hi == xshape[axis] and step == 1
    dense = layer._dense_call
    shapes = []
    for o in outs:
        k = g.prod[o]
        shapes.append(("cat", list(g.dyn[k][2]) != hs, g.env[o].shape) if k in cats else
                      ("c", None, g.env[o].shape) if o == plan.cn else
                      ("h", idx[o], hshape))
    by_ops = _by_ops(g, own, outs)

    def run(env):
        x = env[X]
        hx = None
        if h0 is not None:
            hx = env[h0]
            if type(hx) is not np.ndarray or hx.size != B * H or hx.dtype != dt:
                return by_ops(env)
            hx = hx.reshape(1, B, H)
            if lstm:
                hx = (hx, np.zeros_like(hx))
        if type(x) is not np.ndarray or x.shape != xshape or x.dtype != dt:
            return by_ops(env)
        if axis:
            x = x.transpose(1, 0, 2)
        if not whole:
            x = x[lo:hi]
            if step < 0:
                x = x[::-1]
            x = np.ascontiguousarray(x)
        res = dense(x, hx, True, _scope.idle)
        if res is None:
            return by_ops(env)
        Y = res[0].reshape(n, B, H)
        got = []
        for what, arg, shape in shapes:
            if what == "h":
                got.append(Y[arg].reshape(shape))
            elif what == "c":
                got.append(res[1][1].reshape(shape))
            else:
                got.append((Y[::-1] if arg else Y).reshape(shape))
        return got

    if not _agrees(g, run, by_ops, X, h0, dt, plan.scale):
        return None
    return at, (run, _env_itself, outs, plan.label), own


def _env_itself(env):
    return env


def _by_ops(g, own, outs):
    """A function of a program's values giving ``outs`` as the steps ``own`` make them
    (run as the interpreter runs them, on a copy of the values): the fused steps'
    fallback and what the checks compare them with."""
    generic = [(g.prog._generic(g.model, g.dyn[k][0], g.dyn[k][1], g.dyn[k][2], g.dyn[k][3]),
                g.dyn[k][2], [m or "\0" for m in g.dyn[k][3]]) for k in sorted(own)]

    def by_ops(env):
        local = dict(env)
        for r, k_ins, k_outs in generic:
            local.update(zip(k_outs, r([local[m] if m else None for m in k_ins])))
        return [local[o] for o in outs]
    return by_ops


def _slot(g, own, inputs, outs):
    """Before which step a fused step replacing ``own`` runs: the first of them, or the
    first after its ``inputs`` are made (every other step reading its ``outs`` must come
    from there on: a decoder's Linear on each step's h); None where one comes before."""
    at = max([min(own)] + [g.prod[v] + 1 for v in inputs if v in g.prod])
    if any(r < at for o in outs for r in g.readers.get(o, ()) if r not in own):
        return None
    return at


_KEPT_LAYERS = 64       # layers a model keeps for its fused recurrences (then cleared)


def _layer(model, cell, act, names, W, R, bih, bhh, dt):
    """The one-layer ``cell`` ("RNN", "GRU", "LSTM") of weights ``W`` (I, G*H), ``R``
    (H, G*H) (for ``x @ W``, gates in torch's order), biases (G*H,), of dtype ``dt``,
    kept by the model (keyed by the weights' names and the biases' values)."""
    bih, bhh = np.asarray(bih, dt), np.asarray(bhh, dt)
    key = (cell, act, names, bih.tobytes(), bhh.tobytes(), np.dtype(dt).str)
    kept = model._unrolled.get(key)
    if kept is not None:
        return kept
    from ..layers import _WEIGHTS_FOLLOW, GRU, LSTM, SimpleRNN
    I, H = W.shape[0], R.shape[0]
    kw = dict(dtype=dt, num_threads=model.num_threads, seed=_WEIGHTS_FOLLOW)
    layer = SimpleRNN(I, H, nonlinearity=act, **kw) if cell == "RNN" else \
        GRU(I, H, reset_after=True, **kw) if cell == "GRU" else LSTM(I, H, **kw)
    layer.load_state_dict({"weight_ih_l0": np.array(W.T, dt), "weight_hh_l0": np.array(R.T, dt),
                           "bias_ih_l0": np.array(bih), "bias_hh_l0": np.array(bhh)},
                          _adopt=set())
    if len(model._unrolled) >= _KEPT_LAYERS:
        model._unrolled.clear()
    model._unrolled[key] = layer
    return layer


def _unit_scale(W) -> float:
    """The spread of random inputs x for which ``x @ W`` has values of ~1: where the
    weights are tiny (a model of raw inputs of ~1e5) unit inputs give values of ~1e-5,
    on which tanh is the identity and a Relu or a scaled step looks like torch's."""
    norm = float(np.sqrt(np.square(W, dtype=np.float64).sum()))
    s = np.sqrt(W.shape[1]) / norm if norm > 0 and np.isfinite(norm) else 1.0
    return float(min(max(s, 1e-20), 1e20))


def _agrees(g, run, by_ops, X, h0, dt, scale=1.0) -> bool:
    """Whether the fused runner and the ops give the same values on random inputs: of
    spread 1 and, where that is far from it, of spread ``scale`` (_unit_scale)."""
    ins = [(X, g.env[X].shape)] + ([(h0, g.env[h0].shape)] if h0 is not None else [])
    return _agrees_with(g, run, by_ops, ins, dt, scale, X)


def _agrees_with(g, run, by_ops, ins, dt, scale, scaled) -> bool:
    """_agrees for random values of the inputs ``ins`` ((name, shape)); ``scaled`` the
    one whose spread is ``scale`` in the second check."""
    rng = np.random.default_rng(0)
    for s in (1.0,) + ((scale,) if not 0.25 <= scale <= 4.0 else ()):
        env = dict(g.env)
        for n, shape in ins:
            env[n] = (rng.standard_normal(shape) * (s if n == scaled else 1.0)).astype(dt)
        want = by_ops(env)
        with CALL_SCOPE:
            got = run(env)
        if not all(_close(a, e, dt) for a, e in zip(got, want)):
            return False
    return True


def _close(a, e, dt) -> bool:
    """Equal up to float rounding, relative to the largest finite magnitude of e's
    column (its last axis: a unit), at least 1/100 of e's largest (not to 1: values of
    ~1e-5 were all "equal"; nor to all of e: a unit of ~1e4 let another's + 0.2 pass;
    nor to an inf, which made anything equal); infs where e has them (allclose: same
    place, same sign), no NaN."""
    a, e = np.asarray(a), np.asarray(e)
    if a.shape != e.shape:
        return False
    if not e.size:
        return True
    tol = 1e-4 if dt == np.float32 else 1e-10
    mag = np.where(np.isfinite(e), np.abs(e), 0.0)
    cols = mag.reshape(-1, e.shape[-1]).max(axis=0) if e.ndim else mag.reshape(1)
    floor = max(float(cols.max()) * 1e-2, float(np.finfo(dt).tiny))
    return bool(np.allclose(a, e, rtol=tol, atol=tol * np.maximum(cols, floor)))


# ------------------------------------------------ cell loops (LSTMCell / GRUCell / RNNCell)
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cell_step(cell, act, gx, gh, h, c):
    """One step of torch's cell from the two projections (bias included): (h', c')."""
    if cell == "RNN":
        v = gx + gh
        return (np.tanh(v) if act == "tanh" else np.maximum(v, 0)), None
    if cell == "GRU":
        xr, xz, xn = np.split(gx, 3, axis=-1)
        hr, hz, hn = np.split(gh, 3, axis=-1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        nn = np.tanh(xn + r * hn)
        return (1 - z) * nn + z * h, None
    i, f, gg, o = np.split(gx + gh, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
    return _sigmoid(o) * np.tanh(c), c


def _random_env(g):
    """The program's values for random float inputs of the first call's shapes (every
    step run as the interpreter runs it), or None where that fails."""
    rng = np.random.default_rng(1)
    env = dict(g.env)
    for n in g.model.input_names:
        v = env.get(n)
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            env[n] = rng.standard_normal(v.shape).astype(v.dtype)
    try:
        for kind, obj, ins, outs, _ in g.dyn:
            vals = [env[m] if m else None for m in ins]
            res = obj.run(vals) if kind == "rnn" else g.model._call(
                obj[0], obj[1], vals, obj[2], len(outs))
            env.update((o, v) for o, v in zip(outs, res) if o)
    except Exception:
        return None
    return env


def _find(g, env, after, before, value, dt, like=None):
    """The value made by a step in (after, before) equal to ``value``: of those, one
    made by an op of type ``like`` (the earlier steps' h: the same op ends each step)
    before others, then the closest, then the last made.  (The first alone: for a tanh
    step of values of ~1e-5 that was its sum before the tanh, equal to it there; an
    LSTM's first c' = f*0 + i*g equals its term i*g exactly.)"""
    best, rank = None, None
    for k in range(after + 1, min(before, len(g.dyn))):
        for o in g.dyn[k][3]:
            v = env.get(o) if o else None
            if isinstance(v, np.ndarray) and v.shape == value.shape and _close(v, value, dt):
                r = (like is not None and g.op(k) != like,
                     float(np.abs(v - value).max(initial=0.0)), -k)
                if rank is None or r < rank:
                    best, rank = o, r
    return best


def _cell_plans(g):
    """Plans of loops of torch's cells written out step by step (the exporter's
    decomposition of LSTMCell / GRUCell / RNNCell: each step a MatMul / Gemm of the
    input and one of the state, each with constant weights shared by every step).
    Which values are each step's h (and c) is found by running torch's cell math on
    the program's values for random inputs."""
    groups: dict = {}
    for k in range(len(g.dyn)):
        if g.op(k) in ("MatMul", "Gemm"):
            mm = g.matmul(k)
            if mm is not None:
                ins = g.dyn[k][2]
                key = (ins[1], g.op(k) == "Gemm" and bool(g.dyn[k][1][2].get("transB", 0)))
                groups.setdefault(key, []).append((k, mm))
    # (state projections: one fewer than the steps where the first one was folded)
    rec = [(key, m) for key, m in groups.items() if len(m) >= _MIN_STEPS - 1
           and m[0][1][1].shape[1] in (m[0][1][1].shape[0] * G for G in (1, 3, 4))]
    if not rec:
        return
    env = None
    for key, members in rec:
        R = members[0][1][1]
        H = R.shape[0]
        cell = {1: "RNN", 3: "GRU", 4: "LSTM"}[R.shape[1] // H]
        for xkey, xm in groups.items():
            # (one more input projection than state ones: the first step's from a zero
            # state folded into a constant at load)
            if (xkey == key or len(xm) - len(members) not in (0, 1) or len(xm) < _MIN_STEPS
                    or xm[0][1][1].shape[1] != R.shape[1]):
                # (checked before the random run of the whole graph: a model with two
                # square Linear layers pays nothing)
                continue
            if env is None:
                env = _random_env(g)
                if env is None:
                    return
            plan = _cell_plan(g, env, cell, key, members, xkey, xm)
            if plan is not None:
                yield plan
                break


def _cell_plan(g, env, cell, key, members, xkey, xm):
    """The plan of one loop: state projections ``members``, input projections ``xm``
    (the k-th of each in the k-th step; one more of the latter: the first step's state
    projection folded), or None."""
    R, W = members[0][1][1], xm[0][1][1]
    H, n, dt = R.shape[0], len(xm), R.dtype
    if n < _MIN_STEPS:
        return None
    bhh = [_row(np.asarray(m[1][2]), R.shape[1]) if m[1][2] is not None else
           np.zeros(R.shape[1], R.dtype) for m in members]
    bih = [_row(np.asarray(m[1][2]), W.shape[1]) if m[1][2] is not None else
           np.zeros(W.shape[1], W.dtype) for m in xm]
    if any(b is None for b in bhh + bih) or any(
            not np.array_equal(b, bhh[0]) for b in bhh) or any(
            not np.array_equal(b, bih[0]) for b in bih):
        return None
    rm = ([None] if n > len(members) else []) + [m[0] for m in members]
    h0 = None if rm[0] is None else members[0][1][0]
    B = env[g.dyn[xm[0][0]][3][0]].shape[0]
    h = np.zeros((B, H), dt) if h0 is None else env.get(h0)
    if not isinstance(h, np.ndarray) or h.shape != (B, H):
        return None
    for act in ("tanh", "relu") if cell == "RNN" else (None,):
        hs, cs = [], []
        hv, cv = h, np.zeros_like(h)
        for k in range(n):
            xk, rk = xm[k][0], rm[k]
            nxt = rm[k + 1] if k + 1 < n else len(g.dyn)
            if xk > nxt:
                break
            gh = bhh[0] if rk is None else env[g.dyn[rk][3][0]]
            hv, cv = _cell_step(cell, act, env[g.dyn[xk][3][0]], gh, hv, cv)
            start = xk if rk is None else max(rk, xk)
            if k + 1 < n:
                name = g.dyn[nxt][2][0]
                if not _close(env.get(name), hv, dt):
                    break
            else:
                name = _find(g, env, start, nxt, hv, dt,
                             g.op(g.prod[hs[-1]]) if hs and hs[-1] in g.prod else None)
            cname = _find(g, env, start, nxt, cv, dt) if cell == "LSTM" else None
            if name is None or (cell == "LSTM" and cname is None):
                break
            hs.append(name)
            cs.append(cname)
        else:
            break
    else:
        return None
    src = _sources(g, [m[1][0] for m in xm], axes=(0, 1))
    if src is None:         # (each step's input made from the steps before: one by one)
        return _step_plans(g, cell, act, W, R, bih[0], bhh[0], (key[0], xkey[0]),
                           [m[1][0] for m in xm], hs, cs, h0)
    X, pick, rows, axis = src
    # the steps the loop is: back from its h and c to X, the first state, constants
    own = _cell_ops(g, hs + [c for c in cs if c], (X, h0), act)
    if own is None:
        return None
    names = (key[0], xkey[0])

    def layer(dt_):
        return _layer(g.model, cell, act or "tanh", names, W, R, bih[0], bhh[0], dt_) \
            if dt_ == dt and W.dtype == dt else None
    return _Plan(own=own, X=X, axis=axis, rows=rows, h0=h0, hs=hs, cn=cs[-1],
                 layer=layer, scale=_unit_scale(W),
                 label=f"{g.dyn[xm[0][0]][4]} .. {g.dyn[members[-1][0]][4]} "
                 f"(unrolled {cell}Cell loop, {n} steps, run as one {_NAMES[cell]} call)")


_NAMES = {"RNN": "SimpleRNN", "GRU": "GRU", "LSTM": "LSTM"}


def _cell_ops(g, outs, stops, act):
    """The steps that make ``outs`` from ``stops`` and fixed values (None where another
    value is read, or a step is no op of torch's cell decomposition: _CELL_OPS)."""
    own, stack = set(), list(outs)
    while stack:
        v = stack.pop()
        if v in stops or g.const(v) is not None:
            continue
        k = g.prod.get(v)
        if k is None:
            return None
        if k not in own:
            own.add(k)
            stack.extend(m for m in g.dyn[k][2] if m)
    for k in own:
        op = g.op(k)
        if not (op in _CELL_OPS or (op == "Relu" and act == "relu")):
            return None
        if op in ("Cast", "CastLike") and not all(
                getattr(g.env.get(o), "dtype", np.dtype(object)).kind == "f"
                for o in g.dyn[k][3] if o):
            return None
    return own


class _OneStep:
    """One step of a cell loop run as one cell step of the layer: ``own`` the steps it
    replaces, its input ``x``, state ``h`` / ``c`` (names, None: zeros), outputs
    ``outs`` (h', and c' for LSTM)."""
    __slots__ = ("own", "x", "h", "c", "outs", "layer", "label", "scale")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _step_plans(g, cell, act, W, R, bih, bhh, names, xs, hs, cs, h0):
    """Plans of each step of a cell loop whose inputs are no rows of one value (each
    made from the step before: an autoregressive decoder): each step's ops as one
    step of the layer (_fused_step)."""
    plans, dt = [], R.dtype

    def layer(dt_):
        return _layer(g.model, cell, act or "tanh", names, W, R, bih, bhh, dt_) \
            if dt_ == dt and W.dtype == dt else None
    for k, x in enumerate(xs):
        h, c = (h0, None) if k == 0 else (hs[k - 1], cs[k - 1])
        outs = [hs[k]] + ([cs[k]] if cs[k] else [])
        own = _cell_ops(g, outs, (x, h, c), act)
        if own is None:
            continue
        plans.append(_OneStep(own=own, x=x, h=h, c=c, outs=outs, layer=layer,
                              scale=_unit_scale(W), label=f"{g.dyn[min(own)][4]} .. "
                              f"{g.dyn[max(own)][4]} (unrolled {cell}Cell step, run as one "
                              f"{_NAMES[cell]} step)"))
    return plans


def _fused_step(g, plan, taken):
    """The fused step of one cell step (_step_plans): (its index, the step, the steps it
    replaces), or None."""
    own = plan.own
    if own & taken:
        return None
    xv, hname, cname = g.env.get(plan.x), plan.h, plan.c
    hout = g.env.get(plan.outs[0])
    if not (isinstance(xv, np.ndarray) and xv.ndim == 2 and isinstance(hout, np.ndarray)):
        return None
    dt, (B, I) = xv.dtype, xv.shape
    layer = plan.layer(dt) if dt in (np.float32, np.float64) else None
    if layer is None or layer.input_size != I or hout.shape != (B, layer.hidden_size):
        return None
    H, lstm = layer.hidden_size, layer._cell == "LSTM"
    if hname is not None and (hname in g.prog.zero or (
            g.const(hname) is not None and not np.any(g.const(hname)))):
        hname = None
    for n in (hname, cname):
        v = g.env.get(n) if n else None
        if n and not (isinstance(v, np.ndarray) and v.shape == (B, H) and v.dtype == dt):
            return None
    outs = tuple(plan.outs)
    for k in own:       # (nothing but its outputs read elsewhere)
        for o in g.dyn[k][3]:
            if o and o not in outs and (o in g.want or any(
                    r not in own for r in g.readers.get(o, ()))):
                return None
    at = _slot(g, own, (plan.x, hname, cname), outs)
    if at is None:
        return None
    by_ops = _by_ops(g, own, outs)
    xn, step, own_count = plan.x, layer._step_fast, layer.num_threads is not None

    def run(env):
        x = env[xn]
        if type(x) is not np.ndarray or x.shape != (B, I) or x.dtype != dt:
            return by_ops(env)
        h = np.zeros((1, B, H), dt) if hname is None else np.array(env[hname], dt)[None]
        c = (np.zeros((1, B, H), dt) if cname is None else np.array(env[cname], dt)[None]) \
            if lstm else None
        if h.shape != (1, B, H) or (lstm and c.shape != (1, B, H)):
            return by_ops(env)
        # (a model call's num_threads= where the model's load set none, as for its
        # recurrent nodes: _step_fast reads only its argument and the layer's count)
        step(np.ascontiguousarray(x), h, c, None if own_count else
             getattr(_scope, "threads", None))
        return [h[0], c[0]] if lstm else [h[0]]

    ins = [(n, g.env[n].shape) for n in (plan.x, hname, cname) if n]
    if not _agrees_with(g, run, by_ops, ins, dt, plan.scale, plan.x):
        return None
    return at, (run, _env_itself, outs, plan.label), own
