"""A dry run over a pickle's opcodes that refuses memory and time bombs before any unpickler runs.

An allowlist of globals stops a pickle from running code, but not from exhausting the machine with
the opcodes alone: CPython's C unpickler sizes its memo by the largest index a PUT names (ten bytes can
ask for gigabytes), a one-byte opcode builds a 216-byte set, a compressed zip member makes such a pickle
tiny on disk, and a dict key made of tuples that share one another through the memo takes exponential
time to hash. This pass follows the opcodes on a stack of numbers, never building an object, and
refuses a pickle whose memory estimate, opcode count, memo indices or key sizes are out of bounds.
torch writes no such pickle: a state_dict costs about 1 KB and 32 opcodes per tensor.
"""

from __future__ import annotations

import pickletools
import struct
from typing import Any

from .pickle_records import TensorRecords

#: What unpickling may cost, estimated from the opcodes (CPython 64-bit object sizes, rounded up).
#: No opcode costs less than MIN_COST, so this also bounds the opcodes (8 Mi, ~250,000 tensors) and the time.
MAX_MEMORY = 256 * 1024 * 1024
MIN_COST = 32
#: Objects hashing one dict key or set item may visit: tuples are hashed anew each time.
MAX_KEY_OBJECTS = 1000


class PickleRefused(ValueError):
    """The pickle is malformed or would cost too much to unpickle; the message says which, in one line."""


class TooCostly(PickleRefused):
    """The pickle is well-formed as far as read, but unpickling it would cost too much memory or time."""


# Actions of the dry run, one per opcode.
(_PUSH, _PUSH_INT, _DUP, _GET, _PUT, _MEMOIZE, _MARK, _POP, _APPEND, _SETITEM, _BUILD, _NOTHING, _STOP, _UNKNOWN,
 # pop a fixed number of values, push one
 _TUPLE1, _TUPLE2, _TUPLE3, _CALL_2, _CALL_3, _SAME,
 # take every value down to the last MARK
 _TUPLE, _LIST, _DICT, _FROZENSET, _APPENDS, _SETITEMS, _ADDITEMS, _CALL_MARK, _POP_MARK) = range(29)

_ACTIONS: dict[str, tuple[int, int]] = {  # opcode name -> (action, bytes the unpickler may keep for it)
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "GLOBAL", "EXT1", "EXT2", "EXT4",
                     "NEXT_BUFFER"), (_PUSH, 8)),
    **dict.fromkeys(("BININT", "BININT1", "BININT2", "BINFLOAT", "FLOAT"), (_PUSH, 40)),
    **dict.fromkeys(("INT", "LONG", "LONG1", "LONG4"), (_PUSH_INT, 48)),
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                     "BINUNICODE8"), (_PUSH, 88)),
    **dict.fromkeys(("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"), (_PUSH, 80)),
    "EMPTY_LIST": (_PUSH, 72), "EMPTY_DICT": (_PUSH, 80), "EMPTY_SET": (_PUSH, 232),
    "DUP": (_DUP, 8), "GET": (_GET, 8), "BINGET": (_GET, 8), "LONG_BINGET": (_GET, 8),
    "PUT": (_PUT, 16), "BINPUT": (_PUT, 16), "LONG_BINPUT": (_PUT, 16), "MEMOIZE": (_MEMOIZE, 16),
    "MARK": (_MARK, 8), "POP": (_POP, 0), "POP_MARK": (_POP_MARK, 0),
    "TUPLE": (_TUPLE, 56), "TUPLE1": (_TUPLE1, 64), "TUPLE2": (_TUPLE2, 72), "TUPLE3": (_TUPLE3, 80),
    "LIST": (_LIST, 72), "DICT": (_DICT, 80), "FROZENSET": (_FROZENSET, 232),
    "APPEND": (_APPEND, 16), "APPENDS": (_APPENDS, 0), "SETITEM": (_SETITEM, 96), "SETITEMS": (_SETITEMS, 0),
    "ADDITEMS": (_ADDITEMS, 0),
    # Calls: the allowlisted callables make small objects; those whose size depends on their
    # arguments (set, tuple, bytes) are measured where they run, in the unpickler.
    "STACK_GLOBAL": (_CALL_2, 8), "REDUCE": (_CALL_2, 512), "NEWOBJ": (_CALL_2, 512),
    "NEWOBJ_EX": (_CALL_3, 512), "OBJ": (_CALL_MARK, 512), "INST": (_CALL_MARK, 512),
    "BUILD": (_BUILD, 512), "BINPERSID": (_SAME, 512), "PERSID": (_PUSH, 512),
    "READONLY_BUFFER": (_SAME, 0), "PROTO": (_NOTHING, 0), "FRAME": (_NOTHING, 0), "STOP": (_STOP, 0),
}
#: Bytes per item that a container op adds (list slots, dict entries, set entries).
_PER_ITEM = {_TUPLE: 8, _LIST: 16, _APPENDS: 16, _DICT: 48, _SETITEMS: 48, _FROZENSET: 128, _ADDITEMS: 128}
_POPS = {_TUPLE1: 1, _TUPLE2: 2, _TUPLE3: 3, _CALL_2: 2, _CALL_3: 3, _SAME: 1}
_POP_COUNTS = [_POPS.get(action, 0) for action in range(_POP_MARK + 1)]
_TWO_LINES = -10  # GLOBAL and INST: a module and a name, each ended by a newline
_COUNTED = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
            pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}


