"""fastrnn.train.SGD / Adam against torch.optim (same formulas, a few steps), and a short
training run where fastrnn and torch follow the same trajectory."""
import numpy as np
import pytest

import fastrnn
from fastrnn import train

torch = pytest.importorskip("torch")


def _run_both(make_ours, make_torch, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = make_ours(params)
    theirs = make_torch(list(tparams.values()))
    for _ in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        ours.step(grads)
        theirs.step()
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12,
                                   atol=1e-13, err_msg=k)


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, weight_decay=0.1),
])
def test_sgd_matches_torch(kw):
    _run_both(lambda p: train.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw))


@pytest.mark.parametrize("kw", [
    dict(lr=1e-2),
    dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
])
def test_adam_matches_torch(kw):
    _run_both(lambda p: train.Adam(p, **kw), lambda p: torch.optim.Adam(p, **kw), steps=7)


def test_adamw_matches_torch():
    _run_both(lambda p: train.Adam(p, lr=1e-2, weight_decay=0.1, decoupled=True),
              lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), steps=7)
    # AdamW's own default decay is torch's (0.01), and its options
    _run_both(lambda p: train.AdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2),
              steps=7)


@pytest.mark.parametrize("ours,theirs", [
    (lambda p: train.Adam(p, lr=3e-2, amsgrad=True),
     lambda p: torch.optim.Adam(p, lr=3e-2, amsgrad=True)),
    (lambda p: train.AdamW(p, lr=3e-2, amsgrad=True, maximize=True),
     lambda p: torch.optim.AdamW(p, lr=3e-2, amsgrad=True, maximize=True)),
    (lambda p: train.SGD(p, lr=0.05, momentum=0.9, maximize=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, maximize=True)),
], ids=["adam_amsgrad", "adamw_amsgrad_maximize", "sgd_maximize"])
def test_optimizer_options_match_torch(ours, theirs):
    _run_both(ours, theirs, steps=9)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, float("inf")])
def test_clip_grad_norm_types_and_value_match_torch(norm_type):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5) * 3,
             "input": rng.standard_normal(2) * 100}
    ts = [torch.tensor(grads[k].copy(), requires_grad=True) for k in ("a", "b")]
    for t, k in zip(ts, ("a", "b")):
        t.grad = torch.tensor(grads[k].copy())
    total = train.clip_grad_norm(grads, 0.5, norm_type=norm_type)
    ref = torch.nn.utils.clip_grad_norm_(ts, 0.5, norm_type=norm_type)
    assert total == pytest.approx(float(ref), rel=1e-12)
    for t, k in zip(ts, ("a", "b")):
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-12)
    for t, k in zip(ts, ("a", "b")):
        t.grad = torch.tensor(grads[k] * 10)
        grads[k] = grads[k] * 10
    train.clip_grad_value(grads, 0.3)
    torch.nn.utils.clip_grad_value_(ts, 0.3)
    for t, k in zip(ts, ("a", "b")):
        np.testing.assert_array_equal(grads[k], t.grad.numpy())
    assert np.abs(grads["input"]).max() > 1      # (not a weight: left alone)


def _training_steps(layer, opt, data, steps):
    for x, y in data[:steps]:
        out, _, cache = layer.forward_train(x)
        g = layer.backward(cache, 2 * (out - y) / out.size)
        opt.step(g)


@pytest.mark.parametrize("make", [lambda l: train.Adam(l, lr=1e-2, amsgrad=True),
                                  lambda l: train.SGD(l.parameters(), lr=0.1, momentum=0.9)],
                         ids=["adam_layer", "sgd_params_dict"])
