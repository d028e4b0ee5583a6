"""Lazy handles to tensor data: loaders describe where a tensor's bytes lie, `--stats` reads them.

Nothing here reads data until `chunks()` is called, and then one bounded chunk at a time, so
statistics over a checkpoint need memory near one chunk, not the model. numpy is imported only then.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from .dtypes import DTYPES

if TYPE_CHECKING:
    import numpy as np

#: FP8 formats: (exponent bits, mantissa bits, exponent bias, NaN/Inf convention). "fn": no Inf, NaN where
#: every exponent and mantissa bit is set; "ieee": exponent all ones is Inf (mantissa 0) or NaN; "fnuz": no
#: Inf and no -0, the code 0x80 is NaN; "e8m0": an exponent only, 2^(e - 127), 0xFF NaN (MX block scales).
FP8 = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}
_FP8_TABLES: dict[str, Any] = {}


def fp8_table(dtype: str) -> "np.ndarray":
    """The float32 value of each of the 256 codes of an FP8 dtype (tested against torch's `.to(float32)`)."""
    table = _FP8_TABLES.get(dtype)
    if table is None:
        import numpy as np

        exponent_bits, mantissa_bits, bias, convention = FP8[dtype]
        codes = np.arange(256, dtype=np.int64)
        if convention == "e8m0":
            values = np.ldexp(1.0, codes - bias)
            values[255] = np.nan
        else:
            sign = np.where(codes >> 7, -1.0, 1.0)
            exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
            mantissa = (codes & ((1 << mantissa_bits) - 1)) / float(1 << mantissa_bits)
            normal = np.ldexp(1.0 + mantissa, exponent - bias)
            subnormal = np.ldexp(mantissa, 1 - bias)
            values = sign * np.where(exponent == 0, subnormal, normal)
            top = exponent == (1 << exponent_bits) - 1
            if convention == "fn":
                values[top & ((codes & ((1 << mantissa_bits) - 1)) == (1 << mantissa_bits) - 1)] = np.nan
            elif convention == "ieee":
                values[top] = np.where(mantissa[top] == 0, sign[top] * np.inf, np.nan)
            else:  # fnuz: the code of -0 is the NaN
                values[0x80] = np.nan
        table = _FP8_TABLES[dtype] = values.astype(np.float32)
    return table

CHUNK_ELEMENTS = 1 << 22  # 4 Mi elements: 16 MiB of float32 per read
#: A strided view may read a stored value this many times (an expanded tensor); more is refused, not looped over.
MAX_REPEATS = 64


class TensorData(Protocol):
    """What `--stats` needs from a loader: the size, and the values in bounded chunks."""

    dtype: str
    shape: tuple[int, ...]

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        """The tensor's values, flattened, as numpy arrays of at most max_elements each; in an order the
        reader chooses (a strided view comes in storage order: statistics do not depend on it)."""
        ...


def decode(raw: bytes | memoryview, dtype: str, byteorder: str = "little") -> "np.ndarray":
    """Bytes to a numpy array of `dtype`; bfloat16 widened to float32 (its top 16 bits).

    `byteorder` "big" reads a file written on a big-endian machine (torch.save records it): read as
    little-endian, 0.049 would come out as 2e37.
    """
    import numpy as np

    code = DTYPES[dtype][1]
    if code == "f8":
        return fp8_table(dtype)[np.frombuffer(raw, dtype=np.uint8)]
    if byteorder == "big":
        code = code.replace("<", ">")
    if code == "bf16":
        halves = np.frombuffer(raw, dtype=">u2" if byteorder == "big" else "<u2")
        return (halves.astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=code)


class ByteSource(Protocol):
    """A file region holding a storage: a zip member or a safetensors byte range."""

    def read(self, start: int, size: int) -> bytes:
        """`size` bytes from `start` (relative to the storage's first byte)."""
        ...


class InMemory:
    """Bytes held in memory (an ONNX initializer stored inline, a `.keras` archive's weights file), read by
    range as a file's are: a ByteSource."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def read(self, start: int, size: int) -> bytes:
        return self.raw[start : start + size]


@functools.lru_cache(maxsize=4096)
def row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A contiguous tensor's strides, in elements; cached, as a checkpoint has a few hundred shapes among
    90,000 tensors."""
    strides: list[int] = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass(frozen=True, slots=True)
class StridedRef:
    """A tensor as a view of a storage: dtype, shape, strides and offset in elements (torch's layout)."""

    source: ByteSource
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in elements
    storage_elements: int  # size of the storage, for bounds checks
    byteorder: str = "little"  # the file's: torch.save records "big" on big-endian machines

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        if self.stride == row_major_strides(self.shape):  # what every safetensors tensor is: no loop
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def span(self) -> int:
        """Elements from the offset to the last one the view touches (0 for an empty tensor)."""
        if self.numel == 0:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        """Whether chunks() yields the values in the tensor's logical (C) order at this chunk size: always,
        but for a permuted view (a transpose) wider than one chunk, which is read in storage order to stay
        bounded. Order-free statistics do not care; row signals (`--infer`) are skipped then."""
        return self.contiguous or self.span() <= max_elements or _keeps_order(self.shape, self.stride)

    def range_chunks(self, start: int, stop: int, max_elements: int = CHUNK_ELEMENTS,
                     buffer: bytearray | None = None) -> Iterator["np.ndarray"]:
        """Values [start, stop) of a contiguous tensor, in logical order, at most max_elements at a time: a
        piece that `stats` reduces on its own (in a worker), so a large tensor is split across cores.

        Where the source can say where its bytes lie in a file (`locate`) and a `buffer` is given (at least
        max_elements × itemsize bytes), the file is opened once for the piece and each chunk read into the
        buffer and yielded as a view of it: the caller is done with a chunk before it asks for the next.
        That spares a fresh 16 MiB allocation per read, whose page faults cost more than the read. (Not a
        memory map: a file cut while mapped kills the process with SIGBUS; a short read is one line.)"""
        if not self.contiguous:
            raise ValueError("range_chunks: only a contiguous tensor is read by element range")
        itemsize = DTYPES[self.dtype][0]
        locate = getattr(self.source, "locate", None)
        where = locate((self.offset + start) * itemsize, (stop - start) * itemsize) if locate else None
        if where is not None and buffer is not None and stop > start:
            yield from self._read_into(where, start, stop, max_elements, buffer)
            return
        for first in range(start, stop, max_elements):
            count = min(max_elements, stop - first)
            raw = self.source.read((self.offset + first) * itemsize, count * itemsize)
            yield decode(raw, self.dtype, self.byteorder)

    def _read_into(self, where: tuple[Any, int], start: int, stop: int, max_elements: int,
                   buffer: bytearray) -> Iterator["np.ndarray"]:
        from ..errors import SourceError
        from ..safe_io import open_regular

        path, offset = where
        itemsize = DTYPES[self.dtype][0]
        view = memoryview(buffer)
        with open_regular(path, str(path)) as handle:
            handle.seek(offset)
            for first in range(start, stop, max_elements):
                nbytes = min(max_elements, stop - first) * itemsize
                try:
                    got = handle.readinto(view[:nbytes])
                except OSError as error:
                    raise SourceError(f"{path}: cannot read: {error.strerror or error}") from None
                if got != nbytes:
                    raise SourceError(f"{path}: the file is shorter than when it was loaded")
                yield decode(view[:nbytes], self.dtype, self.byteorder)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        """The values in bounded chunks: a contiguous tensor by byte range; a strided view within one chunk
        read whole and indexed in logical order; a wider one a block of storage at a time (never the whole
        region it spans), in storage order."""
        if self.numel == 0:
            return
        itemsize = DTYPES[self.dtype][0]
        if self.contiguous:
            for start in range(0, self.numel, max_elements):
                count = min(max_elements, self.numel - start)
                raw = self.source.read((self.offset + start) * itemsize, count * itemsize)
                yield decode(raw, self.dtype, self.byteorder)
            return
        span = self.span()
        if self.numel > MAX_REPEATS * max(span, max_elements):
            from ..errors import SourceError

            raise SourceError(f"{getattr(self.source, 'path', 'source')}: a view of {self.numel} values over "
                              f"{span} stored ones (stride 0?); its statistics would read each value "
                              f"{self.numel // span} times")
        if span <= max_elements:
            import numpy as np

            region = decode(self.source.read(self.offset * itemsize, span * itemsize), self.dtype, self.byteorder)
            view = np.lib.stride_tricks.as_strided(
                region, shape=self.shape, strides=[s * region.itemsize for s in self.stride], writeable=False
            )
            yield from row_blocks(view, max_elements)
            return
        shape, stride = storage_order(self.shape, self.stride)
        yield from self._strided(shape, stride, self.offset, max_elements)

    def _strided(self, shape: tuple[int, ...], stride: tuple[int, ...], offset: int,
                 max_elements: int) -> Iterator["np.ndarray"]:
        """Rows of the outermost dim, as many per read as keep both the storage region read and the values
        produced within max_elements; a row too large for that is split along the next dim."""
        import numpy as np

        itemsize = DTYPES[self.dtype][0]
        inner_shape, inner_stride = shape[1:], stride[1:]
        inner_numel = math.prod(inner_shape)
        inner_span = 1 + sum((size - 1) * step for size, step in zip(inner_shape, inner_stride))
        if inner_numel > max_elements or inner_span > max_elements:
            for index in range(shape[0]):
                yield from self._strided(inner_shape, inner_stride, offset + index * stride[0], max_elements)
            return
        rows = max_elements // inner_numel
        if stride[0]:
            rows = min(rows, (max_elements - inner_span) // stride[0] + 1)
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            span = (count - 1) * stride[0] + inner_span
            raw = self.source.read((offset + start * stride[0]) * itemsize, span * itemsize)
            region = decode(raw, self.dtype, self.byteorder)
            block = np.lib.stride_tricks.as_strided(region, shape=(count, *inner_shape),
                                                    strides=[s * region.itemsize for s in (stride[0], *inner_stride)],
                                                    writeable=False)
            yield block.reshape(-1)


_SET_FIELDS = tuple(getattr(StridedRef, name).__set__ for name in ("source", "dtype", "shape", "stride", "offset",
                                                                   "storage_elements", "byteorder"))


def strided_ref(source: ByteSource, dtype: str, shape: tuple[int, ...], stride: tuple[int, ...], offset: int,
                storage_elements: int, byteorder: str = "little") -> StridedRef:
    """`StridedRef(source, dtype, shape, stride, offset, storage_elements, byteorder)` at half the cost: its slots
    set directly, not through the frozen dataclass's `object.__setattr__` per field; a checkpoint's loader builds
    one per tensor (90,000)."""
    ref = object.__new__(StridedRef)
    set_source, set_dtype, set_shape, set_stride, set_offset, set_elements, set_byteorder = _SET_FIELDS
    set_source(ref, source)
    set_dtype(ref, dtype)
    set_shape(ref, shape)
    set_stride(ref, stride)
    set_offset(ref, offset)
    set_elements(ref, storage_elements)
    set_byteorder(ref, byteorder)
    return ref


def _keeps_order(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Storage order is logical order: the strides of the dims that count do not grow inward."""
    steps = [step for size, step in zip(shape, stride) if size != 1]
    return all(outer >= inner for outer, inner in zip(steps, steps[1:]))


def row_blocks(view: Any, max_elements: int) -> Iterator[Any]:
    """A view's values in order, flattened, at most max_elements at a time: one block is copied, not the view.

    Whole rows per block; a row larger than a chunk is split along the next dim. Works on a numpy array
    or a torch tensor alike (shape, indexing and reshape are all it uses)."""
    size = math.prod(view.shape)
    if size <= max_elements:
        yield view.reshape(-1)
        return
    if len(view.shape) == 1:
        for start in range(0, size, max_elements):
            yield view[start : start + max_elements]
        return
    row = size // view.shape[0]
    if row > max_elements:
        for index in range(view.shape[0]):
            yield from row_blocks(view[index], max_elements)
        return
    rows = max_elements // row
    for start in range(0, view.shape[0], rows):
        yield view[start : start + rows].reshape(-1)


def storage_order(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dims reordered by stride, largest first, size-1 dims dropped: the same values (statistics do not
    depend on order) walked in storage order, so a transposed tensor reads as contiguously as it is stored."""
    merged: list[tuple[int, int]] = []
    for size, step in sorted((pair for pair in zip(shape, stride) if pair[0] != 1), key=lambda pair: -pair[1]):
        if merged and merged[-1][1] == size * step:  # the outer dim steps over exactly this one: one dim
            merged[-1] = (merged[-1][0] * size, step)
        else:
            merged.append((size, step))
    if not merged:
        return (1,), (1,)
    return tuple(size for size, _ in merged), tuple(step for _, step in merged)
