"""fastrnn's own HDF5 reader (fastrnn/io/hdf5.py).

* Every Keras fixture (and the h5 inside each .keras zip) reads exactly as h5py reads it:
  same groups, same attributes, same datasets, same values.
* Files h5py writes with other settings (libver latest: superblock v3, v2 object headers,
  link messages, dense link / attribute storage in fractal heaps + v2 B-trees; user blocks;
  big-endian, float16, integers, fixed and variable-length strings, soft and hard links,
  chunked and compact layouts) read the same.
* Hostile files (truncated, cyclic, addresses past the end, huge declared sizes, deep
  nesting, every word of a file overwritten with hostile values) only ever raise LoadError,
  quickly, without large allocations.
"""
import glob
import io
import os
import struct
import time
import zipfile

import numpy as np
import pytest

from fastrnn.io import LoadError
from fastrnn.io import hdf5

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "keras")


def fixture_files():
    out = []
    for p in sorted(glob.glob(os.path.join(FIX, "*"))):
        if p.endswith(".h5"):
            out.append((os.path.basename(p), open(p, "rb").read()))
        elif p.endswith(".keras"):
            out.append((os.path.basename(p) + ":model.weights.h5",
                        zipfile.ZipFile(p).read("model.weights.h5")))
    return out


FIXTURES = fixture_files()


def test_fixture_count():
    # (+11: the nested-model fixtures; +5: k2_merge_*; +10: k3_nested_res_*; +2: the
    # cuDNN models' weights alone, k2_cudnn_*.cudnn_weights.h5; +2: k3_norm_inner_axis,
    # k3_known_mha_mask_cleared; +7: k*_td_*; +7: k*_act_layers_masked,
    # k*_rescale_norm_masked, k*_pad_crop_*; +4: k*_sepconv*; +2: k3_td_nested,
    # k2_identity_masked; +2: k3_td_embed_mask_zero, k3_td_sepconv; +1:
    # k3_causal_conv_stream; +6: k*_td_model_*; +3: k2_td_masks_*; +8: k*_ops_*)
    assert len(FIXTURES) == 172


# ----------------------------------------------------------------------------- vs h5py

def _norm(v):
    h5py = pytest.importorskip("h5py")
    if isinstance(v, (hdf5.Empty, h5py.Empty)):
        return ("empty", np.dtype(v.dtype).str)
    return v


def _same(a, b):
    a, b = _norm(a), _norm(b)
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a == b
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        return type(a) is type(b) and a == b
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype.kind == b.dtype.kind
            and a.dtype.itemsize == b.dtype.itemsize and np.array_equal(a, b))


def compare_with_h5py(data: bytes) -> int:
    """Assert fastrnn's reader and h5py see the same file; returns the objects compared."""
    h5py = pytest.importorskip("h5py")
    count = 0
    with h5py.File(io.BytesIO(data), "r") as h, hdf5.File(data) as m:
        def check(name, ho, mo):
            nonlocal count
            assert sorted(ho.attrs.keys()) == sorted(mo.attrs.keys()), name
            for k in ho.attrs.keys():
                assert _same(ho.attrs[k], mo.attrs[k]), (name, k, ho.attrs[k], mo.attrs[k])
            if isinstance(ho, h5py.Dataset):
                assert isinstance(mo, hdf5.Dataset), name
                assert ho.shape == mo.shape, name
                assert _same(ho[()], mo[()]), name
            else:
                assert isinstance(mo, hdf5.Group), name
                assert sorted(ho.keys()) == sorted(mo.keys()), name
            count += 1

        check("/", h, m)
        names_h = []
        h.visititems(lambda n, o: names_h.append(n) or check(n, o, m[n]))
        names_m = []
        m.visititems(lambda n, o: names_m.append(n))
        # both visit each object once (hard-linked objects under one of their names)
        assert len(names_h) == len(names_m)
    return count


@pytest.mark.parametrize("name,data", FIXTURES, ids=[n for n, _ in FIXTURES])
def test_fixture_reads_like_h5py(name, data):
    assert compare_with_h5py(data) > 5


