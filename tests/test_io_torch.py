"""PyTorch file loading: torch.save zip/legacy reader, state-dict inference, layers from files."""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastrnn
import fastrnn.io as fio
from fastrnn.io import LoadError
from fastrnn.io.statedict import RNNSpec, extract_module, find_rnn_modules
from fastrnn.io.torchfile import ModuleStub, read_torch_file, read_torch_object

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fx(name):
    return os.path.join(FIX, name)


def npz(name):
    with np.load(fx(name)) as z:
        return dict(z)


# ---------------------------------------------------------------- no torch needed

def test_io_modules_import_without_torch():
    """Everything in fastrnn.io works in a process where torch cannot be imported."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fastrnn.io as fio, numpy as np\n"
        f"d = fio.read_torch_file({fx('lstm.pt')!r})\n"
        "assert d['weight_ih_l0'].shape == (32, 4), d['weight_ih_l0'].shape\n"
        f"t, m = fio.read_safetensors({fx('gru2.safetensors')!r})\n"
        "assert t['weight_hh_l1'].shape == (21, 7)\n"
        f"print(fio.sniff_format({fx('legacy.pt')!r}), len(fio.list_modules({fx('seq2seq.pt')!r})))\n"
        f"layer = fio.load_state_dict({fx('lstm_proj.pt')!r})\n"
        f"ref = np.load({fx('lstm_proj.npz')!r})\n"
        "assert np.abs(layer(ref['x'])[0] - ref['out']).max() < 1e-5\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["torch-legacy", "2"]


def test_io_package_import_is_lazy():
    code = ("import sys, fastrnn.io\n"
            "bad = [m for m in ('fastrnn.io.torchfile', 'fastrnn.io.safetensors', 'fastrnn.io.statedict')"
            " if m in sys.modules]\nassert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_read_state_dict_fixture_values():
    d = read_torch_file(fx("lstm.pt"))
    assert sorted(d) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous and v.flags.writeable
               for v in d.values())
    assert d["weight_ih_l0"].shape == (32, 4)
    assert d["bias_hh_l0"].shape == (32,)
    # PyTorch's default init is U(-1/sqrt(H), 1/sqrt(H)) with H = 8
    assert 0 < np.abs(d["weight_hh_l0"]).max() <= 1 / np.sqrt(8)


def test_file_object_and_bytes_inputs():
    with open(fx("lstm.pt"), "rb") as f:
        raw = f.read()
    a = read_torch_file(io.BytesIO(raw))
    b = read_torch_file(raw)
    c = read_torch_file(fx("lstm.pt"))
    for k in c:
        np.testing.assert_array_equal(a[k], c[k])
        np.testing.assert_array_equal(b[k], c[k])


def test_checkpoint_dict_flattened():
    d = read_torch_file(fx("checkpoint.pt"))
    assert set(d) == {f"state_dict.{w}_l0{s}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                      for s in ("", "_reverse")}
    obj = read_torch_object(fx("checkpoint.pt"))
    assert obj["epoch"] == 3 and obj["best_loss"] == 0.25 and obj["note"] == "fixture"
    assert obj["history"] == [1.0, 0.5] and obj["extra"] is None
    [spec] = find_rnn_modules(d)
    assert spec.prefix == "state_dict" and spec.cell == "LSTM" and spec.bidirectional


def test_whole_module_pickle_read_as_inert_stub():
    obj = read_torch_object(fx("gru_module.pt"))
    assert isinstance(obj, ModuleStub) and obj.cls == "torch.nn.modules.rnn.GRU"
    assert obj.state["hidden_size"] == 5
    d = read_torch_file(fx("gru_module.pt"))
    assert sorted(d) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    assert d["weight_hh_l0"].shape == (15, 5)


def test_legacy_format_is_read():
    assert fio.sniff_format(fx("legacy.pt")) == "torch-legacy"
    d = read_torch_file(fx("legacy.pt"))
    assert sorted(d) == sorted(f"{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                               for k in (0, 1))
    assert d["weight_ih_l1"].shape == (16, 4)


def test_seq2seq_lists_modules():
    specs = fio.list_modules(fx("seq2seq.pt"))
    assert [s.prefix for s in specs] == ["encoder.lstm", "decoder.gru"]
    enc, dec = specs
    assert (enc.cell, enc.input_size, enc.hidden_size, enc.num_layers, enc.bidirectional) == (
        "LSTM", 4, 6, 1, True)
    assert (dec.cell, dec.input_size, dec.hidden_size, dec.num_layers, dec.bidirectional) == (
        "GRU", 12, 5, 2, False)
    sub = extract_module(read_torch_file(fx("seq2seq.pt")), "decoder.gru.")
    assert sorted(sub) == sorted(f"{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                 for k in (0, 1))
    with pytest.raises(LoadError, match="encoder.lstm.*decoder.gru"):
        fio.load_state_dict(fx("seq2seq.pt"))
    with pytest.raises(LoadError, match="no recurrent module with prefix 'fc'"):
        fio.load_state_dict(fx("seq2seq.pt"), prefix="fc")


def test_sniff_formats(tmp_path):
    assert fio.sniff_format(fx("lstm.pt")) == "torch-zip"
    assert fio.sniff_format(fx("gru2.safetensors")) == "safetensors"
    assert fio.sniff_format(fx("lstm.npz")) == "npz"
    h5 = tmp_path / "w.bin"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert fio.sniff_format(h5) == "hdf5"
    ub = tmp_path / "userblock.h5"
    ub.write_bytes(bytes(512) + b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert fio.sniff_format(ub) == "hdf5"
    k = tmp_path / "m.keras"
    with zipfile.ZipFile(k, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    assert fio.sniff_format(k) == "keras-zip"
    # a real ONNX model, by content and by suffix
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    data = helper.make_model(g).SerializeToString()
    (tmp_path / "model.bin").write_bytes(data)
    (tmp_path / "model.onnx").write_bytes(data)
    assert fio.sniff_format(tmp_path / "model.bin") == "onnx"
    assert fio.sniff_format(tmp_path / "model.onnx") == "onnx"
    with open(tmp_path / "model.onnx", "rb") as f:
        f.seek(0)
        assert fio.sniff_format(f) == "onnx"
        assert f.tell() == 0
    del onnx


def test_sniff_unknown_names_the_file(tmp_path):
    p = tmp_path / "weights.xyz"
    p.write_bytes(b"hello world, not a model")
    with pytest.raises(LoadError, match="weights.xyz"):
        fio.sniff_format(p)
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(LoadError, match="other.zip"):
        fio.sniff_format(z)
    with pytest.raises(LoadError, match="missing.pt"):
        fio.sniff_format(tmp_path / "missing.pt")


# ---------------------------------------------------------------- state-dict inference errors

def _sd(cell="LSTM", I=3, H=4, L=2, D=1, bias=True, P=0):
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    Hout = P or H
    d = {}
    for k in range(L):
        for s in ("", "_reverse")[:D]:
            d[f"weight_ih_l{k}{s}"] = np.zeros((G * H, I if k == 0 else D * Hout), np.float32)
            d[f"weight_hh_l{k}{s}"] = np.zeros((G * H, Hout), np.float32)
            if bias:
                d[f"bias_ih_l{k}{s}"] = np.zeros(G * H, np.float32)
                d[f"bias_hh_l{k}{s}"] = np.zeros(G * H, np.float32)
            if P:
                d[f"weight_hr_l{k}{s}"] = np.zeros((P, H), np.float32)
    return d


def test_inference_from_synthetic_dicts():
    sd = {f"encoder.lstm.{k}": v for k, v in _sd("LSTM", 3, 4, 2, 2, P=2).items()}
    sd |= {f"decoder.gru.{k}": v for k, v in _sd("GRU", 4, 6, 2, 2, bias=False).items()}
    sd |= {"fc.weight": np.zeros((2, 6)), "fc.bias": np.zeros(2), "rnn.weight_ih": np.zeros((4, 3))}
    enc, dec = find_rnn_modules(sd)
    assert enc == RNNSpec("encoder.lstm", "LSTM", 3, 4, 2, True, True, 2)
    assert dec == RNNSpec("decoder.gru", "GRU", 4, 6, 2, True, False, 0)
    [r] = find_rnn_modules(_sd("RNN", 5, 5, 1))
    assert (r.cell, r.input_size, r.hidden_size, r.nonlinearity) == ("RNN", 5, 5, "tanh")


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.__setitem__("weight_hh_l1", np.zeros((16, 5))), "weight_hh_l1"),
    (lambda d: d.pop("bias_hh_l0"), "bias_hh_l0"),
    (lambda d: [d.pop(k) for k in list(d) if k.endswith("_l1")], None),  # fine: 1 layer
    (lambda d: d.update({f"{w}_l3": d[f"{w}_l1"] for w in ("weight_ih", "weight_hh", "bias_ih",
                                                            "bias_hh")}), "weight_ih_l2"),
    (lambda d: d.__setitem__("weight_ih_l1", np.zeros((16, 3))), "weight_ih_l1"),
    (lambda d: d.__setitem__("weight_hh_l0", np.zeros((10, 4))), "weight_hh_l0"),
    (lambda d: d.__setitem__("bias_ih_l0", np.zeros((16, 1))), "bias_ih_l0"),
    (lambda d: d.__setitem__("weight_ih_l0_reverse", np.zeros((16, 3))), "weight_hh_l0_reverse"),
    (lambda d: d.pop("weight_ih_l1"), "weight_ih_l1"),
])
def test_inconsistent_state_dict_names_the_key(mutate, key):
    d = _sd("LSTM", 3, 4, 2)
    mutate(d)
    if key is None:
        assert find_rnn_modules(d)[0].num_layers == 1
        return
    with pytest.raises(LoadError, match=key):
        find_rnn_modules(d)


def test_extract_module_prefix_forms():
    sd = {"a.b.weight_ih_l0": 1, "a.b.weight_hh_l0": 2, "weight_ih_l0": 3}
    assert extract_module(sd, "a.b") == {"weight_ih_l0": 1, "weight_hh_l0": 2}
    assert extract_module(sd, "a.b.") == {"weight_ih_l0": 1, "weight_hh_l0": 2}
    assert extract_module(sd, "") == {"weight_ih_l0": 3}
    with pytest.raises(LoadError, match="'a'"):
        extract_module(sd, "a")


# ---------------------------------------------------------------- live torch comparisons

def _flat_torch(obj, prefix=""):
    import torch

    out = {}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat_torch(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flat_torch(v, f"{prefix}.{i}" if prefix else str(i)))
    elif isinstance(obj, torch.Tensor):
        obj = obj.detach()
        out[prefix] = obj.float().numpy() if obj.dtype == torch.bfloat16 else obj.numpy()
    return out


@pytest.mark.parametrize("name", ["lstm", "gru_bi2", "rnn_relu", "lstm_proj", "lstm_f64",
                                  "gru_module", "checkpoint", "legacy", "seq2seq"])
def test_fixture_matches_torch_load(name):
    torch = pytest.importorskip("torch")
    ref = _flat_torch(torch.load(fx(name + ".pt"), weights_only=(name != "gru_module")))
    got = read_torch_file(fx(name + ".pt"))
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_live_views_dtypes_and_strides(tmp_path):
    """Views with storage offsets and strides, shared storages, every dtype, bf16, scalars."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    objs = {
        "t": base.t(),                      # transposed (strides (1, 7))
        "slice": base[2:5, 1::3],           # offset + step
        "row": base[4],                     # offset into a shared storage
        "expand": torch.randn(1, 3, generator=g).expand(4, 3),  # stride 0
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "f64": torch.randn(3, 2, dtype=torch.float64, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3),
        "i32": torch.arange(4, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.arange(-2, 2, dtype=torch.int8),
        "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "nested": {"list": [torch.ones(2), (torch.zeros(1), 3)], "n": None, "s": "x"},
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    p = tmp_path / "views.pt"
    torch.save(objs, p)
    got = read_torch_file(p)
    ref = _flat_torch(objs)
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype, k
    assert got["bf16"].dtype == np.float32
    # the views do not alias each other
    got["row"][0] = 1e9
    assert got["t"][0, 4] != 1e9


def test_random_grid_of_torch_modules_inferred():
    """Seeded grid over real torch modules: cell, layers, direction, bias, projection, sizes."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1234)
    cases = list(itertools.product(["RNN", "LSTM", "GRU"], [1, 2, 3], [False, True], [False, True],
                                   [False, True]))
    n = 0
    for cell, L, bi, bias, proj in cases:
        if proj and cell != "LSTM":
            continue
        I, H = (int(v) for v in rng.integers(1, 9, size=2))
        H = max(H, 2)
        kw = dict(num_layers=L, bidirectional=bi, bias=bias)
        P = int(rng.integers(1, H)) if proj else 0
        if proj:
            kw["proj_size"] = P
        mod = getattr(torch.nn, cell)(I, H, **kw)
        sd = {"model.rnn." + k: v.detach().numpy() for k, v in mod.state_dict().items()}
        sd["model.head.weight"] = np.zeros((2, H))
        [spec] = find_rnn_modules(sd)
        nl = "tanh" if cell == "RNN" else None
        assert spec == RNNSpec("model.rnn", cell, I, H, L, bi, bias, P, nl), (cell, I, H, kw)
        n += 1
    assert n == 12 + 12 + 24  # RNN, GRU, LSTM (with and without projection)


# ---------------------------------------------------------------- layers from files

def _check_layer(layer, ref, prefix="", atol=1e-5):
    x = ref[prefix + "x"]
    res = layer(x)
    out, h = res
    np.testing.assert_allclose(out, ref[prefix + "out"], rtol=0, atol=atol)
    if isinstance(h, tuple):
        np.testing.assert_allclose(h[0], ref[prefix + "h_n"], rtol=0, atol=atol)
        np.testing.assert_allclose(h[1], ref[prefix + "c_n"], rtol=0, atol=atol)
    else:
        np.testing.assert_allclose(h, ref[prefix + "h_n"], rtol=0, atol=atol)


@pytest.mark.parametrize("name, kw", [
    ("lstm", {}),
    ("gru_bi2", {"batch_first": True}),
    ("rnn_relu", {"nonlinearity": "relu"}),
    ("lstm_proj", {}),
    ("lstm_f64", {}),
    ("gru_module", {}),
    ("checkpoint", {}),
    ("legacy", {}),
])
def test_layer_from_file_matches_torch_output(name, kw):
    layer = fio.load_state_dict(fx(name + ".pt"), **kw)
    ref = npz(name + ".npz")
    if name == "lstm_f64":
        assert layer.dtype == np.float64
        _check_layer(layer, ref, atol=1e-12)
    else:
        assert layer.dtype == np.float32
        _check_layer(layer, ref)


def test_rnn_nonlinearity_defaults_to_tanh_and_is_overridable():
    tanh = fio.load_state_dict(fx("rnn_relu.pt"))
    assert tanh.nonlinearity == "tanh"
    ref = npz("rnn_relu.npz")
    assert not np.allclose(tanh(ref["x"])[0], ref["out"], atol=1e-5)
    relu = fio.load_state_dict(fx("rnn_relu.pt"), nonlinearity="relu")
    _check_layer(relu, ref)


def test_seq2seq_modules_by_prefix():
    ref = npz("seq2seq.npz")
    enc = fio.load_state_dict(fx("seq2seq.pt"), prefix="encoder.lstm")
    dec = fio.load_state_dict(fx("seq2seq.pt"), prefix="decoder.gru.", cell="GRU")
    _check_layer(enc, ref, "enc_")
    _check_layer(dec, ref, "dec_")
    with pytest.raises(LoadError, match="is a GRU"):
        fio.load_state_dict(fx("seq2seq.pt"), prefix="decoder.gru", cell="LSTM")


def test_safetensors_from_reference_writer_builds_layer():
    layer = fio.load_any_torchlike(fx("gru2.safetensors"))
    _check_layer(layer, npz("gru2.npz"))
    import fastrnn

    _check_layer(fastrnn.load(fx("gru2.safetensors")), npz("gru2.npz"))
    _check_layer(fastrnn.load(fx("lstm.pt")), npz("lstm.npz"))


def test_state_dict_mapping_input():
    d = read_torch_file(fx("lstm.pt"))
    layer = fio.load_state_dict(d)
    _check_layer(layer, npz("lstm.npz"))


def test_fastrnn_safetensors_round_trip(tmp_path):
    import fastrnn

    layer = fio.load_state_dict(fx("lstm_proj.pt"))
    p = tmp_path / "m.safetensors"
    fio.save(layer, p)
    back = fio.load_fastrnn_safetensors(p)
    assert back.get_config() == layer.get_config()
    _check_layer(back, npz("lstm_proj.npz"))
    relu = fio.load_state_dict(fx("rnn_relu.pt"), nonlinearity="relu", batch_first=False)
    relu.save(tmp_path / "r.safetensors")
    again = fastrnn.load(tmp_path / "r.safetensors")
    assert again.nonlinearity == "relu"
    _check_layer(again, npz("rnn_relu.npz"))
    with pytest.raises(LoadError, match="no 'fastrnn' entry"):
        fio.load_fastrnn_safetensors(fx("gru2.safetensors"))


def test_legacy_and_whole_module_through_dispatcher():
    import fastrnn

    _check_layer(fastrnn.load(fx("legacy.pt")), npz("legacy.npz"))
    _check_layer(fastrnn.load(fx("gru_module.pt")), npz("gru_module.npz"))


def test_whole_module_pickle_keeps_rnn_settings(tmp_path):
    """torch.save(module) records nonlinearity and batch_first; the stub reader uses them."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(11)
    m = torch.nn.RNN(3, 4, nonlinearity="relu", batch_first=True).eval()
    p = tmp_path / "rnn_module.pt"
    torch.save(m, p)
    [spec] = fio.list_modules(p)
    assert spec.cell == "RNN" and spec.nonlinearity == "relu"
    layer = fio.load_state_dict(p)
    assert layer.nonlinearity == "relu" and layer.batch_first
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(layer(x)[0], ref, atol=1e-5, rtol=0)
    # a model made of several torch modules (Sequential of an LSTM and a Linear)
    seq = torch.nn.Sequential(torch.nn.LSTM(3, 4), torch.nn.Linear(4, 2))
    torch.save(seq, tmp_path / "seq.pt")
    d = read_torch_file(tmp_path / "seq.pt")
    assert set(d) == set(seq.state_dict())
    assert [s.prefix for s in fio.list_modules(tmp_path / "seq.pt")] == ["0"]


def _zip_items(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write_zip(out, items) -> str:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, v in items.items():
            z.writestr(n, v)
    return str(out)


def _mutated_loads(items, targets, tmp_path, suffix, byte_range, n=400):
    """Load ``n`` copies of an archive with 1-3 random bytes of one of ``targets``
    changed: the set of outcomes ("loaded", "error": a LoadError); anything else raises."""
    import fastrnn
    from fastrnn.io import LoadError
    rng = np.random.default_rng(0)
    kinds = set()
    for k in range(n):
        name = targets[k % len(targets)]
        data = bytearray(items[name])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(*byte_range))
        out = _write_zip(tmp_path / f"mut{k % 4}{suffix}", {**items, name: bytes(data)})
        try:
            fastrnn.load(out)
            kinds.add("loaded")
        except LoadError:
            kinds.add("error")
    return kinds


# --------------------------------------------------------------------------
# TorchScript archives (torch.jit.save), made here with the real PyTorch: their
# TorchScript serialisation is not byte-reproducible (a random serialization id, code
# lines in hash order), so they are not committed fixtures


def _ts_case(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(21)

    class Head(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn
            out = rnn.proj_size if getattr(rnn, "proj_size", 0) else rnn.hidden_size
            self.fc = torch.nn.Linear(out * (2 if rnn.bidirectional else 1), 2)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y)

    rnn = {"lstm_bi_bf": lambda: torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True,
                                               batch_first=True),
           "gru_bf": lambda: torch.nn.GRU(4, 6, batch_first=True),
           "rnn_relu": lambda: torch.nn.RNN(3, 4, nonlinearity="relu"),
           "lstm_proj": lambda: torch.nn.LSTM(4, 6, proj_size=3)}[kind]().eval()
    bf = rnn.batch_first
    x = np.random.default_rng(3).standard_normal((2, 7, rnn.input_size) if bf else
                                                (7, 2, rnn.input_size)).astype(np.float32)
    with torch.no_grad():
        want = rnn(torch.from_numpy(x))
    return torch, rnn, Head(rnn).eval(), x, want


def _same_as_torch(layer, rnn, x, want):
    """The loaded layer has the torch module's settings and gives its outputs."""
    assert layer.batch_first == rnn.batch_first
    assert layer.bidirectional == rnn.bidirectional and layer.num_layers == rnn.num_layers
    out, h = layer(x)
    np.testing.assert_allclose(out, want[0].numpy(), rtol=1e-5, atol=1e-5)
    wh = want[1] if isinstance(want[1], tuple) else (want[1],)
    for a, b in zip(h if isinstance(h, tuple) else (h,), wh, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
@pytest.mark.filterwarnings("ignore:Converting a tensor")      # (tracing torch.nn RNNs)
@pytest.mark.parametrize("kind", ["lstm_bi_bf", "gru_bf", "rnn_relu", "lstm_proj"])
@pytest.mark.parametrize("how", ["script", "trace", "script_net", "trace_net"])
def test_torchscript_archives_load_and_match_torch(kind, how, tmp_path):
    """``torch.jit.save`` of a scripted or traced torch.nn RNN, alone or inside a model
    with a head: the recurrent layer, its settings (batch_first, bidirectional,
    nonlinearity, proj_size: from the archive's code, read as text) and its outputs
    match PyTorch's; nothing from the archive's code is run."""
    import fastrnn
    torch, rnn, net, x, want = _ts_case(kind)
    mod = net if how.endswith("_net") else rnn
    with torch.no_grad():
        ts = (torch.jit.script(mod) if how.startswith("script")
              else torch.jit.trace(mod, torch.from_numpy(x)))
    path = str(tmp_path / "m.pt")
    ts.save(path)
    _same_as_torch(fastrnn.load(path), rnn, x, want)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
def test_torchscript_archive_modules_and_prefix(tmp_path):
    """A TorchScript model with two recurrent modules: both listed under their dotted
    names (as a state dict's), each loaded by its prefix."""
    torch = pytest.importorskip("torch")
    import fastrnn
    from fastrnn.io import statedict

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.LSTM(3, 4)
            self.dec = torch.nn.GRU(4, 5)

        def forward(self, x):
            return self.dec(self.enc(x)[0])[0]

    torch.manual_seed(5)
    m = Two().eval()
    path = str(tmp_path / "two.pt")
    torch.jit.script(m).save(path)
    names = sorted(s.prefix for s in statedict.list_modules(path))
    assert names == ["dec", "enc"]
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want = m.enc(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(fastrnn.load(path, prefix="enc")(x)[0], want, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
def test_torchscript_code_is_never_run(tmp_path):
    """The archive's code is read as text for the RNNs' settings only: code that would
    run something (a forward calling os.system) loads as the same inert parameters, and
    a pickle global outside TorchScript's classes and type tags is still refused."""
    torch = pytest.importorskip("torch")
    import fastrnn
    from fastrnn.io import UnsafeFileError

    class Evil(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(2, 3)

        def forward(self, x):
            return self.rnn(x)[0]

    path = str(tmp_path / "evil.pt")
    torch.jit.script(Evil().eval()).save(path)
    items = _zip_items(path)
    marker = tmp_path / "ran"
    code = [k for k in items if "/code/" in k and k.endswith(".py")][0]
    items[code] = items[code] + f"\nimport os\nos.system('touch {marker}')\n".encode()
    pkl = [k for k in items if k.endswith("/data.pkl")][0]
    layer = fastrnn.load(_write_zip(tmp_path / "evil2.pt", items))
    assert isinstance(layer, fastrnn.GRU) and not marker.exists()
    # a global that is not a TorchScript class, type tag or tensor builder: refused
    assert b"ccollections\nOrderedDict\n" in items[pkl]
    items[pkl] = items[pkl].replace(b"ccollections\nOrderedDict\n", b"cposix\nsystem\n")
    with pytest.raises(UnsafeFileError):
        fastrnn.load(_write_zip(tmp_path / "evil3.pt", items))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
def test_torchscript_archives_mutated_are_load_errors(tmp_path):
    """400 random byte changes of a TorchScript archive's data.pkl or its RNN's code
    text: each loads or raises LoadError, nothing else (in this process)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    path = str(tmp_path / "m.pt")
    torch.jit.script(torch.nn.LSTM(3, 4, batch_first=True).eval()).save(path)
    items = _zip_items(path)
    targets = [k for k in items if k.endswith(("/data.pkl", "/nn/modules/rnn.py"))]
    assert len(targets) == 2
    assert _mutated_loads(items, targets, tmp_path, ".pt", (0, 256)) == {"loaded", "error"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_two_modules_of_one_class_with_different_settings(how, tmp_path):
    """Two GRUs of different settings in one archive: TorchScript gives the second its
    own (mangled) class and code file; each gets its own settings."""
    torch = pytest.importorskip("torch")
    import fastrnn

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.GRU(3, 4, batch_first=True)
            self.b = torch.nn.GRU(4, 5, bidirectional=True)

        def forward(self, x):
            return self.b(self.a(x)[0].transpose(0, 1))[0]

    torch.manual_seed(0)
    m = Two().eval()
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    xb = np.random.default_rng(1).standard_normal((6, 2, 4)).astype(np.float32)
    with torch.no_grad():
        ts = torch.jit.script(m) if how == "script" else torch.jit.trace(m, torch.from_numpy(x))
    path = str(tmp_path / "two.pt")
    ts.save(path)
    for prefix, sub, xx, bf in (("a", m.a, x, True), ("b", m.b, xb, False)):
        lay = fastrnn.load(path, prefix=prefix)
        assert lay.batch_first == bf and lay.bidirectional == (not bf)
        with torch.no_grad():
            want = sub(torch.from_numpy(xx))[0].numpy()
        np.testing.assert_allclose(lay(xx)[0], want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# torch.export archives (.pt2), made here with the real PyTorch


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["lstm_bi_bf", "gru_bf", "rnn_relu", "lstm_proj"])
@pytest.mark.parametrize("net", [False, True])
def test_torch_export_archives_load_and_match_torch(kind, net, tmp_path):
    """``torch.export.save`` of a torch.nn RNN, alone or inside a model with a head: the
    layer, its settings (read from the exported graph's aten.lstm / gru / rnn_* node,
    never run) and its outputs match PyTorch's."""
    import fastrnn
    torch, rnn, head, x, want = _ts_case(kind)
    mod = head if net else rnn
    ep = torch.export.export(mod, (torch.from_numpy(x),))
    path = str(tmp_path / "m.pt2")
    torch.export.save(ep, path)
    assert fastrnn.io.sniff_format(path) == "torch-export"
    _same_as_torch(fastrnn.load(path), rnn, x, want)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_export_archives_mutated_are_load_errors(tmp_path):
    """400 random byte changes of a .pt2 archive's weight config, a weight file or its
    graph: each loads or raises LoadError, nothing else."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    m = torch.nn.GRU(3, 4, batch_first=True).eval()
    path = str(tmp_path / "m.pt2")
    torch.export.save(torch.export.export(m, (torch.zeros(2, 5, 3),)), path)
    items = _zip_items(path)
    targets = [k for k in items if k.endswith(("model_weights_config.json", "weights/weight_0",
                                               "models/model.json"))]
    assert len(targets) == 3
    assert _mutated_loads(items, targets, tmp_path, ".pt2", (32, 127)) == {"loaded", "error"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_export_archive_bad_tensor_descriptions(tmp_path):
    """A .pt2 weight config whose sizes, strides or offset reach past the stored values,
    repeat them without end (stride 0), or name a path outside the weights folder: a
    LoadError naming the weight, before anything large is allocated."""
    torch = pytest.importorskip("torch")
    import json

    import fastrnn
    from fastrnn.io import LoadError
    path = str(tmp_path / "m.pt2")
    torch.export.save(torch.export.export(torch.nn.GRU(3, 4).eval(), (torch.zeros(5, 2, 3),)),
                      path)
    items = _zip_items(path)
    cname = [k for k in items if k.endswith("model_weights_config.json")][0]

    def with_meta(change):
        cfg = json.loads(items[cname])
        change(cfg["config"]["weight_ih_l0"])
        return _write_zip(tmp_path / "bad.pt2", {**items, cname: json.dumps(cfg).encode()})

    def sizes(v):
        return lambda e: e["tensor_meta"].__setitem__("sizes", [{"as_int": n} for n in v])

    def strides(v):
        return lambda e: e["tensor_meta"].__setitem__("strides", [{"as_int": n} for n in v])

    cases = [(sizes([12, 4]), "reaches past"),
             (lambda e: (sizes([10 ** 12, 3])(e), strides([0, 1])(e)), "values from 36 stored"),
             (lambda e: e["tensor_meta"].__setitem__("storage_offset", {"as_int": 30}),
              "reaches past"),
             (lambda e: e.__setitem__("path_name", "../../x"), "no valid path_name"),
             (lambda e: e["tensor_meta"].__setitem__("dtype", 99), "unsupported dtype"),
             (lambda e: e.__setitem__("use_pickle", True), "pickle")]
    for change, msg in cases:
        with pytest.raises(LoadError, match=rf"'weight_ih_l0'.*{msg}|{msg}.*'weight_ih_l0'"):
            fastrnn.load(with_meta(change))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (torch.jit, deprecated in 2.13)
def test_torchscript_code_text_cannot_stall_the_reader(tmp_path):
    """An archive whose RNN code has a 3-million-space line where a setting is read:
    loaded at once in a child process (a pattern with a lazy group before trailing
    spaces took time quadratic in such a line: hours here)."""
    import subprocess
    import sys
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "m.pt")
    torch.jit.script(torch.nn.LSTM(3, 4, batch_first=True).eval()).save(path)
    items = _zip_items(path)
    code = [k for k in items if k.endswith("/nn/modules/rnn.py")][0]
    text = items[code].decode()
    text = text.replace("  hidden_size : Final[int]",
                        "  mode : Final[str] = " + " " * 3_000_000 + "x\n  hidden_size : Final[int]", 1)
    out = _write_zip(tmp_path / "long.pt", {**items, code: text.encode()})
    prog = ("import fastrnn, sys; l = fastrnn.load(sys.argv[1]); "
            "print(l.batch_first, l.hidden_size)")
    r = subprocess.run([sys.executable, "-c", prog, out], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=os.path.dirname(
                           os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "4"]


@pytest.mark.parametrize("zipped", [True, False])
def test_load_holds_the_weights_once_at_its_peak(tmp_path, zipped):
    """A tensor that is its whole storage is read straight into its own array, which the
    layer keeps: a .pt load's peak is about the weights once (it was ~3x: the storages,
    the tensors copied from them, the layer's copies).  One tensor named twice (tied
    weights) still gives the layer two arrays."""
    from reference import allocation_peak
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mod = torch.nn.GRU(48, 96, num_layers=2, bidirectional=True)
    sd = mod.state_dict()
    weights = sum(t.numel() * 4 for t in sd.values())
    path = str(tmp_path / "m.pt")
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    layer, peak = allocation_peak(lambda: fio.load_state_dict(path))
    assert peak < 1.3 * weights, (peak, weights)
    x = torch.randn(5, 3, 48)
    with torch.no_grad():
        want = mod(x)[0].numpy()
    np.testing.assert_allclose(layer(x.numpy())[0], want, rtol=1e-5, atol=1e-6)
    tied = dict(sd)
    tied["weight_hh_l0_reverse"] = tied["weight_hh_l0"]
    torch.save(tied, path, _use_new_zipfile_serialization=zipped)
    layer = fio.load_state_dict(path)
    p = layer.parameters()
    assert p["weight_hh_l0"] is not p["weight_hh_l0_reverse"]
    np.testing.assert_array_equal(p["weight_hh_l0"], p["weight_hh_l0_reverse"])
    # a view of a storage read first keeps the right values (transposed, offset)
    view = {k: v.clone() for k, v in sd.items()}
    big = torch.randn(2, *sd["weight_ih_l0"].shape)
    view["weight_ih_l0"] = big[1]
    view["weight_ih_l0_reverse"] = big[0]
    torch.save(view, path, _use_new_zipfile_serialization=zipped)
    p = fio.load_state_dict(path).parameters()
    np.testing.assert_array_equal(p["weight_ih_l0"], big[1].numpy())
    np.testing.assert_array_equal(p["weight_ih_l0_reverse"], big[0].numpy())


# ---------------------------------------------------------------- audit: torch variants

def _torch_out(m, x):
    import torch

    with torch.no_grad():
        out, h = m(torch.from_numpy(x))
    return out.numpy(), h


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "Sequential"])
def test_legacy_whole_module_pickles_load_and_match_torch(kind, tmp_path):
    """torch.save(module, _use_new_zipfile_serialization=False) names each module class in
    a ("module", class, source file, source) persistent id: it was "unsupported persistent
    id" (with the class's repr and the source path)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    rnn = (torch.nn.LSTM(3, 5, num_layers=2, batch_first=True, proj_size=2) if kind != "GRU"
           else torch.nn.GRU(3, 5, bidirectional=True, batch_first=True))
    m = (torch.nn.Sequential(rnn) if kind == "Sequential" else rnn).eval()
    p = tmp_path / "whole_legacy.pt"
    torch.save(m, p, _use_new_zipfile_serialization=False)
    assert fio.sniff_format(p) == "torch-legacy"
    got = read_torch_file(p)
    ref = m.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k].numpy())
    layer = fio.load_state_dict(p)
    assert layer.batch_first                   # (from the pickled module, as for zip files)
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(x)[0], _torch_out(rnn, x)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("protocol", [1, 3, 4, 5])
def test_legacy_format_under_other_pickle_protocols(protocol, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4): the magic
    number's pickle is framed; it was "a plain pickle, not a torch.save file".  Protocol
    1 writes it as text: it was "unknown model file format".  (Protocol 0 files torch
    itself cannot read.)"""
    torch = pytest.importorskip("torch")
    torch.manual_seed(4)
    sd = torch.nn.GRU(3, 4, num_layers=2).state_dict()
    p = tmp_path / "legacy_p.pt"
    torch.save({"epoch": 1, "model": sd}, p, _use_new_zipfile_serialization=False,
               pickle_protocol=protocol)
    got = read_torch_file(p)
    assert set(got) == {"model." + k for k in sd}
    for k, v in sd.items():
        np.testing.assert_array_equal(got["model." + k], v.numpy())
    # and through fastrnn.load's format check
    from fastrnn.io.detect import sniff_format
    assert sniff_format(p) == "torch-legacy"
    layer = fio.load(p)
    np.testing.assert_array_equal(layer.state_dict()["weight_hh_l1"], sd["weight_hh_l1"].numpy())


def test_legacy_storages_are_little_endian_whatever_sysinfo_says(tmp_path):
    """The legacy format writes storages little-endian on every machine (torch converts on
    big-endian ones) and torch.load ignores the header's "little_endian": a file written on
    a big-endian machine was read byte-swapped (wrong numbers, no error)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    sd = {"w": torch.randn(3, 4), "d": torch.randn(5, dtype=torch.float64),
          "h": torch.randn(2).half(), "b": torch.randn(3).bfloat16(), "i": torch.arange(3)}
    p = tmp_path / "legacy_be.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    # the sysinfo pickle's "little_endian": True (BINUNICODE, BINPUT n, NEWTRUE) -> False
    raw, n = re.subn(rb"(X\r\x00\x00\x00little_endianq.)\x88", lambda m: m.group(1) + b"\x89",
                     p.read_bytes())
    assert n == 1
    p.write_bytes(raw)
    ref = torch.load(p, weights_only=True)
    got = read_torch_file(p)
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v.float().numpy() if k == "b" else v.numpy(), err_msg=k)


