"""torch.export archives (.pt2) read without torch: the program is JSON, the weights raw bytes.

`torch.export.load` unpickles the archive's sample inputs and `use_pickle` weights with
`weights_only=False`, and opaque constants with `pickle.loads`: any of them can run code. So without
`--trust` fancli never calls it. It reads `models/model.json` (graph, signature, each node's module
stack) and `data/weights/model_weights_config.json` (each weight's file, dtype, size, stride and offset)
as data, and the weight files by byte range for `--stats`; no pickle in the archive is opened.
Each JSON field it uses is type-checked where it is read (`_field`): a malformed archive is one
SourceError naming the field, never a TypeError further in.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Hashable, Iterator

from ..errors import SourceError
from ..layer import Layer, Model
from ..safe_io import parse_json_object
from ..weights.dtypes import DTYPES
from ..weights.tensors import StridedRef
from .export_ops import Use, conv_arguments, exported_owner, is_conv_weight
from .module_structure import Owner, module_layer, with_reinit
from .safetensors_file import MAX_INDEX_BYTES
from .torch_pickle import MAX_DIMS, is_index
from .torch_zip import TorchZip, ZipMember

MAX_PROGRAM_BYTES = 128 * 1024 * 1024  # model.json: ~2 KB a graph node with its stack trace
MODEL = "model"  # the name torch.export.save gives the one program it writes
#: torch/_export/serde/schema.py ScalarType -> dtype name.
SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz", 33: "float8_e8m0fnu",
    34: "uint32", 35: "uint64",
}
_PICKLED = "stored pickled (a tensor subclass): its values are read only with --trust"
#: The JSON types the reader checks, as its messages name them (bool before int: JSON's true is no integer).
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer"}
#: The scalar and list arguments a node's input may hold (torch/_export/serde/schema.py Argument), and their types.
_ARGUMENT_TYPES = {"as_int": int, "as_ints": list, "as_bool": bool}


class _Node:
    """A graph node as the JSON states it: its op and its inputs, by name and in order, their types checked."""

    def __init__(self, raw: Any, where: str) -> None:
        node = _typed(raw, dict, where)
        self.op = _op_name(_field(node, "target", str, where))
        inputs = _field(node, "inputs", list, where, [])
        self.inputs = [_input(item, f"{where}, input {index}") for index, item in enumerate(inputs)]
        metadata = _field(node, "metadata", dict, where, {})
        self.module_stack = _field(metadata, "nn_module_stack", str, f"{where}: metadata", "")

    def tensor_at(self, position: int) -> str | None:
        """The name of the tensor passed at `position`, if a tensor is passed there."""
        if position >= len(self.inputs):
            return None
        tensor = self.inputs[position][1].get("as_tensor")
        return tensor["name"] if tensor is not None else None

    def arguments(self) -> dict[str, Any]:
        """Scalar and list arguments by name, as Python values."""
        values = {}
        for name, arg in self.inputs:
            for key in _ARGUMENT_TYPES:
                if key in arg:
                    values[name] = arg[key]
        return values


def _input(raw: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(name, argument) of a node's input; the argument's fields the reader uses, checked."""
    item = _typed(raw, dict, where)
    name, arg = _field(item, "name", str, where), _field(item, "arg", dict, where)
    tensor = _field(arg, "as_tensor", dict, f"{where}: arg", None)
    if tensor is not None:
        _field(tensor, "name", str, f"{where}: arg: as_tensor")
    for key, kind in _ARGUMENT_TYPES.items():
        value = _field(arg, key, kind, f"{where}: arg", None)
        if kind is list and value is not None:
            for index, number in enumerate(value):
                _typed(number, int, f"{where}: arg: {key}[{index}]")
    return name, arg


def _typed(value: Any, kind: type, what: str) -> Any:
    """`value` if it has the JSON type `kind` (true and false are no integers), else SourceError: a field
    of the wrong type in the program or the weights config is malformed input, not a crash further in."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise SourceError(f"{what} is {_json_type(value)}, not {_JSON_TYPES[kind]}")


def _field(parent: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    """`parent[key]`, checked by `_typed`; `default` where the key is absent (SourceError if none given)."""
    if key not in parent:
        if default is ...:
            raise SourceError(f"{where} has no {key!r}")
        return default
    return _typed(parent[key], kind, f"{where}: {key}")


def _json_type(value: Any) -> str:
    for kind, name in _JSON_TYPES.items():
        if isinstance(value, kind):
            return name
    return "null" if value is None else "a number"


def _op_name(target: Any) -> str:
    """"torch.ops.aten.conv2d.default" -> "aten::conv2d", as the op's schema names it."""
    parts = str(target).removeprefix("torch.ops.").split(".")
    return f"{parts[0]}::{parts[1]}" if len(parts) >= 2 else str(target)


