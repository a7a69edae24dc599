"""ONNX ``Loop`` nodes: the body graph compiled once at load, run iteration by iteration.

tf2onnx writes a Keras RNN layer it cannot fuse into an LSTM / GRU node (tf.keras 2:
SimpleRNN, ``GRU(reset_after=False)``, a mask, ``recurrent_dropout``; Keras 3 also GRU and
TimeDistributed) as a ``Loop`` over TensorFlow's while_loop: the body reads step ``t`` of
the input (a Gather of an outer value at the iteration number), computes the cell and
carries the state on; the stacked per-step outputs are a scan output.

Semantics (opsets 1, 11, 13, 16, 19, 21: the same for tensors; 11 allowed no carried
values, 13 sequences as values, 16+ only more element types, none of which NumPy has):
inputs ``M`` (trip count, int64, optional: empty name), ``cond`` (bool, optional), then
the carried values' initial values; the body's inputs are (iteration number: an int64
scalar, cond, carried...) and its outputs (cond, carried..., scan outputs...); the node's
outputs the carried values' last values, then each scan output's values stacked along a
new axis 0.  As ONNX Runtime does: the body's cond output decides whether another
iteration runs even where the node has no ``cond`` input (the specification calls it
ignored there: ONNX Runtime reads it; so a Loop with neither input ends when its cond
turns false), a negative ``M`` runs no iteration, and a scan output of no iteration has
shape ``(0, *the body output's declared shape)`` (unknown sizes 0; no declared shape:
``(0,)``) and its declared element type (none declared: float32).

The body may read any value of the enclosing graphs by name (initializers, inputs, node
outputs defined before the Loop node): those names are the Loop step's inputs after the
node's own (:attr:`Body.outer`), so the model's liveness, constant keeping and kept
programs see them as read by the Loop.  A Loop is never computed at load (its trip count
is unbounded); the body's own nodes of constant inputs are.  Body nodes whose inputs do
not change from one iteration to the next (constants, outer values, carried values the
body passes on unchanged: tf2onnx carries the weights and the step count so) run once
per call of the Loop, before its first iteration (:attr:`Body.invariant`).

Each body step runs the op table the model's own steps run (``OnnxModel._compile``
builds both), on values kept in a list indexed by slot.  :class:`Body` keeps the steps
as the model keeps its own (``(kind, obj, inputs, outputs, where)`` by value names), for
anything that later wants to recognise a body (a SimpleRNN cell) and run it otherwise.
"""
from __future__ import annotations

import numpy as np

from . import LoadError
from . import _onnx_proto as _proto

__all__ = ["LoopNode", "BodyNode", "Body", "Limit", "compile_loop", "compile_subgraph",
           "split_steps", "DEFAULT_LIMIT"]

# iterations a Loop without a trip count M may run (OnnxModel.loop_limit): its condition
# ends it; one that never does would run forever (as in ONNX Runtime), its scan outputs
# growing.  2**20 steps (~10 s at ~10 us a step; ~100 MB of the smallest scan values)
# are far beyond a recurrent model's sequences: tf2onnx's loops have no M and run T
# steps.
DEFAULT_LIMIT = 1 << 20
# exceptions given the failing body node and iteration in their message (as
# OnnxModel._located gives the model's node)
_LOCATED = (ValueError, TypeError, IndexError, MemoryError, OverflowError)


class Limit:
    """A model's Loop iteration limit (one object shared by all its LoopNodes, so that
    ``OnnxModel.loop_limit`` sets theirs)."""
    __slots__ = ("n",)

    def __init__(self, n=DEFAULT_LIMIT):
        self.n = n

    def __getstate__(self):
        return (self.n,)        # (a tuple: pickle skips __setstate__ for a None state)

    def __setstate__(self, state):
        self.n = state[0] if isinstance(state, tuple) else state     # (older pickles: n)


