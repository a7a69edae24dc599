"""Training cells: LSTMCell / GRUCell / RNNCell ``forward_train`` + ``backward`` against
torch autograd (one step, and a teacher-forced decoder loop run backward step by step),
fastrnn.train's optimizers against torch.optim, the backward's errors, and saving /
loading / converting cells."""
import numpy as np
import pytest

import fastrnn
import fastrnn.io as fio
from fastrnn import train
from fastrnn.cells import GRUCell, LSTMCell, RNNCell, cell_from_config, from_torch_cell
from fastrnn.io import LoadError

torch = pytest.importorskip("torch")

# max |fastrnn - torch| relative to the largest magnitude of the torch gradient
RTOL = {np.float32: 1e-5, np.float64: 1e-12}

from test_cells import KINDS, _torch_cell  # noqa: E402  (the same torch cells)


def _names(m):
    return ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if m.bias else [])


def _close(name, ref, got, dtype, scale=None):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert isinstance(got, np.ndarray), (name, type(got))
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert got.dtype == dtype, (name, got.dtype)
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-3) if scale is None else scale
    err = float(np.abs(got - ref).max()) / scale if ref.size else 0.0
    assert err <= RTOL[dtype], (name, err)


def _torch_state(lstm, hx, shape, dtype):
    """Leaf tensors for the initial state (zeros where hx is None), requiring grad."""
    if lstm:
        hs = hx if hx is not None else (np.zeros(shape, dtype), np.zeros(shape, dtype))
        return tuple(torch.tensor(a, requires_grad=True) for a in hs)
    return torch.tensor(hx if hx is not None else np.zeros(shape, dtype), requires_grad=True)


# ---------------------------------------------------------------- one step

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_step_gradients_match_torch(kind, bias, dtype):
    """forward_train's outputs are the call's; backward's every gradient is torch
    autograd's: H=1 and 7, B=1 and 3, batched and unbatched, hx None or given, grad_h /
    grad_c given or None."""
    rng = np.random.default_rng(7)
    I, lstm = 5, kind == "lstm"
    for H in (1, 7):
        m = _torch_cell(kind, I, H, bias, dtype, seed=H)
        cell = from_torch_cell(m)
        for B in (1, 3):
            for unbatched in ((False, True) if B == 1 else (False,)):
                xs, hs = ((I,), (H,)) if unbatched else ((B, I), (B, H))
                for given in (False, True):
                    for which in ("both", "h", "c") if lstm else ("h", "none"):
                        x = rng.standard_normal(xs).astype(dtype)
                        hx = None
                        if given:
                            hx = (tuple(rng.standard_normal(hs).astype(dtype) for _ in "hc")
                                  if lstm else rng.standard_normal(hs).astype(dtype))
                        gh = rng.standard_normal(hs).astype(dtype) if which != "c" \
                            and which != "none" else None
                        gc = rng.standard_normal(hs).astype(dtype) if lstm and which != "h" \
                            else None
                        # torch autograd
                        xt = torch.tensor(x, requires_grad=True)
                        st = _torch_state(lstm, hx, hs, dtype)
                        out_t = m(xt, st)
                        h_t = out_t[0] if lstm else out_t
                        loss = (h_t * torch.tensor(gh if gh is not None else
                                                   np.zeros(hs, dtype))).sum()
                        if lstm:
                            loss = loss + (out_t[1] * torch.tensor(
                                gc if gc is not None else np.zeros(hs, dtype))).sum()
                        loss.backward()
                        # fastrnn
                        out, cache = cell.forward_train(x, hx)
                        if lstm:
                            assert isinstance(out, tuple) and len(out) == 2
                            for a, b in zip(out, out_t):
                                _close("out", b, a, dtype)
                            call = cell(x, hx)
                            for a, b in zip(out, call):
                                _close("call", b, a, dtype)
                            grads = cell.backward(cache, gh, gc)
                        else:
                            _close("out", out_t, out, dtype)
                            _close("call", cell(x, hx), out, dtype)
                            grads = cell.backward(cache, gh)
                        want = _torch_grads(m, xt, st, lstm)
                        assert list(grads) == list(want)
                        for k, ref in want.items():
                            _close(k, ref, grads[k], dtype)
                        m.zero_grad()


