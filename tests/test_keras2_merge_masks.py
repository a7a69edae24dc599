"""tf.keras 2 files: merge layers join their inputs' masks by tf.keras 2's rules, not Keras
3's.  tf.keras 2 (tf_keras/src/layers/merging/base_merge.py Merge.compute_mask,
concatenate.py Concatenate.compute_mask): all() of the masks present (an unmasked input of
a Concatenate counts as all True; an elementwise merge has a mask when any input has one),
and its Multiply / Maximum / Minimum ignore masks.  Keras 3: any() (an elementwise merge:
no mask when an input has none) and Multiply / Maximum / Minimum replace masked entries.
The fixtures k2_merge_* (tests/fixtures/make_keras2.py) merge sequences of different masks
(two Masking layers on one input) into masked recurrent layers and pooling."""
import os

import numpy as np
import pytest

pytest.importorskip("h5py")

import fastrnn  # noqa: E402
from fastrnn import model as M  # noqa: E402
from fastrnn.io import keras as K  # noqa: E402
from fastrnn.io.keras import load_keras  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras")
MERGES = ["k2_merge_concat_feature", "k2_merge_concat_time", "k2_merge_add_sub_avg",
          "k2_merge_mul_max_min", "k2_merge_chained"]
TOL = 1e-5


def _ref(name):
    with np.load(os.path.join(FIX, name + ".npz")) as z:
        return z["x"], [z[f"y{i}"] for i in range(sum(f.startswith("y") for f in z.files))]


def _errors(model, name):
    x, ys = _ref(name)
    out = model.predict(x)
    out = out if isinstance(out, list) else [out]
    assert len(out) == len(ys)
    return [float(np.max(np.abs(a - y))) for a, y in zip(out, ys)]


def _load(name):
    return load_keras(os.path.join(FIX, name + ".h5"))


@pytest.mark.parametrize("name", MERGES)
def test_k2_merge_fixture_matches_tf_keras2(name):
    assert max(_errors(_load(name), name)) <= TOL


@pytest.mark.parametrize("name", MERGES)
def test_k2_merge_fixture_needs_tf_keras2_rules(monkeypatch, name):
    # with Keras 3's rules (every merge taken as giving the same in both) the outputs
    # are far off: each fixture exercises the difference
    monkeypatch.setattr(K, "_k2_merge_same", lambda cls, masks: True)
    errs = _errors(_load(name), name)
    if name == "k2_merge_concat_time":
        # (on the steps both frameworks join the masks one after the other)
        assert max(errs) <= TOL
    else:
        assert max(errs) > 1e-2, errs


def _kinds(model):
    return [(type(l).__name__, l.masks) for l in model.layers if isinstance(l, M._Merge)]


def test_layer_kinds():
    kinds = {n: _kinds(_load(n)) for n in MERGES}
    assert kinds["k2_merge_concat_feature"] == [("Concatenate", "keras2")] * 3
    assert kinds["k2_merge_add_sub_avg"] == [("Add", "keras2"), ("Subtract", "keras2"),
                                             ("Average", "keras2")]
    assert sorted(kinds["k2_merge_mul_max_min"]) == sorted(
        [("Multiply", "keras2"), ("Maximum", "keras2"), ("Minimum", "keras2"),
         ("Multiply", "keras2"), ("Maximum", "keras2")])
    # (merges of merges: each reads a mask only a tf.keras 2 merge gives)
    assert kinds["k2_merge_chained"] == [(cls, "keras2") for cls in (
        "Add", "Multiply", "Maximum", "Subtract", "Concatenate", "Average", "Concatenate",
        "Subtract", "Add")]
    # one mask on every input (an Embedding's into both branches): Keras 3's rules
    assert _kinds(_load("k2_nested_seq_in_fn")) == [("Concatenate", "keras3")]


def test_keras3_files_keep_keras3_rules():
    for name, ext in (("k3_bi_mul_simplernn", ".keras"),
                      ("k3_dag_bilstm_pool_concat", ".keras"),
                      ("k3_attn_causal_concat_h5", ".h5")):
        model = load_keras(os.path.join(FIX, name + ext))
        assert all(masks == "keras3" for _, masks in _kinds(model))
        assert max(_errors(model, name)) <= TOL


# the experiment of the report (notes): a keeps steps 0, 1; b keeps steps 0, 2
A = np.array([[[1., 2.], [3., 4.], [0., 0.], [0., 0.]]], "float32")
B = np.array([[[5., 6.], [0., 0.], [7., 8.], [0., 0.]]], "float32")
MA, MB = A.any(-1), B.any(-1)


@pytest.mark.parametrize("cls,vals", [
    ("Add", [[6, 8], [3, 4], [7, 8], [0, 0]]),
    ("Subtract", [[-4, -4], [3, 4], [-7, -8], [0, 0]]),
    ("Multiply", [[5, 12], [0, 0], [0, 0], [0, 0]]),
    ("Average", [[3, 4], [1.5, 2], [3.5, 4], [0, 0]]),
    ("Maximum", [[5, 6], [3, 4], [7, 8], [0, 0]]),
    ("Minimum", [[1, 2], [0, 0], [0, 0], [0, 0]])])
def test_elementwise_as_tf_keras2(cls, vals):
    # what tf-keras 2.21 computes (values and mask) for Masking(0.0) of A and of B, or
    # of A with B unmasked
    layer = getattr(M, cls)(name="m", masks="keras2")
    out, mask = layer.call([A, B], [MA, MB])
    np.testing.assert_array_equal(out[0], np.array(vals, "float32"))
    assert mask.tolist() == [[True, False, False, False]]
    out, mask = layer.call([A, B], [MA, None])
    np.testing.assert_array_equal(out[0], np.array(vals, "float32"))
    assert mask.tolist() == [[True, True, False, False]]
    assert layer.call([A, B], [None, None])[1] is None


def test_concatenate_as_tf_keras2():
    layer = M.Concatenate(-1, name="c", masks="keras2")
    out, mask = layer.call([A, B], [MA, MB])
    np.testing.assert_array_equal(out, np.concatenate([A, B], -1))
    assert mask.tolist() == [[True, False, False, False]]
    assert layer.call([A, B], [MA, None])[1].tolist() == [[True, True, False, False]]
    assert layer.call([A, B], [None, MB])[1].tolist() == [[True, False, True, False]]
    assert layer.call([A, B], [None, None])[1] is None
    t = M.Concatenate(1, name="t", masks="keras2")
    assert t.call([A, B], [MA, MB])[1].tolist() == [
        [True, True, False, False, True, False, True, False]]
    # (tf.keras 2 cannot join a masked and an unmasked input's masks on the steps)
    with pytest.raises(ValueError, match="tf.keras 2 cannot join masks"):
        t.call([A, B], [MA, None])


def test_saved_model_reloads_with_tf_keras2_masks(tmp_path):
    # the masks option is saved: the model reads back with tf.keras 2's masks
    name = "k2_merge_add_sub_avg"
    model = _load(name)
    model.save(tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    assert _kinds(again) == [("Add", "keras2"), ("Subtract", "keras2"), ("Average", "keras2")]
    assert max(_errors(again, name)) <= TOL


def test_masks_option_checked():
    with pytest.raises(ValueError, match="masks must be one of"):
        M.Add(name="a", masks="keras1")
    assert "masks" not in M.Add(name="a").get_config()
    assert M.Concatenate(1, name="c", masks="keras2").get_config()["masks"] == "keras2"
