"""The team's init configuration: which scheme, mode and nonlinearity each layer should get.

Read from `fancli.yaml`, or `[tool.fancli]` in pyproject.toml, in the working directory (or a file
given with --config). Defaults fill what the source leaves open; overrides, matched by glob on the
layer name or parameter key, replace it, the last matching override winning.

    source: mypkg.models:build     # a file, a spec or a factory
    kwargs: {width: 64}            # for a factory
    baseline: fancli.lock.json     # written by `fancli check --update`
    defaults: {scheme: kaiming_normal, mode: fan_out, nonlinearity: relu}
    overrides:
      - {match: "fc*", scheme: xavier_uniform, nonlinearity: linear}
    tolerance: 1.0e-9              # relative change in gain, std and bound that counts as drift
    sigmas: 5                      # --stats: standard errors an observed std may be off
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .analysis import gains, schemes
from .errors import SourceError
from .layer import Layer, Model

CONFIG_FILE = "fancli.yaml"
#: A config is a few defaults and overrides (pyproject.toml a few KB): 1 MiB is far beyond any real one.
MAX_CONFIG_BYTES = 1024 * 1024
#: Values a config may hold: ~100 bytes of PyYAML or tomllib objects each, so at most ~10 MB to parse.
MAX_CONFIG_NODES = 100_000
DEFAULT_BASELINE = "fancli.lock.json"
#: Numbers a config may give: finite floats (a 400-digit integer would overflow float()).
_LARGEST = 1e300
_INIT_KEYS = ("scheme", "mode", "nonlinearity", "param")
_TOP_KEYS = ("source", "kwargs", "trust", "baseline", "defaults", "overrides", "tolerance", "sigmas", "fans")


@dataclass(frozen=True)
class InitRule:
    """Init choices for the layers matching `patterns` (all layers for the defaults)."""

    patterns: tuple[str, ...] = ()
    scheme: str | None = None
    mode: str | None = None
    nonlinearity: str | None = None
    param: float | None = None

    def matches(self, layer: Layer) -> bool:
        return any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.param, p) for p in self.patterns)

    def fill(self, layer: Layer) -> Layer:
        """Set what the layer leaves open. A mode belongs to its scheme: a layer with a scheme of its
        own takes this rule's mode only for the same scheme."""
        same_scheme = layer.scheme is None or layer.scheme == self.scheme
        return replace(
            layer,
            scheme=layer.scheme or self.scheme,
            mode=layer.mode or (self.mode if same_scheme else None),
            nonlinearity=layer.nonlinearity or self.nonlinearity,
            nonlinearity_param=layer.nonlinearity_param if layer.nonlinearity else self.param,
        )

    def override(self, layer: Layer) -> Layer:
        """Replace what this rule sets; a new scheme without a mode gets that scheme's default mode."""
        changes: dict[str, Any] = {k: v for k, v in (("scheme", self.scheme), ("mode", self.mode)) if v}
        if self.scheme and not self.mode:
            changes["mode"] = None
        if self.nonlinearity:
            changes.update(nonlinearity=self.nonlinearity, nonlinearity_param=self.param)
        return replace(layer, **changes)


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    source: str | None = None
    kwargs: dict[str, Any] | None = None
    trust: bool = False
    baseline: Path = Path(DEFAULT_BASELINE)
    defaults: InitRule = InitRule()
    overrides: tuple[InitRule, ...] = field(default=())
    tolerance: float = 1e-9
    sigmas: float = 5.0
    fans: str | None = None

    def apply(self, model: Model) -> Model:
        """The model with this configuration's init choices on its layers."""
        layers = []
        for layer in model.layers:
            layer = self.defaults.fill(layer)
            for rule in self.overrides:
                if rule.matches(layer):
                    layer = rule.override(layer)
            layers.append(layer)
        return replace(model, layers=tuple(layers), fans=self.fans or model.fans)


def _fail(path: Path, where: str, message: str) -> SourceError:
    return SourceError(f"{path}: {where}: {message}")


