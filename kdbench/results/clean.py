"""``kdbench clean``: find what can be removed from a results directory safely, then remove it.

Removable: failed runs (``failed.json``, no ``result.json``); orphaned runs (unfinished, and either no
recorded table — ``tables/*.json``, re-planned — refers to them, or they have no readable ``spec.json``);
stray temp files of interrupted atomic writes; and runs named with ``--run``. A run whose lock is held
(running) is never touched, and a finished run only when named. Removal takes the run's lock, so a run
that starts meanwhile is left alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kdbench.errors import KdbenchError
from kdbench.io import TEMP_GLOB
from kdbench.store.run_dir import RUN_ID, RunDir, RunLocked, check_run_id, runs_dir


@dataclass(frozen=True)
class Removal:
    """One thing to remove: a run directory (``run_id`` set) or a stray temp file."""

    path: Path
    reason: str
    run_id: str | None = None
    finished: bool = False  # a finished run: removed only when named, after confirmation


@dataclass
class CleanPlan:
    removals: list[Removal]
    kept: list[str]  # why runs that looked removable are left alone (running, finished)


def referenced_runs(results: Path) -> set[str]:
    """Every run id that a recorded table (``tables/*.json``) plans, teachers and predecessors included."""
    from kdbench.results.tables import read_tables

    try:
        records = read_tables(results)
    except (ValidationError, KeyError) as exc:
        raise KdbenchError(
            f"a table record under {results}/tables cannot be re-planned ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}), so kdbench cannot tell which runs are orphaned. Re-run "
            "`kdbench reproduce` for that table, or clean with --failed / --run only."
        ) from None
    return {rid for r in records for rid in r.plan().specs}


def find(results: Path, *, failed: bool, orphaned: bool, run_ids: list[str]) -> CleanPlan:
    """What ``kdbench clean`` would remove under ``results`` (nothing is removed here)."""
    root = runs_dir(results)
    removals: list[Removal] = []
    kept: list[str] = []
    for run_id in run_ids:
        run = RunDir(results, check_run_id(run_id))
        if not run.path.is_dir():
            raise KdbenchError(
                f"no run {run_id} under {root}: `kdbench status --results {results}` lists the runs."
            )
        if not _inside(root, run.path):
            raise KdbenchError(
                f"{run.path} leads outside {root} (a symlink); kdbench clean removes nothing outside the "
                "results directory. Remove it by hand if you mean to."
            )
        if run.is_locked():
            kept.append(f"{run_id}: running (its lock is held); stop it first")
        else:
            removals.append(Removal(run.path, "named with --run", run_id, finished=run.is_done()))
    referenced = referenced_runs(results) if orphaned else set()
    named = set(run_ids)
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name in named or not RUN_ID.fullmatch(path.name):
            continue
        if not _inside(root, path):
            kept.append(
                f"{path.name}: a symlink, left alone (kdbench clean removes nothing outside {results})"
            )
            continue
        run = RunDir(results, path.name)
        reason = _reason(run, failed, orphaned, referenced)
        if reason is None:
            continue
        if run.is_locked():
            kept.append(f"{run.run_id}: running (its lock is held)")
        elif run.is_done():
            kept.append(
                f"{run.run_id}: finished, not in any recorded table; remove it with --run {run.run_id}"
            )
        else:
            removals.append(Removal(run.path, reason, run.run_id))
    if orphaned:
        removals += _stray_temps(results, {r.path for r in removals})
    return CleanPlan(removals, kept)


def _reason(run: RunDir, failed: bool, orphaned: bool, referenced: set[str]) -> str | None:
    """Why ``run`` is a candidate (failed / orphaned), or None."""
    if failed and run.is_failed():
        return "failed: " + _failure(run)
    if not orphaned:
        return None
    if not run.spec_file.is_file():
        return "orphaned: no spec.json (an interrupted start)"
    if run.run_id not in referenced:
        return "orphaned: no recorded table refers to it"
    return None


def _failure(run: RunDir) -> str:
    try:
        failure = run.failure()
    except KdbenchError:
        return "failed.json unreadable"
    return f"{failure.get('error', '?')}: {failure.get('message', '')}".strip()[:120]


def _stray_temps(results: Path, removed_dirs: set[Path]) -> list[Removal]:
    """Temp files of atomic writes left by killed writers, outside running runs and the dirs already removed."""
    found = []
    for path in sorted(Path(results).rglob(TEMP_GLOB)):
        run_path = _run_path_of(results, path)
        if not path.is_file() or not _inside(Path(results), path) or run_path in removed_dirs:
            continue
        if run_path is not None and RunDir(results, run_path.name).is_locked():
            continue  # its writer may be alive
        found.append(Removal(path, "stray temp file of an interrupted write"))
    return found


def _run_path_of(results: Path, path: Path) -> Path | None:
    """The run directory ``path`` lies in, or None."""
    parts = path.relative_to(results).parts
    return (
        runs_dir(results) / parts[1]
        if len(parts) > 2 and parts[0] == "runs" and RUN_ID.fullmatch(parts[1])
        else None
    )


def _inside(root: Path, path: Path) -> bool:
    """True if ``path`` is no symlink and really lies inside ``root`` (nothing outside it is ever removed)."""
    return not path.is_symlink() and path.resolve().is_relative_to(root.resolve())


def remove(removal: Removal, results: Path) -> bool:
    """Remove one item; a run is removed under its lock. False if a run was started meanwhile (left alone)."""
    if removal.run_id is None:
        removal.path.unlink(missing_ok=True)
        return True
    run = RunDir(results, removal.run_id)
    try:
        with run.lock():
            if removal.finished != run.is_done():
                return False  # it finished (or was redone) since it was found
            shutil.rmtree(run.path)
    except RunLocked:
        return False
    return True


def describe(removal: Removal) -> str:
    return f"{removal.path} ({removal.reason})"
