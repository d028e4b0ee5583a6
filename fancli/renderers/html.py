"""HTML for Jupyter's `_repr_html_`: a plain table with the table renderer's columns and footnotes.

Every string is escaped: names, keys and notes come from the file, and a notebook renders HTML live
(a key holding `<script>` must show as text, not run).
"""

from __future__ import annotations

from html import escape

from ..report import Report
from ..text import printable
from .common import Footnotes, columns, title


def _text(value: str) -> str:
    return escape(printable(value), quote=True)


def render_html(report: Report) -> str:
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    head = "".join(f'<th style="text-align:{col.align}">{_text(col.header)}</th>' for col in cols)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:{col.align}">{_text(col.cell(row))}</td>' for col in cols) + "</tr>"
        for row in report.shown)
    notes = [*report.notes, *footnotes.lines()]
    foot = "".join(f"<div><small>{_text(note)}</small></div>" for note in notes)
    return (f"<div><strong>{_text(title(report))}</strong><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{foot}</div>")
