"""The Hub endpoint of tests/hub_server.py, checked with huggingface_hub's own calls (the oracle that it is a
Hub), and fancli's `hub_filesystem` against it: ranged reads, the byte economy, and each fault one line."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, HfFileSystem, constants, hf_hub_download  # noqa: E402
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, RepositoryNotFoundError,  # noqa: E402
                                    RevisionNotFoundError)
from hub_server import HubServer, Repo, use_hub  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from fancli.errors import SourceError  # noqa: E402
from fancli.loaders.hf_cache import not_cached  # noqa: E402
from fancli.loaders.hub import hub_filesystem  # noqa: E402
from helpers import REPO, run  # noqa: E402

TOKEN = "hf_grantedtesttoken"
BRANCH_COMMIT = "b" * 40
WEIGHTS = {"layer.weight": np.arange(512 * 512, dtype=np.float32).reshape(512, 512),  # 1 MiB: a whole-file
           "layer.bias": np.ones(512, dtype=np.float32)}                              # read shows in bytes


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repo")
    save_file(WEIGHTS, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 512}))
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("notes")
    sharded = tmp_path_factory.mktemp("sharded")
    weight_map = {}
    for number, name in enumerate(WEIGHTS, 1):
        shard = f"model-{number:05d}-of-{len(WEIGHTS):05d}.safetensors"
        save_file({name: WEIGHTS[name]}, str(sharded / shard))
        weight_map[name] = shard
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    repos = {"org/phi": Repo(phi_repo(tmp_path_factory.mktemp("phi"))),
             "org/model": Repo(folder, refs={"main": "a" * 40, "v1": BRANCH_COMMIT}),
             "org/sharded": Repo(sharded),
             "org/gated": Repo(folder, access="gated", tokens=frozenset({TOKEN})),
             "org/private": Repo(folder, access="private", tokens=frozenset({TOKEN}))}
    with HubServer(repos) as server:
        yield server


def phi_repo(folder):
    """The common case on the Hub: an index, two shards and the config.json that names the heads of a fused
    q/k/v and the init's std (transformers' `initializer_range`)."""
    generator = np.random.default_rng(5)

    def normal(*shape: int) -> np.ndarray:
        return (generator.standard_normal(shape) * 0.02).astype(np.float32)

    shards = [{"model.embed_tokens.weight": normal(100, 64),
               "model.layers.0.self_attn.qkv_proj.weight": normal(192, 64)},
              {"model.layers.0.mlp.gate_up_proj.weight": normal(256, 64),
               "model.layers.0.mlp.down_proj.weight": normal(64, 128), "lm_head.weight": normal(100, 64)}]
    weight_map = {}
    for number, tensors in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(folder / name))
        weight_map |= dict.fromkeys(tensors, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4,
                                                    "num_key_value_heads": 4, "initializer_range": 0.02}))
    return folder


@pytest.fixture(autouse=True)
def settings(hub, monkeypatch, tmp_path):
    """huggingface_hub's settings for this test (`hub_server.use_hub`): this server, no token, an empty home."""
    use_hub(monkeypatch, hub.url, tmp_path / "home")
    hub.clear()


