"""Hostile and corrupt files: only LoadError (a ValueError) may come out, nothing runs,
nothing hangs, nothing allocates more than the file justifies."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastrnn.io as fio
from fastrnn.io import LoadError, UnsafeFileError
from fastrnn.io.safetensors import read_safetensors, write_safetensors
from fastrnn.io.torchfile import read_torch_file, read_torch_object

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "torch")


def test_error_hierarchy():
    assert issubclass(UnsafeFileError, LoadError) and issubclass(LoadError, ValueError)


# ---------------------------------------------------------------- pickle building blocks

def P(value) -> bytes:
    """Opcodes pushing a plain value (no PROTO, no STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def G(module, name) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor_op(key="0", numel=4, offset=0, size=(4,), stride=(1,), storage="FloatStorage") -> bytes:
    pid = b"(" + P("storage") + G("torch", storage) + P(key) + P("cpu") + P(numel) + b"tQ"
    return (G("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + P(offset) + P(tuple(size))
            + P(tuple(stride)) + b"\x89" + G("collections", "OrderedDict") + b")R" + b"tR")


def state_dict_pickle(*tensors) -> bytes:
    body = b"".join(P(name) + op for name, op in tensors)
    return b"\x80\x02" + G("collections", "OrderedDict") + b")R(" + body + b"u."


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, folder="archive",
              byteorder=b"little") -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w") as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        if byteorder is not None:
            z.writestr(f"{folder}/byteorder", byteorder)
        for k, v in (storages or {}).items():
            z.writestr(f"{folder}/data/{k}", v)
        z.writestr(f"{folder}/version", b"3\n")
    return bio.getvalue()


def test_handmade_zip_reads():
    data = np.arange(4, dtype="<f4").tobytes()
    raw = torch_zip(state_dict_pickle(("w", tensor_op())), {"0": data})
    np.testing.assert_array_equal(read_torch_file(raw)["w"], [0, 1, 2, 3])
    raw = torch_zip(state_dict_pickle(("w", tensor_op())), {"0": np.arange(4, dtype=">f4").tobytes()},
                    byteorder=b"big")
    np.testing.assert_array_equal(read_torch_file(raw)["w"], [0, 1, 2, 3])


# ---------------------------------------------------------------- code execution attempts

class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _evil_payloads(marker):
    cmd = f"touch {marker}"
    yield "reduce-os.system", pickle.dumps({"w": _Evil(cmd)}, protocol=2)
    yield "protocol0-GLOBAL", b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR."
    yield "posix.system", b"\x80\x02" + G("posix", "system") + P(cmd) + b"\x85R."
    yield "builtins.eval", b"\x80\x02" + G("builtins", "eval") + P(f"__import__('os').system('{cmd}')") + b"\x85R."
    yield "__builtin__.exec", b"\x80\x02" + G("__builtin__", "exec") + P("import os") + b"\x85R."
    yield "INST-opcode", b"(S'" + cmd.encode() + b"'\nios\nsystem\n."
    yield "OBJ-opcode", b"(" + G("subprocess", "Popen") + P(["touch", str(marker)]) + b"o."
    yield "STACK_GLOBAL", b"\x80\x04" + P("os") + P("system") + b"\x93" + P(cmd) + b"\x85R."
    yield "inside-state-dict", state_dict_pickle(("w", G("os", "system") + P(cmd) + b"\x85R"))
    yield "getattr-escape", b"\x80\x02" + G("builtins", "getattr") + b"(" + G("collections", "OrderedDict") \
        + P("__init__") + b"tR."
    yield "torch.load-itself", b"\x80\x02" + G("torch", "load") + P(str(marker)) + b"\x85R."
    yield "numpy-loader", b"\x80\x02" + G("numpy.core.multiarray", "_reconstruct") + b")R."
    yield "rebuild_from_type", b"\x80\x02" + G("torch._utils", "_rebuild_from_type_v2") + b"(" \
        + G("torch._utils", "_rebuild_tensor_v2") + G("os", "system") + b")}tR."
    yield "user-class", b"\x80\x02" + G("__main__", "Net") + b")\x81}b."


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_code_execution_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    for label, pkl in _evil_payloads(marker):
        if container == "zip":
            raw = torch_zip(pkl)
        else:
            legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2) \
                + pickle.dumps({"little_endian": True}, protocol=2)
            raw = legacy + pkl + pickle.dumps([], protocol=2)
        with pytest.raises(UnsafeFileError) as ei:
            read_torch_file(raw)
        assert not marker.exists(), label
        msg = str(ei.value)
        if label in ("reduce-os.system", "protocol0-GLOBAL", "INST-opcode", "inside-state-dict"):
            assert "'posix.system'" in msg or "'os.system'" in msg, msg
        if label == "builtins.eval":
            assert "'builtins.eval'" in msg
        if label == "user-class":
            assert "state_dict()" in msg and "module_classes" in msg


