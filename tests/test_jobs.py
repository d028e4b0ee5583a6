"""`--jobs N`: weights read in a pool (threads, over fixed pieces) give the very same report as one thread."""

from __future__ import annotations

import pytest
from helpers import REPO, run


@pytest.mark.parametrize("source", ["tinynet_state_dict.pt", "lenet5.safetensors.index.json", "tinynet_bf16.safetensors"])
def test_jobs_1_and_2_give_identical_json(monkeypatch, source):
    import fancli.weights.parallel

    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)  # pool even for a small sample
    path = REPO / "sample_models" / source
    one = run("inspect", path, "--stats", "--infer", "-f", "json", "--jobs", "1")
    two = run("inspect", path, "--stats", "--infer", "-f", "json", "--jobs", "2")
    assert one.code == two.code == 0, one.err + two.err
    assert one.out == two.out and '"observed"' in one.out


def test_the_pool_is_used_and_its_results_are_the_serial_ones(monkeypatch):
    import fancli
    from fancli.weights.stats import observe_all

    monkeypatch.setattr(fancli.weights.parallel, "PARALLEL_BYTES", 0)
    layers = fancli.load(REPO / "sample_models" / "tinynet_state_dict.pt").layers
    seen: list[int] = []
    pooled = observe_all(layers, on_chunk=seen.append, kurtosis=True, structure=True, jobs=3)
    assert pooled == observe_all(layers, kurtosis=True, structure=True, jobs=1)
    assert list(pooled) == [layer.param for layer in layers if layer.data is not None]
    assert sum(seen) > 0


def test_jobs_must_be_positive():
    result = run("inspect", REPO / "sample_models" / "lenet5.pth", "--stats", "--jobs", "0")
    assert result.code == 2 and len(result.err.splitlines()) == 1
