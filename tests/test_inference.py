"""Init inference: named right from the weights alone, and never claimed for weights scaled by 1.5×."""

from __future__ import annotations

import json
import zlib

import torch
from helpers import run
from torch import nn
from torch.nn import init

from fancli.analysis.fans import layer_fans
from fancli.analysis.inference import Candidate, _same, infer
from fancli.analysis.schemes import variance_scaling
from fancli.layer import Layer
from fancli.loaders.torch_tensor import TorchTensorData
from fancli.weights.stats import observe

SHAPES = [(256, 128), (128, 64, 3, 3), (64, 3, 7, 7), (512, 256, 1, 1), (300, 100), (96, 48, 5)]
NONLINEARITIES = ["relu", "linear", "tanh"]
# (scheme, mode, the torch call that draws it)
INITS = [
    ("kaiming_normal", "fan_in", lambda t, nl: init.kaiming_normal_(t, mode="fan_in", nonlinearity=nl)),
    ("kaiming_normal", "fan_out", lambda t, nl: init.kaiming_normal_(t, mode="fan_out", nonlinearity=nl)),
    ("kaiming_uniform", "fan_in", lambda t, nl: init.kaiming_uniform_(t, mode="fan_in", nonlinearity=nl)),
    ("kaiming_uniform", "fan_out", lambda t, nl: init.kaiming_uniform_(t, mode="fan_out", nonlinearity=nl)),
    ("xavier_normal", None, lambda t, nl: init.xavier_normal_(t, gain=init.calculate_gain(nl))),
    ("xavier_uniform", None, lambda t, nl: init.xavier_uniform_(t, gain=init.calculate_gain(nl))),
]


def _layer(shape) -> Layer:
    return Layer("w", "w.weight", "linear" if len(shape) == 2 else f"conv{len(shape) - 2}d", shape)


def _expected(scheme: str, mode: str | None, nonlinearity: str, shape) -> Candidate:
    fan_in, fan_out = layer_fans(_layer(shape)).pick(False)
    distribution = "normal" if scheme.endswith("normal") else "uniform"
    values = variance_scaling(init.calculate_gain(nonlinearity), fan_in, fan_out, mode or "fan_avg", distribution)
    return Candidate(scheme, mode, nonlinearity, None, values.std, distribution)


def _infer(tensor: torch.Tensor):
    observed = observe(TorchTensorData(tensor), kurtosis=True, structure=True)
    layer = _layer(tuple(tensor.shape))
    return infer(layer, layer_fans(layer), observed.std, observed.kurtosis, observed.count, observed.mean,
                 observed.structure)


def _cases():
    for scheme, mode, draw in INITS:
        for nonlinearity in NONLINEARITIES:
            for shape in SHAPES:
                for seed in range(3):
                    yield scheme, mode, draw, nonlinearity, shape, seed


def test_known_inits_are_named_in_at_least_95_percent_of_layers_and_scaled_ones_never():
    right, total, claimed_scaled = 0, 0, []
    for scheme, mode, draw, nonlinearity, shape, seed in _cases():
        torch.manual_seed(zlib.crc32(repr((scheme, mode, nonlinearity, shape, seed)).encode()))
        tensor = torch.empty(shape)
        draw(tensor, nonlinearity)
        found = _infer(tensor)
        total += 1
        right += found.best is not None and _same(found.best, _expected(scheme, mode, nonlinearity, shape))
        scaled = _infer(tensor * 1.5)
        if scaled.best is not None:
            claimed_scaled.append((scheme, mode, nonlinearity, shape, seed, scaled.label))
    assert total == len(INITS) * len(NONLINEARITIES) * len(SHAPES) * 3
    assert right / total >= 0.95, f"{right} of {total}"
    assert claimed_scaled == []


def test_torch_default_and_truncated_normal_are_told_apart_from_their_lookalikes():
    torch.manual_seed(0)
    linear = nn.Linear(512, 256)  # untouched: torch's default
    assert _infer(linear.weight.detach()).label == "torch default"
    tensor = torch.empty(256, 512)
    std = _expected("kaiming_normal", "fan_in", "relu", (256, 512)).std
    init.trunc_normal_(tensor, std=std / 0.87962566103423978, a=-2 * std / 0.8796, b=2 * std / 0.8796)
    assert _infer(tensor).label == "truncated_normal, fan_in, relu"
    trained = torch.randn(256, 512) * 0.05 + torch.linspace(-0.1, 0.1, 512)
    assert _infer(trained).label == "unknown/trained"


def _resnet18() -> nn.Module:
    """torchvision's ResNet-18 layout, built by hand, with torchvision's init."""

    def block(inp: int, out: int, stride: int) -> nn.Module:
        b = nn.Module()
        b.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        b.bn1 = nn.BatchNorm2d(out)
        b.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        b.bn2 = nn.BatchNorm2d(out)
        if stride != 1 or inp != out:
            b.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        return b

    net = nn.Module()
    net.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(64)
    inp = 64
    for index, width in enumerate((64, 128, 256, 512)):
        stride = 1 if index == 0 else 2
        setattr(net, f"layer{index + 1}", nn.Sequential(block(inp, width, stride), block(width, width, 1)))
        inp = width
    net.fc = nn.Linear(512, 1000)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.constant_(module.weight, 1)
            init.constant_(module.bias, 0)
    return net


def test_torchvision_resnet_convs_are_kaiming_normal_fan_out_relu_and_fc_is_torchs_default(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(_resnet18().state_dict(), path)
    result = run("inspect", path, "--infer", "-f", "json")
    assert result.code == 0, result.err
    layers = {layer["param"]: layer for layer in json.loads(result.out)["layers"]}
    convs = [layer for layer in layers.values() if layer["kind"] == "conv2d"]
    assert len(convs) == 20
    for layer in convs:
        assert layer["inferred"]["label"] == "kaiming_normal, fan_out, relu", (layer["param"], layer["inferred"])
    assert layers["fc.weight"]["inferred"]["label"] == "torch default"
    assert "kurtosis" in layers["fc.weight"]["observed"]
