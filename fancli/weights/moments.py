"""The arithmetic of observed statistics: what a tensor's values look like (`Observed`, `Structure`), the
running sums one piece of a tensor is reduced to (`Moments`, `RowSignals`), and how pieces merge exactly
(`merge`, Chan's and Pébay's formulas, in the fixed binary tree of `Tree`). `stats` cuts tensors into pieces
and runs them; this module only adds numbers, so any worker computes the same bits."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


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


class RowSignals:
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
        self.first_row = None  # the first whole row (float64), for the overlap across a piece boundary
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
            self.first_row = block[0].copy()
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


#: Elements reduced at a time: small enough that the float64 copy and its reductions stay in cache.
BLOCK_ELEMENTS = 1 << 16


class Moments:
    """Running count, shifted power sums and extremes. Sums are taken around a shift (the first block's mean,
    or 0 where that mean is within a std of 0), so the central moments lose nothing to cancellation when the
    mean is far from 0."""

    def __init__(self, kurtosis: bool) -> None:
        self.kurtosis = kurtosis  # third and fourth powers cost two more passes per block: only when asked
        self.total = self.count = 0
        self.shift: float | None = None
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, block, scratch=None) -> None:
        """One block; `scratch` (float64, at least the block's size) spares a fresh copy's allocation."""
        import numpy as np

        self.total += block.size
        if scratch is None:
            values = block.astype(np.float64)
        else:
            values = scratch[: block.size]
            np.copyto(values, block, casting="unsafe")
        if self.shift is None:
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                return
            mean = float(finite.mean())
            # About 0 when the mean is within a std of it (every init's weights): Σx² − (Σx)²/n then loses at
            # most a bit or two, and a pass per block is saved; about the mean otherwise (a norm's ones).
            self.shift = 0.0 if abs(mean) <= float(finite.std()) else mean
        if self.shift:
            values -= self.shift
        total = float(values.sum())
        if not math.isfinite(total):  # NaN or Inf in this block: keep the finite values only
            finite = np.isfinite(values)
            values, block = values[finite], block[finite]
            if values.size == 0:
                return
            total = float(values.sum())
        self.count += values.size
        self.s1 += total
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


@dataclass
class Rows:
    """A piece's structure signals, in mergeable form (`RowSignals`'s sums turned into counts and centred
    sums), with the piece's first and last whole row, so that the overlap of two rows on either side of a
    piece boundary is counted when the pieces are merged."""

    zeros: int
    count: int
    p2: float
    p4: float
    p6: float
    p8: float
    valid: bool
    tiny: float | None = None
    row_length: int = 0
    rows: int = 0
    mean: float = 0.0  # of a row's sum of squares
    m2: float = 0.0  # centred sum of squares of a row's sum of squares
    overlap: float = 0.0
    pairs: int = 0
    first: Any = None  # float64 rows
    last: Any = None


@dataclass
class Partial:
    """A piece's moments, centred: n finite values, their mean and the sums of (x − mean)², ³, ⁴."""

    total: int
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    rows: Rows | None = None


def from_moments(moments: Moments) -> Partial:
    part = Partial(moments.total)
    if moments.count == 0:
        return part
    n = moments.count
    d = moments.s1 / n  # mean of the shifted values
    part.n, part.mean = n, moments.shift + d
    part.m2 = max(moments.s2 - d * moments.s1, 0.0)
    if moments.kurtosis:
        part.m3 = moments.s3 - 3 * d * moments.s2 + 2 * n * d**3
        part.m4 = moments.s4 - 4 * d * moments.s3 + 6 * d * d * moments.s2 - 3 * n * d**4
    part.low, part.high = moments.low, moments.high
    return part


def from_signals(structure: RowSignals) -> Rows:
    valid = structure.valid and not structure.fill
    rows = Rows(structure.zeros, structure.count, structure.p2, structure.p4, structure.p6, structure.p8, valid,
                 structure.tiny, structure.row_length)
    if valid and structure.rows:
        rows.rows = structure.rows
        shifted = structure.s1 / structure.rows
        rows.mean = structure.first + shifted
        rows.m2 = max(structure.s2 - shifted * structure.s1, 0.0)
        rows.overlap, rows.pairs = structure.overlap, structure.pairs
        rows.first, rows.last = structure.first_row, structure.previous
    return rows


