"""Folding: a MoE-shaped checkpoint's table shows each distinct layer once, with exact index patterns, and
loses nothing: every pattern expands to exactly the keys JSON lists."""

from __future__ import annotations

import io
import json

import pytest
from helpers import run

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fancli.folding import MAX_INDEX_DIGITS, expand, fold, pattern, products, ranges, split_keys

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

LAYERS = (0, 1, 2, 4, 5, 6, 7)  # layer 3 missing: a gap every layer pattern must show


def moe(odd_std: bool = False, wide_down: bool = False) -> dict:
    """7 layers × (attention q/k/v/o, two norms, a router, 8 experts × gate/up/down, a shared expert):
    241 tensors, one expert (layer 1, expert 5) with a wider up_proj."""
    generator = torch.Generator().manual_seed(0)

    def w(*shape: int, std: float = 0.02):
        return torch.randn(*shape, generator=generator) * std

    tensors = {"model.embed_tokens.weight": w(100, 64)}
    for i in LAYERS:
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = torch.ones(64)
        for name, rows in (("q", 64), ("k", 16), ("v", 16), ("o", 64)):
            cols = 32 if wide_down and (i, name) == (0, "q") else 64
            tensors[p + f"self_attn.{name}_proj.weight"] = w(rows, cols)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(64)
        tensors[p + "mlp.gate.weight"] = w(8, 64)
        for e in range(8):
            q = p + f"mlp.experts.{e}."
            tensors[q + "gate_proj.weight"] = w(32, 64, std=0.05 if odd_std and (i, e) == (4, 2) else 0.02)
            tensors[q + "up_proj.weight"] = w(48 if (i, e) == (1, 5) else 32, 64)
            tensors[q + "down_proj.weight"] = w(64, 48 if wide_down else 32)
        for name, shape in (("gate", (32, 64)), ("up", (32, 64)), ("down", (64, 32))):
            tensors[p + f"mlp.shared_expert.{name}_proj.weight"] = w(*shape)
    tensors["model.norm.weight"] = torch.ones(64)
    tensors["lm_head.weight"] = w(100, 64)
    return tensors


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe")
    paths = {}
    for name, options in (("moe", {}), ("odd", {"odd_std": True}), ("wide", {"wide_down": True})):
        paths[name] = folder / f"{name}.safetensors"
        safetensors_torch.save_file(moe(**options), str(paths[name]))
    return paths


def _names(table: str) -> list[str]:
    """The name cell of each table row."""
    return [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]


def test_ranges_and_products_are_exact():
    assert ranges([0, 1, 2, 3, 5, 7, 8, 9]) == "0..3,5,7..9"
    assert ranges([4, 5]) == "4,5"
    full = {(layer, expert) for layer in (0, 1, 3) for expert in range(4)}
    assert products(full) == [((0, 1, 3), (0, 1, 2, 3))]
    ragged = full - {(1, 2)}
    found = products(ragged)
    assert found == [((0, 3), (0, 1, 2, 3)), ((1,), (0, 1, 3))]
    assert sorted(t for sets in found for t in __import__("itertools").product(*sets)) == sorted(ragged)


_PARTS = st.one_of(st.sampled_from(["0", "7", "00", "007", "12", "1" * MAX_INDEX_DIGITS, "9" * (MAX_INDEX_DIGITS + 1),
                                    "", "w", "a1", "٣", "3\n", "\n", "\x00", "4\x00"]), st.text(max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_PARTS, min_size=1, max_size=5).map(".".join), max_size=8))
def test_keys_split_into_the_indices_the_rule_names(keys):
    """A part is an index where it is at most MAX_INDEX_DIGITS ASCII digits without a leading zero; all keys
    split in one pass (or one by one, where one holds a newline or NUL) as each would alone, and `pattern`
    writes each key back."""
    found = list(split_keys(keys))
    assert len(found) == len(keys)
    for key, (template, indices) in zip(keys, found):
        parts = key.split(".")
        expected = [int(p) for p in parts if p.isascii() and p.isdigit() and len(p) <= MAX_INDEX_DIGITS
                    and (p == "0" or p[0] != "0")]
        assert list(indices) == expected
        assert len(template) == len(indices) + 1
        assert pattern(template, tuple((i,) for i in indices)) == key
        assert [(template, indices)] == list(split_keys([key]))


def test_keys_that_are_not_indices_do_not_fold():
    keys = ["a.01.w", "a.1.w", "a.2.w", "b.0.w"]
    groups = fold(keys, key=lambda k: k, same=lambda k: None)
    assert [g.pattern for g in groups] == ["a.01.w", "a.{1,2}.w", "b.0.w"]


