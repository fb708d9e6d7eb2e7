"""Datasets read from their original distribution files: find, check, download, prepare.

* MNIST and Fashion-MNIST: the gzip IDX files (the un-gzipped IDX files are accepted too).
* CIFAR-10 and CIFAR-100: the python-pickle batches that ``cifar-*-python.tar.gz`` extracts to.

Layout under a data root (see :func:`data_root`)::

    <root>/mnist/train-images-idx3-ubyte.gz ...        (also fashion-mnist/)
    <root>/cifar10/cifar-10-batches-py/data_batch_1 ... (the archive may sit in cifar10/)
    <root>/cifar100/cifar-100-python/train ...

A root that holds a dataset's files (or its extracted CIFAR folder) directly works too.
Every file is checked against the official size and md5 before it is read (once per
process); a missing, truncated or corrupt file is a one-line :class:`QsnnError` that says
how to fix it. The MNIST test set also ships inside the package (``qsnn/assets/mnist``)
and is used when the data root does not hold it.

Images stay uint8 at their stored size; :func:`prepare` applies the papers' preprocessing
(CIFAR: a random 24x24 crop and horizontal flip for training, the centre crop for testing)
and :func:`to_float` maps pixels to [0, 1] without mean subtraction.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import shlex
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from qsnn.errors import QsnnError
from qsnn.io import atomic_write

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
_TEST_IDX = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx_dataset(name: str, mirrors: tuple[str, ...], table: Sequence[tuple]) -> DatasetInfo:
    files = tuple(
        _idx(file, md5, size, raw_md5, 60000 if file.startswith("train") else 10000,
             "images" in file)
        for file, md5, size, raw_md5 in table
    )
    return DatasetInfo(
        name, (1, 28, 28), (1, 28, 28), 10, "valid", "idx", files, _TRAIN_IDX, _TEST_IDX,
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
            (_TEST_IDX[0], "9fb629c4189551a2d022fa330f9573f3", 1648877,
             "2646ac647ad5339dbf082846283269ea"),
            (_TEST_IDX[1], "ec29112dd5afa0611ce80d1b7f02629c", 4542,
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
            (_TEST_IDX[0], "bef4ecab320f06d8554ea6380940ec79", 4422102,
             "8181f5470baa50b63fa0f6fddb340f0a"),
            (_TEST_IDX[1], "bb300cfdad3c16e7a12a480ee83cd310", 5148,
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

ASSETS = Path(__file__).resolve().parent / "assets" / "mnist"


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


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class FileCheck:
    """The state of one file against its official size and md5."""

    path: Path
    status: str  # 'ok' | 'missing' | 'corrupt' | 'truncated'
    expected_md5: str | None
    actual_md5: str | None
    expected_size: int | None
    actual_size: int | None
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def expected(self) -> str:
        size = f"{self.expected_size} bytes, " if self.expected_size is not None else ""
        return f"{size}md5 {self.expected_md5}"

    def found(self) -> str:
        if self.status == "missing":
            return "no file"
        return f"{self.actual_size} bytes, md5 {self.actual_md5}{_known_as(self.actual_md5)}"


_MD5_CACHE: dict[tuple[str, int, int, int, int], str] = {}
_PARSED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_cache() -> None:
    """Forget checksums and parsed arrays (they are otherwise kept for the process)."""
    _MD5_CACHE.clear()
    _PARSED.clear()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    """Identifies one version of a file: a replaced or rewritten file gets a new key."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _md5(path: Path, data: bytes | None = None) -> str:
    key = _stat_key(path)
    if key not in _MD5_CACHE:
        digest = hashlib.md5(usedforsecurity=False)
        if data is not None:
            digest.update(data)
        else:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def _known_file(md5: str | None) -> tuple[str, str] | None:
    """(dataset, file name) of the known file (gzipped or not) with this md5, or None."""
    for info in DATASETS.values():
        for spec in (*info.files, *info.downloads):
            if md5 is not None and md5 == spec.md5:
                return info.name, spec.name
            if md5 is not None and md5 == spec.raw_md5:
                return info.name, spec.raw_name
    return None


def _known_as(md5: str | None) -> str:
    """' (this is fashion-mnist's t10k-...)' when an md5 belongs to another known file."""
    known = _known_file(md5)
    return "" if known is None else f" (this is {known[0]}'s {known[1]})"


