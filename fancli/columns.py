"""What a model of 90,000 tensors that are a few hundred alike is kept as: columns, not 90,000 objects.

A sharded checkpoint's layers (`layer.LayerTable`) and a report's rows (`report.RowTable`) are each a
few distinct objects (templates) and, per key, its name and which template it copies. Readers that know the
columns (analysis, folding, the JSON lines) work once per template; every other reader sees a tuple, made
when first read (`LazyTuple`), so `model.layers` and `report.rows` keep their contract.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Hashable, Iterator, Sequence, TypeVar, overload

T = TypeVar("T")


_NUL_DIGITS = bytes.maketrans(b"0123456789", b"\0" * 10)
_NUL_DIGITS_TEXT = str.maketrans("0123456789", "\0" * 10)


def digit_templates(keys: list[str]) -> list[str] | None:
    """Each key with every digit turned into NUL, one bytes.translate for all (keys with a newline one by one):
    keys alike but for their numbers' digits have one template. None where a key holds a NUL itself."""
    text = "\n".join(keys)
    if "\0" in text:
        return None
    encoded = text.encode("utf-8", "surrogatepass").translate(_NUL_DIGITS)
    templates = encoded.decode("utf-8", "surrogatepass").split("\n")
    if len(templates) != len(keys):  # a key holds a newline
        return [key.translate(_NUL_DIGITS_TEXT) for key in keys]
    return templates


def glob_hits(pattern: str, texts: list[str]) -> list[bool]:
    """Whether each text matches the glob `pattern` as `fnmatch.fnmatchcase` says (the pattern's regex, matched
    from the start): one regex call a text, in C, for a column of 90,000 names."""
    match = re.compile(fnmatch.translate(pattern)).match
    return list(map(bool, map(match, texts)))


def first_positions(numbers: list[int]) -> dict[int, int]:
    """Each number's first position in `numbers`, in one C pass (reversed: the first one is written last)."""
    return dict(zip(reversed(numbers), range(len(numbers) - 1, -1, -1)))


class Numbering(dict):
    """Key -> its number, in order of first appearance (a miss numbers the key): `map(numbering.__getitem__,
    keys)` numbers a column in C."""

    def __missing__(self, key: Hashable) -> int:
        number = self[key] = len(self)
        return number


def _made_whole(index: int) -> Any:
    """What a LazyTuple made whole has for a maker: nothing reads it (`_all` is set before it is put in)."""
    raise AssertionError("a LazyTuple made whole makes no item")


class LazyTuple(Sequence[T]):
    """A tuple of `size` items, item i being `make(i)`: made one by one where one is read by index (kept, so
    that it is the same object when read again), all at once where the whole is read (iterated, sliced,
    compared). Equal to a tuple of the same items, as the tuple a loader or analysis returned before."""

    __slots__ = ("_size", "_make", "_some", "_all")

    def __init__(self, size: int, make: Callable[[int], T]) -> None:
        self._size, self._make = size, make
        self._some: dict[int, T] = {}
        self._all: tuple[T, ...] | None = None

    def whole(self) -> tuple[T, ...]:
        """Every item, made once (those already read by index kept); then what made them is let go (a sharded
        checkpoint's columns and headers)."""
        if self._all is None:
            some, make = self._some, self._make
            self._all = tuple(some[i] if i in some else make(i) for i in range(self._size)) if some else \
                tuple(map(make, range(self._size)))
            self._some, self._make = {}, _made_whole  # after `_all`: a reader that took the maker first finds it
        return self._all

    def fresh(self, index: int) -> T:
        """Item `index` made anew, not kept (the kept one where the tuple was made whole): for a tuple made of
        this one's items, which keeps its own."""
        make = self._make  # before `_all` is tested: `whole()` sets `_all`, then lets the maker go
        return self._all[index] if self._all is not None else make(index)

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...

    def __getitem__(self, index: Any) -> Any:
        make = self._make  # before `_all` is tested (as `fresh`)
        if self._all is not None or isinstance(index, slice):
            return self.whole()[index]
        position = range(self._size)[index]  # IndexError, negative indices, as a tuple's
        found = self._some.get(position)
        if found is None:
            found = self._some[position] = make(position)
        return found

    def __iter__(self) -> Iterator[T]:
        return iter(self.whole())

    def __reversed__(self) -> Iterator[T]:
        return reversed(self.whole())

    def __contains__(self, item: object) -> bool:
        return item in self.whole()

    def index(self, item: Any, *args: Any) -> int:
        return self.whole().index(item, *args)

    def count(self, item: Any) -> int:
        return self.whole().count(item)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyTuple):
            other = other.whole()
        return self.whole() == other if isinstance(other, tuple) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.whole())

    def __add__(self, other: Any) -> tuple[T, ...]:
        return self.whole() + tuple(other)

    def __radd__(self, other: Any) -> tuple[T, ...]:
        return tuple(other) + self.whole()

    def __repr__(self) -> str:
        return repr(self.whole())

    def __reduce__(self) -> tuple[type, tuple[tuple[T, ...]]]:
        """Pickled (and copied) as the tuple it reads as: what makes the items stays behind."""
        return tuple, (self.whole(),)
