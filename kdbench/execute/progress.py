"""Live view of a reproduction, fed by the executor's events.

On a terminal: a rich Live panel (counts, each running run's slot, epoch x/y and elapsed time, the ETA;
``results/overview.py``) refreshed once a second by rich's own thread, which reads the running runs'
``metrics.jsonl`` and ``launch.json``; finished runs are printed above it as lines. Elsewhere (CI logs):
plain lines only, one per event, with the counts and the ETA after each finished run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console, RenderableType
from rich.live import Live

from kdbench.plan import RunSpec
from kdbench.results.overview import (
    counts_text,
    estimate,
    read_progress,
    render,
    row_for,
)

STATE_OF_EVENT = {
    "started": "running",
    "waiting": "running",
    "reused": "done",
    "done": "done",
    "failed": "failed",
    "skipped": "skipped",
    "pending": "pending",
}
FINISHED_STYLE = {
    "done": "green",
    "reused": "dim",
    "failed": "red",
    "skipped": "yellow",
    "pending": "yellow",
}


class RunProgress:
    """Listener for an executor's events (``execute/base.py``); ``parallel``: runs that can train at once."""

    def __init__(
        self,
        console: Console,
        specs: Sequence[RunSpec],
        results: Path,
        parallel: int,
        title: str = "runs",
    ):
        self.console, self.results, self.parallel, self.title = (
            console,
            Path(results),
            parallel,
            title,
        )
        self.rows = {s.run_id: row_for(s) for s in specs}
        self.lock = threading.RLock()  # rich may redraw (and call renderable) inside a print
        self.live = (
            Live(
                console=console,
                get_renderable=self.renderable,
                refresh_per_second=1,
                transient=True,
            )
            if console.is_terminal
            else None
        )

    def __enter__(self) -> RunProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def renderable(self) -> RenderableType:
        with self.lock:
            self._read()
            return render(self.title, list(self.rows.values()), self.parallel)

    def event(self, kind: str, spec: RunSpec, message: str) -> None:
        row = self.rows[spec.run_id]
        with self.lock:
            row.state = STATE_OF_EVENT[kind]
            row.slot = message if kind == "started" else ""
            row.note = "another process" if kind == "waiting" else ""
            row.started = None
            if kind in ("started", "waiting"):
                if self.live is None:
                    self.console.print(
                        f"{kind:>12} {row.label} ({row.run_id})"
                        + (f" on {message}" if kind == "started" else ""),
                        highlight=False,
                        soft_wrap=True,
                    )
                return
            text = {"reused": "already done", "pending": "restarting"}.get(kind, kind)
            self.console.print(
                f"[{FINISHED_STYLE[kind]}]{text:>12}[/] {row.label} ({row.run_id})"
                + (f": {message}" if message else ""),
                highlight=False,
                soft_wrap=True,
            )
            if self.live is None:
                self._read()
                rows = list(self.rows.values())
                self.console.print(
                    f"{'':>12} {counts_text(rows)}; {estimate(rows, self.parallel).text()}",
                    highlight=False,
                    soft_wrap=True,
                )

    def _read(self) -> None:
        for row in self.rows.values():
            if row.state in ("running", "done"):
                read_progress(row, self.results)
