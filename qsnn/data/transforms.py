"""From stored images to network inputs: the papers' preprocessing and input stages.

:func:`prepare` crops (and for training flips) CIFAR images, or for a network that
reads them whole shifts and flips them; :func:`to_float` maps
pixels to [0, 1]; :func:`model_input` and :func:`spiking_input` give a net's input
stage (raw pixels, or per-image standardization for the paper recipe's CIFAR nets);
:func:`paper_augment` is the paper recipe's colour augmentation; :func:`batches`
iterates over a prepared set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from qsnn.data.registry import ImageSet, dataset_info
from qsnn.errors import QsnnError

# --------------------------------------------------------------------------- preprocessing


SHIFT = 4  # full-size training images move by up to this many pixels (zero-filled)


def prepare(
    images: torch.Tensor,
    name: str,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """The papers' preprocessing, uint8 in and out on the same device.

    MNIST-like images are returned unchanged. CIFAR images (N, 3, 32, 32) become 24x24:
    for training a random crop and a random horizontal flip (p = 0.5) per image, drawn
    from ``generator`` (offsets y, then x, then flips); for testing the centre crop.
    ``shape``: the network's input, by default the dataset's input shape; the images'
    stored size instead (CIFAR's whole 32x32, as a model of one's own reads them) keeps
    test images whole and shifts training images by up to :data:`SHIFT` pixels (a random
    crop of the image padded with zeros) and flips them, drawn the same way.
    """
    info = dataset_info(name)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or tuple(images.shape[1:]) != info.stored_shape:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise QsnnError(
            f"prepare({name!r}) needs uint8 images of shape (N, "
            f"{', '.join(map(str, info.stored_shape))}), got {dtype} {got}"
        )
    shape = info.input_shape if shape is None else tuple(shape)
    if shape not in (info.input_shape, info.stored_shape):
        sizes = sorted({"x".join(map(str, s)) for s in (info.stored_shape, info.input_shape)})
        raise QsnnError(f"{name}'s images go to networks of input {' or '.join(sizes)}, not {'x'.join(map(str, shape))}; "
                        "give a network made for them")
    if info.input_shape == info.stored_shape or (shape == info.stored_shape and not train):
        return images
    if shape == info.stored_shape:
        padded = F.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT))
        return _random_crops(padded, info.stored_shape[1], generator)
    _, _, height, width = images.shape
    size = info.input_shape[1]
    if not train:
        top, left = (height - size) // 2, (width - size) // 2
        return images[:, :, top:top + size, left:left + size].contiguous()
    return _random_crops(images, size, generator)


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random size x size crop of each image, flipped horizontally with p = 0.5, drawn
    from ``generator``: offsets y, then x, then flips."""
    count, _, height, width = images.shape
    where = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, height - size + 1, (count,), generator=generator, device=where)
    left = torch.randint(0, width - size + 1, (count,), generator=generator, device=where)
    flip = torch.rand(count, generator=generator, device=where) < 0.5
    top, left, flip = top.to(images.device), left.to(images.device), flip.to(images.device)
    steps = torch.arange(size, device=images.device)
    rows = top[:, None] + steps
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - steps, steps)
    samples = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1] (no mean subtraction)."""
    return pixels.float() / 255


# The input stages: how a network's input x is made from the (prepared) uint8 pixels.
# "pixels": x = p / 255. "standardize": the CIFAR code's per-image standardization
# (tf.image.per_image_standardization), x = (p - mean) / max(std, 1 / sqrt(C H W)) over
# each image's values, as float32. The spiking network's encoding layer reads x as
# "pixels" 255 x (float64, exact: a float32 times 255), so it sees the model's own x.
INPUT_STAGES = ("pixels", "standardize")


def standardized(pixels: torch.Tensor) -> torch.Tensor:
    """Per-image standardization of float images (N, C, H, W) in pixel units, as float32:
    (p - mean) / max(std, 1 / sqrt(C H W)), mean and population std over each image,
    computed in float64."""
    x = pixels.to(torch.float64)
    values = x[0].numel() if len(x) else 1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return ((x - mean) / std.clamp(min=1.0 / math.sqrt(values))).to(torch.float32)


def model_input(pixels: torch.Tensor, stage: str = "pixels") -> torch.Tensor:
    """The network's float32 input x from prepared uint8 (or float, augmented) pixels."""
    if stage == "standardize":
        return standardized(pixels)
    return pixels.float() / 255


def spiking_input(pixels: torch.Tensor, stage: str = "pixels") -> torch.Tensor:
    """What the spiking network's encoding layer reads for prepared uint8 pixels: the
    pixels themselves, or, for a standardizing network, 255 x in float64 (exactly the
    model's float32 x, in pixel units)."""
    if stage == "standardize":
        return standardized(pixels).to(torch.float64) * 255
    return pixels


def paper_augment(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CIFAR code's colour augmentation on cropped, flipped uint8 images, as float32
    in pixel units: a brightness shift uniform in [-63, 63] (tf.image.random_brightness,
    max_delta 63), then a contrast factor uniform in [0.2, 1.8] about each channel's mean
    (tf.image.random_contrast); per image, from ``generator`` (shifts, then factors)."""
    where = generator.device if generator is not None else torch.device("cpu")
    count = len(pixels)
    shift = (torch.rand(count, generator=generator, device=where) * 2 - 1) * 63
    factor = 0.2 + torch.rand(count, generator=generator, device=where) * 1.6
    x = pixels.float() + shift.to(pixels.device)[:, None, None, None]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor.to(pixels.device)[:, None, None, None] + mean


def batches(
    data: ImageSet,
    batch_size: int,
    *,
    train: bool = False,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(prepared uint8 pixels, their float32 x, labels) in order, on ``device``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise QsnnError(f"batch size must be a positive whole number, got {batch_size!r}")
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].to(device)
        pixels = prepare(images, data.name, train=train, generator=generator)
        yield pixels, to_float(pixels), data.labels[start:start + batch_size].to(device)
