"""The command line: fastrnn.cli.main(argv) in-process, and `python -m fastrnn` once."""
import glob
import io
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
import fastrnn.io
from fastrnn.cli import main

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err):
    assert code == 1
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastrnn: error:")
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", [[], ["demo"], ["inspect"], ["convert"], ["run"], ["bench"]])
def test_help_everywhere(capsys, cmd):
    code, out, _ = run(capsys, *cmd, "--help")
    assert code == 0
    assert "usage: fastrnn" in out


def test_no_command_and_bad_usage(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "COMMAND" in out
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "run", "x.pt")         # missing --input/--output
    assert code == 2
    code, out, _ = run(capsys, "--version")
    assert code == 0 and fastrnn.__version__ in out


def test_demo(capsys):
    code, out, err = run(capsys, "demo", "--repeat", "2", "--steps", "20")
    assert code == 0, err
    assert "LSTM(8, 32, num_layers=2)" in out
    assert "OK" in out and "ms" in out


def test_demo_file_is_reproducible(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_demo", os.path.join(ROOT, "fastrnn", "data", "make_demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = mod.make(str(tmp_path / "demo.safetensors"))
    with open(p, "rb") as a, open(mod.DEMO_PATH, "rb") as b:
        assert a.read() == b.read()


def test_inspect_torch_and_safetensors(capsys, tmp_path):
    code, out, _ = run(capsys, "inspect", os.path.join(FIX, "torch", "checkpoint.pt"))
    assert code == 0
    assert "torch-zip" in out and "LSTM" in out and "bidirectional=True" in out
    layer = fastrnn.GRU(3, 5, num_layers=2, seed=0)
    p = str(tmp_path / "g.safetensors")
    layer.save(p)
    code, out, _ = run(capsys, "inspect", p)
    assert code == 0
    assert "safetensors" in out and "GRU(3, 5, num_layers=2)" in out
    assert f"parameters: {sum(v.size for v in layer.state_dict().values()):,}" in out
    assert "float32" in out


def test_inspect_lists_cells_without_layers_and_names_the_nonlinearity(capsys, tmp_path):
    """A torch cell has no layers or directions to list; an RNN's nonlinearity is
    shown, with the hint that a plain state dict cannot tell it."""
    from fastrnn.io import write_safetensors
    cell = fastrnn.GRUCell(4, 6, seed=0)
    rnn = fastrnn.SimpleRNN(3, 5, seed=0)
    sd = {f"dec.{k}": v for k, v in cell.state_dict().items()}
    sd.update({f"enc.{k}": v for k, v in rnn.state_dict().items()})
    p = str(tmp_path / "m.safetensors")
    write_safetensors(p, sd)
    code, out, _ = run(capsys, "inspect", p)
    assert code == 0
    dec = [l for l in out.splitlines() if l.strip().startswith("dec:")]
    enc = [l for l in out.splitlines() if l.strip().startswith("enc:")]
    assert len(dec) == 1 and len(enc) == 1, out
    assert "GRUCell input_size=4 hidden_size=6 bias=True" in dec[0]
    assert "num_layers" not in dec[0] and "bidirectional" not in dec[0]
    assert "nonlinearity" not in dec[0]
    assert "RNN input_size=3 hidden_size=5 num_layers=1 bidirectional=False" in enc[0]
    assert "nonlinearity=tanh" in enc[0]
    assert "--nonlinearity relu" in out


def test_inspect_keras_and_onnx(capsys):
    pytest.importorskip("h5py")
    code, out, _ = run(capsys, "inspect", os.path.join(FIX, "keras", "k3_lstm_basic.keras"))
    assert code == 0 and "keras-zip" in out and "total params" in out
    pytest.importorskip("onnx")
    p = os.path.join(FIX, "onnx", "lstm_1l.onnx")
    if os.path.exists(p):
        code, out, _ = run(capsys, "inspect", p)
        assert code == 0 and "onnx" in out and "LSTM" in out


def test_inspect_counts_a_shared_layer_once(capsys):
    """A shared layer (one object at several calls) is one layer, its core printed
    once, its calls noted."""
    pytest.importorskip("h5py")
    code, out, _ = run(capsys, "inspect", os.path.join(FIX, "keras", "k3_shared_siamese.keras"))
    assert code == 0
    # (233: the values Keras saved, its count_params; the LSTM's second bias, which
    # fastrnn's core keeps, is not counted)
    assert "Keras-style model, 7 layers (2 shared, 9 calls), 233 parameters" in out
    cores = [l for l in out.splitlines() if l.startswith("  lstm")]
    assert len(cores) == 1 and cores[0].endswith("(shared: 2 calls)")


def test_convert_roundtrip(capsys, tmp_path):
    src = os.path.join(FIX, "torch", "checkpoint.pt")
    dst = str(tmp_path / "out.safetensors")
    code, out, err = run(capsys, "convert", src, dst)
    assert code == 0, err
    a, b = fastrnn.io.load(src), fastrnn.io.load(dst)
    assert repr(a) == repr(b)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    code, _, err = run(capsys, "convert", src, dst)          # exists
    _one_line_error(code, err)
    code, _, err = run(capsys, "convert", src, dst, "--force", "--dtype", "float64")
    assert code == 0, err
    assert fastrnn.io.load(dst).dtype == np.float64


def test_convert_keras_model_and_refuse_onnx(capsys, tmp_path):
    pytest.importorskip("h5py")
    src = os.path.join(FIX, "keras", "k3_bi_concat_lstm_embed.keras")
    dst = str(tmp_path / "k.safetensors")
    code, out, err = run(capsys, "convert", src, dst)
    assert code == 0, err
    with np.load(os.path.join(FIX, "keras", "k3_bi_concat_lstm_embed.npz")) as z:
        x, y = z["x"], z["y0"]
    assert np.abs(fastrnn.load(dst).predict(x) - y).max() <= 1e-5
    code, out, err = run(capsys, "inspect", dst)
    assert code == 0 and "Keras-style model, 4 layers" in out
    code, _, err = run(capsys, "convert", src, str(tmp_path / "k64.safetensors"),
                       "--dtype", "float64")
    _one_line_error(code, err)
    assert "single recurrent layers" in err
    pytest.importorskip("onnx")
    onnx_src = sorted(glob.glob(os.path.join(FIX, "onnx", "*.onnx")))[0]
    code, _, err = run(capsys, "convert", onnx_src, str(tmp_path / "o.safetensors"))
    _one_line_error(code, err)
    assert "ONNX graph" in err


def test_run_layer_layouts(capsys, tmp_path):
    layer = fastrnn.LSTM(4, 6, num_layers=2, seed=1)
    p = str(tmp_path / "l.safetensors")
    layer.save(p)
    x = np.random.default_rng(0).standard_normal((7, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(capsys, "run", p, "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "y.npy"))
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), layer(x)[0])
    np.save(tmp_path / "xb.npy", x.transpose(1, 0, 2))
    code, out, err = run(capsys, "run", p, "-i", str(tmp_path / "xb.npy"),
                         "-o", str(tmp_path / "yb.npz"), "--batch-first", "--threads", "1")
    assert code == 0, err
    z = np.load(tmp_path / "yb.npz")
    np.testing.assert_allclose(z["output"], layer(x)[0].transpose(1, 0, 2), atol=1e-6)
    np.testing.assert_allclose(z["h_n"], layer(x)[1][0], atol=1e-6)
    assert "c_n" in z.files


def test_run_keras_and_onnx(capsys, tmp_path):
    pytest.importorskip("h5py")
    ref = np.load(os.path.join(FIX, "keras", "k3_lstm_basic.npz"))
    np.save(tmp_path / "x.npy", ref["x"])
    code, _, err = run(capsys, "run", os.path.join(FIX, "keras", "k3_lstm_basic.keras"),
                       "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref["y0"], atol=1e-5)
    pytest.importorskip("onnx")
    onnx_path = os.path.join(FIX, "onnx", "lstm_1l.onnx")
    if not os.path.exists(onnx_path):
        return
    m = fastrnn.io.load(onnx_path)
    x = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    np.save(tmp_path / "xo.npy", x)
    code, _, err = run(capsys, "run", onnx_path, "-i", str(tmp_path / "xo.npy"),
                       "-o", str(tmp_path / "yo.npz"))
    assert code == 0, err
    z = np.load(tmp_path / "yo.npz")
    want = m.run(x)
    for k in want:
        np.testing.assert_array_equal(z[k], want[k])


def _run_files(tmp_path):
    """(model file, input .npy) of each kind `fastrnn run` takes: layer, Keras, ONNX."""
    layer = fastrnn.GRU(5, 6, seed=0)
    layer.save(str(tmp_path / "l.safetensors"))
    x = np.random.default_rng(0).standard_normal((6, 2, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    files = [(str(tmp_path / "l.safetensors"), str(tmp_path / "x.npy"))]
    keras = os.path.join(FIX, "keras", "k3_lstm_basic.keras")
    # (fastrnn reads Keras files without h5py)
    np.save(tmp_path / "xk.npy", np.load(os.path.join(FIX, "keras", "k3_lstm_basic.npz"))["x"])
    files.append((keras, str(tmp_path / "xk.npy")))
    onnx_path = os.path.join(FIX, "onnx", "lstm_1l.onnx")
    if os.path.exists(onnx_path):
        files.append((onnx_path, str(tmp_path / "x.npy")))
    return files


@pytest.mark.parametrize("threads", [1, 3])
def test_run_threads_reach_every_format(capsys, tmp_path, monkeypatch, threads):
    """--threads N is the thread count of every layer call, for a layer file, a Keras
    model and an ONNX graph (those two ran on the default count), and the default is
    as it was afterwards."""
    import fastrnn._threads as th
    seen = []
    resolve = th.resolve

    def spy(*a, **k):
        seen.append(resolve(*a, **k))
        return seen[-1]
    monkeypatch.setattr(th, "resolve", spy)
    before = th._default
    for model, x in _run_files(tmp_path):
        seen.clear()
        code, out, err = run(capsys, "run", model, "-i", x, "-o", str(tmp_path / "y.npz"),
                             "--threads", str(threads))
        assert code == 0, err
        assert seen and set(seen) == {threads}, (model, seen)
        assert th._default == before


@pytest.mark.parametrize("threads", ["0", "-3", "two"])
def test_run_bad_thread_counts_refused(capsys, tmp_path, threads):
    """--threads below 1 (or not a number) is a usage error naming --threads (status 2),
    for every kind of model (an ONNX graph or a Keras model ran with the default count)."""
    for model, x in _run_files(tmp_path):
        code, _, err = run(capsys, "run", model, "-i", x, "-o", str(tmp_path / "y.npy"),
                           "--threads", threads)
        assert code == 2 and "argument --threads:" in err and "Traceback" not in err
        assert not os.path.exists(tmp_path / "y.npy")


@pytest.mark.parametrize("threads", ["0", "-3"])
def test_bench_bad_thread_counts_refused(capsys, threads):
    code, _, err = run(capsys, "bench", "--quick", "--threads", threads)
    assert code == 2 and f"argument --threads: must be >= 1, got {threads}" in err


def test_loading_options_and_advice_in_command_line_terms(capsys, tmp_path):
    """A weights-only Keras file runs with --architecture FILE.json; the loaders' advice
    names the command line's options (--prefix, --architecture), not Python keywords."""
    h5 = os.path.join(FIX, "keras", "k2_weights_only.h5")
    arch = os.path.join(FIX, "keras", "k2_weights_only.json")
    if not (os.path.exists(h5) and os.path.exists(arch)):
        pytest.skip("no weights-only Keras fixture")
    code, _, err = run(capsys, "inspect", h5)
    _one_line_error(code, err)
    assert "pass --architecture FILE.json" in err and "architecture=" not in err
    code, out, err = run(capsys, "inspect", h5, "--architecture", arch)
    assert code == 0, err
    assert "total params" in out
    ref = np.load(os.path.join(FIX, "keras", "k2_weights_only.npz"))
    np.save(tmp_path / "x.npy", ref["x"])
    code, _, err = run(capsys, "run", h5, "--architecture", arch, "-i", str(tmp_path / "x.npy"),
                       "-o", str(tmp_path / "y.npy"))
    assert code == 0, err
    want = fastrnn.io.load(h5, architecture=open(arch).read()).predict(ref["x"])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
    code, _, err = run(capsys, "run", h5, "--architecture", str(tmp_path / "none.json"),
                       "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.npy"))
    _one_line_error(code, err)
    assert "cannot read --architecture" in err


def test_module_class_option(capsys, tmp_path):
    pytest.importorskip("torch")
    path = str(tmp_path / "net.pt")
    code = ("import torch\n"
            "class Net(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.rnn = torch.nn.GRU(4, 8)\n"
            f"torch.save(Net(), {path!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path))
    code, _, err = run(capsys, "inspect", path)
    _one_line_error(code, err)
    assert "pass --module-class __main__.Net" in err
    code, out, err = run(capsys, "inspect", path, "--module-class", "__main__.Net")
    assert code == 0, err
    assert "rnn: GRU input_size=4 hidden_size=8" in out


def test_closed_pipe_is_quiet(tmp_path):
    """`fastrnn inspect FILE | head -1`: no traceback or error line when the reader
    leaves early (it printed "fastrnn: error: [Errno 32] Broken pipe")."""
    st = str(tmp_path / "many.safetensors")
    fastrnn.io.write_safetensors(st, {f"t{i:05d}": np.zeros(1, np.float32)
                                      for i in range(5000)})      # (~300 KB of lines)
    p = subprocess.Popen([sys.executable, "-m", "fastrnn", "inspect", "--max-tensors", "5000",
                          st], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.readline()
    p.stdout.close()                    # (the reader is gone before most lines)
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1
    assert "Traceback" not in err and "Broken pipe" not in err and not err.strip(), err


def test_run_output_to_standard_output_and_pipes(tmp_path):
    """`-o -` writes the first output (.npy) to standard output, and so does `-o
    /dev/stdout` into a pipe (NumPy's savers could not seek it: "obtaining file position
    failed"); the status line goes to standard error (on stdout it overwrote the .npy
    header of `-o /dev/stdout > y.npy`)."""
    model, x = _run_files(tmp_path)[0]
    want = fastrnn.load(model)(np.load(x))[0]
    for target in ("-", "/dev/stdout"):
        res = subprocess.run([sys.executable, "-m", "fastrnn", "run", model, "-i", x,
                              "-o", target], capture_output=True, cwd=ROOT, timeout=120)
        assert res.returncode == 0, res.stderr.decode()
        np.testing.assert_array_equal(np.load(io.BytesIO(res.stdout)), want)
        assert b"wrote" in res.stderr
    with open(tmp_path / "y.npy", "wb") as f:          # redirected to a file
        res = subprocess.run([sys.executable, "-m", "fastrnn", "run", model, "-i", x,
                              "-o", "/dev/stdout"], stdout=f, stderr=subprocess.PIPE,
                             cwd=ROOT, timeout=120)
    assert res.returncode == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_closed_standard_output_is_no_traceback():
    """`fastrnn demo >&-`: no traceback (printing flushed a stdout that is None)."""
    res = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "--repeat", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                         timeout=120, close_fds=True,
                         preexec_fn=lambda: os.close(1))
    assert b"Traceback" not in res.stderr, res.stderr.decode()[-1500:]


def test_run_writes_exactly_the_named_file(capsys, tmp_path):
    """-o NAME writes NAME, whatever its suffix (it wrote NAME.npy, saying NAME): .npz
    (any case) every output, any other name the first one in .npy format."""
    model, x = _run_files(tmp_path)[0]
    layer = fastrnn.load(model)
    want = layer(np.load(x))
    files = set(os.listdir(tmp_path))
    for name in ("out.txt", "out", "out.npy", "OUT.NPZ", "out.npz"):
        path = tmp_path / name
        code, out, err = run(capsys, "run", model, "-i", x, "-o", str(path))
        assert code == 0, err
        assert f"wrote {path}:" in err         # (the status on stderr: -o may be stdout)
        assert set(os.listdir(tmp_path)) - files == {name}
        if name.lower().endswith(".npz"):
            with np.load(path) as z:
                np.testing.assert_array_equal(z["output"], want[0])
                np.testing.assert_array_equal(z["h_n"], want[1])
        else:
            np.testing.assert_array_equal(np.load(path), want[0])
        os.remove(path)


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "badinput", "wrongsize",
                                  "dir", "multi", "emptyinput", "shortinput", "badzip"])
def test_errors_are_one_line(capsys, tmp_path, kind):
    layer = fastrnn.GRU(3, 4, seed=0)
    good = str(tmp_path / "g.safetensors")
    layer.save(good)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 3), np.float32))
    xin = str(tmp_path / "x.npy")
    if kind == "missing":
        argv = ["inspect", str(tmp_path / "nope.pt")]
    elif kind == "garbage":
        (tmp_path / "g.pt").write_bytes(b"this is not a model file at all" * 10)
        argv = ["run", str(tmp_path / "g.pt"), "-i", xin, "-o", str(tmp_path / "y.npy")]
    elif kind == "truncated":
        data = open(good, "rb").read()
        (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
        argv = ["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "o.safetensors")]
    elif kind == "badinput":
        (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        argv = ["run", good, "-i", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "y.npy")]
    elif kind in ("emptyinput", "shortinput", "badzip"):
        np.savez(tmp_path / "z.npz", x=np.zeros((2, 1, 3), np.float32))
        data = {"emptyinput": b"", "shortinput": open(xin, "rb").read()[:100],
                "badzip": open(tmp_path / "z.npz", "rb").read()[:200]}[kind]
        bad = str(tmp_path / ("bad.npz" if kind == "badzip" else "bad.npy"))
        open(bad, "wb").write(data)
        argv = ["run", good, "-i", bad, "-o", str(tmp_path / "y.npy")]
    elif kind == "wrongsize":
        np.save(tmp_path / "w.npy", np.zeros((2, 1, 5), np.float32))
        argv = ["run", good, "-i", str(tmp_path / "w.npy"), "-o", str(tmp_path / "y.npy")]
    elif kind == "dir":
        argv = ["run", str(tmp_path), "-i", xin, "-o", str(tmp_path / "y.npy")]
    else:
        argv = ["run", os.path.join(FIX, "torch", "checkpoint.pt"), "--prefix", "nope",
                "-i", xin, "-o", str(tmp_path / "y.npy")]
    code, _, err = run(capsys, *argv)
    _one_line_error(code, err)


def test_bench_quick(capsys):
    code, out, err = run(capsys, "bench", "--cases", "rnn:1:5:8", "gru:2:4:8", "--repeat", "2",
                         "--min-time", "0", "--no-progress")
    assert code == 0, err
    assert "RNN B=1 T=5 H=8" in out and "GRU B=2 T=4 H=8" in out and "fastrnn" in out
    code, _, err = run(capsys, "bench", "--cases", "lstm:x:1:2")
    _one_line_error(code, err)


def test_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "--repeat", "1"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    r = subprocess.run([sys.executable, "-m", "fastrnn", "inspect", str(tmp_path / "bad.onnx")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_run_time_major_writes_every_sequence_output_time_major(capsys, tmp_path):
    """--time-major: every sequence output of a model comes back time-major (only the
    first did: a Bidirectional with merge_mode=None has two), equal to Keras's."""
    base = os.path.join(FIX, "keras", "k3_bi_none_lstm_masking")
    with np.load(base + ".npz") as z:
        x, ys = z["x"], [z["y0"], z["y1"]]
    np.save(tmp_path / "x.npy", np.ascontiguousarray(np.swapaxes(x, 0, 1)))
    code, _, _ = run(capsys, "run", base + ".keras", "-i", str(tmp_path / "x.npy"),
                     "-o", str(tmp_path / "y.npz"), "--time-major")
    assert code == 0
    with np.load(tmp_path / "y.npz") as z:
        for got, want in zip((z["output"], z["output_1"]), ys):
            np.testing.assert_allclose(got, np.swapaxes(want, 0, 1), atol=1e-5)


def test_run_leaves_an_unbatched_sequence_alone(capsys, tmp_path):
    """A layer's 2-D input is one sequence (T, I): a layout flag has no batch axis to
    move (it was transposed: wrong numbers, or a wrong feature-size error)."""
    layer = fastrnn.LSTM(8, 16, batch_first=True, seed=0)
    layer.save(str(tmp_path / "m.safetensors"))
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for flag in ("--time-major", "--batch-first"):
        code, _, _ = run(capsys, "run", str(tmp_path / "m.safetensors"), "-i",
                         str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"), flag)
        assert code == 0
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), layer(x)[0], atol=1e-6)


@pytest.mark.parametrize("argv", [["demo", "--steps", "0"], ["demo", "--batch", "0"],
                                  ["demo", "--repeat", "0"], ["bench", "--repeat", "0"],
                                  ["inspect", "--max-tensors", "-1", "x.safetensors"]])
def test_counts_below_their_minimum_are_usage_errors(capsys, argv):
    """(they failed inside the command with NumPy's messages, status 1, after printing
    half a report; inspect --max-tensors -1 listed all but one)"""
    code, out, err = run(capsys, *argv)
    assert code == 2 and "must be >=" in err and not out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_ends_a_long_run_at_once(tmp_path):
    """Ctrl-C during `fastrnn run` on a long sequence: the process ends at once with
    status 130 (a layer call runs without the GIL, so the interrupt waited for the
    whole call: seconds to minutes)."""
    import time
    layer = fastrnn.LSTM(8, 512, seed=0)
    layer.save(str(tmp_path / "l.safetensors"))
    np.save(tmp_path / "x.npy", np.zeros((100_000, 1, 8), np.float32))    # (~3 s of steps)
    # (on one thread: ~5 s, so a loaded machine still signals well inside the run; on
    # two it once finished before the signal, status 0)
    p = subprocess.Popen([sys.executable, "-m", "fastrnn", "run", str(tmp_path / "l.safetensors"),
                          "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                          "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    # the command runs: a thread other than the main one has used CPU time (the CLI's
    # worker, started as the main thread begins to wait for it; a fixed 1 s sleep flaked
    # once on a loaded machine: the run finished with status 0)
    def others_cpu():
        total = 0
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            if tid != str(p.pid):
                with open(f"/proc/{p.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])     # utime + stime (ticks)
        return total / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if others_cpu() >= 0.1:
                break
        except OSError:         # (no /proc: a fixed wait)
            time.sleep(1.0)
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=60)
    waited = time.monotonic() - t0
    assert p.returncode == 130, (p.returncode, err)
    assert b"interrupted" in err and b"Traceback" not in err
    assert not os.path.exists(tmp_path / "y.npy")
    # (a hang check, not a speed threshold: exiting takes ~0.1 s; the call had ~2 s to go,
    # which the interrupt waited for)
    assert waited < 1.5, waited


def test_convert_and_run_take_the_nonlinearity_a_state_dict_cannot_tell(capsys, tmp_path):
    """A state dict of a relu nn.RNN / RNNCell converts as relu with --nonlinearity relu
    (without it, tanh: the weights cannot tell); the option is refused where it cannot
    apply (an ONNX file; an LSTM's weights)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    for net in (torch.nn.RNN(3, 4, nonlinearity="relu"),
                torch.nn.RNNCell(3, 4, nonlinearity="relu")):
        src, dst = str(tmp_path / "r.pt"), str(tmp_path / "r.safetensors")
        torch.save(net.state_dict(), src)
        for act in ("tanh", "relu"):
            extra = ["--nonlinearity", act] if act == "relu" else []
            code, _, err = run(capsys, "convert", src, dst, "--force", *extra)
            assert code == 0, err
            obj = fastrnn.load(dst)
            assert obj.nonlinearity == act
        with torch.no_grad():
            want = (net(torch.from_numpy(x))[0] if isinstance(net, torch.nn.RNN)
                    else net(torch.from_numpy(x[0]))).numpy()
        got = obj(x)[0] if isinstance(net, torch.nn.RNN) else obj(x[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    code, _, err = run(capsys, "inspect", os.path.join(FIX, "onnx", "lstm_1l.onnx"),
                       "--nonlinearity", "relu")
    assert code != 0 and "--nonlinearity applies to PyTorch state dicts" in err
    torch.save(torch.nn.LSTM(3, 4).state_dict(), str(tmp_path / "l.pt"))
    code, _, err = run(capsys, "convert", str(tmp_path / "l.pt"), str(tmp_path / "l.st"),
                       "--force", "--nonlinearity", "relu")
    assert code != 0 and "nonlinearity does not apply" in err


# ----------------------------------------------------------------------------- several inputs

KMULTI = ["k3_multi_text_num", "k3_multi_dict", "k3_shared_siamese", "k3_policy64_multi"]


def _keras_ref(name):
    """(model file, input names, inputs in Keras's order of model.inputs, Keras's outputs)
    of a committed fixture of several inputs (tests/fixtures/make_keras3.py)."""
    with np.load(os.path.join(FIX, "keras", name + ".npz")) as z:
        names = [str(v) for v in z["input_names"]]
        xs = [z[f"x{k}"] for k in range(len(names))]
        ys = [z[f"y{i}"] for i in range(sum(f.startswith("y") for f in z.files))]
    return os.path.join(FIX, "keras", name + ".keras"), names, xs, ys


def _outputs(path):
    with np.load(path) as z:
        return [z["output"]] + [z[f"output_{i}"] for i in range(1, len(z.files))]


def _assert_keras(got, ys, swap=False):
    assert len(got) == len(ys)
    for a, b in zip(got, ys):
        if swap and b.ndim >= 3:
            b = np.swapaxes(b, 0, 1)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("name", KMULTI)
def test_run_multi_input_keras_fixtures_match_keras(capsys, tmp_path, name):
    """A Keras functional model of two Inputs runs from -i once per input (in the
    model's order), from one .npz of arrays named by input (in any order in the file),
    or from one .npz saved without names (np.savez(f, a, b): arr_0, arr_1, in order):
    each equal to Keras's own outputs."""
    model, names, xs, ys = _keras_ref(name)
    files = []
    for k, x in zip(names, xs):
        np.save(tmp_path / f"{k}.npy", x)
        files += ["-i", str(tmp_path / f"{k}.npy")]
    np.savez(tmp_path / "named.npz", **dict(reversed(list(zip(names, xs)))))
    np.savez(tmp_path / "positional.npz", *xs)
    for feed in (files, ["-i", str(tmp_path / "named.npz")],
                 ["--input", str(tmp_path / "positional.npz")]):
        out = tmp_path / "y.npz"
        code, _, err = run(capsys, "run", model, *feed, "-o", str(out), "--threads", "1")
        assert code == 0, err
        assert "(batch first)" in err
        _assert_keras(_outputs(out), ys)
        os.remove(out)


@pytest.mark.parametrize("name", ["k3_multi_dict", "k3_policy64_multi", "k3_multi_text_num"])
def test_run_multi_input_time_major_moves_each_sequence_input(capsys, tmp_path, name):
    """--time-major applies to each sequence input: (T, B, features) frames and (T, B)
    token ids read by an Embedding come batch first to the model; a (B, features) input
    (k3_multi_text_num's 'num') stays as it is; every sequence output comes back time
    major (k3_policy64_multi's (T, B, 2)), the rest as Keras gives it; --batch-first is
    the model's own layout."""
    model, names, xs, ys = _keras_ref(name)
    seq = {"k3_multi_dict": [True, True], "k3_policy64_multi": [True, True],
           "k3_multi_text_num": [True, False]}[name]
    tm = [np.ascontiguousarray(np.swapaxes(x, 0, 1)) if s else x for x, s in zip(xs, seq)]
    assert all(a.shape != x.shape for a, x, s in zip(tm, xs, seq) if s)    # (T != B)
    np.savez(tmp_path / "tm.npz", **dict(zip(names, tm)))
    code, _, err = run(capsys, "run", model, "-i", str(tmp_path / "tm.npz"),
                       "-o", str(tmp_path / "y.npz"), "--time-major")
    assert code == 0, err
    assert "(time major)" in err
    _assert_keras(_outputs(tmp_path / "y.npz"), ys, swap=True)
    files = []
    for k, x in enumerate(tm):
        np.save(tmp_path / f"{k}.npy", x)
        files += ["-i", str(tmp_path / f"{k}.npy")]
    code, _, err = run(capsys, "run", model, *files, "-o", str(tmp_path / "y1.npz"),
                       "--time-major")
    assert code == 0, err
    _assert_keras(_outputs(tmp_path / "y1.npz"), ys, swap=True)
    np.savez(tmp_path / "bf.npz", **dict(zip(names, xs)))
    code, _, err = run(capsys, "run", model, "-i", str(tmp_path / "bf.npz"),
                       "-o", str(tmp_path / "y2.npz"), "--batch-first")
    assert code == 0, err
    _assert_keras(_outputs(tmp_path / "y2.npz"), ys)


def _two_input_model(input_names=("ids", "ctx")):
    """A model of two inputs made of fastrnn.model layers: token ids (B, T) through an
    InputCast and an Embedding into an LSTM (its sequence: output 0), averaged over the
    steps and joined with a (B, 2) context vector, then a Dense head (output 1)."""
    from fastrnn.model import (INPUT, Concatenate, Dense, Embedding, GlobalPooling1D,
                               InputCast, KerasRNN, Model)
    rng = np.random.default_rng(7)
    layers = [InputCast("float32", "float32", name="cast"),
              Embedding(rng.standard_normal((10, 3)).astype(np.float32), mask_zero=True,
                        name="emb"),
              KerasRNN(fastrnn.LSTM(3, 4, batch_first=True, seed=3), return_sequences=True,
                       name="lstm"),
              GlobalPooling1D("average", name="pool"),
              Concatenate(name="cat"),
              Dense(rng.standard_normal((6, 2)).astype(np.float32), activation="tanh",
                    name="head")]
    graph = [(INPUT, 0), (0, 0), (1, 0), (2, 0), [(3, 0), (INPUT, 1)], (4, 0)]
    kw = {"input_names": list(input_names)} if input_names else {"n_inputs": 2}
    return Model(layers, inputs=graph, outputs=[(2, 0), (5, 0)], name="two", **kw)


def _two_inputs():
    rng = np.random.default_rng(8)
    ids = rng.integers(1, 10, size=(3, 6)).astype(np.int64)
    ids[0, 4:] = 0                                  # (padding: masked)
    return ids, rng.standard_normal((3, 2)).astype(np.float32)


def test_run_hand_built_multi_input_model_saved_and_loaded(capsys, tmp_path):
    """A Model of fastrnn.model layers with two named inputs, saved to fastrnn's own
    file: `fastrnn run` equals model.predict by file order, by .npz names, and time
    major (the (T, B) ids read through an InputCast by an Embedding are a sequence; the
    (B, 2) context is not; the LSTM's sequence output comes back (T, B, 4))."""
    model = _two_input_model()
    path = str(tmp_path / "two.safetensors")
    model.save(path)
    ids, ctx = _two_inputs()
    want = model.predict({"ids": ids, "ctx": ctx})
    assert want[0].shape == (3, 6, 4) and want[1].shape == (3, 2)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "ctx.npy", ctx)
    np.savez(tmp_path / "in.npz", ctx=ctx, ids=ids)
    for feed in (["-i", str(tmp_path / "ids.npy"), "-i", str(tmp_path / "ctx.npy")],
                 ["-i", str(tmp_path / "in.npz")]):
        code, _, err = run(capsys, "run", path, *feed, "-o", str(tmp_path / "y.npz"))
        assert code == 0, err
        got = _outputs(tmp_path / "y.npz")
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    code, _, err = run(capsys, "run", path, "-i", str(tmp_path / "ids.npy"),
                       "-i", str(tmp_path / "ctx.npy"), "-o", str(tmp_path / "first.npy"))
    assert code == 0, err                     # (.npy: the first output)
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), want[0])
    np.save(tmp_path / "ids_tm.npy", ids.T)
    code, _, err = run(capsys, "run", path, "-i", str(tmp_path / "ids_tm.npy"),
                       "-i", str(tmp_path / "ctx.npy"), "-o", str(tmp_path / "tm.npz"),
                       "--time-major")
    assert code == 0, err
    seq, head = _outputs(tmp_path / "tm.npz")
    np.testing.assert_array_equal(seq, np.swapaxes(want[0], 0, 1))
    np.testing.assert_array_equal(head, want[1])
    assert seq.flags.c_contiguous


def test_run_multi_input_model_without_names(capsys, tmp_path):
    """A model of two inputs without names takes -i once per input, or an .npz saved
    without names (arr_0, arr_1); an .npz of other names is refused, saying so."""
    model = _two_input_model(input_names=None)
    path = str(tmp_path / "two.safetensors")
    model.save(path)
    ids, ctx = _two_inputs()
    want = model.predict([ids, ctx])
    np.savez(tmp_path / "pos.npz", ids, ctx)
    code, _, err = run(capsys, "run", path, "-i", str(tmp_path / "pos.npz"),
                       "-o", str(tmp_path / "y.npz"))
    assert code == 0, err
    for a, b in zip(_outputs(tmp_path / "y.npz"), want):
        np.testing.assert_array_equal(a, b)
    np.savez(tmp_path / "named.npz", ids=ids, ctx=ctx)
    code, _, err = run(capsys, "run", path, "-i", str(tmp_path / "named.npz"),
                       "-o", str(tmp_path / "z.npz"))
    _one_line_error(code, err)
    assert ("named.npz holds arrays 'ids', 'ctx'; model 'two' takes 2 inputs (without "
            "names): give -i once per input in order, or an .npz saved as np.savez(f, a, "
            "b, ...) (arrays arr_0, arr_1, ... in input order)") in err
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert ("run:     -i once per input, in the order of its 2 inputs (without names), or "
            "one .npz saved as np.savez(f, a, b, ...)") in out.splitlines()


def _multi_error_case(tmp_path, case):
    """(argv after `run MODEL`, the message expected) for a k3_multi_text_num run."""
    _, names, xs, _ = _keras_ref("k3_multi_text_num")
    text, num = xs
    d = str(tmp_path)
    np.save(f"{d}/text.npy", text)
    np.save(f"{d}/num.npy", num)
    takes = "model 'functional_57' takes 2 inputs: 'text', 'num'"
    named = "(an .npz holds one array per input, named by it)"
    if case == "one-npy":
        return (["-i", f"{d}/text.npy"],
                f"{d}/text.npy holds one array; {takes} (give an .npz of one array per "
                "input name, or -i once per input in that order)")
    if case == "missing":
        np.savez(f"{d}/x.npz", text=text)
        return ["-i", f"{d}/x.npz"], f"{d}/x.npz: missing input(s) 'num'; {takes} {named}"
    if case == "unknown":
        np.savez(f"{d}/x.npz", text=text, num=num, extra=num)
        return (["-i", f"{d}/x.npz"],
                f"{d}/x.npz: unknown input name(s) 'extra'; {takes} {named}")
    if case == "misnamed":
        np.savez(f"{d}/x.npz", txt=text, num=num)
        return (["-i", f"{d}/x.npz"], f"{d}/x.npz: unknown input name(s) 'txt', missing "
                f"input(s) 'text'; {takes} {named}")
    if case == "positional-count":
        np.savez(f"{d}/x.npz", text, num, num)
        return (["-i", f"{d}/x.npz"], f"{d}/x.npz holds 3 arrays saved without names "
                f"(arr_0, arr_1, arr_2); {takes} (arr_0 to arr_1)")
    if case == "three-files":
        return (["-i", f"{d}/text.npy", "-i", f"{d}/num.npy", "-i", f"{d}/num.npy"],
                f"3 input files (-i); {takes} (-i once per input, in that order)")
    if case == "npz-among-files":
        np.savez(f"{d}/x.npz", a=num, b=num)
        return (["-i", f"{d}/text.npy", "-i", f"{d}/x.npz"],
                f"{d}/x.npz holds 2 arrays; with -i once per input each file holds one "
                "array (here input 'num')")
    if case == "batch":
        np.save(f"{d}/num2.npy", num[:2])
        return (["-i", f"{d}/text.npy", "-i", f"{d}/num2.npy"],
                "the inputs disagree on the batch size (batch first: axis 0 of each): "
                "'text' (3, 7) has 3, 'num' (2, 3) has 2")
    assert case == "batch-time-major"           # (text given batch first, said time major)
    return (["-i", f"{d}/text.npy", "-i", f"{d}/num.npy", "--time-major"],
            "the inputs disagree on the batch size (read time major: axis 1 of a sequence "
            "input, axis 0 of any other): 'text' (3, 7) has 7, 'num' (3, 3) has 3")


@pytest.mark.parametrize("case", ["one-npy", "missing", "unknown", "misnamed",
                                  "positional-count", "three-files", "npz-among-files",
                                  "batch", "batch-time-major"])
def test_run_multi_input_errors_name_the_problem(capsys, tmp_path, case):
    argv, msg = _multi_error_case(tmp_path, case)
    model = os.path.join(FIX, "keras", "k3_multi_text_num.keras")
    code, _, err = run(capsys, "run", model, *argv, "-o", str(tmp_path / "y.npy"))
    _one_line_error(code, err)
    assert err.strip() == f"fastrnn: error: {msg}"
    assert not os.path.exists(tmp_path / "y.npy")


def test_run_several_files_for_one_input_are_refused(capsys, tmp_path):
    """-i more than once for a layer or a model of one input: an error saying it takes
    one (a single -i runs as before)."""
    layer_file, x = _run_files(tmp_path)[0]
    keras_file, xk = _run_files(tmp_path)[1]
    for model, x, what in ((layer_file, x, "a recurrent layer"),
                           (keras_file, xk, "model 'sequential'")):
        code, _, err = run(capsys, "run", model, "-i", x, "-i", x, "-o", str(tmp_path / "y.npy"))
        _one_line_error(code, err)
        assert f"2 input files (-i); {what} takes one input (-i once)" in err
        assert not os.path.exists(tmp_path / "y.npy")
        code, _, err = run(capsys, "run", model, "-i", x, "-o", str(tmp_path / "y.npy"))
        assert code == 0, err
        os.remove(tmp_path / "y.npy")


def test_run_single_input_dict_fixture_by_its_name(capsys, tmp_path):
    """k3_dict_io (one Input, given by dict in Keras; two outputs): an .npz of its one
    array (by the input's name) or a .npy, every output equal to Keras's."""
    base = os.path.join(FIX, "keras", "k3_dict_io")
    with np.load(base + ".npz") as z:
        x, ys = z["x"], [z["y0"], z["y1"]]
    np.savez(tmp_path / "x.npz", feats=x)
    np.save(tmp_path / "x.npy", x)
    for feed in ("x.npz", "x.npy"):
        code, _, err = run(capsys, "run", base + ".keras", "-i", str(tmp_path / feed),
                           "-o", str(tmp_path / "y.npz"))
        assert code == 0, err
        _assert_keras(_outputs(tmp_path / "y.npz"), ys)


def test_run_onnx_inputs_one_file_each(capsys, tmp_path):
    """An ONNX graph of several inputs (x, h0, c0) takes -i once per input in its
    order, as an .npz by name; both equal to ONNX Runtime's outputs; a wrong count is
    refused naming the inputs."""
    base = os.path.join(FIX, "onnx", "lstm_bi_2l_bf_h0")
    with np.load(base + ".npz") as z:
        ins = {k[3:]: z[k] for k in z.files if k.startswith("in:")}
        ort = {k[4:]: z[k] for k in z.files if k.startswith("ort:")}
    assert list(ins) == ["x", "h0", "c0"]
    files = []
    for k, v in ins.items():
        np.save(tmp_path / f"{k}.npy", v)
        files += ["-i", str(tmp_path / f"{k}.npy")]
    np.savez(tmp_path / "in.npz", **ins)
    for feed in (files, ["-i", str(tmp_path / "in.npz")]):
        code, _, err = run(capsys, "run", base + ".onnx", *feed, "-o", str(tmp_path / "y.npz"))
        assert code == 0, err
        with np.load(tmp_path / "y.npz") as z:
            assert sorted(z.files) == sorted(ort)
            for k, v in ort.items():
                np.testing.assert_allclose(z[k], v, atol=1e-5)
    code, _, err = run(capsys, "run", base + ".onnx", *files[:4], "-o", str(tmp_path / "e.npz"))
    _one_line_error(code, err)
    assert "2 input files (-i); ONNX graph " in err
    assert "takes 3 inputs: 'x', 'h0', 'c0' (-i once per input, in that order)" in err


def test_inspect_lists_the_inputs_of_a_multi_input_model(capsys, tmp_path):
    """inspect names a model's inputs in the order `run` takes its -i files (and says
    how to feed them); a model of one input gets no such line."""
    code, out, err = run(capsys, "inspect", os.path.join(FIX, "keras", "k3_multi_dict.keras"))
    assert code == 0, err
    assert ("run:     -i once per input, in the order 'feats', 'tokens', or one .npz of "
            "arrays named by input") in out.splitlines()
    path = str(tmp_path / "two.safetensors")
    _two_input_model().save(path)
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert "run:     -i once per input, in the order 'ids', 'ctx', or one" in out
    code, out, err = run(capsys, "inspect", os.path.join(FIX, "keras", "k3_dict_io.keras"))
    assert code == 0, err
    assert not any(l.startswith("run:") for l in out.splitlines())


def test_run_time_major_leaves_a_row_of_vectors_alone(capsys, tmp_path):
    """A model of one (B, features) input: --time-major moved its batch axis (a wrong
    answer where B equals the features, a misleading error elsewhere; found by the CLI
    audit); now only sequence inputs move, and the sequence output comes back time
    major, as for models of several inputs."""
    from fastrnn.model import Dense, KerasRNN, Model, RepeatVector
    rng = np.random.default_rng(0)
    m = Model([Dense(rng.standard_normal((3, 4)).astype("float32")), RepeatVector(5),
               KerasRNN(fastrnn.LSTM(4, 2, batch_first=True), return_sequences=True)])
    p = str(tmp_path / "m.safetensors")
    m.save(p)
    for B in (3, 6):
        x = rng.standard_normal((B, 3)).astype("float32")
        np.save(tmp_path / f"x{B}.npy", x)
        code, _, err = run(capsys, "run", p, "-i", str(tmp_path / f"x{B}.npy"), "-o",
                           str(tmp_path / f"y{B}.npy"), "--time-major")
        assert code == 0, err
        np.testing.assert_array_equal(np.load(tmp_path / f"y{B}.npy"),
                                      m.predict(x).swapaxes(0, 1))


def test_run_of_a_cell_says_what_to_do(capsys, tmp_path):
    """A cell's file given to `run`: the one-line error says cells step from Python (it
    said only "cannot run LSTMCell(4, 6)")."""
    p = str(tmp_path / "c.safetensors")
    fastrnn.LSTMCell(4, 6, seed=0).save(p)
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    code, _, err = run(capsys, "run", p, "-i", str(tmp_path / "x.npy"), "-o",
                       str(tmp_path / "y.npy"))
    _one_line_error(code, err)
    assert "a cell steps one time step from Python" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """A named pipe as a model or an input file: open() would wait for a writer for
    ever; each loader and the command line name it instead (in a child, so a regression
    fails by its time limit rather than hanging the tests)."""
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    model = os.path.join(FIX, "keras", "k3_lstm_basic.keras")
    code = f"""
import fastrnn, fastrnn.io
from fastrnn.io import safetensors
from fastrnn.io.keras import load_keras
from fastrnn.io.onnx import load_onnx
for f in (fastrnn.load, fastrnn.io.sniff_format, load_keras, load_onnx,
          safetensors.read_safetensors):
    try:
        f({fifo!r})
    except fastrnn.io.LoadError as e:
        assert "it is a FIFO (named pipe)" in str(e), e
    else:
        raise SystemExit(f"{{f.__name__}} took a FIFO")
for p, kind in (("/dev/null", "a device"), ({str(tmp_path)!r}, "a directory")):
    try:
        fastrnn.load(p)
    except fastrnn.io.LoadError as e:
        assert kind in str(e), e
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
    for argv in (["inspect", fifo], ["run", model, "-i", fifo, "-o", str(tmp_path / "y.npy")]):
        p = subprocess.run([sys.executable, "-m", "fastrnn"] + argv, capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 1, p.stderr
        assert p.stderr.strip() == f"fastrnn: error: cannot open {fifo}: it is a FIFO " \
                                   "(named pipe), not a regular file", p.stderr
