"""Observed weight statistics, streamed chunk by chunk with float64 accumulation.

Each chunk is reduced in blocks that fit in cache (one float64 copy, its square, a sum and two dot
products per block), so memory stays near one chunk and the arithmetic runs at memory speed. std is the sample
std (torch's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .tensors import CHUNK_ELEMENTS, DTYPES, LOW_PRECISION_FLOATING, TensorData


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
    structure: "Structure | None" = None  # zeros and row signals, when asked (--infer)
    unread: str | None = None  # why the values were not read (a dtype or layout fancli cannot decode)

    @property
    def note(self) -> str | None:
        if self.unread:
            return self.unread
        if self.overflow:
            return "values too large for float64 moments: mean and std left out"
        if self.nonfinite:
            return f"{self.nonfinite} of {self.count} values are NaN or Inf; statistics cover the finite ones"
        if self.count == 0:
            return "no elements: nothing to observe"
        return None


@dataclass(frozen=True)
class Structure:
    """What i.i.d. draws fix beyond the moments: how many values are exactly 0, and how the rows (the
    `numel / shape[0]` consecutive values under each index of dim 0) differ in norm and overlap.
    Raw moments are about 0: `a2 = E x²` … `a8 = E x⁸`, over every finite value."""

    zeros: int  # values exactly 0 (±0)
    tiny: float | None  # smallest positive value the stored dtype holds: |x| below half of it is stored as 0
    a2: float | None = None
    a4: float | None = None
    a6: float | None = None
    a8: float | None = None
    rows: int = 0  # rows seen whole (0: no row signal — fewer than 2 dims, too long rows, NaN/Inf)
    row_length: int = 0
    row_mean: float | None = None  # mean over rows of a row's sum of squares
    row_variance: float | None = None  # sample variance over rows of a row's sum of squares
    overlap: float | None = None  # mean over adjacent row pairs of <row r, row r+1>²


#: Smallest positive (subnormal) value per floating dtype: a draw rounds to an exact 0 only below half of it.
TINY = {"float64": 5e-324, "float32": 1.401298464324817e-45, "float16": 5.960464477539063e-08,
        "bfloat16": 9.183549615799121e-41}
#: Row signals keep one row (float64) in memory: longer rows are skipped, so memory stays bounded.
MAX_ROW_LENGTH = 1 << 20


class _Structure:
    """Streams the exact-zero count, raw power sums up to x⁸, and per row the sum of squares and the
    dot product with the previous row. Chunks arrive in the tensor's logical (C) order, so a row is
    `row_length` consecutive values;
    one partial row is buffered across blocks. Memory: one row, whatever the tensor. (A transposed view
    wider than one chunk is read in storage order to stay bounded; its row signals are skipped.)"""

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        import numpy as np

        self.tiny = TINY.get(dtype)
        self.zeros = self.count = 0
        self.p2 = self.p4 = self.p6 = self.p8 = 0.0
        numel = math.prod(shape)
        self.row_length = numel // shape[0] if len(shape) >= 2 and shape[0] > 0 else 0
        self.valid = 2 <= self.row_length <= MAX_ROW_LENGTH and shape[0] >= 2
        self.buffer = np.empty(self.row_length if self.valid else 0)
        self.fill = 0
        self.previous = None
        self.rows = self.pairs = 0
        self.first = None  # a row's sum of squares is taken about the first row's, for a stable variance
        self.s1 = self.s2 = self.overlap = 0.0

    def add(self, block) -> None:
        """One block of the tensor's values, in order."""
        import numpy as np

        values = block.astype(np.float64)
        self.zeros += int(np.count_nonzero(values == 0))
        if not math.isfinite(float(values.sum())):
            self.valid = False  # rows are no longer whole: drop the row signals, keep the zero count
            values = values[np.isfinite(values)]
        squares = values * values
        fourth = squares * squares
        self.count += values.size
        self.p2 += float(squares.sum())
        self.p4 += float(fourth.sum())
        self.p6 += float(np.einsum("i,i->", fourth, squares))
        self.p8 += float(np.einsum("i,i->", fourth, fourth))
        if self.valid:
            self._rows(values)

    def _rows(self, values) -> None:
        m, start = self.row_length, 0
        if self.fill:  # complete the row begun in an earlier block
            take = min(m - self.fill, values.size)
            self.buffer[self.fill : self.fill + take] = values[:take]
            self.fill += take
            start = take
            if self.fill < m:
                return
            self._whole(self.buffer[None, :])
            self.fill = 0
        whole = (values.size - start) // m
        if whole:
            self._whole(values[start : start + whole * m].reshape(whole, m))
            start += whole * m
        rest = values.size - start
        if rest:
            self.buffer[:rest] = values[start:]
            self.fill = rest

    def _whole(self, block) -> None:
        """Whole rows, one per line of `block`."""
        import numpy as np

        sums = np.einsum("ij,ij->i", block, block)
        if self.first is None:
            self.first = float(sums[0])
        shifted = sums - self.first
        self.rows += sums.size
        self.s1 += float(shifted.sum())
        self.s2 += float(np.einsum("i,i->", shifted, shifted))
        if self.previous is not None:
            dot = float(self.previous @ block[0])
            self.overlap += dot * dot
            self.pairs += 1
        if block.shape[0] > 1:
            dots = np.einsum("ij,ij->i", block[:-1], block[1:])
            self.overlap += float(np.einsum("i,i->", dots, dots))
            self.pairs += dots.size
        self.previous = block[-1].copy()

    def result(self) -> Structure:
        n = self.count
        raw = [p / n if n else None for p in (self.p2, self.p4, self.p6, self.p8)]
        if any(v is not None and not math.isfinite(v) for v in raw):
            raw = [None] * 4  # x⁸ overflowed float64: no structure beyond the zero count
        if not self.valid or self.rows < 2 or self.fill or raw[0] is None:
            return Structure(self.zeros, self.tiny, *raw)
        mean = self.s1 / self.rows
        variance = max(self.s2 / self.rows - mean * mean, 0.0) * self.rows / (self.rows - 1)
        return Structure(self.zeros, self.tiny, *raw, self.rows, self.row_length, self.first + mean, variance,
                         self.overlap / self.pairs)


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


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
            structure: bool = False) -> Observed:
    """Mean, std, min, max (and excess kurtosis, and the zero and row signals of `Structure`, if asked)
    over the finite values of a tensor: chunks as read, reduced in cache-sized blocks."""
    import numpy as np

    moments = _Moments(kurtosis)
    rows = _Structure(data.dtype, tuple(data.shape)) if structure else None
    if rows is not None and not _logical(data, max_elements):
        rows.valid = False  # a wide transposed view comes in storage order: its rows are not consecutive
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # float64 overflow → a note
        for chunk in data.chunks(max_elements):
            for start in range(0, chunk.size, BLOCK_ELEMENTS):
                block = chunk[start : start + BLOCK_ELEMENTS]
                moments.add(block)
                if rows is not None:
                    rows.add(block)
    observed = moments.result()
    if rows is not None:
        observed = replace(observed, structure=rows.result())
    moments_ = (observed.mean, observed.std, observed.kurtosis)
    if any(v is not None and not math.isfinite(v) for v in moments_):
        return Observed(observed.count, None, None, observed.min, observed.max, observed.nonfinite, None,
                        overflow=True)
    return observed


