"""``torch.export.save`` archives (``.pt2``): their weights and RNN settings, without torch.

A ``.pt2`` file is a zip archive: ``<name>/data/weights/model_weights_config.json`` maps
each parameter's dotted name to a file of raw little-endian values
(``data/weights/weight_N``) and its dtype, sizes, strides and offset;
``data/constants/model_constants_config.json`` does the same for buffers;
``models/model.json`` is the exported graph.  The graph is never run: its
``aten.lstm / gru / rnn_tanh / rnn_relu`` nodes are only read for the settings a state
dict lacks (``batch_first``, ``bidirectional``, ``nonlinearity``), keyed by the module
whose parameters they take (the graph signature names them).  Every size, stride and
offset is checked against its file before anything is read.
"""
from __future__ import annotations

import collections
import json
import zipfile

import numpy as np

from . import LoadError
from .torchfile import _Budget

__all__ = ["read_pt2", "is_pt2"]

# torch.export's schema ScalarType -> NumPy (13: bfloat16, widened to float32 as the
# torch.save reader does)
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float16,
           7: np.float32, 8: np.float64, 12: np.bool_}
_BF16 = 13
_RNN_OPS = {"torch.ops.aten.lstm.input": "LSTM", "torch.ops.aten.gru.input": "GRU",
            "torch.ops.aten.rnn_tanh.input": "tanh", "torch.ops.aten.rnn_relu.input": "relu"}
# torch.nn cells' nodes: the nonlinearity of an RNNCell (keyed by its w_ih argument)
_CELL_OPS = {"torch.ops.aten.rnn_tanh_cell.default": "tanh",
             "torch.ops.aten.rnn_relu_cell.default": "relu",
             "torch.ops.aten.lstm_cell.default": None, "torch.ops.aten.gru_cell.default": None}
_MAX_JSON = 64 << 20


def is_pt2(names) -> bool:
    """Whether a zip archive's member names are a torch.export archive's."""
    return any(n.count("/") == 1 and n.endswith("/archive_format") for n in names) and any(
        n.endswith("/data/weights/model_weights_config.json") for n in names)


