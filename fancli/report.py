"""From a Model and the user's settings to a Report: one row per weight, ready to render.

This is where the three analysis modules meet a layer: its fans, the gain of what follows it, and
the init values its scheme gives under each mode asked for. What is asked is one object from the command
line or the library's keywords to here: a `Settings`, valid once built, inside a `Request`.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .analysis import fans as fans_mod
from .analysis import gains, schemes
from .analysis.fans import LayerFans
from .analysis.schemes import InitValues
from .columns import LazyTuple, Numbering, first_positions, glob_hits
from .errors import SettingsError
from .kinds import has_init
from .layer import Layer, LayerTable, Model
from .records import record, replaced
from .vocab import FAN_CONVENTIONS

if TYPE_CHECKING:
    from .analysis import recipes
    from .analysis.inference import Inference
    from .folding import Group
    from .spectral_row import SpectralRow
    from .summary import Totals
    from .weights.moments import Observed

SCHEMA_VERSION = "1.0"
DEFAULT_SCHEME = "kaiming_normal"


@dataclass(frozen=True)
class Settings:
    """What the user asked the analysis for; None means "what the source or the scheme says". Valid once built:
    names are made canonical, or SettingsError names the bad value, so whoever holds one need not check it."""

    scheme: str | None = None
    modes: tuple[str, ...] = ()  # inspect takes one, compare two or three
    nonlinearity: str | None = None
    param: float | None = None
    fans: str | None = None  # "torch" or "effective"
    pool_fan_out: bool | None = None
    filters: tuple[str, ...] = ()  # globs (or substrings) on layer names and parameter keys
    recipe: str | None = None  # a library's init (analysis.recipes); None: the source's, unless scheme/modes

    def __post_init__(self) -> None:
        try:
            scheme = schemes.scheme(self.scheme).name if self.scheme else None
            recipe = _recipes().recipe(self.recipe).name if self.recipe is not None else None
            modes = tuple(schemes.check_mode(m) for m in self.modes)
            nonlinearity = gains.canonical(self.nonlinearity) if self.nonlinearity else None
            if nonlinearity:
                gains.gain(nonlinearity, self.param)
        except ValueError as error:
            raise SettingsError(str(error)) from None
        if self.param is not None and not math.isfinite(self.param):
            raise SettingsError(f"--param must be a finite number, got {self.param}")
        if len(set(modes)) != len(modes):
            raise SettingsError(f"mode given twice: {' '.join(modes)}")
        if self.fans is not None and self.fans not in FAN_CONVENTIONS:
            raise SettingsError(f"unknown fan convention {self.fans!r}; known: {', '.join(FAN_CONVENTIONS)}")
        if recipe and (scheme or modes):
            raise SettingsError("--recipe gives each tensor its library's init: it takes no --scheme or --mode")
        for name, value in (("scheme", scheme), ("modes", modes), ("nonlinearity", nonlinearity),
                            ("filters", tuple(self.filters)), ("recipe", recipe)):
            object.__setattr__(self, name, value)  # frozen: set once, here


@dataclass(frozen=True)
class Request:
    """One report as asked: the analysis (`settings`) and whether and how the weights are read. Reading is the
    run's business, not the analysis's: `jobs` and `cluster` never change a number, `stats` and `infer` only add
    what the weights hold beside the expectation, and explain and propagate use `Settings` with nothing to
    read; so these stay out of `Settings`, and out of the `Report` that carries it."""

    command: str = "inspect"  # "inspect": one mode (or each layer's own); "compare": several side by side
    settings: Settings = Settings()
    stats: bool = False  # read the weights' observed statistics
    infer: bool = False  # inspect: also name the init that best explains them
    jobs: int | None = 1  # threads reading them (None: the usable cores)
    cluster: Any = None  # or a Dask scheduler address ("tcp://host:port", "local") or executor to read them on
    spectral: bool = False  # read each ≥2-D weight's singular values (‖W‖₂, stable rank): `fancli.spectral`

    def __post_init__(self) -> None:
        modes = self.settings.modes
        if self.command == "inspect" and len(modes) > 1:
            raise SettingsError(f"inspect takes one mode, got {' '.join(modes)}; compare sets several side by side")
        if self.command == "compare" and len(modes) < 2:
            raise SettingsError(f"compare needs at least two modes, got {len(modes)}")

    @property
    def reads_weights(self) -> bool:
        """Whether the run reads the weights: decided here alone (the progress bar and `api.run` ask)."""
        return self.stats or self.infer or self.spectral


@record
class Row:
    """One weight: its fans, the gain of what follows it, and its init values per mode."""

    layer: Layer
    fans: LayerFans
    nonlinearity: str | None  # None where the scheme needs none and the source names none
    nonlinearity_param: float | None
    gain: float | None  # of the nonlinearity that follows
    scheme: str
    inits: dict[str, InitValues]  # mode -> values, in the order asked for
    notes: tuple[str, ...] = ()
    observed: Observed | None = None  # the weights' actual statistics, with --stats
    scheme_gain: float | None = None  # the gain the std is computed with (lecun: 1, torch_default: √(1/3))
    inferred: "Inference | None" = None  # with --infer: the init that best explains the weights
    recipe: str | None = None  # the library recipe the expectation follows (then `scheme` is its name)
    spectral: "SpectralRow | None" = None  # with --spectral: ‖W‖₂, stable rank, against fans and init

    @property
    def observed_ratio(self) -> float | None:
        """Observed std over the expected std of the first mode: 1 when the weights match the scheme."""
        expected = next(iter(self.inits.values())).std
        if self.observed is None or self.observed.std is None or not expected:
            return None
        return self.observed.std / expected

    @property
    def spread(self) -> float | None:
        """Largest std over smallest across modes: how much the modes disagree on this layer."""
        stds = [v.std for v in self.inits.values()]
        if len(stds) < 2 or any(s is None or s <= 0 for s in stds):
            return None
        return max(stds) / min(stds)


@record
class Report:
    """Everything a renderer needs; renderers only format it."""

    command: str  # "inspect" or "compare"
    source: str
    format: str
    model_name: str | None
    settings: Settings
    fan_convention: str
    pool_fan_out: bool
    rows: tuple[Row, ...] = field(default=())
    notes: tuple[str, ...] = ()  # model-wide, from the loader
    totals: "Totals | None" = None  # of every row analysed: kept when a table folds small tensors away
    expanded: bool = False  # tables and Markdown list every row (--expand) instead of folded groups
    recipe_from: str | None = None  # what chose the recipe the rows follow: "--recipe", or what the source says
    kin: "Kin | None" = field(default=None, compare=False, repr=False)  # which rows are alike, where analysis knows

    @property
    def alike(self) -> "Kin | None":
        """Which rows are alike, where the report knows it for these very rows (a report remade with other
        rows, `replace(report, rows=…)`, does not: its rows are then read one by one)."""
        kin = self.kin
        return kin if kin is not None and kin.rows is self.rows else None

    @property
    def distinct_rows(self) -> "Iterable[Row]":
        """A row of each kind the report has (`Kin.firsts`), else every row: what is asked of every row's
        fields but its names (its scheme, modes, recipe) is asked of these."""
        alike = self.alike
        return self.rows if alike is None else alike.firsts.values()

    def with_rows_made(self) -> "Report":
        """The report with its rows a tuple (a RowTable's made whole), still known alike: what the library's
        `inspect` and `compare` return."""
        rows = self.rows
        if not isinstance(rows, RowTable):
            return self
        made = rows.whole()
        alike = self.alike
        return replace(self, rows=made, kin=None if alike is None else Kin(made, alike.ids))

    @cached_property
    def groups(self) -> "list[Group]":
        """The rows folded where they differ only in their keys' indices (fancli.folding), computed once."""
        from .folding import Group, fold_alike, fold_rows

        rows, alike = self.rows, self.alike
        if alike is None or (not isinstance(rows, RowTable) and any(map(_OBSERVED_OF, rows))):
            return fold_rows(rows)  # observed values part a group by their stds: read row by row
        if isinstance(rows, RowTable):
            params, digits, take = rows.params, rows.digits, rows.take
        else:
            params, digits, take = list(map(_PARAM_OF, rows)), None, lambda at: tuple(map(rows.__getitem__, at))
        return [Group(group.pattern, group.indices, take(group.rows))
                for group in fold_alike(params, alike.ids, alike.firsts, digits)]

    @property
    def shown(self) -> "list[Group]":
        """What tables and Markdown list: the groups, or with --expand each row on its own."""
        from .folding import singletons

        return singletons(self.rows) if self.expanded else self.groups

    @property
    def summary(self) -> "Totals":
        """Tensors, parameters and bytes of the report (its own rows where it was built without totals)."""
        from .summary import totals

        return self.totals if self.totals is not None else totals(row.layer for row in self.rows)

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes shown; for inspect without --mode, each row's own mode."""
        return self.settings.modes

    @property
    def recipe(self) -> "recipes.Recipe | None":
        """The library recipe the rows follow, where they follow one."""
        names = set(map(_RECIPE_OF, self.distinct_rows))
        return _recipes().RECIPES[names.pop()] if len(names) == 1 and None not in names else None

    def __repr__(self) -> str:
        """Short: a notebook cell or a log shows what the report is, not 25,000 characters of rows."""
        schemes = schemes_used(self.distinct_rows)
        modes = self.modes or tuple(modes_used(self.distinct_rows))
        init = f"{'/'.join(schemes) or 'no layers'} {' vs '.join(modes)}".strip()
        name = self.source.rsplit("/", 1)[-1]
        count = len(self.rows)
        return f"<Report {self.command} {name}: {count} layer{'s' * (count != 1)}, {init}>"

    def as_read(self, fmt: str = "table", show_all: bool = False, expand: bool = False) -> "Report":
        """The report as `fmt` shows it: formats read by people fold tensors below 2 dims (biases, norm scales:
        no fans in torch) into one note unless `show_all` (JSON and CSV keep every tensor), and fold repeated
        layers unless `expand`."""
        from .outputs import MACHINE_FORMATS

        report = self
        if fmt in MACHINE_FORMATS or show_all:
            kept, kin = self.rows, self.kin
        else:
            kept, kin = _with_fans(self.rows, self.alike)
        hidden = len(self.rows) - len(kept)
        if hidden and kept:
            note = (f"{hidden} tensors below 2 dims (biases, norm weights: no fans in torch) not shown; --all "
                    "(show_all=True) shows them")
            report = replace(report, rows=kept, notes=report.notes + (note,), kin=kin)
        return replace(report, expanded=True) if expand else report

    def _shown_as(self, fmt: str) -> str:
        """The report as `fmt` shows it, written by its renderer (`fancli.outputs`, which imports none)."""
        from .outputs import as_text

        return as_text(self.command, fmt, self.as_read(fmt))

    def __str__(self) -> str:
        """`print(report)`: the table as the CLI prints it, as torchinfo's `summary()` prints its own."""
        return self._shown_as("table")

    def _repr_markdown_(self) -> str:
        """Jupyter: the Markdown table, tensors below 2 dims folded as the CLI's table does."""
        return self._shown_as("markdown")

    def _repr_html_(self) -> str:
        """Jupyter (preferred over Markdown where both exist): a plain HTML table, every string escaped."""
        return self._shown_as("html")

    def most_disagreeing(self, limit: int = 3) -> list[Row]:
        """Rows whose modes disagree most (spread > 1), largest first."""
        ranked = sorted((r for r in self.rows if r.spread and r.spread > 1 + 1e-9), key=lambda r: -r.spread)
        return ranked[:limit]


@record
class Kin:
    """Which rows are alike: rows of one number in `ids` share every field but their layer, whose fields but
    its names and data (`_UNREAD`) are equal too (`_analyze_all` made them from one analysis, or a RowTable
    from one template). Folding and the JSON lines read each number's row once, not each of 90,000 rows.
    Valid for `rows`, the very sequence it was made with (`Report.alike`). Numbers count up in order of
    their first row."""

    rows: "tuple[Row, ...] | RowTable"
    ids: list[int]

    @cached_property
    def firsts(self) -> dict[int, Row]:
        """A row of each number, in order of the number's first row: a RowTable's template rows, which
        differ from the first row of theirs in their names alone. Not to be changed (computed once)."""
        rows = self.rows
        if isinstance(rows, RowTable):
            return {number: rows.templates[number] for number in sorted(set(self.ids))}
        first = dict(zip(reversed(self.ids), reversed(rows)))  # reversed: each number's first row wins
        return {number: first[number] for number in sorted(first)}


class RowTable(LazyTuple[Row]):
    """A report's rows as columns (`fancli.columns`): each row's layer, a position in its model's LayerTable
    (`at`), and its template (`kin`), whose row in `templates` it copies but for the layer. What folding, the
    JSON lines and `as_read` read; every other reader reads Rows, made when read, one by one through `made`
    (shared with the tables `subset` and `take` make, so that a row read twice is the same object)."""

    __slots__ = ("layers", "at", "kin", "templates", "made")

    def __init__(self, layers: LayerTable, at: list[int], kin: list[int], templates: list[Row],
                 made: LazyTuple[Row] | None = None) -> None:
        if made is None:  # the table of every layer: `kin` is each layer's
            made = LazyTuple(len(layers), functools.partial(_row_of, layers, kin, templates))
        super().__init__(len(at), lambda index: made[at[index]])
        self.layers, self.at, self.kin, self.templates, self.made = layers, at, kin, templates, made

    def whole(self) -> tuple[Row, ...]:
        if self._all is None and len(self.at) == len(self.made):  # every row: made at once, the layers first
            self.layers.whole()
            self._all = self.made.whole()
        return super().whole()

    @property
    def params(self) -> list[str]:
        """Each row's parameter key (not to be changed: the layers' own list, where the rows are all of them)."""
        return self.layers.params if len(self.at) == len(self.layers) else list(map(self.layers.params.__getitem__,
                                                                                    self.at))

    @property
    def digits(self) -> list[str] | None:
        """Each row's key's digit template, where the layers have them (not to be changed, as `params`)."""
        digits = self.layers.digits
        return digits if digits is None or len(self.at) == len(self.layers) else list(map(digits.__getitem__,
                                                                                          self.at))

    @property
    def names(self) -> list[str]:
        """Each row's layer name (not to be changed, as `params`)."""
        return self.layers.names if len(self.at) == len(self.layers) else list(map(self.layers.names.__getitem__,
                                                                                   self.at))

    def subset(self, keep: Iterable[bool]) -> RowTable:
        """The rows `keep` says, in order, as a table."""
        keep = list(keep)
        return RowTable(self.layers, list(itertools.compress(self.at, keep)),
                        list(itertools.compress(self.kin, keep)), self.templates, self.made)

    def take(self, indices: Iterable[int]) -> LazyTuple[Row]:
        """The rows at `indices`, made when read."""
        at = list(map(self.at.__getitem__, indices))
        return LazyTuple(len(at), lambda index: self.made[at[index]])


def _row_of(layers: LayerTable, kin: list[int], templates: list[Row], position: int) -> Row:
    """The row of the layer at `position`: its template's row (`kin`: each layer's), the layer put in (or the
    row itself, for the template's own layer)."""
    layer = layers[position]
    template = templates[kin[position]]
    if template.layer is layer:
        return template
    fields = template.__dict__.copy()  # as `_analyze_all` copies a row: the dict whole, the layer put in
    fields["layer"] = layer
    row = object.__new__(Row)
    object.__setattr__(row, "__dict__", fields)
    return row


def _with_fans(rows: tuple[Row, ...], kin: Kin | None) -> tuple[tuple[Row, ...] | RowTable, Kin | None]:
    """The rows of 2 dims or more (what tables show by default), and their Kin where it is known: the test
    made once per number."""
    if kin is None:
        return tuple(row for row in rows if len(row.layer.shape) >= 2), None
    shown = {number: len(row.layer.shape) >= 2 for number, row in kin.firsts.items()}
    keep = list(map(shown.__getitem__, kin.ids))
    kept = rows.subset(keep) if isinstance(rows, RowTable) else tuple(itertools.compress(rows, keep))
    return kept, Kin(kept, list(itertools.compress(kin.ids, keep)))


_OBSERVED_OF, _PARAM_OF = operator.attrgetter("observed"), operator.attrgetter("layer.param")
_SCHEME_OF_ROW, _RECIPE_OF, _INITS_OF = (operator.attrgetter(name) for name in ("scheme", "recipe", "inits"))


def schemes_used(rows: tuple[Row, ...]) -> list[str]:
    """The schemes the rows follow, sorted (one C pass over 90,000 rows)."""
    return sorted(set(map(_SCHEME_OF_ROW, rows)))


def distinct_inits(rows: tuple[Row, ...]) -> list[dict[str, InitValues]]:
    """Each inits dict of the rows once, by identity (rows that share their analysis share theirs; the rows
    keep them alive): what is asked of every row's modes, asked of a few dozen."""
    found = list(map(_INITS_OF, rows))
    return list(dict(zip(map(id, found), found)).values())


def modes_used(rows: tuple[Row, ...]) -> list[str]:
    """The modes of the rows' init values, sorted."""
    return sorted({mode for inits in distinct_inits(rows) for mode in inits})


def _kept(names: list[str], params: list[str], patterns: tuple[str, ...]) -> list[bool]:
    """Whether a name filter keeps each parameter key `params[i]` of the module `names[i]`: a pattern keeps
    a key where it is a substring of the key or the name, or, holding `*?[`, matches either as a glob; in C
    over the columns (a LayerTable's: no layer made)."""
    if not patterns:
        return [True] * len(names)
    columns = [list(map(operator.contains, texts, itertools.repeat(pattern)))
               for pattern in patterns for texts in (names, params)]
    columns += [glob_hits(pattern, texts) for pattern in patterns if any(c in pattern for c in "*?[")
                for texts in (names, params)]
    return list(map(any, zip(*columns)))


def _nonlinearity(
    layer: Layer, settings: Settings, scheme: schemes.Scheme
) -> tuple[str | None, float | None, str | None]:
    """The nonlinearity that follows the layer, its param, and a note when it had to be assumed."""
    if settings.nonlinearity:
        return settings.nonlinearity, settings.param, None
    if layer.nonlinearity:
        param = settings.param if settings.param is not None else layer.nonlinearity_param
        return gains.canonical(layer.nonlinearity), param, None
    if scheme.fixed_gain:  # the scheme's gain does not depend on what follows: nothing to assume
        return None, None, None
    name, param = scheme.default_nonlinearity
    if settings.param is not None:
        param = settings.param
    shown = f"{name} (a={param:g})" if param is not None else name
    return name, param, f"no nonlinearity given: assumed {shown}, the default of {scheme.name} in torch"


def _slope(name: str | None, param: float | None, scheme: schemes.Scheme) -> tuple[float | None, str | None]:
    """leaky_relu without a slope: kaiming's `a` defaults to 0 in torch (kaiming_normal_(w, nonlinearity=
    'leaky_relu') uses √2), calculate_gain's slope to 0.01. Which one was used is said on the row."""
    if name != "leaky_relu" or param is not None or scheme.fixed_gain:
        return param, None
    if scheme.default_nonlinearity[0] == "leaky_relu":
        return scheme.default_nonlinearity[1], (f"leaky_relu without -p: a = 0, the default of {scheme.name}'s `a` "
                                                "in torch; -p gives the negative slope")
    return None, "leaky_relu without -p: negative slope 0.01, calculate_gain's default; -p gives another"


def torch_default(*args: Any) -> InitValues:
    """torch's own modules' init (`analysis.torch_defaults`), imported when a row asks for it."""
    from .analysis.torch_defaults import torch_default as rule

    return rule(*args)


def _torch_refuses(scheme: schemes.Scheme, context: "_Context") -> str | None:
    """A note where the numbers are variance scaling's but torch's own function for the scheme has no such mode."""
    asked = [mode for mode in context.modes if mode != scheme.mode]
    if not asked:
        return None
    if scheme.name == "torch_default":
        return (f"torch_default ignores --mode {'/'.join(asked)}: each module's reset_parameters() draws as torch "
                "does (Linear and Conv from fan_in)")
    if scheme.name.startswith("kaiming") and {"fan_avg", "fan_geo_avg"} & set(asked):
        return (f"torch's {scheme.name}_ has no mode {'/'.join(m for m in asked if m.startswith('fan_'))} "
                "(it raises); this is variance scaling's (JAX's)")
    if scheme.name.startswith("xavier"):
        return f"torch's {scheme.name}_ has no mode (always fan_avg); {'/'.join(asked)} is variance scaling's"
    return None


@record
class _Context:
    """What one row needs from the rest of the model and the settings. The maps of modules are built at their
    first read: only torch_default's rules and recipes read them (`_names_read`), and a header-only inspect
    of 92,000 tensors under a scheme would otherwise walk every key for nothing."""

    modes: tuple[str, ...]
    fan_convention: str
    pool_fan_out: bool
    layers: tuple[Layer, ...]  # the model's, whose modules the maps below describe
    recipe: "recipes.Recipe | None"  # the library's init every layer expects, where one is in force
    facts: dict[str, float]  # the config numbers the recipe reads

    @cached_property
    def weight_fan_in(self) -> dict[str, float]:
        """Module name -> the fan_in torch's bias init reads from its weight (a LayerTable's: once per
        template, for each of its layers' modules)."""
        layers = self.layers
        if isinstance(layers, LayerTable):
            fans = {number: _weight_fan_in(layer) for number, layer in enumerate(layers.templates)}
            fans = {number: fan for number, fan in fans.items() if fan is not None}
            return {param.rpartition(".")[0]: fans[number] for param, number in zip(layers.params, layers.kin)
                    if number in fans}
        found = {}
        for layer in layers:
            fan = _weight_fan_in(layer)
            if fan is not None:
                found[layer.param.rpartition(".")[0]] = fan
        return found

    @cached_property
    def attention(self) -> frozenset[str]:
        """Modules with attention parameters (any of them says so, whatever the key order): their out_proj's
        bias is drawn 0."""
        layers = self.layers
        if isinstance(layers, LayerTable):
            attending = {number for number, layer in enumerate(layers.templates) if layer.kind == "multihead_attention"}
            return frozenset(param.rpartition(".")[0] for param, number in zip(layers.params, layers.kin)
                             if number in attending)
        return frozenset(layer.param.rpartition(".")[0] for layer in layers if layer.kind == "multihead_attention")


def _weight_fan_in(layer: Layer) -> float | None:
    """The fan_in torch's bias init reads from this layer, where it is its module's weight."""
    if layer.param.rpartition(".")[2] == "weight" and len(layer.shape) >= 2 and layer.layout == "torch":
        return layer.shape[1] if layer.kind == "bilinear" else fans_mod.torch_fans(layer.shape)[0]
    return None


def _recipes() -> Any:
    """The recipes package, imported where a recipe is asked for or a source names its library (a YAML spec
    or a bare checkpoint never pays for it)."""
    from .analysis import recipes

    return recipes


_SCHEME_OF, _MODE_OF = operator.attrgetter("scheme"), operator.attrgetter("mode")


def _recipe(model: Model, settings: Settings) -> "tuple[recipes.Recipe | None, dict[str, float]]":
    """The recipe asked for, else the source's own where nothing else is asked (no --scheme, --mode, and no
    layer of the source names a scheme); a recipe whose config facts the source lacks is refused."""
    facts = dict(model.built_by.facts) if model.built_by else {}
    if settings.recipe:
        chosen = _recipes().recipe(settings.recipe)
    elif settings.scheme or settings.modes or any(map(_SCHEME_OF, _distinct_layers(model))) or \
            any(map(_MODE_OF, _distinct_layers(model))):
        return None, facts
    else:
        chosen = _recipes().for_source(model.built_by) if model.built_by else None
        if chosen is None:
            return None, facts
    if "n_layer" in chosen.needs and "n_layer" not in facts:
        facts["n_layer"] = _blocks(model)
    missing = chosen.missing(facts)
    if missing:
        raise SettingsError(f"recipe {chosen.name} reads {', '.join(missing)} from the model's config, which "
                            f"{model.source} does not give")
    return chosen, facts


def _blocks(model: Model) -> float:
    """How many blocks the keys number (`layers.0` … `layers.31`: 32), for a recipe scaled by depth where the
    source has no config saying it; 0 where none is numbered."""
    found = set(map(_recipes().block_index, _params(model)))
    found.discard(None)
    return float(max(found) + 1) if found else 0.0


def _context(model: Model, settings: Settings, fan_convention: str, pool_fan_out: bool) -> _Context:
    recipe, facts = _recipe(model, settings)
    return _Context(settings.modes, fan_convention, pool_fan_out, model.layers, recipe, facts)


def analyze_layer(layer: Layer, settings: Settings, context: _Context, observed: Observed | None = None) -> Row:
    """One row. No modes in the context means the layer's own mode, else the scheme's default."""
    if context.recipe is not None:
        return _recipe_row(layer, settings, context, context.recipe, observed)
    try:
        scheme = schemes.scheme(settings.scheme or layer.scheme or DEFAULT_SCHEME)
        modes = context.modes or (schemes.check_mode(layer.mode) if layer.mode else scheme.mode,)
    except ValueError as error:
        raise SettingsError(f"{layer.param}: {error}") from None
    fans = fans_mod.layer_fans(layer, pool_fan_out=context.pool_fan_out)
    nonlinearity, param, assumed = _nonlinearity(layer, settings, scheme)
    if not has_init(layer.kind):  # no init draws a scale or a buffer, and nothing follows it: no gain
        nonlinearity = param = assumed = None
    param, slope_note = _slope(nonlinearity, param, scheme)
    try:
        gain = gains.gain(nonlinearity, param) if nonlinearity else None
        scheme_gain = gains.gain(*scheme.fixed_gain) if scheme.fixed_gain else gain
    except ValueError as error:
        raise SettingsError(f"{layer.param}: {error}") from None

    notes = list(layer.notes) + list(fans.notes)
    notes += [note for note in (assumed, slope_note, _torch_refuses(scheme, context)) if note]
    if nonlinearity and gain is not None and not gains.torch_defines(nonlinearity):
        notes.append(f"{nonlinearity} has no torch gain: 1/√E[f(z)²] for z ~ N(0, 1) = {gain:.6g}")
    if scheme.fixed_gain and scheme.name != "torch_default" and len(layer.shape) >= 2:
        notes.append(f"{scheme.name} uses gain {scheme_gain:g} whatever follows")
    inits: dict[str, InitValues] = {}
    for mode in modes:
        if not has_init(layer.kind):  # a scale, quantization metadata or a buffer: whatever the scheme
            values = torch_default(layer, fans.fan_in, fans.fan_out, mode)
        elif len(layer.shape) >= 2 and 0 in layer.shape:
            values = InitValues(None, note="zero-element tensor: torch's init is a no-op")
        elif scheme.name == "torch_default":
            module = layer.param.rpartition(".")[0]
            if layer.param.endswith("bias") and module.rpartition(".")[0] in context.attention:
                values = InitValues(0.0, note="attention biases: initialised to 0 (constant)")
            else:
                values = torch_default(layer, fans.fan_in, fans.fan_out, mode, context.weight_fan_in.get(module))
        else:
            fan_in, fan_out = fans.pick(effective=context.fan_convention == "effective")
            values = schemes.variance_scaling(scheme_gain, fan_in, fan_out, mode, scheme.distribution)
        inits[mode] = values
        if values.note and values.note not in notes:
            notes.append(values.note)
    if observed is not None and observed.note:
        notes.append(observed.note)
    return Row(layer, fans, nonlinearity, param, gain, scheme.name, inits, tuple(notes), observed, scheme_gain)


def _recipe_row(layer: Layer, settings: Settings, context: _Context, recipe: "recipes.Recipe",
                observed: Observed | None) -> Row:
    """A row whose expectation is the library's own init: the recipe's rule, or torch's init where the
    library leaves the tensor alone. The nonlinearity is shown as the source states it; no gain enters."""
    fans = fans_mod.layer_fans(layer, pool_fan_out=context.pool_fan_out)
    nonlinearity, param, _ = _nonlinearity(layer, settings, schemes.SCHEMES["torch_default"])  # only as stated
    if not has_init(layer.kind):
        nonlinearity = param = None
    try:
        gain = gains.gain(nonlinearity, param) if nonlinearity else None
    except ValueError as error:
        raise SettingsError(f"{layer.param}: {error}") from None
    values = recipe.values(_recipes().RecipeArgs(layer, fans.fan_in, fans.fan_out, context.facts))
    if values is None or not has_init(layer.kind):
        module = layer.param.rpartition(".")[0]
        values = torch_default(layer, fans.fan_in, fans.fan_out, "fan_in", context.weight_fan_in.get(module))
        if has_init(layer.kind) and values.std is not None:
            values = replace(values, note=f"{recipe.name} leaves it to torch: {values.note or 'its reset_parameters()'}")
    notes = list(layer.notes) + list(fans.notes)
    if values.note and values.note not in notes:
        notes.append(values.note)
    if observed is not None and observed.note:
        notes.append(observed.note)
    return Row(layer, fans, nonlinearity, param, gain, recipe.name, {recipe.mode: values}, tuple(notes), observed,
               None, recipe=recipe.name)


#: Every field of a Layer that analysis reads, except its names (its HF name too), notes and data: two layers
#: equal in these get the same row but for the layer's own notes (a 92,000-tensor MoE checkpoint has a few
#: hundred) and what `_names_read` says the row reads of their names.
_UNREAD = ("name", "param", "hf_name", "notes", "data")
_ANALYSED = tuple(f.name for f in fields(Layer) if f.name not in _UNREAD)
#: The analysed fields, then the notes (last: `[:-1]` is the analysed ones), in one C call per layer; read from
#: a layer's `__dict__`, where a record keeps its fields (`records.record`), a quarter faster.
_KEYED = operator.attrgetter(*_ANALYSED, "notes")
_KEYED_ITEMS = operator.itemgetter(*_ANALYSED, "notes")
#: What `analyze_layer` reads of a layer's names (`_names_read`).
_NO_NAMES, _LEAF, _MODULE = 0, 1, 2


def _names_read(layer: Layer, settings: Settings, context: _Context) -> int:
    """What `analyze_layer` reads of the layer's names, decided by fields `_ANALYSED` covers (kind, scheme)
    and by the settings: nothing where a scheme's variance scaling gives the values (from the fans, gains and
    fields alone); the parameter's leaf (`_LEAF`) where torch's rule for a tensor no init draws does
    (`torch_default`, no sibling read: is it a bias?); its module too (`_MODULE`) under torch_default's and a
    recipe's rules (the sibling weight's fan_in, whether an attention module's bias, the recipe's role).
    Names in an error raised are the layer's own: the first layer of a key is analysed whole."""
    if context.recipe is not None:
        return _MODULE
    try:
        if schemes.scheme(settings.scheme or layer.scheme or DEFAULT_SCHEME).name == "torch_default":
            return _MODULE
    except ValueError:  # analyze_layer says so, naming the layer
        return _MODULE
    return _NO_NAMES if has_init(layer.kind) else _LEAF


def _analyze_all(layers: list[Layer], settings: Settings, context: _Context, observed: dict[str, Observed],
                 codes: list[int | None]) -> tuple[list[Row], list[int]]:
    """`analyze_layer` for each layer, computed once per distinct layer: a row depends on the layer's
    `_ANALYSED` fields and, as `_names_read` says from those, on none of its names, on its leaf name, or on
    its leaf, whether it is an attention module's bias, its sibling weight's fan_in and the recipe's role;
    those are the key's second level (`names`). The layer's own notes only come first in the row's notes: the rest (`tail`) is
    analysed on the layer without them (once per analysed fields and names), and reused where none of the
    tail is among the layer's notes (`analyze_layer` would drop a repeat). Rows with observed statistics are
    always computed. Rows share the analysis (fans, inits, notes) and carry their own layer: analysing each
    of 92,000 tensors was half of a header-only inspect; a layer costs one C call for its key, one lookup
    per level and its Row. `codes`: each layer's `_numbered` key. With the rows, their `Kin` numbers: one per
    shared analysis, one of its own for a row computed alone."""
    entries: dict[int, tuple[int, dict]] = {}  # key's number -> what its rows read of their names, and those
    # names -> the row's fields (its notes the layer's then the tail), None where the tail repeats one
    bare: dict[tuple, tuple[dict[str, Any], tuple[str, ...]]] = {}  # (analysed fields, names) -> row, tail
    attention: Any = None  # with fan_in_of, the context's maps of modules, read at the first row that reads them
    fan_in_of: Any = None
    recipe = context.recipe
    rows = []
    ids: list[int] = []
    kin = Numbering()  # id of a shared analysis's fields (kept alive in `entries`) -> its Kin number
    for layer, code in zip(layers, codes):
        seen = observed.get(layer.param) if observed else None
        if seen is not None or code is None:  # None: a loader left a list where a tuple belongs, no key
            rows.append(analyze_layer(layer, settings, context, seen))
            ids.append(kin[len(rows), None])  # alike no other row
            continue
        entry = entries.get(code)
        if entry is None:
            entry = entries[code] = (_names_read(layer, settings, context), {})
        reads, by_names = entry
        names: Any = None
        if reads == _LEAF:
            names = layer.param.rpartition(".")[2]
        elif reads == _MODULE:
            if attention is None:
                attention, fan_in_of = context.attention, context.weight_fan_in.get
            names = _module_names(layer.param, layer.name, attention, fan_in_of, recipe)
        found = by_names.get(names, by_names)
        if found is by_names:
            found = by_names[names] = _shared_fields(layer, names, bare, settings, context)
        if found is None:
            rows.append(analyze_layer(layer, settings, context))
            ids.append(kin[len(rows), None])
            continue
        ids.append(kin[id(found)])
        copy = found.copy()  # a Row's dict: the copy shares its keys too, copied whole (not key by key)
        copy["layer"] = layer
        row = object.__new__(Row)  # `replaced(template, layer=…)` without its call and keywords
        object.__setattr__(row, "__dict__", copy)  # frozen: set as dataclasses set fields
        rows.append(row)
    return rows, ids


def _module_names(param: str, name: str, attention: frozenset[str], fan_in_of: Callable[[str], float | None],
                  recipe: "recipes.Recipe | None") -> tuple:
    """What a row reads of its layer's names under torch_default's and a recipe's rules (`_MODULE`): its leaf,
    whether its module's parent is an attention module, its module's weight's fan_in, the recipe's role."""
    module, _, leaf = param.rpartition(".")
    return leaf, module.rpartition(".")[0] in attention, fan_in_of(module), recipe and recipe.role_key(name, param)


def _numbered(layers: list[Layer]) -> list[int | None]:
    """The number of each layer's `_KEYED` fields (`Numbering`) in one C loop (the keys are not kept); None
    where they cannot be hashed. Layers of one number count alike in the totals: `summary.COUNTED` are
    analysed fields."""
    numbers = Numbering()
    try:
        return list(map(numbers.__getitem__, map(_KEYED_ITEMS, map(vars, layers))))
    except (TypeError, KeyError):  # a key that cannot be hashed; a layer whose fields are not all in its dict
        numbers.clear()
        found: list[int | None] = []
        for key in map(_KEYED, layers):
            try:
                found.append(numbers[key])
            except TypeError:
                found.append(None)
        return found


def _shared_fields(layer: Layer, names: Any, bare: dict, settings: Settings,
                   context: _Context) -> dict[str, Any] | None:
    """The fields of the row of `layer` that every layer of its key shares (all but `layer`): the analysis
    of its key without the layer's notes (`bare`, computed once per analysed fields and names), its notes
    then the analysis's; None where one of those repeats one of the layer's."""
    analysed = _KEYED(layer)[:-1]
    found = bare.get((analysed, names))
    if found is None:
        row = analyze_layer(replaced(layer, notes=()), settings, context)
        found = bare[analysed, names] = (row.__dict__, row.notes)
    fields, tail = found
    if not layer.notes:
        return fields
    if any(note in layer.notes for note in tail):
        return None
    joined = object.__new__(Row).__dict__  # a Row's own: the rows' dicts filled from it share their keys
    joined.update(fields)
    joined["notes"] = layer.notes + tail
    return joined


def analyze(
    model: Model,
    settings: Settings = Settings(),
    command: str = "inspect",
    observed: dict[str, Observed] | None = None,
) -> Report:
    """Build the report for a loaded model; `observed` maps parameter keys to read statistics."""
    fan_convention = settings.fans or model.fans or "torch"
    pool_fan_out = settings.pool_fan_out if settings.pool_fan_out is not None else bool(model.pool_fan_out)
    context = _context(model, settings, fan_convention, pool_fan_out)
    observed = observed or {}
    recipe_from = None
    if context.recipe is not None:
        recipe_from = "--recipe" if settings.recipe else model.built_by.where if model.built_by else None
    if isinstance(model.layers, LayerTable) and not observed:
        table = model.layers
        if settings.filters:  # the layers kept, as a table: each template's first kept layer its template
            kept = list(itertools.compress(range(len(table)), _kept(table.names, table.params, settings.filters)))
            if table and not kept:
                raise _nothing_kept(settings.filters, table.params[:3])
            table = table.refined(kept, list(map(Numbering().__getitem__, map(table.kin.__getitem__, kept))),
                                  lambda layer, group: layer)
        rows, counted = _table_report(table, settings, context)
        return Report(command, model.source, model.format, model.name, settings, fan_convention, pool_fan_out,
                      rows, model.notes, counted, recipe_from=recipe_from, kin=Kin(rows, rows.kin))
    layers = selected(model, settings.filters)
    if settings.filters and model.layers and not layers:
        raise _nothing_kept(settings.filters, [layer.param for layer in model.layers[:3]])
    codes = _numbered(layers)
    analysed, ids = _analyze_all(layers, settings, context, observed, codes)
    rows = tuple(analysed)
    from .summary import COUNTED, totals

    alike = None
    if None not in codes:  # the layers of one key count alike: each key once, with how many have it
        one = dict(zip(codes, layers))  # a layer of each key (the last: any counts as all of them do)
        alike = [(COUNTED(one[code]), times) for code, times in Counter(codes).items()]
    return Report(command, model.source, model.format, model.name, settings, fan_convention, pool_fan_out, rows,
                  model.notes, totals(layers, alike), recipe_from=recipe_from, kin=Kin(rows, ids))


def _nothing_kept(filters: tuple[str, ...], first: list[str]) -> SettingsError:
    """A name filter that keeps no layer: the filters, and the first keys there are."""
    return SettingsError(f"no layer matches {' or '.join(repr(f) for f in filters)} (the first layers: "
                         f"{', '.join(first)})")


def _table_report(table: LayerTable, settings: Settings, context: _Context) -> "tuple[RowTable, Totals]":
    """The rows of a LayerTable as a RowTable, each template's layer analysed once (`_analyze_all`), and their
    totals, each template's counted once × its layers. Where a template's row reads its layers' module names
    (torch_default's rules, a recipe's: `_names_read`), which differ in its copies, its layers are numbered by
    what they read of them (`_module_names`), each number analysed on its first layer."""
    from .summary import layers_totals

    templates = table.templates
    reads = [_names_read(layer, settings, context) == _MODULE for layer in templates]
    kin = table.kin
    if any(reads):  # rows of those templates differ where their names do: one number per template and names
        attention, fan_in_of, recipe = context.attention, context.weight_fan_in.get, context.recipe
        names: list[Any] = [None] * len(kin)
        for index in itertools.compress(range(len(kin)), map(reads.__getitem__, kin)):
            names[index] = _module_names(table.params[index], table.names[index], attention, fan_in_of, recipe)
        numbering = Numbering()
        kin = list(map(numbering.__getitem__, zip(kin, names)))
        first = first_positions(kin)
        templates = [table[first[number]] for number in range(len(numbering))]
    rows, _ = _analyze_all(templates, settings, context, {}, _numbered(templates))
    return RowTable(table, list(range(len(table))), kin, rows), layers_totals(table)


def _params(model: Model) -> Iterable[str]:
    """Each layer's parameter key (a LayerTable's from its column: no Layer made)."""
    return model.layers.params if isinstance(model.layers, LayerTable) else map(_PARAM_OF_LAYER, model.layers)


_PARAM_OF_LAYER = operator.attrgetter("param")


def _distinct_layers(model: Model) -> Iterable[Layer]:
    """A layer of each kind the model has where it knows them (a LayerTable's templates), else every layer:
    what is asked of every layer's fields but its names."""
    return model.layers.templates if isinstance(model.layers, LayerTable) else model.layers


def selected(model: Model, filters: tuple[str, ...]) -> list[Layer]:
    """The layers a name filter keeps, in model order."""
    layers = model.layers
    if not filters:
        return list(layers)
    if isinstance(layers, LayerTable):  # the names from its columns, and only the layers kept made
        kept = _kept(layers.names, layers.params, filters)
        return list(map(layers.__getitem__, itertools.compress(range(len(layers)), kept)))
    return list(itertools.compress(layers, _kept([layer.name for layer in layers], [layer.param for layer in layers],
                                                 filters)))


def selected_keys(model: Model, filters: tuple[str, ...]) -> list[tuple[str, Layer]]:
    """Every key the filters keep, each with its layer, in model order: a tied tensor's own key, then the
    keys tied to it (`Layer.aliases`). What pairs models key by key (diff, trajectories, check): a tie's
    second key is a key like any other, changed when a later model unties it, added or removed."""
    pairs = [(key, layer) for layer in model.layers for key in (layer.param, *layer.aliases)]
    names = [layer.name if key == layer.param else key.rpartition(".")[0] or key for key, layer in pairs]
    return list(itertools.compress(pairs, _kept(names, [key for key, _ in pairs], filters)))


def with_inferences(report: Report) -> Report:
    """The report with each row's inferred init, from its observed mean, std, kurtosis and structure."""
    from .analysis.inference import infer, recipe_candidate, settle_modes  # only with --infer

    found = {}
    for row in report.rows:
        observed = row.observed
        if observed is None:
            continue
        n = observed.count - observed.nonfinite
        expected = recipe_candidate(row.recipe, next(iter(row.inits.values()))) if row.recipe else None
        result = infer(row.layer, row.fans, observed.std, observed.kurtosis, n, observed.mean, observed.structure,
                       expected)
        if result is not None:
            found[row.layer.param] = result
    found = settle_modes(found)
    rows = tuple(replace(row, inferred=found.get(row.layer.param)) for row in report.rows)
    return replace(report, rows=rows)
