"""`fancli scale`'s output: the slopes per module and step as a text table, and plain data for JSON.
Formats a WidthSweep (`fancli.scaling.sweep`) only; no torch."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ..text import json_safe, printable

if TYPE_CHECKING:
    from ..scaling.sweep import WidthSweep


def _slope(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _value(value: float) -> str:
    return f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def render_scale(sweep: WidthSweep) -> str:
    """Plain text: one row per module, its slope at each step, its mean |output| at the last step from the
    narrowest to the widest model, and its verdict; then the base-shape check where one was asked for.
    Every line printable: module names come from the user's code."""
    shape = "×".join(map(str, (sweep.batch, *sweep.input_shape)))
    lines = [f"{sweep.source} · {sweep.width_key} {','.join(map(str, sweep.widths))} · {sweep.optimizer} lr "
             f"{sweep.lr:g} · {sweep.steps} steps · input N(0,1) {shape} · seed {sweep.seed}"
             + (f" (mean of {sweep.seeds} seeds)" if sweep.seeds > 1 else ""),
             f"slope: exponent of width in each module's mean |output| (log2 change per doubling), at each step; "
             f"flat within ±{sweep.tolerance:g}"]
    last = sweep.steps
    header = ["module", "kind", *(f"step {t}" for t in range(sweep.steps + 1)),
              f"step {last}: {sweep.widths[0]} → {sweep.widths[-1]}", "verdict"]
    rows = [[layer.name, layer.kind, *map(_slope, layer.slopes),
             f"{_value(layer.values[last][0])} → {_value(layer.values[last][-1])}", layer.verdict]
            for layer in sweep.layers]
    lines += _table(header, rows)
    failed = sweep.failures()
    if failed:
        lines.append(f"{len(failed)} of {len(sweep.layers)} modules fail (--fail-on {sweep.fail_on}): "
                     + ", ".join(f"{layer.name} ({layer.verdict})" for layer in failed))
    else:
        lines.append(f"all {len(sweep.layers)} modules pass (--fail-on {sweep.fail_on})")
    if any(slope is None for layer in sweep.layers for slope in layer.slopes):
        lines.append("—: no slope: the output is 0 at every width (zero, as a zero-initialised readout's at step 0), "
                     "or 0, infinite or NaN at some (undefined)")
    if sweep.base_shapes is not None:
        lines += ["", "μP base shapes: init std against width (from the weights alone: a multiplier in the forward "
                  "is not seen)"]
        rows = [[p.name, "×".join(map(str, p.shapes[-1])), ",".join(map(str, p.infinite)) or "—", p.role,
                 _slope(p.slope), _slope(p.expected), p.verdict] for p in sweep.base_shapes]
        lines += _table(["parameter", f"shape at {sweep.widths[-1]}", "infinite dims", "role", "std slope",
                         "μP slope", "verdict"], rows)
    lines += sweep.notes
    return "\n".join(map(printable, lines)) + "\n"


def render_scale_json(sweep: WidthSweep) -> str:
    """`to_dict` as JSON text, what a terminal would act on escaped (`json_safe`)."""
    return json_safe(json.dumps(to_dict(sweep), indent=2, ensure_ascii=False)) + "\n"


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def to_dict(sweep: WidthSweep) -> dict[str, Any]:
    """Plain data for JSON (non-finite numbers become null), with the schema version as every JSON output."""
    from ..report import SCHEMA_VERSION

    static = None
    if sweep.base_shapes is not None:
        static = [{"name": p.name, "base_shape": list(p.base_shape), "infinite_dims": list(p.infinite),
                   "role": p.role, "shapes": [list(s) for s in p.shapes], "stds": [_number(s) for s in p.stds],
                   "slope": _number(p.slope), "expected_slope": p.expected, "verdict": p.verdict}
                  for p in sweep.base_shapes]
    return {
        "fancli": SCHEMA_VERSION,
        "command": "scale",
        "source": sweep.source,
        "width_key": sweep.width_key,
        "widths": list(sweep.widths),
        "steps": sweep.steps,
        "optimizer": sweep.optimizer,
        "lr": sweep.lr,
        "batch": sweep.batch,
        "seed": sweep.seed,
        "seeds": sweep.seeds,
        "input_shape": list(sweep.input_shape),
        "tolerance": sweep.tolerance,
        "fail_on": sweep.fail_on,
        "ok": sweep.ok,
        "layers": [{"name": layer.name, "kind": layer.kind, "verdict": layer.verdict,
                    "slopes": [_number(s) for s in layer.slopes], "verdicts": list(layer.verdicts),
                    "mean_abs": [[_number(v) for v in row] for row in layer.values]}
                   for layer in sweep.layers],
        "base_shapes": static,
        "notes": list(sweep.notes),
    }
