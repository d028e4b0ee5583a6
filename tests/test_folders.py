"""Issue 16: models where they live today. Folders as SOURCE, sharded `.bin` checkpoints, repo ids from the
local Hugging Face cache (laid out as the Hub's tools lay it out), model order, and structural sniffing.

Every layout is built here from a real torch state_dict, and torch is the oracle for every ≥2-D weight's fans.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from helpers import REPO, run  # noqa: E402
from torch import nn  # noqa: E402

from fancli.analysis.fans import layer_fans  # noqa: E402
from fancli.errors import SourceError  # noqa: E402
from fancli.loaders import load, sniff  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAG_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _net() -> nn.Module:
    """12 numbered blocks (so `layers.10` sorts before `layers.2` as text), convs, an embedding and a head."""
    torch.manual_seed(0)
    blocks = [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2)] + [nn.Linear(8, 8) for _ in range(10)]
    net = nn.Module()
    net.embed = nn.Embedding(20, 8)
    net.layers = nn.ModuleList(blocks)
    net.head = nn.Linear(8, 20)
    return net


@pytest.fixture(scope="module")
def state_dict() -> dict:
    return {key: value.contiguous() for key, value in _net().state_dict().items()}


def _weights(state_dict: dict) -> dict:
    return {key: value for key, value in state_dict.items() if value.is_floating_point()}


def _natural(keys) -> list[str]:
    return sorted(keys, key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])


def _check_fans(model, state_dict: dict, natural: bool = False) -> None:
    """Every floating tensor is a row, in state_dict (model) order (torch.save keeps it) or in natural key
    order (safetensors keeps none), and every ≥2-D one has torch's fans."""
    weights = _weights(state_dict)
    expected = _natural(weights) if natural else list(weights)
    assert [layer.param for layer in model.layers] == expected
    for layer in model.layers:
        tensor = weights[layer.param]
        assert layer.shape == tuple(tensor.shape)
        if tensor.dim() >= 2:
            fans = layer_fans(layer)
            assert (fans.fan_in, fans.fan_out) == nn.init._calculate_fan_in_and_fan_out(tensor), layer.param


def _halves(state_dict: dict) -> tuple[dict, dict]:
    keys = list(state_dict)
    middle = len(keys) // 2
    return {k: state_dict[k] for k in keys[:middle]}, {k: state_dict[k] for k in keys[middle:]}


def _write_index(folder: Path, name: str, parts: list[tuple[str, dict]]) -> Path:
    """The index as transformers writes it: weight_map sorted by key (no model order in it)."""
    weight_map = {key: shard for shard, part in parts for key in part}
    index = folder / name
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, sort_keys=True))
    return index


def _bin_sharded(folder: Path, state_dict: dict, legacy: bool = False) -> Path:
    parts = []
    for number, part in enumerate(_halves(state_dict), start=1):
        shard = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save(part, folder / shard, _use_new_zipfile_serialization=not legacy)
        parts.append((shard, part))
    return _write_index(folder, "pytorch_model.bin.index.json", parts)


def _safetensors_sharded(folder: Path, state_dict: dict) -> Path:
    parts = []
    for number, part in enumerate(_halves(state_dict), start=1):
        shard = f"model-{number:05d}-of-00002.safetensors"
        safetensors_torch.save_file(part, str(folder / shard))
        parts.append((shard, part))
    return _write_index(folder, "model.safetensors.index.json", parts)


def _one_line_exit_2(args: list, *words: str) -> str:
    result = run("inspect", *args)
    assert result.code == 2, (result.code, result.err)
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# item 8: a safetensors header is recognised by its structure, before any pickle guess


def test_a_safetensors_header_that_starts_like_a_pickle():
    path = REPO / "sample_models" / "lenet5-00001-of-00002.safetensors"
    head = path.read_bytes()[:64]
    assert head[:2] == b"\x80\x01"  # a 384-byte header: also how a protocol-1 pickle starts
    assert sniff(head, path, path.stat().st_size) == "safetensors"
    assert load(str(path)).format == "safetensors"


def test_a_pickle_is_still_a_pickle(tmp_path, state_dict):
    path = tmp_path / "legacy.pt"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    assert sniff(path.read_bytes()[:64], path, path.stat().st_size) == "pickle"


# item 7: natural key order where the source keeps none


def test_safetensors_rows_in_natural_key_order(tmp_path, state_dict):
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state_dict, str(path))
    model = load(str(path))
    params = [layer.param for layer in model.layers]
    assert params.index("layers.2.weight") < params.index("layers.10.weight")
    assert params == _natural(_weights(state_dict))


