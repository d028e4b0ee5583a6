"""Where a file that a checkpoint names may lead once its symlinks are followed.

A folder from the internet (a Hub snapshot, an index's shards, a DCP checkpoint's data files) must not make
fancli read, and quote in an error, a file outside it: `model.safetensors -> /etc/passwd` would print the
first bytes of the password file as a header length. The folder's own links stay allowed: a Hugging Face
cache snapshot (`models--org--name/snapshots/<commit>/`) is made of links into the repo's `blobs/`, so
there the repo's cache folder is the bound.
"""

from __future__ import annotations

import os
from pathlib import Path

#: How the Hub's tools name a repo's cache folder, by the repo's type.
CACHE_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def cache_repo(folder: Path) -> Path | None:
    """The cache folder (resolved) of the Hugging Face repo whose snapshot holds `folder`, as named or with
    its links followed; None where it is in no snapshot."""
    try:
        named, resolved = Path(os.path.abspath(folder)), folder.resolve()
    except (OSError, RuntimeError):  # a link loop
        return None
    for candidate in (named, resolved):
        for above in (candidate, *candidate.parents):
            if above.parent.name == "snapshots" and above.parent.parent.name.startswith(CACHE_REPO_PREFIXES):
                try:
                    return above.parent.parent.resolve()
                except (OSError, RuntimeError):
                    return None
    return None


def link_root(folder: Path) -> Path:
    """Where the files `folder` names may lead: the repo's cache folder for a Hub snapshot, else the folder."""
    return cache_repo(folder) or folder.resolve()


def leads_outside(path: Path, root: Path) -> bool:
    """Whether `path`, every link followed, lies outside `root` (resolved); a link loop counts as outside."""
    try:
        return not path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return True
