"""Gradients through a Keras-style model (:class:`fastrnn.model.Model`): a forward pass
that keeps what the backward needs, and the backward through the graph in reverse.

Each layer kind has a forward (its call's outputs, and what its backward reads) and a
backward (the gradients of its inputs and of its weights, given those of its outputs);
the recurrent layers run their cores' ``forward_train`` / ``backward`` (the kernels of
:mod:`fastrnn.train`).  A layer kind without one is refused by name before anything
runs.  Masks carry no gradient; a gradient reaches a masked step as the layer's
forward used it (a recurrent layer's carried state, a Masking's zeros, a pooling's
kept steps)."""
from __future__ import annotations

import math
import threading

import numpy as np

from ._model_base import _sigmoid, matmul

# activations whose derivative the backward knows: name -> d(act)/dz from (z, y, args)
_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805


def _gelu_grad(z, y, args):
    from scipy.special import erf
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(
        2.0 * math.pi)


def _relu_grad(z, y, args):
    if not args:
        return z > 0
    ns, mx, th = (tuple(args) + (0.0, None, 0.0)[len(args):])[:3]
    ns, th = float(ns), float(th)
    if ns and mx is None and th == 0:       # (a leaky relu: its slope at 0 is 1)
        return np.where(z >= 0, 1, ns)
    up = (z > th) if mx is None else (z > th) & (z < float(mx))
    return up + ns * (z < th)


def _mish_grad(z, y, args):
    t = np.tanh(np.logaddexp(0, z))
    return t + z * (1 - t * t) * _sigmoid(z)


def _hard_sigmoid_grad(z, y, args):
    alpha = float(args[0]) if args else 0.2
    beta = float(args[1]) if len(args) > 1 else 0.5
    u = alpha * z + beta
    return alpha * ((u > 0) & (u < 1))


_DACT = {
    "linear": None,
    "relu": _relu_grad,
    "relu6": lambda z, y, a: (z > 0) & (z < 6),
    "tanh": lambda z, y, a: 1 - y * y,
    "sigmoid": lambda z, y, a: y * (1 - y),
    "elu": lambda z, y, a: np.where(z > 0, 1, y + (float(a[0]) if a else 1.0)),
    "selu": lambda z, y, a: np.where(z > 0, _SELU_S, y + _SELU_S * _SELU_A),
    "softplus": lambda z, y, a: _sigmoid(z),
    "softsign": lambda z, y, a: 1 / np.square(1 + np.abs(z)),
    "swish": lambda z, y, a: _sigmoid(z) * (1 + z * (1 - _sigmoid(z))),
    "exponential": lambda z, y, a: y,
    "gelu": _gelu_grad,
    "mish": _mish_grad,
    "hard_sigmoid": _hard_sigmoid_grad,
    "leaky_relu": lambda z, y, a: np.where(z >= 0, 1, float(a[0]) if a else 0.2),
    "thresholded_relu": lambda z, y, a: z > (float(a[0]) if a else 1.0),
    "softmax": None, "log_softmax": None,
}
_ALIASES = {"silu": "swish", "none": "linear", "identity": "linear",
            "hardsigmoid": "hard_sigmoid", "leakyrelu": "leaky_relu"}
ACTIVATIONS = tuple(sorted(set(_DACT) | {"silu"}))


def _act_key(layer):
    """The layer's activation as (name, args) the backward knows, or ValueError."""
    a = layer.activation
    name, args = ("linear", ()) if a is None else (
        (a, ()) if isinstance(a, str) else (a[0], tuple(a[1:])) if isinstance(
            a, (tuple, list)) and a and isinstance(a[0], str) else (None, ()))
    key = None if name is None else _ALIASES.get(name.lower(), name.lower())
    if key not in _DACT:
        from ._model_base import _act_name
        raise ValueError(f"cannot train through layer {layer.name!r}: the derivative of "
                         f"activation {_act_name(a)!r} is not implemented (fastrnn's: "
                         f"{', '.join(ACTIVATIONS)})")
    return key, args


def _act_backward(spec, z_fn, y, g):
    """dL/dz from dL/dy ``g`` for activation ``spec`` (``z_fn()`` gives z where
    needed)."""
    key, args = spec
    if key == "linear":
        return g
    if key == "softmax":
        return _softmax_back(y, g)
    if key == "log_softmax":
        return _log_softmax_back(y, g)
    z = None if key in ("tanh", "sigmoid", "exponential") else z_fn()
    return g * _DACT[key](z, y, args)


def _softmax_back(y, g, axis=-1):
    """dL/dz of ``y = softmax(z)`` over ``axis`` (an int or a tuple) from dL/dy ``g``."""
    return y * (g - np.sum(g * y, axis=axis, keepdims=True))


def _log_softmax_back(y, g, axis=-1):
    """dL/dz of ``y = log_softmax(z)`` over ``axis`` from dL/dy ``g``."""
    return g - np.exp(y) * np.sum(g, axis=axis, keepdims=True)


def _max_share(x, y, g, axis):
    """dL/dx of a maximum (or minimum) ``y`` of ``x`` over ``axis`` (``y`` and ``g`` with
    that axis kept): ties share the gradient, as JAX's and TensorFlow's reductions."""
    hit = (x == y).astype(g.dtype)
    return g * hit / hit.sum(axis=axis, keepdims=True)


