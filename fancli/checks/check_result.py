"""What `fancli.check_init` (and `fancli check`) finds: the drift against the baseline and the judged weights.
Apart from `check` (the drift logic, which the renderers read), so that neither imports the other's
dependents; rendered by the renderers `fancli.outputs` names for the command "check"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..report import Report
    from .check import Change, Deviation, Nonfinite


@dataclass(frozen=True)
class CheckResult:
    """What `fancli.checks.check` found: the changes against the baseline and the judged observed stds."""

    command: ClassVar[str] = "check"  # its renderers' key in `fancli.outputs.RENDERERS`
    report: "Report"
    changes: list["Change"]
    deviations: list["Deviation"]
    baseline: str
    sigmas: float
    nonfinite: list["Nonfinite"] = field(default_factory=list)  # with stats: tensors holding NaN/Inf

    @property
    def ok(self) -> bool:
        return not self.changes and not any(d.flagged for d in self.deviations) and not self.nonfinite

    def render(self, fmt: str = "table") -> str:
        """The drift report as `fancli check --format fmt` prints it: `fancli.render(result, fmt)`, kept for
        the callers that had it."""
        from ..outputs import as_text

        return as_text(self.command, fmt, self)
