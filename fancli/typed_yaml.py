"""Typed access to parsed YAML (and TOML) settings, shared by specs and the config: every error says
`file:line: path.key: what is wrong` (TOML keeps no lines: `file: path.key: …`).

Also the one way fancli parses YAML it is given: its size bounded before the parse, and the parse's
errors as one line with the line number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from . import yaml_lines
from .errors import SourceError

#: Sizes are torch's int64; a list of sizes (a raw shape, normalized_shape) has at most torch_zip's MAX_DIMS.
MAX_SIZE = 2**63 - 1
MAX_DIMS = 64
MISSING = object()


def check_nodes(text: str, file: str, limit: int, what: str, indicators: str = "[{,:-\n") -> None:
    """Refuse text whose parse would build more than `limit` values: PyYAML keeps ~500 bytes per node (tomllib
    ~100), and each value needs one of `indicators` (a 16 MB file of `[],` would need 3 GB)."""
    count = sum(map(text.count, indicators))
    if count > limit:
        shown = " ".join(indicators.replace("\n", ""))
        raise SourceError(f"{file}: more than {limit:,} values ({count:,} of {shown} and line ends), too large "
                          f"for {what}")


def parse_yaml(text: str, file: str, limit: int, what: str, merge_keys: bool = True) -> Any:
    """One YAML document with line numbers (`yaml_lines`), its size checked first; errors one line each.
    Without `merge_keys` a `<<` key is an error: each key must be written out where it applies."""
    check_nodes(text, file, limit, what)
    try:
        return yaml_lines.load(text, merge_keys)
    except yaml_lines.MergeKeyError as error:
        raise SourceError(f"{file}:{error.problem_mark.line + 1}: a merge key (<<) in {what}: write out each key "
                          "(so that a setting such as `trust: true` is always a line of its own)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SourceError(f"{where}: not valid YAML: {problem}") from None


@dataclass(frozen=True)
class At:
    """Where a value sits: file, YAML line and its path from the top (`layers[3]`)."""

    file: str
    path: str
    line: int | None  # None where the format keeps no lines (TOML)

    def error(self, message: str, key: str | None = None, line: int | None = None) -> SourceError:
        where = f"{self.path}.{key}" if key and self.path else (key or self.path)
        line = line or self.line
        prefix = f"{self.file}:{line}" if line else self.file
        return SourceError(f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}")

    def key_line(self, mapping: dict, key: Any) -> int | None:
        return getattr(mapping, "key_lines", {}).get(key, self.line)


def yaml_type(value: Any) -> str:
    """A value for an error message: short, and never a repr of a (possibly alias-bombed) container."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    return repr(value)


def key_text(key: Any) -> str:
    """A key for an error's path: as written if it is a short printable word, else quoted (one line)."""
    text = str(key)
    return text if text.isprintable() and len(text) <= 40 else repr(text[:40])


def suggest(word: str, options: tuple[str, ...] | list[str]) -> str:
    import difflib  # only when a key is wrong

    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Fields:
    """Typed access to one YAML mapping, with errors that point at the key's line."""

    def __init__(self, mapping: dict, at: At, allowed: tuple[str, ...]) -> None:
        self.mapping, self.at = mapping, at
        for key in mapping:
            if key not in allowed:
                raise at.error(f"unknown key{suggest(str(key), allowed)}", key_text(key), at.key_line(mapping, key))

    def error(self, key: str, message: str) -> SourceError:
        return self.at.error(message, key, self.at.key_line(self.mapping, key))

    def has(self, key: str) -> bool:
        return key in self.mapping and self.mapping[key] is not None

    def raw(self, key: str, default: Any = MISSING) -> Any:
        if not self.has(key):
            if default is MISSING:
                raise self.at.error(f"missing key {key!r}")
            return default
        return self.mapping[key]

    def int(self, key: str, default: Any = MISSING, minimum: int = 1) -> int:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        return self._check_int(key, value, minimum)

    def _check_int(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {yaml_type(value)}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if value > MAX_SIZE:
            raise self.error(key, "larger than 2**63 - 1, beyond any size torch can hold")
        return value

    def ints(self, key: str, dims: int | None, default: Any = MISSING, minimum: int = 1) -> tuple[int, ...]:
        """An int (repeated to `dims`) or a list of `dims` ints; `dims` None accepts any length ≥ 1."""
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, list):
            if not value or (dims is not None and len(value) != dims):
                raise self.error(key, f"expected {dims or 'at least 1'} values, got {len(value)}")
            if len(value) > MAX_DIMS:
                raise self.error(key, f"{len(value)} values; a tensor has at most {MAX_DIMS} dims")
            return tuple(self._check_int(key, v, minimum) for v in value)
        single = self._check_int(key, value, minimum)
        return (single,) * (dims or 1)

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {yaml_type(value)}")
        return value

    def str(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            raise self.error(key, f"expected a name, got {yaml_type(value)}")
        return value.strip()

    def number(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        try:  # an int beyond a float's range overflows
            finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            raise self.error(key, f"expected a number, got {yaml_type(value)}")
        return float(value)

    def one_of(self, key: str, options: tuple[str, ...], what: str, default: Any = None) -> Any:
        """A name from a closed vocabulary (a layout, a fan convention)."""
        value = self.str(key, default)
        if value is not default and value not in options:
            raise self.error(key, f"unknown {what} {value!r}; known: {', '.join(options)}{suggest(value, options)}")
        return value

    def choice(self, key: str, check: Callable[[str], Any], default: Any = None) -> Any:
        """A name validated by an analysis function (scheme, mode, nonlinearity)."""
        value = self.str(key, default)
        if value is default:
            return default
        try:
            check(value)
        except ValueError as error:
            raise self.error(key, str(error)) from None
        return value
