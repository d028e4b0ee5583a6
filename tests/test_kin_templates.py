"""A flat source's layers are computed once per kin (module name less its indices, its tensors) and copied
for each entry alike: every copy must equal the layer its entry gets on its own, data handle included."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fancli import loaders
from fancli.errors import SourceError
from fancli.loaders import flat, flat_keys, safetensors_file, sharded, torch_module

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _varied() -> dict:
    """Repeated modules that differ in what a rule reads: a bias here and not there, one stored [in, out],
    FP8 weights with and without their scales, int8 with SCB, GPTQ, 4-bit absmax with and without its weight, a k_scale, RNN layers,
    attention, a fused qkv, transposed and plain convs, Sequential indices as the last name, stacked experts
    [E, out, in] and [E, in, out] with and without their biases, and one whose layout nothing beside it tells; MXFP4 experts with and without their scales, compressed-tensors
    and MLX packed weights whose logical shapes differ by their scales or packed width."""
    g = torch.Generator().manual_seed(0)

    def w(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    t = {}
    for i in range(4):
        p = f"blocks.{i}."
        t[p + "fc.weight"] = w(8, 6)
        if i % 2:
            t[p + "fc.bias"] = w(8)
        t[p + "proj.weight"] = w(6, 4) if i != 2 else w(4, 6)
        if i == 2:
            t[p + "proj.bias"] = w(6)  # [in, out]: its bias matches dim 1
        t[p + "fp8.weight"] = w(256, 384, dtype=torch.float8_e4m3fn)
        if i != 3:
            t[p + "fp8.weight_scale_inv"] = w(2, 3)
        t[p + "int8.weight"] = torch.randint(-127, 127, (5, 7), dtype=torch.int8)
        t[p + "int8.SCB"] = w(5)
        t[p + "q.qweight"] = torch.randint(0, 2**30, (2, 16), dtype=torch.int32)
        t[p + "q.scales"] = w(1, 16)
        t[p + "q.qzeros"] = torch.randint(0, 2**30, (1, 2), dtype=torch.int32)
        if i != 1:  # absmax whose weight is missing: its note says so, its kin does not show it
            t[p + "nf4.weight"] = torch.randint(0, 255, (32, 1), dtype=torch.uint8)
        t[p + "nf4.weight.absmax"] = w(1)
        t[p + "attn.k_scale"] = w(1)
        t[p + "attn.in_proj_weight"] = w(12, 4)
        t[p + "attn.in_proj_bias"] = w(12)
        t[p + "qkv.weight"] = w(12, 4)
        t[p + "rnn.weight_ih_l0"] = w(16, 3)
        t[p + "rnn.weight_hh_l0"] = w(16, 4)
        t[p + "rnn.weight_ih_l1"] = w(16, 4)
        t[p + "rnn.weight_hh_l1"] = w(16, 4)
        t[p + "up.weight"] = w(4, 2, 3, 3)
        t[p + "up.bias"] = w(2) if i < 2 else w(4)  # transposed where the bias has out = 2 ≠ shape[0]
        t[p + f"seq.{2 * i}.weight"] = w(3, 3)
        t[p + "emb_tokens.weight"] = w(10, 4)
        x = p + "mlp.experts."
        if i < 3:
            t[x + "gate_up_proj"], t[x + "down_proj"] = (w(2, 3, 8), w(2, 4, 3)) if i == 2 else (w(2, 6, 8), w(2, 8, 3))
        else:
            t[x + "down_proj"] = w(2, 8, 3)
        if i == 2:
            t[x + "gate_up_proj_bias"], t[x + "down_proj_bias"] = w(2, 8), w(2, 3)
        t[p + "mx.experts.down_proj_blocks"] = torch.randint(0, 255, (2, 4, 1, 16), dtype=torch.uint8)
        if i != 1:  # MXFP4 blocks without their scales: no statistics
            t[p + "mx.experts.down_proj_scales"] = torch.randint(120, 130, (2, 4, 1), dtype=torch.uint8)
        t[p + "mx.experts.down_proj_bias"] = w(2, 4)
        t[p + "ct.weight_packed"] = torch.randint(0, 2**30, (4, 2 + i % 2), dtype=torch.int32)
        t[p + "ct.weight_scale"] = w(4, 1)
        t[p + "mlx.weight"] = torch.randint(0, 2**30, (4, 8), dtype=torch.int32).view(torch.uint32)
        t[p + "mlx.scales"], t[p + "mlx.biases"] = (w(4, 1), w(4, 1)) if i < 2 else (w(4, 4), w(4, 4))
    return t


def _one_by_one(entries) -> list:
    """Each kept entry's layer computed on its own (the memo's oracle), tied copies skipped."""
    entries = list(entries)
    by_key = {entry.key: entry for entry in entries}
    kept = [entry for entry in entries if flat_keys._listed(entry, set(by_key))]
    shapes = {entry.key: entry.shape for entry in kept}
    first, layers = set(), []
    for entry in kept:
        if entry.identity is not None:
            if entry.identity in first:
                continue
            first.add(entry.identity)
        layers.append(flat_keys._layer(entry, by_key, set(by_key), shapes, {})[0])
    return layers


def _data(layer) -> tuple:
    data = layer.data
    if data is None or dataclasses.is_dataclass(data):
        return type(data).__name__, data
    slots = getattr(type(data), "__slots__", None)  # a slotted handle (quant_data.Scaled) has no __dict__
    return type(data).__name__, {k: getattr(data, k) for k in slots} if slots else dict(vars(data))


def _checked(monkeypatch, *modules) -> list:
    """Run the real `layers_from_entries` (and `layers_from_columns`, the LayerTable read whole) in the loader
    `modules` and record (its layers, the oracle's)."""
    seen = []

    def both(entries):
        entries = list(entries)
        layers = flat_keys.layers_from_entries(entries)
        seen.append((layers, _one_by_one(entries)))
        return layers

    def from_columns(columns):
        layers = flat_keys.layers_from_columns(columns)
        seen.append((tuple(layers), _one_by_one(map(columns.entry, range(len(columns.keys))))))
        return layers

    for module in modules:
        monkeypatch.setattr(module, "layers_from_entries", both)
        if hasattr(module, "layers_from_columns"):
            monkeypatch.setattr(module, "layers_from_columns", from_columns)
    return seen


def _without_ties(layer):
    if not layer.aliases:
        return layer
    return dataclasses.replace(layer, aliases=(), notes=layer.notes[:-1])


def test_every_copy_equals_its_entrys_own_layer_safetensors(tmp_path, monkeypatch):
    path = tmp_path / "varied.safetensors"
    safetensors_torch.save_file(_varied(), str(path))
    seen = _checked(monkeypatch, safetensors_file)
    applied = []
    apply = flat_keys.KinTemplate.apply
    monkeypatch.setattr(flat_keys.KinTemplate, "apply", lambda *args: applied.append(args[1]) or apply(*args))
    loaders.load(str(path))
    (layers, oracle), = seen
    assert len(layers) == len(oracle) > 80
    assert len(applied) > 40  # most entries are copies: the memo is what this test checks
    for ours, theirs in zip(layers, oracle):
        assert ours == theirs
        assert _data(ours) == _data(theirs)
    kinds = {layer.kind for layer in layers}
    assert {"linear", "quant_scale", "lstm", "multihead_attention", "embedding", "conv_transpose2d",
            "conv2d"} <= kinds, kinds
    transposed = [layer.param for layer in layers if layer.transposed]
    assert transposed == ["blocks.0.up.weight", "blocks.1.up.weight"]
    in_out = [layer.param for layer in layers if layer.layout == "in_out" and ".mx." not in layer.param]
    assert sorted(in_out) == ["blocks.2.mlp.experts.down_proj", "blocks.2.mlp.experts.gate_up_proj",
                              "blocks.2.proj.weight"]
    experts = {layer.param: layer.unknown_fans for layer in layers
               if layer.kind == "experts" and ".mlp." in layer.param}
    assert len(experts) == 9 and experts.pop("blocks.3.mlp.experts.down_proj") == ("fan_in", "fan_out")
    assert set(experts.values()) == {()}
    logical = {layer.param: layer.shape for layer in layers if layer.stored_shape}
    assert logical["blocks.1.ct.weight_packed"] == (4, 24) and logical["blocks.2.mlx.weight"] == (4, 128)
    assert logical["blocks.3.mx.experts.down_proj_blocks"] == (2, 32, 4)
    assert {layer.kind for layer in layers if layer.param.endswith("mx.experts.down_proj_bias")} == {"experts"}


def test_every_copy_equals_its_entrys_own_layer_torch_zip(tmp_path, monkeypatch):
    """A torch.save state_dict (read by torch's weights-only loader, as it holds FP8): tied tensors, and views
    whose data handles differ though their kin agree."""
    tensors = _varied()
    shared = torch.randn(6, 4)
    for i in range(3):
        tensors[f"tied.{i}.weight"] = shared  # one tensor under three keys
        base = torch.randn(4, 6)
        tensors[f"view.{i}.weight"] = base.t() if i == 1 else base.t().contiguous()
    path = tmp_path / "varied.pt"
    torch.save(tensors, path)
    seen = _checked(monkeypatch, flat, torch_module)
    loaders.load(str(path))
    (layers, oracle), = seen
    assert len(layers) == len(oracle) > 80
    for ours, theirs in zip(layers, oracle):
        assert _without_ties(ours) == theirs
        assert _data(ours) == _data(theirs)
    tied = [layer for layer in layers if layer.aliases]
    assert [(layer.param, layer.aliases) for layer in tied] == [("tied.0.weight", ("tied.1.weight", "tied.2.weight"))]


@pytest.mark.parametrize("tensors", [
    {"weight": (4, 4), ".weight": (8,)},  # both: module "", leaf "weight"
    {"weight": "fp8", "weight_scale_inv": (2, 2), ".weight": "fp8"},
    {"weight": "fp8", ".weight": "fp8", ".weight_scale_inv": (2, 2)},
], ids=["shapes", "scale-beside-the-dotless", "scale-beside-the-dotted"])
def test_keys_that_share_a_module_and_leaf_are_each_computed_on_their_own(tmp_path, monkeypatch, tensors):
    """Found in review: `weight` and `.weight` once took one template (the wrong shape, another's scale)."""
    made = {key: torch.randn(256, 256).to(torch.float8_e4m3fn) if value == "fp8" else torch.randn(*value)
            for key, value in tensors.items()}
    path = tmp_path / "dots.safetensors"
    safetensors_torch.save_file(made, str(path))
    seen = _checked(monkeypatch, safetensors_file)
    loaders.load(str(path))
    (layers, oracle), = seen
    assert [(layer.param, layer.shape, _data(layer)[0]) for layer in layers] == \
        [(layer.param, layer.shape, _data(layer)[0]) for layer in oracle]
    assert layers == tuple(oracle)


def test_a_scale_that_fits_no_layout_is_refused_whatever_came_first(tmp_path):
    made = {"weight": torch.randn(256, 256).to(torch.float8_e4m3fn), "weight_scale_inv": torch.ones(5, 5),
            ".weight": torch.randn(256, 256).to(torch.float8_e4m3fn)}
    path = tmp_path / "bad-scale.safetensors"
    safetensors_torch.save_file(made, str(path))
    with pytest.raises(SourceError, match="fits no scale layout"):
        loaders.load(str(path))


def test_one_key_in_two_shards_keeps_each_its_own_layer(tmp_path, monkeypatch):
    """Found in review: a key held by two torch.save shards once got the first one's layer twice."""
    torch.save({"a.weight": torch.randn(4, 4)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"a.weight": torch.randn(8), "b.weight": torch.randn(3, 3)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": "pytorch_model-00001-of-00002.bin",
                                                "b.weight": "pytorch_model-00002-of-00002.bin"}}))
    seen = _checked(monkeypatch, sharded)
    model = loaders.load(str(index))
    (layers, oracle), = seen
    assert layers == tuple(oracle)
    assert [(layer.param, layer.kind, layer.shape) for layer in model.layers] == [
        ("a.weight", "linear", (4, 4)), ("a.weight", "norm", (8,)), ("b.weight", "linear", (3, 3))]


@given(st.lists(st.text(alphabet="a1.0\n\x00é", max_size=10), max_size=20))
def test_modules_blanked_by_template_as_one_by_one(modules):
    """`_all_blanked` blanks once per digit template: the same as `_blanked` module by module."""
    assert flat_keys._all_blanked(modules) == [flat_keys._blanked(module) for module in modules]
