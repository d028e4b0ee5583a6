"""Renderers only format a Report: rich table, JSON, Markdown."""

FORMATS = ("table", "json", "markdown")


def render_text(report, fmt: str, width: int | None = None, color: bool = False) -> str:
    """Render a report to a string in one of FORMATS (the table as plain or ANSI text)."""
    if fmt == "json":
        from .json_out import render_json

        return render_json(report)
    if fmt == "markdown":
        from .markdown import render_markdown

        return render_markdown(report)
    from .table import render_table_text

    return render_table_text(report, width=width, color=color)
