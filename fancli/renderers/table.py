"""The table: what a person reads in the terminal.

A terminal gets a rich Table (colours, fitted to the width). Files, pipes and very long tables get
the same grid drawn directly: rich measures every cell, which takes ~35 s for 50,000 layers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

from ..report import Report
from ..text import printable
from .common import Column, Footnotes, columns, highlighted, summary, title, totals_line

#: Beyond this many rows even a terminal gets the direct grid.
RICH_MAX_ROWS = 2000


def _cells(report: Report) -> tuple[list[Column], list[list[str]], set[int], Footnotes, list[str]]:
    """Columns, cell texts, indices of highlighted rows, the footnotes, and the lines under the footnotes;
    every text printable (keys and notes come from the file)."""
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    marked = highlighted(report)
    rows = []
    for index, group in enumerate(report.shown):
        cells = [printable(col.cell(group)) for col in cols]
        if index in marked:  # visible without colour too
            cells[-1] = f"{cells[-1]} ◀".strip()
        rows.append(cells)
    lines = [totals_line(report)]
    if report.command == "compare":
        lines.append(summary(report))
    return cols, rows, marked, footnotes, [printable(line) for line in lines]


def draw_grid(headers: list[str], aligns: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table with rich's heavy-head box, in time linear in the cells; a cell holding newlines
    (a wrapped name) takes as many lines."""
    widths = [max([cell_len(h)] + [cell_len(part) for r in rows for part in r[i].split("\n")])
              for i, h in enumerate(headers)]

    def line(cells: list[str], edge: str) -> str:
        padded = []
        for cell, width, align in zip(cells, widths, aligns):
            pad = " " * (width - cell_len(cell))
            padded.append(f" {cell}{pad} " if align == "left" else f" {pad}{cell} ")
        return edge + edge.join(padded) + edge

    def lines(cells: list[str]) -> list[str]:
        parts = [cell.split("\n") for cell in cells]
        height = max(map(len, parts), default=1)
        return [line([p[i] if i < len(p) else "" for p in parts], "│") for i in range(height)]

    def rule(left: str, fill: str, sep: str, right: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + right

    return [rule("┏", "━", "┳", "┓"), line(headers, "┃"), rule("┡", "━", "╇", "┩"),
            *(text for cells in rows for text in lines(cells)), rule("└", "─", "┴", "┘")]


def fitted_grid(headers: list[str], aligns: list[str], rows: list[list[str]], width: int | None) -> list[str]:
    """A grid of text cells, the first the row's name, fitted to a terminal of `width` columns as inspect's
    table is (`fit`: columns that may go go, names wrap, then each row is a block of `header value`
    lines), so that no number is ever cut; the whole grid where `width` is None (a file, a pipe)."""
    if width is None:
        return draw_grid(headers, aligns, rows)
    cols = [Column(header, None, align) for header, align in zip(headers, aligns)]
    layout = fit(cols, rows, width)
    kept = [cols[i] for i in layout.columns]
    if layout.records:
        return [line for cells in rows for line in records(kept, [cells[i] for i in layout.columns], width)]
    shown = [[wrap_name(cells[i], layout.name_width) if i == 0 and layout.name_width else cells[i]
              for i in layout.columns] for cells in rows]
    return draw_grid([col.header for col in kept], [col.align for col in kept], shown)


def wrapped(text: str, width: int | None) -> list[str]:
    """A line of prose (a title, a note) as lines of at most `width` cells, broken between words as the
    terminal table's title and notes are (rich's wrap); the line as is where `width` is None."""
    if width is None:
        return [text]
    from rich.console import Console
    from rich.text import Text

    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    return [line.plain.rstrip() for line in Text(text).wrap(console, width)]


def grid_text(report: Report) -> str:
    """The table as plain text: the same grid a terminal shows, without colour or fitting."""
    cols, rows, _, footnotes, lines = _cells(report)
    grid = draw_grid([c.header for c in cols], [c.align for c in cols], rows)
    heading = [printable(line) for line in (title(report), *report.notes)]
    return "\n".join([*heading, *grid, *map(printable, footnotes.lines()), *lines]) + "\n"


def print_rich(report: Report, console: Any = None) -> None:
    """Print to the terminal: a rich Table fitted to its width (`fit`), or the grid for very long reports.

    Every cell is a Text, never a markup string: a key like `[/]x.weight` or `[link=…]` is shown as written.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if len(report.shown) > RICH_MAX_ROWS:
        console.out(grid_text(report), end="", highlight=False)
        return
    cols, rows, marked, footnotes, lines = _cells(report)
    layout = fit(cols, rows, console.width)
    console.print(Text(printable(title(report)), style="bold"))
    for note in report.notes:
        console.print(Text(printable(note), style="dim"))
    notes = [printable(line) for line in footnotes.lines()]
    if layout.notes_below:
        notes = _notes_below(cols, rows, notes)
        rows = [[*cells[:-1]] for cells in rows]
        for index in marked:
            rows[index][0] += " ◀"
    kept = [cols[i] for i in layout.columns]
    if layout.records:
        for index, cells in enumerate(rows):
            style = "bold yellow" if index in marked else None
            for line in records(kept, [cells[i] for i in layout.columns], console.width):
                console.print(Text(line, style=style or ""), no_wrap=True, crop=False)
    else:
        table = Table(header_style="bold", expand=False)
        for col, width in zip(kept, layout.widths):
            wraps = col.header == "name" and layout.name_width is not None
            table.add_column(col.header, justify=col.align, no_wrap=not wraps, overflow="fold",
                             min_width=width, max_width=width)
        for index, cells in enumerate(rows):
            shown = [wrap_name(cells[i], layout.name_width) if i == 0 and layout.name_width else cells[i]
                     for i in layout.columns]
            table.add_row(*map(Text, shown), style="bold yellow" if index in marked else None)
        console.print(table)
    for text in [*notes, *lines]:
        console.print(Text(text))


#: Table width of n columns of widths w: a border before each, one space either side, a closing border.
def table_width(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1


#: The narrowest a wrapped name column may get before the rows become records.
MIN_NAME_WIDTH = 12


@dataclass(frozen=True)
class Layout:
    """Which columns a terminal of a given width gets, and how: numbers are never cut."""

    columns: list[int]  # indices into the report's columns, in order
    widths: list[int]  # each kept column's width
    notes_below: bool = False  # the notes column became footnotes naming their rows
    name_width: int | None = None  # names wrap at this width
    records: bool = False  # one block of "header value" lines per row: nothing fits as a table


def fit(cols: list[Column], rows: list[list[str]], width: int) -> Layout:
    """The first layout that fits `width`, giving way in order of importance: the notes column goes
    below the table, then bound where no row has one (normal draws), then kind, then names wrap; below
    that every row is a block of lines. Every other column keeps the width of its widest cell."""
    widths = [max([cell_len(col.header)] + [cell_len(cells[i]) for cells in rows]) for i, col in enumerate(cols)]
    headers = [col.header for col in cols]
    kept = list(range(len(cols)))
    notes_below = False
    steps = [
        ("notes", lambda i: True),
        ("bound", lambda i: all(cells[i] == "—" for cells in rows)),
        ("kind", lambda i: True),
    ]
    for header, may_drop in [(None, None), *steps]:
        if header is not None:
            index = headers.index(header) if header in headers else None
            if index is None or not may_drop(index):
                continue
            kept.remove(index)
            notes_below = notes_below or header == "notes"
        if table_width([widths[i] for i in kept]) <= width:
            return Layout(kept, [widths[i] for i in kept], notes_below)
    name = 0  # every table's first column names its row
    rest = table_width([widths[i] for i in kept if i != name]) + 3
    if width - rest >= MIN_NAME_WIDTH:
        name_width = min(width - rest, widths[name])
        return Layout(kept, [name_width if i == name else widths[i] for i in kept], notes_below, name_width)
    return Layout([i for i, header in enumerate(headers) if header != "notes"], [], True, records=True)


def _notes_below(cols: list[Column], rows: list[list[str]], notes: list[str]) -> list[str]:
    """Footnotes that name the rows they apply to, for a table without its notes column."""
    applies: dict[str, list[str]] = {}
    for cells in rows:
        for mark in cells[-1].replace("◀", "").strip().split(","):
            if mark:
                applies.setdefault(mark, []).append(cells[0])
    out = []
    for line in notes:
        mark, _, text = line.partition("] ")
        names = applies.get(mark.lstrip("["), [])
        out.append(f"{mark}] ({', '.join(names)}) {text}" if names else line)
    return out


def wrap_name(name: str, width: int) -> str:
    """A key or a folded pattern as lines of at most `width` cells, broken after a `.`, `_` or `,` where
    one falls in the line (`layers.0.attention.` / `in_proj_weight`), never inside a range's `..`, else
    folded."""
    lines = []
    while cell_len(name) > width:
        head = name[:width]
        cut = max((i for i, c in enumerate(head) if c in "_," or c == "." and "." not in name[i - 1:i + 2:2]),
                  default=-1) + 1
        cut = cut if cut > width // 3 else width
        lines.append(name[:cut])
        name = name[cut:]
    return "\n".join([*lines, name])


def records(cols: list[Column], cells: list[str], width: int) -> list[str]:
    """One row as lines of at most `width` cells: the name (folded if longer), then "header value" pairs
    packed two spaces apart and indented; no pair is ever split inside a number."""
    name, *pairs = [(col.header, cell) for col, cell in zip(cols, cells)]
    lines = [name[1][i:i + width] for i in range(0, max(len(name[1]), 1), width)]
    line = ""
    for header, cell in pairs:
        if not cell:
            continue
        item = f"{header} {cell}"
        if line and cell_len(line) + 2 + cell_len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}  {item}" if line else f"  {item}"
    if line:
        lines.append(line)
    return lines