def safetensors_header(data: bytes) -> dict:
    """The header as the format defines it: an 8-byte little-endian length, then that much JSON."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])


def model_bytes(hub) -> bytes:
    return (hub.repos["org/model"].folder / "model.safetensors").read_bytes()


# -- the server, as huggingface_hub sees it ------------------------------------------------------------------

def test_model_info_and_revisions(hub):
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info("org/model").sha == "a" * 40
    assert api.model_info("org/model", revision="v1").sha == BRANCH_COMMIT
    assert api.model_info("org/model", revision=BRANCH_COMMIT).sha == BRANCH_COMMIT
    assert sorted(api.list_repo_files("org/model")) == ["config.json", "extra/notes.txt", "model.safetensors"]
    info = {entry.path: entry for entry in api.get_paths_info("org/model", ["config.json", "extra", "absent"])}
    assert sorted(info) == ["config.json", "extra"]
    assert info["config.json"].size == (hub.repos["org/model"].folder / "config.json").stat().st_size
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/model", revision="v9")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")


def test_filesystem_ls_info_and_ranges(hub):
    fs = HfFileSystem(endpoint=hub.url, token=False, skip_instance_cache=True)
    assert fs.ls("org/model", detail=False) == [f"org/model/{name}" for name in ("config.json", "extra",
                                                                              "model.safetensors")]
    assert fs.ls("org/model/extra", detail=False) == ["org/model/extra/notes.txt"]
    data = model_bytes(hub)
    assert fs.info("org/model/model.safetensors")["size"] == len(data)
    assert fs.info("org/model/extra")["type"] == "directory"
    assert fs.cat_file("org/model/model.safetensors", start=100, end=164) == data[100:164]
    assert fs.cat_file("org/model@v1/config.json") == (hub.repos["org/model"].folder / "config.json").read_bytes()
    with pytest.raises(FileNotFoundError):
        fs.info("org/model/absent.bin")
    # HfFileSystem's own ranged read goes through fsspec's 5 MiB read-ahead: the rest of the 1 MiB file for
    # 64 bytes (why fancli's hub_files.py reads by exact range)
    assert hub.requests("model.safetensors")[-1].body_bytes == len(data) - 100


def test_download_and_safetensors_metadata(hub, tmp_path):
    cache = tmp_path / "cache"
    path = hf_hub_download("org/model", "config.json", cache_dir=cache, endpoint=hub.url, token=False)
    assert open(path, "rb").read() == (hub.repos["org/model"].folder / "config.json").read_bytes()
    assert "a" * 40 in path  # the snapshot of the commit X-Repo-Commit named
    meta = HfApi(endpoint=hub.url, token=False).get_safetensors_metadata("org/model")
    header = safetensors_header(model_bytes(hub))
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert meta.files_metadata["model.safetensors"].metadata == header["__metadata__"] == {"format": "pt"}
    for name, array in WEIGHTS.items():
        assert tensors[name].shape == list(array.shape) == header[name]["shape"]
        assert list(tensors[name].data_offsets) == header[name]["data_offsets"]
    assert [r.range for r in hub.requests("/resolve/main/model.safetensors") if r.method == "GET"] == ["bytes=0-100000"]
    sharded = HfApi(endpoint=hub.url, token=False).get_safetensors_metadata("org/sharded")  # index, then shards
    folder = hub.repos["org/sharded"].folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sharded.sharded and sharded.weight_map == index["weight_map"]
    for shard, meta in sharded.files_metadata.items():
        header = safetensors_header((folder / shard).read_bytes())
        assert {name: info.data_offsets for name, info in meta.tensors.items()} == {
            name: tuple(entry["data_offsets"]) for name, entry in header.items() if name != "__metadata__"}


def test_errors_are_huggingface_hubs_own(hub, tmp_path):
    def download(repo: str, name: str = "config.json", token: str | bool = False) -> str:
        return hf_hub_download(repo, name, cache_dir=tmp_path, endpoint=hub.url, token=token)

    with pytest.raises(RepositoryNotFoundError):
        download("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        download("org/private")
    with pytest.raises(EntryNotFoundError):
        download("org/model", "absent.json")
    with pytest.raises(GatedRepoError) as unauthenticated:
        download("org/gated")
    with pytest.raises(GatedRepoError) as refused:
        download("org/gated", token="hf_someoneelse")
    assert (unauthenticated.value.response.status_code, refused.value.response.status_code) == (401, 403)
    assert download("org/gated", token=TOKEN) and download("org/private", token=TOKEN)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/model", "config.json", revision="v9", cache_dir=tmp_path, endpoint=hub.url, token=False)


# -- fancli's hub_filesystem ---------------------------------------------------------------------------------

def test_hub_filesystem_resolves_the_revision_to_a_commit(hub):
    fs, root = hub_filesystem("org/model", None)
    assert isinstance(fs, HfFileSystem) and fs.endpoint == hub.url
    assert root == "org/model@" + "a" * 40
    assert hub_filesystem("org/model", "v1")[1] == f"org/model@{BRANCH_COMMIT}"
    assert fs.ls(root, detail=False) == [f"{root}/config.json", f"{root}/extra", f"{root}/model.safetensors"]
    assert fs.info(f"{root}/model.safetensors")["size"] == len(model_bytes(hub))
    copy = pickle.loads(pickle.dumps(fs))  # as a cluster task carries it: the same Hub, the same exact reads
    assert copy.endpoint == hub.url and copy.cat_file(f"{root}/model.safetensors", 0, 8) == model_bytes(hub)[:8]


def test_header_read_is_ranged(hub):
    """The 8-byte length, then the header: exactly those bytes from the server, nothing of the tensors."""
    fs, root = hub_filesystem("org/model", None)
    data = model_bytes(hub)
    path = f"{root}/model.safetensors"
    hub.clear()
    assert fs.cat_file(path, start=0, end=8) == data[:8]
    (length,) = struct.unpack("<Q", data[:8])
    assert hub.body_bytes("model.safetensors") == 8
    assert fs.cat_file(path, start=8, end=8 + length) == data[8:8 + length]
    assert hub.body_bytes("model.safetensors") == 8 + length
    assert [r.range for r in hub.requests("model.safetensors")] == ["bytes=0-7", f"bytes=8-{7 + length}"]
    # one request for both when the header fits a first range, as get_safetensors_metadata reads it
    hub.clear()
    first = fs.cat_file(path, start=0, end=64 * 1024)
    assert safetensors_header(first) == safetensors_header(data)
    assert hub.body_bytes("model.safetensors") == 64 * 1024 < len(data) // 16
    assert len(hub.requests("model.safetensors")) == 1
    assert fs.cat_file(path, start=len(data) - 4, end=len(data) + 100) == data[-4:]  # clipped at the end
    assert fs.cat_file(path, start=len(data) + 10, end=len(data) + 20) == b""
    assert fs.cat_file(path, start=-4, end=None) == data[-4:]


@pytest.mark.parametrize("telemetry, written", [("1", []), ("", [".agent_harnesses.json"])])
def test_header_read_in_a_fresh_process_writes_no_cache(hub, tmp_path, telemetry, written):
    """The settings from the environment as a user sets them: HF_ENDPOINT names the server, HF_HOME an empty
    folder. Resolving the revision and reading a header writes nothing there, and imports no torch; only
    huggingface_hub's telemetry, unless HF_HUB_DISABLE_TELEMETRY, keeps the Hub's agent list there (its
    user-agent asks for it with any request)."""
    home = tmp_path / "hf_home"
    home.mkdir()
    script = ("import sys\n"
              "from fancli.loaders.hub import hub_filesystem\n"
              "fs, root = hub_filesystem('org/model', None)\n"
              "print(len(fs.cat_file(root + '/model.safetensors', start=0, end=1000)), root)\n"
              "assert 'torch' not in sys.modules\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY=telemetry, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1000", "org/model@" + "a" * 40]
    assert hub.body_bytes("model.safetensors") == 1000
    assert [path.name for path in home.rglob("*")] == written


def test_gated_repo_reads_with_the_users_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fs, root = hub_filesystem("org/gated", None)
    assert fs.cat_file(f"{root}/model.safetensors", start=0, end=8) == model_bytes(hub)[:8]
    assert hub_filesystem("org/private", None)[1].startswith("org/private@")


def one_line_error(repo_id: str, revision: str | None = None) -> str:
    with pytest.raises(SourceError) as raised:
        hub_filesystem(repo_id, revision)
    message = str(raised.value)
    assert raised.value.exit_code == 2 and "\n" not in message and message.startswith(f"{repo_id}: ")
    return message


@pytest.mark.parametrize("repo_id, revision, says", [
    ("org/missing", None, "no such repo"),
    ("org/private", None, "no such repo on the Hugging Face Hub (http://127.0.0.1:"),
    ("org/gated", None, "a gated repo"),
    ("org/model", "v9", "no revision 'v9'"),
])
def test_hub_refusals_are_one_line(hub, repo_id, revision, says):
    assert says in one_line_error(repo_id, revision)


def test_gated_with_a_token_not_granted_never_prints_it(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_notgrantedsecret")
    message = one_line_error("org/gated")
    assert "a gated repo" in message and "hf_notgrantedsecret" not in message
    assert hub.requests("/auth-check")[-1].status == 403


def test_connection_refused_is_one_line(monkeypatch):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert "the Hugging Face Hub (http://127.0.0.1:" in (message := one_line_error("org/model"))
    assert "cannot be reached" in message and "hf download org/model" in message


def test_a_server_that_never_answers_times_out(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.25)
    started = time.monotonic()
    with hub.stall():
        assert "did not answer within 0.25 s (HF_HUB_ETAG_TIMEOUT)" in one_line_error("org/model")
    assert time.monotonic() - started < 3


def test_a_read_that_never_answers_is_an_oserror(hub, monkeypatch):
    monkeypatch.setattr("fancli.loaders.hub_files.RETRIES", 0)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.25)
    fs, root = hub_filesystem("org/model", None)
    fs.ls(root)  # as a reader lists a folder first: the read below is what stalls
    with hub.stall(), pytest.raises(TimeoutError, match="no answer from http://127.0.0.1:.* in time"):
        fs.cat_file(f"{root}/model.safetensors", start=0, end=8)


def test_read_faults_are_the_oserrors_fsspec_filesystems_raise(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fs, root = hub_filesystem("org/gated", None)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{root}/absent.bin", start=0, end=8)
    with hub.cut_short(), pytest.raises(ConnectionError, match="cut off after 512 of 1024 bytes"):
        fs.cat_file(f"{root}/model.safetensors", start=0, end=1024)
    monkeypatch.delenv("HF_TOKEN")  # access lost after the revision was resolved
    with pytest.raises(PermissionError, match=r"refused access \(401\)"):
        fs.cat_file(f"{root}/model.safetensors", start=0, end=8)


def test_offline_is_todays_uncached_error(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert one_line_error("org/model") == str(not_cached("org/model"))
    assert hub.sent == []


def test_without_huggingface_hub_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.delitem(sys.modules, "fancli.loaders.hub_files", raising=False)
    message = one_line_error("org/model")
    assert message.startswith(str(not_cached("org/model"))) and message.endswith("pip install huggingface_hub")


# -- fancli reading a repo id the cache lacks from the Hub -----------------------------------------------------

SLACK = 128 * 1024  # per shard (header-only) or per file (--stats), as issue 30 allows


def inspect_json(*args: str) -> dict:
    result = run("inspect", *args, "-f", "json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    return {"layers": document["layers"], "summary": document["summary"]}


@pytest.fixture
def uncached(monkeypatch, tmp_path):
    """fancli's own cache lookup finds nothing (its HF_HUB_CACHE is an empty folder), and fancli is online."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FANCLI_OFFLINE", "")


