"""Issue 18: `--cluster ADDRESS` runs the same pieces on a real Dask cluster (a scheduler and two worker
processes on this machine), and the result is the local one, bit for bit (the JSON output is identical)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Iterator

import pytest
import torch
from helpers import run, union_of_runs
from remote_servers import HttpFiles

import fancli.weights.stats

distributed = pytest.importorskip("distributed")

SMALL = 16 * 1024  # bytes per piece: each tensor is several pieces, spread over both workers


@pytest.fixture(scope="module")
def workers_hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("workers-hf-home")


@pytest.fixture(scope="module")
def cluster(workers_hf_home):
    """Two worker processes whose huggingface_hub (a Hub source's tasks import it) starts with an empty HF_HOME
    of the test's, no telemetry (it would ask the real Hub for its agent list and keep it in HF_HOME) and none
    of the user's tokens: it reads at import what the environment says, and a worker has its own."""
    hub_settings = {"HF_HOME": str(workers_hf_home), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": "",
                    "HUGGING_FACE_HUB_TOKEN": "", "HF_TOKEN_PATH": str(workers_hf_home / "token")}
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                  silence_logs=50, env=hub_settings) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(7)
    tensors = {
        "encoder.weight": torch.randn(256, 200, generator=generator) * 0.05 + 0.25,
        "conv.weight": (torch.rand(32, 16, 3, 3, generator=generator) - 0.5) * 0.3,
        "head.bias": torch.randn(3001, generator=generator),
        "half.weight": torch.randn(96, 80, generator=generator).to(torch.bfloat16),
    }
    folder = tmp_path_factory.mktemp("cluster")
    save_file(tensors, str(folder / "a.safetensors"))
    torch.save(tensors, folder / "a.pt")
    tensors["encoder.weight"] = tensors["encoder.weight"] * 0.9
    save_file(tensors, str(folder / "b.safetensors"))
    return folder


@pytest.fixture()
def small_pieces(monkeypatch):
    monkeypatch.setattr(fancli.weights.stats, "PIECE_BYTES", SMALL)


@pytest.mark.parametrize("name", ["a.safetensors", "a.pt"])
def test_cluster_json_equals_jobs_1_and_2(small_pieces, cluster, checkpoint, name):
    path = checkpoint / name
    layers = fancli.load(path).layers
    assert sum(len(fancli.weights.stats.pieces(layer.data)) for layer in layers) > 10
    local = run("inspect", path, "--stats", "--infer", "-f", "json", "--jobs", "1")
    two = run("inspect", path, "--stats", "--infer", "-f", "json", "--jobs", "2")
    remote = run("inspect", path, "--stats", "--infer", "-f", "json", "--cluster", cluster)
    assert local.code == two.code == remote.code == 0, remote.err
    assert remote.out == local.out == two.out
    rows = {row["param"]: row for row in json.loads(remote.out)["layers"]}
    exact = torch.load(path, weights_only=True)["encoder.weight"].double() if name.endswith(".pt") else None
    if exact is not None:
        assert rows["encoder.weight"]["observed"]["std"] == pytest.approx(exact.std().item(), rel=1e-10)


def test_the_workers_did_the_work(small_pieces, cluster, checkpoint):
    with distributed.Client(cluster) as client:
        before = sum(len(log) for log in client.run(lambda dask_worker: list(dask_worker.state.log)).values())
        fancli.weights.stats.observe_all(fancli.load(checkpoint / "a.pt").layers, cluster=client)
        after = client.run(lambda dask_worker: len(dask_worker.state.log))
    assert len(after) == 2 and sum(after.values()) > before


def test_compare_check_and_diff_on_the_cluster(small_pieces, cluster, checkpoint):
    a, b = checkpoint / "a.pt", checkpoint / "b.safetensors"
    for args in (["compare", a, "--stats", "-f", "json"], ["diff", a, b, "-f", "json"]):
        local = run(*args, "--jobs", "1")
        remote = run(*args, "--cluster", cluster)
        assert local.code == remote.code == 0, remote.err
        assert local.out == remote.out
    result = fancli.check_init(a, config=False, baseline=False, stats=True, cluster=cluster)
    assert result.report.rows[0].observed == fancli.check_init(a, config=False, baseline=False, stats=True,
                                                               jobs=1).report.rows[0].observed


