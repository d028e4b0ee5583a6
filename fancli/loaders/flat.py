"""What a flat reader (a state_dict's, a shard's) hands on: a file's entries, before layers are built.

Layers are built once from all the entries of a source: a sharded checkpoint's bias may lie in another
shard than its weight, and what a reader knows of one tensor (`Entry.notes`) reaches its layer whole.
"""

from __future__ import annotations

from ..errors import SourceError
from ..layer import Model
from ..records import record
from .entry import Entry
from .flat_keys import layers_from_entries


@record
class Flat:
    """One file's tensors as read: the file, the format its Model will name, its entries and its notes."""

    source: str
    format: str
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()


def built(flat: Flat) -> Model:
    """The Model of a flat file: its layers built from its entries in one pass."""
    layers = layers_from_entries(flat.entries)
    if not layers:
        raise SourceError(f"{flat.source}: holds no floating-point weights")
    return Model(source=flat.source, format=flat.format, layers=layers, notes=flat.notes)