def _table() -> tuple[list[tuple[int, int, int]], list[str], list[int]]:
    """Per opcode byte: (argument length or a negative pickletools code, action, cost); its name; and the
    bytes per argument byte (a str may take 4 bytes a character)."""
    table: list[tuple[int, int, int]] = [(0, _UNKNOWN, 0)] * 256
    names, factors = ["?"] * 256, [1] * 256
    for op in pickletools.opcodes:
        action, cost = _ACTIONS[op.name]
        length = 0 if op.arg is None else _TWO_LINES if op.arg.name == "stringnl_noescape_pair" else op.arg.n
        code = ord(op.code)
        table[code] = (length, action, max(cost, MIN_COST))
        names[code] = op.name
        factors[code] = 4 if "STRING" in op.name or "UNICODE" in op.name else 1
    return table, names, factors


_TABLE, _NAMES, _FACTORS = _table()
_COSTS = {bytes([code]): cost for code, (_, _, cost) in enumerate(_TABLE)}  # by opcode, for TensorRecords


def scan(data: Any, start: int = 0) -> tuple[int, int]:
    """Dry-run the pickle at `data[start:]` (bytes or an mmap); return where it ends and its memory estimate.

    Raises PickleRefused naming the first problem: not a pickle, truncated, or too costly. The fast pass
    (`_fast_scan`) answers for a pickle it accepts; anything else it meets is judged, and worded, by the
    checked pass (`_checked_scan`), which alone decides a refusal: the two accept exactly the same pickles
    with the same estimate (tests/test_pickle_scan_fast.py), the fast one in a fifth of the time (a
    20,000-tensor state_dict: 43 instead of 227 ms, its tensor records matched whole by `TensorRecords`).
    A refused pickle costs at most both passes.
    """
    try:
        return _fast_scan(data, start)
    except Exception:  # a refusal, a truncation, a malformed argument: let the checked pass say which
        return _checked_scan(data, start)


#: The one-byte pushes `_fast_scan` handles in one branch, at one cost.
_PLAIN_PUSHES = b"\x89)\x88N"  # NEWFALSE, EMPTY_TUPLE, NEWTRUE, NONE
if {_TABLE[op][:2] for op in _PLAIN_PUSHES} != {(0, _PUSH)} or len({_TABLE[op][2] for op in _PLAIN_PUSHES}) != 1:
    raise RuntimeError("pickle_scan: the plain pushes no longer share one action and cost")


_U32 = struct.Struct("<I")


class _Bail(Exception):
    """The fast pass saw something the checked pass must judge (and word)."""


