"""A row's spectral view as reports carry it and renderers show it (`--spectral`): plain values, computed by
`fancli.spectral`, which this module knows nothing of."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpectralValues:
    """One matrix's numbers, as a row shows them."""

    norm: float | None
    stable_rank: float | None
    ratio: float | None  # ‖W‖₂ / √(fan_out/fan_in)
    expected: float | None  # ‖W‖₂ at init under the row's expectation

    @property
    def observed_ratio(self) -> float | None:
        """‖W‖₂ observed over expected: 1 where the weights are as the init draws them."""
        return self.norm / self.expected if self.norm is not None and self.expected else None


@dataclass(frozen=True)
class SpectralRow:
    """A row's spectral view: the whole weight, its parts (experts, groups, stacked q/k/v or gates: in the
    order they are stored), the spread σ_min/σ_max where computed, and whether it is orthogonal."""

    whole: SpectralValues
    parts: tuple[SpectralValues, ...] = ()
    spread: float | None = None
    orthogonal: bool = False
    unread: str | None = None
