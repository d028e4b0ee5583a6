"""Observed weight statistics, streamed chunk by chunk with float64 accumulation, on every core.

A tensor is cut into fixed pieces (`pieces`: ~32 MiB of whole rows, whatever the number of workers); each
piece is reduced on its own (`reduce_piece`) in blocks that fit in cache (one float64 copy, a sum and a dot
product per block), to its count, mean, centred power sums, extremes and, if asked, its zero count and row
signals; a tensor's pieces are merged pairwise in a fixed binary tree over their index (`_Tree`, `_merge`:
Chan's and Pébay's formulas). So `jobs=1`, a thread pool of any size and a Dask cluster compute the same
numbers bit for bit, and memory stays near one chunk per worker. std is the sample std (torch's default).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Iterator

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


class _Moments:
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


#: A tensor is split into pieces of about this many bytes (whole rows, where rows can be told), each reduced on
#: its own and merged in a fixed order: fixed, so the result is the same bit for bit for any `jobs` or cluster.
#: Tens of MiB: enough pieces to keep two cores busy on a 64 MiB tensor, few enough that scheduling is free.
PIECE_BYTES = 32 * 1024 * 1024


@dataclass
class _Rows:
    """A piece's structure signals, in mergeable form (`_Structure`'s sums turned into counts and centred
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
class _Partial:
    """A piece's moments, centred: n finite values, their mean and the sums of (x − mean)², ³, ⁴."""

    total: int
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    rows: _Rows | None = None


def _from_moments(moments: _Moments) -> _Partial:
    part = _Partial(moments.total)
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


def _from_structure(structure: _Structure) -> _Rows:
    valid = structure.valid and not structure.fill
    rows = _Rows(structure.zeros, structure.count, structure.p2, structure.p4, structure.p6, structure.p8, valid,
                 structure.tiny, structure.row_length)
    if valid and structure.rows:
        rows.rows = structure.rows
        shifted = structure.s1 / structure.rows
        rows.mean = structure.first + shifted
        rows.m2 = max(structure.s2 - shifted * structure.s1, 0.0)
        rows.overlap, rows.pairs = structure.overlap, structure.pairs
        rows.first, rows.last = structure.first_row, structure.previous
    return rows


