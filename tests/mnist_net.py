"""A small ternary net quickly trained on genuine MNIST, shared by the export tests.

Training takes a few seconds; it happens once per test process (cached), in a
temporary folder removed when the process ends.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

NET = "8C5-P2-16C5-P2-64"
_FOLDER = tempfile.TemporaryDirectory(prefix="qsnn-mnist-net-")


@functools.lru_cache(maxsize=2)
def trained_mnist_model(data_dir: str):
    """The quantized model (k=1, B=2, ternary) after one epoch on 2,000 MNIST images."""
    from qsnn.train.checkpoint import load_checkpoint
    from qsnn.train.config import TrainConfig
    from qsnn.train.loop import train

    out = Path(_FOLDER.name) / "run"
    config = TrainConfig(
        net=NET, dataset="mnist", k=1, B=2, ternary=True, epochs=1,
        train_limit=2000, test_limit=500, data_dir=data_dir, seed=0,
    )
    train(config, out, progress=False)
    model, _ = load_checkpoint(out / "best.pt")
    return model


@functools.lru_cache(maxsize=2)
def mnist_test_pixels(data_dir: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` MNIST test images (uint8, prepared) and their labels."""
    from qsnn import data as qdata

    test = qdata.load("mnist", "test", data_dir)
    pixels = qdata.prepare(test.images[:count], "mnist", train=False)
    return pixels, test.labels[:count]
