"""A trajectory (`fancli inspect A B C --stats`): per tensor (folded), the observed std per checkpoint.

Only formatting: the numbers are `fancli.checks.trajectory`'s. Keys and source names come from files, so every
cell is printable. Tables and Markdown fold as inspect does (`--expand` lists every tensor) and leave out
tensors below 2 dims unless `--all`; JSON and CSV always list every tensor.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from typing import Any

from ..checks.trajectory import Track, Trajectory
from ..report import SCHEMA_VERSION
from ..text import csv_text, json_safe, markdown_text, printable
from .common import name, number, shape

#: The statistics each checkpoint gets, in the JSON and CSV.
FIELDS = ("count", "mean", "std", "min", "max", "nonfinite")


def without_small_tensors(trajectory: Trajectory) -> Trajectory:
    """The trajectory as people read it: tensors below 2 dims left out, with a note (as inspect's table)."""
    kept = tuple(track for track in trajectory.tracks if len(track.shape) >= 2)
    hidden = len(trajectory.tracks) - len(kept)
    if not hidden or not kept:
        return trajectory
    note = f"{hidden} tensors below 2 dims (biases, norm weights) not shown; --all shows them"
    return replace(trajectory, tracks=kept, notes=trajectory.notes + (note,))


def _cell(tracks: tuple[Track, ...], index: int) -> str:
    """A group's std at one checkpoint: one value or the members' range `min…max`; `—` where the key is
    missing; the NaN/Inf count beside it where there is one."""
    found = [track.observed[index] for track in tracks]
    if all(o is None for o in found):
        return "—"
    stds = [o.std for o in found if o is not None and o.std is not None]
    if stds:
        low, high = number(min(stds)), number(max(stds))
        text = low if low == high else f"{low}…{high}"
    else:
        text = "—"
    bad = sum(o.nonfinite for o in found if o is not None)
    return f"{text} ⚠{bad:,} NaN/Inf" if bad else text


def _norm_cell(tracks: tuple[Track, ...], index: int) -> str:
    """A group's ‖W‖₂ at one checkpoint (--spectral): one value or the members' range; `—` where none."""
    norms = [found.norm for track in tracks if (found := track.spectral[index]) is not None]
    if not norms:
        return "—"
    low, high = number(min(norms)), number(max(norms))
    return low if low == high else f"{low}…{high}"


def _headers(trajectory: Trajectory) -> list[str]:
    steps = trajectory.checkpoints[0].step is not None
    labels = [f"step {c.label}" if steps else printable(c.label) for c in trajectory.checkpoints]
    return ["name", "shape"] + labels + ([f"‖W‖₂ {label}" for label in labels] if trajectory.spectral else [])


def _rows(trajectory: Trajectory) -> list[list[str]]:
    count = len(trajectory.checkpoints)
    return [[printable(name(group)), shape(group.row.shape)]
            + [_cell(group.rows, index) for index in range(count)]
            + ([_norm_cell(group.rows, index) for index in range(count)] if trajectory.spectral else [])
            for group in trajectory.shown]


def _title(trajectory: Trajectory) -> str:
    first, last = trajectory.checkpoints[0], trajectory.checkpoints[-1]
    return printable(f"{len(trajectory.checkpoints)} checkpoints, {first.source} … {last.source} · observed std "
                     f"per checkpoint ({len(trajectory.tracks)} tensor{'s' * (len(trajectory.tracks) != 1)})")


def _nonfinite_line(trajectory: Trajectory) -> str | None:
    bad = [track.param for track in trajectory.tracks if any(o is not None and o.nonfinite for o in track.observed)]
    if not bad:
        return None
    return printable(f"NaN/Inf values in {len(bad)} tensor{'s' * (len(bad) != 1)}: {', '.join(bad[:5])}"
                     + (" …" if len(bad) > 5 else ""))


def render_table(trajectory: Trajectory, width: int | None = None) -> str:
    """The grid, fitted to a terminal of `width` columns as inspect's table is (`fitted_grid`)."""
    from .table import fitted_grid, wrapped

    headers = _headers(trajectory)
    bad = _nonfinite_line(trajectory)
    lines = [part for line in (_title(trajectory), *map(printable, trajectory.notes)) for part in wrapped(line, width)]
    lines += fitted_grid(headers, ["left"] + ["right"] * (len(headers) - 1), _rows(trajectory), width)
    return "\n".join(lines + (wrapped(bad, width) if bad else [])) + "\n"


def render_markdown(trajectory: Trajectory) -> str:
    headers = _headers(trajectory)
    lines = [markdown_text(_title(trajectory), starts_line=True), ""]
    lines += [f"- {markdown_text(note)}" for note in trajectory.notes]
    if trajectory.notes:
        lines.append("")
    lines += ["| " + " | ".join(map(markdown_text, headers)) + " |", "|:---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(map(markdown_text, row)) + " |" for row in _rows(trajectory)]
    bad = _nonfinite_line(trajectory)
    if bad:
        lines += ["", f"**{markdown_text(bad)}**"]
    return "\n".join(lines) + "\n"


def _observed(observed: Any) -> dict[str, Any] | None:
    if observed is None:
        return None
    return {field: getattr(observed, field) for field in FIELDS}


def _track_dict(track: Track, spectral: bool) -> dict[str, Any]:
    """A track's JSON object; with --spectral its ‖W‖₂ and stable rank per checkpoint (null where missing)."""
    out = {"param": track.param, "kind": track.kind, "shape": list(track.shape), "dtype": track.dtype,
           "observed": [_observed(o) for o in track.observed]}
    if spectral:
        out["spectral_norm"] = [None if found is None or not math.isfinite(found.norm) else found.norm
                                for found in track.spectral]
        out["stable_rank"] = [None if found is None else found.stable_rank for found in track.spectral]
    return out


def trajectory_dict(trajectory: Trajectory) -> dict[str, Any]:
    from .json_out import groups_dict

    groups = [groups_dict(group, lambda track: math.prod(track.shape)) for group in trajectory.groups]
    return {
        "fancli": SCHEMA_VERSION,
        "command": "trajectory",
        "sources": [{"path": c.source, "format": c.format, "step": c.step} for c in trajectory.checkpoints],
        "settings": {"filters": list(trajectory.filters)},
        "layers": [_track_dict(track, trajectory.spectral) for track in trajectory.tracks],
        "groups": groups,
        "notes": list(trajectory.notes),
    }


def render_json(trajectory: Trajectory) -> str:
    """Indented at the top, one layer (and one group) per line, laid out as inspect's JSON (`json_array`)."""
    from .json_out import json_array

    document = trajectory_dict(trajectory)
    listed = {key: document.pop(key) for key in ("layers", "groups")}
    notes = document.pop("notes")
    pieces = [json_safe(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)[:-2])]
    for key, items in listed.items():
        pieces += json_array(key, (f"    {json_safe(json.dumps(item, ensure_ascii=False, allow_nan=False))}"
                                   for item in items))
    pieces.append(f',\n  "notes": {json_safe(json.dumps(notes, ensure_ascii=False))}\n}}\n')
    return "".join(pieces)


def render_csv(trajectory: Trajectory) -> str:
    """One line per tensor per checkpoint (long form: a spreadsheet's pivot or pandas reads it as is); a
    checkpoint without the key has no line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    spectral = ("spectral_norm", "stable_rank") if trajectory.spectral else ()
    writer.writerow(["param", "kind", "shape", "dtype", "source", "step", *FIELDS, *spectral])
    for track in trajectory.tracks:
        for index, (checkpoint, observed) in enumerate(zip(trajectory.checkpoints, track.observed)):
            if observed is None:
                continue
            values = ["" if v is None else repr(v) for v in (getattr(observed, f) for f in FIELDS)]
            if spectral:
                found = track.spectral[index]
                values += ["", ""] if found is None else ["" if v is None else repr(v)
                                                          for v in (found.norm, found.stable_rank)]
            writer.writerow([csv_text(track.param), csv_text(track.kind), "x".join(map(str, track.shape)),
                             csv_text(track.dtype or ""), csv_text(checkpoint.source),
                             "" if checkpoint.step is None else checkpoint.step, *values])
    return buffer.getvalue()
