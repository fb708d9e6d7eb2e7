"""Activation quantization (level k, upper bound B) and ternary weights.

Median quantization, ALGORITHMS.md §1::

    n = min(floor(relu(y) * 2^k + 1/2), 2^k * B)      an integer count
    a = n / 2^k

Rounding is half-up (``floor(v + 1/2)``), which is what a threshold neuron computes;
``torch.round`` (half-to-even) would not be. Training uses the straight-through
estimator: the gradient of the quantizer is 1 where 0 < y < B (y > 0 when B is none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from qsnn.errors import QsnnError, integer_in
from qsnn.options import field_option

MAX_K = 4
MAX_BOUND = 64  # 2^k B levels per neuron stay within a table of 1,024
TERNARY_DELTA = 0.7


def check_level(k: int, what: str = "k") -> int:
    if not integer_in(k, 0, MAX_K):
        raise QsnnError(f"{what} must be an integer from 0 to {MAX_K}, got {k!r}")
    return k


def check_bound(bound: int | None, what: str = "B") -> int | None:
    """B is a positive integer, or None for no upper bound."""
    if bound is None:
        return None
    if not integer_in(bound, 1, MAX_BOUND):
        raise QsnnError(f"{what} must be an integer from 1 to {MAX_BOUND} or 'none', got {bound!r}")
    return bound


def parse_bound(text: str | int | None) -> int | None:
    """Command-line form of B: an integer, or 'none'."""
    if text is None or isinstance(text, int):
        return check_bound(text)
    if text.strip().lower() in ("none", "inf", "no"):
        return None
    try:
        value = int(text) if len(text.strip()) <= 20 else None
    except ValueError:
        value = None
    if value is None:
        raise QsnnError(f"B must be an integer from 1 to {MAX_BOUND} or 'none', got {text[:40]!r}")
    return check_bound(value)


def max_count(k: int, bound: int | None) -> int | None:
    """The largest count n, 2^k * B, or None when unbounded."""
    return None if bound is None else (1 << k) * bound


def quantize_counts(y: torch.Tensor, k: int, bound: int | None) -> torch.Tensor:
    """Integer counts n (as y's dtype) of the quantized ReLU; no gradient."""
    v = torch.relu(y) * float(1 << k)  # exact: a power-of-two scaling
    counts = torch.floor(v)
    counts += (v - counts >= 0.5).to(v.dtype)  # half-up; v - floor(v) is exact, v + 0.5 is not
    if bound is not None:
        counts = counts.clamp_(max=float((1 << k) * bound))
    return counts


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, k: int, bound: int | None) -> torch.Tensor:
        passes = y > 0
        if bound is not None:
            passes &= y < bound
        ctx.save_for_backward(passes)
        return quantize_counts(y, k, bound).mul_(1.0 / (1 << k))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (passes,) = ctx.saved_tensors
        return grad * passes, None, None


def quantize(y: torch.Tensor, k: int, bound: int | None) -> torch.Tensor:
    """a = n / 2^k with the straight-through gradient of ALGORITHMS.md §1."""
    return _QuantizeSTE.apply(y, k, bound)


