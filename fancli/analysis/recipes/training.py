"""Pretraining codebases' inits, which name tensors by their own conventions: torchtitan's Llama 3
(torchtitan `models/llama3/model/model.py`, `depth_init=True`, its default), OLMo-core's default
(`nn/transformer/init.py`, `InitMethod.normal`), Megatron-core (`core/utils.py` `init_method_normal`,
`scaled_init_method_normal`) and GPT-NeoX's shipped configs (`small_init`, `wang_init`)."""

from __future__ import annotations

import math

from ..schemes import InitValues
from .draws import RecipeArgs, constant, cut_normal, norm_or_bias, normal

#: (library, model class) -> the recipe its init follows (`module_library` names the library by module prefix).
CLASSES = {("torchtitan", "Transformer"): "torchtitan"}
_BASE_STD = 0.02  # init_std / init_method_std: every codebase's default, which a checkpoint does not record


def torchtitan(args: RecipeArgs) -> InitValues | None:
    """Transformer.init_weights: tok_embeddings N(0, 1); wq, wk, wv and w1 trunc_normal_(std=0.02) (absolute ±2:
    no cut); wo, w2 and w3 0.02/√(2(i+1)) for block i; the output layer N(0, 1/dim) cut at ±3σ, not
    rescaled; RMSNorm weights 1."""
    name = args.module
    if args.is_weight and name == "tok_embeddings":
        return normal(1.0, "torchtitan: tok_embeddings N(0, 1)")
    if args.is_weight and name in ("wq", "wk", "wv", "wqkv", "w1"):
        return normal(_BASE_STD, f"torchtitan: {name} trunc_normal_(std=0.02), cut at ±2 (absolute): N(0, 0.02²)")
    if args.is_weight and name in ("wo", "w2", "w3") and args.block_index is not None:
        i = args.block_index
        return normal(_BASE_STD / math.sqrt(2 * (i + 1)),
                      f"torchtitan depth_init: {name} of block {i}, 0.02/√(2·{i + 1})")
    if args.is_weight and name == "output":
        dim = args.layer.shape[-1]
        return cut_normal(dim ** -0.5, 3.0, f"torchtitan: output N(0, 1/dim), dim {dim}")
    if args.layer.kind == "norm":
        return norm_or_bias(args, "torchtitan")
    return None


def olmo_core(args: RecipeArgs) -> InitValues | None:
    """InitMethod.normal (the default): every Linear and embedding trunc_normal_(std=0.02, a=-3σ, b=3σ), not
    rescaled; biases 0; norms 1/0."""
    if args.is_weight and args.layer.kind in ("linear", "embedding", "unknown"):
        return cut_normal(_BASE_STD, 3.0, "OLMo-core InitMethod.normal: std 0.02")
    return norm_or_bias(args, "OLMo-core")


def megatron(args: RecipeArgs) -> InitValues | None:
    """Megatron-core: every weight N(0, σ²) with σ = init_method_std (0.02), the residual outputs
    (linear_proj, linear_fc2) σ/√(2·num_layers); biases 0; norms 1/0."""
    name = args.module
    if args.is_weight and name in ("linear_proj", "linear_fc2"):
        layers = args.facts["n_layer"]
        return normal(_BASE_STD / math.sqrt(2 * layers),
                      f"Megatron scaled_init_method_normal: 0.02/√(2·{layers:g}) (num_layers)")
    if args.is_weight and args.layer.kind in ("linear", "embedding", "unknown"):
        return normal(_BASE_STD, "Megatron init_method_normal: N(0, 0.02²)")
    return norm_or_bias(args, "Megatron")


def gpt_neox(args: RecipeArgs) -> InitValues | None:
    """GPT-NeoX's shipped configs: `small_init` √(2/(5d)) for every weight but the residual outputs, which
    take `wang_init` 2/(L·√d) (attention.dense, dense_4h_to_h); d = hidden_size, L = num_layers."""
    d, layers = args.facts["hidden_size"], args.facts["n_layer"]
    if args.is_weight and args.module in ("dense", "dense_4h_to_h") and args.parent in ("attention", "mlp"):
        return normal(2.0 / layers / math.sqrt(d), f"GPT-NeoX wang_init: 2/(L·√d) = 2/({layers:g}·√{d:g})")
    if args.is_weight and args.layer.kind in ("linear", "embedding"):
        return normal(math.sqrt(2.0 / (5.0 * d)), f"GPT-NeoX small_init: √(2/(5d)), d = {d:g}")
    if args.is_bias:
        return constant(0.0, "GPT-NeoX: biases")
    return norm_or_bias(args, "GPT-NeoX")
