"""Activations: one record per activation, holding what fancli knows of it; gains, `--nonlinearity`, spec
files, `fancli gain` and `propagate` read it here.

Adding an activation is one record below (and its tests): its name and other spellings, its numpy
function (for the numeric gain), its parameter's default (the keyword its torch module takes it as) and the
torch.nn module that computes it (for `propagate`). Whether torch's `calculate_gain` has it is torch's
table, mirrored in `gains.TORCH_NONLINEARITIES`. torch's other elementwise activations are named by dotted
name, from an allowlist (`TORCH_ACTIVATIONS`).

Gains for activations torch's table lacks: 1/√E[f(z)²] for z ~ N(0, 1). That criterion keeps the second
moment of a layer's output equal to its input's when the weights have variance gain²/fan_in (He et al.'s
derivation, which gives √2 for ReLU and 1 for the identity). The expectation is a composite
Gauss–Legendre quadrature of f(z)²·φ(z) over [−12, 12] in panels of 1/32: kinks at multiples of 1/32 (0,
±1, ±3, 6) fall on panel edges, so it is exact to ~1e-12 for ReLU6, hardtanh or hardswish, where
Gauss–Hermite quadrature is off by up to 3e-3.

Neither numpy nor torch is imported with this module: numpy when a function is first evaluated, torch
only for a dotted name or a torch module (`fancli --help` and a YAML spec never import torch).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from ..kinds import KINDS


class _Numpy:
    """numpy, imported on first use: the records' functions read `np.…` when they run, not when defined."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("numpy"), name)


if TYPE_CHECKING:
    import numpy as np
    from torch import nn
else:
    np = _Numpy()

Function = Callable[["np.ndarray", "float | None"], "np.ndarray"]


@dataclass(frozen=True)
class Activation:
    name: str
    function: Function  # numpy's f(x, param), as torch.nn.functional computes it: the numeric gain's
    module: str  # the torch.nn class that computes it (propagate runs it), or a dotted torch function
    param: str | None = None  # the parameter's keyword in `module` (negative_slope, alpha, beta)
    default: float | None = None  # the parameter's value when none is given: torch's default
    aliases: tuple[str, ...] = ()  # other spellings of the same function
    fixed: dict[str, Any] = field(default_factory=dict)  # keywords of `module` that make it this function
    nonzero: bool = False  # torch divides by the parameter: 0 is refused (CELU) or infinite everywhere (Softplus)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def _softplus(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    return np.logaddexp(0.0, beta * x) / beta


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
#: torch's calculate_gain calls a conv's map, linear, by the conv's name (conv1d … conv_transpose3d).
_CONV_NAMES = tuple(kind.name for kind in KINDS.values() if kind.is_conv)

ACTIVATIONS: dict[str, Activation] = {
    record.name: record
    for record in (
        Activation("linear", lambda x, _: x, "Identity", aliases=("identity", "none", *_CONV_NAMES)),
        Activation("relu", lambda x, _: np.maximum(x, 0.0), "ReLU"),
        Activation("leaky_relu", lambda x, a: np.where(x > 0, x, a * x), "LeakyReLU", "negative_slope", 0.01),
        Activation("tanh", lambda x, _: np.tanh(x), "Tanh"),
        Activation("sigmoid", lambda x, _: 1.0 / (1.0 + np.exp(-x)), "Sigmoid"),
        Activation("selu", lambda x, _: _SELU_SCALE * _elu(x, _SELU_ALPHA), "SELU"),
        Activation("elu", lambda x, a: _elu(x, a), "ELU", "alpha", 1.0),
        Activation("celu", lambda x, a: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0) / a)), "CELU", "alpha",
                   1.0, nonzero=True),
        Activation("gelu", lambda x, _: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), "GELU"),
        Activation("gelu_tanh", lambda x, _: 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
                   "GELU", aliases=("gelu_new",), fixed={"approximate": "tanh"}),
        Activation("silu", lambda x, _: x / (1.0 + np.exp(-x)), "SiLU", aliases=("swish",)),
        Activation("mish", lambda x, _: x * np.tanh(_softplus(x)), "Mish"),
        Activation("softplus", lambda x, b: _softplus(x, b), "Softplus", "beta", 1.0, nonzero=True),
        Activation("hardswish", lambda x, _: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, "Hardswish",
                   aliases=("hard_swish",)),
        Activation("hardsigmoid", lambda x, _: np.clip(x / 6.0 + 0.5, 0.0, 1.0), "Hardsigmoid"),
        Activation("relu6", lambda x, _: np.clip(x, 0.0, 6.0), "ReLU6"),
        Activation("hardtanh", lambda x, _: np.clip(x, -1.0, 1.0), "Hardtanh"),
        Activation("softsign", lambda x, _: x / (1.0 + np.abs(x)), "Softsign"),
    )
}
#: Other spellings -> the record's name.
ALIASES = {alias: record.name for record in ACTIVATIONS.values() for alias in record.aliases}

#: The elementwise activations a dotted name may call, by namespace: a spec or a command line names a
#: function, it never imports a module (`torchx_gelu.gelu` would import a file beside the spec), and no
#: other torch callable (`torch.zeros`, `torch.load`) is evaluated. Each takes (x) or (x, one parameter).
TORCH_ACTIVATIONS = {
    "torch.nn.functional": ("relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "leaky_relu", "rrelu",
                            "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "softsign",
                            "tanhshrink", "softshrink", "hardshrink", "logsigmoid"),
    "torch": ("relu", "selu", "celu", "rrelu", "sigmoid", "tanh", "hardshrink"),
}


