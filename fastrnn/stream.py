"""Stateful streaming: feed a recurrent layer or model one step (or one chunk) at a time.

>>> import numpy as np, fastrnn
>>> layer = fastrnn.LSTM(8, 16, num_layers=2)
>>> s = fastrnn.Stream(layer, batch_size=1)
>>> y = s.step(np.ones((1, 8), np.float32))        # (B, H): the output of this step
>>> ys = s.feed(np.ones((5, 1, 8), np.float32))    # (T, B, H): five more steps
>>> s.reset()                                       # back to the zero state

The state is carried from call to call, so feeding a sequence in chunks of any size gives
the outputs (and the final state) of feeding it whole.  Works with uni-directional
:class:`~fastrnn.LSTM`, :class:`~fastrnn.GRU` and :class:`~fastrnn.SimpleRNN` (stacked or
not) and with :class:`fastrnn.model.Model` chains of Embedding / Masking / Dense / Dropout /
Activation / TimeDistributed / InputCast / LayerNormalization, BatchNormalization and
Normalization over the features / Rescaling and PReLU whose weights do not vary along the
steps / Conv1D with ``strides=1`` that is causal or of one tap (a causal one keeps its
last ``(kernel_size - 1) * dilation_rate`` inputs) / uni-directional RNN layers, and with
graphs of them: merges that join each step's tensors (elementwise, Concatenate on the
features, operations of several tensors on the features), or, after recurrent layers that
return their last step, each step's rows; causal attention layers (each keeps the keys
and values it has read, so a chunk's queries attend to every step so far); several
inputs (a list or a dict by name, each ``(B, T, ...)``) and several outputs (a list).
Bidirectional layers and ``go_backwards`` need the whole sequence and are refused.

Conventions: a core layer's chunk follows the layer (``(T, B, I)``, or ``(B, T, I)`` with
``batch_first``); a model's chunk is batch first (``(B, T, ...)``, Keras's convention).
:meth:`Stream.step` always takes ``(B, I)`` (``(B,)`` token ids for a model that starts
with an Embedding) and returns ``(B, out)``.

A stream is not thread-safe (it holds one state); use one stream per thread or per
conversation.  The layer/model it wraps may be shared by many streams.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from . import _threads

__all__ = ["Stream"]


def _is_core(obj) -> bool:
    from .layers import RNNBase
    return isinstance(obj, RNNBase)


def _check_core(layer, what: str = "layer") -> None:
    if layer.bidirectional:
        raise ValueError(f"cannot stream a bidirectional {what} ({layer!r}): its reverse "
                         "direction needs the whole sequence; run it on complete sequences")
    if layer.go_backwards:
        raise ValueError(f"cannot stream a go_backwards {what} ({layer!r}): it reads the "
                         "sequence from its end")


def _zero_state(core, B: int):
    L = core.num_layers * core.num_directions
    h = np.zeros((L, B, core.output_size), core.dtype)
    if core._cell == "LSTM":
        return (h, np.zeros((L, B, core.hidden_size), core.dtype))
    return h


def _values(a) -> np.ndarray:
    """User input as a NumPy array; a torch tensor as the layers take it (detached; bfloat16
    and other types NumPy lacks as float32: layers._torch_numpy), without importing torch."""
    if type(a) is np.ndarray:
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        from .layers import _torch_numpy
        return _torch_numpy(a, "input")
    return np.asarray(a)


def _copy_state(s):
    if isinstance(s, tuple):
        return tuple(a.copy() for a in s)
    return s.copy()


def _validate_state(core, state, B: int, where: str):
    """A state for ``core`` at batch ``B`` from user input (copied, layer dtype);
    None is the zero state (as ``hx=None`` is for a layer)."""
    if state is None:
        return _zero_state(core, B)
    L = core.num_layers
    if core._cell == "LSTM":
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{where}: an LSTM state is a tuple (h, c)")
        parts = [(state[0], core.output_size, "h"), (state[1], core.hidden_size, "c")]
    else:
        if isinstance(state, (tuple, list)):
            raise TypeError(f"{where}: a {type(core).__name__} state is one array h")
        parts = [(state, core.output_size, "h")]
    out = []
    for arr, size, part in parts:
        a = _values(arr)
        if a.dtype.kind != "f":
            raise TypeError(f"{where}: {part} must be floating point, got {a.dtype}")
        if a.shape == (L, size) and B == 1:
            a = a[:, None, :]
        if a.shape != (L, B, size):
            raise ValueError(f"{where}: {part} must have shape {(L, B, size)}, got {a.shape}")
        out.append(np.array(a, dtype=core.dtype, order="C", copy=True))
    return tuple(out) if core._cell == "LSTM" else out[0]


class _CoreRunner:
    """Runs one core layer over a time-major chunk, carrying state and the last output
    (``last_out``; None after a :meth:`Stream.step`: the state's top h is the output)."""

    def __init__(self, core, B: int):
        self.core = core
        self.B = B
        self.state = _zero_state(core, B)
        self.last_out = np.zeros((B, core.output_size), core.dtype)

    def reset(self, B: int):
        self.B = B
        self.state = _zero_state(self.core, B)
        self.last_out = np.zeros((B, self.core.output_size), self.core.dtype)

    def step(self, x, num_threads):
        """One unmasked step ``x`` ``(B, I)`` through the layer's streaming entry (as
        :meth:`Stream.step` runs a layer): its output ``(B, H_out)``, a new array; None
        where that entry does not take it (the caller runs :meth:`run`)."""
        core, st = self.core, self.state
        h, c = (st[0], st[1]) if type(st) is tuple else (st, None)
        if h.dtype != core.dtype or x.dtype.kind != "f":   # (else the call refuses it)
            return None
        try:
            y = core._step_fast(np.ascontiguousarray(x, dtype=core.dtype), h, c,
                                num_threads, True)
        except (TypeError, ValueError):     # (the kernel's entry refuses before it runs)
            return None
        self.last_out = None                # (the state's top h is the output)
        return y

    def snapshot(self):
        return _copy_state(self.state)

    def restore(self, value, B: int, where: str):
        s = _validate_state(self.core, value, B, where)
        self.state = s
        self.last_out = (s[0] if isinstance(s, tuple) else s)[-1].copy()

    def run(self, x_tm, mask_tm=None, masked_output="carry", num_threads=None):
        """x_tm (T, B, I) -> (T, B, H_out)."""
        core = self.core
        if core.batch_first:
            x = np.swapaxes(x_tm, 0, 1)
            m = None if mask_tm is None else np.swapaxes(mask_tm, 0, 1)
        else:
            x, m = x_tm, mask_tm
        out, state = core(x, self.state, mask=m, masked_output=masked_output,
                          num_threads=num_threads)
        if core.batch_first:
            out = np.swapaxes(out, 0, 1)
        if mask_tm is not None and masked_output == "carry" and out.shape[0]:
            # the kernel starts each call with a zero "previous output"; a stream must
            # continue from the previous chunk's last output at leading masked steps
            seen = np.logical_or.accumulate(mask_tm, axis=0)     # (T, B)
            lead = ~seen
            if lead.any():
                out = np.array(out, copy=True)
                t_idx, b_idx = np.nonzero(lead)
                last = self.last_out
                if last is None:        # after step(): the state's top h is the output
                    last = (self.state[0] if type(self.state) is tuple else self.state)[-1]
                out[t_idx, b_idx] = last[b_idx]
        self.state = state
        if out.shape[0]:
            self.last_out = np.array(out[-1], copy=True)
        return out


class _ConvContext:
    """A causal Conv1D in a stream: its last ``(kernel_size - 1) * dilation_rate`` inputs
    (zeros at the start, as the causal padding), put before each chunk; the outputs of
    those steps are dropped, so a chunk's outputs are the whole call's."""

    def __init__(self, layer, B: int):
        self.layer = layer
        self.n = (layer.kernel_size - 1) * layer.dilation_rate
        self.width = layer.kernel.shape[1] * layer.groups
        self.reset(B)

    def reset(self, B: int):
        self.state = np.zeros((B, self.n, self.width), self.layer.kernel.dtype)

    def run(self, h):
        h = np.asarray(h)
        if h.dtype.kind not in "fbiu":
            raise TypeError(f"{self.layer.name}: expected real numbers, got {h.dtype}")
        h = h.astype(self.state.dtype, copy=False)
        if h.ndim != 3 or h.shape[2] != self.width:
            raise ValueError(f"{self.layer.name}: expected (batch, steps, {self.width}) "
                             f"input, got shape {h.shape}")
        x = np.concatenate([self.state, h], axis=1)
        self.state = x[:, x.shape[1] - self.n:].copy()
        return self.layer.call(x, None)[0][:, self.n:]

    def snapshot(self):
        return self.state.copy()

    def restore(self, value, B: int, where: str):
        if value is None:
            return self.reset(B)
        what = f"{where}: the last inputs of Conv1D {self.layer.name!r}"
        try:
            a = _values(value)
        except Exception as e:          # (a ragged list, an object that is no array)
            raise TypeError(f"{what} are not an array: {e}") from None
        if a.dtype.kind != "f":
            raise TypeError(f"{what} must be floating point, got {a.dtype}")
        if a.shape == (self.n, self.width) and B == 1:
            a = a[None]
        if a.shape != (B, self.n, self.width):
            raise ValueError(f"{what} must have shape {(B, self.n, self.width)}, got "
                             f"{a.shape}")
        self.state = np.array(a, dtype=self.state.dtype, order="C", copy=True)


class _AttentionCache:
    """A causal attention layer in a stream: the keys and values it has read so far
    (MultiHeadAttention: their projections) and their mask, so each chunk's queries
    attend to every step up to their own, as in the whole call.  ``state``: (keys,
    values, mask or None, n) with the first ``n`` steps of the buffers in use (grown by
    doubling; a run writes only beyond ``n``, so a refused feed's state is put back by
    assigning the old tuple)."""

    def __init__(self, layer, B: int):
        self.layer = layer
        self.reset(B)

    def reset(self, B: int):
        self.state = (None, None, None, 0)

    def _grown(self, k, v, km):
        """(keys, values, mask or None, n, n + the chunk's steps): the buffers with the
        chunk's ``k``, ``v``, ``km`` written after their first ``n`` steps (new arrays
        where they must grow, or take the chunk's dtype: a state set in another)."""
        K, V, M, n = self.state
        B, c = k.shape[:2]
        if K is not None and (K.shape[2:] != k.shape[2:] or V.shape[2:] != v.shape[2:]):
            raise ValueError(f"cannot stream layer {self.layer.name!r}: keys / values of "
                             f"shapes {k.shape} / {v.shape} after ones of "
                             f"{K[:, :n].shape} / {V[:, :n].shape}")
        if K is None or n + c > K.shape[1] or K.dtype != k.dtype or V.dtype != v.dtype:
            cap = max(n + c, 2 * n, 16)
            K2, V2 = (np.empty((B, cap) + a.shape[2:], a.dtype) for a in (k, v))
            if n:
                K2[:, :n], V2[:, :n] = K[:, :n], V[:, :n]
            K, V = K2, V2
            if M is not None:
                M2 = np.ones((B, cap), bool)
                M2[:, :n] = M[:, :n]
                M = M2
        if km is not None and M is None:
            M = np.ones((B, K.shape[1]), bool)
        K[:, n:n + c], V[:, n:n + c] = k, v
        if M is not None:
            M[:, n:n + c] = True if km is None else km
        return K, V, M, n, n + c

    def run(self, hs, masks):
        layer = self.layer
        xs, ms, dt = layer._tensors(hs, masks)
        q, k, v = layer._keys(xs)
        K, V, M, n, end = self._grown(k, v, layer._key_mask(ms))
        qm = ms[0]
        if M is not None or qm is not None:
            # a query step that sees no unmasked key (or, MultiHeadAttention, a masked
            # query step): Keras spreads its weights over every step of the whole
            # sequence, later ones too, which no stream knows
            seen = np.ones(qm.shape, bool) if M is None else \
                np.logical_or.accumulate(M[:, :end], axis=1)[:, n:]
            bad = layer._no_view(qm, seen)
            if bad.any():
                t, b = (int(i[0]) for i in np.nonzero(bad.T))     # (the first step)
                why = "its query step is masked" if qm is not None and not qm[b, t] \
                    else "every step so far is masked"
                raise ValueError(
                    f"cannot stream layer {layer.name!r} of type {type(layer).__name__} "
                    f"at step {n + t} of sequence {b}: {why}, so Keras spreads the step's "
                    "attention over every step of the whole sequence, later ones too, "
                    "which a stream does not know yet")
        out, _ = layer._attend(q, K[:, :end], V[:, :end], qm,
                               None if M is None else M[:, :end], dt, n)
        self.state = (K, V, M, end)
        return out, qm

    def snapshot(self):
        K, V, M, n = self.state
        if not n:
            return None
        return (K[:, :n].copy(), V[:, :n].copy(), None if M is None else M[:, :n].copy())

    def restore(self, value, B: int, where: str):
        if value is None:
            return self.reset(B)
        what = (f"{where}: the keys, values and mask {type(self.layer).__name__} "
                f"{self.layer.name!r} has read")
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"{what} must be a tuple (keys, values, mask or None)")
        try:
            k, v = _values(value[0]), _values(value[1])
            m = None if value[2] is None else _values(value[2])
        except Exception as e:
            raise TypeError(f"{what} are not arrays: {e}") from None
        if k.dtype.kind != "f" or v.dtype.kind != "f":
            raise TypeError(f"{what}: keys and values must be floating point, got "
                            f"{k.dtype} and {v.dtype}")
        heads = getattr(self.layer, "num_heads", None)
        want = 3 if heads is None else 4
        if k.ndim != want or v.ndim != want or k.shape[:2] != v.shape[:2] or \
                k.shape[0] != B or (heads is not None and (
                    k.shape[2:] != (heads, self.layer.key_dim) or
                    v.shape[2:] != (heads, self.layer.value_dim))):
            raise ValueError(f"{what}: keys / values of shapes {k.shape} / {v.shape} "
                             f"(want {want}-D, batch {B}, the same steps" +
                             ("" if heads is None else ", (heads, key_dim) / (heads, "
                              "value_dim) last") + ")")
        if m is not None and (m.dtype != bool or m.shape != k.shape[:2]):
            raise ValueError(f"{what}: the mask must be bool of shape {k.shape[:2]}, got "
                             f"{m.dtype} {m.shape}")
        self.state = (np.array(k, order="C"), np.array(v, order="C"),
                      None if m is None else np.array(m), k.shape[1])


