"""Local scheduler: run a DAG of RunSpecs as subprocesses on device slots.

One subprocess per run (``kdbench train``), a slot per GPU (``CUDA_VISIBLE_DEVICES``) times
``runs_per_gpu``, or one CPU slot. Teachers run before their students; a failed run is reported
and its dependents are skipped with the reason, while every other run goes on. A run that another
process is already training (its lock is held) is waited for, not trained twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kdbench.plan import RunSpec
from kdbench.results.store import RunDir, atomic_write_json

Status = Literal["done", "failed", "skipped"]
POLL_SECONDS = 0.2
# Exit code of `kdbench train` when another process holds the run's lock (BSD EX_TEMPFAIL).
EXIT_LOCKED = 75


@dataclass(frozen=True)
class Slot:
    """A place a run can execute: a name and the environment it gets (e.g. CUDA_VISIBLE_DEVICES)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: Status
    message: str = ""
    reused: bool = False


def detect_slots(device: str = "auto", runs_per_gpu: int = 1) -> list[Slot]:
    """One slot per visible GPU × ``runs_per_gpu``; a single CPU slot without GPUs or with ``--device cpu``."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return [Slot("cpu")]
    if device.startswith("cuda:"):
        gpus = [device.split(":", 1)[1]]
    else:
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    return [Slot(f"gpu{g}" + (f".{k}" if runs_per_gpu > 1 else ""), {"CUDA_VISIBLE_DEVICES": g})
            for g in gpus for k in range(runs_per_gpu)]


def train_command(spec_file: Path, results: Path, slot: Slot, *, data_dir: str | None = None) -> list[str]:
    """The command an executor runs for one spec: ``python -m kdbench train SPEC``."""
    device = "cpu" if slot.name == "cpu" else "cuda"
    command = [sys.executable, "-m", "kdbench", "train", str(spec_file), "--results", str(results), "--device", device]
    return command + (["--data-dir", data_dir] if data_dir else [])


Command = Callable[[Path, Path, Slot], list[str]]
Listener = Callable[[str, RunSpec, str], None]


class LocalExecutor:
    """Runs specs in dependency order on a fixed set of slots."""

    def __init__(self, slots: Sequence[Slot], command: Command = train_command, listener: Listener | None = None):
        if not slots:
            raise ValueError("at least one slot is needed")
        self.slots = list(slots)
        self.command = command
        self.listener = listener or (lambda event, spec, message: None)

    def execute(self, specs: Sequence[RunSpec], results: Path) -> dict[str, Outcome]:
        results = Path(results)
        by_id = {s.run_id: s for s in specs}
        outcomes: dict[str, Outcome] = {}
        pending = list(specs)
        running: dict[str, tuple[subprocess.Popen | None, Slot]] = {}  # None: trained by another process
        free = list(self.slots)
        while pending or running:
            for run_id, (proc, slot) in list(running.items()):
                if proc is not None and proc.poll() == EXIT_LOCKED:  # lost a race to another process: wait for it
                    running[run_id] = (None, Slot("elsewhere"))
                    free.append(slot)
                    self.listener("waiting", by_id[run_id], "being trained by another process")
                    continue
                outcome = self._poll(by_id[run_id], proc, results)
                if outcome is not None:
                    del running[run_id]
                    if proc is not None:
                        free.append(slot)
                    outcomes[run_id] = outcome
                    self.listener(outcome.status, by_id[run_id], outcome.message)
            for spec in list(pending):
                blocked = self._blocker(spec, outcomes, by_id)
                if blocked == "wait":
                    continue
                rundir = RunDir(results, spec.run_id)
                if blocked:
                    outcomes[spec.run_id] = Outcome(spec.run_id, "skipped", blocked)
                    self.listener("skipped", spec, blocked)
                elif rundir.is_done():
                    outcomes[spec.run_id] = Outcome(spec.run_id, "done", "already finished", reused=True)
                    self.listener("reused", spec, "")
                elif rundir.is_locked():
                    running[spec.run_id] = (None, Slot("elsewhere"))
                    self.listener("waiting", spec, "being trained by another process")
                elif free:
                    slot = free.pop(0)
                    running[spec.run_id] = (self._launch(spec, rundir, results, slot), slot)
                    self.listener("started", spec, slot.name)
                else:
                    continue  # no free slot yet: try again after the next poll
                pending.remove(spec)
            if running:
                time.sleep(POLL_SECONDS)
        return outcomes

    def _blocker(self, spec: RunSpec, outcomes: dict[str, Outcome], by_id: dict[str, RunSpec]) -> str:
        """'' when runnable, 'wait' while a dependency is unfinished, else why it cannot run."""
        if spec.teacher is None:
            return ""
        dep = spec.teacher.run_id
        if dep in outcomes:
            dep_outcome = outcomes[dep]
            return "" if dep_outcome.status == "done" else f"teacher run {dep} {dep_outcome.status}: {dep_outcome.message}"
        return "wait" if dep in by_id else ""

    def _launch(self, spec: RunSpec, rundir: RunDir, results: Path, slot: Slot) -> subprocess.Popen:
        rundir.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rundir.spec_file, spec.model_dump(mode="json"))
        log = open(rundir.path / "executor.log", "ab")
        env = {**os.environ, **slot.env}
        proc = subprocess.Popen(self.command(rundir.spec_file, results, slot), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        log.close()
        return proc

    @staticmethod
    def _poll(spec: RunSpec, proc: subprocess.Popen | None, results: Path) -> Outcome | None:
        rundir = RunDir(results, spec.run_id)
        if proc is None:  # another process holds the lock: wait for it to let go
            if rundir.is_locked():
                return None
        elif proc.poll() is None:
            return None
        if rundir.is_done():
            return Outcome(spec.run_id, "done")
        return Outcome(spec.run_id, "failed", _failure_message(rundir, proc))


def _failure_message(rundir: RunDir, proc: subprocess.Popen | None) -> str:
    if rundir.failed_file.is_file():
        try:
            failure = rundir.failure()
            return f"{failure['error']}: {failure['message']} (log: {rundir.log_file})"
        except Exception:
            pass
    code = f"exit code {proc.returncode}" if proc is not None else "the other process stopped without a result"
    log = rundir.path / "executor.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    return f"{code}{': ' + tail[0] if tail else ''} (log: {log})"
