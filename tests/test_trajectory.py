"""Trajectories: `fancli inspect A B C …` gives each tensor's observed statistics per checkpoint, in
natural order, folded as inspect folds; every number checked against torch on the same tensors (float64)."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import pytest
from helpers import REPO, run

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

RUN = REPO / "sample_models" / "run"


def _oracle(tensor: "torch.Tensor") -> dict:
    values = tensor.to(torch.float64).reshape(-1)
    finite = values[torch.isfinite(values)]
    return {"count": values.numel(), "mean": finite.mean().item(), "std": finite.std().item(),
            "min": finite.min().item(), "max": finite.max().item(),
            "nonfinite": int((~torch.isfinite(values)).sum())}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Three checkpoints of a small model, shuffled steps: layers.{0..3} drawn at one std (layers.3 drawn
    at twice that std from step 20 on), `extra.weight` missing from step 5, NaN and Inf at step 20 in
    `head.weight`, a bias."""
    root = tmp_path_factory.mktemp("traj")
    gen = torch.Generator().manual_seed(1)
    written = {}
    for step in (5, 20, 100):
        tensors = {f"layers.{i}.weight": torch.randn(48, 48, generator=gen) * 0.05 for i in range(4)}
        if step >= 20:
            tensors["layers.3.weight"] = tensors["layers.3.weight"] * 2
        tensors["head.weight"] = torch.randn(10, 48, generator=gen) * 0.1
        tensors["head.bias"] = torch.randn(10, generator=gen)
        if step != 5:
            tensors["extra.weight"] = torch.randn(8, 48, generator=gen)
        if step == 20:
            tensors["head.weight"][0, 0] = float("nan")
            tensors["head.weight"][1, 2] = float("inf")
        path = root / f"ckpt-{step}" / "model.safetensors"
        path.parent.mkdir()
        safetensors_torch.save_file(tensors, str(path))
        written[step] = (path.parent, tensors)
    return written


def _shuffled(made) -> list[str]:
    paths = [str(folder) for folder, _ in made.values()]
    random.Random(3).shuffle(paths)
    return sorted(paths)  # as a shell expands ckpt-*: ckpt-100 before ckpt-20 before ckpt-5


def test_step_and_natural_order():
    from fancli.checks.trajectory import natural_order, step_of, steps

    assert natural_order(["run/step-10", "run/step-2", "run/step-1"]) == ["run/step-1", "run/step-2", "run/step-10"]
    assert step_of("run/step-120/") == 120
    assert step_of("ckpt_00500.pt") == 500
    assert step_of("run/step-3/model.safetensors") == 3
    assert step_of("model.safetensors") is None
    assert step_of("runs/7/tuned") is None  # a number further up is no step
    assert step_of("run-2/step-3.ckpt") == 3
    assert steps(["a-1", "b-1"]) == [None, None]  # not distinct: the names label the columns
    assert steps(["a-1", "b"]) == [None, None]


def test_json_is_torch_per_checkpoint_in_natural_order_with_gaps(made):
    result = run("inspect", *_shuffled(made), "-f", "json")  # several SOURCEs imply --stats
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["command"] == "trajectory" and data["fancli"]
    assert [s["step"] for s in data["sources"]] == [5, 20, 100]
    assert [s["path"] for s in data["sources"]] == [str(made[s][0]) for s in (5, 20, 100)]
    layers = {layer["param"]: layer for layer in data["layers"]}
    keys = set().union(*(tensors for _, tensors in made.values()))
    assert set(layers) == keys
    for index, step in enumerate((5, 20, 100)):
        tensors = made[step][1]
        for key in keys:
            got = layers[key]["observed"][index]
            if key not in tensors:
                assert got is None
                continue
            want = _oracle(tensors[key])
            assert got["count"] == want["count"] and got["nonfinite"] == want["nonfinite"]
            for field in ("mean", "std", "min", "max"):
                assert got[field] == pytest.approx(want[field], rel=1e-9, abs=1e-12), (key, step, field)
    assert layers["head.weight"]["observed"][1]["nonfinite"] == 2
    assert layers["layers.0.weight"]["shape"] == [48, 48]


