"""Renderers only format a Report: rich table, JSON, Markdown."""


def without_small_tensors(report):
    """The report as people read it: tensors below 2 dims (biases, norm scales) folded into one note.

    JSON always keeps every tensor; tables and Markdown use this unless asked for --all.
    """
    from dataclasses import replace

    kept = tuple(row for row in report.rows if len(row.layer.shape) >= 2)
    hidden = len(report.rows) - len(kept)
    if not hidden or not kept:
        return report
    note = f"{hidden} tensors below 2 dims (biases, norm weights: no fans in torch) not shown; --all shows them"
    return replace(report, rows=kept, notes=report.notes + (note,))


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
