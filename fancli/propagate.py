"""Signal propagation: the direct test of "fan_in keeps the forward pass, fan_out the backward" (He et al. 2015).

For each mode asked for, every weight is drawn with the std (or bound) that fancli's own analysis gives
it, a batch of N(0, 1) inputs goes forward and a N(0, 1) gradient comes back from the output, and each
weight layer reports two numbers:

- ``forward_var``: the variance of the layer's own output y = W·x + b, before any norm or nonlinearity
  that follows it (He et al.'s pre-activation response y_l). Under fan_in it stays constant with depth.
- ``backward_var``: the variance of the gradient with respect to the layer's input, ∂L/∂x (He et al.'s
  Δx_l), for L = Σ g·output with g ~ N(0, 1). Under fan_out it stays constant with depth.

Variances are over every element of the tensor (batch, features, positions), centred, in float64.

Two sources:

- a YAML spec (``Model`` of format "yaml-spec"): fancli builds a sequential stack from the Layer records —
  see `propagate` for how each record becomes a torch module;
- a live ``torch.nn.Module``: a copy of it is re-initialised and run with hooks on its Linear and Conv
  modules; ``input_shape`` is required.

The run is deterministic for a seed and leaves torch's global RNG as it was. This module imports torch;
only ``fancli propagate`` imports it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .analysis import activations
from .errors import SettingsError, SourceError
from .layer import Layer, Model
from .report import Row, Settings, analyze

__all__ = [
    "NORMS",
    "LayerSignal",
    "Propagation",
    "PropagateError",
    "propagate",
    "bars",
    "render_propagation",
    "to_dict",
    "load_source",
]

#: How norm layers are run. identity: skipped (a spec) or passed through (a module), so what is measured
#: is the init alone; real: normalising (a spec's norm becomes a BatchNorm in train mode, a module runs
#: in train mode), which resets the variance to about 1 after every norm and hides the init's effect.
NORMS = ("identity", "real")

#: Layer kinds a sequential stack can run; the rest (embedding, rnn/lstm/gru, attention, bilinear,
#: unknown) are refused.
_RUNNABLE = ("linear", *(f"conv{d}d" for d in (1, 2, 3)), *(f"conv_transpose{d}d" for d in (1, 2, 3)), "norm")
#: Default spatial size of the input when the first layer is a conv (per dims), or a transposed conv.
_SPATIAL = {1: 64, 2: 32, 3: 16}
_SPATIAL_TRANSPOSED = {1: 16, 2: 8, 3: 4}
#: Default batch: a flat input, an input with positions (each already gives many samples per example).
_BATCH_FLAT, _BATCH_SPATIAL = 256, 32
#: Refuse a run whose estimated memory (weights and their gradients, activations kept for backward) exceeds this.
MAX_BYTES = 8 * 1024**3
_SEARCH_SPATIAL = range(1, 1025)
#: Draws averaged per mode: the mean's spread falls as 1/√draws, so 1,000 leave ~3% of one draw's; more only
#: take longer (each draw is a forward and a backward pass).
MAX_DRAWS = 1000
#: Inputs per pass: 65,536 already estimate a variance to within ~0.6%; more only take time and memory.
MAX_BATCH = 65536


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


# --- the public entry point ------------------------------------------------------------------------


def propagate(
    model: Model | nn.Module,
    modes: Iterable[str] = ("fan_in", "fan_out"),
    *,
    scheme: str | None = None,
    nonlinearity: str | None = None,
    param: float | None = None,
    fans: str = "torch",
    norms: str = "identity",
    batch: int | None = None,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    draws: int = 4,
) -> list[Propagation]:
    """One Propagation per mode, in the order given.

    Each layer's variances are the mean over ``draws`` independent initialisations (each with its own
    input batch and output gradient): He et al.'s recursion holds for the expectation over the weights,
    while one finite-width draw wanders by a random factor that grows with Σ 1/width over the layers
    (Hanin & Rolnick 2018): a single draw of a 50-layer ReLU MLP of width 512 leaves a factor 2 end to
    end under fan_in in about a quarter of seeds, the mean of 4 draws in a few percent. Each draw's own
    end-to-end ratios are kept (``forward_ratios``, ``backward_ratios``).

    The std of every weight comes from `fancli.report.analyze` with ``Settings(scheme, (mode,),
    nonlinearity, param, fans)``: the numbers `fancli inspect` prints are the ones drawn, normal_(0, std),
    uniform_(±bound) or trunc_normal_ (±2σ) by the scheme's distribution. ``scheme`` None takes each spec
    layer's own scheme, else kaiming_normal (as inspect does); the mode is always the one being run.
    Biases are zero; norm weights 1.

    A YAML spec becomes a sequential stack, in the spec's order:

    - linear → nn.Linear; a Flatten is put in where a conv feeds a linear.
    - conv/conv_transpose Nd → nn.ConvNd/ConvTransposeNd with the record's stride, dilation and groups.
      Layer records carry no padding: a conv with stride 1 gets "same" padding, dilation·(k−1)//2,
      else 0 (a ``padding`` attribute on the Layer, where present, wins).
    - the nonlinearity after each weight layer: ``nonlinearity`` if given, else the layer's, else the one
      the analysis assumed for the gain (kaiming: leaky_relu a=0, i.e. relu; xavier: linear) — the
      network runs the nonlinearity its init was computed for. It follows the norms that come right after
      the weight layer (conv → bn → relu); a norm layer's own nonlinearity is ignored.
    - ``pool`` → MaxPoolNd(pool) after the nonlinearity.
    - norm layers: ``norms="identity"`` (default) leaves them out, so the variance measured is the init's
      doing; ``norms="real"`` runs each as a BatchNormNd in train mode over its channels (the record does
      not keep which norm it was; any of them resets the variance to about 1).
    - embedding, rnn/lstm/gru, multihead_attention, bilinear and unknown kinds raise PropagateError (a
      ValueError) naming the layer; so does a layer whose inputs do not match the previous one's outputs.

    The input is N(0, 1) of shape (batch, *input_shape). ``input_shape`` None: in_features for a linear
    first layer; (C, 64), (C, 32, 32), (C, 16, 16, 16) for a conv1d/2d/3d (transposed: 16, 8, 4), or the
    size that makes the first conv-to-linear Flatten match the linear's in_features. ``batch`` None: 256
    for a flat input, 32 when the input has positions.

    A live nn.Module: a deep copy is run (the module is not touched); ``input_shape`` is required. Its
    Linear and Conv modules are re-initialised as above (fancli reads the module's layers with
    `layers_from_module`); other parameters keep their values. ``norms="identity"`` runs the copy in eval
    mode with every norm module passed through; ``"real"`` in train mode (BatchNorm uses batch statistics,
    dropout is active). A module called several times reports its first call; one never called (e.g.
    MultiheadAttention's out_proj, used through F.multi_head_attention_forward) is noted and left out.

    Deterministic for a seed: each mode reseeds, so the modes see the same input and the same draws
    up to scale; torch's global RNG is restored afterwards.
    """
    modes = tuple(modes)
    if not modes:
        raise SettingsError("propagate needs at least one mode")
    if norms not in NORMS:
        raise SettingsError(f"unknown norms {norms!r}; known: {', '.join(NORMS)}")
    if not 1 <= draws <= MAX_DRAWS:
        raise SettingsError(f"draws must be from 1 to {MAX_DRAWS:,}, got {draws}")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise SettingsError(f"batch must be from 1 to {MAX_BATCH:,}, got {batch}")
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise SettingsError(f"input shape must be positive sizes, got {input_shape}")
    settings = [Settings(scheme, (mode,), nonlinearity, param, fans).validated() for mode in modes]

    if isinstance(model, nn.Module):
        if input_shape is None:
            raise PropagateError(f"{type(model).__name__}: a module needs an input shape (e.g. 3,32,32)")
        runner: _Runner = _ModuleRunner(model, norms)
        shape = input_shape
    elif isinstance(model, Model):
        if model.format != "yaml-spec":
            raise PropagateError(
                f"{model.source}: a {model.format} source holds weights but no forward pass; propagate runs "
                "a YAML spec or an nn.Module (a factory pkg.module:callable)"
            )
        stack = _SpecStack(model, norms)
        shape = stack.input_shape(input_shape)
        runner = stack
    else:
        raise TypeError(f"propagate takes a fancli Model or a torch.nn.Module, not {type(model).__name__}")
    batch = batch or (_BATCH_FLAT if len(shape) == 1 else _BATCH_SPATIAL)
    runner.check_memory(batch, shape)

    results = []
    for setting in settings:
        rows = {row.layer.param: row for row in analyze(runner.model, setting).rows}
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            runs = [runner.run(setting.modes[0], rows, batch, shape, generator) for _ in range(draws)]
        results.append(_combine(setting.modes[0], runs, shape, batch, seed, norms))
    return results


@dataclass(frozen=True)
class _Draw:
    """One initialisation's measurements."""

    signals: tuple[LayerSignal, ...]
    input_var: float
    scheme: str
    notes: tuple[str, ...]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def _combine(mode: str, runs: list[_Draw], shape: tuple[int, ...], batch: int, seed: int, norms: str) -> Propagation:
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


# --- drawing the weights ---------------------------------------------------------------------------


def _draw(weight: torch.Tensor, row: Row, mode: str, generator: torch.Generator, source: str) -> float:
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


def _variance(tensor: torch.Tensor) -> float:
    return float(tensor.detach().to(torch.float64).var(unbiased=False)) if tensor.numel() else math.nan


class _Recorder:
    """Forward hook on a weight module: output variance, and a tensor hook for the gradient at its input."""

    def __init__(self) -> None:
        self.forward: float | None = None
        self.backward: float | None = None
        self.calls = 0

    def __call__(self, _module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.calls += 1
        if self.calls > 1 or not isinstance(output, torch.Tensor):
            return
        self.forward = _variance(output)
        first = inputs[0] if inputs else None
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        if self.backward is None:
            self.backward = _variance(grad)


def _forward_backward(net: nn.Module, x: torch.Tensor, generator: torch.Generator, source: str) -> None:
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


class _Runner:
    model: Model

    def check_memory(self, batch: int, shape: tuple[int, ...]) -> None:
        """A module's own sizes are unknown until it runs: at least refuse an input (and its gradient)
        that alone would exceed MAX_BYTES, before torch tries to allocate it."""
        estimate = 2 * 4 * batch * math.prod(shape)
        if estimate > MAX_BYTES:
            raise PropagateError(f"{self.model.source}: an input of {batch}×{'×'.join(map(str, shape))} would need "
                                 f"about {estimate / 1024**3:.0f} GiB; give a smaller batch or input shape")

    def run(self, mode: str, rows: dict[str, Row], batch: int, shape: tuple[int, ...],
            generator: torch.Generator) -> _Draw:
        raise NotImplementedError


def _scheme_name(rows: Iterable[Row]) -> str:
    names = list(dict.fromkeys(row.scheme for row in rows))
    return "+".join(names) if names else "none"


# --- YAML specs: a sequential stack ------------------------------------------------------------------


@dataclass
class _Step:
    """One weight layer of a spec and what follows it up to the next weight layer."""

    layer: Layer
    dims: int  # 0 for linear
    in_size: int  # in_features or in_channels
    out_size: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    groups: int = 1
    transposed: bool = False
    norms: list[Layer] = field(default_factory=list)


def _torch_shape(layer: Layer) -> tuple[int, ...]:
    """The weight's shape in torch's layout ([out, in, *k]; transposed [in, out/g, *k])."""
    shape = layer.shape
    if layer.layout == "keras":
        return (shape[-1], shape[-2], *shape[:-2])
    if layer.layout == "in_out" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _ints(value: tuple[int, ...] | None, dims: int, default: int) -> tuple[int, ...]:
    if not value:
        return (default,) * dims
    return tuple(value) if len(value) == dims else (value[0],) * dims


def _step(layer: Layer, source: str) -> _Step:
    shape = _torch_shape(layer)
    if layer.kind == "linear":
        if len(shape) != 2:
            raise PropagateError(f"{source}: {layer.name}: a linear weight needs 2 dims, got {list(layer.shape)}")
        return _Step(layer, 0, in_size=shape[1], out_size=shape[0])
    dims = int(layer.kind[-2])
    if len(shape) != dims + 2:
        raise PropagateError(f"{source}: {layer.name}: a {layer.kind} weight needs {dims + 2} dims, "
                             f"got {list(layer.shape)}")
    transposed = bool(layer.transposed) or layer.kind.startswith("conv_transpose")
    groups = layer.groups or 1
    kernel = tuple(shape[2:])
    stride = _ints(layer.stride, dims, 1)
    dilation = _ints(layer.dilation, dims, 1)
    given = getattr(layer, "padding", None)  # not a Layer field today; used when a loader sets it
    if given:
        padding = _ints(tuple(given), dims, 0)
    else:
        padding = tuple(d * (k - 1) // 2 if s == 1 else 0 for k, s, d in zip(kernel, stride, dilation))
    if transposed:
        in_size, out_size = shape[0], shape[1] * groups
    else:
        in_size, out_size = shape[1] * groups, shape[0]
    return _Step(layer, dims, in_size, out_size, kernel, stride, dilation, padding, groups, transposed)


def _conv_out(step: _Step, spatial: tuple[int, ...], pool: bool = True) -> tuple[int, ...]:
    out = []
    for s, k, st, d, p in zip(spatial, step.kernel, step.stride, step.dilation, step.padding):
        if step.transposed:
            out.append((s - 1) * st - 2 * p + d * (k - 1) + 1)
        else:
            out.append((s + 2 * p - d * (k - 1) - 1) // st + 1)
    if pool and step.layer.pool:
        window = _ints(step.layer.pool, step.dims, 1)
        out = [(o - k) // k + 1 for o, k in zip(out, window)]
    return tuple(out)


class _Mismatch(PropagateError):
    """Sizes that do not chain; `flatten` when a conv's flattened output is what does not match."""

    def __init__(self, message: str, flatten: bool = False) -> None:
        super().__init__(message)
        self.flatten = flatten


class _SpecStack(_Runner):
    def __init__(self, model: Model, norms: str) -> None:
        self.model, self.norms, self.source = model, norms, model.source
        self.steps: list[_Step] = []
        self.leading_norms: list[Layer] = []
        for layer in model.layers:
            if layer.kind not in _RUNNABLE:
                article = "an" if layer.kind[:1] in "aeiou" else "a"
                raise PropagateError(
                    f"{self.source}: {layer.name}: {article} {layer.kind} layer; propagate runs sequential "
                    "linear/conv stacks (linear, conv, conv_transpose, norm layers)"
                )
            if layer.kind == "norm":
                (self.steps[-1].norms if self.steps else self.leading_norms).append(layer)
            else:
                self.steps.append(_step(layer, self.source))
        if not self.steps:
            raise PropagateError(f"{self.source}: no linear or conv layer to propagate through")
        self._spatial: tuple[int, ...] = ()

    # sizes --------------------------------------------------------------------------------------------

    def _trace(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each step's output shape (one example) for an input shape; _Mismatch where sizes do not chain."""
        current = shape
        outs = []
        for index, step in enumerate(self.steps):
            name = step.layer.name
            if step.dims == 0:
                features = math.prod(current)
                if features != step.in_size:
                    if len(current) > 1:
                        raise _Mismatch(
                            f"{self.source}: {name}: takes {step.in_size} inputs, but the previous layer's "
                            f"output {'×'.join(map(str, current))} flattens to {features}", flatten=True)
                    raise _Mismatch(f"{self.source}: {name}: takes {step.in_size} inputs, but "
                                    f"{'the previous layer gives' if index else 'the input has'} {features}")
                current = (step.out_size,)
            else:
                if len(current) != step.dims + 1:
                    what = "a flat vector" if len(current) == 1 else f"{len(current) - 1}-D maps"
                    raise _Mismatch(f"{self.source}: {name}: a {step.layer.kind} needs {step.dims}-D maps, "
                                    f"but {'the previous layer gives' if index else 'the input is'} {what}; "
                                    "propagate runs sequential stacks")
                if current[0] != step.in_size:
                    raise _Mismatch(f"{self.source}: {name}: takes {step.in_size} channels, but "
                                    f"{'the previous layer gives' if index else 'the input has'} {current[0]}; "
                                    "propagate runs sequential stacks")
                spatial = _conv_out(step, current[1:])
                if min(spatial) < 1:
                    raise _Mismatch(f"{self.source}: {name}: the input's positions shrink to nothing "
                                    f"({'×'.join(map(str, current[1:]))} in); give a larger input shape")
                current = (step.out_size, *spatial)
            outs.append(current)
        return outs

    def input_shape(self, given: tuple[int, ...] | None) -> tuple[int, ...]:
        first = self.steps[0]
        if given is not None:
            self._trace(given)
            return given
        if first.dims == 0:
            shape = (first.in_size,)
            self._trace(shape)
            return shape
        default = (_SPATIAL_TRANSPOSED if first.transposed else _SPATIAL)[first.dims]
        shape = (first.in_size, *(default,) * first.dims)
        try:
            self._trace(shape)
            return shape
        except _Mismatch as error:
            if not error.flatten:
                raise
            original = error
        fits = []
        for size in _SEARCH_SPATIAL:
            candidate = (first.in_size, *(size,) * first.dims)
            try:
                self._trace(candidate)
            except _Mismatch:
                continue
            fits.append(candidate)
        if not fits:
            raise PropagateError(f"{original}; no square input size makes it match (give --input-shape)")
        return min(fits, key=lambda c: abs(c[1] - default))

    def check_memory(self, batch: int, shape: tuple[int, ...]) -> None:
        outs = self._trace(shape)
        weights = sum(math.prod(step.layer.shape) for step in self.steps)
        activations = math.prod(shape) + sum(math.prod(o) for o in outs)
        estimate = 4 * (2 * weights + 4 * batch * activations)  # float32; a few tensors kept per layer
        if estimate > MAX_BYTES:
            raise PropagateError(f"{self.source}: this run would need about {estimate / 1024**3:.0f} GiB; "
                                 "give a smaller batch or input shape")

    # building -------------------------------------------------------------------------------------

    def _weight_module(self, step: _Step) -> nn.Module:
        if step.dims == 0:
            return nn.Linear(step.in_size, step.out_size, device="meta")
        cls = getattr(nn, f"{'ConvTranspose' if step.transposed else 'Conv'}{step.dims}d")
        return cls(step.in_size, step.out_size, step.kernel, stride=step.stride, padding=step.padding,
                   dilation=step.dilation, groups=step.groups, device="meta")

    def _norm_module(self, layer: Layer, current: tuple[int, ...]) -> nn.Module:
        channels = current[0]
        if math.prod(layer.shape) == channels:
            if len(current) == 1:
                return nn.BatchNorm1d(channels)
            return getattr(nn, f"BatchNorm{len(current) - 1}d")(channels)
        if tuple(layer.shape) == tuple(current[-len(layer.shape):]):
            return nn.LayerNorm(list(layer.shape))
        raise PropagateError(f"{self.source}: {layer.name}: normalises {list(layer.shape)}, but the previous "
                             f"layer gives {'×'.join(map(str, current))}")

    def _build(self, rows: dict[str, Row], shape: tuple[int, ...]) -> tuple[nn.Sequential, list[tuple[_Step, Any]]]:
        modules: list[nn.Module] = []
        weights: list[tuple[_Step, Any]] = []
        outs = self._trace(shape)
        current = shape
        if self.norms == "real":
            modules += [self._norm_module(norm, current) for norm in self.leading_norms]
        for step, out in zip(self.steps, outs):
            if step.dims == 0 and len(current) > 1:
                modules.append(nn.Flatten())
            module = self._weight_module(step).to_empty(device="cpu")  # meta first: torch's own init skipped
            modules.append(module)
            weights.append((step, module))
            conv_out = (step.out_size, *_conv_out(step, current[1:], pool=False)) if step.dims else out
            if self.norms == "real":
                modules += [self._norm_module(norm, conv_out) for norm in step.norms]
            row = rows[step.layer.param]
            modules.append(_activation(row.nonlinearity, row.nonlinearity_param, self.source, step.layer.name))
            if step.dims and step.layer.pool:
                modules.append(getattr(nn, f"MaxPool{step.dims}d")(_ints(step.layer.pool, step.dims, 1)))
            current = out
        return nn.Sequential(*modules), weights

    def run(self, mode: str, rows: dict[str, Row], batch: int, shape: tuple[int, ...],
            generator: torch.Generator) -> _Draw:
        net, weights = self._build(rows, shape)
        net.train(self.norms == "real")
        net.requires_grad_(False)  # gradients flow to the input only: no weight gradients computed
        recorders = []
        stds = []
        for step, module in weights:
            stds.append(_draw(module.weight, rows[step.layer.param], mode, generator, self.source))
            with torch.no_grad():
                if module.bias is not None:
                    module.bias.zero_()
            recorder = _Recorder()
            module.register_forward_hook(recorder)
            recorders.append(recorder)
        x = torch.randn((batch, *shape), generator=generator).requires_grad_(True)
        _forward_backward(net, x, generator, self.source)
        signals = tuple(
            LayerSignal(step.layer.name, step.layer.kind, tuple(step.layer.shape), std,
                        _value(r.forward), _value(r.backward))
            for (step, _), r, std in zip(weights, recorders, stds)
        )
        notes = []
        if self.norms == "identity" and (self.leading_norms or any(s.norms for s in self.steps)):
            notes.append("norm layers left out (norms: identity): the variances are the init's alone")
        return _Draw(signals, _variance(x), _scheme_name(rows[s.layer.param] for s, _ in weights), tuple(notes))


def _value(v: float | None) -> float:
    return math.nan if v is None else v


def _activation(name: str | None, param: float | None, source: str, layer: str) -> nn.Module:
    """The torch module of the activation registry's record (with the user's parameter, else its default);
    none stated (a scheme whose gain needs none) runs as the identity."""
    try:
        return activations.torch_module(name or "linear", param)
    except ValueError as error:
        raise PropagateError(f"{source}: {layer}: {error}") from None


# --- live modules --------------------------------------------------------------------------------


_WEIGHT_KINDS = ("linear", *(f"conv{d}d" for d in (1, 2, 3)), *(f"conv_transpose{d}d" for d in (1, 2, 3)))


class _ModuleRunner(_Runner):
    def __init__(self, module: nn.Module, norms: str) -> None:
        from .loaders.torch_module import layers_from_module, module_class

        self.original, self.norms = module, norms
        self.source = module_class(module)
        self._class_name = module_class
        self.model = Model(source=self.source, format="torch-module", layers=layers_from_module(module),
                           name=self.source)
        self.weight_layers = [
            layer for layer in self.model.layers
            if layer.kind in _WEIGHT_KINDS and layer.param.rpartition(".")[2] == "weight"
        ]
        if not self.weight_layers:
            raise PropagateError(f"{self.source}: no Linear or Conv module to propagate through")

    def run(self, mode: str, rows: dict[str, Row], batch: int, shape: tuple[int, ...],
            generator: torch.Generator) -> _Draw:
        net = copy.deepcopy(self.original)
        net.train(self.norms == "real")
        net.requires_grad_(False)  # gradients flow to the input only: no weight gradients computed
        modules = dict(net.named_modules())
        recorders, stds = [], []
        for layer in self.weight_layers:
            module = modules[layer.param.rpartition(".")[0]]
            stds.append(_draw(module.weight, rows[layer.param], mode, generator, self.source))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                with torch.no_grad():
                    bias.zero_()
            recorder = _Recorder()
            module.register_forward_hook(recorder)
            recorders.append(recorder)
        if self.norms == "identity":
            for module in modules.values():
                if self._class_name(module) in _NORM_CLASSES:
                    module.register_forward_hook(_pass_through)
        first = next((p for p in net.parameters() if p.is_floating_point()), None)
        dtype = first.dtype if first is not None else torch.float32
        device = first.device if first is not None else torch.device("cpu")
        x = torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
        _forward_backward(net, x, generator, self.source)
        signals, skipped, repeated = [], [], []
        for layer, recorder, std in zip(self.weight_layers, recorders, stds):
            if recorder.forward is None:
                skipped.append(layer.name)
                continue
            if recorder.calls > 1:
                repeated.append(layer.name)
            signals.append(LayerSignal(layer.name, layer.kind, tuple(layer.shape), std,
                                       recorder.forward, _value(recorder.backward)))
        notes = []
        if skipped:
            notes.append(f"not called as modules in the forward pass, so not measured: {', '.join(skipped)}")
        if repeated:
            notes.append(f"called more than once; the first call is reported: {', '.join(repeated)}")
        if self.norms == "identity" and any(self._class_name(m) in _NORM_CLASSES for m in modules.values()):
            notes.append("norm modules passed through (norms: identity): the variances are the init's alone")
        if not signals:
            raise PropagateError(f"{self.source}: none of its Linear or Conv modules ran in the forward pass")
        return _Draw(tuple(signals), _variance(x), _scheme_name(rows[layer.param] for layer in self.weight_layers),
                     tuple(notes))


_NORM_CLASSES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
                 "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm")


def _pass_through(_module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> Any:
    return inputs[0]


# --- sources -------------------------------------------------------------------------------------


def load_source(source: str, *, kwargs: dict[str, Any] | None = None) -> Model | nn.Module:
    """What propagate can run from a CLI SOURCE: a YAML spec's Model, or the module a factory builds.

    Files that hold weights only (state_dicts, safetensors) raise PropagateError: they have no forward.
    """
    from . import loaders

    if loaders.is_factory(source):
        from .loaders.factory import build

        built = build(source, kwargs)
        if not isinstance(built, nn.Module):
            raise PropagateError(f"{source}: returned a {type(built).__name__}, not a torch.nn.Module")
        return built
    model = loaders.load(source)
    if model.format != "yaml-spec":
        raise PropagateError(
            f"{source}: a {model.format} source holds weights but no forward pass; propagate runs a YAML spec "
            "or a factory (pkg.module:callable)"
        )
    return model


# --- rendering -----------------------------------------------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bars(values: Sequence[float], width: int = 20, span: float | None = None) -> list[str]:
    """One bar per variance on a log2 scale, diverging from a centre mark │ at variance 1.

    Each side has width//2 cells spanning `span` octaves (default: the largest |log2 v| among the
    values, at least 1), so bars drawn with one span compare. A value beyond the span ends in ◀ or ▶;
    0 reads ◀ at the left edge, inf ▶ at the right, nan ?. Every bar is width//2·2 + 1 characters.
    """
    half = max(1, width // 2)
    logs = [math.log2(v) if isinstance(v, (int, float)) and v > 0 and math.isfinite(v) else None for v in values]
    if span is None:
        span = max([abs(v) for v in logs if v is not None] + [1.0])
    out = []
    for value, log in zip(values, logs):
        if log is None:
            if value == 0:
                out.append("◀" + " " * (half - 1) + "│" + " " * half)
            elif isinstance(value, float) and value == math.inf:
                out.append(" " * half + "│" + " " * (half - 1) + "▶")
            else:
                out.append(" " * half + "?" + " " * half)
            continue
        cells = log / span * half
        beyond = abs(cells) > half
        cells = max(-half, min(half, cells))
        if cells >= 0:
            full, rest = divmod(round(cells * 8), 8)
            right = "█" * full + (_EIGHTHS[rest] if rest else "")
            if beyond:
                right = right[:-1] + "▶"
            out.append(" " * half + "│" + right.ljust(half))
        else:
            full, rest = divmod(round(-cells * 2), 2)  # left of centre: whole and half cells (▐)
            left = ("▐" if rest else "") + "█" * full
            if beyond:
                left = "◀" + left[1:]
            out.append(left.rjust(half) + "│" + " " * half)
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def _times(value: float) -> str:
    return f"×{_fmt(value)}"


def render_propagation(props: Sequence[Propagation], source: str | None = None, bar_width: int = 10) -> str:
    """Plain text: one row per weight layer; per mode the forward and backward variance with a bar.

    All bars share one log2 span, so a bar's length compares across columns.
    """
    if not props:
        return ""
    first = props[0]
    shape = "×".join(map(str, (first.batch, *first.input_shape)))
    draws = f"mean of {first.draws} draws" if first.draws > 1 else "1 draw"
    head = [f"{source} · " if source else "", f"scheme {first.scheme} · input N(0,1) {shape} · seed {first.seed}",
            f" · {draws} · norms {first.norms}"]
    lines = ["".join(head)]
    every = [v for p in props for s in p.layers for v in (s.forward_var, s.backward_var)]
    finite = [abs(math.log2(v)) for v in every if v > 0 and math.isfinite(v)]
    span = max(finite + [1.0])
    columns: list[list[str]] = []
    titles: list[str] = []
    for p in props:
        for label, values in (("forward", [s.forward_var for s in p.layers]),
                              ("backward", [s.backward_var for s in p.layers])):
            titles.append(f"{label} {p.mode}")
            drawn = bars(values, bar_width, span)
            columns.append([f"{_fmt(v):>8} {bar}" for v, bar in zip(values, drawn)])
    names = [s.name for s in first.layers]
    kinds = [s.kind for s in first.layers]
    if any([s.name for s in p.layers] != names for p in props):
        raise ValueError("propagations over different layers cannot share a table")
    name_w = max([len("layer")] + [len(n) for n in names])
    kind_w = max([len("kind")] + [len(k) for k in kinds])
    col_w = max([len(t) for t in titles] + [len(c) for col in columns for c in col])
    header = [f"{'layer':<{name_w}}", f"{'kind':<{kind_w}}", *(f"{t:<{col_w}}" for t in titles)]
    lines.append("  ".join(header).rstrip())
    for i, (name, kind) in enumerate(zip(names, kinds)):
        cells = [f"{name:<{name_w}}", f"{kind:<{kind_w}}", *(f"{col[i]:<{col_w}}" for col in columns)]
        lines.append("  ".join(cells).rstrip())
    for p in props:
        lines.append(
            f"{p.mode}: forward {_times(p.forward_ratio)} first → last layer{_range(p.forward_ratios)} "
            f"(spread {_times(p.forward_spread)}); backward {_times(p.backward_ratio)} last → first layer"
            f"{_range(p.backward_ratios)} (spread {_times(p.backward_spread)})"
        )
    lines.append(
        "forward: variance of each layer's output Wx + b, before its nonlinearity · backward: variance of the "
        "gradient at its input, for a N(0,1) gradient at the output · bars: log2 scale, │ = variance 1, "
        f"each side 2^±{span:.3g}"
    )
    notes = list(dict.fromkeys(n for p in props for n in p.notes))
    lines += notes
    return "\n".join(lines) + "\n"


def _range(ratios: Sequence[float]) -> str:
    finite = [r for r in ratios if math.isfinite(r)]
    if len(ratios) < 2 or not finite:
        return ""
    return f", single draws {_times(min(finite))}–{_times(max(finite))}"


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_dict(props: Sequence[Propagation], source: str | None = None) -> dict[str, Any]:
    """Plain data for JSON (non-finite numbers become null)."""
    return {
        "source": source,
        "propagations": [
            {
                "mode": p.mode,
                "scheme": p.scheme,
                "norms": p.norms,
                "seed": p.seed,
                "batch": p.batch,
                "input_shape": list(p.input_shape),
                "draws": p.draws,
                "input_var": _json_float(p.input_var),
                "forward_ratio": _json_float(p.forward_ratio),
                "backward_ratio": _json_float(p.backward_ratio),
                "forward_spread": _json_float(p.forward_spread),
                "backward_spread": _json_float(p.backward_spread),
                "forward_ratios": [_json_float(r) for r in p.forward_ratios],
                "backward_ratios": [_json_float(r) for r in p.backward_ratios],
                "notes": list(p.notes),
                "layers": [
                    {
                        "name": s.name,
                        "kind": s.kind,
                        "shape": list(s.shape),
                        "std": _json_float(s.std),
                        "forward_var": _json_float(s.forward_var),
                        "backward_var": _json_float(s.backward_var),
                    }
                    for s in p.layers
                ],
            }
            for p in props
        ],
    }
