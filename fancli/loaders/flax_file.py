"""Flax msgpack checkpoints (`flax.serialization.to_bytes`), read with `msgpack` (the `flax` extra), never JAX.

Flax 0.12.8's `serialization.py` packs the state dict as nested maps and each array as msgpack extension
type 1 holding the msgpack of (shape, dtype name, C-order bytes); a model's variables are under "params"
(the "batch_stats" and other collections are no parameters). Modules are named by class and index
(`Dense_0`, `Conv_1`) unless named outright; kernels are `[*k, in, out]` (Dense `[in, out]`; ConvTranspose
`[*k, in, out]` too, unlike Keras'), read with JAX's `variance_scaling` fans (in_axis -2, out_axis -1:
`fans` layout `jax`; a DenseGeneral kernel as the `[batch·in, features]` its init sees where its bias tells the
split, an Einsum kernel as stored, which its init reads). The file is read whole
(msgpack has no index), bounded; `--stats` reads each array's bytes from it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SourceError
from ..layer import BuiltBy, Layer, Model
from ..safe_io import read_bounded
from ..weights.tensors import InMemory, StridedRef, row_major_strides

if TYPE_CHECKING:
    from . import LoadOptions

#: The largest file read (msgpack caps one object at 2 GiB; Flax chunks larger arrays).
MAX_FLAX_BYTES = 8 << 30
_NDARRAY = 1  # flax.serialization._MsgpackExtType.ndarray
_FLOATS = ("float16", "float32", "float64")
_CLASS = re.compile(r"^(.*?)(_\d+)?$")
#: Flax module class -> fancli kind (a conv's by its kernel's rank).
#: linen's attention modules, and their DenseGeneral projections -> how many leading kernel dims are inputs:
#: query/key/value `[E, H, D]` (`features=(H, D)`), out `[H, D, E]` (`axis=(-2, -1)`) (flax 0.12.8
#: `linen/attention.py` `MultiHeadDotProductAttention.__call__`).
_ATTENTION_CLASSES = ("MultiHeadDotProductAttention", "MultiHeadAttention", "SelfAttention")
_ATTENTION = {"query": 1, "key": 1, "value": 1, "out": -1}
FLAX_KINDS = {"Dense": "linear", "DenseGeneral": "linear", "Einsum": "linear", "Embed": "embedding",
              "LayerNorm": "norm", "BatchNorm": "norm", "RMSNorm": "norm", "GroupNorm": "norm"}


class _Array(InMemory):
    """An array's shape, dtype and bytes as Flax packed them; read by range for --stats."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: tuple[int, ...], dtype: str, raw: bytes) -> None:
        super().__init__(raw)
        self.shape, self.dtype = shape, dtype


