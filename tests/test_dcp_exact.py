"""DCP folders in diff and totals: a tensor sharded by rows compared value by value (torch as the oracle),
and a tie that `dcp.save` writes under each of its keys said, not silently counted twice."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)


def _sharded(folder: Path, full: "torch.Tensor", boxes: list[tuple[tuple[int, int], tuple[int, int]]]) -> Path:
    """`full` saved as ranks' shards (offsets, sizes), each a torch.save zip in its own `.distcp`, as torch's
    FileSystemWriter lays them out; torch's dcp.load reads it back, so the layout is DCP's."""
    folder.mkdir()
    storage, chunks = {}, []
    for rank, (offsets, sizes) in enumerate(boxes):
        name = f"__{rank}_0.distcp"
        with open(folder / name, "wb") as stream:
            box = full[offsets[0] : offsets[0] + sizes[0], offsets[1] : offsets[1] + sizes[1]]
            torch.save(box.clone(), stream)
            storage[MetadataIndex("w.weight", list(offsets), 0)] = _StorageInfo(name, 0, stream.tell())
        chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
    metadata = Metadata({"w.weight": TensorStorageMetadata(TensorProperties(dtype=full.dtype), full.shape, chunks)},
                        storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    back = {"w.weight": torch.zeros_like(full)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=folder)
    assert torch.equal(back["w.weight"], full)
    return folder


def test_diff_of_row_sharded_tensors_matches_torch(tmp_path):
    """A in two row shards, B in three listed out of order: the rows read in order, the numbers torch's;
    column shards still say why they cannot be paired."""
    from fancli import diff

    torch.manual_seed(4)
    a = torch.randn(9, 6)
    b = a + 0.1 * torch.randn(9, 6)
    first = _sharded(tmp_path / "a", a, [((0, 0), (4, 6)), ((4, 0), (5, 6))])
    second = _sharded(tmp_path / "b", b, [((6, 0), (3, 6)), ((0, 0), (2, 6)), ((2, 0), (4, 6))])
    (row,) = diff(str(first), str(second), max_elements=5).tensors
    a64, b64 = a.double(), b.double()
    assert row.note is None and row.status == "changed"
    assert row.rel_diff_norm == pytest.approx(((b64 - a64).norm() / a64.norm()).item(), rel=1e-12)
    assert row.max_abs_diff == pytest.approx((b64 - a64).abs().max().item(), rel=1e-12)
    columns = _sharded(tmp_path / "c", b, [((0, 0), (9, 3)), ((0, 3), (9, 3))])  # boxes, not rows in order
    (row,) = diff(str(first), str(columns)).tensors
    assert row.rel_diff_norm is None and "cannot be paired" in row.note




def test_a_tie_saved_twice_is_said(tmp_path):
    """`dcp.save` writes a tied tensor under each key (torch's own metadata lists both, each with its bytes):
    the bytes are as stored, and the note says the tensor may be counted twice."""
    from fancli.api import inspect

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"emb.weight": emb.weight, "head.weight": head.weight}}, checkpoint_id=tmp_path / "c")
    metadata = pickle.loads((tmp_path / "c" / ".metadata").read_bytes())
    assert len({info.offset for info in metadata.storage_data.values()}) == 2  # torch wrote the bytes twice
    report = inspect(str(tmp_path / "c"))
    assert any("'model.head.weight'" in note and "'model.emb.weight'" in note and "twice" in note
               for note in report.notes)
