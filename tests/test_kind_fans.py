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
