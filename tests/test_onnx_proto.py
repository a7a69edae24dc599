"""fastrnn's own reader of ONNX's protobuf (fastrnn.io._onnx_proto) against the real
``onnx`` package: every tensor type and storage, every attribute type, inputs' types and
shapes, external data files (and their path checks), malformed bytes."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastrnn.io import LoadError, load_onnx  # noqa: E402
from fastrnn.io import _onnx_proto as P  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")

NP = {TensorProto.FLOAT: np.float32, TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8,
      TensorProto.UINT16: np.uint16, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32,
      TensorProto.INT64: np.int64, TensorProto.BOOL: np.bool_, TensorProto.FLOAT16: np.float16,
      TensorProto.DOUBLE: np.float64, TensorProto.UINT32: np.uint32,
      TensorProto.UINT64: np.uint64, TensorProto.COMPLEX64: np.complex64,
      TensorProto.COMPLEX128: np.complex128}


def _values(code, shape, rng):
    dt = np.dtype(NP[code])
    n = int(np.prod(shape))
    if dt.kind == "b":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -2 ** 62), min(int(info.max), 2 ** 62)
        v = rng.integers(lo, hi, n, dtype=np.int64).astype(dt)
        if n >= 2:          # the extremes (sign extension of negative varints, uint64's top)
            v[:2] = [info.min, info.max]
        return v.reshape(shape)
    v = rng.standard_normal(n * (2 if dt.kind == "c" else 1))
    if dt.kind == "c":
        v = v[0::2] + 1j * v[1::2]
    v = v.astype(dt)
    if dt.kind == "f" and n >= 3:
        v[:3] = [np.inf, -np.inf, -0.0]
    return v.reshape(shape)


def _parse_tensor(t):
    data = t.SerializeToString()
    return P.Tensor(data, (0, len(data))).to_array()


@pytest.mark.parametrize("code", sorted(NP))
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 5), (2, 1, 4)])
def test_tensor_values_as_numpy_helper_gives_them(code, shape):
    rng = np.random.default_rng(code * 7 + len(shape))
    a = _values(code, shape, rng)
    raw = numpy_helper.from_array(a, name="w")          # raw_data
    typed = helper.make_tensor("w", code, shape, a.reshape(-1).tolist()
                               if a.dtype.kind != "c" else a.reshape(-1), raw=False)
    for t in (raw, typed):
        want = numpy_helper.to_array(t)
        got = _parse_tensor(t)
        assert got.dtype == want.dtype and got.shape == want.shape, (t.raw_data[:0], code)
        np.testing.assert_array_equal(got, want)


def test_string_tensors_and_unsupported_types():
    t = helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"\xff"])
    got = _parse_tensor(t)
    assert got.dtype == object and list(got) == [b"ab", b"\xff"]
    bf = helper.make_tensor("b", TensorProto.BFLOAT16, [2], [1.0, 2.0])
    with pytest.raises(P.ProtoError, match=r"'b'.*16 \(bfloat16\) is not supported"):
        _parse_tensor(bf)
    # too few values for the shape, raw or typed
    bad = numpy_helper.from_array(np.ones(4, np.float32), "r")
    bad.dims[:] = [5]
    with pytest.raises(P.ProtoError, match="16 bytes of raw data for 5 values"):
        _parse_tensor(bad)
    bad = helper.make_tensor("t", TensorProto.INT64, [2], [1, 2], raw=False)
    bad.dims[:] = [3]
    with pytest.raises(P.ProtoError, match="2 values for shape"):
        _parse_tensor(bad)


def test_dims_claiming_more_than_the_data_allocate_nothing(tmp_path):
    """A shape of 2**40 values over a few values of data, in every storage (raw, typed,
    varints, external), is refused before anything of the shape's size is made."""
    import tracemalloc
    raw = numpy_helper.from_array(np.ones(4, np.float32), "r")
    typed = [helper.make_tensor(n, c, [2], v, raw=False) for n, c, v in (
        ("f", TensorProto.FLOAT, [1.0, 2.0]), ("i", TensorProto.INT64, [1, 2]),
        ("h", TensorProto.FLOAT16, [1.0, 2.0]), ("u", TensorProto.UINT64, [1, 2]))]
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    ext = _external("e", "w.bin", 0, 16, 4)
    del ext.external_data[2]            # (no length: the rest of the file)
    for t in [raw, ext] + typed:
        t.dims[:] = [2 ** 20, 2 ** 20]
        m = helper.make_model(helper.make_graph([], "g", [], [onnx.ValueInfoProto(name=t.name)],
                                                [t]))
        (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
        tracemalloc.start()
        try:
            with pytest.raises(LoadError, match=rf"'{t.name}'.*(bytes|values)"):
                load_onnx(str(tmp_path / "m.onnx"))
            assert tracemalloc.get_traced_memory()[1] < 1 << 20, t.name
        finally:
            tracemalloc.stop()


def _attr(name, value, **kw):
    a = helper.make_attribute(name, value, **kw)
    data = a.SerializeToString()
    return a, P.Attribute(data, (0, len(data)))


def test_attributes_as_onnx_helper_reads_them():
    cases = [("f", 0.1), ("f0", 0.0), ("i", -3), ("big", 2 ** 40), ("s", "tanh"),
             ("fs", [1.5, -2.25, 1e-3]), ("is", [0, -1, 2 ** 35]),
             ("ss", ["Sigmoid", "Tanh"]), ("empty_s", "")]
    for name, value in cases:
        a, ours = _attr(name, value)
        assert ours.name == name and ours.type == a.type
        want = helper.get_attribute_value(a)
        got = ours.value()
        if isinstance(want, list) and want and isinstance(want[0], float):
            np.testing.assert_array_equal(np.float32(got), np.float32(want))
        else:
            assert got == want, (name, got, want)
    t = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "v")
    a, ours = _attr("value", t)
    np.testing.assert_array_equal(ours.value().to_array(), numpy_helper.to_array(t))
    g = helper.make_graph([], "body", [], [])
    a, ours = _attr("then_branch", g)
    assert ours.type == ours.GRAPH and ours.value() is ours   # (kept, never read)
    undefined = onnx.AttributeProto(name="u")
    data = undefined.SerializeToString()
    assert P.Attribute(data, (0, len(data))).value() is None
    # a TENSOR attribute without its tensor (a fuzz finding): a LoadError naming it
    node = helper.make_node("Constant", [], ["y"])
    node.attribute.add(name="value", type=onnx.AttributeProto.TENSOR)
    m = helper.make_model(helper.make_graph([node], "g", [], [onnx.ValueInfoProto(name="y")]))
    with pytest.raises(LoadError, match="attribute 'value' has no value"):
        load_onnx(m)