def spelling(name: str) -> str:
    """A user's spelling, normalised: lower case, `-` as `_` (`Hard-Swish` → `hard_swish`)."""
    return name.strip().lower().replace("-", "_")


def activation(name: str) -> Activation:
    """The record of an activation by any of its spellings, or of an allowlisted dotted torch function
    (`torch.nn.functional.rrelu`); ValueError naming the known ones otherwise. Imports neither numpy nor
    torch (a dotted name's function imports torch when it runs)."""
    key = spelling(name)
    key = ALIASES.get(key, key)
    if key in ACTIVATIONS:
        return ACTIVATIONS[key]
    if "." in name:
        dotted = _allowed(name)
        return Activation(dotted, _via_torch(dotted), dotted, "second argument")
    known = ", ".join(sorted(ACTIVATIONS) + sorted(ALIASES))
    raise ValueError(f"unknown activation {name!r}; known: {known}, or a torch function such as "
                     "torch.nn.functional.rrelu")


def _allowed(dotted: str) -> str:
    """An allowlisted torch activation's name: checked before torch is imported, and nothing else is."""
    namespace, _, attribute = dotted.strip().rpartition(".")
    if namespace not in TORCH_ACTIVATIONS:
        raise ValueError(f"{dotted[:80]!r}: only torch functions can be named (torch.nn.functional.<f>, torch.<f>); "
                         "nothing else is imported")
    if attribute not in TORCH_ACTIVATIONS[namespace]:
        raise ValueError(f"{dotted[:80]!r}: no such torch function among the activations a name may call: "
                         "torch.nn.functional.<f> or torch.<f> for an elementwise activation f (e.g. "
                         "torch.nn.functional.rrelu)")
    return f"{namespace}.{attribute}"


def _torch_function(dotted: str) -> Callable[..., Any]:
    """The torch callable of an allowlisted dotted name (imports torch)."""
    import torch
    import torch.nn.functional

    namespace, _, attribute = _allowed(dotted).rpartition(".")
    return getattr(torch.nn.functional if namespace == "torch.nn.functional" else torch, attribute)


def _via_torch(dotted: str) -> Function:
    """numpy in, numpy out, through a torch function (imported on the first call)."""

    def evaluate(x: np.ndarray, param: float | None) -> np.ndarray:
        import torch

        function = _torch_function(dotted)
        tensor = torch.from_numpy(x)
        try:
            with torch.no_grad():
                out = function(tensor) if param is None else function(tensor, param)
        except (TypeError, ValueError, RuntimeError) as error:  # e.g. a parameter it does not take
            raise ValueError(f"{dotted}: {' '.join(str(error).split())[:120]}") from None
        return out.double().numpy()

    return evaluate


def torch_module(name: str, param: float | None = None) -> nn.Module:
    """The torch.nn module that computes the activation with the parameter given (its default where None):
    what `propagate` runs after a layer. Imports torch."""
    from torch import nn

    record = activation(name)
    if "." in record.module:
        return _call_module()(_torch_function(record.module), param)
    keywords = dict(record.fixed)
    if record.param is not None:
        keywords[record.param] = _checked_param(record, param)
    return getattr(nn, record.module)(**keywords)


def _checked_param(record: Activation, param: float | None) -> float | None:
    """The parameter to compute with (the default where None); ValueError for one torch's module divides by."""
    value = record.default if param is None else param
    if record.nonzero and value == 0:
        raise ValueError(f"{record.name}'s {record.param} must not be 0: torch.nn.{record.module} divides by it")
    return None if value is None else float(value)


@lru_cache(maxsize=1)
def _call_module() -> type:
    """A module calling a torch function as f(x) or f(x, param): a dotted name's, in `propagate`."""
    from torch import nn

    class Call(nn.Module):
        def __init__(self, function: Callable[..., Any], param: float | None) -> None:
            super().__init__()
            self.function, self.param = function, param

        def forward(self, x: Any) -> Any:
            return self.function(x) if self.param is None else self.function(x, self.param)

    return Call


@lru_cache(maxsize=1)
def _nodes() -> tuple[np.ndarray, np.ndarray]:
    """Quadrature points on [−12, 12] and their weights times φ(z)."""
    panel, limit, order = 1 / 32, 12.0, 16  # φ(12) ≈ 1e-32: nothing beyond matters
    unit_x, unit_w = np.polynomial.legendre.leggauss(order)
    edges = np.arange(-limit, limit, panel)
    x = (edges[:, None] + (unit_x[None, :] + 1.0) * panel / 2).ravel()
    w = np.tile(unit_w * panel / 2, edges.size) * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    return x, w


def second_moment(f: Callable[[np.ndarray], np.ndarray]) -> float:
    """E[f(z)²] for z ~ N(0, 1); inf or nan where f overflows (numpy's warnings kept off stderr: the
    caller's one line says what is wrong)."""
    x, w = _nodes()
    with np.errstate(all="ignore"):
        values = np.asarray(f(x), dtype=np.float64)
        return float(np.dot(w, values * values))


def numeric_gain(name: str, param: float | None = None) -> float:
    """1/√E[f(z)²], z ~ N(0, 1), for an activation by name (with its parameter, or its default)."""
    record = activation(name)
    value = _checked_param(record, param)
    moment = second_moment(lambda x: record.function(x, value))
    if not math.isfinite(moment) or moment <= 0:
        raise ValueError(f"{name}: E[f(z)²] = {moment}, so no gain can make the variance 1")
    return 1.0 / math.sqrt(moment)