def _merge_rows(a: _Rows, b: _Rows) -> _Rows:
    merged = _Rows(a.zeros + b.zeros, a.count + b.count, a.p2 + b.p2, a.p4 + b.p4, a.p6 + b.p6, a.p8 + b.p8,
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


def _merge(a: _Partial, b: _Partial) -> _Partial:
    """Two adjacent pieces' moments as one (Chan et al. 1979 for M2; Pébay 2008 for M3 and M4)."""
    merged = _Partial(a.total + b.total, low=min(a.low, b.low), high=max(a.high, b.high))
    if a.rows is not None and b.rows is not None:
        merged.rows = _merge_rows(a.rows, b.rows)
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


class _Tree:
    """Pieces merged in a fixed binary tree over their index, as they arrive in order: a stack of subtrees
    (a binary counter), so the tree depends on the number of pieces only and O(log pieces) partials are held."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, _Partial]] = []

    def add(self, part: _Partial) -> None:
        level = 0
        while self.stack and self.stack[-1][0] == level:
            part = _merge(self.stack.pop()[1], part)
            level += 1
        self.stack.append((level, part))

    def result(self) -> _Partial:
        part = self.stack.pop()[1]
        while self.stack:
            part = _merge(self.stack.pop()[1], part)
        return part


def _observed(part: _Partial, kurtosis: bool, structure: bool) -> Observed:
    if part.n == 0:
        observed = Observed(part.total, None, None, None, None, nonfinite=part.total)
    else:
        n, m2 = part.n, part.m2
        std = math.sqrt(m2 / (n - 1)) if n > 1 else None
        excess = n * part.m4 / (m2 * m2) - 3.0 if kurtosis and m2 > 0 and n > 3 else None
        observed = Observed(part.total, part.mean, std, part.low, part.high, part.total - n, excess)
    if structure and part.rows is not None:
        observed = replace(observed, structure=_structure_result(part.rows))
    moments_ = (observed.mean, observed.std, observed.kurtosis)
    if any(v is not None and not math.isfinite(v) for v in moments_):
        return Observed(observed.count, None, None, observed.min, observed.max, observed.nonfinite, None,
                        overflow=True)
    return observed


def _structure_result(rows: _Rows) -> Structure:
    n = rows.count
    raw = [p / n if n else None for p in (rows.p2, rows.p4, rows.p6, rows.p8)]
    tiny = rows.tiny
    if any(v is not None and not math.isfinite(v) for v in raw):
        raw = [None] * 4  # x⁸ overflowed float64: no structure beyond the zero count
    if not rows.valid or rows.rows < 2 or raw[0] is None:
        return Structure(rows.zeros, tiny, *raw)
    return Structure(rows.zeros, tiny, *raw, rows.rows, rows.row_length, rows.mean, rows.m2 / (rows.rows - 1),
                     rows.overlap / rows.pairs)


@dataclass(frozen=True)
class Piece:
    """Values [start, stop) of one tensor, reduced on their own (a picklable job for a worker)."""

    data: Any  # a TensorData
    start: int
    stop: int
    whole: bool  # read through data.chunks() (a handle that cannot be read by range: one piece)
    kurtosis: bool
    structure: bool
    max_elements: int
    logical: bool = True

    @property
    def nbytes(self) -> int:
        return (self.stop - self.start) * (DTYPES[self.data.dtype][0] if self.data.dtype in DTYPES else 1)


def pieces(data: TensorData, kurtosis: bool = False, structure: bool = False, max_elements: int = CHUNK_ELEMENTS,
           piece_bytes: int | None = None) -> list[Piece]:
    """The pieces a tensor is reduced in: a contiguous one read by range in pieces of ~piece_bytes (default
    PIECE_BYTES; whole rows where its rows can carry row signals), any other as one piece. Depends on the
    tensor alone, never on jobs."""
    piece_bytes = piece_bytes or PIECE_BYTES
    parts = getattr(data, "parts", None)
    if parts is not None:  # a tensor in shards (DCP): each shard's pieces; rows do not run across shards
        handles = parts()
        if len(handles) == 1:
            return pieces(handles[0], kurtosis, structure, max_elements, piece_bytes)
        logical = _logical(data, max_elements)
        return [replace(piece, logical=piece.logical and logical) for handle in handles
                for piece in pieces(handle, kurtosis, structure, max_elements, piece_bytes)]
    shape = tuple(data.shape)
    numel = math.prod(shape)
    logical = _logical(data, max_elements)
    if not (getattr(data, "contiguous", False) and hasattr(data, "range_chunks")) or numel == 0:
        return [Piece(data, 0, numel, True, kurtosis, structure, max_elements, logical)]
    itemsize = DTYPES[data.dtype][0] if data.dtype in DTYPES else 1
    size = max(piece_bytes // itemsize, 1)
    row = numel // shape[0] if len(shape) >= 2 and shape[0] > 0 else 0
    if 0 < row <= MAX_ROW_LENGTH:  # whole rows, so that each piece's row signals are complete
        size = max(size // row, 1) * row
    return [Piece(data, start, min(start + size, numel), False, kurtosis, structure, max_elements, logical)
            for start in range(0, numel, size)]


def _scratch() -> Any:
    """This thread's float64 block, reused for every block it reduces (no allocation per block)."""
    block = getattr(_THREAD, "block", None)
    if block is None:
        import numpy as np

        block = _THREAD.block = np.empty(BLOCK_ELEMENTS)
    return block


_THREAD = threading.local()


def reduce_piece(piece: Piece) -> _Partial:
    """One piece's moments (and structure sums): chunks as read, reduced in cache-sized blocks. Runs in this
    process, a thread, a spawned worker or a Dask worker alike: the same function, the same bits."""
    import numpy as np

    data = piece.data
    moments = _Moments(piece.kurtosis)
    rows = _Structure(data.dtype, tuple(data.shape)) if piece.structure else None
    if rows is not None and not piece.logical:
        rows.valid = False  # a wide transposed view comes in storage order: its rows are not consecutive
    scratch = _scratch()
    chunks = (data.chunks(piece.max_elements) if piece.whole
              else data.range_chunks(piece.start, piece.stop, piece.max_elements))
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # float64 overflow → a note
        for chunk in chunks:
            for start in range(0, chunk.size, BLOCK_ELEMENTS):
                block = chunk[start : start + BLOCK_ELEMENTS]
                moments.add(block, scratch)
                if rows is not None:
                    rows.add(block)
    part = _from_moments(moments)
    if rows is not None:
        part.rows = _from_structure(rows)
    return part


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
            structure: bool = False, piece_bytes: int | None = None) -> Observed:
    """Mean, std, min, max (and excess kurtosis, and the zero and row signals of `Structure`, if asked)
    over the finite values of a tensor: its pieces reduced in order and merged in their fixed tree, as
    `observe_all` does with any number of workers."""
    tree = _Tree()
    for piece in pieces(data, kurtosis, structure, max_elements, piece_bytes):
        tree.add(reduce_piece(piece))
    return _observed(tree.result(), kurtosis, structure)


