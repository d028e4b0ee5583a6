"""Flax msgpack checkpoints, built from bytes: JAX and Flax are too heavy for CI, so msgpack writes what Flax
0.12.8's `serialization.to_bytes` writes (`msgpack_serialize(to_state_dict(variables))`: nested maps, each
array the extension type 1 `_MsgpackExtType.ndarray` of `_ndarray_to_bytes`, the msgpack of (shape, dtype
name, C-order bytes)); modules named as linen names them (`Dense_0`, `Conv_1`). Oracles: JAX 0.10.2's
`nn/initializers.py` `_compute_fans` (copied, with its axes), the values written, their count."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import jax_compute_fans as _compute_fans
from helpers import assert_observed_is, run, run_child

msgpack = pytest.importorskip("msgpack")


def _ndarray(values: np.ndarray) -> msgpack.ExtType:
    """flax.serialization `_msgpack_ext_pack` of an ndarray."""
    return msgpack.ExtType(1, msgpack.packb((values.shape, values.dtype.name, values.tobytes("C")), use_bin_type=True))


SHAPES = {
    "Conv_0": {"kernel": (3, 3, 3, 8), "bias": (8,)},
    "BatchNorm_0": {"scale": (8,), "bias": (8,)},
    "ConvTranspose_0": {"kernel": (3, 3, 8, 4), "bias": (4,)},
    "Embed_0": {"embedding": (40, 6)},
    "DenseGeneral_0": {"kernel": (6, 2, 3), "bias": (2, 3)},
    "Dense_0": {"kernel": (6, 5), "bias": (5,)},
    "LayerNorm_0": {"scale": (5,), "bias": (5,)},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    written, params = {}, {}
    for module, variables in SHAPES.items():
        params[module] = {}
        for leaf, shape in variables.items():
            values = rng.standard_normal(shape).astype(np.float32)
            params[module][leaf] = _ndarray(values)
            written[f"{module}.{leaf}"] = values
    state = {"params": params, "batch_stats": {"BatchNorm_0": {"mean": _ndarray(np.zeros(8, np.float32)),
                                                               "var": _ndarray(np.ones(8, np.float32))}}}
    path = tmp_path_factory.mktemp("flax") / "model.msgpack"
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    return path, written


def _report(*args) -> dict:
    result = run(*args, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_every_param_listed_with_jax_fans(checkpoint):
    path, written = checkpoint
    report = _report("inspect", path, "--all")
    rows = {row["param"]: row for row in report["layers"]}
    assert list(rows) == list(written)  # params only, in the map's order; batch_stats are no parameters
    assert report["summary"]["parameters"] == sum(values.size for values in written.values())
    assert report["source"]["format"] == "flax"
    flat = {"DenseGeneral_0.kernel": (6, 6)}  # what its init sees (below)
    for name, values in written.items():  # a DenseGeneral's bias [2, 3] is a bias: listed flat, no fans
        shape = flat.get(name, values.shape)
        assert rows[name]["shape"] == ([values.size] if name.endswith("bias") else list(shape))
        if name.endswith("kernel") and values.ndim >= 2 or name.endswith("embedding"):
            assert (rows[name]["fan_in"], rows[name]["fan_out"]) == _compute_fans(shape)
    kinds = {name: rows[name]["kind"] for name in written if name.endswith(("kernel", "embedding", "scale"))}
    assert kinds == {"Conv_0.kernel": "conv2d", "BatchNorm_0.scale": "norm", "ConvTranspose_0.kernel":
                     "conv_transpose2d", "Embed_0.embedding": "embedding", "DenseGeneral_0.kernel": "linear",
                     "Dense_0.kernel": "linear", "LayerNorm_0.scale": "norm"}
    # DenseGeneral [6, (2, 3)]: its init sees [6, 6] (flax 0.12.8 `kernel_init_wrap`), its bias [2, 3] the features
    general = rows["DenseGeneral_0.kernel"]
    assert _compute_fans((6, 2, 3), in_axis=0, out_axis=(1, 2)) == (6, 6)
    assert "effective_fan_in" not in general and general["std"] == pytest.approx(1 / math.sqrt(6))


@pytest.mark.parametrize("kernel,bias,flat", [
    ((2, 3, 6), (6,), (6, 6)),  # DenseGeneral(6, axis=(-2, -1)): in (2, 3)
    ((4, 5, 6), (4, 6), (20, 6)),  # batch_dims=(0,): kernel batch + in + features, bias batch + features
    ((3, 3, 4), (3, 4), None),  # features (3, 4), or batch 3 and features 4: [3, 12] or [9, 4]
    ((6, 2, 3), None, None),  # use_bias=False: the split is in no file
])
def test_dense_general_split_by_its_bias(tmp_path, kernel, bias, flat):
    """linen DenseGeneral hands its init [prod(batch)·prod(in), prod(features)] (`kernel_init_wrap`) and makes its
    bias batch + features: where the bias reads one way, the row is that [in, out] with JAX's fans of it (copied
    `_compute_fans`) and lecun_normal's std; else the fans stay unknown."""
    module = {"kernel": _ndarray(np.ones(kernel, np.float32))}
    if bias:
        module["bias"] = _ndarray(np.zeros(bias, np.float32))
    path = tmp_path / "dense.msgpack"
    path.write_bytes(msgpack.packb({"params": {"DenseGeneral_0": module}}, use_bin_type=True))
    row = {row["param"]: row for row in _report("inspect", path, "--all")["layers"]}["DenseGeneral_0.kernel"]
    if flat:
        assert row["shape"] == list(flat) and (row["fan_in"], row["fan_out"]) == _compute_fans(flat)
        assert row["std"] == pytest.approx(1 / math.sqrt(_compute_fans(flat)[0]))
    else:
        assert row["shape"] == list(kernel) and row["effective_fan_in"] is None and row["std"] is None


