"""safetensors checkpoints: one `.safetensors` file, or the shards a `model.safetensors.index.json` lists.

The header is parsed here, not by `safetensors.safe_open`: that imports numpy and hides the byte offsets
(`data_offsets`) that streamed statistics need. Only the header is read at load time; tensor bytes are
read on demand through `FileRange` (a remote file's: `remote_io.RemoteRange`, its header read by
`remote.py` and validated here by `parse_header`). safetensors writers sort tensors by dtype and name, so a
file does not record the model's order: tensors come in the natural order of their keys (`layers.2` before
`layers.10`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import replace
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, itemgetter, mul, sub
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, NamedTuple, Sequence

from ..errors import SourceError
from ..kinds import kind
from ..layer import BuiltBy, Layer, Model
from ..safe_io import (
    FileRange,
    check_json_size,
    open_regular,
    parse_json,
    parse_json_object,
    read_bounded,
)
from ..weights.dtypes import DTYPES
from ..weights.tensors import ByteSource, StridedRef, row_major_strides, strided_ref
from .entry import Entry, EntryColumns
from .flat_keys import layers_from_columns, layers_from_entries
from .key_order import is_sorted, natural_order
from .safetensors_dtypes import SAFETENSORS_DTYPES
from .links import leads_outside, link_root

if TYPE_CHECKING:
    from . import LoadOptions

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_INDEX_BYTES = 64 * 1024 * 1024
#: Headers and indexes at least this long are decoded by msgspec (`safetensors_typed`; the `fast` extra) where it
#: is installed, which checks each entry's types in C while it parses; shorter ones by the stdlib's json, already
#: imported: below this size importing msgspec (~11 ms) costs more than it saves.
TYPED_PARSE_BYTES = 32 * 1024
_LENGTH_BYTES = 8
_MAX_BITS = 8 << 63  # no file holds more: a shape beyond it is reported without its exact size
_FIELDS = ("dtype", "shape", "data_offsets")
_INT = frozenset((int,))



class _Tensor(NamedTuple):
    """One header entry, validated: dtype as torch names it, shape, and byte offsets in the data section
    (a tuple: 90,000 of them are held while a sharded checkpoint's headers are read)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class Header(NamedTuple):
    """A validated header (a tuple, not a dataclass: cheaper to define at start-up)."""

    tensors: dict[str, _Tensor]  # in header order
    metadata: dict[str, str]
    data_start: int  # file offset of the data section: 8 + header length
    ties: dict[str, list[str]]  # kept key -> keys dropped as its duplicates
    data_size: int  # bytes in the data section


def _ties(metadata: dict[str, str], tensors: dict[str, _Tensor]) -> dict[str, list[str]]:
    """`safetensors.torch.save_model` drops tied tensors and notes `dropped: kept` in __metadata__."""
    tied: dict[str, list[str]] = {}
    for dropped, kept in metadata.items():
        if kept in tensors and dropped not in tensors:
            tied.setdefault(kept, []).append(dropped)
    return tied


def _show(value: Any) -> str:
    """A value for an error message: one short line, whatever a hostile header holds."""
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "…"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bits_needed(shape: tuple[int, ...], bits: int, limit: int) -> int | None:
    """numel × bits, or None once past `limit`: a hostile shape must not build a huge integer."""
    if 0 in shape:
        return 0
    total = bits
    for dim in shape:
        total *= dim
        if total > limit:
            return None
    return total


def _bytes(bits: int | None) -> str:
    if bits is None:
        return "more than 2**63 bytes"
    return f"{bits // 8} bytes" if bits % 8 == 0 else f"{bits / 8} bytes"


def header_length(prefix: bytes, size: int, where: str) -> int:
    """The header length the first 8 bytes of a `size`-byte file state, checked against the caps and the size
    (local files and remote ones alike)."""
    if len(prefix) < _LENGTH_BYTES:
        raise SourceError(f"{where}: {size} bytes: too short for a safetensors file (8-byte header length)")
    length = int.from_bytes(prefix[:_LENGTH_BYTES], "little")
    if length > size and prefix[:_LENGTH_BYTES].isascii() and prefix[:_LENGTH_BYTES].decode("ascii").isprintable():
        # text, not a length: its bytes as a number would quote the file (`root:x:0` of /etc/passwd)
        raise SourceError(f"{where}: not a safetensors file (it starts with text, not a header length)")
    if length > MAX_HEADER_BYTES:
        raise SourceError(f"{where}: header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if _LENGTH_BYTES + length > size:
        raise SourceError(f"{where}: header length {length} runs past the end of the {size}-byte file")
    return length


def _read_raw_header(path: Path, where: str) -> tuple[bytes, int]:
    """The header's bytes and the file's size, reading nothing past the header."""
    try:
        with open_regular(path, where) as handle:  # a shard named by an index may be a FIFO
            size = os.fstat(handle.fileno()).st_size
            length = header_length(handle.read(_LENGTH_BYTES), size, where)
            raw = handle.read(length)
    except OSError as error:
        raise SourceError(f"{where}: cannot read: {error.strerror or error}") from None
    if len(raw) != length:
        raise SourceError(f"{where}: the file ended inside its header")
    return raw, size


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SourceError(f"{where}: __metadata__ must map strings to strings")
    return value


def _is_unicode(text: str) -> bool:
    """JSON's `\\ud800` escapes can spell lone surrogates, which are no text: the safetensors library
    refuses them, and no output encoding can show them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _well_formed(key: str, value: Any, data_size: int) -> _Tensor | None:
    """The entry, where it passes every check of `_tensor` by the common path (a str key that is valid
    Unicode, a dict of exactly the three fields, plain ints): a few type tests, not a dozen calls. None
    sends the entry through `_tensor`'s checks, which say what is wrong."""
    if type(value) is not dict or len(value) != 3 or not key.isascii() and not _is_unicode(key):
        return None
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if type(dtype) is not str or type(shape) is not list or type(offsets) is not list or len(offsets) != 2:
        return None
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not _INT.issuperset(map(type, shape)):  # no bool, no float
        return None
    return _fits(key, dtype, tuple(shape), begin, end, data_size)


@functools.lru_cache(maxsize=4096)
def _size(dtype: str, shape: tuple[int, ...]) -> tuple[str, int, tuple[int, ...]] | None:
    """Torch's name for a known dtype, the bits a shape of non-negative dims holds (at most _MAX_BITS) and
    the first equal shape seen, which tensors alike then share; None otherwise. Cached: a checkpoint has a
    few hundred (dtype, shape) pairs among 90,000 tensors."""
    known = SAFETENSORS_DTYPES.get(dtype)
    if known is None:
        return None
    needed = known[1]
    for dim in shape:
        if dim < 0:
            return None
        needed *= dim
        if needed > _MAX_BITS:
            return None
    return known[0], needed, shape


def _fits(key: str, dtype: str, shape: tuple[int, ...], begin: int, end: int, data_size: int) -> _Tensor | None:
    """The entry, where its dtype is known, its ints are non-negative and its offsets lie in the data and hold
    exactly shape × itemsize; None otherwise."""
    size = _size(dtype, shape)
    if size is None or not 0 <= begin <= end <= data_size or size[1] != 8 * (end - begin):
        return None
    return _Tensor(key, size[0], size[2], begin, end)


def _tensor(key: str, value: Any, data_size: int, where: str) -> _Tensor:
    """Validate one header entry against the format and the file's size."""
    fast = _well_formed(key, value, data_size)
    if fast is not None:
        return fast
    at = f"{where}: tensor {_show(key)}"
    if not _is_unicode(key):
        raise SourceError(f"{at}: the name is not valid Unicode (a lone surrogate)")
    if not isinstance(value, dict):
        raise SourceError(f"{at}: expected an object with dtype, shape and data_offsets")
    missing = [field for field in _FIELDS if field not in value]
    if missing:
        raise SourceError(f"{at}: missing {', '.join(missing)}")
    dtype, shape, offsets = (value[field] for field in _FIELDS)
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise SourceError(f"{at}: unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise SourceError(f"{at}: shape must be a list of non-negative integers, not {_show(shape)}")
    pair = isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
    if not pair or offsets[0] > offsets[1]:
        raise SourceError(f"{at}: data_offsets must be [begin, end] with 0 <= begin <= end, not {_show(offsets)}")
    begin, end = offsets
    if end > data_size:
        raise SourceError(f"{at}: data_offsets {offsets} run past the end of the file ({data_size} data bytes)")
    name, bits = SAFETENSORS_DTYPES[dtype]
    needed = _bits_needed(tuple(shape), bits, _MAX_BITS)
    if needed != 8 * (end - begin):
        raise SourceError(
            f"{at}: data_offsets hold {end - begin} bytes but shape {_show(shape)} of {dtype} needs {_bytes(needed)}"
        )
    return _Tensor(key, name, tuple(shape), begin, end)


_SPAN = attrgetter("begin", "end")


def _check_coverage(tensors: Collection[_Tensor], data_size: int, where: str) -> None:
    """Tensors may neither overlap nor leave bytes unclaimed: the format forbids both (no polyglot files).
    Sorted by offsets, each must begin where the one before ends, the first at 0 and the last at the end
    (checked on the flat list of offsets, in C); where not, the walk below says where."""
    flat = list(chain.from_iterable(sorted(map(_SPAN, tensors))))
    if (flat[0] == 0 and flat[-1] == data_size and flat[1:-1:2] == flat[2::2]) if flat else data_size == 0:
        return
    position = 0
    last: _Tensor | None = None
    for tensor in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if tensor.begin < position and last is not None:
            raise SourceError(
                f"{where}: tensors {_show(last.key)} and {_show(tensor.key)} overlap "
                f"(data_offsets [{last.begin}, {last.end}] and [{tensor.begin}, {tensor.end}])"
            )
        if tensor.begin > position:
            raise SourceError(f"{where}: data bytes {position}–{tensor.begin} belong to no tensor")
        if tensor.end > position:
            position, last = tensor.end, tensor
    if position < data_size:
        raise SourceError(f"{where}: data bytes {position}–{data_size} belong to no tensor")


def _read_header(path: Path, where: str) -> Header:
    """Read and validate a safetensors header; every problem is one SourceError line starting with `where`."""
    return parse_header(*_read_raw_header(path, where), where)


def _typed() -> Any:
    """The msgspec decoders (`safetensors_typed`) where msgspec is installed, else None: the stdlib path reads."""
    try:
        from . import safetensors_typed
    except ModuleNotFoundError as error:
        if error.name != "msgspec":
            raise
        return None
    return safetensors_typed


def _typed_tensors(raw: bytes, data_size: int, where: str) -> tuple[dict[str, str], dict[str, _Tensor]] | None:
    """The metadata and tensors of a header msgspec decodes and every entry of which `_fits`; None else."""
    typed = _typed()  # imported only for a long header
    if typed is None:
        return None
    check_json_size(raw, where, "header")
    decoded = typed.decode_entries(raw)
    if decoded is None:
        return None
    metadata, entries = decoded
    tensors = _all_fit(entries, data_size)
    if tensors is None:
        tensors = {}
        for key, entry in entries.items():
            tensor = _fits(key, entry.dtype, entry.shape, *entry.data_offsets, data_size)
            if tensor is None:
                return None
            tensors[key] = tensor
    return metadata, tensors


_DTYPE_SHAPE = attrgetter("dtype", "shape")
_OFFSETS = attrgetter("data_offsets")


def _all_fit(entries: dict[str, Any], data_size: int) -> dict[str, _Tensor] | None:
    """`_fits` of every msgspec entry (known dtype, non-negative ints: msgspec checked), list by list in C: each
    holds exactly shape × itemsize bytes (so begin <= end) and none ends past the data; None where any does
    not (then `_fits`, entry by entry)."""
    if not entries:
        return {}
    keys = list(entries)
    sizes = list(map(_size, *zip(*map(_DTYPE_SHAPE, entries.values()))))
    if None in sizes:
        return None
    begins, ends = zip(*map(_OFFSETS, entries.values()))
    if max(ends) > data_size or list(map(mul, map(sub, ends, begins), repeat(8))) != list(map(itemgetter(1), sizes)):
        return None
    return dict(zip(keys, map(tuple.__new__, repeat(_Tensor), zip(
        keys, map(itemgetter(0), sizes), map(itemgetter(2), sizes), begins, ends))))


def parse_header(raw: bytes, file_size: int, where: str) -> Header:
    """Validate a safetensors header from its bytes (those after the 8-byte length) and the whole file's
    size, for a local file or one read remotely; every problem is one SourceError line starting with `where`.

    A long header is decoded by msgspec, which accepts only valid entries; one it refuses is read again by the
    stdlib, whose checks say which key is wrong and how (the same checks: both paths accept the same headers).
    """
    data_start = _LENGTH_BYTES + len(raw)
    data_size = file_size - data_start
    if data_size < 0:
        raise SourceError(f"{where}: header length {len(raw)} runs past the end of the {file_size}-byte file")
    tensors = _typed_tensors(raw, data_size, where) if len(raw) >= TYPED_PARSE_BYTES else None
    if tensors is None:
        header = parse_json_object(raw, where, "header")
        metadata = _metadata(header.pop("__metadata__", None), where)
        tensors = {key: _tensor(key, value, data_size, where) for key, value in header.items()}
    else:
        metadata, tensors = tensors
    _check_coverage(tensors.values(), data_size, where)
    return Header(tensors, metadata, data_start, _ties(metadata, tensors), data_size)


#: (file offset, byte count) -> a handle on those bytes of one file (`FileRange` of a path; a remote range).
Ranges = Callable[[int, int], ByteSource]


@functools.lru_cache(maxsize=4096)
def _extent(shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], int, int]:
    """A contiguous tensor's strides, elements and itemsize, cached: the 90,000 handles of a checkpoint with
    a few hundred shapes share these int objects."""
    return row_major_strides(shape), math.prod(shape), DTYPES[dtype][0]


@functools.lru_cache(maxsize=4096)
def _elements(nbytes: int, itemsize: int) -> int:
    """Whole elements in a data section: the storage size of its tensors' handles, one int a file and dtype."""
    return nbytes // itemsize


def _section(ranges: Ranges, header: Header) -> ByteSource:
    """The file's data section, which the tensors' handles share: one byte source a file, not one a tensor."""
    return ranges(header.data_start, header.data_size)


def _entry(ranges: Ranges, section: ByteSource, header: Header, tensor: _Tensor, key: str,
           identity: str | None) -> Entry:
    """An Entry with a lazy handle on the tensor's bytes (`_data`)."""
    return Entry(key, tensor.shape, tensor.dtype, _data(ranges, section, header, tensor), identity)


def _data(ranges: Ranges, section: ByteSource, header: Header, tensor: _Tensor) -> StridedRef | None:
    """A lazy handle on the tensor's bytes (at its offset in `section`, or in a range of its own where it does
    not begin on a whole element); None where fancli cannot decode the dtype."""
    dtype = tensor.dtype
    if dtype not in DTYPES:
        return None
    shape = tensor.shape
    strides, elements, itemsize = _extent(shape, dtype)
    begin = tensor.begin
    if begin % itemsize:
        return strided_ref(ranges(header.data_start + begin, tensor.end - begin), dtype, shape, strides, 0,
                              elements)
    return strided_ref(section, dtype, shape, strides, begin // itemsize, _elements(header.data_size, itemsize))


def _entries(ranges: Ranges, section: ByteSource, header: Header, keys: Iterable[str]) -> Iterator[Entry]:
    """Entries for `keys`, each followed by the keys tied to it (same identity, so reported as aliases)."""
    for key in keys:
        tensor = header.tensors[key]
        dropped = header.ties.get(key, [])
        yield _entry(ranges, section, header, tensor, key, key if dropped else None)
        for alias in dropped:
            yield _entry(ranges, section, header, tensor, alias, key)


#: `__metadata__` format -> the layout its conv weights are stored in: MLX's `save_safetensors` writes
#: {"format": "mlx"}, and its Conv and ConvTranspose weights are [out, *k, in] (`mlx.nn.Conv1d`, `ConvTranspose1d`).
CONV_LAYOUTS = {"mlx": "channels_last"}


def _notes(metadata: dict[str, str]) -> tuple[str, ...]:
    """Say so when the file was written by another framework: its kernels may be [*k, in, out]."""
    written_by = metadata.get("format")
    if written_by in CONV_LAYOUTS:
        return (f"written by {written_by} (__metadata__ format): conv weights are read {CONV_LAYOUTS[written_by]}, "
                "[out, *k, in]; a transposed conv is stored so too, and its keys do not tell it from a conv",)
    if written_by and written_by != "pt":
        return (f"written by {_show(written_by)} (__metadata__ format); weights are read in torch's layout",)
    return ()


#: `__metadata__` format -> the recipe of the framework that wrote it (its own layer defaults).
FORMAT_RECIPES = {"mlx": "mlx"}


def _built_by(headers: Iterable[Header]) -> BuiltBy | None:
    """The framework's own init where the file says which wrote it (MLX's `save_safetensors`); a folder's
    config.json, where there is one, says more and wins."""
    written_by = next((h.metadata["format"] for h in headers if h.metadata.get("format") in FORMAT_RECIPES), None)
    if written_by is None:
        return None
    return BuiltBy("", where=f"__metadata__ format {written_by}", recipe=FORMAT_RECIPES[written_by])


def _in_layout(layers: tuple[Layer, ...], headers: Iterable[Header]) -> tuple[Layer, ...]:
    """Conv weights in the layout the framework that wrote the file stores them in (MLX's channels last)."""
    layout = next((CONV_LAYOUTS[h.metadata["format"]] for h in headers if h.metadata.get("format") in CONV_LAYOUTS),
                  None)
    if layout is None:
        return layers
    return tuple(replace(layer, layout=layout) if kind(layer.kind).is_conv and len(layer.shape) >= 3
                 and layer.layout == "torch" else layer
                 for layer in layers)


def load_safetensors(path: Path, options: LoadOptions | None = None) -> Model:
    """A single `.safetensors` file: layers from its header, in natural key order; no tensor data is read."""
    return model_from_header(str(path), partial(FileRange, path), _read_header(path, str(path)))


def model_from_header(source: str, ranges: Ranges, header: Header) -> Model:
    """One safetensors file's Model from its validated header (`parse_header`), its bytes read by `ranges`."""
    keys, digits = natural_order(header.tensors)
    section = _section(ranges, header)
    slim = ranges, section, header._replace(tensors={}, ties={})  # what a handle reads of the header
    layers = layers_from_columns(_columns(keys, list(map(header.tensors.__getitem__, keys)), [slim] * len(keys),
                                          digits)) if not header.ties \
        else layers_from_entries(_entries(ranges, section, header, keys))
    return Model(source=source, format="safetensors", layers=_in_layout(layers, [header]),
                 notes=_notes(header.metadata), built_by=_built_by([header]))


def read_weight_map(path: Path) -> tuple[dict[str, str], Any]:
    """The index's `weight_map` (key -> shard file name), validated, and its `metadata.total_parameters` as
    written (transformers' `num_parameters()`; None where absent): the file is read and parsed once.
    safetensors and `.bin` indexes (`pytorch_model.bin.index.json`) have the same form."""
    return parse_weight_map(read_bounded(path, MAX_INDEX_BYTES, "a sharded checkpoint's index"), str(path))


def parse_weight_map(raw: bytes, where: str) -> tuple[dict[str, str], Any]:
    """`read_weight_map` of an index's bytes, however they were read."""
    typed = _typed() if len(raw) >= TYPED_PARSE_BYTES else None  # imported only for a long index
    if typed is not None:
        check_json_size(raw, where, "the file")
        decoded = typed.decode_index(raw)
        if decoded is not None:
            return _shared_names(decoded[0]), decoded[1]
    document = parse_json(raw, where, "the file")
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise SourceError(f"{where}: a JSON file, but not a sharded checkpoint's index (no 'weight_map')")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{where}: weight_map must be an object mapping tensor keys to shard file names")
    metadata = document.get("metadata")
    return _shared_names(weight_map), metadata.get("total_parameters") if isinstance(metadata, dict) else None


def _shared_names(weight_map: dict[str, str]) -> dict[str, str]:
    """The weight_map with one string per shard name: a parser makes one per key (90,000 copies of 163 names)."""
    names: dict[str, str] = {}
    return dict(zip(weight_map, map(names.setdefault, weight_map.values(), weight_map.values())))


def shard_name(shard: str, where: str) -> str:
    """A shard's name as an index gives it, where it names a file beside the index (no `..`, not absolute)."""
    relative = Path(shard)
    if not shard or "\0" in shard or not _is_unicode(shard) or relative.is_absolute() or ".." in relative.parts:
        raise SourceError(f"{where}: shard {_show(shard)} must be a file name beside the index")
    return shard


def shard_path(index: Path, shard: str, root: Path | None = None) -> Path:
    """Shards lie beside the index; a name that climbs out of its folder, or a symlink that leads out of
    it (out of the repo's folder, in the Hugging Face cache), is refused: an index from the internet must
    not make fancli read (and quote) another file. `root`: the index's `shards_root`, where already found."""
    path = index.parent / shard_name(shard, str(index))
    if leads_outside(path, shards_root(index) if root is None else root):
        raise SourceError(f"{index}: shard {_show(shard)} links outside the index's folder; refused")
    return path


def shards_root(index: Path) -> Path:
    """Where the index's shards may lead (`links.link_root` of its folder): found once for all its shards."""
    try:
        return link_root(index.parent)
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise SourceError(f"{index}: cannot resolve its folder ({error})") from None


def load_safetensors_index(path: Path, options: LoadOptions | None = None) -> Model:
    """A sharded safetensors checkpoint from its index.json (see `sharded_model`)."""
    return sharded_model(path, read_weight_map(path)[0])


def sharded_model(path: Path, weight_map: dict[str, str]) -> Model:
    """A sharded checkpoint beside its index `path` (see `model_from_shards`)."""

    root = shards_root(path)  # once, not per shard

    def read(shard: str) -> tuple[Ranges, Header]:
        file = shard_path(path, shard, root)
        return partial(FileRange, file), _read_header(file, f"{path}: shard {_show(shard)}")

    return model_from_shards(str(path), weight_map, read)


def model_from_shards(source: str, weight_map: dict[str, str],
                      read: Callable[[str], tuple[Ranges, Header]]) -> Model:
    """A sharded checkpoint from its index's weight_map: tensors in weight_map order, each from its shard's
    header.

    weight_map order, not shard-then-header order; transformers writes it sorted by key, which records no
    model order: a sorted weight_map is read in natural key order, as one unsharded file is, so sharding
    does not reorder a report.
    """
    keys, digits = list(weight_map), None
    if is_sorted(keys):
        keys, digits = natural_order(keys)
    shards = list(map(weight_map.__getitem__, keys))
    headers = {}
    for shard in dict.fromkeys(shards):  # in the order the keys are read
        ranges, header = read(shard)
        headers[shard] = ranges, _section(ranges, header), header
    notes = tuple(dict.fromkeys(note for _, _, header in headers.values() for note in _notes(header.metadata)))
    # The headers' metadata alone past the load: their entries are freed (the columns keep each key's own)
    written = [header._replace(tensors={}, ties={}) for _, _, header in headers.values()]
    columns = _mapped_columns(keys, shards, headers, digits)
    layers = layers_from_entries(_mapped_entries(source, keys, weight_map, headers)) if columns is None else \
        layers_from_columns(columns)
    del headers, keys, shards, columns
    return Model(source=source, format="safetensors-sharded", notes=notes, layers=_in_layout(layers, written),
                 built_by=_built_by(written))


Shard = tuple[Ranges, ByteSource, Header]  # a shard's byte ranges, data section and validated header


def _mapped_entries(source: str, keys: list[str], weight_map: dict[str, str], headers: dict[str, Shard]) -> list[Entry]:
    """Each key's Entry from the shard the index maps it to, a tied key's followed by the keys tied to it; a
    key its shard lacks is a SourceError."""
    entries: list[Entry] = []
    for key in keys:
        shard = weight_map[key]
        ranges, section, header = headers[shard]
        tensor = header.tensors.get(key)
        if tensor is None:
            raise SourceError(f"{source}: {_show(key)} is mapped to shard {_show(shard)}, which has no such tensor")
        if header.ties:
            entries.extend(_entries(ranges, section, header, [key]))
        else:  # no tied keys in this shard: one entry, no generator (92,000 keys)
            entries.append(_entry(ranges, section, header, tensor, key, None))
    return entries


def _mapped_columns(keys: list[str], shards: list[str], headers: dict[str, Shard],
                    digits: list[str] | None) -> EntryColumns | None:
    """The keys' tensors as columns, each from the shard the index maps it to (`shards`, looked up in C); None
    where a shard has tied keys, or where a key is not in its shard (`_mapped_entries` then says which)."""
    if any(header.ties for _, _, header in headers.values()):
        return None
    tensors = list(map(dict.get, map(_TENSORS, map(itemgetter(2), map(headers.__getitem__, shards))), keys))
    if None in tensors:
        return None
    slim = {shard: (ranges, section, header._replace(tensors={}, ties={}))  # what a handle reads of a header
            for shard, (ranges, section, header) in headers.items()}
    return _columns(keys, tensors, list(map(slim.__getitem__, shards)), digits)


def _columns(keys: list[str], tensors: list[_Tensor], places: Sequence[Shard],
             digits: list[str] | None) -> EntryColumns:
    """Columns of the tensors of `keys` (`digits`: their digit templates, where the natural sort made them),
    each from the file whose ranges, data section and header are at its position in `places` (a shard's)."""

    def data(position: int) -> StridedRef | None:
        return _data(*places[position], tensors[position])

    def entry(position: int) -> Entry:
        return _entry(*places[position], tensors[position], keys[position], None)

    return EntryColumns(keys, list(map(_SHAPE, tensors)), list(map(_DTYPE, tensors)), entry, data, digits)


_SHAPE, _DTYPE, _TENSORS = attrgetter("shape"), attrgetter("dtype"), attrgetter("tensors")
