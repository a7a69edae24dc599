"""Training forward and backward for every layer option, in NumPy.

The Cython kernels of :mod:`fastrnn._backward` cover the default activations without
masks, clip, peepholes or a coupled input-forget gate.  This module covers the rest:
any activation of :func:`fastrnn.layers.parse_activation` (e.g. Keras 2's
``hard_sigmoid``), ONNX's ``clip``, ``peepholes`` and ``input_forget``, and Keras masks
(``mask`` with ``masked_output`` "carry" or "zero"), with or without ``lengths``.

It works time-major on the caller's (unpacked) layout, one time step at a time, all
sequences of a step at once (NumPy over BLAS: a few GEMMs per step); the weight
gradients are single GEMMs over every step after the time loop.  Slower than the kernels
(the per-step Python and NumPy overhead), exact to the same rounding.

Per direction the steps are described by ``tidx`` (S, B): the input time step s of
sequence b reads (-1: past the sequence's length, nothing read or written) and ``act``
(S, B): whether the step updates the state (valid and not masked).  A masked step
carries the state; its output repeats the last output (zero before any) or is zero.
"""
from __future__ import annotations

import numpy as np
from ._model_base import _sigmoid as expit   # (the kernels' sigmoid: no scipy.special import)

__all__ = ["forward", "backward", "needs_general"]


# ------------------------------------------------------------------ activations
def _act(spec, x):
    name, a, b = spec
    if name == "sigmoid":
        return expit(x)
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "hardsigmoid":
        return np.clip(a * x + b, 0, 1).astype(x.dtype, copy=False)
    if name == "leakyrelu":
        return np.where(x >= 0, x, x * x.dtype.type(a))
    if name == "affine":
        return (x * x.dtype.type(a) + x.dtype.type(b))
    if name == "scaledtanh":
        return x.dtype.type(a) * np.tanh(x * x.dtype.type(b))
    if name == "elu":
        return np.where(x >= 0, x, x.dtype.type(a) * np.expm1(np.minimum(x, 0)))
    if name == "softsign":
        return x / (1 + np.abs(x))
    if name == "softplus":
        return np.logaddexp(x.dtype.type(0), x)
    if name == "thresholdedrelu":
        return np.where(x > a, x, 0).astype(x.dtype, copy=False)
    if name == "linear":
        return x
    raise ValueError(f"unknown activation {name!r}")


def _dact(spec, x, y):
    """d act(x) / dx, given x and y = act(x) (derivatives at kinks as PyTorch's)."""
    name, a, b = spec
    t = x.dtype.type
    if name == "sigmoid":
        return y * (1 - y)
    if name == "tanh":
        return 1 - y * y
    if name == "relu":
        return (x > 0).astype(x.dtype)
    if name == "hardsigmoid":
        v = a * x + b
        return np.where((v > 0) & (v < 1), t(a), t(0))
    if name == "leakyrelu":
        return np.where(x > 0, t(1), t(a))
    if name == "affine":
        return np.full_like(x, a)
    if name == "scaledtanh":
        th = np.tanh(x * t(b))
        return t(a * b) * (1 - th * th)
    if name == "elu":
        return np.where(x > 0, t(1), t(a) * np.exp(np.minimum(x, 0)))
    if name == "softsign":
        d = 1 + np.abs(x)
        return 1 / (d * d)
    if name == "softplus":
        return expit(x)
    if name == "thresholdedrelu":
        return (x > a).astype(x.dtype)
    if name == "linear":
        return np.ones_like(x)
    raise ValueError(f"unknown activation {name!r}")


class _Clip:
    """ONNX's cell clip of the activations' inputs (None: none) and its derivative."""

    def __init__(self, clip, dt):
        self.c = None if clip is None else dt.type(clip)

    def __call__(self, x):
        return x if self.c is None else np.clip(x, -self.c, self.c)

    def grad(self, x, g):
        return g if self.c is None else g * ((x >= -self.c) & (x <= self.c))


def _cell_fns(layer, d):
    """Direction d's activations (f, g, h; None where the cell has fewer) and clip."""
    acts = list(layer._acts[d]) + [None] * 2
    return acts[0], acts[1], acts[2], _Clip(layer.clip, layer.dtype)


def needs_general(layer, mask) -> bool:
    """Whether training this layer (with this mask) needs this module."""
    from .layers import _PLAIN_ACTS, parse_activation
    if mask is not None or layer.clip is not None:
        return True
    if getattr(layer, "peepholes", False) or getattr(layer, "input_forget", False):
        return True
    if layer._cell == "RNN":
        return any(per[0][0] not in ("tanh", "relu") or per[0] != parse_activation(per[0][0])
                   for per in layer._acts)
    plain = [parse_activation(a) for a in _PLAIN_ACTS[layer._cell]]
    return any(per != plain for per in layer._acts)


