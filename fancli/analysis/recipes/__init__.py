"""Init recipes: what a model's own library draws for each of its tensors, one registry line per recipe.

torch.nn.init's schemes scale a draw by a fan; the libraries people build models with mostly do not:
transformers draws N(0, initializer_range²) whatever the fan, GPT-2 shrinks its residual projections by
√(2·n_layer), torchvision's ResNet draws kaiming_normal in fan_out mode. A recipe holds one library's rules
(each module says which function of which release it reproduces), so that the expectation is what the
library drew. A rule returns None for a tensor the library leaves alone: it keeps torch's own
`reset_parameters()` init, which `report` applies. Pure arithmetic: no torch, no I/O.

To add a recipe: its rule in the module of its family (`transformers`, `vision`, `training`, `frameworks`),
one `Recipe` line in RECIPES (and, for a model class that picks it by default, its line in its family's
`CLASSES` or `transformers.MODEL_TYPES`), and its library's own init as the oracle in
tests/test_init_recipes.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..schemes import InitValues
from . import frameworks, training, transformers, vision
from .draws import RecipeArgs, block_index

if TYPE_CHECKING:
    from ...layer import BuiltBy

__all__ = ["RECIPES", "Recipe", "RecipeArgs", "block_index", "for_source", "recipe"]


@dataclass(frozen=True)
class Recipe:
    """A library's init: its rule (None: torch's own init stands), and the function it reproduces."""

    name: str
    reproduces: str  # the library function, as its source names it
    rule: Callable[[RecipeArgs], "InitValues | None"]
    needs: tuple[str | tuple[str, ...], ...] = ()  # config facts it reads (a tuple: any one of them); `n_layer`
    #: may be counted from the keys
    mode: str = "fan_in"  # the fan its scaled draws read, where any: a row's mode
    by_depth: bool = False  # the rule reads a tensor's block index (a depth-scaled init)

    def values(self, args: RecipeArgs) -> InitValues | None:
        return self.rule(args)

    def missing(self, facts: dict[str, float]) -> list[str]:
        """The config facts the rule needs and `facts` lacks, each as the config names it."""
        return [" or ".join(need) if isinstance(need, tuple) else need for need in self.needs
                if not any(facts.get(name) for name in ((need,) if isinstance(need, str) else need))]

    def role_key(self, name: str, param: str) -> tuple[str, ...]:
        """What the rule reads of a layer (its `name` and `param`) beyond the fields `report` keys its cache on:
        the module's last three names (`attn.c_proj`; torchvision's `layer1.0.bn2`; an index as `#`, which no
        rule reads but as an index: 256 experts share one key), and its block index for a depth-scaled recipe."""
        parts = ["#" if part.isdigit() else part for part in name.rsplit(".", 3)[-3:]]
        if self.by_depth:
            parts.append(str(block_index(param)))
        return tuple(parts)


#: transformers' std: `initializer_range`, else `init_std`, else `initializer_factor` (`transformers.std_of`).
_HF_STD = (("initializer_range", "init_std", "initializer_factor"),)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("transformers", "transformers PreTrainedModel._init_weights", transformers.base, _HF_STD),
        Recipe("gpt2", "transformers GPT2PreTrainedModel._init_weights", transformers.gpt2, (*_HF_STD, "n_layer")),
        Recipe("t5", "transformers T5PreTrainedModel._init_weights", transformers.t5,
               ("d_model", "d_kv", "num_heads", "d_ff")),
        Recipe("vit", "transformers ViTPreTrainedModel._init_weights", transformers.vit, _HF_STD),
        Recipe("modernbert", "transformers ModernBertPreTrainedModel._init_weights", transformers.modernbert,
               (*_HF_STD, "n_layer", "hidden_size")),
        Recipe("gpt_oss", "transformers GptOssPreTrainedModel._init_weights", transformers.gpt_oss, _HF_STD),
        Recipe("gemma", "transformers GemmaPreTrainedModel._init_weights", transformers.gemma, _HF_STD),
        Recipe("torchvision_resnet", "torchvision.models.ResNet.__init__", vision.torchvision_resnet, mode="fan_out"),
        Recipe("torchvision_mobilenet", "torchvision.models MobileNetV2/V3 and VGG __init__",
               vision.torchvision_mobilenet, mode="fan_out"),
        Recipe("torchvision_efficientnet", "torchvision.models.EfficientNet.__init__",
               vision.torchvision_efficientnet, mode="fan_out"),
        Recipe("timm_vit", "timm VisionTransformer.init_weights (mode '')", vision.timm_vit),
        Recipe("torchtitan", "torchtitan Llama 3 Transformer.init_weights (depth_init)", training.torchtitan,
               by_depth=True),
        Recipe("olmo_core", "OLMo-core InitMethod.normal", training.olmo_core),
        Recipe("megatron", "Megatron-core init_method_normal / scaled_init_method_normal", training.megatron,
               ("n_layer",)),
        Recipe("gpt_neox", "GPT-NeoX small_init / wang_init", training.gpt_neox, ("hidden_size", "n_layer")),
        Recipe("keras", "Keras 3 Dense/Conv/Embedding defaults (glorot_uniform, zeros, uniform)", frameworks.keras,
               mode="fan_avg"),
        Recipe("flax", "Flax linen Dense/Conv/Embed defaults (lecun_normal, zeros, variance_scaling)",
               frameworks.flax),
        Recipe("mlx", "mlx.nn Linear/Conv/Embedding/RNN defaults (uniform √(1/fan_in), normal √(1/dims))",
               frameworks.mlx),
    )
}


#: A model class (its library, its name) -> the recipe its init follows: the families' tables together.
CLASSES = {**vision.CLASSES, **training.CLASSES}


def recipe(name: str) -> Recipe:
    """Look a recipe up by name, its case, `-` and `_` aside (`GPT-2` is gpt2); ValueError lists the known ones."""
    folded = {known.replace("_", ""): known for known in RECIPES}
    key = folded.get(name.strip().lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[key]


def for_source(built_by: "BuiltBy | None") -> Recipe | None:
    """The recipe the source names, else that of the library the source says built it (transformers where
    its config gives the facts the recipe needs; a torchvision or timm model class); None otherwise (the
    default scheme then)."""
    if built_by is None:
        return None
    if built_by.recipe:
        return recipe(built_by.recipe)
    if built_by.library != "transformers":
        name = CLASSES.get((built_by.library, built_by.model_type or ""))
        return RECIPES[name] if name else None
    name = transformers.MODEL_TYPES.get(built_by.model_type or "")
    if name is None:  # an init fancli does not hold: no recipe is assumed for it
        return None
    found = RECIPES[name]
    return None if found.missing(dict(built_by.facts)) else found
