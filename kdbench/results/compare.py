"""Join our runs with the published numbers: one row per table cell.

For every reproduced table (or a recipe named explicitly) the recipe is re-planned, each cell's
finished trials are aggregated (mean, sample std, n) and set beside the paper's mean ± std, with the
verdict of ``results/verdict.py`` at the table's margin. A recipe's extra per-cell quantities (a test
loss, a pruning ratio) get rows of their own (``TableComparison.quantities``).

Each cell reads the epoch its row, else its column, else the recipe names (``Recipe.cell_metric``);
``metric=`` (``compare --metric``) overrides every cell. The margin is ``margin=`` (``--margin``), else
the recipe's ``margin``, else ``verdict.DEFAULT_MARGIN``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from kdbench import methods
from kdbench.errors import KdbenchError
from kdbench.plan import Plan
from kdbench.recipe import Column, Quantity, Recipe, Row, load_recipe
from kdbench.results import quantities as q
from kdbench.results.collect import collect
from kdbench.results.tables import TableRecord, read_tables
from kdbench.results.verdict import DEFAULT_MARGIN, Verdict, judge

CELL_COLUMNS = [
    "recipe",
    "table",
    "profile",
    "row",
    "column",
    "teacher",
    "teacher_checkpoint",
    "student",
    "method",
    "metric",
    "paper_mean",
    "paper_std",
    "paper_n",
    "literature",
    "ours_mean",
    "ours_std",
    "n",
    "n_planned",
    "n_failed",
    "delta",
    "status",
    "verdict",
    "p_value",
    "test",
    "n_unverified",  # finished trials whose files have no recorded checksum: counted, and marked (RunDir.unverified)
    "margin",
    "ci_level",
    "ci_low",
    "ci_high",
    "trials_needed",
    "detail",
    "precision",  # the finished trials' precisions, "+"-joined: more than one means the cell pools precisions
]
QUANTITY_COLUMNS = [
    "recipe",
    "table",
    "profile",
    "row",
    "column",
    "quantity",
    "label",
    "source",
    "metric",
    "paper_mean",
    "paper_std",
    "ours_mean",
    "ours_std",
    "n",
    "delta",
    "verdict",
    "p_value",
    "test",
    "margin",
    "ci_level",
    "ci_low",
    "ci_high",
    "trials_needed",
    "detail",
]
METRICS = ("best", "last")


@dataclass(frozen=True)
class TableComparison:
    recipe: Recipe
    profile: str
    metric: str  # the table's: --metric, else the recipe's; each cell's own is its "metric" column
    cells: pd.DataFrame  # CELL_COLUMNS, in the recipe's row-major order
    quantities: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=QUANTITY_COLUMNS)
    )  # per cell × quantity
    margin: float = DEFAULT_MARGIN  # δ of the accuracy verdicts, in points
    alpha: float = 0.05  # the verdicts' level; their intervals are (1 − 2α)
    # Why some of the table's runs are not plain numbers: corrupted (counted as failed), unverified, failed; one line each.
    problems: tuple[str, ...] = ()


def compare(
    results: Path,
    recipe: str | None = None,
    metric: str | None = None,
    alpha: float = 0.05,
    margin: float | None = None,
    *,
    teachers: str | None = None,
) -> list[TableComparison]:
    """Comparisons for every table reproduced under ``results`` (or only ``recipe``); ``teachers`` (released/trained)
    compares the runs of that teacher source instead of the one each table was reproduced with.

    A recipe that was never reproduced there is still compared (full profile, no results), so
    the published numbers can be listed before anything has run. ``metric`` overrides every cell's;
    ``margin`` every recipe's.
    """
    if metric is not None and metric not in METRICS:
        raise KdbenchError(
            f"unknown metric {metric!r}: use 'best' (best epoch) or 'last' (last epoch)."
        )
    if not 0 < alpha < 0.5:
        raise KdbenchError(
            f"--alpha {alpha}: the verdicts' (1 − 2α) interval needs 0 < alpha < 0.5 (default 0.05)."
        )
    if margin is not None and not margin > 0:
        raise KdbenchError(
            f"--margin {margin}: the equivalence margin is a positive number of accuracy points "
            f"(default {DEFAULT_MARGIN:g})."
        )
    records = read_tables(results)
    if recipe is not None:
        wanted = load_recipe(recipe).name
        records = [r for r in records if r.recipe.name == wanted] or [_unreproduced(recipe)]
    if teachers is not None:
        records = [
            dataclasses.replace(r, recipe=r.recipe.with_teacher_source(teachers)) for r in records
        ]
    runs = collect(results)
    return [
        _compare_table(record, runs.set_index("run_id"), metric, alpha, margin)
        for record in records
    ]


def _unreproduced(recipe: str) -> TableRecord:
    loaded = load_recipe(recipe)
    return TableRecord(loaded, "full", loaded.trials, {})


def _compare_table(
    record: TableRecord,
    runs: pd.DataFrame,
    metric_override: str | None,
    alpha: float,
    margin_override: float | None,
) -> TableComparison:
    recipe = record.recipe
    margin = margin_override or recipe.margin or DEFAULT_MARGIN
    table_plan = record.plan()
    rows_by_label = {r.label: r for r in recipe.rows}
    out, extra = [], []
    for cell in table_plan.cells:
        column, row = recipe.column(cell.column), rows_by_label[cell.row]
        metric = metric_override or recipe.cell_metric(row, column)
        known = runs.loc[runs.index.intersection(list(cell.run_ids))]
        finished = known[known["status"].isin(["done", "unverified"])]
        n_failed = int(
            known["status"].isin(["failed", "corrupted"]).sum()
        )  # a corrupted run counts as failed
        done = _accuracies(finished, column, cell.method, metric, recipe.training.epochs)
        paper = row.paper.get(cell.column)
        if (
            paper is None and row.is_teacher_row
        ):  # the teacher's published accuracy, from the teachers list
            paper = recipe.teachers[column.teacher].paper
        ours_mean = float(done.mean()) if len(done) else float("nan")
        ours_std = float(done.std(ddof=1)) if len(done) > 1 else float("nan")
        paper_mean = paper.mean if paper else float("nan")
        paper_std = paper.std if paper and paper.std is not None else float("nan")
        paper_n = 1 if row.is_teacher_row else recipe.paper_trials
        status = _status(cell.status, len(done), len(cell.run_ids), n_failed)
        verdict = judge(
            ours_mean=ours_mean,
            ours_std=ours_std,
            n=len(done),
            paper_mean=paper_mean,
            paper_std=paper_std,
            paper_n=paper_n,
            alpha=alpha,
            margin=margin,
        )
        judged = bool(len(done) and paper)
        out.append(
            {
                "recipe": recipe.name,
                "table": recipe.table,
                "profile": record.profile,
                "row": cell.row,
                "column": cell.column,
                "teacher": recipe.teachers[column.teacher].label,
                # The column's teacher came from a checkpoint file (its sha256), not from training.
                "teacher_checkpoint": checkpoint.sha256
                if (checkpoint := recipe.teachers[column.teacher].checkpoint)
                else "",
                "student": column.label,
                "method": cell.method,
                "metric": metric,
                "paper_mean": paper_mean,
                "paper_std": paper_std,
                "paper_n": paper_n,
                "literature": row.literature or "",
                "ours_mean": ours_mean,
                "ours_std": ours_std,
                "n": len(done),
                "n_planned": len(cell.run_ids),
                "n_failed": n_failed,
                "delta": ours_mean - paper_mean,
                "status": status,
                # A verdict needs published and own numbers: otherwise the status says why there is none.
                "verdict": verdict.verdict
                if judged
                else status
                if not len(done)
                else "no published number",
                "p_value": verdict.p_value,
                "test": verdict.test if judged else "",
                **_verdict_fields(verdict, judged, alpha),
                "precision": pooled_precision(finished),
                "n_unverified": int((finished["status"] == "unverified").sum()),
            }
        )
        if (
            cell.status == "planned" and row.paper_quantities
        ):  # the rows that print the recipe's quantities
            extra += [
                _quantity(
                    record,
                    table_plan,
                    row,
                    cell.column,
                    cell.run_ids,
                    finished,
                    quantity,
                    metric,
                    alpha,
                )
                for quantity in recipe.quantities
            ]
    cells, quantities = (
        pd.DataFrame(out, columns=CELL_COLUMNS),
        pd.DataFrame(extra, columns=QUANTITY_COLUMNS),
    )
    for frame in (cells, quantities):  # a count or blank, not a float, in the CSV
        frame["trials_needed"] = frame["trials_needed"].astype("Int64")
    planned = list(dict.fromkeys(run_id for cell in table_plan.cells for run_id in cell.run_ids))
    troubled = runs.loc[runs.index.intersection(planned)]
    problems = tuple(
        f"{status}: {message}"
        for status, message in zip(troubled["status"], troubled["message"])
        if status in ("corrupted", "unverified", "failed") and message
    )
    return TableComparison(
        recipe,
        record.profile,
        metric_override or recipe.metric,
        cells,
        quantities,
        margin,
        alpha,
        problems,
    )


def _verdict_fields(verdict: Verdict, judged: bool, alpha: float) -> dict:
    """The verdict's margin, (1 − 2α) interval, trials needed and detail, as CSV columns (blank: no verdict)."""
    if not judged:
        return {
            "margin": verdict.margin,
            "ci_level": 1 - 2 * alpha,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "trials_needed": None,
            "detail": "",
        }
    return {
        "margin": verdict.margin,
        "ci_level": 1 - 2 * alpha,
        "ci_low": verdict.ci_low,
        "ci_high": verdict.ci_high,
        "trials_needed": verdict.trials_needed,
        "detail": verdict.detail,
    }