def test_the_folded_table_shows_each_distinct_layer_once_with_the_gap(checkpoints):
    result = run("inspect", checkpoints["moe"])
    assert result.code == 0, result.err
    names = _names(result.out)
    assert len(names) == 15  # 226 tensors of 2 dims
    assert "model.layers.{0..2,4..7}.mlp.experts.{0..7}.gate_proj.weight ×56" in names
    assert "model.layers.{0..2,4..7}.self_attn.q_proj.weight ×7" in names
    # layer 1's expert 5 has another shape: the up_proj product is split so that no pattern claims it
    assert "model.layers.{0,2,4..7}.mlp.experts.{0..7}.up_proj.weight ×48" in names
    assert "model.layers.1.mlp.experts.{0..4,6,7}.up_proj.weight ×7" in names
    assert "model.layers.1.mlp.experts.5.up_proj.weight" in names
    assert "114,688" in result.out  # params: the group's total (56 × 64 × 32)
    assert "total: 241 tensors · 477,120 parameters" in result.out  # every tensor counted, folded or hidden


def test_expanding_the_groups_gives_back_exactly_the_json_rows(checkpoints):
    document = json.loads(run("inspect", checkpoints["moe"], "--format", "json").out)
    params = [layer["param"] for layer in document["layers"]]
    assert len(params) == 241
    expanded = [key for group in document["groups"] for key in expand(group["pattern"])]
    assert sorted(expanded) == sorted(params)  # each key once: nothing lost, nothing claimed twice
    assert all(len(expand(group["pattern"])) == group["count"] for group in document["groups"])
    by_param = {layer["param"]: layer for layer in document["layers"]}
    for group in document["groups"]:
        members = [by_param[key] for key in expand(group["pattern"])]
        assert group["params"] == sum(member["params"] for member in members)
        shown = {json.dumps({k: v for k, v in m.items() if k not in ("name", "param")}) for m in members}
        assert len(shown) == 1  # members agree in every field but their keys
    assert len(document["groups"]) == 15 + 3  # the norms: two per layer and the final one


def test_expand_and_markdown(checkpoints):
    expanded = run("inspect", checkpoints["moe"], "--expand", "--all")
    assert len(_names(expanded.out)) == 241
    assert "model.layers.4.mlp.experts.3.down_proj.weight" in _names(expanded.out)
    markdown = run("inspect", checkpoints["moe"], "--format", "markdown").out
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 15
    assert "| model.layers.{0..2,4..7}.mlp.experts.{0..7}.down_proj.weight ×56 |" in markdown
    assert "total: 241 tensors" in markdown
    csv_lines = run("inspect", checkpoints["moe"], "--format", "csv").out.strip().splitlines()
    assert len(csv_lines) == 1 + 241  # machines get every row


def test_stats_split_out_a_member_drawn_at_another_std(checkpoints):
    names = _names(run("inspect", checkpoints["odd"], "--stats").out)
    assert "model.layers.4.mlp.experts.2.gate_proj.weight" in names
    assert "model.layers.4.mlp.experts.{0,1,3..7}.gate_proj.weight ×7" in names
    assert "model.layers.{0..2,5..7}.mlp.experts.{0..7}.gate_proj.weight ×48" in names
    # draws of one std agree within their standard errors: the rest still fold, showing the observed range
    table = run("inspect", checkpoints["moe"], "--stats").out
    assert len(_names(table)) == 15
    row = next(line for line in table.splitlines() if "experts.{0..7}.down_proj.weight ×56" in line)
    assert "…" in row


def test_a_narrow_terminal_wraps_patterns_and_keeps_every_number(checkpoints):
    from rich.console import Console

    from fancli import api
    from fancli.renderers.table import print_rich

    report = api.inspect(str(checkpoints["moe"])).as_read("table")
    out = io.StringIO()
    print_rich(report, Console(file=out, width=90, color_system=None))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 90
    for number in ("114,688", "98,304", "14,336", "0.1768", "0.25"):
        assert number in text
    lines = text.splitlines()
    for above, below in zip(lines, lines[1:]):  # never broken inside a range's `..`
        assert not (above.rstrip(" │").endswith(".") and below.lstrip("│ ").startswith("."))


def test_check_reports_a_group_that_drifted_alike_on_one_line(checkpoints, tmp_path):
    baseline = tmp_path / "lock.json"
    assert run("check", checkpoints["moe"], "--no-config", "--update", "--baseline", baseline).code == 0
    result = run("check", checkpoints["wide"], "--no-config", "--baseline", baseline)
    assert result.code == 1
    lines = [line for line in result.out.splitlines() if line.startswith("│")]
    pattern = "model.layers.{0..2,4..7}.mlp.experts.{0..7}.down_proj.weight ×56"
    assert [line.split("│")[3].strip() for line in lines if pattern in line] == ["shape", "fan_in", "std"]
    assert sum("model.layers.0.self_attn.q_proj.weight" in line for line in lines) == 3  # alone, per member
    assert len(lines) == 6
    document = json.loads(run("check", checkpoints["wide"], "--no-config", "--baseline", baseline,
                              "--format", "json").out)
    assert len(document["changes"]) == 3 * 57  # JSON keeps every change, and adds the table's groups
    groups = document["change_groups"]
    assert len(groups) == len(lines) and sum(group["count"] for group in groups) == len(document["changes"])
    for group in groups:  # each group stands for exactly the changes of its keys, all alike
        members = [c for c in document["changes"] if c["param"] in expand(group["pattern"])
                   and c["field"] == group["field"]]
        assert len(members) == group["count"]
        assert all((c["change"], c["baseline"], c["current"]) == (group["change"], group["baseline"],
                                                                 group["current"]) for c in members)


