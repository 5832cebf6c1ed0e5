"""Read every run under a results directory into one tidy pandas table (one row per run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.io import read_json
from kdbench.store.run_dir import RUN_ID, RunDir, runs_dir

RUN_COLUMNS = [
    "run_id",
    "status",
    "model",
    "method",
    "profile",
    "seed",
    "teacher_run_id",
    "best_top1",
    "best_top5",
    "best_epoch",
    "last_top1",
    "last_top5",
    "epochs",
    "heads",
    "test_losses",
    "curve",
    "message",
    "precision",
]


def run_status(run: RunDir) -> str:
    """done, running (its lock is held), failed, incomplete (interrupted: resumes), or pending.

    :func:`collect` turns ``done`` into ``corrupted`` when the finished run's files fail verification, and into
    ``unverified`` when they have no recorded checksum (its numbers are kept, marked: RunDir.unverified)."""
    if not run.path.is_dir():
        return "pending"
    if run.is_done():
        return "done"
    if run.is_locked():
        return "running"
    if run.is_failed():
        return "failed"
    return "incomplete"


def _run_paths(root: Path) -> list[Path]:
    """The run directories under ``root`` (other entries, e.g. a stray hidden folder, are not runs)."""
    return sorted(p for p in root.iterdir() if RUN_ID.fullmatch(p.name)) if root.is_dir() else []


def collect(results: Path) -> pd.DataFrame:
    """One row per run directory; metrics are NaN for runs that have not finished."""
    rows = []
    root = runs_dir(results)
    for path in _run_paths(root):
        run = RunDir(results, path.name)
        if not run.spec_file.is_file():
            continue
        spec = read_json(run.spec_file)
        status = run_status(run)
        row = {
            "run_id": path.name,
            "status": status,
            "model": spec["model"],
            "method": spec["method"],
            "profile": spec["profile"],
            "seed": spec["seed"],
            "teacher_run_id": (spec.get("teacher") or {}).get("run_id"),
            "message": "",
        }
        if status == "done":
            try:
                row.update(_finished(run))
                if note := run.unverified():
                    row.update(status="unverified", message=note)
            except (
                KdbenchError
            ) as exc:  # a corrupted file, or a spec that is not this run's: never a number
                row.update(status="corrupted", message=str(exc))
            except OSError as exc:  # e.g. metrics.jsonl unreadable
                row.update(
                    status="corrupted",
                    message=f"run {path.name} cannot be verified ({exc}); {run.repair_hint()}",
                )
        elif status == "failed":
            failure = run.failure()
            row["message"] = f"{failure.get('error')}: {failure.get('message')}"
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _finished(run: RunDir) -> dict:
    """The numbers of a finished run, from its verified files: the result's (extra evaluation heads
    ``{head: {best_top1, last_top1}}`` and test-set loss terms ``{term: {best, last}}`` among them), and the test
    accuracy per epoch of the main schedule, for columns that read a run mid-way (Column.at_epoch)."""
    row = run.verified_result().flat()
    row["curve"] = [
        {"epoch": h.epoch, "test_top1": h.test_top1, "test_top5": h.test_top5}
        for h in run.read_metrics()
        if h.phase != "init"
    ]
    return row
