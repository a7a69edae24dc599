"""Fuzz every loader with mutated and generated files.

Contract checked: ``fastrnn.io.load`` on any bytes either returns a model or raises
``fastrnn.io.LoadError`` (or a subclass); no format needs an optional package (fastrnn
reads HDF5 and ONNX's protobuf itself).  No other
exception, no crash, no hang, no large allocation.  A model that loads is then run on a
small input (an ONNX model three times, its kept program included, on inputs of its
declared shapes): a Python error naming the problem (an ONNX model's: the model and the
node) or an answer, nothing else.

Cases run in a child process under ``RLIMIT_AS`` (2 GiB) with a per-case time limit, so a
segfault, a hang or a huge allocation is caught and reported with the input that caused
it (saved under the report directory).  Short run here; the long run (>= 10000 cases per
format) is ``python bench/fuzz_long.py`` or ``pytest -m slow tests/test_fuzz.py``.
"""
from __future__ import annotations

import glob
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(HERE, "fixtures")
MEM_LIMIT = 2 << 30          # bytes of address space for the child
CASE_TIMEOUT = 5.0           # seconds per case (the child is killed past this)

# ----------------------------------------------------------------------------- seeds


def _own_safetensors() -> list[bytes]:
    sys.path.insert(0, ROOT)
    import fastrnn
    import fastrnn.io
    out = []
    for layer in [fastrnn.LSTM(3, 4, num_layers=2, seed=0),
                  fastrnn.GRU(2, 3, bidirectional=True, seed=0),
                  fastrnn.SimpleRNN(2, 2, nonlinearity="relu", seed=0)]:
        with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
            path = f.name
        try:
            fastrnn.io.save(layer, path)
            out.append(open(path, "rb").read())
        finally:
            os.unlink(path)
    return out


def seeds(fmt: str) -> list[bytes]:
    """Valid files of one format (small ones) to mutate."""
    def files(pattern, limit=6):
        paths = sorted(glob.glob(os.path.join(FIX, pattern)), key=os.path.getsize)[:limit]
        return [open(p, "rb").read() for p in paths]
    if fmt == "torch":
        return files("torch/*.pt")
    if fmt == "safetensors":
        return files("torch/*.safetensors") + _own_safetensors()
    if fmt == "keras":
        return files("keras/*.keras", 4)
    if fmt == "h5":
        return files("keras/*.h5", 4)
    if fmt == "onnx":
        return files("onnx/*.onnx", 5)
    raise ValueError(fmt)


FORMATS = ["torch", "safetensors", "keras", "h5", "onnx"]
SUFFIX = {"torch": ".pt", "safetensors": ".safetensors", "keras": ".keras", "h5": ".h5",
          "onnx": ".onnx"}

# ----------------------------------------------------------------------------- mutations

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0x40]
_BIG_INTS = [0, 1, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 40]


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        op = rng.randrange(8)
        n = len(b)
        if n == 0:
            b += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(n)
        if op == 0:                                   # bit flip
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:                                 # interesting byte
            b[i] = rng.choice(_INTERESTING)
        elif op == 2:                                 # truncate
            del b[rng.randrange(n):]
        elif op == 3:                                 # delete a run
            del b[i:i + rng.randrange(1, 64)]
        elif op == 4:                                 # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
        elif op == 5:                                 # duplicate a run
            j = rng.randrange(n)
            b[i:i] = b[j:j + rng.randrange(1, 128)]
        elif op == 6 and n >= 8:                      # overwrite a 4/8-byte integer
            w = rng.choice([4, 8])
            i = min(i, n - w)
            v = rng.choice(_BIG_INTS) & ((1 << (8 * w)) - 1)
            b[i:i + w] = v.to_bytes(w, "little")
        else:                                         # random byte
            b[i] = rng.randrange(256)
    return bytes(b)


