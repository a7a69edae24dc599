"""ONNX ``If`` nodes: cases from an audit of commit 108dc20 (fastrnn/io/_onnx_if.py;
494 models, 18,216 calls against ONNX Runtime and torch, no wrong answer).

The first three fail on that commit: a constant condition's other branch is never
checked (an invalid one loads silently, ONNX Runtime refuses the model), an If of no
outputs loads (the schema wants at least one), and Split's sizes are not checked (met on
TorchScript cell loops: ``torch.split(x, 1, 1)`` exported at one T).  The rest guard what
the audit found right: kept programs never reuse a value chosen by a data-dependent
condition across calls of the same shapes (branches of other shapes and types, an If
feeding a recurrent node's X, initial states and sequence_lens), compared live with ONNX
Runtime over calls that alternate the branch."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # in the test extra; never skipped there
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from fastrnn.io import LoadError  # noqa: E402
from fastrnn.io.onnx import load_onnx  # noqa: E402

from test_onnx_if import _const, _graph, _if, _model, _ort, _same  # noqa: E402

F32, I64, I32, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL


def _alternating(data, feeds_list, tol=1e-5):
    """fastrnn against ONNX Runtime over feeds of the same shapes taking either branch,
    in turn, twice (the later calls run the first's kept program), then a pickled copy."""
    refs = [_ort(data, dict(f)) for f in feeds_list]
    m = load_onnx(data)
    for _ in range(2):
        for f, r in zip(feeds_list, refs):
            _same(m.run(dict(f)), r, tol)
    m2 = pickle.loads(pickle.dumps(m))
    for f, r in zip(feeds_list, refs):
        _same(m2.run(dict(f)), r, tol)


N = helper.make_node
_THEN = _graph([N("Add", ["x", "one"], ["t"])], ["t"])


# ------------------------------------------------------------- fail on commit 108dc20
@pytest.mark.parametrize("else_, match", [
    (_graph([N("Add", ["nope", "one"], ["e"])], ["e"]), "else_branch node 0 Add.*'nope'"),
    (_graph([N("SplitToSequence", ["x"], ["e"], axis=0)], ["e"]), "sequence"),
])
def test_constant_condition_still_checks_the_other_branch(else_, match):
    """ONNX Runtime refuses such a model at load (it checks both branches); fastrnn
    loaded it and ran the chosen branch."""
    data = _model([_if("cc", ["y"], _THEN, else_, name="constif")], [("x", F32, [2, 3])],
                  ["y"], [_const("one", 1.0), _const("cc", True, np.bool_)])
    with pytest.raises(Exception):
        _ort(data, {"x": np.ones((2, 3), np.float32)})
    with pytest.raises(LoadError, match=f"If 'constif'.*{match}"):
        load_onnx(data)


def test_constant_condition_other_branch_is_not_kept():
    data = _model([_if("cc", ["y"], _THEN, _graph([N("Neg", ["x"], ["e"])], ["e"]))],
                  [("x", F32, [2, 3])], ["y"], [_const("one", 1.0), _const("cc", False, np.bool_)])
    m = load_onnx(data)
    ifn = [s for s in m._steps if s[1][1] == "If"][0][1][2]["_if"]
    assert ifn.then_branch is None and ifn.else_branch is not None
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(m.run({"x": x})["y"], -x)


def test_if_of_no_outputs_is_a_load_error():
    data = _model([helper.make_node("If", ["c"], [], name="zero", then_branch=_graph([], []),
                                    else_branch=_graph([], [])),
                   N("Identity", ["x"], ["y"])], [("x", F32, [2]), ("c", BOOL, [])], ["y"])
    with pytest.raises(Exception):
        _ort(data, {"x": np.ones(2, np.float32), "c": np.array(True)})
    with pytest.raises(LoadError, match="If 'zero'.*no outputs"):
        load_onnx(data)


@pytest.mark.parametrize("T", [1, 4, 9])
def test_split_sizes_not_covering_the_axis_are_an_error(T):
    """torch.split(x, 1, 1) exported at T=5 is Split([1, 1, 1, 1, 1]): at another T ONNX
    Runtime refuses the sizes; fastrnn gave empty / longer parts."""
    data = _model([N("Split", ["x", "sp"], ["a", "b", "d"], axis=1)], [("x", F32, [2, "T"])],
                  ["a", "b", "d"], [_const("sp", [1, 1, 3], np.int64)], opset=13)
    x = np.zeros((2, T), np.float32)
    with pytest.raises(Exception):
        _ort(data, {"x": x})
    with pytest.raises(ValueError, match="node 0 Split.*sizes \\[1, 1, 3\\]"):
        load_onnx(data).run({"x": x})
    x5 = np.arange(10, dtype=np.float32).reshape(2, 5)
    _same(load_onnx(data).run({"x": x5}), _ort(data, {"x": x5}))


# ------------------------------------------------------------------------------ guards
def test_value_condition_branches_of_other_shapes_across_kept_programs():
    then = _graph([N("ReduceSum", ["x"], ["t"], keepdims=0)], [("t", F32, None)])
    else_ = _graph([N("Identity", ["x"], ["t2"])], [("t2", F32, None)])
    nodes = [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["cond"]),
             _if("cond", ["y"], then, else_), N("Shape", ["y"], ["sh"]), N("Size", ["y"], ["sz"]),
             N("Add", ["y", "one"], ["z"])]
    data = _model(nodes, [("x", F32, ["B", 3])],
                  [("sh", I64, None), ("sz", I64, None), ("z", F32, None)],
                  [_const("zero", 0.0), _const("one", 1.0)])
    xp = np.abs(np.random.default_rng(0).standard_normal((2, 3))).astype(np.float32) + .1
    _alternating(data, [{"x": xp}, {"x": -xp}])


