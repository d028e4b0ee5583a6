"""Read a `torch.distributed.checkpoint` `.metadata` pickle without torch and without running it.

DCP's `.metadata` is a pickle of `torch.distributed.checkpoint.metadata.Metadata`: per tensor its dtype,
logical size and chunks (each a box of offsets and sizes), and per chunk where its bytes lie (a `.distcp`
file, an offset and a length). torch's loader unpickles it in full (any global, any code). Here the
pickle goes through pickle_scan first and then an unpickler that knows exactly the globals torch 2.13
writes: DCP's dataclasses become inert records, dtypes their names, `torch.Size` a tuple, enums their
values, paths strings; every other global is refused. The records are then checked into plain values
(`DcpTensor`, `DcpChunk`), so nothing built by the pickle is used unchecked.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..errors import SourceError
from ..weights.dtypes import DTYPES, LOW_PRECISION_FLOATING
from . import pickle_scan
from .torch_pickle import UnsafeGlobal, WeightsUnpickler, is_index, is_shape, error_phrase

MAX_METADATA_BYTES = 64 * 1024 * 1024  # ~700 bytes a tensor: 90,000 tensors
#: What one chunk of one tensor costs once checked (a DcpChunk and its place in a tuple), charged per
#: reference: a pickle may memoise one list of chunks and name it for every tensor.
_CHUNK_COST = 512
#: The grid that chunks' edges cut a tensor into, painted to find overlaps: DCP's are a chunk a cell.
_MAX_CELLS = 1 << 24
_METADATA = "torch.distributed.checkpoint.metadata"
_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
#: dtypes a DCP tensor may name; fancli decodes those in DTYPES, lists the FP8 and narrower, skips the rest.
_DTYPE_NAMES = frozenset(DTYPES) | frozenset(LOW_PRECISION_FLOATING) | {
    "complex64", "complex128", "complex32", "uint16", "uint32", "uint64", "qint8", "quint8", "qint32"}
_MAX_TEXT = 4096


class _Record:
    """An inert stand-in for one of DCP's dataclasses: made empty by NEWOBJ, filled once by BUILD with a
    dict of the dataclass's own field names; it has no behaviour to call and no attributes a pickle sets."""

    FIELDS: tuple[str, ...] = ()

    def __new__(cls, *args: Any) -> "_Record":
        if args:  # torch pickles dataclasses as cls.__new__(cls) then BUILD
            raise pickle.UnpicklingError(f"{cls.__name__.lstrip('_')} made with arguments")
        record = super().__new__(cls)
        record.values = None
        return record

    def __setstate__(self, state: Any) -> None:
        if self.values is not None:
            raise pickle.UnpicklingError(f"the pickle sets the state of a {type(self).__name__.lstrip('_')} twice")
        if not (isinstance(state, dict) and all(isinstance(key, str) and key in self.FIELDS for key in state)):
            raise pickle.UnpicklingError(f"a {type(self).__name__.lstrip('_')} with fields DCP does not write")
        self.values = dict(state)

    def get(self, name: str, default: Any = None) -> Any:
        return default if self.values is None else self.values.get(name, default)


class _Metadata(_Record):
    FIELDS = ("state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version")


class _TensorStorage(_Record):
    FIELDS = ("properties", "size", "chunks")


class _Chunk(_Record):
    FIELDS = ("offsets", "sizes")


class _Bytes(_Record):
    FIELDS = ()


class _Index(_Record):
    FIELDS = ("fqn", "offset", "index")


class _StorageInfo(_Record):
    FIELDS = ("relative_path", "offset", "length", "transform_descriptors")


class _StorageMeta(_Record):
    FIELDS = ("checkpoint_id", "save_id", "load_id", "modules")


class _TensorProperties(_Record):
    """TensorProperties pickles its state as a tuple (dtype, layout, requires_grad, memory format, pinned)."""

    def __setstate__(self, state: Any) -> None:
        if self.values is not None:
            raise pickle.UnpicklingError("the pickle sets the state of a TensorProperties twice")
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("a TensorProperties state that is not DCP's five fields")
        self.values = dict(zip(("dtype", "layout", "requires_grad", "memory_format", "pin_memory"), state))


