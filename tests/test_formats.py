"""The source-format registry (`fancli.loaders.formats`): a format registered in a few lines is sniffed, read,
ranked in a folder and inspected through it alone; and a sharded `.bin` checkpoint's layers carry what each
shard's reader knows of a tensor (its `Entry.notes`), as the same tensors in one file do."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import run
from torch.nn.init import _calculate_fan_in_and_fan_out

from fancli.loaders import LoadOptions, load, loader, sniff
from fancli.loaders.entry import Entry
from fancli.loaders.flat import Flat, built
from fancli.loaders.formats import FORMATS, Format, FolderRank, register
from fancli.safe_io import read_bounded
from fancli.weights.dtypes import DTYPES, LOW_PRECISION_FLOATING


def load_toy(path: Path, options: LoadOptions):
    """A toy format: `TOY1` then one `key d0xd1…` line per float32 tensor."""
    lines = read_bounded(path, 1 << 16, "a toy file").decode().split("\n")[1:]
    entries = [Entry(key, tuple(map(int, shape.split("x"))), "float32") for key, shape in
               (line.split() for line in lines if line)]
    return built(Flat(str(path), "toy", tuple(entries)))


@pytest.fixture
def toy():
    register(Format("toy", "a toy file", lambda head, path, size: head.startswith(b"TOY1"), f"{__name__}:load_toy",
                    ranks=(FolderRank(60, "*.toy", "a toy file"),)))
    yield
    del FORMATS["toy"]


SHAPES = {"enc.weight": (12, 5), "conv.weight": (8, 3, 3, 3), "enc.bias": (12,)}


def _toy_file(path: Path) -> Path:
    path.write_text("TOY1\n" + "".join(f"{key} {'x'.join(map(str, shape))}\n" for key, shape in SHAPES.items()))
    return path


def test_a_registered_format_is_sniffed_read_and_inspected(toy, tmp_path):
    path = _toy_file(tmp_path / "weights.bin")  # a checkpoint's suffix: its bytes, not its name, say toy
    assert sniff(path.read_bytes()[:64], path) == "toy"
    assert load(str(path)).format == "toy"
    result = run("inspect", path, "--all", "-f", "json")
    assert result.code == 0, result.err
    rows = {row["param"]: row for row in json.loads(result.out)["layers"]}
    assert set(rows) == set(SHAPES)
    for key, row in rows.items():
        if len(SHAPES[key]) >= 2:
            assert (row["fan_in"], row["fan_out"]) == _calculate_fan_in_and_fan_out(torch.empty(SHAPES[key])), key


def test_a_registered_format_ranks_in_a_folder(toy, tmp_path):
    _toy_file(tmp_path / "model.toy")
    model = load(str(tmp_path))
    assert model.format == "toy" and model.notes[0] == "read model.toy (a toy file)"
    (tmp_path / "model.safetensors").write_bytes(b"")  # a lower rank is tried first: the safetensors file
    result = run("inspect", tmp_path)
    assert result.code == 2 and "model.safetensors: empty file" in result.err, result.err


def test_without_the_toy_format_its_file_is_not_read(tmp_path):
    result = run("inspect", _toy_file(tmp_path / "weights.bin"))
    assert result.code == 2 and "a text file, not a checkpoint" in result.err, result.err


def test_every_loader_and_dtype_table_a_format_names_exists():
    for format in FORMATS.values():
        for name in (format.load, format.entries):
            assert name is None or callable(loader(name)), name
        if format.dtypes is not None:
            table = loader(format.dtypes)
            names = {name for name, _ in table.values()}
            assert names <= {*DTYPES, *LOW_PRECISION_FLOATING, "int16", "uint16", "uint64", "complex64"}


def _typed() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"qt.weight": torch.quantize_per_tensor(weight, 0.05, 3, torch.qint8), "qt.bias": torch.zeros(6),
                "coo.weight": (weight * (weight > 0.5)).to_sparse().coalesce(), "coo.bias": torch.zeros(6)}


@pytest.mark.parametrize("zipped", [True, False])
def test_bin_shards_keep_each_tensors_notes(tmp_path, zipped):
    tensors = _typed()
    torch.save(tensors, tmp_path / "single.bin", _use_new_zipfile_serialization=zipped)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": ["qt.weight", "qt.bias"],
              "pytorch_model-00002-of-00002.bin": ["coo.weight", "coo.bias"]}
    for shard, keys in shards.items():
        torch.save({key: tensors[key] for key in keys}, sharded / shard, _use_new_zipfile_serialization=zipped)
    index = {"weight_map": {key: shard for shard, keys in shards.items() for key in keys}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    alone = {layer.param: layer.notes for layer in load(str(tmp_path / "single.bin")).layers}
    together = {layer.param: layer.notes for layer in load(str(sharded)).layers}
    assert alone.keys() == together.keys() == set(tensors)
    assert alone["qt.weight"] and alone["coo.weight"]  # each a note of its own form
    assert together == alone


def test_each_shard_is_sniffed_once(tmp_path, monkeypatch):
    from fancli import loaders
    from fancli.loaders import sharded

    tensors = {"a.weight": torch.randn(3, 2), "b.weight": torch.randn(2, 3)}
    for number, key in enumerate(tensors, 1):
        torch.save({key: tensors[key]}, tmp_path / f"pytorch_model-0000{number}-of-00002.bin")
    index = {"weight_map": {key: f"pytorch_model-0000{n}-of-00002.bin" for n, key in enumerate(tensors, 1)}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    sniffed = []
    real = loaders.sniff

    def counted(head, path, size=None):
        sniffed.append(path.name)
        return real(head, path, size)

    monkeypatch.setattr(loaders, "sniff", counted)
    monkeypatch.setattr(sharded, "sniff", counted, raising=False)  # where a module holds its own reference
    assert {layer.param for layer in load(str(tmp_path / "pytorch_model.bin.index.json")).layers} == set(tensors)
    assert sorted(sniffed) == sorted(["pytorch_model.bin.index.json", *index["weight_map"].values()])
