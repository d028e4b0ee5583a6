"""torch.distributed.checkpoint folders: read without torch, equal to what torch saved, hostile ones refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import run, run_child
from torch import nn
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from fancli.analysis.fans import layer_fans
from fancli.errors import SourceError
from fancli.loaders import LoadOptions, load
from fancli.loaders.dcp import load_dcp
from fancli.weights.stats import observe


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(40, 12), nn.Linear(12, 24), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8),
                         nn.ConvTranspose1d(4, 6, 5), nn.LayerNorm(24))


def _save(state_dict: dict, folder: Path) -> Path:
    with warnings.catch_warnings():  # "torch.distributed is … uninitialized, assuming … a single process"
        warnings.simplefilter("ignore")
        dcp.save(state_dict, checkpoint_id=folder)
    return folder


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> tuple[Path, dict]:
    """A DCP folder as one process saves it: a model, optimizer state, a step counter, other dtypes."""
    net = _net()
    optimizer = torch.optim.Adam(net.parameters())
    net[1](net[0](torch.arange(4))).sum().backward()
    optimizer.step()
    model = net.state_dict()
    model["head.weight"] = torch.randn(10, 24).to(torch.bfloat16)
    model["proj.weight"] = torch.randn(24, 24).to(torch.float16)
    saved = {"model": model, "optim": optimizer.state_dict(), "step": 3}
    return _save(saved, tmp_path_factory.mktemp("dcp") / "checkpoint"), model


def _weights(model: dict) -> dict[str, torch.Tensor]:
    return {f"model.{key}": tensor for key, tensor in model.items()
            if tensor.is_floating_point() and "running_" not in key}


def test_every_weight_with_torch_shapes_dtypes_and_fans(state):
    folder, model = state
    loaded = load_dcp(folder, LoadOptions())
    assert (loaded.source, loaded.format) == (str(folder), "torch-dcp")
    layers = {layer.param: layer for layer in loaded.layers}
    weights = _weights(model)
    assert set(layers) == set(weights)  # full keys; optimizer state and the step counter left out
    for key, tensor in weights.items():
        layer = layers[key]
        assert layer.shape == tuple(tensor.shape) and layer.dtype == str(tensor.dtype).removeprefix("torch."), key
        if tensor.dim() >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == nn.init._calculate_fan_in_and_fan_out(tensor), key
    assert any("'optim'" in note for note in loaded.notes) and any("'step'" in note for note in loaded.notes)


def test_stats_equal_torch(state):
    folder, model = state
    layers = {layer.param: layer for layer in load_dcp(folder, LoadOptions()).layers}
    for key, tensor in _weights(model).items():
        observed = observe(layers[key].data, max_elements=7)  # small chunks: exercise the merging
        values = tensor.double()
        assert observed.count == tensor.numel(), key
        assert observed.mean == pytest.approx(values.mean().item(), rel=1e-5, abs=1e-9), key
        assert observed.std == pytest.approx(values.std().item(), rel=1e-4, abs=1e-9), key


def test_the_metadata_file_is_a_source(state):
    folder, model = state
    result = run("inspect", folder / ".metadata", "--stats", "-f", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert {layer["param"] for layer in report["layers"]} == set(_weights(model))
    assert load(str(folder / ".metadata")).format == "torch-dcp"


def test_sharded_tensor_listed_whole_and_stats_over_every_chunk(tmp_path):
    """Two ranks' shards of one tensor, written as torch's FileSystemWriter writes them; torch's own
    dcp.load reads the folder back, so the layout is DCP's."""
    torch.manual_seed(1)
    full = torch.randn(6, 10) * 0.3 + 0.1
    files, storage = {}, {}
    for rank, (start, rows) in enumerate([(0, 2), (2, 4)]):
        name = f"__{rank}_0.distcp"
        with open(tmp_path / name, "wb") as stream:
            stream.write(b"\0" * 7)  # chunks need not start a file
            offset = stream.tell()
            torch.save(full[start : start + rows].clone(), stream)
            storage[MetadataIndex("w.weight", [start, 0], 0)] = _StorageInfo(name, offset, stream.tell() - offset)
        files[name] = rows
    chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 10])),
              ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([4, 10]))]
    metadata = Metadata({"w.weight": TensorStorageMetadata(TensorProperties(dtype=torch.float32),
                                                           torch.Size([6, 10]), chunks)},
                        storage_data=storage)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    back = {"w.weight": torch.zeros(6, 10)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=tmp_path)
    assert torch.equal(back["w.weight"], full)

    model = load_dcp(tmp_path, LoadOptions())
    (layer,) = model.layers
    assert layer.shape == (6, 10) and any("several chunks" in note for note in model.notes)
    observed = observe(layer.data, max_elements=7)
    assert observed.count == 60
    assert observed.mean == pytest.approx(full.double().mean().item(), rel=1e-6)
    assert observed.std == pytest.approx(full.double().std().item(), rel=1e-6)