class MetadataUnpickler(WeightsUnpickler):
    """The globals torch 2.13 writes into `.metadata`, found by disassembling real ones; nothing else."""

    RECORDS: dict[tuple[str, str], type] = {
        (_METADATA, "Metadata"): _Metadata, (_METADATA, "TensorStorageMetadata"): _TensorStorage,
        (_METADATA, "TensorProperties"): _TensorProperties, (_METADATA, "ChunkStorageMetadata"): _Chunk,
        (_METADATA, "BytesStorageMetadata"): _Bytes, (_METADATA, "MetadataIndex"): _Index,
        (_METADATA, "StorageMeta"): _StorageMeta, (_FILESYSTEM, "_StorageInfo"): _StorageInfo,
    }
    CALLS = {
        ("torch", "Size"): "size",
        ("torch.serialization", "_get_layout"): "layout",
        (_METADATA, "_MEM_FORMAT_ENCODING"): "memory_format",
        **{("pathlib", name): "path" for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")},
    }
    NAMES: dict = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.RECORDS:
            return self.RECORDS[(module, name)]
        if (module, name) in self.CALLS:
            return getattr(self, self.CALLS[(module, name)])
        if module == "torch" and name in _DTYPE_NAMES:
            return name
        raise UnsafeGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("DCP metadata has no persistent ids")

    def layout(self, name: Any) -> str:
        if not (isinstance(name, str) and len(name) <= 64):
            raise pickle.UnpicklingError("a layout that is not a name")
        return name

    def memory_format(self, value: Any) -> int:
        if value not in (0, 1, 2) or type(value) is not int:
            raise pickle.UnpicklingError("a memory format that is not one of DCP's three")
        return value

    def path(self, *parts: Any) -> str:
        if not (len(parts) <= 64 and all(isinstance(part, str) and len(part) <= _MAX_TEXT for part in parts)):
            raise pickle.UnpicklingError("a path made of something other than a few strings")
        self.charge(64 + sum(map(len, parts)))
        return "/".join(parts)


@dataclass(frozen=True)
class DcpChunk:
    """One saved box of a tensor, and where its bytes lie: `file` inside the folder, [start, start+length)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int
    transformed: bool  # written through a DCP extension (compression…): the bytes are not torch.save's


@dataclass(frozen=True)
class DcpTensor:
    fqn: str
    dtype: str
    size: tuple[int, ...]
    chunks: tuple[DcpChunk, ...]


@dataclass(frozen=True)
class DcpMetadata:
    tensors: tuple[DcpTensor, ...]
    others: tuple[str, ...]  # non-tensor items (pickled objects saved as bytes): names only


def read_metadata(where: str, data: bytes) -> DcpMetadata:
    """The `.metadata` bytes, scanned, unpickled through the allowlist, and checked; SourceError naming
    `where` for anything that is not DCP metadata or that would run code."""
    try:
        _, cost = pickle_scan.scan(data)
    except pickle_scan.PickleRefused as refused:
        raise SourceError(f"{where}: not DCP metadata: the pickle {refused}") from None
    try:
        unpickler = MetadataUnpickler(data, pickle_scan.MAX_MEMORY - cost)
        top = unpickler.load()
    except UnsafeGlobal as refused:
        raise SourceError(f"{where}: refused: its pickle names the global {f'{refused.module}.{refused.name}'[:120]!r}, "
                          "which DCP metadata does not use (loading it could run code; nothing was run)") from None
    except Exception as error:  # the allowlisted callables, given what a hostile pickle passes, raise anything
        raise SourceError(f"{where}: not valid DCP metadata ({error_phrase(error)})") from None
    if not isinstance(top, _Metadata):
        raise SourceError(f"{where}: a pickle, but not torch.distributed.checkpoint metadata")
    return _checked(where, top, unpickler.allowance)


def _checked(where: str, top: _Metadata, allowance: int) -> DcpMetadata:
    """The records checked into plain values; the chunks they hold charged to what is left of `allowance`."""
    items = top.get("state_dict_metadata")
    storage = top.get("storage_data")
    if not isinstance(items, dict) or not isinstance(storage, dict):
        raise SourceError(f"{where}: DCP metadata without its state_dict or storage tables")
    located: dict[tuple[str, tuple[int, ...]], _StorageInfo] = {}
    for index, info in storage.items():
        if not (isinstance(index, _Index) and isinstance(info, _StorageInfo)):
            raise SourceError(f"{where}: a storage table entry that is not DCP's")
        fqn, offset = index.get("fqn"), index.get("offset")
        if isinstance(fqn, str) and (offset is None or is_shape(offset)):
            located[(fqn, tuple(offset or ()))] = info
    tensors, others = [], []
    for fqn, item in items.items():
        if not isinstance(fqn, str):
            raise SourceError(f"{where}: a state_dict key that is not a string")
        if isinstance(item, _Bytes):
            others.append(fqn)
        elif isinstance(item, _TensorStorage):
            chunks = item.get("chunks")
            allowance -= _CHUNK_COST * len(chunks) if isinstance(chunks, list) else 0
            if allowance < 0:
                raise SourceError(f"{where}: its tensors' chunk lists name more chunks than fancli holds "
                                  f"({pickle_scan.MAX_MEMORY >> 20} MiB of records, reached at {fqn[:80]}); "
                                  "refused (a list one pickle shares counts for each tensor naming it)")
            tensors.append(_tensor(where, fqn, item, located))
        else:
            raise SourceError(f"{where}: {fqn[:80]}: neither tensor nor bytes metadata")
    return DcpMetadata(tuple(tensors), tuple(others))


def _tensor(where: str, fqn: str, item: _TensorStorage,
            located: dict[tuple[str, tuple[int, ...]], _StorageInfo]) -> DcpTensor:
    """One tensor's claims checked: a dtype name, a size, and chunks that lie inside it and add up to it,
    each with a storage record naming a file inside the folder."""
    key = fqn[:80]
    properties, size, chunks = item.get("properties"), item.get("size"), item.get("chunks")
    dtype = properties.get("dtype") if isinstance(properties, _TensorProperties) else None
    if not isinstance(dtype, str):
        raise SourceError(f"{where}: {key}: no dtype in its tensor properties")
    if not is_shape(size) or not isinstance(chunks, list) or not all(isinstance(c, _Chunk) for c in chunks):
        raise SourceError(f"{where}: {key}: malformed size or chunks")
    size = tuple(size)
    total, checked = 0, []
    for chunk in chunks:
        offsets, sizes = chunk.get("offsets"), chunk.get("sizes")
        if not (is_shape(offsets) and is_shape(sizes) and len(offsets) == len(sizes) == len(size)
                and all(o + s <= n for o, s, n in zip(offsets, sizes, size))):
            raise SourceError(f"{where}: {key}: a chunk outside the tensor's size {list(size)}")
        info = located.get((fqn, tuple(offsets)))
        if info is None:
            raise SourceError(f"{where}: {key}: a chunk at {list(offsets)} has no storage record")
        checked.append(_chunk(where, key, tuple(offsets), tuple(sizes), info))
        total += math.prod(sizes)
    if total != math.prod(size):
        raise SourceError(f"{where}: {key}: its chunks hold {total} values, its size {list(size)} needs "
                          f"{math.prod(size)}")
    if len(checked) > 1:
        _check_disjoint(where, key, size, checked)
    return DcpTensor(fqn, dtype, size, tuple(checked))


def _check_disjoint(where: str, key: str, size: tuple[int, ...], chunks: list[DcpChunk]) -> None:
    """No value lies in two chunks (they add up to the size, so they then tile it): the chunks' edges cut
    the tensor into a grid of cells, and each chunk paints its cells, none painted before."""
    import numpy as np

    boxes = [chunk for chunk in chunks if all(chunk.sizes)]
    corners = np.array([(chunk.offsets, chunk.sizes) for chunk in boxes], dtype=np.int64).reshape(-1, 2, len(size))
    starts, ends = corners[:, 0], corners[:, 0] + corners[:, 1]
    edges = [np.unique(np.concatenate(([0, length], starts[:, d], ends[:, d]))) for d, length in enumerate(size)]
    cells = math.prod(len(edge) - 1 for edge in edges)
    if cells > _MAX_CELLS:
        raise SourceError(f"{where}: {key}: its {len(chunks)} chunks cut it into {cells} pieces, too irregular "
                          "to check that no two overlap; refused")
    painted = np.zeros([len(edge) - 1 for edge in edges], dtype=bool)
    low = np.stack([np.searchsorted(edge, starts[:, d]) for d, edge in enumerate(edges)], axis=1).tolist()
    high = np.stack([np.searchsorted(edge, ends[:, d]) for d, edge in enumerate(edges)], axis=1).tolist()
    for chunk, first, last in zip(boxes, low, high):
        box = painted[tuple(map(slice, first, last))]
        if box.any():
            raise SourceError(f"{where}: {key}: its chunk at {list(chunk.offsets)} overlaps another chunk "
                              "(their values would be counted twice); refused")
        box[...] = True


def _chunk(where: str, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...], info: _StorageInfo) -> DcpChunk:
    name, start, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if not (isinstance(name, str) and is_index(start) and is_index(length)):
        raise SourceError(f"{where}: {key}: a malformed storage record")
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or ".." in parts or len(name) > _MAX_TEXT:
        raise SourceError(f"{where}: {key}: its data file {name[:80]!r} is not a file inside the checkpoint folder")
    transforms = info.get("transform_descriptors")
    return DcpChunk(offsets, sizes, name, start, length, bool(transforms))

