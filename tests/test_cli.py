"""The command line: every sample in every format, compare with 2 and 3 modes, errors as one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, SAMPLES, run, torch_std_and_bound
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans
from torch_from_spec import build


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_inspect_every_sample_in_every_format(path, fmt):
    result = run("inspect", path, "--format", fmt)
    assert result.code == 0, result.err
    assert result.err == ""
    names = [line for line in result.out.splitlines() if ".weight" in line or "_weight" in line or "weight_" in line]
    assert names, result.out


def test_inspect_json_follows_the_contract_and_torch():
    """Each ≥2-D weight's fans and std equal torch's kaiming_normal_(mode=fan_out, relu) on the real module."""
    path = REPO / "sample_models" / "resnet_bottleneck.yaml"
    result = run("inspect", path, "--format", "json", "--scheme", "kaiming_normal", "--mode", "fan_out",
                 "--nonlinearity", "relu")
    data = json.loads(result.out)
    assert data["fancli"] and data["source"]["path"] == str(path) and data["source"]["format"] == "yaml-spec"
    assert data["settings"]["scheme"] == "kaiming_normal" and data["settings"]["mode"] == "fan_out"
    weights = dict(build(path).named_parameters())
    for layer in data["layers"]:
        for key in ("name", "param", "kind", "shape", "fan_in", "fan_out", "gain", "std", "bound", "notes"):
            assert key in layer
        weight = weights[layer["param"]]
        if weight.dim() < 2:
            assert layer["fan_in"] is None and layer["std"] is None and layer["notes"]
            continue
        assert (layer["fan_in"], layer["fan_out"]) == torch_fans(weight)
        std, _ = torch_std_and_bound(nn.init.kaiming_normal_, torch.empty_like(weight), mode="fan_out",
                                     nonlinearity="relu")
        assert isinstance(layer["std"], float) and layer["std"] == std
        assert layer["bound"] is None


def test_the_terminal_table_and_the_plain_grid_show_the_same_rows(monkeypatch):
    import contextlib
    import io

    import fancli
    from fancli.renderers.table import print_rich

    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: rich fits the table to it
    path = REPO / "sample_models" / "dcgan_generator.yaml"
    plain = run("compare", path).out
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_rich(fancli.compare(str(path)))
    for text in ("main.0.weight", "main.12.weight", "disagree most", "8192 → 1600"):
        assert text in plain and text in buffer.getvalue()


def test_effective_fans_and_notes_in_json():
    data = json.loads(run("inspect", REPO / "sample_models" / "mobilenet_block.yaml", "-f", "json").out)
    depthwise = next(layer for layer in data["layers"] if layer["name"] == "depthwise")
    assert depthwise["fan_out"] == 192 * 9 and depthwise["effective_fan_out"] == 9
    assert depthwise["structure"]["groups"] == 192
    assert any("depthwise" in note for note in depthwise["notes"])
    expand = next(layer for layer in data["layers"] if layer["name"] == "expand")
    assert "effective_fan_in" not in expand


def test_fans_effective_changes_std_to_the_effective_fan():
    path = REPO / "sample_models" / "dcgan_generator.yaml"
    torch_conv = json.loads(run("inspect", path, "-f", "json", "--mode", "fan_in").out)["layers"][0]
    effective = json.loads(run("inspect", path, "-f", "json", "--mode", "fan_in", "--fans", "effective").out)
    layer = effective["layers"][0]
    assert effective["settings"]["fans"] == "effective"
    assert layer["std"] == pytest.approx(layer["gain"] / math.sqrt(layer["effective_fan_in"]), rel=1e-15)
    assert torch_conv["std"] == pytest.approx(torch_conv["gain"] / math.sqrt(torch_conv["fan_in"]), rel=1e-15)
    assert layer["std"] != torch_conv["std"]


@pytest.mark.parametrize("modes", [["fan_in", "fan_out"], ["fan_in", "fan_out", "fan_avg"]])
@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_compare_two_and_three_modes(modes, fmt):
    path = REPO / "sample_models" / "vgg_stack.yaml"
    result = run("compare", path, "--mode", *modes, "--format", fmt)
    assert result.code == 0, result.err
    if fmt == "json":
        data = json.loads(result.out)
        assert data["settings"]["modes"] == modes
        for layer in data["layers"]:
            assert list(layer["modes"]) == modes
            stds = [layer["modes"][m]["std"] for m in modes]
            assert layer["spread"] == pytest.approx(max(stds) / min(stds))
        assert data["summary"]["most_disagreeing"]
    else:
        assert "disagree most" in result.out
        for mode in modes[1:]:
            assert f"{mode}/{modes[0]}" in result.out


def test_compare_std_per_mode_equals_torch():
    path = REPO / "sample_models" / "vgg_stack.yaml"
    data = json.loads(run("compare", path, "--mode", "fan_in", "fan_out", "-s", "kaiming_uniform", "-f", "json").out)
    weights = dict(build(path).named_parameters())
    for layer in data["layers"]:
        for mode in ("fan_in", "fan_out"):
            _, bound = torch_std_and_bound(nn.init.kaiming_uniform_, torch.empty_like(weights[layer["param"]]),
                                           mode=mode, nonlinearity=layer["nonlinearity"])
            assert layer["modes"][mode]["bound"] == bound


def test_mode_option_also_repeats_and_source_may_come_last():
    path = REPO / "sample_models" / "lenet5.yaml"
    a = run("compare", "--mode", "fan_in", "--mode", "fan_avg", path, "-f", "json")
    b = run("compare", "--mode", "fan_in", "fan_avg", path, "-f", "json")
    assert a.code == b.code == 0 and a.out == b.out


def test_filter_keeps_matching_layers():
    data = json.loads(run("inspect", REPO / "sample_models" / "lstm_tagger.yaml", "-f", "json", "-k", "*reverse").out)
    assert data["layers"] and all(layer["param"].endswith("_reverse") for layer in data["layers"])


def test_output_file_is_written_atomically(tmp_path: Path):
    target = tmp_path / "report.md"
    target.write_text("old")
    result = run("inspect", REPO / "sample_models" / "lenet5.yaml", "-f", "markdown", "-o", target)
    assert result.code == 0 and result.out == ""
    assert target.read_text().startswith("**") and "| name |" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("precious")

    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    result = run("inspect", REPO / "sample_models" / "lenet5.yaml", "-f", "json", "-o", target)
    assert result.code == 2 and "No space left" in result.err
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


BAD_SPECS = {
    "unknown_type.yaml": "layers:\n  - {type: convolution, in_channels: 3}\n",
    "missing_key.yaml": "layers:\n  - {type: linear, in_features: 3}\n",
    "groups.yaml": "layers:\n  - {type: conv2d, in_channels: 64, out_channels: 64, kernel_size: 3, groups: 3}\n",
    "negative.yaml": "layers:\n  - {type: linear, in_features: -1, out_features: 3}\n",
    "not_yaml.yaml": "layers: [{type: linear\n",
    "empty.yaml": "",
}


@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_bad_specs_exit_2_with_one_line(tmp_path: Path, name):
    path = tmp_path / name
    path.write_text(BAD_SPECS[name])
    result = run("inspect", path)
    assert result.code == 2
    assert result.out == ""
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert str(path) in result.err and "Traceback" not in result.err


def test_missing_file_and_bad_options_exit_2(tmp_path: Path):
    assert run("inspect", tmp_path / "nope.yaml").code == 2
    bad_scheme = run("inspect", REPO / "sample_models" / "lenet5.yaml", "--scheme", "kaiming")
    assert bad_scheme.code == 2 and "unknown scheme 'kaiming'" in bad_scheme.err
    bad_gain = run("inspect", REPO / "sample_models" / "lenet5.yaml", "--nonlinearity", "gelux")
    assert bad_gain.code == 2 and "unknown activation 'gelux'" in bad_gain.err
    assert run("compare", REPO / "sample_models" / "lenet5.yaml", "--mode", "fan_sideways").code == 2


def test_debug_shows_the_traceback(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    quiet = subprocess.run([sys.executable, "-m", "fancli", "inspect", str(path)], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-m", "fancli", "--debug", "inspect", str(path)], capture_output=True,
                          text=True, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and loud.returncode == 2  # the error's own code, not Python's 1 (drift)


@pytest.mark.parametrize("where", [["inspect", "{path}", "--debug"], ["inspect", "--debug", "{path}"],
                                   ["check", "--config", "{path}", "--debug"]])
def test_debug_is_accepted_after_the_command(tmp_path: Path, where: list[str]):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    done = run(*(arg.format(path=path) for arg in where))
    assert done.code == 2, done.err
    assert "Traceback" in done.err and "No such option" not in done.err
    assert done.err.rstrip().splitlines()[-1].startswith("fancli: error:")


def test_debug_after_a_double_dash_is_an_argument(tmp_path: Path):
    done = run("inspect", "--", "--debug")
    assert done.code == 2 and "Traceback" not in done.err and "--debug" in done.err


@pytest.mark.parametrize(
    "args",
    [["--help"], ["inspect", "sample_models/transformer_block.yaml", "-f", "json"],
     ["compare", "sample_models/dcgan_generator.yaml", "--mode", "fan_in", "fan_out", "fan_avg"]],
)
def test_torch_is_never_imported_for_help_or_specs(args):
    code = (
        "import sys\n"
        "from fancli.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("no torch")


@pytest.mark.parametrize("args,message", [
    (["-n", "leaky_relu", "-p", "inf"], "finite"),
    (["-n", "leaky_relu", "-p", "nan"], "finite"),
    (["-n", "leaky_relu", "-p", "1e200"], "too large"),
    (["--mode", "fan_in", "fan_out"], "one mode"),
    (["-k", "no_such_layer*"], "no layer matches"),
])
def test_bad_settings_exit_2_with_one_line(args, message):
    result = run("inspect", REPO / "sample_models" / "lenet5.yaml", "-f", "json", *args)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err


@pytest.mark.parametrize("command,args,message", [
    ("inspect", ["--scheme", "kaiming"], "unknown scheme 'kaiming'"),
    ("inspect", ["--recipe", "gpt3"], "gpt3"),
    ("compare", ["-n", "gelux"], "unknown activation 'gelux'"),
    ("compare", ["--mode", "fan_in"], "at least two modes"),
])
def test_bad_settings_are_refused_before_the_source_is_read(tmp_path: Path, command, args, message):
    """The settings are validated where the options are parsed: a typo costs no load of a large checkpoint
    (nor runs a factory); the source here does not even exist."""
    result = run(command, tmp_path / "absent.safetensors", *args)
    assert result.code == 2 and message in result.err and "absent" not in result.err, result.err


def test_zero_element_tensors_get_no_std():
    import fancli
    from fancli.layer import Layer, Model

    report = fancli.analyze(Model("m", "x", (Layer("w", "w.weight", "linear", (0, 5)),)))
    (row,) = report.rows
    assert row.inits["fan_in"].std is None and "no-op" in " ".join(row.notes)


def test_stats_on_a_spec_says_it_read_nothing():
    result = run("inspect", REPO / "sample_models" / "lenet5.yaml", "--stats")
    assert result.code == 0 and "no weights" in result.out


def test_every_format_the_cli_offers_has_one_renderer():
    from fancli.cli import cli
    from fancli.outputs import RENDERERS, formats, renderer

    for name, command in cli.commands.items():
        (option,) = [p for p in command.params if p.name == "fmt"] or [None]
        if option is not None:
            assert option.type.choices == formats(name) and option.default == formats(name)[0], name
    for command, fmt in RENDERERS:
        assert callable(renderer(command, fmt)), (command, fmt)


def test_help_names_every_kind_of_source_exit_code_and_activation():
    top = run("--help").out
    for words in ("folder", "DCP", "org/name", "pkg.module:callable", "2 bad usage"):
        assert words in " ".join(top.split()), words
    check = " ".join(run("check", "--help").out.split())
    assert "2 bad usage" in check
    nonlinearity = " ".join(run("inspect", "--help").out.split())
    assert "gelu" in nonlinearity and "silu" in nonlinearity
