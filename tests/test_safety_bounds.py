"""Issue 13, items 2 and 3: typed trust, specs that never import, and work bounded by the file's size,
not by what it claims.

Each case is an attack from the issue, built here in a few KB (sparse files and forged records, never
gigabytes); each must end as test_hardening's cases do: exit 2, one stderr line naming the source and the
problem, quickly and in bounded memory. Cases that would hang or grow without the fix run in a child
process or under an alarm, so that a regression fails the test instead of taking the run down.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, run
from test_hardening import accepted, cli, isolated, legacy_file, mapping, refused

from fancli.errors import SourceError
from fancli.safe_io import MAX_JSON_MEMORY, check_json_size, json_memory

SAMPLE = REPO / "sample_models" / "lenet5.yaml"
LINEAR = "layers:\n  - {type: linear, in_features: 4, out_features: 3}\n"


# --- item 2: trust is a boolean, and a spec never imports --------------------------------------------


@pytest.mark.parametrize("where", ["fancli.yaml", "pyproject.toml"])
@pytest.mark.parametrize("value", ['"false"', '"no"', "1"])
def test_a_quoted_false_does_not_turn_trust_on(tmp_path, where, value):
    """`bool("false")` is True: trust must be a real boolean, anything else one line and exit 2."""
    config = tmp_path / where
    if where == "fancli.yaml":
        config.write_text(f"source: {SAMPLE}\ntrust: {value}\n")
    else:
        config.write_text(f'[tool.fancli]\nsource = "{SAMPLE}"\ntrust = {value}\n')
    refused(cli("inspect", "--config", config), config, "trust", "expected true or false")


def test_a_real_boolean_trust_is_still_read(tmp_path):
    config = tmp_path / "fancli.yaml"
    (tmp_path / SAMPLE.name).write_bytes(SAMPLE.read_bytes())  # a config's source lies in its folder tree
    config.write_text(f"source: {SAMPLE.name}\ntrust: false\n")
    assert cli("inspect", "--config", config).code == 0


@pytest.mark.parametrize("line, key", [("tolerance: .inf", "tolerance"), ("sigmas: .nan", "sigmas"),
                                       ("defaults: {param: .inf}", "defaults.param"),
                                       ("overrides: {match: x}", "overrides")])
def test_other_config_numbers_and_lists_are_typed(tmp_path, line, key):
    config = tmp_path / "fancli.yaml"
    (tmp_path / SAMPLE.name).write_bytes(SAMPLE.read_bytes())  # a config's source lies in its folder tree
    config.write_text(f"source: {SAMPLE.name}\n{line}\n")
    refused(cli("inspect", "--config", config), config, key)


@pytest.mark.parametrize("option", ["--tolerance", "--sigmas"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_check_numbers_on_the_command_line_are_typed(option, value):
    outcome = cli("check", SAMPLE, "--no-config", "--stats", f"{option}={value}")
    assert outcome.code == 2 and outcome.out == "", (outcome.code, outcome.err)
    (line,) = outcome.err.strip().splitlines()
    assert line.startswith(f"fancli: error: {option} ") and "expected a finite number" in line


def test_a_spec_nonlinearity_never_imports_a_module_beside_it(tmp_path):
    """`torchx_gelu.gelu` started with "torch" and was imported; under `python -m fancli` the working
    directory is on sys.path, so a file beside the spec ran."""
    marker = tmp_path / "imported"
    (tmp_path / "torchx_gelu.py").write_text(f"open({str(marker)!r}, 'w').close()\ngelu = abs\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("defaults: {nonlinearity: torchx_gelu.gelu}\n" + LINEAR)
    done = subprocess.run([sys.executable, "-m", "fancli", "inspect", "spec.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert not marker.exists()
    assert done.returncode == 2 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert "spec.yaml" in line and "torchx_gelu.gelu" in line and "only torch functions" in line


@pytest.mark.parametrize("name", ["torch.zeros", "torch.load", "torch.nn.functional.softmax", "torch.nn.init.zeros_",
                                  "torch.utils.collect_env.main"])
def test_a_dotted_nonlinearity_must_be_a_torch_activation(tmp_path, name):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"defaults: {{nonlinearity: {name}}}\n" + LINEAR)
    refused(cli("inspect", spec), spec, name)
    outcome = cli("gain", name)
    assert outcome.code == 2 and len(outcome.err.strip().splitlines()) == 1, outcome.err


def test_allowed_torch_activations_still_resolve():
    outcome = cli("gain", "torch.nn.functional.rrelu", "-f", "json")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["gains"][0]["numeric"] > 1
    wrong_arity = cli("gain", "torch.relu", "-p", "3")
    assert wrong_arity.code == 2 and "torch.relu" in wrong_arity.err


# --- item 3: counts a spec or a command line states are bounded before they are acted on --------------


def test_a_billion_stacked_lstm_layers_is_refused(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("layers:\n  - {type: lstm, input_size: 3, hidden_size: 4, num_layers: 1000000000}\n")
    refused(isolated(tmp_path, "inspect", spec), spec, "num_layers")


@pytest.mark.parametrize("entry, key", [("{shape: [" + ", ".join(["1"] * 100_000) + "]}", "shape"),
                                        ("{type: linear, in_features: 99999999999999999999, out_features: 2}",
                                         "in_features"),
                                        ("{type: linear, in_features: " + "9" * 5000 + ", out_features: 2}",
                                         "too many digits")])
def test_spec_sizes_stay_within_what_torch_can_hold(tmp_path, entry, key):
    spec = tmp_path / "sizes.yaml"
    spec.write_text(f"layers:\n  - {entry}\n")
    refused(cli("inspect", spec), spec, key)


@pytest.mark.parametrize("option, value", [("--draws", "1000000000"), ("--batch", "1000000000")])
def test_propagate_draws_and_batch_are_bounded(option, value):
    pytest.importorskip("torch")
    outcome = cli("propagate", SAMPLE, option, value)
    assert outcome.code == 2 and outcome.out == "", outcome.err
    assert len(outcome.err.strip().splitlines()) == 1 and option.strip("-") in outcome.err


# --- item 3: memory that grows with what a config or baseline claims ---------------------------------


def test_a_config_of_brackets_is_refused_unparsed(tmp_path):
    config = tmp_path / "fancli.yaml"
    config.write_text("source: x\na: [" + "[]," * 5_000_000 + "]\n")  # 15 MB: 3 GB to parse
    refused(isolated(tmp_path, "inspect", "--config", config, SAMPLE), config, "too large")


@pytest.mark.parametrize("body, words", [
    ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
    ("x = " + "1" * 5000, "too many digits"),
    ("x = [" + "[]," * 400_000 + "]", "too large"),
], ids=["nested", "huge-int", "bracket-bomb"])
def test_a_hostile_pyproject_is_one_line(tmp_path, body, words):
    config = tmp_path / "pyproject.toml"
    config.write_text(f"[tool.fancli]\n{body}\n")
    refused(cli("inspect", "--config", config, SAMPLE), config, words)


def test_a_huge_integer_in_a_yaml_config_is_one_line(tmp_path):
    config = tmp_path / "fancli.yaml"
    config.write_text(f"source: {SAMPLE}\ntolerance: {'1' * 5000}\n")
    refused(cli("inspect", "--config", config), config, "too many digits")


@pytest.fixture()
def baseline(tmp_path) -> Path:
    path = tmp_path / "fancli.lock.json"
    assert run("check", SAMPLE, "--no-config", "--update", "--baseline", path).code == 0
    return path


def test_a_baseline_of_3_gb_is_not_read_whole(tmp_path, baseline):
    with baseline.open("r+b") as handle:  # sparse: the claim costs nothing on disk
        handle.truncate(3 << 30)
    refused(isolated(tmp_path, "check", SAMPLE, "--no-config", "--baseline", baseline), baseline, "too large")


@pytest.mark.parametrize("mutate, words", [
    (lambda text: '{"fancli": "1.0", "layers": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (lambda text: re.sub(r'"fan_in": \d+', '"fan_in": ' + "9" * 4000, text, count=1), "fan_in"),
    (lambda text: re.sub(r'"fan_in": \d+', '"fan_in": ' + "9" * 5000, text, count=1), "too many digits"),
    (lambda text: '{"fancli": "1.0", "layers": {}, "x": [' + "[]," * 10_000_000 + "[]]}", "MiB to parse"),
], ids=["nested", "huge-int", "too-many-digits", "bracket-bomb"])
def test_a_hostile_baseline_is_one_line(baseline, mutate, words):
    baseline.write_text(mutate(baseline.read_text()))
    refused(cli("check", SAMPLE, "--no-config", "--baseline", baseline), baseline, words)


# --- item 3: zip end records are checked before zipfile believes them -------------------------------

_LOCAL_HEADER = b"PK\x03\x04" + bytes(26)


def _end_record(entries: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(entries, 0xFFFF), min(entries, 0xFFFF), cd_size,
                       cd_offset, 0)


def test_a_sparse_zip_claiming_a_3_gb_central_directory(tmp_path):
    """8 KB on disk, 3 GB long: zipfile would read(3 GB) of the directory in one piece."""
    path = tmp_path / "claims.pt"
    size = (3 << 30) + 4096
    with path.open("wb") as handle:
        handle.write(_LOCAL_HEADER)
        handle.seek(size - 22)
        handle.write(_end_record(1, 3 << 30, 0))
    assert path.stat().st_blocks * 512 < 1 << 20
    refused(isolated(tmp_path, "inspect", path), path, "central directory")


def test_a_zip_of_millions_of_members_is_refused_unread(tmp_path):
    """3 million 47-byte directory entries (141 MB): zipfile kept ~500 bytes of ZipInfo for each (1.5 GB)."""
    count = 3_000_000
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    path = tmp_path / "members.pt"
    path.write_bytes(_LOCAL_HEADER + entry * count + _end_record(count, len(entry) * count, len(_LOCAL_HEADER)))
    line = refused(isolated(tmp_path, "inspect", path), path)  # time and memory first: the attack's cost
    path.unlink()
    assert "central directory" in line


def test_a_zip64_end_record_claiming_billions_of_members(tmp_path):
    path = tmp_path / "zip64.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}.")
    data = path.read_bytes()
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<2L", data, eocd + 12)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 3 * 10**9, 3 * 10**9, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    path.write_bytes(data[:eocd] + record + locator + _end_record(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
    refused(cli("inspect", path), path, "members")


# --- item 3: --stats work is bounded by the storage, not by the view ---------------------------------


@pytest.mark.parametrize("legacy, layout", [(False, True), (True, False), (True, True)],
                         ids=["zip-through-torch", "legacy", "legacy-through-torch"])
def test_stats_on_an_expanded_view_is_refused_not_looped_over(tmp_path, legacy, layout):
    """2^41 values over 3 stored ones. A meta tensor beside it sends the file to torch's own loader
    (fancli's reader does not list meta tensors), whose tensors were read row block after row block forever."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "expanded.pt"
    obj = {"fc.weight": torch.randn(3).expand(2**40, 3)}
    if layout:
        obj["meta"] = torch.empty(2, device="meta")
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert cli("inspect", path, "-f", "json").code == 0
    refused(cli("inspect", path, "--stats"), path, "fc.weight" if layout else "", "a view of 3298534883328 values")


class _Spy:
    """A ByteSource over bytes that records the size of every read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads, self.path = data, [], "spy"

    def read(self, start: int, size: int) -> bytes:
        self.reads.append(size)
        return self.data[start : start + size]


@pytest.mark.parametrize("view", ["transposed", "column-slice", "permuted-3d", "expanded", "every-other"])
def test_strided_views_are_read_a_bounded_block_at_a_time(view):
    torch = pytest.importorskip("torch")
    import numpy as np

    from fancli.weights.tensors import StridedRef

    base = torch.arange(60 * 50, dtype=torch.float32).reshape(60, 50)
    tensor = {"transposed": base.t(), "column-slice": base[:, 7:9], "permuted-3d": base.reshape(6, 10, 50).permute(2, 0, 1),
              "expanded": base[0].expand(40, 50), "every-other": base[::2, 1::2]}[view]
    spy = _Spy(base.numpy().tobytes())
    ref = StridedRef(spy, "float32", tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(), base.numel())
    chunks = list(ref.chunks(max_elements=64))
    assert max(spy.reads) <= 64 * 4 and max(chunk.size for chunk in chunks) <= 64
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), np.sort(tensor.reshape(-1).numpy()))


def test_a_transposed_tensor_is_not_read_in_one_piece(tmp_path, monkeypatch):
    """4.5 M values stored transposed: the region they span was read whole (577 MB for 512 MiB)."""
    torch = pytest.importorskip("torch")
    from fancli.loaders.torch_zip import ZipMember
    from fancli.weights.tensors import CHUNK_ELEMENTS

    weight = torch.randn(3000, 1500).t()
    torch.save({"fc.weight": weight}, tmp_path / "transposed.pt")
    reads = []
    original = ZipMember.read
    monkeypatch.setattr(ZipMember, "read", lambda self, start, size: reads.append(size) or original(self, start, size))
    observed = json.loads(cli("inspect", tmp_path / "transposed.pt", "--stats", "-f", "json").out)["layers"][0]["observed"]
    assert observed["std"] == pytest.approx(float(weight.double().std()), rel=1e-9)
    assert reads and max(reads) <= 4 * CHUNK_ELEMENTS


# --- item 3: a legacy torch.save file is listed without reading its tensor data ----------------------


def _sparse_legacy(path: Path, rows: int, cols: int, size: int | None = None) -> Path:
    """A legacy file whose one storage claims rows×cols floats: written sparse, so it costs no disk."""
    from test_hardening import g, i, s, t

    numel = rows * cols
    storage = t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(numel), b"N") + b"Q"
    weight = (g("torch._utils", "_rebuild_tensor_v2")
              + t(storage, i(0), t(i(rows), i(cols)), t(i(cols), i(1)), b"\x89", g("collections", "OrderedDict") + b")R")
              + b"R")
    legacy_file(path, mapping(**{"fc.weight": weight}))
    import pickle

    with path.open("r+b") as handle:  # the storage keys, then the storage: its count and (sparse) bytes
        handle.seek(-len(pickle.dumps([], protocol=2)), 2)
        handle.write(pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel))
        handle.truncate(size or handle.tell() + 4 * numel)
    return path


def test_a_1_gib_legacy_file_is_listed_without_reading_its_data(tmp_path):
    pytest.importorskip("torch")
    path = _sparse_legacy(tmp_path / "big-legacy.pt", 16384, 16384)
    assert path.stat().st_size > 1 << 30 and path.stat().st_blocks * 512 < 1 << 20
    layer, = accepted(isolated(tmp_path, "inspect", path, "-f", "json", torch=True))["layers"]
    assert layer["shape"] == [16384, 16384] and layer["dtype"] == "float32"


def test_a_legacy_file_read_by_fancli_gives_torchs_stats(tmp_path):
    torch = pytest.importorskip("torch")
    weights = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(20, 30).t(),
               "half.weight": torch.randn(6, 6).bfloat16(), "tied.weight": None}
    weights["tied.weight"] = weights["conv.weight"]
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    report = accepted(isolated(tmp_path, "inspect", tmp_path / "legacy.pt", "--stats", "-f", "json"))
    assert report["source"]["format"] == "torch-pickle"
    observed = {layer["param"]: layer["observed"] for layer in report["layers"]}
    assert set(observed) == {"conv.weight", "fc.weight", "half.weight"}
    for key, values in observed.items():
        assert values["std"] == pytest.approx(float(weights[key].double().std()), rel=1e-6)


def test_a_large_legacy_file_torch_alone_can_read_is_refused(tmp_path):
    """A meta tensor, which fancli's reader does not list, sends the file to torch, which reads all of it:
    refused above MAX_LEGACY_TORCH_LOAD (here a sparse 300 MB tail that torch would have read into memory)."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "layout.pt"
    torch.save({"fc.weight": torch.randn(3, 3), "meta": torch.empty(2, device="meta")}, path,
               _use_new_zipfile_serialization=False)
    with path.open("r+b") as handle:
        handle.truncate(300 << 20)
    refused(cli("inspect", path), path, "torch._utils._rebuild_meta_tensor_no_storage", "re-save")


def _index(entries: int) -> bytes:
    """A sharded checkpoint's index with real-length names (a MoE's experts), as transformers writes it."""
    names = (f"model.layers.{i // 768}.mlp.experts.{i % 768 // 3}.{('gate', 'up', 'down')[i % 3]}_proj.weight"
             for i in range(entries))
    weight_map = {name: f"model-{i % 163 + 1:05d}-of-00163.safetensors" for i, name in enumerate(names)}
    return json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}, indent=2).encode()


