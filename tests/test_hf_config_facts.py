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
        assert row["inferred"]["label"] == "normal(std=0.006)", (key, row["inferred"])
        assert row["recipe"] == "transformers" and row["std"] == 0.006  # the expectation is the library's init
        assert row["observed"]["std_ratio"] == pytest.approx(w.double().std().item() / 0.006, rel=1e-6)
    trained, _ = _llama(tmp_path / "t" if (tmp_path / "t").mkdir() is None else None, std=0.03,
                        config={"initializer_range": 0.006})
    rows = {row["param"]: row for row in _inspect(trained, "--infer")["layers"]}
    assert all(row["inferred"]["label"] != "normal(std=0.006)" for row in rows.values() if row.get("inferred"))


def test_without_config_nothing_is_assumed(tmp_path):
    path, _ = _llama(tmp_path)
    (tmp_path / "config.json").unlink()
    rows = {row["param"]: row for row in _inspect(path, "--infer")["layers"]}
    assert rows["model.layers.0.mlp.gate_proj.weight"]["nonlinearity"] != "silu"
    assert rows["model.layers.0.mlp.gate_proj.weight"]["inferred"]["label"] != "normal(std=0.006)"
