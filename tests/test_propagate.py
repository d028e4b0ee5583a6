"""fancli propagate: fan_in keeps the forward pass, fan_out the backward (He et al. 2015), measured."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")
from helpers import REPO  # noqa: E402
from torch import nn  # noqa: E402

from fancli.api import load  # noqa: E402
from fancli.loaders.spec import parse_spec  # noqa: E402
from fancli.propagate import PropagateError, propagate  # noqa: E402
from fancli.renderers.propagate import bars, render_propagation, to_dict  # noqa: E402

#: 50 ReLU layers whose widths change: 256 in, blocks of 256, 1024, 512, 1024 out.
#: Under fan_out the forward variance telescopes to width(1)/width(50) = 1/4 end to end; under fan_in the
#: gradient's to width(49)/width(0) = 4. The other mode keeps each at 1 (in expectation over the weights).
WIDTHS = [256] * 4 + [1024] * 6 + [512] * 30 + [1024] * 10
INPUT = 256


def _mlp_text(widths: list[int], first: int, extra: str = "") -> str:
    lines = ["name: relu-mlp", "defaults: {scheme: kaiming_normal, nonlinearity: relu}", "layers:"]
    previous = first
    for index, width in enumerate(widths):
        lines.append(f"  - {{name: fc{index}, type: linear, in_features: {previous}, out_features: {width}}}")
        previous = width
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(scope="module")
def mlp_run():
    model = parse_spec(_mlp_text(WIDTHS, INPUT), "mlp50.yaml")
    assert len(model.layers) == 50
    # 8 draws: one finite-width draw of a net this deep wanders by a random factor (Hanin & Rolnick 2018)
    return {p.mode: p for p in propagate(model, ("fan_in", "fan_out"), batch=64, draws=8, seed=0)}


def test_fan_in_keeps_the_forward_pass_fan_out_does_not(mlp_run):
    fan_in, fan_out = mlp_run["fan_in"], mlp_run["fan_out"]
    assert len(fan_in.layers) == 50 and fan_in.layers[0].name == "fc0" and fan_in.layers[-1].name == "fc49"
    assert 0.5 < fan_in.forward_ratio < 2, fan_in.forward_ratio
    assert fan_out.forward_ratio < 0.5, fan_out.forward_ratio  # drifts: ×1/4 expected
    assert fan_out.forward_spread > 2
    # He et al.'s first layer: Var[y1] = fan_in · 2/fan_in · Var[x] = 2 (the input is not rectified)
    assert fan_in.layers[0].forward_var == pytest.approx(2.0, rel=0.1)
    assert fan_in.input_var == pytest.approx(1.0, rel=0.05)


def test_fan_out_keeps_the_backward_pass_fan_in_does_not(mlp_run):
    fan_in, fan_out = mlp_run["fan_in"], mlp_run["fan_out"]
    assert 0.5 < fan_out.backward_ratio < 2, fan_out.backward_ratio
    assert fan_in.backward_ratio > 2, fan_in.backward_ratio  # drifts: ×4 expected
    assert fan_in.backward_spread > 2
    # the last layer sees the N(0, 1) output gradient through a ReLU: fan_out · 2/fan_out · 1/2 · … = 1
    assert fan_out.layers[-1].backward_var == pytest.approx(1.0, rel=0.15)


def test_the_modes_differ_by_the_width_ratio_exactly(mlp_run):
    """Same seed, same draws up to scale, ReLU positively homogeneous: the modes' ratio is the widths' ratio.

    Up to float32 rounding over 50 layers, which depends on the CPU's matmul kernels (1.7e-4 seen on one).
    """
    fan_in, fan_out = mlp_run["fan_in"], mlp_run["fan_out"]
    assert fan_out.forward_ratio / fan_in.forward_ratio == pytest.approx(WIDTHS[0] / WIDTHS[-1], rel=1e-3)
    assert fan_in.backward_ratio / fan_out.backward_ratio == pytest.approx(WIDTHS[-2] / INPUT, rel=1e-3)
    for a, b in zip(fan_in.layers, fan_out.layers):
        assert b.std / a.std == pytest.approx(math.sqrt(a.shape[1] / a.shape[0]), rel=1e-12)


def test_same_seed_same_numbers_and_the_global_rng_is_left_alone():
    model = parse_spec(_mlp_text([64, 128, 32, 64], 48), "small.yaml")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = propagate(model, seed=7, draws=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = propagate(model, seed=7, draws=2)
    other = propagate(model, seed=8, draws=2)
    assert to_dict(first) == to_dict(again)
    assert to_dict(first) != to_dict(other)


def test_a_conv_stack_runs_with_a_flatten_before_the_linear():
    text = """