def test_unsafe_global_in_legacy_header(tmp_path):
    marker = tmp_path / "pwned"
    raw = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"." \
        + b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(UnsafeFileError, match="system"):
        read_torch_file(raw)
    assert not marker.exists()


def test_torch_module_classes_are_inert_stubs(tmp_path):
    """torch.nn module classes become ModuleStub: arguments ignored, nothing imported or run."""
    pkl = (b"\x80\x02" + G("torch.nn.modules.rnn", "LSTM") + P("touch x") + b"\x85R"  # REDUCE with args
           + b"}(" + P("_parameters") + b"}(" + P("w") + tensor_op() + b"u" + P("_modules") + b"}ub.")
    obj = read_torch_object(torch_zip(pkl, {"0": bytes(16)}))
    assert type(obj).__name__ == "ModuleStub" and obj.cls == "torch.nn.modules.rnn.LSTM"
    np.testing.assert_array_equal(read_torch_file(torch_zip(pkl, {"0": bytes(16)}))["w"], np.zeros(4))
    # a user class is refused unless explicitly named; then it is also just a stub
    user = b"\x80\x02" + G("__main__", "Net") + b")\x81}(" + P("_parameters") + b"}(" + P("w") \
        + tensor_op() + b"uub."
    with pytest.raises(UnsafeFileError, match="__main__.Net"):
        read_torch_file(torch_zip(user, {"0": bytes(16)}))
    d = read_torch_file(torch_zip(user, {"0": bytes(16)}), module_classes=["__main__.Net"])
    assert list(d) == ["w"]


def test_memo_bomb_refused_quickly():
    # LONG_BINPUT with a huge index would make the C unpickler allocate ~32 GB
    pkl = b"\x80\x02" + P(1) + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match="memo"):
            read_torch_file(torch_zip(pkl))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20
    with pytest.raises(LoadError):
        read_torch_file(torch_zip(b"\x80\x02" + P(1) + b"p99999999999\n."))


def _keyed(keys, protocol=2) -> bytes:
    """data.pkl of one dict (or, protocol 4, frozenset) holding ``keys``, values 0."""
    if protocol == 4:
        return b"\x80\x04(" + b"".join(pickle.dumps(k, 4)[2:-1] for k in keys) + b"\x91."
    return b"\x80\x02}(" + b"".join(P(k) + b"K\x00" for k in keys) + b"u."


@pytest.mark.parametrize("keys, protocol, match", [
    ([k * (2**61 - 1) for k in range(1, 600)], 2, "2\\*\\*61 - 1 or more"),   # all hash to 0
    ([(i, i) for i in range(1001)], 2, "keys built from numbers"),   # tuple hashes can be made equal
    ([((i, 0.5),) for i in range(1001)], 4, "keys built from numbers"),
])
def test_hash_flooding_refused_before_unpickling(keys, protocol, match):
    with pytest.raises(LoadError, match=match):
        read_torch_object(torch_zip(_keyed(keys, protocol)))


def test_numeric_keys_of_real_checkpoints_load():
    # optimizer states are keyed by small ints, numpy's PCG64 state holds two 128-bit ints
    pcg = {"bit_generator": "PCG64", "state": {"state": 2**127 + 12345, "inc": 2**126 + 1}}
    obj = {"state": {i: {"step": i} for i in range(5000)}, "rng": [pcg] * 50, "pairs": {(i, 1): i for i in range(100)}}
    got = read_torch_object(torch_zip(pickle.dumps(obj, protocol=2)))
    assert got["state"][4999] == {"step": 4999} and got["rng"][0] == pcg and got["pairs"][(99, 1)] == 99
    assert read_torch_object(torch_zip(_keyed([(i, i) for i in range(1000)], 4))) == \
        frozenset((i, i) for i in range(1000))


