"""``--json`` of ``compare``, ``show`` and ``status``: plain JSON for scripts (documented in docs/user-guide.md).

Every document carries ``"kind"`` (``comparison``, ``plan``, ``status``) and ``"schema": 1``; numbers that do not
exist (no run, no published std) are ``null``, never NaN.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.results.compare import TableComparison, summary

SCHEMA = 1


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of plain JSON values (NaN, NA → null; numpy scalars → Python)."""
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in row.items()})
    return out


def _plain(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return value


def comparison(comp: TableComparison) -> dict:
    """One table: its recipe, profile, metric, margin δ, α, the summary counts, every cell and extra quantity (the
    columns of ``compare --format csv``)."""
    r = comp.recipe
    return {
        "kind": "comparison",
        "schema": SCHEMA,
        "recipe": r.name,
        "paper": r.paper,
        "table": r.table,
        "title": r.title,
        "profile": comp.profile,
        "metric": comp.metric,
        "margin": comp.margin,
        "alpha": comp.alpha,
        "summary": summary(comp),
        "cells": _records(comp.cells),
        "quantities": _records(comp.quantities),
    }


def plan_document(table_plan, statuses: dict[str, str]) -> dict:
    """``show --json``: the pairs, and every run with its status (``statuses``: run id → status)."""
    r = table_plan.recipe
    pairs = [
        {
            "id": c.id,
            "teacher": r.teachers[c.teacher].label,
            "teacher_model": r.teachers[c.teacher].model,
            "student": c.label,
            "student_model": c.student,
        }
        for c in r.columns
    ]
    runs = [
        {
            "run_id": s.run_id,
            "method": s.method,
            "model": s.model,
            "teacher_run_id": s.teacher.run_id if s.teacher else None,
            "seed": s.seed,
            "epochs": s.train.epochs,
            "status": statuses[s.run_id],
        }
        for s in table_plan.ordered()
    ]
    return {
        "kind": "plan",
        "schema": SCHEMA,
        "recipe": r.name,
        "paper": r.paper,
        "table": r.table,
        "profile": table_plan.profile,
        "pairs": pairs,
        "runs": runs,
        "done": sum(s == "done" for s in statuses.values()),
        "total": len(statuses),
    }


def status_document(
    results: Path,
    recipe: str | None = None,
    profile: str | None = None,
    teachers: str | None = None,
) -> dict:
    """``status --json``: every run of the table (or under ``results``) with its state, epoch and note, and counts
    (``teachers``: the table planned with that teacher source, as ``status --teachers``)."""
    from kdbench.results.overview import STATES
    from kdbench.results.status import rows_of, stored_specs, table_plan

    scope: dict[str, Any]  # the table's recipe and profile, or the unreadable specs of all runs
    if recipe is not None:
        found = table_plan(results, recipe, profile, teachers)
        rows, scope = (
            rows_of(results, found.ordered()),
            {"recipe": found.recipe.name, "profile": found.profile},
        )
    else:
        specs, unreadable = stored_specs(results)
        rows, scope = (
            rows_of(results, specs),
            {"recipe": None, "profile": None, "unreadable_specs": unreadable},
        )
    runs = [
        {
            k: v
            for k, v in asdict(row).items()
            if k in ("run_id", "label", "state", "epoch", "epochs", "slot", "note")
        }
        for row in rows
    ]
    return {
        "kind": "status",
        "schema": SCHEMA,
        "results": str(results),
        **scope,
        "counts": {state: sum(r.state == state for r in rows) for state in STATES},
        "runs": runs,
    }


def dumps(document: object) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
