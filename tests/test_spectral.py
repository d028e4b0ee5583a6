"""`--spectral` (issue 32): ‖W‖₂ and the stable rank equal numpy's on the values the file holds (dense, conv,
fused, stacked experts, grouped, bf16, FP8), the expected ‖W‖₂ at init is torch's draws', orthogonal inits are
recognised, and the numbers do not depend on --jobs. Oracles: numpy's `np.linalg.norm(W, 2)` and torch's inits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import REPO, run, run_child
from safetensors.torch import save_file

import fancli
from fancli.layer import Layer, Model
from fancli.loaders.torch_tensor import TorchTensorData
from fancli.weights import spectral as spectral_mod


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The values the file holds, as float64 (bf16 and FP8 widened by torch, the format's own decoder)."""
    return tensor.to(torch.float64).numpy()


def _oracle(matrix: np.ndarray) -> tuple[float, float]:
    """‖W‖₂ and the stable rank ‖W‖_F²/‖W‖₂², by numpy."""
    norm = float(np.linalg.norm(matrix, 2))
    return norm, float(np.linalg.norm(matrix) ** 2) / norm**2


def _rows(path, *options) -> dict[str, dict]:
    result = run("inspect", path, "--spectral", "-f", "json", *options)
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return {
        "dense.weight": randn(40, 70) * 0.1,
        "big.weight": randn(600, 700) * 0.02,  # short side above EXACT_DIM: Lanczos
        "conv.weight": randn(16, 8, 3, 3) * 0.1,
        "attn.in_proj_weight": randn(96, 32) * 0.1,  # q, k, v fused
        "half.weight": (randn(48, 64) * 0.1).to(torch.bfloat16),
        "eight.weight": (randn(48, 64) * 0.1).to(torch.float8_e4m3fn),
    }


def test_spectral_norm_and_stable_rank_equal_numpys(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    rows = _rows(path)
    for key, tensor in tensors.items():
        matrix = _as_numpy(tensor).reshape(tensor.shape[0], -1)  # a conv as [out, in·k]
        norm, rank = _oracle(matrix)
        row = rows[key]
        assert row["spectral_norm"] == pytest.approx(norm, rel=1e-6), key
        assert row["stable_rank"] == pytest.approx(rank, rel=1e-6), key
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(tensor.float())
        assert row["spectral_ratio"] == pytest.approx(norm / math.sqrt(fan_out / fan_in), rel=1e-6), key
    parts = rows["attn.in_proj_weight"]["spectral_parts"]["spectral_norm"]
    fused = _as_numpy(tensors["attn.in_proj_weight"])
    assert parts == pytest.approx([np.linalg.norm(fused[i * 32 : (i + 1) * 32], 2) for i in range(3)], rel=1e-6)
    assert any("[out, in·k]" in note for note in rows["conv.weight"]["notes"])


def _model(layers: list[tuple[str, str, torch.Tensor, dict]]) -> Model:
    return Model("memory", "test", tuple(
        Layer(key.rpartition(".")[0], key, kind, tuple(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."),
              data=TorchTensorData(tensor), **extra) for key, kind, tensor, extra in layers))


def test_experts_and_groups_are_block_diagonal_with_each_part_listed():
    generator = torch.Generator().manual_seed(1)
    experts = torch.randn(4, 24, 40, generator=generator)
    grouped = torch.randn(32, 4, 3, 3, generator=generator)  # 8 groups of [4 out, 4·9]
    report = fancli.inspect(_model([("moe.experts.w", "experts", experts, {}),
                                    ("conv.weight", "conv2d", grouped, {"groups": 8, "stride": (1, 1)})]),
                            spectral=True)
    moe, conv = (row.spectral for row in report.rows)
    each = [np.linalg.norm(_as_numpy(experts[e]), 2) for e in range(4)]
    assert [part.norm for part in moe.parts] == pytest.approx(each, rel=1e-6)
    assert moe.whole.norm == pytest.approx(max(each), rel=1e-6)  # the block-diagonal operator's norm
    blocks = _as_numpy(grouped).reshape(8, 4, 36)
    assert [part.norm for part in conv.parts] == pytest.approx([np.linalg.norm(b, 2) for b in blocks], rel=1e-6)


@pytest.mark.parametrize("init,scheme,nonlinearity,shape", [
    (lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu"), "kaiming_normal", "relu", (256, 384)),
    (torch.nn.init.xavier_uniform_, "xavier_uniform", "linear", (320, 256)),
    (lambda w: torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5)), "torch_default", None, (256, 512)),
    (lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu"), "kaiming_normal", "relu", (256, 32, 3, 3)),
], ids=["kaiming_normal", "xavier_uniform", "torch_default", "conv"])
def test_expected_norm_is_within_5_percent_of_torchs_draws(init, scheme, nonlinearity, shape):
    torch.manual_seed(2)  # torch's inits draw from the global generator
    draws = [np.linalg.norm(_as_numpy(init(torch.empty(*shape))).reshape(shape[0], -1), 2) for _ in range(20)]
    kind = "conv2d" if len(shape) == 4 else "linear"
    report = fancli.inspect(_model([("layer.weight", kind, init(torch.empty(*shape)), {})]), scheme=scheme,
                            nonlinearity=nonlinearity, spectral=True)
    assert report.rows[0].spectral.whole.expected == pytest.approx(np.mean(draws), rel=0.05)


def test_orthogonal_inits_are_recognised():
    torch.manual_seed(3)
    tall = torch.nn.init.orthogonal_(torch.empty(300, 200), gain=2.0)
    square = torch.nn.init.orthogonal_(torch.empty(600, 600))  # Lanczos: by its stable rank
    normal = torch.randn(300, 200)
    rows = fancli.inspect(_model([("a.weight", "linear", tall, {}), ("b.weight", "linear", square, {}),
                                  ("c.weight", "linear", normal, {})]), spectral=True).rows
    assert [row.spectral.orthogonal for row in rows] == [True, True, False]
    assert rows[0].spectral.whole.norm == pytest.approx(2.0, rel=1e-6)
    assert rows[0].spectral.spread == pytest.approx(1.0, abs=1e-5)


def test_jobs_1_and_2_give_identical_numbers(monkeypatch, tmp_path):
    import fancli.weights.parallel

    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)  # pool even for small tensors
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path))
    one = run("inspect", path, "--spectral", "-f", "json", "--jobs", "1")
    two = run("inspect", path, "--spectral", "-f", "json", "--jobs", "2")
    assert one.code == two.code == 0 and one.out == two.out and '"spectral_norm"' in one.out


