"""Which init explains a layer's weights: every named scheme × mode × nonlinearity is a candidate with
an expected std and distribution; the observed std is judged with the standard error of a sample std,
and the shape with the excess kurtosis (uniform −1.2, normal 0, normal cut at ±2σ −0.63).

Candidates that predict the same std and distribution cannot be told apart from the weights (kaiming
with relu equals leaky_relu(0); fan_in equals fan_out on a square layer): they form one group, and a
model-wide vote settles the mode where a layer alone cannot.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

from ..layer import Layer
from .fans import LayerFans
from .gains import gain
from .schemes import variance_scaling
from .torch_defaults import torch_default

#: A candidate fits when its std and kurtosis errors lie within this radius (in standard errors): a true
#: init falls outside it in 0.2% of layers (χ² with 2 degrees of freedom), a 1.5× scaled one is ≥ 7 away
#: from its own init once n ≥ 100, and near-coincidences with another init (2% apart) are turned away.
LIMIT = 3.5
#: The nonlinearities candidates are tried with (torch's selu gain is left out: torch itself advises
#: 'linear' for self-normalising nets), and a fixed std some codebases use (GPT-2, BERT).
NONLINEARITIES = (("relu", None), ("linear", None), ("tanh", None))
FIXED_NORMAL_STD = 0.02


def _truncated_kurtosis(a: float = 2.0) -> float:
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    variance = 1 - 2 * a * phi / mass
    fourth = 3 - 2 * phi * (a**3 + 3 * a) / mass
    return fourth / variance**2 - 3


KURTOSIS = {"normal": 0.0, "uniform": -1.2, "truncated_normal": _truncated_kurtosis()}


@dataclass(frozen=True)
class Candidate:
    scheme: str
    mode: str | None
    nonlinearity: str | None
    param: float | None
    std: float
    distribution: str

    @property
    def label(self) -> str:
        if self.scheme == "torch_default":
            return "torch default"
        if self.scheme == "normal":
            return f"normal(std={self.std:g})"
        what = self.nonlinearity if self.param is None else f"{self.nonlinearity}({self.param:g})"
        return ", ".join(part for part in (self.scheme, self.mode, what) if part)


@dataclass(frozen=True)
class Inference:
    """The init that best explains a layer's weights, or "unknown/trained"."""

    label: str
    confidence: str  # high (one explanation fits), medium (a clear best), low (close rivals), none
    best: Candidate | None = None
    std_errors: float | None = None  # (observed − expected std) / its standard error
    kurtosis_errors: float | None = None
    alternatives: tuple[str, ...] = ()  # other explanations that also fit
    note: str | None = None


def candidates(layer: Layer, fans: LayerFans) -> list[Candidate]:
    """Every init fancli knows, with the std it would give this tensor (torch's fans, as torch's init uses)."""
    found: list[Candidate] = []
    fan_in, fan_out = fans.fan_in, fans.fan_out
    for name, param in NONLINEARITIES:
        g = gain(name, param)
        for scheme, distribution in (("kaiming_normal", "normal"), ("kaiming_uniform", "uniform"),
                                     ("truncated_normal", "truncated_normal")):
            for mode in ("fan_in", "fan_out"):
                values = variance_scaling(g, fan_in, fan_out, mode, distribution)
                if values.std:
                    found.append(Candidate(scheme, mode, name, param, values.std, distribution))
        for scheme, distribution in (("xavier_normal", "normal"), ("xavier_uniform", "uniform")):
            values = variance_scaling(g, fan_in, fan_out, "fan_avg", distribution)
            if values.std:
                found.append(Candidate(scheme, None, name, param, values.std, distribution))
    default = torch_default(layer, fan_in, fan_out, "fan_in")
    if default.std:
        distribution = "normal" if default.bound is None else "uniform"
        found.append(Candidate("torch_default", None, None, None, default.std, distribution))
    found.append(Candidate("normal", None, None, None, FIXED_NORMAL_STD, "normal"))
    return found


def _same(a: Candidate, b: Candidate) -> bool:
    return a.distribution == b.distribution and abs(a.std - b.std) <= 1e-9 * a.std


def _scores(candidate: Candidate, std: float, kurtosis: float | None, n: int) -> tuple[float, float | None]:
    excess = KURTOSIS[candidate.distribution]
    z_std = (std - candidate.std) / (candidate.std * math.sqrt((excess + 2) / (4 * n)))
    z_kurt = None if kurtosis is None else (kurtosis - excess) / math.sqrt(24 / n)
    return z_std, z_kurt


def infer(layer: Layer, fans: LayerFans, std: float | None, kurtosis: float | None, n: int) -> Inference | None:
    """The best explanation of one tensor's observed std and kurtosis; None below 2 dims."""
    if len(layer.shape) < 2 or fans.fan_in is None:
        return None
    if std is None or n < 30:
        return Inference("unknown", "none", note="too few values to judge")
    scored = []
    for candidate in candidates(layer, fans):  # in order of preference: kaiming before xavier, relu first
        z_std, z_kurt = _scores(candidate, std, kurtosis, n)
        score = z_std * z_std + (z_kurt or 0.0) ** 2
        if score <= LIMIT * LIMIT:
            scored.append((score, candidate, z_std, z_kurt))
    if not scored:
        return Inference("unknown/trained", "none", note="no init fancli knows gives this std and shape")
    top = min(scored, key=lambda item: item[0])
    score, best, z_std, z_kurt = next(item for item in scored if _same(item[1], top[1]))  # the preferred name
    rivals: list[tuple[float, Candidate]] = []
    for other_score, other, _, _ in sorted(scored, key=lambda item: item[0]):
        if not _same(other, best) and not any(_same(other, r) for _, r in rivals):
            rivals.append((other_score, other))
    confidence = "high" if not rivals else "medium" if rivals[0][0] - score >= 16 else "low"
    group = [c for _, c, _, _ in scored if _same(c, best)]
    modes = {c.mode for c in group if c.scheme == best.scheme and c.nonlinearity == best.nonlinearity}
    note = "fan_in = fan_out here: the mode cannot be told from this layer alone" if len(modes) > 1 else None
    return Inference(best.label, confidence, best, z_std, z_kurt, tuple(r.label for _, r in rivals[:3]), note)


def settle_modes(inferences: dict[str, Inference]) -> dict[str, Inference]:
    """Where a layer cannot tell fan_in from fan_out, take the mode the model's other layers show for the
    same scheme and nonlinearity (torchvision's ResNets: fan_out)."""
    votes: Counter = Counter()
    for found in inferences.values():
        if found.best and found.best.mode and not found.note:
            votes[(found.best.scheme, found.best.nonlinearity, found.best.mode)] += 1
    settled = {}
    for param, found in inferences.items():
        if found.best and found.note and found.best.mode:
            key = (found.best.scheme, found.best.nonlinearity)
            tally = {mode: votes[(*key, mode)] for mode in ("fan_in", "fan_out")}
            if max(tally.values()) > 0 and tally["fan_in"] != tally["fan_out"]:
                mode = max(tally, key=tally.get)
                best = replace(found.best, mode=mode)
                found = replace(found, label=best.label, best=best,
                                note=f"fan_in = fan_out here: mode {mode} as in {tally[mode]} other layers")
        settled[param] = found
    return settled
