"""Backward pass: gradients vs torch 2.13 autograd (live) and vs central finite differences.

Torch grid: cell (RNN tanh, RNN relu, LSTM, LSTM proj, GRU) x layers 1-3 x uni/bi x
batch_first x bias x initial state x lengths x fp32/fp64 = 960 configurations, of which a
seeded sample runs (every value of every axis appears many times), plus odd sizes.
fp32: max abs error <= 1e-4 * gradient scale (max |torch grad| of that tensor, at least 1);
fp64: <= 1e-9 * scale.
"""
import itertools
import random

import numpy as np
import pytest

import fastrnn
from fastrnn import train

torch = pytest.importorskip("torch")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    # tiny problems: torch's thread pool only adds overhead (and contention on a busy box)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _torch_module(cell, I, H, L, bi, bf, bias, dtype):
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    if cell.startswith("rnn"):
        m = torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw)
    elif cell == "lstm":
        m = torch.nn.LSTM(I, H, **kw)
    elif cell == "lstm_proj":
        m = torch.nn.LSTM(I, H, proj_size=max(1, H // 2) if H > 1 else 0, **kw)
    else:
        m = torch.nn.GRU(I, H, **kw)
    return m.to(torch.float64 if dtype == np.float64 else torch.float32)


def _run_case(cell, L, bi, bf, bias, init, use_len, dtype, T=5, B=3, I=4, H=5, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = _torch_module(cell, I, H, L, bi, bf, bias, dtype)
    layer = fastrnn.from_torch(m)
    assert layer.dtype == np.dtype(dtype)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    D = 2 if bi else 1
    is_lstm = cell.startswith("lstm")
    Hout = m.proj_size if is_lstm and m.proj_size else H
    xshape = (B, T, I) if bf else (T, B, I)
    x = torch.tensor(rng.standard_normal(xshape), dtype=tdt, requires_grad=True)
    h0 = torch.tensor(rng.standard_normal((L * D, B, Hout)), dtype=tdt, requires_grad=True)
    c0 = torch.tensor(rng.standard_normal((L * D, B, H)), dtype=tdt, requires_grad=True)
    st = ((h0, c0) if is_lstm else h0) if init else None
    lengths = None
    if use_len:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
        pk = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=bf,
                                                     enforce_sorted=False)
        yp, sn = m(pk, st)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, batch_first=bf, total_length=T)
    else:
        y, sn = m(x, st)
    gy = torch.tensor(rng.standard_normal(y.shape), dtype=tdt)
    hn = sn[0] if is_lstm else sn
    gh = torch.tensor(rng.standard_normal(hn.shape), dtype=tdt)
    loss = (y * gy).sum() + (hn * gh).sum()
    if is_lstm:
        gc = torch.tensor(rng.standard_normal(sn[1].shape), dtype=tdt)
        loss = loss + (sn[1] * gc).sum()
    loss.backward()

    hx = None
    if init:
        hx = (h0.detach().numpy(), c0.detach().numpy()) if is_lstm else h0.detach().numpy()
    out, state, cache = layer.forward_train(x.detach().numpy(), hx, lengths=lengths)
    gstate = (gh.numpy(), gc.numpy()) if is_lstm else gh.numpy()
    grads = layer.backward(cache, gy.numpy(), gstate)

    tol = 1e-4 if dtype == np.float32 else 1e-9
    ref = {"input": x.grad}
    if init:
        ref["h0"] = h0.grad
        if is_lstm:
            ref["c0"] = c0.grad
    ref.update({n: p.grad for n, p in m.named_parameters()})
    assert set(grads) == set(layer.state_dict()) | {"input", "h0"} | ({"c0"} if is_lstm else set())
    for name, r in ref.items():
        r = r.numpy()
        g = grads[name]
        assert g.shape == r.shape and g.dtype == np.dtype(dtype), name
        scale = max(1.0, float(np.abs(r).max()))
        err = float(np.abs(g - r).max()) / scale
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"
    # the training forward computes what a plain call computes
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=0, atol=10 * tol)


def _grid():
    full = list(itertools.product(CELLS, [1, 2, 3], [False, True], [False, True],
                                  [True, False], [False, True], [False, True],
                                  [np.float32, np.float64]))
    rnd = random.Random(1234)
    return rnd.sample(full, 200)


@pytest.mark.parametrize("cell,L,bi,bf,bias,init,use_len,dtype", _grid())
def test_grid_vs_torch(cell, L, bi, bf, bias, init, use_len, dtype):
    _run_case(cell, L, bi, bf, bias, init, use_len, dtype)


