"""pickle_records: torch's tensor records, matched whole by the dry run, are judged as the opcode walk judges them.

The fast pass (`pickle_scan._fast_scan`) hands each run of opcodes after a BINUNICODE to
`TensorRecords.match`; where it matches, the memo slots, hashing weights, stack and memory estimate it
applies must be exactly the opcode walk's (`_checked_scan`, the oracle). Checked here on what torch.save
writes (shapes of 0 to 7 dims, dtypes, requires_grad), on every single-byte change inside a record, on
hypothesis mutations of a record-heavy pickle, and on hand-made records whose memo reads and writes are
wrong or whose storage tuple carries a heavy key. Each case also shows the record path was taken, or not.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import EXAMPLES, mutations
from test_hardening import PROTO, i, s, t
from test_pickle_scan_fast import FUZZ, assert_same

from fancli.loaders import pickle_scan
from fancli.loaders.pickle_records import TensorRecords


@pytest.fixture
def matched(monkeypatch) -> list[int]:
    """Where each record the fast pass matched whole starts."""
    starts: list[int] = []
    match = TensorRecords.match

    def counting(self, data, pos, memo):
        found = match(self, data, pos, memo)
        if found is not None:
            starts.append(pos)
        return found

    monkeypatch.setattr(TensorRecords, "match", counting)
    return starts


def _saved(state: dict) -> bytes:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as archive:
        member, = (name for name in archive.namelist() if name.endswith("/data.pkl"))
        return archive.read(member)


def _varied_state() -> dict:
    """48 tensors: 0 to 7 dims in turn, three dtypes, one needing grad, one a view with an offset."""
    torch = pytest.importorskip("torch")
    state = {}
    for n in range(48):
        dims = n % 8
        dtype = (torch.float32, torch.float16, torch.int64)[n % 3]
        state[f"blocks.{n}.weight"] = torch.zeros((2,) * dims, dtype=dtype)
    state["blocks.40.weight"] = torch.ones(3, 2, requires_grad=True)
    state["blocks.41.weight"] = torch.arange(300.0)[7:].view(293)
    state["big"] = torch.zeros(70000)  # a BININT numel and stride
    return state


def test_what_torch_writes_is_matched_whole_and_judged_alike(matched):
    data = _saved(_varied_state())
    end, memory = assert_same(data)
    assert end == len(data)
    # after the first 32 tensors (a one-byte memo index); 7 dims, a tensor needing grad and the view's
    # first record of its dtype are the opcode walk's
    assert len(set(matched)) >= 12, len(set(matched))


def test_every_byte_of_a_record_changed_is_judged_alike(matched):
    data = _saved({f"layers.{n}.weight": pytest.importorskip("torch").zeros(3, 2) for n in range(40)})
    key = data.index(s("layers.37.weight"))
    stop = data.index(s("layers.38.weight"))
    assert_same(data)
    assert key + len(s("layers.37.weight")) in matched
    for at in range(key, stop):
        for value in {0, 0xFF, data[at] ^ 1, (data[at] + 1) % 256, ord("r"), ord("h")}:
            assert_same(data[:at] + bytes([value]) + data[at + 1 :])
        assert_same(data[:at] + data[at + 1 :])
        assert_same(data[:at])


@settings(FUZZ, max_examples=EXAMPLES or 300)
@given(st.data())
def test_mutated_record_heavy_pickles_are_judged_alike(data):
    assert_same(data.draw(mutations(_record_heavy())))


def _record_heavy(cache: list[bytes] = []) -> bytes:  # noqa: B006 (built once: torch.save in each example is slow)
    if not cache:
        cache.append(_saved(_varied_state()))
    return cache[0]


# --- hand-made records: torch's bytes, with the memo reads and writes chosen --------------------------


def _get(slot: int) -> bytes:
    return b"h" + bytes([slot]) if slot < 256 else b"j" + struct.pack("<I", slot)


def _int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value) if value < 65536 else i(value)


def _put(slots: itertools.count) -> bytes:
    return b"r" + struct.pack("<I", next(slots))


def record(key: str, slots: itertools.count, gets: tuple[int, int, int, int, int], size: tuple[int, ...],
           storage_key: str = "0", grad: bool = False) -> bytes:
    """A key and the opcodes torch.save writes for a contiguous float tensor after its first 32: the memo
    reads (rebuild, 'storage', the storage class, the device, OrderedDict) and writes as given."""
    rebuild, storage, kind, device, ordered = gets
    stride = tuple(itertools.accumulate(reversed(size[1:]), lambda a, b: a * b, initial=1))[::-1] if size else ()

    def sized(values: tuple[int, ...]) -> bytes:
        if not values:
            return b")"
        ints = b"".join(map(_int, values))
        return (ints + b"\x85\x86\x87"[len(values) - 1 : len(values)] if len(values) <= 3 else b"(" + ints + b"t") + _put(slots)

    numel = 1
    for dim in size:
        numel *= dim
    return (s(key) + _put(slots) + _get(rebuild) + b"((" + _get(storage) + _get(kind) + s(storage_key) + _put(slots)
            + _get(device) + _int(numel) + b"t" + _put(slots) + b"Q" + _int(0) + sized(size) + sized(stride)
            + (b"\x88" if grad else b"\x89") + _get(ordered) + b")R" + _put(slots) + b"t" + _put(slots) + b"R"
            + _put(slots))


def test_the_hand_made_record_is_what_torch_writes():
    torch = pytest.importorskip("torch")
    data = _saved({f"layers.{n}.weight": torch.zeros(3, 2) for n in range(40)})
    # the first tensor fills slots 1-13 (the dict is 0), each after it 8; these are its memo reads
    slots = itertools.count(14 + 8 * 36)
    assert record("layers.37.weight", slots, (2, 3, 4, 6, 10), (3, 2), "37") in data


#: 300 memo slots filled with None, so records take LONG_BINPUT; then the slots a record reads
FILLER = b"](" + b"".join(b"N" + struct.pack("<cI", b"r", n) for n in range(300)) + b"e0"


def _heavy(slots: itertools.count, weight: int) -> bytes:
    """A tuple whose hash visits `weight` objects, put in the next slot."""
    return t(*[i(1)] * (weight - 1)) + _put(slots) + b"0"


def _program(weight: int, overwrite: bool) -> bytes:
    """A dict of two records and a key made of the second's storage tuple twice. The storage tuple holds
    what slot 301 holds: None, then a tuple of `weight` (or only from the second record on, `overwrite`)."""
    slots = itertools.count(300)
    body = FILLER + b"N" + _put(slots) + _heavy(slots, 1 if overwrite else weight)  # 300: a stand-in, 301
    body += b"}" + _put(slots) + b"("
    gets = (300, 301, 300, 300, 300)
    body += record("a", slots, gets, (3, 2))
    if overwrite:  # slot 301 overwritten between the records, by the opcode walk
        body += t(*[i(1)] * (weight - 1)) + b"r" + struct.pack("<I", 301) + b"0"
    start = next(slots)
    second = record("b", itertools.count(start), gets, (3, 2), "1")
    storage_tuple = start + 2
    body += second + _get(storage_tuple) + _get(storage_tuple) + b"\x86N" + b"u."
    return PROTO + body


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("weight", [400, 600])
def test_a_heavy_storage_tuple_is_weighed_as_the_opcode_walk_weighs_it(matched, weight, overwrite):
    data = _program(weight, overwrite)
    verdict = assert_same(data)
    # the key visits 1 + 2 × (1 + weight + 4 others) objects: over 1,000 for 600
    assert (verdict[0] is pickle_scan.TooCostly) == (weight == 600), verdict
    assert len(set(matched)) == 2


@pytest.mark.parametrize(("first", "gets", "taken"), [
    (0, (300, 301, 300, 300, 300), True),  # as torch writes it
    (1, (300, 301, 300, 300, 300), False),  # a memo slot skipped: the unpickler would size its memo by it
    (-1, (300, 301, 300, 300, 300), False),  # a slot written again: valid, the opcode walk's
    (0, (300, 301, 303, 300, 300), False),  # reads the key the record just put: valid, the opcode walk's
    (0, (300, 301, 300, 300, 308), False),  # reads a slot the record fills later: refused
    (0, (300, 301, 300, 9999, 300), False),  # reads an empty slot: refused
])
def test_a_record_whose_memo_reads_or_writes_are_not_torchs_is_the_opcode_walks(matched, first, gets, taken):
    slots = itertools.count(300)
    body = FILLER + b"N" + _put(slots) + b"N" + _put(slots) + b"}" + _put(slots) + b"("
    data = PROTO + body + record("a", itertools.count(303 + first), gets, (3, 2)) + b"u."
    assert_same(data)
    assert bool(matched) == taken


@pytest.mark.parametrize("size", [(), (5,), (2, 3), (2, 3, 4), (1, 2, 1, 2), (1, 1, 2, 1, 2), (2,) * 6, (1,) * 7])
@pytest.mark.parametrize("storage_key", ["7", "123456789", "1234567890"])
def test_each_number_of_dims_and_storage_key_is_costed_as_the_opcode_walk_costs_it(matched, size, storage_key):
    slots = itertools.count(300)
    body = FILLER + b"N" + _put(slots) + b"N" + _put(slots) + b"}" + _put(slots) + b"("
    data = PROTO + body + record("a", slots, (300, 301, 300, 300, 300), size, storage_key, grad=True) + b"u."
    assert isinstance(assert_same(data)[0], int)
    assert bool(matched) == (len(size) <= 6 and len(storage_key) <= 9)


@pytest.mark.parametrize("dims", range(7))
def test_each_slot_a_record_fills_weighs_what_the_opcode_walk_weighs(dims):
    """Found in review: a wrong weight for any slot went unnoticed. Each slot a record fills is read into a
    dict key with n Nones beside it: the fewest n the opcode walk refuses is found by bisection, and the fast
    pass judges n and n - 1 alike (each read differs in weight: 'storage', the class and the device)."""
    slots = itertools.count(300)  # 300: a tuple of 40 Nones, 301: None, 302: a tuple of 2, 303: the dict
    head = FILLER + b"(" + b"N" * 40 + b"t" + _put(slots) + b"N" + _put(slots) + b"(NNt" + _put(slots)
    head += b"}" + _put(slots)
    body = PROTO + head + b"(" + record("a", slots, (301, 300, 302, 301, 301), (2,) * dims) + b"u"
    for slot in range(304, next(slots)):

        def refused(nones: int) -> bool:  # the key visits 1 + the slot's weight + nones objects
            return assert_same(body + b"}(" + _get(slot) + b"N" * nones + b"tNs.")[0] is pickle_scan.TooCostly

        low, high = 0, 1000
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if refused(middle) else (middle + 1, high)
        assert 0 < low < 1000 and not refused(low - 1)
