"""Models of one's own for the tests of ``qsnn train --model`` and ``qsnn convert --model``,
named as the command line names them: ``tests.own_models:tiny``."""

from __future__ import annotations

from torch import nn

from qsnn.nn import QuantAct, QuantConv2d


def tiny(channels: int = 4) -> nn.Module:
    """A 5x5 stride-2 convolution, batch norm, QuantAct(1, 2), dropout (which a resumed run
    must draw again exactly) and a linear classifier: 28x28 images, 10 classes."""
    return nn.Sequential(
        QuantConv2d(1, channels, 5, stride=2), nn.BatchNorm2d(channels), QuantAct(1, 2), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(channels * 12 * 12, 10),
    )


def wider() -> nn.Module:
    """Another factory: :func:`tiny` with 6 channels."""
    return tiny(6)


def five_classes() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5))


def colour() -> nn.Module:
    """Made for CIFAR-10's whole 3x32x32 images."""
    return nn.Sequential(
        QuantConv2d(3, 4, 5, stride=2), nn.BatchNorm2d(4), QuantAct(1, 2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10),
    )


def broken() -> nn.Module:
    raise RuntimeError("no weights file here")


def not_a_module() -> str:
    return "a model"


def needs_arguments(k: int) -> nn.Module:
    return tiny(k)
