"""The spectral view of a weight (`--spectral`): its largest singular value ‖W‖₂, its Frobenius norm and,
where all singular values are computed, its smallest, per matrix and per part of a split one.

A tensor is read whole (bounded chunks decoded into one float32 matrix: the tensor's float32 size) and seen
as the matrix [out, in·k] (a convolution's taps are columns, so its norm is that matrix's, not the
operator's on an image of a given size). Small matrices (the short side ≤ EXACT_DIM) get every singular
value from the eigenvalues of their float64 Gram matrix; larger ones ‖W‖₂ from Lanczos (scipy's ARPACK
`eigsh` on WᵀW as a `LinearOperator`, float32 products in one pass over W, tolerance TOLERANCE) from a fixed
start vector, BLAS on one thread, so every `--jobs` and a cluster compute the same bits: one tensor is one
job, computed by this one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SettingsError
from ..vocab import KERNEL_LAST
from .tensors import CHUNK_ELEMENTS, TensorData

#: A matrix whose short side is at most this gets all its singular values (eigvalsh of its Gram matrix):
#: measured on 2 cores (4096×512: Gram 0.25 s, Lanczos 0.4 s; 1024×1024: 0.34 s against 0.08 s).
EXACT_DIM = 512
#: ARPACK's relative residual tolerance ‖WᵀWy − θy‖ ≤ tol·θ. The eigenvalue's error is at most residual²/gap
#: (Kato–Temple), so σ is within 1e-6 wherever the gap below λ_max is above 5e-5·λ_max: an [8192, 8192]
#: Gaussian (top gap ~n^(-2/3), the hard case) came within 1.2e-9 of a float64 reference converged to 1e-14,
#: in 81 products (1e-6: 101, 1e-7: 111; 1e-4: 61 but 4e-8 off, too near the line).
TOLERANCE = 1e-5
#: Restarts ARPACK may take before it stops; its last estimate is then kept, with a note.
MAX_RESTARTS = 1000
#: Rows of W per block of WᵀW v: a block this size stays in cache between its two products.
GRAM_BLOCK_BYTES = 2 * 1024 * 1024
#: A split row lists its parts up to this many (a depthwise conv's thousands of 1-row blocks only in total).
MAX_PARTS = 1024
#: Whether σ_min/σ_max (or mean σ²/σ_max² where σ_min is not computed) says "all singular values equal".
ORTHOGONAL_SPREAD = 1e-3

MISSING_SCIPY = ("--spectral needs scipy and threadpoolctl: pip install scipy threadpoolctl (the `spectral` extra "
                 "once released)")


@dataclass(frozen=True)
class Spectrum:
    """One matrix's (or block-diagonal operator's) singular values as far as they are computed."""

    rows: int
    cols: int
    norm: float  # ‖W‖₂, the largest singular value
    frobenius_sq: float  # ‖W‖_F² = Σσ²
    smallest: float | None = None  # σ_min of the min(rows, cols) singular values, where all are computed
    converged: bool = True

    @property
    def stable_rank(self) -> float | None:
        """‖W‖_F² / ‖W‖₂²: between 1 (rank one) and min(rows, cols) (every singular value equal)."""
        return self.frobenius_sq / self.norm**2 if self.norm > 0 and math.isfinite(self.norm) else None

    @property
    def spread(self) -> float | None:
        """σ_min/σ_max where every singular value is known; 1 for an orthogonal (times a gain) matrix."""
        return self.smallest / self.norm if self.smallest is not None and self.norm > 0 and math.isfinite(self.norm) \
            else None

    @property
    def orthogonal(self) -> bool:
        """Every singular value equal (an orthogonal init times its gain): σ_min = σ_max, or where σ_min is
        not computed, the stable rank at its largest, min(rows, cols)."""
        if not self.norm > 0:  # zero, or NaN where the values are not finite
            return False
        if self.spread is not None:
            return self.spread >= 1 - ORTHOGONAL_SPREAD
        return self.stable_rank >= (1 - ORTHOGONAL_SPREAD) * min(self.rows, self.cols)


@dataclass(frozen=True)
class Plan:
    """How a tensor is seen as matrices: `matrix` (rows, cols) of its values in order, cut into `count`
    equal parts along `axis` (0: rows, 1: columns); `block_diagonal` where the parts are the operator
    (experts, conv groups: each input meets one part), else the whole matrix is (fused q/k/v, gates)."""

    matrix: tuple[int, int]
    count: int = 1
    axis: int = 0
    block_diagonal: bool = False
    #: A kernel-last depthwise kernel [*k, channels, multiplier]: its rows are (tap, channel) pairs, so they
    #: are put in (channel, tap) order before the parts (one channel's taps each) are cut.
    channels: int = 0


@dataclass(frozen=True)
class Spectral:
    """A tensor's spectral view: the whole operator's spectrum and its parts' (none where not split)."""

    whole: Spectrum | None
    parts: tuple[Spectrum, ...] = ()
    unread: str | None = None
    block: tuple[int, int] | None = None  # each block's [rows, cols] where the whole is block-diagonal


