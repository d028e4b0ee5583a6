"""The intermediate form every loader produces: a model as an ordered list of layers.

A `Layer` holds what its source knows, and `None` for what it does not: a state_dict knows names and
shapes, a module also knows groups and transposition. Analysis never guesses a missing fact.
"""

from __future__ import annotations

from dataclasses import field, replace
from typing import TYPE_CHECKING, Callable

from .columns import LazyTuple, first_positions
from .records import record, replaced
from .vocab import KERNEL_LAST

if TYPE_CHECKING:
    from .weights.tensors import TensorData

@record
class Layer:
    """One weight tensor and the structure around it that its shape alone cannot tell."""

    name: str  # qualified module name, e.g. "features.3"
    param: str  # parameter key, e.g. "features.3.weight"
    kind: str
    shape: tuple[int, ...]
    layout: str = "torch"
    groups: int | None = None
    transposed: bool | None = None
    stacked: int | None = None  # blocks stacked along the output dim (torch's 0): 3 for q/k/v and GRU gates, 4 LSTM
    #: JAX `variance_scaling`'s (in_axis, out_axis, batch_axis) where the source says what its init reads (a spec's
    #: `axes`; Flax's Einsum hands it the stored kernel): the fans are JAX's `_compute_fans` with those axes.
    fan_axes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    unknown_fans: tuple[str, ...] = ()  # effective fans the source cannot show (a fused projection's split)
    reinit_by: str | None = None  # a module above that re-initialises it after torch's own init (nn.Transformer)
    stride: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    padding: tuple[int, ...] | None = None  # does not change fans; propagate needs it to run a conv stack
    pool: tuple[int, ...] | None = None  # pooling window that follows the layer
    nonlinearity: str | None = None  # the activation that follows; None when the source does not say
    nonlinearity_param: float | None = None  # e.g. leaky_relu's negative slope
    scheme: str | None = None  # init the source asks for (spec defaults or per-layer override)
    mode: str | None = None
    dtype: str | None = None  # torch's name without "torch.": float32, bfloat16, …
    library_std: float | None = None  # the std the library that wrote it draws with (config.json initializer_range)
    stored_shape: tuple[int, ...] | None = None  # as stored, where `shape` is the logical one (a packed weight)
    copy_of: str | None = None  # the key whose tensor this is, stored twice (a tie dcp.save wrote under each key)
    aliases: tuple[str, ...] = ()  # other parameter keys that share this tensor (tied weights)
    hf_name: str | None = None  # a converted file's tensor under its HF name, where the converter's map gives one
    notes: tuple[str, ...] = ()  # what the loader knows and wants said (e.g. what a state_dict cannot tell)
    data: "TensorData | None" = field(default=None, compare=False, repr=False)  # read only for --stats

    @property
    def kernel(self) -> tuple[int, ...]:
        """Kernel dims of a conv weight (empty for 2-D weights), read according to the layout."""
        if len(self.shape) <= 2:
            return ()
        if self.layout == "channels_last":
            return self.shape[1:-1]
        return self.shape[:-2] if self.layout in KERNEL_LAST else self.shape[2:]


class LayerTable(LazyTuple[Layer]):
    """A model's layers as columns (`fancli.columns`): each layer's key (`params`), name and template (`kin`, a
    number into `templates`, each template's first layer), and where the loader has them the keys' digit
    templates (`digits`, which folding reads); the others of a template are copies that differ in
    their names and data alone. A loader of many alike tensors returns it (`flat_keys.layers_from_columns`);
    analysis reads the templates, every other reader the Layers, made when read (`make`)."""

    __slots__ = ("params", "names", "kin", "templates", "digits")

    def __init__(self, params: list[str], names: list[str], kin: list[int], templates: list[Layer],
                 make: Callable[[int], Layer], digits: list[str] | None = None) -> None:
        super().__init__(len(params), make)
        self.params, self.names, self.kin, self.templates = params, names, kin, templates
        self.digits = digits  # each key's digit template (`columns.digit_templates`), where the loader has them

    def with_templates(self, templates: list[Layer]) -> LayerTable:
        """The table with each template changed into `templates`' (by what a config states, which no name's
        index changes: never a name, key or data), each copy changed as its template was."""
        return self.refined(None, self.kin, lambda layer, number: templates[number])

    def refined(self, positions: list[int] | None, groups: list[int],
                change: Callable[[Layer, int], Layer]) -> LayerTable:
        """The layers at `positions` (every one where None), in `groups` (a number per layer, in order of first
        appearance; one group's layers share a template here), each group's template its first layer
        changed by `change(layer, group)` (never its names or data), each copy changed as its group's
        template was: a name filter's layers, or a config's rules where they match some of a template's
        layers. Where layers of two templates share a group, the copies are not those of their template:
        callers group by template first."""
        at: list[int] | range = range(len(self)) if positions is None else positions
        first = first_positions(groups)
        olds = [self[at[first[group]]] for group in range(len(first))]
        templates = [change(old, group) for group, old in enumerate(olds)]
        changes = [{name: value for name, value in new.__dict__.items() if value is not old.__dict__[name]}
                   for old, new in zip(olds, templates)]

        def make(index: int) -> Layer:
            group = groups[index]
            if first[group] == index:
                return templates[group]
            layer = self.fresh(at[index])
            return replaced(layer, **changes[group]) if changes[group] else layer

        if positions is None:
            return LayerTable(self.params, self.names, groups, templates, make, self.digits)
        return LayerTable(list(map(self.params.__getitem__, positions)), list(map(self.names.__getitem__, positions)),
                          groups, templates, make,
                          None if self.digits is None else list(map(self.digits.__getitem__, positions)))


@record
class BuiltBy:
    """The library a source says built the model, and the numbers of its config an init recipe reads
    (`analysis.recipes`): transformers' config.json gives `model_type` and `initializer_range`; a module's
    class names torchvision's or timm's model (`model_type` is then the class's name). A spec or a config
    may name the recipe itself (`recipe`), which then wins over what the library would pick."""

    library: str  # "transformers", "torchvision", "timm"; "" where only a recipe is named
    model_type: str | None = None
    facts: tuple[tuple[str, float], ...] = ()
    where: str = ""  # what said so: "config.json model_type=gpt2", "module class torchvision.models.resnet.ResNet"
    recipe: str | None = None  # a recipe named outright (a spec's `defaults: recipe:`, a config's `recipe:`)


@record
class Model:
    """What a loader returns: the layers in model order, plus model-wide defaults from the source."""

    source: str
    format: str
    layers: tuple[Layer, ...] | LayerTable  # a LayerTable (`api.loaded`) reads as a tuple of Layers
    name: str | None = None
    fans: str | None = None  # fan convention the source asks for ("torch" or "effective")
    pool_fan_out: bool | None = None  # opt-in LeNet tutorial convention
    notes: tuple[str, ...] = ()  # model-wide facts, e.g. "state_dict found under 'model'; optimizer ignored"
    built_by: BuiltBy | None = None  # the library that built it, where the source says (its config)

    def with_layers_made(self) -> Model:
        """The model with its layers a tuple (a LayerTable's made whole): what the library's `load` returns."""
        return replace(self, layers=self.layers.whole()) if isinstance(self.layers, LayerTable) else self
