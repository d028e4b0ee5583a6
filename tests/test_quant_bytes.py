"""Packed quantized weights in the rows and totals: each listed, and the bytes the bytes stored (torch's
`numel() × element_size()` of the tensors the quantizer writes). Layouts copied from each quantizer's own
packing code, named at each builder."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from helpers import run  # noqa: E402


def _inspect(tensors: dict, path) -> dict:
    safetensors_torch.save_file(tensors, str(path))
    result = run("inspect", path, "--format", "json", "--all")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _stored(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _gptq(out: int = 48, inputs: int = 64, group: int = 16, bits: int = 4) -> dict:
    """AutoGPTQ's `QuantLinear.pack` (v1): qweight int32 [in·bits/32, out], qzeros int32 [groups, out·bits/32],
    scales fp16 [groups, out], g_idx int32 [in]; each int32 holds 32/bits values, low bits first."""
    torch.manual_seed(0)
    pack, groups = 32 // bits, inputs // group
    q = torch.randint(0, 1 << bits, (inputs, out), dtype=torch.int64)
    zeros = torch.randint(0, 1 << bits, (groups, out), dtype=torch.int64)
    shifts = torch.arange(pack) * bits
    qweight = (q.reshape(inputs // pack, pack, out) << shifts[None, :, None]).sum(1)
    qzeros = (zeros.reshape(groups, out // pack, pack) << shifts[None, None, :]).sum(2)
    to_int32 = lambda t: ((t + (1 << 31)) % (1 << 32) - (1 << 31)).to(torch.int32)  # noqa: E731
    return {"m.qweight": to_int32(qweight), "m.qzeros": to_int32(qzeros),
            "m.scales": (torch.rand(groups, out) * 0.01).half(), "m.g_idx": (torch.arange(inputs) // group).int(),
            "m.bias": torch.zeros(out).half()}


def test_gptq_bytes_are_the_packed_bytes(tmp_path):
    """A 4-bit qweight stores 8 values to an int32: its bytes are its stored [in/8, out] × 4, not [out, in] × 4."""
    tensors = _gptq()
    document = _inspect(tensors, tmp_path / "gptq.safetensors")
    assert document["summary"]["bytes"] == _stored(tensors)
    assert document["summary"]["bytes_by_dtype"]["int32"] == sum(
        t.numel() * 4 for t in tensors.values() if t.dtype == torch.int32)
    row = next(row for row in document["layers"] if row["param"] == "m.qweight")
    assert row["shape"] == [48, 64]  # still the Linear weight it stands for


def _bnb_4bit(out: int = 32, inputs: int = 16, blocksize: int = 64) -> dict:
    """bitsandbytes' `Linear4bit` state_dict (`quantize_4bit` + `QuantState.as_dict(packed=True)`): `weight`
    uint8 [⌈n/2⌉, 1] (two 4-bit codes to a byte), `weight.absmax` float32 [⌈n/blocksize⌉], `weight.quant_map`
    float32 [16], and the rest of the state as JSON bytes in `weight.quant_state.bitsandbytes__nf4` (uint8)."""
    n = out * inputs
    state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": "float16", "shape": [out, inputs]}
    return {"lin.weight": torch.randint(0, 256, ((n + 1) // 2, 1), dtype=torch.uint8),
            "lin.weight.absmax": torch.rand(math.ceil(n / blocksize)),
            "lin.weight.quant_map": torch.linspace(-1, 1, 16),
            "lin.weight.quant_state.bitsandbytes__nf4": torch.tensor(list(json.dumps(state).encode()),
                                                                     dtype=torch.uint8),
            "lin.bias": torch.zeros(out).half()}


def test_bitsandbytes_4bit_packed_weight_is_listed_and_counted(tmp_path):
    tensors = _bnb_4bit()
    document = _inspect(tensors, tmp_path / "nf4.safetensors")
    rows = {row["param"]: row for row in document["layers"]}
    assert set(rows) == set(tensors)
    weight = rows["lin.weight"]
    assert (weight["kind"], weight["shape"], weight["std"]) == ("quant_packed", [256, 1], None)
    assert "bitsandbytes 4-bit" in weight["notes"][0]
    assert document["summary"]["bytes"] == _stored(tensors)
    assert document["summary"]["bytes_by_dtype"]["uint8"] == sum(
        t.numel() for t in tensors.values() if t.dtype == torch.uint8)


def pack_to_int32(value: "torch.Tensor", num_bits: int) -> "torch.Tensor":
    """compressed-tensors' `pack_to_int32` (compressors/quantized_compressors/pack_quantized.py): signed values
    offset to unsigned, 32/num_bits to an int32 along dim 1, the i-th value of a word at bits num_bits·i."""
    offset = 1 << (num_bits - 1)
    value = (value.to(torch.int64) + offset)
    pack_factor = 32 // num_bits
    packed_size = math.ceil(value.shape[1] / pack_factor)
    value = torch.nn.functional.pad(value, (0, packed_size * pack_factor - value.shape[1]))
    packed = torch.zeros(value.shape[0], packed_size, dtype=torch.int64)
    for i in range(pack_factor):
        packed |= value[:, i::pack_factor] << (num_bits * i)
    return ((packed + (1 << 31)) % (1 << 32) - (1 << 31)).to(torch.int32)


def _compressed(out: int, inputs: int, bits: int, symmetric: bool = True) -> tuple[dict, "torch.Tensor"]:
    """`PackedQuantizationCompressor.compress_module`'s keys: weight_packed int32 [out, ⌈in·bits/32⌉], weight_scale
    [out, in/group], weight_shape int64 [2] (`torch.tensor(module.weight.shape)`), and for an asymmetric scheme
    weight_zero_point packed along dim 0 (`pack_to_int32(zero_point, num_bits, packed_dim=0)`). Returns the
    tensors and the quantized weight they stand for."""
    torch.manual_seed(1)
    low = 1 << (bits - 1)
    q = torch.randint(-low, low, (out, inputs), dtype=torch.int8)
    tensors = {"m.weight_packed": pack_to_int32(q, bits), "m.weight_scale": torch.rand(out, inputs // 16).half(),
               "m.weight_shape": torch.tensor(q.shape)}
    if not symmetric:
        zeros = torch.randint(-low, low, (out, inputs // 16), dtype=torch.int8)
        tensors["m.weight_zero_point"] = pack_to_int32(zeros.T, bits).T.contiguous()
    return tensors, q


@pytest.mark.parametrize("bits, symmetric", [(4, True), (8, False), (4, False)])
def test_compressed_tensors_weight_packed_has_its_logical_shape(tmp_path, bits, symmetric):
    """Listed as the weight it stands for (its shape the weight_shape the compressor wrote, its count that
    weight's), its bytes the packed ones; the bits from its packed zero points, else compressed-tensors' usual 4."""
    tensors, q = _compressed(32, 64, bits, symmetric)
    document = _inspect(tensors, tmp_path / "ct.safetensors")
    rows = {row["param"]: row for row in document["layers"]}
    row = rows["m.weight_packed"]
    assert (row["kind"], row["shape"], row["params"]) == ("linear", tensors["m.weight_shape"].tolist(), q.numel())
    assert rows["m.weight_scale"]["notes"][0].startswith("compressed-tensors scales")  # not FP8's, by its name
    listed = {key: t for key, t in tensors.items() if key != "m.weight_shape"}
    assert document["summary"]["bytes"] == _stored(listed)


def test_compressed_tensors_bits_from_config_json(tmp_path):
    """8-bit symmetric weights show their bits in no tensor: config.json's quantization_config states them."""
    tensors, q = _compressed(32, 64, 8)
    folder = tmp_path / "ct"
    folder.mkdir()
    config = {"model_type": "llama", "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "group_size": 16,
                                                                         "strategy": "group", "symmetric": True}}}}}
    (folder / "config.json").write_text(json.dumps(config))
    row = {row["param"]: row for row in _inspect(tensors, folder / "model.safetensors")["layers"]}["m.weight_packed"]
    assert (row["shape"], row["params"]) == (list(q.shape), q.numel())


