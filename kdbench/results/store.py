"""The results store: one directory per run, atomic writes, and a lock held while a run trains.

Layout of ``<results>/runs/<run-id>/``: ``spec.json`` (what the run is), ``metrics.jsonl`` (one
line per finished epoch), ``checkpoint.pt`` (resume point), ``model.pt`` (final weights),
``result.json`` (written last: its presence means "done"), ``failed.json`` (why a run failed),
``launch.json`` (the local executor's slot, start time and starting epoch of the latest attempt),
``train.log``, ``.lock``, ``checksums.json``, and the training curves: TensorBoard event files in ``tb/`` (plus
``wandb/`` or ``mlflow_run_id`` with those loggers; ``kdbench/results/curves.py``). Tables reproduced from recipes are recorded under ``tables/``.

Integrity: ``checkpoint.pt``, ``model.pt``, ``metrics.jsonl`` and ``result.json`` are written through
:meth:`RunDir.write_verified`, which records the sha256 of the new content in ``checksums.json`` *before*
renaming it into place, keeping the previous digest too. A kill at any point therefore leaves a file whose
digest is listed, while a file changed by anything else (truncation, bit rot, a partial copy) is refused
with :class:`CorruptedFile`. Files written before checksums existed (no entry in ``checksums.json``) are read as before,
but a finished run with such a file is *unverified* (:meth:`RunDir.unverified`): ``compare``, ``status`` and
``reproduce`` show its numbers marked as such, never as verified ones (a deleted ``checksums.json`` hides any edit).
A run's ``spec.json`` is checked against its id instead (:meth:`RunDir.check_spec`): the id hashes the spec.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
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


def _atomic_write(
    path: Path,
    write: Callable[[BinaryIO], None],
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
    _atomic_write(path, lambda fh: fh.write(data))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


def atomic_torch_save(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def read_json(path: Path) -> Any:
    """Parse a JSON file; a file that does not parse is a clear error naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KdbenchError(
            f"{path} is corrupted ({exc}). Delete it and re-run to redo this step."
        ) from None