# ------------------------------------------------------------------ step plans
def step_plan(T, B, lengths, mask, reverse):
    """(tidx, act, valid) of one direction, each (T, B): see the module docstring."""
    s = np.arange(T)[:, None]
    if lengths is None:
        lens = np.full(B, T, np.intp)
    else:
        lens = np.asarray(lengths, np.intp)
    valid = s < lens[None, :]
    if reverse:
        tidx = np.where(valid, lens[None, :] - 1 - s, -1)
    else:
        tidx = np.where(valid, s, -1)
    act = valid.copy()
    if mask is not None:
        act &= mask[np.maximum(tidx, 0), np.arange(B)[None, :]]
    return tidx, act, valid


# ------------------------------------------------------------------ forward
def _params(layer, li, d):
    from .train import _weights
    sfx, p = _weights(layer, li, d)
    G, H, dt = layer.gate_count, layer.hidden_size, layer.dtype
    zeros = np.zeros(G * H, dt)
    return sfx, {
        "wih": p["weight_ih" + sfx], "whh": p["weight_hh" + sfx],
        "bih": p["bias_ih" + sfx] if layer.bias else zeros,
        "bhh": p["bias_hh" + sfx] if layer.bias else zeros,
        "whr": p.get("weight_hr" + sfx), "wph": p.get("weight_ph" + sfx)}


def _dir_forward(layer, d, w, inp, h0, c0, tidx, act, valid, zero_out):
    """One direction of one layer: returns (out (T, B, Hout), h_n, c_n, saved)."""
    cell, H, dt = layer._cell, layer.hidden_size, layer.dtype
    T, B = inp.shape[0], inp.shape[1]
    F, Gs, Hs, clip = _cell_fns(layer, d)
    rows = np.arange(B)
    xg = inp[np.maximum(tidx, 0), rows[None, :]]                 # (T, B, I) gathered
    xw = xg @ w["wih"].T + w["bih"]                              # (T, B, G*H)
    whh, bhh = w["whh"], w["bhh"]
    h = h0.copy()
    c = c0.copy() if cell == "LSTM" else None
    last = np.zeros_like(h)
    out = np.zeros((T, B, h.shape[1]), dt)
    saved = []
    for s in range(T):
        a_s = act[s][:, None]
        rec = {"h": h, "c": c}
        if cell == "RNN":
            pre = xw[s] + h @ whh.T + bhh
            hn = _act(F, clip(pre))
            rec.update(pre=pre, y=hn)
            cn = None
        elif cell == "LSTM":
            z = xw[s] + h @ whh.T + bhh
            ai, af, ag, ao = (z[:, q * H:(q + 1) * H] for q in range(4))
            if w["wph"] is not None:
                ph = w["wph"]
                ai = ai + ph[:H] * c
                af = af + ph[H:2 * H] * c
            i = _act(F, clip(ai))
            f = 1 - i if layer.input_forget else _act(F, clip(af))
            g = _act(Gs, clip(ag))
            cn = f * c + i * g
            if w["wph"] is not None:
                ao = ao + w["wph"][2 * H:] * cn
            o = _act(F, clip(ao))
            hc = _act(Hs, cn)
            hr = o * hc
            hn = hr @ w["whr"].T if w["whr"] is not None else hr
            rec.update(ai=ai, af=af, ag=ag, ao=ao, i=i, f=f, g=g, o=o, cn=cn, hc=hc, hr=hr)
        else:
            if layer.reset_after:
                hh = h @ whh.T + bhh
                ar = xw[s][:, :H] + hh[:, :H]
                az = xw[s][:, H:2 * H] + hh[:, H:2 * H]
                r, zg = _act(F, clip(ar)), _act(F, clip(az))
                rec["hhn"] = hh[:, 2 * H:]
                an = xw[s][:, 2 * H:] + r * rec["hhn"]
            else:
                hh = h @ whh[:2 * H].T + bhh[:2 * H]
                ar = xw[s][:, :H] + hh[:, :H]
                az = xw[s][:, H:2 * H] + hh[:, H:2 * H]
                r, zg = _act(F, clip(ar)), _act(F, clip(az))
                rec["rh"] = r * h
                an = xw[s][:, 2 * H:] + rec["rh"] @ whh[2 * H:].T + bhh[2 * H:]
            n = _act(Gs, clip(an))
            hn = (1 - zg) * n + zg * h
            rec.update(ar=ar, az=az, an=an, r=r, z=zg, n=n)
            cn = None
        saved.append(rec)
        h = np.where(a_s, hn, h)
        if cell == "LSTM":
            c = np.where(a_s, cn, c)
        v = valid[s]
        o_s = np.where(a_s, hn, 0 if zero_out else last)
        out[tidx[s][v], rows[v]] = o_s[v]
        last = np.where(a_s, hn, last)
    return out, h, c, (xg, saved)


