"""Issue 30: safetensors read by byte range from S3 (moto's server) and HTTP (a server with Range), both on
127.0.0.1 and started here: the same JSON as the local files, header-only and with --stats, in as many bytes
as the issue allows (counted by the servers), and every bad remote one line, exit 2."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from helpers import run, union_of_runs
from remote_servers import CountingProxy, HttpFiles, moto_s3, refused_port, silent_port

import fancli
import fancli.loaders.remote_io
import fancli.weights.parallel
import fancli.weights.stats

pytest.importorskip("s3fs")
pytest.importorskip("moto")

KIB = 1024
SLACK = 128 * KIB  # per shard (header-only) or per file (--stats): requests' headers, a first range
BUCKET = "models"
SECRET = "s3cr3t-token"


def _header_bytes(path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A sharded checkpoint (one shard's header longer than the first range) with config.json, and one file."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(3)
    folder = tmp_path_factory.mktemp("remote")
    first = {"embed.weight": torch.randn(2000, 256, generator=generator),
             "layers.0.q.weight": torch.randn(64, 64, generator=generator) * 0.1,
             "layers.0.q.bias": torch.randn(64, generator=generator)}
    second = {"layers.1.experts.weight": torch.randn(8, 64, 32, generator=generator),
              "head.weight": torch.randn(10, 256, generator=generator).to(torch.bfloat16)}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"))
    save_file(second, str(folder / "model-00002-of-00002.safetensors"), metadata={"notes": "n" * 120_000})
    weight_map = {key: "model-00001-of-00002.safetensors" for key in first}
    weight_map |= {key: "model-00002-of-00002.safetensors" for key in second}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64,
                                                    "num_attention_heads": 4, "initializer_range": 0.02}))
    assert _header_bytes(folder / "model-00002-of-00002.safetensors") > 100_000  # a second request is needed
    single = tmp_path_factory.mktemp("single")
    save_file(first, str(single / "model.safetensors"))
    return folder, single


@pytest.fixture(scope="module")
def http(local):
    folder, single = local
    with HttpFiles() as server:
        for path in [*folder.iterdir(), *single.iterdir()]:
            server.files[f"/{path.parent.name}/{path.name}"] = path.read_bytes()
        garbage = b"{this is no json at all, no;" + b"!" * 12
        server.files["/bad/garbage.safetensors"] = len(garbage).to_bytes(8, "little") + garbage
        server.folder, server.single = f"{server.url}/{folder.name}", f"{server.url}/{single.name}"
        yield server


@pytest.fixture(scope="module")
def s3(local):
    """moto's S3 server holding the checkpoint, reached through a proxy that counts its bytes; the endpoint
    and dummy credentials given as AWS's own environment variables."""
    import boto3

    folder, _ = local
    with moto_s3() as (host, port), CountingProxy((host, port)) as proxy, pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket=BUCKET)
        for path in folder.iterdir():
            client.upload_file(str(path), BUCKET, f"ckpt/{path.name}")
        yield proxy


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.setenv("FANCLI_OFFLINE", "")  # online; and `--offline`'s setting undone after each test


def _json(*args) -> dict:
    result = run("inspect", *args, "-f", "json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    return {"layers": document["layers"], "summary": document["summary"]}


def _sizes(folder) -> tuple[int, int]:
    """(index + config + (8 + header + SLACK) per shard, the shards' tensor bytes)."""
    shards = sorted(folder.glob("*.safetensors"))
    small = sum((folder / name).stat().st_size for name in ("model.safetensors.index.json", "config.json"))
    headers = sum(_header_bytes(shard) + SLACK for shard in shards)
    return small + headers, sum(shard.stat().st_size - _header_bytes(shard) for shard in shards)


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_header_only_equals_local_within_the_byte_budget(local, http, s3, scheme):
    folder, _ = local
    server, url = (http, http.folder + "/model.safetensors.index.json") if scheme == "http" \
        else (s3, f"s3://{BUCKET}/ckpt/")
    expected = _json(folder)
    server.counter.reset()
    assert _json(url) == expected
    budget, tensors = _sizes(folder)
    assert 0 < server.counter.total <= budget < tensors


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_stats_equal_local_for_jobs_1_and_2_reading_each_byte_once(local, http, s3, scheme, monkeypatch):
    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)  # a pool even for a small checkpoint
    monkeypatch.setattr(fancli.weights.stats, "PIECE_BYTES", 256 * KIB)  # a tensor read in several ranges
    folder, _ = local
    server, url = (http, http.folder + "/model.safetensors.index.json") if scheme == "http" \
        else (s3, f"s3://{BUCKET}/ckpt/")
    expected = _json(folder, "--stats")
    budget, tensors = _sizes(folder)
    for jobs in ("1", "2"):
        server.counter.reset()
        assert _json(url, "--stats", "--jobs", jobs) == expected
        assert tensors < server.counter.total <= budget + tensors + 2 * SLACK


