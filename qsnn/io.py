"""Atomic file writes and run provenance (command, versions, seed).

Every file qsnn writes goes through :func:`atomic_write`: the bytes land in a temporary
file in the same directory, are flushed to disk, then renamed over the target, so a
crash never leaves a half-written checkpoint, result or figure behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from qsnn.errors import QsnnError


def check_target(path: str | os.PathLike) -> Path:
    """``path`` as a file qsnn may write: not a directory, not a device or pipe (a rename
    would replace it), and not below an existing file. Raises a :class:`QsnnError` that
    says what is in the way."""
    path = Path(path)
    if path.is_dir():
        raise QsnnError(f"{path} is a directory; give a file name (e.g. {path / 'out'}...)")
    if path.exists() and not path.is_file():
        raise QsnnError(f"{path} is not a regular file (a device, pipe or socket); write to a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise QsnnError(f"{parent} is not a folder, so {path} cannot be created; choose another path")
            break
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name next to ``path``, for libraries that write by name (e.g. NIR's
    HDF5); renamed over ``path``, with the usual permissions, on success."""
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary binary file next to ``path``; rename it over ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON file ``path``; one that does not parse raises a :class:`QsnnError`."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise QsnnError(
            f"{path} is damaged: not valid JSON ({error.msg}, line {error.lineno}); "
            "re-create it with the command that wrote it"
        ) from None


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows as CSV; the header is the union of keys in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields.extend(key for key in row if key not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_write(path) as handle:
        torch.save(obj, handle)


def provenance(seed: int | None = None) -> dict[str, Any]:
    """What is needed to re-make a number: the command line, versions, platform and seed."""
    import numpy
    import torch

    from qsnn import __version__

    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "qsnn": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": seed,
    }
