"""The coordinate check (Yang et al., Tensor Programs V; the `mup` package's coord_check): build the model at
several widths, train each a few steps on the same random batch, and record every module's mean |output| at
each step. Each layer's curve against width is then fitted (`slopes`): flat where the parametrization
scales, growing where the model blows up as it widens.

As mup's `get_coord_data` does: forward hooks record the statistic (mup's `l1`, the mean |coordinate|) on
the forward pass of step t, before that step's update, so step 0 is the model as initialised; the batch is
fixed across steps and widths. Unlike mup the data is random: inputs N(0, 1) and the loss the mean squared
error to a fixed N(0, 1) target of the output's shape (a factory's model needs no dataset). This module
imports torch; only `fancli scale` reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..errors import SettingsError, SourceError
from ..loaders.factory import one_line
from ..propagate import MAX_BATCH, MAX_BYTES, load_source
from ..propagate.signals import gib, memory_refused
from .base_shapes import BaseShapes, ParamScaling, static_check
from .slopes import FAIL_ON, fit_slope, overall, verdict

#: mup's defaults (get_coord_data): 0.1 for SGD, 1e-3 for Adam.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
OPTIMIZERS = tuple(DEFAULT_LR)
#: A sweep's bounds: each width is a model built and trained; more widths or steps only take longer.
MAX_WIDTHS, MAX_STEPS, MAX_SEEDS = 64, 1000, 100
DEFAULT_BATCH = 64
#: A slope within ±0.2 (a factor 2^0.2 ≈ 1.15 per doubling of width) is flat. mup's coordinate checks are
#: read by eye: μP's curves flat, the standard parametrization's growing as width^0.5 to width^1 after one
#: Adam step (measured here for a ReLU MLP: slopes 0.7-1.0 at widths 64-512). A single seed's μP curve
#: wanders by O(1/√width): up to 0.13 over 24 seeds at widths 64-512, up to 0.23 at 32-256. So 0.2 sits
#: between the two; `seeds` narrows the wander, and widths from 64 spanning three doublings or more keep it.
DEFAULT_TOLERANCE = 0.2
#: The name the model's own output (the root module) is recorded under.
OUTPUT = "(output)"


@dataclass(frozen=True)
class LayerCurve:
    """One module's mean |output| at each step (rows) and width (columns), its slope and verdict per step."""

    name: str  # the module's qualified name; OUTPUT for the model's own output
    kind: str  # the module's class
    values: tuple[tuple[float, ...], ...]  # values[step][i]: mean |output| at widths[i]
    slopes: tuple[float | None, ...]  # per step: exponent of width (log2 change per doubling); None: undefined
    verdicts: tuple[str, ...]  # per step: one of slopes.VERDICTS

    @property
    def verdict(self) -> str:
        return overall(self.verdicts)


@dataclass(frozen=True)
class WidthSweep:
    """A coordinate check's result: what was run, each module's curves, and the static base-shape check."""

    command: ClassVar[str] = "scale"  # its renderers' key in fancli.outputs (`fancli.render(sweep, "json")`)
    source: str
    width_key: str
    widths: tuple[int, ...]
    steps: int
    optimizer: str
    lr: float
    batch: int
    seed: int
    seeds: int  # runs averaged per width, with seeds seed … seed+seeds-1
    input_shape: tuple[int, ...]
    tolerance: float
    fail_on: str
    layers: tuple[LayerCurve, ...]
    base_shapes: tuple[ParamScaling, ...] | None = None
    notes: tuple[str, ...] = ()

    def failures(self) -> tuple[LayerCurve, ...]:
        """The layers whose verdict `fail_on` counts as a failure (the CLI exits 1 on any)."""
        return tuple(layer for layer in self.layers if layer.verdict in FAIL_ON[self.fail_on])

    @property
    def ok(self) -> bool:
        return not self.failures()


