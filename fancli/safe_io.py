"""Safe file I/O, in one place: every reader and writer of fancli goes through here.

Reading: a FIFO or a device named as a model, spec, config or baseline must be refused, not read (it would
block before any check ran), and a small file is read with a bound, never whole. JSON is parsed only once
its estimated cost is known to be bounded.

Within `recording_reads()` (a CLI run), every file opened here is remembered by device and inode: the
run's read set, whatever read it (an index, a config.json, a shard, DCP metadata and data, a cache ref).

Writing: a crash mid-write never leaves a half-written file where the old one was (temp file beside the
target, fsync, rename). And a write is refused, before anything is written, where it would replace what
the user did not mean to replace: any file of the read set (`-o model.yaml` on `inspect model.yaml`, `-o
DIR/config.json` on `inspect DIR`), a device node or FIFO (renaming a file over `/dev/null` as root destroys
the device), or a directory. A symlink is written through: its target is replaced, the link stays.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from .errors import FancliError, SourceError
from .text import printable

# --- the read set ----------------------------------------------------------------------------------

#: (device, inode) of every file read in this run -> the name it was read under; None outside a run (the
#: library records nothing). Context-local: a run's worker threads re-read files the run already opened.
_READ: contextvars.ContextVar[dict[tuple[int, int], str] | None] = contextvars.ContextVar("fancli_read",
                                                                                          default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[None]:
    """Within: every file read through this module joins the read set, which no write may replace."""
    token = _READ.set({})
    try:
        yield
    finally:
        _READ.reset(token)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Within: reads do not join the read set: `check --update` reading the old baseline it is to replace."""
    token = _READ.set(None)
    try:
        yield
    finally:
        _READ.reset(token)


def _record(info: os.stat_result, path: str | Path) -> None:
    read = _READ.get()
    if read is not None:
        read.setdefault((info.st_dev, info.st_ino), str(path))


def record_read(path: str | Path | None) -> None:
    """Add a file read by another reader than this module's (Python importing a factory's module)."""
    if path is None:
        return
    try:
        _record(os.stat(path), path)
    except (OSError, ValueError):
        pass


