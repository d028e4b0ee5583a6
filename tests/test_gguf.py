"""Issue 29, GGUF: files written by gguf's own GGUFWriter are read without llama.cpp or torch, each tensor in
torch's layout (ne reversed); fans are torch's on that tensor, `--stats` are gguf's dequantized values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
from gguf.quants import dequantize, quantize  # noqa: E402
from helpers import run, run_child  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
Q = gguf.GGMLQuantizationType


def _q4_k(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """Q4_K blocks (gguf has no Q4_K quantizer): random codes and scales, finite fp16 d and dmin."""
    block, size = gguf.GGML_QUANT_SIZES[Q.Q4_K]
    raw = rng.integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    raw[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # d
    raw[..., 2:4] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)  # dmin
    return raw.reshape(rows, -1)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A llama-like GGUF: name -> the array written (its numpy shape) and -> the values gguf reads back."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    plain = {
        "token_embd.weight": rng.standard_normal((512, 128)).astype(np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((128, 128)).astype(np.float16),
        "blk.0.attn_norm.weight": np.ones(128, np.float32),
        "blk.0.ffn_gate_exps.weight": rng.standard_normal((4, 96, 128)).astype(np.float32),  # ne [128, 96, 4]
    }
    quantized = {
        "blk.0.attn_k.weight": (Q.Q8_0, quantize(rng.standard_normal((64, 128)).astype(np.float32), Q.Q8_0)),
        "blk.0.attn_v.weight": (Q.Q4_0, quantize(rng.standard_normal((64, 128)).astype(np.float32), Q.Q4_0)),
        "blk.0.ffn_up.weight": (Q.Q4_K, _q4_k(96, 256, rng)),
        "output.weight": (Q.BF16, quantize(rng.standard_normal((512, 128)).astype(np.float32), Q.BF16)),
    }
    written, values = {}, {}
    for name, array in plain.items():
        writer.add_tensor(name, array)
        written[name] = values[name] = array
    for name, (qtype, raw) in quantized.items():
        writer.add_tensor(name, raw, raw_dtype=qtype)
        values[name] = dequantize(raw, qtype)
        written[name] = values[name]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, written, values


def _rows(*args) -> dict:
    result = run(*args, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_ne_is_reversed_and_fans_are_torchs(model):
    path, written, _ = model
    ne = {tensor.name: tensor.shape.tolist() for tensor in gguf.GGUFReader(path).tensors}
    assert ne["token_embd.weight"] == [128, 512]
    report = _rows("inspect", path, "--all")
    rows = {row["param"]: row for row in report["layers"]}
    assert list(rows) == list(written)  # each tensor once, in file order
    for name, array in written.items():
        row = rows[name]
        assert row["shape"] == list(reversed(ne[name])) == list(array.shape)
        if array.ndim >= 2:
            assert (row["fan_in"], row["fan_out"]) == torch.nn.init._calculate_fan_in_and_fan_out(
                torch.empty(array.shape))
    assert rows["token_embd.weight"]["kind"] == "embedding"
    assert {rows[name]["kind"] for name in written if name.startswith(("blk.0.attn_", "blk.0.ffn", "output"))
            if written[name].ndim == 2} == {"linear"}
    assert report["summary"]["parameters"] == sum(t.n_elements for t in gguf.GGUFReader(path).tensors)
    assert report["summary"]["bytes"] == sum(t.n_bytes for t in gguf.GGUFReader(path).tensors)
    experts = rows["blk.0.ffn_gate_exps.weight"]
    assert experts["kind"] == "experts" and (experts["effective_fan_in"], experts["effective_fan_out"]) == \
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(written["blk.0.ffn_gate_exps.weight"].shape[1:]))
    assert not any("conv" in note for note in experts["notes"])
    assert "4 heads of 32 rows (head_count" in rows["blk.0.attn_q.weight"]["notes"][0]
    assert "2 heads of 32 rows (head_count_kv" in rows["blk.0.attn_k.weight"]["notes"][1]  # after its Q8_0 note
    assert report["source"]["format"] == "gguf"
    assert "block_count 1, head_count 4, head_count_kv 2" in report["source"]["notes"][0]


def test_stats_are_ggufs_dequantized_values(model):
    path, _, values = model
    rows = {row["param"]: row for row in _rows("inspect", path, "--stats", "--all")["layers"]}
    for name, expected in values.items():
        expected = expected.astype(np.float64)
        observed = rows[name]["observed"]
        assert observed["count"] == expected.size
        assert observed["mean"] == pytest.approx(expected.mean(), rel=1e-6, abs=1e-9)
        assert observed["std"] == pytest.approx(expected.std(ddof=1) if expected.std() else 0.0, rel=1e-6,
                                                abs=1e-12)
    assert "Q4_K" in " ".join(rows["blk.0.ffn_up.weight"]["notes"])


def test_truncated_file_is_one_line(model, tmp_path):
    path = model[0]
    raw = path.read_bytes()
    for size in (10, 200, len(raw) - 100):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(raw[:size])
        result = run("inspect", cut)
        assert result.code == 2, result.err
        assert result.err.count("\n") == 1 and f"{cut}: not a readable GGUF file" in result.err


def test_gguf_never_imports_torch(model):
    result = run_child(["inspect", str(model[0]), "--stats", "-f", "json"], absent=("torch",))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layers"]


def test_without_gguf_is_one_line(model):
    result = run_child(["inspect", model[0]], code=2, hidden=("gguf",))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "needs the gguf package: pip install gguf" in result.stderr


def _fused_file(path: Path, heads: int, kv_heads: int) -> Path:
    """A Falcon-like GGUF block: one fused attn_qkv of q + k + v rows, heads of 32 over a width of 128."""
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_embedding_length(128)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rows = (heads + 2 * kv_heads) * 32
    writer.add_tensor("blk.0.attn_qkv.weight", np.zeros((rows, 128), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_fused_qkv_is_split_by_the_metadata_heads(tmp_path):
    q = torch.empty(4 * 32, 128)  # the q part: what each of three equal parts is
    row = _rows("inspect", _fused_file(tmp_path / "mha.gguf", 4, 4))["layers"][0]
    assert (row["fan_in"], row["fan_out"]) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(3 * 128, 128))
    assert (row["effective_fan_in"], row["effective_fan_out"]) == torch.nn.init._calculate_fan_in_and_fan_out(q)
    row = _rows("inspect", _fused_file(tmp_path / "gqa.gguf", 4, 1))["layers"][0]
    assert "effective_fan_out" in row and row["effective_fan_out"] is None
    assert "q 128, k 32, v 32 rows" in " ".join(row["notes"])


def test_hf_names_where_ggufs_map_gives_exactly_one(tmp_path):
    """gguf's own `get_tensor_name_map(arch, block_count)`: a GGUF name that one HF name maps to for the file's
    architecture (qwen2moe's shared-expert gate) gets it as `hf_name`; one that several map to (attn_q: 13
    spellings across model families) gets none; so does a file of an architecture gguf does not know."""
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2MOE, 1).mapping
    spellings = {}
    for key, (_, name) in mapping.items():
        if key != name:
            spellings.setdefault(name, set()).add(key)
    assert len(spellings["blk.0.ffn_gate_inp_shexp"]) == 1 and len(spellings["blk.0.attn_q"]) > 1
    rng = np.random.default_rng(5)
    rows = {}
    for arch in ("qwen2moe", "no-such-arch"):
        path = tmp_path / f"{arch}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_block_count(1)
        for name, shape in (("blk.0.ffn_gate_inp_shexp.weight", (1, 32)), ("blk.0.attn_q.weight", (32, 32))):
            writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        result = run("inspect", path, "--all", "--format", "json")
        assert result.code == 0, result.err
        rows[arch] = {row["param"]: row for row in json.loads(result.out)["layers"]}
    (hf,) = spellings["blk.0.ffn_gate_inp_shexp"]
    assert rows["qwen2moe"]["blk.0.ffn_gate_inp_shexp.weight"]["hf_name"] == f"{hf}.weight"
    assert "hf_name" not in rows["qwen2moe"]["blk.0.attn_q.weight"]
    assert not any("hf_name" in row for row in rows["no-such-arch"].values())