#: Below this many bytes to read, a pool costs more than it saves (two threads on 24 tensors of 2 MiB took
#: 36 ms against one's 23 ms; at 64 MiB they break even): read in this thread whatever `jobs` says.
PARALLEL_BYTES = 64 * 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    import os

    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def submit(running: Any, fn, *args) -> Any:
    """`running.submit(fn, *args)`; on a Dask Client not `pure` (two equal jobs are still two jobs)."""
    if type(running).__module__.startswith("distributed"):
        return running.submit(fn, *args, pure=False)
    return running.submit(fn, *args)


class _Inline:
    """An executor that runs each job when its result is asked for (`jobs=1`): one task in memory."""

    class _Later:
        def __init__(self, fn, args) -> None:
            self.fn, self.args = fn, args

        def result(self):
            return self.fn(*self.args)

    def submit(self, fn, *args):
        return self._Later(fn, args)


def observe_all(layers, on_chunk=None, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
                structure: bool = False, jobs: int | None = 1, piece_bytes: int | None = None,
                cluster: Any = None) -> dict[str, Observed]:
    """Observed statistics per parameter key; `on_chunk(nbytes)` reports progress as pieces finish.

    Every tensor is cut into the same pieces whatever `jobs` is (`pieces`), each piece reduced on its own
    (`reduce_piece`) and a tensor's pieces merged in a fixed tree (`_Tree`): the results are identical bit for
    bit for every N and on a cluster. `jobs` > 1 (None: the usable cores) runs the pieces in a pool (`pool`);
    `cluster` (a Dask scheduler address, `"local"`, or any executor with `submit`) runs them there instead
    (`fancli.cluster`). Data handles hold paths and offsets, not open files, so a piece travels by pickle."""
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
        todo.append((layer, pieces(layer.data, kurtosis, structure, max_elements, piece_bytes)))
    jobs_ = [(layer, index == len(parts) - 1, piece) for layer, parts in todo for index, piece in enumerate(parts)]
    with executor(jobs, cluster, len(jobs_), sum(_nbytes(layer.data) for layer, _ in todo)) as (running, window):
        _run(jobs_, running, on_chunk, kurtosis, structure, results, window)
    return results


