"""Make the bundled demo model ``fastrnn/data/demo_lstm.safetensors`` (deterministic).

    PYTHONPATH=. python fastrnn/data/make_demo.py

A 2-layer LSTM (8 inputs, 32 hidden units) with fastrnn's seeded PyTorch-style
initialisation, saved with fastrnn's own writer (safetensors + config in the metadata).
Only numpy and fastrnn are needed; running it again gives the same bytes.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_PATH = os.path.join(HERE, "demo_lstm.safetensors")
SEED = 20260501


def make(path=DEMO_PATH):
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    import fastrnn
    import fastrnn.io

    layer = fastrnn.LSTM(8, 32, num_layers=2, seed=SEED)
    fastrnn.io.save(layer, path)
    return path


if __name__ == "__main__":
    print(make())
