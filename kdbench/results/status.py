"""``kdbench status``: a reproduction's runs by state, read from the results store, from any shell.

State of a run: done (``result.json``), running (its lock is held: RunDir.is_locked), failed (``failed.json``),
skipped (not started because a run it depends on failed), pending (everything else, including an
interrupted run that will resume). A table is re-planned from the snapshot ``kdbench reproduce`` recorded
under ``tables/`` (so its run ids are the ones being trained), else from the recipe as it is now.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kdbench.errors import KdbenchError
from kdbench.io import read_json
from kdbench.layout import fit
from kdbench.plan import Plan, RunSpec, dependency_order
from kdbench.results.collect import run_status
from kdbench.results.overview import (
    STATES,
    STYLES,
    RunRow,
    duration,
    read_progress,
    render,
    row_for,
)
from kdbench.results.tables import read_record
from kdbench.store.run_dir import RunDir, runs_dir, tables_dir

STATE = {
    "done": "done",
    "running": "running",
    "failed": "failed",
    "incomplete": "pending",
    "pending": "pending",
}


def table_plan(
    results: Path, recipe: str, profile: str | None, teachers: str | None = None
) -> Plan:
    """The plan of ``recipe``'s table: from its record under ``tables/`` (``profile``: the given one, else the latest
    reproduced), else re-planned from the recipe under ``profile`` (default full); ``teachers``: with its teachers
    from that source (released/trained) instead of the recorded one."""
    from kdbench.plan import plan
    from kdbench.recipe import load_recipe

    name = load_recipe(recipe).name
    records = sorted(
        tables_dir(results).glob(f"{name}--*.json"), key=lambda p: read_json(p).get("updated", 0.0)
    )
    if profile is not None:
        records = [p for p in records if p.name == f"{name}--{profile}.json"]
    if records:
        record = read_record(records[-1], results)
        return dataclasses.replace(
            record, recipe=record.recipe.with_teacher_source(teachers)
        ).plan()
    return plan(load_recipe(recipe).with_teacher_source(teachers), profile or "full")


def rows_of(results: Path, specs: list[RunSpec]) -> list[RunRow]:
    """One row per spec, in order, with its state and progress read from the store.

    A finished run whose files fail verification is ``failed`` with the reason (the file and the ``rm`` that
    repairs it), as ``compare`` counts it and ``reproduce`` reports it; one whose files have no recorded checksum
    stays ``done`` with an ``unverified`` note (RunDir.unverified)."""
    rows: list[RunRow] = []
    states: dict[str, str] = {}
    for spec in specs:
        row = row_for(spec)
        rundir = RunDir(results, spec.run_id)
        row.state = STATE[run_status(rundir)]
        if row.state == "done":
            try:
                rundir.verified_result()
                row.note = rundir.unverified()
            except KdbenchError as exc:
                row.state, row.note = "failed", f"corrupted: {exc}"
            except OSError as exc:
                row.state, row.note = (
                    "failed",
                    f"corrupted: run {spec.run_id} cannot be verified ({exc}); {rundir.repair_hint()}",
                )
        if row.state == "pending" and any(
            states.get(dep) in ("failed", "skipped") for dep in spec.dependencies
        ):
            row.state, row.note = "skipped", "a run it depends on failed"
        elif row.state == "failed" and not row.note:
            failure = RunDir(results, spec.run_id).failure()
            row.note = f"{failure.get('error', 'error')}: {failure.get('message', '')}"
        states[spec.run_id] = row.state
        read_progress(row, results)
        rows.append(row)
    return rows


def stored_specs(results: Path) -> tuple[list[RunSpec], int]:
    """Every run under ``results/runs`` with a readable spec, teachers first; and how many specs were unreadable
    (corrupted, or written by another kdbench version)."""
    specs, unreadable = [], 0
    for path in sorted(runs_dir(results).glob("*/spec.json")):
        try:
            specs.append(RunSpec.model_validate(read_json(path)))
        except (KdbenchError, ValidationError):
            unreadable += 1
    return dependency_order(specs), unreadable


def overview(
    results: Path,
    recipe: str | None = None,
    profile: str | None = None,
    teachers: str | None = None,
    width: int | None = None,
) -> RenderableType:
    """The summary of a table's runs (``recipe``), or of every stored run grouped by state (one record per run where
    the table is wider than ``width``). ``teachers``: plan the table with its teachers from this source
    (released/trained) instead of the recorded one."""
    if recipe is not None:
        found = table_plan(results, recipe, profile, teachers)
        rows = rows_of(results, found.ordered())
        title = f"{found.recipe.name} ({found.profile}) in {results}"
    else:
        specs, unreadable = stored_specs(results)
        rows = rows_of(results, specs)
        title = f"all runs in {results}" + (
            f" ({unreadable} with an unreadable spec.json not shown)" if unreadable else ""
        )
    running = sum(r.state == "running" for r in rows)
    summary = render(title, rows, max(1, running))
    if recipe is None:
        states = by_state(rows)
        return Group(summary, states if width is None else fit(states, width))
    noted = [
        r for r in rows if r.note and r.state != "running"
    ]  # why runs failed, were skipped, are unverified
    if not noted:
        return summary
    states = by_state(noted)
    return Group(summary, states if width is None else fit(states, width))


def changes(
    results: Path,
    recipe: str | None,
    profile: str | None,
    seen: dict[str, tuple],
    teachers: str | None = None,
) -> list[str]:
    """``status --watch`` off a terminal: one line per run whose state, epoch or note changed since ``seen`` (which
    is updated), e.g. ``12:03:04 running kd resnet8x4 s0 (kd-…): epoch 3/240``; every run on the first call."""
    if recipe is not None:
        rows = rows_of(results, table_plan(results, recipe, profile, teachers).ordered())
    else:
        rows = rows_of(results, stored_specs(results)[0])
    stamp, lines = time.strftime("%H:%M:%S"), []
    for row in rows:
        now = (row.state, row.epoch, row.note)
        if seen.get(row.run_id) != now:
            seen[row.run_id] = now
            lines.append(
                f"{stamp} {row.state} {row.label} ({row.run_id}): epoch {row.epoch}/{row.epochs}"
                + (f"; {row.note}" if row.note else "")
            )
    return lines


def by_state(rows: list[RunRow]) -> Table:
    """Every run, grouped by state."""
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("state", "run", "epoch", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for state in STATES:
        for row in (r for r in rows if r.state == state):
            where = (
                f"{row.slot} for {duration(now - row.started)}"
                if row.state == "running" and row.started
                else row.note
            )
            table.add_row(
                Text(state, style=STYLES[state]),
                f"{row.label} ({row.run_id})",
                f"{row.epoch}/{row.epochs}",
                where,
            )
    return table
