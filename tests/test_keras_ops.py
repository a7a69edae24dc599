"""Keras 3 operations in a functional graph (``x[:, -1]``, ``ops.mean``, ``h * a``,
``ops.softmax``, ...) run as ``fastrnn.model.Op``: a fixed table of operations computed by
NumPy from the config's constants.  Parity with real Keras 3.15 on the fixtures k3_ops_*
(test_keras.py); here each operation against NumPy, the refusals (across the batch,
keyword arguments, other constants), the model's own format."""
import json

import numpy as np
import pytest

import fastrnn
from fastrnn.io import LoadError
from fastrnn.io.keras import model_from_keras_config
from fastrnn.model import Op


def _t(name, shape, node=0):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(shape), "dtype": "float32",
                       "keras_history": [name, node, 0]}}


def _slice(a=None, b=None, c=None):
    return {"class_name": "__slice__", "config": {"start": a, "stop": b, "step": c}}


def _graph(ops, out, shape=(None, 4, 3)):
    """A functional config: an input of ``shape`` (two where ``shape`` is a pair of
    shapes), the operations ``ops`` [(class, config, args, kwargs)], each named after its
    position ("op0", ...), the output the last one's (``out`` its name)."""
    shapes = shape if isinstance(shape[0], tuple) else (shape,)
    layers = [{"class_name": "InputLayer", "name": f"in{k}",
               "config": {"name": f"in{k}", "batch_shape": list(s), "dtype": "float32"},
               "inbound_nodes": []} for k, s in enumerate(shapes)]
    for k, (cls, cfg, args, kw) in enumerate(ops):
        layers.append({"module": "keras.src.ops.numpy", "class_name": cls,
                       "name": f"op{k}", "config": {"name": f"op{k}", **cfg},
                       "inbound_nodes": [{"args": args, "kwargs": kw}]})
    return json.dumps({"class_name": "Functional", "config": {
        "name": "m", "layers": layers,
        "input_layers": [[f"in{k}", 0, 0] for k in range(len(shapes))],
        "output_layers": [[out, 0, 0]]}})


