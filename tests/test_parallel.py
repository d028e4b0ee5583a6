"""Issue 18: `--stats` split into fixed pieces within tensors, merged in a fixed order: the numbers are
torch's (float64) and the same bit for bit for any --jobs; --jobs reaches check, diff and the library."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, run

import fancli
import fancli.weights.parallel
import fancli.weights.stats
from fancli.weights.stats import observe, observe_all, pieces

SMALL = 16 * 1024  # bytes per piece: the fixture's tensors split into many pieces


@pytest.fixture(scope="module")
def tensors():
    generator = torch.Generator().manual_seed(18)
    return {
        "offset.weight": torch.randn(300, 257, generator=generator) * 0.02 + 3.0,  # mean far from 0
        "conv.weight": (torch.rand(64, 3, 5, 5, generator=generator) - 0.5) * 0.4,  # uniform: kurtosis -1.2
        "wide.weight": torch.randn(7, 5000, generator=generator),  # a row (20 KB) longer than a piece
        "norm.bias": torch.randn(4099, generator=generator),  # 1-D: pieces cut anywhere
        "half.weight": torch.randn(128, 96, generator=generator).to(torch.bfloat16),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tensors):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("parallel")
    save_file(tensors, str(folder / "model.safetensors"))
    torch.save(tensors, folder / "model.pt")
    return folder


def _layers(path):
    return {layer.param: layer for layer in fancli.load(path).layers}


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_pieces_merged_give_torchs_float64_moments(checkpoint, tensors, name):
    for key, layer in _layers(checkpoint / name).items():
        assert len(pieces(layer.data, piece_bytes=SMALL)) > 1, key  # really split
        observed = observe(layer.data, kurtosis=True, piece_bytes=SMALL)
        exact = tensors[key].double()
        assert observed.count == exact.numel()
        assert observed.mean == pytest.approx(exact.mean().item(), rel=1e-12, abs=1e-15)
        assert observed.std == pytest.approx(exact.std().item(), rel=1e-10)
        assert observed.min == exact.min().item() and observed.max == exact.max().item()
        centred = exact - exact.mean()
        kurtosis = (centred**4).mean().item() / (centred**2).mean().item() ** 2 - 3
        assert observed.kurtosis == pytest.approx(kurtosis, rel=1e-9, abs=1e-12)


def test_row_signals_across_piece_boundaries(checkpoint, tensors):
    """Pieces hold whole rows, and the overlap of the two rows either side of a boundary is counted."""
    layers = _layers(checkpoint / "model.safetensors")
    data = layers["offset.weight"].data
    parts = pieces(data, structure=True, piece_bytes=SMALL)
    assert len(parts) > 5 and all((p.stop - p.start) % 257 == 0 for p in parts[:-1])
    rows = observe(data, structure=True, piece_bytes=SMALL).structure
    whole = observe(data, structure=True, piece_bytes=1 << 30).structure
    exact = tensors["offset.weight"].double()
    sums = (exact * exact).sum(dim=1)
    overlaps = ((exact[:-1] * exact[1:]).sum(dim=1) ** 2)
    assert rows.rows == 300 and rows.row_length == 257
    assert rows.row_mean == pytest.approx(sums.mean().item(), rel=1e-12)
    assert rows.row_variance == pytest.approx(sums.var().item(), rel=1e-8)
    assert rows.overlap == pytest.approx(overlaps.mean().item(), rel=1e-10)
    assert rows.a4 == pytest.approx((exact**4).mean().item(), rel=1e-12)
    assert rows.zeros == whole.zeros == 0
    for field in ("rows", "row_length"):
        assert getattr(rows, field) == getattr(whole, field)
    assert rows.overlap == pytest.approx(whole.overlap, rel=1e-12)


def test_a_row_longer_than_a_piece_is_one_piece(checkpoint):
    data = _layers(checkpoint / "model.safetensors")["wide.weight"].data
    parts = pieces(data, piece_bytes=SMALL)
    assert [(p.start, p.stop) for p in parts] == [(i * 5000, (i + 1) * 5000) for i in range(7)]
    assert observe(data, structure=True, piece_bytes=SMALL).structure.rows == 7


def test_nan_in_one_piece_drops_row_signals_only(tmp_path):
    from safetensors.numpy import save_file

    values = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    values[40, 3] = np.nan
    save_file({"w": values}, str(tmp_path / "nan.safetensors"))
    data = fancli.load(tmp_path / "nan.safetensors").layers[0].data
    observed = observe(data, structure=True, piece_bytes=4096)
    finite = values[np.isfinite(values)].astype(np.float64)
    assert observed.nonfinite == 1 and observed.count == values.size
    assert observed.std == pytest.approx(finite.std(ddof=1), rel=1e-12)
    assert observed.structure.rows == 0 and observed.structure.row_mean is None


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_observe_all_is_identical_for_any_jobs(monkeypatch, checkpoint, name):
    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)
    layers = fancli.load(checkpoint / name).layers
    seen: list[int] = []
    one = observe_all(layers, kurtosis=True, structure=True, jobs=1, piece_bytes=SMALL)
    for jobs in (2, 3):
        assert observe_all(layers, seen.append, kurtosis=True, structure=True, jobs=jobs, piece_bytes=SMALL) == one
    assert sum(seen) == 2 * sum(math.prod(layer.shape) * (2 if "half" in layer.param else 4) for layer in layers)


def test_the_pool_runs_pieces_on_other_threads(monkeypatch, checkpoint):
    import threading

    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)
    names: set[str] = set()
    original = fancli.weights.stats.reduce_piece

    def spy(piece):
        names.add(threading.current_thread().name)
        return original(piece)

    monkeypatch.setattr(fancli.weights.stats, "reduce_piece", spy)
    observe_all(fancli.load(checkpoint / "model.pt").layers, jobs=2, piece_bytes=SMALL)
    assert names and all(name.startswith("fancli-stats") for name in names)
    names.clear()
    observe_all(fancli.load(checkpoint / "model.pt").layers, jobs=1, piece_bytes=SMALL)
    assert names == {threading.current_thread().name}


def _small_pieces(monkeypatch):
    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(fancli.weights.stats, "PIECE_BYTES", SMALL)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_inspect_and_compare_json_identical_for_jobs_1_2_3(monkeypatch, checkpoint, name):
    _small_pieces(monkeypatch)
    for command in (["inspect", "--infer"], ["compare"]):
        outs = [run(*command, checkpoint / name, "--stats", "-f", "json", "--jobs", n) for n in ("1", "2", "3")]
        assert all(out.code == 0 for out in outs), [out.err for out in outs]
        assert outs[0].out == outs[1].out == outs[2].out and '"observed"' in outs[0].out


def test_check_stats_takes_jobs(monkeypatch, checkpoint, tmp_path):
    _small_pieces(monkeypatch)
    monkeypatch.chdir(tmp_path)
    path = checkpoint / "model.pt"
    assert run("check", path, "--no-config", "--update", "--baseline", "lock.json").code == 0
    outs = [run("check", path, "--no-config", "--baseline", "lock.json", "--stats", "-f", "json", "--jobs", n)
            for n in ("1", "2")]
    assert outs[0].code == outs[1].code and outs[0].out == outs[1].out and outs[0].out
    assert run("check", path, "--jobs", "0").code == 2


def test_library_check_init_takes_jobs(monkeypatch, checkpoint):
    _small_pieces(monkeypatch)
    path = checkpoint / "model.pt"
    one = fancli.check_init(path, config=False, baseline=False, stats=True, jobs=1)
    two = fancli.check_init(path, config=False, baseline=False, stats=True, jobs=2)
    assert one.deviations == two.deviations and one.deviations
    assert [row.observed for row in one.report.rows] == [row.observed for row in two.report.rows]
    fancli.assert_init(path, config=False, baseline=False, jobs=2)  # no stats: nothing to judge, passes


def test_diff_takes_jobs_and_is_identical(monkeypatch, checkpoint, tensors, tmp_path):
    from safetensors.torch import save_file

    _small_pieces(monkeypatch)
    changed = dict(tensors)
    changed["offset.weight"] = tensors["offset.weight"] * 1.01
    save_file(changed, str(tmp_path / "b.safetensors"))
    outs = [run("diff", checkpoint / "model.pt", tmp_path / "b.safetensors", "-f", "json", "--jobs", n)
            for n in ("1", "2", "3")]
    assert outs[0].code == 0 and outs[0].out == outs[1].out == outs[2].out
    rows = {row["param"]: row for row in json.loads(outs[0].out)["tensors"]}
    assert rows["offset.weight"]["status"] == "changed" and rows["conv.weight"]["status"] == "same"
    a = tensors["offset.weight"].double()
    assert rows["offset.weight"]["rel_diff_norm"] == pytest.approx(
        (changed["offset.weight"].double() - a).norm().item() / a.norm().item(), rel=1e-6)


def test_jobs_default_is_the_usable_cores(monkeypatch, checkpoint):
    _small_pieces(monkeypatch)
    asked: list[int] = []
    original = fancli.weights.parallel.pool

    def spy(workers):
        asked.append(workers)
        return original(workers)

    monkeypatch.setattr(fancli.weights.parallel, "usable_cores", lambda: 3)
    monkeypatch.setattr(fancli.weights.parallel, "pool", spy)
    assert run("inspect", checkpoint / "model.pt", "--stats", "-f", "json").code == 0
    assert asked == [3]


@pytest.mark.parametrize("sources", [("model.pt",), ("model.pt", "model.safetensors")], ids=["one", "trajectory"])
def test_cluster_without_dask_is_one_line(monkeypatch, checkpoint, sources):
    """Several sources (a trajectory) read on the cluster too: the option is never silently ignored."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ModuleNotFoundError
    result = run("inspect", *(checkpoint / source for source in sources), "--stats", "--cluster", "tcp://127.0.0.1:1")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "pip install 'dask[distributed]'" in result.err


