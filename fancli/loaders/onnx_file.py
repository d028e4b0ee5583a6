"""ONNX models (`.onnx`) read with the `onnx` package (`pip install onnx`; the `onnx` extra once released), never torch.

An ONNX file is one protobuf: the graph and its initializers, whose bytes are inline (`raw_data`, or the
typed field of their dtype: `float_data`, `int32_data`…) or in external files named by (location, offset,
length). The file is read bounded before it is parsed, and
external data only by range, for `--stats`, from files inside the model's folder (links followed).

Initializers carry no module: the graph's nodes tell what each weight is. Conv and ConvTranspose keep
torch's layouts with `group`, `strides` and `dilations` as attributes; Gemm's B is [out, in] with
`transB=1`, else [in, out]; MatMul's initializer is [in, out]; LSTM/GRU/RNN stack W [dirs, G·H, in],
R [dirs, G·H, H] and B [dirs, 2·G·H], split here into torch's weight_ih/weight_hh/bias_ih/bias_hh per
direction (ONNX orders the gates i, o, f, c and z, r, h; fans do not depend on the order). Exporters name
some initializers anonymously (`val_115`, `onnx::MatMul_224`): those are named from their node. A quantized
weight (a DequantizeLinear's input feeding Conv/MatMul/Gemm; QLinearConv's w, QLinearMatMul's b,
MatMulInteger's B) is that op's weight, its statistics dequantized (`onnx_quant`); scales and zero points are
no parameters.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import SourceError
from ..layer import Layer, Model
from ..safe_io import FileRange, read_bounded
from ..weights.dtypes import DTYPES
from ..weights.tensors import InMemory, StridedRef, row_major_strides
from .links import leads_outside, link_root
from .onnx_quant import Dequantized
from .module_structure import Owner, expand, module_layer

if TYPE_CHECKING:
    from . import LoadOptions

#: The largest file parsed: protobuf's own limit for one message is 2 GiB.
MAX_ONNX_BYTES = 2 << 30
#: onnx.TensorProto.DataType -> (torch's dtype name, bits per element).
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 32), 2: ("uint8", 8), 3: ("int8", 8), 4: ("uint16", 16), 5: ("int16", 16), 6: ("int32", 32),
    7: ("int64", 64), 9: ("bool", 8), 10: ("float16", 16), 11: ("float64", 64), 12: ("uint32", 32),
    13: ("uint64", 64), 16: ("bfloat16", 16), 17: ("float8_e4m3fn", 8), 18: ("float8_e4m3fnuz", 8),
    19: ("float8_e5m2", 8), 20: ("float8_e5m2fnuz", 8),
}
_INTEGER = ("uint8", "int8", "uint16", "int16", "int32", "int64", "bool", "uint32", "uint64")
#: Names exporters give initializers that are no module's parameter.
ANONYMOUS = re.compile(r"^(val_\d+|onnx::\w+_\d+)$")
#: Recurrent ops (torch's classes of the same names).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
#: The dynamo exporter's record of the module path a node runs in, a Python list literal.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
MAX_SCOPES_CHARS = 4096
#: Inputs of each op that hold weights: the rest (a recurrent op's initial state, a quantized op's scales and
#: zero points) are no parameters.
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "LSTM": (1, 2, 3),
                 "GRU": (1, 2, 3), "RNN": (1, 2, 3), "QLinearConv": (3, 8), "QLinearMatMul": (3,),
                 "MatMulInteger": (1,)}
#: A quantized op -> the float op it computes, its weight's input position -> (the position that weight has in
#: that op, its scale's and zero point's positions (None: none), the axis they run along).
QUANTIZED_OPS: dict[str, tuple[str, dict[int, tuple[int, int | None, int | None, int]]]] = {
    "QLinearConv": ("Conv", {3: (1, 4, 5, 0), 8: (2, None, None, 0)}),
    "QLinearMatMul": ("MatMul", {3: (1, 4, 5, -1)}),
    "MatMulInteger": ("MatMul", {1: (1, None, 3, -1)}),
}
#: Ops whose inputs past the first are a scale and a zero point, no parameters.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


#: onnx.TensorProto.DataType -> the repeated field that holds its values where there is no raw_data (onnx.proto:
#: float_data for FLOAT, double_data for DOUBLE, int64_data for INT64, uint64_data for UINT32 and UINT64;
#: int32_data for the rest: INT32, the smaller ints and BOOL, FLOAT16/BFLOAT16/FLOAT8 as their bits).
TYPED_FIELDS = {1: "float_data", 11: "double_data", 7: "int64_data", 12: "uint64_data", 13: "uint64_data"}


class _Typed:
    """An initializer's values held in a typed field, as bytes: decoded by onnx's own `numpy_helper.to_array`
    when --stats first asks."""

    __slots__ = ("tensor", "raw")

    def __init__(self, tensor: Any) -> None:
        self.tensor, self.raw = tensor, None

    def read(self, start: int, size: int) -> bytes:
        if self.raw is None:
            from onnx import numpy_helper

            values = numpy_helper.to_array(self.tensor)
            self.raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
        return self.raw[start : start + size]


@dataclass(frozen=True)
class _Use:
    """How a node uses an initializer: the op, where the initializer stands among its inputs, its attributes,
    and the module name the node's path gives."""

    op: str
    position: int
    attributes: dict[str, Any]
    module: str  # "" for the root
    node: str
    layer: int = 0  # a recurrent node's index among its module's (torch's `_l1` of a two-layer LSTM)
    quantized: tuple[str | None, str | None, int, int] | None = None  # scale, zero point, axis, block size

    @property
    def prefix(self) -> str:
        """What names an anonymous initializer: its module, else its node."""
        return self.module or self.node