class _TernarizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        return ternary_values(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def ternary_values(weight: torch.Tensor) -> torch.Tensor:
    """+1 where w > delta, -1 where w < -delta, else 0; delta = 0.7 * mean|w| (per layer)."""
    delta = TERNARY_DELTA * weight.detach().abs().mean()
    return (weight > delta).to(weight.dtype) - (weight < -delta).to(weight.dtype)


def ternarize(weight: torch.Tensor) -> torch.Tensor:
    """Ternary weights with a straight-through gradient to the latent float weights."""
    return _TernarizeSTE.apply(weight)


SAME = "same"


@dataclass(frozen=True)
class Precision:
    """How a network is quantized.

    ``k`` and ``B``: level and upper bound of the hidden blocks (B None = no bound).
    ``encoding_k`` and ``encoding_B``: the first block's own values (the INT nets use
    k=0, B=4 there); "same" (the default) means as the hidden blocks.
    ``ternary``: ternary weights in the hidden blocks after the first.
    ``full_precision``: plain ReLU everywhere, no quantizer (the papers' baselines).

    The fields are also those of :class:`~qsnn.train.config.TrainConfig` and
    :class:`~qsnn.pipeline.RunSpec` (subclasses), each with its command-line option.
    B and the encoding values may be given as command-line text ("2", "none", "same").
    """

    k: int = field_option(default=1, type=int, help="quantization level 0..4 (default {default})")
    B: int | None = field_option(default=None, help="upper bound: a positive integer or none (default)")
    ternary: bool = field_option(default=False, action="store_true", help="ternary weights in the hidden blocks")
    full_precision: bool = field_option(
        "--fp32", "--full-precision", default=False, action="store_true",
        help="full-precision baseline: plain ReLU, no quantizer",
    )
    encoding_k: int | str = field_option(default=SAME, help="k of the first block (default: same as --k)")
    encoding_B: int | str | None = field_option(default=SAME, help="B of the first block (default: same as --B)")

    def __post_init__(self) -> None:
        if isinstance(self.B, str):
            object.__setattr__(self, "B", parse_bound(self.B))
        if isinstance(self.encoding_k, str) and self.encoding_k != SAME:
            try:
                object.__setattr__(self, "encoding_k", int(self.encoding_k))
            except ValueError:
                raise QsnnError(
                    f"encoding k must be an integer from 0 to 4 or 'same', got {self.encoding_k!r}"
                ) from None
        if isinstance(self.encoding_B, str) and self.encoding_B != SAME:
            object.__setattr__(self, "encoding_B", parse_bound(self.encoding_B))
        check_level(self.k)
        check_bound(self.B)
        if self.encoding_k != SAME:
            check_level(self.encoding_k, "encoding k")
        if self.encoding_B != SAME:
            check_bound(self.encoding_B, "encoding B")

    def block(self, index: int) -> tuple[int, int | None]:
        """(k, B) of hidden block ``index`` (0 = the encoding block)."""
        if index == 0:
            k = self.k if self.encoding_k == SAME else self.encoding_k
            bound = self.B if self.encoding_B == SAME else self.encoding_B
            return k, bound
        return self.k, self.B

    def describe(self) -> str:
        if self.full_precision:
            return "full precision"
        text = f"k={self.k} B={bound_text(self.B)}"
        if self.block(0) != (self.k, self.B):
            encoding_k, encoding_b = self.block(0)
            text += f" (encoding k={encoding_k} B={bound_text(encoding_b)})"
        return text + (" ternary" if self.ternary else "")

    def label(self) -> str:
        """How run folders name it: fp32, or k1-Bnone, k1-B2-ternary, ..."""
        if self.full_precision:
            return "fp32"
        return f"k{self.k}-B{bound_text(self.B)}" + ("-ternary" if self.ternary else "")

    def precision(self) -> Precision:
        """The precision alone (of a TrainConfig or a RunSpec, which are Precisions too)."""
        return Precision(**precision_fields(self))

    def to_dict(self) -> dict:
        return precision_fields(self)

    @classmethod
    def from_dict(cls, data: dict) -> Precision:
        if not isinstance(data, dict) or not {"k", "B"} <= set(data):
            raise QsnnError(f"a precision must be a JSON object with k and B, got {str(data)[:60]!r}")
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def bound_text(bound: int | None) -> str:
    return "none" if bound is None else str(bound)


PRECISION_FIELDS = tuple(f.name for f in dataclasses.fields(Precision))  # also fields of TrainConfig and RunSpec


def precision_fields(source) -> dict:
    """The precision fields (:data:`PRECISION_FIELDS`) of ``source`` (a Precision, a
    TrainConfig or a RunSpec), so that one copies into another without naming them."""
    return {name: getattr(source, name) for name in PRECISION_FIELDS}