def _causal_attention(layer) -> bool:
    from ._model_merge import _AttentionBase
    return isinstance(layer, _AttentionBase) and layer.use_causal_mask


def _conv_streams(layer):
    """None where a Conv1D streams (strides 1, and causal or of one tap), else why not."""
    if layer.strides != 1:
        return f"strides={layer.strides} (a stream needs 1)"
    if layer.padding != "causal" and layer.kernel_size != 1:
        return (f"padding={layer.padding!r} with {layer.kernel_size} taps (it reads later "
                "steps; a stream needs padding='causal' or one tap)")
    return None


def _per_step(layer) -> bool:
    """Whether a normalisation or scaling layer acts on each step's features alone (so a
    stream runs it step by step): over the features (axis -1 or 2), or with weights that
    do not vary along the steps."""
    from .model import (BatchNormalization, LayerNormalization, Normalization, PReLU,
                        Rescaling)
    if isinstance(layer, LayerNormalization):
        return set(layer.axis) <= {-1, 2}
    if isinstance(layer, BatchNormalization):
        return layer.axis in (-1, 2)
    if isinstance(layer, Normalization):
        return bool(layer.axis) and set(layer.axis) <= {-1, 2}
    if isinstance(layer, Rescaling):
        return max(layer.scale.ndim, layer.offset.ndim) <= 1
    if isinstance(layer, PReLU):
        return layer.alpha.ndim == 2 and layer.alpha.shape[0] == 1
    return _softmax_on_features(layer, 2) or _op_on_features(layer, 2)


