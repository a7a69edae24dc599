"""ONNX recurrent nodes with their options beside ONNX Runtime (the model both run).

    PYTHONPATH=. python bench/onnx_options.py [--cases LSTM:1:100:256:peep,GRU:16:100:256:lbr0]
                                              [--rounds 3] [--threads 2]

A case is OP:B:T:H[:opt...] (OP one of LSTM, GRU, RNN; input size = H; float32; one
forward layer), opts: ``peep`` (LSTM peepholes, input P), ``clip=C`` (the clip
attribute), ``ifg`` (LSTM input_forget), ``lbr0`` / ``lbr1`` (GRU linear_before_reset;
0 is ONNX's default, fastrnn's ``reset_after=False``), ``hs`` (HardSigmoid for the
gates: the activations old Keras models use), ``bi`` (bidirectional), ``seq=5/2/3``
(input sequence_lens, one length per sequence).  The
weights are random (seed 0, scale 0.1); fastrnn loads the same serialized model with
``fastrnn.load`` (an ``OnnxModel``: a dict of the graph's outputs), and the script
checks both give the same Y before timing.  Each
round times a burst of calls of each in turn; the table gives each one's median over
rounds of the per-burst median and fastrnn's time over ONNX Runtime's.  These are the
options PyTorch has no layer for, so ONNX Runtime is the only peer.  No thresholds.
"""
import argparse
import os
import tempfile

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from _timing import median_call   # (bench/ is the script's directory)

DEFAULT = ("LSTM:1:100:256:peep,LSTM:16:100:256:peep,LSTM:1:100:256:clip=3,"
           "LSTM:16:100:256:clip=3,LSTM:1:100:256:ifg,GRU:1:100:256:lbr0,"
           "GRU:16:100:256:lbr0,GRU:64:50:512:lbr0,GRU:1:100:256:lbr1:clip=3,"
           "RNN:1:100:256:clip=3,LSTM:1:100:256:hs,LSTM:16:100:256:hs,GRU:1:100:256:lbr1:hs")


def onnx_model(op, H, opts, seed=0):
    """A one-node ONNX model (opset 14) of op with hidden size H (input size H)."""
    rng = np.random.default_rng(seed)
    G = {"GRU": 3, "LSTM": 4, "RNN": 1}[op]
    D = 2 if "bi" in opts else 1

    def rnd(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    inits = [numpy_helper.from_array(rnd(D, G * H, H), "W"),
             numpy_helper.from_array(rnd(D, G * H, H), "R"),
             numpy_helper.from_array(rnd(D, 2 * G * H), "B")]
    inputs = ["X", "W", "R", "B"]
    attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
    for o in opts:
        if o.startswith("clip="):
            attrs["clip"] = float(o[5:])
        elif o in ("lbr0", "lbr1"):
            attrs["linear_before_reset"] = int(o[3])
        elif o == "ifg":
            attrs["input_forget"] = 1
        elif o == "hs":     # HardSigmoid gates (alpha 0.2, beta 0.5: old Keras's default)
            acts = ["HardSigmoid", "Tanh", "Tanh"][:{"LSTM": 3, "GRU": 2}.get(op, 1)]
            attrs["activations"] = acts * D
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", H])]
    if any(o.startswith("seq=") for o in opts):
        inputs.append("seq")
        graph_inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["B"]))
    if "peep" in opts:
        inits.append(numpy_helper.from_array(rnd(D, 3 * H), "P"))
        inputs += [""] * (7 - len(inputs)) + ["P"]
    node = helper.make_node(op, inputs, ["Y", "Yh"] + (["Yc"] if op == "LSTM" else []),
                            **attrs)
    graph = helper.make_graph(
        [node], "g", graph_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    fastrnn.set_num_threads(a.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    print(f"{'case':28s} {'fastrnn':>10s} {'ORT':>10s}  (ms, medians)  fastrnn / ORT")
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            op, B, T, H, *opts = case.split(":")
            B, T, H = int(B), int(T), int(H)
            path = os.path.join(tmp, "m.onnx")
            with open(path, "wb") as f:
                f.write(onnx_model(op, H, opts).SerializeToString())
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            fm = fastrnn.load(path)
            x = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
            feeds = {"X": x}
            for o in opts:
                if o.startswith("seq="):
                    feeds["seq"] = np.array([int(v) for v in o[4:].split("/")], np.int32)
            y_ort = sess.run(None, feeds)[0]
            np.testing.assert_allclose(fm(feeds)["Y"], y_ort, rtol=1e-4, atol=1e-5)
            n = max(3, min(2000, int(0.2 / max(1e-6, median_call(lambda: fm(feeds), 3)))))
            res = {"fastrnn": [], "ort": []}
            for _ in range(a.rounds):
                res["fastrnn"].append(median_call(lambda: fm(feeds), n))
                res["ort"].append(median_call(lambda: sess.run(None, feeds), n))
            f_ms, o_ms = (np.median(res[k]) * 1e3 for k in ("fastrnn", "ort"))
            print(f"{case:28s} {f_ms:10.4f} {o_ms:10.4f}  {f_ms / o_ms:13.2f}", flush=True)


if __name__ == "__main__":
    main()
