"""torch.save's tensor records matched whole: the pickle dry run's fast path through a state_dict's bulk.

torch.save (pickle protocol 2) writes each tensor as one fixed run of about 30 opcodes after its key:
`_rebuild_tensor_v2` called on a persistent storage id, an offset, a shape, a stride, requires_grad and an
empty OrderedDict. `pickle_scan._fast_scan` follows opcodes one by one in Python, ~6 µs a tensor; a
`TensorRecords` matches the run in one regular-expression call and applies what those opcodes do to the
dry run at once: the memo slots they fill, with each value's hashing weight, the one value they leave on
the stack, and their memory estimate, all exactly as the opcode walk computes them
(tests/test_pickle_scan_fast.py compares the two).

The expression has no repetition, only alternatives told apart within a few bytes, so no byte string can
make it backtrack for long. What it cannot check, the caller's state, is checked here: every memo slot
a record reads is filled, and every slot it writes is the next free one. Anything else is left to the
opcode walk.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

_INT = rb"(?:K.|M..|J....)"  # BININT1, BININT2, BININT: one value, one cost
_PUT = rb"r(....)"  # LONG_BINPUT: torch's memo is past 256 slots after the first 32 tensors
_GET = rb"(h.|j....)"  # BINGET, LONG_BINGET
#: The storage key (torch writes the storage's number): a BINUNICODE of up to 9 bytes, each length its own
#: alternative, so the bytes skipped are the ones its length says
_STORAGE_KEY = rb"(X(?:" + b"|".join(re.escape(bytes([n])) + rb"\x00\x00\x00.{%d}" % n for n in range(10)) + rb"))"
_TUPLES = {1: b"\x85", 2: b"\x86", 3: b"\x87"}  # TUPLE1-3
MAX_DIMS = 6


def _sized(dims: int) -> bytes:
    """A shape or stride tuple of `dims` ints: EMPTY_TUPLE (not memoized), TUPLE1-3, or MARK … TUPLE."""
    if dims == 0:
        return rb"\)"
    if dims in _TUPLES:
        return _INT * dims + re.escape(_TUPLES[dims]) + _PUT
    return rb"\(" + _INT * dims + b"t" + _PUT


#: key PUT, GET rebuild, MARK MARK, GET 'storage', GET storage class, storage key, PUT, GET device, numel,
#: TUPLE, PUT, BINPERSID, offset; then per number of dims: shape, stride, requires_grad, GET OrderedDict,
#: EMPTY_TUPLE, REDUCE, PUT, TUPLE, PUT, REDUCE, PUT. Each tail is a group, so `lastindex` names it.
_PATTERN = re.compile(
    _PUT + _GET + rb"\(\(" + _GET + _GET + _STORAGE_KEY + _PUT + _GET + _INT + b"t" + _PUT + b"Q" + _INT
    + b"(?:" + b"|".join(b"(" + _sized(d) + _sized(d) + rb"[\x88\x89]" + _GET + rb"\)R" + _PUT + b"t" + _PUT
                         + b"R" + _PUT + b")" for d in range(MAX_DIMS + 1)) + b")",
    re.DOTALL)
_PREFIX_GROUPS = 8  # key PUT 1, GETs 2-4, storage key 5, PUTs 6 and 8, GET 7


class _Tail(NamedTuple):
    """What one alternative of `_PATTERN` (one number of dims) reads, writes and costs."""
    gets: tuple[int, ...]  # groups of the memo reads: rebuild, 'storage', storage class, device, OrderedDict
    puts: tuple[int, ...]  # groups of the memo writes, in order
    lanes: tuple[int, int]  # (A, B): the writes hold slots n, n+1, … exactly when their bytes read as n*A + B
    weights: tuple[int, ...]  # hashing weight of each written value; index 2 (the storage tuple) set per record
    cost: int  # the memory estimate, less 4 bytes per byte of the storage key


def _tails(costs: dict[bytes, int], per_tuple_item: int) -> dict[int, _Tail]:
    """One `_Tail` per alternative, keyed by its group number; `costs` is the dry run's per-opcode cost, which
    must be one for the opcodes an alternative lets vary (BINGET or LONG_BINGET, the three ints, the two bools)."""
    if len({costs[b"h"], costs[b"j"]}) != 1 or len({costs[b"K"], costs[b"M"], costs[b"J"]}) != 1 or \
            costs[b"\x88"] != costs[b"\x89"]:
        raise RuntimeError("pickle_records: a record's alternative opcodes no longer cost alike")
    tails: dict[int, _Tail] = {}
    group = _PREFIX_GROUPS + 1
    for dims in range(MAX_DIMS + 1):
        sized_puts = 1 if dims else 0
        inner = list(range(group + 1, group + 1 + 2 * sized_puts + 4))  # shape, stride, GET, three PUTs
        get_od, puts_after = inner[2 * sized_puts], inner[2 * sized_puts + 1:]
        puts = (1, 6, 8, *inner[: 2 * sized_puts], *puts_after)
        lanes = (sum(1 << 32 * k for k in range(len(puts))), sum(k << 32 * k for k in range(len(puts))))
        weights = (1, 1, 0, *(1 + dims,) * (2 * sized_puts), 1, 7 + 2 * dims, 1)
        sized = (costs[b"("] + costs[b"t"] + per_tuple_item * dims if dims > 3 else
                 costs[_TUPLES[dims]] if dims else costs[b")"]) + costs[b"K"] * dims + costs[b"r"] * sized_puts
        cost = (costs[b"r"] * 6 + costs[b"h"] * 5 + costs[b"("] * 2 + costs[b"X"] + costs[b"K"] * 2
                + costs[b"t"] * 2 + per_tuple_item * 11 + costs[b"Q"] + 2 * sized + costs[b"\x89"]
                + costs[b")"] + costs[b"R"] * 2)
        tails[group] = _Tail((2, 3, 4, 7, get_od), puts, lanes, weights, cost)
        group = inner[-1] + 1
    return tails


class TensorRecords:
    """Matches torch's tensor records for one dry run; the memo reads it has checked are kept."""

    __slots__ = ("_tails", "_cap", "_gets", "_weighed")

    def __init__(self, costs: dict[bytes, int], per_tuple_item: int, cap: int) -> None:
        tails = _tails(costs, per_tuple_item)
        self._tails: list[_Tail | None] = [tails.get(group) for group in range(max(tails) + 1)]  # by lastindex
        self._cap = cap  # hashing weights are kept capped just past the limit, as the opcode walk keeps them
        self._gets: tuple[bytes, ...] = ()
        self._weighed = (0, 0, 0)  # memo slots of 'storage', the storage class and the device

    def match(self, data: Any, pos: int, memo: list[int]) -> tuple[int, int] | None:
        """The record after a key pushed just before `pos`: (where it ends, its memory estimate), its memo
        slots appended to `memo` (one hashing weight each; the slots are 0…len-1) and its tensor left on the
        stack by the caller. None where the bytes are not such a record or the memo does not allow it."""
        found = _PATTERN.match(data, pos)
        if found is None:
            return None
        gets, puts, (a, b), weights, cost = self._tails[found.lastindex]  # type: ignore[misc]
        filled = len(memo)
        read = found.group(*gets)
        if read != self._gets and not self._check_gets(read, filled):
            return None
        if int.from_bytes(b"".join(found.group(*puts)), "little") != filled * a + b:
            return None
        storage, kind, device = self._weighed
        weight = 3 + memo[storage] + memo[kind] + memo[device]  # the storage tuple: 1 + its five items' weights
        memo += weights
        memo[filled + 2] = weight if weight < self._cap else self._cap
        return found.end(), cost + 4 * (len(found[5]) - 5)  # the storage key's bytes, after X and its length

    def _check_gets(self, gets: tuple[bytes, ...], filled: int) -> bool:
        """Whether every slot these reads name is filled; if so they become the ones checked."""
        slots = [get[1] if len(get) == 2 else int.from_bytes(get[1:], "little") for get in gets]
        if max(slots) >= filled:
            return False
        self._gets = gets
        self._weighed = (slots[1], slots[2], slots[3])
        return True
