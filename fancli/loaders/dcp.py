"""`torch.distributed.checkpoint` (DCP) folders, what FSDP and DTensor training save, read without torch.

A DCP folder is a `.metadata` pickle plus `.distcp` data files. Listing reads only `.metadata` (through
dcp_metadata's allowlist: nothing from it runs) and checks that every chunk it names lies inside an
existing data file; no tensor byte is read. Keys keep their full path (`model.layers.0.…`), as DCP
flattens them. `--stats` reads each chunk where the storage table says it is: torch's default writer
stores every chunk as a whole `torch.save` zip at [offset, offset + length) of a `.distcp` file, so the
chunk's small `data.pkl` goes through torch_zip's restricted unpickler and its storage is read by byte
range, a bounded chunk at a time, like any torch.save archive. A tensor sharded into several chunks
(one per rank) is listed with its full logical size and its statistics are taken over all its chunks.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..errors import SourceError
from ..layer import Layer, Model
from ..safe_io import FileRange, open_regular, read_bounded
from ..weights.dtypes import DTYPES
from ..weights.tensors import CHUNK_ELEMENTS, StridedRef
from . import LoadOptions, pickle_scan
from .checkpoint import NOT_WEIGHTS
from .dcp_metadata import MAX_METADATA_BYTES, DcpChunk, DcpTensor, read_metadata
from .entry import Entry
from .flat_keys import layers_from_entries
from .links import leads_outside, link_root
from .torch_pickle import UnsafeGlobal, WeightsUnpickler, error_phrase, SavedTensor, check_claims
from .zip_bounds import check_zip_claims

METADATA_NAME = ".metadata"
#: A chunk's data.pkl describes one tensor in ~200 bytes.
_MAX_ITEM_PICKLE = 1024 * 1024
_MAX_NAMED = 5


def load_metadata(path: Path, options: LoadOptions) -> Model:
    """A DCP folder given by its `.metadata` file: the folder is what it describes."""
    return load_dcp(path.parent, options)


def load_dcp(folder: Path, options: LoadOptions) -> Model:
    """A DCP folder as a Model: names, shapes and dtypes from `.metadata`, lazy data handles per tensor.
    `options.trust` changes nothing: fancli's reader needs no code from the folder."""
    where = folder / METADATA_NAME
    root = link_root(folder)
    if leads_outside(where, root):
        raise SourceError(f"{where}: links outside the checkpoint's folder; refused")
    meta = read_metadata(str(where), read_bounded(where, MAX_METADATA_BYTES, "DCP metadata"))
    _check_data_files(folder, root, meta.tensors)
    entries, ignored, sharded, transformed = [], [], 0, []
    for tensor in meta.tensors:
        top = tensor.fqn.split(".", 1)[0]
        if top.startswith(NOT_WEIGHTS):
            if top not in ignored:
                ignored.append(top)
            continue
        sharded += len(tensor.chunks) > 1
        if any(chunk.transformed for chunk in tensor.chunks):
            transformed.append(tensor.fqn)
        data = _DcpData(folder, tensor) if tensor.dtype in DTYPES and tensor.fqn not in transformed else None
        entries.append(Entry(tensor.fqn, tensor.size, tensor.dtype, data))
    layers = layers_from_entries(entries)
    if not layers:
        raise SourceError(f"{folder}: a DCP checkpoint that holds no floating-point weights")
    notes = []
    if ignored:
        notes.append(f"ignored (not model weights): {', '.join(repr(name) for name in ignored)}")
    others = [name for name in meta.others if not name.split(".", 1)[0].startswith(NOT_WEIGHTS)]
    if others:
        notes.append(f"{len(others)} non-tensor item(s) saved as pickled bytes, never opened: {_names(others)}")
    if sharded:
        notes.append(f"{sharded} tensor(s) saved in several chunks (sharded): listed with their full size; "
                     "--stats reads every chunk")
    if transformed:
        notes.append(f"written through a DCP storage extension (compression?), no statistics: {_names(transformed)}")
    notes += _maybe_tied(layers)
    return Model(source=str(folder), format="torch-dcp", layers=layers, notes=tuple(notes))


def _maybe_tied(layers: tuple[Layer, ...]) -> list[str]:
    """`dcp.save` writes a tied tensor's bytes under each of its keys and keeps no record of the tie, so both
    keys are listed and counted. Where a tensor has an embedding's dtype and shape (an `lm_head` tied to
    `wte`), that is said; telling a tie from two equal-shaped tensors would take reading both."""
    found = []
    for embedding in (layer for layer in layers if layer.kind == "embedding"):
        twins = [layer.param for layer in layers if layer is not embedding and layer.shape == embedding.shape
                 and layer.dtype == embedding.dtype and layer.kind != "embedding"]
        if twins:
            found.append(f"{_names(twins)} {'has' if len(twins) == 1 else 'have'} the dtype and shape of the "
                         f"embedding {embedding.param[:80]!r}: if tied to it, DCP saved the tensor under each key, "
                         "and each is counted here (its parameters twice, its bytes as stored)")
    return found