def check_file(
    path: Path, md5: str | None, size: int | None, data: bytes | None = None
) -> FileCheck:
    """Compare one file with its expected md5 and size (``data``: its bytes, if read)."""
    path = Path(path)
    if not path.is_file():
        expected = f"{size} bytes, " if size is not None else ""
        message = f"missing (expected {expected}md5 {md5})"
        return FileCheck(path, "missing", md5, None, size, None, message)
    actual_size = path.stat().st_size
    actual_md5 = _md5(path, data)
    status, message = "ok", "ok"
    if size is not None and actual_size < size:
        status, message = "truncated", f"truncated: {actual_size} of {size} bytes"
    elif size is not None and actual_size > size:
        status, message = "corrupt", f"corrupt: {actual_size} bytes, expected {size}"
    elif md5 is not None and actual_md5 != md5:
        status, message = "corrupt", f"corrupt: md5 {actual_md5}, expected {md5}"
    if status != "ok":
        message += _known_as(actual_md5)
    return FileCheck(path, status, md5, actual_md5, size, actual_size, message)


def _fix(name: str, data_dir: str | os.PathLike | None) -> str:
    where = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir not in (None, "") else ""
    return (
        f"run `qsnn data download {name}{where}` or pass --data-dir to a folder that holds "
        f"the original files"
    )


def _fail(check: FileCheck, what: str, fix: str) -> QsnnError:
    return QsnnError(
        f"{what}: {check.path} is {check.status} (expected {check.expected()}; "
        f"found {check.found()}); {fix}"
    )


