"""Issue 13, items 2 and 3: typed trust, specs that never import, and work bounded by the file's size,
not by what it claims.

Each case is an attack from the issue, built here in a few KB (sparse files and forged records, never
gigabytes); each must end as test_hardening's cases do: exit 2, one stderr line naming the source and the
problem, quickly and in bounded memory. Cases that would hang or grow without the fix run in a child
process or under an alarm, so that a regression fails the test instead of taking the run down.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, run
from test_hardening import cli, isolated, legacy_file, mapping, refused, tensor, torch_zip

SAMPLE = REPO / "sample_models" / "lenet5.yaml"
LINEAR = "layers:\n  - {type: linear, in_features: 4, out_features: 3}\n"


# --- item 2: trust is a boolean, and a spec never imports --------------------------------------------


@pytest.mark.parametrize("where", ["fancli.yaml", "pyproject.toml"])
@pytest.mark.parametrize("value", ['"false"', '"no"', "1"])
def test_a_quoted_false_does_not_turn_trust_on(tmp_path, where, value):
    """`bool("false")` is True: trust must be a real boolean, anything else one line and exit 2."""
    config = tmp_path / where
    if where == "fancli.yaml":
        config.write_text(f"source: {SAMPLE}\ntrust: {value}\n")
    else:
        config.write_text(f'[tool.fancli]\nsource = "{SAMPLE}"\ntrust = {value}\n')
    refused(cli("inspect", "--config", config), config, "trust", "expected true or false")


def test_a_real_boolean_trust_is_still_read(tmp_path):
    config = tmp_path / "fancli.yaml"
    config.write_text(f"source: {SAMPLE}\ntrust: false\n")
    assert cli("inspect", "--config", config).code == 0


@pytest.mark.parametrize("line, key", [("tolerance: .inf", "tolerance"), ("sigmas: .nan", "sigmas"),
                                       ("defaults: {param: .inf}", "defaults.param"),
                                       ("overrides: {match: x}", "overrides")])
def test_other_config_numbers_and_lists_are_typed(tmp_path, line, key):
    config = tmp_path / "fancli.yaml"
    config.write_text(f"source: {SAMPLE}\n{line}\n")
    refused(cli("inspect", "--config", config), config, key)


def test_a_spec_nonlinearity_never_imports_a_module_beside_it(tmp_path):
    """`torchx_gelu.gelu` started with "torch" and was imported; under `python -m fancli` the working
    directory is on sys.path, so a file beside the spec ran."""
    marker = tmp_path / "imported"
    (tmp_path / "torchx_gelu.py").write_text(f"open({str(marker)!r}, 'w').close()\ngelu = abs\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("defaults: {nonlinearity: torchx_gelu.gelu}\n" + LINEAR)
    done = subprocess.run([sys.executable, "-m", "fancli", "inspect", "spec.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert not marker.exists()
    assert done.returncode == 2 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert "spec.yaml" in line and "torchx_gelu.gelu" in line and "only torch functions" in line


@pytest.mark.parametrize("name", ["torch.zeros", "torch.load", "torch.nn.functional.softmax", "torch.nn.init.zeros_",
                                  "torch.utils.collect_env.main"])
def test_a_dotted_nonlinearity_must_be_a_torch_activation(tmp_path, name):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"defaults: {{nonlinearity: {name}}}\n" + LINEAR)
    refused(cli("inspect", spec), spec, name)
    outcome = cli("gain", name)
    assert outcome.code == 2 and len(outcome.err.strip().splitlines()) == 1, outcome.err


def test_allowed_torch_activations_still_resolve():
    outcome = cli("gain", "torch.nn.functional.rrelu", "-f", "json")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["gains"][0]["numeric"] > 1
    wrong_arity = cli("gain", "torch.relu", "-p", "3")
    assert wrong_arity.code == 2 and "torch.relu" in wrong_arity.err


# --- item 3: counts a spec or a command line states are bounded before they are acted on --------------


def test_a_billion_stacked_lstm_layers_is_refused(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("layers:\n  - {type: lstm, input_size: 3, hidden_size: 4, num_layers: 1000000000}\n")
    refused(isolated(tmp_path, "inspect", spec), spec, "num_layers")


@pytest.mark.parametrize("entry, key", [("{shape: [" + ", ".join(["1"] * 100_000) + "]}", "shape"),
                                        ("{type: linear, in_features: 99999999999999999999, out_features: 2}",
                                         "in_features"),
                                        ("{type: linear, in_features: " + "9" * 5000 + ", out_features: 2}",
                                         "too many digits")])
def test_spec_sizes_stay_within_what_torch_can_hold(tmp_path, entry, key):
    spec = tmp_path / "sizes.yaml"
    spec.write_text(f"layers:\n  - {entry}\n")
    refused(cli("inspect", spec), spec, key)


@pytest.mark.parametrize("option, value", [("--draws", "1000000000"), ("--batch", "1000000000")])
def test_propagate_draws_and_batch_are_bounded(option, value):
    pytest.importorskip("torch")
    outcome = cli("propagate", SAMPLE, option, value)
    assert outcome.code == 2 and outcome.out == "", outcome.err
    assert len(outcome.err.strip().splitlines()) == 1 and option.strip("-") in outcome.err


# --- item 3: memory that grows with what a config or baseline claims ---------------------------------


def test_a_config_of_brackets_is_refused_unparsed(tmp_path):
    config = tmp_path / "fancli.yaml"
    config.write_text("source: x\na: [" + "[]," * 5_000_000 + "]\n")  # 15 MB: 3 GB to parse
    refused(isolated(tmp_path, "inspect", "--config", config, SAMPLE), config, "too large")


@pytest.mark.parametrize("body, words", [
    ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
    ("x = " + "1" * 5000, "too many digits"),
    ("x = [" + "[]," * 400_000 + "]", "too large"),
], ids=["nested", "huge-int", "bracket-bomb"])
def test_a_hostile_pyproject_is_one_line(tmp_path, body, words):
    config = tmp_path / "pyproject.toml"
    config.write_text(f"[tool.fancli]\n{body}\n")
    refused(cli("inspect", "--config", config, SAMPLE), config, words)


def test_a_huge_integer_in_a_yaml_config_is_one_line(tmp_path):
    config = tmp_path / "fancli.yaml"
    config.write_text(f"source: {SAMPLE}\ntolerance: {'1' * 5000}\n")
    refused(cli("inspect", "--config", config), config, "too many digits")


@pytest.fixture()
def baseline(tmp_path) -> Path:
    path = tmp_path / "fancli.lock.json"
    assert run("check", SAMPLE, "--no-config", "--update", "--baseline", path).code == 0
    return path


def test_a_baseline_of_3_gb_is_not_read_whole(tmp_path, baseline):
    with baseline.open("r+b") as handle:  # sparse: the claim costs nothing on disk
        handle.truncate(3 << 30)
    refused(isolated(tmp_path, "check", SAMPLE, "--no-config", "--baseline", baseline), baseline, "too large")


@pytest.mark.parametrize("mutate, words", [
    (lambda text: '{"fancli": "1.0", "layers": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (lambda text: re.sub(r'"fan_in": \d+', '"fan_in": ' + "9" * 4000, text, count=1), None),
    (lambda text: re.sub(r'"fan_in": \d+', '"fan_in": ' + "9" * 5000, text, count=1), "too many digits"),
    (lambda text: '{"fancli": "1.0", "layers": {}, "x": [' + "[]," * 3_000_000 + "[]]}", "MiB to parse"),
], ids=["nested", "huge-int", "too-many-digits", "bracket-bomb"])
def test_a_hostile_baseline_is_one_line(baseline, mutate, words):
    baseline.write_text(mutate(baseline.read_text()))
    outcome = cli("check", SAMPLE, "--no-config", "--baseline", baseline)
    if words is None:  # a number beyond any float: drift, exit 1, not an internal error
        assert outcome.code == 1 and "fan_in" in outcome.out, outcome.err
        return
    refused(outcome, baseline, words)
