"""Turn a source (a file path or a `pkg.module:factory`) into a Model.

Formats are detected from content, not only from the extension; each loader is imported only when
its format is found, so a YAML spec, a safetensors header or a zip state_dict never pays for torch.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..layer import Model
from .files import open_regular, read_bounded

_SNIFF_BYTES = 64
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def sniff(head: bytes, path: Path) -> str:
    """Name the format of a file from its first bytes (and its extension where bytes cannot tell)."""
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"  # malformed: its loader says what is wrong
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # a multi-byte character cut at the end is still text
            return "binary"
    suffix = path.suffix.lower()
    if suffix == ".json" or (head.lstrip()[:1] == b"{" and suffix not in (".yaml", ".yml")):
        return "json"  # a flow-style `{layers: …}` spec named .yaml stays YAML
    return "yaml"


def is_factory(source: str) -> bool:
    """`pkg.module:callable`, and not a file that happens to exist under that name."""
    return bool(_FACTORY.match(source)) and not Path(source).exists()


def load(source: str, *, trust: bool = False, kwargs: dict[str, Any] | None = None) -> Model:
    """Load a model from a source; SourceError (exit 2) names the source and the problem.

    `trust` allows unpickling code from a file (a pickled nn.Module); `kwargs` go to a factory.
    """
    if is_factory(source):
        from .torch_module import load_factory

        return load_factory(source, kwargs)
    path = _checked_path(source)
    try:
        with open_regular(path, source) as handle:  # checked again as opened: a FIFO must not block us
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None
    kind = sniff(head, path)
    if kind == "empty":
        raise SourceError(f"{source}: empty file")
    if kind == "yaml":
        from .spec import load_spec

        return load_spec(path)
    if kind == "zip":
        return _load_zip(path, trust)
    if kind == "pickle":
        return _load_pickle(path, trust)
    if kind == "safetensors":
        from .safetensors_file import load_safetensors

        return load_safetensors(path)
    if kind == "json":
        return _load_json(path)
    raise SourceError(f"{source}: not a format fancli reads (a binary file that is neither a torch.save zip, "
                      "a pickle nor safetensors)")


def _checked_path(source: str) -> Path:
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError:
        hint = " (a factory is written pkg.module:callable)" if ":" in source else ""
        raise SourceError(f"{source}: no such file{hint}") from None
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SourceError(f"{source}: is a directory; give a model file or spec")
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"{source}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{source}: permission denied")
    return path


def _load_zip(path: Path, trust: bool) -> Model:
    """torch.save, TorchScript and torch.export archives without torch; with --trust, the last two through
    torch's own loaders, which run the archive's code."""
    from .torch_zip import TorchZip, UnsafeGlobal, read_state_dict, untrusted_message

    archive = TorchZip(path)
    if archive.kind == "torchscript":
        if trust:
            from .torch_module import load_torchscript

            return load_torchscript(path, archive)
        from .torchscript_archive import read_torchscript

        return read_torchscript(path, archive)
    if archive.kind == "torch-export":
        if trust:
            from .torch_module import load_exported

            return load_exported(path)
        from .export_archive import read_exported

        return read_exported(path, archive)
    if archive.kind == "zip":
        raise SourceError(f"{path}: a zip archive, but not one written by torch.save (no <name>/data.pkl)")
    try:
        return read_state_dict(path, archive)
    except UnsafeGlobal as refused:
        if trust:
            from .torch_module import load_pickled_module

            return load_pickled_module(path, trust=True)
        if refused.module.startswith("torch.") and not refused.module.startswith("torch.nn"):
            from .torch_module import load_weights_only

            return load_weights_only(path)  # a tensor type torch's own safe loader knows
        raise SourceError(untrusted_message(path, f"{refused.module}.{refused.name}")) from None


#: A legacy file fancli's own reader cannot list (a torch type outside its allowlist) goes to torch's
#: weights-only loader, which reads every storage into memory: only up to this size without --trust.
MAX_LEGACY_TORCH_LOAD = 256 * 1024 * 1024


def _load_pickle(path: Path, trust: bool) -> Model:
    """A legacy (pre-1.6) torch.save file: read without torch and without its tensor data unless --trust
    asks torch to unpickle a module. Another pickle goes to torch's weights-only loader, which says what
    it is."""
    if trust:
        from .torch_module import load_pickled_module

        return load_pickled_module(path, trust=True)
    from .torch_legacy import NotLegacy, read_legacy
    from .torch_zip import UnsafeGlobal, untrusted_message

    try:
        return read_legacy(path)
    except NotLegacy:
        pass
    except UnsafeGlobal as refused:
        name = f"{refused.module}.{refused.name}"
        if not refused.module.startswith("torch.") or refused.module.startswith("torch.nn"):
            raise SourceError(untrusted_message(path, name)) from None
        size = path.stat().st_size
        if size > MAX_LEGACY_TORCH_LOAD:  # torch would read all of it, tensor data included
            raise SourceError(f"{path}: a legacy torch.save file of {size} bytes holding {name!r}, which fancli's "
                              "reader does not list; torch's loader would read all of it into memory, so files "
                              f"over {MAX_LEGACY_TORCH_LOAD >> 20} MiB are refused (re-save it with torch.save's "
                              "default zip format)") from None
    from .torch_module import load_weights_only

    return load_weights_only(path)


def _load_json(path: Path) -> Model:
    """A sharded safetensors index (`model.safetensors.index.json`)."""
    from .safetensors_file import MAX_INDEX_BYTES, check_json_size

    raw = read_bounded(path, MAX_INDEX_BYTES, "a safetensors index")
    check_json_size(raw, str(path), "the JSON")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise SourceError(f"{path}: not valid JSON ({error})") from None
    if isinstance(document, dict) and isinstance(document.get("weight_map"), dict):
        from .safetensors_file import load_safetensors_index

        return load_safetensors_index(path)
    raise SourceError(f"{path}: a JSON file, but not a safetensors index (no 'weight_map')")
