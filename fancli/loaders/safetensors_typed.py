"""safetensors headers and sharded checkpoints' indexes decoded by msgspec, which checks each header entry's
types in C while it parses: a known dtype, a shape of non-negative ints, two non-negative offsets (other
fields are ignored, as the stdlib path ignores them). What needs the file's size (offsets within the data,
holding exactly shape × itemsize) is checked by `safetensors_file`, on both paths."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import msgspec

from .safetensors_dtypes import SAFETENSORS_DTYPES

Count = Annotated[int, msgspec.Meta(ge=0)]


class TensorEntry(msgspec.Struct, gc=False):
    """One tensor's entry in a header, as the format defines it."""

    dtype: Literal[tuple(SAFETENSORS_DTYPES)]  # type: ignore[valid-type]
    shape: tuple[Count, ...]
    data_offsets: tuple[Count, Count]


#: The header as raw entries: `__metadata__` is an object of another type, so the entries are decoded apart.
_HEADER = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRIES = msgspec.json.Decoder(list[TensorEntry])
_METADATA = msgspec.json.Decoder(Optional[dict[str, str]])


def decode_entries(raw: bytes) -> tuple[dict[str, str], dict[str, TensorEntry]] | None:
    """The header's `__metadata__` and entries in header order; None where msgspec refuses anything (the
    stdlib path then says what and where). The entries, found as raw JSON, are decoded by one call, as a list."""
    try:
        entries = _HEADER.decode(raw)
        metadata = entries.pop("__metadata__", b"null")
        values = _ENTRIES.decode(b"[%s]" % b",".join(entries.values()))
        return _METADATA.decode(metadata) or {}, dict(zip(entries, values))
    except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
        return None


class Index(msgspec.Struct, gc=False):
    """A sharded checkpoint's index: the weight_map, and its metadata as written (any JSON; other fields
    ignored, as the stdlib path ignores them)."""

    weight_map: dict[str, str]
    metadata: msgspec.Raw = msgspec.Raw(b"null")


_INDEX = msgspec.json.Decoder(Index)


def decode_index(raw: bytes) -> tuple[dict[str, str], object] | None:
    """The index's weight_map and its `metadata.total_parameters` (None where absent); None where msgspec
    refuses anything (the stdlib path then says what)."""
    try:
        index = _INDEX.decode(raw)
        metadata = msgspec.json.decode(index.metadata)
    except (msgspec.DecodeError, RecursionError):
        return None
    return index.weight_map, metadata.get("total_parameters") if isinstance(metadata, dict) else None