def header_bytes(path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("repo_id", ["org/model", "org/sharded"])
def test_an_uncached_repo_id_is_read_from_the_hub_as_its_local_copy(hub, uncached, repo_id):
    folder = hub.repos[repo_id].folder
    expected = inspect_json(folder)
    hub.clear()
    assert inspect_json(repo_id) == expected
    shards = sorted(folder.glob("*.safetensors"))
    small = sum((folder / name).stat().st_size for name in ("config.json", "model.safetensors.index.json")
                if (folder / name).exists())
    assert hub.body_bytes(".safetensors") <= sum(header_bytes(shard) + SLACK for shard in shards)
    assert hub.body_bytes() <= small + sum(header_bytes(shard) + SLACK for shard in shards) + SLACK
    assert not (hub.repos[repo_id].folder.parent / "empty-cache").exists()


@pytest.fixture
def in_pieces(monkeypatch):
    """A thread pool for `--jobs 2` even for these small files, and each tensor read in several ranges."""
    monkeypatch.setattr("fancli.weights.parallel.PARALLEL_BYTES", 0)
    monkeypatch.setattr("fancli.weights.stats.PIECE_BYTES", 256 * 1024)


def tensor_bytes(folder) -> int:
    return sum(shard.stat().st_size - header_bytes(shard) for shard in folder.glob("*.safetensors"))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_stats_from_the_hub_equal_local_reading_each_byte_once(hub, uncached, in_pieces, jobs):
    folder = hub.repos["org/sharded"].folder
    expected = inspect_json(folder, "--stats")
    hub.clear()
    assert inspect_json("org/sharded", "--stats", "--jobs", jobs) == expected
    shards = sorted(folder.glob("*.safetensors"))
    tensors = tensor_bytes(folder)
    assert tensors <= hub.body_bytes(".safetensors") <= tensors + 2 * SLACK * len(shards)
    assert len(hub.requests(".safetensors")) > 2 * len(shards)  # the header's range, then the tensors' pieces


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_diff_of_a_hub_repo_and_its_local_copy_reads_each_byte_once(hub, uncached, in_pieces, jobs):
    folder = hub.repos["org/sharded"].folder
    hub.clear()
    result = run("diff", "org/sharded", folder, "--jobs", jobs, "-f", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["tensors"]
    assert sorted(row["param"] for row in rows) == sorted(WEIGHTS) and {row["status"] for row in rows} == {"same"}
    shards = sorted(folder.glob("*.safetensors"))
    tensors = tensor_bytes(folder)
    assert tensors <= hub.body_bytes(".safetensors") <= tensors + 2 * SLACK * len(shards)


def test_a_revision_of_an_uncached_repo_is_read_at_its_commit(hub, uncached):
    assert inspect_json("org/model", "--revision", "v1") == inspect_json(hub.repos["org/model"].folder)
    assert any(BRANCH_COMMIT in sent.path for sent in hub.sent)


@pytest.mark.parametrize("how", ["flag", "huggingface_hub"])
def test_offline_an_uncached_repo_id_is_todays_error_and_nothing_is_asked(hub, uncached, monkeypatch, how):
    if how == "huggingface_hub":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = run(*(["--offline"] if how == "flag" else []), "inspect", "org/model")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert result.err.strip().endswith(str(not_cached("org/model")))
    assert hub.sent == []


def test_a_missing_repo_is_one_line_exit_2(hub, uncached):
    result = run("inspect", "org/absent")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "org/absent" in result.err and "no such repo" in result.err


def test_a_sharded_repo_with_a_config_is_read_with_it_as_its_local_copy(hub, uncached):
    """The index, the shards and config.json beside them: the heads split the fused q/k/v, the recipe and its
    std come from `initializer_range`, as for the local folder."""
    def document(source) -> dict:
        result = run("inspect", source, "--stats", "--infer", "-f", "json")
        assert result.code == 0, result.err
        found = json.loads(result.out)
        return {"layers": found["layers"], "summary": found["summary"], "settings": found["settings"],
                "notes": found["source"]["notes"], "format": found["source"]["format"]}

    remote = document("org/phi")
    assert remote == document(hub.repos["org/phi"].folder)
    assert remote["settings"]["recipe_from"] == "config.json model_type=phi3"
    assert any("initializer_range=0.02" in note for note in remote["notes"])
    qkv = next(row for row in remote["layers"] if row["name"].endswith("qkv_proj"))
    assert qkv["structure"] == {"stacked": 3} and qkv["std"] == 0.02


@pytest.fixture
def quick(monkeypatch):
    """Every time limit short: a request's (huggingface_hub's), a read's retries, and a call's (remote_io's)."""
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.25)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.25)
    monkeypatch.setattr("fancli.loaders.hub_files.RETRIES", 0)
    monkeypatch.setattr("fancli.loaders.remote_io.DEADLINE", 5)