def test_compare_and_csv_and_table_show_the_columns():
    path = REPO / "sample_models" / "lenet5.safetensors"
    table = run("compare", path, "--spectral")
    assert table.code == 0 and "‖W‖₂" in table.out and "stable rank" in table.out
    csv = run("inspect", path, "--spectral", "-f", "csv")
    assert csv.code == 0 and "spectral_norm" in csv.out.splitlines()[0]


@pytest.mark.parametrize("missing", ["scipy", "threadpoolctl"])
def test_without_the_extra_one_line_names_it(missing):
    done = run_child(["inspect", REPO / "sample_models" / "lenet5.safetensors", "--spectral"], code=2,
                     hidden=(missing,))
    assert done.returncode == 0, done.stderr
    assert "pip install scipy threadpoolctl" in done.stderr and "Traceback" not in done.stderr
    assert "fancli[" not in done.stderr  # the public index's `fancli` is another project


def test_lanczos_start_vector_is_fixed():
    matrix = np.random.default_rng(4).standard_normal((700, 600)).astype(np.float32)
    assert spectral_mod.spectrum(matrix) == spectral_mod.spectrum(matrix.copy())


def test_json_fields_are_in_the_published_schema():
    from schema_check import errors

    schema = json.loads((REPO / "docs" / "schema" / "report.schema.json").read_text())
    result = run("inspect", REPO / "sample_models" / "tinynet.safetensors", "--spectral", "-f", "json")
    document = json.loads(result.out)
    assert errors(document, schema) == []
    declared = schema["$defs"]["layer"]["properties"]
    fused = next(row for row in document["layers"] if row["param"] == "attn.in_proj_weight")
    assert {"spectral_norm", "stable_rank", "spectral_ratio", "expected_spectral_norm", "spectral_parts"} <= set(fused)
    assert set(fused) <= set(declared)
    assert set(fused["spectral_parts"]) <= set(declared["spectral_parts"]["properties"])