def _synthetic(libver="earliest", userblock=0, nlinks=5, nattrs=3, chunked=False,
               track_order=False, big_attr=False):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    bio = io.BytesIO()
    with h5py.File(bio, "w", libver=libver, userblock_size=userblock,
                   track_order=track_order) as f:
        f.attrs["s"] = "hello"
        f.attrs["unicode"] = "grüße ✓"
        f.attrs["fixed"] = np.bytes_(b"fixed")
        f.attrs["arr_be"] = np.arange(5, dtype=">i4")
        f.attrs["strs"] = np.array(["a", "bb", "ccc"], dtype=h5py.string_dtype())
        f.attrs["fstrs"] = np.array([b"ab", b"cde"])
        f.attrs["f16"] = np.float16(1.5)
        f.attrs["u8"] = np.uint8(7)
        f.attrs["i64"] = np.int64(-3)
        f.attrs["empty"] = h5py.Empty("f4")
        f.attrs["zero_len"] = np.zeros((0,), "f8")
        if big_attr:
            f.attrs["big"] = "x" * 70000
        for i in range(nattrs):
            f.attrs[f"a{i}"] = np.float32(i) * np.ones(i, "f4")
        g = f.create_group("grp")
        for i in range(nlinks):
            dt = ["<f4", ">f8", "<f2", ">f4", "<i2", ">u8"][i % 6]
            data = (rng.random((3, i % 7 + 1)) * 100).astype(dt)
            ds = g.create_dataset(f"d{i}", data=data, **({"chunks": (2, 1)} if chunked else {}))
            ds.attrs["n"] = i
        g["soft"] = h5py.SoftLink("/grp/d0")
        g["soft_rel"] = h5py.SoftLink("d1") if nlinks > 1 else h5py.SoftLink("/grp")
        f.create_dataset("vlen", data=np.array(["x", "yy", ""], dtype=h5py.string_dtype()))
        f.create_dataset("scalar", data=3.25)
        f.create_dataset("empty_ds", data=h5py.Empty("f4"))
        f.create_dataset("ints", data=np.arange(12, dtype=">i2").reshape(3, 4))
        f.create_group("a/b/c/d")
        f["hardlink"] = f["grp"]
        # a compact-layout dataset (data inside the object header)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        sp = h5py.h5s.create_simple((4,))
        dsid = h5py.h5d.create(f.id, b"compact", h5py.h5t.IEEE_F32LE, sp, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(4, dtype="<f4"))
    return bio.getvalue()


SYNTH = {
    "earliest": {},
    "latest": {"libver": "latest", "big_attr": True},
    "userblock": {"userblock": 512},
    "latest_userblock": {"libver": "latest", "userblock": 1024},
    "v1_many": {"nlinks": 300, "nattrs": 40},
    "dense": {"libver": "latest", "nlinks": 40, "nattrs": 40},
    "dense_deep_btree": {"libver": "latest", "nlinks": 1500, "nattrs": 200},
    "track_order": {"libver": "latest", "nlinks": 50, "nattrs": 50, "track_order": True},
    "chunked_v1": {"chunked": True},
    "v108": {"libver": "v108", "nlinks": 20},
}


@pytest.mark.parametrize("case", sorted(SYNTH))
def test_synthetic_reads_like_h5py(case):
    assert compare_with_h5py(_synthetic(**SYNTH[case])) > 10


def test_soft_links_and_paths():
    with hdf5.File(_synthetic()) as f:
        np.testing.assert_array_equal(f["grp/soft"][()], f["grp/d0"][()])
        np.testing.assert_array_equal(f["/grp/soft_rel"][()], f["grp"]["d1"][()])
        assert "a/b/c/d" in f and "a/b/x" not in f and "grp/d0/x" not in f
        assert isinstance(f["a/b"], hdf5.Group)
        assert f.get("nope") is None
        assert isinstance(f["empty_ds"][()], hdf5.Empty)
        assert f["compact"].shape == (4,) and f["compact"].dtype == np.float32
        with pytest.raises(KeyError):
            f["nope"]