def _short(value: Any) -> str:
    """A value for a one-line message: its repr, cut short (a config may hold a huge string or list)."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return text if len(text) <= 40 else text[:40] + "…"


def _rule(path: Path, where: str, mapping: Any, patterns: tuple[str, ...] = ()) -> InitRule:
    if not isinstance(mapping, dict):
        raise _fail(path, where, "expected a mapping")
    unknown = set(mapping) - set(_INIT_KEYS) - {"match"}
    if unknown:
        raise _fail(path, f"{where}.{sorted(unknown)[0]}", f"unknown key; known: {', '.join(_INIT_KEYS)}")
    values = {key: mapping.get(key) for key in _INIT_KEYS}
    checks = {"scheme": schemes.scheme, "mode": schemes.check_mode, "nonlinearity": gains.gain}
    for key, check in checks.items():
        if values[key] is None:
            continue
        if not isinstance(values[key], str):
            raise _fail(path, f"{where}.{key}", f"expected a name, got {_short(values[key])}")
        try:
            check(values[key])
        except ValueError as error:
            raise _fail(path, f"{where}.{key}", str(error)) from None
    param = values["param"]
    if param is not None and (isinstance(param, bool) or not isinstance(param, (int, float))
                              or not -_LARGEST < param < _LARGEST):
        raise _fail(path, f"{where}.param", f"expected a number, got {_short(param)}")
    return InitRule(patterns, values["scheme"], values["mode"], values["nonlinearity"],
                    None if param is None else float(param))


def parse_config(data: Any, path: Path) -> Config:
    """Validate a configuration mapping; errors name the file and the key."""
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a mapping of fancli settings")
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        raise _fail(path, sorted(unknown)[0], f"unknown key; known: {', '.join(_TOP_KEYS)}")
    overrides = []
    if not isinstance(data.get("overrides") or [], list):
        raise _fail(path, "overrides", "expected a list of {match: …, scheme: …} rules")
    for index, item in enumerate(data.get("overrides") or []):
        where = f"overrides[{index}]"
        match = item.get("match") if isinstance(item, dict) else None
        patterns = (match,) if isinstance(match, str) else tuple(match) if isinstance(match, list) else ()
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise _fail(path, f"{where}.match", "expected a glob or a list of globs")
        overrides.append(_rule(path, where, item, patterns))
    source, kwargs = data.get("source"), data.get("kwargs")
    if source is not None and not isinstance(source, str):
        raise _fail(path, "source", "expected a path or pkg.module:callable")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _fail(path, "kwargs", "expected a mapping")
    numbers = {}
    for key, default in (("tolerance", 1e-9), ("sigmas", 5.0)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _LARGEST:
            raise _fail(path, key, f"expected a positive number, got {_short(value)}")
        numbers[key] = float(value)
    trust = data.get("trust", False)
    if not isinstance(trust, bool):  # bool("false") is True: a quoted word must not turn trust on
        raise _fail(path, "trust", f"expected true or false, got {_short(trust)}")
    fans = data.get("fans")
    if fans is not None and fans not in ("torch", "effective"):
        raise _fail(path, "fans", "expected torch or effective")
    base = path.parent
    if source and not Path(source).is_absolute() and (base / source).exists():
        source = str(base / source)
    baseline = data.get("baseline", DEFAULT_BASELINE)
    if not isinstance(baseline, str):
        raise _fail(path, "baseline", "expected a file name")
    return Config(path, source, kwargs, trust, base / baseline,
                  _rule(path, "defaults", data.get("defaults") or {}), tuple(overrides),
                  numbers["tolerance"], numbers["sigmas"], fans)


def _read_text(path: Path) -> str:
    """The config file's text, read with a bound: a config never needs more than MAX_CONFIG_BYTES."""
    from .loaders.files import read_bounded

    raw = read_bounded(path, MAX_CONFIG_BYTES, "a fancli config")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None


def _check_nodes(text: str, path: Path) -> None:
    """Refuse a config whose parse would build more than MAX_CONFIG_NODES values (each needs one of these
    characters; a few MB of `[],` would take gigabytes in PyYAML or tomllib)."""
    indicators = sum(map(text.count, "[{,:-=\n"))
    if indicators > MAX_CONFIG_NODES:
        raise SourceError(f"{path}: more than {MAX_CONFIG_NODES:,} values ({indicators:,} of [ {{ , : - = and "
                          "line ends), too large for a fancli config")


def _read_yaml(path: Path) -> Any:
    import yaml

    from .loaders.yaml_lines import load

    text = _read_text(path)
    _check_nodes(text, path)
    try:
        return load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SourceError(f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}") from None


def _read_pyproject(path: Path) -> Any | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    text = _read_text(path)
    _check_nodes(text, path)
    try:
        document = tomllib.loads(text)
    except RecursionError:
        raise SourceError(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as error:  # TOMLDecodeError, or Python's limit on an integer's digits
        problem = "a number has too many digits" if "digits" in str(error) else " ".join(str(error).split())[:120]
        raise SourceError(f"{path}: not valid TOML ({problem})") from None
    tool = document.get("tool", {})
    return tool.get("fancli") if isinstance(tool, dict) else None


def load_config(path: str | Path | None = None, directory: Path | None = None) -> Config | None:
    """The configuration in `path`, or found in `directory` (fancli.yaml, then pyproject.toml); None if none."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such config file")
        data = _read_pyproject(path) if path.suffix == ".toml" else _read_yaml(path)
        if data is None:
            raise SourceError(f"{path}: no [tool.fancli] table")
        return parse_config(data, path)
    directory = directory or Path.cwd()
    if (directory / CONFIG_FILE).is_file():
        return parse_config(_read_yaml(directory / CONFIG_FILE), directory / CONFIG_FILE)
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        data = _read_pyproject(pyproject)
        if data is not None:
            return parse_config(data, pyproject)
    return None