def _member(zf, name, what, limit):
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise LoadError(f"{what}: {name!r} is missing") from None
    if info.file_size > limit:
        raise LoadError(f"{what}: {name!r} is implausibly large ({info.file_size} bytes)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > 100 * max(info.compress_size, 1):
        raise LoadError(f"{what}: {name!r} compressed more than 100:1")
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except Exception as e:  # bad CRC, ... on damaged archives
        raise LoadError(f"{what}: corrupt zip member {name!r} ({type(e).__name__}: {e})"[:400]) from e
    if len(data) != info.file_size:
        raise LoadError(f"{what}: zip member {name!r} is not the size its header says")
    return data


def _json(zf, name, what):
    try:
        return json.loads(_member(zf, name, what, _MAX_JSON))
    except (ValueError, RecursionError) as e:
        raise LoadError(f"{what}: {name!r} is not valid JSON ({e})"[:300]) from None


def _ints(v, what):
    """A list of ``{"as_int": n}`` (symbolic sizes are refused)."""
    if not isinstance(v, list) or len(v) > 16:
        raise LoadError(f"{what}: expected a list of integers")
    out = []
    for d in v:
        n = d.get("as_int") if isinstance(d, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise LoadError(f"{what}: {d!r:.60} is not a non-negative integer")
        out.append(n)
    return out


def _tensor(zf, base, fqn, entry, what, budget, shared):
    if not isinstance(entry, dict) or not isinstance(entry.get("tensor_meta"), dict):
        raise LoadError(f"{what}: {fqn!r} has no tensor description")
    if entry.get("use_pickle"):
        raise LoadError(f"{what}: {fqn!r} is stored as a pickle (not supported)")
    meta = entry["tensor_meta"]
    code = meta.get("dtype")
    if code not in _DTYPES and code != _BF16:
        raise LoadError(f"{what}: {fqn!r} has an unsupported dtype (code {code!r:.20})")
    sizes = _ints(meta.get("sizes"), f"{what}: {fqn!r} sizes")
    strides = _ints(meta.get("strides"), f"{what}: {fqn!r} strides")
    off = meta.get("storage_offset", {"as_int": 0})
    (off,) = _ints([off], f"{what}: {fqn!r} storage_offset")
    if len(strides) != len(sizes):
        raise LoadError(f"{what}: {fqn!r} has {len(sizes)} sizes but {len(strides)} strides")
    path = entry.get("path_name")
    if not isinstance(path, str) or not path or "/" in path or path.startswith("."):
        raise LoadError(f"{what}: {fqn!r} has no valid path_name")
    raw = shared.get(base + path)
    if raw is None:
        raw = _member(zf, base + path, what, 1 << 40)
        budget.storage_bytes += len(raw)
        if base + path in shared:           # (a file several weights point at: read once)
            shared[base + path] = raw
    dt = np.dtype(np.uint16 if code == _BF16 else _DTYPES[code]).newbyteorder("<")
    if len(raw) % dt.itemsize:
        raise LoadError(f"{what}: {fqn!r}: {len(raw)} bytes, not whole {dt.name} values")
    storage = np.frombuffer(raw, dt)
    numel = 1
    for n in sizes:
        numel *= n
    if numel > 16 * max(storage.size, 1):
        # (strides of 0 repeat values: a real weight never has 16 times its stored values)
        raise LoadError(f"{what}: {fqn!r} has {numel} values from {storage.size} stored ones")
    if numel:
        last = off + sum((n - 1) * s for n, s in zip(sizes, strides))
        if last >= storage.size:
            raise LoadError(f"{what}: {fqn!r} (sizes {sizes}, strides {strides}, offset {off}) "
                            f"reaches past its {storage.size} stored values")
        budget.charge(numel * (4 if code == _BF16 else dt.itemsize), f"{what}: {fqn!r}")
        arr = np.lib.stride_tricks.as_strided(
            storage[off:], shape=sizes, strides=[s * dt.itemsize for s in strides],
            writeable=False).copy()
    else:
        arr = np.zeros(sizes, dt)
    if code == _BF16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(dt.newbyteorder("="))


def _hints(model: dict) -> dict:
    """``{module prefix: settings}`` of the graph's recurrent nodes."""
    try:
        gm = model["graph_module"]
        names = {}
        for spec in gm["signature"]["input_specs"]:
            p = spec.get("parameter") if isinstance(spec, dict) else None
            if isinstance(p, dict):
                names[p["arg"]["name"]] = p["parameter_name"]
        nodes = gm["graph"]["nodes"]
    except (KeyError, TypeError):
        return {}
    out: dict = {}
    for node in nodes if isinstance(nodes, list) else ():
        target = node.get("target") if isinstance(node, dict) else None
        op = _RNN_OPS.get(target)
        if op is None and target not in _CELL_OPS:
            continue
        args = {}
        for i in node.get("inputs") or ():
            if isinstance(i, dict) and isinstance(i.get("arg"), dict) and i["arg"]:
                args[i.get("name")] = next(iter(i["arg"].items()))
        if op is None:          # (a cell: its weight_ih is the node's w_ih)
            kind, w = args.get("w_ih", (None, None))
            fqn = names.get(w.get("name")) if kind == "as_tensor" and isinstance(w, dict) \
                else None
            if isinstance(fqn, str):
                nl = _CELL_OPS[target]
                out[fqn.rsplit(".", 1)[0] if "." in fqn else ""] = \
                    {"nonlinearity": nl} if nl else {}
            continue
        params = args.get("params", (None, None))[1]
        if not isinstance(params, list) or not params or not isinstance(params[0], dict):
            continue
        fqn = names.get(params[0].get("name"))
        if not isinstance(fqn, str):
            continue
        prefix = fqn.rsplit(".", 1)[0] if "." in fqn else ""
        h: dict = {}
        for key in ("batch_first", "bidirectional", "has_biases"):
            kind, v = args.get(key, (None, None))
            if kind == "as_bool" and isinstance(v, bool):
                h["bias" if key == "has_biases" else key] = v
        kind, v = args.get("num_layers", (None, None))
        if kind == "as_int" and isinstance(v, int):
            h["num_layers"] = v
        if op in ("tanh", "relu"):
            h["nonlinearity"] = op
        out[prefix] = h
    return out


def read_pt2(path_or_fileobj, name=None) -> tuple[dict, dict]:
    """``(tensors, hints)`` of a torch.export archive: its parameters and buffers under
    their dotted names, and the recurrent modules' settings by module prefix."""
    what = name or str(getattr(path_or_fileobj, "name", path_or_fileobj))
    try:
        zf = zipfile.ZipFile(path_or_fileobj)
    except Exception as e:  # BadZipFile, OSError, ... on damaged archives
        raise LoadError(f"{what}: not a readable zip archive ({type(e).__name__}: {e})"[:400]) from e
    with zf:
        names = zf.namelist()
        if not is_pt2(names):
            raise LoadError(f"{what}: not a torch.export (.pt2) archive")
        root = [n for n in names if n.count("/") == 1 and n.endswith("/archive_format")][0]
        root = root[: -len("archive_format")]
        order = _member(zf, root + "byteorder", what, 64).strip() if root + "byteorder" in names else b"little"
        if order != b"little":
            raise LoadError(f"{what}: byte order {order[:20]!r} (only little-endian archives)")
        tensors: dict = {}
        # torch points tied weights at one file: each file is read once, and the copies
        # all weights make of the files are bounded by the files' bytes (a config may
        # point any number of weights at one file)
        budget, shared = _Budget(), {}
        for cfg_name, sub in (("data/weights/model_weights_config.json", "data/weights/"),
                              ("data/constants/model_constants_config.json", "data/constants/")):
            if root + cfg_name not in names:
                continue
            cfg = _json(zf, root + cfg_name, what)
            cfg = cfg.get("config") if isinstance(cfg, dict) else None
            if not isinstance(cfg, dict):
                raise LoadError(f"{what}: {cfg_name} has no 'config' mapping")
            uses = collections.Counter(e["path_name"] for e in cfg.values() if isinstance(e, dict)
                                       and isinstance(e.get("path_name"), str))
            shared.update((root + sub + p, None) for p, n in uses.items() if n > 1)
            for fqn, entry in cfg.items():
                if not isinstance(fqn, str) or not fqn or len(fqn) > 1024:
                    raise LoadError(f"{what}: a weight name in {cfg_name} is not a string")
                if fqn in tensors:
                    raise LoadError(f"{what}: {fqn!r} is stored twice")
                if isinstance(entry, dict) and "tensor_meta" not in entry:
                    continue            # (a constant that is not a tensor)
                tensors[fqn] = _tensor(zf, root + sub, fqn, entry, what, budget, shared)
        hints = {}
        model_json = [n for n in names if n.startswith(root + "models/") and n.endswith(".json")]
        if model_json:
            model = _json(zf, sorted(model_json)[0], what)
            if isinstance(model, dict):
                hints = _hints(model)
    return tensors, hints
