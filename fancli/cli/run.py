"""What the commands share between parsing and rendering: load SOURCE with its configuration, run a
report (with a progress bar for big reads), and write the result to stdout or, atomically, to a file that
the run did not read (safe_io's read set)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import click

from ..errors import FancliError, SettingsError
from ..text import printable
from .options import SourceArgs

if TYPE_CHECKING:
    from ..layer import Model
    from ..report import Report, Request

PROGRESS_BYTES = 256 * 1024 * 1024

#: Whether this run is the whole process (`commands.main` given no arguments: the console script, `python -m
#: fancli`), which then leaves its report to the process's end (`leave_to_exit`); not when called in-process.
ends_process = False


def load_model(src: SourceArgs) -> tuple[Any, Any]:
    """The model, with the init configuration applied when there is one; and the configuration."""
    from .. import api
    from ..config_files import find_config

    found = None if src.no_config else src.config_path or find_config()
    config = None
    if found is not None:
        from ..config import load_config  # only with a configuration to parse

        config = load_config(found)
    if src.source is None and (config is None or not config.source):
        raise SettingsError(_no_source(src, config))
    model = api.load_configured(src.source, config, warn=warning, trust=src.trust, kwargs=src.kwargs,
                                revision=src.revision)
    return model, config


def _no_source(src: SourceArgs, config: Any) -> str:
    """Why there is nothing to read, and how to name it: SOURCE, or a configuration (`--config FILE`, or a
    fancli.yaml found from here up); the nearest fancli.yaml below the working directory, where there is one,
    since that is what a repository's example (`sample_models/ci/`) looks like from its root."""
    if src.no_config:
        return "no SOURCE given (and --no-config: no configuration to take one from)"
    if config is not None:
        return f"no SOURCE given, and {printable(config.path)} has no 'source'; give SOURCE, or add `source:` to it"
    import shlex

    from ..config_files import config_below

    below = config_below(Path())
    hint = f" (below this folder: --config {printable(shlex.quote(str(below)))})" if below else ""
    return ("no SOURCE given, and no fancli.yaml or [tool.fancli] here or in a folder above it (up to the "
            f"repository root); give SOURCE, or a configuration with --config FILE{hint}")


def warning(message: str) -> None:
    """One line on stderr that does not change the exit code (`fancli: warning: …`)."""
    click.echo(f"fancli: warning: {printable(message)}", err=True)


class ReaderGone(Exception):
    """stdout's reader went away (`| head`): not an error. Not an OSError either, so that click (which ends
    a broken pipe with exit 1) hands it to `main`, which ends quietly with 0."""


class StdoutError(FancliError):
    """The result could not be written to stdout: closed (`>&-`), a full disk (`> /dev/full`)…"""


def write_stdout(text: str | Iterable[str | bytes] | None = None, printer: Callable[[], None] | None = None) -> None:
    """Print a result (`text`, or its pieces in order, or whatever `printer` prints) and flush it, so that a
    failing stdout is one error line and exit 2 here, not a traceback now or at interpreter exit."""
    if sys.stdout is None:
        raise StdoutError("stdout is closed; nothing to write the result to (give -o FILE)")
    try:
        if printer is not None:
            printer()
        else:  # click's stdout (UTF-8 where the locale's encoding cannot write the text; bytes pieces, UTF-8,
            # to its buffer), with color=True: as they are, not scanned for colour codes to strip (60 MB of
            # JSON), which the renderers escape
            from ..safe_io import takes_utf8

            raw = takes_utf8(sys.stdout)
            for piece in [text] if isinstance(text, str) or text is None else text:
                click.echo(piece if raw or not isinstance(piece, bytes) else piece.decode(), nl=False, color=True)
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone from None  # the reader went away (`| head`) after a piece: main ends quietly
    except OSError as error:
        raise StdoutError(f"cannot write to stdout: {error.strerror or error}") from None


def check_outputs(output: str | None, plot_path: str | None) -> None:
    """Refuse, before the long part of a run, an output or a plot onto a file the run reads, onto each
    other, or a plot without an image suffix it can write."""
    from ..safe_io import checked_target

    if output:
        checked_target(output, [plot_path])
    if plot_path:
        from ..renderers.plot import checked_plot

        checked_plot(plot_path, [output])


def wrote(path: Any, detail: str = "") -> None:
    click.echo(f"wrote {printable(path)}{detail}", err=True)


