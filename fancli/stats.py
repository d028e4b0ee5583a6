"""Observed weight statistics, streamed chunk by chunk with float64 accumulation.

Chunks are merged with Chan et al.'s pairwise update, so the result equals a two-pass computation
on the whole tensor without ever holding it in memory. std is the sample std (torch's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tensors import CHUNK_ELEMENTS, DTYPES, TensorData


@dataclass(frozen=True)
class Observed:
    """What a tensor's values look like."""

    count: int
    mean: float | None
    std: float | None  # sample std (n - 1), as torch.std
    min: float | None
    max: float | None
    nonfinite: int = 0  # NaN and ±Inf values, left out of the moments

    @property
    def note(self) -> str | None:
        if self.nonfinite:
            return f"{self.nonfinite} of {self.count} values are NaN or Inf; statistics cover the finite ones"
        if self.count == 0:
            return "no elements: nothing to observe"
        return None


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS) -> Observed:
    """Mean, std, min, max over the finite values of a tensor, one chunk at a time."""
    import numpy as np

    count = 0  # finite values seen
    total = 0
    mean = 0.0
    m2 = 0.0
    low, high = math.inf, -math.inf
    for chunk in data.chunks(max_elements):
        total += chunk.size
        values = chunk.astype(np.float64, copy=False)
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
        n = values.size
        if n == 0:
            continue
        chunk_mean = float(values.mean())
        chunk_m2 = float(np.square(values - chunk_mean).sum())
        delta = chunk_mean - mean
        merged = count + n
        mean += delta * n / merged
        m2 += chunk_m2 + delta * delta * count * n / merged
        count = merged
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    if count == 0:
        return Observed(total, None, None, None, None, nonfinite=total)
    std = math.sqrt(m2 / (count - 1)) if count > 1 else None
    return Observed(total, mean, std, low, high, nonfinite=total - count)


def observe_all(layers, on_chunk=None, max_elements: int = CHUNK_ELEMENTS) -> dict[str, Observed]:
    """Observed statistics per parameter key, one tensor at a time; `on_chunk(nbytes)` reports progress."""
    results: dict[str, Observed] = {}
    for layer in layers:
        if layer.data is None:
            continue
        data = layer.data if on_chunk is None else _Reporting(layer.data, on_chunk)
        results[layer.param] = observe(data, max_elements)
    return results


class _Reporting:
    """Wraps a TensorData so the bytes of each chunk read are reported (for a progress bar)."""

    def __init__(self, data: TensorData, on_chunk) -> None:
        self.data, self.on_chunk = data, on_chunk
        self.dtype, self.shape = data.dtype, data.shape
        self.itemsize = DTYPES[data.dtype][0] if data.dtype in DTYPES else 1

    def chunks(self, max_elements: int = CHUNK_ELEMENTS):
        for chunk in self.data.chunks(max_elements):
            yield chunk
            self.on_chunk(chunk.size * self.itemsize)