def test_json_matches_the_published_schema(made):
    from schema_check import errors

    schema = json.loads((REPO / "docs" / "schema" / "trajectory.schema.json").read_text())
    document = json.loads(run("inspect", *_shuffled(made), "-f", "json").out)
    assert errors(document, schema) == []
    del document["layers"][0]["observed"][0]["nonfinite"]
    document["sources"][0]["step"] = "5"
    assert len(errors(document, schema)) == 2


def test_groups_expand_to_the_layers_and_agree_within_standard_errors(made):
    from fancli.folding import STD_ERRORS, expand

    data = json.loads(run("inspect", *_shuffled(made), "-f", "json").out)
    expanded = [key for group in data["groups"] for key in expand(group["pattern"])]
    assert sorted(expanded) == sorted(layer["param"] for layer in data["layers"])
    assert sum(group["count"] for group in data["groups"]) == len(data["layers"])
    by_pattern = {group["pattern"]: group for group in data["groups"]}
    # layers.3 is drawn at another std from step 20: it parts from layers.0..2, which fold
    assert "layers.{0..2}.weight" in by_pattern and "layers.3.weight" in by_pattern
    for group in data["groups"]:
        members = expand(group["pattern"])
        for step in (5, 20, 100):
            stds = sorted(_oracle(made[step][1][key])["std"] for key in members if key in made[step][1])
            for low, high in zip(stds, stds[1:]):  # sorted neighbours within STD_ERRORS standard errors
                n = made[step][1][members[0]].numel()
                assert high - low <= STD_ERRORS * high / math.sqrt(2 * n)


def test_table_shows_ranges_gaps_and_nonfinite_counts(made):
    result = run("inspect", *_shuffled(made), "--stats")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    header = next(line for line in lines if "name" in line)
    assert header.index("step 5") < header.index("step 20") < header.index("step 100")
    row = next(line for line in lines if "layers.{0..2}.weight ×3" in line)
    stds = [_oracle(made[5][1][f"layers.{i}.weight"])["std"] for i in range(3)]
    assert f"{min(stds):.4g}…{max(stds):.4g}" in row
    extra = next(line for line in lines if "extra.weight" in line).split("│")
    assert extra[3].strip() == "—"  # missing from step 5: a gap
    head = next(line for line in lines if "head.weight" in line).split("│")
    assert "⚠2 NaN/Inf" in head[4] and "NaN" not in head[3]
    assert "head.bias" not in result.out and "--all" in result.out
    assert "head.bias" in run("inspect", *_shuffled(made), "--all").out
    expanded = run("inspect", *_shuffled(made), "--expand").out
    assert all(f"layers.{i}.weight" in expanded for i in range(4)) and "×3" not in expanded


def test_markdown_and_csv(made):
    markdown = run("inspect", *_shuffled(made), "-f", "markdown")
    assert markdown.code == 0 and "| name | shape | step 5 | step 20 | step 100 |" in markdown.out
    table = run("inspect", *_shuffled(made), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(table.out)))
    present = sum(len(tensors) for _, tensors in made.values())
    assert len(rows) == present
    for row in rows:
        want = _oracle(made[int(row["step"])][1][row["param"]])
        assert float(row["std"]) == pytest.approx(want["std"], rel=1e-9)
        assert int(row["nonfinite"]) == want["nonfinite"]


def test_a_single_source_is_inspect_as_before():
    import fancli
    from fancli.renderers import render_text

    source = REPO / "sample_models" / "lenet5.safetensors"
    result = run("inspect", source, "--stats", "-f", "json")
    assert result.code == 0
    assert json.loads(result.out) == json.loads(render_text(fancli.inspect(str(source), stats=True), "json"))
    assert json.loads(result.out)["command"] == "inspect"


