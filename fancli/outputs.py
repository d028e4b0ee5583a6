"""Which renderer writes which command's result in which format: one table, keyed (command, format).

A command's `--format` offers exactly its keys here (`formats`), so no format is offered that its command
cannot write. The CLI, `fancli.render` and the results' own views (`print(report)`, Jupyter's
`Report._repr_html_`, `CheckResult.render`) all look their renderer up here: this module imports no
renderer, so results never import the renderers that sit above them. A renderer is named
"module:function" under `fancli.renderers` and imported only when its format is asked for (`fancli --help`
imports none); a callable registered here is used as it is.

Adding a format to a command: the renderer function, and its entry in RENDERERS.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable

from .errors import SettingsError

#: `renderer(result, **options)` -> the text, or the pieces to write in order (JSON, whose 90,000-row
#: reports are written as they come; a piece is text, or UTF-8 bytes where built as bytes). Options are the
#: command's (diff's `max_change`, propagate's `source`; `width` only for a table written to a terminal).
Renderer = Callable[..., "str | Iterable[str | bytes]"]

#: (command, format) -> "module:function" in `fancli.renderers`, or a Renderer. A command's first format is its
#: default. inspect and compare render a Report; trajectory (inspect with several SOURCEs) a Trajectory;
#: check a CheckResult; diff a DiffResult; explain a Report, as derivations; gain a list of rows; propagate a
#: list of Propagation; scale a WidthSweep.
RENDERERS: dict[tuple[str, str], "str | Renderer"] = {
    **{(command, fmt): function for command in ("inspect", "compare") for fmt, function in (
        ("table", "table:grid_text"), ("json", "json_out:json_chunks"), ("markdown", "markdown:render_markdown"),
        ("csv", "csv_out:render_csv"), ("html", "html:render_html"))},
    ("trajectory", "table"): "trajectory_out:render_table",
    ("trajectory", "json"): "trajectory_out:render_json",
    ("trajectory", "markdown"): "trajectory_out:render_markdown",
    ("trajectory", "csv"): "trajectory_out:render_csv",
    ("diff", "table"): "diff_out:render_diff_table",
    ("diff", "json"): "diff_out:render_diff_json",
    ("diff", "markdown"): "diff_out:render_diff_markdown",
    ("diff", "csv"): "diff_out:render_diff_csv",
    ("check", "table"): "check_out:render_check_text",
    ("check", "json"): "check_out:render_check_json",
    ("check", "markdown"): "check_out:render_check_markdown",
    ("explain", "table"): "explain:explain",
    ("explain", "json"): "explain:explain_json",
    ("explain", "markdown"): "explain:explain_markdown",
    ("gain", "table"): "gain:render_gains",
    ("gain", "json"): "gain:render_gains_json",
    ("propagate", "table"): "propagate:render_propagation",
    ("propagate", "json"): "propagate:render_propagation_json",
    ("scale", "table"): "scale:render_scale",
    ("scale", "json"): "scale:render_scale_json",
}

#: Formats for programs: every tensor, small ones too, and nothing but the document on stdout. The others
#: are read by people: they fold tensors below 2 dims into a note unless --all.
MACHINE_FORMATS = ("json", "csv")


def formats(command: str) -> tuple[str, ...]:
    """The formats `command` writes, its default first."""
    return tuple(fmt for (name, fmt) in RENDERERS if name == command)


def renderer(command: str, fmt: str) -> Renderer:
    """The function writing `command`'s result as `fmt`; a format the command lacks is a SettingsError."""
    entry = RENDERERS.get((command, fmt))
    if entry is None:
        raise SettingsError(f"{command} writes no {fmt!r} output: its formats are {', '.join(formats(command))}")
    if not isinstance(entry, str):
        return entry
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(f"fancli.renderers.{module}"), function)


def pieces(command: str, fmt: str, result: Any, **options: Any) -> Iterable[str | bytes]:
    """`result` (what `command` computed) as `fmt`, as pieces to write in order: text, or its UTF-8 bytes where
    a renderer builds those (JSON's layer lines: 60 MB never encoded from text)."""
    rendered = renderer(command, fmt)(result, **options)
    return [rendered] if isinstance(rendered, str) else rendered


def as_text(command: str, fmt: str, result: Any, **options: Any) -> str:
    """`result` (what `command` computed) as `fmt`, in one string."""
    return "".join(piece if isinstance(piece, str) else piece.decode("utf-8")
                   for piece in pieces(command, fmt, result, **options))