def _parametrize(torch, m, how, name):
    import torch.nn.utils.parametrizations as pz
    import torch.nn.utils.prune as prune
    import warnings

    if how == "weight_norm":
        pz.weight_norm(m, name)
    elif how == "spectral_norm":
        pz.spectral_norm(m, name)
    elif how == "old_weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.nn.utils.weight_norm(m, name)
    else:
        prune.l1_unstructured(m, name, 0.5)
    return m


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "old_weight_norm", "prune"])
@pytest.mark.parametrize("where", ["layer", "cell"])
def test_parametrized_weights_refused_by_name(how, where, tmp_path):
    """A parametrized, weight-normed or pruned RNN weight is saved under names of its own
    (parametrizations.weight_hh_l0.original0, weight_hh_l0_g, weight_hh_l0_orig ...): it
    was "state dict key 'enc.weight_hh_l0': missing"; now refused naming the key and the
    way out, and another module of the file still loads by its prefix."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(6)
    enc = torch.nn.GRU(3, 4) if where == "layer" else torch.nn.GRUCell(3, 4)
    name = "weight_hh_l0" if where == "layer" else "weight_hh"
    net = torch.nn.Module()
    net.enc = _parametrize(torch, enc, how, name)
    net.dec = torch.nn.LSTM(4, 2)
    p = tmp_path / "param.pt"
    torch.save(net.state_dict(), p)
    remove = {"weight_norm": "remove_parametrizations", "spectral_norm": "remove_parametrizations",
              "old_weight_norm": "remove_weight_norm", "prune": "prune.remove"}[how]
    for call in (lambda: fio.list_modules(p), lambda: fio.load_state_dict(p),
                 lambda: fio.load_state_dict(p, prefix="enc")):
        with pytest.raises(LoadError, match=rf"'enc\.[^']*{name}[^']*': {name} of module 'enc' "
                                            rf"is .*{remove}") as ei:
            call()
        assert "missing" not in str(ei.value)
    layer = fio.load_state_dict(p, prefix="dec")
    np.testing.assert_array_equal(layer.weight_hh_l0, net.dec.weight_hh_l0.detach().numpy())


def test_prefix_loads_its_module_whatever_the_others(tmp_path):
    """safetensors.torch.save_model keeps one name of a tied weight and names the other in
    the metadata ({dropped: kept}): both modules load (b's weight was "missing", and
    load_state_dict(prefix=) of the complete module refused the file before that)."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(7)
    net = torch.nn.Module()
    net.a = torch.nn.GRU(3, 3)
    net.b = torch.nn.GRU(3, 3)
    net.b.weight_hh_l0 = net.a.weight_hh_l0
    p = tmp_path / "tied.safetensors"
    st.save_model(net, str(p))
    layer = fio.load_state_dict(p, prefix="a")
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(x)[0], _torch_out(net.a.eval(), x)[0], rtol=0, atol=1e-5)
    layer_b = fio.load_state_dict(p, prefix="b")
    np.testing.assert_allclose(layer_b(x)[0], _torch_out(net.b.eval(), x)[0], rtol=0, atol=1e-5)
    # one LSTM whose two biases are one parameter
    lstm = torch.nn.LSTM(3, 4)
    lstm.bias_hh_l0 = lstm.bias_ih_l0
    st.save_model(lstm, str(tmp_path / "bias.safetensors"))
    np.testing.assert_allclose(fio.load_state_dict(tmp_path / "bias.safetensors")(x)[0],
                               _torch_out(lstm.eval(), x)[0], rtol=0, atol=1e-5)
    with pytest.raises(LoadError, match=r"no recurrent module with prefix 'c' \(found: 'a', 'b'\)"):
        fio.load_state_dict(p, prefix="c")