def test_fp8_block_scales_fold_with_their_weights(tmp_path):
    """DeepSeek-V3 keeps a `weight_scale_inv` beside each FP8 weight; a scale's note names its weight
    relative to its own key, so 7 layers × 8 experts of scales fold into one row like their weights."""
    tensors = {}
    for i in LAYERS:
        for e in range(8):
            q = f"model.layers.{i}.mlp.experts.{e}.gate_proj."
            tensors[q + "weight"] = (torch.randn(32, 64) * 0.02).to(torch.float8_e4m3fn)
            tensors[q + "weight_scale_inv"] = torch.rand(1, 1) + 0.5
    path = tmp_path / "fp8.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    names = _names(run("inspect", path).out)
    assert names == ["model.layers.{0..2,4..7}.mlp.experts.{0..7}.gate_proj.weight ×56",
                     "model.layers.{0..2,4..7}.mlp.experts.{0..7}.gate_proj.weight_scale_inv ×56"]
    document = json.loads(run("inspect", path, "--format", "json").out)
    assert all("of the weight beside it" in layer["notes"][0] for layer in document["layers"]
               if layer["kind"] == "quant_scale")
    assert sum(group["count"] for group in document["groups"]) == len(tensors) == 112


def test_check_stats_folds_deviations_alike_and_shows_the_observed_range(checkpoints, tmp_path):
    baseline = tmp_path / "lock.json"
    assert run("check", checkpoints["odd"], "--no-config", "--update", "--baseline", baseline).code == 0
    result = run("check", checkpoints["odd"], "--no-config", "--baseline", baseline, "--stats")
    pattern = "model.layers.{0..2,4..7}.mlp.experts.{0..7}.gate_proj.weight ×56"
    rows = [line.split("│")[1:-1] for line in result.out.splitlines() if line.startswith("│") and pattern in line]
    assert len(rows) == 1  # 56 experts' weights drawn at 0.02 (one at 0.05), all judged alike: one line
    observed = rows[0][1].strip()
    stds = [t.double().std().item() for key, t in moe(odd_std=True).items()
            if key.endswith("gate_proj.weight") and ".experts." in key]
    assert observed == f"{min(stds):.4g}…{max(stds):.4g}"
    document = json.loads(run("check", checkpoints["odd"], "--no-config", "--baseline", baseline, "--stats",
                              "--format", "json").out)
    assert sum(1 for d in document["observed"] if ".experts." in d["param"] and "gate_proj" in d["param"]) == 56


def test_a_run_of_thousands_of_digits_is_a_name(tmp_path):
    """`int` refuses more than 4,300 digits: such a part is a name, not an index (it was exit 3)."""
    from safetensors.numpy import save_file
    import numpy as np

    path = tmp_path / "long.safetensors"
    save_file({f"layers.{'1' * 5000}.weight": np.zeros((2, 2), np.float32),
               "layers.3.weight": np.zeros((2, 2), np.float32)}, str(path))
    result = run("inspect", path)
    assert result.code == 0, result.err


_PARTS = st.sampled_from(["layers", "mlp", "0", "1", "2", "10", "007", "00", "fc1", "w", "1234567890123456789", "",
                          "12345678901234567"])


@given(st.lists(st.tuples(st.lists(_PARTS, min_size=1, max_size=4).map(".".join), st.integers(0, 2)),
                max_size=40))
@example([("a.1.1", 0), ("a.1.1", 0), ("a.2.2", 0), ("a.2.2", 0)])  # as many keys as a product, but repeated
@example([("a.1.2", 0), ("a.2.1", 0), ("a.10.1", 0), ("a.1.10", 0), ("a.07.1", 0)])  # no full product; 07
def test_folding_by_digit_template_equals_folding_key_by_key(keyed):
    """`_fold_by_template` (the keys of a report whose rows are known alike) against `fold` of the same keys and
    values: leading zeros, digits in names, runs past MAX_INDEX_DIGITS, gaps, repeated keys, empty parts."""
    from fancli.columns import digit_templates
    from fancli.folding import _fold_by_template

    keys = [key for key, _ in keyed]
    values = [value for _, value in keyed]
    ours = _fold_by_template(keys, digit_templates(keys), values)
    theirs = fold(range(len(keys)), keys.__getitem__, values)
    assert ours == theirs
