"""Downloading datasets from their mirrors, checked by size and md5, written atomically.

Each mirror is tried in turn; a download that is cut short or does not match its
checksum is discarded and the next mirror tried. CIFAR archives are extracted member by
member, refusing any member that would land outside the dataset's folder. One process
at a time downloads a dataset (its folder is locked, :func:`qsnn.io.folder_lock`); another
asking meanwhile waits for it, then finds the files there.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from qsnn.data.files import check_file, check_spec, dataset_dir, known_file
from qsnn.data.registry import CHUNK, DatasetInfo, FileSpec, data_root, dataset_info
from qsnn.errors import QsnnError
from qsnn.io import atomic_write, folder_lock

DOWNLOAD_WAIT = 3600.0  # seconds a download waits for another process fetching the same dataset

# --------------------------------------------------------------------------- downloading


class _BadDownload(Exception):
    """A mirror answered, but not with the right bytes."""


def _mirror_url(mirror: str, filename: str) -> str:
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)


def _stream(url: str, target: Path, spec: FileSpec, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``target`` atomically; _BadDownload if size or md5 is wrong."""

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
    directory = dataset_dir(info, root)
    mirrors = list(info.mirrors if mirrors is None else mirrors)
    if all(check_spec(directory, spec).ok for spec in info.files):
        return directory
    held = directory if info.archive is None else (directory.parent if directory.name == info.folder else root / info.name)
    _writable(held)
    # one download of a dataset at a time (e.g. the cells of a sweep run as separate jobs):
    # the others wait, then find the files there
    with folder_lock(held, option="--data-dir", wait=DOWNLOAD_WAIT):
        if all(check_spec(directory, spec).ok for spec in info.files):
            return directory
        return _download_held(info, root, directory, held, mirrors, progress, timeout)


def _download_held(info, root: Path, directory: Path, base: Path, mirrors: list[str], progress: bool,
                   timeout: float) -> Path:
    """The files that are missing or wrong, fetched into ``directory`` (an archive into
    ``base``, then extracted)."""
    if info.archive is None:
        checks = {spec: check_spec(directory, spec) for spec in info.files}
        for check in checks.values():  # all first: never fetch into a folder of another dataset
            owner = (known_file(check.actual_md5) or (None,))[0]
            if owner not in (None, info.name):
                raise QsnnError(
                    f"{check.path} is {owner}'s file, not {info.name}'s; give --data-dir the folder above "
                    f"the datasets ({info.name} goes into its own {info.name}/ folder there)"
                )
        for spec, check in checks.items():
            if not check.ok:
                _fetch(info, spec, directory / spec.name, mirrors, progress, timeout)
        return directory
    archive = base / info.archive.name
    if not check_file(archive, info.archive.md5, info.archive.size).ok:
        kept = root / info.archive.name
        if check_file(kept, info.archive.md5, info.archive.size).ok:
            archive = kept
        else:
            _fetch(info, info.archive, archive, mirrors, progress, timeout)
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
