"""safetensors loader: torch and the safetensors library are the oracles; malformed files are built byte by byte."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402
from torch import nn  # noqa: E402

from fancli.analysis.fans import layer_fans  # noqa: E402
from fancli.errors import SourceError  # noqa: E402
from fancli.loaders import safetensors_file, safetensors_typed  # noqa: E402
from fancli.loaders.flat_keys import BUFFERS  # noqa: E402
from fancli.loaders.safetensors_dtypes import SAFETENSORS_DTYPES  # noqa: E402
from fancli.loaders.safetensors_file import (  # noqa: E402
    load_safetensors,
    load_safetensors_index,
    parse_header,
    read_weight_map,
)
from fancli.weights.dtypes import DTYPES, FLOATING  # noqa: E402
from fancli.weights.stats import observe  # noqa: E402


class Net(nn.Module):
    """One of each layer whose fans torch's convention gets wrong or a state_dict hides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.depthwise = nn.Conv2d(16, 16, 3, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.conv1d = nn.Conv1d(4, 8, 5)
        self.conv3d = nn.Conv3d(2, 4, (1, 3, 3))
        self.deconv = nn.ConvTranspose2d(16, 8, 4, stride=2)
        self.embed = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 24, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(8, 12)
        self.attn = nn.MultiheadAttention(32, 4)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)


def _weights(state_dict: dict) -> dict:
    """What fancli reports: floating tensors that are not buffers."""
    return {
        key: tensor
        for key, tensor in state_dict.items()
        if tensor.is_floating_point() and key.rpartition(".")[2] not in BUFFERS
    }


@pytest.fixture(scope="module")
def state_dict() -> dict:
    torch.manual_seed(0)
    return Net().state_dict()


@pytest.fixture(scope="module")
def single(tmp_path_factory, state_dict) -> Path:
    path = tmp_path_factory.mktemp("single") / "model.safetensors"
    safetensors_torch.save_file(state_dict, str(path))
    return path


def _write_sharded(folder: Path, state_dict: dict, sort_keys: bool = True) -> Path:
    """Split over 3 shards in state_dict order and write the index as transformers does (sort_keys=True)."""
    keys = list(state_dict)
    weight_map = {}
    for number, part in enumerate((keys[0::3], keys[1::3], keys[2::3]), start=1):
        name = f"model-{number:05d}-of-00003.safetensors"
        safetensors_torch.save_file({key: state_dict[key] for key in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    if not sort_keys:
        weight_map = {key: weight_map[key] for key in keys}
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, sort_keys=sort_keys))
    return index


# 1. every weight, with torch's shape, dtype and fans


def test_every_weight_with_torch_fans(single, state_dict):
    model = load_safetensors(single)
    assert (model.source, model.format, model.name) == (str(single), "safetensors", None)
    layers = {layer.param: layer for layer in model.layers}
    weights = _weights(state_dict)
    assert set(layers) == set(weights)
    for key, tensor in weights.items():
        layer = layers[key]
        assert layer.shape == tuple(tensor.shape), key
        assert layer.dtype == str(tensor.dtype).removeprefix("torch."), key
        if tensor.dim() >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == nn.init._calculate_fan_in_and_fan_out(tensor), key


def test_kinds_inferred_from_keys(single):
    kinds = {layer.param: layer.kind for layer in load_safetensors(single).layers}
    assert kinds["attn.in_proj_weight"] == "multihead_attention"
    assert kinds["lstm.weight_ih_l1_reverse"] == "lstm"
    assert kinds["gru.weight_hh_l0"] == "gru"
    assert kinds["embed.weight"] == "embedding"
    assert kinds["conv1d.weight"] == "conv1d"


def test_tied_weights_reported_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

    path = tmp_path / "tied.safetensors"
    safetensors_torch.save_model(Tied(), str(path))
    (layer,) = load_safetensors(path).layers
    assert (layer.param, layer.aliases) == ("embed.weight", ("head.weight",))


def test_order_is_natural_key_order_not_header_order(tmp_path):
    """Issue 16, item 7 (this test asserted header order before): the header's order is the writer's
    (by dtype, then name), so rows come in the natural order of keys, `layers.2` before `layers.10`."""
    path = tmp_path / "order.safetensors"
    tensors = {"layers.10.weight": torch.ones(2, 2), "layers.2.weight": torch.ones(2, 2),
               "b.weight": torch.ones(2, 2), "a.weight": torch.ones(2, 2, dtype=torch.float16)}
    safetensors_torch.save_file(tensors, str(path))
    raw = path.read_bytes()
    header_order = list(json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]]))  # data order; safe_open sorts keys
    assert header_order == ["b.weight", "layers.10.weight", "layers.2.weight", "a.weight"]  # by dtype, then name
    assert [layer.param for layer in load_safetensors(path).layers] == [
        "a.weight", "b.weight", "layers.2.weight", "layers.10.weight"]


