"""A lab's own methods, models and recipes from its own installed package, found through entry points.

Three entry-point groups (docs/method-authoring.md, "Methods in your own package"):

* ``kdbench.methods`` and ``kdbench.models``: a module (``pkg.module``) or a callable
  (``pkg.module:function``) to import; importing the module registers its methods / networks with
  the usual decorators (:func:`kdbench.methods.register`, :func:`kdbench.models.register`), and a
  callable is then called with no arguments. Their registries (``kdbench.registry.Registry``) load them.
* ``kdbench.recipes``: a package whose directory holds recipe YAML files (read with
  ``importlib.resources``), searched beside ``kdbench/recipes/`` (see :func:`kdbench.recipe.recipe_files`).

Each group is loaded once per process, lazily, at the first lookup of its registry, so commands that
never look a method up never import a plugin. A plugin that fails to import, or registers a name a
built-in (or another plugin) already has, is one error naming the plugin and its entry point.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path
from types import ModuleType

from kdbench.errors import KdbenchError

METHODS = "kdbench.methods"
MODELS = "kdbench.models"
RECIPES = "kdbench.recipes"


class PluginError(KdbenchError):
    """A plugin's entry point could not be loaded."""


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of ``group``, in a fixed order (distribution, then entry-point name)."""
    found = importlib.metadata.entry_points(group=group)
    return sorted(found, key=lambda ep: (_distribution(ep), ep.name))


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ""


def describe(ep: importlib.metadata.EntryPoint) -> str:
    """How errors name an entry point: ``plugin 'lab-kd' (entry point kdbench.methods: mine = lab_kd.mine)``."""
    return f"plugin {_distribution(ep) or '(no distribution)'!r} (entry point {ep.group}: {ep.name} = {ep.value})"


def load(group: str) -> None:
    """Import every entry point of ``group`` (METHODS or MODELS); its registry calls this once, at its first lookup."""
    for ep in entry_points(group):
        try:
            target = ep.load()
            if callable(target) and not isinstance(target, ModuleType):
                target()
        except Exception as exc:  # any failure of third-party code is reported as the plugin's
            fix = f" (pip uninstall {_distribution(ep)})" if _distribution(ep) else ""
            raise PluginError(
                f"{describe(ep)} failed to load: {type(exc).__name__}: {exc}. "
                f"Fix the plugin or uninstall it{fix}."
            ) from exc


def recipe_dirs() -> list[tuple[Path, str]]:
    """(directory, origin) of every installed ``kdbench.recipes`` entry point: the package's own directory."""
    dirs = []
    for ep in entry_points(RECIPES):
        try:
            root = importlib.resources.files(ep.module)
        except Exception as exc:
            raise PluginError(
                f"{describe(ep)}: cannot import the recipe package {ep.module!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(root, Path) or not root.is_dir():
            raise PluginError(
                f"{describe(ep)}: {ep.module!r} is not a package directory on disk (got {root!r}); "
                "name a regular package (a folder with __init__.py) that holds the recipe YAML files."
            )
        dirs.append((root, describe(ep)))
    return dirs
