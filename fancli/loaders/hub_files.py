"""huggingface_hub's HfFileSystem with exact, bounded byte-range reads (imported only for a Hub source).

HfFileSystem reads through fsspec's read-ahead cache: `cat_file(path, 0, 8)` asks the server for 8 bytes plus
a 5 MiB block (the whole file when smaller), and each read first lists the file's folder to learn its size.
Here `cat_file(path, start, end)` is one GET with `Range: bytes=start-(end-1)`, of at most `end - start`
bytes kept (a server that ignores the range is cut off, not read to the end), within huggingface_hub's
HF_HUB_DOWNLOAD_TIMEOUT, retried at most RETRIES times; its faults are OSErrors as other fsspec
filesystems raise them: FileNotFoundError (404), PermissionError (401/403), TimeoutError (remote_io's
`TimedOut`: its message names huggingface_hub's settings), ConnectionError (refused, cut off), other HTTP
statuses huggingface_hub's HfHubHTTPError (an OSError). Everything else (ls, info, open, whole-file reads)
is HfFileSystem's own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator

import httpx2
from huggingface_hub import HfFileSystem, constants, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

from .remote_io import TimedOut, shown

#: Retries of a read that timed out or lost its connection (huggingface_hub's default is 5, with up to
#: 23 s of waiting between them): with the default 10 s timeout a server that never answers fails in ~33 s.
RETRIES = 2


class _QuietReads(logging.Filter):
    """Drops huggingface_hub's retry warnings ("'timed out' thrown while requesting GET <url>", "Retrying in
    1s") logged in a thread while it is inside `cat_file` below: they name the URL asked (with an endpoint's
    user info), and fancli's one line says what failed. Its other logging, and other threads', passes."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.reading, "on", False)

    @contextlib.contextmanager
    def during(self) -> Iterator[None]:
        self.reading.on = True
        try:
            yield
        finally:
            self.reading.on = False


_QUIET = _QuietReads()
logging.getLogger("huggingface_hub.utils._http").addFilter(_QUIET)


class RangedHfFileSystem(HfFileSystem):
    """An HfFileSystem whose `cat_file` with a start and an end fetches exactly those bytes."""

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        if start is None or end is None or start < 0 or end < 0:  # reads that need the size first
            return super().cat_file(path, start, end, **kwargs)
        if end <= start:
            return b""
        timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
        try:
            resolved = self.resolve_path(path)  # once per repo and revision: the Hub's answer is kept
            url = hf_hub_url(resolved.repo_id, resolved.path_in_repo, repo_type=resolved.repo_type,
                             revision=resolved.revision, endpoint=self.endpoint)
            headers = {**build_hf_headers(token=self.token), "Range": f"bytes={start}-{end - 1}"}
            with _QUIET.during(), \
                    http_stream_backoff("GET", url, headers=headers, timeout=timeout, max_retries=RETRIES) as response:
                if response.status_code == 416:  # starts past the end: a read past EOF
                    return b""
                hf_raise_for_status(response)
                if response.status_code != 206 and start > 0:
                    raise OSError(f"{path}: the server ignored the byte range {start}-{end - 1}")
                return _first_bytes(response, end - start, path)
        except RemoteEntryNotFoundError as error:
            raise FileNotFoundError(f"{path}: not in the repo") from error
        except HfHubHTTPError as error:
            if error.response.status_code in (401, 403):  # a gated or private repo, this token not granted
                raise PermissionError(f"{path}: the Hub refused access ({error.response.status_code})") from error
            raise
        except httpx2.TimeoutException as error:
            raise TimedOut(path, f"no answer from {shown(self.endpoint)} in time (HF_HUB_ETAG_TIMEOUT, "
                                 f"HF_HUB_DOWNLOAD_TIMEOUT: {timeout} s)") from error
        except httpx2.TransportError as error:
            raise ConnectionError(f"{path}: cannot read from {shown(self.endpoint)}") from error


def _first_bytes(response: httpx2.Response, count: int, path: str) -> bytes:
    """At most `count` bytes of the body; the rest is never read. A body cut short is an OSError raised here,
    inside http_stream_backoff's block: the httpx error itself would be caught by its generator, which retries
    and then fails with "generator didn't stop after throw()" (huggingface_hub 2.4)."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= count:
                break
    except httpx2.TimeoutException as error:
        raise TimedOut(path, f"the server stopped sending after {len(data)} of {count} bytes (HF_HUB_DOWNLOAD_TIMEOUT: "
                             f"{constants.HF_HUB_DOWNLOAD_TIMEOUT} s)") from error
    except httpx2.TransportError as error:
        raise ConnectionError(f"{path}: cut off after {len(data)} of {count} bytes: {error}") from error
    return bytes(data[:count])