class Body:
    """A Loop's body graph, compiled: ``inputs`` / ``outputs`` (the body graph's names:
    iteration number, cond, carried... / cond, carried..., scan outputs...), ``steps``
    (the nodes left after folding and after dropping those nothing reads, as
    ``OnnxModel._steps``: ``(kind, obj, inputs, outputs, where)``), ``consts`` (the
    body's own constants the steps or outputs read: initializers, folded nodes),
    ``outer`` (the enclosing graphs' values it reads, in the Loop step's input order),
    ``invariant`` (the values the same in every iteration of one call: computed once,
    before the first iteration)."""
    __slots__ = ("inputs", "outputs", "steps", "consts", "outer", "invariant")


def slot_map(body: Body, first=()) -> tuple:
    """A compiled subgraph's value slots (a Loop's body, an If's branch): ``(slot,
    none, trash, template)``, ``slot`` the slot of each name (``first`` in order, then
    the outer values, the constants and the steps' outputs), ``none`` one always None
    (an input not given), ``trash`` one for outputs not named, ``template`` the value
    list of a run with the constants in their slots."""
    slot: dict = {}
    for n in first:
        slot[n] = len(slot)
    for n in body.outer:
        slot.setdefault(n, len(slot))
    for n in body.consts:
        slot.setdefault(n, len(slot))
    for st in body.steps:
        for o in st[3]:
            if o:
                slot.setdefault(o, len(slot))
    none = len(slot)
    trash = none + 1
    template = [None] * (trash + 1)
    for n, v in body.consts.items():
        template[slot[n]] = v
    return slot, none, trash, template


def own_steps(steps, scope) -> None:
    """A subgraph's recurrent nodes' layers keyed by the arrays they will be given
    (``scope``: its constants, else the enclosing graphs'); nested Loops, Ifs and Scans
    the same (their ``own``)."""
    for kind, obj, *_ in steps:
        if kind == "rnn" and obj.layer is not None:
            obj.rekey(scope)
        elif kind == "op" and obj[1] == "Loop":
            obj[0].own(scope)
        elif kind == "op" and obj[1] == "If":
            obj[2]["_if"].own(scope)
        elif kind == "op" and obj[1] == "Scan":
            obj[2]["_scan"].own(scope)


def pickled_body(body: Body) -> Body:
    """A copy of ``body`` to pickle: its op functions by their op type (many are
    closures, which do not pickle; a nested Loop's is its LoopNode; an If's node is in
    its attributes): :func:`unpickled_body` puts them back."""
    copy = Body()
    for k in Body.__slots__:
        setattr(copy, k, getattr(body, k))
    copy.steps = [(kind, (None,) + obj[1:] if kind == "op" and obj[1] != "Loop"
                   else obj) + tuple(rest) for kind, obj, *rest in body.steps]
    return copy


def unpickled_body(body: Body) -> None:
    """``body`` as pickled_body left it made whole again: its op functions, and its
    constants read-only (unpickled arrays are writeable)."""
    from .onnx import _SIMPLE_OPS, _freeze
    for v in body.consts.values():
        _freeze(v)
    body.steps = [(kind, (_SIMPLE_OPS[obj[1]],) + obj[1:]
                   if kind == "op" and obj[0] is None else obj) + tuple(rest)
                  for kind, obj, *rest in body.steps]


def _body_graph(model, node, attrs, where):
    a = attrs.get("body")
    g = getattr(a, "g", None)
    if g is None:
        raise LoadError(f"{model.name}: {where}: no 'body' graph attribute")
    return g


