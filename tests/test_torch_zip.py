"""The torch-free reader of torch.save zip files: equal to torch.load, lazy, and never running code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch
from helpers import run, run_child
from torch import nn

from fancli.errors import SourceError
from fancli.loaders import load
from fancli.loaders.checkpoint import find_state_dict
from fancli.loaders.torch_pickle import SavedTensor
from fancli.loaders.torch_zip import TorchZip, read_state_dict
from fancli.weights.stats import observe


def _net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(),
                        nn.Linear(8 * 16, 10))
    return net.to(dtype)


def _fixtures(tmp: Path) -> dict[str, Path]:
    """Files that exercise the format: dtypes, ties, views, wrappers, optimizer state."""
    files: dict[str, object] = {}
    net = _net()
    files["state_dict"] = net.state_dict()
    files["bf16"] = _net(torch.bfloat16).state_dict()
    files["fp16"] = _net(torch.float16).state_dict()
    files["fp64"] = _net(torch.float64).state_dict()
    embedding = torch.randn(50, 16)
    files["tied"] = {"embed.weight": embedding, "lm_head.weight": embedding, "norm.weight": torch.ones(16)}
    base = torch.randn(12, 10)
    files["views"] = {"full": base, "rows": base[4:8], "transposed": base.t(), "strided": base[:, 1::3],
                      "scalar_view": base[2, 3]}
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    files["lightning"] = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                          "state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()],
                          "lr_schedulers": [], "callbacks": {}, "hyper_parameters": {"lr": 1e-3, "name": "net"}}
    files["wrapped"] = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": 7}
    files["nested"] = {"encoder": {"proj": {"weight": torch.randn(4, 6)}}, "decoder": {"weight": torch.randn(6, 4)}}
    files["parameters"] = dict(net.named_parameters())
    files["zero_and_ints"] = {"empty.weight": torch.empty(0, 5), "ids": torch.arange(10), "w": torch.randn(3, 3)}
    paths = {}
    for name, obj in files.items():
        paths[name] = tmp / f"{name}.pt"
        torch.save(obj, paths[name])
    return paths


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    return _fixtures(tmp_path_factory.mktemp("torch_zip"))


def _torch_state_dict(path: Path) -> dict:
    obj = torch.load(path, weights_only=True)
    mapping, _ = find_state_dict(obj, torch.is_tensor)
    return mapping


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@pytest.mark.parametrize("name", ["state_dict", "bf16", "fp16", "fp64", "tied", "views", "lightning", "wrapped",
                                  "nested", "parameters", "zero_and_ints"])
def test_every_tensor_equals_torch_load(saved, name):
    """Names, shapes, dtypes and statistics of every tensor, including integer ones, against torch.load."""
    archive = TorchZip(saved[name])
    ours, _ = find_state_dict(archive.unpickle(), lambda v: isinstance(v, SavedTensor))
    theirs = _torch_state_dict(saved[name])
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        ref = archive.tensor_ref(key, ours[key])
        assert ref.shape == tuple(tensor.shape) and ref.dtype == _dtype_name(tensor), key
        observed = observe(ref, max_elements=7)  # small chunks: exercise the merging
        assert observed.count == tensor.numel()
        if tensor.numel() == 0:
            continue
        values = tensor.double()
        assert observed.mean == pytest.approx(values.mean().item(), rel=1e-5, abs=1e-12)
        assert observed.min == values.min().item() and observed.max == values.max().item()
        if tensor.numel() > 1:
            assert observed.std == pytest.approx(tensor.float().std().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["state_dict", "bf16", "lightning", "wrapped", "tied", "views"])
def test_model_layers_and_stats_equal_torch(saved, name):
    model = load(str(saved[name]))
    theirs = _torch_state_dict(saved[name])
    for layer in model.layers:
        tensor = theirs[layer.param]
        assert layer.shape == tuple(tensor.shape) and layer.dtype == _dtype_name(tensor)
        observed = observe(layer.data)
        assert observed.mean == pytest.approx(tensor.double().mean().item(), rel=1e-5, abs=1e-9)
        if tensor.numel() > 1:
            assert observed.std == pytest.approx(tensor.float().std().item(), rel=1e-5)
    floating = [k for k, t in theirs.items() if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    reported = [layer.param for layer in model.layers] + [a for layer in model.layers for a in layer.aliases]
    assert sorted(reported) == sorted(floating)


def test_tied_weights_are_reported_once_with_their_alias(saved):
    (embed, norm) = load(str(saved["tied"])).layers
    assert embed.param == "embed.weight" and embed.aliases == ("lm_head.weight",)
    assert any("tied" in note for note in embed.notes)


def test_wrappers_are_found_and_optimizer_state_ignored(saved):
    model = load(str(saved["lightning"]))
    assert any("'state_dict'" in note for note in model.notes)
    assert any("optimizer_states" in note for note in model.notes)
    assert {layer.param for layer in model.layers} == {k for k, v in _net().state_dict().items()
                                                        if v.is_floating_point() and "running" not in k}
    wrapped = load(str(saved["wrapped"]))
    assert any("'model'" in note for note in wrapped.notes) and any("optimizer" in note for note in wrapped.notes)


def test_state_dict_convs_have_unknown_structure(saved):
    conv = next(layer for layer in load(str(saved["state_dict"])).layers if layer.param == "2.weight")
    assert conv.groups is None and conv.transposed is None and conv.notes


@pytest.mark.parametrize("name", ["state_dict", "lightning"])
def test_inspect_never_imports_torch(saved, name):
    result = run_child(["inspect", str(saved[name]), "--stats", "-f", "json"], absent=("torch",))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layers"]


def test_without_stats_no_storage_is_read(saved, monkeypatch):
    from fancli.loaders import torch_zip

    def refuse(*_args):
        raise AssertionError("storage read without --stats")

    monkeypatch.setattr(torch_zip.ZipMember, "read", refuse)
    monkeypatch.setattr(torch_zip.ZipMember, "locate", refuse)  # --stats maps stored members
    assert run("inspect", saved["state_dict"], "-f", "json").code == 0
    with pytest.raises(AssertionError, match="without --stats"):
        observe(load(str(saved["state_dict"])).layers[0].data)


class _Marker:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_code_in_the_pickle_is_never_run_without_trust(tmp_path, zip_format):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.randn(3, 3), "payload": _Marker(str(marker))}, path,
               _use_new_zipfile_serialization=zip_format)
    result = run("inspect", path)
    assert result.code == 2 and "--trust" in result.err and "open" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not marker.exists()


def test_os_system_is_named_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "system.pt"
    torch.save({"w": torch.randn(2, 2), "x": System()}, path)
    result = run("inspect", path)
    assert result.code == 2 and ("posix.system" in result.err or "os.system" in result.err)
    assert not marker.exists()


def test_a_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(_net(), path)
    refused = run("inspect", path)
    assert refused.code == 2 and "torch.nn.modules" in refused.err and "--trust" in refused.err


@pytest.mark.parametrize("obj,what", [(torch.randn(3), "a Tensor"), ([1, 2], "a list"), (7, "an int"),
                                      ({"a": 1}, "a dict without tensors")])
def test_files_without_a_state_dict_exit_2(tmp_path, obj, what):
    path = tmp_path / "thing.pt"
    torch.save(obj, path)
    result = run("inspect", path)
    assert result.code == 2 and f"holds {what}, not a state_dict" in result.err, result.err


def test_truncated_and_foreign_zips_exit_2(tmp_path, saved):
    data = saved["state_dict"].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    import zipfile

    foreign = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "hello")
    for path in (truncated, foreign):
        result = run("inspect", path)
        assert result.code == 2 and str(path) in result.err and len(result.err.strip().splitlines()) == 1


def test_storage_shorter_than_its_tensor_is_refused(tmp_path, saved):
    """A pickle that claims more elements than its storage member holds."""
    import zipfile

    source = saved["state_dict"]
    broken = tmp_path / "short.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(broken, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if "/data/0" in info.filename and not info.filename.endswith(".pkl"):
                data = data[:8]
            new.writestr(info, data)
    with pytest.raises(SourceError, match="runs past|shorter"):
        read_state_dict(broken)


@given(st.one_of(st.none(), st.text(max_size=2), st.lists(st.one_of(
    st.integers(-2, (1 << 63) + 1), st.sampled_from([(1 << 63) - 1, 1 << 63, True, 1.0, "1", None])), max_size=70)
    .flatmap(lambda items: st.sampled_from([items, tuple(items)]))))
def test_a_size_or_stride_is_checked_as_each_of_its_values_is(value):
    """`is_shape` checks a pickle's size and stride in C: the same verdict as `is_index` of each value."""
    from fancli.loaders.torch_pickle import MAX_DIMS, is_index, is_shape

    expected = isinstance(value, (tuple, list)) and len(value) <= MAX_DIMS and all(map(is_index, value))
    assert is_shape(value) == expected