def _unbroadcast(g, shape):
    """``g`` summed down to ``shape`` (the axes broadcasting added or spread)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# ---------------------------------------------------------------------------- layers
# forward(layer, x, mask) -> (outputs, out_mask, ctx); backward(layer, ctx, gys) ->
# (input gradient(s), {weight name: gradient}); gys: one gradient an output (None: zero)

def _activated_f(layer, x, mask):
    """The forward of Dense, Activation, Conv1D: their input, output and activation."""
    y, m = layer.call(x, mask)
    return y, m, (np.asarray(x), y, _act_key(layer))


def _dense_b(layer, ctx, gys):
    x, y, key = ctx
    k = layer.kernel
    x = x.astype(k.dtype, copy=False)

    def z():
        out = matmul(x, k)
        return out + layer.bias if layer.bias is not None else out
    gz = _act_backward(key, z, y, gys[0]).astype(k.dtype, copy=False)
    x2, g2 = x.reshape(-1, x.shape[-1]), gz.reshape(-1, gz.shape[-1])
    grads = {"kernel": matmul(x2.T, g2)}
    if layer.bias is not None:
        grads["bias"] = g2.sum(axis=0)
    return matmul(gz, k.T), grads


def _activation_b(layer, ctx, gys):
    x, y, key = ctx
    return _act_backward(key, lambda: x.astype(y.dtype), y, gys[0]).astype(y.dtype), {}


def _identity_f(layer, x, mask):
    y, m = layer.call(x, mask)
    return y, m, np.asarray(x).dtype


def _identity_b(layer, ctx, gys):
    return gys[0].astype(ctx, copy=False) if ctx.kind == "f" else None, {}


def _embedding_f(layer, x, mask):
    y, m = layer.call(x, mask)
    return y, m, np.asarray(x).astype(np.int64)


def _embedding_b(layer, ctx, gys):
    """The table's gradient: each id's rows summed (sorted, then one reduceat: 2.4x faster
    than np.add.at's scatter)."""
    g = np.zeros_like(layer.weights)
    ids = ctx.ravel()
    if ids.size:
        order = np.argsort(ids, kind="stable")
        uniq, starts = np.unique(ids[order], return_index=True)
        rows = gys[0].reshape(-1, g.shape[1])[order]
        g[uniq] = np.add.reduceat(rows, starts, axis=0)
    return None, {"embeddings": g}


def _masking_f(layer, x, mask):
    y, keep = layer.call(x, mask)
    return y, keep, keep


def _masking_b(layer, ctx, gys):
    return np.where(ctx[..., None], gys[0], gys[0].dtype.type(0)), {}


def _pool_f(layer, x, mask):
    y, m = layer.call(x, mask)
    return y, m, (np.asarray(x, y.dtype), y, mask)


def _pool_b(layer, ctx, gys):
    x, y, mask = ctx
    axis = 1 if layer.data_format == "channels_last" else 2
    g = gys[0] if layer.keepdims else np.expand_dims(gys[0], axis)
    if layer.op == "max":
        return _max_share(x, y if layer.keepdims else np.expand_dims(y, axis), g, axis), {}
    if mask is None:
        return np.broadcast_to(g / x.dtype.type(x.shape[axis]), x.shape).copy(), {}
    m = np.asarray(mask, x.dtype)
    m = m[:, :, None] if axis == 1 else m[:, None, :]
    count = m.sum(axis=axis, keepdims=True)
    # (a sequence masked whole: its output is 0 / 0, NaN, as Keras's; its steps get no
    # gradient, as in JAX through Keras's where, instead of NaN spreading to every weight)
    share = np.divide(m, count, out=np.zeros(np.broadcast_shapes(m.shape, count.shape),
                                             x.dtype), where=count > 0)
    return (g * share).astype(x.dtype), {}


def _norm_f(layer, x, mask):
    """The forward of Layer- and BatchNormalization: their input, in the output's dtype."""
    y, m = layer.call(x, mask)
    return y, m, np.asarray(x).astype(y.dtype, copy=False)


def _layer_norm_b(layer, ctx, gys):
    """Over any of the layer's axes (the last, or several: ``axis=[1, 2]``)."""
    from .model import _axes
    x, g = ctx, gys[0]
    dt = x.dtype
    ax = tuple(_axes(layer.axis, x.ndim, layer.name))
    rest = tuple(i for i in range(x.ndim) if i not in ax)
    shape = [x.shape[i] if i in ax else 1 for i in range(x.ndim)]
    mu = x.mean(axis=ax, keepdims=True)
    inv = 1 / np.sqrt(x.var(axis=ax, keepdims=True) + dt.type(layer.epsilon))
    gamma = None if layer.gamma is None else layer.gamma.astype(dt).reshape(shape)
    gh = g if gamma is None else g * gamma
    grads = {}
    if layer.rms_scaling:
        if gamma is not None:
            grads["gamma"] = np.sum(g * x * inv, axis=rest)
        gx = inv * gh - (x - mu) * inv ** 3 * np.mean(gh * x, axis=ax, keepdims=True)
    else:
        xh = (x - mu) * inv
        if gamma is not None:
            grads["gamma"] = np.sum(g * xh, axis=rest)
        if layer.beta is not None:
            grads["beta"] = np.sum(g, axis=rest)
        gx = inv * (gh - gh.mean(axis=ax, keepdims=True)
                    - xh * np.mean(gh * xh, axis=ax, keepdims=True))
    shapes = {"gamma": layer.gamma, "beta": layer.beta}
    return gx.astype(dt, copy=False), {k: v.astype(dt, copy=False).reshape(
        shapes[k].shape) for k, v in grads.items()}


def _batch_norm_b(layer, ctx, gys):
    x, g = ctx, gys[0]
    dt = x.dtype
    a = layer.axis % x.ndim
    shape = [1] * x.ndim
    shape[a] = x.shape[a]
    rest = tuple(i for i in range(x.ndim) if i != a)
    inv = 1 / np.sqrt(layer.moving_variance.astype(dt) + dt.type(layer.epsilon))
    grads = {}
    if layer.gamma is not None:
        grads["gamma"] = np.sum(g * (x - layer.moving_mean.astype(dt).reshape(shape))
                                * inv.reshape(shape), axis=rest).astype(dt)
        inv = inv * layer.gamma.astype(dt)
    if layer.beta is not None:
        grads["beta"] = np.sum(g, axis=rest).astype(dt)
    return (g * inv.reshape(shape)).astype(dt, copy=False), grads


def _window_geometry(layer, x):
    """(taps (rows[, cols]), strides, dilations, (before, after) pads, windows) of a
    convolution's or pooling's windows over ``x`` ``(B, steps[, cols], C)``, as its call
    lays them out."""
    from ._model_conv import _out_sizes, _pads

    def pair(v):
        return tuple(v) if isinstance(v, tuple) else (v,)
    if hasattr(layer, "kernel"):
        k = tuple(layer.kernel.shape[:-2])
        s, d = pair(layer.strides), pair(layer.dilation_rate)
    else:
        k, s, d = pair(layer.pool_size), pair(layer.strides), (1,) * (x.ndim - 2)
    if len(k) == 1:
        p = _pads(x.shape[1], k[0], s[0], d[0], layer.padding)
        n = [(x.shape[1] + p[0] + p[1] - (k[0] - 1) * d[0] - 1) // s[0] + 1]
        return k, s, d, [p], n
    pads, n = _out_sizes(layer.name, x.shape[1:3], k, s, d, layer.padding)
    return k, s, d, pads, n


def _taps(k, s, d, n):
    """Each tap's offsets and the slices of the padded input it reads, one a spatial
    axis."""
    for offs in np.ndindex(*k):
        yield offs, tuple(slice(o * dd, o * dd + (m - 1) * ss + 1, ss)
                          for o, dd, ss, m in zip(offs, d, s, n))


def _pad_spatial(x, pads, fill=0):
    if not any(p or q for p, q in pads):
        return x
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)


def _crop_spatial(gxp, x, pads):
    return gxp[(slice(None),) + tuple(slice(p, p + L) for (p, _), L in
                                      zip(pads, x.shape[1:-1]))]


def _conv_b(layer, ctx, gys):
    """Conv1D and Conv2D (any padding, strides, dilation, groups)."""
    x, y, key = ctx
    x = x.astype(layer.kernel.dtype, copy=False)
    F, cg = layer.kernel.shape[-1], layer.kernel.shape[-2]
    fg = F // layer.groups
    k, s, d, pads, n = _window_geometry(layer, x)
    xp = _pad_spatial(x, pads)
    groups = [(slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg))
              for g in range(layer.groups)]
    taps = list(_taps(k, s, d, n))
    lead = (slice(None),)

    def z():            # (the pre-activation, for the activations whose derivative needs it)
        out = np.zeros(y.shape, x.dtype)
        for offs, sl in taps:
            for ci, co in groups:
                out[..., co] += matmul(xp[lead + sl + (ci,)], layer.kernel[offs][:, co])
        return out + layer.bias if layer.bias is not None else out
    gz = _act_backward(key, z, y, gys[0]).astype(x.dtype, copy=False)
    gk = np.zeros_like(layer.kernel)
    gxp = np.zeros(xp.shape, x.dtype)
    g2 = gz.reshape(-1, F)
    for offs, sl in taps:
        for ci, co in groups:
            gk[offs][:, co] += matmul(xp[lead + sl + (ci,)].reshape(-1, cg).T, g2[:, co])
            gxp[lead + sl + (ci,)] += matmul(gz[..., co], layer.kernel[offs][:, co].T)
    grads = {"kernel": gk}
    if layer.bias is not None:
        grads["bias"] = g2.sum(axis=0)
    return _crop_spatial(gxp, x, pads), grads


