"""Renderers only format a Report: rich table, JSON, Markdown."""

FORMATS = ("table", "json", "markdown")


def render_text(report, fmt: str) -> str:
    """Render a report to a string in one of FORMATS (the table as plain text)."""
    if fmt == "json":
        from .json_out import render_json

        return render_json(report)
    if fmt == "markdown":
        from .markdown import render_markdown

        return render_markdown(report)
    from .table import grid_text

    return grid_text(report)