def _names(names: list[str] | tuple[str, ...]) -> str:
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(repr(name[:80]) for name in names[:_MAX_NAMED]) + more


def _check_data_files(folder: Path, root: Path, tensors: tuple[DcpTensor, ...]) -> None:
    """Every data file the metadata names exists as a regular file inside `root` (its links followed: the
    folder, or a Hub snapshot's repo folder) and holds the byte ranges it claims."""
    sizes: dict[str, int] = {}
    for tensor in tensors:
        for chunk in tensor.chunks:
            if chunk.file not in sizes:
                if leads_outside(folder / chunk.file, root):
                    raise SourceError(f"{folder}: its .metadata names the data file {chunk.file[:80]!r}, which "
                                      "links outside the checkpoint's folder; refused")
                try:
                    with open_regular(folder / chunk.file, str(folder / chunk.file)) as handle:
                        sizes[chunk.file] = os.fstat(handle.fileno()).st_size
                except SourceError as error:
                    raise SourceError(f"{folder}: its .metadata names the data file {chunk.file[:80]!r}, but "
                                      f"{str(error).rpartition(': ')[2]}") from None
            if chunk.start + chunk.length > sizes[chunk.file]:
                raise SourceError(f"{folder / chunk.file}: {tensor.fqn[:80]}: its bytes "
                                  f"[{chunk.start}, {chunk.start + chunk.length}) run past the end of the file "
                                  f"({sizes[chunk.file]} bytes)")


class _DcpData:
    """A tensor's data as TensorData: its chunks read one after another, in the order of their offsets."""

    def __init__(self, folder: Path, tensor: DcpTensor) -> None:
        self.folder, self.tensor = folder, tensor
        self.dtype, self.shape = tensor.dtype, tensor.size
        self.where = f"{folder}: {tensor.fqn[:80]}"

    def _ordered(self) -> list[DcpChunk]:
        return sorted(self.tensor.chunks, key=lambda chunk: chunk.offsets)

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        """Logical order where the chunks, by offset, are whole rows one after another (one chunk, or FSDP's
        and row-wise tensor parallelism's shards along dim 0) and each reads in order; other shards (column
        splits, 2-D boxes) come box by box, in no order a value-by-value comparison can pair."""
        ordered, size = self._ordered(), self.tensor.size
        if len(ordered) > 1:
            rows = 0
            for chunk in ordered:
                if chunk.offsets != (rows, *(0,) * (len(size) - 1)) or chunk.sizes[1:] != size[1:]:
                    return False
                rows += chunk.sizes[0]
            if rows != size[0]:
                return False
        return all(chunk_ref(self.folder, self.tensor, chunk).logical(max_elements) for chunk in ordered)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[Any]:
        for chunk in self._ordered():
            yield from chunk_ref(self.folder, self.tensor, chunk).chunks(max_elements)

    def parts(self) -> list[StridedRef]:
        """Each shard's chunk as its own handle: `--stats` splits the work across shards (and files)."""
        return [chunk_ref(self.folder, self.tensor, chunk) for chunk in self.tensor.chunks]

    def rows(self, start: int, count: int) -> Any:
        """Rows start..start+count of the tensor (dim 0; a 0-D tensor is one row) in logical order, each
        shard's part read by byte range and put where its box lies: what a dequantizer needs, whose scales
        go by row and column (a shard's order would pair values with the wrong scales)."""
        import numpy as np

        shape = self.shape or (1,)
        out, filled = None, 0
        for chunk, ref in zip(self.tensor.chunks, self._refs):
            sizes, offsets = chunk.sizes or (1,), chunk.offsets or (0,)
            first, last = max(start, offsets[0]), min(start + count, offsets[0] + sizes[0])
            if first >= last:
                continue
            if not ref.contiguous:
                raise SourceError(f"{self.where}: a shard in {chunk.file[:80]} stored as a "
                                  "strided view: its rows are not read by range")
            inner = math.prod(sizes[1:])
            values = next(ref.range_chunks((first - offsets[0]) * inner, (last - offsets[0]) * inner,
                                           max((last - first) * inner, 1)))
            if out is None:
                out = np.empty((count, *shape[1:]), values.dtype)
            box = (slice(first - start, last - start),
                   *(slice(offset, offset + size) for offset, size in zip(offsets[1:], sizes[1:])))
            out[box] = values.reshape(last - first, *sizes[1:])
            filled += values.size
        if out is None or filled != out.size:
            raise SourceError(f"{self.where}: its shards do not cover rows "
                              f"{start}..{start + count - 1}")
        return out

    @functools.cached_property
    def _refs(self) -> list[StridedRef]:
        """The shards' handles, located once (each reads a chunk's small pickle)."""
        return self.parts()


class _Window:
    """A byte range of an open file as a read-only file of its own, for zipfile: a chunk's torch.save zip."""

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        self.handle, self.start, self.length, self.pos = handle, start, length, 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset + (0, self.pos, self.length)[whence]
        if target < 0:
            raise OSError("seek before the start of the chunk")
        self.pos = target
        return target

    def read(self, size: int = -1) -> bytes:
        size = self.length - self.pos if size is None or size < 0 else min(size, self.length - self.pos)
        if size <= 0:
            return b""
        self.handle.seek(self.start + self.pos)
        data = self.handle.read(size)
        self.pos += len(data)
        return data


