"""`fancli gain`: torch's gain beside the numeric one, as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

CRITERION = ("1/√E[f(z)²] for z ~ N(0, 1): keeps a layer's output second moment equal to its input's "
             "(He et al. 2015; √2 for relu)")


def render_gains(rows: list[dict[str, Any]]) -> str:
    """Rows of {name, param, torch, numeric, used} as an aligned table, the criterion under it."""
    width = max(len(row["name"]) for row in rows)
    lines = [f"{'activation':<{width}}  {'torch calculate_gain':>20}  {'numeric E[f(z)²] gain':>21}  used"]
    for row in rows:
        used = "torch" if row["torch"] is not None else "numeric"
        lines.append(f"{row['name']:<{width}}  {_shown(row['torch']):>20}  {_shown(row['numeric']):>21}  {used}")
    lines.append(f"numeric: {CRITERION}; composite Gauss–Legendre quadrature, error < 1e-9.")
    return "\n".join(lines) + "\n"


def render_gains_json(rows: list[dict[str, Any]]) -> str:
    """The rows with the criterion, as JSON."""
    from ..report import SCHEMA_VERSION

    document = {"fancli": SCHEMA_VERSION, "command": "gain", "criterion": CRITERION, "gains": rows}
    return json.dumps(document, indent=2) + "\n"


def _shown(value: float | None) -> str:
    return "not defined" if value is None else f"{value:.6f}"
