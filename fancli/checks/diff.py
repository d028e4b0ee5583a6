"""`fancli diff A B`: what changed between two checkpoints, tensor by tensor, streamed.

Tensors are paired by parameter key. A pair of the same shape is read in lockstep, one bounded chunk of
each at a time (two handles that chunk differently are re-blocked to a common length, never widened), so
two models of any size need memory near two chunks. Per pair the sums Σa, Σa², Σb, Σb², Σ(b−a)² are
taken in float64 (the moments through `moments.Moments`, shifted, as `--stats` takes them), giving:

- `rel_std_change` = (std_B − std_A) / std_A (sample stds, as torch.std);
- `rel_mean_change` = (mean_B − mean_A) / max(|mean_A|, std_A): relative to the mean where the mean
  dominates (a norm's scale of ones), to the spread where the mean is ≈ 0 (every init's weights), where
  a change relative to a mean of 1e-5 would be noise blown up;
- `rel_diff_norm` = ‖B − A‖ / ‖A‖ (Frobenius), the number to gate on: 0 for a frozen tensor.

A dtype change (a bf16 or FP8 copy) is still compared value by value, as float64 of what is stored.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

from ..layer import Layer, Model
from ..weights.tensors import CHUNK_ELEMENTS

#: Statuses, in the order a reader scans for trouble.
STATUSES = ("added", "removed", "reshaped", "dtype", "changed", "same", "unread")


@dataclass(frozen=True)
class TensorDiff:
    """One parameter key across the two models. Numbers are `None` where they cannot be computed; `note`
    says why."""

    param: str
    status: str  # one of STATUSES
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None = None
    dtype_b: str | None = None
    mean_a: float | None = None
    mean_b: float | None = None
    std_a: float | None = None
    std_b: float | None = None
    rel_std_change: float | None = None
    rel_mean_change: float | None = None
    rel_diff_norm: float | None = None
    max_abs_diff: float | None = None
    note: str | None = None
    #: A zero A with a non-zero difference: the relative norm is infinite (reported as None, gated as past any limit).
    unbounded: bool = False
    delta_spectral_norm: float | None = None  # with --spectral: ‖B − A‖₂ (of the matrix [out, in·k])
    delta_spectral_ratio: float | None = None  # ‖B − A‖₂ / √(fan_out/fan_in): the spectral condition on updates

    def exceeds(self, max_change: float) -> bool:
        """Past the --max-change gate: a relative difference norm above it (or from an all-zero A)."""
        return self.unbounded or (self.rel_diff_norm is not None and self.rel_diff_norm > max_change)


@dataclass(frozen=True)
class DiffResult:
    """Both models' names and formats, and one TensorDiff per key (A's order, then B's new keys)."""

    source_a: str
    format_a: str
    source_b: str
    format_b: str
    tensors: tuple[TensorDiff, ...]
    spectral: bool = False  # ‖B − A‖₂ was asked for (`delta_spectral_norm`)

    def counts(self) -> dict[str, int]:
        found = {status: 0 for status in STATUSES}
        for item in self.tensors:
            found[item.status] += 1
        return {status: n for status, n in found.items() if n}

    def structural(self) -> list[TensorDiff]:
        """Keys added, removed or reshaped: a checkpoint that no longer has the same tensors."""
        return [t for t in self.tensors if t.status in ("added", "removed", "reshaped")]

    def failures(self, max_change: float | None, allow_structural: bool = False) -> list[TensorDiff]:
        """What makes `fancli diff` exit 1: past `max_change` (if given), and unless allowed the structural
        changes (a gate on a fine-tune means nothing if the layer it guards was renamed away)."""
        found = [] if allow_structural else self.structural()
        if max_change is not None:
            found += [t for t in self.tensors if t.exceeds(max_change)]
        return found


def _keys(model: Model) -> dict[str, Layer]:
    """Parameter key -> layer, tied keys included (a key tied in one model is still present)."""
    found: dict[str, Layer] = {}
    for layer in model.layers:
        found.setdefault(layer.param, layer)
        for alias in layer.aliases:
            found.setdefault(alias, layer)
    return found


