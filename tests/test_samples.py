"""The saved samples: every format of the same model gives the same layers, equal to the live module's."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, run, torch_std_and_bound
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans

from fancli.analysis.fans import layer_fans
from fancli.loaders import load
from fancli.report import Settings, analyze
from fancli.weights.stats import observe

SAMPLES = REPO / "sample_models"
TINYNET = {
    "tinynet_state_dict.pt": "torch-zip",
    "tinynet_checkpoint.ckpt": "torch-zip",
    "tinynet_script.pt": "torchscript",
    "tinynet.safetensors": "safetensors",
    "tinynet_bf16.safetensors": "safetensors",
}
MODULE_SOURCES = ("tinynet_script.pt", "tinynet_module.pt", "sample_models.models:tinynet")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # factories and the pickled module import sample_models from here


def live():
    import sys

    sys.path.insert(0, str(REPO))
    from sample_models.models import tinynet

    return tinynet()


def _load(name: str):
    path = name if ":" in name else str(SAMPLES / name)
    return load(path, trust=name == "tinynet_module.pt")


@pytest.mark.parametrize("name", list(TINYNET) + ["tinynet_module.pt", "sample_models.models:tinynet"])
def test_every_format_equals_the_live_module(name):
    module = live()
    weights = dict(module.named_parameters(remove_duplicate=False))
    model = _load(name)
    reported = {layer.param: layer for layer in model.layers}
    aliases = {alias for layer in model.layers for alias in layer.aliases}
    # safetensors files of tied models drop the duplicate key, as safetensors.torch.save_model does
    expected = set(weights) - ({"head.weight"} if "safetensors" in name else set())
    assert set(reported) | aliases == expected
    rows = {row.layer.param: row for row in analyze(model, Settings(scheme="kaiming_normal", modes=("fan_out",),
                                                                      nonlinearity="relu")).rows}
    for key, layer in reported.items():
        weight = weights[key]
        assert layer.shape == tuple(weight.shape), key
        if weight.dim() >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == torch_fans(weight), key
            std, _ = torch_std_and_bound(torch.nn.init.kaiming_normal_, torch.empty_like(weight, dtype=torch.float32),
                                         mode="fan_out", nonlinearity="relu")
            assert rows[key].inits["fan_out"].std == std, key


@pytest.mark.parametrize("name", MODULE_SOURCES)
def test_module_sources_know_the_structure(name):
    layers = {layer.param: layer for layer in _load(name).layers}
    module = live()
    depthwise = layer_fans(layers["depthwise.weight"])
    assert depthwise.effective_fan_out == module.depthwise.weight.shape[0] // module.depthwise.groups * 9
    transposed = layer_fans(layers["up.weight"])
    assert transposed.effective_fan_out == torch_fans(module.up.weight)[0]  # (out/groups)·k, torch's fan_in
    assert layer_fans(layers["attn.in_proj_weight"]).effective_fan_out == module.attn.embed_dim
    assert layer_fans(layers["lstm.weight_ih_l0"]).effective_fan_out == module.lstm.hidden_size


@pytest.mark.parametrize("name", ["tinynet_state_dict.pt", "tinynet.safetensors"])
def test_flat_sources_say_what_they_cannot_know(name):
    layers = {layer.param: layer for layer in _load(name).layers}
    for key in ("depthwise.weight", "grouped.weight"):
        assert layers[key].groups is None and layers[key].transposed is None
        assert not layer_fans(layers[key]).differs and layers[key].notes
    # a transposed conv's bias has out_channels entries, not shape[0]: that much a state_dict proves
    up = layers["up.weight"]
    assert up.transposed and up.groups == 1 and any("bias" in note for note in up.notes)


@pytest.mark.parametrize("name", ["tinynet_state_dict.pt", "tinynet.safetensors", "tinynet_bf16.safetensors",
                                  "tinynet_script.pt", "sample_models.models:tinynet"])
def test_stats_equal_the_live_tensors(name):
    weights = dict(live().named_parameters())
    for layer in _load(name).layers:
        tensor = weights[layer.param].detach()
        if "bf16" in name:
            tensor = tensor.to(torch.bfloat16)
        observed = observe(layer.data)
        assert observed.mean == pytest.approx(tensor.float().mean().item(), rel=1e-5, abs=1e-7)
        assert observed.std == pytest.approx(tensor.float().std().item(), rel=1e-5)


def test_lenet5_in_every_format_agrees():
    formats = ["lenet5.pth", "lenet5.pt2", "lenet5.safetensors", "lenet5.safetensors.index.json",
               "sample_models.models:lenet5"]
    shapes = [{layer.param: layer.shape for layer in _load(name).layers} for name in formats]
    assert all(s == shapes[0] for s in shapes[1:])


def test_the_pickled_module_needs_trust():
    refused = run("inspect", SAMPLES / "tinynet_module.pt")
    assert refused.code == 2 and "--trust" in refused.err and "sample_models.models.TinyNet" in refused.err
    assert run("inspect", SAMPLES / "tinynet_module.pt", "--trust").code == 0


def test_the_readme_sample_commands_work():
    for args in (["inspect", SAMPLES / "tinynet_checkpoint.ckpt", "--stats", "-f", "json"],
                 ["compare", SAMPLES / "tinynet_script.pt", "--fans", "effective"],
                 ["inspect", "sample_models.models:lenet5", "--kwargs", '{"seed": 3}', "-f", "markdown"]):
        result = run(*args)
        assert result.code == 0, result.err
    data = json.loads(run("inspect", SAMPLES / "tinynet_checkpoint.ckpt", "--stats", "-f", "json").out)
    assert all("observed" in layer for layer in data["layers"])
