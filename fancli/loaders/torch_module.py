"""Sources that need torch: live and pickled modules, TorchScript, factories (torch.export: export_program).

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
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import SourceError
from ..kinds import KIND_OF_CLASS
from ..layer import BuiltBy, Layer, Model
from ..safe_io import open_regular
from . import pickle_scan
from .checkpoint import STATE_DICT_KEYS, NoStateDict, find_state_dict
from .entry import Entry
from .factory import a, build, importable_cwd, one_line
from .flat_keys import layers_from_entries
from .module_library import built_by_class
from .module_structure import HF_CONV1D, Owner, ints, is_conv, with_reinit
from .torch_pickle import (  # one wording whether torch or fancli reads it
    MAX_PICKLE_BYTES,
    untrusted_message,
)
from .torch_tensor import dtype_name, tensor_data, tensor_identity, tensor_layer
from .torch_zip import TorchZip

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Why a lazy module's parameter (nn.LazyLinear, nn.LazyConv2d…) cannot be listed before the module's first call.
_LAZY = "is uninitialized: a lazy module's parameter has no shape until the module's first call (run the model once)"
_NO_STRUCTURE = "TorchScript: groups, stride and dilation are not recorded for this conv; only torch's fans are given"


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


def layers_from_module(module: nn.Module, source: str | None = None) -> tuple[Layer, ...]:
    """One Layer per parameter in `named_parameters()` order; a tied parameter once, its other keys as aliases.
    A lazy module's parameter before its first call is refused, naming `source` (the module's class if None)."""
    keys: dict[int, list[str]] = {}
    for key, param in module.named_parameters(remove_duplicate=False):
        keys.setdefault(id(param), []).append(key)
    modules = dict(module.named_modules())
    layers = []
    for key, param in module.named_parameters():
        owner_name = key.rpartition(".")[0]
        if nn.parameter.is_lazy(param):
            raise SourceError(f"{source or _label(module)}: {type(modules[owner_name]).__name__} parameter {key!r} "
                              f"{_LAZY}")
        owner = _module_owner(owner_name, modules[owner_name])
        aliases = tuple(other for other in keys[id(param)] if other != key)
        layers.append(tensor_layer(key, param, owner, aliases))
    return with_reinit(tuple(layers), lambda path: module_class(modules[path]) if path in modules else None)


def _model(source: str, format: str, module: nn.Module, notes: tuple[str, ...] = ()) -> Model:
    return Model(source=source, format=format, layers=layers_from_module(module, source), name=module_class(module),
                 notes=notes, built_by=_built_by(module))


def _built_by(module: nn.Module) -> BuiltBy | None:
    """The library the root module's class names (`module_library`): a scripted module's TorchScript name,
    else the first class of its MRO that one names (a subclass of torchvision's ResNet runs ResNet's init);
    a transformers model's config read through its `to_dict()`."""
    if isinstance(module, torch.jit.ScriptModule):  # its Python class is torch's; the C++ module keeps the name
        return built_by_class(module._c.qualified_name)
    for cls in type(module).__mro__:
        config = _config(module) if cls.__module__.partition(".")[0] == "transformers" else None
        found = built_by_class(f"{cls.__module__}.{cls.__name__}", config)
        if found is not None:
            return found
    return None


def _config(module: nn.Module) -> dict | None:
    """A transformers model's config as a dict (`PretrainedConfig.to_dict()`), or None."""
    to_dict = getattr(getattr(module, "config", None), "to_dict", None)
    config = to_dict() if callable(to_dict) else None
    return config if isinstance(config, dict) else None


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
    with open_regular(path, str(path)) as handle:
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
    shape to take fans from, and torch raises on their storage; they are refused with one line, as is a lazy
    module's parameter (no shape at all)."""
    if nn.parameter.is_lazy(tensor):
        raise SourceError(f"{path}: tensor {str(key)[:100]!r} {_LAZY}")
    if tensor.is_nested:
        what = "a nested tensor (tensors of different shapes: no single shape to take fans from)"
    elif tensor.layout != torch.strided:
        what = f"a {str(tensor.layout).removeprefix('torch.').replace('_', ' ')} tensor"
    else:
        return tensor
    raise SourceError(f"{path}: tensor {str(key)[:100]!r} is {what}; fancli reads dense weights only")


def _entries(path: Path, state_dict: dict) -> Iterator[Entry]:
    for key, tensor in state_dict.items():
        tensor = _dense(path, key, tensor)
        yield Entry(str(key), tuple(tensor.shape), dtype_name(tensor.dtype), tensor_data(tensor, f"{path}: {key}"),
                    tensor_identity(tensor))


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
        with open_regular(path, str(path)) as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
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


# --- TorchScript ---------------------------------------------------------------------------------


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


# --- factories -------------------------------------------------------------------------------------


def load_factory(spec: str, kwargs: dict | None = None) -> Model:
    """`pkg.module:callable` called with kwargs; it must build an nn.Module (or a torch.export program)."""
    result = build(spec, kwargs)
    if isinstance(result, torch.export.ExportedProgram):
        from .export_program import exported_model

        return exported_model(spec, "factory", result)
    if not isinstance(result, nn.Module):
        raise SourceError(f"{spec}: returned {a(type(result).__name__)}, not a torch.nn.Module")
    return _model(spec, "factory", result)


# --- objects in memory (the library: a notebook's model, a test's state_dict) ------------------------


def _label(obj: Any) -> str:
    """How an object with no file name is shown as the report's source: `<module LeNet>`."""
    if isinstance(obj, nn.Module):
        return f"<module {module_class(obj)}>"
    return f"<{type(obj).__name__}>" if isinstance(obj, torch.export.ExportedProgram) else "<state_dict>"


def model_from_object(obj: Any) -> Model | None:
    """A Model from a live `nn.Module`, an `ExportedProgram`, a state_dict (a mapping of names to tensors)
    or a checkpoint dict holding one; None if `obj` is none of these, so the caller can say what it is.

    The module's own classes give groups, stride and transposition, as for a pickled module; a state_dict
    is read by the same flat-key reader as a torch.save file, so the two agree on every key.
    """
    label = _label(obj)
    if isinstance(obj, nn.Module):
        return _model(label, "module", obj)
    if isinstance(obj, torch.export.ExportedProgram):
        from .export_program import exported_model

        return exported_model(label, "exported-program", obj)
    if not isinstance(obj, dict) and not hasattr(obj, "items"):
        return None
    obj = dict(obj.items())
    module = _module_in(obj)
    if module is not None:  # {"model": module, "optimizer": …}
        return _model(label, "module", *module)
    try:
        mapping, notes = find_state_dict(obj, lambda value: isinstance(value, torch.Tensor))
    except NoStateDict as error:
        raise SourceError(f"{label}: holds {error}, not a state_dict or model") from None
    layers = layers_from_entries(_entries(Path(label), mapping))
    if not layers:
        raise SourceError(f"{label}: holds no floating-point weights")
    return Model(source=label, format="state-dict", layers=layers, notes=notes)
