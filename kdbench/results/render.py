"""Render a table comparison in the paper's layout (rows = methods, columns = pairs).

Formats: a rich terminal table, Markdown, LaTeX, HTML, and CSV (one row per cell, every table).
Each cell carries its verdict and the interval behind it; every table's header states the verdict
rule and its margin δ; each table ends with a summary line. A cell that reads another epoch than the
table's metric says which. Results of the ``smoke`` and ``ci`` profiles carry a label saying they are
not comparable.
"""

from __future__ import annotations

import html
import math

import pandas as pd
from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kdbench.layout import natural_width, wrapped
from kdbench.results.compare import CELL_COLUMNS, TableComparison, is_mixed_precision, summary
from kdbench.results.quantities import COMPUTED

FORMATS = ("table", "markdown", "latex", "html", "csv")
VERDICT_MARKS = {
    "reproduced": "✓ reproduced",
    "above": "▲ above",
    "below": "▼ below",
    "inconclusive": "? inconclusive",
    "matches": "✓ matches",
    "differs": "≠ differs",
}
PROFILE_NOTES = {
    "full": "",
    "ci": "ci profile: a small real-data subset and few epochs — a pipeline check, not comparable to the paper",
    "smoke": "smoke profile: synthetic data, a few steps — a pipeline check, not comparable to the paper",
}


def _num(value: float, std: float = float("nan"), decimals: int = 2) -> str:
    if math.isnan(value):
        return "–"
    return (
        f"{value:.{decimals}f}" if math.isnan(std) else f"{value:.{decimals}f} ± {std:.{decimals}f}"
    )


def metric_note(comp: TableComparison, cell: pd.Series) -> str:
    """'[last epoch]', '[at epoch 30]', '[best ≤ epoch 30]' where the cell reads another epoch than the table's title
    says; else empty."""
    if cell["metric"] == comp.metric:
        return ""
    at_epoch = comp.recipe.column(cell["column"]).at_epoch
    if at_epoch is not None and at_epoch < comp.recipe.training.epochs:
        return (
            f"[at epoch {at_epoch}]" if cell["metric"] == "last" else f"[best ≤ epoch {at_epoch}]"
        )
    return f"[{cell['metric']} epoch]"


def ours_text(comp: TableComparison, cell: pd.Series) -> str:
    """Our mean ± std (n), or why there is none; with the cell's own epoch where the table's title does not say it."""
    note = metric_note(comp, cell) if cell["status"] != "absent" else ""
    return f"{_ours_text(cell)} {note}" if note else _ours_text(cell)


def _ours_text(cell: pd.Series) -> str:
    if cell["status"] == "absent":
        return "–"
    if cell["status"] == "not implemented":
        return "not implemented"
    if cell["n"] == 0:
        return "failed" if cell["n_failed"] else "not run"
    text = f"{_num(cell['ours_mean'], cell['ours_std'])} (n={cell['n']})"
    if cell["teacher_checkpoint"] and cell["method"] == "teacher":
        text += f" [imported {cell['teacher_checkpoint'][:8]}]"
    if cell["n"] < cell["n_planned"]:
        text += f" [{cell['n']}/{cell['n_planned']}" + (
            f", {cell['n_failed']} failed]" if cell["n_failed"] else "]"
        )
    if is_mixed_precision(cell["precision"]):
        text += f" [mixed precision: {cell['precision']}]"
    if cell.get(
        "n_unverified", 0
    ):  # files without a recorded checksum: shown, never silently trusted
        text += f" [{cell['n_unverified']} unverified]"
    return text


def delta_text(cell: pd.Series) -> str:
    return "" if math.isnan(cell["delta"]) else f"{cell['delta']:+.2f}"