def pooled_precision(finished: pd.DataFrame) -> str:
    """The precisions of a cell's finished trials, sorted and "+"-joined ("bf16", "bf16+faithful"); "" if none says.
    A cell never pools trials of different precision silently: the renderers mark such a cell (render.py)."""
    return "+".join(sorted({p for p in finished["precision"] if isinstance(p, str) and p}))


def is_mixed_precision(precision: str) -> bool:
    return "+" in precision


def _accuracies(
    finished: pd.DataFrame, column: Column, method: str, metric: str, recipe_epochs: int
) -> pd.Series:
    """The column's accuracy of each finished run: the method's prediction (top-1 or top-5, at the end or at
    ``column.at_epoch``), or the column's evaluation head."""
    if column.at_epoch is not None:
        return pd.Series(
            [_at_epoch(curve, column, metric, recipe_epochs) for curve in finished["curve"]],
            dtype=float,
        )
    if (
        column.head is None
        or method == "teacher"
        or column.head == methods.get(method).prediction_head
    ):
        return finished[f"{metric}_{column.measure}"].astype(float)
    return pd.Series(
        [
            float(heads[column.head][f"{metric}_top1"])
            for heads in finished["heads"]
            if column.head in (heads or {})
        ],
        dtype=float,
    )


def _at_epoch(curve: list[dict], column: Column, metric: str, recipe_epochs: int) -> float:
    """A run's accuracy at ``column.at_epoch`` of the full protocol, scaled to the run's own length (shorter
    profiles): the best epoch up to there (metric 'best'), or that epoch itself ('last'). An imported teacher
    has one evaluation."""
    assert column.at_epoch is not None
    key = f"test_{column.measure}"
    if len(curve) == 1 and curve[0]["epoch"] == 0:
        return float(curve[0][key])
    epochs = len(curve)
    upto = (
        epochs
        if column.at_epoch == recipe_epochs
        else max(1, round(column.at_epoch * epochs / recipe_epochs))
    )
    seen = [h[key] for h in curve if h["epoch"] <= upto]
    return float(max(seen) if metric == "best" else seen[-1])