def _fast_scan(data: Any, start: int = 0) -> tuple[int, int]:
    """`scan`'s dry run in one tight loop: the same costs, memo, stack, MARK and key checks, without the
    words. Returns what `_checked_scan` returns for a pickle it accepts; raises for anything else (a
    refusal, a truncation, an opcode it has no branch for), and `scan` then lets `_checked_scan` judge."""
    end = len(data)
    pos = start
    stack: list[int] = []
    push = stack.append
    marks = [0]  # the floor: values below the last MARK cannot be popped; 0 when there is none
    memo: list[int] = []  # slots 0…len-1: a PUT past the next free slot is the checked pass's to refuse
    records = TensorRecords(_COSTS, _PER_ITEM[_TUPLE], MAX_KEY_OBJECTS + 1)
    memory = 0
    limit = MAX_MEMORY
    cap = MAX_KEY_OBJECTS + 1
    u32 = _U32.unpack_from
    c_put, c_get, c_int1, c_mark, c_str, c_tuple, c_tuple2, c_reduce, c_persid, c_push, c_global, c_dict = (
        _TABLE[ord(code)][2] for code in "qhK(Xt\x86RQ)c}")
    per_tuple, per_setitems = _PER_ITEM[_TUPLE], _PER_ITEM[_SETITEMS]
    c_setitems = _TABLE[ord("u")][2]
    while True:
        op = data[pos]
        if op == 0x71 or op == 0x72:  # BINPUT, LONG_BINPUT
            if op == 0x71:
                index, pos = data[pos + 1], pos + 2
            else:
                index, pos = u32(data, pos + 1)[0], pos + 5
            if len(stack) <= marks[-1]:
                raise _Bail
            if index < len(memo):
                memo[index] = stack[-1]
            elif index == len(memo):
                memo.append(stack[-1])
            else:
                raise _Bail
            memory += c_put
        elif op == 0x4B:  # BININT1
            push(1)
            pos += 2
            memory += c_int1
        elif op == 0x68:  # BINGET
            push(memo[data[pos + 1]])
            pos += 2
            memory += c_get
        elif op == 0x28:  # MARK
            marks.append(len(stack))
            pos += 1
            memory += c_mark
        elif op == 0x58:  # BINUNICODE
            size = u32(data, pos + 1)[0]
            push(1)
            pos += 5 + size
            memory += c_str + 4 * size
            if data[pos] == 0x72:  # LONG_BINPUT: perhaps a tensor record after its key, matched whole
                record = records.match(data, pos, memo)
                if record is not None:
                    pos, cost = record
                    memory += cost
                    push(1)
        elif op == 0x74:  # TUPLE
            if len(marks) == 1:
                raise _Bail
            mark = marks.pop()
            count = len(stack) - mark
            weight = 1 + sum(stack[mark:])
            del stack[mark:]
            push(weight if weight <= cap else cap)
            pos += 1
            memory += c_tuple + per_tuple * count
        elif op == 0x86:  # TUPLE2
            if len(stack) - 2 < marks[-1]:
                raise _Bail
            weight = 1 + stack.pop() + stack.pop()
            push(weight if weight <= cap else cap)
            pos += 1
            memory += c_tuple2
        elif op == 0x52:  # REDUCE
            if len(stack) - 2 < marks[-1]:
                raise _Bail
            del stack[-1]
            stack[-1] = 1
            pos += 1
            memory += c_reduce
        elif op == 0x51:  # BINPERSID
            if len(stack) <= marks[-1]:
                raise _Bail
            stack[-1] = 1
            pos += 1
            memory += c_persid
        elif op == 0x89 or op == 0x29 or op == 0x88 or op == 0x4E:  # NEWFALSE, EMPTY_TUPLE, NEWTRUE, NONE
            push(1)
            pos += 1
            memory += c_push
        elif op == 0x6A:  # LONG_BINGET
            push(memo[u32(data, pos + 1)[0]])
            pos += 5
            memory += c_get
        elif op == 0x75:  # SETITEMS
            if len(marks) == 1:
                raise _Bail
            mark = marks.pop()
            count = len(stack) - mark
            if count % 2 or (count and max(stack[mark::2]) > MAX_KEY_OBJECTS) or mark <= marks[-1]:
                raise _Bail
            del stack[mark:]
            pos += 1
            memory += c_setitems + per_setitems * count
        elif op == 0x63:  # GLOBAL: a module and a name, each ended by a newline
            first = data.find(b"\n", pos + 1, end)
            newline = data.find(b"\n", first + 1, end) if first >= 0 else -1
            if newline < 0:
                raise _Bail
            memory += c_global + newline - pos
            pos = newline + 1
            push(1)
        elif op == 0x7D:  # EMPTY_DICT
            push(1)
            pos += 1
            memory += c_dict
        else:
            pos, memory = _step(data, pos, end, stack, marks, memo, memory)
            if pos < 0:  # STOP
                if memory > limit:
                    raise _Bail
                return -pos, memory
        if memory > limit:
            raise _Bail