def run_within(seconds: float, *args: str):
    """`run(*args)` in a thread, so that a hang fails the test instead of hanging it."""
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    return worker, done


@pytest.mark.parametrize("case, says", [
    ("404", "org/absent: no such repo"),
    ("401", "org/gated: a gated repo"),
    ("403", "org/gated: a gated repo"),
    ("refused", "not in the Hugging Face cache (looked in"),
    ("truncated", "org/model/model.safetensors: the server's answer ended early"),
    ("silent", "org/model: the Hugging Face Hub (http://127.0.0.1:"),
    ("silent listing", "org/model: no answer within 0.5 s"),
    ("silent auth-check", "org/gated: the Hugging Face Hub (http://127.0.0.1:"),
    ("silent read", "org/model/model.safetensors: no answer from http://127.0.0.1:"),
])
def test_bad_hub_remotes_are_one_line_exit_2_through_the_cli(hub, uncached, quick, monkeypatch, case, says):
    """Issue 30's five bad remotes for a repo id: 404, 401/403, refused, truncated, and a server that never
    answers: its first request, or only the listings (the tree, paths-info) or the gated repo's auth-check
    that follow, which huggingface_hub asks without a timeout."""
    repo = {"404": "org/absent", "401": "org/gated", "403": "org/gated", "silent auth-check": "org/gated"}.get(
        case, "org/model")
    monkeypatch.setenv("HF_TOKEN", "hf_notgrantedsecret" if case == "403" else TOKEN)
    if case in ("401", "404"):
        monkeypatch.delenv("HF_TOKEN")
    if case == "refused":
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{unused.getsockname()[1]}")
    if case in ("silent listing", "silent auth-check"):  # what only the deadline of remote_io's `call` ends
        monkeypatch.setattr("fancli.loaders.remote_io.DEADLINE", 0.5)
    faults = {"truncated": hub.cut_short(), "silent": hub.stall(), "silent listing": hub.stall("tree", "paths-info"),
              "silent auth-check": hub.stall("auth-check"), "silent read": hub.stall("resolve")}
    started = time.monotonic()
    with faults.get(case, contextlib.nullcontext()):
        worker, done = run_within(10, "inspect", repo, "--stats")
    worker.join(5)
    assert done, f"fancli still waiting after {time.monotonic() - started:.0f} s"
    (result,) = done
    assert time.monotonic() - started < 5
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and says in result.err, result.err
    assert case != "silent read" or "(HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT: 0.25 s)" in result.err
    assert "hf_notgrantedsecret" not in result.err and TOKEN not in result.err and result.out == ""