def mlx_pack(q: "np.ndarray", bits: int) -> "np.ndarray":
    """A numpy reference of `mlx.core.quantize`'s packing (affine mode, bits dividing 32): value j of a row is
    stored in bits (j % (32/bits))·bits of uint32 word j // (32/bits), lowest bits first."""
    import numpy as np

    per = 32 // bits
    fields = q.astype(np.uint32).reshape(q.shape[0], -1, per)
    return (fields << (np.arange(per, dtype=np.uint32) * bits)).sum(axis=2, dtype=np.uint64).astype(np.uint32)


def _mlx(tmp_path, bits: int, group: int, config: dict | None = None):
    """MLX's quantized Linear (`weight` uint32 [out, in·bits/32], `scales` and `biases` [out, in/group_size]) in
    a folder, with mlx-lm's config.json where given; its inspect JSON, the tensors, and the values
    `mlx.core.dequantize` gives, w = s·q + β per group (its documented affine formula), from the codes."""
    import numpy as np

    rng = np.random.default_rng(0)
    out, inputs = 8, 256
    q = rng.integers(0, 1 << bits, (out, inputs))
    scales = rng.uniform(0.001, 0.01, (out, inputs // group)).astype(np.float16)
    biases = rng.uniform(-0.05, 0.05, (out, inputs // group)).astype(np.float16)
    tensors = {"layers.0.proj.weight": torch.from_numpy(mlx_pack(q, bits).view(np.int32)).view(torch.uint32),
               "layers.0.proj.scales": torch.from_numpy(scales), "layers.0.proj.biases": torch.from_numpy(biases)}
    folder = tmp_path / f"mlx-{bits}-{group}"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"))
    result = run("inspect", folder, "--format", "json", "--all", "--stats")
    assert result.code == 0, result.err
    values = np.repeat(scales.astype(np.float64), group, 1) * q + np.repeat(biases.astype(np.float64), group, 1)
    return json.loads(result.out), tensors, values


@pytest.mark.parametrize("bits, group, stated", [(4, 64, False), (8, 32, True), (2, 128, True), (2, 32, False),
                                                 (8, 64, True)])
def test_mlx_packed_weight_is_the_weight_it_stands_for(tmp_path, bits, group, stated):
    """Listed with its logical shape, count and bytes, --stats on the dequantized values; the bits and group size
    from config.json's `quantization` (8-bit groups of 32 pack as 4-bit groups of 64 do), else MLX's defaults
    where they fit, else the one pair that fits."""
    config = {"model_type": "llama", "quantization": {"group_size": group, "bits": bits}} if stated else None
    document, tensors, values = _mlx(tmp_path, bits, group, config)
    rows = {row["param"]: row for row in document["layers"]}
    row = rows["layers.0.proj.weight"]
    assert (row["kind"], row["shape"], row["params"]) == ("linear", list(values.shape), values.size)
    assert row["observed"]["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert row["observed"]["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (rows["layers.0.proj.scales"]["kind"], rows["layers.0.proj.biases"]["kind"]) == ("quant_scale", "quant_aux")
    assert document["summary"]["bytes"] == _stored(tensors)


def test_mlx_weight_whose_bits_nothing_tells_stays_as_stored(tmp_path):
    """8-bit groups of 64 pack as 4-bit groups of 128 do: without config.json its [out, in] is not guessed."""
    document, tensors, _ = _mlx(tmp_path, 8, 64)
    row = {row["param"]: row for row in document["layers"]}["layers.0.proj.weight"]
    assert (row["kind"], row["shape"]) == ("quant_packed", list(tensors["layers.0.proj.weight"].shape))
    assert document["summary"]["bytes"] == _stored(tensors)