def verdict_text(cell: pd.Series, alpha: float) -> str:
    """'✓ reproduced [-0.07, +0.47]', '? inconclusive [-8.34, +4.34]; ≈9 trials settle it' etc.: the verdict and the
    (1 − 2α) interval of ours − paper; empty where there is no verdict (nothing run, no published number)."""
    mark = VERDICT_MARKS.get(cell["verdict"])
    if mark is None:
        return ""
    if cell["verdict"] in ("matches", "differs"):  # computed quantities: no interval
        return mark
    no_interval = math.isnan(cell["ci_low"])
    text = mark if no_interval else f"{mark} [{cell['ci_low']:+.2f}, {cell['ci_high']:+.2f}]"
    p = cell["p_value"]
    if cell["verdict"] == "reproduced" and p < alpha:
        text += f" (Δ significant, p={p:.2g}, within the margin)"
    elif cell["verdict"] in ("above", "below"):
        text += f" (p={p:.2g})"
    elif cell["verdict"] == "inconclusive":
        needed = cell["trials_needed"]
        if not pd.isna(needed):
            text += f"; ≈{int(needed)} trials settle it" + (
                " (est.: the paper's ± as our spread)" if no_interval else ""
            )
        else:
            text += "; needs ≥ 2 trials" if no_interval else "; more trials will not settle it"
    return text


def paper_text(cell: pd.Series) -> str:
    text = _num(cell["paper_mean"], cell["paper_std"])
    return f"{text} [lit.]" if cell["literature"] else text


def cell_lines(comp: TableComparison, cell: pd.Series) -> list[str]:
    """A cell's text lines: ours, the paper's value, Δ and the verdict, then each extra quantity."""
    if cell["status"] == "absent":
        return ["–"]
    lines = [ours_text(comp, cell), f"paper {paper_text(cell)}"]
    lines += [f"Δ {delta_text(cell)}"] if delta_text(cell) else []
    lines += [verdict_text(cell, comp.alpha)] if verdict_text(cell, comp.alpha) else []
    return lines + quantity_lines(comp, cell["row"], cell["column"])


def quantity_lines(comp: TableComparison, row: str, column: str) -> list[str]:
    """'pruning cost: 2.88 (paper 2.88) ✓ matches' for each of the recipe's quantities of this cell."""
    extra = comp.quantities[(comp.quantities["row"] == row) & (comp.quantities["column"] == column)]
    lines = []
    for _, quantity in extra.iterrows():
        ours = (
            "not run"
            if quantity["n"] == 0
            else _num(quantity["ours_mean"], quantity["ours_std"], _decimals(quantity))
        )
        paper = (
            ""
            if math.isnan(quantity["paper_mean"])
            else f" (paper {_num(quantity['paper_mean'], quantity['paper_std'], _decimals(quantity))})"
        )
        mark = VERDICT_MARKS.get(quantity["verdict"], " ").split(" ")[
            0
        ]  # the symbol only: ✓ ≠ ▲ ▼ ?
        lines.append(f"{quantity['label']} {ours}{paper}" + (f" {mark}" if mark else ""))
    return lines


def _decimals(quantity: pd.Series) -> int:
    return 3 if quantity["source"] == "test_loss" else 2


def summary_text(comp: TableComparison) -> str:
    counts = summary(comp)
    n_cells = int((comp.cells["status"] != "absent").sum())
    text = (
        f"{comp.recipe.name}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f" (of {n_cells} cells)"
    )
    verdicts = comp.quantities["verdict"]
    computed = comp.quantities["source"].isin(COMPUTED)
    if computed.any():
        chosen = verdicts[computed]
        text += f"; computed quantities: {int((chosen == 'matches').sum())} matches, {int((chosen == 'differs').sum())} differs"
    if (~computed).any():
        chosen = verdicts[~computed]
        text += (
            f"; measured quantities: {int((chosen == 'reproduced').sum())} reproduced, "
            f"{int(chosen.isin(['above', 'below']).sum())} not reproduced"
        )
    mixed = int(comp.cells["precision"].map(is_mixed_precision).sum())
    if mixed:
        text += f"; WARNING: {mixed} cell{'s' if mixed > 1 else ''} pool trials of different precision (marked)"
    return text


def verdict_rule(comp: TableComparison) -> str:
    """The header's statement of the verdict: interval level, margin δ and α."""
    level = f"{100 * (1 - 2 * comp.alpha):g}%"
    return (
        f"verdict: {level} CI of ours − paper inside ±{comp.margin:g} points = reproduced, wholly beyond it and "
        f"significant at α={comp.alpha:g} = above/below, else inconclusive"
    )


def title(comp: TableComparison) -> str:
    r = comp.recipe
    note = PROFILE_NOTES[comp.profile]
    return (
        f"{r.name}: {r.paper} — {r.table}. {r.title} ({comp.metric} epoch; margin δ = {comp.margin:g})\n"
        f"{verdict_rule(comp)}" + (f"\nNOTE: {note}" if note else "")
    )


