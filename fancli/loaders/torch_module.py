"""Sources that need torch: live and pickled modules, TorchScript, torch.export programs, factories.

A module knows what a state_dict cannot: the class that owns each parameter, so groups, stride,
dilation and transposition are facts here, not guesses. Only a pickled module runs code from the file
when loaded, and only with `--trust`; a plain torch.save file is read with torch's weights-only loader.
"""

from __future__ import annotations

import mmap
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Hashable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import SourceError
from ..kinds import KIND_OF_CLASS
from ..layer import Layer, Model
from ..tensors import CHUNK_ELEMENTS, MAX_REPEATS
from . import pickle_scan
from .factory import a, build, importable_cwd, one_line
from .infer import (
    STATE_DICT_KEYS,
    Entry,
    NoStateDict,
    find_state_dict,
    layers_from_entries,
)
from .module_structure import HF_CONV1D, Owner, expand, ints, is_conv, module_layer
from .torch_zip import (  # one wording whether torch reads the file or fancli does
    MAX_PICKLE_BYTES,
    TorchZip,
    untrusted_message,
)

_NUMPY_DTYPES = (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                 torch.int8, torch.uint8, torch.bool)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONV_OPS = re.compile(r"^aten::(_?convolution|conv_transpose[123]d|conv[123]d)$")
_NO_STRUCTURE = "TorchScript: groups, stride and dilation are not recorded for this conv; only torch's fans are given"


def dtype_name(dtype: torch.dtype) -> str:
    """torch's dtype name without the "torch." prefix, as Layer.dtype and TensorData.dtype use it."""
    return str(dtype).removeprefix("torch.")


class TorchTensorData:
    """A torch tensor as `TensorData`; dtypes numpy lacks (bfloat16, float8) are widened per chunk.

    `where` names the tensor in errors (the file and key where known)."""

    def __init__(self, tensor: torch.Tensor, where: str = "tensor") -> None:
        self.tensor = tensor
        self.where = where
        self.dtype = dtype_name(tensor.dtype)
        self.shape = tuple(tensor.shape)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        """Flattened values in order, at most max_elements at a time: no block of a non-contiguous tensor
        copies more than a chunk. A view that would repeat its storage more than MAX_REPEATS times (an
        expand(): numel far beyond its storage) is refused, so the work is bounded by what is stored."""
        tensor = self.tensor.detach()
        if tensor.numel() == 0:
            return
        try:
            stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        except (RuntimeError, NotImplementedError):  # no plain storage (a sparse or wrapper tensor)
            stored = tensor.numel()
        if tensor.numel() > MAX_REPEATS * max(stored, max_elements):
            raise SourceError(f"{self.where}: a view of {tensor.numel()} values over {stored} stored ones "
                              f"(stride 0?); its statistics would read each value {tensor.numel() // max(stored, 1)} "
                              "times")
        yield from _torch_blocks(tensor.reshape(1) if tensor.dim() == 0 else tensor, max_elements)


def _torch_blocks(tensor: torch.Tensor, max_elements: int) -> Iterator[np.ndarray]:
    """A tensor's values, flattened, in blocks of whole rows; a row larger than a chunk is split along the
    next dim, so a non-contiguous block copied by reshape is never more than max_elements."""
    if tensor.numel() <= max_elements:
        yield _to_numpy(tensor.reshape(-1))
        return
    if tensor.dim() == 1:
        for start in range(0, tensor.numel(), max_elements):
            yield _to_numpy(tensor[start : start + max_elements])
        return
    row = tensor[0].numel()
    if row > max_elements:
        for index in range(tensor.shape[0]):
            yield from _torch_blocks(tensor[index], max_elements)
        return
    rows = max_elements // row
    for start in range(0, tensor.shape[0], rows):
        yield _to_numpy(tensor[start : start + rows].reshape(-1))


def _to_numpy(chunk: torch.Tensor) -> np.ndarray:
    chunk = chunk.cpu()
    if chunk.dtype not in _NUMPY_DTYPES:
        chunk = chunk.float()
    return chunk.numpy()


def _tensor_data(tensor: torch.Tensor, where: str = "tensor") -> TorchTensorData | None:
    """No handle for meta tensors: they have a shape but no values to observe."""
    return None if tensor.is_meta else TorchTensorData(tensor, where)


def _layer(key: str, tensor: torch.Tensor, owner: Owner, aliases: tuple[str, ...] = ()) -> Layer:
    return module_layer(key, tuple(tensor.shape), dtype_name(tensor.dtype), owner, _tensor_data(tensor, key),
                        aliases)


