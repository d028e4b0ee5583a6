"""Output formats per command (`fancli.outputs`): a renderer registered for (command, format) is all a new
format needs, on the command line and in the library, and a command's --format offers exactly the formats it
has a renderer for, so none that would crash is offered."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run

from fancli import outputs

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
LENET = SAMPLES / "lenet5.safetensors"
RUN = [SAMPLES / "run" / "step-0", SAMPLES / "run" / "step-10"]


def _commands(tmp_path: Path) -> dict[str, tuple]:
    """Each command that has --format, with arguments that run it (exit 0), and the type its renderer gets."""
    from fancli.checks.check_result import CheckResult
    from fancli.checks.diff import DiffResult
    from fancli.checks.trajectory import Trajectory
    from fancli.report import Report

    baseline = tmp_path / "lock.json"
    assert run("check", LENET, "--update", "--baseline", baseline, "--no-config").code == 0
    return {
        "inspect": (("inspect", LENET), Report),
        "compare": (("compare", LENET), Report),
        "trajectory": (("inspect", *RUN), Trajectory),
        "diff": (("diff", LENET, SAMPLES / "lenet5.safetensors.index.json"), DiffResult),
        "check": (("check", LENET, "--baseline", baseline, "--no-config"), CheckResult),
        "explain": (("explain", "--shape", "64,3,7,7"), Report),
        "gain": (("gain", "relu"), list),
        "propagate": (("propagate", SAMPLES / "lenet5.yaml", "--draws", "1", "--batch", "2"), list),
    }


def _toy(command: str, seen: list) -> outputs.Renderer:
    def render(result, **options) -> str:
        seen.append((command, result))
        return f"<toy {command}>\n"

    return render


def test_a_registered_format_runs_every_command_through_the_registry_alone(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # propagate initialises the spec's layers in torch
    commands = _commands(tmp_path)
    seen: list = []
    for command in commands:
        monkeypatch.setitem(outputs.RENDERERS, (command, "toy"), _toy(command, seen))
    for command, (args, result_type) in commands.items():
        result = run(*args, "--format", "toy")
        assert (result.code, result.out) == (0, f"<toy {command}>\n"), (command, result.err)
        (got,) = [result for name, result in seen if name == command]
        assert isinstance(got, result_type), command


def test_a_format_one_command_lacks_is_never_offered_by_another(monkeypatch):
    monkeypatch.setitem(outputs.RENDERERS, ("inspect", "toy"), _toy("inspect", []))
    assert run("inspect", LENET, "-f", "toy").out == "<toy inspect>\n"
    assert "toy" in " ".join(run("inspect", "--help").out.split())
    compare = run("compare", LENET, "-f", "toy")
    assert compare.code == 2 and "'toy' is not one of" in compare.err and "compare --help" in compare.err
    trajectory = run("inspect", *RUN, "-f", "toy")  # inspect offers it; its trajectory has no renderer for it
    assert trajectory.code == 2 and trajectory.out == "" and len(trajectory.err.splitlines()) == 1
    assert "--format toy" in trajectory.err and "trajectory" in trajectory.err


def test_html_is_offered_where_it_is_written_and_refused_where_not():
    html = run("inspect", LENET, "-f", "html")
    assert html.code == 0 and html.out.startswith("<div") and "conv1.weight" in html.out
    for args in (("diff", LENET, LENET), ("inspect", *RUN), ("check", LENET, "--no-config")):
        refused = run(*args, "-f", "html")
        assert refused.code == 2 and "internal error" not in refused.err, args


def test_print_jupyter_and_check_render_look_their_renderer_up(tmp_path, monkeypatch):
    import fancli

    report = fancli.inspect(str(LENET))
    for fmt in ("table", "markdown", "html"):
        monkeypatch.setitem(outputs.RENDERERS, ("inspect", fmt), lambda result, fmt=fmt: f"<{fmt}>")
    assert (str(report), report._repr_markdown_(), report._repr_html_()) == ("<table>", "<markdown>", "<html>")
    assert fancli.render(report, "markdown") == "<markdown>"
    result = fancli.check_init(str(LENET), config=False, baseline=False)
    monkeypatch.setitem(outputs.RENDERERS, ("check", "toy"), lambda found: f"<toy {found.ok}>")
    assert result.render("toy") == fancli.render(result, "toy") == "<toy True>"
