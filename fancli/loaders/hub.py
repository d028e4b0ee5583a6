"""A repo id that is not in the local cache, read from the Hugging Face Hub by byte range (issue 30).

Contract: `hub_filesystem(repo_id, revision)` returns `(fs, root)` for `load_remote(fs, root, source, options)`:
`fs` an fsspec filesystem (huggingface_hub's HfFileSystem, hub_files.py) and `root` the repo at the revision
resolved to a commit, "org/name@<commit>" as HfFileSystem spells it, so every read of one inspection sees
one commit. `fs.cat_file(f"{root}/{name}", start, end)` is one ranged GET of exactly those bytes;
`fs.ls(root)` / `fs.info(...)` list through the Hub's tree API. It downloads nothing and writes nothing to the
Hugging Face cache (huggingface_hub's telemetry, unless HF_HUB_DISABLE_TELEMETRY, keeps the Hub's list of AI
agents in HF_HOME, for its user-agent). All settings are huggingface_hub's own: the endpoint (HF_ENDPOINT),
the token (HF_TOKEN, or the file `hf auth login` writes; never printed), offline mode (HF_HUB_OFFLINE: then
the error is the one for a repo id the cache lacks) and the timeouts (HF_HUB_ETAG_TIMEOUT for resolving the
revision, HF_HUB_DOWNLOAD_TIMEOUT per read; huggingface_hub 2.4 sets none on its tree listings and its auth-check:
these, as every remote call, are bounded by `remote_io.call`'s DEADLINE). A missing, private or gated
repo, a missing revision, a refused connection and a timeout are each a one-line SourceError naming the repo.
huggingface_hub is the optional `hub` extra, imported only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SourceError
from .hf_cache import missing, not_cached
from .remote_io import call, shown

if TYPE_CHECKING:
    import fsspec
    from huggingface_hub import HfApi, ModelInfo


def hub_filesystem(repo_id: str, revision: str | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The Hub as a filesystem and the root of `repo_id` at `revision` (default: the default branch)."""
    try:
        from huggingface_hub import HfApi, constants

        from .hub_files import RangedHfFileSystem
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in ("huggingface_hub", "httpx2"):
            raise
        raise SourceError(f"{_lacking(repo_id, revision)}; or read it from the Hub by byte range, without "
                          "downloading it, with huggingface_hub: pip install huggingface_hub") from None
    if constants.is_offline_mode():
        raise _lacking(repo_id, revision)
    # The endpoint in the fs itself, so that a pickled copy (a cluster worker) reads the same Hub; the token
    # is not: each process finds its own by huggingface_hub's rules.
    fs = RangedHfFileSystem(endpoint=constants.ENDPOINT, skip_instance_cache=True)
    api = HfApi(endpoint=fs.endpoint, token=fs.token)
    where = f"the Hugging Face Hub ({shown(fs.endpoint)})"  # an endpoint's user info is never shown
    info = call(f"{repo_id}: {where}", _resolved, api, repo_id, revision, where)
    if not info.sha:
        raise SourceError(f"{repo_id}: {where} did not say which commit revision {revision or 'main'!r} is")
    return fs, f"{repo_id}@{info.sha}"


def _lacking(repo_id: str, revision: str | None) -> SourceError:
    """What the local cache lacks of the repo at the revision (the repo, or only that revision), in its words."""
    return missing(repo_id, revision) or not_cached(repo_id)


def _resolved(api: HfApi, repo_id: str, revision: str | None, where: str) -> ModelInfo:
    """The repo's info at `revision` (its commit), once a gated repo's files are known to be readable; each
    refusal one line. In `remote_io.call`'s thread: huggingface_hub bounds the info request by
    HF_HUB_ETAG_TIMEOUT but its auth-check by nothing, so a server that answers the one and never the other
    would hang the run."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        info = api.model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        if info.gated:  # its info is public, its files may not be: ask before reading any
            api.auth_check(repo_id)
    except GatedRepoError:
        raise SourceError(f"{repo_id}: a gated repo on {where} that this token may not read: ask for access on "
                          "its page, then log in with `hf auth login` or set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo_id}: no revision {revision!r} on {where}") from None
    except RepositoryNotFoundError:  # the Hub does not tell a private repo from a missing one
        raise SourceError(f"{repo_id}: no such repo on {where}, or a private one this token may not read "
                          "(log in with `hf auth login` or set HF_TOKEN)") from None
    except HfHubHTTPError as error:
        raise SourceError(f"{repo_id}: {where} answered {error.response.status_code}") from None
    except HFValidationError as error:
        raise SourceError(f"{repo_id}: not a repo id the Hub accepts: {str(error).splitlines()[0]}") from None
    except httpx2.TimeoutException:
        raise SourceError(f"{repo_id}: {where} did not answer within {constants.HF_HUB_ETAG_TIMEOUT} s "
                          "(HF_HUB_ETAG_TIMEOUT)") from None
    except httpx2.TransportError:
        raise SourceError(f"{_lacking(repo_id, revision)}; and {where} cannot be reached") from None
    return info
