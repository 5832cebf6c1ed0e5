"""Reproduce a table: record it, then run its plan's DAG on an executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.execute.local import LocalExecutor, Outcome
from kdbench.plan import Plan
from kdbench.results.tables import record_table


def reproduce_table(table_plan: Plan, results: Path, executor: LocalExecutor, ci_overrides: dict[str, Any]) -> dict[str, Outcome]:
    """Record the table under ``results/tables`` (so compare can find it) and train its runs."""
    record_table(results, table_plan.recipe, table_plan.profile, table_plan.trials, ci_overrides)
    return executor.execute(table_plan.ordered(), results)
