"""Tensors of a flat source that are no layer's weight — quantization scales and metadata, buffers — and
quantized weights, reported with the logical shape of the weight they stand for.

A quantized checkpoint keeps beside each weight the tensors that decode it: FP8's block scales
(`weight_scale_inv`, DeepSeek-V3), GPTQ/AWQ's packed `qweight` with `scales`, `qzeros` and `g_idx`,
bitsandbytes' `SCB` and `absmax`. Read by shape alone they look like small Linear layers (an FP8 7B model
has thousands of them); they get kinds of their own here (`quant_scale`, `quant_aux`, `buffer`: no init
draws them), each with a note naming the weight it belongs to, relative to its own key so that repeated layers' notes
agree and fold.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Collection, Mapping, NamedTuple

from ..errors import SourceError
from ..layer import Layer

if TYPE_CHECKING:
    from .entry import Entry

#: Key pattern -> (kind, what the tensor is, the key of the weight it belongs to). One table: a new
#: quantization format's tensors are rows here. `m` is the module, `w` a weight's own key.
#: Compiled on first use (`_auxiliary_patterns`): a checkpoint without such tensors never needs them.
AUXILIARY: tuple[tuple[str, str, str, str], ...] = (
    (r"^(?P<m>.+)\.weight_scale_inv$", "quant_scale", "FP8 block scales (weight = stored × scale)",
     "{m}.weight"),
    (r"^(?P<m>.+)\.weight_scale$", "quant_scale", "FP8 weight scale", "{m}.weight"),
    (r"^(?P<m>.+)\.input_scale$", "quant_scale", "FP8 scale of the input activations", "{m}.weight"),
    (r"^(?P<m>.+)\.[kv]_scale$", "quant_scale", "FP8 key/value-cache scale", "{m}"),
    (r"^(?P<m>.+)\.scales$", "quant_scale", "GPTQ/AWQ group scales", "{m}.qweight"),
    (r"^(?P<m>.+)\.weight_zero_point$", "quant_aux", "compressed-tensors zero points (packed along dim 0 when "
     "int32)", "{m}.weight_packed"),
    (r"^(?P<w>.+\.(gate_up|down)_proj)_scales$", "quant_scale", "MXFP4 scales (2^(s − 127) for each block of 32 "
     "values)", "{w}_blocks"),
    (r"^(?P<m>.+)\.qzeros$", "quant_aux", "GPTQ/AWQ packed zero points", "{m}.qweight"),
    (r"^(?P<m>.+)\.g_idx$", "quant_aux", "GPTQ group index of each input", "{m}.qweight"),
    (r"^(?P<m>.+)\.SCB$", "quant_scale", "bitsandbytes int8 row scales", "{m}.weight"),
    (r"^(?P<m>.+)\.weight_format$", "quant_aux", "bitsandbytes int8 weight format", "{m}.weight"),
    (r"^(?P<w>.+\.weight)\.(nested_)?absmax$", "quant_scale", "bitsandbytes 4-bit block absmax", "{w}"),
    (r"^(?P<w>.+\.weight)\.(nested_)?quant_map$", "quant_aux", "bitsandbytes 4-bit codebook", "{w}"),
    (r"^(?P<w>.+\.weight)\.quant_state\..+$", "quant_aux", "bitsandbytes 4-bit quantization state", "{w}"),
    (r"^(?P<m>(.+\.)?)inv_freq$", "buffer", "rotary embedding frequencies", ""),
    (r"^(?P<m>(.+\.)?)position_ids$", "buffer", "position ids", ""),
    (r"^(?P<m>.+)\.e_score_correction_bias$", "buffer",
     "router score correction (set by load balancing, not drawn)", "{m}.weight"),
    (r"^(?P<m>.+)\.masked_bias$", "buffer", "attention mask fill value", ""),
)
#: The last key component of every AUXILIARY pattern (and `.quant_state.`, which may be followed by more):
#: a key ending otherwise matches none of them, so the 16 patterns are not tried on every weight's key.
_AUXILIARY_LEAVES = frozenset((
    "weight_scale_inv", "weight_scale", "input_scale", "k_scale", "v_scale", "scales", "qzeros", "g_idx", "SCB",
    "weight_format", "absmax", "nested_absmax", "quant_map", "nested_quant_map", "inv_freq", "position_ids",
    "e_score_correction_bias", "masked_bias", "weight_zero_point", "gate_up_proj_scales", "down_proj_scales",
))
#: Integer tensors that belong to a quantized weight: listed although integers otherwise are not.
QUANT_PACKED = ("qweight", "weight_packed", "gate_up_proj_blocks", "down_proj_blocks")
GPTQ_DEFAULT_BITS = 4
#: compressed-tensors' pack-quantized format packs 4- or 8-bit ints; W4A16, its usual scheme, has 4.
COMPRESSED_BITS = (4, 8)
COMPRESSED_DEFAULT_BITS = 4


class Auxiliary(NamedTuple):
    """What a tensor that is no layer's weight is (a tuple: cheaper to define at start-up than a dataclass)."""

    kind: str
    role: str
    owner: str  # the key of the weight (or module) it belongs to; "" for none
    relation: str = ""  # that owner seen from the tensor's own key: "the weight beside it"


