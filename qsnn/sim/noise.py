"""Noise for robustness runs (ALGORITHMS.md §4), reproducible image by image.

NSD and INT perturb the pixels multiplicatively; SG drops spikes (in the encoding layer
only, as the SG code does, or in every layer). Each image draws from its own stream,
keyed by the seed and its position in the test set, so results do not depend on the
batch size or on how the test set is sharded between processes.
"""

from __future__ import annotations

import torch

from qsnn.snn.neurons import (
    drop_spikes,
)

_MASK64 = 2**64 - 1


def _mix(value: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit words that spreads every input bit."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


SG_DROPS = ("encoding", "every-layer")  # where SG's noise drops spikes; the first is the paper's


class NoiseDraws:
    """The random numbers of a noisy run: one stream per (seed, image, stage), so that an
    image's noise depends on the seed and on its position in the dataset only, never on
    how the images are split into batches. Stage 0 is the pixel noise (NSD, INT); stage
    l + 1 the spikes dropped in SG layer l. ``sg_drop``: the SG layers that drop spikes,
    "encoding" (the SG paper's model: its noise reaches conv1 only) or "every-layer"."""

    def __init__(self, seed: int, first_image: int = 0, sg_drop: str = "encoding") -> None:
        self.seed = seed
        self.first_image = first_image
        self.sg_drop = sg_drop

    def drops_in(self, layer: int, encoding: bool | None = None) -> bool:
        """Whether layer ``layer`` drops spikes; ``encoding``: whether it is an encoding
        layer (default: the first, as in a chain; a graph's populations say so themselves)."""
        return self.sg_drop == "every-layer" or (layer == 0 if encoding is None else encoding)

    def generator(self, image: int, stage: int) -> torch.Generator:
        """The CPU generator of image ``image`` of this batch (0-based) at ``stage``."""
        word = self.seed & _MASK64
        for part in (self.first_image + image, stage):
            word = _mix(word ^ _mix(part + 0x9E3779B97F4A7C15))
        return torch.Generator().manual_seed(word)


def noisy_pixels(pixels: torch.Tensor, ratio: float, draws: NoiseDraws) -> torch.Tensor:
    """Multiplicative input noise x * (1 + (u - 1/2) * r), u ~ U[0, 1) per pixel (§4)."""
    if ratio <= 0:
        return pixels.to(torch.float64)
    u = torch.stack([
        torch.rand(pixels.shape[1:], generator=draws.generator(image, 0), dtype=torch.float64)
        for image in range(pixels.shape[0])
    ]).to(pixels.device)
    return pixels.to(torch.float64) * (1.0 + (u - 0.5) * ratio)


def dropped_spikes(counts: torch.Tensor, ratio: float, draws: NoiseDraws | None, layer: int,
                   encoding: bool | None = None) -> torch.Tensor:
    """SG's spike drop, image by image from each image's own stream, in the layers the
    drop model names (the encoding layer only, by default; see NoiseDraws.drops_in)."""
    draws = draws if draws is not None else NoiseDraws(0)
    if ratio <= 0 or not draws.drops_in(layer, encoding):
        return counts
    return torch.cat([
        drop_spikes(counts[image : image + 1], ratio, draws.generator(image, layer + 1))
        for image in range(counts.shape[0])
    ])