def compile_subgraph(model, g, consts: dict, known: set, seqs: set, budget: list,
                     where: str, what: str = "body"):
    """Subgraph ``g`` (a Loop's body, an If's branch: ``what``, as messages call it) of a
    node of ``model`` (an OnnxModel being loaded), compiled with the model's own step
    compiler (``OnnxModel._compile``) in the scope of the enclosing graph at the node:
    ``consts``, ``known``, ``seqs`` (its constants, defined names and sequences; not
    changed).  The subgraph reads any of those by name; its inputs, initializers and node
    outputs hide outer values of those names.  Returns ``(body, seq_outs)``: a
    :class:`Body` (``invariant`` empty: compile_loop sets a Loop's) and the set of its
    outputs that are sequences.  ``where``: the node's label; its steps' are ``"{where}:
    {what} node k ..."``."""
    from .onnx import _tensor
    name = model.name
    if g.sparse_initializer:
        raise LoadError(f"{name}: {where}: its {what} has sparse initializers (not "
                        "supported)")
    b_in = [v.name for v in g.input]
    b_out = [v.name for v in g.output]
    # the subgraph's scope: its inputs, initializers and node outputs hide outer values
    # of those names
    own = set(b_in) | {o for n in g.node for o in n.output if o}
    local: dict = {}
    for t in g.initializer:
        if t.name not in b_in:      # (an input of that name: the input)
            try:
                local[t.name] = _tensor(t)
            except LoadError as e:
                raise LoadError(f"{name}: {where}: {what} initializer: {e}") from None
    own |= set(local)
    outer_consts = {n: v for n, v in consts.items() if n not in own}
    b_consts = dict(outer_consts)
    b_consts.update(local)
    b_known = (known - own) | set(b_in) | set(local)
    b_seqs = set(seqs - own)
    steps = model._compile(g.node, b_consts, b_known, b_seqs, budget, f"{where}: {what} ")
    missing = [n for n in b_out if n not in b_known]
    if missing:
        raise LoadError(f"{name}: {where}: {what} outputs {missing} are never computed")
    # constants of the subgraph's own (initializers, folded nodes): those not the outer
    # ones
    local = {n: v for n, v in b_consts.items()
             if n not in outer_consts or v is not outer_consts[n]}
    # dead steps: what neither the outputs nor a live step reads
    need = set(b_out)
    live = []
    for st in reversed(steps):
        if any(o in need for o in st[3] if o):
            live.append(st)
            need.update(n for n in st[2] if n)
    live.reverse()
    made = {o for st in live for o in st[3] if o}
    reads = [n for st in live for n in st[2] if n] + b_out
    body = Body()
    body.inputs, body.outputs, body.steps = b_in, b_out, live
    body.consts = {n: v for n, v in local.items() if n in need and n not in made}
    seen: set = set()
    outer = []
    for n in reads:
        if n not in seen and n not in b_in and n not in made and n not in body.consts:
            seen.add(n)
            outer.append(n)
    body.outer = tuple(outer)
    body.invariant = frozenset()
    return body, {n for n in b_out if n in b_seqs}


def compile_loop(model, node, attrs, consts: dict, known: set, seqs: set, budget: list,
                 where: str) -> "LoopNode":
    """The LoopNode of ``node`` (a Loop) of ``model`` (an OnnxModel being loaded), its
    body compiled with the model's own step compiler (compile_subgraph); ``consts``,
    ``known``, ``seqs``: the enclosing graph's constants, defined names and sequences at
    the node."""
    g = _body_graph(model, node, attrs, where)
    name = model.name
    n_in = len(node.input)
    K = max(n_in - 2, 0)                        # carried values
    carried = list(node.input[2:])
    if any(not n for n in carried):
        raise LoadError(f"{name}: {where}: a loop-carried input has no name")
    b_in = [v.name for v in g.input]
    b_out = [v.name for v in g.output]
    if len(b_in) != 2 + K:
        raise LoadError(f"{name}: {where}: its body takes {len(b_in)} inputs; a Loop with "
                        f"{K} loop-carried value(s) needs {2 + K} (iteration number, "
                        "condition, the carried values)")
    if len(b_out) < 1 + K:
        raise LoadError(f"{name}: {where}: its body gives {len(b_out)} outputs; a Loop with "
                        f"{K} loop-carried value(s) needs at least {1 + K} (condition, the "
                        "carried values, then any scan outputs)")
    S = len(b_out) - 1 - K
    if len(node.output) != K + S:
        raise LoadError(f"{name}: {where}: {len(node.output)} outputs; its body's {K} "
                        f"carried value(s) and {S} scan output(s) make {K + S} (as ONNX "
                        "Runtime, every one listed; an empty name for one not used)")
    if any(not n for n in b_in + b_out) or len(set(b_in)) != len(b_in):
        raise LoadError(f"{name}: {where}: its body's inputs and outputs must have names, "
                        f"the inputs different ones (inputs {b_in}, outputs {b_out})")
    body, bad = compile_subgraph(model, g, consts, known, seqs, budget, where, "body")
    if bad:
        raise LoadError(f"{name}: {where}: body output(s) {[n for n in b_out if n in bad]} "
                        "are sequences (a Loop's values must be tensors here)")
    body.invariant = _invariant(body, K)
    scan = []
    for v in g.output[1 + K:]:
        dt = _proto.DTYPES.get(v.elem_type, np.dtype(np.float32))
        dims = () if v.shape is None else tuple(
            d if isinstance(d, int) and d > 0 else 0 for d in v.shape)
        scan.append((dt, (0,) + dims))
    return LoopNode(model, body, K, S, scan, where)


