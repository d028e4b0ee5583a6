"""Issue 24: TorchScript code is parsed within bounds: its size is known before its syntax tree is built,
no tree is kept, and each file is parsed once however many objects name its classes.

The archives are made by hand (a data.pkl of `__torch__` objects and the code beside it), without torch;
each case runs in a child process under test_hardening's rlimits, its CPU time and peak memory read back.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from test_hardening import PROTO, accepted, g, isolated, refused, s, tensor

LINEAR = "__torch__.torch.nn.modules.linear"
LINEAR_CODE = b'class Linear(Module):\n  __parameters__ = ["weight", ]\n  __buffers__ = []\n  weight : Tensor\n'


def script_object(qualified: str, state: bytes) -> bytes:
    """`__torch__.<module>.<Class>` made empty by NEWOBJ, its state set by BUILD, as torch.jit.save writes it."""
    module, _, name = qualified.rpartition(".")
    return g(module, name) + b")\x81" + state + b"b"


def script_archive(path: Path, body: bytes, code: dict[str, bytes]) -> Path:
    """A TorchScript archive: data.pkl, one 3×3 float storage, and class files under code/ (compressed, as
    torch writes them: a few MB of repetitive code is a few KB of archive)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", PROTO + body + b".")
        archive.writestr("archive/data/0", bytes(36))
        archive.writestr("archive/version", "3\n")
        for name, text in code.items():
            archive.writestr(f"archive/code/{name}", text)
    return path


def linear_net(path: Path, linear_code: bytes, children: int = 1) -> Path:
    """A root module holding `children` Linear modules; the first has a 3×3 weight, the others no state."""
    items = b"".join(s(f"m{index}") + script_object(f"{LINEAR}.Linear", b"}" + (
        s("weight") + tensor(9, (3, 3)) + b"s" if index == 0 else b"")) for index in range(children))
    return script_archive(path, script_object("__torch__.Net", b"}(" + items + b"u"),
                          {"__torch__/torch/nn/modules/linear.py": linear_code})


def test_a_class_file_of_millions_of_names_is_refused_before_it_is_parsed(tmp_path):
    """2 MB of `_x = [a, a, …]`: its tree would take ~1.5 GB, and every file's tree was kept."""
    code = LINEAR_CODE + b"  _x = [" + b"a," * (1 << 20) + b"]\n"
    path = linear_net(tmp_path / "names.pt", code)
    assert path.stat().st_size < 100_000
    outcome = isolated(tmp_path, "inspect", path)
    refused(outcome, path, "code/__torch__/torch/nn/modules/linear.py", "refused")
    assert outcome.peak_mb < 128, f"{outcome.peak_mb:.0f} MB: counting took more than the text"


def test_many_objects_of_one_class_parse_its_file_once(tmp_path):
    """20,000 modules of one class against a 60,000-statement code file: a walk of the file per object
    was 1.2 billion steps; parsed once, it is a look-up per object."""
    code = b"a\n" * 60_000 + LINEAR_CODE  # the class last: each walk passes every statement
    path = linear_net(tmp_path / "many.pt", code, children=20_000)
    outcome = isolated(tmp_path, "inspect", path, "-f", "json")
    assert accepted(outcome)["layers"][0]["param"] == "m0.weight"  # within test_hardening's seconds


def test_a_class_file_within_the_budget_is_still_read(tmp_path):
    """The bound is on the file's size, not on what is in it: the class's __parameters__ are still read."""
    path = linear_net(tmp_path / "net.pt", LINEAR_CODE + b"a\n" * 1000)
    layers = accepted(isolated(tmp_path, "inspect", path, "-f", "json"))["layers"]
    assert [(layer["param"], layer["shape"]) for layer in layers] == [("m0.weight", [3, 3])]
