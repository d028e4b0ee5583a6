"""pickle_scan's fast pass accepts exactly what the checked pass accepts, with the same estimate.

`scan` runs `_fast_scan` (one tight loop, no words) and, on anything it does not accept, `_checked_scan`
(the opcode-by-opcode walk that names the problem). Safety rests on one property, tested here on the
hardening corpus of bombs and hostile pickles, on what torch.save writes (several protocols, a legacy
file's five pickles, nested checkpoints) and on hypothesis mutations of both: whenever the checked pass
refuses, the fast pass refuses too, and whenever the checked pass accepts, the fast pass returns the same
(end, memory estimate). The end is also where pickletools finds the STOP opcode.

Also here, the other speed-ups of reading a torch.save file that must not change what is refused: the
collector paused while unpickling, and tensor_ref's bounds check computed in C.
"""

from __future__ import annotations

import io
import mmap
import pickletools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import EXAMPLES, mutations
from test_hardening import (
    BOMBS,
    HOSTILE,
    PROTO,
    _nested_lists,
    _nested_tuples,
    g,
    i,
    mapping,
    s,
    t,
    tensor,
)

from fancli.loaders import pickle_scan
from fancli.loaders.pickle_scan import _checked_scan, _fast_scan, scan

FUZZ = settings(max_examples=EXAMPLES or 300, deadline=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow])


def _verdict(function, data, start=0):
    """(end, memory) or the refusal as (type, message)."""
    try:
        return function(data, start)
    except pickle_scan.PickleRefused as refused:
        return type(refused), str(refused)


def assert_same(data: bytes, start: int = 0) -> object:
    """The fast pass refuses what the checked pass refuses (any exception), and agrees where it accepts;
    `scan` says exactly what the checked pass says."""
    checked = _verdict(_checked_scan, data, start)
    try:
        fast = _fast_scan(data, start)
    except Exception:
        fast = None
    if isinstance(checked[0], type):
        assert fast is None, (fast, checked)
    else:
        assert fast == checked
    assert _verdict(scan, data, start) == checked
    return checked


