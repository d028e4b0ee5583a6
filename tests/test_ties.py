"""Tied keys in what pairs models key by key (diff, trajectories, check): a tie's second key is a key like any
other. Ties added, removed, untied and re-tied, in `.pt` (one storage under two keys) and safetensors
(`save_model` drops the second key and names it in `__metadata__`); torch on the same tensors is the oracle."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


class Net(torch.nn.Module):
    """An embedding and a head that may share the embedding's weight (GPT-2's `lm_head` tied to `wte`)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(12, 8)
        self.mid = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 12, bias=False)

    def tie(self) -> "Net":
        self.head.weight = self.emb.weight
        return self

    def untie(self, scale: float = 1.0) -> "Net":
        self.head.weight = torch.nn.Parameter(self.emb.weight.detach().clone() * scale)
        return self


def _save(net: torch.nn.Module, path, fmt: str) -> str:
    if fmt == "pt":
        torch.save(net.state_dict(), path / "m.pt")
        return str(path / "m.pt")
    safetensors_torch.save_model(net, str(path / "m.safetensors"))
    return str(path / "m.safetensors")


def _rel(a: "torch.Tensor", b: "torch.Tensor") -> float:
    a, b = a.double(), b.double()
    return ((b - a).norm() / a.norm()).item()


@pytest.fixture(params=["pt", "safetensors"])
def fmt(request) -> str:
    return request.param