def _grid(comp: TableComparison) -> tuple[list[str], list[str], dict[tuple[str, str], pd.Series]]:
    cells = {(c["row"], c["column"]): c for _, c in comp.cells.iterrows()}
    rows = list(dict.fromkeys(comp.cells["row"]))
    columns = list(dict.fromkeys(comp.cells["column"]))
    return rows, columns, cells


def _column_header(comp: TableComparison, column_id: str, sep: str) -> str:
    column = comp.recipe.column(column_id)
    return f"{comp.recipe.teachers[column.teacher].label}{sep}→ {column.label}"


def to_rich(comp: TableComparison) -> Table:
    rows, columns, cells = _grid(comp)
    table = Table(title=escape(title(comp)), show_lines=True, title_justify="left")
    table.add_column("method", style="bold")
    for column_id in columns:
        table.add_column(_column_header(comp, column_id, "\n"), justify="right")
    for row in rows:
        rendered = []
        for column_id in columns:
            cell = cells[(row, column_id)]
            if cell["status"] == "absent":
                rendered.append("[dim]–[/]")
                continue
            style = {"not implemented": "dim", "not run": "dim", "failed": "red"}.get(
                cell["status"], ""
            )
            ours = (
                f"[{style}]{escape(ours_text(comp, cell))}[/]"
                if style
                else escape(ours_text(comp, cell))
            )
            delta = f"\nΔ {delta_text(cell)}" if delta_text(cell) else ""
            verdict_style = {"reproduced": "green", "above": "cyan", "below": "red"}.get(
                cell["verdict"], "dim"
            )
            said = verdict_text(cell, comp.alpha)
            verdict = f"\n[{verdict_style}]{escape(said)}[/]" if said else ""
            extra = "".join(
                f"\n[dim]{escape(line)}[/]" for line in quantity_lines(comp, row, column_id)
            )
            rendered.append(f"{ours}\npaper {escape(paper_text(cell))}{delta}{verdict}{extra}")
        table.add_row(row, *rendered)
    table.caption = escape(summary_text(comp))
    return table


MARKS = {
    "reproduced": "✓",
    "above": "▲",
    "below": "▼",
    "inconclusive": "?",
    "failed": "✗",
    "not run": "·",
    "not implemented": "n/i",
    "no published number": "—",
}
MARK_STYLES = {"reproduced": "green", "above": "cyan", "below": "red", "failed": "red"}
LEGEND = (
    "marks: ✓ reproduced (our CI of ours − paper inside ±δ), ▲ above / ▼ below (beyond it, significant), "
    "? inconclusive, ✗ failed, · not run, n/i not implemented, — no published number; † the cell reads another "
    "epoch than the title; Δ = ours − paper. Each cell: mean ± std over trials, Δ, mark."
)


def terminal(comp: TableComparison, width: int) -> RenderableType:
    """The comparison for a terminal ``width`` columns wide: the paper's grid with every cell's full text when it fits,
    else one line per cell (mean ± std, Δ, a verdict mark; the legend once), else one block per cell (the long
    format). Nothing is cut: text that is still too wide wraps."""
    wide = to_rich(comp)
    if natural_width(wide) <= width:
        return wide
    compact = _compact(comp, width)
    if compact is not None:
        return Group(
            *wrapped(title(comp), width),
            *compact,
            *wrapped(_pairs_legend(comp), width),
            *wrapped(LEGEND, width),
            *wrapped(summary_text(comp), width),
        )
    return Group(
        *wrapped(title(comp), width), *_long(comp, width), *wrapped(summary_text(comp), width)
    )


def compact_text(comp: TableComparison, cell: pd.Series) -> str:
    """A cell on one line: '70.05±0.13 +0.05 ✓', '71.30 +0.30 ? [1/4]', 'failed ✗', '–' (no such cell)."""
    if cell["status"] == "absent":
        return "–"
    mark = MARKS.get(cell["verdict"], "")
    if cell["n"] == 0:
        return {"not implemented": "n/i", "failed": "✗ failed"}.get(cell["status"], "·")
    ours = f"{cell['ours_mean']:.2f}" + (
        "" if math.isnan(cell["ours_std"]) else f"±{cell['ours_std']:.2f}"
    )
    delta = f" {delta_text(cell)}" if delta_text(cell) else ""
    partial = f" [{cell['n']}/{cell['n_planned']}]" if cell["n"] < cell["n_planned"] else ""
    return f"{ours}{delta} {mark}{' †' if metric_note(comp, cell) else ''}{partial}"


