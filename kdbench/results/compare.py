"""Join our runs with the published numbers: one row per table cell.

For every reproduced table (or a recipe named explicitly) the recipe is re-planned, each cell's
finished trials are aggregated (mean, sample std, n) and set beside the paper's mean ± std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.plan import plan
from kdbench.recipe import Recipe, load_recipe
from kdbench.results.collect import collect
from kdbench.results.tables import TableRecord, read_tables
from kdbench.results.verdict import judge

CELL_COLUMNS = [
    "recipe", "table", "profile", "row", "column", "teacher", "teacher_checkpoint", "student", "method", "metric",
    "paper_mean", "paper_std", "paper_n", "literature", "ours_mean", "ours_std", "n", "n_planned", "n_failed",
    "delta", "status", "verdict", "p_value", "test",
]
METRICS = ("best", "last")


@dataclass(frozen=True)
class TableComparison:
    recipe: Recipe
    profile: str
    metric: str
    cells: pd.DataFrame  # CELL_COLUMNS, in the recipe's row-major order


def compare(results: Path, recipe: str | None = None, metric: str | None = None, alpha: float = 0.05) -> list[TableComparison]:
    """Comparisons for every table reproduced under ``results`` (or only ``recipe``).

    A recipe that was never reproduced there is still compared (full profile, no results), so
    the published numbers can be listed before anything has run.
    """
    if metric is not None and metric not in METRICS:
        raise KdbenchError(f"unknown metric {metric!r}: use 'best' (best epoch) or 'last' (last epoch).")
    records = read_tables(results)
    if recipe is not None:
        wanted = load_recipe(recipe).name
        records = [r for r in records if r.recipe.name == wanted] or [_unreproduced(recipe)]
    runs = collect(results)
    return [_compare_table(record, runs.set_index("run_id"), metric or record.recipe.metric, alpha) for record in records]


def _unreproduced(recipe: str) -> TableRecord:
    loaded = load_recipe(recipe)
    return TableRecord(loaded, "full", loaded.trials, {})


def _compare_table(record: TableRecord, runs: pd.DataFrame, metric: str, alpha: float) -> TableComparison:
    recipe = record.recipe
    table_plan = plan(recipe, record.profile, trials=record.trials, ci_overrides=record.ci_overrides)
    rows_by_label = {r.label: r for r in recipe.rows}
    out = []
    for cell in table_plan.cells:
        column = recipe.column(cell.column)
        paper = rows_by_label[cell.row].paper.get(cell.column)
        known = runs.loc[runs.index.intersection(list(cell.run_ids))]
        done = known[known["status"] == "done"][f"{metric}_top1"].astype(float)
        n_failed = int((known["status"] == "failed").sum())
        ours_mean = float(done.mean()) if len(done) else float("nan")
        ours_std = float(done.std(ddof=1)) if len(done) > 1 else float("nan")
        row = rows_by_label[cell.row]
        paper_mean = paper.mean if paper else float("nan")
        paper_std = paper.std if paper and paper.std is not None else float("nan")
        paper_n = 1 if row.is_teacher_row else recipe.paper_trials
        status = _status(cell.status, len(done), len(cell.run_ids), n_failed)
        verdict = judge(ours_mean, ours_std, len(done), paper_mean, paper_std, paper_n, alpha)
        out.append({
            "recipe": recipe.name, "table": recipe.table, "profile": record.profile,
            "row": cell.row, "column": cell.column, "teacher": recipe.teachers[column.teacher].label,
            # The column's teacher came from a checkpoint file (its sha256), not from training.
            "teacher_checkpoint": checkpoint.sha256 if (checkpoint := recipe.teachers[column.teacher].checkpoint) else "",
            "student": column.label, "method": cell.method, "metric": metric,
            "paper_mean": paper_mean, "paper_std": paper_std, "paper_n": paper_n, "literature": row.literature or "",
            "ours_mean": ours_mean, "ours_std": ours_std, "n": len(done), "n_planned": len(cell.run_ids),
            "n_failed": n_failed, "delta": ours_mean - paper_mean, "status": status,
            # A verdict needs published and own numbers: otherwise the status says why there is none.
            "verdict": verdict.verdict if len(done) and paper else status if not len(done) else "no published number",
            "p_value": verdict.p_value, "test": verdict.test if len(done) and paper else "",
        })
    return TableComparison(recipe, record.profile, metric, pd.DataFrame(out, columns=CELL_COLUMNS))


def summary(comp: TableComparison) -> dict[str, int]:
    """Cells per outcome: reproduced, not reproduced (above/below), inconclusive, not run (incl. failed)."""
    v = comp.cells["verdict"]
    return {
        "reproduced": int((v == "reproduced").sum()),
        "not reproduced": int(v.isin(["above", "below"]).sum()),
        "inconclusive": int((v == "inconclusive").sum()),
        "not run": int(v.isin(["not run", "failed", "partial", "not implemented"]).sum()),
    }


def _status(plan_status: str, n_done: int, n_planned: int, n_failed: int) -> str:
    if plan_status == "not_implemented":
        return "not implemented"
    if n_done == n_planned:
        return "done"
    if n_failed:
        return "failed"
    return "partial" if n_done else "not run"
