"""Read `torch.save` zip files without torch: names, shapes, dtypes and storage locations.

A torch.save archive is a zip of `<name>/data.pkl` (a pickle that names typed storages and tensor
rebuild functions) and one member `<name>/data/<key>` per storage. The allow-list unpickler
(`torch_pickle`) knows exactly the globals torch writes for weights and refuses every other one, so the
file cannot run code; no storage is read until `--stats` asks. (llama.cpp's converter reads PyTorch files lazily the same way.)
"""

from __future__ import annotations

import functools
import math
import operator
import re
import struct
import zipfile
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Callable

from ..errors import SourceError
from ..safe_io import open_regular
from ..weights.tensors import StridedRef, strided_ref
from . import pickle_scan
from .checkpoint import NoStateDict, find_state_dict
from .flat import Flat
from .torch_pickle import (
    ITEMSIZE,
    MAX_PICKLE_BYTES,
    QUANTIZED_CODES,
    UnsafeGlobal,
    WeightsUnpickler,
    error_phrase,
    SavedSparse,
    SavedTensor,
    check_claims,
    claims_hold,
    paused_gc,
)


class ZipMember:
    """A stored (uncompressed) zip member read by byte range straight from the file."""

    def __init__(self, path: Path, info: zipfile.ZipInfo) -> None:
        self.path, self.info = path, info
        self._data_start: int | None = None

    def _start(self, handle) -> int:
        if self._data_start is None:
            handle.seek(self.info.header_offset)
            header = handle.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise SourceError(f"{self.path}: corrupt zip entry {self.info.filename}")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            self._data_start = self.info.header_offset + 30 + name_length + extra_length
        return self._data_start

    def read(self, start: int, size: int) -> bytes:
        if start < 0 or start + size > self.info.file_size:
            raise SourceError(f"{self.path}: {self.info.filename} is shorter than its tensors need")
        try:
            data = self._read(start, size)
        except SourceError:
            raise
        except Exception as error:  # zipfile and its codecs raise many types for a corrupt member
            raise SourceError(f"{self.path}: cannot read {self.info.filename} ({error_phrase(error)})") from None
        if len(data) != size:
            raise SourceError(f"{self.path}: {self.info.filename} is truncated")
        return data

    def locate(self, start: int, size: int) -> tuple[Path, int] | None:
        """Where bytes [start, start + size) of a stored member lie: the file and its absolute offset, for
        `--stats` to map rather than copy (None for a compressed member: read it)."""
        if self.info.compress_type != zipfile.ZIP_STORED:
            return None
        if start < 0 or start + size > self.info.file_size:
            raise SourceError(f"{self.path}: {self.info.filename} is shorter than its tensors need")
        try:
            if self._data_start is None:
                with open_regular(self.path, str(self.path)) as handle:
                    self._start(handle)
            return self.path, self._data_start + start
        except OSError as error:
            raise SourceError(f"{self.path}: cannot read {self.info.filename} ({error_phrase(error)})") from None

    def _read(self, start: int, size: int) -> bytes:
        if self.info.compress_type != zipfile.ZIP_STORED:
            if self.info.file_size > MAX_PICKLE_BYTES:  # each chunk would decompress all before it again
                raise SourceError(f"{self.path}: {self.info.filename} is a compressed storage of "
                                  f"{self.info.file_size} bytes; torch.save writes storages uncompressed, and "
                                  f"fancli reads compressed ones only up to {MAX_PICKLE_BYTES >> 20} MiB")
            with open_regular(self.path, str(self.path)) as handle, zipfile.ZipFile(handle) as archive:
                with archive.open(self.info) as member:
                    member.seek(start)
                    return member.read(size)
        with open_regular(self.path, str(self.path)) as handle:
            handle.seek(self._start(handle) + start)
            return handle.read(size)


