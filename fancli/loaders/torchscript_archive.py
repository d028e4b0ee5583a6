"""TorchScript archives read without torch: the module tree from data.pkl, structure from the code's text.

`torch.jit.load` runs the archive's TorchScript: a class's `__setstate__` can write any file the user
can (`torch.from_file(path, True, n).copy_(…)`), loop forever or allocate gigabytes. So without
`--trust` fancli never calls it. data.pkl pickles the module tree, each module a `__torch__.<path>.<Class>`
object whose state is a dict of its attributes; it goes through the same pre-scan and allow-list
unpickler as a torch.save file, with module classes as inert records. Which attributes are parameters,
and the constants scripting bakes into the code (stride, groups, dilation), are read by parsing the
code files with `ast`, which builds a syntax tree and runs nothing.
"""

from __future__ import annotations

import ast
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterator

from ..errors import SourceError
from ..layer import Model
from ..weights.tensors import StridedRef
from .module_library import built_by_class
from .module_structure import (
    HF_CONV1D,
    Owner,
    expand,
    is_conv,
    module_layer,
    with_reinit,
)
from .torch_pickle import WeightsUnpickler, SavedTensor
from .torch_zip import TorchZip

MAX_CODE_BYTES = 4 * 1024 * 1024  # one class file; torch writes a few KB per class
MAX_CODE_TOTAL = 64 * 1024 * 1024  # all class files parsed for one archive
#: Names, numbers and symbols in one class file: its syntax tree peaks near 700 bytes a token (180 MiB here).
MAX_CODE_TOKENS = 1 << 18
#: Each byte as its kind, for `_tokens`: a name or number character (a), white space ( ), or a symbol (.).
_KINDS = bytes(ord("a") if c < 128 and (chr(c).isalnum() or chr(c) == "_") else ord(" ") if chr(c) in " \t\n\r\f\v"
               else ord(".") for c in range(256))
NO_STRUCTURE = "TorchScript: groups, stride and dilation are not recorded for this conv; only torch's fans are given"
#: Positions of (stride, dilation, groups) in the conv calls TorchScript code makes.
_CONV_ARGS = {"_convolution": (3, 5, 8), "conv1d": (3, 5, 6), "conv2d": (3, 5, 6), "conv3d": (3, 5, 6),
              "conv_transpose1d": (3, 7, 6), "conv_transpose2d": (3, 7, 6), "conv_transpose3d": (3, 7, 6)}
_CONV_KEYWORDS = ("stride", "dilation", "groups")


class ScriptObject:
    """An object of a TorchScript class as data.pkl records it: the class's qualified name and the state
    BUILD gives it. Nothing of the class runs: `__setstate__` here only keeps the state."""

    qualified = ""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def class_name(self) -> str:
        return self.qualified.rpartition(".")[2]


class ScriptUnpickler(WeightsUnpickler):
    """The weights allow-list, plus TorchScript's own: `__torch__` classes become inert records, and
    `torch.jit._pickle`'s list builders return their argument as torch's Python versions do."""

    LISTS = {"build_intlist": int, "build_doublelist": float, "build_boollist": bool, "build_tensorlist": object}

    def __init__(self, data: bytes, allowance: int) -> None:
        super().__init__(data, allowance)
        self.classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self.script_class(f"{module}.{name}")
        if module == "torch.jit._pickle" and name in self.LISTS:
            item_type = self.LISTS[name]
            return lambda items: self.typed_list(items, item_type)
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return self.restore_type_tag
        return super().find_class(module, name)

    def script_class(self, qualified: str) -> type[ScriptObject]:
        if qualified not in self.classes:
            self.charge(1024 + len(qualified))
            self.classes[qualified] = type("ScriptObject", (ScriptObject,), {"qualified": qualified})
        return self.classes[qualified]

    def typed_list(self, items: Any, item_type: type) -> list:
        if not (isinstance(items, list) and all(isinstance(item, item_type) for item in items)):
            raise pickle.UnpicklingError("a TorchScript list of the wrong type")
        return items

    def restore_type_tag(self, value: Any, type_name: Any) -> Any:
        if not isinstance(type_name, str):
            raise pickle.UnpicklingError("a TorchScript type tag that is not a string")
        return value