@pytest.mark.parametrize("dtype", ["qint8", "float16"])
@pytest.mark.parametrize("whole", [False, True])
def test_quantized_modules_refused_by_name(dtype, whole, tmp_path):
    """quantize_dynamic's packed weights are TorchScript objects: refused as an unsafe
    global 'torch.ScriptObject' ("not on fastrnn's allow-list"); now a LoadError saying
    quantized, as the README says."""
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings():         # (torch.ao.quantization is deprecated)
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(3, 4)),
                                                   {torch.nn.LSTM}, dtype=getattr(torch, dtype))
    p = tmp_path / "q.pt"
    torch.save(q if whole else q.state_dict(), p)
    with pytest.raises(LoadError, match="quantized") as ei:
        fio.load_state_dict(p)
    assert not isinstance(ei.value, fio.UnsafeFileError)
    assert "state_dict()" in str(ei.value)


def test_whole_data_parallel_pickle_reads(tmp_path):
    """torch.save(nn.DataParallel(module)): a torch.nn module outside torch.nn.modules
    (it was refused as unsafe); its module's parameters under "module."."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(8)
    rnn = torch.nn.LSTM(3, 4, batch_first=True).eval()
    p = tmp_path / "dp.pt"
    torch.save(torch.nn.DataParallel(rnn), p)
    [spec] = fio.list_modules(p)
    assert spec.prefix == "module"
    layer = fio.load_state_dict(p)
    assert layer.batch_first
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(x)[0], _torch_out(rnn, x)[0], rtol=0, atol=1e-5)


def test_parameters_merely_ending_like_weight_norm_are_not_refused():
    """Only a <name>_g beside its <name>_v (a <name>_orig beside its <name>_mask) is a
    weight-normed (pruned) RNN weight: another module's parameter "gate.weight_hh_g" is
    none of fastrnn's business."""
    z = np.zeros((4, 2), np.float32)
    assert find_rnn_modules({"gate.weight_hh_g": z, "gate.bias_ih_orig": z}) == []
    with pytest.raises(LoadError, match="'gate.weight_hh_g': weight_hh of module 'gate' is "
                                        "weight-normed"):
        find_rnn_modules({"gate.weight_hh_g": z, "gate.weight_hh_v": z})

