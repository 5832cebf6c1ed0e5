"""What a reproduction is doing, read from the results store: each run's state, epoch x/y, and an ETA.

Shared by the live view of ``kdbench reproduce`` (``execute/progress.py``) and ``kdbench status``.

ETA basis: seconds per epoch = Σ seconds / Σ epochs over the epochs trained so far, i.e. finished runs
(``result.json``: ``wall_seconds`` over the epochs of its last attempt) and running runs (time since
``launch.json``'s start over the epochs finished since). Remaining epochs (running and pending runs) ×
seconds per epoch ÷ runs in parallel. Runs of different models are averaged together, so the estimate is
rough while only teachers (or only students) have been measured; it is "unknown" before any epoch ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kdbench.errors import KdbenchError
from kdbench.io import read_json
from kdbench.plan import RunSpec
from kdbench.store.run_dir import RunDir

STATES = ("done", "running", "failed", "skipped", "pending")
STYLES = {
    "done": "green",
    "running": "cyan",
    "failed": "red",
    "skipped": "yellow",
    "pending": "dim",
}


@dataclass
class RunRow:
    """One run as the overview shows it."""

    run_id: str
    label: str
    epochs: int
    state: str = "pending"
    slot: str = ""
    epoch: int = 0  # main epochs finished
    started: float | None = None  # when the current attempt started
    epochs_before: int = 0  # epochs finished before the current attempt (a resume)
    seconds: float | None = None  # a finished run: training seconds of its last attempt
    note: str = ""


def row_for(spec: RunSpec) -> RunRow:
    return RunRow(spec.run_id, label(spec), spec.train.epochs if spec.checkpoint is None else 0)


def label(spec: RunSpec) -> str:
    return f"{spec.method} {spec.model} s{spec.seed}"


def read_progress(row: RunRow, results: Path) -> None:
    """Fill ``row``'s epoch, slot, start and (when done) seconds from its run directory."""
    rundir = RunDir(results, row.run_id)
    try:
        if row.state == "done" and row.seconds is None and rundir.is_done():
            result = rundir.recorded_result()
            launch = read_json(rundir.launch_file) if rundir.launch_file.is_file() else {}
            row.epoch = row.epochs
            row.seconds, row.epochs_before = (
                float(result.wall_seconds or 0.0),
                int(launch.get("epochs_before", 0)),
            )
        elif row.state == "running":
            row.epoch = rundir.epochs_done()
            if rundir.launch_file.is_file():
                launch = read_json(rundir.launch_file)
                row.slot = row.slot or launch["slot"]
                row.started, row.epochs_before = (
                    float(launch["started"]),
                    int(launch["epochs_before"]),
                )
    except (
        OSError,
        KeyError,
        ValueError,
        KdbenchError,
    ):  # a run directory being written: read it again next time
        return


@dataclass(frozen=True)
class Eta:
    seconds: float | None
    seconds_per_epoch: float | None
    epochs_left: int
    measured_epochs: int
    parallel: int

    def text(self) -> str:
        if self.epochs_left == 0:
            return "nothing left to train"
        if self.seconds is None:
            return f"ETA unknown until an epoch ends ({self.epochs_left} epochs left)"
        return (
            f"ETA {duration(self.seconds)}: {self.epochs_left} epochs left × {self.seconds_per_epoch:.1f} s/epoch "
            f"(mean of {self.measured_epochs} epoch{'' if self.measured_epochs == 1 else 's'} trained) ÷ {self.parallel} in parallel"
        )


def estimate(rows: Iterable[RunRow], parallel: int, now: float | None = None) -> Eta:
    """The ETA of ``rows`` (basis in the module docstring); ``parallel``: runs that can train at once (capped by the
    runs left)."""
    now = time.time() if now is None else now
    seconds, measured, left, unfinished = 0.0, 0, 0, 0
    for row in rows:
        if row.state == "done" and row.seconds is not None and row.epochs - row.epochs_before > 0:
            seconds, measured = seconds + row.seconds, measured + row.epochs - row.epochs_before
        elif row.state == "running" and row.started is not None and row.epoch > row.epochs_before:
            seconds, measured = (
                seconds + now - row.started,
                measured + row.epoch - row.epochs_before,
            )
        if row.state in ("running", "pending"):
            left, unfinished = left + max(0, row.epochs - row.epoch), unfinished + 1
    parallel = max(1, min(parallel, unfinished))
    if measured == 0 or left == 0:
        return Eta(None, None, left, measured, parallel)
    per_epoch = seconds / measured
    return Eta(left * per_epoch / parallel, per_epoch, left, measured, parallel)


def counts(rows: Iterable[RunRow]) -> dict[str, int]:
    found = dict.fromkeys(STATES, 0)
    for row in rows:
        found[row.state] += 1
    return found


def counts_text(rows: Sequence[RunRow]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts(rows).items())


def render(
    title: str, rows: Sequence[RunRow], parallel: int, now: float | None = None
) -> RenderableType:
    """Counts, one line per running run (slot, epoch x/y, elapsed, its own ETA), and the ETA of the whole."""
    now = time.time() if now is None else now
    eta = estimate(rows, parallel, now)
    line = Text.assemble(*[(f"{n} {state}  ", STYLES[state]) for state, n in counts(rows).items()])
    running = Table(title_justify="left", box=None, pad_edge=False)
    for column in ("running", "slot", "epoch", "elapsed", "ETA"):
        running.add_column(column, no_wrap=True)
    for row in rows:
        if row.state == "running":
            left = run_eta(row, eta.seconds_per_epoch, now)
            running.add_row(
                f"{row.label} ({row.run_id})",
                row.slot or row.note,
                f"{row.epoch}/{row.epochs}",
                duration(now - row.started) if row.started is not None else "—",
                duration(left) if left is not None else "—",
            )
    parts: list[RenderableType] = [Text(title, style="bold"), line]
    if running.row_count:
        parts.append(running)
    parts.append(Text(eta.text()))
    return Group(*parts)


def run_eta(row: RunRow, seconds_per_epoch: float | None, now: float) -> float | None:
    """A running run's time left: its epochs left × its own seconds per epoch so far (else the overall mean)."""
    if row.started is not None and row.epoch > row.epochs_before:
        seconds_per_epoch = (now - row.started) / (row.epoch - row.epochs_before)
    return None if seconds_per_epoch is None else (row.epochs - row.epoch) * seconds_per_epoch


def duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
