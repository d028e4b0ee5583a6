"""Read legacy (pre-1.6, non-zip) `torch.save` files without torch: names, shapes and storage offsets.

The format is five pickles in a row (magic number, protocol version, system info, the object, the
sorted storage keys), then each storage in key order as an int64 element count and its raw bytes.
torch.load reads every storage into memory to list a state_dict (a 1 GiB file took 1.25 GB); here the
object's pickle goes through torch_zip's restricted unpickler (the same allowlist, so no code runs) and
the storage table is walked by seeking from one count to the next: listing reads a few KB whatever
the file's size, and `--stats` reads byte ranges a chunk at a time, as for a zip archive.
"""

from __future__ import annotations

import mmap
import pickle
import struct
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..safe_io import FileRange, open_regular
from ..weights.tensors import StridedRef
from . import pickle_scan
from .flat import Flat
from .torch_pickle import (
    ITEMSIZE,
    MAX_PICKLE_BYTES,
    QUANTIZED_CODES,
    UnsafeGlobal,
    WeightsUnpickler,
    error_phrase,
    SavedStorage,
    check_claims,
)
from .torch_zip import unpickled_entries

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: The small pickles before the object (magic number, protocol, system info): torch's are ~200 bytes.
_MAX_HEADER_PICKLE = 64 * 1024


class NotLegacy(Exception):
    """The file is a pickle, but not one torch.save wrote in its legacy format."""


class _LegacyUnpickler(WeightsUnpickler):
    """torch_zip's allowlist; a legacy storage record has a sixth field, a view of another storage, which
    torch has not written since 0.4 (storages are no longer views) and is refused."""

    def persistent_load(self, pid: Any) -> SavedStorage:
        if isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage":
            if pid[5] is not None:
                raise pickle.UnpicklingError("a storage that is a view of another (torch < 0.4)")
            pid = pid[:5]
        return super().persistent_load(pid)


def read_legacy(path: Path, safe_globals: frozenset[str] = frozenset()) -> Flat:
    """A legacy state_dict or checkpoint's entries. Raises NotLegacy for another pickle and UnsafeGlobal
    for a global outside the allowlist (as torch_zip does), SourceError for anything malformed;
    `safe_globals` (the config's) are read as inert records."""
    try:
        with open_regular(path, str(path)) as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(path, data, safe_globals)
    except (OSError, ValueError) as error:  # mmap of an empty or vanished file
        raise SourceError(f"{path}: cannot read: {error_phrase(error)}") from None


def _read(path: Path, data: mmap.mmap, safe_globals: frozenset[str]) -> Flat:
    pos = 0
    header = []
    for _ in range(3):
        value, pos = _small_pickle(path, data, pos)
        header.append(value)
        if len(header) == 1 and header[0] != MAGIC_NUMBER:
            raise NotLegacy
    if header[1] != PROTOCOL_VERSION or not isinstance(header[2], dict):
        raise SourceError(f"{path}: a legacy torch.save file of an unknown protocol ({error_phrase(header[1])})")
    if header[2].get("little_endian") is not True:
        raise SourceError(f"{path}: a big-endian legacy torch.save file; fancli reads little-endian ones")
    obj, storages, pos = _object(path, data, pos, safe_globals)
    keys, pos = _small_pickle(path, data, pos, limit=MAX_PICKLE_BYTES)
    sources = _storage_table(path, data, pos, keys, storages)
    return unpickled_entries(path, obj, lambda key, tensor: _tensor_ref(path, key, tensor, sources), "torch-pickle")


def _scan(path: Path, data: mmap.mmap, pos: int, limit: int) -> tuple[int, int]:
    """Where the pickle at `pos` ends and its memory estimate; refused if it would cost too much."""
    try:
        end, cost = pickle_scan.scan(data, pos)
    except pickle_scan.TooCostly as refused:
        raise SourceError(f"{path}: its pickle {refused}") from None
    except pickle_scan.PickleRefused as refused:
        raise SourceError(f"{path}: not a valid torch.save file ({refused})") from None
    if end - pos > limit:
        raise SourceError(f"{path}: a pickle of {end - pos} bytes, too large for weights metadata")
    return end, cost


