"""Issue 27: the expectation is what the model's own library drew. Each recipe is held against its library:
transformers' own `_init_weights` (the std it passes to torch's sampler, recorded as it builds a model from a
config), and for the libraries that do not install beside this torch (torchvision, timm, torchtitan) a copy of
their init code, named where it is copied."""

from __future__ import annotations

import html
import json
import math

import pytest

torch = pytest.importorskip("torch")
from helpers import keras_compute_fans, library_draws, run  # noqa: E402
from torch import nn  # noqa: E402

from fancli.analysis.recipes import RECIPES, recipe  # noqa: E402
from fancli.analysis.recipes.draws import cut_std  # noqa: E402


def _inspect(source, *args) -> dict[str, dict]:
    result = run("inspect", source, "--format", "json", "--all", *args)
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


def _expected(row: dict) -> tuple[str, float]:
    """What fancli expects of a tensor, in the form library_draws records a draw."""
    if row["distribution"] == "constant":
        return "constant", row["constant"]
    if row["distribution"] == "uniform":
        return "uniform", row["bound"]
    if "cut" in row:  # a normal cut at ±kσ: the σ given to torch's trunc_normal_, and k
        return "truncated", row["sampling_std"], row["cut"]
    return "normal", row.get("sampling_std", row["std"])


def _same(row: dict, draw: tuple, rel: float = 1e-12) -> bool:
    """Whether fancli's expectation for a row is the library's draw (its kind, and its number to `rel`)."""
    got = _expected(row)
    if draw[0] == "truncated" and draw[2] >= 10:  # a cut at ≥ 10σ (trunc_normal_'s absolute ±2 at std 0.02 is
        draw = ("normal", draw[1])  # ±100σ) leaves N(0, σ²): the std differs from σ by less than 1e-20
    return got[0] == draw[0] and len(got) == len(draw) and list(got[1:]) == pytest.approx(list(draw[1:]), rel=rel)


def _saved_keys_by_values(model, path) -> dict[str, str]:
    """Each key of a saved file -> the parameter it holds (or a slice of: transformers 5 writes stacked experts
    back as one tensor per expert), found by the values of its first row, which a random draw makes unique."""
    from safetensors import safe_open

    rows: dict[tuple, str] = {}
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1, param.shape[-1])
        if param.numel() > 1 and flat.std() > 0:
            for row in flat:
                rows.setdefault(tuple(row[:4].tolist()), name)
    found = {}
    with safe_open(str(path), "pt") as saved:
        for key in saved.keys():
            tensor = saved.get_tensor(key)
            if tensor.numel() > 1 and tensor.std() > 0:
                name = rows.get(tuple(tensor.reshape(-1, tensor.shape[-1])[0, :4].tolist()))
                if name is not None:
                    found[key] = name
    return found


def _check_against_library(tmp_path, build, recipe_name: str, expect_all: bool = True) -> int:
    """Build the model as its library does, save it as users do, and hold every row fancli expects against the
    draw the library made for that tensor; constants against the values the library left. Returns how many
    random tensors were checked."""
    model, draws = library_draws(build)
    model.save_pretrained(tmp_path)
    rows = _inspect(tmp_path)
    held = _saved_keys_by_values(model, tmp_path / "model.safetensors")
    from safetensors import safe_open

    checked = 0
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        for key in saved.keys():
            row = rows[key]
            assert row["recipe"] == recipe_name, (key, row.get("recipe"))
            values = saved.get_tensor(key)
            if key in held:
                assert _same(row, draws[held[key]]), (key, _expected(row), draws[held[key]])
                checked += 1
            elif values.numel() > 1 and float(values.double().std()) == 0:  # a constant the library left
                assert _expected(row) == ("constant", float(values.flatten()[0])), (key, row)
            elif expect_all:
                raise AssertionError(f"{key}: neither a drawn parameter nor a constant")
    return checked


@pytest.fixture(scope="module")
def transformers():
    found = pytest.importorskip("transformers")
    found.logging.set_verbosity_error()
    return found


def test_gpt2_scales_its_residual_projections(tmp_path, transformers):
    config = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=96, n_positions=32)
    checked = _check_against_library(tmp_path, lambda: transformers.GPT2LMHeadModel(config), "gpt2")
    assert checked == 2 + 3 * 4  # wte, wpe, and c_attn, c_proj ×2, c_fc in each block
    rows = _inspect(tmp_path)
    assert rows["transformer.h.2.mlp.c_proj.weight"]["std"] == 0.02 / math.sqrt(6)


def test_llama_and_bert_follow_the_base_rule(tmp_path, transformers):
    llama = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                     tie_word_embeddings=False, initializer_range=0.03)
    assert _check_against_library(tmp_path / "llama", lambda: transformers.LlamaForCausalLM(llama),
                                  "transformers") == 2 + 2 * 7
    bert = transformers.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   vocab_size=96)
    assert _check_against_library(tmp_path / "bert", lambda: transformers.BertModel(bert), "transformers") > 10


def test_t5_factors(tmp_path, transformers):
    config = transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=96,
                                   initializer_factor=0.5)
    assert _check_against_library(tmp_path, lambda: transformers.T5ForConditionalGeneration(config), "t5") > 20


def test_vit_tokens_and_patch_embedding(tmp_path, transformers):
    config = transformers.ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=32, patch_size=8)
    _check_against_library(tmp_path, lambda: transformers.ViTModel(config), "vit")
    rows = _inspect(tmp_path)
    assert rows["embeddings.cls_token"]["std"] == rows["embeddings.patch_embeddings.projection.weight"]["std"] == 0.02


