"""Keras 3 weights (`.weights.h5`, and the `.keras` zip holding `model.weights.h5` + `config.json`), read with
`h5py` (the `keras` extra), never Keras.

Keras 3.15's `saving_lib` (`H5IOStore`, `_save_container_state`) writes each layer's variables as datasets
`layers/<snake_case class name, _1, _2…>/vars/<i>` (a nested layer's under its attribute: an LSTM's
`layers/lstm/cell/vars/0`), in the order the layer created them. The class-based name tells the kind where
no `config.json` does. Kernels are `[*k, in, out]` (Dense `[in, out]`; DepthwiseConv2D `[*k, in, mult]`;
Conv2DTranspose `[*k, out, in]`; LSTM kernel `[in, 4H]` and recurrent `[H, 4H]`). Values are read only for
`--stats`: a contiguous dataset by byte range (its offset from h5py), a `.keras` archive's from its member.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import SourceError
from ..layer import BuiltBy, Layer, Model
from ..safe_io import FileRange, read_bounded
from ..weights.tensors import InMemory, StridedRef, row_major_strides

if TYPE_CHECKING:
    from . import LoadOptions

#: The largest `.keras` archive or member read whole.
MAX_KERAS_BYTES = 4 << 30
WEIGHTS_MEMBER, CONFIG_MEMBER = "model.weights.h5", "config.json"
#: numpy dtype names fancli reads for --stats.
_FLOATS = ("float16", "float32", "float64")
#: Keras class (snake case, as `saving_lib` names groups) -> fancli kind.
KERAS_KINDS = {
    "dense": "linear", "einsum_dense": "linear", "conv1d": "conv1d", "conv2d": "conv2d", "conv3d": "conv3d",
    "depthwise_conv1d": "conv1d", "depthwise_conv2d": "conv2d", "conv1d_transpose": "conv_transpose1d",
    "conv2d_transpose": "conv_transpose2d", "conv3d_transpose": "conv_transpose3d", "embedding": "embedding",
    "lstm": "lstm", "lstm_cell": "lstm", "layer_normalization": "norm", "batch_normalization": "norm",
}
#: MultiHeadAttention's EinsumDense sublayers -> how many leading dims of their kernel are its inputs: q/k/v
#: (and the gate) `[E, H, D]`, the output `[H, D, E]` (`_build_proj_equation`, `_make_output_dense`). Keras 3.15.1
#: writes them under their attribute names less the underscore (`query_dense`), a legacy `.h5` under the
#: sublayers' own names (`query`, `attention_output`).
_ATTENTION = {"query_dense": 1, "key_dense": 1, "value_dense": 1, "gate_dense": 1, "output_dense": -1,
              "query": 1, "key": 1, "value": 1, "attention_output": -1}
#: A legacy file's variable names -> their index in a Keras 3 layer's `vars`, where the kind needs it.
_LEGACY_INDEX = {"kernel": 0, "depthwise_kernel": 0, "embeddings": 0, "recurrent_kernel": 1}
_NUMBERED = re.compile(r"^(.*?)(_\d+)?$")


def _h5py(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise SourceError(f"{path}: Keras weights (HDF5): reading them needs the h5py package "
                          "(pip install h5py)") from None
    return h5py


def load_keras_h5(path: Path, options: LoadOptions | None = None) -> Model:
    """A `.weights.h5` (or a legacy `.h5`): one layer per dataset under `layers/`, kinds from the class-based group
    names."""
    h5py = _h5py(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise SourceError(f"{path}: not a readable HDF5 file (truncated or not one: {error})") from None
    with handle, _damaged(path):
        layers = _layers(path, handle, None, lambda dataset: _file_range(path, dataset))
    return _model(path, "keras-h5", layers)


def load_keras_archive(path: Path, options: LoadOptions | None = None) -> Model:
    """A `.keras` zip: its `model.weights.h5`, the classes named by its `config.json`."""
    h5py = _h5py(path)
    try:
        with zipfile.ZipFile(io.BytesIO(read_bounded(path, MAX_KERAS_BYTES, "a .keras archive"))) as archive:
            names = set(archive.namelist())
            if WEIGHTS_MEMBER not in names or CONFIG_MEMBER not in names:
                raise SourceError(f"{path}: a .keras archive holds {WEIGHTS_MEMBER} and {CONFIG_MEMBER}; "
                                  "this zip lacks them")
            raw, config = archive.read(WEIGHTS_MEMBER), json.loads(archive.read(CONFIG_MEMBER))
    except (zipfile.BadZipFile, EOFError, ValueError, UnicodeDecodeError) as error:
        raise SourceError(f"{path}: not a readable .keras archive (truncated or not one: {error})") from None
    member = InMemory(raw)
    try:
        handle = h5py.File(io.BytesIO(raw), "r")
    except OSError as error:
        raise SourceError(f"{path}: {WEIGHTS_MEMBER} is not a readable HDF5 file: {error}") from None
    with handle, _damaged(path):
        layers = _layers(path, handle, _configs(config), lambda dataset: _in_member(member, dataset))
    return _model(path, "keras", layers)


@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """h5py's errors while walking a damaged file (its object headers, links or attributes: RuntimeError,
    OSError, KeyError, ValueError, TypeError), each one line naming the file; raised by fancli's own code, they
    are bugs and stay exit 3."""
    try:
        yield
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as error:
        if not _raised_in_h5py(error):
            raise
        raise SourceError(f"{path}: a damaged HDF5 file ({str(error).splitlines()[0] if str(error) else error!r})") \
            from None


def _raised_in_h5py(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is h5py's (its Python or Cython modules)."""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and "h5py" in trace.tb_frame.f_code.co_filename


