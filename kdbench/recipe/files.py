"""Where recipes are: the shipped ones, ``$KDBENCH_RECIPES`` directories and plugins' packages, by name."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import yaml

from kdbench.errors import KdbenchError, UnknownNameError

# The shipped recipes are package data (pyproject.toml [tool.setuptools.package-data]), so an installed wheel has them.
RECIPES_DIR = Path(str(importlib.resources.files("kdbench") / "recipes"))
RECIPES_ENV = (
    "KDBENCH_RECIPES"  # more recipe directories, os.pathsep-separated (kdbench --recipes DIR)
)
CATALOG_FILE = RECIPES_DIR / "catalog.yaml"


def recipe_files() -> dict[str, Path]:
    """Recipe name → file, for every recipe shipped under ``kdbench/recipes/``, in a ``$KDBENCH_RECIPES`` directory
    (``kdbench --recipes DIR``) or in an installed plugin's ``kdbench.recipes`` package. A name two files
    declare is an error naming both, so a plugin cannot silently replace a shipped table."""
    found: dict[str, Path] = {}
    for directory, where in recipe_dirs():
        for path in sorted(directory.rglob("*.yaml")):
            if path == CATALOG_FILE:
                continue
            name = _declared_name(path)
            if name and name in found and found[name] != path:
                raise KdbenchError(
                    f"recipe name {name!r} is declared by two files: {found[name]} and {path} ({where}). "
                    "Rename one (its 'name:' key)."
                )
            if name:
                found[name] = path
    return found


def recipe_dirs() -> list[tuple[Path, str]]:
    """(directory, origin) searched for recipes: ``kdbench/recipes/``, then each ``$KDBENCH_RECIPES`` directory
    (``os.pathsep``-separated; ``kdbench --recipes DIR`` sets it), then the plugins' (kdbench/plugins.py)."""
    from kdbench import plugins

    dirs = [(RECIPES_DIR, "kdbench's recipes")]
    for entry in filter(None, os.environ.get(RECIPES_ENV, "").split(os.pathsep)):
        directory = Path(entry).expanduser()
        if not directory.is_dir():
            raise KdbenchError(
                f"recipe directory {directory} (--recipes / ${RECIPES_ENV}) is not a directory."
            )
        dirs.append((directory, f"--recipes {directory}"))
    return dirs + plugins.recipe_dirs()


def _declared_name(path: Path) -> str | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data.get("name") if isinstance(data, dict) else None


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe name (``simkd-table1``) or a path to a recipe file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise KdbenchError(f"recipe file {path} does not exist.")
        return path
    files = recipe_files()
    if name_or_path not in files:
        raise UnknownNameError("recipe", name_or_path, files)
    return files[name_or_path]
