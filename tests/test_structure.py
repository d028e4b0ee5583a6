"""Structure fancli states must be what the source shows, and what torch does: torch is the oracle."""

from __future__ import annotations

import json
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from helpers import run, sampler_calls, torch_std_and_bound  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import init  # noqa: E402


def linear_spec(tmp_path, in_features: int, out_features: int, extra: str = "") -> str:
    spec = tmp_path / "linear.yaml"
    spec.write_text(f"layers:\n  - {{name: fc, type: linear, in_features: {in_features}, "
                    f"out_features: {out_features}{extra}}}\n")
    return str(spec)


def rows(*args) -> list[dict]:
    result = run(*args, "--format", "json", "--all")
    assert result.code == 0, result.err
    return json.loads(result.out)["layers"]


@pytest.mark.parametrize("mode", ("fan_in", "fan_out", "fan_avg"))
def test_torch_default_is_what_reset_parameters_draws_whatever_the_mode(tmp_path, mode):
    with sampler_calls() as calls:
        layer = nn.Linear(1000, 300)
    draws = {id(tensor): args for name, tensor, args in calls if name == "uniform_"}
    (weight,) = rows("inspect", linear_spec(tmp_path, 1000, 300), "-s", "torch_default", "-m", mode)
    assert weight["bound"] == pytest.approx(draws[id(layer.weight)][1], rel=1e-15)
    ignored = [note for note in weight["notes"] if "ignores --mode" in note]
    assert bool(ignored) == (mode != "fan_in")


@pytest.mark.parametrize("scheme,fn", [("kaiming_normal", init.kaiming_normal_), ("kaiming_uniform", init.kaiming_uniform_)])
def test_leaky_relu_without_a_slope_is_kaimings_a_0_and_says_so(tmp_path, scheme, fn):
    torch_std, _ = torch_std_and_bound(fn, torch.empty(300, 200), nonlinearity="leaky_relu")  # a=0 by default
    (weight,) = [r for r in rows("inspect", linear_spec(tmp_path, 200, 300), "-s", scheme, "-n", "leaky_relu")
                 if r["param"] == "fc.weight"]
    assert weight["std"] == pytest.approx(torch_std, rel=1e-15) and weight["gain"] == math.sqrt(2.0)
    assert any("a = 0" in note for note in weight["notes"])
    # with -p the slope is the user's, as kaiming_normal_(a=0.2) reads it
    torch_std, _ = torch_std_and_bound(fn, torch.empty(300, 200), a=0.2, nonlinearity="leaky_relu")
    (weight,) = [r for r in rows("inspect", linear_spec(tmp_path, 200, 300), "-s", scheme, "-n", "leaky_relu",
                                 "-p", "0.2") if r["param"] == "fc.weight"]
    assert weight["std"] == pytest.approx(torch_std, rel=1e-15)


def test_leaky_relu_without_a_slope_elsewhere_is_calculate_gains_and_says_so(tmp_path):
    (weight,) = [r for r in rows("inspect", linear_spec(tmp_path, 200, 300), "-s", "xavier_normal", "-n", "leaky_relu")
                 if r["param"] == "fc.weight"]
    assert weight["gain"] == init.calculate_gain("leaky_relu")
    assert any("0.01" in note for note in weight["notes"])


@pytest.mark.parametrize("scheme,mode,fn", [("kaiming_normal", "fan_avg", init.kaiming_normal_),
                                            ("xavier_uniform", "fan_in", None)])
def test_a_mode_torchs_function_lacks_is_named(tmp_path, scheme, mode, fn):
    if fn is not None:
        with pytest.raises(ValueError):  # torch refuses it
            fn(torch.empty(3, 4), mode=mode)
    (weight,) = [r for r in rows("inspect", linear_spec(tmp_path, 200, 300), "-s", scheme, "-m", mode)
                 if r["param"] == "fc.weight"]
    assert any(f"torch's {scheme}_ has no mode" in note for note in weight["notes"])
    (plain,) = [r for r in rows("inspect", linear_spec(tmp_path, 200, 300), "-s", scheme) if r["param"] == "fc.weight"]
    assert not any("has no mode" in note for note in plain["notes"])


