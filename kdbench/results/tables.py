"""Records of reproduced tables: which recipe (as it was), which profile and how many trials.

``kdbench reproduce`` writes ``<results>/tables/<recipe>--<profile>.json``; ``kdbench compare``
re-plans the recipe snapshot stored there, so a table is always read with the run ids it was
trained with, even if the recipe file changed since.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.recipe import Recipe
from kdbench.results.store import atomic_write_json, read_json, tables_dir


@dataclass(frozen=True)
class TableRecord:
    recipe: Recipe
    profile: str
    trials: int
    ci_overrides: dict[str, Any]


def record_table(results: Path, recipe: Recipe, profile: str, trials: int, ci_overrides: dict[str, Any]) -> Path:
    path = tables_dir(results) / f"{recipe.name}--{profile}.json"
    atomic_write_json(path, {
        "recipe": recipe.model_dump(mode="json"), "profile": profile, "trials": trials,
        "ci_overrides": ci_overrides, "updated": time.time(),
    })
    return path


def read_tables(results: Path) -> list[TableRecord]:
    """Every recorded table; a record this kdbench cannot read (damaged, or written by a version whose recipe
    schema differs) is an error that names the file and what to do."""
    records = []
    for path in sorted(tables_dir(results).glob("*.json")):
        try:
            raw = read_json(path)
            records.append(TableRecord(Recipe.model_validate(raw["recipe"]), raw["profile"], raw["trials"],
                                       raw.get("ci_overrides", {})))
        except (ValueError, KeyError, TypeError) as exc:  # json / pydantic errors are ValueErrors
            first = str(exc).splitlines()[0]
            raise KdbenchError(f"{path}: not a readable table record ({type(exc).__name__}: {first}). Delete it and "
                               f"run `kdbench reproduce <recipe> --results {results}` again to record the table: its "
                               f"finished runs are reused, not retrained.") from None
    return records
