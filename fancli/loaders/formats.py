"""Every source format fancli reads, one `Format` record each: how its files are known, which loader reads
them, where it ranks among a folder's files, whether a config.json beside it applies, its dtype table.

A new format is one `register(Format(...))` line here (or in a plugin's own module); `loaders.sniff`,
`loaders.load_file`, `loaders.folder` and `hf_config` ask this registry and nothing else. Loaders are
named ".module:function" in this package (or "package.module:function" outside it) and imported only
when their format is found: this module imports nothing but the standard library, so start-up, a YAML spec and
a safetensors header never pay for torch or numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..records import record

#: How many bytes of a file its format is told from.
SNIFF_BYTES = 64
#: (the file's first SNIFF_BYTES bytes, its path, its size where known) -> whether the file is of a format.
Sniff = Callable[[bytes, Path, "int | None"], bool]


@record
class FolderRank:
    """A file name that makes a folder a model of this format: folders try ranks by `order`, lowest first;
    `pattern` is a glob on the file name, `what` names the layout in notes and errors."""

    order: int
    pattern: str
    what: str


@record
class Format:
    """One source format.

    `sniff` is asked in registry order, binary formats first; a text format (`text`) is asked only of a
    UTF-8 file not named as a binary checkpoint. `suffixes` claim a file no sniff claimed (a malformed one,
    whose loader then says what is wrong). `load` reads a file to a Model; `entries` (flat formats) reads it
    to a `flat.Flat` (or a Model, where the file is a module rather than a state_dict), as a shard of a
    sharded checkpoint is read. `config_formats` are the `Model.format`s its loader gives to which a
    config.json beside the file applies (weights without their modules). `dtypes` names its table of
    dtype codes -> (fancli's dtype name, bits per element)."""

    name: str
    what: str
    sniff: Sniff
    load: str
    entries: str | None = None
    text: bool = False
    suffixes: tuple[str, ...] = ()
    ranks: tuple[FolderRank, ...] = ()
    config_formats: tuple[str, ...] = ()
    dtypes: str | None = None


#: Format name -> Format, in the order their sniffs are asked.
FORMATS: dict[str, Format] = {}


def register(format: Format) -> Format:
    """Add a format (a later one of the same name replaces it, in its place)."""
    FORMATS[format.name] = format
    return format


def is_safetensors(head: bytes, path: Path, size: int | None) -> bool:
    """By structure: an 8-byte little-endian header length that fits the file, then a JSON object. A header
    of 384 bytes starts with `80 01`, which is also how a pickle of protocol 1 starts: this is asked first."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    return length > 0 and (size is None or 8 + length <= size)


def is_pickle(head: bytes, path: Path, size: int | None) -> bool:
    """A pickle's PROTO opcode, protocol 0 to 5."""
    return head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5


def is_zip(head: bytes, path: Path, size: int | None) -> bool:
    """A zip's local file header, or the end record of an empty one."""
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


def is_gguf(head: bytes, path: Path, size: int | None) -> bool:
    """llama.cpp's GGUF: its magic."""
    return head.startswith(b"GGUF")


def is_dcp_metadata(head: bytes, path: Path, size: int | None) -> bool:
    """A torch.distributed.checkpoint folder's `.metadata`, by name (its reader says where it is not one):
    the folder is what it describes."""
    return path.name == ".metadata"


def is_json(head: bytes, path: Path, size: int | None) -> bool:
    """Named .json, or an object not named as YAML (a flow-style `{layers: …}` spec named .yaml stays YAML)."""
    suffix = path.suffix.lower()
    return suffix == ".json" or (head.lstrip()[:1] == b"{" and suffix not in (".yaml", ".yml"))


def is_onnx(head: bytes, path: Path, size: int | None) -> bool:
    """Named .onnx and starting as a ModelProto does (field 1, ir_version, a varint): the protobuf has no magic."""
    return path.suffix.lower() == ".onnx" and head[:1] == b"\x08"


def is_keras_archive(head: bytes, path: Path, size: int | None) -> bool:
    """A zip named `.keras` (Keras 3's `model.save`: `model.weights.h5` + `config.json`); asked before torch's zip."""
    return is_zip(head, path, size) and path.suffix.lower() == ".keras"


def is_hdf5(head: bytes, path: Path, size: int | None) -> bool:
    """HDF5's signature at the file's start (Keras writes no user block)."""
    return head.startswith(b"\x89HDF\r\n\x1a\n")


def is_flax_msgpack(head: bytes, path: Path, size: int | None) -> bool:
    """Named .msgpack and starting with a msgpack map (Flax's state dict): msgpack has no magic."""
    return path.suffix.lower() == ".msgpack" and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def any_text(head: bytes, path: Path, size: int | None) -> bool:
    """YAML's: any UTF-8 text the formats before it did not claim (its reader says what is wrong)."""
    return True


register(Format("keras", "a .keras archive", is_keras_archive, ".keras_file:load_keras_archive",
                suffixes=(".keras",)))
register(Format("zip", "a torch.save zip", is_zip, ".torch_files:load_zip", ".torch_files:read_zip",
                ranks=(FolderRank(40, "pytorch_model.bin", "pytorch_model.bin"),),
                config_formats=("torch-zip",)))
register(Format("safetensors", "safetensors", is_safetensors, ".safetensors_file:load_safetensors",
                suffixes=(".safetensors",), ranks=(FolderRank(20, "*.safetensors", "a safetensors file"),),
                config_formats=("safetensors",), dtypes=".safetensors_dtypes:SAFETENSORS_DTYPES"))
register(Format("dcp", "a torch.distributed.checkpoint", is_dcp_metadata, ".dcp:load_metadata",
                ranks=(FolderRank(50, ".metadata", "a torch.distributed.checkpoint"),),
                config_formats=("torch-dcp",)))
register(Format("gguf", "a GGUF file", is_gguf, ".gguf_file:load_gguf", suffixes=(".gguf",)))
register(Format("keras-h5", "Keras weights (HDF5)", is_hdf5, ".keras_file:load_keras_h5", suffixes=(".h5",)))
register(Format("flax", "a Flax msgpack checkpoint", is_flax_msgpack, ".flax_file:load_flax",
                suffixes=(".msgpack",)))
register(Format("onnx", "an ONNX model", is_onnx, ".onnx_file:load_onnx", suffixes=(".onnx",)))
register(Format("pickle", "a pickle", is_pickle, ".torch_files:load_pickle", ".torch_files:read_pickle",
                config_formats=("torch-pickle",)))
# the only JSON fancli reads: a sharded checkpoint's index (safetensors or .bin shards)
register(Format("json", "a sharded checkpoint's index", is_json, ".sharded:load_index", text=True,
                ranks=(FolderRank(10, "*.safetensors.index.json", "a safetensors index"),
                       FolderRank(30, "*.bin.index.json", "a .bin index")),
                config_formats=("safetensors-sharded", "torch-zip", "torch-pickle")))
register(Format("yaml", "a YAML spec", any_text, ".spec:load_spec", text=True))


def folder_ranks() -> list[FolderRank]:
    """Every registered format's folder ranks, in the order a folder tries them."""
    return sorted((rank for format in FORMATS.values() for rank in format.ranks), key=lambda rank: rank.order)


def config_applies(model_format: str) -> bool:
    """Whether a config.json beside the file applies to a Model of this `Model.format`."""
    return any(model_format in format.config_formats for format in FORMATS.values())
