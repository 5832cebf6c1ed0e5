"""Crash-safe files for every layer: atomic writes (temp file, fsync, rename), sha256, JSON, and locks.

Nothing here knows about runs; the run directory built on it is :mod:`kdbench.store.run_dir`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from kdbench.errors import KdbenchError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it is fsynced and renamed over ``path``:
    a crash at any point leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WriteFailed(KdbenchError):
    """The file system refused a write (full, read-only, no permission)."""


def write_failed(path: Path, exc: OSError) -> WriteFailed:
    """A :class:`WriteFailed` naming ``path``, why, and what to do; the files already there are intact."""
    why = exc.strerror or str(exc)
    advice = {
        errno.ENOSPC: "free disk space",
        errno.EDQUOT: "free disk space (quota)",
        errno.EROFS: "make the results directory writable (it is on a read-only file system)",
        errno.EACCES: "make the results directory writable",
        errno.EPERM: "make the results directory writable",
        errno.EFBIG: "raise the file-size limit (ulimit -f)",
    }.get(exc.errno or 0, "fix the file system")
    return WriteFailed(
        f"could not write {path}: {why}. Nothing already written was changed; {advice}, then run the "
        "same command again (finished runs are reused, interrupted ones resume)."
    )


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], object],
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Call ``write`` on a temp file beside ``path``, then rename it over ``path`` (see :func:`atomic_path`).

    ``before_rename(tmp)`` runs once the temp file is complete. An ``OSError`` becomes :class:`WriteFailed`."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                write(fh)
            if before_rename is not None:
                before_rename(tmp)
    except OSError as exc:
        raise write_failed(path, exc) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CorruptedFile(KdbenchError):
    """A run's file does not match its recorded checksum, or cannot be parsed: it is never used."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting for another process to release it (released by the OS if we die)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    """Parse a JSON file; a file that does not parse is a clear error naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KdbenchError(
            f"{path} is corrupted ({exc}). Delete it and re-run to redo this step."
        ) from None


# Temp files of atomic writes (see :func:`atomic_path`); one left behind means its writer was killed.
TEMP_GLOB = ".*.tmp"
