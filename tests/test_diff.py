"""`fancli diff A B`: every number checked against torch computing the same quantity on the real tensors
(float64), for fp32, bf16 and FP8 checkpoints, single files and shards, .pt and safetensors."""

from __future__ import annotations

import json

import pytest
from helpers import run

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _pair() -> tuple[dict, dict]:
    """A: a small model. B: a fine-tune of it: one layer moved by a known amount, one frozen, one
    rescaled, one key removed, one added, one reshaped."""
    gen = torch.Generator().manual_seed(0)
    a = {
        "enc.weight": torch.randn(64, 32, generator=gen) * 0.1,
        "enc.bias": torch.randn(64, generator=gen) * 0.01,
        "frozen.weight": torch.randn(48, 64, generator=gen) * 0.05,
        "ln.weight": torch.ones(48),
        "head.weight": torch.randn(10, 48, generator=gen) * 0.2,
        "old.weight": torch.randn(4, 4, generator=gen),
        "grow.weight": torch.randn(8, 4, generator=gen),
    }
    b = {
        "enc.weight": a["enc.weight"] + 0.01 * torch.randn(64, 32, generator=gen),
        "enc.bias": a["enc.bias"] + 0.003,
        "frozen.weight": a["frozen.weight"].clone(),
        "ln.weight": a["ln.weight"] * 1.5,
        "head.weight": a["head.weight"] * 0.5 + 0.01,
        "new.weight": torch.randn(4, 4, generator=gen),
        "grow.weight": torch.randn(16, 4, generator=gen),
    }
    return a, b


def _oracle(a: "torch.Tensor", b: "torch.Tensor") -> dict:
    a, b = a.to(torch.float64), b.to(torch.float64)
    mean_a, mean_b, std_a, std_b = a.mean().item(), b.mean().item(), a.std().item(), b.std().item()
    return {"rel_diff_norm": ((b - a).norm() / a.norm()).item(),
            "rel_std_change": (std_b - std_a) / std_a if std_a else 0.0 if std_b == std_a else None,
            "rel_mean_change": (mean_b - mean_a) / max(abs(mean_a), std_a),
            "mean_a": mean_a, "mean_b": mean_b, "std_a": std_a, "std_b": std_b,
            "max_abs_diff": (b - a).abs().max().item()}


def _check(result, a: dict, b: dict, rel: float = 1e-9, skip: tuple[str, ...] = ()) -> None:
    by_key = {t.param: t for t in result.tensors}
    for key in a.keys() & b.keys() - set(skip):
        if a[key].shape != b[key].shape:
            assert by_key[key].status == "reshaped"
            continue
        want = _oracle(a[key], b[key])
        got = by_key[key]
        for field, value in want.items():
            shown = getattr(got, field)
            if value is None:
                assert shown is None, (key, field)
            else:
                assert shown == pytest.approx(value, rel=rel, abs=1e-12), (key, field, shown, value)
        assert got.status == ("dtype" if a[key].dtype != b[key].dtype else
                              "same" if torch.equal(a[key], b[key]) else "changed"), key
    assert {t.param for t in result.tensors if t.status == "removed"} == a.keys() - b.keys()
    assert {t.param for t in result.tensors if t.status == "added"} == b.keys() - a.keys()


def test_fp32_pt_against_safetensors_matches_torch(tmp_path):
    from fancli import diff

    a, b = _pair()
    torch.save(a, tmp_path / "a.pt")
    safetensors_torch.save_file(b, str(tmp_path / "b.safetensors"))
    result = diff(tmp_path / "a.pt", tmp_path / "b.safetensors")
    _check(result, a, b)
    by_key = {t.param: t for t in result.tensors}
    assert by_key["frozen.weight"].status == "same" and by_key["frozen.weight"].rel_diff_norm == 0
    assert by_key["ln.weight"].rel_mean_change == pytest.approx(0.5)  # std 0: relative to the mean
    assert by_key["head.weight"].rel_std_change == pytest.approx(-0.5)
    assert by_key["grow.weight"].status == "reshaped" and by_key["grow.weight"].shape_b == (16, 4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_low_precision_checkpoints_match_torch(tmp_path, dtype):
    """bf16 and FP8 values as stored (decoded without torch), compared with torch's float64 of the same."""
    from fancli import diff

    a, b = _pair()
    a = {k: v.to(getattr(torch, dtype)) for k, v in a.items()}
    b = {k: v.to(getattr(torch, dtype)) for k, v in b.items()}
    safetensors_torch.save_file(a, str(tmp_path / "a.safetensors"))
    safetensors_torch.save_file(b, str(tmp_path / "b.safetensors"))
    result = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    _check(result, a, b)
    assert all(t.dtype_a == dtype for t in result.tensors if t.status != "added")


def test_a_dtype_change_is_compared_value_by_value(tmp_path):
    """fp32 → bf16: status `dtype`, and ‖B − A‖/‖A‖ is bf16's rounding error (< 2⁻⁸), as torch computes it."""
    from fancli import diff

    a, _ = _pair()
    b = {k: v.to(torch.bfloat16) for k, v in a.items()}
    safetensors_torch.save_file(a, str(tmp_path / "a.safetensors"))
    safetensors_torch.save_file(b, str(tmp_path / "b.safetensors"))
    result = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    _check(result, a, b)
    assert {t.status for t in result.tensors} <= {"dtype"}
    assert all(t.rel_diff_norm < 2 ** -8 for t in result.tensors)


def test_sharded_against_single_file_in_small_chunks(tmp_path):
    """Shards against one .pt, in chunks of 7 values: each pair is re-blocked, the numbers unchanged. A
    transposed view read in storage order (wider than a chunk) cannot be paired value by value: a note."""
    import fancli
    from fancli.checks.diff import diff_models

    a, b = _pair()
    a["enc.weight"] = a["enc.weight"].t().contiguous().t()  # stored transposed: a strided view in the .pt
    torch.save(a, tmp_path / "a.pt")
    keys = sorted(b)
    shards = {f"m-0000{i + 1}-of-00002.safetensors": {k: b[k] for k in keys[i::2]} for i in range(2)}
    for name, part in shards.items():
        safetensors_torch.save_file(part, str(tmp_path / name))
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))
    model_a, model_b = fancli.load(tmp_path / "a.pt"), fancli.load(tmp_path / "m.safetensors.index.json")
    small = diff_models(model_a, model_b, max_elements=7)
    wide = next(t for t in small.tensors if t.param == "enc.weight")
    assert wide.rel_diff_norm is None and "storage order" in wide.note
    _check(small, a, b, skip=("enc.weight",))
    _check(diff_models(model_a, model_b), a, b)


