"""`fancli check` results: a diff table, JSON, or Markdown fit for a pull-request comment."""

from __future__ import annotations

import json
from typing import Any

from ..checks.check import (
    Change,
    Deviation,
    Nonfinite,
    fold_changes,
    fold_deviations,
    fold_nonfinite,
    shown_value,
)
from ..checks.check_result import CheckResult
from ..report import SCHEMA_VERSION
from ..text import markdown_code, markdown_text, printable
from .table import fitted_grid, wrapped


def _headline(changes: list[Change], flagged: list[Deviation], baseline: str,
              nonfinite: list[Nonfinite] = ()) -> str:
    baseline = printable(baseline)
    if not changes and not flagged and not nonfinite:
        return f"no drift: the init configuration matches {baseline}"
    parts = []
    if nonfinite:
        parts.append(f"{len(nonfinite)} tensor{'s' * (len(nonfinite) != 1)} with NaN/Inf values")
    if changes:
        layers = len({c.param for c in changes})
        parts.append(f"{len(changes)} change{'s' * (len(changes) != 1)} in {layers} layer{'s' * (layers != 1)} "
                     f"against {baseline}")
    if flagged:
        parts.append(f"{len(flagged)} layer{'s' * (len(flagged) != 1)} whose weights do not match the configured init")
    return ("drift: " if changes or flagged else "fail: ") + "; ".join(parts)


def _nonfinite_lines(nonfinite: list[Nonfinite]) -> list[str]:
    """One line per folded group: `blocks.{0..3}.weight ×4: 12 of 4,096 values NaN/Inf`."""
    return [printable(f"{pattern}{f' ×{tensors:,}' if tensors > 1 else ''}: {bad:,} of {values:,} values NaN/Inf")
            for pattern, tensors, bad, values in fold_nonfinite(nonfinite)]


#: Closes a report with changes: a drift may be what the pull request meant, and then the baseline moves.
ACCEPT = "if the change is intended, accept it with `fancli check --update` and commit the new baseline"


#: Closes a report with mismatched weights: the baseline holds the configured init, so `--update` alone never
#: accepts weights (`baseline_document`); the configuration, or the tolerance, has to say what they follow.
ACCEPT_WEIGHTS = ("`fancli check --update` will not accept these weights: it records the configured init (kind, "
                  "shape, fans, nonlinearity, gain, scheme, mode, std, bound, constant), not the weights; to accept "
                  "them, configure the init they follow (`fancli inspect --stats --infer` names it) and run --update, "
                  "or allow more standard errors (--sigmas)")


def _change_rows(changes: list[Change]) -> list[list[str]]:
    """Cells for the changes, one line for keys that changed alike (`fold_changes`); keys and values come
    from the model and the baseline file, so printable."""
    return [[printable(c.param if c.count == 1 else f"{c.param} ×{c.count:,}"), c.change, c.field or "",
             "" if c.baseline is None else printable(shown_value(c.baseline)),
             "" if c.current is None else printable(shown_value(c.current))] for c in fold_changes(changes)]


def _span(values: list[float], spec: str) -> str:
    low, high = f"{min(values):{spec}}", f"{max(values):{spec}}"
    return low if low == high else f"{low}…{high}"


def _deviation_rows(found: list[Deviation]) -> list[list[str]]:
    """One line per group of keys alike in expected std and verdict (`fold_deviations`), observed stds and
    standard errors as ranges: 90,000 experts' weights fit on a screen. A constant shows its value and the
    observed mean; it has no standard error."""
    rows = []
    for pattern, count, members in fold_deviations(found):
        first = members[0]
        observed, expected = _span([d.observed_std for d in members], ".4g"), f"{first.expected_std:.4g}"
        errors = "—"
        if first.constant is None:
            errors = _span([d.sigmas for d in members], "+.1f")
        else:
            observed += f", mean {_span([d.observed_mean for d in members], '.4g')}"
            expected += f" (constant {first.constant:.4g})"
        rows.append([printable(pattern if count == 1 else f"{pattern} ×{count:,}"), observed, expected, errors,
                     "MISMATCH" if first.flagged else "ok"])
    return rows