def forward(layer, x, h0, c0, lengths, mask, zero_out):
    """Time-major x (T, B, I); returns (out (T, B, D*Hout), h_n, c_n or None, state)."""
    T, B = x.shape[0], x.shape[1]
    D, L, Hout = layer.num_directions, layer.num_layers, layer.output_size
    dt = layer.dtype
    lstm = layer._cell == "LSTM"
    hn = np.empty_like(h0)
    cn = np.empty_like(c0) if lstm else None
    plans = [step_plan(T, B, lengths, mask, (d == 1) != layer.go_backwards)
             for d in range(D)]
    inp = np.ascontiguousarray(x, dtype=dt)
    inputs, saved = [], []
    for li in range(L):
        out = np.empty((T, B, D * Hout), dt)
        per = []
        for d in range(D):
            k = li * D + d
            _, w = _params(layer, li, d)
            o, h, c, sv = _dir_forward(layer, d, w, inp, h0[k], c0[k] if lstm else None,
                                       *plans[d], zero_out)
            out[:, :, d * Hout:(d + 1) * Hout] = o
            hn[k] = h
            if lstm:
                cn[k] = c
            per.append(sv)
        inputs.append(inp)
        saved.append(per)
        inp = out
    return inp, hn, cn, {"plans": plans, "inputs": inputs, "saved": saved,
                         "zero_out": zero_out}


