"""Init drift: compare today's per-layer init with a committed baseline, and (with --stats) the
weights themselves with what the configuration says they should be.

The baseline is JSON with one entry per layer in model order and a fixed key order, so that a change
shows as a small diff in a pull request.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..report import SCHEMA_VERSION, Report, Row

#: Fields of a baseline entry, in the order written; strings compare exactly, numbers within a tolerance.
TEXT_FIELDS = ("kind", "scheme", "mode", "nonlinearity")
NUMBER_FIELDS = ("fan_in", "fan_out", "gain", "std", "bound", "constant")
#: Fields written since 1.0: compared only where the baseline has them, so an older baseline does not drift.
ADDED_FIELDS = ("constant",)
FAN_FIELDS = ("fan_in", "fan_out")  # whole numbers ≥ 0, the others finite floats, each or null
#: A baseline takes ~250 bytes a layer: 64 MiB is ~250,000 layers, more than any model fancli reads.
MAX_BASELINE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Change:
    """One difference between the baseline and today."""

    param: str
    change: str  # added | removed | reshaped | changed
    field: str | None = None
    baseline: Any = None
    current: Any = None

    def describe(self) -> str:
        if self.change in ("added", "removed"):
            return f"{self.param}: {self.change}"
        return f"{self.param}: {self.field} {shown_value(self.baseline)} → {shown_value(self.current)}"


@dataclass(frozen=True)
class Deviation:
    """How far a layer's observed std is from the configured scheme's, in standard errors; or, for a tensor
    the init fills with a constant (a norm's weight 1, a bias 0), whether it holds that constant."""

    param: str
    observed_std: float
    expected_std: float
    count: int
    sigmas: float | None  # (observed - expected) / (expected / √(2n)); None for a constant
    flagged: bool
    constant: float | None = None  # the value expected in every element
    observed_mean: float | None = None  # given where a constant is expected


@dataclass(frozen=True)
class Nonfinite:
    """A tensor holding NaN or Inf values (`--stats`): whatever the baseline says, such weights fail."""

    param: str
    count: int  # its values
    nonfinite: int  # of them NaN or ±Inf


@dataclass(frozen=True)
class FoldedChange:
    """The same change (same field, same baseline → now) in keys that differ only in their indices, shown
    as one line: `layers.{0..3}.mlp.experts.{0..7}.up_proj.weight ×32: std 0.02 → 0.04`."""

    param: str  # a key, or a folding pattern (fancli.folding) standing for exactly the changed keys
    count: int
    change: str
    field: str | None
    baseline: Any
    current: Any


def fold_changes(changes: list[Change]) -> list[FoldedChange]:
    """Changes folded by the index patterns of their keys (fancli.folding), in the order of the first of
    each; a change no other key shares stays on its own line."""
    from ..folding import fold

    same = lambda c: (c.change, c.field, json.dumps(c.baseline), json.dumps(c.current))  # noqa: E731
    return [FoldedChange(group.pattern, group.count, group.row.change, group.row.field, group.row.baseline,
                         group.row.current) for group in fold(changes, lambda c: c.param, same)]


def shown_value(value: Any) -> str:
    """A baseline field as a person reads it: floats to 6 digits, shapes as 3×3."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "×".join(str(v) for v in value)
    return str(value)


def _entry(row: Row) -> dict[str, Any]:
    (mode, values), = row.inits.items()
    layer = row.layer
    return {
        "kind": layer.kind,
        "shape": list(layer.shape),
        "fan_in": row.fans.fan_in,
        "fan_out": row.fans.fan_out,
        "nonlinearity": row.nonlinearity,
        "gain": None if row.gain is None else float(row.gain),
        "scheme": row.scheme,
        "mode": mode,
        "std": values.std,
        "bound": values.bound,
        "constant": values.constant,
    }


def _by_key(layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A baseline's layers by every key: a tied tensor's entry under its own key and each of its `aliases`,
    so that a key tied in the baseline and trained apart now (or the reverse) is neither added nor removed."""
    found: dict[str, dict[str, Any]] = {}
    for param, entry in layers.items():
        for key in (param, *entry.get("aliases", ())):
            found.setdefault(key, entry)
    return found


def baseline_document(report: Report, baseline: Path | None = None) -> dict[str, Any]:
    """What `check --update` writes to `baseline`."""
    return {
        "fancli": SCHEMA_VERSION,
        "source": _stored_source(report.source, baseline),
        "fans": report.fan_convention,
        "layers": {row.layer.param: {**_entry(row), "aliases": list(row.layer.aliases)} for row in report.rows},
    }


def _stored_source(source: str, baseline: Path | None) -> str:
    """A source that is a local path, relative to the baseline's folder: the line is then the same in every
    clone and from every working directory (an absolute path, or one relative to where `--update` ran, would
    be rewritten by the next `--update` elsewhere). A factory or repo id, as given. Only a record: a check
    compares layers, so a baseline holding an absolute path (older fanclis) reads as before."""
    if baseline is None or not os.path.lexists(source):
        return source
    try:
        return Path(os.path.relpath(os.path.abspath(source), os.path.abspath(baseline.parent))).as_posix()
    except ValueError:  # another drive (Windows): no relative path to it
        return source


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _check_schema(path: Path, version: Any) -> None:
    """A baseline from another major schema version may mean other fields or units: refuse it rather than
    report a drift (or none) computed from fields read wrongly. Minor versions only add fields."""
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:40] + "…"
        raise SourceError(f"{path}: a baseline of schema version {shown}; this fancli reads {major}.x "
                          "(regenerate it with `fancli check --update`)")


