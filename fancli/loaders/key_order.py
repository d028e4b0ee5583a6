"""Model order for sources that do not keep it: a key's natural order, numbers compared as numbers.

safetensors writers sort tensors (by dtype, then name) and transformers sorts an index's weight_map by
key, so `layers.10` comes before `layers.2` and the report would not read in model order. Comparing the
digit runs of a key as numbers restores the order in which numbered blocks were built.
"""

from __future__ import annotations

import functools
import re
import sys
from array import array
from itertools import islice, repeat
from operator import itemgetter, le
from typing import Callable, Iterable

from ..columns import digit_templates

_DIGITS = re.compile(r"([0-9]+)")


#: Digit runs longer than this compare by their length (ties broken by the whole key): int() refuses runs
#: past Python's limit on integer digits (4,300, or less where PYTHONINTMAXSTRDIGITS says so).
LONGEST_NUMBER = min(4000, getattr(sys, "get_int_max_str_digits", lambda: 0)() or 4000)
_BEYOND = 10**LONGEST_NUMBER


def natural_key(key: str) -> tuple[list, str]:
    """`layers.2.weight` < `layers.10.weight`: digit runs compare as numbers, the rest as text. The split
    alternates text and digit runs, so two keys' lists hold text against text and numbers against numbers
    at every position (a key that ends where another goes on sorts first); the key itself breaks ties, so
    `007` and `7` still sort one way every time."""
    parts: list = _DIGITS.split(key)  # text, digits, text, …: the digit runs are the odd items
    for index in range(1, len(parts), 2):  # runs once per tensor of a 92,000-key index: no call per part
        digits = parts[index]
        if len(digits) <= LONGEST_NUMBER:
            parts[index] = int(digits)
        else:
            parts[index] = _BEYOND * len(digits.lstrip("0") or "0")
    return parts, key


def is_sorted(keys: list[str]) -> bool:
    """Whether `keys` are in plain sorted order: what a writer that sorts, not the model, decided."""
    return all(map(le, keys, islice(keys, 1, None)))


class _TooLong(Exception):
    """A digit run past LONGEST_NUMBER: compared by its length, which `natural_sorted`'s strings do not write."""


class _Runs(dict):
    """Digit run -> how `natural_sorted` writes it: NUL, one character for the length of its value (leading
    zeros dropped, 0 kept), the value's digits. Equal values write alike; a shorter value sorts first, then the
    digits decide, as ints do."""

    def __missing__(self, digits: str) -> str:
        if len(digits) > LONGEST_NUMBER:
            raise _TooLong
        value = digits.lstrip("0") or "0"
        written = self[digits] = f"\0{chr(0x30 + len(value))}{value}"
        return written


def natural_sorted(keys: Iterable[str]) -> list[str]:
    """`sorted(keys, key=natural_key)`, twice as fast on 90,000 keys (`natural_order`)."""
    return natural_order(keys)[0]


def natural_order(keys: Iterable[str]) -> tuple[list[str], list[str] | None]:
    """`sorted(keys, key=natural_key)`, and each sorted key's digit template (`columns.digit_templates`, one
    string a template, which folding reads again), or None where the keys sort by natural_key. Each key
    compares as one string with every digit run written by `_Runs`. NUL sorts before any text character, so
    where one key has text and the other a number, or one ends, the order is natural_key's; both write a
    number at the same place only after the same text. A key holding a NUL, or a run natural_key compares by
    length, sorts by natural_key.

    Keys are grouped by their template: in a group every key has its runs at the same places and of the same
    lengths, so where no run of two or more digits starts with a 0 their strings are the key with `\\0` and
    the run's length put before each run (what `_Runs` writes), built by one format string per group, not a
    regex call per key."""
    keys = list(keys)
    split = digit_templates(keys)
    if split is None:
        return sorted(keys, key=natural_key), None
    groups: dict[str, list[str]] = {}
    for template, key in zip(split, keys):
        members = groups.get(template)
        if members is None:
            groups[template] = [key]
        else:
            members.append(key)
    runs = _Runs()
    written = functools.partial(_DIGITS.sub, lambda match: runs[match[0]])
    rows: list[tuple[str, str, str]] = []
    try:
        for template, members in groups.items():
            rows.extend(zip(_written(template, members, written), members, repeat(template)))
    except _TooLong:
        return sorted(keys, key=natural_key), None
    rows.sort()  # by the written string, then the key (two keys may write alike: `07` and `7`)
    return list(map(itemgetter(1), rows)), list(map(itemgetter(2), rows))


_RUN = re.compile("\0+")


def _written(template: str, members: list[str], written: Callable[[str], str]) -> Iterable[str]:
    """The strings `_Runs` writes for keys of one template: the template written once, with `\\0` and the
    length before each run, repeated, and each digit column of the keys copied into it (`_columns_copied`),
    unless a run of two or more digits starts with a 0 (its value is shorter than its run) or is longer than
    LONGEST_NUMBER, or a key holds a newline (then `written`, a regex call per key)."""
    spans = [match.span() for match in _RUN.finditer(template)]
    if not spans:
        return members
    joined = "\n".join(members)
    if any(end - start > LONGEST_NUMBER for start, end in spans) or joined.count("\n") != len(members) - 1 or any(
            end - start > 1 and "0" in joined[start :: len(template) + 1] for start, end in spans):
        return map(written, members)
    cuts = [0, *(start for start, _ in spans), len(template)]
    form = template[: cuts[1]] + "".join(f"\0{chr(0x30 + end - start)}" + template[start:after]  # never a \n
                                         for (start, end), after in zip(spans, cuts[2:]))
    return _columns_copied(joined, len(template), form, spans, len(members))


#: Keys as fixed-width code units, for `_columns_copied`: one byte a character where all are ASCII, else four
_WIDE = ("I", "utf-32-le" if sys.byteorder == "little" else "utf-32-be")


def _columns_copied(joined: str, width: int, form: str, spans: list[tuple[int, int]], count: int) -> list[str]:
    """`form` (the template as `_Runs` writes it) once per key, each run's digits copied from the keys
    (`joined`: `count` keys of `width` characters, newline-separated) by one strided slice per digit column,
    in C: a key's characters lie at a fixed stride in `joined`, and its written ones in the result."""
    typecode, codec = ("B", "ascii") if joined.isascii() and form.isascii() else _WIDE  # a run of 80 digits: ≥ 0x80
    keys = array(typecode, joined.encode(codec, "surrogatepass"))
    out = array(typecode, (form + "\n").encode(codec, "surrogatepass") * count)
    stride, shift = len(form) + 1, 0
    for start, end in spans:
        shift += 2  # the NUL and the length before each run
        for column in range(start, end):
            out[column + shift :: stride] = keys[column :: width + 1]
    return out.tobytes().decode(codec, "surrogatepass").split("\n")[:-1]
