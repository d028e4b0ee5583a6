"""`fancli scale`: the width sweep (coordinate check) and μP's base-shape check.

The models are built here as mup's examples build them (no mup import): a ReLU MLP in μP for Adam (Tensor
Programs V, Table 3: input std 1/√d_in, hidden 1/√width trained at lr·base/width, a zero-initialised readout
trained at lr·base/width) and the same MLP in the standard parametrization (every std 1/√fan_in, one lr).
The oracle for the slopes is numpy's polyfit on activations these tests record with their own hooks.
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from helpers import run  # noqa: E402
from torch import nn  # noqa: E402

MODULE = "fancli_test_scale_mlp"
MLP_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    D_IN, D_OUT, BASE = 16, 16, 16

    def mlp(width, mup=True, bad_scale=False):
        net = nn.Sequential(nn.Linear(D_IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                            nn.Linear(width, D_OUT, bias=False))
        nn.init.normal_(net[0].weight, 0.0, D_IN ** -0.5)
        nn.init.normal_(net[2].weight, 0.0, width ** -0.5)
        nn.init.normal_(net[4].weight, 0.0, width ** -0.5)
        nn.init.zeros_(net[0].bias)
        nn.init.zeros_(net[2].bias)
        if mup:
            nn.init.zeros_(net[4].weight)
            net[2].weight.lr_scale = BASE / width
            net[4].weight.lr_scale = BASE / width
        if bad_scale:
            net[2].weight.lr_scale = "fast"
        return net
""")
WIDTHS = (64, 128, 256, 512)
SWEEP = ("--width", ",".join(map(str, WIDTHS)), "--lr", "0.02", "--batch", "64", "--steps", "3")


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """The MLP module importable as a factory source; the working directory a fresh folder."""
    (tmp_path / f"{MODULE}.py").write_text(MLP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return f"{MODULE}:mlp"


def _sweep_json(factory: str, *extra: str):
    result = run("scale", factory, *SWEEP, "-f", "json", *extra)
    return result, (json.loads(result.out) if result.out else None)


def test_mup_mlp_is_flat_and_exits_0(factory):
    result, doc = _sweep_json(factory)
    assert result.code == 0, result.err
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert {"0", "1", "2", "3", "4"} <= set(layers)
    for layer in doc["layers"]:
        assert layer["verdict"] in ("flat", "zero"), layer
        assert all(s is None or abs(s) <= 0.2 for s in layer["slopes"]), layer
    # the zero-initialised readout outputs 0 at step 0 at every width, then Θ(1) values that do not scale
    assert layers["4"]["verdicts"][0] == "zero" and layers["4"]["verdicts"][1:] == ["flat"] * 3
    assert doc["ok"] is True and doc["widths"] == list(WIDTHS)


def test_standard_mlp_grows_and_exits_1(factory):
    result, doc = _sweep_json(factory, "--kwargs", '{"mup": false}')
    assert result.code == 1, result.err
    layers = {layer["name"]: layer for layer in doc["layers"]}
    hidden, readout = layers["2"], layers["4"]
    # at init every std is 1/√fan_in, so nothing scales yet; Adam's updates then grow with fan_in
    assert hidden["verdicts"][0] == "flat" and readout["verdicts"][0] == "flat"
    assert all(s > 0.5 for s in hidden["slopes"][1:]), hidden
    assert readout["verdicts"][1] == "grows" and readout["verdict"] == "grows"
    assert doc["ok"] is False
    table = run("scale", factory, *SWEEP, "--kwargs", '{"mup": false}')
    assert table.code == 1 and "(grows)" in table.out.splitlines()[-1]


def _own_curves(build, widths, steps: int, lr: float, batch: int, seed: int) -> dict[str, list[list[float]]]:
    """The protocol as documented, run here with this test's own hooks: seed, build, N(0,1) inputs from a
    generator seeded the same, MSE to a N(0,1) target drawn after the first forward, Adam with each
    parameter at lr·lr_scale. name -> [step][width] mean |output|."""
    curves: dict[str, list[list[float]]] = {}
    for column, width in enumerate(widths):
        torch.manual_seed(seed)
        net = build(width)
        net.train()
        seen: dict[str, list[float]] = {}
        step = [0]

        def hook(name):
            def record(_module, _inputs, output):
                seen.setdefault(name, [0.0] * (steps + 1))[step[0]] = output.detach().abs().double().mean().item()
            return record

        for name, module in net.named_modules():
            if name and not list(module.children()):
                module.register_forward_hook(hook(name))
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, 16), generator=generator)
        opt = torch.optim.Adam([{"params": [p], "lr": lr * getattr(p, "lr_scale", 1.0)} for p in net.parameters()])
        target = None
        for step[0] in range(steps + 1):
            out = net(x)
            if step[0] == steps:
                break
            if target is None:
                target = torch.randn(out.shape, generator=generator)
            opt.zero_grad()
            ((out - target) ** 2).mean().backward()
            opt.step()
        for name, values in seen.items():
            curves.setdefault(name, [[0.0] * len(widths) for _ in range(steps + 1)])
            for t, value in enumerate(values):
                curves[name][t][column] = value
    return curves


