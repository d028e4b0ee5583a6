"""The tensor types torch's weights-only loader reads besides dense real ones, as the restricted unpickler
records them: quantized (`torch.quantize_per_tensor`, `quantize_per_channel`), complex and sparse tensors.

Each becomes an Entry with the name, logical shape and dtype torch would report, and a data handle for
`--stats` only where its values are plain real numbers: quantized codes are dequantized as they stream
(what the model computes with), complex values and uncoalesced COO tensors get a reason instead. numpy
only, no torch: listing a zip that holds them stays torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

from ..errors import SourceError
from ..weights.dtypes import DTYPES, FLOATING
from ..weights.tensors import CHUNK_ELEMENTS, StridedRef
from .entry import Entry
from .quant_data import Unreadable

if TYPE_CHECKING:
    import numpy as np

    from .torch_pickle import SavedSparse, SavedTensor

COMPLEX = ("complex64", "complex128")
#: Why a complex tensor has no statistics (the row's `--stats` note).
COMPLEX_REASON = ("complex values: a real init's mean and std do not describe them (torch's init functions "
                  "take fans from the shape only), so no statistics")
#: A per-channel quantizer's scales and zero points are one value per channel: at most this many are read.
MAX_CHANNELS = 1 << 24


def dense_entry(key: str, tensor: "SavedTensor", ref: StridedRef, identity: Hashable) -> Entry:
    """A real tensor with its handle; a complex one listed with the reason it has no statistics."""
    data = ref if tensor.dtype in DTYPES else Unreadable(tensor.dtype, ref.shape, COMPLEX_REASON)
    return Entry(key, ref.shape, tensor.dtype, data, identity)


def quantized_entry(path: Path, key: str, tensor: "SavedTensor", codes: StridedRef, identity: Hashable,
                    tensor_ref: Callable[[str, "SavedTensor"], StridedRef]) -> Entry:
    """A quantized tensor (`qint8`, `quint8`, `qint32`) whose `--stats` are torch's `dequantize()` values:
    `(q - zero_point) * scale`, per tensor or per channel along `axis` (with float zero points for
    `per_channel_affine_float_qparams` too: torch's dequantize computes the same, checked in the tests)."""
    scheme, *params = tensor.quantizer
    where = f"{path}: {key}"
    if scheme.name == "per_tensor_affine":
        scale, zero_point = params
        data: Any = Dequantized(codes, float(scale), zero_point, None, None, 0)
    else:
        scales, zero_points, axis = params
        if axis >= len(codes.shape):
            raise SourceError(f"{where}: per-channel axis {axis} of a {len(codes.shape)}-D tensor")
        channels = codes.shape[axis]
        refs = [tensor_ref(f"{key} ({what})", part) for what, part in (("scales", scales), ("zero points", zero_points))]
        for ref, what in zip(refs, ("scales", "zero points")):
            if ref.numel != channels or len(ref.shape) != 1:
                raise SourceError(f"{where}: {ref.numel} {what} for {channels} channels along axis {axis}")
            if ref.dtype not in ("float64", "float32", "int64", "int32"):
                raise SourceError(f"{where}: {what} of dtype {ref.dtype}")
        if channels > MAX_CHANNELS:
            raise SourceError(f"{where}: {channels} channels, more than fancli reads quantizer parameters for")
        data = Dequantized(codes, None, None, refs[0], refs[1], axis)
    if not codes.contiguous and scheme.name != "per_tensor_affine":
        data = Unreadable("float32", codes.shape, "a per-channel quantized view that is not contiguous: no statistics")
    return Entry(key, codes.shape, tensor.dtype, data, identity,
                 notes=(f"{tensor.dtype} {scheme.name.replace('_', ' ')}: --stats reads the dequantized values",))


class Dequantized:
    """Quantized codes dequantized as they stream, chunk by chunk, in the order the codes come (per channel
    needs logical order: only contiguous codes get a per-channel handle)."""

    dtype = "float32"

    def __init__(self, codes: StridedRef, scale: float | None, zero_point: int | None, scales: StridedRef | None,
                 zero_points: StridedRef | None, axis: int) -> None:
        self.codes, self.scale, self.zero_point = codes, scale, zero_point
        self.scales, self.zero_points, self.axis = scales, zero_points, axis
        self.shape = codes.shape

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return self.codes.logical(max_elements)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np

        if self.scales is None:
            for chunk in self.codes.chunks(max_elements):
                yield ((chunk.astype(np.float64) - self.zero_point) * self.scale).astype(np.float32)
            return
        scales = np.concatenate([*self.scales.chunks(), np.empty(0)]).astype(np.float64)
        zero_points = np.concatenate([*self.zero_points.chunks(), np.empty(0)]).astype(np.float64)
        inner = math.prod(self.shape[self.axis + 1:])
        channels = self.shape[self.axis]
        position = 0
        for chunk in self.codes.chunks(max_elements):
            channel = (np.arange(position, position + chunk.size, dtype=np.int64) // inner) % channels
            position += chunk.size
            yield ((chunk.astype(np.float64) - zero_points[channel]) * scales[channel]).astype(np.float32)


class StoredValues:
    """A sparse tensor's stored values (`values()`), not its dense form: the specified elements only."""

    def __init__(self, values: StridedRef) -> None:
        self.values, self.dtype, self.shape = values, values.dtype, values.shape

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return False  # values are not rows of the logical tensor: no row signals

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        return self.values.chunks(max_elements)


def sparse_entry(path: Path, key: str, tensor: "SavedSparse",
                 tensor_ref: Callable[[str, "SavedTensor"], StridedRef]) -> Entry:
    """A sparse tensor by its logical (dense) shape, which torch's fans take; `--stats` over exactly the
    values it stores (coalesced COO, or a compressed layout: each stored value is one element, explicit
    zeros included, and the elements not stored, all zero, are not counted). An uncoalesced COO tensor may
    store one element as several values that sum, so it gets no statistics."""
    values = tensor_ref(f"{key} (values)", tensor.values)
    for index in tensor.indices:
        tensor_ref(f"{key} (indices)", index)  # checked against the file like any tensor; never read
    stored, dense = values.numel, math.prod(tensor.size)
    layout = tensor.layout.replace("_", " ")
    if tensor.values.dtype not in FLOATING:
        data: Any = Unreadable(tensor.values.dtype, values.shape, f"a {layout} tensor of {tensor.values.dtype} values: "
                               "no statistics")
        note = f"a {layout} tensor: fans from its dense shape"
    elif tensor.layout == "sparse_coo" and tensor.coalesced is not True:
        data = Unreadable(values.dtype, values.shape, "an uncoalesced sparse COO tensor: an element may be stored "
                          "as several values that sum, so its stored values are not its elements; no statistics")
        note = f"a {layout} tensor: fans from its dense shape"
    else:
        data = StoredValues(values)
        note = (f"a {layout} tensor: fans from its dense shape; --stats over its {stored} stored values only "
                f"(the other {max(dense - stored, 0)} elements are zero and not counted)")
    return Entry(key, tuple(tensor.size), tensor.values.dtype, data, None, notes=(note,))