def _softmax_on_features(layer, first) -> bool:
    """Whether ``layer`` is a Softmax layer over the axes from ``first`` on (-1 or
    ``first`` and later: another negative axis may be the steps')."""
    from ._model_merge import Softmax
    if not isinstance(layer, Softmax):
        return False
    axes = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
    return all(a == -1 or a >= first for a in axes)


def _op_on_features(layer, first) -> bool:
    """Whether ``layer`` is an operation (fastrnn.model.Op) that acts on the axes from
    ``first`` on alone (2: each step's features; 1: each row's, after a recurrent layer
    that returns its last step): of one tensor, elementwise (a number its other
    operand), a reduction or softmax over those axes, a slice of them; of several
    tensors of one rank, elementwise, or a concatenation / stack on those axes."""
    from ._model_ops import _BINARY, _REDUCE, _UNARY, WHOLE_AXIS, Op
    if not isinstance(layer, Op) or layer.ranks is None or \
            min(layer.ranks) <= first:
        return False
    r, op = layer.ranks[0], layer.op
    if layer.n_tensors != 1:
        if len(set(layer.ranks)) != 1:
            return False
        ax = layer.attrs.get("axis")
        if op in ("Concatenate", "Stack"):
            r += op == "Stack"
            return isinstance(ax, int) and -r <= ax < r and ax % r >= first
        return op in _BINARY
    if op in _UNARY or op in _BINARY or op in ("Clip", "Cast"):
        return True
    if op in _REDUCE or op in ("Softmax", "LogSoftmax"):
        ax = layer.attrs.get("axis", -1 if op in ("Softmax", "LogSoftmax") else None)
        axes = ax if isinstance(ax, list) else [ax]
        return ax is not None and all(-r <= a < r and a % r >= first for a in axes)
    if op == "GetItem":
        k = layer.args[1]
        return isinstance(k, list) and len(k) > first and all(
            i == WHOLE_AXIS[0] for i in k[:first]) and all(
            i is not None and i != WHOLE_AXIS[1] for i in k)
    return False


