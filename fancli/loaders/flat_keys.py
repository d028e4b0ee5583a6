"""The flat-key reader: layers from a flat mapping of parameter keys to tensors (state_dicts, safetensors).

Such a source knows names, shapes and dtypes only. Kinds come from key names (`in_proj_weight`,
`weight_ih_l0`, `embed`) and shapes; where a fact cannot be known (groups, transposition) it stays
`None` and a note says so, unless a sibling bias proves it.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import re
from collections import Counter
from dataclasses import replace
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Callable, Collection, Hashable, Iterable, Iterator, Mapping, NamedTuple

from ..kinds import KIND_OF_GATES, RECURRENT_PARAM, kind_for_ndim
from ..columns import Numbering, digit_templates, first_positions
from ..layer import Layer, LayerTable
from ..records import replaced
from ..weights.dtypes import FLOATING, LOW_PRECISION_FLOATING
from .entry import Entry, EntryColumns
from .module_structure import FUSED_QKV_NAME, fused_qkv
from .quant_keys import (BNB_4BIT, QUANT_PACKED, auxiliary, auxiliary_layer, is_bnb_4bit, is_mlx, mlx_layer,
                         packed_auxiliary, packed_layer)

if TYPE_CHECKING:
    from ..weights.tensors import TensorData

#: Buffers that torch's modules keep in their state_dict but that are not weights.
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_RNN_PROJECTION = re.compile(r"^weight_hr_l(\d+)(_reverse)?$")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v")
_EMBEDDING_NAME = re.compile(r"(emb|wte|wpe|shared$|relative_attention_bias$)", re.IGNORECASE)
_BILINEAR_NAME = re.compile(r"bilinear", re.IGNORECASE)

BILINEAR_OR_CONV = ("a 3-D weight may also be an nn.Bilinear's [out, in1, in2], whose torch default is "
                    "U(±1/√in1); names and shapes cannot tell")
NO_STRUCTURE = (
    "from names and shapes alone: whether this conv is grouped or transposed is unknown, "
    "so only torch's fans are given"
)


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _rnn_kind(module: str, shape: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]],
              cell: bool) -> tuple[str, int | None]:
    """lstm/gru/rnn (or their cells) from the ratio of gate rows to hidden size (weight_hh_l0 is [G·H, H],
    or weight_hr gives H)."""
    prefix = f"{module}." if module else ""
    projection = None if cell else shapes.get(f"{prefix}weight_hr_l0")
    hh = shapes.get(f"{prefix}weight_hh" if cell else f"{prefix}weight_hh_l0")
    hidden = projection[1] if projection else (hh[1] if hh and len(hh) == 2 else None)
    if not hidden or not shape or shape[0] % hidden:
        return "unknown", None
    gates = shape[0] // hidden
    kind = KIND_OF_GATES.get((gates, cell), "unknown")
    return kind, gates if kind != "unknown" and gates > 1 else None


#: Stacked experts' matrices (transformers 5's MoE `experts` modules): [E, 2I, H] and [E, H, I] used as
#: F.linear(x, W[e]), or (gpt-oss, Llama 4, Aria) [E, H, 2I] and [E, I, H] used as x @ W[e].
EXPERT_MATRICES = ("gate_up_proj", "down_proj", "gate_proj", "up_proj")


def _expert_layout(module: str, leaf: str, shape: tuple[int, ...],
                   shapes: Mapping[str, tuple[int, ...]]) -> tuple[str | None, str]:
    """An experts matrix's layout ("torch": [E, out, in]; "in_out": [E, in, out]) and why, from its own
    module's tensors: its stacked bias [E, out], or the fused gate_up_proj beside down_proj (2I against I).
    None where they cannot tell (then config.json's model_type may)."""
    _, rows, columns = shape
    bias = shapes.get(f"{module}.{leaf}_bias")
    if bias and len(bias) == 2 and rows != columns and bias[1] in (rows, columns):
        layout = "torch" if bias[1] == rows else "in_out"
        return layout, f"its bias {leaf}_bias has {bias[1]} outputs, dim {1 if layout == 'torch' else 2}"
    gate_up, down = shapes.get(f"{module}.gate_up_proj"), shapes.get(f"{module}.down_proj")
    if gate_up and down and len(gate_up) == len(down) == 3:
        if gate_up[1] == 2 * down[2] and gate_up[2] == down[1]:
            return "torch", f"gate_up_proj {list(gate_up)} is [E, 2I, H] beside down_proj {list(down)} [E, H, I]"
        if gate_up[2] == 2 * down[1] and gate_up[1] == down[2]:
            return "in_out", f"gate_up_proj {list(gate_up)} is [E, H, 2I] beside down_proj {list(down)} [E, I, H]"
    return None, ""


def _experts(module: str, leaf: str, shape: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]]) -> dict | None:
    """A stacked experts matrix [E, a, b] or stacked bias [E, out] of an `experts` module, as layer fields."""
    if module.rpartition(".")[2] != "experts":
        return None
    if len(shape) == 3 and leaf in EXPERT_MATRICES:
        layout, why = _expert_layout(module, leaf, shape, shapes)
        if layout is None:
            return dict(kind="experts", stacked=shape[0], unknown_fans=("fan_in", "fan_out"))
        used = "F.linear(x, W[e])" if layout == "torch" else "x @ W[e]"
        stored = "[experts, out, in]" if layout == "torch" else "[experts, in, out]"
        return dict(kind="experts", stacked=shape[0], layout=layout, notes=(f"stored {stored}, each expert used as "
                                                                             f"{used}: {why}",))
    matrix = f"{module}.{leaf.removesuffix('_bias')}"
    stack = shapes.get(matrix) or shapes.get(f"{matrix}_blocks")  # float, or MXFP4 [E, R, G, 16]
    if len(shape) == 2 and leaf.endswith("_bias") and stack and len(stack) in (3, 4) and stack[0] == shape[0]:
        return dict(kind="experts", stacked=shape[0])
    return None


