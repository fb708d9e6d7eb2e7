"""The datasets qsnn knows: their files, sizes, checksums and mirrors.

:data:`DATASETS` maps a name (mnist, fashion-mnist, cifar10, cifar100) to its
:class:`DatasetInfo`; :func:`data_root` finds the folder datasets live under.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from qsnn.errors import QsnnError

SPLITS = ("train", "test")
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """One official file: its name, md5 and size, and the accepted un-gzipped twin if any."""

    name: str
    md5: str
    size: int | None = None
    raw_name: str | None = None
    raw_md5: str | None = None
    raw_size: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is (shapes, classes, padding) and where its files come from.

    ``files`` are the files the loader reads; ``archive`` (CIFAR only) is what is
    downloaded and then extracted into the folder ``folder``.
    """

    name: str
    input_shape: tuple[int, int, int]
    stored_shape: tuple[int, int, int]
    num_classes: int
    default_padding: str
    format: str
    files: tuple[FileSpec, ...]
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    mirrors: tuple[str, ...]
    archive: FileSpec | None = None
    folder: str = ""
    label_key: str = "labels"

    def file(self, name: str) -> FileSpec:
        for spec in self.files:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def split_files(self, split: str) -> tuple[FileSpec, ...]:
        if split not in SPLITS:
            raise QsnnError(f"unknown split {split!r} for {self.name}: use 'train' or 'test'")
        names = self.train_files if split == "train" else self.test_files
        return tuple(self.file(name) for name in names)

    @property
    def downloads(self) -> tuple[FileSpec, ...]:
        """The files fetched from the mirrors."""
        return (self.archive,) if self.archive is not None else self.files


def _idx(name: str, md5: str, size: int, raw_md5: str, count: int, image: bool) -> FileSpec:
    raw_size = 16 + count * 28 * 28 if image else 8 + count
    return FileSpec(name, md5, size, name.removesuffix(".gz"), raw_md5, raw_size)


_TRAIN_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_IDX = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx_dataset(name: str, mirrors: tuple[str, ...], table: Sequence[tuple]) -> DatasetInfo:
    files = tuple(
        _idx(file, md5, size, raw_md5, 60000 if file.startswith("train") else 10000,
             "images" in file)
        for file, md5, size, raw_md5 in table
    )
    return DatasetInfo(
        name, (1, 28, 28), (1, 28, 28), 10, "valid", "idx", files, _TRAIN_IDX, TEST_IDX,
        mirrors,
    )


DATASETS: dict[str, DatasetInfo] = {
    "mnist": _idx_dataset(
        "mnist",
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        (
            (_TRAIN_IDX[0], "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422,
             "6bbc9ace898e44ae57da46a324031adb"),
            (_TRAIN_IDX[1], "d53e105ee54ea40749a09fcbcd1e9432", 28881,
             "a25bea736e30d166cdddb491f175f624"),
            (TEST_IDX[0], "9fb629c4189551a2d022fa330f9573f3", 1648877,
             "2646ac647ad5339dbf082846283269ea"),
            (TEST_IDX[1], "ec29112dd5afa0611ce80d1b7f02629c", 4542,
             "27ae3e4e09519cfbb04c329615203637"),
        ),
    ),
    "fashion-mnist": _idx_dataset(
        "fashion-mnist",
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        (
            (_TRAIN_IDX[0], "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880,
             "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            (_TRAIN_IDX[1], "25c81989df183df01b3e8a0aad5dffbe", 29515,
             "9018921c3c673c538a1fc5bad174d6f9"),
            (TEST_IDX[0], "bef4ecab320f06d8554ea6380940ec79", 4422102,
             "8181f5470baa50b63fa0f6fddb340f0a"),
            (TEST_IDX[1], "bb300cfdad3c16e7a12a480ee83cd310", 5148,
             "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
    ),
    # Member md5s as published with the archives (and used by torchvision).
    "cifar10": DatasetInfo(
        "cifar10", (3, 24, 24), (3, 32, 32), 10, "same", "cifar",
        (
            FileSpec("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            FileSpec("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            FileSpec("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            FileSpec("data_batch_4", "634d18415352ddfa80567beed471001a"),
            FileSpec("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),
            FileSpec("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        ("https://www.cs.toronto.edu/~kriz/",),
        FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170498071),
        "cifar-10-batches-py",
        "labels",
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 24, 24), (3, 32, 32), 100, "same", "cifar",
        (
            FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),
            FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            FileSpec("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
        ("train",),
        ("test",),
        ("https://www.cs.toronto.edu/~kriz/",),
        FileSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", 169001437),
        "cifar-100-python",
        "fine_labels",
    ),
}

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "mnist"


def dataset_info(name: str) -> DatasetInfo:
    """The dataset called ``name``; QsnnError listing the known ones otherwise."""
    info = DATASETS.get(name) if isinstance(name, str) else None
    if info is None:
        known = ", ".join(DATASETS)
        raise QsnnError(f"unknown dataset {name!r}: choose one of {known}")
    return info


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``data_dir``, else ``$QSNN_DATA``, else the per-user cache."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("QSNN_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "qsnn" / "data"


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """One split of a dataset: uint8 images (N, C, H, W) at stored size and int64 labels."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.name)

    def subset(self, count: int) -> ImageSet:
        """The first ``count`` images (all of them if there are fewer)."""
        if count < 0:
            raise QsnnError(f"subset size must be 0 or more, got {count}")
        return ImageSet(self.name, self.split, self.images[:count], self.labels[:count])