def test_cluster_unreachable_is_one_line(monkeypatch, checkpoint):
    pytest.importorskip("distributed")
    import fancli.weights.cluster

    monkeypatch.setattr(fancli.weights.cluster, "CONNECT_TIMEOUT", 1)
    result = run("inspect", checkpoint / "model.pt", "--stats", "--cluster", "tcp://127.0.0.1:9")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "tcp://127.0.0.1:9" in result.err


def test_cli_and_help_import_neither_dask_nor_torch():
    code = ("import sys, fancli.cli\n"
            "try:\n    fancli.cli.main(['inspect', '--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    fancli.cli.main(['diff', '--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('dask', 'distributed', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_pieces_read_into_a_buffer_give_what_reads_give(monkeypatch, checkpoint, name):
    layers = fancli.load(checkpoint / name).layers
    source = type(layers[0].data.source)
    calls: list[int] = []
    original = source.locate
    monkeypatch.setattr(source, "locate", lambda self, start, size: calls.append(size) or original(self, start, size))
    mapped = observe_all(layers, kurtosis=True, structure=True, piece_bytes=SMALL)
    assert len(calls) > len(layers)  # every contiguous piece was located and read into the buffer
    monkeypatch.delattr(source, "locate")  # the fallback: one read per chunk
    assert observe_all(layers, kurtosis=True, structure=True, piece_bytes=SMALL) == mapped


def test_a_file_cut_after_loading_is_a_source_error(tmp_path):
    from safetensors.numpy import save_file

    from fancli.errors import SourceError

    path = tmp_path / "cut.safetensors"
    save_file({"w": np.ones((256, 256), dtype=np.float32)}, str(path))
    (layer,) = fancli.load(path).layers
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    with pytest.raises(SourceError, match="shorter than when it was loaded"):
        observe(layer.data, piece_bytes=SMALL)


def _sharded_dcp(folder, full, splits):
    """A DCP folder holding `full` as row shards in one file each, as torch's FileSystemWriter lays them out."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    storage, chunks = {}, []
    for rank, (start, rows) in enumerate(splits):
        name = f"__{rank}_0.distcp"
        with open(folder / name, "wb") as stream:
            torch.save(full[start : start + rows].clone(), stream)
            storage[MetadataIndex("w.weight", [start, 0], 0)] = _StorageInfo(name, 0, stream.tell())
        chunks.append(ChunkStorageMetadata(torch.Size([start, 0]), torch.Size([rows, full.shape[1]])))
    metadata = Metadata({"w.weight": TensorStorageMetadata(TensorProperties(dtype=torch.float32), full.shape,
                                                           chunks)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    back = {"w.weight": torch.zeros(full.shape)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=folder)
    assert torch.equal(back["w.weight"], full)  # torch reads the layout back: it is DCP's
    return folder


def test_dcp_shards_are_split_across_workers_and_merged_exactly(monkeypatch, tmp_path):
    torch.manual_seed(3)
    full = torch.randn(300, 64) * 0.1 + 0.5
    folder = _sharded_dcp(tmp_path, full, [(0, 100), (100, 120), (220, 80)])
    (layer,) = fancli.load(folder).layers
    parts = pieces(layer.data, structure=True, piece_bytes=SMALL)
    assert {piece.data.source.path.name for piece in parts} == {"__0_0.distcp", "__1_0.distcp", "__2_0.distcp"}
    assert len(parts) > 3 and not any(piece.logical for piece in parts)  # rows do not run across shards
    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)
    one = observe_all([layer], kurtosis=True, structure=True, jobs=1, piece_bytes=SMALL)["w.weight"]
    assert observe_all([layer], kurtosis=True, structure=True, jobs=2, piece_bytes=SMALL)["w.weight"] == one
    exact = full.double()
    assert one.count == 300 * 64 and one.std == pytest.approx(exact.std().item(), rel=1e-10)
    assert one.mean == pytest.approx(exact.mean().item(), rel=1e-12)
    assert one.structure.rows == 0 and one.structure.a2 == pytest.approx((exact**2).mean().item(), rel=1e-12)


def test_a_file_cut_while_a_piece_is_read_is_one_line_not_a_crash(tmp_path):
    """A run directory rewritten by training under a trajectory: the read after the cut is short, a
    SourceError (a memory map would have killed the process with SIGBUS)."""
    from safetensors.numpy import save_file

    from fancli.errors import SourceError

    path = tmp_path / "live.safetensors"
    save_file({"w": np.ones((512, 256), dtype=np.float32)}, str(path))
    (layer,) = fancli.load(path).layers
    chunks = layer.data.range_chunks(0, 512 * 256, 256 * 64, bytearray(256 * 64 * 4))
    assert float(next(chunks).sum()) == 256 * 64
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(SourceError, match="shorter than when it was loaded"):
        list(chunks)