ODD = [dict(H=1), dict(H=7), dict(I=3), dict(T=1), dict(B=1), dict(B=5),
       dict(T=1, B=1, H=1, I=1), dict(T=9, B=5, H=7, I=3)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("sizes", ODD, ids=lambda d: ",".join(f"{k}{v}" for k, v in d.items()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_sizes_vs_torch(cell, sizes, dtype):
    _run_case(cell, 2, True, False, True, True, True, dtype, **sizes, seed=7)
    _run_case(cell, 1, False, True, True, False, False, dtype, **sizes, seed=8)


# ---------------------------------------------------------------- finite differences
def _loss_fn(layer, x, hx, lengths, gy, gstate, mask=None, masked_output="carry"):
    out, state = layer(x, hx, lengths=lengths, mask=mask, masked_output=masked_output)
    loss = float(np.vdot(out, gy))
    if layer._cell == "LSTM":
        loss += float(np.vdot(state[0], gstate[0]) + np.vdot(state[1], gstate[1]))
    else:
        loss += float(np.vdot(state, gstate))
    return loss


FD_CASES = [
    ("GRU", dict(reset_after=False)),
    ("GRU", dict(reset_after=False, bidirectional=True, num_layers=2)),
    ("GRU", dict(reset_after=True, bidirectional=True)),
    ("GRU", dict(reset_after=False, go_backwards=True)),
    ("LSTM", dict(proj_size=2, bidirectional=True, num_layers=2)),
    ("LSTM", dict(go_backwards=True, bias=False)),
    ("SimpleRNN", dict(nonlinearity="relu", bidirectional=True)),
    ("SimpleRNN", dict(num_layers=2, batch_first=True)),
]


# options only the NumPy path (fastrnn._train_general) trains: ONNX / Keras activations,
# clip, peepholes, the coupled input-forget gate, Keras masks
FD_GENERAL_CASES = [
    ("LSTM", dict(activations=["hard_sigmoid", "tanh", "tanh"])),
    ("LSTM", dict(activations=[("hardsigmoid", 1 / 6, 0.5), "softsign", "elu"],
                  bidirectional=True)),
    ("LSTM", dict(clip=0.7, peepholes=True)),
    ("LSTM", dict(input_forget=True, peepholes=True, proj_size=2, num_layers=2)),
    ("GRU", dict(activations=["hard_sigmoid", "relu"], reset_after=False)),
    ("GRU", dict(activations=[("scaledtanh", 0.8, 1.2), "softplus"], clip=1.5,
                 bidirectional=True)),
    ("SimpleRNN", dict(activations=[("leakyrelu", 0.1)], go_backwards=True)),
    ("SimpleRNN", dict(activations=["affine"], num_layers=2, batch_first=True)),
]


@pytest.mark.parametrize("kind,kw", FD_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("use_len", [False, True])
def test_finite_differences(kind, kw, use_len):
    _fd_check(kind, kw, use_len, None)


@pytest.mark.parametrize("kind,kw", FD_GENERAL_CASES + FD_CASES[:3] + FD_CASES[4:6],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("use_len,mask", [(False, None), (True, "carry"), (False, "zero")])
def test_finite_differences_general(kind, kw, use_len, mask):
    """The NumPy training path: every activation / clip / peephole / input-forget option
    and Keras masks (carry and zero outputs), against central differences."""
    if mask is None and not kw:
        pytest.skip("default options without a mask run on the kernels (covered above)")
    _fd_check(kind, kw, use_len, mask)


def _fd_check(kind, kw, use_len, mask_mode):
    rng = np.random.default_rng(3)
    T, B, I, H = 4, 3, 2, 3
    layer = getattr(fastrnn, kind)(I, H, dtype="float64", seed=5, **kw)
    # larger weights than the default init exercise the nonlinearities
    layer.load_state_dict({k: v * 2.5 for k, v in layer.state_dict().items()})
    D, L, Hout = layer.num_directions, layer.num_layers, layer.output_size
    x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I))
    if kind == "SimpleRNN" and kw.get("nonlinearity") == "relu":
        x += 0.5
    h0 = rng.standard_normal((L * D, B, Hout))
    c0 = rng.standard_normal((L * D, B, H))
    lstm = kind == "LSTM"
    hx = (h0, c0) if lstm else h0
    lengths = np.array([T, 2, 3]) if use_len else None
    mask = None
    if mask_mode is not None:
        # a masked first step, a hole, a masked tail (time-major (T, B))
        mask = np.ones((T, B), bool)
        mask[0, 1] = mask[2, 0] = mask[T - 1, 2] = mask[1, 2] = False
        if layer.batch_first:
            mask = mask.T
    mo = mask_mode or "carry"
    out, state, cache = layer.forward_train(x, hx, lengths=lengths, mask=mask,
                                            masked_output=mo)
    assert cache.general == (mask is not None or bool(kw.get("activations") or kw.get(
        "clip") or kw.get("peepholes") or kw.get("input_forget")))
    ref_out, ref_state = layer(x, hx, lengths=lengths, mask=mask, masked_output=mo)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    gy = rng.standard_normal(out.shape)
    if lstm:
        gstate = (rng.standard_normal(state[0].shape), rng.standard_normal(state[1].shape))
    else:
        gstate = rng.standard_normal(state.shape)
    grads = layer.backward(cache, gy, gstate)
    eps = 1e-6

    def fd(arr, setter):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            setter()
            lp = _loss_fn(layer, x, hx, lengths, gy, gstate, mask, mo)
            arr[idx] = old - eps
            setter()
            lm = _loss_fn(layer, x, hx, lengths, gy, gstate, mask, mo)
            arr[idx] = old
            setter()
            g[idx] = (lp - lm) / (2 * eps)
        return g

    checks = {"input": fd(x, lambda: None), "h0": fd(h0, lambda: None)}
    if lstm:
        checks["c0"] = fd(c0, lambda: None)
    for name, p in layer.parameters().items():
        checks[name] = fd(p, layer.mark_weights_changed)
    for name, ref in checks.items():
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(grads[name] - ref).max()) / scale
        assert err < 1e-6, f"{name}: {err:.3g}"


# ---------------------------------------------------------------- API
def test_forward_train_matches_call_and_none_grads():
    layer = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    out, (h, c), cache = layer.forward_train(x, lengths=[6, 4])
    out2, (h2, c2) = layer(x, lengths=[6, 4])
    np.testing.assert_allclose(out, out2, atol=1e-6)
    np.testing.assert_allclose(h, h2, atol=1e-6)
    np.testing.assert_allclose(c, c2, atol=1e-6)
    g = layer.backward(cache)            # no gradients: everything zero
    assert all(not np.any(v) for v in g.values())
    gy, gc = np.ones_like(out), np.ones_like(c)
    layer.backward(cache, gy, (gc, gc))
    assert np.all(gy == 1) and np.all(gc == 1)          # the caller's arrays are not touched
    g = layer.backward(cache, grad_state=(None, np.ones_like(c)))
    assert np.any(g["input"]) and g["input"].shape == x.shape
    assert g["input"][4:, 1].max() == 0  # padding gets no gradient
    assert cache.nbytes > 0 and "MB" in repr(cache)


def test_unbatched_and_empty():
    layer = fastrnn.GRU(3, 4, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 3))
    out, h, cache = layer.forward_train(x)
    assert out.shape == (5, 4) and h.shape == (1, 4)
    g = layer.backward(cache, np.ones_like(out), np.ones_like(h))
    assert g["input"].shape == (5, 3) and g["h0"].shape == (1, 4)
    gb = layer.backward(layer.forward_train(x[:, None])[2], np.ones((5, 1, 4)),
                        np.ones((1, 1, 4)))
    np.testing.assert_allclose(gb["input"][:, 0], g["input"], atol=1e-12)
    # zero-length sequences and an empty time axis
    out, h, cache = layer.forward_train(np.ones((3, 2, 3)), lengths=[0, 2])
    g = layer.backward(cache, np.ones_like(out), np.ones_like(h))
    assert np.all(g["input"][:, 0] == 0) and np.all(g["h0"][:, 0] == 1)
    out, h, cache = layer.forward_train(np.ones((0, 2, 3)))
    g = layer.backward(cache, None, np.ones_like(h))
    assert g["input"].shape == (0, 2, 3) and np.all(g["h0"] == 1)
    assert not np.any(g["weight_ih_l0"])


def test_weights_changed_and_wrong_cache():
    layer = fastrnn.SimpleRNN(2, 3, seed=0)
    other = fastrnn.SimpleRNN(2, 3, seed=1)
    x = np.ones((4, 1, 2), np.float32)
    out, h, cache = layer.forward_train(x)
    with pytest.raises(ValueError, match="another layer"):
        other.backward(cache, np.ones_like(out))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(cache, np.ones((4, 2, 3), np.float32))
    with pytest.raises(TypeError):
        layer.backward("cache")
    layer.load_state_dict(layer.state_dict())
    with pytest.raises(RuntimeError, match="changed"):
        layer.backward(cache, np.ones_like(out))
    out, h, cache = layer.forward_train(x)
    train.SGD(layer, lr=0.1).step(layer.backward(cache, np.ones_like(out)))
    with pytest.raises(RuntimeError, match="changed"):
        layer.backward(cache, np.ones_like(out))


@pytest.mark.parametrize("kind,kw", [("LSTM", dict(num_layers=2, bidirectional=True)),
                                     ("GRU", dict(reset_after=False, bidirectional=True)),
                                     ("GRU", dict(num_layers=2)),
                                     ("LSTM", dict(proj_size=3, go_backwards=True)),
                                     ("SimpleRNN", dict(nonlinearity="relu"))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_general_path_matches_kernels(kind, kw, dtype):
    """An all-true mask sends a default layer down the NumPy path: the same outputs and
    gradients as the kernels (which test_grid_vs_torch checks against torch autograd)."""
    rng = np.random.default_rng(4)
    T, B, I, H = 6, 5, 4, 7
    layer = getattr(fastrnn, kind)(I, H, dtype=dtype, seed=2, **kw)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([6, 3, 5, 1, 6])
    out, st, cache = layer.forward_train(x, lengths=lengths)
    gout, gst, gcache = layer.forward_train(x, lengths=lengths, mask=np.ones((T, B), bool))
    assert not cache.general and gcache.general
    tol = 2e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(gout, out, rtol=0, atol=tol)
    gy = rng.standard_normal(out.shape).astype(dtype)
    a = layer.backward(cache, gy)
    b = layer.backward(gcache, gy)
    assert list(a) == list(b)
    for k in a:
        scale = max(1.0, float(np.abs(a[k]).max()))
        assert np.abs(a[k] - b[k]).max() <= tol * scale, k
    c = layer.backward(gcache, gy, need_input_grad=False)
    assert "input" not in c and all(np.array_equal(c[k], b[k]) for k in c)
    assert gcache.nbytes > 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_threads_agree(kind):
    layer = getattr(fastrnn, kind)(16, 64, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 160, 16)).astype(np.float32)
    res = []
    for nt in (1, 2, 3):     # 3: more threads than the pipeline's two roles
        out, st, cache = layer.forward_train(x, num_threads=nt)
        res.append((out, layer.backward(cache, np.ones_like(out), num_threads=nt)))
    for other in res[1:]:
        np.testing.assert_allclose(res[0][0], other[0], atol=1e-5)
        for k in res[0][1]:
            scale = max(1.0, float(np.abs(res[0][1][k]).max()))
            assert np.abs(res[0][1][k] - other[1][k]).max() <= 1e-5 * scale, k


def test_clip_grad_norm():
    g = {"a": np.full(4, 3.0), "input": np.full(2, 100.0)}
    n = train.clip_grad_norm(g, 1.0)
    assert n == pytest.approx(6.0)
    assert np.linalg.norm(g["a"]) == pytest.approx(1.0, rel=1e-5)
    assert np.all(g["input"] == 100.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_nonfinite_as_torch(bad):
    # torch.nn.utils.clip_grad_norm_: a NaN norm makes every gradient NaN, an infinite
    # one zeroes the finite entries (inf * 0 = NaN for the rest); the norm is returned
    g = {"a": np.array([1.0, bad, 2.0]), "b": np.array([3.0, 4.0])}
    n = train.clip_grad_norm(g, 1.0)
    assert not np.isfinite(n)
    if np.isnan(bad):
        assert np.isnan(g["a"]).all() and np.isnan(g["b"]).all()
    else:
        assert np.isnan(g["a"][1]) and not g["a"][[0, 2]].any() and not g["b"].any()
    g = {"a": np.array([1.0, bad])}
    with pytest.raises(RuntimeError, match="non-finite"):
        train.clip_grad_norm(g, 1.0, error_if_nonfinite=True)
    assert g["a"][0] == 1.0


def test_need_input_grad_false():
    layer = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, h, cache = layer.forward_train(x, lengths=[5, 3])
    gy = np.random.default_rng(1).standard_normal(out.shape)
    full = layer.backward(cache, gy)
    part = layer.backward(cache, gy, need_input_grad=False)
    assert "input" not in part and set(part) == set(full) - {"input"}
    for k in part:
        np.testing.assert_array_equal(part[k], full[k])


@pytest.mark.parametrize("env", ["FASTRNN_NO_SMALL_GEMM", "FASTRNN_SMALL_GEMM_AVX2",
                                 "FASTRNN_NO_PIPELINE"])
def test_other_kernel_paths(env):
    """The BLAS-only path, the AVX2 kernels and the non-pipelined multi-thread backward
    (chosen at import, hence a subprocess) against torch on a slice of the grid."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np, sys; sys.path.insert(0, %r); import test_backward as t\n"
        "import torch; torch.set_num_threads(1)\n"
        "import fastrnn._backward as b; print('level', b.small_gemm_level())\n"
        "for cell in t.CELLS:\n"
        "    for dt in (np.float32, np.float64):\n"
        "        t._run_case(cell, 2, True, False, True, True, True, dt, T=6, B=7, H=9, I=5)\n"
        "        t._run_case(cell, 1, False, True, True, False, False, dt, T=4, B=150, H=20)\n"
        "        import fastrnn; fastrnn.set_num_threads(2)\n"
        "        t._run_case(cell, 2, True, False, True, True, True, dt, T=30, B=9, H=33, I=5)\n"
        "        fastrnn.set_num_threads(None)\n"
        "        for g43 in (0, 3):\n"       # H = one vector of this level (t._VECTOR_H)
        "            b._set_gemm43(g43)\n"
        "            for H in t._VECTOR_H:\n"
        "                t._run_case(cell, 1, True, False, True, True, False, dt, T=4, B=3,\n"
        "                            H=H, I=5)\n"
        "        b._set_gemm43(3)\n"
        "print('ok')\n" % os.path.dirname(__file__))
    env_vars = dict(os.environ, **{env: "1"})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env_vars, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("kind,kw", [("LSTM", dict(proj_size=5)), ("LSTM", {}),
                                     ("GRU", dict(reset_after=False)),
                                     ("GRU", {}), ("SimpleRNN", dict(nonlinearity="relu")),
                                     ("SimpleRNN", {})])
def test_pipelined_many_chunks(kind, kw):
    """Two threads: the time loop on one, the weight gradients of finished chunks on the
    other (several chunks, ragged lengths, both directions) == one thread."""
    layer = getattr(fastrnn, kind)(6, 12, num_layers=2, bidirectional=True, seed=0,
                                   dtype="float64", **kw)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 5, 6))
    lengths = [200, 170, 200, 3, 90]
    res = []
    for nt in (1, 2):
        out, st, cache = layer.forward_train(x, lengths=lengths, num_threads=nt)
        gst = tuple(np.ones_like(a) for a in st) if kind == "LSTM" else np.ones_like(st)
        res.append(layer.backward(cache, np.cos(out), gst, num_threads=nt))
    for k in res[0]:
        np.testing.assert_allclose(res[1][k], res[0][k], rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_units_split_vs_torch(cell, dtype):
    """LSTM and GRU backward split by units over threads (H spans several kernel panels,
    uneven shares, ragged lengths, initial states): every thread count agrees with torch."""
    for nt in (1, 2, 3):
        fastrnn.set_num_threads(nt)
        try:
            _run_case(cell, 2, True, False, True, True, True, dtype, T=7, B=6, I=70,
                      H=130, seed=nt)
            # from 16 sequences on the LSTM training forward splits by batch rows
            # (ragged lengths: late steps leave some threads without rows)
            _run_case(cell, 1, True, True, True, True, True, dtype, T=9, B=37, I=20,
                      H=70, seed=nt)
        finally:
            fastrnn.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_forward_row_split_vs_torch(dtype):
    """The GRU training forward split by batch rows (forced, by the rule) and by units
    (forced): outputs and gradients against torch, dense and ragged batches, rows not a
    multiple of the threads, 2-3 threads; rows and units bit-identical."""
    from fastrnn import _backward as b
    rng = np.random.default_rng(5)
    try:
        for mode in (1, -1, 0):
            b._set_gru_fwd_rowsplit(mode)
            for nt in (2, 3):
                fastrnn.set_num_threads(nt)
                for B, ragged in ((8, False), (13, True), (37, True)):
                    _run_case("gru", 1, B == 13, False, True, True, ragged, dtype, T=6,
                              B=B, I=11, H=70, seed=B + nt + mode)
        layer = fastrnn.GRU(9, 40, dtype=dtype, seed=2, num_threads=2)
        x = rng.standard_normal((7, 11, 9)).astype(dtype)
        lens = rng.integers(0, 8, 11)
        outs = []
        for mode in (1, -1):
            b._set_gru_fwd_rowsplit(mode)
            out, st, cache = layer.forward_train(x, lengths=lens)
            outs.append((out, st, layer.backward(cache, np.ones_like(out))))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        for k in outs[0][2]:
            np.testing.assert_array_equal(outs[0][2][k], outs[1][2][k], err_msg=k)
    finally:
        b._set_gru_fwd_rowsplit(0)
        fastrnn.set_num_threads(None)


def test_gru_forward_split_rule():
    """AVX-512: the GRU training forward splits by rows from 2 rows a thread where its
    weights take at most 0.6 of an L2, from 6 where they fit one; by units otherwise."""
    from fastrnn import _backward as b
    rows = b.gru_forward_splits_rows
    l2 = b.l2_bytes()
    avx512 = b.small_gemm_level() == 2
    for H in (64, 128, 192, 256, 512):
        w = 3 * H * 2 * H * 4
        for B in (3, 4, 8, 12, 32):
            want = avx512 and l2 > 0 and ((B >= 4 and w <= 0.6 * l2) or (B >= 12 and w <= l2))
            assert rows(2, B, H, H, 4) == want, (H, B)
        assert not rows(1, 32, H, H, 4)


def test_backward_split_rule():
    """AVX-512: the backward's time loop splits by rows from 4 rows a thread where W_hh
    takes at most 0.8 of an L2 (GRU also where it streams <= 96 KiB of it a row); by
    units otherwise and on other ISA levels."""
    from fastrnn import _backward as b
    rows = b.backward_splits_rows
    l2 = b.l2_bytes()
    avx512 = b.small_gemm_level() == 2
    for H, isz in ((128, 4), (224, 4), (256, 4), (320, 4), (384, 4), (192, 8), (256, 8),
                   (512, 4)):
        for lstm in (True, False):
            w = (4 if lstm else 3) * H * H * isz
            fits = w <= 0.8 * l2
            assert rows(lstm, 2, 8, H, isz) == (avx512 and fits), (lstm, H, isz)
            assert not rows(lstm, 2, 6, H, isz)                      # 3 rows a thread
            assert not rows(lstm, 1, 64, H, isz)
        assert rows(True, 2, 64, H, isz) == (avx512 and 4 * H * H * isz <= 0.8 * l2)
    # GRU: from 96 KiB of W_hh a row (3 MiB at H=512 float32: 32+ rows on 2 threads)
    assert rows(False, 2, 64, 512, 4) == avx512
    assert rows(False, 2, 16, 512, 4) == (avx512 and 3 * 512 * 512 * 4 <= 0.8 * l2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_row_split_vs_torch(cell, dtype):
    """The backward's time loop split by batch rows (forced on, forced off, and by the
    rule: GRU on AVX-512 where W_hh fits), its dh product on the 8 x 3 kernel (AVX-512:
    by its rule, 7-8 rows a thread as B=13 on 2 threads, and always): ragged and dense
    batches, rows not a multiple of the threads, uneven unit shares for the weight
    gradients, 2-3 threads, torch."""
    from fastrnn import _backward as b
    try:
        for mode, k83 in ((1, 1), (1, 2), (-1, 1), (0, 1)):
            b._set_bwd_rowsplit(mode)
            b._set_gemm83(k83)
            for nt in (2, 3):
                fastrnn.set_num_threads(nt)
                for B, ragged in ((8, False), (13, True), (37, True)):
                    _run_case(cell, 1, B == 13, False, True, True, ragged, dtype, T=6, B=B,
                              I=11, H=70, seed=B + nt + mode + k83)
    finally:
        b._set_bwd_rowsplit(0)
        b._set_gemm83(1)
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_without_input_grad_same_gradients(kind, dtype):
    """Without the input gradient the threaded backward keeps only two steps of gate
    gradients (alternating) instead of every step's: the weight, bias and state
    gradients must be the very same numbers as with it, whichever way the time loop is
    split, on 1-3 threads, ragged batches and one step (H=70: more than one panel of
    units at every ISA level, so the unit split runs 2-3 threads too)."""
    from fastrnn import _backward as b
    rng = np.random.default_rng(5)
    layer = getattr(fastrnn, kind)(9, 70, dtype=dtype, seed=3)
    try:
        for mode in (1, -1, 0):
            b._set_bwd_rowsplit(mode)
            for nt in (1, 2, 3):
                for T, B, lengths in ((7, 9, [7, 7, 6, 5, 5, 3, 2, 2, 1]), (1, 4, None),
                                      (12, 16, None)):
                    x = rng.standard_normal((T, B, 9)).astype(dtype)
                    out, st, cache = layer.forward_train(x, lengths=lengths, num_threads=nt)
                    assert not cache.general
                    gy = rng.standard_normal(out.shape).astype(dtype)
                    full = layer.backward(cache, gy, num_threads=nt)
                    part = layer.backward(cache, gy, need_input_grad=False, num_threads=nt)
                    assert set(part) == set(full) - {"input"}
                    for k in part:
                        np.testing.assert_array_equal(part[k], full[k],
                                                      err_msg=f"{k} {mode} {nt} {T}")
    finally:
        b._set_bwd_rowsplit(0)


# hidden sizes of one vector of some ISA level (AVX-512 16 / 8, AVX2 8 / 4 floats /
# doubles), where the four LSTM gate vectors of a unit block lie side by side
_VECTOR_H = (4, 8, 16)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_width_hidden_sizes_vs_torch(cell, dtype):
    """H equal to one vector of the kernels' width: the LSTM training forward's unit-block
    product once wrote only the first gate there (AVX-512, H=16 float32 / 8 float64: wrong
    outputs and gradients).  Both micro-kernels, unit and row splits, 1-2 threads."""
    from fastrnn import _backward as b
    try:
        for g43 in (0, 3):
            b._set_gemm43(g43)
            for nt in (1, 2):
                fastrnn.set_num_threads(nt)
                for H in _VECTOR_H:
                    for B in (3, 17):
                        _run_case(cell, 1, True, False, True, True, B == 17, dtype, T=5,
                                  B=B, I=6, H=H, seed=H + B + nt)
    finally:
        b._set_gemm43(3)
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm43_kernels_vs_torch(cell, dtype):
    """The AVX2 training kernels' 4 x 3 micro-kernel and its packing (bit 1: LSTM forward,
    bit 2: GRU forward and the backward's per-step product; default both) against the
    3 x 4 one and torch: 1-3 threads, unit and row splits (B >= 16), ragged lengths, and
    vector-column counts that leave groups of 1, 2 and 3 (H = 7, 37, 130; 130 + 2 double
    lanes).  On other CPUs the setting is ignored and the same checks run."""
    from fastrnn import _backward as b
    cases = [dict(T=3, B=1, I=5, H=7), dict(T=5, B=3, I=20, H=37),
             dict(T=4, B=17, I=9, H=130), dict(T=6, B=40, I=33, H=37)]
    try:
        for mode in (0, 1, 2, 3):
            b._set_gemm43(mode)
            for nt in (1, 2, 3):
                fastrnn.set_num_threads(nt)
                for i, kw in enumerate(cases):
                    _run_case(cell, 1, i % 2 == 1, False, True, True, True, dtype,
                              seed=mode + nt + i, **kw)
    finally:
        b._set_gemm43(3)
        fastrnn.set_num_threads(None)


def _same_bits_either_way(setter, cell, dtype, B, nt):
    """forward_train + backward (T=6, I=9, H=37) with a kernel setting on (1) and off
    (0): identical outputs and gradients (row blockings leave every sum unchanged)."""
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(9, 37, dtype=dtype, seed=0,
                                                              num_threads=nt)
    x = np.random.default_rng(0).standard_normal((6, B, 9)).astype(dtype)
    gy = np.random.default_rng(1).standard_normal((6, B, 37)).astype(dtype)
    res = []
    for on in (1, 0):
        setter(on)
        out, _, cache = layer.forward_train(x)
        res.append((out, layer.backward(cache, gy)))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    for k in res[0][1]:
        np.testing.assert_array_equal(res[0][1][k], res[1][1][k])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_blocks_and_splits_vs_torch(cell, dtype):
    """The 4 x 3 kernels' row blocks (three-row blocks instead of a lone one or two rows,
    on and off) and the LSTM training forward's split (the automatic rule, rows forced,
    units forced) at batch sizes giving every block shape (5 = 3+2, 6 = 3+3, 9 = 3+3+3,
    13 = 4+3+3+3, 14 = 4+4+3+3; halves of them in the row split), 1-3 threads, ragged
    and dense, against torch; the row blocking leaves every sum unchanged, so its two
    settings give identical bits."""
    from fastrnn import _backward as b
    try:
        for nt in (1, 2, 3):
            fastrnn.set_num_threads(nt)
            for B in (5, 6, 9, 13, 14):
                for split in (0, 1, 10 ** 6):
                    b._set_fwd_rowsplit(split)
                    for rows3 in (1, 0):
                        b._set_rows3(rows3)
                        _run_case(cell, 1, False, False, True, True, B % 2 == 1, dtype,
                                  T=4, B=B, I=9, H=37, seed=B + nt)
        _same_bits_either_way(b._set_rows3, cell, dtype, B=13, nt=3)
    finally:
        b._set_rows3(1)
        b._set_fwd_rowsplit(0)
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_six_row_blocks_vs_torch(cell, dtype):
    """The AVX-512 6-row training kernels end a block of rows with two near-equal blocks
    (8 = 4+4, 13 = 6+4+3, 20 = 6+6+4+4) instead of a lone one or two rows, on and off:
    against torch, 1-2 threads, unit and row splits, ragged and dense; the same sums, so
    the two settings give identical bits.  (Elsewhere the setting is ignored.)"""
    from fastrnn import _backward as b
    try:
        for nt in (1, 2):
            fastrnn.set_num_threads(nt)
            for B in (7, 8, 13, 16, 20, 26):
                for rows6 in (1, 0):
                    b._set_rows6(rows6)
                    _run_case(cell, 1, B % 2 == 0, False, True, True, B % 2 == 1, dtype,
                              T=4, B=B, I=9, H=37, seed=B + nt)
        _same_bits_either_way(b._set_rows6, cell, dtype, B=20, nt=2)
    finally:
        b._set_rows6(1)
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_weight_gradients_vs_torch(cell, dtype):
    """More than 2048 rows of a step batch (T*B = 2240: the weight-gradient GEMM's B
    panel outgrows L2 and it runs in blocks), both block sizes of the AVX-512 kernel
    (64 micro-panels x 512 rows: several row blocks, a partial last one, more than one
    block of micro-panels at H=200 on one thread; 32 x 128), 1-2 threads, against torch.
    (Where the kernel is not AVX-512 the setting is ignored.)"""
    from fastrnn import _backward as b
    try:
        for mode in (1, 0):
            b._set_wgemm_blocks(mode)
            for nt in (1, 2):
                fastrnn.set_num_threads(nt)
                _run_case(cell, 1, False, False, True, True, nt == 2, dtype, T=70, B=32,
                          I=11, H=200 if nt == 1 else 23, seed=mode + 2 * nt)
    finally:
        b._set_wgemm_blocks(-1)
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eight_row_kernel_vs_torch(dtype):
    """The AVX-512 LSTM training forward on the 8 x 3 micro-kernel: by its rule (blocks of
    7-8 rows: B = 7 unit split, 14-16 row split), always (every block shape 1-8 rows,
    9-16 in halves, H not a multiple of the vector) and never, 1-2 threads, ragged and
    dense, against torch; the same sums as the 6 x 4 kernel (identical bits).  (Without
    AVX-512 the setting is ignored.)"""
    from fastrnn import _backward as b
    try:
        for mode in (1, 2, 0):
            b._set_gemm83(mode)
            for nt in (1, 2):
                fastrnn.set_num_threads(nt)
                for B in (3, 7, 8, 13, 15, 16, 20, 33):
                    _run_case("lstm", 1, B % 2 == 1, False, True, True, B % 3 == 0, dtype,
                              T=4, B=B, I=9, H=37, seed=B + nt + mode)
        _same_bits_either_way(b._set_gemm83, "lstm", dtype, B=16, nt=2)
    finally:
        b._set_gemm83(1)
        fastrnn.set_num_threads(None)


def test_forward_split_rule_by_weight_size():
    """The LSTM training forward splits by rows from 11 sequences on 2 threads, except
    with AVX-512 and 2 MiB of L2 or more, where weights beyond one L2 (W_ih and W_hh)
    split by units at every batch size, and with AVX-512, where weights within 0.6 of
    an L2 split by rows from 4 sequences."""
    from fastrnn import _backward as b
    rows = b.forward_splits_rows
    assert rows(2, 64, 256, 256, 4) and rows(2, 16, 128, 128, 4)     # 2 MiB, 0.5 MiB
    assert not rows(1, 64, 256, 256, 4) and not rows(2, 10, 256, 256, 4)
    big = b.small_gemm_level() == 2 and b.wgemm_big_blocks()
    assert rows(2, 64, 512, 512, 4) == (not big)                      # 8 MiB
    assert rows(2, 16, 256, 256, 8) == (not big)                      # 4 MiB (float64)
    assert rows(2, 16, 256, 384, 4) == (not big)                      # 3.75 MiB
    # AVX-512: weights within 0.6 of an L2 split by rows from two rows a thread
    l2 = b.l2_bytes()
    for B, H, isz in ((4, 64, 4), (10, 128, 4), (6, 128, 8), (9, 160, 4)):
        small = b.small_gemm_level() == 2 and 0 < 4 * H * 2 * H * isz <= 0.6 * l2
        assert rows(2, B, H, H, isz) == small, (B, H, isz)
    assert not rows(2, 3, 64, 64, 4)                                  # one row a thread


def test_release_scratch():
    layer = fastrnn.LSTM(8, 70, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 8)).astype(np.float32)
    out, st, cache = layer.forward_train(x)
    g1 = layer.backward(cache, np.ones_like(out))
    assert train.release_scratch() > 6 * 3 * 4 * 70 * 4      # at least dG was kept
    assert train.release_scratch() == 0
    g2 = layer.backward(cache, np.ones_like(out))            # allocates again
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("masked_output", ["carry", "zero"])
@pytest.mark.parametrize("pad", ["right", "left", "both"])
def test_span_mask_trains_as_lengths(cell, masked_output, pad):
    """forward_train / backward with a mask of one span a sequence (right, left or
    both-sides padding) run as lengths from those steps on the kernels (not the NumPy
    mask path): outputs, final states and every gradient equal the mask path's (the
    conversion off; that path is checked against finite differences and Keras), with
    the carried outputs' gradients folded into each span's last (forward) or first
    (reverse) step; uni- and bidirectional, go_backwards, batch_first, 2 layers,
    lengths 0..T; with ``clip`` (NumPy path either way; right padding as lengths) too."""
    import fastrnn.layers as layers_mod
    rng = np.random.default_rng(7)
    T, B = 6, 4
    lens = np.array([6, 3, 0, 1])
    begin = {"right": 0 * lens, "left": T - lens, "both": np.array([0, 2, 0, 4])}[pad]
    try:
        for bi, gb, bf, clip in itertools.product((False, True), (False, True),
                                                  (False, True), (None, 3.0)):
            if clip and cell == "SimpleRNN":
                continue
            kw = dict(clip=clip) if clip else {}
            layer = getattr(fastrnn, cell)(4, 5, bidirectional=bi, go_backwards=gb,
                                           num_layers=2, seed=1, batch_first=bf,
                                           dtype="float64", **kw)
            x = rng.standard_normal((B, T, 4) if bf else (T, B, 4))
            t = np.arange(T)[:, None]
            m = (t >= begin) & (t < begin + lens)
            m = m.T if bf else m
            res = []
            for conv in (False, True):
                layers_mod._MASK_AS_LENGTHS = conv
                o, st, cache = layer.forward_train(x, mask=m, masked_output=masked_output)
                assert cache.general == (not conv or clip is not None)
                sts = list(st) if isinstance(st, tuple) else [st]
                gy = np.random.default_rng(5).standard_normal(o.shape)
                gs = [np.random.default_rng(6 + i).standard_normal(s.shape)
                      for i, s in enumerate(sts)]
                g = layer.backward(cache, gy, tuple(gs) if len(gs) == 2 else gs[0])
                res.append((o, sts, g))
            (o1, s1, g1), (o2, s2, g2) = res
            np.testing.assert_allclose(o2, o1, rtol=1e-10, atol=1e-12)
            for a, b in zip(s1, s2):
                np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
            assert set(g1) == set(g2)
            for k in g1:
                np.testing.assert_allclose(g2[k], g1[k], rtol=1e-9, atol=1e-11, err_msg=k)
    finally:
        layers_mod._MASK_AS_LENGTHS = True


def test_training_never_runs_threaded_openblas_inside_its_openmp_region():
    """The pipelined training kernels multiply on thread 0 inside an OpenMP region:
    OpenBLAS must run on one thread there (it ran on the call's count, oversubscribing
    the cores: SimpleRNN B=256 H=128 training step 36-40 -> 18 ms; and with libgomp
    loaded globally, as `import torch` does, OpenBLAS printed "Detect OpenMP Loop and
    this application may hang")."""
    import subprocess
    import sys
    pytest.importorskip("torch")
    code = """
import torch
import numpy as np, fastrnn
from fastrnn import train
rng = np.random.default_rng(0)
for cls, kw in [(fastrnn.SimpleRNN, {}), (fastrnn.GRU, dict(reset_after=False)),
                (fastrnn.LSTM, dict(proj_size=16))]:
    layer = cls(40, 64, seed=0, **kw)
    x = rng.standard_normal((3, 256, 40)).astype(np.float32)
    out, _, cache = train.forward_train(layer, x, num_threads=2)
    train.backward(layer, cache, out, num_threads=2)
print("done")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-2000:]
    assert "OpenMP Loop" not in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("general", [False, True])      # (clip: the NumPy path)
def test_cache_holds_its_own_input_and_states(cls, batch_first, general):
    """forward_train's cache keeps the input and the initial states for the backward:
    refilling the caller's input or state buffers afterwards (a training loop reusing
    one batch buffer) does not change the gradients (it did, silently: the cache held
    the caller's arrays; weight gradients off by up to ~6)."""
    rng = np.random.default_rng(3)
    layer = getattr(fastrnn, cls)(3, 4, seed=0, batch_first=batch_first,
                                  **({"clip": 0.5} if general else {}))
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((1, 5 if batch_first else 2, 4)).astype(np.float32)
    hx = (h0, h0 * 0.5) if cls == "LSTM" else h0
    out, _, cache = layer.forward_train(x.copy(), hx)
    g = np.ones_like(out)
    want = layer.backward(cache, g)
    buf = x.copy()
    hbuf = tuple(a.copy() for a in hx) if cls == "LSTM" else hx.copy()
    out, _, cache = layer.forward_train(buf, hbuf)
    buf[:] = 7.0
    for a in (hbuf if cls == "LSTM" else (hbuf,)):
        a[:] = 3.0
    got = layer.backward(cache, g)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.SimpleRNN])