def test_options_of_one_report_are_refused_with_several_sources(made):
    for extra in (["--infer"], ["--scheme", "xavier_uniform"], ["--mode", "fan_out"]):
        result = run("inspect", *_shuffled(made), *extra)
        assert result.code == 2 and result.err.count("\n") == 1 and "several SOURCEs" in result.err, extra
    one = run("inspect", REPO / "sample_models" / "lenet5.safetensors", "--plot", "x.png")
    assert one.code == 2 and "several SOURCEs" in one.err
    missing = run("inspect", *_shuffled(made), "/nonexistent/ckpt-7")
    assert missing.code == 2 and "nonexistent" in missing.err


def test_the_sample_run_against_torch():
    """The shipped run (sample_models/make_run.py): every std in the JSON is torch's."""
    sources = sorted(str(p) for p in RUN.iterdir())
    data = json.loads(run("inspect", *sources, "-f", "json").out)
    steps = [s["step"] for s in data["sources"]]
    assert steps == sorted(steps) and len(steps) == len(sources) >= 3
    for index, source in enumerate(data["sources"]):
        tensors = safetensors_torch.load_file(f"{source['path']}/model.safetensors")
        for layer in data["layers"]:
            assert layer["observed"][index]["std"] == pytest.approx(_oracle(tensors[layer["param"]])["std"], rel=1e-9)


def test_plot(made, tmp_path, monkeypatch):
    import sys

    inputs = _shuffled(made)
    into_input = run("inspect", *inputs, "--plot", made[5][0] / "model.safetensors")
    assert into_input.code == 2 and "input" in into_input.err
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "matplotlib", None)  # not installed
        absent = run("inspect", *inputs, "--plot", tmp_path / "t.png")
    assert absent.code == 2 and "matplotlib" in absent.err and not (tmp_path / "t.png").exists()
    pytest.importorskip("matplotlib")
    for name, magic in (("t.png", b"\x89PNG"), ("t.svg", b"<?xml")):
        result = run("inspect", *inputs, "--plot", tmp_path / name, "-o", tmp_path / "t.json", "-f", "json")
        assert result.code == 0, result.err
        assert (tmp_path / name).read_bytes().startswith(magic)
        assert json.loads((tmp_path / "t.json").read_text())["command"] == "trajectory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.png", "t.svg"]