def test_modernbert_cuts_without_rescaling(tmp_path, transformers):
    config = transformers.ModernBertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                           num_attention_heads=4, vocab_size=96, pad_token_id=0, bos_token_id=1,
                                           eos_token_id=2, cls_token_id=1, sep_token_id=2)
    # transformers draws trunc_normal_(std=σ, a=-2σ, b=2σ): fancli's `sampling_std` and `cut` are the σ and k
    # it passes, and the values' std σ times a unit normal's cut at ±2
    assert _check_against_library(tmp_path, lambda: transformers.ModernBertModel(config), "modernbert") >= 8
    rows = _inspect(tmp_path)
    for key in ("layers.1.attn.Wo.weight", "layers.1.mlp.Wi.weight"):
        assert rows[key]["std"] == rows[key]["sampling_std"] * cut_std(2.0), key


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_moe_experts_and_routers(tmp_path, transformers, family):
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=96)
    build = {
        "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
            intermediate_size=128, num_local_experts=4, **common)),
        "qwen3_moe": lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            intermediate_size=128, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, **common)),
        "gpt_oss": lambda: transformers.GptOssForCausalLM(transformers.GptOssConfig(
            intermediate_size=64, num_local_experts=4, head_dim=16, **common)),
    }[family]
    recipe_name = "gpt_oss" if family == "gpt_oss" else "transformers"
    assert _check_against_library(tmp_path, build, recipe_name) >= 2 * 3


# Libraries that do not install beside this torch: their init code, copied -----------------------------------


def _resnet_like(zero_init_residual: bool) -> nn.Module:
    """Two blocks shaped as torchvision's BasicBlock, with the init loop of torchvision 0.29.1
    `models/resnet.py` `ResNet.__init__` (lines 208-223) copied as it is written there."""

    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    model = nn.Module()
    model.conv1, model.bn1 = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(16)
    model.layer1 = nn.Sequential(Block(16), Block(16))
    model.fc = nn.Linear(16, 10)
    for m in model.modules():  # torchvision's loop
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Block) and m.bn2.weight is not None:
                nn.init.constant_(m.bn2.weight, 0)
    return model


def test_torchvision_resnet(tmp_path):
    model, draws = library_draws(lambda: _resnet_like(False))
    torch.save(model.state_dict(), tmp_path / "resnet.pt")
    rows = _inspect(tmp_path / "resnet.pt", "--recipe", "torchvision_resnet")
    for name, draw in draws.items():
        assert _same(rows[name], draw), name  # bn weights 1, biases 0, convs fan_out
    fc = rows["fc.weight"]  # the head keeps torch's default: U(±1/√fan_in)
    assert fc["distribution"] == "uniform" and fc["bound"] == pytest.approx(1 / math.sqrt(16), rel=1e-15)


def _copied_torchtitan(dim: int = 32, layers: int = 3, vocab: int = 50) -> nn.Module:
    """torchtitan's Llama 3 with `depth_init=True`: the init of `models/llama3/model/model.py` (TransformerBlock
    weight_init_std, Attention/FeedForward/Transformer.init_weights) copied, on modules of its names."""
    trunc_normal_ = nn.init.trunc_normal_
    model = nn.Module()
    model.tok_embeddings = nn.Embedding(vocab, dim)
    model.layers = nn.ModuleDict()
    for layer_id in range(layers):
        block = nn.Module()
        block.attention = nn.Module()
        for name in ("wq", "wk", "wv", "wo"):
            setattr(block.attention, name, nn.Linear(dim, dim, bias=False))
        block.feed_forward = nn.Module()
        block.feed_forward.w1 = nn.Linear(dim, 2 * dim, bias=False)
        block.feed_forward.w2 = nn.Linear(2 * dim, dim, bias=False)
        block.feed_forward.w3 = nn.Linear(dim, 2 * dim, bias=False)
        block.attention_norm, block.ffn_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        model.layers[str(layer_id)] = block
        weight_init_std = 0.02 / (2 * (layer_id + 1)) ** 0.5
        for linear in (block.attention.wq, block.attention.wk, block.attention.wv):
            trunc_normal_(linear.weight, mean=0.0, std=0.02)
        trunc_normal_(block.attention.wo.weight, mean=0.0, std=weight_init_std)
        trunc_normal_(block.feed_forward.w1.weight, mean=0.0, std=0.02)
        for linear in (block.feed_forward.w2, block.feed_forward.w3):
            trunc_normal_(linear.weight, mean=0.0, std=weight_init_std)
    model.norm = nn.RMSNorm(dim)
    model.output = nn.Linear(dim, vocab, bias=False)
    nn.init.normal_(model.tok_embeddings.weight)
    final_out_std = dim ** -0.5
    cutoff_factor = 3
    trunc_normal_(model.output.weight, mean=0.0, std=final_out_std, a=-cutoff_factor * final_out_std,
                  b=cutoff_factor * final_out_std)
    return model


