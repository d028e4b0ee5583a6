"""Property-based fuzzing: random and mutated files, and generated YAML specs, never raise anything but
SourceError, whose message is one line naming the file.

Bounded to run in seconds and derandomized, so the suite gives the same answer on every run; set
FANCLI_FUZZ_EXAMPLES (e.g. 5000) to search longer with fresh random examples.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fancli import api
from fancli.errors import FancliError, SourceError
from fancli.loaders import load
from fancli.loaders.spec import LAYER_TYPES, TOP_KEYS, parse_spec
from fancli.renderers import render_text

EXAMPLES = int(os.environ.get("FANCLI_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 120, deadline=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SUFFIXES = (".pt", ".safetensors", ".yaml", ".json", ".bin")
_names = itertools.count()


@pytest.fixture(scope="module")
def folder() -> Path:
    with tempfile.TemporaryDirectory(prefix="fancli-fuzz-") as name:
        yield Path(name)


def _write(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"case{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


def _assert_only_source_errors(path: Path) -> None:
    """Load, and with --stats read, the file: a SourceError naming it in one line, or a model."""
    try:
        model = load(str(path))
        api.inspect(model, stats=True)
    except SourceError as error:
        message = str(error)
        assert "\n" not in message and str(path) in message, message
        assert len(message) < 1000, message


# --- the files: real ones, built here ------------------------------------------------------------


def _torch_zip() -> bytes:
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    state = collections.OrderedDict(
        [("conv.weight", torch.randn(4, 2, 3, 3, generator=generator)), ("conv.bias", torch.zeros(4)),
         ("fc.weight", torch.randn(3, 8, generator=generator).t()), ("ids", torch.arange(3)),
         ("half.weight", torch.randn(2, 2, generator=generator).half())])
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": 1, "hp": {"betas": (0.9, 0.99), "s": {1, 2}}}, buffer)
    return buffer.getvalue()


def _legacy() -> bytes:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w.weight": torch.ones(3, 2), "w.bias": torch.zeros(3)}, buffer,
               _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _safetensors() -> bytes:
    tensors = {"a.weight": ("F32", [2, 3], struct.pack("<6f", *range(6))),
               "a.bias": ("F16", [2], struct.pack("<2e", 0.5, -1.0)),
               "emb.weight": ("BF16", [3, 1], b"\x80\x3f" * 3)}
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


FILES: dict[str, tuple[bytes, str]] = {}


def _file(name: str) -> tuple[bytes, str]:
    if not FILES:
        FILES.update({
            "torch-zip": (_torch_zip(), ".pt"),
            "legacy": (_legacy(), ".pt"),
            "safetensors": (_safetensors(), ".safetensors"),
            "spec": ((REPO / "sample_models" / "mobilenet_block.yaml").read_bytes(), ".yaml"),
            "index": ((REPO / "sample_models" / "lenet5.safetensors.index.json").read_bytes(), ".json"),
        })
    return FILES[name]


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """A few byte-level edits: flips, overwrites with interesting values, inserts, deletes, a truncation."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "truncate"]))
        if kind == "flip":
            data[where:where + 1] = bytes([data[where] ^ (1 << draw(st.integers(0, 7)))]) if data else b""
        elif kind == "byte":
            data[where:where + 1] = bytes([draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("\n")]))])
        elif kind == "int":
            value = draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 10**15]))
            data[where:where + 8] = value.to_bytes(8, "little")
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[where:where + draw(st.integers(1, 16))]
        else:
            del data[where:]
    return bytes(data)


# --- the properties ------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(folder, data, suffix):
    _assert_only_source_errors(_write(folder, data, suffix))


@FUZZ
@given(prefix=st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x08\x00\x00\x00\x00\x00\x00\x00{",
                               b"{\"weight_map\": ", b"layers:\n  - "]),
       rest=st.binary(max_size=256), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_behind_a_format_signature(folder, prefix, rest, suffix):
    """Past the sniffer: bytes that start like each format."""
    _assert_only_source_errors(_write(folder, prefix + rest, suffix))


