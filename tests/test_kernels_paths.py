"""Every forward kernel path against the float64 NumPy reference.

Paths (``fastrnn._kernels.choose_path``): "small" = packed unit-block kernel in one
persistent parallel region (the default wherever it applies, any batch size); "wide" =
the batch-lane kernel (fr_wide_t.h; SimpleRNN from 8 rows by default, forced here for
every cell it supports, falling back to "small" elsewhere); "blas" = per-step BLAS GEMM +
vectorised gate pass (only forced, here for coverage).  Each is checked at several batch sizes, odd hidden sizes
(tails of the 16/8-unit blocks), uni/bi-directional, all cells, float32/float64, every
ISA level the CPU has, 1 and 2 threads, variable lengths and masks.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _backward, _kernels, layers
from reference import rnn_forward

CELLS = {"RNN": fastrnn.SimpleRNN, "LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}


@pytest.fixture(params=[0, 1, 2, 3], ids=["auto", "small", "blas", "wide"])
def path(request):
    _kernels._set_path(request.param)
    yield request.param
    _kernels._set_path(0)


@pytest.fixture(autouse=True)
def tiny_shapes_use_threads(monkeypatch):
    """The kernels (and layers._SMALL_CALL_MACS) keep tiny problems on one thread; the
    tests' shapes are tiny, so lift those limits to exercise the multi-thread code
    (unit and row splits)."""
    from fastrnn import layers
    old = _kernels._set_min_parallel_work(0)
    monkeypatch.setattr(layers, "_SMALL_CALL_MACS", -1)
    yield
    _kernels._set_min_parallel_work(old)


def _tol(dtype):
    return (2e-5, 2e-5) if dtype == np.float32 else (1e-11, 1e-11)


def _check(layer, x, **kw):
    out, st = layer(x, **kw)
    ref_out, ref_h, ref_c = rnn_forward(layer, x, lengths=kw.get("lengths"),
                                        mask=kw.get("mask"),
                                        masked_output=kw.get("masked_output", "carry"))
    rtol, atol = _tol(layer.dtype)
    np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol)
    h = st[0] if isinstance(st, tuple) else st
    np.testing.assert_allclose(h, ref_h, rtol=rtol, atol=atol)
    if isinstance(st, tuple):
        np.testing.assert_allclose(st[1], ref_c, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 6, 8, 9, 12, 17])
@pytest.mark.parametrize("H", [1, 7, 16, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_batch_and_hidden(path, cell, B, H, dtype):
    rng = np.random.default_rng(B * 100 + H)
    if cell == "GRU-reset-before":
        layer = fastrnn.GRU(5, H, dtype=dtype, seed=H + B, reset_after=False)
    else:
        layer = CELLS[cell](5, H, dtype=dtype, seed=H + B)
    x = rng.standard_normal((6, B, 5)).astype(dtype)
    _check(layer, x)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_paths_bidirectional_stacked_threads(path, cell, bidirectional, nt):
    rng = np.random.default_rng(7)
    layer = CELLS[cell](9, 40, num_layers=2, bidirectional=bidirectional, seed=3,
                        num_threads=nt)
    x = rng.standard_normal((11, 4, 9)).astype(np.float32)
    _check(layer, x)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_lengths_and_reverse(path, cell, dtype):
    rng = np.random.default_rng(11)
    layer = CELLS[cell](4, 20, bidirectional=True, dtype=dtype, seed=5, num_threads=2)
    x = rng.standard_normal((9, 5, 4)).astype(dtype)
    _check(layer, x, lengths=[9, 3, 0, 7, 1])


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("masked_output", ["carry", "zero"])
def test_paths_mask(path, cell, masked_output):
    rng = np.random.default_rng(13)
    layer = CELLS[cell](3, 18, bidirectional=True, seed=2, num_threads=2)
    x = rng.standard_normal((8, 3, 3)).astype(np.float32)
    mask = rng.random((8, 3)) > 0.3
    _check(layer, x, mask=mask, masked_output=masked_output)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("steps_per_chunk", [1, 3])
@pytest.mark.parametrize("case", ["dense", "lengths", "mask"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_projection_chunks(path, cell, steps_per_chunk, case, dtype, monkeypatch):
    """The projected inputs live one chunk of steps at a time (layers._SMALL_CHUNK_BYTES,
    _CHUNK_BYTES for the BLAS path): several chunks, a last one shorter than the others,
    both directions, 1 and 2 threads, give the reference's numbers."""
    from fastrnn import layers as L
    rng = np.random.default_rng(17)
    B, T, H = 5, 10, 13
    kw = dict(reset_after=False) if cell == "GRU-reset-before" else {}
    cls = CELLS["GRU" if cell.startswith("GRU") else cell]
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    for nt in (1, 2):
        layer = cls(6, H, bidirectional=True, dtype=dtype, seed=9, num_threads=nt, **kw)
        nbytes = steps_per_chunk * B * layer.gate_count * H * np.dtype(dtype).itemsize
        monkeypatch.setattr(L, "_SMALL_CHUNK_BYTES", nbytes)
        monkeypatch.setattr(L, "_CHUNK_BYTES", nbytes)
        if case == "lengths":
            _check(layer, x, lengths=[10, 7, 7, 2, 0])
        elif case == "mask":
            _check(layer, x, mask=rng.random((T, B)) > 0.3)
        else:
            _check(layer, x)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_kept_projection_scratch(bidirectional):
    """The packed kernel keeps its block of projected inputs between calls (one per
    direction of a pair): a second call reuses it, release_scratch() frees it once, and
    calls after the release give the same numbers."""
    from fastrnn import train
    _kernels.release_scratch()
    B, T, H = 2, 12, 40
    layer = fastrnn.LSTM(8, H, bidirectional=bidirectional, seed=6, num_threads=2)
    x = np.random.default_rng(8).standard_normal((T, B, 8)).astype(np.float32)
    _kernels._set_path(1)             # the packed kernel
    try:
        first = layer(x)[0]
        np.testing.assert_array_equal(layer(x)[0], first)
        freed = train.release_scratch()
        assert freed >= T * B * 4 * H * 4               # at least one chunk of inputs
        assert _kernels.release_scratch() == 0
        np.testing.assert_array_equal(layer(x)[0], first)
        _check(layer, x)
    finally:
        _kernels._set_path(0)


def test_chunk_beyond_l2(monkeypatch):
    """The packed kernel's chunk of projected inputs: 512 KiB while a thread's share of a
    direction's weights fits 3/4 of its L2, 4 MiB beyond (layers._chunk_steps); the
    larger chunk reaches the kernel and gives the reference's numbers."""
    from fastrnn import layers as L
    monkeypatch.setattr(L, "_L2", 2 << 20)
    assert L._chunk_steps(True, 4, 256, 256, 1, 1000, 4, 2) == (512 << 10) // (4 << 10)
    assert L._chunk_steps(True, 4, 512, 512, 1, 1000, 4, 2) == (4 << 20) // (8 << 10)
    assert L._chunk_steps(True, 4, 512, 512, 1, 100, 4, 2) == 100
    assert L._chunk_steps(True, 4, 512, 512, 1, 1000, 4, 6) == 64     # 6 shares fit
    assert L._chunk_steps(True, 4, 512, 512, 1, 1000, 4, 5) == 512    # > 3/4 of 5 L2s
    assert L._chunk_steps(False, 4, 256, 256, 1, 10 ** 6, 4, 2) == (4 << 20) // (4 << 10)
    # a small layer "beyond" a tiny L2: the second chunk size, here three steps
    B, H, I = 3, 13, 6
    layer = fastrnn.LSTM(I, H, seed=2, num_threads=2)
    x = np.random.default_rng(4).standard_normal((10, B, I)).astype(np.float32)
    monkeypatch.setattr(L, "_L2", 1024)
    monkeypatch.setattr(L, "_SMALL_CHUNK_BYTES_BEYOND_L2", 3 * B * 4 * H * 4)
    monkeypatch.setattr(L, "_SMALL_CHUNK_BYTES", 1 << 20)
    chunks = []
    run_layer = _kernels.run_layer
    def spy(*a):
        chunks.append(a[23])
        return run_layer(*a)
    monkeypatch.setattr(_kernels, "run_layer", spy)
    monkeypatch.setattr(L, "_DENSE_RUN", 0)     # (every call through run_layer)
    _check(layer, x)
    assert chunks and set(chunks) == {3}


@pytest.mark.parametrize("kw", [
    dict(activations=["hardsigmoid", "elu", "softsign"]),
    dict(clip=0.7),
    dict(peepholes=True),
    dict(input_forget=True),
    dict(proj_size=5),
    dict(go_backwards=True),
], ids=["acts", "clip", "peep", "input_forget", "proj", "go_backwards"])
def test_paths_lstm_options(path, kw):
    rng = np.random.default_rng(17)
    layer = fastrnn.LSTM(6, 21, seed=9, num_threads=2, **kw)
    if kw.get("peepholes"):
        sd = layer.state_dict()
        sd["weight_ph_l0"] = rng.standard_normal(sd["weight_ph_l0"].shape).astype(np.float32)
        layer.load_state_dict(sd)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    _check(layer, x)


