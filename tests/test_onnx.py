"""ONNX models written by torch.onnx.export, read with the onnx package and without torch: each weight in
torch's layout with its module's structure, against torch's own fans, parameter counts and values."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import REPO, run
from torch.nn.init import _calculate_fan_in_and_fan_out

onnx = pytest.importorskip("onnx")


class _Net(torch.nn.Module):
    """Every op the reader knows: a grouped strided Conv, a grouped ConvTranspose, a Linear (Gemm), a bare
    matmul with a Parameter (MatMul initializer) and an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, stride=2, groups=2)
        self.convt = torch.nn.ConvTranspose2d(8, 6, 3, groups=2)
        self.fc = torch.nn.Linear(6 * 7 * 7, 5)
        self.w = torch.nn.Parameter(torch.randn(5, 7))
        self.lstm = torch.nn.LSTM(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.convt(self.conv(x)).flatten(1)) @ self.w
        return self.lstm(y.unsqueeze(0))[0]


class _Sequence(torch.nn.Module):
    """A Linear on 3-D input (exported as MatMul on an anonymous transposed weight, plus Add) and a
    bidirectional GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 5)
        self.gru = torch.nn.GRU(5, 4, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(self.fc(x))[0]


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamo: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), path, dynamo=dynamo, verbose=False)
    return path


def _rows(path: Path) -> dict[str, dict]:
    result = run("inspect", path, "--all", "--stats", "-f", "json")
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


def _effective(module: torch.nn.Module, param: str) -> tuple[int, int]:
    """Layer-aware fans: a conv's per-group fans (out/groups fed by each input, divided by the stride),
    a recurrent weight's per-gate fan_out, a Linear's own."""
    weight = module.get_parameter(param)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    owner = module.get_submodule(param.rpartition(".")[0]) if "." in param else module
    if isinstance(owner, torch.nn.ConvTranspose2d):
        k = weight[0, 0].numel()
        return (owner.in_channels // owner.groups) * k // owner.stride[0] ** 2, (owner.out_channels // owner.groups) * k
    if isinstance(owner, torch.nn.Conv2d):
        return fan_in, fan_out // owner.groups // (owner.stride[0] * owner.stride[1])
    if isinstance(owner, torch.nn.LSTM):
        return fan_in, fan_out // 4
    if isinstance(owner, torch.nn.GRU):
        return fan_in, fan_out // 3
    return fan_in, fan_out


def _check(model: torch.nn.Module, rows: dict[str, dict]) -> None:
    """Every parameter listed once under its torch name, torch's fans and values; totals torch's count."""
    parameters = dict(model.named_parameters())
    assert sorted(rows) == sorted(parameters)
    for key, tensor in parameters.items():
        row = rows[key]
        assert row["params"] == tensor.numel(), key
        if tensor.dim() >= 2:
            torch_fans = _calculate_fan_in_and_fan_out(tensor)
            assert (row["fan_in"], row["fan_out"]) == torch_fans, key
            effective = (row.get("effective_fan_in", row["fan_in"]), row.get("effective_fan_out", row["fan_out"]))
            if key == "w":  # a bare x @ w: stored [in, out], so torch's function reads the fans swapped
                assert effective == torch_fans[::-1]
            else:
                assert effective == _effective(model, key), key
        values = tensor.detach().double()
        observed = row["observed"]
        assert observed["count"] == tensor.numel()
        assert observed["mean"] == pytest.approx(values.mean().item(), rel=1e-6, abs=1e-9)
        assert observed["min"] == values.min().item() and observed["max"] == values.max().item()
        assert observed["std"] == pytest.approx(values.std().item(), rel=1e-6)


def test_torchscript_export_lists_every_parameter_with_torchs_fans_and_values(tmp_path):
    model = _Net()
    path = _export(model, torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    rows = _rows(path)
    _check(model, rows)
    assert rows["conv.weight"]["structure"] == {"groups": 2, "stride": [2, 2]}
    assert rows["convt.weight"]["structure"]["groups"] == 2 and rows["w"]["structure"] == {"layout": "in_out"}
    result = run("inspect", path, "-f", "json")
    assert json.loads(result.out)["summary"]["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dynamo", [False, True])
def test_anonymous_matmul_weights_and_a_bidirectional_gru_are_named_from_the_graph(tmp_path, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    model = _Sequence()
    path = _export(model, torch.randn(2, 3, 6), tmp_path / "seq.onnx", dynamo=dynamo)
    names = [initializer.name for initializer in onnx.load(path, load_external_data=False).graph.initializer]
    assert not {"gru.weight_ih_l0"} & set(names)  # the exporter's names are anonymous
    _check(model, _rows(path))


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_root_stacked_bidirectional_lstm_gets_torchs_names_per_layer(tmp_path, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    model = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True)
    _check(model, _rows(_export(model, torch.randn(3, 1, 5), tmp_path / "lstm.onnx", dynamo=dynamo)))


def test_external_data_is_read_by_range(tmp_path):
    model = _Net()
    path = _export(model, torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    proto = onnx.load(path)
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="net.onnx.data", size_threshold=0)
    assert path.stat().st_size < 4000  # the weights are in the data file now
    _check(model, _rows(path))


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    model = _Net()
    path = _export(model, torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    proto = onnx.load(path)
    onnx.save_model(proto, path, save_as_external_data=True, location="net.onnx.data", size_threshold=0)
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    (tmp_path.parent / "outside.data").write_bytes((tmp_path / "net.onnx.data").read_bytes())
    onnx.save_model(proto, path)
    result = run("inspect", path)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "external data '../outside.data' must be a file name beside the model" in result.err
    (tmp_path / "link.data").symlink_to(tmp_path.parent / "outside.data")
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "link.data"
    onnx.save_model(proto, path)
    result = run("inspect", path)
    assert result.code == 2 and "external data 'link.data' links outside the model's folder" in result.err


def test_a_truncated_onnx_file_is_one_line_and_exit_2(tmp_path):
    path = _export(_Net(), torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 7, 40):
        path.write_bytes(raw[:cut])
        result = run("inspect", path)
        assert result.code == 2, (cut, result.err)
        assert len(result.err.strip().splitlines()) == 1 and str(path) in result.err and "ONNX" in result.err


def test_without_the_onnx_package_or_past_the_size_limit_it_is_one_line(tmp_path, monkeypatch):
    from fancli.loaders import onnx_file

    path = _export(_Net(), torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    monkeypatch.setattr(onnx_file, "MAX_ONNX_BYTES", 1000)
    result = run("inspect", path)
    assert result.code == 2 and "larger than 1000 bytes" in result.err and len(result.err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("inspect", path)
    assert result.code == 2 and "pip install onnx" in result.err and len(result.err.strip().splitlines()) == 1


def test_a_conv_whose_group_is_no_integer_is_noted_not_a_crash(tmp_path):
    path = _export(_Net(), torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    proto = onnx.load(path, load_external_data=False)
    conv = next(node for node in proto.graph.node if node.op_type == "Conv")
    group = next(attribute for attribute in conv.attribute if attribute.name == "group")
    conv.attribute.remove(group)
    conv.attribute.append(onnx.helper.make_attribute("group", "two"))
    onnx.save_model(proto, path)
    row = _rows(path)["conv.weight"]
    assert "structure" not in row and any("not positive integers" in note for note in row["notes"])


def test_an_onnx_file_is_read_without_importing_torch(tmp_path):
    path = _export(_Net(), torch.randn(1, 4, 11, 11), tmp_path / "net.onnx")
    code = ("import sys, fancli; m = fancli.load(sys.argv[1]); "
            "assert m.format == 'onnx' and len(m.layers) == 11; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def test_the_dynamo_exporter_is_read_too(tmp_path):
    pytest.importorskip("onnxscript")
    model = _Net()
    _check(model, _rows(_export(model, torch.randn(1, 4, 11, 11), tmp_path / "dyn.onnx", dynamo=True)))