def _step(data: Any, at: int, end: int, stack: list[int], marks: list[int], memo: list[int],
          memory: int) -> tuple[int, int]:
    """Any other opcode for `_fast_scan`, as `_checked_scan` follows it; returns (-end, memory) at STOP."""
    op = data[at]
    length, action, cost = _TABLE[op]
    pos = at + 1
    if length > 0:
        pos += length
        if pos > end:
            raise _Bail
    elif length:
        argument = pos
        pos, size = _variable(data, pos, end, length, at)
        cost += _FACTORS[op] * size
        if action == _PUSH_INT:
            stack.append(min(1 + (size >> 3), MAX_KEY_OBJECTS + 1))
            action = _NOTHING
    memory += cost
    floor = marks[-1]
    if action == _PUSH:
        stack.append(1)
    elif action == _PUT or action == _GET:
        index = data[pos - 1] if length == 1 else _index(data, argument if length < 0 else at + 1, pos, length, at)
        # never negative (`_index` refuses it): the list's slot -1 would be its last
        if index > len(memo) or (action == _PUT and len(stack) <= floor):
            raise _Bail
        if action == _GET:
            stack.append(memo[index])
        elif index == len(memo):
            memo.append(stack[-1])
        else:
            memo[index] = stack[-1]
    elif action == _MARK:
        marks.append(len(stack))
    elif action >= _TUPLE:  # back to the last MARK
        if len(marks) == 1:
            raise _Bail
        mark = marks.pop()
        items = stack[mark:]
        del stack[mark:]
        memory += _PER_ITEM.get(action, 0) * len(items)
        if action == _DICT or action == _SETITEMS:
            if len(items) % 2 or (items and max(items[0::2]) > MAX_KEY_OBJECTS):
                raise _Bail
        elif (action == _FROZENSET or action == _ADDITEMS) and items and max(items) > MAX_KEY_OBJECTS:
            raise _Bail
        if action == _TUPLE:
            stack.append(min(1 + sum(items), MAX_KEY_OBJECTS + 1))
        elif action in (_LIST, _DICT, _FROZENSET, _CALL_MARK):
            stack.append(1)
        elif action != _POP_MARK and len(stack) <= marks[-1]:
            raise _Bail
    elif action >= _TUPLE1:  # pop a fixed number, push one
        count = _POP_COUNTS[action]
        if len(stack) - count < floor:
            raise _Bail
        weight = 1 + sum(stack[len(stack) - count :])
        del stack[len(stack) - count :]
        stack.append(min(weight, MAX_KEY_OBJECTS + 1) if action <= _TUPLE3 else 1)
    elif action == _MEMOIZE:
        if len(stack) <= floor:
            raise _Bail
        memo.append(stack[-1])
    elif action == _DUP:
        stack.append(stack[-1])
    elif action == _POP:
        if len(marks) > 1 and floor == len(stack):
            marks.pop()
        elif len(stack) <= floor:
            raise _Bail
        else:
            stack.pop()
    elif action == _SETITEM or action == _APPEND or action == _BUILD:
        count = 2 if action == _SETITEM else 1
        if len(stack) - count < floor:
            raise _Bail
        if action == _SETITEM and stack[-2] > MAX_KEY_OBJECTS:
            raise _Bail
        del stack[len(stack) - count :]
        if len(stack) <= floor:
            raise _Bail
    elif action == _STOP:
        if len(stack) <= floor:
            raise _Bail
        stack.pop()
        return -pos, memory
    elif action == _UNKNOWN:
        raise _Bail
    return pos, memory