@dataclass
class _ClassCode:
    """What a class's code states, found without running it."""

    parameters: tuple[str, ...] | None = None  # `__parameters__ = [...]`; None when the code was not read
    constants: dict[str, Any] = field(default_factory=dict)  # `stride : Final[Tuple[int, int]] = (2, 2)`
    conv: tuple[Any, Any, Any] | None = None  # (stride, dilation, groups) of the conv call in its code
    matmul_in_out: bool = False  # forward computes torch.addmm(bias, x, self.weight): [in, out] storage
    setstate: bool = False  # defines __setstate__: its state means what that code makes of it


class _Code:
    """The archive's class files, each read and parsed once, within a total budget: what each class states
    is kept, its syntax tree is not (a tree takes some 700 bytes a token, a class file's few KB only)."""

    def __init__(self, archive: TorchZip) -> None:
        self.archive = archive
        self.files: dict[str, dict[str, _ClassCode]] = {}
        self.budget = MAX_CODE_TOTAL

    def of(self, qualified: str) -> _ClassCode:
        module, _, name = qualified.rpartition(".")
        return self._classes(f"{self.archive.prefix}/code/{module.replace('.', '/')}.py").get(name, _ClassCode())

    def _classes(self, member: str) -> dict[str, _ClassCode]:
        """What each class of one file states, by class name (the first where a name repeats); empty where
        the file is missing or not Python a parser takes."""
        if member not in self.files:
            self.files[member] = classes = {}
            info = self.archive.members.get(member)
            if info is not None:
                self.budget -= info.file_size
                if self.budget < 0:
                    raise SourceError(f"{self.archive.path}: its TorchScript code is larger than "
                                      f"{MAX_CODE_TOTAL >> 20} MiB in all; refused unread")
                text = self.archive.read_member(member, MAX_CODE_BYTES, "a TorchScript class")
                tokens = _tokens(text)
                if tokens > MAX_CODE_TOKENS:
                    raise SourceError(f"{self.archive.path}: its TorchScript file {member.partition('/')[2][:120]} "
                                      f"has {tokens} names and symbols, more than the {MAX_CODE_TOKENS} fancli "
                                      "parses in one file; refused unparsed")
                tree = _parse(text)
                for node in tree.body if tree else ():
                    if isinstance(node, ast.ClassDef) and node.name not in classes:
                        classes[node.name] = _read_class(node)
        return self.files[member]


def _tokens(text: bytes) -> int:
    """The names, numbers and symbols in `text`, a bound on the nodes of its syntax tree known before it is
    built; counted in C without a list of them (a regex's would take ~90 bytes a token)."""
    kinds = text.translate(_KINDS)
    return kinds.count(b".") + kinds.count(b" a") + kinds.count(b".a") + kinds.startswith(b"a")


def _parse(text: bytes) -> ast.Module | None:
    """The syntax tree, or None where the text is not Python a parser takes (too deep, not UTF-8…)."""
    try:
        return ast.parse(text.decode("utf-8"))
    except (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeDecodeError):
        return None


def _read_class(node: ast.ClassDef) -> _ClassCode:
    code = _ClassCode(parameters=())
    for statement in node.body:
        if isinstance(statement, ast.Assign) and _names(statement.targets) == ["__parameters__"]:
            value = _literal(statement.value)
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                code.parameters = tuple(value)
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value:
            code.constants[statement.target.id] = _literal(statement.value)
        elif isinstance(statement, ast.FunctionDef):
            code.setstate |= statement.name == "__setstate__"
            if statement.name == "forward":
                code.conv = code.conv or _conv_call(statement)
                code.matmul_in_out = _matmul_in_out(statement)
    return code


def _names(targets: list[ast.expr]) -> list[str]:
    return [target.id for target in targets if isinstance(target, ast.Name)]


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None


def _calls(function: ast.FunctionDef, names: set[str]) -> Iterator[ast.Call]:
    """Calls of `torch.<name>` in a method, in the order the code makes them."""
    for node in ast.walk(function):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


def _conv_call(forward: ast.FunctionDef) -> tuple[Any, Any, Any] | None:
    """(stride, dilation, groups) of the first conv a traced module's forward calls, as literals."""
    for call in _calls(forward, set(_CONV_ARGS)):
        positions = _CONV_ARGS[call.func.attr]  # type: ignore[attr-defined]
        keywords = {keyword.arg: keyword.value for keyword in call.keywords}
        values = []
        for position, name in zip(positions, _CONV_KEYWORDS):
            node = call.args[position] if position < len(call.args) else keywords.get(name)
            values.append(None if node is None else _literal(node))
        return tuple(values)  # type: ignore[return-value]
    return None


