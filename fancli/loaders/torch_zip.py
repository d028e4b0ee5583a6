"""Read `torch.save` zip files without torch: names, shapes, dtypes and storage locations.

A torch.save archive is a zip of `<name>/data.pkl` (a pickle that names typed storages and tensor
rebuild functions) and one member `<name>/data/<key>` per storage. The unpickler below knows exactly
the globals torch writes for weights and refuses every other one, so the file cannot run code; no
storage is read until `--stats` asks. (llama.cpp's converter reads PyTorch files lazily the same way.)
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..layer import Model
from ..tensors import DTYPES, StridedRef
from .infer import Entry, NoStateDict, find_state_dict, layers_from_entries

MAX_PICKLE_BYTES = 256 * 1024 * 1024

#: torch's typed storage classes and the dtype of their elements.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8",
}
_TORCH_DTYPES = set(DTYPES)


class UnsafeGlobal(Exception):
    """The pickle names a global outside the weights allowlist: unpickling it could run code."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int  # elements of `dtype` (bytes for an untyped storage)


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
        if self.info.compress_type != zipfile.ZIP_STORED:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.info) as member:
                member.seek(start)
                return member.read(size)
        with open(self.path, "rb") as handle:
            handle.seek(self._start(handle) + start)
            data = handle.read(size)
        if len(data) != size:
            raise SourceError(f"{self.path}: {self.info.filename} is truncated")
        return data


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_rest: Any) -> "_Tensor":
    return _Tensor(storage, storage.dtype, offset, size, stride)


def _rebuild_tensor_v3(storage: _Storage, offset: int, size: Any, stride: Any, _grad: Any, _hooks: Any,
                       dtype: Any, *_rest: Any) -> "_Tensor":
    return _Tensor(storage, str(dtype), offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args)  # func is one of the rebuild functions above; the subclass state is not needed


@dataclass(frozen=True)
class _Tensor:
    """A tensor as the pickle describes it; validated into a StridedRef once its storage is known."""

    storage: _Storage
    dtype: str
    offset: Any
    size: Any
    stride: Any


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): "Parameter",
    ("torch", "Tensor"): "Tensor",
    ("torch", "Size"): tuple,
    ("torch", "device"): str,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode(encoding),
}


class _WeightsUnpickler(pickle.Unpickler):
    """Resolves only the globals torch writes for weights; storages become placeholders, never read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return name  # a torch.dtype, as its name
        raise UnsafeGlobal(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage record")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


class TorchZip:
    """An opened torch.save archive: its record prefix and members."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as archive:
                self.members = {info.filename: info for info in archive.infolist()}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise SourceError(f"{path}: not a readable zip archive ({error})") from None
        pickles = [name for name in self.members if re.fullmatch(r"[^/]+/data\.pkl", name)]
        self.prefix = pickles[0].rsplit("/", 1)[0] if len(pickles) == 1 else None

    @property
    def kind(self) -> str:
        """torch-zip (torch.save), torchscript, torch-export, or zip (something else)."""
        names = self.members
        if any("serialized_exported_program" in n or n.endswith("/archive_format") for n in names):
            return "torch-export"
        if self.prefix and any(n.startswith(f"{self.prefix}/code/") for n in names):
            return "torchscript"
        return "torch-zip" if self.prefix else "zip"

    def unpickle(self) -> Any:
        info = self.members[f"{self.prefix}/data.pkl"]
        if info.file_size > MAX_PICKLE_BYTES:
            raise SourceError(f"{self.path}: data.pkl is {info.file_size} bytes, too large for weights metadata")
        try:
            with zipfile.ZipFile(self.path) as archive:
                data = archive.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise SourceError(f"{self.path}: cannot read data.pkl ({error})") from None
        unpickler = _WeightsUnpickler(data)
        try:
            return unpickler.load()
        except UnsafeGlobal:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                struct.error, UnicodeDecodeError, RecursionError, MemoryError) as error:
            raise SourceError(f"{self.path}: data.pkl is not a valid torch pickle ({type(error).__name__}: "
                              f"{str(error)[:80]})") from None

    def tensor_ref(self, key: str, tensor: _Tensor) -> StridedRef:
        """Check the pickle's claims against the archive and make a lazy handle."""
        storage, dtype = tensor.storage, tensor.dtype
        if dtype not in DTYPES:
            raise SourceError(f"{self.path}: {key}: unsupported dtype {dtype!r}")
        if not (_is_int_tuple(tuple(tensor.size)) and _is_int_tuple(tuple(tensor.stride))
                and len(tuple(tensor.size)) == len(tuple(tensor.stride))
                and isinstance(tensor.offset, int) and tensor.offset >= 0):
            raise SourceError(f"{self.path}: {key}: malformed size, stride or offset")
        member = self.members.get(f"{self.prefix}/data/{storage.key}")
        if member is None:
            raise SourceError(f"{self.path}: {key}: storage {storage.key} is missing from the archive")
        itemsize = DTYPES[dtype][0]
        elements = storage.numel // itemsize if storage.dtype == "uint8" and dtype != "uint8" else storage.numel
        ref = StridedRef(ZipMember(self.path, member), dtype, tuple(tensor.size), tuple(tensor.stride),
                         tensor.offset, elements)
        if ref.numel and (tensor.offset + ref.span() > elements or elements * itemsize > member.file_size):
            raise SourceError(f"{self.path}: {key}: tensor runs past the end of its storage")
        return ref


def read_state_dict(path: Path, archive: TorchZip | None = None) -> Model:
    """A state_dict or wrapped checkpoint as a Model; raises UnsafeGlobal for anything else."""
    archive = archive or TorchZip(path)
    obj = archive.unpickle()
    try:
        mapping, notes = find_state_dict(obj, lambda v: isinstance(v, _Tensor))
    except NoStateDict as error:
        raise SourceError(f"{path}: holds {error}, not a state_dict or model") from None
    entries = []
    for key, tensor in mapping.items():
        ref = archive.tensor_ref(str(key), tensor)
        identity = (tensor.storage.key, tensor.offset, ref.shape, ref.stride)
        entries.append(Entry(str(key), ref.shape, ref.dtype, ref, identity))
    layers = layers_from_entries(entries)
    if not layers:
        raise SourceError(f"{path}: holds no floating-point weights")
    return Model(source=str(path), format="torch-zip", layers=layers, notes=notes)


def untrusted_message(path: Path, global_name: str) -> str:
    """Why a file is refused without --trust, in one line."""
    return (
        f"{path}: loading it would run code from the file: its pickle names the global {global_name!r}, "
        "which a weights file does not need (a pickled model or custom class). "
        "Pass --trust to unpickle it with torch.load if you trust its source"
    )
