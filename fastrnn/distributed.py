"""Run a fastrnn layer or model over many sequences with Dask (``pip install
"dask[array,distributed]"``; Dask is imported only when these functions are called).

fastrnn layers and models pickle with their weights and no compiled state, so a model is
sent once to each worker (as one Dask key, not once per task) and run there on its
chunk of sequences::

    import dask.array as da
    from dask.distributed import Client, LocalCluster
    import fastrnn
    from fastrnn.distributed import map_sequences

    client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
    layer = fastrnn.load("model.pt")                       # (T, B, I) layer
    x = da.from_zarr("inputs.zarr")                        # (T, N, I), chunked along N
    y = map_sequences(layer, x, num_threads=1)             # lazy (T, N, H)
    y.to_zarr("outputs.zarr")

    import dask.bag as db
    bag = db.from_sequence(list_of_arrays, npartitions=32) # sequences of any length (T_i, I)
    outs = map_sequences(layer, bag).compute()             # list of (T_i, H) arrays

Thread count: each task uses ``num_threads`` threads (default 1, right for one task per
core: ``threads_per_worker * n_workers`` equal to the cores).  Give more with fewer tasks
per machine.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["map_sequences", "apply_block", "apply_sequences"]

_OUTPUTS = ("sequences", "final")


def _is_core(model) -> bool:
    from .layers import RNNBase
    return isinstance(model, RNNBase)


def _batch_axis(model, batch_first: bool | None) -> int:
    if not _is_core(model):
        return 0
    bf = model.batch_first if batch_first is None else bool(batch_first)
    return 0 if bf else 1


def apply_block(model, block: np.ndarray, *, batch_axis: int = 0, output: str = "sequences",
                num_threads: int | None = 1) -> np.ndarray:
    """Run ``model`` on one block of padded sequences (what each Dask task does).

    ``block``: a core layer's input (``(T, B, I)``; ``(B, T, I)`` when ``batch_axis=0``) or
    a model's (``(B, T, ...)``).  ``output="sequences"`` returns the output sequence in the
    same layout; ``"final"`` returns ``(B, D*H_out)``, the last layer's final hidden
    state (both directions concatenated) for a core layer, the last step's output for a
    model.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    block = np.asarray(block)
    if _is_core(model):
        x = block if (batch_axis == 1) != model.batch_first else np.swapaxes(block, 0, 1)
        out, state = model(x, num_threads=num_threads)
        if output == "final":
            h = state[0] if isinstance(state, tuple) else state
            D = model.num_directions
            return np.ascontiguousarray(np.concatenate(list(h[-D:]), axis=-1))
        if (batch_axis == 1) == model.batch_first:
            out = np.swapaxes(out, 0, 1)
        return np.ascontiguousarray(out)
    if batch_axis != 0:
        raise ValueError("a Model's input is batch first (batch_axis=0)")
    y = model(block, num_threads=num_threads)
    if isinstance(y, list):
        raise ValueError("map_sequences supports models with one output")
    if output == "final" and y.ndim == 3:
        y = y[:, -1]
    return np.ascontiguousarray(y)


