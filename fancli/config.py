"""The team's init configuration: which scheme, mode and nonlinearity each layer should get.

Read from `fancli.yaml`, or `[tool.fancli]` in pyproject.toml, in the working directory or the nearest
folder above it up to the repository root or the home folder, when it is the user's (`config_files`), or
a file given with --config. Defaults fill what the source leaves open; overrides, matched by glob on the
layer name or parameter key, replace it, the last matching override winning.

    source: mypkg.models:build     # a file, a spec or a factory
    kwargs: {width: 64}            # for a factory
    baseline: fancli.lock.json     # written by `fancli check --update`
    defaults: {scheme: kaiming_normal, mode: fan_out, nonlinearity: relu}
    recipe: torchvision_resnet     # instead of a scheme: what a library's init draws (analysis.recipes)
    overrides:
      - {match: "fc*", scheme: xavier_uniform, nonlinearity: linear}
    tolerance: 1.0e-9              # relative change in gain, std and bound that counts as drift
    sigmas: 5                      # --stats: standard errors an observed std may be off
    safe_globals: [mypkg.train.TrainConfig]  # read from torch.save pickles as inert records, never imported
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analysis import gains, recipes, schemes
from .columns import Numbering, glob_hits
from .config_files import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    config_tree,
    find_config,
    read_pyproject,
)
from .errors import SourceError
from .layer import BuiltBy, Layer, LayerTable, Model
from .safe_io import read_text
from .vocab import FAN_CONVENTIONS

if TYPE_CHECKING:
    from .typed_yaml import At, Fields

DEFAULT_BASELINE = "fancli.lock.json"
#: Numbers a config may give: finite floats (a 400-digit integer would overflow float()).
_LARGEST = 1e300
_INIT_KEYS = ("scheme", "mode", "nonlinearity", "param")
_TOP_KEYS = ("source", "kwargs", "trust", "baseline", "defaults", "overrides", "tolerance", "sigmas", "fans",
             "safe_globals", "recipe")
#: A global as torch.serialization.add_safe_globals names it: a dotted module path and a name.
_GLOBAL_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
MAX_SAFE_GLOBALS = 1000


@dataclass(frozen=True)
class InitRule:
    """Init choices for the layers matching `patterns` (all layers for the defaults)."""

    patterns: tuple[str, ...] = ()
    scheme: str | None = None
    mode: str | None = None
    nonlinearity: str | None = None
    param: float | None = None
    at: At | None = field(default=None, compare=False)  # where an override was written, for its error

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
    safe_globals: tuple[str, ...] = ()
    recipe: str | None = None  # the expectation of every layer, where no --scheme/--mode/--recipe is given
    recipe_at: str = ""  # where the config names it, for the header: "fancli.yaml:3 recipe"

    def drift_limits(self, baseline: "str | Path | None" = None, tolerance: float | None = None,
                     sigmas: float | None = None) -> tuple[Path, float, float]:
        """The baseline, tolerance and standard-error limit a check uses: what was asked, else this config's
        (a `Config()` holds the defaults)."""
        return (Path(baseline) if baseline is not None else self.baseline,
                tolerance if tolerance is not None else self.tolerance,
                sigmas if sigmas is not None else self.sigmas)

    def hits(self, model: Model) -> list[list[bool]]:
        """Per override, whether it matches each layer (its name or its key, by glob): one regex call per name
        and key, in C, over a LayerTable's columns (no layer made)."""
        layers = model.layers
        if isinstance(layers, LayerTable):
            names, params = layers.names, layers.params
        else:
            names, params = [layer.name for layer in layers], [layer.param for layer in layers]
        return [_hit(rule.patterns, names, params) for rule in self.overrides]

    def apply(self, model: Model, hits: list[list[bool]] | None = None) -> Model:
        """The model with this configuration's init choices on its layers (`hits`: `self.hits(model)`, where
        already found). A LayerTable stays one: its layers grouped by template and the overrides that match
        them, each group's template changed and its copies alike."""
        hits = self._checked(model, hits)
        layers = model.layers
        if isinstance(layers, LayerTable):
            numbering = Numbering()
            groups = list(map(numbering.__getitem__, zip(layers.kin, *hits))) if hits else layers.kin
            rules = [self._matched(found[1:]) for found in numbering] if hits else []
            changed: LayerTable | tuple[Layer, ...] = layers.refined(
                None, groups, lambda layer, group: self._applied(layer, rules[group] if rules else ()))
        else:
            changed = tuple(self._applied(layer, self._matched(found))
                            for layer, found in zip(layers, zip(*hits) if hits else itertools.repeat(())))
        built_by = model.built_by
        if self.recipe:  # the source's config still gives the numbers the recipe reads
            built_by = replace(built_by or BuiltBy(""), recipe=self.recipe, where=self.recipe_at)
        return replace(model, layers=changed, fans=self.fans or model.fans, built_by=built_by)

    def _checked(self, model: Model, hits: list[list[bool]] | None) -> list[list[bool]]:
        """`hits` where they are this model's (one column per override, one value per layer), found where None."""
        if hits is None:
            return self.hits(model)
        if len(hits) != len(self.overrides) or any(len(hit) != len(model.layers) for hit in hits):
            raise ValueError("hits must be this configuration's for this model (Config.hits(model))")
        return hits

    def _matched(self, found: tuple[bool, ...]) -> tuple[InitRule, ...]:
        """The overrides that match a layer, in order, from its hits."""
        return tuple(itertools.compress(self.overrides, found))

    def _applied(self, layer: Layer, rules: tuple[InitRule, ...]) -> Layer:
        """The layer with the defaults filled in, then each of `rules` (the overrides that match it), in order."""
        layer = self.defaults.fill(layer)
        for rule in rules:
            layer = rule.override(layer)
        return layer

    def unmatched(self, model: Model, hits: list[list[bool]] | None = None) -> list[str]:
        """A warning per override that matches no layer of `model`: a typo, or a layer since renamed, would
        otherwise do nothing silently. A warning, not an error: a removed layer is drift for `fancli check`
        to report (exit 1), and its override still belongs in the configuration until the baseline moves."""
        layers = model.layers
        if not len(layers):
            return []
        first = ", ".join(layers.params[:3] if isinstance(layers, LayerTable) else
                          [layer.param for layer in layers[:3]])
        found = []
        for rule, hit in zip(self.overrides, self._checked(model, hits)):
            if not any(hit):
                message = (f"match {' or '.join(repr(p) for p in rule.patterns)} matches no layer of {model.source} "
                           f"(the first layers: {first})")
                found.append(str(rule.at.error(message)) if rule.at else message)
        return found