def test_resume_from_state_dicts_follows_the_same_trajectory(make):
    import pickle
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))) for _ in range(6)]
    whole = fastrnn.GRU(3, 4, seed=1, dtype="float64")
    _training_steps(whole, make(whole), data, 6)
    first = fastrnn.GRU(3, 4, seed=1, dtype="float64")
    opt = make(first)
    _training_steps(first, opt, data, 3)
    saved = pickle.dumps((first.state_dict(), opt.state_dict()))
    weights, opt_state = pickle.loads(saved)
    again = fastrnn.GRU(3, 4, seed=7, dtype="float64")
    again.load_state_dict(weights)
    opt2 = make(again)
    opt2.load_state_dict(opt_state)
    _training_steps(again, opt2, data[3:], 3)
    for k, v in whole.state_dict().items():
        np.testing.assert_allclose(again.state_dict()[k], v, rtol=1e-13, atol=1e-14, err_msg=k)
    with pytest.raises(ValueError, match="hyperparameters"):
        opt2.load_state_dict({"state": {}, "hyper": {"lr": 1.0}})
    bad = opt.state_dict()
    name = next(iter(bad["state"]))
    bad["state"]["nope"] = bad["state"].pop(name)
    with pytest.raises(KeyError, match="nope"):
        opt2.load_state_dict(bad)


def test_pickled_layer_and_optimizer_keep_training_after_a_reload():
    """A (layer, optimizer) pair restored from a pickle: the optimizer updates the
    layer's current weights (it kept a dict of its own, which a later load_state_dict
    left behind: steps changed nothing)."""
    import pickle
    layer = fastrnn.LSTM(3, 4, seed=0)
    opt = train.Adam(layer, lr=1e-2)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    layer2, opt2 = pickle.loads(pickle.dumps((layer, opt)))
    layer2.load_state_dict(layer.state_dict())
    before = layer2.state_dict()
    out, _, cache = layer2.forward_train(x)
    opt2.step(layer2.backward(cache, np.ones_like(out)))
    assert np.abs(layer2.state_dict()["weight_hh_l0"] - before["weight_hh_l0"]).max() > 1e-3


def test_step_refuses_unknown_gradient_names():
    layer = fastrnn.GRU(3, 4, seed=0)
    opt = train.SGD(layer, lr=0.1)
    before = layer.state_dict()
    grads = {"rnn." + k: np.ones_like(v) for k, v in before.items()}
    grads["weight_ih_l0"] = np.ones_like(before["weight_ih_l0"])
    with pytest.raises(KeyError, match="rnn.weight_ih_l0"):
        opt.step(grads)
    for k, v in layer.state_dict().items():     # nothing changed
        np.testing.assert_array_equal(v, before[k])
    opt.step({"weight_ih_l0": np.ones_like(before["weight_ih_l0"]), "input": np.ones(3),
              "h0": np.ones(3)})


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_training_takes_read_only_states_and_gradients(cell):
    layer = getattr(fastrnn, cell)(3, 4, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((1, 2, 4)).astype(np.float32)
    hx = (h0, h0 * 0.5) if cell == "LSTM" else h0
    gy = rng.standard_normal((5, 2, 4)).astype(np.float32)
    ref_out, _, cache = layer.forward_train(x, hx)
    ref = layer.backward(cache, gy)
    for a in (h0, gy, x):
        a.flags.writeable = False
    hx = (h0, (h0 * 0.5).copy()) if cell == "LSTM" else h0
    if cell == "LSTM":
        hx[1].flags.writeable = False
    out, _, cache = layer.forward_train(x, hx)
    got = layer.backward(cache, gy)
    np.testing.assert_array_equal(out, ref_out)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_bad_arguments():
    with pytest.raises(TypeError):
        train.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError):
        train.SGD({"a": np.zeros(3)}, lr=-1)
    with pytest.raises(ValueError):
        train.SGD({"a": np.zeros(3)}, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        train.Adam({"a": np.zeros(3)}, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="shape"):
        train.SGD({"a": np.zeros(3)}, lr=0.1).step({"a": np.zeros(4)})


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_training_trajectory_matches_torch(kind):
    """Three Adam steps on a 2-layer bidirectional layer: fastrnn (fp64) and torch
    autograd + torch.optim (fp64) end with the same weights."""
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(3, 5, num_layers=2, bidirectional=True).double()
    layer = fastrnn.from_torch(m)
    opt_t = torch.optim.Adam(m.parameters(), lr=1e-2)
    opt = train.Adam(layer, lr=1e-2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3))
    target = rng.standard_normal((6, 4, 10))
    for _ in range(3):
        opt_t.zero_grad()
        y, _ = m(torch.tensor(x))
        loss_t = ((y - torch.tensor(target)) ** 2).mean()
        loss_t.backward()
        opt_t.step()
        out, _, cache = layer.forward_train(x)
        grads = layer.backward(cache, 2 * (out - target) / out.size)
        opt.step(grads)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(layer.parameters()[name], p.detach().numpy(), rtol=0,
                                   atol=1e-10, err_msg=name)
    # the packed copies were refreshed: inference sees the new weights
    np.testing.assert_allclose(layer(x)[0], m(torch.tensor(x))[0].detach().numpy(), atol=1e-10)