def _calls(module, name, items, times=1, before=b"") -> bytes:
    """data.pkl of a list: ``module.name(items)`` called ``times`` times on one (memoized)
    list, as protocol-2 pickles of sets are written, after the opcodes ``before``."""
    lst = b"]" + b"".join(P(k) + b"a" for k in items) + b"q\x00"
    calls = [G(module, name) + (lst if i == 0 else b"h\x00") + b"\x85R" for i in range(times)]
    return b"\x80\x02](" + before + b"".join(calls) + b"e."


@pytest.mark.parametrize("pkl, match", [
    (_calls("__builtin__", "set", [(i, i) for i in range(1001)]), "keys built from numbers"),
    (_calls("builtins", "frozenset", [(i, i) for i in range(600)], 2), "keys built from numbers"),
    (_calls("builtins", "set", [(i, i) for i in range(600)], 1,
            _keyed([(i, 1) for i in range(600)])[2:-1]),   # counted with dict opcodes' keys
     "keys built from numbers"),
    (_calls("collections", "OrderedDict", [((0, 0), 0)]), "calls OrderedDict on a list"),
], ids=["set", "frozenset-twice", "after-dict-keys", "OrderedDict"])
def test_hash_flooding_through_set_calls_refused(pkl, match):
    """set / frozenset / OrderedDict called on tuples (which can all share one hash) hash
    them all, past the opcodes' key count: their tuples count too; torch.save calls
    OrderedDict on nothing (its items set after), so items are refused."""
    with pytest.raises(LoadError, match=match):
        read_torch_object(torch_zip(pkl))
    ok = {"s": {"a", "b"}, "f": frozenset([(1, 2)]), "o": collections.OrderedDict(a=1)}
    assert read_torch_object(torch_zip(pickle.dumps(ok, protocol=2))) == ok
    pairs = [(i, i) for i in range(1000)]
    assert read_torch_object(torch_zip(_calls("__builtin__", "set", pairs))) == [set(pairs)]


# ---------------------------------------------------------------- corrupt torch files

def _good_zip_bytes():
    with open(os.path.join(FIX, "lstm.pt"), "rb") as f:
        return f.read()


def _deflated(raw: bytes) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return bio.getvalue()


