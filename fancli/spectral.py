"""The spectral view of each row (`--spectral`): ‖W‖₂, the stable rank, ‖W‖₂ against the spectral condition
√(fan_out/fan_in) (Yang, Simon & Bernstein 2023), and ‖W‖₂ as the row's init would draw it.

The expectation: an i.i.d. init of std σ on an [m, n] matrix has ‖W‖₂ ≈ σ(√m + √n) (the Bai–Yin edge, for
any distribution of that std: normal, uniform of bound b = σ√3, truncated); an orthogonal one of RMS σ has
every singular value σ·√max(m, n) (a block of it, a gate, Wachter's edge below); a constant c has |c|·√(mn);
none where the row has no std. A matrix whose singular values are all equal is `orthogonal`, as told by
σ_min/σ_max, or by the stable rank at its largest where σ_min is not computed. The numbers
come from `weights.spectral`; this module only puts them beside the row's fans and init.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from .kinds import kind
from .spectral_row import SpectralRow, SpectralValues

if TYPE_CHECKING:
    from .layer import Layer
    from .report import Report, Row
    from .weights.moments import Observed
    from .weights.spectral import Plan, Spectral, Spectrum

CONV_NOTE = ("--spectral: a convolution's ‖W‖₂ is that of the matrix [out, in·k] (taps as columns), not of the "
             "convolution on an input of a given size")
UNCONVERGED_NOTE = "--spectral: Lanczos stopped before its tolerance: ‖W‖₂ is its last estimate (a lower bound)"
#: Kinds whose tensors are no layer's weight (quantization scales and metadata, buffers): no operator norm.
NOT_WEIGHTS = frozenset({"quant_scale", "quant_aux", "buffer"})
NONFINITE_NOTE = "--spectral: the tensor holds NaN or inf: it has no ‖W‖₂"


def plan_for(layer: "Layer") -> "Plan | None":
    """How `weights.spectral` cuts a layer's tensor into matrices (None: a tensor below 2 dims)."""
    from .weights.spectral import plan

    return plan(tuple(layer.shape), layer.layout, layer.stacked, layer.groups, kind(layer.kind).fans == "experts")


def read_spectra(layers: "list[Layer]", jobs: int | None = 1, cluster: Any = None,
                 on_chunk: Callable[[int], None] | None = None,
                 stats: tuple[bool, bool] | None = None) -> "tuple[dict[str, Spectral], dict[str, Observed]]":
    """Each ≥2-D weight's spectra, read as `--stats` reads (`jobs` threads or a cluster); a tensor whose
    values are not decoded gets the reason instead. With `stats` (kurtosis, structure: `--stats` is read in
    the same run) a tensor whose pieces come in logical order has its statistics computed from the chunks
    its matrix is filled from (`weights.spectral.spectral_of`) and returned too, so it is read once: the
    caller leaves those to `observe_all` no more. Only those tensors' bytes are reported to `on_chunk` then."""
    from .weights.spectral import Spectral, spectral_all
    from .weights.stats import data_nbytes, merged, pieces, unread_reason

    found: dict[str, Spectral] = {}
    todo = []
    for layer in layers:
        if layer.kind in NOT_WEIGHTS:
            continue
        how = plan_for(layer)
        reason = unread_reason(layer)
        if how is None or (layer.data is None and not reason):
            continue
        if reason:
            found[layer.param] = Spectral(None, unread=reason)
            continue
        parts = tuple(pieces(layer.data, *stats)) if stats else ()
        if not all(part.logical for part in parts):  # a wide transposed view or shards: read again, alone
            parts = ()
        todo.append((layer.param, layer.data, how, parts, data_nbytes(layer.data) if parts or not stats else 0))
    spectra, partials = spectral_all(todo, jobs, cluster, on_chunk)
    observed = {key: merged(parts, *stats) for key, parts in partials.items()} if stats else {}
    return found | spectra, observed


