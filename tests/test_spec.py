"""YAML specs: every bundled sample equals the torch modules it describes, and bad specs name file, line, key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SAMPLES, jax_compute_fans, run
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans
from torch_from_spec import build

from fancli.analysis.fans import layer_fans
from fancli.errors import SourceError
from fancli.loaders.spec import load_spec, parse_spec


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_layers_equal_the_torch_modules_they_describe(path):
    model = load_spec(path)
    module = build(path)
    weights = {name: p for name, p in module.named_parameters() if "bias" not in name}
    ours = {layer.param: layer for layer in model.layers if layer.layout == "torch"}
    assert set(ours) == set(weights)
    assert list(ours) == list(weights), "model order"
    for name, weight in weights.items():
        layer = ours[name]
        assert layer.shape == tuple(weight.shape), name
        if weight.dim() >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == torch_fans(weight), name


REQUIRED = {
    "LeNet-5": "lenet5", "VGG": "vgg_stack", "ResNet bottleneck": "resnet_bottleneck",
    "MobileNet": "mobilenet_block", "DCGAN": "dcgan_generator", "transformer": "transformer_block",
    "LSTM": "lstm_tagger",
}


def test_the_promised_samples_are_bundled():
    stems = {p.stem for p in SAMPLES}
    assert set(REQUIRED.values()) <= stems


def error_of(text: str) -> str:
    with pytest.raises(SourceError) as caught:
        parse_spec(text, "spec.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


CONV = "  - {{name: c, type: conv2d, in_channels: {i}, out_channels: {o}, kernel_size: 3, groups: {g}}}\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("layers:\n  - {type: linear, in_features: 3, out_features: 4}\n  - type: lnear\n    in_features: 2\n",
         "spec.yaml:3: layers[1].type: unknown layer type 'lnear' (did you mean 'linear'?)"),
        ("layers:\n  - type: linear\n    in_features: 3\n", "spec.yaml:2: layers[0]: missing key 'out_features'"),
        ("layers:\n" + CONV.format(i=64, o=64, g=1) + "  - type: conv2d\n    in_channels: 64\n    out_channels: 64\n"
         "    kernel_size: 3\n    groups: 3\n",
         "spec.yaml:7: layers[1].groups: 3 does not divide in_channels=64"),
        ("layers:\n  - type: linear\n    in_features: -3\n    out_features: 4\n",
         "spec.yaml:3: layers[0].in_features: must be at least 1, got -3"),
        ("layers:\n  - type: linear\n    in_features: 'wide'\n    out_features: 4\n",
         "spec.yaml:3: layers[0].in_features: expected an integer, got 'wide'"),
        ("layers:\n  - type: linear\n    in_features: 3\n    out_features: 4\n    kernal_size: 3\n",
         "spec.yaml:5: layers[0].kernal_size: unknown key"),
        ("layers:\n  - type: linear\n    in_features: 3\n    out_features: 4\n    nonlinearity: gelux\n",
         "spec.yaml:5: layers[0].nonlinearity: unknown activation 'gelux'"),
        ("defaults:\n  scheme: kaiming\nlayers: []\n", "spec.yaml:2: defaults.scheme: unknown scheme 'kaiming'"),
        ("layers:\n  - {type: linear, in_features: 3, out_features: 4}\n  - {type: linear, in_features: 3, out_features: 4,"
         " name: layers.0}\n", "spec.yaml:3: layers[1].name: 'layers.0' is already used by layers[0]"),
        ("layers: [\n", "spec.yaml:2: not valid YAML"),
        ("", "spec.yaml: empty spec"),
        ("- 1\n- 2\n", "spec.yaml:1: expected a mapping with a 'layers' list, got a list"),
        ("layers: 3\n", "spec.yaml:1: layers: expected a non-empty list"),
        ("layers:\n  - type: linear\n    in_features: 3\n    in_features: 4\n", "spec.yaml:4: not valid YAML: duplicate key"),
        ("layers:\n  - {type: multihead_attention, embed_dim: 10, num_heads: 3}\n",
         "spec.yaml:2: layers[0].num_heads: 3 does not divide embed_dim=10"),
        ("layers:\n  - {type: conv2d, in_channels: 3, out_channels: 4, kernel_size: [3, 3, 3]}\n",
         "spec.yaml:2: layers[0].kernel_size: expected 2 values, got 3"),
        ("layers:\n  - {shape: [5, 24], layout: keras, stacked: 5}\n",
         "spec.yaml:2: layers[0].stacked: 5 does not divide shape[1]=24, its output dim"),
        ("layers:\n  - shape: [4, 5, 6]\n    axes:\n      in: 0\n      out: [1, -3]\n",
         "spec.yaml:5: layers[0].axes.out: axis -3 is dim 0, already in in: each dim has one role"),
        ("layers:\n  - {shape: [4, 5, 6], axes: {in: 0, batch: [3]}}\n",
         "spec.yaml:2: layers[0].axes.batch: axis 3 is beyond the 3 dims of shape [4, 5, 6]"),
        ("layers:\n  - {shape: [4, 5, 6], axes: {inn: 0}}\n",
         "spec.yaml:2: layers[0].axes.inn: unknown key (did you mean 'in'?)"),
        ("layers:\n  - {shape: [4, 5, 6], axes: [0, 1]}\n",
         "spec.yaml:2: layers[0].axes: expected a mapping of in, out, batch, got a list"),
        ("layers:\n  - {shape: [4, 6], axes: {in: 0}, stacked: 2}\n",
         "spec.yaml:2: layers[0].axes: the axes give the fans outright: no stacked beside them"),
        ("layers:\n  - {shape: [4], axes: {in: 0}}\n",
         "spec.yaml:2: layers[0].axes: JAX's fans need at least 2 dims; shape has 1"),
    ],
)
def test_bad_specs_name_file_line_and_key(text, expected):
    message = error_of(text)
    assert message.startswith(expected), message


def test_defaults_and_overrides_reach_each_layer():
    model = parse_spec(
        "defaults: {scheme: xavier_normal, mode: fan_out, nonlinearity: leaky_relu, param: 0.2}\n"
        "layers:\n"
        "  - {name: a, type: linear, in_features: 3, out_features: 4}\n"
        "  - {name: b, type: linear, in_features: 4, out_features: 5, scheme: kaiming_uniform, nonlinearity: tanh}\n",
        "s.yaml",
    )
    a, b = model.layers
    assert (a.scheme, a.mode, a.nonlinearity, a.nonlinearity_param) == ("xavier_normal", "fan_out", "leaky_relu", 0.2)
    # b's own scheme brings its own default mode; the defaults' mode belongs to the defaults' scheme
    assert (b.scheme, b.mode, b.nonlinearity, b.nonlinearity_param) == ("kaiming_uniform", None, "tanh", None)


def test_huge_sizes_are_arithmetic_only():
    model = parse_spec("layers:\n  - {type: linear, in_features: 1000000000, out_features: 1000000000}\n", "s.yaml")
    assert model.layers[0].shape == (10**9, 10**9)


def test_alias_bombs_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join(f"  {line}" for line in lines)  # under `description`, so no key is unknown
    message = error_of(f"description:\n{bomb}\nlayers:\n  - {{type: linear, in_features: *a11, out_features: 3}}\n")
    assert "in_features: expected an integer, got a list" in message
    many = "a: &a [1]\nb: [" + ", ".join(["*a"] * 2000) + "]\nlayers: []\n"
    assert "more than 1000 aliases" in error_of(many)


def test_spec_files_report_unreadable_paths(tmp_path: Path):
    from fancli.loaders import load

    with pytest.raises(SourceError, match="no such file"):
        load(str(tmp_path / "missing.yaml"))
    with pytest.raises(SourceError, match="is a directory"):
        load(str(tmp_path))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SourceError, match="empty file"):
        load(str(tmp_path / "empty.yaml"))


def test_a_flow_style_spec_named_yaml_is_read_as_yaml(tmp_path):
    from fancli.loaders import load

    path = tmp_path / "flow.yaml"
    path.write_text("{layers: [{type: linear, in_features: 3, out_features: 4}]}")
    assert load(str(path)).layers[0].shape == (4, 3)


def test_keras_layout_stacks_along_its_last_dim():
    """`stacked` splits a weight's output dim, the last of a `layout: keras` one: Keras' LSTM kernel [in, 4H] (its
    `LSTMCell.call` splits `inputs @ kernel` into 4 along axis 1), each gate H = 6 outputs."""
    (layer,) = parse_spec("layers:\n  - {shape: [5, 24], layout: keras, kind: lstm, stacked: 4}\n", "spec.yaml").layers
    fans = layer_fans(layer)
    assert (fans.fan_in, fans.fan_out, fans.effective_fan_out) == (5, 24, 6)
    assert any("along dim 1" in note for note in fans.notes) and not any("dim 0" in note for note in fans.notes)


@pytest.mark.parametrize("shape,axes,jax_axes", [
    ((4, 5, 6, 7), "{in: 1, out: 3, batch: 0}", {"in_axis": 1, "out_axis": 3, "batch_axis": 0}),
    ((6, 2, 3), "{in: 0, out: [1, 2]}", {"in_axis": 0, "out_axis": (1, 2)}),
    ((3, 3, 4, 8), "{}", {}),
    ((2, 3, 4, 5), "{in: [-3, -2], out: -4}", {"in_axis": (-3, -2), "out_axis": -4}),
])
def test_axes_give_jaxs_fans(shape, axes, jax_axes):
    """`axes: {in, out, batch}` are JAX `variance_scaling`'s in_axis, out_axis, batch_axis: the fans are its
    `_compute_fans` with them (jax 0.10.2, copied in helpers), whatever the layout says."""
    spec = f"layers:\n  - {{shape: {list(shape)}, axes: {axes}}}\n"
    (layer,) = parse_spec(spec, "spec.yaml").layers
    fans = layer_fans(layer)
    assert (fans.fan_in, fans.fan_out) == jax_compute_fans(shape, **jax_axes)
    assert not fans.differs  # the axes say which dims are inputs: the layer's own fans too


@pytest.mark.parametrize("shape, axes", [([0, 4], "{in: 0, out: 1}"), ([3, 0, 4], "{}"), ([0, 0], "{}")])
def test_axes_on_a_zero_size_dim_give_zero_fans_not_a_traceback(tmp_path, shape, axes):
    """JAX divides by the axes' sizes (a ZeroDivisionError on a zero-size dim); fancli's fans are 0 there."""
    spec = tmp_path / "zero.yaml"
    spec.write_text(f"layers:\n  - {{shape: {shape}, axes: {axes}}}\n")
    result = run("inspect", spec, "-f", "json")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["layers"]
    assert 0 in (row["fan_in"], row["fan_out"])