name: small-convnet
defaults: {scheme: kaiming_normal, nonlinearity: relu}
layers:
  - {name: c1, type: conv2d, in_channels: 3, out_channels: 16, kernel_size: 3, padding: 1}
  - {name: bn1, type: batchnorm2d, num_features: 16}
  - {name: c2, type: conv2d, in_channels: 16, out_channels: 32, kernel_size: 3, stride: 2}
  - {name: c3, type: conv2d, in_channels: 32, out_channels: 32, kernel_size: 3, dilation: 2, groups: 4, pool: 2}
  - {name: c4, type: conv1d, in_channels: 8, out_channels: 8, kernel_size: 3}
"""
    with pytest.raises(ValueError, match="c4: a conv1d needs 1-D maps"):
        propagate(parse_spec(text, "bad.yaml"))
    text = text.replace(
        "  - {name: c4, type: conv1d, in_channels: 8, out_channels: 8, kernel_size: 3}",
        "  - {name: head, type: linear, in_features: 1568, out_features: 10, nonlinearity: linear}",
    )
    model = parse_spec(text, "convnet.yaml")
    for norms in ("identity", "real"):
        props = propagate(model, batch=8, draws=1, norms=norms)
        assert [p.mode for p in props] == ["fan_in", "fan_out"]
        assert props[0].input_shape == (3, 32, 32)  # 32 → 32 → 15 → 15, pooled 7: 32·7·7 = 1568
        for p in props:
            assert [s.name for s in p.layers] == ["c1", "c2", "c3", "head"]
            assert all(math.isfinite(v) and v > 0 for s in p.layers for v in (s.forward_var, s.backward_var))
    # the first conv's output, before anything follows it: ≈ gain² = 2 away from the zero-padded border
    assert props[0].layers[0].forward_var == pytest.approx(2.0, rel=0.25)


def test_vgg_stages_and_lenet_samples():
    vgg = load(str(REPO / "sample_models" / "vgg_stack.yaml"))
    features = dataclasses.replace(vgg, layers=tuple(x for x in vgg.layers if x.kind == "conv2d"))
    props = propagate(features, ("fan_in", "fan_out"), batch=4, draws=1)
    assert [s.name for s in props[0].layers] == ["features.0", "features.2", "features.5", "features.7"]
    assert props[0].input_shape == (3, 32, 32)
    # LeNet: the input size is found so that conv2's output flattens to fc1's 400 inputs
    lenet = propagate(load(str(REPO / "sample_models" / "lenet5.yaml")), ("fan_avg",), batch=4, draws=1)[0]
    assert lenet.scheme == "xavier_uniform" and lenet.input_shape[0] == 1
    assert [s.name for s in lenet.layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"]


def test_layers_that_are_not_a_sequential_stack_are_refused_by_name():
    text = """
layers:
  - {name: proj, type: linear, in_features: 32, out_features: 64}
  - {name: encoder, type: lstm, input_size: 64, hidden_size: 64}