def test_spectral_on_the_cluster_equals_jobs_1(cluster, tmp_path):
    """--spectral's one job per tensor on the workers: the same bits as here, Lanczos-sized tensor included."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(8)
    save_file({"big.weight": torch.randn(600, 520, generator=generator),
               "experts": torch.randn(3, 40, 24, generator=generator)}, str(tmp_path / "s.safetensors"))
    args = ("inspect", tmp_path / "s.safetensors", "--spectral", "-f", "json")
    local, remote = run(*args, "--jobs", "1"), run(*args, "--cluster", cluster)
    assert local.code == remote.code == 0, remote.err
    assert local.out == remote.out and '"spectral_norm"' in local.out


def test_stats_with_spectral_from_http_on_the_cluster_reads_once_and_equals_each_alone(small_pieces, cluster,
                                                                                      checkpoint, monkeypatch):
    """Issue 30's byte economy with --spectral: each tensor's one job on a worker computes its statistics (row
    signals and kurtosis too) from the chunks its matrix is filled from, bit for bit --stats's own."""
    monkeypatch.setenv("FANCLI_OFFLINE", "")  # this test's own server on 127.0.0.1
    path = checkpoint / "a.safetensors"
    data = path.read_bytes()

    def layers(*args) -> list:
        result = run("inspect", *args, "-f", "json")
        assert result.code == 0, result.err
        return json.loads(result.out)["layers"]

    expected = union_of_runs(layers(path, "--stats", "--infer"), layers(path, "--spectral"))
    with HttpFiles() as server:
        server.files["/a.safetensors"] = data
        both = layers(server.url + "/a.safetensors", "--stats", "--infer", "--spectral", "--cluster", cluster)
        assert both == expected
        assert len(data) < server.counter.total <= len(data) + 2 * 128 * 1024


def test_cluster_local_starts_one_on_this_machine(small_pieces, checkpoint, tmp_path, monkeypatch):
    """From a folder holding a `multiprocessing` package (a downloaded model's folder), which Dask's
    `python -c` workers would import first: it never runs, and a relative path still reaches the workers."""
    (tmp_path / "a.safetensors").write_bytes((checkpoint / "a.safetensors").read_bytes())
    (tmp_path / "multiprocessing").mkdir()
    (tmp_path / "multiprocessing" / "__init__.py").write_text(
        "import pathlib\npathlib.Path(__file__).parent.with_name('RAN').touch()\n")
    monkeypatch.chdir(tmp_path)
    local = run("inspect", "a.safetensors", "--stats", "-f", "json", "--jobs", "1")
    remote = run("inspect", "a.safetensors", "--stats", "-f", "json", "--cluster", "local")
    assert not (tmp_path / "RAN").exists()
    assert local.code == remote.code == 0, remote.err
    assert local.out == remote.out


