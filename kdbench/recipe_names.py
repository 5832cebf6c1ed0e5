"""Names a recipe refers to (models, methods, dataset, released teachers) checked against the registries at load time.

The schema (``recipe.py``) checks the recipe's shape; this module checks that every name in it is
registered, so a typo is reported with the file, line and key before anything is planned, with the
nearest valid name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kdbench.errors import UnknownNameError

if TYPE_CHECKING:
    from kdbench.recipe import Recipe

Located = tuple[tuple[str | int, ...], UnknownNameError]


def unknown_names(recipe: Recipe) -> Iterator[Located]:
    """(key path, error) for each model, method or dataset name of ``recipe`` that is not registered."""
    from kdbench import methods, models
    from kdbench.data import registry as datasets
    from kdbench.models.pretrained import RELEASED

    def model(loc: tuple[str | int, ...], name: str) -> Iterator[Located]:
        try:
            models.canonical_name(name)
        except UnknownNameError as exc:
            yield loc, exc

    if recipe.dataset.name not in datasets.DATASETS:
        yield ("dataset", "name"), UnknownNameError("dataset", recipe.dataset.name, datasets.DATASETS)
    for key, teacher in recipe.teachers.items():
        yield from model(("teachers", key, "model"), teacher.model)
        if teacher.released is not None and teacher.released not in RELEASED:
            yield ("teachers", key, "released"), UnknownNameError("released teacher", teacher.released, RELEASED)
    for i, column in enumerate(recipe.columns):
        yield from model(("columns", i, "student"), column.student)
    catalog = [*methods.CATALOG, "teacher"]
    for i, row in enumerate(recipe.rows):
        if row.method != "teacher" and not all(part in methods.CATALOG for part in row.method.split("+")):
            yield ("rows", i, "method"), UnknownNameError("method", row.method, catalog)


def explain(path: Path, found: list[Located], lines: dict[tuple, int]) -> str:
    """One line per unknown name: ``file:line: key 'a.b': unknown ... Did you mean ...? Known ...``."""
    messages = []
    for loc, exc in found:
        line = lines.get(loc)
        key = ".".join(str(p) for p in loc)
        messages.append(f"{path}:{line}: key '{key}': {exc}" if line else f"{path}: key '{key}': {exc}")
    return "invalid recipe\n  " + "\n  ".join(messages)