def _checked_scan(data: Any, start: int = 0) -> tuple[int, int]:
    """`scan`'s dry run opcode by opcode through the table, naming the first problem it meets."""
    end = len(data)
    pos = start
    stack: list[int] = []  # per value: the objects hashing it visits (capped); lists, dicts… count 1
    marks: list[int] = []
    memo: dict[int, int] = {}
    memory = 0
    table = _TABLE
    at = argument = pos
    try:
        while True:
            at = pos
            length, action, cost = table[data[pos]]
            pos += 1
            if length:
                if length > 0:
                    pos += length
                    if pos > end:
                        raise IndexError
                else:
                    argument = pos
                    pos, size = _variable(data, pos, end, length, at)
                    cost += _FACTORS[data[at]] * size
                    if action == _PUSH_INT:
                        stack.append(min(1 + (size >> 3), MAX_KEY_OBJECTS + 1))  # its hash reads every digit
                        action = _NOTHING
            memory += cost
            if memory > MAX_MEMORY:
                raise TooCostly(f"would take more than {MAX_MEMORY >> 20} MiB to unpickle "
                                f"(reached at opcode {_NAMES[data[at]]}, byte {at}); refused unread")
            if action == _PUT:
                index = data[pos - 1] if length == 1 else _index(data, argument, pos, length, at)
                if index > len(memo) or len(stack) <= (marks[-1] if marks else 0):
                    _bad_put(index, len(memo), at)
                memo[index] = stack[-1]
            elif action == _PUSH:
                stack.append(1)
            elif action == _GET:
                index = data[pos - 1] if length == 1 else _index(data, argument, pos, length, at)
                if index not in memo:
                    raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} reads empty memo slot {index}")
                stack.append(memo[index])
            elif action == _MARK:
                marks.append(len(stack))
            elif action >= _TUPLE:  # TUPLE, LIST, DICT, APPENDS, SETITEMS…: back to the last MARK
                memory = _take_marked(stack, marks, action, at, memory)
            elif action >= _TUPLE1:  # TUPLE1-3, REDUCE, NEWOBJ(_EX), STACK_GLOBAL, BINPERSID
                items = _pop(stack, marks, _POP_COUNTS[action], at)
                stack.append(min(1 + sum(items), MAX_KEY_OBJECTS + 1) if action <= _TUPLE3 else 1)
            elif action == _MEMOIZE:
                if len(stack) <= (marks[-1] if marks else 0):
                    _bad_put(len(memo), len(memo), at)
                memo[len(memo)] = stack[-1]
            elif action == _DUP:
                if not stack:
                    raise PickleRefused(f"is not a valid pickle: the DUP at byte {at} has nothing to copy")
                stack.append(stack[-1])
            elif action == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    _pop(stack, marks, 1, at)
            elif action == _SETITEM or action == _APPEND or action == _BUILD:
                items = _pop(stack, marks, 2 if action == _SETITEM else 1, at)
                if len(stack) <= (marks[-1] if marks else 0):
                    raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has no object to add to")
                if action == _SETITEM:
                    _check_keys(items[:1], at)
            elif action == _STOP:
                _pop(stack, marks, 1, at)
                return pos, memory
            elif action == _UNKNOWN:
                raise PickleRefused(f"is not a valid pickle: unknown opcode 0x{data[at]:02x} at byte {at}")
    except IndexError:  # data[pos] past the end
        if at >= end:
            raise PickleRefused(f"is truncated: it ends at byte {end} without a STOP opcode") from None
        raise PickleRefused(f"is truncated: opcode {_NAMES[data[at]]} at byte {at} runs past the end") from None