def _torch_pickles() -> dict[str, bytes]:
    """data.pkl as torch.save writes it, for state_dicts and checkpoints, under several pickle protocols."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    state = {f"layers.{n}.weight": torch.randn(3, 2, generator=generator) for n in range(300)}  # > 256 memo slots
    state.update({"conv.weight": torch.randn(4, 2, 3, 3, generator=generator), "bias": torch.zeros(4),
                  "scalar": torch.tensor(1.5), "t.weight": torch.randn(3, 8, generator=generator).t(),
                  "ids": torch.arange(3), "half": torch.ones(2, 2).half(), "big.weight": torch.ones(2, 70000)[:, :1],
                  "param": torch.nn.Parameter(torch.ones(2, 2)), "five": torch.ones(1, 1, 1, 1, 2)})
    checkpoint = {"model": state, "epoch": 3, "step": 2**40, "lr": 1e-3, "hp": {"betas": (0.9, 0.99),
                  "s": {1, 2}, "f": frozenset([1.5]), "name": "x" * 300, "b": b"\x00\xff", "c": 1 + 2j,
                  "none": None, "flag": True, "device": torch.device("cpu"), "size": torch.Size([2, 3])},
                  "list": [1, 2, [3, (4, 5, 6, 7)]]}
    found = {}
    for protocol in (2, 3, 4, 5):
        for name, obj in (("state", state), ("checkpoint", checkpoint)):
            buffer = io.BytesIO()
            torch.save(obj, buffer, pickle_protocol=protocol)
            buffer.seek(0)
            import zipfile

            with zipfile.ZipFile(buffer) as archive:
                member, = (n for n in archive.namelist() if n.endswith("/data.pkl"))
                found[f"{name}-protocol-{protocol}"] = archive.read(member)
    return found


TORCH_PICKLES: dict[str, bytes] = {}


def torch_pickle(name: str) -> bytes:
    if not TORCH_PICKLES:
        TORCH_PICKLES.update(_torch_pickles())
    return TORCH_PICKLES[name]


NAMES = [f"{name}-protocol-{protocol}" for protocol in (2, 3, 4, 5) for name in ("state", "checkpoint")]


@pytest.mark.parametrize("name", NAMES)
def test_what_torch_writes_is_accepted_alike_and_ends_where_pickletools_says(name):
    data = torch_pickle(name)
    end, memory = assert_same(data)
    *_, (last, _, position) = pickletools.genops(data)
    assert last.name == "STOP" and end == position + 1 == len(data)
    assert 0 < memory < pickle_scan.MAX_MEMORY


@pytest.mark.parametrize("name", NAMES[:4])
def test_every_truncation_of_a_torch_pickle_is_refused_alike(name):
    data = torch_pickle(name)[:3000]  # the first tensors and their records: every opcode kind torch writes
    cuts = sorted({position for _, _, position in pickletools.genops(torch_pickle(name)) if position < 3000}
                  | set(range(0, 3000, 7)))
    for cut in cuts:
        assert isinstance(assert_same(data[:cut])[0], type)


#: The "-over-budget" pickles are built for, and judged against, a budget SCALE times smaller than
#: pickle_scan's, and so are the corpus's bombs that the budget refuses: the same checks refuse them,
#: walking SCALE times fewer opcodes (test_hardening refuses the bombs against the real budget).
SCALE = 64


@pytest.mark.parametrize("name", sorted(BOMBS) + sorted(HOSTILE))
def test_the_hardening_corpus_is_judged_alike(name, monkeypatch):
    body, refusal = BOMBS.get(name) or HOSTILE[name]
    if refusal == "MiB":  # refused for the memory it would take
        monkeypatch.setattr(pickle_scan, "MAX_MEMORY", pickle_scan.MAX_MEMORY // SCALE)
    verdict = assert_same(PROTO + body + b".")
    assert refusal != "MiB" or verdict[0] is pickle_scan.TooCostly, verdict
MORE = {
    # every opcode the checked pass knows, valid and not, in small programs
    "shared-tuples": _nested_tuples(3, 100) + b"N.",
    "hash-key-just-under": _nested_tuples(2, 30) + b"}(h\x01Nu.",
    "hash-key-just-over": _nested_tuples(2, 32) + b"}(h\x01Nu.",
    "setitem-key": _nested_tuples(3, 100) + b"}h\x02Ns.",
    "frozenset-items": _nested_tuples(3, 100) + b"(h\x02\x91.",
    "additems": _nested_tuples(3, 100) + b"\x8f(h\x02\x90.",
    "long-int-key": b"}\x8b" + struct.pack("<i", 9000) + b"\x01" * 9000 + b"Ns.",
    "text-int": b"I12345\n.",
    "text-long-key": b"}L" + b"9" * 9000 + b"L\nNs.",
    "text-put-get": b"Np0\ng0\n\x86.",
    "text-put-negative": b"Np-1\n0N.",
    # found in review: were slot -1 the fast pass's last slot, this heavy key would pass it
    "text-put-negative-then-heavy": b"(" + b"N" * 1200 + b"tp0\n0Np-1\n0}g0\nNs.",
    "text-put-not-a-number": b"Npx\n.",
    "text-put-far": b"Np9\n.",
    "long-binget": b"Nq\x00j\x00\x00\x00\x00\x86.",
    "long-binget-empty": b"j\x05\x00\x00\x00.",
    "memoize": b"\x80\x04N\x94h\x00\x86.",
    "memoize-empty": b"\x80\x04\x94.",
    "frame": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N\x85.",
    "stack-global": b"\x80\x04\x8c\x01a\x8c\x01b\x93).",
    "newobj-ex": b"\x80\x04NNN\x92.",
    "obj-inst": b"(Nois\ncall\n(N\x8c\x01bi a\nb\n\x86.",
    "dup-pop": b"N2\x860.",
    "dup-empty": b"2.",
    "pop-mark": b"(NN1N.",
    "pop-on-mark": b"N(0.",
    "pop-empty": b"0.",
    "append-appends": b"]Na(NNe.",
    "append-no-list": b"Na.",
    "appends-no-list": b"(Ne.",
    "setitem-odd": b"}(Nu.",
    "dict": b"(NNd.",
    "dict-odd": b"(Nd.",
    "build": b"NNb.",
    "build-nothing": b"Nb.",
    "floats": b"G" + struct.pack(">d", 1.5) + b"F1.5\n\x86.",
    "bytes": b"B\x03\x00\x00\x00abcC\x01x\x8e\x01\x00\x00\x00\x00\x00\x00\x00y\x96\x00" + bytes(7) + b"\x87.",
    "strings": b"S'a'\nT\x01\x00\x00\x00bU\x01c\x87V\xe9\n\x8d\x01" + bytes(7) + b"d\x86\x86.",
    "negative-binstring": b"T\xff\xff\xff\xffa.",
    "huge-binunicode": b"X\xff\xff\xff\x7fa.",
    "binunicode-short-length": b"X\x01\x00.",
    "global-one-line": b"cmodule\n.",
    "global-no-line": b"cmodule",
    "ext": b"\x82\x01\x83\x01\x00\x84\x01\x00\x00\x00\x87.",
    "buffers": b"\x97\x98.",
    "persid": b"Pid\nQ.",
    "persid-empty": b"Q.",
    "reduce-under-mark": b"N(NR.",
    "reduce-under-mark-then-valid": b"N(NR1N.",
    "tuple2-under-mark": b"N(N\x86.",
    "tuple2-under-mark-then-valid": b"N(N\x861N.",
    "persid-under-mark-then-valid": b"N(Q1N.",
    "appends-onto-mark-then-valid": b"N((Ne1N.",
    "setitems-onto-mark-then-valid": b"N((NNu1N.",
    "setitem-under-mark-then-valid": b"}(NNs1N.",
    "build-onto-mark-then-valid": b"N(Nb1N.",
    "pop-under-mark-then-valid": b"N(01N.",
    "tuple-no-mark": b"Nt.",
    "tuple-no-mark-then-mark": b"Nt(N.",
    "setitems-no-mark-then-mark": b"}u(N.",
    "list-no-mark-then-mark": b"Nl(N.",
    "setitems-no-mark": b"}u.",
    "stop-under-mark": b"N(.",
    "stop-empty": b".",
    "put-empty": b"q\x00.",
    "put-under-mark": b"N(q\x00.",
    "put-ahead": b"Nq\x01.",
    "long-put-ahead": b"Nr\x00\x00\x00\x01.",
    "unknown": b"N\xff.",
    "no-stop": b"NN",
    "empty": b"",
    "lists": _nested_lists(1000) + b".",
    "sets-over-budget": b"(" + b"\x8f" * (1_200_000 // SCALE) + b"l.",
    "strings-over-budget": b"(" + s("a" * (70_000_000 // SCALE))[:5] + b".",
    "marks-over-budget": b"(" * (9_000_000 // SCALE) + b".",
    "hand-made-checkpoint": mapping(model=mapping(**{"fc.weight": tensor(9, (3, 3))}), x=i(2**70)) + b".",
    "disallowed-global": b"(" + g("builtins", "exec") + t(s("print(1)")) + b"R.",
}


@pytest.mark.parametrize("name", sorted(MORE))
def test_each_opcode_and_each_check_is_judged_alike(name, monkeypatch):
    if name.endswith("-over-budget"):  # judged against the budget cut as the pickles are
        monkeypatch.setattr(pickle_scan, "MAX_MEMORY", pickle_scan.MAX_MEMORY // SCALE)
    for prefix in (PROTO, b""):
        verdict = assert_same(prefix + MORE[name])
        assert not name.endswith("-over-budget") or verdict[0] is pickle_scan.TooCostly, verdict


def test_a_legacy_file_scans_alike_from_each_pickle_start(tmp_path):
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w.weight": torch.ones(3, 2), "w.bias": torch.zeros(3)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    path = tmp_path / "legacy.pt"
    path.write_bytes(data)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        start = 0
        for _ in range(5):
            verdict = assert_same(data, start)
            assert assert_same(mapped, start) == verdict
            *_, (last, _, position) = pickletools.genops(data[start:])
            assert last.name == "STOP" and verdict[0] == start + position + 1
            start = verdict[0]


@FUZZ
@given(st.data())
def test_mutated_torch_pickles_are_judged_alike(data):
    name = data.draw(st.sampled_from(["state-protocol-2", "checkpoint-protocol-2", "checkpoint-protocol-4"]))
    assert_same(data.draw(mutations(torch_pickle(name)[:4000] + b".")))


@FUZZ
@given(st.data())
def test_mutated_hostile_pickles_are_judged_alike(data):
    corpus = {**{name: body for name, (body, _) in HOSTILE.items()},
              **{name: body for name, body in MORE.items() if len(body) < 100_000}}
    name = data.draw(st.sampled_from(sorted(corpus)))
    assert_same(data.draw(mutations(PROTO + corpus[name] + b".")))


@FUZZ
@given(st.binary(max_size=64))
def test_random_opcode_strings_are_judged_alike(raw):
    assert_same(PROTO + raw)


#: Opcodes with small arguments, valid and not: strung together they reach every branch and check.
TOKENS = [b"N", b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"\x8f", b"l", b"d", b"\x91", b"a", b"e",
          b"s", b"u", b"\x90", b"R", b"\x81", b"\x92", b"b", b"o", b"Q", b"0", b"1", b"2", b"\x94", b"\x93",
          b"K\x01", b"J\xff\xff\xff\xff", b"\x8a\x09" + b"\x01" * 9, b"I7\n", b"L12L\n", b"X\x01\x00\x00\x00x",
          b"\x8c\x01y", b"cm\nn\n", b"im\nn\n", b"Pp\n", b"q\x00", b"q\x01", b"q\x02", b"h\x00", b"h\x01", b"p1\n",
          b"g0\n", b"r\x00\x00\x00\x00", b"r\x03\x00\x00\x00", b"j\x01\x00\x00\x00", b"\x88", b"\x89", b"\xff",
          b"\x95\x01" + bytes(7), b"."]


@settings(FUZZ, max_examples=EXAMPLES or 2000)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_random_opcode_programs_are_judged_alike(tokens):
    assert_same(PROTO + b"".join(tokens))
    assert_same(PROTO + b"".join(tokens) + b".")


def test_the_collector_is_paused_only_while_unpickling(tmp_path):
    """torch_pickle.paused_gc (for library callers: the CLI runs without the collector): off while the
    objects are built, back on after (a refusal too), and left off where the caller had turned it off."""
    import gc

    from test_hardening import torch_zip

    from fancli.loaders.torch_pickle import UnsafeGlobal, WeightsUnpickler
    from fancli.loaders.torch_zip import TorchZip

    seen = []

    class Probe(WeightsUnpickler):
        def rebuild_tensor(self, *args):
            seen.append(gc.isenabled())
            return super().rebuild_tensor(*args)

    good = TorchZip(torch_zip(tmp_path / "ok.pt", mapping(w=tensor(9, (3, 3)))))
    bad = TorchZip(torch_zip(tmp_path / "bad.pt", b"(" + g("builtins", "exec") + t(s("1")) + b"R"))
    was = gc.isenabled()  # the CLI's main() turns it off for the process (earlier tests ran it in-process)
    gc.enable()
    try:
        assert list(good.unpickle(Probe)) == ["w"] and seen == [False] and gc.isenabled()
        with pytest.raises(UnsafeGlobal):
            bad.unpickle()
        assert gc.isenabled()
        gc.disable()
        good.unpickle(Probe)
        assert seen == [False, False] and not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


@settings(FUZZ, max_examples=EXAMPLES or 300)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), max_size=4), st.integers(0, 12),
       st.sampled_from([9, 12, 40]))
def test_a_view_past_its_storage_is_refused_as_stridedref_measures_it(tmp_path_factory, dims, offset, numel):
    """TorchZip.tensor_ref's bounds check, computed in C, refuses exactly the views whose StridedRef span
    (from the offset) passes the storage, or whose storage passes its member (36 bytes: 9 floats)."""
    from test_hardening import torch_zip

    from fancli.errors import SourceError
    from fancli.loaders.torch_pickle import SavedStorage, SavedTensor
    from fancli.loaders.torch_zip import TorchZip
    from fancli.weights.tensors import StridedRef

    path = tmp_path_factory.getbasetemp() / "view.pt"
    if not path.exists():
        torch_zip(path, mapping(w=tensor(9, (3, 3))))
    archive = TorchZip(path)
    size, stride = tuple(d for d, _ in dims), tuple(s for _, s in dims)
    view = SavedTensor(SavedStorage("0", "float32", numel), "float32", offset, size, stride)
    expected = StridedRef(None, "float32", size, stride, offset, numel)
    past = expected.numel and (offset + expected.span() > numel or numel * 4 > 36)
    try:
        ref = archive.tensor_ref("w", view)
    except SourceError as error:
        assert past and "runs past the end of its storage" in str(error)
    else:
        assert not past and (ref.shape, ref.stride, ref.offset, ref.storage_elements) == (size, stride, offset, numel)
