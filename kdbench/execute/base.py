"""What every executor shares: the :class:`Executor` protocol, a run's :class:`Outcome`, the
:class:`Listener` of run events, why a run cannot start (:func:`blocker`), how many processes a run
takes, and whether a finished run can be reused.

The backends are sibling packages (``execute/local/``, ``execute/slurm/``) that import this module and
never each other. The exit codes of a training process (``kdbench train``, a worker) are in
``kdbench/processes.py``: the trainer, below this layer, exits with them.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from kdbench.errors import KdbenchError
from kdbench.plan import RunSpec
from kdbench.store.run_dir import RunDir

Status = Literal["done", "failed", "skipped"]
# Events a listener receives: started (message: the slot), waiting (trained elsewhere, or a queued SLURM
# job), pending (to be started again), reused, and the statuses done, failed, skipped (message: why).
Listener = Callable[[str, RunSpec, str], None]
WAIT = "wait"  # blocker(): a dependency is still to finish


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: Status
    message: str = ""
    reused: bool = False


class Executor(Protocol):
    """What reproduce needs of an executor (LocalExecutor, SlurmExecutor): run a DAG, one outcome per run."""

    listener: Listener
    # Runs that can train at once (the ETA of the progress view).
    parallel: int
    # What an interrupted reproduce says of the runs in progress.
    interrupted: str

    def execute(self, specs: Sequence[RunSpec], results: Path) -> dict[str, Outcome]: ...


def blocker(spec: RunSpec, outcomes: Mapping[str, Outcome], unfinished: Container[str] = ()) -> str:
    """Why ``spec`` cannot run because a dependency did not finish, :data:`WAIT` while a dependency in
    ``unfinished`` has no outcome yet, else ''. Dependencies are read in order: the first that decides wins."""
    for dep in spec.dependencies:
        if dep in outcomes:
            if outcomes[dep].status != "done":
                kind = (
                    "teacher run"
                    if spec.teacher is not None and dep == spec.teacher.run_id
                    else "run"
                )
                return f"{kind} {dep} {outcomes[dep].status}: {outcomes[dep].message}"
        elif dep in unfinished:
            return WAIT
    return ""


def process_count(spec: RunSpec, gpus_per_run: int) -> int:
    """Processes (GPUs, or CPU ranks) a run takes: ``gpus_per_run`` for every trained run, teachers and students
    alike; one for an imported teacher checkpoint (only evaluated) and for methods that cannot be split over
    processes (``Needs.splits_over_processes``: CRD, SemCKD)."""
    from kdbench import methods

    if spec.checkpoint is not None or not methods.get(spec.method).needs.splits_over_processes:
        return 1
    return gpus_per_run


def unusable(rundir: RunDir) -> str:
    """Why a finished run cannot be reused (its spec is not its id's, or its result is corrupted), else ''."""
    try:
        rundir.verified_result()
    except KdbenchError as exc:
        return str(exc)
    except OSError as exc:  # e.g. spec.json missing beside a result.json
        return f"run {rundir.path.name} cannot be verified ({exc}); {rundir.repair_hint()}"
    return ""
