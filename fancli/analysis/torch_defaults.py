"""torch's own init: what each module's `reset_parameters()` draws, one rule per kind of module.

A kind's record (`fancli.kinds`) names its rule; each rule holds the arithmetic (torch's expressions,
so the floats are torch's to the last bit) and the sentence `explain` prints for it. torch's fans are
used, never the effective ones: this is what torch does, not what it should do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from ..kinds import REINITIALISING
from ..kinds import kind as layer_kind
from .schemes import InitValues, variance_scaling

if TYPE_CHECKING:
    from ..layer import Layer

#: calculate_gain("leaky_relu", √5), as torch has it: Linear's and Conv's kaiming_uniform_(a=√5).
TORCH_DEFAULT_GAIN = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))


def _g(value: float | None) -> str:
    return "—" if value is None else str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _uniform(bound_fan: float) -> InitValues:
    bound = 1.0 / math.sqrt(bound_fan)
    return InitValues(bound / math.sqrt(3.0), bound=bound, fan=bound_fan, distribution="uniform")


@dataclass(frozen=True)
class _Args:
    layer: "Layer"
    fan_in: float | None
    fan_out: float | None
    mode: str
    weight_fan_in: float | None  # the fan_in torch reads from the sibling weight to draw a bias

    @property
    def leaf(self) -> str:
        return self.layer.param.rpartition(".")[2]

    @property
    def is_bias(self) -> bool:
        return len(self.layer.shape) == 1 and self.leaf == "bias"


def _bias(args: _Args) -> InitValues:
    if not args.weight_fan_in:
        return InitValues(None, note="a bias: torch draws U(±1/√fan_in) from its weight, which is not known here")
    return _uniform(args.weight_fan_in)


def _kaiming_a_sqrt5(args: _Args) -> InitValues:
    if args.is_bias:
        return _bias(args)
    values = variance_scaling(TORCH_DEFAULT_GAIN, args.fan_in, args.fan_out, "fan_in", "uniform")  # whatever the mode
    if values.std is None:
        return values
    return InitValues(values.std, values.bound, values.sampling_std, values.fan,
                      note="torch's default for Linear and Conv: kaiming_uniform(a=√5), bound 1/√fan_in, "
                           "whatever follows", distribution="uniform")


def _bilinear(args: _Args) -> InitValues:
    shape = args.layer.shape
    if args.is_bias:
        return _bias(args)
    if len(shape) != 3:
        return _kaiming_a_sqrt5(args)
    if shape[1] <= 0:
        return InitValues(None, note="fan is 0: the tensor has no elements (torch's init is a no-op)")
    return _uniform(shape[1])


def _rnn_hidden(args: _Args) -> InitValues:
    layer = args.layer
    if args.leaf.startswith("weight_hr"):  # LSTM projection [proj_size, hidden]
        hidden = layer.shape[1]
    else:
        hidden = layer.shape[0] / (layer.stacked or layer_kind(layer.kind).gates or 1)
    if hidden <= 0:
        return InitValues(None, note="no hidden units")
    return _uniform(hidden)  # every RNN parameter: U(±1/√hidden)


def _attention(args: _Args) -> InitValues:
    if args.leaf == "in_proj_bias":
        return InitValues(0.0, note="attention biases: initialised to 0 (constant)", distribution="constant",
                          constant=0.0)
    distribution = "normal" if args.leaf in ("bias_k", "bias_v") else "uniform"  # xavier_normal_ / xavier_uniform_
    return replace(variance_scaling(1.0, args.fan_in, args.fan_out, "fan_avg", distribution),
                   distribution=distribution)


def _explain_default(args: _Args, values: InitValues) -> str:
    if args.is_bias:
        return f"a bias: U(±1/√fan_in of its weight) = U(±1/√{_g(values.fan)}), std = {values.std:.4g}"
    return (f"kaiming_uniform(a=√5): gain = √(2/(1+5)) = √(1/3); bound = gain·√(3/{_g(values.fan)}) "
            f"= 1/√{_g(values.fan)} = {values.bound:.4g}")


def _explain_bilinear(args: _Args, values: InitValues) -> str:
    if args.is_bias or len(args.layer.shape) != 3:
        return _explain_default(args, values)
    return f"U(±1/√in1_features) = U(±1/√{_g(values.fan)}), std = bound/√3 = {values.std:.4g}"


@dataclass(frozen=True)
class Rule:
    values: Callable[[_Args], InitValues]
    explain: Callable[[_Args, InitValues], str]


def _xavier_uniform(args: _Args) -> InitValues:
    """nn.Transformer._reset_parameters: xavier_uniform_ on every parameter of 2 or more dims."""
    if len(args.layer.shape) < 2:
        return RULES[layer_kind(args.layer.kind).torch_default].values(args)
    values = variance_scaling(1.0, args.fan_in, args.fan_out, "fan_avg", "uniform")
    return InitValues(values.std, values.bound, values.sampling_std, values.fan,
                      note=f"{args.layer.reinit_by} re-initialises it after its own module: xavier_uniform_, gain 1",
                      distribution="uniform")


RULES: dict[str, Rule] = {
    "kaiming_a_sqrt5": Rule(_kaiming_a_sqrt5, _explain_default),
    "bilinear": Rule(_bilinear, _explain_bilinear),
    "normal_1": Rule(lambda args: InitValues(1.0, distribution="normal"), lambda args, values: "nn.Embedding: N(0, 1)"),
    "constant": Rule(
        lambda args: InitValues(None, note="norm layers: weight initialised to 1, bias to 0 (constant)"),
        lambda args, values: "norm layers: weight 1, bias 0 (constant)"),
    "rnn_hidden": Rule(_rnn_hidden, lambda args, values: (
        f"every RNN parameter: U(±1/√hidden_size) = U(±1/√{_g(values.fan)}), std = bound/√3 = {values.std:.4g}")),
    "attention": Rule(_attention, lambda args, values: (
        f"attention projections: xavier with gain 1, std = √(2 / (fan_in + fan_out)) = {values.std:.4g}")),
    "xavier_uniform": Rule(_xavier_uniform, lambda args, values: _explain_xavier(args, values)),
    "empty": Rule(lambda args: InitValues(None, note=_EMPTY), lambda args, values: _EMPTY),
    "none": Rule(lambda args: InitValues(None, note=_NO_INIT.get(args.layer.kind, _NO_INIT["buffer"])),
                 lambda args, values: values.note or _NO_INIT["buffer"]),
}


_EMPTY = ("stacked experts are a bare nn.Parameter(torch.empty(...)): torch draws nothing; the model's library "
          "does (its recipe)")
_NO_INIT = {
    "quant_scale": "a quantization scale: computed from the trained weight, never drawn by an init",
    "quant_aux": "quantization metadata (zero points, group indices, codebooks): no init draws it",
    "quant_packed": "a quantized weight's packed codes: quantized from the trained weight, never drawn by an init",
    "buffer": "a buffer, not a parameter: computed (frequencies, positions, masks) or updated, never drawn by an init",
    "ssm_param": "set by its module's formula (Mamba: A_log = log(1…d_state), D = 1), never drawn by an init",
}


def _explain_xavier(args: _Args, values: InitValues) -> str:
    if len(args.layer.shape) < 2:
        return RULES[layer_kind(args.layer.kind).torch_default].explain(args, values)
    return (f"{args.layer.reinit_by} re-initialises its ≥2-D parameters: xavier_uniform_, gain 1, "
            f"std = √(2 / (fan_in + fan_out)) = {values.std:.4g}")


def _rule(layer: "Layer") -> Rule:
    if layer.reinit_by in REINITIALISING:
        return RULES[REINITIALISING[layer.reinit_by]]
    return RULES[layer_kind(layer.kind).torch_default]


def torch_default(layer: "Layer", fan_in: float | None, fan_out: float | None, mode: str,
                  weight_fan_in: float | None = None) -> InitValues:
    """What torch's own `reset_parameters()` gives this tensor (torch's fans, never effective), whatever
    `mode` asks: torch's modules draw from fan_in (Linear, Conv), fan_avg (attention) or the hidden size.

    `weight_fan_in` is the fan_in torch reads from the sibling weight when it initialises a bias
    (for Bilinear, its in1_features); None when unknown.
    """
    return _rule(layer).values(_Args(layer, fan_in, fan_out, mode, weight_fan_in))


def explain_torch_default(layer: "Layer", values: InitValues) -> str:
    """The sentence that says what reset_parameters() does for this tensor, with its numbers."""
    return _rule(layer).explain(_Args(layer, None, None, "fan_in", None), values)
