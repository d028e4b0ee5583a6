"""Data handles that dequantize while `--stats` streams: a quantized weight's values are what the model
computes with (stored codes × their scales), not the codes, so its statistics are taken on those.

Each wraps the handles of the weight and of its scales and reads the weight a few rows at a time, with
the scales (and zero points) those rows use: memory stays near one chunk however many scales there are (a
scale per value is as large as the weight). numpy only, no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

from ..errors import SourceError
from ..weights.dtypes import DTYPES
from ..weights.tensors import CHUNK_ELEMENTS, StridedRef, decode

if TYPE_CHECKING:
    import numpy as np

    from .entry import Entry

#: DeepSeek-V3's FP8 block: a float32 scale per 128 × 128 block of the weight (`weight_block_size`).
FP8_BLOCK = 128


@dataclass(frozen=True)
class Unreadable:
    """A tensor whose dtype or layout fancli cannot decode: `--stats` gives the reason as the row's note."""

    dtype: str
    shape: tuple[int, ...]
    reason: str

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        raise SourceError(self.reason)


class RowData(Protocol):
    """A handle that is no byte range of one file and reads its own rows in order (a DCP tensor's shards,
    a tensor torch loaded): what the dequantizers need of it."""

    shape: tuple[int, ...]

    def rows(self, start: int, count: int) -> "np.ndarray":
        """Rows start..start+count along dim 0 (a 0-D tensor is one row), decoded."""
        ...


def _rows(ref: "StridedRef | RowData", start: int, count: int, length: int) -> "np.ndarray":
    """Rows start..start+count of a contiguous 2-D (or flat) tensor, decoded; a handle that is no byte
    range of one file (a DCP tensor's shards, a tensor torch loaded) reads its own rows."""
    if not isinstance(ref, StridedRef):
        return ref.rows(start, count).reshape(-1)
    itemsize = DTYPES[ref.dtype][0]
    raw = ref.source.read((ref.offset + start * length) * itemsize, count * length * itemsize)
    return decode(raw, ref.dtype, ref.byteorder)


def _whole(ref: "StridedRef | RowData") -> "np.ndarray":
    import numpy as np

    if not isinstance(ref, StridedRef):  # its chunks need not come in order (shards): its rows do
        return _rows(ref, 0, ref.shape[0] if ref.shape else 1, 0).astype(np.float64).reshape(ref.shape or (1,))
    parts = list(ref.chunks())
    return (np.concatenate(parts) if parts else np.empty(0)).astype(np.float64).reshape(ref.shape or (1,))


def _where(ref: "StridedRef | RowData") -> str:
    """The file (or folder and key) a handle reads, for an error."""
    return str(ref.source.path) if isinstance(ref, StridedRef) else getattr(ref, "where", "the source")


def _readable(*refs) -> str | None:
    for ref in refs:
        if isinstance(ref, StridedRef) and not ref.contiguous:
            return "its stored layout (a strided view) is not read: no statistics"
        if not isinstance(ref, StridedRef) and not hasattr(ref, "rows"):
            return getattr(ref, "reason", None) or ("its values are not read row by row, as pairing them with "
                                                    "their scales needs: no statistics")
    return None


def block_of(size: int, scales: int) -> int | None:
    """The block along one dim for `scales` scales over `size` values: one (per tensor), one each, or
    DeepSeek's 128 (ceil(size/128) scales, the last block partial); None when none fits."""
    if scales == 1:
        return max(size, 1)
    if scales == size:
        return 1
    if scales == math.ceil(size / FP8_BLOCK):
        return FP8_BLOCK
    return None


def scaled(weight: "Entry", scale: "Entry", factor: float = 1.0) -> "Scaled":
    """The weight × its scales (per tensor, per row or per block) as a data handle; a scale whose shape fits
    no layout is a SourceError naming both (one line, exit 2). Whether their handles can be read so is its
    `reason`, asked where the values are read (`--stats`, `--spectral`, `--infer`, diff, check)."""
    blocks = _blocks(weight.shape, scale.shape)
    if blocks is None:
        out, inner = weight.shape[0], math.prod(weight.shape[1:])
        raise SourceError(f"{scale.where}: {scale.key}: shape {list(scale.shape)} fits no scale layout of "
                          f"{weight.key} {list(weight.shape)} (one scale, one per row, or one per "
                          f"{FP8_BLOCK}×{FP8_BLOCK} block: {[math.ceil(out / FP8_BLOCK), math.ceil(inner / FP8_BLOCK)]})")
    return Scaled(weight.data, scale.data, blocks, factor)