def _ratio(norm: float | None, fan_in: float | None, fan_out: float | None) -> float | None:
    """‖W‖₂ / √(fan_out/fan_in): Θ(1) under the spectral condition; None where a fan is unknown."""
    if norm is None or not fan_in or not fan_out:
        return None
    return norm / math.sqrt(fan_out / fan_in)


def _expected(row: "Row", rows: int, cols: int, whole: tuple[int, int] | None = None) -> float | None:
    """‖W‖₂ at init of an [rows, cols] matrix, a part of a `whole` one where given, under the row's first mode
    (None where it has no std)."""
    values = next(iter(row.inits.values()))
    if values.constant is not None and not values.std:
        return abs(values.constant) * math.sqrt(rows * cols)
    if values.std is None:
        return None
    if values.distribution == "orthogonal":
        return _orthogonal_edge(values.std, rows, cols, whole or (rows, cols))
    return values.std * (math.sqrt(rows) + math.sqrt(cols))


def _orthogonal_edge(rms: float, rows: int, cols: int, whole: tuple[int, int]) -> float:
    """‖W‖₂ of a [rows, cols] block of an orthogonal init of RMS `rms` on `whole`: the whole is N = max(whole)
    rows or columns of an N×N Haar orthogonal matrix times its gain rms·√N. A block with rows + cols > N keeps
    singular values equal to the gain; a smaller one's largest is at Wachter's edge √(α(1−β)) + √(β(1−α)) of
    the gain (α = rows/N, β = cols/N): a gate [H, H] of an LSTM's [H, 4H] recurrent kernel, √3/2."""
    size = max(whole)
    gain = rms * math.sqrt(size)
    if rows + cols > size:
        return gain
    alpha, beta = rows / size, cols / size
    return gain * (math.sqrt(alpha * (1 - beta)) + math.sqrt(beta * (1 - alpha)))


def _values(row: "Row", found: "Spectrum", fan_in: float | None, fan_out: float | None,
            dims: tuple[int, int], whole: tuple[int, int] | None = None) -> SpectralValues:
    """One matrix's numbers (a part of a `whole` one's where given); none but the expectation where its values
    are not finite."""
    norm = found.norm if math.isfinite(found.norm) else None
    return SpectralValues(norm, found.stable_rank if norm else None, _ratio(norm, fan_in, fan_out),
                          _expected(row, *dims, whole))


def spectral_row(row: "Row", found: "Spectral", effective: bool) -> SpectralRow:
    """The row's spectral view from its tensor's spectra: the whole with the fans the row's expectation
    uses, each part with its effective fans (a part's own)."""
    if found.whole is None:
        return SpectralRow(SpectralValues(None, None, None, None), unread=found.unread)
    whole = found.whole
    fan_in, fan_out = row.fans.pick(effective)
    dims = found.block or (whole.rows, whole.cols)  # a block-diagonal operator's edge is each block's
    part_in, part_out = row.fans.pick(True)
    parts = tuple(_values(row, part, part_in, part_out, (part.rows, part.cols), (whole.rows, whole.cols))
                  for part in found.parts)
    return SpectralRow(_values(row, whole, fan_in, fan_out, dims), parts, whole.spread, whole.orthogonal)


def with_spectra(report: "Report", spectra: dict[str, "Spectral"]) -> "Report":
    """The report with each read row's spectral view and the notes that say what its numbers mean."""
    effective = report.fan_convention == "effective"
    rows = []
    for row in report.rows:
        found = spectra.get(row.layer.param)
        if found is None:
            rows.append(row)
            continue
        notes = list(row.notes)
        if found.unread and found.unread not in notes:
            notes.append(found.unread)
        if found.whole is not None and not found.whole.converged:
            notes.append(UNCONVERGED_NOTE)
        elif found.whole is not None and not math.isfinite(found.whole.norm):
            notes.append(NONFINITE_NOTE)
        if row.layer.kernel and found.whole is not None:
            notes.append(CONV_NOTE)
        rows.append(replace(row, spectral=spectral_row(row, found, effective), notes=tuple(notes)))
    return replace(report, rows=tuple(rows))
