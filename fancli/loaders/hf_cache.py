"""`org/name` from the local Hugging Face cache, as the Hub's own tools lay it out; never the network.

The cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) holds one folder per repo,
`models--org--name/`, with `refs/<branch>` (a commit hash), `snapshots/<commit>/…` (symlinks) and
`blobs/` (the files). The documented layout is read here rather than through huggingface_hub, which
fancli does not depend on: a lookup is two small reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SourceError
from ..safe_io import read_bounded
from .links import leads_outside

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: A branch or tag name (`main`, `v1.0`, `refs/pr/1`): name parts joined by `/`, none `.` or `..`.
_REVISION = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
MAX_REF_BYTES = 1024  # a ref holds one 40-character hash
DEFAULT_REVISION = "main"
#: The Hub's own command that fills the cache (huggingface_hub's `hf`, which replaced `huggingface-cli`).
DOWNLOAD = "hf download"


def is_repo_id(source: str) -> bool:
    """`org/name` as the Hub spells repo ids (no `..`, no third part); a path that exists wins over it."""
    return bool(_REPO_ID.match(source)) and ".." not in source and not source.endswith(".")


def cache_dir() -> Path:
    """Where the Hub's tools keep downloads: HF_HUB_CACHE, else HF_HOME/hub, else under the home directory
    (XDG_CACHE_HOME's huggingface/hub where that is set, as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _repo_folder(repo_id: str) -> Path:
    """The cache folder of `repo_id` (it may not exist)."""
    return cache_dir() / f"models--{repo_id.replace('/', '--')}"


class NotCached(SourceError):
    """The cache lacks the repo, the revision's ref or its snapshot: what the Hub may still serve (a ref or link
    the cache has but `snapshot` refuses is a SourceError of its own, never sent to the network)."""


def has_snapshot(repo_id: str, revision: str | None = None) -> bool:
    """Whether the cache holds `repo_id` at `revision`; False only where it lacks it (`NotCached`): a refused
    or broken cache is the cache's to report."""
    return missing(repo_id, revision) is None


def missing(repo_id: str, revision: str | None = None) -> NotCached | None:
    """What the cache lacks of `repo_id` at `revision`, as `snapshot` says it (None where nothing)."""
    try:
        snapshot(repo_id, revision)
    except NotCached as error:
        return error
    except SourceError:
        return None
    return None


def not_cached(repo_id: str) -> NotCached:
    """The error for a repo id the cache does not hold."""
    return NotCached(f"{repo_id}: no such file, and not in the Hugging Face cache (looked in "
                     f"{_repo_folder(repo_id)}); download it with `{DOWNLOAD} {repo_id}`")


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo_id` at `revision` (a branch or tag under refs/, or a commit hash)."""
    revision = revision or DEFAULT_REVISION
    repo = _repo_folder(repo_id)
    download = f"download it with `{DOWNLOAD} {repo_id}`"
    if not repo.is_dir():
        raise not_cached(repo_id)
    if not _REVISION.match(revision) or {".", ".."} & set(revision.split("/")):
        raise SourceError(f"{repo_id}: {revision!r} is not a revision: give a branch or tag name, or a commit hash")
    commit = revision if _COMMIT.match(revision) else _commit(repo, repo_id, revision, download)
    folder = repo / "snapshots" / commit
    if not folder.is_dir():
        raise NotCached(f"{repo_id}: revision {revision!r} (commit {commit}) has no snapshot in {repo}; {download}")
    return folder


def _commit(repo: Path, repo_id: str, revision: str, download: str) -> str:
    """The commit hash `refs/<revision>` holds."""
    ref = repo / "refs" / revision
    if leads_outside(ref, (repo / "refs").resolve()):
        raise SourceError(f"{repo_id}: {ref} links outside the repo's refs folder; refused")
    if not ref.is_file():
        raise NotCached(f"{repo_id}: no revision {revision!r} in the Hugging Face cache ({ref} is missing); "
                          f"download it with `{DOWNLOAD} {repo_id} --revision {revision}`")
    text = read_bounded(ref, MAX_REF_BYTES, "a cache ref").decode("ascii", "replace").strip()
    if not _COMMIT.match(text):
        raise SourceError(f"{repo_id}: {ref} does not hold a commit hash; a broken cache: {download} again")
    return text