def _layer_for(entry: Entry, shapes: Mapping[str, tuple[int, ...]]) -> Layer:
    module, leaf = _split(entry.key)
    shape = entry.shape
    bias = shapes.get(f"{module}.bias" if module else "bias")
    common = dict(name=module or entry.key, param=entry.key, shape=shape, dtype=entry.dtype, data=entry.data)

    if leaf in _ATTENTION:
        stacked = 3 if leaf.startswith("in_proj") else None
        return Layer(kind="multihead_attention", stacked=stacked, **common)
    rnn = RECURRENT_PARAM.match(leaf)
    if rnn:
        kind, gates = _rnn_kind(module, shape, shapes, cell=rnn.group(3) is None)
        return Layer(kind=kind, stacked=gates, **common)
    if _RNN_PROJECTION.match(leaf):
        return Layer(kind="lstm", **common)
    experts = _experts(module, leaf, shape, shapes)
    if experts is not None:
        return Layer(**experts, **common)
    if leaf == "A_log" and len(shape) in (1, 2) or leaf == "D" and len(shape) == 1 and f"{module}.A_log" in shapes:
        return Layer(kind="ssm_param", **common)  # a Mamba mixer's: set by a formula, not drawn
    if len(shape) == 1:
        kind = "norm" if leaf == "weight" else "unknown"
        if leaf == "bias" and module:
            sibling = shapes.get(f"{module}.weight")
            kind = _layer_for(Entry(f"{module}.weight", sibling, entry.dtype), shapes).kind if sibling else "unknown"
        return Layer(kind=kind, **common)
    if 2 <= len(shape) <= 5 and leaf != "weight":
        note = (f"{leaf!r} is a parameter, not a layer's weight (a class token, position embedding or layer "
                "scale?): no layer type is known, the fans follow from the shape alone")
        return Layer(kind="unknown", notes=(note,), **common)
    if len(shape) == 2:
        if _EMBEDDING_NAME.search(module.rpartition(".")[2] or module) and bias is None:
            return Layer(kind="embedding", **common)
        notes: tuple[str, ...] = ()
        layout = "torch"
        if bias and len(bias) == 1 and bias[0] == shape[1] != shape[0]:
            layout = "in_out"
            notes = (f"stored [in, out]: its bias has {shape[1]} entries, matching dim 1",)
        fused: dict = {}
        if FUSED_QKV_NAME.search(module):
            fused = fused_qkv(module)
            notes += fused.pop("notes")
        return Layer(kind="linear", layout=layout, notes=notes, **fused, **common)
    if len(shape) == 3 and _BILINEAR_NAME.search(module.rpartition(".")[2]):
        return Layer(kind="bilinear", notes=("a Bilinear [out, in1, in2]: inferred from the name",), **common)
    if 3 <= len(shape) <= 5:
        if bias and len(bias) == 1 and bias[0] != shape[0] and shape[1] and bias[0] % shape[1] == 0:
            groups = bias[0] // shape[1]
            return Layer(kind=kind_for_ndim(len(shape), transposed=True), transposed=True, groups=groups,
                         notes=(f"transposed: its bias has {bias[0]} entries, not shape[0] = {shape[0]}",), **common)
        notes = (NO_STRUCTURE, BILINEAR_OR_CONV) if len(shape) == 3 else (NO_STRUCTURE,)
        return Layer(kind=kind_for_ndim(len(shape)), notes=notes, **common)
    return Layer(kind="unknown", **common)