def apply_sequences(model, seqs, *, output: str = "sequences",
                    num_threads: int | None = 1) -> list[np.ndarray]:
    """Run ``model`` on a list of single sequences of any lengths (``(T_i, I)``, or
    ``(T_i,)`` ids for a model starting with an Embedding); returns one array per
    sequence: ``(T_i, H)`` (``"sequences"``) or ``(H,)`` (``"final"``).  A core layer
    runs them as one padded batch with per-sequence ``lengths``."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    seqs = [np.asarray(s) for s in seqs]
    if not seqs:
        return []
    if _is_core(model):
        lens = np.array([s.shape[0] for s in seqs], np.intp)
        I = model.input_size
        for s in seqs:
            if s.ndim != 2 or s.shape[1] != I:
                raise ValueError(f"each sequence must be (T_i, {I}), got {s.shape}")
        x = np.zeros((int(lens.max()), len(seqs), I), model.dtype)
        for b, s in enumerate(seqs):
            x[:s.shape[0], b] = s
        if model.batch_first:
            x = np.swapaxes(x, 0, 1)
        out, state = model(x, lengths=lens, num_threads=num_threads)
        if output == "final":
            h = state[0] if isinstance(state, tuple) else state
            D = model.num_directions
            fin = np.concatenate(list(h[-D:]), axis=-1)
            return [np.ascontiguousarray(fin[b]) for b in range(len(seqs))]
        if model.batch_first:
            out = np.swapaxes(out, 0, 1)
        return [np.ascontiguousarray(out[:n, b]) for b, n in enumerate(lens)]
    res = []
    for s in seqs:
        y = apply_block(model, s[None], output=output, num_threads=num_threads)
        res.append(y[0])
    return res


def _out_template(model, sample: np.ndarray, batch_axis: int, output: str, num_threads):
    """Output shape rule: run 1-sequence samples of 1 and 2 steps and see which axes grow."""
    time_axis = 1 - batch_axis
    one = np.take(sample, [0], axis=batch_axis)
    y1 = apply_block(model, np.take(one, [0], axis=time_axis), batch_axis=batch_axis,
                     output=output, num_threads=num_threads)
    y2 = apply_block(model, np.take(one, [0, 0], axis=time_axis), batch_axis=batch_axis,
                     output=output, num_threads=num_threads)
    grows = [a != b for a, b in zip(y1.shape, y2.shape)]
    return y1, grows


def map_sequences(model: Any, data, *, batch_first: bool | None = None,
                  output: str = "sequences", num_threads: int | None = 1):
    """Map ``model`` (a fastrnn layer or :class:`fastrnn.model.Model`) over many sequences.

    * ``data`` a ``dask.array.Array`` of padded sequences, chunked along the batch axis
      (``(T, N, I)`` for a time-major layer, ``(N, T, ...)`` for a ``batch_first`` layer,
      ``batch_first=True``, or a Model): returns a lazy ``dask.array`` of outputs with the
      same chunks along the batch axis (other axes are merged into one chunk first).
    * ``data`` a ``dask.bag.Bag`` of single sequences ``(T_i, I)`` of any lengths: returns
      a bag of outputs, one per sequence, in order (each partition runs as one batch).
    * ``data`` a numpy array or a list of sequences: runs locally (same results; handy to
      check a pipeline before scaling it out).

    ``output``: ``"sequences"`` (every step's output) or ``"final"`` (one vector per
    sequence, see :func:`apply_block`).  The model is put in the graph once and shipped
    to each worker once.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    if not _is_core(model):
        from .model import Model
        if not isinstance(model, Model):
            raise TypeError(f"map_sequences needs a fastrnn layer or Model, got {type(model).__name__}")
    ax = _batch_axis(model, batch_first)
    if isinstance(data, np.ndarray):
        return apply_block(model, data, batch_axis=ax, output=output, num_threads=num_threads)
    if isinstance(data, (list, tuple)):
        return apply_sequences(model, data, output=output, num_threads=num_threads)
    kind = type(data).__module__.split(".")[:2]
    if kind[:1] != ["dask"]:
        raise TypeError("data must be a dask array, a dask bag, a numpy array or a list of "
                        f"sequences, got {type(data).__name__}")
    import dask

    mdl = dask.delayed(model, pure=True, traverse=False)
    if "bag" in kind:
        fn = functools.partial(_bag_partition, output=output, num_threads=num_threads)
        return data.map_partitions(fn, mdl)
    import dask.array as da

    if data.ndim < 2:
        raise ValueError(f"a dask array of sequences needs a batch and a time axis, got shape {data.shape}")
    if any(np.isnan(c) for c in data.shape):
        raise ValueError("the dask array must have known chunk sizes (call compute_chunk_sizes())")
    rechunk = {i: -1 for i in range(data.ndim) if i != ax}
    data = data.rechunk(rechunk)
    sample = np.zeros((1,) * data.ndim, data.dtype)
    sample = np.broadcast_to(sample, tuple(1 if i in (0, 1) else s
                                           for i, s in enumerate(data.shape))).copy()
    if data.dtype.kind in "iu":
        sample[...] = 1
    y1, grows = _out_template(model, sample, ax, output, num_threads)
    time_axis = 1 - ax
    out_ax = ax if (output == "sequences" and _is_core(model)) else 0
    chunks = []
    for i, n in enumerate(y1.shape):
        if i == out_ax:
            chunks.append(data.chunks[ax])
        elif grows[i]:
            chunks.append((data.shape[time_axis],))
        else:
            chunks.append((n,))
    extra = {}
    if y1.ndim < data.ndim:
        extra["drop_axis"] = [time_axis] if data.ndim - y1.ndim == 1 else \
            [i for i in range(data.ndim) if i != ax][:data.ndim - y1.ndim]
    elif y1.ndim > data.ndim:
        extra["new_axis"] = list(range(data.ndim, y1.ndim))
    fn = functools.partial(_array_block, batch_axis=ax, output=output, num_threads=num_threads)
    return da.map_blocks(fn, data, mdl, dtype=y1.dtype, chunks=tuple(chunks),
                         meta=np.empty((0,) * y1.ndim, y1.dtype),
                         name="fastrnn-" + dask.base.tokenize(mdl, data, ax, output), **extra)


def _array_block(block, model, **kw):
    return apply_block(model, block, **kw)


def _bag_partition(part, model, **kw):
    return apply_sequences(model, list(part), **kw)