def load_onnx(path: Path, options: LoadOptions | None = None) -> Model:
    """An ONNX model: one layer per initializer (recurrent ones per torch parameter), in graph order."""
    model = _parse(path)
    uses, states = _uses(model.graph)
    tensors = {tensor.name: _tensor(path, tensor) for tensor in model.graph.initializer}
    layers: list[Layer] = []
    for name, (dtype, shape, data) in tensors.items():
        if dtype in _INTEGER and len(shape) <= 1 or name in states:
            continue  # a shape, an index, an initial state or a quantization scale: no parameter
        use = uses.get(name)
        if use is not None and use.quantized is not None and data is not None:
            data = _dequantized(data, use.quantized, tensors)
        layers.extend(_layers(name, shape, dtype, data, use))
    return Model(source=str(path), format="onnx", layers=tuple(layers), name=model.graph.name or None)


def _dequantized(data: StridedRef, quantized: tuple[str | None, str | None, int, int],
                 tensors: dict[str, tuple[str | None, tuple[int, ...], StridedRef | None]]) -> Dequantized | None:
    """A quantized weight's values as its op computes with them; None where a scale or zero point is unread."""
    scale, zero_point, axis, block = quantized
    refs = [tensors[name][2] if name in tensors else None for name in (scale, zero_point)]
    if any(name is not None and ref is None for name, ref in zip((scale, zero_point), refs)):
        return None  # a scale computed in the graph, or in a dtype fancli does not decode
    return Dequantized(data, refs[0], refs[1], axis, block)


def _parse(path: Path) -> Any:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise SourceError(f"{path}: an ONNX model: reading it needs the onnx package "
                          "(pip install onnx)") from None
    raw = read_bounded(path, MAX_ONNX_BYTES, "an ONNX model")
    try:
        model = onnx.ModelProto.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise SourceError(f"{path}: not a valid ONNX model (truncated or not one: {error})") from None
    if not model.HasField("graph"):
        raise SourceError(f"{path}: not a valid ONNX model (no graph)")
    return model


def _module(node: Any) -> str:
    """The module a node belongs to: the dynamo exporter's `name_scopes` (`['', 'encoder', 'fc', 'linear']`),
    else the TorchScript exporter's node path (`/encoder/fc/Gemm` -> `encoder.fc`); "" for the root."""
    scopes = next((entry.value for entry in node.metadata_props if entry.key == NAME_SCOPES), None)
    if scopes is not None and len(scopes) <= MAX_SCOPES_CHARS:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parts = None
        if isinstance(parts, list) and len(parts) > 2 and all(isinstance(part, str) for part in parts):
            return ".".join(part for part in parts[1:-1] if part)
    return ".".join(part for part in _node_name(node).split("/")[:-1] if part)


def _node_name(node: Any) -> str:
    return node.name or (node.output[0] if node.output else "")


