"""The bad-input corpus, built here: every file fancli can be pointed at from the internet gets a clear
answer — exit 2 and one line on stderr naming the file and the problem, or exit 0 with a `null` and a
note where part of a model is fine — never a traceback, a hang, a memory blow-up or code from the file.

Pickle bombs run in a child process, timed, with their peak memory read back: a regression must fail
the test, not take the test run down with it.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, run

resource = pytest.importorskip("resource", reason="POSIX: the corpus uses rlimits, FIFOs and signals")

SAMPLE = REPO / "sample_models" / "lenet5.yaml"
#: No case may take longer, nor reach a higher peak RSS: a child's whole peak (Python, torch where imported,
#: the case), or how far a case in this process raised its peak.
SECONDS = 5.0
PEAK_MB = 512


# --- how a case is run and judged ------------------------------------------------------------------


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so fancli's own `except Exception` cannot swallow it."""


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    peak_mb: float


def _alarm(_signum, _frame):
    raise Hung(f"no answer within {SECONDS} s")


def cli(*args: object) -> Outcome:
    """Run the CLI in-process under an alarm (a blocking open() or read() is interrupted by it)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        result = run(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # the high-water mark, in MB
    return Outcome(result.code, result.out, result.err, time.perf_counter() - start, grown)


_CHILD = """
import os, resource, sys
from fancli.cli import main
try:
    main(sys.argv[1:])
finally:
    try:  # the program's own peak: ru_maxrss also counts the pages a forked child shared with pytest
        with open("/proc/self/status") as status:
            kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["FANCLI_TEST_PEAK"], "w") as peak:
        peak.write(str(kib))
"""


def _limits() -> None:
    """In the child: ceilings far above the promise, so a regression fails fast instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def _cpu_limit() -> None:
    """For a child that imports torch, whose address space (not memory) can exceed any fixed ceiling."""
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def isolated(tmp_path: Path, *args: object, torch: bool = False) -> Outcome:
    """Run the CLI in a child process: its CPU time and peak RSS, whatever the case does to it.

    CPU time, not wall time: on a shared, busy machine the wall clock measures the neighbours. A hang
    that burns no CPU (a blocking read) is caught by the 60 s timeout instead.
    """
    peak_file = tmp_path / f"peak-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(REPO), FANCLI_TEST_PEAK=str(peak_file))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=60, preexec_fn=_cpu_limit if torch else _limits)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fancli {' '.join(map(str, args))}: still running after 60 s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak = int(peak_file.read_text()) / 1024 if peak_file.exists() else math.inf
    return Outcome(done.returncode, done.stdout, done.stderr, seconds, peak)


def refused(outcome: Outcome, source: object, *words: str, seconds: float = SECONDS) -> str:
    """Exit 2, nothing on stdout, one stderr line naming the source and the problem; fast and small."""
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert outcome.out == ""
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fancli: error: "), outcome.err
    assert str(source) in lines[0], outcome.err
    for word in words:
        assert word in lines[0], outcome.err
    assert outcome.seconds < seconds, f"{outcome.seconds:.1f} s"
    assert outcome.peak_mb < PEAK_MB, f"{outcome.peak_mb:.0f} MB"
    return lines[0]


def accepted(outcome: Outcome) -> dict:
    """Exit 0 with valid JSON (no NaN or Infinity tokens) and nothing on stderr."""
    assert outcome.code == 0, outcome.err
    assert outcome.err == ""
    assert outcome.seconds < SECONDS and outcome.peak_mb < PEAK_MB
    return json.loads(outcome.out, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))


# --- hand-made pickles and torch.save archives -------------------------------------------------------

PROTO = b"\x80\x02"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def i(value: int) -> bytes:
    if value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor(numel: int, size: tuple[int, ...], key: str = "0", stride: tuple[int, ...] | None = None) -> bytes:
    """`torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, as torch writes it."""
    if stride is None:
        stride = tuple(reversed(list(itertools.accumulate(reversed(size[1:]), operator.mul, initial=1))))
    storage = t(s("storage"), g("torch", "FloatStorage"), s(key), s("cpu"), i(numel)) + b"Q"
    return (g("torch._utils", "_rebuild_tensor_v2")
            + t(storage, i(0), t(*map(i, size)), t(*map(i, stride)), b"\x89", g("collections", "OrderedDict") + b")R")
            + b"R")


def mapping(**items: bytes) -> bytes:
    return b"}(" + b"".join(s(key) + value for key, value in items.items()) + b"u"


