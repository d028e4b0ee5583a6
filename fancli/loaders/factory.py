"""`pkg.module:callable` sources: import the user's module and call the factory, without torch.

The user's own code, run because the user named it. What it returns is the caller's to read: a Model
from an nn.Module (`torch_module.load_factory`), a module to run (`propagate`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from typing import Any, Iterator

from ..errors import SourceError, torch_missing
from ..safe_io import record_read

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(error: BaseException) -> str:
    """An exception's first non-empty line, without terminal colours (torch's errors carry them)."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def a(noun: str) -> str:
    """The noun with its article: "an int", "a Linear"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


@contextlib.contextmanager
def importable_cwd(directory: str | os.PathLike | None = None) -> Iterator[None]:
    """Put the working directory (or `directory`: the folder of the config naming the factory, which may be
    above it) first on sys.path while loading, as `python -m` does."""
    cwd = os.fspath(directory) if directory is not None else os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def build(spec: str, kwargs: dict | None = None) -> Any:
    """Import `pkg.module`, find `callable` (a dotted attribute path) and call it with kwargs; a module
    instance is returned as it is (calling it would run its forward). SourceError names the spec."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SourceError(f"{spec}: expected 'package.module:callable'")
    with importable_cwd():
        target = _resolve(spec, module_name, attribute)
        if callable(target):  # what is not callable is refused as that, by _call
            _refuse_standard_library(spec, module_name, target)
        return _call(spec, target, kwargs or {})


def _refuse_standard_library(spec: str, module_name: str, target: Any) -> None:
    """A factory is the user's code: Python's standard library builds no model, and a config's
    `source: "os:system"` with `kwargs: {command: …}` would run a shell command on `fancli check`. So
    neither the module named nor the one that defines the callable (`mypkg:os.system` reaches
    os.system through the user's module; a partial is judged by what it wraps) may be the standard
    library's."""
    import functools

    while isinstance(target, functools.partial):
        target = target.func
    defined_in = getattr(target, "__module__", None) or "builtins"  # a C method bound to a str has none
    for name in (module_name, defined_in):
        if isinstance(name, str) and _standard_library(name):
            raise SourceError(f"{spec}: {name} is Python's standard library, not a model factory (a factory is a "
                              "callable from your own code)")


def _standard_library(name: str) -> bool:
    """Whether module `name` is the standard library's as loaded: built in (posix, builtins) or a file in
    its folder; the user's own `code.py` on the path shadows the name and is the user's."""
    import sysconfig
    from pathlib import Path

    top = name.partition(".")[0]
    if top not in sys.stdlib_module_names:
        return False
    file = getattr(sys.modules.get(top), "__file__", None)
    return file is None or Path(file).resolve().is_relative_to(Path(sysconfig.get_paths()["stdlib"]).resolve())


def _resolve(spec: str, module_name: str, attribute: str) -> Any:
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = torch_missing(error)
        raise SourceError(f"{spec}: {missing or one_line(error)}") from None
    except Exception as error:  # the module's own code failed while importing
        what = f"{type(error).__name__}: {one_line(error)}"
        raise SourceError(f"{spec}: importing {module_name} raised {what}") from None
    record_read(getattr(target, "__file__", None))  # the module's source: no output may replace it
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError as error:
        raise SourceError(f"{spec}: {one_line(error)}") from None
    return target


def _is_module(value: Any) -> bool:
    """An nn.Module, known without importing torch (a factory module that builds one has imported it)."""
    nn = sys.modules.get("torch.nn")
    return nn is not None and isinstance(value, nn.Module)


def _call(spec: str, target: Any, kwargs: dict) -> Any:
    if _is_module(target):
        if kwargs:
            raise SourceError(f"{spec}: {a(type(target).__name__)} instance, not a factory: it takes no arguments")
        return target
    if not callable(target):
        raise SourceError(f"{spec}: {a(type(target).__name__)}, not callable")
    try:
        return target(**kwargs)
    except Exception as error:  # whatever the user's factory raises is a problem with the source
        raise SourceError(f"{spec}: raised {type(error).__name__}: {one_line(error)}") from None
