"""fastrnn.distributed.map_sequences on a dask.distributed LocalCluster (2 worker processes)."""
import os

import numpy as np
import pytest

import fastrnn
from fastrnn.distributed import apply_sequences, map_sequences
from fastrnn.model import Dense, Embedding, KerasRNN, Model

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client():
    # workers are new processes: make sure they import this fastrnn
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, old]))
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_dask_array_time_major_layer(client):
    layer = fastrnn.LSTM(6, 12, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((15, 40, 6)).astype(np.float32)
    want = layer(x, num_threads=1)[0]
    dx = da.from_array(x, chunks=(5, 10, 6))       # time chunks get merged, batch kept
    y = map_sequences(layer, dx)
    assert y.shape == want.shape and y.chunks[1] == (10, 10, 10, 10)
    got = y.compute()
    _close(got, want)
    # the model went to the workers (not only computed here)
    assert len(client.scheduler_info()["workers"]) == 2
    fin = map_sequences(layer, dx, output="final").compute()
    _close(fin, layer(x)[1][0][-1])


def test_dask_array_bidirectional_batch_first(client):
    layer = fastrnn.GRU(4, 8, bidirectional=True, batch_first=True, seed=1)
    x = np.random.default_rng(1).standard_normal((30, 9, 4)).astype(np.float32)
    y = map_sequences(layer, da.from_array(x, chunks=(7, 9, 4)))
    _close(y.compute(), layer(x)[0])
    h = layer(x)[1]
    _close(map_sequences(layer, da.from_array(x, chunks=(7, 9, 4)), output="final").compute(),
           np.concatenate([h[0], h[1]], axis=-1))


def test_dask_array_model_with_embedding(client):
    rng = np.random.default_rng(2)
    m = Model([Embedding(rng.standard_normal((20, 5)).astype(np.float32), mask_zero=True),
               KerasRNN(fastrnn.LSTM(5, 7, batch_first=True, seed=2), return_sequences=True),
               Dense(rng.standard_normal((7, 3)).astype(np.float32), None, activation="relu")])
    ids = rng.integers(0, 20, size=(25, 8))
    y = map_sequences(m, da.from_array(ids, chunks=(6, 8)))
    assert y.shape == (25, 8, 3)
    _close(y.compute(), m.predict(ids))


def test_dask_bag_variable_lengths(client):
    layer = fastrnn.GRU(3, 6, num_layers=2, seed=3)
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((int(n), 3)).astype(np.float32)
            for n in rng.integers(1, 30, size=33)]
    bag = db.from_sequence(seqs, npartitions=4)
    got = map_sequences(layer, bag).compute()
    assert len(got) == len(seqs)
    for s, g in zip(seqs, got):
        _close(g, layer(s)[0])                       # each sequence alone, locally
    fins = map_sequences(layer, bag, output="final").compute()
    for s, f in zip(seqs, fins):
        _close(f, layer(s)[1][-1])


def test_local_paths_and_errors():
    layer = fastrnn.SimpleRNN(3, 4, seed=4)
    x = np.random.default_rng(4).standard_normal((5, 2, 3)).astype(np.float32)
    _close(map_sequences(layer, x), layer(x)[0])
    _close(apply_sequences(layer, [x[:, 0], x[:3, 1]])[1], layer(x[:3, 1])[0])
    with pytest.raises(ValueError):
        map_sequences(layer, x, output="bogus")
    with pytest.raises(TypeError):
        map_sequences(layer, "not data")
    with pytest.raises(TypeError):
        map_sequences(object(), x)


def test_model_tasks_run_their_layers_on_the_tasks_thread_count(monkeypatch):
    """apply_block / apply_sequences give a Keras-style model's layers the task's
    num_threads (default 1), per thread: the layers ran on the process default (all
    cores a task), oversubscribing under a threaded scheduler.  Model calls take
    num_threads too."""
    from concurrent.futures import ThreadPoolExecutor
    from fastrnn import _threads
    from fastrnn.distributed import apply_block
    fastrnn.set_num_threads(2)
    try:
        core = fastrnn.GRU(3, 5, batch_first=True, seed=0)
        model = Model([KerasRNN(core, return_sequences=True, name="g")])
        seen = []
        call = type(core).__call__

        def spy(self, *a, **kw):
            seen.append(_threads.resolve(kw.get("num_threads"), self.num_threads))
            return call(self, *a, **kw)

        monkeypatch.setattr(type(core), "__call__", spy)
        x = np.ones((2, 4, 3), np.float32)
        want = model(x)
        np.testing.assert_array_equal(apply_block(model, x), want)
        apply_sequences(model, [x[0], x[1, :2]])
        assert seen[1:] and set(seen[1:]) == {1}, seen
        seen.clear()
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda n: model(x, num_threads=n), [1, 2, 1, 2]))
        assert sorted(seen) == [1, 1, 2, 2]
        seen.clear()
        model.predict(x)
        assert seen == [2]                  # (none given: the process default)
    finally:
        fastrnn.set_num_threads(None)
