"""What propagate measures and how: the records it returns (a layer's forward and backward variance, a
mode's Propagation with its end-to-end ratios), the weights drawn as fancli's analysis says, the hooks that
record a layer's variances, and the base of the two runners (a spec's stack, a live module)."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import SourceError
from ..layer import Model
from ..report import Row

#: Refuse a run whose estimated memory (weights and their gradients, activations kept for backward) exceeds this.
MAX_BYTES = 8 * 1024**3


class PropagateError(SourceError, ValueError):
    """A source propagate cannot run: one line naming the source and the layer (CLI exit 2)."""


@dataclass(frozen=True)
class LayerSignal:
    """One weight layer's signals under one mode."""

    name: str  # the spec layer's name, or the module's qualified name
    kind: str  # linear, conv2d, conv_transpose2d, …
    shape: tuple[int, ...]  # the weight's shape as the source gives it
    std: float  # the std its weights were drawn with (fancli's analysis)
    forward_var: float  # variance of the layer's output y = Wx + b, before what follows it
    backward_var: float  # variance of ∂L/∂x, the gradient at the layer's input


@dataclass(frozen=True)
class Propagation:
    """All weight layers, in the order the forward pass reached them, under one mode."""

    mode: str
    scheme: str  # the scheme's name; several joined by "+" when a spec gives layers their own
    layers: tuple[LayerSignal, ...]
    input_var: float  # measured variance of the N(0, 1) input
    input_shape: tuple[int, ...] = ()  # one example's shape (the batch dim not included)
    batch: int = 0
    seed: int = 0
    norms: str = "identity"
    draws: int = 1
    forward_ratios: tuple[float, ...] = ()  # each draw's own end-to-end forward ratio
    backward_ratios: tuple[float, ...] = ()  # each draw's own end-to-end backward ratio
    notes: tuple[str, ...] = ()

    @property
    def forward_ratio(self) -> float:
        """Last layer's forward variance over the first's: 1 when the forward pass is preserved."""
        return _forward_ratio(self.layers)

    @property
    def backward_ratio(self) -> float:
        """First layer's backward variance over the last's (the gradient travels from the last to the first)."""
        return _backward_ratio(self.layers)

    @property
    def forward_spread(self) -> float:
        """Largest forward variance over the smallest, across layers."""
        return _spread([s.forward_var for s in self.layers])

    @property
    def backward_spread(self) -> float:
        """Largest backward variance over the smallest, across layers."""
        return _spread([s.backward_var for s in self.layers])


def _forward_ratio(layers: Sequence[LayerSignal]) -> float:
    return _ratio(layers[-1].forward_var, layers[0].forward_var) if layers else math.nan


def _backward_ratio(layers: Sequence[LayerSignal]) -> float:
    return _ratio(layers[0].backward_var, layers[-1].backward_var) if layers else math.nan


