"""`fancli explain`: the derivation of one layer's init, with its numbers filled in.

The way the blog posts explain fan_in and Kaiming's std, but for the user's own layer, under the
scheme, mode and nonlinearity the report used — and, where the layer's structure makes torch's fans
misleading, why and by how much.
"""

from __future__ import annotations

import math

from ..analysis.fans import channels_first
from ..analysis.gains import torch_defines
from ..analysis.schemes import TRUNCATED_NORMAL_STD
from ..analysis.schemes import scheme as find_scheme
from ..analysis.torch_defaults import explain_torch_default
from ..kinds import kind, kind_for_ndim
from ..layer import Layer
from ..report import Report, Row
from ..text import printable
from ..vocab import KERNEL_LAST


def _g(value: float | int | None) -> str:
    if value is None:
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _dims(values: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in values)


def _layout(layer: Layer) -> str:
    if layer.kind == "experts":
        return kind("experts").layout
    n = len(layer.kernel)
    kernel = ", ".join(f"k{i + 1}" for i in range(n))
    if layer.layout == "jax" and (layer.transposed or kind(layer.kind).transposed):
        return f"[{kernel + ', ' if n else ''}in, out] (Flax ConvTranspose layout)"
    if layer.layout in KERNEL_LAST:
        return f"[{kernel + ', ' if n else ''}in, out] (Keras/JAX layout)"
    if layer.layout == "in_out":
        return "[in, out] (stored transposed, like HF Conv1D)"
    if layer.layout == "channels_last" and n:
        return f"[out, {kernel}, in] (MLX layout, channels last)"
    record = kind(layer.kind)
    if (layer.transposed and not record.transposed) or (n and not record.is_conv):
        record = kind(kind_for_ndim(len(layer.shape), transposed=bool(layer.transposed)))
    if (record.is_conv and not n) or (record.name == "multihead_attention" and not layer.stacked):
        record = kind("linear")
    return record.layout.format(kernel=kernel)


def _fan_lines(layer: Layer) -> list[str]:
    """How torch's function reads the two fans off the shape."""
    shape, kernel = layer.shape, layer.kernel
    rf = math.prod(kernel)
    rf_text = f" × receptive field {_dims(kernel)} = " if kernel else " = "
    if layer.layout in KERNEL_LAST:
        fan_in, fan_out = shape[-2] * rf, shape[-1] * rf
        return [f"fan_in  = in {shape[-2]}{rf_text}{fan_in}", f"fan_out = out {shape[-1]}{rf_text}{fan_out}"]
    if layer.layout == "channels_last" and kernel:
        first = channels_first(shape, bool(layer.transposed or kind(layer.kind).transposed))
        return [f"fan_in  = {first[1]}{rf_text}{first[1] * rf}   (torch's, on the weight laid out {list(first)})",
                f"fan_out = {first[0]}{rf_text}{first[0] * rf}   (torch's, on the weight laid out {list(first)})"]
    fan_in, fan_out = shape[1] * rf, shape[0] * rf
    return [f"fan_in  = shape[1] {shape[1]}{rf_text}{fan_in}   (torch: tensor.size(1) × receptive field)",
            f"fan_out = shape[0] {shape[0]}{rf_text}{fan_out}   (torch: tensor.size(0) × receptive field)"]


def _gain_line(row: Row) -> str:
    name, param = row.nonlinearity, row.nonlinearity_param
    if name is None:
        return "gain: the scheme needs none (no nonlinearity given)"
    if not torch_defines(name):
        return f"gain({name}) = 1/√E[f(z)²], z ~ N(0, 1) = {row.gain:.4g}   (torch's table has no {name})"
    formula = {"relu": "√2", "tanh": "5/3", "selu": "3/4"}.get(name)
    if name == "leaky_relu":
        slope = 0.01 if param is None else param
        formula = f"√(2 / (1 + {slope:g}²))"
    return f"gain({name}) = {formula} = {row.gain:.4g}" if formula else f"gain({name}) = {row.gain:g}"


def _recipe_lines(row: Row) -> list[str]:
    """What the row's library recipe draws, as its rule says it, with the numbers."""
    from ..analysis.recipes import RECIPES

    values = next(iter(row.inits.values()))
    head = f"recipe {row.recipe} ({RECIPES[row.recipe].reproduces}):"
    if values.std is None:
        return [f"{head} no std ({values.note or 'not known here'})"]
    lines = [f"{head} {values.note}" if values.note else head]
    if values.distribution == "constant":
        lines.append(f"  constant: every value {values.constant:g} (std 0)")
    elif values.bound is not None:
        lines.append(f"  uniform: drawn from U(−{values.bound:.4g}, {values.bound:.4g}), std = {values.std:.4g}")
    elif values.sampling_std is not None and values.cut is not None:
        lines.append(f"  normal cut at ±{values.cut:g}σ, not rescaled: σ = {values.sampling_std:.4g}, the values' std "
                     f"= σ·{values.std / values.sampling_std:.6f} = {values.std:.4g}")
    else:
        lines.append(f"  normal: drawn from N(0, {values.std:.4g}²)")
    return lines


