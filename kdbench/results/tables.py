"""Records of reproduced tables: which recipe (as it was), which profile and how many trials.

``kdbench reproduce`` writes ``<results>/tables/<recipe>--<profile>.json``; ``kdbench compare``
re-plans the recipe snapshot stored there, so a table is always read with the run ids it was
trained with, even if the recipe file changed since.

``cell_trials`` holds the cells reproduced with their own ``--trials`` together with ``--pairs`` / ``--methods``:
such a reproduction changes the trial count of the cells it selected only, never the rest of the table's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.io import atomic_write_json, read_json
from kdbench.plan import Plan, default_trials, plan
from kdbench.recipe import Recipe
from kdbench.store.run_dir import tables_dir


@dataclass(frozen=True)
class TableRecord:
    recipe: Recipe
    profile: str
    trials: int
    ci_overrides: dict[str, Any]
    # (row label, column id) → trials of a cell reproduced with its own --trials (see the module docstring).
    cell_trials: dict[tuple[str, str], int] = field(default_factory=dict)

    def plan(self) -> Plan:
        """The recorded table's plan: every cell with its recorded trial count."""
        return plan(
            self.recipe,
            self.profile,
            trials=self.trials,
            ci_overrides=self.ci_overrides,
            cell_trials=self.cell_trials,
        )


def record_table(
    results: Path,
    recipe: Recipe,
    profile: str,
    trials: int,
    ci_overrides: dict[str, Any],
    cells: Iterable[tuple[str, str]] | None = None,
    explicit_trials: bool = True,
) -> Path:
    """Record the table reproduced with ``trials`` per cell.

    ``cells``: the (row, column) cells this reproduction selected when not the whole table (``--pairs``,
    ``--methods``); then only they take ``trials``, and only when it was asked for (``explicit_trials``, i.e.
    ``--trials``): the record's other cells keep their counts."""
    path = tables_dir(results) / f"{recipe.name}--{profile}.json"
    cell_trials: dict[tuple[str, str], int] = {}
    whole = {(row.label, column.id) for row in recipe.rows for column in recipe.columns}
    if cells is not None and set(cells) != whole:
        previous = read_record(path, results) if path.is_file() else None
        table_trials = previous.trials if previous else default_trials(recipe, profile)
        cell_trials = {
            k: v for k, v in (previous.cell_trials if previous else {}).items() if k in whole
        }
        if explicit_trials:
            for cell in cells:
                cell_trials[cell] = trials
        trials = table_trials
        cell_trials = {k: v for k, v in cell_trials.items() if v != trials}
    atomic_write_json(
        path,
        {
            "recipe": recipe.model_dump(mode="json"),
            "profile": profile,
            "trials": trials,
            "ci_overrides": ci_overrides,
            "updated": time.time(),
            **(
                {
                    "cell_trials": [
                        {"row": r, "column": c, "trials": n}
                        for (r, c), n in sorted(cell_trials.items())
                    ]
                }
                if cell_trials
                else {}
            ),
        },
    )
    return path


def read_record(path: Path, results: Path) -> TableRecord:
    """One table record; one this kdbench cannot read (damaged, or written by a version whose recipe schema
    differs) is an error that names the file and what to do."""
    try:
        raw = read_json(path)
        cell_trials = {
            (c["row"], c["column"]): int(c["trials"]) for c in raw.get("cell_trials", [])
        }
        return TableRecord(
            Recipe.model_validate(raw["recipe"]),
            raw["profile"],
            raw["trials"],
            raw.get("ci_overrides", {}),
            cell_trials,
        )
    except (ValueError, KeyError, TypeError) as exc:  # json / pydantic errors are ValueErrors
        first = str(exc).splitlines()[0]
        raise KdbenchError(
            f"{path}: not a readable table record ({type(exc).__name__}: {first}). Delete it and "
            f"run `kdbench reproduce <recipe> --results {results}` again to record the table: its "
            f"finished runs are reused, not retrained."
        ) from None


def read_tables(results: Path) -> list[TableRecord]:
    """Every recorded table; a record this kdbench cannot read (damaged, or written by a version whose recipe
    schema differs) is an error that names the file and what to do."""
    return [read_record(path, results) for path in sorted(tables_dir(results).glob("*.json"))]
