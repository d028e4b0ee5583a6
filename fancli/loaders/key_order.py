"""Model order for sources that do not keep it: a key's natural order, numbers compared as numbers.

safetensors writers sort tensors (by dtype, then name) and transformers sorts an index's weight_map by
key, so `layers.10` comes before `layers.2` and the report would not read in model order. Comparing the
digit runs of a key as numbers restores the order in which numbered blocks were built.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Iterable

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
    return all(a <= b for a, b in zip(keys, keys[1:]))


class _TooLong(Exception):
    """A digit run past LONGEST_NUMBER: compared by its length, which `natural_sorted`'s strings do not write."""


class _Runs(dict):
    """Digit run -> how `natural_sorted` writes it: NUL, one character for the length of its value (leading
    zeros dropped), the value's digits. Equal values write alike; a shorter value sorts first, then the
    digits decide, as ints do."""

    def __missing__(self, digits: str) -> str:
        if len(digits) > LONGEST_NUMBER:
            raise _TooLong
        value = digits.lstrip("0")
        written = self[digits] = f"\0{chr(0x30 + len(value))}{value}"
        return written


def natural_sorted(keys: Iterable[str]) -> list[str]:
    """`sorted(keys, key=natural_key)`, a third faster on 90,000 keys: each key compares as one string with
    every digit run written by `_Runs`. NUL sorts before any text character, so where one key has text and
    the other a number, or one ends, the order is natural_key's; both write a number at the same place only
    after the same text. A key holding a NUL, or a run natural_key compares by length, sorts by natural_key."""
    keys = list(keys)
    if any("\0" in key for key in keys):
        return sorted(keys, key=natural_key)
    runs = _Runs()
    written = functools.partial(_DIGITS.sub, lambda match: runs[match[0]])
    try:
        return sorted(keys, key=lambda key: (written(key), key))
    except _TooLong:
        return sorted(keys, key=natural_key)