def module_class(module: nn.Module) -> str:
    """The torch.nn class a module is or derives from (a Conv2d subclass is a conv), else its own name.

    By name, as TorchScript and torch.export record classes, so every source classifies a module alike.
    """
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name
    for cls in type(module).__mro__:
        if cls.__name__ in KIND_OF_CLASS:
            return cls.__name__
    return type(module).__name__


def _module_owner(name: str, module: nn.Module) -> Owner:
    """Structure from the module's attributes: live and scripted modules keep them, traced ones only their graph."""
    class_name = module_class(module)
    scripted = isinstance(module, torch.jit.ScriptModule)
    if class_name == HF_CONV1D:
        return Owner(name, class_name, in_out=hasattr(module, "nf") or (scripted and _traced_in_out(module)))
    if not is_conv(class_name):
        return Owner(name, class_name)
    groups = getattr(module, "groups", None)
    stride, dilation = getattr(module, "stride", None), getattr(module, "dilation", None)
    if groups is None and scripted:
        stride, dilation, groups = _traced_conv(module) or (None, None, None)
    note = _NO_STRUCTURE if groups is None else None
    return Owner(name, class_name, groups, ints(stride), ints(dilation), note=note)


def _graph_nodes(module: torch.jit.ScriptModule) -> list[torch._C.Node]:
    """The nodes of a TorchScript module's forward (none when it has no forward)."""
    try:
        return list(module.graph.nodes())
    except (AttributeError, RuntimeError):
        return []


def _traced_conv(module: torch.jit.ScriptModule) -> tuple[Any, Any, int] | None:
    """(stride, dilation, groups) from the aten::_convolution call a traced conv's graph records."""
    for node in _graph_nodes(module):
        if node.kind() == "aten::_convolution":
            inputs = list(node.inputs())
            return _constant(inputs[3]), _constant(inputs[5]), _constant(inputs[8])
    return None


def _traced_in_out(module: torch.jit.ScriptModule) -> bool:
    """A traced HF Conv1D keeps no `nf`, but its graph computes x @ weight: the weight is stored [in, out]."""
    for node in _graph_nodes(module):
        if node.kind() == "aten::addmm":
            source = list(node.inputs())[2].node()
            if source.kind() == "prim::GetAttr" and source.s("name") == "weight":
                return True
    return False


def _constant(value: torch._C.Value) -> Any:
    """A graph constant, or a list built from constants, as a Python value."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return tuple(item.toIValue() for item in node.inputs())
    return value.toIValue()


def layers_from_module(module: nn.Module) -> tuple[Layer, ...]:
    """One Layer per parameter in `named_parameters()` order; a tied parameter once, its other keys as aliases."""
    keys: dict[int, list[str]] = {}
    for key, param in module.named_parameters(remove_duplicate=False):
        keys.setdefault(id(param), []).append(key)
    modules = dict(module.named_modules())
    layers = []
    for key, param in module.named_parameters():
        owner_name = key.rpartition(".")[0]
        owner = _module_owner(owner_name, modules[owner_name])
        aliases = tuple(other for other in keys[id(param)] if other != key)
        layers.append(_layer(key, param, owner, aliases))
    return tuple(layers)


def _model(source: str, format: str, module: nn.Module, notes: tuple[str, ...] = ()) -> Model:
    return Model(source=source, format=format, layers=layers_from_module(module), name=module_class(module),
                 notes=notes)


# --- torch.save files ------------------------------------------------------------------------------


def _refusal(path: Path, error: pickle.UnpicklingError) -> str:
    """Why the weights-only loader refused the file, naming the global it would have had to import."""
    text = _ANSI.sub("", str(error))
    found = _GLOBAL.search(text)
    if found:
        return untrusted_message(path, found.group(1))
    reason = _WEIGHTS_UNPICKLER.search(text)
    detail = reason.group(1).strip() if reason else one_line(error)
    return f"{path}: torch's weights-only loader refuses it ({detail}); pass --trust if you trust its source"


def _is_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _module_in(obj: Any) -> tuple[nn.Module, tuple[str, ...]] | None:
    """A trusted pickle's module: the object itself, or a checkpoint's entry (YOLO keeps {"model": Module})."""
    if isinstance(obj, nn.Module):
        return obj, ()
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return obj[key], (f"module found under {key!r}",)
    return None


def _dense(path: Path, key: Any, tensor: torch.Tensor) -> torch.Tensor:
    """A weight fancli can describe: strided (dense). Sparse and nested tensors have no single weight
    shape to take fans from, and torch raises on their storage; they are refused with one line."""
    if tensor.is_nested:
        what = "a nested tensor"
    elif tensor.layout != torch.strided:
        what = f"a {str(tensor.layout).removeprefix('torch.').replace('_', ' ')} tensor"
    else:
        return tensor
    raise SourceError(f"{path}: tensor {str(key)[:100]!r} is {what}; fancli reads dense weights only")


def _entries(path: Path, state_dict: dict) -> Iterator[Entry]:
    for key, tensor in state_dict.items():
        tensor = _dense(path, key, tensor)
        yield Entry(str(key), tuple(tensor.shape), dtype_name(tensor.dtype), _tensor_data(tensor, f"{path}: {key}"),
                    _identity(tensor))


def _identity(tensor: torch.Tensor) -> Hashable | None:
    """Same storage, offset, shape and stride: one tensor under several keys (empty tensors share no data)."""
    if tensor.numel() == 0 or tensor.is_meta:
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _from_loaded(path: Path, obj: Any) -> Model:
    """A Model from whatever torch.load returned: a module, a state_dict, or a checkpoint holding one."""
    module = _module_in(obj)
    if module is not None:
        return _model(str(path), "torch-module", *module)
    try:
        mapping, notes = find_state_dict(obj, lambda value: isinstance(value, torch.Tensor))
    except NoStateDict as error:
        raise SourceError(f"{path}: holds {error}, not a state_dict or model") from None
    layers = layers_from_entries(_entries(path, mapping))
    if not layers:
        raise SourceError(f"{path}: holds no floating-point weights")
    return Model(source=str(path), format="torch-zip" if _is_zip(path) else "torch-pickle", layers=layers,
                 notes=notes)


def _dry_run(path: Path) -> None:
    """Refuse a legacy file whose pickles are memory or time bombs before torch unpickles them.

    (A zip's data.pkl reaches torch only after fancli's own reader ran the same check on it.)
    """
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pickle_scan.scan_legacy(data)
    except pickle_scan.TooCostly as refused:
        raise SourceError(f"{path}: its pickle {refused}") from None
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: cannot read: {one_line(error)}") from None


def load_weights_only(path: Path) -> Model:
    """A torch.save file through torch's weights-only unpickler, which imports no code from the file."""
    zipped = _is_zip(path)
    if not zipped:
        _dry_run(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 5": the error, if any, says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu", mmap=zipped)
    except pickle.UnpicklingError as error:
        raise SourceError(_refusal(path, error)) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, ValueError… for malformed files
        raise SourceError(f"{path}: cannot read it as a torch.save file: {one_line(error)}") from None
    return _from_loaded(path, obj)


