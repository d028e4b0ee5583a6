"""`fancli explain`: the derivation's numbers are torch's, for a bare shape and for a layer of a model."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import REPO, run, torch_std_and_bound
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans


@pytest.mark.parametrize("shape,nonlinearity", [((64, 3, 7, 7), "relu"), ((256, 128), "tanh"), ((32, 16, 5), "leaky_relu")])
def test_shape_derivation_has_torchs_fans_gain_and_std(shape, nonlinearity):
    result = run("explain", "--shape", ",".join(map(str, shape)), "-n", nonlinearity)
    assert result.code == 0, result.err
    fan_in, fan_out = torch_fans(torch.empty(shape))
    std, _ = torch_std_and_bound(torch.nn.init.kaiming_normal_, torch.empty(shape), nonlinearity=nonlinearity)
    gain = torch.nn.init.calculate_gain(nonlinearity)
    assert f"= {fan_in}   (torch" in result.out and f"= {fan_out}   (torch" in result.out
    assert f"= {gain:.4g}" in result.out and f"/ √{fan_in} = {std:.4g}" in result.out


def test_the_classic_keras_question():
    out = run("explain", "--shape", "5,5,3,6", "--layout", "keras").out
    assert "fan_in  = in 3 × receptive field 5×5 = 75" in out and "fan_out = out 6 × receptive field 5×5 = 150" in out


def test_a_model_layer_with_effective_fans_says_why():
    out = run("explain", REPO / "sample_models" / "mobilenet_block.yaml", "--layer", "depthwise").out
    assert "depthwise.weight" in out and "effective fans: fan_in = 9, fan_out = 9" in out and "why: depthwise" in out
    both = run("explain", REPO / "sample_models" / "dcgan_generator.yaml", "-l", "main.3.weight", "--mode",
               "fan_in", "fan_out").out
    assert "mode fan_in:" in both and "mode fan_out:" in both


def test_torch_default_names_the_rule_torch_uses():
    out = run("explain", REPO / "sample_models" / "lstm_tagger.yaml", "-l", "lstm.weight_hh_l0").out
    assert f"U(±1/√hidden_size) = U(±1/√128), std = bound/√3 = {1 / math.sqrt(128) / math.sqrt(3):.4g}" in out


@pytest.mark.parametrize("args,message", [([str(REPO / "sample_models/lenet5.yaml")], "--layer"), (["--shape", "a,b"], "integers"),
                                          ([str(REPO / "sample_models/lenet5.yaml"), "-l", "nope"], "no layer matches")])
def test_bad_requests_exit_2(args, message):
    result = run("explain", *args)
    assert result.code == 2 and message in result.err


def test_explain_uses_the_fans_its_std_used(tmp_path):
    """pool_fan_out divides fan_out: the derivation says so instead of printing torch's fans beside its std."""
    spec = tmp_path / "pool.yaml"
    spec.write_text("defaults: {scheme: kaiming_normal, nonlinearity: relu, pool_fan_out: true, mode: fan_out}\n"
                    "layers:\n  - {name: conv1, type: conv2d, in_channels: 1, out_channels: 6, kernel_size: 5, pool: 2}\n")
    out = run("explain", spec, "-l", "conv1", "--fans", "effective").out
    assert "mode fan_out (effective fans): std = gain / √fan_out = 1.414 / √37.5" in out
    assert "effective fans: fan_in = 25, fan_out = 37.5 (torch: 25, 150)" in out


def test_one_stride_is_every_kernel_dim_as_in_a_spec(tmp_path):
    """`--stride 2` on a 2-D kernel is a 2×2 stride, as `stride: 2` in a spec and nn.Conv2d(stride=2) are."""
    spec = tmp_path / "strided.yaml"
    spec.write_text("layers:\n  - {name: c, type: conv2d, in_channels: 8, out_channels: 16, kernel_size: 3, stride: 2}\n")
    from_spec = run("explain", spec, "-l", "c", "--fans", "effective").out.splitlines()
    from_shape = run("explain", "--shape", "16,8,3,3", "--stride", "2", "--fans", "effective").out.splitlines()
    assert from_spec[1:] == from_shape[1:] and "fan_out = 36" in from_shape[-3]
    result = run("explain", "--shape", "16,8,3,3", "--stride", "2,2,2")
    assert result.code == 2 and "--stride" in result.err and result.err.count("\n") == 1


def test_explain_json_is_inspects_row_with_its_derivation():
    import json

    spec = REPO / "sample_models" / "lenet5.yaml"
    explained = run("explain", spec, "--layer", "conv1", "--format", "json")
    inspected = run("inspect", spec, "--format", "json", "-k", "conv1.weight")
    assert explained.code == 0 and inspected.code == 0, explained.err + inspected.err
    (row,) = json.loads(explained.out)["layers"]
    lines = row.pop("derivation")
    assert row == json.loads(inspected.out)["layers"][0]
    assert lines == run("explain", spec, "--layer", "conv1").out.strip().split("\n")


def test_explain_markdown_keeps_a_hostile_name_inert(tmp_path):
    import torch
    from markdown_it import MarkdownIt

    key = "<img src=x>[a](https://e.example)*b*.weight"
    torch.save({key: torch.zeros(3, 4)}, tmp_path / "m.pt")
    result = run("explain", tmp_path / "m.pt", "--layer", key.removesuffix(".weight"), "--format", "markdown")
    assert result.code == 0, result.err
    tokens = MarkdownIt("commonmark").parse(result.out)
    kinds = {child.type for token in tokens for child in (token.children or [])} | {t.type for t in tokens}
    assert not kinds & {"html_inline", "html_block", "link_open", "image", "em_open"}, kinds