def _invariant(body, K, first_in=2, first_out=1) -> frozenset:
    """The names whose values do not change from one iteration to the next: constants,
    outer values, carried values the body gives back as they came (its output k +
    ``first_out`` is its input k + ``first_in``: a Loop's 1 and 2, a Scan's 0 and 0),
    and the outputs of steps reading only those."""
    inv = set(body.consts) | set(body.outer)
    inv.update(body.inputs[first_in + k] for k in range(K)
               if body.outputs[first_out + k] == body.inputs[first_in + k])
    for kind, obj, ins, outs, _ in body.steps:
        if (kind != "op" or obj[1] != "Dropout") and all(not n or n in inv for n in ins):
            inv.update(o for o in outs if o)
    return frozenset(inv)


class BodyNode:
    """What the nodes running one body share (:class:`LoopNode`, a Scan's
    ``_onnx_scan.ScanNode``): taking their constants as the model's after loading,
    pickling (the body by op types, the attributes ``_BUILT`` made again by
    ``_build``), and being called as the model's op functions are."""
    _BUILT: tuple = ()

    def own(self, model_consts) -> None:
        """After loading: the body's constants copied where they are views of the file's
        bytes (as the model's: _own_constants) and made read-only; its recurrent nodes'
        layers keyed by the arrays they will be given (the body's constants, else the
        model's); nested Loops, Ifs and Scans the same."""
        from .onnx import _freeze, _own_constants
        body = self.body
        _own_constants(body.consts)
        for v in body.consts.values():
            _freeze(v)
        for n, v in body.consts.items():
            self._template[self._slot[n]] = v
        scope = dict(model_consts)
        scope.update(body.consts)
        own_steps(body.steps, scope)

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in self._BUILT:
            state.pop(k)
        state["body"] = pickled_body(self.body)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        unpickled_body(self.body)
        self._build()

    def __call__(self, ins, attrs=None, opset=None):
        return self.run(ins)