def torch_zip(path: Path, body: bytes, storage: bytes = bytes(36), compress: bool = False) -> Path:
    """A torch.save archive around a hand-made data.pkl (protocol 2, as torch writes it)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", PROTO + body + b".")
        archive.writestr("archive/data/0", storage)
        archive.writestr("archive/version", "3\n")
    return path


def legacy_file(path: Path, body: bytes) -> Path:
    """torch's pre-1.6 format: magic number, protocol, system info, the object, storage keys."""
    import pickle

    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    path.write_bytes(b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, info))
                     + PROTO + body + b"." + pickle.dumps([], protocol=2))
    return path


def test_what_torch_writes_into_checkpoints_is_still_read(tmp_path):
    """The checks refuse bombs, not checkpoints: sets, devices, sizes, bytes and complex numbers pass."""
    torch = pytest.importorskip("torch")
    hyper = {"sets": {(1, 2), "a", 3}, "frozen": frozenset([1.5]), "device": torch.device("cuda", 1),
             "size": torch.Size([2, 3]), "bytes": b"\x00\xff", "complex": 1 + 2j, "betas": (0.9, 0.999)}
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}, "hyper_parameters": hyper}, tmp_path / "ckpt.pt")
    report = accepted(cli("inspect", tmp_path / "ckpt.pt", "-f", "json"))
    assert [layer["param"] for layer in report["layers"]] == ["fc.weight"]


def test_the_hand_made_pickles_are_read_when_valid(tmp_path):
    """The premise of the bombs below: the same builders make a file fancli reads."""
    path = torch_zip(tmp_path / "ok.pt", mapping(**{"fc.weight": tensor(9, (3, 3))}))
    layer, = accepted(cli("inspect", path, "-f", "json", "--stats"))["layers"]
    assert (layer["shape"], layer["fan_in"], layer["observed"]["count"]) == ([3, 3], 3, 9)


# --- the corpus: files that are not what they claim ------------------------------------------------


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(cli("inspect", tmp_path / "empty.pt"), tmp_path / "empty.pt", "empty file")


def test_truncated_zip(tmp_path, torch_files):
    data = torch_files["state_dict"].read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        path = tmp_path / f"truncated-{cut}.pt"
        path.write_bytes(data[:cut])
        refused(cli("inspect", path), path)


def test_a_zip_that_is_not_a_torch_file(tmp_path, torch_files):
    path = tmp_path / "foreign.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("inner/model.pt", torch_files["evil"].read_bytes())  # a checkpoint inside: never opened
    refused(cli("inspect", path), path, "not one written by torch.save")


@pytest.mark.parametrize("name, what", [("tensor", "a Tensor"), ("list", "a list"), ("int", "an int")])
def test_a_torch_file_without_a_state_dict(torch_files, name, what):
    refused(cli("inspect", torch_files[name]), torch_files[name], f"holds {what}, not a state_dict")


def test_only_1d_tensors_give_null_fans_with_notes(torch_files):
    layers = accepted(cli("inspect", torch_files["1d"], "-f", "json"))["layers"]
    assert [layer["param"] for layer in layers] == ["norm.weight", "norm.bias"]
    for layer in layers:
        assert layer["fan_in"] is None and layer["fan_out"] is None and layer["std"] is None
        assert any("1-D" in note for note in layer["notes"])
    table = cli("inspect", torch_files["1d"], "--all")
    assert table.code == 0 and "norm.bias" in table.out


def test_zero_element_tensors(torch_files):
    layers = accepted(cli("inspect", torch_files["zero"], "-f", "json", "--stats"))["layers"]
    empty = layers[0]
    assert empty["shape"] == [0, 5] and empty["std"] is None and empty["observed"]["count"] == 0
    assert any("zero-element" in note for note in empty["notes"])
    assert cli("compare", torch_files["zero"], "--stats").code == 0


def test_nan_and_inf_weights_with_stats(torch_files):
    for command in ("inspect", "compare"):
        layers = accepted(cli(command, torch_files["nan"], "-f", "json", "--stats"))["layers"]
        partly, wholly = layers
        assert partly["observed"]["nonfinite"] == 2 and math.isfinite(partly["observed"]["std"])
        assert wholly["observed"]["nonfinite"] == 9 and wholly["observed"]["std"] is None
        assert all(any("NaN or Inf" in note for note in layer["notes"]) for layer in layers)
    for fmt in ("table", "markdown"):
        shown = cli("inspect", torch_files["nan"], "--stats", "-f", fmt)
        cells = [line for line in shown.out.splitlines() if ".weight" in line]  # the rows, not the notes
        assert shown.code == 0 and not re.search(r"\b(nan|inf)\b", "\n".join(cells).lower()), shown.out