def test_diff_gives_the_spectral_norm_of_the_update(tmp_path):
    generator = torch.Generator().manual_seed(5)
    a = {key: torch.randn(*shape, generator=generator)
         for key, shape in (("fc.weight", (64, 32)), ("conv.weight", (8, 4, 3, 3)), ("frozen.weight", (16, 16)))}
    b = {key: value + 0.01 * torch.randn(value.shape, generator=generator) if key != "frozen.weight" else value
         for key, value in a.items()}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    result = run("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--spectral", "-f", "json")
    assert result.code == 0, result.err
    found = {item["param"]: item for item in json.loads(result.out)["tensors"]}
    for key in ("fc.weight", "conv.weight"):
        delta = (_as_numpy(b[key]) - _as_numpy(a[key])).reshape(a[key].shape[0], -1)
        norm = np.linalg.norm(delta, 2)
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(a[key])
        assert found[key]["delta_spectral_norm"] == pytest.approx(norm, rel=1e-6)
        assert found[key]["delta_spectral_ratio"] == pytest.approx(norm / math.sqrt(fan_out / fan_in), rel=1e-6)
    assert found["frozen.weight"]["delta_spectral_norm"] == 0
    plain = run("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-f", "json")
    assert "delta_spectral_norm" not in plain.out  # only where asked for


