"""Issue 17, items 5 and 9: tables that never lose a digit at any width, totals in every format, CSV,
and the JSON Schema with the version key in every JSON output."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys

import pytest
from helpers import REPO, run
from schema_check import errors

import fancli
from fancli.layer import Layer, Model
from fancli.renderers import render_text
from fancli.report import analyze

SAMPLES = REPO / "sample_models"
SCHEMA = json.loads((REPO / "docs" / "schema" / "report.schema.json").read_text())
WIDTHS = (60, 80, 100, 200)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def shown(value) -> str:
    """A number as the table prints it: integers whole, floats to 4 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def expected_numbers(document: dict) -> list[str]:
    """Every number of the JSON's layers, in the table's column order, as the table prints them."""
    tokens = []
    for layer in document["layers"]:
        if len(layer["shape"]) < 2:
            continue  # folded into a note without --all
        tokens += ["×".join(map(str, layer["shape"])), f"{layer['params']:,}"]
        for fan in ("fan_in", "fan_out"):  # `torch → effective` where they differ
            effective = layer.get(f"effective_{fan}")
            tokens += [shown(v) for v in (layer[fan], effective if effective != layer[fan] else None) if v is not None]
        tokens += [shown(layer["gain"])] if layer["gain"] is not None else []
        values = layer["modes"].values() if "modes" in layer else [layer]
        stds = [v["std"] for v in values]
        if "modes" in layer:
            tokens += [shown(v) for v in stds if v is not None]
            if None not in stds and stds[0]:
                tokens += [shown(s / stds[0]) for s in stds[1:]]
        else:
            tokens += [shown(v) for v in (layer["std"], layer["bound"]) if v is not None]
    summary = document["summary"]
    return tokens + [f"{summary['tensors']:,}", f"{summary['parameters']:,}", f"{summary['bytes']:,}"]


def assert_every_number(text: str, document: dict) -> None:
    """No cell cut, and every number in order, each a whole token (not the head of a longer number)."""
    assert "…" not in text
    position = 0
    for token in expected_numbers(document):
        found = re.compile(rf"(?<![\d.,×]){re.escape(token)}(?![\d×]|[.,]\d)").search(text, position)
        assert found, f"{token!r} missing after {text[position:position + 200]!r}"
        position = found.end()


CASES = [("inspect", "mobilenet_block.yaml"), ("inspect", "transformer_block.yaml"),
         ("inspect", "resnet_bottleneck.yaml"), ("compare", "resnet_bottleneck.yaml"), ("compare", "vgg_stack.yaml"),
         ("inspect", "lstm_tagger.yaml"), ("inspect", "dcgan_generator.yaml")]


