"""Command-line overrides of recipe fields: ``--set training.epochs=120 --set rows.KD.params.kd_temperature=2``.

Each override is ``PATH=VALUE``. ``PATH`` is a dotted path into the recipe's YAML mapping; a list item
is named by its index (``rows.0``) or by its ``id`` (columns, quantities) or ``label`` (rows), e.g.
``columns.wrn40_2_wrn16_2.student`` or ``rows.KD.params.kd_temperature``. ``VALUE`` is read with
``yaml.safe_load`` like a value in the file (``120``, ``0.05``, ``[150, 180, 210]``, ``{a: 1}``, ``null``).
A missing mapping key is created, so an unknown key is reported by the recipe's validation, naming the
``--set`` argument (docs/recipe-authoring.md, "Overriding fields from the command line").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kdbench.errors import KdbenchError, did_you_mean

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Override:
    """One ``--set PATH=VALUE`` argument, parsed."""

    argument: str
    keys: tuple[str, ...]
    value: Any


def parse(argument: str) -> Override:
    """``training.epochs=120`` → Override(keys=("training", "epochs"), value=120)."""
    path, sep, text = argument.partition("=")
    keys = tuple(path.strip().split("."))
    if not sep or not all(keys):
        raise KdbenchError(
            f"--set {argument!r}: expected PATH=VALUE with a dotted PATH, e.g. --set training.epochs=120 "
            "or --set rows.KD.params.kd_temperature=2."
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KdbenchError(
            f"--set {argument!r}: the value is not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    return Override(argument, keys, value)


def apply(
    data: dict[str, Any], arguments: Sequence[str]
) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """A copy of the recipe ``data`` with every override applied in order, and the key path each one set
    (list items as indices, as validation errors locate them) → its argument."""
    data = copy.deepcopy(data)
    origins: dict[KeyPath, str] = {}
    for argument in arguments:
        override = parse(argument)
        origins[_set(data, override)] = argument
    return data, origins


def _set(data: dict[str, Any], override: Override) -> KeyPath:
    node: Any = data
    resolved: list[str | int] = []
    for depth, key in enumerate(override.keys):
        last = depth == len(override.keys) - 1
        here = ".".join(str(k) for k in resolved) or "the recipe"
        if isinstance(node, list):
            index = _index(node, key, override.argument, here)
            resolved.append(index)
            if last:
                node[index] = override.value
            else:
                node = node[index]
        elif isinstance(node, dict):
            resolved.append(key)
            if last:
                node[key] = override.value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            raise KdbenchError(
                f"--set {override.argument}: {here} is a value ({node!r}), not a mapping or a list, "
                f"so it has no key {key!r}."
            )
    return tuple(resolved)


def _index(items: list[Any], key: str, argument: str, where: str) -> int:
    """The item of ``items`` named by ``key``: an index, else the one whose ``id`` (then ``label``) is ``key``."""
    if key.lstrip("-").isdigit():
        index = int(key)
        if not -len(items) <= index < len(items):
            raise KdbenchError(
                f"--set {argument}: {where} has {len(items)} items; index {index} is out of range."
            )
        return index % len(items)
    for field in ("id", "label"):
        matches = [
            i for i, item in enumerate(items) if isinstance(item, dict) and item.get(field) == key
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KdbenchError(
                f"--set {argument}: {len(matches)} items of {where} have {field} {key!r}; name one by index."
            )
    names = [str(item.get("id", item.get("label"))) for item in items if isinstance(item, dict)]
    raise KdbenchError(
        f"--set {argument}: no item of {where} has id or label {key!r}.{did_you_mean(key, names)} "
        f"Name an item by index (0-{len(items) - 1}) or one of: {', '.join(names)}"
    )


def origin(loc: KeyPath, origins: dict[KeyPath, str]) -> str | None:
    """The ``--set`` argument that set ``loc`` or a mapping above it (the last one, as it won)."""
    found = [argument for path, argument in origins.items() if loc[: len(path)] == path]
    return found[-1] if found else None