def _small_pickle(path: Path, data: mmap.mmap, pos: int, limit: int = _MAX_HEADER_PICKLE) -> tuple[Any, int]:
    """One of the plain pickles around the object (numbers, a dict, a list of keys), through the allowlist."""
    end, cost = _scan(path, data, pos, limit)
    try:
        return WeightsUnpickler(data[pos:end], pickle_scan.MAX_MEMORY - cost).load(), end
    except UnsafeGlobal:
        raise
    except Exception as error:  # whatever a hostile pickle makes the allowlisted callables raise
        raise SourceError(f"{path}: not a valid torch.save file ({error_phrase(error)})") from None


def _object(path: Path, data: mmap.mmap, pos: int,
            safe_globals: frozenset[str]) -> tuple[Any, dict[str, SavedStorage], int]:
    """The saved object, with placeholders for its tensors and the storages they name."""
    end, cost = _scan(path, data, pos, MAX_PICKLE_BYTES)
    unpickler = _LegacyUnpickler(data[pos:end], pickle_scan.MAX_MEMORY - cost, safe_globals)
    try:
        return unpickler.load(), unpickler.storages, end
    except UnsafeGlobal:
        raise
    except Exception as error:  # the allowlisted callables, given what a hostile pickle passes, raise anything
        raise SourceError(f"{path}: not a valid torch pickle ({error_phrase(error)})") from None


def _storage_table(path: Path, data: mmap.mmap, pos: int, keys: Any,
                   storages: dict[str, SavedStorage]) -> dict[str, FileRange]:
    """Where each storage's bytes lie: an int64 element count, then the bytes, in the order of `keys`."""
    if not isinstance(keys, list) or not all(isinstance(key, (str, int)) for key in keys):
        raise SourceError(f"{path}: its storage keys are not a list of names")
    sources: dict[str, FileRange] = {}
    for key in map(str, keys):
        storage = storages.get(key)
        if storage is None:
            raise SourceError(f"{path}: storage {key[:40]!r} is listed but no tensor names it")
        if pos + 8 > len(data):
            raise SourceError(f"{path}: truncated before storage {key[:40]!r}")
        (numel,) = struct.unpack_from("<q", data, pos)
        if storage.dtype not in ITEMSIZE:
            raise SourceError(f"{path}: storage {key[:40]!r}: unsupported dtype {storage.dtype!r}")
        nbytes = numel * ITEMSIZE[storage.dtype]
        if numel < 0 or pos + 8 + nbytes > len(data):
            raise SourceError(f"{path}: storage {key[:40]!r} claims {numel} elements, past the end of the file")
        sources[key] = FileRange(path, pos + 8, nbytes)
        pos += 8 + nbytes
    return sources


def _tensor_ref(path: Path, key: str, tensor: Any, sources: dict[str, FileRange]) -> StridedRef:
    """Check the pickle's claims against the storage table and make a lazy handle (as TorchZip.tensor_ref)."""
    check_claims(path, key, tensor)
    storage, dtype = tensor.storage, tensor.dtype
    source = sources.get(storage.key)
    if source is None:
        raise SourceError(f"{path}: {key}: storage {storage.key} is missing from the file")
    itemsize = ITEMSIZE[dtype]
    elements = source.nbytes // itemsize
    ref = StridedRef(source, QUANTIZED_CODES.get(dtype, dtype), tuple(tensor.size), tuple(tensor.stride), tensor.offset, elements)
    if ref.numel and tensor.offset + ref.span() > elements:
        raise SourceError(f"{path}: {key}: tensor runs past the end of its storage")
    return ref