def width_sweep(factory: str | Callable[..., nn.Module], widths: Sequence[int], *, width_key: str = "width",
                kwargs: dict[str, Any] | None = None, steps: int = 3, optimizer: str = "adam",
                lr: float | None = None, batch: int | None = None, input_shape: Sequence[int] | None = None,
                seed: int = 0, seeds: int = 1, tolerance: float = DEFAULT_TOLERANCE, fail_on: str = "any",
                base_shapes: BaseShapes | None = None,
                on_width: Callable[[int, int], None] | None = None) -> WidthSweep:
    """Build `factory(**kwargs, width_key=w)` for each width w, train it `steps` steps and fit the curves.

    `factory` is a "pkg.module:callable" (the user's code, imported as every factory source is) or a
    callable. Each width starts from `seed` (torch.manual_seed before the factory runs, so the inits are
    seeded); `seeds` > 1 repeats the run with seeds seed, seed+1, … and averages the statistic, as mup's
    `nseeds` does (one draw's curve wanders by O(1/√width) at small widths). `optimizer` "adam" or "sgd"
    at `lr` (default: mup's, DEFAULT_LR); a parameter with a float attribute `lr_scale` trains at
    lr·lr_scale (how a μP model says its hidden and readout weights train at lr/width_mult, as mup's MuAdam
    does). `input_shape` is one example's shape (default: (in_features,)
    of the first Linear module registered). `on_width(i, w)` is called before each width is built.
    """
    widths, source = _checked(widths, steps, optimizer, lr, batch, tolerance, fail_on), _name(factory)
    if not 1 <= seeds <= MAX_SEEDS:
        raise SettingsError(f"seeds must be from 1 to {MAX_SEEDS}, got {seeds:,}")
    if kwargs and width_key in kwargs:
        raise SettingsError(f"{source}: the keyword arguments set {width_key!r}, which the sweep sets to each width")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    batch = batch or DEFAULT_BATCH
    shape: tuple[int, ...] | None = tuple(int(d) for d in input_shape) if input_shape is not None else None
    if shape is not None and (not shape or any(d < 1 for d in shape)):
        raise SettingsError(f"{source}: input shape must be positive sizes, got {shape}")
    records: list[dict[str, tuple[str, list[float]]]] = []
    params: list[dict[str, tuple[tuple[int, ...], float]]] = []
    silent: set[str] = set()  # modules hooked but never recorded at some width
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), memory_refused(source):
        for index, width in enumerate(widths):
            if on_width is not None:
                on_width(index, width)
            runs, inits = [], []
            for draw in range(seed, seed + seeds):
                torch.manual_seed(draw)
                net = _build(factory, source, {**(kwargs or {}), width_key: width})
                if shape is None:
                    shape = _input_shape(net, source)
                inits.append({name: (tuple(p.shape), _std(p)) for name, p in net.named_parameters()})
                run, unrecorded = _train(net, source, width, shape, batch, steps, optimizer, lr, draw)
                runs.append(run)
                silent |= unrecorded
            records.append(_mean_records(runs))
            params.append({name: (shape_, _mean([i[name][1] for i in inits]))
                           for name, (shape_, _) in inits[0].items()})
    layers, notes = _curves(records, widths, steps, tolerance)
    if silent:
        notes += (f"not called at every step, or no floating-point tensor output, so not recorded: "
                  f"{', '.join(sorted(silent))}",)
    static = static_check(base_shapes, widths, params, tolerance) if base_shapes is not None else None
    return WidthSweep(source, width_key, widths, steps, optimizer, lr, batch, seed, seeds, shape or (), tolerance,
                      fail_on, layers, static, notes)


