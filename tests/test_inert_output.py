"""Output that cannot act (issue 24): keys that are Markdown or HTML, spreadsheet formulas or format
characters, in every format of every command that prints them. The oracles are the readers: markdown-it-py
(CommonMark with GFM's tables and strikethrough), Python's HTML parser, its csv module, unicodedata.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from markdown_it import MarkdownIt

import fancli
from fancli.outputs import formats

safetensors_numpy = pytest.importorskip("safetensors.numpy")

#: Keys a page renders as elements if written raw: HTML, a comment, a link, emphasis, strikethrough,
#: GitHub's math, a backtick run (a code span's end), a pipe, a backslash escape, an entity, bidi controls.
MARKUP_KEYS = ["<img src=https://e.x/a.png>.weight", "[approve](https://e.x).weight", "<details>.weight",
               "x<!-- c -->y.weight", "**bold**.weight", "_em_.weight", "~~gone~~.weight", "$x^2$.weight",
               "a``b.weight", "`tick`.weight", "a|b.weight", "\\*c.weight", "&lt;amp.weight",
               "ar\u061cb\u200fic.weight"]
#: Keys a spreadsheet runs as formulas (OWASP's examples), and one that must stay as written.
FORMULA_KEYS = ['=HYPERLINK("https://e.x","x").weight', "+cmd|' /C calc'!A0.weight", "-2+3.weight",
                "@SUM(1+1).weight", "plain.weight"]
#: What fancli itself writes in Markdown: headings, paragraphs, lists, tables, code spans for check's keys,
#: bold titles and verdicts, italic notes. Anything else (HTML, links, images, strikethrough, code blocks,
#: quotes, rules) can only have come from a key.
OWN_MARKDOWN = {"paragraph", "inline", "heading", "bullet_list", "list_item", "table", "thead", "tbody", "tr",
                "th", "td", "text", "softbreak", "hardbreak", "code_inline", "strong", "em"}
OWN_HTML = {"div", "strong", "table", "thead", "tbody", "tr", "th", "td", "small"}


def _save(path: Path, keys: list[str], rows: int = 8, nan: tuple[str, ...] = (), mean: float = -0.5) -> Path:
    rng = np.random.default_rng(rows)
    tensors = {key: (rng.standard_normal((rows, 6)) * 0.05 + mean).astype(np.float32) for key in keys}
    for key in nan:
        tensors[key][0, 0] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(tensors, str(path))
    return path


def _printed(key: str) -> str:
    """A key as fancli prints it: format characters shown as escapes (their own test is below)."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in key)


def _markdown_blocks(text: str) -> tuple[set[str], list[str]]:
    """The element types CommonMark + GFM tables make of `text`, and the text each inline shows."""
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    kinds, shown = set(), []
    for token in tokens:
        kinds.add(token.type.removesuffix("_open").removesuffix("_close"))
        for child in token.children or ():
            kinds.add(child.type.removesuffix("_open").removesuffix("_close"))
        if token.type == "inline":
            shown.append("".join(child.content for child in token.children))
    return kinds, shown


