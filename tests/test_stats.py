"""Streamed statistics equal torch's on the whole tensor, whatever the chunking and the values."""

from __future__ import annotations

import math

import pytest
import torch

from fancli.loaders.torch_tensor import TorchTensorData
from fancli.weights.stats import observe


def _cases():
    torch.manual_seed(0)
    yield "normal", torch.randn(300_001) * 0.02
    yield "far_from_zero", 1.0 + torch.randn(200_000) * 1e-4  # norm scales: mean ≫ std
    yield "constant", torch.full((70_000,), 0.5)
    yield "uniform", torch.rand(5, 40_000) * 2 - 1
    yield "int", torch.randint(-1000, 1000, (150_000,))
    yield "bf16", (torch.randn(100_000) * 0.05).to(torch.bfloat16)
    yield "fp16", (torch.randn(100_000) * 0.05).to(torch.float16)
    yield "single", torch.tensor([3.0])


@pytest.mark.parametrize("name,tensor", list(_cases()), ids=[n for n, _ in _cases()])
@pytest.mark.parametrize("chunk", [1000, 65_536, 1 << 22])
def test_moments_equal_torch(name, tensor, chunk):
    observed = observe(TorchTensorData(tensor), max_elements=chunk)
    values = tensor.double()
    assert observed.count == tensor.numel() and observed.nonfinite == 0
    assert observed.mean == pytest.approx(values.mean().item(), rel=1e-9, abs=1e-12)
    assert observed.min == values.min().item() and observed.max == values.max().item()
    if tensor.numel() > 1:
        assert observed.std == pytest.approx(values.std().item(), rel=1e-6, abs=1e-12)
    else:
        assert observed.std is None


def test_nan_and_inf_are_counted_and_left_out():
    tensor = torch.randn(100_000)
    tensor[[5, 70_000]] = float("nan")
    tensor[99_999] = float("inf")
    observed = observe(TorchTensorData(tensor), max_elements=4096)
    finite = tensor[torch.isfinite(tensor)].double()
    assert observed.nonfinite == 3 and "NaN or Inf" in observed.note
    assert observed.mean == pytest.approx(finite.mean().item(), rel=1e-9)
    assert observed.std == pytest.approx(finite.std().item(), rel=1e-9)
    assert math.isfinite(observed.max)


def test_all_nan_and_empty_tensors():
    assert observe(TorchTensorData(torch.full((10,), float("nan")))).mean is None
    empty = observe(TorchTensorData(torch.empty(0, 4)))
    assert empty.count == 0 and empty.mean is None and empty.note


@pytest.mark.parametrize("name,expected", [("uniform", -1.2), ("normal", 0.0)])
def test_excess_kurtosis_tells_the_distribution(name, expected):
    torch.manual_seed(1)
    tensor = (torch.rand(400_000) if name == "uniform" else torch.randn(400_000)) * 0.05 + 0.3
    observed = observe(TorchTensorData(tensor), max_elements=10_000, kurtosis=True)
    values = tensor.double()
    centred = values - values.mean()
    exact = (centred**4).mean() / (centred**2).mean() ** 2 - 3
    assert observed.kurtosis == pytest.approx(exact.item(), abs=1e-9)
    assert observed.kurtosis == pytest.approx(expected, abs=0.05)
    assert observe(TorchTensorData(tensor)).kurtosis is None  # only when asked


def test_values_too_large_for_float64_moments_give_a_note_not_inf():
    observed = observe(TorchTensorData(torch.linspace(-1e200, 1e200, 1000, dtype=torch.float64)))
    assert observed.std is None and observed.mean is None and "too large" in observed.note
    assert observed.max == 1e200