def _module_classes(nodes: list[_Node]) -> dict[str, str]:
    """Module path -> class name, from the "key,path,class;…" stack each node records."""
    classes: dict[str, str] = {}
    for node in nodes:
        if not isinstance(node.module_stack, str) or not node.module_stack:
            continue
        for item in node.module_stack.split(";"):
            parts = _split_stack_item(item)
            if parts:
                classes.setdefault(parts[1], parts[2].rpartition(".")[2])
    return classes


def _split_stack_item(item: str) -> list[str] | None:
    """Split "key,path,class" at the commas outside brackets, as torch's deserializer does."""
    parts, start, depth = [], 0, 0
    for index, char in enumerate(item):
        depth += (char in "[(") - (char in ")]")
        if char == "," and depth == 0:
            parts.append(item[start:index])
            start = index + 1
    parts.append(item[start:])
    return parts if len(parts) == 3 else None


class _Graph:
    """Which nodes use each tensor, for the weights whose owner the module stack does not name."""

    def __init__(self, nodes: list[_Node]) -> None:
        self.users: dict[str, list[tuple[_Node, int]]] = {}
        for node in nodes:
            for position in range(len(node.inputs)):
                name = node.tensor_at(position)
                if name is not None:
                    self.users.setdefault(name, []).append((node, position))

    def uses(self, weight: str) -> list[Use]:
        return [(node.op, position) for node, position in self.users.get(weight, ())]

    def conv_use(self, weight: str) -> dict[str, Any] | None:
        """The arguments of the first convolution that takes `weight` as its weight, defaults filled in."""
        for node, position in self.users.get(weight, ()):
            if is_conv_weight(node.op, position):
                return conv_arguments(node.op, node.arguments())
        return None


