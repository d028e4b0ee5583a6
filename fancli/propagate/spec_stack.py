"""A YAML spec as a sequential stack of torch modules: its layer records chained by size, the input shape
that fits them, and one run (weights drawn, N(0, 1) in, N(0, 1) gradient back). Which kinds run, and
what a conv is, comes from the kind registry (`fancli.kinds`); the activation after each layer from the
activation registry (`fancli.analysis.activations`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import kinds
from ..analysis import activations
from ..analysis.fans import channels_first
from ..layer import Layer, Model
from ..vocab import KERNEL_LAST
from ..report import Row
from .signals import (
    MAX_BYTES,
    Draw,
    LayerSignal,
    PropagateError,
    Recorder,
    Runner,
    draw_weights,
    forward_backward,
    gib,
    nan_if_none,
    scheme_name,
    variance,
)

#: Default spatial size of the input when the first layer is a conv (per dims), or a transposed conv.
_SPATIAL = {1: 64, 2: 32, 3: 16}
_SPATIAL_TRANSPOSED = {1: 16, 2: 8, 3: 4}
_SEARCH_SPATIAL = range(1, 1025)


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
    if layer.layout == "jax" and (layer.transposed or kinds.kind(layer.kind).transposed):  # Flax's [*k, in, out]
        return (shape[-2], shape[-1], *shape[:-2])
    if layer.layout in KERNEL_LAST:
        return (shape[-1], shape[-2], *shape[:-2])
    if layer.layout == "in_out" and len(shape) == 2:
        return (shape[1], shape[0])
    if layer.layout == "channels_last" and len(shape) >= 3:  # MLX's [out, *k, in], its ConvTranspose's too
        return channels_first(shape, bool(layer.transposed))
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
    dims = kinds.kind(layer.kind).spatial_dims
    if len(shape) != dims + 2:
        raise PropagateError(f"{source}: {layer.name}: a {layer.kind} weight needs {dims + 2} dims, "
                             f"got {list(layer.shape)}")
    transposed = bool(layer.transposed) or kinds.kind(layer.kind).transposed
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


class SpecStack(Runner):
    def __init__(self, model: Model, norms: str) -> None:
        self.model, self.norms, self.source = model, norms, model.source
        self.steps: list[_Step] = []
        self.leading_norms: list[Layer] = []
        for layer in model.layers:
            if not kinds.kind(layer.kind).runnable:
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
            raise PropagateError(f"{self.source}: this run would need {gib(estimate)}; "
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
            generator: torch.Generator) -> Draw:
        net, weights = self._build(rows, shape)
        net.train(self.norms == "real")
        net.requires_grad_(False)  # gradients flow to the input only: no weight gradients computed
        recorders = []
        stds = []
        for step, module in weights:
            stds.append(draw_weights(module.weight, rows[step.layer.param], mode, generator, self.source))
            with torch.no_grad():
                if module.bias is not None:
                    module.bias.zero_()
            recorder = Recorder()
            module.register_forward_hook(recorder)
            recorders.append(recorder)
        x = torch.randn((batch, *shape), generator=generator).requires_grad_(True)
        forward_backward(net, x, generator, self.source)
        signals = tuple(
            LayerSignal(step.layer.name, step.layer.kind, tuple(step.layer.shape), std,
                        nan_if_none(r.forward), nan_if_none(r.backward))
            for (step, _), r, std in zip(weights, recorders, stds)
        )
        notes = []
        if self.norms == "identity" and (self.leading_norms or any(s.norms for s in self.steps)):
            notes.append("norm layers left out (norms: identity): the variances are the init's alone")
        return Draw(signals, variance(x), scheme_name(rows[s.layer.param] for s, _ in weights), tuple(notes))


def _activation(name: str | None, param: float | None, source: str, layer: str) -> nn.Module:
    """The torch module of the activation registry's record (with the user's parameter, else its default);
    none stated (a scheme whose gain needs none) runs as the identity."""
    try:
        return activations.torch_module(name or "linear", param)
    except ValueError as error:
        raise PropagateError(f"{source}: {layer}: {error}") from None

