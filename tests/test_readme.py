"""The README's promises: its two leading commands, CI calling the test one, and its JSON example."""

from __future__ import annotations

import json
import re

import pytest
from helpers import REPO, run

README = (REPO / "README.md").read_text()
TEST_COMMAND = "python -m pip install torch==2.13.0 -e '.[test]' && python -m pytest"


def test_readme_leads_with_install_and_run_then_install_and_test():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("python -m pip install -e . && fancli inspect sample_models/")  # no torch needed
    assert commands[1] == TEST_COMMAND


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_sample_command_works():
    sample = re.search(r"fancli inspect (sample_models/\S+)", README).group(1)
    assert run("inspect", REPO / sample).code == 0


def test_readme_json_example_is_what_torch_computes_and_what_the_tool_prints():
    """The documented numbers are torch's (xavier_uniform_ with tanh's gain on LeNet's conv1), and the tool
    prints the same document."""
    import torch
    from helpers import torch_std_and_bound

    example = json.loads(README.split("```json", 1)[1].split("```", 1)[0])
    layer = example["layers"][0]
    weight = torch.nn.Conv2d(1, 6, 5).weight
    std, bound = torch_std_and_bound(torch.nn.init.xavier_uniform_, torch.empty_like(weight),
                                     gain=torch.nn.init.calculate_gain("tanh"))
    assert layer["shape"] == list(weight.shape) and layer["bound"] == bound
    assert layer["std"] == pytest.approx(std, rel=1e-15)
    actual = json.loads(run("inspect", REPO / example["source"]["path"], "-f", "json", "-k", "conv1").out)
    assert example["settings"] == actual["settings"] and layer == actual["layers"][0]


def _examples() -> list[tuple[str, str]]:
    """Every fenced block whose first line is `$ fancli …`: the command and the output shown under it."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        lines = block.splitlines()
        if lines and lines[0].startswith("$ fancli "):
            found.append((lines[0][2:], "\n".join(line.rstrip() for line in lines[1:])))
    return found


def test_the_readme_shows_its_examples():
    assert len(_examples()) >= 5


@pytest.mark.parametrize("command, shown", _examples(), ids=[command for command, _ in _examples()])
def test_every_readme_example_prints_what_the_readme_shows(command, shown, monkeypatch):
    """Run from the repository root as a reader pastes it; tables as printed to a pipe."""
    import glob
    import shlex

    monkeypatch.chdir(REPO)
    # a shell expands `run/step-*` (in its own sorted order) before fancli sees it
    args = [match for arg in shlex.split(command)[1:] for match in (sorted(glob.glob(arg)) or [arg] if "*" in arg else [arg])]
    result = run(*args)
    assert result.code in (0, 1), result.err
    assert "\n".join(line.rstrip() for line in result.out.splitlines()) == shown


def test_no_fancli_line_holds_an_optional_argument_in_brackets():
    """`--mode fan_in fan_out [fan_avg]` pasted is an error: a runnable line shows runnable arguments."""
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0]
            if command.lstrip().startswith("fancli "):
                assert not re.search(r"\[\w+\]", command), line