def format_checks(checks: Sequence[FileCheck]) -> str:
    """A table of :func:`verify` results: status, file, bytes, md5 and a note."""
    rows = [("status", "file", "bytes", "md5", "note")]
    for check in checks:
        size = "-" if check.actual_size is None else str(check.actual_size)
        note = "" if check.ok else check.message
        rows.append((check.status, str(check.path), size, check.actual_md5 or "-", note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        cells += [row[3].ljust(widths[3]), row[4]]
        lines.append("  ".join(cells).rstrip())
    ok = sum(check.ok for check in checks)
    lines.append(f"{ok} of {len(checks)} files ok")
    return "\n".join(lines)


# --------------------------------------------------------------------------- locating


def _candidates(info: DatasetInfo, root: Path) -> list[Path]:
    if info.folder:
        return [root / info.name / info.folder, root / info.folder, root / info.name, root]
    return [root / info.name, root]


def _present(directory: Path, spec: FileSpec) -> bool:
    return (directory / spec.name).is_file() or (
        spec.raw_name is not None and (directory / spec.raw_name).is_file()
    )


def _dataset_dir(info: DatasetInfo, root: Path) -> Path:
    """The first candidate folder that holds any of the dataset's files."""
    candidates = _candidates(info, root)
    for directory in candidates:
        if any(_present(directory, spec) for spec in info.files):
            return directory
    return candidates[0]


def _check_spec(directory: Path, spec: FileSpec, data: bytes | None = None) -> FileCheck:
    """Check the gzip file, or its un-gzipped twin when only that one is there."""
    gz = directory / spec.name
    if spec.raw_name is not None and not gz.is_file() and (directory / spec.raw_name).is_file():
        return check_file(directory / spec.raw_name, spec.raw_md5, spec.raw_size, data)
    return check_file(gz, spec.md5, spec.size, data)


def _file_path(directory: Path, spec: FileSpec) -> Path:
    gz = directory / spec.name
    if spec.raw_name is not None and not gz.is_file() and (directory / spec.raw_name).is_file():
        return directory / spec.raw_name
    return gz


def _embedded_present() -> bool:
    return all((ASSETS / name).is_file() for name in _TEST_IDX)


def verify(name: str, data_dir: str | os.PathLike | None = None) -> list[FileCheck]:
    """Check every file of a dataset (and a kept CIFAR archive) against the official md5."""
    info = dataset_info(name)
    _given_folder(data_dir)
    root = data_root(data_dir)
    directory = _dataset_dir(info, root)
    checks = [_check_spec(directory, spec) for spec in info.files]
    test_specs = info.split_files("test")
    if name == "mnist" and _embedded_present() and not any(_present(directory, spec) for spec in test_specs):
        checks = [  # (as load() does: only when no test file is there)
            replace(check, message=check.message + "; the packaged MNIST test set is used instead")
            if check.status == "missing" and check.path.name.startswith("t10k") else check
            for check in checks
        ]
    if info.archive is not None:
        for base in (directory.parent, root / info.name, root):
            archive = base / info.archive.name
            if archive.is_file():
                checks.append(check_file(archive, info.archive.md5, info.archive.size))
                break
    return checks



# --------------------------------------------------------------------------- loading


def _given_folder(data_dir: str | os.PathLike | None) -> None:
    """A data folder given explicitly must not be a file (a folder that does not exist
    holds no dataset: the files are reported missing, or the packaged MNIST test set,
    byte-identical to the official one, is used)."""
    if data_dir is None or str(data_dir) == "":
        return
    folder = Path(data_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise QsnnError(f"data folder {folder} is a file; give the folder that holds the datasets")


def load(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Read one split of a dataset from its original files (checked, parsed once per process)."""
    info = dataset_info(name)
    specs = info.split_files(split)
    _given_folder(data_dir)
    root = data_root(data_dir)
    directory = _dataset_dir(info, root)
    fix = _fix(name, data_dir)
    if (
        name == "mnist" and split == "test" and _embedded_present()
        and not any(_present(directory, spec) for spec in specs)
    ):
        directory = ASSETS
    if directory == ASSETS:
        fix = "reinstall qsnn (its packaged MNIST test set is damaged)"
    what = f"{name} {split}"
    paths = [_file_path(directory, spec) for spec in specs]
    for path, spec in zip(paths, specs):
        if not path.is_file():
            raise _fail(check_file(path, spec.md5, spec.size), what, _missing_fix(info, root, fix))
    key = (name, split, specs, *(_stat_key(path) for path in paths))
    if key not in _PARSED:
        for old in [old for old in _PARSED if old[:2] == key[:2]]:
            del _PARSED[old]  # keep one parsed copy per split
        reader = _read_idx if info.format == "idx" else _read_cifar
        _PARSED[key] = reader(info, directory, specs, what, fix)
    images, labels = _PARSED[key]
    return ImageSet(name, split, images.clone(), labels.clone())


def embedded_mnist_test() -> ImageSet:
    """The MNIST test set packaged with qsnn (byte-identical to the official files)."""
    if not _embedded_present():
        raise QsnnError(
            f"the packaged MNIST test set is missing from {ASSETS}; reinstall qsnn or use "
            f"`qsnn data download mnist`"
        )
    return load("mnist", "test", ASSETS)


def _missing_fix(info: DatasetInfo, root: Path, fix: str) -> str:
    if info.archive is not None:
        for base in (root / info.name, root):
            if (base / info.archive.name).is_file():
                return f"{fix} (it extracts the archive {base / info.archive.name})"
    return fix


def _read_checked(directory: Path, spec: FileSpec, what: str, fix: str) -> tuple[Path, bytes]:
    path = _file_path(directory, spec)
    data = path.read_bytes()
    check = _check_spec(directory, spec, data)
    if not check.ok:
        raise _fail(check, what, fix)
    return path, data


def _read_idx(
    info: DatasetInfo, directory: Path, specs: Sequence[FileSpec], what: str, fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = []
    for spec, ndim in zip(specs, (3, 1)):
        path, data = _read_checked(directory, spec, what, fix)
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise QsnnError(f"{what}: {path} is not a valid gzip file ({exc}); {fix}") from None
        arrays.append(_parse_idx(data, ndim, path, what, fix))
    images, labels = arrays
    if images.shape[0] != labels.shape[0] or images.shape[1:] != info.stored_shape[1:]:
        raise QsnnError(
            f"{what}: {len(images)} images of {images.shape[1:]} but {len(labels)} labels in "
            f"{directory}; {fix}"
        )
    _check_labels(labels, info, directory, what, fix)
    with warnings.catch_warnings():  # read-only buffer: the cached tensor is never handed out
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(images.reshape(-1, *info.stored_shape))
    return pixels, torch.from_numpy(labels.astype(np.int64))


def _parse_idx(data: bytes, ndim: int, path: Path, what: str, fix: str) -> np.ndarray:
    """An IDX array of unsigned bytes with ``ndim`` dimensions."""
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, ndim)):
        raise QsnnError(
            f"{what}: {path} is not an IDX file of {ndim}-D unsigned bytes (header "
            f"{data[:4].hex() or 'empty'}); {fix}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) != header + count:
        raise QsnnError(
            f"{what}: {path} holds {len(data) - header} bytes of data but its header "
            f"{'x'.join(map(str, dims))} needs {count}; {fix}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _check_labels(labels: np.ndarray, info: DatasetInfo, where: Path, what: str, fix: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise QsnnError(
            f"{what}: labels in {where} range over {labels.min()}..{labels.max()} but "
            f"{info.name} has classes 0..{info.num_classes - 1}; {fix}"
        )


_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and bytes; refuses any other global."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if module.startswith("numpy.core"):
            module = "numpy._core" + module.removeprefix("numpy.core")
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy._core") and not hasattr(np, "_core"):
            module = "numpy.core" + module.removeprefix("numpy._core")
        return super().find_class(module, name)


def _read_cifar(
    info: DatasetInfo, directory: Path, specs: Sequence[FileSpec], what: str, fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for spec in specs:
        path, data = _read_checked(directory, spec, what, fix)
        batch_images, batch_labels = _parse_cifar_batch(data, info, path, what, fix)
        images.append(batch_images)
        labels.append(batch_labels)
    stacked = np.concatenate(images).reshape(-1, *info.stored_shape)
    return torch.from_numpy(stacked), torch.from_numpy(np.concatenate(labels))


def _parse_cifar_batch(
    data: bytes, info: DatasetInfo, path: Path, what: str, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    """``b'data'`` (N, 3072) uint8 and the labels of one python-pickle CIFAR batch."""
    def bad(problem: str) -> QsnnError:
        return QsnnError(f"{what}: {path} is not a {info.name} python batch ({problem}); {fix}")

    try:
        entry = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a damaged or foreign file
        raise bad(f"cannot unpickle it: {exc or type(exc).__name__}") from None
    if not isinstance(entry, dict):
        raise bad(f"it holds a {type(entry).__name__}, not a dict")
    key = info.label_key
    pixels = entry.get(b"data", entry.get("data"))
    labels = entry.get(key.encode(), entry.get(key))
    if pixels is None or labels is None:
        found = ", ".join(repr(k) for k in entry) or "nothing"
        raise bad(f"needs keys b'data' and {key.encode()!r}, found {found}")
    size = int(np.prod(info.stored_shape))
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != size:
        shape = getattr(pixels, "shape", None)
        kind = getattr(pixels, "dtype", type(pixels).__name__)
        raise bad(f"b'data' must be a uint8 array of shape (N, {size}), found {kind} {shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise bad(f"{key.encode()!r} is not a list of class numbers ({exc})") from None
    if labels.ndim != 1 or labels.shape[0] != pixels.shape[0] or labels.dtype.kind not in "iu":
        raise bad(
            f"{key.encode()!r} must be {pixels.shape[0]} integers, found {labels.dtype} "
            f"{labels.shape}"
        )
    labels = labels.astype(np.int64)
    _check_labels(labels, info, path, what, fix)
    return pixels, labels


# --------------------------------------------------------------------------- downloading


class _BadDownload(Exception):
    """A mirror answered, but not with the right bytes."""


def _mirror_url(mirror: str, filename: str) -> str:
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)


def _stream(url: str, target: Path, spec: FileSpec, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``target`` atomically; _BadDownload if size or md5 is wrong."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "qsnn"})
    with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(target) as out:
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=spec.name, disable=not progress) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
                if spec.size is not None and size > spec.size:
                    raise _BadDownload(f"sent more than the expected {spec.size} bytes")
        if spec.size is not None and size != spec.size:
            raise _BadDownload(f"sent {size} bytes, expected {spec.size}")
        if digest.hexdigest() != spec.md5:
            raise _BadDownload(f"md5 {digest.hexdigest()}, expected {spec.md5}")


def _fetch(
    info: DatasetInfo, spec: FileSpec, target: Path, mirrors: Sequence[str],
    progress: bool, timeout: float,
) -> None:
    """Try each mirror in turn; QsnnError listing what each said if none delivers."""
    failures = []
    for mirror in mirrors:
        url = _mirror_url(mirror, spec.name)
        try:
            _stream(url, target, spec, progress, timeout)
            return
        except _BadDownload as exc:
            failures.append(f"{url}: {exc}")
        except urllib.error.HTTPError as exc:
            exc.close()
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            failures.append(f"{url}: {exc.reason}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {exc or type(exc).__name__}")
    tried = "; ".join(failures) or "no mirrors given"
    raise QsnnError(
        f"could not download {info.name}'s {spec.name}: {tried}; check the connection, "
        f"give other mirrors (--mirror URL), or copy the file into {target.parent} by hand"
    )


def _writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QsnnError(
            f"cannot create {directory} ({exc}); pass --data-dir to a writable folder"
        ) from None
    if not os.access(directory, os.W_OK):
        raise QsnnError(f"cannot write to {directory}; pass --data-dir to a writable folder")


def download(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Fetch a dataset's official files (md5-checked; valid files are kept) and return its folder.

    ``mirrors`` are base URLs (http, https or file) tried in turn; the defaults are the
    official ones. CIFAR archives are extracted (safely, atomically) after the check.
    """
    info = dataset_info(name)
    if isinstance(mirrors, str | bytes):
        raise QsnnError(f"mirrors must be a list of base URLs, got the single string {mirrors!r}; use [{mirrors!r}]")
    root = data_root(data_dir)
    directory = _dataset_dir(info, root)
    mirrors = list(info.mirrors if mirrors is None else mirrors)
    if all(_check_spec(directory, spec).ok for spec in info.files):
        return directory
    if info.archive is None:
        _writable(directory)
        checks = {spec: _check_spec(directory, spec) for spec in info.files}
        for check in checks.values():  # all first: never fetch into a folder of another dataset
            owner = (_known_file(check.actual_md5) or (None,))[0]
            if owner not in (None, info.name):
                raise QsnnError(
                    f"{check.path} is {owner}'s file, not {info.name}'s; give --data-dir the folder above "
                    f"the datasets ({info.name} goes into its own {info.name}/ folder there)"
                )
        for spec, check in checks.items():
            if not check.ok:
                _fetch(info, spec, directory / spec.name, mirrors, progress, timeout)
        return directory
    base = directory.parent if directory.name == info.folder else root / info.name
    archive = base / info.archive.name
    if not check_file(archive, info.archive.md5, info.archive.size).ok:
        kept = root / info.archive.name
        if check_file(kept, info.archive.md5, info.archive.size).ok:
            archive = kept
        else:
            _writable(base)
            _fetch(info, info.archive, archive, mirrors, progress, timeout)
    _writable(base)
    return _extract(info, archive, base)


def _unsafe(member: tarfile.TarInfo, folder: str) -> str | None:
    """Why a tar member must not be extracted, or None."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ":" in path.parts[0]:
        return "absolute path"
    if ".." in path.parts:
        return "path leaves the folder"
    if not (member.isfile() or member.isdir()):
        return "not a plain file or folder"
    if path.parts[0] != folder:
        return f"outside {folder}/"
    return None


def _extract(info: DatasetInfo, archive: Path, base: Path) -> Path:
    """Extract ``archive`` into ``base/<folder>`` via a temporary folder, then rename."""
    target = base / info.folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{info.folder}.", suffix=".tmp", dir=base))
    again = f"delete {archive} and run `qsnn data download {info.name}` again"
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    why = _unsafe(member, info.folder)
                    if why is not None:
                        raise QsnnError(
                            f"{archive}: refusing to extract {member.name!r} ({why}); {again}"
                        )
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **extra)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise QsnnError(f"{archive}: cannot extract it ({exc}); {again}") from None
        extracted = tmp / info.folder
        for spec in info.files:
            check = check_file(extracted / spec.name, spec.md5, spec.size)
            if not check.ok:
                raise QsnnError(
                    f"{archive}: its {info.folder}/{spec.name} is {check.status} (expected "
                    f"{check.expected()}; found {check.found()}); {again}"
                )
        if target.exists():
            os.replace(target, tmp / ".previous")
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- preprocessing


def prepare(
    images: torch.Tensor,
    name: str,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The papers' preprocessing, uint8 in and out on the same device.

    MNIST-like images are returned unchanged. CIFAR images (N, 3, 32, 32) become 24x24:
    for training a random crop and a random horizontal flip (p = 0.5) per image, drawn
    from ``generator`` (offsets y, then x, then flips); for testing the centre crop.
    """
    info = dataset_info(name)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or tuple(images.shape[1:]) != info.stored_shape:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise QsnnError(
            f"prepare({name!r}) needs uint8 images of shape (N, "
            f"{', '.join(map(str, info.stored_shape))}), got {dtype} {shape}"
        )
    if info.input_shape == info.stored_shape:
        return images
    count, _, height, width = images.shape
    size = info.input_shape[1]
    if not train:
        top, left = (height - size) // 2, (width - size) // 2
        return images[:, :, top:top + size, left:left + size].contiguous()
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