def scale_layout(weight: tuple[int, ...], scale: tuple[int, ...]) -> str:
    """How the scales cover the weight, in words that do not depend on the weight's size (so every FP8
    weight of a DeepSeek-V3 says the same): one for the tensor, one per row, or one per block (the
    nominal 128×128 where the scales are ceil(size/128) along each dim, a last or only block partial)."""
    blocks = _blocks(weight, scale)
    if blocks is None:  # `scaled` refuses it, naming both shapes
        return f"shape {list(scale)}"
    out, inner = weight[0], math.prod(weight[1:])
    if math.prod(scale) == 1:
        return "one scale for the whole tensor"
    if blocks == (1, max(inner, 1)):
        return "one scale per row"
    grid = tuple(scale) if len(scale) == 2 else (scale[0], 1)
    if grid == (math.ceil(out / FP8_BLOCK), math.ceil(inner / FP8_BLOCK)):
        return f"one scale per {FP8_BLOCK}×{FP8_BLOCK} block"
    return f"one scale per {blocks[0]}×{blocks[1]} block"


@functools.lru_cache(maxsize=1024)
def _blocks(weight: tuple[int, ...], scale: tuple[int, ...]) -> tuple[int, int] | None:
    """The block of weight values each scale covers (rows, columns), or None where the scale's shape fits
    no layout; cached, as 90,000 FP8 weights have a few dozen pairs of shapes."""
    out, inner = weight[0], math.prod(weight[1:])
    dims = scale if len(scale) == 2 else (scale[0], 1) if len(scale) == 1 else (1, 1)
    if len(scale) == 1 and scale[0] == 1:
        dims = (1, 1)
    rows, columns = block_of(out, dims[0]), block_of(inner, dims[1])
    return None if len(scale) > 2 or rows is None or columns is None else (rows, columns)