def _pool_window_b(layer, ctx, gys):
    """MaxPooling / AveragePooling 1-D and 2-D: a maximum's gradient to the window's
    first largest value (as JAX's and TensorFlow's), an average's shared by the values
    of the window inside the input."""
    x, y, _ = ctx
    k, s, d, pads, n = _window_geometry(layer, x)
    g = gys[0]
    lead = (slice(None),)
    gxp = np.zeros((x.shape[0],) + tuple(L + p + q for L, (p, q) in zip(x.shape[1:-1], pads))
                   + (x.shape[-1],), g.dtype)
    if layer.op == "max":
        xp = _pad_spatial(x, pads, -np.inf)
        taken = np.zeros(y.shape, bool)
        for _, sl in _taps(k, s, d, n):
            hit = (xp[lead + sl] == y) & ~taken
            taken |= hit
            gxp[lead + sl] += g * hit
    else:
        inside = _pad_spatial(np.ones((1,) + x.shape[1:-1] + (1,), g.dtype), pads)
        count = sum(inside[lead + sl] for _, sl in _taps(k, s, d, n))
        for _, sl in _taps(k, s, d, n):
            gxp[lead + sl] += g / count
    return _crop_spatial(gxp, x, pads), {}


def _softmax_f(layer, x, mask):
    y, m = layer.call(x, mask)
    return y, m, y


def _softmax_b(layer, ctx, gys):
    y, g = ctx, gys[0]
    axes = layer._axes(y.ndim)
    return _softmax_back(y, g, axes).astype(y.dtype), {}


def _rnn_f(layer, x, mask, initial_state=None):
    from .model import _rnn_input
    core = layer.core
    x = _rnn_input(x, layer.name, core)
    m = None if mask is None else np.asarray(mask, dtype=bool)
    out, state, cache = core.forward_train(
        x, layer._hx(initial_state, 1), mask=m,
        masked_output="zero" if layer.zero_output_for_mask else "carry")
    seq = out[:, ::-1] if core.go_backwards else out
    states = [state[0][0], state[1][0]] if isinstance(state, tuple) else [state[0]]
    if layer.return_sequences:
        y, om = np.ascontiguousarray(seq), mask
    else:
        from .model import _last
        y, om = _last(seq, x), None
    outs = [y] + states if layer.return_state else y
    return outs, om, (cache, seq.shape, seq.dtype, initial_state is not None)


def _rnn_b(layer, ctx, gys):
    """(input gradient, or with initial states (it, their gradients in Keras's order)),
    the weights' gradients."""
    cache, shape, dt, given = ctx
    core = layer.core
    g_seq = np.zeros(shape, dt)
    if gys[0] is not None:
        if layer.return_sequences:
            g_seq += gys[0]
        elif shape[1]:
            g_seq[:, -1] += gys[0]
    if core.go_backwards:
        g_seq = g_seq[:, ::-1]
    gs = list(gys[1:]) if layer.return_state else []
    gstate = None
    if any(g is not None for g in gs):
        gs = [np.zeros((shape[0], core.hidden_size if k else core.output_size), dt)
              if g is None else np.asarray(g, dt) for k, g in enumerate(gs)]
        gs = [g[None] for g in gs]
        gstate = tuple(gs) if len(gs) == 2 else gs[0]
    res = core.backward(cache, np.ascontiguousarray(g_seq), gstate)
    gx = res.pop("input")
    g0 = [res.pop(k)[0] for k in ("h0", "c0") if k in res]
    return ((gx, g0) if given else gx), res


