"""ONNX's protobuf messages, read without the ``onnx`` or ``protobuf`` packages.

Only what fastrnn's ONNX loader uses is kept: the model's opsets and graph; the graph's
nodes, initializers, inputs and outputs; a node's inputs, outputs, names and attributes;
tensors (every storage ONNX's ``numpy_helper.to_array`` reads, external data beside a
model file); an input's element type and shape; the graphs of GRAPH / GRAPHS attributes
(a ``Loop``'s body), read as graphs themselves, nested at most :data:`MAX_GRAPH_DEPTH`
deep.  Other messages are skipped unread.  Field numbers are ``onnx/onnx.proto``'s.

The wire format: each field is a varint key ``number << 3 | wire type``, then a varint
(type 0), 8 bytes (1), a varint length and that many bytes (2: strings, bytes, messages,
packed repeated numbers) or 4 bytes (5).  Every length and offset is checked against
its enclosing message, so a malformed file raises :class:`ProtoError` (a ValueError),
never reads past its buffer and never recurses deeper than the fixed message nesting
(a subgraph is a graph inside a node's attribute inside a graph: counted, and refused
past MAX_GRAPH_DEPTH).
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["ProtoError", "parse_model", "Model", "Graph", "Node", "Attribute", "Tensor",
           "ValueInfo", "DTYPES", "tensor_to_array", "MAX_GRAPH_DEPTH"]

# subgraphs (GRAPH / GRAPHS attributes: Loop bodies) nested deeper than this are refused:
# each level is a few Python frames of this reader (and of the loader compiling it), and
# exporters nest one or two (a loop in a loop)
MAX_GRAPH_DEPTH = 32


class ProtoError(ValueError):
    pass


def _varint(buf, pos: int, end: int):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf, pos: int, end: int):
    """(number, wire type, value) of each field in buf[pos:end]: an int for varints, a
    (start, stop) span for the others."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
            yield num, 0, v
            continue
        if wt == 2:
            n, pos = _varint(buf, pos, end)
        elif wt == 1:
            n = 8
        elif wt == 5:
            n = 4
        else:
            raise ProtoError(f"unsupported wire type {wt} (field {num})")
        if n > end - pos:
            raise ProtoError(f"field {num}: {n} bytes past the end of its message")
        yield num, wt, (pos, pos + n)
        pos += n


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _str(buf, span, what: str) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError(f"{what} is not UTF-8") from None


def _need(wt: int, want: int, what: str):
    if wt != want:
        raise ProtoError(f"{what}: wire type {wt}, expected {want}")


def _varints(buf, wt, v, out: list, what: str, signed=True):
    """A repeated varint field's value (packed, wire type 2, or one, wire type 0)."""
    if wt == 0:
        out.append(_signed64(v) if signed else v)
    elif wt == 2:
        pos, end = v
        while pos < end:
            x, pos = _varint(buf, pos, end)
            out.append(_signed64(x) if signed else x)
    else:
        raise ProtoError(f"{what}: wire type {wt}")


def _fixed(buf, wt, v, out: list, dtype: str, what: str):
    """A repeated float / double field's value (packed, or one value)."""
    size = np.dtype(dtype).itemsize
    if wt == 2 or (wt == 5 and size == 4) or (wt == 1 and size == 8):
        s, e = v
        if (e - s) % size:
            raise ProtoError(f"{what}: {e - s} bytes, not a multiple of {size}")
        out.append(np.frombuffer(buf[s:e], dtype=dtype))
    else:
        raise ProtoError(f"{what}: wire type {wt}")


# ONNX TensorProto.DataType -> NumPy dtype (16: bfloat16 and later types: none in NumPy)
DTYPES = {1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8),
          4: np.dtype(np.uint16), 5: np.dtype(np.int16), 6: np.dtype(np.int32),
          7: np.dtype(np.int64), 8: np.dtype(object), 9: np.dtype(np.bool_),
          10: np.dtype(np.float16), 11: np.dtype(np.float64), 12: np.dtype(np.uint32),
          13: np.dtype(np.uint64), 14: np.dtype(np.complex64), 15: np.dtype(np.complex128)}
