"""`fancli explain`: the derivation's numbers are torch's, for a bare shape and for a layer of a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans

from helpers import REPO, run, torch_std_and_bound


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
