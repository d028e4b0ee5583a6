"""Markdown: a pipe table with footnotes, fit for a README or a pull-request comment."""

from __future__ import annotations

from ..report import Report
from ..text import printable
from .common import Footnotes, columns, highlighted, summary, title, totals_line


def _escape(text: str) -> str:
    """A cell or line: printable (keys come from the file), and a `|` in it does not split the table."""
    return printable(text).replace("|", "\\|")


def render_markdown(report: Report) -> str:
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    marked = highlighted(report)
    lines = [f"**{_escape(title(report))}**", ""]
    lines += [f"_{_escape(note)}_  " for note in report.notes]
    if report.notes:
        lines.append("")
    lines.append("| " + " | ".join(col.header for col in cols) + " |")
    lines.append("|" + "|".join(":---" if col.align == "left" else "---:" for col in cols) + "|")
    for index, group in enumerate(report.shown):
        cells = [_escape(col.cell(group)) for col in cols]
        if index in marked:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    extra = footnotes.lines()
    if extra:
        lines.append("")
        lines += [f"- {_escape(line)}" for line in extra]
    lines += ["", _escape(totals_line(report))]
    if report.command == "compare":
        lines += ["", printable(summary(report))]
    return "\n".join(lines) + "\n"
