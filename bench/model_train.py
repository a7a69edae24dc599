"""A training step of a whole Keras-style model against the same model in PyTorch.

    PYTHONPATH=. python bench/model_train.py [--batch 32] [--steps 50] [--hidden 128]

The model: Embedding(1000, 64) -> LSTM(64, H) returning its last step -> Dense(H, 10)
with a softmax, a batch of ``--batch`` sequences of ``--steps`` ids.  One training step:
fastrnn's ``model.forward_train`` + ``model.backward`` (dL/d(probs) of a cross-entropy)
against torch's forward + ``loss.backward()`` (``nn.Embedding``, ``nn.LSTM``,
``nn.Linear``, softmax, the same weights), both on 2 threads.  Prints the median and
minimum over ``--rounds`` alternating rounds of ``--calls`` steps, in milliseconds, and
checks that the two give the same gradients.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch

    import fastrnn
    from fastrnn.model import Dense, Embedding, KerasRNN, Model
    torch.set_num_threads(a.threads)
    fastrnn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    V, E, H, C, B, T = 1000, 64, a.hidden, 10, a.batch, a.steps
    emb = rng.normal(size=(V, E)).astype(np.float32)
    lstm = fastrnn.LSTM(E, H, batch_first=True, seed=0)
    w, b = (rng.normal(size=(H, C)) * 0.1).astype(np.float32), np.zeros(C, np.float32)
    model = Model([Embedding(emb), KerasRNN(lstm), Dense(w, b, activation="softmax")])
    ids = rng.integers(0, V, size=(B, T))
    labels = rng.integers(0, C, size=B)

    t_emb = torch.nn.Embedding(V, E)
    t_lstm = torch.nn.LSTM(E, H, batch_first=True)
    t_lin = torch.nn.Linear(H, C)
    with torch.no_grad():
        t_emb.weight.copy_(torch.from_numpy(emb))
        for k, v in lstm.state_dict().items():
            getattr(t_lstm, k).copy_(torch.from_numpy(np.asarray(v)))
        t_lin.weight.copy_(torch.from_numpy(w.T))
        t_lin.bias.copy_(torch.from_numpy(b))
    t_ids, t_labels = torch.from_numpy(ids), torch.from_numpy(labels)

    def fastrnn_step():
        probs, cache = model.forward_train(ids)
        g = np.zeros_like(probs)
        g[np.arange(B), labels] = -1 / (B * probs[np.arange(B), labels])
        return model.backward(cache, g)

    def torch_step():
        for p in (*t_emb.parameters(), *t_lstm.parameters(), *t_lin.parameters()):
            p.grad = None
        h = t_lstm(t_emb(t_ids))[0][:, -1]
        probs = torch.softmax(t_lin(h), dim=-1)
        loss = -torch.log(probs[torch.arange(B), t_labels]).mean()
        loss.backward()
        return t_lstm.weight_hh_l0.grad

    got = fastrnn_step()[f"{model.layers[1].name}/weight_hh_l0"]
    want = torch_step().numpy()
    err = float(np.max(np.abs(got - want)))
    times = {"fastrnn": [], "torch": []}
    for _ in range(a.rounds):
        for name, fn in (("fastrnn", fastrnn_step), ("torch", torch_step)):
            fn()
            for _ in range(a.calls):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    print(f"Embedding({V}, {E}) -> LSTM({E}, {H}) -> Dense({H}, {C}, softmax), B={B} T={T}, "
          f"{a.threads} threads; weight_hh gradient max |fastrnn - torch| = {err:.2e}")
    for name, v in times.items():
        print(f"  {name:8s} median {np.median(v) * 1e3:8.2f} ms   min {min(v) * 1e3:8.2f} ms")
    f, t = np.median(times["fastrnn"]), np.median(times["torch"])
    print(f"  fastrnn / torch (medians): {f / t:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