@pytest.fixture()
def fake_scheduler():
    """A port on 127.0.0.1 that accepts connections and then stays silent or answers `reply` (an HTTP server's
    first line, which Dask reads as a frame length of 3 EiB)."""
    import socket
    import threading

    servers = []

    def start(reply: bytes | None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve():
            held = []
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                held.append(conn)
                if reply:
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return f"tcp://127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


def test_a_silent_scheduler_port_is_an_error_after_the_timeout(fake_scheduler, monkeypatch):
    """In a thread, so that a hang fails the test instead of hanging it."""
    import threading

    import fancli.weights.cluster
    from fancli.errors import SettingsError

    monkeypatch.setattr(fancli.weights.cluster, "CONNECT_TIMEOUT", 1)
    address, raised = fake_scheduler(None), []

    def attempt():
        try:
            with fancli.weights.cluster.connect(address):
                pass
        except Exception as error:  # noqa: BLE001 - the test looks at what it was
            raised.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "still waiting for the silent port after 10 s"
    assert isinstance(raised[0], SettingsError) and "no answer in 1 s" in str(raised[0])


def test_a_port_answering_garbage_is_one_line_and_exit_2(fake_scheduler, checkpoint, capfd):
    result = run("inspect", checkpoint / "a.safetensors", "--stats", "--cluster",
                 fake_scheduler(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    import gc

    gc.collect()  # a half-made Client printed tracebacks from its __del__
    assert result.code == 2 and "cannot reach a Dask scheduler" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in capfd.readouterr().err


@contextlib.contextmanager
def served(scheme: str, data: bytes, cluster: str, monkeypatch, tmp_path) -> Iterator[tuple[str, Any]]:
    """`data` as a safetensors file on a server of `scheme` on 127.0.0.1: its source for fancli, and the bytes
    the server has sent so far (a function). S3 is moto's server, its endpoint and dummy credentials in AWS's
    environment variables, here and in the workers (each worker's s3fs reads its own environment); the Hub
    is tests/hub_server.py's, whose address the tasks carry (the pickled filesystem keeps its endpoint)."""
    if scheme == "http":
        with HttpFiles() as server:
            server.files["/a.safetensors"] = data
            yield f"{server.url}/a.safetensors", lambda: server.counter.total
    elif scheme == "s3":
        s3fs = pytest.importorskip("s3fs")
        pytest.importorskip("moto")
        from remote_servers import CountingProxy, moto_s3

        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        with moto_s3() as (host, port), CountingProxy((host, port)) as proxy, distributed.Client(cluster) as client:
            aws["AWS_ENDPOINT_URL"] = proxy.url
            for name, value in aws.items():
                monkeypatch.setenv(name, value)
            s3fs.S3FileSystem.clear_instance_cache()  # a client for this endpoint, not another test's
            s3fs.S3FileSystem().mkdir("cluster")  # moto keeps its buckets per process: not test_remote.py's "models"
            s3fs.S3FileSystem().pipe_file("cluster/a.safetensors", data)
            proxy.counter.reset()
            client.run(lambda: os.environ.update(aws))
            try:
                yield "s3://cluster/a.safetensors", lambda: proxy.counter.total
            finally:
                client.run(lambda: [os.environ.pop(name, None) for name in aws]
                           + [s3fs.S3FileSystem.clear_instance_cache()])
                s3fs.S3FileSystem.clear_instance_cache()
    else:
        pytest.importorskip("huggingface_hub")
        from hub_server import HubServer, use_hub

        (tmp_path / "repo").mkdir()
        (tmp_path / "repo" / "model.safetensors").write_bytes(data)
        with HubServer({"org/cluster": tmp_path / "repo"}) as hub:
            use_hub(monkeypatch, hub.url, tmp_path / "home")
            monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))  # fancli's cache lookup finds nothing
            yield "org/cluster", hub.body_bytes


@pytest.mark.parametrize("scheme", ["http", "s3", "hub"])
def test_a_remote_source_on_the_cluster_is_read_by_the_workers_as_locally(cluster, checkpoint, workers_hf_home,
                                                                          monkeypatch, tmp_path, scheme):
    """Issue 30: each task carries the URL (the Hub's filesystem) and its byte range; the workers fetch their own
    ranges, and the JSON is the local one."""
    monkeypatch.setenv("FANCLI_OFFLINE", "")  # this test's own server on 127.0.0.1

    def layers(result) -> list:
        assert result.code == 0, result.err
        document = json.loads(result.out)
        return [document["layers"], document["summary"]]

    data = (checkpoint / "a.safetensors").read_bytes()
    with served(scheme, data, cluster, monkeypatch, tmp_path) as (source, sent):
        remote = run("inspect", source, "--stats", "--infer", "-f", "json", "--cluster", cluster)
        assert layers(remote) == layers(run("inspect", checkpoint / "a.safetensors", "--stats", "--infer", "-f",
                                            "json"))
        assert len(data) < sent() <= len(data) + 2 * 128 * 1024  # the header, then each tensor's bytes once
    with distributed.Client(cluster) as client:  # the workers' own client for the scheme read the ranges
        modules = client.run(lambda: sorted({"aiohttp", "s3fs", "huggingface_hub"} & set(sys.modules)))
        package = {"http": "aiohttp", "s3": "s3fs", "hub": "huggingface_hub"}[scheme]
        assert any(package in found for found in modules.values())
        if scheme == "hub":  # each worker's huggingface_hub had the test's settings, none of the user's
            def settings() -> tuple:
                from huggingface_hub import constants, get_token

                return constants.HF_HOME, constants.HF_HUB_DISABLE_TELEMETRY, get_token()

            found = client.run(settings)
            assert set(found.values()) == {(str(workers_hf_home), True, None)}
            assert list(workers_hf_home.iterdir()) == []