class LoopNode(BodyNode):
    """A Loop node ready to run: ``loop(values, attrs, opset)`` as the model's op
    functions are called, ``values`` the Loop step's inputs (M, cond, the carried
    values' initial values, then :attr:`Body.outer`'s values)."""
    _BUILT = ("_template", "_slot", "_outer", "_cond_out", "_carried", "_moves",
              "_scan_src", "_pre", "_iter", "_labels", "_need_i", "_need_c", "_iter_info",
              "_fusion")

    def __init__(self, model, body: Body, K: int, S: int, scan: list, where: str):
        self.body = body
        self.K, self.S = K, S
        self.scan = scan                # per scan output: (dtype, shape) of no iteration
        self.where = where
        self.name = model.name
        self.opset = model.opset
        self.num_threads = model.num_threads    # (a body Conv's, as the model's)
        self.limit = model._loop_limit
        self._build()

    # ------------------------------------------------------------------ compiled form
    def _build(self) -> None:
        """The slot-indexed form of the body: ``_template`` (each call's value list:
        constants in their slots), the slots of the inputs and outputs, and the steps
        run once per call (``_pre``) and per iteration (``_iter``), each a function of
        the value list (_runner), with ``_labels`` naming each one's body node."""
        body, K = self.body, self.K
        slot, none, trash, template = slot_map(body, body.inputs)
        self._template, self._slot = template, slot
        self._outer = tuple(slot[n] for n in body.outer)
        outs = [slot[n] for n in body.outputs]
        self._cond_out = outs[0]
        # carried values: the slots they are in during an iteration, and the moves from
        # the body's outputs into them between iterations (a value the body gives back
        # unchanged stays)
        self._carried = tuple(range(2, 2 + K))
        self._moves = tuple((d, s) for d, s in zip(self._carried, outs[1:1 + K]) if d != s)
        self._scan_src = tuple(outs[1 + K:])
        pre, it, labels, it_info, read = split_steps(body, slot, none, trash, self.where,
                                                     self.opset, self.num_threads)
        read.update(outs)
        self._pre, self._iter, self._labels = pre, it, labels
        self._iter_info = it_info           # (per _iter runner: its step and slots)
        # (the iteration number and cond: set only where read)
        self._need_i, self._need_c = 0 in read, 1 in read
        # a body that is a recurrent cell over the rows of one input: run as one layer
        # call where the call's values allow (_onnx_loop_fuse)
        from . import _onnx_loop_fuse
        self._fusion = _onnx_loop_fuse.analyse(self)

    # ------------------------------------------------------------------------ running
    def values(self, ins: list) -> list:
        """A run's value list: the constants, the outer values and the carried values'
        first values (``ins``: the Loop step's inputs) in their slots."""
        vals = list(self._template)
        for s, v in zip(self._outer, ins[2 + self.K:]):
            vals[s] = v
        for s, v in zip(self._carried, ins[2:2 + self.K]):
            vals[s] = v
        return vals

    @staticmethod
    def _check_cond(c, what: str) -> bool:
        if not (isinstance(c, (np.ndarray, np.generic)) and c.dtype == np.bool_
                and c.size == 1):
            got = (f"{c.dtype} of shape {c.shape}" if isinstance(c, (np.ndarray, np.generic))
                   else type(c).__name__)
            raise ValueError(f"{what} must be one bool, got {got}")
        return bool(c.reshape(()))

    def run(self, ins: list) -> list:
        """The node's outputs for its step's input values ``ins``."""
        fusion = self._fusion
        if fusion is not None and FUSE:
            out = fusion.run(self, ins)
            if out is not None:
                return out
        K = self.K
        M, cond = ins[0], ins[1]
        if M is not None:
            if not (isinstance(M, (np.ndarray, np.generic)) and M.dtype.kind in "iu"
                    and M.size == 1):
                got = (f"{M.dtype} of shape {M.shape}"
                       if isinstance(M, (np.ndarray, np.generic)) else type(M).__name__)
                raise ValueError(f"the trip count M must be one integer (int64), got {got}")
            trips = int(M.reshape(()))
        else:
            trips = None
        if cond is not None:
            go = self._check_cond(cond, "the condition 'cond'")
        else:
            go, cond = True, _TRUE
        limit = self.limit.n if trips is None else None
        carried = list(ins[2:2 + K])
        scans: list = [[] for _ in self._scan_src]
        i = 0
        over = False                    # (stopped at the limit)
        if go and (trips is None or trips > 0):
            vals = self.values(ins)
            c_out, moves, need_i, need_c = (self._cond_out, self._moves, self._need_i,
                                            self._need_c)
            dst = [d for d, _ in moves]
            src = [s for _, s in moves]
            scan = list(zip(scans, self._scan_src))
            ndarray, array, int64, bool_ = np.ndarray, np.array, np.int64, np.bool_
            run = None
            try:
                for run in self._pre:
                    run(vals)
                steps = self._iter
                while True:
                    if need_i:
                        vals[0] = array(i, int64)
                    if need_c:
                        vals[1] = cond
                    for run in steps:
                        run(vals)
                    run = None
                    cond = vals[c_out]
                    if cond.__class__ is ndarray and cond.dtype == bool_ and not cond.shape:
                        go = bool(cond)
                    else:
                        go = self._check_cond(cond, "the body's condition output (output 0)")
                    for lst, s in scan:
                        lst.append(vals[s])
                    if dst:
                        new = [vals[s] for s in src]
                        for d, v in zip(dst, new):
                            vals[d] = v
                    i += 1
                    if not go or (trips is not None and i >= trips):
                        break
                    if limit is not None and i >= limit:
                        over = True
                        break
            except LoadError:
                raise
            except Exception as e:
                raise _located(e, i, None if run is None else self._labels.get(id(run))
                               ) from None
            carried = [vals[s] for s in self._carried]
        if over:
            raise ValueError(f"ran {i} iterations and its condition has not ended it (it "
                             "has no trip count M; ONNX Runtime would run on, maybe forever)"
                             "; if the model needs more, raise the model's loop_limit")
        for k, lst in enumerate(scans):
            carried.append(self._stack(k, lst))
        return carried

    def _stack(self, k, lst):
        """Scan output ``k``: its values ``lst`` (one an iteration) stacked on a new axis
        0; none: empty, of the body output's declared shape and type (self.scan)."""
        if not lst:
            dt, shape = self.scan[k]
            return np.zeros(shape, dt)
        first = lst[0]
        for j, v in enumerate(lst):
            if not isinstance(v, (np.ndarray, np.generic)) or v.shape != first.shape \
                    or v.dtype != first.dtype:
                what = (f"{v.dtype} of shape {v.shape}" if isinstance(v, (np.ndarray, np.generic))
                        else f"a {type(v).__name__}")
                raise ValueError(
                    f"scan output {k} (body output {2 + self.K + k - 1}): iteration {j} gave "
                    f"{what}, iteration 0 {first.dtype} of shape {first.shape} (the values "
                    "stacked must be alike, as ONNX Runtime requires)")
        return np.stack(lst)


