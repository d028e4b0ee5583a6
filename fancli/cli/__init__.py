"""The command line, one room: `commands` (the click group and its commands), `options` (each option declared
once), `run` (load, report, write) and `trajectory` (several SOURCEs). `fancli.cli:main` is the console script."""

from .commands import cli, main

__all__ = ["cli", "main"]