def ensure_replaceable(path: Path) -> None:
    """`check --update` may replace a previous fancli baseline, nothing else: `--baseline model.pth` or
    a typo naming another file must not destroy it. SourceError (exit 2) unless `path` is absent or a
    readable fancli baseline of a known schema."""
    from ..safe_io import open_regular, unrecorded

    if not path.exists():  # nothing there, or a dangling link: nothing to lose
        return
    try:
        with unrecorded(), open_regular(path, str(path)) as handle:  # checked before reading a whole checkpoint
            head = handle.read(64).lstrip()
    except OSError as error:
        raise SourceError(f"{path}: cannot read the existing file ({error.strerror or error})") from None
    try:
        if not head.startswith(b"{"):
            raise SourceError(f"{path}: not JSON")
        with unrecorded():  # read to be replaced, not an input of the run; a number it cannot compare is what
            _baseline_document(path)  # --update is there to replace
    except SourceError:
        raise SourceError(f"{path}: exists and is not a fancli baseline; refusing to replace it "
                          "(remove it or give another --baseline)") from None


def read_baseline(path: Path) -> dict[str, Any]:
    """The committed baseline; SourceError (exit 2) if it is missing, not one of ours, or holds a number
    fancli never writes (NaN, beyond any float, a fan that is not a whole number ≥ 0)."""
    document = _baseline_document(path)
    for param, entry in document["layers"].items():
        for name in NUMBER_FIELDS:
            problem = _number_problem(name, entry.get(name))
            if problem:
                raise SourceError(f"{path}: layer {param!r}: {name} {problem}; regenerate with `fancli check --update`")
    return document


def _baseline_document(path: Path) -> dict[str, Any]:
    """A baseline's JSON, with its schema version and each layer's shape checked."""
    from ..safe_io import check_json_size, read_bounded

    if not path.exists():
        raise SourceError(f"{path}: no baseline; write one with `fancli check --update`")
    raw = read_bounded(path, MAX_BASELINE_BYTES, "a fancli baseline")  # FIFO-safe, and never read whole
    check_json_size(raw, str(path), "the baseline")
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: cannot read the baseline ({error})") from None
    except RecursionError:
        raise SourceError(f"{path}: the baseline is not valid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, or Python's limit on an integer's digits
        problem = "a number has too many digits" if "digits" in str(error) else str(error)
        raise SourceError(f"{path}: the baseline is not valid JSON ({problem})") from None
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, dict) or "fancli" not in document:
        raise SourceError(f"{path}: not a fancli baseline (no 'fancli' version and 'layers' mapping)")
    _check_schema(path, document["fancli"])
    for param, entry in layers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise SourceError(f"{path}: layer {param!r} has no shape; regenerate with `fancli check --update`")
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
            raise SourceError(f"{path}: layer {param!r}: 'aliases' must be a list of keys; regenerate with "
                              "`fancli check --update`")
    return document


