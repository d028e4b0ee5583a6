"""A minimal Hugging Face Hub endpoint on 127.0.0.1 serving local folders as model repos, for `HF_ENDPOINT`.

It answers what huggingface_hub's own calls ask (read from its 2.4 source: hf_api.py, file_download.py,
hf_file_system.py, utils/_detect_agent.py): `/api/agent-harnesses` (fetched for the user-agent unless
HF_HUB_DISABLE_TELEMETRY), `/api/models/{repo}[/revision/{rev}]` (model_info, the commit), `.../auth-check`,
`.../tree/{rev}[/{path}]` (list_repo_tree, HfFileSystem.ls), `POST .../paths-info/{rev}` (get_paths_info), and
`/{repo}/resolve/{rev}/{file}` with HEAD and GET, one `Range` (206 + Content-Range, 416 past the end), ETag,
Content-Length and X-Repo-Commit. Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound,
EntryNotFound, GatedRepo), which is how huggingface_hub picks its exception class. Every response's body
bytes are recorded per request, so tests can assert what a client fetched; `stall()` makes the server accept
connections and never answer (timeout tests), all requests or those of some endpoints, `cut_short()` ends
files' bodies halfway.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    import pytest

CHUNK = 64 * 1024


@dataclass
class Repo:
    """A model repo: a folder's files, at each commit of `refs` (branch/tag -> commit; by default `main` ->
    `commit`), reachable by a ref's name or a commit hash.

    `access` is "public", "gated" (its info and listing are public, its files need a token in `tokens`:
    401 without one, 403 with another, as the Hub answers) or "private" (401 RepoNotFound without a token in
    `tokens`: the Hub does not tell a private repo from a missing one)."""

    folder: Path
    access: str = "public"
    tokens: frozenset[str] = frozenset()
    commit: str = ""
    refs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.commit = self.commit or hashlib.sha1(str(self.folder).encode()).hexdigest()
        self.refs = self.refs or {"main": self.commit}

    def files(self) -> dict[str, Path]:
        """Repo path -> local file, in the order the tree lists them."""
        return {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def folders(self) -> set[str]:
        return {p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_dir()}


@dataclass
class Sent:
    """One answered request: what was asked and how many body bytes went out."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


def blob_id(data: bytes) -> str:
    """The git blob hash the Hub reports as a file's `oid` (and its ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """`with HubServer({"org/name": folder}) as hub:` serves at `hub.url` until the block ends."""

    def __init__(self, repos: dict[str, Repo | Path] | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        for repo_id, repo in (repos or {}).items():
            self.add(repo_id, repo)
        self.sent: list[Sent] = []
        self._lock = threading.Condition()
        self._busy = 0  # requests being answered: a client may go on before the server has counted them
        self._release = threading.Event()
        self._stalled: tuple[str, ...] | None = None
        self._cut_short = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, repo_id: str, repo: Repo | Path) -> Repo:
        self.repos[repo_id] = repo if isinstance(repo, Repo) else Repo(Path(repo))
        return self.repos[repo_id]

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def clear(self) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._busy, timeout=5)
            self.sent.clear()

    def body_bytes(self, path_end: str = "") -> int:
        """Body bytes sent for requests whose URL path ends with `path_end` (all requests by default)."""
        return sum(s.body_bytes for s in self.requests(path_end))

    def requests(self, path_end: str = "") -> list[Sent]:
        """The answered requests whose URL path ends with `path_end`, once none is being answered."""
        with self._lock:
            self._lock.wait_for(lambda: not self._busy, timeout=5)
            return [s for s in self.sent if s.path.endswith(path_end)]

    @contextlib.contextmanager
    def stall(self, *endpoints: str) -> Iterator[None]:
        """Within the block, every request (or every one to an endpoint named: "tree", "paths-info",
        "auth-check", "resolve"...) is accepted and never answered (until the block or server ends)."""
        self._release.clear()
        self._stalled = endpoints
        try:
            yield
        finally:
            self._stalled = None
            self._release.set()

    def _stalls(self, path: str) -> bool:
        """Whether a request for the URL `path` is left unanswered now."""
        if self._stalled is None:
            return False
        parts = urlsplit(path).path.strip("/").split("/")
        endpoint = parts[4] if parts[:2] == ["api", "models"] and len(parts) > 4 else parts[2:3] and parts[2]
        return not self._stalled or endpoint in self._stalled

    @contextlib.contextmanager
    def cut_short(self) -> Iterator[None]:
        """Within the block, a file's body stops halfway and the connection closes (a truncated transfer)."""
        self._cut_short = True
        try:
            yield
        finally:
            self._cut_short = False

    def _begin(self) -> None:
        with self._lock:
            self._busy += 1

    def _end(self) -> None:
        with self._lock:
            self._busy -= 1
            self._lock.notify_all()

    def _record(self, sent: Sent) -> None:
        with self._lock:
            self.sent.append(sent)