def load_pickled_module(path: Path, trust: bool) -> Model:
    """A torch.save'd module or checkpoint; unpickled with arbitrary globals only when the user trusts it."""
    if not trust:
        return load_weights_only(path)
    try:
        with importable_cwd():
            obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as error:  # unpickling runs the file's code: anything may come out of it
        raise SourceError(f"{path}: cannot unpickle it: {type(error).__name__}: {one_line(error)}") from None
    return _from_loaded(path, obj)


# --- TorchScript and torch.export ------------------------------------------------------------------


def load_torchscript(path: Path, archive: TorchZip | None = None) -> Model:
    """A TorchScript archive through torch.jit.load, which runs the archive's TorchScript code (`--trust`).

    Its pickles still pass the pre-scan first: trusting the code is not trusting a corrupt file.
    """
    _scan_script_pickles(path, archive)
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the user only has the file
            warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated", category=DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    except Exception as error:  # torch raises RuntimeError with a C++ trace for anything it cannot read
        raise SourceError(f"{path}: cannot read it as TorchScript: {one_line(error)}") from None
    return _model(str(path), "torchscript", module)


def _scan_script_pickles(path: Path, archive: TorchZip | None) -> None:
    """Refuse pickle bombs in data.pkl and constants.pkl before torch unpickles them (torch reports an
    archive it cannot open itself)."""
    try:
        archive = archive or TorchZip(path)
    except SourceError:
        return
    for member in (f"{archive.prefix}/data.pkl", f"{archive.prefix}/constants.pkl"):
        if archive.prefix and member in archive.members:
            try:
                pickle_scan.scan(archive.read_member(member, MAX_PICKLE_BYTES, "TorchScript metadata"))
            except pickle_scan.PickleRefused as refused:
                raise SourceError(f"{path}: {member.rpartition('/')[2]} {refused}") from None


def load_exported(path: Path) -> Model:
    """A torch.export program (.pt2) through torch.export.load, which unpickles the archive's sample inputs
    and opaque constants with arbitrary globals (`--trust`)."""
    try:
        program = torch.export.load(path)
    except Exception as error:  # a malformed archive fails in many ways inside torch
        raise SourceError(f"{path}: cannot read it as a torch.export program: {one_line(error)}") from None
    return _exported_model(str(path), "torch-export", program)


def _exported_model(source: str, format: str, program: torch.export.ExportedProgram) -> Model:
    classes = _exported_classes(program.graph)
    return Model(source=source, format=format, layers=_exported_layers(program, classes), name=classes.get(""))


