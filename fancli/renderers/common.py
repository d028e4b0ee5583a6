"""Formatting shared by the table and Markdown renderers."""

from __future__ import annotations

import operator
from itertools import compress, repeat

from ..analysis.fans import convention_of
from ..folding import Group
from ..report import Report, Row, distinct_inits, modes_used, schemes_used
from ..summary import numel


def number(value: float | int | None) -> str:
    """Fans as integers, floats to 4 significant digits, missing values as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def shape(dims: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in dims) if dims else "scalar"


def count(value: int) -> str:
    """Parameter and byte counts with thousands separators: 1,179,648 reads at a glance, 1179648 does not."""
    return f"{value:,}"


def totals_line(report: Report) -> str:
    """The footer every peer prints first: tensors, parameters (a tied tensor once), buffers' elements apart,
    bytes by dtype (as stored)."""
    found = report.summary
    parameters = f"{count(found.parameters)} parameters"
    if found.tied_keys:
        parameters += f" ({found.tied_keys} tied key{'s' * (found.tied_keys != 1)} counted once)"
    parts = [f"{count(found.tensors)} tensor{'s' * (found.tensors != 1)}", parameters]
    if found.buffers:
        parts.append(f"{count(found.buffers)} in buffers")
    sizes = list(found.bytes_by_dtype.items())
    if len(sizes) == 1:
        parts.append(f"{count(sizes[0][1])} bytes {sizes[0][0]}")
    elif sizes:
        total = "" if found.bytes is None else f"{count(found.bytes)} bytes: "
        parts.append(total + ", ".join(f"{dtype} {count(size)}" for dtype, size in sizes))
    if found.dtype_assumed and sizes:
        parts[-1] += " (assumed: the source gives no dtype)"
    if found.unsized:
        parts.append(f"bytes of {', '.join(found.unsized)} not counted (size unknown)")
    return "total: " + " · ".join(parts)


def fan(row: Row, which: str) -> str:
    """torch's fan, with the effective one after an arrow where the structure says it differs."""
    torch_value = getattr(row.fans, which)
    if which in row.fans.unknown:
        return f"{number(torch_value)} → ?"
    effective = getattr(row.fans, f"effective_{which}")
    if effective is None or effective == torch_value:
        return number(torch_value)
    return f"{number(torch_value)} → {number(effective)}"


class Footnotes:
    """Numbers each distinct note once, in order of first appearance."""

    def __init__(self) -> None:
        self.notes: dict[str, int] = {}

    def marks(self, row: Row) -> str:
        notes = row.notes
        if row.inferred is not None and row.inferred.note:  # why --infer names no init, or no mode
            notes += (f"inferred: {row.inferred.note}",)
        return ",".join(str(self.notes.setdefault(note, len(self.notes) + 1)) for note in notes)

    def lines(self) -> list[str]:
        return [f"[{number_}] {note}" for note, number_ in self.notes.items()]


def varies(report: Report, attribute: str) -> bool:
    """Whether rows differ in a per-layer choice (scheme, mode), so it needs a column."""
    if attribute == "mode":
        return len({",".join(inits) for inits in distinct_inits(report.distinct_rows)}) > 1
    return len(set(map(operator.attrgetter(attribute), report.distinct_rows))) > 1


def _any(report: Report, attribute: str) -> bool:
    """Whether a row has the attribute (--stats' observed, --spectral's, --infer's), checked in C."""
    return not all(map(operator.is_, map(operator.attrgetter(attribute), report.distinct_rows), repeat(None)))


def title(report: Report) -> str:
    name = f" ({report.model_name})" if report.model_name else ""
    schemes = schemes_used(report.distinct_rows)
    modes = report.modes or tuple(modes_used(report.distinct_rows))
    recipe = report.recipe
    expectation = [f"recipe {recipe.name} ({report.recipe_from}: {recipe.reproduces})"] if recipe else [
        f"scheme {'/'.join(schemes) if schemes else report.settings.scheme or '—'}",
        f"mode {' vs '.join(modes) if report.command == 'compare' else '/'.join(modes)}",
    ]
    parts = [
        f"{report.source}{name}",
        report.format,
        *expectation,
        f"fans: {_fans_named(report)}" + (", pool÷fan_out" if report.pool_fan_out else ""),
    ]
    return " · ".join(parts)


_LAYER, _SHAPE = operator.attrgetter("layer"), operator.attrgetter("shape")


def _fans_named(report: Report) -> str:
    """The convention the fans columns follow: "effective", else the framework whose function reads them (keras,
    jax, torch; several where the layers mix layouts)."""
    if report.fan_convention != "torch":
        return report.fan_convention
    layers = list(map(_LAYER, report.distinct_rows))
    named = sorted(set(map(convention_of, compress(layers, map((2).__le__, map(len, map(_SHAPE, layers)))))))
    return "/".join(named) or "torch"


def ratio_columns(report: Report) -> list[tuple[str, str]]:
    """(label, mode) for each mode compared against the first."""
    first, *others = report.modes
    return [(f"{other}/{first}", other) for other in others]


def ratio(row: Row, mode: str, first: str) -> float | None:
    a, b = row.inits[first].std, row.inits[mode].std
    if a is None or b is None or a == 0:
        return None
    return b / a


