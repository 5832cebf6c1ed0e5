"""Executors by name: :func:`make_executor` builds the backend that ``kind`` names (``local``, ``slurm``)
from reproduce's options; :data:`EXECUTORS` holds one entry per backend.

This module is the one place that knows every backend; the backends know only ``execute/base.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kdbench.errors import KdbenchError
from kdbench.execute.base import Executor
from kdbench.execute.local.executor import LocalExecutor, LocalOptions, SlotWorkers, detect_slots
from kdbench.execute.slurm.executor import SlurmExecutor, SlurmOptions, Submission
from kdbench.plan import Plan
from kdbench.registry import Registry
from kdbench.train.options import RunOptions


@dataclass(frozen=True)
class ExecutorOptions:
    """What reproduce asks of an executor: how every run trains (``run``: ``kdbench train``'s flags) and each
    backend's own options; a backend reads only its part (the CLI refuses the other backend's flags)."""

    run: RunOptions = field(default_factory=RunOptions)
    local: LocalOptions = field(default_factory=LocalOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    # slurm: stop waiting after this many seconds (the jobs go on), and what to do with the submitted jobs
    # before waiting (reproduce prints their ids).
    wait_timeout_s: float | None = None
    on_submitted: Callable[[Submission], None] | None = None


Builder = Callable[[ExecutorOptions, Plan], Executor]
EXECUTORS: Registry[Builder] = Registry("executor")


def make_executor(kind: str, options: ExecutorOptions, table_plan: Plan) -> Executor:
    """The executor ``kind`` for ``table_plan`` (its runs size the local slots; its name, the SLURM aggregate
    job). Set ``listener`` on the result to follow its runs."""
    return EXECUTORS.get(kind)(options, table_plan)


@EXECUTORS.register("local")
def _local(options: ExecutorOptions, table_plan: Plan) -> LocalExecutor:
    run, local = options.run, options.local
    if local.gpus_per_run < 1:
        raise KdbenchError(
            "--gpus-per-run 0 is for --executor slurm (CPU jobs); a local run takes at least one GPU or CPU slot."
        )
    slots = detect_slots(
        run.device,
        local.runs_per_gpu,
        local.cpu_jobs,
        table_plan.specs.values(),
        teacher_cache=run.compute.teacher_cache,
    )
    return LocalExecutor(
        slots,
        SlotWorkers(run),
        gpus_per_run=local.gpus_per_run,
    )


@EXECUTORS.register("slurm")
def _slurm(options: ExecutorOptions, table_plan: Plan) -> SlurmExecutor:
    return SlurmExecutor(
        options.slurm,
        options.run,
        aggregate=(table_plan.recipe.name, table_plan.profile),
        on_submitted=options.on_submitted,
        timeout_s=options.wait_timeout_s,
    )