def require_scipy() -> None:
    """One line naming the extra where scipy or threadpoolctl is missing, before any tensor is read."""
    try:
        import scipy.sparse.linalg  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError:
        raise SettingsError(MISSING_SCIPY) from None


def plan(shape: tuple[int, ...], layout: str, stacked: int | None, groups: int | None, experts: bool) -> Plan | None:
    """The matrices of a ≥2-D weight (None below 2 dims or with no values): [out, in·k] as the layout stores
    it (transposes and column orders leave singular values alone), its experts, groups or stacked parts."""
    if len(shape) < 2 or 0 in shape:
        return None
    numel = math.prod(shape)
    if experts and len(shape) == 3:
        return Plan((shape[0] * shape[1], shape[2]), shape[0], 0, True)
    kernel_last = layout in KERNEL_LAST
    cols = shape[-1] if kernel_last else numel // shape[0]
    matrix = (numel // cols, cols)
    out_axis = 1 if kernel_last or layout == "in_out" else 0
    if groups and groups > 1 and kernel_last and len(shape) >= 3 and shape[-2] == groups:
        return Plan(matrix, groups, 0, True, channels=groups)  # depthwise [*k, in, multiplier]
    if groups and groups > 1 and matrix[out_axis] % groups == 0:
        return Plan(matrix, groups, out_axis, True)  # [out, in/g·k] (or its transpose): out cut in g blocks
    if stacked and stacked > 1 and matrix[out_axis] % stacked == 0:
        return Plan(matrix, stacked, out_axis, False)
    return Plan(matrix)


def read_matrix(data: TensorData, rows: int, cols: int, max_elements: int = CHUNK_ELEMENTS) -> Any:
    """The tensor's values in logical order as a float32 [rows, cols] array, filled chunk by chunk. A view
    whose chunks come in storage order (a wide transpose) is read in one chunk, which is in logical order."""
    import numpy as np

    from .stats import in_logical_order

    numel = rows * cols
    if not in_logical_order(data, max_elements):
        max_elements = numel
    out = np.empty(numel, dtype=np.float32)
    at = 0
    for chunk in data.chunks(max_elements):
        out[at : at + chunk.size] = chunk
        at += chunk.size
    if at != numel:
        raise ValueError(f"read {at} values of a tensor of {numel}")
    return out.reshape(rows, cols)


def spectrum(matrix: Any) -> Spectrum:
    """‖W‖₂ and ‖W‖_F² of a 2-D array (and σ_min where its short side is at most EXACT_DIM)."""
    import numpy as np

    rows, cols = matrix.shape
    frobenius_sq = _sum_squares(matrix)
    if not math.isfinite(frobenius_sq):
        return Spectrum(rows, cols, math.nan, frobenius_sq)  # NaN or inf among the values: no norm
    if frobenius_sq == 0:  # every value 0 (a zero-initialised layer): no Lanczos start vector would do
        return Spectrum(rows, cols, 0.0, 0.0, 0.0)
    tall = matrix if rows >= cols else matrix.T
    if min(rows, cols) <= EXACT_DIM:
        values = np.linalg.eigvalsh(_gram(tall))
        top = math.sqrt(max(float(values[-1]), 0.0))
        return Spectrum(rows, cols, top, frobenius_sq, math.sqrt(max(float(values[0]), 0.0)))
    top, converged = _lanczos(tall)
    return Spectrum(rows, cols, top, frobenius_sq, converged=converged)


def _sum_squares(matrix: Any) -> float:
    """Σw² in float64, a block of rows at a time (no float64 copy of the whole matrix)."""
    import numpy as np

    step = max(CHUNK_ELEMENTS // 16 // max(matrix.shape[1], 1), 1)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, matrix.shape[0], step):
            block = matrix[start : start + step].astype(np.float64).ravel()
            total += float(block @ block)
    return total


def _gram(tall: Any) -> Any:
    """WᵀW in float64 of a tall matrix, a block of rows at a time."""
    import numpy as np

    cols = tall.shape[1]
    gram = np.zeros((cols, cols))
    step = max(CHUNK_ELEMENTS // 16 // cols, 1)
    for start in range(0, tall.shape[0], step):
        block = tall[start : start + step].astype(np.float64)
        gram += block.T @ block
    return gram


def _lanczos(tall: Any) -> tuple[float, bool]:
    """The largest singular value of a tall float32 matrix: ARPACK's largest eigenvalue of WᵀW, the products
    in float32 (what the matrix holds), the Lanczos vectors in float64, from a fixed start vector."""
    import numpy as np
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    cols = tall.shape[1]
    step = max(GRAM_BLOCK_BYTES // (4 * cols), 1)
    scale = float(np.max(np.abs(tall)))  # > 0: a zero matrix never gets here

    def gram_times(vector: Any) -> Any:
        """(W/s)ᵀ(W/s) v in one pass over W: each block of rows is used twice while it is in cache (B v, then
        Bᵀ(B v)), summed in float64 in a fixed order. Dividing by s = max|w| after each product keeps float32
        from underflowing (weights of 1e-30) or overflowing (1e18) where W's own squares would."""
        x = vector.astype(np.float32).ravel()
        out = np.zeros(cols)
        for start in range(0, tall.shape[0], step):
            block = tall[start : start + step]
            out += ((block @ x) / np.float32(scale)) @ block / scale
        return out

    operator = LinearOperator((cols, cols), matvec=gram_times, dtype=np.float64)
    start = np.random.RandomState(0).standard_normal(cols)
    try:
        value = eigsh(operator, k=1, which="LA", v0=start, tol=TOLERANCE, maxiter=MAX_RESTARTS,
                      return_eigenvectors=False)[0]
        converged = True
    except ArpackNoConvergence as stopped:
        value = stopped.eigenvalues[0] if len(stopped.eigenvalues) else math.nan
        converged = False
    except ArpackError:  # ARPACK's own failure (a start vector WᵀW maps to 0): no estimate, said in a note
        value, converged = math.nan, False
    return scale * math.sqrt(max(float(value), 0.0)), converged


def one_blas_thread() -> Any:
    """BLAS limited to one thread (process-wide) while the jobs run: `--jobs N` (or a cluster's workers, which
    Dask starts with one BLAS thread) is the parallelism, as for `--stats`; a BLAS pool inside each job would
    oversubscribe the cores. On this project's shared 2-core machine a [8192, 8192] WᵀW v took 17 ms on one
    thread (one pass, 2 MiB blocks) against 37 ms on two (two passes; 95 ms in blocks). One thread also keeps
    the sums' order the same wherever a job runs. Taken once per run: setting it costs ~2 ms."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def combine(parts: list[Spectrum], rows: int, cols: int) -> Spectrum:
    """A block-diagonal operator's spectrum from its blocks': the union of their singular values."""
    smallest = [part.smallest for part in parts]
    return Spectrum(rows, cols, max(part.norm for part in parts), math.fsum(part.frobenius_sq for part in parts),
                    None if None in smallest else min(smallest), all(part.converged for part in parts))


def spectral_of(data: TensorData, how: Plan, pieces: tuple = ()) -> tuple[Spectral, list]:
    """A tensor's spectral view as `how` cuts it: one job, run wherever `--jobs` or a cluster puts it. With
    `pieces` (its `--stats` pieces, all in logical order) the matrix is filled by `stats.reduce_piece` from
    the very chunks it reduces, piece after piece, and their partials come back too: the statistics bit for
    bit `observe_all`'s, the matrix value for value `read_matrix`'s, each byte read once."""
    if not pieces:
        return spectral_of_matrix(read_matrix(data, *how.matrix), how), []
    import numpy as np

    from .stats import reduce_piece

    matrix = np.empty(how.matrix[0] * how.matrix[1], dtype=np.float32)
    parts = [reduce_piece(piece, matrix) for piece in pieces]
    return spectral_of_matrix(matrix.reshape(how.matrix), how), parts


def delta_norm(a: TensorData, b: TensorData, how: Plan) -> float:
    """‖B − A‖₂ of two tensors of one shape (`diff --spectral`), the difference taken in float32 in place of
    B's copy: the two tensors' float32 size in memory, as `how` cuts them (a block-diagonal operator's max)."""
    changed = read_matrix(b, *how.matrix)
    changed -= read_matrix(a, *how.matrix)
    return spectral_of_matrix(changed, how).whole.norm


def spectral_of_matrix(matrix: Any, how: Plan) -> Spectral:
    """The spectral view of a matrix already read, as `how` cuts it."""
    rows, cols = how.matrix
    if how.count == 1:
        return Spectral(spectrum(matrix))
    if how.channels:  # (tap, channel) rows to (channel, tap): a copy, so at most twice the tensor's float32
        matrix = matrix.reshape(-1, how.channels, cols).transpose(1, 0, 2).reshape(rows, cols)
    size = (rows if how.axis == 0 else cols) // how.count
    parts = [spectrum(matrix[i * size : (i + 1) * size] if how.axis == 0 else matrix[:, i * size : (i + 1) * size])
             for i in range(how.count)]
    if how.block_diagonal:
        return Spectral(combine(parts, rows, cols), tuple(parts) if how.count <= MAX_PARTS else (),
                        block=(parts[0].rows, parts[0].cols))
    return Spectral(spectrum(matrix), tuple(parts) if how.count <= MAX_PARTS else ())


def spectral_all(jobs_: list[tuple[str, TensorData, Plan, tuple, int]], jobs: int | None = 1, cluster: Any = None,
                 on_chunk: Callable[[int], None] | None = None) -> tuple[dict[str, Spectral], dict[str, list]]:
    """Each key's spectral view (and, for a job given its `--stats` pieces, their partials): one job per
    tensor on `jobs` threads or a cluster, as `--stats` runs its pieces (`parallel.executor`), results taken
    in order; the numbers do not depend on where they ran. Each job is (key, data, plan, pieces, the bytes
    `on_chunk` counts for it). A local pool holds at most one tensor per thread in flight (each job holds its
    tensor's float32 copy)."""
    from .parallel import executor, ordered
    from .stats import data_nbytes

    found: dict[str, Spectral] = {}
    partials: dict[str, list] = {}
    sizes = [data_nbytes(data) for _, data, _, _, _ in jobs_]
    with one_blas_thread(), executor(jobs, cluster, len(jobs_), sum(sizes)) as (running, window):
        window = window and max(window // 2, 1)
        results = ordered(running, window, spectral_of, [(data, how, pieces) for _, data, how, pieces, _ in jobs_])
        for (key, _, _, pieces, counted), (result, parts) in zip(jobs_, results):
            found[key] = result
            if pieces:
                partials[key] = parts
            if on_chunk is not None and counted:
                on_chunk(counted)
    return found, partials
