"""Showing strings that came from a file (tensor keys, layer and class names, file names, messages) safely.

A key in a checkpoint is whatever its author wrote: escape sequences that recolour or retitle a terminal,
bidi controls that make `evil` read as `live`, lone surrogates that no encoder accepts, `<img src=…>` or
`[approve](https://…)` that a Markdown page would render, `=HYPERLINK(…)` that a spreadsheet would run.
This module is the one home of escaping, one helper per target, and every renderer goes through them:

- a terminal (and any text line): `printable` — one line, every control escaped;
- JSON: `json_safe` — the exact string, with what a terminal would act on written as `\\uXXXX`;
- Markdown: `markdown_text` for text, `markdown_code` for a code span — no key becomes an element;
- HTML: `html_text`;
- CSV: `csv_text` — no text cell a spreadsheet reads as a formula.

rich gets text as Text objects, never as markup strings, so that a report shows a key, never acts on it.
"""

from __future__ import annotations

import html
import re
import unicodedata

#: Unicode categories that act on a terminal or break an encoder instead of showing: controls (C0, DEL,
#: C1), format characters (every bidi control — U+061C, U+200E/F, U+202A-E, U+2066-9 — zero-width and
#: invisible characters, tags), lone surrogates, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """`text` as one line with every control, format character (bidi controls included) and lone surrogate
    shown as a Python escape (ESC becomes the four characters `\\x1b`), so printing it can neither move
    the cursor nor reorder text."""
    text = str(text)
    if text.isprintable():  # the common case, checked in C: no control, format or surrogate character
        return text
    return "".join(_escape(char) if _unsafe(char) else char for char in text)


def _json_escape(char: str) -> str:
    """`\\uXXXX`, as a surrogate pair beyond the BMP (what JSON allows)."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"


def json_safe(document: str) -> str:
    """JSON text with C1 controls, format characters (bidi controls), line separators and lone surrogates
    written as `\\uXXXX` escapes.

    Lossless (a JSON reader gets the very same string back) and still valid JSON: outside strings JSON
    text is ASCII, so only characters inside strings are touched. json.dumps escapes C0 controls itself,
    so its only raw control is the newline of its indent.
    """
    if document.isascii() or document.replace("\n", " ").isprintable():  # in C: tens of MB need no loop
        return document
    return "\n".join(line if line.isprintable() else "".join(_json_escape(char) if _unsafe(char) else char
                                                             for char in line)
                     for line in document.split("\n"))


#: What CommonMark and GFM give a meaning inline, as character references: HTML and autolinks (`<>`),
#: references (`&`), links and images (`[]`; without them `(`, `)` and `!` are plain text), emphasis and
#: strikethrough (`*~`; `_` too unless between two letters or digits, where it can neither open nor close
#: emphasis), code spans, a backslash before punctuation or at the end (an escape; `\x1b` stays as it
#: is), GitHub's math (`$`), and GFM's autolinks (`@` of an e-mail, `:` before `//`, `.` after `www`).
#: A `|` gets a backslash, which a GFM table reads as a pipe inside the cell.
_MARKDOWN = re.compile(r"[`*\[\]<>&~$@]|\\(?=[!-/:-@\[-`{-~]|$)|:(?=//)|(?<=[Ww]{3})\.|(?<![^\W_])_|_(?![^\W_])")
#: What makes a line's start into a block (heading, quote, list, thematic break, indented code) where a
#: line starts with text from a file: its first character, or the `.`/`)` after an ordered list's number.
_BLOCK_START = re.compile(r"^(?:[\s#+=\-]|\d{1,9}[.)])")


def _reference(found: re.Match) -> str:
    """The match's last character as a character reference (a list number's digits stay as they are)."""
    return f"{found.group()[:-1]}&#{ord(found.group()[-1])};"


def markdown_text(text: object, starts_line: bool = False) -> str:
    """`text` (made `printable`) for a Markdown paragraph or table cell, rendering as written: no key
    becomes HTML, a link, an image or emphasis, nor splits a table. `starts_line` where it begins a line,
    which a leading `#`, `-`, `>`, `1.` or indent would otherwise turn into a block."""
    text = _MARKDOWN.sub(_reference, printable(text)).replace("|", "\\|")
    return _BLOCK_START.sub(_reference, text, count=1) if starts_line else text


def markdown_code(text: object) -> str:
    """`text` (made `printable`) as a Markdown code span: fenced by more backticks than its longest run, so
    no backtick in a key closes it, and padded where it starts or ends with a backtick or space (which
    CommonMark would otherwise merge or strip); a `|` does not split a table cell."""
    text = printable(text)
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def html_text(text: object) -> str:
    """`text` (made `printable`) for HTML element content or a quoted attribute."""
    return html.escape(printable(text), quote=True)


#: Where a spreadsheet cell starts a formula or a command (OWASP's CSV injection list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: object) -> str:
    """A text cell (a key, a name, a note; never a number) made `printable`, with a leading `'` where a
    spreadsheet would read it as a formula: `=HYPERLINK(…)` shows as written."""
    text = printable(text)
    return "'" + text if text.startswith(_FORMULA_START) else text
