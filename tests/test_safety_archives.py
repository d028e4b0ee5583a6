"""TorchScript and torch.export archives from anywhere: read without running anything in them.

Each attack is built in code from a real archive, and first shown to be live against torch's own loader
(what fancli called before), then shown to do nothing through fancli without --trust.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from helpers import REPO, run  # noqa: E402
from torch import nn  # noqa: E402

from fancli.errors import SourceError  # noqa: E402
from fancli.loaders import load  # noqa: E402
from fancli.loaders.torch_zip import ZipMember
from fancli.loaders.torchscript_archive import NO_STRUCTURE  # noqa: E402

#: Scripted source must live in a file: TorchScript compiles from the source text.
EVIL_SOURCE = '''
from typing import Tuple
import torch
from torch import nn


class Stateful(nn.Module):
    """A module that restores its state with its own TorchScript code."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(5, 5))
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.target = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight
'''
#: What a hostile archive puts in __setstate__ (TorchScript drops dead code, so it writes through an attribute).
OVERWRITE = (b"    self.weight = torch.from_file(self.target, True, 5, dtype=0)\n"
             b"    _0 = torch.add_(self.weight, 1)\n")
LOOP = b"    while True:\n      self.training = True\n"


class Marker:
    """A pickle whose loading creates a directory: what a hostile pickle inside an archive would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, groups=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def rewrite(source: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip member by member; `change(name, data)` returns new bytes, or None to drop the member."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            data = change(info.filename, original.read(info))
            if data is not None:
                copy.writestr(info, data)
    return target


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("archives")
    torch.manual_seed(0)
    net = Small().eval()
    example = (torch.randn(1, 4, 9, 9),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates TorchScript
        torch.jit.save(torch.jit.script(net), folder / "script.pt")
        torch.jit.save(torch.jit.trace(net, example), folder / "traced.pt")
        torch.export.save(torch.export.export(net, example), folder / "net.pt2")
        (folder / "evil_module.py").write_text(EVIL_SOURCE)
        sys.path.insert(0, str(folder))
        try:
            import evil_module

            torch.jit.save(torch.jit.script(evil_module.Stateful(str(folder / "victim"))), folder / "stateful.pt")
        finally:
            sys.path.remove(str(folder))
            sys.modules.pop("evil_module", None)
    return {"script": folder / "script.pt", "traced": folder / "traced.pt", "export": folder / "net.pt2",
            "stateful": folder / "stateful.pt"}


def one_line_exit_2(result) -> str:
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err


# --- torch.export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("evil.pt2", "evil.pt"))
def test_an_export_archive_sample_inputs_pickle_never_runs(archives, tmp_path, name):
    marker = tmp_path / "ran"
    evil = rewrite(archives["export"], tmp_path / name, lambda member, data: (
        pickle.dumps(Marker(marker), protocol=2) if member.endswith("sample_inputs/model.pt") else data))
    with warnings.catch_warnings(), pytest.raises(Exception):  # torch then fails on the marker's result
        warnings.simplefilter("ignore")
        torch.export.load(evil)
    assert marker.exists(), "the fixture must be live: torch.export.load runs its pickle"
    marker.rmdir()
    result = run("inspect", evil, "--format", "json")
    assert result.code == 0, result.err
    assert [layer["param"] for layer in json.loads(result.out)["layers"]] == [
        "conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert not marker.exists()


def test_an_export_archive_pickled_weight_is_listed_not_unpickled(archives, tmp_path):
    """`use_pickle` weights (tensor subclasses) go through torch.load(weights_only=False) in torch."""
    marker = tmp_path / "ran"

    def change(member: str, data: bytes) -> bytes:
        if member.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["fc.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if member.endswith("data/weights/" + weight_file):
            return pickle.dumps(Marker(marker), protocol=2)
        return data

    with zipfile.ZipFile(archives["export"]) as archive:
        config = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("weights_config.json"))))
    weight_file = config["config"]["fc.weight"]["path_name"]
    evil = rewrite(archives["export"], tmp_path / "pickled.pt2", change)
    with warnings.catch_warnings(), pytest.raises(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(evil)
    assert marker.exists(), "the fixture must be live"
    marker.rmdir()
    layers = {layer.param: layer for layer in load(str(evil)).layers}
    assert layers["fc.weight"].shape == (3, 8) and layers["fc.weight"].data is None
    assert any("--trust" in note for note in layers["fc.weight"].notes)
    result = run("inspect", evil, "--stats", "--format", "json")
    assert result.code == 0 and not marker.exists()


def test_archives_are_read_without_importing_torch(archives):
    """torch's loaders cannot run what torch never imported: every archive is read in a torch-free process."""
    code = ("import sys; from fancli.loaders import load\n"
            "for path in sys.argv[1:]: load(path)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    paths = [str(archives[name]) for name in ("script", "traced", "export")]
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def with_json(source: Path, target: Path, member_end: str, change: Callable[[dict], None]) -> Path:
    """A copy of an archive whose JSON member ending in `member_end` is edited in place by `change`."""
    def edit(member: str, data: bytes) -> bytes:
        if not member.endswith(member_end):
            return data
        document = json.loads(data)
        change(document)
        return json.dumps(document).encode()

    return rewrite(source, target, edit)


def json_paths(value: object, path: tuple = ()) -> list[tuple]:
    """Every path into a JSON document, its root included."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path, *(found for key, item in items for found in json_paths(item, (*path, key)))]


def put(document: object, path: tuple, value: object) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


@pytest.mark.parametrize("arg", (["p_conv_weight"], "p_conv_weight", 7, None))
def test_an_export_graph_argument_of_the_wrong_type_is_one_line(archives, tmp_path, arg):
    """A node input's `arg` must be an object ({"as_tensor": …}); a list or a string was an AttributeError."""
    def change(program: dict) -> None:
        conv = program["graph_module"]["graph"]["nodes"][0]
        assert conv["inputs"][1]["name"] == "weight"
        conv["inputs"][1]["arg"] = arg

    broken = with_json(archives["export"], tmp_path / "arg.pt2", "models/model.json", change)
    err = one_line_exit_2(run("inspect", broken))
    assert str(broken) in err and "graph node 0, input 1: arg is" in err, err


#: A value of each JSON type, and of the near misses (true for an integer, a float for a list index).
JSON_VALUES = ({}, {"name": 1}, [], [1], "", "p_conv_weight", 0, -1, 2**70, 1.5, True, None)


@pytest.fixture(scope="module")
def export_json_paths(archives: dict[str, Path]) -> list[tuple[str, tuple]]:
    """(member, path) for every field of the export archive's graph nodes, signature and weights config."""
    with zipfile.ZipFile(archives["export"]) as archive:
        read = {end: json.loads(archive.read(next(n for n in archive.namelist() if n.endswith(end))))
                for end in ("models/model.json", "model_weights_config.json")}
    program = read["models/model.json"]["graph_module"]
    return [*(("models/model.json", ("graph_module", "graph", "nodes", *path))
              for path in json_paths(program["graph"]["nodes"])),
            *(("models/model.json", ("graph_module", "signature", "input_specs", *path))
              for path in json_paths(program["signature"]["input_specs"])),
            *(("model_weights_config.json", path) for path in json_paths(read["model_weights_config.json"])
              if path)]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_export_archive_field_of_any_type_is_exit_2_never_3(archives, export_json_paths, data):
    """Any field of the graph, the signature or the weights config replaced by a value of another JSON type:
    the archive reads (the field was not one fancli uses) or is refused in one line naming it, never exit 3."""
    member, path = data.draw(st.sampled_from(export_json_paths))
    value = data.draw(st.sampled_from(JSON_VALUES))
    mutated = with_json(archives["export"], archives["export"].parent / "mutated.pt2", member,
                        lambda document: put(document, path, value))
    result = run("inspect", mutated, "--stats", "--format", "json")
    if result.code != 0:
        assert str(mutated) in one_line_exit_2(result), result.err


# --- TorchScript ----------------------------------------------------------------------------------


def with_setstate_code(archives, tmp_path: Path, extra: bytes) -> Path:
    def change(member: str, data: bytes) -> bytes:
        if member.endswith("code/__torch__/evil_module.py"):
            return data.replace(b"    self.training = (state)[2]\n", b"    self.training = (state)[2]\n" + extra)
        return data

    return rewrite(archives["stateful"], tmp_path / "evil.pt", change)


def test_torchscript_setstate_never_writes_a_file(archives, tmp_path):
    victim = Path(str(archives["stateful"].parent / "victim"))
    evil = with_setstate_code(archives, tmp_path, OVERWRITE)
    victim.write_bytes(b"hello")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(evil)
    assert victim.read_bytes() != b"hello", "the fixture must be live: torch.jit.load overwrites the file"
    victim.write_bytes(b"hello")
    err = one_line_exit_2(run("inspect", evil))
    assert "__setstate__" in err and "--trust" in err
    assert victim.read_bytes() == b"hello"


def test_torchscript_setstate_that_never_ends_is_not_run(archives, tmp_path):
    evil = with_setstate_code(archives, tmp_path, LOOP)
    err = one_line_exit_2(run("inspect", evil))  # torch.jit.load would loop forever here
    assert "--trust" in err


def test_torchscript_data_pkl_passes_the_pre_scan(archives, tmp_path):
    """A memo bomb in data.pkl: ten bytes that make the unpickler allocate gigabytes, with or without --trust."""
    bomb = b"\x80\x02N" + b"r" + (2**31 - 1).to_bytes(4, "little") + b"."  # LONG_BINPUT far past the memo
    evil = rewrite(archives["script"], tmp_path / "bomb.pt",
                   lambda member, data: bomb if member.endswith("/data.pkl") else data)
    for trust in ((), ("--trust",)):
        err = one_line_exit_2(run("inspect", evil, *trust))
        assert "data.pkl" in err and "memo" in err


def test_deeply_nested_torchscript_code_is_not_compiled(archives, tmp_path):
    """Code torch's compiler would recurse into is only parsed, and where the parser gives up, the
    structure is reported unknown; the weights are still listed."""
    deep = b"class Conv2d(Module):\n  x = " + b"(" * 50_000 + b"1" + b")" * 50_000 + b"\n"
    evil = rewrite(archives["script"], tmp_path / "deep.pt", lambda member, data: (  # conv.py, or conv/___torch_mangle_N.py
        deep if "/code/__torch__/torch/nn/modules/conv" in member and member.endswith(".py") else data))
    layers = {layer.param: layer for layer in load(str(evil)).layers}
    assert layers["conv.weight"].shape == (8, 2, 3, 3) and layers["conv.weight"].groups is None
    assert NO_STRUCTURE in layers["conv.weight"].notes
    assert layers["fc.weight"].kind == "linear"


@pytest.mark.parametrize("name", ("script", "traced", "export"))
def test_reading_shapes_reads_no_tensor_data(archives, name, monkeypatch):
    def refuse(*_args):
        raise AssertionError("tensor data read without --stats")

    monkeypatch.setattr(ZipMember, "read", refuse)
    model = load(str(archives[name]))
    assert [layer.shape for layer in model.layers] == [(8, 2, 3, 3), (8,), (3, 8), (3,)]


@pytest.mark.parametrize("name", ("script", "traced", "export"))
def test_structure_is_read_from_the_archive_without_running_it(archives, name):
    conv = {layer.param: layer for layer in load(str(archives[name])).layers}["conv.weight"]
    assert (conv.kind, conv.groups, conv.stride, conv.dilation) == ("conv2d", 2, (2, 2), (1, 1))


def test_a_trusted_torchscript_archive_is_loaded_by_torch(archives):
    assert load(str(archives["stateful"]), trust=True).layers[0].shape == (5, 5)
    with pytest.raises(SourceError, match="--trust"):
        load(str(archives["stateful"]))


def test_a_trusted_export_archive_that_torch_cannot_load_is_one_line(archives, tmp_path):
    """torch.export.load logs its whole traceback before raising: with --trust, the error is still one line."""
    broken = rewrite(archives["export"], tmp_path / "broken.pt2", lambda member, data: (
        pickle.dumps([1, 2], protocol=2) if member.endswith("sample_inputs/model.pt") else data))  # not torch.save's
    done = subprocess.run([sys.executable, "-m", "fancli", "inspect", str(broken), "--trust"], capture_output=True,
                          text=True, cwd=REPO)  # a child: torch's log handler writes to the real stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "torch.export" in done.stderr, done.stderr