# A run id is one path component (plan.RunSpec.run_id's slug and hash): no '/', no leading '.', so a
# user-given id can never name a path outside ``<results>/runs``.
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Temp files of atomic writes (see :func:`atomic_path`); one left behind means its writer was killed.
TEMP_GLOB = ".*.tmp"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a run id; else a KdbenchError (it could name a path outside the results dir)."""
    if not RUN_ID.fullmatch(run_id):
        raise KdbenchError(
            f"{run_id!r} is not a run id: run ids are single names under RESULTS/runs/ made of letters, "
            "digits, '_', '.' and '-' (e.g. kd-resnet8x4-s0-0123456789ab); see `kdbench status` for them."
        )
    return run_id


class RunLocked(KdbenchError):
    """Another process is training this run right now."""


class RunDir:
    """The files of one run."""

    def __init__(self, results: Path, run_id: str):
        self.run_id = check_run_id(run_id)
        self.path = Path(results) / "runs" / run_id
        # Called with the whole history after each write_metrics (the curve loggers, results/curves.py).
        self.metrics_listeners: list[Callable[[list[dict[str, Any]]], None]] = []

    spec_file = property(lambda self: self.path / "spec.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    model_file = property(lambda self: self.path / "model.pt")
    best_model_file = property(
        lambda self: self.path / "model_best.pt"
    )  # spec keep "best": the best epoch's weights
    result_file = property(lambda self: self.path / "result.json")
    failed_file = property(lambda self: self.path / "failed.json")
    log_file = property(lambda self: self.path / "train.log")
    lock_file = property(lambda self: self.path / ".lock")
    launch_file = property(lambda self: self.path / "launch.json")
    checksums_file = property(lambda self: self.path / "checksums.json")
    tb_dir = property(lambda self: self.path / "tb")  # TensorBoard event files

    def repair_hint(self, *paths: Path) -> str:
        """The command that removes ``paths`` (and ``result.json``) so that the next run redoes what they held."""
        files = " ".join(str(p) for p in dict.fromkeys([*paths, self.result_file]))
        return (
            f"Repair: rm -f {files} and run the same command again (the run resumes from its last intact "
            f"checkpoint, or restarts without one)."
        )

    def _corrupted(self, path: Path, why: str) -> CorruptedFile:
        return CorruptedFile(
            f"run {self.run_id}: {path} {why}; it is not used. {self.repair_hint(path)}"
        )

    def _checksums(self) -> dict[str, list[str]] | None:
        """The recorded digests (newest first per file), or None for a run written before checksums existed."""
        if not self.checksums_file.is_file():
            return None
        try:
            return json.loads(self.checksums_file.read_text())
        except json.JSONDecodeError:
            raise CorruptedFile(
                f"run {self.run_id}: {self.checksums_file} is corrupted, so no file of this run can be "
                f"verified. Repair: delete the run directory {self.path} and run the same command "
                "again to retrain it."
            ) from None

    def write_verified(self, path: Path, write: Callable[[BinaryIO], None]) -> None:
        """Write ``path`` atomically, recording its sha256 before the rename (see the module docstring)."""

        def record(tmp: Path) -> None:
            checksums = self._checksums() or {}
            checksums[path.name] = [sha256_file(tmp), *checksums.get(path.name, [])[:1]]
            atomic_write_json(self.checksums_file, checksums)

        _atomic_write(path, write, record)

    def verified_bytes(self, path: Path) -> bytes:
        """The content of ``path``, refused with :class:`CorruptedFile` unless its digest was recorded."""
        data = (
            path.read_bytes()
        )  # content first, digests second: a concurrent write records before it renames
        digests = (self._checksums() or {}).get(path.name)  # None: written before checksums existed
        if digests is not None and hashlib.sha256(data).hexdigest() not in digests:
            raise self._corrupted(
                path, "does not match its recorded sha256 (truncated or corrupted)"
            )
        return data

    def load_torch(self, path: Path) -> Any:
        """A verified torch file, loaded with ``weights_only=True`` on the CPU."""
        data = self.verified_bytes(path)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise self._corrupted(path, f"cannot be read ({exc})") from None

    def _verified_json(self, path: Path) -> Any:
        try:
            return json.loads(self.verified_bytes(path))
        except json.JSONDecodeError as exc:
            raise self._corrupted(path, f"is not valid JSON ({exc})") from None

    def save_torch(self, path: Path, obj: Any) -> None:
        self.write_verified(path, lambda fh: torch.save(obj, fh))

    def write_result(self, result: dict[str, Any]) -> None:
        self.write_verified(self.result_file, lambda fh: fh.write(_json_bytes(result)))

    def check_spec(self) -> None:
        """Refuse a run directory whose ``spec.json`` no longer hashes to its id (edited, or copied under another id)."""
        from kdbench.plan import (
            RunSpec,  # plan imports nothing from here; imported late to keep the store light
        )

        spec = RunSpec.model_validate(read_json(self.spec_file))
        if spec.run_id != self.run_id:
            raise CorruptedFile(
                f"run {self.run_id}: {self.spec_file} describes run {spec.run_id}, not this one (it was "
                f"edited or copied), so nothing in {self.path} is used. Repair: delete {self.path} and "
                "run the same command again."
            )

    def is_done(self) -> bool:
        return self.result_file.is_file()

    def is_failed(self) -> bool:
        return self.failed_file.is_file() and not self.is_done()

    def result(self) -> dict[str, Any]:
        """The verified ``result.json``."""
        return self._verified_json(self.result_file)

    def verified_result(self) -> dict[str, Any]:
        """A finished run's result, after checking what its readers use: the spec's id, metrics.jsonl, result.json."""
        self.check_spec()
        self.read_metrics()
        return self.result()

    def unverified(self) -> str:
        """'' when every file a finished run's readers use (result.json, metrics.jsonl, model.pt) has a recorded
        sha256; else why not, naming the files and the fix (their content cannot be checked, only shown)."""
        checksums = self._checksums()
        files = [p for p in (self.result_file, self.metrics_file, self.model_file) if p.is_file()]
        missing = [p.name for p in files if p.name not in (checksums or {})]
        if not missing:
            return ""
        why = (
            f"{self.checksums_file} is missing"
            if checksums is None
            else f"{self.checksums_file} lists no digest for them"
        )
        return (
            f"run {self.run_id} is unverified: {', '.join(missing)} have no recorded sha256 ({why}), so an edit or "
            f"corruption cannot be detected; its numbers are shown marked 'unverified'. To trust it, retrain it: "
            f"rm -r {self.path} and run the same command again."
        )

    def failure(self) -> dict[str, Any]:
        return read_json(self.failed_file)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the whole epoch history atomically (small; never a torn last line), then tell the listeners."""
        data = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode()
        self.write_verified(self.metrics_file, lambda fh: fh.write(data))
        for listener in self.metrics_listeners:
            listener(history)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The verified epoch history (empty before the first epoch)."""
        if not self.metrics_file.is_file():
            return []
        text = self.verified_bytes(self.metrics_file).decode(errors="replace")
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise self._corrupted(self.metrics_file, f"is not valid JSON lines ({exc})") from None

    def remove_stale_temps(self) -> list[Path]:
        """Delete temp files left by a process killed mid-write (call only while holding the lock).

        Only temps of files that are written under the lock are touched: an executor writes ``spec.json``
        without it, and may be doing so right now (two reproductions of one table)."""
        locked_names = {
            p.name
            for p in (
                self.checkpoint_file,
                self.model_file,
                self.best_model_file,
                self.metrics_file,
                self.result_file,
                self.failed_file,
                self.checksums_file,
                self.launch_file,
            )
        }
        stale = sorted(
            p for p in self.path.glob(TEMP_GLOB) if p.name[1:].rsplit(".", 2)[0] in locked_names
        )
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

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
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.lock_file, "a")  # noqa: SIM115 - entered below, after the error mapping
        except OSError as exc:
            raise write_failed(self.lock_file, exc) from exc
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(
                    f"run {self.run_id} is being trained by another process (lock {self.lock_file})."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def tables_dir(results: Path) -> Path:
    return Path(results) / "tables"
