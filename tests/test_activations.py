"""Numeric gains 1/√E[f(z)²]: equal to torch's where the criterion is torch's, and to Monte Carlo elsewhere."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, run

from fancli.analysis.activations import ACTIVATIONS, numeric_gain
from fancli.analysis.gains import gain


@pytest.mark.parametrize("name", ["relu", "linear", "identity"])
def test_criterion_reproduces_torch_where_torch_uses_it(name):
    assert numeric_gain(name) == pytest.approx(torch.nn.init.calculate_gain(
        "linear" if name == "identity" else name), abs=1e-12)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 0.2, 0.5, 1.0, 3.0])
def test_leaky_relu_at_several_slopes_equals_torch(slope):
    assert numeric_gain("leaky_relu", slope) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", slope),
                                                              abs=1e-12)


TORCH_FUNCTIONS = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "selu": F.selu, "elu": F.elu, "celu": F.celu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "mish": F.mish, "softplus": F.softplus,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "relu6": F.relu6, "hardtanh": F.hardtanh,
    "softsign": F.softsign,
}


def monte_carlo_gain(function, samples: int = 4_000_000, seed: int = 0) -> float:
    """1/√E[f(z)²] from stratified random draws: one uniform in each of `samples` equal slices, mapped by
    the normal quantile (plain draws would need ~10^8 samples for a 1e-3 tolerance on heavy-tailed f²)."""
    generator = torch.Generator().manual_seed(seed)
    u = (torch.arange(samples, dtype=torch.float64) + torch.rand(samples, generator=generator,
                                                                  dtype=torch.float64)) / samples
    z = torch.special.ndtri(u)
    return 1.0 / math.sqrt(function(z).pow(2).mean().item())


def test_every_table_activation_has_a_torch_twin():
    assert set(ACTIVATIONS) - {"linear", "relu", "leaky_relu"} == set(TORCH_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(TORCH_FUNCTIONS))
def test_numeric_gain_matches_monte_carlo_on_torchs_own_function(name):
    assert numeric_gain(name) == pytest.approx(monte_carlo_gain(TORCH_FUNCTIONS[name]), abs=1e-3)


def test_a_dotted_torch_function_is_evaluated_with_its_parameter():
    assert numeric_gain("torch.nn.functional.elu", 0.5) == pytest.approx(numeric_gain("elu", 0.5), abs=1e-12)
    assert numeric_gain("torch.nn.functional.hardtanh") == pytest.approx(numeric_gain("hardtanh"), abs=1e-12)
    with pytest.raises(ValueError, match="no such torch function"):
        numeric_gain("torch.nn.functional.nope")
    with pytest.raises(ValueError, match="only torch functions"):
        numeric_gain("os.system")


def test_inspect_uses_torch_where_defined_and_the_numeric_gain_elsewhere():
    assert gain("tanh") == 5.0 / 3 and gain("selu") == 0.75  # torch's own values stay
    assert gain("gelu") == numeric_gain("gelu") and gain("swish") == numeric_gain("silu")
    import json

    data = json.loads(run("inspect", REPO / "sample_models" / "lenet5.yaml", "-n", "gelu", "-f", "json").out)
    layer = data["layers"][0]
    assert layer["gain"] == pytest.approx(numeric_gain("gelu")) and any("E[f(z)²]" in n for n in layer["notes"])


@pytest.mark.parametrize("name,expected", [("relu", "1.414214"), ("gelu", "not defined"), ("selu", "0.75")])
def test_the_gain_command_states_both_values_and_the_criterion(name, expected):
    result = run("gain", name)
    assert result.code == 0 and expected in result.out and "E[f(z)²]" in result.out


def test_the_gain_command_rejects_unknown_names():
    result = run("gain", "gelux")
    assert result.code == 2 and "unknown activation" in result.err


# --- one registry: each activation's numpy function, default parameter and torch module agree (issue 14)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_activations_torch_module_computes_its_numpy_function(name):
    from fancli.analysis.activations import activation, torch_module

    record = activation(name)
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    for param in {None, record.default, 0.5 if record.default is not None else None}:
        module = torch_module(name, param)
        assert isinstance(module, torch.nn.Module)
        used = record.default if param is None else param
        expected = torch.from_numpy(record.function(z.numpy(), used))
        torch.testing.assert_close(module(z), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alias,name", [("swish", "silu"), ("gelu_new", "gelu_tanh"), ("hard_swish", "hardswish"),
                                        ("identity", "linear"), ("none", "linear"), ("Hard-Swish", "hardswish")])
def test_aliases_resolve_to_one_record(alias, name):
    from fancli.analysis.activations import activation

    assert activation(alias).name == name
    assert numeric_gain(alias) == numeric_gain(name)


def test_the_registry_imports_no_torch():
    import subprocess
    import sys

    probe = ("import sys\nfrom fancli.analysis import activations, gains\n"
             "activations.activation('softplus'); gains.gain('gelu_new'); gains.gain('celu', 0.5)\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name,param,keyword", [("softplus", 0.0, "beta"), ("celu", 0.0, "alpha")])
def test_a_parameter_torchs_module_divides_by_is_refused_at_zero(name, param, keyword):
    """torch as the oracle: Softplus(beta=0) is inf everywhere and CELU(alpha=0) raises, so there is no
    gain to give; `gain`, `inspect -n` and `propagate -n` refuse the parameter in one line, exit 2."""
    module = getattr(torch.nn, ACTIVATIONS[name].module)
    try:
        computed = module(**{keyword: param})(torch.linspace(-3, 3, 7))
        assert torch.isinf(computed).all()
    except RuntimeError as error:
        assert "cannot be 0" in str(error)
    spec = REPO / "sample_models" / "lenet5.yaml"
    for command in (("gain", name), ("inspect", spec, "-n", name), ("propagate", spec, "-n", name, "--draws", "1")):
        result = run(*command, "--param", str(param))
        assert result.code == 2 and result.out == "", (command, result)
        (line,) = result.err.strip().splitlines()
        assert f"{keyword} must not be 0" in line, line


@pytest.mark.parametrize("name,param", [("softplus", 0.0), ("softplus", 1e-300), ("celu", 0.0), ("elu", 1e300),
                                        ("elu", -1e300)])
def test_a_parameter_that_overflows_numpy_leaks_no_warning(name, param):
    """numpy's RuntimeWarnings (divide by zero, overflow) are no part of fancli's output: with warnings made
    errors, the gain is still either a number or one refusal line, never an internal error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run("gain", name, "--param", str(param))
    assert result.code in (0, 2), result
    assert "Warning" not in result.err and len(result.err.strip().splitlines()) == result.code // 2, result.err