def diff_models(a: Model, b: Model, filters: tuple[str, ...] = (), max_elements: int = CHUNK_ELEMENTS,
                jobs: int | None = 1, cluster: Any = None, spectral: bool = False) -> DiffResult:
    """Pair the two models' keys (tied keys too) and compare each pair's tensors (one pair in memory per
    worker). Pairs run as `--stats` pieces do (`parallel.executor`: `jobs` threads, or a Dask `cluster`),
    each pair whole in one job, so the numbers are the same for any `jobs`; keys that pair the same two
    tensors (a tie kept in both) are compared once. `spectral` adds ‖B − A‖₂ of each changed ≥2-D pair."""
    if spectral:
        from ..weights.spectral import require_scipy

        require_scipy()
    from ..report import selected_keys
    from ..weights.parallel import executor, ordered
    from ..weights.stats import data_nbytes

    keys_a, keys_b = _keys(a), _keys(b)
    rows: list[TensorDiff | None] = []
    pairs: list[tuple[int, tuple]] = []
    repeats: list[tuple[int, int, str]] = []  # (row, the row of the pair it repeats, its key)
    first: dict[tuple[int, int], int] = {}
    for key, layer in selected_keys(a, filters):
        other = keys_b.get(key)
        if other is None:
            rows.append(TensorDiff(key, "removed", layer.shape, None, layer.dtype, None))
            continue
        seen = first.setdefault((id(layer), id(other)), len(rows))
        if seen != len(rows):
            repeats.append((len(rows), seen, key))
        else:
            pairs.append((len(rows), (key, layer, other, max_elements, spectral)))
        rows.append(None)
    nbytes = sum(data_nbytes(layer.data) for _, (_, layer, other, *_) in pairs if layer.data is not None
                 and other.data is not None)
    with blas_limit(spectral), executor(jobs, cluster, len(pairs), 2 * nbytes) as (running, window):
        for (index, _), row in zip(pairs, ordered(running, window, diff_pair, [args for _, args in pairs])):
            rows[index] = row
    for index, seen, key in repeats:
        rows[index] = replace(rows[seen], param=key)
    for key, layer in selected_keys(b, filters):
        if key not in keys_a:
            rows.append(TensorDiff(key, "added", None, layer.shape, None, layer.dtype))
    return DiffResult(a.source, a.format, b.source, b.format, tuple(rows), spectral)


def blas_limit(spectral: bool) -> Any:
    """`--spectral`'s one BLAS thread for the run (`weights.spectral.one_blas_thread`), else nothing."""
    if not spectral:
        return contextlib.nullcontext()
    from ..weights.spectral import one_blas_thread

    return one_blas_thread()


def diff_pair(param: str, a: Layer, b: Layer, max_elements: int = CHUNK_ELEMENTS,
              spectral: bool = False) -> TensorDiff:
    """One key present in both: reshaped (no numbers), or its values compared (and with `spectral`, a changed
    ≥2-D pair's ‖B − A‖₂)."""
    found = _compared(param, a, b, max_elements)
    if not spectral or found.status not in ("changed", "dtype", "same") or found.rel_diff_norm is None:
        return found
    from ..analysis.fans import layer_fans
    from ..spectral import plan_for
    from ..weights.spectral import delta_norm

    how = plan_for(b)
    if how is None:
        return found
    norm = delta_norm(a.data, b.data, how) if found.status != "same" else 0.0
    fan_in, fan_out = layer_fans(b).pick(False)
    ratio = norm / math.sqrt(fan_out / fan_in) if fan_in and fan_out else None
    return replace(found, delta_spectral_norm=norm, delta_spectral_ratio=ratio)


def _compared(param: str, a: Layer, b: Layer, max_elements: int) -> TensorDiff:
    shape_a, shape_b = tuple(a.shape), tuple(b.shape)
    dtype_a, dtype_b = a.dtype, b.dtype
    if shape_a != shape_b:
        return TensorDiff(param, "reshaped", shape_a, shape_b, dtype_a, dtype_b)
    kind = "dtype" if None not in (dtype_a, dtype_b) and dtype_a != dtype_b else None  # a spec has no dtype
    reason = _unreadable(a) or _unreadable(b)
    if reason:
        return TensorDiff(param, kind or "unread", shape_a, shape_b, dtype_a, dtype_b, note=reason)
    sums = _stream(a.data, b.data, max_elements)
    if isinstance(sums, str):
        return TensorDiff(param, kind or "unread", shape_a, shape_b, dtype_a, dtype_b, note=sums)
    return _result(param, kind, shape_a, dtype_a, dtype_b, *sums)


def _unreadable(layer: Layer) -> str | None:
    if layer.data is None:
        return "no weights to read in this source" if layer.dtype is None else f"{layer.dtype} values are not decoded"
    return getattr(layer.data, "reason", None)


