"""Remote bytes through fsspec: which filesystem a URL names, exact byte ranges, and every failure as one line.

fsspec is imported only here, only for a remote source; s3fs and gcsfs only for their scheme. Reads are
`fs.cat_file(path, start, end)`, exact ranges: a buffered file object would read ahead by its block size
(5 MiB for s3fs). Every filesystem fancli makes has connect and read timeouts and bounded retries;
credentials come from each library's own mechanisms (AWS's env and config files, Google's application
default credentials, an HTTP URL's own) and no message shows them: a URL is shown without its user info
and its query string (a presigned URL's signature).
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from ..errors import SourceError

#: Seconds to wait for a connection, and for each read of an answer: a server that never answers is one
#: line, exit 2, within a minute (S3's client tries at most RETRIES times, each up to READ_TIMEOUT).
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 20
RETRIES = 2
#: The longest one call (a size, a listing, a range) may take, retries and their back-off included.
DEADLINE = 50
#: URL scheme -> (fsspec protocol, the package that implements it).
SCHEMES = {"s3": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
           "http": ("http", "aiohttp"), "https": ("https", "aiohttp")}
#: A missing package -> what installs it (the `remote` extra's pieces; gcsfs is left to those who use GCS).
INSTALL = {"fsspec": "pip install 'fsspec[http]'", "aiohttp": "pip install 'fsspec[http]'",
           "s3fs": "pip install s3fs", "gcsfs": "pip install gcsfs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_url(source: str) -> bool:
    """Whether `source` is a URL of a scheme fancli reads remotely (s3://, gs://, http(s)://)."""
    found = _URL.match(source)
    return bool(found) and found.group(1).lower() in SCHEMES


def shown(url: str) -> str:
    """A URL as messages and reports show it: no user info (a password), no query (a signature), no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that does not parse>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def offline() -> bool:
    """Whether fancli is kept offline: `--offline`, or FANCLI_OFFLINE set (to anything but 0 or empty)."""
    return os.environ.get("FANCLI_OFFLINE", "") not in ("", "0")


def refuse_offline(source: str) -> None:
    """One line where a remote source is given while fancli is offline."""
    if offline():
        raise SourceError(f"{shown(source)}: a remote source, and fancli is offline (--offline or FANCLI_OFFLINE); "
                          "nothing was fetched")


def _timeouts() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)


class TimedOut(TimeoutError):
    """A timeout of a filesystem with time limits of its own (the Hub's: huggingface_hub's settings), its
    `reason` saying which (messages would otherwise name this module's)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


class RangeIgnored(Exception):
    """A server answered a byte range with more than the range (the whole file, 200; or a 206 whose
    Content-Length is longer than the range, or not given): refused unread. `partial` for a 206."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}")
        self.partial = status == 206


_ASKED = re.compile(r"bytes=(\d+)-(\d+)$")


async def _on_answer(_session: Any, _context: Any, params: Any) -> None:
    """Before an answer's body is read: one to a byte range must hold at most that range."""
    asked = _ASKED.match(params.headers.get("Range", ""))
    if asked is None:
        return
    length = params.response.headers.get("Content-Length", "")
    if params.response.status < 300 and not (length.isdigit() and int(length) <= int(asked[2]) - int(asked[1]) + 1):
        params.response.close()
        raise RangeIgnored(params.response.status)


async def ranged_client(**kwargs: Any) -> Any:
    """aiohttp's session, as fsspec's HTTP filesystem makes it (its `get_client`), which refuses an answer to
    a byte range that is not one before its body is read: a server that ignores ranges would send the whole
    file (fsspec's `cat_file` reads whatever comes)."""
    import aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_on_answer)
    return aiohttp.ClientSession(trace_configs=[trace], **kwargs)


def _options(protocol: str) -> dict[str, Any]:
    """The storage options that bound time and retries, in each library's own terms."""
    if protocol == "s3":
        return {"config_kwargs": {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
                                  "retries": {"max_attempts": RETRIES, "mode": "standard"}}}
    if protocol == "gcs":
        return {"session_kwargs": {"timeout": _timeouts()}}
    # http(s): aiohttp's, which follows redirects itself
    return {"client_kwargs": {"timeout": _timeouts()}, "get_client": ranged_client}


def filesystem(source: str) -> tuple[Any, str]:
    """The fsspec filesystem a URL names, and the path within it; one line where its package is missing."""
    refuse_offline(source)
    where = shown(source)
    scheme = _URL.match(source).group(1).lower()  # type: ignore[union-attr]
    protocol, package = SCHEMES[scheme]
    try:
        from fsspec.core import url_to_fs

        importlib.import_module(package)
    except ModuleNotFoundError as error:
        needed = (error.name or "").partition(".")[0]
        if needed not in INSTALL:
            raise
        raise SourceError(f"{where}: reading {scheme}:// needs {needed}, which is not installed: "
                          f"{INSTALL[needed]}") from None

    try:  # here, not in `call`'s thread: fsspec keeps one filesystem per thread and options
        fs, path = url_to_fs(source, **_options(protocol))
    except Exception as error:  # noqa: BLE001 - a URL its library cannot take
        raise SourceError(f"{where}: {_reason(error)}") from None
    if scheme in ("s3", "gs", "gcs"):
        _tries_once(fs)
    return fs, path


def _tries_once(fs: Any) -> None:
    """s3fs (gcsfs likewise) repeats a failed call, with back-off, on top of its client's own RETRIES: once is
    enough here (an attribute of the filesystem, not a storage option; a worker's copy keeps its default)."""
    if hasattr(fs, "retries"):
        fs.retries = 1


def _chain(error: BaseException) -> list[BaseException]:
    """The error and its causes (fsspec's HTTP `info` says FileNotFoundError for any failure, botocore wraps
    aiohttp's, which wraps the OSError: the innermost says what happened)."""
    found: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(found) < 8:
        found.append(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def _reason(error: BaseException) -> str:
    """What went wrong, in a few words that name no URL, credential or signature."""
    chain = _chain(error)
    names = " ".join(type(each).__name__ for each in chain)
    status = next((code for each in chain for code in (getattr(each, "status", None),
                   getattr(getattr(each, "response", None), "status_code", None)) if type(code) is int), None)
    if status in (401, 403) or any(isinstance(each, PermissionError) for each in chain):
        return f"access denied ({status or 403}): check the credentials the library finds (never printed)"
    if status == 404:
        return "not found (404)"
    if any(isinstance(each, ConnectionRefusedError) for each in chain) or "Connector" in names \
            or "EndpointConnection" in names:
        return "cannot connect (refused or unreachable)"
    explained = next((each for each in chain if isinstance(each, TimedOut)), None)
    if explained is not None:
        return _ANY_URL.sub(lambda found: shown(found.group(0)), explained.reason)
    if any(isinstance(each, TimeoutError) for each in chain) or "Timeout" in names:
        return f"no answer in time (connect {CONNECT_TIMEOUT} s, read {READ_TIMEOUT} s)"
    ignored = next((each for each in chain if isinstance(each, RangeIgnored)), None)
    if ignored is not None and ignored.partial:
        return "the server answered a byte range with more bytes than the range (or an unstated length); refused unread"
    if ignored is not None:
        return "the server answered a byte range with the whole file (it ignores ranges); download the file"
    if "Payload" in names or "IncompleteRead" in names or "RemoteProtocolError" in names:  # aiohttp, urllib3, httpx
        return "the server's answer ended early (a truncated transfer)"
    if isinstance(error, FileNotFoundError):
        return "not found"
    if status is not None:
        return f"the server answered {status}"
    text = _ANY_URL.sub(lambda found: shown(found.group(0)), str(error).splitlines()[0] if str(error) else "")
    return f"cannot read ({type(error).__name__}{': ' + text[:200] if text else ''})"


def call(where: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` (a filesystem's info, ls or cat_file) within DEADLINE seconds, its client's
    own retries included; any failure one SourceError line starting with `where`. Past the deadline the
    call is given up: its thread, left to the client's timeouts, keeps no process alive."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread below
            outcome["error"] = error

    worker = threading.Thread(target=run, name="fancli-remote", daemon=True)
    worker.start()
    worker.join(DEADLINE)
    if worker.is_alive():
        raise SourceError(f"{where}: no answer within {DEADLINE} s")
    error = outcome.get("error")
    if error is None:
        return outcome["value"]
    if isinstance(error, SourceError) or not isinstance(error, Exception):
        raise error
    raise SourceError(f"{where}: {_reason(error)}") from None


def _exactly(fs: Any) -> dict[str, Any]:
    """What makes `fs.cat_file` fetch the range and nothing more: fsspec's generic `cat_file` (HfFileSystem's)
    opens a buffered file, which would read a whole block ahead (MBs) unless its cache is "none"; the async
    ones (s3fs, gcsfs, HTTP) ask for the exact range themselves, and would pass such a keyword on as a
    request option."""
    from fsspec import AbstractFileSystem
    from fsspec.asyn import AsyncFileSystem

    generic = not isinstance(fs, AsyncFileSystem) and type(fs).cat_file is AbstractFileSystem.cat_file
    return {"cache_type": "none"} if generic else {}


async def _s3_range(fs: Any, path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an S3 object as s3fs's `cat_file` asks for them, but the answer's ContentLength
    checked before its body is read: s3fs reads whatever comes whole (a server or a proxy that answers a range
    with the whole object would fill memory). `_call_s3` is s3fs's async API (fsspec's `_` convention)."""
    bucket, key, version = fs.split_path(path)
    answer = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                               **({"VersionId": version} if version else {}))
    body = answer["Body"]
    try:
        length = answer.get("ContentLength")
        if type(length) is not int or length > end - start:
            raise RangeIgnored(answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 206))
        return await body.read()
    finally:
        body.close()


def _read_range(fs: Any, path: str, start: int, end: int) -> bytes:
    """One ranged read: through `_s3_range` on s3fs (its client has no hook for an answer's length before
    the body), `cat_file` elsewhere (HTTP's session refuses a long answer itself: `ranged_client`)."""
    if hasattr(fs, "_call_s3"):
        from fsspec.asyn import sync

        return sync(fs.loop, _s3_range, fs, path, start, end)
    return fs.cat_file(path, start=start, end=end, **_exactly(fs))


def fetch(fs: Any, path: str, start: int, end: int, where: str) -> bytes:
    """Bytes [start, end) of a remote file, in one ranged request; exactly those, or one line."""
    if end <= start:
        return b""
    data = call(where, _read_range, fs, path, start, end)
    if len(data) != end - start:
        raise SourceError(f"{where}: asked for bytes {start}–{end}, got {len(data)} bytes (a truncated file, or a "
                          "server that ignores byte ranges)")
    return data


def file_size(fs: Any, path: str, where: str, info: dict | None = None) -> int:
    """A remote file's size, from its metadata (`info`, or a HEAD request: not its bytes)."""
    if info is None:
        info = call(where, fs.info, path)
    size = info.get("size")
    if info.get("type") == "directory":
        raise SourceError(f"{where}: is a directory; give a model file")
    if type(size) is not int or size < 0:
        raise SourceError(f"{where}: the server does not say the file's size; fancli reads remote files by range")
    if info.get("partial") is False:  # fsspec's HTTP: `Accept-Ranges: none`; a range would bring the whole file
        raise SourceError(f"{where}: the server serves no byte ranges (Accept-Ranges: none); download the file "
                          "to read it")
    return size


class RemoteRange:
    """The bytes at [start, start + nbytes) of a remote file, read by range when asked (a tensors.ByteSource).

    It carries the filesystem (fsspec pickles one as its class and storage options, so a `--cluster` worker
    makes its own and reads its own ranges), the path, and the range: never the bytes. Slotted: a
    checkpoint holds one per tensor."""

    __slots__ = ("fs", "path", "start", "nbytes", "where")

    def __init__(self, fs: Any, path: str, where: str, start: int, nbytes: int) -> None:
        self.fs, self.path, self.where, self.start, self.nbytes = fs, path, where, start, nbytes

    def read(self, start: int, size: int) -> bytes:
        if start < 0 or start + size > self.nbytes:
            raise SourceError(f"{self.where}: a storage is shorter than its tensors need")
        return fetch(self.fs, self.path, self.start + start, self.start + start + size, self.where)

    def __getstate__(self) -> tuple:
        return self.fs, self.path, self.where, self.start, self.nbytes

    def __setstate__(self, state: tuple) -> None:
        self.fs, self.path, self.where, self.start, self.nbytes = state