def _std_lines(row: Row, fan_in, fan_out, label: str) -> list[str]:
    """std and bound for each mode, with the formula of the row's scheme (or what its recipe draws)."""
    if row.recipe:
        return _recipe_lines(row)
    scheme = find_scheme(row.scheme)
    lines = []
    for mode, values in row.inits.items():
        head = f"{row.scheme}, mode {mode}{label}:"
        if values.std is None:
            lines.append(f"{head} no std ({values.note or 'no fans'})")
            continue
        g = _g(row.scheme_gain)
        if row.scheme == "torch_default":
            lines.append(f"{head} {explain_torch_default(row.layer, values)}")
        elif mode == "fan_avg" and fan_in is not None:
            lines.append(f"{head} std = gain·√(2 / (fan_in + fan_out)) = {g}·√(2 / ({_g(fan_in)} + {_g(fan_out)})) "
                         f"= {values.std:.4g}")
        elif values.fan is not None:
            lines.append(f"{head} std = gain / √{mode} = {g} / √{_g(values.fan)} = {values.std:.4g}")
        else:
            lines.append(f"{head} std = {values.std:.4g} ({values.note or 'fixed by the layer type'})")
        if values.bound is not None:
            lines.append(f"  uniform: bound = √3·std = {values.bound:.4g}, drawn from U(−{values.bound:.4g}, "
                         f"{values.bound:.4g})")
        elif scheme.distribution == "truncated_normal" and values.sampling_std:
            lines.append(f"  truncated at ±2σ: sample with σ = std / {TRUNCATED_NORMAL_STD:.4f} = "
                         f"{values.sampling_std:.4g} so the result's std is {values.std:.4g}")
        else:
            lines.append(f"  normal: drawn from N(0, {values.std:.4g}²)")
    return lines


def explain_row(row: Row, fan_convention: str = "torch") -> list[str]:
    """The derivation for one row, as lines of text."""
    layer = row.layer
    lines = [f"{layer.param} · {layer.kind} · shape {_dims(layer.shape) or 'scalar'}"]
    if len(layer.shape) < 2:
        return lines + [f"{len(layer.shape)}-D: torch defines no fan_in/fan_out below 2 dims"] + \
            [f"note: {note}" for note in row.notes]
    lines.append(f"layout: {_layout(layer)}")
    if row.fans.fan_in is not None:  # a stack of biases has none
        lines += _fan_lines(layer)
    lines.append(_gain_line(row))
    fans = row.fans  # the fans the row's std used (pool_fan_out included), never recomputed
    used = "effective" if fan_convention == "effective" and fans.differs else "torch"
    fan_in, fan_out = fans.pick(effective=used == "effective")
    lines += _std_lines(row, fan_in, fan_out, " (effective fans)" if used == "effective" else "")
    if fans.differs:
        lines.append(f"effective fans: fan_in = {_g(fans.effective_fan_in)}, fan_out = {_g(fans.effective_fan_out)} "
                     f"(torch: {fans.fan_in}, {fans.fan_out})")
    for note in row.notes:
        lines.append(f"why: {note}" if note in fans.notes else f"note: {note}")
    if fans.differs and used == "torch":
        lines.append("--fans effective computes the std from the effective fans")
    return lines


def explain(report: Report) -> str:
    """Every row of a report (usually filtered to one layer), derivations separated by blank lines; each line
    printable (names come from the file)."""
    return "\n\n".join("\n".join(map(printable, explain_row(row, report.fan_convention)))
                       for row in report.rows) + "\n"


def explain_json(report: Report) -> str:
    """The rows as inspect's JSON gives them, each with its derivation's lines (`derivation`)."""
    import json

    from ..text import json_safe
    from .json_out import layer_dict

    from ..report import SCHEMA_VERSION

    layers = [{**layer_dict(row, "inspect"), "derivation": explain_row(row, report.fan_convention)}
              for row in report.rows]
    document = {"fancli": SCHEMA_VERSION, "command": "explain", "source": report.source, "layers": layers}
    return json_safe(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)) + "\n"


def explain_markdown(report: Report) -> str:
    """Each derivation under its parameter's name, its lines a list, every name escaped."""
    from ..text import markdown_code, markdown_text

    parts = []
    for row in report.rows:
        lines = explain_row(row, report.fan_convention)
        parts.append("\n".join([f"#### {markdown_code(row.layer.param)}", "",
                                 *(f"- {markdown_text(line)}" for line in lines[1:])]))
    return "\n\n".join(parts) + "\n"
