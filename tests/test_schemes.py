"""schemes: every std and bound equals what torch.nn.init passes to its sampler, and sampled tensors agree."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from helpers import torch_std_and_bound
from torch import nn
from torch.nn import init

from fancli.analysis.fans import torch_fans
from fancli.analysis.gains import gain
from fancli.analysis.schemes import (
    SCHEMES,
    TRUNCATED_NORMAL_STD,
    scheme,
    variance_scaling,
)
from fancli.analysis.torch_defaults import torch_default
from fancli.layer import Layer

SHAPES = [(300, 200), (64, 3, 7, 7), (128, 64, 3, 3), (32, 16, 5), (8, 4, 3, 3, 3)]
NONLINEARITIES = [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("linear", None), ("selu", None), ("sigmoid", None)]


def ours(name: str, shape, mode: str, nonlinearity: str, param):
    s = scheme(name)
    g = gain(*s.fixed_gain) if s.fixed_gain else gain(nonlinearity, param)
    fan_in, fan_out = torch_fans(shape)
    return variance_scaling(g, fan_in, fan_out, mode, s.distribution)


def torch_oracle(name: str, tensor: torch.Tensor, mode: str, nonlinearity: str, param):
    """The torch.nn.init call that implements (scheme, mode); fan_avg is xavier's rule with the scheme's gain."""
    s = scheme(name)
    distribution = "normal" if s.distribution == "normal" else "uniform"
    if s.fixed_gain:
        nonlinearity, param = s.fixed_gain
    if mode == "fan_avg":
        fn = init.xavier_normal_ if distribution == "normal" else init.xavier_uniform_
        return torch_std_and_bound(fn, tensor, gain=init.calculate_gain(nonlinearity, param))
    fn = init.kaiming_normal_ if distribution == "normal" else init.kaiming_uniform_
    if nonlinearity == "leaky_relu":
        return torch_std_and_bound(fn, tensor, a=param, mode=mode, nonlinearity=nonlinearity)
    return torch_std_and_bound(fn, tensor, mode=mode, nonlinearity=nonlinearity)


VARIANCE_SCHEMES = [n for n in SCHEMES if n not in ("truncated_normal", "torch_default")]


@pytest.mark.parametrize("name", VARIANCE_SCHEMES + ["torch_default"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("nonlinearity,param", NONLINEARITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_std_and_bound_equal_torch_exactly(name, mode, nonlinearity, param, shape):
    tensor = torch.empty(shape)
    torch_std, torch_bound = torch_oracle(name, tensor, mode, nonlinearity, param)
    values = ours(name, shape, mode, nonlinearity, param)
    if torch_bound is None:
        assert values.std == torch_std and values.bound is None
    else:
        assert values.bound == torch_bound
        assert values.std == pytest.approx(torch_std, rel=1e-15)


def standard_error(std: float, n: int) -> float:
    return std / math.sqrt(2 * n)


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("shape", [(400, 300), (96, 48, 3, 3)])
def test_sampled_tensor_std_within_three_standard_errors(name, mode, shape):
    """Initialise a tensor with torch and compare its sample std with ours (fixed seed: deterministic)."""
    values = ours(name, shape, mode, "relu", None)
    tensor = torch.empty(shape)
    torch.manual_seed(zlib.crc32(repr((name, mode, shape)).encode()))
    if scheme(name).distribution == "truncated_normal":
        sigma = values.sampling_std
        init.trunc_normal_(tensor, std=sigma, a=-2 * sigma, b=2 * sigma)
    else:
        torch_oracle(name, tensor, mode, "relu", None)
    observed = tensor.double().std().item()
    assert abs(observed - values.std) < 3 * standard_error(values.std, tensor.numel())
    if values.bound is not None:
        assert tensor.abs().max().item() <= torch.tensor(values.bound).item()  # the bound as float32


def test_truncated_normal_correction_constant_is_the_std_of_a_unit_normal_cut_at_two():
    z = torch.distributions.Normal(0.0, 1.0)
    a, b = -2.0, 2.0
    mass = z.cdf(torch.tensor(b)) - z.cdf(torch.tensor(a))
    pdf = lambda x: torch.exp(z.log_prob(torch.tensor(x)))  # noqa: E731
    variance = 1 + (a * pdf(a) - b * pdf(b)) / mass
    assert math.sqrt(variance.item()) == pytest.approx(TRUNCATED_NORMAL_STD, rel=1e-6)


def _weights_and_calls(build):
    from helpers import sampler_calls

    with sampler_calls() as calls:
        module = build()
    return module, {id(tensor): (method, args) for method, tensor, args in calls}  # the last call wins


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.Linear(300, 100),
        lambda: nn.Conv2d(16, 32, 3, groups=4),
        lambda: nn.ConvTranspose2d(32, 16, 4, stride=2, groups=2),
        lambda: nn.Conv1d(8, 8, 5, groups=8),
        lambda: nn.Bilinear(20, 30, 40),
        lambda: nn.LSTM(24, 32, num_layers=2, bidirectional=True),
        lambda: nn.LSTM(10, 16, proj_size=4),
        lambda: nn.GRU(24, 32),
        lambda: nn.RNN(24, 32),
        lambda: nn.MultiheadAttention(64, 8, add_bias_kv=True),
        lambda: nn.MultiheadAttention(64, 8, kdim=32, vdim=48),
        lambda: nn.Embedding(50, 8),
        lambda: nn.LayerNorm(16),
    ],
    ids=["linear", "conv", "deconv", "depthwise", "bilinear", "lstm", "lstm_proj", "gru", "rnn", "mha_bias_kv",
         "mha_kdim", "embedding", "layernorm"],
)
def test_torch_default_equals_what_torch_layers_do_for_every_parameter(build):
    """Every parameter, biases included: fancli's torch_default against the sampler call torch made."""
    from fancli import analyze
    from fancli.layer import Model
    from fancli.loaders.torch_module import layers_from_module
    from fancli.report import Settings

    module, calls = _weights_and_calls(build)
    report = analyze(Model("m", "module", layers_from_module(module)), Settings(scheme="torch_default"))
    params = dict(module.named_parameters())
    for row in report.rows:
        values = row.inits["fan_in"]
        tensor = params[row.layer.param]
        method, args = calls.get(id(tensor), (None, ()))
        if method == "uniform_":
            assert values.bound == pytest.approx(args[1], rel=1e-15) and args[0] == -args[1], row.layer.param
        elif method == "normal_":
            assert values.bound is None and values.std == pytest.approx(args[1], rel=1e-15), row.layer.param
        else:  # fill_/zero_: constants (attention biases 0, norm weights 1)
            assert method in ("fill_", "zero_") and values.std in (0.0, None) and values.note, row.layer.param