def test_torchtitan_depth_scaled_and_cut_output(tmp_path):
    torch.manual_seed(0)
    with_trunc = {}
    original = nn.init.trunc_normal_

    def record(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
        with_trunc[tensor.data_ptr()] = (std, a, b)
        return original(tensor, mean, std, a, b)

    nn.init.trunc_normal_ = record
    try:
        model = _copied_torchtitan()
    finally:
        nn.init.trunc_normal_ = original
    torch.save(model.state_dict(), tmp_path / "titan.pt")
    rows = _inspect(tmp_path / "titan.pt", "--recipe", "torchtitan")
    for name, param in model.named_parameters():
        row = rows[name]
        if param.data_ptr() in with_trunc:
            std, a, b = with_trunc[param.data_ptr()]
            k = b / std
            realised = std * cut_std(k) if k < 10 else std  # an absolute ±2 at std 0.02 is a cut at ±100σ
            assert row["std"] == pytest.approx(realised, rel=1e-12), name
        elif name == "tok_embeddings.weight":
            assert row["std"] == 1.0
        else:
            assert _expected(row) == ("constant", 1.0), name


def test_cut_std_is_the_libraries_constant_and_the_integral():
    import numpy as np

    assert cut_std(2.0) == 0.87962566103423978  # JAX, Keras, timm divide by this literal
    z = np.linspace(-3, 3, 2_000_001)
    density = np.exp(-z * z / 2)
    assert cut_std(3.0) == pytest.approx(math.sqrt(np.trapezoid(z * z * density, z) / np.trapezoid(density, z)),
                                         rel=1e-9)


def test_recipe_option_and_its_errors(tmp_path):
    torch.save({"fc.weight": torch.randn(4, 3)}, tmp_path / "m.pt")
    unknown = run("inspect", tmp_path / "m.pt", "--recipe", "nope")
    assert unknown.code == 2 and "unknown recipe 'nope'" in unknown.err and "gpt2" in unknown.err
    both = run("inspect", tmp_path / "m.pt", "--recipe", "gpt2", "--scheme", "kaiming_normal")
    assert both.code == 2 and "--recipe" in both.err
    no_config = run("inspect", tmp_path / "m.pt", "--recipe", "gpt2")
    assert no_config.code == 2 and "initializer_range" in no_config.err and "m.pt" in no_config.err


def test_a_scheme_or_mode_overrides_the_sources_recipe(tmp_path, transformers):
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    for option in (("--scheme", "kaiming_normal"), ("--mode", "fan_in")):
        row = _inspect(tmp_path, *option)["transformer.h.0.mlp.c_fc.weight"]
        assert "recipe" not in row and row["scheme"] == "kaiming_normal"


def test_every_recipe_names_the_function_it_reproduces():
    for name, found in RECIPES.items():
        assert recipe(name) is found and found.reproduces and found.rule.__doc__


def _copied_mobilenet_loop(model: nn.Module, linear: str) -> nn.Module:
    """The init loops of torchvision 0.29.1: `models/mobilenetv2.py` (line 151; MobileNetV3 and VGG's are the
    same) with linear="normal", `models/efficientnet.py` (line 320) with linear="efficientnet"."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
            nn.init.zeros_(m.bias)
    return model


def _small_convnet() -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1))
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(16, 10))
    return model


@pytest.mark.parametrize(("name", "linear"), [("torchvision_mobilenet", "normal"),
                                              ("torchvision_efficientnet", "efficientnet")])
def test_torchvision_mobilenet_and_efficientnet(tmp_path, name, linear):
    model, draws = library_draws(lambda: _copied_mobilenet_loop(_small_convnet(), linear))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rows = _inspect(tmp_path / "m.pt", "--recipe", name)
    for key, draw in draws.items():
        assert _same(rows[key], draw), key


def _copied_timm_vit(dim: int = 32, depth: int = 2, classes: int = 10) -> nn.Module:
    """timm 1.0.31 `VisionTransformer.init_weights('')` and `init_weights_vit_timm`, copied onto modules of
    timm's names (timm's trunc_normal_ is torch's: std .02 with its absolute ±2 cut)."""
    trunc_normal_ = nn.init.trunc_normal_
    model = nn.Module()
    model.patch_embed = nn.Module()
    model.patch_embed.proj = nn.Conv2d(3, dim, 8, 8)
    model.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    model.pos_embed = nn.Parameter(torch.zeros(1, 17, dim))
    model.blocks = nn.Sequential()
    for _ in range(depth):
        block = nn.Module()
        block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        block.attn = nn.Module()
        block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        block.mlp = nn.Module()
        block.mlp.fc1, block.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        model.blocks.append(block)
    model.norm = nn.LayerNorm(dim)
    model.head = nn.Linear(dim, classes)
    trunc_normal_(model.pos_embed, std=.02)
    nn.init.normal_(model.cls_token, std=1e-6)
    for module in model.modules():  # named_apply(init_weights_vit_timm)
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def test_timm_vit(tmp_path):
    torch.manual_seed(0)
    model, draws = library_draws(_copied_timm_vit)
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    rows = _inspect(tmp_path / "vit.pt", "--recipe", "timm_vit")
    for key, draw in draws.items():
        if draw[0] == "truncated":  # an absolute ±2 at std .02: a cut at ±100σ, N(0, .02²) in every float
            assert draw[2] > 50 and rows[key]["std"] == draw[1] and rows[key]["distribution"] == "normal", key
        else:
            assert _same(rows[key], draw), key
    assert rows["patch_embed.proj.weight"]["distribution"] == "uniform"  # timm leaves the conv to torch


def _copied_olmo_core(dim: int = 32, layers: int = 2, vocab: int = 40) -> nn.Module:
    """OLMo-core `nn/transformer/init.py` `InitMethod.normal`: `init_linear` (trunc_normal_ at ±3σ) on every
    linear and the embedding, std 0.02; norms reset (1/0)."""
    def init_linear(m, std=0.02):
        nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)

    model = nn.Module()
    model.embeddings = nn.Embedding(vocab, dim)
    model.blocks = nn.ModuleList()
    for _ in range(layers):
        block = nn.Module()
        block.attention = nn.Module()
        block.attention.w_q, block.attention.w_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        block.attention_norm = nn.LayerNorm(dim)
        model.blocks.append(block)
    model.lm_head = nn.Module()
    model.lm_head.w_out = nn.Linear(dim, vocab, bias=False)
    for m in (model.embeddings, *(b.attention.w_q for b in model.blocks), *(b.attention.w_out for b in model.blocks),
              model.lm_head.w_out):
        init_linear(m)
    return model