def _aligned(xs: Iterator[Any], ys: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pairs of equal-length pieces from two chunk streams of the same total length: a chunk is cut where
    the other stream's chunk ends, so nothing larger than one chunk of each is ever held."""
    a = b = None
    while True:
        while a is None or a.size == 0:
            a = next(xs, None)
            if a is None:
                break
            a = a.reshape(-1)
        while b is None or b.size == 0:
            b = next(ys, None)
            if b is None:
                break
            b = b.reshape(-1)
        if a is None or b is None:
            if a is not None or b is not None:
                raise ValueError("the two tensors yielded different numbers of values")
            return
        n = min(a.size, b.size)
        yield a[:n], b[:n]
        a, b = a[n:], b[n:]


def _stream(data_a: Any, data_b: Any, max_elements: int) -> tuple | str:
    """Moments of A and B, ‖A‖², ‖B − A‖², max |B − A| and whether any value is NaN/Inf; or why not."""
    import numpy as np

    from ..weights.moments import BLOCK_ELEMENTS, Moments
    from ..weights.stats import in_logical_order

    for data in (data_a, data_b):
        if not in_logical_order(data, max_elements):
            return "a permuted view wider than a chunk is read in storage order: values cannot be paired"
    moments_a, moments_b = Moments(False), Moments(False)
    norm_a = diff2 = 0.0
    largest = 0.0
    nonfinite = False
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for chunk_a, chunk_b in _aligned(iter(data_a.chunks(max_elements)), iter(data_b.chunks(max_elements))):
            for start in range(0, chunk_a.size, BLOCK_ELEMENTS):
                block_a = chunk_a[start : start + BLOCK_ELEMENTS]
                block_b = chunk_b[start : start + BLOCK_ELEMENTS]
                moments_a.add(block_a)
                moments_b.add(block_b)
                a64 = block_a.astype(np.float64)
                delta = block_b.astype(np.float64) - a64
                norm_a += float(np.einsum("i,i->", a64, a64))
                diff2 += float(np.einsum("i,i->", delta, delta))
                if delta.size:
                    top = float(np.abs(delta).max())
                    if not math.isfinite(top) or not math.isfinite(norm_a):
                        nonfinite = True
                    else:
                        largest = max(largest, top)
    return moments_a.result(), moments_b.result(), norm_a, diff2, largest, nonfinite


def _ratio(change: float, scale: float) -> float | None:
    """change / scale, 0 for no change, None for a change from a zero scale."""
    if change == 0:
        return 0.0
    return change / scale if scale > 0 else None


def _result(param: str, kind: str | None, shape: tuple[int, ...], dtype_a: str | None, dtype_b: str | None,
            obs_a: Any, obs_b: Any, norm_a: float, diff2: float, largest: float, nonfinite: bool) -> TensorDiff:
    rel_std = rel_mean = rel_norm = None
    note = None
    if obs_a.std is not None and obs_b.std is not None:
        rel_std = _ratio(obs_b.std - obs_a.std, obs_a.std)
    if obs_a.mean is not None and obs_b.mean is not None:
        rel_mean = _ratio(obs_b.mean - obs_a.mean, max(abs(obs_a.mean), obs_a.std or 0.0))
    unbounded = False
    if nonfinite or not (math.isfinite(norm_a) and math.isfinite(diff2)):
        note = "NaN or Inf values: no difference norm"
        status = kind or "changed"
        largest_shown = None
    else:
        status = kind or ("same" if diff2 == 0 else "changed")
        largest_shown = largest
        if norm_a > 0:
            rel_norm = math.sqrt(diff2) / math.sqrt(norm_a)
        elif diff2 == 0:
            rel_norm = 0.0
        else:
            unbounded = True
            note = "A is all zeros: the relative change is unbounded"
    if math.prod(shape) == 0:
        note = note or "no elements: nothing to compare"
    return TensorDiff(param, status, shape, shape, dtype_a, dtype_b, obs_a.mean, obs_b.mean, obs_a.std, obs_b.std,
                      rel_std, rel_mean, rel_norm, largest_shown, note, unbounded)


# --- folding, as inspect folds ---------------------------------------------------------------------------

#: Sorted neighbours' ‖B−A‖/‖A‖ further apart than this factor start a new group: a tensor that moved
#: twice as far as its siblings gets its own row (a range would hide it).
NORM_RATIO = 2.0


def numel(item: TensorDiff) -> int:
    """The elements of the tensor (of A, or of B where A has none)."""
    shape = item.shape_a if item.shape_a is not None else item.shape_b
    return math.prod(shape) if shape is not None else 0


def _norm_close(a: TensorDiff, b: TensorDiff) -> bool:
    return b.rel_diff_norm <= NORM_RATIO * a.rel_diff_norm


def agreeing(items: list[TensorDiff]) -> list[list[TensorDiff]]:
    """Tensors whose values agree: std A and std B each within inspect's standard-error rule, and
    ‖B−A‖/‖A‖ within a factor NORM_RATIO of its sorted neighbour."""
    from ..folding import by_std, chain

    parts = [items]
    for which in ("std_a", "std_b"):  # n: the tensor's values (NaN/Inf among them are not counted apart here)
        parts = [piece for part in parts for piece in by_std(part, lambda t, w=which: (getattr(t, w), numel(t)))]
    return [piece for part in parts for piece in chain(part, lambda t: t.rel_diff_norm, _norm_close)]


def fold_diffs(tensors: Iterable[TensorDiff], max_change: float | None = None) -> list[Any]:
    """The rows a diff table shows (`fancli.folding.Group`s of TensorDiffs): keys that differ only in their
    numeric components, of one status, shape, dtype and note, on the same side of the --max-change gate, and
    whose values agree (`agreeing`), fold into one; every tensor is in exactly one group."""
    from ..folding import fold

    def same(t: TensorDiff) -> Any:
        gated = max_change is not None and t.exceeds(max_change)
        return (t.status, t.shape_a, t.shape_b, t.dtype_a, t.dtype_b, t.note, t.unbounded, gated)

    return fold(list(tensors), lambda t: t.param, same, agreeing)