def _mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """Mutate one member of a zip and rebuild it (valid CRCs), so the mutation reaches
    the parser of the member instead of stopping at the zip layer."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = [(i, zf.read(i.filename)) for i in zf.infolist()]
    except Exception:
        return _mutate_bytes(data, rng)
    k = rng.randrange(len(members))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for j, (info, content) in enumerate(members):
            if j == k:
                op = rng.randrange(10)
                if op == 0:
                    continue                                     # drop a member
                if op == 1 and members:
                    content = members[rng.randrange(len(members))][1]   # swap contents
                else:
                    content = _mutate_text(content, rng) if _is_text(content) \
                        else _mutate_bytes(content, rng)
            z.writestr(info.filename, content)
    return out.getvalue()


def _is_text(b: bytes) -> bool:
    return b[:1] in (b"{", b"[") or info_is_json(b)


def info_is_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except Exception:
        return False


def _mutate_json_value(v, rng: random.Random):
    choices = [0, -1, 1, 2 ** 31, 2 ** 62, 10 ** 12, 1.5, -3.0, None, True, "", "x" * 20,
               [], {}, [1, 2], [2 ** 40, 2 ** 40], "float16", "F64", "BF16", "I8", "bool",
               "LSTM", "GRU", "Bidirectional", "relu", "hard_sigmoid", "nan"]
    return rng.choice(choices)


def _mutate_tree(obj, rng: random.Random, depth=0):
    """Replace one random leaf (or container) of a JSON tree."""
    if isinstance(obj, dict) and obj:
        k = rng.choice(list(obj))
        if rng.random() < 0.15 and depth > 0:
            obj.pop(k)
        elif rng.random() < 0.3 or not isinstance(obj[k], (dict, list)):
            obj[k] = _mutate_json_value(obj[k], rng)
        else:
            obj[k] = _mutate_tree(obj[k], rng, depth + 1)
        return obj
    if isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        if rng.random() < 0.3 or not isinstance(obj[i], (dict, list)):
            obj[i] = _mutate_json_value(obj[i], rng)
        else:
            obj[i] = _mutate_tree(obj[i], rng, depth + 1)
        return obj
    return _mutate_json_value(obj, rng)


def _mutate_text(content: bytes, rng: random.Random) -> bytes:
    try:
        tree = json.loads(content)
    except Exception:
        return _mutate_bytes(content, rng)
    for _ in range(rng.choice([1, 1, 2, 4])):
        tree = _mutate_tree(tree, rng)
    return json.dumps(tree).encode()


def _mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """Mutate the JSON header (shapes, offsets, dtypes, metadata config) or the bytes."""
    if rng.random() < 0.35 or len(data) < 9:
        return _mutate_bytes(data, rng)
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except Exception:
        return _mutate_bytes(data, rng)
    meta = header.get("__metadata__")
    if meta and "fastrnn" in meta and rng.random() < 0.4:
        meta["fastrnn"] = _mutate_text(meta["fastrnn"].encode(), rng).decode("utf-8", "replace")
    else:
        header = _mutate_tree(header, rng)
    raw = json.dumps(header).encode()
    body = data[8 + n:]
    if rng.random() < 0.2:
        body = body[:rng.randrange(len(body) + 1)]
    return struct.pack("<Q", len(raw)) + raw + body


def mutate(fmt: str, data: bytes, rng: random.Random) -> bytes:
    if fmt in ("torch", "keras") and rng.random() < 0.75:
        return _mutate_zip(data, rng)
    if fmt == "safetensors":
        return _mutate_safetensors(data, rng)
    return _mutate_bytes(data, rng)


# ----------------------------------------------------------------------------- the child

CHILD = r"""
import io, json, os, resource, sys, time, traceback, random
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
import numpy as np
import fastrnn, fastrnn.io
from fastrnn.io import LoadError
import test_fuzz as H
fmt, n, seed, outdir, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
base = H.seeds(fmt)
path = os.path.join(outdir, "case" + H.SUFFIX[fmt])
cur = os.path.join(outdir, "current")
stats = {{"cases": 0, "loaded": 0, "rejected": 0, "import": 0, "findings": []}}
for k in range(start, n):
    data = H.make_case(fmt, base, seed, k)
    with open(path, "wb") as f: f.write(data)
    with open(cur, "w") as f: f.write(f"{{k}} {{time.time()}}")
    try:
        obj = fastrnn.io.load(path)
        stats["loaded"] += 1
        H.exercise(obj)
    except LoadError:
        stats["rejected"] += 1
    except BaseException as e:          # (an ImportError too: no format needs a package)
        tb = traceback.format_exc().strip().splitlines()
        keep = os.path.join(outdir, f"finding_{{fmt}}_{{seed}}_{{k}}{{H.SUFFIX[fmt]}}")
        with open(keep, "wb") as f: f.write(data)
        where = [l for l in tb if l.strip().startswith("File")][-1:]
        with open(os.path.join(outdir, "findings.jsonl"), "a") as f:
            f.write(json.dumps({{"case": k, "kind": type(e).__name__, "msg": str(e)[:200],
                                "where": (where[0].strip() if where else ""), "file": keep}}) + "\n")
    stats["cases"] += 1
    if stats["cases"] % 100 == 0:
        with open(os.path.join(outdir, f"partial_{{start}}.json"), "w") as f: json.dump(stats, f)