def test_layer_aware_fans_of_attention_and_conv_transpose(checkpoint, tmp_path):
    """flax 0.12.8 `linen/attention.py`: MultiHeadDotProductAttention's query/key/value are
    DenseGeneral(features=(H, D)) kernels [E, H, D], its out DenseGeneral(axis=(-2, -1)) [H, D, E]; DenseGeneral
    hands its initializer the flattened [prod(in), prod(out)] (`kernel_init_wrap`). ConvTranspose's kernel is
    [kh, kw, in, out]: each input feeds out·k outputs, each output sums in·k/stride² taps."""
    rng = np.random.default_rng(3)
    heads = {name: {"kernel": _ndarray(rng.standard_normal(shape).astype(np.float32)),
                    "bias": _ndarray(rng.standard_normal(shape[-2:] if name != "out" else shape[-1:]).astype(
                        np.float32))}
             for name, shape in (("query", (6, 2, 3)), ("key", (6, 2, 3)), ("value", (6, 2, 3)), ("out", (2, 3, 6)))}
    path = tmp_path / "attention.msgpack"
    path.write_bytes(msgpack.packb({"params": {"MultiHeadDotProductAttention_0": heads}}, use_bin_type=True))
    rows = {row["param"]: row for row in _report("inspect", path, "--all")["layers"]}
    for name, flat in (("query", (6, 6)), ("out", (6, 6))):
        row = rows[f"MultiHeadDotProductAttention_0.{name}.kernel"]
        assert row["kind"] == "linear" and row["shape"] == list(flat)
        assert (row["fan_in"], row["fan_out"]) == _compute_fans(flat)  # what its initializer sees
        assert "effective_fan_in" not in row and "effective_fan_out" not in row  # the same
    assert rows["MultiHeadDotProductAttention_0.query.bias"]["shape"] == [6]
    transpose = {row["param"]: row for row in _report("inspect", checkpoint[0], "--all")["layers"]}[
        "ConvTranspose_0.kernel"]  # [3, 3, in 8, out 4]
    assert (transpose["fan_in"], transpose["fan_out"]) == _compute_fans((3, 3, 8, 4))
    assert transpose["fan_out"] == (transpose["effective_fan_out"] or 0) == 4 * 9  # JAX's is the layer's
    assert "effective_fan_in" in transpose and transpose["effective_fan_in"] is None  # unknown: the stride


