"""Moved to `fancli.safe_io` (one home for reads and writes); kept for imports not yet switched."""

from .safe_io import STDOUT_NAMES, checked_target, is_stdout, write_text, write_with

__all__ = ["STDOUT_NAMES", "checked_target", "is_stdout", "write_text", "write_with"]