def test_stats_with_spectral_read_each_byte_once_and_equal_each_alone(local, http, monkeypatch):
    """One read feeds both: the observed statistics bit for bit --stats's and the spectra --spectral's, for
    --jobs 1 and 2, here and over HTTP, each tensor byte fetched once (a tensor in 8 pieces, a bf16 one)."""
    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)  # a pool even for a small checkpoint
    monkeypatch.setattr(fancli.weights.stats, "PIECE_BYTES", 256 * KIB)  # embed.weight read in 8 ranges
    folder, _ = local
    expected = union_of_runs(_json(folder, "--stats")["layers"], _json(folder, "--spectral")["layers"])
    assert sum(row.get("spectral_norm") is not None for row in expected) == 4 and "bfloat16" in json.dumps(expected)
    budget, tensors = _sizes(folder)
    for jobs in ("1", "2"):
        assert _json(folder, "--stats", "--spectral", "--jobs", jobs)["layers"] == expected
        http.counter.reset()
        both = _json(http.folder + "/model.safetensors.index.json", "--stats", "--spectral", "--jobs", jobs)
        assert both["layers"] == expected
        assert tensors < http.counter.total <= budget + tensors + 2 * SLACK


def test_a_spectral_trajectory_of_remote_checkpoints_reads_each_byte_once(local, http, monkeypatch):
    monkeypatch.setattr(fancli.weights.stats, "PIECE_BYTES", 256 * KIB)
    folder, single = local
    remote = (http.folder + "/model.safetensors.index.json", http.single + "/model.safetensors")
    here = (folder, single / "model.safetensors")

    def tracks(*args) -> list:
        result = run("inspect", *args, "-f", "json")
        assert result.code == 0, result.err
        return json.loads(result.out)["layers"]

    expected = union_of_runs(tracks(*here), tracks(*here, "--spectral"))
    assert sum(any(track.get("spectral_norm") or ()) for track in expected) == 4
    http.counter.reset()
    assert tracks(*remote, "--spectral") == expected
    budget, tensors = _sizes(folder)
    single_bytes = (single / "model.safetensors").stat().st_size
    assert tensors < http.counter.total <= budget + tensors + single_bytes + 3 * SLACK


def test_single_file_with_query_string_and_credentials_never_shown(local, http):
    _, single = local
    url = http.single.replace("http://", "http://user:pa55@") + "/model.safetensors?X-Amz-Signature=abc123"
    assert _json(url, "--stats") == _json(single / "model.safetensors", "--stats")
    result = run("inspect", url, "-f", "json")
    assert "pa55" not in result.out and "abc123" not in result.out


@pytest.mark.parametrize("name", ["single/model.safetensors", "remote/model.safetensors.index.json"])
def test_a_presigned_url_never_appears_in_any_output(local, http, name):
    """Its signature and user info in no output: JSON's source, the notes (a config.json beside it, a shard's
    name), the table, stderr, nor an error about a file beside it."""
    folder, single = local
    base = {"single": http.single, "remote": http.folder}[name.partition("/")[0]]
    url = f"{base.replace('http://', 'http://user:pa55@')}/{name.partition('/')[2]}?X-Amz-Signature=abc123"
    shown = f"{base}/{name.partition('/')[2]}"
    runs = [run("inspect", url, "--stats", "--infer", "-f", "json"), run("inspect", url, "--stats"),
            run("diff", url, url, "-f", "json"), run("inspect", url.replace(".safetensors", ".bin"))]
    assert [each.code for each in runs] == [0, 0, 0, 2], runs[-1].err
    document = json.loads(runs[0].out)
    assert document["source"]["path"] == shown
    assert bool(document["source"]["notes"]) == name.endswith(".json")  # from config.json, beside the index
    assert runs[-1].err.startswith(f"fancli: error: {shown.replace('.safetensors', '.bin')}: not found")
    for each in runs:
        assert "pa55" not in each.out + each.err and "abc123" not in each.out + each.err
        assert "X-Amz" not in each.out + each.err and "user:" not in each.out + each.err


@pytest.mark.parametrize("case", ["404", "403", "refused", "truncated", "garbage", "silent", "no ranges",
                                  "ranges ignored", "range overrun"])
