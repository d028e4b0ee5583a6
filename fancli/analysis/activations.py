"""Gains for activations torch's table lacks: 1/√E[f(z)²] for z ~ N(0, 1).

That criterion keeps the second moment of a layer's output equal to its input's when the weights have
variance gain²/fan_in (He et al.'s derivation, which gives √2 for ReLU and 1 for the identity). The
expectation is a composite Gauss–Legendre quadrature of f(z)²·φ(z) over [−12, 12] in panels of 1/32:
kinks at multiples of 1/32 (0, ±1, ±3, 6) fall on panel edges, so it is exact to ~1e-12 for ReLU6,
hardtanh or hardswish, where Gauss–Hermite quadrature is off by up to 3e-3.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np

_PANEL = 1 / 32
_LIMIT = 12.0  # φ(12) ≈ 1e-32: nothing beyond matters
_ORDER = 16

Activation = Callable[[np.ndarray, float | None], np.ndarray]


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def _softplus(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    return np.logaddexp(0.0, beta * x) / beta


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

#: name -> (f(x, param), default param, what the param is). numpy versions of torch.nn.functional's.
ACTIVATIONS: dict[str, tuple[Activation, float | None, str | None]] = {
    "linear": (lambda x, _: x, None, None),
    "relu": (lambda x, _: np.maximum(x, 0.0), None, None),
    "leaky_relu": (lambda x, a: np.where(x > 0, x, a * x), 0.01, "negative slope"),
    "tanh": (lambda x, _: np.tanh(x), None, None),
    "sigmoid": (lambda x, _: 1.0 / (1.0 + np.exp(-x)), None, None),
    "selu": (lambda x, _: _SELU_SCALE * _elu(x, _SELU_ALPHA), None, None),
    "elu": (lambda x, a: _elu(x, a), 1.0, "alpha"),
    "celu": (lambda x, a: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0) / a)), 1.0, "alpha"),
    "gelu": (lambda x, _: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), None, None),
    "gelu_tanh": (lambda x, _: 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), None, None),
    "silu": (lambda x, _: x / (1.0 + np.exp(-x)), None, None),
    "mish": (lambda x, _: x * np.tanh(_softplus(x)), None, None),
    "softplus": (lambda x, b: _softplus(x, b), 1.0, "beta"),
    "hardswish": (lambda x, _: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, None, None),
    "hardsigmoid": (lambda x, _: np.clip(x / 6.0 + 0.5, 0.0, 1.0), None, None),
    "relu6": (lambda x, _: np.clip(x, 0.0, 6.0), None, None),
    "hardtanh": (lambda x, _: np.clip(x, -1.0, 1.0), None, None),
    "softsign": (lambda x, _: x / (1.0 + np.abs(x)), None, None),
}
ALIASES = {"swish": "silu", "identity": "linear", "none": "linear", "gelu_new": "gelu_tanh", "hard_swish": "hardswish"}


@lru_cache(maxsize=1)
def _nodes() -> tuple[np.ndarray, np.ndarray]:
    """Quadrature points on [−12, 12] and their weights times φ(z)."""
    unit_x, unit_w = np.polynomial.legendre.leggauss(_ORDER)
    edges = np.arange(-_LIMIT, _LIMIT, _PANEL)
    x = (edges[:, None] + (unit_x[None, :] + 1.0) * _PANEL / 2).ravel()
    w = np.tile(unit_w * _PANEL / 2, edges.size) * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    return x, w


def second_moment(f: Callable[[np.ndarray], np.ndarray]) -> float:
    """E[f(z)²] for z ~ N(0, 1)."""
    x, w = _nodes()
    values = np.asarray(f(x), dtype=np.float64)
    return float(np.dot(w, values * values))


def resolve(name: str) -> tuple[str, Callable[[np.ndarray, float | None], np.ndarray], float | None, str | None]:
    """(canonical name, f, default param, param meaning) for a known activation or a dotted torch function
    (`torch.nn.functional.rrelu`); ValueError otherwise. Only a dotted name imports torch."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in ACTIVATIONS:
        return (key, *ACTIVATIONS[key])
    if "." in name:
        return name, _torch_function(name), None, "second argument"
    known = ", ".join(sorted(ACTIVATIONS) + sorted(ALIASES))
    raise ValueError(f"unknown activation {name!r}; known: {known}, or a torch function such as "
                     "torch.nn.functional.rrelu")


#: The elementwise activations a dotted name may call, by namespace: a spec or a command line names a
#: function, it never imports a module (`torchx_gelu.gelu` would import a file beside the spec), and no
#: other torch callable (`torch.zeros`, `torch.load`) is evaluated. Each takes (x) or (x, one parameter).
TORCH_ACTIVATIONS = {
    "torch.nn.functional": ("relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "leaky_relu", "rrelu",
                            "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "softsign",
                            "tanhshrink", "softshrink", "hardshrink", "logsigmoid"),
    "torch": ("relu", "selu", "celu", "rrelu", "sigmoid", "tanh", "hardshrink"),
}


def _torch_function(dotted: str) -> Activation:
    """An allowlisted torch activation: the name is checked before torch is imported, and nothing else is."""
    namespace, _, attribute = dotted.strip().rpartition(".")
    if namespace not in TORCH_ACTIVATIONS:
        raise ValueError(f"{dotted[:80]!r}: only torch functions can be named (torch.nn.functional.<f>, torch.<f>); "
                         "nothing else is imported")
    if attribute not in TORCH_ACTIVATIONS[namespace]:
        raise ValueError(f"{dotted[:80]!r}: no such torch function among the activations a name may call: "
                         "torch.nn.functional.<f> or torch.<f> for an elementwise activation f (e.g. "
                         "torch.nn.functional.rrelu)")
    import torch
    import torch.nn.functional

    function = getattr(torch.nn.functional if namespace == "torch.nn.functional" else torch, attribute)

    def evaluate(x: np.ndarray, param: float | None) -> np.ndarray:
        tensor = torch.from_numpy(x)
        try:
            with torch.no_grad():
                out = function(tensor) if param is None else function(tensor, param)
        except (TypeError, ValueError, RuntimeError) as error:  # e.g. a parameter it does not take
            raise ValueError(f"{dotted}: {' '.join(str(error).split())[:120]}") from None
        return out.double().numpy()

    return evaluate


def numeric_gain(name: str, param: float | None = None) -> float:
    """1/√E[f(z)²], z ~ N(0, 1), for an activation by name (with its parameter, or its default)."""
    _, f, default, _ = resolve(name)
    value = param if param is not None else default
    moment = second_moment(lambda x: f(x, value))
    if not math.isfinite(moment) or moment <= 0:
        raise ValueError(f"{name}: E[f(z)²] = {moment}, so no gain can make the variance 1")
    return 1.0 / math.sqrt(moment)