_TYPE_NAMES = {16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
               20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1"}


def dtype_name(code) -> str:
    return _TYPE_NAMES.get(code, "unknown")


class Tensor:
    __slots__ = ("name", "dims", "data_type", "raw", "floats", "doubles", "int32s",
                 "int64s", "uint64s", "strings", "external", "location", "segment", "base")

    def __init__(self, buf, span, base=None):
        self.name = ""
        self.dims: list = []
        self.data_type = 0
        self.raw = None
        self.floats: list = []
        self.doubles: list = []
        self.int32s: list = []
        self.int64s: list = []
        self.uint64s: list = []
        self.strings: list = []
        self.external: dict = {}
        self.location = 0
        self.segment = False
        self.base = base
        for num, wt, v in _fields(buf, *span):
            if num == 1:
                _varints(buf, wt, v, self.dims, "tensor dims")
            elif num == 2:
                _need(wt, 0, "tensor data_type")
                self.data_type = v
            elif num == 3:
                self.segment = True
            elif num == 4:
                _fixed(buf, wt, v, self.floats, "<f4", "tensor float_data")
            elif num == 5:
                _varints(buf, wt, v, self.int32s, "tensor int32_data")
            elif num == 6:
                _need(wt, 2, "tensor string_data")
                self.strings.append(bytes(buf[v[0]:v[1]]))
            elif num == 7:
                _varints(buf, wt, v, self.int64s, "tensor int64_data")
            elif num == 8:
                _need(wt, 2, "tensor name")
                self.name = _str(buf, v, "tensor name")
            elif num == 9:
                _need(wt, 2, "tensor raw_data")
                self.raw = buf[v[0]:v[1]]
            elif num == 10:
                _fixed(buf, wt, v, self.doubles, "<f8", "tensor double_data")
            elif num == 11:
                _varints(buf, wt, v, self.uint64s, "tensor uint64_data", signed=False)
            elif num == 13:
                _need(wt, 2, "tensor external_data")
                key = val = ""
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 in (1, 2):
                        _need(w2, 2, "tensor external_data entry")
                        if n2 == 1:
                            key = _str(buf, v2, "external_data key")
                        else:
                            val = _str(buf, v2, "external_data value")
                self.external[key] = val
            elif num == 14:
                _need(wt, 0, "tensor data_location")
                self.location = v

    def to_array(self) -> np.ndarray:
        return tensor_to_array(self)


class _Folder:
    """The folder a model's external data files are in, and how many bytes its tensors
    have read from each file (by device and inode: whatever the path naming it).  A
    file's tensors may read no more bytes in all than it holds: tensors pointing at the
    same bytes (which ONNX's exporters never write) would otherwise multiply them, a
    small model and data file making gigabytes of arrays."""
    __slots__ = ("path", "read")

    def __init__(self, path: str):
        self.path = path
        self.read: dict = {}


def _external_bytes(t: Tensor, nbytes: int):
    """The bytes of a tensor stored in a file beside the model: ``location`` relative to
    the model's folder and inside it (no absolute paths, no way out through ``..`` or a
    link), ``offset`` / ``length`` inside the file, the file's tensors reading no more
    than its size in all (_Folder)."""
    loc = t.external.get("location")
    if not loc:
        raise ProtoError(f"tensor {t.name!r}: external data without a location")
    if t.base is None:
        raise ProtoError(f"tensor {t.name!r}: its data is in an external file "
                         f"({loc!r}); load the model from its path to read it")
    if os.path.isabs(loc) or "\x00" in loc:
        raise ProtoError(f"tensor {t.name!r}: external data location {loc!r} is not a "
                         "relative path")
    base = os.path.realpath(t.base.path)
    path = os.path.realpath(os.path.join(base, loc))
    if os.path.commonpath([base, path]) != base:
        raise ProtoError(f"tensor {t.name!r}: external data location {loc!r} is outside "
                         "the model's folder")
    if not os.path.isfile(path):
        raise ProtoError(f"tensor {t.name!r}: external data file {loc!r} not found")
    try:
        offset = int(t.external.get("offset") or 0)
        length = t.external.get("length")
        length = None if length in (None, "") else int(length)
    except ValueError:
        raise ProtoError(f"tensor {t.name!r}: external data offset / length not "
                         "integers") from None
    st = os.stat(path)
    size = st.st_size
    if offset < 0 or offset > size or (length is not None and
                                       (length < 0 or offset + length > size)):
        raise ProtoError(f"tensor {t.name!r}: external data offset {offset} / length "
                         f"{length} outside {loc!r} ({size} bytes)")
    have = size - offset if length is None else length
    if have < nbytes or (length is not None and length != nbytes):
        raise ProtoError(f"tensor {t.name!r}: {loc!r} has {have} bytes from offset "
                         f"{offset} for the tensor's {nbytes}")
    key = (st.st_dev, st.st_ino)
    total = t.base.read.get(key, 0) + nbytes
    if total > size:
        raise ProtoError(f"tensor {t.name!r}: the tensors stored in {loc!r} would read "
                         f"{total} bytes from it, more than its {size} (tensors sharing "
                         "the same bytes?)")
    t.base.read[key] = total
    with open(path, "rb") as f:         # (only the tensor's bytes: never a whole large file)
        f.seek(offset)
        return f.read(nbytes)


def tensor_to_array(t: Tensor) -> np.ndarray:
    """The tensor's values as ``onnx.numpy_helper.to_array`` gives them."""
    dt = DTYPES.get(t.data_type)
    if dt is None:
        raise ProtoError(f"tensor {t.name!r}: element type {t.data_type} "
                         f"({dtype_name(t.data_type)}) is not supported")
    if t.segment:
        raise ProtoError(f"tensor {t.name!r}: segmented tensors are not supported")
    dims = t.dims
    if any(d < 0 for d in dims):
        raise ProtoError(f"tensor {t.name!r}: negative dimension in {dims}")
    n = 1
    for d in dims:
        n *= d
    if t.location == 1:
        if t.data_type == 8:
            raise ProtoError(f"tensor {t.name!r}: external string data is not supported")
        raw = _external_bytes(t, n * dt.itemsize)
    elif t.location != 0:
        raise ProtoError(f"tensor {t.name!r}: unknown data_location {t.location}")
    else:
        raw = t.raw
    code = t.data_type
    if code == 8:
        vals = np.empty(len(t.strings), dtype=object)
        vals[:] = t.strings
    elif raw is not None:
        if len(raw) != n * dt.itemsize:
            raise ProtoError(f"tensor {t.name!r}: {len(raw)} bytes of raw data for "
                             f"{n} values of {dt.name} (shape {dims})")
        # (native little-endian: a read-only view of the file's bytes, no copy; the
        # model copies the constants it keeps: OnnxModel._own_constants)
        vals = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt, copy=False)
    elif code in (1, 14):
        vals = np.concatenate(t.floats) if t.floats else np.zeros(0, np.float32)
        vals = vals.view(np.complex64) if code == 14 and len(vals) % 2 == 0 else vals
        vals = vals.astype(dt) if code == 1 else vals
    elif code in (11, 15):
        vals = np.concatenate(t.doubles) if t.doubles else np.zeros(0, np.float64)
        vals = vals.view(np.complex128) if code == 15 and len(vals) % 2 == 0 else vals
        vals = vals.astype(dt) if code == 11 else vals
    elif code == 7:
        vals = np.array(t.int64s, dtype=np.int64)
    elif code in (12, 13):
        vals = np.array(t.uint64s, dtype=np.uint64).astype(dt)
    elif code == 10:
        vals = np.array(t.int32s, dtype=np.int64).astype(np.uint16).view(np.float16)
    elif code == 9:
        vals = np.array(t.int32s, dtype=np.int64) != 0
    else:       # the int32 storage: (u)int8, (u)int16, int32
        vals = np.array(t.int32s, dtype=np.int64).astype(dt)
    if vals.size != n:
        raise ProtoError(f"tensor {t.name!r}: {vals.size} values for shape {dims}")
    return vals.reshape(dims)


