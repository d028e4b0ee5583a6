"""Issue 16 item 5: config.json beside the weights gives the MLP's activation, tied embeddings and the
library's own init (initializer_range), and the source notes say what was taken from it."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from helpers import run  # noqa: E402


def _inspect(path, *args) -> dict:
    result = run("inspect", path, "--format", "json", "--all", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def _llama(tmp_path, std=0.006, hidden=64, intermediate=160, vocab=96, config=None):
    """A Llama-shaped checkpoint with HF's key names, drawn as transformers' _init_weights does:
    N(0, initializer_range²) for every Linear and Embedding weight, ones for the norms."""
    torch.manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.randn(vocab, hidden) * std}
    for name, shape in {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                        "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                        "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
                        "mlp.down_proj": (hidden, intermediate)}.items():
        sd[f"model.layers.0.{name}.weight"] = torch.randn(*shape) * std
    sd["model.layers.0.input_layernorm.weight"] = torch.ones(hidden)
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    config = config if config is not None else {
        "model_type": "llama", "hidden_act": "silu", "tie_word_embeddings": True, "initializer_range": std,
        "num_attention_heads": 4, "hidden_size": hidden}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "model.safetensors", sd


def test_activation_follows_the_gate_not_attention_or_output(tmp_path):
    path, sd = _llama(tmp_path)
    report = _inspect(path)
    rows = {row["param"]: row for row in report["layers"]}
    nl = {key.removeprefix("model.layers.0."): rows[key]["nonlinearity"] for key in sd if key.startswith("model.layers")}
    assert nl["mlp.gate_proj.weight"] == "silu"
    for key in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.o_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"):
        assert nl[key] != "silu", key  # up_proj is multiplied by silu(gate), not followed by it
    assert rows["model.layers.0.mlp.gate_proj.weight"]["gain"] == pytest.approx(1.6765324703310913)
    notes = " ".join(report["source"].get("notes", []))
    assert "hidden_act=silu" in notes and "initializer_range=0.006" in notes and "tie_word_embeddings" in notes
    assert any("lm_head" in note for note in rows["model.embed_tokens.weight"]["notes"])


def test_gpt2_activation_function_on_c_fc(tmp_path):
    torch.manual_seed(1)
    sd = {"h.0.mlp.c_fc.weight": torch.randn(16, 64), "h.0.mlp.c_fc.bias": torch.zeros(64),
          "h.0.mlp.c_proj.weight": torch.randn(64, 16), "h.0.attn.c_attn.weight": torch.randn(16, 48)}
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"activation_function": "gelu_new"}))
    rows = {row["param"]: row for row in _inspect(tmp_path / "model.safetensors")["layers"]}
    assert rows["h.0.mlp.c_fc.weight"]["nonlinearity"] == "gelu_tanh"
    assert rows["h.0.mlp.c_proj.weight"]["nonlinearity"] != "gelu_tanh"
    assert rows["h.0.attn.c_attn.weight"]["nonlinearity"] != "gelu_tanh"


def test_stats_and_infer_name_the_library_init(tmp_path):
    path, sd = _llama(tmp_path)
    rows = {row["param"]: row for row in _inspect(path, "--infer")["layers"]}
    for key, w in sd.items():
        if w.dim() < 2:
            continue
        row = rows[key]
        assert row["inferred"]["label"] == "recipe transformers: N, std 0.006", (key, row["inferred"])
        assert row["recipe"] == "transformers" and row["std"] == 0.006  # the expectation is the library's init
        assert row["observed"]["std_ratio"] == pytest.approx(w.double().std().item() / 0.006, rel=1e-6)
    trained, _ = _llama(tmp_path / "t" if (tmp_path / "t").mkdir() is None else None, std=0.03,
                        config={"initializer_range": 0.006})
    rows = {row["param"]: row for row in _inspect(trained, "--infer")["layers"]}
    assert all("std 0.006" not in row["inferred"]["label"] and row["inferred"]["label"] != "normal(std=0.006)"
               for row in rows.values() if row.get("inferred"))


def test_without_config_nothing_is_assumed(tmp_path):
    path, _ = _llama(tmp_path)
    (tmp_path / "config.json").unlink()
    rows = {row["param"]: row for row in _inspect(path, "--infer")["layers"]}
    assert rows["model.layers.0.mlp.gate_proj.weight"]["nonlinearity"] != "silu"
    assert rows["model.layers.0.mlp.gate_proj.weight"]["inferred"]["label"] != "normal(std=0.006)"


def _falcon_kv_heads(config: dict) -> int:
    """transformers' rule, copied from models/falcon (FalconConfig.__init__/__post_init__ and
    FalconAttention.__init__): num_kv_heads defaults to num_attention_heads, multi_query to True,
    new_decoder_architecture to False, and `num_kv_heads if (new_decoder_architecture or not multi_query) else 1`."""
    num_kv_heads = config.get("num_kv_heads")
    num_kv_heads = config["num_attention_heads"] if num_kv_heads is None else num_kv_heads
    new_decoder_architecture = config.get("new_decoder_architecture", False)
    multi_query = config.get("multi_query", True)
    return num_kv_heads if (new_decoder_architecture or not multi_query) else 1


FALCONS = [  # Falcon-40B's layout (new decoder, multi_query left True as its config.json has it), 7B's, others
    {"new_decoder_architecture": True, "multi_query": True, "num_kv_heads": 2},
    {"new_decoder_architecture": True, "num_kv_heads": 2},
    {"new_decoder_architecture": True, "multi_query": True},
    {"multi_query": True, "num_kv_heads": 2},
    {"num_kv_heads": 2},
    {"multi_query": False, "num_kv_heads": 2},
]


@pytest.mark.parametrize("falcon", FALCONS)
def test_falcon_kv_heads_follow_transformers(tmp_path, falcon):
    """Issue 25: `multi_query` forced one kv head, so Falcon-40B's fused query_key_value was never split."""
    from torch.nn.init import _calculate_fan_in_and_fan_out

    config = {"model_type": "falcon", "num_attention_heads": 8, "hidden_size": 64, **falcon}
    head_dim, kv = 8, _falcon_kv_heads(config)
    q, k = 8 * head_dim, kv * head_dim
    weight = torch.randn(q + 2 * k, 64)  # FalconAttention: (num_heads + 2·num_kv_heads)·head_dim rows
    safetensors_torch.save_file({"transformer.h.0.self_attention.query_key_value.weight": weight},
                                str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = _inspect(tmp_path / "model.safetensors", "--fans", "effective", "-m", "fan_out")
    (row,) = report["layers"]
    assert f"num_key_value_heads={kv}," in " ".join(report["source"]["notes"])
    if q == k:  # three equal parts: torch's fan_out of one of them
        assert row["effective_fan_out"] == _calculate_fan_in_and_fan_out(weight[:q])[1]
    else:
        assert row["effective_fan_out"] is None and f"q {q}, k {k}, v {k} rows" in " ".join(row["notes"])


def test_falcon_heads_as_transformers_builds_them(tmp_path):
    """transformers' own Falcon-40B-style model (new decoder, 2 kv heads), saved and read back."""
    transformers = pytest.importorskip("transformers")
    config = transformers.FalconConfig(vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                                       num_kv_heads=2, new_decoder_architecture=True)
    model = transformers.FalconForCausalLM(config)
    model.save_pretrained(tmp_path)
    attention = model.transformer.h[0].self_attention
    q, k = attention.num_heads * attention.head_dim, attention.num_kv_heads * attention.head_dim
    rows = {row["param"]: row for row in _inspect(tmp_path)["layers"]}
    (qkv,) = [row for key, row in rows.items() if key.endswith("h.0.self_attention.query_key_value.weight")]
    assert qkv["shape"][0] == q + 2 * k and f"q {q}, k {k}, v {k} rows" in " ".join(qkv["notes"])


def _qwen2_vl_config() -> dict:
    """Qwen2-VL's config.json: a vision tower of 4 heads over embed_dim 64 (its `hidden_size` is the text
    model's), and a text model whose grouped-query q, k, v rows (128 + 32 + 32) happen to equal the
    tower's fused qkv (3 × 64)."""
    return {"model_type": "qwen2_vl",
            "text_config": {"hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 2,
                            "hidden_act": "silu"},
            "vision_config": {"embed_dim": 64, "hidden_size": 128, "num_heads": 4, "depth": 1,
                              "hidden_act": "quick_gelu"}}


def test_a_vision_towers_qkv_takes_the_vision_configs_heads(tmp_path):
    """Issue 25: the text model's heads were applied to the vision tower's qkv. transformers' Qwen2-VL
    VisionAttention (copied rule): qkv = Linear(embed_dim, 3·embed_dim), q, k, v each embed_dim rows."""
    from torch.nn.init import _calculate_fan_in_and_fan_out

    torch.manual_seed(2)
    qkv = torch.randn(3 * 64, 64)
    safetensors_torch.save_file({"visual.blocks.0.attn.qkv.weight": qkv,
                                 "model.layers.0.self_attn.qkv_proj.weight": torch.randn(192, 128)},
                                str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_qwen2_vl_config()))
    report = _inspect(tmp_path / "model.safetensors", "--fans", "effective", "-m", "fan_out")
    rows = {row["param"]: row for row in report["layers"]}
    vision = rows["visual.blocks.0.attn.qkv.weight"]
    assert vision["effective_fan_out"] == _calculate_fan_in_and_fan_out(qkv[:64])[1]
    assert "q, k, v stacked: split by config.json" in vision["notes"]
    text = rows["model.layers.0.self_attn.qkv_proj.weight"]  # the text model's own fused q/k/v keeps its heads
    assert text["effective_fan_out"] is None and "q 128, k 32, v 32 rows" in " ".join(text["notes"])


