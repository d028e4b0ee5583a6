"""transformers' `_init_weights`: the base rule of `PreTrainedModel` and the models that override it.

Read from transformers 5.25.0 (`modeling_utils.py` `PreTrainedModel._init_weights`, and each model's
`<Model>PreTrainedModel._init_weights`; 4.57 draws the same numbers). A model's override runs after the
base rule (parents after children), so a rule below falls back to `base` for what it does not name.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..schemes import InitValues
from .draws import RecipeArgs, constant, cut_normal, norm_or_bias, normal, uniform

#: The modules PreTrainedModel._init_weights draws N(0, std²): Linear (and GPT-2's Conv1D), Conv1d/2d/3d,
#: ConvTranspose1d/2d, Embedding.
_DRAWN = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "embedding"})
_RECURRENT = frozenset({"lstm"})  # nn.LSTM: xavier_uniform weights, biases 0 (from transformers 5)
#: Stacked experts (transformers 5: `mlp.experts.gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]; gpt-oss
#: [E, H, 2I] and [E, I, H]): every MoE model's override draws them N(0, std²), whatever their layout.
_EXPERT_TENSORS = frozenset({"gate_up_proj", "down_proj"})


def std_of(facts) -> float | None:
    """The std transformers draws with: `initializer_range` (0 → 0.02), else `init_std`, else
    `initializer_factor`, as PreTrainedModel._init_weights picks it."""
    if "initializer_range" in facts:
        return facts["initializer_range"] or 0.02
    return facts.get("init_std") or facts.get("initializer_factor")


def base(args: RecipeArgs) -> InitValues | None:
    """PreTrainedModel._init_weights: the modules above ~ N(0, std²) with their biases 0; an Embedding's
    padding_idx row 0 (one row: within the standard error of the drawn rows' std); LSTM weights
    xavier_uniform, biases 0; every LayerNorm/RMSNorm/BatchNorm/GroupNorm weight 1, bias 0; stacked experts
    N(0, std²) and their biases 0. MultiheadAttention and modules it does not know keep torch's init."""
    std = std_of(args.facts)
    kind = args.layer.kind
    why = f"transformers _init_weights: N(0, initializer_range²), r = {std:g}"
    if kind in _DRAWN and args.is_weight:
        return normal(std, why)
    if args.module == "experts" and len(args.layer.shape) >= 3 and args.leaf in _EXPERT_TENSORS:
        return normal(std, f"{why}; stacked experts, each drawn alike")
    if args.module == "experts" and args.leaf.endswith("_bias"):
        return constant(0.0, "transformers _init_weights: the experts' biases")
    if kind in _RECURRENT and len(args.layer.shape) >= 2 and args.fan_in and args.fan_out:
        return uniform(math.sqrt(6.0 / (args.fan_in + args.fan_out)), "transformers _init_weights: LSTM weights "
                       "xavier_uniform")
    if kind in _DRAWN or kind in _RECURRENT or kind == "norm":
        return norm_or_bias(args, "transformers _init_weights")
    return None


def gpt2(args: RecipeArgs) -> InitValues | None:
    """GPT2PreTrainedModel._init_weights: the base rule, then each GPT2Attention's and GPT2MLP's `c_proj`
    drawn with r/√(2·n_layer) (the GPT-2 paper's scaling of residual layers by 1/√N)."""
    if args.is_weight and args.module == "c_proj" and args.parent in ("attn", "mlp", "crossattention"):
        r, layers = std_of(args.facts), args.facts["n_layer"]
        return normal(r / math.sqrt(2 * layers), f"GPT-2 _init_weights: a residual projection, "
                                                 f"N(0, (r/√(2·n_layer))²) = N(0, ({r:g}/√{2 * layers:g})²)")
    return base(args)


def t5(args: RecipeArgs) -> InitValues | None:
    """T5PreTrainedModel._init_weights (Mesh TensorFlow's): with f = initializer_factor, attention q
    f·(d_model·d_kv)^-½, k and v f·d_model^-½, o f·(num_heads·d_kv)^-½, the relative attention bias
    f·d_model^-½; the MLP's wi (wi_0, wi_1) f·d_model^-½ and wo f·d_ff^-½; the shared embedding and an untied
    lm_head f·1; T5LayerNorm's weight f."""
    facts = args.facts
    f = facts.get("initializer_factor", 1.0)  # T5Config's default
    if "initializer_factor" not in facts:
        args = replace(args, facts={**facts, "initializer_factor": f})  # what the base step then reads
    d_model, d_kv = facts["d_model"], facts["d_kv"]
    name = args.module
    stds = {"q": (d_model * d_kv) ** -0.5, "k": d_model ** -0.5, "v": d_model ** -0.5,
            "o": (facts["num_heads"] * d_kv) ** -0.5, "relative_attention_bias": d_model ** -0.5,
            "wi": d_model ** -0.5, "wi_0": d_model ** -0.5, "wi_1": d_model ** -0.5, "wo": facts["d_ff"] ** -0.5,
            "shared": 1.0, "embed_tokens": 1.0, "lm_head": 1.0}
    if args.is_weight and name in stds:
        return normal(f * stds[name], f"T5 _init_weights: {name} N(0, {f * stds[name]:.4g}²) (initializer_factor "
                                      f"{f:g})")
    if args.layer.kind == "norm" and args.leaf == "weight":
        return constant(f * 1.0, "T5 _init_weights: T5LayerNorm's weight = initializer_factor")
    return base(args)


def vit(args: RecipeArgs) -> InitValues | None:
    """ViTPreTrainedModel._init_weights: the base rule (the patch embedding's Conv2d too), then the position
    embeddings and class token `trunc_normal_(std=r)`, whose absolute ±2 cut is no cut at std 0.02 (it draws
    N(0, r²)); a mask token 0."""
    if args.leaf in ("position_embeddings", "cls_token"):
        r = std_of(args.facts)
        return normal(r, f"ViT _init_weights: trunc_normal_(std={r:g}), cut at ±2 (absolute): N(0, r²)")
    if args.leaf == "mask_token":
        return constant(0.0, "ViT _init_weights: the mask token")
    return base(args)


_MODERNBERT_ROLE = {("attn", "Wqkv"): "in", ("mlp", "Wi"): "in", ("attn", "Wo"): "out", ("mlp", "Wo"): "out",
                    ("head", "dense"): "out"}


def modernbert(args: RecipeArgs) -> InitValues | None:
    """ModernBertPreTrainedModel._init_weights: `trunc_normal_(std=σ, a=-c·σ, b=c·σ)`, c =
    initializer_cutoff_factor (2 by default), not rescaled; σ = r for the token embeddings and the in
    projections (Wqkv, Wi), r/√(2·num_hidden_layers) for the out projections (attn.Wo, mlp.Wo, head.dense,
    the MLM decoder), hidden_size^-½ for a classifier; biases 0, norms 1/0."""
    facts = args.facts
    r, cut = std_of(facts), facts.get("initializer_cutoff_factor", 2.0)
    role = _MODERNBERT_ROLE.get((args.parent, args.module))
    if args.module == "tok_embeddings":
        role = "embedding"
    elif args.module == "decoder":
        role = "out"
    elif args.module == "classifier":
        role = "final_out"
    if role is None or not args.is_weight:
        return base(args)
    sigma = {"in": r, "embedding": r, "out": r / math.sqrt(2.0 * facts["n_layer"]),
             "final_out": facts["hidden_size"] ** -0.5}[role]
    return cut_normal(sigma, cut, f"ModernBERT _init_weights: {role} std {sigma:.4g}")


def gpt_oss(args: RecipeArgs) -> InitValues | None:
    """GptOssPreTrainedModel._init_weights: the base rule (stacked experts N(0, r²), their biases 0), the
    router's weight and bias both N(0, r²), and each attention's sinks N(0, r²)."""
    r = std_of(args.facts)
    if args.module == "router" and args.leaf == "bias" or args.leaf == "sinks":
        return normal(r, f"gpt-oss _init_weights: {args.leaf} N(0, r²), r = {r:g}")
    return base(args)


def gemma(args: RecipeArgs) -> InitValues | None:
    """GemmaPreTrainedModel._init_weights (Gemma, Gemma 2, Gemma 3's text model): the base rule, then every
    RMSNorm's weight 0, as its norm computes x·(1 + weight)."""
    if args.layer.kind == "norm" and args.leaf == "weight":
        return constant(0.0, "Gemma _init_weights: an RMSNorm's weight (its norm scales by 1 + weight)")
    return base(args)


#: The `model_type`s whose `_init_weights` is the base rule: text models of transformers 5.25 whose modeling
#: file defines no `_init_weights` of its own (tests/test_init_recipes.py re-reads the installed files), and
#: those whose override only adds what `base` already holds (BERT: its LM head's bias 0; Mixtral, Qwen3-MoE:
#: stacked experts and routers N(0, r²)). A model_type in neither table has an init fancli does not hold: no
#: recipe is assumed for it (the scheme stands; `--recipe transformers` asks for the base rule).
BASE_MODEL_TYPES = frozenset({
    "apertus", "arcee", "biogpt", "bitnet", "bloom", "cohere", "cohere2", "cwm", "ernie4_5", "exaone4", "glm",
    "glm4", "gpt_neox", "granite", "helium", "hunyuan_v1_dense", "jais2", "llama", "ministral", "ministral3",
    "mistral", "mpt", "olmo", "olmo2", "opt", "persimmon", "phi", "phi3", "qwen2", "qwen3", "seed_oss", "smollm3",
    "stablelm", "starcoder2", "bert", "mixtral", "qwen3_moe"})
#: Base-rule model_types whose own `_init_weights` fancli checked adds nothing `base` does not hold.
CHECKED_OVERRIDES = frozenset({"bert", "mixtral", "qwen3_moe"})
#: `model_type` -> the recipe its `_init_weights` follows.
MODEL_TYPES = {**{model_type: "transformers" for model_type in BASE_MODEL_TYPES}, "gpt2": "gpt2", "t5": "t5",
               "mt5": "t5", "umt5": "t5", "vit": "vit", "modernbert": "modernbert", "gpt_oss": "gpt_oss",
               "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma"}