_VALUE = st.one_of(st.integers(-2, 4), st.sampled_from([(1 << 63) - 1, 1 << 63, True, 2.0, "3", None]))
_SHAPE = st.one_of(st.none(), st.text(max_size=1), st.lists(_VALUE, max_size=66).flatmap(
    lambda items: st.sampled_from([items, tuple(items)])))


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["float32", "bfloat16", "qint8", "float128", "x"]),
                          _VALUE, _SHAPE, _SHAPE), max_size=6))
def test_claims_checked_at_once_hold_only_where_each_holds(claims):
    """`claims_hold` (the claims of every tensor a pickle built, in C passes) holds exactly where
    `check_claims` passes each (of these types: it is stricter only in types that are not exactly a tuple, a
    list or a SavedStorage): it never passes a tensor that `check_claims` refuses."""
    from fancli.loaders.torch_pickle import SavedStorage, check_claims, claims_hold

    tensors = [SavedTensor(SavedStorage("0", dtype, 4) if real else "0", dtype, offset, size, stride)
               for real, dtype, offset, size, stride in claims]
    each = []
    for tensor in tensors:
        try:
            check_claims(Path("x.pt"), "k", tensor)
            each.append(True)
        except SourceError:
            each.append(False)
    assert claims_hold(tensors) == all(each)