@pytest.mark.parametrize("width", (40, *WIDTHS))
@pytest.mark.parametrize("command, sample", CASES)
def test_table_keeps_every_number_at_any_width(command, sample, width):
    from rich.console import Console

    from fancli.renderers.table import print_rich

    report = getattr(fancli, command)(str(SAMPLES / sample))
    document = json.loads(render_text(report, "json"))
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    print_rich(report.as_read("table"), console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    assert_every_number(text, document)


def in_terminal(args: list[str], columns: int) -> str:
    """fancli's output in a pseudo-terminal of `columns` columns (TIOCSWINSZ; no COLUMNS in the env), so
    the CLI's own terminal detection picks the rich table and its width."""
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: fd 1 is the terminal (sys.stdout may be pytest's capture); never returns
        try:
            fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
            env["TERM"] = "xterm-256color"
            os.execve(sys.executable, [sys.executable, "-m", "fancli", *args], env)
        finally:
            os._exit(127)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    os.close(fd)
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("width, command, sample", [(60, "inspect", "transformer_block.yaml"),
                                                    (80, "inspect", "mobilenet_block.yaml"),
                                                    (100, "compare", "resnet_bottleneck.yaml"),
                                                    (200, "compare", "vgg_stack.yaml")])
def test_cli_in_a_terminal_keeps_every_number(width, command, sample):
    text = in_terminal([command, str(SAMPLES / sample)], width)
    document = json.loads(run(command, SAMPLES / sample, "-f", "json").out)
    assert "┃" in text or "  std" in text  # the rich table or its records, not the piped grid
    assert max(len(line) for line in text.splitlines()) <= width
    assert_every_number(text, document)


def test_wide_terminal_keeps_the_full_table():
    from rich.console import Console

    from fancli.renderers.table import print_rich

    console = Console(width=200, file=io.StringIO(), color_system=None)
    print_rich(fancli.inspect(str(SAMPLES / "mobilenet_block.yaml")).as_read("table"), console)
    header = next(line for line in console.file.getvalue().splitlines() if line.startswith("┃"))
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "name", "kind", "shape", "params", "fan_in", "fan_out", "gain", "std", "bound", "notes"]


def tied_report():
    layers = (Layer("emb", "emb.weight", "embedding", (1000, 64), dtype="bfloat16", aliases=("head.weight",)),
              Layer("fc", "fc.weight", "linear", (10, 64), dtype="float32"),
              Layer("fc", "fc.bias", "bias", (10,), dtype="float32"))
    return analyze(Model("tied.safetensors", "safetensors", layers))


def test_totals_count_a_tied_tensor_once_in_every_format():
    report = tied_report()
    summary = json.loads(render_text(report, "json"))["summary"]
    assert summary == {"tensors": 3, "parameters": 64000 + 640 + 10, "tied_keys": 1, "bytes": 128000 + 2600,
                       "bytes_by_dtype": {"bfloat16": 128000, "float32": 2600}, "dtype_assumed": False, "buffers": 0}
    line = "total: 3 tensors · 64,650 parameters (1 tied key counted once) · 130,600 bytes: bfloat16 128,000, float32 2,600"
    folded = report.as_read("table")
    assert line in render_text(folded, "table") and line in render_text(folded, "markdown")


def test_specs_say_the_dtype_is_assumed():
    document = json.loads(run("inspect", SAMPLES / "lenet5.yaml", "-f", "json").out)
    assert document["summary"]["dtype_assumed"] is True
    assert document["summary"]["parameters"] == sum(layer["params"] for layer in document["layers"])
    assert "float32 (assumed: the source gives no dtype)" in run("inspect", SAMPLES / "lenet5.yaml").out


@pytest.mark.parametrize("command, sample", CASES)
def test_json_outputs_match_the_published_schema(command, sample):
    document = json.loads(render_text(getattr(fancli, command)(str(SAMPLES / sample)), "json"))
    assert errors(document, SCHEMA) == []


def test_schema_check_finds_what_is_wrong():
    document = json.loads(render_text(fancli.inspect(str(SAMPLES / "lenet5.yaml")), "json"))
    del document["summary"]
    document["layers"][0]["fan_in"] = "25"
    assert sorted(errors(document, SCHEMA)) == ["$.layers[0].fan_in: '25' is not number/null", "$: missing 'summary'"]


def test_csv_has_one_row_per_tensor_with_the_json_fields():
    path = SAMPLES / "resnet_bottleneck.yaml"
    rows = list(csv.DictReader(io.StringIO(run("compare", path, "-f", "csv").out)))
    layers = json.loads(run("compare", path, "-f", "json").out)["layers"]
    assert [row["param"] for row in rows] == [layer["param"] for layer in layers]  # every tensor, 1-D too
    for row, layer in zip(rows, layers):
        assert row["shape"] == "x".join(map(str, layer["shape"])) and int(row["params"]) == layer["params"]
        for mode, values in layer["modes"].items():
            assert row[f"std_{mode}"] == ("" if values["std"] is None else repr(values["std"]))
    header = list(rows[0])
    assert header.index("effective_fan_out") == header.index("fan_out") + 2  # the JSON's order


def test_version_key_in_every_json_output():
    for args in (("gain", "gelu"), ("propagate", str(SAMPLES / "lenet5.yaml"), "--draws", "1"),
                 ("inspect", str(SAMPLES / "lenet5.yaml")), ("compare", str(SAMPLES / "lenet5.yaml"))):
        document = json.loads(run(*args, "-f", "json").out)
        assert document["fancli"] == "1.0" and document["command"] == args[0]


def test_check_has_no_csv():
    assert run("check", "-f", "csv").code == 2
