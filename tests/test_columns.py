"""`columns.LazyTuple`: what `model.layers` and `report.rows` are for a sharded checkpoint. It must read as the
tuple of its items wherever a tuple is read, make each item once, and keep an item read by index."""

from __future__ import annotations

import pytest

from fancli.columns import LazyTuple, Numbering


class _Item:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Item) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"_Item({self.value})"


def _lazy(size: int, made: list[int]) -> LazyTuple:
    return LazyTuple(size, lambda index: made.append(index) or _Item(index * 10))


def test_reads_as_the_tuple_of_its_items():
    made: list[int] = []
    lazy, plain = _lazy(5, made), tuple(_Item(i * 10) for i in range(5))
    assert made == [] and len(lazy) == 5  # nothing made to know its length
    assert lazy == plain and plain == lazy.whole() and hash(lazy) == hash(plain)
    assert lazy[1:3] == plain[1:3] and lazy[::-1] == plain[::-1] and list(reversed(lazy)) == list(reversed(plain))
    assert lazy + (1,) == plain + (1,) and (1,) + lazy == (1,) + plain
    assert _Item(30) in lazy and lazy.index(_Item(30)) == 3 and lazy.count(_Item(30)) == 1
    assert repr(lazy) == repr(plain) and lazy != plain[:4] and lazy != [*plain]
    assert sorted(made) == list(range(5)) and len(made) == 5  # each made once


def test_an_item_read_by_index_is_made_once_and_kept_when_read_whole():
    made: list[int] = []
    lazy = _lazy(4, made)
    second, last = lazy[1], lazy[-1]
    assert made == [1, 3] and lazy[1] is second and lazy[3] is last
    whole = lazy.whole()
    assert whole[1] is second and whole[3] is last and sorted(made) == [0, 1, 2, 3]
    assert lazy[1] is second and lazy[0] is whole[0]
    with pytest.raises(IndexError):
        lazy[4]


def test_numbering_counts_in_order_of_first_appearance():
    numbering = Numbering()
    assert list(map(numbering.__getitem__, "abacb")) == [0, 1, 0, 2, 1]
    assert list(numbering) == ["a", "b", "c"]


def test_pickled_and_copied_as_its_tuple():
    import copy
    import pickle

    lazy = LazyTuple(3, lambda index: index * 2)  # its maker, a lambda, cannot be pickled: the tuple is
    assert pickle.loads(pickle.dumps(lazy)) == (0, 2, 4) and copy.deepcopy(lazy) == (0, 2, 4)