def _bi_f(layer, x, mask, initial_state=None):
    from .model import _merge_directions
    f, b = layer.forward, layer.backward
    n = f.n_states()
    if initial_state is not None and len(initial_state) != 2 * n:
        raise ValueError(f"{layer.name}: expected {2 * n} initial states, got "
                         f"{len(initial_state)}")
    init_f, init_b = (None, None) if initial_state is None else \
        (list(initial_state[:n]), list(initial_state[n:]))
    yf, mf, cf = _rnn_f(f, x, mask, init_f)
    yb, mb, cb = _rnn_f(b, x, mask, init_b)
    st = []
    if layer.return_state:
        yf, st_f = yf[0], yf[1:]
        yb, st_b = yb[0], yb[1:]
        st = st_f + st_b
    if layer.return_sequences:
        yb = yb[:, ::-1]          # back to input order
    out = _merge_directions(layer.merge_mode, yf, yb)
    outs = [np.ascontiguousarray(yf), np.ascontiguousarray(yb)] if out is None else [out]
    om = mask if layer.return_sequences else None
    outs = outs + st
    return (outs if len(outs) > 1 else outs[0]), om, (cf, cb, yf, yb)


def _bi_b(layer, ctx, gys):
    cf, cb, yf, yb = ctx
    mm = layer.merge_mode
    n_out = 2 if mm is None else 1
    g = gys[0]
    if mm is None:
        gf, gb = gys[0], gys[1]
    elif g is None:
        gf = gb = None
    elif mm == "concat":
        H = yf.shape[-1]
        gf, gb = g[..., :H], g[..., H:]
    elif mm == "sum":
        gf, gb = g, g
    elif mm == "mul":
        gf, gb = g * yb, g * yf
    else:       # ave
        gf = gb = g / g.dtype.type(2)
    if gb is not None and layer.return_sequences:
        gb = gb[:, ::-1]          # to the backward layer's Keras order
    st = list(gys[n_out:])
    n = layer.forward.n_states()
    gx_f, wf = _rnn_b(layer.forward, cf, [gf] + st[:n])
    gx_b, wb = _rnn_b(layer.backward, cb, [gb] + st[n:])
    grads = {f"forward/{k}": v for k, v in wf.items()}
    grads.update({f"backward/{k}": v for k, v in wb.items()})
    if cf[3]:               # (initial states given: theirs, the forward's then the backward's)
        return (gx_f[0] + gx_b[0], gx_f[1] + gx_b[1]), grads
    return gx_f + gx_b, grads


def _td_f(layer, x, mask):
    from .model import Activation, Dense, Dropout, _reads_mask
    x = np.asarray(x)
    inner = layer.layer
    fwd = _FORWARD.get(type(inner))
    if fwd is None:
        _refuse(inner, f" (inside TimeDistributed {layer.name!r})")
    if x.ndim < 3:
        raise ValueError(f"{layer.name}: TimeDistributed needs (B, T, ...) input, got {x.shape}")
    B, T = x.shape[:2]
    if layer.masks == "keras2":     # (tf.keras 2: the mask folded too, as _call_keras2)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape[:2] != (B, T):
                raise ValueError(f"{layer.name}: a mask of shape {mask.shape} for an input "
                                 f"of shape {x.shape}")
        y, m, c = fwd(inner, x.reshape((B * T,) + x.shape[2:]), None if mask is None
                      else mask.reshape((B * T,) + mask.shape[2:]))
        y = np.asarray(y).reshape((B, T) + np.shape(y)[1:])
        if m is not None:
            m = np.asarray(m).reshape((B, T) + np.shape(m)[1:])
        elif mask is None or mask.ndim == 2:
            m = mask
        else:
            m = mask.reshape(B, T, -1).any(-1)
        return y, m, ((B, T), c)
    if isinstance(inner, (Dense, Dropout, Activation)):
        y, _, c = fwd(inner, x, None)
        return y, mask, (None, c)
    if mask is not None and _reads_mask(inner):
        layer.call(x, mask)       # (its refusal)
    y, _, c = fwd(inner, x.reshape((B * T,) + x.shape[2:]), None)
    y = np.asarray(y)
    return y.reshape((B, T) + y.shape[1:]), mask, ((B, T), c)


def _td_b(layer, ctx, gys):
    lead, c = ctx
    inner = layer.layer
    g = gys[0]
    if lead is not None:
        g = g.reshape((-1,) + g.shape[2:])
    gx, grads = _BACKWARD[type(inner)](inner, c, [g])
    if lead is not None and gx is not None:
        gx = gx.reshape(lead + gx.shape[1:])
    return gx, grads


def _merge_f(layer, xs, masks):
    y, m = layer.call(xs, masks)
    return y, m, ([np.asarray(a) for a in xs], masks, y)


def _minmax_parts(layer, xs, masks, g):
    """Maximum / Minimum's input gradients, through its call's steps: the inputs taken
    pairwise, in Keras 3 a masked entry of either side filled from the other before the
    pair's max / min; ties share the gradient (as JAX's)."""
    full = [None if m is None or layer.masks != "keras3" else
            layer._mask_like(np.asarray(m, dtype=bool), a) for a, m in zip(xs, masks)]
    out, om, steps = xs[0], full[0], []
    for a, m in zip(xs[1:], full[1:]):
        ap = a if m is None else np.where(m, a, out)
        outp = out if om is None else np.where(om, out, ap)
        steps.append((m, om, outp, ap))
        om = None if m is None or om is None else om | m
        out = layer._fn(outp, ap)
    parts = [None] * len(xs)
    for k in range(len(steps) - 1, -1, -1):
        m, om, outp, ap = steps[k]
        win = (outp > ap) if layer._fn is np.maximum else (outp < ap)
        share = np.where(outp == ap, 0.5, win.astype(np.float64))
        g_out, g_a = g * share, g * (1 - share)
        if om is not None:
            g_out, g_a = np.where(om, g_out, 0), g_a + np.where(om, 0, g_out)
        if m is not None:
            g_a, g_out = np.where(m, g_a, 0), g_out + np.where(m, 0, g_a)
        parts[k + 1], g = g_a, g_out
    parts[0] = g
    return parts


