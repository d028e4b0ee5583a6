"""Safe to point at any file, part two: nothing the user had is lost, and what a file holds is shown, never
acted on. Every case is an attack from issue 13, built here; the answer is the project's usual one —
exit 2 and one line on stderr naming the source and the problem — or a report whose text is escaped.
"""

from __future__ import annotations

import html
import json
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO
from test_hardening import (
    _entry,
    _safetensors,
    cli,
    mapping,
    refused,
    tensor,
    torch_zip,
)

SPEC = REPO / "sample_models" / "lenet5.yaml"
#: What no text output may hold raw: C0/C1 controls (newline aside), DEL, bidi controls, lone surrogates.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
HOSTILE_KEYS = ["\x1b[31mred.weight", "[/]x.weight", "[link=http://e.x]a[/link].weight", "b\u202eidi.weight",
                "c1\x9b31m.weight"]


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _checkpoint(path: Path) -> Path:
    """A torch.save state_dict with one 4×3 float32 weight, written without torch."""
    return torch_zip(path, mapping(**{"fc.weight": tensor(12, (4, 3))}), storage=bytes(48))


def _hostile_safetensors(path: Path, keys=HOSTILE_KEYS) -> Path:
    header = {key: _entry("F32", [4, 3], [48 * i, 48 * (i + 1)]) for i, key in enumerate(keys)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(48 * len(keys)))
    return path


# --- 1. nothing lost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same name", "relative", "hard link", "symlink"])
def test_output_naming_the_input_is_refused(tmp_path, monkeypatch, how):
    spec = _copy(SPEC, tmp_path / "model.yaml")
    before = spec.read_bytes()
    output = {"same name": spec, "relative": Path("./sub/../model.yaml"), "hard link": tmp_path / "hard.yaml",
              "symlink": tmp_path / "link.yaml"}[how]
    (tmp_path / "sub").mkdir()
    if how == "hard link":
        os.link(spec, output)
    if how == "symlink":
        output.symlink_to(spec)
    monkeypatch.chdir(tmp_path)
    refused(cli("inspect", spec, "-o", output), output, "input")
    assert spec.read_bytes() == before


def test_check_update_never_replaces_the_checkpoint(tmp_path):
    model = _checkpoint(tmp_path / "model.pth")
    before = model.read_bytes()
    refused(cli("check", model, "--update", "--baseline", model, "--no-config"), model, "input")
    assert model.read_bytes() == before
    other = _checkpoint(tmp_path / "other.pth")  # not the source, but not a baseline either
    refused(cli("check", model, "--update", "--baseline", other, "--no-config"), other, "not a fancli baseline")
    assert other.read_bytes() == before
    baseline = tmp_path / "fancli.lock.json"  # a previous baseline is what --update is for
    for _ in range(2):
        assert cli("check", model, "--update", "--baseline", baseline, "--no-config").code == 0
    assert json.loads(baseline.read_text())["layers"]


def test_check_output_naming_the_baseline_is_refused(tmp_path):
    model = _checkpoint(tmp_path / "model.pth")
    baseline = tmp_path / "lock.json"
    assert cli("check", model, "--update", "--baseline", baseline, "--no-config").code == 0
    before = baseline.read_bytes()
    refused(cli("check", model, "--baseline", baseline, "--no-config", "-o", baseline), baseline, "input")
    assert baseline.read_bytes() == before


