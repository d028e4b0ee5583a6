"""Files MLX's `save_safetensors` writes ({"format": "mlx"} in `__metadata__`), after `nn.quantize`: conv weights
channels last (`mlx.nn.Conv1d` [out, k, in], `Conv2d` [out, kh, kw, in]), Linear weights packed uint32 with
`scales` and `biases`. MLX does not install here: the files are built with the `safetensors` package in MLX's
documented layouts; the oracles are torch's fans on the torch-layout tensor and the values written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
safetensors_torch = pytest.importorskip("safetensors.torch")
from helpers import run  # noqa: E402
from test_quant_bytes import mlx_pack  # noqa: E402

MLX = {"format": "mlx"}


def _mlx_folder(tmp_path):
    """A small audio model as MLX saves it after `nn.quantize(model, group_size=64, bits=4)`: its convs stay
    float (nn.quantize quantizes Linear and Embedding), its Linear is packed; config.json as mlx-lm writes it,
    with a per-layer entry."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (64, 256))
    scales = rng.uniform(0.001, 0.01, (64, 4)).astype(np.float16)
    biases = rng.uniform(-0.05, 0.05, (64, 4)).astype(np.float16)
    tensors = {
        "conv1.weight": torch.randn(128, 3, 80), "conv1.bias": torch.randn(128),
        "conv2.weight": torch.randn(16, 3, 5, 8), "conv2.bias": torch.randn(16),
        "proj.weight": torch.from_numpy(mlx_pack(q, 4).view(np.int32)).view(torch.uint32),
        "proj.scales": torch.from_numpy(scales), "proj.biases": torch.from_numpy(biases),
        "proj.bias": torch.randn(64),
    }
    folder = tmp_path / "mlx-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "whisper", "quantization": {"group_size": 64, "bits": 4, "proj": {"group_size": 64, "bits": 4}}}))
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"), metadata=MLX)
    dequantized = np.repeat(scales.astype(np.float64), 64, 1) * q + np.repeat(biases.astype(np.float64), 64, 1)
    return folder, tensors, dequantized


def test_mlx_folder_convs_channels_last_and_quantized_linear(tmp_path):
    """Conv1d [out, k, in] and Conv2d [out, kh, kw, in]: listed as convs with torch's fans of the same weight laid
    out [out, in, *k] (240/384 for [128, 3, 80], not 240/10240), a note saying so, and --stats of the values. The
    packed Linear is one linear row of its logical [out, in] with --stats of s·q + b; its scales and biases are no
    linear weights; the parameter total counts every weight by its logical elements (the packed one as out·in,
    the float ones as stored)."""
    folder, tensors, dequantized = _mlx_folder(tmp_path)
    result = run("inspect", folder, "--format", "json", "--all", "--stats")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    rows = {row["param"]: row for row in document["layers"]}
    fans = torch.nn.init._calculate_fan_in_and_fan_out
    for key, kind, order in (("conv1.weight", "conv1d", (0, 2, 1)), ("conv2.weight", "conv2d", (0, 3, 1, 2))):
        row, weight = rows[key], tensors[key]
        assert (row["kind"], row["shape"], row["structure"]["layout"]) == (kind, list(weight.shape), "channels_last")
        assert (row["fan_in"], row["fan_out"]) == fans(weight.permute(order))
        assert "effective_fan_in" not in row
        assert any("channels last" in note for note in row["notes"])
        assert row["observed"]["std"] == pytest.approx(weight.double().std().item(), rel=1e-9)
    assert (rows["conv1.weight"]["fan_in"], rows["conv1.weight"]["fan_out"]) == (240, 384)

    assert [key for key, row in rows.items() if row["kind"] == "linear" and len(row["shape"]) >= 2] == ["proj.weight"]
    row = rows["proj.weight"]
    assert (row["shape"], row["fan_in"], row["fan_out"]) == ([64, 256], 256, 64)
    assert row["observed"]["mean"] == pytest.approx(dequantized.mean(), rel=1e-12)
    assert row["observed"]["std"] == pytest.approx(dequantized.std(ddof=1), rel=1e-12)
    assert (rows["proj.scales"]["kind"], rows["proj.biases"]["kind"]) == ("quant_scale", "quant_aux")
    logical = sum(t.numel() for key, t in tensors.items() if key != "proj.weight") + dequantized.size
    assert document["summary"]["parameters"] == logical


def test_explain_channels_last_shape():
    """`explain --shape` with `--layout channels_last` reads an MLX conv's fans off its own axes."""
    result = run("explain", "--shape", "128,3,80", "--layout", "channels_last", "--format", "json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["layers"][0]
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(128, 80, 3))
    assert (row["fan_in"], row["fan_out"]) == expected


def test_spec_channels_last_transposed_conv(tmp_path):
    """MLX's ConvTranspose1d is [out, k, in] too: torch's fans are those of the [in, out, k] weight torch's
    ConvTranspose1d holds, and each output sums in·k/stride taps."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("layers:\n  - {type: raw, name: up, shape: [16, 4, 8], layout: channels_last, kind: conv_transpose1d,"
                    " transposed: true, groups: 1, stride: 2}\n")
    result = run("inspect", spec, "--format", "json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["layers"][0]
    up = torch.nn.ConvTranspose1d(8, 16, 4, stride=2)
    assert (row["fan_in"], row["fan_out"]) == torch.nn.init._calculate_fan_in_and_fan_out(up.weight)
    assert (row["effective_fan_in"], row["effective_fan_out"]) == (8 * 4 / 2, 16 * 4)


def test_an_mlx_file_gets_mlxs_own_defaults(tmp_path):
    """{"format": "mlx"} names the `mlx` recipe: mlx 0.32.4 `nn/layers/linear.py` `scale = math.sqrt(1.0 /
    input_dims)` U(±scale) for weight and bias; `convolution.py` `math.sqrt(1 / (in_channels // groups *
    kernel_size))`, bias `mx.zeros`; `embedding.py` N(0, 1/dims); `normalization.py` weight ones, bias zeros
    (copied)."""
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file({"fc.weight": torch.randn(32, 48), "fc.bias": torch.randn(32),
                                 "conv.weight": torch.randn(16, 5, 12), "conv.bias": torch.zeros(16),
                                 "emb.weight": torch.randn(100, 24), "norm.weight": torch.ones(24),
                                 "norm.bias": torch.zeros(24)}, str(path), metadata=MLX)
    result = run("inspect", path, "--all", "--format", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    rows = {row["param"]: row for row in report["layers"]}
    assert report["settings"]["recipe"] == "mlx"
    assert rows["fc.weight"]["bound"] == pytest.approx((1.0 / 48) ** 0.5)
    assert rows["fc.bias"]["bound"] == pytest.approx((1.0 / 48) ** 0.5)
    assert rows["conv.weight"]["bound"] == pytest.approx((1 / (12 * 5)) ** 0.5)  # [out, k, in]: in 12, k 5
    assert rows["conv.bias"]["constant"] == 0.0
    assert (rows["emb.weight"]["distribution"], rows["emb.weight"]["std"]) == ("normal", pytest.approx(24 ** -0.5))
    assert (rows["norm.weight"]["constant"], rows["norm.bias"]["constant"]) == (1.0, 0.0)