def _checked(widths: Sequence[int], steps: int, optimizer: str, lr: float | None, batch: int | None,
             tolerance: float, fail_on: str) -> tuple[int, ...]:
    """The widths in increasing order; SettingsError (exit 2) for a setting a sweep cannot run with."""
    widths = tuple(sorted(set(int(w) for w in widths)))
    if len(widths) < 2 or len(widths) > MAX_WIDTHS or widths[0] < 1:
        raise SettingsError(f"widths: give 2 to {MAX_WIDTHS} different sizes of at least 1 (e.g. 64,128,256,512), "
                            f"got {', '.join(map(str, widths)) or 'none'}")
    if not 0 <= steps <= MAX_STEPS:
        raise SettingsError(f"steps must be from 0 to {MAX_STEPS:,}, got {steps:,}")
    if optimizer not in OPTIMIZERS:
        raise SettingsError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise SettingsError(f"learning rate must be a finite number > 0, got {lr}")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise SettingsError(f"batch must be from 1 to {MAX_BATCH:,}, got {batch:,}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise SettingsError(f"tolerance must be a finite number > 0 (a slope per doubling), got {tolerance}")
    if fail_on not in FAIL_ON:
        raise SettingsError(f"unknown fail_on {fail_on!r}; known: {', '.join(FAIL_ON)}")
    return widths


def _name(factory: str | Callable[..., nn.Module]) -> str:
    return factory if isinstance(factory, str) else getattr(factory, "__qualname__", type(factory).__name__)


def _build(factory: str | Callable[..., nn.Module], source: str, kwargs: dict[str, Any]) -> nn.Module:
    """The module the factory builds at one width; whatever the factory raises (a width keyword it does not
    take) is one line."""
    from .. import loaders

    if isinstance(factory, str):
        if not loaders.is_factory(factory):
            raise SettingsError(f"{factory}: scale builds the model at each width: give a factory "
                                "pkg.module:callable")
        built = load_source(factory, kwargs=kwargs)
    else:
        try:
            built = factory(**kwargs)
        except Exception as error:  # noqa: BLE001 - whatever the user's factory raises is the source's problem
            raise SourceError(f"{source}: raised {type(error).__name__}: {one_line(error)}") from None
    if not isinstance(built, nn.Module):
        raise SourceError(f"{source}: returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def _input_shape(net: nn.Module, source: str) -> tuple[int, ...]:
    first = next((m for m in net.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise SettingsError(f"{source}: no Linear module to take the input size from; give --input-shape "
                            "(input_shape= in the library), e.g. 3,32,32")
    return (first.in_features,)


def _std(tensor: torch.Tensor) -> float:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return math.nan
    return float(tensor.detach().to(torch.float64).std(unbiased=False))


class _Coords:
    """Forward hook: a module's mean |output| at the current step, averaged over its calls in that pass."""

    def __init__(self, steps: int) -> None:
        self.sums, self.calls, self.step = [0.0] * (steps + 1), [0] * (steps + 1), 0

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
            with torch.no_grad():
                self.sums[self.step] += float(output.detach().abs().to(torch.float64).mean())
            self.calls[self.step] += 1

    def means(self) -> list[float] | None:
        if not all(self.calls):
            return None  # not called at some step, or its output was no floating tensor
        return [s / c for s, c in zip(self.sums, self.calls)]


def _train(net: nn.Module, source: str, width: int, shape: tuple[int, ...], batch: int, steps: int,
           optimizer: str, lr: float, seed: int) -> tuple[dict[str, tuple[str, list[float]]], set[str]]:
    """Module name -> (class, mean |output| at steps 0..steps) for one width; and the modules hooked but not
    recorded (not called at every step, or with no floating-point tensor output)."""
    net.train()
    hooked = [(OUTPUT, net)] + [(name, m) for name, m in net.named_modules() if name and not any(m.children())]
    coords = [_Coords(steps) for _ in hooked]
    for (_, module), coord in zip(hooked, coords):
        module.register_forward_hook(coord)
    first = next((p for p in net.parameters() if p.is_floating_point()), None)
    dtype, device = (first.dtype, first.device) if first is not None else (torch.float32, torch.device("cpu"))
    if 2 * 4 * batch * math.prod(shape) > MAX_BYTES:  # the input and its activations' first copy, as propagate
        raise SettingsError(f"{source}: an input of {batch}×{'×'.join(map(str, shape))} would need "
                            f"{gib(2 * 4 * batch * math.prod(shape))}; give a smaller batch or input shape")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype)
    opt = _optimizer(net, source, optimizer, lr)
    target = None
    for step in range(steps + 1):
        for coord in coords:
            coord.step = step
        out = _forward(net, x, source, width)
        if step == steps:
            break
        if target is None:
            target = torch.randn(out.shape, generator=generator).to(device=out.device, dtype=out.dtype)
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    recorded = {name: (type(module).__name__, means) for (name, module), coord in zip(hooked, coords)
                if (means := coord.means()) is not None}
    return recorded, {name for name, _ in hooked} - set(recorded)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _mean_records(runs: list[dict[str, tuple[str, list[float]]]]) -> dict[str, tuple[str, list[float]]]:
    """One width's runs (one per seed) as one: each module's statistic averaged over the runs that have it."""
    names = [name for name in runs[0] if all(name in run for run in runs)]
    return {name: (runs[0][name][0], [_mean(values) for values in zip(*(run[name][1] for run in runs))])
            for name in names}


def _forward(net: nn.Module, x: torch.Tensor, source: str, width: int) -> torch.Tensor:
    try:
        out = net(x)
    except Exception as error:  # noqa: BLE001 - the user's forward, or shapes torch rejects
        raise SourceError(f"{source}: the forward pass at width {width} failed: {type(error).__name__}: "
                          f"{one_line(error)} (is --input-shape right?)") from None
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise SourceError(f"{source}: the forward pass must return one floating-point tensor, got {type(out).__name__}")
    return out


def _optimizer(net: nn.Module, source: str, name: str, lr: float) -> torch.optim.Optimizer:
    """One parameter group per `lr_scale` (1 where a parameter has none)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for pname, param in net.named_parameters():
        if not param.requires_grad:
            continue
        scale = getattr(param, "lr_scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
            raise SourceError(f"{source}: {pname}.lr_scale must be a finite number > 0, got {scale!r}")
        groups.setdefault(float(scale), []).append(param)
    if not groups:
        raise SourceError(f"{source}: no trainable parameters")
    param_groups = [{"params": ps, "lr": lr * scale} for scale, ps in groups.items()]
    return torch.optim.Adam(param_groups, lr=lr) if name == "adam" else torch.optim.SGD(param_groups, lr=lr)


def _curves(records: list[dict[str, tuple[str, list[float]]]], widths: tuple[int, ...], steps: int,
            tolerance: float) -> tuple[tuple[LayerCurve, ...], tuple[str, ...]]:
    """Each module recorded at every width, in the first width's order; the others named in a note."""
    names = [name for name in records[0] if all(name in r for r in records)]
    missing = sorted({name for r in records for name in r} - set(names))  # recorded at some widths only
    layers = []
    for name in names:
        values = tuple(tuple(r[name][1][step] for r in records) for step in range(steps + 1))
        slopes = tuple(fit_slope(widths, row) for row in values)
        verdicts = tuple(verdict(row, slope, tolerance) for row, slope in zip(values, slopes))
        layers.append(LayerCurve(name, records[0][name][0], values, slopes, verdicts))
    notes = (f"not recorded at every width, so left out: {', '.join(missing)}",) if missing else ()
    return tuple(layers), notes