def test_value_condition_feeding_a_recurrent_node():
    """An If of a value choosing the LSTM's sequence_lens and initial states (zeros or
    not), another choosing its X's length: calls of one shape taking either branch."""
    rng = np.random.default_rng(1)
    Hh = 4
    inits = [_const("W", rng.standard_normal((1, 4 * Hh, 3)) * .5),
             _const("R", rng.standard_normal((1, 4 * Hh, Hh)) * .5),
             _const("Bb", rng.standard_normal((1, 8 * Hh)) * .1),
             _const("zero", 0.0), _const("half", 0.5), _const("onei", 1, np.int32),
             _const("s1", [1], np.int64), _const("s2", [2], np.int64),
             _const("one64", [1], np.int64), _const("h64", [Hh], np.int64),
             _const("ax", [0], np.int64), _const("s0", [0], np.int64)]
    nodes = [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["cond"]),
             N("Shape", ["x"], ["xs"]), N("Slice", ["xs", "s1", "s2"], ["bdim"]),
             N("Concat", ["one64", "bdim", "h64"], ["hshape"], axis=0),
             _if("cond", ["sl"], _graph([N("Identity", ["lens"], ["lt"])], [("lt", I32, None)]),
                 _graph([N("Sub", ["lens", "onei"], ["le"])], [("le", I32, None)]), name="lens"),
             _if("cond", ["h0"], _graph([N("ConstantOfShape", ["hshape"], ["ht"])], ["ht"]),
                 _graph([N("Expand", ["half", "hshape"], ["he"])], ["he"]), name="h0"),
             _if("cond", ["xx"], _graph([N("Identity", ["x"], ["xt"])], ["xt"]),
                 _graph([N("Slice", ["x", "s0", "s2", "ax"], ["xe"])], ["xe"]), name="x"),
             N("LSTM", ["xx", "W", "R", "Bb", "sl", "h0", "h0"], ["Y", "Yh", "Yc"],
               hidden_size=Hh)]
    data = _model(nodes, [("x", F32, ["T", "B", 3]), ("lens", I32, ["B"])], ["Y", "Yh", "Yc"],
                  inits)
    for T, B in [(5, 3), (17, 1)]:
        xp = np.abs(rng.standard_normal((T, B, 3))).astype(np.float32)
        lens = np.full(B, 2, np.int32)
        _alternating(data, [{"x": xp, "lens": lens}, {"x": -xp, "lens": lens}])
