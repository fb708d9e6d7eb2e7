"""Atomic file writes, output folder locks and run provenance (command, versions, seed).

Every file qsnn writes goes through :func:`atomic_write`: the bytes land in a temporary
file in the same directory, are flushed to disk, then renamed over the target, so a
crash never leaves a half-written checkpoint, result or figure behind. A write that fails
(a full disk, a quota, a read-only file system, permissions, an I/O error) removes the
temporary file and raises a one-line :class:`QsnnError` naming the file and what to do
(:func:`write_error`).

Commands that fill an output folder hold it with :func:`folder_lock` for the whole run,
so that two qsnn processes never write into the same folder at once.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from qsnn import __version__
from qsnn.errors import QsnnError

try:
    import fcntl
except ImportError:  # (Windows: output folders are not locked)
    fcntl = None


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


# --------------------------------------------------------------------------- write errors

RUN_AGAIN = "run the command again"  # what to do once the cause of a failed write is fixed
RESUME = "resume with --resume"  # ... for a training checkpoint


def write_error(path: str | os.PathLike, error: OSError, retry: str = RUN_AGAIN, *, verb: str = "write") -> QsnnError:
    """The one-line :class:`QsnnError` for an OSError met while writing ``path``: the file,
    the reason (no space, quota, read-only, permissions, I/O error...) and what to do;
    ``retry`` is the last step (e.g. "resume with --resume" for a checkpoint)."""
    reason = (error.strerror or str(error) or type(error).__name__).strip().splitlines()[0][:200]
    where = Path(path) if verb == "write in" else Path(path).parent
    code = error.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = f"free some space and {retry}"
    elif code in (errno.EACCES, errno.EPERM):
        fix = f"check that you may write to {where} and {retry}, or choose another folder"
    elif code == errno.EROFS:
        fix = f"{where} is on a read-only file system; choose another folder"
    else:
        fix = f"check the disk and {retry}"
    return QsnnError(f"cannot {verb} {path}: {reason}; {fix}")


class _Output:
    """The file :func:`atomic_write` hands out: a binary file whose failed writes raise the
    :func:`write_error` of the target (and are kept in ``error``: libraries such as torch
    turn what a write raised into their own error)."""

    def __init__(self, handle: BinaryIO, path: Path, retry: str) -> None:
        self._handle, self._path, self._retry = handle, path, retry
        self.error: BaseException | None = None

    def _do(self, operation, *args):
        try:
            return operation(*args)
        except OSError as error:
            self.error = write_error(self._path, error, self._retry)
            raise self.error from error
        except BaseException as error:  # (Ctrl-C inside a library's write callback)
            self.error = error
            raise

    def write(self, data) -> int:
        return self._do(self._handle.write, data)

    def writelines(self, lines) -> None:
        self._do(self._handle.writelines, lines)

    def flush(self) -> None:
        self._do(self._handle.flush)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@contextlib.contextmanager
def _staged(path: str | os.PathLike, retry: str, *, body_writes: bool) -> Iterator[tuple[Path, Path]]:
    """(target, temporary file next to it); the temporary file is renamed over the target
    when the block succeeds and removed when it fails. An OSError of the staging, the
    rename, or (``body_writes``) the block becomes a :func:`write_error`."""
    path = check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise write_error(path, error, retry) from error
    try:
        try:
            yield path, Path(tmp)
        except OSError as error:
            if body_writes:
                raise write_error(path, error, retry) from error
            raise
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as error:
            raise write_error(path, error, retry) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, retry: str = RUN_AGAIN) -> Iterator[Path]:
    """A temporary file name next to ``path``, for libraries that write by name (e.g. NIR's
    HDF5); renamed over ``path``, with the usual permissions, on success. An OSError in
    the block is taken for a failed write of ``path`` (see :func:`write_error`)."""
    with _staged(path, retry, body_writes=True) as (_, tmp):
        yield tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, retry: str = RUN_AGAIN) -> Iterator[BinaryIO]:
    """Open a temporary binary file next to ``path``; rename it over ``path`` on success.

    Writes to the file that fail raise a one-line :class:`QsnnError` naming ``path``;
    other OSErrors of the block (say, of a download being copied) pass unchanged.
    """
    with _staged(path, retry, body_writes=False) as (target, tmp):
        try:
            handle = open(tmp, "wb")  # noqa: SIM115 (closed below, also after a failed write)
        except OSError as error:
            raise write_error(target, error, retry) from error
        try:
            yield _Output(handle, target, retry)
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            except OSError as error:
                raise write_error(target, error, retry) from error
        finally:
            if not handle.closed:  # (a failed write leaves bytes that cannot be flushed)
                with contextlib.suppress(OSError):
                    handle.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes, *, retry: str = RUN_AGAIN) -> None:
    with atomic_write(path, retry=retry) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str, *, retry: str = RUN_AGAIN) -> None:
    write_bytes(path, text.encode("utf-8"), retry=retry)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_json(path: str | os.PathLike, data: Any, *, retry: str = RUN_AGAIN) -> None:
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n", retry=retry)


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


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, retry: str = RUN_AGAIN) -> None:
    """Write dict rows as CSV; the header is the union of keys in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields.extend(key for key in row if key not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue(), retry=retry)


