"""Markdown: a pipe table with footnotes, fit for a README or a pull-request comment.

Every text from the file goes through `markdown_text`, so no key renders as HTML, a link or emphasis."""

from __future__ import annotations

from ..report import Report
from ..text import markdown_text
from .common import Footnotes, columns, highlighted, summary, title, totals_line


def render_markdown(report: Report) -> str:
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    marked = highlighted(report)
    lines = [f"**{markdown_text(title(report))}**", ""]
    lines += [f"_{markdown_text(note)}_  " for note in report.notes]
    if report.notes:
        lines.append("")
    lines.append("| " + " | ".join(markdown_text(col.header) for col in cols) + " |")
    lines.append("|" + "|".join(":---" if col.align == "left" else "---:" for col in cols) + "|")
    for index, group in enumerate(report.shown):
        cells = [markdown_text(col.cell(group)) for col in cols]
        if index in marked:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    extra = footnotes.lines()
    if extra:
        lines.append("")
        lines += [f"- {markdown_text(line)}" for line in extra]
    lines += ["", markdown_text(totals_line(report), starts_line=True)]
    if report.command == "compare":
        lines += ["", markdown_text(summary(report), starts_line=True)]
    return "\n".join(lines) + "\n"
