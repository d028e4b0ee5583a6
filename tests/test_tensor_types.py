"""Quantized, complex and sparse tensors in torch.save files (zip and legacy), read by the allow-list
unpickler as torch's weights-only loader reads them; and the config's safe_globals as inert records."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest
import torch
from helpers import REPO, run
from torch.nn.init import _calculate_fan_in_and_fan_out

from fancli.loaders import load
from fancli.weights.stats import observe


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "qt.weight": torch.quantize_per_tensor(weight, 0.05, 3, torch.qint8),
            "qu.weight": torch.quantize_per_tensor(weight, 0.03, 128, torch.quint8),
            "qi.weight": torch.quantize_per_tensor(weight, 1e-4, -7, torch.qint32),
            "qc.weight": torch.quantize_per_channel(weight, torch.rand(6, dtype=torch.double) / 10 + 0.01,
                                                    torch.randint(-4, 4, (6,)), 0, torch.qint8),
            "qa.weight": torch.quantize_per_channel(weight, torch.rand(5, dtype=torch.double) / 10 + 0.01,
                                                    torch.randint(0, 9, (5,)), 1, torch.quint8),
            "c64.weight": torch.randn(4, 3, dtype=torch.complex64),
            "c128.weight": torch.randn(3, 2, 2, dtype=torch.complex128),
            "coo.weight": (weight * (weight > 0.5)).to_sparse().coalesce(),
            "csr.weight": (weight * (weight > 0.5)).to_sparse_csr(),
            "csc.weight": (weight * (weight > 0.5)).to_sparse_csc(),
            "fc.bias": torch.zeros(6),
        }


@pytest.fixture(scope="module", params=["zip", "legacy"])
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("types") / f"{request.param}.pt"
    tensors = _tensors()
    torch.save(tensors, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, tensors


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_dense() if tensor.layout != torch.strided else tensor


def test_names_shapes_dtypes_and_fans_match_torch(saved):
    path, tensors = saved
    assert torch.load(path, weights_only=True).keys() == tensors.keys()  # torch's own loader reads it
    result = run("inspect", path, "--all", "-f", "json")
    assert result.code == 0, result.err
    rows = {row["param"]: row for row in json.loads(result.out)["layers"]}
    assert set(rows) == set(tensors)
    for key, tensor in tensors.items():
        row = rows[key]
        assert tuple(row["shape"]) == tuple(tensor.shape), key
        assert row["dtype"] == str(tensor.dtype).removeprefix("torch."), key
        if tensor.dim() >= 2:
            dense = _dense(tensor.dequantize() if tensor.is_quantized else tensor)
            assert (row["fan_in"], row["fan_out"]) == _calculate_fan_in_and_fan_out(dense), key


@pytest.mark.parametrize("key", ["qt.weight", "qu.weight", "qi.weight", "qc.weight", "qa.weight"])
def test_stats_of_quantized_tensors_are_torchs_dequantized_values(saved, key):
    path, tensors = saved
    layer = next(layer for layer in load(str(path)).layers if layer.param == key)
    expected = tensors[key].dequantize().double()
    observed = observe(layer.data, max_elements=7)  # several chunks, channels across their edges
    assert observed.count == expected.numel()
    assert observed.mean == pytest.approx(expected.mean().item(), rel=1e-6, abs=1e-9)
    assert observed.std == pytest.approx(expected.std().item(), rel=1e-6)
    assert (observed.min, observed.max) == pytest.approx((expected.min().item(), expected.max().item()), rel=1e-6)
    assert any("dequantized" in note for note in layer.notes)


def test_float_qparams_per_channel_is_torchs_dequantize(tmp_path):
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(torch.randn(8, 4), torch.rand(8) / 10 + 0.01, torch.randn(8), 0,
                                               torch.quint8)
    assert quantized.qscheme() == torch.per_channel_affine_float_qparams
    path = tmp_path / "q.pt"
    torch.save({"emb.weight": quantized}, path)
    layer = load(str(path)).layers[0]
    expected = quantized.dequantize().double()
    observed = observe(layer.data, max_elements=5)
    assert observed.mean == pytest.approx(expected.mean().item(), rel=1e-6)
    assert observed.std == pytest.approx(expected.std().item(), rel=1e-6)


def test_complex_and_sparse_stats(saved):
    path, tensors = saved
    code = run("inspect", path, "--stats", "--all", "-f", "json")
    assert code.code == 0, code.err
    rows = {row["param"]: row for row in json.loads(code.out)["layers"]}
    assert rows["c64.weight"]["observed"] is None or rows["c64.weight"]["observed"].get("std") is None
    assert any("complex values" in note for note in rows["c64.weight"]["notes"])
    for key in ("coo.weight", "csr.weight", "csc.weight"):
        layer = next(layer for layer in load(str(path)).layers if layer.param == key)
        values = tensors[key].values().double()
        observed = observe(layer.data)
        assert observed.count == values.numel()
        assert observed.mean == pytest.approx(values.mean().item(), rel=1e-6)
        assert observed.std == pytest.approx(values.std().item(), rel=1e-6)
        assert any(f"{values.numel()} stored values only" in note for note in layer.notes)


def test_an_uncoalesced_coo_tensor_has_no_statistics(tmp_path):
    indices = torch.tensor([[0, 0, 1], [1, 1, 2]])
    tensor = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0, 3.0]), (3, 3))
    assert not tensor.is_coalesced()
    path = tmp_path / "u.pt"
    torch.save({"fc.weight": tensor}, path)
    layer = load(str(path)).layers[0]
    assert layer.shape == (3, 3) and "uncoalesced" in layer.data.reason


def test_a_zip_with_a_quantized_tensor_is_read_without_torch(saved):
    path, _ = saved
    code = (
        "import sys\nfrom fancli.cli import main\n"
        f"try:\n    main(['inspect', {str(path)!r}, '--stats', '-f', 'json'])\n"
        "except SystemExit as done:\n    assert done.code == 0, done.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert {"qt.weight", "qc.weight"} <= {row["param"] for row in json.loads(result.stdout)["layers"]}


def test_a_sub_byte_quantized_tensor_is_one_line(tmp_path):
    tensor = torch.quantize_per_channel(torch.rand(4, 4), torch.ones(4) / 10, torch.zeros(4), 0, torch.quint4x2)
    path = tmp_path / "q4.pt"
    torch.save({"emb.weight": tensor}, path)
    result = run("inspect", path)
    assert result.code == 2 and result.err.count("\n") == 1 and "quint4x2" in result.err, result.err


@dataclass
class TrainConfig:
    width: int
    lr: float


def _config(tmp_path, *names: str):
    (tmp_path / "fancli.yaml").write_text("safe_globals: [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    return tmp_path / "fancli.yaml"


def test_safe_globals_read_a_config_object_as_an_inert_record(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"config": TrainConfig(64, 0.1), "state_dict": {"fc.weight": torch.randn(4, 3)}}, path)
    refused = run("inspect", path, "--no-config")
    assert refused.code == 2 and "TrainConfig" in refused.err
    config = _config(tmp_path, f"{__name__}.TrainConfig")
    result = run("inspect", path, "--config", config, "-f", "json")
    assert result.code == 0, result.err
    assert [row["param"] for row in json.loads(result.out)["layers"]] == ["fc.weight"]
    assert [layer.param for layer in load(str(path), safe_globals=[f"{__name__}.TrainConfig"]).layers] == ["fc.weight"]


class _Pwn:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_os_system_in_safe_globals_never_runs(tmp_path, legacy):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Pwn(target), "fc.weight": torch.randn(4, 3)}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    system = f"{os.system.__module__}.system"  # posix.system: what pickle writes for os.system
    if not legacy:  # also name it `os system`, as a user would list it
        import zipfile

        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        pkl = next(name for name in members if name.endswith("data.pkl"))
        members[pkl] = members[pkl].replace(f"{os.system.__module__}\nsystem".encode(), b"os\nsystem")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        system = "os.system"
        assert b"os\nsystem" in path.read_bytes() and b"os\nsystem" not in data
    refused = run("inspect", path, "--no-config")
    assert refused.code == 2 and system in refused.err
    result = run("inspect", path, "--config", _config(tmp_path, system), "-f", "json")
    assert result.code == 0, result.err
    assert [row["param"] for row in json.loads(result.out)["layers"]] == ["fc.weight"]
    assert not target.exists()


@pytest.mark.parametrize("value", ["[1]", '["system"]', '"os.system"', '["os.system()"]'])
def test_safe_globals_are_typed(tmp_path, value):
    (tmp_path / "fancli.yaml").write_text(f"safe_globals: {value}\n")
    result = run("inspect", REPO / "sample_models" / os.listdir(REPO / "sample_models")[0], "--config",
                 tmp_path / "fancli.yaml")
    assert result.code == 2 and "safe_globals" in result.err and result.err.count("\n") == 1, result.err


def test_an_inert_record_keeps_its_arguments_and_state():
    from fancli.loaders.torch_pickle import WeightsUnpickler

    data = pickle.dumps({"c": TrainConfig(3, 0.5)}, protocol=2)
    record = WeightsUnpickler(data, safe_globals=frozenset({f"{__name__}.TrainConfig"})).load()["c"]
    assert not isinstance(record, TrainConfig)
    assert record.qualified == f"{__name__}.TrainConfig" and record.state == {"width": 3, "lr": 0.5}


def test_check_init_honours_the_configs_safe_globals(tmp_path):
    """The library's check reads the source through the same configured load as the CLI."""
    import fancli

    path = tmp_path / "ckpt.pt"
    torch.save({"config": TrainConfig(64, 0.1), "state_dict": {"fc.weight": torch.randn(4, 3)}}, path)
    config = _config(tmp_path, f"{__name__}.TrainConfig")
    result = fancli.check_init(path, config=config, baseline=False)
    assert result.ok and [row.layer.param for row in result.report.rows] == ["fc.weight"]