def _parts(result: CheckResult) -> tuple[list[Change], list[Deviation], str, float, list[Nonfinite]]:
    return result.changes, result.deviations, result.baseline, result.sigmas, result.nonfinite


_CHANGE_HEADERS = ["layer", "change", "field", "baseline", "now"]
_DEVIATION_HEADERS = ["layer", "observed std", "expected std", "std errors", "verdict"]


def render_check_text(result: CheckResult, width: int | None = None) -> str:
    """The report; its tables fitted to a terminal of `width` columns as inspect's table is (`fitted_grid`)."""
    changes, found, baseline, sigmas, nonfinite = _parts(result)
    flagged = [d for d in found if d.flagged]
    lines = wrapped(_headline(changes, flagged, baseline, nonfinite), width)
    if nonfinite:
        for line in ["NaN/Inf values (they fail the check whatever the baseline):", *_nonfinite_lines(nonfinite)]:
            lines += wrapped(line, width)
    if changes:
        lines += fitted_grid(_CHANGE_HEADERS, ["left"] * 5, _change_rows(changes), width)
        lines += wrapped(ACCEPT, width)
    if found:
        rule = f"observed weights (a layer is flagged beyond ±{sigmas:g} standard errors, σ/√(2n)):"
        lines += wrapped(rule, width)
        lines += fitted_grid(_DEVIATION_HEADERS, ["left", "right", "right", "right", "left"], _deviation_rows(found),
                             width)
    if flagged:
        lines += wrapped(ACCEPT_WEIGHTS, width)
    return "\n".join(lines) + "\n"


def render_check_markdown(result: CheckResult) -> str:
    changes, found, baseline, sigmas, nonfinite = _parts(result)
    flagged = [d for d in found if d.flagged]
    mark = "✅" if not changes and not flagged and not nonfinite else "❌"
    lines = [f"### {mark} fancli check", "", _headline(changes, flagged, markdown_text(baseline), nonfinite), ""]
    if nonfinite:
        lines += ["NaN/Inf values (they fail the check whatever the baseline):", ""]
        lines += [f"- {markdown_code(line)}" for line in _nonfinite_lines(nonfinite)] + [""]
    if changes:
        lines += ["| " + " | ".join(_CHANGE_HEADERS) + " |", "|" + ":---|" * 5]
        lines += ["| " + " | ".join(map(markdown_code, row)) + " |" for row in _change_rows(changes)]
        lines += ["", ACCEPT[0].upper() + ACCEPT[1:] + ".", ""]
    if found:
        lines += [f"Observed weights (flagged beyond ±{sigmas:g} standard errors):", "",
                  "| " + " | ".join(_DEVIATION_HEADERS) + " |", "|:---|---:|---:|---:|:---|"]
        lines += ["| " + " | ".join(map(markdown_text, row)) + " |" for row in _deviation_rows(found)]
    if flagged:
        lines += ["", ACCEPT_WEIGHTS + "."]
    return "\n".join(lines) + "\n"


def render_check_json(result: CheckResult) -> str:
    changes, found, baseline, sigmas, nonfinite = _parts(result)
    document: dict[str, Any] = {
        "fancli": SCHEMA_VERSION,
        "command": "check",
        "baseline": baseline,
        "ok": not changes and not any(d.flagged for d in found) and not nonfinite,
        "changes": [{"param": c.param, "change": c.change, "field": c.field, "baseline": c.baseline,
                     "current": c.current} for c in changes],
        # the keys that changed alike, as the table folds them: every change is in exactly one group
        "change_groups": [{"pattern": f.param, "count": f.count, "change": f.change, "field": f.field,
                           "baseline": f.baseline, "current": f.current} for f in fold_changes(changes)],
        "observed": [{"param": d.param, "observed_std": d.observed_std, "expected_std": d.expected_std,
                      "count": d.count, "std_errors": d.sigmas, "flagged": d.flagged, "constant": d.constant,
                      "observed_mean": d.observed_mean} for d in found],
        "sigmas": sigmas,
        "nonfinite": [{"param": n.param, "count": n.count, "nonfinite": n.nonfinite} for n in nonfinite],
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"

