"""GGUF files (llama.cpp's format), read through the `gguf` package (an optional extra, pure Python + numpy).

A tensor's `ne` lists its dims fastest first: the numpy (and torch) shape is `ne` reversed, so token_embd's
ne [128, 512] is the [512, 128] embedding and a linear's ne [in, out] is torch's [out, in]. Names stay
llama.cpp's (`blk.0.attn_q.weight`); gguf's tensor mapping goes from the many HF spellings to one GGUF name,
and where only one spelling maps to a name for the file's architecture that is the row's `hf_name` (for
llama's attn_q it lists 13: none is given). Kinds come from those names as for any flat source (2-D weights are linear,
`token_embd` an embedding). No tensor byte is read without `--stats`, which dequantizes a few rows at a
time with gguf's own `gguf.quants.dequantize`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import SourceError
from ..layer import Layer, Model
from ..records import replaced
from ..safe_io import FileRange, open_regular
from ..weights.tensors import CHUNK_ELEMENTS
from .entry import Entry
from .flat_keys import BILINEAR_OR_CONV, NO_STRUCTURE, layers_from_entries
from .module_structure import unsplit_note
from .quant_data import Unreadable

if TYPE_CHECKING:
    import numpy as np

    from . import LoadOptions

#: GGML types read as a plain dtype; every other type is blocks that gguf dequantizes to float32.
_PLAIN = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8"}


def _reader(path: Path):
    """gguf's GGUFReader on the file (it memory-maps it and parses the header, touching no tensor page); a
    truncated or malformed file is one SourceError line."""
    try:
        import gguf
    except ImportError:
        raise SourceError(f"{path}: a GGUF file: reading it needs the gguf package: pip install gguf") from None
    with open_regular(path, str(path)) as handle:  # a FIFO or folder is refused before numpy maps it
        size = os.fstat(handle.fileno()).st_size
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, OSError, UnicodeDecodeError) as error:
        detail = str(error) if len(str(error)) <= 200 else str(error)[:200] + "…"  # it may quote a name
        raise SourceError(f"{path}: not a readable GGUF file ({size} bytes): {detail}") from None
    return reader


class GgufData:
    """A GGUF tensor's values as float32, whole rows (ne[0] values) at a time, in the torch layout's order:
    its plain values decoded, or its blocks dequantized by gguf."""

    dtype = "float32"

    def __init__(self, source: FileRange, qtype: Any, shape: tuple[int, ...], row_bytes: int) -> None:
        self.source, self.qtype, self.shape, self.row_bytes = source, qtype, shape, row_bytes

    def logical(self, max_elements: int = CHUNK_ELEMENTS) -> bool:
        return True

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator["np.ndarray"]:
        import numpy as np
        from gguf.quants import dequantize

        width = self.shape[-1] if self.shape else 1
        rows = math.prod(self.shape[:-1]) if self.shape else 1
        if not width or not rows:
            return
        step = max(1, max_elements // width)
        for start in range(0, rows, step):
            count = min(step, rows - start)
            raw = np.frombuffer(self.source.read(start * self.row_bytes, count * self.row_bytes), dtype=np.uint8)
            try:
                values = dequantize(raw.reshape(count, self.row_bytes), self.qtype).reshape(-1)
            except NotImplementedError:  # llama.cpp knows types gguf's numpy code does not
                raise SourceError(f"gguf cannot dequantize {self.qtype.name}: no statistics") from None
            for begin in range(0, values.size, max_elements):
                yield values[begin : begin + max_elements].astype(np.float32, copy=False)


def _entry(path: Path, tensor: Any, swapped: bool) -> Entry:
    from gguf import GGML_QUANT_SIZES

    qtype = tensor.tensor_type
    shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))  # ne is fastest-first
    block, type_size = GGML_QUANT_SIZES[qtype]
    width = shape[-1] if shape else 1
    row_bytes = width // block * type_size
    dtype = _PLAIN.get(qtype.name)
    notes: tuple[str, ...] = ()
    if dtype is None:  # listed as a float weight; its Layer then says uint8, as its bytes are stored
        dtype = "float32"
        notes = (f"GGUF {qtype.name}: blocks of {block} values in {type_size} bytes "
                 f"({8 * type_size / block:g} bits each); --stats reads gguf's dequantized values",)
    data: Any = GgufData(FileRange(path, int(tensor.data_offset), int(tensor.n_bytes)), qtype, shape, row_bytes)
    if swapped:  # gguf's dequantization reads the host's byte order
        data = Unreadable("float32", shape, "a GGUF file of the other byte order: its values are not read")
    return Entry(tensor.name, shape, dtype, data=data, notes=notes)


def load_gguf(path: Path, options: LoadOptions | None = None) -> Model:
    """A GGUF file: layers from its tensor infos, in file order, each in torch's layout; no tensor data read."""
    reader = _reader(path)
    entries = [_entry(path, tensor, reader.byte_order != "I") for tensor in reader.tensors]
    stored = {entry.key: (*entry.shape[:-1], int(tensor.n_bytes) // max(1, math.prod(entry.shape[:-1])))
              for entry, tensor in zip(entries, reader.tensors) if tensor.tensor_type.name not in _PLAIN}
    heads = _heads(reader)
    hf = _hf_names(reader)
    layers = tuple(_layer(layer, stored.get(layer.param), heads, hf) for layer in layers_from_entries(entries))
    return Model(source=str(path), format="gguf", layers=layers, notes=_notes(reader))


#: The most blocks gguf's name map is built for (a file's block_count is not trusted to size a loop).
MAX_BLOCKS = 4096


def _hf_names(reader: Any) -> dict[str, str]:
    """GGUF tensor name (no suffix) -> the one HF name gguf's `get_tensor_name_map(arch, block_count)` maps to
    it, for the file's architecture; a name several HF spellings map to (most: gguf's table serves every
    model family) gets none, as does an architecture gguf does not know."""
    import gguf

    arch = _field(reader, "general.architecture")
    blocks = _field(reader, f"{arch}.block_count") if isinstance(arch, str) else None
    member = next((member for member, name in gguf.MODEL_ARCH_NAMES.items() if name == arch), None)
    if member is None or not isinstance(blocks, int) or not 0 <= blocks <= MAX_BLOCKS:
        return {}
    spellings: dict[str, set[str]] = {}
    for key, (_, name) in gguf.get_tensor_name_map(member, blocks).mapping.items():
        if key != name:
            spellings.setdefault(name, set()).add(key)
    return {name: next(iter(keys)) for name, keys in spellings.items() if len(keys) == 1}


def _layer(layer: Layer, stored: tuple[int, ...] | None, heads: tuple[int, int, int | None] | None,
           hf: dict[str, str]) -> Layer:
    """What llama.cpp's names say beyond a flat source's: stacked experts (`ffn_*_exps`, ne [in, out, E],
    each expert used as ggml_mul_mat(W[e], x), torch's F.linear), the heads of attn_q/k/v and of a fused
    attn_qkv; a block type's bytes as stored; its HF name where gguf's map gives one."""
    if stored is not None:
        layer = replaced(layer, dtype="uint8", stored_shape=stored)
    base, _, suffix = layer.param.rpartition(".")
    if base in hf and suffix in ("weight", "bias"):
        layer = replaced(layer, hf_name=f"{hf[base]}.{suffix}")
    match = _ROLE.match(layer.param)
    role = match.group(1) if match else None
    if role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps") and len(layer.shape) == 3:
        conv = (NO_STRUCTURE, BILINEAR_OR_CONV)  # a flat source's guesses for a 3-D weight: the name says
        return replaced(layer, kind="experts", stacked=layer.shape[0], layout="torch", notes=(
            *(note for note in layer.notes if note not in conv),
            "stored [experts, out, in] (ne [in, out, experts]), each expert used as F.linear(x, W[e])"))
    if role == "attn_qkv" and layer.kind == "linear" and len(layer.shape) == 2:
        return _fused(layer, heads)
    if role in ("attn_q", "attn_k", "attn_v") and heads and len(layer.shape) == 2:
        count = heads[0] if role == "attn_q" else heads[1]
        rows = layer.shape[0]
        which = "head_count" if role == "attn_q" else "head_count_kv"
        if count and rows % count == 0:
            note = f"{count} heads of {rows // count} rows ({which}, GGUF metadata)"
            return replaced(layer, notes=(*layer.notes, note))
    return layer


def _fused(layer: Layer, heads: tuple[int, int, int | None] | None) -> Layer:
    """A fused attn_qkv [q + k + v, in]: split by the metadata's heads where its rows are theirs (equal
    parts are three stacked blocks; grouped-query parts each have their own fan_out, so the tensor has
    none); otherwise its split is unknown, as for any unsplit fused projection."""
    rows = layer.shape[0]
    if heads and heads[2]:
        q, kv = heads[0] * heads[2], heads[1] * heads[2]
        if rows == q + 2 * kv and q == kv:
            return replaced(layer, stacked=3, notes=(
                *layer.notes, f"q, k, v stacked: split by the GGUF metadata ({heads[0]} heads of {heads[2]})"))
        if rows == q + 2 * kv:
            return replaced(layer, unknown_fans=("fan_out",), notes=(
                *layer.notes, f"fused q/k/v projection: q {q}, k {kv}, v {kv} rows (GGUF metadata: head_count "
                              f"{heads[0]}, head_count_kv {heads[1]}); each part has its own fan_out, so the "
                              "tensor has no one effective fan_out"))
    return replaced(layer, unknown_fans=("fan_out",), notes=(*layer.notes, unsplit_note(layer.name)))


#: A llama.cpp tensor's role in its block: `blk.3.attn_q.weight` -> attn_q.
_ROLE = re.compile(r"^blk\.\d+\.(\w+)\.weight$")


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _heads(reader: Any) -> tuple[int, int, int | None] | None:
    """(head_count, head_count_kv, head size) as the metadata states them, as llama.cpp reads them: kv
    defaults to head_count, the head size to `attention.key_length`, else embedding_length / head_count.
    None where not stated, zero, or per layer (a list)."""
    arch = _field(reader, "general.architecture")
    heads = _field(reader, f"{arch}.attention.head_count") if isinstance(arch, str) else None
    if not isinstance(heads, int) or heads <= 0:
        return None
    kv = _field(reader, f"{arch}.attention.head_count_kv")
    size = _field(reader, f"{arch}.attention.key_length")
    width = _field(reader, f"{arch}.embedding_length")
    if not isinstance(size, int):
        size = width // heads if isinstance(width, int) and width % heads == 0 else None
    return heads, kv if isinstance(kv, int) and kv > 0 else heads, size or None


def _notes(reader: Any) -> tuple[str, ...]:
    """The architecture and the attention heads the file's metadata states."""
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        return ()
    facts = [f"{name} {value}" for name, value in (
        ("block_count", _field(reader, f"{arch}.block_count")),
        ("head_count", _field(reader, f"{arch}.attention.head_count")),
        ("head_count_kv", _field(reader, f"{arch}.attention.head_count_kv"))) if value is not None]
    return (f"GGUF {arch}" + (f": {', '.join(facts)}" if facts else "") + "; names are llama.cpp's",)
