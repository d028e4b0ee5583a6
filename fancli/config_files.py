"""Where the team's init configuration lives: `fancli.yaml`, or `[tool.fancli]` in pyproject.toml, in the
working directory or the nearest folder above it. Apart from `config` (which parses one), so that a run
with no configuration to find imports nothing of it."""

from __future__ import annotations

import itertools
import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import SourceError
from .safe_io import read_text

CONFIG_FILE = "fancli.yaml"
#: A config is a few defaults and overrides (pyproject.toml a few KB): 1 MiB is far beyond any real one.
MAX_CONFIG_BYTES = 1024 * 1024
#: Values a config may hold: ~100 bytes of PyYAML or tomllib objects each, so at most ~10 MB to parse.
MAX_CONFIG_NODES = 100_000

#: `[tool.fancli]`, `[tool.fancli.…]`, or `fancli = {…}` under `[tool]`: what a [tool.fancli] table needs in the text.
_MAY_HOLD_FANCLI = re.compile(r"^\s*\[\s*tool\s*\.\s*fancli\b|^\s*fancli\s*=\s*\{", re.MULTILINE)


def read_pyproject(path: Path) -> Any | None:
    text = read_text(path, MAX_CONFIG_BYTES, "a fancli config")
    if not _MAY_HOLD_FANCLI.search(text):  # most pyproject.toml files have no [tool.fancli]: no parser for them
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from .typed_yaml import (
        check_nodes,  # not at the top: yaml is imported only with a config
    )
    check_nodes(text, str(path), MAX_CONFIG_NODES, "a fancli config", "[{,:-=\n")
    try:
        document = tomllib.loads(text)
    except RecursionError:
        raise SourceError(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as error:  # TOMLDecodeError, or Python's limit on an integer's digits
        problem = "a number has too many digits" if "digits" in str(error) else " ".join(str(error).split())[:120]
        raise SourceError(f"{path}: not valid TOML ({problem})") from None
    tool = document.get("tool", {})
    return tool.get("fancli") if isinstance(tool, dict) else None


def find_config(start: Path | None = None) -> Path | None:
    """The nearest `fancli.yaml`, or pyproject.toml with a `[tool.fancli]` table, in `start` or a folder
    above it, so that `fancli check` works from any subfolder of a project, as git and pytest do.

    The search stops after the first folder holding `.git` (the repository root) or the home folder: a
    config above them belongs to something else. In one folder fancli.yaml wins over pyproject.toml. A
    config found that is not the user's is an error (`_refuse_foreign`), as git refuses a repository of
    dubious ownership.
    """
    start = (start or Path.cwd()).absolute()
    home = _home()
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file():
            return _refuse_foreign(directory / CONFIG_FILE)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and _holds_fancli(pyproject):
            return _refuse_foreign(pyproject)
        if (directory / ".git").exists() or directory == home:
            return None
    return None


#: How far `config_below` looks: deep enough for `sample_models/ci/fancli.yaml` from a repository's root,
#: few enough folder entries that a run from a home folder pays milliseconds for the hint.
BELOW_DEPTH, BELOW_ENTRIES = 3, 20_000


def config_below(start: Path) -> Path | None:
    """The nearest `fancli.yaml` in a folder below `start` (breadth first, in name order, at most BELOW_DEPTH
    levels down and BELOW_ENTRIES folder entries read; dot-folders and links skipped), for the hint of a run
    that found no configuration. Never obeyed: a config below is not the working directory's, so it is only
    named, for `--config`."""
    level, budget = [start], BELOW_ENTRIES
    for _ in range(BELOW_DEPTH):
        below = []
        for folder in level:
            try:
                with os.scandir(folder) as scan:
                    entries = list(itertools.islice(scan, budget))
            except OSError:  # unreadable: nothing to hint from there
                continue
            budget -= len(entries)
            below += sorted(Path(entry.path) for entry in entries
                            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False))
        for folder in below:
            if (folder / CONFIG_FILE).is_file():
                return folder / CONFIG_FILE
        level = below
    return None


def _holds_fancli(pyproject: Path) -> bool:
    """Whether a pyproject.toml has a [tool.fancli] table: parsed only when it is the user's (another's is
    judged by its text, and then refused)."""
    if _not_yours(pyproject) is not None:
        return bool(_MAY_HOLD_FANCLI.search(read_text(pyproject, MAX_CONFIG_BYTES, "a fancli config")))
    return read_pyproject(pyproject) is not None


def config_tree(folder: Path) -> Path:
    """The folder tree a config's paths must stay in: the repository holding `folder` (the nearest folder
    at or above it with a `.git` of the user's or root's, below the home folder), else `folder` itself. A
    config in a subfolder may name the repository's files (`source: ../model.pt`), never what lies beyond."""
    home = _home()
    for directory in (folder, *folder.parents):
        git = directory / ".git"
        if git.exists() and _owner_ok(git.stat().st_uid):
            return directory
        if directory == home:
            break
    return folder


def _owner_ok(uid: int) -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or uid in (geteuid(), 0)


def _home() -> Path | None:
    try:
        return Path.home().absolute()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        return None


def _refuse_foreign(path: Path) -> Path:
    """`path`, a config found by searching, if it is the user's; else SourceError (exit 2) naming it and
    why. A config can run code (a factory, `trust: true`), so one that someone else wrote or can change
    (a `fancli.yaml` planted in a shared parent folder) must not be obeyed; an error, not a warning that
    skips it, so that a check never passes on settings other than the ones in front of the user."""
    why = _not_yours(path)
    if why is None:
        return path
    raise SourceError(f"{path}: not used: {why}; a config found by searching up is obeyed only when it is yours "
                      "(or root's) and no one else can change it (give it with --config to use it, or --no-config)")


def _not_yours(path: Path) -> str | None:
    """Why `path` may not be the user's: the link or file owned by another uid than the user's or root's,
    or writable by others or by a group others are in; or its folder the same, unless the folder is sticky
    (as /tmp is: there no one else can replace the user's file). None where it is the user's (or no uids:
    Windows)."""
    if not hasattr(os, "geteuid"):
        return None
    link = path.lstat()
    checks = [("the link", link)] if stat.S_ISLNK(link.st_mode) else []  # a link's own mode means nothing
    for what, info in (*checks, ("the file", path.stat()), ("its folder", path.parent.stat())):
        if not _owner_ok(info.st_uid):
            return f"{what} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}) or root"
        if stat.S_ISLNK(info.st_mode) or (what == "its folder" and info.st_mode & stat.S_ISVTX):
            continue
        if info.st_mode & stat.S_IWOTH:
            return f"{what} is writable by others"
        if info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid):
            return f"{what} is writable by its group (gid {info.st_gid})"
    return None


def _private_group(gid: int) -> bool:
    """root's group, or the user's private group (named as the user, no one else listed in it): where
    Debian and Ubuntu give each user one, files are created group-writable (umask 002)."""
    import grp
    import pwd

    if gid == 0:
        return True
    try:
        group, me = grp.getgrgid(gid), pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a gid or uid with no name
        return False
    return group.gr_name == me and set(group.gr_mem) <= {me}
