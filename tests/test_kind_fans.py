"""Each kind's fan rule is named by its `LayerKind` record and dispatched through `fans.RULES`; tensors that are
no layer's weight (Mamba's A_log and D, a bare 2-D parameter) are not read as a Linear's; a lazy module before
its first call is refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import fancli
from fancli import kinds
from fancli.analysis import fans
from fancli.errors import SourceError
from fancli.layer import Layer


def test_a_kind_naming_a_fan_rule_fans_lacks_is_refused_at_import():
    """In a child process: the import that refuses it must run with the bad record already in KINDS."""
    code = ("from fancli import kinds\n"
            "kinds.KINDS['made_up'] = kinds.LayerKind('made_up', fans='no_such_rule')\n"
            "import fancli.analysis.fans\n")
    root = Path(fancli.__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                           env={**os.environ, "PYTHONPATH": str(root)})
    assert child.returncode == 1
    assert "ImportError: fancli.kinds names fan rules that fancli.analysis.fans lacks: made_up: 'no_such_rule'" in (
        child.stderr)


def test_a_new_kind_gets_its_fans_from_the_rule_its_record_names(monkeypatch):
    """A kind added as one record that names the experts' rule is read expert by expert: no branch by kind name."""
    monkeypatch.setitem(kinds.KINDS, "grouped_experts", replace(kinds.KINDS["experts"], name="grouped_experts"))
    got = fans.layer_fans(Layer("m.experts", "m.experts.down_proj", "grouped_experts", (4, 6, 8), stacked=4))
    whole, one = torch.empty(4, 6, 8), torch.empty(6, 8)  # torch's fans of the stack, and of one expert's matrix
    assert (got.fan_in, got.fan_out) == torch.nn.init._calculate_fan_in_and_fan_out(whole)
    assert (got.effective_fan_in, got.effective_fan_out) == torch.nn.init._calculate_fan_in_and_fan_out(one)


@pytest.fixture(scope="module")
def mamba():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.MambaConfig(vocab_size=32, hidden_size=8, state_size=4, num_hidden_layers=2, expand=2,
                                      conv_kernel=3, time_step_rank=2)
    return transformers.MambaForCausalLM(config)


def test_mamba_a_log_and_d_are_set_not_drawn_and_have_no_fans(mamba):
    mixer = mamba.backbone.layers[0].mixer
    d_inner, d_state = mixer.A_log.shape
    # The premise, from transformers' MambaMixer itself: A_log is log(1…d_state) on every channel, D is ones.
    torch.testing.assert_close(mixer.A_log.detach(), torch.log(torch.arange(1, d_state + 1.0)).expand(d_inner, -1))
    torch.testing.assert_close(mixer.D.detach(), torch.ones(d_inner))

    rows = {row.layer.param: row for row in fancli.inspect(mamba.state_dict()).rows}
    for layer in (0, 1):
        prefix = f"backbone.layers.{layer}.mixer"
        for leaf in ("A_log", "D"):
            row = rows[f"{prefix}.{leaf}"]
            assert row.layer.kind == "ssm_param"
            assert (row.fans.fan_in, row.fans.fan_out) == (None, None)
            assert any("not drawn" in note for note in row.notes)
            assert all(values.std is None for values in row.inits.values())
        weight = mixer.in_proj.weight
        assert rows[f"{prefix}.in_proj.weight"].layer.kind == "linear"
        assert ((rows[f"{prefix}.in_proj.weight"].fans.fan_in, rows[f"{prefix}.in_proj.weight"].fans.fan_out)
                == torch.nn.init._calculate_fan_in_and_fan_out(weight))


def test_a_2d_parameter_that_is_no_weight_is_not_read_as_a_linear():
    """SAM's relative position tables [2·size − 1, head_dim] sit beside its attention's Linear weights."""
    state = {"attn.rel_pos_h": torch.zeros(13, 16), "attn.qkv.weight": torch.zeros(48, 16)}
    rows = {row.layer.param: row for row in fancli.inspect(state).rows}
    assert rows["attn.rel_pos_h"].layer.kind == "unknown"
    assert any("'rel_pos_h' is a parameter, not a layer's weight" in note for note in rows["attn.rel_pos_h"].notes)
    assert rows["attn.qkv.weight"].layer.kind == "linear"


@pytest.mark.parametrize("build", [lambda: nn.LazyLinear(4), lambda: nn.Sequential(nn.Linear(2, 3), nn.LazyConv2d(4, 3)),
                                   lambda: nn.LazyLinear(4).state_dict()])
def test_a_lazy_module_before_its_first_call_is_one_clear_error(build):
    with pytest.raises(SourceError, match=r"(LazyLinear|LazyConv2d) parameter '(1\.)?weight' is uninitialized|"
                                          r"tensor 'weight' is uninitialized") as raised:
        fancli.inspect(build())
    assert "first call" in str(raised.value)


def test_a_lazy_module_after_its_first_call_is_inspected_as_torch_built_it():
    module = nn.LazyLinear(4)
    module(torch.zeros(1, 3))
    (row, _) = fancli.inspect(module).rows
    assert (row.fans.fan_in, row.fans.fan_out) == torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
