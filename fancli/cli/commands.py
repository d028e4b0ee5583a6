"""The command line: parse options, call the library, pick a renderer, map errors to exit codes.

Exit codes: 0 success · 1 a check found drift · 2 bad usage or unreadable input · 3 internal error ·
130 interrupted.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
from typing import TYPE_CHECKING

import click

from ..errors import DISTRIBUTION, FancliError, torch_missing
from ..safe_io import recording_reads
from ..text import printable
from ..vocab import LAYOUTS, NORMS
from .options import (
    ModesCommand,
    SourceArgs,
    check_limits,
    complete_activation,
    complete_path,
    complete_recipe,
    fans_option,
    format_option,
    input_shape,
    kwargs_option,
    modes_option,
    nonlinearity_option,
    output_option,
    param_option,
    report_options,
    scheme_option,
    source_options,
    spectral_option,
    with_parallel,
)
from . import run as run_module
from .run import (
    ReaderGone,
    StdoutError,
    build_report,
    check_outputs,
    emit,
    load_model,
    shape_layer,
    terminal_width,
    write_stdout,
    wrote,
)

if TYPE_CHECKING:
    from ..report import Request

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--offline", is_flag=True,
              help="Refuse every remote source (s3://, gs://, http(s)://) with one line; nothing is fetched.")
def cli(debug: bool, offline: bool) -> None:
    """fan_in, fan_out, gain and init std of every layer of a network, as torch computes them.

    SOURCE is a YAML layer spec (docs/spec.md), a torch.save file (.pt/.pth/.bin: state_dict, checkpoint,
    pickled module with --trust), TorchScript, a torch.export .pt2, a .safetensors file or a sharded
    checkpoint's index.json, a model folder (Hugging Face layout) or a DCP checkpoint folder, a repo id
    org/name from the local Hugging Face cache, a GGUF file or an ONNX model (with the gguf or onnx
    package), a factory pkg.module:callable, or an s3://, gs:// or http(s):// URL of safetensors (by range).

    Exit codes: 0 success, 1 drift or a violated expectation (check, diff), 2 bad usage or unreadable input,
    3 internal error.
    """
    if offline:  # the library's own switch (`remote_io.offline`), so every source of this run obeys it
        os.environ["FANCLI_OFFLINE"] = "1"


@cli.command(cls=ModesCommand)
@report_options("inspect")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="With several SOURCEs: draw each layer's observed std against the step (needs matplotlib).")
def inspect(src: SourceArgs, request: Request, fmt: str, output: str | None, show_all: bool, expand: bool,
            plot_path: str | None) -> None:
    """What each layer gets: fans, gain, std and bound under a scheme and mode.

    Several SOURCEs (a run's checkpoints: run/step-*/, in natural order) give each layer's observed std
    per checkpoint instead, a trajectory; they imply --stats."""
    if len(src.sources) > 1 or plot_path:
        from .trajectory import run_trajectory

        return run_trajectory(src, request, fmt, output, show_all, expand, plot_path)
    model, _ = load_model(src)
    report = build_report(model, request)
    emit(report, fmt, output, show_all, expand)


@cli.command(cls=ModesCommand)
@report_options("compare")
def compare(src: SourceArgs, request: Request, fmt: str, output: str | None, show_all: bool, expand: bool) -> None:
    """How the modes differ, layer by layer: one std column per mode and their ratio."""
    model, _ = load_model(src)
    report = build_report(model, request)
    emit(report, fmt, output, show_all, expand)


@cli.command()
@source_options
@click.option("--update", is_flag=True, help="Write the baseline from today's configuration instead of checking.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The lock file (default: the config's 'baseline', else fancli.lock.json).")
@click.option("--stats", is_flag=True,
              help="Also check each layer's observed std against the configured scheme (standard errors).")
@click.option("--tolerance", type=float, help="Relative change in gain, std or bound that counts as drift (>= 0).")
@click.option("--sigmas", type=float, help="--stats: standard errors an observed std may be off (default 5).")
@format_option("check", help="Output format (markdown fits a pull-request comment).")
@output_option("Write the result to FILE.")
@with_parallel
def check(src: SourceArgs, update: bool, baseline_path: str | None, stats: bool, tolerance: float | None,
          sigmas: float | None, fmt: str, output: str | None, jobs: int | None, cluster: str | None) -> None:
    """CI: has the init configuration drifted from the committed baseline? Exit 0 clean, 1 drift, 2 bad
    usage or unreadable input (no config, no baseline, a source that cannot be read)."""
    from .. import api
    from ..checks import check as drift
    from ..config import Config
    from ..outputs import as_text
    from ..report import Request
    from ..safe_io import checked_target, is_stdout, write_text

    check_limits(tolerance, sigmas)
    model, config = load_model(src)
    report = build_report(model, Request(stats=stats and not update, jobs=jobs, cluster=cluster))
    if update:
        baseline = (config or Config()).drift_limits(baseline_path)[0]
        checked_target(baseline)  # `--baseline model.pth`: "is an input" says more than "not a baseline"
        drift.ensure_replaceable(baseline)
        write_text(baseline, drift.dumps(drift.baseline_document(report, baseline)))
        wrote(baseline, f" ({len(report.rows)} tensors)")
        return
    result = api.check_report(report, config, baseline_path, stats=stats, tolerance=tolerance, sigmas=sigmas)
    text = as_text("check", fmt, result, **terminal_width(fmt, output))
    if output and not is_stdout(output):
        write_text(output, text)  # the baseline, read above, is in the read set
    else:
        write_stdout(text)
    if not result.ok:
        raise click.exceptions.Exit(1)


@cli.command("diff")
@click.argument("source_a", metavar="A", shell_complete=complete_path)
@click.argument("source_b", metavar="B", shell_complete=complete_path)
@click.option("--max-change", type=float, metavar="X",
              help="Exit 1 when a tensor's ‖B−A‖/‖A‖ exceeds X (e.g. 0 for layers that must stay frozen).")
@click.option("--allow-structural", is_flag=True,
              help="Do not exit 1 for tensors added, removed or reshaped (by default they fail the diff).")
@click.option("--filter", "-k", "filters", multiple=True, metavar="GLOB",
              help="Only tensors whose name or parameter key matches (glob, or substring). Repeatable.")
@click.option("--trust", is_flag=True, help="Let torch's loaders run code from the files (only files you trust).")
@click.option("--expand", is_flag=True,
              help="Tables and Markdown: list every tensor instead of folding keys that differ only in their "
                   "indices and agree in status and values (JSON and CSV always list every tensor).")
@format_option("diff")
@output_option()
@spectral_option()
@with_parallel
def diff(source_a: str, source_b: str, max_change: float | None, allow_structural: bool,
         filters: tuple[str, ...], trust: bool, expand: bool, fmt: str, output: str | None, spectral: bool,
         jobs: int | None, cluster: str | None) -> None:
    """What changed from checkpoint A to B, tensor by tensor (streamed): added, removed, reshaped, dtype,
    and the relative change of std, of mean, and ‖B−A‖/‖A‖. Exit 1 past --max-change or on added/removed/
    reshaped tensors, so CI can gate a fine-tune."""
    from .. import api
    from ..checks.diff import diff_models
    from ..outputs import as_text
    from ..safe_io import is_stdout, write_text

    if max_change is not None and not (max_change >= 0 and max_change != float("inf")):
        from ..errors import SettingsError

        raise SettingsError(f"--max-change {max_change:g}: expected a finite number >= 0 (a relative norm)")
    model_a, model_b = api.load(source_a, trust=trust), api.load(source_b, trust=trust)
    result = diff_models(model_a, model_b, tuple(filters), jobs=jobs, cluster=cluster, spectral=spectral)
    text = as_text("diff", fmt, result, max_change=max_change, allow_structural=allow_structural, expand=expand,
                   **terminal_width(fmt, output))
    if output and not is_stdout(output):
        write_text(output, text)
        wrote(output)
    else:
        write_stdout(text)
    if result.failures(max_change, allow_structural):
        raise click.exceptions.Exit(1)


@cli.command(cls=ModesCommand)
@source_options
@click.option("--layer", "-l", "layer_names", multiple=True, metavar="NAME",
              help="The layer(s) to explain: a name, parameter key, glob or substring.")
@click.option("--shape", metavar="DIMS", help="Explain a bare weight shape instead, e.g. 64,3,7,7.")
@click.option("--kind", help="With --shape: linear, conv2d, conv_transpose2d, embedding… (default: from the dims).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="torch", show_default=True,
              help="With --shape: how the dims are ordered.")
@click.option("--groups", type=click.IntRange(min=1), help="With --shape: conv groups.")
@click.option("--stride", metavar="S", help="With --shape: conv stride, e.g. 2 or 2,2.")
@click.option("--transposed", is_flag=True, help="With --shape: a transposed conv.")
@scheme_option()
@modes_option("One or more modes.")
@nonlinearity_option()
@param_option()
@fans_option()
@click.option("--recipe", metavar="NAME", shell_complete=complete_recipe,
              help="Explain what a library's init draws (see inspect --recipe).")
@format_option("explain", "Output format: the derivation as text, JSON (inspect's row and its lines) or Markdown.")
def explain(src: SourceArgs, layer_names: tuple[str, ...], shape: str | None, kind: str | None, layout: str,
            groups: int | None, stride: str | None, transposed: bool, scheme: str | None, modes: tuple[str, ...],
            nonlinearity: str | None, param: float | None, fans: str | None, recipe: str | None, fmt: str) -> None:
    """The derivation of a layer's fans, gain and std, with the numbers filled in."""
    from ..errors import SettingsError
    from ..layer import Model
    from ..outputs import as_text
    from ..report import Settings, analyze

    settings = Settings(scheme, modes, nonlinearity, param, fans, None, layer_names if not shape else (), recipe)
    if shape:
        model = Model("--shape", "shape", (shape_layer(shape, kind, layout, groups, stride, transposed),))
    elif src.source or not src.no_config:
        if not layer_names:
            raise SettingsError("name the layer to explain with --layer (or give --shape instead of a SOURCE)")
        model, _ = load_model(src)
    else:
        raise SettingsError("give a SOURCE with --layer NAME, or --shape DIMS")
    write_stdout(as_text("explain", fmt, analyze(model, settings)))


@cli.command(cls=ModesCommand)
@click.argument("source", required=False, shell_complete=complete_path)
@modes_option("Modes to initialise under, side by side. Default: fan_in fan_out.")
@scheme_option("Init scheme (default: the spec's, else kaiming_normal).")
@nonlinearity_option("Activation after every layer, overriding the spec.")
@param_option()
@fans_option("Initialise from torch's fans or the layer-aware effective ones.", default="torch")
@click.option("--norms", type=click.Choice(NORMS), default=NORMS[0], show_default=True,
              help="Leave norm layers out (the init's effect alone) or run them (BatchNorm resets variance).")
@click.option("--batch", type=click.IntRange(min=1), help="Inputs per pass (default 256 flat, 32 images).")
@click.option("--draws", type=click.IntRange(min=1), default=4, show_default=True,
              help="Random inits averaged per mode (one init of a deep net is noisy).")
@click.option("--input-shape", callback=input_shape, metavar="DIMS",
              help="One input's shape without the batch, e.g. 3,32,32 (required for a factory's module).")
@click.option("--seed", type=int, default=0, show_default=True)
@kwargs_option()
@format_option("propagate")
@output_option()
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw the variances per layer as a chart (needs the 'plot' extra: matplotlib).")
def propagate(source: str | None, modes: tuple[str, ...], scheme: str | None, nonlinearity: str | None,
              param: float | None, fans: str, norms: str, batch: int | None, draws: int,
              input_shape: tuple[int, ...] | None, seed: int, factory_kwargs: dict | None, fmt: str,
              output: str | None, plot_path: str | None) -> None:
    """Initialise under each mode, push N(0,1) inputs forward and a N(0,1) gradient back, and show each
    layer's activation and gradient variance: fan_in keeps the forward pass, fan_out the backward."""
    from ..errors import FancliError
    from ..outputs import as_text
    from ..propagate import load_source
    from ..propagate import propagate as run_propagation
    from ..safe_io import is_stdout, write_text

    if source is None:
        raise FancliError("give a YAML spec or a pkg.module:factory to propagate through")
    loaded = load_source(source, kwargs=factory_kwargs)
    written = output if output and not is_stdout(output) else None
    check_outputs(written, plot_path)  # refused before seconds of propagation, not after
    props = run_propagation(loaded, modes or ("fan_in", "fan_out"),
                            scheme=scheme, nonlinearity=nonlinearity, param=param, fans=fans, norms=norms,
                            batch=batch, input_shape=input_shape, seed=seed, draws=draws)
    text = as_text("propagate", fmt, props, source=source)
    if plot_path:
        from ..renderers.plot import plot_propagation

        plot_propagation(props, plot_path, title=f"{source} · {props[0].scheme}", others=[written])
        wrote(plot_path)
    if written:
        write_text(written, text, [plot_path])
    else:
        write_stdout(text)


@cli.command()
@click.argument("name", required=False, shell_complete=complete_activation)
@click.option("--param", "-p", type=float, metavar="P",
              help="The activation's parameter (leaky_relu's slope, elu's alpha, softplus's beta).")
@click.option("--list", "list_all", is_flag=True, help="Every known activation, torch's gain beside the numeric one.")
@format_option("gain")
def gain(name: str | None, param: float | None, list_all: bool, fmt: str) -> None:
    """The gain of an activation: torch's where defined, and 1/√E[f(z)²] for z ~ N(0, 1).

    NAME is torch's name (relu, tanh, leaky_relu…), one torch lacks (gelu, silu/swish, mish, elu,
    softplus, hardswish…), or a dotted torch function (torch.nn.functional.rrelu).
    """
    from ..analysis import activations, gains
    from ..errors import SettingsError
    from ..outputs import as_text

    if not list_all and not name:
        raise SettingsError("give an activation NAME, or --list")
    names = list(activations.ACTIVATIONS) if list_all else [name]
    rows = []
    for item in names:
        try:
            numeric = activations.numeric_gain(item, param)
            torch_value = gains.calculate_gain(gains.canonical(item), param) if gains.torch_defines(item) else None
        except ValueError as error:
            raise SettingsError(str(error)) from None
        rows.append({"name": item, "param": param, "torch": torch_value, "numeric": numeric,
                     "used": torch_value if torch_value is not None else numeric})
    write_stdout(as_text("gain", fmt, rows))


#: An error line is cut here: a message quoting a hostile file must not pour its contents onto stderr.
MAX_MESSAGE = 1000


def _one_line(error: BaseException) -> str:
    """Messages name files and quote keys from them: one printable stderr line whatever the message,
    with controls and escape sequences shown, never acted on, and at most MAX_MESSAGE characters."""
    text = printable(error)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def _usage_line(error: click.ClickException) -> str:
    """click's usage errors as the project's one line, with the help command to run."""
    context = getattr(error, "ctx", None)
    hint = f" (see {context.command_path} --help)" if context is not None else ""
    return f"fancli: error: {_one_line(error.format_message())}{hint}"


def _quiet_stdout() -> None:
    """After stdout failed (full disk, closed pipe): point it at /dev/null so the interpreter's final
    flush of what is still buffered neither fails again nor adds a second message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def _traceback(debug: bool) -> None:
    """With --debug, the traceback of the error being handled, before its line and its own exit code."""
    if debug:
        import traceback

        traceback.print_exc()


def _internal(error: Exception, debug: bool) -> None:
    """An error fancli did not expect: one line and exit 3, the traceback only with --debug."""
    _traceback(debug)
    click.echo(f"fancli: internal error: {type(error).__name__}: {_one_line(error)} (rerun with --debug for the "
               "traceback)", err=True)
    sys.exit(EXIT_INTERNAL)


def _debug_first(args: list[str]) -> list[str]:
    """`--debug` wherever it is typed (`fancli inspect m.pt --debug` too), moved to the group that owns it;
    an argument after `--` is left alone."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return list(args)
    return ["--debug", *(arg for arg in args[:end] if arg != "--debug"), *args[end:]]


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns every failure into one line and an exit code."""
    args = _debug_first(sys.argv[1:] if argv is None else argv)
    debug = args[:1] == ["--debug"]
    run_module.ends_process = argv is None
    # A short-lived process whose objects form no cycles worth collecting: the cyclic collector's
    # full passes over 50,000 layers' objects made time grow faster than the layer count.
    gc.disable()
    try:
        with recording_reads():  # the files this run reads, which no output may replace
            code = cli.main(args=args, prog_name="fancli", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.NoArgsIsHelpError as error:
        error.show()  # `fancli` alone: the help, as before
        sys.exit(error.exit_code)
    except click.ClickException as error:
        _traceback(debug)
        click.echo(_usage_line(error), err=True)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("fancli: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except FancliError as error:
        if isinstance(error, StdoutError):
            _quiet_stdout()
        _traceback(debug)
        click.echo(f"fancli: error: {_one_line(error)}", err=True)
        sys.exit(error.exit_code)
    except ModuleNotFoundError as error:
        missing = torch_missing(error)
        if missing is None:
            _internal(error, debug)
        _traceback(debug)
        click.echo(f"fancli: error: {missing}", err=True)
        sys.exit(missing.exit_code)
    except (BrokenPipeError, ReaderGone):
        _quiet_stdout()
        sys.stderr.close()  # the reader went away (`| head`); nothing more to say
        sys.exit(0)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            _internal(error, debug)
        if debug:
            raise
        # a name the user gave, asked about wherever first (an exists() or is_dir()): bad input, not a bug
        name = printable(error.filename if error.filename is not None else "a file name")
        shown = name if len(name) <= 200 else name[:200] + "…"
        click.echo(f"fancli: error: {shown}: {error.strerror or 'file name too long'}", err=True)
        sys.exit(FancliError.exit_code)

    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, no traceback
        _internal(error, debug)
    sys.exit(code if isinstance(code, int) else 0)  # click returns a command's Exit code here


from .scale import scale  # noqa: E402 - a command in its own module, added to the group defined above

cli.add_command(scale)