def _model(path: Path, format: str, layers: list[Layer]) -> Model:
    return Model(source=str(path), format=format, layers=tuple(layers),
                 built_by=BuiltBy("", where="a Keras weights file", recipe="keras"))


def _configs(config: Any) -> dict[str, tuple[str, dict]]:
    """Each weights group's name -> (its layer's snake-case class, its config), named as `saving_lib`'s
    `_save_container_state` names them: a functional or sequential model's layers in `model.layers` order."""
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    entries = inner.get("layers", []) if isinstance(inner, dict) else []
    used: dict[str, int] = {}
    found: dict[str, tuple[str, dict]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            continue
        klass = snake_case(entry["class_name"])
        used[klass] = used.get(klass, -1) + 1  # saving_lib._get_unique_name: dense, dense_1, …
        layer_config = entry.get("config")
        found[klass if used[klass] == 0 else f"{klass}_{used[klass]}"] = (
            klass, layer_config if isinstance(layer_config, dict) else {})
    return found


def snake_case(name: str) -> str:
    """keras 3.15.1 `utils/naming.py` `to_snake_case`: `Conv2DTranspose` -> `conv2d_transpose`, `LSTM` -> `lstm`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _contiguous(dataset: Any) -> int | None:
    """Where a dataset's values lie in its file, little-endian and contiguous; None where fancli cannot read them
    by range (chunked or compressed, big-endian, not yet written)."""
    little = dataset.dtype == dataset.dtype.newbyteorder("<")
    return dataset.id.get_offset() if dataset.chunks is None and little else None


def _file_range(path: Path, dataset: Any) -> FileRange | None:
    offset = _contiguous(dataset)
    return None if offset is None else FileRange(path, offset, dataset.nbytes)


def _in_member(member: InMemory, dataset: Any) -> _Window | None:
    offset = _contiguous(dataset)
    return None if offset is None else _Window(member, offset, dataset.nbytes)


class _Window:
    """`nbytes` bytes at `start` of an in-memory member."""

    __slots__ = ("member", "start", "nbytes")

    def __init__(self, member: InMemory, start: int, nbytes: int) -> None:
        self.member, self.start, self.nbytes = member, start, nbytes

    def read(self, start: int, size: int) -> bytes:
        if start < 0 or start + size > self.nbytes:
            raise SourceError("a Keras dataset is shorter than its tensor needs")
        return self.member.read(self.start + start, size)


def _datasets(handle: Any) -> list[tuple[str, Any]]:
    """(path, dataset) of every variable under `layers/`, in the order Keras wrote them, which is the model's layer
    order (`_save_container_state` walks `model.layers`): HDF5 indexes links by name (Keras does not track
    creation order), but it allocates each object's header after the last, so the headers' addresses keep the
    write order. The optimizer's are no weights. A legacy (`legacy_h5_format`) file's
    `[model_weights/]<layer>/<weight name>` are given as `layers/<layer>/<sublayers…>/vars/<name>`, in its
    `layer_names` and `weight_names` order (the model's)."""
    found: list[tuple[str, Any]] = []
    if "layers" in handle:
        handle["layers"].visititems(lambda name, item: found.append((f"layers/{_text(name)}", item))
                                    if hasattr(item, "shape") and _text(name).split("/")[-2:-1] == ["vars"] else None)
        from h5py import h5o  # the handle is open: h5py is there

        return sorted(found, key=lambda pair: h5o.get_info(pair[1].id).addr)
    legacy = handle["model_weights"] if "model_weights" in handle else handle
    for layer in legacy.attrs.get("layer_names", []):
        layer = _text(layer)
        group = legacy.get(layer)
        if group is None:
            continue
        names = [_text(name) for name in group.attrs.get("weight_names", [])]
        if not names:
            group.visititems(lambda name, item: names.append(_text(name)) if hasattr(item, "shape") else None)
        for name in names:
            dataset = group.get(name)
            if dataset is None or not hasattr(dataset, "shape"):
                continue
            *middle, leaf = name.split("/")
            middle = middle[1:] if middle[:1] == [layer] else middle
            found.append(("/".join(["layers", layer, *middle, "vars", leaf.partition(":")[0]]), dataset))
    return found


def _text(value: Any) -> str:
    """A name h5py gives as str, or as bytes where they do not decode (a damaged name: shown replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _layers(path: Path, handle: Any, configs: dict[str, tuple[str, dict]] | None, source: Any) -> list[Layer]:
    layers: list[Layer] = []
    for key, dataset in _datasets(handle):
        parts = key.split("/")
        group = parts[1]
        owner = "/".join(parts[:-2])
        klass, layer_config = (configs or {}).get(group, (_NUMBERED.match(group).group(1), {}))
        strides = layer_config.get("strides")
        stride = tuple(strides) if isinstance(strides, list) and all(type(step) is int for step in strides) else None
        groups = layer_config.get("groups")
        index = int(parts[-1]) if parts[-1].isascii() and parts[-1].isdigit() else _LEGACY_INDEX.get(parts[-1], -1)
        shape = tuple(int(dim) for dim in dataset.shape)
        dtype = dataset.dtype.name
        sub = parts[-3] if len(parts) > 4 else ""
        if klass == "multi_head_attention" and sub in _ATTENTION:
            layers.append(_attention(owner, key, sub, index, shape, dtype, source(dataset)))
        else:
            layers.append(_layer(owner, key, klass, index, shape, dtype, source(dataset), stride,
                                 groups if type(groups) is int and groups > 1 else None))
    return layers


def _layer(owner: str, key: str, klass: str, index: int, shape: tuple[int, ...], dtype: str, source: Any,
           stride: tuple[int, ...] | None = None, groups: int | None = None) -> Layer:
    kind = KERAS_KINDS.get(klass, "linear" if len(shape) == 2 else "unknown")
    data = None
    if source is not None and dtype in _FLOATS:
        data = StridedRef(source, dtype, shape, row_major_strides(shape), 0, math.prod(shape))
    name = owner.replace("/", ".")
    param = key.replace("/", ".")
    fields: dict[str, Any] = {}
    notes: tuple[str, ...] = ()
    if kind.startswith("conv") and index == 0 and stride is not None and len(stride) == len(shape) - 2:
        fields["stride"] = stride  # a .keras config's `strides`
    if kind in ("conv1d", "conv2d") and klass.startswith("depthwise") and len(shape) >= 3 and index == 0:
        fields["groups"] = shape[-2]
        notes = (f"Keras {klass}: stored [*k, in, multiplier]; each channel convolved alone (groups = in)",)
    elif kind.startswith("conv") and groups and index == 0 and len(shape) >= 3 and shape[-1] % groups == 0:
        if shape[-2] != groups:  # a .keras config's `groups`: [*k, in/groups, out]
            fields["groups"] = groups
            notes = (f"Keras {klass}: {groups} groups (its .keras config): stored [*k, in/groups, out]",)
        else:  # [*k, g, ·] with g groups is how fancli's Keras layout tells a depthwise kernel: not claimed
            notes = (f"Keras {klass}: {groups} groups (its .keras config) of {groups} input channels each: its "
                     "fans are read as an ungrouped conv's, which fancli cannot tell from a depthwise kernel",)
    elif kind.startswith("conv_transpose") and index == 0:
        fields["groups"] = 1
        notes = (f"Keras {klass}: stored [*k, out, in]",)
    elif kind == "lstm" and len(shape) == 2 and index in (0, 1):
        fields["stacked"] = 4
        notes = ("Keras LSTM: " + ("kernel [in, 4H]" if index == 0 else "recurrent kernel [H, 4H]") +
                 ", gates i, f, c, o along dim 1",)
    elif len(shape) >= 3 and kind == "linear":
        fields["unknown_fans"] = ("fan_in", "fan_out")
        notes = (f"Keras {klass} kernel {list(shape)}: which dims are inputs its equation says, not the file",)
    return Layer(name=name, param=param, kind=kind, shape=shape, layout="keras", dtype=dtype, notes=notes,
                 data=data, **fields)


def _attention(owner: str, key: str, sub: str, index: int, shape: tuple[int, ...], dtype: str,
               source: Any) -> Layer:
    """A MultiHeadAttention projection: its kernel by its logical `[in, out]`, whose fans Keras' initializer reads
    (keras 3.15.1 `EinsumDense.build` passes the einsum's input and output axes to `compute_fans`), its bias
    flattened."""
    inputs = _ATTENTION[sub] if _ATTENTION[sub] > 0 else len(shape) - 1
    if index == 0 and len(shape) >= 3:
        logical: tuple[int, ...] = (math.prod(shape[:inputs]), math.prod(shape[inputs:]))
        note = (f"Keras MultiHeadAttention {sub}: stored {list(shape)}, the projection "
                f"[in, out] = {list(logical)}",)
    else:
        logical, note = (math.prod(shape),), ()
    data = None
    if source is not None and dtype in _FLOATS:
        data = StridedRef(source, dtype, logical, row_major_strides(logical), 0, math.prod(shape))
    return Layer(name=owner.replace("/", "."), param=key.replace("/", "."), kind="linear", shape=logical,
                 layout="keras", dtype=dtype, stored_shape=shape if logical != shape else None, notes=note, data=data)
