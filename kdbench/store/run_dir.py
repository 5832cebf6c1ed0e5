"""The results store: one directory per run, atomic writes, and a lock held while a run trains.

Layout of ``<results>/runs/<run-id>/``: ``spec.json`` (what the run is), ``metrics.jsonl`` (one
line per finished epoch), ``checkpoint.pt`` (resume point), ``model.pt`` (final weights),
``result.json`` (written last: its presence means "done"), ``failed.json`` (why a run failed),
``launch.json`` (the local executor's slot, start time and starting epoch of the latest attempt),
``train.log``, ``.lock``, ``checksums.json``, and the training curves: TensorBoard event files in ``tb/`` (plus
``wandb/`` or ``mlflow_run_id`` with those loggers; ``kdbench/train/curves.py``). Tables reproduced from recipes are recorded under ``tables/``.

Integrity: ``checkpoint.pt``, ``model.pt``, ``metrics.jsonl`` and ``result.json`` are written through
:meth:`RunDir.write_verified`, which records the sha256 of the new content in ``checksums.json`` *before*
renaming it into place, keeping the previous digest too. A kill at any point therefore leaves a file whose
digest is listed, while a file changed by anything else (truncation, bit rot, a partial copy) is refused
with :class:`CorruptedFile`. Files written before checksums existed (no entry in ``checksums.json``) are read as before,
but a finished run with such a file is *unverified* (:meth:`RunDir.unverified`): ``compare``, ``status`` and
``reproduce`` show its numbers marked as such, never as verified ones (a deleted ``checksums.json`` hides any edit).
A run's ``spec.json`` is checked against its id instead (:meth:`RunDir.check_spec`): the id hashes the spec.

``metrics.jsonl`` and ``result.json`` are read and written as the typed records of :mod:`kdbench.store.records`;
one that does not validate is refused as corrupted, naming the file, the line and the field.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from pydantic import ValidationError

from kdbench.errors import KdbenchError
from kdbench.io import (
    TEMP_GLOB,
    CorruptedFile,
    atomic_write,
    atomic_write_json,
    json_bytes,
    read_json,
    sha256_file,
    write_failed,
)
from kdbench.store.records import EpochRecord, RunResult, UnknownSchemaVersion

# A run id is one path component (plan.RunSpec.run_id's slug and hash): no '/', no leading '.', so a
# user-given id can never name a path outside ``<results>/runs``.
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


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
        # Called with the whole history after each write_metrics (the curve loggers, train/curves.py).
        self.metrics_listeners: list[Callable[[list[EpochRecord]], None]] = []

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

    def write_verified(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        """Write ``path`` atomically, recording its sha256 before the rename (see the module docstring)."""

        def record(tmp: Path) -> None:
            checksums = self._checksums() or {}
            checksums[path.name] = [sha256_file(tmp), *checksums.get(path.name, [])[:1]]
            atomic_write_json(self.checksums_file, checksums)

        atomic_write(path, write, record)

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

    def write_result(self, result: RunResult) -> None:
        """Write ``result.json`` (last: its presence means "done")."""
        data = json_bytes(result.to_json())
        self.write_verified(self.result_file, lambda fh: fh.write(data))

    def _record(self, path: Path, parse: Callable[[Any], Any], data: Any, where: str = "") -> Any:
        """``parse(data)``, with what is wrong with a record that does not parse said about ``path``."""
        try:
            return parse(data)
        except UnknownSchemaVersion as exc:
            raise UnknownSchemaVersion(f"run {self.run_id}: {path}{where}: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(repr(p) if p == '' else str(p) for p in e['loc']) or 'the record'}: {e['msg']}"
                for e in exc.errors()
            )
            raise self._corrupted(
                path, f"is not a valid kdbench record{where} ({problems})"
            ) from None
        except ValueError as exc:
            raise self._corrupted(path, f"is not a valid kdbench record{where} ({exc})") from None

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

    def result(self) -> RunResult:
        """The verified ``result.json``."""
        return self._record(
            self.result_file, RunResult.from_json, self._verified_json(self.result_file)
        )

    def recorded_result(self) -> RunResult:
        """``result.json`` as it is, its checksum not checked: for estimates and overviews that must not
        fail on a run being repaired (:meth:`result` is what numbers are read from)."""
        return self._record(self.result_file, RunResult.from_json, read_json(self.result_file))

    def verified_result(self) -> RunResult:
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

    def write_metrics(self, history: list[EpochRecord]) -> None:
        """Rewrite the whole epoch history atomically (small; never a torn last line), then tell the listeners."""
        data = "".join(json.dumps(h.to_json(), sort_keys=True) + "\n" for h in history).encode()
        self.write_verified(self.metrics_file, lambda fh: fh.write(data))
        for listener in self.metrics_listeners:
            listener(history)

    def read_metrics(self) -> list[EpochRecord]:
        """The verified epoch history (empty before the first epoch)."""
        if not self.metrics_file.is_file():
            return []
        text = self.verified_bytes(self.metrics_file).decode(errors="replace")
        try:
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise self._corrupted(self.metrics_file, f"is not valid JSON lines ({exc})") from None
        return [
            self._record(self.metrics_file, EpochRecord.from_json, line, f" (line {i})")
            for i, line in enumerate(lines, 1)
        ]

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
        return sum(h.is_main for h in self.read_metrics())

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