def _quantity(
    record: TableRecord,
    table_plan: Plan,
    row: Row,
    column_id: str,
    run_ids: tuple[str, ...],
    finished: pd.DataFrame,
    quantity: Quantity,
    metric: str,
    alpha: float,
) -> dict:
    """One extra number of a cell: measured over its trials, or computed from its networks."""
    paper = row.paper_quantities.get(column_id, {}).get(quantity.id)
    paper_mean = paper.mean if paper else float("nan")
    paper_std = paper.std if paper and paper.std is not None else float("nan")
    if quantity.source in q.COMPUTED:
        try:
            value = q.computed(quantity, table_plan.specs[run_ids[0]])
        except KdbenchError:
            value = float("nan")
        values, test = [value], "computed from parameter counts"
        verdict = (
            ("matches" if q.is_close(value, paper_mean, paper.decimals) else "differs")
            if paper
            else "no published number"
        )
        p_value = float("nan")
        fields = {
            "margin": float("nan"),
            "ci_level": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "trials_needed": None,
            "detail": "",
        }
    else:
        assert quantity.margin is not None  # required of measured quantities (recipe.Quantity)
        values = q.measured(quantity, finished, metric)
        outcome = judge(
            ours_mean=_mean(values),
            ours_std=_std(values),
            n=len(values),
            paper_mean=paper_mean,
            paper_std=paper_std,
            paper_n=record.recipe.paper_trials,
            alpha=alpha,
            margin=quantity.margin,
        )
        verdict = (outcome.verdict if paper else "no published number") if values else "not run"
        test, p_value = (outcome.test, outcome.p_value) if values and paper else ("", float("nan"))
        fields = _verdict_fields(outcome, bool(values and paper), alpha)
    recipe = record.recipe
    return {
        "recipe": recipe.name,
        "table": recipe.table,
        "profile": record.profile,
        "row": row.label,
        "column": column_id,
        "quantity": quantity.id,
        "label": quantity.label,
        "source": quantity.source,
        "metric": metric,
        "paper_mean": paper_mean,
        "paper_std": paper_std,
        "ours_mean": _mean(values),
        "ours_std": _std(values),
        "n": len(values),
        "delta": _mean(values) - paper_mean,
        "verdict": verdict,
        "p_value": p_value,
        "test": test,
        **fields,
    }


