"""JSON written in pieces is one valid document whatever the number of rows, full batches included."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, run

import fancli
from fancli.renderers import json_out


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 6, 7])
def test_an_array_in_batches_is_valid_json_for_any_count(monkeypatch, count):
    monkeypatch.setattr(json_out, "LINES_PER_CHUNK", 3)
    items = [{"i": i} for i in range(count)]
    text = '{"a": 1' + "".join(json_out.json_array("x", (f"    {json.dumps(item)}" for item in items))) + "\n}"
    assert json.loads(text) == {"a": 1, "x": items}


@pytest.mark.parametrize("batch", [1, 2, 3, 27, 28])
def test_a_report_in_batches_is_the_report_in_one_piece(monkeypatch, batch):
    """27 layers and 27 groups: batches of 1, 3 and 27 end full, 2 and 28 do not."""
    report = fancli.inspect(str(REPO / "sample_models" / "tinynet_state_dict.pt"))
    whole = json.loads("".join(json_out.json_chunks(report)))
    assert len(whole["layers"]) == len(whole["groups"]) == 27
    monkeypatch.setattr(json_out, "LINES_PER_CHUNK", batch)
    assert json.loads("".join(json_out.json_chunks(report))) == whole


def test_a_reader_that_goes_away_after_the_first_piece_ends_the_run_quietly(tmp_path):
    """`fancli inspect big.safetensors -f json | head -1`: the pipe breaks between pieces; exit 0, nothing
    on stderr (click would end a broken pipe inside a command with 1)."""
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "many.safetensors"
    save_file({f"layers.{i}.weight": np.zeros((2, 2), dtype=np.float32) for i in range(3000)}, str(path))
    child = subprocess.Popen([sys.executable, "-m", "fancli", "inspect", str(path), "--format", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline() == b"{\n"
    child.stdout.close()
    assert child.wait(timeout=60) == 0 and child.stderr.read() == b""


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_stdout_whose_encoding_is_ascii_still_gets_the_report(fmt):
    """Found in review: written with `sys.stdout.write`, a report holding a character past ASCII (the table's `·`)
    ended with exit 3 where the locale's stdout encodes ASCII alone; click's stdout writes it as UTF-8."""
    import os
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-m", "fancli", "inspect", "--no-config", "-f", fmt,
                            str(REPO / "sample_models" / "resnet_bottleneck.yaml")], capture_output=True,
                           env=dict(os.environ, PYTHONIOENCODING="ascii", PYTHONPATH=str(REPO)), cwd=REPO)
    assert child.returncode == 0, child.stderr
    expected = fancli.render(fancli.inspect(str(REPO / "sample_models" / "resnet_bottleneck.yaml")).as_read(fmt), fmt)
    assert child.stdout.decode("utf-8") == expected
    assert fmt == "json" or not child.stdout.isascii()


def test_rows_each_of_its_own_kind_are_written_as_they_are_made(tmp_path):
    """Found in review: with --stats every row is its own kind, and the lines by kind kept two strings a row
    until the last was written (a 20,000-row report: 72 MiB against 51). Such rows are written row by row:
    no more memory than that."""
    import tracemalloc

    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "many.safetensors"
    save_file({f"layers.{i}.weight": np.full((2, 2), i, dtype=np.float32) for i in range(3000)}, str(path))
    report = fancli.inspect(str(path), stats=True)
    assert report.alike is not None and len(report.alike.firsts) == len(report.rows)

    def peak(chunks) -> int:
        tracemalloc.start()
        try:
            for _ in chunks:
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    by_kind = peak(json_out._layer_chunks(report))
    by_row = peak(json_out._joined(json_out._row_lines(report)))
    assert by_kind <= 1.2 * by_row


def test_lines_by_kind_are_utf8_bytes_of_the_lines_row_by_row(tmp_path, monkeypatch):
    """The lines by kind are built as UTF-8 bytes (a `×` in a note would make text chunks slow to write): they
    decode to the lines written row by row, names past ASCII and ones json_safe escapes (a bidi override, a
    C1 control) included, for full and partial chunks; a real stdout gets those bytes, the -o file too, and
    a stdout redirected to a StringIO (no binary buffer) the same text."""
    import contextlib
    import io
    import os
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import save_file

    import fancli.cli.commands
    from fancli.outputs import as_text

    names = ["blöck", "b\u202eidi", "c\x85one", "plain"]
    path = tmp_path / "named.safetensors"
    save_file({f"{name}.{i}.{leaf}": np.zeros((3, 2) if leaf == "weight" else (3,), dtype=np.float32)
               for name in names for i in range(7) for leaf in ("weight", "bias")}, str(path))
    report = fancli.inspect(str(path))
    assert report.alike is not None and 2 * len(report.alike.firsts) <= len(report.rows)
    for batch in (1000, 5):
        monkeypatch.setattr(json_out, "LINES_PER_CHUNK", batch)
        chunks = list(json_out._layer_chunks(report))
        assert all(isinstance(chunk, bytes) for chunk in chunks)
        assert [chunk.decode() for chunk in chunks] == list(json_out._joined(json_out._row_lines(report)))
    text = as_text("inspect", "json", report)
    assert "bl\u00f6ck" in text and "\\u202e" in text and "\\u0085" in text and json.loads(text)["layers"]
    child = subprocess.run([sys.executable, "-m", "fancli", "inspect", str(path), "--format", "json", "--no-config"],
                           capture_output=True, cwd=tmp_path)
    assert child.returncode == 0 and child.stdout.decode("utf-8") == text, child.stderr
    written = tmp_path / "out.json"
    assert run("inspect", path, "-f", "json", "-o", written, "--no-config").code == 0
    assert written.read_bytes().decode("utf-8") == text
    assert run("inspect", path, "--format", "json", "--no-config").out == text
    # found in review: a stdout that encodes other than UTF-8 gets the whole document in its own encoding
    latin = subprocess.run([sys.executable, "-m", "fancli", "inspect", str(path), "--format", "json", "--no-config"],
                           capture_output=True, cwd=tmp_path, env=dict(os.environ, PYTHONIOENCODING="latin-1"))
    assert latin.returncode == 0 and latin.stdout.decode("latin-1") == text, latin.stderr
    for encoding in ("latin-1", "utf-16", "utf-8"):
        buffer = io.BytesIO()
        wrapper = io.TextIOWrapper(buffer, encoding=encoding)
        with contextlib.redirect_stdout(wrapper), pytest.raises(SystemExit) as ended:
            fancli.cli.commands.main(["inspect", str(path), "-f", "json", "--no-config"])
        assert ended.value.code == 0
        wrapper.flush()
        assert buffer.getvalue().decode(encoding) == text, encoding