class Attribute:
    """A node attribute; constants as ``onnx.AttributeProto``'s."""
    UNDEFINED, FLOAT, INT, STRING, TENSOR, GRAPH = 0, 1, 2, 3, 4, 5
    FLOATS, INTS, STRINGS, TENSORS, GRAPHS = 6, 7, 8, 9, 10
    SPARSE_TENSOR, SPARSE_TENSORS, TYPE_PROTO, TYPE_PROTOS = 11, 12, 13, 14
    __slots__ = ("name", "type", "f", "i", "s", "t", "floats", "ints", "strings",
                 "tensors", "g", "graphs", "other")

    def __init__(self, buf, span, base=None, depth=0):
        self.name = ""
        self.type = 0
        self.f = self.i = self.s = self.t = self.g = None
        self.floats: list = []
        self.ints: list = []
        self.strings: list = []
        self.tensors: list = []
        self.graphs: list = []      # (g: a GRAPH attribute's graph; graphs: GRAPHS')
        self.other = False          # a sparse tensor or type (never read)
        for num, wt, v in _fields(buf, *span):
            if num == 1:
                _need(wt, 2, "attribute name")
                self.name = _str(buf, v, "attribute name")
            elif num == 20:
                _need(wt, 0, "attribute type")
                self.type = v
            elif num == 2:
                _need(wt, 5, "attribute f")
                self.f = float(np.frombuffer(buf[v[0]:v[1]], "<f4")[0])
            elif num == 3:
                _need(wt, 0, "attribute i")
                self.i = _signed64(v)
            elif num == 4:
                _need(wt, 2, "attribute s")
                self.s = bytes(buf[v[0]:v[1]])
            elif num == 5:
                _need(wt, 2, "attribute t")
                self.t = Tensor(buf, v, base)
            elif num == 7:
                parts: list = []
                _fixed(buf, wt, v, parts, "<f4", "attribute floats")
                self.floats.extend(float(x) for p in parts for x in p)
            elif num == 8:
                _varints(buf, wt, v, self.ints, "attribute ints")
            elif num == 9:
                _need(wt, 2, "attribute strings")
                self.strings.append(bytes(buf[v[0]:v[1]]))
            elif num == 10:
                _need(wt, 2, "attribute tensors")
                self.tensors.append(Tensor(buf, v, base))
            elif num in (6, 11):
                _need(wt, 2, "attribute graph")
                g = _subgraph(buf, v, base, depth + 1, self.name)
                if num == 6:
                    self.g = g
                else:
                    self.graphs.append(g)
            elif num in (22, 23, 14, 15):
                self.other = True

    def value(self):
        """As ``onnx.helper.get_attribute_value``; None for an UNDEFINED type, and the
        attribute itself for graphs (read from ``g`` / ``graphs``), sparse tensors and
        types."""
        k = self.type
        if k == self.FLOAT:
            return self.f if self.f is not None else 0.0
        if k == self.INT:
            return self.i if self.i is not None else 0
        if k == self.STRING:
            return self.s if self.s is not None else b""
        if k == self.TENSOR:
            return self.t
        if k == self.FLOATS:
            return list(self.floats)
        if k == self.INTS:
            return list(self.ints)
        if k == self.STRINGS:
            return list(self.strings)
        if k == self.TENSORS:
            return list(self.tensors)
        if k in (self.GRAPH, self.GRAPHS, self.SPARSE_TENSOR, self.SPARSE_TENSORS,
                 self.TYPE_PROTO, self.TYPE_PROTOS):
            return self
        return None