def chunk_ref(folder: Path, tensor: DcpTensor, chunk: DcpChunk) -> StridedRef:
    """The lazy handle to one chunk's values: its torch.save zip's data.pkl read through the restricted
    unpickler, its claims checked against the metadata and the zip, its storage located by byte range."""
    path = folder / chunk.file
    where = f"{path}: {tensor.fqn[:80]}"
    with open_regular(path, str(path)) as handle:
        window = _Window(handle, chunk.start, chunk.length)
        if window.read(4) != b"PK\x03\x04":
            raise SourceError(f"{where}: its bytes at {chunk.start} are not a torch.save archive (a DCP checkpoint "
                              "written in another serialization format?)")
        check_zip_claims(path, window)
        try:
            with zipfile.ZipFile(window) as archive:
                members = {info.filename: info for info in archive.infolist()}
                pickles = [name for name in members if re.fullmatch(r"[^/]+/data\.pkl", name)]
                if len(pickles) != 1:
                    raise SourceError(f"{where}: its chunk is a zip, but not one written by torch.save")
                prefix = pickles[0].rpartition("/")[0]
                if members[pickles[0]].file_size > _MAX_ITEM_PICKLE:
                    raise SourceError(f"{where}: its chunk's data.pkl is {members[pickles[0]].file_size} bytes, "
                                      "too large for one tensor")
                pickled = archive.read(members[pickles[0]])
                order = members.get(f"{prefix}/byteorder")
                byteorder = "little" if order is None else _byteorder(where, order, archive)
        except SourceError:
            raise
        except Exception as error:  # zipfile raises BadZipFile, NotImplementedError, ValueError, OSError…
            raise SourceError(f"{where}: its chunk is not a readable zip archive ({error_phrase(error)})") from None
        saved = _unpickle(where, pickled)
        check_claims(path, tensor.fqn[:80], saved)
        if tuple(saved.size) != chunk.sizes or saved.dtype != tensor.dtype:
            raise SourceError(f"{where}: its chunk holds a {saved.dtype} tensor of size {list(saved.size)}, "
                              f"the metadata says {tensor.dtype} {list(chunk.sizes)}")
        info = members.get(f"{prefix}/data/{saved.storage.key}")
        if info is None or info.compress_type != zipfile.ZIP_STORED:
            raise SourceError(f"{where}: its chunk's storage is missing or compressed")
        data_start = _data_start(where, window, info)
    if data_start + info.file_size > chunk.length:
        raise SourceError(f"{where}: its chunk's storage runs past the chunk's bytes")
    itemsize = DTYPES[tensor.dtype][0]
    storage = saved.storage
    elements = storage.numel // itemsize if storage.dtype == "uint8" and tensor.dtype != "uint8" else storage.numel
    ref = StridedRef(FileRange(path, chunk.start + data_start, info.file_size), tensor.dtype, chunk.sizes,
                     tuple(saved.stride), saved.offset, elements, byteorder)
    if ref.numel and (saved.offset + ref.span() > elements or elements * itemsize > info.file_size):
        raise SourceError(f"{where}: tensor runs past the end of its storage")
    return ref


def _unpickle(where: str, data: bytes) -> SavedTensor:
    """A chunk's data.pkl, which torch.save wrote for one tensor, through the pre-scan and the allowlist."""
    try:
        _, cost = pickle_scan.scan(data)
        saved = WeightsUnpickler(data, pickle_scan.MAX_MEMORY - cost).load()
    except pickle_scan.PickleRefused as refused:
        raise SourceError(f"{where}: its chunk's data.pkl {refused}") from None
    except UnsafeGlobal as refused:
        raise SourceError(f"{where}: refused: its chunk's pickle names the global "
                          f"{f'{refused.module}.{refused.name}'[:120]!r} (loading it could run code)") from None
    except Exception as error:  # what the allowlisted callables raise on hostile input
        raise SourceError(f"{where}: its chunk's data.pkl is not a valid torch pickle "
                          f"({error_phrase(error)})") from None
    if not isinstance(saved, SavedTensor):
        raise SourceError(f"{where}: its chunk holds something other than one tensor")
    return saved


def _byteorder(where: str, info: zipfile.ZipInfo, archive: zipfile.ZipFile) -> str:
    """The chunk's `byteorder` record, as torch_zip reads it: little or big, nothing else."""
    order = archive.read(info).decode("ascii", "replace").strip() if info.file_size <= 16 else "?"
    if order not in ("little", "big"):
        raise SourceError(f"{where}: its chunk's byteorder record is neither little nor big")
    return order


def _data_start(where: str, window: _Window, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin in the window: after its local header, name and extra field."""
    window.seek(info.header_offset)
    header = window.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise SourceError(f"{where}: corrupt zip entry {info.filename[:80]} in its chunk")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length