def test_bad_remote_is_one_line_exit_2(http, case, monkeypatch):
    monkeypatch.setattr(fancli.loaders.remote_io, "CONNECT_TIMEOUT", 0.25)
    monkeypatch.setattr(fancli.loaders.remote_io, "READ_TIMEOUT", 0.25)
    expected = {"404": "not found", "403": "access denied", "refused": "cannot connect",
                "truncated": "ended early", "garbage": "header", "silent": "no answer",
                "no ranges": "serves no byte ranges", "ranges ignored": "a byte range with the whole file",
                "range overrun": "more bytes than the range"}[case]
    creds = "http://user:pa55@"
    with silent_port() as silent:
        url = {"404": f"{http.single}/none.safetensors", "403": f"{http.url}/403/model.safetensors",
               "refused": f"http://127.0.0.1:{refused_port()}/model.safetensors",
               "truncated": http.single.replace(http.url, http.url + "/cut") + "/model.safetensors",
               "garbage": f"{http.url}/bad/garbage.safetensors",
               "silent": f"http://127.0.0.1:{silent}/model.safetensors",
               "no ranges": http.single.replace(http.url, http.url + "/whole") + "/model.safetensors",
               "ranges ignored": http.single.replace(http.url, http.url + "/deaf") + "/model.safetensors",
               "range overrun": http.single.replace(http.url, http.url + "/long") + "/model.safetensors"}[case]
        http.counter.reset()
        result = run("inspect", url.replace("http://", creds) + "?sig=abc123", "--stats")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and expected in result.err, result.err
    assert url.removeprefix("http://") in result.err and "pa55" not in result.err and "abc123" not in result.err
    if case not in ("ranges ignored", "range overrun"):  # there the server pushes the whole file while fancli hangs up
        assert http.counter.total < 100_000 + 64 * KIB  # at most the first range and the requests' headers


@pytest.mark.parametrize("case", ["refused", "silent"])
def test_bad_s3_endpoint_is_one_line_exit_2_whatever_its_client_retries(s3, case, monkeypatch):
    import s3fs

    monkeypatch.setattr(fancli.loaders.remote_io, "CONNECT_TIMEOUT", 0.25)
    monkeypatch.setattr(fancli.loaders.remote_io, "READ_TIMEOUT", 0.25)
    monkeypatch.setattr(fancli.loaders.remote_io, "DEADLINE", 0.5 if case == "silent" else 5)  # a refusal comes back
    monkeypatch.setattr(fancli.loaders.remote_io, "RETRIES", 1)  # botocore's back-off would outlast DEADLINE
    s3fs.S3FileSystem.clear_instance_cache()  # a client for this endpoint, not the last test's
    with silent_port() as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent if case == 'silent' else refused_port()}")
        result = run("inspect", f"s3://{BUCKET}/ckpt/")
    s3fs.S3FileSystem.clear_instance_cache()
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert f"s3://{BUCKET}/ckpt/: " in result.err and ("cannot connect" if case == "refused" else "no answer") \
        in result.err and SECRET not in result.err


@pytest.mark.parametrize("bucket, expected", [("deaf", "a byte range with the whole file"),
                                              ("long", "more bytes than the range")])
