"""Init inference checks more than the std: the mean, exact zeros, row norms and row overlap.

Each perturbation below was claimed as a named init before these checks (run against the parent commit:
mean-shifted 108/108 of this batch, pruned, rescaled rows and low-rank parts some of them each). torch draws
every tensor (torch.nn.init, torch.nn.utils.prune); fancli reads it as the CLI does, chunk by chunk.
"""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from helpers import run, torch_std_and_bound
from torch import nn
from torch.nn import init
from torch.nn.utils import prune

from fancli import api
from fancli.analysis.fans import layer_fans
from fancli.analysis.inference import KURTOSIS, candidates, infer
from fancli.layer import Layer
from fancli.loaders.torch_tensor import TorchTensorData
from fancli.weights.stats import observe

SHAPES = [(256, 128), (128, 64, 3, 3), (64, 3, 7, 7), (512, 256, 1, 1), (300, 100), (96, 48, 5)]
NONLINEARITIES = ["relu", "linear", "tanh"]
INITS = [
    lambda t, nl: init.kaiming_normal_(t, mode="fan_in", nonlinearity=nl),
    lambda t, nl: init.kaiming_normal_(t, mode="fan_out", nonlinearity=nl),
    lambda t, nl: init.kaiming_uniform_(t, mode="fan_in", nonlinearity=nl),
    lambda t, nl: init.kaiming_uniform_(t, mode="fan_out", nonlinearity=nl),
    lambda t, nl: init.xavier_normal_(t, gain=init.calculate_gain(nl)),
    lambda t, nl: init.xavier_uniform_(t, gain=init.calculate_gain(nl)),
]


def _layer(shape) -> Layer:
    return Layer("w", "w.weight", "linear" if len(shape) == 2 else f"conv{len(shape) - 2}d", tuple(shape))


def _infer(tensor: torch.Tensor):
    """What `inspect --infer` concludes for one tensor: every observed statistic, streamed in small chunks."""
    observed = observe(TorchTensorData(tensor), max_elements=5000, kurtosis=True, structure=True)
    layer = _layer(tensor.shape)
    return infer(layer, layer_fans(layer), observed.std, observed.kurtosis, observed.count, observed.mean,
                 observed.structure)


@pytest.fixture(scope="module")
def clean():
    """One torch-drawn tensor per init × nonlinearity × shape (108)."""
    tensors = []
    for index, draw in enumerate(INITS):
        for nonlinearity in NONLINEARITIES:
            for shape in SHAPES:
                torch.manual_seed(zlib.crc32(repr((index, nonlinearity, shape)).encode()))
                tensor = torch.empty(shape)
                draw(tensor, nonlinearity)
                tensors.append(tensor)
    return tensors


def _claimed(tensors, perturb) -> list[tuple[tuple[int, ...], str]]:
    torch.manual_seed(1)
    found = [(tuple(t.shape), _infer(perturb(t))) for t in tensors]
    return [(shape, f.label) for shape, f in found if f.best is not None]


def _shifted(w: torch.Tensor) -> torch.Tensor:
    return w + 0.5 * w.std()


def _pruned(w: torch.Tensor) -> torch.Tensor:
    return w * (torch.rand_like(w) >= 0.3)


def _rows_rescaled(w: torch.Tensor) -> torch.Tensor:
    return w * torch.empty((w.shape[0],) + (1,) * (w.dim() - 1)).uniform_(0.5, 1.5)


def _plus_rank_one(w: torch.Tensor) -> torch.Tensor:
    """W + s·u·vᵀ with u, v of random signs and the same norm as W, scaled back to W's std: the values stay
    a symmetric two-hump mix whose std and kurtosis can pass for another init."""
    m = w.reshape(w.shape[0], -1)
    u = torch.randint(0, 2, (m.shape[0], 1)).float() * 2 - 1
    v = torch.randint(0, 2, (1, m.shape[1])).float() * 2 - 1
    return ((m + u @ v * m.std()) / math.sqrt(2)).reshape(w.shape)


