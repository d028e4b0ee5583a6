"""Folding: a model of 90,000 tensors is a few distinct layers repeated, so a table shows each once.

Rows whose keys differ only in their numeric components (`layers.3.mlp.experts.17.…`) and that agree
in everything a table shows fold into one group, named by a pattern with the exact index sets:
`layers.{0..2,4..7}.mlp.experts.{0..255}.gate_proj.weight`. A pattern never claims a key that is not
there: a multi-index set that is not a full product becomes several exact patterns. Pure functions of a
report's rows, computed once per report (`Report.groups`); renderers only format the groups.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections import Counter, defaultdict
from itertools import islice, product, repeat
from operator import itemgetter
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence, TypeVar

from .columns import Numbering, digit_templates
from .records import record

T = TypeVar("T")
#: A report's row (`fancli.report.Row`): folding reads its fields and never imports the report, which folds.
Row = Any

#: Observed stds of neighbours (sorted) further apart than this many standard errors start a new group.
STD_ERRORS = 3.0

Template = tuple  # the text of "." + key between its index parts (one more than the indices)
IndexSets = tuple  # one sorted tuple of ints per index position


@record
class Group:
    """Rows shown as one: the pattern of their keys, the index sets it stands for, and the members in
    model order (the first stands for all in every shared column)."""

    pattern: str
    indices: tuple[tuple[int, ...], ...]  # per index position of the pattern, its values ascending
    rows: Sequence[Any]  # a tuple, or a report's rows made when read (`report.RowTable.take`)

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
#: An index part: at most MAX_INDEX_DIGITS ASCII digits without a leading zero (`007` is a name, not 7; so is a
#: run of thousands of digits, which `int` refuses), between two dots of "." + key or after its last one.
_INDEX = rf"\.(0|[1-9][0-9]{{0,{MAX_INDEX_DIGITS - 1}}})"
_INDEX_IN_KEY = re.compile(_INDEX + r"(?=\.|\Z)")
_INDEX_IN_LINES = re.compile(_INDEX + r"(?=[.\n])")  # in keys joined as lines, none holding a newline
_MARK = "\0"  # stands for an index in a line of `split_keys`, where no key holds one


def split_key(key: str) -> tuple[Template, tuple[int, ...]]:
    """`layers.3.mlp.weight` -> ((".layers", ".mlp.weight"), (3,)): the text of "." + key around its index
    parts, and their values; two keys fold only where the first is equal."""
    parts = _INDEX_IN_KEY.split("." + key)
    return tuple(parts[::2]), tuple(map(int, parts[1::2]))


class _Templates(dict):
    """A line of `split_keys` (its indices marked) -> its template and how many indices it has."""

    def __missing__(self, line: str) -> tuple[Template, int]:
        template = tuple(line.split(_MARK))
        found = self[line] = (template, len(template) - 1)
        return found


#: Keys split in one pass: its text and pieces stay a few hundred KB (all 92,000 keys at once were 40 MB).
KEYS_PER_PASS = 2048


def split_keys(keys: list[str]) -> Iterator[tuple[Template, tuple[int, ...]]]:
    """`split_key` of each key, in one regular-expression pass per KEYS_PER_PASS keys joined as lines (a call
    per key costs more than the pass): the text around the indices, joined by a mark, gives each line's
    template, once per distinct line, and the indices come in order; keys holding a newline or the mark are
    split one by one. Equal templates and indices share one tuple (a layer and expert's (3, 17) is that of
    its 6 weights and scales). A pass is made as its keys are read: what it makes is kept only that long."""
    templates: _Templates = _Templates()
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}

    def one_pass(start: int) -> Iterator[tuple[Template, tuple[int, ...]]]:
        some = keys[start:start + KEYS_PER_PASS]
        text = "." + "\n.".join(some) + "\n"
        if text.count("\n") != len(some) or _MARK in text:
            return map(split_key, some)
        parts = _INDEX_IN_LINES.split(text)
        lines = _MARK.join(parts[::2]).split("\n")
        lines.pop()  # after the last newline
        shared, counts = zip(*map(templates.__getitem__, lines))
        values = iter(map(int, parts[1::2]))
        indices = list(map(tuple, map(islice, repeat(values), counts)))  # each line's, in C loops
        return zip(shared, map(seen.setdefault, indices, indices))

    return itertools.chain.from_iterable(map(one_pass, range(0, len(keys), KEYS_PER_PASS)))


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
    """The key of `template` with each index position written as its value, or `{ranges}` where it has
    several."""
    parts = [template[0]]
    for values, text in zip(indices, template[1:]):
        parts.append("." + (str(values[0]) if len(values) == 1 else "{" + ranges(values) + "}") + text)
    return "".join(parts)[1:]


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
        return [(tuple(sorted(map(operator.itemgetter(0), tuples))),)]
    sets = [set(map(operator.itemgetter(position), tuples)) for position in range(width)]
    if math.prod(map(len, sets)) == len(tuples):  # as many as the product of their values: that product
        return [tuple(tuple(sorted(values)) for values in sets)]
    rests: dict[int, set] = defaultdict(set)
    for t in tuples:
        rests[t[0]].add(t[1:])
    firsts: dict[frozenset, list[int]] = defaultdict(list)
    for first, rest in rests.items():
        firsts[frozenset(rest)].append(first)
    found = [(tuple(sorted(heads)),) + tail for rest, heads in firsts.items() for tail in products(set(rest))]
    return sorted(found, key=lambda sets: tuple(s[0] for s in sets))


def fold(items: Sequence[T], key: Callable[[T], str], same: Callable[[T], Hashable] | Iterable[Hashable],
         split: Callable[[list[T]], list[list[T]]] = lambda members: [members]) -> list[Group]:
    """Groups of `items` (in order of their first member) whose keys share a template and whose `same`
    values are equal (`same`: a function of an item, or the items' values in order); `split` may part such a
    set further (observed values that disagree). Every item is in exactly one group; a group's pattern
    expands to exactly its members' keys.

    A candidate (a template and a value) is numbered in order of its first member, each item's number in
    one C pass; one stable sort of the positions by number lists each candidate's members in model order,
    side by side with their indices. Where `split` keeps the members whole, one product is the whole set;
    the other members' orders are looked up only where a group may start past the first (`order`)."""
    items = list(items)
    if not items:
        return []
    templates, all_indices = zip(*split_keys(list(map(key, items))))
    values = map(same, items) if callable(same) else same
    numbering: dict[tuple, int] = {}  # candidate -> its number: increasing in order of first appearance
    numbers = list(map(numbering.setdefault, zip(templates, values), itertools.count()))
    by_candidate = sorted(range(len(items)), key=numbers.__getitem__)
    candidates: list[tuple[Template, int, list[T], list[tuple[int, ...]]]] = []
    start = 0
    for (template, _), size in zip(numbering, map(Counter(numbers).__getitem__, numbering.values())):
        at = by_candidate[start:start + size]
        start += size
        candidates.append((template, at[0], list(map(items.__getitem__, at)), list(map(all_indices.__getitem__, at))))
    positions: dict[int, int] = {}  # id(item) -> its order, filled at the first lookup

    def order(item: T) -> int:
        if not positions:
            positions.update((id(each), position) for position, each in enumerate(items))
        return positions[id(item)]

    groups: list[tuple[int, Group]] = []
    for template, first, members, indices in candidates:
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


def shown(row: Row, inits_of: dict[int, tuple] | None = None) -> Hashable:
    """Everything a table shows of a row but its name and its observed values: rows fold only where all of
    it is equal. `inits_of` keeps each inits dict's tuple by its id: rows that share their analysis share
    that dict, which they keep alive."""
    layer, fans = row.layer, row.fans
    inits = None if inits_of is None else inits_of.get(id(row.inits))
    if inits is None:
        inits = _inits(row)
        if inits_of is not None:
            inits_of[id(row.inits)] = inits
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


_OBSERVED = operator.attrgetter("observed")


def by_observed_std(rows: list[Row]) -> list[list[Row]]:
    """Rows whose observed stds agree (`by_std`); without statistics, all of them as they come."""
    if all(map(operator.is_, map(_OBSERVED, rows), repeat(None))):  # in C: 90,000 rows of one group
        return [rows]
    return by_std(rows, _observed_std)


def fold_rows(rows: Iterable[Row]) -> list[Group]:
    """The groups a table shows for these rows (singletons included)."""
    inits_of: dict[int, tuple] = {}
    return fold(list(rows), _PARAM, lambda row: shown(row, inits_of), by_observed_std)


def fold_alike(params: list[str], kin: list[int], firsts: dict[int, Row],
               digits: list[str] | None = None) -> list[Group]:
    """`fold_rows` of rows without observed values given as their keys and `report.Kin` numbers (`firsts`: a
    row of each number): rows of one number show alike, so `shown` is read once per number, and keys are split
    once per digit template (`_fold_by_template`; `digits`: the keys', where known). The groups hold the rows'
    positions, which the report turns into its rows."""
    inits_of: dict[int, tuple] = {}
    alike: dict[Hashable, int] = {}  # numbers that show alike fold together: one value for them all
    value = {number: alike.setdefault(shown(row, inits_of), number) for number, row in firsts.items()}
    values = list(map(value.__getitem__, kin))
    digits = digits or digit_templates(params)
    if digits is None:  # a key holds a NUL
        return fold(range(len(params)), params.__getitem__, values)
    return _fold_by_template(params, digits, values)


class _IndexRuns(dict):
    """A digit template (`columns.digit_templates`) -> its keys' split template (`split_key`'s first item) and
    the spans of their index parts, where every run of digits is a whole part of at most MAX_INDEX_DIGITS; None
    where one is not (a digit in a name, `fc1`: its keys are split one by one)."""

    def __missing__(self, digits: str) -> tuple[Template, list[tuple[int, int]]] | None:
        dotted = "." + digits
        runs = [match.span() for match in _NULS.finditer(dotted)]
        whole = all(dotted[start - 1] == "." and (end == len(dotted) or dotted[end] == ".")
                    and end - start <= MAX_INDEX_DIGITS for start, end in runs)
        cuts = [0, *(edge for start, end in runs for edge in (start - 1, end)), len(dotted)]
        found = self[digits] = ((tuple(dotted[a:b] for a, b in zip(cuts[::2], cuts[1::2])),
                                 [(start - 1, end - 1) for start, end in runs]) if whole else None)
        return found


_NULS = re.compile("\0+")


def _fold_by_template(keys: list[str], digits: list[str], values: list[Hashable]) -> list[Group]:
    """`fold(keys' positions, …)` in passes over columns, not a call per key: keys of one digit template and
    value are split alike (`_IndexRuns`), their index parts cut by one slice per part; a candidate (a split
    template and a value) whose index sets' product has as many keys as it has is one group, its members in
    model order by one sort. Others (a leading zero, a digit in a name; a set that is no full product) are
    split and grouped as `fold` does."""
    gids = Numbering()
    of_group = list(map(gids.__getitem__, zip(digits, values)))
    order = sorted(range(len(keys)), key=of_group.__getitem__)  # stable: each group's keys in model order
    sizes = Counter(of_group)
    runs = _IndexRuns()
    candidates = Numbering()  # (split template, value) -> number
    found: list[list[tuple[list[int], list[list[str]]]]] = []  # per candidate: its groups' positions and parts
    start = 0
    for (digit, value), group in gids.items():
        at = order[start:start + sizes[group]]
        start += len(at)
        template, spans = runs[digit] or (None, [])
        some = list(map(keys.__getitem__, at))
        if template is None or any(end - begin > 1 and "0" in map(itemgetter(begin), some) for begin, end in spans):
            for position, key in zip(at, some):  # split as `split_key` splits it: indices written back as text
                split, indices = split_key(key)
                _add(found, candidates[split, value], [position], [[str(index)] for index in indices])
            continue
        _add(found, candidates[template, value], at, [list(map(itemgetter(slice(*span)), some)) for span in spans])
    groups: list[tuple[int, Group]] = []
    for (template, _), parts in zip(candidates, found):
        groups += _candidate_groups(template, parts, keys)
    return [group for _, group in sorted(groups, key=itemgetter(0))]


def _add(found: list, candidate: int, at: list[int], columns: list[list[str]]) -> None:
    """Keys at `at`, their index parts in `columns` (one list per part), to candidate number `candidate`."""
    if candidate == len(found):
        found.append([])
    found[candidate].append((at, columns))


def _candidate_groups(template: Template, parts: list[tuple[list[int], list[list[str]]]],
                      keys: list[str]) -> list[tuple[int, Group]]:
    """The groups of one candidate's keys (`parts`: positions and index parts, a digit template's at a time): one
    where their index sets' product is exactly them, else `_product_groups`'."""
    members = sorted(itertools.chain.from_iterable(at for at, _ in parts))
    width = len(template) - 1
    if len(members) == 1:
        return [(members[0], Group(keys[members[0]], tuple((int(column[0]),) for column in parts[0][1]),
                                   (members[0],)))]
    if width:
        sets = [set(itertools.chain.from_iterable(columns[p] for _, columns in parts)) for p in range(width)]
        tuples = set(itertools.chain.from_iterable(zip(*columns) for _, columns in parts))
        if len(tuples) == len(members) == math.prod(map(len, sets)):
            indices = tuple(tuple(sorted(map(int, values))) for values in sets)
            return [(members[0], Group(pattern(template, indices), indices, tuple(members)))]
    by_position = {}
    for at, columns in parts:
        by_position.update(zip(at, (tuple(map(int, texts)) for texts in zip(*columns)) if width else repeat(())))
    return _product_groups(template, members[0], members, list(map(by_position.__getitem__, members)),
                           keys.__getitem__, lambda position: position)


_PARAM = operator.attrgetter("layer.param")


def singletons(rows: Iterable[Row]) -> list[Group]:
    """One group per row: the table with --expand."""
    return [Group(row.layer.param, (), (row,)) for row in rows]