class Scaled:
    """weight[r, c] × scale[r // block_rows, c // block_columns] × factor, a few rows at a time, in order.
    Slotted: a DeepSeek-V3 checkpoint holds one per FP8 weight (45,000)."""

    __slots__ = ("weight", "scale", "blocks", "factor", "shape")
    dtype = "float32"

    def __init__(self, weight: "StridedRef | RowData", scale: "StridedRef | RowData", blocks: tuple[int, int],
                 factor: float) -> None:
        self.weight, self.scale, self.blocks, self.factor = weight, scale, blocks, factor
        self.shape = weight.shape

    @property
    def reason(self) -> str | None:
        """Why the values are not read (a strided view, a handle with no rows), or None: computed when
        a reader asks (`--stats`, `--spectral`…), not once per FP8 weight at load (the handles do not change)."""
        return _readable(self.weight, self.scale)

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return True

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np

        reason = self.reason
        if reason:
            raise SourceError(reason)
        out = self.shape[0] if self.shape else 0
        inner = math.prod(self.shape[1:])
        if not out or not inner:
            return
        rows, columns = self.blocks
        width = math.ceil(inner / columns)  # scales in a row of scales
        step = max(1, max_elements // inner)
        for start in range(0, out, step):
            count = min(step, out - start)
            first = start // rows  # the rows of scales these rows of the weight use
            scales = _rows(self.scale, first, (start + count - 1) // rows + 1 - first, width).reshape(-1, width)
            scales = scales[np.arange(start, start + count) // rows - first].astype(np.float64) * self.factor
            factors = np.repeat(scales, columns, axis=1)[:, :inner]
            values = (_rows(self.weight, start, count, inner).reshape(count, inner) * factors).reshape(-1)
            for begin in range(0, values.size, max_elements):
                yield values[begin : begin + max_elements]


def group_size(inputs: int, groups: int, stated: int | None = None) -> int | str:
    """The group size AutoGPTQ's `g_idx = [i // group_size for i in range(infeatures)]` used, for a qweight
    saved without g_idx: the stated one (config.json; -1 is one group of all inputs), checked against the
    ceil(inputs / group_size) groups its QuantLinear gives `scales`; else the one size that makes `groups`
    groups. A reason, not a guess, where it is not one size: then the values are not read."""
    if stated is not None:
        size = inputs if stated == -1 else stated
        if size > 0 and math.ceil(inputs / size) == groups:
            return size
        return (f"group_size {stated} (config.json) does not make the {groups} groups of its scales over "
                f"{inputs} inputs: no statistics")
    if groups == 1:
        return inputs
    low, high = math.ceil(inputs / groups), math.ceil(inputs / (groups - 1)) - 1  # sizes giving `groups` groups
    if low == high and math.ceil(inputs / low) == groups:
        return low
    fits = f"fit group sizes {low} to {high}" if low < high else "fit no group size"
    return (f"no g_idx and no group_size stated (config.json quantization_config): {groups} groups of {inputs} "
            f"inputs {fits}, and which inputs share a scale depends on it: no statistics")


def gptq_data(qweight: "Entry", scales: "Entry", zeros: "Entry | None", g_idx: "Entry | None", bits: int,
              shape: tuple[int, int]):
    """GPTQ's documented layout (AutoGPTQ, v1 checkpoints): input i of output j is bits-wide field i % pack
    of qweight[i // pack, j]; its group g = g_idx[i] (else i // group size, `group_size`); the value is
    scales[g, j] × (q − (zero[g, j] + 1)), zero points stored less one, packed along out in qzeros."""
    reason = _readable(qweight.data, scales.data, *(e.data for e in (zeros, g_idx) if e is not None))
    if zeros is None:
        reason = reason or "no qzeros beside it: its zero points are unknown, no statistics"
    if reason:
        return Unreadable("float32", shape, reason)
    return Gptq(qweight.data, scales.data, zeros.data, g_idx.data if g_idx else None, bits, shape)


class Gptq:
    """Dequantized GPTQ values, `pack` inputs (one qweight row) at a time; they come input by input, the
    transpose of the [out, in] weight, so row signals (`--infer`'s per-row checks) are skipped."""

    dtype = "float32"

    def __init__(self, qweight, scales, zeros, g_idx, bits: int, shape: tuple[int, int],
                 stated: int | None = None) -> None:
        self.qweight, self.scales, self.zeros, self.g_idx, self.bits = qweight, scales, zeros, g_idx, bits
        self.shape = shape
        found = None if g_idx is not None else group_size(shape[1], scales.shape[0], stated)
        self.group_size = found if isinstance(found, int) else None
        self.reason = found if isinstance(found, str) else None  # `--stats` gives it as the row's note

    def grouped(self, stated: int) -> "Gptq":
        """The same weight with the group size its config states (where it has no g_idx to say)."""
        if self.g_idx is not None:
            return self
        return Gptq(self.qweight, self.scales, self.zeros, None, self.bits, self.shape, stated)

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return False

    def _unpack(self, packed: "np.ndarray") -> "np.ndarray":
        """[n, m] int32 → [n, pack, m] fields, lowest bits first."""
        import numpy as np

        shifts = np.arange(0, 32, self.bits, dtype=np.uint32)
        return (packed.view(np.uint32)[:, None, :] >> shifts[None, :, None]) & np.uint32((1 << self.bits) - 1)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np

        out, inputs = self.shape
        pack = 32 // self.bits
        groups = self.scales.shape[0]
        if self.zeros.shape[0] != groups:
            raise SourceError(f"{self.qweight.source.path}: qzeros has {self.zeros.shape[0]} groups, "
                              f"scales {groups}")
        if self.g_idx is not None:
            g_idx = _whole(self.g_idx).reshape(-1).astype(np.int64)
        else:
            g_idx = np.arange(inputs) // self.group_size
        if g_idx.shape[0] != inputs or g_idx.min(initial=0) < 0 or g_idx.max(initial=0) >= groups:
            raise SourceError(f"{_where(self.qweight)}: g_idx does not map {inputs} inputs to {groups} groups")
        step = max(1, max_elements // (pack * out))
        for start in range(0, self.qweight.shape[0], step):
            count = min(step, self.qweight.shape[0] - start)
            q = self._unpack(_rows(self.qweight, start, count, out).reshape(count, out)).reshape(count * pack, out)
            scales, zeros, g = self._groups(g_idx[start * pack : (start + count) * pack], out)
            values = (scales[g] * (q - zeros[g])).reshape(-1)
            for begin in range(0, values.size, max_elements):
                yield values[begin : begin + max_elements]

    def _groups(self, g: "np.ndarray", out: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
        """The scales and zero points (+1) of the groups `g` names, [used, out] float64, read a run of
        consecutive groups at a time (act-order scatters them), and `g` as indices into them."""
        import numpy as np

        used, g = np.unique(g, return_inverse=True)
        runs = np.split(used, np.flatnonzero(np.diff(used) != 1) + 1)
        width = self.zeros.shape[1]
        scales = np.concatenate([_rows(self.scales, int(run[0]), run.size, out) for run in runs])
        packed = np.concatenate([_rows(self.zeros, int(run[0]), run.size, width) for run in runs])
        zeros = self._unpack(packed.reshape(used.size, width)).transpose(0, 2, 1).reshape(used.size, -1)[:, :out]
        return scales.reshape(used.size, out).astype(np.float64), zeros.astype(np.float64) + 1.0, g


#: FP4 e2m1 values by their 4-bit code (transformers' `integrations/mxfp4.py` FP4_VALUES): sign, 2 exponent bits,
#: 1 mantissa bit.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def mxfp4_data(blocks: "Entry", scales: "Entry | None", shape: tuple[int, ...]):
    """The MXFP4 stack's values as transformers' `convert_moe_packed_tensors` computes them, or why not."""
    if scales is None:
        return Unreadable("float32", shape, "no *_scales beside the MXFP4 blocks: their values are unknown, "
                                            "no statistics")
    if not isinstance(blocks.data, StridedRef) or not isinstance(scales.data, StridedRef):
        return Unreadable("float32", shape, "MXFP4 blocks are read from a file's bytes only: no statistics")
    reason = _readable(blocks.data, scales.data)
    return Unreadable("float32", shape, reason) if reason else Mxfp4(blocks.data, scales.data, shape)


class Mxfp4:
    """transformers' `convert_moe_packed_tensors`: byte b of a block holds value 2b in its low nibble and 2b+1 in
    its high one (FP4 e2m1 codes), each × 2^(scale − 127); read a few blocks at a time in stored order
    ([E, R, G·32], the transpose of each expert's [in, out]), so row signals are skipped."""

    dtype = "float32"

    def __init__(self, blocks: StridedRef, scales: StridedRef, shape: tuple[int, ...]) -> None:
        self.blocks, self.scales, self.shape = blocks, scales, shape

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return False

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np

        table = np.array(FP4_VALUES)
        total = math.prod(self.blocks.shape[:3])  # blocks of 16 bytes, 32 values
        step = max(1, max_elements // 32)
        for start in range(0, total, step):
            count = min(step, total - start)
            codes = _rows(self.blocks, start, count, 16).astype(np.uint8).reshape(count, 16)
            exponents = _rows(self.scales, start, count, 1).astype(np.int64) - 127
            values = np.empty((count, 32))
            values[:, 0::2], values[:, 1::2] = table[codes & 0x0F], table[codes >> 4]
            yield np.ldexp(values, exponents[:, None]).reshape(-1)



class Mlx:
    """MLX's affine-quantized weight (`mlx.core.dequantize`: w = scale·q + bias per group), a few rows at a
    time: value j of a row is the bits-wide field j % (32/bits) of word j // (32/bits), lowest bits first. It
    keeps its three tensors, so that config.json's bits and group size can re-read it (`restated`); `reason`
    says why its values are not read, where they are not."""

    dtype = "float32"

    def __init__(self, weight: "Entry", scales: "Entry", biases: "Entry", layout: tuple[int, int] | None,
                 shape: tuple[int, ...]) -> None:
        self.weight, self.scales, self.biases, self.layout, self.shape = weight, scales, biases, layout, shape
        self.reason = ("its bits and group size are unknown: no statistics" if layout is None else
                       f"MLX's {layout[0]}-bit values cross its uint32 words: not read, no statistics" if 32 % layout[0]
                       else _readable(weight.data, scales.data, biases.data))

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return True

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np

        if self.reason:
            raise SourceError(self.reason)
        (bits, size), (out, inputs) = self.layout, self.shape
        columns, groups = self.weight.shape[1], self.scales.shape[1]
        shifts = np.arange(0, 32, bits, dtype=np.uint32)
        step = max(1, max_elements // max(inputs, 1))
        for start in range(0, out, step):
            count = min(step, out - start)
            words = _rows(self.weight.data, start, count, columns).astype(np.uint32).reshape(count, columns, 1)
            q = ((words >> shifts) & np.uint32((1 << bits) - 1)).reshape(count, groups, size)
            scales = _rows(self.scales.data, start, count, groups).astype(np.float64).reshape(count, groups, 1)
            biases = _rows(self.biases.data, start, count, groups).astype(np.float64).reshape(count, groups, 1)
            values = (scales * q + biases).reshape(-1)
            for begin in range(0, values.size, max_elements):
                yield values[begin : begin + max_elements]
