"""Flax's own writer as the oracle: `flax.serialization.to_bytes` of a linen model's variables; JAX fans from
`jax._src.nn.initializers._compute_fans` on the very shape each module hands its initializer (recorded: a
DenseGeneral's flattened `[prod(in), prod(out)]`), totals and statistics from the arrays Flax made. Skipped
where jax/flax are not installed (they are in no extra: ~600 MB, ~2 s to import)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
serialization = pytest.importorskip("flax.serialization")
from jax._src.nn.initializers import _compute_fans  # noqa: E402

jnp = jax.numpy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every variable drawn by numpy (distinct values tell rows apart; JAX's own RNG would compile for seconds),
    each initializer's shape recorded: the shape linen hands it is what JAX's fans are read from."""
    made: list[tuple[tuple[int, ...], np.ndarray]] = []  # (the shape an initializer was given, what it drew)
    rng = np.random.default_rng(0)

    def recorded(key, shape, dtype=jnp.float32):
        values = rng.standard_normal(shape).astype(np.float32)
        made.append((tuple(shape), values))
        return jnp.asarray(values)

    kw = {"kernel_init": recorded, "bias_init": recorded}

    class Model(nn.Module):
        @nn.compact
        def __call__(self, image, tokens):
            y = nn.Conv(4, (3, 3), **kw)(image)
            y = nn.ConvTranspose(5, (3, 3), strides=(2, 2), **kw)(y)
            y = y.reshape(y.shape[0], -1, 5)
            y = nn.DenseGeneral((2, 3), **kw)(y)
            y = nn.DenseGeneral(6, axis=(-2, -1), **kw)(y)
            y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=6, **kw)(y, y)
            y = nn.Dense(7, **kw)(nn.LayerNorm(scale_init=recorded, bias_init=recorded)(y))
            return y, nn.Embed(20, 6, embedding_init=recorded)(tokens)

    variables = Model().lazy_init(jax.random.key(0), jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32),
                                  jax.ShapeDtypeStruct((1, 4), jnp.int32))  # the params, no forward pass
    path = tmp_path_factory.mktemp("flax_real") / "model.msgpack"
    path.write_bytes(serialization.to_bytes(variables))
    params = {"/".join(str(getattr(part, "key", part)) for part in where): np.asarray(leaf)
              for where, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
    return path, params, made


def test_flax_file_against_jax(saved):
    path, params, made = saved
    result = run("inspect", path, "--all", "--stats", "--format", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    rows = {row["param"].replace(".", "/"): row for row in report["layers"]}
    assert sorted(rows) == sorted(params) and len(rows) == len(report["layers"])  # each once
    assert report["summary"]["parameters"] == sum(values.size for values in params.values())
    for name, values in params.items():
        row = rows[name]
        assert row["observed"]["count"] == values.size
        assert row["observed"]["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-5, abs=1e-8)
        if name.endswith("bias"):
            assert len(row["shape"]) == 1 and row.get("fan_in") is None  # a DenseGeneral's [H, D] too
            continue
        drawn = [shape for shape, made_values in made if made_values.size == values.size
                 and np.array_equal(made_values.reshape(values.shape), values)
                 ] if name.endswith("kernel") else []
        if not name.endswith("kernel"):
            continue
        (shape,) = drawn
        fans = (row["fan_in"], row["fan_out"])
        assert fans == _compute_fans(shape), name  # JAX's, on the shape its initializer saw
        assert row["shape"] == list(shape) or (values.ndim >= 3 and "Conv" in name)
        if "ConvTranspose" in name:  # [kh, kw, in 4, out 5]: each input feeds out·k outputs; fan_in needs the stride
            assert row["kind"] == "conv_transpose2d"
            assert (row.get("effective_fan_out") or row["fan_out"]) == 5 * 9
            assert "effective_fan_in" in row and row["effective_fan_in"] is None  # unknown: no stride in the file
            assert row["fan_in"] == shape[-2] * 9 and any("whatever the stride" in note for note in row["notes"])
        else:
            assert "effective_fan_in" not in row and "effective_fan_out" not in row  # the same
        assert row["std"] == pytest.approx(1 / np.sqrt(_compute_fans(shape)[0]))  # lecun_normal's, the recipe's
    embed = rows["Embed_0/embedding"]  # variance_scaling(1, fan_in, normal, out_axis=0): JAX's fan_in
    assert embed["std"] == pytest.approx(1 / np.sqrt(_compute_fans((20, 6), -2, 0)[0]))


def test_jax_fans_and_fan_geo_avg_are_jaxs():
    """fancli's `jax_fans` is `_compute_fans` with its axes; mode fan_geo_avg divides by √(fan_in·fan_out) as
    `jax.nn.initializers.variance_scaling` does (its draws' std, 40 000 of them, within 2%)."""
    import fancli
    from fancli.analysis.schemes import variance_scaling

    for shape, axes in (((3, 3, 4, 5), {}), ((6, 2, 3), {"in_axis": 0, "out_axis": (1, 2)}),
                        ((4, 5, 6, 7), {"in_axis": 1, "out_axis": 3, "batch_axis": 0}), ((20, 6), {"out_axis": 0})):
        assert fancli.jax_fans(shape, **axes) == _compute_fans(shape, **axes)
    shape = (200, 200)
    drawn = nn.initializers.variance_scaling(2.0, "fan_geo_avg", "normal", in_axis=0, out_axis=1)(
        jax.random.key(1), shape)
    fan_in, fan_out = fancli.jax_fans(shape, in_axis=0, out_axis=1)
    assert variance_scaling(2.0 ** 0.5, fan_in, fan_out, "fan_geo_avg", "normal").std == pytest.approx(
        float(np.asarray(drawn).std()), rel=0.02)


def test_spec_axes_std_is_jax_variance_scalings(tmp_path, monkeypatch):
    """A spec's `axes: {in, out, batch}` with mode fan_geo_avg: fancli's std is the one JAX's own
    `variance_scaling(1, "fan_geo_avg", "normal", in_axis=1, out_axis=3, batch_axis=0)` multiplies its draws by
    (its `random.normal` replaced by ones, so each value it returns is that std, with no sampling to compile)."""
    from types import SimpleNamespace

    from jax._src.nn import initializers

    shape = (4, 5, 6, 7)
    spec = tmp_path / "axes.yaml"
    spec.write_text(f"layers:\n  - {{shape: {list(shape)}, axes: {{in: 1, out: 3, batch: 0}}}}\n")
    result = run("inspect", spec, "--scheme", "lecun_normal", "--mode", "fan_geo_avg", "--format", "json")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["layers"]
    assert (row["fan_in"], row["fan_out"]) == _compute_fans(shape, 1, 3, 0)
    ones = SimpleNamespace(normal=lambda key, shape, dtype, out_sharding=None: jnp.ones(shape, dtype))
    monkeypatch.setattr(initializers, "random", ones)
    drawn = np.asarray(nn.initializers.variance_scaling(1.0, "fan_geo_avg", "normal", in_axis=1, out_axis=3,
                                                        batch_axis=0)(None, shape))
    assert np.ptp(drawn) == 0 and row["std"] == pytest.approx(float(drawn.flat[0]), rel=1e-6)


def test_einsum_std_is_its_lecun_normals(tmp_path):
    """linen `Einsum` hands its kernel_init the stored shape: fancli's fans and std are JAX's `_compute_fans` of the
    shape Flax gave the initializer (recorded), the layer's own fans unknown (its einsum_str is not in the file)."""
    seen = []

    def recorded(key, shape, dtype=jnp.float32):
        seen.append(tuple(shape))
        return jnp.asarray(np.random.default_rng(5).standard_normal(shape).astype(np.float32))

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Einsum((5, 6, 7), "abc,cde->abde", kernel_init=recorded, use_bias=False)(x)

    variables = Model().lazy_init(jax.random.key(0), jax.ShapeDtypeStruct((3, 4, 5), jnp.float32))
    path = tmp_path / "einsum.msgpack"
    path.write_bytes(serialization.to_bytes(variables))
    result = run("inspect", path, "--all", "--format", "json")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["layers"]
    (shape,) = seen
    assert (row["fan_in"], row["fan_out"]) == _compute_fans(shape)
    assert row["std"] == pytest.approx(1 / np.sqrt(_compute_fans(shape)[0]))
    assert row["effective_fan_in"] is None and row["effective_fan_out"] is None
