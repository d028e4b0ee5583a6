"""The draws recipes are written in, and what a rule may read of a tensor.

A draw's std is the std of the values it leaves in the tensor: a normal cut at ±kσ and not rescaled
(torch's `trunc_normal_(std=s, a=-k·s, b=k·s)`, Keras' `TruncatedNormal`) leaves s times the std of a unit
normal cut at ±k, which is what `--stats` observes; the σ given to the sampler is kept as `sampling_std`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..schemes import InitValues

if TYPE_CHECKING:
    from ...layer import Layer



def cut_std(k: float) -> float:
    """The std of a unit normal cut at ±k: √(1 − 2kφ(k)/(2Φ(k) − 1)). At k = 2 this is, to the last bit, the
    0.87962566103423978 that JAX, Keras and timm divide by."""
    density = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * k * density / math.erf(k / math.sqrt(2)))

_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass(frozen=True)
class RecipeArgs:
    """What a rule may read: the tensor, its torch fans, and the numbers the model's config states."""

    layer: "Layer"
    fan_in: float | None
    fan_out: float | None
    facts: Mapping[str, float]

    @property
    def leaf(self) -> str:
        return self.layer.param.rpartition(".")[2]

    @property
    def module(self) -> str:
        """The last part of the module's name: `c_proj` of `h.3.attn.c_proj`."""
        return self.layer.name.rpartition(".")[2]

    @property
    def parent(self) -> str:
        """The part before it: `attn` of `h.3.attn.c_proj`."""
        return self.layer.name.rpartition(".")[0].rpartition(".")[2]

    @property
    def is_bias(self) -> bool:
        """A 1-D bias: `bias`, `in_proj_bias`, an RNN's `bias_ih_l0`."""
        return len(self.layer.shape) == 1 and (self.leaf.endswith("bias") or self.leaf.startswith("bias_"))

    @property
    def is_weight(self) -> bool:
        return len(self.layer.shape) >= 2 and self.leaf in ("weight", "qweight", "weight_packed")

    @property
    def block_index(self) -> int | None:
        """The first index in the name (`layers.3.attention.wo` → 3): the block a depth-scaled init reads."""
        return block_index(self.layer.param)


def block_index(param: str) -> int | None:
    """The first index of a parameter key (`layers.3.attention.wo.weight` → 3), None where it has none."""
    found = _INDEX.search(param)
    return int(found.group(1)) if found else None


def normal(std: float, why: str) -> InitValues:
    return InitValues(std, note=why, distribution="normal")


def uniform(bound: float, why: str) -> InitValues:
    return InitValues(bound / math.sqrt(3.0), bound=bound, note=why, distribution="uniform")


def cut_normal(sigma: float, k: float, why: str) -> InitValues:
    """N(0, σ²) cut at ±kσ, not rescaled: the values' std is σ·cut_std(k)."""
    return InitValues(sigma * cut_std(k), sampling_std=sigma, note=f"{why} (cut at ±{k:g}σ, not rescaled)",
                      distribution="truncated_normal", cut=k)


def constant(value: float, why: str) -> InitValues:
    """A tensor the library fills with one value: its std is 0 (a bias of zeros, a norm's weight of ones)."""
    return InitValues(0.0, note=f"{why}: the constant {value:g}", distribution="constant", constant=value)


def norm_or_bias(args: RecipeArgs, library: str, norm_weight: float = 1.0) -> InitValues | None:
    """What nearly every library does with a norm (weight 1, bias 0) and a layer's bias (0)."""
    if args.layer.kind == "norm":
        if args.leaf == "weight":
            return constant(norm_weight, f"{library}: a norm's weight")
        if args.leaf == "bias":
            return constant(0.0, f"{library}: a norm's bias")
        return None
    if args.is_bias:
        return constant(0.0, f"{library}: biases")
    return None
