"""The README's "Training and gradients" example: fine-tune a layer loaded from a torch
state dict with Adam for a few steps; the loss must fall.

The example text lives here (EXAMPLE); when README.md has the section, its python block
is what runs, so the README cannot drift from a tested example.
"""
import os
import re

import pytest

pytest.importorskip("torch")

EXAMPLE = '''\
import numpy as np
import torch
import fastrnn
from fastrnn.train import Adam

torch.manual_seed(0)
torch.save(torch.nn.LSTM(8, 32, num_layers=2).state_dict(), "lstm.pt")  # weights from elsewhere

layer = fastrnn.load("lstm.pt")                  # LSTM(8, 32, num_layers=2), float32
rng = np.random.default_rng(0)
x = rng.standard_normal((20, 16, 8)).astype(np.float32)          # (T, B, I)
target = np.tanh(np.cumsum(x[..., :1], axis=0) / 4)              # (T, B, 1): a running sum

opt = Adam(layer, lr=1e-2)
losses = []
for step in range(40):
    out, (h_n, c_n), cache = layer.forward_train(x)               # keeps what backward needs
    err = out[..., :1] - target                                   # fit the first unit
    losses.append(float(np.mean(err ** 2)))
    grad_out = np.zeros_like(out)
    grad_out[..., :1] = 2 * err / err.size                        # dloss/dout
    grads = layer.backward(cache, grad_out)    # {"input", "h0", "c0", "weight_ih_l0", ...}
    opt.step(grads)                            # updates layer.parameters() in place
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
'''

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _readme_block():
    try:
        text = open(README, encoding="utf-8").read()
    except OSError:
        return None
    m = re.search(r"^## Training and gradients\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not m:
        return None
    code = re.search(r"```python\n(.*?)```", m.group(1), re.S)
    return code.group(1) if code else None


@pytest.mark.parametrize("source", ["example", "readme"])
def test_readme_training_loss_falls(source, tmp_path, monkeypatch):
    code = EXAMPLE if source == "example" else _readme_block()
    if code is None:
        pytest.skip("README.md has no 'Training and gradients' python block yet")
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, f"<{source}>", "exec"), ns)
    losses = ns["losses"]
    assert len(losses) >= 10
    assert losses[-1] < 0.2 * losses[0], losses
    assert all(b <= a * 1.5 for a, b in zip(losses, losses[1:]))   # no blow-up on the way
