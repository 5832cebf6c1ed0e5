"""The results store: one directory per run, atomic writes, and a lock held while a run trains.

Layout of ``<results>/runs/<run-id>/``: ``spec.json`` (what the run is), ``metrics.jsonl`` (one
line per finished epoch), ``checkpoint.pt`` (resume point), ``model.pt`` (final weights),
``result.json`` (written last: its presence means "done"), ``failed.json`` (why a run failed),
``launch.json`` (the local executor's slot, start time and starting epoch of the latest attempt),
``train.log`` and ``.lock``. Tables reproduced from recipes are recorded under ``tables/``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

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


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, then rename it over ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


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
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KdbenchError(f"{path} is corrupted ({exc}). Delete it and re-run to redo this step.") from None


# A run id is one path component (plan.RunSpec.run_id's slug and hash): no '/', no leading '.', so a
# user-given id can never name a path outside ``<results>/runs``.
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Temp files of atomic writes (see :func:`atomic_path`); one left behind means its writer was killed.
TEMP_GLOB = ".*.tmp"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a run id; else a KdbenchError (it could name a path outside the results dir)."""
    if not RUN_ID.fullmatch(run_id):
        raise KdbenchError(f"{run_id!r} is not a run id: run ids are single names under RESULTS/runs/ made of letters, "
                           "digits, '_', '.' and '-' (e.g. kd-resnet8x4-s0-0123456789ab); see `kdbench status` for them.")
    return run_id


class RunLocked(KdbenchError):
    """Another process is training this run right now."""


class RunDir:
    """The files of one run."""

    def __init__(self, results: Path, run_id: str):
        self.run_id = check_run_id(run_id)
        self.path = Path(results) / "runs" / run_id

    spec_file = property(lambda self: self.path / "spec.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    model_file = property(lambda self: self.path / "model.pt")
    result_file = property(lambda self: self.path / "result.json")
    failed_file = property(lambda self: self.path / "failed.json")
    log_file = property(lambda self: self.path / "train.log")
    lock_file = property(lambda self: self.path / ".lock")
    launch_file = property(lambda self: self.path / "launch.json")

    def is_done(self) -> bool:
        return self.result_file.is_file()

    def is_failed(self) -> bool:
        return self.failed_file.is_file() and not self.is_done()

    def result(self) -> dict[str, Any]:
        return read_json(self.result_file)

    def failure(self) -> dict[str, Any]:
        return read_json(self.failed_file)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the whole epoch history atomically (small; never a torn last line)."""
        atomic_write_bytes(self.metrics_file, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def epochs_done(self) -> int:
        """Main training epochs recorded in metrics.jsonl (pre-training stage and import entries not counted)."""
        return sum("phase" not in h for h in self.read_metrics())

    def is_locked(self) -> bool:
        """True while another process holds this run's lock."""
        if not self.lock_file.exists():
            return False
        with open(self.lock_file, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's exclusive lock (released by the OS if the process dies)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(f"run {self.run_id} is being trained by another process (lock {self.lock_file}).") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def tables_dir(results: Path) -> Path:
    return Path(results) / "tables"
