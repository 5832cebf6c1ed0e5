"""``compare --plot FILE.png``: per table, per pair, ours (mean ± std, coloured by verdict) beside the published
value and its ±δ equivalence band."""

from __future__ import annotations

import math
from pathlib import Path

from kdbench.results.compare import TableComparison

COLORS = {"reproduced": "tab:green", "above": "tab:blue", "below": "tab:red"}


def plot(comparisons: list[TableComparison], path: Path) -> Path:
    """One row of panels per table (one panel per pair; methods down the y axis), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(c.cells["column"].nunique() for c in comparisons)
    n_rows_max = max(c.cells["row"].nunique() for c in comparisons)
    width = 2.6 * n_cols + 1.5
    legend_rows = math.ceil(
        6 / max(1, min(6, int(width / 2.1)))
    )  # the legend's 6 entries, ~2.1 in each
    panel_height = 0.35 * n_rows_max + 1.4
    height = panel_height * len(comparisons) + 0.25 * legend_rows + 0.3
    fig, axes = plt.subplots(
        len(comparisons), n_cols, squeeze=False, sharey="row", figsize=(width, height)
    )
    for table_axes, comp in zip(axes, comparisons):
        rows = list(dict.fromkeys(comp.cells["row"]))
        for ax, (column_id, cells) in zip(table_axes, comp.cells.groupby("column", sort=False)):
            for y, row in enumerate(rows):
                cell = cells[cells["row"] == row].iloc[0]
                if not math.isnan(cell["paper_mean"]):
                    ax.plot(
                        [cell["paper_mean"] - comp.margin, cell["paper_mean"] + comp.margin],
                        [y, y],
                        color="0.35",
                        lw=7,
                        alpha=0.15,
                        solid_capstyle="butt",
                    )
                    ax.errorbar(
                        cell["paper_mean"],
                        y + 0.15,
                        xerr=0 if math.isnan(cell["paper_std"]) else cell["paper_std"],
                        fmt="D",
                        mfc="white",
                        color="0.35",
                        ms=5,
                        capsize=2,
                        label="paper" if y == 0 else None,
                    )
                if cell["n"]:
                    ax.errorbar(
                        cell["ours_mean"],
                        y - 0.15,
                        xerr=0 if math.isnan(cell["ours_std"]) else cell["ours_std"],
                        fmt="o",
                        color=COLORS.get(cell["verdict"], "0.6"),
                        ms=5,
                        capsize=2,
                    )
            column = comp.recipe.column(column_id)
            ax.set_title(
                f"{comp.recipe.teachers[column.teacher].label}\n→ {column.label}", fontsize=8
            )
            ax.tick_params(labelsize=7)
            ax.grid(axis="x", alpha=0.3)
        table_axes[0].set_yticks(range(len(rows)), rows)
        table_axes[0].invert_yaxis()
        for ax in table_axes[comp.cells["column"].nunique() :]:
            ax.set_visible(False)
        note = "" if comp.profile == "full" else f" — {comp.profile} profile, not comparable"
        # Above the panels' two-line titles (8 pt each), not over them.
        label = table_axes[0].annotate(
            f"{comp.recipe.name} ({comp.metric} epoch; δ = {comp.margin:g}){note}",
            (0, 1),
            xycoords="axes fraction",
            xytext=(0, 30),
            textcoords="offset points",
            fontsize=9,
            weight="bold",
        )
        label.set_in_layout(False)
    handles = [
        plt.Line2D(
            [], [], marker="D", mfc="white", color="0.35", ls="", label="paper (mean ± std)"
        ),
        plt.Line2D(
            [], [], color="0.35", lw=7, alpha=0.15, label="paper ± δ (reproduced: our CI inside)"
        ),
    ]
    handles += [
        plt.Line2D([], [], marker="o", color=c, ls="", label=f"ours: {v}")
        for v, c in COLORS.items()
    ]
    handles += [plt.Line2D([], [], marker="o", color="0.6", ls="", label="ours: inconclusive")]
    legend = fig.legend(
        handles=handles,
        loc="lower center",
        ncol=math.ceil(len(handles) / legend_rows),
        fontsize=8,
        frameon=False,
    )
    legend.set_in_layout(False)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.1) / height, 1, 1 - 0.55 / height), h_pad=4.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
