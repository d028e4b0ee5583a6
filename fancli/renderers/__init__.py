"""Renderers only format a result: rich table, JSON, Markdown, CSV, HTML. Which renderer writes which
command's result in which format is `fancli.outputs.RENDERERS`."""

from __future__ import annotations

from typing import Any


def render_text(result: Any, fmt: str = "table", *, show_all: bool = False, expand: bool = False) -> str:
    """`fancli.render`: a result (a Report, a CheckResult) as text in one of its command's formats, as the CLI
    writes it (the table plain); for a Report, `show_all` and `expand` are --all and --expand."""
    from ..outputs import as_text
    from ..report import Report

    if isinstance(result, Report):
        result = result.as_read(fmt, show_all, expand)
    return as_text(result.command, fmt, result)
