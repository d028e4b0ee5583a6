"""The library API: everything the CLI does, callable from a notebook or a test."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable

from . import loaders
from .errors import SettingsError
from .layer import Model
from .report import Report, Settings, analyze, selected, with_inferences
from .stats import observe_all


def load(source: str, *, trust: bool = False, kwargs: dict[str, Any] | None = None,
         revision: str | None = None, safe_globals: Iterable[str] = ()) -> Model:
    """Read a source (spec, torch file, safetensors, a folder, a cached `org/name` at `revision`,
    `pkg.module:factory`) into a Model.

    `trust=True` is the only way a pickled module is unpickled (it runs code from the file);
    `safe_globals` ("module.Name"s, the config's) are read from a torch.save pickle as inert records.
    """
    return loaders.load(source, trust=trust, kwargs=kwargs, revision=revision, safe_globals=safe_globals)


def _report(
    source: str | Model,
    settings: Settings,
    command: str,
    stats: bool,
    trust: bool,
    kwargs: dict[str, Any] | None,
    on_chunk: Callable[[int], None] | None,
    infer: bool = False,
) -> Report:
    model = source if isinstance(source, Model) else load(source, trust=trust, kwargs=kwargs)
    settings = settings.validated()
    reading = stats or infer
    observed = observe_all(selected(model, settings.filters), on_chunk, kurtosis=infer,
                           structure=infer) if reading else None
    report = analyze(model, settings, command, observed)
    if reading and not observed:
        note = f"--stats: this source ({model.format}) holds no weights to read"
        report = replace(report, notes=report.notes + (note,))
    return with_inferences(report) if infer else report


def inspect(
    source: str | Model,
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
) -> Report:
    """Per layer: fans, gain, the std and bound the scheme gives under one mode; with `stats=True` the
    weights' observed statistics (read one tensor at a time); with `infer=True` also the init that best
    explains them."""
    settings = Settings(scheme, (mode,) if mode else (), nonlinearity, param, fans, pool_fan_out, tuple(filters))
    return _report(source, settings, "inspect", stats, trust, kwargs, on_chunk, infer)


def compare(
    source: str | Model,
    modes: Iterable[str] = ("fan_in", "fan_out"),
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
) -> Report:
    """The same layers with one std per mode side by side."""
    modes = tuple(modes)
    if len(modes) < 2:
        raise SettingsError(f"compare needs at least two modes, got {len(modes)}")
    settings = Settings(scheme, modes, nonlinearity, param, fans, pool_fan_out, tuple(filters))
    return _report(source, settings, "compare", stats, trust, kwargs, on_chunk)