@pytest.fixture(scope="module")
def upsampler(tmp_path_factory):
    """ConvTranspose2d(16, 8, 4, stride=2, padding=1) as a state_dict, a safetensors file and a TorchScript module."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("upsampler")
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1))
    torch.save(net.state_dict(), folder / "state_dict.pt")
    save_file(net.state_dict(), folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates TorchScript
        torch.jit.save(torch.jit.script(net), folder / "script.pt")
    return folder


@pytest.mark.parametrize("name", ("state_dict.pt", "model.safetensors"))
def test_a_transposed_convs_stride_is_unknown_from_names_and_shapes(upsampler, name):
    (weight,) = [r for r in rows("inspect", upsampler / name, "--fans", "effective", "-m", "fan_in")
                 if r["param"] == "0.weight"]
    assert weight["effective_fan_in"] is None and weight["std"] is None
    assert any("unknown stride" in note for note in weight["notes"])
    # the module knows the stride: (in/groups)·k / stride, which the Jacobian of the real layer counts
    (scripted,) = [r for r in rows("inspect", upsampler / "script.pt", "--fans", "effective", "-m", "fan_in")
                   if r["param"] == "0.weight"]
    assert scripted["effective_fan_in"] == 16 * 4 * 4 / (2 * 2)
    assert scripted["std"] == pytest.approx(math.sqrt(2.0) / math.sqrt(64), rel=1e-15)


class GroupedQueryAttention(nn.Module):
    """Phi-3's fused projection with grouped-query attention: q 128 rows, k and v 32 each (not thirds)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(128, 128 + 32 + 32, bias=False)
        self.o_proj = nn.Linear(128, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([128, 32, 32], dim=-1)
        return self.o_proj(q * (k * v).sum(-1, keepdim=True))


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("fused")
    torch.manual_seed(0)
    net = GroupedQueryAttention().eval()
    torch.save(net.state_dict(), folder / "state_dict.pt")
    save_file(net.state_dict(), folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), folder / "script.pt")
        torch.export.save(torch.export.export(net, (torch.randn(2, 128),)), folder / "net.pt2")
    return folder


@pytest.mark.parametrize("name", ("state_dict.pt", "model.safetensors", "script.pt", "net.pt2"))
def test_a_fused_projection_is_not_split_in_thirds_by_its_name(fused, name):
    weight = torch.empty(192, 128)
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(weight)
    (qkv,) = [r for r in rows("inspect", fused / name, "--fans", "effective", "-m", "fan_out")
              if r["param"] == "qkv_proj.weight"]
    assert (qkv["fan_in"], qkv["fan_out"]) == (fan_in, fan_out)  # torch's, as torch reads them
    assert qkv["effective_fan_out"] is None and qkv["effective_fan_in"] == fan_in and qkv["std"] is None
    assert any("fused q/k/v projection 'qkv_proj'" in note for note in qkv["notes"])
    assert qkv.get("stacked") is None


CELLS = {"rnn_cell": lambda: nn.RNNCell(6, 5), "lstm_cell": lambda: nn.LSTMCell(6, 5),
         "gru_cell": lambda: nn.GRUCell(6, 5)}


