"""Every named init as one variance-scaling rule: var = gain² / n, n picked by the mode.

normal: std = √var · uniform: bound = √(3·var) · truncated normal at ±2σ: sample with
std √var / 0.8796… so the result has std √var (as TF/Keras/JAX do; torch's trunc_normal_ does not).
The arithmetic follows torch's own expressions, so the floats are torch's to the last bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..layer import Layer

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")

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


def fan_for_mode(fan_in: float | None, fan_out: float | None, mode: str) -> float | None:
    if fan_in is None or fan_out is None:
        return None
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
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


def torch_default(
    layer: "Layer", fan_in: float | None, fan_out: float | None, mode: str, weight_fan_in: float | None = None
) -> InitValues:
    """What torch's own `reset_parameters()` gives this tensor (torch's fans, never effective).

    `weight_fan_in` is the fan_in torch reads from the sibling weight when it initialises a bias
    (for Bilinear, its in1_features); None when unknown.
    """
    kind, shape, leaf = layer.kind, layer.shape, layer.param.rpartition(".")[2]
    if kind == "embedding":
        return InitValues(1.0)  # nn.Embedding: N(0, 1)
    if kind == "norm":
        return InitValues(None, note="norm layers: weight initialised to 1, bias to 0 (constant)")
    if kind in ("rnn", "lstm", "gru"):
        if leaf.startswith("weight_hr"):  # LSTM projection [proj_size, hidden]
            hidden = shape[1]
        else:
            hidden = shape[0] / (layer.stacked or {"rnn": 1, "lstm": 4, "gru": 3}[kind])
        if hidden <= 0:
            return InitValues(None, note="no hidden units")
        bound = 1.0 / math.sqrt(hidden)  # every RNN parameter: U(±1/√hidden)
        return InitValues(bound / math.sqrt(3.0), bound=bound, fan=hidden)
    if kind == "multihead_attention":
        if leaf == "in_proj_bias":
            return InitValues(0.0, note="attention biases: initialised to 0 (constant)")
        distribution = "normal" if leaf in ("bias_k", "bias_v") else "uniform"  # xavier_normal_ / xavier_uniform_
        return variance_scaling(1.0, fan_in, fan_out, "fan_avg", distribution)
    if len(shape) == 1 and leaf == "bias":
        if not weight_fan_in:
            return InitValues(None, note="a bias: torch draws U(±1/√fan_in) from its weight, which is not known here")
        bound = 1.0 / math.sqrt(weight_fan_in)
        return InitValues(bound / math.sqrt(3.0), bound=bound, fan=weight_fan_in)
    if kind == "bilinear" and len(shape) == 3:
        if shape[1] <= 0:
            return InitValues(None, note="fan is 0: the tensor has no elements (torch's init is a no-op)")
        bound = 1.0 / math.sqrt(shape[1])
        return InitValues(bound / math.sqrt(3.0), bound=bound, fan=shape[1])
    values = variance_scaling(_TORCH_DEFAULT_GAIN, fan_in, fan_out, mode, "uniform")
    if values.std is None:
        return values
    return InitValues(values.std, values.bound, values.sampling_std, values.fan,
                      note="torch's default for Linear and Conv: kaiming_uniform(a=√5), bound 1/√fan_in, "
                           "whatever follows")


_TORCH_DEFAULT_GAIN = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # calculate_gain("leaky_relu", √5), as torch has it