def test_values_at_masked_steps_do_not_reach_the_gradients(cls):
    """On the NumPy training path (a mask with holes; lengths with ONNX's clip) the
    input's values at masked steps or past a sequence's length take no part: NaN or inf
    there gives the gradients of zeros there (they were all NaN), and the input's
    gradient there is 0."""
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 4, 5
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    mask = np.ones((T, B), bool)
    mask[2, 1] = mask[0, 2] = False             # holes: the NumPy path
    G = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = cls(I, H, seed=0)
    clean = np.where(mask[..., None], x, 0)
    for bad in (np.nan, np.inf):
        dirty = np.where(mask[..., None], x, bad).astype(np.float32)
        o1, _, c1 = layer.forward_train(clean, mask=mask)
        o2, _, c2 = layer.forward_train(dirty, mask=mask)
        np.testing.assert_array_equal(o1, o2)
        g1, g2 = layer.backward(c1, G), layer.backward(c2, G)
        for k in g1:
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-6, atol=1e-7, err_msg=k)
        assert not g2["input"][~mask].any()
    lstm = fastrnn.LSTM(I, H, seed=0, clip=50.0)
    lens = np.array([T, 4, 0])
    padded = x.copy()
    padded[4:, 1] = np.nan
    padded[:, 2] = np.inf
    o, _, c = lstm.forward_train(padded, lengths=lens)
    g = lstm.backward(c, G)
    assert all(np.isfinite(v).all() for v in g.values()) and np.isfinite(o).all()


