"""Speed of fastrnn beside PyTorch, ONNX Runtime (and OpenVINO when installed).

    PYTHONPATH=. python -m pytest bench/bench_speed.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results.json
    python bench/report.py bench/results.json     # -> bench/README table + bench/speed.png

Every case of the speed issue's table is one pytest-benchmark group holding fastrnn and
the peers on the same input, same thread count (2 unless the case says otherwise):
PyTorch (torch.set_num_threads, inference_mode), ONNX Runtime (the same torch module
exported with torch.onnx.export; intra_op_num_threads), OpenVINO (the same ONNX graph,
INFERENCE_NUM_THREADS).  Also: the SGEMM peak of this machine (numpy 2048^3), thread
scaling (1 vs 2) for B=16 and B=64, one LSTM step from Python (B=1, H=256, state carried),
and the long-sequence memory case (T=100000, B=1, H=256, final state only).
No timing thresholds here: this measures, report.py compares.
"""
import io
import os
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import fastrnn  # noqa: E402

# threads of every implementation (the table: 2; FASTRNN_BENCH_THREADS=1 for the
# one-thread comparison a process-per-core deployment sees)
NT = int(os.environ.get("FASTRNN_BENCH_THREADS", "2"))
torch = pytest.importorskip("torch")
try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None
try:
    import openvino as ov
except ImportError:  # pragma: no cover
    ov = None

# (name, cell, num_layers, bidirectional, B, T, H, dtype)
CASES = [
    ("LSTM B=1 T=100 H=256", "LSTM", 1, False, 1, 100, 256, "float32"),
    ("LSTM B=1 T=100 H=512", "LSTM", 1, False, 1, 100, 512, "float32"),
    ("LSTM B=16 T=100 H=256", "LSTM", 1, False, 16, 100, 256, "float32"),
    ("LSTM B=64 T=50 H=512", "LSTM", 1, False, 64, 50, 512, "float32"),
    ("2-layer BiLSTM B=8 T=100 H=256", "LSTM", 2, True, 8, 100, 256, "float32"),
    ("GRU B=1 T=100 H=256", "GRU", 1, False, 1, 100, 256, "float32"),
    ("GRU B=16 T=100 H=256", "GRU", 1, False, 16, 100, 256, "float32"),
    ("GRU B=64 T=50 H=512", "GRU", 1, False, 64, 50, 512, "float32"),
    ("SimpleRNN B=1 T=100 H=256", "RNN", 1, False, 1, 100, 256, "float32"),
    ("float64 LSTM B=16 T=100 H=256", "LSTM", 1, False, 16, 100, 256, "float64"),
]
SCALING = [("LSTM", 16, 100, 256), ("LSTM", 64, 50, 512)]
TORCH_CLS = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}
FR_CLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.SimpleRNN}