# --------------------------------------------------------------------------- folder locks

LOCK_NAME = ".qsnn.lock"  # in a folder a qsnn process writes into; holds that process's pid
LOCK_POLL = 0.1  # seconds between tries of a lock that is waited for


def _make_folder(folder: Path, option: str) -> list[Path]:
    """Create ``folder`` (and its parents); the folders created, deepest first."""
    if folder.exists() and not folder.is_dir():
        raise QsnnError(f"{folder} is a file, not a folder; choose another {option}")
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise QsnnError(f"{candidate} is not a folder, so {folder} cannot be created; choose another {option}")
            break
        missing.append(candidate)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(folder, error, verb="create") from error
    return missing


def _holder(fd: int) -> str:
    """Who holds the lock file ``fd``: "pid N", or "pid unknown" before it wrote its pid."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _lock(folder: Path, option: str, wait: float) -> int | None:
    """The descriptor of ``folder``'s lock file, locked by this process (None where the
    file system has no locks)."""
    path = folder / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed (its last holder left it empty)
            _make_folder(folder, option)
            continue
        except OSError as error:
            raise write_error(folder, error, verb="write in") from error
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)  # (ENOLCK, EOPNOTSUPP: a file system without locks)
                    return None
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(LOCK_POLL)
                    continue
                raise QsnnError(
                    f"{folder} is in use by another qsnn process ({holder}); "
                    f"wait for it to finish or choose another {option}"
                ) from None
            # The holder before us removes the file on release: a lock on a file that is
            # no longer the folder's lock file locks nothing, so try again.
            try:
                mine = os.fstat(fd)
                current = os.stat(path)
                same = (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            with contextlib.suppress(OSError):  # (only informative: a full disk does not stop the run)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _unlock(folder: Path, fd: int | None, created: list[Path]) -> None:
    if fd is not None:
        try:
            with contextlib.suppress(OSError):  # removed while still held (see _lock)
                os.unlink(folder / LOCK_NAME)
        finally:
            os.close(fd)
    for made in created:  # folders this lock created and nothing filled
        try:
            os.rmdir(made)
        except OSError:
            break


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, *, option: str = "--out", wait: float = 0.0) -> Iterator[Path]:
    """Hold ``path`` (a folder, created if needed) for this process while the block runs.

    Another qsnn process that asks for the same folder meanwhile gets a one-line
    :class:`QsnnError` naming this process's pid ("... is in use by another qsnn process
    (pid 1234); wait for it to finish or choose another --out"); ``option`` is the option
    that chose the folder, ``wait`` how many seconds to keep trying first.

    The lock is an ``fcntl.flock`` on ``path/.qsnn.lock``: the operating system releases
    it when the process ends in any way, so a killed run never leaves the folder locked.
    The file holds the pid and is removed on release (also on an exception or Ctrl-C),
    and so is a folder the lock created that is still empty. Locks are not re-entrant:
    a second ``folder_lock`` of the same folder in the same process is refused too.
    Without ``fcntl`` (Windows) the folder is created and not locked.
    """
    folder = Path(path)
    created = _make_folder(folder, option)
    try:
        fd = _lock(folder, option, wait) if fcntl is not None else None
    except BaseException:
        _unlock(folder, None, created)
        raise
    try:
        yield folder
    finally:
        _unlock(folder, fd, created)


def _version(package: str) -> str:
    """An installed package's version, without importing it (the NumPy runner never loads torch)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(seed: int | None = None) -> dict[str, Any]:
    """What is needed to re-make a number: the command line, versions, platform and seed."""
    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "qsnn": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "seed": seed,
    }


SEAL = "sha256"  # the manifest key of a sealed file's checksum


def content_digest(manifest: dict, arrays: Mapping) -> str:
    """The seal of a file made of a JSON manifest and NumPy arrays (converted networks,
    qsnn-int packages): sha256 over the manifest (keys sorted, as ``json.dumps(...,
    sort_keys=True)`` writes it, its own ``sha256`` key left out), then every array's
    ``name|dtype.str|shape|`` and bytes (C order), in name order."""
    digest = hashlib.sha256()
    described = {key: value for key, value in manifest.items() if key != SEAL}
    digest.update(json.dumps(described, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_sealed_npz(path: str | os.PathLike, manifest: dict, arrays: dict, *, default=None) -> None:
    """Write ``arrays`` and the JSON ``manifest`` (as it reads back, ``default`` turning
    what JSON does not hold into what it does) as one .npz, sealed with
    :func:`content_digest`, atomically."""
    manifest = json.loads(json.dumps(manifest, default=default))
    manifest[SEAL] = content_digest(manifest, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, manifest=np.array(json.dumps(manifest)))
    write_bytes(path, buffer.getvalue())