def _merge_b(layer, ctx, gys):
    from ._model_merge import Add, Average, Concatenate, Multiply, Subtract, _MinMax
    xs, masks, y = ctx
    g = gys[0]
    nd = max(a.ndim for a in xs)
    # (a lower-rank input gains axes of size 1 at axis 1, as the merge's call: Keras 3)
    shapes = [a.shape[:1] + (1,) * (nd - a.ndim) + a.shape[1:] for a in xs]
    if isinstance(layer, Concatenate):
        ax = layer.axis % nd
        cuts = np.cumsum([a.shape[ax] for a in xs])[:-1]
        return np.split(g, cuts, axis=ax), {}
    if isinstance(layer, _MinMax):
        parts = _minmax_parts(layer, [a.reshape(sh) for a, sh in zip(xs, shapes)],
                              [m if a.ndim == nd else None for a, m in zip(xs, masks)], g)
    elif isinstance(layer, Add):
        parts = [g] * len(xs)
    elif isinstance(layer, Subtract):
        parts = [g, -g]
    elif isinstance(layer, Average):
        parts = [g / g.dtype.type(len(xs))] * len(xs)
    else:                   # Multiply (Keras 3: a masked entry counts as 1)
        assert isinstance(layer, Multiply)
        vals, full = [], []
        for a, s, m in zip(xs, shapes, masks):
            a = a.reshape(s)
            mk = None
            if layer.masks == "keras3" and m is not None:
                mk = np.broadcast_to(np.asarray(m, bool)[..., None], a.shape)
            full.append(mk)
            vals.append(a if mk is None else np.where(mk, a, a.dtype.type(1)))
        if layer.masks == "keras3" and all(m is not None for m in full):
            keep = full[0]
            for m in full[1:]:
                keep = keep | m
            g = np.where(keep, g, g.dtype.type(0))
        parts = []
        for i in range(len(xs)):
            p = g
            for j, v in enumerate(vals):
                if j != i:
                    p = p * v
            if full[i] is not None:
                p = np.where(full[i], p, p.dtype.type(0))
            parts.append(p)
    out = []
    for p, s, a in zip(parts, shapes, xs):
        out.append(_unbroadcast(np.asarray(p), s).reshape(a.shape).astype(a.dtype, copy=False))
    return out, {}


def _dot_f(layer, xs, masks):
    y, m = layer.call(xs, masks)
    return y, m, [np.asarray(a) for a in xs]


def _dot_b(layer, ctx, gys):
    a, b = ctx
    dt = np.result_type(a, b)
    a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
    a0, a1 = layer._resolve(a.ndim, b.ndim)

    def unit(x, axis):      # (x / |x| along axis, the inverse norm, whether it is clamped)
        s = np.sum(np.square(x), axis=axis, keepdims=True)
        with np.errstate(divide="ignore"):
            inv0 = dt.type(1) / np.sqrt(s)
        cap = dt.type(1.0 / layer.epsilon)
        return x * np.minimum(inv0, cap), np.minimum(inv0, cap), inv0 >= cap
    if layer.normalize:
        (an, ia, ca), (bn, ib, cb) = unit(a, a0), unit(b, a1)
    else:
        an, bn = a, b
    A, Bm = np.moveaxis(an, a0, -1), np.moveaxis(bn, a1, 1)
    n, k = A.shape[0], A.shape[-1]
    P, Q = int(np.prod(A.shape[1:-1])), int(np.prod(Bm.shape[2:]))
    A2, B2 = A.reshape(n, P, k), Bm.reshape(n, k, Q)
    G = np.asarray(gys[0], dt).reshape(n, P, Q)
    da = np.moveaxis(matmul(G, np.swapaxes(B2, 1, 2)).reshape(A.shape), -1, a0)
    db = np.moveaxis(matmul(np.swapaxes(A2, 1, 2), G).reshape(Bm.shape), 1, a1)
    if layer.normalize:     # (through x / |x|; a norm clamped at 1 / epsilon is a constant)
        da = ia * np.where(ca, da, da - an * np.sum(da * an, axis=a0, keepdims=True))
        db = ib * np.where(cb, db, db - bn * np.sum(db * bn, axis=a1, keepdims=True))
    return [da.astype(ctx[0].dtype, copy=False), db.astype(ctx[1].dtype, copy=False)], {}


def _attention_f(layer, xs, masks):
    y, m = layer.call(xs, masks)
    xs2, ms, dt = layer._tensors(xs, masks)
    return y, m, (xs2, ms, dt, y)


def _attention_b(layer, ctx, gys):
    """Attention (dot / concat scores) and AdditiveAttention."""
    xs, masks, dt, y = ctx
    q, v = xs[0], xs[1]
    k = xs[2] if len(xs) > 2 else v
    w = y[1] if layer.return_attention_scores else None
    # (the weights again: the call's scores, lowered where masked, softmaxed)
    s = np.asarray(layer._scores(q, k, dt))
    keep = layer._keep(masks[0], layer._key_mask(masks), s.shape[1], s.shape[2])
    if keep is not None:
        s = np.where(keep, s, s - s.dtype.type(1e9))
    if w is None:
        from ._model_merge import _softmax_last
        w = _softmax_last(s)
    g = gys[0] if gys[0] is not None else np.zeros(q.shape[:2] + v.shape[2:], dt)
    if masks[0] is not None:
        g = np.where(masks[0][..., None], g, dt.type(0))
    dv = matmul(np.swapaxes(w, 1, 2), g)
    dw = matmul(g, np.swapaxes(v, 1, 2))
    if layer.return_attention_scores and gys[1] is not None:
        dw = dw + gys[1]
    ds = _softmax_back(w, dw).astype(dt, copy=False)
    grads = {}
    mode = layer.score_mode
    if mode == "dot":
        sc = dt.type(1) if layer.scale is None else layer.scale.astype(dt)
        dq, dk = matmul(ds * sc, k), matmul(np.swapaxes(ds * sc, 1, 2), q)
        if layer.scale is not None:
            grads["scale"] = np.asarray(np.sum(ds * matmul(q, np.swapaxes(k, 1, 2)))).astype(dt)
    else:
        t = q[:, :, None, :] + k[:, None, :, :]
        if mode == "concat":
            sc = dt.type(1) if layer.scale is None else layer.scale.astype(dt)
            th = np.tanh(sc * t)
            csw = layer.concat_score_weight.astype(dt)
            grads["concat_score_weight"] = np.asarray(np.sum(ds * th.sum(-1))).astype(dt)
            dt_ = ds[..., None] * csw * (1 - th * th)
            if layer.scale is not None:
                grads["scale"] = np.asarray(np.sum(dt_ * t)).astype(dt)
            dt_ = dt_ * sc
        else:               # additive: sum(scale * tanh(q + k)) over the features
            th = np.tanh(t.astype(s.dtype)).astype(dt)
            sc = np.ones(q.shape[-1], dt) if layer.scale is None else layer.scale.astype(dt)
            if layer.scale is not None:
                grads["scale"] = np.sum(ds[..., None] * th, axis=(0, 1, 2)).astype(dt)
            dt_ = ds[..., None] * sc * (1 - th * th)
        dq, dk = dt_.sum(axis=2), dt_.sum(axis=1)
    ins = [dq, dv] if len(xs) == 2 else [dq, dv, dk]
    if len(xs) == 2:
        ins[1] = dv + dk
    return [a.astype(dt, copy=False) for a in ins], grads


