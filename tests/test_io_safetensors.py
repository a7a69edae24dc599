"""safetensors reader/writer, checked against the reference ``safetensors`` package."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest

import fastrnn.io as fio
from fastrnn.io import LoadError
from fastrnn.io.safetensors import read_safetensors, read_safetensors_metadata, write_safetensors

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "torch")

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, dt in DTYPES.items():
        if dt is np.bool_:
            out[name.lower()] = rng.random((3, 2)) > 0.5
        elif np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            out[name.lower()] = rng.integers(info.min, info.max, size=(2, 3), dtype=dt, endpoint=True)
        else:
            out[name.lower()] = rng.standard_normal((4, 1, 2)).astype(dt)
    out["scalar"] = np.array(1.5, np.float32)
    out["empty"] = np.zeros((0, 5), np.float32)
    out["odd"] = np.arange(3, dtype=np.int8)  # unaligned length before 8-byte dtypes
    out["fortran"] = np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))
    out["bigendian"] = np.arange(4, dtype=">f4")
    return out


def test_round_trip_all_dtypes(tmp_path):
    arrs = _arrays()
    p = tmp_path / "a.safetensors"
    write_safetensors(p, arrs, {"k": "v", "fastrnn": "{}"})
    got, meta = read_safetensors(p)
    assert meta == {"k": "v", "fastrnn": "{}"}
    assert set(got) == set(arrs)
    for k, v in arrs.items():
        assert got[k].shape == v.shape
        assert got[k].dtype == v.dtype.newbyteorder("="), k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    # bytes and file-object inputs give the same
    raw = p.read_bytes()
    for src in (raw, bytearray(raw), memoryview(raw), io.BytesIO(raw)):
        g2, m2 = read_safetensors(src)
        assert m2 == meta
        for k in arrs:
            np.testing.assert_array_equal(g2[k], got[k])
    assert read_safetensors_metadata(p) == meta


def test_header_is_8_byte_aligned_and_space_padded(tmp_path):
    p = tmp_path / "a.safetensors"
    for n in range(1, 12):
        write_safetensors(p, {"x" * n: np.zeros(n, np.float32)})
        raw = p.read_bytes()
        (hl,) = struct.unpack("<Q", raw[:8])
        assert (8 + hl) % 8 == 0
        header = raw[8:8 + hl]
        assert header.startswith(b"{") and header.rstrip(b" ").endswith(b"}")
        json.loads(header)
        assert len(raw) == 8 + hl + 4 * n


def test_reference_package_reads_our_files(tmp_path):
    st_np = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    arrs = _arrays(1)
    p = tmp_path / "ours.safetensors"
    write_safetensors(p, arrs, {"fastrnn": json.dumps({"a": 1})})
    ref = st_np.load_file(str(p))
    assert set(ref) == set(arrs)
    for k, v in arrs.items():
        np.testing.assert_array_equal(ref[k], v, err_msg=k)
        assert ref[k].dtype == v.dtype.newbyteorder("="), k
    with safe_open(str(p), "np") as f:
        assert f.metadata() == {"fastrnn": json.dumps({"a": 1})}
    # and we read theirs, byte for byte the same arrays
    q = tmp_path / "theirs.safetensors"
    st_np.save_file({k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("=")) for k, v in arrs.items()},
                    str(q), metadata={"m": "1"})
    got, meta = read_safetensors(q)
    assert meta == {"m": "1"}
    for k, v in arrs.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_reference_fixture_with_bf16_and_mixed_dtypes():
    got, meta = read_safetensors(os.path.join(FIX, "mixed_dtypes.safetensors"))
    assert meta == {}
    assert got["rnn.weight_ih_l0"].dtype == np.float32  # BF16 widened
    assert got["head.weight"].dtype == np.float16
    np.testing.assert_array_equal(got["steps"], [1, 2, 3])
    np.testing.assert_array_equal(got["flags"], [True, False])
    [spec] = fio.find_rnn_modules(got)
    assert (spec.prefix, spec.cell, spec.input_size, spec.hidden_size, spec.bidirectional) == (
        "rnn", "LSTM", 3, 5, True)


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    load_file = pytest.importorskip("safetensors.torch").load_file

    ref = load_file(os.path.join(FIX, "mixed_dtypes.safetensors"))
    got, _ = read_safetensors(os.path.join(FIX, "mixed_dtypes.safetensors"))
    for k, v in ref.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        np.testing.assert_array_equal(got[k], want, err_msg=k)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError):
        write_safetensors(tmp_path / "m.st", {"a": np.zeros(1)}, {"k": 1})
    with pytest.raises(TypeError):
        write_safetensors(tmp_path / "m.st", {"a": np.zeros(1)}, {"k": 1})
    with pytest.raises(TypeError, match="mapping of str to str, got str"):
        write_safetensors(tmp_path / "s.st", {"a": np.zeros(1)}, "note")
    with pytest.raises(ValueError):
        write_safetensors(tmp_path / "n.st", {"__metadata__": np.zeros(1)})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


@pytest.mark.parametrize("arr", [
    np.zeros(2, np.complex64), np.zeros(2, np.complex128), np.array([None, 1], dtype=object),
    np.array(["ab", "c"]), np.array([b"ab"]), np.zeros(2, [("x", "<f4"), ("y", "<i4")]),
    np.zeros(2, "V4"), np.zeros(2, "datetime64[s]"), np.zeros(2, "timedelta64[s]")],
    ids=lambda a: str(a.dtype))
def test_writer_refuses_other_dtypes_with_a_type_error(tmp_path, arr):
    """An array of a dtype the writer does not write is the caller's error: a TypeError
    naming the tensor and the dtype (it was a LoadError, a loading error for a write),
    and nothing written."""
    with pytest.raises(TypeError, match=r"tensor 'w\.bad'.*dtype " + _re_escape(arr.dtype)) as e:
        write_safetensors(tmp_path / "x.st", {"ok": np.zeros(2, np.float32), "w.bad": arr})
    assert not isinstance(e.value, LoadError)
    buf = io.BytesIO()
    with pytest.raises(TypeError, match="w.bad"):
        write_safetensors(buf, {"w.bad": arr})
    assert buf.getvalue() == b"" and not list(tmp_path.iterdir())
    # bool is a safetensors dtype (BOOL), and round-trips
    write_safetensors(tmp_path / "b.st", {"b": np.array([True, False])})
    got, _ = read_safetensors(tmp_path / "b.st")
    assert got["b"].dtype == np.bool_ and got["b"].tolist() == [True, False]


def _re_escape(dt):
    import re
    return re.escape(str(dt))


def test_writer_needs_a_mapping_of_str_names(tmp_path):
    """tensors that are no mapping, or a name that is no str among str names, are said
    to be so (a list of arrays gave "invalid tensor name array(...)" or numpy's
    "truth value of an array is ambiguous"; {1: a, "b": a} a TypeError from sorting)."""
    a = np.zeros(2, np.float32)
    for bad in ([a], [a, a], None, a):
        with pytest.raises(TypeError, match="mapping of str to arrays, got"):
            write_safetensors(tmp_path / "x.st", bad)
    with pytest.raises(ValueError, match="invalid tensor name 1"):
        write_safetensors(tmp_path / "x.st", {1: a, "b": a})
    assert not list(tmp_path.iterdir())


def test_writer_to_file_object():
    buf = io.BytesIO()
    write_safetensors(buf, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    got, meta = read_safetensors(buf.getvalue())
    np.testing.assert_array_equal(got["w"], np.arange(6).reshape(2, 3))
    assert meta == {}


def test_layer_load_holds_the_weights_once_at_its_peak(tmp_path):
    """A fastrnn safetensors file's tensors are read each into an array of its own, and
    the layer keeps those arrays (nobody else holds them): a load's peak is about the
    weights once (it was twice: the data section beside the arrays, then the arrays
    beside the layer's copies).  A caller's own arrays are still copied."""
    import fastrnn
    from reference import allocation_peak
    layer = fastrnn.LSTM(64, 128, num_layers=2, bidirectional=True, seed=0)
    weights = sum(a.nbytes for a in layer.state_dict().values())
    path = str(tmp_path / "l.safetensors")
    layer.save(path)
    tensors, _ = read_safetensors(path)
    assert all(a.flags.owndata and a.flags.writeable for a in tensors.values())
    again, peak = allocation_peak(lambda: fastrnn.load(path))
    assert peak < 1.3 * weights, (peak, weights)
    x = np.random.default_rng(0).standard_normal((4, 2, 64)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], layer(x)[0])
    mine = layer.state_dict()
    again.load_state_dict(mine)
    assert not any(a is mine[k] for k, a in again.parameters().items())
    mine["weight_ih_l0"][:] = 0                     # (the layer's copy is not changed)
    np.testing.assert_array_equal(again(x)[0], layer(x)[0])


def test_header_errors_say_what_is_wrong():
    """A duplicate key and JSON nested too deeply are said as such (both were "not
    valid JSON", of JSON that is valid); still LoadErrors."""
    def st(raw):
        return struct.pack("<Q", len(raw)) + raw + b"\0" * 4
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    for raw, match in ((b'{"a": ' + entry + b', "a": ' + entry + b"}", "duplicate key 'a'"),
                       (b'{"a": {"dtype": "F32", "dtype": "F32", "shape": [1], '
                        b'"data_offsets": [0, 4]}}', "duplicate key 'dtype'"),
                       (b"[" * 100000 + b"]" * 100000, "nests too deeply"),
                       (b"{not json", "not valid JSON")):
        with pytest.raises(LoadError, match=match) as e:
            read_safetensors(st(raw))
        if "not json" not in raw.decode():
            assert "not valid JSON" not in str(e.value), str(e.value)
