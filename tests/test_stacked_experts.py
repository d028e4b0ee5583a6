"""Issue 27: transformers 5 keeps a MoE layer's experts stacked in 3-D tensors. Each expert is one matrix of
the stack, used as F.linear(x, W[e]) ([E, out, in]: Mixtral, Qwen3-MoE) or x @ W[e] ([E, in, out]: gpt-oss);
its fans are torch's on that matrix as the library uses it, and the stacked biases [E, out] are biases.
The oracle is the library: its own models' tensors, its experts' `is_transposed` flag, and torch's
`_calculate_fan_in_and_fan_out`."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from helpers import run  # noqa: E402

H, I, E = 64, 48, 4  # hidden ≠ intermediate ≠ 2·intermediate: no layout reads alike


@pytest.fixture(scope="module")
def transformers():
    found = pytest.importorskip("transformers")
    found.logging.set_verbosity_error()
    return found


def _build(transformers, family: str):
    common = dict(hidden_size=H, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=96)
    if family == "mixtral":
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            intermediate_size=I, num_local_experts=E, **common))
    if family == "qwen3_moe":
        return transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            intermediate_size=128, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2, **common))
    return transformers.GptOssForCausalLM(transformers.GptOssConfig(
        intermediate_size=I, num_local_experts=E, head_dim=16, **common))


def _save_runtime(model, folder, keep=lambda key: True) -> None:
    """The model's own state_dict as it runs (stacked experts; save_pretrained writes Mixtral's back per
    expert), with its config.json beside it."""
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    tensors = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items() if keep(key)}
    save_file(tensors, str(folder / "model.safetensors"))
    model.config.to_json_file(str(folder / "config.json"))


def _rows(source) -> dict[str, dict]:
    result = run("inspect", source, "--format", "json", "--all")
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


def _library_fans(experts, leaf: str) -> tuple[int, int]:
    """torch's fans of one expert's matrix as the library multiplies by it: W[e] in F.linear, W[e].T for
    x @ W[e] (the experts module's own `is_transposed`)."""
    matrix = getattr(experts, leaf)[0].detach()
    return torch.nn.init._calculate_fan_in_and_fan_out(matrix.T if experts.is_transposed else matrix)


def _experts_modules(model):
    return {name: module for name, module in model.named_modules() if name.endswith("mlp.experts")}


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_stacked_experts_get_each_experts_fans(tmp_path, transformers, family):
    model = _build(transformers, family)
    _save_runtime(model, tmp_path)
    rows = _rows(tmp_path)
    checked = 0
    for name, experts in _experts_modules(model).items():
        for leaf in ("gate_up_proj", "down_proj"):
            row = rows[f"{name}.{leaf}"]
            assert row["kind"] == "experts", row
            assert (row["effective_fan_in"], row["effective_fan_out"]) == _library_fans(experts, leaf), row
            assert (row["fan_in"], row["fan_out"]) == torch.nn.init._calculate_fan_in_and_fan_out(
                getattr(experts, leaf).detach())  # torch's own reading of the whole stack stays as it is
            checked += 1
    assert checked == 2


def test_stacked_biases_are_biases(tmp_path, transformers):
    model = _build(transformers, "gpt_oss")
    _save_runtime(model, tmp_path)
    rows = _rows(tmp_path)
    biases = [key for key, value in model.state_dict().items() if ".experts." in key and key.endswith("_bias")]
    assert len(biases) == 2
    for key in biases:
        row = rows[key]
        assert row["kind"] == "experts" and row["fan_in"] is None and row["fan_out"] is None, row
        assert row["distribution"] == "constant" and row["constant"] == 0.0  # the library's zeros, as before


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_a_lone_stack_takes_its_layout_from_the_model_type(tmp_path, transformers, family):
    """down_proj alone ([E, H, I] or [E, I, H]: nothing beside it tells which): config.json's model_type
    does, and without it the fans are unknown, not guessed."""
    model = _build(transformers, family)
    _save_runtime(model, tmp_path / "with", keep=lambda key: ".experts." not in key or key.endswith("down_proj"))
    (name, experts), = _experts_modules(model).items()
    row = _rows(tmp_path / "with")[f"{name}.down_proj"]
    assert (row["effective_fan_in"], row["effective_fan_out"]) == _library_fans(experts, "down_proj"), row
    assert any(f"model_type={family}" in note for note in row["notes"])
    (tmp_path / "with" / "config.json").unlink()
    row = _rows(tmp_path / "with")[f"{name}.down_proj"]
    assert row["kind"] == "experts" and row["effective_fan_in"] is None and row["effective_fan_out"] is None, row


def test_mxfp4_experts_are_the_stack_transformers_dequantizes(tmp_path, transformers):
    """gpt-oss's MXFP4 checkpoint: `*_blocks` uint8 [E, R, G, 16] and `*_scales` uint8 [E, R, G] beside each
    stacked bias. The oracle is transformers' own `convert_moe_packed_tensors` (integrations/mxfp4.py), called
    here: the stack's shape, its count, its values' mean and std under --stats; each expert's fans are torch's on
    W[e].T, as gpt-oss multiplies x @ W[e]."""
    from safetensors.torch import save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    torch.manual_seed(0)
    hidden, inter, module = 96, 32, "model.layers.0.mlp.experts"
    tensors = {}
    for leaf, rows, groups in (("gate_up_proj", 2 * inter, hidden // 32), ("down_proj", hidden, inter // 32)):
        tensors[f"{module}.{leaf}_blocks"] = torch.randint(0, 256, (E, rows, groups, 16), dtype=torch.uint8)
        tensors[f"{module}.{leaf}_scales"] = torch.randint(118, 136, (E, rows, groups), dtype=torch.uint8)
        tensors[f"{module}.{leaf}_bias"] = torch.randn(E, rows).bfloat16()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    result = run("inspect", tmp_path / "model.safetensors", "--format", "json", "--all", "--stats")
    assert result.code == 0, result.err
    rows = {row["param"]: row for row in json.loads(result.out)["layers"]}
    for leaf in ("gate_up_proj", "down_proj"):
        values = convert_moe_packed_tensors(tensors[f"{module}.{leaf}_blocks"], tensors[f"{module}.{leaf}_scales"],
                                            dtype=torch.float32).double()
        row = rows[f"{module}.{leaf}_blocks"]
        assert (row["kind"], row["shape"], row["params"]) == ("experts", list(values.shape), values.numel())
        assert (row["effective_fan_in"], row["effective_fan_out"]) == \
            torch.nn.init._calculate_fan_in_and_fan_out(values[0].T)
        assert row["observed"]["mean"] == pytest.approx(values.mean().item(), rel=1e-12)
        assert row["observed"]["std"] == pytest.approx(values.std().item(), rel=1e-12)
        assert (row["observed"]["min"], row["observed"]["max"]) == (values.min().item(), values.max().item())
        assert rows[f"{module}.{leaf}_scales"]["kind"] == "quant_scale"
        bias = rows[f"{module}.{leaf}_bias"]
        assert bias["kind"] == "experts" and bias["fan_in"] is None