# ------------------------------------------------------------------ backward
def _dir_backward(layer, d, w, state, plan, dy, dh, dc, zero_out, want_dx):
    """One direction: dy (T, B, Hout) output gradient of this direction, dh / dc the
    gradients reaching its final state.  Returns (dx (T, B, I) or None, dh0, dc0,
    grads)."""
    cell, H, dt = layer._cell, layer.hidden_size, layer.dtype
    xg, saved = state
    tidx, act, valid = plan
    T, B = tidx.shape
    F, Gs, Hs, clip = _cell_fns(layer, d)
    rows = np.arange(B)
    G = layer.gate_count
    whh = w["whh"]
    dzx = np.zeros((T, B, G * H), dt)      # gradients of the x-side pre-activations
    dzh = np.zeros((T, B, G * H), dt)      # ... of the h-side ones (differ for GRU)
    hsrc = np.zeros((T, B, whh.shape[1]), dt)   # what W_hh multiplied (per row block)
    rhs = np.zeros((T, B, H), dt) if (cell == "GRU" and not layer.reset_after) else None
    dwhr = np.zeros_like(w["whr"]) if w["whr"] is not None else None
    dwph = np.zeros_like(w["wph"]) if w["wph"] is not None else None
    dlast = np.zeros_like(dh)
    dh, dc = dh.copy(), (dc.copy() if dc is not None else None)
    for s in range(T - 1, -1, -1):
        rec = saved[s]
        a_s = act[s][:, None]
        if not act[s].all():
            # (an inactive row's values take no part; a NaN / inf its input held there
            # must not reach the gradients through 0 * NaN)
            rec = {k: np.where(a_s, v, 0) if isinstance(v, np.ndarray) and v.ndim == 2
                   and v.shape[0] == B else v for k, v in rec.items()}
        v = valid[s]
        dout = np.zeros_like(dh)
        dout[v] = dy[tidx[s][v], rows[v]]
        # the new state receives the state gradient, its output's and the carried
        # outputs' (masked steps after it repeat it); a masked step passes both on
        dhn = np.where(a_s, dh + dout + dlast, 0)
        dlast = np.where(a_s, 0, dlast + (0 if zero_out else dout))
        h = rec["h"]
        hsrc[s] = h
        if cell == "RNN":
            da = clip.grad(rec["pre"], dhn * _dact(F, clip(rec["pre"]), rec["y"]))
            dzx[s] = dzh[s] = da
            dhp = da @ whh
        elif cell == "LSTM":
            dhr = dhn
            if dwhr is not None:
                dwhr += dhn.T @ rec["hr"]
                dhr = dhn @ w["whr"]
            i, f, g, o, cn, hc, c = (rec[k] for k in ("i", "f", "g", "o", "cn", "hc", "c"))
            dct = np.where(a_s, dc, 0) + dhr * o * _dact(Hs, cn, hc)
            dao = clip.grad(rec["ao"], dhr * hc * _dact(F, clip(rec["ao"]), o))
            if dwph is not None:
                dct = dct + dao * w["wph"][2 * H:]
                dwph[2 * H:] += (dao * cn).sum(0)
            di, dgg, df = dct * g, dct * i, dct * c
            dcp = dct * f
            if layer.input_forget:
                di = di - df
                daf = np.zeros_like(df)
            else:
                daf = clip.grad(rec["af"], df * _dact(F, clip(rec["af"]), f))
            dai = clip.grad(rec["ai"], di * _dact(F, clip(rec["ai"]), i))
            dag = clip.grad(rec["ag"], dgg * _dact(Gs, clip(rec["ag"]), g))
            if dwph is not None:
                dcp = dcp + dai * w["wph"][:H] + daf * w["wph"][H:2 * H]
                dwph[:H] += (dai * c).sum(0)
                dwph[H:2 * H] += (daf * c).sum(0)
            dz = np.concatenate([dai, daf, dag, dao], axis=1)
            dzx[s] = dzh[s] = dz
            dhp = dz @ whh
            dc = np.where(a_s, dcp, dc)
        else:
            r, zg, n = rec["r"], rec["z"], rec["n"]
            dn = dhn * (1 - zg)
            dzz = dhn * (h - n)
            dhp = dhn * zg
            dan = clip.grad(rec["an"], dn * _dact(Gs, clip(rec["an"]), n))
            if layer.reset_after:
                dr = dan * rec["hhn"]
                dnh = dan * r
            else:
                drh = dan @ whh[2 * H:]
                dr = drh * h
                dhp = dhp + drh * r
                dnh = dan
                rhs[s] = rec["rh"]
            dar = clip.grad(rec["ar"], dr * _dact(F, clip(rec["ar"]), r))
            daz = clip.grad(rec["az"], dzz * _dact(F, clip(rec["az"]), zg))
            dzx[s] = np.concatenate([dar, daz, dan], axis=1)
            dzh[s] = np.concatenate([dar, daz, dnh], axis=1)
            if layer.reset_after:
                dhp = dhp + dzh[s] @ whh
            else:
                dhp = dhp + dzh[s][:, :2 * H] @ whh[:2 * H]
        dh = np.where(a_s, dhp, dh)
    # weight gradients: one GEMM per block over every step
    I = xg.shape[2]
    if not act.all():
        xg = np.where(act[:, :, None], xg, 0)
    gx = dzx.reshape(T * B, G * H)
    gh = dzh.reshape(T * B, G * H)
    grads = {"wih": gx.T @ xg.reshape(T * B, I), "bih": gx.sum(0), "bhh": gh.sum(0)}
    hs = hsrc.reshape(T * B, whh.shape[1])
    if rhs is None:
        grads["whh"] = gh.T @ hs
    else:
        grads["whh"] = np.concatenate([gh[:, :2 * H].T @ hs,
                                       gh[:, 2 * H:].T @ rhs.reshape(T * B, H)])
    if dwhr is not None:
        grads["whr"] = dwhr
    if dwph is not None:
        grads["wph"] = dwph
    if not want_dx:
        return None, dh, dc, grads
    dxs = dzx @ w["wih"]                                        # (T, B, I) in step order
    dx = np.zeros((T, B, I), dt)
    for s in range(T):
        v = valid[s]
        dx[tidx[s][v], rows[v]] += dxs[s][v]
    return dx, dh, dc, grads


def backward(layer, state, dout, dhs, dcs, want_input):
    """dout (T, B, D*Hout) time-major; dhs / dcs (L*D, B, .) final-state gradients.
    Returns (dinput (T, B, I) or None, dh0, dc0, {state_dict name: gradient})."""
    D, L, Hout = layer.num_directions, layer.num_layers, layer.output_size
    lstm = layer._cell == "LSTM"
    grads = {}
    names = {"wih": "weight_ih", "whh": "weight_hh", "bih": "bias_ih", "bhh": "bias_hh",
             "whr": "weight_hr", "wph": "weight_ph"}
    dh0, dc0 = np.empty_like(dhs), (np.empty_like(dcs) if lstm else None)
    for li in range(L - 1, -1, -1):
        din = None
        for d in range(D):
            k = li * D + d
            sfx, w = _params(layer, li, d)
            dx, dh, dc, g = _dir_backward(
                layer, d, w, state["saved"][li][d], state["plans"][d],
                dout[:, :, d * Hout:(d + 1) * Hout], dhs[k], dcs[k] if lstm else None,
                state["zero_out"], want_input or li > 0)
            dh0[k] = dh
            if lstm:
                dc0[k] = dc
            if dx is not None:
                din = dx if din is None else din + dx
            for key, val in g.items():
                if key in ("bih", "bhh") and not layer.bias:
                    continue
                grads[names[key] + sfx] = val
        dout = din
    return din, dh0, dc0, grads          # din None for the first layer without want_input
