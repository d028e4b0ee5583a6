"""fans: torch's convention exactly, keras's by permutation, and effective fans against real connectivity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fn

from fancli.analysis.fans import keras_fans, layer_fans, torch_fans
from fancli.layer import Layer

dims = st.integers(min_value=0, max_value=4096)
shapes = st.lists(dims, min_size=2, max_size=5).map(tuple)


@settings(max_examples=1500, deadline=None)
@given(shapes)
def test_torch_fans_equal_torch_for_any_shape(shape):
    tensor = torch.empty(shape, device="meta")  # no memory, any size
    assert torch_fans(shape) == torch_fn(tensor)


@pytest.mark.parametrize("shape", [(), (7,), (0,)])
def test_below_two_dims_raises_like_torch(shape):
    with pytest.raises(ValueError) as torch_error:
        torch_fn(torch.empty(shape))
    with pytest.raises(ValueError) as ours:
        torch_fans(shape)
    assert str(ours.value) == str(torch_error.value)


@settings(max_examples=500, deadline=None)
@given(shapes)
def test_keras_fans_equal_torch_on_the_permuted_kernel(shape):
    """A keras kernel [*k, in, out] is torch's [out, in, *k] permuted: same fans."""
    kernel = torch.empty(shape, device="meta")
    n = len(shape)
    as_torch = kernel.permute(n - 1, n - 2, *range(n - 2))
    assert keras_fans(shape) == torch_fn(as_torch)


def test_classic_keras_question():
    """A [5, 5, 3, 6] filter in (w, h, in, out) order and a dense [400, 120]."""
    assert keras_fans((5, 5, 3, 6)) == (75, 150)
    assert keras_fans((400, 120)) == (400, 120)


def test_below_two_dims_is_null_with_a_note():
    fans = layer_fans(Layer("bn", "bn.weight", "norm", (64,)))
    assert fans.fan_in is None and fans.fan_out is None
    assert "fewer than 2" in " ".join(fans.notes) or "below 2 dims" in " ".join(fans.notes)


def connectivity(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """How many inputs feed each output (fan_in) and how many outputs each input feeds (fan_out),
    read from the Jacobian of the real torch layer with all weights set to 1."""
    with torch.no_grad():
        module.weight.fill_(1.0)
        if module.bias is not None:
            module.bias.zero_()
    x = torch.randn(input_shape, dtype=torch.float64)
    module = module.double()
    jacobian = torch.autograd.functional.jacobian(module, x)
    out_shape = jacobian.shape[: jacobian.dim() - x.dim()]
    links = (jacobian != 0).reshape(math.prod(out_shape), x.numel())
    return links.sum(1).reshape(out_shape), links.sum(0).reshape(x.shape)


def interior(t: torch.Tensor, margin: int) -> torch.Tensor:
    """Spatial interior of a (1, C, *spatial) map, away from padding effects."""
    index = (slice(None), slice(None)) + tuple(slice(margin, s - margin) for s in t.shape[2:])
    return t[index]


def layer_from(module: nn.Module, name: str = "m") -> Layer:
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    kind = ("conv_transpose" if transposed else "conv") + f"{module.weight.dim() - 2}d"
    return Layer(name, f"{name}.weight", kind, tuple(module.weight.shape), groups=module.groups,
                 transposed=transposed, stride=module.stride, dilation=module.dilation)


@pytest.mark.parametrize(
    "in_ch,out_ch,groups,kernel,dilation",
    [(4, 8, 1, 3, 1), (4, 8, 2, 3, 1), (4, 4, 4, 3, 1), (6, 12, 3, (3, 1), 1), (4, 8, 2, 3, 2)],
)
def test_conv_effective_fans_match_connectivity(in_ch, out_ch, groups, kernel, dilation):
    conv = nn.Conv2d(in_ch, out_ch, kernel, groups=groups, dilation=dilation, padding="same")
    per_output, per_input = connectivity(conv, (1, in_ch, 11, 11))
    margin = 2 * dilation
    fans = layer_fans(layer_from(conv))
    assert (fans.fan_in, fans.fan_out) == torch_fn(conv.weight)
    eff_in, eff_out = fans.pick(effective=True)
    assert interior(per_output, margin).unique().tolist() == [eff_in]
    assert interior(per_input, margin).unique().tolist() == [eff_out]
    if groups > 1:
        assert eff_out == fans.fan_out / groups and fans.notes
    if dilation > 1:
        assert any("dilat" in note for note in fans.notes)


@pytest.mark.parametrize("groups,kernel,stride", [(1, 3, 2), (2, 4, 2), (1, (3, 2), (1, 2))])
def test_strided_conv_effective_fan_out_is_the_average_connectivity(groups, kernel, stride):
    conv = nn.Conv2d(4, 8, kernel, stride=stride, groups=groups)
    per_output, per_input = connectivity(conv, (1, 4, 16, 16))
    fans = layer_fans(layer_from(conv))
    eff_in, eff_out = fans.pick(effective=True)
    assert per_output.unique().tolist() == [eff_in]  # no padding: every output sees a full window
    assert interior(per_input, 4).double().mean().item() == pytest.approx(eff_out)
    assert any("strided" in note for note in fans.notes)


@pytest.mark.parametrize(
    "in_ch,out_ch,groups,kernel,stride",
    [(4, 6, 1, 3, 1), (4, 6, 1, 4, 2), (4, 6, 2, 4, 2), (6, 3, 3, 3, 1), (2, 4, 1, (4, 2), (2, 2))],
)
def test_transposed_conv_effective_fans_match_connectivity(in_ch, out_ch, groups, kernel, stride):
    deconv = nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=stride, groups=groups)
    per_output, per_input = connectivity(deconv, (1, in_ch, 8, 8))
    fans = layer_fans(layer_from(deconv))
    assert (fans.fan_in, fans.fan_out) == torch_fn(deconv.weight)
    eff_in, eff_out = fans.pick(effective=True)
    # each interior input feeds exactly (out/groups)·k outputs; outputs receive (in/groups)·k/stride on average
    assert interior(per_input, 2).unique().tolist() == [eff_out]
    inner = interior(per_output, 4)
    assert inner.double().mean().item() == pytest.approx(eff_in)
    assert any("transposed" in note for note in fans.notes)