X = _t("in0", (None, 4, 3))
CASES = [
    ("Mean", {"axis": 1, "keepdims": False}, [X], lambda x: x.mean(1)),
    ("Sum", {"axis": [1, 2], "keepdims": True}, [X], lambda x: x.sum((1, 2), keepdims=True)),
    ("Max", {"axis": -1, "keepdims": False, "initial": None}, [X], lambda x: x.max(-1)),
    ("Min", {"axis": 1, "keepdims": False}, [X], lambda x: x.min(1)),
    ("Multiply", {}, [X, 2.5], lambda x: x * np.float32(2.5)),
    ("Subtract", {}, [1.0, X], lambda x: 1 - x),
    ("TrueDivide", {}, [X, 4], lambda x: x / 4),
    ("Maximum", {}, [X, 0.1], lambda x: np.maximum(x, np.float32(0.1))),
    ("Power", {}, [X, 2], lambda x: x ** 2),
    ("Tanh", {}, [X], np.tanh),
    ("Sigmoid", {}, [X], lambda x: 1 / (1 + np.exp(-x))),
    ("Relu", {}, [X], lambda x: np.maximum(x, 0)),
    ("Exp", {}, [X], np.exp),
    ("Abs", {}, [X], np.abs),
    ("Negative", {}, [X], np.negative),
    ("Square", {}, [X], np.square),
    ("Softmax", {"axis": 1}, [X], lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("LogSoftmax", {"axis": -1}, [X], lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
    ("GetItem", {}, [X, [_slice(), -1, _slice()]], lambda x: x[:, -1, :]),
    ("GetItem", {}, [X, [{"class_name": "__ellipsis__"}, _slice(1, None, 2)]],
     lambda x: x[..., 1::2]),
    ("GetItem", {}, [X, [_slice(), None, _slice(None, 2)]], lambda x: x[:, None, :2]),
    ("ExpandDims", {"axis": 2}, [X], lambda x: x[:, :, None]),
    ("Transpose", {"axes": [0, 2, 1]}, [X], lambda x: x.transpose(0, 2, 1)),
    ("Concatenate", {"axis": -1}, [[X, X]], lambda x: np.concatenate([x, x], -1)),
    ("Stack", {"axis": 1}, [[X, X]], lambda x: np.stack([x, x], 1)),
    ("Matmul", {}, [X, X], None),
    ("Reshape", {"newshape": [-1, 12]}, [X], lambda x: x.reshape(-1, 12)),
    ("Clip", {"x_min": -0.5, "x_max": 0.25}, [X], lambda x: np.clip(x, -0.5, 0.25)),
    ("Cast", {"dtype": "float32"}, [X], lambda x: x),
]


@pytest.mark.parametrize("cls, cfg, args, want", CASES,
                         ids=[f"{c[0]}{k}" for k, c in enumerate(CASES)])
def test_each_operation_as_numpy(cls, cfg, args, want, tmp_path):
    if cls == "Matmul":       # ((B, 4, 3) @ (B, 3, 4))
        arch = _graph([("Transpose", {"axes": [0, 2, 1]}, [X], {}),
                       (cls, cfg, [X, _t("op0", (None, 3, 4))], {})], "op1")
        want = lambda x: x @ x.transpose(0, 2, 1)     # noqa: E731
    else:
        arch = _graph([(cls, cfg, args, {})], "op0")
    m = model_from_keras_config(arch, {})
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    y = m.predict(x)
    np.testing.assert_allclose(y, want(x), rtol=2e-6, atol=2e-6)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(m.predict(x, batch_size=1), y)
    p = tmp_path / "m.fastrnn"
    m.save(p)
    np.testing.assert_array_equal(fastrnn.load(str(p)).predict(x), y)


V = _t("in1", (None, 3))


@pytest.mark.parametrize("cls, cfg, args", [
    ("Mean", {"axis": 0, "keepdims": False}, [X]),
    ("Sum", {"axis": None, "keepdims": False}, [X]),
    ("GetItem", {}, [X, 0]),
    ("GetItem", {}, [X, [_slice(None, None, -1), _slice()]]),
    ("GetItem", {}, [X, [_slice(None, 3), _slice(1)]]),     # (the same at a batch of 3)
    ("Transpose", {"axes": [1, 0, 2]}, [X]),
    ("Reshape", {"newshape": [-1, 3]}, [X]),      # ((B, 4, 3) as (4B, 3))
    ("Concatenate", {"axis": 0}, [[X, X]]),
    ("Softmax", {"axis": 0}, [X]),
    ("LogSoftmax", {"axis": [0]}, [X]),
    # ((B, 3) against (B, 1, 3) broadcasts to (B, B, 3); (B, 3) @ (B, 3, 4) to (B, B, 4))
    ("Add", {}, [V, _t("in0", (None, 1, 3))]),
    ("Matmul", {}, [V, _t("in0", (None, 3, 4))]),
])
def test_across_the_batch_refused(cls, cfg, args):
    """An operation that mixes samples (found by running the first sample alone) is
    refused: fastrnn runs a model's samples apart (predict(batch_size=...), the folded
    steps of a TimeDistributed of a model)."""
    shape = {"Add": ((None, 1, 3), (None, 3)), "Matmul": ((None, 3, 4), (None, 3))}.get(
        cls, (None, 4, 3))
    with pytest.raises(LoadError, match=rf"operation 'op0' \({cls}\) acts across the batch"):
        model_from_keras_config(_graph([(cls, cfg, args, {})], "op0", shape), {})


def test_load_time_check_bounded_and_quiet(recwarn):
    """The load-time run of an operation: no warning from a log of its random inputs,
    a bound on its inputs' size (a LoadError, not a MemoryError)."""
    model_from_keras_config(_graph([("Log", {}, [X], {})], "op0"), {})
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    big = _t("in0", (None, 10 ** 6, 10 ** 6))
    with pytest.raises(LoadError, match="its inputs are too large to check at load"):
        model_from_keras_config(_graph([("Tanh", {}, [big], {})], "op0",
                                       (None, 10 ** 6, 10 ** 6)), {})


def test_call_time_errors_name_the_operation():
    m = model_from_keras_config(_graph([("GetItem", {}, [X, [_slice(), 2]], {})], "op0"), {})
    with pytest.raises(ValueError, match=r"op0: GetItem on inputs of shapes \[\(2, 2, 3\)\]: "
                                         r"index 2 is out of bounds"):
        m.predict(np.ones((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"op0: GetItem's input 0 must have 3 axes, got shape "
                                         r"\(2, 3\)"):
        m.layers[0].call([np.ones((2, 3))])
    with pytest.raises(ValueError, match=r"op0: GetItem reads numbers, got <U1"):
        m.layers[0].call([np.full((2, 2, 3), "a")])


def test_integers_to_floats_give_float32():
    op = Op("Mean", [{"input": 0}], {"axis": 1})
    assert op.call([np.arange(6).reshape(2, 3)])[0].dtype == np.float32
    assert Op("Add", [{"input": 0}, 1.5]).call([np.arange(3)])[0].dtype == np.float32
    assert Op("Add", [{"input": 0}, 1]).call([np.arange(3)])[0].dtype.kind == "i"


def test_softmax_over_several_axes():
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    y = Op("Softmax", [{"input": 0}], {"axis": [1, 2]}).call([x])[0]
    e = np.exp(x - x.max((1, 2), keepdims=True))
    np.testing.assert_allclose(y, e / e.sum((1, 2), keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("op, args, attrs, match", [
    ("Tanh", [{"input": 0}, {"input": 1}], {}, "Tanh does not take the arguments"),
    ("Multiply", [{"input": 0}, [1.0, 2.0]], {}, "Multiply does not take the arguments"),
    ("Multiply", [2.0, 3.0], {}, "Multiply does not take the arguments"),
    ("GetItem", [{"input": 0}, [[0, 1]]], {}, "GetItem does not take the arguments"),
    ("Concatenate", [{"input": 0}], {"axis": 1}, "Concatenate does not take the arguments"),
    ("Mean", [{"input": 0}], {"keepdims": "no"}, "keepdims='no' is not supported"),
    ("Squeeze", [{"input": 0}], {"axis": None}, "axis=None is not supported"),
    ("ExpandDims", [{"input": 0}], {"axis": [1, 2]}, r"axis=\[1, 2\] is not supported"),
    ("Cast", [{"input": 0}], {"dtype": "string"}, r"dtype='string' is not supported"),
    ("Clip", [{"input": 0}], {"x_min": "0", "x_max": 1}, r"x_min='0' is not supported"),
])
def test_op_arguments_checked(op, args, attrs, match):
    with pytest.raises(ValueError, match=match):
        Op(op, args, attrs)


@pytest.mark.parametrize("cls, cfg, args, kw, match", [
    ("Mean", {"axis": 1, "where": [1]}, [X], {}, r"Mean takes no \['where'\]"),
    ("Mean", {"axis": 1}, [X], {"dtype": "float64"}, r"called with keyword arguments"),
    ("Multiply", {}, [X, "2"], {}, r"called with '2': not supported"),
    ("Multiply", {}, [X, True], {}, r"called with True: not supported"),
    ("GetItem", {}, [X, [_slice("a")]], {}, r"called with .*__slice__.*: not supported"),
    ("GetItem", {}, [X, [{"class_name": "__slice__"}]], {}, r"called with .*: not supported"),
    ("Squeeze", {"axis": 1}, [X], {}, r"does not run on its inputs' shapes"),
])
def test_other_arguments_refused(cls, cfg, args, kw, match):
    with pytest.raises(LoadError, match=match):
        model_from_keras_config(_graph([(cls, cfg, args, kw)], "op0"), {})


def test_op_layer():
    op = Op("Add", [{"input": 0}, {"input": 1}], name="a")
    assert op.n_tensors == 2 and repr(op) == "Op(name='a', Add)"
    y, mask = op.call([np.ones(3, np.float32), np.ones(3, np.float32)], [np.ones(3, bool), None])
    assert y.tolist() == [2, 2, 2] and mask is None
    with pytest.raises(ValueError, match="a: Add reads 2 tensors, got 1"):
        op.call([np.ones(3)])
    with pytest.raises(ValueError, match="unknown operation 'Einsum'"):
        Op("Einsum", [])
    with pytest.raises(ValueError, match=r"Tanh takes no \['axis'\]"):
        Op("Tanh", [{"input": 0}], {"axis": 1})


def test_stream_refuses_an_operation():
    from fastrnn.io.keras import load_keras
    from test_keras import model_path
    m = load_keras(model_path("k3_ops_masked_h5"))
    with pytest.raises(ValueError, match="cannot stream layer 'max' of type Op"):
        fastrnn.Stream(m)


def _k2_graph(ops, out, shape=(None, 6, 4)):
    """A tf.keras 2 functional config: an input, TFOpLambda / SlicingOpLambda layers
    ``ops`` [(function, inbound node)] named "op0", ...; the output ``out``'s."""
    layers = [{"class_name": "InputLayer", "name": "in0", "inbound_nodes": [],
               "config": {"name": "in0", "batch_input_shape": list(shape),
                          "dtype": "float32"}}]
    for k, (f, node) in enumerate(ops):
        cls = "SlicingOpLambda" if f == "__operators__.getitem" else "TFOpLambda"
        layers.append({"class_name": cls, "name": f"op{k}", "inbound_nodes": [node],
                       "config": {"name": f"op{k}", "trainable": True, "dtype": "float32",
                                  "function": f}})
    return json.dumps({"class_name": "Functional", "config": {
        "name": "m", "layers": layers, "input_layers": [["in0", 0, 0]],
        "output_layers": [[out, 0, 0]]}})


K2_CASES = [
    # (2.0 - x: the constant first, the tensor by keyword)
    ([("math.subtract", ["_CONSTANT_VALUE", -1, 2.0, {"y": ["in0", 0, 0], "name": None}])],
     lambda x: 2 - x),
    ([("concat", [["in0", 0, 0, {"axis": -1}], ["in0", 0, 0, {"axis": -1}]]),
      ("math.reduce_mean", ["op0", 0, 0, {"axis": [1, 2], "keepdims": True}])],
     lambda x: np.concatenate([x, x], -1).mean((1, 2), keepdims=True)),
    ([("__operators__.getitem", ["in0", 0, 0, {"slice_spec": [
        {"start": None, "stop": None, "step": None}, None,
        {"start": 1, "stop": 3, "step": None}]}])], lambda x: x[:, None, 1:3]),
    ([("compat.v1.transpose", ["in0", 0, 0, {"perm": [0, 2, 1], "name": "transpose",
                                              "conjugate": False}]),
      ("linalg.matmul", ["in0", 0, 0, {"b": ["op0", 0, 0]}]),
      ("nn.softmax", ["op1", 0, 0, {"axis": -1}])],
     lambda x: (lambda s: np.exp(s) / np.exp(s).sum(-1, keepdims=True))(
         x @ x.transpose(0, 2, 1))),
    ([("reshape", ["in0", 0, 0, {"shape": [-1, 24]}]),
      ("clip_by_value", ["op0", 0, 0, {"clip_value_min": -0.5, "clip_value_max": 0.5}]),
      ("cast", ["op1", 0, 0, {"dtype": "float32"}])],
     lambda x: np.clip(x.reshape(-1, 24), -0.5, 0.5)),
    ([("math.tanh", ["in0", 0, 0, {"name": None}]),
      ("expand_dims", ["op0", 0, 0, {"axis": 2}]),
      ("compat.v1.squeeze", ["op1", 0, 0, {"axis": 2, "name": None}])], np.tanh),
]


@pytest.mark.parametrize("ops, want", K2_CASES, ids=[str(k) for k in range(len(K2_CASES))])
def test_tf_keras2_operations(ops, want):
    m = model_from_keras_config(_k2_graph(ops, f"op{len(ops) - 1}"), {}, keras_version="2")
    assert all(isinstance(l, Op) for l in m.layers)
    x = np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), want(x), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("f, kw, match", [
    ("linalg.matmul", {"b": ["in0", 0, 0], "transpose_a": True}, r"transpose_a=True"),
    ("math.reduce_mean", {"axis": 1, "where": 3}, r"where=3"),
    ("math.multiply", {}, r"has no y= argument"),
    ("math.reduce_sum", {"axis": 0}, r"acts across the batch"),
])
def test_tf_keras2_operation_arguments_refused(f, kw, match):
    with pytest.raises(LoadError, match=match):
        model_from_keras_config(_k2_graph([(f, ["in0", 0, 0, kw])], "op0"), {},
                                keras_version="2")


def test_sizes_one_input_knows_fill_the_others():
    """An input of unknown steps beside one of known steps (a residual ``h + x`` in a
    tf.keras 2 file, which records no shapes; an LSTM's output against the model's
    Input): the known sizes, aligned from the last axis (Matmul: its contracted pair)."""
    a, b = _t("in0", (None, None, 4)), _t("in1", (None, 6, 4))
    shapes = ((None, None, 4), (None, 6, 4))
    m = model_from_keras_config(_graph([("Add", {}, [a, b], {})], "op0", shapes), {})
    x0, x1 = np.ones((2, 6, 4), np.float32), np.full((2, 6, 4), 2.0, np.float32)
    np.testing.assert_array_equal(m.predict([x0, x1]), x0 + x1)
    assert m.layers[0].shape == [None, 6, 4]
    t = _t("in0", (None, 4, None))
    mm = model_from_keras_config(_graph([("Matmul", {}, [t, b], {})], "op0",
                                        ((None, 4, None), (None, 6, 4))), {})
    assert mm.layers[0].shape == [None, 4, 4]


def _chain(layers):
    from fastrnn.model import INPUT, Model
    return Model(layers, inputs=[[(INPUT, 0)]] + [[(i, 0)] for i in range(len(layers) - 1)])


def test_stream_runs_operations_on_each_steps_features():
    """A stream runs an operation that acts on each step's features alone (elementwise,
    a softmax / reduction / slice over the features; after a recurrent layer returning
    its last step, over each row's): the whole call's numbers; one over the steps is
    refused."""
    from fastrnn.model import KerasRNN
    full = {"slice": [None, None, None]}
    rnn = KerasRNN(fastrnn.LSTM(4, 6, batch_first=True, seed=1), return_sequences=True)
    m = _chain([rnn, Op("Tanh", [{"input": 0}], ranks=[3]),
                Op("Multiply", [{"input": 0}, 0.5], ranks=[3]),
                Op("Softmax", [{"input": 0}], {"axis": -1}, ranks=[3]),
                Op("GetItem", [{"input": 0}, [full, full, {"slice": [1, None, None]}]],
                   ranks=[3]),
                Op("Sum", [{"input": 0}], {"axis": 2, "keepdims": True}, ranks=[3])])
    x = np.random.default_rng(0).standard_normal((2, 7, 4)).astype(np.float32)
    s = fastrnn.Stream(m, batch_size=2)
    got = np.concatenate([s.feed(x[:, t:t + 3]) for t in range(0, 7, 3)], axis=1)
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-6, atol=1e-7)
    last = KerasRNN(fastrnn.LSTM(4, 6, batch_first=True, seed=1), return_sequences=False)
    m2 = _chain([last, Op("Softmax", [{"input": 0}], {"axis": 1}, ranks=[2]),
                 Op("Log", [{"input": 0}], ranks=[2])])
    s2 = fastrnn.Stream(m2, batch_size=2)
    steps = np.stack([s2.step(x[:, t]) for t in range(7)], axis=1)
    np.testing.assert_allclose(steps[:, -1], m2.predict(x), rtol=1e-6, atol=1e-7)
    for bad in (Op("Mean", [{"input": 0}], {"axis": 1}, ranks=[3], name="mean"),
                Op("GetItem", [{"input": 0}, [full, -1]], ranks=[3], name="mean")):
        with pytest.raises(ValueError, match="cannot stream layer 'mean' of type Op"):
            fastrnn.Stream(_chain([rnn, bad]))