def _concat_on_features(layer) -> bool:
    """Whether a Concatenate layer joins each step's tensors (not along the steps):
    axis -1 or from 2 (another negative axis may be the steps' and is refused)."""
    return layer.axis == -1 or layer.axis >= 2


def _why_not_merged(layer) -> str:
    from ._model_merge import Concatenate, _AttentionBase
    if isinstance(layer, Concatenate):
        return (f" along axis {layer.axis}: a stream joins each step's tensors (axis -1, "
                "or 2 and later)")
    if isinstance(layer, _AttentionBase):
        return (": it is not causal, so each step attends to later steps (a stream runs "
                "attention with use_causal_mask=True)")
    return " on sequences: it reads across the steps (or its axes are not known)"


class Stream:
    """A stateful step-by-step runner over a layer or a model.

    Parameters
    ----------
    model : a uni-directional fastrnn layer (:class:`~fastrnn.LSTM`, :class:`~fastrnn.GRU`,
        :class:`~fastrnn.SimpleRNN`) or a :class:`fastrnn.model.Model`.
    batch_size : number of independent streams run side by side (``B``).
    num_threads : threads per call (default: the layer's / the global setting).  For
        one-step calls at small sizes, ``1`` is usually fastest.

    Methods: :meth:`step` (one time step), :meth:`feed` (a chunk of steps),
    :meth:`reset`; property :attr:`state` (get a copy / set).
    """

    def __init__(self, model: Any, batch_size: int = 1, *, num_threads: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.batch_size = int(batch_size)
        # (checked now, not at the first step)
        self.num_threads = None if num_threads is None else _threads._check_threads(num_threads)
        self.steps_seen = 0
        if _is_core(model):
            _check_core(model)
            self._kind = "layer"
            self._runners = [_CoreRunner(model, self.batch_size)]
            self._plan = None
        else:
            from .model import Layer, Model
            if not isinstance(model, Model):
                from .cells import RNNCellBase
                hint = ""
                if isinstance(model, RNNCellBase):
                    hint = ("; to stream a cell, pass the one-layer module it runs on: "
                            "Stream(cell.layer)")
                elif type(model).__name__ == "OnnxModel":
                    hint = ("; ONNX models are not streamed: a uni-directional layer of "
                            "model.recurrent_layers can be, with the rest of the graph run "
                            "by the caller")
                elif isinstance(model, Layer):
                    hint = ("; wrap it in a model (fastrnn.model.Model([...])) or pass its "
                            "core layer" + (" (Stream(layer.core))" if hasattr(model, "core")
                                            else ""))
                elif type(model).__module__.split(".")[0] == "torch":
                    hint = "; convert a torch module first: Stream(fastrnn.from_torch(module))"
                raise TypeError("Stream needs a fastrnn layer (LSTM, GRU, SimpleRNN) or a "
                                f"fastrnn.model.Model, got {type(model).__name__}{hint}")
            self._kind = "model"
            self._plan, self._runners, self._outs = self._plan_model(model)
            self._one_in, self._one_out = model.n_inputs == 1, len(self._outs) == 1
            self._guarded = model.inputs is not None and len(self._runners) > 0
            self._slots = [None] * (model.n_inputs + len(model.layers))

    # ------------------------------------------------------------------ model planning
    def _plan_model(self, model):
        """The stream's program: one entry a layer (a TimeDistributed of a model: its
        fold ... unfold block), ``(kind, layer, runner, srcs, dst, single)``, each reading
        the slots ``srcs`` (the model's input k at slot k, layer i's first tensor at
        ``n_inputs + i``) and writing slot ``dst``; and the runners that carry state."""
        from ._model_conv import Conv1D
        from ._model_merge import Concatenate, _Elementwise, _Merge
        from .model import (INPUT, Activation, BatchNormalization, Bidirectional, Dense,
                            Dropout, Embedding, FoldTime, InputCast, KerasRNN,
                            LayerNormalization, Masking, TimeDistributed)
        n, n_in = len(model.layers), model.n_inputs
        starts = getattr(model, "initial_states", None)
        if starts:
            i = min(starts)
            raise ValueError(f"cannot stream model {model.name!r}: layer "
                             f"{model.layers[i].name!r} starts from the final states of "
                             f"layer {model.layers[starts[i][0][0]].name!r}, known only "
                             "after the whole sequence")
        graph = model._graph()
        labels = model._labels()
        have = set(range(n_in))        # the slots written so far

        def slot(a, b, who):
            if b != 0 and a != INPUT:
                what = "the model's output" if who is None else f"layer {who!r}"
                raise ValueError(f"cannot stream model {model.name!r}: {what} reads "
                                 f"{model._tensor_name(a, b, labels)}, not the first "
                                 f"tensor of layer {labels[a]!r} (a returned state or "
                                 "attention scores: a stream carries each layer's first "
                                 "tensor, one a step)")
            s = b if a == INPUT else n_in + a
            if s not in have:       # (a layer inside a TimeDistributed of a model)
                raise ValueError(f"cannot stream model {model.name!r}: "
                                 f"{'its output' if who is None else f'layer {who!r}'} "
                                 f"reads {labels[a]!r}, a layer inside a TimeDistributed "
                                 "of a model, from outside it")
            return s

        # rows[s]: the name of the recurrent layer returning its last step (return_sequences
        # False) whose output slot s derives from, as (B, features) a step; None: (B, T, ...)
        rows = [None] * (n_in + n)
        plan, runners = [], []
        # layers that act on each step's features alone (plus normalisations over them)
        rowwise = (Embedding, Masking, Dense, Dropout, Activation, InputCast)
        inside = set()      # (the layers of a TimeDistributed of a model, run as one)
        for i, layer in enumerate(model.layers):
            if i in inside:
                continue
            name = labels[i]
            srcs = tuple(slot(a, b, name) for a, b in graph[i])
            ins = [rows[s] for s in srcs]
            last = next((r for r in ins if r is not None), None)
            dst, single = n_in + i, layer.n_inputs == 1
            if last is not None and any(r is None for r in ins):
                raise ValueError(f"cannot stream model {model.name!r}: layer {name!r} "
                                 f"merges {model._reads(i, labels)}: the last step of layer "
                                 f"{last!r} (return_sequences=False) with every step of "
                                 "another tensor (each input of a stream is a sequence, "
                                 "(B, T, ...))")
            if isinstance(layer, Bidirectional):
                raise ValueError(f"cannot stream model {model.name!r}: layer {name!r} is "
                                 "Bidirectional and needs the whole sequence")
            if last is not None and isinstance(layer, (KerasRNN, TimeDistributed, Conv1D,
                                                       FoldTime)):
                # (the whole call refuses them too: they need (B, T, ...))
                raise ValueError(f"cannot stream model {model.name!r}: layer {name!r} "
                                 f"of type {type(layer).__name__} needs (B, T, ...) input, "
                                 f"but it follows layer {last!r}, which returns only "
                                 "its last step (return_sequences=False): (B, features)")
            if not single:
                if last is not None and (isinstance(layer, _Merge) or
                                         _op_on_features(layer, 1)):
                    entry = ("row", layer, None)
                elif last is None and (isinstance(layer, _Elementwise) or (
                        isinstance(layer, Concatenate) and _concat_on_features(layer))
                        or _op_on_features(layer, 2)):
                    entry = ("merge", layer, None)
                elif last is None and _causal_attention(layer):
                    r = _AttentionCache(layer, self.batch_size)
                    runners.append(r)
                    entry = ("attn", layer, r)
                else:
                    raise ValueError(f"cannot stream layer {name!r} of type "
                                     f"{type(layer).__name__}" + _why_not_merged(layer))
            elif isinstance(layer, KerasRNN):
                _check_core(layer.core, f"layer {name!r}")
                r = _CoreRunner(layer.core, self.batch_size)
                runners.append(r)
                entry = ("rnn", layer, r)
                if not layer.return_sequences:
                    last = name
            elif last is not None and (isinstance(
                    layer, rowwise + (LayerNormalization, BatchNormalization)) or
                    _softmax_on_features(layer, 1) or _op_on_features(layer, 1)):
                # after a last-step RNN the whole call gives these (B, features): the
                # stream runs them on each step's (B, features), axes as in that call
                entry = ("row", layer, None)
            elif isinstance(layer, rowwise + (TimeDistributed,)) or _per_step(layer):
                entry = ("step", layer, None)
            elif isinstance(layer, FoldTime) and model.inputs is not None:
                # a Keras TimeDistributed of a model: each step's (B, ...) through it
                j, members, block = _folded_block(model, i)
                entry, dst = ("step", block, None), n_in + j
                inside.update(members)
            elif type(layer) is Conv1D:
                why = _conv_streams(layer)
                if why:
                    raise ValueError(f"cannot stream layer {name!r} of type Conv1D: " + why)
                if layer.padding == "causal" and layer.kernel_size > 1:
                    r = _ConvContext(layer, self.batch_size)
                    runners.append(r)
                    entry = ("conv", layer, r)
                else:           # (one tap: each step alone)
                    entry = ("step", layer, None)
            else:
                raise ValueError(f"cannot stream layer {name!r} of type "
                                 f"{type(layer).__name__}")
            rows[dst] = last
            have.add(dst)
            plan.append(entry + (srcs, dst, single))
        # (a chain's outputs: all its last layer gives, e.g. an LSTM's returned states)
        outs = tuple(slot(a, b, None) for a, b in (model.outputs or [
            (n - 1, b) for b in range(model.layers[-1].n_outputs())]))
        if not runners:
            raise ValueError(f"model {model.name!r} has no recurrent layer (nor a causal "
                             "Conv1D) to stream: it carries nothing from step to step")
        # the slots each entry reads for the last time (freed after it; outputs kept);
        # an entry that reads only the one before it takes that one's (h, mask) as they
        # are (srcs None), kept in a slot only for another reader or the outputs
        drops = [[] for _ in plan]
        readers = {}
        for k, e in enumerate(plan):
            for s in e[3]:
                readers.setdefault(s, []).append(k)
        for s, ks in readers.items():
            if s not in outs:
                drops[ks[-1]].append(s)     # (its last reader)
        prog = []
        for k, (kind, layer, runner, srcs, dst, single) in enumerate(plan):
            chained = k > 0 and single and srcs == (plan[k - 1][4],) and \
                readers[srcs[0]] == [k] and srcs[0] not in outs
            keep = dst in outs or readers.get(dst, []) != [k + 1] or \
                plan[k + 1][3] != (dst,) or not plan[k + 1][5]    # (k + 1: a reader)
            prog.append((kind, layer, runner, None if chained else srcs, dst, single,
                         keep, tuple(s for s in drops[k] if not chained)))
        return prog, runners, outs

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """A copy of the carried state: for a layer, what the layer takes as ``hx``
        (``h`` ``(L, B, H)``; LSTM ``(h, c)``); for a model, a list with one entry per
        layer that carries one, in order: a recurrent layer's (as a layer's), a causal
        Conv1D's last ``(kernel_size - 1) * dilation_rate`` inputs ``(B, n, channels)``,
        a causal attention layer's ``(keys, values, mask or None)`` of the steps so far
        (None before its first; MultiHeadAttention: projected, ``(B, n, heads, dim)``).
        Setting ``None`` (or ``None`` for one entry of a model's) zeroes it, keeping
        :attr:`steps_seen` (:meth:`reset` zeroes both)."""
        states = [r.snapshot() for r in self._runners]
        return states[0] if self._kind == "layer" else states

    @state.setter
    def state(self, value) -> None:
        if value is None:
            value = [None] * len(self._runners)
        elif self._kind == "layer":
            value = [value]
        elif not isinstance(value, (list, tuple)) or len(value) != len(self._runners):
            raise ValueError(f"model state must be a list of {len(self._runners)} states "
                             "(one per recurrent layer, causal Conv1D and causal "
                             "attention layer, in order)")
        # (each checked before any is set: a bad entry leaves the stream as it was)
        trial = [copy.copy(r) for r in self._runners]
        for i, (r, v) in enumerate(zip(trial, value)):
            r.restore(v, self.batch_size, "state" if self._kind == "layer" else f"state[{i}]")
        for r, t in zip(self._runners, trial):
            r.__dict__.update(t.__dict__)

    def reset(self, batch_size: int | None = None) -> None:
        """Zero the state (and optionally change the batch size)."""
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                    or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
            self.batch_size = int(batch_size)
        for r in self._runners:
            r.reset(self.batch_size)
        self.steps_seen = 0

    # ------------------------------------------------------------------ running
    def _check_batch(self, B: int):
        if B != self.batch_size:
            raise ValueError(f"this stream has batch_size={self.batch_size}, got a batch of {B} "
                             "(use reset(batch_size=...) to change it)")

    def feed(self, chunk, mask=None) -> np.ndarray:
        """Run a chunk of time steps, carry the state on, return the chunk's outputs.

        * layer: ``chunk`` ``(T, B, I)`` (``(B, T, I)`` for a ``batch_first`` layer);
          returns ``(T, B, H_out)`` (or ``(B, T, H_out)``).  ``mask`` optional bool
          ``(T, B)`` (``(B, T)``) with Keras semantics (state carried at masked steps).
        * model: ``chunk`` ``(B, T, ...)`` (a model of several inputs: a list of them in
          order or a dict by input name, each ``(B, T, ...)``); returns ``(B, T, out)``
          (every step's output, also for recurrent layers that return only the last step
          when run whole: the whole-sequence result is then ``feed(x)[:, -1]``); a list
          of those for a model of several outputs.
        """
        if self._kind == "layer":
            return self._feed_layer(chunk, mask)
        if mask is not None:
            raise ValueError("a model stream takes masks from its Embedding/Masking layers")
        return self._feed_model(self._chunk_inputs(chunk))

    def _feed_layer(self, chunk, mask):
        core = self.model
        x = _values(chunk)
        if x.ndim != 3:
            raise ValueError(f"chunk must have 3 dimensions "
                             f"({'B, T' if core.batch_first else 'T, B'}, I), got {x.shape}")
        if core.batch_first:
            x = np.swapaxes(x, 0, 1)
        self._check_batch(x.shape[1])
        m = None
        if mask is not None:
            m = _values(mask)
            if m.dtype.kind not in "biu":       # (as the layers: 0.5 is not True)
                raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
            m = m.astype(bool, copy=False)
            if core.batch_first:
                m = m.T
            if m.shape != x.shape[:2]:
                raise ValueError(f"mask must have shape {x.shape[:2] if not core.batch_first else x.shape[1::-1]}, got {np.shape(mask)}")
        out = self._runners[0].run(x, m, "carry", self.num_threads)
        self.steps_seen += x.shape[0]
        return np.swapaxes(out, 0, 1) if core.batch_first else out

    def _chunk_inputs(self, chunk, step=False):
        """The model's inputs of a chunk ``(B, T, ...)`` (``step``: of one step,
        ``(B, ...)``, given an axis of one step) each, from an array or a list / a dict by
        input name for a model of several, checked: one batch size (the stream's) and one
        number of steps."""
        model = self.model
        xs = [_values(chunk)] if self._one_in else \
            [_values(a) for a in model._feed(chunk, None)[0]]
        for k, x in enumerate(xs):
            if x.ndim < 2 - step:
                who = "" if self._one_in else f" ({model._input_label(k)})"
                if step:
                    raise ValueError(f"step input{who} must be a batch: (B, features), or "
                                     "(B,) token ids for a model starting with an Embedding; "
                                     f"got shape {x.shape}")
                raise ValueError(f"a model chunk{who} is batch first (B, T, ...), got shape "
                                 f"{x.shape}")
            if step:
                xs[k] = x[:, None]
        if xs[0].shape[0] != self.batch_size:
            self._check_batch(xs[0].shape[0])
        if not self._one_in and len({x.shape[1] for x in xs}) > 1:
            raise ValueError("the inputs disagree on the number of steps: " +
                             ", ".join(f"{model._input_label(k)} has {x.shape[1]}"
                                       for k, x in enumerate(xs)))
        return xs

    def _feed_model(self, xs):
        """Run the plan on the inputs ``xs`` (each ``(B, T, ...)``): the outputs.  In a
        graph a layer may refuse its input after a branch's recurrent layer moved on:
        the states are put back then (a chain's first stateful layer checks the input
        before any state moves)."""
        if not self._guarded:
            return self._run_plan(xs)
        saved = [(r, _copy_state(r.state) if type(r) is _CoreRunner else r.state,
                  getattr(r, "last_out", None)) for r in self._runners]
        try:
            return self._run_plan(xs)
        except BaseException:
            for r, st, last in saved:
                r.state = st
                if type(r) is _CoreRunner:
                    r.last_out = last
            raise

    def _run_plan(self, xs):
        vals = self._slots[:]           # (tensor, mask) pairs
        if self._one_in:
            vals[0] = (xs[0], None)
        else:
            for k, x in enumerate(xs):
                vals[k] = (x, None)
        h = mask = None
        for kind, layer, runner, srcs, dst, single, keep, drop in self._plan:
            if srcs is not None and single:     # (None: the previous entry's h, mask)
                h, mask = vals[srcs[0]]
            if kind == "step":
                h, mask = layer.call(h, mask)
            elif kind == "merge":           # several tensors, each step's joined
                hs = [vals[s][0] for s in srcs]
                if len({np.ndim(a) for a in hs}) > 1:
                    raise ValueError(f"cannot stream layer {layer.name!r}: it merges tensors "
                                     "of different ranks (shapes "
                                     f"{[np.shape(a) for a in hs]}), which Keras broadcasts "
                                     "over the steps")
                h, mask = layer.call(hs, [vals[s][1] for s in srcs])
            elif kind == "attn":            # queries of the chunk, keys of every step
                h, mask = runner.run([vals[s][0] for s in srcs], [vals[s][1] for s in srcs])
            elif kind == "conv":            # (a convolution drops the mask, as Keras's)
                h, mask = runner.run(h), None
            elif kind == "row":             # each step's (B, features) alone
                hs = [np.asarray(h)] if single else [np.asarray(vals[s][0]) for s in srcs]
                lead = hs[0].shape[:2]
                rows = [a.reshape((-1,) + a.shape[2:]) for a in hs]
                y = layer.call(rows[0], None)[0] if single else \
                    layer.call(rows, [None] * len(rows))[0]
                h, mask = y.reshape(lead + y.shape[1:]), None
            else:
                h = np.asarray(h)
                if h.ndim != 3:
                    raise ValueError(f"layer {layer.name!r} expects (B, T, features), got {h.shape}")
                y = None
                if h.shape[1] == 1 and (mask is None or (
                        mask.all() if type(mask) is np.ndarray else np.all(mask))):
                    # one unmasked step (Stream.step): the layer's streaming entry, as a
                    # layer's stream runs it (a model's step 21.9 -> ~11 us at H=256)
                    y = runner.step(h[:, 0], self.num_threads)
                if y is not None:
                    h = y[:, None]
                else:
                    out = runner.run(np.swapaxes(h, 0, 1),
                                     None if mask is None else np.asarray(mask, bool).T,
                                     "zero" if layer.zero_output_for_mask else "carry",
                                     self.num_threads)
                    h = np.ascontiguousarray(np.swapaxes(out, 0, 1))
                if not layer.return_sequences:
                    mask = None
            if keep:
                vals[dst] = (h, mask)
            if drop:
                for s in drop:
                    vals[s] = None
        self.steps_seen += xs[0].shape[1]
        outs = self._outs
        return vals[outs[0]][0] if self._one_out else [vals[s][0] for s in outs]

    def step(self, x_t) -> np.ndarray:
        """One time step: ``x_t`` ``(B, I)`` (``(B,)`` ids for a model starting with an
        Embedding; a model of several inputs: a list or a dict of them); returns the
        step's output ``(B, out)`` (a list for a model of several outputs)."""
        if self._kind == "layer":
            layer = self.model
            fast = getattr(layer, "_step_fast", None)
            if fast is not None:
                r = self._runners[0]
                st = r.state
                h, c = (st[0], st[1]) if type(st) is tuple else (st, None)
                y = None
                if type(x_t) is np.ndarray:
                    # the common case (a C-contiguous array of the layer's dtype and the
                    # stream's shape) goes straight to the kernel, which checks it and
                    # raises before touching the state when it is not
                    try:
                        y = fast(x_t, h, c, self.num_threads, True)
                    except (TypeError, ValueError):
                        y = None
                if y is None:
                    x = _values(x_t)
                    if not (x.ndim == 2 and x.dtype.kind == "f"
                            and x.shape == (self.batch_size, layer.input_size)):
                        return self._step_general(x)
                    # (C order and aligned: an unaligned C-contiguous array, e.g. from
                    # np.frombuffer at an odd offset, is copied as the kernel needs)
                    x = np.ascontiguousarray(x, dtype=layer.dtype)
                    if not x.flags.aligned:
                        x = x.copy()
                    if h.dtype != layer.dtype:      # (the layer converted: .to / .double)
                        r.state = _validate_state(layer, st, self.batch_size, "state")
                        st = r.state
                        h, c = (st[0], st[1]) if type(st) is tuple else (st, None)
                    y = fast(x, h, c, self.num_threads, True)
                # the kernel's step entry (layer._step_fast) updates h/c in place and
                # returns a copy of h[-1] (the step's output: the runner reads it in h,
                # last_out None)
                r.last_out = None
                self.steps_seen += 1
                return y
            return self._step_general(_values(x_t))
        x = _values(x_t) if self._one_in else None
        if x is not None and x.ndim and x.shape[0] == self.batch_size:
            ys = self._feed_model([x[:, None]])     # (the common case, checked)
        else:
            ys = self._feed_model(self._chunk_inputs(x_t, True))
        return ys[:, 0] if self._one_out else [y[:, 0] for y in ys]

    def _step_general(self, x):
        if x.ndim != 2:
            raise ValueError(f"step input must be (B, I), got shape {x.shape}")
        if self.model.batch_first:
            return self._feed_layer(x[:, None], None)[:, 0]
        return self._feed_layer(x[None], None)[0]

    __call__ = step

    def __repr__(self) -> str:
        what = repr(self.model) if self._kind == "layer" else f"Model({self.model.name!r})"
        return (f"Stream({what}, batch_size={self.batch_size}, "
                f"steps_seen={self.steps_seen})")


class _Folded:
    """The layers from a FoldTime to its UnfoldTime (a Keras TimeDistributed of a model)
    as one step layer of a stream: they run on each chunk's steps folded into the batch,
    which carries nothing from step to step."""

    def __init__(self, model, name):
        self.model, self.name = model, name

    def call(self, x, mask=None):
        # (the UnfoldTime's mask: the input's, or a tf.keras 2 model output's)
        return self.model._call([x], [mask], with_mask=True)


def _folded_block(model, i):
    """(the index of the UnfoldTime that closes the FoldTime at ``i``, the indices of
    the layers from one to the other that compute from it, a :class:`_Folded` of those
    layers), or ValueError where those read from outside (the layers of another call of
    a shared model may stand between them)."""
    from .model import INPUT, Model, UnfoldTime
    graph, layers = model.inputs, model.layers
    src = tuple(graph[i][0])
    for j in range(i + 1, len(layers)):
        if isinstance(layers[j], UnfoldTime) and tuple(graph[j][1]) == src and \
                i <= graph[j][0][0] < j:
            break
    else:
        raise ValueError(f"cannot stream model {model.name!r}: FoldTime "
                         f"{layers[i].name!r} has no UnfoldTime reading its input")
    members, seen = [i], {i}
    for k in range(i + 1, j):
        if any(a in seen for a, _ in graph[k]):
            members.append(k)
            seen.add(k)
    members.append(j)
    where = {k: n for n, k in enumerate(members)}
    sub = []
    for k in members:
        refs = []
        for a, t in graph[k]:
            if (a, t) == src and k in (i, j):
                refs.append((INPUT, 0))
            elif a in where and where[a] < where[k]:
                refs.append((where[a], t))
            else:
                raise ValueError(f"cannot stream model {model.name!r}: layer "
                                 f"{layers[k].name!r} reads {model._reads(k)}, not a layer "
                                 f"of the TimeDistributed {layers[j].name!r}")
        sub.append(refs)
    # (a layer outside it that reads one inside: the caller refuses it)
    return j, members, _Folded(Model([layers[k] for k in members], inputs=sub,
                                     name=layers[j].name), layers[j].name)