def test_torch_default_embedding_is_standard_normal():
    torch.manual_seed(0)
    weight = nn.Embedding(1000, 64).weight
    values = torch_default(Layer("e", "e.weight", "embedding", (1000, 64)), 64, 1000, "fan_in")
    assert values.bound is None
    assert abs(weight.std().item() - values.std) < 3 * standard_error(1.0, weight.numel())


def test_mode_fan_geo_avg_is_jaxs(tmp_path):
    """jax 0.10.2 `nn/initializers.py` `variance_scaling`: mode "fan_geo_avg" divides by (fan_in * fan_out) ** 0.5
    (copied); the fans of a `layout: jax` kernel [3, 3, 4, 8] are JAX's `_compute_fans`: in 4·9, out 8·9."""
    import json

    from helpers import run

    spec = tmp_path / "jax.yaml"
    spec.write_text("layers:\n  - {name: conv, shape: [3, 3, 4, 8], layout: jax, kind: conv2d}\n")
    result = run("inspect", spec, "--scheme", "lecun_normal", "--mode", "fan_geo_avg", "--format", "json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["layers"][0]
    assert (row["fan_in"], row["fan_out"]) == (36, 72)
    assert row["std"] == pytest.approx(math.sqrt(1.0 / (36 * 72) ** 0.5))


def test_spec_axes_reach_the_std(tmp_path):
    """A spec's `axes: {in, out, batch}` are JAX `variance_scaling`'s in_axis, out_axis, batch_axis: mode fan_geo_avg
    divides by √(fan_in·fan_out) of `_compute_fans` with them (jax 0.10.2, copied in helpers)."""
    import json

    from helpers import jax_compute_fans, run

    spec = tmp_path / "axes.yaml"
    spec.write_text("layers:\n  - {name: k, shape: [4, 5, 6, 7], axes: {in: 1, out: 3, batch: 0}}\n")
    result = run("inspect", spec, "--scheme", "lecun_normal", "--mode", "fan_geo_avg", "--format", "json")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["layers"]
    fan_in, fan_out = jax_compute_fans((4, 5, 6, 7), 1, 3, 0)
    assert (row["fan_in"], row["fan_out"]) == (fan_in, fan_out)
    assert row["std"] == pytest.approx(math.sqrt(1.0 / (fan_in * fan_out) ** 0.5))
    assert row["structure"] == {"in_axis": [1], "out_axis": [3], "batch_axis": [0]}
