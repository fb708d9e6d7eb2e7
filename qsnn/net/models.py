"""Quantized (and full-precision) networks built from a layer plan.

A hidden block computes, ALGORITHMS.md §1::

    z = W * x                   convolution or linear, no bias
    y = batch_norm(z)           eps = 1e-5
    a = Q(relu(y))              counts n = a * 2^k (plain relu(y) in full precision)

The first block reads pixels in [0, 1] and keeps full-precision weights (the encoding
layer); hidden blocks after it may use ternary weights; the classifier is a linear layer
without bias, batch norm or quantizer whose outputs are the logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qsnn.data.transforms import INPUT_STAGES
from qsnn.errors import QsnnError
from qsnn.net.notation import Layer, Plan, build_plan
from qsnn.net.quantization import Precision, quantize, quantize_counts, ternarize

BN_EPS = 1e-5


@dataclass(frozen=True)
class NetSpec:
    """Everything needed to rebuild a network: notation, input, classes, padding, precision,
    and its input stage (:data:`qsnn.data.transforms.INPUT_STAGES`: raw pixels / 255, or per-image
    standardization)."""

    notation: str
    input_shape: tuple[int, int, int]
    num_classes: int
    padding: str
    precision: Precision
    input_stage: str = "pixels"

    def __post_init__(self) -> None:
        if self.input_stage not in INPUT_STAGES:
            raise QsnnError(f"input stage must be one of {', '.join(INPUT_STAGES)}, got {self.input_stage!r}")

    def plan(self) -> Plan:
        return build_plan(self.notation, self.input_shape, self.num_classes, self.padding)

    def activations(self) -> int:
        """How many values the layers output per image (what a batch's activations take)."""
        return sum(math.prod(layer.out_shape) for layer in self.plan().layers)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["precision"] = self.precision.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> NetSpec:
        if not isinstance(data, dict) or not isinstance(data.get("precision"), dict):
            raise QsnnError(f"a network description must be a JSON object with its precision, got {str(data)[:60]!r}")
        return cls(
            notation=data["notation"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            padding=data["padding"],
            precision=Precision.from_dict(data["precision"]),
            input_stage=data.get("input_stage", "pixels"),
        )

    def describe(self) -> str:
        stage = "" if self.input_stage == "pixels" else ", standardized input"
        return f"{self.notation} ({self.precision.describe()}{stage})"


class HiddenBlock(nn.Module):
    """Convolution or linear layer (no bias), batch norm, quantized ReLU."""

    def __init__(
        self, layer: Layer, k: int, bound: int | None, *, ternary: bool, full_precision: bool
    ) -> None:
        super().__init__()
        self.layer = layer
        self.k = k
        self.bound = bound
        self.ternary = ternary
        self.full_precision = full_precision
        self.weight = nn.Parameter(torch.empty(layer.weight_shape))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        norm = nn.BatchNorm2d if layer.kind == "conv" else nn.BatchNorm1d
        self.norm = norm(layer.out_channels, eps=BN_EPS)

    def effective_weight(self) -> torch.Tensor:
        """The weights the block computes with (ternary values when ternary)."""
        return ternarize(self.weight) if self.ternary else self.weight

    def linear(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """z = W * x, the block's convolution or linear map."""
        weight = self.effective_weight() if weight is None else weight
        if self.layer.kind == "conv":
            return F.conv2d(x, weight, stride=self.layer.stride, padding=self.layer.padding)
        return F.linear(x.flatten(1), weight)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre_activation(x)
        if self.full_precision:
            return torch.relu(y)
        return quantize(y, self.k, self.bound)


class QuantizedNet(nn.Module):
    """A chain of hidden blocks and a bias-free linear classifier."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.plan = spec.plan()
        precision = spec.precision
        blocks = []
        for index, layer in enumerate(self.plan.hidden):
            k, bound = precision.block(index)
            blocks.append(
                HiddenBlock(
                    layer,
                    k,
                    bound,
                    ternary=precision.ternary and index > 0,
                    full_precision=precision.full_precision,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Parameter(torch.empty(self.plan.classifier.weight_shape))
        nn.init.kaiming_uniform_(self.classifier, a=5**0.5)

    @property
    def quantized(self) -> bool:
        return not self.spec.precision.full_precision

    def non_finite(self) -> list[str]:
        """The parameters and buffers holding NaN or infinity (a diverged training)."""
        return [
            name for name, tensor in self.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ]

    def check_finite(self, what: str) -> None:
        """Refuse a network with non-finite values or negative batch-norm variances; ``what``
        names it in the message."""
        broken = self.non_finite()
        if broken:
            raise QsnnError(
                f"{what} holds non-finite values in {', '.join(broken[:3])}{' and more' if len(broken) > 3 else ''} "
                "(a diverged training); retrain it with a lower --lr"
            )
        for index, block in enumerate(self.blocks):
            if bool((block.norm.running_var + block.norm.eps <= 0).any()) or not block.norm.eps >= 0:
                raise QsnnError(
                    f"{what} has a negative batch-norm variance in block {index + 1} (a damaged file); "
                    "re-create it with qsnn train"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.linear(x.flatten(1), self.classifier)

    @torch.no_grad()
    def counts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Integer counts n of every hidden block for input batch ``x`` (eval mode).

        Computed in the model's dtype; for the exact reference that the SNN is proven
        equal to, see :func:`qsnn.snn.reference.reference_counts`.
        """
        if not self.quantized:
            raise QsnnError("a full-precision network has no spike counts; train with --k")
        if self.training:
            raise QsnnError("counts() needs eval mode: call model.eval() first")
        result = []
        for block in self.blocks:
            n = quantize_counts(block.pre_activation(x), block.k, block.bound)
            result.append(n.to(torch.int64))
            x = n * (1.0 / (1 << block.k))
        return result

    def signature(self) -> dict:
        return self.spec.to_dict()