def _layer(entry: Entry, by_key: Mapping[str, Entry], keys: Collection[str], shapes: Mapping[str, tuple[int, ...]],
           shared: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[Layer, KinTemplate | None]:
    """The layer of one listed entry, and its template where the layer holds for every entry alike (`_kin`);
    `shared` holds one copy of each distinct notes tuple (90,000 FP8 weights and scales say a few dozen
    things)."""
    module, _, leaf = entry.key.rpartition(".")
    found = packed_auxiliary(entry, by_key) or auxiliary(entry.key, entry.shape)
    if found is not None:  # alike where the weight it belongs to is beside it (not the module above)
        layer = auxiliary_layer(entry, found, keys, shared)
        return layer, KinTemplate(layer) if not found.owner or found.owner.rpartition(".")[0] == module else None
    if leaf in QUANT_PACKED:
        return packed_layer(entry, by_key, entry.where), None
    if is_mlx(entry, keys):  # its data dequantizes with its own scales: no template
        layer = mlx_layer(entry, by_key, entry.where)
        if layer.kind == "linear":  # or an embedding, by its name
            layer = replaced(layer, kind=_layer_for(Entry(entry.key, layer.shape, "float32"), shapes).kind)
        return layer, None
    if is_bnb_4bit(entry, keys):  # known by a key outside its module: no template
        return auxiliary_layer(entry, BNB_4BIT, keys, shared), None
    scale, factor, note = _quantization(entry, by_key) if leaf == "weight" else (None, 1.0, None)
    layer = _layer_for(entry, shapes)
    notes = (*layer.notes, *entry.notes, *((note,) if note else ()))
    if notes != layer.notes:
        layer = replaced(layer, notes=shared.setdefault(notes, notes))
    if scale is None:
        return layer, KinTemplate(layer)
    from .quant_data import scaled  # only for a quantized weight

    layer = replaced(layer, data=scaled(entry, scale, factor))
    return layer, KinTemplate(layer, scale.key.rpartition(".")[2], partial(scaled, factor=factor))


class KinTemplate(NamedTuple):
    """A layer computed once for all entries alike: each one's copy takes its own names and data, its data
    dequantized (`quant_data.scaled`) by the scale `scale_leaf` beside it where there is one."""

    layer: Layer
    scale_leaf: str | None = None
    scaled: Callable[[Entry, Entry], TensorData] | None = None

    def apply(self, key: str, module: str, data: TensorData | None) -> Layer:
        """The layer of `key` (in `module`) holding `data` (`data_of` for a weight with a scale)."""
        # `replaced(self.layer, name=…, param=…, data=…)` at half its cost: the template's __dict__ copied whole
        # (a copy that shares the class's keys, as the instance's own dict does: no more memory)
        fields = self.layer.__dict__.copy()
        fields["name"], fields["param"], fields["data"] = module or key, key, data
        layer = object.__new__(Layer)
        object.__setattr__(layer, "__dict__", fields)
        return layer

    def data_of(self, key: str, by_key: Mapping[str, Entry]) -> TensorData:
        """A weight's data dequantized by its scale, whose key is the weight's with "weight" replaced."""
        assert self.scaled is not None and self.scale_leaf is not None
        return self.scaled(by_key[key], by_key[key.removesuffix("weight") + self.scale_leaf])


def _kin(shapes: list[tuple[int, ...]], dtypes: list[str], modules: list[str], leaves: list[str],
         distinct: bool = False) -> list[int | None]:
    """Each entry's kin, in order: one number per distinct (its module's name with the index parts blanked,
    the module's tensors' leaves, shapes and dtypes). Every rule here reads a key's module through its
    names, never its indices, and reads no tensor but the module's own (a tensor whose owner is elsewhere
    has no template), so two entries with one kin, leaf and notes get one layer but for their names and data:
    a 92,000-tensor MoE checkpoint has a few dozen. An entry has no kin (it is computed on its own) where no
    other module's name blanks like its module's, and where one leaf names two of its module's entries
    (`weight` and `.weight` both have the module "", and shards may hold one key twice). `modules` and
    `leaves` are the entries' keys split at their last dot; `shapes` and `dtypes` theirs; `distinct`: whether
    no key is there twice (then only the module "" can have a leaf twice)."""
    module_ids = Numbering()
    of_module = list(map(module_ids.__getitem__, modules))  # each entry's module, numbered
    facts = Numbering()
    signatures: list[tuple[int, ...]] = [()] * len(module_ids)  # per module, its entries' facts, numbered
    for module, fact in zip(of_module, map(facts.__getitem__, zip(leaves, shapes, dtypes))):
        signatures[module] += (fact,)
    blanked = _all_blanked(list(module_ids))
    alike = Counter(blanked)
    twice: set[int] = set()  # modules where one leaf names two entries
    if (not distinct or "" in module_ids) and len(set(zip(of_module, leaves))) < len(leaves):
        seen: set[tuple[int, str]] = set()
        for pair in zip(of_module, leaves):
            if pair in seen:
                twice.add(pair[0])
            seen.add(pair)
    numbers = Numbering()
    kin_of: list[int | None] = list(map(numbers.__getitem__, zip(blanked, signatures)))
    for module in twice.union(itertools.compress(range(len(blanked)), map((2).__gt__, map(alike.__getitem__,
                                                                                          blanked)))):
        kin_of[module] = None  # alike no other module, or a leaf twice
    return list(map(kin_of.__getitem__, of_module))


_SHAPE, _DTYPE, _KEY, _DATA = attrgetter("shape"), attrgetter("dtype"), attrgetter("key"), attrgetter("data")
_IDENTITY, _NOTES = attrgetter("identity"), attrgetter("notes")


_INDEX_PART = re.compile(r"(?<![^.])[0-9]+(?![^.])")


def _all_blanked(modules: list[str]) -> list[str | tuple]:
    """`_blanked` of each module, once per digit template (`columns.digit_templates`) whose every run of
    digits is a whole part of the name: there `_blanked` is the template with each run one NUL, whatever the
    digits (so one result serves every module of the template); other modules are blanked one by one."""
    templates = digit_templates(modules)
    if templates is None:
        return list(map(_blanked, modules))
    memo: dict[str, str | None] = {}
    for template in templates:
        if template not in memo:
            parts = template.split(".")
            whole = not any("\0" in part and part.strip("\0") for part in parts)
            memo[template] = (".".join("\0" if part and not part.strip("\0") else part for part in parts) if whole
                              else None)
    return [memo[template] or _blanked(module) for module, template in zip(modules, templates)]


def _blanked(module: str) -> str | tuple:
    """The module's name with each part of digits alone replaced by NUL (a tuple with None there, in the
    rare name that has a NUL of its own): two names blank alike only if they differ in index parts alone."""
    if "\0" in module:
        return tuple(None if part.isdigit() else part for part in module.split("."))
    return _INDEX_PART.sub("\0", module)


#: Dtypes of weights besides the floating ones: torch's quantized tensors (listed by their logical values)
#: and complex ones (fans from the shape; no statistics).
QUANTIZED_OR_COMPLEX = ("qint8", "quint8", "qint32", "complex64", "complex128")
_WEIGHT_DTYPES = frozenset(FLOATING + LOW_PRECISION_FLOATING + QUANTIZED_OR_COMPLEX)


def is_weight(entry: Entry) -> bool:
    """Floating tensors (quantized and complex ones too) that are not known buffers: what init concerns."""
    return _is_weight(entry.dtype, entry.key.rpartition(".")[2])


def _is_weight(dtype: str, leaf: str) -> bool:
    return dtype in _WEIGHT_DTYPES and leaf not in BUFFERS

_BUFFER_LEAVES = frozenset(BUFFERS)


def _listed(entry: Entry, keys: Collection[str]) -> bool:
    """Weights, and the integer tensors of a quantized weight (packed weights, bitsandbytes' 4-bit uint8
    codes, zero points, an int8 weight with its row scales); other integer tensors (position ids, step
    counters) stay unlisted."""
    if is_weight(entry):
        return True
    found = auxiliary(entry.key, entry.shape)
    if found is not None:
        return found.kind != "buffer"
    leaf = _split(entry.key)[1]
    int8 = leaf == "weight" and entry.dtype == "int8" and f"{entry.key[:-6]}SCB" in keys
    return leaf in QUANT_PACKED or int8 or is_bnb_4bit(entry, keys) or is_mlx(entry, keys)


def _quantization(entry: Entry, entries: Mapping[str, Entry]) -> tuple[Entry | None, float, str | None]:
    """The scale beside an FP8 or int8 weight that dequantizes it, the factor, and the row's note; none for
    other weights."""
    module = entry.key[: -len("weight")]
    if entry.dtype == "int8":
        scale, what = entries.get(f"{module}SCB"), "bitsandbytes int8 (LLM.int8) weight × SCB/127 per row"
        factor = 1 / 127
    elif entry.dtype.startswith("float8"):
        scale = entries.get(f"{module}weight_scale_inv") or entries.get(f"{module}weight_scale")
        what, factor = f"{entry.dtype} weight", 1.0
    else:
        return None, 1.0, None
    if scale is None:
        return None, 1.0, f"{what} with no scale beside it: --stats reads the stored values as they are"
    if entry.dtype.startswith("float8"):
        from .quant_data import scale_layout  # only for a quantized weight

        what += f" × {scale.key.rpartition('.')[2]}, {scale_layout(entry.shape, scale.shape)}"
    return scale, factor, f"{what}: --stats reads the dequantized values"


class _Shapes(Mapping):
    """Key -> shape of the last listed entry of that key (the shape at each key's last position, and the keys
    with an unlisted entry held apart: buffers, shards holding one key twice)."""

    def __init__(self, keys: list[str], shapes: list[tuple[int, ...]], listed: list[bool],
                 last: dict[str, int]) -> None:
        self.last, self.shapes = last, shapes
        odd = set(itertools.compress(keys, map(operator.not_, listed)))
        self.odd = {key: None for key in odd}
        if odd:
            self.odd.update((key, shape) for key, shape, kept in zip(keys, shapes, listed) if kept and key in odd)

    def __getitem__(self, key: str) -> tuple[int, ...]:
        shape = self.odd[key] if key in self.odd else self.shapes[self.last[key]]
        if shape is None:
            raise KeyError(key)
        return shape

    def __iter__(self) -> Iterator[str]:
        return (key for key in self.last if key not in self.odd or self.odd[key] is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ByKey(Mapping):
    """Key -> the Entry of its last position in `columns`, made when it is read (a template's entry, a scale
    read for its weight): 90,000 keys, a few hundred Entries."""

    def __init__(self, columns: EntryColumns, positions: dict[str, int]) -> None:
        self.columns, self.positions = columns, positions

    def __getitem__(self, key: str) -> Entry:
        return self.columns.entry(self.positions[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)

    def keys(self) -> Collection[str]:  # type: ignore[override]  # the positions' keys: `in` in C
        return self.positions.keys()


def layers_from_entries(entries: Iterable[Entry]) -> LayerTable | tuple[Layer, ...]:
    """Layers in source order; tied tensors reported once, the other keys as aliases. Quantization scales,
    metadata and buffers get kinds of their own (`quant_keys`); quantized weights their logical shape. Where
    no two entries are one tensor and none has notes of its own, a LayerTable (`layers_from_columns`)."""
    entries = list(entries)
    columns = EntryColumns(list(map(_KEY, entries)), list(map(_SHAPE, entries)), list(map(_DTYPE, entries)),
                           entries.__getitem__, lambda position: entries[position].data)
    identities = list(map(_IDENTITY, entries))
    notes = list(map(_NOTES, entries))
    known = [identity for identity in identities if identity is not None]
    if len(set(known)) == len(known) and notes.count(()) == len(notes):  # no tie, no notes of an entry's own
        return layers_from_columns(columns)
    return _layers(columns, dict(zip(columns.keys, entries)),
                   None if identities.count(None) == len(identities) else identities,
                   None if notes.count(()) == len(notes) else notes)


def _last_positions(keys: list[str]) -> dict[str, int]:
    """Each key's last position (one key may be in two shards)."""
    return dict(zip(keys, range(len(keys))))


def _split_all(keys: list[str]) -> tuple[list[str], list[str]]:
    """Each key split once, at its last dot, into its module's name, one string per distinct name (a weight
    and its scale share their layers' name, which the layers keep), and its leaf."""
    splits = list(map(str.rpartition, keys, repeat(".")))
    module_names: dict[str, str] = {}
    modules = list(map(module_names.setdefault, *itertools.tee(map(itemgetter(0), splits))))
    return modules, list(map(itemgetter(2), splits))


def _listed_all(columns: EntryColumns, leaves: list[str], key_set: Collection[str]) -> list[bool]:
    """`_listed` of each tensor: its first test (`is_weight`) on the columns, the rest on its Entry."""
    listed = list(map(operator.and_, map(_WEIGHT_DTYPES.__contains__, columns.dtypes),
                      map(operator.not_, map(_BUFFER_LEAVES.__contains__, leaves))))  # `_is_weight`, in C
    for position in itertools.compress(range(len(leaves)), map(operator.not_, listed)):
        listed[position] = _listed(columns.entry(position), key_set)
    return listed


def layers_from_columns(columns: EntryColumns) -> LayerTable | tuple[Layer, ...]:
    """`layers_from_entries` of tensors given as columns, as a LayerTable: one layer computed per template (the
    entries of one `_kin` and leaf; an entry of no kin is a template of its own) from its first entry, the
    others copied when read. Where one of a kin has no template (a packed or bnb 4-bit weight, a scale whose
    weight is elsewhere: `_layer`), the layers of every entry, computed as `layers_from_entries` does."""
    keys = columns.keys
    positions = _last_positions(keys)
    by_key = _ByKey(columns, positions)
    key_set = by_key.keys()
    modules, leaves = _split_all(keys)
    listed = _listed_all(columns, leaves, key_set)
    shapes = _Shapes(keys, columns.shapes, listed, positions)
    kin = _kin(columns.shapes, columns.dtypes, modules, leaves, len(positions) == len(keys))
    at = list(itertools.compress(range(len(keys)), listed))  # each layer's position
    kin_at = list(map(kin.__getitem__, at))
    alike: list[Hashable] = list(zip(kin_at, map(leaves.__getitem__, at)))
    if None in kin_at:  # an entry of no kin: a template of its own (each found by a search in C)
        index = -1
        with contextlib.suppress(ValueError):  # past the last one
            while True:
                index = kin_at.index(None, index + 1)
                alike[index] = at[index]
    numbering = Numbering()
    numbers = list(map(numbering.__getitem__, alike))
    firsts = list(map(first_positions(numbers).__getitem__, range(len(numbering))))
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    templates: list[Layer] = []
    copiers: list[KinTemplate | None] = []
    for index in firsts:
        layer, template = _layer(columns.entry(at[index]), by_key, key_set, shapes, shared)
        if template is None and isinstance(alike[index], tuple):  # alike entries it cannot copy to
            return _layers(columns, by_key, None, None)
        templates.append(layer)
        copiers.append(template)
    params = list(map(keys.__getitem__, at))
    names = list(map(modules.__getitem__, at))
    if "" in names:  # a key without a dot is its own layer's name
        names = [module or key for module, key in zip(names, params)]
    data_at = columns.data

    def make(index: int) -> Layer:
        number = numbers[index]
        if firsts[number] == index:
            return templates[number]
        template, key = copiers[number], params[index]
        assert template is not None  # a template of its own has one layer, its first
        data = data_at(at[index]) if template.scaled is None else template.data_of(key, by_key)
        return template.apply(key, names[index], data)

    digits = None if columns.digits is None else list(map(columns.digits.__getitem__, at))
    return LayerTable(params, names, numbers, templates, make, digits)


def _layers(columns: EntryColumns, by_key: Mapping[str, Entry], identities: list[Hashable] | None,
            notes: list[tuple[str, ...]] | None) -> tuple[Layer, ...]:
    """The layers of `columns` (`by_key`: key -> its last Entry), each entry's `identities` and `notes` where
    any has one: a layer computed per distinct entry (`_kin`), copied for the rest."""
    keys = columns.keys
    key_set = by_key.keys()  # a view: no second 92,000-key set
    modules, leaves = _split_all(keys)
    listed = _listed_all(columns, leaves, key_set)
    shapes = _Shapes(keys, columns.shapes, listed, _last_positions(keys))
    first: dict[Hashable, int] = {}
    layers: list[Layer] = []
    aliases: dict[int, list[str]] = {}
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    templates: dict[tuple, KinTemplate | None] = {}
    entry_at, data_at = columns.entry, columns.data
    kin = _kin(columns.shapes, columns.dtypes, modules, leaves)
    for position, key, kept, number, module, leaf in zip(itertools.count(), keys, listed, kin, modules, leaves):
        if not kept:
            continue
        identity = None if identities is None else identities[position]
        if identity is not None:
            if identity in first:
                aliases.setdefault(first[identity], []).append(key)
                continue
            first[identity] = len(layers)
        if number is None:
            layers.append(_layer(entry_at(position), by_key, key_set, shapes, shared)[0])
            continue
        alike = (number, leaf, () if notes is None else notes[position])
        template = templates.get(alike)
        if template is None:
            layer, templates[alike] = _layer(entry_at(position), by_key, key_set, shapes, shared)
            layers.append(layer)
        elif template.scaled is None:
            layers.append(template.apply(key, module, data_at(position)))
        else:
            layers.append(template.apply(key, module, template.data_of(key, by_key)))
    for index, names in aliases.items():
        layer = layers[index]
        note = f"shared with {', '.join(names)} (tied weights, reported once)"
        layers[index] = replace(layer, aliases=tuple(names), notes=layer.notes + (note,))
    return tuple(layers)