@pytest.mark.parametrize("general", [False, True])
def test_step_during_forward_train_invalidates_cache(monkeypatch, general):
    """An optimizer step that lands while forward_train runs (another thread stepping
    the shared layer) must make backward refuse the cache, as a step after it does:
    the forward ran on half-old weights, so no gradient of it is right."""
    layer = fastrnn.GRU(3, 4, num_layers=2, dtype="float64", seed=0,
                        **({"gate_activation": "hard_sigmoid"} if general else {}))
    opt = train.SGD(layer, lr=0.5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    grads = {k: rng.standard_normal(v.shape) for k, v in layer.parameters().items()}
    fired = []
    if general:
        from fastrnn import _train_general
        real = _train_general._dir_forward

        def hooked(*a, **k):
            r = real(*a, **k)
            if not fired:                # after the first layer's NumPy forward
                fired.append(1)
                opt.step(grads)
            return r
        monkeypatch.setattr(_train_general, "_dir_forward", hooked)
    else:
        from fastrnn import _backward
        real = _backward.forward

        def hooked(*a):
            real(*a)
            if not fired:                # after the first layer's kernel call
                fired.append(1)
                opt.step(grads)
        monkeypatch.setattr(_backward, "forward", hooked)
    out, h, cache = layer.forward_train(x)
    monkeypatch.undo()
    assert fired
    with pytest.raises(RuntimeError, match="changed since forward_train"):
        layer.backward(cache, np.ones_like(out))
