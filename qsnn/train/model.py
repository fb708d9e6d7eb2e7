"""What a run trains: a net in the papers' notation (:class:`~qsnn.net.models.NetSpec`)
or a model of one's own (:class:`ModelSpec`), and :func:`build_model`, which makes either.

Both tell the loop what it needs: ``input_stage`` and ``input_shape`` (how the images
become the network's input), ``describe()``, ``activations()`` (values per image, for the
memory check) and ``to_dict()`` (config.json and checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qsnn.data.registry import dataset_info
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.nn import check_model, make_model


@dataclass(frozen=True)
class ModelSpec:
    """A model of one's own: ``FACTORY()`` of ``factory`` (``MODULE:FACTORY``,
    :func:`qsnn.nn.make_model`), trained on a dataset's images at their full stored size
    (CIFAR: 3x32x32, not the notation nets' 24x24 crops), x = pixels / 255: what
    ``qsnn convert --model`` and its graphs take. Its own ``QuantAct(k, B)`` set its
    precision. ``params`` and ``values`` (per image, for the memory check) are measured."""

    factory: str
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int
    values: int
    input_stage: str = "pixels"

    @classmethod
    def of(cls, factory: str, dataset: str) -> ModelSpec:
        """The spec of ``factory`` on ``dataset``'s images: the model made once (global
        random state untouched) and run on their shape, its output checked against the
        dataset's classes (one-line errors)."""
        info = dataset_info(dataset)
        shape = tuple(info.stored_shape)
        with torch.random.fork_rng(devices=[]):
            model = make_model(factory)
        values = check_model(model, factory, shape, info.num_classes, dataset)
        params = sum(p.numel() for p in model.parameters())
        return cls(factory, shape, info.num_classes, params, values)

    def describe(self) -> str:
        return f"{self.factory} ({self.params:,} parameters)"

    def activations(self) -> int:
        return self.values

    def build(self) -> nn.Module:
        return make_model(self.factory)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.factory, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "input_stage": self.input_stage}


Spec = NetSpec | ModelSpec


def build_model(spec: Spec, seed: int) -> nn.Module:
    """The network ``spec`` describes, its weights initialised under ``torch.manual_seed(seed)``
    (the global random state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QuantizedNet(spec) if isinstance(spec, NetSpec) else spec.build()