def use_hub(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> None:
    """huggingface_hub's settings in this process, as HF_ENDPOINT / HF_HOME / the timeouts set them at import:
    the server at `url`, no token (none of the user's), `home` for its files, no telemetry (it would keep the
    server's agent list in the user's HF_HOME), 5 s timeouts (the timeout tests shorten them)."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: httpx reuses connections

        def setup(self) -> None:
            super().setup()  # headers and body go in separate writes: without NODELAY each waits 40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:  # quiet tests
            pass

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            if hub._stalls(self.path):
                hub._release.wait()
                self.close_connection = True
                return
            self.method = method
            url = urlsplit(self.path)
            self.url_path, self.query = url.path, parse_qs(url.query)
            hub._begin()
            try:
                self._route(url.path)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                hub._end()

        # -- routing ---------------------------------------------------------------------------------------
        def _route(self, path: str) -> None:
            parts = path.strip("/").split("/")
            if parts == ["api", "agent-harnesses"]:  # huggingface_hub's user-agent asks for it (telemetry)
                return self._json({"standardEnvVars": ["AI_AGENT"], "harnesses": {}})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, rest = "/".join(parts[2:4]), parts[4:]
                if not rest:
                    return self._info(repo_id, None)
                if rest[0] == "revision" and len(rest) == 2:
                    return self._info(repo_id, unquote(rest[1]))
                if rest == ["auth-check"]:
                    return self._auth_check(repo_id)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])))
                if rest[0] == "paths-info" and len(rest) == 2 and self.method == "POST":
                    return self._paths_info(repo_id, unquote(rest[1]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:])))
            self._error(404, "", "Not Found")

        # -- lookups -----------------------------------------------------------------------------------------
        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

        def _repo(self, repo_id: str) -> Repo | None:
            """The repo, or None after answering 404/401 as the Hub does (a private repo looks missing)."""
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.access == "private" and self._token() not in repo.tokens):
                self._error(401 if self._token() is None else 404, "RepoNotFound", "Repository not found")
                return None
            return repo

        def _commit(self, repo: Repo, revision: str | None) -> str | None:
            revision = revision or "main"
            commit = repo.refs.get(revision) or (revision if revision in {repo.commit, *repo.refs.values()} else None)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        def _allowed(self, repo: Repo) -> bool:
            """A gated repo's files: 401 without a token, 403 with one not granted access."""
            if repo.access != "gated" or self._token() in repo.tokens:
                return True
            status = 401 if self._token() is None else 403
            self._error(status, "GatedRepo", "Access to this model is restricted")
            return False

        # -- endpoints ---------------------------------------------------------------------------------------
        def _info(self, repo_id: str, revision: str | None) -> None:
            repo = self._repo(repo_id)
            if repo is None or (commit := self._commit(repo, revision)) is None:
                return
            self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.access == "private",
                        "gated": "manual" if repo.access == "gated" else False, "disabled": False,
                        "lastModified": "2024-01-01T00:00:00.000Z",
                        "siblings": [{"rfilename": name} for name in repo.files()]})

        def _auth_check(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo is not None and self._allowed(repo):
                self._json({})

        def _entry(self, repo: Repo, path: str) -> dict:
            local = repo.folder / path
            if local.is_dir():
                return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
            return {"type": "file", "oid": blob_id(local.read_bytes()), "size": local.stat().st_size, "path": path}

        def _tree(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None or self._commit(repo, revision) is None:
                return
            path = path.strip("/")
            if path and path not in repo.folders():
                return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
            names = sorted(repo.folders() | set(repo.files()))
            prefix = f"{path}/" if path else ""
            children = [n for n in names if n.startswith(prefix) and (recursive or "/" not in n[len(prefix):])]
            self._json([self._entry(repo, name) for name in children])

        def _paths_info(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id)
            if repo is None or self._commit(repo, revision) is None:
                return
            length = int(self.headers.get("Content-Length", 0))
            form = parse_qs(self.rfile.read(length).decode())
            known = repo.folders() | set(repo.files())
            self._json([self._entry(repo, p) for p in form.get("paths", []) if p.strip("/") in known])

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None or (commit := self._commit(repo, revision)) is None or not self._allowed(repo):
                return
            local = repo.files().get(path)
            if local is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            data = local.read_bytes()
            size, start, end = len(data), 0, len(data)
            status, headers = 200, {"X-Repo-Commit": commit, "ETag": f'"{blob_id(data)}"', "Accept-Ranges": "bytes"}
            asked = self.headers.get("Range")
            if asked:
                span = _range(asked, size)
                if span is None:
                    headers["Content-Range"] = f"bytes */{size}"
                    return self._send(416, b"", headers)
                (start, end), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            body = data[start:end]
            if hub._cut_short:  # the length announced, half the body sent, the connection closed
                headers["Content-Length"] = str(len(body))
                body, self.close_connection = body[:len(body) // 2], True
            self._send(status, body, headers)

        # -- responses ---------------------------------------------------------------------------------------
        def _json(self, value: object) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, message: str) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            written = 0
            try:
                if self.method != "HEAD":
                    for offset in range(0, len(body), CHUNK):
                        self.wfile.write(body[offset:offset + CHUNK])
                        written += len(body[offset:offset + CHUNK])
            finally:
                hub._record(Sent(self.method, self.url_path, self.headers.get("Range"), status, written))

    return Handler


def _range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) of one `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`; None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or not (first + last).isdigit():
        return None
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    return (start, end) if start < end else None
