"""Opening a source file without hanging: a FIFO or a device named as a model must be refused, not read."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import SourceError

#: O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, before any check can run.
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: Path, where: str) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file; SourceError starting with `where` if not."""
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise SourceError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{where}: is a directory; give a model file or spec") from None
    except PermissionError:
        raise SourceError(f"{where}: permission denied") from None
    except OSError as error:
        raise SourceError(f"{where}: cannot read: {error.strerror or error}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SourceError(f"{where}: is a directory; give a model file or spec")
        if not stat.S_ISREG(mode):
            raise SourceError(f"{where}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The whole of a small file (an index, a spec) without hanging on a FIFO or reading past `limit`."""
    try:
        with open_regular(path, str(path)) as handle:
            raw = handle.read(limit + 1)
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(raw) > limit:
        raise SourceError(f"{path}: larger than {limit} bytes, too large for {what}")
    return raw
