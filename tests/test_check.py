"""`fancli check`: a baseline written, then every kind of drift named with exit 1, bad baselines exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, run

NET = '''
import torch
from torch import nn


def build(width=16, seed=0, extra=False, drop_head=False, forget_init=None, fc_mode=None):
    """A small net whose init code follows the team's configuration (fancli.yaml in the tests)."""
    torch.manual_seed(seed)
    layers = {"conv1": nn.Conv2d(3, width, 3), "conv2": nn.Conv2d(width, 2 * width, 3),
              "fc1": nn.Linear(2 * width, 64)}
    if not drop_head:
        layers["head"] = nn.Linear(64, 10)
    if extra:
        layers["fc2"] = nn.Linear(64, 64)
    net = nn.ModuleDict(layers)
    for name, module in net.items():
        if name == forget_init:
            continue  # left at torch's default init
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif name == "head":
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.kaiming_uniform_(module.weight, mode=fc_mode or "fan_in", nonlinearity="relu")
    return net
'''

CONFIG = """
source: drift_net:build
defaults: {scheme: kaiming_normal, mode: fan_out, nonlinearity: relu}
overrides:
  - {match: "fc*", scheme: kaiming_uniform, mode: fan_in}
  - {match: head, scheme: xavier_uniform, nonlinearity: linear}
"""


@pytest.fixture(scope="module")
def net_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drift_net")
    (folder / "drift_net.py").write_text(NET)
    return folder


@pytest.fixture
def project(tmp_path, net_dir, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(net_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fancli.yaml").write_text(CONFIG)
    assert run("check", "--update").code == 0
    return tmp_path


def changes(*args: str) -> tuple[int, list[dict]]:
    result = run("check", "--format", "json", *args)
    return result.code, json.loads(result.out)["changes"] if result.out else []


def test_unchanged_model_passes(project):
    baseline = json.loads((project / "fancli.lock.json").read_text())
    assert baseline["fancli"] and list(baseline["layers"])[0] == "conv1.weight"
    assert baseline["layers"]["conv1.weight"]["mode"] == "fan_out"
    result = run("check")
    assert result.code == 0 and "no drift" in result.out


def test_a_changed_mode_is_named(project):
    config = CONFIG.replace("{match: \"fc*\", scheme: kaiming_uniform, mode: fan_in}",
                            "{match: \"fc*\", scheme: kaiming_uniform, mode: fan_out}")
    (project / "fancli.yaml").write_text(config)
    code, found = changes()
    assert code == 1
    assert {"param": "fc1.weight", "change": "changed", "field": "mode", "baseline": "fan_in",
            "current": "fan_out"} in found


def test_a_width_change_is_named_with_its_fans_and_std(project):
    code, found = changes("--kwargs", '{"width": 32}')
    assert code == 1
    fields = {(c["param"], c["field"]) for c in found}
    assert ("conv1.weight", "shape") in fields and ("conv1.weight", "fan_out") in fields
    assert ("conv1.weight", "std") in fields and ("fc1.weight", "fan_in") in fields


def test_added_and_removed_layers_are_named(project):
    code, found = changes("--kwargs", '{"extra": true, "drop_head": true}')
    assert code == 1
    assert {"param": "fc2.weight", "change": "added", "field": None, "baseline": None, "current": None} in found
    assert any(c["param"] == "head.weight" and c["change"] == "removed" for c in found)


def test_a_layer_moved_to_torch_default_in_the_config_is_named(project):
    (project / "fancli.yaml").write_text(CONFIG + "  - {match: conv2, scheme: torch_default}\n")
    code, found = changes()
    assert code == 1
    assert any(c["param"] == "conv2.weight" and c["field"] == "scheme" and c["current"] == "torch_default"
               for c in found)


def test_stats_flag_a_layer_left_at_torch_default_init(project):
    result = run("check", "--stats", "--format", "json", "--kwargs", '{"forget_init": "conv2"}')
    assert result.code == 1
    observed = {d["param"]: d for d in json.loads(result.out)["observed"]}
    assert observed["conv2.weight"]["flagged"] and observed["conv2.weight"]["std_errors"] < -5
    assert not any(d["flagged"] for p, d in observed.items() if p != "conv2.weight")


def test_stats_flag_code_whose_mode_differs_from_the_config(project):
    result = run("check", "--stats", "--format", "json", "--kwargs", '{"fc_mode": "fan_out"}')
    assert result.code == 1
    flagged = [d["param"] for d in json.loads(result.out)["observed"] if d["flagged"]]
    assert flagged == ["fc1.weight"]


def test_stats_never_flag_correct_layers_across_20_seeds(project):
    for seed in range(20):
        result = run("check", "--stats", "--format", "json", "--kwargs", json.dumps({"seed": seed}))
        data = json.loads(result.out)
        assert result.code == 0, (seed, [d for d in data["observed"] if d["flagged"]])
        assert len(data["observed"]) == 4


@pytest.mark.parametrize("content,message", [("{not json", "not valid JSON"), ('{"layers": 3}', "not a fancli baseline"),
                                             ("", "not valid JSON")])
def test_a_corrupt_baseline_exits_2_and_is_left_alone(project, content, message):
    (project / "fancli.lock.json").write_text(content)
    result = run("check")
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1
    assert (project / "fancli.lock.json").read_text() == content


@pytest.mark.parametrize("field,value,words", [
    ("fan_in", "9" * 400, "too large for a float"),  # 10**400: a drift, exit 1, before
    ("fan_out", "NaN", "not a finite number"),
    ("fan_in", "-27", "not a whole number"),
    ("fan_in", "27.5", "not a whole number"),
    ("fan_in", '"27"', "not a number"),
    ("std", "Infinity", "not a finite number"),
    ("gain", "1" + "0" * 309, "too large for a float"),
])
def test_a_baseline_number_fancli_never_writes_is_unreadable_not_drift(project, field, value, words):
    """Python's json reads NaN, Infinity and 400-digit integers: each is a baseline fancli cannot compare
    (exit 2 naming the file, the layer and the key), not a change in the model (exit 1)."""
    path = project / "fancli.lock.json"
    document = json.loads(path.read_text())
    document["layers"]["conv1.weight"][field] = "@"
    content = json.dumps(document, indent=2).replace('"@"', value)
    path.write_text(content)
    result = run("check")
    assert result.code == 2 and result.out == "", (result.code, result.out)
    (line,) = result.err.strip().splitlines()
    assert str(path.name) in line and "conv1.weight" in line and field in line and words in line, line
    assert path.read_text() == content
    assert run("check", "--update").code == 0 and run("check").code == 0  # what the message says to do works


def test_a_missing_baseline_exits_2(project):
    (project / "fancli.lock.json").unlink()
    result = run("check")
    assert result.code == 2 and "check --update" in result.err


def test_update_is_atomic(project, monkeypatch):
    import os

    before = (project / "fancli.lock.json").read_text()

    def crash(*_args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    result = run("check", "--update", "--kwargs", '{"width": 8}')
    assert result.code == 2 and (project / "fancli.lock.json").read_text() == before
    assert sorted(p.name for p in project.iterdir()) == ["fancli.lock.json", "fancli.yaml"]


def test_markdown_names_each_change_for_a_pull_request(project):
    result = run("check", "--format", "markdown", "--kwargs", '{"extra": true}')
    assert result.code == 1 and "### ❌ fancli check" in result.out and "`fc2.weight`" in result.out


def test_pyproject_configuration_and_inspect_use_it(tmp_path, net_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(net_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.fancli]
        source = "drift_net:build"
        baseline = "init.lock.json"
        defaults = { scheme = "kaiming_normal", mode = "fan_out", nonlinearity = "relu" }
        overrides = [ { match = "head", scheme = "xavier_uniform", nonlinearity = "linear" } ]
        """))
    assert run("check", "--update").code == 0 and (tmp_path / "init.lock.json").exists()
    layers = {layer["param"]: layer for layer in json.loads(run("inspect", "-f", "json").out)["layers"]}
    assert layers["head.weight"]["scheme"] == "xavier_uniform" and layers["head.weight"]["mode"] == "fan_avg"
    assert layers["conv1.weight"]["mode"] == "fan_out"
    assert run("check").code == 0


@pytest.mark.parametrize("config,message", [("defaults: {scheme: kaiming}\n", "defaults.scheme"),
                                            ("overrides: [{scheme: torch_default}]\n", "overrides[0].match"),
                                            ("sauce: x\n", "unknown key")])
def test_bad_configurations_exit_2(tmp_path, monkeypatch, config, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fancli.yaml").write_text(config)
    result = run("inspect", REPO / "sample_models" / "lenet5.yaml")
    assert result.code == 2 and message in result.err and "fancli.yaml" in result.err


def test_pre_commit_hook_runs_fancli_check():
    import yaml

    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert any(hook["entry"].startswith("fancli check") for hook in hooks)


def test_a_fifo_baseline_is_refused_not_waited_on(project):
    import os

    (project / "fancli.lock.json").unlink()
    os.mkfifo(project / "fancli.lock.json")
    result = run("check")
    assert result.code == 2 and "not a regular file" in result.err


def test_the_baseline_stores_the_source_relative_to_its_folder(tmp_path, monkeypatch):
    """Issue 26, item 6: one repository cloned in two places, `--update` run from a subfolder (the config
    found upward: its source an absolute path), from the root, and from outside with --config: the same
    baseline byte for byte, its source leading from the baseline's folder to the weights."""
    import shutil

    written = []
    for clone, cwd, config in (("a/repo", "a/repo/sub", ()), ("b/elsewhere/repo", "b/elsewhere/repo", ()),
                               ("c/repo", ".", ("--config", "c/repo/fancli.yaml"))):
        root = tmp_path / clone
        for folder in (".git", "sub", "weights"):
            (root / folder).mkdir(parents=True)
        shutil.copy(REPO / "sample_models" / "lenet5.safetensors", root / "weights" / "model.safetensors")
        (root / "fancli.yaml").write_text("source: weights/model.safetensors\ndefaults: {scheme: kaiming_normal}\n")
        monkeypatch.chdir(tmp_path / cwd)
        assert run("check", "--update", *config).code == 0
        written.append((root / "fancli.lock.json").read_bytes())
        assert run("check", *config).code == 0
    assert written[0] == written[1] == written[2]
    document = json.loads(written[0])
    assert (root / document["source"]).samefile(root / "weights" / "model.safetensors")
    # a baseline an older fancli wrote, with an absolute source from another machine, still reads
    document["source"] = "/home/someone/userrepo/weights/model.safetensors"
    (root / "fancli.lock.json").write_text(json.dumps(document))
    assert run("check", *config).code == 0


def test_no_configuration_found_says_how_to_give_one(tmp_path, monkeypatch):
    """Issue 26, item 7: no SOURCE and no config found up to the repository root is one line saying how to
    give one, naming the nearest fancli.yaml below (at most 3 folders down, dot-folders skipped)."""
    (tmp_path / ".git").mkdir()  # the repository root: the search up stops here
    for folder in ("a/b/c/d", ".hidden", "models/ci"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "fancli.yaml").write_text("source: x.yaml\n")
    monkeypatch.chdir(tmp_path)
    result = run("check")
    assert result.code == 2 and result.out == ""
    (line,) = result.err.strip().splitlines()
    assert "--config models/ci/fancli.yaml" in line and ".hidden" not in line, line
    (tmp_path / "models" / "ci" / "fancli.yaml").unlink()
    (line,) = run("check").err.strip().splitlines()
    assert "--config FILE" in line and "a/b/c/d" not in line and "below" not in line, line


def test_check_in_the_repository_root_names_the_sample_config(monkeypatch):
    """The README's "Three questions" from the repository's root: the hint names the bundled config, and
    what it says runs clean."""
    monkeypatch.chdir(REPO)
    result = run("check")
    assert result.code == 2 and "--config sample_models/ci/fancli.yaml" in result.err, result.err
    assert run("check", "--config", "sample_models/ci/fancli.yaml").code == 0


def test_a_weights_mismatch_says_what_update_records_and_how_to_accept_it(project):
    """Issue 26, item 7: a `check --stats` mismatch ends with what `--update` records (exactly the baseline's
    fields), and each way out it names works: --update alone leaves it failing, a larger --sigmas or the
    configured init the weights follow accepts it."""
    import re

    kwargs = ("--kwargs", '{"forget_init": "conv2"}')
    result = run("check", "--stats", *kwargs)
    assert result.code == 1
    last = result.out.strip().splitlines()[-1]
    named = re.search(r"--update` will not accept these weights: it records the configured init \(([^)]*)\)",
                      last).group(1).split(", ")
    entry = json.loads((project / "fancli.lock.json").read_text())["layers"]["conv2.weight"]
    fields = [field for name in named for field in {"fans": ("fan_in", "fan_out")}.get(name, (name,))]
    assert sorted(fields) == sorted(set(entry) - {"aliases"})
    assert "--sigmas" in last and "fancli inspect --stats --infer" in last
    assert last in run("check", "--stats", "--format", "markdown", *kwargs).out
    assert run("check", "--update", *kwargs).code == 0 and run("check", "--stats", *kwargs).code == 1
    found = json.loads(run("check", "--stats", "--format", "json", *kwargs).out)["observed"]
    off = max(abs(d["std_errors"]) for d in found)
    assert run("check", "--stats", "--sigmas", str(off + 1), *kwargs).code == 0
    (project / "fancli.yaml").write_text(CONFIG + "  - {match: conv2, scheme: torch_default}\n")
    assert run("check", "--stats", *kwargs).code == 1  # the config changed: drift until the baseline follows
    assert run("check", "--update", *kwargs).code == 0 and run("check", "--stats", *kwargs).code == 0
