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
    "_MASK_BYTES_PY",             # read before the plan (how a mask is checked)
    "_SPAN_MIN_MACS",             # read before the plan (whether spans are packed)
    "_LENGTHS_ON_MASK_MIN_B",     # read before the plan (whether lengths are a mask)
    "_FUSED_LSTM_CHUNK_BYTES",    # read by the LSTM route's run, not its choice
    "_PACKED", "_PAIR", "_ROUTED", "_PLANS_KEPT",    # the plans' own constants
    "_DENSE_RUN",                 # read by the lean call, beside its plan
    "_STEP_THREADS_MACS",         # streaming steps' plans (made per packing and threads)
}


@pytest.fixture(autouse=True)
def never_idle(monkeypatch):
    """(A call after a pause makes a plan it does not keep: the pause rule.  Masks of
    spans packed at any size: these calls are small; the size rule has its own test in
    test_varlen.py.)"""
    from fastrnn import _threads
    monkeypatch.setattr(_threads, "IDLE_SINGLE_S", -1.0)
    monkeypatch.setattr(layers, "_SPAN_MIN_MACS", 0)
    monkeypatch.setattr(layers, "_SPAN_MIN_SKIP", 0.0)
    monkeypatch.setattr(layers, "_SPAN_MIN_SKIP_NARROW", 0.0)


def _spy(monkeypatch):
    calls = []
    real = _kernels.run_layer
    monkeypatch.setattr(layers, "_DENSE_RUN", 0)     # (every call through run_layer)

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
    hooks = [n for n in dir(mod) if n.startswith("_set_")
             and n not in ("_set_blas_local_setter", "_set_blas_hooks")]
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


def _call_inputs(layer, rng, B, T, bf, with_state):
    """An input (6 features), an initial h and the hx of a call (None without a state)."""
    x = rng.standard_normal((B, T, 6) if bf else (T, B, 6)).astype(layer.dtype)
    LD = layer.num_layers * layer.num_directions
    h = rng.standard_normal((LD, B, layer.proj_size or layer.hidden_size)).astype(layer.dtype)
    hx = None
    if with_state:
        hx = (h, rng.standard_normal((LD, B, layer.hidden_size)).astype(layer.dtype)) \
            if isinstance(layer, fastrnn.LSTM) else h
    return x, h, hx