def test_olmo_core_cuts_at_three_sigma(tmp_path):
    model, draws = library_draws(_copied_olmo_core)
    torch.save(model.state_dict(), tmp_path / "olmo.pt")
    rows = _inspect(tmp_path / "olmo.pt", "--recipe", "olmo_core")
    for key, draw in draws.items():
        if draw[0] == "truncated":
            assert rows[key]["sampling_std"] == draw[1] and rows[key]["std"] == draw[1] * cut_std(draw[2]), key
        else:
            assert _same(rows[key], draw), key


def _copied_megatron(dim: int = 32, layers: int = 3, vocab: int = 40) -> nn.Module:
    """Megatron-core `core/utils.py` `init_method_normal(0.02)` and `scaled_init_method_normal(0.02, num_layers)`
    on the modules of a GPT model (`linear_proj`, `linear_fc2` scaled; biases 0; norms 1/0)."""
    def init_method_normal(sigma):
        return lambda tensor: torch.nn.init.normal_(tensor, mean=0.0, std=sigma)

    def scaled_init_method_normal(sigma, num_layers, multiplier=2.0):
        return lambda tensor: torch.nn.init.normal_(tensor, mean=0.0, std=sigma / math.sqrt(multiplier * num_layers))

    init, output = init_method_normal(0.02), scaled_init_method_normal(0.02, layers)
    model = nn.Module()
    model.embedding = nn.Module()
    model.embedding.word_embeddings = nn.Embedding(vocab, dim)
    init(model.embedding.word_embeddings.weight)
    model.decoder = nn.Module()
    model.decoder.layers = nn.ModuleList()
    for _ in range(layers):
        layer = nn.Module()
        layer.self_attention = nn.Module()
        layer.self_attention.linear_qkv = nn.Linear(dim, 3 * dim)
        layer.self_attention.linear_proj = nn.Linear(dim, dim)
        layer.mlp = nn.Module()
        layer.mlp.linear_fc1, layer.mlp.linear_fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        for linear, method in ((layer.self_attention.linear_qkv, init), (layer.self_attention.linear_proj, output),
                               (layer.mlp.linear_fc1, init), (layer.mlp.linear_fc2, output)):
            method(linear.weight)
            linear.bias.data.zero_()
        model.decoder.layers.append(layer)
    return model


def test_megatron_counts_its_layers_from_the_keys(tmp_path):
    model, draws = library_draws(_copied_megatron)
    torch.save(model.state_dict(), tmp_path / "megatron.pt")
    rows = _inspect(tmp_path / "megatron.pt", "--recipe", "megatron")
    for key, draw in draws.items():
        assert _same(rows[key], draw), key


def test_gpt_neox_small_init_and_wang_init(tmp_path, transformers):
    """GPT-NeoX `megatron/model/init_functions.py` small_init (√(2/(5d))) and wang_init (2/(L·√d)), copied, on the
    tensors of transformers' GPTNeoX layout, whose config gives d and L."""
    config = transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                        num_attention_heads=4, vocab_size=96)
    model = transformers.GPTNeoXForCausalLM(config)
    d, layers = config.hidden_size, config.num_hidden_layers

    def small_init(tensor):
        return torch.nn.init.normal_(tensor, mean=0.0, std=math.sqrt(2 / (5 * d)))

    def wang_init(tensor):
        return torch.nn.init.normal_(tensor, mean=0.0, std=2 / layers / math.sqrt(d))

    def init_as_neox():
        for name, param in model.named_parameters():
            if name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                wang_init(param.data)
            elif param.dim() >= 2:
                small_init(param.data)
        return model

    _, draws = library_draws(init_as_neox)
    model.save_pretrained(tmp_path)
    rows = _inspect(tmp_path, "--recipe", "gpt_neox")
    held = _saved_keys_by_values(model, tmp_path / "model.safetensors")
    assert len(held) >= 3 * 4
    for key, name in held.items():
        assert _same(rows[key], draws[name]), key


# --infer names the recipe's rule -------------------------------------------------------------------------


def _inferred(source, *args) -> dict[str, dict]:
    rows = _inspect(source, "--infer", *args)
    return {key: row["inferred"] for key, row in rows.items() if row.get("inferred")}


def test_infer_names_the_recipes_rule_and_its_scaled_residuals(tmp_path, transformers):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=64)
    model, draws = library_draws(lambda: transformers.GPT2LMHeadModel(config))
    model.save_pretrained(tmp_path)
    found = _inferred(tmp_path)
    assert len(found) == 2 + 2 * 4
    for key, inferred in found.items():
        (_, std), = [draws[key][:2]]  # the std transformers drew this tensor with
        assert inferred["label"] == f"recipe gpt2: N, std {std:.4g}" and inferred["confidence"] != "none", key
    # Weights a training run moved (each row rescaled) are not the recipe's, however close their std
    sd = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("transformer.")}
    sd["transformer.h.0.mlp.c_fc.weight"] *= torch.empty(128, 1).uniform_(0.5, 1.5)
    from safetensors.torch import save_file

    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "config.json").write_text((tmp_path / "config.json").read_text())
    save_file(sd, str(tmp_path / "moved" / "model.safetensors"))
    assert _inferred(tmp_path / "moved")["transformer.h.0.mlp.c_fc.weight"]["label"] == "unknown/trained"


def test_a_padding_row_is_the_librarys_not_training(tmp_path):
    """torch's own nn.Embedding(padding_idx=0) zeroes that row: one row of exact zeros, which also widens the
    spread of row norms beyond what i.i.d. draws give (tested below without the allowance)."""
    from fancli.analysis.inference import GATE, checks
    from fancli.weights.stats import observe

    torch.manual_seed(0)
    embedding = nn.Embedding(1000, 2048, padding_idx=0)
    torch.save({"embed.weight": embedding.weight.detach()}, tmp_path / "e.pt")
    inferred = _inferred(tmp_path / "e.pt")["embed.weight"]
    assert inferred["label"] == "torch default" and "padding row" in inferred["note"], inferred
    import fancli

    layer = fancli.load(str(tmp_path / "e.pt")).layers[0]
    seen = observe(layer.data, structure=True)
    n = seen.count
    assert abs(checks(seen.mean, seen.std, n, seen.structure).row_norm_errors) > GATE  # no allowance: refused
    assert abs(checks(seen.mean, seen.std, n, seen.structure, 2048).row_norm_errors) < GATE


