"""A sharded checkpoint's index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`): which
reader its shards get, decided by what the first shard holds, not by the index's name.

Both indexes have the same `weight_map` (key -> shard file name). safetensors shards are read header by
header (`safetensors_file.sharded_model`); torch.save shards (`.bin`) each as a single `.pt` file is, by
fancli's own readers, lazily (no tensor data without `--stats`) and without torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import SourceError
from ..layer import Layer, Model
from ..summary import layers_totals
from . import LoadOptions, loader, sniff_file
from .entry import Entry
from .flat import Flat
from .flat_keys import layers_from_entries
from .formats import FORMATS
from .key_order import natural_key
from .safetensors_file import read_weight_map, shard_path, sharded_model

_TORCH_FILES = ("zip", "pickle")


def _kind(index: Path, shard: str) -> str | None:
    """A shard's sniffed format, or None where it cannot be opened (its reader then says why)."""
    path = shard_path(index, shard)
    try:
        return sniff_file(path, str(path))[0]
    except (SourceError, OSError):
        return None


def load_index(path: Path, options: LoadOptions) -> Model:
    """Either kind of index: torch.save shards when the first one is a zip or pickle, safetensors otherwise;
    the parameter count the index states is held against the one fancli counts."""
    weight_map, stated = read_weight_map(path)
    shards = sorted(dict.fromkeys(weight_map.values()), key=natural_key)
    first = _kind(path, shards[0]) if shards else None
    if first in _TORCH_FILES:
        model = torch_shards_model(path, shards, options, first)
    else:
        model = sharded_model(path, weight_map)
    note = stated_total(path, stated, model.layers)
    return replace(model, notes=(*model.notes, note)) if note else model


def stated_total(index: Path, stated: Any, layers: Sequence[Layer]) -> str | None:
    """A note where the index's `metadata.total_parameters` (transformers writes `num_parameters()`: each
    parameter once, no buffers) is not a count, or is not the parameter total fancli counts."""
    if stated is None:
        return None
    if type(stated) is not int or stated < 0:
        return f"{index.name}: metadata.total_parameters is not a count of parameters: not compared"
    counted = layers_totals(layers).parameters
    if stated == counted:
        return None
    return (f"{index.name} states metadata.total_parameters = {stated:,}, but its tensors hold {counted:,} "
            f"parameters ({counted - stated:+,})")


def _model_entries(shard: str, model: Model) -> Iterator[Entry]:
    """The entries of a shard torch's own loader read (a tensor type fancli's reader does not list, or
    --trust): its layers as the entries they came from, ties kept (one identity for a tensor and its
    aliases). Such a Model's layers carry no notes of a reader's own."""
    for layer in model.layers:
        identity = (shard, layer.param) if layer.aliases else None
        yield Entry(layer.param, layer.shape, layer.dtype or "", layer.data, identity)
        for alias in layer.aliases:
            yield Entry(alias, layer.shape, layer.dtype or "", layer.data, identity)


def _read_shard(index: Path, shard: str, options: LoadOptions, kind: str | None) -> Flat | Model:
    """One shard's entries, read as the same file given alone would be (`kind`, where already sniffed);
    its errors name the index and the shard."""
    path = shard_path(index, shard)
    where = f"{index}: shard {shard!r}"
    if kind is None:
        try:
            kind = sniff_file(path, where)[0]
        except OSError as error:
            raise SourceError(f"{where}: cannot read: {error.strerror or error}") from None
    if kind not in _TORCH_FILES:
        raise SourceError(f"{where}: not a torch.save file, as the index's first shard is ({kind})")
    try:
        return loader(FORMATS[kind].entries)(path, options)
    except SourceError as error:
        message = str(error)
        raise SourceError(f"{where}: {message.removeprefix(f'{path}: ')}") from None


def torch_shards_model(index: Path, shards: list[str], options: LoadOptions, first: str | None = None) -> Model:
    """torch.save shards in the order of their names (`-00001-of-00002` first): sharding splits a state_dict
    in model order, and each shard keeps its own (pickles keep dict order), so this is the model's order.
    The entries of all shards are built into layers together: a bias may lie in another shard than its
    weight. `first` is the first shard's format, where the index already sniffed it."""
    entries: list[Entry] = []
    notes: list[str] = []
    format = None
    for number, shard in enumerate(shards):
        read = _read_shard(index, shard, options, first if number == 0 else None)
        format = format or read.format
        entries.extend(read.entries if isinstance(read, Flat) else _model_entries(shard, read))
        notes.extend(read.notes)
    layers = layers_from_entries(entries)
    if not layers:
        raise SourceError(f"{index}: its shards hold no floating-point weights")
    notes.append(f"{len(shards)} torch.save shard{'s' if len(shards) > 1 else ''} listed by {index.name}")
    return replace(Model(source=str(index), format=format or "torch-zip", layers=layers),
                   notes=tuple(dict.fromkeys(notes)))
