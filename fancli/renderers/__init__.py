"""Renderers only format a Report: rich table, JSON, Markdown, CSV."""


def without_small_tensors(report):
    """The report as people read it: tensors below 2 dims (biases, norm scales) folded into one note.

    JSON always keeps every tensor; tables and Markdown use this unless asked for --all.
    """
    from dataclasses import replace

    kept = tuple(row for row in report.rows if len(row.layer.shape) >= 2)
    hidden = len(report.rows) - len(kept)
    if not hidden or not kept:
        return report
    note = f"{hidden} tensors below 2 dims (biases, norm weights: no fans in torch) not shown; --all (show_all=True) shows them"
    return replace(report, rows=kept, notes=report.notes + (note,))


#: Output format -> "module:function" rendering a Report to text, or to an iterator of its pieces (JSON,
#: whose 90,000-row reports are written as they come); imported only when that format is asked.
#: Adding a format: a renderer module, its entry here, its name in `fancli.vocab.FORMATS`.
RENDERERS = {"table": "table:grid_text", "json": "json_out:json_chunks", "markdown": "markdown:render_markdown",
             "csv": "csv_out:render_csv"}


def render_chunks(report, fmt: str):
    """The report rendered in one of FORMATS, as pieces of text to write in order."""
    import importlib

    module, _, function = RENDERERS[fmt].partition(":")
    rendered = getattr(importlib.import_module(f"{__name__}.{module}"), function)(report)
    return [rendered] if isinstance(rendered, str) else rendered


def as_read(report, fmt: str, show_all: bool = False, expand: bool = False):
    """The report as a format shows it: tables, Markdown and HTML hide tensors below 2 dims unless `show_all`
    (JSON and CSV keep every tensor), and fold repeated layers unless `expand`."""
    from dataclasses import replace

    from ..vocab import MACHINE_FORMATS

    if fmt not in MACHINE_FORMATS and not show_all:
        report = without_small_tensors(report)
    return replace(report, expanded=True) if expand else report


def render_text(report, fmt: str = "table", *, show_all: bool = False, expand: bool = False) -> str:
    """A report as text in one of FORMATS (the table plain), as the CLI writes it: `show_all` and `expand`
    are its `--all` and `--expand`."""
    return "".join(render_chunks(as_read(report, fmt, show_all, expand), fmt))
