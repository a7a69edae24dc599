"""ONNX ``If`` nodes: both branches compiled at load, the chosen one run per call.

PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) writes
``x.squeeze(d)`` of an axis it cannot prove is 1 (``dynamic_axes``) as
``If(Equal(Gather(Shape(x), d), 1))`` with ``then_branch = Squeeze(x, d)`` and
``else_branch = Identity(x)``: the output at each sequence's last valid step
(``out.gather(1, idx).squeeze(1)``), a cell loop over ``torch.split(x, 1, 1)``, pooling
heads.  Other exporters choose between shapes or code paths so too.

Semantics (opsets 1, 11, 13, 16, 19, 21: the same for tensors; 11 let the branches'
output shapes differ, 13 allowed sequences, 16+ optional values and more element types,
none of which NumPy has): input ``cond``, a bool tensor of exactly one element (any
shape, as ONNX Runtime: ``[1]``, ``[1, 1]``; another number of elements is a ValueError,
another type a TypeError); attributes ``then_branch`` and ``else_branch``, graphs of no
inputs giving the same number of outputs, which the node's outputs are (as ONNX Runtime
requires, every one listed, an empty name for one not used).  The branches' outputs may
differ in shape and element type.  A branch may return a value of an enclosing graph
directly (ONNX Runtime refuses such a model; it runs here).  A sequence output must be
one in both branches (fastrnn knows at load which values are sequences).

The branches read any value of the enclosing graphs by name (initializers, inputs, node
outputs before the If, a Loop body's values where the If is in one); their own
initializers and node outputs hide outer values of those names, as in a Loop body.
(ONNX assigns a name once in all scopes: ONNX Runtime refuses a branch node output
named like an outer value; a branch initializer so named it reads as here, unless the
other branch reads the outer value of that name: ONNX Runtime then feeds that value to
both branches, over the initializer.)  Those outer names are
the If step's inputs after the condition (:attr:`IfNode.outer`), so the model's
liveness, constant keeping, kept programs and pickling see them as read by the If.  A
condition that is a constant at load (an initializer, a folded node) chooses the branch
at load: only that branch is compiled, and where its outputs are all constants the If
is folded away like any node of constant inputs.  Each branch's own nodes of constant
inputs are folded at load (``OnnxModel._compile`` compiles them, as a Loop's body:
:func:`fastrnn.io._onnx_loop.compile_subgraph`).  Errors name the If node and the
branch's node ("node 3 If 'x': then_branch node 0 Squeeze 'y': ...").
"""
from __future__ import annotations

import numpy as np

from . import LoadError
from ._onnx_loop import (_runner, compile_subgraph, own_steps, pickled_body, slot_map,
                         unpickled_body)

__all__ = ["IfNode", "compile_if", "op_if", "BRANCHES"]

BRANCHES = ("then_branch", "else_branch")
# exceptions given the failing branch node in their message (as OnnxModel._located gives
# the model's node)
_LOCATED = (ValueError, TypeError, IndexError, MemoryError, OverflowError)


def op_if(ins, attrs, opset):
    """The If step's op function (``_SIMPLE_OPS["If"]``): its compiled node is
    ``attrs["_if"]`` (so that a pickled step, whose function is looked up again by op
    type, keeps its branches)."""
    return attrs["_if"].run(ins)


def check_cond(c, what: str = "the condition") -> bool:
    """``c`` as one bool: a TypeError where it is not a bool tensor, a ValueError where
    it has another number of elements than one (as ONNX Runtime: "If nodes condition
    input must have exactly one element")."""
    if not isinstance(c, (np.ndarray, np.generic)):
        raise TypeError(f"{what} must be a bool tensor of one element, got a "
                        f"{type(c).__name__}")
    if c.dtype != np.bool_:
        raise TypeError(f"{what} must be a bool tensor of one element, got {c.dtype} "
                        f"(shape {c.shape})")
    if c.size != 1:
        raise ValueError(f"{what} must have exactly one element (bool), got shape {c.shape}")
    return bool(c.reshape(()))