def _ratio(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        return math.inf if a else math.nan


def _spread(values: list[float]) -> float:
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        return math.nan
    return max(values) / min(values)



@dataclass(frozen=True)
class Draw:
    """One initialisation's measurements."""

    signals: tuple[LayerSignal, ...]
    input_var: float
    scheme: str
    notes: tuple[str, ...]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def combine(mode: str, runs: list[Draw], shape: tuple[int, ...], batch: int, seed: int, norms: str) -> Propagation:
    """The draws' mean variance per layer, and each draw's own end-to-end ratios."""
    first = runs[0]
    layers = tuple(
        LayerSignal(s.name, s.kind, s.shape, s.std, _mean(r.signals[i].forward_var for r in runs),
                    _mean(r.signals[i].backward_var for r in runs))
        for i, s in enumerate(first.signals)
    )
    notes = list(dict.fromkeys(n for r in runs for n in r.notes))
    return Propagation(
        mode, first.scheme, layers, _mean(r.input_var for r in runs), shape, batch, seed, norms, len(runs),
        tuple(_forward_ratio(r.signals) for r in runs), tuple(_backward_ratio(r.signals) for r in runs),
        tuple(notes),
    )


# --- drawing the weights and recording the variances ---------------------------------------------------------------------------


def draw_weights(weight: torch.Tensor, row: Row, mode: str, generator: torch.Generator, source: str) -> float:
    """Fill `weight` as the analysis says; the std drawn with."""
    values = row.inits[mode]
    if values.std is None:
        why = values.note or (row.fans.notes[0] if row.fans.notes else "no std")
        raise PropagateError(f"{source}: {row.layer.name}: cannot initialise {row.layer.param}: {why}")
    with torch.no_grad():
        if values.bound is not None:
            nn.init.uniform_(weight, -values.bound, values.bound, generator=generator)
        elif values.sampling_std is not None:
            s = values.sampling_std
            nn.init.trunc_normal_(weight, 0.0, s, -2 * s, 2 * s, generator=generator)
        else:
            nn.init.normal_(weight, 0.0, values.std, generator=generator)
    return float(values.std)


def variance(tensor: torch.Tensor) -> float:
    return float(tensor.detach().to(torch.float64).var(unbiased=False)) if tensor.numel() else math.nan


class Recorder:
    """Forward hook on a weight module: output variance, and a tensor hook for the gradient at its input."""

    def __init__(self) -> None:
        self.forward: float | None = None
        self.backward: float | None = None
        self.calls = 0

    def __call__(self, _module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.calls += 1
        if self.calls > 1 or not isinstance(output, torch.Tensor):
            return
        self.forward = variance(output)
        first = inputs[0] if inputs else None
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        if self.backward is None:
            self.backward = variance(grad)


def forward_backward(net: nn.Module, x: torch.Tensor, generator: torch.Generator, source: str) -> None:
    try:
        out = net(x)
    except Exception as error:  # the user's forward, or shapes torch rejects
        raise PropagateError(f"{source}: the forward pass failed: {type(error).__name__}: {_line(error)}") from None
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise PropagateError(f"{source}: the forward pass must return one floating-point tensor, "
                             f"got {type(out).__name__}")
    grad = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    out.backward(grad)


def _line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def memory_refused(source: str) -> Iterator[None]:
    """A run within MAX_BYTES can still exceed the memory this machine gives it: torch's allocator failing
    is the source's sizes being too large here (one line, exit 2), not an internal error."""
    try:
        yield
    except MemoryError:
        raise PropagateError(f"{source}: out of memory; give a smaller batch or input shape") from None
    except RuntimeError as error:
        asked = _ALLOCATOR_FAILED.search(str(error))
        if asked is None:
            raise
        raise PropagateError(f"{source}: out of memory: torch could not allocate {gib(int(asked.group(1)))} for "
                             "this run; give a smaller batch or input shape") from None


def gib(size: int) -> str:
    """A byte count for a message, in GiB; a count past any machine (an input of twenty 2**63 sizes) is not
    divided into a float, which would overflow."""
    return f"about {size / 1024**3:,.1f} GiB" if size < 1024**5 else "over a million GiB"


#: torch's CPU allocator's message when the system refuses it memory (c10/core/impl/alloc_cpu.cpp).
_ALLOCATOR_FAILED = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")


class Runner:
    model: Model

    def check_memory(self, batch: int, shape: tuple[int, ...]) -> None:
        """A module's own sizes are unknown until it runs: at least refuse an input (and its gradient)
        that alone would exceed MAX_BYTES, before torch tries to allocate it."""
        estimate = 2 * 4 * batch * math.prod(shape)
        if estimate > MAX_BYTES:
            raise PropagateError(f"{self.model.source}: an input of {batch}×{'×'.join(map(str, shape))} would need "
                                 f"{gib(estimate)}; give a smaller batch or input shape")

    def run(self, mode: str, rows: dict[str, Row], batch: int, shape: tuple[int, ...],
            generator: torch.Generator) -> Draw:
        raise NotImplementedError


def scheme_name(rows: Iterable[Row]) -> str:
    names = list(dict.fromkeys(row.scheme for row in rows))
    return "+".join(names) if names else "none"


def nan_if_none(v: float | None) -> float:
    return math.nan if v is None else v

