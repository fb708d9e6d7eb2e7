"""Small random networks with adversarial batch-norm statistics, for the exactness tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small, shared CPU, OpenMP threads that wait for each
    other make these tiny nets many times slower, and the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_net(
    notation: str = "6C5-P2-8C3-12",
    *,
    k: int = 1,
    B: int | None = 2,
    ternary: bool = False,
    seed: int = 0,
    input_shape=(1, 28, 28),
    classes: int = 10,
    encoding_k="same",
    encoding_B="same",
    zero_gamma: bool = True,
    padding: str = "valid",
) -> QuantizedNet:
    """A net with random weights and random batch-norm statistics.

    About a third of the gammas are negative and the first channel of every block has
    gamma = 0 (a constant count); means and variances are random, so thresholds land
    anywhere. Scales keep typical counts within a few levels even when B is none.
    """
    torch.manual_seed(seed)
    precision = Precision(k=k, B=B, ternary=ternary, encoding_k=encoding_k, encoding_B=encoding_B)
    model = QuantizedNet(NetSpec(notation, tuple(input_shape), classes, padding, precision))
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for block in model.blocks:
            channels = block.norm.num_features
            sign = torch.where(torch.rand(channels, generator=generator) < 1 / 3, -1.0, 1.0)
            block.norm.weight.copy_(sign * (0.3 + torch.rand(channels, generator=generator)))
            if zero_gamma:
                block.norm.weight[0] = 0.0
            block.norm.bias.copy_(torch.randn(channels, generator=generator))
            scale = float(block.linear(torch.ones(1, *block.layer.in_shape)).abs().mean()) + 1e-3
            block.norm.running_mean.copy_(torch.randn(channels, generator=generator) * 0.3 * scale)
            block.norm.running_var.copy_((0.5 + torch.rand(channels, generator=generator)) * scale**2)
    return model.eval()


def random_pixels(count: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)


def linear_tables(layer, offset, step, size=None):
    """(offset, step, divisor, table, size) of hand-made thresholds ceil((A + i D) / S) for
    a converted layer (S its own divisor), as SpikingLayer and its ann_thresholds hold them."""
    from qsnn.snn.convert import formula_table

    offset, step = np.asarray(offset, np.int64), np.asarray(step, np.int64)
    cap = int(layer.size.max()) if size is None else size
    table, sizes = formula_table(offset, step, layer.divisor, cap, "test")
    return offset, step, layer.divisor, table, sizes


def with_linear_tables(layer, offset, step, ann=None):
    """``layer`` with the hand-made thresholds of :func:`linear_tables` (and, given ``ann``
    as (offset, step), other exact tables for the quantized ANN)."""
    from dataclasses import replace

    offset, step, _, table, size = linear_tables(layer, offset, step)
    ann_thresholds = None if ann is None else linear_tables(layer, *ann)
    return replace(layer, offset=offset, step=step, table=table, size=size, ann_thresholds=ann_thresholds)