def test_an_s3_range_answered_with_more_is_refused_before_its_body_is_read(local, http, bucket, expected,
                                                                           monkeypatch):
    """An S3 endpoint (here the HTTP server, path-style: bucket `deaf` answers every range 200 with the whole
    object, `long` 206 with it) whose answer is longer than the range: refused on its ContentLength, never
    read into memory (s3fs alone reads the body whole, and fancli's length check came after)."""
    import s3fs

    _, single = local
    http.files["/ckpt/model.safetensors"] = (single / "model.safetensors").read_bytes()
    s3fs.S3FileSystem.clear_instance_cache()  # a client for this endpoint, not the last test's
    for name, value in {"AWS_ENDPOINT_URL": http.url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    from aiobotocore.response import StreamingBody

    reads, read = [], StreamingBody.read

    async def counted(self, *args):
        reads.append(args)
        return await read(self, *args)

    monkeypatch.setattr(StreamingBody, "read", counted)
    result = run("inspect", f"s3://{bucket}/ckpt/model.safetensors")
    s3fs.S3FileSystem.clear_instance_cache()
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert f"s3://{bucket}/ckpt/model.safetensors: " in result.err and expected in result.err, result.err
    assert reads == []


def test_s3_missing_key_is_one_line_exit_2(s3):
    result = run("inspect", f"s3://{BUCKET}/ckpt/nothing.safetensors")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "not found" in result.err
    assert SECRET not in result.err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_refuses_every_remote_source_before_any_request(http, how, monkeypatch):
    url = http.single + "/model.safetensors"
    if how == "env":
        monkeypatch.setenv("FANCLI_OFFLINE", "1")
    http.counter.reset()
    result = run(*(["--offline"] if how == "flag" else []), "diff", url, url)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert f"{url}: a remote source, and fancli is offline" in result.err
    assert http.counter.sent == []


@pytest.mark.skipif(__import__("importlib").util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_says_what_to_install():
    result = run("inspect", "gs://bucket/model.safetensors")
    assert result.code == 2 and "gcsfs" in result.err and len(result.err.strip().splitlines()) == 1


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import -> ModuleNotFoundError
    result = run("inspect", f"s3://{BUCKET}/ckpt/")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert result.err.rstrip().endswith("needs s3fs, which is not installed: pip install s3fs"), result.err


def test_diff_of_a_remote_and_its_local_copy_is_all_unchanged(local, http):
    folder, _ = local
    result = run("diff", folder, http.folder + "/model.safetensors.index.json", "-f", "json")
    assert result.code == 0, result.err
    tensors = json.loads(result.out)["tensors"]
    assert len(tensors) == 5 and all(row["status"] == "same" for row in tensors), tensors[:2]


def test_no_file_is_written_by_a_header_only_inspect(http, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run("inspect", http.folder + "/model.safetensors.index.json").code == 0
    assert list(tmp_path.iterdir()) == [] and os.listdir(tmp_path) == []


def test_a_trajectory_of_remote_checkpoints_is_the_local_one(local, http):
    folder, single = local
    remote = run("inspect", http.folder + "/model.safetensors.index.json", http.single + "/model.safetensors",
                 "-f", "json")
    here = run("inspect", folder, single / "model.safetensors", "-f", "json")
    assert remote.code == here.code == 0, remote.err
    assert json.loads(remote.out)["layers"] == json.loads(here.out)["layers"]


def test_a_configuration_may_name_a_remote_source(local, http, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fancli.yaml").write_text(f"source: {http.single}/model.safetensors\n")
    assert run("check", "--update").code == 0
    lock = json.loads((tmp_path / "fancli.lock.json").read_text())
    assert run("check").code == 0 and "embed.weight" in json.dumps(lock)


class BlockFiles(AbstractFileSystem):
    """A filesystem with fsspec's generic `cat_file` and buffered files (5 MiB blocks), as HfFileSystem has,
    over a local folder; it counts the bytes its files fetch."""

    protocol = "blocks"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fetched: list[int] = []

    def info(self, path, **kwargs) -> dict:
        return {"name": path, "size": os.stat(path).st_size, "type": "directory" if os.path.isdir(path) else "file"}

    def ls(self, path, detail=True, **kwargs) -> list:
        return [self.info(os.path.join(path, name)) for name in sorted(os.listdir(path))]

    def _open(self, path, mode="rb", block_size=None, cache_type="readahead", **kwargs):
        fs = self

        class Counted(AbstractBufferedFile):
            def _fetch_range(self, start, end) -> bytes:
                fs.fetched.append(end - start)
                with open(path, "rb") as handle:
                    handle.seek(start)
                    return handle.read(end - start)

        return Counted(self, path, mode, block_size=block_size or 5 * 1024 * KIB, cache_type=cache_type,
                       size=self.info(path)["size"])


def test_load_remote_takes_any_fsspec_filesystem_and_reads_exact_ranges_from_buffered_ones(local):
    """The Hub's HfFileSystem comes through this entry: fsspec's generic `cat_file` would read 5 MiB blocks."""
    from fancli.loaders import LoadOptions
    from fancli.loaders.remote import load_remote

    folder, _ = local
    fs = BlockFiles(skip_instance_cache=True)
    model = load_remote(fs, str(folder), "org/name", LoadOptions())
    budget, tensors = _sizes(folder)
    assert 0 < sum(fs.fetched) <= budget < tensors
    here, there = fancli.inspect(folder, stats=True), fancli.inspect(model, stats=True)
    assert [(row.layer.param, row.observed) for row in here.rows] == [(row.layer.param, row.observed)
                                                                       for row in there.rows]
    assert budget + tensors >= sum(fs.fetched) > tensors and model.source == "org/name"


def test_an_http_source_imports_neither_s3fs_nor_torch_nor_numpy(http):
    from helpers import run_child

    done = run_child(["inspect", http.single + "/model.safetensors"], absent=("s3fs", "botocore", "torch", "numpy"))
    assert done.returncode == 0, done.stderr
