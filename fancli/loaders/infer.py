"""Layers from a flat mapping of parameter keys to tensors (state_dicts, safetensors).

Such a source knows names, shapes and dtypes only. Kinds come from key names (`in_proj_weight`,
`weight_ih_l0`, `embed`) and shapes; where a fact cannot be known (groups, transposition) it stays
`None` and a note says so, unless a sibling bias proves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Hashable, Iterable

from ..kinds import KIND_OF_GATES, RECURRENT_PARAM, kind_for_ndim
from ..layer import Layer
from ..tensors import FLOATING, LOW_PRECISION_FLOATING, TensorData
from .module_structure import FUSED_QKV_NAME, fused_qkv

#: Buffers that torch's modules keep in their state_dict but that are not weights.
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_RNN_PROJECTION = re.compile(r"^weight_hr_l(\d+)(_reverse)?$")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_EMBEDDING_NAME = re.compile(r"(emb|wte|wpe|shared$)", re.IGNORECASE)

NO_STRUCTURE = (
    "from names and shapes alone: whether this conv is grouped or transposed is unknown, "
    "so only torch's fans are given"
)


@dataclass(frozen=True)
class Entry:
    """One tensor of a flat source: its key, shape, dtype, a lazy data handle and an identity for ties."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    data: TensorData | None = None
    identity: Hashable | None = None  # entries with equal identity are one tensor under several keys


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _rnn_kind(module: str, shape: tuple[int, ...], shapes: dict[str, tuple[int, ...]],
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


def _layer_for(entry: Entry, shapes: dict[str, tuple[int, ...]]) -> Layer:
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
    if len(shape) == 1:
        kind = "norm" if leaf == "weight" else "unknown"
        if leaf == "bias" and module:
            sibling = shapes.get(f"{module}.weight")
            kind = _layer_for(Entry(f"{module}.weight", sibling, entry.dtype), shapes).kind if sibling else "unknown"
        return Layer(kind=kind, **common)
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
    if 3 <= len(shape) <= 5:
        if bias and len(bias) == 1 and bias[0] != shape[0] and shape[1] and bias[0] % shape[1] == 0:
            groups = bias[0] // shape[1]
            return Layer(kind=kind_for_ndim(len(shape), transposed=True), transposed=True, groups=groups,
                         notes=(f"transposed: its bias has {bias[0]} entries, not shape[0] = {shape[0]}",), **common)
        return Layer(kind=kind_for_ndim(len(shape)), notes=(NO_STRUCTURE,), **common)
    return Layer(kind="unknown", **common)


def is_weight(entry: Entry) -> bool:
    """Floating tensors that are not known buffers: what init concerns."""
    return entry.dtype in FLOATING + LOW_PRECISION_FLOATING and _split(entry.key)[1] not in BUFFERS


def layers_from_entries(entries: Iterable[Entry]) -> tuple[Layer, ...]:
    """Layers in source order; tied tensors reported once, the other keys as aliases."""
    kept = [entry for entry in entries if is_weight(entry)]
    shapes = {entry.key: entry.shape for entry in kept}
    first: dict[Hashable, int] = {}
    layers: list[Layer] = []
    aliases: dict[int, list[str]] = {}
    for entry in kept:
        if entry.identity is not None and entry.identity in first:
            aliases.setdefault(first[entry.identity], []).append(entry.key)
            continue
        if entry.identity is not None:
            first[entry.identity] = len(layers)
        layers.append(_layer_for(entry, shapes))
    for index, names in aliases.items():
        layer = layers[index]
        note = f"shared with {', '.join(names)} (tied weights, reported once)"
        layers[index] = replace(layer, aliases=tuple(names), notes=layer.notes + (note,))
    return tuple(layers)


#: Where checkpoints keep their weights, in the order they are looked for.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema", "model_ema",
                   "params", "weights")


_NOT_WEIGHTS = ("optim", "lr_sched", "scheduler")
_MAX_NAMED = 20  # ignored keys a note names


class NoStateDict(ValueError):
    """The object holds no mapping of parameter names to tensors."""


