"""The allow-list unpickler of `torch.save` pickles, and the inert records it builds.

torch's pickles name typed storages and tensor rebuild functions; this unpickler knows exactly the globals
torch writes for weights (dense, quantized, complex and sparse tensors) and refuses every other one, so a
file cannot run code. Shared by the zip, legacy and TorchScript readers.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import pickle
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SourceError
from ..records import record
from ..weights.dtypes import DTYPES
from . import pickle_scan

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a state_dict's data.pkl is ~120 bytes a tensor
MAX_DIMS = 64  # no tensor has more; a pickle claiming more only makes shape arithmetic slow

#: torch's typed storage classes and the dtype of their elements.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    # sub-byte quantized storages: named so that a file holding one is refused for its dtype, not as code
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}
#: Where torch.save names the storage of a dtype with no typed storage class (FP8, uint16…): bytes, the
#: tensor's dtype given beside it (torch's weights-only unpickler allows it under this name).
UNTYPED_STORAGE = ("torch.storage", "UntypedStorage")
#: Bytes per element of every dtype a torch.save tensor may have here: those `dtypes.DTYPES` decodes, plus
#: complex (listed, never decoded: a real init's std says nothing of complex values) and quantized codes.
ITEMSIZE = {**{name: size for name, (size, _) in DTYPES.items()}, "complex64": 8, "complex128": 16,
            "qint8": 1, "quint8": 1, "qint32": 4}
#: Quantized dtypes and the integer dtype their codes are stored as (`q` in `(q - zero_point) * scale`).
QUANTIZED_CODES = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}
#: The quantization schemes `torch._utils._rebuild_qtensor` rebuilds (torch refuses every other one too).
QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")
#: Sparse layouts `torch._utils._rebuild_sparse_tensor` rebuilds, by the name `_get_layout` is given.
SPARSE_LAYOUTS = ("torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr", "torch.sparse_bsc")
_TORCH_DTYPES = set(ITEMSIZE) | {"quint4x2", "quint2x4"}


class UnsafeGlobal(Exception):
    """The pickle names a global outside the weights allowlist: unpickling it could run code."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _Sealed:
    """Refuses the BUILD opcode: a pickle must not rewrite an object after the checks that made it."""

    def __setstate__(self, _state: Any) -> None:
        noun = getattr(type(self), "noun", type(self).__name__.lstrip("_"))
        raise pickle.UnpicklingError(f"the pickle sets the state of a {noun}")


@dataclass(frozen=True)
class _StorageType(_Sealed):
    dtype: str


@dataclass(frozen=True)
class _Name(_Sealed):
    """A torch constant a pickle names and fancli only compares: a qscheme or a sparse layout."""

    name: str


@record(eq=False)  # built per tensor (20,000 in a state_dict): a dataclass's __init__ cost twice as much
class SavedStorage(_Sealed):
    """A storage a pickle names: its key in the file, its dtype and its size."""

    noun: ClassVar[str] = "Storage"  # what `checkpoint.describe` calls it
    key: str
    dtype: str
    numel: int  # elements of `dtype` (bytes for an untyped storage)


