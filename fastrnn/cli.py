"""The ``fastrnn`` command (also ``python -m fastrnn``).

    fastrnn demo                              run the bundled model (numpy + scipy only)
    fastrnn inspect FILE                      format, layers, shapes, parameters, dtype
    fastrnn convert IN OUT.safetensors        any supported file -> fastrnn's own file
    fastrnn run FILE --input x.npy --output y.npy [--batch-first | --time-major]
                                              (several inputs: -i a.npy -i b.npy, or
                                              one .npz of arrays named by input)
    fastrnn bench [--quick] [--cases ...]     speed beside PyTorch / ONNX Runtime

Errors print one line on stderr and exit with status 1 (2 for bad usage).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import time
from typing import Sequence

__all__ = ["main"]

_EXPECTED_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError, MemoryError,
                    OverflowError)


class CLIError(Exception):
    """An error reported as one line, exit status 1."""


def _print(*a, file=None, **k):
    out = sys.stdout if file is None else file
    if out is None:                     # (stdout closed: `fastrnn demo >&-`)
        return
    print(*a, file=out, **k)
    out.flush()


# ----------------------------------------------------------------------------- helpers

def _load(path, prefix=None, args=None):
    """``fastrnn.io.load(path)`` with the command's loading options: ``--prefix``,
    ``--architecture`` (a weights-only Keras file's model JSON, read from a file) and
    ``--module-class`` (a pickled model's own classes, read as inert containers)."""
    import fastrnn.io
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a model file")
    kw = {"prefix": prefix} if prefix else {}
    arch = getattr(args, "architecture", None)
    if arch:
        try:
            with open(arch, encoding="utf-8") as f:
                kw["architecture"] = f.read(1 << 24)
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read --architecture {arch}: {e}") from None
    classes = getattr(args, "module_class", None)
    if classes:
        kw["module_classes"] = list(classes)
    act = getattr(args, "nonlinearity", None)
    if act:
        fmt = fastrnn.io.sniff_format(path)
        if fmt not in ("torch-zip", "torch-legacy", "torch-export", "safetensors"):
            raise CLIError(f"--nonlinearity applies to PyTorch state dicts (an nn.RNN's or "
                           f"RNNCell's weights cannot tell relu from tanh); {path} is {fmt}")
        kw["nonlinearity"] = act
    return fastrnn.io.load(path, **kw)


# loaders' advice in Python terms, said in the command line's
_CLI_WORDS = [(re.compile(r"pass prefix="), "pass --prefix"),
              (re.compile(r"pass architecture="), "pass --architecture FILE.json"),
              (re.compile(r"pass module_classes=\[('[^']*')(, '[^']*')*\]"),
               lambda m: "pass --module-class " + m.group(1).strip("'"))]


def _cli_words(msg: str) -> str:
    for pat, rep in _CLI_WORDS:
        msg = pat.sub(rep, msg)
    return msg


def _kind(obj) -> str:
    from .layers import RNNBase
    if isinstance(obj, RNNBase):
        return "layer"
    from .cells import RNNCellBase
    if isinstance(obj, RNNCellBase):
        return "cell"
    from .model import Model
    if isinstance(obj, Model):
        return "model"
    if type(obj).__name__ == "OnnxModel":
        return "onnx"
    return "other"


def _nparams(layer) -> int:
    return int(sum(v.size for v in layer.state_dict().values()))


def _fmt_shape(s) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


def _layer_lines(layer, indent="  ") -> list[str]:
    lines = [f"{indent}{layer!r}",
             f"{indent}  cell={type(layer).__name__} input_size={layer.input_size} "
             f"hidden_size={layer.hidden_size} num_layers={layer.num_layers} "
             f"directions={layer.num_directions}"
             + (f" proj_size={layer.proj_size}" if layer.proj_size else "")
             + f" batch_first={layer.batch_first} dtype={layer.dtype.name}"]
    for k, v in layer.state_dict().items():
        lines.append(f"{indent}  {k:<28} {_fmt_shape(v.shape):<14} {v.dtype}")
    lines.append(f"{indent}  parameters: {_nparams(layer):,}")
    return lines


# ----------------------------------------------------------------------------- inspect

def cmd_inspect(args) -> int:
    import fastrnn.io as fio
    path = args.file
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    fmt = fio.sniff_format(path)
    _print(f"file:    {path}")
    _print(f"format:  {fmt}  ({os.path.getsize(path):,} bytes)")
    if fmt in ("torch-zip", "torch-legacy", "torch-export", "safetensors"):
        meta = {}
        if fmt == "safetensors":
            meta = fio.read_safetensors_metadata(path)
        if "fastrnn" in meta and not args.prefix:
            _print("content: fastrnn file (config in the safetensors metadata)")
            return _describe(_load(path, None, args))
        kw = {"module_classes": list(args.module_class)} if args.module_class else {}
        tensors, _ = fio.read_state_dict(path, **kw)
        total = sum(int(getattr(v, "size", 0)) for v in tensors.values())
        dtypes = sorted({str(getattr(v, "dtype", "?")) for v in tensors.values()})
        _print(f"tensors: {len(tensors)}, {total:,} values, dtype {', '.join(dtypes) or '-'}")
        for k, v in list(tensors.items())[:args.max_tensors]:
            _print(f"  {k:<40} {_fmt_shape(v.shape):<16} {v.dtype}")
        if len(tensors) > args.max_tensors:
            _print(f"  ... {len(tensors) - args.max_tensors} more (--max-tensors)")
        specs = fio.list_modules(path, **kw)
        _print(f"recurrent modules: {len(specs)}")
        for s in specs:
            extra = f" proj_size={s.proj_size}" if s.proj_size else ""
            if s.nonlinearity:
                extra += f" nonlinearity={s.nonlinearity}"
            stack = ("" if s.is_cell else      # a cell has no layers or directions
                     f" num_layers={s.num_layers} bidirectional={s.bidirectional}")
            _print(f"  {s.prefix or '(root)'}: {s.cell} input_size={s.input_size} "
                   f"hidden_size={s.hidden_size}{stack} bias={s.bias}{extra} dtype={s.dtype}")
        if len(specs) > 1:
            _print("  (pass --prefix NAME to `fastrnn run`/`convert` to pick one)")
        if any(s.nonlinearity == "tanh" for s in specs):
            _print("  (weights do not tell tanh from relu: pass --nonlinearity relu to "
                   "`fastrnn run`/`convert` for a model trained with relu)")
        return 0
    return _describe(_load(path, None, args))


def _describe(obj) -> int:
    """Print what a loaded layer, model or ONNX graph holds."""
    kind = _kind(obj)
    if kind == "model":
        from collections import Counter

        from .model import _first_use
        first = _first_use(obj.layers)      # (a shared layer: at each of its calls)
        calls = Counter(first)
        layers = [(l, calls[i]) for i, l in enumerate(obj.layers) if first[i] == i]
        shared = sum(1 for _, n in layers if n > 1)
        _print(f"content: Keras-style model, {len(layers)} layers"
               + (f" ({shared} shared, {len(obj.layers)} calls)" if shared else "")
               + f", {obj.count_params():,} parameters")
        if obj.n_inputs > 1:
            names = obj.input_names
            _print("run:     -i once per input, in the order "
                   + (f"{_quoted(names)}, or one .npz of arrays named by input" if names else
                      f"of its {obj.n_inputs} inputs (without names), or one .npz saved as "
                      "np.savez(f, a, b, ...)"))
        obj.summary(print_fn=_print)
        for l, n in layers:
            core = getattr(l, "core", None)
            if core is not None:
                _print(f"  {l.name}: {core!r} dtype={core.dtype.name}"
                       + (f" (shared: {n} calls)" if n > 1 else ""))
        return 0
    if kind == "onnx":
        layers = [l for l in obj.recurrent_layers if l is not None]
        n = sum(_nparams(l) for l in layers)
        _print(f"content: ONNX graph {obj.name!r}, opset {obj.opset}")
        _print(f"inputs:  {obj.input_names}")
        _print(f"outputs: {obj.output_names}")
        _print(f"recurrent layers: {len(layers)} ({n:,} recurrent parameters)")
        for l in layers:
            for line in _layer_lines(l):
                _print(line)
        return 0
    if kind == "layer":
        _print("content: recurrent layer")
        for line in _layer_lines(obj):
            _print(line)
        return 0
    if kind == "cell":
        _print("content: recurrent cell")
        _print(f"  {obj!r}")
        _print(f"  cell={type(obj).__name__} input_size={obj.input_size} "
               f"hidden_size={obj.hidden_size} bias={obj.bias} dtype={obj.dtype.name}")
        for k, v in obj.state_dict().items():
            _print(f"  {k:<28} {_fmt_shape(v.shape):<14} {v.dtype}")
        _print(f"  parameters: {_nparams(obj):,}")
        return 0
    _print(f"content: {obj!r}")
    return 0


# ----------------------------------------------------------------------------- convert

def cmd_convert(args) -> int:
    import fastrnn.io as fio
    obj = _load(args.input, args.prefix, args)
    if _kind(obj) not in ("layer", "cell", "model"):
        what = {"onnx": "an ONNX graph"}.get(_kind(obj), repr(obj))
        raise CLIError(f"{args.input} holds {what}; `fastrnn convert` writes recurrent layers, "
                       "cells and Keras-style models (ONNX graphs stay ONNX files)")
    if not args.output.endswith(".safetensors") and not args.force:
        raise CLIError(f"output should end with .safetensors (got {args.output}); "
                       "use --force to write it anyway")
    if os.path.exists(args.output) and not args.force:
        raise CLIError(f"{args.output} exists; use --force to overwrite it")
    if args.dtype and _kind(obj) == "model":
        raise CLIError("--dtype converts single recurrent layers and cells only")
    if args.dtype:
        from .layers import layer_from_config     # (a cell's config builds the cell)
        cfg = obj.get_config()
        cfg["dtype"] = args.dtype
        new = layer_from_config(cfg)
        new.load_state_dict(obj.state_dict())
        obj = new
    fio.save(obj, args.output)
    back = fio.load(args.output)
    _print(f"wrote {args.output}: {back!r}, {_nparams(back):,} parameters, "
           f"{os.path.getsize(args.output):,} bytes")
    return 0


# ----------------------------------------------------------------------------- run

def _read_input(path):
    import numpy as np
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    from .io import LoadError, open_file
    try:
        f = open_file(path)     # (a FIFO refused, not waited on)
    except LoadError as e:
        raise CLIError(str(e)) from None
    try:
        with f:
            data = np.load(f, allow_pickle=False)
            if hasattr(data, "files"):
                data = {k: data[k] for k in data.files}
    except OSError:
        raise
    except Exception as e:      # noqa: BLE001 (empty: EOFError; bad zip: BadZipFile; ...)
        raise CLIError(f"cannot read {path} as .npy/.npz without pickle "
                       f"({type(e).__name__}: {e})") from None
    return data


@contextlib.contextmanager
def _default_threads(n):
    """fastrnn's default thread count ``n`` (None: as it is) inside the block: how
    ``--threads`` reaches every layer of an ONNX graph or a Keras-style model (their
    layers, loaded without a thread count of their own, use the default)."""
    from . import _threads
    before = _threads._default
    if n is not None:
        _threads.set_num_threads(n)
    try:
        yield
    finally:
        _threads.set_num_threads(before)


def _save_output(path, outputs) -> str:
    """Write ``outputs`` to exactly ``path`` (NumPy's savers add a suffix to a name that
    lacks theirs): all of them (.npz) or the first (.npy format, any other name); ``-``:
    the first, .npy format, to standard output.  Made in memory and written in one go, so
    a pipe (``/dev/stdout | ...``, which NumPy's savers cannot seek) works.  What was
    written."""
    import io

    import numpy as np
    buf = io.BytesIO()
    if path.lower().endswith(".npz"):
        np.savez(buf, **outputs)
        what = ", ".join(f"{k} {_fmt_shape(v.shape)}" for k, v in outputs.items())
    else:
        name, first = next(iter(outputs.items()))
        np.save(buf, first)
        what = f"{name} {_fmt_shape(first.shape)}"
    if path == "-":
        if sys.stdout is None:
            raise CLIError("-o -: standard output is closed")
        sys.stdout.flush()
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
    else:
        with open(path, "wb") as f:
            f.write(buf.getvalue())
    return what


def cmd_run(args) -> int:
    obj = _load(args.file, args.prefix, args)
    feeds = [(path, _read_input(path)) for path in args.input]    # (-i: once or more)
    with _default_threads(args.threads):
        return _run(args, obj, feeds)


def _quoted(names) -> str:
    return ", ".join(repr(str(n)) for n in names)


def _takes(obj) -> str:
    """``model 'm' takes 2 inputs: 'text', 'num'``: what a model of several inputs (or an
    ONNX graph) is fed, for messages."""
    if _kind(obj) == "onnx":
        n = len(obj.input_names)
        return f"ONNX graph {obj.name!r} takes {'one input' if n == 1 else f'{n} inputs'}: " \
               f"{_quoted(obj.input_names)}"
    names = obj.input_names
    return f"model {obj.name!r} takes {obj.n_inputs} inputs" + \
        (f": {_quoted(names)}" if names else " (without names)")


def _one_array_each(feeds, labels):
    """The arrays of several -i files, one each (a .npy, or an .npz of one array)."""
    xs = []
    for (path, data), label in zip(feeds, labels):
        if isinstance(data, dict):
            if len(data) != 1:
                raise CLIError(f"{path} holds {len(data)} arrays; with -i once per input "
                               f"each file holds one array (here {label})")
            data = next(iter(data.values()))
        xs.append(data)
    return xs


def _count_files(feeds, obj, n, labels) -> list:
    if len(feeds) != n:
        raise CLIError(f"{len(feeds)} input files (-i); {_takes(obj)} (-i once per input, "
                       "in that order)"[:500])
    return _one_array_each(feeds, labels)


_POSITIONAL = re.compile(r"arr_\d+")


def _model_arrays(obj, feeds) -> list:
    """A model of several inputs' arrays in input order: from one .npz (arrays named by
    input, or saved without names, ``np.savez(f, a, b)``: ``arr_0, arr_1``, in input
    order) or from one -i file per input, in input order."""
    n, names = obj.n_inputs, obj.input_names
    if len(feeds) > 1:
        labels = [f"input {names[k]!r}" if names else f"input {k}" for k in range(n)]
        return _count_files(feeds, obj, n, labels)
    path, data = feeds[0]
    how = ("an .npz of one array per input name, or -i once per input in that order"
           if names else "-i once per input in order, or an .npz saved as np.savez(f, "
           "a, b, ...) (arrays arr_0, arr_1, ... in input order)")
    if not isinstance(data, dict):
        raise CLIError(f"{path} holds one array; {_takes(obj)} (give {how})")
    keys = list(data)
    if not (names and set(keys) & set(names)) and all(_POSITIONAL.fullmatch(k) for k in keys):
        # (np.savez's names for arrays given without names: in input order)
        want = [f"arr_{k}" for k in range(n)]
        if set(keys) != set(want):
            raise CLIError(f"{path} holds {len(keys)} arrays saved without names "
                           f"({', '.join(keys)}); {_takes(obj)} (arr_0 to arr_{n - 1})")
        return [data[k] for k in want]
    if not names:
        raise CLIError(f"{path} holds arrays {_quoted(keys)}; {_takes(obj)}: give {how}"[:500])
    unknown = [k for k in keys if k not in names]
    missing = [k for k in names if k not in data]
    if unknown or missing:
        parts = ([f"unknown input name(s) {_quoted(unknown)}"] if unknown else []) + \
            ([f"missing input(s) {_quoted(missing)}"] if missing else [])
        raise CLIError(f"{path}: {', '.join(parts)}; {_takes(obj)} (an .npz holds one "
                       "array per input, named by it)"[:500])
    return [data[k] for k in names]


def _sequence_inputs(model) -> list[bool]:
    """Which inputs of a model of several inputs can be sequences, whose batch axis a
    layout flag moves: any of 3 and more axes; one of 2 axes only as token ids, (B, T),
    read by an Embedding (any other reads (B, features), one vector a row)."""
    from .model import INPUT, Embedding, InputCast
    n = model.n_inputs
    graph = model.inputs if model.inputs is not None else \
        [[(i - 1, 0)] for i in range(len(model.layers))]
    ids = [False] * n
    cast = {}                       # an InputCast's position -> the input it casts
    for i, refs in enumerate(graph):
        for a, b in refs:
            k = b if a == INPUT else cast.get(a) if b == 0 else None
            if k is None:
                continue
            layer = model.layers[i]
            if isinstance(layer, InputCast):
                cast[i] = k
            elif isinstance(layer, Embedding):
                ids[k] = True
    return ids


def _sequence_flags(obj, xs) -> list[bool]:
    """Which of a model's inputs ``xs`` are sequences a layout flag moves: (T, B,
    features), or (T, B) token ids read by an Embedding; not a (B, features) row of
    vectors, nor images."""
    ids = _sequence_inputs(obj)
    return [x.ndim == 3 or (x.ndim == 2 and ids[k]) for k, x in enumerate(xs)]


def _swap_sequence_outputs(outputs: dict, keys=None) -> None:
    """A time-major run's sequence outputs (of ``keys``, default all), (B, T, features),
    back time-major, in place; other outputs (vectors, images, attention scores) as they
    are."""
    import numpy as np
    for k in outputs if keys is None else keys:
        if outputs[k].ndim == 3:
            outputs[k] = np.ascontiguousarray(np.swapaxes(outputs[k], 0, 1))


def _layout_model_inputs(args, obj, xs):
    """Several inputs put batch first (the model's layout): each sequence input of a
    time-major run swapped, the batch sizes checked.  -> (inputs, swapped, batch first)"""
    import numpy as np
    want_bf = not args.time_major
    names = obj.input_names or [f"input {k}" for k in range(obj.n_inputs)]
    label = [repr(str(v)) if obj.input_names else v for v in names]
    xs = [np.asarray(x) for x in xs]
    seq = _sequence_flags(obj, xs)
    swap = not want_bf
    given = [x.shape for x in xs]
    if swap:
        xs = [np.swapaxes(x, 0, 1) if s else x for x, s in zip(xs, seq)]
    batch = [x.shape[0] if x.ndim else None for x in xs]
    if None not in batch and len(set(batch)) > 1:
        where = ("read time major: axis 1 of a sequence input, axis 0 of any other"
                 if not want_bf else "batch first: axis 0 of each")
        raise CLIError("the inputs disagree on the batch size (" + where + "): " +
                       ", ".join(f"{label[k]} {_fmt_shape(given[k])} has {batch[k]}"
                                 for k in range(len(xs))))
    return xs, swap, want_bf


def _run(args, obj, feeds) -> int:
    import numpy as np
    kind = _kind(obj)
    extra = {}
    t0 = time.perf_counter()
    if kind == "onnx":
        if args.batch_first or args.time_major:
            raise CLIError("--batch-first/--time-major do not apply to ONNX graphs "
                           "(inputs are fed as the graph declares them)")
        if len(feeds) == 1:
            x = feeds[0][1]
        else:               # (one -i file per input, in the graph's order)
            names = obj.input_names
            x = _count_files(feeds, obj, len(names), [f"input {v!r}" for v in names])
        res = obj.run(x)
        outputs = {k: np.asarray(v) for k, v in res.items()}
    elif kind == "model" and obj.n_inputs > 1:
        xs, swap, want_bf = _layout_model_inputs(args, obj, _model_arrays(obj, feeds))
        y = obj.predict(xs)
        ys = y if isinstance(y, list) else [y]
        outputs = {f"output_{i}" if i else "output": v for i, v in enumerate(ys)}
        if swap:
            _swap_sequence_outputs(outputs)
        extra["layout"] = "batch first" if want_bf else "time major"
    else:
        if len(feeds) > 1 and kind in ("layer", "model"):
            what = "a recurrent layer" if kind == "layer" else f"model {obj.name!r}"
            raise CLIError(f"{len(feeds)} input files (-i); {what} takes one input "
                           "(-i once)")
        path, x = feeds[0]
        if isinstance(x, dict):
            if len(x) != 1:
                raise CLIError(f"{path} holds {len(x)} arrays; this model takes one input")
            x = next(iter(x.values()))
        if kind == "layer":
            native_bf = obj.batch_first
        elif kind == "model":
            native_bf = True
        else:
            raise CLIError(f"cannot run {obj!r}: `run` takes layers and models; a cell "
                           "steps one time step from Python (h = cell(x, h))"
                           if kind == "cell" else f"cannot run {obj!r}")
        want_bf = True if args.batch_first else False if args.time_major else native_bf
        # (a layer's 2-D input is one unbatched sequence (T, I): no batch axis to move; a
        # model's moves where it is a sequence, _sequence_flags)
        swap = want_bf != native_bf
        if swap and (x.ndim >= 3 if kind == "layer" else _sequence_flags(obj, [x])[0]):
            x = np.swapaxes(x, 0, 1)
        if kind == "layer":
            out, state = obj(x, num_threads=args.threads)
            outputs = {"output": out}
            if isinstance(state, tuple):
                outputs["h_n"], outputs["c_n"] = state
            else:
                outputs["h_n"] = state
        else:
            y = obj.predict(x)
            ys = y if isinstance(y, list) else [y]
            outputs = {f"output_{i}" if i else "output": v for i, v in enumerate(ys)}
        # every sequence output in the layout asked for (a model's 3-D outputs; a layer's
        # output, not its final states (layers, B, H))
        if swap:
            _swap_sequence_outputs(outputs, None if kind == "model" else ["output"])
        extra["layout"] = "batch first" if want_bf else "time major"
    elapsed = time.perf_counter() - t0
    written = _save_output(args.output, outputs)
    lay = f" ({extra['layout']})" if extra else ""
    # (on stderr: the output may be standard output itself)
    _print(f"wrote {args.output}: {written}{lay} in {elapsed * 1e3:.2f} ms", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- demo

DEMO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                         "demo_lstm.safetensors")


def _numpy_lstm(layer, x):
    """Plain NumPy reference (PyTorch's equations), for the demo's self-check."""
    import numpy as np
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    H = layer.hidden_size
    h_seq = x.astype(np.float64)
    for l in range(layer.num_layers):
        h = np.zeros((x.shape[1], H))
        c = np.zeros((x.shape[1], H))
        outs = []
        for t in range(h_seq.shape[0]):
            g = (h_seq[t] @ sd[f"weight_ih_l{l}"].T + sd[f"bias_ih_l{l}"]
                 + h @ sd[f"weight_hh_l{l}"].T + sd[f"bias_hh_l{l}"])
            i, f, gg, o = np.split(g, 4, axis=-1)
            sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
            c = sig(f) * c + sig(i) * np.tanh(gg)
            h = sig(o) * np.tanh(c)
            outs.append(h)
        h_seq = np.stack(outs)
    return h_seq


def cmd_demo(args) -> int:
    import numpy as np
    import fastrnn
    import fastrnn.io
    t0 = time.perf_counter()
    layer = fastrnn.io.load(DEMO_FILE)
    t_load = time.perf_counter() - t0
    T, B = args.steps, args.batch
    t = np.arange(T, dtype=np.float32)[:, None, None]
    k = np.arange(1, layer.input_size + 1, dtype=np.float32)[None, None, :]
    b = np.arange(B, dtype=np.float32)[None, :, None]
    x = np.sin(0.1 * k * t + 0.5 * b).astype(np.float32)         # (T, B, I), fixed input
    out, (h_n, c_n) = layer(x)
    runs = []
    for _ in range(args.repeat):
        s = time.perf_counter()
        layer(x)
        runs.append(time.perf_counter() - s)
    ref = _numpy_lstm(layer, x)
    err = float(np.abs(out - ref).max())
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    _print(f"fastrnn {fastrnn.__version__} demo: {layer!r} from {os.path.basename(DEMO_FILE)} "
           f"(loaded in {t_load * 1e3:.1f} ms)")
    _print(f"input  x: (T={T}, B={B}, I={layer.input_size}) sine waves, float32")
    _print(f"output: {_fmt_shape(out.shape)}, h_n {_fmt_shape(h_n.shape)}, "
           f"c_n {_fmt_shape(c_n.shape)}")
    _print(f"output[-1, 0, :8] = {out[-1, 0, :8]}")
    _print(f"|h_n| per layer  = {np.linalg.norm(h_n, axis=-1)[:, 0]}")
    best, med = min(runs), sorted(runs)[len(runs) // 2]
    _print(f"time: {med * 1e3:.3f} ms median, {best * 1e3:.3f} ms best over {args.repeat} runs "
           f"({T * B / med / 1e3:.1f} k steps/s, {fastrnn.get_num_threads()} threads)")
    ok = err < 1e-4
    _print(f"check: max |fastrnn - NumPy reference| = {err:.2e} {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- bench

_DEFAULT_CASES = ["lstm:1:100:256", "lstm:16:100:256", "gru:1:100:256", "gru:16:100:256",
                  "rnn:1:100:256", "lstm:64:50:512"]
_QUICK_CASES = ["lstm:1:50:128", "gru:8:50:128"]


def _parse_case(text):
    parts = text.lower().split(":")
    if len(parts) != 4 or parts[0] not in ("lstm", "gru", "rnn"):
        raise CLIError(f"bad case {text!r}: expected CELL:B:T:H with CELL lstm, gru or rnn "
                       "(e.g. lstm:16:100:256)")
    try:
        B, T, H = (int(p) for p in parts[1:])
    except ValueError:
        raise CLIError(f"bad case {text!r}: B, T and H must be integers") from None
    if min(B, T, H) < 1 or B * T * H > 2e8:
        raise CLIError(f"bad case {text!r}: sizes must be >= 1 and not huge")
    return parts[0], B, T, H


def _time(fn, repeat, min_time):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 1000):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    times.sort()
    return times[len(times) // 2]


def _onnx_model_bytes(cell, sd, I, H):
    """A one-node ONNX graph (LSTM/GRU/RNN) with the same weights as ``sd``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    W, R = sd["weight_ih_l0"], sd["weight_hh_l0"]
    bi, bh = sd["bias_ih_l0"], sd["bias_hh_l0"]
    if cell == "lstm":   # torch i f g o -> onnx i o f c
        perm = [0, 3, 1, 2]
    elif cell == "gru":  # torch r z n -> onnx z r h
        perm = [1, 0, 2]
    else:
        perm = [0]

    def re(a):
        blocks = np.split(a, G, axis=0)
        return np.concatenate([blocks[p] for p in perm], axis=0)

    inits = [numpy_helper.from_array(re(W)[None].astype(np.float32), "W"),
             numpy_helper.from_array(re(R)[None].astype(np.float32), "R"),
             numpy_helper.from_array(np.concatenate([re(bi), re(bh)])[None].astype(np.float32), "B")]
    attrs = {"hidden_size": H}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"], **attrs)
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["T", "B", I])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, None), helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m.SerializeToString()


def cmd_bench(args) -> int:
    import numpy as np
    import fastrnn
    cases = [_parse_case(c) for c in (args.cases or (_QUICK_CASES if args.quick else _DEFAULT_CASES))]
    from . import _threads
    threads = (fastrnn.get_num_threads() if args.threads is None
               else _threads._check_threads(args.threads))
    repeat = 3 if args.quick else args.repeat
    min_time = 0.05 if args.quick else args.min_time
    peers = []
    torch = ort = None
    if not args.no_torch:
        try:
            import torch  # noqa: F811
            torch.set_num_threads(threads)
            peers.append("torch")
        except ImportError:
            torch = None
    if not args.no_onnx:
        try:
            import onnxruntime as ort  # noqa: F811
            import onnx  # noqa: F401
            peers.append("onnxruntime")
        except ImportError:
            ort = None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    tasks = [(c, who) for c in cases for who in ["fastrnn"] + peers]
    bar = tqdm(total=len(tasks), desc="bench", unit="run", file=sys.stderr,
               disable=args.no_progress) if tqdm else None
    results = {}
    for (cell, B, T, H), who in tasks:
        if bar is not None:
            bar.set_postfix_str(f"{cell} B={B} T={T} H={H} {who}")
        elif not args.no_progress:
            print(f"bench: {cell} B={B} T={T} H={H} {who} ...", file=sys.stderr, flush=True)
        cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.SimpleRNN}[cell]
        layer = cls(H, H, seed=0, num_threads=threads)
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        if who == "fastrnn":
            fn = lambda: layer(x)  # noqa: E731
        elif who == "torch":
            tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
            m = tcls(H, H)
            with torch.no_grad():
                for k, v in layer.state_dict().items():
                    getattr(m, k).copy_(torch.from_numpy(v))
            xt = torch.from_numpy(x)

            def fn(m=m, xt=xt):
                with torch.inference_mode():
                    m(xt)
        else:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(_onnx_model_bytes(cell, layer.state_dict(), H, H), so,
                                        providers=["CPUExecutionProvider"])
            fn = lambda sess=sess: sess.run(None, {"X": x})  # noqa: E731
        results[(cell, B, T, H, who)] = _time(fn, repeat, min_time)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    cols = ["fastrnn"] + peers
    head = f"{'case':<24}" + "".join(f"{c:>14}" for c in cols) + \
        "".join(f"{'vs ' + p:>16}" for p in peers)
    _print(f"fastrnn {fastrnn.__version__}, float32, {threads} thread(s), median times")
    _print(head)
    _print("-" * len(head))
    for cell, B, T, H in cases:
        row = f"{cell.upper() + f' B={B} T={T} H={H}':<24}"
        ref = results[(cell, B, T, H, "fastrnn")]
        for c in cols:
            row += f"{results[(cell, B, T, H, c)] * 1e3:>11.3f} ms"
        for p in peers:
            row += f"{ref / results[(cell, B, T, H, p)]:>15.2f}x"
        _print(row)
    if peers:
        _print("(vs X: fastrnn time / X time; below 1 means fastrnn is faster)")
    else:
        _print("(install torch and/or onnxruntime+onnx to compare)")
    return 0


# ----------------------------------------------------------------------------- parser

def _count(minimum):
    """An argparse type: an int of at least ``minimum`` (else a usage error, status 2)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse


def _loading_options(p) -> None:
    p.add_argument("--architecture", metavar="FILE.json",
                   help="(Keras weights-only .h5) the model's config: model.to_json() saved "
                   "to a file")
    p.add_argument("--nonlinearity", choices=("tanh", "relu"),
                   help="(state dicts of nn.RNN / nn.RNNCell) the nonlinearity, which the "
                   "weights cannot tell (default tanh; a pickled module says it itself)")
    p.add_argument("--module-class", action="append", metavar="MODULE.CLASS",
                   help="(torch.save(model) of your own nn.Module class) read that class's "
                   "objects as inert containers; repeat for several")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastrnn", description="Fast CPU recurrent networks: run, inspect and convert "
        "PyTorch / safetensors / Keras / ONNX models.",
        epilog="Run `fastrnn COMMAND --help` for a command's options.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="run the bundled demo model (works with numpy + scipy only)",
                       description="Load the small LSTM shipped with fastrnn, run it on a fixed "
                       "input, print outputs, timing and a check against a NumPy reference.")
    d.add_argument("--steps", type=_count(1), default=100, help="time steps T (default 100)")
    d.add_argument("--batch", type=_count(1), default=4, help="batch size B (default 4)")
    d.add_argument("--repeat", type=_count(1), default=20, help="timed runs (default 20)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("inspect", help="show a model file's format, layers, shapes, "
                       "parameter count and dtype",
                       description="Show what a model file holds: format, tensors, recurrent "
                       "layers (sizes, directions), parameter count and dtype.")
    i.add_argument("file", help="a .pt/.pth/.bin, .safetensors, .keras, .h5 or .onnx file")
    i.add_argument("--prefix", help="(torch/safetensors) treat the file as a state dict even "
                   "if written by fastrnn")
    i.add_argument("--max-tensors", type=_count(0), default=50,
                   help="tensors listed (default 50)")
    _loading_options(i)
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("convert", help="convert a model file to fastrnn's own .safetensors",
                       description="Read any supported file and write the recurrent layer (or "
                       "cell, or Keras-style model) as fastrnn's own safetensors file "
                       "(weights + config), which fastrnn.load reads back exactly.")
    c.add_argument("input", help="source file")
    c.add_argument("output", help="destination .safetensors file")
    c.add_argument("--prefix", help="module to convert when the file holds several "
                   "(e.g. encoder.lstm)")
    c.add_argument("--dtype", choices=["float32", "float64"], help="convert the weights")
    c.add_argument("--force", action="store_true", help="overwrite / allow another suffix")
    _loading_options(c)
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("run", help="run a model on inputs saved with numpy.save",
                       description="Run a model on an input array (.npy, or .npz for ONNX "
                       "graphs with named inputs) and save the output to the file named "
                       "by --output, exactly (no suffix added): a name ending in .npz "
                       "gets every output (output and final states; an ONNX graph's "
                       "outputs by name), any other name the first output in .npy "
                       "format.  A model of several inputs (a Keras functional model "
                       "with several Inputs, an ONNX graph) takes one .npz of arrays named "
                       "by input, or --input once per input, in the model's order "
                       "(`fastrnn inspect` lists them).")
    r.add_argument("file", help="model file")
    r.add_argument("--input", "-i", required=True, action="append", metavar="FILE",
                   help="input .npy/.npz; for a model of several inputs, an .npz of arrays "
                   "named by input, or -i once per input in the model's order")
    r.add_argument("--output", "-o", required=True,
                   help="output file, written under exactly this name: .npz for every "
                   "output, else the first one (.npy format); - for standard output")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--batch-first", action="store_true",
                   help="the input is (B, T, features) (output written the same way)")
    g.add_argument("--time-major", action="store_true",
                   help="the input is (T, B, features) (output written the same way; "
                   "of a model's several inputs, each sequence: (T, B, ...), or (T, B) "
                   "ids read by an Embedding; any other stays (B, ...))")
    r.add_argument("--prefix", help="module to run when the file holds several")
    _loading_options(r)
    r.add_argument("--threads", type=_count(1), default=None,
                   help="threads (>= 1) for every recurrent layer of the model, whatever "
                   "its format (default: all cores)")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="speed comparison on this machine (PyTorch and ONNX "
                       "Runtime included when installed)",
                       description="Time fastrnn forward passes beside PyTorch and ONNX "
                       "Runtime (same weights, float32) and print a table.")
    b.add_argument("--quick", action="store_true", help="two small cases, few repeats")
    b.add_argument("--cases", nargs="+", metavar="CELL:B:T:H",
                   help=f"cases to run (default: {' '.join(_DEFAULT_CASES)})")
    b.add_argument("--threads", type=_count(1), default=None, help="threads for every library")
    b.add_argument("--repeat", type=_count(1), default=10,
                   help="minimum timed runs (default 10)")
    b.add_argument("--min-time", type=float, default=0.3,
                   help="minimum seconds per measurement (default 0.3)")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    b.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)
    return p


