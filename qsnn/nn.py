"""Drop-in PyTorch modules for a quantized network of your own.

- :class:`QuantAct`: the papers' quantized ReLU, a = min(floor(2^k relu(y) + 1/2), 2^k B) / 2^k,
  rounding half up, with the straight-through gradient (1 where 0 < y < B);
- :class:`QuantConv2d` and :class:`QuantLinear`: convolution and linear layers whose
  weights are ternarized in the forward pass when ``ternary`` (+1, 0, -1 at
  0.7 mean|w|, straight-through to the float weights), bias-free as the papers' layers.

They compute exactly what the blocks of :class:`qsnn.net.models.QuantizedNet` compute
(the same functions of :mod:`qsnn.net.quantization`), so a model built from them trains
with any loop::

    model = nn.Sequential(
        QuantConv2d(1, 32, 5), nn.BatchNorm2d(32), QuantAct(k=1, B=2), nn.AvgPool2d(2),
        QuantConv2d(32, 64, 5, ternary=True), nn.BatchNorm2d(64), QuantAct(k=1, B=2),
        nn.Flatten(), QuantLinear(64 * 8 * 8, 10),
    )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qsnn.net.quantization import check_bound, check_level, quantize, ternarize


class QuantAct(nn.Module):
    """The quantized activation of level ``k`` (0..4) and upper bound ``B`` (None: unbounded)."""

    def __init__(self, k: int, B: int | None = None) -> None:
        super().__init__()
        self.k = check_level(k)
        self.B = check_bound(B)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return quantize(y, self.k, self.B)

    def extra_repr(self) -> str:
        return f"k={self.k}, B={self.B}"


class QuantConv2d(nn.Conv2d):
    """A bias-free convolution, its weights ternary in the forward pass when ``ternary``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, ternary: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.ternary = ternary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = ternarize(self.weight) if self.ternary else self.weight
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", ternary=True" if self.ternary else "")


class QuantLinear(nn.Linear):
    """A bias-free linear layer, its weights ternary in the forward pass when ``ternary``."""

    def __init__(self, in_features: int, out_features: int, *, ternary: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.ternary = ternary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, ternarize(self.weight) if self.ternary else self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", ternary=True" if self.ternary else "")