def compile_if(model, node, attrs, consts: dict, known: set, seqs: set, budget: list,
               where: str) -> "IfNode":
    """The IfNode of ``node`` (an If) of ``model`` (an OnnxModel being loaded): its
    branches compiled with the model's own step compiler (both; only the chosen one
    where the condition is a constant); ``consts``, ``known``, ``seqs``: the enclosing
    graph's constants, defined names and sequences at the node.  Its ``folded``: the
    outputs' values where the condition is a constant and the chosen branch's outputs
    are constants too (the caller puts them in ``consts``), else None."""
    name = model.name
    cond = node.input[0] if node.input else ""
    if not cond:
        raise LoadError(f"{name}: {where}: no condition input (an If takes one: a bool "
                        "tensor of one element)")
    if len(node.input) > 1:
        raise LoadError(f"{name}: {where}: {len(node.input)} inputs; an If takes one, "
                        "its condition (the branches read other values by name)")
    graphs = {}
    for b in BRANCHES:
        g = getattr(attrs.get(b), "g", None)
        if g is None:
            raise LoadError(f"{name}: {where}: no {b!r} graph attribute (an If needs "
                            "then_branch and else_branch)")
        if g.input:
            raise LoadError(f"{name}: {where}: its {b} takes inputs "
                            f"{[v.name for v in g.input]}; an If's branches take none "
                            "(they read the enclosing graph's values by name)")
        outs = [v.name for v in g.output]
        if any(not n for n in outs):
            raise LoadError(f"{name}: {where}: its {b}'s outputs must have names "
                            f"(outputs {outs})")
        graphs[b] = g
    n_then, n_else = (len(graphs[b].output) for b in BRANCHES)
    if not n_then and not n_else:
        raise LoadError(f"{name}: {where}: its branches give no outputs (an If gives at "
                        "least one, as ONNX Runtime requires)")
    if n_then != n_else:
        raise LoadError(f"{name}: {where}: its then_branch gives {n_then} output(s), its "
                        f"else_branch {n_else} (ONNX requires the same number)")
    if len(node.output) != n_then:
        raise LoadError(f"{name}: {where}: {len(node.output)} outputs; its branches give "
                        f"{n_then} (as ONNX Runtime, every one listed; an empty name for "
                        "one not used)")
    fixed = None
    if cond in consts and cond not in model._overridable:
        try:
            fixed = check_cond(consts[cond], f"the condition {cond!r}")
        except (TypeError, ValueError) as e:
            raise LoadError(f"{name}: {where}: {e} (a constant)") from None
    bodies: dict = {}
    out_seqs: dict = {}
    for b, take in zip(BRANCHES, (True, False)):
        # (the branch a constant condition does not choose: compiled too, so that an
        # invalid one is a LoadError as in ONNX Runtime, which checks both; its folding on
        # a budget of its own, then dropped)
        bodies[b], out_seqs[b] = compile_subgraph(
            model, graphs[b], consts, known, seqs,
            budget if fixed is None or fixed == take else list(budget), where, b)
    seq_outs = []
    for k in range(n_then):
        kinds = {b: bodies[b].outputs[k] in out_seqs[b] for b in BRANCHES if bodies[b]}
        if len(set(kinds.values())) > 1:
            raise LoadError(f"{name}: {where}: output {k}: its then_branch gives a "
                            f"{'sequence' if kinds['then_branch'] else 'tensor'}, its "
                            f"else_branch a {'sequence' if kinds['else_branch'] else 'tensor'}"
                            " (fastrnn needs to know at load which values are sequences)")
        seq_outs.append(any(kinds.values()))
    if fixed is not None:
        bodies[BRANCHES[1] if fixed else BRANCHES[0]] = None
    ifn = IfNode(model, bodies["then_branch"], bodies["else_branch"], fixed, where,
                 tuple(seq_outs), consts)
    ifn.folded = None
    if fixed is not None:
        body = bodies[BRANCHES[0] if fixed else BRANCHES[1]]
        if not body.steps and all(n in body.consts or (n in consts and n not in
                                                       model._overridable)
                                  for n in body.outputs):
            ifn.folded = [body.consts[n] if n in body.consts else consts[n]
                          for n in body.outputs]
    return ifn


class _Compiled:
    """One branch in slot-indexed form (IfNode._build): ``template`` (each call's value
    list, constants in their slots), ``feed`` ((slot, index of the If step's inputs)
    per outer value read), ``steps`` (functions of the value list), ``outs`` (the
    outputs' slots), ``labels`` (per step function's id: "then_branch node k ...")."""
    __slots__ = ("template", "feed", "steps", "outs", "labels")


