"""The method registry: names → Distiller classes, built-in and from installed plugins.

Each method file registers its class with ``@register`` (under the class's ``name``); importing
``kdbench.methods`` imports every module of the package, so the built-ins are registered before any
lookup, and the ``kdbench.methods`` entry points (kdbench/plugins.py) are loaded at the first one. A
name ``first+second`` is a combination of two registered methods, built on demand (methods/combined.py).
"""

from __future__ import annotations

from typing import Any

from kdbench import plugins
from kdbench.errors import UnknownNameError
from kdbench.methods.base import Distiller, MethodParams
from kdbench.methods.combined import combine
from kdbench.registry import Registry

METHODS: Registry[type[Distiller]] = Registry("method", plugins=plugins.METHODS)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a Distiller available under its ``name`` (a name already taken is an error)."""
    taken = METHODS.registered(cls.name)
    if taken is not None:
        raise ValueError(
            f"method {cls.name!r} is already registered by {_where(taken)}; "
            f"{_where(cls)} needs another name"
        )
    return METHODS.add(cls.name, cls)


def get(name: str) -> type[Distiller]:
    """A registered method, or a combination ``first+second`` of two (see methods/combined.py)."""
    if "+" in name:
        first, second = name.split("+", 1)
        return combine(get(first), get(second))
    return METHODS.get(name)


def names() -> list[str]:
    """Every registered method: the built-ins and the installed plugins'."""
    return METHODS.names()


def resolve_params(name: str, variant: str | None, overrides: dict[str, Any]) -> MethodParams:
    """Defaults ← variant ← explicit overrides, validated by the method's schema."""
    cls = get(name)
    values: dict[str, Any] = {}
    if variant is not None:
        if variant not in cls.variants:
            raise UnknownNameError(f"variant of {name}", variant, cls.variants)
        values.update(cls.variants[variant].params)
    values.update(overrides)
    return cls.Params(**values)