def test_a_constant_tensor_is_named_a_constant(tmp_path):
    head = nn.Linear(64, 10)
    nn.init.zeros_(head.weight)  # torchvision's ViT head, timm's jax mode
    torch.save({"head.weight": head.weight.detach()}, tmp_path / "h.pt")
    assert _inferred(tmp_path / "h.pt")["head.weight"]["label"] == "constant 0"


def test_infer_tells_a_cut_at_three_sigma_by_its_recipe(tmp_path):
    torch.manual_seed(0)
    model = _copied_torchtitan(dim=256, layers=1, vocab=4000)
    torch.save(model.state_dict(), tmp_path / "titan.pt")
    inferred = _inferred(tmp_path / "titan.pt", "--recipe", "torchtitan")
    assert inferred["output.weight"]["label"] == f"recipe torchtitan: N cut ±3σ, std {256 ** -0.5 * cut_std(3):.4g}"
    assert inferred["output.weight"]["confidence"] != "none"


def test_explain_says_what_the_recipe_draws(tmp_path):
    torch.save({"output.weight": torch.randn(50, 32)}, tmp_path / "o.pt")
    result = run("explain", tmp_path / "o.pt", "--layer", "output", "--recipe", "torchtitan")
    assert result.code == 0, result.err
    assert "recipe torchtitan" in result.out and f"= {32 ** -0.5 * cut_std(3):.4g}" in result.out
    assert "cut at ±3σ, not rescaled" in result.out


def test_moe_experts_fold_and_one_scaled_expert_stands_out(tmp_path, transformers):
    """Mixtral as transformers 5 saves it (one 2-D tensor per expert): with --stats its experts fold to one
    group per kind (the recipe expects each alike), and expert 5 of layer 1 scaled ×3 is a group of its own."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    config = transformers.MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                        num_local_experts=8)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "fresh")
    state = load_file(tmp_path / "fresh" / "model.safetensors")
    scaled = "model.layers.1.block_sparse_moe.experts.5.w1.weight"
    state[scaled] = state[scaled] * 3
    (tmp_path / "scaled").mkdir()
    (tmp_path / "scaled" / "config.json").write_text((tmp_path / "fresh" / "config.json").read_text())
    save_file(state, str(tmp_path / "scaled" / "model.safetensors"))

    def expert_groups(folder) -> dict[str, int]:
        result = run("inspect", folder, "--stats", "--format", "json")
        assert result.code == 0, result.err
        return {g["pattern"]: g["count"] for g in json.loads(result.out)["groups"] if ".experts." in g["pattern"]}

    fresh = expert_groups(tmp_path / "fresh")
    assert sorted(fresh.values()) == [16, 16, 16]  # w1, w2, w3: 8 experts × 2 layers each
    found = expert_groups(tmp_path / "scaled")
    assert found[scaled] == 1 and sum(found.values()) == 48
    assert all(count >= 7 for pattern, count in found.items() if pattern != scaled)


# The default is the source's recipe: module classes, TorchScript names, specs, configs -----------------------


def _as_library_class(model: nn.Module, module: str, name: str) -> nn.Module:
    """The model as an instance of a class named as its library names it (`__module__` set to
    "torchvision.models.resnet", name "ResNet"): torchvision and timm do not install beside this torch."""
    model.__class__ = type(name, (nn.Module,), {"__module__": module, "forward": lambda self, x: x * 2})
    return model


def _torchvision_resnet() -> nn.Module:
    return _as_library_class(_resnet_like(False), "torchvision.models.resnet", "ResNet")


def _torchvision_mobilenet() -> nn.Module:
    return _as_library_class(_copied_mobilenet_loop(_small_convnet(), "normal"), "torchvision.models.mobilenetv2",
                             "MobileNetV2")


def _timm_vit() -> nn.Module:
    return _as_library_class(_copied_timm_vit(), "timm.models.vision_transformer", "VisionTransformer")


def _hold_rows_against(rows: dict[str, dict], draws: dict[str, tuple]) -> None:
    for key, draw in draws.items():
        if draw[0] == "truncated":  # timm's absolute ±2 at std .02: N(0, .02²)
            assert rows[key]["std"] == draw[1] and rows[key]["distribution"] == "normal", key
        else:
            assert _same(rows[key], draw), key


@pytest.mark.parametrize(("factory", "recipe_name", "where"), [
    ("_torchvision_resnet", "torchvision_resnet", "torchvision.models.resnet.ResNet"),
    ("_torchvision_mobilenet", "torchvision_mobilenet", "torchvision.models.mobilenetv2.MobileNetV2"),
    ("_timm_vit", "timm_vit", "timm.models.vision_transformer.VisionTransformer"),
])
def test_a_factorys_library_class_picks_its_recipe(factory, recipe_name, where):
    """A factory (`pkg.module:callable`, here this test module's) building a model of torchvision's or timm's
    class: its recipe is the default, held against the library's loop copied above."""
    _, draws = library_draws(globals()[factory])
    result = run("inspect", f"test_init_recipes:{factory}", "--format", "json", "--all")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["settings"]["recipe"] == recipe_name
    assert document["settings"]["recipe_from"] == f"module class {where}"
    rows = {row["param"]: row for row in document["layers"]}
    assert all(row["recipe"] == recipe_name for row in rows.values())
    _hold_rows_against(rows, draws)
    markdown = html.unescape(run("inspect", f"test_init_recipes:{factory}", "--format", "markdown").out)
    assert f"recipe {recipe_name} (module class {where}: {recipe(recipe_name).reproduces})" in markdown
    csv_lines = run("inspect", f"test_init_recipes:{factory}", "--format", "csv").out.splitlines()
    column = csv_lines[0].split(",").index("recipe")
    assert {line.split(",")[column] for line in csv_lines[1:]} == {recipe_name}


def test_a_live_module_and_its_subclass_pick_the_librarys_recipe():
    import fancli

    model, draws = library_draws(_torchvision_resnet)
    report = fancli.inspect(model)
    assert report.recipe.name == "torchvision_resnet"
    assert report.recipe_from == "module class torchvision.models.resnet.ResNet"
    for row in report.rows:
        if draws.get(row.layer.param, ("",))[0] == "normal":
            assert row.inits["fan_out"].std == pytest.approx(draws[row.layer.param][1], rel=1e-12)
    model.__class__ = type("MyResNet", (type(model),), {})  # a user's subclass runs ResNet.__init__'s loop
    assert fancli.inspect(model).recipe.name == "torchvision_resnet"
    plain = nn.Sequential(nn.Linear(3, 4))
    assert fancli.inspect(plain).recipe is None  # today's default stands


@pytest.mark.parametrize("trust", [False, True])
def test_torchscript_keeps_the_class_name_that_picks_the_recipe(tmp_path, trust):
    """A traced module's archive names `__torch__.torchvision.models.resnet.ResNet`: read without running
    anything (and, with --trust, through torch.jit.load), it picks the recipe the live module does."""
    model, draws = library_draws(_torchvision_resnet)
    traced = torch.jit.trace(model, torch.ones(1))
    torch.jit.save(traced, tmp_path / "resnet.ts")
    result = run("inspect", tmp_path / "resnet.ts", "--format", "json", "--all", *(["--trust"] if trust else []))
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["settings"]["recipe_from"] == "module class torchvision.models.resnet.ResNet"
    _hold_rows_against({row["param"]: row for row in document["layers"]}, draws)


def _tiny_gpt2() -> nn.Module:
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                                                n_positions=16, initializer_range=0.03))