#: bitsandbytes' 4-bit `Params4bit` as its state_dict holds it: a uint8 `weight` [⌈out·in/2⌉, 1] with its
#: `weight.absmax` (and `weight.quant_state.*`) beside it.
BNB_4BIT = Auxiliary("quant_packed", "bitsandbytes 4-bit weight packed two to a byte (its [out, in] is in its "
                     "quant_state)", "")


#: MLX's affine quantization (`mlx.core.quantize`): a uint32 `weight` [out, in·bits/32] with `scales` and `biases`
#: [out, in/group_size] beside it; bits 2, 3, 4, 5, 6, 8 and group sizes 32, 64, 128, its defaults 4 and 64.
MLX_BITS = (4, 2, 3, 5, 6, 8)
MLX_GROUP_SIZES = (64, 32, 128)
MLX_SCALES = Auxiliary("quant_scale", "MLX group scales (w = scale·q + bias)", "", "the weight beside it")
MLX_BIASES = Auxiliary("quant_aux", "MLX group biases (w = scale·q + bias)", "", "the weight beside it")


def is_mlx(entry: "Entry", keys: Collection[str]) -> bool:
    """A uint32 `weight` with `scales` and `biases` beside it: MLX's packed affine-quantized weight."""
    module, _, leaf = entry.key.rpartition(".")
    return (entry.dtype == "uint32" and leaf == "weight" and len(entry.shape) == 2 and f"{module}.scales" in keys
            and f"{module}.biases" in keys)


COMPRESSED_SCALES = Auxiliary("quant_scale", "compressed-tensors scales (per channel or group)", "",
                              "the weight_packed beside it")


def packed_auxiliary(entry: "Entry", entries: Mapping[str, "Entry"]) -> Auxiliary | None:
    """What the packed weight beside a tensor makes of it, where its key alone would mislead: compressed-tensors'
    `weight_scale` (FP8's by name), MLX's `scales` or `biases` (GPTQ's by name; told by the uint32 weight)."""
    module, _, leaf = entry.key.rpartition(".")
    if leaf == "weight_scale" and f"{module}.weight_packed" in entries:
        return COMPRESSED_SCALES._replace(owner=f"{module}.weight_packed")
    weight = entries.get(f"{module}.weight") if leaf in ("scales", "biases") else None
    if weight is None or not is_mlx(weight, entries.keys()):
        return None
    return (MLX_SCALES if leaf == "scales" else MLX_BIASES)._replace(owner=weight.key)