def test_deflate_bomb_total_refused_before_reading():
    """Many small members of zeros, each within the per-member ratio: their total is bounded."""
    n, numel = 300, 1 << 14                         # 300 storages of 64 KiB of zeros
    sd = state_dict_pickle(*((f"w{i}", tensor_op(str(i), numel, size=(numel,))) for i in range(n)))
    raw = _deflated(torch_zip(sd, {str(i): bytes(4 * numel) for i in range(n)}))
    assert len(raw) < 100 << 10
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match="inflate"):
            read_torch_file(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # a checkpoint of ordinary weights zipped again with DEFLATE still reads
    w = np.random.default_rng(0).standard_normal((n, numel // 64)).astype("<f4")
    sd = state_dict_pickle(*((f"w{i}", tensor_op(str(i), numel // 64, size=(numel // 64,))) for i in range(n)))
    got = read_torch_file(_deflated(torch_zip(sd, {str(i): w[i].tobytes() for i in range(n)})))
    np.testing.assert_array_equal(got["w7"], w[7])


def test_truncated_zip():
    raw = _good_zip_bytes()
    for cut in (0, 1, 2, 10, 100, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        with pytest.raises(LoadError):
            read_torch_file(raw[:cut])


def test_wrong_magic(tmp_path):
    for raw in (b"", b"garbage" * 10, b"\x80\x02" + P({"a": 1}) + b".", b"\x89HDF\r\n\x1a\n" + bytes(50)):
        with pytest.raises(LoadError):
            read_torch_file(raw)
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a torch file")
    with pytest.raises(LoadError, match="x.pt"):
        read_torch_file(p)
    with pytest.raises(LoadError, match="nope.pt"):
        read_torch_file(tmp_path / "nope.pt")


def test_zip_without_data_pkl():
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w") as z:
        z.writestr("a/b.txt", "x")
    with pytest.raises(LoadError, match="data.pkl"):
        read_torch_file(bio.getvalue())


def test_missing_storage_key():
    raw = torch_zip(state_dict_pickle(("w", tensor_op(key="7"))), {"0": bytes(16)})
    with pytest.raises(LoadError, match="'7'.*missing"):
        read_torch_file(raw)


@pytest.mark.parametrize("kw, match", [
    (dict(numel=4, size=(5,)), "needs 5 elements"),
    (dict(numel=4, size=(2, 2), stride=(3, 1)), "needs 5 elements"),
    (dict(numel=4, offset=1), "needs 5 elements"),
    (dict(numel=8), "holds 16 bytes"),  # pid claims more than the zip entry has
    (dict(numel=4, size=(-1,)), "negative"),
    (dict(numel=4, stride=(-1,)), "negative"),
    (dict(numel=4, offset=-2), "negative"),
    (dict(numel=-4), "negative storage size"),
    (dict(numel=4, size=(2, 2), stride=(1,)), "differ in length"),
    (dict(numel=4, storage="ComplexFloatStorage"), "unsupported tensor dtype"),
    (dict(numel=4, storage="QInt8Storage"), "unsupported tensor dtype"),
])
def test_inconsistent_tensor_metadata(kw, match):
    raw = torch_zip(state_dict_pickle(("w", tensor_op(**kw))), {"0": bytes(16)})
    with pytest.raises(LoadError, match=match):
        read_torch_file(raw)


@pytest.mark.parametrize("size, stride", [
    ((2**40, 2**40), (1, 1)),
    ((2**40, 2**40), (0, 0)),   # stride-0 expansion of one element: 2**80 elements
    ((2**20, 2**20), (0, 0)),   # 2**40 elements, 4 TB
    ((2**62,), (0,)),
    ((10**30,), (1,)),
])
def test_huge_sizes_refused_before_allocating(size, stride):
    raw = torch_zip(state_dict_pickle(("w", tensor_op(size=size, stride=stride))), {"0": bytes(16)})
    tracemalloc.start()
    try:
        with pytest.raises(LoadError):
            read_torch_file(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak


def test_huge_storage_numel_refused_before_reading():
    raw = torch_zip(state_dict_pickle(("w", tensor_op(numel=2**50, size=(4,)))), {"0": bytes(16)})
    with pytest.raises(LoadError, match="holds 16 bytes"):
        read_torch_file(raw)


def test_repeated_rebuild_budget():
    """Rebuilding one storage over and over (cheap in pickle bytes) is capped."""
    big = np.zeros(1 << 18, np.float32).tobytes()  # 1 MiB storage
    op = tensor_op(numel=1 << 18, size=(1 << 18,))
    pkl = b"\x80\x02]" + b"(" + op * 400 + b"e."  # 400 MiB if all were materialised
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match="far more than"):
            read_torch_file(torch_zip(pkl, {"0": big}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, peak


def test_pt2_weights_sharing_one_file_budget(monkeypatch):
    """A .pt2 config pointing many weights at one 1 MiB file (torch does so for tied
    weights): the file is read once and the copies are capped as for .pt storages."""
    from fastrnn.io import pt2 as pt2_mod
    numel, member, reads = 1 << 18, pt2_mod._member, []
    monkeypatch.setattr(pt2_mod, "_member", lambda zf, n, *a: reads.append(n) or member(zf, n, *a))
    meta = {"dtype": 7, "sizes": [{"as_int": numel}], "strides": [{"as_int": 1}]}

    def pt2(n):
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w") as z:
            z.writestr("a/archive_format", b"pt2")
            z.writestr("a/data/weights/model_weights_config.json", json.dumps({"config": {
                f"w{i}": {"path_name": "weight_0", "tensor_meta": meta} for i in range(n)}}))
            z.writestr("a/data/weights/weight_0", np.arange(numel, dtype="<f4").tobytes())
        return io.BytesIO(bio.getvalue())

    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match="far more than"):
            pt2_mod.read_pt2(pt2(100))              # 100 MiB if all were materialised
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 << 20, peak
    assert reads.count("a/data/weights/weight_0") == 1
    t, _ = pt2_mod.read_pt2(pt2(2))
    assert t["w0"] is not t["w1"] and t["w1"][-1] == numel - 1


def test_deep_nesting_and_cycles():
    deep = b"\x80\x02" + b"(" * 3000 + b"]" + b"l" * 3000 + b"."  # lists nested 3001 deep
    with pytest.raises(LoadError, match="nested"):
        read_torch_file(torch_zip(deep))
    nested = b"\x80\x02" + b"}(" * 1 + b"".join([P("a") + b"}(" for _ in range(300)]) + b"u" * 301 + b"."
    with pytest.raises(LoadError, match="nested"):
        read_torch_file(torch_zip(nested))
    # a list containing itself: fine, no hang
    cyc = b"\x80\x02]q\x00h\x00a."
    assert read_torch_file(torch_zip(cyc)) == {}


def test_shared_subtrees_walked_within_a_budget(tmp_path):
    """A pickle stores a shared object once: 40 levels of a list holding the level below
    twice are ~2 KB but 2^40 paths.  Naming tensors walks paths, so it is capped (a
    LoadError in well under a second; it was a hang growing to gigabytes), while
    objects shared by a few paths keep every name."""
    node = [0]
    for _ in range(40):
        node = [node, node]
    pkl = pickle.dumps({"a": node}, protocol=2)
    assert len(pkl) < 4096
    path = tmp_path / "dag.pt"
    path.write_bytes(torch_zip(pkl))
    for read in (read_torch_file, fio.list_modules, fio.load):
        with pytest.raises(LoadError, match="too large"):
            read(str(path))
    shared = b"\x80\x02}(" + P("a") + b"}(" + P("w") + tensor_op() + b"uq\x01" + P("b") \
        + b"h\x01u."
    d = read_torch_file(torch_zip(shared, {"0": bytes(16)}))
    assert sorted(d) == ["a.w", "b.w"] and d["a.w"] is d["b.w"]


def test_bad_persistent_ids():
    for pid in (P("storage") + b"Q", b"(" + P("storage") + b"tQ", b"(" + P("storage") + P(1) + P("0") + P("cpu")
                + P(4) + b"tQ", b"(" + P("other") + P(1) + b"tQ", P(("storage",) * 7) + b"Q"):
        with pytest.raises(LoadError):
            read_torch_file(torch_zip(b"\x80\x02" + pid + b"."))


def test_legacy_module_persistent_ids_only_name_stub_classes(tmp_path):
    """The legacy format's ("module", class, source file, source) persistent id gives the
    class back: only a module class find_class made an inert stub of; anything else is a
    LoadError, a global outside the allow-list an UnsafeFileError, and nothing runs."""
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2) \
        + pickle.dumps({"little_endian": True}, protocol=2)
    marker = tmp_path / "pwned"

    def pid(cls):
        return b"(" + P("module") + cls + P("/x.py") + P("class X: pass") + b"tQ"

    for cls in (G("torch", "Size"), P("os.system"), P(None), G("torch", "FloatStorage")):
        with pytest.raises(LoadError, match="module persistent id"):
            read_torch_file(legacy + b"\x80\x02" + pid(cls) + b")\x81."
                            + pickle.dumps([], protocol=2))
    with pytest.raises(UnsafeFileError, match="os.system"):
        read_torch_file(legacy + b"\x80\x02" + pid(G("os", "system")) + b"(S'touch "
                        + str(marker).encode() + b"'\ntR." + pickle.dumps([], protocol=2))
    assert not marker.exists()
    # a torch.nn class: the stub, its state set by BUILD
    obj = read_torch_object(legacy + b"\x80\x02" + pid(G("torch.nn.modules.rnn", "GRU"))
                            + b")\x81}" + P("hidden_size") + P(4) + b"sb."
                            + pickle.dumps([], protocol=2))
    assert obj.cls == "torch.nn.modules.rnn.GRU" and obj.state == {"hidden_size": 4}


def test_pickle_frame_past_the_end_refused_before_reading(tmp_path):
    """A protocol-4 FRAME claiming 300 MB in a 100-byte legacy file: the unpickler read
    the frame in one piece, allocating its claimed length before finding the file
    truncated (1 TB: MemoryError).  Now refused by the opcode scan."""
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2) \
        + pickle.dumps({"little_endian": True}, protocol=2)
    for n in (300_000_000, 1 << 40):
        p = tmp_path / "frame.pt"
        p.write_bytes(legacy + b"\x80\x04\x95" + struct.pack("<Q", n) + b"}." + b"\x00" * 40)
        tracemalloc.start()
        try:
            with pytest.raises(LoadError, match="frame of .* runs past the end"):
                read_torch_file(p)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 << 20, peak
        with pytest.raises(LoadError, match="frame of .* runs past the end"):
            read_torch_file(torch_zip(b"\x80\x04\x95" + struct.pack("<Q", n) + b"}."))


# ---------------------------------------------------------------- safetensors

def _st(header, data=b"", hlen=None):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data


@pytest.mark.parametrize("raw, match", [
    (b"", "too short"),
    (b"\x01\x00\x00", "too short"),
    (_st({}, hlen=1000), "exceeds the file size"),
    (_st({}, hlen=2**63), "exceeds"),
    (_st({}, hlen=2**64 - 1), "exceeds"),
    (_st(b"not json"), "not valid JSON"),
    (_st(b"\xff\xfe{}"), "not valid JSON"),
    (_st(b"[1, 2]"), "not a JSON object"),
    (_st({"a": 1}), "not an object"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 3), "outside the data"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**70]}}, b"\0" * 4), "outside the data"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "outside the data"),
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8), "needs 8 bytes"),
    (_st({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, b"\0" * 4), "needs"),
    (_st({"a": {"dtype": "F32", "shape": [0, 2**31, 2**31], "data_offsets": [0, 0]}}), "too large"),
    (_st({"a": {"dtype": "F64", "shape": [2**60, 0], "data_offsets": [0, 0]}}), "too large"),
    (_st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4), "data_offsets"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4), "data_offsets"),
    (_st({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "data_offsets"),
    (_st({"a": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unsupported dtype 'X99'"),
    (_st({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "unsupported dtype 'C64'"),
    (_st({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unsupported dtype"),
    (_st({"a": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "no dtype"),
    (_st({"__metadata__": {"a": 1}}), "__metadata__"),
    (_st({"__metadata__": [1]}), "__metadata__"),
    (_st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4), "duplicate"),
    (_st(b"[" * 100000 + b"]" * 100000), "JSON"),
    # byte ranges shared by several tensors (each would be read into its own array)
    (_st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 8), "'a' and 'b' overlap"),
    (_st({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
          "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}, b"\0" * 8), "'a' and 'b' overlap"),
    (_st({f"t{i}": {"dtype": "F32", "shape": [1 << 18], "data_offsets": [0, 1 << 20]}
          for i in range(100)}, bytes(1 << 20)), "'t0' and 't1' overlap"),
])
def test_safetensors_corrupt(raw, match):
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match=match):
            read_safetensors(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_safetensors_ranges_not_shared_by_tensors_load():
    """Empty tensors may sit anywhere; gaps and trailing bytes are accepted."""
    u8 = lambda b, e: {"dtype": "U8", "shape": [e - b], "data_offsets": [b, e]}
    raw = _st({"a": u8(0, 4), "z": u8(0, 0), "y": u8(2, 2), "x": u8(4, 4), "b": u8(6, 8)}, bytes(range(10)))
    t = read_safetensors(raw)[0]
    assert t["a"].tolist() == [0, 1, 2, 3] and t["b"].tolist() == [6, 7] and t["z"].size == 0


def test_safetensors_corrupt_file_on_disk(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_st({}, hlen=2**63))
    with pytest.raises(LoadError, match="bad.safetensors"):
        read_safetensors(p)
    with pytest.raises(LoadError, match="missing.safetensors"):
        read_safetensors(tmp_path / "missing.safetensors")


def test_layer_loader_errors_are_load_errors(tmp_path):
    # a state dict whose module is inconsistent
    p = tmp_path / "bad.safetensors"
    write_safetensors(p, {"weight_ih_l0": np.zeros((8, 3), np.float32),
                          "weight_hh_l0": np.zeros((8, 3), np.float32)})
    with pytest.raises(LoadError, match="weight_hh_l0"):
        fio.load_state_dict(p)
    write_safetensors(p, {"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(LoadError, match="no recurrent module"):
        fio.load_state_dict(p)
    # NaN weights: the layer refuses them; surfaced as LoadError naming the module
    sd = {"weight_ih_l0": np.full((4, 3), np.nan, np.float32), "weight_hh_l0": np.zeros((4, 4), np.float32)}
    write_safetensors(p, sd)
    with pytest.raises(LoadError, match="NaN"):
        fio.load_state_dict(p)
    # fastrnn metadata that does not match the tensors
    write_safetensors(p, sd, {"fastrnn": json.dumps({"class_name": "LSTM", "input_size": 3, "hidden_size": 4})})
    with pytest.raises(LoadError):
        fio.load_fastrnn_safetensors(p)
    write_safetensors(p, sd, {"fastrnn": "{not json"})
    with pytest.raises(LoadError):
        fio.load_fastrnn_safetensors(p)
    write_safetensors(p, sd, {"fastrnn": json.dumps({"class_name": "os.system"})})
    with pytest.raises(LoadError):
        fio.load_fastrnn_safetensors(p)


# ---------------------------------------------------------------- mini fuzz

def _mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    kind = rng.randrange(6)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # truncate
        b = b[:rng.randrange(len(b))]
    elif kind == 2:  # delete a span
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 16)]
    elif kind == 3:  # insert junk
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 4:  # set a small int field to an extreme value
        i = rng.randrange(max(1, len(b) - 8))
        b[i:i + rng.choice((1, 2, 4, 8))] = rng.choice((b"\xff" * 8, b"\x00" * 8, b"\x7f" + b"\xff" * 7))[
            :rng.choice((1, 2, 4, 8))]
    else:  # duplicate a span
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 32))
        b[i:i] = b[i:j]
    return bytes(b)


def _fuzz(read, seed_bytes, n, seed):
    rng = random.Random(seed)
    outcomes = {"ok": 0, "LoadError": 0}
    for _ in range(n):
        raw = _mutate(rng, seed_bytes)
        try:
            read(raw)
            outcomes["ok"] += 1
        except LoadError:
            outcomes["LoadError"] += 1
    return outcomes


def test_fuzz_torch_zip_bytes():
    out = _fuzz(read_torch_file, _good_zip_bytes(), 300, 1)
    assert out["LoadError"] > 0


def _pickle_of(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        storages = {n.rsplit("/", 1)[1]: z.read(n) for n in z.namelist() if "/data/" in n}
        return z.read(name), storages


@pytest.mark.parametrize("fixture", ["lstm_proj.pt", "gru_module.pt", "checkpoint.pt"])
def test_fuzz_torch_pickle(fixture):
    """Mutate data.pkl itself (re-zipped with a valid CRC) so the unpickler sees the damage."""
    pkl, storages = _pickle_of(os.path.join(FIX, fixture))
    out = _fuzz(lambda p: read_torch_file(torch_zip(p, storages)), pkl, 300, 2)
    assert out["LoadError"] > 0


def test_fuzz_torch_legacy():
    with open(os.path.join(FIX, "legacy.pt"), "rb") as f:
        raw = f.read()
    out = _fuzz(read_torch_file, raw, 300, 3)
    assert out["LoadError"] > 0


def test_fuzz_safetensors():
    with open(os.path.join(FIX, "mixed_dtypes.safetensors"), "rb") as f:
        raw = f.read()
    out = _fuzz(read_safetensors, raw, 400, 4)
    assert out["LoadError"] > 0 and out["ok"] > 0


def test_fuzz_safetensors_header_json():
    """Structured mutations of the JSON header values."""
    base = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "I8", "shape": [4], "data_offsets": [24, 28]}}
    data = bytes(28)
    rng = random.Random(5)
    choices = [-1, 0, 1, 3, 2**31, 2**63, 2**64, 1.5, None, "x", [], {}, True, "F32", "BF16", [1, 2]]
    for _ in range(300):
        h = json.loads(json.dumps(base))
        t = h[rng.choice("ab")]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        if isinstance(t[field], list) and t[field] and rng.random() < 0.7:
            t[field][rng.randrange(len(t[field]))] = rng.choice(choices)
        else:
            t[field] = rng.choice(choices)
        try:
            read_safetensors(_st(h, data))
        except LoadError:
            pass


def test_fuzz_sniff_and_dispatch():
    """sniff_format and the torch-like loader on mutated files: LoadError only."""
    srcs = []
    for name in ("lstm.pt", "legacy.pt", "gru2.safetensors"):
        with open(os.path.join(FIX, name), "rb") as f:
            srcs.append(f.read())
    rng = random.Random(6)
    for i in range(150):
        raw = _mutate(rng, srcs[i % 3])
        try:
            fio.sniff_format(raw)
            fio.load_state_dict(fio.read_torch_file(raw) if raw[:2] == b"PK" or raw[:1] == b"\x80"
                                else read_safetensors(raw)[0])
        except LoadError:
            pass


def test_build_opcode_cannot_modify_loader_objects():
    """BUILD (setattr) on the shared stand-ins or on a storage reference is refused, and
    a later, valid load in the same process is unaffected."""
    poison_dtype = b"\x80\x02" + G("torch", "FloatStorage") + b"N}(" + P("itemsize") + P(1) + b"u\x86b."
    poison_fn = b"\x80\x02" + G("torch._utils", "_rebuild_tensor_v2") + b"N}(" + P("fn") + P(1) + b"u\x86b."
    poison_fn2 = b"\x80\x02" + G("torch._utils", "_rebuild_tensor_v2") + b"}(" + P("fn") + P(1) + b"ub."
    poison_marker = b"\x80\x02" + G("torch", "Tensor") + b"N}(" + P("name") + P("x") + b"u\x86b."
    poison_od = b"\x80\x02" + G("collections", "OrderedDict") + b"N}(" + P("x") + P(1) + b"u\x86b."
    for pkl in (poison_dtype, poison_fn, poison_fn2, poison_marker, poison_od):
        with pytest.raises(LoadError):
            read_torch_file(torch_zip(pkl))
    # grow a storage's numel after the size check, then read past it
    pid = b"(" + P("storage") + G("torch", "FloatStorage") + P("0") + P("cpu") + P(4) + b"tQ"
    grow = (b"\x80\x02" + pid + b"q\x00N}(" + P("numel") + P(2**30) + b"u\x86b"
            + G("torch._utils", "_rebuild_tensor_v2") + b"(h\x00" + P(0) + P((2**20,)) + P((1,))
            + b"\x89" + G("collections", "OrderedDict") + b")RtR.")
    with pytest.raises(LoadError):
        read_torch_file(torch_zip(grow, {"0": bytes(16)}))
    good = torch_zip(state_dict_pickle(("w", tensor_op())), {"0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(read_torch_file(good)["w"], [0, 1, 2, 3])


def test_audit_refusals_of_the_twenty_fourth_session(tmp_path):
    """A truncated safetensors file says so; a Keras 1 config and a NaN size in an
    Input's shape are refused by name (they loaded: Keras 1's BatchNormalization(mode=2)
    computes with batch statistics, a silent wrong answer)."""
    import fastrnn
    from fastrnn.io.keras import model_from_keras_config
    fastrnn.LSTM(3, 4).save(str(tmp_path / "a.safetensors"))
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:200])
    with pytest.raises(LoadError, match=r"unknown model file format \(a safetensors header "
                                        r"of \d+ bytes in a file of 200: truncated"):
        fastrnn.load(str(tmp_path / "t.safetensors"))
    emb = {"class_name": "Embedding", "config": {"name": "e", "input_dim": 10,
                                                 "output_dim": 4,
                                                 "batch_input_shape": [None, 6]}}
    weights = {"e": [np.ones((10, 4), "f4")]}
    arch = {"class_name": "Sequential", "keras_version": "1.2.2", "config": [emb]}
    with pytest.raises(LoadError, match="written by Keras 1.2.2: Keras 1 configs are not "
                                        "supported"):
        model_from_keras_config(arch, weights)
    arch = {"class_name": "Sequential", "keras_version": "2.15.0", "config": [emb]}
    assert model_from_keras_config(arch, weights, keras_version="2.15.0")(
        np.ones((1, 6), np.int32)).shape == (1, 6, 4)
    emb["config"]["batch_input_shape"] = [None, float("nan")]
    with pytest.raises(LoadError, match=r"'batch_input_shape' holds an invalid size nan"):
        model_from_keras_config(arch, weights, keras_version="2.15.0")