@pytest.mark.parametrize("raw", [
    _index(20_000),
    b"[" + b"[]," * 50_000 + b"[]]",
    b"[" + b'"",' * 50_000 + b'""]',
    b"[" + b'{"a": 1},' * 20_000 + b"{}]",
    b"[" + b"1234567890123," * 50_000 + b"1]",
    json.dumps(["a" * 40 + "\U0001f600"] * 5_000, ensure_ascii=False).encode(),
    json.dumps("\U0001f600" + "a" * 1_000_000).encode(),  # ASCII text that decodes to 4 bytes a character
    json.dumps("\u0100" + "a" * 1_000_000).encode(),
    json.dumps({f"k{i}": 1000 + i for i in range(50_000)}).encode(),
    json.dumps([257 + i for i in range(50_000)]).encode(),
], ids=["index", "lists", "strings", "objects", "numbers", "astral", "escaped-astral", "escaped-latin",
        "int-dict", "int-list"])
def test_the_json_memory_estimate_bounds_what_parsing_takes(raw):
    tracemalloc.start()
    value = json.loads(raw.decode("utf-8"))
    taken = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert value is not None and taken <= json_memory(raw)


def test_a_500000_tensor_index_with_real_names_is_within_the_parse_budget():
    raw = _index(500_000)
    assert json_memory(raw) <= MAX_JSON_MEMORY
    with pytest.raises(SourceError, match="MiB to parse"):
        check_json_size(b"[" + b"[]," * 10_000_000 + b"[]]", "bomb.json", "a header")