class _Weight:
    """One entry of the weights config, its claims checked against the archive."""

    def __init__(self, archive: TorchZip, prefix: str, key: str, meta: Any) -> None:
        where = f"{archive.path}: {key}"
        entry = _typed(meta, dict, f"{where}: its weights config entry")
        tensor = _field(entry, "tensor_meta", dict, where)
        self.shape = _ints(_field(tensor, "sizes", list, where), where, "size")
        self.stride = _ints(_field(tensor, "strides", list, where), where, "stride")
        self.offset = _field(_field(tensor, "storage_offset", dict, where), "as_int", int, f"{where}: storage_offset")
        dtype = _field(tensor, "dtype", int, where)
        self.dtype = SCALAR_TYPES.get(dtype, f"unknown dtype {str(dtype)[:20]}")
        self.file = _field(entry, "path_name", str, where)
        self.pickled = _field(entry, "use_pickle", bool, where, False)
        if len(self.stride) != len(self.shape) or not is_index(self.offset):
            raise SourceError(f"{where}: malformed size, stride or offset")
        self.data: StridedRef | None = None
        if not self.pickled and self.dtype in DTYPES:
            self.data = self._ref(archive, f"{prefix}/data/weights/{self.file}", where)

    def _ref(self, archive: TorchZip, member: str, where: str) -> StridedRef:
        info = archive.members.get(member)
        if info is None:
            raise SourceError(f"{where}: its data file {self.file[:80]} is missing from the archive")
        itemsize = DTYPES[self.dtype][0]
        ref = StridedRef(ZipMember(archive.path, info), self.dtype, self.shape, self.stride, self.offset,
                         info.file_size // itemsize)
        if ref.numel and self.offset + ref.span() > info.file_size // itemsize:
            raise SourceError(f"{where}: tensor runs past the end of its data file")
        return ref

    @property
    def identity(self) -> Hashable:
        return (self.file, self.offset, self.shape, self.stride)


def _ints(value: list[Any], where: str, what: str) -> tuple[int, ...]:
    """Sizes and strides as the JSON writes them: [{"as_int": 8}, …]; symbolic ones are refused."""
    if len(value) > MAX_DIMS:
        raise SourceError(f"{where}: malformed {what}")
    numbers = tuple(item.get("as_int") if isinstance(item, dict) else None for item in value)
    if not all(map(is_index, numbers)):
        raise SourceError(f"{where}: its {what} is symbolic or malformed; a saved weight has concrete sizes")
    return numbers  # type: ignore[return-value]


def _prefix(archive: TorchZip) -> str:
    names = [name for name in archive.members if name.endswith("/archive_format")]
    if len(names) != 1 or names[0].count("/") != 1:
        raise SourceError(f"{archive.path}: a torch.export archive of a layout fancli does not read "
                          "(an older torch wrote it?); pass --trust to load it with torch.export.load")
    return names[0].partition("/")[0]


def _json(archive: TorchZip, member: str, limit: int, what: str) -> dict:
    if member not in archive.members:
        raise SourceError(f"{archive.path}: {member.partition('/')[2]} is missing from the torch.export archive")
    return parse_json_object(archive.read_member(member, limit, what), str(archive.path), what)


def _parameters(program: dict, where: str) -> Iterator[tuple[str, str]]:
    """(parameter key, graph input name) in the signature's order, which is named_parameters() order."""
    signature = _field(_field(program, "graph_module", dict, where), "signature", dict, f"{where}: graph_module")
    for index, spec in enumerate(_field(signature, "input_specs", list, f"{where}: graph_module: signature")):
        at = f"{where}: input spec {index}"
        parameter = _field(_typed(spec, dict, at), "parameter", dict, at, None)
        if parameter is not None:
            arg = _field(parameter, "arg", dict, f"{at}: parameter")
            yield _field(parameter, "parameter_name", str, f"{at}: parameter"), _field(arg, "name", str, f"{at}: arg")


def read_exported(path: Path, archive: TorchZip) -> Model:
    """A torch.export archive as a Model, without torch and without opening any pickle in it."""
    prefix = _prefix(archive)
    program = _json(archive, f"{prefix}/models/{MODEL}.json", MAX_PROGRAM_BYTES, "the exported program")
    config = _json(archive, f"{prefix}/data/weights/{MODEL}_weights_config.json", MAX_INDEX_BYTES,
                   "the weights config")
    where = f"{path}: the exported program"
    graph = _field(_field(program, "graph_module", dict, where), "graph", dict, f"{where}: graph_module")
    nodes = [_Node(raw, f"{where}: graph node {index}")
             for index, raw in enumerate(_field(graph, "nodes", list, f"{where}: graph_module: graph"))]
    weights_config = _field(config, "config", dict, f"{path}: the weights config")
    classes, graph_uses = _module_classes(nodes), _Graph(nodes)
    first: dict[Hashable, int] = {}
    found: list[tuple[str, _Weight, list[str]]] = []
    weights: dict[str, tuple[str, _Weight]] = {}  # key -> (graph input name, weight)
    for key, input_name in _parameters(program, where):
        if key not in weights_config:
            raise SourceError(f"{path}: parameter {key[:80]} is missing from the weights config")
        weight = _Weight(archive, prefix, key, weights_config[key])
        weights[key] = (input_name, weight)
        if weight.identity in first:
            found[first[weight.identity]][2].append(key)
            continue
        first[weight.identity] = len(found)
        found.append((key, weight, []))
    owners: dict[str, Owner] = {}
    layers: list[Layer] = []
    for key, weight, aliases in found:
        name = key.rpartition(".")[0]
        if name not in owners:
            owners[name] = _owner(name, classes, graph_uses, weights.get(f"{name}.weight" if name else "weight"))
        layer = module_layer(key, weight.shape, weight.dtype, owners[name], weight.data, tuple(aliases))
        if weight.pickled:
            layer = _with_note(layer, _PICKLED)
        layers.append(layer)
    return Model(source=str(path), format="torch-export", layers=with_reinit(tuple(layers), classes.get),
                 name=classes.get(""))


def _owner(name: str, classes: dict[str, str], graph: _Graph, weight: tuple[str, _Weight] | None) -> Owner:
    """The module's class and conv structure; `weight` (its graph input name, its entry) None when it has none."""
    if weight is None:
        return exported_owner(name, classes.get(name), None, None, 0)
    input_name, entry = weight
    return exported_owner(name, classes.get(name), graph.uses(input_name), graph.conv_use(input_name),
                          len(entry.shape) - 2)


def _with_note(layer: Layer, note: str) -> Layer:
    return replace(layer, notes=(*layer.notes, note))