def _matmul_in_out(forward: ast.FunctionDef) -> bool:
    """A traced HF Conv1D computes torch.addmm(bias, x, weight) with weight = self.weight: stored [in, out]."""
    attributes = {}
    for node in ast.walk(forward):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            attributes[node.targets[0].id] = node.value.attr
    for call in _calls(forward, {"addmm"}):
        if len(call.args) > 2:
            operand = call.args[2]
            name = operand.attr if isinstance(operand, ast.Attribute) else attributes.get(getattr(operand, "id", ""))
            if name == "weight":
                return True
    return False


def _owner(name: str, obj: ScriptObject, code: _ClassCode) -> Owner:
    """Structure from the constants scripting keeps, else from the conv call tracing recorded."""
    class_name = obj.class_name
    if class_name == HF_CONV1D:
        return Owner(name, class_name, in_out="nf" in obj.state or code.matmul_in_out)
    if not is_conv(class_name):
        return Owner(name, class_name)
    constants = code.constants
    stride, dilation, groups = (constants.get(key) for key in _CONV_KEYWORDS)
    if groups is None and code.conv:
        stride, dilation, groups = code.conv
    if not (isinstance(groups, int) and _is_ints(stride) and _is_ints(dilation)):
        return Owner(name, class_name, note=NO_STRUCTURE)
    dims = int(class_name[-2]) if class_name[-2:-1].isdigit() else 1
    return Owner(name, class_name, groups, expand(stride, dims), expand(dilation, dims))


def _is_ints(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value))


def _parameters(root: ScriptObject, code: _Code, path: Path,
                classes: dict[str, str]) -> Iterator[tuple[str, SavedTensor, Owner]]:
    """(key, tensor, owner) in `named_parameters()` order: a module's own, then each child's, depth first;
    `classes` fills with each module's class by path."""
    stack: list[tuple[str, ScriptObject]] = [("", root)]
    seen: set[int] = set()
    while stack:
        name, obj = stack.pop()
        if id(obj) in seen:  # a pickle may make the tree a graph; torch visits each module once
            continue
        seen.add(id(obj))
        info = code.of(obj.qualified)
        if info.setstate or not isinstance(obj.state, dict):
            raise SourceError(f"{path}: TorchScript class {obj.class_name[:80]} restores its state with its own "
                              "code (__setstate__), which fancli runs only with --trust")
        owner = _owner(name, obj, info)
        classes[name] = obj.class_name
        state = obj.state
        own = info.parameters if info.parameters is not None else \
            [k for k, v in state.items() if isinstance(v, SavedTensor)]
        for attribute in own:
            value = state.get(attribute)
            if isinstance(value, SavedTensor):
                yield (f"{name}.{attribute}" if name else str(attribute)), value, owner
        children = [(f"{name}.{key}" if name else str(key), value) for key, value in state.items()
                    if isinstance(value, ScriptObject)]
        stack.extend(reversed(children))


def read_torchscript(path: Path, archive: TorchZip) -> Model:
    """A TorchScript archive as a Model, without torch and without running any of its code."""
    root = archive.unpickle(ScriptUnpickler)
    if not isinstance(root, ScriptObject):
        raise SourceError(f"{path}: its data.pkl holds no TorchScript module")
    first: dict[Hashable, int] = {}
    found: list[tuple[str, StridedRef, Owner, list[str]]] = []
    classes: dict[str, str] = {}
    for key, tensor, owner in _parameters(root, _Code(archive), path, classes):
        ref = archive.tensor_ref(key, tensor)  # checks the pickle's claims before they are used
        identity = (tensor.storage.key, tensor.offset, ref.shape, ref.stride)
        if identity in first:
            found[first[identity]][3].append(key)
            continue
        first[identity] = len(found)
        found.append((key, ref, owner, []))
    layers = tuple(module_layer(key, ref.shape, ref.dtype, owner, ref, tuple(aliases))
                   for key, ref, owner, aliases in found)
    return Model(source=str(path), format="torchscript", layers=with_reinit(layers, classes.get),
                 name=root.class_name, built_by=built_by_class(root.qualified))