class TorchZip:
    """An opened torch.save archive: its record prefix and members."""

    def __init__(self, path: Path) -> None:
        from .zip_bounds import check_zip_claims

        check_zip_claims(path)  # before zipfile reads a directory of the size the end record claims
        self.path = path
        self._early: dict[str, bytes | Exception] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                self.members = {info.filename: info for info in archive.infolist()}
                pickles = [name for name in compress(self.members, map(str.endswith, self.members, repeat("/data.pkl")))
                           if re.fullmatch(r"[^/]+/data\.pkl", name)]  # the cheap test first, in C
                self.prefix = pickles[0].rsplit("/", 1)[0] if len(pickles) == 1 else None
                self._read_early(archive)
        except Exception as error:  # zipfile raises BadZipFile, NotImplementedError, ValueError, OSError…
            raise SourceError(f"{path}: not a readable zip archive ({error_phrase(error)})") from None
        self._byteorder: str | None = None
        self._claims_hold: set[SavedTensor] = set()  # tensors the unpickler built, their claims checked at once

    def _read_early(self, archive: zipfile.ZipFile) -> None:
        """data.pkl and the byteorder record, read while the directory is open: opening the zip again for
        each re-reads its central directory (20,000 members: a third of a 20,000-layer inspect). Within
        the limits `read_member` and `byteorder` check; a failure is kept and raised where they read."""
        for name, limit in ((f"{self.prefix}/data.pkl", MAX_PICKLE_BYTES), (f"{self.prefix}/byteorder", 16)):
            info = self.members.get(name) if self.prefix else None
            if info is None or info.file_size > limit:
                continue
            try:
                self._early[name] = archive.read(info)
            except Exception as error:  # a corrupt member: BadZipFile (CRC), zlib.error, NotImplementedError…
                self._early[name] = error

    def _member(self, info: zipfile.ZipInfo) -> bytes:
        """A member's bytes: read early, or from the archive opened again; zipfile's errors raised as are."""
        found = self._early.get(info.filename)
        if isinstance(found, Exception):
            raise found
        if found is not None:
            return found
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(info)

    @property
    def byteorder(self) -> str:
        """The storages' byte order from the `byteorder` member torch.save writes ("little" when absent,
        as in files from before torch 1.13); anything else is refused rather than decoded wrongly."""
        if self._byteorder is None:
            info = self.members.get(f"{self.prefix}/byteorder")
            order = "little"
            if info is not None:
                if info.file_size > 16:
                    raise SourceError(f"{self.path}: its byteorder record is {info.file_size} bytes, not little or big")
                try:
                    order = self._member(info).decode("ascii").strip()
                except Exception as error:  # a corrupt member, or bytes that are no byte order
                    raise SourceError(f"{self.path}: cannot read its byteorder record "
                                      f"({error_phrase(error)})") from None
                if order not in ("little", "big"):
                    raise SourceError(f"{self.path}: byteorder {order[:16]!r} is neither little nor big")
            self._byteorder = order
        return self._byteorder

    @functools.cached_property
    def kind(self) -> str:
        """torch-zip (torch.save), torchscript, torch-export, or zip (something else); looked up once."""
        names = self.members  # tested in C (20,000 names: 3 ms through a generator); the joined names hold
        # the word where a name does, as it has no newline
        exported = "serialized_exported_program" in "\n".join(names)
        if exported or any(map(str.endswith, names, repeat("/archive_format"))):
            return "torch-export"
        code = f"{self.prefix}/code/"
        if self.prefix and any(map(str.startswith, names, repeat(code))):
            return "torchscript"
        return "torch-zip" if self.prefix else "zip"

    def read_member(self, name: str, limit: int, what: str) -> bytes:
        """A small member (a pickle, code, JSON) whole; refused by its stated size before it is inflated."""
        info = self.members[name]
        short = name.rpartition("/")[2]
        if info.file_size > limit:
            raise SourceError(f"{self.path}: {short} is {info.file_size} bytes, too large for {what}")
        try:
            return self._member(info)
        except Exception as error:  # a corrupt member: BadZipFile (CRC), zlib.error, NotImplementedError…
            raise SourceError(f"{self.path}: cannot read {short} ({error_phrase(error)})") from None

    def unpickle(self, unpickler: type[WeightsUnpickler] = WeightsUnpickler, **options: Any) -> Any:
        """data.pkl through the pre-scan and the allow-list `unpickler` (given `options`, e.g. the config's
        safe_globals): nothing in it can run code."""
        data = self.read_member(f"{self.prefix}/data.pkl", MAX_PICKLE_BYTES, "weights metadata")
        try:
            _, cost = pickle_scan.scan(data)
        except pickle_scan.PickleRefused as refused:
            raise SourceError(f"{self.path}: data.pkl {refused}") from None
        try:
            reader = unpickler(data, pickle_scan.MAX_MEMORY - cost, **options)
            found = reader.load()
            self._claims_hold = set(reader.tensors) if claims_hold(reader.tensors) else set()
            return found
        except UnsafeGlobal:
            raise
        except Exception as error:  # the allowlisted callables, given what a hostile pickle passes, raise anything
            raise SourceError(f"{self.path}: data.pkl is not a valid torch pickle ({error_phrase(error)})") from None

    def tensor_ref(self, key: str, tensor: SavedTensor) -> StridedRef:
        """Check the pickle's claims (`check_claims`, unless `claims_hold` found them all good at once) against
        the archive and make a lazy handle."""
        if tensor not in self._claims_hold:
            check_claims(self.path, key, tensor)
        storage, dtype = tensor.storage, tensor.dtype
        member = self.members.get(f"{self.prefix}/data/{storage.key}")
        if member is None:
            raise SourceError(f"{self.path}: {key}: storage {storage.key} is missing from the archive")
        itemsize = ITEMSIZE[dtype]
        elements = storage.numel // itemsize if storage.dtype == "uint8" and dtype != "uint8" else storage.numel
        shape, stride, offset = tuple(tensor.size), tuple(tensor.stride), tensor.offset
        # StridedRef's numel and span() (1 + the sum of (size - 1) * stride), in C: a fifth of this method
        if math.prod(shape) and (offset + 1 + sum(map(operator.mul, shape, stride)) - sum(stride) > elements
                                 or elements * itemsize > member.file_size):
            raise SourceError(f"{self.path}: {key}: tensor runs past the end of its storage")
        return strided_ref(ZipMember(self.path, member), QUANTIZED_CODES.get(dtype, dtype), shape, stride, offset,
                           elements, self.byteorder)


