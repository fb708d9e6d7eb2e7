"""qsnn.io: output folder locks, and writes that fail (a full disk...) as one-line errors."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import qsnn.io
from qsnn.errors import QsnnError
from qsnn.io import (
    LOCK_NAME,
    RESUME,
    atomic_path,
    atomic_write,
    folder_lock,
    write_bytes,
    write_json,
)
from qsnn.train.checkpoint import torch_save


def in_use(folder, pid: int | str, option: str = "--out") -> str:
    """The refusal a second writer of ``folder`` gets."""
    return f"{folder} is in use by another qsnn process (pid {pid}); wait for it to finish or choose another {option}"


def fail_writes(monkeypatch, code: int = errno.ENOSPC, *, name: str | None = None, nth: int = 1) -> list[str]:
    """Make the ``nth`` file qsnn.io writes under the name ``name`` (any name: None) land on a
    disk that fails every write with ``code``, as a full disk does; later writes succeed.
    Returns the temporary files opened for ``name`` so far."""
    real_open = open
    opened: list[str] = []

    class Failing(io.FileIO):
        def write(self, data):
            raise OSError(code, os.strerror(code))

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and (name is None or Path(path).name.startswith(f".{name}.")):
            opened.append(str(path))
            if len(opened) == nth:
                return io.BufferedWriter(Failing(path, "wb"))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(qsnn.io, "open", fake_open, raising=False)
    return opened


def dot_files(folder: Path) -> list[str]:
    """Temporary files (.NAME.xxx.tmp) and lock files left in ``folder`` and below."""
    return sorted(p.name for p in folder.rglob(".*"))


HOLDER = (
    "import sys\n"
    "from qsnn.io import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """A second Python process that holds ``folder`` until the block ends; yields it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        if holder.poll() is None:
            holder.stdin.close()
            holder.wait(timeout=30)


# ----------------------------------------------------------------------------- folder locks


def test_a_folder_held_by_another_process_is_refused_with_its_pid(tmp_path):
    folder = tmp_path / "runs" / "x"
    with held_by_another_process(folder) as holder:
        assert (folder / LOCK_NAME).read_text() == f"{holder.pid}\n"
        with pytest.raises(QsnnError) as refused, folder_lock(folder):
            pass
        assert str(refused.value) == in_use(folder, holder.pid)
        with pytest.raises(QsnnError) as refused, folder_lock(folder, option="-o"):
            pass
        assert str(refused.value) == in_use(folder, holder.pid, "-o")
    assert holder.returncode == 0
    assert not folder.exists()  # released: the lock file and the empty folder it made are gone
    with folder_lock(folder) as held:
        assert held == folder
        (folder / "result.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["result.json"]


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    with held_by_another_process(tmp_path) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).read_text() == f"{holder.pid}\n"  # stale: the OS released its lock
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_released_on_errors_and_ctrl_c_and_is_not_reentrant(tmp_path):
    for failure in (QsnnError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(failure)), folder_lock(tmp_path):
            raise failure
        assert list(tmp_path.iterdir()) == []
    with folder_lock(tmp_path):  # a second holder in the same process is refused too
        with pytest.raises(QsnnError) as refused, folder_lock(tmp_path):
            pass
        assert str(refused.value) == in_use(tmp_path, os.getpid())
    with folder_lock(tmp_path):
        pass


def test_a_lock_can_wait_for_its_holder(tmp_path):
    holder = contextlib.ExitStack()
    holder.enter_context(folder_lock(tmp_path))
    timer = threading.Timer(0.3, holder.close)
    timer.start()
    try:
        with folder_lock(tmp_path, wait=20):
            assert (tmp_path / LOCK_NAME).exists()
    finally:
        timer.join()
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(QsnnError) as refused, folder_lock(file):
        pass
    assert str(refused.value) == f"{file} is a file, not a folder; choose another --out"
    with pytest.raises(QsnnError) as refused, folder_lock(file / "sub", option="-o"):
        pass
    assert str(refused.value) == f"{file} is not a folder, so {file / 'sub'} cannot be created; choose another -o"


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    real_open = os.open

    def refused(path, *args, **kwargs):
        if Path(path).name == LOCK_NAME:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(qsnn.io.os, "open", refused)
    with pytest.raises(QsnnError) as caught, folder_lock(tmp_path / "out"):
        pass
    assert str(caught.value) == (
        f"cannot write in {tmp_path / 'out'}: Permission denied; check that you may write to "
        f"{tmp_path / 'out'} and run the command again, or choose another folder"
    )
    assert list(tmp_path.iterdir()) == []


def test_without_fcntl_folders_are_made_but_not_locked(tmp_path, monkeypatch):
    monkeypatch.setattr(qsnn.io, "fcntl", None)
    with folder_lock(tmp_path / "a"), folder_lock(tmp_path / "a"):
        assert list((tmp_path / "a").iterdir()) == []


# ----------------------------------------------------------------------------- failed writes


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "No space left on device; free some space and run the command again"),
        (errno.EDQUOT, "Disk quota exceeded; free some space and run the command again"),
        (errno.EACCES, "Permission denied; check that you may write to {folder} and run the command again, "
                       "or choose another folder"),
        (errno.EROFS, "Read-only file system; {folder} is on a read-only file system; choose another folder"),
        (errno.EIO, "Input/output error; check the disk and run the command again"),
    ],
)
def test_a_failed_write_names_the_file_keeps_the_old_one_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, code, fix
):
    target = tmp_path / "result.json"
    write_json(target, {"old": True})
    fail_writes(monkeypatch, code)
    with pytest.raises(QsnnError) as caught:
        write_json(target, {"new": True})
    assert str(caught.value) == f"cannot write {target}: " + fix.format(folder=tmp_path)
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_checkpoint_that_cannot_be_written_is_one_line_not_a_torch_error(tmp_path, monkeypatch):
    fail_writes(monkeypatch)
    for size in (10, 1_000_000):  # (the error comes from the flush, or from torch's own write)
        with pytest.raises(QsnnError) as caught:
            torch_save(tmp_path / "last.pt", {"weights": torch.zeros(size)}, retry=RESUME)
        assert str(caught.value) == (
            f"cannot write {tmp_path / 'last.pt'}: No space left on device; free some space and resume with --resume"
        )
        assert list(tmp_path.iterdir()) == []
        fail_writes(monkeypatch, nth=1)


def test_the_rename_and_the_temporary_file_are_covered_too(tmp_path, monkeypatch):
    def no_rename(source, target):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(qsnn.io.os, "replace", no_rename)
    with pytest.raises(QsnnError) as caught:
        write_bytes(tmp_path / "w.npz", b"data")
    assert str(caught.value) == f"cannot write {tmp_path / 'w.npz'}: Input/output error; check the disk and run the command again"
    monkeypatch.undo()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qsnn.io.tempfile, "mkstemp", no_space)
    with pytest.raises(QsnnError, match="^cannot write .*w.npz: No space left on device; free some space"):
        write_bytes(tmp_path / "w.npz", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_name_based_writes_are_covered_and_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(QsnnError) as caught, atomic_path(tmp_path / "g.nir") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a library writing by name
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'g.nir'}: No space left on device;")
    # An atomic_write block's own OSErrors (a download's connection, say) are not writes.
    with pytest.raises(ConnectionResetError), atomic_write(tmp_path / "data.gz") as handle:
        handle.write(b"part")
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert list(tmp_path.iterdir()) == []
