"""The checkpoint search: where in a loaded checkpoint the state_dict is (`{"state_dict": …}`, `{"model": …,
"optimizer": …}`, Lightning checkpoints, nested dicts), flattened to dotted keys, with notes on what was ignored.
"""

from __future__ import annotations

#: Where checkpoints keep their weights, in the order they are looked for.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema", "model_ema",
                   "params", "weights")


NOT_WEIGHTS = ("optim", "lr_sched", "scheduler")
_MAX_NAMED = 20  # ignored keys a note names


class NoStateDict(ValueError):
    """The object holds no mapping of parameter names to tensors."""


def describe(value: object) -> str:
    """A loaded object's type the way a user would name it, with its article ("an int")."""
    if isinstance(value, dict):
        return "a dict without tensors"
    noun = {list: "list", tuple: "tuple", int: "int", float: "float", str: "string"}.get(
        type(value), getattr(type(value), "noun", type(value).__name__.lstrip("_"))
    )
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


#: Containers deeper than this are not searched: no checkpoint nests its weights so deep.
MAX_DEPTH = 32


class _TensorFinder:
    """Whether a tensor lies within a value. Each container is searched once per checkpoint, whatever
    shares it: a pickle can hang one list under a million keys, or nest a list in itself."""

    def __init__(self, is_tensor) -> None:
        self.is_tensor = is_tensor
        self.known: dict[int, bool] = {}

    def __call__(self, value: object, depth: int = 0) -> bool:
        if self.is_tensor(value):
            return True
        if not isinstance(value, (dict, list, tuple)) or depth > MAX_DEPTH:
            return False
        if id(value) not in self.known:
            self.known[id(value)] = False  # while searching it: a container inside itself adds nothing
            children = value.values() if isinstance(value, dict) else value
            self.known[id(value)] = any(self(child, depth + 1) for child in children)
        return self.known[id(value)]


def key_text(key: object) -> str:
    """A mapping key as text; only scalars are spelled out (a hostile tuple key could be costly to print)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (int, float)):
        return str(key) if not isinstance(key, int) or key.bit_length() <= 64 else "<int>"
    return f"<{type(key).__name__}>"


def _flatten(mapping: dict, is_tensor, prefix: str = "", seen: set[int] | None = None, depth: int = 0) -> dict:
    """Nested dicts of tensors to one level with dotted keys, as torch's state_dicts are.

    A dict reached twice (shared by two keys) is flattened the first time only: sharing must not
    multiply the entries (a pickle can nest one dict under itself a thousand times per level).
    """
    seen = set() if seen is None else seen
    seen.add(id(mapping))
    flat: dict = {}
    for key, value in mapping.items():
        name = f"{prefix}{key_text(key)}"
        if is_tensor(value):
            flat[name] = value
        elif isinstance(value, dict) and id(value) not in seen and depth < MAX_DEPTH:
            flat.update(_flatten(value, is_tensor, f"{name}.", seen, depth + 1))
    return flat


def find_state_dict(obj: object, is_tensor) -> tuple[dict, tuple[str, ...]]:
    """The parameter mapping inside a checkpoint, and notes on where it was and what was ignored.

    Accepts a bare state_dict, `{"state_dict": …}`, `{"model": …, "optimizer": …}`, Lightning
    checkpoints and nested dicts; raises NoStateDict naming what the object is otherwise.
    """
    has_tensor = _TensorFinder(is_tensor)
    if not isinstance(obj, dict) or not has_tensor(obj):
        raise NoStateDict(describe(obj))
    path: list[str] = []
    ignored: list[str] = []
    current = obj
    visited = {id(obj)}
    while True:
        direct = [k for k, v in current.items() if is_tensor(v)]
        if direct and len(direct) * 2 >= len(current):
            break
        preferred = [k for k in STATE_DICT_KEYS if isinstance(current.get(k), dict) and has_tensor(current[k])]
        if not preferred or id(current[preferred[0]]) in visited:
            break
        choice = preferred[0]
        ignored += [key_text(k) for k in current if k != choice and has_tensor(current[k])]
        path.append(choice)
        current = current[choice]
        visited.add(id(current))
    skipped = {k for k in current if key_text(k).startswith(NOT_WEIGHTS) and has_tensor(current[k])}
    ignored += [key_text(k) for k in skipped]
    flat = _flatten({k: v for k, v in current.items() if k not in skipped}, is_tensor, seen={id(current)})
    notes = []
    if path:
        notes.append(f"state_dict found under {'/'.join(repr(p) for p in path)}")
    if ignored:
        shown = ", ".join(repr(k) for k in ignored[:_MAX_NAMED])
        more = f" and {len(ignored) - _MAX_NAMED} more" if len(ignored) > _MAX_NAMED else ""
        notes.append(f"ignored (not model weights): {shown}{more}")
    return flat, tuple(notes)