def _device(tmp_path: Path) -> Path:
    """A character device of our own (a copy of /dev/null's node): the old code replaced the device it was
    given with a file, and a test must not destroy the real /dev/null when run against it."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError):
        pytest.skip("creating a device node needs root")
    return node


def test_output_onto_a_device_or_fifo_is_refused(tmp_path):
    device = _device(tmp_path)
    refused(cli("inspect", SPEC, "-o", device), device, "not a regular file")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(cli("inspect", SPEC, "-f", "json", "-o", fifo), fifo, "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_through_a_symlink_replaces_its_target(tmp_path):
    (tmp_path / "reports").mkdir()
    target = tmp_path / "reports" / "report.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    result = cli("inspect", SPEC, "-f", "json", "-o", link)
    assert result.code == 0, result.err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["layers"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["latest.json", "report.json", "reports"]  # no temp left


def test_dash_and_dev_stdout_print_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old code wrote a file named "-" here
    for name in ("-", "/dev/stdout"):
        result = cli("inspect", SPEC, "-f", "json", "-o", name)
        assert result.code == 0 and json.loads(result.out)["layers"], result.err
    assert list(tmp_path.iterdir()) == []


def test_plot_goes_through_the_checked_writer(tmp_path):
    spec = _copy(SPEC, tmp_path / "net.yaml")
    before = spec.read_bytes()
    refused(cli("propagate", spec, "--draws", "1", "--plot", spec), spec, "input")
    assert spec.read_bytes() == before
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    refused(cli("propagate", spec, "--draws", "1", "--plot", fifo), fifo, "not a regular file")
    pytest.importorskip("matplotlib")
    target = tmp_path / "chart.png"
    target.write_bytes(b"old")
    link = tmp_path / "latest.png"
    link.symlink_to(target)
    result = cli("propagate", spec, "--draws", "1", "--batch", "8", "--plot", link)
    assert result.code == 0, result.err
    assert link.is_symlink() and target.read_bytes().startswith(b"\x89PNG")


# --- 2. terminal injection -----------------------------------------------------------------------------


def test_hostile_keys_are_shown_escaped_in_every_text_format(tmp_path):
    source = _hostile_safetensors(tmp_path / "keys.safetensors")
    for args in (["-f", "table"], ["-f", "markdown"], ["--all"], ["-o", tmp_path / "out.txt"]):
        result = cli("inspect", source, *args)
        assert result.code == 0, result.err
        text = result.out or (tmp_path / "out.txt").read_text()
        assert not UNSAFE.search(text), repr(UNSAFE.search(text))
        text = html.unescape(text) if "markdown" in args else text  # Markdown writes `[` as `&#91;`
        assert "\\x1b[31mred.weight" in text and "b\\u202eidi.weight" in text and "c1\\x9b31m.weight" in text
    compared = cli("compare", source)
    assert compared.code == 0 and not UNSAFE.search(compared.out)
    document = cli("inspect", source, "-f", "json")
    assert document.code == 0 and not UNSAFE.search(document.out)
    assert [layer["param"] for layer in json.loads(document.out)["layers"]] == HOSTILE_KEYS  # lossless


def test_check_shows_hostile_keys_escaped(tmp_path):
    baseline = tmp_path / "lock.json"
    assert cli("check", _hostile_safetensors(tmp_path / "a.safetensors"), "--update", "--baseline", baseline,
               "--no-config").code == 0
    plain = _hostile_safetensors(tmp_path / "b.safetensors", ["fc.weight"])
    for fmt in ("table", "markdown", "json"):
        result = cli("check", plain, "--baseline", baseline, "--no-config", "-f", fmt)
        assert result.code == 1 and "removed" in result.out
        assert not UNSAFE.search(result.out), repr(UNSAFE.search(result.out))


def _on_a_terminal(*args: object) -> tuple[int, str]:
    """Run fancli with a pseudo-terminal as stdout (rich then draws its table and parses markup)."""
    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="240", LINES="50", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    child = subprocess.Popen([sys.executable, "-m", "fancli", *map(str, args)], stdout=secondary,
                             stderr=subprocess.PIPE, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, err = child.communicate(timeout=60)
    os.close(primary)
    return child.returncode, b"".join(chunks).decode("utf-8", "replace") + err.decode()


def test_markup_in_keys_is_not_parsed_on_a_terminal(tmp_path):
    code, text = _on_a_terminal("inspect", _hostile_safetensors(tmp_path / "keys.safetensors"))
    assert code == 0, text
    assert "[/]x.weight" in text and "[link=http://e.x]a[/link].weight" in text
    assert "\x1b]8;" not in text  # no OSC 8 hyperlink
    assert "\x1b[31mred" not in text and "\\x1b[31mred.weight" in text
    assert "\u202e" not in text and "\x9b" not in text


def test_error_lines_escape_file_names_and_keys(tmp_path):
    named = tmp_path / "x\x1b]0;pwned\x07\u202e.yaml"
    named.write_text("layers: [{type: linear\n")
    line = refused(cli("inspect", named), "x\\x1b]0;pwned\\x07\\u202e.yaml")
    assert not UNSAFE.search(line)
    bad_key = tmp_path / "bad.safetensors"
    bad_key.write_bytes(_safetensors({"\x1b[2J\x1b[31m.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2]}},
                                     bytes(2)))
    line = refused(cli("inspect", bad_key), bad_key)
    assert not UNSAFE.search(line) and "\\x1b[2J" in line


# --- 3. exit 2, not 3 ----------------------------------------------------------------------------------


def test_nested_tensors_are_one_line(tmp_path):
    """Nested tensors stay refused (no single shape to take fans from); sparse ones are now read by their
    dense shape (tests/test_tensor_types.py), which this test refused before for sparse COO and CSR too."""
    import warnings

    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)])
    path = tmp_path / "nested.pt"
    torch.save({"fc.weight": value}, path)
    refused(cli("inspect", path), path, "fc.weight", "dense", "nested")


def _index(folder: Path, weight_map: dict) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    return path


def test_a_lone_surrogate_key_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(_safetensors(b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)))
    refused(cli("inspect", path), path, "surrogate")


def test_a_nul_in_a_shard_name_is_refused(tmp_path):
    index = _index(tmp_path, {"fc.weight": "a\u0000.safetensors"})
    refused(cli("inspect", index), index, "shard")


@pytest.mark.parametrize("where", ["header", "index", "spec", "shape 10**400"])
def test_huge_integers_are_one_line(tmp_path, where):
    digits = "1" * 5000
    if where == "header":
        path = tmp_path / "h.safetensors"
        path.write_bytes(_safetensors(f'{{"a": {{"dtype": "F32", "shape": [{digits}], "data_offsets": [0, 4]}}}}'
                                      .encode(), bytes(4)))
    elif where == "index":
        path = tmp_path / "model.safetensors.index.json"
        path.write_text(f'{{"weight_map": {{"a": "x.safetensors"}}, "metadata": {{"total_size": {digits}}}}}')
    elif where == "spec":
        path = tmp_path / "net.yaml"
        path.write_text(f"layers:\n  - {{type: linear, in_features: {digits}, out_features: 3}}\n")
    else:
        path = tmp_path / "big.safetensors"
        path.write_bytes(_safetensors({"a": {"dtype": "F32", "shape": [10**400], "data_offsets": [0, 4]}}, bytes(4)))
    refused(cli("inspect", path, "-f", "json"), path)


def test_overrides_that_are_not_a_list(tmp_path, monkeypatch):
    (tmp_path / SPEC.name).write_bytes(SPEC.read_bytes())  # a config's source lies in its folder tree
    (tmp_path / "fancli.yaml").write_text(f"source: {SPEC.name}\noverrides: 5\n")
    monkeypatch.chdir(tmp_path)
    refused(cli("inspect"), "fancli.yaml", "overrides")


@pytest.mark.parametrize("option,value", [("--tolerance", "-1"), ("--tolerance", "nan"), ("--sigmas", "0")])
def test_check_limits_out_of_range(tmp_path, option, value):
    model = _checkpoint(tmp_path / "model.pth")
    baseline = tmp_path / "lock.json"
    assert cli("check", model, "--update", "--baseline", baseline, "--no-config").code == 0
    refused(cli("check", model, "--baseline", baseline, "--no-config", option, value), option)


def test_deeply_nested_kwargs_are_one_line():
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    refused(cli("inspect", "fancli.no_such_module:factory", "--kwargs", deep), "--kwargs", "nested")


def _shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux /dev/full")
def test_a_full_stdout_is_one_line():
    done = _shell(f"'{sys.executable}' -m fancli inspect '{SPEC}' > /dev/full")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("fancli: error: ") and "stdout" in done.stderr


def test_a_closed_stdout_is_one_line():
    done = _shell(f"'{sys.executable}' -m fancli inspect '{SPEC}' >&-")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("fancli: error: ") and "stdout" in done.stderr


def _big_endian_checkpoint(path: Path, order: bytes, values: list[float]) -> Path:
    """What torch.save writes on a big-endian machine: storages big-endian, and a `byteorder` record."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + mapping(**{"fc.weight": tensor(len(values), (4, 3))})
                         + b".")
        archive.writestr("archive/data/0", struct.pack(f">{len(values)}f", *values))
        archive.writestr("archive/byteorder", order)
        archive.writestr("archive/version", "3\n")
    return path


