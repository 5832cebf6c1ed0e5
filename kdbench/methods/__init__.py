"""Method registry. Importing this package imports (and so registers) every method module in it.

The registry (``names()``) holds the implemented methods, built-in and from installed plugins;
``NOT_IMPLEMENTED`` the methods the supported papers' tables use that have no implementation yet.
A recipe row may name either (``is_known``); the second kind is planned and shown as
"not implemented", never dropped and never faked.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdbench.methods.base import (
    Distiller,
    InferenceSize,
    InitStage,
    MethodParams,
    Needs,
    Step,
    Variant,
    parameter_count,
)
from kdbench.methods.registry import get, names, register, resolve_params

# One file per method: importing a module runs its @register (base, combined and registry are imported above).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# The registry is the truth for what is implemented (built-ins and installed plugins: kdbench/plugins.py).
# Beside it, two hand-kept lists with their sources:
# methods a supported paper's table names that kdbench does not implement yet (their rows are planned as
# "not implemented" cells, never dropped and never faked) ...
NOT_IMPLEMENTED: dict[str, str] = {
    "dist-kl": "Huang et al., DIST, NeurIPS 2022, Table 8's 'DIST (KL div.)': relations matched with KL divergence; "
    "not in the released code, and the paper does not say how a class's column is normalised",
}
# ... and the combinations ``a+b`` (methods/combined.py) the tables report, listed by `kdbench methods`.
COMBINATIONS: dict[str, str] = {
    "rkd+mlkd": "RKD combined with MLKD (MLKD appendix Table 2)",
    "reviewkd+mlkd": "ReviewKD combined with MLKD (MLKD appendix Table 2)",
    "reviewkd+ipwd": "ReviewKD combined with IPWD (IPWD appendix Table 2)",
}


def is_implemented(name: str) -> bool:
    """True for a registered method, and for a combination ``a+b`` of registered methods."""
    return all(part in names() for part in name.split("+"))


def is_known(name: str) -> bool:
    """True for a name a recipe may use: every ``+``-part registered or in ``NOT_IMPLEMENTED``."""
    return all(part in known_names() for part in name.split("+"))


def known_names() -> list[str]:
    """The registered methods and the known-but-unimplemented ones."""
    return sorted({*names(), *NOT_IMPLEMENTED})


__all__ = [
    "COMBINATIONS",
    "NOT_IMPLEMENTED",
    "Distiller",
    "InferenceSize",
    "InitStage",
    "MethodParams",
    "Needs",
    "Step",
    "Variant",
    "get",
    "is_implemented",
    "is_known",
    "known_names",
    "names",
    "parameter_count",
    "register",
    "resolve_params",
]
