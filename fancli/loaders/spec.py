"""YAML layer specs: describe a network's layers by type and size, without any weights.

Every problem is reported as `file:line: path.key: what is wrong`. The schema is documented in
docs/spec.md; `LAYER_TYPES` below is its source of truth for keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..analysis import gains, schemes
from ..analysis.fans import output_dim
from ..errors import SourceError
from ..kinds import KINDS, kind_for_ndim
from ..kinds import kind as layer_kind
from ..layer import BuiltBy, Layer, Model
from ..safe_io import read_text
from ..typed_yaml import At, Fields, parse_yaml, suggest, yaml_type
from ..vocab import AXES_ROLES, FAN_CONVENTIONS, LAYOUTS
from ..yaml_lines import LineDict, LineList

if TYPE_CHECKING:
    from . import LoadOptions

MAX_SPEC_BYTES = 16 * 1024 * 1024
MAX_SPEC_NODES = 750_000  # ~75,000 layers written one per line
#: Counts fancli acts on rather than multiplies are bounded before the loop they drive: a 2-line spec
#: saying `num_layers: 1000000000` would otherwise build 4 billion records. Stacked RNNs have 1–8 layers.
MAX_RNN_LAYERS = 1000

#: Keys every layer may carry besides its type's own.
COMMON_KEYS = ("name", "type", "nonlinearity", "activation", "param", "negative_slope", "scheme", "mode")
_CONV_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode", "pool")
_RNN_KEYS = ("input_size", "hidden_size", "num_layers", "bidirectional", "bias", "batch_first", "dropout")
NORM_TYPES = ("norm", "batch_norm", "batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d", "layer_norm",
              "layernorm", "group_norm", "groupnorm", "instance_norm", "rms_norm", "rmsnorm")

#: type -> keys it accepts beyond COMMON_KEYS.
LAYER_TYPES: dict[str, tuple[str, ...]] = {
    "linear": ("in_features", "out_features", "bias"),
    "bilinear": ("in1_features", "in2_features", "out_features", "bias"),
    **{f"conv{d}d": _CONV_KEYS for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": _CONV_KEYS + ("output_padding",) for d in (1, 2, 3)},
    "embedding": ("num_embeddings", "embedding_dim", "padding_idx"),
    "rnn": _RNN_KEYS,
    "lstm": _RNN_KEYS,
    "gru": _RNN_KEYS,
    "multihead_attention": ("embed_dim", "num_heads", "bias", "kdim", "vdim", "dropout", "batch_first"),
    **{t: ("num_features", "normalized_shape", "num_channels", "num_groups", "eps", "affine") for t in NORM_TYPES},
    "raw": ("shape", "layout", "kind", "groups", "stacked", "transposed", "stride", "dilation", "pool", "axes"),
}
DEFAULT_KEYS = ("scheme", "mode", "nonlinearity", "activation", "param", "negative_slope", "fans", "pool_fan_out",
                "layout", "recipe")
TOP_KEYS = ("name", "description", "defaults", "layers")


@dataclass(frozen=True)
class _Init:
    """The init choices a layer carries: model defaults merged with its own overrides."""

    scheme: str | None = None
    mode: str | None = None
    nonlinearity: str | None = None
    param: float | None = None

    def merged(self, fields: Fields) -> "_Init":
        nonlinearity = fields.choice("nonlinearity", gains.gain) or fields.choice("activation", gains.gain)
        param = fields.number("param", None)
        if param is None:
            param = fields.number("negative_slope", None)
        if not nonlinearity and param is None:
            param = self.param  # a layer's own nonlinearity does not inherit the default's param
        nonlinearity = nonlinearity or self.nonlinearity
        if nonlinearity:
            try:
                gains.gain(nonlinearity, param)
            except ValueError as error:
                raise fields.at.error(str(error)) from None
        scheme = fields.choice("scheme", schemes.scheme)
        mode = fields.choice("mode", schemes.check_mode)
        return _Init(
            scheme=scheme or self.scheme,
            mode=mode or (None if scheme else self.mode),  # a layer's own scheme brings its own default mode
            nonlinearity=nonlinearity,
            param=param,
        )


def _layer(name: str, suffix: str, kind: str, shape: tuple[int, ...], init: _Init, **structure: Any) -> Layer:
    return Layer(
        name=name,
        param=f"{name}.{suffix}",
        kind=kind,
        shape=shape,
        nonlinearity=init.nonlinearity,
        nonlinearity_param=init.param,
        scheme=init.scheme,
        mode=init.mode,
        **structure,
    )


def _conv(f: Fields, type_: str, name: str, init: _Init) -> list[Layer]:
    dims, transposed = layer_kind(type_).spatial_dims, layer_kind(type_).transposed
    in_ch, out_ch = f.int("in_channels"), f.int("out_channels")
    kernel = f.ints("kernel_size", dims)
    stride = f.ints("stride", dims, (1,) * dims)
    dilation = f.ints("dilation", dims, (1,) * dims)
    groups = f.int("groups", 1)
    for key, channels in (("in_channels", in_ch), ("out_channels", out_ch)):
        if channels % groups:
            raise f.error("groups", f"{groups} does not divide {key}={channels}")
    pool = f.ints("pool", dims, None)
    padding = f.ints("padding", dims, None, minimum=0)
    shape = (in_ch, out_ch // groups, *kernel) if transposed else (out_ch, in_ch // groups, *kernel)
    return [
        _layer(name, "weight", type_, shape, init, groups=groups, transposed=transposed,
               stride=stride, dilation=dilation, pool=pool, padding=padding)
    ]


def _rnn(f: Fields, type_: str, name: str, init: _Init) -> list[Layer]:
    input_size, hidden = f.int("input_size"), f.int("hidden_size")
    num_layers = f.int("num_layers", 1)
    if num_layers > MAX_RNN_LAYERS:
        raise f.error("num_layers", f"{num_layers} stacked layers; fancli lists at most {MAX_RNN_LAYERS:,}")
    directions = ("", "_reverse") if f.bool("bidirectional", False) else ("",)
    gates = layer_kind(type_).gates
    layers = []
    for index in range(num_layers):
        layer_in = input_size if index == 0 else hidden * len(directions)
        for suffix in directions:
            for which, width in (("ih", layer_in), ("hh", hidden)):
                layers.append(_layer(name, f"weight_{which}_l{index}{suffix}", type_, (gates * hidden, width), init,
                                     stacked=gates if gates > 1 else None))
    return layers


def _attention(f: Fields, type_: str, name: str, init: _Init) -> list[Layer]:
    embed, heads = f.int("embed_dim"), f.int("num_heads")
    if embed % heads:
        raise f.error("num_heads", f"{heads} does not divide embed_dim={embed}")
    kdim, vdim = f.int("kdim", embed), f.int("vdim", embed)
    inner = _Init(init.scheme, init.mode, "linear", None)  # q, k, v feed attention, which is linear in v
    if kdim == embed and vdim == embed:
        projections = [_layer(name, "in_proj_weight", type_, (3 * embed, embed), inner, stacked=3)]
    else:
        projections = [
            _layer(name, f"{p}_proj_weight", type_, (embed, width), inner)
            for p, width in (("q", embed), ("k", kdim), ("v", vdim))
        ]
    # out_proj is a plain Linear in torch (NonDynamicallyQuantizableLinear), initialised like one;
    # the layer's nonlinearity follows it, not the projections.
    out = _layer(f"{name}.out_proj", "weight", "linear", (embed, embed), init)
    return projections + [out]


def _norm(f: Fields, type_: str, name: str, init: _Init) -> list[Layer]:
    present = [k for k in ("num_features", "normalized_shape", "num_channels") if f.has(k)]
    if len(present) != 1:
        raise f.at.error("give exactly one of num_features, normalized_shape, num_channels")
    shape = f.ints(present[0], None)
    if not f.bool("affine", True):
        return []
    return [_layer(name, "weight", "norm", shape, init)]


def _raw(f: Fields, type_: str, name: str, init: _Init, default_layout: str) -> list[Layer]:
    shape = f.ints("shape", None, minimum=0)
    layout = f.one_of("layout", LAYOUTS, "layout", default_layout)
    kind = f.str("kind", kind_for_ndim(len(shape)))
    if kind not in KINDS:
        raise f.error("kind", f"unknown kind {kind!r}{suggest(kind, list(KINDS))}")
    kernel_dims = max(len(shape) - 2, 0)
    transposed = f.bool("transposed", layer_kind(kind).transposed)
    structure: dict[str, Any] = {
        "layout": layout,
        "groups": f.int("groups", 1 if transposed else None),  # a described transposed conv: ungrouped
        "stacked": f.int("stacked", None),
        "transposed": transposed,
        "stride": f.ints("stride", kernel_dims or None, None),
        "dilation": f.ints("dilation", kernel_dims or None, None),
        "pool": f.ints("pool", kernel_dims or None, None),
        "fan_axes": _axes(f, shape),
    }
    clashing = [key for key in ("groups", "stacked", "transposed") if f.has(key)]
    if structure["fan_axes"] and clashing:
        raise f.error("axes", f"the axes give the fans outright: no {', '.join(clashing)} beside them")
    out = output_dim(layout, len(shape))
    if structure["stacked"] and len(shape) >= 1 and shape[out] % structure["stacked"]:
        raise f.error("stacked", f"{structure['stacked']} does not divide shape[{out}]={shape[out]}, its output dim")
    return [_layer(name, "weight", kind, shape, init, **structure)]


def _axes(f: Fields, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
    """`axes: {in: [...], out: [...], batch: [...]}`: JAX `variance_scaling`'s in_axis, out_axis, batch_axis (an
    int or a list each; JAX's defaults -2, -1 and none), each axis of the shape in at most one of them."""
    if not f.has("axes"):
        return None
    value = f.raw("axes")
    if not isinstance(value, LineDict):
        raise f.error("axes", f"expected a mapping of in, out, batch, got {yaml_type(value)}")
    at = f.at
    axes = Fields(value, At(at.file, f"{at.path}.axes", at.key_line(f.mapping, "axes")), AXES_ROLES)
    if len(shape) < 2:
        raise f.error("axes", f"JAX's fans need at least 2 dims; shape has {len(shape)}")
    given = [axes.ints(role, None, default, minimum=-len(shape))
             for role, default in zip(AXES_ROLES, ((-2,), (-1,), ()))]
    seen: dict[int, str] = {}
    for role, roles_axes in zip(AXES_ROLES, given):
        for axis in roles_axes:
            if axis >= len(shape):
                raise axes.error(role, f"axis {axis} is beyond the {len(shape)} dims of shape {list(shape)}")
            if axis % len(shape) in seen:
                raise axes.error(role, f"axis {axis} is dim {axis % len(shape)}, already in "
                                       f"{seen[axis % len(shape)]}: each dim has one role")
            seen[axis % len(shape)] = role
    return tuple(given)