@contextlib.contextmanager
def executor(jobs: int | None, cluster: Any, count: int, nbytes: int) -> Iterator[tuple[Any, int | None]]:
    """Where jobs run, and how many may be submitted ahead of the one being merged: a cluster's Client (all
    at once: its scheduler spreads them), a local pool (a few per worker, so memory stays bounded), or this
    thread one job at a time (`jobs=1`, a single job, or less than PARALLEL_BYTES to read)."""
    if cluster is not None:
        from .cluster import connect

        with connect(cluster) as client:
            yield client, None
        return
    workers = usable_cores() if jobs is None else jobs
    if workers > 1 and count > 1 and nbytes >= PARALLEL_BYTES:
        with pool(min(workers, count)) as running:
            yield running, 2 * workers
        return
    yield _Inline(), 1


def _run(jobs: list, running: Any, on_chunk, kurtosis: bool, structure: bool, results: dict,
         window: int | None) -> None:
    """Each tensor's pieces merged in order as their results come. Consecutive small pieces (small tensors)
    travel as one task (`batches`): a task per 16 KiB bias would cost more to schedule than to reduce."""
    tree = _Tree()
    batched = batches([job[2] for job in jobs])
    parts = (part for done in ordered(running, window, reduce_pieces, [(batch,) for batch in batched])
             for part in done)
    for (layer, last, piece), part in zip(jobs, parts):
        tree.add(part)
        if on_chunk is not None:
            on_chunk(piece.nbytes)
        if last:
            results[layer.param] = _observed(tree.result(), kurtosis, structure)
            tree = _Tree()


def batches(items: list, nbytes: int | None = None, most: int = 1024) -> list[tuple]:
    """Consecutive pieces (or pairs) grouped into tasks of about `nbytes` (default PIECE_BYTES) at most `most`
    items each, in order. Grouping only decides who computes what: each piece is still reduced alone."""
    nbytes = nbytes or PIECE_BYTES
    found: list[tuple] = []
    batch: list = []
    size = 0
    for item in items:
        weight = getattr(item, "nbytes", 0)
        if batch and (size + weight > nbytes or len(batch) >= most):
            found.append(tuple(batch))
            batch, size = [], 0
        batch.append(item)
        size += weight
    if batch:
        found.append(tuple(batch))
    return found


def reduce_pieces(batch: tuple) -> list[_Partial]:
    """A task: its pieces, each reduced on its own, in order."""
    return [reduce_piece(piece) for piece in batch]


def ordered(running: Any, window: int | None, fn, arguments: list[tuple]) -> Iterator[Any]:
    """`fn(*args)` for each args, submitted to `running` in order at most `window` ahead of the result being
    yielded (None: all at once), the results yielded in order: whoever ran them, the caller merges in one order."""
    from collections import deque

    queue: deque = deque()
    pending = iter(arguments)
    while True:
        while window is None or len(queue) < window:
            args = next(pending, None)
            if args is None:
                break
            queue.append(submit(running, fn, *args))
        if not queue:
            return
        yield queue.popleft().result()


def pool(workers: int):
    """The local pool pieces run in: threads, chosen by measurement on the 1.6 GB `.pt` (24 × 64 MiB fp32) on
    this project's 2-core machine, the same pieces through `ThreadPoolExecutor(2)`, `ProcessPoolExecutor(2)`
    with spawn and with forkserver, and one thread, each a fresh process, three rounds:

    - wall: one thread 0.78–0.79 s, threads 0.76–0.79 s, spawn 1.03–1.06 s, forkserver 0.78–1.00 s;
    - CPU (user + sys, children included): one thread 0.97–0.99 s, threads 0.93–0.98 s, spawn 1.26–1.32 s.

    Processes cost ~0.3 s more CPU (two interpreters importing numpy and fancli, every piece pickled) and
    gained nothing. numpy releases the GIL in the copy, sum, dot product and min/max of each 64 Ki-element
    block, and the read releases it too: a second thread waits for a free core, not for the GIL (its
    /proc schedstat shows it runnable, not asleep). That machine rarely had a second core free (two
    *processes* summing in cache each took twice their time alone), so neither pool showed the 2× it
    would on idle cores; threads then cost least, need no `if __name__ == "__main__"` in a library caller,
    and share the process's memory (no piece or result is pickled)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="fancli-stats")


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