def test_a_vision_towers_heads_as_transformers_builds_them(tmp_path):
    """transformers' own Qwen2-VL (its 5.x config API: text_config, rope_parameters), saved and read back."""
    transformers = pytest.importorskip("transformers", minversion="5.0")
    config = _qwen2_vl_config()
    text, vision = config["text_config"], config["vision_config"]
    model = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(
        text_config=dict(text, vocab_size=32, intermediate_size=64, num_hidden_layers=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        vision_config=dict(vision, mlp_ratio=2, patch_size=2, temporal_patch_size=1, spatial_merge_size=1)))
    model.save_pretrained(tmp_path)
    attention = model.model.visual.blocks[0].attn
    rows = _inspect(tmp_path, "--fans", "effective", "-m", "fan_out")["layers"]
    (qkv,) = [row for row in rows if row["param"].endswith("visual.blocks.0.attn.qkv.weight")]
    assert qkv["shape"] == [3 * attention.dim, attention.dim]
    assert qkv["effective_fan_out"] == attention.dim  # q, k, v: each a Linear(dim, dim) of its own


def test_gpt2_c_attn_is_stacked_along_its_output_dim_1(tmp_path):
    """Issue 25: GPT-2's c_attn is a Conv1D weight [in, 3·E] (transformers' Conv1D computes
    `addmm(bias, x, weight)`, and GPT2Attention splits its output `.split(split_size, dim=2)`): q, k, v lie
    along dim 1, not dim 0 as the note said."""
    from torch.nn.init import _calculate_fan_in_and_fan_out

    torch.manual_seed(3)
    weight = torch.randn(64, 192)
    safetensors_torch.save_file({"h.0.attn.c_attn.weight": weight, "h.0.attn.c_attn.bias": torch.zeros(192)},
                                str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": 4, "n_embd": 64}))
    rows = {row["param"]: row for row in _inspect(tmp_path / "model.safetensors", "--fans", "effective")["layers"]}
    row = rows["h.0.attn.c_attn.weight"]
    assert row["effective_fan_out"] == _calculate_fan_in_and_fan_out(weight[:, :64].T)[1]  # q as a torch Linear
    assert any("stacked along dim 1" in note for note in row["notes"])
    assert not any("along dim 0" in note for note in row["notes"])


def test_gpt2_c_attn_splits_as_transformers_computes_it(tmp_path):
    """transformers' own GPT-2: its query is the first third of c_attn's dim 1, and the note says dim 1."""
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=64, n_layer=1,
                                                           n_head=4)).eval()
    attention = model.h[0].attn
    x = torch.randn(1, 3, 64)
    query = attention.c_attn(x).split(attention.split_size, dim=2)[0]
    weight = attention.c_attn.weight.detach()
    assert torch.allclose(query, x @ weight[:, :64] + attention.c_attn.bias[:64])  # q is dim 1's first third
    model.save_pretrained(tmp_path)
    rows = _inspect(tmp_path, "--fans", "effective")["layers"]
    (row,) = [row for row in rows if row["param"].endswith("h.0.attn.c_attn.weight")]
    assert row["effective_fan_out"] == 64 and any("stacked along dim 1" in note for note in row["notes"])