_BUILDERS: dict[str, Callable[..., list[Layer]]] = {
    "linear": lambda f, t, n, i: [_layer(n, "weight", "linear", (f.int("out_features"), f.int("in_features")), i)],
    "bilinear": lambda f, t, n, i: [
        _layer(n, "weight", "bilinear", (f.int("out_features"), f.int("in1_features"), f.int("in2_features")), i)
    ],
    "embedding": lambda f, t, n, i: [
        _layer(n, "weight", "embedding", (f.int("num_embeddings"), f.int("embedding_dim")), i)
    ],
    "multihead_attention": _attention,
    **{t: _conv for t in LAYER_TYPES if layer_kind(t).is_conv},
    **{t: _rnn for t in LAYER_TYPES if layer_kind(t).is_recurrent},
    **{t: _norm for t in NORM_TYPES},
}


def parse_spec(text: str, file: str) -> Model:
    """Parse spec text; every error names `file:line: path.key`."""
    document = parse_yaml(text, file, MAX_SPEC_NODES, "a YAML spec")
    if document is None:
        raise SourceError(f"{file}: empty spec: expected a mapping with a 'layers' list")
    if not isinstance(document, LineDict):
        raise SourceError(f"{file}:1: expected a mapping with a 'layers' list, got {yaml_type(document)}")
    top = Fields(document, At(file, "", 1), TOP_KEYS)
    defaults_value = top.raw("defaults", LineDict())
    if not isinstance(defaults_value, LineDict):
        raise top.error("defaults", f"expected a mapping, got {yaml_type(defaults_value)}")
    defaults = Fields(defaults_value, At(file, "defaults", top.at.key_line(document, "defaults")), DEFAULT_KEYS)
    init = _Init().merged(defaults)
    fans = defaults.one_of("fans", FAN_CONVENTIONS, "fan convention")
    pool_fan_out = defaults.bool("pool_fan_out", False)
    default_layout = defaults.one_of("layout", LAYOUTS, "layout", "torch")
    built_by = _recipe(defaults)

    layers_value = top.raw("layers")
    if not isinstance(layers_value, LineList) or not layers_value:
        raise top.error("layers", f"expected a non-empty list of layers, got {yaml_type(layers_value)}")

    layers: list[Layer] = []
    first_use: dict[str, str] = {}
    for index, item in enumerate(layers_value):
        at = At(file, f"layers[{index}]", layers_value.item_lines[index])
        if not isinstance(item, LineDict):
            raise at.error(f"expected a mapping with a 'type', got {yaml_type(item)}")
        type_ = item.get("type", "raw" if "shape" in item else None)
        if not isinstance(type_, str):
            raise at.error("missing key 'type'" if type_ is None else f"expected a layer type, got {yaml_type(type_)}")
        type_ = type_.strip().lower()
        if type_ not in LAYER_TYPES:
            raise at.error(f"unknown layer type {yaml_type(type_)}{suggest(type_, list(LAYER_TYPES))}", "type",
                           at.key_line(item, "type"))
        fields = Fields(item, at, COMMON_KEYS + LAYER_TYPES[type_])
        if built_by is not None:
            _no_scheme(fields, built_by.recipe)
        name = fields.str("name", f"layers.{index}")
        if name in first_use:
            raise fields.error("name", f"{name!r} is already used by {first_use[name]}")
        first_use[name] = at.path
        layer_init = init.merged(fields)
        if type_ == "raw":
            built = _raw(fields, type_, name, layer_init, default_layout)
        else:
            built = _BUILDERS[type_](fields, type_, name, layer_init)
        layers.extend(built)

    name = top.str("name", None)
    return Model(source=file, format="yaml-spec", layers=tuple(layers), name=name, fans=fans, pool_fan_out=pool_fan_out,
                 built_by=built_by)