def mlx_layer(entry: "Entry", entries: Mapping[str, "Entry"], where: str,
              stated: tuple[int, int] | None = None) -> Layer:
    """MLX's packed weight as the [out, in] weight it stands for: in = groups × group_size = columns × 32/bits,
    with the bits and group size config.json states (`stated`), else MLX's defaults (4, 64) where they fit,
    else the one pair that does. Where none is known it is listed as stored (kind quant_packed)."""
    from .quant_data import Mlx

    module = entry.key.rpartition(".")[0]
    scales, biases = entries[f"{module}.scales"], entries[f"{module}.biases"]
    out, columns = entry.shape
    if scales.shape != biases.shape or len(scales.shape) != 2 or scales.shape[0] != out:
        raise SourceError(f"{where}: {module}: MLX scales {list(scales.shape)} and biases {list(biases.shape)} "
                          f"must both be [out, groups] = [{out}, …] for its uint32 weight {list(entry.shape)}")
    groups = scales.shape[1]
    fits = [(bits, size) for bits in MLX_BITS for size in MLX_GROUP_SIZES
            if columns * 32 % bits == 0 and columns * 32 // bits == groups * size]
    if stated is not None:
        said, fits = "config.json's quantization", [stated] if stated in fits else []
    else:
        said = "MLX's defaults, assumed" if fits[:1] == [(4, 64)] else "the only pair that fits"
    if len(fits) != 1 and fits[:1] != [(4, 64)]:
        what = f"fit no {'stated ' if stated else ''}(bits, group size) pair" if not fits else \
            f"fit {len(fits)} (bits, group size) pairs and config.json does not say which"
        return Layer(name=module, param=entry.key, kind="quant_packed", shape=entry.shape, dtype="uint32",
                     data=Mlx(entry, scales, biases, None, entry.shape),
                     notes=(f"MLX packed weight {list(entry.shape)} with {groups} groups of scales: they {what}, so "
                            "its [out, in] is unknown",))
    bits, size = fits[0]
    shape = (out, groups * size)
    note = (f"MLX {bits}-bit weight in groups of {size} ({said}), packed as {list(entry.shape)}: reported as the "
            f"[out, in] = {list(shape)} weight it stands for")
    return Layer(name=module, param=entry.key, kind="linear", shape=shape, dtype="uint32", stored_shape=entry.shape,
                 notes=(note,), data=Mlx(entry, scales, biases, (bits, size), shape))


def mlx_restated(layer: Layer, quantization: dict, where: str) -> Layer:
    """An MLX packed weight read with the bits and group size config.json's `quantization` states for it (its
    module's own entry, else the model's)."""
    from .quant_data import Mlx

    data = layer.data
    stated = quantization.get(layer.name, quantization)
    if not isinstance(data, Mlx) or not isinstance(stated, dict):
        return layer
    bits, size = stated.get("bits"), stated.get("group_size")
    if type(bits) is not int or type(size) is not int:
        return layer
    module = data.weight.key.rpartition(".")[0]
    new = mlx_layer(data.weight, {f"{module}.scales": data.scales, f"{module}.biases": data.biases}, where,
                    (bits, size))
    return replace(new, kind="embedding") if new.kind == "linear" and layer.kind == "embedding" else new


def is_bnb_4bit(entry: "Entry", keys: Collection[str]) -> bool:
    """A uint8 `weight` with a `weight.absmax` beside it: the packed codes of a bitsandbytes 4-bit weight."""
    return entry.dtype == "uint8" and entry.key.rpartition(".")[2] == "weight" and f"{entry.key}.absmax" in keys


@functools.cache
def _auxiliary_patterns() -> tuple[tuple[re.Pattern, str, str, str], ...]:
    return tuple((re.compile(pattern), kind, role, owner) for pattern, kind, role, owner in AUXILIARY)


def auxiliary(key: str, shape: tuple[int, ...]) -> Auxiliary | None:
    """What a tensor that is no layer's weight is, from its key (and a causal mask's shape), or None."""
    module, _, leaf = key.rpartition(".")
    if leaf == "bias" and len(shape) == 4 and shape[:2] == (1, 1):  # GPT-2's attn.bias: a [1, 1, n, n] mask
        return Auxiliary("buffer", "causal attention mask", "")
    last = leaf[:-1] if leaf.endswith("\n") else leaf  # `$` also matches before a final newline
    if last not in _AUXILIARY_LEAVES and ".quant_state." not in key:
        return None
    for pattern, kind, role, owner in _auxiliary_patterns():
        match = pattern.match(key)
        if match:
            return Auxiliary(kind, role, owner.format(**match.groupdict()), _relation(owner))
    return None


def _relation(owner: str) -> str:
    """The table's owner template as seen from the tensor: `{m}.weight` is "the weight beside it", `{m}`
    "its module", `{w}` (the key the tensor is stored under) "the weight it is stored under"."""
    if owner == "{m}":
        return "its module"
    if owner == "{w}":
        return "the weight it is stored under"
    if owner.startswith("{w}_"):
        return f"the *{owner[3:]} beside it"
    return f"the {owner.rpartition('.')[2]} beside it" if owner else ""


def auxiliary_layer(entry: "Entry", found: Auxiliary, keys: Collection[str],
                    shared: dict[tuple[str, ...], tuple[str, ...]] | None = None) -> Layer:
    """The tensor as a layer of its own kind, its note naming the weight it belongs to relative to its own
    key (`the weight beside it`): the rows of 58 layers × 256 experts' scales then say the same and fold."""
    of = ""
    if found.owner:
        of = f" of {found.relation}" + ("" if found.owner in keys else " (not in this source)")
    module = entry.key.rpartition(".")[0]
    notes = (f"{found.role}{of}",)
    if shared is not None:  # one copy of each distinct notes tuple (`flat_keys.layers_from_entries`)
        notes = shared.setdefault(notes, notes)
    return Layer(name=module or entry.key, param=entry.key, kind=found.kind, shape=entry.shape, dtype=entry.dtype,
                 data=entry.data, notes=notes)


def packed_layer(entry: "Entry", entries: Mapping[str, "Entry"], where: str) -> Layer:
    """A packed quantized weight as the [out, in] Linear weight it stands for: GPTQ/AWQ's `qweight`,
    compressed-tensors' `weight_packed`."""
    if entry.key.endswith("weight_packed"):
        return compressed_layer(entry, entries, where)
    if entry.key.endswith("_blocks"):
        return mxfp4_layer(entry, entries, where)
    return _gptq_layer(entry, entries, where)


def mxfp4_layer(entry: "Entry", entries: dict[str, "Entry"], where: str) -> Layer:
    """gpt-oss's MXFP4 experts: `*_blocks` uint8 [E, R, G, 16] (two FP4 e2m1 values to a byte, 32 to a block)
    with `*_scales` uint8 [E, R, G] beside it, which transformers' `convert_moe_packed_tensors` turns into the
    [E, G·32, R] stack the model multiplies by (x @ W[e]): reported as that stack."""
    from .quant_data import mxfp4_data

    if entry.dtype != "uint8" or len(entry.shape) != 4 or entry.shape[3] != 16:
        raise SourceError(f"{where}: {entry.key}: MXFP4 blocks must be a 4-D uint8 tensor [experts, rows, blocks, "
                          f"16], not {entry.dtype} {list(entry.shape)}")
    experts, rows, groups, _ = entry.shape
    scales = entries.get(entry.key.removesuffix("_blocks") + "_scales")
    if scales is not None and scales.shape != entry.shape[:3]:
        raise SourceError(f"{where}: {scales.key}: shape {list(scales.shape)} is not its blocks' "
                          f"{list(entry.shape[:3])}")
    shape = (experts, groups * 32, rows)
    note = (f"MXFP4 blocks {list(entry.shape)} (two FP4 values to a byte, a scale per 32): reported as the "
            f"[experts, in, out] = {list(shape)} stack transformers dequantizes them to (convert_moe_packed_tensors), "
            "each expert used as x @ W[e]")
    return Layer(name=entry.key.rpartition(".")[0], param=entry.key, kind="experts", shape=shape, layout="in_out",
                 stacked=experts, dtype="uint8", stored_shape=entry.shape, notes=(note,),
                 data=mxfp4_data(entry, scales, shape))


def compressed_layer(entry: "Entry", entries: dict[str, "Entry"], where: str, bits: int | None = None) -> Layer:
    """compressed-tensors' pack-quantized `weight_packed` int32 [out, ⌈in·bits/32⌉] (`pack_to_int32`: 32/bits
    values to an int32 along dim 1, a row padded to whole words) as the [out, in] weight it stands for. The
    exact in is in the `weight_shape` tensor beside it, whose values are not read (no tensor data without
    --stats): in is the packed columns × 32/bits. The bits are `bits` (config.json's), else those its packed
    zero points [⌈out·bits/32⌉, groups] (asymmetric schemes) show, else 4."""
    from .quant_data import Unreadable

    if entry.dtype != "int32" or len(entry.shape) != 2:
        raise SourceError(f"{where}: {entry.key}: a packed weight_packed must be a 2-D int32 tensor, "
                          f"not {entry.dtype} {list(entry.shape)}")
    out, columns = entry.shape
    said = "bits from config.json"
    if bits is None:
        zeros = entries.get(f"{entry.key.removesuffix('_packed')}_zero_point")
        shown = [b for b in COMPRESSED_BITS if zeros is not None and zeros.dtype == "int32"
                 and len(zeros.shape) == 2 and zeros.shape[0] == -(-out * b // 32)]
        bits, said = ((shown[0], "bits from weight_zero_point") if len(shown) == 1 else
                      (COMPRESSED_DEFAULT_BITS, f"{COMPRESSED_DEFAULT_BITS} bits assumed (W4A16, the usual scheme; "
                                                "config.json's quantization_config says)"))
    in_features = columns * (32 // bits)
    note = (f"compressed-tensors {bits}-bit weight packed {32 // bits} to an int32 as {list(entry.shape)} ({said}): "
            f"reported as the [out, in] = [{out}, {in_features}] weight it stands for (in rounded up to whole "
            "int32s; the weight_shape beside it holds the exact one); its values are not read")
    return Layer(name=entry.key.rpartition(".")[0], param=entry.key, kind="linear", shape=(out, in_features),
                 dtype="int32", stored_shape=entry.shape, notes=(note,),
                 data=Unreadable("int32", (out, in_features), "compressed-tensors' packed values are not read: "
                                                               "no statistics"))


def _gptq_layer(entry: "Entry", entries: dict[str, "Entry"], where: str) -> Layer:
    """GPTQ's `qweight [in·bits/32, out]` or AWQ's `[in, out·bits/32]` (int32, 32/bits values per int) as
    the `[out, in]` Linear weight it stands for. `scales [groups, out]` tells out, and so which dim is
    packed; `qzeros [groups, out·bits/32]` tells the bits (else GPTQ's usual 4, said in a note)."""
    from .quant_data import Unreadable, gptq_data

    module = entry.key.rpartition(".")[0]
    scales, zeros = entries.get(f"{module}.scales"), entries.get(f"{module}.qzeros")
    if entry.dtype != "int32" or len(entry.shape) != 2:
        raise SourceError(f"{where}: {entry.key}: a packed qweight must be a 2-D int32 tensor, "
                          f"not {entry.dtype} {list(entry.shape)}")
    if scales is None or len(scales.shape) != 2:
        raise SourceError(f"{where}: {entry.key}: no 2-D {module}.scales beside it: its logical shape is unknown")
    out = scales.shape[1]
    bits, said = GPTQ_DEFAULT_BITS, f"{GPTQ_DEFAULT_BITS} bits assumed (GPTQ's usual; no qzeros to tell)"
    if zeros is not None and len(zeros.shape) == 2 and zeros.shape[1] and (32 * zeros.shape[1]) % out == 0:
        bits, said = 32 * zeros.shape[1] // out, "bits from qzeros"
    if bits not in (2, 3, 4, 8) or 32 % bits:
        raise SourceError(f"{where}: {entry.key}: qzeros {list(zeros.shape) if zeros else None} and scales "
                          f"{list(scales.shape)} give {bits}-bit values, which do not pack into int32")
    pack = 32 // bits
    rows, columns = entry.shape
    if columns == out:
        layout, in_features = "GPTQ", rows * pack
    elif columns * pack == out:
        layout, in_features = "AWQ", rows
    else:
        raise SourceError(f"{where}: {entry.key}: shape {list(entry.shape)} fits neither GPTQ's [in·{bits}/32, "
                          f"{out}] nor AWQ's [in, {out}·{bits}/32] for scales {list(scales.shape)}")
    groups = scales.shape[0]
    if not groups or groups > in_features:
        raise SourceError(f"{where}: {module}.scales: {groups} groups do not divide {in_features} inputs")
    note = (f"{layout} {bits}-bit weight packed {32 // bits} to an int32 as {list(entry.shape)} ({said}): "
            f"reported as the [out, in] = [{out}, {in_features}] Linear weight it stands for")
    data = (gptq_data(entry, scales, zeros, entries.get(f"{module}.g_idx"), bits, (out, in_features))
            if layout == "GPTQ" else
            Unreadable("int32", (out, in_features), "AWQ's packing order is not read: no statistics"))
    return Layer(name=module, param=entry.key, kind="linear", shape=(out, in_features), dtype="int32",
                 stored_shape=entry.shape, data=data, notes=(note,))
