"""`config.json` beside the weights (Hugging Face transformers): what it states that names and shapes
cannot — the attention heads (which split a fused q/k/v projection), the MLP's activation (`hidden_act`,
`activation_function`) on the projections the key names show it follows, tied embeddings
(`tie_word_embeddings`), and the init transformers itself applies (`initializer_range`: N(0, r²) for every
Linear and Embedding weight), so `--stats` and `--infer` can say whether the weights still carry it.

Never required and never trusted beyond its numbers: read bounded, a file that cannot be used is said
in a model note, and what was taken from it is said too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ..errors import SourceError
from ..layer import Layer, LayerTable, Model
from ..safe_io import parse_json_object, read_bounded
from .entry import Entry
from .formats import config_applies
from .hf_facts import TOWERS, apply_library_facts, built_by, embedding_name, gate_of_up, section_of
from .links import cache_repo, leads_outside
from .module_structure import unsplit_note
from .quant_keys import COMPRESSED_BITS, compressed_layer, mlx_restated

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # transformers' configs are a few KB
NAME = "config.json"


@dataclass(frozen=True)
class Heads:
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def parts(self) -> tuple[int, int, int]:
        """Rows of q, k and v in a fused projection."""
        return self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim

    def __str__(self) -> str:
        return (f"num_attention_heads={self.heads}, num_key_value_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}")


def _count(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if type(value) is int and 0 < value < 1 << 31:
            return value
    return None


def heads_of(config: dict) -> Heads | None:
    """The heads one (sub-)config states, or None. Falcon's `multi_query` means one kv head only in its old
    decoder: transformers' FalconAttention takes `num_kv_heads if (new_decoder_architecture or not
    multi_query) else 1`. A vision tower's width is its `embed_dim` where it has one (Qwen2-VL's
    VisionAttention: head_dim = embed_dim // num_heads; its `hidden_size` is the text model's)."""
    heads = _count(config, "num_attention_heads", "n_head", "num_heads")
    if heads is None:
        return None
    multi_query = config.get("multi_query", config.get("model_type") == "falcon")  # FalconConfig's default: True
    single = multi_query is True and config.get("new_decoder_architecture") is not True
    kv_heads = 1 if single else _count(config, "num_key_value_heads", "num_kv_heads")
    hidden = _count(config, "embed_dim", "hidden_size", "n_embd", "d_model")
    head_dim = _count(config, "head_dim") or (hidden // heads if hidden and hidden % heads == 0 else None)
    return Heads(heads, kv_heads or heads, head_dim) if head_dim else None


def with_config(model: Model, weights: Path) -> Model:
    """The model with what a config.json beside `weights` states applied to its layers; the model's notes
    say what was taken from it."""
    path = weights.parent / NAME
    if not config_applies(model.format) or not path.is_file():
        return model
    repo = cache_repo(weights.parent)
    if repo is not None and leads_outside(path, repo):
        return replace(model, notes=(*model.notes, f"{NAME} beside the weights not used: it links outside its "
                                     f"Hugging Face repo's cache folder ({repo})"))
    try:
        config = parse_json_object(read_bounded(path, MAX_CONFIG_BYTES, "a config.json"), str(path), NAME)
    except SourceError as error:
        return replace(model, notes=(*model.notes, f"{NAME} beside the weights not used: {error}"))
    return apply_config(model, config, str(path))


def apply_config(model: Model, config: dict, where: str) -> Model:
    """The model with what the parsed config.json `config` (read at `where`, local or remote) states applied:
    to a LayerTable's templates where what it states reads no index of a name (`_on_templates`), else layer
    by layer."""
    table = model.layers if isinstance(model.layers, LayerTable) else None
    if table is not None:
        done = _on_templates(model, table, config, where)
        if done is not None:
            return done
        model = model.with_layers_made()
    layers, notes = _configured(model, model.layers, config, where)
    return replace(model, layers=layers, notes=notes, built_by=built_by(config))


def _on_templates(model: Model, table: LayerTable, config: dict, where: str) -> Model | None:
    """`apply_config` of a LayerTable: what config.json states applied to each template, its copies changed
    alike. None where that may not hold for every copy: a quantization it restates (GPTQ group size,
    compressed-tensors bits, MLX's) or a DCP's ties, which read each tensor; an up projection whose gate
    sits beside some of its template's layers and not others; a tied head whose embedding is not alone."""
    if (model.format == "torch-dcp" or _gptq_group_size(config) is not None or _compressed_bits(config) is not None
            or isinstance(config.get("quantization"), dict)):
        return None
    modules = set(table.names)
    templates, notes = _configured(model, tuple(table.templates), config, where, modules)
    counts = Counter(table.kin)
    gates = {}  # template -> the gate beside its up projection, where it has several layers
    for number, (old, new) in enumerate(zip(table.templates, templates)):
        if new.name != old.name or new.param != old.param or new.data is not old.data:
            return None  # what the copies have of their own is not a template's to change
        if new.aliases != old.aliases and (counts[number] != 1 or "lm_head.weight" in table.params):
            return None  # `_unstored_head` counts every embedding and reads every key
        gate = gate_of_up(old.name)
        if gate is not None and counts[number] > 1:
            gates[number] = gate
    if gates:  # one pass over the layers: is the gate beside every copy of its template, or none?
        beside: dict[int, set[bool]] = {number: set() for number in gates}
        for name, number in zip(table.names, table.kin):
            if number in gates:
                beside[number].add(f"{name.rpartition('.')[0]}.{gates[number]}" in modules)
        if any(len(found) > 1 for found in beside.values()):
            return None
    return replace(model, layers=table.with_templates(list(templates)), notes=notes, built_by=built_by(config))


def _configured(model: Model, given: Sequence[Layer], config: dict, where: str,
                modules: set[str] | None = None) -> tuple[tuple[Layer, ...], tuple[str, ...]]:
    """The `given` layers with what config.json states applied, and the model's notes with what was taken
    (`modules`: every layer's name, where `given` are not all of them). `_on_templates` applies it to a
    LayerTable's templates and guards each rule here that reads another layer (the gate beside an up
    projection, the embeddings a tied head counts, a restated quantization, DCP's ties): a new such rule
    needs its guard there."""
    notes = list(model.notes)
    sections = {section: heads_of(config if section is None else config[section]) for section in
                (None, "text_config", *TOWERS) if section is None or isinstance(config.get(section), dict)}
    layers, split = [], {}
    for layer in given:
        section = section_of(layer.name, config)
        heads = sections[section]
        done = layer if heads is None else _split(layer, heads)
        if done is not layer:
            split[f"{section}: {heads}" if section in TOWERS else str(heads)] = None
        layers.append(done)
    notes += [f"from {NAME}: {heads} (splits fused q/k/v)" for heads in split]
    stated = _gptq_group_size(config)
    if stated is not None:
        grouped = [replace(layer, data=layer.data.grouped(stated)) if hasattr(layer.data, "grouped") else layer
                   for layer in layers]
        if any(new.data is not old.data for new, old in zip(grouped, layers)):
            layers = grouped
            notes.append(f"from {NAME}: GPTQ group_size={stated} (for qweights saved without g_idx)")
    bits = _compressed_bits(config)
    if bits is not None:
        packed = [_repacked(layer, bits, where) for layer in layers]
        if any(new is not old for new, old in zip(packed, layers)):
            layers = packed
            notes.append(f"from {NAME}: compressed-tensors pack-quantized num_bits={bits}")
    quantization = config.get("quantization")
    if isinstance(quantization, dict):  # MLX's (mlx-lm writes it): bits and group_size, per module where they differ
        restated = [mlx_restated(layer, quantization, where) for layer in layers]
        if any(new is not old for new, old in zip(restated, layers)):
            layers = restated
            notes.append(f"from {NAME}: MLX quantization (bits and group_size)")
    layers, taken = apply_library_facts(tuple(layers), config, modules)
    if taken:
        notes.append(f"from {NAME}: {'; '.join(taken)}")
    if model.format == "torch-dcp":
        layers, tie = _stored_twice(layers, config)
        notes += [tie] if tie else []
    else:
        layers, tie = _unstored_head(layers, config)
        notes += [tie] if tie else []
    return layers, tuple(notes)


#: Modules transformers ties to the input embedding when config.json says `tie_word_embeddings`: the LM
#: head (`lm_head`, BERT's `cls.predictions.decoder`), and an encoder-decoder's per-stack `embed_tokens`.
_TIED_HEADS = ("lm_head", "decoder")


def _stored_twice(layers: tuple[Layer, ...], config: dict) -> tuple[tuple[Layer, ...], str | None]:
    """`dcp.save` writes a tied tensor under each key and keeps no record of the tie. Where config.json says
    `tie_word_embeddings`, the input embeddings and heads of the embedding's shape and dtype are one tensor:
    its parameters are counted once (its bytes, stored under each key, as stored)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) is not True:
        return layers, None
    first = next((layer for layer in layers if layer.kind == "embedding" and embedding_name(layer.name)), None)
    if first is None:
        return layers, None

    def tied(layer: Layer) -> bool:
        named = (layer.kind == "embedding" and embedding_name(layer.name)) or \
            layer.name.rpartition(".")[2] in _TIED_HEADS
        return named and layer.param.endswith("weight") and layer.shape == first.shape and layer.dtype == first.dtype

    out = tuple(replace(layer, copy_of=first.param) if layer is not first and tied(layer) else layer
                for layer in layers)
    out = _head_bias_ties(out)
    copies = [layer.param for layer in out if layer.copy_of]
    if not copies:
        return layers, None
    return out, (f"from {NAME}: tie_word_embeddings, so {', '.join(map(repr, copies[:3]))} "
                 f"{'is' if len(copies) == 1 else 'are'} {first.param!r}, saved under each key by dcp.save: its "
                 "parameters counted once")


#: Classes whose head transformers names `lm_head` (config.json `architectures`).
_LM_HEAD_CLASSES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _unstored_head(layers: tuple[Layer, ...], config: dict) -> tuple[tuple[Layer, ...], str | None]:
    """`save_pretrained` does not store a tied head: where config.json says `tie_word_embeddings` and its
    architecture names its head `lm_head`, `lm_head.weight` is the input embedding's second key (as the model
    torch builds from it has it), so a `.pt` of the same model pairs with it key by key."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    architectures = config.get("architectures")
    if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) is not True or \
            not isinstance(architectures, list) or \
            not any(isinstance(name, str) and name.endswith(_LM_HEAD_CLASSES) for name in architectures):
        return layers, None
    if any(layer.param == "lm_head.weight" or "lm_head.weight" in layer.aliases for layer in layers):
        return layers, None
    inputs = [layer for layer in layers if layer.kind == "embedding" and embedding_name(layer.name)
              and layer.param.endswith("weight")]
    if len(inputs) != 1:
        return layers, None
    embedding = inputs[0]
    out = tuple(replace(layer, aliases=(*layer.aliases, "lm_head.weight")) if layer is embedding else layer
                for layer in layers)
    return out, (f"from {NAME}: tie_word_embeddings, so 'lm_head.weight' (not stored) is {embedding.param!r}")


def _head_bias_ties(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """BERT's LM head ties `predictions.decoder.bias` to `predictions.bias` (`self.decoder.bias = self.bias`):
    a tied decoder's bias of the shape and dtype of its parent's `bias` is that tensor."""
    by_param = {layer.param: layer for layer in layers}
    out = []
    for layer in layers:
        parent, _, leaf = layer.name.rpartition(".")
        owner = by_param.get(f"{parent}.bias")
        head = by_param.get(f"{layer.name}.weight")
        if leaf == "decoder" and layer.param == f"{layer.name}.bias" and head is not None and head.copy_of and \
                owner is not None and owner.shape == layer.shape and owner.dtype == layer.dtype:
            layer = replace(layer, copy_of=owner.param)
        out.append(layer)
    return tuple(out)


def _gptq_group_size(config: dict) -> int | None:
    """transformers' GPTQConfig `group_size` (in `quantization_config`): -1 or a positive count of inputs."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "gptq":
        return None
    size = quantization.get("group_size")
    return size if type(size) is int and (size == -1 or 0 < size < 1 << 31) else None


def _compressed_bits(config: dict) -> int | None:
    """The bits of compressed-tensors' pack-quantized weights (`quantization_config.config_groups.*.weights
    .num_bits`), where every group states the same."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compressed-tensors":
        return None
    groups = quantization.get("config_groups")
    stated = {group["weights"].get("num_bits") for group in (groups.values() if isinstance(groups, dict) else ())
              if isinstance(group, dict) and isinstance(group.get("weights"), dict)}
    bits = stated.pop() if len(stated) == 1 else None
    return bits if type(bits) is int and bits in COMPRESSED_BITS else None


def _repacked(layer: Layer, bits: int, where: str) -> Layer:
    """A compressed-tensors `weight_packed` read with the bits the config states."""
    if not layer.param.endswith(".weight_packed") or layer.stored_shape is None:
        return layer
    return compressed_layer(Entry(layer.param, layer.stored_shape, "int32"), {}, where, bits)


def _split(layer: Layer, heads: Heads) -> Layer:
    """A fused q/k/v projection whose rows are the config's q + k + v: equal parts are stacked blocks;
    unequal ones (grouped-query attention) have one effective fan_out per part, so none for the tensor."""
    if "fan_out" not in layer.unknown_fans or len(layer.shape) != 2:
        return layer
    rows = layer.shape[1] if layer.layout == "in_out" else layer.shape[0]
    q, k, v = heads.parts
    if rows != q + k + v:
        return layer
    unsplit = unsplit_note(layer.name)
    notes = tuple(note for note in layer.notes if note != unsplit)
    if q == k:
        return replace(layer, stacked=3, unknown_fans=(), notes=(*notes, f"q, k, v stacked: split by {NAME}"))
    note = (f"fused q/k/v projection: q {q}, k {k}, v {v} rows ({NAME}: grouped-query attention); each part "
            "has its own fan_out, so the tensor has no one effective fan_out")
    return replace(layer, notes=(*notes, note))