# 2. sharded checkpoints


def test_sharded_equals_single(tmp_path, single, state_dict):
    index = _write_sharded(tmp_path, state_dict)
    sharded = load_safetensors_index(index)
    assert (sharded.source, sharded.format) == (str(index), "safetensors-sharded")
    assert sharded.layers == load_safetensors(single).layers
    for layer in sharded.layers:
        expected = state_dict[layer.param].double()
        assert observe(layer.data).mean == pytest.approx(expected.mean().item(), rel=1e-9, abs=1e-12)


def test_sharded_follows_weight_map_order(tmp_path, state_dict):
    index = _write_sharded(tmp_path, state_dict, sort_keys=False)
    assert [layer.param for layer in load_safetensors_index(index).layers] == list(_weights(state_dict))


def _index(folder: Path, weight_map: object) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_sharded_missing_shard(tmp_path):
    safetensors_torch.save_file({"a.weight": torch.ones(2, 2)}, str(tmp_path / "one.safetensors"))
    index = _index(tmp_path, {"a.weight": "one.safetensors", "b.weight": "two.safetensors"})
    with pytest.raises(SourceError, match=r"shard 'two\.safetensors': no such file") as error:
        load_safetensors_index(index)
    assert str(error.value).startswith(f"{index}: ")


def test_sharded_key_missing_from_shard(tmp_path):
    safetensors_torch.save_file({"a.weight": torch.ones(2, 2)}, str(tmp_path / "one.safetensors"))
    index = _index(tmp_path, {"a.weight": "one.safetensors", "b.weight": "one.safetensors"})
    with pytest.raises(SourceError, match=r"'b\.weight' is mapped to shard 'one\.safetensors', which has"):
        load_safetensors_index(index)


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"metadata": {}}', b'{"weight_map": {"a": 1}}', b'{"weight_map": {"a": "../x"}}'],
    ids=["not-json", "array", "no-weight-map", "shard-not-string", "shard-outside"],
)
def test_sharded_malformed_index(tmp_path, content):
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(content)
    with pytest.raises(SourceError) as error:
        load_safetensors_index(index)
    assert str(error.value).startswith(f"{index}: ") and "\n" not in str(error.value)


