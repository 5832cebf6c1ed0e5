"""Render a table comparison in the paper's layout (rows = methods, columns = pairs).

Formats: a rich terminal table, Markdown, LaTeX, HTML, and CSV (one row per cell, every table).
Each cell carries its verdict and the interval behind it; every table's header states the verdict
rule and its margin δ; each table ends with a summary line. A cell that reads another epoch than the
table's metric says which. Results of the ``smoke`` and ``ci`` profiles carry a label saying they are
not comparable.

The grid (``grid``) is built once per table: each cell's text as typed fragments (ours, paper, Δ,
verdict, quantities); every format is a thin formatter over it. ``html_rows`` is the one HTML table,
shared by ``--format html`` (a fragment) and ``kdbench report`` (a page, results/report.py).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Literal

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


def quantity_text(quantity: pd.Series) -> str:
    """'pruning cost: 2.88 (paper 2.88) ✓ matches': one of a cell's extra quantities (a row of
    ``TableComparison.quantities``)."""
    decimals = _decimals(quantity)
    ours = (
        "not run"
        if quantity["n"] == 0
        else _num(quantity["ours_mean"], quantity["ours_std"], decimals)
    )
    paper = (
        ""
        if math.isnan(quantity["paper_mean"])
        else f" (paper {_num(quantity['paper_mean'], quantity['paper_std'], decimals)})"
    )
    mark = VERDICT_MARKS.get(quantity["verdict"], " ").split(" ")[0]  # the symbol only: ✓ ≠ ▲ ▼ ?
    return f"{quantity['label']} {ours}{paper}" + (f" {mark}" if mark else "")


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


# --------------------------------------------------------------------------- the cell model


@dataclass(frozen=True)
class Fragment:
    """One line of a cell's full text, with what it says; the formatters style and place it by kind
    (Markdown puts Δ beside the paper's value, the terminal colours the verdict, and so on)."""

    kind: Literal["ours", "paper", "delta", "verdict", "quantity"]
    text: str


@dataclass(frozen=True)
class GridCell:
    """A cell of the paper's grid, built once from the comparison for every format."""

    row: str
    column: str
    data: pd.Series  # the cell's row of TableComparison.cells (CELL_COLUMNS)
    quantities: pd.DataFrame  # the cell's rows of TableComparison.quantities
    note: str  # metric_note: the epoch it reads where the title does not say it, else ""
    fragments: tuple[Fragment, ...]  # ours, paper, Δ, verdict, quantities; none where absent

    @property
    def absent(self) -> bool:
        """The table has no such cell (a row that keeps to its own columns)."""
        return self.status == "absent"

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def verdict(self) -> str:
        return str(self.data["verdict"])

    def lines(self) -> list[str]:
        """The full text, one line per fragment; '–' where the table has no such cell."""
        return [f.text for f in self.fragments] if not self.absent else ["–"]


@dataclass(frozen=True)
class Grid:
    """The paper's layout of a comparison: rows = methods, columns = pairs, each cell built once."""

    comp: TableComparison
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: dict[tuple[str, str], GridCell]

    def header(self, column_id: str, sep: str) -> str:
        """'ResNet-32x4{sep}→ ResNet-8x4': the pair's teacher and student."""
        column = self.comp.recipe.column(column_id)
        return f"{self.comp.recipe.teachers[column.teacher].label}{sep}→ {column.label}"

    def row_cells(self, row: str) -> list[GridCell]:
        return [self.cells[(row, c)] for c in self.columns]


def grid(comp: TableComparison) -> Grid:
    """The comparison's cells in the paper's layout, each with its text fragments."""
    cells = {}
    for _, data in comp.cells.iterrows():
        key = (data["row"], data["column"])
        quantities = comp.quantities[
            (comp.quantities["row"] == key[0]) & (comp.quantities["column"] == key[1])
        ]
        absent = data["status"] == "absent"
        cells[key] = GridCell(
            *key,
            data,
            quantities,
            "" if absent else metric_note(comp, data),
            () if absent else _fragments(comp, data, quantities),
        )
    rows = tuple(dict.fromkeys(comp.cells["row"]))
    columns = tuple(dict.fromkeys(comp.cells["column"]))
    return Grid(comp, rows, columns, cells)


def _fragments(
    comp: TableComparison, cell: pd.Series, quantities: pd.DataFrame
) -> tuple[Fragment, ...]:
    out = [Fragment("ours", ours_text(comp, cell)), Fragment("paper", f"paper {paper_text(cell)}")]
    if delta := delta_text(cell):
        out.append(Fragment("delta", f"Δ {delta}"))
    if said := verdict_text(cell, comp.alpha):
        out.append(Fragment("verdict", said))
    out += [Fragment("quantity", quantity_text(q)) for _, q in quantities.iterrows()]
    return tuple(out)


# --------------------------------------------------------------------------- the terminal

OURS_STYLES = {"not implemented": "dim", "not run": "dim", "failed": "red"}
VERDICT_STYLES = {"reproduced": "green", "above": "cyan", "below": "red"}


def _rich_table(table_grid: Grid) -> Table:
    comp = table_grid.comp
    table = Table(title=escape(title(comp)), show_lines=True, title_justify="left")
    table.add_column("method", style="bold")
    for column_id in table_grid.columns:
        table.add_column(table_grid.header(column_id, "\n"), justify="right")
    for row in table_grid.rows:
        table.add_row(row, *(_rich_cell(cell) for cell in table_grid.row_cells(row)))
    table.caption = escape(summary_text(comp))
    return table


def _rich_cell(cell: GridCell) -> str:
    """The cell's fragments as rich markup, one a line: ours by status, the verdict by its kind."""
    if cell.absent:
        return "[dim]–[/]"
    styles = {
        "ours": OURS_STYLES.get(cell.status, ""),
        "verdict": VERDICT_STYLES.get(cell.verdict, "dim"),
        "quantity": "dim",
    }
    return "\n".join(
        f"[{style}]{escape(f.text)}[/]" if (style := styles.get(f.kind)) else escape(f.text)
        for f in cell.fragments
    )


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
    table_grid = grid(comp)
    wide = _rich_table(table_grid)
    if natural_width(wide) <= width:
        return wide
    compact = _compact(table_grid, width)
    if compact is not None:
        return Group(
            *wrapped(title(comp), width),
            *compact,
            *wrapped(_pairs_legend(table_grid), width),
            *wrapped(LEGEND, width),
            *wrapped(summary_text(comp), width),
        )
    return Group(
        *wrapped(title(comp), width), *_long(table_grid, width), *wrapped(summary_text(comp), width)
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


def _compact(table_grid: Grid, width: int) -> list[Text] | None:
    """The grid with one line per cell, its pairs split into bands that fit ``width``; None when one pair does not."""
    rows, columns, cells = table_grid.rows, table_grid.columns, table_grid.cells
    text = {key: compact_text(table_grid.comp, cell.data) for key, cell in cells.items()}
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
                verdict = cells[(row, c)].verdict
                line.append(
                    "  " + " " * (widths[c] - cell_len(text[(row, c)])) + text[(row, c)],
                    style=MARK_STYLES.get(verdict, "" if verdict == "inconclusive" else "dim"),
                )
            out.append(line)
    return out


def _pairs_legend(table_grid: Grid) -> str:
    return "pairs:\n" + "\n".join(
        f"  {c} = {table_grid.header(c, ' ')}" for c in table_grid.columns
    )


def _long(table_grid: Grid, width: int) -> list[Text]:
    """One block per cell: its row × pair, then each of its lines (ours, paper, Δ, verdict, quantities), wrapped."""
    out = []
    for row in table_grid.rows:
        for cell in table_grid.row_cells(row):
            if cell.absent:
                continue
            out += wrapped(
                f"{row} × {cell.column} ({table_grid.header(cell.column, ' ')})",
                width,
                "  ",
                "bold",
            )
            for f in cell.fragments:
                style = MARK_STYLES.get(cell.verdict, "") if f.kind == "verdict" else ""
                out += wrapped(f.text, width, "      ", style, "    ")
    return out


# --------------------------------------------------------------------------- Markdown


def to_markdown(comp: TableComparison) -> str:
    table_grid = grid(comp)
    lines = [
        f"**{title(comp)}**".replace("\n", "  \n"),
        "",
        "| method | " + " | ".join(table_grid.header(c, " ") for c in table_grid.columns) + " |",
        "|---|" + "---:|" * len(table_grid.columns),
    ]
    for row in table_grid.rows:
        parts = [_markdown_cell(cell) for cell in table_grid.row_cells(row)]
        lines.append(f"| {row} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + f"\n\n{summary_text(comp)}\n"


def _markdown_cell(cell: GridCell) -> str:
    """The fragments split by <br>, with Δ in parentheses beside the paper's value."""
    if cell.absent:
        return "–"
    text = cell.fragments[0].text
    for f in cell.fragments[1:]:
        text += f" ({f.text})" if f.kind == "delta" else f"<br>{f.text}"
    return text


# --------------------------------------------------------------------------- LaTeX

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
    table_grid = grid(comp)
    columns = table_grid.columns
    lines = [
        r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule); the marks are plain LaTeX math symbols",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + _latex_escape(title(comp).replace("\n", " ")) + "}",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        "Method & "
        + " & ".join(_latex_escape(table_grid.header(c, " ")) for c in columns)
        + r" \\",
        r"\midrule",
    ]
    for row in table_grid.rows:
        parts = [_latex_cell(cell) for cell in table_grid.row_cells(row)]
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


def _latex_cell(cell: GridCell) -> str:
    """'70.05$\\pm$0.13$_{n=4}$ $\\surd$ (70.00$\\pm$0.20)', then each quantity as (ours / published)."""
    if cell.absent:
        return "--"
    data = cell.data
    ours = (
        _latex_num(data["ours_mean"], data["ours_std"]) + f"$_{{n={data['n']}}}$"
        if data["n"]
        else _latex_escape(_ours_text(data))
    )
    ours += f" {LATEX_MARKS[cell.verdict]}" if cell.verdict in LATEX_MARKS else ""
    ours += f" {_latex_escape(cell.note)}" if cell.note else ""
    extra = "".join(f" ({_latex_quantity(q)})" for _, q in cell.quantities.iterrows())
    return f"{ours} ({_latex_num(data['paper_mean'], data['paper_std'])}){extra}"


# --------------------------------------------------------------------------- HTML


def to_html(comp: TableComparison) -> str:
    """A fragment to embed: the table with its caption, then the summary (`kdbench report` makes a page)."""
    e = html.escape
    rows = html_rows(grid(comp))
    return (
        "\n".join(
            [
                f"<table>\n<caption>{e(title(comp))}</caption>",
                *rows,
                f"</table>\n<p>{e(summary_text(comp))}</p>",
            ]
        )
        + "\n"
    )


def html_rows(table_grid: Grid, *, page: bool = False) -> list[str]:
    """The table's <tr> rows: the pairs' header, then one row per method, each cell's class its verdict (or
    status). ``page`` (`kdbench report`): the headers also give the pair ids, the verdict line is emphasised
    and the verdict's detail follows."""
    e = html.escape
    ids = (lambda c: f"<br><code>{e(c)}</code>") if page else (lambda c: "")
    out = [
        "<tr><th>method</th>"
        + "".join(f"<th>{e(table_grid.header(c, ' '))}{ids(c)}</th>" for c in table_grid.columns)
        + "</tr>"
    ]
    for row in table_grid.rows:
        tds = "".join(_html_cell(cell, page) for cell in table_grid.row_cells(row))
        out.append(f"<tr><th>{e(row)}</th>{tds}</tr>")
    return out


def _html_cell(cell: GridCell, page: bool) -> str:
    e = html.escape
    if cell.absent:
        body = e("–")
    else:
        body = "<br>".join(
            f'<span class="v">{e(f.text)}</span>' if page and f.kind == "verdict" else e(f.text)
            for f in cell.fragments
        )
    if page and cell.data["detail"]:
        body += f'<span class="detail">{e(str(cell.data["detail"]))}</span>'
    return f'<td class="{e(cell.verdict.replace(" ", "-"))}">{body}</td>'


# --------------------------------------------------------------------------- CSV


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