def test_a_vision_towers_mlp_takes_the_vision_configs_activation(tmp_path):
    """The same for the MLP activation: transformers' Qwen2-VL VisionMlp is fc1 → ACT2FN[vision_config.hidden_act]
    → fc2 (copied rule), its text MLP's gate is followed by text_config's."""
    config = _qwen2_vl_config()
    config["vision_config"]["hidden_act"] = "gelu"
    sd = {"visual.blocks.0.mlp.fc1.weight": torch.randn(128, 64),
          "visual.blocks.0.mlp.fc2.weight": torch.randn(64, 128),
          "model.layers.0.mlp.gate_proj.weight": torch.randn(96, 128),
          "model.layers.0.mlp.up_proj.weight": torch.randn(96, 128)}
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = _inspect(tmp_path / "model.safetensors")
    rows = {row["param"]: row["nonlinearity"] for row in report["layers"]}
    assert rows["visual.blocks.0.mlp.fc1.weight"] == "gelu" and rows["model.layers.0.mlp.gate_proj.weight"] == "silu"
    assert rows["visual.blocks.0.mlp.fc2.weight"] not in ("gelu", "silu")
    notes = " ".join(report["source"]["notes"])
    assert "vision_config: hidden_act=gelu" in notes and "hidden_act=silu" in notes
