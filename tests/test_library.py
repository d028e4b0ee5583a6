"""The library as a notebook and a user's pytest use it: objects in memory, short reprs, Jupyter tables,
`fancli.assert_init`; and the configuration found from a subfolder, overrides that match nothing, file modes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run

import fancli

LENET = REPO / "sample_models" / "lenet5.yaml"


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))


def test_a_module_a_state_dict_and_an_exported_program_are_read_in_memory():
    import torch

    net = _net()
    module = fancli.inspect(net)
    assert module.format == "module" and module.source == "<module Sequential>"
    conv = module.rows[0]
    assert conv.layer.groups == 2 and conv.fans.effective_fan_out == 36  # the module knows its groups
    flat = fancli.inspect(net.state_dict())
    assert flat.format == "state-dict" and [r.layer.param for r in flat.rows] == [r.layer.param for r in module.rows]
    assert [r.fans.fan_in for r in flat.rows] == [r.fans.fan_in for r in module.rows]
    assert fancli.inspect({"state_dict": net.state_dict(), "epoch": 3}).rows[0].layer.param == "0.weight"
    compared = fancli.compare(net, modes=("fan_in", "fan_out"))
    assert list(compared.rows[0].inits) == ["fan_in", "fan_out"]
    program = torch.export.export(torch.nn.Linear(3, 4), (torch.randn(2, 3),))
    assert [r.layer.shape for r in fancli.inspect(program).rows][0] == (4, 3)


def test_an_unreadable_object_is_a_type_error_that_says_what_fancli_takes():
    with pytest.raises(TypeError, match="nn.Module, a state_dict"):
        fancli.inspect(3.5)


def test_a_path_and_a_wrong_object_do_not_import_torch():
    code = ("import sys, pathlib, fancli\n"
            f"fancli.inspect(pathlib.Path({str(LENET)!r}))\n"
            "try:\n    fancli.inspect(object())\nexcept TypeError:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_report_has_a_short_repr_and_jupyter_tables():
    report = fancli.inspect(LENET)
    assert repr(report) == "<Report inspect lenet5.yaml: 5 layers, xavier_uniform fan_avg>"
    assert "| conv1.weight |" in report._repr_markdown_()
    html = report._repr_html_()
    assert html.count("<tr>") == 6 and "<td style=\"text-align:left\">conv1.weight</td>" in html
    assert "<Report compare lenet5.yaml: 5 layers, xavier_uniform fan_in vs fan_out>" == repr(fancli.compare(LENET))


def test_html_escapes_names_from_the_file():
    import torch

    hostile = {"<script>alert(1)</script>.weight": torch.zeros(3, 4)}
    html = fancli.inspect(hostile)._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_dir_lists_the_api():
    names = dir(fancli)
    for name in ("inspect", "compare", "load", "check_init", "assert_init", "render", "Report"):
        assert name in names and name in fancli.__all__
    assert callable(fancli.check_init) and callable(fancli.assert_init)
    assert not {"Any", "annotations", "importlib"} & set(names)  # the module's own imports are not the API


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert fancli.__version__ == version("fancli-init")


def test_print_shows_the_table_and_render_hides_biases_unless_asked():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    report = fancli.inspect(model)
    assert str(report) == fancli.render(report, "table")
    shown, every = fancli.render(report, "table"), fancli.render(report, "table", show_all=True)
    assert "0.weight" in shown and "0.bias" not in shown and "show_all=True" in shown
    assert "0.bias" in every and "2.bias" in every
    assert "0.bias" in fancli.render(report, "csv")  # machine formats keep every tensor


def _project(tmp_path: Path, config: str) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / "lenet5.yaml").write_text(LENET.read_text())
    (tmp_path / "fancli.yaml").write_text(config)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    return tmp_path


def test_assert_init_passes_on_the_baseline_and_fails_with_the_report(tmp_path, monkeypatch):
    net = _net()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fancli.yaml").write_text("defaults: {scheme: kaiming_uniform, mode: fan_in}\n")
    assert run("check", "--update", "--no-config", "--baseline", "fancli.lock.json", str(REPO / "sample_models" / "vgg_stack.yaml")).code == 0
    with pytest.raises(AssertionError, match=r"(?s)drift: .*added.*fancli check --update"):
        fancli.assert_init(net)
    import torch

    torch.save(net.state_dict(), tmp_path / "net.pt")
    assert run("check", "--update", "--baseline", "fancli.lock.json", str(tmp_path / "net.pt")).code == 0
    fancli.assert_init(net)  # the same layers: no drift
    result = fancli.check_init(net)
    assert result.ok and result.changes == []
    # torch's default init is not the configured kaiming_uniform fan_in (a=0): the weights say so
    with pytest.raises(AssertionError, match="MISMATCH"):
        fancli.assert_init(net, stats=True)
    with torch.no_grad():
        for layer in (net[0], net[3]):
            torch.nn.init.kaiming_uniform_(layer.weight, mode="fan_in")
    fancli.assert_init(net, stats=True)
    fancli.assert_init(net, config=False, baseline=False, stats=False)


def test_check_finds_the_config_in_a_parent_folder_and_reads_paths_from_there(tmp_path):
    root = _project(tmp_path, "source: lenet5.yaml\ndefaults: {scheme: kaiming_normal}\n")
    sub = root / "sub" / "deeper"
    update = subprocess.run([sys.executable, "-m", "fancli", "check", "--update"], cwd=sub, capture_output=True,
                            text=True)
    assert update.returncode == 0, update.stderr
    assert (root / "fancli.lock.json").is_file() and not (sub / "fancli.lock.json").exists()
    assert subprocess.run([sys.executable, "-m", "fancli", "check"], cwd=sub).returncode == 0


def test_the_search_stops_at_the_repository_root(tmp_path):
    from fancli.config import find_config

    (tmp_path / "fancli.yaml").write_text("defaults: {scheme: kaiming_normal}\n")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "pkg").mkdir()
    assert find_config(tmp_path / "repo" / "pkg") is None
    assert find_config(tmp_path) == tmp_path / "fancli.yaml"
    (tmp_path / "repo" / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no [tool.fancli]: not it
    assert find_config(tmp_path / "repo" / "pkg") is None
    (tmp_path / "repo" / "pyproject.toml").write_text("[tool.fancli]\nsource = 'm.yaml'\n")
    assert find_config(tmp_path / "repo" / "pkg") == tmp_path / "repo" / "pyproject.toml"


def test_an_override_that_matches_no_layer_is_a_warning(tmp_path, monkeypatch):
    """A warning, not an error: a removed layer is drift that `check` must still report with exit 1."""
    _project(tmp_path, "source: lenet5.yaml\noverrides:\n  - {match: 'fc*', scheme: xavier_normal}\n"
                       "  - {match: 'head', scheme: xavier_normal}\n")
    monkeypatch.chdir(tmp_path)
    for result in (run("check", "--update"), run("check"), run("inspect")):
        assert result.code == 0
        assert result.err.count("match 'head' matches no layer") == 1
        line = next(line for line in result.err.splitlines() if "head" in line)
        assert line.startswith("fancli: warning: ") and "fancli.yaml:4: overrides[1]:" in line
    assert "matches no layer" not in run("check", "--update").out
    with pytest.warns(UserWarning, match="match 'head' matches no layer"):
        fancli.check_init()


def test_a_drift_report_says_how_to_accept_the_change(tmp_path, monkeypatch):
    _project(tmp_path, "source: lenet5.yaml\n")
    monkeypatch.chdir(tmp_path)
    assert run("check", "--update").code == 0
    assert "--update" not in run("check").out
    (tmp_path / "fancli.yaml").write_text("source: lenet5.yaml\ndefaults: {scheme: xavier_normal}\n")
    (tmp_path / "lenet5.yaml").write_text(LENET.read_text().replace("scheme: xavier_uniform", "scheme: xavier_normal"))
    for fmt in ("table", "markdown"):
        drift = run("check", "-f", fmt)
        assert drift.code == 1 and "accept it with `fancli check --update`" in drift.out


def test_settings_are_valid_once_built_and_reach_the_report_whole():
    """One object from the caller to the analysis: canonical names as it is built, refused there when wrong,
    and the very object the report carries (nothing rebuilds or validates it again on the way)."""
    from fancli import api
    from fancli.report import Request, Settings

    settings = Settings(scheme="he_uniform", modes=["fan_out"], filters=["conv*"])
    assert (settings.scheme, settings.modes, settings.filters) == ("kaiming_uniform", ("fan_out",), ("conv*",))
    for wrong, message in (({"scheme": "kaiming"}, "unknown scheme 'kaiming'"), ({"modes": ("fan_in", "fan_in")}, "twice"),
                           ({"recipe": "gpt2", "scheme": "xavier_normal"}, "takes no --scheme")):
        with pytest.raises(fancli.SettingsError, match=message):
            Settings(**wrong)
    with pytest.raises(fancli.SettingsError, match="at least two modes"):
        Request("compare", settings)
    request = Request("compare", Settings(modes=("fan_in", "fan_avg")))
    report = api.run(fancli.load(LENET), request)
    assert report.settings is request.settings and list(report.rows[0].inits) == ["fan_in", "fan_avg"]


def test_the_cli_and_check_init_give_one_verdict_with_the_configurations_fans(tmp_path, monkeypatch):
    """`fancli check` makes its report (with a progress bar) and hands it to `api.check_report`, check_init's
    own verdict; the configuration's choices, `fans: effective` here, are on the configured model either way."""
    import json

    from fancli import api
    from fancli.config import load_config
    from fancli.report import Request

    _project(tmp_path, "source: dcgan.yaml\nfans: effective\n")
    (tmp_path / "dcgan.yaml").write_text((REPO / "sample_models" / "dcgan_generator.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert run("check", "--update").code == 0
    assert json.loads((tmp_path / "fancli.lock.json").read_text())["fans"] == "effective"
    assert fancli.check_init().ok and run("check").code == 0
    (tmp_path / "fancli.yaml").write_text("source: dcgan.yaml\n")  # torch's fans: the strided convs' std drift
    config = load_config()
    result = api.check_report(api.run(api.load_configured(None, config), Request()), config)
    assert not result.ok and result.changes == fancli.check_init().changes
    drift = json.loads(run("check", "-f", "json").out)
    assert drift["changes"] and len(drift["changes"]) == len(result.changes)


@pytest.mark.skipif(os.name != "posix", reason="umask")
def test_written_files_follow_the_umask(tmp_path, monkeypatch):
    _project(tmp_path, "source: lenet5.yaml\n")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert run("check", "--update").code == 0
        assert run("inspect", "-o", "out.md", "-f", "markdown").code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "fancli.lock.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out.md").stat().st_mode & 0o777 == 0o644


def _complete(*words: str) -> list[str]:
    """What the bash completion script receives for `fancli WORDS…` (the last word being typed)."""
    env = {**os.environ, "_FANCLI_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(("fancli", *words)),
           "COMP_CWORD": str(len(words))}
    done = subprocess.run([sys.executable, "-c", "from fancli.cli import main; main()"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.splitlines()


def test_completion_keeps_paths_and_completes_names():
    assert _complete("inspect", "sample_mod") == ["file,sample_mod"]  # the shell completes the path
    assert _complete("propagate", "sam") == ["file,sam"]
    assert _complete("inspect", "--scheme", "xav") == ["plain,xavier_normal", "plain,xavier_uniform"]
    assert "plain,glorot_uniform" in _complete("compare", "-s", "glo")
    assert _complete("compare", "x", "--mode", "fan_") == ["plain,fan_in", "plain,fan_out", "plain,fan_avg",
                                                          "plain,fan_geo_avg"]
    assert {"plain,gelu", "plain,relu"} <= set(_complete("inspect", "-n", ""))
    assert _complete("gain", "si") == ["plain,sigmoid", "plain,silu"]
    assert "plain,swish" in _complete("gain", "sw")