def _unpack(path: Path) -> Any:
    try:
        import msgpack
    except ImportError:
        raise SourceError(f"{path}: a Flax msgpack checkpoint: reading it needs the msgpack package "
                          "(pip install msgpack)") from None

    def ext(code: int, data: bytes) -> Any:
        if code != _NDARRAY:
            return msgpack.ExtType(code, data)
        shape, dtype, raw = msgpack.unpackb(data, raw=False)
        return _Array(tuple(int(dim) for dim in shape), str(dtype), bytes(raw))

    raw = read_bounded(path, MAX_FLAX_BYTES, "a Flax msgpack checkpoint")
    try:
        return msgpack.unpackb(raw, ext_hook=ext, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise SourceError(f"{path}: not a readable Flax msgpack checkpoint (truncated or not one: "
                          f"{type(error).__name__})") from None


def load_flax(path: Path, options: LoadOptions | None = None) -> Model:
    """A Flax msgpack file: one layer per array under "params" (the whole tree where there is none)."""
    tree = _unpack(path)
    if not isinstance(tree, dict):
        raise SourceError(f"{path}: a Flax checkpoint is a map of variables; this one holds a {type(tree).__name__}")
    params = tree.get("params", tree)
    layers: list[Layer] = []
    _walk(path, params if isinstance(params, dict) else {}, (), layers)
    return Model(source=str(path), format="flax", layers=tuple(layers),
                 built_by=BuiltBy("", where="a Flax msgpack checkpoint", recipe="flax"))


def _walk(path: Path, node: dict, where: tuple[str, ...], layers: list[Layer]) -> None:
    for key, value in node.items():
        here = (*where, str(key))
        if isinstance(value, dict):
            if value.get("__msgpack_chunked_array__"):
                raise SourceError(f"{path}: {'.'.join(here)} is an array Flax chunked (over 1 GiB): not read")
            _walk(path, value, here, layers)
        elif isinstance(value, _Array):
            layers.append(_layer(path, here, value, node))


def _dense_general_split(kernel: tuple[int, ...], bias: Any) -> tuple[int, int] | None:
    """The [in, out] a linen DenseGeneral's init sees its kernel `batch + in + features` as (flax 0.12.8
    `kernel_init_wrap`: [prod(batch)·prod(in), prod(features)]), told by its bias `batch + features`; None without
    a bias, or where it reads two ways (as many leading batch dims as kernel and bias share)."""
    if not isinstance(bias, _Array) or not 1 <= len(bias.shape) < len(kernel) or 0 in kernel:
        return None
    found = set()
    for batch in range(len(bias.shape)):
        features = bias.shape[batch:]
        if kernel[:batch] == bias.shape[:batch] and kernel[len(kernel) - len(features):] == features:
            found.add((math.prod(kernel) // math.prod(features), math.prod(features)))
    return found.pop() if len(found) == 1 else None


def _layer(path: Path, here: tuple[str, ...], array: _Array, module_arrays: dict) -> Layer:
    shape, dtype = array.shape, array.dtype
    known_bits = {"float16": 16, "float32": 32, "float64": 64, "bfloat16": 16}.get(dtype)
    if known_bits and len(array.raw) != math.prod(shape) * known_bits // 8:
        raise SourceError(f"{path}: {'.'.join(here)} holds {len(array.raw)} bytes but shape {list(shape)} of "
                          f"{dtype} needs {math.prod(shape) * known_bits // 8}")
    module = here[-2] if len(here) > 1 else ""
    klass = _CLASS.match(module).group(1)
    leaf = here[-1]
    kind = FLAX_KINDS.get(klass)
    notes: tuple[str, ...] = ()
    fields: dict[str, Any] = {}
    logical = shape
    rank = len(shape) - 2 if leaf == "kernel" and len(shape) >= 3 else 0
    parent = _CLASS.match(here[-3]).group(1) if len(here) > 2 else ""
    split = (_dense_general_split(shape, module_arrays.get("bias")) if klass == "DenseGeneral" and leaf == "kernel"
             else None)
    if parent in _ATTENTION_CLASSES and module in _ATTENTION and leaf in ("kernel", "bias") and len(shape) >= 2:
        kind = "linear"
        if leaf == "kernel" and len(shape) >= 3:
            inputs = _ATTENTION[module] if _ATTENTION[module] > 0 else len(shape) - 1
            logical = (math.prod(shape[:inputs]), math.prod(shape[inputs:]))
            notes = (f"Flax {parent} {module}: stored {list(shape)}, the projection [in, out] = {list(logical)}, "
                     "as its DenseGeneral's init sees it flattened",)
        else:
            logical = (math.prod(shape),)
    elif kind is None:
        if klass == "ConvTranspose" and rank:
            kind = f"conv_transpose{rank}d"
            fields["groups"] = 1
            notes = ("Flax ConvTranspose: stored [*k, in, out] (Keras' is [*k, out, in]); its init reads JAX's fans "
                     "of it as a conv's: fan_in = in·k, whatever the stride",)
        elif rank:
            kind = f"conv{rank}d" if rank <= 3 else "unknown"
        elif leaf == "embedding":
            kind = "embedding"
        elif leaf in ("scale",) or leaf in ("mean", "var"):
            kind = "norm"
        else:
            kind = "linear" if len(shape) == 2 or leaf == "bias" else "unknown"
    elif klass == "Einsum" and leaf == "kernel" and len(shape) >= 3:
        # flax 0.12.8 linen `Einsum.__call__`: `self.param('kernel', self.kernel_init, self.shape)`, unflattened
        fields.update(unknown_fans=("fan_in", "fan_out"), fan_axes=((-2,), (-1,), ()))
        notes = (f"Flax Einsum kernel {list(shape)}: its init reads the stored shape with JAX's default axes (in -2, "
                 "out -1, the rest a receptive field); which dims the layer contracts, its einsum_str says, not the "
                 "file",)
    elif split:
        logical = split
        notes = (f"Flax DenseGeneral: stored {list(shape)}, the [batch·in, features] = {list(logical)} its init sees "
                 f"(its bias {list(module_arrays['bias'].shape)} gives the features)",)
    elif kind == "linear" and len(shape) >= 3:
        fields["unknown_fans"] = ("fan_in", "fan_out")
        notes = (f"Flax {klass} kernel {list(shape)}: its init sees the shape flattened to [prod(in axes), "
                 "prod(out axes)], and which axes are inputs the module's `axis` says, not the file",)
    if leaf == "bias" and len(shape) >= 2:  # a DenseGeneral's bias [*features]: a bias, no fans
        logical = (math.prod(shape),)
    data = None
    if dtype in _FLOATS:
        data = StridedRef(array, dtype, logical, row_major_strides(logical), 0, math.prod(shape))
    fields["stored_shape"] = shape if logical != shape else None
    return Layer(name=".".join(here[:-1]), param=".".join(here), kind=kind, shape=logical, layout="jax",
                 dtype=dtype, notes=notes, data=data, **fields)
