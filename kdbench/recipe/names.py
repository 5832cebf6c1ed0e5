"""Names a recipe refers to (models, methods, dataset, released teachers) checked against the registries at load time.

The schema (``schema.py``) checks the recipe's shape; this module checks that every name in it is
registered, so a typo is reported with the file, line and key before anything is planned, with the
nearest valid name.

The registries (methods, models, datasets, released teachers) are imported by the functions that read
them, not by this module: the recipe package sits below them in the import direction (they import torch
and the data layer, and ``data/identity.py`` imports ``kdbench.recipe``), so ``import kdbench.recipe``
stays free of torch and of those layers, and only validating a recipe reaches up into them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from kdbench.errors import KdbenchError, UnknownNameError, did_you_mean
from kdbench.recipe.overrides import origin
from kdbench.recipe.schema import Recipe

Located = tuple[tuple[str | int, ...], KdbenchError]


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
        yield (
            ("dataset", "name"),
            UnknownNameError("dataset", recipe.dataset.name, datasets.DATASETS),
        )
    for key, teacher in recipe.teachers.items():
        yield from model(("teachers", key, "model"), teacher.model)
        if teacher.released is not None and teacher.released not in RELEASED:
            yield (
                ("teachers", key, "released"),
                UnknownNameError("released teacher", teacher.released, RELEASED),
            )
    for i, column in enumerate(recipe.columns):
        yield from model(("columns", i, "student"), column.student)
    for i, row in enumerate(recipe.rows):
        if row.method != "teacher" and not methods.is_known(row.method):
            yield (
                ("rows", i, "method"),
                UnknownNameError("method", row.method, [*methods.known_names(), "teacher"]),
            )


def invalid_params(recipe: Recipe) -> Iterator[Located]:
    """(key path, error) for each row parameter its method's schema refuses (a negative weight, a temperature ≤ 0,
    an unknown name), checked with the variant the plan will use; so it is reported with its line at load."""
    from kdbench import methods

    for i, row in enumerate(recipe.rows):
        if row.is_teacher_row or not methods.is_implemented(row.method):
            continue
        cls = methods.get(row.method)
        preset = recipe.protocol.preset
        variant = (
            row.variant
            if row.variant in cls.variants
            else preset
            if row.variant is None and preset in cls.variants
            else None
        )
        given = [
            (("params",), row.params, row.params),
            *(
                (("params_by_column", column), {**row.params, **own}, own)
                for column, own in row.params_by_column.items()
            ),
        ]
        for where, overrides, own in given:
            try:
                methods.resolve_params(row.method, variant, overrides)
            except ValidationError as exc:
                for err in exc.errors():
                    if err["loc"] and err["loc"][0] not in own:
                        continue  # a row-level value: reported once, under params
                    name = ".".join(str(p) for p in err["loc"])
                    valid = list(cls.Params.model_fields)
                    why = (
                        f"unknown parameter of {row.method}.{did_you_mean(name, valid)} Parameters: {', '.join(valid)}"
                        if err["type"] == "extra_forbidden"
                        else f"{err['msg']} (got {err.get('input')!r})"
                    )
                    yield ("rows", i, *where, *err["loc"]), KdbenchError(why)


def explain(
    path: Path,
    found: list[Located],
    lines: dict[tuple, int],
    origins: dict[tuple, str] | None = None,
) -> str:
    """One line per unknown name or invalid parameter: ``file:line: key 'a.b': unknown ... Did you mean ...?``
    (``origins``: key paths set by ``--set`` arguments, named instead of the file's line)."""
    messages = []
    for loc, exc in found:
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
        key = ".".join(str(p) for p in loc)
        if (argument := origin(loc, origins or {})) is not None:
            messages.append(f"{path}: --set {argument}: key '{key}': {exc}")
        else:
            messages.append(
                f"{path}:{line}: key '{key}': {exc}" if line else f"{path}: key '{key}': {exc}"
            )
    return "invalid recipe\n  " + "\n  ".join(messages)