# ------------------------------------------- the caller's keywords, checked before the file
# (an audit: a typo such as batchfirst= was a LoadError blaming the module, after reading it)

def _sd_weights():
    return fastrnn.LSTM(3, 4, num_layers=2, seed=0).state_dict()


@pytest.mark.parametrize("kw", [{"batchfirst": True}, {"bidirectional": True},
                                {"proj_size": 2}, {"num_layers": 3}, {"hard_sigmoid": "keras2"}])
def test_unknown_keyword_is_the_callers_typeerror(kw, tmp_path):
    name = next(iter(kw))
    # a mapping
    with pytest.raises(TypeError, match=name) as ei:
        fastrnn.io.load_state_dict(_sd_weights(), **kw)
    assert not isinstance(ei.value, fastrnn.io.LoadError)
    # a file that does not exist: refused before it is opened
    with pytest.raises(TypeError, match=name):
        fastrnn.io.load_state_dict(tmp_path / "missing.pt", **kw)


def test_unknown_keyword_on_a_torch_file(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "lstm.pt"
    torch.save(torch.nn.LSTM(3, 4).state_dict(), p)
    with pytest.raises(TypeError, match="batchfirst"):
        fastrnn.load(p, batchfirst=True)
    # the keywords it does take still work
    layer = fastrnn.load(p, batch_first=True, dtype="float64", num_threads=1)
    assert layer.batch_first and layer.dtype == np.float64


def test_bad_values_are_the_layers_errors():
    with pytest.raises(TypeError, match="batch_first") as ei:
        fastrnn.io.load_state_dict(_sd_weights(), batch_first="yes")
    assert not isinstance(ei.value, fastrnn.io.LoadError)
    rnn = fastrnn.RNN(3, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="nonlinearity") as ei:
        fastrnn.io.load_state_dict(rnn, nonlinearity="gelu")
    assert not isinstance(ei.value, fastrnn.io.LoadError)
    # a nonlinearity on an LSTM's weights depends on the file: still the loader's LoadError
    with pytest.raises(fastrnn.io.LoadError, match="nonlinearity does not apply"):
        fastrnn.io.load_state_dict(_sd_weights(), nonlinearity="relu")


# --------------------------------------------------------------------------
# from the nineteenth session's audit of PyTorch files (each checked against torch)

def _subclass(torch, base):
    return type("My" + base.__name__, (base,), {"__module__": __name__})


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace", "export", "whole"])
def test_relu_rnn_cell_from_torchscript_and_export(how, tmp_path):
    """An RNNCell(nonlinearity="relu") saved as TorchScript (scripted or traced) or by
    torch.export loaded as tanh (their settings were read for the layers only)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    cell = torch.nn.RNNCell(5, 7, nonlinearity="relu").eval()
    x = torch.randn(3, 5)
    p = str(tmp_path / ("c.pt2" if how == "export" else "c.pt"))
    if how == "script":
        torch.jit.script(cell).save(p)
    elif how == "trace":
        torch.jit.trace(cell, (x,)).save(p)
    elif how == "export":
        torch.export.save(torch.export.export(cell, (x,)), p)
    else:
        torch.save(cell, p)
    got = fastrnn.load(p)
    assert got.nonlinearity == "relu"
    with torch.no_grad():
        want = cell(x).numpy()
    np.testing.assert_allclose(got(x.numpy()), want, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("base", ["LSTM", "RNN"])
@pytest.mark.parametrize("how", ["whole", "trace"])
def test_subclass_of_a_torch_rnn_keeps_its_settings(base, how, tmp_path):
    """class MyLSTM(nn.LSTM) saved whole (module_classes=) or traced: batch_first and
    nonlinearity were read for torch.nn's own classes only (wrong numbers, no error)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    cls = _subclass(torch, getattr(torch.nn, base))
    globals()[cls.__name__] = cls           # (pickle finds the class by its name)
    kw = dict(nonlinearity="relu") if base == "RNN" else {}
    m = cls(5, 7, num_layers=2, batch_first=True, **kw).eval()
    x = torch.randn(3, 6, 5)
    p = str(tmp_path / "m.pt")
    if how == "whole":
        torch.save(m, p)
        got = fastrnn.load(p, module_classes=[f"{__name__}.{cls.__name__}"])
    else:
        torch.jit.trace(m, (x,)).save(p)
        got = fastrnn.load(p)
    assert got.batch_first
    if base == "RNN":
        assert got.nonlinearity == "relu"
    with torch.no_grad():
        want = m(x)[0].numpy()
    np.testing.assert_allclose(got(x.numpy())[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decomposed_export_warns_that_settings_are_unknown(tmp_path):
    """torch.export after run_decompositions() has no aten.rnn_* node: batch_first and
    the nonlinearity cannot be read, so the load warns (it silently assumed False /
    tanh) and the caller's batch_first= / nonlinearity= give torch's numbers."""
    import warnings
    torch = pytest.importorskip("torch")
    torch.manual_seed(6)
    m = torch.nn.RNN(5, 7, batch_first=True, nonlinearity="relu").eval()
    x = torch.randn(3, 6, 5)
    p = str(tmp_path / "d.pt2")
    torch.export.save(torch.export.export(m, (x,)).run_decompositions(), p)
    with pytest.warns(UserWarning, match="batch_first and nonlinearity cannot be read") as w:
        fastrnn.load(p)
    assert w[0].filename == __file__                # (pointed at the caller)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # (both given: no warning)
        got = fastrnn.load(p, batch_first=True, nonlinearity="relu")
    with torch.no_grad():
        want = m(x)[0].numpy()
    np.testing.assert_allclose(got(x.numpy())[0], want, rtol=1e-5, atol=1e-5)
    ep = torch.export.export(m, (x,))               # (not decomposed: no warning)
    torch.export.save(ep, str(tmp_path / "n.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastrnn.load(str(tmp_path / "n.pt2")).batch_first


def test_tensor_with_python_attributes_loads(tmp_path):
    """A tensor carrying Python attributes (a torch.nn.Buffer of a module saved whole, or
    an attribute set by hand) is pickled through torch._tensor._rebuild_from_type_v2:
    refused as unsafe before (the allow-list named torch._utils's, which does not
    exist)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(8)
    lstm = torch.nn.LSTM(5, 7)
    sd = {k: v.clone() for k, v in lstm.state_dict().items()}
    sd["weight_ih_l0"].note = "x"
    torch.save(sd, tmp_path / "sd.pt")
    net = torch.nn.Module()
    net.mean = torch.nn.Buffer(torch.zeros(5))
    net.lstm = lstm
    torch.save(net, tmp_path / "whole.pt")
    x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
    for got in (fastrnn.load(tmp_path / "sd.pt"), fastrnn.load(tmp_path / "whole.pt",
                                                               prefix="lstm")):
        np.testing.assert_allclose(got(x)[0], _torch_out(lstm.eval(), x)[0], rtol=0, atol=1e-5)


def test_legacy_protocol_1_whole_module(tmp_path):
    """torch.save(module, pickle_protocol=1) (legacy format) makes the module with
    copy_reg._reconstructor: read as the inert container the other protocols give."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(9)
    m = torch.nn.GRU(3, 4, batch_first=True).eval()
    p = tmp_path / "p1.pt"
    torch.save(m, p, _use_new_zipfile_serialization=False, pickle_protocol=1)
    got = fastrnn.load(p)
    assert got.batch_first
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(got(x)[0], _torch_out(m, x)[0], rtol=0, atol=1e-5)


def test_reconstructor_makes_module_stubs_only():
    """copy_reg._reconstructor of anything but a module stub class over object is refused
    (no object of another class can be made through it)."""
    import pickle
    from fastrnn.io.torchfile import _SAFE_GLOBALS, _ObjectType
    rec = _SAFE_GLOBALS[("copy_reg", "_reconstructor")]
    for args in ((dict, _ObjectType, None), (_ObjectType, _ObjectType, None)):
        with pytest.raises(fio.UnsafeFileError, match="_reconstructor"):
            rec(*args)
    # a protocol-1 pickle of a plain object (an argparse Namespace) is refused by name
    import argparse
    data = pickle.dumps({"args": argparse.Namespace(a=1)}, protocol=1)
    with pytest.raises(fio.UnsafeFileError, match="argparse.Namespace"):
        read_torch_object(_legacy_bytes(data))


def _legacy_bytes(payload_pickle: bytes):
    """A legacy torch.save stream whose object is ``payload_pickle`` (no storages)."""
    import pickle
    from fastrnn.io.detect import LEGACY_MAGIC
    out = io.BytesIO()
    for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                      "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, out, protocol=2)
    out.write(payload_pickle)
    pickle.dump([], out, protocol=2)
    out.seek(0)
    return out


def test_load_errors_name_the_file_and_near_miss_keys(tmp_path):
    """Every LoadError of fastrnn.load / load_state_dict names the file (a missing key, a
    wrong shape, a NaN weight, an unsafe global did not); a missing key names the
    file's keys that look like it misspelt; a datetime in a checkpoint gets no advice to
    pass module_classes= (which would only lead to the next refusal)."""
    torch = pytest.importorskip("torch")
    import datetime
    sd = torch.nn.LSTM(5, 7, num_layers=2).state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "weight_hh_l1"}, "'weight_hh_l1'"),
        "shape": ({**sd, "weight_hh_l1": torch.randn(28, 6)}, "shape"),
        "nan": ({**sd, "weight_hh_l1": torch.full((28, 7), float("nan"))}, "NaN"),
        "typo": ({**{k: v for k, v in sd.items() if k != "weight_ih_l1"},
                  "weight_ih_11": sd["weight_ih_l1"]}, r"missing \(the file has 'weight_ih_11'\)"),
        "datetime": ({"sd": sd, "saved": datetime.datetime(2024, 1, 1)}, "datetime"),
    }
    for name, (obj, what) in cases.items():
        p = str(tmp_path / f"{name}.pt")
        torch.save(obj, p)
        for load in (fastrnn.load, fio.load_state_dict):
            with pytest.raises(LoadError, match=what) as ei:
                load(p)
            assert str(ei.value).startswith(p + ": "), str(ei.value)
            assert str(ei.value).count(p) == 1
            if name == "datetime":
                assert "module_classes" not in str(ei.value)
                assert "other than tensors" in str(ei.value)
