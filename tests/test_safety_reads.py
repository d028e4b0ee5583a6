"""Issue 24, the new edges: no output onto any file the run reads (safe_io's read set, filled by every
reader), links of a Hub snapshot, its files and DCP data files kept inside their repo or checkpoint folder,
revisions that are names or hashes, and `--plot` charts that show keys as they are, bounded.

Every layout is built here with torch, safetensors and torch.distributed.checkpoint; matplotlib's own text
parser is the oracle for what a chart shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import pytest
from helpers import run

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _one_line_exit_2(result, *words: str) -> str:
    assert result.code == 2, (result.code, result.err)
    assert result.out == "" and result.err.count("\n") == 1 and result.err.startswith("fancli: error: "), result.err
    for word in words:
        assert word in result.err, result.err
    return result.err


def _tensors(scale: float = 1.0) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(8, 6, generator=generator) * scale,
            "out.weight": torch.randn(4, 8, generator=generator) * scale}


def _sharded(folder: Path, scale: float = 1.0) -> Path:
    """A transformers-style folder: two safetensors shards, their index, and a config.json."""
    folder.mkdir(parents=True)
    weight_map = {}
    for number, (key, tensor) in enumerate(_tensors(scale).items(), 1):
        shard = f"model-0000{number}-of-00002.safetensors"
        safetensors_torch.save_file({key: tensor}, str(folder / shard))
        weight_map[key] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 2, "hidden_size": 8}))
    return folder


def _dcp(folder: Path, scale: float = 1.0) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is … uninitialized, assuming … a single process"
        warnings.simplefilter("ignore")
        dcp.save({"model": _tensors(scale)}, checkpoint_id=folder)
    return folder


def _hub(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A repo as huggingface_hub caches it (blobs by hash, snapshot links into them), at main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.write_bytes(source.read_bytes())
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return repo


def _single(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(_tensors(), str(path))
    return path


# --- no output onto a file the run reads ---------------------------------------------------------------


def _index_output(tmp: Path) -> tuple[list, Path]:
    folder = _sharded(tmp / "m")
    return ["inspect", folder, "-o", folder / "model.safetensors.index.json"], folder / "model.safetensors.index.json"


def _config_output(tmp: Path) -> tuple[list, Path]:
    folder = _sharded(tmp / "m")
    return ["inspect", folder, "-f", "json", "-o", folder / "config.json"], folder / "config.json"


def _dcp_metadata_output(tmp: Path) -> tuple[list, Path]:
    folder = _dcp(tmp / "ck")
    return ["inspect", folder, "-o", folder / ".metadata"], folder / ".metadata"


def _dcp_data_output(tmp: Path) -> tuple[list, Path]:
    folder = _dcp(tmp / "ck")
    return ["inspect", folder, "--stats", "-o", folder / "__0_0.distcp"], folder / "__0_0.distcp"


def _diff_output(tmp: Path) -> tuple[list, Path]:
    a, b = _sharded(tmp / "a"), _sharded(tmp / "b", scale=2.0)
    return ["diff", a, b, "-o", b / "model.safetensors.index.json"], b / "model.safetensors.index.json"


def _plot_output(tmp: Path) -> tuple[list, Path]:
    a, b = _dcp(tmp / "step-1"), _dcp(tmp / "step-2", scale=2.0)
    return ["inspect", a, b, "--plot", b / ".metadata"], b / ".metadata"


def _cache_ref_output(tmp: Path) -> tuple[list, Path]:
    repo = _hub(tmp / "hub", "org/name", {"model.safetensors": _single(tmp / "made" / "model.safetensors")})
    os.environ["HF_HUB_CACHE"] = str(tmp / "hub")  # restored by the test's monkeypatch
    return ["inspect", "org/name", "-o", repo / "refs" / "main"], repo / "refs" / "main"


@pytest.mark.parametrize("case", [_index_output, _config_output, _dcp_metadata_output, _dcp_data_output,
                                  _diff_output, _plot_output, _cache_ref_output], ids=lambda case: case.__name__)
def test_an_output_onto_any_file_the_run_reads_is_refused(tmp_path, monkeypatch, case):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    args, victim = case(tmp_path)
    before = victim.read_bytes()
    files = sorted(tmp_path.rglob("*"))
    _one_line_exit_2(run(*args), str(victim), "input", "refusing to overwrite")
    assert victim.read_bytes() == before
    assert sorted(tmp_path.rglob("*")) == files  # no temp file left either


def test_check_update_onto_a_file_the_run_reads_is_refused(tmp_path):
    folder = _sharded(tmp_path / "m")
    before = (folder / "config.json").read_bytes()
    _one_line_exit_2(run("check", folder, "--update", "--no-config", "--baseline", folder / "config.json"),
                     "config.json", "input")
    assert (folder / "config.json").read_bytes() == before
    baseline = tmp_path / "fancli.lock.json"  # the old baseline, read to see it is one, is still replaceable
    for _ in range(2):
        assert run("check", folder, "--update", "--no-config", "--baseline", baseline).code == 0


def test_a_factory_module_is_not_an_output(tmp_path, monkeypatch):
    module = tmp_path / "fancli_readset_factory.py"
    module.write_text("from torch import nn\ndef make():\n    return nn.Linear(3, 4)\n")
    before = module.read_bytes()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _one_line_exit_2(run("inspect", "fancli_readset_factory:make", "-o", module), "input")
    assert module.read_bytes() == before


def test_a_name_longer_than_the_system_allows_is_one_line(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long = tmp_path / ("a" * (limit + 1))
    spec = tmp_path / "net.yaml"
    spec.write_text("layers:\n  - {type: linear, in_features: 3, out_features: 4}\n")
    for args in (["inspect", long], ["inspect", spec, "--config", long], ["check", spec, "--baseline", long],
                 ["propagate", long]):
        _one_line_exit_2(run(*args), "aaaa")
    longest = tmp_path / ("b" * (limit - 5) + ".json")  # its own name fits: so must the temp file beside it
    result = run("inspect", spec, "-f", "json", "-o", longest)
    assert result.code == 0, result.err
    assert json.loads(longest.read_text())["layers"]


# --- links: a snapshot, its files and DCP data files stay inside their folder -----------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "hub"


def test_a_snapshot_file_linking_out_of_its_repo_is_refused(cache, tmp_path):
    outside = _single(tmp_path / "elsewhere" / "model.safetensors")
    repo = _hub(cache, "org/evil", {})
    (repo / "snapshots" / COMMIT / "model.safetensors").symlink_to(outside)
    for source in ("org/evil", repo / "snapshots" / COMMIT, repo / "snapshots" / COMMIT / "model.safetensors"):
        _one_line_exit_2(run("inspect", source), "links outside", str(repo))
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 4)
    (repo / "snapshots" / COMMIT / "model.safetensors").unlink()
    (repo / "snapshots" / COMMIT / "model.safetensors").symlink_to(secret)
    err = _one_line_exit_2(run("inspect", "org/evil"), "links outside")
    assert str(int.from_bytes(b"root:x:0", "little")) not in err and "root:x" not in err


def test_a_snapshot_folder_linking_out_of_its_repo_is_refused(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _single(elsewhere / "model.safetensors")
    repo = _hub(cache, "org/evil", {})
    (repo / "snapshots" / COMMIT).rmdir()
    (repo / "snapshots" / COMMIT).symlink_to(elsewhere)
    _one_line_exit_2(run("inspect", "org/evil"), "links outside", str(repo))


def test_a_snapshot_config_linking_out_of_its_repo_is_not_read(cache, tmp_path):
    made = _single(tmp_path / "made" / "model.safetensors")
    repo = _hub(cache, "org/evil", {"model.safetensors": made})
    outside = tmp_path / "config.json"
    outside.write_text(json.dumps({"initializer_range": 0.5}))
    (repo / "snapshots" / COMMIT / "config.json").symlink_to(outside)
    from fancli.loaders import load

    notes = load("org/evil").notes
    assert any("config.json" in note and "links outside" in note for note in notes), notes
    assert not any("from config.json" in note for note in notes), notes
    outside.rename(repo / "blobs" / "config")  # the same file inside the repo is read
    (repo / "snapshots" / COMMIT / "config.json").unlink()
    (repo / "snapshots" / COMMIT / "config.json").symlink_to(Path("..") / ".." / "blobs" / "config")
    assert any("from config.json" in note and "0.5" in note for note in load("org/evil").notes)


def test_a_revision_is_a_name_or_a_commit_hash(cache, tmp_path):
    _hub(cache, "org/name", {"model.safetensors": _single(tmp_path / "made" / "model.safetensors")})
    assert run("inspect", "org/name", "--revision", "main").code == 0
    anywhere = tmp_path / "anywhere"
    anywhere.write_text(COMMIT)  # a file that holds a good hash: read as the ref before
    for revision in (str(anywhere), "refs/../main", "./main", "main/"):
        _one_line_exit_2(run("inspect", "org/name", "--revision", revision), "not a revision")
    ref = cache / "models--org--name" / "refs" / "v1"
    ref.symlink_to(anywhere)
    _one_line_exit_2(run("inspect", "org/name", "--revision", "v1"), "links outside")


def test_a_dcp_data_file_linking_out_of_its_folder_is_refused(tmp_path):
    folder = _dcp(tmp_path / "ck")
    other = tmp_path / "other"
    other.mkdir()
    (folder / "__0_0.distcp").rename(other / "__0_0.distcp")
    (folder / "__0_0.distcp").symlink_to(other / "__0_0.distcp")
    for args in (["inspect", folder], ["inspect", folder / ".metadata", "--stats"]):
        _one_line_exit_2(run(*args), "__0_0.distcp", "links outside")
    (folder / "__0_0.distcp").unlink()
    (other / "__0_0.distcp").rename(folder / "__0_0.distcp")  # the same bytes inside: read as before
    assert run("inspect", folder, "--stats").code == 0


# --- --plot -----------------------------------------------------------------------------------------------


def _run_of(tmp: Path, keys: dict[str, str], steps=(1, 2)) -> list[Path]:
    """Checkpoints `step-N/model.safetensors` holding `keys` (name -> the tensor of _tensors() it gets)."""
    made = []
    for step in steps:
        tensors = _tensors(scale=step)
        path = tmp / f"step-{step}" / "model.safetensors"
        path.parent.mkdir(parents=True)
        safetensors_torch.save_file({key: tensors[which] for key, which in keys.items()}, str(path))
        made.append(path.parent)
    return made


@pytest.mark.parametrize("name", ["p.pgf", "p", "p.raw"])
def test_plot_needs_an_image_suffix_it_can_write(tmp_path, name):
    pytest.importorskip("matplotlib")
    sources = _run_of(tmp_path, {"fc.weight": "fc.weight"})
    _one_line_exit_2(run("inspect", *sources, "--plot", tmp_path / name), name, "--plot", ".png")
    assert not (tmp_path / name).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-2"]


def test_plot_shows_keys_literally(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.text import Text

    keys = {"$\\frac{$.weight": "fc.weight", "_orig_mod.out.weight": "out.weight"}
    sources = _run_of(tmp_path, keys)
    result = run("inspect", *sources, "--plot", tmp_path / "t.png")
    assert result.code == 0, result.err
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    from fancli.renderers.plot import literal
    figure, axes = plt.subplots()
    try:
        for key in [*keys, "a\\$b $x$", "cost: $5 and $6"]:
            shown, math = Text(text=literal(key))._preprocess_math(literal(key))  # what matplotlib draws
            assert (shown.lstrip("\u200b"), math) == (key, False), key
            axes.plot([0, 1], [0, 1], label=literal(key))
        assert len(axes.get_legend_handles_labels()[1]) == len(keys) + 2  # `_…` is not left out of the legend
    finally:
        plt.close(figure)


def test_plot_with_a_huge_key_is_bounded(tmp_path):
    pytest.importorskip("matplotlib")
    sources = _run_of(tmp_path, {"k" * 100_000: "fc.weight", "out.weight": "out.weight"})
    start = time.process_time()
    result = run("inspect", *sources, "-f", "json", "--plot", tmp_path / "t.png")
    assert result.code == 0, result.err
    assert time.process_time() - start < 5  # 18 s before: matplotlib laid out all 100,000 characters


def test_plot_of_a_thousand_checkpoints_without_steps_is_bounded(tmp_path):
    pytest.importorskip("matplotlib")
    made = _single(tmp_path / "one.safetensors")
    sources = []
    for index in range(1000):
        path = tmp_path / f"ckpt-{index}" / "model7.safetensors"  # every name says step 7: no steps
        path.parent.mkdir()
        os.link(made, path)
        sources.append(path)
    start = time.process_time()
    result = run("inspect", *sources, "-f", "json", "--plot", tmp_path / "t.png")
    assert result.code == 0, result.err
    assert json.loads(result.out)["sources"][0]["step"] is None
    assert time.process_time() - start < 4  # 6 s before (80 s for 10,000): one tick name per checkpoint


def test_a_text_file_named_safetensors_is_not_quoted_as_a_header_length(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 4)
    (folder / "model.safetensors").symlink_to(secret)  # a plain folder: its links are the user's own
    for source in (folder, folder / "model.safetensors"):
        err = _one_line_exit_2(run("inspect", source), "model.safetensors", "a text file")
        assert str(int.from_bytes(b"root:x:0", "little")) not in err and "root:x" not in err
