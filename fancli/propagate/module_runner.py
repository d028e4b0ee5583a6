"""A live torch.nn.Module: a copy re-initialised as fancli's analysis says and run with hooks on its
Linear and Conv modules (read with `fancli.loaders.torch_module.layers_from_module`)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import kinds
from ..layer import Model
from ..loaders.torch_module import layers_from_module, module_class
from ..report import Row
from .signals import (
    Draw,
    LayerSignal,
    PropagateError,
    Recorder,
    Runner,
    draw_weights,
    forward_backward,
    nan_if_none,
    scheme_name,
    variance,
)


class ModuleRunner(Runner):
    def __init__(self, module: nn.Module, norms: str) -> None:
        self.original, self.norms = module, norms
        self.source = module_class(module)
        self.model = Model(source=self.source, format="torch-module", layers=layers_from_module(module),
                           name=self.source)
        self.weight_layers = [
            layer for layer in self.model.layers
            if _is_weight_module(layer.kind) and layer.param.rpartition(".")[2] == "weight"
        ]
        if not self.weight_layers:
            raise PropagateError(f"{self.source}: no Linear or Conv module to propagate through")

    def run(self, mode: str, rows: dict[str, Row], batch: int, shape: tuple[int, ...],
            generator: torch.Generator) -> Draw:
        net = copy.deepcopy(self.original)
        net.train(self.norms == "real")
        net.requires_grad_(False)  # gradients flow to the input only: no weight gradients computed
        modules = dict(net.named_modules())
        recorders, stds = [], []
        for layer in self.weight_layers:
            module = modules[layer.param.rpartition(".")[0]]
            stds.append(draw_weights(module.weight, rows[layer.param], mode, generator, self.source))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                with torch.no_grad():
                    bias.zero_()
            recorder = Recorder()
            module.register_forward_hook(recorder)
            recorders.append(recorder)
        if self.norms == "identity":
            for module in modules.values():
                if module_class(module) in kinds.NORM_CLASSES:
                    module.register_forward_hook(_pass_through)
        first = next((p for p in net.parameters() if p.is_floating_point()), None)
        dtype = first.dtype if first is not None else torch.float32
        device = first.device if first is not None else torch.device("cpu")
        x = torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
        forward_backward(net, x, generator, self.source)
        signals, skipped, repeated = [], [], []
        for layer, recorder, std in zip(self.weight_layers, recorders, stds):
            if recorder.forward is None:
                skipped.append(layer.name)
                continue
            if recorder.calls > 1:
                repeated.append(layer.name)
            signals.append(LayerSignal(layer.name, layer.kind, tuple(layer.shape), std,
                                       recorder.forward, nan_if_none(recorder.backward)))
        notes = []
        if skipped:
            notes.append(f"not called as modules in the forward pass, so not measured: {', '.join(skipped)}")
        if repeated:
            notes.append(f"called more than once; the first call is reported: {', '.join(repeated)}")
        if self.norms == "identity" and any(module_class(m) in kinds.NORM_CLASSES for m in modules.values()):
            notes.append("norm modules passed through (norms: identity): the variances are the init's alone")
        if not signals:
            raise PropagateError(f"{self.source}: none of its Linear or Conv modules ran in the forward pass")
        return Draw(tuple(signals), variance(x), scheme_name(rows[layer.param] for layer in self.weight_layers),
                     tuple(notes))


def _is_weight_module(kind: str) -> bool:
    """A Linear or a Conv (transposed too): the modules whose weights are drawn and whose signals are recorded."""
    record = kinds.kind(kind)
    return record.runnable and (record.is_conv or record.name == "linear")


def _pass_through(_module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> Any:
    return inputs[0]

