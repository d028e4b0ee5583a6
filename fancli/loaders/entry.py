"""One tensor of a flat source (a state_dict, safetensors, DCP): what every flat reader hands on."""

from __future__ import annotations

from typing import Callable, Hashable, NamedTuple

from ..records import record
from ..weights.tensors import TensorData


@record
class Entry:
    """One tensor of a flat source: its key, shape, dtype, a lazy data handle and an identity for ties."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    data: TensorData | None = None
    identity: Hashable | None = None  # entries with equal identity are one tensor under several keys
    notes: tuple[str, ...] = ()  # what the reader knows of the tensor itself (a quantized or sparse one's form)

    @property
    def where(self) -> str:
        """The file it came from, for an error's first words (safetensors' and zips' byte sources have it)."""
        return str(getattr(getattr(self.data, "source", None), "path", "") or "source")


class EntryColumns(NamedTuple):
    """A flat source's tensors as columns, in order, where they are many and alike (a sharded safetensors
    checkpoint's 90,000): the layers are read from the columns, an Entry made only for a tensor whose layer
    is computed (`entry`), and for the rest their data handles alone (`data`). No tensor has an identity (no
    ties) or notes of its own."""

    keys: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    entry: Callable[[int], Entry]  # the Entry at a position
    data: Callable[[int], TensorData | None]  # its data handle
    digits: list[str] | None = None  # each key's digit template, where the natural sort made them
