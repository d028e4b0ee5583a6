"""The rich table: what a person reads in the terminal."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..report import Report
from .common import Footnotes, columns, summary, title


def build(report: Report) -> tuple[Table, list[str]]:
    """The table and the lines printed under it (footnotes, compare's summary)."""
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    table = Table(header_style="bold", expand=False)
    for col in cols:
        table.add_column(col.header, justify=col.align, no_wrap=col.header != "notes")
    highlighted = {id(row) for row in report.most_disagreeing()} if report.command == "compare" else set()
    for row in report.rows:
        cells = [col.cell(row) for col in cols]
        if id(row) in highlighted:  # visible without colour too, for files and pipes
            cells[-1] = f"{cells[-1]} ◀".strip()
        table.add_row(*cells, style="bold yellow" if id(row) in highlighted else None)
    lines = footnotes.lines()
    if report.command == "compare":
        lines.append(summary(report))
    return table, lines


def render_table(report: Report, console: Console) -> None:
    table, lines = build(report)
    console.print(Text(title(report), style="bold"))
    for note in report.notes:
        console.print(Text(note, style="dim"))
    console.print(table)
    for line in lines:
        console.print(Text(line))


def render_table_text(report: Report, width: int | None = None, color: bool = False) -> str:
    """The table as text, for `--output FILE`: wide enough not to wrap, no colour unless asked."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 200, color_system="standard" if color else None,
                      force_terminal=color, highlight=False)
    render_table(report, console)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
