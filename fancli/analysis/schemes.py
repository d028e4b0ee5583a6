"""Every named init as one variance-scaling rule: var = gain² / n, n picked by the mode.

normal: std = √var · uniform: bound = √(3·var) · truncated normal at ±2σ: sample with
std √var / 0.8796… so the result has std √var (as TF/Keras/JAX do; torch's trunc_normal_ does not).
The arithmetic follows torch's own expressions, so the floats are torch's to the last bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..vocab import DISTRIBUTIONS, MODES

#: std of a unit normal truncated to [-2, 2]; dividing by it makes the truncated result's std exact.
TRUNCATED_NORMAL_STD = 0.87962566103423978


Nonlinearity = tuple[str, "float | None"]


@dataclass(frozen=True)
class Scheme:
    """A named init: its default mode, its distribution, and where its gain comes from."""

    name: str
    mode: str  # default mode
    distribution: str
    fixed_gain: Nonlinearity | None = None  # gain independent of the layer's nonlinearity (scale = gain²)
    default_nonlinearity: Nonlinearity = ("linear", None)  # torch's default when the source names none
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"scheme {self.name}: unknown mode {self.mode!r} or distribution {self.distribution!r}")


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("kaiming_normal", "fan_in", "normal", None, ("leaky_relu", 0), "He et al. 2015: std = gain/√fan"),
        Scheme("kaiming_uniform", "fan_in", "uniform", None, ("leaky_relu", 0), "He et al. 2015: bound = gain·√(3/fan)"),
        Scheme("xavier_normal", "fan_avg", "normal", None, ("linear", None), "Glorot & Bengio 2010: std = gain·√(2/(fan_in+fan_out))"),
        Scheme("xavier_uniform", "fan_avg", "uniform", None, ("linear", None), "Glorot & Bengio 2010: bound = gain·√(6/(fan_in+fan_out))"),
        Scheme("lecun_normal", "fan_in", "normal", ("linear", None), ("linear", None), "LeCun 1998: std = 1/√fan_in"),
        Scheme("lecun_uniform", "fan_in", "uniform", ("linear", None), ("linear", None), "LeCun 1998: bound = √(3/fan_in)"),
        Scheme(
            "truncated_normal", "fan_in", "truncated_normal", None, ("leaky_relu", 0),
            "Keras/JAX variance scaling, normal truncated at ±2σ with the std corrected",
        ),
        Scheme(
            "torch_default", "fan_in", "uniform", ("leaky_relu", math.sqrt(5)), ("leaky_relu", math.sqrt(5)),
            "what torch's layers do in reset_parameters(): Linear/Conv kaiming_uniform(a=√5), "
            "Embedding N(0,1), RNNs U(±1/√hidden), attention in_proj xavier_uniform",
        ),
    )
}

ALIASES = {
    "he_normal": "kaiming_normal",
    "he_uniform": "kaiming_uniform",
    "glorot_normal": "xavier_normal",
    "glorot_uniform": "xavier_uniform",
    "default": "torch_default",
    "pytorch_default": "torch_default",
}


def scheme(name: str) -> Scheme:
    """Look a scheme up by name or alias; ValueError lists the known ones."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; known: {', '.join(list(SCHEMES) + list(ALIASES))}")
    return SCHEMES[key]


def check_mode(mode: str) -> str:
    key = mode.strip().lower()
    if key not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return key


@dataclass(frozen=True)
class InitValues:
    """What an init gives one tensor. std is the std of the resulting weights."""

    std: float | None
    bound: float | None = None  # uniform only
    sampling_std: float | None = None  # truncated normal only: the σ passed to the sampler
    fan: float | None = None  # the n in var = scale / n
    note: str | None = None  # why a value is missing
    distribution: str | None = None  # the draw's where a rule picks it per tensor (a recipe's); else the scheme's
    cut: float | None = None  # a truncated normal's cut, in σ of the sampler (None: ±2, the schemes' own)
    constant: float | None = None  # the value a tensor is filled with, where it is a constant (std 0)
    constant_or: float | None = None  # the value a constructor flag fills it with instead (zero_init_residual)


def fan_for_mode(fan_in: float | None, fan_out: float | None, mode: str) -> float | None:
    """The fan the mode divides by; None only where that fan is unknown (a fused q/k/v projection's
    effective fan_out leaves its fan_in-mode std known)."""
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    if fan_in is None or fan_out is None:
        return None
    if mode == "fan_geo_avg":  # jax.nn.initializers.variance_scaling's `(fan_in * fan_out) ** 0.5`
        return (fan_in * fan_out) ** 0.5
    return (fan_in + fan_out) / 2


def variance_scaling(
    gain: float, fan_in: float | None, fan_out: float | None, mode: str, distribution: str
) -> InitValues:
    """The one rule behind every scheme: std = gain/√fan (fan_avg: gain·√(2/(fan_in+fan_out))).

    fan_in/fan_out None (a tensor below 2 dims) gives std None: the caller's fans say why.
    """
    fan = fan_for_mode(fan_in, fan_out, mode)
    if fan is None:
        return InitValues(None)  # the fans' own note says why
    if fan <= 0:
        return InitValues(None, fan=fan, note="fan is 0: the tensor has no elements (torch's init is a no-op)")
    try:
        if mode == "fan_avg":
            std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
        else:
            std = gain / math.sqrt(fan)
    except OverflowError:
        return InitValues(None, fan=fan, note="fan too large for floating point")
    if distribution == "uniform":
        return InitValues(std, bound=math.sqrt(3.0) * std, fan=fan)
    if distribution == "truncated_normal":
        return InitValues(std, sampling_std=std / TRUNCATED_NORMAL_STD, fan=fan)
    return InitValues(std, fan=fan)