# item 2: sharded .bin through pytorch_model.bin.index.json


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sharded_bin_has_torch_fans_in_model_order(tmp_path, state_dict, legacy):
    index = _bin_sharded(tmp_path, state_dict, legacy)
    model = load(str(index))
    assert model.format == ("torch-pickle" if legacy else "torch-zip")
    _check_fans(model, state_dict)
    assert any("2 torch.save shards" in note for note in model.notes)


def test_sharded_bin_reads_weights_lazily_and_equals_torch(tmp_path, state_dict):
    from fancli.weights.stats import observe

    model = load(str(_bin_sharded(tmp_path, state_dict)))
    for layer in model.layers:
        expected = state_dict[layer.param].double()
        assert observe(layer.data).mean == pytest.approx(expected.mean().item(), rel=1e-9, abs=1e-12)


def test_sharded_bin_missing_shard_is_one_line(tmp_path, state_dict):
    index = _bin_sharded(tmp_path, state_dict)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    line = _one_line_exit_2([index], str(index), "pytorch_model-00002-of-00002.bin")
    assert "header length" not in line


# item 1: a folder as SOURCE


LAYOUTS = ["safetensors-index", "safetensors", "bin-index", "pytorch_model.bin", "peft"]


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request, tmp_path_factory, state_dict) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("a model card")
    if request.param == "safetensors-index":
        _safetensors_sharded(folder, state_dict)
    elif request.param == "safetensors":
        safetensors_torch.save_file(state_dict, str(folder / "model.safetensors"))
    elif request.param == "bin-index":
        _bin_sharded(folder, state_dict)
        torch.save({"not": "weights"}, folder / "training_args.bin")
    elif request.param == "pytorch_model.bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        safetensors_torch.save_file(state_dict, str(folder / "adapter_model.safetensors"))
    return request.param, folder


def test_every_folder_layout_with_torch_fans(layout, state_dict):
    name, folder = layout
    model = load(str(folder))
    assert model.source == str(folder)
    _check_fans(model, state_dict, natural=name not in ("bin-index", "pytorch_model.bin"))
    if name == "peft":
        assert any("PEFT adapter" in note for note in model.notes)


