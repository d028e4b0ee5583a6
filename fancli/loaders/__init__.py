"""Turn a source (a file path or a `pkg.module:factory`) into a Model.

Formats are detected from content, not only from the extension, by the registry in `formats`; each
loader is imported only when its format is found, so a YAML spec, a safetensors header or a zip
state_dict never pays for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import SourceError
from ..layer import Model
from ..records import record
from ..safe_io import open_regular
from .formats import FORMATS, SNIFF_BYTES, Format

#: Suffixes of binary checkpoint formats: a text file under one of these names is named as text, not parsed.
BINARY_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pt2", ".ckpt", ".safetensors", ".gguf", ".onnx", ".h5"})
#: Suffixes of the files models are saved in: `weights/model.pt` is a path even where it could spell a repo id.
MODEL_FILE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pt2", ".ckpt", ".tar", ".safetensors", ".json", ".yaml",
                                 ".yml", ".gguf", ".onnx", ".h5", ".keras", ".msgpack", ".npz", ".mlmodel"})
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def sniff(head: bytes, path: Path, size: int | None = None) -> str:
    """Name the format of a file (a `formats.FORMATS` name, or "empty", "text", "binary") from its first bytes,
    and its extension where bytes cannot tell; `size`, the file's, lets a header length be checked against it."""
    if not head:
        return "empty"
    binary = [format for format in FORMATS.values() if not format.text]
    for format in binary:
        if format.sniff(head, path, size):
            return format.name
    suffix = path.suffix.lower()
    utf8 = _is_utf8(head)
    if utf8 and suffix in BINARY_SUFFIXES and not any(byte < 0x20 and byte not in b"\t\n\r\f" for byte in head):
        return "text"  # a checkpoint's name on a text file: an LFS pointer, a saved web page, a log
    for format in binary:
        if suffix in format.suffixes:
            return format.name  # malformed: its loader says what is wrong
    if utf8:
        for format in FORMATS.values():
            if format.text and format.sniff(head, path, size):
                return format.name
    return "binary"


def sniff_file(path: Path, where: str) -> tuple[str, bytes]:
    """The format of the file at `path` (opened as a regular file, bounded, recorded in the read set) and
    its first bytes; OSError as raised, SourceError where it is not a regular file."""
    with open_regular(path, where) as handle:  # checked again as opened: a FIFO must not block us
        head = handle.read(SNIFF_BYTES)
        size = os.fstat(handle.fileno()).st_size
    return sniff(head, path, size), head


def _is_utf8(head: bytes) -> bool:
    """Whether the first bytes decode as UTF-8 (a multi-byte character cut at the end still does)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 4
    return True


def describe_text(head: bytes) -> str:
    """What a text file given as a checkpoint most likely is, and the way out."""
    start = head.lstrip().lower()
    if start.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML or XML page, not a checkpoint (a download that returned a web page?)"
    return "a text file, not a checkpoint (a torch.save zip or pickle, or safetensors)"


def is_factory(source: str) -> bool:
    """`pkg.module:callable`, and not a file that happens to exist under that name."""
    return bool(_FACTORY.match(source)) and not Path(source).exists()


@record
class LoadOptions:
    """What every loader is given besides the path: whether torch may run the file's code (`--trust`), and
    the config's `safe_globals`: "module.Name"s a torch.save pickle may hold, read as inert records
    (never imported, never called), as `torch.serialization.add_safe_globals` allows them for torch."""

    trust: bool = False
    safe_globals: frozenset[str] = frozenset()


#: The entry signature every format's loader has.
Loader = Callable[[Path, LoadOptions], Model]


def loader(name: str) -> Loader:
    """The function a "module:function" name of a Format (".module" in this package) or of a loader's own
    table names, imported now."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module, __name__), function)


def load(source: str, *, trust: bool = False, kwargs: dict[str, Any] | None = None,
         revision: str | None = None, safe_globals: Iterable[str] = ()) -> Model:
    """Load a model from a source; SourceError (exit 2) names the source and the problem.

    A source is a file, a folder (its layout names the file: `loaders/folder.py`), a repo id `org/name`
    at `revision` (default main; a path that exists wins) from the local Hugging Face cache, else from the
    Hub by byte range unless fancli or huggingface_hub is offline (`loaders/hub.py`), a factory, or
    an s3://, gs:// or http(s):// URL of safetensors (`loaders/remote.py`, read by byte range).
    `trust` allows unpickling code from a file (a pickled nn.Module); `kwargs` go to a factory;
    `safe_globals` are globals a torch.save pickle may name, read as inert records.
    """
    from .remote_io import is_url, offline, shown

    if is_url(source):  # before any path logic: `s3://b/k` is no file here
        if revision is not None:
            raise SourceError(f"{shown(source)}: --revision names a revision of a Hugging Face repo id, not of a URL")
        from .remote import load_url

        return load_url(source, LoadOptions(trust=trust, safe_globals=frozenset(safe_globals)))
    if is_factory(source):
        from .torch_module import load_factory

        return load_factory(source, kwargs)
    options = LoadOptions(trust=trust, safe_globals=frozenset(safe_globals))
    path = Path(source)
    if not os.path.lexists(path):
        from .hf_cache import has_snapshot, is_repo_id, snapshot

        if is_repo_id(source) and path.suffix.lower() not in MODEL_FILE_SUFFIXES:
            if offline() or has_snapshot(source, revision):
                from .folder import load_folder

                return load_folder(snapshot(source, revision), source, options)
            from .hub import hub_filesystem
            from .remote import load_remote

            return load_remote(*hub_filesystem(source, revision), source, options)
    if revision is not None:
        raise SourceError(f"{source}: --revision names a revision of a Hugging Face repo id (org/name), "
                          "not of a file or folder")
    if path.is_dir():
        from .folder import load_folder

        return load_folder(path, source, options)
    return load_file(path, options, source)


def load_file(path: Path, options: LoadOptions, source: str | None = None) -> Model:
    """One file, read by the loader of the format its content shows (with a config.json beside it)."""
    source = str(path) if source is None else source
    _checked_path(str(path))
    _in_its_repo(path, source)
    try:
        kind, head = sniff_file(path, source)
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None
    if kind == "empty":
        raise SourceError(f"{source}: empty file")
    if kind == "text":
        raise SourceError(f"{source}: {describe_text(head)}")
    if kind not in FORMATS:
        known = [format.what for format in FORMATS.values() if not format.text]
        raise SourceError(f"{source}: not a format fancli reads (a binary file that is none of: {', '.join(known)})")
    format = FORMATS[kind]
    model = _read_by(format, source)(path, options)
    if not format.config_formats or not (path.parent / "config.json").is_file():
        return model
    from .hf_config import with_config  # transformers' config.json beside the weights

    return with_config(model, path)


def _read_by(format: Format, source: str) -> Loader:
    """A format's loader; one line where this fancli was installed without its module."""
    module = format.load.partition(":")[0]
    try:
        return loader(format.load)
    except ModuleNotFoundError as error:
        if error.name != importlib.util.resolve_name(module, __name__):
            raise
        raise SourceError(f"{source}: {format.what}: not readable by this fancli") from None


def _in_its_repo(path: Path, source: str) -> None:
    """A file of a Hugging Face cache snapshot must lead, its links followed, into the repo's cache folder."""
    from .links import cache_repo, leads_outside

    repo = cache_repo(path.parent)
    if repo is not None and leads_outside(path, repo):
        raise SourceError(f"{source}: links outside its Hugging Face repo's cache folder ({repo}); refused")


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