def _compact(comp: TableComparison, width: int) -> list[Text] | None:
    """The grid with one line per cell, its pairs split into bands that fit ``width``; None when one pair does not."""
    rows, columns, cells = _grid(comp)
    text = {(row, c): compact_text(comp, cells[(row, c)]) for row in rows for c in columns}
    first = max(cell_len(r) for r in ["method", *rows])
    widths = {c: max(cell_len(v) for v in [c, *(text[(row, c)] for row in rows)]) for c in columns}
    bands: list[list[str]] = []
    for c in columns:
        if first + 2 + widths[c] > width:
            return None
        if bands and first + sum(2 + widths[b] for b in bands[-1]) + 2 + widths[c] <= width:
            bands[-1].append(c)
        else:
            bands.append([c])
    out = []
    for band in bands:
        header = Text("method".ljust(first), style="bold")
        for c in band:
            header.append("  " + c.rjust(widths[c]), style="bold")
        out.append(header)
        for row in rows:
            line = Text(row.ljust(first), style="bold")
            for c in band:
                verdict = cells[(row, c)]["verdict"]
                line.append(
                    "  " + " " * (widths[c] - cell_len(text[(row, c)])) + text[(row, c)],
                    style=MARK_STYLES.get(verdict, "" if verdict == "inconclusive" else "dim"),
                )
            out.append(line)
    return out


def _pairs_legend(comp: TableComparison) -> str:
    return "pairs:\n" + "\n".join(
        f"  {c} = {_column_header(comp, c, ' ')}" for c in dict.fromkeys(comp.cells["column"])
    )


def _long(comp: TableComparison, width: int) -> list[Text]:
    """One block per cell: its row × pair, then each of its lines (ours, paper, Δ, verdict, quantities), wrapped."""
    rows, columns, cells = _grid(comp)
    out = []
    for row in rows:
        for column_id in columns:
            cell = cells[(row, column_id)]
            if cell["status"] == "absent":
                continue
            out += wrapped(
                f"{row} × {column_id} ({_column_header(comp, column_id, ' ')})", width, "  ", "bold"
            )
            said = verdict_text(cell, comp.alpha)
            for line in cell_lines(comp, cell):
                out += wrapped(
                    line,
                    width,
                    "      ",
                    MARK_STYLES.get(cell["verdict"], "") if line == said else "",
                    "    ",
                )
    return out


