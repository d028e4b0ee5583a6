"""The library API: everything the CLI does, callable from a notebook or a test."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from . import loaders
from .errors import SettingsError
from .layer import Model
from .report import Report, Request, Settings, analyze, selected, with_inferences
from .vocab import COMPARED_MODES
from .weights.tensors import CHUNK_ELEMENTS

if TYPE_CHECKING:
    from .checks.check_result import CheckResult
    from .checks.diff import DiffResult
    from .checks.trajectory import Trajectory
    from .config import Config

#: What a source may be: a path or name (a file, folder, repo id, `pkg.module:factory`), a loaded Model, or an
#: object in memory: an `nn.Module`, a state_dict (a mapping of names to tensors), an `ExportedProgram`.
Source = Any


def load(source: Source, *, trust: bool = False, kwargs: dict[str, Any] | None = None,
         revision: str | None = None, safe_globals: Iterable[str] = ()) -> Model:
    """Read a source (spec, torch file, safetensors, a folder, a cached `org/name` at `revision`,
    `pkg.module:factory`, an s3://, gs:// or http(s):// URL of safetensors) into a Model; or describe an
    object in memory (an `nn.Module`, a state_dict, an `ExportedProgram`), as a notebook or a test has its model.

    `trust=True` is the only way a pickled module is unpickled (it runs code from the file);
    `safe_globals` ("module.Name"s, the config's) are read from a torch.save pickle as inert records.
    The layers are a tuple (`loaded` keeps a LayerTable as the loader made it).
    """
    return loaded(source, trust=trust, kwargs=kwargs, revision=revision, safe_globals=safe_globals).with_layers_made()


def loaded(source: Source, *, trust: bool = False, kwargs: dict[str, Any] | None = None,
           revision: str | None = None, safe_globals: Iterable[str] = ()) -> Model:
    """`load`, the layers as the loader gave them: a LayerTable for a source of many alike tensors, which `run`
    analyses once per template (what the CLI reads; `load`, `inspect` and `compare` hand back tuples)."""
    if isinstance(source, Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        return loaders.load(os.fspath(source), trust=trust, kwargs=kwargs, revision=revision,
                            safe_globals=safe_globals)
    # An object from torch can exist only once torch is imported: checking sys.modules first keeps
    # `fancli.inspect(path)` and a wrong argument free of a torch import.
    if "torch" in sys.modules:
        from .loaders.torch_module import model_from_object

        model = model_from_object(source)
        if model is not None:
            return model
    raise TypeError(f"fancli: cannot read a {type(source).__module__}.{type(source).__qualname__}; give a path, "
                    "a pkg.module:factory name, an nn.Module, a state_dict (names to tensors) or an ExportedProgram")


def load_configured(source: Any, config: Any, warn: Callable[[str], None] | None = None, *, trust: bool = False,
                    kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """The model with the configuration applied. `source` None is the configuration's `source`, with its
    `trust` and `kwargs`; a factory it names is imported from the configuration's folder, which may be above
    the working directory (a config found in a parent). The configuration's `safe_globals` apply to any
    source. An override that matches no layer is passed to `warn` (default: a UserWarning)."""
    from contextlib import nullcontext

    from_config = source is None
    if from_config:
        if config is None or not config.source:
            raise SettingsError("no SOURCE given, and no fancli.yaml or [tool.fancli] with a 'source' here")
        source, trust = config.source, trust or config.trust
        kwargs = kwargs if kwargs is not None else config.kwargs
    if config is not None:
        options.setdefault("safe_globals", config.safe_globals)

    if warn is None:
        import warnings

        def warn(message: str) -> None:
            warnings.warn(message, UserWarning, stacklevel=4)

    from .loaders import is_factory
    from .loaders.factory import importable_cwd

    folder = config.path.parent if from_config and config.path and isinstance(source, str) and is_factory(source) else None
    with importable_cwd(folder) if folder else nullcontext():
        model = loaded(source, trust=trust, kwargs=kwargs, **options)
    if config is None:
        return model
    hits = config.hits(model)  # which layers each override matches: found once for both
    for message in config.unmatched(model, hits):
        warn(message)
    return config.apply(model, hits)


def run(model: Model, request: Request, on_chunk: Callable[[int], None] | None = None) -> Report:
    """The report `request` asks of a loaded model: its weights read where it says so (`on_chunk(nbytes)` as
    pieces finish), the analysis, and with `infer` the init that best explains each layer's weights. The one
    path of `inspect`, `compare`, `check_init` and the CLI's commands."""
    observed = spectra = None
    if request.spectral:
        from .weights.spectral import require_scipy

        require_scipy()  # one line naming the extra, before anything is read
    stats = (request.infer, request.infer) if request.stats or request.infer else None  # kurtosis, structure
    layers = selected(model, request.settings.filters) if request.reads_weights else []
    read: dict = {}
    if request.spectral:  # with --stats too, each tensor read once: its statistics from the same chunks
        from .spectral import read_spectra

        spectra, read = read_spectra(layers, request.jobs, request.cluster, on_chunk, stats)
    if stats:
        from .weights.stats import observe_all  # only when weights are read

        read |= observe_all([layer for layer in layers if layer.param not in read], on_chunk, kurtosis=stats[0],
                            structure=stats[1], jobs=request.jobs, cluster=request.cluster)
        observed = {layer.param: read[layer.param] for layer in layers if layer.param in read}  # model order
    report = analyze(model, request.settings, request.command, observed)
    if request.reads_weights and not (observed or spectra):
        option = "--stats" if request.stats or request.infer else "--spectral"
        note = f"{option}: this source ({model.format}) holds no weights to read"
        report = replace(report, notes=report.notes + (note,))
    if spectra:
        from .spectral import with_spectra

        report = with_spectra(report, spectra)
    return with_inferences(report) if request.infer else report


def inspect(
    source: Source,
    *,
    scheme: str | None = None,
    mode: str | None = None,
    nonlinearity: str | None = None,
    param: float | None = None,
    fans: str | None = None,
    pool_fan_out: bool | None = None,
    filters: Iterable[str] = (),
    stats: bool = False,
    infer: bool = False,
    trust: bool = False,
    kwargs: dict[str, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    jobs: int | None = 1,
    cluster: Any = None,
    recipe: str | None = None,
    spectral: bool = False,
) -> Report:
    """Per layer: fans, gain, the std and bound the scheme gives under one mode — or, with `recipe` (or where the
    source says which library built it and no scheme or mode is given), what that library's init draws; with
    `stats=True` the weights' observed statistics (read in fixed pieces by `jobs` threads, None: the usable
    cores, or on a Dask `cluster`: "tcp://host:port", "local"; the same numbers either way); with `infer=True`
    also the init that best explains them; with `spectral=True` each weight's ‖W‖₂, stable rank, ‖W‖₂ against
    √(fan_out/fan_in) and against its init's (needs scipy: the `spectral` extra)."""
    settings = Settings(scheme, (mode,) if mode else (), nonlinearity, param, fans, pool_fan_out, tuple(filters),
                        recipe)
    request = Request("inspect", settings, stats, infer, jobs, cluster, spectral)
    return run(loaded(source, trust=trust, kwargs=kwargs), request, on_chunk).with_rows_made()


def compare(
    source: Source,
    modes: Iterable[str] = COMPARED_MODES,
    *,
    scheme: str | None = None,
    nonlinearity: str | None = None,
    param: float | None = None,
    fans: str | None = None,
    pool_fan_out: bool | None = None,
    filters: Iterable[str] = (),
    stats: bool = False,
    trust: bool = False,
    kwargs: dict[str, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    jobs: int | None = 1,
    cluster: Any = None,
    spectral: bool = False,
) -> Report:
    """The same layers with one std per mode side by side (`spectral` as `inspect`'s)."""
    settings = Settings(scheme, tuple(modes), nonlinearity, param, fans, pool_fan_out, tuple(filters))
    request = Request("compare", settings, stats, spectral=spectral, jobs=jobs, cluster=cluster)
    return run(loaded(source, trust=trust, kwargs=kwargs), request, on_chunk).with_rows_made()


def diff(a: Source, b: Source, *, filters: Iterable[str] = (), trust: bool = False,
         max_elements: int = CHUNK_ELEMENTS, jobs: int | None = 1, cluster: Any = None,
         spectral: bool = False) -> DiffResult:
    """`fancli diff` as a function: any two sources `load` reads (paths, Models, state_dicts…);
    `jobs` threads (None: the usable cores) or a Dask `cluster` compare the pairs; `spectral` adds each
    changed weight's ‖B − A‖₂ and its ratio to √(fan_out/fan_in)."""
    from .checks.diff import diff_models

    return diff_models(load(a, trust=trust), load(b, trust=trust), tuple(filters), max_elements, jobs, cluster,
                       spectral)


def trajectory(sources: Sequence[Source], *, filters: Iterable[str] = (), trust: bool = False,
               jobs: int | None = 1, cluster: Any = None, spectral: bool = False) -> Trajectory:
    """`fancli inspect A B C --stats` as a function: the sources (paths in natural order, or loaded
    models in the order given) and each tensor's observed statistics per checkpoint (with `spectral`, its
    ‖W‖₂ and stable rank too)."""
    from .checks.trajectory import build, natural_order

    if all(isinstance(source, str) for source in sources):
        sources = natural_order(sources)
    return build([load(source, trust=trust) for source in sources], tuple(filters), jobs, cluster=cluster,
                 spectral=spectral)


def check_init(
    model: Source = None,
    config: "str | Path | Config | None" = None,
    baseline: "str | Path | None" = None,
    *,
    stats: bool = False,
    tolerance: float | None = None,
    sigmas: float | None = None,
    trust: bool = False,
    kwargs: dict[str, Any] | None = None,
    jobs: int | None = 1,
    cluster: Any = None,
) -> "CheckResult":
    """`fancli check` as a function (not named `check`: that is the `fancli.checks.check` module, which an import
    would put back over a function of that name): today's init (the config applied to `model`) against the baseline.

    `model` is anything `load` takes, or None for the configuration's `source`. `config` is a file, a
    parsed Config, or None to find `fancli.yaml` / `[tool.fancli]` in this folder or the nearest parent
    (`config=False` for none). `baseline` defaults to the configuration's; `baseline=False` skips the
    comparison and leaves only the `stats` check of the weights against the configured init. `jobs` and
    `cluster` read the weights as `inspect`'s do.
    """
    from .config import Config, load_config

    conf = config if isinstance(config, Config) else None if config is False else load_config(config)
    configured = load_configured(model, conf, trust=trust, kwargs=kwargs)
    report = run(configured, Request(stats=stats, jobs=jobs, cluster=cluster))  # the configuration is on the model
    return check_report(report.with_rows_made(), conf, baseline, stats=stats, tolerance=tolerance, sigmas=sigmas)


def check_report(
    report: Report,
    config: "Config | None" = None,
    baseline: "str | Path | None" = None,
    *,
    stats: bool = False,
    tolerance: float | None = None,
    sigmas: float | None = None,
) -> "CheckResult":
    """`check_init`'s verdict on a report of the configured model already made (`fancli check` makes it with a
    progress bar): its drift from the baseline, and with `stats` its weights against the configured init.
    `baseline`, `tolerance` and `sigmas` default to `config`'s; `baseline=False` skips the comparison."""
    from .checks import check as drift
    from .checks.check_result import CheckResult
    from .config import Config

    path, tolerance, limit = (config or Config()).drift_limits(baseline or None, tolerance, sigmas)
    changes = [] if baseline is False else drift.compare(drift.read_baseline(path), report, tolerance)
    found = drift.deviations(report, limit) if stats else []
    return CheckResult(report, changes, found, "(no baseline)" if baseline is False else str(path), limit,
                       drift.nonfinite(report) if stats else [])


def assert_init(
    model: Source = None,
    config: "str | Path | Config | None" = None,
    baseline: "str | Path | None" = None,
    *,
    stats: bool = False,
    tolerance: float | None = None,
    sigmas: float | None = None,
    jobs: int | None = 1,
    cluster: Any = None,
) -> None:
    """For a pytest test: AssertionError carrying the drift report when `model`'s init differs from the
    baseline, or (with `stats=True`) when its weights do not match the configured init.

        def test_init_did_not_drift():
            fancli.assert_init(build_model(), stats=True)
    """
    result = check_init(model, config, baseline, stats=stats, tolerance=tolerance, sigmas=sigmas, jobs=jobs,
                        cluster=cluster)
    if not result.ok:
        raise AssertionError(result.render("table"))