def _plus_rank_four(w: torch.Tensor) -> torch.Tensor:
    m = w.reshape(w.shape[0], -1)
    part = torch.randn(m.shape[0], 4) @ torch.randn(4, m.shape[1])
    return ((m + part * (m.norm() / part.norm())) / math.sqrt(2)).reshape(w.shape)


def test_the_clean_batch_is_still_named(clean):
    torch.manual_seed(1)
    named = sum(_infer(t).best is not None for t in clean)
    assert named >= 0.95 * len(clean), f"{named} of {len(clean)}"


def test_a_mean_shift_of_half_a_std_is_never_claimed_and_the_note_names_the_mean(clean):
    found = [_infer(_shifted(t)) for t in clean]
    assert [f.label for f in found if f.best is not None] == []
    assert all("mean is" in f.note and f.checks.mean_errors > 4 for f in found)


def test_the_issue_case_182_standard_errors_off_zero_via_the_cli(tmp_path):
    torch.manual_seed(0)
    weight = torch.empty(256, 512)
    init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    path = tmp_path / "shifted.pt"
    torch.save({"fc.weight": weight + 0.5 * weight.std(), "clean.weight": weight}, path)
    result = run("inspect", path, "--infer", "-f", "json")
    assert result.code == 0, result.err
    layers = {layer["param"]: layer for layer in json.loads(result.out)["layers"]}
    shifted = layers["fc.weight"]["inferred"]
    assert shifted["label"] == "unknown/trained" and shifted["confidence"] == "none"
    assert "mean" in shifted["note"]
    assert shifted["checks"]["mean_errors"] == pytest.approx(0.5 * math.sqrt(weight.numel()), rel=0.02)
    assert layers["clean.weight"]["inferred"]["label"] == "kaiming_normal, fan_in, relu"
    assert layers["clean.weight"]["observed"]["zeros"] == 0
    assert abs(layers["clean.weight"]["inferred"]["checks"]["mean_errors"]) < 4


def test_30_percent_exact_zeros_are_never_claimed(clean):
    assert _claimed(clean, _pruned) == []


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("module,nonlinearity", [(lambda: nn.Linear(64, 64), "tanh"),
                                                 (lambda: nn.Conv2d(16, 32, 3), "relu")])
def test_a_layer_pruned_by_torch_is_not_claimed(module, nonlinearity, seed):
    """kaiming_uniform pruned 30% keeps √0.7 of its std and a kurtosis near a cut normal's: with tanh's
    gain that is truncated_normal with relu's (1.394 vs 1.414 /√fan), which was claimed, "high"."""
    torch.manual_seed(seed)
    layer = module()
    init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity=nonlinearity)
    prune.random_unstructured(layer, "weight", amount=0.3)
    prune.remove(layer, "weight")
    found = _infer(layer.weight.detach())
    assert found.best is None and "exactly 0" in found.note, found


def test_randomly_rescaled_rows_are_never_claimed(clean):
    assert _claimed(clean, _rows_rescaled) == []


def test_an_added_low_rank_part_is_never_claimed(clean):
    assert _claimed(clean, _plus_rank_one) == []
    assert _claimed(clean, _plus_rank_four) == []


def test_structure_signals_are_the_whole_tensors_whatever_the_chunking_and_layout(tmp_path):
    torch.manual_seed(4)
    weight = torch.randn(40, 7, 3)
    weight[1, 2, 0] = 0.0
    path = tmp_path / "t.pt"
    torch.save({"t.weight": weight.transpose(0, 2)}, path)  # a strided view in the file: rows are logical
    data = next(layer.data for layer in api.load(str(path)).layers)
    logical = weight.transpose(0, 2).double().reshape(3, -1)
    for source in (data, TorchTensorData(weight.transpose(0, 2))):
        for chunk in (13, 280, 1 << 22):
            s = observe(source, max_elements=chunk, structure=True).structure
            assert s.zeros == 1 and s.a8 == pytest.approx((logical**8).mean().item(), rel=1e-12)
            if source is data and chunk < 840:  # wider than a chunk: read in storage order, rows skipped
                assert s.rows == 0
                continue
            sums = (logical**2).sum(1)
            assert (s.zeros, s.rows, s.row_length) == (1, 3, 280)
            assert s.row_mean == pytest.approx(sums.mean().item(), rel=1e-12)
            assert s.row_variance == pytest.approx(sums.var().item(), rel=1e-9)
            assert s.overlap == pytest.approx(((logical[:-1] * logical[1:]).sum(1) ** 2).mean().item(), rel=1e-9)
            assert s.a8 == pytest.approx((logical**8).mean().item(), rel=1e-12)


