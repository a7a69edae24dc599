"""A layer keeps its calls' decisions per shape (``RNNBase._plan``): the kept plan must
be made again whenever something it was made from changes (the packing, the knobs of
``fastrnn.layers``, any ``_set_*`` hook of the kernels, the options not in the
packing), and the kept plans stay few."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _backward, _kernels, layers

# module-level ints of fastrnn.layers that no plan reads (a new knob a plan reads must
# go into layers._plan_knobs; this list says which ones may stay out, and why)
NOT_PLAN_KNOBS = {
    "_MASK_AS_LENGTHS",           # read before the plan (whether a mask becomes lengths)
    "_FUSED_LSTM_CHUNK_BYTES",    # read by the LSTM route's run, not its choice
    "_PACKED", "_PAIR", "_ROUTED", "_PLANS_KEPT",    # the plans' own constants
}


@pytest.fixture(autouse=True)
def never_idle(monkeypatch):
    """(A call after a pause makes a plan it does not keep: the pause rule.)"""
    from fastrnn import _threads
    monkeypatch.setattr(_threads, "IDLE_SINGLE_S", -1.0)


def _spy(monkeypatch):
    calls = []
    real = _kernels.run_layer

    def spy(*a):
        calls.append(a)
        return real(*a)
    monkeypatch.setattr(_kernels, "run_layer", spy)
    return calls


def test_every_int_knob_of_layers_is_in_the_plan_knobs(monkeypatch):
    names = [n for n, v in vars(layers).items()
             if n.startswith("_") and n[1:2].isupper() and n.upper() == n
             and (type(v) is int or n == "_L2")]
    assert "_SMALL_CALL_MACS" in names and "_L2" in names
    for n in names:
        if n in NOT_PLAN_KNOBS:
            continue
        before = layers._plan_knobs()
        monkeypatch.setattr(layers, n, (getattr(layers, n) or 0) + 1)
        assert layers._plan_knobs() != before, n
        monkeypatch.undo()


@pytest.mark.parametrize("mod", [_kernels, _backward])
def test_every_hook_changes_the_generation(mod):
    hooks = [n for n in dir(mod) if n.startswith("_set_") and n != "_set_blas_local_setter"]
    assert len(hooks) >= 8
    for n in hooks:
        g = _kernels.hooks_generation()
        old = getattr(mod, n)(0)
        try:
            assert _kernels.hooks_generation() > g, n
        finally:
            getattr(mod, n)(old)
        assert old is not None, n       # (every hook returns what it replaced)


def test_kept_plan_is_reused_and_remade(monkeypatch):
    rng = np.random.default_rng(0)
    layer = fastrnn.SimpleRNN(64, 64, seed=1, num_threads=2)
    x = rng.standard_normal((6, 32, 64)).astype(np.float32)
    calls = _spy(monkeypatch)
    want = layer(x)[0]
    plans = layer._plans
    assert len(plans[2]) == 1
    # the same shape again: the same plan object
    plan = next(iter(plans[2].values()))
    np.testing.assert_array_equal(layer(x)[0], want)
    assert layer._plans is plans and next(iter(plans[2].values())) is plan
    wide = _kernels.choose_path(0, 32, 64, 0, 1, 2) == "wide"
    assert (calls[-1][-1] is not None) == wide

    # a hook: the path follows it at once
    old = _kernels._set_path(1)
    try:
        layer(x)
        assert calls[-1][-1] is None
    finally:
        _kernels._set_path(old)
    layer(x)
    assert (calls[-1][-1] is not None) == wide

    # a knob of fastrnn.layers: the small-call rule
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", 1 << 40)
    layer(x)
    assert calls[-1][22] == 1
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", -1)
    layer(x)
    assert calls[-1][22] == 2

    # an option outside the packing: clip (which the LSTM route does not do)
    layer.clip = 0.5
    got = layer(x)[0]
    assert layer.__dict__["_plans"][1][1] == 0.5        # plans made for it
    assert not np.array_equal(got, want)
    layer.clip = None
    np.testing.assert_array_equal(layer(x)[0], want)

    # new weights: a new packing, a new plan
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * 0.5
    layer.load_state_dict(sd)
    pw = calls[-1][2]
    other = layer(x)[0]
    assert calls[-1][2] is not pw
    assert not np.allclose(other, want) and not np.allclose(got, want)


def test_call_after_a_pause_keeps_no_plan(monkeypatch):
    from fastrnn import _threads
    monkeypatch.setattr(_threads, "IDLE_SINGLE_S", 0.0)
    monkeypatch.setattr(_threads, "_last_end", [-1e9])
    layer = fastrnn.GRU(3, 5, seed=0)
    layer(np.ones((4, 1, 3), np.float32))
    assert "_plans" not in vars(layer)


def test_kept_plans_stay_few():
    layer = fastrnn.GRU(3, 5, seed=0)
    for T in range(1, 3 * layers._PLANS_KEPT):
        layer(np.ones((T, 2, 3), np.float32))
        assert len(layer._plans[2]) <= layers._PLANS_KEPT


def test_pickled_layer_leaves_its_plans():
    import pickle
    layer = fastrnn.LSTM(3, 5, seed=0)
    x = np.ones((4, 2, 3), np.float32)
    want = layer(x)[0]
    assert layer._plans
    copy = pickle.loads(pickle.dumps(layer))
    assert "_plans" not in vars(copy)
    np.testing.assert_array_equal(copy(x)[0], want)