def _take_marked(stack: list[int], marks: list[int], action: int, at: int, memory: int) -> int:
    """TUPLE, LIST, DICT, FROZENSET, OBJ, INST, APPENDS, SETITEMS, ADDITEMS, POP_MARK: the values since
    the last MARK. Checks the keys they hash, pushes what they build; returns the memory estimate."""
    if not marks:
        raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has no MARK to go back to")
    mark = marks.pop()
    items = stack[mark:]
    del stack[mark:]
    memory += _PER_ITEM.get(action, 0) * len(items)
    if memory > MAX_MEMORY:
        raise TooCostly(f"would take more than {MAX_MEMORY >> 20} MiB to unpickle (reached at byte {at}); "
                        "refused unread")
    if action in (_DICT, _SETITEMS):
        if len(items) % 2:
            raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} pairs an odd number of items")
        _check_keys(items[0::2], at)
    elif action in (_FROZENSET, _ADDITEMS):
        _check_keys(items, at)
    if action == _TUPLE:
        stack.append(_weight(items))
    elif action in (_LIST, _DICT, _FROZENSET, _CALL_MARK):
        stack.append(1)
    elif action != _POP_MARK and len(stack) <= (marks[-1] if marks else 0):
        raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has no object to add to")
    return memory


def _bad_put(index: int, filled: int, at: int) -> None:
    """A memo index past the next free slot (pickle writers number them in order), or nothing to store."""
    if index > filled:
        raise TooCostly(f"names memo slot {index} at byte {at}, beyond the {filled} filled; refused unread "
                        "(the unpickler would allocate every slot up to it)")
    raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has nothing to store")


def _variable(data: Any, pos: int, end: int, length: int, at: int) -> tuple[int, int]:
    """Skip a counted or newline-ended argument; return the position after it and its size in bytes."""
    if length in _COUNTED:
        width = _COUNTED[length]
        if pos + width > end:
            raise PickleRefused(f"is truncated: the opcode at byte {at} runs past the end")
        size = int.from_bytes(data[pos : pos + width], "little", signed=length == pickletools.TAKEN_FROM_ARGUMENT4)
        if size < 0:
            raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has a negative length")
        return pos + width + size, size
    lines = 2 if length == _TWO_LINES else 1
    start = pos
    for _ in range(lines):
        newline = data.find(b"\n", pos, end)
        if newline < 0:
            raise PickleRefused(f"is truncated: the opcode at byte {at} has no end of line")
        pos = newline + 1
    return pos, pos - start


def _index(data: Any, start: int, stop: int, length: int, at: int) -> int:
    """A memo index: a little-endian argument, or a decimal line for the text opcodes (from `start`)."""
    if length > 0:
        return int.from_bytes(data[stop - length : stop], "little")
    try:
        index = int(bytes(data[start : stop - 1]))
    except ValueError:
        raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} has no decimal index") from None
    if index < 0:  # CPython's unpickler refuses it too ("negative PUT argument")
        raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} names memo slot {index}")
    return index


def _pop(stack: list[int], marks: list[int], count: int, at: int) -> list[int]:
    """The top `count` values, which must lie above the last MARK (the unpickler checks the same)."""
    if len(stack) - count < (marks[-1] if marks else 0):
        raise PickleRefused(f"is not a valid pickle: the opcode at byte {at} pops more than the stack holds")
    items = stack[len(stack) - count :]
    del stack[len(stack) - count :]
    return items


def _weight(items: list[int]) -> int:
    """Objects a tuple of these items makes hashing visit, capped just past the limit."""
    return min(1 + sum(items), MAX_KEY_OBJECTS + 1)


def _check_keys(weights: list[int], at: int) -> None:
    """Keys of dicts and items of sets are hashed; a tuple's hash visits everything it holds, every time."""
    if weights and max(weights) > MAX_KEY_OBJECTS:
        raise TooCostly(f"hashes a key of more than {MAX_KEY_OBJECTS} nested objects or digits (byte {at}); "
                        "refused unread")


def scan_legacy(data: Any) -> None:
    """torch's pre-1.6 format: five pickles in a row (magic number, protocol, system info, the object,
    storage keys), then raw storage bytes. Raises TooCostly for the first that is; a malformed one ends
    the dry run, since torch's unpickler cannot get past it either and says so itself."""
    pos = 0
    for _ in range(5):
        if pos >= len(data):
            return
        try:
            pos, _ = scan(data, pos)
        except TooCostly:
            raise
        except PickleRefused:
            return
