"""Reproduce a table: record it, then run its plan's DAG on an executor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.execute.base import Executor, Outcome
from kdbench.plan import Plan, RunSpec
from kdbench.results.tables import record_table
from kdbench.store.run_dir import RunDir

if TYPE_CHECKING:
    from kdbench.execute.slurm.executor import SlurmExecutor, Submission


def reproduce_table(
    table_plan: Plan,
    results: Path,
    executor: Executor,
    ci_overrides: dict[str, Any],
    explicit_trials: bool = True,
) -> dict[str, Outcome]:
    """Record the table under ``results/tables`` (so compare can find it) and train its runs.

    ``explicit_trials``: the plan's trial count was asked for (``--trials``); a subset plan (``--pairs``,
    ``--methods``) then sets it for its own cells only (results/tables.py)."""
    _record(table_plan, results, ci_overrides, explicit_trials)
    return executor.execute(table_plan.ordered(), results)


def reused_in_other_precisions(
    specs: Sequence[RunSpec], results: Path, precision: str
) -> dict[str, str]:
    """Finished runs among ``specs`` that were trained in a precision other than ``precision``, by run id: they are
    reused as they are (precision is not part of the run id), so the table will pool them with new runs."""
    other = {}
    for spec in specs:
        run = RunDir(results, spec.run_id)
        if (
            run.is_done()
            and (trained := run.recorded_result().trained_precision)
            and trained != precision
        ):
            other[spec.run_id] = trained
    return other


def submit_table(
    table_plan: Plan,
    results: Path,
    executor: SlurmExecutor,
    ci_overrides: dict[str, Any],
    explicit_trials: bool = True,
) -> Submission:
    """Record the table and submit its runs without waiting for them (``--no-wait``)."""
    _record(table_plan, results, ci_overrides, explicit_trials)
    return executor.submit(table_plan.ordered(), results)


def _record(
    table_plan: Plan, results: Path, ci_overrides: dict[str, Any], explicit_trials: bool
) -> None:
    cells = [(cell.row, cell.column) for cell in table_plan.cells]
    record_table(
        results,
        table_plan.recipe,
        table_plan.profile,
        table_plan.trials,
        ci_overrides,
        cells,
        explicit_trials,
    )
