"""JSON for machines, following the versioned contract in the README (numbers as numbers)."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..analysis.schemes import InitValues
from ..analysis.schemes import scheme as find_scheme
from ..folding import Group
from ..report import SCHEMA_VERSION, Kin, Report, Row, RowTable, modes_used, schemes_used
from ..summary import numel
from ..text import json_safe

if TYPE_CHECKING:
    from ..spectral_row import SpectralRow


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _fan(value: float | int | None) -> float | int | None:
    return value if value is None or isinstance(value, int) else float(value)


def _values(values: InitValues) -> dict[str, Any]:
    out: dict[str, Any] = {"std": _float(values.std), "bound": _float(values.bound)}
    if values.sampling_std is not None:
        out["sampling_std"] = values.sampling_std
    if values.cut is not None:
        out["cut"] = values.cut
    if values.constant is not None:
        out["constant"] = values.constant
    return out


def _distribution(row: Row) -> str:
    """What the expected values are drawn from: the rule's own where it says (a recipe's, torch's per module),
    else the scheme's."""
    values = next(iter(row.inits.values()))
    if values.distribution:
        return values.distribution
    if row.recipe is None:
        return find_scheme(row.scheme).distribution
    return "uniform" if values.bound is not None else "normal"


def _structure(row: Row) -> dict[str, Any]:
    layer = row.layer
    found = {
        "layout": layer.layout if layer.layout != "torch" else None,
        "groups": layer.groups if layer.groups and layer.groups > 1 else None,
        "transposed": True if layer.transposed else None,
        "stacked": layer.stacked,
        "stride": list(layer.stride) if layer.stride and any(s > 1 for s in layer.stride) else None,
        "dilation": list(layer.dilation) if layer.dilation and any(d > 1 for d in layer.dilation) else None,
        "pool": list(layer.pool) if layer.pool else None,
        **dict(zip(("in_axis", "out_axis", "batch_axis"), map(list, layer.fan_axes or ()))),  # JAX's, where given
    }
    return {key: value for key, value in found.items() if value is not None}


def layer_dict(row: Row, command: str) -> dict[str, Any]:
    layer = row.layer
    out: dict[str, Any] = {
        "name": layer.name,
        "param": layer.param,
        "kind": layer.kind,
        "shape": list(layer.shape),
        "params": numel(layer),
        "fan_in": row.fans.fan_in,
        "fan_out": row.fans.fan_out,
    }
    if row.fans.differs:
        out["effective_fan_in"] = _fan(row.fans.effective_fan_in)
        out["effective_fan_out"] = _fan(row.fans.effective_fan_out)
    structure = _structure(row)
    if structure:
        out["structure"] = structure
    if layer.dtype:
        out["dtype"] = layer.dtype
    out.update(
        nonlinearity=row.nonlinearity,
        nonlinearity_param=_float(row.nonlinearity_param),
        gain=_float(row.gain),
        scheme_gain=_float(row.scheme_gain),
        scheme=row.scheme,
        distribution=_distribution(row),
    )
    if row.recipe:
        out["recipe"] = row.recipe
    if command == "compare":
        out["modes"] = {mode: _values(values) for mode, values in row.inits.items()}
        out["spread"] = row.spread
    else:
        (mode, values), = row.inits.items()
        out["mode"] = mode
        out.update(_values(values))
    if layer.aliases:
        out["aliases"] = list(layer.aliases)
    if layer.hf_name:
        out["hf_name"] = layer.hf_name
    if row.observed is not None:
        observed = row.observed
        out["observed"] = {
            "count": observed.count,
            "mean": observed.mean,
            "std": observed.std,
            "min": observed.min,
            "max": observed.max,
            "nonfinite": observed.nonfinite,
            "std_ratio": row.observed_ratio,
        }
    if row.spectral is not None:
        out |= spectral_dict(row.spectral)
    if row.inferred is not None:
        found = row.inferred
        best = found.best
        out["inferred"] = {
            "label": found.label,
            "scheme": best.scheme if best else None,
            "mode": best.mode if best else None,
            "nonlinearity": best.nonlinearity if best else None,
            "confidence": found.confidence,
            "std_errors": found.std_errors,
            "kurtosis_errors": found.kurtosis_errors,
            "alternatives": list(found.alternatives),
            "note": found.note,
        }
        if found.checks is not None:
            out["inferred"]["checks"] = asdict(found.checks)
    if row.observed is not None and row.observed.kurtosis is not None:
        out["observed"]["kurtosis"] = row.observed.kurtosis
    if row.observed is not None and row.observed.structure is not None:
        out["observed"]["zeros"] = row.observed.structure.zeros
    out["notes"] = list(row.notes)
    return out


