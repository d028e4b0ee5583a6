"""Showing strings that came from a file (tensor keys, layer and class names, file names, messages) safely.

A key in a checkpoint is whatever its author wrote: escape sequences that recolour or retitle a terminal,
bidi overrides that make `evil` read as `live`, lone surrogates that no encoder accepts. Every renderer and
the CLI's error printer pass such text through `printable` (one line, every control escaped), and rich
gets it as Text objects, never as markup strings, so that a report shows a key, never acts on it. JSON
keeps the real string, escaped by `json_safe` only where a terminal would act on it.
"""

from __future__ import annotations

import re

#: C0 controls and DEL, C1 controls, bidi embeddings/overrides/isolates and marks, line/paragraph
#: separators, and lone surrogates: each acts on a terminal or breaks an encoder instead of showing.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
#: The same set less the C0 controls and DEL, which json.dumps already escapes.
_JSON_UNSAFE = re.compile("[\x80-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(found: re.Match) -> str:
    char = found.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as one line with every control, bidi override and lone surrogate shown as a Python escape
    (ESC becomes the four characters `\\x1b`), so printing it can neither move the cursor nor reorder text."""
    text = str(text)
    if text.isprintable():  # the common case, checked in C: no control, format or surrogate character
        return text
    return _UNSAFE.sub(_escape, text)


def json_safe(document: str) -> str:
    """JSON text with C1 controls, bidi controls and lone surrogates written as `\\uXXXX` escapes.

    Lossless (a JSON reader gets the very same string back) and still valid JSON: outside strings JSON
    text is ASCII, so only characters inside strings are touched. json.dumps escapes C0 controls itself.
    """
    if document.isascii():  # checked in C: tens of MB of a 90,000-tensor report need no regex pass
        return document
    return _JSON_UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", document)
