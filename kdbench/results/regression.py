"""CI regression mode: compare this run's cells with a stored compare CSV.

A cell regresses when the baseline had a result for it and now it has none (failed or not run),
or our mean dropped by more than ``tolerance`` accuracy points.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError

KEY = ["recipe", "profile", "row", "column", "metric"]


def regressions(current: pd.DataFrame, baseline: Path, tolerance: float) -> list[str]:
    """One message per regressed cell (empty: no regression)."""
    if not baseline.is_file():
        raise KdbenchError(f"baseline {baseline} does not exist: write one with `kdbench compare RESULTS --format csv -o {baseline}`.")
    try:
        base = pd.read_csv(baseline)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:  # incl. UnicodeDecodeError: binary
        raise KdbenchError(f"baseline {baseline} is not a kdbench compare CSV ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}): write one with "
                           f"`kdbench compare RESULTS --format csv -o {baseline}`.") from None
    missing = [c for c in [*KEY, "ours_mean", "n"] if c not in base.columns]
    if missing:
        raise KdbenchError(f"baseline {baseline} is not a kdbench compare CSV: it lacks the columns {', '.join(missing)}.")
    if "quantity" in base.columns:  # accuracy rows only: a recipe's extra quantities are not regression-checked
        base = base[base["quantity"] == "top1"]
    merged = base[base["n"] > 0].merge(current, on=KEY, suffixes=("_baseline", ""))
    messages = []
    for _, cell in merged.iterrows():
        where = f"{cell['recipe']} [{cell['profile']}] {cell['row']} × {cell['column']} ({cell['metric']} epoch)"
        if cell["n"] == 0:
            messages.append(f"{where}: had {cell['ours_mean_baseline']:.2f}, now no result ({cell['status']})")
        elif cell["ours_mean"] < cell["ours_mean_baseline"] - tolerance:
            messages.append(f"{where}: {cell['ours_mean']:.2f} < baseline {cell['ours_mean_baseline']:.2f} − {tolerance:g}")
    return messages