def _standard_error(std: float, distribution: str, n: int) -> float:
    """Of a sample std of n draws with this excess kurtosis: σ·√((κ + 2) / (4n))."""
    return std * math.sqrt((KURTOSIS[distribution] + 2) / (4 * n))


def _others_within_one_error(found, shape) -> list[str]:
    """Inits with another label that predict the best's std within one standard error (same distribution)."""
    layer = _layer(shape)
    n = math.prod(shape)
    best = found.best
    return [c.label for c in candidates(layer, layer_fans(layer))
            if c.label != best.label and c.distribution == best.distribution
            and abs(c.std - best.std) <= _standard_error(best.std, best.distribution, n)]


def test_twins_torch_draws_alike_are_not_high():
    """On a [128, 256] layer kaiming_normal(relu, fan_in) and kaiming_normal(linear, fan_out) are one
    distribution (torch's own gain and fan give the same std): neither can be named with confidence."""
    shape = (128, 256)
    tensor = torch.empty(shape)
    relu_in = init.calculate_gain("relu") / math.sqrt(init._calculate_correct_fan(tensor, "fan_in"))
    linear_out = init.calculate_gain("linear") / math.sqrt(init._calculate_correct_fan(tensor, "fan_out"))
    assert relu_in == pytest.approx(linear_out, rel=1e-12)
    torch.manual_seed(5)
    init.kaiming_normal_(tensor, mode="fan_out", nonlinearity="linear")
    found = _infer(tensor)
    assert found.best is not None and found.confidence != "high"
    assert {"kaiming_normal, fan_in, relu", "kaiming_normal, fan_out, linear"} & {found.label, *found.alternatives}


@pytest.mark.parametrize("shape", [(64, 64), (128, 256), (16, 8), (8, 4, 3), (32, 16, 1, 1), (30, 20)])
def test_high_only_when_no_other_init_predicts_within_one_standard_error(shape):
    """Square layers (fan_in = fan_out = xavier's fan_avg) and small ones (a wide standard error)."""
    highs = 0
    for index, draw in enumerate(INITS):
        for nonlinearity in NONLINEARITIES:
            torch.manual_seed(zlib.crc32(repr((index, nonlinearity, shape, "high")).encode()))
            tensor = torch.empty(shape)
            draw(tensor, nonlinearity)
            found = _infer(tensor)
            if found.confidence == "high":
                highs += 1
                assert _others_within_one_error(found, shape) == [], (index, nonlinearity, found)
    assert highs < len(INITS) * len(NONLINEARITIES)  # the test means something: some layers are ambiguous


def test_a_scheme_that_draws_alike_is_named_beside_the_claim():
    """kaiming_uniform_(a=1) is lecun_uniform on fan_in (gain 1, bound √(3/fan_in)): torch draws them alike,
    so the inference names both and is not "high" (candidates come from every scheme fancli knows)."""
    tensor = torch.empty(300, 200)
    kaiming = torch_std_and_bound(init.kaiming_uniform_, torch.empty(300, 200), a=1)[1]
    assert kaiming == pytest.approx(math.sqrt(3 / 200), rel=1e-12)  # lecun_uniform's bound, from torch's own call
    torch.manual_seed(11)
    init.kaiming_uniform_(tensor, a=1)
    found = _infer(tensor)
    labels = (found.label, *found.alternatives)
    assert found.confidence != "high"
    assert any(label.startswith("lecun_uniform") for label in labels), labels
    assert any(label.startswith("kaiming_uniform") for label in labels), labels