def _hit(patterns: tuple[str, ...], names: list[str], params: list[str]) -> list[bool]:
    """Whether each layer's name or its key matches one of an override's `patterns` (globs, fnmatchcase)."""
    columns = [glob_hits(pattern, texts) for pattern in patterns for texts in (names, params)]
    return list(map(any, zip(*columns))) if columns else [False] * len(names)


def _rule(fields: Fields, patterns: tuple[str, ...] = (), at: At | None = None) -> InitRule:
    param = fields.number("param", None)
    if param is not None and not -_LARGEST < param < _LARGEST:
        raise fields.error("param", f"expected a number, got {param!r}")
    return InitRule(patterns, fields.choice("scheme", schemes.scheme), fields.choice("mode", schemes.check_mode),
                    fields.choice("nonlinearity", gains.gain), param, at)


def _mapping(fields: Fields, key: str, allowed: tuple[str, ...]) -> Fields:
    from .typed_yaml import (  # not at the top: yaml is imported only with a config
        At,
        Fields,
        yaml_type,
    )
    value = fields.raw(key, {})
    if not isinstance(value, dict):
        raise fields.error(key, f"expected a mapping, got {yaml_type(value)}")
    return Fields(value, At(fields.at.file, key, fields.at.key_line(fields.mapping, key)), allowed)


def _overrides(top: Fields) -> tuple[InitRule, ...]:
    from .typed_yaml import (  # not at the top: yaml is imported only with a config
        At,
        Fields,
        yaml_type,
    )
    items = top.raw("overrides", [])
    if not isinstance(items, list):
        raise top.error("overrides", "expected a list of {match: …, scheme: …} rules")
    rules = []
    for index, item in enumerate(items):
        lines = getattr(items, "item_lines", None)
        at = At(top.at.file, f"overrides[{index}]", lines[index] if lines else top.at.line)
        if not isinstance(item, dict):
            raise at.error(f"expected a mapping {{match: …, scheme: …}}, got {yaml_type(item)}")
        fields = Fields(item, at, _INIT_KEYS + ("match",))
        match = item.get("match")
        patterns = (match,) if isinstance(match, str) else tuple(match) if isinstance(match, list) else ()
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise fields.error("match", "expected a glob or a list of globs")
        rules.append(_rule(fields, patterns, at))
    return tuple(rules)