# --- the NaN/Inf gate of `fancli check --stats` ----------------------------------------------------------


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A checkpoint whose weights follow its configuration (kaiming_normal, fan_in, relu, drawn by torch),
    its baseline, and a copy with NaN and Inf in two blocks."""
    root = tmp_path_factory.mktemp("gate")
    torch.manual_seed(0)
    clean = {f"blocks.{i}.weight": torch.nn.init.kaiming_normal_(torch.empty(64, 64), nonlinearity="relu")
             for i in range(3)}
    clean["head.weight"] = torch.nn.init.kaiming_normal_(torch.empty(10, 64), nonlinearity="relu")
    broken = {key: value.clone() for key, value in clean.items()}
    broken["blocks.0.weight"][3, 4] = float("nan")
    broken["blocks.1.weight"][0, :3] = float("inf")
    for name, tensors in (("clean", clean), ("broken", broken)):
        folder = root / name
        folder.mkdir()
        safetensors_torch.save_file(tensors, str(folder / "model.safetensors"))
        (folder / "fancli.yaml").write_text("source: model.safetensors\n"
                                            "defaults: {scheme: kaiming_normal, mode: fan_in, nonlinearity: relu}\n")
        assert run("check", "--update", "--config", folder / "fancli.yaml").code == 0
    return root, broken


def test_check_stats_fails_on_nan_and_inf_whatever_the_baseline(gated):
    root, broken = gated
    clean = run("check", "--stats", "--config", root / "clean" / "fancli.yaml")
    assert clean.code == 0, clean.out + clean.err
    assert "NaN" not in clean.out
    plain = run("check", "--config", root / "broken" / "fancli.yaml")
    assert plain.code == 0  # without --stats no value is read
    failed = run("check", "--stats", "--config", root / "broken" / "fancli.yaml")
    assert failed.code == 1
    bad = {key: int((~torch.isfinite(value)).sum()) for key, value in broken.items() if not value.isfinite().all()}
    assert bad == {"blocks.0.weight": 1, "blocks.1.weight": 3}
    line = next(line for line in failed.out.splitlines() if "NaN/Inf" in line and "blocks" in line)
    total = sum(broken[key].numel() for key in bad)
    assert line == f"blocks.{{0,1}}.weight ×2: {sum(bad.values())} of {total:,} values NaN/Inf"
    assert "blocks.2" not in failed.out.split("NaN/Inf values", 1)[1].split("observed weights")[0]
    data = json.loads(run("check", "--stats", "-f", "json", "--config", root / "broken" / "fancli.yaml").out)
    assert data["ok"] is False
    assert {item["param"]: item["nonfinite"] for item in data["nonfinite"]} == bad
    markdown = run("check", "--stats", "-f", "markdown", "--config", root / "broken" / "fancli.yaml")
    assert markdown.code == 1 and "❌" in markdown.out and "NaN/Inf" in markdown.out


def test_the_library_check_fails_on_nan_too(gated):
    import fancli

    root, _ = gated
    result = fancli.check_init(config=root / "broken" / "fancli.yaml", stats=True)
    assert not result.ok and [n.param for n in result.nonfinite] == ["blocks.0.weight", "blocks.1.weight"]
    assert fancli.check_init(config=root / "clean" / "fancli.yaml", stats=True).ok
    with pytest.raises(AssertionError, match="NaN/Inf"):
        fancli.assert_init(config=root / "broken" / "fancli.yaml", stats=True)


def test_the_library_function_gives_the_same_trajectory(made):
    from fancli import trajectory

    found = trajectory(_shuffled(made))
    assert [c.step for c in found.checkpoints] == [5, 20, 100]
    by_param = {track.param: track for track in found.tracks}
    for index, step in enumerate((5, 20, 100)):
        for key, tensor in made[step][1].items():
            assert by_param[key].observed[index].std == pytest.approx(_oracle(tensor)["std"], rel=1e-9)


def test_the_readme_shows_the_trajectory_plot_it_says_how_to_make():
    readme = (REPO / "README.md").read_text()
    assert "fancli inspect sample_models/run/step-* --plot docs/trajectory.png" in readme
    assert "](docs/trajectory.png)" in readme
    image = REPO / "docs" / "trajectory.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size < 100_000


def test_progress_bar_path_and_sources_named_without_steps(made, tmp_path, monkeypatch):
    """Past the progress threshold the numbers are the same; sources whose names give no steps label the
    columns by name, shown escaped (a name is text from the file system)."""
    import shutil

    import fancli.cli.run

    first, second = tmp_path / "base\x1b[J", tmp_path / "tuned"
    shutil.copytree(made[5][0], first)
    shutil.copytree(made[100][0], second)
    quiet = json.loads(run("inspect", first, second, "-f", "json").out)
    assert [s["step"] for s in quiet["sources"]] == [None, None]
    monkeypatch.setattr(fancli.cli.run, "PROGRESS_BYTES", 0)
    assert json.loads(run("inspect", first, second, "-f", "json").out) == quiet
    for fmt in ("table", "markdown"):
        shown = run("inspect", first, second, "-f", fmt)
        assert shown.code == 0 and "\x1b" not in shown.out and "tuned" in shown.out


def test_a_tensor_that_changes_shape_between_checkpoints_is_said(tmp_path):
    for step, rows in ((1, 8), (2, 8), (3, 12)):
        (tmp_path / f"step-{step}").mkdir()
        safetensors_torch.save_file({"grow.weight": torch.randn(rows, 4), "keep.weight": torch.randn(4, 4)},
                                    str(tmp_path / f"step-{step}" / "model.safetensors"))
    result = run("inspect", *(tmp_path / f"step-{step}" for step in (1, 2, 3)), "--format", "json")
    assert result.code == 0, result.err
    notes = json.loads(result.out)["notes"]
    assert [note for note in notes if "grow.weight" in note] == [
        "grow.weight: [8, 4] becomes [12, 4] at step 3 (its statistics on either side are of different tensors)"]
    assert not any("keep.weight" in note for note in notes)