def summary(report: Report) -> str:
    """One line for compare: how often the modes agree, and where they disagree most."""
    computable = [row for row in report.rows if row.spread is not None]
    same = sum(1 for row in computable if row.spread <= 1 + 1e-9)
    text = f"{len(report.rows)} weights; the modes give the same std on {same} of the {len(computable)} with fans"
    top = report.most_disagreeing(1)
    if top:
        row = top[0]
        stds = {mode: values.std for mode, values in row.inits.items()}
        high = max(stds, key=lambda m: stds[m])
        low = min(stds, key=lambda m: stds[m])
        text += f"; they disagree most (◀) on {row.layer.param}: {high} gives {row.spread:.3g}× the std of {low}"
    return text


class Column:
    """A column both text renderers share: header, alignment and how a shown group (`Report.shown`: a
    folded group, or one row) fills it."""

    def __init__(self, header: str, cell, align: str = "right") -> None:
        self.header, self.cell, self.align = header, cell, align


def _shared(cell):
    """A column whose value every member of a group shares (folding requires it): the first member's."""
    return lambda group: cell(group.row)


def name(group: Group) -> str:
    """The key, or the group's pattern and how many keys it stands for: `layers.{0..3}.q.weight ×4`."""
    return group.pattern if group.count == 1 else f"{group.pattern} ×{count(group.count)}"


def observed_range(group: Group, value) -> str:
    """An observed value, or the members' range `min…max` where they differ in what is shown."""
    found = [value(row) for row in group.rows]
    known = [v for v in found if v is not None]
    if not known:
        return number(None)
    low, high = number(min(known)), number(max(known))
    shown = low if low == high else f"{low}…{high}"
    return shown if len(known) == len(found) else f"{shown} (and —)"


def columns(report: Report, footnotes: Footnotes) -> list[Column]:
    """The columns for this report's command; scheme and mode get one only where layers differ. params is
    a group's total (its shape is each member's)."""
    cols = [
        Column("name", name, "left"),
        Column("kind", _shared(lambda r: r.layer.kind), "left"),
        Column("shape", _shared(lambda r: shape(r.layer.shape))),
        Column("params", lambda g: count(g.elements(lambda row: numel(row.layer)))),
        Column("fan_in", _shared(lambda r: fan(r, "fan_in"))),
        Column("fan_out", _shared(lambda r: fan(r, "fan_out"))),
        Column("gain", _shared(lambda r: number(r.gain))),
    ]
    if varies(report, "scheme"):
        cols.append(Column("scheme", _shared(lambda r: r.scheme), "left"))
    if report.command == "compare":
        first = report.modes[0]
        cols += [Column(f"std {m}", _shared(lambda r, m=m: number(r.inits[m].std))) for m in report.modes]
        cols += [Column(label, _shared(lambda r, m=m: number(ratio(r, m, first))))
                 for label, m in ratio_columns(report)]
    else:
        if varies(report, "mode"):
            cols.append(Column("mode", _shared(lambda r: ",".join(r.inits)), "left"))
        only = lambda r: next(iter(r.inits.values()))  # noqa: E731 - inspect has one mode per row
        cols += [Column("std", _shared(lambda r: number(only(r).std))),
                 Column("bound", _shared(lambda r: number(only(r).bound)))]
    if _any(report, "observed"):
        cols += [
            Column("obs mean", lambda g: observed_range(g, lambda r: r.observed.mean if r.observed else None)),
            Column("obs std", lambda g: observed_range(g, lambda r: r.observed.std if r.observed else None)),
            Column("obs/exp", lambda g: observed_range(g, lambda r: r.observed_ratio)),
        ]
    if _any(report, "spectral"):
        cols += spectral_columns()
    if _any(report, "inferred"):
        cols += [
            Column("inferred init", _shared(lambda r: r.inferred.label if r.inferred else ""), "left"),
            Column("conf", _shared(lambda r: r.inferred.confidence if r.inferred else ""), "left"),
        ]
    cols.append(Column("notes", _shared(footnotes.marks), "left"))
    return cols


def spectral_columns() -> list[Column]:
    """--spectral: ‖W‖₂, its ratio to the init's expected ‖W‖₂ and to √(fan_out/fan_in), the stable rank
    ("orth" where every singular value is equal); a group's range where its members differ."""
    def whole(value):
        return lambda g: observed_range(g, lambda r: value(r.spectral.whole) if r.spectral else None)

    def rank(group: Group) -> str:
        shown = observed_range(group, lambda r: r.spectral.whole.stable_rank if r.spectral else None)
        return f"{shown} orth" if all(r.spectral and r.spectral.orthogonal for r in group.rows) else shown

    return [Column("‖W‖₂", whole(lambda v: v.norm)),
            Column("‖W‖₂ obs/exp", whole(lambda v: v.observed_ratio)),
            Column("‖W‖₂/√(out/in)", whole(lambda v: v.ratio)),
            Column("stable rank", rank)]


def highlighted(report: Report) -> set[int]:
    """Indices into `report.shown` of the groups holding a row the modes disagree most on (compare)."""
    if report.command != "compare":
        return set()
    top = {id(row) for row in report.most_disagreeing()}
    return {index for index, group in enumerate(report.shown) if any(id(row) in top for row in group.rows)}