def test_chunks_of_different_lengths_are_paired_in_order():
    import numpy as np

    from fancli.checks.diff import _aligned

    values = np.arange(23.0)
    xs = iter([values[:5], values[5:5], values[5:17], values[17:]])
    ys = iter([values[:7], values[7:14], values[14:]])
    pieces = list(_aligned(xs, ys))
    assert all(np.array_equal(x, y) for x, y in pieces)
    assert np.array_equal(np.concatenate([x for x, _ in pieces]), values)


def test_exit_codes_and_formats(tmp_path):
    a, b = _pair()
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    same = run("diff", tmp_path / "a.pt", tmp_path / "a.pt", "--max-change", "0")
    assert same.code == 0 and "7 same" in same.out
    structural = run("diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert structural.code == 1 and "added, removed or reshaped" in structural.out
    allowed = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--allow-structural")
    assert allowed.code == 0, allowed.out
    frozen = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-k", "frozen", "--max-change", "0")
    assert frozen.code == 0, frozen.out
    gated = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-k", "enc", "--max-change", "0.05", "-f", "json")
    document = json.loads(gated.out)
    assert gated.code == 1 and document["failed"] == ["enc.weight", "enc.bias"]
    assert document["command"] == "diff" and document["ok"] is False
    enc = next(t for t in document["tensors"] if t["param"] == "enc.weight")
    assert enc["rel_diff_norm"] == pytest.approx(_oracle(a["enc.weight"], b["enc.weight"])["rel_diff_norm"])
    markdown = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-f", "markdown", "--allow-structural")
    assert markdown.out.startswith("### ✅ fancli diff") and "| frozen.weight | same |" in markdown.out
    csv_out = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-f", "csv")
    assert csv_out.out.splitlines()[0].startswith("param,status,shape_a") and len(csv_out.out.splitlines()) == 9
    out = tmp_path / "d.md"
    assert run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-f", "markdown", "-o", out).code == 1
    assert out.read_text().startswith("### ❌ fancli diff")
    assert run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "-o", tmp_path / "a.pt").code == 2  # an input


@pytest.mark.parametrize("args", [("--max-change", "-1"), ("--max-change", "nan"), ("--max-change", "inf")])
def test_bad_max_change_is_one_line_and_exit_2(tmp_path, args):
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "a.pt")
    result = run("diff", tmp_path / "a.pt", tmp_path / "a.pt", *args)
    assert result.code == 2 and len(result.err.splitlines()) == 1


def test_unreadable_input_is_exit_2(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "a.pt")
    result = run("diff", tmp_path / "a.pt", tmp_path / "bad.safetensors")
    assert result.code == 2 and len(result.err.splitlines()) == 1


def test_an_all_zero_a_that_changes_is_past_any_limit(tmp_path):
    torch.save({"b": torch.zeros(8)}, tmp_path / "a.pt")
    torch.save({"b": torch.full((8,), 0.1)}, tmp_path / "b.pt")
    result = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--max-change", "1000", "-f", "json")
    document = json.loads(result.out)
    assert result.code == 1 and document["tensors"][0]["rel_diff_norm"] is None
    assert "all zeros" in document["tensors"][0]["note"]


def test_diff_of_safetensors_imports_no_torch(tmp_path):
    import subprocess
    import sys

    a, b = _pair()
    safetensors_torch.save_file(a, str(tmp_path / "a.safetensors"))
    safetensors_torch.save_file(b, str(tmp_path / "b.safetensors"))
    code = ("import sys; from fancli.cli import main\n"
            "try: main(['diff', sys.argv[1], sys.argv[2], '-f', 'json'])\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors"),
                           str(tmp_path / "b.safetensors")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