def _mha_b(layer, ctx, gys):
    from ._model_merge import _heads
    xs, masks, _, y = ctx
    dt = layer.query_kernel.dtype
    xs = [np.asarray(a, dtype=dt) for a in xs]
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) > 2 else value
    q, k, v = layer._keys(xs)           # (q scaled by 1 / sqrt(key_dim))
    w, wz, keep = layer._weights(q, k, masks[0], layer._key_mask(masks))
    o = _heads(matmul(wz, _heads(v)))  # (B, T, heads, value_dim)
    B, T, N, V = o.shape
    g = gys[0] if gys[0] is not None else np.zeros(y[0].shape if isinstance(y, list)
                                                    else y.shape, dt)
    E = layer.output_kernel.shape[2]
    g2 = g.reshape(B * T, E)
    ok = layer.output_kernel.reshape(N * V, E)
    grads = {"output_kernel": matmul(o.reshape(B * T, N * V).T, g2).reshape(
        layer.output_kernel.shape)}
    if layer.output_bias is not None:
        grads["output_bias"] = g.sum(axis=(0, 1))
    do = _heads(matmul(g2, ok.T).reshape(B, T, N, V))  # (B, heads, T, value_dim)
    dwz = matmul(do, np.moveaxis(v, 1, 3))
    if layer.return_attention_scores and gys[1] is not None:
        dwz = dwz + gys[1]
    dv = _heads(matmul(np.swapaxes(wz, 2, 3), do))
    dw = dwz if wz is w else np.where(keep[:, None], dwz, dt.type(0))
    ds = _softmax_back(w, dw)
    if keep is not None and not layer.additive_mask:
        ds = np.where(keep[:, None], ds, dt.type(0))     # (set to -1e9 there: constant)
    dq = _heads(matmul(ds, _heads(k))) * dt.type(1.0 / math.sqrt(float(layer.key_dim)))
    dk = _heads(matmul(np.swapaxes(ds, 2, 3), _heads(q)))
    outs = []
    for name, x, d in (("query", query, dq), ("key", key, dk), ("value", value, dv)):
        kern = getattr(layer, f"{name}_kernel")
        F, d2 = x.shape[-1], d.reshape(B * d.shape[1], d.shape[2] * d.shape[3])
        grads[f"{name}_kernel"] = matmul(x.reshape(-1, F).T, d2).reshape(kern.shape)
        if getattr(layer, f"{name}_bias") is not None:
            grads[f"{name}_bias"] = d.sum(axis=(0, 1))
        outs.append(matmul(d2, kern.reshape(F, -1).T).reshape(x.shape))
    dquery, dkey, dvalue = outs
    ins = [dquery, dvalue + dkey] if len(xs) == 2 else [dquery, dvalue, dkey]
    return ins, grads


def _keep_x(layer, x, mask):
    """The forward of a layer whose backward reads its input alone."""
    y, m = layer.call(x, mask)
    return y, m, np.asarray(x)


def _flatten_b(layer, x, gys):
    g = gys[0]
    if layer.data_format == "channels_first" and x.ndim > 2:
        moved = (x.shape[0],) + x.shape[2:] + (x.shape[1],)
        return np.moveaxis(g.reshape(moved), -1, 1), {}
    return g.reshape(x.shape), {}


def _reshape_b(layer, x, gys):
    return gys[0].reshape(x.shape), {}


def _permute_b(layer, x, gys):
    perm = (0,) + tuple(layer.dims)
    return np.transpose(gys[0], np.argsort(perm)), {}


def _repeat_b(layer, x, gys):
    return gys[0].sum(axis=1), {}


def _zero_padding_b(layer, x, gys):
    idx = (slice(None),) + tuple(slice(a, a + n) for n, (a, _) in zip(x.shape[1:],
                                                                     layer.padding))
    return gys[0][idx], {}


def _cropping_b(layer, x, gys):
    g = np.zeros(x.shape, gys[0].dtype)
    idx = (slice(None),) + tuple(slice(a, n - b) for n, (a, b) in zip(x.shape[1:],
                                                                       layer.cropping))
    g[idx] = gys[0]
    return g, {}


