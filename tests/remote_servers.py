"""Real servers on 127.0.0.1 for remote sources, started by the tests: an HTTP server with byte ranges that
counts the bytes it sends, moto's S3 server behind a proxy that counts the same, a port that accepts and
never answers, and one that refuses."""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Counter:
    """Bytes sent to clients, in total and per request (or connection)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.sent.append(nbytes)

    @property
    def total(self) -> int:
        return sum(self.sent)

    def reset(self) -> None:
        with self.lock:
            self.sent.clear()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (as fancli does on a range answered with the whole file)."""


class HttpFiles:
    """Files served at http://127.0.0.1:port/<name>, GET with Range and HEAD; every byte sent counted
    (headers too). `/403/...` answers 403; `/cut/<name>` states the whole length and sends half;
    `/whole/<name>` says `Accept-Ranges: none` and sends the whole file whatever the range; `/deaf/<name>`
    sends the whole file whatever the range, and says nothing of ranges; `/long/<name>` answers a range 206
    with its Content-Range, but with the whole file as the body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.counter = Counter()
        files, counter = self.files, self.counter

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes, length: int | None = None) -> None:
                head = [f"HTTP/1.1 {status} X\r\n"] + [f"{k}: {v}\r\n" for k, v in headers.items()]
                head.append(f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
                data = "".join(head).encode() + (b"" if self.command == "HEAD" else body)
                self.wfile.write(data)
                self.wfile.flush()
                counter.add(len(data))

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/403/"):
                    return self._send(403, {}, b"forbidden")
                prefix = next((p for p in ("/cut/", "/whole/", "/deaf/", "/long/") if path.startswith(p)), "/")
                body = files.get(path.removeprefix(prefix[:-1]))
                if body is None:
                    return self._send(404, {}, b"not found")
                if prefix in ("/whole/", "/deaf/"):
                    return self._send(200, {"Accept-Ranges": "none"} if prefix == "/whole/" else {}, body)
                cut = prefix == "/cut/"
                wanted = _RANGE.match(self.headers.get("Range", ""))
                status, start, end = 200, 0, len(body)
                if wanted:
                    start = int(wanted.group(1))
                    end = min(int(wanted.group(2)) + 1 if wanted.group(2) else len(body), len(body))
                    status = 206
                headers = {"Accept-Ranges": "bytes"}
                if status == 206:
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
                part = body if prefix == "/long/" else body[start:end]
                if cut and self.command == "GET":
                    self._send(status, headers, part[: len(part) // 2], length=len(part))
                    self.close_connection = True
                    return
                self._send(status, headers, part)

            do_GET = do_HEAD = _answer

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HttpFiles":
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingProxy:
    """A TCP proxy to `upstream` that counts the bytes the upstream sends back (the server's bytes)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.counter = Counter()
        counter = self.counter

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                far = socket.create_connection(upstream)
                sent = 0

                def up() -> None:
                    with contextlib.suppress(OSError):
                        while data := self.request.recv(65536):
                            far.sendall(data)
                    with contextlib.suppress(OSError):
                        far.shutdown(socket.SHUT_WR)

                thread = threading.Thread(target=up, daemon=True)
                thread.start()
                with contextlib.suppress(OSError):
                    while data := far.recv(65536):
                        self.request.sendall(data)
                        sent += len(data)
                counter.add(sent)
                far.close()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Pipe)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "CountingProxy":
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose connections are made (the kernel's backlog) but never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_s3() -> Iterator[tuple[str, int]]:
    """moto's S3 server on a free port of 127.0.0.1: its (host, port)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()