def test_model_graph_nodes_inputs_as_onnx_reads_them():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", None, 5])
    x.type.tensor_type.shape.dim[1].Clear()           # a dimension with nothing set
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])
    noshape = helper.make_tensor_value_info("n", TensorProto.DOUBLE, None)
    seq = onnx.ValueInfoProto(name="seq")
    seq.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
    node = helper.make_node("Relu", ["x"], ["y"], name="r1", domain="")
    node2 = helper.make_node("Foo", ["y", ""], ["z", "w"], name="", domain="com.x", alpha=1.0)
    g = helper.make_graph([node, node2], "the graph", [x, ids, noshape, seq],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.ones(2, np.float32), "c")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.x", 2)])
    ours = P.parse_model(m.SerializeToString())
    assert ours.ir_version == m.ir_version
    assert ours.opset_import == [("", 17), ("com.x", 2)]
    assert ours.graph.name == "the graph"
    assert [(n.name, n.op_type, n.domain, n.input, n.output) for n in ours.graph.node] == [
        ("r1", "Relu", "", ["x"], ["y"]), ("", "Foo", "com.x", ["y", ""], ["z", "w"])]
    assert [a.name for a in ours.graph.node[1].attribute] == ["alpha"]
    assert [(v.name, v.elem_type, v.shape) for v in ours.graph.input] == [
        ("x", TensorProto.FLOAT, ["T", None, 5]), ("ids", TensorProto.INT64, [2, 3]),
        ("n", TensorProto.DOUBLE, None), ("seq", 0, None)]
    assert [v.name for v in ours.graph.output] == ["z"]
    assert [t.name for t in ours.graph.initializer] == ["c"]


@pytest.mark.parametrize("fname", sorted(f for f in os.listdir(FIX) if f.endswith(".onnx")))
def test_fixtures_read_as_onnx_reads_them(fname):
    m = onnx.load(os.path.join(FIX, fname))
    ours = P.parse_model(m.SerializeToString())
    assert ours.opset_import == [(o.domain, o.version) for o in m.opset_import]
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in m.graph.node]
    assert [list(n.input) for n in ours.graph.node] == [list(n.input) for n in m.graph.node]
    for t, w in zip(ours.graph.initializer, m.graph.initializer):
        want = numpy_helper.to_array(w)
        got = t.to_array()
        assert t.name == w.name and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    for n, w in zip(ours.graph.node, m.graph.node):
        for a, b in zip(n.attribute, w.attribute):
            if b.type == b.TENSOR:
                np.testing.assert_array_equal(a.value().to_array(), numpy_helper.to_array(b.t))
            elif b.type == b.FLOATS:
                np.testing.assert_array_equal(np.float32(a.value()),
                                              np.float32(helper.get_attribute_value(b)))
            elif b.type == b.FLOAT:
                assert np.float32(a.value()) == np.float32(b.f)
            else:
                assert a.value() == helper.get_attribute_value(b)