def flops(cell, L, bi, B, T, H):
    """Multiply-adds x 2 of the GEMM/matvec work (input and recurrent products), I = H."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    D = 2 if bi else 1
    total = 0
    for layer in range(L):
        I = H if layer == 0 else D * H
        total += D * 2 * T * B * (I + H) * G * H
    return total


_models = {}


def models(cell, L, bi, H, dtype):
    key = (cell, L, bi, H, dtype)
    if key not in _models:
        torch.manual_seed(0)
        tm = getattr(torch.nn, TORCH_CLS[cell])(H, H, num_layers=L, bidirectional=bi)
        tm = tm.double() if dtype == "float64" else tm
        tm.eval()
        fm = fastrnn.from_torch(tm)
        _models[key] = (tm, fm)
    return _models[key]


def _onnx_bytes(tm, x):
    f = io.BytesIO()
    torch.onnx.export(tm, (torch.from_numpy(x),), f, input_names=["x"],
                      output_names=["y", "hn"] if not isinstance(tm, torch.nn.LSTM)
                      else ["y", "hn", "cn"], dynamo=False, opset_version=17)
    return f.getvalue()


def ort_session(tm, x):
    """ONNX Runtime session (NT intra-op threads) for the torch module exported on x; raises
    when ORT cannot run the graph (its CPU LSTM/GRU kernels are float32 only)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = NT
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(_onnx_bytes(tm, x), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": x})
    return sess


def ov_request(tm, x):
    """OpenVINO infer request (NT threads, float32) for the same ONNX graph."""
    import tempfile
    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        with open(path, "wb") as f:
            f.write(_onnx_bytes(tm, x))
        # f32 explicitly: on CPUs with AVX512-BF16 OpenVINO would otherwise pick bf16
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_NUM_THREADS": NT,
                                       "INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request()


def torch_runner(tm, x, nt=NT):
    """The torch module on x (nt threads, inference mode)."""
    torch.set_num_threads(nt)
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return tm(xt)
    return run


def _extra(benchmark, case, impl, fl):
    benchmark.extra_info.update(case=case, impl=impl, flops=fl, threads=NT)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("impl", ["fastrnn", "torch", "onnxruntime", "openvino"])
def test_speed(benchmark, case, impl):
    name, cell, L, bi, B, T, H, dtype = case
    benchmark.group = name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    tm, fm = models(cell, L, bi, H, dtype)
    fl = flops(cell, L, bi, B, T, H)
    _extra(benchmark, name, impl, fl)
    if impl == "fastrnn":
        fastrnn.set_num_threads(NT)
        benchmark.pedantic(fm, args=(x,), rounds=30, iterations=1, warmup_rounds=3)
    elif impl == "torch":
        benchmark.pedantic(torch_runner(tm, x), rounds=30, iterations=1, warmup_rounds=3)
    elif impl == "onnxruntime":
        if ort is None:
            pytest.skip("onnxruntime not installed")
        try:
            sess = ort_session(tm, x)
        except Exception as e:  # ORT's CPU LSTM/GRU kernels are float32 only
            pytest.skip(f"onnxruntime cannot run this graph: {type(e).__name__}")
        benchmark.pedantic(sess.run, args=(None, {"x": x}), rounds=30, iterations=1,
                           warmup_rounds=3)
    else:
        if ov is None:
            pytest.skip("openvino not installed")
        if dtype != "float32":
            pytest.skip("OpenVINO CPU runs float32 only")
        req = ov_request(tm, x)
        benchmark.pedantic(req.infer, args=({0: x},), rounds=30, iterations=1, warmup_rounds=3)


def test_sgemm_peak(benchmark):
    """numpy sgemm 2048^3 with 2 threads: the 'peak' the GFLOP/s figures are compared to."""
    from threadpoolctl import threadpool_limits
    benchmark.group = "SGEMM peak (numpy 2048^3)"
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    b = a.copy()
    benchmark.extra_info.update(case="sgemm", impl="numpy", flops=2 * 2048 ** 3, threads=NT)
    with threadpool_limits(NT):
        benchmark.pedantic(np.matmul, args=(a, b), rounds=15, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("case", SCALING, ids=[f"{c[0]} B={c[1]}" for c in SCALING])
@pytest.mark.parametrize("impl", ["fastrnn", "torch"])
@pytest.mark.parametrize("nt", [1, 2])
def test_thread_scaling(benchmark, case, impl, nt):
    cell, B, T, H = case
    benchmark.group = f"thread scaling {cell} B={B} T={T} H={H}"
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    tm, fm = models(cell, 1, False, H, "float32")
    benchmark.extra_info.update(case=benchmark.group, impl=impl, threads=nt,
                                flops=flops(cell, 1, False, B, T, H))
    if impl == "fastrnn":
        benchmark.pedantic(fm, args=(x,), kwargs={"num_threads": nt}, rounds=20,
                           iterations=1, warmup_rounds=2)
    else:
        benchmark.pedantic(torch_runner(tm, x, nt), rounds=20, iterations=1, warmup_rounds=2)
        torch.set_num_threads(NT)


def _one_step_runner(impl):
    """A callable running one LSTM step (B=1, H=256, state carried) from Python."""
    tm, fm = models("LSTM", 1, False, 256, "float32")
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    if impl.startswith("fastrnn _step_fast"):
        fastrnn.set_num_threads(NT)
        h = np.zeros((1, 1, 256), np.float32)
        c = np.zeros((1, 1, 256), np.float32)
        return lambda: fm._step_fast(x, h, c)
    if impl == "fastrnn Stream.step":
        s = fastrnn.Stream(fm, batch_size=1)
        return lambda: s.step(x)
    if impl == "torch":
        torch.set_num_threads(NT)
        cellm = torch.nn.LSTMCell(256, 256)
        xt = torch.from_numpy(x)
        st = [torch.zeros(1, 256), torch.zeros(1, 256)]

        def run():
            with torch.inference_mode():
                st[:] = cellm(xt, tuple(st))
        return run
    if ort is None:
        pytest.skip("onnxruntime not installed")
    so = ort.SessionOptions()
    so.intra_op_num_threads = NT
    xs = x[None]
    f = io.BytesIO()
    h0 = torch.zeros(1, 1, 256)
    torch.onnx.export(tm, (torch.from_numpy(xs), (h0, h0)), f, input_names=["x", "h0", "c0"],
                      output_names=["y", "hn", "cn"], dynamo=False, opset_version=17)
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    st = {"h0": np.zeros((1, 1, 256), np.float32), "c0": np.zeros((1, 1, 256), np.float32)}

    def run():
        y, hn, cn = sess.run(None, {"x": xs, **st})
        st["h0"], st["c0"] = hn, cn
    return run


@pytest.mark.parametrize("impl", ["fastrnn _step_fast", "fastrnn Stream.step", "torch",
                                  "onnxruntime"])
def test_one_step(benchmark, impl):
    """One LSTM step, B=1, H=256, state carried, called from Python."""
    benchmark.group = "one LSTM step B=1 H=256 (state carried)"
    benchmark.extra_info.update(case=benchmark.group, impl=impl, threads=NT,
                                flops=flops("LSTM", 1, False, 1, 1, 256))
    benchmark.pedantic(_one_step_runner(impl), rounds=3000, iterations=1, warmup_rounds=100)


@pytest.mark.parametrize("gap_ms", [2, 20, 100])
@pytest.mark.parametrize("impl", ["fastrnn _step_fast", "fastrnn _step_fast (2 threads always)",
                                  "torch", "onnxruntime"])
def test_one_step_after_pause(benchmark, impl, gap_ms):
    """One LSTM step (B=1, H=256) after a pause of gap_ms (a sensor stream, sporadic
    requests): the pause lets the thread pools' workers go to sleep.  fastrnn runs a
    step that follows a pause of more than 10 ms on one thread (the same arithmetic);
    "2 threads always" turns that off."""
    from fastrnn import _kernels
    benchmark.group = f"one LSTM step B=1 H=256 after a {gap_ms} ms pause"
    benchmark.extra_info.update(case=benchmark.group, impl=impl, threads=NT,
                                flops=flops("LSTM", 1, False, 1, 1, 256))
    run = _one_step_runner(impl)
    for _ in range(50):
        run()
    old = _kernels._set_step_idle_single(-1 if "always" in impl else 10_000_000)
    try:
        benchmark.pedantic(run, setup=lambda: time.sleep(gap_ms / 1000), rounds=25,
                           iterations=1)
    finally:
        _kernels._set_step_idle_single(old)


@pytest.mark.parametrize("impl", ["fastrnn", "fastrnn num_threads=1", "torch", "onnxruntime"])
def test_sequence_after_pause(benchmark, impl):
    """LSTM B=1 T=100 H=256, one call after a 100 ms pause (sporadic requests): every
    2-thread pool's worker has gone to sleep by then.  fastrnn keeps 2 threads at this size
    (above ``_threads.IDLE_SINGLE_MACS``; its workers keep off the caller's CPU), hence
    the num_threads=1 row."""
    benchmark.group = "LSTM B=1 T=100 H=256 after a 100 ms pause"
    x = np.random.default_rng(0).standard_normal((100, 1, 256)).astype(np.float32)
    tm, fm = models("LSTM", 1, False, 256, "float32")
    _extra(benchmark, benchmark.group, impl, flops("LSTM", 1, False, 1, 100, 256))
    if impl.startswith("fastrnn"):
        fastrnn.set_num_threads(1 if impl.endswith("=1") else NT)
        run = lambda: fm(x)  # noqa: E731
    elif impl == "torch":
        run = torch_runner(tm, x)
    else:
        if ort is None:
            pytest.skip("onnxruntime not installed")
        sess = ort_session(tm, x)
        run = lambda: sess.run(None, {"x": x})  # noqa: E731
    for _ in range(3):
        run()
    try:
        benchmark.pedantic(run, setup=lambda: time.sleep(0.1), rounds=20, iterations=1)
    finally:
        fastrnn.set_num_threads(NT)


def _peak_rss_delta(fn):
    """Extra peak resident memory (bytes) while ``fn`` runs, sampled every 0.5 ms."""
    import resource

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    base = rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)
    th = threading.Thread(target=sample)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], rss())
    del resource
    return peak[0] - base


def test_long_sequence_memory(benchmark):
    """T=100000, B=1, H=256, final state only: extra peak memory (target < 64 MB)."""
    benchmark.group = "memory LSTM T=100000 B=1 H=256 (final state only)"
    T, H = 100_000, 256
    x = np.random.default_rng(0).standard_normal((T, 1, H)).astype(np.float32)
    layer = fastrnn.LSTM(H, H, seed=0, num_threads=NT)
    layer(x[:10], return_sequences=False)                       # pack weights first
    extra = _peak_rss_delta(lambda: layer(x, return_sequences=False))
    benchmark.extra_info.update(case=benchmark.group, impl="fastrnn", threads=NT,
                                extra_peak_bytes=int(extra), input_bytes=int(x.nbytes),
                                flops=flops("LSTM", 1, False, 1, T, H))
    benchmark.pedantic(layer, args=(x,), kwargs={"return_sequences": False}, rounds=3,
                       iterations=1)
