"""Names a recipe refers to (models, methods, dataset) checked against the registries at load time.

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

    def model(loc: tuple[str | int, ...], name: str) -> Iterator[Located]:
        try:
            models.canonical_name(name)
        except UnknownNameError as exc:
            yield loc, exc

    if recipe.dataset.name not in datasets.DATASETS:
        yield ("dataset", "name"), UnknownNameError("dataset", recipe.dataset.name, datasets.DATASETS)
    for key, teacher in recipe.teachers.items():
        yield from model(("teachers", key, "model"), teacher.model)
    for i, column in enumerate(recipe.columns):
        yield from model(("columns", i, "student"), column.student)
    for i, row in enumerate(recipe.rows):
        if row.method != "teacher" and not methods.is_known(row.method):
            yield ("rows", i, "method"), UnknownNameError("method", row.method, [*methods.known_names(), "teacher"])


def explain(path: Path, found: list[Located], lines: dict[tuple, int], origins: dict[tuple, str] | None = None) -> str:
    """One line per unknown name: ``file:line: key 'a.b': unknown ... Did you mean ...? Known ...``
    (``origins``: key paths set by ``--set`` arguments, named instead of the file's line)."""
    from kdbench.recipe_overrides import origin

    messages = []
    for loc, exc in found:
        line = lines.get(loc)
        key = ".".join(str(p) for p in loc)
        if (argument := origin(loc, origins or {})) is not None:
            messages.append(f"{path}: --set {argument}: key '{key}': {exc}")
        else:
            messages.append(f"{path}:{line}: key '{key}': {exc}" if line else f"{path}: key '{key}': {exc}")
    return "invalid recipe\n  " + "\n  ".join(messages)