@pytest.mark.parametrize("make,B,bf", [
    (lambda: fastrnn.LSTM(6, 7, num_layers=2, bidirectional=True, seed=1), 3, False),
    (lambda: fastrnn.GRU(6, 7, batch_first=True, seed=2), 1, True),
    (lambda: fastrnn.GRU(6, 9, num_layers=2, batch_first=True, reset_after=False, seed=3), 5, True),
    (lambda: fastrnn.SimpleRNN(6, 7, bidirectional=True, batch_first=True, seed=4), 2, True),
    (lambda: fastrnn.LSTM(6, 8, proj_size=3, seed=5), 4, False),
    (lambda: fastrnn.LSTM(6, 7, seed=6, dtype="float64"), 20, False),
])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_dense_call_is_the_general_call(make, B, bf, with_state, return_sequences):
    """A plain call (``_dense_call``) gives exactly what the general path (``_call``)
    gives for the same arguments: batch-first and time-major inputs, given or zero
    states, all outputs or the last, projections, float64; and it leaves the arrays it
    was given alone."""
    layer = make()
    rng = np.random.default_rng(B)
    T = 5
    x, h, hx = _call_inputs(layer, rng, B, T, bf, with_state)
    keep = [np.copy(a) for a in (x, h)]
    got = layer(x, hx, return_sequences=return_sequences)
    ref = layer._call(x, hx, None, None, "carry", None, return_sequences, False)
    flat = lambda r: [r[0]] + (list(r[1]) if isinstance(r[1], tuple) else [r[1]])
    for a, b in zip(flat(got), flat(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(h, keep[1])
    if bf and return_sequences:
        assert got[0].shape[:2] == (B, T)


def test_dense_call_only_for_plain_calls(monkeypatch):
    """Calls with lengths that differ, a mask that is not one prefix, a thread count,
    an unbatched or non-contiguous input of another dtype go the general way (and still
    answer); lengths all T, an all-True mask (either masked_output) and masked_output
    "zero" without a mask are plain calls (through _prefix_call)."""
    layer = fastrnn.GRU(4, 5, seed=0)
    seen = []
    real = layer._dense_call

    def spy(*a):
        r = real(*a)
        seen.append(r is not None)
        return r
    monkeypatch.setattr(layer, "_dense_call", spy)
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    ref = layer(x)[0]
    assert seen == [True]
    seen.clear()
    for kw in (dict(lengths=[3, 3]), dict(mask=np.ones((3, 2), bool)),
               dict(mask=np.ones((3, 2), bool), masked_output="zero"),
               dict(masked_output="zero")):
        np.testing.assert_array_equal(layer(x, **kw)[0], ref)
    assert seen == [True] * 4
    seen.clear()
    for kw in (dict(num_threads=1),):
        np.testing.assert_array_equal(layer(x, **kw)[0], ref)
    holes = np.ones((3, 2), bool)
    holes[1, 0] = False
    layer(x, lengths=[3, 1])
    layer(x, mask=holes)
    assert seen == []
    # unbatched, another dtype, a list, no steps: declined (None), run by _call
    np.testing.assert_array_equal(layer(x[:, 0])[0], ref[:, 0])
    np.testing.assert_array_equal(layer(x.astype(np.float64))[0], ref)
    np.testing.assert_array_equal(layer(x.tolist())[0], ref)
    assert layer(x[:0])[0].shape == (0, 2, 5)
    assert seen == [False, False, False]


def test_dense_run_kept_with_the_plan_and_checked():
    """A plain call of packed layers runs as one DenseRun kept with its plan (per
    return_sequences): the same answers as layer by layer (run_layer), and the runner
    names any array of the wrong shape, dtype or layout."""
    layer = fastrnn.GRU(6, 7, num_layers=2, seed=3, num_threads=1)
    x = np.random.default_rng(1).standard_normal((4, 3, 6)).astype(np.float32)
    layer(x[:1])            # (the process's first plan reads the L2 size: a knob)
    got = layer(x)
    got_last = layer(x, return_sequences=False)
    runs = layer._plans[2][(4, 4, 3, 1, False, 0, 0)][2]
    run = runs[(True, False)]
    assert isinstance(run, _kernels.DenseRun) and isinstance(runs[(False, False)],
                                                              _kernels.DenseRun)
    ref = layer._call(x, None, None, None, "carry", None, True, False)
    ref_last = layer._call(x, None, None, None, "carry", None, False, False)
    for a, b in zip((got[0], got[1], got_last[0], got_last[1]),
                    (ref[0], ref[1], ref_last[0], ref_last[1])):
        np.testing.assert_array_equal(a, b)
    xin = x.reshape(12, 6)
    h = np.zeros((2, 3, 7), np.float32)
    with pytest.raises(ValueError, match="x has shape"):
        run.run(xin[:11], h, None)
    with pytest.raises(ValueError, match="h has shape"):
        run.run(xin, h[:1], None)
    with pytest.raises(TypeError, match="x has dtype"):
        run.run(xin.astype(np.float64), h, None)
    with pytest.raises(ValueError, match="h must be C-contiguous"):
        run.run(xin, np.zeros((2, 7, 3), np.float32).transpose(0, 2, 1), None)
    out = run.run(xin, h, None)
    np.testing.assert_array_equal(out.reshape(4, 3, 7), ref[0])
    np.testing.assert_array_equal(h, ref[1])
    lstm = fastrnn.LSTM(6, 5, seed=1, num_threads=1)
    lstm(x)
    lrun = lstm._plans[2][(4, 4, 3, 1, False, 0, 0)][2][(True, False)]
    with pytest.raises(ValueError, match="c has shape"):
        lrun.run(xin, np.zeros((1, 3, 5), np.float32), np.zeros((1, 3, 4), np.float32))


def test_dense_call_takes_a_misaligned_input():
    """A C-contiguous input at an odd address (np.frombuffer at an offset) gives what its
    aligned copy gives, on the lean path as before it (run_layer takes it as it is)."""
    for layer in (fastrnn.GRU(4, 5, seed=0), fastrnn.LSTM(16, 16, seed=0, num_layers=2)):
        n = 3 * 2 * layer.input_size
        xa = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        buf = np.zeros(4 * n + 1, np.uint8)
        buf[1:] = np.frombuffer(xa.tobytes(), np.uint8)
        xm = np.frombuffer(buf.data, np.float32, n, 1).reshape(3, 2, layer.input_size)
        assert not xm.flags.aligned and xm.flags.c_contiguous
        got, ref = layer(xm), layer(xa.reshape(3, 2, layer.input_size))
        np.testing.assert_array_equal(got[0], ref[0])


RAGGED_MAKES = [
    (lambda: fastrnn.LSTM(6, 7, num_layers=2, bidirectional=True, seed=1), 3, False),
    (lambda: fastrnn.GRU(6, 7, batch_first=True, seed=2), 2, True),
    (lambda: fastrnn.GRU(6, 9, num_layers=2, batch_first=True, reset_after=False, seed=3), 5, True),
    (lambda: fastrnn.SimpleRNN(6, 7, bidirectional=True, batch_first=True, seed=4), 4, True),
    (lambda: fastrnn.LSTM(6, 8, proj_size=3, go_backwards=True, seed=5), 4, False),
    (lambda: fastrnn.LSTM(6, 7, seed=6, dtype="float64"), 20, False),
]


def _ragged_lengths(B, T, rng):
    lens = rng.integers(0, T + 1, B)
    lens[0], lens[-1] = T, 1            # (never one length)
    return lens


@pytest.mark.parametrize("make,B,bf", RAGGED_MAKES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("by", ["lengths", "mask", "mask_zero", "left", "left_zero", "spans",
                                "spans_one_length"])
def test_ragged_call_is_the_general_call(make, B, bf, with_state, return_sequences, by,
                                         monkeypatch):
    """A call of sequences of different lengths (``lengths``, or a mask whose unmasked
    steps are one span of each sequence: right padding, left padding, both; either
    masked_output) takes the lean ragged call, which gives exactly what the general
    path (``_call``) gives: batch-first and time-major, given or zero states, all
    outputs or the last, projections, go_backwards, float64, zero lengths, one length
    from different steps; a DenseRun kept per lengths with the plan (spans of the same
    lengths share it); the arrays given are left alone."""
    layer = make()
    rng = np.random.default_rng(B)
    T = 6
    x, h, hx = _call_inputs(layer, rng, B, T, bf, with_state)
    lens = _ragged_lengths(B, T, rng)
    if by == "spans_one_length":
        lens[:] = 3
    begin = np.zeros(B, np.intp)
    if by.startswith("left"):
        begin = T - lens
    elif by.startswith("spans"):
        begin = rng.integers(0, T - lens + 1)
        begin[-1], begin[0] = T - lens[-1] - 1, 0       # (a sequence in the middle)
    t = np.arange(T)[:, None]
    mask = (t >= begin) & (t < begin + lens)
    kw = dict(lengths=lens) if by == "lengths" else dict(mask=mask.T if bf else mask)
    keep = [np.copy(a) for a in (x, h, lens, mask)]
    taken = []
    real = layer._ragged_call
    monkeypatch.setattr(layer, "_ragged_call", lambda *a: taken.append(1) or real(*a))
    mo = "zero" if by.endswith("zero") else "carry"
    got = layer(x, hx, return_sequences=return_sequences, masked_output=mo, **kw)
    assert taken == [1]
    ref = layer._call(x, hx, kw.get("lengths"), kw.get("mask"), mo, None,
                      return_sequences, False)
    flat = lambda r: [r[0]] + (list(r[1]) if isinstance(r[1], tuple) else [r[1]])
    for a, b in zip(flat(got), flat(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    for a, b in zip((x, h, lens, mask), keep):
        np.testing.assert_array_equal(a, b)
    if by == "lengths" and return_sequences:     # zeros past each length
        tm = got[0].transpose(1, 0, 2) if bf else got[0]
        assert not (tm * (~mask)[:, :, None]).any()
    if not layer.bidirectional or layer.num_layers == 1:      # (packed layers)
        runs = [r for plan in layer._plans[2].values() for k, r in plan[2].items()
                if len(k) == 3]
        assert len(runs) == 1 and isinstance(runs[0], _kernels.DenseRun)
        if by != "lengths":         # the same lengths from step 0: the same run
            layer(x, hx, lengths=lens, return_sequences=return_sequences)
            assert [r for plan in layer._plans[2].values() for k, r in plan[2].items()
                    if len(k) == 3] == runs


def test_ragged_runs_stay_few_and_remade():
    """The runs kept per lengths stay at most _PLANS_KEPT a plan; lengths seen again after
    their run was dropped get the same answers."""
    layer = fastrnn.GRU(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    sets = [np.array([5, a, b]) for a in range(1, 6) for b in range(0, 6)
            if not a == b == 5]
    first = [layer(x, lengths=s) for s in sets]
    for plan in layer._plans[2].values():
        assert len(plan[2]) <= layers._PLANS_KEPT
    for s, (out, h) in zip(sets, first):
        ref = layer._call(x, None, s, None, "carry", None, True, False)
        again = layer(x, lengths=s)
        for a, b in ((out, ref[0]), (h, ref[1]), (again[0], ref[0]), (again[1], ref[1])):
            np.testing.assert_array_equal(a, b)


def test_ragged_dense_run_checks_its_packing():
    """A DenseRun for a packed batch names lengths and step sizes that do not fit the
    batch (the kernels trust them) and runs a valid packing as run_layer does."""
    layer = fastrnn.GRU(3, 4, seed=0, num_threads=1)
    x = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    lens = np.array([4, 1, 2])
    got = layer(x, lengths=lens)
    perm, slens, Teff, nsteps, rows, offsets, inv = layers.ragged_index(lens, 3, 4)
    nt, specs, _ = layer._plan(4, Teff, 3, 1, 0, True, 0)
    args = lambda off, nst, ls: (layers._CELL_CODE["GRU"], [s[1:] for s in specs], off, nst,
                                 3, 3, 4, 0, 1, 0,
                                 0.0, 0, 1, 0, 1, np.float32, True, ls)
    DenseRun = _kernels.DenseRun
    run = DenseRun(*args(offsets, nsteps, slens))
    h = np.zeros((1, 3, 4), np.float32)
    out = run.run(x.reshape(12, 3)[rows], h, None)
    full = np.zeros((12, 4), np.float32)
    full[rows] = out
    np.testing.assert_array_equal(full.reshape(4, 3, 4), got[0])
    np.testing.assert_array_equal(h[:, inv], got[1])
    with pytest.raises(ValueError, match="length outside"):
        DenseRun(*args(offsets, nsteps, np.array([5, 2, 1])))
    with pytest.raises(ValueError, match="fewer lengths"):
        DenseRun(*args(offsets, nsteps, slens[:2]))
    with pytest.raises(ValueError, match="rows outside"):
        DenseRun(*args(offsets, np.array([3, 2, 1, 4]), slens))
    with pytest.raises(ValueError, match="rows outside"):
        DenseRun(*args(offsets + 1, nsteps, slens))
    with pytest.raises(ValueError, match="x has shape"):
        run.run(x.reshape(12, 3), h, None)


def test_ragged_calls_from_threads():
    """Lean ragged and masked calls of many different lengths and masks (more than a
    plan keeps runs for; holes and left padding, both masked outputs) from 6 Python
    threads at once: the same bits as one at a time."""
    import threading
    layer = fastrnn.LSTM(5, 12, seed=3, bidirectional=True)
    rng = np.random.default_rng(3)
    calls = []
    for i in range(2 * layers._PLANS_KEPT):
        x = rng.standard_normal((7, 4, 5)).astype(np.float32)
        lens = _ragged_lengths(4, 7, rng)
        kw = dict(lengths=lens)
        if i % 3 == 1:
            kw = dict(mask=(np.arange(7)[:, None] < lens)[::-1].copy())
        elif i % 3 == 2:
            kw = dict(mask=rng.random((7, 4)) < 0.7, masked_output="zero")
        calls.append((x, kw))
    ref = [layer(x, **kw) for x, kw in calls]
    got, errors = {}, []

    def work(k):
        try:
            for i in range(len(calls)):
                j = (i * 5 + k) % len(calls)
                got[k, i] = (j, layer(calls[j][0], **calls[j][1]))
        except Exception as e:          # pragma: no cover (reported below)
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 6 * len(calls)
    for j, (out, (h, c)) in got.values():
        np.testing.assert_array_equal(out, ref[j][0])
        np.testing.assert_array_equal(h, ref[j][1][0])
        np.testing.assert_array_equal(c, ref[j][1][1])


@pytest.mark.parametrize("make,B,bf", RAGGED_MAKES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("kind", ["holes", "hole_at_1"])
def test_masked_call_is_the_general_call(make, B, bf, with_state, return_sequences, kind,
                                         monkeypatch):
    """A call with a mask that is not one span a sequence (holes) takes the lean masked
    call, which gives exactly what the general path (``_call``, the same mask kernels)
    gives, for both masked outputs in turn on one layer: batch-first and time-major,
    given or zero states, all outputs or the last, projections, go_backwards, float64;
    a DenseRun with the mask kept per masked output where the plan is of packed layers;
    the arrays given are left alone."""
    layers._l2_bytes()      # (the process's first plan reads the L2 size: a knob)
    layer = make()
    rng = np.random.default_rng(B + 7)
    T = 6
    x, h, hx = _call_inputs(layer, rng, B, T, bf, with_state)
    lens = _ragged_lengths(B, T, rng)
    mask = np.arange(T)[:, None] < lens[None, :]                    # (T, B)
    mask[rng.integers(0, T, B), np.arange(B)] ^= True
    mask[:, 0] = True
    mask[1, 0] = False                  # (a hole in a sequence)
    if kind == "hole_at_1":
        mask[:, 1:] = True
    mask = mask.T.copy() if bf else mask
    keep = [np.copy(a) for a in (x, h, mask)]
    taken = []
    real = layer._masked_call
    monkeypatch.setattr(layer, "_masked_call", lambda *a: taken.append(1) or real(*a))
    flat = lambda r: [r[0]] + (list(r[1]) if isinstance(r[1], tuple) else [r[1]])
    for mo in ("carry", "zero"):
        got = layer(x, hx, mask=mask, masked_output=mo, return_sequences=return_sequences)
        ref = layer._call(x, hx, None, mask, mo, None, return_sequences, False)
        for a, b in zip(flat(got), flat(ref)):
            assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous
            np.testing.assert_array_equal(a, b)
    assert taken == [1, 1]
    for a, b in zip((x, h, mask), keep):
        np.testing.assert_array_equal(a, b)
    runs = {k: r for plan in layer._plans[2].values() for k, r in plan[2].items()
            if len(k) == 4}
    assert sorted(k[3] for k in runs) == [0, 1]
    assert all(r is False or isinstance(r, _kernels.DenseRun) for r in runs.values())
    if not layer.bidirectional:     # (two directions may run as the pair: no DenseRun)
        assert all(isinstance(r, _kernels.DenseRun) for r in runs.values())


def test_masked_dense_run_checks_its_mask():
    """A DenseRun made with a mask wants one (uint8, (T, B)); one made without refuses
    one; lengths and a mask together are refused."""
    layer = fastrnn.GRU(3, 4, seed=0, num_threads=1)
    x = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    nt, specs, _ = layer._plan(4, 4, 3, 1, 0, False, 1)
    offsets, nsteps = layers._dense_index(4, 3)
    args = (layers._CELL_CODE["GRU"], [s[1:] for s in specs], offsets, nsteps, 3, 3, 4, 0,
            1, 0, 0.0, 0, 1, 0, 1, np.float32, True)
    run = _kernels.DenseRun(*args, None, 1, 0)
    h = np.zeros((1, 3, 4), np.float32)
    m = np.ones((4, 3), np.uint8)
    m[1, 2] = 0
    out = run.run(x.reshape(12, 3), h, None, m)
    ref = layer._call(x, None, None, m.astype(bool), "carry", None, True, False)
    np.testing.assert_array_equal(out.reshape(4, 3, 4), ref[0])
    np.testing.assert_array_equal(h, ref[1])
    with pytest.raises(TypeError, match="mask"):
        run.run(x.reshape(12, 3), h, None, m.astype(bool))
    with pytest.raises(ValueError, match="mask has shape"):
        run.run(x.reshape(12, 3), h, None, m[:3])
    with pytest.raises((TypeError, ValueError), match="mask"):
        run.run(x.reshape(12, 3), h, None)
    plain = _kernels.DenseRun(*args)
    with pytest.raises(ValueError, match="without one"):
        plain.run(x.reshape(12, 3), h, None, m)
    with pytest.raises(ValueError, match="lengths and a mask"):
        _kernels.DenseRun(*args, np.array([4, 3, 2]), 1, 0)
