"""The library API: everything the CLI does, callable from a notebook or a test."""

from __future__ import annotations

from typing import Iterable

from . import loaders
from .layer import Model
from .report import Report, Settings, analyze


def load(source: str) -> Model:
    """Read a source (a YAML spec path today) into a Model."""
    return loaders.load(source)


def _model(source: str | Model) -> Model:
    return source if isinstance(source, Model) else load(source)


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
) -> Report:
    """Per layer: fans, gain, and the std and bound the scheme gives under one mode."""
    settings = Settings(scheme, (mode,) if mode else (), nonlinearity, param, fans, pool_fan_out, tuple(filters))
    return analyze(_model(source), settings, "inspect")


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
) -> Report:
    """The same layers with one std per mode side by side."""
    modes = tuple(modes)
    if len(modes) < 2:
        from .errors import SettingsError

        raise SettingsError(f"compare needs at least two modes, got {len(modes)}")
    settings = Settings(scheme, modes, nonlinearity, param, fans, pool_fan_out, tuple(filters))
    return analyze(_model(source), settings, "compare")
