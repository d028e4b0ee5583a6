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
        return _call(spec, _resolve(spec, module_name, attribute), kwargs or {})


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