def _interruptible(args) -> int:
    """Run the command in a worker thread while this (main) thread waits, so Ctrl-C ends
    the process at once: a layer call runs without the GIL and a signal's Python
    handler would wait for it to return (minutes for a long sequence).  The command's
    own errors are raised here."""
    box: dict = {}

    def work():
        try:
            box["rc"] = int(args.func(args) or 0)
        except BaseException as e:      # noqa: BLE001 (re-raised in the main thread)
            box["exc"] = e

    t = threading.Thread(target=work, name="fastrnn-cli", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.1)
    except KeyboardInterrupt:
        print("fastrnn: interrupted", file=sys.stderr)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(130)                   # (the worker is inside a kernel call)
    if "exc" in box:
        raise box["exc"]
    return box["rc"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastrnn`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:          # --help / --version (0) or usage errors (2)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return _interruptible(args)
    except BrokenPipeError:         # `fastrnn inspect f.pt | head`: the reader left
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except KeyboardInterrupt:
        print("fastrnn: interrupted", file=sys.stderr)
        return 130
    except CLIError as e:
        print(f"fastrnn: error: {e}", file=sys.stderr)
        return 1
    except _EXPECTED_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            msg = str(e.args[0]) if e.args else "KeyError"
        if isinstance(e, ImportError) and "fastrnn" not in msg:
            msg += " (install the optional dependency, e.g. pip install 'fastrnn[cli]' / '[dask]')"
        msg = _cli_words(msg)
        print(f"fastrnn: error: {type(e).__name__}: {msg}" if not isinstance(e, (ValueError, OSError))
              else f"fastrnn: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
