"""The README's promises: its two leading commands, CI calling the test one, and its JSON example."""

from __future__ import annotations

import json
import re

from helpers import REPO, run

README = (REPO / "README.md").read_text()
TEST_COMMAND = "python -m pip install torch==2.13.0 -e '.[test]' && python -m pytest"


def test_readme_leads_with_install_and_run_then_install_and_test():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("python -m pip install torch==2.13.0 -e . && fancli inspect sample_models/")
    assert commands[1] == TEST_COMMAND


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_sample_command_works():
    sample = re.search(r"fancli inspect (sample_models/\S+)", README).group(1)
    assert run("inspect", REPO / sample).code == 0


def test_readme_json_example_matches_the_tool():
    example = json.loads(README.split("```json", 1)[1].split("```", 1)[0])
    actual = json.loads(run("inspect", REPO / example["source"]["path"], "-f", "json", "-k", "conv1").out)
    assert example["settings"] == actual["settings"]
    assert example["layers"][0] == actual["layers"][0]