def merge_rows(a: Rows, b: Rows) -> Rows:
    merged = Rows(a.zeros + b.zeros, a.count + b.count, a.p2 + b.p2, a.p4 + b.p4, a.p6 + b.p6, a.p8 + b.p8,
                   a.valid and b.valid, a.tiny, a.row_length)
    if not merged.valid:
        return merged
    if not a.rows or not b.rows:
        whole = a if a.rows else b
        merged.rows, merged.mean, merged.m2 = whole.rows, whole.mean, whole.m2
        merged.overlap, merged.pairs, merged.first, merged.last = whole.overlap, whole.pairs, whole.first, whole.last
        return merged
    n = a.rows + b.rows
    delta = b.mean - a.mean
    merged.rows, merged.mean = n, a.mean + delta * b.rows / n
    merged.m2 = a.m2 + b.m2 + delta * delta * a.rows * b.rows / n
    dot = float(a.last @ b.first)  # the two rows either side of the boundary are neighbours
    merged.overlap, merged.pairs = a.overlap + b.overlap + dot * dot, a.pairs + b.pairs + 1
    merged.first, merged.last = a.first, b.last
    return merged


def merge(a: Partial, b: Partial) -> Partial:
    """Two adjacent pieces' moments as one (Chan et al. 1979 for M2; Pébay 2008 for M3 and M4)."""
    merged = Partial(a.total + b.total, low=min(a.low, b.low), high=max(a.high, b.high))
    if a.rows is not None and b.rows is not None:
        merged.rows = merge_rows(a.rows, b.rows)
    if not a.n or not b.n:
        whole = a if a.n else b
        merged.n, merged.mean, merged.m2, merged.m3, merged.m4 = whole.n, whole.mean, whole.m2, whole.m3, whole.m4
        return merged
    na, nb = a.n, b.n
    n = na + nb
    delta = b.mean - a.mean
    share = delta / n
    merged.n, merged.mean = n, a.mean + share * nb
    merged.m2 = a.m2 + b.m2 + delta * share * na * nb
    merged.m3 = (a.m3 + b.m3 + delta * share * share * na * nb * (na - nb)
                 + 3 * share * (na * b.m2 - nb * a.m2))
    merged.m4 = (a.m4 + b.m4 + delta * share**3 * na * nb * (na * na - na * nb + nb * nb)
                 + 6 * share * share * (na * na * b.m2 + nb * nb * a.m2) + 4 * share * (na * b.m3 - nb * a.m3))
    return merged


class Tree:
    """Pieces merged in a fixed binary tree over their index, as they arrive in order: a stack of subtrees
    (a binary counter), so the tree depends on the number of pieces only and O(log pieces) partials are held."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, Partial]] = []

    def add(self, part: Partial) -> None:
        level = 0
        while self.stack and self.stack[-1][0] == level:
            part = merge(self.stack.pop()[1], part)
            level += 1
        self.stack.append((level, part))

    def result(self) -> Partial:
        part = self.stack.pop()[1]
        while self.stack:
            part = merge(self.stack.pop()[1], part)
        return part


def to_observed(part: Partial, kurtosis: bool, structure: bool) -> Observed:
    if part.n == 0:
        observed = Observed(part.total, None, None, None, None, nonfinite=part.total)
    else:
        n, m2 = part.n, part.m2
        std = math.sqrt(m2 / (n - 1)) if n > 1 else None
        excess = n * part.m4 / (m2 * m2) - 3.0 if kurtosis and m2 > 0 and n > 3 else None
        observed = Observed(part.total, part.mean, std, part.low, part.high, part.total - n, excess)
    if structure and part.rows is not None:
        observed = replace(observed, structure=structure_result(part.rows))
    moments_ = (observed.mean, observed.std, observed.kurtosis)
    if any(v is not None and not math.isfinite(v) for v in moments_):
        return Observed(observed.count, None, None, observed.min, observed.max, observed.nonfinite, None,
                        overflow=True)
    return observed


def structure_result(rows: Rows) -> Structure:
    n = rows.count
    raw = [p / n if n else None for p in (rows.p2, rows.p4, rows.p6, rows.p8)]
    tiny = rows.tiny
    if any(v is not None and not math.isfinite(v) for v in raw):
        raw = [None] * 4  # x⁸ overflowed float64: no structure beyond the zero count
    if not rows.valid or rows.rows < 2 or raw[0] is None:
        return Structure(rows.zeros, tiny, *raw)
    return Structure(rows.zeros, tiny, *raw, rows.rows, rows.row_length, rows.mean, rows.m2 / (rows.rows - 1),
                     rows.overlap / rows.pairs)
