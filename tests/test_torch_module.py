"""Sources that need torch, against torch itself: live and pickled modules, TorchScript, torch.export,
weights-only state_dicts and factories give torch's fans, the layer-aware fans and the same weights."""

from __future__ import annotations

import math
import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans

from fancli.analysis.fans import layer_fans
from fancli.errors import SourceError
from fancli.layer import Model
from fancli.loaders import load
from fancli.loaders.export_program import load_exported
from fancli.loaders.flat_keys import NO_STRUCTURE
from fancli.loaders.torch_module import (
    layers_from_module,
    load_factory,
    load_pickled_module,
    load_torchscript,
    load_weights_only,
    untrusted_message,
)
from fancli.loaders.torch_tensor import TorchTensorData
from fancli.weights.stats import observe

FACTORY_MODULE = "fancli_test_factories"
FACTORY_SOURCE = f"""
import torch
from {__name__} import Net

CONSTANT = 3

def build(seed=0):
    torch.manual_seed(seed)
    return Net().eval()

def explode():
    raise RuntimeError("boom\\nsecond line")

def not_a_module():
    return 42

def convs():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=4), torch.nn.ConvTranspose2d(8, 4, 2, stride=2))

def exported_convs():
    return torch.export.export(convs(), (torch.randn(1, 4, 6, 6),))

INSTANCE = torch.nn.Linear(2, 3)

class Zoo:
    @staticmethod
    def linear(width=2):
        return torch.nn.Linear(width, 3)
"""
#: "script", "traced" and "export" are read without torch (nothing in the archive runs); "*_trusted"
#: through torch's own loaders, as --trust does.
MODULE_FORMATS = ("pickled", "script", "traced", "export", "script_trusted", "traced_trusted", "export_trusted",
                  "factory")
FORMATS = ("module", *MODULE_FORMATS, "state_dict", "legacy_state_dict")


class Conv1D(nn.Module):
    """HF GPT-2's Conv1D: a linear layer whose weight is stored [in, out] (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


class Net(nn.Module):
    """Every layer whose fans torch's shape-only rule gets wrong, plus a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(12, 4, 4, stride=2, padding=1, groups=2)
        self.embed = nn.Embedding(10, 12)
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.mha = nn.MultiheadAttention(12, 3)
        self.norm = nn.LayerNorm(12)
        self.c_fc = Conv1D(16, 12)
        self.fc = nn.Linear(16, 12)
        self.lm_head = nn.Linear(12, 10, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.up(self.grouped(self.dw(self.bn(self.conv(x)))))
        sequence, _ = self.lstm(x.flatten(2).permute(2, 0, 1))
        y = sequence + self.embed(tokens)
        y = self.norm(self.mha(y, y, y)[0])
        return self.lm_head(self.fc(self.c_fc(y)))


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 3, 4, 4), torch.randint(0, 10, (64, 1))


def make_net(dtype: torch.dtype = torch.float32) -> Net:
    torch.manual_seed(0)
    return Net().eval().to(dtype)