#: Below this many bytes to read, a process pool costs more to start (spawned interpreters importing numpy)
#: than it saves: the tensors are read in this process whatever `jobs` says.
PARALLEL_BYTES = 64 * 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    import os

    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _observe_job(data: TensorData, max_elements: int, kurtosis: bool, structure: bool) -> Observed:
    """One tensor in a worker: the same function as in-process, so the result is the same bit for bit."""
    return observe(data, max_elements, kurtosis, structure)


def observe_all(layers, on_chunk=None, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
                structure: bool = False, jobs: int | None = 1) -> dict[str, Observed]:
    """Observed statistics per parameter key; `on_chunk(nbytes)` reports progress.

    `jobs` > 1 (None: the usable cores) reads tensors in a pool of that many spawned processes, one whole
    tensor per task, each worker holding one chunk at a time. A tensor is never split across workers, so
    its moments are summed in the same order whatever `jobs` is: the results are identical for every N.
    Data handles hold paths and offsets, not open files, so they travel to a worker by pickle."""
    results: dict[str, Observed] = {}
    todo = []
    for layer in layers:
        reason = getattr(layer.data, "reason", None) or _undecodable(layer)
        if reason:
            results[layer.param] = Observed(math.prod(layer.shape), None, None, None, None, unread=reason)
            continue
        if layer.data is None:
            continue
        results[layer.param] = None  # keeps model order
        todo.append(layer)
    workers = usable_cores() if jobs is None else jobs
    if workers > 1 and len(todo) > 1 and sum(_nbytes(layer.data) for layer in todo) >= PARALLEL_BYTES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_observe_job, layer.data, max_elements, kurtosis, structure) for layer in todo]
            for layer, future in zip(todo, futures):
                results[layer.param] = future.result()
                if on_chunk is not None:
                    on_chunk(_nbytes(layer.data))
        return results
    for layer in todo:
        data = layer.data if on_chunk is None else _Reporting(layer.data, on_chunk)
        results[layer.param] = observe(data, max_elements, kurtosis, structure)
    return results


def _nbytes(data: TensorData) -> int:
    return math.prod(data.shape) * (DTYPES[data.dtype][0] if data.dtype in DTYPES else 1)


def _undecodable(layer) -> str | None:
    """Why a listed tensor has no data handle, where its dtype is the reason (float6, float4, complex)."""
    if layer.data is None and layer.dtype in LOW_PRECISION_FLOATING + ("complex64", "complex128"):
        return f"{layer.dtype} values are not decoded by fancli: no statistics"
    return None


def _logical(data: TensorData, max_elements: int) -> bool:
    """Whether the data's chunks come in logical order (every source's do, but for wide permuted views)."""
    logical = getattr(data, "logical", None)
    return logical(max_elements) if logical is not None else True


class _Reporting:
    """Wraps a TensorData so the bytes of each chunk read are reported (for a progress bar)."""

    def __init__(self, data: TensorData, on_chunk) -> None:
        self.data, self.on_chunk = data, on_chunk
        self.dtype, self.shape = data.dtype, data.shape
        self.itemsize = DTYPES[data.dtype][0] if data.dtype in DTYPES else 1

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return _logical(self.data, max_elements)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS):
        for chunk in self.data.chunks(max_elements):
            yield chunk
            self.on_chunk(chunk.size * self.itemsize)
