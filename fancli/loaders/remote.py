"""Remote sources: a safetensors file, an index and its shards, or a folder (Hugging Face layout), read by
byte range through any fsspec filesystem (s3://, gs://, http(s)://, and the Hub's `HfFileSystem`).

Header only unless the weights' bytes are asked for: per shard one ranged request of FIRST_RANGE bytes
holds the 8-byte length and, mostly, the header (huggingface_hub's `get_safetensors_metadata` does the
same), a second only for a longer one; the index and config.json are read whole, within the caps local
files have. The header is validated by `safetensors_file`, the same code as a local file's. Tensors get
`RemoteRange` handles: `--stats` reads each tensor's bytes once, in ranged pieces, in whichever thread
or Dask worker reduces them. Nothing is written to disk.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import PurePosixPath
from typing import Any

from ..errors import SourceError
from ..layer import Model
from ..safe_io import parse_json_object
from . import LoadOptions, describe_text, sniff
from .folder import MAX_ENTRIES, model_file, with_note
from .formats import FORMATS, SNIFF_BYTES, config_applies
from .hf_config import MAX_CONFIG_BYTES, NAME, apply_config
from .remote_io import RemoteRange, call, fetch, file_size, filesystem, refuse_offline, shown
from .safetensors_file import (
    MAX_INDEX_BYTES,
    header_length,
    model_from_header,
    model_from_shards,
    parse_header,
    parse_weight_map,
    shard_name,
)
from .sharded import stated_total

#: The first request of a header: the length and, for nearly every file, the whole header (huggingface_hub's).
FIRST_RANGE = 100_000
#: Shard headers fetched at once (a 30-shard checkpoint: a few round trips, not thirty).
SHARD_THREADS = 8


def load_url(source: str, options: LoadOptions) -> Model:
    """A model at an s3://, gs:// or http(s):// URL (a file, an index, or, but over HTTP, a folder)."""
    fs, path = filesystem(source)
    return load_remote(fs, path, source, options)


def load_remote(fs: Any, root: str, source: str, options: LoadOptions) -> Model:
    """The model at `root` in the fsspec filesystem `fs` (a safetensors file, an index with its shards, or a
    folder whose layout names one), reported as `source` (shown without credentials or query). `options`
    as every loader gets them: safetensors holds no code, so nothing in them changes what is read."""
    refuse_offline(source)
    where = shown(source)
    info = call(where, fs.info, root)
    if info.get("type") != "directory":
        return _load_file(fs, root, where, info)
    listing = call(where, fs.ls, root, detail=True)
    if len(listing) > MAX_ENTRIES:
        raise SourceError(f"{where}: a folder of more than {MAX_ENTRIES} entries; give the model file")
    files = {posixpath.basename(entry["name"].rstrip("/")): entry for entry in listing if entry.get("type") == "file"}
    name, note = model_file(sorted(files), where)
    path = f"{root.rstrip('/')}/{name}"
    return with_note(_load_file(fs, path, f"{where.rstrip('/')}/{name}", files[name]), where, note)


def _beside(path: str, name: str) -> str:
    """The path of the file `name` in the folder of `path` (an HTTP URL's query, a signature, not kept)."""
    base = path.split("?", 1)[0] if "://" in path else path
    return f"{base.rpartition('/')[0]}/{name}"


def _first(fs: Any, path: str, where: str, info: dict | None = None) -> tuple[str, bytes, int]:
    """A remote file's format (`sniff`'s name), its first FIRST_RANGE bytes (one request) and its size (from
    `info`, its metadata where already fetched)."""
    size = file_size(fs, path, where, info)
    first = fetch(fs, path, 0, min(size, FIRST_RANGE), where)
    name = PurePosixPath(path.split("?", 1)[0])
    return sniff(first[:SNIFF_BYTES], name, size), first, size


def _refused(kind: str, first: bytes, where: str) -> SourceError:
    """Why a remote file is not read: only safetensors files and indexes are read by range."""
    if kind == "empty":
        return SourceError(f"{where}: empty file")
    if kind == "text":
        return SourceError(f"{where}: {describe_text(first[:SNIFF_BYTES])}")
    what = FORMATS[kind].what if kind in FORMATS else "not a format fancli reads"
    return SourceError(f"{where}: {what}: fancli reads only safetensors files and their indexes from a remote "
                       "source (download it to read it)")


def _header(fs: Any, path: str, where: str, first: bytes, size: int) -> Any:
    """A safetensors header from the first range, and a second request only where it is longer."""
    end = 8 + header_length(first, size, where)
    raw = first[8:end] if end <= len(first) else first[8:] + fetch(fs, path, len(first), end, where)
    return parse_header(raw, size, where)


def _load_file(fs: Any, path: str, where: str, info: dict) -> Model:
    kind, first, size = _first(fs, path, where, info)
    if kind == "safetensors":
        model = model_from_header(where, partial(RemoteRange, fs, path, where), _header(fs, path, where, first, size))
    elif kind == "json":
        model = _index(fs, path, where, first, size)
    else:
        raise _refused(kind, first, where)
    return _with_config(model, fs, _beside(path, NAME), _beside(where, NAME))


def _shard(fs: Any, path: str, where: str) -> tuple[Any, Any]:
    kind, first, size = _first(fs, path, where)
    if kind != "safetensors":
        raise _refused(kind, first, where)
    return partial(RemoteRange, fs, path, where), _header(fs, path, where, first, size)


def _index(fs: Any, path: str, where: str, first: bytes, size: int) -> Model:
    """A sharded checkpoint from its index (read whole, within the local cap) and its shards' headers."""
    if size > MAX_INDEX_BYTES:
        raise SourceError(f"{where}: larger than {MAX_INDEX_BYTES} bytes, too large for a sharded checkpoint's index")
    weight_map, stated = parse_weight_map(first + fetch(fs, path, len(first), size, where), where)
    shards = [shard_name(shard, where) for shard in dict.fromkeys(weight_map.values())]

    def read(shard: str) -> tuple[Any, Any]:
        return _shard(fs, _beside(path, shard), f"{where}: shard {shard[:100]!r}")

    with ThreadPoolExecutor(max(min(SHARD_THREADS, len(shards)), 1), thread_name_prefix="fancli-headers") as pool:
        headers = dict(zip(shards, pool.map(read, shards)))
    model = model_from_shards(where, weight_map, headers.__getitem__)
    note = stated_total(PurePosixPath(where), stated, model.layers)  # type: ignore[arg-type]
    return replace(model, notes=(*model.notes, note)) if note else model


def _info_if_any(fs: Any, path: str) -> dict | None:
    """A file's metadata, or None where it is not there (fsspec's HTTP also says so for a server gone)."""
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _with_config(model: Model, fs: Any, path: str, where: str) -> Model:
    """The model with a config.json beside the weights applied, where there is one (read within the local cap)."""
    if not config_applies(model.format):
        return model
    try:
        found = call(where, _info_if_any, fs, path)
        if found is None:
            return model
        size = found.get("size")
        if type(size) is not int or size > MAX_CONFIG_BYTES:
            raise SourceError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes, too large for a config.json")
        config = parse_json_object(fetch(fs, path, 0, size, where), where, NAME)
    except SourceError as error:
        return replace(model, notes=(*model.notes, f"{NAME} beside the weights not used: {error}"))
    return apply_config(model, config, where)
