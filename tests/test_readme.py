"""The README's promises: its two leading commands, CI calling the test one, and its JSON example."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from helpers import REPO, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

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


REPOSITORY = "https://github.com/fancli/fancli"  # the project's public home, as the JSON schemas' $ids say
FROM_REPOSITORY = re.compile(rf'pip install "fancli-init @ git\+{re.escape(REPOSITORY)}@(\S+)"')
RELEASED = re.compile(r"pip install fancli-init(?:==(\S+))?$")


def _yaml_block(first_line: str) -> dict:
    """The README's fenced YAML block that starts with `first_line`."""
    import yaml

    block, = (b for b in re.findall(r"^```yaml\n(.*?)^```", README, re.S | re.M) if b.startswith(first_line))
    return yaml.safe_load(block)


def _install_lines() -> list[str]:
    """The runnable lines (comments left out) of the README's fenced blocks that pip-install fancli."""
    lines = [line.split("#", 1)[0].strip() for block in re.findall(r"^```\w*\n(.*?)^```", README, re.S | re.M)
             for line in block.splitlines()]
    return [line for line in lines if "pip install" in line and "fancli-init" in line]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def _pinned_ref() -> str:
    """The one ref that the install lines and the pre-commit `rev:` name: a commit until a release exists,
    then the release's tag (the README's Releasing section says which lines change when)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    lines, rev = _install_lines(), _yaml_block("repos:")["repos"][0]["rev"]
    pinned = [found[1] for found in map(FROM_REPOSITORY.search, lines) if found]
    released = [found[1] or "" for found in map(RELEASED.search, lines) if found]
    assert len(lines) >= 2 and len(pinned) + len(released) == len(lines), lines  # the intro's, the Actions job's
    if released:  # after a release: `fancli-init` and `fancli-init==<version>`, rev v<version>
        assert not pinned and set(released) <= {"", version} and rev == f"v{version}", (lines, rev)
    else:  # before: from the repository at one full commit id, which `rev:` names too
        assert set(pinned) == {rev} and re.fullmatch(r"[0-9a-f]{40}", rev), (lines, rev)
    return rev


def test_the_install_lines_and_the_pre_commit_recipe_name_one_ref_of_the_repository():
    """No runnable line asks an index for `fancli-init` while none is published (the extras' packages are
    named themselves); the pre-commit recipe names the project's repository."""
    _pinned_ref()
    assert _yaml_block("repos:")["repos"][0]["repo"] == REPOSITORY


def test_the_pinned_ref_is_a_commit_of_this_repository_with_the_hook_and_working_hints():
    """The commit (or tag) exists in this repository's history, so in its public home once main is pushed;
    there, .pre-commit-hooks.yaml has the README's hook running `fancli check`, the package is
    `fancli-init`, and no message tells its user to install `fancli-init[…]` from an index."""
    import yaml

    ref = _pinned_ref()
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() != "false":
        pytest.skip("not a git checkout with its history")
    assert _git("merge-base", "--is-ancestor", f"{ref}^{{commit}}", "HEAD").returncode == 0, f"{ref} is not in HEAD's history"
    hooks = {hook["id"]: hook for hook in yaml.safe_load(_git("show", f"{ref}:.pre-commit-hooks.yaml").stdout)}
    for hook in _yaml_block("repos:")["repos"][0]["hooks"]:
        assert hooks[hook["id"]]["entry"] == "fancli check"
    assert tomllib.loads(_git("show", f"{ref}:pyproject.toml").stdout)["project"]["name"] == "fancli-init"
    assert _git("grep", "-n", "fancli-init\\[", ref, "--", "fancli").stdout == ""


def test_the_actions_recipe_installs_the_pinned_ref_then_runs_fancli_check():
    steps = {step.get("name"): step for step in _yaml_block("jobs:")["jobs"]["init-drift"]["steps"]}
    ref = _pinned_ref()
    assert ref in steps["Install"]["run"] or steps["Install"]["run"].endswith(f"fancli-init=={ref[1:]}")
    assert steps["Init drift check"]["run"].startswith("fancli check ")


def test_the_pre_commit_hook_runs_fancli_check_with_the_readme_args(tmp_path, monkeypatch):
    """What pre-commit runs for the README's hook at the repository's root (pass_filenames false): the
    hook's entry and the recipe's args. A model initialised as configured passes; a changed configuration
    is drift, exit 1."""
    import shlex

    import torch
    import yaml

    definitions = {hook["id"]: hook for hook in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    hook, = _yaml_block("repos:")["repos"][0]["hooks"]
    definition = definitions[hook["id"]]
    assert definition["pass_filenames"] is False and definition["always_run"] is True
    program, *args = shlex.split(definition["entry"]) + hook.get("args", [])
    assert program == "fancli"
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.init.kaiming_normal_(torch.empty(256, 128), nonlinearity="relu", generator=generator)
    torch.save({"fc.weight": weight, "fc.bias": torch.zeros(256)}, tmp_path / "model.pt")
    config = "source: model.pt\ndefaults: {scheme: kaiming_normal, mode: %s, nonlinearity: relu}\n"
    (tmp_path / "fancli.yaml").write_text(config % "fan_in")
    monkeypatch.chdir(tmp_path)
    assert run("check", "--update").code == 0
    assert run(*args).code == 0
    (tmp_path / "fancli.yaml").write_text(config % "fan_out")
    assert run(*args).code == 1
