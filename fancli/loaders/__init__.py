"""Turn a source (a file path, later a `pkg.module:factory`) into a Model.

Formats are detected from content, not only from the extension; each loader is imported only when
its format is found, so a YAML spec never pays for torch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import SourceError
from ..layer import Model

_SNIFF_BYTES = 64


def sniff(head: bytes, path: Path) -> str:
    """Name the format of a file from its first bytes (and its extension where bytes cannot tell)."""
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if path.suffix.lower() in (".pt2",):
        return "torch-export"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # a multi-byte character cut at the end is still text
            return "binary"
    if path.suffix.lower() == ".json":
        return "json"
    return "yaml"


_DESCRIPTIONS = {
    "torch-zip": "a zip archive (torch.save state_dict or checkpoint)",
    "pickle": "a pickle (legacy torch.save format)",
    "safetensors": "a safetensors checkpoint",
    "torch-export": "a torch.export program",
    "json": "a JSON file",
    "binary": "a binary file of unknown format",
}


def load(source: str) -> Model:
    """Load a model from a source; SourceError (exit 2) names the source and the problem."""
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SourceError(f"{source}: no such file") from None
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SourceError(f"{source}: is a directory; give a model file or spec")
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"{source}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{source}: permission denied")
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None

    kind = sniff(head, path)
    if kind == "empty":
        raise SourceError(f"{source}: empty file")
    if kind == "yaml":
        from .spec import load_spec

        return load_spec(path)
    raise SourceError(f"{source}: {_DESCRIPTIONS[kind]}; this version of fancli reads YAML layer specs only")
