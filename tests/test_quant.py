"""Issue 16 item 6: quantization scales, metadata and buffers are not layers; quantized weights are
reported with their logical shape and fans, and `--stats` reads them dequantized — torch as the oracle."""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from helpers import run  # noqa: E402
from torch import nn  # noqa: E402

from fancli.loaders import load  # noqa: E402
from fancli.weights.stats import observe  # noqa: E402
from fancli.weights.tensors import FP8, fp8_table  # noqa: E402

BLOCK = 128


def _rows(*args) -> dict[str, dict]:
    result = run(*args, "--format", "json", "--all")
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


@pytest.mark.parametrize("dtype", sorted(name for name in FP8 if hasattr(torch, name)))
def test_fp8_table_is_torchs_for_all_256_codes(dtype):
    expected = torch.arange(256, dtype=torch.uint8).view(getattr(torch, dtype)).to(torch.float32).numpy()
    table = fp8_table(dtype)
    nan = expected != expected
    assert ((table != table) == nan).all()
    assert (table[~nan] == expected[~nan]).all()
    assert (torch.tensor(table[~nan]).signbit() == torch.tensor(expected[~nan]).signbit()).all()  # -0 too


def _block_expand(scale, shape):
    return scale.repeat_interleave(BLOCK, 0)[: shape[0]].repeat_interleave(BLOCK, 1)[:, : shape[1]]