def spectral_dict(found: SpectralRow) -> dict[str, Any]:
    """--spectral's fields of a row: the whole weight's numbers, σ_min/σ_max where known, whether it is
    orthogonal, and a split row's parts (experts, groups, stacked parts) as lists in stored order."""
    whole = found.whole
    out: dict[str, Any] = {
        "spectral_norm": _float(whole.norm),
        "stable_rank": _float(whole.stable_rank),
        "spectral_ratio": _float(whole.ratio),
        "expected_spectral_norm": _float(whole.expected),
        "spectral_norm_ratio": _float(whole.observed_ratio),
        "singular_spread": _float(found.spread),
        "orthogonal": found.orthogonal,
    }
    if found.parts:
        out["spectral_parts"] = {
            "spectral_norm": [_float(part.norm) for part in found.parts],
            "stable_rank": [_float(part.stable_rank) for part in found.parts],
            "spectral_ratio": [_float(part.ratio) for part in found.parts],
            "expected_spectral_norm": [_float(part.expected) for part in found.parts],
        }
    return out


def totals_dict(report: Report) -> dict[str, Any]:
    """`summary`'s totals: tensors, parameters (a tied tensor once), bytes by dtype as stored (`null` where a
    dtype's size is unknown), whether the dtype was assumed (a spec has none: float32), and the elements of
    buffers (counted apart from the parameters)."""
    found = report.summary
    return {"tensors": found.tensors, "parameters": found.parameters, "tied_keys": found.tied_keys,
            "bytes": found.bytes, "bytes_by_dtype": dict(found.bytes_by_dtype), "dtype_assumed": found.dtype_assumed,
            "buffers": found.buffers}


def groups_dict(group: Group, elements: Callable[[Any], int] = lambda row: numel(row.layer)) -> dict[str, Any]:
    """A folded group: its pattern, members, their elements (`Group.elements`; `elements` of a member: a
    report's row by default, diff and trajectories give theirs), and the index set of each `{…}` in the
    pattern (a single index is written into the pattern and listed here too). `folding.expand(pattern)` is
    its keys."""
    return {"pattern": group.pattern, "count": group.count, "params": group.elements(elements),
            "indices": [list(values) for values in group.indices]}


def report_dict(report: Report, rows: bool = True) -> dict[str, Any]:
    """The whole report as the JSON contract's object (`layers` empty with rows=False, for json_chunks)."""
    settings = report.settings
    schemes = schemes_used(report.distinct_rows)
    modes = modes_used(report.distinct_rows)
    recipe = report.recipe
    out: dict[str, Any] = {
        "fancli": SCHEMA_VERSION,
        "command": report.command,
        "source": {"path": report.source, "format": report.format, "name": report.model_name,
                   "notes": list(report.notes)},
        "settings": {
            "scheme": schemes[0] if len(schemes) == 1 else settings.scheme,
            "recipe": recipe.name if recipe else None,
            "recipe_from": report.recipe_from if recipe else None,
            "nonlinearity": settings.nonlinearity,
            "param": _float(settings.param),
            "fans": report.fan_convention,
            "pool_fan_out": report.pool_fan_out,
        },
    }
    if report.command == "compare":
        out["settings"]["modes"] = list(report.modes)
    else:
        out["settings"]["mode"] = modes[0] if len(modes) == 1 else None
    out["layers"] = [layer_dict(row, report.command) for row in report.rows] if rows else []
    out["groups"] = [groups_dict(group) for group in report.groups]
    out["summary"] = totals_dict(report)
    if report.command == "compare":
        computable = [row for row in report.rows if row.spread is not None]
        out["summary"] |= {
            "layers": len(report.rows),
            "with_fans": len(computable),
            "modes_agree": sum(1 for row in computable if row.spread <= 1 + 1e-9),
            "most_disagreeing": [row.layer.param for row in report.most_disagreeing()],
        }
    return out


