"""Write files so that nothing the user had is lost.

A crash mid-write never leaves a half-written file where the old one was (temp file beside the target,
fsync, rename). And a write is refused, before anything is written, where it would replace what the user
did not mean to replace: the file being read (`-o model.yaml` on `inspect model.yaml`), a device node or
FIFO (renaming a file over `/dev/null` as root destroys the device), or a directory. A symlink is written
through: its target is replaced, the link stays.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import FancliError
from .text import printable

#: Output names that mean standard output rather than a file.
STDOUT_NAMES = ("-", "/dev/stdout")


def is_stdout(path: str | Path | None) -> bool:
    """`-o -` and `-o /dev/stdout` print, as most tools do, instead of replacing a file."""
    return path is not None and str(path) in STDOUT_NAMES


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise FancliError(f"{printable(path)}: cannot write: {error.strerror or error}") from None


def _is_input(target: Path, info: os.stat_result | None, source: str | Path) -> bool:
    """Whether `target` (resolved, with its stat) is the input `source`: same resolved path, or the same
    file under another name (a hard link: same device and inode)."""
    try:
        if Path(source).resolve() == target:
            return True
        other = os.stat(source)
    except (OSError, RuntimeError, ValueError):
        return False
    return info is not None and (info.st_dev, info.st_ino) == (other.st_dev, other.st_ino)


def checked_target(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """The file a write to `path` replaces: symlinks followed to their final target. FancliError (exit 2)
    if that is one of `inputs`, or exists and is not a regular file."""
    shown = printable(path)
    try:
        target = Path(path).resolve()  # follows every link, a dangling one too
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise FancliError(f"{shown}: cannot write: {error}") from None
    info = _stat(target)
    if info is not None and not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise FancliError(f"{shown}: is {what}; refusing to replace it (give a file name, or omit -o for stdout)")
    for source in inputs:
        if source is not None and _is_input(target, info, source):
            raise FancliError(f"{shown}: is the input {printable(source)}; refusing to overwrite it")
    return target


def _new_file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (mkstemp's temp file is 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_with(path: str | Path, fill: Callable[[str], None], inputs: Iterable[str | Path | None] = (),
               suffix: str = ".tmp") -> Path:
    """Have `fill(temp_name)` write the new content into a temp file beside the (resolved) target, then
    rename it over the target in one step; returns the target. Checked first with `checked_target`."""
    target = checked_target(path, inputs)
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as error:
        raise FancliError(f"{printable(path)}: cannot write: {error.strerror or error}") from None
    os.close(fd)
    try:
        fill(temp_name)
        with open(temp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        info = _stat(target)
        os.chmod(temp_name, info.st_mode & 0o7777 if info is not None else _new_file_mode())
        os.replace(temp_name, target)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise FancliError(f"{printable(path)}: cannot write: {error.strerror or error}") from None
        raise
    return target


def write_text(path: str | Path, text: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write `text` (UTF-8) to `path` atomically, refusing to replace an input, a device or a directory."""

    def fill(temp_name: str) -> None:
        with open(temp_name, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_with(path, fill, inputs)