def test_diff_an_untied_key_is_compared(tmp_path, fmt):
    """A: head tied to emb. B: head untied and doubled. torch: head changed, ‖B−A‖/‖A‖ = 1.0; a gate fails."""
    from fancli import diff

    from helpers import run

    a, b = Net().tie(), Net().tie().untie(2.0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = _save(a, tmp_path / "a", fmt), _save(b, tmp_path / "b", fmt)
    gate = run("diff", first, second, "--max-change", "0.5")
    assert gate.code == 1 and "head.weight" in gate.out
    result = diff(first, second)
    rows = {t.param: t for t in result.tensors}
    assert set(rows) == {"emb.weight", "mid.weight", "mid.bias", "head.weight"}
    head = rows["head.weight"]
    assert head.status == "changed"
    assert head.rel_diff_norm == pytest.approx(_rel(a.state_dict()["head.weight"], b.state_dict()["head.weight"]))
    assert head.rel_diff_norm == pytest.approx(1.0)
    assert rows["emb.weight"].status == "same"
    assert [t.param for t in result.failures(0.5)] == ["head.weight"]


def test_diff_a_re_tied_key_and_a_tie_kept(tmp_path, fmt):
    """A untied (head = 3·emb), B re-tied: head's change is against B's emb; a tie kept in both is 'same'."""
    from fancli import diff

    a, b = Net().tie().untie(3.0), Net().tie()
    for name, net in (("a", a), ("b", b), ("c", Net().tie())):
        (tmp_path / name).mkdir()
        _save(net, tmp_path / name, fmt)
    suffix = "m.pt" if fmt == "pt" else "m.safetensors"
    rows = {t.param: t for t in diff(str(tmp_path / "a" / suffix), str(tmp_path / "b" / suffix)).tensors}
    want = _rel(a.state_dict()["head.weight"], b.state_dict()["head.weight"])
    assert rows["head.weight"].status == "changed" and rows["head.weight"].rel_diff_norm == pytest.approx(want)
    kept = {t.param: t for t in diff(str(tmp_path / "b" / suffix), str(tmp_path / "c" / suffix)).tensors}
    assert set(kept) == {"emb.weight", "mid.weight", "mid.bias", "head.weight"}
    assert {t.status for t in kept.values()} == {"same"}


def test_diff_a_tied_key_added_and_removed(tmp_path, fmt):
    """A key that exists only through a tie is added where B gains it and removed where B loses it."""
    from fancli import diff

    class NoHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid = Net().emb, Net().mid

    for name, net in (("tied", Net().tie()), ("bare", NoHead())):
        (tmp_path / name).mkdir()
        _save(net, tmp_path / name, fmt)
    suffix = "m.pt" if fmt == "pt" else "m.safetensors"
    tied, bare = str(tmp_path / "tied" / suffix), str(tmp_path / "bare" / suffix)
    added = diff(bare, tied)
    assert [(t.param, t.status) for t in added.structural()] == [("head.weight", "added")]
    removed = diff(tied, bare)
    assert [(t.param, t.status) for t in removed.structural()] == [("head.weight", "removed")]


def test_trajectory_a_tied_key_has_its_tensors_statistics(tmp_path, fmt):
    """Tied at steps 1 and 3, apart (and trained) at step 2: head.weight has a std at every step, torch's."""
    from fancli import trajectory

    nets = {1: Net().tie(), 2: Net().tie().untie(0.5), 3: Net(seed=3).tie()}
    sources = []
    for step, net in nets.items():
        (tmp_path / f"step-{step}").mkdir()
        sources.append(_save(net, tmp_path / f"step-{step}", fmt))
    found = trajectory(sources)
    track = {t.param: t for t in found.tracks}["head.weight"]
    stds = [None if o is None else o.std for o in track.observed]
    want = [net.state_dict()["head.weight"].double().std().item() for net in nets.values()]
    assert stds == pytest.approx(want)
    assert not any("missing" in note for note in found.notes)


def test_check_a_tie_untied_or_re_tied_is_neither_added_nor_removed(tmp_path, fmt):
    """check's baseline names every key: untying head from emb (same shape) or tying it again is no
    structural change (the fields of the layer it is read as may change); dropping the tied key is a removal."""
    from fancli.api import inspect
    from fancli.checks.check import baseline_document, compare

    class NoHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid = Net().emb, Net().mid

    reports = {}
    for name, net in (("tied", Net().tie()), ("apart", Net().tie().untie(2.0)), ("bare", NoHead())):
        (tmp_path / name).mkdir()
        reports[name] = inspect(_save(net, tmp_path / name, fmt))
    tied = baseline_document(reports["tied"])
    assert tied["layers"]["emb.weight"]["aliases"] == ["head.weight"]
    for before, after in (("tied", "apart"), ("apart", "tied")):  # the tied key is read as its tensor's layer
        changes = compare(baseline_document(reports[before]), reports[after], 1e-9)
        assert {c.param for c in changes} <= {"head.weight"} and {c.change for c in changes} <= {"changed"}
    assert [(c.param, c.change) for c in compare(tied, reports["bare"], 1e-9)] == [("head.weight", "removed")]
    assert [(c.param, c.change) for c in compare(baseline_document(reports["bare"]), reports["tied"], 1e-9)] == [
        ("head.weight", "added")]


def test_check_a_baseline_from_before_aliases_does_not_call_a_tied_key_added(tmp_path):
    """Baselines written before entries named their aliases lack the tied keys: today's tie is no drift."""
    from fancli.api import inspect
    from fancli.checks.check import baseline_document, compare

    report = inspect(_save(Net().tie(), tmp_path, "pt"))
    legacy = baseline_document(report)
    for entry in legacy["layers"].values():
        del entry["aliases"]
    assert "head.weight" not in legacy["layers"]
    assert compare(legacy, report, 1e-9) == []


def test_check_a_baseline_whose_aliases_are_not_keys_is_one_line(tmp_path):
    import json

    from fancli.api import inspect
    from fancli.checks.check import baseline_document, read_baseline
    from fancli.errors import SourceError

    document = baseline_document(inspect(_save(Net().tie(), tmp_path, "pt")))
    document["layers"]["emb.weight"]["aliases"] = [{"not": "a key"}]
    (tmp_path / "lock.json").write_text(json.dumps(document))
    with pytest.raises(SourceError, match="'aliases' must be a list of keys"):
        read_baseline(tmp_path / "lock.json")


def test_diff_of_a_pt_against_its_save_pretrained_folder_is_no_structural_change(tmp_path):
    """save_pretrained does not store the tied `lm_head.weight` that torch.save keeps as a second name of
    `wte`; the folder's config.json says the tie, so the key is there, the same tensor, and the diff passes."""
    from helpers import run

    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64,
                                                                 n_positions=16))
    model.save_pretrained(tmp_path / "folder")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    result = run("diff", tmp_path / "model.pt", tmp_path / "folder", "--format", "json")
    assert result.code == 0, result.out + result.err
    statuses = {row["param"]: row["status"] for row in json.loads(result.out)["tensors"]}
    assert statuses["lm_head.weight"] == "same" and set(statuses.values()) == {"same"}
