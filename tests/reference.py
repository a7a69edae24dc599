"""Pure-NumPy reference implementation of the recurrent layers, written from the formulas.

Slow and simple on purpose: one sequence at a time, one step at a time, float64.  Used to
check cases no framework covers (GRU reset_after=False, ONNX activations, clip,
peepholes, masks) and as a second opinion beside PyTorch.
"""
from __future__ import annotations

import numpy as np


def act(name, alpha, beta, x):
    x = np.asarray(x, dtype=np.float64)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "hardsigmoid":
        return np.clip(alpha * x + beta, 0.0, 1.0)
    if name == "leakyrelu":
        return np.where(x >= 0, x, alpha * x)
    if name == "affine":
        return alpha * x + beta
    if name == "scaledtanh":
        return alpha * np.tanh(beta * x)
    if name == "elu":
        return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))
    if name == "softsign":
        return x / (1 + np.abs(x))
    if name == "softplus":
        return np.logaddexp(0.0, x)
    if name == "thresholdedrelu":
        return np.where(x > alpha, x, 0.0)
    if name == "linear":
        return x
    raise ValueError(name)


def _cell_step(cell, p, x, h, c, acts, clip, reset_after, input_forget, peep):
    """One step for one sequence (x (I,), h (Hout,), c (H,))."""
    f, g, hh = (acts + [("tanh", 0, 0)] * 3)[:3]
    F = lambda v: act(*f, v)  # noqa: E731
    Gf = lambda v: act(*g, v)  # noqa: E731
    Hf = lambda v: act(*hh, v)  # noqa: E731
    cl = (lambda v: np.clip(v, -clip, clip)) if clip else (lambda v: v)
    W, R, bi, bh = p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"]
    if cell == "RNN":
        return F(cl(W @ x + bi + R @ h + bh)), None
    if cell == "LSTM":
        H = W.shape[0] // 4
        z = W @ x + bi + R @ h + bh
        i_, f_, g_, o_ = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
        if peep is not None:
            i_ = i_ + peep[:H] * c
            f_ = f_ + peep[H:2 * H] * c
        i_ = F(cl(i_))
        f_ = 1 - i_ if input_forget else F(cl(f_))
        g_ = Gf(cl(g_))
        c_new = f_ * c + i_ * g_
        if peep is not None:
            o_ = o_ + peep[2 * H:] * c_new
        o_ = F(cl(o_))
        h_new = o_ * Hf(c_new)
        if "w_hr" in p:
            h_new = p["w_hr"] @ h_new
        return h_new, c_new
    if cell == "GRU":
        H = W.shape[0] // 3
        xi = W @ x + bi
        r = F(cl(xi[:H] + R[:H] @ h + bh[:H]))
        z = F(cl(xi[H:2 * H] + R[H:2 * H] @ h + bh[H:2 * H]))
        if reset_after:
            n = Gf(cl(xi[2 * H:] + r * (R[2 * H:] @ h + bh[2 * H:])))
        else:
            n = Gf(cl(xi[2 * H:] + R[2 * H:] @ (r * h) + bh[2 * H:]))
        return (1 - z) * n + z * h, None
    raise ValueError(cell)


def rnn_forward(layer, x, hx=None, lengths=None, mask=None, masked_output="carry"):
    """Reference forward of a fastrnn layer (uses its config and state_dict), time-major
    (T, B, I) input regardless of ``batch_first``; mask (T, B).  Returns
    (out (T, B, D*Hout), h_n (L*D, B, Hout), c_n or None), float64."""
    cfg = layer.get_config()
    cell = {"SimpleRNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}[cfg["class_name"]]
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    L, D = cfg["num_layers"], 2 if cfg["bidirectional"] else 1
    H = cfg["hidden_size"]
    P = cfg.get("proj_size", 0) or H
    x = np.asarray(x, np.float64)
    T, B = x.shape[:2]
    if hx is None:
        h0 = np.zeros((L * D, B, P))
        c0 = np.zeros((L * D, B, H))
    elif cell == "LSTM":
        h0, c0 = (np.asarray(a, np.float64) for a in hx)
    else:
        h0, c0 = np.asarray(hx, np.float64), None
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    m = np.ones((T, B), bool) if mask is None else np.asarray(mask, bool)
    n_act = len(cfg["activations"]) // D
    acts_all = [tuple(a) for a in cfg["activations"]]
    hn = np.zeros((L * D, B, P))
    cn = np.zeros((L * D, B, H))
    inp = x
    for layer_i in range(L):
        out = np.zeros((T, B, D * P))
        for d in range(D):
            k = layer_i * D + d
            sfx = f"_l{layer_i}" + ("_reverse" if d else "")
            G = sd["weight_ih" + sfx].shape[0]
            p = {"w_ih": sd["weight_ih" + sfx], "w_hh": sd["weight_hh" + sfx],
                 "b_ih": sd.get("bias_ih" + sfx, np.zeros(G)),
                 "b_hh": sd.get("bias_hh" + sfx, np.zeros(G))}
            if "weight_hr" + sfx in sd:
                p["w_hr"] = sd["weight_hr" + sfx]
            peep = sd.get("weight_ph" + sfx)
            acts = [tuple(a) for a in acts_all[d * n_act:(d + 1) * n_act]]
            reverse = (d == 1) != cfg.get("go_backwards", False)
            for b in range(B):
                h = h0[k, b].copy()
                c = c0[k, b].copy() if cell == "LSTM" else None
                last = np.zeros(P)
                n = int(lens[b])
                times = range(n - 1, -1, -1) if reverse else range(n)
                if lengths is None and reverse:
                    times = range(T - 1, -1, -1)
                for t in times:
                    h_new, c_new = _cell_step(cell, p, inp[t, b], h, c, acts, cfg.get("clip"),
                                              cfg.get("reset_after", True),
                                              cfg.get("input_forget", False), peep)
                    if m[t, b]:
                        h, c = h_new, c_new
                        last = h
                        out[t, b, d * P:(d + 1) * P] = h
                    else:
                        out[t, b, d * P:(d + 1) * P] = 0 if masked_output == "zero" else last
                hn[k, b] = h
                if cell == "LSTM":
                    cn[k, b] = c
        inp = out
    return inp, hn, (cn if cell == "LSTM" else None)


def allocations(fn):
    """``(fn(), what its result holds, the peak while it ran)`` in Python allocations
    (tracemalloc; NumPy's arrays are counted), after garbage collections."""
    import gc
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        return result, held, peak
    finally:
        tracemalloc.stop()


def allocation_peak(fn):
    """``(fn(), the peak of Python allocations while it ran)`` (see :func:`allocations`)."""
    result, _, peak = allocations(fn)
    return result, peak