def test_the_token_never_appears_in_any_output(hub, uncached, monkeypatch):
    """HF_TOKEN reads the gated repo; it is in no output, JSON's source, table, notes, diff or error."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    runs = [run("inspect", "org/gated", "--stats", "--infer", "-f", "json"), run("inspect", "org/gated", "--stats"),
            run("diff", "org/gated", "org/private", "-f", "json"), run("inspect", "org/gated", "--revision", "v9")]
    assert [each.code for each in runs] == [0, 0, 0, 2], runs[0].err
    document = json.loads(runs[0].out)
    assert document["source"]["path"] == "org/gated" and document["source"]["notes"]
    assert hub.requests("/auth-check")[-1].status == 200
    assert all(TOKEN not in each.out + each.err for each in runs)


@pytest.mark.parametrize("fault", ["404", "silent read"])
def test_an_endpoints_user_info_and_the_hubs_retries_never_show(hub, uncached, quick, monkeypatch, tmp_path, fault,
                                                                 capfd):
    """HF_ENDPOINT with a password in it, and reads retried (huggingface_hub logs each retry with its URL):
    one line, naming the endpoint without its user info."""
    from hub_server import use_hub

    use_hub(monkeypatch, hub.url.replace("http://", "http://user:SECRETPW@"), tmp_path / "home")
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.25)
    monkeypatch.setattr("fancli.loaders.hub_files.RETRIES", 1)
    with hub.stall("resolve") if fault == "silent read" else contextlib.nullcontext():
        worker, done = run_within(10, "inspect", "org/absent" if fault == "404" else "org/model", "--stats")
    worker.join(5)
    (result,) = done
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "SECRETPW" not in result.err and "user:" not in result.err and hub.url in result.err
    logged = capfd.readouterr().err  # huggingface_hub's own log handler writes to the process's stderr
    assert "Retry" not in logged and "SECRETPW" not in logged
    assert fault != "silent read" or "HF_HUB_DOWNLOAD_TIMEOUT" in result.err, result.err


def test_a_revision_the_cache_lacks_is_read_from_the_hub(hub, monkeypatch, tmp_path):
    """The cache holds org/model at main only: main is read from it, asking nothing; v1 from the Hub."""
    _cached_main(tmp_path, hub, monkeypatch)
    expected = inspect_json(hub.repos["org/model"].folder / "model.safetensors")
    hub.clear()
    assert inspect_json("org/model") == expected and hub.sent == []
    assert inspect_json("org/model", "--revision", "v1") == expected
    assert any(BRANCH_COMMIT in sent.path for sent in hub.sent)


def _cached_main(tmp_path, hub, monkeypatch):
    """A cache holding org/model at main only (refs/main, its snapshot)."""
    repo = tmp_path / "cache" / "models--org--model"
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    (snapshot / "model.safetensors").write_bytes(model_bytes(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FANCLI_OFFLINE", "")
    return repo


def test_a_refused_cache_is_reported_never_sent_to_the_hub(hub, monkeypatch, tmp_path):
    repo = _cached_main(tmp_path, hub, monkeypatch)
    (tmp_path / "elsewhere").write_text("c" * 40)
    (repo / "refs" / "main").unlink()
    (repo / "refs" / "main").symlink_to(tmp_path / "elsewhere")
    hub.clear()
    result = run("inspect", "org/model")
    assert result.code == 2 and "links outside the repo's refs folder; refused" in result.err, result.err
    assert hub.sent == []


def test_offline_a_revision_the_cache_lacks_is_named(hub, monkeypatch, tmp_path):
    _cached_main(tmp_path, hub, monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = run("inspect", "org/model", "--revision", "v9")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "no revision 'v9' in the Hugging Face cache" in result.err and "--revision v9" in result.err
    assert hub.sent == []
