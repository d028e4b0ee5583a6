"""Frozen records that are cheap to build, and to define: `dataclass(frozen=True)`, faster.

A frozen dataclass's `__init__` sets each field through `object.__setattr__` (its way round its own
`__setattr__`): a 24-field `Layer` costs 4 µs to build, a fifth of a header-only inspect of a large MoE
checkpoint. `record` is `dataclass(frozen=True)` with an `__init__` of the same signature and defaults that
fills the instance's `__dict__` directly (0.8 µs); the record is as immutable afterwards as before.
`replaced` is `dataclasses.replace` the same way.

Defining one is cheaper too: Python 3.11's dataclass compiles six methods from source for each frozen
class (0.3-1.6 ms a class, 12 ms of the imports a header-only inspect needs); `record` compiles its
`__init__` alone and gives the others as the same functions for every class, each closed over its
class's fields: the same behaviour (tests/test_records.py holds them to dataclass's).
"""

from __future__ import annotations

import inspect
import reprlib
from dataclasses import MISSING, FrozenInstanceError, dataclass, fields
from operator import attrgetter
from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=type)
R = TypeVar("R")


#: Names the generated __init__ uses itself: a field of one of these names would be shadowed.
_GENERATED_NAMES = ("self", "_defaults", "_record_dict_")


def record(cls: T | None = None, *, eq: bool = True) -> Any:
    """`@dataclass(frozen=True)` (`@record(eq=False)`: `dataclass(frozen=True, eq=False)`, hashed by identity),
    built faster. Fields with a `default_factory` or `init=False`, a `__post_init__`, and fields named as the
    generated code's own names (`_GENERATED_NAMES`) are not supported (none of the records that use it has
    one): refused at import."""
    if cls is None:
        return lambda cls: _record(cls, eq)
    return _record(cls, eq)


def _record(cls: T, eq: bool) -> T:
    # Fields, __match_args__ and the rest of dataclass's bookkeeping, with no method compiled (but a frozen
    # base's __setattr__ and __delattr__, which dataclass then writes as it must); the methods below
    based = [base.__dataclass_params__.frozen for base in cls.__mro__[1:] if "__dataclass_params__" in vars(base)]
    if based and not all(based):
        raise TypeError("cannot inherit frozen dataclass from a non-frozen one")
    for name in ("__setattr__", "__delattr__"):
        if name in cls.__dict__:
            raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    documented, own_hash = cls.__dict__.get("__doc__"), eq and _explicit_hash(cls)
    cls = dataclass(init=False, repr=False, eq=False, frozen=bool(based))(cls)
    names, parameters, defaults, annotations = [], [], {}, {}
    for field in fields(cls):
        if (field.default_factory is not MISSING or not field.init or field.kw_only
                or hasattr(cls, "__post_init__") or field.name in _GENERATED_NAMES):
            raise TypeError(f"@record does not support {cls.__name__}.{field.name}'s definition")
        names.append(field.name)
        annotations[field.name] = field.type
        if field.default is MISSING:
            parameters.append(field.name)
        else:
            defaults[field.name] = field.default
            parameters.append(f"{field.name}=_defaults[{field.name!r}]")
    # Item by item into the instance's own __dict__, in field order: the dict keeps sharing its keys with
    # the class's other instances (a third of the memory of a dict built apart and assigned whole).
    source = f"def __init__(self, {', '.join(parameters)}):\n    _record_dict_ = self.__dict__\n" + "".join(
        f"    _record_dict_[{name!r}] = {name}\n" for name in names)
    namespace: dict = {"_defaults": defaults}
    exec(source, namespace)  # noqa: S102 — how dataclasses itself writes __init__; the text is ours alone
    namespace["__init__"].__annotations__ = {**annotations, "return": None}
    methods = {"__init__": namespace["__init__"], **({} if based else _frozen(cls, tuple(names)))}
    methods["__repr__"] = _repr([field.name for field in fields(cls) if field.repr])
    if eq:
        compared = [field.name for field in fields(cls) if field.compare]
        methods["__eq__"] = _eq(_values(compared))
        if not own_hash:  # a class's own __hash__ stays, as dataclass(frozen=True) keeps it
            hashed = [field.name for field in fields(cls) if (field.compare if field.hash is None else field.hash)]
            methods["__hash__"] = _hash(_values(hashed))
    for name, method in methods.items():
        if name in ("__init__", "__setattr__", "__delattr__", "__hash__") or name not in cls.__dict__:
            method.__qualname__ = f"{cls.__qualname__}.{name}"
            setattr(cls, name, method)
    params = cls.__dataclass_params__  # what dataclass(frozen=True, eq=eq) would say of the class
    params.init, params.repr, params.eq, params.frozen = True, True, eq, True
    if not documented:  # dataclass's own: the name and signature, which needs the __init__ given above
        cls.__doc__ = cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    return cls


def _explicit_hash(cls: type) -> bool:
    """Whether the class body defines __hash__ itself (None beside an __eq__ is what Python writes, not it)."""
    own = cls.__dict__.get("__hash__", MISSING)
    return not (own is MISSING or (own is None and "__eq__" in cls.__dict__))


def _values(names: list[str]) -> Callable[[Any], tuple]:
    """The fields' values as one tuple, in C (attrgetter gives a bare value for one name)."""
    if not names:
        return lambda instance: ()
    if len(names) == 1:
        only = attrgetter(names[0])
        return lambda instance: (only(instance),)
    return attrgetter(*names)


def _frozen(cls: type, names: tuple[str, ...]) -> dict[str, Callable[..., None]]:
    """dataclass's frozen __setattr__ and __delattr__: refused on the class's own instances, and on a field."""

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return {"__setattr__": __setattr__, "__delattr__": __delattr__}


def _repr(names: list[str]) -> Callable[[Any], str]:
    """dataclass's __repr__: `Name(field=value, …)` for the fields it shows, `...` where it recurs."""

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        return f"{self.__class__.__qualname__}(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in names) + ")"

    return __repr__


def _eq(values: Callable[[Any], tuple]) -> Callable[[Any, Any], Any]:
    """dataclass's __eq__: the compared fields' values, against an instance of the very same class alone."""

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _hash(values: Callable[[Any], tuple]) -> Callable[[Any], int]:
    """dataclass's __hash__ of a frozen class that compares: its hashed fields' values."""

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def replaced(instance: R, **changes: Any) -> R:
    """`dataclasses.replace` at a fifth of its cost (5 µs a `Layer` or a report `Row`): a copy whose `__dict__`
    is the instance's with `changes`, its fields not checked, its `__init__` not run. Only for frozen
    dataclasses with no `__post_init__` and no init-only fields, such as `record`'s: a 92,000-tensor FP8
    checkpoint copies a few records per weight."""
    copy = object.__new__(type(instance))
    copy.__dict__.update(instance.__dict__, **changes)
    return copy