def _assert_inert(text: str, keys: list[str]) -> None:
    kinds, shown = _markdown_blocks(text)
    assert kinds <= OWN_MARKDOWN, (kinds - OWN_MARKDOWN, text)
    for key in map(_printed, keys):  # each key reads as written: no part of it became markup
        assert any(key in line for line in shown), (key, text)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints holding the markup keys: `a`, `b` (reshaped, two keys with a NaN), three steps of a run
    whose file names are markup too, and a baseline of `a`."""
    root = tmp_path_factory.mktemp("inert")
    made = {"a": _save(root / "a.safetensors", MARKUP_KEYS),
            "b": _save(root / "b.safetensors", MARKUP_KEYS, rows=12, nan=("a``b.weight", "`tick`.weight"))}
    made["run"] = [_save(root / name / "model.safetensors", MARKUP_KEYS, rows=rows)
                   for name, rows in (("[x](https:e.x)", 8), ("*b*", 10), ("<u>c", 12))]
    made["baseline"] = root / "lock.json"
    assert run("check", made["a"], "--update", "--baseline", made["baseline"], "--no-config").code == 0
    return made


@pytest.mark.parametrize("command", ["inspect", "inspect --all --stats", "compare"])
def test_markdown_of_inspect_and_compare_shows_keys_as_written(files, command):
    result = run(*command.split(), files["a"], "-f", "markdown")
    assert result.code == 0, result.err
    _assert_inert(result.out, MARKUP_KEYS)


def test_markdown_of_diff_shows_keys_as_written(files):
    result = run("diff", files["a"], files["b"], "-f", "markdown")
    assert result.code == 1, result.err  # reshaped: the gate fails, and its verdict is Markdown too
    _assert_inert(result.out, MARKUP_KEYS)


@pytest.mark.parametrize("name", ["# a", "+ a", "1) a", "    a", "> a"])
def test_a_line_that_starts_with_a_file_name_stays_a_paragraph(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    first = _save(Path(f"{name}.safetensors"), ["fc.weight"])
    result = run("diff", first, _save(tmp_path / "b.safetensors", ["fc.weight"]), "-f", "markdown")
    assert result.code == 0, result.err
    tokens = MarkdownIt("commonmark").enable("table").parse(result.out)
    assert [t.type for t in tokens[:5]] == ["heading_open", "inline", "heading_close", "paragraph_open", "inline"]
    assert "".join(child.content for child in tokens[4].children).startswith(f"{name}.safetensors → ")


def test_markdown_of_a_trajectory_shows_keys_and_file_names_as_written(files):
    result = run("inspect", *files["run"], "--stats", "-f", "markdown")
    assert result.code == 0, result.err
    _assert_inert(result.out, MARKUP_KEYS + ["[x](https:e.x)", "*b*", "<u>c"])


@pytest.mark.parametrize("stats", [(), ("--stats",)])
def test_markdown_of_check_shows_keys_as_written(files, stats):
    result = run("check", files["b"], "--baseline", files["baseline"], "--no-config", *stats, "-f", "markdown")
    assert result.code == 1, result.err
    _assert_inert(result.out, MARKUP_KEYS)
    code = [token.content for block in MarkdownIt("commonmark").enable("table").parse(result.out)
            for token in block.children or () if token.type == "code_inline"]
    assert "a``b.weight" in code and "`tick`.weight" in code  # a backtick run does not close its span
    if stats:
        assert "NaN/Inf values" in result.out and "Observed weights" in result.out  # every section was there


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.ignored: list[bool] = []  # per open element: inside one that MathJax leaves alone

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        classes = (dict(attrs).get("class") or "").split()
        self.ignored.append(bool(self.ignored and self.ignored[-1]) or "mathjax_ignore" in classes)

    def handle_endtag(self, tag: str) -> None:
        self.ignored.pop()

    def handle_data(self, data: str) -> None:
        if "$" in data:
            assert self.ignored and self.ignored[-1], data  # Jupyter would typeset `$…$`
        self.text.append(data)


@pytest.mark.parametrize("page", ["jupyter", "cli"])
def test_html_shows_keys_as_written(files, page):
    parser = _Elements()
    parser.feed(fancli.inspect(files["a"])._repr_html_() if page == "jupyter"
                else run("inspect", files["a"], "-f", "html").out)
    assert parser.tags <= OWN_HTML, parser.tags - OWN_HTML
    for key in map(_printed, MARKUP_KEYS):
        assert key in parser.text


def _cells(text: str) -> tuple[list[str], list[float]]:
    """The text cells and the numbers, the header and empty fields left out."""
    texts, numbers = [], []
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        for cell in filter(None, row):
            try:
                numbers.append(float(cell))
            except ValueError:
                texts.append(cell)
    return texts, numbers


def test_csv_text_cells_are_never_formulas(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _save(tmp_path / "a.safetensors", FORMULA_KEYS)
    b = _save(Path("=b") / "model.safetensors", FORMULA_KEYS, mean=0.5)  # a source named like a formula
    c = _save(tmp_path / "c" / "model.safetensors", FORMULA_KEYS, rows=12)
    for args in (["inspect", a, "--stats"], ["compare", a], ["diff", a, b], ["inspect", a, b, "--stats"],
                 ["diff", a, c, "--allow-structural"]):
        result = run(*args, "-f", "csv")
        assert result.code == 0, result.err
        texts, numbers = _cells(result.out)
        assert not [cell for cell in texts if cell[0] in "=+-@\t\r"], result.out
        for key in FORMULA_KEYS:  # shown, with a `'` where a spreadsheet would run it
            assert (key if key == "plain.weight" else "'" + key) in texts, (key, result.out)
        if "--stats" in args or "diff" in args[:1] and c not in args:
            assert any(value < 0 for value in numbers)  # negative numbers (a mean, a change) stay numbers
    assert "'=b/model.safetensors" in _cells(run("inspect", a, b, "--stats", "-f", "csv").out)[0]


#: What a terminal or an encoder acts on instead of showing: controls, format characters (all bidi
#: controls among them), surrogates, line and paragraph separators; a newline is the output's own.
def _acting(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def test_every_format_character_is_escaped_in_every_format(tmp_path):
    keys = ["ar\u061cb.weight", "rl\u200fm.weight", "sh\u00ady.weight", "zw\u200bj.weight", "tag\U000e0041.weight"]
    source = _save(tmp_path / "cf.safetensors", keys)
    for fmt in formats("inspect"):
        result = run("inspect", source, "-f", fmt)
        assert result.code == 0, result.err
        assert not _acting(result.out), (fmt, _acting(result.out))
        assert "ar\\u061cb.weight" in result.out if fmt in ("table", "csv") else True
    document = json.loads(run("inspect", source, "-f", "json").out)
    assert sorted(layer["param"] for layer in document["layers"]) == sorted(keys)  # JSON keeps the exact key
    lines = run("inspect", source, "--no-config", "--format", "table").out
    assert "tag\\U000e0041.weight" in lines
