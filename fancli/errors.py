"""Errors that reach the user as one line on stderr and a documented exit code."""

from __future__ import annotations


class FancliError(Exception):
    """Bad usage or unreadable input: the CLI prints the message and exits with 2."""

    exit_code = 2


class SourceError(FancliError):
    """A model source that cannot be read; the message starts with the source's name."""


class SettingsError(FancliError):
    """An unknown scheme, mode or nonlinearity, or an invalid parameter."""