def _copy(state, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(state[0], folder)
    return folder


class _System:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refused(source: Path, *words: str) -> str:
    result = run("inspect", source, "--stats")
    assert result.code == 2, result
    assert result.out == "" and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, result.err
    return result.err


def test_a_metadata_pickle_that_runs_code_is_refused_never_run(state, tmp_path):
    folder = _copy(state, tmp_path)
    marker = tmp_path / "ran"
    hostile = _System()
    hostile.marker = marker
    real = pickle.loads((folder / ".metadata").read_bytes())
    real.planner_data = {"model.0.weight": hostile}  # deep inside otherwise real metadata
    (folder / ".metadata").write_bytes(pickle.dumps(real))
    _refused(folder / ".metadata", "system", "refused")
    (folder / ".metadata").write_bytes(pickle.dumps(hostile))
    _refused(folder / ".metadata", "system")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_metadata", "empty_dict", "memo_bomb"])
def test_malformed_metadata_is_one_line(state, tmp_path, damage):
    folder = _copy(state, tmp_path)
    raw = (folder / ".metadata").read_bytes()
    content = {"truncated": raw[: len(raw) // 2], "garbage": b"\x80\x04" + os.urandom(200),
               "not_metadata": pickle.dumps({"a": [1, 2]}), "empty_dict": pickle.dumps({}),
               "memo_bomb": b"\x80\x04N" + b"r" + (1 << 31).to_bytes(4, "little") + b"."}[damage]  # pre-scan refuses
    (folder / ".metadata").write_bytes(content)
    _refused(folder / ".metadata", ".metadata")


def test_missing_or_short_data_files_are_one_line(state, tmp_path):
    folder = _copy(state, tmp_path)
    data = folder / "__0_0.distcp"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    _refused(folder / ".metadata", "__0_0.distcp", "past the end")
    data.unlink()
    _refused(folder / ".metadata", "__0_0.distcp", "no such file")


def test_a_data_file_outside_the_folder_is_refused(state, tmp_path):
    folder = _copy(state, tmp_path)
    (tmp_path / "_0.distcp").write_bytes((folder / "__0_0.distcp").read_bytes())
    raw = (folder / ".metadata").read_bytes()
    assert raw.count(b"__0_0.distcp") == 1  # memoized once: one replacement moves every chunk
    (folder / ".metadata").write_bytes(raw.replace(b"__0_0.distcp", b"../_0.distcp"))
    _refused(folder / ".metadata", "not a file inside")


def test_chunk_bytes_that_are_not_torch_save_are_one_line_under_stats(state, tmp_path):
    folder = _copy(state, tmp_path)
    data = folder / "__0_0.distcp"
    data.write_bytes(b"\0" * data.stat().st_size)  # same size: listing is fine, reading is not
    assert run("inspect", folder / ".metadata").code == 0
    _refused(folder / ".metadata", "not a torch.save archive")


def test_dcp_never_imports_torch(state):
    result = run_child(["inspect", str(state[0] / '.metadata'), "--stats", "-f", "json"], absent=("torch",))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layers"]


def test_load_dcp_without_metadata_is_one_line(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_dcp(tmp_path, LoadOptions())


def test_the_folder_is_a_source_as_its_metadata_is(state):
    """A folder holding `.metadata` is detected as a DCP checkpoint (loaders/folder.py) and read the same."""
    folder, _ = state
    through_folder = json.loads(run("inspect", folder, "--stats", "-f", "json").out)
    through_file = json.loads(run("inspect", folder / ".metadata", "--stats", "-f", "json").out)
    assert through_folder["layers"] == through_file["layers"] and through_folder["source"]["format"] == "torch-dcp"


def _one_tensor_folder(folder: Path, size: list[int], chunks: list, saved: torch.Tensor) -> Path:
    """`.metadata` naming `w.weight` of `size` in `chunks`, each chunk's storage record pointing at one
    torch.save of `saved` (so every chunk passes the data checks: only the chunk layout is in question)."""
    folder.mkdir()
    with open(folder / "__0_0.distcp", "wb") as stream:
        torch.save(saved, stream)
    info = _StorageInfo("__0_0.distcp", 0, (folder / "__0_0.distcp").stat().st_size)
    storage = {MetadataIndex("w.weight", chunk.offsets, 0): info for chunk in chunks}
    metadata = Metadata({"w.weight": TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size(size),
                                                           chunks)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    return folder


@pytest.mark.parametrize("second", ([0, 0], [2, 0]))
def test_overlapping_chunks_are_refused(tmp_path, second):
    """Two [4, 4] chunks of an [8, 4] tensor: 32 values, as its size needs, but at one offset (or both
    covering rows 2 and 3) part of it would be counted twice and part never; at [0, 0] and [4, 0] they tile it."""
    chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([4, 4])),
              ChunkStorageMetadata(torch.Size(second), torch.Size([4, 4]))]
    folder = _one_tensor_folder(tmp_path / "dcp", [8, 4], chunks, torch.arange(16.0).reshape(4, 4))
    _refused(folder / ".metadata", ".metadata", "w.weight", "overlaps")
    chunks[1] = ChunkStorageMetadata(torch.Size([4, 0]), torch.Size([4, 4]))
    tiled = _one_tensor_folder(tmp_path / "tiled", [8, 4], chunks, torch.arange(16.0).reshape(4, 4))
    assert run("inspect", tiled, "--stats").code == 0


def test_a_chunk_list_shared_by_every_tensor_is_charged_for_each(tmp_path):
    """One memoised list of 600,001 chunks (a real one and 600,000 references to one empty chunk) named by
    64 tensors: 3 MB of pickle that made 38 million chunk records."""
    from test_hardening import isolated, refused

    empty = ChunkStorageMetadata(torch.Size([0]), torch.Size([0]))
    shared = [ChunkStorageMetadata(torch.Size([0]), torch.Size([4]))] + [empty] * 600_000
    (tmp_path / "__0_0.distcp").write_bytes(bytes(1024))
    info = _StorageInfo("__0_0.distcp", 0, 1024)
    names = [f"w{index}.weight" for index in range(64)]
    metadata = Metadata({name: TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([4]), shared)
                         for name in names}, storage_data={MetadataIndex(name, [0], 0): info for name in names})
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    assert (tmp_path / ".metadata").stat().st_size < 4_000_000
    refused(isolated(tmp_path, "inspect", tmp_path / ".metadata"), tmp_path / ".metadata", "chunk")


def test_the_folders_own_config_json_splits_a_fused_projection(tmp_path):
    """Issue 25: the config.json inside the DCP folder (beside `.metadata`) applies whether the folder or its
    `.metadata` is the source; a config in the folder's parent does not. Equal heads make q, k, v three
    stacked blocks, each with torch's fan_out of its own part."""
    torch.manual_seed(0)
    fused = nn.Linear(32, 96, bias=False)  # 4 heads of 8: q, k, v 32 rows each
    folder = _save({"attn.qkv_proj.weight": fused.weight.detach()}, tmp_path / "checkpoint")
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 32}))
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "num_key_value_heads": 1,
                                                      "hidden_size": 32}))  # not the folder's: ignored
    part = fused.weight.detach().split(32)[0]
    for source in (folder, folder / ".metadata"):
        result = run("inspect", source, "--format", "json", "--fans", "effective", "-m", "fan_out")
        assert result.code == 0, result.err
        (qkv,) = json.loads(result.out)["layers"]
        assert qkv["effective_fan_out"] == nn.init._calculate_fan_in_and_fan_out(part)[1], source
        assert "q, k, v stacked: split by config.json" in qkv["notes"], source
