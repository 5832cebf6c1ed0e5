"""CI regression mode: compare this run's cells with a stored compare CSV, failing closed.

Every baseline cell with a result must be found again (same recipe, profile, row, column and
metric); one that is not is *missing*, and the gate fails unless missing cells are allowed. A
found cell regresses when it now has no result (failed or not run) or our mean dropped by more
than ``tolerance`` accuracy points. A baseline with no result at all checks nothing and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError

KEY = ["recipe", "profile", "row", "column", "metric"]


@dataclass(frozen=True)
class GateReport:
    """What the gate found: cells that regressed, and baseline cells not found in this comparison."""

    checked: int
    regressed: list[str]
    missing: list[str]


def regressions(current: pd.DataFrame, baseline: Path, tolerance: float) -> GateReport:
    """Hold ``current`` (compare's cells) against the baseline CSV's cells that have a result."""
    base = _read_baseline(baseline)
    merged = base.merge(current, on=KEY, how="left", suffixes=("_baseline", ""), indicator=True)
    regressed, missing = [], []
    for _, cell in merged.iterrows():
        where = f"{cell['recipe']} [{cell['profile']}] {cell['row']} × {cell['column']} ({cell['metric']} epoch)"
        if cell["_merge"] == "left_only":
            missing.append(where)
        elif cell["n"] == 0:
            regressed.append(
                f"{where}: had {cell['ours_mean_baseline']:.2f}, now no result ({cell['status']})"
            )
        elif cell["ours_mean"] < cell["ours_mean_baseline"] - tolerance:
            regressed.append(
                f"{where}: {cell['ours_mean']:.2f} < baseline {cell['ours_mean_baseline']:.2f} − {tolerance:g}"
            )
    return GateReport(len(merged), regressed, missing)


def _read_baseline(baseline: Path) -> pd.DataFrame:
    """The baseline's accuracy cells that have a result; refused when there are none."""
    if not baseline.is_file():
        raise KdbenchError(
            f"baseline {baseline} does not exist: write one with `kdbench compare RESULTS --format csv -o {baseline}`."
        )
    try:
        base = pd.read_csv(baseline)
    except (
        ValueError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
    ) as exc:  # incl. UnicodeDecodeError: binary
        raise KdbenchError(
            f"baseline {baseline} is not a kdbench compare CSV ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}): write one with "
            f"`kdbench compare RESULTS --format csv -o {baseline}`."
        ) from None
    missing = [c for c in [*KEY, "ours_mean", "n"] if c not in base.columns]
    if missing:
        raise KdbenchError(
            f"baseline {baseline} is not a kdbench compare CSV: it lacks the columns {', '.join(missing)}."
        )
    if (
        "quantity" in base.columns
    ):  # accuracy rows only: a recipe's extra quantities are not regression-checked
        base = base[base["quantity"] == "top1"]
    base = base[base["n"] > 0]
    if base.empty:
        raise KdbenchError(
            f"baseline {baseline} has no cell with a result, so it would check nothing: write it from a "
            "results directory whose reproduction finished (`kdbench compare RESULTS --format csv -o FILE`)."
        )
    return base