def test_a_transformers_model_in_memory_or_from_a_factory_reads_its_config(transformers):
    import fancli

    model, draws = library_draws(_tiny_gpt2)
    report = fancli.inspect(model)
    assert report.recipe.name == "gpt2" and "model_type=gpt2" in report.recipe_from
    assert report.recipe_from.startswith("module class transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel")
    checked = 0
    for row in report.rows:
        draw = draws.get(row.layer.param)
        if draw and draw[0] == "normal":
            assert row.inits["fan_in"].std == pytest.approx(draw[1], rel=1e-12), row.layer.param
            checked += 1
    assert checked == 2 + 2 * 4
    rows = _inspect("test_init_recipes:_tiny_gpt2")
    for name, draw in draws.items():
        assert _same(rows[name], draw), name


def test_a_specs_defaults_name_the_recipe(tmp_path):
    _, draws = library_draws(lambda: _resnet_like(False))
    spec = tmp_path / "resnet.yaml"
    spec.write_text("defaults:\n  recipe: torchvision_resnet\nlayers:\n"
                    "  - {name: conv1, type: conv2d, in_channels: 3, out_channels: 16, kernel_size: 7, bias: false}\n"
                    "  - {name: bn1, type: batchnorm2d, num_features: 16}\n"
                    "  - {name: fc, type: linear, in_features: 16, out_features: 10}\n")
    result = run("inspect", spec, "--format", "json", "--all")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["settings"]["recipe_from"] == f"{spec}:2 defaults.recipe"
    rows = {row["param"]: row for row in document["layers"]}
    for key in ("conv1.weight", "bn1.weight"):
        assert _same(rows[key], draws[key]), key
    assert _inspect(spec, "--scheme", "xavier_uniform")["conv1.weight"]["scheme"] == "xavier_uniform"


@pytest.mark.parametrize(("defaults", "expected"), [
    ("  recipe: gpt2\n", "spec.yaml:2: defaults.recipe: recipe gpt2 reads initializer_range or init_std or initializer_factor from a model's config"),
    ("  recipe: resnet\n", "spec.yaml:2: defaults.recipe: unknown recipe 'resnet'"),
    ("  recipe: megatron\n  scheme: xavier_uniform\n", "spec.yaml:3: defaults.scheme: the spec's defaults name recipe "
                                                        "megatron"),
])
def test_a_specs_recipe_errors_name_file_and_line(defaults, expected):
    from fancli.errors import SourceError
    from fancli.loaders.spec import parse_spec

    text = f"defaults:\n{defaults}layers:\n  - {{type: linear, in_features: 3, out_features: 4}}\n"
    with pytest.raises(SourceError) as caught:
        parse_spec(text, "spec.yaml")
    assert str(caught.value).startswith(expected), caught.value
    with pytest.raises(SourceError, match=r"spec.yaml:5: layers\[0\].mode: the spec's defaults name recipe"):
        parse_spec("defaults:\n  recipe: megatron\nlayers:\n  - type: linear\n    mode: fan_in\n"
                   "    in_features: 3\n    out_features: 4\n", "spec.yaml")