def test_stats_are_the_values_written(checkpoint):
    path, written = checkpoint
    rows = {row["param"]: row for row in _report("inspect", path, "--stats", "--all")["layers"]}
    for name, values in written.items():
        assert_observed_is(rows[name]["observed"], values)


def test_default_recipe_is_flax_lecun_normal(checkpoint):
    rows = {row["param"]: row for row in _report("inspect", checkpoint[0], "--all")["layers"]}
    fan_in, _ = _compute_fans((3, 3, 3, 8))
    assert rows["Conv_0.kernel"]["std"] == pytest.approx(1 / math.sqrt(fan_in))


def test_truncated_file_is_one_line(checkpoint, tmp_path):
    raw = checkpoint[0].read_bytes()
    for size in (1, len(raw) // 2, len(raw) - 3):
        cut = tmp_path / f"cut{size}.msgpack"
        cut.write_bytes(raw[:size])
        result = run("inspect", cut)
        assert result.code == 2, result.err
        assert result.err.count("\n") == 1 and f"{cut}: not a readable Flax msgpack checkpoint" in result.err


def test_without_msgpack_is_one_line(checkpoint):
    result = run_child(["inspect", checkpoint[0]], code=2, hidden=("msgpack",))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install msgpack" in result.stderr


def test_header_names_the_jax_convention(checkpoint):
    """The fans columns are JAX's `_compute_fans` (not torch's): the table's and the Markdown's header say so."""
    for fmt in ("table", "markdown"):
        result = run("inspect", checkpoint[0], "--format", fmt)
        assert result.code == 0, result.err
        assert "fans: jax" in result.out.splitlines()[0] and "fans: torch" not in result.out


def test_einsum_kernel_has_jaxs_fans_of_its_stored_shape(tmp_path):
    """flax 0.12.8 linen `Einsum` hands its kernel_init the stored shape (`self.param('kernel', self.kernel_init,
    self.shape)`, unflattened): lecun_normal's fan_in is JAX's `_compute_fans` of it, so its std is known; which
    dims the layer contracts, its einsum_str says, not the file: the layer-aware fans stay unknown."""
    path = tmp_path / "einsum.msgpack"
    kernel = np.random.default_rng(4).standard_normal((5, 6, 7)).astype(np.float32)
    path.write_bytes(msgpack.packb({"params": {"Einsum_0": {"kernel": _ndarray(kernel)}}}, use_bin_type=True))
    (row,) = _report("inspect", path, "--all")["layers"]
    fan_in, fan_out = _compute_fans((5, 6, 7))
    assert (row["fan_in"], row["fan_out"]) == (fan_in, fan_out)
    assert row["std"] == pytest.approx(1 / math.sqrt(fan_in))
    assert row["effective_fan_in"] is None and row["effective_fan_out"] is None
    assert "fans: jax" in run("inspect", path).out.splitlines()[0]


def test_spectral_norm_of_a_jax_conv_kernel_is_numpys(checkpoint):
    """A JAX conv kernel [kh, kw, in, out] is the matrix [k·in, out] (torch's [out, in·k] transposed): ‖W‖₂ is
    numpy's of that, not of [kh, kw·in·out]."""
    pytest.importorskip("scipy")
    path, written = checkpoint
    rows = {row["param"]: row for row in _report("inspect", path, "--spectral", "--all")["layers"]}
    values = written["Conv_0.kernel"].astype(np.float64)
    assert rows["Conv_0.kernel"]["spectral_norm"] == pytest.approx(
        np.linalg.norm(values.reshape(-1, values.shape[-1]), 2), rel=1e-5)
