"""torch.export programs through torch (`--trust` `.pt2` files, factories returning an ExportedProgram):
layers from the program's state_dict, owners from its fx graph. `export_archive` reads the same archives
without torch; both take a weight's owner from `export_ops`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Hashable, Iterator

import torch

from ..errors import SourceError
from ..layer import Layer, Model
from .export_ops import Use, conv_arguments, exported_owner, is_conv_weight
from .factory import one_line
from .module_structure import Owner, with_reinit
from .torch_tensor import tensor_identity, tensor_layer
from .torch_zip import TorchZip


def load_exported(path: Path, archive: TorchZip | None = None) -> Model:
    """A torch.export program (.pt2) through torch.export.load, which unpickles the archive's sample inputs
    and opaque constants with arbitrary globals (`--trust`)."""
    try:
        with _quiet("torch.export", "torch._export"):
            program = torch.export.load(path)
    except Exception as error:  # a malformed archive fails in many ways inside torch
        raise SourceError(f"{path}: cannot read it as a torch.export program: {one_line(error)}") from None
    return exported_model(str(path), "torch-export", program)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Keep torch's own log lines (a failed deserialisation logs its whole traceback) off stderr: the
    error, if any, is fancli's one line."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def exported_model(source: str, format: str, program: torch.export.ExportedProgram) -> Model:
    classes = _exported_classes(program.graph)
    return Model(source=source, format=format, layers=with_reinit(_exported_layers(program, classes), classes.get),
                 name=classes.get(""))


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
        identity = tensor_identity(tensor)
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
            owners[name] = _owner(name, classes, placeholders.get(f"{name}.weight" if name else "weight"))
        layers.append(tensor_layer(key, tensor, owners[name], tuple(aliases.get(index, ()))))
    return tuple(layers)


def _owner(name: str, classes: dict[str, str], weight: torch.fx.Node | None) -> Owner:
    conv = _conv_use(weight) if weight is not None else None
    uses = _uses(weight) if weight is not None else None
    dims = len(weight.meta["val"].shape) - 2 if conv is not None else 0
    return exported_owner(name, classes.get(name), uses, conv, dims)


def _aten(node: torch.fx.Node) -> str:
    schema = getattr(node.target, "_schema", None)
    return schema.name if schema is not None else ""


def _uses(param: torch.fx.Node) -> list[Use]:
    """(op, position) for each argument of each node that passes `param`."""
    return [(_aten(user), position) for user in param.users for position, arg in enumerate(user.args) if arg is param]


def _conv_use(param: torch.fx.Node) -> dict[str, Any] | None:
    """The keyword arguments (defaults filled in) of the first convolution that takes `param` as its weight."""
    from torch.fx.operator_schemas import normalize_function

    for user in param.users:
        if len(user.args) > 1 and user.args[1] is param and is_conv_weight(_aten(user), 1):
            normalized = normalize_function(user.target, user.args, user.kwargs, normalize_to_only_use_kwargs=True)
            return conv_arguments(_aten(user), dict(normalized.kwargs) if normalized else dict(user.kwargs))
    return None
