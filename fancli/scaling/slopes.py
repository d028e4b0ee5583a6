"""How a quantity scales with width: the log-log slope over a sweep (numpy's least-squares line through
(log2 width, log2 value)) and the verdict a tolerance gives it. numpy only; no torch."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: flat: |slope| within the tolerance · grows / shrinks: past it · zero: 0 at every width (a zero-initialised
#: readout at step 0) · undefined: 0, infinite or NaN at some widths but not all (blown up or vanished).
VERDICTS = ("flat", "grows", "shrinks", "zero", "undefined")
#: What `--fail-on` may name: `any` fails on every verdict but flat and zero; `grows` only on growth and on
#: undefined (a NaN or an infinity is a blow-up too).
FAIL_ON = {"any": ("grows", "shrinks", "undefined"), "grows": ("grows", "undefined")}


def fit_slope(widths: Sequence[int], values: Sequence[float]) -> float | None:
    """The exponent a in value ∝ width^a: the least-squares slope of log2 value on log2 width (so also the
    change of log2 value per doubling of width). None where a value is not positive and finite."""
    if len(widths) < 2 or any(not (math.isfinite(v) and v > 0) for v in values):
        return None
    return float(np.polyfit(np.log2(np.asarray(widths, dtype=float)), np.log2(np.asarray(values, dtype=float)), 1)[0])


def verdict(values: Sequence[float], slope: float | None, tolerance: float) -> str:
    """One of VERDICTS for one curve: `slope` (fit_slope of `values`) against ±tolerance."""
    if slope is None:
        return "zero" if all(v == 0 for v in values) else "undefined"
    if slope > tolerance:
        return "grows"
    if slope < -tolerance:
        return "shrinks"
    return "flat"


def overall(verdicts: Sequence[str]) -> str:
    """A layer's verdict over its steps: the worst one, growth first (the blow-up a coordinate check is for)."""
    for name in ("grows", "undefined", "shrinks", "flat"):
        if name in verdicts:
            return name
    return "zero"