def _uses(graph: Any) -> tuple[dict[str, _Use], set[str]]:
    """Initializer name -> its first use as a weight by an op fancli knows, and the initializers those ops
    take as no weight (an LSTM's initial state); an Add's initializer after a
    MatMul is that layer's bias (the TorchScript exporter splits a Linear on 3-D input into MatMul and Add)."""
    import onnx

    uses: dict[str, _Use] = {}
    states: set[str] = set()
    matmul_outputs: dict[str, _Use] = {}
    recurrent: dict[str, int] = {}  # module -> its recurrent nodes so far
    dequantized: dict[str, tuple[str, tuple[str | None, str | None, int, int]]] = {}  # a DequantizeLinear's output
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            states.update(name for name in node.input[1:] if name)
            if node.op_type == "DequantizeLinear" and node.output and node.input:
                attributes = {item.name: onnx.helper.get_attribute_value(item) for item in node.attribute}
                inputs = [*node.input[1:3], "", ""][:2]
                dequantized[node.output[0]] = (node.input[0], (inputs[0] or None, inputs[1] or None,
                                                               int(attributes.get("axis", 1)),
                                                               int(attributes.get("block_size", 0))))
    for node in graph.node:
        if node.op_type in WEIGHT_INPUTS:
            attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
            module, name_of_node = _module(node), _node_name(node).strip("/").replace("/", ".")
            layer = 0
            if node.op_type in RECURRENT_OPS:
                layer = recurrent[module] = recurrent.get(module, -1) + 1
            op, quantized_inputs = QUANTIZED_OPS.get(node.op_type, (node.op_type, {}))
            for position, name in enumerate(node.input):
                if name and position in WEIGHT_INPUTS[node.op_type]:
                    quantized = None
                    if name in dequantized:  # a QDQ model: the weight is the DequantizeLinear's input
                        name, quantized = dequantized[name]
                    if position in quantized_inputs:
                        position, scale, zero_point, axis = quantized_inputs[position]
                        quantized = (_input(node, scale), _input(node, zero_point), axis, 0)
                    uses.setdefault(name, _Use(op, position, attributes, module, name_of_node, layer, quantized))
                elif name and position > 0:
                    states.add(name)
            if node.op_type == "MatMul" and node.output:
                matmul_outputs[node.output[0]] = _Use("MatMul", 2, {}, module, name_of_node)
        elif node.op_type == "Add" and len(node.input) == 2:
            for bias, other in (node.input, reversed(node.input)):
                if other in matmul_outputs:
                    uses.setdefault(bias, matmul_outputs[other])
    return uses, states - set(uses)


def _input(node: Any, position: int | None) -> str | None:
    return node.input[position] or None if position is not None and position < len(node.input) else None


def _tensor(path: Path, tensor: Any) -> tuple[str | None, tuple[int, ...], StridedRef | None]:
    """An initializer's dtype, shape and values (None where fancli cannot decode them), its size checked."""
    where = f"{path}: initializer {tensor.name!r}"
    shape = tuple(int(dim) for dim in tensor.dims)
    if any(dim < 0 for dim in shape):
        raise SourceError(f"{where}: negative dimension in {list(shape)}")
    known = ONNX_DTYPES.get(tensor.data_type)
    if known is None:
        return None, shape, None
    dtype, bits = known
    nbytes = math.prod(shape) * bits // 8
    if tensor.data_location == _EXTERNAL:
        source: Any = _external(path, tensor, nbytes, where)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data  # a copy each time it is asked for
        if len(raw) != nbytes:
            raise SourceError(f"{where}: holds {len(raw)} bytes but shape {list(shape)} of {dtype} "
                              f"needs {nbytes} (a truncated file?)")
        source = InMemory(raw)  # inline: onnx does not expose its place in the file
    else:  # values in the typed field their dtype names (float_data, int32_data…)
        field = TYPED_FIELDS.get(tensor.data_type, "int32_data")
        count = len(getattr(tensor, field))
        if count != math.prod(shape):
            raise SourceError(f"{where}: {field} holds {count} values but shape {list(shape)} needs "
                              f"{math.prod(shape)} (a truncated file?)")
        source = _Typed(tensor)
    if dtype not in DTYPES:
        return dtype, shape, None
    return dtype, shape, StridedRef(source, dtype, shape, row_major_strides(shape), 0, math.prod(shape))


def _external(path: Path, tensor: Any, nbytes: int, where: str) -> FileRange:
    """The byte range of an external initializer, in a file inside the model's folder."""
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location", "")
    relative = Path(location)
    if not location or "\0" in location or relative.is_absolute() or ".." in relative.parts:
        raise SourceError(f"{where}: external data {location!r} must be a file name beside the model")
    file = path.parent / relative
    if leads_outside(file, link_root(path.parent)):
        raise SourceError(f"{where}: external data {location!r} links outside the model's folder; refused")
    try:
        offset, length = int(fields.get("offset", 0)), int(fields.get("length", nbytes))
    except ValueError:
        raise SourceError(f"{where}: external data offset and length must be integers") from None
    if length != nbytes or offset < 0:
        raise SourceError(f"{where}: external data holds {length} bytes at offset {offset}, but its shape needs "
                          f"{nbytes}")
    try:
        size = file.stat().st_size
    except OSError as error:
        raise SourceError(f"{where}: external data {location!r}: cannot read: {error.strerror or error}") from None
    if offset + length > size:
        raise SourceError(f"{where}: external data runs past the end of {location!r} ({size} bytes)")
    return FileRange(file, offset, length)


def _key(name: str, use: _Use | None, leaf: str) -> str:
    """The initializer's own name where it is a parameter's, else one from its node."""
    if use is None or not ANONYMOUS.match(name):
        return name
    return f"{use.prefix}.{leaf}"


