"""Where the team's init configuration lives: `fancli.yaml`, or `[tool.fancli]` in pyproject.toml, in the
working directory or the nearest folder above it. Apart from `config` (which parses one), so that a run
with no configuration to find imports nothing of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import SourceError
from .safe_io import read_text

CONFIG_FILE = "fancli.yaml"
#: A config is a few defaults and overrides (pyproject.toml a few KB): 1 MiB is far beyond any real one.
MAX_CONFIG_BYTES = 1024 * 1024
#: Values a config may hold: ~100 bytes of PyYAML or tomllib objects each, so at most ~10 MB to parse.
MAX_CONFIG_NODES = 100_000

#: `[tool.fancli]`, `[tool.fancli.…]`, or `fancli = {…}` under `[tool]`: what a [tool.fancli] table needs in the text.
_MAY_HOLD_FANCLI = re.compile(r"^\s*\[\s*tool\s*\.\s*fancli\b|^\s*fancli\s*=\s*\{", re.MULTILINE)


def read_pyproject(path: Path) -> Any | None:
    text = read_text(path, MAX_CONFIG_BYTES, "a fancli config")
    if not _MAY_HOLD_FANCLI.search(text):  # most pyproject.toml files have no [tool.fancli]: no parser for them
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from .loaders.typed_yaml import (
        check_nodes,  # not at the top: yaml is imported only with a config
    )
    check_nodes(text, str(path), MAX_CONFIG_NODES, "a fancli config", "[{,:-=\n")
    try:
        document = tomllib.loads(text)
    except RecursionError:
        raise SourceError(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as error:  # TOMLDecodeError, or Python's limit on an integer's digits
        problem = "a number has too many digits" if "digits" in str(error) else " ".join(str(error).split())[:120]
        raise SourceError(f"{path}: not valid TOML ({problem})") from None
    tool = document.get("tool", {})
    return tool.get("fancli") if isinstance(tool, dict) else None


def find_config(start: Path | None = None) -> Path | None:
    """The nearest `fancli.yaml`, or pyproject.toml with a `[tool.fancli]` table, in `start` or a folder
    above it, so that `fancli check` works from any subfolder of a project, as git and pytest do.

    The search stops after the first folder holding `.git` (the repository root): a config above the
    repository belongs to something else. In one folder fancli.yaml wins over pyproject.toml.
    """
    start = (start or Path.cwd()).absolute()
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file():
            return directory / CONFIG_FILE
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and read_pyproject(pyproject) is not None:
            return pyproject
        if (directory / ".git").exists():
            return None
    return None