def _exported_classes(graph: torch.fx.Graph) -> dict[str, str]:
    """Module path -> class name, from the module stack each node records."""
    classes: dict[str, str] = {}
    for node in graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            qualified = cls if isinstance(cls, str) else cls.__qualname__
            classes.setdefault(path, qualified.rpartition(".")[2])
    return classes


def _exported_layers(program: torch.export.ExportedProgram, classes: dict[str, str]) -> tuple[Layer, ...]:
    from torch.export.graph_signature import InputKind

    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    placeholders = {spec.target: nodes[spec.arg.name] for spec in program.graph_signature.input_specs
                    if spec.kind == InputKind.PARAMETER}
    first: dict[Hashable, int] = {}
    entries: list[tuple[str, torch.Tensor]] = []
    aliases: dict[int, list[str]] = {}
    for key in placeholders:
        tensor = program.state_dict[key]
        identity = _identity(tensor)
        if identity is not None and identity in first:
            aliases.setdefault(first[identity], []).append(key)
            continue
        if identity is not None:
            first[identity] = len(entries)
        entries.append((key, tensor))
    owners: dict[str, Owner] = {}
    layers = []
    for index, (key, tensor) in enumerate(entries):
        name = key.rpartition(".")[0]
        if name not in owners:
            owners[name] = _exported_owner(name, classes, placeholders.get(f"{name}.weight" if name else "weight"))
        layers.append(_layer(key, tensor, owners[name], tuple(aliases.get(index, ()))))
    return tuple(layers)


def _exported_owner(name: str, classes: dict[str, str], weight: torch.fx.Node | None) -> Owner:
    """The owner's class from the module stack, else from the op that uses its weight; conv structure from the op."""
    class_name = classes.get(name)
    conv = _conv_use(weight) if weight is not None else None
    if class_name not in KIND_OF_CLASS and weight is not None:
        class_name = _op_class(weight, conv) or class_name
    if conv is None:
        in_out = class_name == HF_CONV1D and weight is not None and _used_as_in_out(weight)
        note = None if class_name else "its module is not in the exported graph's module stack: type unknown"
        return Owner(name, class_name, in_out=in_out, note=note)
    spatial = len(weight.meta["val"].shape) - 2
    return Owner(name, class_name, int(conv.get("groups", 1)), expand(conv.get("stride", 1), spatial),
                  expand(conv.get("dilation", 1), spatial))


def _aten(node: torch.fx.Node) -> str:
    schema = getattr(node.target, "_schema", None)
    return schema.name if schema is not None else ""


def _conv_use(param: torch.fx.Node) -> dict[str, Any] | None:
    """The keyword arguments (defaults filled in) of the first convolution that takes `param` as its weight."""
    from torch.fx.operator_schemas import normalize_function

    for user in param.users:
        if _CONV_OPS.match(_aten(user)) and len(user.args) > 1 and user.args[1] is param:
            normalized = normalize_function(user.target, user.args, user.kwargs, normalize_to_only_use_kwargs=True)
            kwargs = dict(normalized.kwargs) if normalized else dict(user.kwargs)
            kwargs.setdefault("transposed", "transpose" in _aten(user))
            return kwargs
    return None


def _op_class(param: torch.fx.Node, conv: dict[str, Any] | None) -> str | None:
    """The torch.nn class an op implies for a weight its module stack does not name (e.g. attention's out_proj)."""
    if conv is not None:
        dims = len(param.meta["val"].shape) - 2
        return f"ConvTranspose{dims}d" if conv["transposed"] else f"Conv{dims}d"
    for user in param.users:
        op = _aten(user)
        if op == "aten::linear" and user.args[1] is param:
            return "Linear"
        if op == "aten::embedding" and user.args[0] is param:
            return "Embedding"
    return None


def _used_as_in_out(param: torch.fx.Node) -> bool:
    """The weight is the right operand of a matmul (x @ W): stored [in, out], as HF Conv1D does."""
    positions = {"aten::addmm": 2, "aten::mm": 1, "aten::matmul": 1}
    return any(
        _aten(user) in positions and len(user.args) > positions[_aten(user)]
        and user.args[positions[_aten(user)]] is param
        for user in param.users
    )


# --- factories -------------------------------------------------------------------------------------


def load_factory(spec: str, kwargs: dict | None = None) -> Model:
    """`pkg.module:callable` called with kwargs; it must build an nn.Module (or a torch.export program)."""
    result = build(spec, kwargs)
    if isinstance(result, torch.export.ExportedProgram):
        return _exported_model(spec, "factory", result)
    if not isinstance(result, nn.Module):
        raise SourceError(f"{spec}: returned {a(type(result).__name__)}, not a torch.nn.Module")
    return _model(spec, "factory", result)