def _mean(values: list[float]) -> float:
    return float(pd.Series(values, dtype=float).mean()) if values else float("nan")


def _std(values: list[float]) -> float:
    return float(pd.Series(values, dtype=float).std(ddof=1)) if len(values) > 1 else float("nan")


def summary(comp: TableComparison) -> dict[str, int]:
    """Cells per outcome: reproduced, not reproduced (above/below), inconclusive, failed (no finished trial, a failed
    one), not run (nothing run, or not implemented)."""
    v = comp.cells["verdict"]
    return {
        "reproduced": int((v == "reproduced").sum()),
        "not reproduced": int(v.isin(["above", "below"]).sum()),
        "inconclusive": int((v == "inconclusive").sum()),
        "failed": int((v == "failed").sum()),
        "not run": int(v.isin(["not run", "not implemented"]).sum()),
    }


def select(
    comp: TableComparison, pairs: list[str] | None = None, rows: list[str] | None = None
) -> TableComparison:
    """Only the cells of these pairs (column ids) and rows (row labels or method names), as ``compare --pairs/--methods``."""
    cells, extra = comp.cells, comp.quantities
    if pairs:
        _known(pairs, list(dict.fromkeys(cells["column"])), "pair", comp.recipe.name)
        cells, extra = cells[cells["column"].isin(pairs)], extra[extra["column"].isin(pairs)]
    if rows:
        _known(
            rows,
            list(dict.fromkeys([*cells["row"], *cells["method"]])),
            "row or method",
            comp.recipe.name,
        )
        cells = cells[cells["row"].isin(rows) | cells["method"].isin(rows)]
        extra = extra[extra["row"].isin(set(cells["row"]))]
    return replace(
        comp, cells=cells.reset_index(drop=True), quantities=extra.reset_index(drop=True)
    )


def _known(wanted: list[str], known: list[str], what: str, recipe: str) -> None:
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise KdbenchError(
            f"{recipe} has no {what} {', '.join(map(repr, unknown))}; it has: {', '.join(known)} "
            f"(see `kdbench show {recipe}`)."
        )


def _status(plan_status: str, n_done: int, n_planned: int, n_failed: int) -> str:
    if plan_status == "not_implemented":
        return "not implemented"
    if plan_status == "absent":
        return "absent"
    if n_done == n_planned:
        return "done"
    if n_failed:
        return "failed"
    return "partial" if n_done else "not run"
