"""Finding and checking a dataset's files: sizes and md5 against the registry.

Each file is checked once per process (cached by path, size and mtime); a missing,
truncated or corrupt file is a :class:`FileCheck` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from qsnn.data.registry import (
    ASSETS,
    CHUNK,
    DATASETS,
    TEST_IDX,
    DatasetInfo,
    FileSpec,
    data_root,
    dataset_info,
)
from qsnn.errors import QsnnError

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
PARSED_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_cache() -> None:
    """Forget checksums and parsed arrays (they are otherwise kept for the process)."""
    _MD5_CACHE.clear()
    PARSED_CACHE.clear()


def stat_key(path: Path) -> tuple[str, int, int, int, int]:
    """Identifies one version of a file: a replaced or rewritten file gets a new key."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _md5(path: Path, data: bytes | None = None) -> str:
    key = stat_key(path)
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


def known_file(md5: str | None) -> tuple[str, str] | None:
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
    known = known_file(md5)
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


def fix_hint(name: str, data_dir: str | os.PathLike | None) -> str:
    where = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir not in (None, "") else ""
    return (
        f"run `qsnn data download {name}{where}` or pass --data-dir to a folder that holds "
        f"the original files"
    )


def failure(check: FileCheck, what: str, fix: str) -> QsnnError:
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


def present(directory: Path, spec: FileSpec) -> bool:
    return (directory / spec.name).is_file() or (
        spec.raw_name is not None and (directory / spec.raw_name).is_file()
    )


def dataset_dir(info: DatasetInfo, root: Path) -> Path:
    """The first candidate folder that holds any of the dataset's files."""
    candidates = _candidates(info, root)
    for directory in candidates:
        if any(present(directory, spec) for spec in info.files):
            return directory
    return candidates[0]


def check_spec(directory: Path, spec: FileSpec, data: bytes | None = None) -> FileCheck:
    """Check the gzip file, or its un-gzipped twin when only that one is there."""
    gz = directory / spec.name
    if spec.raw_name is not None and not gz.is_file() and (directory / spec.raw_name).is_file():
        return check_file(directory / spec.raw_name, spec.raw_md5, spec.raw_size, data)
    return check_file(gz, spec.md5, spec.size, data)


def file_path(directory: Path, spec: FileSpec) -> Path:
    gz = directory / spec.name
    if spec.raw_name is not None and not gz.is_file() and (directory / spec.raw_name).is_file():
        return directory / spec.raw_name
    return gz


def embedded_present() -> bool:
    return all((ASSETS / name).is_file() for name in TEST_IDX)


def verify(name: str, data_dir: str | os.PathLike | None = None) -> list[FileCheck]:
    """Check every file of a dataset (and a kept CIFAR archive) against the official md5."""
    info = dataset_info(name)
    check_given_folder(data_dir)
    root = data_root(data_dir)
    directory = dataset_dir(info, root)
    checks = [check_spec(directory, spec) for spec in info.files]
    test_specs = info.split_files("test")
    if name == "mnist" and embedded_present() and not any(present(directory, spec) for spec in test_specs):
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


def check_given_folder(data_dir: str | os.PathLike | None) -> None:
    """A data folder given explicitly must not be a file (a folder that does not exist
    holds no dataset: the files are reported missing, or the packaged MNIST test set,
    byte-identical to the official one, is used)."""
    if data_dir is None or str(data_dir) == "":
        return
    folder = Path(data_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise QsnnError(f"data folder {folder} is a file; give the folder that holds the datasets")