def _number_problem(name: str, value: Any) -> str | None:
    """Why a baseline's number is no value fancli writes (a finite float; fans whole and ≥ 0), or None:
    such a number is unreadable input, not a drift from today's value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "is not a number"
    try:
        number = float(value)
    except OverflowError:
        return "is too large for a float"
    if not math.isfinite(number):
        return f"is {number}, not a finite number"
    if name in FAN_FIELDS and (number < 0 or not number.is_integer()):
        return f"is {value}, not a whole number ≥ 0"
    return None


def _differs(old: Any, new: Any, tolerance: float) -> bool:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not math.isclose(old, new, rel_tol=tolerance, abs_tol=0.0)  # read_baseline: old fits a float
    return old != new


def compare(baseline: dict[str, Any], report: Report, tolerance: float) -> list[Change]:
    """Every difference, layer by layer: removed first, then changes and additions in model order."""
    old = _by_key(baseline["layers"])
    new = _by_key(baseline_document(report)["layers"])
    # A baseline written before entries named their aliases does not know its tied keys: not "added".
    unknown = {alias for row in report.rows for alias in row.layer.aliases
               if "aliases" not in baseline["layers"].get(row.layer.param, {"aliases": ()})}
    changes = [Change(param, "removed") for param in old if param not in new]
    for param, entry in new.items():
        if param not in old:
            if param not in unknown:
                changes.append(Change(param, "added"))
            continue
        before = old[param]
        if before.get("shape") != entry["shape"]:
            changes.append(Change(param, "reshaped", "shape", before.get("shape"), entry["shape"]))
        for name in TEXT_FIELDS + NUMBER_FIELDS:
            if name in ADDED_FIELDS and name not in before:
                continue
            if _differs(before.get(name), entry[name], tolerance):
                changes.append(Change(param, "changed", name, before.get(name), entry[name]))
    return changes


#: How far a constant's stored values may be from it: bfloat16's rounding of the value (2⁻⁹ relative) with room.
CONSTANT_TOLERANCE = 2.0 ** -8


def deviations(report: Report, sigmas: float) -> list[Deviation]:
    """Observed std against expected, judged by the standard error of a sample std, σ/√(2n); a constant the
    init fills in, by the tensor's std being 0 and its mean the constant (to its rounding in the dtype)."""
    found = []
    for row in report.rows:
        values = next(iter(row.inits.values()))
        expected, observed = values.std, row.observed
        if observed is None or observed.std is None or observed.count - observed.nonfinite < 2:
            continue
        n = observed.count - observed.nonfinite
        if values.constant is not None and observed.mean is not None:
            held = [value for value in (values.constant, values.constant_or) if value is not None and
                    observed.std <= CONSTANT_TOLERANCE * abs(value) and
                    abs(observed.mean - value) <= CONSTANT_TOLERANCE * abs(value)]
            constant = held[0] if held else values.constant
            found.append(Deviation(row.layer.param, observed.std, 0.0, n, None, not held, constant, observed.mean))
            continue
        if not expected:
            continue
        z = (observed.std - expected) / (expected / math.sqrt(2 * n))
        found.append(Deviation(row.layer.param, observed.std, expected, n, z, abs(z) > sigmas))
    return found


def nonfinite(report: Report) -> list[Nonfinite]:
    """The tensors whose read values hold NaN or Inf, in model order (a failed run, a bad conversion):
    `check --stats` fails on them whatever the baseline and the configured init say."""
    return [Nonfinite(row.layer.param, row.observed.count, row.observed.nonfinite) for row in report.rows
            if row.observed is not None and row.observed.nonfinite]


def fold_nonfinite(found: list[Nonfinite]) -> list[tuple[str, int, int, int]]:
    """(pattern, tensors, NaN/Inf values, values) per group of keys that differ only in their indices
    (fancli.folding), in the order of the first of each."""
    from ..folding import fold

    return [(group.pattern, group.count, sum(n.nonfinite for n in group.rows), sum(n.count for n in group.rows))
            for group in fold(found, lambda n: n.param, lambda n: None)]


def fold_deviations(found: list[Deviation]) -> list[tuple[str, int, list[Deviation]]]:
    """(pattern, tensors, members) per group of keys that differ only in their indices and share the
    expected std and the verdict (fancli.folding), in the order of the first of each: a table shows the
    members' observed stds and standard errors as ranges, and a mismatch never folds with a pass."""
    from ..folding import fold

    groups = fold(found, lambda d: d.param, lambda d: (d.expected_std, d.constant, d.flagged))
    return [(group.pattern, group.count, list(group.rows)) for group in groups]