"""
    with pytest.raises(ValueError, match=r"lstm.yaml: encoder: .*lstm.*sequential linear/conv stacks"):
        propagate(parse_spec(text, "lstm.yaml"))
    with pytest.raises(PropagateError, match="attn"):
        propagate(load(str(REPO / "sample_models" / "transformer_block.yaml")))
    with pytest.raises(ValueError, match="downsample.0: takes 256 channels, but the previous layer gives 512"):
        propagate(load(str(REPO / "sample_models" / "resnet_bottleneck.yaml")))


def test_a_live_module_with_an_input_shape():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="input shape"):
        propagate(module)
    props = propagate(module, input_shape=(3, 8, 8), batch=16, draws=1)
    assert [s.name for s in props[0].layers] == ["0", "4"]
    assert [s.kind for s in props[0].layers] == ["conv2d", "linear"]
    assert all(v > 0 for p in props for s in p.layers for v in (s.forward_var, s.backward_var))
    assert any("norm modules passed through" in n for n in props[0].notes)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # a copy was run


def test_a_module_and_its_spec_give_identical_numbers():
    widths, first = [96, 64, 128], 32
    model = parse_spec(_mlp_text(widths, first), "mlp.yaml")
    layers, previous = [], first
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    module = nn.Sequential(*layers)
    from_spec = propagate(model, seed=3, draws=2)
    from_module = propagate(module, input_shape=(first,), seed=3, draws=2)
    for a, b in zip(from_spec, from_module):
        assert [s.forward_var for s in a.layers] == [s.forward_var for s in b.layers]
        assert [s.backward_var for s in a.layers] == [s.backward_var for s in b.layers]


def test_a_module_layer_the_forward_never_calls_is_noted():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.used(x))

    props = propagate(Partly(), ("fan_in",), input_shape=(4,), draws=1)
    assert [s.name for s in props[0].layers] == ["used"]
    assert any("unused" in n for n in props[0].notes)


def test_bars_are_centred_on_variance_one():
    drawn = bars([1.0, 4.0, 0.25, 1e9, 0.0, math.nan], width=10, span=4)
    assert {len(b) for b in drawn} == {11}
    assert all(b[5] == "│" for b in drawn[:5])
    assert drawn[0].strip() == "│"
    assert drawn[1] == "     │" + "██▌".ljust(5)  # 2 octaves of 4 over 5 cells
    assert drawn[2] == "  ▐██│     "
    assert drawn[3].endswith("▶") and drawn[4].startswith("◀") and "?" in drawn[5]


def test_render_and_json():
    model = parse_spec(_mlp_text([64, 128, 32], 48), "small.yaml")
    props = propagate(model, ("fan_in", "fan_out", "fan_avg"), draws=2)
    text = render_propagation(props, "small.yaml")
    assert text.startswith("small.yaml · scheme kaiming_normal")
    for needle in ("forward fan_in", "backward fan_out", "fc2", "fan_avg: forward ×", "mean of 2 draws"):
        assert needle in text
    data = json.loads(json.dumps(to_dict(props, "small.yaml")))
    assert [p["mode"] for p in data["propagations"]] == ["fan_in", "fan_out", "fan_avg"]
    assert len(data["propagations"][0]["forward_ratios"]) == 2
    assert set(data["propagations"][0]["layers"][0]) == {"name", "kind", "shape", "std", "forward_var",
                                                          "backward_var"}


def test_the_command_line_runs_a_spec_and_refuses_a_weights_file(tmp_path):
    import json as json_module

    from helpers import REPO, run

    table = run("propagate", REPO / "sample_models" / "lenet5.yaml", "--mode", "fan_in", "fan_out", "--draws", "1")
    assert table.code == 0 and "forward fan_in" in table.out and "backward fan_out" in table.out
    data = json_module.loads(run("propagate", REPO / "sample_models" / "lenet5.yaml", "-f", "json", "--draws", "1").out)
    assert data
    refused = run("propagate", REPO / "sample_models" / "lenet5.pth")
    assert refused.code == 2 and "no forward pass" in refused.err
    assert run("propagate", REPO / "sample_models" / "lenet5.yaml", "--input-shape", "a,b").code == 2


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from helpers import REPO, run

    target = tmp_path / "variances.png"
    result = run("propagate", REPO / "sample_models" / "lenet5.yaml", "--draws", "1", "--plot", target)
    assert result.code == 0, result.err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["variances.png"]


# --- the activation a spec runs is the one its std was drawn for (issue 14) ------------------------


@pytest.mark.parametrize("name,param,activation", [
    ("softplus", 2.0, lambda: nn.Softplus(beta=2.0)),
    ("celu", 0.5, lambda: nn.CELU(alpha=0.5)),
    ("elu", 0.5, lambda: nn.ELU(alpha=0.5)),
    ("leaky_relu", 0.2, lambda: nn.LeakyReLU(0.2)),
    ("gelu_tanh", None, lambda: nn.GELU(approximate="tanh")),
    ("gelu_new", None, lambda: nn.GELU(approximate="tanh")),
    ("hard_swish", None, nn.Hardswish),
    ("swish", None, nn.SiLU),
    ("torch.nn.functional.elu", 0.5, lambda: nn.ELU(alpha=0.5)),
])
def test_a_spec_runs_its_activation_with_the_users_parameter(name, param, activation):
    """torch as the oracle: the spec's stack gives the numbers of the same stack built by hand with torch's
    own module for the activation (and its parameter), drawn from the same seed."""
    widths, first = [48, 64, 32], 40
    model = parse_spec(_mlp_text(widths, first), "mlp.yaml")
    layers, previous = [], first
    for width in widths:
        layers += [nn.Linear(previous, width), activation()]
        previous = width
    from_spec = propagate(model, ("fan_in",), nonlinearity=name, param=param, seed=5, draws=2)
    from_module = propagate(nn.Sequential(*layers), ("fan_in",), nonlinearity=name, param=param,
                            input_shape=(first,), seed=5, draws=2)
    for a, b in zip(from_spec, from_module):
        assert [s.std for s in a.layers] == [s.std for s in b.layers]
        assert [s.forward_var for s in a.layers] == [s.forward_var for s in b.layers]
        assert [s.backward_var for s in a.layers] == [s.backward_var for s in b.layers]


def test_the_command_line_propagates_through_every_activation_inspect_accepts(tmp_path):
    from helpers import run

    spec = tmp_path / "mlp.yaml"
    spec.write_text(_mlp_text([16, 16], 8))
    for name in ("gelu_tanh", "gelu_new", "hard_swish", "hardsigmoid", "softsign", "identity", "conv2d"):
        assert run("inspect", spec, "-n", name).code == 0
        result = run("propagate", spec, "-n", name, "--draws", "1", "-f", "json")
        assert result.code == 0, (name, result.err)


@pytest.mark.parametrize("scheme", ["torch_default", "lecun_normal"])
def test_a_scheme_that_needs_no_nonlinearity_runs_a_spec_that_states_none(scheme):
    model = parse_spec(_mlp_text([16, 16], 8).replace("nonlinearity: relu", "nonlinearity: linear")
                       .replace("defaults: {scheme: kaiming_normal, nonlinearity: linear}\n", ""), "plain.yaml")
    assert all(layer.nonlinearity is None for layer in model.layers)
    (prop,) = propagate(model, ("fan_in",), scheme=scheme, draws=1)
    assert [s.name for s in prop.layers] == ["fc0", "fc1"]


def test_a_module_without_an_input_shape_names_the_option():
    import torch

    from fancli.propagate import PropagateError, propagate

    with pytest.raises(PropagateError, match="--input-shape"):
        propagate(torch.nn.Linear(3, 2))


# --- refusals are one line naming the source, exit 2 (issue 24) ---------------------------------------


def test_a_billion_draws_is_refused_naming_the_spec():
    from helpers import run

    spec = REPO / "sample_models" / "lenet5.yaml"
    result = run("propagate", spec, "--draws", "1000000000")
    assert result.code == 2 and result.out == "", result
    (line,) = result.err.strip().splitlines()
    assert str(spec) in line and "draws must be from 1 to 1,000" in line, line


def test_an_input_past_any_float_is_refused_not_overflowed():
    """Twenty sizes of 2**63 - 1: the memory estimate is an integer no float holds."""
    with pytest.raises(PropagateError, match="Linear: an input of .* would need over a million GiB"):
        propagate(nn.Linear(4, 4), ("fan_in",), input_shape=(2**63 - 1,) * 20, draws=1)


def test_layers_wider_than_the_memory_there_is_are_one_line(tmp_path):
    """Under MAX_BYTES (about 7 GiB for one 30,000-wide linear) but beyond what the process may allocate
    (an address-space cap of 2 GiB, in a child): torch's allocator fails, and that is the spec's sizes,
    exit 2, not an internal error."""
    import subprocess
    import sys

    spec = tmp_path / "wide.yaml"
    spec.write_text("name: wide\nlayers:\n  - {name: fc, type: linear, in_features: 30000, out_features: 30000}\n")
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "from fancli.cli import main\n"
            "main(['propagate', sys.argv[1], '--draws', '1', '--mode', 'fan_in'])\n")
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert str(spec) in line and "out of memory" in line, line
