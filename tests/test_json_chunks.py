"""JSON written in pieces is one valid document whatever the number of rows, full batches included."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

import fancli
from fancli.renderers import json_out


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 6, 7])
def test_an_array_in_batches_is_valid_json_for_any_count(monkeypatch, count):
    monkeypatch.setattr(json_out, "LINES_PER_CHUNK", 3)
    items = [{"i": i} for i in range(count)]
    text = '{"a": 1' + "".join(json_out.json_array("x", (f"    {json.dumps(item)}" for item in items))) + "\n}"
    assert json.loads(text) == {"a": 1, "x": items}


@pytest.mark.parametrize("batch", [1, 2, 3, 27, 28])
def test_a_report_in_batches_is_the_report_in_one_piece(monkeypatch, batch):
    """27 layers and 27 groups: batches of 1, 3 and 27 end full, 2 and 28 do not."""
    report = fancli.inspect(str(REPO / "sample_models" / "tinynet_state_dict.pt"))
    whole = json.loads("".join(json_out.json_chunks(report)))
    assert len(whole["layers"]) == len(whole["groups"]) == 27
    monkeypatch.setattr(json_out, "LINES_PER_CHUNK", batch)
    assert json.loads("".join(json_out.json_chunks(report))) == whole
