"""Tables that fit the terminal: the table as it is when it fits ``width`` columns, else one record per row
("first column — header: value; …", wrapped at spaces), so that nothing (a run id, a recipe name) is ever cut."""

from __future__ import annotations

import io
import textwrap

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


def natural_width(renderable: RenderableType) -> int:
    """Columns ``renderable`` takes when nothing constrains it."""
    capture = Console(width=100_000, record=True, file=io.StringIO())
    capture.print(renderable)
    return max((cell_len(line.rstrip()) for line in capture.export_text().splitlines()), default=0)


def wrapped(
    text: str, width: int, indent: str = "", style: str = "", first: str = ""
) -> list[Text]:
    """``text`` as lines of at most ``width`` columns, broken at spaces only (a word longer than a line keeps a line of
    its own); ``first`` starts the first line of each paragraph (default: the paragraph's own indent), ``indent`` the
    others (default: that indent + 2)."""
    out = []
    for paragraph in text.split("\n"):
        lead = first or paragraph[: len(paragraph) - len(paragraph.lstrip())]
        lines = textwrap.wrap(
            paragraph.lstrip(),
            width,
            initial_indent=lead,
            subsequent_indent=indent or lead + "  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        out += [Text(line, style=style) for line in lines or [""]]
    return out


def paragraph(text: str, width: int) -> str:
    """``text`` wrapped at spaces to ``width``, continued lines indented; a path or run id longer than a line keeps a
    line of its own, whole (print it with ``soft_wrap=True`` so that the console neither folds nor crops it)."""
    return "\n".join(line.plain for line in wrapped(text, width, indent="    "))


def fit(table: Table, width: int) -> RenderableType:
    """``table`` when it fits ``width``; else its title, then per row its first cell and every other
    ``header: value`` on wrapped lines."""
    if natural_width(table) <= width:
        return table
    headers = [_plain(column.header).replace("\n", " ") for column in table.columns]
    columns = [list(column.cells) for column in table.columns]
    out: list[Text] = wrapped(_plain(table.title), width, style="bold") if table.title else []
    for i in range(table.row_count):
        values = [_plain(cells[i]) for cells in columns]
        fields = "; ".join(
            f"{h}: {v}".replace("\n", "; ") for h, v in zip(headers[1:], values[1:]) if v.strip()
        )
        out += wrapped(f"{values[0]} — {fields}" if fields else values[0], width, indent="    ")
    if table.caption:
        out += wrapped(_plain(table.caption), width)
    return Group(*out)


def _plain(value: object) -> str:
    if isinstance(value, Text):
        return value.plain
    return Text.from_markup(value).plain if isinstance(value, str) else str(value)