def _layers(name: str, shape: tuple[int, ...], dtype: str | None, data: StridedRef | Dequantized | None,
            use: _Use | None) -> Iterator[Layer]:
    if use is not None and use.op in RECURRENT_OPS:
        yield from _recurrent(name, shape, dtype, data, use)
        return
    if use is None:
        owner, leaf = Owner(name.rpartition(".")[0], None, note="used by no op fancli knows"), "weight"
    elif use.op in ("Conv", "ConvTranspose"):
        owner = _conv_owner(use.prefix if ANONYMOUS.match(name) else name.rpartition(".")[0], use, shape)
        leaf = "weight" if use.position == 1 else "bias"
    else:  # Gemm, MatMul
        owner = Owner(use.prefix if ANONYMOUS.match(name) else name.rpartition(".")[0], "Linear")
        leaf = "weight" if use.position == 1 else "bias"
    key = _key(name, use, leaf)
    if use is not None and use.op == "MatMul" and leaf == "weight" and len(shape) == 2 and ANONYMOUS.match(name):
        yield _transposed_linear(key, shape, dtype, data, owner)
        return
    layer = module_layer(key, shape, dtype, owner, data)
    if use is not None and leaf == "weight":
        layer = replace(layer, **_weight_structure(use, owner, shape))
    yield layer


def _conv_owner(module: str, use: _Use, shape: tuple[int, ...]) -> Owner:
    """A Conv/ConvTranspose node as torch's module, its structure from the node's attributes."""
    kernel = use.attributes.get("kernel_shape")
    dims = len(kernel) if isinstance(kernel, list) and kernel else max(len(shape) - 2, 1)
    class_name = f"{use.op}{dims}d"
    try:
        groups = int(use.attributes.get("group", 1))
        stride = expand(use.attributes.get("strides", 1), dims)
        dilation = expand(use.attributes.get("dilations", 1), dims)
    except (TypeError, ValueError):
        groups = 0
    if groups < 1:
        return Owner(module, class_name, note="its group, strides or dilations are not positive integers")
    return Owner(module, class_name, groups, stride, dilation)


def _transposed_linear(key: str, shape: tuple[int, ...], dtype: str | None, data: StridedRef | Dequantized | None,
                       owner: Owner) -> Layer:
    """An exporter's anonymous MatMul initializer is a Linear's weight it transposed to [in, out]: listed as
    the module's own [out, in] weight (its values read through the transposed view; a dequantized one's
    statistics, which do not depend on the order, as they come)."""
    logical = (shape[1], shape[0])
    if isinstance(data, StridedRef):
        data = StridedRef(data.source, data.dtype, logical, (1, shape[1]), 0, data.storage_elements)
    return replace(module_layer(key, logical, dtype, owner, data), stored_shape=shape,
                   notes=(f"stored transposed, [in, out] {list(shape)}, as the MatMul computes x @ W",))


def _weight_structure(use: _Use, owner: Owner, shape: tuple[int, ...]) -> dict[str, Any]:
    """What module_layer cannot tell from a key (a root weight not named `weight`): the conv structure and
    the [in, out] layout."""
    if use.op in ("Conv", "ConvTranspose"):
        return dict(groups=owner.groups, stride=owner.stride, dilation=owner.dilation,
                    transposed=use.op == "ConvTranspose")
    in_out = use.op == "MatMul" or not use.attributes.get("transB", 0)
    return dict(layout="in_out") if in_out and len(shape) == 2 else {}


def _recurrent(name: str, shape: tuple[int, ...], dtype: str | None, data: StridedRef | None,
               use: _Use) -> Iterator[Layer]:
    """W, R and B of an LSTM/GRU/RNN node as torch's parameters, one direction each."""
    owner = Owner(use.module, use.op)
    if len(shape) != (3 if use.position < 3 else 2) or shape[0] > 2 or use.position == 3 and shape[1] % 2:
        yield module_layer(name, shape, dtype, replace(owner, note=f"an {use.op} input of an unexpected shape"),
                           data)
        return
    if use.position == 3:
        pieces = [("bias_ih", (shape[1] // 2,)), ("bias_hh", (shape[1] // 2,))]
    else:
        pieces = [("weight_ih" if use.position == 1 else "weight_hh", shape[1:])]
    offset = 0
    for direction in range(shape[0]):
        for leaf, part in pieces:
            key = f"{use.module}.{leaf}_l{use.layer}{'_reverse' if direction else ''}".lstrip(".")
            numel = math.prod(part)
            ref = None if data is None else StridedRef(data.source, data.dtype, part, row_major_strides(part),
                                                       offset, data.storage_elements)
            offset += numel
            yield module_layer(key, part, dtype, owner, ref)
