"""Totals against torch: parameters as `sum(p.numel() for p in model.parameters())` (a tie once, persistent
buffers apart), buffers as the persistent floating buffers' elements, bytes as the bytes stored, for
modules saved as `.pt` state_dicts and safetensors. transformers' own models where it is installed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


class Block(torch.nn.Module):
    """GPT-2's attention buffers as transformers ≤ 4.x kept them in the state_dict: `attn.bias`, the
    [1, 1, n, n] causal mask (float in the public `gpt2` checkpoint), and the scalar `attn.masked_bias`."""

    def __init__(self, width: int, positions: int) -> None:
        super().__init__()
        self.c_attn = torch.nn.Linear(width, 3 * width)
        self.register_buffer("bias", torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions))
        self.register_buffer("masked_bias", torch.tensor(-1e4))


class Rotary(torch.nn.Module):
    """A rotary embedding's `inv_freq`, persistent as older Llama checkpoints hold it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))


class Gpt2Like(torch.nn.Module):
    def __init__(self, width: int = 16, positions: int = 32, vocab: int = 50, layers: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte = torch.nn.Embedding(vocab, width)
        self.wpe = torch.nn.Embedding(positions, width)
        self.h = torch.nn.ModuleList([torch.nn.ModuleDict({"attn": Block(width, positions),
                                                           "ln_1": torch.nn.LayerNorm(width)})
                                      for _ in range(layers)])
        self.rotary = Rotary(width)
        self.lm_head = torch.nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


def _oracle(model: "torch.nn.Module") -> dict:
    state = model.state_dict()
    unique = {t.untyped_storage().data_ptr(): t for t in state.values()}.values()
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for name, b in model.named_buffers() if name in state and b.is_floating_point()),
            "bytes": sum(t.numel() * t.element_size() for t in unique)}


def _summary(model: "torch.nn.Module", path, fmt: str) -> dict:
    import json

    import fancli
    from fancli.renderers import render_text

    if fmt == "pt":
        torch.save(model.state_dict(), path / "m.pt")
        source = path / "m.pt"
    else:
        safetensors_torch.save_model(model, str(path / "m.safetensors"))
        source = path / "m.safetensors"
    summary = json.loads(render_text(fancli.inspect(str(source)), "json"))["summary"]
    return {name: summary[name] for name in ("parameters", "buffers", "bytes")}


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_persistent_buffers_are_not_parameters(tmp_path, fmt):
    model = Gpt2Like()
    want = _oracle(model)
    assert want["buffers"] == 2 * (32 * 32 + 1) + 8  # the masks, masked_bias, inv_freq: the test's own premise
    assert _summary(model, tmp_path, fmt) == want


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_the_total_line_says_the_buffers_apart(tmp_path, fmt):
    from helpers import run

    model = Gpt2Like()
    _summary(model, tmp_path, fmt)
    out = run("inspect", tmp_path / f"m.{fmt}").out
    want = _oracle(model)
    assert f"{want['parameters']:,} parameters (1 tied key counted once) · {want['buffers']:,} in buffers" in out


def _transformers_models():
    transformers = pytest.importorskip("transformers")
    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 vocab_size=100)
    return {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=100, bos_token_id=0, eos_token_id=0)),
        "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_key_value_heads=1, tie_word_embeddings=True, **small)),
        "llama-untied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_key_value_heads=1, tie_word_embeddings=False, **small)),
        "bert": lambda: transformers.BertForPreTraining(transformers.BertConfig(max_position_embeddings=32, **small)),
        "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
            num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=100)),
    }


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("name", ["gpt2", "llama-tied", "llama-untied", "bert", "t5"])
def test_transformers_models_count_as_torch_does(tmp_path, name, fmt):
    model = _transformers_models()[name]()
    assert _summary(model, tmp_path, fmt) == _oracle(model)


@pytest.mark.parametrize("name", ["gpt2", "llama-tied", "llama-untied", "bert", "t5"])
def test_transformers_models_in_a_dcp_folder_with_their_config(tmp_path, name):
    """dcp.save writes a tied tensor under each key; the folder's config.json says `tie_word_embeddings`, so
    the head is counted once, as torch counts it, and its bytes as stored: twice."""
    import json
    import warnings

    import torch.distributed.checkpoint as dcp

    import fancli
    from fancli.renderers import render_text

    model = _transformers_models()[name]()
    state = model.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=tmp_path / "ckpt")
    model.config.to_json_file(tmp_path / "ckpt" / "config.json")
    summary = json.loads(render_text(fancli.inspect(str(tmp_path / "ckpt")), "json"))["summary"]
    want = _oracle(model)
    assert summary["parameters"] == want["parameters"]
    assert summary["bytes"] == sum(t.numel() * t.element_size() for t in state.values())  # as dcp.save stored them


def test_an_index_stated_total_is_held_against_the_count(tmp_path):
    """transformers writes `metadata.total_parameters` (its `num_parameters()`) in a sharded checkpoint's
    index: where the tensors the index lists hold another count, a note says both numbers."""
    import json

    from helpers import run

    model = _transformers_models()["llama-untied"]()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    document = json.loads(index.read_text())
    assert document["metadata"]["total_parameters"] == model.num_parameters()  # the test's premise
    agreed = run("inspect", index)
    assert agreed.code == 0 and f"{model.num_parameters():,} parameters" in agreed.out
    assert "total_parameters" not in agreed.out
    dropped = "model.norm.weight"  # an index that lists one tensor fewer than the model it was written for
    del document["weight_map"][dropped]
    index.write_text(json.dumps(document))
    counted = model.num_parameters() - model.get_parameter(dropped).numel()
    out = run("inspect", index).out
    assert (f"states metadata.total_parameters = {model.num_parameters():,}, but its tensors hold {counted:,} "
            "parameters") in " ".join(out.split())
