"""gains: torch's calculate_gain table exactly, and the same errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fancli.analysis.gains import TORCH_NONLINEARITIES, calculate_gain, gain

PARAMS = [None, 0, 0.01, 0.1, 0.2, 1, 3, -0.5, 2.5]


@pytest.mark.parametrize("name", TORCH_NONLINEARITIES)
@pytest.mark.parametrize("param", PARAMS)
def test_every_torch_nonlinearity_and_param(name, param):
    assert calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param)
    assert gain(name, param) == torch.nn.init.calculate_gain(name, param)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.integers(-1000, 1000))
def test_leaky_relu_any_slope(slope):
    assert calculate_gain("leaky_relu", slope) == torch.nn.init.calculate_gain("leaky_relu", slope)


@pytest.mark.parametrize("name,param", [("gelu", None), ("identity", None), ("Relu", None), ("swish", 1.0)])
def test_unknown_names_raise_like_torch(name, param):
    with pytest.raises(ValueError) as theirs:
        torch.nn.init.calculate_gain(name, param)
    with pytest.raises(ValueError) as ours:
        calculate_gain(name, param)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("param", ["0.1", True, False, [0.1]])
def test_bad_leaky_relu_params_raise_like_torch(param):
    with pytest.raises(ValueError) as theirs:
        torch.nn.init.calculate_gain("leaky_relu", param)
    with pytest.raises(ValueError) as ours:
        calculate_gain("leaky_relu", param)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="negative slope"):
        gain("leaky_relu", param)


def test_user_spellings_resolve_to_torch_names():
    assert gain("identity") == gain("none") == torch.nn.init.calculate_gain("linear")
    assert gain("ReLU") == torch.nn.init.calculate_gain("relu")
    assert gain("leaky-relu", 0.2) == torch.nn.init.calculate_gain("leaky_relu", 0.2)
    with pytest.raises(ValueError, match="unknown activation 'gelux'"):
        gain("gelux")