def test_a_big_endian_checkpoint_is_read_as_big_endian(tmp_path):
    values = [0.049 * (-1) ** i for i in range(12)]
    path = _big_endian_checkpoint(tmp_path / "big.pth", b"big", values)
    result = cli("inspect", path, "--stats", "-f", "json")
    assert result.code == 0, result.err
    observed = json.loads(result.out)["layers"][0]["observed"]
    assert observed["max"] == pytest.approx(0.049) and observed["std"] == pytest.approx(0.049 * (12 / 11) ** 0.5)
    odd = _big_endian_checkpoint(tmp_path / "odd.pth", b"middle", values)
    refused(cli("inspect", odd, "--stats"), odd, "byteorder")


def test_a_baseline_of_an_unknown_schema_is_refused(tmp_path):
    model = _checkpoint(tmp_path / "model.pth")
    baseline = tmp_path / "lock.json"
    assert cli("check", model, "--update", "--baseline", baseline, "--no-config").code == 0
    document = json.loads(baseline.read_text())
    document["fancli"] = "99.0"
    baseline.write_text(json.dumps(document))
    refused(cli("check", model, "--baseline", baseline, "--no-config"), baseline, "99.0")


def test_a_shard_linked_outside_its_folder_is_refused_without_leaking(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:SECRET:/root:/bin/bash\n")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "shard.safetensors").symlink_to(secret)
    index = _index(folder, {"fc.weight": "shard.safetensors"})
    line = refused(cli("inspect", index), index, "outside")
    assert "SECRET" not in line and "root:x" not in line
    assert str(int.from_bytes(b"root:x:0", "little")) not in line  # its first 8 bytes, read as a length
