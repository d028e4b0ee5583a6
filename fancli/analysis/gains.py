"""Gain of the nonlinearity that follows a layer: torch's `calculate_gain` table, exactly."""

from __future__ import annotations

import math

from . import activations

#: The names `torch.nn.init.calculate_gain` accepts, in its own order.
TORCH_NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)

_LINEAR_FNS = TORCH_NONLINEARITIES[:7]


def calculate_gain(nonlinearity: str, param: int | float | None = None) -> float:
    """Mirror of `torch.nn.init.calculate_gain`: same values, same ValueErrors."""
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, int) or isinstance(param, float):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def canonical(nonlinearity: str) -> str:
    """The name reports show for a user's spelling: torch's name where torch's table has the activation
    (`Identity`, `none` → linear; torch's docs name Identity but its function rejects it), else the
    spelling given, normalised (`swish` stays swish: a baseline that states it keeps matching)."""
    name = activations.spelling(nonlinearity)
    alias = activations.ALIASES.get(name)
    return alias if name not in TORCH_NONLINEARITIES and alias in TORCH_NONLINEARITIES else name


def torch_defines(nonlinearity: str) -> bool:
    """Whether torch's calculate_gain knows this name (after aliases)."""
    return canonical(nonlinearity) in TORCH_NONLINEARITIES


def gain(nonlinearity: str, param: int | float | None = None) -> float:
    """torch's gain where torch defines one; otherwise the numeric 1/√E[f(z)²] (see activations.py)
    for GELU, SiLU, Mish, ELU… or a dotted torch function. ValueError names the known ones."""
    if isinstance(param, float) and not math.isfinite(param):
        raise ValueError(f"the nonlinearity's parameter must be finite, got {param}")
    if not torch_defines(nonlinearity):
        return activations.numeric_gain(nonlinearity, param)
    try:
        return calculate_gain(canonical(nonlinearity), param)
    except OverflowError:
        raise ValueError(f"the nonlinearity's parameter {param} is too large") from None
    except ValueError:
        raise ValueError(f"leaky_relu's negative slope must be a number, got {param!r}") from None