@pytest.mark.parametrize("mup", [True, False])
def test_slopes_are_numpy_polyfit_of_the_activations(factory, mup):
    from fancli.scaling.sweep import width_sweep

    module = __import__(MODULE)
    sweep = width_sweep(factory, WIDTHS, kwargs={"mup": mup}, steps=2, lr=0.02, batch=32, seed=5)
    own = _own_curves(lambda w: module.mlp(w, mup=mup), WIDTHS, 2, 0.02, 32, 5)
    got = {layer.name: layer for layer in sweep.layers}
    assert set(own) <= set(got)
    for name, rows in own.items():
        for t, row in enumerate(rows):
            assert got[name].values[t] == pytest.approx(row, rel=1e-6)
            if all(v > 0 for v in row):
                expected = np.polyfit(np.log2(WIDTHS), np.log2(row), 1)[0]
                assert got[name].slopes[t] == pytest.approx(expected, rel=1e-6, abs=1e-9)
            else:
                assert got[name].slopes[t] is None


@pytest.mark.parametrize("widths", ["64", "a,128", "0,64", "64,64"])
def test_bad_widths_are_one_line(factory, widths):
    result = run("scale", factory, "--width", widths)
    assert result.code == 2 and result.out == ""
    assert len(result.err.strip().splitlines()) == 1 and "--width" in result.err and "Traceback" not in result.err


def test_a_factory_without_the_width_key_is_one_line(factory):
    result = run("scale", factory, "--width", "32,64", "--width-key", "size")
    assert result.code == 2 and result.out == ""
    line, = result.err.strip().splitlines()
    assert factory in line and "size" in line


@pytest.mark.parametrize("args, says", [
    (("--kwargs", '{"width": 8}'), "set 'width'"),
    (("--kwargs", '{"bad_scale": true}'), "lr_scale"),
    (("--width", "32,64", "--input-shape", "3,8,8"), "forward pass"),
])
def test_settings_a_sweep_cannot_run_are_one_line(factory, args, says):
    result = run("scale", factory, "--width", "32,64", *args)
    assert result.code == 2 and result.out == "", result.err
    line, = result.err.strip().splitlines()
    assert says in line


