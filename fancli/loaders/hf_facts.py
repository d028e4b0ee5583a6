"""What a transformers `config.json` says of the layers beyond their heads: the MLP's activation, tied
embeddings, and the library's own init (`initializer_range`).

Only what the config states is taken, and only where the key names show where it applies: the
activation follows an MLP's up (or, in a gated MLP, its gate) projection, never q/k/v or an output
projection; transformers' `_init_weights` draws every Linear and Embedding weight from N(0, r²).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from ..layer import BuiltBy, Layer

#: transformers' activation names -> fancli's (`ACT2FN`): the tanh approximations are gelu_tanh.
ACTIVATION_NAMES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                    "swish": "silu", "gelu_python": "gelu", "relu": "relu", "silu": "silu", "gelu": "gelu",
                    "tanh": "tanh", "sigmoid": "sigmoid", "relu6": "relu6", "mish": "mish", "elu": "elu",
                    "leaky_relu": "leaky_relu", "selu": "selu", "linear": "linear"}
_ACT_KEYS = ("hidden_act", "activation_function", "hidden_activation", "feed_forward_proj")
#: A gated MLP's gate (the activation follows it; its up projection is multiplied by the result).
_GATE = re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe\.experts\.\d+|experts\.\d+)\.(gate_proj|w1|wi_0)$")
#: An ungated MLP's first projection (Llama-style up_proj only counts when no gate sits beside it).
_UP = re.compile(r"(^|\.)((mlp|feed_forward|ffn|experts\.\d+)\.(up_proj|fc1|c_fc|dense_h_to_4h|wi|w_in)"
                 r"|intermediate\.dense)$")
_GATE_OF_UP = {"up_proj": "gate_proj", "w3": "w1", "wi_1": "wi_0"}
_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|shared|embed_in|tok_embeddings)$")
_LIBRARY_KINDS = ("linear", "embedding")
#: transformers 5's MoE models whose stacked experts are [E, in, out], used as x @ W[e] (`is_transposed`);
#: every other model's `experts` are [E, out, in], used as F.linear(x, W[e]).
_EXPERTS_IN_OUT = frozenset({"gpt_oss", "llama4", "llama4_text", "aria", "aria_text", "openai_privacy_filter"})


#: A multimodal config's sub-configs for the towers beside its text model, and the words of a module path
#: that place a module in that tower (transformers names them `visual`, `vision_tower`, `vision_model`,
#: `audio_tower`…); every other module is the text model's (`text_config`, or the top level).
TOWERS = {"vision_config": ("vision", "visual"), "audio_config": ("audio",)}


def section_of(module: str, config: dict) -> str | None:
    """The sub-config that owns a module: a tower's, the text model's, or None for the top level."""
    for section, words in TOWERS.items():
        if isinstance(config.get(section), dict) and any(word in part for part in module.split(".") for word in words):
            return section
    return "text_config" if isinstance(config.get("text_config"), dict) else None


def gate_of_up(module: str) -> str | None:
    """The gate beside an up projection of a gated MLP (`gate_proj` beside `up_proj`), by the module's last name:
    whether it is there decides which of the two the activation follows."""
    return _GATE_OF_UP.get(module.rpartition(".")[2])


def embedding_name(module: str) -> bool:
    """Whether a module's name is a transformers model's input embedding (`embed_tokens`, `wte`, `shared`…)."""
    return bool(_EMBEDDING.search(module))


def _activation(config: dict) -> tuple[str, str] | None:
    """(the config's name, fancli's) for the MLP activation the config states, or None."""
    for key in _ACT_KEYS:
        value = config.get(key)
        if isinstance(value, str):
            name = ACTIVATION_NAMES.get(value.removeprefix("gated-"))
            return (f"{key}={value}", name) if name else None
    return None


def _range(config: dict) -> float | None:
    value = config.get("initializer_range")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1e3:
        return float(value)
    return None


#: Numbers of a config.json that init recipes read (`analysis.recipes`), under transformers' names.
RECIPE_FACTS = ("initializer_range", "n_layer", "num_hidden_layers", "initializer_factor", "init_std",
                "d_model", "d_kv", "num_heads", "d_ff", "hidden_size", "n_embd", "initializer_cutoff_factor")


def built_by(config: dict[str, Any]) -> BuiltBy:
    """transformers built the model (a config.json is its own), with the config numbers recipes read."""
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": config.get("model_type")}
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) and model_type.isprintable() else None
    facts = {}
    for key in RECIPE_FACTS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            facts[key] = float(value)
    if "n_layer" not in facts and "num_hidden_layers" in facts:
        facts["n_layer"] = facts["num_hidden_layers"]
    if "hidden_size" not in facts and "n_embd" in facts:
        facts["hidden_size"] = facts["n_embd"]
    if "initializer_cutoff_factor" in config and config["initializer_cutoff_factor"] is None:
        facts["initializer_cutoff_factor"] = 3.0  # ModernBERT's _init_weights: None means 3
    return BuiltBy("transformers", model_type, tuple(facts.items()),
                   f"config.json model_type={model_type}" if model_type else "config.json")


def _expert_layout(layer: Layer, model_type: Any) -> Layer:
    """Stacked experts whose own tensors do not tell their layout: the one transformers 5 gives the model type."""
    if not isinstance(model_type, str) or not model_type.isprintable():
        return layer
    transposed = model_type in _EXPERTS_IN_OUT
    stored, used = ("[experts, in, out]", "x @ W[e]") if transposed else ("[experts, out, in]", "F.linear(x, W[e])")
    note = (f"stored {stored}, each expert used as {used}: transformers 5's layout for model_type={model_type} "
            "(config.json)")
    return replace(layer, layout="in_out" if transposed else "torch", unknown_fans=(), notes=(*layer.notes, note))


def apply_library_facts(layers: tuple[Layer, ...], config: dict[str, Any],
                        modules: set[str] | None = None) -> tuple[tuple[Layer, ...], list[str]]:
    """The layers with the config's activation, tied embedding and library init applied, each from the
    sub-config that owns its module (a vision tower's MLP is not the text model's); and what was taken.
    `modules`: every layer's name, where `layers` are not all of them (a LayerTable's templates)."""
    facts: dict[str | None, tuple] = {}
    modules = {layer.name for layer in layers} if modules is None else modules
    taken: dict[str, None] = {}
    out = []
    for layer in layers:
        section = section_of(layer.name, config)
        if section not in facts:
            owner = config if section is None else config[section]
            facts[section] = (_activation(owner), _range(owner), owner.get("tie_word_embeddings"),
                              "" if section in (None, "text_config") else f"{section}: ")
        activation, std, tied, where = facts[section]
        if layer.kind == "experts" and layer.unknown_fans:
            owner = config if section is None else config[section]
            layer = _expert_layout(layer, owner.get("model_type", config.get("model_type")))
        leaf = layer.param.rpartition(".")[2]
        weight = len(layer.shape) >= 2 and leaf in ("weight", "qweight", "weight_packed")
        if activation and weight and layer.kind == "linear" and layer.nonlinearity is None:
            gate = gate_of_up(layer.name)
            gated = gate and f"{layer.name.rpartition('.')[0]}.{gate}" in modules
            if _GATE.search(layer.name) or (_UP.search(layer.name) and not gated):
                note = f"followed by {activation[1]}: config.json {where}{activation[0]}"
                layer = replace(layer, nonlinearity=activation[1], notes=(*layer.notes, note))
                taken[f"{where}{activation[0]} after the MLP's up/gate projections"] = None
        if std is not None and weight and layer.kind in _LIBRARY_KINDS:
            layer = replace(layer, library_std=std)
            taken[f"{where}initializer_range={std:g} (transformers draws Linear and Embedding weights from "
                  "N(0, r²))"] = None
        if tied is True and layer.kind == "embedding" and _EMBEDDING.search(layer.name):
            layer = replace(layer, notes=(*layer.notes, "tie_word_embeddings (config.json): the output head "
                                                        "(lm_head) is this tensor"))
            taken["tie_word_embeddings=true"] = None
        out.append(layer)
    return tuple(out), list(taken)