def test_a_configs_recipe_flows_into_check_and_its_stats(tmp_path, monkeypatch):
    """fancli.yaml's `recipe:` is the expectation `check` records (scheme = the recipe's name, a constant's
    value) and `check --stats` judges: the copied torchvision loop's weights pass, BN weights included (a
    constant: std 0 and mean 1), and a BN weight filled with another constant is flagged."""
    monkeypatch.chdir(tmp_path)
    model, draws = library_draws(lambda: _resnet_like(False))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "fancli.yaml").write_text("source: m.pt\nrecipe: torchvision_resnet\n")
    assert run("check", "--update").code == 0
    baseline = json.loads((tmp_path / "fancli.lock.json").read_text())["layers"]
    assert baseline["conv1.weight"]["scheme"] == "torchvision_resnet" and baseline["conv1.weight"]["mode"] == "fan_out"
    assert baseline["conv1.weight"]["std"] == pytest.approx(draws["conv1.weight"][1], rel=1e-12)
    assert (baseline["bn1.weight"]["constant"], baseline["bn1.bias"]["constant"]) == (1.0, 0.0)
    assert run("check").code == 0
    stats = run("check", "--stats", "--format", "json")
    assert stats.code == 0, stats.out
    observed = {entry["param"]: entry for entry in json.loads(stats.out)["observed"]}
    assert observed["bn1.weight"]["constant"] == 1.0 and not observed["bn1.weight"]["flagged"]
    assert observed["conv1.weight"]["expected_std"] == pytest.approx(draws["conv1.weight"][1], rel=1e-12)
    state = model.state_dict()
    state["layer1.0.bn2.weight"] = torch.full((16,), 0.5)  # not what ResNet's loop leaves
    torch.save(state, tmp_path / "m.pt")
    flagged = run("check", "--stats", "--format", "json")
    assert flagged.code == 1
    entry = {e["param"]: e for e in json.loads(flagged.out)["observed"]}["layer1.0.bn2.weight"]
    assert entry["flagged"] and entry["observed_mean"] == 0.5
    table = run("check", "--stats").out
    line, = [line for line in table.splitlines() if "layer1.0.bn2.weight" in line]
    assert "mean 0.5" in line and "constant 1" in line and "MISMATCH" in line, table
    (tmp_path / "fancli.yaml").write_text("source: m.pt\nrecipe: torchvision_mobilenet\n")
    changed = run("check", "--format", "json")
    first = json.loads(changed.out)["changes"][0]
    assert changed.code == 1 and (first["field"], first["baseline"], first["current"]) == (
        "scheme", "torchvision_resnet", "torchvision_mobilenet")


@pytest.mark.parametrize(("config", "message"), [
    ("recipe: gpt3\n", "recipe: unknown recipe 'gpt3'"),
    ("recipe: megatron\ndefaults: {scheme: xavier_uniform}\n", "recipe: recipe megatron gives each tensor its "
                                                                 "library's init: defaults may not also name"),
    ("recipe: megatron\noverrides: [{match: fc, mode: fan_in}]\n", "overrides[0] may not also name a scheme or mode"),
])
def test_a_configs_bad_recipe_exits_2_naming_its_line(tmp_path, monkeypatch, config, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fancli.yaml").write_text(config)
    result = run("inspect", tmp_path / "missing.pt")
    assert result.code == 2 and "fancli.yaml:1: " in result.err and message in result.err, result.err


def test_zero_init_residual_is_the_recipes_too(tmp_path, monkeypatch):
    """torchvision's `zero_init_residual=True` zeroes each block's last BN weight (the copied loop above):
    `check --stats` holds those zeros as the recipe's, and other BN weights at 1 still."""
    monkeypatch.chdir(tmp_path)
    model = _resnet_like(True)
    assert float(model.layer1[0].bn2.weight.abs().max()) == 0  # the test's own premise: the loop zeroed it
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "fancli.yaml").write_text("source: m.pt\nrecipe: torchvision_resnet\n")
    assert run("check", "--update").code == 0
    stats = run("check", "--stats", "--format", "json")
    observed = {entry["param"]: entry for entry in json.loads(stats.out)["observed"]}
    assert stats.code == 0 and observed["layer1.0.bn2.weight"]["constant"] == 0.0, stats.out
    assert observed["layer1.0.bn1.weight"]["constant"] == 1.0 and not observed["layer1.0.bn1.weight"]["flagged"]


# Review cases ------------------------------------------------------------------------------------------------


def test_the_base_rules_model_types_define_no_init_of_their_own(transformers):
    """Every model_type the base rule is assumed for has no `_init_weights` in its modeling file in the
    installed transformers, but those whose override fancli checked adds nothing the base rule lacks."""
    import os

    from fancli.analysis.recipes.transformers import BASE_MODEL_TYPES, CHECKED_OVERRIDES

    root = os.path.join(os.path.dirname(transformers.__file__), "models")
    for model_type in sorted(BASE_MODEL_TYPES - CHECKED_OVERRIDES):
        with open(os.path.join(root, model_type, f"modeling_{model_type}.py"), encoding="utf-8") as source:
            assert "def _init_weights" not in source.read(), model_type


def test_init_std_models_and_overrides_fancli_does_not_hold(tmp_path, transformers):
    """BART's _init_weights is not one fancli holds: no recipe is assumed (it exits 0, as before recipes);
    `--recipe transformers` asks for the base rule, whose std is BART's `init_std` (transformers' std where a
    config has no initializer_range). Gemma's RMSNorm weights are 0, as its own _init_weights leaves them."""
    bart = transformers.BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                   decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                   vocab_size=64, max_position_embeddings=32, init_std=0.03)
    transformers.BartModel(bart).save_pretrained(tmp_path / "bart")
    plain = run("inspect", tmp_path / "bart", "--format", "json")
    assert plain.code == 0 and json.loads(plain.out)["settings"]["recipe"] is None, plain.err
    asked = _inspect(tmp_path / "bart", "--recipe", "transformers")
    assert asked["encoder.layers.0.fc1.weight"]["std"] == 0.03
    gemma = transformers.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=64)
    _check_against_library(tmp_path / "gemma", lambda: transformers.GemmaForCausalLM(gemma), "gemma")