def read_state_dict(path: Path, archive: TorchZip | None = None, safe_globals: frozenset[str] = frozenset()) -> Flat:
    """A state_dict or wrapped checkpoint's entries; raises UnsafeGlobal for anything else. `safe_globals`
    (the config's) are read as inert records."""
    archive = archive or TorchZip(path)
    return unpickled_entries(path, archive.unpickle(safe_globals=safe_globals), archive.tensor_ref, "torch-zip")


def unpickled_entries(path: Path, obj: Any, tensor_ref: Callable[[str, SavedTensor], StridedRef], format: str) -> Flat:
    """The entries of what the restricted unpickler built (a state_dict, or a checkpoint holding one); each
    tensor's claims are checked by `tensor_ref` against the file before they are used."""
    with paused_gc():  # a few objects a tensor, none of them garbage: collections would only walk them
        return _unpickled_entries(path, obj, tensor_ref, format)


def _unpickled_entries(path: Path, obj: Any, tensor_ref: Callable[[str, SavedTensor], StridedRef], format: str) -> Flat:
    try:
        mapping, notes = find_state_dict(obj, lambda v: isinstance(v, (SavedTensor, SavedSparse)))
    except NoStateDict as error:
        raise SourceError(f"{path}: holds {error}, not a state_dict or model") from None
    from .typed_tensors import dense_entry, quantized_entry, sparse_entry

    entries = []
    for key, tensor in mapping.items():
        if isinstance(tensor, SavedSparse):
            entries.append(sparse_entry(path, str(key), tensor, tensor_ref))
            continue
        ref = tensor_ref(str(key), tensor)
        identity = (tensor.storage.key, tensor.offset, ref.shape, ref.stride)
        if tensor.quantizer is not None:
            entries.append(quantized_entry(path, str(key), tensor, ref, identity, tensor_ref))
        else:
            entries.append(dense_entry(str(key), tensor, ref, identity))
    return Flat(str(path), format, tuple(entries), tuple(notes))
