"""`fancli diff` results: a table, Markdown for a pull-request comment, JSON and CSV for programs.

Only formatting: the numbers are `fancli.checks.diff`'s. Keys come from the files, so every cell is printable.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from ..checks.diff import DiffResult, TensorDiff, fold_diffs, numel
from ..report import SCHEMA_VERSION
from ..text import csv_text, json_safe, markdown_text, printable
from .common import name, shape
from .json_out import groups_dict

HEADERS = ["key", "status", "shape", "dtype", "std A", "std B", "Δstd", "Δmean", "‖B−A‖/‖A‖"]
ALIGNS = ["left", "left", "right", "left", "right", "right", "right", "right", "right"]
#: --spectral's columns: ‖B − A‖₂ and its ratio to √(fan_out/fan_in) (the spectral condition on an update).
SPECTRAL = {"‖B−A‖₂": "delta_spectral_norm", "‖B−A‖₂/√(out/in)": "delta_spectral_ratio"}


def _headers(result: DiffResult) -> tuple[list[str], list[str]]:
    """The columns and their alignment: --spectral's two after the rest."""
    extra = list(SPECTRAL) if result.spectral else []
    return HEADERS + extra, ALIGNS + ["right"] * len(extra)


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:+.3g}" if signed else f"{value:.4g}"


def _range(items: tuple[TensorDiff, ...], field: str, signed: bool = False) -> str:
    """A value, or the members' range `min…max` where they differ in what is shown (inspect's folded rows)."""
    values = [getattr(item, field) for item in items]
    known = [v for v in values if v is not None]
    if not known:
        return _number(None)
    low, high = _number(min(known), signed), _number(max(known), signed)
    shown = low if low == high else f"{low}…{high}"
    return shown if len(known) == len(values) else f"{shown} (and —)"


def _cells(group: Any, spectral: bool = False) -> list[str]:
    """A shown row: one tensor, or a folded group (`fancli.checks.diff.fold_diffs`: its members share status,
    shape, dtype and note; their numbers are shown as ranges)."""
    item, items = group.row, group.rows
    dims = item.shape_a if item.shape_b is None else item.shape_b
    shown = (f"{shape(item.shape_a)} → {shape(item.shape_b)}" if item.status == "reshaped"
             else shape(dims) if dims is not None else "")
    dtypes = item.dtype_a if item.dtype_b is None else item.dtype_b if item.dtype_a in (None, item.dtype_b) \
        else f"{item.dtype_a} → {item.dtype_b}"
    norm = "∞" if item.unbounded else _range(items, "rel_diff_norm")
    numbers = item.status not in ("added", "removed", "reshaped")
    return [printable(name(group)), item.status, shown, dtypes or "",
            _range(items, "std_a") if numbers else "", _range(items, "std_b") if numbers else "",
            _range(items, "rel_std_change", True) if numbers else "",
            _range(items, "rel_mean_change", True) if numbers else "", norm if numbers else "",
            *([_range(items, field) if numbers else "" for field in SPECTRAL.values()] if spectral else [])]


def shown_rows(result: DiffResult, max_change: float | None = None, expand: bool = False) -> list[Any]:
    """The rows tables and Markdown show: folded as inspect folds (`fold_diffs`), or every tensor."""
    from ..folding import Group

    if expand:
        return [Group(t.param, (), (t,)) for t in result.tensors]
    return fold_diffs(result.tensors, max_change)


def headline(result: DiffResult) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items())
    return printable(f"{result.source_a} → {result.source_b}: {len(result.tensors)} tensors ({counts or 'none'})")


def verdict(result: DiffResult, max_change: float | None, allow_structural: bool) -> str | None:
    """The line that explains a non-zero exit, or None when the gate passes (or there is none)."""
    failed = result.failures(max_change, allow_structural)
    if not failed:
        return None
    parts = []
    structural = [t for t in failed if t.status in ("added", "removed", "reshaped")]
    if structural:
        parts.append(f"{len(structural)} tensor{'s' * (len(structural) != 1)} added, removed or reshaped "
                     "(--allow-structural accepts them)")
    over = [t for t in failed if max_change is not None and t.exceeds(max_change)]
    if over:
        worst = max(over, key=lambda t: float("inf") if t.unbounded else t.rel_diff_norm)
        parts.append(f"{len(over)} tensor{'s' * (len(over) != 1)} changed by more than --max-change "
                     f"{max_change:g} (most: {printable(worst.param)}, "
                     f"{'∞' if worst.unbounded else format(worst.rel_diff_norm, '.4g')})")
    return "FAIL: " + "; ".join(parts)


