"""Reading a dataset's original files into uint8 tensors: gzip IDX and CIFAR pickles.

CIFAR batches are unpickled with only the globals they need. Every file is checked
before it is parsed; a file that does not parse is a one-line error naming it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from qsnn.data.files import (
    PARSED_CACHE,
    check_file,
    check_given_folder,
    check_spec,
    dataset_dir,
    embedded_present,
    failure,
    file_path,
    fix_hint,
    present,
    stat_key,
)
from qsnn.data.registry import ASSETS, DatasetInfo, FileSpec, ImageSet, data_root, dataset_info
from qsnn.errors import QsnnError


def load(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Read one split of a dataset from its original files (checked, parsed once per process)."""
    info = dataset_info(name)
    specs = info.split_files(split)
    check_given_folder(data_dir)
    root = data_root(data_dir)
    directory = dataset_dir(info, root)
    fix = fix_hint(name, data_dir)
    if (
        name == "mnist" and split == "test" and embedded_present()
        and not any(present(directory, spec) for spec in specs)
    ):
        directory = ASSETS
    if directory == ASSETS:
        fix = "reinstall qsnn (its packaged MNIST test set is damaged)"
    what = f"{name} {split}"
    paths = [file_path(directory, spec) for spec in specs]
    for path, spec in zip(paths, specs):
        if not path.is_file():
            raise failure(check_file(path, spec.md5, spec.size), what, _missing_fix(info, root, fix))
    key = (name, split, specs, *(stat_key(path) for path in paths))
    if key not in PARSED_CACHE:
        for old in [old for old in PARSED_CACHE if old[:2] == key[:2]]:
            del PARSED_CACHE[old]  # keep one parsed copy per split
        reader = _read_idx if info.format == "idx" else _read_cifar
        PARSED_CACHE[key] = reader(info, directory, specs, what, fix)
    images, labels = PARSED_CACHE[key]
    return ImageSet(name, split, images.clone(), labels.clone())


def embedded_mnist_test() -> ImageSet:
    """The MNIST test set packaged with qsnn (byte-identical to the official files)."""
    if not embedded_present():
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
    path = file_path(directory, spec)
    data = path.read_bytes()
    check = check_spec(directory, spec, data)
    if not check.ok:
        raise failure(check, what, fix)
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