def to_markdown(comp: TableComparison) -> str:
    rows, columns, cells = _grid(comp)
    lines = [
        f"**{title(comp)}**".replace("\n", "  \n"),
        "",
        "| method | " + " | ".join(_column_header(comp, c, " ") for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        parts = []
        for column_id in columns:
            cell = cells[(row, column_id)]
            if cell["status"] == "absent":
                parts.append("–")
                continue
            delta = f" (Δ {delta_text(cell)})" if delta_text(cell) else ""
            said = verdict_text(cell, comp.alpha)
            verdict = f"<br>{said}" if said else ""
            extra = "".join(f"<br>{line}" for line in quantity_lines(comp, row, column_id))
            parts.append(
                f"{ours_text(comp, cell)}<br>paper {paper_text(cell)}{delta}{verdict}{extra}"
            )
        lines.append(f"| {row} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + f"\n\n{summary_text(comp)}\n"


LATEX_MARKS = {
    "reproduced": r"$\surd$",
    "above": r"$\uparrow$",
    "below": r"$\downarrow$",
    "inconclusive": "?",
}


def _latex_escape(text: str) -> str:
    for char, repl in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("→", r"$\rightarrow$"),
        ("±", r"$\pm$"),
        ("−", "$-$"),
        ("≤", r"$\leq$"),
        ("α", r"$\alpha$"),
        ("δ", r"$\delta$"),
        ("Δ", r"$\Delta$"),
    ):
        text = text.replace(char, repl)
    return text


def _latex_num(value: float, std: float) -> str:
    return _num(value, std).replace(" ± ", r"$\pm$").replace("–", "--")


def _quantities(comp: TableComparison, row: str, column: str) -> pd.DataFrame:
    return comp.quantities[(comp.quantities["row"] == row) & (comp.quantities["column"] == column)]


def _latex_quantity(quantity: pd.Series) -> str:
    """'2.88\\% / 2.88\\%': ours / published, in the paper's parenthesised style."""
    unit = r"\%" if quantity["source"] != "test_loss" else ""
    decimals = _decimals(quantity)
    return (
        _num(quantity["ours_mean"], decimals=decimals).replace("–", "--")
        + unit
        + " / "
        + _num(quantity["paper_mean"], decimals=decimals).replace("–", "--")
        + unit
    )


def to_latex(comp: TableComparison) -> str:
    rows, columns, cells = _grid(comp)
    lines = [
        r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule); the marks are plain LaTeX math symbols",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + _latex_escape(title(comp).replace("\n", " ")) + "}",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        "Method & "
        + " & ".join(_latex_escape(_column_header(comp, c, " ")) for c in columns)
        + r" \\",
        r"\midrule",
    ]
    for row in rows:
        parts = []
        for column_id in columns:
            cell = cells[(row, column_id)]
            if cell["status"] == "absent":
                parts.append("--")
                continue
            ours = (
                _latex_num(cell["ours_mean"], cell["ours_std"]) + f"$_{{n={cell['n']}}}$"
                if cell["n"]
                else _latex_escape(_ours_text(cell))
            )
            ours += f" {LATEX_MARKS[cell['verdict']]}" if cell["verdict"] in LATEX_MARKS else ""
            ours += f" {_latex_escape(note)}" if (note := metric_note(comp, cell)) else ""
            extra = "".join(
                f" ({_latex_quantity(q)})" for _, q in _quantities(comp, row, column_id).iterrows()
            )
            parts.append(f"{ours} ({_latex_num(cell['paper_mean'], cell['paper_std'])}){extra}")
        lines.append(_latex_escape(row) + " & " + " & ".join(parts) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\footnotesize Ours: mean$\pm$std over $n$ trials; in parentheses: published. "
        + r"$\surd$ reproduced, $\uparrow$ above, $\downarrow$ below, ? inconclusive, "
        + _latex_escape(f"at margin δ = {comp.margin:g} points. ")
        + _latex_escape(summary_text(comp))
        + ".",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_html(comp: TableComparison) -> str:
    rows, columns, cells = _grid(comp)
    out = [
        f"<table>\n<caption>{html.escape(title(comp))}</caption>",
        "<tr><th>method</th>"
        + "".join(f"<th>{html.escape(_column_header(comp, c, ' '))}</th>" for c in columns)
        + "</tr>",
    ]
    for row in rows:
        tds = []
        for column_id in columns:
            cell = cells[(row, column_id)]
            parts = cell_lines(comp, cell)
            tds.append(
                f'<td class="{html.escape(str(cell["verdict"]).replace(" ", "-"))}">'
                + "<br>".join(html.escape(p) for p in parts)
                + "</td>"
            )
        out.append(f"<tr><th>{html.escape(row)}</th>" + "".join(tds) + "</tr>")
    out.append(f"</table>\n<p>{html.escape(summary_text(comp))}</p>")
    return "\n".join(out) + "\n"


def to_csv(comparisons: list[TableComparison]) -> str:
    """One row per cell (accuracy); a recipe's extra quantities follow as rows whose ``quantity`` names them."""
    frames = [c.cells.assign(quantity="top1") for c in comparisons]
    frames += [_quantity_rows(c) for c in comparisons if len(c.quantities)]
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[*CELL_COLUMNS, "quantity"])
    )
    return frame.to_csv(index=False, float_format="%.4f")


def _quantity_rows(comp: TableComparison) -> pd.DataFrame:
    """Quantity rows in the cell CSV's columns (teacher, student, method filled in from their cell)."""
    keys = ["row", "column"]
    context = comp.cells[
        [
            *keys,
            "teacher",
            "teacher_checkpoint",
            "student",
            "method",
            "paper_n",
            "literature",
            "precision",
        ]
    ]
    rows = comp.quantities.drop(columns=["label", "source", "table"]).merge(
        context, on=keys, how="left"
    )
    status = rows["n"].map(lambda n: "done" if n else "not run")
    return rows.assign(
        table=comp.recipe.table, status=status, n_planned=rows["n"], n_failed=0, n_unverified=0
    )[[*CELL_COLUMNS, "quantity"]]