#: Layer lines per piece written: a few hundred KB, so a 90,000-row report is never one 60 MB string.
LINES_PER_CHUNK = 1000


#: All that `layer_dict` reads of a row but its layer, notes, fans and inits (keyed by identity: rows that share
#: their analysis, `report._analyze_all`, share those objects, which the report keeps alive) and what --stats,
#: --infer and --spectral add; then all it reads of the layer but its names: one C call each.
_ROW_READ = operator.attrgetter("nonlinearity", "nonlinearity_param", "gain", "scheme_gain", "scheme", "recipe")
_LAYER_READ = operator.attrgetter("kind", "shape", "dtype", "aliases", "hf_name", "layout", "groups", "transposed",
                                  "stacked", "stride", "dilation", "pool", "fan_axes")


def _layer_chunks(report: Report) -> Iterator[str | bytes]:
    """The rows' JSON lines, made safe (`json_safe`), LINES_PER_CHUNK at a time joined by ",\n": by `Kin` where
    the report knows which rows are alike, at least two rows a kind (with --stats each row is its own: its
    line is written as it is made, not kept), and none names its HF key; else row by row."""
    alike, rows = report.alike, report.rows
    if alike is not None and 2 * len(alike.firsts) > len(alike.ids):
        alike = None
    if alike is not None and isinstance(rows, RowTable):  # names from its columns: no Row made
        if not any(map(_HF_NAME, rows.templates)):
            return _kin_chunks(report.command, alike, rows.names, rows.params)
    elif alike is not None and not any(map(_HF_NAME, rows)):
        return _kin_chunks(report.command, alike, list(map(_NAME, rows)), list(map(_PARAM, rows)))
    return _joined(_row_lines(report))


_NAME, _PARAM, _HF_NAME = (operator.attrgetter(f"layer.{name}") for name in ("name", "param", "hf_name"))


def _kin_chunks(command: str, alike: Kin, names: list[str], params: list[str]) -> Iterator[bytes]:
    """The lines of rows alike as `alike` says, with these names and keys, in chunks: rows of one number differ
    in "name" and "param" alone (neither names an HF key), the first two keys; the rest of the line is
    serialised (and made safe) once per number, and a chunk is one join of its names, keys and those rests.
    Chunks are UTF-8 bytes, joined from bytes: a rest with one non-ASCII character (a note's `×`) would make
    every chunk of text four times slower to write (its 60 MB encoded character by character)."""
    rests = {}  # number -> its line after the param's, then the next line up to its name
    last = {}  # number -> its line after the param's, where it ends a chunk
    for number, row in alike.firsts.items():
        out = layer_dict(row, command)
        del out["name"], out["param"]
        rest = ", " + json_safe(json.dumps(out, ensure_ascii=False, allow_nan=False)[1:])
        last[number], rests[number] = rest.encode(), (rest + ',\n    {"name": ').encode()
    encode = json.encoder.encode_basestring  # what json.dumps(str, ensure_ascii=False) writes
    ids = alike.ids
    for start in range(0, len(ids), LINES_PER_CHUNK):
        stop = start + LINES_PER_CHUNK
        some_names, some_params = "\n".join(map(encode, names[start:stop])), "\n".join(map(encode, params[start:stop]))
        if not (some_names.isascii() and some_params.isascii()):  # json_safe's first test; it keeps no raw newline
            some_names, some_params = json_safe(some_names), json_safe(some_params)
        count = min(stop, len(ids)) - start
        parts: list[bytes] = [b'    {"name": '] * (4 * count + 1)
        parts[1::4] = some_names.encode().split(b"\n")  # an encoded string holds no raw newline
        parts[2::4] = repeat(b', "param": ', count)
        parts[3::4] = some_params.encode().split(b"\n")
        parts[4::4] = map(rests.__getitem__, ids[start:stop])
        parts[-1] = last[ids[start + count - 1]]
        yield b"".join(parts)


