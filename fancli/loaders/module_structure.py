"""What a module's class tells about its parameters, whichever source named the class.

Live modules, TorchScript archives and torch.export archives all record the class that owns each
parameter; this module turns (class, structure, parameter) into a Layer without importing torch, so
the archive readers that must not run torch's loaders share one classification with the live path.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable

from ..kinds import KIND_OF_CLASS, RECURRENT_PARAM, REINITIALISING
from ..kinds import kind as layer_kind
from ..layer import Layer
from ..records import record
from ..weights.tensors import TensorData

#: HF transformers' GPT-2 `Conv1D`: a linear layer whose weight is stored [in, out].
HF_CONV1D = "Conv1D"
_STACKED_QKV = ("in_proj_weight", "in_proj_bias")


#: Names of fused q/k/v projections (GPT-2 `c_attn`, Falcon `query_key_value`, Phi-3 `qkv_proj`, MPT `Wqkv`).
FUSED_QKV_NAME = re.compile(r"(^|\.)(qkv|qkv_proj|query_key_value|c_attn|wqkv|Wqkv)$")


def fused_qkv(module: str) -> dict[str, Any]:
    """Layer fields for a fused q/k/v projection whose split the source does not show: with grouped- or
    multi-query attention, k and v have fewer rows than q, so "three equal thirds" would be a guess."""
    return dict(unknown_fans=("fan_out",), notes=(unsplit_note(module),))


def unsplit_note(module: str) -> str:
    """The note of a fused q/k/v projection whose split the source does not show (a config.json's heads,
    where they split it, take its place: `hf_config`)."""
    name = module.rpartition(".")[2]
    return (f"fused q/k/v projection {name!r}: how its rows split into q, k and v is not in this source "
            "(grouped-query attention splits them unequally), so the effective fan_out is unknown; "
            "a YAML spec gives it")


def is_conv(class_name: str | None) -> bool:
    return layer_kind(KIND_OF_CLASS.get(class_name or "", "unknown")).is_conv


@record
class Owner:
    """The module that owns a parameter, as far as the source tells."""

    name: str  # qualified module name, "" for the root
    class_name: str | None  # torch.nn class (or the closest base that fancli knows); None when unknown
    groups: int | None = None
    stride: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    in_out: bool = False  # weight stored [in, out] (HF Conv1D)
    note: str | None = None  # why a structure the kind implies is missing

    @property
    def kind(self) -> str:
        if self.class_name == HF_CONV1D and self.in_out:
            return "linear"
        return KIND_OF_CLASS.get(self.class_name or "", "unknown")


def ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def expand(value: Any, dims: int) -> tuple[int, ...]:
    """A conv argument as one int per spatial dim (ops accept a single value for all)."""
    values = ints(value if isinstance(value, (list, tuple)) else [value]) or ()
    return values * dims if len(values) == 1 else values


def module_layer(key: str, shape: tuple[int, ...], dtype: str | None, owner: Owner, data: TensorData | None,
                 aliases: tuple[str, ...] = ()) -> Layer:
    """One Layer for a parameter, with the structure its owning module gives the weight."""
    leaf = key[len(owner.name) + 1 :] if owner.name else key
    kind, record = owner.kind, layer_kind(owner.kind)
    structure: dict[str, Any] = {}
    notes: list[str] = []
    if record.is_conv and leaf == "weight":
        structure = dict(groups=owner.groups, stride=owner.stride, dilation=owner.dilation,
                         transposed=record.transposed)
    elif (record.gates or 0) > 1 and RECURRENT_PARAM.match(leaf):
        structure = dict(stacked=record.gates)
    elif kind == "multihead_attention" and leaf in _STACKED_QKV:
        structure = dict(stacked=3)
    elif owner.in_out and leaf == "weight":
        structure = dict(layout="in_out")
    if kind == "linear" and leaf == "weight" and FUSED_QKV_NAME.search(owner.name):
        fused = fused_qkv(owner.name)
        structure["unknown_fans"] = fused["unknown_fans"]
        notes += fused["notes"]
    if owner.note:
        notes.append(owner.note)
    elif kind == "unknown":
        what = owner.class_name or "its module"
        notes.append(f"{what}: not a module type fancli knows; the fans follow from the shape alone")
    if aliases:
        notes.append(f"shared with {', '.join(aliases)} (tied weights, reported once)")
    return Layer(name=owner.name or key, param=key, kind=kind, shape=shape, dtype=dtype, aliases=aliases,
                 notes=tuple(notes), data=data, **structure)


def with_reinit(layers: tuple[Layer, ...], class_of: Callable[[str], str | None]) -> tuple[Layer, ...]:
    """Layers under a module that re-initialises its children (nn.Transformer), marked with that module's
    class, so torch_default says what torch really draws. `class_of(path)` names a module's class."""
    marked = []
    for layer in layers:
        parts = layer.param.split(".")[:-1]
        ancestors = ("".join(f"{part}." for part in parts[:depth]).rstrip(".") for depth in range(len(parts) + 1))
        found = next((cls for cls in map(class_of, ancestors) if cls in REINITIALISING), None)
        marked.append(replace(layer, reinit_by=found) if found and len(layer.shape) >= 2 else layer)
    return tuple(marked)
