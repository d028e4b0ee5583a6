"""MLX's own writer as the oracle: `mlx.core.save_safetensors` of an mlx.nn model, before and after `nn.quantize`;
the draws from MLX's own layer constructors (each `mx.random.uniform`/`normal` call recorded with its bounds),
the dequantized values from `mx.dequantize`, the counts from the model's own parameters. Skipped where mlx does
not install (`pip install "mlx[cpu]"` on Linux)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
from mlx.utils import tree_flatten  # noqa: E402


def _build():
    """The model, and each drawn array's (distribution, the bound or std MLX passed) by its values' id."""
    drawn: list[tuple[str, float, np.ndarray]] = []
    uniform, normal = mx.random.uniform, mx.random.normal

    def record_uniform(low=0.0, high=1.0, shape=(), *args, **kwargs):
        values = uniform(low, high, shape, *args, **kwargs)
        drawn.append(("uniform", float(high), np.array(values)))
        return values

    def record_normal(shape=(), *args, scale=1.0, **kwargs):
        values = normal(shape, *args, scale=scale, **kwargs)
        drawn.append(("normal", float(scale), np.array(values)))
        return values

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.conv = nn.Conv1d(64, 32, 3)
            self.conv2 = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(64, 128)
            self.out = nn.Linear(128, 64, bias=False)
            self.norm = nn.LayerNorm(64)

    mx.random.uniform, mx.random.normal = record_uniform, record_normal
    try:
        model = Model()
    finally:
        mx.random.uniform, mx.random.normal = uniform, normal
    return model, drawn


def _inspect(path) -> dict:
    result = run("inspect", path, "--all", "--stats", "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_mlx_recipe_is_what_mlx_draws(tmp_path):
    model, drawn = _build()
    params = dict(tree_flatten(model.parameters()))
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), params, metadata={"format": "mlx"})
    report = _inspect(path)
    rows = {row["param"]: row for row in report["layers"]}
    assert sorted(rows) == sorted(params) and report["settings"]["recipe"] == "mlx"
    assert report["summary"]["parameters"] == sum(value.size for value in params.values())
    checked = 0
    for name, value in params.items():
        row, values = rows[name], np.array(value)
        found = [(how, size) for how, size, made in drawn if made.shape == values.shape and np.array_equal(made, values)]
        if not found:  # mx.zeros / mx.ones: a constant
            assert row["constant"] == float(values.flat[0]) and np.all(values == values.flat[0]), name
            continue
        ((how, size),) = found
        if how == "uniform":
            assert row["bound"] == pytest.approx(size, rel=1e-6), name
        else:
            assert (row["distribution"], row["std"]) == ("normal", pytest.approx(size, rel=1e-6)), name
        checked += 1
    assert checked == 6  # emb, conv, conv2, fc weight and bias, out


def test_quantized_mlx_file_dequantized_as_mlx(tmp_path):
    model, _ = _build()
    before = sum(value.size for _, value in tree_flatten(model.parameters()))
    nn.quantize(model, group_size=64, bits=4)
    params = dict(tree_flatten(model.parameters()))
    path = tmp_path / "quantized.safetensors"
    mx.save_safetensors(str(path), params, metadata={"format": "mlx"})
    report = _inspect(path)
    rows = {row["param"]: row for row in report["layers"]}
    quantized = [name.rpartition(".")[0] for name in params if name.endswith(".scales")]
    assert sorted(quantized) == ["emb", "fc", "out"]
    for module in quantized:
        layer = getattr(model, module)
        values = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=4),
                          dtype=np.float64)
        row = rows[f"{module}.weight"]
        assert row["shape"] == list(values.shape) and row["params"] == values.size
        assert row["observed"]["mean"] == pytest.approx(values.mean(), rel=1e-6, abs=1e-9)
        assert row["observed"]["std"] == pytest.approx(values.std(ddof=1), rel=1e-6)
        assert rows[f"{module}.scales"]["kind"] == "quant_scale" and rows[f"{module}.biases"]["kind"] == "quant_aux"
    # every weight by its logical elements (the model's own count before quantizing), plus the scales and biases
    # the quantized model holds as arrays of its own
    aux = sum(value.size for name, value in params.items() if name.endswith((".scales", ".biases")))
    assert report["summary"]["parameters"] == before + aux
    assert [row["param"] for row in report["layers"] if len(row["shape"]) >= 2 and row["kind"] in
            ("linear", "embedding", "conv1d", "conv2d")] == ["conv2.weight", "conv.weight", "emb.weight", "fc.weight",
                                                              "out.weight"]
