"""What a torch.export graph says about the module that owns a weight, read alike from the program's JSON
(`export_archive`, without torch) and from torch's fx graph (`export_program`, with --trust).

A weight's uses are (op, position) pairs: the op as its schema names it (`aten::conv2d`) and where the
weight stands among its arguments. No torch import here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from ..kinds import KIND_OF_CLASS
from .module_structure import HF_CONV1D, Owner, expand

CONV_OPS = re.compile(r"^aten::(_?convolution|conv_transpose[123]d|conv[123]d)$")
#: Ops whose operand at this position is the weight stored [in, out] (x @ W), as HF Conv1D computes.
IN_OUT_OPERAND = {"aten::addmm": 2, "aten::mm": 1, "aten::matmul": 1}
#: Ops that imply a weight's torch.nn class, and where that weight stands among their arguments.
OP_CLASSES = {"aten::linear": (1, "Linear"), "aten::embedding": (0, "Embedding")}
_NOT_IN_STACK = "its module is not in the exported graph's module stack: type unknown"
Use = tuple[str, int]


def is_conv_weight(op: str, position: int) -> bool:
    """The argument at `position` of `op` is a convolution's weight."""
    return bool(CONV_OPS.match(op)) and position == 1


def conv_arguments(op: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A convolution's arguments by name, with torch's defaults where the graph leaves them out."""
    filled = {"stride": 1, "dilation": 1, "groups": 1, **arguments}
    filled.setdefault("transposed", "transpose" in op)
    return filled


def op_class(uses: Iterable[Use], conv: dict[str, Any] | None, dims: int) -> str | None:
    """The torch.nn class an op implies for a weight its module stack does not name (attention's out_proj)."""
    if conv is not None:
        return f"ConvTranspose{dims}d" if conv["transposed"] else f"Conv{dims}d"
    for op, position in uses:
        if OP_CLASSES.get(op, (None,))[0] == position:
            return OP_CLASSES[op][1]
    return None


def used_as_in_out(uses: Iterable[Use]) -> bool:
    """The weight is the right operand of a matmul (x @ W): stored [in, out], as HF Conv1D does."""
    return any(IN_OUT_OPERAND.get(op) == position for op, position in uses)


def exported_owner(name: str, class_name: str | None, uses: list[Use] | None, conv: dict[str, Any] | None,
                   dims: int) -> Owner:
    """The owner's class from the module stack, else from the op that uses its weight (`uses` None when
    the module has no weight); conv structure from the op."""
    if class_name not in KIND_OF_CLASS and uses is not None:
        class_name = op_class(uses, conv, dims) or class_name
    if conv is None:
        in_out = class_name == HF_CONV1D and uses is not None and used_as_in_out(uses)
        return Owner(name, class_name, in_out=in_out, note=None if class_name else _NOT_IN_STACK)
    try:
        return Owner(name, class_name, int(conv["groups"]), expand(conv["stride"], dims), expand(conv["dilation"], dims))
    except (TypeError, ValueError):
        return Owner(name, class_name, note="its convolution's stride, dilation or groups are not plain integers")