def build_report(model: Model, request: Request) -> Report:
    """The report `request` asks of `model` (`api.run`), with a progress bar on stderr for big reads."""
    from .. import api

    if not request.reads_weights:
        return api.run(model, request)
    from ..report import selected

    total = sum(nbytes(layer) for layer in selected(model, request.settings.filters) if layer.data is not None)
    return with_progress(total, "reading weights", lambda on_chunk: api.run(model, request, on_chunk))


def with_progress(total: int, description: str, work: Callable[[Callable[[int], None] | None], Any]) -> Any:
    """`work(on_chunk)`, with a progress bar on stderr advanced by `on_chunk(nbytes)` where `total` bytes
    are PROGRESS_BYTES or more (`on_chunk` None below: a bar that flashes by says nothing)."""
    if total < PROGRESS_BYTES:
        return work(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        return work(lambda nbytes: progress.advance(task, nbytes))


def nbytes(layer: Any) -> int:
    import math

    from ..weights.dtypes import DTYPES

    return math.prod(layer.shape) * DTYPES.get(layer.dtype or "float32", (4,))[0]


def emit(report: Any, fmt: str, output: str | None, show_all: bool, expand: bool = False) -> None:
    """Render to stdout, or atomically to a file the run did not read; tables and Markdown fold repeated
    layers unless `expand`."""
    from ..outputs import pieces
    from ..safe_io import is_stdout, write_text

    report = report.as_read(fmt, show_all, expand)

    if output and not is_stdout(output):
        write_text(output, pieces(report.command, fmt, report))
        wrote(output)
    elif fmt == "table" and sys.stdout is not None and sys.stdout.isatty():
        from ..renderers.table import print_rich

        write_stdout(printer=lambda: print_rich(report))
    else:
        write_stdout(pieces(report.command, fmt, report))
    leave_to_exit(report)


def leave_to_exit(report: Any) -> None:
    """Where this run is the whole process (`ends_process`), leave the written report to the process's end:
    freeing a 90,000-row report object by object took 0.15 s after its output was written, and the OS takes
    a process's memory back whole. A reference cycle holds it and `gc.freeze` keeps every collection, exit's
    too, off it; exit's own cleanup (atexit, flushing and closing files) still runs."""
    if not ends_process:
        return
    import gc

    held: list[Any] = [report]
    held.append(held)
    gc.freeze()


def terminal_width(fmt: str, output: str | None) -> dict[str, int]:
    """`{"width": columns}` for a table written to a terminal, which then fits it as inspect's table does
    (rich's width: the terminal's, or COLUMNS); nothing for other formats, files and pipes (the whole grid)."""
    from ..safe_io import is_stdout

    if fmt != "table" or (output and not is_stdout(output)) or sys.stdout is None or not sys.stdout.isatty():
        return {}
    from rich.console import Console

    return {"width": Console().width}


def shape_layer(shape: str, kind: str | None, layout: str, groups: int | None, stride: str | None,
                 transposed: bool) -> Any:
    """A Layer from `--shape 64,3,7,7` and what the user says about it."""
    from ..errors import SettingsError
    from ..kinds import KINDS, kind_for_ndim
    from ..layer import Layer

    try:
        dims = tuple(int(part) for part in shape.replace("x", ",").replace("×", ",").split(","))
        strides = tuple(int(part) for part in stride.split(",")) if stride else None
    except ValueError:
        raise SettingsError(f"--shape {shape!r}: expected integers separated by commas, e.g. 64,3,7,7") from None
    if any(d < 0 for d in dims) or len(dims) < 1:
        raise SettingsError(f"--shape {shape!r}: sizes must be 0 or more")
    kernel_dims = max(len(dims) - 2, 0)
    if strides is not None and len(strides) == 1 and kernel_dims:
        strides *= kernel_dims  # one value for every kernel dim, as torch's conv modules and specs read it
    if strides is not None and len(strides) != kernel_dims:
        raise SettingsError(f"--stride {stride!r}: give one value or {kernel_dims} (one per kernel dim of "
                            f"--shape {shape}), not {len(strides)}")
    kind = kind or kind_for_ndim(len(dims), transposed)
    if kind not in KINDS:
        raise SettingsError(f"--kind {kind!r}: known kinds are {', '.join(KINDS)}")
    transposed = transposed or KINDS[kind].transposed
    return Layer("layer", "layer.weight", kind, dims, layout=layout, groups=groups or (1 if transposed else None),
                 transposed=transposed, stride=strides)