@FUZZ
@given(st.data())
def test_mutated_files(folder, data):
    name = data.draw(st.sampled_from(["torch-zip", "legacy", "safetensors", "spec", "index"]))
    content, suffix = _file(name)
    if name == "index":  # the shards must lie beside it
        for shard in ("lenet5-00001-of-00002.safetensors", "lenet5-00002-of-00002.safetensors"):
            if not (folder / shard).exists():
                (folder / shard).write_bytes((REPO / "sample_models" / shard).read_bytes())
    _assert_only_source_errors(_write(folder, data.draw(mutations(content)), suffix))


@FUZZ
@given(st.data())
def test_mutated_pickle_inside_a_valid_zip(folder, data):
    """data.pkl mutated and zipped again with a correct CRC: the pickle reader itself is fuzzed."""
    content, _ = _file("torch-zip")
    path = _write(folder, b"", ".pt")
    with zipfile.ZipFile(io.BytesIO(content)) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            member = old.read(info)
            if info.filename.endswith("/data.pkl"):
                member = data.draw(mutations(member))
            new.writestr(info, member)
    _assert_only_source_errors(path)


# --- the YAML spec parser ------------------------------------------------------------------------

_KEYS = sorted({key for keys in LAYER_TYPES.values() for key in keys} | set(TOP_KEYS)
               | {"name", "type", "nonlinearity", "activation", "param", "negative_slope", "scheme", "mode", "fans",
                  "pool_fan_out", "layout"})
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.integers(), st.sampled_from([10**9, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["relu", "leaky_relu", "tanh", "kaiming_normal", "fan_out", "keras", "in_out", "effective",
                     "conv2d", "raw", "3", "1e3", "yes", "~", "&a", "*a"]),
    st.sampled_from(sorted(LAYER_TYPES)))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=4),
                       max_leaves=12)
_odd_keys = st.dictionaries(st.text(max_size=5) | st.integers() | st.booleans(), _scalars, max_size=2)


def _with_odd_keys(known: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly known keys, sometimes one nobody knows (any text, an int): errors must quote it on one line."""
    return st.builds(lambda base, odd, use: {**odd, **base} if use else base, known, _odd_keys,
                     st.booleans())


_layer = _with_odd_keys(st.fixed_dictionaries({"type": st.sampled_from(sorted(LAYER_TYPES)) | _scalars},
                                              optional={key: _values for key in _KEYS if key != "type"}))
_defaults = _with_odd_keys(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=5))
_spec = _with_odd_keys(st.fixed_dictionaries({"layers": st.lists(_layer, max_size=4) | _values},
                                             optional={"defaults": _defaults | _values, "name": _values,
                                                       "description": _values}))


def _assert_spec_gives_source_error_or_model(text: str) -> None:
    try:
        model = parse_spec(text, "spec.yaml")
    except SourceError as error:
        message = str(error)
        assert message.startswith("spec.yaml") and "\n" not in message and len(message) < 500, message
        return
    try:  # what parses must also analyse and render
        for fmt in ("json", "table"):
            render_text(api.inspect(model, stats=True), fmt)
    except FancliError:
        pass


@FUZZ
@given(_spec)
def test_generated_specs(document):
    _assert_spec_gives_source_error_or_model(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(st.text(max_size=300))
def test_random_spec_text(text):
    _assert_spec_gives_source_error_or_model(text)


@FUZZ
@given(st.data())
def test_mutated_sample_specs(data):
    path = data.draw(st.sampled_from(sorted((REPO / "sample_models").glob("*.yaml"))))
    text = path.read_bytes()
    mutated = data.draw(mutations(text))
    try:
        decoded = mutated.decode("utf-8")
    except UnicodeDecodeError:
        decoded = mutated.decode("latin-1")
    _assert_spec_gives_source_error_or_model(decoded)
