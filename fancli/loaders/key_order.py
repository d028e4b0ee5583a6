"""Model order for sources that do not keep it: a key's natural order, numbers compared as numbers.

safetensors writers sort tensors (by dtype, then name) and transformers sorts an index's weight_map by
key, so `layers.10` comes before `layers.2` and the report would not read in model order. Comparing the
digit runs of a key as numbers restores the order in which numbered blocks were built.
"""

from __future__ import annotations

import re
import sys

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
