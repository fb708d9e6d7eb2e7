"""Drop-in PyTorch modules for a quantized network of your own.

- :class:`QuantAct`: the papers' quantized ReLU, a = min(floor(2^k relu(y) + 1/2), 2^k B) / 2^k,
  rounding half up, with the straight-through gradient (1 where 0 < y < B);
- :class:`QuantConv2d` and :class:`QuantLinear`: convolution and linear layers whose
  weights are ternarized in the forward pass when ``ternary`` (+1, 0, -1 at
  0.7 mean|w|, straight-through to the float weights), bias-free as the papers' layers;
- :class:`EncodingBlock`: the papers' encoding layer (full-precision convolution, batch
  norm, QuantAct) on the image itself.

They compute exactly what the blocks of :class:`qsnn.net.models.QuantizedNet` compute
(the same functions of :mod:`qsnn.net.quantization`), so a model built from them trains
with any loop::

    model = nn.Sequential(
        QuantConv2d(1, 32, 5), nn.BatchNorm2d(32), QuantAct(k=1, B=2), nn.AvgPool2d(2),
        QuantConv2d(32, 64, 5, ternary=True), nn.BatchNorm2d(64), QuantAct(k=1, B=2),
        nn.Flatten(), QuantLinear(64 * 8 * 8, 10),
    )

A model is named by ``MODULE:FACTORY`` (``qsnn.nn:small_resnet``): :func:`make_model`
calls ``FACTORY()`` from ``MODULE``, and :func:`check_model` runs it on a dataset's image
shape; ``qsnn train --model`` and ``qsnn convert --model`` use both.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from qsnn.errors import QsnnError
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


class EncodingBlock(nn.Sequential):
    """The papers' encoding layer: a bias-free convolution with full-precision weights,
    batch norm and ``QuantAct(k, B)``, reading the image itself (x = pixels / 255). It
    becomes the spiking network's encoding population: under INT, rising-threshold
    neurons that send its count as consecutive spikes from the first step."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 *, k: int, B: int | None) -> None:
        super().__init__(QuantConv2d(in_channels, out_channels, kernel_size, stride, padding),
                         nn.BatchNorm2d(out_channels), QuantAct(k, B))


# --- residual nets built from these modules ----------------------------------------------


class ResidualBlock(nn.Module):
    """The basic block of a ResNet with quantized activations: 3x3 conv, batch norm,
    QuantAct, 3x3 conv, batch norm, plus the shortcut (the input itself, or a 1x1 conv and
    batch norm where the shape changes), then QuantAct. The addition joins two integer
    grids; qsnn.convert brings them to one (and folds the batch norms)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, k: int, B: int | None, *, ternary: bool) -> None:
        super().__init__()
        self.conv1 = QuantConv2d(in_channels, out_channels, 3, stride, 1, ternary=ternary)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.act1 = QuantAct(k, B)
        self.conv2 = QuantConv2d(out_channels, out_channels, 3, 1, 1, ternary=ternary)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                QuantConv2d(in_channels, out_channels, 1, stride, ternary=ternary), nn.BatchNorm2d(out_channels),
            )
        self.act2 = QuantAct(k, B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet for small images with quantized activations: a 3x3 stem (conv, batch norm,
    QuantAct; full-precision weights, as the papers' encoding layers), stages of
    ``blocks`` residual blocks of ``widths`` channels (each stage after the first halves
    the map), an average pool to ``pooled`` x ``pooled`` (1: global) and a linear
    classifier with bias. ``ternary``: ternary weights in the residual blocks."""

    def __init__(self, in_channels: int, classes: int, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 3,
                 k: int = 1, B: int | None = 2, *, ternary: bool = False, pooled: int = 1) -> None:
        super().__init__()
        self.stem = EncodingBlock(in_channels, widths[0], 3, 1, 1, k=k, B=B)
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(ResidualBlock(channels, width, stride, k, B, ternary=ternary))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Linear(channels * pooled * pooled, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet20(k: int = 1, B: int | None = 2, classes: int = 10, *, ternary: bool = False) -> ResNet:
    """ResNet-20 for CIFAR (3x32x32): 16, 32 and 64 channels, three blocks each, as the
    conversion papers use it."""
    return ResNet(3, classes, (16, 32, 64), 3, k, B, ternary=ternary)


def small_resnet(k: int = 1, B: int | None = 2, classes: int = 10, in_channels: int = 1, *, ternary: bool = False) -> ResNet:
    """A small ResNet for 28x28 images (8 and 16 channels, one block each, pooled to 7x7:
    16 globally pooled features are too few for Fashion-MNIST): trains in minutes on a CPU."""
    return ResNet(in_channels, classes, (8, 16), 1, k, B, ternary=ternary, pooled=7)


# --- a model named MODULE:FACTORY ------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text[:200]}"


def factory_name(factory: str) -> tuple[str, str]:
    """(MODULE, FACTORY) of ``MODULE:FACTORY``; anything else is a one-line error."""
    module_name, _, function = factory.partition(":") if isinstance(factory, str) else ("", "", "")
    if not module_name or module_name.startswith(".") or not function.isidentifier():  # (MODULE: absolute)
        raise QsnnError(f"--model takes MODULE:FACTORY (e.g. mynets:resnet), got {factory!r}")
    return module_name, function


def make_model(factory: str) -> nn.Module:
    """``FACTORY()`` of ``MODULE:FACTORY``: ``MODULE`` imported, the function called with
    no arguments. A malformed name, a module or function that is not there, a factory that
    raises or returns something other than a torch.nn.Module: one line each."""
    module_name, function = factory_name(factory)
    try:
        make = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise QsnnError(f"cannot make the model {factory}: {error}; check the module path and the function name") from None
    except Exception as error:  # (the module's own code failed while it was imported)
        raise QsnnError(f"cannot make the model {factory}: importing {module_name} raised {_first_line(error)}; "
                        "fix the module") from None
    if not callable(make):
        raise QsnnError(f"{factory} is a {type(make).__name__}, not a function; name a function that returns the model")
    try:
        made = make()
    except Exception as error:
        raise QsnnError(f"{factory}() raised {_first_line(error)}; fix the factory (it is called with no arguments, so "
                        "give every parameter a default)") from None
    if not isinstance(made, nn.Module):
        raise QsnnError(f"{factory}() returned a {type(made).__name__}, not a torch.nn.Module; return the model")
    return made


def check_model(model: nn.Module, factory: str, input_shape: tuple[int, ...], classes: int, dataset: str) -> int:
    """Run ``model`` on two blank images of ``input_shape`` (eval mode, no gradients; its
    mode restored) and refuse in one line a forward pass that fails or an output that is
    not (batch, ``classes``). Returns how many values its modules output per image (what
    a batch's activations take)."""
    shape = "x".join(map(str, input_shape))
    outputs: list[int] = []

    def count(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel())

    hooks = [module.register_forward_hook(count) for module in model.modules() if next(module.children(), None) is None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros((2, *input_shape)))
    except Exception as error:
        raise QsnnError(f"the model {factory} fails on {dataset}'s images ({shape}): {_first_line(error)}; make it "
                        f"take a batch of {shape} images, x = pixels / 255") from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else f"a {type(logits).__name__}"
        raise QsnnError(f"the model {factory} gives {got} for a batch of 2 {dataset} images, not (2, {classes}); "
                        f"make it output (batch, {classes}): one logit per class of {dataset}")
    return sum(outputs) // 2
