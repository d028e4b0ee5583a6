"""Observed weight statistics, streamed chunk by chunk with float64 accumulation, on every core.

A tensor is cut into fixed pieces (`pieces`: ~32 MiB of whole rows, whatever the number of workers); each
piece is reduced on its own (`reduce_piece`) in blocks that fit in cache (one float64 copy, a sum and a dot
product per block), to its count, mean, centred power sums, extremes and, if asked, its zero count and row
signals; a tensor's pieces are merged pairwise in a fixed binary tree over their index (the arithmetic:
`moments`; where pieces run: `parallel`). So `jobs=1`, a thread pool of any size and a Dask cluster compute
the same numbers bit for bit, and memory stays near one chunk per worker. std is the sample std (torch's).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Iterable

from .dtypes import DTYPES, LOW_PRECISION_FLOATING
from .moments import (
    BLOCK_ELEMENTS,
    MAX_ROW_LENGTH,
    Moments,
    Observed,
    Partial,
    RowSignals,
    Tree,
    from_moments,
    from_signals,
    to_observed,
)
from .parallel import executor, ordered
from .tensors import CHUNK_ELEMENTS, TensorData

#: A tensor is split into pieces of about this many bytes (whole rows, where rows can be told), each reduced on
#: its own and merged in a fixed order: fixed, so the result is the same bit for bit for any `jobs` or cluster.
#: Tens of MiB: enough pieces to keep two cores busy on a 64 MiB tensor, few enough that scheduling is free.
PIECE_BYTES = 32 * 1024 * 1024


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
    if parts is not None:  # a tensor in shards (DCP): each shard's pieces; row signals are not carried across
        handles = parts()  # shards, even where the shards are rows in order
        if len(handles) == 1:
            return pieces(handles[0], kurtosis, structure, max_elements, piece_bytes)
        return [replace(piece, logical=False) for handle in handles
                for piece in pieces(handle, kurtosis, structure, max_elements, piece_bytes)]
    shape = tuple(data.shape)
    numel = math.prod(shape)
    logical = in_logical_order(data, max_elements)
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


def _read_buffer(nbytes: int) -> bytearray:
    """This thread's read buffer, grown to `nbytes` when needed and reused: a chunk is reduced before the
    next is read into it (no fresh 16 MiB allocation, and its page faults, per read)."""
    buffer = getattr(_THREAD, "read", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _THREAD.read = bytearray(nbytes)
    return buffer


_THREAD = threading.local()


def reduce_piece(piece: Piece, into: Any = None) -> Partial:
    """One piece's moments (and structure sums): chunks as read, reduced in cache-sized blocks. Runs in this
    process, a thread, a spawned worker or a Dask worker alike: the same function, the same bits. `into` (a
    flat float32 array of the whole tensor: `--spectral`'s matrix) also gets the piece's values at their place
    from the same chunks, so `--stats --spectral` reads each byte once (a piece in logical order only)."""
    import numpy as np

    data = piece.data
    moments = Moments(piece.kurtosis)
    rows = RowSignals(data.dtype, tuple(data.shape)) if piece.structure else None
    if rows is not None and not piece.logical:
        rows.valid = False  # a wide transposed view comes in storage order: its rows are not consecutive
    scratch = _scratch()
    if piece.whole:
        chunks = data.chunks(piece.max_elements)
    else:
        itemsize = DTYPES[data.dtype][0]
        buffer = _read_buffer(min(piece.max_elements, piece.stop - piece.start) * itemsize)
        chunks = data.range_chunks(piece.start, piece.stop, piece.max_elements, buffer)
    at = piece.start
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # float64 overflow → a note
        for chunk in chunks:
            if into is not None:
                into[at : at + chunk.size] = chunk
                at += chunk.size
            for start in range(0, chunk.size, BLOCK_ELEMENTS):
                block = chunk[start : start + BLOCK_ELEMENTS]
                moments.add(block, scratch)
                if rows is not None:
                    rows.add(block)
    if into is not None and at != piece.stop:
        raise ValueError(f"read {at - piece.start} values of a piece of {piece.stop - piece.start}")
    part = from_moments(moments)
    if rows is not None:
        part.rows = from_signals(rows)
    return part


def observe(data: TensorData, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
            structure: bool = False, piece_bytes: int | None = None) -> Observed:
    """Mean, std, min, max (and excess kurtosis, and the zero and row signals of `Structure`, if asked)
    over the finite values of a tensor: its pieces reduced in order and merged in their fixed tree, as
    `observe_all` does with any number of workers."""
    return merged((reduce_piece(piece) for piece in pieces(data, kurtosis, structure, max_elements, piece_bytes)),
                  kurtosis, structure)


def merged(parts: Iterable[Partial], kurtosis: bool, structure: bool) -> Observed:
    """A tensor's statistics from its pieces' partials, in order, merged in their fixed tree (as `_run` merges
    them) as they come."""
    tree = Tree()
    for part in parts:
        tree.add(part)
    return to_observed(tree.result(), kurtosis, structure)


def observe_all(layers, on_chunk=None, max_elements: int = CHUNK_ELEMENTS, kurtosis: bool = False,
                structure: bool = False, jobs: int | None = 1, piece_bytes: int | None = None,
                cluster: Any = None) -> dict[str, Observed]:
    """Observed statistics per parameter key; `on_chunk(nbytes)` reports progress as pieces finish.

    Every tensor is cut into the same pieces whatever `jobs` is (`pieces`), each piece reduced on its own
    (`reduce_piece`) and a tensor's pieces merged in a fixed tree (`Tree`): the results are identical bit for
    bit for every N and on a cluster. `jobs` > 1 (None: the usable cores) runs the pieces in a pool (`pool`);
    `cluster` (a Dask scheduler address, `"local"`, or any executor with `submit`) runs them there instead
    (`fancli.weights.cluster`). Data handles hold paths and offsets, not open files, so a piece travels by pickle."""
    results: dict[str, Observed] = {}
    todo = []
    for layer in layers:
        reason = unread_reason(layer)
        if reason:
            results[layer.param] = Observed(math.prod(layer.shape), None, None, None, None, unread=reason)
            continue
        if layer.data is None:
            continue
        results[layer.param] = None  # keeps model order
        todo.append((layer, pieces(layer.data, kurtosis, structure, max_elements, piece_bytes)))
    jobs_ = [(layer, index == len(parts) - 1, piece) for layer, parts in todo for index, piece in enumerate(parts)]
    with executor(jobs, cluster, len(jobs_), sum(data_nbytes(layer.data) for layer, _ in todo)) as (running, window):
        _run(jobs_, running, on_chunk, kurtosis, structure, results, window)
    return results


def _run(jobs: list, running: Any, on_chunk, kurtosis: bool, structure: bool, results: dict,
         window: int | None) -> None:
    """Each tensor's pieces merged in order as their results come. Consecutive small pieces (small tensors)
    travel as one task (`batches`): a task per 16 KiB bias would cost more to schedule than to reduce."""
    tree = Tree()
    batched = batches([job[2] for job in jobs])
    parts = (part for done in ordered(running, window, reduce_pieces, [(batch,) for batch in batched])
             for part in done)
    for (layer, last, piece), part in zip(jobs, parts):
        tree.add(part)
        if on_chunk is not None:
            on_chunk(piece.nbytes)
        if last:
            results[layer.param] = to_observed(tree.result(), kurtosis, structure)
            tree = Tree()


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


def reduce_pieces(batch: tuple) -> list[Partial]:
    """A task: its pieces, each reduced on its own, in order."""
    return [reduce_piece(piece) for piece in batch]


def data_nbytes(data: TensorData) -> int:
    """The bytes a tensor's data holds (its dtype's size × elements; 1 byte each for a dtype not in DTYPES)."""
    return math.prod(data.shape) * (DTYPES[data.dtype][0] if data.dtype in DTYPES else 1)


def unread_reason(layer) -> str | None:
    """Why a listed tensor's values are not read (its handle's reason, or a dtype fancli does not decode)."""
    return getattr(layer.data, "reason", None) or _undecodable(layer)


def _undecodable(layer) -> str | None:
    """Why a listed tensor has no data handle, where its dtype is the reason (float6, float4, complex)."""
    if layer.data is None and layer.dtype in LOW_PRECISION_FLOATING + ("complex64", "complex128"):
        return f"{layer.dtype} values are not decoded by fancli: no statistics"
    return None


def in_logical_order(data: TensorData, max_elements: int) -> bool:
    """Whether the data's chunks come in logical order (every source's do, but for wide permuted views)."""
    logical = getattr(data, "logical", None)
    return logical(max_elements) if logical is not None else True
