"""Output paths checked before any work starts, and one run per output folder at a time."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from selfsup.errors import OutputError

LOCK_NAME = ".lock"


def _make_folder(folder: Path, what: str) -> None:
    """Creates ``folder`` and proves it writable by creating a file in it (``os.access`` says yes to root
    on any folder, and to anyone on a read-only mount)."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is an existing file: give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None


def check_output_dir(folder: str | os.PathLike, what: str = "--out") -> Path:
    """``folder`` created if needed and writable; OutputError (one line) otherwise."""
    folder = Path(folder)
    _make_folder(folder, what)
    return folder


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` is not a folder and its folder is writable (created if needed); OutputError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder: give a file path")
    _make_folder(path.parent, f"{what} {path}: its folder")
    return path


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """OutputError when the disk of ``folder`` has less than ``needed_bytes`` free (``what`` says for what)."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputError(f"{folder} has {free / 2**20:.0f} MiB free, but {what} needs about "
                          f"{needed_bytes / 2**20:.0f} MiB: free some space or give another --out")


class RunLock:
    """An exclusive lock on ``folder/.lock`` held while a run writes there. The kernel drops it when the
    process ends, however it ends, so a killed run never leaves a stale lock."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._handle: IO | None = None

    def acquire(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(f"{self.path.parent} is in use by another run (process {holder}); wait for it to end "
                              "or give another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
