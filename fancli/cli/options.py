"""The command line's shared options, each declared once, and the objects they fill.

Commands take a `SourceArgs` (how to read SOURCE) and, for inspect and compare, one `report.Request` (what to
compute, validated as it is built here, and how to read the weights), so the path from a flag to the library
call is one object, not forwarded as **kwargs.
Choices come from `fancli.vocab`; scheme and activation names from their registries.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

import click

from ..analysis.gains import TORCH_NONLINEARITIES
from ..analysis.schemes import ALIASES as SCHEME_ALIASES
from ..analysis.schemes import SCHEMES
from ..outputs import formats
from ..vocab import COMPARED_MODES, FAN_CONVENTIONS, MODES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class ModesCommand(click.Command):
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


def parse_kwargs(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """`--kwargs '{"width": 64}'`: a JSON object, or a usage error in one line."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise click.BadParameter(f"not valid JSON ({error})") from None
    except RecursionError:
        raise click.BadParameter("not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("expected a JSON object, e.g. '{\"width\": 64}'")
    return parsed


# --- shell completion (`eval "$(_FANCLI_COMPLETE=bash_source fancli)"`) ------------------------------


def complete_path(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """SOURCE: the shell's own file and folder completion. An empty list would leave the shell nothing to
    offer once fancli's completion is installed; type "file" hands the word back to the shell's default."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _starting(names: Any, incomplete: str) -> list[str]:
    """The names that continue what was typed (bash does not filter what a completer returns)."""
    return sorted({name for name in names if name.startswith(incomplete)})


def complete_scheme(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return _starting([*SCHEMES, *SCHEME_ALIASES], incomplete)


def complete_activation(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """torch's nonlinearities and every activation fancli computes a gain for, with their aliases
    (imported here, when the shell asks, not when the CLI starts)."""
    from ..analysis import activations

    return _starting([*TORCH_NONLINEARITIES, *activations.ACTIVATIONS, *activations.ALIASES], incomplete)


def complete_recipe(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The init recipes (imported when the shell asks)."""
    from ..analysis.recipes import RECIPES

    return _starting(list(RECIPES), incomplete)


# --- each option once -------------------------------------------------------------------------------


def scheme_option(help: str = "Init scheme (default: the source's, else kaiming_normal).") -> Decorator:
    return click.option("--scheme", "-s", metavar="NAME", help=help, shell_complete=complete_scheme)


def nonlinearity_option(help: str = "The activation after the layer.") -> Decorator:
    return click.option("--nonlinearity", "-n", metavar="NAME", help=help, shell_complete=complete_activation)


def param_option(help: str = "The activation's parameter.") -> Decorator:
    return click.option("--param", "-p", type=float, metavar="P", help=help)


def fans_option(help: str = "Which fans the std is computed from.", default: str | None = None) -> Decorator:
    return click.option("--fans", type=click.Choice(FAN_CONVENTIONS), default=default,
                        show_default=default is not None, help=help)


def modes_option(help: str, default: tuple[str, ...] = ()) -> Decorator:
    return click.option("--mode", "-m", "modes", type=click.Choice(MODES), multiple=True, default=default, help=help)


class Formats(click.Choice):
    """A command's formats as `fancli.outputs` has them when it runs: exactly its renderers' keys, a format
    registered after this module was imported included."""

    def __init__(self, command: str) -> None:  # no fixed tuple of choices: they are read on each use
        self.command, self.case_sensitive = command, True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return formats(self.command)


def format_option(command: str, help: str = "Output format.") -> Decorator:
    """--format: the formats `fancli.outputs` has for `command`, its first the default."""
    return click.option("--format", "-f", "fmt", type=Formats(command), default=formats(command)[0],
                        show_default=True, help=help)


def output_option(help: str = "Write to FILE (atomically) instead of stdout.") -> Decorator:
    return click.option("--output", "-o", type=click.Path(dir_okay=False), metavar="FILE", help=help)


def kwargs_option(help: str = "Keyword arguments for a pkg.module:factory source, as a JSON object.") -> Decorator:
    return click.option("--kwargs", "factory_kwargs", metavar="JSON", callback=parse_kwargs, help=help)


def _apply(func: Callable[..., Any], options: list[Decorator]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


# --- the objects commands receive -------------------------------------------------------------------


@dataclass(frozen=True)
class SourceArgs:
    """How to read SOURCE: the file or factory, whether its code may run, and the init configuration."""

    source: str | None
    trust: bool = False
    kwargs: dict[str, Any] | None = None
    config_path: str | None = None
    no_config: bool = False
    revision: str | None = None  # of a Hugging Face repo id SOURCE (default main)
    sources: tuple[str, ...] = ()  # inspect's SOURCE...: several make a trajectory (source is the first)


def source_options(func: Callable[..., Any] | None = None, *, many: bool = False) -> Any:
    """SOURCE and how to read it, as a `SourceArgs` first argument (`src`); `many=True` takes SOURCE...
    (inspect's trajectories: `SourceArgs.sources`, `source` the first)."""
    if func is None:
        return functools.partial(source_options, many=many)

    @functools.wraps(func)
    def command(source: Any, trust: bool, factory_kwargs: dict | None, config_path: str | None,
                no_config: bool, revision: str | None, **rest: Any) -> Any:
        sources = tuple(source) if many else (source,) if source else ()
        return func(SourceArgs(sources[0] if sources else None, trust, factory_kwargs, config_path, no_config,
                               revision, sources), **rest)

    return _apply(command, [
        click.argument("source", nargs=-1, shell_complete=complete_path) if many
        else click.argument("source", required=False, shell_complete=complete_path),
        click.option("--trust", is_flag=True,
                     help="Let torch's loaders run code from the file (pickled modules, TorchScript, .pt2). "
                          "Only for files you trust."),
        kwargs_option(),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Init configuration (default: ./fancli.yaml, else [tool.fancli] in ./pyproject.toml)."),
        click.option("--no-config", is_flag=True, help="Ignore any init configuration."),
        click.option("--revision", metavar="REF",
                     help="For a repo id SOURCE (org/name, read from the local Hugging Face cache): the branch, "
                          "tag or commit (default: main)."),
    ])


#: --mode's help in each command that takes a `Request`.
MODES_HELP = {
    "inspect": "fan_in, fan_out, fan_avg or fan_geo_avg (JAX's). Default: the scheme's.",
    "compare": "Two or three modes to set side by side: --mode fan_in fan_out [fan_avg]. Default: fan_in fan_out.",
}


def report_options(command: str) -> Decorator:
    """What inspect or compare is asked, as ONE `report.Request` (`request`): its `Settings`, built and
    validated here, once, and how to read the weights; beside it a `SourceArgs` (`src`) and how to write the
    result (`fmt`, `output`, `show_all`, `expand`). inspect alone takes SOURCE... (a trajectory, as
    `source_options(many=True)`), --recipe and --infer; compare's modes default to fan_in fan_out."""
    inspecting = command == "inspect"

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def asked(src: SourceArgs, modes: tuple[str, ...], scheme: str | None, nonlinearity: str | None,
                  param: float | None, fans: str | None, pool_fan_out: bool | None, filters: tuple[str, ...],
                  stats: bool, jobs: int | None, cluster: str | None, spectral: bool, recipe: str | None = None,
                  infer: bool = False, **rest: Any) -> Any:
            from ..report import Request, Settings

            settings = Settings(scheme, modes, nonlinearity, param, fans, pool_fan_out, filters, recipe)
            return func(src, Request(command, settings, stats, infer, jobs, cluster, spectral), **rest)

        options = [
            scheme_option(f"Init scheme: {', '.join(SCHEMES)} (aliases he_*, glorot_*). "
                          "Default: the spec's, else kaiming_normal."),
            nonlinearity_option(f"Nonlinearity after every layer, overriding the source: "
                                f"{', '.join(TORCH_NONLINEARITIES)}, or one torch lacks (gelu, silu, mish, elu, "
                                "softplus…; `fancli gain --list`)."),
            param_option("The nonlinearity's parameter (leaky_relu's negative slope, kaiming's `a`)."),
            fans_option("Compute std from torch's fans (default) or the layer-aware effective fans."),
            click.option("--pool-fan-out/--no-pool-fan-out", default=None,
                         help="Divide a conv's fan_out by the pool area after it (LeNet tutorial convention)."),
            click.option("--filter", "-k", "filters", multiple=True, metavar="GLOB",
                         help="Only layers whose name or parameter key matches (glob, or substring). Repeatable."),
            format_option(command),
            output_option(),
            click.option("--all", "show_all", is_flag=True,
                         help="Tables and Markdown: also list tensors below 2 dims (JSON always has them)."),
            click.option("--stats", is_flag=True,
                         help="Read the weights and add observed mean and std, and their ratio to the expected std."),
            spectral_option(),
            *parallel_options(),
            click.option("--expand", is_flag=True,
                         help="Tables and Markdown: list every tensor instead of folding repeated layers into one "
                              "row (JSON and CSV always list every tensor)."),
        ]
        if inspecting:
            options += [
                click.option("--infer", is_flag=True, help="Read the weights and name the init that best explains "
                                                           "each layer (std and kurtosis)."),
                click.option("--recipe", metavar="NAME", shell_complete=complete_recipe,
                             help="Expect what a library's init draws (transformers, gpt2, t5, torchvision_resnet, "
                                  "torchtitan…; see README Recipes). Default: the source's own library where its "
                                  "config says, unless --scheme or --mode is given."),
            ]
        modes = modes_option(MODES_HELP[command], default=() if inspecting else COMPARED_MODES)
        return modes(source_options(many=inspecting)(_apply(asked, options)))

    return decorate


def spectral_option() -> Callable[..., Any]:
    """--spectral, for every command that reads weights (a `spectral` keyword argument)."""
    return click.option("--spectral", is_flag=True,
                        help="Read the weights and add each ≥2-D weight's ‖W‖₂ (a conv's as the matrix [out, "
                             "in·k]), stable rank, ‖W‖₂/√(fan_out/fan_in) and ‖W‖₂ expected at init (needs "
                             "scipy: pip install scipy threadpoolctl).")


def parallel_options() -> list[Callable[..., Any]]:
    """--jobs and --cluster, for every command that reads weights (`jobs`, `cluster` keyword arguments)."""
    return [
        click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N",
                     help="Threads reading weights, each a fixed piece of a tensor (diff: a pair of tensors) at "
                          "a time; results are identical for every N. Default: the usable cores."),
        click.option("--cluster", metavar="ADDRESS",
                     help="Read the weights on a Dask cluster instead: its scheduler's tcp://host:port, or "
                          "'local' for one on this machine (pip install 'dask[distributed]'). Its workers must "
                          "see the files at the same paths. Results are identical to --jobs 1."),
    ]


def with_parallel(func: Callable[..., Any]) -> Callable[..., Any]:
    """A command decorated with `parallel_options`."""
    return _apply(func, parallel_options())


def check_limits(tolerance: float | None, sigmas: float | None) -> None:
    """--tolerance is a relative change (0 = exact), --sigmas a count of standard errors (> 0)."""
    import math

    from ..errors import SettingsError

    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise SettingsError(f"--tolerance {tolerance:g}: expected a finite number >= 0 (a relative change)")
    if sigmas is not None and not (math.isfinite(sigmas) and sigmas > 0):
        raise SettingsError(f"--sigmas {sigmas:g}: expected a finite number > 0 (standard errors)")


def input_shape(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected sizes separated by commas, e.g. 3,32,32") from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"{value!r}: sizes must be at least 1")
    return dims