class Node:
    __slots__ = ("input", "output", "name", "op_type", "domain", "attribute")

    def __init__(self, buf, span, base=None, depth=0):
        self.input: list = []
        self.output: list = []
        self.name = self.op_type = self.domain = ""
        self.attribute: list = []
        for num, wt, v in _fields(buf, *span):
            if num in (1, 2, 3, 4, 7):
                _need(wt, 2, "node field")
                s = _str(buf, v, "node field")
                if num == 1:
                    self.input.append(s)
                elif num == 2:
                    self.output.append(s)
                elif num == 3:
                    self.name = s
                elif num == 4:
                    self.op_type = s
                else:
                    self.domain = s
            elif num == 5:
                _need(wt, 2, "node attribute")
                if depth:
                    self.attribute.append(Attribute(buf, v, base, depth))
                    continue
                try:        # (a top-level node's subgraph errors name the node)
                    self.attribute.append(Attribute(buf, v, base, depth))
                except ProtoError as e:
                    if not str(e).startswith("subgraph"):
                        raise
                    what = " ".join(repr(x) for x in (self.op_type, self.name) if x)
                    raise ProtoError(f"node {what or '(unnamed)'}: {e}") from None


class ValueInfo:
    """A graph input's / output's name, element type (0: not a tensor or not given) and
    shape (a list of ints and dimension names / None; None: no shape given)."""
    __slots__ = ("name", "elem_type", "shape")

    def __init__(self, buf, span):
        self.name = ""
        self.elem_type = 0
        self.shape = None
        for num, wt, v in _fields(buf, *span):
            if num == 1:
                _need(wt, 2, "value name")
                self.name = _str(buf, v, "value name")
            elif num == 2:
                _need(wt, 2, "value type")
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 1:                     # TypeProto.tensor_type
                        _need(w2, 2, "tensor type")
                        self._tensor_type(buf, v2)

    def _tensor_type(self, buf, span):
        for num, wt, v in _fields(buf, *span):
            if num == 1:
                _need(wt, 0, "element type")
                self.elem_type = v
            elif num == 2:
                _need(wt, 2, "tensor shape")
                self.shape = []
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 1:                     # TensorShapeProto.dim
                        _need(w2, 2, "dimension")
                        d = None
                        for n3, w3, v3 in _fields(buf, *v2):
                            if n3 == 1 and w3 == 0:
                                d = _signed64(v3)
                            elif n3 == 2 and w3 == 2:
                                d = _str(buf, v3, "dimension name")
                        self.shape.append(d)


