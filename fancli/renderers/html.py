"""HTML for Jupyter's `_repr_html_` and `inspect -f html`: a plain table with the table renderer's columns and
footnotes.

Every string goes through `html_text`: names, keys and notes come from the file, and a notebook renders
HTML live (a key holding `<script>` must show as text, not run). The notebook's MathJax is told to leave
the table alone (`tex2jax_ignore`, `mathjax_ignore`), so a key holding `$…$` is not typeset either.
"""

from __future__ import annotations

from ..report import Report
from ..text import html_text
from .common import Footnotes, columns, title


def render_html(report: Report) -> str:
    footnotes = Footnotes()
    cols = columns(report, footnotes)
    head = "".join(f'<th style="text-align:{col.align}">{html_text(col.header)}</th>' for col in cols)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:{col.align}">{html_text(col.cell(row))}</td>' for col in cols)
        + "</tr>" for row in report.shown)
    notes = [*report.notes, *footnotes.lines()]
    foot = "".join(f"<div><small>{html_text(note)}</small></div>" for note in notes)
    return (f'<div class="tex2jax_ignore mathjax_ignore"><strong>{html_text(title(report))}</strong><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{foot}</div>\n")