def _safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


SAFETENSORS = {
    "length-past-end": (_safetensors({}, length=1000), "runs past the end"),
    "length-absurd": (_safetensors({}, length=1 << 40), "exceeds the 100000000-byte limit"),
    "not-json": (_safetensors(b"{'weight': 1}"), "not valid JSON"),
    "overlap": (_safetensors({"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [4, 12])}, bytes(12)),
                "overlap"),
    "offsets-past-end": (_safetensors({"a": _entry("F32", [4], [0, 16])}, bytes(8)), "past the end of the file"),
    "unknown-dtype": (_safetensors({"a": _entry("F128", [1], [0, 16])}, bytes(16)), "unknown dtype 'F128'"),
    "shape-overflow": (_safetensors({"a": _entry("F32", [2**62] * 64, [0, 4])}, bytes(4)), "more than 2**63"),
    # 30 MB of `[],` in the header: 10 million lists, 21 bytes of memory for each byte read.
    "header-bomb": (_safetensors(b"[" + b"[]," * 10_000_000 + b"[]]"), "MiB to parse"),
}


@pytest.mark.parametrize("name", SAFETENSORS)
def test_malformed_safetensors(tmp_path, name):
    content, words = SAFETENSORS[name]
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(content)
    refused(cli("inspect", path), path, words)


def test_an_index_naming_a_missing_shard(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": "model-00001-of-00002.safetensors"}}))
    refused(cli("inspect", index), index, "model-00001-of-00002.safetensors", "no such file")


@pytest.mark.parametrize("content, words", [
    (b'{"weight_map": {}, "x": [' + b"[]," * 10_000_000 + b"[]]}", "MiB to parse"),
    (b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
], ids=["json-bomb", "nested-too-deeply"])
def test_a_hostile_index(tmp_path, content, words):
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(content)
    refused(cli("inspect", index), index, words)


def test_an_index_naming_a_fifo_does_not_hang(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    os.mkfifo(tmp_path / "shard.safetensors")
    index.write_text(json.dumps({"weight_map": {"fc.weight": "shard.safetensors"}}))
    refused(cli("inspect", index), index, "not a regular file")


BILLION_LAUGHS = "\n".join(["description:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                           + [f"  a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 10)]
                           + ["layers: *a9"])
YAML = {
    "not-a-mapping": ("- type: linear\n- type: conv2d\n", ":1: expected a mapping with a 'layers' list"),
    "scalar": ("just words\n", "expected a mapping"),
    "duplicate-keys": ("layers:\n  - {type: linear, in_features: 3, in_features: 4, out_features: 2}\n",
                       "duplicate key 'in_features'"),
    "alias-bomb": (BILLION_LAUGHS, "layers[0]: expected a mapping with a 'type', got a list"),
    "many-aliases": ("a: &a [1]\nb: [" + ", ".join(["*a"] * 5000) + "]\nlayers: []\n", "more than 1000 aliases"),
    "strings-for-numbers": ("layers:\n  - {type: conv2d, in_channels: '64', out_channels: 8, kernel_size: 3}\n",
                            "expected an integer, got '64'"),
    "float-for-int": ("layers:\n  - {type: linear, in_features: 2.5, out_features: 8}\n",
                      "expected an integer, got 2.5"),
    "nan-param": ("defaults: {nonlinearity: leaky_relu, param: .nan}\nlayers:\n  - {type: linear, in_features: 2, "
                  "out_features: 2}\n", "expected a number"),
    "tabs": ("layers:\n\t- {type: linear}\n", "not valid YAML"),
    "python-tag": ("layers: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    # 2.4 MB of `[],`: PyYAML would keep 500 bytes for each node.
    "bracket-bomb": ("a: [" + "[]," * 800_000 + "]\nlayers: []\n", "too large for a YAML spec"),
}


@pytest.mark.parametrize("name", YAML)
def test_bad_yaml(tmp_path, name):
    text, words = YAML[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    refused(cli("inspect", path), path, words)


def test_a_billion_channels_is_arithmetic_only(tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text("layers:\n  - {type: conv2d, in_channels: 1000000000, out_channels: 1000000000, kernel_size: 3}\n"
                    "  - {type: linear, in_features: 1000000000, out_features: 1000000000}\n")
    outcome = cli("inspect", path, "-f", "json", "--stats")
    layers = accepted(outcome)["layers"]
    assert outcome.seconds < 1.0
    assert layers[0]["shape"] == [10**9, 10**9, 3, 3] and layers[0]["fan_in"] == 9 * 10**9
    assert layers[1]["std"] == pytest.approx(math.sqrt(2 / 10**9))


def test_a_directory(tmp_path):
    refused(cli("inspect", tmp_path), tmp_path, "is a directory")


def test_a_file_without_read_permission(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    path.write_bytes(b"PK\x03\x04")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: make open() fail as it would for anyone else
        import fancli.safe_io as files

        real_open = os.open

        def denied(name, *args, **kwargs):
            if Path(name) == path:
                raise PermissionError(13, "Permission denied", str(name))
            return real_open(name, *args, **kwargs)

        monkeypatch.setattr(files.os, "open", denied)
    refused(cli("inspect", path), path, "permission denied")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    refused(cli("inspect", fifo), fifo, "not a regular file")
    link = tmp_path / "spec.yaml"
    link.symlink_to(fifo)
    refused(cli("inspect", link), link, "not a regular file")


@pytest.mark.parametrize("source, words", [("os.path:missing", "has no attribute 'missing'"),
                                           ("fancli_no_such_pkg.mod:missing", "No module named")])
def test_a_factory_that_does_not_exist(source, words):
    refused(cli("inspect", source), source, words)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    import fancli.loaders

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fancli.loaders, "load", interrupted)
    outcome = run("inspect", SAMPLE)
    assert (outcome.code, outcome.out) == (130, "")
    # click writes a newline first, so that the message starts on a fresh line after the terminal's ^C
    assert outcome.err.strip().splitlines() == ["fancli: interrupted"] and "Traceback" not in outcome.err


# --- pickles that would run code -------------------------------------------------------------------


class WritesMarker:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class CallsSystem:
    def __init__(self, path: Path) -> None:
        self.command = f"touch {path}"

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload, named", [(WritesMarker, "open"), (CallsSystem, "system")])
def test_code_in_a_pickle_never_runs_without_trust(tmp_path, legacy, payload, named):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    checkpoint = {"model": {"fc.weight": torch.ones(2, 2)}, "callbacks": {"deep": [{"inside": payload(marker)}]}}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    line = refused(cli("inspect", path), path, named, "--trust")
    assert "run code" in line or "refuses" in line
    assert not marker.exists()


def test_a_disallowed_global_deep_inside_a_hand_made_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    body = mapping(model=mapping(**{"fc.weight": tensor(9, (3, 3))}),
                   hp=mapping(a=mapping(b=b"(" + g("builtins", "exec") + t(s(f"open({str(marker)!r}, 'w')"))
                                        + b"Rl")))
    path = torch_zip(tmp_path / "evil.pt", body)
    line = refused(cli("inspect", path), path, "'builtins.exec'", "--trust")
    assert "a weights file does not need" in line
    assert not marker.exists()


# --- memory and time bombs against the torch-free reader -------------------------------------------

_MEMO = b"q\x00"  # BINPUT 0
_GET0, _GET1, _GET2 = b"h\x00", b"h\x01", b"h\x02"


def _nested_tuples(levels: int, width: int) -> bytes:
    """Tuples of `width` references to the tuple below, memoised: each level multiplies what hashing visits."""
    body = t(*[i(1)] * width) + b"q\x00"
    for level in range(1, levels):
        body += b"0" + t(*[b"h" + bytes([level - 1])] * width) + b"q" + bytes([level])
    return body + b"0"


BOMBS = {
    # The C unpickler allocates a memo slot for every index up to the one a PUT names: 10 bytes, 0.5 GB here
    # (and 32 GB for the largest index).
    "memo-index": (b"N" + b"r\xff\xff\xff\x01", "memo slot"),
    # 216 bytes per one-byte EMPTY_SET; deflated, the file is tiny.
    "empty-sets": (b"(" + b"\x8f" * 5_000_000 + b"l", "MiB"),
    # A huge list: each opcode a new empty list.
    "list-of-lists": (b"(" + b"]" * 5_000_000 + b"l", "MiB"),
    # One 1 MB string turned into bytes 2,000 times through the memo: 2 GB from 10 KB of opcodes.
    "encoded-copies": (s("a" * 1_000_000) + _MEMO + b"(" + (g("_codecs", "encode") + t(_GET0, s("latin1")) + b"R")
                       * 2000 + b"l", "builds more than"),
    # str() of a list that holds itself a thousand times over, three deep: 10^9 characters.
    "device-str": (b"(" + b"K\x01" * 1000 + b"l" + _MEMO + b"0(" + _GET0 * 1000 + b"lq\x01" + b"0"
                   + g("torch", "device") + t(b"(" + _GET1 * 1000 + b"l") + b"R", "torch.device"),
    # A dict key whose hash visits 100^3 objects; ten such keys.
    "hash-key": (_nested_tuples(3, 100) + b"}(" + (_GET2 + b"N") * 10 + b"u", "hashes a key"),
    # The same through a set.
    "hash-set": (_nested_tuples(3, 100) + g("builtins", "set") + t(b"(" + _GET2 * 10 + b"l") + b"R",
                 "a set of something other than"),
    # A length prefix of a terabyte.
    "bytes-length": (b"\x8e" + struct.pack("<Q", 1 << 40) + b"x", "MiB"),
    # A persistent id claiming 10^15 elements.
    "storage-numel": (mapping(w=tensor(10**15, (3, 3))), "runs past the end of its storage"),
    # A shape whose product overflows int64, over a 36-byte storage.
    "shape-product": (mapping(w=tensor(9, (2**62, 2**62, 4), stride=(1, 1, 1))), "runs past the end of its storage"),
    "stride-product": (mapping(w=tensor(9, (2**62, 2**62, 4))), "malformed size"),
    "shape-beyond-int64": (mapping(w=tensor(9, (2**63 + 1, 1))), "malformed size"),
    "shape-of-200000-dims": (mapping(w=tensor(9, (1,) * 200_000)), "malformed size"),
}


@pytest.mark.parametrize("name", BOMBS)
def test_pickle_bombs_are_refused_quickly(tmp_path, name):
    body, words = BOMBS[name]
    path = torch_zip(tmp_path / f"{name}.pt", body, compress=True)
    assert path.stat().st_size < 200_000
    refused(isolated(tmp_path, "inspect", path), path, words)


def test_a_pickle_bomb_in_the_legacy_format(tmp_path):
    pytest.importorskip("torch")
    path = legacy_file(tmp_path / "sets.pt", b"]" + b"(" + b"\x8f" * 5_000_000 + b"e")
    refused(isolated(tmp_path, "inspect", path, torch=True), path, "MiB", seconds=20)  # mostly importing torch


def test_shared_and_self_nested_containers_are_walked_once(tmp_path):
    """Dicts that share one another (10^8 paths) and a checkpoint that holds itself: read, quickly."""
    weights = mapping(**{"fc.weight": tensor(9, (3, 3))}) + _MEMO
    levels = [weights]
    for level in range(1, 5):
        levels.append(b"0" + b"}(" + b"".join(s(f"k{n}") + b"h" + bytes([level - 1]) for n in range(100))
                      + b"uq" + bytes([level]))
    shared = b"".join(levels)
    path = torch_zip(tmp_path / "shared.pt", shared)
    layers = accepted(isolated(tmp_path, "inspect", path, "-f", "json"))["layers"]
    assert [layer["param"] for layer in layers] == ["k0.k0.k0.k0.fc.weight"]

    selfish = b"}q\x00(" + s("model") + _GET0 + s("a") + i(1) + s("b") + i(2) + s("w") + tensor(9, (3, 3)) + b"u"
    path = torch_zip(tmp_path / "selfish.pt", selfish)
    layers = accepted(isolated(tmp_path, "inspect", path, "-f", "json"))["layers"]
    assert [layer["param"] for layer in layers] == ["w"]


def _nested_lists(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


HOSTILE = {
    # BUILD rewrites an object after the checks that made it: refused for fancli's own records.
    "build-on-a-tensor": (mapping(w=tensor(9, (3, 3)) + mapping(size=t(i(1000), i(1000))) + b"b"),
                          "sets the state of a Tensor"),
    "ordered-dict-with-arguments": (g("collections", "OrderedDict") + t(b"(" + t(s("w"), tensor(9, (3, 3))) + b"l")
                                    + b"R", "OrderedDict called with arguments"),
    "a-slow-codec": (g("_codecs", "encode") + t(s("é" * 1000), s("punycode")) + b"R", "latin-1 text"),
    "size-of-a-string": (g("torch", "Size") + t(s("x" * 100)) + b"R", "torch.Size"),
    "unexpected-persistent-id": (s("not a storage") + b"Q", "unexpected persistent id"),
    "bad-memo-read": (b"h\x05", "reads empty memo slot 5"),
    "stack-underflow": (b"R", "pops more than the stack holds"),
    "unknown-opcode": (b"\xff", "unknown opcode 0xff"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_pickles_are_one_line(tmp_path, name):
    body, words = HOSTILE[name]
    path = torch_zip(tmp_path / f"{name}.pt", body)
    refused(cli("inspect", path), path, words)


def test_nesting_deeper_than_any_checkpoint_is_not_followed(tmp_path):
    deep = mapping(deep=_nested_lists(100_000), model=mapping(**{"fc.weight": tensor(9, (3, 3))}, x=i(1), y=i(2)))
    path = torch_zip(tmp_path / "deep.pt", deep)
    assert [layer["param"] for layer in accepted(cli("inspect", path, "-f", "json"))["layers"]] == ["fc.weight"]


def test_expanded_views_are_read_a_block_at_a_time_or_refused(tmp_path):
    torch = pytest.importorskip("torch")
    expanded = torch.randn(3).expand(5000, 3)
    torch.save({"fc.weight": expanded}, tmp_path / "expanded.pt")
    observed = accepted(cli("inspect", tmp_path / "expanded.pt", "-f", "json", "--stats"))["layers"][0]["observed"]
    assert observed["count"] == 15000 and observed["std"] == pytest.approx(float(expanded.std()), rel=1e-6)
    from fancli.loaders import load

    data = load(str(tmp_path / "expanded.pt")).layers[0].data
    assert max(chunk.size for chunk in data.chunks(1000)) <= 1000  # a block at a time, not the whole view
    # A hand-made view of 2^41 values over 3 stored ones: listed, but --stats will not loop over it.
    path = torch_zip(tmp_path / "huge-view.pt", mapping(w=tensor(9, (2**40, 2), stride=(0, 1))))
    assert accepted(cli("inspect", path, "-f", "json"))["layers"][0]["shape"] == [2**40, 2]
    refused(cli("inspect", path, "--stats"), path, "a view of 2199023255552 values over 2 stored ones")


def test_compressed_storages_are_read_only_when_small(tmp_path):
    """torch.save never compresses; a deflated storage would be decompressed again for every chunk."""
    small = torch_zip(tmp_path / "small.pt", mapping(w=tensor(9, (3, 3))), storage=struct.pack("<9f", *range(9)),
                      compress=True)
    assert accepted(cli("inspect", small, "-f", "json", "--stats"))["layers"][0]["observed"]["max"] == 8
    rows = 4100  # 4096 x 4100 floats: 67 MB of zeros, 65 KB deflated
    large = torch_zip(tmp_path / "large.pt", mapping(w=tensor(4096 * rows, (4096, rows))),
                      storage=bytes(4 * 4096 * rows), compress=True)
    assert large.stat().st_size < 1_000_000
    assert accepted(cli("inspect", large, "-f", "json"))["layers"][0]["shape"] == [4096, rows]
    refused(cli("inspect", large, "--stats"), large, "compressed storage")


def test_torch_warnings_do_not_add_lines(tmp_path):
    """In a child process: pytest would catch the warning before it reached stderr."""
    import pickle

    pytest.importorskip("torch")
    path = tmp_path / "protocol5.pkl"
    path.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=5))  # torch warns about the protocol, then refuses
    refused(isolated(tmp_path, "inspect", path, torch=True), path, "--trust", seconds=20)


# --- the saved files the corpus uses ---------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("corpus")
    partly = torch.randn(4, 4)
    partly[0, 0], partly[1, 1] = float("nan"), float("inf")
    objects = {
        "state_dict": {"fc.weight": torch.randn(8, 4), "fc.bias": torch.zeros(8)},
        "tensor": torch.randn(3),
        "list": [1, 2],
        "int": 7,
        "1d": {"norm.weight": torch.ones(3), "norm.bias": torch.zeros(3)},
        "zero": {"empty.weight": torch.empty(0, 5), "fc.weight": torch.randn(3, 3)},
        "nan": {"partly.weight": partly, "wholly.weight": torch.full((3, 3), float("nan"))},
        "evil": {"w": torch.ones(1), "x": CallsSystem(folder / "pwned")},
    }
    paths = {}
    for name, obj in objects.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(obj, paths[name])
    return paths


def test_no_marker_was_left_by_any_case(torch_files):
    assert not (torch_files["evil"].parent / "pwned").exists()


# --- configs that are not the user's, and what a config may reach (issue 24) -----------------------

OTHER_UID = 54321  # the tests run as root: os.chown gives a file to another user
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="os.chown to another uid needs root, as here and in CI")
PAYLOAD = "import pathlib\npathlib.Path(__file__).with_name('RAN').touch()\ndef build():\n    return None\n"


def _evil_pickle(path: Path, marker: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"fc.weight": torch.ones(2, 2), "x": WritesMarker(marker)}, path)


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    """A world-writable sticky folder (as /tmp) holding the user's own folder `b`, the working directory."""
    folder = tmp_path / "shared"
    (folder / "b").mkdir(parents=True)
    folder.chmod(0o1777)
    monkeypatch.chdir(folder / "b")
    return folder


@as_root
@pytest.mark.parametrize("config", ['source: "payload:build"\n', "source: model.pt\ntrust: true\n"],
                         ids=["factory", "trusted-pickle"])
def test_a_config_another_user_planted_in_a_parent_folder_is_refused(shared, config):
    (shared / "payload.py").write_text(PAYLOAD)
    _evil_pickle(shared / "model.pt", shared / "RAN")
    (shared / "fancli.yaml").write_text(config)
    for path in ("payload.py", "model.pt", "fancli.yaml"):
        os.chown(shared / path, OTHER_UID, OTHER_UID)
    line = refused(cli("check"), shared / "fancli.yaml", f"owned by uid {OTHER_UID}", "--config")
    assert not (shared / "RAN").exists(), line
    assert cli("inspect", SAMPLE, "--no-config").code == 0  # the way out it names


@as_root
@pytest.mark.parametrize("where, mode, words", [("file", 0o664, f"the file is writable by its group (gid {OTHER_UID})"),
                                                ("file", 0o646, "the file is writable by others"),
                                                ("folder", 0o777, "its folder is writable by others")])
def test_a_config_others_can_change_is_refused(tmp_path, monkeypatch, where, mode, words):
    (tmp_path / "payload.py").write_text(PAYLOAD)
    (tmp_path / "fancli.yaml").write_text('source: "payload:build"\n')
    (tmp_path / "fancli.yaml" if where == "file" else tmp_path).chmod(mode)
    os.chown(tmp_path / "fancli.yaml", 0, OTHER_UID)  # a group with no name: not the user's own
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    refused(cli("inspect"), tmp_path / "fancli.yaml", words)
    assert not (tmp_path / "RAN").exists()


@as_root
def test_a_config_writable_by_the_users_own_group_is_used(tmp_path, monkeypatch):
    """As umask 002 leaves it where each user has a private group (root's is gid 0)."""
    (tmp_path / "fancli.yaml").write_text("defaults: {scheme: xavier_uniform}\n")
    (tmp_path / "fancli.yaml").chmod(0o664)
    tmp_path.chmod(0o775)
    monkeypatch.chdir(tmp_path)
    outcome = cli("inspect", SAMPLE, "-f", "json")
    assert outcome.code == 0 and json.loads(outcome.out)["layers"][0]["scheme"] == "xavier_uniform"


@as_root
def test_a_foreign_pyproject_with_tool_fancli_is_refused_and_one_without_is_passed_over(shared):
    (shared / "pyproject.toml").write_text('[tool.fancli]\nsource = "payload:build"\n')
    (shared / "payload.py").write_text(PAYLOAD)
    os.chown(shared / "pyproject.toml", OTHER_UID, OTHER_UID)
    refused(cli("inspect"), shared / "pyproject.toml", f"owned by uid {OTHER_UID}")
    (shared / "pyproject.toml").write_text('[project]\nname = "theirs"\n')
    assert cli("inspect", SAMPLE, "-f", "json").code == 0
    assert not (shared / "RAN").exists()


@as_root
def test_the_config_given_with_config_is_used_whoever_owns_it(shared):
    (shared / "fancli.yaml").write_text("defaults: {scheme: xavier_uniform}\n")
    os.chown(shared / "fancli.yaml", OTHER_UID, OTHER_UID)
    outcome = cli("inspect", SAMPLE, "--config", shared / "fancli.yaml", "-f", "json")
    assert outcome.code == 0 and json.loads(outcome.out)["layers"][0]["scheme"] == "xavier_uniform"


def test_the_search_stops_at_the_home_folder(tmp_path, monkeypatch):
    (tmp_path / "fancli.yaml").write_text("defaults: {scheme: no_such_scheme}\n")  # above home: not read
    (tmp_path / "home" / "project").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "home" / "project")
    outcome = cli("inspect", SAMPLE)
    assert outcome.code == 0, outcome.err


@pytest.mark.parametrize("source", ['"os:system"', '"subprocess:run"', '"fancli_reexports_os:os.system"',
                                    '"fancli_reexports_os:shell"'])
def test_a_config_factory_from_the_standard_library_is_refused(tmp_path, monkeypatch, source):
    marker = tmp_path / "RAN"
    (tmp_path / "fancli_reexports_os.py").write_text(
        "import functools, os\nshell = functools.partial(os.system)\n")
    kwargs = "{args: [touch, RAN]}" if "subprocess" in source else "{command: touch RAN}"
    (tmp_path / "fancli.yaml").write_text(f"source: {source}\nkwargs: {kwargs}\n")
    monkeypatch.chdir(tmp_path)
    refused(cli("check"), source.strip('"'), "standard library")
    assert not marker.exists()


def test_a_factory_shadowing_a_standard_module_name_is_the_users(tmp_path, monkeypatch):
    """`tabnanny` is a standard module's name, but the user's tabnanny.py is the one imported: not refused."""
    (tmp_path / "tabnanny.py").write_text("def build():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    try:
        refused(cli("inspect", "tabnanny:build"), "tabnanny:build", "returned an int")
    finally:
        sys.modules.pop("tabnanny", None)


KEY = '"$(touch MARKER)".weight'


@pytest.fixture
def repository(tmp_path, monkeypatch) -> Path:
    """A cloned repository beside the user's home, with a weight key that is a shell command."""
    st = pytest.importorskip("safetensors.numpy")
    import numpy as np

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    st.save_file({KEY: np.ones((4, 4), np.float32)}, str(repo / "model.safetensors"))
    monkeypatch.chdir(repo)
    return repo


@pytest.mark.parametrize("line, key", [("baseline: ../home/.bash_profile", "baseline"),
                                       ("baseline: {home}/.bash_profile", "baseline"),
                                       ("baseline: fancli.lock.json", "baseline"),  # a link out of the repository
                                       ("source: ../home/model.safetensors", "source")],
                         ids=["relative", "absolute", "link", "source"])
def test_a_config_cannot_aim_outside_its_folder(repository, line, key):
    home = repository.parent / "home"
    (repository / "fancli.lock.json").symlink_to(home / ".bash_profile")
    (home / "model.safetensors").write_bytes((repository / "model.safetensors").read_bytes())
    source = "" if key == "source" else "source: model.safetensors\n"
    (repository / "fancli.yaml").write_text(source + line.format(home=home) + "\n")
    line = refused(cli("check", "--update"), repository / "fancli.yaml", f"{key}:", "outside the config's folder tree")
    assert not (home / ".bash_profile").exists(), line


def test_the_command_line_may_name_a_baseline_anywhere(repository):
    (repository / "fancli.yaml").write_text("source: model.safetensors\n")
    elsewhere = repository.parent / "home" / "init.lock.json"
    assert cli("check", "--update", "--baseline", elsewhere).code == 0
    assert KEY in json.loads(elsewhere.read_text())["layers"]
    assert cli("check", "--baseline", elsewhere).code == 0


def test_a_merge_key_cannot_turn_trust_on(tmp_path, monkeypatch):
    _evil_pickle(tmp_path / "model.pt", tmp_path / "RAN")
    (tmp_path / "fancli.yaml").write_text("kwargs: &k {trust: true}\nsource: model.pt\n<<: *k\n")
    monkeypatch.chdir(tmp_path)
    refused(cli("inspect"), tmp_path / "fancli.yaml", ":3:", "merge key")
    assert not (tmp_path / "RAN").exists()


def test_a_config_in_a_subfolder_may_name_the_repositorys_files(repository):
    (repository / "ci").mkdir()
    (repository / "ci" / "fancli.yaml").write_text("source: ../model.safetensors\n")
    assert cli("check", "--update", "--config", repository / "ci" / "fancli.yaml").code == 0
    assert KEY in json.loads((repository / "ci" / "fancli.lock.json").read_text())["layers"]