def test_optimizer_on_a_layers_parameters_dict_repacks_it():
    """SGD(layer.parameters()) (torch's idiom) steps the layer's own arrays and re-packs
    it, as SGD(layer) does: inference calls used the old weights after such steps."""
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    for B in (1, 4):
        layer = fastrnn.GRU(3, 8, seed=0)
        layer(x[:, :B])                                   # (packed before the step)
        opt = train.SGD(layer.parameters(), lr=0.5)
        out, _, cache = train.forward_train(layer, x[:, :B])
        opt.step(train.backward(layer, cache, np.ones_like(out)))
        fresh = fastrnn.GRU(3, 8, seed=0)
        fresh.load_state_dict(layer.state_dict())
        np.testing.assert_array_equal(layer(x[:, :B])[0], fresh(x[:, :B])[0])
        with pytest.raises(RuntimeError, match="changed since forward_train"):
            train.backward(layer, cache, np.ones_like(out))
    plain = {"w": np.ones(3)}                             # (any dict still works)
    train.SGD(plain, lr=1.0).step({"w": np.ones(3)})
    np.testing.assert_array_equal(plain["w"], np.zeros(3))


def test_cache_refused_after_an_announced_in_place_edit():
    """parameters() edited in place then mark_weights_changed() (the documented way):
    a cache from before is refused (it mixed old activations with new weights)."""
    layer = fastrnn.LSTM(4, 6, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    out, _, cache = train.forward_train(layer, x)
    train.backward(layer, cache, np.ones_like(out))       # (fine: unchanged)
    layer.parameters()["weight_hh_l0"] += 0.5
    layer.mark_weights_changed()
    with pytest.raises(RuntimeError, match="changed since forward_train"):
        train.backward(layer, cache, np.ones_like(out))


def test_misuse_gives_clear_errors():
    layer = fastrnn.GRU(3, 4, seed=0)
    out, _, cache = train.forward_train(layer, np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="tuple .* is LSTM's"):
        train.backward(layer, cache, None, (np.ones((1, 2, 4), np.float32), None))
    opt = train.SGD(layer, lr=0.1)
    for bad in (None, [np.ones(3)]):
        with pytest.raises(TypeError, match="mapping of names to arrays"):
            opt.step(bad)


def test_state_saved_with_np_savez_resumes_and_bad_values_are_refused():
    """An optimizer state through np.savez / np.load (the nested dict as a 0-d object
    array, or flattened: the step count as a 0-d array) resumes the same trajectory (it
    was a shape error / "iteration over a 0-d array"); load_state_dict checks the
    hyperparameters as the constructor does (a negative lr, Adam betas of 1.5 were
    taken), and NaN is refused as torch refuses it."""
    import io
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))) for _ in range(4)]
    whole = fastrnn.GRU(3, 4, seed=1, dtype="float64")
    _training_steps(whole, train.Adam(whole, lr=1e-2), data, 4)
    for how in ("nested", "flat"):
        first = fastrnn.GRU(3, 4, seed=1, dtype="float64")
        opt = train.Adam(first, lr=1e-2)
        _training_steps(first, opt, data, 2)
        sd, buf = opt.state_dict(), io.BytesIO()
        if how == "nested":
            np.savez(buf, **sd)
            buf.seek(0)
            with np.load(buf, allow_pickle=True) as z:
                back = {"state": z["state"], "hyper": z["hyper"]}
        else:
            np.savez(buf, **{f"{n}/{k}": v for n, st in sd["state"].items()
                             for k, v in st.items()})
            buf.seek(0)
            state = {}
            with np.load(buf) as z:
                for key in z.files:
                    n, k = key.split("/")
                    state.setdefault(n, {})[k] = z[key]
            back = {"state": state, "hyper": sd["hyper"]}
        opt2 = train.Adam(first, lr=0.5)
        opt2.load_state_dict(back)
        assert all(type(st["step"]) is int for st in opt2.state.values())
        _training_steps(first, opt2, data[2:], 2)
        for k, v in whole.state_dict().items():
            np.testing.assert_allclose(first.state_dict()[k], v, rtol=1e-13, err_msg=(how, k))
    p = {"a": np.zeros(3)}
    for make, hyper, what in [
            (lambda: train.SGD(p, lr=0.1), dict(lr=-5.0), "lr"),
            (lambda: train.SGD(p, lr=0.1), dict(nesterov=True), "nesterov"),
            (lambda: train.Adam(p), dict(betas=(1.5, 0.9)), "betas"),
            (lambda: train.Adam(p), dict(eps=-1.0), "eps"),
            (lambda: train.Adam(p), dict(weight_decay=float("nan")), "weight_decay")]:
        opt = make()
        sd = opt.state_dict()
        sd["hyper"].update(hyper)
        before = dict(opt.__dict__)
        with pytest.raises(ValueError, match=what):
            opt.load_state_dict(sd)
        assert opt.__dict__ == before
    for kw in (dict(eps=float("nan")), dict(weight_decay=float("nan")), dict(lr=float("nan"))):
        with pytest.raises(ValueError):
            train.Adam(p, **kw)
    opt = train.Adam(p)
    opt.step({"a": np.ones(3)})
    sd = opt.state_dict()
    sd["state"]["a"]["step"] = 1.5
    with pytest.raises(ValueError, match="count of steps"):
        opt.load_state_dict(sd)


