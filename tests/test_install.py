"""A light install: torch is an extra. Sources that never run torch work without it; the rest say in one
line what to install (the distribution has a name of its own: "fancli" on the index is another project)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: The child behaves as if torch were not installed: `import torch` raises ModuleNotFoundError.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from fancli.cli import main; main(sys.argv[1:])"


def without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, cwd=REPO)


def test_torch_is_an_extra_not_a_dependency():
    assert not any(dep.startswith("torch") for dep in PYPROJECT["project"]["dependencies"])
    assert any(dep.startswith("torch") for dep in PYPROJECT["project"]["optional-dependencies"]["torch"])
    assert PYPROJECT["project"]["name"] != "fancli" and PYPROJECT["project"]["scripts"] == {"fancli": "fancli.cli:main"}


@pytest.mark.parametrize("source", ["sample_models/lenet5.yaml", "sample_models/lenet5.safetensors",
                                    "sample_models/tinynet_state_dict.pt"])
def test_sources_that_never_run_torch_work_without_it(source):
    done = without_torch("inspect", source, "--stats", "--format", "json")
    assert done.returncode == 0, done.stderr


def install_line(extra: str) -> str:
    """`pip install` of what an extra brings, as it works before any release: the package itself, not
    `fancli-init[extra]` (no index has that yet), its version range left to pip."""
    requirement = re.match(r"[\w.-]+(\[[\w,]+\])?", PYPROJECT["project"]["optional-dependencies"][extra][0])
    return f"pip install '{requirement[0]}'" if requirement[1] else f"pip install {requirement[0]}"


@pytest.mark.parametrize("args", [["inspect", "sample_models/tinynet_module.pt", "--trust"],
                                  ["inspect", "sample_models.models:lenet5"],
                                  ["propagate", "sample_models/lenet5.yaml"]])
def test_what_needs_torch_says_what_to_install(args):
    done = without_torch(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert install_line("torch") + " " in done.stderr


@pytest.mark.parametrize("extra, module, args", [
    ("dask", "distributed", ["--stats", "--cluster", "tcp://127.0.0.1:1"]),
    ("plot", "matplotlib", ["--plot", "{tmp}/trajectory.png"]),
])
def test_what_needs_another_extra_says_what_to_install(extra, module, args, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import → ModuleNotFoundError
    source = REPO / "sample_models" / "lenet5.safetensors"
    result = run("inspect", source, source, *(arg.format(tmp=tmp_path) for arg in args))
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert result.err.rstrip().endswith(install_line(extra)), result.err


def test_pre_commit_hooks_offer_a_light_and_a_system_variant():
    import yaml

    hooks = {hook["id"]: hook for hook in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert hooks["fancli-check"]["language"] == "python" and hooks["fancli-check-system"]["language"] == "system"


def release_workflow() -> dict:
    import yaml

    return yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())


def test_a_v_tag_builds_creates_the_github_release_and_publishes_by_trusted_publishing():
    workflow = release_workflow()
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key `on` as true
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    runs = [step.get("run", "") for step in build["steps"]]
    assert any(run.endswith("python -m build") for run in runs)
    assert any(run.startswith("gh release create \"$GITHUB_REF_NAME\" dist/*") for run in runs)
    assert publish["needs"] == "build" and publish["permissions"] == {"id-token": "write"}
    action = publish["steps"][-1]  # no password or token: PyPI trusts this workflow's OIDC identity
    assert action["uses"].startswith("pypa/gh-action-pypi-publish@") and "with" not in action


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the step runs tomllib, on the workflow's Python 3.11")
@pytest.mark.parametrize("tag, code", [(f"v{PYPROJECT['project']['version']}", 0), ("v0.0.0-not-it", 1)])
def test_a_tag_that_is_not_the_version_is_refused_before_anything_is_built(tag, code):
    import os

    steps = {step.get("name"): position for position, step in enumerate(release_workflow()["jobs"]["build"]["steps"])}
    assert steps["The tag names pyproject.toml's version"] < steps["Build the sdist and wheel"]
    check = release_workflow()["jobs"]["build"]["steps"][steps["The tag names pyproject.toml's version"]]["run"]
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"  # `python` is this one
    done = subprocess.run(["bash", "-c", check], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "GITHUB_REF_NAME": tag})
    assert done.returncode == code, done.stdout + done.stderr