def _llama_like(hidden=200, intermediate=300, vocab=64, layers=2) -> dict[str, torch.Tensor]:
    """A Llama-shaped state_dict with HF's key names, built by hand (transformers is not installed)."""
    torch.manual_seed(0)
    sd = {"model.embed_tokens.weight": nn.Embedding(vocab, hidden).weight.detach()}
    for i in range(layers):
        p = f"model.layers.{i}"
        for name, (o, n) in {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden // 2, hidden),
                             "self_attn.v_proj": (hidden // 2, hidden), "self_attn.o_proj": (hidden, hidden),
                             "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
                             "mlp.down_proj": (hidden, intermediate)}.items():
            sd[f"{p}.{name}.weight"] = nn.Linear(n, o, bias=False).weight.detach()
        sd[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
        sd[f"{p}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    sd["model.norm.weight"] = torch.ones(hidden)
    sd["lm_head.weight"] = nn.Linear(hidden, vocab, bias=False).weight.detach()
    return sd


def _fp8_deepseek(sd: dict) -> tuple[dict, dict]:
    """DeepSeek-V3's layout: each Linear weight in float8_e4m3fn with float32 128×128 block scales
    (`weight_scale_inv`, weight = stored × scale); returns the file's tensors and the dequantized weights."""
    stored, logical = {}, {}
    for key, w in sd.items():
        if w.dim() == 2 and "layers." in key:
            blocks = (math.ceil(w.shape[0] / BLOCK), math.ceil(w.shape[1] / BLOCK))
            scale = torch.stack([torch.stack([w[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK].abs().max() / 448
                                              for c in range(blocks[1])]) for r in range(blocks[0])])
            q = (w / _block_expand(scale, w.shape)).to(torch.float8_e4m3fn)
            stored[key], stored[key + "_scale_inv"] = q, scale.float()
            logical[key] = q.to(torch.float32) * _block_expand(scale, w.shape)
        else:
            stored[key] = logical[key] = w
    return stored, logical


def test_fp8_block_scaled_checkpoint(tmp_path):
    stored, logical = _fp8_deepseek(_llama_like())
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(stored, str(path))
    rows = _rows("inspect", path, "--stats")
    scales = [key for key in stored if key.endswith("_scale_inv")]
    assert len(scales) == 14
    for key in scales:  # no scale is a Linear with a kaiming std
        row = rows[key]
        assert (row["kind"], row["std"], row["bound"]) == ("quant_scale", None, None)
        assert (row["nonlinearity"], row["gain"]) == (None, None)  # nothing follows a scale: no gain to show
        assert "of the weight beside it" in row["notes"][0] and key.removesuffix("_scale_inv") in rows
    for key, w in logical.items():
        row = rows[key]
        if w.dim() >= 2:
            assert row["kind"] in ("linear", "embedding") and row["shape"] == list(w.shape)
            assert (row["fan_in"], row["fan_out"]) == nn.init._calculate_fan_in_and_fan_out(w)
            assert row["std"] is not None
        observed = row["observed"]
        assert observed["count"] == w.numel()
        assert observed["mean"] == pytest.approx(w.double().mean().item(), rel=1e-6, abs=1e-12)
        assert observed["std"] == pytest.approx(w.double().std().item(), rel=1e-6)
    assert rows["model.layers.0.self_attn.rotary_emb.inv_freq"]["kind"] == "buffer"
    assert "dequantized" in " ".join(rows["model.layers.0.mlp.up_proj.weight"]["notes"])
    # one note for every block-scaled weight, whatever its shape: a 90,000-tensor table has one footnote
    fp8 = {tuple(rows[key]["shape"]): rows[key]["notes"][0] for key in stored
           if stored[key].dtype == torch.float8_e4m3fn}
    assert len(fp8) > 2 and set(fp8.values()) == {
        "float8_e4m3fn weight × weight_scale_inv, one scale per 128×128 block: --stats reads the dequantized values"}


def test_fp8_per_tensor_and_per_row_scales(tmp_path):
    torch.manual_seed(1)
    w = torch.randn(40, 24) * 0.05
    per_row = w.abs().amax(1, keepdim=True) / 448
    tensors = {"a.weight": (w / 0.001).to(torch.float8_e4m3fn), "a.weight_scale": torch.tensor(0.001),
               "a.input_scale": torch.tensor(0.5),
               "b.weight": (w / per_row).to(torch.float8_e4m3fn), "b.weight_scale": per_row}
    safetensors_torch.save_file(tensors, str(tmp_path / "m.safetensors"))
    rows = _rows("inspect", tmp_path / "m.safetensors", "--stats")
    for key, scale in (("a", 0.001), ("b", per_row)):
        expected = tensors[f"{key}.weight"].to(torch.float32) * scale
        assert rows[f"{key}.weight"]["observed"]["std"] == pytest.approx(expected.double().std().item(), rel=1e-6)
    assert rows["a.input_scale"]["kind"] == "quant_scale" and rows["a.input_scale"]["std"] is None
    assert "× weight_scale, one scale for the whole tensor:" in rows["a.weight"]["notes"][0]
    assert "× weight_scale, one scale per row:" in rows["b.weight"]["notes"][0]


def test_a_scale_of_the_wrong_shape_is_one_line(tmp_path):
    path = tmp_path / "bad.safetensors"
    safetensors_torch.save_file({"fc.weight": torch.zeros(300, 200).to(torch.float8_e4m3fn),
                                 "fc.weight_scale_inv": torch.ones(2, 5)}, str(path))
    result = run("inspect", path)
    assert result.code == 2 and result.out == ""
    assert result.err.count("\n") == 1 and "fc.weight_scale_inv" in result.err and str(path) in result.err


def _gptq(out=48, inputs=64, group=16, bits=4, act_order=False):
    """GPTQ's documented v1 layout, packed by hand, with the [out, in] weight torch would dequantize to."""
    torch.manual_seed(2)
    pack, groups = 32 // bits, math.ceil(inputs / group)  # AutoGPTQ's QuantLinear: scales [ceil(in / group), out]
    q = torch.randint(0, 1 << bits, (inputs, out), dtype=torch.int64)
    zeros = torch.randint(1, 1 << bits, (groups, out), dtype=torch.int64)
    scales = (torch.rand(groups, out) * 0.01 + 0.001).half()
    g_idx = torch.tensor([i // group for i in range(inputs)])  # AutoGPTQ's QuantLinear, as it builds g_idx
    if act_order:
        g_idx = g_idx[torch.randperm(inputs)]
    shifts = torch.arange(pack) * bits
    qweight = (q.reshape(inputs // pack, pack, out) << shifts[None, :, None]).sum(1)
    qzeros = ((zeros - 1).reshape(groups, out // pack, pack) << shifts[None, None, :]).sum(2)
    as_int32 = lambda t: (t & 0xFFFFFFFF).to(torch.int64).apply_(lambda v: v - (1 << 32) if v >= 1 << 31 else v).int()
    weight = (scales.float()[g_idx] * (q - zeros[g_idx]).float()).T  # [out, in]
    return {"qweight": as_int32(qweight), "qzeros": as_int32(qzeros), "scales": scales,
            "g_idx": g_idx.int()}, weight


@pytest.mark.parametrize("act_order", (False, True))
def test_gptq_packed_weight_is_its_linear(tmp_path, act_order):
    parts, weight = _gptq(act_order=act_order)
    prefix = "model.layers.0.mlp.up_proj"
    tensors = {f"{prefix}.{name}": t for name, t in parts.items()}
    tensors[f"{prefix}.bias"] = torch.zeros(48).half()
    safetensors_torch.save_file(tensors, str(tmp_path / "gptq.safetensors"))
    rows = _rows("inspect", tmp_path / "gptq.safetensors", "--stats")
    row = rows[f"{prefix}.qweight"]
    assert (row["kind"], row["shape"]) == ("linear", [48, 64])
    assert (row["fan_in"], row["fan_out"]) == nn.init._calculate_fan_in_and_fan_out(weight)
    assert "GPTQ 4-bit" in row["notes"][0]
    assert row["observed"]["mean"] == pytest.approx(weight.double().mean().item(), rel=1e-6)
    assert row["observed"]["std"] == pytest.approx(weight.double().std().item(), rel=1e-6)
    for name, kind in (("qzeros", "quant_aux"), ("scales", "quant_scale"), ("g_idx", "quant_aux")):
        aux = rows[f"{prefix}.{name}"]
        assert (aux["kind"], aux["std"]) == (kind, None) and "of the qweight beside it" in aux["notes"][0]


def test_gptq_without_g_idx_groups_by_the_stated_group_size(tmp_path):
    """Issue 25: 104 inputs in groups of 32 are 4 groups (32, 32, 32, 8), AutoGPTQ's `i // group_size`; the
    4 groups alone fit sizes 26 to 34, so without g_idx the size comes from config.json, or nothing is read."""
    parts, weight = _gptq(out=48, inputs=104, group=32)
    prefix = "model.layers.0.mlp.up_proj"
    tensors = {f"{prefix}.{name}": t for name, t in parts.items() if name != "g_idx"}
    safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    row = _rows("inspect", tmp_path / "model.safetensors", "--stats")[f"{prefix}.qweight"]
    assert row["shape"] == [48, 104] and row["observed"]["std"] is None
    assert any("fit group sizes 26 to 34" in note for note in row["notes"])
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False}}))
    row = _rows("inspect", tmp_path / "model.safetensors", "--stats")[f"{prefix}.qweight"]
    assert row["observed"]["mean"] == pytest.approx(weight.double().mean().item(), rel=1e-6)
    assert row["observed"]["std"] == pytest.approx(weight.double().std().item(), rel=1e-6)


def test_awq_shape_without_statistics_says_why(tmp_path):
    parts, weight = _gptq()
    awq = {"m.qweight": torch.zeros(64, 48 // 8, dtype=torch.int32), "m.qzeros": torch.zeros(4, 6, dtype=torch.int32),
           "m.scales": parts["scales"]}
    safetensors_torch.save_file(awq, str(tmp_path / "awq.safetensors"))
    row = _rows("inspect", tmp_path / "awq.safetensors", "--stats")["m.qweight"]
    assert row["shape"] == [48, 64] and "AWQ" in row["notes"][0]
    assert row["observed"]["std"] is None and any("no statistics" in note for note in row["notes"])


def test_bitsandbytes_int8_and_buffers(tmp_path):
    torch.manual_seed(3)
    w = torch.randn(32, 16) * 0.1
    scb = w.abs().amax(1)
    q = torch.round(w / scb[:, None] * 127).to(torch.int8)
    tensors = {"fc.weight": q, "fc.SCB": scb, "fc.weight_format": torch.tensor(0, dtype=torch.uint8),
               "h.0.attn.bias": torch.tril(torch.ones(1, 1, 8, 8)), "position_ids": torch.arange(8)[None]}
    safetensors_torch.save_file(tensors, str(tmp_path / "bnb.safetensors"))
    rows = _rows("inspect", tmp_path / "bnb.safetensors", "--stats")
    expected = q.double() * scb.double()[:, None] / 127
    assert rows["fc.weight"]["kind"] == "linear"
    assert rows["fc.weight"]["observed"]["std"] == pytest.approx(expected.std().item(), rel=1e-6)
    assert [rows[k]["kind"] for k in ("fc.SCB", "fc.weight_format", "h.0.attn.bias")] == [
        "quant_scale", "quant_aux", "buffer"]
    assert "position_ids" not in rows  # integer buffers stay unlisted, as the README says


def _streamed(path, key: str) -> tuple[float, int]:
    """`--stats`' std of one layer, read a few rows at a time, and the most memory the reading took."""
    data = {layer.param: layer for layer in load(str(path)).layers}[key].data
    observe(data, max_elements=4096)  # once before: imports, the FP8 table, this thread's scratch block
    tracemalloc.start()
    try:
        observed = observe(data, max_elements=4096)
        return observed.std, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_scale_per_value_is_read_with_its_rows_not_whole(tmp_path):
    """An FP8 weight with a float32 weight_scale_inv of its own shape: its 512 Ki scales were read whole as
    float64 (12 MB of copies: 4.1 GB for a real layer); now with each few rows, the std still torch's."""
    torch.manual_seed(3)
    w, scale = torch.randn(1024, 512), torch.rand(1024, 512) + 0.5
    q = (w / scale).to(torch.float8_e4m3fn)
    safetensors_torch.save_file({"fc.weight": q, "fc.weight_scale_inv": scale}, str(tmp_path / "m.safetensors"))
    std, peak = _streamed(tmp_path / "m.safetensors", "fc.weight")
    assert std == pytest.approx((q.double() * scale.double()).std().item(), rel=1e-9)
    assert peak < scale.numel(), f"{peak} bytes: the scales were held whole"


def test_gptq_scales_and_zero_points_are_read_with_their_rows_not_whole(tmp_path):
    """Group size 1: as many scales and zero points as inputs × out, once read whole as float64."""
    parts, weight = _gptq(out=256, inputs=1024, group=1)
    tensors = {f"fc.{name}": t for name, t in parts.items()}
    safetensors_torch.save_file(tensors, str(tmp_path / "gptq.safetensors"))
    std, peak = _streamed(tmp_path / "gptq.safetensors", "fc.qweight")
    assert std == pytest.approx(weight.double().std().item(), rel=1e-9)
    assert peak < parts["scales"].numel(), f"{peak} bytes: the scales were held whole"


def test_gptq_zero_points_for_fewer_groups_than_scales_are_one_line(tmp_path):
    """Each group's zero points are read beside its scales: a qzeros with fewer rows is refused, not overrun."""
    parts, _ = _gptq()
    parts["qzeros"] = parts["qzeros"][:2].clone()
    path = tmp_path / "gptq.safetensors"
    safetensors_torch.save_file({f"fc.{name}": t for name, t in parts.items()}, str(path))
    result = run("inspect", path, "--stats")
    assert result.code == 2 and result.out == "", result
    assert result.err.count("\n") == 1 and str(path) in result.err and "qzeros" in result.err, result.err


@pytest.mark.parametrize("key", ["m.weight_scale_inv", "m.weight_scale", "m.input_scale", "m.k_scale", "m.scales",
                                 "m.qzeros", "m.g_idx", "m.SCB", "m.weight_format", "m.weight.absmax",
                                 "m.weight.nested_absmax", "m.weight.quant_map",
                                 "m.weight.quant_state.bitsandbytes__nf4", "m.gate.e_score_correction_bias"])
def test_a_quantization_tensors_note_names_its_owner_as_seen_from_its_key(key):
    """The relative phrase (which lets 15,000 experts' scales fold) names the very key of the owner."""
    from fancli.loaders.quant_keys import auxiliary

    found = auxiliary(key, (4,))
    module = key.rpartition(".")[0]
    if found.relation == "its module":
        assert found.owner == module
    elif found.relation == "the weight it is stored under":
        assert key.startswith(found.owner + ".") and found.owner.endswith(".weight")
    else:
        leaf = found.relation.removeprefix("the ").removesuffix(" beside it")
        assert found.owner == f"{module}.{leaf}"


def _fp8_set() -> tuple[dict, dict]:
    """e4m3fn and e5m2 weights with block, per-tensor and per-row scales (DeepSeek's and compressed-tensors'
    names), and torch's float64 of each dequantized weight."""
    torch.manual_seed(4)
    w = torch.randn(300, 200) * 0.05
    stored, blocks = _fp8_deepseek({"layers.0.block.weight": w})
    small = w[:40, :24]
    per_row = small.abs().amax(1, keepdim=True) / 448
    stored.update({"tensor.weight": (small / 0.001).to(torch.float8_e4m3fn), "tensor.weight_scale": torch.tensor(0.001),
                   "row.weight": (small / per_row).to(torch.float8_e4m3fn), "row.weight_scale": per_row,
                   "e5m2.weight": (small / 0.002).to(torch.float8_e5m2), "e5m2.weight_scale": torch.tensor(0.002)})
    logical = {"layers.0.block.weight": blocks["layers.0.block.weight"]}
    for key in ("tensor", "row", "e5m2"):
        logical[f"{key}.weight"] = stored[f"{key}.weight"].double() * stored[f"{key}.weight_scale"].double()
    return stored, logical


def test_fp8_statistics_are_the_same_from_safetensors_pt_and_dcp(tmp_path):
    """Issue 25: a torch.save file (FP8 storages are pickled as torch.storage.UntypedStorage) and a DCP folder
    gave no statistics; every container now reads the dequantized values torch computes."""
    import warnings

    import torch.distributed.checkpoint as dcp

    stored, logical = _fp8_set()
    safetensors_torch.save_file(stored, str(tmp_path / "m.safetensors"))
    torch.save(stored, tmp_path / "m.pt")
    with warnings.catch_warnings():  # "torch.distributed is … uninitialized, assuming … a single process"
        warnings.simplefilter("ignore")
        dcp.save(stored, checkpoint_id=tmp_path / "dcp")
    for source in ("m.safetensors", "m.pt", "dcp"):
        rows = _rows("inspect", tmp_path / source, "--stats")
        for key, w in logical.items():
            observed = rows[key]["observed"]
            assert observed["count"] == w.numel(), (source, key)
            assert observed["mean"] == pytest.approx(w.double().mean().item(), rel=1e-6, abs=1e-12), (source, key)
            assert observed["std"] == pytest.approx(w.double().std().item(), rel=1e-6), (source, key)


def test_fp8_through_torchs_own_loader_is_dequantized(tmp_path):
    """With --trust torch.load reads the file: its tensors, not byte ranges, feed the same dequantizer."""
    stored, logical = _fp8_set()
    torch.save(stored, tmp_path / "m.pt")
    rows = _rows("inspect", tmp_path / "m.pt", "--stats", "--trust")
    for key, w in logical.items():
        assert rows[key]["observed"]["std"] == pytest.approx(w.double().std().item(), rel=1e-6), key
        assert not any("strided" in note for note in rows[key]["notes"])


def test_fp8_in_dcp_shards_pairs_each_value_with_its_scale(tmp_path):
    """A block-scaled weight and its scales saved in 2×2 boxes (tensor-parallel over rows and columns), as
    torch's FileSystemWriter lays out shards; torch's dcp.load reads the folder back to the same tensors."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    torch.manual_seed(5)
    spread = torch.arange(1.0, 7.0).reshape(3, 2)  # each block's scale far from the others'
    weight = torch.randn(300, 200) * 0.05 * _block_expand(spread, (300, 200))
    stored, logical = _fp8_deepseek({"layers.0.w.weight": weight})
    boxes = {"layers.0.w.weight": [(0, 0, 256, 128), (0, 128, 256, 72), (256, 0, 44, 128), (256, 128, 44, 72)],
             "layers.0.w.weight_scale_inv": [(0, 0, 2, 1), (0, 1, 2, 1), (2, 0, 1, 1), (2, 1, 1, 1)]}
    storage, tensors = {}, {}
    for key, parts in boxes.items():
        chunks = []
        for rank, (row, column, rows, columns) in enumerate(parts):
            name = f"__{rank}_0.distcp"
            with open(tmp_path / name, "ab") as stream:
                offset = stream.tell()
                torch.save(stored[key][row : row + rows, column : column + columns].clone(), stream)
                storage[MetadataIndex(key, [row, column], 0)] = _StorageInfo(name, offset, stream.tell() - offset)
            chunks.append(ChunkStorageMetadata(torch.Size([row, column]), torch.Size([rows, columns])))
        tensors[key] = TensorStorageMetadata(TensorProperties(dtype=stored[key].dtype), stored[key].shape, chunks)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Metadata(tensors, storage_data=storage)))
    back = {key: torch.zeros_like(t) for key, t in stored.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=tmp_path)
    assert all(torch.equal(back[key].view(torch.uint8), t.view(torch.uint8)) for key, t in stored.items())

    w = logical["layers.0.w.weight"]
    observed = _rows("inspect", tmp_path, "--stats")["layers.0.w.weight"]["observed"]
    assert observed["count"] == w.numel()
    assert observed["mean"] == pytest.approx(w.double().mean().item(), rel=1e-6, abs=1e-12)
    assert observed["std"] == pytest.approx(w.double().std().item(), rel=1e-6)
