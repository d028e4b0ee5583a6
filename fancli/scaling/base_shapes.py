"""μP's static check from the weights alone: a base-shape file (mup's `.bsh`, written by
`mup.make_base_shapes`/`save_base_shapes`: YAML of parameter name -> its base shape, `null` for a finite
dim, a number — the base size — for an "infinite" one, a width) says which dims of each parameter grow
with width; the sweep's models give each parameter's init std at every width.

μP's init (Yang et al., Tensor Programs V, Table 3, and mup's set_base_shapes) keeps every std ∝
1/√fan_in except the readout's (fan_in infinite, fan_out finite): ∝ 1/fan_in, or zero. So across the sweep
a ≥2-D weight's log2 std should change by −½ (−1 for the readout) times the change of log2 fan_in, and a
vector (bias, norm gain) not at all. What the weights cannot show is a multiplier applied in the forward
(mup's MuReadout divides its output by width_mult and keeps a 1/√fan_in std): such a readout reads
"differs", and the coordinate check is what says whether it scales. numpy and PyYAML only; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import SourceError
from ..safe_io import read_text
from ..text import printable
from ..typed_yaml import MAX_DIMS, MAX_SIZE, parse_yaml
from .slopes import fit_slope

#: A .bsh lists each parameter once (~40 bytes a line): 16 MB is hundreds of thousands of parameters.
MAX_BSH_BYTES = 16 * 1024 * 1024
MAX_BSH_NODES = 2_000_000
#: Parameter roles by which of [out, in] are infinite; the exponent of fan_in their init std should follow.
EXPONENTS = {"hidden": -0.5, "input": -0.5, "output": -1.0, "vector": 0.0, "finite": -0.5}


@dataclass(frozen=True)
class BaseShapes:
    path: str
    shapes: dict[str, tuple[int | None, ...]]  # name -> base size per dim, None where the dim is finite


@dataclass(frozen=True)
class ParamScaling:
    """One parameter across the sweep's widths, against μP's init rule."""

    name: str
    base_shape: tuple[int | None, ...]
    shapes: tuple[tuple[int, ...], ...]  # at each width
    infinite: tuple[int, ...]  # the dims the base-shape file calls infinite
    role: str  # hidden (out and in infinite), input (out only), output (in only: the readout), vector (1-D), finite
    stds: tuple[float, ...]  # init std at each width
    slope: float | None  # exponent of width the std follows; None where a std is 0 or not finite
    expected: float  # the exponent μP's rule gives with these fans
    verdict: str  # matches, differs, zero (std 0 at every width), undefined


def read_base_shapes(path: str | Path) -> BaseShapes:
    """A mup .bsh file, parsed as plain YAML (never a pickle), its size bounded; SourceError names the file."""
    shown = printable(path)
    data = parse_yaml(read_text(Path(path), MAX_BSH_BYTES, "a base-shape file"), shown, MAX_BSH_NODES,
                      "a base-shape file")
    if not isinstance(data, dict) or not data:
        raise SourceError(f"{shown}: a base-shape file maps each parameter name to its base shape (mup's "
                          "save_base_shapes); this holds no such mapping")
    shapes: dict[str, tuple[int | None, ...]] = {}
    for name, dims in data.items():
        if not isinstance(name, str) or not isinstance(dims, list) or len(dims) > MAX_DIMS or not all(
                d is None or (type(d) is int and 1 <= d <= MAX_SIZE) for d in dims):
            raise SourceError(f"{shown}: {printable(name)}: expected a list of sizes or nulls (one per dim), got "
                              f"{printable(repr(dims))[:80]}")
        shapes[name] = tuple(dims)
    return BaseShapes(shown, shapes)


def static_check(base: BaseShapes, widths: Sequence[int], params: Sequence[dict[str, tuple[tuple[int, ...], float]]],
                 tolerance: float) -> tuple[ParamScaling, ...]:
    """Each parameter of the base-shape file across the widths (`params[i]`: name -> (shape, init std) at
    widths[i]); SourceError where the file's names or ranks are not the model's."""
    names = set(params[0])
    extra, missing = sorted(set(base.shapes) - names), sorted(names - set(base.shapes))
    if extra or missing:
        what = "; ".join(f"{label}: {_some(names_)}" for label, names_ in (("not in the model", extra),
                                                                          ("not in the file", missing)) if names_)
        raise SourceError(f"{base.path}: its parameters are not the model's ({printable(what)})")
    out = []
    for name, base_shape in base.shapes.items():
        shapes = tuple(p[name][0] for p in params)
        if any(len(s) != len(base_shape) for s in shapes):
            raise SourceError(f"{base.path}: {printable(name)}: {len(base_shape)} dims in the file, "
                              f"{len(shapes[0])} in the model")
        infinite = tuple(i for i, d in enumerate(base_shape) if d is not None)
        stds = tuple(p[name][1] for p in params)
        role = _role(len(base_shape), infinite)
        fan_ins = [math.prod(s[1:]) for s in shapes] if len(base_shape) >= 2 else [1] * len(shapes)
        fan_slope = fit_slope(widths, fan_ins) if len(set(fan_ins)) > 1 else None
        expected = EXPONENTS[role] * fan_slope if fan_slope else 0.0  # a fixed fan_in: a fixed std
        slope = fit_slope(widths, stds)
        if slope is None:
            result = "zero" if all(s == 0 for s in stds) else "undefined"
        else:
            result = "matches" if abs(slope - expected) <= tolerance else "differs"
        out.append(ParamScaling(name, base_shape, shapes, infinite, role, stds, slope, expected, result))
    return tuple(out)


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" …" if len(names) > 3 else "")


def _role(rank: int, infinite: tuple[int, ...]) -> str:
    if not infinite:
        return "finite"
    if rank < 2:
        return "vector"
    out_inf, in_inf = 0 in infinite, 1 in infinite
    if out_inf and in_inf:
        return "hidden"
    if out_inf:
        return "input"
    return "output" if in_inf else "finite"
