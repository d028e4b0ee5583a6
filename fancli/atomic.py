"""Write files so that a crash mid-write never leaves a half-written file where the old one was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import FancliError


def write_text(path: str | Path, text: str) -> None:
    """Write to a temp file beside `path`, fsync it, then rename over `path` in one step."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise FancliError(f"{target}: cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(temp_name, target.stat().st_mode & 0o7777)
        os.replace(temp_name, target)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise FancliError(f"{target}: cannot write: {error.strerror or error}") from None
        raise