class WritesMarker:
    """A pickle whose loading creates a directory: what a malicious checkpoint would do (no handle left open)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def net() -> Net:
    return make_net()


@pytest.fixture(scope="module")
def params(net: Net) -> dict[str, torch.Tensor]:
    return dict(net.named_parameters(remove_duplicate=False))


@pytest.fixture(scope="module")
def models(net: Net, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    """The same network through every source."""
    folder = tmp_path_factory.mktemp("sources")
    torch.save(net, folder / "module.pt")
    torch.save(net.state_dict(), folder / "state_dict.pt")
    torch.save(net.state_dict(), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates TorchScript; tracing and export warn about Net
        torch.jit.save(torch.jit.script(net), folder / "script.pt")
        torch.jit.save(torch.jit.trace(net, example_inputs()), folder / "traced.pt")
        torch.export.save(torch.export.export(net, example_inputs()), folder / "net.pt2")
    (folder / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        factory = load_factory(f"{FACTORY_MODULE}:build", {"seed": 0})
        sys.modules.pop(FACTORY_MODULE, None)
    return {
        "module": Model("live", "module", layers_from_module(net), name="Net"),
        "pickled": load_pickled_module(folder / "module.pt", trust=True),
        "script": load(str(folder / "script.pt")),
        "traced": load(str(folder / "traced.pt")),
        "export": load(str(folder / "net.pt2")),
        "script_trusted": load(str(folder / "script.pt"), trust=True),
        "traced_trusted": load(str(folder / "traced.pt"), trust=True),
        "export_trusted": load(str(folder / "net.pt2"), trust=True),
        "factory": factory,
        "state_dict": load_weights_only(folder / "state_dict.pt"),
        "legacy_state_dict": load_weights_only(folder / "legacy.pt"),
    }


def by_param(model: Model) -> dict:
    return {layer.param: layer for layer in model.layers}


@pytest.mark.parametrize("source", FORMATS)
def test_torch_fans_in_every_format(models, params, source):
    checked = 0
    for layer in models[source].layers:
        if len(layer.shape) >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == torch_fans(params[layer.param]), layer.param
            checked += 1
    assert checked == 17


@pytest.mark.parametrize("source", MODULE_FORMATS)
def test_module_sources_agree_with_the_live_module(models, source):
    """Kinds, structure, notes, aliases and dtypes: every field a Layer compares."""
    assert models[source].layers == models["module"].layers
    assert models[source].name == "Net"


@pytest.mark.parametrize("source", ("state_dict", "legacy_state_dict"))
def test_state_dicts_agree_on_keys_shapes_and_aliases(models, source):
    def summary(model: Model) -> list:
        return [(layer.param, layer.shape, layer.dtype, layer.aliases) for layer in model.layers]

    assert summary(models[source]) == summary(models["module"])


def effective(layer) -> tuple:
    return layer_fans(layer).pick(effective=True)


@pytest.mark.parametrize("source", ("module", *MODULE_FORMATS))
def test_module_sources_give_the_layer_aware_fans(models, net, source):
    layers = by_param(models[source])
    for name in ("dw", "grouped"):
        conv = net.get_submodule(name)
        rf = math.prod(conv.kernel_size)
        expected = (conv.in_channels // conv.groups * rf, conv.out_channels // conv.groups * rf)
        assert effective(layers[f"{name}.weight"]) == expected
    up = net.up
    rf = math.prod(up.kernel_size)
    expected_up = (up.in_channels // up.groups * rf / math.prod(up.stride), up.out_channels // up.groups * rf)
    assert effective(layers["up.weight"]) == expected_up
    assert effective(layers["mha.in_proj_weight"]) == (net.mha.embed_dim, net.mha.embed_dim)
    for key in ("lstm.weight_ih_l0", "lstm.weight_ih_l1_reverse", "lstm.weight_hh_l1"):
        assert effective(layers[key]) == (net.lstm.get_parameter(key[5:]).shape[1], net.lstm.hidden_size)
    assert effective(layers["c_fc.weight"]) == (net.c_fc.weight.shape[0], net.c_fc.nf)
    assert layers["dw.weight"].dilation == (2, 2) and layers["up.weight"].stride == (2, 2)


@pytest.mark.parametrize("source", ("state_dict", "legacy_state_dict"))
def test_state_dict_cannot_tell_groups(models, source):
    layers = by_param(models[source])
    for key in ("dw.weight", "grouped.weight"):
        layer = layers[key]
        assert layer.groups is None and layer.transposed is None
        assert not layer_fans(layer).differs
        assert NO_STRUCTURE in layer.notes


@pytest.mark.parametrize("source", FORMATS)
def test_tied_weight_reported_once_with_its_alias(models, source):
    layers = by_param(models[source])
    assert "lm_head.weight" not in layers
    tied = layers["embed.weight"]
    assert tied.kind == "embedding" and tied.aliases == ("lm_head.weight",)
    assert any("lm_head.weight" in note for note in tied.notes)


def assert_observed_equals_torch(layers, tensors: dict[str, torch.Tensor], max_elements: int) -> None:
    """float64 torch is the oracle: float32 reductions of near-zero means carry more than 1e-5 relative error."""
    for layer in layers:
        observed = observe(layer.data, max_elements=max_elements)
        values = tensors[layer.param].detach().double()
        assert observed.count == values.numel()
        for ours, theirs in ((observed.mean, values.mean()), (observed.std, values.std()),
                             (observed.min, values.min()), (observed.max, values.max())):
            assert ours == pytest.approx(float(theirs), rel=1e-5, abs=1e-12), layer.param


@pytest.mark.parametrize("source", FORMATS)
def test_observed_stats_equal_torch(models, params, source):
    assert_observed_equals_torch(models[source].layers, params, max_elements=7)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_observed_stats_of_half_precision_models(tmp_path, dtype):
    net = make_net(dtype)
    torch.save(net.state_dict(), tmp_path / "half.pt")
    tensors = dict(net.named_parameters())
    for layers in (layers_from_module(net), load_weights_only(tmp_path / "half.pt").layers):
        assert {layer.dtype for layer in layers} == {str(dtype).removeprefix("torch.")}
        assert_observed_equals_torch(layers, tensors, max_elements=5)


def test_tensor_data_chunks_are_bounded_and_in_order():
    strided = torch.arange(42.0).reshape(6, 7).t()  # not contiguous
    data = TorchTensorData(strided.to(torch.bfloat16))
    assert data.dtype == "bfloat16" and data.shape == (7, 6)
    chunks = list(data.chunks(max_elements=4))
    assert all(chunk.size <= 4 for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), strided.reshape(-1).numpy())
    assert [float(v) for chunk in TorchTensorData(torch.tensor(2.5)).chunks() for v in chunk] == [2.5]
    assert list(TorchTensorData(torch.empty(0, 3)).chunks()) == []


@pytest.mark.parametrize("legacy", (False, True), ids=("zip", "legacy"))
def test_weights_only_never_runs_code_from_the_file(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2, 2), "payload": WritesMarker(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    for read in (load_weights_only, lambda p: load_pickled_module(p, trust=False)):
        with pytest.raises(SourceError) as error:
            read(path)
        message = str(error.value)
        assert "--trust" in message and "\n" not in message and message.startswith(str(path))
        assert "makedirs" in message  # the global it names
    assert not marker.exists()
    load_pickled_module(path, trust=True)  # the premise: unpickling it does run its code
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_refusal_without_a_global_still_says_why(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": 1}))  # a plain pickle, not a torch.save file
    with pytest.raises(SourceError) as error:
        load_weights_only(path)
    assert "(Unsupported operand" in str(error.value) and "--trust" in str(error.value)


def test_a_pickled_module_needs_trust(tmp_path, net):
    """The same one line whether torch's loader refuses the file or fancli's torch-free reader does."""
    for legacy in (False, True):
        path = tmp_path / f"module-{legacy}.pt"
        torch.save(net, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(SourceError) as error:
            load_pickled_module(path, trust=False)
        assert str(error.value) == untrusted_message(path, f"{__name__}.Net")
        with pytest.raises(SourceError) as dispatched:
            load(str(path))
        assert str(dispatched.value) == str(error.value)


def test_a_trusted_pickle_whose_class_is_gone(tmp_path, monkeypatch):
    (tmp_path / "fancli_vanishing.py").write_text("from torch import nn\nclass Gone(nn.Linear):\n    pass\n")
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        from fancli_vanishing import Gone

        torch.save(Gone(2, 2), tmp_path / "gone.pt")
    del sys.modules["fancli_vanishing"]
    monkeypatch.chdir(tmp_path.parent)  # the module lies beside the file, not in the working directory
    with pytest.raises(SourceError) as error:
        load_pickled_module(tmp_path / "gone.pt", trust=True)
    assert str(error.value) == (f"{tmp_path / 'gone.pt'}: cannot unpickle it: ModuleNotFoundError: "
                                "No module named 'fancli_vanishing'")


CHECKPOINTS = {
    "plain": lambda state: {"model": state, "optimizer": {"state": {0: {"m": torch.ones(2)}}}, "epoch": 3},
    "lightning": lambda state: {"state_dict": state, "optimizer_states": [{}], "global_step": 7},
    "nested": lambda state: {"net": {"ema": state}},
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_checkpoints_read_like_the_torch_free_reader(tmp_path, net, kind):
    """Zip checkpoints: torch's weights-only loader and fancli's own reader give the same layers and notes."""
    checkpoint = CHECKPOINTS[kind](net.state_dict())
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    torch.save(checkpoint, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch_free = load(str(tmp_path / "ckpt.pt"))
    assert torch_free.notes and any("found under" in note for note in torch_free.notes)
    for name in ("ckpt.pt", "legacy.pt"):
        model = load_weights_only(tmp_path / name)
        assert (model.layers, model.notes) == (torch_free.layers, torch_free.notes)


def test_a_trusted_checkpoint_may_hold_a_module(tmp_path, net):
    torch.save({"model": net, "epoch": 1}, tmp_path / "ckpt.pt")
    model = load_pickled_module(tmp_path / "ckpt.pt", trust=True)
    assert (model.format, model.name, model.notes) == ("torch-module", "Net", ("module found under 'model'",))
    assert model.layers == layers_from_module(net)


@pytest.mark.parametrize("content, what", [(torch.zeros(3), "a Tensor"), ([torch.zeros(3)], "a list"),
                                           (7, "an int"), ({"epoch": 3}, "a dict without tensors")])
def test_a_file_without_weights_is_a_source_error(tmp_path, content, what):
    for legacy in (False, True):
        path = tmp_path / f"odd-{legacy}.pt"
        torch.save(content, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(SourceError) as error:
            load_weights_only(path)
        assert str(error.value) == f"{path}: holds {what}, not a state_dict or model"


def test_unreadable_files_are_source_errors(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    for read in (load_weights_only, load_torchscript, load_exported):
        with pytest.raises(SourceError) as error:
            read(path)
        assert str(error.value).startswith(f"{path}: cannot read") and "\n" not in str(error.value)


def test_every_module_kind(tmp_path):
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4, 4))

    class WeightStandardizedConv(nn.Conv2d):
        pass

    net = nn.ModuleDict({
        "bilinear": nn.Bilinear(3, 4, 5),
        "conv1": nn.Conv1d(4, 8, 3, groups=2),
        "conv3": nn.Conv3d(2, 4, 3, stride=2),
        "tconv1": nn.ConvTranspose1d(4, 6, 3, stride=3, groups=2),
        "tconv3": nn.ConvTranspose3d(2, 2, 2),
        "ws": WeightStandardizedConv(4, 4, 3, groups=4),
        "bag": nn.EmbeddingBag(10, 4),
        "rnn": nn.RNN(3, 5),
        "gru": nn.GRU(3, 5),
        "proj": nn.LSTM(3, 5, proj_size=2),
        "cross": nn.MultiheadAttention(8, 2, kdim=6, vdim=4),
        "gn": nn.GroupNorm(2, 4),
        "inorm": nn.InstanceNorm2d(4, affine=True),
        "rms": nn.RMSNorm(4),
        "custom": Custom(),
    })
    expected = {
        "bilinear.weight": ("bilinear", None), "conv1.weight": ("conv1d", None), "conv3.weight": ("conv3d", None),
        "tconv1.weight": ("conv_transpose1d", None), "tconv3.weight": ("conv_transpose3d", None),
        "ws.weight": ("conv2d", None), "bag.weight": ("embedding", None),
        "rnn.weight_ih_l0": ("rnn", None), "gru.weight_hh_l0": ("gru", 3), "gru.bias_ih_l0": ("gru", 3),
        "proj.weight_ih_l0": ("lstm", 4), "proj.weight_hr_l0": ("lstm", None),
        "cross.q_proj_weight": ("multihead_attention", None), "cross.k_proj_weight": ("multihead_attention", None),
        "cross.out_proj.weight": ("linear", None), "gn.weight": ("norm", None), "inorm.weight": ("norm", None),
        "rms.weight": ("norm", None), "custom.scale": ("unknown", None),
    }
    layers = by_param(Model("live", "module", layers_from_module(net)))
    assert {key: (layers[key].kind, layers[key].stacked) for key in expected} == expected
    assert (layers["conv1.weight"].groups, layers["ws.weight"].groups) == (2, 4)
    assert (layers["tconv1.weight"].transposed, layers["tconv1.weight"].stride) == (True, (3,))
    assert layers["custom.scale"].notes == (
        "Custom: not a module type fancli knows; the fans follow from the shape alone",
    )
    for key, layer in layers.items():
        if len(layer.shape) >= 2:
            assert (layer_fans(layer).fan_in, layer_fans(layer).fan_out) == torch_fans(net.get_parameter(key))


def test_meta_modules_have_no_data():
    with torch.device("meta"):
        layers = layers_from_module(nn.Linear(4096, 4096))
    assert [layer.shape for layer in layers] == [(4096, 4096), (4096,)]
    assert all(layer.data is None for layer in layers)


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    (tmp_path / "fancli_test_broken.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(FACTORY_MODULE, None)


def test_factory_builds_the_module(factories, net):
    model = load_factory(f"{FACTORY_MODULE}:build", {"seed": 0})
    assert (model.format, model.source, model.name) == ("factory", f"{FACTORY_MODULE}:build", "Net")
    assert model.layers == layers_from_module(net)


def test_factory_may_return_an_exported_program(factories):
    model = load_factory(f"{FACTORY_MODULE}:exported_convs", None)
    built = layers_from_module(sys.modules[FACTORY_MODULE].convs())
    assert (model.format, model.name) == ("factory", "Sequential")
    assert model.layers == built and built[0].groups == 4 and built[2].transposed


def test_factory_may_be_an_attribute_path(factories):
    model = load_factory(f"{FACTORY_MODULE}:Zoo.linear", {"width": 5})
    assert [layer.shape for layer in model.layers] == [(3, 5), (3,)]


def test_factory_may_name_a_module_instance(factories):
    model = load_factory(f"{FACTORY_MODULE}:INSTANCE", None)
    assert [layer.param for layer in model.layers] == ["weight", "bias"]
    with pytest.raises(SourceError, match="a Linear instance, not a factory: it takes no arguments$"):
        load_factory(f"{FACTORY_MODULE}:INSTANCE", {"width": 2})


def test_factory_imports_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "fancli_cwd_factory.py").write_text("from torch import nn\ndef make(width=3):\n"
                                                     "    return nn.Linear(width, 2)\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        model = load_factory("fancli_cwd_factory:make", {"width": 5})
    finally:
        sys.modules.pop("fancli_cwd_factory", None)
    assert [layer.shape for layer in model.layers] == [(2, 5), (2,)]
    assert sys.path == before


@pytest.mark.parametrize("spec, problem", [
    ("fancli_no_such_module:build", "No module named 'fancli_no_such_module'"),
    ("fancli_test_broken:build", "importing fancli_test_broken raised ValueError: bad config"),
    (f"{FACTORY_MODULE}:Zoo.missing", "type object 'Zoo' has no attribute 'missing'"),
    (f"{FACTORY_MODULE}:missing", f"module '{FACTORY_MODULE}' has no attribute 'missing'"),
    (f"{FACTORY_MODULE}:explode", "raised RuntimeError: boom"),
    (f"{FACTORY_MODULE}:not_a_module", "returned an int, not a torch.nn.Module"),
    (f"{FACTORY_MODULE}:CONSTANT", "an int, not callable"),
    (FACTORY_MODULE, "expected 'package.module:callable'"),
])
def test_factory_errors_are_one_line_naming_the_spec(factories, spec, problem):
    with pytest.raises(SourceError) as error:
        load_factory(spec, None)
    assert str(error.value) == f"{spec}: {problem}"