def _row_lines(report: Report) -> Iterator[str]:
    """The lines row by row. Rows alike in all `layer_dict` reads (`_ROW_READ`,
    `_LAYER_READ`, the same fans and inits objects) but their names and notes differ only in "name" and
    "param", the first two keys, and "notes", the last one without --stats: the middle of the line is
    serialised (and made safe) once per distinct row, the notes once per distinct notes, not once per tensor
    (92,000 dumps of a MoE checkpoint)."""
    encode = json.encoder.encode_basestring  # what json.dumps(str, ensure_ascii=False) writes
    middles: dict[tuple, str] = {}
    notes_json: dict[tuple[str, ...], str] = {}
    for row in report.rows:
        layer = row.layer
        name, param = encode(layer.name), encode(layer.param)
        if not (name.isascii() and param.isascii()):  # json_safe's own first test, without its two calls
            name, param = json_safe(name), json_safe(param)
        middle = key = None
        if row.observed is None and row.inferred is None and row.spectral is None:
            key = (id(row.fans), id(row.inits), _ROW_READ(row), _LAYER_READ(layer))
            try:
                middle = middles.get(key)
            except TypeError:  # a loader left a list where a tuple belongs: computed as it is
                key = None
        if key is None:
            out = layer_dict(row, report.command)
            del out["name"], out["param"]
            yield f'    {{"name": {name}, "param": {param}, ' + json_safe(
                json.dumps(out, ensure_ascii=False, allow_nan=False)[1:])
            continue
        if middle is None:
            out = layer_dict(row, report.command)
            del out["name"], out["param"], out["notes"]  # notes is the last key: written below
            middle = middles[key] = json_safe(json.dumps(out, ensure_ascii=False, allow_nan=False)[1:-1])
        notes = notes_json.get(row.notes)
        if notes is None:
            notes = notes_json[row.notes] = json_safe(json.dumps(list(row.notes), ensure_ascii=False))
        yield f'    {{"name": {name}, "param": {param}, {middle}, "notes": {notes}}}'


def json_array(key: str, lines: Iterable[str]) -> Iterator[str]:
    """`"key": [` and its items, one per line, a chunk of LINES_PER_CHUNK at a time (taken in C)."""
    return json_array_of_chunks(key, _joined(lines))


def _joined(lines: Iterable[str]) -> Iterator[str]:
    """The lines LINES_PER_CHUNK at a time, joined by ",\n" (none is empty: each is an item)."""
    lines = iter(lines)
    return iter(lambda: ",\n".join(islice(lines, LINES_PER_CHUNK)), "")


def json_array_of_chunks(key: str, chunks: Iterable[str | bytes]) -> Iterator[str | bytes]:
    """`"key": [` and its items, one per line, given as chunks of lines joined by ",\n" (text or UTF-8)."""
    opened = False
    for chunk in chunks:
        yield ",\n" if opened else f',\n  "{key}": [\n'
        yield chunk  # as it is: not copied to put the separator before it
        opened = True
    yield "\n  ]" if opened else f',\n  "{key}": []'


def json_chunks(report: Report) -> Iterator[str | bytes]:
    """The report as JSON, in pieces to be written as they come (text, or UTF-8 bytes: `_kin_chunks`):
    indented at the top, one layer per line (readable, greppable, and fast for 90,000 layers: json's C
    encoder runs only without indentation).
    Strings keep their real value; characters a terminal would act on are written as escapes (`json_safe`)."""
    document = report_dict(report, rows=False)
    del document["layers"]
    groups = document.pop("groups")
    summary = document.pop("summary")
    yield json_safe(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)[:-2])
    yield from json_array_of_chunks("layers", _layer_chunks(report))
    yield from json_array("groups", (f"    {json_safe(json.dumps(item, ensure_ascii=False, allow_nan=False))}"
                                 for item in groups))
    yield f',\n  "summary": {json_safe(json.dumps(summary, ensure_ascii=False, allow_nan=False))}\n}}\n'