def _upsampling_b(layer, x, gys):
    g = gys[0]
    for ax, n in enumerate(layer.size, start=1):
        g = g.reshape(g.shape[:ax] + (g.shape[ax] // n, n) + g.shape[ax + 1:]).sum(ax + 1)
    return g, {}


def _rescaling_b(layer, x, gys):
    g = gys[0] * layer.scale.astype(gys[0].dtype)
    return _unbroadcast(g, x.shape).reshape(x.shape), {}


def _normalization_b(layer, x, gys):
    from .model import _axes
    g = gys[0]
    dt = g.dtype
    keep = sorted(_axes(layer.axis, x.ndim, layer.name)) if layer.axis else []
    shape = [1] * x.ndim
    for a, n in zip(keep[len(keep) - layer.mean.ndim:], layer.mean.shape):
        shape[a] = n
    den = np.maximum(np.sqrt(layer.variance.astype(dt)), dt.type(layer.EPSILON)).reshape(shape)
    return (g * den if layer.invert else g / den), {}


def _prelu_b(layer, x, gys):
    g = gys[0]
    dt = g.dtype
    x = x.astype(dt, copy=False)
    alpha = layer.alpha.astype(dt)
    neg = np.maximum(-x, 0)
    ga = _unbroadcast(-g * neg, (1,) + alpha.shape)[0].reshape(alpha.shape)
    return g * np.where(x > 0, dt.type(1), np.where(x < 0, alpha, dt.type(0))), \
        {"alpha": ga.astype(layer.alpha.dtype)}


def _global_pool2d_b(layer, ctx, gys):
    x, y, _ = ctx
    axes = (1, 2)
    g = gys[0] if layer.keepdims else np.expand_dims(gys[0], axes)
    if layer.op == "max":
        return _max_share(x, y if layer.keepdims else np.expand_dims(y, axes), g, axes), {}
    return np.broadcast_to(g / g.dtype.type(x.shape[axes[0]] * x.shape[axes[1]]),
                           x.shape).copy(), {}


def _fold_f(layer, x, mask):
    y, m = layer.call(x, mask)
    return y, m, np.shape(x)


def _fold_b(layer, ctx, gys):
    return gys[0].reshape(ctx), {}


def _unfold_f(layer, xs, masks):
    y, m = layer.call(xs, masks)
    return y, m, np.shape(xs[0])


def _unfold_b(layer, ctx, gys):
    # (the second input gives the steps' count only: no gradient)
    return [gys[0].reshape(ctx), None], {}


# keras.ops (fastrnn.model.Op): each input's gradient from the output's
def _op_f(layer, xs, masks):
    y, m = layer.call(xs, masks)
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    return y, m, ([np.asarray(t) for t in xs], y)


def _op_b(layer, ctx, gys):
    from ._model_ops import _BINARY, _REDUCE, _UNARY, _key
    xs, y = ctx
    g = gys[0]
    op, at = layer.op, layer.attrs
    ax = at.get("axis")
    ax = tuple(ax) if isinstance(ax, list) else ax
    slots = [a["input"] if isinstance(a, dict) else None for a in layer.args]
    grads = [None] * len(xs)

    def put(k, v):
        v = np.asarray(v)
        if xs[k].dtype.kind != "f":
            return
        v = _unbroadcast(v, xs[k].shape).reshape(xs[k].shape).astype(xs[k].dtype, copy=False)
        grads[k] = v if grads[k] is None else grads[k] + v
    if op in _BINARY:
        a, b = [xs[k] if k is not None else layer.args[i] for i, k in enumerate(slots)]
        if op == "Add":
            da, db = g, g
        elif op == "Subtract":
            da, db = g, -g
        elif op == "Multiply":
            da, db = g * b, g * a
        elif op in ("Maximum", "Minimum"):     # (ties share it, as in JAX)
            win = (a > b) if op == "Maximum" else (a < b)
            share = np.where(a == b, 0.5, win.astype(np.float64))
            da, db = g * share, g * (1 - share)
        elif op in ("Divide", "TrueDivide"):
            da, db = g / b, -g * a / np.square(b)
        else:                                   # Power
            da = g * b * np.power(a, b - 1)
            db = g * y * np.log(np.where(a > 0, a, 1)) if slots[1] is not None else None
        for k, d in zip(slots, (da, db)):
            if k is not None and d is not None:
                put(k, d)
        return grads, {}
    x = xs[0]
    if op in _UNARY:
        d = {"Tanh": lambda: 1 - y * y, "Sigmoid": lambda: y * (1 - y),
             "Relu": lambda: x > 0, "Exp": lambda: y, "Log": lambda: 1 / x,
             "Sqrt": lambda: 0.5 / y, "Square": lambda: 2 * x, "Abs": lambda: np.sign(x),
             "Absolute": lambda: np.sign(x), "Negative": lambda: -np.ones_like(x)}[op]()
        put(0, g * d)
    elif op in _REDUCE:
        keep = bool(at.get("keepdims", False))
        axes = tuple(range(x.ndim)) if ax is None else (ax if isinstance(ax, tuple) else (ax,))
        axes = tuple(a % x.ndim for a in axes)
        ge, ye = (g, y) if keep else (np.expand_dims(g, axes), np.expand_dims(y, axes))
        if op == "Sum":
            put(0, np.broadcast_to(ge, x.shape))
        elif op == "Mean":
            put(0, np.broadcast_to(ge, x.shape) / math.prod(x.shape[a] for a in axes))
        else:                   # Max / Min: ties share it
            put(0, _max_share(x, ye, ge, axes))
    elif op in ("Softmax", "LogSoftmax"):
        a = -1 if ax is None else ax
        put(0, (_softmax_back if op == "Softmax" else _log_softmax_back)(y, g, a))
    elif op == "GetItem":
        k = layer.args[1]
        key = tuple(_key(i) for i in k) if isinstance(k, list) else _key(k)
        full = np.zeros(x.shape, g.dtype)
        np.add.at(full, key, g)
        put(0, full)
    elif op in ("Concatenate", "Stack"):
        a = 0 if ax is None else ax
        parts = np.split(g, np.cumsum([t.shape[a] for t in xs])[:-1], axis=a) \
            if op == "Concatenate" else [np.take(g, i, axis=a) for i in range(len(xs))]
        for k, p in enumerate(parts):
            put(k, p)
    elif op in ("ExpandDims", "Squeeze", "Reshape"):
        put(0, g.reshape(x.shape))
    elif op == "Transpose":
        axes = at.get("axes")
        put(0, np.transpose(g, None if axes is None else
                            np.argsort([a % x.ndim for a in axes])))
    elif op == "Clip":      # (at a bound: half, as JAX's clip of a maximum and a minimum)
        lo, hi = at["x_min"], at["x_max"]
        put(0, g * np.where((x > lo) & (x < hi), 1.0,
                            np.where((x == lo) | (x == hi), 0.5, 0.0)))
    elif op == "Cast":
        put(0, g)
    elif op == "Matmul":        # (np.matmul's rules: a 1-D operand gains an axis)
        a, b = xs
        a2 = a[None] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = np.expand_dims(g, -2) if a.ndim == 1 else g
        g2 = np.expand_dims(g2, -1) if b.ndim == 1 else g2
        put(0, _unbroadcast(matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape))
        put(1, _unbroadcast(matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape))
    else:
        raise ValueError(f"cannot train through layer {layer.name!r}: the backward of "
                         f"operation {op} is not implemented")
    return grads, {}


def _refuse(layer, where=""):
    raise ValueError(f"cannot train through layer {layer.name!r} of type "
                     f"{type(layer).__name__}{where}: its backward is not implemented "
                     f"(fastrnn's: {', '.join(sorted(c.__name__ for c in _FORWARD))})")


_FORWARD, _BACKWARD = {}, {}
_REGISTER_LOCK = threading.Lock()


def _register():
    """Fill the tables (once, under a lock: a thread must not see them half full)."""
    with _REGISTER_LOCK:
        if not _FORWARD:
            _fill()


def _fill():
    from ._model_conv import Conv1D
    from ._model_merge import (AdditiveAttention, Add, Attention, Average, Concatenate, Dot,
                               Maximum, Minimum, MultiHeadAttention, Multiply, Softmax,
                               Subtract)
    from ._model_ops import Op
    from .model import (Activation, BatchNormalization, Bidirectional, Dense, Dropout,
                        Embedding, FoldTime, GlobalPooling1D, InputCast, KerasRNN,
                        LayerNormalization, Masking, TimeDistributed, UnfoldTime)
    table = {Dense: (_activated_f, _dense_b), Activation: (_activated_f, _activation_b),
             Dropout: (_identity_f, _identity_b), InputCast: (_identity_f, _identity_b),
             Embedding: (_embedding_f, _embedding_b), Masking: (_masking_f, _masking_b),
             GlobalPooling1D: (_pool_f, _pool_b),
             LayerNormalization: (_norm_f, _layer_norm_b),
             KerasRNN: (_rnn_f, _rnn_b), Bidirectional: (_bi_f, _bi_b),
             TimeDistributed: (_td_f, _td_b), Conv1D: (_activated_f, _conv_b),
             BatchNormalization: (_norm_f, _batch_norm_b),
             Softmax: (_softmax_f, _softmax_b)}
    table[FoldTime], table[UnfoldTime] = (_fold_f, _fold_b), (_unfold_f, _unfold_b)
    table[Op] = (_op_f, _op_b)
    table[Dot] = (_dot_f, _dot_b)
    from ._model_conv import Cropping, GlobalPooling2D, Permute, Reshape, UpSampling, \
        ZeroPadding
    from .model import Flatten, Normalization, PReLU, Rescaling, RepeatVector
    for c, b in ((Flatten, _flatten_b), (Reshape, _reshape_b), (Permute, _permute_b),
                 (RepeatVector, _repeat_b), (ZeroPadding, _zero_padding_b),
                 (Cropping, _cropping_b), (UpSampling, _upsampling_b),
                 (Rescaling, _rescaling_b), (Normalization, _normalization_b),
                 (PReLU, _prelu_b)):
        table[c] = (_keep_x, b)
    table[GlobalPooling2D] = (_pool_f, _global_pool2d_b)
    from ._model_conv import Conv2D, Pooling1D, Pooling2D
    table[Conv2D] = (_activated_f, _conv_b)
    table[Pooling1D] = table[Pooling2D] = (_pool_f, _pool_window_b)
    table[Attention] = table[AdditiveAttention] = (_attention_f, _attention_b)
    table[MultiHeadAttention] = (_attention_f, _mha_b)
    for c in (Add, Subtract, Average, Multiply, Concatenate, Maximum, Minimum):
        table[c] = (_merge_f, _merge_b)
    for c, (f, b) in table.items():
        _FORWARD[c], _BACKWARD[c] = f, b


def layer_params(layer) -> dict:
    """The arrays a layer computes with (not copies), by fastrnn's names."""
    from ._model_conv import Conv1D, Conv2D
    from .model import BatchNormalization, Bidirectional, Dense, Embedding, KerasRNN, \
        LayerNormalization, TimeDistributed
    if isinstance(layer, KerasRNN):
        return dict(layer.core.parameters())
    if isinstance(layer, Bidirectional):
        out = {f"forward/{k}": v for k, v in layer.forward.core.parameters().items()}
        out.update({f"backward/{k}": v for k, v in layer.backward.core.parameters().items()})
        return out
    if isinstance(layer, (Dense, Conv1D, Conv2D)):
        return {"kernel": layer.kernel, **({} if layer.bias is None else {"bias": layer.bias})}
    if isinstance(layer, Embedding):
        return {"embeddings": layer.weights}
    if isinstance(layer, (LayerNormalization, BatchNormalization)):
        return {k: v for k, v in (("gamma", layer.gamma), ("beta", layer.beta))
                if v is not None}
    if isinstance(layer, TimeDistributed):
        return layer_params(layer.layer)
    names = {"Attention": ("scale", "concat_score_weight"), "AdditiveAttention": ("scale",),
             "PReLU": ("alpha",),
             "MultiHeadAttention": tuple(f"{p}_{k}" for p in ("query", "key", "value",
                                                             "output")
                                         for k in ("kernel", "bias"))}.get(
        type(layer).__name__, ())
    return {k: getattr(layer, k) for k in names if getattr(layer, k) is not None}


def cores(layer):
    """The recurrent core layers a layer computes with (their packing follows their
    weights' version)."""
    from .model import Bidirectional, KerasRNN, TimeDistributed
    if isinstance(layer, KerasRNN):
        return [layer.core]
    if isinstance(layer, Bidirectional):
        return [layer.forward.core, layer.backward.core]
    if isinstance(layer, TimeDistributed):
        return cores(layer.layer)
    return []


def repack(layer) -> None:
    """After an in-place edit of its weights: the recurrent cores re-pack, a
    convolution drops its kept layouts."""
    for core in cores(layer):
        core.mark_weights_changed()
    inner = getattr(layer, "layer", layer)      # (a TimeDistributed's)
    for lay in {id(layer): layer, id(inner): inner}.values():
        if hasattr(lay, "mark_weights_changed"):  # (a convolution's kept layouts)
            lay.mark_weights_changed()


def check(model):
    """Refuse, before anything runs, a model with a layer without a backward."""
    if not _FORWARD:
        _register()
    for layer in model.layers:
        if type(layer) not in _FORWARD:
            _refuse(layer)
        for lay in (layer, getattr(layer, "layer", None)):     # (and a TimeDistributed's)
            if lay is None:
                continue
            kind = type(lay).__name__
            if kind in ("Dense", "Activation", "Conv1D", "Conv2D"):
                _act_key(lay)
        if type(layer).__name__ == "TimeDistributed" and type(layer.layer) not in _FORWARD:
            _refuse(layer.layer, f" (inside TimeDistributed {layer.name!r})")


def forward(layer, x, mask, initial_state=None):
    if initial_state is not None:       # (a recurrent layer's, Keras's order)
        return _FORWARD[type(layer)](layer, x, mask, initial_state)
    return _FORWARD[type(layer)](layer, x, mask)


def backward(layer, ctx, gys):
    return _BACKWARD[type(layer)](layer, ctx, gys)