@contextlib.contextmanager
def paused_gc() -> Any:
    """The cyclic garbage collector off while a pickle's objects are built and the model is made of them,
    for library callers (the CLI's main() runs without it): it would walk all of them again and again
    (unpickling 20,000 tensors in a fresh process: 135 -> 90 ms without it). Nothing is collectable
    meanwhile (the unpickler's memo holds every object), and what a pickle builds is bounded by
    pickle_scan's estimate whether collected or not."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def error_phrase(error: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    text = " ".join(str(error).split())[:80]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@record(eq=False)  # hashed by identity: a pickle may use them as keys; built per tensor, as SavedStorage
class SavedTensor(_Sealed):
    """A tensor as the pickle describes it; validated into a StridedRef once its storage is known."""

    noun: ClassVar[str] = "Tensor"  # what `checkpoint.describe` calls it

    storage: SavedStorage
    dtype: str
    offset: Any
    size: Any
    stride: Any
    #: A quantized tensor's parameters as `_rebuild_qtensor` gets them: (scheme, scale, zero_point) or
    #: (scheme, scales, zero_points, axis) with 1-D tensors of one value per channel; None when not quantized.
    quantizer: Any = None


@dataclass(frozen=True, eq=False)
class SavedSparse(_Sealed):
    """A sparse tensor as `_rebuild_sparse_tensor` gets it: its layout, logical (dense) size, the stored
    values and index tensors (never read), and for COO whether torch recorded it coalesced."""

    noun: ClassVar[str] = "Sparse"  # what `checkpoint.describe` calls it

    layout: str
    size: tuple
    values: SavedTensor
    indices: tuple
    coalesced: Any = None


class Inert:
    """An object of a class named in `safe_globals`, recorded and never built: the arguments it was
    constructed or called with and the state BUILD gives it. Nothing of the named class is imported, so a
    name like `os.system` in the list only makes a record of its arguments."""

    qualified = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":
        record = super().__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified} (not loaded)>"


def _scalar(value: Any, depth: int = 0) -> bool:
    """A value whose hash costs next to nothing: what a set from a weights file may hold (a short tuple
    of such values too; a tuple's hash visits all it holds, every time)."""
    if isinstance(value, int):
        return value.bit_length() <= 64
    if isinstance(value, tuple):
        return depth < 2 and len(value) <= MAX_DIMS and all(_scalar(item, depth + 1) for item in value)
    return value is None or isinstance(value, (str, bytes, float, complex))


class WeightsUnpickler(pickle.Unpickler):
    """Resolves only the globals torch writes for weights; storages become placeholders, never read.

    Every callable a pickle can reach is a method of this instance (a BUILD opcode cannot patch what
    later loads share), checks its arguments' types, and charges what it builds to `allowance`: the
    part of pickle_scan's memory budget the opcodes left, so memo references cannot multiply it.
    """

    CALLS = {
        ("collections", "OrderedDict"): "ordered_dict",
        ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor",
        ("torch._utils", "_rebuild_tensor"): "rebuild_tensor",
        ("torch._utils", "_rebuild_tensor_v3"): "rebuild_tensor_v3",
        ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
        ("torch._utils", "_rebuild_parameter_with_state"): "rebuild_parameter",
        ("torch._tensor", "_rebuild_from_type_v2"): "rebuild_from_type",
        ("torch._utils", "_rebuild_qtensor"): "rebuild_qtensor",
        ("torch._utils", "_rebuild_sparse_tensor"): "rebuild_sparse_tensor",
        ("torch.serialization", "_get_layout"): "layout",
        ("torch", "Size"): "size",
        ("torch", "device"): "device",
        ("builtins", "set"): "set",
        ("builtins", "frozenset"): "frozenset",
        ("builtins", "complex"): "complex",
        ("_codecs", "encode"): "encode",
    }
    CALLS.update({("__builtin__", name): call for (module, name), call in list(CALLS.items())
                  if module == "builtins"})  # protocol 2, torch's, writes Python 2's module name
    NAMES = {("torch.nn.parameter", "Parameter"): "Parameter", ("torch", "Tensor"): "Tensor"}

    def __init__(self, data: bytes, allowance: int = pickle_scan.MAX_MEMORY,
                 safe_globals: frozenset[str] = frozenset()) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, SavedStorage] = {}
        self.tensors: list[SavedTensor] = []  # every tensor built, for `claims_hold`
        self.allowance = allowance
        self.safe_globals = safe_globals  # "module.Name"s the user allows as inert records (config)
        self.inert: dict[str, type[Inert]] = {}

    def load(self) -> Any:
        with paused_gc():
            return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in self.safe_globals:
            return self.inert_class(f"{module}.{name}")
        if (module, name) in self.CALLS:
            return getattr(self, self.CALLS[(module, name)])
        if (module, name) in self.NAMES:
            return self.NAMES[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES or (module, name) == UNTYPED_STORAGE:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return name  # a torch.dtype, as its name
        if module == "torch" and name in QSCHEMES:
            return _Name(name)
        raise UnsafeGlobal(module, name)

    def inert_class(self, qualified: str) -> type[Inert]:
        """A fresh class per allowed name (what NEWOBJ, REDUCE and BUILD use); the name is never imported."""
        if qualified not in self.inert:
            self.charge(1024 + len(qualified))
            self.inert[qualified] = type("Inert", (Inert,), {"qualified": qualified})
        return self.inert[qualified]

    def persistent_load(self, pid: Any) -> SavedStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id (a {type(pid).__name__})")
        _, storage_type, key, _location, numel = pid
        # torch names storages "0", "1"…: a str, which _scalar passes, tested first
        if not (isinstance(storage_type, _StorageType) and is_index(numel)
                and (type(key) is str or isinstance(key, (str, int)) and _scalar(key))):
            raise pickle.UnpicklingError("malformed storage record")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            self.charge(256 + len(key))
            storage = self.storages[key] = SavedStorage(key, storage_type.dtype, numel)
        return storage

    def charge(self, nbytes: int) -> None:
        self.allowance -= nbytes
        if self.allowance < 0:
            raise pickle.UnpicklingError(f"it builds more than {pickle_scan.MAX_MEMORY >> 20} MiB of objects")

    # The callables, as torch's pickles call them.

    def ordered_dict(self, *args: Any) -> collections.OrderedDict:
        if args:  # torch pickles an OrderedDict empty, then sets its items (checked by pickle_scan)
            raise pickle.UnpicklingError("OrderedDict called with arguments")
        return collections.OrderedDict()

    def rebuild_tensor(self, storage: SavedStorage, offset: int, size: Any, stride: Any, *_rest: Any) -> SavedTensor:
        return self.built(SavedTensor(storage, storage.dtype, offset, size, stride))

    def built(self, tensor: SavedTensor) -> SavedTensor:
        self.tensors.append(tensor)
        return tensor

    def rebuild_tensor_v3(self, storage: SavedStorage, offset: int, size: Any, stride: Any, _grad: Any, _hooks: Any,
                          dtype: Any, *_rest: Any) -> SavedTensor:
        if not isinstance(dtype, str):
            raise pickle.UnpicklingError("a tensor's dtype is not a torch dtype")
        return self.built(SavedTensor(storage, dtype, offset, size, stride))

    def rebuild_qtensor(self, storage: SavedStorage, offset: int, size: Any, stride: Any, params: Any,
                        *_rest: Any) -> SavedTensor:
        """A quantized tensor: its codes' storage and the scheme's parameters, type-checked here (torch checks
        them when it rebuilds), the per-channel ones against the size when the tensor is read."""
        if not (isinstance(params, tuple) and params and isinstance(params[0], _Name)):
            raise pickle.UnpicklingError("quantizer parameters without a qscheme")
        number = (lambda v: type(v) in (int, float) and _scalar(v))
        if params[0].name == "per_tensor_affine":
            ok = len(params) == 3 and number(params[1]) and type(params[2]) is int and _scalar(params[2])
        else:
            ok = len(params) == 4 and all(isinstance(p, SavedTensor) for p in params[1:3]) and is_index(params[3])
        if not ok:
            raise pickle.UnpicklingError(f"{params[0].name} parameters of the wrong types")
        return self.built(SavedTensor(storage, storage.dtype, offset, size, stride, params))

    def layout(self, name: Any) -> _Name:
        if name not in SPARSE_LAYOUTS:
            raise pickle.UnpicklingError("a layout other than torch's sparse ones")
        return _Name(name)

    def rebuild_sparse_tensor(self, layout: Any, data: Any) -> SavedSparse:
        """COO: (indices, values, size[, is_coalesced]); CSR/CSC/BSR/BSC: (compressed, plain, values, size)."""
        if not (isinstance(layout, _Name) and layout.name in SPARSE_LAYOUTS and isinstance(data, tuple)):
            raise pickle.UnpicklingError("a sparse tensor of an unknown layout")
        coalesced = None
        if layout.name == "torch.sparse_coo" and len(data) in (3, 4):
            indices, values, size = (data[0],), data[1], data[2]
            coalesced = data[3] if len(data) == 4 else None
        elif layout.name != "torch.sparse_coo" and len(data) == 4:
            indices, values, size = data[:2], data[2], data[3]
        else:
            raise pickle.UnpicklingError(f"a {layout.name} tensor of {len(data)} parts")
        if not (all(isinstance(t, SavedTensor) for t in (*indices, values)) and is_shape(size)
                and coalesced in (None, True, False)):
            raise pickle.UnpicklingError(f"a {layout.name} tensor of parts of the wrong types")
        return SavedSparse(layout.name.removeprefix("torch."), tuple(size), values, indices, coalesced)

    def rebuild_parameter(self, data: Any, *_rest: Any) -> Any:
        return data

    def rebuild_from_type(self, func: Any, _new_type: Any, args: tuple, _state: Any) -> Any:
        return func(*args)  # func is one of these methods; the subclass state is not needed

    def size(self, dims: Any = ()) -> tuple:
        if not (isinstance(dims, (tuple, list)) and len(dims) <= MAX_DIMS and all(map(is_index, dims))):
            raise pickle.UnpicklingError("torch.Size of something other than a few sizes")
        return tuple(dims)

    def device(self, kind: Any, index: Any = None) -> str:
        if not (isinstance(kind, str) and len(kind) <= 64 and (index is None or is_index(index))):
            raise pickle.UnpicklingError("torch.device of something other than a device name")
        return kind if index is None else f"{kind}:{index}"

    def set(self, items: Any = ()) -> set:
        return set(self._items(items))

    def frozenset(self, items: Any = ()) -> frozenset:
        return frozenset(self._items(items))

    def _items(self, items: Any) -> Any:
        if not (isinstance(items, (list, tuple)) and all(map(_scalar, items))):
            raise pickle.UnpicklingError("a set of something other than numbers, strings and short tuples")
        self.charge(128 * len(items))
        return items

    def complex(self, real: Any = 0.0, imag: Any = 0.0) -> complex:
        if not all(isinstance(part, (int, float)) and _scalar(part) for part in (real, imag)):
            raise pickle.UnpicklingError("complex of something other than two numbers")
        return complex(real, imag)

    def encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        """How protocol 2 pickles bytes: `_codecs.encode(text, "latin1")`; no other codec (some are slow)."""
        if not (isinstance(text, str) and isinstance(encoding, str)
                and encoding.lower().replace("_", "-") in ("latin1", "latin-1", "iso-8859-1", "l1")):
            raise pickle.UnpicklingError("_codecs.encode of something other than latin-1 text")
        self.charge(64 + len(text))
        return text.encode("latin-1")


def is_index(value: Any) -> bool:
    """A size, stride, offset or element count: an int64 that is not negative, as torch keeps them."""
    return type(value) is int and 0 <= value < 1 << 63


def is_shape(value: Any) -> bool:
    """A size or stride: at most MAX_DIMS `is_index` values (checked in C: a pickle holds two per tensor)."""
    return isinstance(value, (tuple, list)) and len(value) <= MAX_DIMS and (
        not value or set(map(type, value)) == _INT and 0 <= min(value) and max(value) < 1 << 63)


_INT = {int}


def check_claims(path: Path, key: str, tensor: SavedTensor) -> None:
    """What a pickle claims of a tensor that can be checked before its storage is found: a storage record,
    a dtype fancli reads, and a size, stride and offset that are lists of counts."""
    if not isinstance(tensor.storage, SavedStorage):
        raise SourceError(f"{path}: {key}: its storage is not a storage record")
    if tensor.dtype not in ITEMSIZE:
        raise SourceError(f"{path}: {key}: unsupported dtype {str(tensor.dtype)[:40]!r}")
    if not (is_shape(tensor.size) and is_shape(tensor.stride) and len(tensor.size) == len(tensor.stride)
            and is_index(tensor.offset)):
        raise SourceError(f"{path}: {key}: malformed size, stride or offset")


def claims_hold(tensors: list[SavedTensor]) -> bool:
    """Whether every tensor's claims pass `check_claims`, checked list by list in C (20,000 tensors of a
    state_dict: a C pass a field, not two calls a tensor); False where any may not (then each is checked on its
    own, whose error names it). Stricter than `check_claims` only in the types it takes (exactly a tuple or a
    list, a SavedStorage)."""
    try:
        storages, dtypes, offsets, sizes, strides = (list(map(attrgetter(name), tensors)) for name in
                                                      ("storage", "dtype", "offset", "size", "stride"))
        lengths = list(map(len, sizes))
        if (set(map(type, storages)) - {SavedStorage} or not ITEMSIZE.keys() >= set(dtypes)
                or set(map(type, sizes)) - _SEQUENCES or set(map(type, strides)) - _SEQUENCES
                or lengths != list(map(len, strides)) or max(lengths, default=0) > MAX_DIMS):
            return False
        values = [*offsets, *chain.from_iterable(sizes), *chain.from_iterable(strides)]
        return not (set(map(type, values)) - _INT) and (not values or 0 <= min(values) and max(values) < 1 << 63)
    except TypeError:  # an unhashable dtype, a size with no length: each is checked on its own
        return False


_SEQUENCES = {tuple, list}


def untrusted_message(path: Path, global_name: str) -> str:
    """Why a file is refused without --trust, in one line."""
    return (
        f"{path}: loading it would run code from the file: its pickle names the global {global_name!r}, "
        "which a weights file does not need (a pickled model or custom class). "
        "Pass --trust to unpickle it with torch.load if you trust its source"
    )