def split_steps(body: Body, slot: dict, none: int, trash: int, node_where: str, opset,
                num_threads) -> tuple:
    """A compiled body's steps as functions of the value list (:func:`_runner`; ``slot``,
    ``none``, ``trash``: :func:`slot_map`'s), split into those run once per call (every
    output in :attr:`Body.invariant`) and those run every iteration: ``(pre, iter,
    labels, iter_info, read)``, ``labels`` naming each function's body node (its
    ``where`` without ``node_where``, the Loop / Scan node's), ``iter_info`` per ``iter``
    function its step and slots, ``read`` the slots those read."""
    pre, it, labels, it_info = [], [], {}, []
    cut = len(node_where) + 2           # (labels: "body node k Op 'name'")
    read: set = set()
    for st in body.steps:
        kind, obj, ins, outs_n, where = st
        i_s = tuple(slot[n] if n else none for n in ins)
        o_s = tuple(slot[o] if o else trash for o in outs_n)
        run = _runner(kind, obj, i_s, o_s, opset, num_threads)
        labels[id(run)] = where[cut:] if where.startswith(node_where) else where
        if all(not o or o in body.invariant for o in outs_n):
            pre.append(run)
        else:
            it.append(run)
            it_info.append((st, i_s, o_s))
            read.update(i_s)
    return tuple(pre), tuple(it), labels, tuple(it_info), read


def _located(e, i, label):
    """``e`` with the iteration and the body node it failed in (where it was in a body
    node) in its message, as the model's own errors name their node."""
    where = f"iteration {i}" + (f", {label}" if label else "")
    msg = str(e)
    for kind in _LOCATED:
        if isinstance(e, kind):
            return (type(e) if type(e) in _LOCATED else kind)(f"{where}: {msg}")
    return e


# body steps as functions of the value list (LoopNode._build).  The ops most loop bodies
# are made of (tf2onnx's cells) run here directly, computing exactly what the model's op
# table's functions compute (its _binary, _op_matmul, _unary, _sigmoid, _op_cast, ...: the
# same NumPy calls on the same values) without their per-call wrapping; the rest call
# the op table's functions.
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal,
           "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
           "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
           "Xor": np.logical_xor}
_UNARY = {"Tanh": np.tanh, "Neg": np.negative, "Abs": np.abs, "Exp": np.exp}
_TRUE = np.array(True)
_TRUE.flags.writeable = False
_FAST = True        # (False: every step through the op table's functions; the tests)
FUSE = True         # (False: never run a body as a layer (_onnx_loop_fuse); tests, bench)


