"""torch tensors as fancli's `TensorData` (read in chunks for `--stats`, whatever their dtype, layout or view),
and as the Layer of the module that owns them."""

from __future__ import annotations

from typing import Hashable, Iterator

import numpy as np
import torch

from ..errors import SourceError
from ..layer import Layer
from ..weights.tensors import CHUNK_ELEMENTS, MAX_REPEATS, row_blocks
from .module_structure import Owner, module_layer

_NUMPY_DTYPES = (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                 torch.int8, torch.uint8, torch.bool)


def dtype_name(dtype: torch.dtype) -> str:
    """torch's dtype name without the "torch." prefix, as Layer.dtype and TensorData.dtype use it."""
    return str(dtype).removeprefix("torch.")


class TorchTensorData:
    """A torch tensor as `TensorData`; dtypes numpy lacks (bfloat16, float8) are widened per chunk.

    `where` names the tensor in errors (the file and key where known)."""

    def __init__(self, tensor: torch.Tensor, where: str = "tensor") -> None:
        self.tensor = tensor
        self.where = where
        self.dtype = dtype_name(tensor.dtype)
        self.shape = tuple(tensor.shape)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        """Flattened values in order, at most max_elements at a time: no block of a non-contiguous tensor
        copies more than a chunk. A view that would repeat its storage more than MAX_REPEATS times (an
        expand(): numel far beyond its storage) is refused, so the work is bounded by what is stored."""
        tensor = self.tensor.detach()
        if tensor.numel() == 0:
            return
        try:
            stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        except (RuntimeError, NotImplementedError):  # no plain storage (a sparse or wrapper tensor)
            stored = tensor.numel()
        if tensor.numel() > MAX_REPEATS * max(stored, max_elements):
            raise SourceError(f"{self.where}: a view of {tensor.numel()} values over {stored} stored ones "
                              f"(stride 0?); its statistics would read each value {tensor.numel() // max(stored, 1)} "
                              "times")
        for block in row_blocks(tensor.reshape(1) if tensor.dim() == 0 else tensor, max_elements):
            yield _to_numpy(block)

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows start..start+count (dim 0; a 0-D tensor is one row), for a dequantizer whose scales go by row."""
        tensor = self.tensor.detach()
        return _to_numpy(tensor.reshape(1) if tensor.dim() == 0 else tensor[start : start + count])


def _to_numpy(chunk: torch.Tensor) -> np.ndarray:
    chunk = chunk.cpu()
    if chunk.dtype not in _NUMPY_DTYPES:
        chunk = chunk.float()
    return chunk.numpy()


def tensor_data(tensor: torch.Tensor, where: str = "tensor") -> TorchTensorData | None:
    """No handle for meta tensors: they have a shape but no values to observe."""
    return None if tensor.is_meta else TorchTensorData(tensor, where)


def tensor_identity(tensor: torch.Tensor) -> Hashable | None:
    """Same storage, offset, shape and stride: one tensor under several keys (empty tensors share no data)."""
    if tensor.numel() == 0 or tensor.is_meta:
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def tensor_layer(key: str, tensor: torch.Tensor, owner: Owner, aliases: tuple[str, ...] = ()) -> Layer:
    return module_layer(key, tuple(tensor.shape), dtype_name(tensor.dtype), owner, tensor_data(tensor, key),
                        aliases)