@pytest.mark.parametrize("kind", CELLS)
def test_recurrent_cells_are_modelled_in_modules_and_state_dicts(tmp_path, kind):
    from fancli import analyze
    from fancli.analysis.fans import layer_fans
    from fancli.layer import Model
    from fancli.loaders import load
    from fancli.loaders.torch_module import layers_from_module
    from fancli.report import Settings

    with sampler_calls() as calls:
        cell = CELLS[kind]()
    draws = {id(tensor): args for name, tensor, args in calls if name == "uniform_"}
    torch.save(cell.state_dict(), tmp_path / "cell.pt")
    gates = {"rnn_cell": 1, "lstm_cell": 4, "gru_cell": 3}[kind]
    for model in (Model("m", "module", layers_from_module(cell)), load(str(tmp_path / "cell.pt"))):
        layers = {layer.param: layer for layer in model.layers}
        assert {layer.kind for layer in layers.values()} == {kind}
        for key in ("weight_ih", "weight_hh"):
            assert layers[key].stacked == (gates if gates > 1 else None)
            fans = layer_fans(layers[key])
            assert fans.pick(effective=True) == (cell.get_parameter(key).shape[1], cell.hidden_size)
        report = analyze(model, Settings(scheme="torch_default"))
        for row in report.rows:  # every parameter, biases too: U(±1/√hidden) as RNNCellBase draws it
            assert row.inits["fan_in"].bound == pytest.approx(draws[id(cell.get_parameter(row.layer.param))][1],
                                                               rel=1e-15), row.layer.param


def test_attention_out_proj_bias_is_zero_whatever_the_key_order(tmp_path):
    """safetensors sorts keys: bias_k comes before in_proj_weight; torch still draws out_proj.bias 0."""
    from safetensors.torch import save_file

    with sampler_calls() as calls:
        attention = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    zeroed = {id(tensor) for name, tensor, _ in calls if name in ("zero_", "fill_")}
    assert id(attention.out_proj.bias) in zeroed or (attention.out_proj.bias == 0).all()
    save_file({key: value.detach().contiguous() for key, value in attention.state_dict().items()},
              tmp_path / "attention.safetensors")
    (bias,) = [r for r in rows("inspect", tmp_path / "attention.safetensors", "-s", "torch_default")
               if r["param"] == "out_proj.bias"]
    assert bias["std"] == 0.0


def test_integer_tensors_are_not_listed_as_the_readme_says(tmp_path):
    from helpers import REPO

    torch.save({"fc.weight": torch.randn(4, 3), "q.weight": torch.ones(4, 3, dtype=torch.int8),
                "position_ids": torch.arange(8)}, tmp_path / "mixed.pt")
    assert [r["param"] for r in rows("inspect", tmp_path / "mixed.pt", "--stats")] == ["fc.weight"]
    assert "integer tensors are not listed" in " ".join((REPO / "README.md").read_text().split())


def _last_draws(build) -> tuple[object, dict[int, tuple[str, tuple]]]:
    """The module, and the last sampler call torch made on each tensor while building it."""
    with sampler_calls() as calls:
        module = build()
    return module, {id(tensor): (name, args) for name, tensor, args in calls}


def _torch_default_rows(path) -> dict[str, dict]:
    return {r["param"]: r for r in rows("inspect", path, "-s", "torch_default")}


def test_names_that_are_not_layers_are_not_convs(tmp_path):
    """MHA's bias_k/bias_v (xavier_normal_ in torch), T5's relative_attention_bias (an Embedding, N(0, 1)),
    ViT's cls_token and ConvNeXt's layer_scale (no layer) from a state_dict."""
    attention, draws = _last_draws(lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True))
    torch.manual_seed(0)
    state = {f"attn.{key}": value for key, value in attention.state_dict().items()}
    embedding, embedding_draws = _last_draws(lambda: nn.Embedding(32, 4))
    state["block.relative_attention_bias.weight"] = embedding.weight.detach()
    state["cls_token"] = torch.zeros(1, 1, 8)
    state["stage.layer_scale"] = torch.full((8, 1, 1), 1e-6)
    torch.save(state, tmp_path / "state_dict.pt")
    found = _torch_default_rows(tmp_path / "state_dict.pt")
    for key in ("bias_k", "bias_v"):
        method, args = draws[id(getattr(attention, key))]
        assert found[f"attn.{key}"]["kind"] == "multihead_attention" and method == "normal_"
        assert found[f"attn.{key}"]["std"] == pytest.approx(args[1], rel=1e-15)
    method, args = embedding_draws[id(embedding.weight)]
    relative = found["block.relative_attention_bias.weight"]
    assert relative["kind"] == "embedding" and method == "normal_" and relative["std"] == args[1]
    for key in ("cls_token", "stage.layer_scale"):
        assert found[key]["kind"] == "unknown" and any("not a layer's weight" in n for n in found[key]["notes"])


