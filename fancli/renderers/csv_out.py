"""CSV for spreadsheets and dataframes: one row per tensor, the JSON's per-layer fields flattened.

Built from the JSON renderer's `layer_dict`, so both say the same and a field added there appears here:
nested objects become `parent_key` columns (`structure_groups`, `observed_std`), compare's modes
`std_fan_in`, `bound_fan_in`…, a shape `128x256x1x1`, other lists `; `-joined, null an empty field.
Numbers keep full precision (Python's repr). Keys and notes come from the file: control characters are
escaped as in the table, and a text cell a spreadsheet would read as a formula gets a leading `'`
(`csv_text`), since a CSV is read in terminals and spreadsheets alike; numbers (-0.5) stay numbers.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from ..report import Report
from ..text import csv_text, printable
from .json_out import layer_dict


def _flat(layer: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if key == "modes":
            for mode, values in value.items():
                out.update({f"{field}_{mode}": number for field, number in values.items()})
        elif isinstance(value, dict):
            out.update({f"{key}_{field}": inner for field, inner in value.items()})
        else:
            out[key] = value
    return out


def _shown(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ("x" if key == "shape" else "; ").join(_shown(key, item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return printable(value)


def _cell(key: str, value: Any) -> str:
    """A field as a cell: text (a string, or a list holding one) neutralised, numbers as they are."""
    text = _shown(key, value)
    is_text = isinstance(value, str) or isinstance(value, list) and any(isinstance(item, str) for item in value)
    return csv_text(text) if is_text else text


def _header(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of any row, in the JSON's order: a key first seen on a later row goes after the key it
    follows there (`effective_fan_out` after `fan_out`, not after `notes`)."""
    header: list[str] = []
    for row in rows:
        previous = None
        for key in row:
            if key not in header:
                header.insert(header.index(previous) + 1 if previous is not None else 0, key)
            previous = key
    return header


def render_csv(report: Report) -> str:
    rows = [_flat(layer_dict(row, report.command)) for row in report.rows]
    header = _header(rows) or ["name", "param", "kind", "shape"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(key, row.get(key)) for key in header] for row in rows)
    return buffer.getvalue()