def _recipe(defaults: Fields) -> BuiltBy | None:
    """`defaults: recipe: NAME`: the expectation of every layer. A spec states no config, so a recipe that
    reads one (transformers' initializer_range…) is refused here; `n_layer` is counted from the names."""
    if "recipe" not in defaults.mapping:  # most specs: the recipes are not imported for them
        return None
    from ..analysis import recipes

    found = recipes.recipe(defaults.choice("recipe", recipes.recipe))
    lacking = [need for need in found.missing({"n_layer": 1.0})]  # n_layer: counted from the names
    if lacking:
        raise defaults.error("recipe", f"recipe {found.name} reads {', '.join(lacking)} from a model's config, "
                                       "which a spec does not give")
    _no_scheme(defaults, found.name)
    line = defaults.at.key_line(defaults.mapping, "recipe")
    return BuiltBy("", facts=(), where=f"{defaults.at.file}:{line} defaults.recipe", recipe=found.name)


def _no_scheme(fields: Fields, recipe: str | None) -> None:
    """A recipe gives each tensor its library's init: a scheme or mode beside it would silently replace it."""
    for key in ("scheme", "mode"):
        if fields.has(key):
            raise fields.error(key, f"the spec's defaults name recipe {recipe}, which gives each tensor its "
                                    f"library's init: no {key} beside it")


def load_spec(path: Path, options: LoadOptions | None = None) -> Model:
    """Load a spec file; SourceError names the file and line of any problem."""
    return parse_spec(read_text(path, MAX_SPEC_BYTES, "a YAML spec"), str(path))
