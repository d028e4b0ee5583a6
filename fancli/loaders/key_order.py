"""Model order for sources that do not keep it: a key's natural order, numbers compared as numbers.

safetensors writers sort tensors (by dtype, then name) and transformers sorts an index's weight_map by
key, so `layers.10` comes before `layers.2` and the report would not read in model order. Comparing the
digit runs of a key as numbers restores the order in which numbered blocks were built.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"([0-9]+)")


def _part(text: str, digits: bool) -> tuple:
    if not digits:
        return (1, text)
    value = text.lstrip("0")  # compared by length, then digit by digit: no int() of a 5,000-digit run
    return (0, len(value), value, len(text))


def natural_key(key: str) -> tuple[tuple, ...]:
    """`layers.2.weight` < `layers.10.weight`: digit runs compare as numbers, the rest as text (each part
    tagged so that a number and a word never compare with each other)."""
    parts = _DIGITS.split(key)  # text, digits, text, …: the digit runs are the odd items
    out = [(1, parts[0])] if parts[0] else []
    for index in range(1, len(parts), 2):  # `_part` inlined: this runs once per tensor of a 92,000-key index
        digits, text = parts[index], parts[index + 1]
        value = digits.lstrip("0")
        out.append((0, len(value), value, len(digits)))
        if text:
            out.append((1, text))
    return tuple(out)


def is_sorted(keys: list[str]) -> bool:
    """Whether `keys` are in plain sorted order: what a writer that sorts, not the model, decided."""
    return all(a <= b for a, b in zip(keys, keys[1:]))