def describe(value: object) -> str:
    """A loaded object's type the way a user would name it, with its article ("an int")."""
    if isinstance(value, dict):
        return "a dict without tensors"
    noun = {list: "list", tuple: "tuple", int: "int", float: "float", str: "string"}.get(
        type(value), type(value).__name__.lstrip("_")
    )
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


#: Containers deeper than this are not searched: no checkpoint nests its weights so deep.
MAX_DEPTH = 32


class _TensorFinder:
    """Whether a tensor lies within a value. Each container is searched once per checkpoint, whatever
    shares it: a pickle can hang one list under a million keys, or nest a list in itself."""

    def __init__(self, is_tensor) -> None:
        self.is_tensor = is_tensor
        self.known: dict[int, bool] = {}

    def __call__(self, value: object, depth: int = 0) -> bool:
        if self.is_tensor(value):
            return True
        if not isinstance(value, (dict, list, tuple)) or depth > MAX_DEPTH:
            return False
        if id(value) not in self.known:
            self.known[id(value)] = False  # while searching it: a container inside itself adds nothing
            children = value.values() if isinstance(value, dict) else value
            self.known[id(value)] = any(self(child, depth + 1) for child in children)
        return self.known[id(value)]


def key_text(key: object) -> str:
    """A mapping key as text; only scalars are spelled out (a hostile tuple key could be costly to print)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (int, float)):
        return str(key) if not isinstance(key, int) or key.bit_length() <= 64 else "<int>"
    return f"<{type(key).__name__}>"


def _flatten(mapping: dict, is_tensor, prefix: str = "", seen: set[int] | None = None, depth: int = 0) -> dict:
    """Nested dicts of tensors to one level with dotted keys, as torch's state_dicts are.

    A dict reached twice (shared by two keys) is flattened the first time only: sharing must not
    multiply the entries (a pickle can nest one dict under itself a thousand times per level).
    """
    seen = set() if seen is None else seen
    seen.add(id(mapping))
    flat: dict = {}
    for key, value in mapping.items():
        name = f"{prefix}{key_text(key)}"
        if is_tensor(value):
            flat[name] = value
        elif isinstance(value, dict) and id(value) not in seen and depth < MAX_DEPTH:
            flat.update(_flatten(value, is_tensor, f"{name}.", seen, depth + 1))
    return flat


def find_state_dict(obj: object, is_tensor) -> tuple[dict, tuple[str, ...]]:
    """The parameter mapping inside a checkpoint, and notes on where it was and what was ignored.

    Accepts a bare state_dict, `{"state_dict": …}`, `{"model": …, "optimizer": …}`, Lightning
    checkpoints and nested dicts; raises NoStateDict naming what the object is otherwise.
    """
    has_tensor = _TensorFinder(is_tensor)
    if not isinstance(obj, dict) or not has_tensor(obj):
        raise NoStateDict(describe(obj))
    path: list[str] = []
    ignored: list[str] = []
    current = obj
    visited = {id(obj)}
    while True:
        direct = [k for k, v in current.items() if is_tensor(v)]
        if direct and len(direct) * 2 >= len(current):
            break
        preferred = [k for k in STATE_DICT_KEYS if isinstance(current.get(k), dict) and has_tensor(current[k])]
        if not preferred or id(current[preferred[0]]) in visited:
            break
        choice = preferred[0]
        ignored += [key_text(k) for k in current if k != choice and has_tensor(current[k])]
        path.append(choice)
        current = current[choice]
        visited.add(id(current))
    skipped = {k for k in current if key_text(k).startswith(_NOT_WEIGHTS) and has_tensor(current[k])}
    ignored += [key_text(k) for k in skipped]
    flat = _flatten({k: v for k, v in current.items() if k not in skipped}, is_tensor, seen={id(current)})
    notes = []
    if path:
        notes.append(f"state_dict found under {'/'.join(repr(p) for p in path)}")
    if ignored:
        shown = ", ".join(repr(k) for k in ignored[:_MAX_NAMED])
        more = f" and {len(ignored) - _MAX_NAMED} more" if len(ignored) > _MAX_NAMED else ""
        notes.append(f"ignored (not model weights): {shown}{more}")
    return flat, tuple(notes)