def test_sharded_shard_errors_name_index_and_shard(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x00")
    index = _index(tmp_path, {"a.weight": "bad.safetensors"})
    with pytest.raises(SourceError, match=r"^.*index\.json: shard 'bad\.safetensors': 2 bytes: too short"):
        load_safetensors_index(index)


# 3. statistics streamed from the file equal torch's


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("max_elements", [1000, 1 << 22])
def test_observed_stats_equal_torch(tmp_path, dtype, max_elements):
    torch.manual_seed(1)
    tensor = (torch.randn(64, 3, 5, 5) * 0.05 + 0.01).to(dtype)
    path = tmp_path / "stats.safetensors"
    safetensors_torch.save_file({"pad.weight": torch.ones(7, 3), "conv.weight": tensor}, str(path))
    layer = next(layer for layer in load_safetensors(path).layers if layer.param == "conv.weight")
    observed = observe(layer.data, max_elements=max_elements)
    expected = tensor.double()
    assert observed.count == tensor.numel()
    assert observed.mean == pytest.approx(expected.mean().item(), rel=1e-9)
    assert observed.std == pytest.approx(expected.std().item(), rel=1e-9)
    assert (observed.min, observed.max) == (expected.min().item(), expected.max().item())
    import numpy as np

    values = np.concatenate(list(layer.data.chunks(max_elements)))
    assert np.array_equal(values.astype(np.float64), expected.flatten().numpy())


def test_read_after_truncation_is_source_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    safetensors_torch.save_file({"fc.weight": torch.ones(64, 64)}, str(path))
    (layer,) = load_safetensors(path).layers
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    with pytest.raises(SourceError, match="shorter than when it was loaded"):
        observe(layer.data)


def test_float8_entries_are_decoded_as_torch_does(tmp_path, monkeypatch):
    """(Issue 16 item 6: FP8 was listed without a data handle; now it is decoded by table, as torch does.)"""
    path = tmp_path / "fp8.safetensors"
    tensors = {"q.weight": torch.randn(4, 8).to(torch.float8_e4m3fn), "fc.weight": torch.ones(4, 8)}
    safetensors_torch.save_file(tensors, str(path))
    seen = []
    monkeypatch.setattr(safetensors_file, "layers_from_columns",
                        lambda columns: seen.extend(map(columns.entry, range(len(columns.keys)))) or ())
    load_safetensors(path)
    fp8, fp32 = sorted(seen, key=lambda entry: entry.key != "q.weight")
    assert (fp8.key, fp8.dtype, fp8.shape) == ("q.weight", "float8_e4m3fn", (4, 8))
    assert (next(fp8.data.chunks()) == tensors["q.weight"].to(torch.float32).reshape(-1).numpy()).all()
    assert fp32.data is not None


def test_dtype_names_are_torchs():
    for code, torch_dtype in safetensors_torch._TYPES.items():
        assert SAFETENSORS_DTYPES[code][0] == str(torch_dtype).removeprefix("torch."), code
    for name, bits in SAFETENSORS_DTYPES.values():
        if name in DTYPES:
            assert bits == 8 * DTYPES[name][0], name
    assert set(FLOATING) <= {name for name, _ in SAFETENSORS_DTYPES.values()}


# 4. loading reads the header only, without torch or numpy

_PROBE = """
import sys
from pathlib import Path
from fancli.loaders.safetensors_file import load_safetensors

def rchar():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar"))

before = rchar()
layers = {}
for path in sys.argv[1:]:
    layers.update((layer.param, layer.shape) for layer in load_safetensors(Path(path)).layers)
read = rchar() - before
assert "torch" not in sys.modules and "numpy" not in sys.modules, sorted(sys.modules)
print(read, len(layers), layers["big.weight"])
"""


def test_loading_imports_neither_torch_nor_numpy_and_reads_no_data(tmp_path, single):
    if not Path("/proc/self/io").exists():
        pytest.skip("needs /proc/self/io to count bytes read")
    big = tmp_path / "big.safetensors"
    header = json.dumps({"big.weight": {"dtype": "F32", "shape": [4096, 4096], "data_offsets": [0, 4096 * 4096 * 4]}})
    with big.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header.encode())
        handle.truncate(8 + len(header) + 4096 * 4096 * 4)  # 64 MiB of zeros, sparse
    done = subprocess.run([sys.executable, "-c", _PROBE, str(single), str(big)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    read, count, shape = done.stdout.split(maxsplit=2)
    assert int(read) < 1 << 20
    assert int(count) > 20 and shape.strip() == "(4096, 4096)"


# 5. malformed files: one SourceError line starting with the path


def _file(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _spec(shape: object, offsets: list, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def test_a_tensor_off_its_element_boundary_reads_its_own_bytes(tmp_path):
    """Handles share the data section, offset in elements; a tensor that begins off a whole element (after 13
    bytes here) cannot, and must still read its own bytes, as safetensors' library does."""
    import numpy as np

    even, odd = np.array([0.5, 4.0], dtype="<f4"), np.array([1.5, -2.25, 3.0], dtype="<f4")
    data = bytes([7, 8, 9, 10]) + even.tobytes() + bytes([11]) + odd.tobytes()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(_file({"codes": _spec([4], [0, 4], "U8"), "even.weight": _spec([2], [4, 12]),
                            "code": _spec([1], [12, 13], "U8"), "odd.weight": _spec([3], [13, 25])}, data))
    layers = {layer.param: layer for layer in load_safetensors(path).layers}
    with safe_open(str(path), framework="numpy") as handle:
        for key in ("odd.weight", "even.weight"):
            assert np.concatenate(list(layers[key].data.chunks(2))).tolist() == handle.get_tensor(key).tolist()


MALFORMED = {
    "too-short": (b"\x05\x00\x00", "too short"),
    "length-past-end": (struct.pack("<Q", 1000) + b"{}", "runs past the end"),
    "length-absurd": (struct.pack("<Q", 200_000_000) + b"{}", "limit"),
    "not-utf8": (_file(b'{"a\xff": 1}'), "not valid UTF-8"),
    "not-json": (_file(b'{"a": '), "not valid JSON"),
    "nested-too-deeply": (_file(b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    "huge-integer": (_file(b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b"]}}"), "too many digits"),
    "not-object": (_file(b"[1, 2]"), "not a JSON object"),
    "entry-not-object": (_file({"a": 5}), "expected an object"),
    "missing-dtype": (_file({"a": {"shape": [1], "data_offsets": [0, 4]}}, bytes(4)), "missing dtype"),
    "missing-offsets": (_file({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), "missing data_offsets"),
    "unknown-dtype": (_file({"a": _spec([1], [0, 16], "F128")}, bytes(16)), "unknown dtype"),
    "negative-shape": (_file({"a": _spec([-1], [0, 4])}, bytes(4)), "non-negative integers"),
    "float-shape": (_file({"a": _spec([2.0], [0, 8])}, bytes(8)), "non-negative integers"),
    "bool-shape": (_file({"a": _spec([True], [0, 4])}, bytes(4)), "non-negative integers"),
    "string-shape": (_file({"a": _spec("2x2", [0, 16])}, bytes(16)), "non-negative integers"),
    "offsets-reversed": (_file({"a": _spec([1], [4, 0])}, bytes(4)), "begin <= end"),
    "offsets-one-number": (_file({"a": _spec([1], [4])}, bytes(4)), "begin <= end"),
    "size-mismatch": (_file({"a": _spec([2, 2], [0, 12])}, bytes(12)), "needs 16 bytes"),
    "shape-overflow": (_file({"a": _spec([2**62] * 1000, [0, 4])}, bytes(4)), "needs more than 2**63 bytes"),
    "f4-half-byte": (_file({"a": _spec([3], [0, 2], "F4")}, bytes(2)), "needs 1.5 bytes"),
    "offsets-past-end": (_file({"a": _spec([4], [0, 16])}, bytes(8)), "past the end of the file"),
    "overlap": (_file({"a": _spec([2], [0, 8]), "b": _spec([2], [4, 12])}, bytes(12)), "overlap"),
    "hole": (_file({"a": _spec([1], [0, 4]), "b": _spec([1], [8, 12])}, bytes(12)), "belong to no tensor"),
    "trailing-bytes": (_file({"a": _spec([1], [0, 4])}, bytes(8)), "belong to no tensor"),
    "metadata-not-object": (_file({"__metadata__": [1], "a": _spec([1], [0, 4])}, bytes(4)), "__metadata__"),
    "metadata-not-strings": (_file({"__metadata__": {"n": 1}, "a": _spec([1], [0, 4])}, bytes(4)), "__metadata__"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_file_is_one_source_error_line(tmp_path, name):
    content, message = MALFORMED[name]
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(content)
    with pytest.raises(SourceError) as error:
        load_safetensors(path)
    text = str(error.value)
    assert type(error.value) is SourceError
    assert text.startswith(f"{path}: ") and "\n" not in text and len(text) < 300, text
    assert message in text


@pytest.mark.parametrize("name", MALFORMED)
def test_safetensors_library_rejects_them_too(tmp_path, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(MALFORMED[name][0])
    with pytest.raises(Exception):
        safe_open(str(path), framework="numpy")


VALID = {
    "empty": _file({}),
    "padded-header": _file(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}     ', bytes(4)),
    "scalar-and-empty": _file({"s": _spec([], [0, 4]), "e": _spec([0, 3], [4, 4]), "w": _spec([1, 1], [4, 8])}, bytes(8)),
    "metadata": _file({"__metadata__": {"format": "pt"}, "w": _spec([2, 1], [0, 8])}, bytes(8)),
    "subbyte-and-unsigned": _file({"f4": _spec([2, 2], [0, 2], "F4"), "u": _spec([1], [2, 4], "U16")}, bytes(4)),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_edge_cases_load_as_the_library_reads_them(tmp_path, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(VALID[name])
    model = load_safetensors(path)
    with safe_open(str(path), framework="numpy") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    assert {layer.param: layer.shape for layer in model.layers}.items() <= shapes.items()
    assert model.notes == ()


def test_other_frameworks_get_a_note(tmp_path):
    path = tmp_path / "tf.safetensors"
    path.write_bytes(_file({"__metadata__": {"format": "tf"}, "w": _spec([2, 1], [0, 8])}, bytes(8)))
    (note,) = load_safetensors(path).notes
    assert note.startswith("written by 'tf'")


# 6. long headers are decoded by msgspec: the same files accepted, the same one-line errors


def _through_typed_decoder(monkeypatch) -> list:
    """Send every header through msgspec (`decode_entries`), recording what it returned."""
    returned, decode = [], safetensors_typed.decode_entries

    def spy(raw: bytes):
        returned.append(decode(raw))
        return returned[-1]

    monkeypatch.setattr(safetensors_file, "TYPED_PARSE_BYTES", 0)
    monkeypatch.setattr(safetensors_typed, "decode_entries", spy)
    return returned


def _error(path: Path) -> str:
    with pytest.raises(SourceError) as error:
        load_safetensors(path)
    return str(error.value)


@pytest.mark.parametrize("name", MALFORMED)
def test_typed_decoder_refuses_what_the_checks_refuse_with_the_same_line(tmp_path, monkeypatch, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(MALFORMED[name][0])
    plain = _error(path)
    returned = _through_typed_decoder(monkeypatch)
    typed = _error(path)
    assert typed == plain and MALFORMED[name][1] in typed
    assert type(typed) is str and "\n" not in typed and typed.startswith(f"{path}: ")
    if name not in ("too-short", "length-past-end", "length-absurd"):  # refused before the header is read
        assert len(returned) == 1


@pytest.mark.parametrize("name", VALID)
def test_typed_decoder_reads_valid_files_as_the_library_does(tmp_path, monkeypatch, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(VALID[name])
    returned = _through_typed_decoder(monkeypatch)
    raw = VALID[name][8:8 + struct.unpack("<Q", VALID[name][:8])[0]]
    header = parse_header(raw, len(VALID[name]), "s3://bucket/x.safetensors")
    assert returned and returned[-1] is not None  # msgspec decoded it: no fallback to the stdlib
    with safe_open(str(path), framework="numpy") as handle:
        library = {key: (tuple(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
                   for key in handle.keys()}
    dtypes = {name: torch_name for name, (torch_name, _) in SAFETENSORS_DTYPES.items()}
    assert {key: (t.shape, t.dtype) for key, t in header.tensors.items()} == {
        key: (shape, dtypes[dtype]) for key, (shape, dtype) in library.items()}
    assert header.metadata == (json.loads(raw).get("__metadata__") or {})


@pytest.mark.parametrize("name", VALID)
def test_without_msgspec_a_long_header_is_read_by_the_stdlib_alike(tmp_path, monkeypatch, name):
    """msgspec is the `fast` extra: where it is missing, the same header gives the same tensors."""
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(VALID[name])
    monkeypatch.setattr(safetensors_file, "TYPED_PARSE_BYTES", 0)
    typed = load_safetensors(path)
    monkeypatch.setitem(sys.modules, "msgspec", None)
    monkeypatch.delitem(sys.modules, "fancli.loaders.safetensors_typed")
    assert load_safetensors(path) == typed


@pytest.mark.parametrize("entry, message", [
    (5, "expected an object"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}, "data_offsets must be [begin, end]"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "data_offsets must be [begin, end]"),
    ({"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}, "needs more than 2**63 bytes"),
    ({"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 'f32'"),
])
def test_parse_header_names_the_source_and_key(monkeypatch, entry, message):
    """Remote sources hand `parse_header` the bytes; each refusal is one line naming them and the key."""
    valid = {f"layers.{i}.weight": _spec([1], [4 + 4 * i, 8 + 4 * i]) for i in range(500)}
    raw = json.dumps({"odd.weight": entry, **valid}).encode()
    _through_typed_decoder(monkeypatch)
    with pytest.raises(SourceError) as error:
        parse_header(raw, 8 + len(raw) + 4 + 4 * 500, "https://host/x.safetensors")
    assert str(error.value).startswith("https://host/x.safetensors: tensor 'odd.weight': ") and message in str(error.value)


INDEXES = [b"not json", b"[]", b'{"metadata": {}}', b'{"weight_map": {"a": 1}}', b'{"weight_map": {"a": "../x"}}',
           b'{"weight_map": {"a": "x"}, "metadata": {"total_parameters": NaN}}', b'{"weight_map": []}']


@pytest.mark.parametrize("content", INDEXES)
def test_typed_decoder_refuses_a_malformed_index_with_the_same_line(tmp_path, monkeypatch, content):
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(content)
    with pytest.raises(SourceError) as plain:
        load_safetensors_index(index)
    monkeypatch.setattr(safetensors_file, "TYPED_PARSE_BYTES", 0)
    with pytest.raises(SourceError) as typed:
        load_safetensors_index(index)
    assert str(typed.value) == str(plain.value)


@pytest.mark.parametrize("metadata", [{}, {"total_parameters": 2**70}, {"total_parameters": 1.5}, [], None])
def test_typed_decoder_reads_an_index_as_json_does(tmp_path, monkeypatch, metadata):
    raw = json.dumps({"metadata": metadata, "weight_map": {f"layers.{i}.weight": "x.safetensors" for i in range(9)},
                      "other": {"a": [1]}}, indent=2).encode()
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(raw)
    monkeypatch.setattr(safetensors_file, "TYPED_PARSE_BYTES", 0)
    document = json.loads(raw)
    assert read_weight_map(index) == (document["weight_map"], (metadata or {}).get("total_parameters")
                                      if isinstance(metadata, dict) else None)
    assert safetensors_typed.decode_index(raw) is not None  # msgspec read it, not the stdlib