with open(os.path.join(outdir, f"stats_{{start}}.json"), "w") as f: json.dump(stats, f)
"""


def make_case(fmt: str, base: list, seed: int, k: int) -> bytes:
    """Case ``k`` of a run: the same bytes whatever process makes it."""
    rng = random.Random(seed * 1_000_003 + k)
    return mutate(fmt, rng.choice(base), rng) if k % 50 else generated(fmt, rng)


def generated(fmt: str, rng: random.Random) -> bytes:
    """A file built from scratch (not from a seed): header-only / random structures."""
    r = rng.random()
    if fmt == "safetensors":
        hdr = {}
        for i in range(rng.randrange(0, 4)):
            shape = [rng.choice([0, 1, 3, 4, 12, 2 ** 31, 2 ** 40]) for _ in range(rng.randrange(0, 3))]
            hdr[rng.choice(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "x", "bias_hh_l0"])] = {
                "dtype": rng.choice(["F32", "F16", "BF16", "F64", "I64", "U8", "??"]),
                "shape": shape, "data_offsets": [rng.choice([0, 4, 8, 2 ** 40]),
                                                 rng.choice([0, 16, 48, 2 ** 62])]}
        raw = json.dumps(hdr).encode()
        return struct.pack("<Q", len(raw)) + raw + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if fmt in ("torch", "keras") and r < 0.7:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            if fmt == "torch":
                z.writestr("archive/data.pkl", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))))
                z.writestr("archive/version", b"3\n")
            else:
                z.writestr("config.json", json.dumps({"class_name": rng.choice(["Sequential", "Functional", "LSTM"]),
                                                      "config": {"layers": []}}))
                z.writestr("metadata.json", b"{}")
                z.writestr("model.weights.h5", bytes(rng.randrange(256) for _ in range(rng.randrange(80))))
        return out.getvalue()
    if fmt == "h5":
        return b"\x89HDF\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if fmt == "onnx":
        return b"\x08" + bytes([rng.randrange(1, 12)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(100)))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))


def exercise(obj) -> None:
    """Run a loaded object on a small input: a file that loads must also run (an ONNX
    model three times: the first call, then its kept program twice) or raise a Python
    error naming the problem."""
    from fastrnn.layers import RNNBase
    if isinstance(obj, RNNBase):
        if obj.input_size <= 4096 and obj.hidden_size <= 4096:
            try:
                obj(np.zeros((2, 1, obj.input_size), obj.dtype))
            except (ValueError, TypeError):
                pass
    from fastrnn.model import Embedding, Model
    if isinstance(obj, Model):
        first, size = obj.layers[0], None
        for layer in obj.layers:
            core = getattr(layer, "core", None) or getattr(getattr(layer, "forward", None),
                                                           "core", None)
            if core is not None:
                size = core.input_size
                break
        if isinstance(first, Embedding):
            x = np.full((2, 3), min(1, first.input_dim - 1), np.int64)
        elif size is not None and size <= 4096:
            x = np.ones((2, 3, size), np.float32)
        else:
            return
        try:
            obj.predict(x)
        except (ValueError, TypeError, IndexError):
            pass
    from fastrnn.io.onnx import OnnxModel, _np_dtype
    if isinstance(obj, OnnxModel):
        feeds = {}
        for n in obj.input_names:
            info = obj._input_info[n]
            dims = [d if isinstance(d, int) and 0 < d <= 8 else 2 for d in info.shape or ()]
            try:
                dt = _np_dtype(info.elem_type) if info.elem_type else np.float32
            except Exception:   # noqa: BLE001 - an unknown element type: float32 feeds
                dt = np.float32
            feeds[n] = np.ones(dims, dt)
        for _ in range(3):
            try:
                obj.run(feeds)
            except (ValueError, TypeError, IndexError, MemoryError) as e:
                # a node's error names the model and the node (MemoryError: a shape too
                # large to allocate); the feeds' checks name the input
                assert str(e).startswith(obj.name) or "input" in str(e), e
                return


def run_fuzz(fmt: str, n: int, seed: int, outdir: str, total_timeout: float = 900.0) -> dict:
    """Run cases ``0..n-1`` of ``fmt`` in child processes; return merged stats.

    The parent watches the case being run: a case running longer than CASE_TIMEOUT is a
    "hang" finding (the child is killed and a new one resumes at the next case); a child
    that dies (signal, abort) is a "crash" finding for its current case."""
    import time
    os.makedirs(outdir, exist_ok=True)
    code = CHILD.format(root=ROOT, here=HERE, mem=MEM_LIMIT)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    merged = {"cases": 0, "loaded": 0, "rejected": 0, "import": 0, "findings": []}
    cur = os.path.join(outdir, "current")
    fpath = os.path.join(outdir, "findings.jsonl")
    if os.path.exists(fpath):
        os.unlink(fpath)
    start, t_end = 0, time.time() + total_timeout
    while start < n:
        if os.path.exists(cur):
            os.unlink(cur)
        proc = subprocess.Popen([sys.executable, "-c", code, fmt, str(n), str(seed), outdir,
                                 str(start)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        bad = None
        while proc.poll() is None:
            time.sleep(0.05)
            try:
                k, t0 = open(cur).read().split()
                k, t0 = int(k), float(t0)
            except (OSError, ValueError):
                continue
            if time.time() - t0 > CASE_TIMEOUT or time.time() > t_end:
                proc.kill()
                proc.wait()
                bad = (k, "hang", f"case ran more than {CASE_TIMEOUT} s")
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if bad is None and proc.returncode != 0:
            try:
                k = int(open(cur).read().split()[0])
            except (OSError, ValueError, IndexError):
                k = start
            bad = (k, "crash", f"child exited with {proc.returncode}: {err[-300:]}")
        seg = os.path.join(outdir, f"stats_{start}.json")
        if bad is None:
            st = json.load(open(seg))
            for key in ("cases", "loaded", "rejected", "import"):
                merged[key] += st[key]
            break
        k, kind, msg = bad
        part = os.path.join(outdir, f"partial_{start}.json")
        if os.path.exists(part):                   # counts of the cases before the bad one
            st = json.load(open(part))
            for key in ("loaded", "rejected", "import"):
                merged[key] += st[key]
            os.unlink(part)
        keep = os.path.join(outdir, f"finding_{fmt}_{seed}_{k}{SUFFIX[fmt]}")
        with open(keep, "wb") as f:
            f.write(make_case(fmt, seeds(fmt), seed, k))
        merged["findings"].append({"case": k, "kind": kind, "msg": msg, "where": "", "file": keep})
        merged["cases"] += k - start + 1          # the cases before it passed (not counted in detail)
        if time.time() > t_end:
            merged["findings"].append({"case": k, "kind": "timeout", "msg": "total time budget",
                                       "where": "", "file": ""})
            break
        start = k + 1
    if os.path.exists(fpath):
        merged["findings"] += [json.loads(l) for l in open(fpath)]
    merged["findings"].sort(key=lambda f: f["case"])
    return merged


def _check(stats, fmt):
    findings = stats["findings"]
    summary = "\n".join(f"{f['kind']}: {f['msg']} ({f['where']}) -> {f['file']}" for f in findings[:15])
    assert not findings, f"{len(findings)} finding(s) for {fmt}:\n{summary}"


# ----------------------------------------------------------------------------- tests

SHORT_N = {"torch": 300, "safetensors": 300, "keras": 120, "h5": 80, "onnx": 200}

# Formats with findings reported to their loader's owner and not fixed yet: the short run
# still runs them (and turns XPASS once they are clean).
KNOWN_OPEN = {
}


def _known(fmt):
    if fmt in KNOWN_OPEN:
        return pytest.param(fmt, marks=pytest.mark.xfail(reason=KNOWN_OPEN[fmt], strict=False))
    return fmt


@pytest.mark.parametrize("fmt", [_known(f) for f in FORMATS])
def test_fuzz_short(fmt, tmp_path):
    stats = run_fuzz(fmt, SHORT_N[fmt], seed=1234, outdir=str(tmp_path))
    _check(stats, fmt)
    assert stats["cases"] == SHORT_N[fmt]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [_known(f) for f in FORMATS])
def test_fuzz_long(fmt, tmp_path):
    total = 0
    for seed in range(4):
        stats = run_fuzz(fmt, 2500, seed=seed, outdir=str(tmp_path), total_timeout=3600)
        _check(stats, fmt)
        total += stats["cases"]
    assert total >= 10000


# hypothesis: structured safetensors headers, in-process (pure-Python parsing)
try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    _dims = st.lists(st.one_of(st.integers(0, 16), st.sampled_from([2 ** 31, 2 ** 40, -1])),
                     max_size=3)
    _entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "BOOL", "F8_E4M3", "x"]),
        "shape": _dims,
        "data_offsets": st.lists(st.one_of(st.integers(0, 256), st.just(2 ** 62)),
                                 min_size=0, max_size=3)})
    _names = st.sampled_from(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                              "weight_ih_l0_reverse", "a.weight_ih_l0", "__metadata__"])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(header=st.dictionaries(_names, _entry, max_size=5), body=st.binary(max_size=300),
           meta=st.one_of(st.none(), st.dictionaries(st.sampled_from(["fastrnn", "format"]),
                                                     st.text(max_size=40), max_size=2)))
    def test_hypothesis_safetensors(header, body, meta, tmp_path_factory):
        import fastrnn.io
        from fastrnn.io import LoadError
        h = dict(header)
        if meta is not None:
            h["__metadata__"] = meta
        raw = json.dumps(h).encode()
        p = tmp_path_factory.mktemp("st") / "h.safetensors"
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        try:
            obj = fastrnn.io.load(str(p))
        except LoadError:
            return
        exercise(obj)
