"""Folding: a model of 90,000 tensors is a few distinct layers repeated, so a table shows each once.

Rows whose keys differ only in their numeric components (`layers.3.mlp.experts.17.…`) and that agree
in everything a table shows fold into one group, named by a pattern with the exact index sets:
`layers.{0..2,4..7}.mlp.experts.{0..255}.gate_proj.weight`. A pattern never claims a key that is not
there: a multi-index set that is not a full product becomes several exact patterns. Pure functions of a
report's rows, computed once per report (`Report.groups`); renderers only format the groups.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")
#: A report's row (`fancli.report.Row`): folding reads its fields and never imports the report, which folds.
Row = Any

#: Observed stds of neighbours (sorted) further apart than this many standard errors start a new group.
STD_ERRORS = 3.0

Template = tuple  # the key's components, None where an index stands
IndexSets = tuple  # one sorted tuple of ints per index position


@dataclass(frozen=True)
class Group:
    """Rows shown as one: the pattern of their keys, the index sets it stands for, and the members in
    model order (the first stands for all in every shared column)."""

    pattern: str
    indices: tuple[tuple[int, ...], ...]  # per index position of the pattern, its values ascending
    rows: tuple[Any, ...]

    @property
    def row(self) -> Any:
        return self.rows[0]

    @property
    def count(self) -> int:
        return len(self.rows)

    def elements(self, size: Callable[[Any], int]) -> int:
        """All members' elements, `size` of one member: count × the first's, as members share their shape
        (every folding rule compares it)."""
        return self.count * size(self.row)


#: Digits an index part may have (an int64's); a longer run of digits is a name.
MAX_INDEX_DIGITS = 18


def split_key(key: str) -> tuple[Template, tuple[int, ...]]:
    """`layers.3.mlp.weight` -> (("layers", None, "mlp", "weight"), (3,)). An index is a part of at most
    MAX_INDEX_DIGITS ASCII digits without a leading zero (`007` is a name, not 7; so is a run of thousands of
    digits, which `int` refuses). One loop, no call per part: it runs once per row."""
    parts: list = key.split(".")
    indices = []
    for position, part in enumerate(parts):
        if part.isdigit() and part.isascii() and (part[0] != "0" or len(part) == 1) and len(part) <= MAX_INDEX_DIGITS:
            indices.append(int(part))
            parts[position] = None
    return tuple(parts), tuple(indices)


def ranges(values: Sequence[int]) -> str:
    """Ascending ints as exact ranges: 0,1,2,3,5,7,8,9 -> `0..3,5,7..9` (a run of two stays listed)."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            run = values[start:i]
            out.append(f"{run[0]}..{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            start = i
    return ",".join(out)


def pattern(template: Template, indices: IndexSets) -> str:
    """The template with each index position written as its value, or `{ranges}` where it has several."""
    sets = iter(indices)
    parts = []
    for part in template:
        if part is not None:
            parts.append(part)
            continue
        values = next(sets)
        parts.append(str(values[0]) if len(values) == 1 else "{" + ranges(values) + "}")
    return ".".join(parts)


def expand(text: str) -> list[str]:
    """Every key a pattern stands for, in natural order: the inverse of `pattern` (keys without braces)."""
    choices = []
    for part in re.split(r"\.(?![^{}]*\})", text):  # the dots outside braces
        if part.startswith("{") and part.endswith("}"):
            values: list[str] = []
            for item in part[1:-1].split(","):
                low, _, high = item.partition("..")
                values += map(str, range(int(low), int(high or low) + 1))
            choices.append(values)
        else:
            choices.append([part])
    return [".".join(parts) for parts in product(*choices)]


def products(tuples: set[tuple[int, ...]]) -> list[IndexSets]:
    """An exact partition of a set of index tuples into products of index sets, in natural order.

    First indices whose remaining tuples are the same set share one product (layers × experts stays one
    pattern); where they differ (layer 2 lacks expert 5) each distinct remainder gets its own.
    """
    width = len(next(iter(tuples)))
    if width == 0:
        return [()]
    if width == 1:
        return [(tuple(sorted(t[0] for t in tuples)),)]
    rests: dict[int, set] = defaultdict(set)
    for t in tuples:
        rests[t[0]].add(t[1:])
    firsts: dict[frozenset, list[int]] = defaultdict(list)
    for first, rest in rests.items():
        firsts[frozenset(rest)].append(first)
    found = [(tuple(sorted(heads)),) + tail for rest, heads in firsts.items() for tail in products(set(rest))]
    return sorted(found, key=lambda sets: tuple(s[0] for s in sets))


def fold(items: Sequence[T], key: Callable[[T], str], same: Callable[[T], Hashable],
         split: Callable[[list[T]], list[list[T]]] = lambda members: [members]) -> list[Group]:
    """Groups of `items` (in order of their first member) whose keys share a template and whose `same`
    values are equal; `split` may part such a set further (observed values that disagree). Every item is
    in exactly one group; a group's pattern expands to exactly its members' keys.

    Each candidate keeps its first member's order and its members and indices side by side: where `split`
    keeps the members whole, they are in model order already, and one product is the whole set; the other
    members' orders are looked up only where a group may start past the first (`order`)."""
    candidates: dict[tuple, tuple[int, list[T], list[tuple[int, ...]]]] = {}
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple per distinct indices: a layer and expert's
    for first, item in enumerate(items):  # (3, 17) are those of its 6 weights and scales
        template, indices = split_key(key(item))
        indices = seen.setdefault(indices, indices)
        candidate = (template, same(item))
        found = candidates.get(candidate)
        if found is None:
            candidates[candidate] = (first, [item], [indices])
        else:
            found[1].append(item)
            found[2].append(indices)
    positions: dict[int, int] = {}  # id(item) -> its order, filled at the first lookup

    def order(item: T) -> int:
        if not positions:
            positions.update((id(each), position) for position, each in enumerate(items))
        return positions[id(item)]

    groups: list[tuple[int, Group]] = []
    for (template, _), (first, members, indices) in candidates.items():
        if len(members) == 1:  # most candidates of a large model: its key is its pattern (indices as written)
            groups.append((first, Group(key(members[0]), tuple((i,) for i in indices[0]), (members[0],))))
            continue
        parts = split(members)
        if len(parts) == 1 and parts[0] is members:  # kept whole: in model order, indices as listed
            groups += _product_groups(template, first, members, indices, key, order)
            continue
        index_of = {id(item): index for item, index in zip(members, indices)}
        for part in parts:
            part = sorted(part, key=order)
            groups += _product_groups(template, order(part[0]), part, [index_of[id(item)] for item in part], key,
                                      order)
    return [group for _, group in sorted(groups, key=lambda pair: pair[0])]


def _product_groups(template: Template, first: int, members: list[T], indices: list[tuple[int, ...]],
                    key: Callable[[T], str], order: Callable[[T], int]) -> list[tuple[int, Group]]:
    """The groups of members of one template in model order (`first`: the first one's order), with their
    `indices`: one per exact product of index sets, each with the order of its first member."""
    indexed = dict(zip(indices, members))
    if len(indexed) < len(members):  # two keys with one template and indices: not foldable, keep each
        return [(order(item), Group(key(item), (), (item,))) for item in members]
    found = products(set(indexed))
    if len(found) == 1:  # one product is the whole set: no product to enumerate, already in order
        return [(first, Group(pattern(template, found[0]), found[0], tuple(members)))]
    groups = []
    for sets in found:
        rows = sorted((order(indexed[t]), indexed[t]) for t in product(*sets))
        groups.append((rows[0][0], Group(pattern(template, sets), sets, tuple(item for _, item in rows))))
    return groups


# --- a report's rows ------------------------------------------------------------------------------------


def _inits(row: Row) -> tuple:
    return tuple((mode, v.std, v.bound, v.sampling_std, v.note) for mode, v in row.inits.items())


def shown(row: Row, inits: Callable[[Row], tuple] = _inits) -> Hashable:
    """Everything a table shows of a row but its name and its observed values: rows fold only where all of
    it is equal."""
    layer, fans = row.layer, row.fans
    inits = inits(row)
    inferred = (row.inferred.label, row.inferred.confidence, row.inferred.note) if row.inferred else None
    return (layer.kind, layer.shape, layer.dtype, fans.fan_in, fans.fan_out, fans.effective_fan_in,
            fans.effective_fan_out, fans.unknown, row.nonlinearity, row.gain, row.scheme, inits, row.notes,
            row.observed is None, inferred)


def standard_error(std: float, n: int) -> float:
    """σ/√(2n): the standard error of a sample std of n values (inf with none)."""
    return std / math.sqrt(2 * n) if n > 0 else math.inf


def chain(items: list[T], value: Callable[[T], Any], close: Callable[[T, T], bool]) -> list[list[T]]:
    """`items` sorted by `value`, parted where `close(previous, next)` fails; items without a value (None)
    first, as one part."""
    unread = [item for item in items if value(item) is None]
    read = sorted((item for item in items if value(item) is not None), key=value)
    parts: list[list[T]] = []
    for item in read:
        if parts and close(parts[-1][-1], item):
            parts[-1].append(item)
        else:
            parts.append([item])
    return [unread, *parts] if unread else parts


def by_std(items: list[T], std_of: Callable[[T], tuple[float | None, int]]) -> list[list[T]]:
    """Items whose stds agree (`std_of`: the std and the values it is taken over): sorted by std, a new part
    starts where two neighbours are more than STD_ERRORS standard errors apart. A member drawn at another
    std parts from the rest; a spread of many draws of one std (each within noise of the next) stays one
    group, whose row shows the range. Inspect's rows, diff's and trajectories' fold by this one rule."""
    def close(a: T, b: T) -> bool:
        (std_a, n_a), (std_b, n_b) = std_of(a), std_of(b)
        return std_b - std_a <= STD_ERRORS * max(standard_error(std_a, n_a), standard_error(std_b, n_b))

    return chain(items, lambda item: std_of(item)[0], close)


def _observed_std(row: Row) -> tuple[float | None, int]:
    observed = row.observed
    return (None, 0) if observed is None else (observed.std, observed.count - observed.nonfinite)


def by_observed_std(rows: list[Row]) -> list[list[Row]]:
    """Rows whose observed stds agree (`by_std`); without statistics, all of them as they come."""
    if all(row.observed is None for row in rows):
        return [rows]
    return by_std(rows, _observed_std)


def fold_rows(rows: Iterable[Row]) -> list[Group]:
    """The groups a table shows for these rows (singletons included)."""
    rows = list(rows)
    seen: dict[int, tuple] = {}  # rows that share their analysis share its inits dict: one tuple each

    def inits(row: Row) -> tuple:
        found = seen.get(id(row.inits))
        if found is None:
            found = seen[id(row.inits)] = _inits(row)
        return found

    return fold(rows, lambda row: row.layer.param, lambda row: shown(row, inits), by_observed_std)


def singletons(rows: Iterable[Row]) -> list[Group]:
    """One group per row: the table with --expand."""
    return [Group(row.layer.param, (), (row,)) for row in rows]
