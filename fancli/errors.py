"""Errors that reach the user as one line on stderr and a documented exit code."""

from __future__ import annotations


class FancliError(Exception):
    """Bad usage or unreadable input: the CLI prints the message and exits with 2."""

    exit_code = 2


class SourceError(FancliError):
    """A model source that cannot be read; the message starts with the source's name."""


class SettingsError(FancliError):
    """An unknown scheme, mode or nonlinearity, or an invalid parameter."""


#: The distribution's name on the package index ("fancli" there is an unrelated project).
DISTRIBUTION = "fancli-init"


def torch_missing(error: ModuleNotFoundError) -> FancliError | None:
    """torch is an optional extra: where a source or command needs it and it is not installed, one line
    saying what to install, not an internal error. None for any other missing module. The line names torch
    itself: it works however fancli was installed (the `[torch]` extra needs a published release)."""
    name = error.name or ""
    if name != "torch" and not name.startswith("torch."):
        return None
    return FancliError("this source or command needs torch, which is not installed: pip install torch "
                       "(the README says how to get its CPU build)")
