"""Observed weight statistics, streamed chunk by chunk with float64 accumulation.

Each chunk is reduced in blocks that fit in cache (one float64 copy, its square, a sum and two dot
products per block), so memory stays near one chunk and the arithmetic runs at memory speed. std is the sample
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
    kurtosis: float | None = None  # excess kurtosis: uniform −1.2, normal 0, normal cut at ±2σ −0.63
    overflow: bool = False  # values too large for float64 moments

    @property
    def note(self) -> str | None:
        if self.overflow:
            return "values too large for float64 moments: mean and std left out"
        if self.nonfinite:
            return f"{self.nonfinite} of {self.count} values are NaN or Inf; statistics cover the finite ones"
        if self.count == 0:
            return "no elements: nothing to observe"
        return None


#: Elements reduced at a time: small enough that the float64 copy and its reductions stay in cache.
BLOCK_ELEMENTS = 1 << 16


class _Moments:
    """Running count, shifted power sums and extremes. Sums are taken around a shift (the first block's
    mean), so the central moments lose nothing to cancellation when the mean is far from 0."""

    def __init__(self, kurtosis: bool) -> None:
        self.kurtosis = kurtosis  # third and fourth powers cost two more passes per block: only when asked
        self.total = self.count = 0
        self.shift: float | None = None
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0
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
        if not math.isfinite(float(values.sum())):  # NaN or Inf in this block: keep the finite values only
            finite = np.isfinite(values)
            values, block = values[finite], block[finite]
            if values.size == 0:
                return
        self.count += values.size
        self.s1 += float(values.sum())
        if self.kurtosis:
            squares = values * values
            self.s2 += float(squares.sum())
            self.s3 += float(np.einsum("i,i->", squares, values))
            self.s4 += float(np.einsum("i,i->", squares, squares))
        else:
            self.s2 += float(np.einsum("i,i->", values, values))  # not BLAS: its threads stall on a busy core
        low, high = block.min(), block.max()
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))

    def result(self) -> Observed:
        if self.count == 0:
            return Observed(self.total, None, None, None, None, nonfinite=self.total)
        n = self.count
        d = self.s1 / n  # mean of the shifted values
        m2 = max(self.s2 / n - d * d, 0.0)  # central moments about the mean, from the shifted sums
        m4 = self.s4 / n - 4 * d * self.s3 / n + 6 * d * d * self.s2 / n - 3 * d**4
        std = math.sqrt(m2 * n / (n - 1)) if n > 1 else None
        kurtosis = m4 / (m2 * m2) - 3.0 if self.kurtosis and m2 > 0 and n > 3 else None
        return Observed(self.total, self.shift + d, std, self.low, self.high, self.total - n, kurtosis)


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False) -> Observed:
    """Mean, std, min, max (and excess kurtosis if asked) over the finite values of a tensor: chunks as
    read, reduced in cache-sized blocks."""
    import numpy as np

    moments = _Moments(kurtosis)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 overflow (values near 1e200) → a note
        for chunk in data.chunks(max_elements):
            for start in range(0, chunk.size, BLOCK_ELEMENTS):
                moments.add(chunk[start : start + BLOCK_ELEMENTS])
    observed = moments.result()
    moments_ = (observed.mean, observed.std, observed.kurtosis)
    if any(v is not None and not math.isfinite(v) for v in moments_):
        return Observed(observed.count, None, None, observed.min, observed.max, observed.nonfinite, None,
                        overflow=True)
    return observed


def observe_all(layers, on_chunk=None, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False
                ) -> dict[str, Observed]:
    """Observed statistics per parameter key, one tensor at a time; `on_chunk(nbytes)` reports progress."""
    results: dict[str, Observed] = {}
    for layer in layers:
        if layer.data is None:
            continue
        data = layer.data if on_chunk is None else _Reporting(layer.data, on_chunk)
        results[layer.param] = observe(data, max_elements, kurtosis)
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