def test_backward_options_and_reuse():
    """need_input_grad=False leaves out "input" (the rest unchanged); num_threads; the
    cache may be used again; the returned state arrays are new (hx not written)."""
    cell = LSTMCell(4, 6, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    hx = tuple(rng.standard_normal((3, 6)).astype(np.float32) for _ in "hc")
    keep = tuple(a.copy() for a in hx)
    (h, c), cache = cell.forward_train(x, hx, num_threads=1)
    assert h is not hx[0] and c is not hx[1]
    np.testing.assert_array_equal(hx[0], keep[0])
    gh = rng.standard_normal((3, 6)).astype(np.float32)
    full = cell.backward(cache, gh)
    again = cell.backward(cache, gh, None, num_threads=1)
    part = cell.backward(cache, gh, need_input_grad=False)
    assert "input" not in part and list(part) == list(full)[1:]
    for k in part:
        np.testing.assert_allclose(part[k], full[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(again[k], full[k])
    # no gradient at all: zeros of the right shapes
    zero = cell.backward(cache)
    assert all(not v.any() for v in zero.values())
    assert zero["input"].shape == (3, 4) and zero["cx"].shape == (3, 6)
    assert cache.nbytes > 0 and "MB" in repr(cache)


# ---------------------------------------------------------------- decoder loop

def _torch_loop(m, lstm, xs, hx, gh_steps, gc_last, dtype):
    """Autograd of sum_t <h_t, gh_t> (+ <c_T, gc_last>) over a loop of cell calls."""
    xt = torch.tensor(xs, requires_grad=True)
    st0 = _torch_state(lstm, hx, xs.shape[1:-1] + (m.hidden_size,), dtype)
    st, loss, outs = st0, 0, []
    for t in range(xs.shape[0]):
        st = m(xt[t], st)
        h = st[0] if lstm else st
        outs.append(tuple(a.detach().numpy() for a in st) if lstm else h.detach().numpy())
        loss = loss + (h * torch.tensor(gh_steps[t])).sum()
    if lstm:
        loss = loss + (st[1] * torch.tensor(gc_last)).sum()
    loss.backward()
    return outs, _torch_grads(m, xt, st0, lstm)


def _torch_grads(m, xt, st, lstm):
    """torch's gradients after loss.backward(), under fastrnn's cell backward names."""
    want = {"input": xt.grad}
    if lstm:
        want["hx"], want["cx"] = st[0].grad, st[1].grad
    else:
        want["hx"] = st.grad
    for n in _names(m):
        want[n] = getattr(m, n).grad
    return want


def _fastrnn_loop(cell, lstm, xs, hx, gh_steps, gc_last):
    """The same loop: forward_train per step, then backward step by step in reverse,
    carrying the state gradients and summing the weight gradients."""
    caches, outs, st = [], [], hx
    for x in xs:
        st, cache = cell.forward_train(x, st)
        caches.append(cache)
        outs.append(st)
    dh, dc = None, (gc_last if lstm else None)
    total, dxs = {}, [None] * len(xs)
    for t in reversed(range(len(xs))):
        dh = gh_steps[t] if dh is None else gh_steps[t] + dh
        g = cell.backward(caches[t], dh, dc) if lstm else cell.backward(caches[t], dh)
        dxs[t], dh, dc = g.pop("input"), g.pop("hx"), g.pop("cx", None)
        for k, v in g.items():
            total[k] = total[k] + v if k in total else v
    grads = {"input": np.stack(dxs), "hx": dh}
    if lstm:
        grads["cx"] = dc
    grads.update(total)
    return outs, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape", ["B3", "B1", "unbatched"])
def test_decoder_loop_gradients_match_torch(kind, shape, dtype):
    """T=6 teacher-forced steps of the cell, a loss on every step's h (and the last c),
    backward step by step: every input, initial-state and summed weight gradient is
    torch's (bias=False too, for B=1)."""
    rng = np.random.default_rng(11)
    lstm, T, I, H = kind == "lstm", 6, 5, 7
    bias = shape != "B1"
    m = _torch_cell(kind, I, H, bias, dtype, seed=2)
    if kind == "rnn_relu":
        with torch.no_grad():           # (a relu state that neither dies nor explodes)
            m.weight_hh.mul_(0.5)
    cell = from_torch_cell(m)
    lead = () if shape == "unbatched" else (3,) if shape == "B3" else (1,)
    xs = rng.standard_normal((T,) + lead + (I,)).astype(dtype)
    hs = lead + (H,)
    hx = (tuple(rng.standard_normal(hs).astype(dtype) for _ in "hc") if lstm
          else rng.standard_normal(hs).astype(dtype))
    if shape == "B3":
        hx = None                       # (zeros: the gradient is still returned)
    gh_steps = rng.standard_normal((T,) + hs).astype(dtype)
    gc_last = rng.standard_normal(hs).astype(dtype) if lstm else None
    outs_t, want = _torch_loop(m, lstm, xs, hx, gh_steps, gc_last, dtype)
    outs_f, got = _fastrnn_loop(cell, lstm, xs, hx, gh_steps, gc_last)
    for a, b in zip(outs_t, outs_f):
        if lstm:
            _close("h", a[0], b[0], dtype)
            _close("c", a[1], b[1], dtype)
        else:
            _close("h", a, b, dtype)
    assert list(got) == list(want)
    for k, ref in want.items():
        _close(k, ref, got[k], dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_decoder_loop_equals_the_inner_layer_over_the_sequence(kind):
    """With teacher forcing the whole input is known: cell.layer's forward_train /
    backward over the sequence gives the step-by-step loop's outputs and gradients (what
    the README says)."""
    rng = np.random.default_rng(3)
    lstm, T, I, H, B = kind == "lstm", 5, 3, 4, 2
    cell = (LSTMCell if lstm else GRUCell)(I, H, dtype="float64", seed=3)
    xs = rng.standard_normal((T, B, I))
    hx = (rng.standard_normal((B, H)), rng.standard_normal((B, H))) if lstm \
        else rng.standard_normal((B, H))
    gh_steps = rng.standard_normal((T, B, H))
    gc_last = rng.standard_normal((B, H)) if lstm else None
    outs, got = _fastrnn_loop(cell, lstm, xs, hx, gh_steps, gc_last)
    h0 = tuple(a[None] for a in hx) if lstm else hx[None]
    out, _, cache = cell.layer.forward_train(xs, h0)
    np.testing.assert_allclose(out, np.stack([o[0] if lstm else o for o in outs]),
                               rtol=1e-12, atol=1e-13)
    want = cell.layer.backward(cache, gh_steps, (None, gc_last[None]) if lstm else None)
    assert set(got) == {"input", "hx", "cx"} - ({"cx"} if not lstm else set()) | set(
        k[:-3] for k in want if k.endswith("_l0"))
    np.testing.assert_allclose(got["input"], want["input"], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got["hx"], want["h0"][0], rtol=1e-11, atol=1e-12)
    if lstm:
        np.testing.assert_allclose(got["cx"], want["c0"][0], rtol=1e-11, atol=1e-12)
    for k in cell.parameters():
        np.testing.assert_allclose(got[k], want[k + "_l0"], rtol=1e-11, atol=1e-12,
                                   err_msg=k)


# ---------------------------------------------------------------- optimizers

@pytest.mark.parametrize("given", ["cell", "params"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_training_steps_match_torch_optim(kind, opt, given):
    """Three training steps of a decoder loop (forward_train, backward step by step,
    summed grads, opt.step) follow torch's cell under torch.optim.SGD / Adam (float64);
    the optimizer takes the cell or its parameters(), and skips "input", "hx", "cx"."""
    rng = np.random.default_rng(5)
    lstm, T, I, H, B = kind == "lstm", 4, 3, 5, 2
    m = _torch_cell(kind, I, H, True, np.float64, seed=4)
    cell = from_torch_cell(m)
    if opt == "sgd":
        ours = train.SGD(cell if given == "cell" else cell.parameters(), lr=0.05,
                         momentum=0.9)
        theirs = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    else:
        ours = train.Adam(cell if given == "cell" else cell.parameters(), lr=0.01)
        theirs = torch.optim.Adam(m.parameters(), lr=0.01)
    for step in range(3):
        xs = rng.standard_normal((T, B, I))
        gh_steps = rng.standard_normal((T, B, H))
        gc_last = rng.standard_normal((B, H)) if lstm else None
        theirs.zero_grad()
        _torch_loop(m, lstm, xs, None, gh_steps, gc_last, np.float64)
        theirs.step()
        _, grads = _fastrnn_loop(cell, lstm, xs, None, gh_steps, gc_last)
        assert "hx" in grads
        if step == 2:
            train.clip_grad_norm(grads, 1e9)        # (state gradients do not count)
        ours.step(grads)
    for n in _names(m):
        np.testing.assert_allclose(cell.parameters()[n], getattr(m, n).detach().numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=n)
    # the cell was re-packed: its calls use the new weights
    x = rng.standard_normal((B, I))
    with torch.no_grad():
        ref = m(torch.tensor(x))
    got = cell(x)
    got, ref = (got[0], ref[0]) if lstm else (got, ref)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-10, atol=1e-12)


def test_clip_grad_norm_ignores_state_gradients():
    cell = GRUCell(3, 4, seed=0)
    _, cache = cell.forward_train(np.ones((2, 3), np.float32))
    grads = cell.backward(cache, np.ones((2, 4), np.float32))
    weights = [k for k in grads if k.startswith(("weight", "bias"))]
    norm = float(np.sqrt(sum(float((grads[k].astype(np.float64) ** 2).sum()) for k in weights)))
    hx = grads["hx"].copy()
    assert train.clip_grad_norm(grads, norm / 2) == pytest.approx(norm, rel=1e-6)
    np.testing.assert_array_equal(grads["hx"], hx)


# ---------------------------------------------------------------- errors

def test_backward_errors():
    cell = LSTMCell(4, 6, seed=0)
    other = LSTMCell(4, 6, seed=0)
    gru = GRUCell(4, 6, seed=0)
    x = np.ones((3, 4), np.float32)
    _, cache = cell.forward_train(x)
    g = np.ones((3, 6), np.float32)
    # not a cell's cache
    with pytest.raises(TypeError, match="cache returned by forward_train"):
        cell.backward(None, g)
    layer_cache = cell.layer.forward_train(x[None])[2]
    with pytest.raises(TypeError, match="a layer's cache"):
        cell.backward(layer_cache, g)
    # another cell's (the same class and weights, or another class)
    with pytest.raises(ValueError, match="made by another cell"):
        other.backward(cache, g)
    with pytest.raises(ValueError, match="made by another cell"):
        gru.backward(cache, g)
    # wrong gradient shapes / structure name the argument
    with pytest.raises(ValueError, match=r"grad_h must have shape \(3, 6\).*got \(3, 5\)"):
        cell.backward(cache, np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"grad_c must have shape \(3, 6\), the shape of c', "
                                         r"got \(6,\)"):
        cell.backward(cache, g, np.ones(6, np.float32))
    with pytest.raises(ValueError, match=r"grad_h must have shape \(3, 6\)"):
        cell.backward(cache, np.ones((1, 3, 6), np.float32))
    with pytest.raises(TypeError, match="grad_c"):
        cell.backward(cache, (g, g))
    _, ucache = cell.forward_train(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"grad_h must have shape \(6,\), the shape of h' "
                                         r"\(the input is unbatched\), got \(1, 6\)"):
        cell.backward(ucache, np.ones((1, 6), np.float32))
    _, gcache = gru.forward_train(x)
    with pytest.raises(ValueError, match=r"GRUCell: grad_h must have shape \(3, 6\)"):
        gru.backward(gcache, np.ones((6, 3), np.float32))
    with pytest.raises(TypeError, match="grad_h"):
        gru.backward(gcache, (g, g))
    with pytest.raises(TypeError):
        gru.backward(gcache, g, g)              # (no grad_c: one state)
    # after the weights changed: load_state_dict, an optimizer step, an in-place edit
    # announced, to()
    cell.backward(cache, g)
    for change in ("load", "step", "mark", "to"):
        _, cache = cell.forward_train(x)
        if change == "load":
            cell.load_state_dict(cell.state_dict())
        elif change == "step":
            train.SGD(cell, lr=0.0).step({"weight_ih": np.zeros((24, 4), np.float32)})
        elif change == "mark":
            cell.parameters()["weight_hh"][0] += 1
            cell.mark_weights_changed()
        else:
            cell.double()
        with pytest.raises(RuntimeError, match="the cell's weights changed since forward_train"):
            cell.backward(cache, g)


def test_forward_train_argument_errors_are_the_calls():
    cell = LSTMCell(4, 6, seed=0)
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="input has 5 features"):
        cell.forward_train(np.ones((3, 5), np.float32))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        cell.forward_train(x, np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape \(3, 6\)"):
        cell.forward_train(x, (np.ones((3, 6)), np.ones((2, 6))))
    with pytest.raises(TypeError, match="only LSTMCell takes"):
        RNNCell(4, 6).forward_train(x, (np.ones((3, 6)), np.ones((3, 6))))


# ---------------------------------------------------------------- save / load / convert

CELLS = [lambda: LSTMCell(6, 16, seed=0), lambda: GRUCell(6, 5, bias=False, dtype="float64", seed=1),
         lambda: RNNCell(6, 16, nonlinearity="relu", seed=2)]


@pytest.mark.parametrize("make", CELLS)
def test_save_and_load_back(make, tmp_path):
    cell = make()
    p = tmp_path / "cell.safetensors"
    cell.save(p)
    x = np.random.default_rng(0).standard_normal((3, 6))
    for back in (fastrnn.load(p), fio.load_fastrnn_safetensors(p), fio.load(p),
                 fastrnn.layer_from_config(cell.get_config(), cell.state_dict()),
                 cell_from_config(cell.get_config(), cell.state_dict())):
        assert type(back) is type(cell) and repr(back) == repr(cell)
        assert back.get_config() == cell.get_config()
        sd = back.state_dict()
        assert list(sd) == list(cell.state_dict())
        for k, v in cell.state_dict().items():
            assert sd[k].dtype == v.dtype
            np.testing.assert_array_equal(sd[k], v)
        a, b = cell(x), back(x)
        np.testing.assert_array_equal(a[0] if isinstance(a, tuple) else a,
                                      b[0] if isinstance(b, tuple) else b)
    # without weights: the architecture, torch's initialisation
    fresh = fastrnn.layer_from_config(cell.get_config())
    assert type(fresh) is type(cell) and fresh.get_config() == cell.get_config()


def test_bad_cell_configs_and_files(tmp_path):
    cell = GRUCell(3, 4, seed=0)
    cfg, sd = cell.get_config(), cell.state_dict()
    # a config whose sizes are not the weights': an error, nothing huge allocated
    with pytest.raises(ValueError, match=r"config and weights do not fit: weight_ih has shape "
                                         r"\(12, 3\), config says \(3298534883328, 3\)"):
        fastrnn.layer_from_config(dict(cfg, hidden_size=1 << 40), sd)
    with pytest.raises(ValueError, match="bad config for GRUCell"):
        fastrnn.layer_from_config(dict(cfg, num_layers=2), sd)
    with pytest.raises(KeyError, match="missing keys"):
        fastrnn.layer_from_config(cfg, {k: v for k, v in sd.items() if k != "bias_hh"})
    with pytest.raises(ValueError, match="unknown layer class 'LSTMCel'.*'LSTMCell'"):
        fastrnn.layer_from_config(dict(cfg, class_name="LSTMCel"))
    # a file whose config lies about the sizes
    from fastrnn.io.safetensors import write_safetensors
    import json
    p = tmp_path / "bad.safetensors"
    write_safetensors(p, sd, {"fastrnn": json.dumps(dict(cfg, input_size=1 << 40))})
    with pytest.raises(LoadError, match=r"config and weights do not fit.*weight_ih has shape"):
        fastrnn.load(p)


@pytest.mark.parametrize("make", [lambda: LSTMCell(3, 4, seed=0), lambda: GRUCell(3, 4, seed=0),
                                  lambda: RNNCell(3, 4, seed=0)])
def test_cell_config_sizes_may_be_numpy_ints(make):
    cell = make()
    cfg = dict(cell.get_config(), input_size=np.int32(3), hidden_size=np.int64(4))
    for build in (fastrnn.layer_from_config, cell_from_config):
        clone = build(cfg, cell.state_dict())
        assert type(clone) is type(cell) and clone.get_config() == cell.get_config()
        assert type(clone.get_config()["hidden_size"]) is int
    # (sizes computed as Python ints: 4 gates * np.uint8(64) would wrap to 0)
    wide = type(cell)(3, 64, seed=0)
    cfg8 = dict(wide.get_config(), hidden_size=np.uint8(64))
    assert cell_from_config(cfg8, wide.state_dict()).get_config() == wide.get_config()
    with pytest.raises(ValueError, match="config hidden_size must be an int"):
        cell_from_config(dict(cfg, hidden_size=np.True_), cell.state_dict())


def test_cell_backward_need_input_grad_is_a_flag():
    for cell in (LSTMCell(4, 6, seed=0), GRUCell(4, 6, seed=0)):
        _, cache = cell.forward_train(np.ones((3, 4), np.float32))
        g = np.ones((3, 6), np.float32)
        for bad in ("no", 0.5, None):
            with pytest.raises(TypeError, match="need_input_grad must be True or False"):
                cell.backward(cache, g, need_input_grad=bad)
        assert "input" in cell.backward(cache, g, need_input_grad=1)
        assert "input" not in cell.backward(cache, g, need_input_grad=np.False_)


def test_cli_convert_and_inspect_a_torch_cell(tmp_path, capsys):
    from fastrnn.cli import main
    torch.manual_seed(0)
    tc = torch.nn.RNNCell(3, 4, nonlinearity="tanh")
    src, dst = str(tmp_path / "cell.pt"), str(tmp_path / "cell.safetensors")
    torch.save({"decoder.cell." + k: v for k, v in tc.state_dict().items()}, src)
    assert main(["convert", src, dst]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "wrote" in out and "RNNCell(3, 4)" in out
    back = fastrnn.load(dst)
    assert isinstance(back, RNNCell)
    for k, v in tc.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v.numpy())
    assert main(["convert", src, dst, "--force", "--dtype", "float64"]) == 0
    back = fastrnn.load(dst)
    assert isinstance(back, RNNCell) and back.dtype == np.float64
    capsys.readouterr()
    assert main(["inspect", dst]) == 0
    out = capsys.readouterr().out
    assert "recurrent cell" in out and "RNNCell(3, 4, dtype=float64)" in out
    assert "weight_hh" in out and "parameters: 36" in out


# ---------------------------------------------------------------- audit regressions

@pytest.mark.parametrize("cls", [LSTMCell, GRUCell, RNNCell])
def test_cache_does_not_alias_the_callers_input(cls):
    """A decoder loop that refills one input buffer (or tensor) each step: the cache
    keeps its own copy, so an earlier step's weight gradients are unchanged (they were
    silently computed from the refilled buffer)."""
    cell = cls(3, 4, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    g = rng.standard_normal((2, 4)).astype(np.float32)
    _, cache = cell.forward_train(x.copy())
    want = cell.backward(cache, g)
    for make in (lambda a: a.copy(), lambda a: a[0].copy(), torch.tensor):
        buf = make(x)
        _, cache = cell.forward_train(buf)
        buf[...] = 5                        # refilled for the next step
        got = cell.backward(cache, g if buf.ndim == 2 else g[0])
        ref = want if buf.ndim == 2 else None
        if ref is None:                     # (unbatched: row 0's own gradients)
            _, c0 = cell.forward_train(x[0].copy())
            ref = cell.backward(c0, g[0])
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_cell_config_takes_only_the_public_arguments(tmp_path):
    """A config (a file's) naming the private _layer_kw gave a cell whose repr and
    get_config were a plain LSTMCell's / GRUCell's but whose inner layer clipped, used
    other activations or reset_after=False: now a clear error; weights that are not a
    mapping a TypeError (was an AttributeError on 'get')."""
    import json
    from fastrnn.io.safetensors import write_safetensors
    for cell, kw in ((LSTMCell(3, 4, seed=0), {"clip": 0.01}),
                     (LSTMCell(3, 4, seed=0), {"activations": ["Relu", "Relu", "Relu"]}),
                     (GRUCell(3, 4, seed=0), {"reset_after": False})):
        cfg, sd = dict(cell.get_config(), _layer_kw=kw), cell.state_dict()
        with pytest.raises(ValueError, match=r"bad config for \w+Cell: unknown key.*_layer_kw"):
            fastrnn.layer_from_config(cfg, sd)
        with pytest.raises(ValueError, match="unknown key"):
            cell_from_config(cfg)
        p = tmp_path / "evil.safetensors"
        write_safetensors(p, sd, {"fastrnn": json.dumps(cfg)})
        with pytest.raises(LoadError, match="unknown key"):
            fastrnn.load(p)
    with pytest.raises(ValueError, match=r"unknown key.*nonlinearity"):
        fastrnn.layer_from_config(dict(GRUCell(3, 4).get_config(), nonlinearity="relu"))
    r = RNNCell(3, 4, nonlinearity="relu", seed=0)
    back = fastrnn.layer_from_config(dict(r.get_config(), num_threads=1, seed=0), r.state_dict())
    assert back.nonlinearity == "relu" and back.num_threads == 1
    with pytest.raises(TypeError, match="weights must be a mapping"):
        fastrnn.layer_from_config(r.get_config(), [1, 2])