def parse_config(data: Any, path: Path) -> Config:
    """Validate a configuration mapping; errors name the file, the line (YAML) and the key."""
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a mapping of fancli settings")
    from .typed_yaml import (  # not at the top: yaml is imported only with a config
        At,
        Fields,
    )
    top = Fields(data, At(str(path), "", getattr(data, "line", None)), _TOP_KEYS)
    source, kwargs = top.raw("source", None), top.raw("kwargs", None)
    if source is not None and not isinstance(source, str):
        raise top.error("source", "expected a path or pkg.module:callable")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise top.error("kwargs", "expected a mapping")
    numbers = {}
    for key, default in (("tolerance", 1e-9), ("sigmas", 5.0)):
        numbers[key] = top.number(key, default)
        if not 0 < numbers[key] < _LARGEST:
            raise top.error(key, f"expected a positive number, got {numbers[key]!r}")
    trust = top.bool("trust", False)  # bool("false") is True: a quoted word must not turn trust on
    fans = top.one_of("fans", FAN_CONVENTIONS, "fan convention")
    base = path.parent
    if source and not _names_no_file(source, base):
        source = str(_inside(top, "source", source, base, "give SOURCE on the command line"))
    baseline = top.raw("baseline", DEFAULT_BASELINE)
    if not isinstance(baseline, str) or not baseline:
        raise top.error("baseline", "expected a file name")
    baseline_path = _inside(top, "baseline", baseline, base, "give --baseline FILE")
    defaults = _rule(_mapping(top, "defaults", _INIT_KEYS))
    overrides = _overrides(top)
    recipe = top.choice("recipe", recipes.recipe)
    if recipe is not None:
        recipe = recipes.recipe(recipe).name
        for rule in (defaults, *overrides):
            if rule.scheme or rule.mode:
                where = f"overrides[{overrides.index(rule)}]" if rule.patterns else "defaults"
                raise top.error("recipe", f"recipe {recipe} gives each tensor its library's init: {where} may "
                                          "not also name a scheme or mode")
    line = top.at.key_line(data, "recipe")  # a TOML table has no lines
    recipe_at = (f"{path}:{line} recipe" if line else f"{path} [tool.fancli] recipe") if recipe else ""
    return Config(path, source, kwargs, trust, baseline_path, defaults, overrides,
                  numbers["tolerance"], numbers["sigmas"], fans, _safe_globals(top), recipe, recipe_at)


def _names_no_file(source: str, base: Path) -> bool:
    """A URL (s3://, https://…), or a factory `pkg.module:callable` or a Hugging Face repo id `org/name` and no
    file of that name in the config's folder (which would win, as a path that exists wins on the command line)."""
    from .loaders import is_factory
    from .loaders.hf_cache import is_repo_id
    from .loaders.remote_io import is_url

    return is_url(source) or ((is_factory(source) or is_repo_id(source)) and not os.path.lexists(base / source))


def _inside(top: Fields, key: str, name: str, base: Path, instead: str) -> Path:
    """`name`, relative to the config's folder `base`, inside its tree (`config_tree`), links followed: a
    repository's config must not aim `check --update` at `../home/.bash_profile`, nor read files from
    outside the repository. The command line may name any file."""
    path, tree = base / name, config_tree(base.absolute())
    if not path.resolve().is_relative_to(tree.resolve()):
        raise top.error(key, f"{name!r} is outside the config's folder tree {tree} (a config names only files "
                             f"in its repository, or under its folder where there is none; to use another, {instead})")
    return path


def _safe_globals(top: Fields) -> tuple[str, ...]:
    """`safe_globals`: "module.Name" strings, checked by form only; fancli never imports them (a pickle's
    object of one of these classes becomes an inert record of its arguments and state)."""
    from .typed_yaml import (
        yaml_type,  # not at the top: yaml is imported only with a config
    )
    items = top.raw("safe_globals", [])
    if not isinstance(items, list) or len(items) > MAX_SAFE_GLOBALS:
        raise top.error("safe_globals", f"expected a list of at most {MAX_SAFE_GLOBALS} \"module.Name\" strings")
    for item in items:
        if not (isinstance(item, str) and len(item) <= 200 and _GLOBAL_NAME.fullmatch(item)):
            shown = repr(item)[:60] if isinstance(item, str) else yaml_type(item)
            raise top.error("safe_globals", f"expected \"module.Name\" strings, got {shown}")
    return tuple(items)


def _read_yaml(path: Path) -> Any:
    from .typed_yaml import (
        parse_yaml,  # not at the top: yaml is imported only with a config
    )
    from .yaml_lines import LineDict

    data = parse_yaml(read_text(path, MAX_CONFIG_BYTES, "a fancli config"), str(path), MAX_CONFIG_NODES,
                      "a fancli config", merge_keys=False)
    return LineDict() if data is None else data


def load_config(path: str | Path | None = None, directory: Path | None = None) -> Config | None:
    """The configuration in `path`, or the nearest one found from `directory` (the working directory)
    up (`find_config`); None if none. Its `source` and `baseline` are relative to its own folder."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such config file")
        data = read_pyproject(path) if path.suffix == ".toml" else _read_yaml(path)
        if data is None:
            raise SourceError(f"{path}: no [tool.fancli] table")
        return parse_config(data, path)
    found = find_config(directory)
    if found is None:
        return None
    data = read_pyproject(found) if found.name == "pyproject.toml" else _read_yaml(found)
    return parse_config(data, found)