def test_rnn_biases_are_biases_to_the_base_rule(tmp_path):
    state = {name: p.detach() for name, p in nn.LSTM(8, 16).named_parameters()}
    torch.save(state, tmp_path / "lstm.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "initializer_range": 0.02}))
    rows = _inspect(tmp_path / "lstm.pt")
    for name in ("bias_ih_l0", "bias_hh_l0"):
        assert (rows[name]["distribution"], rows[name]["constant"]) == ("constant", 0.0), rows[name]


def test_recipe_names_fold_case_and_dashes_and_an_empty_name_is_refused(tmp_path):
    assert recipe("GPT-2") is RECIPES["gpt2"] and recipe("Torchvision-ResNet") is RECIPES["torchvision_resnet"]
    torch.save({"fc.weight": torch.randn(4, 3)}, tmp_path / "m.pt")
    empty = run("inspect", tmp_path / "m.pt", "--recipe", "")
    assert empty.code == 2 and "unknown recipe ''" in empty.err


def test_an_fp8_embeddings_rounding_zeros_are_not_a_padding_row():
    """float8 rounds many small draws to 0: a row's worth of zeros from rounding is no padding row, and the
    row-norm check keeps every row (taking one out would make i.i.d. draws look too even)."""
    import numpy as np

    from fancli.analysis.inference import GATE, checks
    from fancli.weights.moments import Structure

    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(0, 0.02, (1024, 768)).astype(np.float32)).to(torch.float8_e4m3fn).double()
    values = w.numpy()
    squares = (values ** 2).sum(axis=1)
    s = Structure(zeros=int((values == 0).sum()), tiny=2.0 ** -9, a2=float((values ** 2).mean()),
                  a4=float((values ** 4).mean()), a6=float((values ** 6).mean()), a8=float((values ** 8).mean()),
                  rows=1024, row_length=768, row_mean=float(squares.mean()), row_variance=float(squares.var(ddof=1)),
                  overlap=float(((values[:-1] * values[1:]).sum(axis=1) ** 2).mean()))
    assert s.zeros > 768  # the premise: rounding alone leaves more than a row's worth of zeros
    found = checks(float(values.mean()), float(values.std(ddof=1)), values.size, s, padding=768)
    assert abs(found.row_norm_errors) < GATE, found


def _keras_glorot_uniform_limit(shape) -> float:
    """keras 3.15.1 `VarianceScaling.__call__` for GlorotUniform (scale 1, mode fan_avg, uniform), copied."""
    scale = 1.0
    fan_in, fan_out = keras_compute_fans(shape)
    scale /= max(1.0, (fan_in + fan_out) / 2.0)
    return math.sqrt(3.0 * scale)


def _jax_lecun_normal_std(shape) -> tuple[float, float]:
    """jax 0.10.2 `nn/initializers.py` `variance_scaling(1.0, "fan_in", "truncated_normal")` (lecun_normal):
    (the σ its truncated_normal(-2, 2) is scaled by, the values' std), copied (in_axis -2, out_axis -1)."""
    receptive_field_size = math.prod(shape) / shape[-2] / shape[-1]
    fan_in = shape[-2] * receptive_field_size
    variance = 1.0 / max(1.0, fan_in)
    stddev = math.sqrt(variance) / .87962566103423978
    return stddev, math.sqrt(variance)


def _framework_spec(tmp_path, recipe_name: str) -> dict[str, dict]:
    (tmp_path / "spec.yaml").write_text(
        f"name: {recipe_name}-like\ndefaults:\n  recipe: {recipe_name}\n  layout: keras\nlayers:\n"
        "  - {name: conv, shape: [5, 5, 3, 6]}\n  - {name: dense, shape: [400, 120]}\n"
        "  - {name: emb, type: embedding, num_embeddings: 50, embedding_dim: 16}\n")
    return _inspect(tmp_path / "spec.yaml")


def test_keras_defaults(tmp_path):
    rows = _framework_spec(tmp_path, "keras")
    for key, shape in (("conv.weight", (5, 5, 3, 6)), ("dense.weight", (400, 120))):
        assert rows[key]["bound"] == pytest.approx(_keras_glorot_uniform_limit(shape), rel=1e-15), key
    assert rows["emb.weight"]["bound"] == 0.05  # Embedding's "uniform": RandomUniform(-0.05, 0.05)


def test_flax_defaults(tmp_path):
    rows = _framework_spec(tmp_path, "flax")
    for key, shape in (("conv.weight", (5, 5, 3, 6)), ("dense.weight", (400, 120))):
        sampling, std = _jax_lecun_normal_std(shape)
        assert rows[key]["sampling_std"] == pytest.approx(sampling, rel=1e-15), key
        assert rows[key]["std"] == pytest.approx(std, rel=1e-15) and rows[key]["distribution"] == "truncated_normal"
    assert rows["emb.weight"]["std"] == pytest.approx(16 ** -0.5)  # Embed: fan_in = features, uncut normal


def _torchtitan_model() -> nn.Module:
    torch.manual_seed(0)
    return _as_library_class(_copied_torchtitan(), "torchtitan.models.llama3.model.model", "Transformer")


def test_a_torchtitan_model_class_picks_its_recipe():
    """torchtitan's Transformer (its init_weights copied above) built by a factory: no option names the recipe."""
    model = _torchtitan_model()
    result = run("inspect", "test_init_recipes:_torchtitan_model", "--format", "json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["settings"]["recipe"] == "torchtitan"
    rows = {row["param"]: row for row in document["layers"]}
    assert rows["layers.2.attention.wo.weight"]["std"] == pytest.approx(0.02 / math.sqrt(6), rel=1e-15)
    assert rows["tok_embeddings.weight"]["std"] == 1.0 and model is not None