def test_attention_in_proj_effective_fans_are_each_projections():
    mha = nn.MultiheadAttention(32, 4)
    layer = Layer("attn", "attn.in_proj_weight", "multihead_attention", tuple(mha.in_proj_weight.shape), stacked=3)
    fans = layer_fans(layer)
    assert (fans.fan_in, fans.fan_out) == torch_fn(mha.in_proj_weight)
    for block in mha.in_proj_weight.chunk(3):
        assert fans.pick(effective=True) == torch_fn(block)


@pytest.mark.parametrize("cls,gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_rnn_effective_fans_are_per_gate(cls, gates):
    rnn = cls(10, 16)
    kind = cls.__name__.lower()
    for name in ("weight_ih_l0", "weight_hh_l0"):
        weight = getattr(rnn, name)
        layer = Layer("rnn", f"rnn.{name}", kind, tuple(weight.shape), stacked=gates if gates > 1 else None)
        fans = layer_fans(layer)
        assert (fans.fan_in, fans.fan_out) == torch_fn(weight)
        assert fans.pick(effective=True) == torch_fn(weight.chunk(gates)[0])


def test_in_out_layout_reads_like_the_transposed_torch_weight():
    weight = torch.empty(768, 2304)  # GPT-2 Conv1D c_attn: x @ W with W [in, out]
    fans = layer_fans(Layer("c_attn", "c_attn.weight", "linear", tuple(weight.shape), layout="in_out"))
    assert (fans.fan_in, fans.fan_out) == torch_fn(weight)
    assert fans.pick(effective=True) == torch_fn(weight.t())
    assert fans.notes


def test_pool_divides_fan_out_only_when_asked():
    layer = Layer("c", "c.weight", "conv2d", (6, 1, 5, 5), pool=(2, 2))
    assert not layer_fans(layer).differs
    pooled = layer_fans(layer, pool_fan_out=True)
    assert pooled.effective_fan_out == 6 * 25 / 4 and pooled.effective_fan_in == 25


@pytest.mark.parametrize("scheme, init_fn", [("kaiming_normal", nn.init.kaiming_normal_),
                                             ("kaiming_uniform", nn.init.kaiming_uniform_)])
def test_an_unknown_fan_out_leaves_the_fan_in_mode_std_known(tmp_path, scheme, init_fn):
    """Issue 25: a fused q/k/v projection (grouped-query attention: its rows' split unknown) has no effective
    fan_out, but its fan_in is known, so `--fans effective` in fan_in mode gives torch's std; fan_out mode
    and fan_avg, which need the unknown fan, give none."""
    import json

    from helpers import run, sampler_calls

    weight = torch.empty(192, 128)
    torch.save({"attn.qkv_proj.weight": weight}, tmp_path / "qkv.pt")
    with sampler_calls() as calls:
        init_fn(weight, mode="fan_in", nonlinearity="relu")
    (method, _, args), = calls
    expected = args[1] if method == "normal_" else args[1] / math.sqrt(3)  # normal_(0, std); uniform_(-b, b)
    stds = {}
    for mode in ("fan_in", "fan_out", "fan_avg"):
        result = run("inspect", tmp_path / "qkv.pt", "-f", "json", "--fans", "effective", "-s", scheme,
                     "-m", mode, "-n", "relu")
        assert result.code == 0, result.err
        (row,) = json.loads(result.out)["layers"]
        assert row["effective_fan_out"] is None and row["effective_fan_in"] == 128
        stds[mode] = row["std"]
    assert stds["fan_in"] == pytest.approx(expected, rel=1e-12)
    assert stds["fan_out"] is None and stds["fan_avg"] is None