# LSTM with a projection (proj_size): the packed kernel's projection phase (its own
# unit blocks of P, a second barrier a step in the unit split), the BLAS path forced
_PROJ_SIZES = [(2, 1), (7, 3), (33, 16), (40, 17)]


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 16, 17])
@pytest.mark.parametrize("HP", _PROJ_SIZES, ids=[f"H{h}P{p}" for h, p in _PROJ_SIZES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
def test_paths_projection_sizes(path, B, HP, dtype, nt):
    H, P = HP
    rng = np.random.default_rng(B * 31 + H)
    layer = fastrnn.LSTM(5, H, proj_size=P, dtype=dtype, seed=B + H, num_threads=nt)
    _check(layer, rng.standard_normal((6, B, 5)).astype(dtype))
    _check(layer, rng.standard_normal((1, B, 5)).astype(dtype))       # one step
    # given states, last output only
    hx = (rng.standard_normal((1, B, P)).astype(dtype),
          rng.standard_normal((1, B, H)).astype(dtype))
    x = rng.standard_normal((4, B, 5)).astype(dtype)
    y, (h, c) = layer(x, hx, return_sequences=False)
    ref, ref_h, ref_c = rnn_forward(layer, x, hx)
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(y, ref[-1], rtol=rtol, atol=atol)
    np.testing.assert_allclose(h, ref_h, rtol=rtol, atol=atol)
    np.testing.assert_allclose(c, ref_c, rtol=rtol, atol=atol)


@pytest.mark.parametrize("B", [3, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2, 3])
@pytest.mark.parametrize("masked_output", ["carry", "zero"])
def test_paths_projection_lengths_mask(path, B, dtype, nt, masked_output):
    """Stacked, bidirectional, go_backwards; variable lengths (finished rows keep h),
    masks (masked rows carry h and c, repeat or zero the output)."""
    rng = np.random.default_rng(B + nt)
    x = rng.standard_normal((9, B, 4)).astype(dtype)
    for kw in (dict(num_layers=2, bidirectional=True), dict(go_backwards=True)):
        layer = fastrnn.LSTM(4, 37, proj_size=18, dtype=dtype, seed=nt, num_threads=nt, **kw)
        _check(layer, x, lengths=rng.integers(0, 10, B))
        _check(layer, x, mask=rng.random((9, B)) > 0.3, masked_output=masked_output)


def test_projection_takes_packed_kernel():
    """An LSTM with a projection runs on the packed kernel by default (any batch), and
    its packing carries the projection's weights."""
    assert _kernels.small_path_applies(1, 5, 1)
    for B in (1, 4, 16, 64, 256):
        assert _kernels.choose_path(1, B, 256, 128, 1, 2) == "small"
    layer = fastrnn.LSTM(4, 9, proj_size=3)
    pw = layer._pack()[0][0][8]
    assert pw.small and pw.has_wrp


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("kw", [dict(), dict(activations=["hardsigmoid", "softsign"]),
                                dict(clip=0.5)], ids=["default", "acts", "clip"])
@pytest.mark.parametrize("B", [4, 18])
def test_paths_gru_options(path, reset_after, kw, B):
    rng = np.random.default_rng(19)
    layer = fastrnn.GRU(5, 19, reset_after=reset_after, seed=4, num_threads=2,
                        bidirectional=True, **kw)
    x = rng.standard_normal((6, B, 5)).astype(np.float32)
    _check(layer, x)
    _check(layer, x, lengths=rng.integers(0, 7, B))
    _check(layer, x, mask=rng.random((6, B)) > 0.3)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("clip", [None, 0.3])
def test_paths_rnn_relu(path, nonlinearity, clip):
    rng = np.random.default_rng(23)
    layer = fastrnn.SimpleRNN(5, 30, nonlinearity=nonlinearity, seed=1, num_threads=2,
                              clip=clip)
    x = rng.standard_normal((10, 3, 5)).astype(np.float32)
    _check(layer, x)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_isa_levels(level, cell):
    """Every ISA version of the C kernels (those the CPU supports) gives the same answer."""
    rng = np.random.default_rng(29)
    layer = CELLS[cell](8, 37, seed=6, num_threads=2)
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)
    _kernels._set_isa_level(level)
    try:
        _check(layer, x)
    finally:
        _kernels._set_isa_level(-1)


_LEVEL_OF_ISA = {"avx512": 2, "avx2+fma": 1, "x86-64 baseline": 0}


def _levels():
    """The ISA levels this CPU runs (0 .. its own)."""
    return list(range(_LEVEL_OF_ISA[_kernels.isa()] + 1))


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("B", [1, 2, 4, 7, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isa_levels_register_blocks(level, cell, B, dtype):
    """Each level's own vector width and register blocking (3 or 4 rows a block, 2 or 4
    k-steps in flight at small blocks, row split from 16 sequences), with unit-block tails
    (H=37), both directions at once, lengths and one step at a time."""
    if level not in _levels():
        pytest.skip(f"this CPU does not run ISA level {level}")
    rng = np.random.default_rng(B * 7 + level)
    _kernels._set_isa_level(level)
    try:
        if cell == "GRU-reset-before":
            layer = fastrnn.GRU(6, 37, reset_after=False, dtype=dtype, seed=B,
                                bidirectional=True, num_threads=2)
        else:
            layer = CELLS[cell](6, 37, dtype=dtype, seed=B, bidirectional=True, num_threads=2)
        x = rng.standard_normal((9, B, 6)).astype(dtype)
        _check(layer, x)
        _check(layer, x, lengths=rng.integers(0, 10, B))
        uni = CELLS[cell.split("-")[0]](6, 37, dtype=dtype, seed=B, num_threads=2,
                                        **({"reset_after": False} if "-" in cell else {}))
        out, _ = uni(x)
        h = np.zeros((1, B, 37), dtype)
        c = np.zeros((1, B, 37), dtype) if cell == "LSTM" else None
        for t in range(x.shape[0]):
            y = uni._step_fast(np.ascontiguousarray(x[t]), h, c)
            np.testing.assert_allclose(y, out[t], *_tol(dtype))
    finally:
        _kernels._set_isa_level(-1)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("B", [1, 2, 7, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isa_levels_projection(level, B, dtype):
    """The projection phase at each level's unit block (P=19: a tail at every width;
    packed again when the level changes), unit and row split, lengths."""
    if level not in _levels():
        pytest.skip(f"this CPU does not run ISA level {level}")
    rng = np.random.default_rng(B * 5 + level)
    layer = fastrnn.LSTM(6, 37, proj_size=19, dtype=dtype, seed=B, bidirectional=True,
                         num_threads=2)
    x = rng.standard_normal((9, B, 6)).astype(dtype)
    layer(x)            # packed at the CPU's own level first
    _kernels._set_isa_level(level)
    try:
        _check(layer, x)
        _check(layer, x, lengths=rng.integers(0, 10, B))
        assert layer._packed_unit == _kernels.unit_block(dtype)
        uni = fastrnn.LSTM(6, 37, proj_size=19, dtype=dtype, seed=B, num_threads=2)
        out, _ = uni(x)
        h, c = np.zeros((1, B, 19), dtype), np.zeros((1, B, 37), dtype)
        for t in range(x.shape[0]):
            np.testing.assert_allclose(uni._step_fast(np.ascontiguousarray(x[t]), h, c),
                                       out[t], *_tol(dtype))
    finally:
        _kernels._set_isa_level(-1)


def test_unit_block_is_the_level_vector_width():
    width = {2: 64, 1: 32, 0: 16}
    try:
        for level in _levels():
            _kernels._set_isa_level(level)
            assert _kernels.unit_block(np.float32) == width[level] // 4
            assert _kernels.unit_block(np.float64) == width[level] // 8
            w = np.arange(5 * 3 * 20, dtype=np.float32).reshape(5, 60)
            U = width[level] // 4
            assert _kernels.pack_units(w, 20, 3).size == -(-20 // U) * U * 5 * 3
    finally:
        _kernels._set_isa_level(-1)


@pytest.mark.parametrize("H", [32, 37])
def test_layer_repacks_when_the_isa_level_changes(H):
    """Packed weights belong to the unit block they were packed with: a layer used at one
    level and then at another repacks (H=32 fills every block size, so a stale packing
    would be read with the wrong layout; H=37 would not even have the right size)."""
    if len(_levels()) < 2:
        pytest.skip("one ISA level only")
    rng = np.random.default_rng(H)
    layer = fastrnn.LSTM(5, H, seed=3, num_threads=2)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    _check(layer, x)
    packed_at_top = layer._pack()
    try:
        _kernels._set_isa_level(0)
        _check(layer, x)
        assert layer._pack() is not packed_at_top
        assert layer._packed_unit == _kernels.unit_block(np.float32) == 4
    finally:
        _kernels._set_isa_level(-1)
    _check(layer, x)


def test_stale_packing_is_refused():
    """The kernels refuse packed weights of another unit block (no out-of-bounds read)."""
    if len(_levels()) < 2:
        pytest.skip("one ISA level only")
    layer = fastrnn.GRU(4, 18, seed=1)   # 18 units fill 24 (U=8, 16) or 20 (U=4)
    stale = layer._pack()
    try:
        _kernels._set_isa_level(0)
        with pytest.raises(ValueError, match="packed for another ISA level"):
            layer._make_step_plan(stale, 1)
    finally:
        _kernels._set_isa_level(-1)


def test_tiny_problems_stay_on_one_thread_and_agree():
    _kernels._set_min_parallel_work(16384)
    rng = np.random.default_rng(47)
    layer = fastrnn.GRU(3, 8, seed=2, num_threads=2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    _check(layer, x)


def _gates_wide_rule(cell, B, H, I, itemsize, nt=2, half=None, amd=None):
    """wide_gates_at's rule, written out: AVX-512, >= 16 rows, <= 1/8 padded lanes,
    >= 1 MiB of weights; half-width AVX-512 (Zen 4) also >= 32 rows a thread and the
    panels shared evenly; other AMD CPUs (Zen 5) also 4+ panels or >= 4 MiB of weights.
    half / amd None: this CPU's."""
    if half is None:
        half = _kernels.avx512_half()
    if amd is None:
        amd = _kernels.amd()
    lanes = 64 // itemsize
    padded = -(-B // lanes) * lanes
    G = 4 if cell == 1 else 3
    wbytes = G * H * (I + H) * itemsize
    if half:
        if B < 32 * nt or (padded // lanes) % nt:
            return False
    elif amd and padded // lanes < 4 and wbytes < 4 << 20:
        return False
    return (_kernels.isa() == "avx512" and B >= 16 and 8 * padded <= 9 * B
            and wbytes >= 1 << 20)


def _rnn_wide_rule(B, H, I, itemsize, nt, half=None):
    """wide_rnn_at's rule, written out: with AVX2 from 8 rows; with AVX-512 <= 1/8
    padded lanes, H >= 64, and panels of rows shared evenly or (not half-width) >= 1 MiB
    of weights.  half None: this CPU's."""
    if half is None:
        half = _kernels.avx512_half()
    if _kernels.isa() != "avx512":
        return B >= 8
    lanes = 64 // itemsize
    panels = -(-B // lanes)
    return (8 * panels * lanes <= 9 * B and H >= 64
            and (panels % nt == 0 or (not half and H * (I + H) * itemsize >= 1 << 20)))


def test_path_choice_is_automatic():
    assert _kernels.choose_path(1, 1, 256, 0, 1, 2) == "small"
    avx512 = _kernels.isa() == "avx512"
    # LSTM / GRU on the batch-lane kernel only with AVX-512, full lanes, large weights
    assert _kernels.choose_path(1, 64, 512, 0, 1, 2) == ("wide" if avx512 else "small")
    for cell in (1, 2):
        for B in (8, 12, 15, 16, 17, 24, 32, 40, 56, 64, 72, 128):
            for H, I in ((128, 128), (192, 192), (256, 256), (256, 64), (512, 512)):
                for itemsize in (4, 8):
                    want = _gates_wide_rule(cell, B, H, I, itemsize)
                    assert _kernels.wide_gates_at(cell, B, H, I, itemsize) == want
                    for nt in (1, 2, 3):        # every AVX-512 rule on any AVX-512 CPU
                        for half in (0, 1):
                            for amd in (0, 1):
                                assert (_kernels.wide_gates_at(cell, B, H, I, itemsize, nt,
                                                               half, amd)
                                        == _gates_wide_rule(cell, B, H, I, itemsize, nt,
                                                            half, amd))
                    got = _kernels.choose_path(cell, B, H, 0, 1, 2, 1, I, itemsize)
                    assert got == ("wide" if want else "small"), (cell, B, H, I, itemsize)
                    # not the default activations: packed kernel; GRU reset_after=False
                    # (two phases a step on the batch-lane kernel): the same rule
                    assert _kernels.choose_path(cell, B, H, 0, 1, 2, 0, I, itemsize) == "small"
                    assert _kernels.choose_path(cell, B, H, 0, 0, 2, 1, I, itemsize) == got
    if avx512:   # the rule's edges (full-width AVX-512, not an AMD)
        assert _kernels.wide_gates_at(1, 16, 256, 256, 4, 2, 0, 0)
        assert _kernels.wide_gates_at(1, 72, 512, 512, 4, 2, 0, 0)      # 80 lanes, 72 rows
        assert not _kernels.wide_gates_at(1, 24, 256, 256, 4, 2, 0, 0)  # 32 lanes, 24 rows
        assert not _kernels.wide_gates_at(2, 16, 128, 128, 4, 2, 0, 0)  # 384 KiB of weights
        assert not _kernels.wide_gates_at(1, 8, 256, 256, 8, 2, 0, 0)   # one panel, 8 doubles
        assert _kernels.wide_gates_at(1, 16, 256, 256, 8, 2, 0, 0)
        # full-width AMD (Zen 5): four panels or 4 MiB of weights
        assert not _kernels.wide_gates_at(2, 16, 256, 256, 4, 2, 0, 1)  # 1 panel, 1.5 MiB
        assert not _kernels.wide_gates_at(2, 48, 256, 256, 4, 2, 0, 1)  # 3 panels
        assert _kernels.wide_gates_at(2, 64, 256, 256, 4, 2, 0, 1)      # 4 panels
        assert _kernels.wide_gates_at(2, 16, 512, 512, 4, 2, 0, 1)      # 6 MiB
        assert not _kernels.wide_gates_at(2, 16, 256, 256, 8, 2, 0, 1)  # 2 panels, 3 MiB
        assert _kernels.wide_gates_at(1, 16, 256, 256, 8, 2, 0, 1)      # 4 MiB
        assert _kernels.wide_gates_at(2, 32, 256, 256, 8, 2, 0, 1)      # 4 panels of doubles
        # half-width (Zen 4): 32 rows a thread, panels shared evenly
        assert not _kernels.wide_gates_at(1, 16, 256, 256, 4, 2, 1)
        assert not _kernels.wide_gates_at(1, 32, 512, 512, 4, 2, 1)
        assert _kernels.wide_gates_at(1, 64, 512, 512, 4, 2, 1)
        assert _kernels.wide_gates_at(1, 32, 512, 512, 4, 1, 1)
        assert not _kernels.wide_gates_at(1, 96, 512, 512, 4, 4, 1)  # 6 panels, 4 threads
        assert not _kernels.wide_gates_at(2, 32, 256, 256, 8, 2, 1)  # float64: 16 a thread
        assert _kernels.wide_gates_at(2, 64, 256, 256, 8, 2, 1)
        _kernels._set_isa_level(1)
        try:
            assert _kernels.choose_path(1, 64, 512, 0, 1, 2) == "small"
        finally:
            _kernels._set_isa_level(-1)
    # SimpleRNN: the batch-lane kernel by wide_rnn_at (with AVX2 from 8 rows)
    for B in (1, 7, 8, 15, 16, 17, 24, 32, 48, 64, 72, 80, 96):
        for H, I in ((32, 32), (48, 48), (64, 64), (256, 256), (256, 64), (512, 512)):
            for itemsize in (4, 8):
                for nt in (1, 2, 3):
                    want = _rnn_wide_rule(B, H, I, itemsize, nt)
                    assert _kernels.wide_rnn_at(0, B, H, nt, I, itemsize) == want
                    for half in (0, 1):
                        assert (_kernels.wide_rnn_at(0, B, H, nt, I, itemsize, half)
                                == _rnn_wide_rule(B, H, I, itemsize, nt, half))
                    got = _kernels.choose_path(0, B, H, 0, 1, nt, 1, I, itemsize)
                    assert got == ("wide" if want else "small"), (B, H, I, itemsize, nt)
                    assert not _kernels.wide_rnn_at(1, B, H, nt, I, itemsize)   # LSTM
    if avx512:   # the rule's edges
        assert _kernels.choose_path(0, 32, 64, 0, 1, 2) == "wide"     # a panel a thread
        assert _kernels.choose_path(0, 32, 32, 0, 1, 2) == "small"    # H < 64
        assert _kernels.choose_path(0, 8, 256, 0, 1, 2) == "small"    # half-empty lanes
        # one panel on 2 threads, 2 MiB of weights: full width only
        assert _kernels.wide_rnn_at(0, 16, 512, 2, 512, 4, 0)
        assert not _kernels.wide_rnn_at(0, 16, 512, 2, 512, 4, 1)
        assert _kernels.choose_path(0, 48, 256, 0, 1, 2) == "small"   # 3 panels, 512 KiB
        # 3 panels, 2 MiB; float64 one panel, 1 MiB: full width only
        full = not _kernels.avx512_half()
        assert (_kernels.choose_path(0, 48, 512, 0, 1, 2) == "wide") == full
        assert (_kernels.choose_path(0, 8, 256, 0, 1, 2, 1, 256, 8) == "wide") == full
        assert _kernels.choose_path(0, 16, 64, 0, 1, 1) == "wide"     # one thread
        _kernels._set_isa_level(1)
        try:
            assert _kernels.choose_path(0, 8, 32, 0, 1, 2) == "wide"
            assert _kernels.choose_path(0, 7, 256, 0, 1, 2) == "small"
        finally:
            _kernels._set_isa_level(-1)
    else:
        assert _kernels.choose_path(0, 8, 256, 0, 1, 2) == "wide"     # from 8 rows
    assert _kernels.choose_path(0, 7, 256, 0, 1, 2) == "small"
    assert _kernels.choose_path(0, 64, 256, 0, 1, 2, 0) == "small"  # not the default acts
    assert _kernels.wide_path_applies(2, 0, 0)                    # GRU reset_after=False
    assert not _kernels.wide_path_applies(1, 4, 1)                # projection
    assert _kernels.choose_path(1, 1, 256, 5, 1, 2) == "small"    # projection
    assert _kernels.choose_path(2, 1, 256, 0, 0, 2) == "small"    # GRU reset_after=False
    assert _kernels.isa() in ("avx512", "avx2+fma", "x86-64 baseline")


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_return_sequences_false(path, cell, bidirectional):
    rng = np.random.default_rng(31)
    layer = CELLS[cell](4, 13, num_layers=2, bidirectional=bidirectional, seed=8)
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    lengths = [7, 2, 5]
    out, st = layer(x, lengths=lengths)
    last, st2 = layer(x, lengths=lengths, return_sequences=False)
    h = st[0] if isinstance(st, tuple) else st
    h2 = st2[0] if isinstance(st2, tuple) else st2
    np.testing.assert_array_equal(h, h2)
    D = 2 if bidirectional else 1
    assert last.shape == (3, D * 13)
    np.testing.assert_array_equal(last, np.concatenate(list(h[-D:]), axis=1))
    # forward direction's last output is its final state
    np.testing.assert_allclose(last[0, :13], out[6, 0, :13], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("copy", [False, True])
def test_step_fast_matches_sequence(cell, dtype, nt, copy):
    """Step by step equals the whole sequence; with ``copy`` each step's output is a
    new array of the layer's dtype (StepPlan.step_copy), equal to the state's top h."""
    rng = np.random.default_rng(37)
    layer = CELLS[cell](6, 40, num_layers=2, dtype=dtype, seed=10, num_threads=nt)
    x = rng.standard_normal((5, 3, 6)).astype(dtype)
    ref, _ = layer(x)
    h = np.zeros((2, 3, 40), dtype)
    c = np.zeros((2, 3, 40), dtype) if cell == "LSTM" else None
    outs = []
    for t in range(5):
        y = layer._step_fast(np.ascontiguousarray(x[t]), h, c, None, copy)
        if copy:
            assert y.dtype == dtype and y.shape == (3, 40) and not np.shares_memory(y, h)
            np.testing.assert_array_equal(y, h[-1])
        outs.append(y.copy())
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(np.array(outs), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_after_pause_runs_on_one_thread(cell, dtype):
    """A streaming step whose plan has been idle longer than ``_set_step_idle_single``
    runs on one thread (a sleeping OpenMP worker costs milliseconds to wake on a VM):
    bit-identical to the multi-thread step (unit split: the same arithmetic per block),
    back-to-back steps keep the threads; the row split (B >= 16, arithmetic depends on
    the rows a thread has) always keeps them."""
    import time
    old = _kernels._set_step_idle_single(0)
    try:
        for B, single in ((1, True), (3, True), (17, False)):
            # (steps of smaller layers run on one thread anyway: layers._step_min_rows)
            layer = CELLS[cell](256, 256, num_layers=2, dtype=dtype, seed=B, num_threads=3)
            x = np.random.default_rng(B).standard_normal((6, B, 256)).astype(dtype)
            runs = {}
            for idle_ns in (0, -1, 50_000_000):
                _kernels._set_step_idle_single(idle_ns)
                h = np.zeros((2, B, 256), dtype)
                c = np.zeros((2, B, 256), dtype) if cell == "LSTM" else None
                outs, threads = [], []
                for t in range(6):
                    if idle_ns > 0 and t == 3:
                        time.sleep(0.06)
                    outs.append(layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy())
                    threads.append(layer.__dict__["_step_plans"][1][3].last_threads)
                runs[idle_ns] = np.array(outs)
                if idle_ns == 0:
                    assert threads == [1 if single else 3] * 6
                elif idle_ns < 0:
                    assert threads == [3] * 6
                else:   # new plan, then 3 back to back (within 50 ms), a pause, ...
                    assert threads[3] == (1 if single else 3)
                    assert threads[4] == 3
            np.testing.assert_array_equal(runs[0], runs[-1])
            np.testing.assert_array_equal(runs[50_000_000], runs[-1])
            rtol, atol = _tol(dtype)
            np.testing.assert_allclose(runs[-1], layer(x)[0], rtol=rtol, atol=atol)
    finally:
        _kernels._set_step_idle_single(old)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_step_sleeping_team_runs_on_one_thread(cell):
    """Streaming steps whose team costs more than its threads' work put together (its
    threads sleep between steps: fr_kern.h, fr_wake_after) run on one thread after two
    such steps in a row, for a phase of ``STEP_WAKE_SINGLE[0]`` steps, then two probe
    steps on the team decide again: still slow, the next phase is twice as long, up to
    ``STEP_WAKE_SINGLE[1]``; found fast, back on the team.  The state is the calling
    thread's; the row split (B >= 16) is never switched; every output is bit-identical
    to one thread's (the unit split)."""
    import threading
    lo, hi = _kernels.STEP_WAKE_SINGLE
    assert 2 <= lo < hi
    phases = [lo]
    while phases[-1] < hi:
        phases.append(min(2 * phases[-1], hi))
    phases.append(hi)            # (stays there)
    old_idle = _kernels._set_step_idle_single(-1)
    old = _kernels._set_step_wake(1)
    try:
        layer = CELLS[cell](256, 256, num_layers=2, seed=3, num_threads=2)
        total = 2 + sum(p + 2 for p in phases) + hi + 10
        x = np.random.default_rng(3).standard_normal((total, 1, 256)).astype(np.float32)
        assert _kernels._step_wake_state() == (0, 0, 0, 0)

        def run(steps, nt=None):
            h = np.zeros((2, 1, 256), np.float32)
            c = np.zeros((2, 1, 256), np.float32) if cell == "LSTM" else None
            outs, threads, states = [], [], []
            for t in range(steps):
                outs.append(layer._step_fast(x[t], h, c, num_threads=nt).copy())
                threads.append(layer.__dict__["_step_plans"][1][nt or 2].last_threads)
                states.append(_kernels._step_wake_state())
            return np.array(outs), threads, states

        y_one = run(total, 1)[0]
        assert _kernels._step_wake_state() == (0, 0, 0, 0)   # one thread: not measured
        # slow steps: two on the team, then phases on one thread, each ended by two probes
        n = 2 + sum(p + 2 for p in phases)
        y, threads, states = run(n)
        np.testing.assert_array_equal(y, y_one[:n])
        assert threads[:2] == [2, 2] and states[0] == (0, 1, 0, 0)
        assert states[1] == (lo, 0, 0, lo)
        i = 2
        for k, p in enumerate(phases):
            assert threads[i:i + p] == [1] * p and states[i + p - 1] == (0, 0, 2, p)
            assert threads[i + p:i + p + 2] == [2, 2]
            assert states[i + p] == (0, 0, 1, p)
            nxt = phases[k + 1] if k + 1 < len(phases) else hi
            assert states[i + p + 1] == (nxt, 0, 0, nxt)
            i += p + 2
        # another thread's steps keep their own state
        other = []
        th = threading.Thread(target=lambda: other.append(_kernels._step_wake_state()))
        th.start()
        th.join()
        assert other == [(0, 0, 0, 0)]
        # the next probes find the team awake: back on it
        _kernels._set_step_wake(0)
        y, threads, states = run(hi + 10)
        np.testing.assert_array_equal(y, y_one[:hi + 10])
        assert threads[:hi] == [1] * hi and threads[hi:] == [2] * 10
        assert states[-1] == (0, 0, 0, 0)
        # one slow step alone does not switch
        _kernels._set_step_wake(1)
        run(1)
        assert _kernels._step_wake_state() == (0, 1, 0, 0)
        _kernels._set_step_wake(0)
        y, threads, states = run(3)
        assert threads == [2] * 3 and states[-1] == (0, 0, 0, 0)
        # the row split is never measured
        _kernels._set_step_wake(1)
        xb = np.random.default_rng(4).standard_normal((4, 17, 256)).astype(np.float32)
        h = np.zeros((2, 17, 256), np.float32)
        c = np.zeros((2, 17, 256), np.float32) if cell == "LSTM" else None
        for t in range(4):
            layer._step_fast(xb[t], h, c)
            assert layer.__dict__["_step_plans"][1][2].last_threads == 2
        assert _kernels._step_wake_state() == (0, 0, 0, 0)
    finally:
        _kernels._set_step_wake(old)
        _kernels._set_step_idle_single(old_idle)


def test_step_sleeping_team_measured():
    """The measured rule (not forced): with OMP_WAIT_POLICY=passive the team's threads
    sleep in every OpenMP wait, each step's region pays two wake-ups, and the streaming
    steps move to one thread; the outputs stay the team's bits.  A fresh process (the
    policy is read when the OpenMP runtime loads)."""
    import os
    import subprocess
    import sys
    code = """
import numpy as np, fastrnn
from fastrnn import _kernels
layer = fastrnn.GRU(256, 256, seed=1, num_threads=2)
x = np.random.default_rng(1).standard_normal((300, 1, 256)).astype(np.float32)
s = fastrnn.Stream(layer, num_threads=2)
ys, threads = [], []
for t in range(300):
    ys.append(s.step(x[t]))
    threads.append(layer.__dict__["_step_plans"][1][2].last_threads)
s1 = fastrnn.Stream(layer, num_threads=1)
assert np.array_equal(np.stack(ys), np.stack([s1.step(x[t]) for t in range(300)])), "bits"
print(sum(n == 1 for n in threads[50:]), len(threads[50:]))
"""
    env = dict(os.environ, OMP_WAIT_POLICY="passive", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    single, total = map(int, out.stdout.split())
    assert single >= total // 2, out.stdout


def test_step_fast_checks_its_buffers_and_threads():
    """The streaming step's kernel entry (StepPlan.step, raw NumPy buffers) names what is
    wrong with a buffer instead of reading it; a kept plan does not let a bad thread count
    through; a layer whose ISA level changed repacks and steps right."""
    layer = fastrnn.LSTM(6, 20, num_layers=2, seed=2, num_threads=2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 6)).astype(np.float32)
    ref, _ = layer(x)

    def fresh():
        return np.zeros((2, 3, 20), np.float32), np.zeros((2, 3, 20), np.float32)
    h, c = fresh()
    layer._step_fast(np.ascontiguousarray(x[0]), h, c)      # plan kept from here on
    bad = [((x[0].astype(np.float64), h, c), TypeError, "x has dtype <f8"),
           ((x[0].astype(">f4"), h, c), TypeError, "x has dtype >f4"),
           ((x[0].tolist(), h, c), ValueError, "x must be a 2-D numpy array"),
           ((np.ascontiguousarray(x[0][:, :5]), h, c), ValueError, r"x has shape \(3, 5\), expected \(3, 6\)"),
           ((np.asfortranarray(rng.standard_normal((3, 6)), np.float32), h, c), ValueError,
            "x must be C-contiguous"),
           ((np.frombuffer(bytes(73), np.float32, 18, 1).reshape(3, 6), h, c), ValueError,
            "x must be C-contiguous, aligned"),
           ((x[0], h[:, :2].copy(), c), ValueError, r"h has shape \(2, 2, 20\), expected \(2, 3, 20\)"),
           ((x[0], h, c[:1]), ValueError, "c has shape"),
           ((x[0], h, None), TypeError, "c must be a numpy array, got NoneType"),
           ((x[0], h.swapaxes(0, 1).copy().swapaxes(0, 1), c), ValueError,
            "h must be C-contiguous, aligned and writeable")]
    ro = h.copy()
    ro.flags.writeable = False
    bad.append(((x[0], ro, c), ValueError, "h must be C-contiguous, aligned and writeable"))
    for args, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            layer._step_fast(*args)
    for nt in (0, True, 2.0, "2"):
        with pytest.raises((TypeError, ValueError), match="num_threads"):
            layer._step_fast(np.ascontiguousarray(x[0]), h, c, num_threads=nt)
    h, c = fresh()
    levels = _levels()
    outs = []
    try:
        for t in range(4):
            if len(levels) > 1:
                _kernels._set_isa_level(levels[t % 2])
            outs.append(layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy())
            # the step ran the current level's kernel (a kept plan of another level would
            # still be right, on the old kernel: the packed kernels follow the packing)
            assert layer._packed_unit == _kernels.unit_block(np.float32)
    finally:
        _kernels._set_isa_level(-1)
    np.testing.assert_allclose(np.array(outs), ref, rtol=2e-5, atol=2e-5)


def test_step_fast_fallback_configs():
    rng = np.random.default_rng(41)
    for layer in (fastrnn.LSTM(4, 9, proj_size=3, seed=1), fastrnn.GRU(4, 9, reset_after=False, seed=1),
                  fastrnn.GRU(4, 40, reset_after=False, seed=1, num_layers=2)):
        x = rng.standard_normal((4, 2, 4)).astype(np.float32)
        ref, _ = layer(x)
        Hout = layer.output_size
        h = np.zeros((layer.num_layers, 2, Hout), np.float32)
        c = np.zeros((1, 2, 9), np.float32) if layer._cell == "LSTM" else None
        outs = [layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy() for t in range(4)]
        np.testing.assert_allclose(np.array(outs), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("B", [1, 3, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
def test_step_fast_projection(B, dtype, nt):
    """A stacked LSTM with a projection steps on the packed kernel's step plan (h of
    P per layer, the projection phase after the gates), equal to the whole sequence."""
    rng = np.random.default_rng(B + nt)
    layer = fastrnn.LSTM(5, 37, proj_size=19, num_layers=2, dtype=dtype, seed=B,
                         num_threads=nt)
    x = rng.standard_normal((6, B, 5)).astype(dtype)
    ref, (ref_h, ref_c) = layer(x)
    h = np.zeros((2, B, 19), dtype)
    c = np.zeros((2, B, 37), dtype)
    outs = [layer._step_fast(np.ascontiguousarray(x[t]), h, c, copy=t % 2 == 1).copy()
            for t in range(6)]
    assert isinstance(layer._step_entry[2], _kernels.StepPlan)
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(np.array(outs), ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(h, ref_h, rtol=rtol, atol=atol)
    np.testing.assert_allclose(c, ref_c, rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match="h has shape"):
        layer._step_entry[2].step(np.ascontiguousarray(x[0]), np.zeros((2, B, 37), dtype), c)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("nt", [2, 3])
def test_row_split_lengths_mask(path, cell, nt):
    """B >= 16 with several threads: rows split between threads (no barrier)."""
    rng = np.random.default_rng(43)
    layer = CELLS[cell](5, 23, bidirectional=True, seed=12, num_threads=nt)
    x = rng.standard_normal((9, 21, 5)).astype(np.float32)
    lengths = rng.integers(0, 10, 21)
    _check(layer, x, lengths=lengths)
    mask = rng.random((9, 21)) > 0.25
    _check(layer, x, mask=mask)


# ------------------------------------------------ both directions at once (run_pair)
@pytest.fixture(params=[0, 1], ids=["pair-auto", "pair-forced"])
def pair(request):
    """Automatic choice (the test shapes are tiny: lift the L1 bound so it picks the
    concurrent directions) or forced."""
    old = _kernels._set_pair(request.param)
    old_l1 = _kernels._L1_BYTES
    _kernels._L1_BYTES = 0
    yield request.param
    _kernels._L1_BYTES = old_l1
    _kernels._set_pair(old)


_PAIR_CELLS = ["RNN", "LSTM", "GRU", "GRU-reset-before", "LSTM-proj"]


def _pair_layer(cell, I, H, dtype=np.float32, **kw):
    if cell == "LSTM-proj":
        return fastrnn.LSTM(I, H, bidirectional=True, dtype=dtype, proj_size=H // 2, **kw)
    if cell == "GRU-reset-before":
        return fastrnn.GRU(I, H, bidirectional=True, dtype=dtype, reset_after=False, **kw)
    return CELLS[cell](I, H, bidirectional=True, dtype=dtype, **kw)


def _pair_used(layer, B, T):
    return _kernels.pair_applies(
        {"RNN": 0, "LSTM": 1, "GRU": 2}[layer._cell], B, T, layer.hidden_size,
        layer.proj_size, int(layer.reset_after), 2)


@pytest.mark.parametrize("cell", _PAIR_CELLS)
@pytest.mark.parametrize("B", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_dense_lengths_mask(pair, cell, B, dtype):
    """Bidirectional, small batch, 2 threads: the two directions run at the same time
    (one thread each); dense, variable lengths, masks (carry/zero), stacked."""
    rng = np.random.default_rng(B * 7 + len(cell))
    layer = _pair_layer(cell, 5, 19, dtype, num_layers=2, seed=B, num_threads=2)
    code = {"RNN": 0, "LSTM": 1, "GRU": 2}[layer._cell]
    if _kernels.choose_path(code, B, 19, 0, int(layer.reset_after), 2) == "wide":
        # SimpleRNN from WIDE_MIN_BATCH rows: the batch-lane kernel, not the pair
        assert code == 0 and B >= _kernels.WIDE_MIN_BATCH
        assert not _pair_used(layer, B, 7)
    elif pair == 1 or B == 1:
        assert _pair_used(layer, B, 7)
    x = rng.standard_normal((7, B, 5)).astype(dtype)
    _check(layer, x)
    lengths = rng.integers(0, 8, B)
    lengths[0] = 7
    _check(layer, x, lengths=lengths)
    mask = rng.random((7, B)) > 0.3
    _check(layer, x, mask=mask)
    _check(layer, x, mask=mask, masked_output="zero")


@pytest.mark.parametrize("kw", [
    dict(activations=["hardsigmoid", "elu", "softsign"]),
    dict(clip=0.7),
    dict(peepholes=True),
    dict(input_forget=True),
    dict(go_backwards=True),
], ids=["acts", "clip", "peep", "input_forget", "go_backwards"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_lstm_options(pair, kw, dtype):
    rng = np.random.default_rng(31)
    layer = fastrnn.LSTM(6, 21, bidirectional=True, seed=9, num_threads=2, dtype=dtype, **kw)
    if kw.get("peepholes"):
        sd = layer.state_dict()
        for k in sd:
            if k.startswith("weight_ph"):
                sd[k] = rng.standard_normal(sd[k].shape).astype(dtype)
        layer.load_state_dict(sd)
    x = rng.standard_normal((7, 3, 6)).astype(dtype)
    _check(layer, x)
    _check(layer, x, lengths=[7, 2, 5])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("kw", [dict(), dict(activations=["hardsigmoid", "softsign"]),
                                dict(clip=0.5), dict(go_backwards=True)],
                         ids=["default", "acts", "clip", "go_backwards"])
def test_pair_gru_options(pair, reset_after, kw):
    rng = np.random.default_rng(37)
    layer = fastrnn.GRU(5, 19, reset_after=reset_after, seed=4, num_threads=2,
                        bidirectional=True, **kw)
    x = rng.standard_normal((6, 4, 5)).astype(np.float32)
    _check(layer, x)
    _check(layer, x, lengths=rng.integers(0, 7, 4))
    _check(layer, x, mask=rng.random((6, 4)) > 0.3)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_pair_rnn_relu_and_states(pair, cell):
    """Initial states, return_sequences=False, batch_first, relu RNN."""
    rng = np.random.default_rng(41)
    kw = dict(nonlinearity="relu") if cell == "RNN" else {}
    layer = _pair_layer(cell, 4, 17, num_layers=2, seed=6, num_threads=2, **kw)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 17)).astype(np.float32)
    hx = (h0, rng.standard_normal((4, 3, 17)).astype(np.float32)) if cell == "LSTM" else h0
    out, st = layer(x, hx)
    ref_out, ref_h, ref_c = rnn_forward(layer, x, hx=hx)
    np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(st[0] if cell == "LSTM" else st, ref_h, rtol=2e-5, atol=2e-5)
    if cell == "LSTM":
        np.testing.assert_allclose(st[1], ref_c, rtol=2e-5, atol=2e-5)
    last, st2 = layer(x, hx, return_sequences=False)
    np.testing.assert_allclose(last, np.concatenate([ref_h[2], ref_h[3]], axis=-1),
                               rtol=2e-5, atol=2e-5)


def test_pair_matches_one_after_the_other():
    """The concurrent directions give bit-identical results to the sequential order."""
    rng = np.random.default_rng(47)
    for cell in _PAIR_CELLS:
        layer = _pair_layer(cell, 8, 40, num_layers=2, seed=2, num_threads=2)
        x = rng.standard_normal((12, 6, 8)).astype(np.float32)
        lengths = rng.integers(1, 13, 6)
        old = _kernels._set_pair(1)
        try:
            a = layer(x, lengths=lengths)
            _kernels._set_pair(2)
            b = layer(x, lengths=lengths)
        finally:
            _kernels._set_pair(old)
        np.testing.assert_array_equal(a[0], b[0])


@pytest.fixture
def not_f19():
    """This module's rules as on a CPU other than AMD family 0x19 (Zen 3 / 4): its own
    rules off, the packed kernel's row split from 16 rows; the LSTM route's rule as on a
    CPU other than an AMD (Zen 5 routes from 12 sequences only)."""
    old = _kernels._set_amd_f19(0)
    old_rows = _kernels._set_rowsplit_min(16)
    old_amd = _backward._set_amd(0)             # (the LSTM route's rule: Zen 5 has its own)
    yield
    _backward._set_amd(-1)
    assert _backward.amd() == old_amd
    _kernels._set_rowsplit_min(old_rows)
    _kernels._set_amd_f19(-1)
    assert _kernels.amd_f19() == old


def test_pair_choice_zen4(monkeypatch):
    """Zen 4 (AMD family 0x19, 1 MiB L2): the pair below 16 rows, before the LSTM route
    too, but at batch 1 not beyond two L2s; not for tiny layers or on one thread."""
    _kernels._set_min_parallel_work(16384)
    monkeypatch.setattr(_kernels, "_L2_BYTES", 1 << 20)
    old = _kernels._set_amd_f19(1)
    try:
        assert _kernels._zen4()
        p = _kernels.pair_applies
        for B in (1, 2, 4, 8, 12, 15):
            assert p(1, B, 100, 256, 0, 1, 2) == 2, B       # LSTM, 1 MiB: any batch
            assert p(2, B, 100, 128, 0, 1, 2, 8) == 2, B    # GRU float64
        assert p(0, 8, 100, 64, 0, 1, 2) == 2                # SimpleRNN
        assert not p(1, 16, 100, 256, 0, 1, 2)               # 16 rows: the row split
        assert not p(2, 1, 100, 512, 0, 1, 2)                # GRU 3 MiB at batch 1
        assert p(2, 2, 100, 512, 0, 1, 2) == 2               # ... at batch 2
        assert p(1, 1, 100, 362, 0, 1, 2) == 2               # 4 x 362^2 x 4 < 2 MiB
        assert not p(1, 1, 100, 363, 0, 1, 2)
        assert not p(1, 8, 100, 256, 0, 1, 1)                # one thread
        assert not p(0, 1, 2, 8, 0, 1, 2)                    # tiny
        monkeypatch.setattr(_kernels, "_L2_BYTES", 512 << 10)  # Zen 3: not this rule
        assert not _kernels._zen4()
    finally:
        _kernels._set_amd_f19(-1)
    assert _kernels.amd_f19() == old


@pytest.mark.parametrize("caches", ["1MiB-L2", "2MiB-L2"])
def test_pair_choice_is_automatic(caches, monkeypatch, not_f19):
    """The pair rule by the caches it sees (_kernels._L1_BYTES / _L2_BYTES): the rule
    measured on an EPYC with 32 KiB / 1 MiB, and the one measured on an Intel Xeon with
    48 KiB / 2 MiB (pair wherever one direction's recurrent weights fit 3/4 of the L2,
    half of it at batch 1; 2: before the LSTM route too)."""
    _kernels._set_min_parallel_work(16384)
    big = caches == "2MiB-L2"
    monkeypatch.setattr(_kernels, "_L1_BYTES", (48 if big else 32) << 10)
    monkeypatch.setattr(_kernels, "_L2_BYTES", (2 if big else 1) << 20)
    L, H = 1, 256
    assert _kernels.pair_applies(L, 8, 100, H, 0, 1, 2) == (2 if big else 1)  # BiLSTM B=8
    assert not _kernels.pair_applies(L, 1, 100, 2048, 0, 1, 2)  # beyond L2, B=1
    assert not _kernels.pair_applies(L, 8, 100, H, 0, 1, 1)    # one thread
    assert not _kernels.pair_applies(L, 16, 100, H, 0, 1, 2)   # row split: no barrier
    # a projection: the recurrent weights per step are (G P + P) H
    assert _kernels.pair_applies(L, 8, 100, 512, 64, 1, 2) == (2 if big else 0)
    assert _kernels.pair_applies(L, 8, 100, 512, 0, 1, 2) == (0 if big else 1)
    assert not _kernels.pair_applies(0, 1, 2, 8, 0, 1, 2)      # tiny
    if big:
        assert _kernels.pair_applies(L, 1, 100, 16, 0, 1, 2) == 2      # small layers too
        assert _kernels.pair_applies(L, 4, 100, H, 0, 1, 2) == 2       # any batch below 16
        assert _kernels.pair_applies(2, 1, 100, 256, 0, 1, 2) == 2     # GRU: 768 KiB
        assert not _kernels.pair_applies(2, 1, 100, 320, 0, 1, 2)      # 1.2 MiB > L2 / 2
        assert _kernels.pair_applies(2, 4, 100, 320, 0, 1, 2) == 2     # <= 3/4 L2, B > 1
        assert not _kernels.pair_applies(L, 4, 100, 384, 0, 1, 2)      # 2.25 MiB
        assert not _kernels.pair_applies(L, 8, 100, 2048, 0, 1, 2, 8)
    else:
        Hm = 8
        while 4 * Hm * Hm * 4 <= 2 * _kernels._L1_BYTES:
            Hm += 8
        assert _kernels.pair_applies(L, 1, 100, Hm, 0, 1, 2) == 1   # weights fit in L2
        assert not _kernels.pair_applies(L, 1, 100, 16, 0, 1, 2)   # half fits in L1
        assert not _kernels.pair_applies(L, 4, 100, H, 0, 1, 2)    # mid batch: as before
        assert _kernels.pair_applies(L, 8, 100, 2048, 0, 1, 2, 8) == 1
    old = _kernels._set_pair(2)
    try:
        assert not _kernels.pair_applies(L, 8, 100, H, 0, 1, 2)
    finally:
        _kernels._set_pair(old)


@pytest.mark.parametrize("caches", ["1MiB-L2", "2MiB-L2"])
def test_pair_before_route(caches, monkeypatch, not_f19):
    """A dense BiLSTM the LSTM route would take (B=8, 32 steps): where the rule says 2
    (2 MiB L2) both directions run as the pair and the route is not called; with the
    smaller caches the route keeps it.  Same numbers as the reference either way."""
    from fastrnn import layers as L
    big = caches == "2MiB-L2"
    monkeypatch.setattr(_kernels, "_L1_BYTES", (48 if big else 32) << 10)
    monkeypatch.setattr(_kernels, "_L2_BYTES", (2 if big else 1) << 20)
    # a size the route takes on this CPU (half-width AVX-512: from H = 128)
    H = next((h for h in (64, 128) if L._fused_lstm_ok(8, 2, False, h, 4, False, 32, h)),
             None)
    if H is None:
        pytest.skip("the LSTM route's rule does not take this layer on this CPU")
    layer = fastrnn.LSTM(H, H, bidirectional=True, seed=3, num_threads=2)
    x = np.random.default_rng(5).standard_normal((32, 8, H)).astype(np.float32)
    calls = {"pair": 0, "route": 0}
    run_pair, route = _kernels.run_pair, L.LSTM._fused_lstm_dir
    def spy_pair(*a, **k):
        calls["pair"] += 1
        return run_pair(*a, **k)
    def spy_route(self, *a, **k):
        calls["route"] += 1
        return route(self, *a, **k)
    monkeypatch.setattr(_kernels, "run_pair", spy_pair)
    monkeypatch.setattr(L.LSTM, "_fused_lstm_dir", spy_route)
    _check(layer, x)
    assert (calls["pair"] > 0) == big
    assert (calls["route"] > 0) == (not big)


@pytest.mark.parametrize("cell", _PAIR_CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_small_chunks(cell, dtype):
    """run_pair caps its projection chunk; chunk boundaries with lengths, reverse, masks."""
    rng = np.random.default_rng(53)
    layer = _pair_layer(cell, 5, 20, dtype, seed=8, num_threads=2)
    B, T = 5, 11
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    G = {"RNN": 1, "LSTM": 4}.get(layer._cell, 3)
    old_pair = _kernels._set_pair(1)
    old_bytes = _kernels._set_pair_chunk_bytes(3 * B * G * 20 * np.dtype(dtype).itemsize)
    try:
        _check(layer, x)
        _check(layer, x, lengths=[11, 4, 0, 9, 3])
        _check(layer, x, mask=rng.random((T, B)) > 0.3)
    finally:
        _kernels._set_pair_chunk_bytes(old_bytes)
        _kernels._set_pair(old_pair)


# ------------------------------------------------ the batch-lane kernel (fr_wide_t.h)
@pytest.fixture
def wide():
    """Force the batch-lane kernel wherever it applies; restore the defaults after."""
    _kernels._set_path(3)
    old_split = _kernels._set_wide_split(0)
    old_chunk = _kernels._set_wide_chunk_bytes(256 << 10)
    yield
    _kernels._set_path(0)
    _kernels._set_wide_split(old_split)
    _kernels._set_wide_chunk_bytes(old_chunk)


def _wide_layer(cell, I, H, dtype, **kw):
    if cell == "RNN-relu":
        return fastrnn.SimpleRNN(I, H, nonlinearity="relu", dtype=dtype, **kw)
    return CELLS[cell](I, H, dtype=dtype, **kw)


@pytest.mark.parametrize("cell", ["RNN", "RNN-relu", "LSTM", "GRU"])
@pytest.mark.parametrize("split", ["panels", "groups"])
@pytest.mark.parametrize("B", [3, 8, 16, 17, 24, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_splits_lengths_masks(wide, cell, split, B, dtype):
    """Threads split by panels of rows (no barrier; only when the panels divide evenly)
    or by unit groups (a barrier a step), 1-3 threads; partly filled last panels, unit
    group tails (H=13: groups of 3, 4 or 12 units), both directions, sorted lengths
    (finished panels and rows, reverse within each length), masks carry/zero, initial
    states."""
    _kernels._set_wide_split(int(split == "groups"))
    rng = np.random.default_rng(B * 3 + len(cell))
    T, H = 7, 13
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    mask = rng.random((T, B)) > 0.3
    for nt in (1, 2, 3):
        layer = _wide_layer(cell, 6, H, dtype, bidirectional=True, seed=B + nt,
                            num_threads=nt)
        _check(layer, x)
        _check(layer, x, lengths=lengths)
        _check(layer, x, mask=mask)
        _check(layer, x, mask=mask, masked_output="zero")
    layer = _wide_layer(cell, 6, H, dtype, num_layers=2, seed=B, num_threads=2)
    h0 = rng.standard_normal((2, B, H)).astype(dtype)
    hx = (h0, rng.standard_normal((2, B, H)).astype(dtype)) if cell == "LSTM" else h0
    out, st = layer(x, hx)
    ref_out, ref_h, ref_c = rnn_forward(layer, x, hx=hx)
    np.testing.assert_allclose(out, ref_out, *_tol(dtype))
    np.testing.assert_allclose(st[0] if cell == "LSTM" else st, ref_h, *_tol(dtype))
    if cell == "LSTM":
        np.testing.assert_allclose(st[1], ref_c, *_tol(dtype))


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("steps_per_chunk", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_input_chunks(wide, cell, steps_per_chunk, dtype):
    """The transposed inputs live one chunk of steps at a time: several chunks and a
    shorter last one, both splits, lengths (a sequence of length 0) and masks."""
    rng = np.random.default_rng(5)
    B, T, I = 16, 10, 6
    W = _kernels.unit_block(dtype)
    _kernels._set_wide_chunk_bytes(steps_per_chunk * -(-B // W) * I * W * np.dtype(dtype).itemsize)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    for split in (0, 1):
        _kernels._set_wide_split(split)
        layer = CELLS[cell](I, 11, bidirectional=True, dtype=dtype, seed=2, num_threads=2)
        _check(layer, x)
        _check(layer, x, lengths=[10, 7, 7, 2, 0] + [5] * (B - 5))
        _check(layer, x, mask=rng.random((T, B)) > 0.3)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_isa_levels(wide, level, cell, dtype):
    """Each ISA level's lanes (4/8/16 floats) and rows per group (12, or 24 with 32
    registers), and k blocks of the weights (H + I beyond one block)."""
    if level not in _levels():
        pytest.skip(f"this CPU does not run ISA level {level}")
    rng = np.random.default_rng(level)
    _kernels._set_isa_level(level)
    try:
        layer = CELLS[cell](300, 37, dtype=dtype, seed=4, num_threads=2)
        x = rng.standard_normal((4, 19, 300)).astype(dtype)
        _check(layer, x)
        _check(layer, x, lengths=rng.integers(0, 5, 19))
    finally:
        _kernels._set_isa_level(-1)


def test_wide_packing_layout():
    """pack_wide's row-group layout, read back by index (see fr_wide_t.h)."""
    rng = np.random.default_rng(0)
    R = _kernels.wide_rows()
    I, H = 3, 5
    for cell, Gr in ((0, 1), (1, 4), (2, 3)):
        wx = rng.standard_normal((I, Gr * H))
        wh = rng.standard_normal((H, Gr * H))
        bias = rng.standard_normal(Gr * H)
        bhn = rng.standard_normal(H)
        p = _kernels.pack_wide(wx, wh, bias, bhn, H, cell)
        UG = R // Gr
        nG = -(-H // UG)
        p = p.reshape(nG, I + H + 2, R)
        for g in range(nG):
            for u in range(UG):
                j = g * UG + u
                for q in range(Gr):
                    r = u * Gr + q
                    if j >= H:
                        assert not p[g, :, r].any()
                        continue
                    np.testing.assert_array_equal(p[g, :I, r], wx[:, q * H + j])
                    np.testing.assert_array_equal(p[g, I:I + H, r], wh[:, q * H + j])
                    assert p[g, I + H, r] == bias[q * H + j]
                    assert p[g, I + H + 1, r] == (bhn[j] if cell == 2 and q == 2 else 0)


def test_wide_refuses_a_packing_of_another_size(monkeypatch):
    """run_layer checks the batch-lane packing's size before the kernel reads it."""
    from fastrnn import _threads
    # (a first call after a pause keeps no plan: the test would depend on its neighbours)
    monkeypatch.setattr(_threads, "IDLE_SINGLE_S", -1.0)
    layer = fastrnn.SimpleRNN(4, 64, seed=1, num_threads=2)
    x = np.zeros((3, 32, 4), np.float32)
    layer(x)                                   # SimpleRNN at 32 rows: the wide path
    assert layer._wide
    key = next(iter(layer._wide))
    layer._wide[key] = layer._wide[key][:-1]
    del layer._plans                # (kept plans hold the packing they were made with)
    with pytest.raises(ValueError, match="packed for another ISA level"):
        layer(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_weights_start_on_a_cache_line(dtype):
    """Every packing the kernels stream (unit blocks, GRU's split r/z + n blocks,
    batch-lane row groups, the LSTM route's panels) starts on a 64-byte boundary: NumPy
    gives 16, and a 64-byte vector load across two lines made the B=1 kernels ~1.2x
    slower.  Sizes chosen so that NumPy's own buffer would land off a line."""
    from fastrnn import _backward
    for H in (5, 37, 256):
        for cell, G in ((0, 1), (1, 4), (2, 3)):
            w = np.ones((H, G * H), dtype)
            assert _kernels.pack_units(w, H, G).ctypes.data % 64 == 0
            for reset_after in (0, 1):
                p = _kernels.pack_recurrent(w, H, G, cell, reset_after)
                assert p.ctypes.data % 64 == 0
            p = _kernels.pack_wide(w[:3], w, np.ones(G * H, dtype), np.ones(H, dtype), H, cell)
            assert p.ctypes.data % 64 == 0 and p.dtype == dtype and p.flags.c_contiguous
        p = _backward.pack_lstm_forward(np.ones((4 * H, 7), dtype), np.ones((4 * H, H), dtype),
                                        2, 64)
        assert p is None or p.ctypes.data % 64 == 0
    layer = fastrnn.GRU(9, 21, num_layers=2, dtype=dtype, seed=0)
    for per_dir in layer._pack():
        assert all(a.ctypes.data % 64 == 0 for a in per_dir[0][6:8])


def test_wide_default_for_simple_rnn_and_fallbacks():
    """Automatic choice: SimpleRNN packs for the batch-lane kernel where wide_rnn_at
    says (32 rows, H = 64: every ISA; 9 rows, H = 10: not with AVX-512); options it
    does not implement (clip, other activations) stay on the packed kernel and agree."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 32, 4)).astype(np.float32)
    layer = fastrnn.SimpleRNN(4, 64, seed=1, num_threads=2)
    _check(layer, x)
    assert layer._wide
    narrow = fastrnn.SimpleRNN(4, 10, seed=1, num_threads=2)
    _check(narrow, x[:, :9])
    assert bool(narrow._wide) == _rnn_wide_rule(9, 10, 4, 4, 2)
    other = fastrnn.SimpleRNN(4, 64, seed=1, num_threads=2, activations=["softsign"])
    _check(other, x)
    assert not other._wide
    lstm = fastrnn.LSTM(4, 10, seed=1, num_threads=2)
    _check(lstm, x)
    assert not [k for k in lstm._wide if k[0] != "route"]   # (route packings aside)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amd", [0, 1])
def test_wide_default_for_large_gate_layers(cell, dtype, amd):
    """Automatic choice: LSTM / GRU layers with AVX-512, full lanes and >= 1 MiB of
    weights (on a full-width AMD, also 4 panels of rows or 4 MiB: ``amd``, the rule's
    test hook) pack for the batch-lane kernel (elsewhere they do not), and agree with the
    reference: dense, lengths, masks, bidirectional and stacked."""
    import fastrnn.layers as layers
    rng = np.random.default_rng(11)
    H = 192 if cell == "LSTM" else 256        # 1.1 / 1.5 MiB of float32 weights
    B, T = 16, 4
    old = layers._FUSED_LSTM_MIN_B
    layers._FUSED_LSTM_MIN_B = 0              # (the LSTM route would take some of them)
    _kernels._set_amd(amd)
    try:
        layer = CELLS[cell](H, H, num_layers=2, bidirectional=True, dtype=dtype, seed=3,
                            num_threads=2)
        x = rng.standard_normal((T, B, H)).astype(dtype)
        _check(layer, x)
        code, isz = {"LSTM": 1, "GRU": 2}[cell], np.dtype(dtype).itemsize
        # the first layer's input is H, the second's 2H
        want = any(_gates_wide_rule(code, B, H, I, isz, amd=amd) for I in (H, 2 * H))
        assert bool(layer._wide) == want
        _check(layer, x, lengths=rng.integers(0, T + 1, B))
        _check(layer, x, mask=rng.random((T, B)) > 0.3)
        small = CELLS[cell](H, H, dtype=dtype, seed=3, num_threads=2)
        _check(small, rng.standard_normal((T, 12, H)).astype(dtype))   # 12 rows: packed
        assert not small._wide
    finally:
        layers._FUSED_LSTM_MIN_B = old
        _kernels._set_amd(-1)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("B", [1, 3, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deferred_gate_math(level, cell, B, dtype):
    """The packed kernel's batched gate math (LSTM, GRU reset_after; the default) and the
    per-block gate math (``_set_gate_defer(0)``) both match the reference, with unit-block
    tails (H=37), unit and row splits, more (row, block) pairs per step than one batch of
    slots holds (B=40: a flush in the middle of a step), lengths, reverse direction, the
    final state only, and one step at a time."""
    if level not in _levels():
        pytest.skip(f"this CPU does not run ISA level {level}")
    rng = np.random.default_rng(B * 3 + level)
    x = rng.standard_normal((7, B, 5)).astype(dtype)
    lengths = rng.integers(0, 8, B)
    _kernels._set_isa_level(level)
    results = {}
    try:
        for mode in (0, 1):
            assert _kernels._set_gate_defer(mode) in (0, 1)
            layer = CELLS[cell](5, 37, dtype=dtype, seed=B, bidirectional=True,
                                num_threads=2)
            _check(layer, x)
            _check(layer, x, lengths=lengths)
            _, st = layer(x, return_sequences=False)
            uni = CELLS[cell](5, 37, dtype=dtype, seed=B, num_threads=2)
            h = np.zeros((1, B, 37), dtype)
            c = np.zeros((1, B, 37), dtype) if cell == "LSTM" else None
            steps = [uni._step_fast(np.ascontiguousarray(x[t]), h, c).copy()
                     for t in range(x.shape[0])]
            np.testing.assert_allclose(np.stack(steps), uni(x)[0], *_tol(dtype))
            results[mode] = (layer(x)[0], st[0] if cell == "LSTM" else st)
    finally:
        _kernels._set_gate_defer(1)
        _kernels._set_isa_level(-1)
    # the same arithmetic in another order of blocks: equal to rounding
    for a, b in zip(results[0], results[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-14,
                                   atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("B", [16, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_and_unit_split_agree(cell, B, dtype):
    """From ``_set_rowsplit_min`` rows on the packed kernel splits batch rows between the
    threads, below it units: both match the reference at the same batch (lengths too)."""
    rng = np.random.default_rng(B)
    x = rng.standard_normal((6, B, 5)).astype(dtype)
    lengths = rng.integers(0, 7, B)
    kw = {"reset_after": False} if cell == "GRU-reset-before" else {}
    layer = CELLS[cell.split("-")[0]](5, 37, dtype=dtype, seed=B, num_threads=2,
                                      bidirectional=True, **kw)
    old = _kernels._set_rowsplit_min(16)
    try:
        for split_from in (B, B + 1):      # rows, then units
            _kernels._set_rowsplit_min(split_from)
            _check(layer, x)
            _check(layer, x, lengths=lengths)
    finally:
        _kernels._set_rowsplit_min(old)


@pytest.mark.parametrize("spin", [0, 1])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("nt", [2, 3])
def test_unit_split_barriers(spin, cell, nt):
    """The unit split's per-step barrier, the spinning one (default) and OpenMP's: same
    results (GRU reset_before has two barriers a step), more threads than cores too."""
    rng = np.random.default_rng(nt)
    x = rng.standard_normal((12, 3, 5)).astype(np.float32)
    kw = {"reset_after": False} if cell == "GRU-reset-before" else {}
    layer = CELLS[cell.split("-")[0]](5, 40, seed=nt, num_threads=nt, bidirectional=True,
                                      **kw)
    old = _kernels._set_spin_barrier(spin)
    try:
        _check(layer, x)
        _check(layer, x, lengths=[12, 5, 1])
    finally:
        _kernels._set_spin_barrier(old)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRU-reset-before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matvec_prefetch_on_and_off(cell, dtype):
    """The packed matvec's software prefetch (``_set_swpf``, AVX-512 level; by the CPU
    vendor) changes the memory traffic only: the same bits on and off, at the one- and
    two-row loops (B=1, 2), the streaming step, and right against the reference."""
    rng = np.random.default_rng(11)
    try:
        for B in (1, 2, 5):
            kw = {"reset_after": False} if cell == "GRU-reset-before" else {}
            layer = CELLS[cell.split("-")[0]](37, 45, dtype=dtype, seed=B, num_threads=2,
                                               **kw)
            x = rng.standard_normal((7, B, 37)).astype(dtype)
            got = []
            for mode in (0, 1):
                _kernels._set_swpf(mode)
                _check(layer, x)
                got.append(layer(x)[0])
                h = np.zeros((1, B, 45), dtype)
                c = np.zeros((1, B, 45), dtype) if cell == "LSTM" else None
                got.append(np.array([layer._step_fast(np.ascontiguousarray(x[t]), h, c).copy()
                                     for t in range(3)]))
            np.testing.assert_array_equal(got[0], got[2])
            np.testing.assert_array_equal(got[1], got[3])
    finally:
        _kernels._set_swpf(-1)


@pytest.mark.parametrize("mode", [0, 1, -1])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("nt", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_split_overlap(mode, cell, nt, dtype):
    """The packed kernel's overlapped unit split (``_set_step_overlap``: each step first
    multiplies by the thread's own units of h, then waits for the other threads' and
    adds the rest) against the reference and the barrier version: 3-5 unit blocks so a
    middle thread has other units on both sides (3 threads), batch 1 and 3, a chunk of
    steps per step and several, bidirectional, lengths, a mask; repeated calls are
    bit-identical."""
    import fastrnn.layers as layers
    rng = np.random.default_rng(nt * 7 + mode)
    old_mode = _kernels._set_step_overlap(mode)
    old_chunk = layers._SMALL_CHUNK_BYTES
    _kernels._set_path(1)
    try:
        for B, chunk in ((1, 1), (3, 1 << 20)):
            layers._SMALL_CHUNK_BYTES = chunk
            x = rng.standard_normal((9, B, 6)).astype(dtype)
            layer = CELLS[cell](6, 40, dtype=dtype, seed=B + nt, num_threads=nt,
                                bidirectional=True)
            _check(layer, x)
            _check(layer, x, lengths=rng.integers(0, 10, B))
            _check(layer, x, mask=rng.random((9, B)) > 0.3)
            first = layer(x)[0]
            for _ in range(3):
                np.testing.assert_array_equal(layer(x)[0], first)
            _kernels._set_step_overlap(0)
            barrier = layer(x)[0]
            _kernels._set_step_overlap(mode)
            np.testing.assert_allclose(first, barrier,
                                       rtol=1e-6 if dtype == np.float32 else 1e-14,
                                       atol=1e-6 if dtype == np.float32 else 1e-14)
    finally:
        _kernels._set_step_overlap(old_mode)
        _kernels._set_path(0)
        layers._SMALL_CHUNK_BYTES = old_chunk


@pytest.mark.parametrize("itemsize", [4, 8])
def test_unit_split_overlap_rule(itemsize, not_f19):
    """The automatic rule: LSTM / GRU overlap where a thread's recurrent weights take at
    most half of the L2 (and at batch > 1 at least an eighth); SimpleRNN never; never on
    an AMD CPU (any family) nor with AMD family 0x19's rules."""
    from fastrnn import _backward
    old_amd = _kernels._set_amd(0)                    # the rule of the others first
    try:
        _overlap_rule_checks(itemsize, _backward)
    finally:
        _kernels._set_amd(-1)
    assert _kernels.amd() == old_amd


def _overlap_rule_checks(itemsize, _backward):
    l2 = _backward.l2_bytes() or (1 << 20)    # fr_cache.h's reading, shared by both
    U = _kernels.unit_block(np.float32 if itemsize == 4 else np.float64)
    applies = _kernels.step_overlap_applies

    def slice_bytes(G, H):          # 2 threads, H a multiple of 2 U
        return G * H * (H // 2) * itemsize

    for cell, G in ((_kernels.CELL_LSTM, 4), (_kernels.CELL_GRU, 3)):
        H = 2 * U
        while slice_bytes(G, H + 2 * U) * 2 <= l2:
            H += 2 * U
        assert applies(cell, 1, H, 2, itemsize)              # largest within half
        assert not applies(cell, 1, H + 2 * U, 2, itemsize)  # beyond half of L2
        assert not applies(cell, 1, H, 1, itemsize)          # one thread: no split
        assert not applies(cell, 1, H, 3, itemsize)          # halves, no overlap
        assert not applies(cell, 16, H, 2, itemsize)         # row split
        assert not applies(_kernels.CELL_RNN, 1, H, 2, itemsize)
        small = 2 * U
        while slice_bytes(G, small + 2 * U) * 8 < l2:
            small += 2 * U
        assert applies(cell, 1, small, 2, itemsize)           # batch 1: any size
        assert not applies(cell, 3, small, 2, itemsize)       # below an eighth
        assert applies(cell, 3, small + 2 * U, 2, itemsize)
        assert applies(cell, 3, H, 2, itemsize)
        # never with AMD Zen 3 / 4's rules, nor on any AMD (Zen 5)
        for as_amd in (_kernels._set_amd_f19, _kernels._set_amd):
            as_amd(1)
            try:
                for h in (small, H):
                    for B in (1, 3):
                        assert not applies(cell, B, h, 2, itemsize)
            finally:
                as_amd(0)
        assert applies(cell, 1, H, 2, itemsize)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [4, 8, 11, 15, 16, 17, 40])
def test_fused_lstm_route(dtype, B):
    """Plain LSTM directions run through the training forward (AVX2 4 x 3 kernel) where
    ``_backward.fused_lstm_route_at`` says (and, ragged, from 16 sequences on): forced on
    (every batch size) and by the automatic rule, against the NumPy reference and the
    packed kernel (route off), in one chunk of steps, a step per chunk and a few steps per
    chunk (state carried), stacked and bidirectional (the reverse direction gathers
    its rows), go_backwards, lengths (zero-length sequences keep their initial state),
    initial states, return_sequences=False, 1-3 threads; counts the routed directions;
    peepholes / a mask are never routed."""
    import fastrnn.layers as layers
    from fastrnn import _backward
    fast = _backward.fused_lstm_forward_fast()
    rng = np.random.default_rng(B)
    x = rng.standard_normal((7, B, 5)).astype(dtype)
    lengths = rng.integers(0, 8, B)
    lengths[1] = 7
    hx = (rng.standard_normal((4, B, 13)).astype(dtype),
          rng.standard_normal((4, B, 13)).astype(dtype))
    calls = []
    orig = fastrnn.LSTM._fused_lstm_dir

    def counted(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    old = layers._FUSED_LSTM_MIN_B, layers._FUSED_LSTM_CHUNK_BYTES
    old_size = layers._FUSED_LSTM_MIN_ROWS, layers._FUSED_LSTM_MIN_MACS
    rtol, atol = _tol(dtype)
    try:
        fastrnn.LSTM._fused_lstm_dir = counted
        # (these calls are short: the size rule, test_fused_lstm_route_size_rule, off)
        layers._FUSED_LSTM_MIN_ROWS = layers._FUSED_LSTM_MIN_MACS = 0
        for nt in (1, 2, 3):
            layer = fastrnn.LSTM(5, 13, num_layers=2, bidirectional=True, dtype=dtype,
                                 seed=B + nt, num_threads=nt)
            back = fastrnn.LSTM(5, 13, go_backwards=True, dtype=dtype, seed=B, num_threads=nt)
            for kw in (dict(), dict(lengths=lengths), dict(hx=hx, lengths=lengths)):
                for mode, chunk in ((1, 32 << 20), (-1, 32 << 20), (1, 1), (1, 5000)):
                    # forced from one sequence on, the rule; chunks of one step, ~5 kB
                    layers._FUSED_LSTM_MIN_B = mode
                    layers._FUSED_LSTM_CHUNK_BYTES = chunk
                    want = fast and (mode == 1 or (
                        _backward.fused_lstm_route_at(nt, B, 13, np.dtype(dtype).itemsize,
                                                      layers._l2_bytes(), False,
                                                      "lengths" in kw)
                        and ("lengths" not in kw or B >= 16)
                        # (the pair goes first where its rule says 2)
                        and _kernels.pair_applies(1, B, 7, 13, 0, 1, nt,
                                                  np.dtype(dtype).itemsize) != 2))
                    n0 = len(calls)
                    a = layer(x, **kw)
                    assert len(calls) - n0 == (4 if want else 0)
                    if "hx" not in kw:            # (the reference starts from zero states)
                        _check(layer, x, **kw)
                        _check(back, x, **kw)
                    a_last = layer(x, return_sequences=False, **kw)
                    layers._FUSED_LSTM_MIN_B = 0
                    b = layer(x, **kw)
                    b_last = layer(x, return_sequences=False, **kw)
                    for u, v in ((a[0], b[0]), (a[1][0], b[1][0]), (a[1][1], b[1][1]),
                                 (a_last[0], b_last[0]), (a_last[1][1], b_last[1][1])):
                        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)
        layers._FUSED_LSTM_MIN_B = 1
        n0 = len(calls)
        peep = fastrnn.LSTM(5, 13, peepholes=True, dtype=dtype, seed=1, num_threads=2)
        _check(peep, x)
        plain = fastrnn.LSTM(5, 13, dtype=dtype, seed=1, num_threads=2)
        _check(plain, x, mask=rng.random((7, B)) > 0.2)
        assert len(calls) == n0
    finally:
        fastrnn.LSTM._fused_lstm_dir = orig
        layers._FUSED_LSTM_MIN_B, layers._FUSED_LSTM_CHUNK_BYTES = old
        layers._FUSED_LSTM_MIN_ROWS, layers._FUSED_LSTM_MIN_MACS = old_size


def test_fused_lstm_route_size_rule(not_f19):
    """Short or tiny LSTM calls stay on the packed kernel (the route's ~20 us of fixed
    cost doubled them), long ones at the same batch size take the route; same results
    (the rules of a CPU that routes 8 sequences: not_f19)."""
    import fastrnn.layers as layers
    from fastrnn import _backward
    if not _backward.fused_lstm_forward_fast():
        pytest.skip("no fused LSTM training forward on this CPU")
    B = 8       # H: a size the batch rule routes on this CPU (half-width AVX-512: 128)
    H = next((h for h in (64, 128)
              if _backward.fused_lstm_route_at(2, B, h, 4, layers._l2_bytes(), False)), None)
    if H is None:
        pytest.skip("the batch rule does not route B=8 H=64 or 128 on this CPU")
    calls = []
    orig = fastrnn.LSTM._fused_lstm_dir

    def counted(self, *a, **k):
        calls.append(a[0])
        return orig(self, *a, **k)
    rng = np.random.default_rng(3)
    layer = fastrnn.LSTM(H, H, num_layers=2, seed=1, num_threads=2)
    try:
        fastrnn.LSTM._fused_lstm_dir = counted
        for T, routed in ((1, False), (10, False), (40, True)):
            x = rng.standard_normal((T, B, H)).astype(np.float32)
            n0 = len(calls)
            _check(layer, x)
            assert len(calls) - n0 == (2 if routed else 0), T
        tiny = fastrnn.LSTM(8, 8, seed=1, num_threads=2)          # 200 rows, 0.1 M MACs
        n0 = len(calls)
        _check(tiny, rng.standard_normal((25, B, 8)).astype(np.float32))
        assert len(calls) == n0
        assert not layers._fused_lstm_ok(B, 2, False, 8, 4, False, 25, 8)
        assert layers._fused_lstm_ok(B, 2, False, H, 4, False, 40, H)
        assert not layers._fused_lstm_ok(B, 2, False, H, 4, False, 15, H)   # 120 rows
    finally:
        fastrnn.LSTM._fused_lstm_dir = orig


def test_lstm_route_packing_is_cached_and_follows_the_weights():
    """The LSTM route packs a layer's weights once (where the training forward splits by
    rows) and reuses them; changed weights (load_state_dict, mark_weights_changed) are
    packed again; wrong packings are refused by name."""
    import fastrnn.layers as layers
    from fastrnn import _backward
    if not _backward.fused_lstm_forward_fast():
        pytest.skip("no fused LSTM training forward on this CPU")
    rng = np.random.default_rng(8)
    B = 24
    x = rng.standard_normal((6, B, 7)).astype(np.float32)
    old = layers._FUSED_LSTM_MIN_B
    packs = []
    orig = _backward.pack_lstm_forward

    def counted(*a):
        packs.append(1)
        return orig(*a)
    try:
        layers._FUSED_LSTM_MIN_B = 1
        _backward.pack_lstm_forward = counted
        layer = fastrnn.LSTM(7, 40, num_layers=2, bidirectional=True, seed=1, num_threads=2)
        assert _backward.forward_splits_rows(2, B, 7, 40, 4)
        _check(layer, x)
        assert len(packs) == 4                      # 2 layers x 2 directions
        _check(layer, x)
        _check(layer, x, lengths=rng.integers(1, 7, B))   # ragged: later steps by units
        assert len(packs) == 4
        sd = layer.state_dict()
        sd["weight_hh_l1_reverse"] = sd["weight_hh_l1_reverse"] * 0.5
        layer.load_state_dict(sd)
        _check(layer, x)
        assert len(packs) == 8
        layer.parameters()["weight_ih_l0"][:] *= -1.0
        layer.mark_weights_changed()
        _check(layer, x)
        assert len(packs) == 12
    finally:
        _backward.pack_lstm_forward = orig
        layers._FUSED_LSTM_MIN_B = old
    # the kernel refuses packings of another size, misaligned ones, and the unit split's
    H, I = 40, 7
    wih = rng.standard_normal((4 * H, I)).astype(np.float32)
    whh = rng.standard_normal((4 * H, H)).astype(np.float32)
    pre = _backward.pack_lstm_forward(wih, whh, 2, B)
    assert _backward.pack_lstm_forward(wih, whh, 2, 3) is None      # 3 rows: units
    bias = np.zeros(4 * H, np.float32)
    zh = np.zeros(H, np.float32)
    d1 = np.zeros((1, 1), np.float32)
    h0, c0 = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)

    lay = _backward.lstm_forward_layout(2, B, I, H, 4)

    def run(pack, nb=B, layout=lay):
        xx = rng.standard_normal((nb, I)).astype(np.float32)
        _backward.forward(1, xx, wih, whh, bias, zh, d1, np.zeros(1, np.intp),
                          np.full(1, nb, np.intp), h0[:nb].copy(), c0[:nb].copy(),
                          np.empty((nb, H), np.float32), 0, np.empty((nb, 4 * H), np.float32),
                          np.empty((nb, H), np.float32), H, 0, 0, 0, 2, pack, layout)
    run(pre)
    with pytest.raises(ValueError, match="another layout"):
        run(pre, layout=lay + 1)
    with pytest.raises(ValueError, match="another size"):
        run(pre[:-1])
    raw = np.empty(pre.size + 16, np.float32)
    mis = raw[1:1 + pre.size] if raw[1:].ctypes.data % 64 else raw[2:2 + pre.size]
    mis[:] = pre
    with pytest.raises(ValueError, match="aligned"):
        run(mis)
    with pytest.raises(ValueError, match="row split only"):
        run(pre, nb=3, layout=_backward.lstm_forward_layout(2, 3, I, H, 4))


def test_lstm_route_rule_by_isa():
    """fused_lstm_route_at: the AVX2 rule (by rows, thread count) and, with AVX-512, the
    dense rule (threads, 8-15 sequences, size) and the ragged one (by whether the
    recurrent weights fit in L2 and whether the batch-lane kernel runs the layer;
    half-width AVX-512: by H)."""
    from fastrnn import _backward
    r = _backward.fused_lstm_route_at
    if _backward.small_gemm_level() == 2:
        l2 = 2 << 20
        # dense: 2+ threads, 8-15 sequences, H >= 64, weights within 0.3 of an L2
        for nt in (1, 2, 3):
            for B in (1, 4, 5, 7, 8, 12, 15, 16, 32, 39, 40, 47, 48, 64):
                for H, itemsize in ((32, 4), (64, 4), (192, 4), (256, 4), (512, 4),
                                    (128, 8), (192, 8)):
                    want = (nt >= 2 and 8 <= B <= 15 and H >= 64
                            and 40 * H * H * itemsize <= 3 * l2)
                    assert r(nt, B, H, itemsize, l2, half=0, amd=0) == want, (nt, B, H,
                                                                              itemsize)
                    # half-width AVX-512 (Zen 4): 2+ threads, H >= 128, B < 40, where the
                    # training forward splits by rows; full width on an AMD (Zen 5): the
                    # same from 12 to 39 sequences, 47 where H <= 256
                    rows = (nt >= 2 and H >= 128
                            and _backward.forward_splits_rows(nt, B, H, H, itemsize))
                    assert (r(nt, B, H, itemsize, l2, half=1)
                            == (rows and B < 40)), (nt, B, H, itemsize)
                    top = 48 if H <= 256 else 40
                    assert (r(nt, B, H, itemsize, l2, half=0, amd=1)
                            == (rows and 12 <= B < top)), (nt, B, H, itemsize)
        assert (r(2, 8, 192, 4, l2, half=0, amd=0) and not r(2, 8, 256, 4, l2, half=0, amd=0)
                and not r(1, 8, 192, 4, l2, half=0, amd=0))
        assert r(2, 12, 128, 8, l2, half=0, amd=0) and not r(2, 12, 192, 8, l2, half=0, amd=0)
        assert r(2, 16, 256, 4, l2, half=0, amd=1) and not r(2, 16, 256, 4, l2, half=0, amd=0)
        assert not r(2, 8, 256, 4, l2, half=0, amd=1) and r(2, 8, 256, 4, l2, half=1)
        assert r(2, 44, 256, 4, l2, half=0, amd=1) and not r(2, 44, 256, 4, l2, half=1)
        assert not r(2, 48, 256, 4, l2, half=0, amd=1)
        assert not r(2, 44, 512, 4, l2, half=0, amd=1) and r(2, 36, 512, 4, l2, half=0, amd=1)
        assert r(2, 16, 256, 4, l2, half=1) and not r(2, 40, 256, 4, l2, half=1)
        assert not r(2, 16, 64, 4, l2, half=1) and not r(1, 16, 256, 4, l2, half=1)
        assert r(2, 32, 512, 4, l2, half=1)
        # half-width, ragged, 2+ threads: H >= 96, batch-lane kernel or not
        assert r(2, 16, 96, 4, l2, True, True, 1) and r(3, 64, 512, 8, l2, True, True, 1)
        assert not r(2, 16, 64, 4, l2, True, True, 1)
        assert not r(2, 64, 32, 4, l2, False, True, 1)
        # half-width, ragged, one thread: never (1.03-1.24x the packed kernel's time)
        assert not any(r(1, B, H, 4, l2, False, True, 1) or r(1, B, H, 8, l2, False, True, 1)
                       for B in (1, 12, 16, 64) for H in (32, 96, 256, 512))
        # the machine's own rule
        assert r(2, 16, 256, 4, l2) == r(2, 16, 256, 4, l2, half=int(_kernels.avx512_half()),
                                         amd=int(_kernels.amd()))
        # ragged (layers asks from 16 sequences on): the earlier rule
        assert r(2, 16, 256, 4, l2, False, True, 0) and r(2, 64, 256, 4, l2, True, True, 0)
        assert not r(2, 16, 256, 4, l2, True, True, 0)          # batch-lane kernel, 16 rows
        assert not r(2, 16, 256, 4, l2, True, True, 0, 1)       # (also on an AMD)
        assert not r(2, 16, 512, 4, l2, True, True, 0)          # beyond L2: batch-lane kernel
        assert not r(2, 4, 256, 4, l2, False, True, 0) and r(2, 5, 256, 4, l2, False, True, 0)
        assert r(2, 12, 512, 4, l2, False, True, 0) and r(1, 12, 512, 4, l2, False, True, 0)
        assert r(1, 2, 256, 4, l2, False, True, 0) and not r(1, 1, 256, 4, l2, False, True, 0)
    else:
        assert r(1, 4) and not r(1, 5) and r(1, 7)
        assert not r(2, 6) and r(2, 8) and r(2, 16)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_panel_pairs(wide, cell, dtype):
    """The batch-lane kernel runs a thread's panels of rows two at a time (each weight
    broadcast feeding both): the same sums in the same order as one at a time, so
    bit-identical, with an odd panel left over, both splits, lengths (panels finishing
    early), and against the reference."""
    rng = np.random.default_rng(21)
    W = _kernels.unit_block(dtype)
    B = 5 * W - 3                                 # five panels, the last partly filled
    x = rng.standard_normal((6, B, 9)).astype(dtype)
    lengths = rng.integers(0, 7, B)
    lengths[0] = 6
    for split in (0, 1):
        _kernels._set_wide_split(split)
        for nt in (1, 2):
            layer = CELLS[cell](9, 30, bidirectional=True, dtype=dtype, seed=nt,
                                num_threads=nt)
            outs = []
            for pairs in (1, 0):
                old = _kernels._set_wide_pairs(pairs)
                try:
                    outs.append((layer(x), layer(x, lengths=lengths)))
                finally:
                    _kernels._set_wide_pairs(old)
            for a, b in zip(outs[0], outs[1]):
                np.testing.assert_array_equal(a[0], b[0])
            _check(layer, x)
            _check(layer, x, lengths=lengths)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_no_halves_below_the_parallel_work(cell):
    """A layer whose step is below the kernel's parallel-work size runs on one thread
    whatever it is given, so it sums the recurrent product in one pass, not in the
    halves that keep a batch of one's bits equal across thread counts (they cost GRU
    B=1 T=100 H=64 1.33x the time): forcing the overlapped split then changes nothing.
    Above that size the halves are taken, and still give the same bits on 1 and 2
    threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 1, 48)).astype(np.float32)
    old_mode = _kernels._set_step_overlap(0)
    _kernels._set_path(1)
    try:
        layer = CELLS[cell](48, 48, seed=3, num_threads=2)
        G = layer.gate_count
        old_work = _kernels._set_min_parallel_work(G * 48 * 48 + 1)
        plain = layer(x)[0]
        _kernels._set_step_overlap(1)
        np.testing.assert_array_equal(layer(x)[0], plain)
        _kernels._set_min_parallel_work(G * 48 * 48)          # halves from here on
        halves = [layer(x, num_threads=n)[0] for n in (1, 2)]
        np.testing.assert_array_equal(halves[0], halves[1])
        assert not np.array_equal(halves[0], plain)          # (a different sum order)
        np.testing.assert_allclose(halves[0], plain, rtol=1e-5, atol=1e-6)
    finally:
        _kernels._set_min_parallel_work(old_work)
        _kernels._set_step_overlap(old_mode)
        _kernels._set_path(0)


def test_wide_fills_lanes_rule():
    """A ragged batch stays on the batch-lane kernel only where its panels, summed over
    the steps, carry at most 1/8 padding (the dense rule's bound)."""
    L = _kernels.unit_block(np.float32)
    dense = np.full(50, 4 * L)
    assert _kernels.wide_fills_lanes(dense)
    assert _kernels.wide_fills_lanes(np.full(50, 4 * L - 1))      # 1/64 padding
    assert not _kernels.wide_fills_lanes(np.full(50, 4 * L - L // 2 - 1))
    # lengths mostly 10-20 and one of 200 (bench_varlen's skewed batch)
    lens = np.r_[200, np.full(63, 15)]
    skew = np.array([(lens > s).sum() for s in range(200)])
    assert not _kernels.wide_fills_lanes(skew)
    # lengths spread evenly over T/2..T, sorted: each panel's rows end close together
    spread = np.sort(np.linspace(50, 100, 64).astype(int))[::-1]
    assert _kernels.wide_fills_lanes(np.array([(spread > s).sum() for s in range(100)]))
    # float64: panels of half as many rows (7 full ones here)
    half = np.full(50, 4 * L - L // 2)
    assert not _kernels.wide_fills_lanes(half) and _kernels.wide_fills_lanes(half, 8)
    assert _kernels.wide_fills_lanes(np.zeros(0, np.intp))


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skewed_ragged_batch_any_path(cell, dtype):
    """A skewed ragged batch (one long sequence among short ones) gives the reference's
    numbers on the automatic choice (the packed kernel where the lanes would be mostly
    empty) and on the batch-lane kernel forced."""
    rng = np.random.default_rng(61)
    W = _kernels.unit_block(dtype)
    B, T = 4 * W, 40
    layer = CELLS[cell](9, 70, dtype=dtype, seed=3, num_threads=2)
    x = rng.standard_normal((T, B, 9)).astype(dtype)
    lengths = np.r_[T, rng.integers(1, 6, B - 1)]
    _check(layer, x, lengths=lengths)
    old = _kernels._set_path(3)
    try:
        _check(layer, x, lengths=lengths)
    finally:
        _kernels._set_path(old)


def test_skewed_ragged_batch_leaves_the_batch_lane_kernel():
    """Where the size rules choose the batch-lane kernel (SimpleRNN, 64 rows, H=256), a
    dense batch and an evenly ragged one run on it (the ragged one not on half-width
    AVX-512: the packed kernel there), a skewed one (one long sequence) on the packed
    kernel; the same numbers as the reference each time."""
    rng = np.random.default_rng(67)
    B, T, H = 64, 30, 256
    layer = fastrnn.SimpleRNN(H, H, seed=4, num_threads=2)
    assert _kernels.choose_path(0, B, H, 0, 1, 2) == "wide"
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    cases = ((None, True),
             (np.sort(rng.integers(T // 2, T + 1, B))[::-1], not _kernels.avx512_half()),
             (np.r_[T, rng.integers(1, 4, B - 1)], False))
    for lengths, wide in cases:
        n0 = _kernels._wide_run_count()
        _check(layer, x, lengths=lengths)
        assert (_kernels._wide_run_count() > n0) == wide, lengths


def test_wide_ragged_rule():
    """wide_ragged_mode: half-width AVX-512 never (0); other AMD CPUs, where the threads
    would split the panels (2+ threads, as many panels each, 2+ for LSTM / GRU), an LSTM
    / GRU on the packed kernel (0) and a SimpleRNN split by unit groups (2); else as a
    dense batch (1)."""
    rule = _kernels.wide_ragged_mode
    LSTM, GRU, RNN = 1, 2, 0
    for cell in (LSTM, GRU, RNN):
        assert rule(cell, 64, 2, 16, half=1, amd_cpu=1) == 0
        assert rule(cell, 64, 2, 16, half=0, amd_cpu=0) == 1
        assert rule(cell, 64, 1, 16, half=0, amd_cpu=1) == 1   # one thread: no split
        assert rule(cell, 48, 2, 16, half=0, amd_cpu=1) == 1   # 3 panels: unit groups
    for cell in (LSTM, GRU):
        assert rule(cell, 64, 2, 16, half=0, amd_cpu=1) == 0   # 4 panels, 2 a thread
        assert rule(cell, 128, 2, 16, half=0, amd_cpu=1) == 0
        assert rule(cell, 64, 2, 8, half=0, amd_cpu=1) == 0    # float64 lanes
        assert rule(cell, 32, 2, 16, half=0, amd_cpu=1) == 1   # one panel a thread
        assert rule(cell, 16, 2, 8, half=0, amd_cpu=1) == 1
    assert rule(RNN, 32, 2, 16, half=0, amd_cpu=1) == 2        # SimpleRNN: from one
    assert rule(RNN, 64, 2, 16, half=0, amd_cpu=1) == 2
    assert rule(RNN, 16, 2, 16, half=0, amd_cpu=1) == 1


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_ragged_panel_split_off_the_batch_lane_kernel_on_amd(cell):
    """An evenly ragged LSTM / GRU batch of 64 rows (H=256: the size rules choose the
    batch-lane kernel with AVX-512) runs on it where the AMD rule is off and on the
    packed kernel where it is on (the threads' panels would be unbalanced); the
    reference's numbers either way.  Without AVX-512 the packed kernel both times."""
    rng = np.random.default_rng(71)
    B, T, H = 64, 20, 256
    layer = CELLS[cell](H, H, seed=5, num_threads=2)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = np.sort(rng.integers(T // 2, T + 1, B))[::-1]
    avx512 = _kernels.choose_path(1 if cell == "LSTM" else 2, B, H, 0, 1, 2) == "wide"
    _kernels._set_amd_f19(0)
    old_route = layers._FUSED_LSTM_MIN_B
    layers._FUSED_LSTM_MIN_B = 0          # the inference kernels, not the LSTM route
    try:
        for amd in (0, 1):
            _kernels._set_amd(amd)
            n0 = _kernels._wide_run_count()
            _check(layer, x, lengths=lengths)
            assert (_kernels._wide_run_count() > n0) == (avx512 and not amd), amd
    finally:
        _kernels._set_amd(-1)
        _kernels._set_amd_f19(-1)
        layers._FUSED_LSTM_MIN_B = old_route


def test_ragged_simplernn_splits_batch_lane_kernel_by_groups_on_amd():
    """An evenly ragged SimpleRNN batch of 64 rows (H=256: the batch-lane kernel with
    AVX-512) runs on it either way, split by unit groups where the AMD rule is on (its
    panels would give the first thread the longest sequences), by panels where it is
    off; the reference's numbers both times."""
    rng = np.random.default_rng(73)
    B, T, H = 64, 20, 256
    layer = fastrnn.SimpleRNN(H, H, seed=6, num_threads=2)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = np.sort(rng.integers(T // 2, T + 1, B))[::-1]
    avx512 = _kernels.choose_path(0, B, H, 0, 1, 2) == "wide"
    _kernels._set_amd_f19(0)
    try:
        for amd in (0, 1):
            _kernels._set_amd(amd)
            n0, g0 = _kernels._wide_run_count(), _kernels._wide_run_count(True)
            _check(layer, x, lengths=lengths)
            assert (_kernels._wide_run_count() > n0) == avx512, amd
            assert (_kernels._wide_run_count(True) > g0) == (avx512 and amd == 1), amd
    finally:
        _kernels._set_amd(-1)
        _kernels._set_amd_f19(-1)


def test_row_split_balances_ragged_batches():
    """The packed kernel's row split (fr_row_cut): a dense batch by count; a packed
    ragged batch (lengths sorted longest first) where the lengths' running sum reaches
    each thread's share, so every thread gets about the same row steps (within the
    longest sequence); the cuts always partition the rows."""
    cuts = _kernels._row_cuts
    assert cuts([7] * 10, 2, False) == [0, 5, 10]
    assert cuts([7] * 9, 3, False) == [0, 3, 6, 9]
    assert cuts([10, 10, 10, 10], 2) == [0, 2, 4]
    assert cuts([100] + [10] * 9, 2) == [0, 1, 10]
    assert cuts([5, 3, 0, 0], 2) == [0, 1, 4]
    assert cuts([], 2) == [0, 0, 0]
    rng = np.random.default_rng(4)
    for _ in range(200):
        B, nth = int(rng.integers(1, 80)), int(rng.integers(1, 5))
        lens = np.sort(rng.integers(0, 200, B))[::-1]
        c = cuts(lens, nth)
        assert c[0] == 0 and c[-1] == B and all(a <= b for a, b in zip(c, c[1:]))
        work = [int(lens[a:b].sum()) for a, b in zip(c, c[1:])]
        assert max(work) - min(work) <= 2 * int(lens[0]) + 1, (lens, c, work)
    # by count, the first of two threads gets the long half of lengths T/2..T
    lens = np.arange(100, 50, -1)
    by_count = cuts(lens, 2, False)
    assert lens[:by_count[1]].sum() > 1.15 * lens[by_count[1]:].sum()
    c = cuts(lens, 2)
    assert abs(int(lens[:c[1]].sum()) - int(lens[c[1]:].sum())) <= int(lens[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_put_rows_matches_numpy_scatter(dtype):
    """put_rows (the ragged calls' scatter of packed rows into the padded output): the
    same array as NumPy's ``dst[rows] = src`` for whole arrays, column blocks of a wider
    array (a row stride), widths 1 and 7, no rows; arrays whose values have gaps fall
    back to NumPy's assignment; bad arguments raise before anything is written."""
    rng = np.random.default_rng(7)
    for n_dst, width, n in ((800, 32, 799), (10, 1, 3), (9, 7, 9), (5, 7, 0)):
        rows = rng.permutation(n_dst)[:n].astype(np.intp)
        src = rng.standard_normal((n, width)).astype(dtype)
        want = np.zeros((n_dst, width), dtype)
        want[rows] = src
        got = np.zeros((n_dst, width), dtype)
        _kernels.put_rows(got, rows, src)
        assert np.array_equal(got, want)
        # a column block of a wider array (the route's reverse direction)
        wide = rng.standard_normal((n_dst, 3 * width)).astype(dtype)
        want = wide.copy()
        want[rows, width:2 * width] = src
        _kernels.put_rows(wide[:, width:2 * width], rows, src)
        assert np.array_equal(wide, want)
    # rows in reverse order (a negative row stride)
    dst = np.zeros((5, 4), dtype)
    src = rng.standard_normal((2, 4)).astype(dtype)
    want = dst.copy()
    want[::-1][[0, 3]] = src
    _kernels.put_rows(dst[::-1], np.array([0, 3], np.intp), src)
    assert np.array_equal(dst, want)
    # values with gaps between them: NumPy's assignment, the same result
    dst = np.zeros((6, 8), dtype)
    src = rng.standard_normal((3, 8)).astype(dtype)
    want = dst.copy()
    want[[4, 0, 2], ::2] = src[:, ::2]
    _kernels.put_rows(dst[:, ::2], np.array([4, 0, 2], np.intp), src[:, ::2])
    assert np.array_equal(dst, want)
    # bad arguments: nothing written
    dst = np.zeros((4, 3), dtype)
    src = np.ones((2, 3), dtype)
    with pytest.raises(IndexError, match="row 4 outside the 4 rows"):
        _kernels.put_rows(dst, np.array([0, 4], np.intp), src)
    with pytest.raises(IndexError, match="row -1 outside"):
        _kernels.put_rows(dst, np.array([1, -1], np.intp), src)
    assert not dst.any()
    with pytest.raises(IndexError, match="row 3 outside the 0 rows"):
        _kernels.put_rows(np.zeros((0, 3), dtype), np.array([3], np.intp), src[:1])
    with pytest.raises(IndexError, match="row 5 outside the 4 rows"):
        _kernels.put_rows(np.zeros((4, 0), dtype), np.array([5], np.intp),
                          np.zeros((1, 0), dtype))
    with pytest.raises(ValueError, match="3 row indices for 2 rows"):
        _kernels.put_rows(dst, np.array([0, 1, 2], np.intp), src)
    with pytest.raises(ValueError, match="one dtype and width"):
        _kernels.put_rows(dst, np.array([0, 1], np.intp), src.astype(np.float16))
    with pytest.raises(ValueError, match="one dtype and width"):
        _kernels.put_rows(dst, np.array([0, 1], np.intp), np.ones((2, 4), dtype))
    dst.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _kernels.put_rows(dst, np.array([0, 1], np.intp), src)
