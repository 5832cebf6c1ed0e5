"""Model zoos (``docs/references.md`` §Model zoos and feature taps): ``create(name)`` builds any registered network.

Importing this package imports every module in it, so a family file registers its networks by being
there (one file per family; ``_*.py`` modules are the families' private helpers).
"""

import importlib
import pkgutil

from kdbench.models.base import Features, KDModel
from kdbench.models.registry import (
    ModelInfo,
    canonical_name,
    create,
    info,
    input_size,
    names,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Features",
    "KDModel",
    "ModelInfo",
    "canonical_name",
    "create",
    "info",
    "input_size",
    "names",
    "register",
]
