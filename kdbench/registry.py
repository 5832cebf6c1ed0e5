"""One registry shape for every kind of named thing: methods, models, datasets, loaders, executors.

A ``Registry[T]`` maps names to entries of one kind. Entries are added by the ``register`` decorator
(one decorator per registered thing, as in timm and torchdistill) or ``add``; a lookup of an unknown
name raises :class:`UnknownNameError`, which lists the known names and the closest one. A registry may
name an entry-point group (``kdbench/plugins.py``): installed plugins' entries are loaded at its first
lookup, so ``kdbench --help`` imports no plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdbench.errors import KdbenchError, UnknownNameError

T = TypeVar("T")
E = TypeVar("E")


class Registry(Generic[T]):
    """Names → entries of one kind (``kind`` is the word used in error messages: "method", "model", …)."""

    def __init__(self, kind: str, *, plugins: str | None = None):
        self.kind = kind
        self.plugins = plugins  # an entry-point group, loaded at the first lookup
        self._entries: dict[str, T] = {}
        self._plugins_loaded = plugins is None

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise KdbenchError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator form of :meth:`add` for entries that are the decorated object itself."""

        def decorator(entry: E) -> E:
            self.add(name, entry)  # type: ignore[arg-type]  # E is T at every call site
            return entry

        return decorator

    def registered(self, name: str) -> T | None:
        """The entry already added under ``name`` (else None), without loading plugins: for the checks of a
        registration, which runs while the built-ins or a plugin are being imported."""
        return self._entries.get(name)

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first: a plugin that looks itself up must not recurse
            from kdbench import plugins  # importlib.metadata: only when a lookup needs it

            plugins.load(self.plugins or "")

    def get(self, name: str) -> T:
        """The entry called ``name``, else an UnknownNameError naming the closest known name."""
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)