class IfNode:
    """An If node ready to run: ``run(values)``, ``values`` the If step's inputs (the
    condition, then :attr:`outer`'s values).  ``then_branch`` / ``else_branch``: the
    branches compiled (:class:`fastrnn.io._onnx_loop.Body`; None for the one a constant
    condition does not choose); ``fixed``: that condition's value (None: not constant);
    ``outer``: the enclosing graphs' values either branch reads; ``seq_outs``: per
    output, whether it is a sequence; ``pure``: whether its outputs follow from its
    inputs alone (no Dropout, Loop or Scan inside, as OnnxModel._shape_only treats
    those)."""

    def __init__(self, model, then_b, else_b, fixed, where: str, seq_outs: tuple = (),
                 scope=None):
        self.then_branch, self.else_branch = then_b, else_b
        self.fixed = fixed
        self.where = where
        self.seq_outs = seq_outs
        self.name = model.name
        self.opset = model.opset
        self.num_threads = model.num_threads    # (a branch Conv's, as the model's)
        outer: list = []
        for body in self.bodies():
            outer += [n for n in body.outer if n not in outer]
        self.outer = tuple(outer)
        self.pure = all(_pure(body) for body in self.bodies())
        from .onnx import _own_constants
        # their own constants: never views of the file's bytes (as the model's,
        # _own_constants), read-only; their recurrent nodes' layers keyed by them and the
        # enclosing graph's constants (``scope``) as they are now (own(): as kept)
        for body in self.bodies():
            _own_constants(body.consts)
            keys = dict(scope or {})
            keys.update(body.consts)
            self._freeze_and_key(body, keys)
        self._build()

    def bodies(self) -> list:
        """The branches compiled (both, or the one a constant condition chooses)."""
        return [b for b in (self.then_branch, self.else_branch) if b is not None]

    @staticmethod
    def _freeze_and_key(body, scope) -> None:
        from .onnx import _freeze
        for v in body.consts.values():
            _freeze(v)
        for kind, obj, *_ in body.steps:
            if kind == "rnn" and obj.layer is not None:
                obj.rekey(scope)

    # ------------------------------------------------------------------ compiled form
    def _build(self) -> None:
        """Each branch's slot-indexed form (:class:`_Compiled`)."""
        index = {n: 1 + k for k, n in enumerate(self.outer)}
        self._then = self._compile(self.then_branch, index)
        self._else = self._compile(self.else_branch, index)

    def _compile(self, body, index):
        if body is None:
            return None
        slot, none, trash, template = slot_map(body)
        c = _Compiled()
        c.template = template
        c.feed = tuple((slot[n], index[n]) for n in body.outer)
        c.outs = tuple(slot[n] for n in body.outputs)
        c.steps, c.labels = [], {}
        cut = len(self.where) + 2       # (labels: "then_branch node k Op 'name'")
        for kind, obj, ins, outs, where in body.steps:
            i_s = tuple(slot[n] if n else none for n in ins)
            o_s = tuple(slot[o] if o else trash for o in outs)
            run = _runner(kind, obj, i_s, o_s, self.opset, self.num_threads)
            c.labels[id(run)] = where[cut:] if where.startswith(self.where) else where
            c.steps.append(run)
        c.steps = tuple(c.steps)
        return c

    def own(self, model_consts) -> None:
        """After loading: the branches' recurrent nodes' layers keyed by the arrays they
        will be given (the branch's constants, else the model's, as the model keys its
        own: OnnxModel.__init__); nested Loops and Ifs the same."""
        for body in self.bodies():
            scope = dict(model_consts)
            scope.update(body.consts)
            self._freeze_and_key(body, scope)
            own_steps(body.steps, scope)

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_then", "_else"):
            state.pop(k)
        for b in BRANCHES:
            if state[b] is not None:
                state[b] = pickled_body(state[b])
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for body in self.bodies():
            unpickled_body(body)
        self._build()

    # ------------------------------------------------------------------------ running
    def __call__(self, ins, attrs=None, opset=None):
        return self.run(ins)

    def run(self, ins: list) -> list:
        """The node's outputs for its step's input values ``ins``: the chosen branch's."""
        take = self.fixed
        if take is None:
            take = check_cond(ins[0])
        br = self._then if take else self._else
        vals = list(br.template)
        for s, k in br.feed:
            vals[s] = ins[k]
        run = None
        try:
            for run in br.steps:
                run(vals)
        except LoadError:
            raise
        except Exception as e:
            raise _located(e, br.labels.get(id(run))) from None
        return [vals[s] for s in br.outs]


def _pure(body) -> bool:
    from .onnx import _NO_FOLD
    for kind, obj, *_ in body.steps:
        if kind == "op" and (obj[1] in _NO_FOLD or obj[1] in ("Loop", "Scan")
                             or (obj[1] == "If" and not obj[2]["_if"].pure)):
            return False
    return True


def _located(e, label):
    """``e`` with the branch node it failed in in its message, as the model's own errors
    name their node (the model's _located then names the If node)."""
    if not label:
        return e
    msg = str(e)
    for kind in _LOCATED:
        if isinstance(e, kind):
            return (type(e) if type(e) in _LOCATED else kind)(f"{label}: {msg}")
    return e