class Graph:
    __slots__ = ("name", "node", "initializer", "sparse_initializer", "input", "output")

    def __init__(self, buf=None, span=None, base=None, depth=0):
        self.name = ""
        self.node: list = []
        self.initializer: list = []
        self.sparse_initializer = 0
        self.input: list = []
        self.output: list = []
        if buf is None:
            return
        for num, wt, v in _fields(buf, *span):
            if num == 1:
                _need(wt, 2, "graph node")
                self.node.append(Node(buf, v, base, depth))
            elif num == 2:
                _need(wt, 2, "graph name")
                self.name = _str(buf, v, "graph name")
            elif num == 5:
                _need(wt, 2, "graph initializer")
                self.initializer.append(Tensor(buf, v, base))
            elif num == 15:
                self.sparse_initializer += 1
            elif num == 11:
                _need(wt, 2, "graph input")
                self.input.append(ValueInfo(buf, v))
            elif num == 12:
                _need(wt, 2, "graph output")
                self.output.append(ValueInfo(buf, v))


def _subgraph(buf, span, base, depth: int, attr: str) -> Graph:
    """The graph of a GRAPH / GRAPHS attribute ``attr``, ``depth`` levels below the
    model's graph."""
    if depth > MAX_GRAPH_DEPTH:
        raise ProtoError(f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep (attribute "
                         f"{attr!r})")
    try:
        return Graph(buf, span, base, depth)
    except ProtoError as e:
        msg = str(e)
        if msg.startswith("subgraph"):
            raise
        raise ProtoError(f"subgraph of attribute {attr!r}: {msg}") from None


class Model:
    __slots__ = ("ir_version", "opset_import", "graph")

    def __init__(self, buf, base=None):
        self.ir_version = 0
        self.opset_import: list = []        # (domain, version)
        self.graph = Graph()
        for num, wt, v in _fields(buf, 0, len(buf)):
            if num == 1:
                _need(wt, 0, "ir_version")
                self.ir_version = v
            elif num == 8:
                _need(wt, 2, "opset_import")
                dom, ver = "", 0
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 1:
                        _need(w2, 2, "opset domain")
                        dom = _str(buf, v2, "opset domain")
                    elif n2 == 2:
                        _need(w2, 0, "opset version")
                        ver = _signed64(v2)
                self.opset_import.append((dom, ver))
            elif num == 7:
                _need(wt, 2, "graph")
                self.graph = Graph(buf, v, base)


def parse_model(data, base: str | None = None) -> Model:
    """A model from its serialized bytes; ``base``: the folder its external data files
    are in (the model file's), None where it has none (bytes, a file object).  (Each
    read of an external tensor counts against its file's size, _Folder: the tensors of
    one parsed model are read once, as load_onnx does, parsing the model each time.)"""
    buf = memoryview(data)          # (raw tensor data: read in place, copied once)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    return Model(buf, None if base is None else _Folder(base))
