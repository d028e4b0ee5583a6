"""The command line: parse options, call the library, pick a renderer, map errors to exit codes.

Exit codes: 0 success · 1 a check found drift · 2 bad usage or unreadable input · 3 internal error ·
130 interrupted.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable

import click

from .analysis.gains import TORCH_NONLINEARITIES
from .analysis.schemes import ALIASES as SCHEME_ALIASES
from .analysis.schemes import MODES, SCHEMES
from .errors import FancliError
from .text import printable

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class _ModesCommand(click.Command):
    """Lets `--mode fan_in fan_out` take several values, as the product promises.

    click options take a fixed number of values, so `--mode a b` is rewritten to `--mode a --mode b`
    before parsing; only known mode names are swallowed, so SOURCE may still follow.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        index = 0
        while index < len(args):
            token = args[index]
            rewritten.append(token)
            index += 1
            if token in ("--mode", "-m"):
                if index < len(args):
                    rewritten.append(args[index])
                    index += 1
                while index < len(args) and args[index] in MODES:
                    rewritten += [token, args[index]]
                    index += 1
        return super().parse_args(ctx, rewritten)


def _parse_kwargs(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    import json

    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise click.BadParameter(f"not valid JSON ({error})") from None
    except RecursionError:
        raise click.BadParameter("not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("expected a JSON object, e.g. '{\"width\": 64}'")
    return parsed


def _settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options inspect and compare share."""
    scheme_names = list(SCHEMES) + list(SCHEME_ALIASES)
    options = [
        click.option("--scheme", "-s", metavar="NAME",
                     help=f"Init scheme: {', '.join(SCHEMES)} (aliases he_*, glorot_*). "
                          "Default: the spec's, else kaiming_normal.",
                     shell_complete=lambda *_: scheme_names),
        click.option("--nonlinearity", "-n", metavar="NAME",
                     help=f"Nonlinearity after every layer, overriding the source: {', '.join(TORCH_NONLINEARITIES)}."),
        click.option("--param", "-p", type=float, metavar="SLOPE",
                     help="The nonlinearity's parameter (leaky_relu's negative slope, kaiming's `a`)."),
        click.option("--fans", type=click.Choice(["torch", "effective"]),
                     help="Compute std from torch's fans (default) or the layer-aware effective fans."),
        click.option("--pool-fan-out/--no-pool-fan-out", default=None,
                     help="Divide a conv's fan_out by the pool area after it (LeNet tutorial convention)."),
        click.option("--filter", "-k", "filters", multiple=True, metavar="GLOB",
                     help="Only layers whose name or parameter key matches (glob, or substring). Repeatable."),
        click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
                     show_default=True, help="Output format."),
        click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
                     help="Write to FILE (atomically) instead of stdout."),
        click.option("--all", "show_all", is_flag=True,
                     help="Tables and Markdown: also list tensors below 2 dims (JSON always has them)."),
        click.option("--stats", is_flag=True,
                     help="Read the weights and add observed mean and std, and their ratio to the expected std."),
    ]
    for option in reversed(options):
        func = option(func)
    return _source_options(func)


def _source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options saying how to read the source, shared by every command that reads one."""
    options = [
        click.argument("source", required=False),
        click.option("--trust", is_flag=True,
                     help="Let torch's loaders run code from the file (pickled modules, TorchScript, .pt2). "
                          "Only for files you trust."),
        click.option("--kwargs", "factory_kwargs", metavar="JSON", callback=_parse_kwargs,
                     help="Keyword arguments for a pkg.module:factory source, as a JSON object."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Init configuration (default: ./fancli.yaml, else [tool.fancli] in ./pyproject.toml)."),
        click.option("--no-config", is_flag=True, help="Ignore any init configuration."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


PROGRESS_BYTES = 256 * 1024 * 1024


def _load(source: str | None, trust: bool, factory_kwargs: dict | None, config_path: str | None,
          no_config: bool) -> tuple[Any, Any]:
    """The model, with the init configuration applied when there is one; and the configuration."""
    from . import api
    from .config import load_config
    from .errors import FancliError

    config = None if no_config else load_config(config_path)
    if source is None:
        if config is None or not config.source:
            raise FancliError("no SOURCE given, and no fancli.yaml or [tool.fancli] with a 'source' here")
        source = config.source
        trust = trust or config.trust
        factory_kwargs = factory_kwargs if factory_kwargs is not None else config.kwargs
    model = api.load(source, trust=trust, kwargs=factory_kwargs)
    return (config.apply(model) if config else model), config


def _inputs(source: str | None, config: Any = None, model: Any = None) -> list[Any]:
    """Every file this run reads: an output naming one of them would destroy what it reports on.

    The source, the configuration, and the files the model's weights are read from (a sharded
    checkpoint's shards); a factory `pkg.module:callable` is no file.
    """
    from .loaders import is_factory

    found: list[Any] = [source] if source and not is_factory(source) else []
    if config is not None:
        found.append(config.path)
        if config.source and not is_factory(config.source):
            found.append(config.source)
    if model is not None:
        found += {getattr(getattr(layer.data, "source", None), "path", None) for layer in model.layers} - {None}
    return found


class StdoutError(FancliError):
    """The result could not be written to stdout: closed (`>&-`), a full disk (`> /dev/full`)…"""


def _write_stdout(text: str | None = None, printer: Callable[[], None] | None = None) -> None:
    """Print a result (`text`, or whatever `printer` prints) and flush it, so that a failing stdout is
    one error line and exit 2 here, not a traceback now or at interpreter exit."""
    if sys.stdout is None:
        raise StdoutError("stdout is closed; nothing to write the result to (give -o FILE)")
    try:
        if printer is not None:
            printer()
        else:
            click.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main ends quietly
    except OSError as error:
        raise StdoutError(f"cannot write to stdout: {error.strerror or error}") from None


def _wrote(path: Any, detail: str = "") -> None:
    click.echo(f"wrote {printable(path)}{detail}", err=True)


def _analyse(command: Callable[..., Any], model: Any, stats: bool, **settings: Any) -> Any:
    """Run a report, reading weights if asked, with a progress bar on stderr for big reads."""
    if not stats and not settings.get("infer"):
        return command(model, **settings)
    from .report import selected

    layers = [layer for layer in selected(model, tuple(settings.get("filters", ()))) if layer.data is not None]
    total = sum(_nbytes(layer) for layer in layers)
    if total < PROGRESS_BYTES:
        return command(model, stats=stats, **settings)
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
        task = progress.add_task("reading weights", total=total)
        return command(model, stats=stats, on_chunk=lambda nbytes: progress.advance(task, nbytes), **settings)


def _build(command: Callable[..., Any], source: str | None, stats: bool, trust: bool, factory_kwargs: dict | None,
           config_path: str | None, no_config: bool, **settings: Any) -> tuple[Any, list[Any]]:
    """The report, and the files it was made from (which an output must not replace)."""
    model, config = _load(source, trust, factory_kwargs, config_path, no_config)
    return _analyse(command, model, stats, **settings), _inputs(source, config, model)


def _nbytes(layer: Any) -> int:
    import math

    from .tensors import DTYPES

    return math.prod(layer.shape) * DTYPES.get(layer.dtype or "float32", (4,))[0]


def _emit(built: tuple[Any, list[Any]], fmt: str, output: str | None, show_all: bool) -> None:
    """Render to stdout, or atomically to a file that is none of the inputs."""
    from .atomic import is_stdout, write_text
    from .renderers import render_text, without_small_tensors

    report, inputs = built
    if fmt != "json" and not show_all:
        report = without_small_tensors(report)

    if output and not is_stdout(output):
        write_text(output, render_text(report, fmt), inputs)
        _wrote(output)
        return
    if fmt == "table" and sys.stdout is not None and sys.stdout.isatty():
        from .renderers.table import print_rich

        _write_stdout(printer=lambda: print_rich(report))
        return
    _write_stdout(render_text(report, fmt))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fancli")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """fan_in, fan_out, gain and init std of every layer of a network, as torch computes them.

    SOURCE is a YAML layer spec (docs/spec.md), a torch.save file (.pt/.pth/.bin: state_dict, checkpoint,
    pickled module with --trust), TorchScript, a torch.export .pt2, a .safetensors file or a sharded
    checkpoint's index.json, or a factory pkg.module:callable.
    """


@cli.command(cls=_ModesCommand)
@click.option("--mode", "-m", type=click.Choice(MODES), multiple=True,
              help="fan_in, fan_out or fan_avg. Default: the scheme's.")
@_settings_options
@click.option("--infer", is_flag=True,
              help="Read the weights and name the init that best explains each layer (std and kurtosis).")
def inspect(source: str | None, mode: tuple[str, ...], fmt: str, output: str | None, show_all: bool, infer: bool,
            **settings: Any) -> None:
    """What each layer gets: fans, gain, std and bound under a scheme and mode."""
    from . import api
    from .errors import SettingsError

    if len(mode) > 1:
        raise SettingsError(f"inspect takes one mode, got {' '.join(mode)}; compare sets several side by side")
    mode = mode[0] if mode else None

    _emit(_build(api.inspect, source, mode=mode, infer=infer, **settings), fmt, output, show_all)


@cli.command(cls=_ModesCommand)
@click.option("--mode", "-m", "modes", type=click.Choice(MODES), multiple=True,
              help="Two or three modes to set side by side: --mode fan_in fan_out [fan_avg]. Default: fan_in fan_out.")
@_settings_options
def compare(source: str | None, modes: tuple[str, ...], fmt: str, output: str | None, show_all: bool,
            **settings: Any) -> None:
    """How the modes differ, layer by layer: one std column per mode and their ratio."""
    from . import api

    _emit(_build(api.compare, source, modes=modes or ("fan_in", "fan_out"), **settings), fmt, output, show_all)


@cli.command()
@_source_options
@click.option("--update", is_flag=True, help="Write the baseline from today's configuration instead of checking.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The lock file (default: the config's 'baseline', else fancli.lock.json).")
@click.option("--stats", is_flag=True,
              help="Also check each layer's observed std against the configured scheme (standard errors).")
@click.option("--tolerance", type=float, help="Relative change in gain, std or bound that counts as drift (>= 0).")
@click.option("--sigmas", type=float, help="--stats: standard errors an observed std may be off (default 5).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="Output format (markdown fits a pull-request comment).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), metavar="FILE", help="Write the result to FILE.")
def check(source: str | None, trust: bool, factory_kwargs: dict | None, config_path: str | None, no_config: bool,
          update: bool, baseline_path: str | None, stats: bool, tolerance: float | None, sigmas: float | None,
          fmt: str, output: str | None) -> None:
    """CI: has the init configuration drifted from the committed baseline? Exit 0 clean, 1 drift."""
    from pathlib import Path

    from . import api
    from . import check as drift
    from .atomic import checked_target, is_stdout, write_text
    from .config import DEFAULT_BASELINE
    from .renderers.check_out import RENDERERS

    _check_limits(tolerance, sigmas)
    model, config = _load(source, trust, factory_kwargs, config_path, no_config)
    baseline = Path(baseline_path) if baseline_path else config.baseline if config else Path(DEFAULT_BASELINE)
    inputs = _inputs(source, config, model)
    report = _analyse(api.inspect, model, stats and not update, fans=config.fans if config else None)
    if update:
        checked_target(baseline, inputs)  # `--baseline model.pth`: "is the input" says more than "not a baseline"
        drift.ensure_replaceable(baseline)
        write_text(baseline, drift.dumps(drift.baseline_document(report)), inputs)
        _wrote(baseline, f" ({len(report.rows)} tensors)")
        return
    expected = drift.read_baseline(baseline)
    changes = drift.compare(expected, report, tolerance if tolerance is not None else
                            (config.tolerance if config else 1e-9))
    limit = sigmas if sigmas is not None else (config.sigmas if config else 5.0)
    found = drift.deviations(report, limit) if stats else []
    text = RENDERERS[fmt](changes, found, str(baseline), limit)
    if output and not is_stdout(output):
        write_text(output, text, [*inputs, baseline])
    else:
        _write_stdout(text)
    if changes or any(d.flagged for d in found):
        raise click.exceptions.Exit(1)


def _check_limits(tolerance: float | None, sigmas: float | None) -> None:
    """--tolerance is a relative change (0 = exact), --sigmas a count of standard errors (> 0)."""
    import math

    from .errors import SettingsError

    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise SettingsError(f"--tolerance {tolerance:g}: expected a finite number >= 0 (a relative change)")
    if sigmas is not None and not (math.isfinite(sigmas) and sigmas > 0):
        raise SettingsError(f"--sigmas {sigmas:g}: expected a finite number > 0 (standard errors)")


def _shape_layer(shape: str, kind: str | None, layout: str, groups: int | None, stride: str | None,
                 transposed: bool) -> Any:
    """A Layer from `--shape 64,3,7,7` and what the user says about it."""
    from .errors import SettingsError
    from .kinds import NAMES as KINDS
    from .layer import Layer

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
    default = "linear" if len(dims) == 2 else f"conv{len(dims) - 2}d" if 3 <= len(dims) <= 5 else "unknown"
    kind = kind or (default.replace("conv", "conv_transpose") if transposed and default.startswith("conv") else default)
    if kind not in KINDS:
        raise SettingsError(f"--kind {kind!r}: known kinds are {', '.join(KINDS)}")
    transposed = transposed or kind.startswith("conv_transpose")
    return Layer("layer", "layer.weight", kind, dims, layout=layout, groups=groups or (1 if transposed else None),
                 transposed=transposed, stride=strides)


@cli.command(cls=_ModesCommand)
@_source_options
@click.option("--layer", "-l", "layer_names", multiple=True, metavar="NAME",
              help="The layer(s) to explain: a name, parameter key, glob or substring.")
@click.option("--shape", metavar="DIMS", help="Explain a bare weight shape instead, e.g. 64,3,7,7.")
@click.option("--kind", help="With --shape: linear, conv2d, conv_transpose2d, embedding… (default: from the dims).")
@click.option("--layout", type=click.Choice(["torch", "keras", "in_out"]), default="torch", show_default=True,
              help="With --shape: how the dims are ordered.")
@click.option("--groups", type=click.IntRange(min=1), help="With --shape: conv groups.")
@click.option("--stride", metavar="S", help="With --shape: conv stride, e.g. 2 or 2,2.")
@click.option("--transposed", is_flag=True, help="With --shape: a transposed conv.")
@click.option("--scheme", "-s", metavar="NAME", help="Init scheme (default: the source's, else kaiming_normal).")
@click.option("--mode", "-m", "modes", type=click.Choice(MODES), multiple=True, help="One or more modes.")
@click.option("--nonlinearity", "-n", metavar="NAME", help="The activation after the layer.")
@click.option("--param", "-p", type=float, metavar="P", help="The activation's parameter.")
@click.option("--fans", type=click.Choice(["torch", "effective"]), help="Which fans the std is computed from.")
def explain(source: str | None, trust: bool, factory_kwargs: dict | None, config_path: str | None,
            no_config: bool, layer_names: tuple[str, ...], shape: str | None, kind: str | None, layout: str,
            groups: int | None, stride: str | None, transposed: bool, scheme: str | None, modes: tuple[str, ...],
            nonlinearity: str | None, param: float | None, fans: str | None) -> None:
    """The derivation of a layer's fans, gain and std, with the numbers filled in."""
    from .errors import SettingsError
    from .layer import Model
    from .renderers.explain import explain as explain_report
    from .report import Settings, analyze

    if shape:
        model = Model("--shape", "shape", (_shape_layer(shape, kind, layout, groups, stride, transposed),))
    elif source or not no_config:
        if not layer_names:
            raise SettingsError("name the layer to explain with --layer (or give --shape instead of a SOURCE)")
        model, _ = _load(source, trust, factory_kwargs, config_path, no_config)
    else:
        raise SettingsError("give a SOURCE with --layer NAME, or --shape DIMS")
    settings = Settings(scheme, modes, nonlinearity, param, fans, None, layer_names if not shape else ())
    _write_stdout(_printable_lines(explain_report(analyze(model, settings))))


def _printable_lines(text: str) -> str:
    """Text built from names in a file, each line made printable (its newlines are the only ones kept)."""
    return "\n".join(map(printable, text.split("\n")))


def _input_shape(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected sizes separated by commas, e.g. 3,32,32") from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"{value!r}: sizes must be at least 1")
    return dims


@cli.command(cls=_ModesCommand)
@click.argument("source", required=False)
@click.option("--mode", "-m", "modes", type=click.Choice(MODES), multiple=True,
              help="Modes to initialise under, side by side. Default: fan_in fan_out.")
@click.option("--scheme", "-s", metavar="NAME", help="Init scheme (default: the spec's, else kaiming_normal).")
@click.option("--nonlinearity", "-n", metavar="NAME", help="Activation after every layer, overriding the spec.")
@click.option("--param", "-p", type=float, metavar="P", help="The activation's parameter.")
@click.option("--fans", type=click.Choice(["torch", "effective"]), default="torch", show_default=True,
              help="Initialise from torch's fans or the layer-aware effective ones.")
@click.option("--norms", type=click.Choice(["identity", "real"]), default="identity", show_default=True,
              help="Leave norm layers out (the init's effect alone) or run them (BatchNorm resets variance).")
@click.option("--batch", type=click.IntRange(min=1), help="Inputs per pass (default 256 flat, 32 images).")
@click.option("--draws", type=click.IntRange(min=1), default=4, show_default=True,
              help="Random inits averaged per mode (one init of a deep net is noisy).")
@click.option("--input-shape", callback=_input_shape, metavar="DIMS",
              help="One input's shape without the batch, e.g. 3,32,32 (required for a factory's module).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kwargs", "factory_kwargs", metavar="JSON", callback=_parse_kwargs,
              help="Keyword arguments for a pkg.module:factory source.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), metavar="FILE", help="Write to FILE (atomically).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw the variances per layer as a chart (needs the 'plot' extra: matplotlib).")
def propagate(source: str | None, modes: tuple[str, ...], scheme: str | None, nonlinearity: str | None,
              param: float | None, fans: str, norms: str, batch: int | None, draws: int,
              input_shape: tuple[int, ...] | None, seed: int, factory_kwargs: dict | None, fmt: str,
              output: str | None, plot_path: str | None) -> None:
    """Initialise under each mode, push N(0,1) inputs forward and a N(0,1) gradient back, and show each
    layer's activation and gradient variance: fan_in keeps the forward pass, fan_out the backward."""
    import json

    from .atomic import checked_target, is_stdout, write_text
    from .errors import FancliError
    from .propagate import load_source
    from .propagate import propagate as run_propagation
    from .renderers.propagate import render_propagation, to_dict
    from .text import json_safe

    if source is None:
        raise FancliError("give a YAML spec or a pkg.module:factory to propagate through")
    inputs = _inputs(source)
    writes_file = output and not is_stdout(output)
    for path, other in ((output if writes_file else None, plot_path), (plot_path, output if writes_file else None)):
        if path:
            checked_target(path, [*inputs, other])  # refused before seconds of propagation, not after
    props = run_propagation(load_source(source, kwargs=factory_kwargs), modes or ("fan_in", "fan_out"),
                            scheme=scheme, nonlinearity=nonlinearity, param=param, fans=fans, norms=norms,
                            batch=batch, input_shape=input_shape, seed=seed, draws=draws)
    text = (_printable_lines(render_propagation(props, source)) if fmt == "table"
            else json_safe(json.dumps(to_dict(props, source), indent=2, ensure_ascii=False)) + "\n")
    if plot_path:
        from .renderers.plot import plot_propagation

        plot_propagation(props, plot_path, title=printable(f"{source} · {props[0].scheme}"),
                         inputs=[*inputs, output if writes_file else None])
        _wrote(plot_path)
    if writes_file:
        write_text(output, text, [*inputs, plot_path])
    else:
        _write_stdout(text)


@cli.command()
@click.argument("name", required=False)
@click.option("--param", "-p", type=float, metavar="P",
              help="The activation's parameter (leaky_relu's slope, elu's alpha, softplus's beta).")
@click.option("--list", "list_all", is_flag=True, help="Every known activation, torch's gain beside the numeric one.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def gain(name: str | None, param: float | None, list_all: bool, fmt: str) -> None:
    """The gain of an activation: torch's where defined, and 1/√E[f(z)²] for z ~ N(0, 1).

    NAME is torch's name (relu, tanh, leaky_relu…), one torch lacks (gelu, silu/swish, mish, elu,
    softplus, hardswish…), or a dotted torch function (torch.nn.functional.rrelu).
    """
    import json

    from .analysis import activations, gains
    from .errors import SettingsError

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
    criterion = ("1/√E[f(z)²] for z ~ N(0, 1): keeps a layer's output second moment equal to its input's "
                 "(He et al. 2015; √2 for relu)")
    if fmt == "json":
        click.echo(json.dumps({"criterion": criterion, "gains": rows}, indent=2))
        return
    shown = lambda v: "not defined" if v is None else f"{v:.6f}"  # noqa: E731
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'activation':<{width}}  {'torch calculate_gain':>20}  {'numeric E[f(z)²] gain':>21}  used")
    for r in rows:
        used = "torch" if r["torch"] is not None else "numeric"
        click.echo(f"{r['name']:<{width}}  {shown(r['torch']):>20}  {shown(r['numeric']):>21}  {used}")
    click.echo(f"numeric: {criterion}; composite Gauss–Legendre quadrature, error < 1e-9.")


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns every failure into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # A short-lived process whose objects form no cycles worth collecting: the cyclic collector's
    # full passes over 50,000 layers' objects made time grow faster than the layer count.
    gc.disable()
    try:
        code = cli.main(args=args, prog_name="fancli", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.NoArgsIsHelpError as error:
        error.show()  # `fancli` alone: the help, as before
        sys.exit(error.exit_code)
    except click.ClickException as error:
        if debug:
            raise
        click.echo(_usage_line(error), err=True)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("fancli: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except FancliError as error:
        if isinstance(error, StdoutError):
            _quiet_stdout()
        if debug:
            raise
        click.echo(f"fancli: error: {_one_line(error)}", err=True)
        sys.exit(error.exit_code)
    except BrokenPipeError:
        _quiet_stdout()
        sys.stderr.close()  # the reader went away (`| head`); nothing more to say
        sys.exit(0)

    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if debug:
            raise
        click.echo(f"fancli: internal error: {type(error).__name__}: {_one_line(error)} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)  # click returns a command's Exit code here
