"""`fancli propagate`'s output: a text table with log2 bars per layer and mode, and plain data for JSON.
Formats a list of Propagation (`fancli.propagate`) only; no torch."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Sequence

from ..text import json_safe, printable

if TYPE_CHECKING:
    from ..propagate.signals import Propagation


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bars(values: Sequence[float], width: int = 20, span: float | None = None) -> list[str]:
    """One bar per variance on a log2 scale, diverging from a centre mark │ at variance 1.

    Each side has width//2 cells spanning `span` octaves (default: the largest |log2 v| among the
    values, at least 1), so bars drawn with one span compare. A value beyond the span ends in ◀ or ▶;
    0 reads ◀ at the left edge, inf ▶ at the right, nan ?. Every bar is width//2·2 + 1 characters.
    """
    half = max(1, width // 2)
    logs = [math.log2(v) if isinstance(v, (int, float)) and v > 0 and math.isfinite(v) else None for v in values]
    if span is None:
        span = max([abs(v) for v in logs if v is not None] + [1.0])
    out = []
    for value, log in zip(values, logs):
        if log is None:
            if value == 0:
                out.append("◀" + " " * (half - 1) + "│" + " " * half)
            elif isinstance(value, float) and value == math.inf:
                out.append(" " * half + "│" + " " * (half - 1) + "▶")
            else:
                out.append(" " * half + "?" + " " * half)
            continue
        cells = log / span * half
        beyond = abs(cells) > half
        cells = max(-half, min(half, cells))
        if cells >= 0:
            full, rest = divmod(round(cells * 8), 8)
            right = "█" * full + (_EIGHTHS[rest] if rest else "")
            if beyond:
                right = right[:-1] + "▶"
            out.append(" " * half + "│" + right.ljust(half))
        else:
            full, rest = divmod(round(-cells * 2), 2)  # left of centre: whole and half cells (▐)
            left = ("▐" if rest else "") + "█" * full
            if beyond:
                left = "◀" + left[1:]
            out.append(left.rjust(half) + "│" + " " * half)
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def _times(value: float) -> str:
    return f"×{_fmt(value)}"


def render_propagation(props: Sequence[Propagation], source: str | None = None, bar_width: int = 10) -> str:
    """Plain text: one row per weight layer; per mode the forward and backward variance with a bar.

    All bars share one log2 span, so a bar's length compares across columns. Every line printable: layer
    names and the source's come from the user's files.
    """
    if not props:
        return ""
    first = props[0]
    shape = "×".join(map(str, (first.batch, *first.input_shape)))
    draws = f"mean of {first.draws} draws" if first.draws > 1 else "1 draw"
    head = [f"{source} · " if source else "", f"scheme {first.scheme} · input N(0,1) {shape} · seed {first.seed}",
            f" · {draws} · norms {first.norms}"]
    lines = ["".join(head)]
    every = [v for p in props for s in p.layers for v in (s.forward_var, s.backward_var)]
    finite = [abs(math.log2(v)) for v in every if v > 0 and math.isfinite(v)]
    span = max(finite + [1.0])
    columns: list[list[str]] = []
    titles: list[str] = []
    for p in props:
        for label, values in (("forward", [s.forward_var for s in p.layers]),
                              ("backward", [s.backward_var for s in p.layers])):
            titles.append(f"{label} {p.mode}")
            drawn = bars(values, bar_width, span)
            columns.append([f"{_fmt(v):>8} {bar}" for v, bar in zip(values, drawn)])
    names = [s.name for s in first.layers]
    kinds = [s.kind for s in first.layers]
    if any([s.name for s in p.layers] != names for p in props):
        raise ValueError("propagations over different layers cannot share a table")
    name_w = max([len("layer")] + [len(n) for n in names])
    kind_w = max([len("kind")] + [len(k) for k in kinds])
    col_w = max([len(t) for t in titles] + [len(c) for col in columns for c in col])
    header = [f"{'layer':<{name_w}}", f"{'kind':<{kind_w}}", *(f"{t:<{col_w}}" for t in titles)]
    lines.append("  ".join(header).rstrip())
    for i, (name, kind) in enumerate(zip(names, kinds)):
        cells = [f"{name:<{name_w}}", f"{kind:<{kind_w}}", *(f"{col[i]:<{col_w}}" for col in columns)]
        lines.append("  ".join(cells).rstrip())
    for p in props:
        lines.append(
            f"{p.mode}: forward {_times(p.forward_ratio)} first → last layer{_range(p.forward_ratios)} "
            f"(spread {_times(p.forward_spread)}); backward {_times(p.backward_ratio)} last → first layer"
            f"{_range(p.backward_ratios)} (spread {_times(p.backward_spread)})"
        )
    lines.append(
        "forward: variance of each layer's output Wx + b, before its nonlinearity · backward: variance of the "
        "gradient at its input, for a N(0,1) gradient at the output · bars: log2 scale, │ = variance 1, "
        f"each side 2^±{span:.3g}"
    )
    notes = list(dict.fromkeys(n for p in props for n in p.notes))
    lines += notes
    return "\n".join(map(printable, lines)) + "\n"


def _range(ratios: Sequence[float]) -> str:
    finite = [r for r in ratios if math.isfinite(r)]
    if len(ratios) < 2 or not finite:
        return ""
    return f", single draws {_times(min(finite))}–{_times(max(finite))}"


def render_propagation_json(props: Sequence[Propagation], source: str | None = None) -> str:
    """`to_dict` as JSON text, what a terminal would act on escaped (`json_safe`)."""
    return json_safe(json.dumps(to_dict(props, source), indent=2, ensure_ascii=False)) + "\n"


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_dict(props: Sequence[Propagation], source: str | None = None) -> dict[str, Any]:
    """Plain data for JSON (non-finite numbers become null), with the schema version as every JSON output."""
    from ..report import SCHEMA_VERSION

    return {
        "fancli": SCHEMA_VERSION,
        "command": "propagate",
        "source": source,
        "propagations": [
            {
                "mode": p.mode,
                "scheme": p.scheme,
                "norms": p.norms,
                "seed": p.seed,
                "batch": p.batch,
                "input_shape": list(p.input_shape),
                "draws": p.draws,
                "input_var": _json_float(p.input_var),
                "forward_ratio": _json_float(p.forward_ratio),
                "backward_ratio": _json_float(p.backward_ratio),
                "forward_spread": _json_float(p.forward_spread),
                "backward_spread": _json_float(p.backward_spread),
                "forward_ratios": [_json_float(r) for r in p.forward_ratios],
                "backward_ratios": [_json_float(r) for r in p.backward_ratios],
                "notes": list(p.notes),
                "layers": [
                    {
                        "name": s.name,
                        "kind": s.kind,
                        "shape": list(s.shape),
                        "std": _json_float(s.std),
                        "forward_var": _json_float(s.forward_var),
                        "backward_var": _json_float(s.backward_var),
                    }
                    for s in p.layers
                ],
            }
            for p in props
        ],
    }

