"""Which init explains a layer's weights: every named scheme × mode × nonlinearity is a candidate with
an expected std and distribution; the observed std is judged with the standard error of a sample std,
and the shape with the excess kurtosis (uniform −1.2, normal 0, normal cut at ±2σ −0.63).

Every candidate is i.i.d. zero-mean draws, and that fixes more than the std: before any candidate is
scored, the mean is tested against its standard error σ/√n, the count of exact zeros against what the
dtype's rounding gives, and (for ≥ 2 dims) the spread of row norms and the overlap of adjacent rows
against what i.i.d. values give. A tensor that fails one is "unknown/trained", with a note that says which.

Candidates that predict the same std and distribution cannot be told apart from the weights (kaiming
with relu fan_in equals kaiming linear fan_out on a [n, 2n] layer; fan_in equals fan_out on a square
layer): they form one group, and a model-wide vote settles the mode where a layer alone cannot. Such
twins, and any candidate whose prediction lies within one standard error of the best's, keep the
confidence below "high": the weights cannot say which of them was used.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

from ..kinds import has_init
from ..layer import Layer
from ..weights.moments import Structure
from .fans import LayerFans
from .gains import gain
from .schemes import SCHEMES, InitValues, Scheme, variance_scaling
from .torch_defaults import torch_default

#: A candidate fits when its std and kurtosis errors lie within this radius (in standard errors): a true
#: init falls outside it in 0.2% of layers (χ² with 2 degrees of freedom), and a 1.5× scaled one is ≥ 7
#: away from its own init once n ≥ 100. Two inits a fraction d apart in std are d·√(4n/(κ+2)) standard
#: errors apart (σ/√(4n/(κ+2)) is the standard error of a sample std, κ the excess kurtosis): for a normal
#: init 2% apart that is 0.028·√n, so below ~60k values (2·LIMIT/0.028)² both can fit the same weights.
#: Nothing is turned away then: the rival is listed, and the confidence is "low" or "medium", not "high".
LIMIT = 3.5
#: A structural check rejects i.i.d. zero-mean draws beyond this many standard errors: a normal z passes it
#: with two-sided probability 6.3e-5 (one-sided 3.2e-5), so four checks turn away a true init in < 3e-4
#: of layers, while a 0.5σ mean shift is 0.5·√n standard errors off (beyond 4 from n = 64).
GATE = 4.0
#: The probability of a normal z beyond GATE on one side: the zero count's Poisson tail is held to it.
GATE_TAIL = 0.5 * math.erfc(GATE / math.sqrt(2))
#: Row signals need enough rows and values per row for their variance to be estimated (the
#: Wilson–Hilferty approximation of a χ² is within a few % of its tail beyond 8 degrees of freedom).
MIN_ROWS = 8
FLOAT16_TINY = 5.960464477539063e-08  # float16's smallest subnormal
MIN_ROW_LENGTH = 8
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


def _excess(candidate: Candidate) -> float:
    """The excess kurtosis its draws have: a normal cut at ±kσ has its own for each k."""
    if candidate.distribution == "truncated_normal" and candidate.cut != 2.0:
        return _truncated_kurtosis(candidate.cut)
    return KURTOSIS[candidate.distribution]


@dataclass(frozen=True)
class Candidate:
    scheme: str
    mode: str | None
    nonlinearity: str | None
    param: float | None
    std: float
    distribution: str
    cut: float = 2.0  # a truncated normal's, in σ of its sampler
    recipe: str | None = None  # the library recipe this candidate is the expectation of

    @property
    def label(self) -> str:
        if self.recipe:
            shape = {"normal": "N", "uniform": "U", "truncated_normal": f"N cut ±{self.cut:g}σ"}[self.distribution]
            return f"recipe {self.recipe}: {shape}, std {self.std:.4g}"
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
    # high: one explanation fits and no other predicts within one standard error of it; medium: a clear
    # best (rivals ≥ 4 standard errors worse); low: close rivals, or twins the weights cannot tell apart
    confidence: str
    best: Candidate | None = None
    std_errors: float | None = None  # (observed − expected std) / its standard error
    kurtosis_errors: float | None = None
    alternatives: tuple[str, ...] = ()  # other explanations that also fit
    note: str | None = None
    checks: "Checks | None" = None  # the i.i.d. checks every candidate must pass


@dataclass(frozen=True)
class Checks:
    """How far the weights are from i.i.d. zero-mean draws, whatever their std: each None where not
    measurable (too few rows, a dtype without a rounding-to-zero width, NaN/Inf in the tensor)."""

    mean_errors: float | None = None  # mean / (std/√n)
    zeros: int | None = None  # values exactly 0
    expected_zeros: float | None = None  # at most this many for i.i.d. draws rounded to the stored dtype
    row_norm_errors: float | None = None  # spread of row norms against i.i.d., as a normal z
    row_overlap_errors: float | None = None  # adjacent rows' dot products against i.i.d., as a normal z

    def failures(self) -> list[str]:
        """Why i.i.d. zero-mean draws cannot give these weights; empty when they can."""
        found = []
        if self.mean_errors is not None and abs(self.mean_errors) > GATE:
            found.append(f"mean is {self.mean_errors:+.1f} standard errors (σ/√n) from 0")
        if self.zeros and _zeros_unlikely(self.zeros, self.expected_zeros):
            found.append(f"{self.zeros} values are exactly 0 where i.i.d. draws give ≤ {self.expected_zeros:.2g}")
        if self.row_norm_errors is not None and abs(self.row_norm_errors) > GATE:
            side = "wider" if self.row_norm_errors > 0 else "narrower"
            found.append(f"row norms spread {side} than i.i.d. draws give ({self.row_norm_errors:+.1f} σ)")
        if self.row_overlap_errors is not None and abs(self.row_overlap_errors) > GATE:
            side = "more" if self.row_overlap_errors > 0 else "less"
            found.append(f"adjacent rows overlap {side} than i.i.d. draws do ({self.row_overlap_errors:+.1f} σ):"
                         f" {'a low-rank part' if side == 'more' else 'orthogonal rows'}")
        return found


def _zeros_unlikely(zeros: int, expected: float | None) -> bool:
    """Whether `zeros` exact zeros lie beyond GATE_TAIL in the Poisson upper tail of mean `expected` (a rare
    event over many values: the binomial count of values that round to 0). The tail is bounded above by
    its first term times the geometric series of the term ratios λ/(i+1) ≤ λ/(k+1), so a rejection is sure."""
    if expected is None or zeros <= expected:
        return False
    if expected <= 0:
        return True
    first = -expected + zeros * math.log(expected) - math.lgamma(zeros + 1)
    return first - math.log1p(-expected / (zeros + 1)) < math.log(GATE_TAIL)


def _wilson_hilferty(ratio: float, dof: float) -> float:
    """A ratio distributed as χ²_dof / dof, as a normal z (Wilson & Hilferty 1931: its cube root is
    near normal, with mean 1 − 2/(9·dof) and variance 2/(9·dof))."""
    spread = 2 / (9 * dof)
    return (max(ratio, 0.0) ** (1 / 3) - (1 - spread)) / math.sqrt(spread)


def _row_norm_errors(s: Structure) -> float | None:
    """The sample variance over R rows of a row's sum of squares (m values each), against i.i.d. draws:
    there a row's sum of squares has variance m·Var(x²) = m(a4 − a2²), and the sample variance has relative
    variance 2/(R−1) + κ(x²)/(m·R) (κ(x²), the excess kurtosis of x², from the raw moments up to x⁸). The
    ratio is matched to a χ²/dof of those moments. Rows each rescaled (× U(0.5, 1.5)) spread wider;
    orthogonal or normalised rows narrower."""
    m, rows = s.row_length, s.rows
    if rows < MIN_ROWS or m < MIN_ROW_LENGTH or s.row_variance is None or s.a8 is None:
        return None
    var_y = s.a4 - s.a2 * s.a2
    if not var_y > 0:
        return None
    fourth = s.a8 - 4 * s.a2 * s.a6 + 6 * s.a2 ** 2 * s.a4 - 3 * s.a2 ** 4
    kurt_y = max(fourth / (var_y * var_y) - 3, -2.0)
    relative = 2 / (rows - 1) + kurt_y / (m * rows)
    return _wilson_hilferty(s.row_variance / (m * var_y), 2 / relative)


def _row_overlap_errors(s: Structure) -> float | None:
    """The mean of <row r, row r+1>² over the R−1 adjacent pairs, against i.i.d. zero-mean draws: there a
    dot product of two rows has mean 0 and variance m·a2², its square has relative variance 2 + κ_p/m (κ_p =
    (a4/a2²)² − 3, the excess kurtosis of a product of two draws), and adjacent squares share a row, which
    adds covariance (a4/a2² − 1)/m. A low-rank part u·vᵀ adds u_r·u_{r+1}·|v|² to every pair: with a norm
    comparable to the rest, m times the i.i.d. value. One row is held, so this costs one dot product per value:
    the streaming-cheap view of the spectrum (a power iteration would need passes over the tensor)."""
    m, rows = s.row_length, s.rows
    if rows < MIN_ROWS or m < MIN_ROW_LENGTH or s.overlap is None or not s.a2 or s.a4 is None:
        return None
    pairs, ratio4 = rows - 1, s.a4 / (s.a2 * s.a2)
    variance = (2 + (ratio4 * ratio4 - 3) / m + 2 * (pairs - 1) / pairs * (ratio4 - 1) / m) / pairs
    return _wilson_hilferty(s.overlap / (m * s.a2 * s.a2), 2 / variance)


def _without_a_zero_row(s: Structure) -> Structure:
    """The row signals with one all-zero row taken out (an embedding's padding row): the mean of the rows'
    sums of squares over the other R−1, and their sample variance, from the R rows' mean and variance."""
    rows = s.rows
    if rows < MIN_ROWS + 1 or s.row_mean is None or s.row_variance is None:
        return s
    mean = s.row_mean * rows / (rows - 1)
    variance = (s.row_variance * (rows - 1) - rows * s.row_mean ** 2 / (rows - 1)) / (rows - 2)
    return replace(s, rows=rows - 1, row_mean=mean, row_variance=max(variance, 0.0))


def checks(mean: float | None, std: float | None, n: int, structure: Structure | None,
           padding: int = 0) -> Checks:
    """The i.i.d. checks for one tensor's observed values; `padding`, a row's length where one row may be
    all zeros (an embedding's padding_idx row, which transformers and nn.Embedding zero)."""
    mean_errors = mean / (std / math.sqrt(n)) if mean is not None and std and n > 1 else None
    if structure is None:
        return Checks(mean_errors)
    expected = None
    if structure.tiny is not None and std:
        # A draw is stored as 0 when |x| < tiny/2: probability ≤ tiny·(density at 0), and the normal's
        # density at 0, 1/(σ√2π), is the largest of the candidates' (uniform 1/(2√3σ), cut normal 0.92×)
        # Weights often pass through float16 (mixed precision, .half() checkpoints) before a wider dtype
        # stores them, so the rounding width is at least float16's: zeros from that rounding are no structure.
        width = max(structure.tiny, FLOAT16_TINY)
        expected = n * width / (std * math.sqrt(2 * math.pi))
    rounding = expected or 0.0
    slack = GATE * math.sqrt(rounding + 1)  # how far rounding's zeros may fall from their expectation
    if padding and slack < padding / 2 and structure.zeros - rounding >= padding - slack:
        # a row's worth of zeros beyond what rounding gives: the padding row, taken out of the row signals
        structure = _without_a_zero_row(structure)
        expected = rounding + padding
    return Checks(mean_errors, structure.zeros, expected, _row_norm_errors(structure), _row_overlap_errors(structure))


def candidates(layer: Layer, fans: LayerFans, expected: Candidate | None = None) -> list[Candidate]:
    """Every scheme fancli knows (`schemes.SCHEMES`), with the std it would give this tensor (torch's fans, as
    torch's init uses), in order of preference where two draw alike: the library recipe's `expected` draw
    first, then relu, kaiming before the rest."""
    found: list[Candidate] = [expected] if expected is not None else []
    fan_in, fan_out = fans.fan_in, fans.fan_out

    def add(scheme: Scheme, mode: str | None, name: str | None, param: float | None, g: float) -> None:
        values = variance_scaling(g, fan_in, fan_out, mode or scheme.mode, scheme.distribution)
        if values.std:
            found.append(Candidate(scheme.name, mode, name, param, values.std, scheme.distribution))

    for name, param in NONLINEARITIES:
        for scheme in SCHEMES.values():
            if not scheme.fixed_gain:
                for mode in (None,) if scheme.mode == "fan_avg" else ("fan_in", "fan_out"):  # xavier has no mode
                    add(scheme, mode, name, param, gain(name, param))
    for scheme in SCHEMES.values():
        if scheme.fixed_gain and scheme.name != "torch_default":  # lecun: gain 1 whatever follows
            add(scheme, scheme.mode, None, None, gain(*scheme.fixed_gain))
    default = torch_default(layer, fan_in, fan_out, "fan_in")  # per module type, not one rule
    if default.std:
        distribution = "normal" if default.bound is None else "uniform"
        found.append(Candidate("torch_default", None, None, None, default.std, distribution))
    if layer.library_std and layer.library_std != FIXED_NORMAL_STD:  # config.json's initializer_range
        found.append(Candidate("normal", None, None, None, layer.library_std, "normal"))
    found.append(Candidate("normal", None, None, None, FIXED_NORMAL_STD, "normal"))
    if expected is not None:  # a plain N(0, σ²) the recipe draws is the recipe's, not a rival of it
        found = [c for c in found if c is expected or not (c.scheme == "normal" and _same(c, expected))]
    return found


def _same(a: Candidate, b: Candidate) -> bool:
    return a.distribution == b.distribution and abs(a.std - b.std) <= 1e-9 * a.std


def _scores(candidate: Candidate, std: float, kurtosis: float | None, n: int) -> tuple[float, float | None]:
    excess = _excess(candidate)
    z_std = (std - candidate.std) / (candidate.std * math.sqrt((excess + 2) / (4 * n)))
    z_kurt = None if kurtosis is None else (kurtosis - excess) / math.sqrt(24 / n)
    return z_std, z_kurt


def recipe_candidate(recipe: str, values: InitValues) -> Candidate | None:
    """What a row's library recipe expects of its tensor, as a candidate (None for a constant or no std)."""
    if not values.std or values.distribution not in KURTOSIS:
        return None
    return Candidate(recipe, None, None, None, values.std, values.distribution, values.cut or 2.0, recipe)


def infer(layer: Layer, fans: LayerFans, std: float | None, kurtosis: float | None, n: int,
          mean: float | None = None, structure: Structure | None = None,
          expected: Candidate | None = None) -> Inference | None:
    """The best explanation of one tensor's observed std and kurtosis, if its mean and structure allow
    i.i.d. zero-mean draws at all (checked when given); None below 2 dims. `expected`, the library recipe's
    draw for this tensor, is the first candidate."""
    if len(layer.shape) < 2 or fans.fan_in is None or not has_init(layer.kind):
        return None
    if std is None or n < 30:
        return Inference("unknown", "none", note="too few values to judge")
    if std == 0 and mean is not None:
        return Inference(f"constant {mean:g}", "high", note="every value is the same: a constant init "
                                                            "(zeros_, ones_, constant_), not a draw")
    padding = layer.shape[-1] if layer.kind == "embedding" else 0  # one row a padding_idx zeroes
    found = checks(mean, std, n, structure, padding)
    failures = found.failures()
    if failures:
        return Inference("unknown/trained", "none", note="not i.i.d. zero-mean draws: " + "; ".join(failures),
                         checks=found)
    best = _best(layer, fans, std, kurtosis, n, expected)
    if padding and found.expected_zeros is not None and found.zeros is not None and \
            found.zeros >= padding and found.expected_zeros >= padding:  # the padding row was allowed for
        best = replace(best, note="; ".join(filter(None, (best.note, f"{found.zeros} exact zeros: one padding row "
                                                                      "(padding_idx), zeroed by the library"))))
    return replace(best, checks=found)


def _best(layer: Layer, fans: LayerFans, std: float, kurtosis: float | None, n: int,
          expected: Candidate | None = None) -> Inference:
    """The candidate that best explains the std and kurtosis, with the rivals the weights cannot rule out."""
    scored = []
    for candidate in candidates(layer, fans, expected):  # in order of preference: kaiming before xavier, relu first
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
    group = [c for _, c, _, _ in scored if _same(c, best)]
    twins = _twins(best, group)
    near = [c for c in candidates(layer, fans, expected) if not _same(c, best) and _within_one_error(c, best, n)]
    if twins or near:
        confidence = "low"  # the weights cannot say which of these was used
    else:
        confidence = "high" if not rivals else "medium" if rivals[0][0] - score >= 16 else "low"
    modes = {c.mode for c in group if c.scheme == best.scheme and c.nonlinearity == best.nonlinearity}
    note = "fan_in = fan_out here: the mode cannot be told from this layer alone" if len(modes) > 1 else None
    named = [c.label for c in twins] + [c.label for c in near]
    named += [r.label for _, r in rivals if r.label not in named]
    return Inference(best.label, confidence, best, z_std, z_kurt, tuple(named[:3]), note)


def _twins(best: Candidate, group: list[Candidate]) -> list[Candidate]:
    """Other inits that draw from exactly the same distribution (same std, same shape) under another
    scheme, nonlinearity or mode: kaiming relu fan_in and kaiming linear fan_out on a [n, 2n] layer."""
    found: list[Candidate] = []
    for other in group:
        if other.label != best.label and all(other.label != f.label for f in found):
            found.append(other)
    return found


def _within_one_error(other: Candidate, best: Candidate, n: int) -> bool:
    """Whether `other` predicts a std and kurtosis within one standard error of `best`'s at n values:
    then no sample of this size tells them apart, wherever it falls."""
    z_std, z_kurt = _scores(best, other.std, _excess(other), n)
    return z_std * z_std + (z_kurt or 0.0) ** 2 <= 1.0


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
