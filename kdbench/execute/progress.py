"""Live view of a reproduction: a rich progress bar over runs and one line per finished run."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdbench.plan import RunSpec


class RunProgress:
    """Listener for :class:`~kdbench.execute.local.LocalExecutor` events."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.progress = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = self.progress.add_task("", total=total)
        self.running: set[str] = set()

    def __enter__(self) -> "RunProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, kind: str, spec: RunSpec, message: str) -> None:
        label = f"{spec.method} {spec.model} seed {spec.seed} ({spec.run_id})"
        if kind in ("started", "waiting"):
            self.running.add(spec.run_id)
        else:
            self.running.discard(spec.run_id)
            self.progress.advance(self.task)
            style = {"done": "green", "reused": "dim", "failed": "red", "skipped": "yellow"}[kind]
            text = {"reused": "already done"}.get(kind, kind)
            self.console.print(f"[{style}]{text:>12}[/] {label}" + (f": {message}" if message else ""), highlight=False)
        self.progress.update(self.task, description=f"{len(self.running)} running")