def test_clipping_integer_gradients_is_a_type_error():
    """An integer gradient was scaled to zeros by clip_grad_norm (the factor cast to int)
    and gave numpy's casting error in clip_grad_value."""
    for clip in (lambda g: train.clip_grad_norm(g, 1.0), lambda g: train.clip_grad_value(g, 1.0)):
        g = {"w": np.array([3, 4])}
        with pytest.raises(TypeError, match="'w' must be a floating-point"):
            clip(g)
        np.testing.assert_array_equal(g["w"], [3, 4])
    g = {"w": np.array([3.0, 4.0])}
    assert train.clip_grad_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(g["w"], [0.6, 0.8], rtol=1e-5)


def test_a_nan_step_is_written_and_its_state_dict_refused_at_load():
    """As torch's, a step writes what NaN gradients give; fastrnn then refuses that
    state dict at load (torch loads it), naming the weight, and keeps the old one."""
    from fastrnn.train import Adam
    layer = fastrnn.GRU(3, 4, seed=0)
    Adam(layer, lr=0.1).step({k: np.full_like(v, np.nan)
                              for k, v in layer.parameters().items()})
    assert np.isnan(layer(np.ones((2, 1, 3), np.float32))[0]).all()
    fresh = fastrnn.GRU(3, 4, seed=1)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match="weight_ih_l0.*NaN or infinite"):
        fresh.load_state_dict(layer.state_dict())
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
