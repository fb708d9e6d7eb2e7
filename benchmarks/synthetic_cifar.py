"""A stand-in CIFAR-10 for benchmarks on machines without the real one: genuine
Fashion-MNIST images written in CIFAR-10's own python-pickle batch format.

The real CIFAR-10 cannot be brought onto every machine (no network); its loaders can
still be exercised end to end, and the CIFAR presets trained and simulated at their real
size, on files in the original format. Each Fashion-MNIST image (28x28, one channel) is
padded with 2 black pixels on every side to 32x32 and repeated in the three colour
planes, so that the encoding layer sees real image structure (and a real amount of
black background: spiking activity is that of real images, not of noise). Labels are the
Fashion-MNIST labels, class names its class names.

    <root>/cifar10/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta

The batches hold what CIFAR-10's do: a dict with ``b'batch_label'``, ``b'labels'`` (a
list of ints), ``b'data'`` (N x 3072 uint8, the R, G and B planes of each image row by
row) and ``b'filenames'``; ``batches.meta`` holds ``b'label_names'``,
``b'num_cases_per_batch'`` and ``b'num_vis'``. Pickle protocol 2, as the originals.

qsnn checks every CIFAR file against the md5 of the official one and refuses any other
(``qsnn.data.load``: "test_batch is corrupt (expected md5 ...)"); it has no option, setting
or registration call for other files. :func:`accepted` therefore registers these files'
own md5s in qsnn's in-process dataset table (``qsnn.data.DATASETS``, the way qsnn's
tests accept the files they write), for the duration of a ``with`` block only: nothing on
disk changes, and other processes, ``qsnn`` commands included, still refuse the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
TRAIN_BATCHES = 5
FOLDER = "cifar-10-batches-py"


def as_cifar(images: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) or (N, 28, 28) uint8 -> (N, 3072) uint8: padded to 32x32 with black,
    the grey plane repeated as R, G and B (CIFAR's layout: plane after plane)."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), 28, 28)
    padded = np.zeros((len(images), 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = images
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3 * 32 * 32)


def _write(path: Path, entry: dict) -> None:
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10(
    root: str | os.PathLike,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> Path:
    """Write CIFAR-10-format batches (images: (N, 3072) uint8, see :func:`as_cifar`) into
    ``root/cifar10/cifar-10-batches-py`` and return that folder. The training images are
    split over the five training batches in order (CIFAR-10: 10,000 each)."""
    folder = Path(root) / "cifar10" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train_images)), TRAIN_BATCHES)
    batches = [(f"data_batch_{i + 1}", part) for i, part in enumerate(parts)]
    for name, part in batches:
        _write(folder / name, _batch(f"training batch {name[-1]} of {TRAIN_BATCHES}", train_images[part], train_labels[part], part))
    _write(folder / "test_batch", _batch("testing batch 1 of 1", test_images, test_labels, np.arange(len(test_images))))
    _write(folder / "batches.meta", {
        b"num_cases_per_batch": max(len(part) for _, part in batches),
        b"label_names": [name.encode() for name in FASHION_CLASSES],
        b"num_vis": 3072,
    })
    return folder


def _batch(label: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> dict:
    return {
        b"batch_label": label.encode(),
        b"labels": [int(value) for value in labels],
        b"data": np.ascontiguousarray(images, dtype=np.uint8),
        b"filenames": [f"fashion_mnist_{int(i):05d}.png".encode() for i in indices],
    }


def from_fashion_mnist(root: str | os.PathLike, fashion_dir: str | os.PathLike | None) -> Path:
    """Read the genuine Fashion-MNIST files (qsnn's own loader: md5-checked) from
    ``fashion_dir`` and write all of them as a CIFAR-10 under ``root``: the first 50,000
    training images in the five training batches, the 10,000 test images in the test
    batch. Returns the batches' folder."""
    from qsnn import data

    train = data.load("fashion-mnist", "train", fashion_dir)
    test = data.load("fashion-mnist", "test", fashion_dir)
    kept = min(len(train), 50_000)
    return write_cifar10(
        root,
        as_cifar(train.images[:kept].numpy()), train.labels[:kept].numpy(),
        as_cifar(test.images.numpy()), test.labels.numpy(),
    )


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def accepted(folder: str | os.PathLike, name: str = "cifar10") -> Iterator[None]:
    """Within the block, qsnn (in this process) takes the files in ``folder`` as dataset
    ``name``'s official files: their md5s replace the official ones in
    ``qsnn.data.DATASETS``; the official entry is put back on leaving."""
    from qsnn import data

    folder = Path(folder)
    official = data.DATASETS[name]
    files = tuple(dataclasses.replace(spec, md5=_md5(folder / spec.name), size=None) for spec in official.files)
    data.DATASETS[name] = dataclasses.replace(official, files=files)
    try:
        yield
    finally:
        data.DATASETS[name] = official
        data.clear_cache()  # (no parsed copy of the stand-in outlives the block)
