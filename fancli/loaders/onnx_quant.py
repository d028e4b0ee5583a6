"""ONNX's quantized weights dequantized for `--stats`: what the model computes with, as the operator set
defines it (onnx 1.23 `DequantizeLinear`, opset 21): y = (x − zero_point) · scale, the scale and zero point
one for the tensor, one per slice along `axis`, or (`block_size`) one per block of that many along it.
QLinearConv's weight scale is per output channel (axis 0), QLinearMatMul's and MatMulInteger's per column
(the last axis; MatMulInteger has no scale: its values are x − zero_point). numpy only; a quantized ONNX
weight is read whole (the model is at most 2 GiB)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

from ..weights.tensors import CHUNK_ELEMENTS, StridedRef

if TYPE_CHECKING:
    import numpy as np


def _values(ref: StridedRef) -> "np.ndarray":
    import numpy as np

    parts = list(ref.chunks())
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


class Dequantized:
    """(weight − zero point) · scale, along `axis` (per tensor where the scale has one element)."""

    dtype = "float32"

    def __init__(self, weight: StridedRef, scale: StridedRef | None, zero_point: StridedRef | None, axis: int,
                 block_size: int = 0) -> None:
        self.weight, self.scale, self.zero_point = weight, scale, zero_point
        self.axis, self.block_size = axis, block_size
        self.shape = weight.shape

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return True

    def _along(self, factor: "np.ndarray") -> "np.ndarray | float":
        """A scale or zero point broadcast to the weight: one value, or one per slice (per block) along axis."""
        if factor.size == 1:
            return float(factor.reshape(-1)[0])
        axis = self.axis % len(self.shape)
        shape = [1] * len(self.shape)
        if self.block_size:
            blocks = list(self.shape)
            blocks[axis] = math.ceil(self.shape[axis] / self.block_size)
            expanded = factor.reshape(blocks).repeat(self.block_size, axis=axis)
            return expanded.take(range(self.shape[axis]), axis=axis)
        shape[axis] = factor.size
        return factor.reshape(shape)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        values = _values(self.weight).reshape(self.shape)
        if self.zero_point is not None:
            values = values - self._along(_values(self.zero_point))
        if self.scale is not None:
            values = values * self._along(_values(self.scale))
        flat = values.reshape(-1)
        for begin in range(0, flat.size, max_elements):
            yield flat[begin : begin + max_elements]
