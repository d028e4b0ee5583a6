"""The table: what a person reads in the terminal.

A terminal gets a rich Table (colours, fitted to the width). Files, pipes and very long tables get
the same grid drawn directly: rich measures every cell, which takes ~35 s for 50,000 layers.
"""

from __future__ import annotations

from rich.cells import cell_len

from ..report import Report
from ..text import printable
from .common import Column, Footnotes, columns, summary, title

#: Beyond this many rows even a terminal gets the direct grid.
RICH_MAX_ROWS = 2000


def _cells(report: Report) -> tuple[list[Column], list[list[str]], set[int], list[str]]:
    """Columns, cell texts, indices of highlighted rows, and the lines under the table; every text printable
    (keys and notes come from the file)."""
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    highlighted = {id(row) for row in report.most_disagreeing()} if report.command == "compare" else set()
    rows, marked = [], set()
    for index, row in enumerate(report.rows):
        cells = [printable(col.cell(row)) for col in cols]
        if id(row) in highlighted:  # visible without colour too
            cells[-1] = f"{cells[-1]} ◀".strip()
            marked.add(index)
        rows.append(cells)
    lines = footnotes.lines()
    if report.command == "compare":
        lines.append(summary(report))
    return cols, rows, marked, [printable(line) for line in lines]


def draw_grid(headers: list[str], aligns: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table with rich's heavy-head box, in time linear in the cells."""
    widths = [max([cell_len(h)] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str], edge: str) -> str:
        padded = []
        for cell, width, align in zip(cells, widths, aligns):
            pad = " " * (width - cell_len(cell))
            padded.append(f" {cell}{pad} " if align == "left" else f" {pad}{cell} ")
        return edge + edge.join(padded) + edge

    def rule(left: str, fill: str, sep: str, right: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + right

    return [rule("┏", "━", "┳", "┓"), line(headers, "┃"), rule("┡", "━", "╇", "┩"),
            *(line(cells, "│") for cells in rows), rule("└", "─", "┴", "┘")]


def grid_text(report: Report) -> str:
    """The table as plain text: the same grid a terminal shows, without colour or fitting."""
    cols, rows, _, lines = _cells(report)
    grid = draw_grid([c.header for c in cols], [c.align for c in cols], rows)
    heading = [printable(line) for line in (title(report), *report.notes)]
    return "\n".join([*heading, *grid, *lines]) + "\n"


def print_rich(report: Report) -> None:
    """Print to the terminal: a rich Table fitted to its width, or the grid for very long reports.

    Every cell is a Text, never a markup string: a key like `[/]x.weight` or `[link=…]` is shown as written.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if len(report.rows) > RICH_MAX_ROWS:
        console.out(grid_text(report), end="", highlight=False)
        return
    cols, rows, marked, lines = _cells(report)
    table = Table(header_style="bold", expand=False)
    for col in cols:
        table.add_column(col.header, justify=col.align, no_wrap=True, min_width=5 if col.header == "notes" else None)
    for index, cells in enumerate(rows):
        table.add_row(*map(Text, cells), style="bold yellow" if index in marked else None)
    console.print(Text(printable(title(report)), style="bold"))
    for note in report.notes:
        console.print(Text(printable(note), style="dim"))
    console.print(table)
    for text in lines:
        console.print(Text(text))
