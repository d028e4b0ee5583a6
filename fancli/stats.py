"""Observed weight statistics, streamed chunk by chunk with float64 accumulation.

Each chunk is reduced in blocks that fit in cache (one float64 copy, a sum and a dot product per
block), so memory stays near one chunk and the arithmetic runs at memory speed. std is the sample
std (torch's default).
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


#: Elements reduced at a time: small enough that the float64 copy and its reductions stay in cache.
BLOCK_ELEMENTS = 1 << 16


class _Moments:
    """Running count, shifted sums and extremes. Sums are taken around a shift (the first block's
    mean), so sum((x-c)²) - (sum(x-c))²/n loses nothing to cancellation when the mean is far from 0."""

    def __init__(self) -> None:
        self.total = self.count = 0
        self.shift: float | None = None
        self.s1 = self.s2 = 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, block) -> None:
        import numpy as np

        self.total += block.size
        values = block.astype(np.float64)
        if self.shift is None:
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                return
            self.shift = float(finite.mean())
        values -= self.shift
        s1, s2 = float(values.sum()), float(values @ values)
        if math.isfinite(s1) and math.isfinite(s2):
            low, high = block.min(), block.max()
        else:  # NaN or Inf in this block: keep the finite values only
            finite = np.isfinite(values)
            values, block = values[finite], block[finite]
            if values.size == 0:
                return
            s1, s2 = float(values.sum()), float(values @ values)
            low, high = block.min(), block.max()
        self.count += values.size
        self.s1 += s1
        self.s2 += s2
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))

    def result(self) -> Observed:
        if self.count == 0:
            return Observed(self.total, None, None, None, None, nonfinite=self.total)
        mean = self.shift + self.s1 / self.count
        m2 = max(self.s2 - self.s1 * self.s1 / self.count, 0.0)
        std = math.sqrt(m2 / (self.count - 1)) if self.count > 1 else None
        return Observed(self.total, mean, std, self.low, self.high, nonfinite=self.total - self.count)


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS) -> Observed:
    """Mean, std, min, max over the finite values of a tensor: chunks as read, reduced in cache-sized blocks."""
    moments = _Moments()
    for chunk in data.chunks(max_elements):
        for start in range(0, chunk.size, BLOCK_ELEMENTS):
            moments.add(chunk[start : start + BLOCK_ELEMENTS])
    return moments.result()


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