def test_unsupported_features_are_named():
    h5py = pytest.importorskip("h5py")
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_dataset("gz", data=np.ones((8, 8), "f4"), chunks=(4, 4), compression="gzip")
        f.create_dataset("cmp", data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
        f.attrs["enum"] = np.array([True, False])
    with hdf5.File(bio.getvalue()) as f:
        with pytest.raises(LoadError, match="unsupported HDF5 feature.*filters"):
            f["gz"][()]
        with pytest.raises(LoadError, match="unsupported HDF5 feature.*compound"):
            f["cmp"][()]
        with pytest.raises(LoadError, match="unsupported HDF5 feature.*enum"):
            f.attrs["enum"]
        assert "gz" in f and "enum" in f.attrs     # the rest of the file stays readable


def test_file_sources(tmp_path):
    name, data = FIXTURES[0]
    p = tmp_path / "f.h5"
    p.write_bytes(data)
    for src in (str(p), p, data, io.BytesIO(data)):
        with hdf5.File(src) as f:
            assert "model_weights" in f or "layers" in f or "layer_names" in f.attrs
    with pytest.raises(LoadError):
        hdf5.File(str(tmp_path / "missing.h5"))
    with pytest.raises(LoadError, match="not an HDF5 file"):
        hdf5.File(b"not hdf5 at all")
    with pytest.raises(LoadError):
        hdf5.File(b"")


# ----------------------------------------------------------------------------- hostile files

def walk(data: bytes, limit_s=2.0):
    """Open and read everything; returns normally or raises LoadError (anything else fails
    the test), in at most ``limit_s`` seconds."""
    t0 = time.perf_counter()
    try:
        with hdf5.File(data) as f:
            objs = [f]
            f.visititems(lambda n, o: objs.append(o) and None)
            for o in objs:
                for k in list(o.attrs):
                    try:
                        o.attrs[k]
                    except LoadError:
                        pass
                if isinstance(o, hdf5.Dataset):
                    try:
                        o[()]
                    except LoadError:
                        pass
    except LoadError:
        pass
    dt = time.perf_counter() - t0
    assert dt < limit_s, f"took {dt:.2f} s"


SMALL = min(FIXTURES, key=lambda x: len(x[1]))[1]


def test_truncated_anywhere():
    n = len(SMALL)
    for cut in list(range(0, 600, 7)) + list(range(600, n, max(1, n // 300))):
        walk(SMALL[:cut])


def test_every_word_overwritten():
    """Each 8-byte word of the metadata of a small file set to hostile values: zero, all
    ones (undefined address), a huge length, the file size, the word's own position
    (self-cycles) and a position just past the end."""
    data = SMALL
    n = len(data)
    with hdf5.File(data) as f:
        meta_end = n
        # the raw weight data is not interesting: stop at the first dataset's bytes
        ds = []
        f.visititems(lambda k, o: ds.append(o) if isinstance(o, hdf5.Dataset) else None)
    values = [0, (1 << 64) - 1, 1 << 62, n, n - 4]
    t0 = time.perf_counter()
    for pos in range(8, min(meta_end, 6000), 4):
        for v in values + [pos]:
            b = bytearray(data)
            b[pos:pos + 8] = struct.pack("<Q", v & ((1 << 64) - 1))
            walk(bytes(b))
    assert time.perf_counter() - t0 < 600


def _find_all(data, needle):
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def test_cyclic_btree_and_heaps():
    data = _synthetic(nlinks=300)
    hits = 0
    for sig in (b"TREE", b"SNOD", b"HEAP"):
        for i in list(_find_all(data, sig))[:4]:
            for field in range(8, 40, 8):        # point every address field at itself
                b = bytearray(data)
                b[i + field:i + field + 8] = struct.pack("<Q", i)
                walk(bytes(b))
                hits += 1
    assert hits > 10
    dense = _synthetic(libver="latest", nlinks=60, nattrs=40)
    for sig in (b"BTHD", b"BTIN", b"BTLF", b"FRHP", b"FHIB", b"FHDB", b"OHDR", b"OCHK"):
        for i in list(_find_all(dense, sig))[:2]:
            for field in range(4, 64, 4):
                for v in (i, 0, (1 << 64) - 1, 1 << 40):
                    b = bytearray(dense)
                    b[i + field:i + field + 8] = struct.pack("<Q", v)
                    walk(bytes(b))


def test_cyclic_groups_terminate():
    h5py = pytest.importorskip("h5py")
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        a = f.create_group("a")
        a["loop"] = a                       # a hard link cycle a -> a
        a["up"] = f                         # and one to the root
        a["x"] = np.arange(3.0)
        f["b"] = h5py.SoftLink("/c")        # a soft link cycle b -> c -> b
        f["c"] = h5py.SoftLink("/b")
    with hdf5.File(bio.getvalue()) as f:
        seen = []
        f.visititems(lambda n, o: seen.append(n))
        assert sorted(seen) == ["a", "a/x"]
        np.testing.assert_array_equal(f["a/loop/loop/up/a/x"][()], np.arange(3.0))
        with pytest.raises(LoadError, match="soft links"):
            f["b"]


def test_deep_nesting():
    h5py = pytest.importorskip("h5py")
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_group("/".join(["g"] * 200))
    with hdf5.File(bio.getvalue()) as f:
        assert "/".join(["g"] * 200) in f
        seen = []
        f.visititems(lambda n, o: seen.append(n))
        assert len(seen) == 200


def test_huge_declared_sizes_are_refused_before_allocation():
    h5py = pytest.importorskip("h5py")
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_dataset("d", data=np.ones((3, 5), "f4"))
        f.attrs["a"] = np.ones((7, 11), "f8")
    data = bio.getvalue()
    for dims, new in ((struct.pack("<QQ", 3, 5), struct.pack("<QQ", 1 << 40, 1 << 40)),
                      (struct.pack("<QQ", 7, 11), struct.pack("<QQ", 1 << 31, 1 << 33))):
        assert dims in data
        bad = data.replace(dims, new)
        t0 = time.perf_counter()
        with hdf5.File(bad) as f:
            with pytest.raises(LoadError, match="more than the file can hold|beyond the end"):
                f["d"][()] if dims.startswith(struct.pack("<Q", 3)) else f.attrs["a"]
        assert time.perf_counter() - t0 < 1


def test_global_heap_string_bomb_is_bounded():
    """Many vlen strings pointing at one large heap object cannot multiply memory."""
    h5py = pytest.importorskip("h5py")
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.attrs["s"] = np.array(["y" * 20000] + ["z"] * 2000, dtype=h5py.string_dtype())
    data = bytearray(bio.getvalue())
    with hdf5.File(bytes(data)) as f:
        # rewrite every element's heap reference to the first (20000-byte) object
        v = f.attrs["s"]
        assert len(v) == 2001
    i = data.find(struct.pack("<I", 20000))
    assert i > 0
    first = bytes(data[i:i + 16])
    k = i + 16
    while k + 16 <= len(data) and data[k:k + 4] == struct.pack("<I", 1):
        data[k:k + 16] = first
        k += 16
    assert k - i > 1000 * 16
    with hdf5.File(bytes(data)) as f:
        with pytest.raises(LoadError, match="more than the file's size"):
            f.attrs["s"]