def test_plot_is_written_atomically_and_never_onto_a_file_the_run_reads(factory, tmp_path):
    result = run("scale", factory, *SWEEP, "--plot", "coords.png")
    assert result.code == 0, result.err
    assert (tmp_path / "coords.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["coords.png", f"{MODULE}.py"]
    base = tmp_path / "base.png"  # a base-shape file the run reads, whatever its name
    base.write_text(_bsh(mup=True))
    before = base.read_bytes()
    refused = run("scale", factory, *SWEEP, "--base-shapes", "base.png", "--plot", "base.png")
    assert refused.code == 2 and refused.out == "" and base.read_bytes() == before
    assert len(refused.err.strip().splitlines()) == 1 and "base.png" in refused.err


def _bsh(mup: bool) -> str:
    """A base-shape file as mup's save_base_shapes writes it: yaml.dump of name -> base_shape, base width 32."""
    import yaml

    shapes = {"0.weight": [32, None], "0.bias": [32], "2.weight": [32, 32], "2.bias": [32], "4.weight": [None, 32]}
    return "# This is a base shape file encoded in yaml\n" + yaml.dump(shapes, None, indent=4)


@pytest.mark.parametrize("mup", [True, False])
def test_base_shapes_check_init_stds_against_mup(factory, tmp_path, mup):
    (tmp_path / "mlp.bsh").write_text(_bsh(mup))
    kwargs = '{"mup": %s}' % str(mup).lower()
    result = run("scale", factory, *SWEEP, "--kwargs", kwargs, "--base-shapes", "mlp.bsh", "-f", "json")
    assert result.code == (0 if mup else 1), result.err
    params = {p["name"]: p for p in json.loads(result.out)["base_shapes"]}
    assert {name: (p["role"], p["infinite_dims"]) for name, p in params.items()} == {
        "0.weight": ("input", [0]), "0.bias": ("vector", [0]), "2.weight": ("hidden", [0, 1]),
        "2.bias": ("vector", [0]), "4.weight": ("output", [1])}
    module = __import__(MODULE)
    stds = []
    for width in WIDTHS:
        torch.manual_seed(0)
        stds.append(module.mlp(width, mup=mup)[2].weight.double().std(unbiased=False).item())
    hidden = params["2.weight"]
    assert hidden["stds"] == pytest.approx(stds, rel=1e-9)
    assert hidden["slope"] == pytest.approx(np.polyfit(np.log2(WIDTHS), np.log2(stds), 1)[0], rel=1e-9)
    assert hidden["expected_slope"] == pytest.approx(-0.5) and hidden["verdict"] == "matches"
    assert params["0.weight"]["verdict"] == "matches" and params["0.bias"]["verdict"] == "zero"
    # μP's readout std is 1/fan_in or 0: zero-initialised it is "zero"; the standard 1/√fan_in "differs"
    assert params["4.weight"]["expected_slope"] == pytest.approx(-1.0)
    assert params["4.weight"]["verdict"] == ("zero" if mup else "differs")


@pytest.mark.parametrize("text, says", [
    ("- 1\n- 2\n", "maps each parameter"),
    ("0.weight: [32, null]\n", "not in the file"),
    ("0.weight: nope\n", "expected a list of sizes"),
    ("a: !!python/object/apply:os.system ['echo hi']\n", "base.bsh"),
])
def test_bad_base_shape_files_are_one_line(factory, tmp_path, text, says):
    (tmp_path / "base.bsh").write_text(text)
    result = run("scale", factory, "--width", "32,64", "--base-shapes", "base.bsh")
    assert result.code == 2 and result.out == ""
    line, = result.err.strip().splitlines()
    assert says in line


def test_the_table_names_each_module_and_its_verdict(factory):
    result = run("scale", factory, *SWEEP, "--seeds", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "mean of 2 seeds" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[3:9]}
    assert rows["2"][1] == "Linear" and rows["2"][-1] == "flat" and rows["4"][-1] == "flat"
    assert lines[9] == "all 6 modules pass (--fail-on any)"
    assert all(math.isfinite(float(cell)) for cell in rows["2"][2:6])
    assert result.err == ""  # progress is drawn on a terminal only


def test_a_source_that_is_not_a_factory_is_one_line():
    from helpers import REPO

    result = run("scale", REPO / "sample_models" / "lenet5.yaml", "--width", "32,64")
    assert result.code == 2 and result.out == ""
    line, = result.err.strip().splitlines()
    assert "give a factory" in line


def test_module_names_from_the_users_code_are_inert():
    """A module named with a terminal escape is shown escaped in the table and kept exact in JSON."""
    import fancli
    from fancli.renderers.scale import render_scale, render_scale_json
    from fancli.scaling.sweep import width_sweep

    name = "\x1b[2Jevil\u202e"

    def build(width):
        net = nn.Sequential()
        net.add_module(name, nn.Linear(4, width))
        return net

    sweep = width_sweep(build, (8, 16), steps=1, batch=4)
    table = render_scale(sweep)
    assert fancli.render(sweep, "table") == table
    assert "\x1b" not in table and "\u202e" not in table and "\\x1b[2Jevil" in table
    document = render_scale_json(sweep)
    assert "\u202e" not in document and json.loads(document)["layers"][1]["name"] == name


def test_an_input_past_the_memory_bound_is_refused_before_it_is_drawn(factory):
    result = run("scale", factory, "--width", "32,64", "--input-shape", "65536,65536", "--batch", "8")
    assert result.code == 2 and result.out == ""
    line, = result.err.strip().splitlines()
    assert "GiB" in line and "smaller batch" in line