def test_folder_rank_order(tmp_path, state_dict):
    """A safetensors file outranks a pytorch_model.bin beside it."""
    safetensors_torch.save_file(state_dict, str(tmp_path / "model.safetensors"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    assert load(str(tmp_path)).format == "safetensors"


def test_folder_with_equal_candidates_is_one_line(tmp_path, state_dict):
    for name in ("a.safetensors", "b.safetensors"):
        safetensors_torch.save_file(state_dict, str(tmp_path / name))
    _one_line_exit_2([tmp_path], str(tmp_path), "a.safetensors, b.safetensors")


def test_folder_with_nothing_readable_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_exit_2([tmp_path], str(tmp_path), "is a directory", "notes.txt", "pytorch_model.bin")


def test_a_folder_with_dcp_metadata_that_is_not_dcp_is_one_line(tmp_path):
    """Dispatched to the DCP reader (tests/test_dcp.py reads real ones), which refuses a foreign pickle."""
    (tmp_path / ".metadata").write_bytes(b"\x80\x04N.")
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    _one_line_exit_2([tmp_path], str(tmp_path))


# item 3: repo ids from the local Hugging Face cache


def _hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """A repo as huggingface_hub caches it: blobs named by their hash, snapshot files linking to them."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return repo


@pytest.fixture(scope="module")
def hub(tmp_path_factory, state_dict) -> Path:
    """org/sharded (safetensors index), org/bin (sharded .bin), each at main; org/sharded also at a tag."""
    made = tmp_path_factory.mktemp("made")
    cache = tmp_path_factory.mktemp("hub")
    st = made / "st"
    st.mkdir()
    _safetensors_sharded(st, state_dict)
    repo = _hub_cache(cache, "org/sharded", {p.name: p for p in st.iterdir()})
    (repo / "refs" / "main").write_text(COMMIT)
    single = made / "model.safetensors"
    safetensors_torch.save_file({"only.weight": torch.ones(4, 3)}, str(single))
    _hub_cache(cache, "org/sharded", {"model.safetensors": single}, commit=TAG_COMMIT)
    (repo / "refs" / "v1").write_text(TAG_COMMIT + "\n")
    bins = made / "bin"
    bins.mkdir()
    _bin_sharded(bins, state_dict)
    repo = _hub_cache(cache, "org/bin", {p.name: p for p in bins.iterdir()})
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def in_cache(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


@pytest.mark.parametrize("repo_id", ["org/sharded", "org/bin"])
def test_repo_id_from_the_cache(in_cache, state_dict, repo_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = load(repo_id)
    assert model.source == repo_id
    _check_fans(model, state_dict, natural=repo_id == "org/sharded")


def test_repo_id_from_hf_home(hub, monkeypatch, tmp_path, state_dict):
    home = tmp_path / "hf"
    home.mkdir()
    (home / "hub").symlink_to(hub)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    _check_fans(load("org/sharded"), state_dict, natural=True)


def test_repo_id_at_a_revision(in_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("inspect", "org/sharded", "--revision", "v1", "--format", "json")
    assert result.code == 0, result.err
    assert [layer["param"] for layer in json.loads(result.out)["layers"]] == ["only.weight"]
    assert [layer.param for layer in load("org/sharded", revision=TAG_COMMIT).layers] == ["only.weight"]


def test_repo_id_not_cached_is_one_line_offline(in_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FANCLI_OFFLINE", "1")  # online, it is read from the Hub (tests/test_hub_server.py)
    _one_line_exit_2(["nobody/nothing"], "nobody/nothing", str(in_cache), "`hf download nobody/nothing`")


def test_a_broken_ref_is_one_line(tmp_path, monkeypatch, state_dict):
    cache = tmp_path / "hub"
    single = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state_dict, str(single))
    repo = _hub_cache(cache, "org/broken", {"model.safetensors": single})
    (repo / "refs" / "main").write_text("not a hash")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(["org/broken"], "org/broken", "refs", "commit hash")
    (repo / "refs" / "main").unlink()
    _one_line_exit_2(["org/broken"], "org/broken", "no revision 'main'")


def test_a_path_that_exists_wins_over_a_repo_id(in_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    safetensors_torch.save_file({"local.weight": torch.ones(2, 5)}, str(tmp_path / "org" / "sharded"))
    assert [layer.param for layer in load("org/sharded").layers] == ["local.weight"]


def test_snapshot_links_outside_the_repo_are_still_refused(tmp_path, state_dict):
    """The cache's snapshot -> blobs links are allowed; a link out of the repo's folder is not."""
    cache = tmp_path / "hub"
    outside = tmp_path / "outside.safetensors"
    safetensors_torch.save_file(state_dict, str(outside))
    repo = _hub_cache(cache, "org/evil", {})
    snapshot = repo / "snapshots" / COMMIT
    (snapshot / "model-00001-of-00001.safetensors").symlink_to(outside)
    _write_index(snapshot, "model.safetensors.index.json", [("model-00001-of-00001.safetensors", state_dict)])
    with pytest.raises(SourceError, match="links outside"):
        load(str(snapshot))


# no torch for folders of safetensors or zip .bin shards

_NO_TORCH = """
import sys
from fancli.loaders import load
model = load(sys.argv[1])
assert model.layers
assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))
"""


@pytest.mark.parametrize("source", ["org/sharded", "org/bin"])
def test_no_torch_import(hub, source, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_CACHE=str(hub))
    done = subprocess.run([sys.executable, "-c", _NO_TORCH, source], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["weights/modle.pt", "ckpt/model.safetensors", "runs/spec.yaml"])
def test_a_mistyped_path_is_not_sent_to_the_cache(in_cache, tmp_path, monkeypatch, name):
    """`weights/modle.pt` spells a repo id, but a checkpoint's suffix makes it a path the user mistyped."""
    monkeypatch.chdir(tmp_path)
    line = _one_line_exit_2([name], f"{name}: no such file")
    assert "cache" not in line and "download" not in line


def test_a_missing_revision_names_the_whole_download_command(in_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(["org/sharded", "--revision", "v9"], "`hf download org/sharded --revision v9`")


@pytest.mark.parametrize(("name", "text", "said"), [
    ("fake.pt", "hello, not a model\n", "a text file, not a checkpoint"),
    ("fake.safetensors", "hello, not a model\n", "a text file, not a checkpoint"),
    ("model.safetensors", "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", "git lfs pull"),
    ("pytorch_model.bin", "<!DOCTYPE html><html><body>Sign in</body></html>", "a web page"),
])
def test_a_text_file_under_a_checkpoints_name_is_named_for_what_it_is(tmp_path, name, text, said):
    path = tmp_path / name
    path.write_text(text)
    line = _one_line_exit_2([path], str(path), said)
    assert "layers" not in line and "header length" not in line  # not another format's complaint
