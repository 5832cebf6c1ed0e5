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
    records = []
    for path in sorted(tables_dir(results).glob("*.json")):
        raw = read_json(path)
        records.append(TableRecord(Recipe.model_validate(raw["recipe"]), raw["profile"], raw["trials"], raw.get("ci_overrides", {})))
    return records