def test_trajectories_give_the_norm_per_checkpoint(tmp_path):
    from schema_check import errors

    generator = torch.Generator().manual_seed(6)
    weights = [torch.randn(32, 24, generator=generator) * (1 + step) for step in range(3)]
    for step, weight in enumerate(weights):
        save_file({"fc.weight": weight, "fc.bias": torch.zeros(32)}, str(tmp_path / f"step-{step}.safetensors"))
    paths = [tmp_path / f"step-{step}.safetensors" for step in range(3)]
    result = run("inspect", *paths, "--spectral", "-f", "json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    schema = json.loads((REPO / "docs" / "schema" / "trajectory.schema.json").read_text())
    assert errors(document, schema) == []
    tracks = {track["param"]: track for track in document["layers"]}
    assert tracks["fc.weight"]["spectral_norm"] == pytest.approx(
        [np.linalg.norm(_as_numpy(w), 2) for w in weights], rel=1e-6)
    assert tracks["fc.bias"]["spectral_norm"] == [None, None, None]
    table = run("inspect", *paths, "--spectral")
    assert "‖W‖₂ step 2" in table.out


# -- the independent review's findings: other layouts, values that are not finite, zero layers ---------------

def _weights_h5(path, layers: dict[str, list[np.ndarray]]) -> None:
    """Keras 3's `.weights.h5` layout, `layers/<name>/vars/<i>`, as tests/test_keras_files.py writes it."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as handle:
        handle.create_group("vars").attrs["name"] = "sequential"
        for name, values in layers.items():
            entry = handle.create_group(f"layers/{name}").create_group("vars")
            entry.attrs["name"] = name
            for index, value in enumerate(values):
                entry[str(index)] = value


def test_a_flax_conv_kernel_is_the_matrix_of_its_taps_and_inputs_by_outputs(tmp_path):
    msgpack = pytest.importorskip("msgpack")
    kernel = np.random.default_rng(0).standard_normal((3, 3, 16, 32)).astype(np.float32)  # [kh, kw, in, out]
    array = msgpack.ExtType(1, msgpack.packb((kernel.shape, kernel.dtype.name, kernel.tobytes("C")), use_bin_type=True))
    path = tmp_path / "flax.msgpack"
    path.write_bytes(msgpack.packb({"params": {"Conv_0": {"kernel": array}}}, use_bin_type=True))
    row = _rows(path)["Conv_0.kernel"]
    norm, rank = _oracle(kernel.reshape(-1, 32).astype(np.float64))
    assert row["spectral_norm"] == pytest.approx(norm, rel=1e-6)
    assert row["stable_rank"] == pytest.approx(rank, rel=1e-6)


def test_a_keras_depthwise_kernel_is_block_diagonal_by_channel(tmp_path):
    kernel = np.random.default_rng(0).standard_normal((3, 3, 8, 2)).astype(np.float32)  # [kh, kw, in, mult]
    path = tmp_path / "dw.weights.h5"
    _weights_h5(path, {"depthwise_conv2d": [kernel, np.zeros(16, np.float32)]})
    row = _rows(path)["layers.depthwise_conv2d.vars.0"]
    blocks = [float(np.linalg.norm(kernel[:, :, c, :].reshape(9, 2).astype(np.float64), 2)) for c in range(8)]
    assert row["spectral_norm"] == pytest.approx(max(blocks), rel=1e-6)
    assert row["spectral_parts"]["spectral_norm"] == pytest.approx(blocks, rel=1e-6)


def test_an_orthogonal_init_is_expected_at_its_gain(tmp_path):
    """Keras' LSTM recurrent kernel is `orthogonal`: [H, 4H] with orthonormal rows, every singular value 1."""
    units = 64
    recurrent = np.linalg.qr(np.random.default_rng(1).standard_normal((4 * units, units)))[0].T.astype(np.float32)
    kernel = np.random.default_rng(2).uniform(-0.1, 0.1, (32, 4 * units)).astype(np.float32)
    path = tmp_path / "lstm.weights.h5"
    _weights_h5(path, {"lstm/cell": [kernel, recurrent, np.zeros(4 * units, np.float32)]})
    row = _rows(path)["layers.lstm.cell.vars.1"]
    assert row["spectral_norm"] == pytest.approx(1.0, rel=1e-5)
    assert row["expected_spectral_norm"] == pytest.approx(1.0, rel=1e-9)
    assert row["orthogonal"] is True
    # each gate [H, H] is a block of a Haar orthogonal matrix, not orthogonal itself: Wachter's edge, √3/2
    gates = [float(np.linalg.norm(recurrent[:, g * units:(g + 1) * units].astype(np.float64), 2)) for g in range(4)]
    assert row["spectral_parts"]["spectral_norm"] == pytest.approx(gates, rel=1e-6)
    for gate, expected in zip(gates, row["spectral_parts"]["expected_spectral_norm"]):
        assert expected == pytest.approx(math.sqrt(3) / 2) and gate == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_tensor_holding_nan_or_inf_is_a_row_without_a_norm(tmp_path, bad):
    weight = torch.randn(64, 32)
    weight[0, 0] = bad
    path = tmp_path / "diverged.safetensors"
    save_file({"fc.weight": weight, "ok.weight": torch.randn(8, 8)}, str(path))
    rows = _rows(path)
    assert rows["fc.weight"]["spectral_norm"] is None and rows["fc.weight"]["orthogonal"] is False
    assert any("NaN or inf" in note for note in rows["fc.weight"]["notes"])
    assert not any("Lanczos" in note for note in rows["fc.weight"]["notes"])
    assert rows["ok.weight"]["spectral_norm"] > 0  # the other tensors of the file keep theirs


@pytest.mark.parametrize("shape", [(64, 32), (600, 700)])  # the exact path, and the one that runs Lanczos
def test_a_zero_initialised_layer_has_norm_zero(tmp_path, shape):
    path = tmp_path / "zero.safetensors"
    save_file({"fc.weight": torch.zeros(*shape)}, str(path))
    row = _rows(path)["fc.weight"]
    assert row["spectral_norm"] == 0.0


@pytest.mark.parametrize("scale", [1e-30, 1e-17, 1e18])
def test_lanczos_is_exact_for_tiny_and_huge_weights(scale):
    """Lanczos' float32 products would underflow (1e-30) or overflow (1e18) on W's own squares."""
    matrix = np.random.default_rng(1).standard_normal((700, 900)).astype(np.float32) * np.float32(scale)
    found = spectral_mod.spectrum(matrix)
    assert found.norm == pytest.approx(np.linalg.norm(matrix.astype(np.float64), 2), rel=1e-6)


def test_quantization_scales_have_no_operator_norm():
    scales = torch.rand(16, 2)
    report = fancli.inspect(_model([("proj.scales", "quant_scale", scales, {}),
                                    ("proj.weight", "linear", torch.randn(16, 8), {})]), spectral=True)
    scale_row, weight_row = report.rows
    assert scale_row.spectral is None and weight_row.spectral is not None
