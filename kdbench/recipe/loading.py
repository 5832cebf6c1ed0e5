"""Reading a recipe file: the YAML, its key → line map, the validation, and errors that name file, line and key."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.recipe import names as recipe_names
from kdbench.recipe import overrides as recipe_overrides
from kdbench.recipe.files import CATALOG_FILE, recipe_files, resolve_recipe_path
from kdbench.recipe.schema import CatalogEntry, Recipe, strip_optional


def table_catalog() -> list[CatalogEntry]:
    """The tables listed in ``kdbench/recipes/catalog.yaml`` that have no recipe file."""
    data = yaml.safe_load(CATALOG_FILE.read_text()) if CATALOG_FILE.is_file() else {"tables": []}
    have = recipe_files()
    try:
        entries = [CatalogEntry.model_validate(entry) for entry in data["tables"]]
    except ValidationError as exc:
        raise KdbenchError(
            _explain(CATALOG_FILE, exc, _key_lines(CATALOG_FILE.read_text()))
        ) from None
    return [e for e in entries if e.name not in have]


# A recipe is a few KB (the largest shipped one: 8 KB, ~2,000 YAML nodes). Bigger inputs, or anchors and aliases
# that expand to more nodes (a "billion laughs" file), are refused before anything is built from them.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_NODES = 100_000


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """The YAML file's data and its key path → line map, refusing (with the file and line) what a recipe never is:
    not UTF-8 text, over :data:`MAX_RECIPE_BYTES`, more than :data:`MAX_RECIPE_NODES` nodes once aliases are
    expanded, nested too deeply, or a key given twice in one mapping (YAML would silently keep the last)."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise KdbenchError(
                f"{path}: {size:,} bytes is not a recipe (recipes are a few KB; the limit is "
                f"{MAX_RECIPE_BYTES:,} bytes). Check that this is the file you meant."
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise KdbenchError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KdbenchError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): a recipe "
            "is a YAML text file saved as UTF-8. Re-save it as UTF-8, or check that this is the file "
            "you meant."
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _check_expanded_size(path, root)
        lines = _node_lines(path, root)
        return loader.construct_document(root), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise KdbenchError(
            f"{path}{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None
    except RecursionError:
        raise KdbenchError(
            f"{path}: nested too deeply to be a recipe (lists or mappings inside each other "
            "hundreds of levels deep)."
        ) from None
    finally:
        loader.dispose()


def _check_expanded_size(path: Path, root: yaml.Node) -> None:
    """Refuse a document whose node tree, with every alias expanded, exceeds :data:`MAX_RECIPE_NODES`; counted on the
    composed graph (each shared node once, memoised), so a billion-laughs file costs microseconds, not the RAM."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise KdbenchError(
                    f"{path}:{node.start_mark.line + 1}: an alias refers to the mapping or list that "
                    "contains it (a recursive anchor): a recipe is a finite tree."
                )
            return sizes[key]
        sizes[key] = -1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_RECIPE_NODES:
                raise KdbenchError(
                    f"{path}:{node.start_mark.line + 1}: this YAML expands to more than "
                    f"{MAX_RECIPE_NODES:,} values once its anchors and aliases (&name, *name) are "
                    "expanded; recipes have a few thousand. Write the values out instead of nesting aliases."
                )
        sizes[key] = total
        return total

    size(root)


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The validated recipe, after applying ``overrides`` (``--set PATH=VALUE``, kdbench/recipe/overrides.py)."""
    path = resolve_recipe_path(str(name_or_path))
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise KdbenchError(
            f"{path}: a recipe is a YAML mapping (key: value lines); got {type(data).__name__}."
        )
    data, origins = recipe_overrides.apply(data, overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise KdbenchError(_explain(path, exc, lines, origins)) from None
    unknown = [*recipe_names.unknown_names(recipe), *recipe_names.invalid_params(recipe)]
    if unknown:
        raise KdbenchError(recipe_names.explain(path, unknown, lines, origins))
    return recipe


def _key_lines(text: str) -> dict[tuple, int]:
    """Key path → 1-based line number, from the YAML node tree (no object construction)."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _node_lines(path: Path, root: yaml.Node) -> dict[tuple, int]:
    """:func:`_key_lines` of a composed (size-checked) document, refusing a key given twice in one mapping with the
    line of each: YAML keeps only the last, so the first would be silently ignored."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, where: tuple) -> None:
        lines.setdefault(where, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        dotted = ".".join(str(p) for p in (*where, key.value))
                        raise KdbenchError(
                            f"{path}:{line}: key '{dotted}' is given twice in one mapping (first at line "
                            f"{seen[key.value]}); YAML would silently keep only the last. Remove one."
                        )
                    seen[key.value] = line
                lines[where + (key.value,)] = line
                walk(value, where + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, where + (i,))

    walk(root, ())
    return lines


def _explain(
    path: Path,
    exc: ValidationError,
    lines: dict[tuple, int],
    origins: dict[tuple, str] | None = None,
) -> str:
    """One line per error; ``origins``: key paths set by ``--set`` arguments, named instead of a file line."""
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
        where = f"{path}:{line}" if line else str(path)
        if (argument := recipe_overrides.origin(loc, origins or {})) is not None:
            where = f"{path}: --set {argument}"
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Recipe, loc[:-1])
            hint = did_you_mean(str(loc[-1]), valid)
            messages.append(
                f"{where}: unknown key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}"
            )
        elif err["type"] == "missing":
            messages.append(f"{where}: missing required key '{key}'.")
        elif (
            not loc and (named := _message_key(err)) is not None
        ):  # a whole-recipe check that names its key
            line = next(
                (lines[named[:i]] for i in range(len(named), 0, -1) if named[:i] in lines), None
            )
            messages.append(
                f"{path}:{line}: {err.get('ctx', {}).get('error', err['msg'])}"
                if line
                else f"{where}: {err['msg']}"
            )
        else:
            messages.append(f"{where}: key '{key}': {err['msg']} (got {err.get('input')!r}).")
    return "invalid recipe\n  " + "\n  ".join(messages)


_KEY_IN_MESSAGE = re.compile(r"^(?:Value error, )?([a-z_]+(?:\[\d+\]|\.[A-Za-z0-9_-]+)*)[ :]")


def _message_key(err: Any) -> tuple | None:
    """The key path a whole-recipe error message starts with (``rows[3].label ...`` → ``('rows', 3, 'label')``)."""
    match = _KEY_IN_MESSAGE.match(err["msg"])
    if not match:
        return None
    return tuple(
        int(p) if p.isdigit() else p for p in re.findall(r"[A-Za-z0-9_-]+", match.group(1))
    )


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model found at ``loc``, stepping through lists and dicts."""
    current: Any = model
    for part in loc:
        current = strip_optional(current)
        origin = get_origin(current)
        if origin in (list, tuple):
            current = get_args(current)[0]
        elif origin is dict:
            current = get_args(current)[1]
        elif (
            isinstance(current, type)
            and issubclass(current, BaseModel)
            and part in current.model_fields
        ):
            current = current.model_fields[part].annotation
        else:
            return []
    current = strip_optional(current)
    return (
        list(current.model_fields)
        if isinstance(current, type) and issubclass(current, BaseModel)
        else []
    )