def _notes(rows: list[Any]) -> list[str]:
    return [printable(f"{name(group)}: {group.row.note}") for group in rows if group.row.note]


def render_diff_table(result: DiffResult, max_change: float | None = None, allow_structural: bool = False,
                      expand: bool = False, width: int | None = None) -> str:
    """The grid, fitted to a terminal of `width` columns as inspect's table is (`fitted_grid`)."""
    from .table import fitted_grid, wrapped

    rows = shown_rows(result, max_change, expand)
    gate = verdict(result, max_change, allow_structural)
    lines = wrapped(headline(result), width)
    if result.tensors:
        headers, aligns = _headers(result)
        lines += fitted_grid(headers, aligns, [_cells(group, result.spectral) for group in rows], width)
    for line in [*_notes(rows), *([gate] if gate else [])]:
        lines += wrapped(line, width)
    return "\n".join(lines) + "\n"


def render_diff_markdown(result: DiffResult, max_change: float | None = None, allow_structural: bool = False,
                         expand: bool = False) -> str:
    gate = verdict(result, max_change, allow_structural)
    mark = "❌" if gate else "✅"
    lines = [f"### {mark} fancli diff", "", markdown_text(headline(result), starts_line=True), ""]
    rows = shown_rows(result, max_change, expand)
    if result.tensors:
        headers, aligns = _headers(result)
        lines += ["| " + " | ".join(headers) + " |",
                  "|" + "|".join(":---" if align == "left" else "---:" for align in aligns) + "|"]
        lines += ["| " + " | ".join(map(markdown_text, _cells(group, result.spectral))) + " |" for group in rows]
        lines.append("")
    lines += [f"- {markdown_text(note)}" for note in _notes(rows)]
    if gate:
        lines += ["", f"**{markdown_text(gate)}**"]
    return "\n".join(lines).rstrip("\n") + "\n"


def tensor_dict(item: TensorDiff, spectral: bool = False) -> dict[str, Any]:
    """A tensor's JSON object (and CSV row); with --spectral, ‖B − A‖₂ and its ratio before the note."""
    found = {"param": item.param, "status": item.status,
            "shape_a": list(item.shape_a) if item.shape_a is not None else None,
            "shape_b": list(item.shape_b) if item.shape_b is not None else None,
            "dtype_a": item.dtype_a, "dtype_b": item.dtype_b, "mean_a": item.mean_a, "mean_b": item.mean_b,
            "std_a": item.std_a, "std_b": item.std_b, "rel_std_change": item.rel_std_change,
            "rel_mean_change": item.rel_mean_change, "rel_diff_norm": item.rel_diff_norm,
            "max_abs_diff": item.max_abs_diff}
    if spectral:
        found |= {field: getattr(item, field) for field in SPECTRAL.values()}
    return found | {"note": item.note}


def render_diff_json(result: DiffResult, max_change: float | None = None, allow_structural: bool = False,
                     expand: bool = False) -> str:
    failed = result.failures(max_change, allow_structural)
    document = {
        "fancli": SCHEMA_VERSION,
        "command": "diff",
        "a": {"path": result.source_a, "format": result.format_a},
        "b": {"path": result.source_b, "format": result.format_b},
        "max_change": max_change,
        "ok": not failed,
        "counts": result.counts(),
        "failed": [t.param for t in failed],
        "tensors": [tensor_dict(t, result.spectral) for t in result.tensors],
        "groups": [groups_dict(group, numel) for group in fold_diffs(result.tensors, max_change)],
    }
    return json_safe(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)) + "\n"


def render_diff_csv(result: DiffResult, max_change: float | None = None, allow_structural: bool = False,
                    expand: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = list(tensor_dict(TensorDiff("", "same", (), ()), result.spectral))
    writer.writerow(fields)
    for item in result.tensors:
        row = tensor_dict(item, result.spectral)
        writer.writerow(["" if row[f] is None else "x".join(map(str, row[f])) if isinstance(row[f], list)
                         else csv_text(row[f]) if isinstance(row[f], str) else repr(row[f]) for f in fields])
    return buffer.getvalue()