def test_a_bilinear_is_named_by_its_module_or_said_to_be_possible(tmp_path):
    bilinear, draws = _last_draws(lambda: nn.Bilinear(6, 5, 4))
    torch.save({"bilinear.weight": bilinear.weight.detach(), "bilinear.bias": bilinear.bias.detach(),
                "head.weight": bilinear.weight.detach().clone(), "head.bias": bilinear.bias.detach().clone()},
               tmp_path / "state_dict.pt")
    found = _torch_default_rows(tmp_path / "state_dict.pt")
    assert found["bilinear.weight"]["kind"] == "bilinear"
    assert found["bilinear.weight"]["bound"] == pytest.approx(draws[id(bilinear.weight)][1][1], rel=1e-15)
    assert found["head.weight"]["kind"] == "conv1d"
    assert any("nn.Bilinear" in note for note in found["head.weight"]["notes"])


def test_a_transformer_reinitialises_its_children_with_xavier_uniform(tmp_path):
    """nn.Transformer._reset_parameters: xavier_uniform_ on every ≥2-D parameter, after each child's own init."""
    from fancli import analyze
    from fancli.layer import Model
    from fancli.loaders.torch_module import layers_from_module
    from fancli.report import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enable_nested_tensor without batch_first
        transformer, draws = _last_draws(lambda: nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1,
                                                                num_decoder_layers=1, dim_feedforward=16))
    report = analyze(Model("m", "module", layers_from_module(transformer)), Settings(scheme="torch_default"))
    checked = 0
    for row in report.rows:
        method, args = draws.get(id(transformer.get_parameter(row.layer.param)), (None, ()))
        if len(row.layer.shape) >= 2:
            assert method == "uniform_" and row.inits["fan_in"].bound == pytest.approx(args[1], rel=1e-15)
            assert row.layer.reinit_by == "Transformer"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ("state_dict.pt", "model.safetensors"))
def test_config_json_beside_the_weights_splits_a_fused_projection(fused, tmp_path, name):
    """Grouped-query heads (4 q, 1 kv, head_dim 32: 128 + 32 + 32 rows) are named part by part; equal heads
    make three stacked blocks, each with torch's fan_out of its own part."""
    import shutil

    folder = tmp_path / "gqa"
    folder.mkdir()
    shutil.copy(fused / name, folder / name)
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 4, "num_key_value_heads": 1,
                                                    "hidden_size": 128}))
    (qkv,) = [r for r in rows("inspect", folder / name) if r["param"] == "qkv_proj.weight"]
    assert qkv["effective_fan_out"] is None and any("q 128, k 32, v 32" in n for n in qkv["notes"])

    torch.manual_seed(0)
    equal = nn.Linear(32, 96, bias=False)  # 4 heads of 8: q, k, v 32 rows each
    part = equal.weight.detach().split(32)[0]
    torch.save({"attn.qkv_proj.weight": equal.weight.detach()}, folder / "equal.pt")
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 32}))
    result = run("inspect", folder / "equal.pt", "--format", "json", "--fans", "effective", "-m", "fan_out")
    (qkv,) = json.loads(result.out)["layers"]
    assert qkv["effective_fan_out"] == init._calculate_fan_in_and_fan_out(part)[1]
    assert any("config.json" in note for note in json.loads(result.out)["source"].get("notes", []) + qkv["notes"])


def test_a_config_json_that_cannot_be_used_is_said_not_fatal(fused, tmp_path):
    import shutil

    shutil.copy(fused / "state_dict.pt", tmp_path / "state_dict.pt")
    (tmp_path / "config.json").write_text("{not json")
    result = run("inspect", tmp_path / "state_dict.pt", "--format", "json")
    assert result.code == 0 and "config.json beside the weights not used" in result.out
