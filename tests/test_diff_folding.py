"""`fancli diff A B` folded as inspect folds: keys that differ only in their indices and agree in status
and values share one row (ranges shown), `--expand` lists every row, and JSON keeps every row and adds
`groups` that expand back to exactly those rows. Numbers checked against torch on the same tensors."""

from __future__ import annotations

import json
import math

import pytest
from helpers import run

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A, and B a fine-tune of it: layers.{0..3} moved a little (layers 2 and 3 a bit more than 0 and 1,
    within a factor 2), layers.4 moved ten times as far, layers.5 frozen, norms.{0..5} rescaled alike,
    layers.6 removed, layers.7 added."""
    root = tmp_path_factory.mktemp("diff")
    gen = torch.Generator().manual_seed(7)
    a = {f"layers.{i}.weight": torch.randn(64, 64, generator=gen) * 0.05 for i in range(7)}
    a.update({f"norms.{i}.weight": 1 + 0.1 * torch.randn(64, generator=gen) for i in range(6)})
    b = {key: value.clone() for key, value in a.items() if key != "layers.6.weight"}
    for i, scale in ((0, 0.010), (1, 0.010), (2, 0.014), (3, 0.014), (4, 0.1)):
        b[f"layers.{i}.weight"] += scale * 0.05 * torch.randn(64, 64, generator=gen)
    for i in range(6):
        b[f"norms.{i}.weight"] *= 1.5
    b["layers.7.weight"] = torch.randn(64, 64, generator=gen)
    paths = root / "a.safetensors", root / "b.safetensors"
    safetensors_torch.save_file(a, str(paths[0]))
    safetensors_torch.save_file(b, str(paths[1]))
    return paths, a, b


def _norm(a, b, key) -> float:
    x, y = a[key].to(torch.float64), b[key].to(torch.float64)
    return ((y - x).norm() / x.norm()).item()


def test_json_keeps_every_row_and_its_groups_expand_to_exactly_those_rows(pair):
    from fancli.folding import expand

    (path_a, path_b), a, b = pair
    data = json.loads(run("diff", path_a, path_b, "-f", "json").out)
    params = [t["param"] for t in data["tensors"]]
    assert sorted(params) == sorted(a.keys() | b.keys())
    expanded = [key for group in data["groups"] for key in expand(group["pattern"])]
    assert sorted(expanded) == sorted(params) and len(expanded) == len(set(expanded))
    assert sum(group["count"] for group in data["groups"]) == len(params)
    rows = {t["param"]: t for t in data["tensors"]}
    for group in data["groups"]:
        members = [rows[key] for key in expand(group["pattern"])]
        assert len({m["status"] for m in members}) == 1
        assert group["params"] == sum(math.prod(m["shape_a"] or m["shape_b"]) for m in members)
    patterns = [group["pattern"] for group in data["groups"]]
    assert "layers.{0..3}.weight" in patterns  # moved alike
    assert "layers.4.weight" in patterns  # moved ten times as far: its own row
    assert "layers.5.weight" in patterns  # frozen: another status
    assert "norms.{0..5}.weight" in patterns
    for key in rows:  # the numbers are still torch's, row by row
        if key in a and key in b:
            assert rows[key]["rel_diff_norm"] == pytest.approx(_norm(a, b, key), rel=1e-9)


def test_table_and_markdown_fold_with_ranges_and_expand_lists_every_row(pair):
    (path_a, path_b), a, b = pair
    table = run("diff", path_a, path_b, "--allow-structural")
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if "layers.{0..3}.weight ×4" in line)
    norms = [_norm(a, b, f"layers.{i}.weight") for i in range(4)]
    assert f"{min(norms):.4g}…{max(norms):.4g}" in row
    assert "changed" in row
    assert sum("layers.4.weight" in line for line in table.out.splitlines()) == 1
    assert "norms.{0..5}.weight ×6" in table.out
    markdown = run("diff", path_a, path_b, "-f", "markdown").out
    assert "| layers.{0..3}.weight ×4 | changed |" in markdown
    expanded = run("diff", path_a, path_b, "--expand").out
    assert "×" not in expanded.replace("64×64", "")
    for key in a.keys() | b.keys():
        assert sum(f" {key} " in line for line in expanded.splitlines()) == 1, key
    expanded_md = run("diff", path_a, path_b, "-f", "markdown", "--expand").out
    assert all(f"| {key} |" in expanded_md for key in a)


def test_a_folded_row_never_mixes_both_sides_of_the_gate(pair):
    """--max-change between the small moves of layers 0, 1 and those of 2, 3: they part, and the
    verdict still counts every tensor."""
    (path_a, path_b), a, b = pair
    norms = {i: _norm(a, b, f"layers.{i}.weight") for i in range(4)}
    limit = (max(norms[0], norms[1]) + min(norms[2], norms[3])) / 2
    assert max(norms[0], norms[1]) < limit < min(norms[2], norms[3])
    result = run("diff", path_a, path_b, "--max-change", f"{limit:.6g}", "--allow-structural")
    assert result.code == 1
    assert "layers.{0,1}.weight ×2" in result.out and "layers.{2,3}.weight ×2" in result.out
    over = sum(1 for key in a.keys() & b.keys() if _norm(a, b, key) > float(f"{limit:.6g}"))
    assert f"FAIL: {over} tensors changed by more than --max-change" in result.out
    data = json.loads(run("diff", path_a, path_b, "--max-change", f"{limit:.6g}", "-f", "json").out)
    assert {"layers.{0,1}.weight", "layers.{2,3}.weight"} <= {g["pattern"] for g in data["groups"]}


def test_members_of_a_group_agree_in_std_within_inspects_rule(pair):
    from fancli.folding import STD_ERRORS, expand

    (path_a, path_b), a, b = pair
    data = json.loads(run("diff", path_a, path_b, "-f", "json").out)
    for group in data["groups"]:
        for side, tensors in (("a", a), ("b", b)):
            members = [key for key in expand(group["pattern"]) if key in tensors]
            stds = sorted(tensors[key].to(torch.float64).std().item() for key in members)
            for low, high in zip(stds, stds[1:]):
                n = tensors[members[0]].numel()
                assert high - low <= STD_ERRORS * high / math.sqrt(2 * n), (group["pattern"], side)