def _runner(kind, obj, i_s, o_s, opset, num_threads):
    """The function running a body step on the value list: ``run(vals)`` reads its
    inputs' slots ``i_s`` and writes its outputs' ``o_s``."""
    from .onnx import _SIMPLE_OPS, _np_dtype, _op_conv, _op_split, _sigmoid
    asarray, ndarray = np.asarray, np.ndarray
    if kind == "rnn":
        rec = obj

        def run(vals):
            for k, v in zip(o_s, rec.run([vals[k] for k in i_s])):
                vals[k] = v
        return run
    fn, op, attrs = obj
    if fn is None:                  # (unpickled: by its op type)
        fn = _SIMPLE_OPS[op]
    o = o_s[0]
    if not _FAST:
        pass
    elif len(o_s) == 1 and op in _BINARY and opset >= 7 and len(i_s) == 2:
        uf, a, b = _BINARY[op], *i_s

        def run(vals):              # (_binary: np.asarray(fn(x, y)))
            r = uf(vals[a], vals[b])
            vals[o] = r if r.__class__ is ndarray else asarray(r)
        return run
    elif len(o_s) == 1 and len(i_s) == 2 and op == "MatMul":
        a, b = i_s
        matmul = np.matmul

        def run(vals):              # (_op_matmul)
            vals[o] = matmul(vals[a], vals[b])
        return run
    elif len(o_s) == 1 and len(i_s) == 1 and op in ("Identity", "Sigmoid", "Cast") | \
            _UNARY.keys():
        a = i_s[0]
        if op == "Identity":
            def run(vals):
                vals[o] = vals[a]
            return run
        if op == "Sigmoid":
            def run(vals):
                vals[o] = _sigmoid(vals[a])
            return run
        if op == "Cast":
            try:
                to = _np_dtype(attrs["to"])
            except (KeyError, LoadError):
                to = None           # (the op says what is wrong, when it runs)
            if to is not None:
                def run(vals):      # (_op_cast)
                    vals[o] = asarray(vals[a]).astype(to)
                return run
        else:
            uf = _UNARY[op]

            def run(vals):          # (_unary)
                x = vals[a]
                vals[o] = asarray(uf(x)).astype(x.dtype, copy=False)
            return run
    elif len(o_s) == 1 and len(i_s) == 2 and op == "Gather":
        return _gather(fn, attrs, opset, i_s, o)
    if op == "Split":
        fn = _split_fn(_op_split, len(o_s))
    elif op == "Conv":
        fn = _conv_fn(_op_conv, num_threads)
    if len(o_s) == 1:
        def run(vals):
            vals[o] = fn([vals[k] for k in i_s], attrs, opset)[0]
        return run

    def run(vals):
        for k, v in zip(o_s, fn([vals[k] for k in i_s], attrs, opset)):
            vals[k] = v
    return run


def _gather(fn, attrs, opset, i_s, o):
    """A Gather's runner: the row ``x[k]`` along the axis (a view) for one integer index
    ``k`` in range (tf2onnx's read of step t), else the op (_op_gather: the same values,
    copied; its check of the range)."""
    a, b = i_s
    axis = attrs.get("axis", 0)
    ndarray = np.ndarray

    def run(vals):
        x, idx = vals[a], vals[b]
        if idx.__class__ is ndarray and not idx.shape and idx.dtype.kind in "iu" \
                and x.__class__ is ndarray and -x.ndim <= axis < x.ndim:
            n = x.shape[axis]
            k = int(idx)
            if -n <= k < n:
                vals[o] = x[(slice(None),) * (axis % x.ndim) + (k,)]
                return
        vals[o] = fn([x, idx], attrs, opset)[0]
    return run


def _split_fn(split, nout):
    def run(vals, attrs, opset):
        return split(vals, attrs, opset, nout)
    return run


def _conv_fn(conv, num_threads):
    def run(vals, attrs, opset):
        return conv(vals, attrs, opset, num_threads)
    return run