def _lstm_model(I=3, H=4):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((1, 4 * H, I)).astype(np.float32)
    R = rng.standard_normal((1, 4 * H, H)).astype(np.float32)
    Bb = rng.standard_normal((1, 8 * H)).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=H)
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (Bb, "B"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_external_data_beside_the_model(tmp_path):
    """Weights saved in a file beside the model load from the model's path (and match the
    model with weights inside); not from bytes; a location outside the model's folder,
    absolute, missing, or past the file's end is refused, naming the tensor."""
    m = _lstm_model()
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    want = load_onnx(m).run({"x": x})["y"]
    d = tmp_path / "m"
    d.mkdir()
    onnx.save_model(m, str(d / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    assert os.path.getsize(d / "w.bin") > 0
    got = load_onnx(str(d / "m.onnx")).run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
    data = (d / "m.onnx").read_bytes()
    with pytest.raises(LoadError, match=r"external file .*w\.bin.*from its path"):
        load_onnx(data)

    def with_location(loc, **extra):
        p = onnx.load(str(d / "m.onnx"), load_external_data=False)
        for t in p.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
            for k, v in extra.items():
                t.external_data.add(key=k, value=v)
        out = d / "bad.onnx"
        out.write_bytes(p.SerializeToString())
        return str(out)

    (tmp_path / "secret.bin").write_bytes((d / "w.bin").read_bytes())
    with pytest.raises(LoadError, match=r"'W'.*'\.\./secret\.bin' is outside"):
        load_onnx(with_location("../secret.bin"))
    with pytest.raises(LoadError, match="not a relative path"):
        load_onnx(with_location(str(tmp_path / "secret.bin")))
    with pytest.raises(LoadError, match="'nope.bin' not found"):
        load_onnx(with_location("nope.bin"))
    with pytest.raises(LoadError, match="outside 'w.bin'"):
        load_onnx(with_location("w.bin", offset="999999"))
    # a length other than the tensor's (its own 'length' entry replaced)
    p = onnx.load(str(d / "m.onnx"), load_external_data=False)
    t = next(t for t in p.graph.initializer if t.name == "R")
    next(e for e in t.external_data if e.key == "length").value = "8"
    (d / "short.onnx").write_bytes(p.SerializeToString())
    with pytest.raises(LoadError, match=r"'R'.*has 8 bytes from offset \d+ for the tensor's 256"):
        load_onnx(str(d / "short.onnx"))
    if hasattr(os, "symlink"):
        os.symlink(tmp_path / "secret.bin", d / "link.bin")
        with pytest.raises(LoadError, match="outside the model's folder"):
            load_onnx(with_location("link.bin"))


def _external(name, loc, offset, length, n):
    """A float tensor of ``n`` values stored at ``offset`` of external file ``loc``."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n],
                    data_location=TensorProto.EXTERNAL)
    for k, v in (("location", loc), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


def test_external_data_read_once(tmp_path):
    """Tensors pointing at the same bytes of an external file (an audit finding: 1000
    unused initializers at offset 0 of one 1 MiB file made 1 GB of arrays from a 67 KB
    model) are refused: a file's tensors may read no more bytes in all than it holds,
    whatever the path naming it (another spelling, a hard link) and whether an
    initializer or a node's tensor attribute reads them.  Disjoint ranges load, each
    load of the model with its own count."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "w.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    if hasattr(os, "link"):
        os.link(d / "w.bin", d / "hard.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [32])

    def save(inits, nodes=(), out="y"):
        nodes = list(nodes) or [helper.make_node("Add", ["x", inits[0].name], ["y"])]
        g = helper.make_graph(nodes, "g", [x], [onnx.ValueInfoProto(name=out)], inits)
        (d / "m.onnx").write_bytes(helper.make_model(g).SerializeToString())
        return str(d / "m.onnx")

    halves = [_external("a", "w.bin", 0, 128, 32), _external("b", "w.bin", 128, 128, 32)]
    for _ in range(2):
        m = load_onnx(save(halves))
        np.testing.assert_array_equal(m.run(np.zeros(32, np.float32))["y"], np.arange(32))
    for locs in (["w.bin"] * 1000, ["w.bin", "./w.bin"], ["w.bin", "hard.bin"]):
        if "hard.bin" in locs and not hasattr(os, "link"):
            continue
        inits = [_external(f"e{k}", loc, 0, 256, 64) for k, loc in enumerate(locs)]
        with pytest.raises(LoadError, match=r"'e1'.*read 512 bytes from it, more than "
                                            r"its 256 \(tensors sharing the same bytes"):
            load_onnx(save(inits))
    # a Constant node's value and an initializer on the same bytes
    const = helper.make_node("Constant", [], ["k"], value=_external("v", "w.bin", 0, 256, 64))
    with pytest.raises(LoadError, match=r"attribute 'value'.*'v'.*sharing"):
        load_onnx(save([_external("e", "w.bin", 0, 256, 64)], [const], out="k"))


def test_every_truncation_of_a_model_is_a_load_error():
    """Each prefix of a real model either loads (a prefix can end between fields) or
    raises LoadError naming the problem: never another exception."""
    data = open(os.path.join(FIX, "lstm_1l.onnx"), "rb").read()
    kinds = set()
    for n in range(len(data)):
        try:
            load_onnx(data[:n])
            kinds.add("loaded")
        except LoadError as e:
            kinds.add("error")
            assert "ONNX" in str(e) or "node" in str(e) or "graph" in str(e), str(e)
    assert "error" in kinds


def test_malformed_wire_data():
    for data, msg in ((b"\x08", "truncated varint"), (b"\x08" + b"\xff" * 11, "longer than"),
                      (b"\x3a\x05ab", "past the end"), (b"\x0b", "wire type 3"),
                      (b"\x00", "field number 0"), (b"\x3a\x02\x12\x05", "past the end")):
        with pytest.raises(LoadError, match=msg):
            load_onnx(data)


def _key(num, wt):
    return _enc_varint(num << 3 | wt)


def _enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _random_message(rng, depth):
    """Wire-valid bytes: random fields (numbers ONNX uses and others) of random wire
    types, length-delimited ones holding random messages, strings or packed numbers."""
    out = bytearray()
    for _ in range(rng.integers(0, 6)):
        num = int(rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 99]))
        wt = int(rng.choice([0, 0, 1, 2, 2, 2, 5]))
        out += _key(num, wt)
        if wt == 0:
            out += _enc_varint(int(rng.choice([0, 1, 7, 300, 2 ** 63, 2 ** 64 - 1])))
        elif wt == 1:
            out += rng.bytes(8)
        elif wt == 5:
            out += rng.bytes(4)
        else:
            kind = rng.integers(0, 3)
            body = (_random_message(rng, depth + 1) if kind == 0 and depth < 5
                    else rng.bytes(int(rng.integers(0, 12))) if kind == 1
                    else b"".join(_enc_varint(int(x)) for x in rng.integers(0, 2 ** 40, 3)))
            out += _enc_varint(len(body)) + body
    return bytes(out)


def test_random_wire_valid_messages_load_or_raise_load_errors():
    """2000 random, wire-valid messages (nested, fields of every wire type where ONNX's
    have another): each loads or raises LoadError, nothing else, in this process."""
    rng = np.random.default_rng(77)
    outcomes = {"loaded": 0, "error": 0}
    for _ in range(2000):
        data = _random_message(rng, 0)
        try:
            load_onnx(data)
            outcomes["loaded"] += 1
        except LoadError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100, outcomes


def test_constant_value_attributes_of_another_type_are_named_errors():
    """Fuzz findings: a ConstantOfShape / Constant whose 'value' is not a tensor (ints, a
    graph) or a ConstantOfShape value of several values: a TypeError / ValueError naming
    the model and node (at run, the shape coming from the input), never AttributeError."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    shape = helper.make_node("Shape", ["x"], ["s"])
    for value, err, msg in (([1, 2], TypeError, "not a tensor"),
                            (numpy_helper.from_array(np.ones(2, np.float32)), ValueError,
                             "2 values, not one")):
        node = helper.make_node("ConstantOfShape", ["s"], ["y"], value=value)
        m = load_onnx(helper.make_model(helper.make_graph(
            [shape, node], "cos", [x], [onnx.ValueInfoProto(name="y")])))
        with pytest.raises(err, match=rf"^cos: node 1 ConstantOfShape.*{msg}"):
            m.run({"x": np.ones((2, 3), np.float32)})
    node = helper.make_node("Constant", [], ["y"], value=[1, 2])
    node.attribute[0].name = "value"
    with pytest.raises(LoadError, match="not a tensor"):
        load_onnx(helper.make_model(helper.make_graph(
            [node], "c", [], [onnx.ValueInfoProto(name="y")])))