# --- reading ---------------------------------------------------------------------------------------

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
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SourceError(f"{where}: is a directory; give a model file or spec")
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"{where}: not a regular file")
        _record(info, path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class FileRange:
    """The bytes at [start, start + nbytes) of a file, read by range when asked (a tensors.ByteSource): a
    safetensors tensor, a legacy file's storage, a DCP chunk. Opened anew for each read, so a long-lived
    Model holds no file handle. Slotted: a 90,000-tensor checkpoint holds one per tensor."""

    __slots__ = ("path", "start", "nbytes")

    def __init__(self, path: Path, start: int, nbytes: int) -> None:
        self.path, self.start, self.nbytes = path, start, nbytes

    def read(self, start: int, size: int) -> bytes:
        if start < 0 or start + size > self.nbytes:
            raise SourceError(f"{self.path}: a storage is shorter than its tensors need")
        with open_regular(self.path, str(self.path)) as handle:
            try:
                handle.seek(self.start + start)
                data = handle.read(size)
            except OSError as error:
                raise SourceError(f"{self.path}: cannot read: {error.strerror or error}") from None
        if len(data) != size:
            raise SourceError(f"{self.path}: the file is shorter than when it was loaded")
        return data

    def locate(self, start: int, size: int) -> tuple[Path, int]:
        """Where bytes [start, start + size) lie: the file and the absolute offset (`--stats` maps them)."""
        if start < 0 or start + size > self.nbytes:
            raise SourceError(f"{self.path}: a storage is shorter than its tensors need")
        return self.path, self.start + start


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


def read_text(path: Path, limit: int, what: str) -> str:
    """A small text file (a spec, a config) as UTF-8, read with `read_bounded`."""
    raw = read_bounded(path, limit, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None


#: What parsing a JSON document (a safetensors header, an index, a baseline) may take: a 500,000-tensor
#: index with real names (~80 bytes an entry) or header (~100 bytes an entry) passes.
MAX_JSON_MEMORY = 512 * 1024 * 1024


def json_memory(raw: bytes) -> int:
    """An upper bound on what parsing `raw` takes: the decoded text and the strings' characters (1 byte a
    character for ASCII without `\\u` escapes, else up to 4: one astral character, raw or escaped, stores
    a whole string in 4 bytes a character), each `{` a dict of up to 256 bytes, each `[` a list of up to 64,
    and each string (two `"`) or other item (after a `,`: a number, a dict entry) an object of up to 96."""
    marks = raw.translate(None, _NOT_MARKS)  # the bytes counted, in one pass; counted in far fewer bytes
    width = 1 if raw.isascii() and (b"\\" not in marks or b"\\u" not in raw) else 4
    containers = 256 * marks.count(b"{") + 64 * marks.count(b"[")
    return 2 * width * len(raw) + containers + 48 * (marks.count(b'"') + 2 * marks.count(b","))


_NOT_MARKS = bytes(set(range(256)) - set(b'{[",\\'))


def check_json_size(raw: bytes, where: str, what: str) -> None:
    """Refuse JSON whose parse would take more than MAX_JSON_MEMORY (`json_memory`): a 30 MB header of
    `[],` would need 1.3 GB."""
    estimate = json_memory(raw)
    if estimate > MAX_JSON_MEMORY:
        raise SourceError(f"{where}: {what} would take more than {MAX_JSON_MEMORY >> 20} MiB to parse "
                          f"({len(raw)} bytes of JSON, {estimate >> 20} MiB estimated); refused")


def parse_json(raw: bytes, where: str, what: str) -> Any:
    """JSON from untrusted bytes, its size checked first; SourceError `where: what is not valid …` else."""
    check_json_size(raw, where, what)
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SourceError(f"{where}: {what} is not valid UTF-8") from None
    except RecursionError:
        raise SourceError(f"{where}: {what} is not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise SourceError(f"{where}: {what} is not valid JSON: {error}") from None
    except ValueError:  # Python's limit on integer digits
        raise SourceError(f"{where}: {what} is not valid JSON: a number has too many digits") from None
    return value


def parse_json_object(raw: bytes, where: str, what: str) -> dict:
    """`parse_json`, and the value must be an object."""
    value = parse_json(raw, where, what)
    if not isinstance(value, dict):
        raise SourceError(f"{where}: {what} is not a JSON object")
    return value


# --- writing ---------------------------------------------------------------------------------------

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


def _same_file(target: Path, info: os.stat_result | None, other: str | Path) -> bool:
    """Whether `target` (resolved, with its stat) is `other`: same resolved path, or the same file under
    another name (a hard link: same device and inode)."""
    try:
        if Path(other).resolve() == target:
            return True
        found = os.stat(other)
    except (OSError, RuntimeError, ValueError):
        return False
    return info is not None and (info.st_dev, info.st_ino) == (found.st_dev, found.st_ino)


def checked_target(path: str | Path, others: Iterable[str | Path | None] = ()) -> Path:
    """The file a write to `path` replaces: symlinks followed to their final target. FancliError (exit 2)
    if that is a file of the read set or one of `others` (what the run also writes: `-o` beside `--plot`),
    or exists and is not a regular file."""
    shown = printable(path)
    try:
        target = Path(path).resolve()  # follows every link, a dangling one too
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise FancliError(f"{shown}: cannot write: {error}") from None
    info = _stat(target)
    if info is not None and not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise FancliError(f"{shown}: is {what}; refusing to replace it (give a file name, or omit -o for stdout)")
    read = _READ.get()
    if info is not None and read and (info.st_dev, info.st_ino) in read:
        raise FancliError(f"{shown}: is an input this run reads ({printable(read[info.st_dev, info.st_ino])}); "
                          "refusing to overwrite it")
    for other in others:
        if other is not None and _same_file(target, info, other):
            raise FancliError(f"{shown}: is {printable(other)}, which this run also writes; give two files")
    return target


#: How much of the target's name a temp file's name keeps.
TEMP_NAME_CHARS = 40


def _new_file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (mkstemp's temp file is 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_with(path: str | Path, fill: Callable[[str], None], others: Iterable[str | Path | None] = (),
               suffix: str = ".tmp") -> Path:
    """Have `fill(temp_name)` write the new content into a temp file beside the (resolved) target, then
    rename it over the target in one step; returns the target. Checked first with `checked_target`."""
    target = checked_target(path, others)
    try:
        import tempfile  # writers only: it imports random and shutil

        # the target's name shortened: a name near the system's limit must not make the temp name too long
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name[:TEMP_NAME_CHARS]}.", suffix=suffix,
                                         dir=target.parent)
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


def takes_utf8(stream: Any) -> bool:
    """Whether UTF-8 bytes may go to a text stream's buffer as they are, between its text: the text it writes
    is UTF-8 (or says ASCII, which click writes as UTF-8; a latin-1 or cp1252 one would write the rest in its
    own), it has a buffer (not a StringIO) and its text mode translates no newline (Windows' writes "\\r\\n")."""
    encoding = getattr(stream, "encoding", None)
    return (os.linesep == "\n" and hasattr(stream, "buffer") and encoding is not None
            and codecs.lookup(encoding).name in ("utf-8", "ascii"))


def write_text(path: str | Path, text: str | Iterable[str | bytes], others: Iterable[str | Path | None] = ()) -> Path:
    """Write `text` (UTF-8; a string, or pieces written in order, each text or already UTF-8) to `path`
    atomically, refusing to replace a file the run reads or also writes, a device or a directory."""

    def fill(temp_name: str) -> None:
        with open(temp_name, "w", encoding="utf-8") as handle:
            raw = takes_utf8(handle)
            for piece in [text] if isinstance(text, str) else text:
                if isinstance(piece, str) or not raw:
                    handle.write(piece if isinstance(piece, str) else piece.decode("utf-8"))
                else:
                    handle.flush()
                    handle.buffer.write(piece)

    return write_with(path, fill, others)
