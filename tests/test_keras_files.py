"""Keras 3 weights files, built from bytes: Keras is too heavy for CI, so h5py writes the exact layout Keras
3.15.1's `saving/saving_lib.py` writes (`H5IOStore.make`/`_create_h5_group`: a group `<path>/vars` whose attrs
name the saveable, datasets `0, 1, …` in variable order; `_save_container_state`: a model's layers under
`layers/<naming.to_snake_case(class name)>` made unique by `_get_unique_name` as `dense`, `dense_1`…; an LSTM's
variables under its `cell`), and a `.keras` archive as `saving_lib._save_model_to_fileobj` zips it
(`config.json`, `metadata.json`, `model.weights.h5`). Oracles: Keras' own `compute_fans` (copied), the values
written, their count."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest

from helpers import assert_observed_is, keras_compute_fans, run, run_child

h5py = pytest.importorskip("h5py")


H = 6
#: (group under layers/, Keras class, its variables in creation order); a Sequential of these.
MODEL = [
    ("conv2d", "Conv2D", [(3, 3, 3, 8), (8,)]),
    ("depthwise_conv2d", "DepthwiseConv2D", [(3, 3, 8, 2), (16,)]),
    ("conv2d_transpose", "Conv2DTranspose", [(3, 3, 4, 16), (4,)]),
    ("batch_normalization", "BatchNormalization", [(4,), (4,), (4,), (4,)]),
    ("embedding", "Embedding", [(50, 5)]),
    ("lstm/cell", "LSTM", [(5, 4 * H), (H, 4 * H), (4 * H,)]),
    ("dense", "Dense", [(H, 7), (7,)]),
    ("dense_1", "Dense", [(7, 3), (3,)]),
    ("layer_normalization", "LayerNormalization", [(3,), (3,)]),
    # MultiHeadAttention(num_heads=2, key_dim=4) on E = 3: its EinsumDense sublayers, under their attributes
    ("multi_head_attention/key_dense", "MultiHeadAttention", [(3, 2, 4), (2, 4)]),
    ("multi_head_attention/output_dense", "MultiHeadAttention", [(2, 4, 3), (3,)]),
    ("multi_head_attention/query_dense", "MultiHeadAttention", [(3, 2, 4), (2, 4)]),
    ("multi_head_attention/value_dense", "MultiHeadAttention", [(3, 2, 4), (2, 4)]),
]
#: The logical [in, out] of MultiHeadAttention's kernels: q/k/v [E, H·D], the output [H·D, E].
ATTENTION = {"layers.multi_head_attention.query_dense.vars.0": (3, 8),
             "layers.multi_head_attention.output_dense.vars.0": (8, 3)}


def _write_h5(target, rng) -> dict[str, np.ndarray]:
    """The variables of MODEL as `H5IOStore` writes them (`target` a path or BytesIO)."""
    written: dict[str, np.ndarray] = {}
    with h5py.File(target, "w") as handle:
        handle.create_group("vars").attrs["name"] = "sequential"  # the model's own (empty) entry
        for group, _, shapes in MODEL:
            entry = handle.create_group(f"layers/{group}").create_group("vars")
            entry.attrs["name"] = group.split("/")[0]
            for index, shape in enumerate(shapes):
                values = rng.standard_normal(shape).astype(np.float32)
                entry[str(index)] = values
                written[f"layers.{group.replace('/', '.')}.vars.{index}"] = values
        handle.create_group("optimizer/vars").create_dataset("0", data=np.zeros(1, np.int64))  # iterations
    return written


@pytest.fixture(scope="module")
def weights_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "model.weights.h5"
    return path, _write_h5(path, np.random.default_rng(0))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    buffer = io.BytesIO()
    written = _write_h5(buffer, np.random.default_rng(1))
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {}},
        *({"module": "keras.layers", "class_name": klass,
           "config": {"name": group.split("/")[0], **({"strides": [3, 3]} if klass == "Conv2DTranspose" else {})}}
          for group, klass, _ in MODEL if "attention/" not in group or group.endswith("/key_dense"))]}}
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buffer.getvalue())
    return path, written


def _report(*args) -> dict:
    result = run(*args, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.mark.parametrize("which", ["weights_h5", "archive"])
def test_every_weight_listed_with_keras_and_layer_aware_fans(which, request):
    path, written = request.getfixturevalue(which)
    report = _report("inspect", path, "--all")
    rows = {row["param"]: row for row in report["layers"]}
    # each once (HDF5 indexes a group's links by name: h5py visits them so); the optimizer's are none
    assert len(rows) == len(report["layers"]) and sorted(rows) == sorted(written)
    assert report["summary"]["parameters"] == sum(values.size for values in written.values())
    for name, values in written.items():
        assert math.prod(rows[name]["shape"]) == values.size
        if values.ndim >= 2 and ".multi_head_attention." not in name:
            assert rows[name]["shape"] == list(values.shape)
        if values.ndim >= 2 and ".multi_head_attention." not in name:
            assert (rows[name]["fan_in"], rows[name]["fan_out"]) == keras_compute_fans(values.shape)
    kinds = {name.split(".")[1]: rows[name]["kind"] for name in written}
    assert kinds == {"conv2d": "conv2d", "depthwise_conv2d": "conv2d", "conv2d_transpose": "conv_transpose2d",
                     "batch_normalization": "norm", "embedding": "embedding", "lstm": "lstm", "dense": "linear",
                     "dense_1": "linear", "layer_normalization": "norm", "multi_head_attention": "linear"}

    def effective(name):
        row = rows[name]
        return (row.get("effective_fan_in") or row["fan_in"],
                row.get("effective_fan_out") or row["fan_out"])

    # the layer-aware fans: what each output sums and each input feeds
    assert effective("layers.depthwise_conv2d.vars.0") == (3 * 3, 3 * 3 * 2)  # one channel's taps; mult outputs
    transpose = rows["layers.conv2d_transpose.vars.0"]  # [kh, kw, out 4, in 16]: each input feeds out·k outputs
    assert transpose["effective_fan_out"] == 4 * 9
    if which == "archive":  # its config.json's strides [3, 3]: each output sums 16·9 taps over 3·3 positions
        assert transpose["effective_fan_in"] == 16 * 9 / 9
    else:
        assert transpose["effective_fan_in"] is None and any("unknown stride" in note for note in transpose["notes"])
    assert effective("layers.lstm.cell.vars.0") == (5, H) and effective("layers.lstm.cell.vars.1") == (H, H)
    assert effective("layers.dense.vars.0") == (H, 7) and effective("layers.conv2d.vars.0") == (27, 72)
    for name, (inputs, outputs) in ATTENTION.items():  # EinsumDense gives compute_fans its einsum's axes
        assert rows[name]["shape"] == [inputs, outputs] and effective(name) == (inputs, outputs)
        axes = ((0,), (1, 2)) if "query" in name else ((0, 1), (2,))
        assert (rows[name]["fan_in"], rows[name]["fan_out"]) == keras_compute_fans(written[name].shape, *axes)
    assert rows["layers.multi_head_attention.query_dense.vars.1"]["shape"] == [8]  # a bias [H, D]: no fans
    assert report["source"]["format"] == ("keras-h5" if which == "weights_h5" else "keras")


def test_stats_are_the_values_written(weights_h5, archive):
    for path, written in (weights_h5, archive):
        rows = {row["param"]: row for row in _report("inspect", path, "--stats", "--all")["layers"]}
        for name, values in written.items():
            assert_observed_is(rows[name]["observed"], values)


def test_default_recipe_is_keras(weights_h5):
    rows = {row["param"]: row for row in _report("inspect", weights_h5[0], "--all")["layers"]}
    kernel = rows["layers.dense_1.vars.0"]
    fan_in, fan_out = keras_compute_fans((7, 3))
    assert kernel["bound"] == pytest.approx(math.sqrt(6.0 / (fan_in + fan_out)))


def test_truncated_file_is_one_line(weights_h5, archive, tmp_path):
    for path in (weights_h5[0], archive[0]):
        raw = path.read_bytes()
        for size in (20, len(raw) // 2, len(raw) - 50):
            cut = tmp_path / f"cut{size}{''.join(path.suffixes)}"
            cut.write_bytes(raw[:size])
            result = run("inspect", cut)
            assert result.code == 2, result.err
            assert result.err.count("\n") == 1 and str(cut) in result.err, result.err


def test_a_zip_named_keras_without_weights_is_one_line(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
    result = run("inspect", path)
    assert result.code == 2 and result.err.count("\n") == 1 and "model.weights.h5" in result.err, result.err


def test_without_h5py_is_one_line_and_keras_never_imported(weights_h5):
    result = run_child(["inspect", weights_h5[0]], code=2, hidden=("h5py",))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install h5py" in result.stderr
    result = run_child(["inspect", weights_h5[0], "--stats"], absent=("torch", "keras", "tensorflow", "jax"))
    assert result.returncode == 0, result.stderr


def test_legacy_h5_is_read_by_its_layer_names(tmp_path):
    """Keras 2's `legacy/saving/legacy_h5_format.py` `save_model_to_hdf5`: `model_weights` with attrs `layer_names`,
    each layer's group with `weight_names`, datasets `<layer>/<layer>/<name>:0`; the optimizer's beside."""
    path = tmp_path / "model.h5"
    rng = np.random.default_rng(2)
    written = {"dense/kernel": rng.standard_normal((4, 5)).astype(np.float32),
               "dense/bias": rng.standard_normal(5).astype(np.float32),
               "depthwise_conv2d/depthwise_kernel": rng.standard_normal((3, 3, 5, 2)).astype(np.float32)}
    with h5py.File(path, "w") as handle:
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = [b"dense", b"depthwise_conv2d"]
        for key, values in written.items():
            layer, name = key.split("/")
            weights.require_group(layer).require_group(layer).create_dataset(f"{name}:0", data=values)
        handle.create_group("optimizer_weights").create_dataset("iter:0", data=np.zeros(1))
    report = _report("inspect", path, "--all", "--stats")
    rows = {row["param"]: row for row in report["layers"]}
    assert sorted(rows) == sorted(f"layers.{key.split('/')[0]}.vars.{key.split('/')[1]}" for key in written)
    assert report["summary"]["parameters"] == sum(values.size for values in written.values())
    depthwise = rows["layers.depthwise_conv2d.vars.depthwise_kernel"]
    assert (depthwise["fan_in"], depthwise["fan_out"]) == keras_compute_fans((3, 3, 5, 2))
    assert depthwise["effective_fan_in"] == 9  # each output channel sees one input channel's 3×3 taps
    observed = rows["layers.dense.vars.kernel"]["observed"]
    assert observed["mean"] == pytest.approx(written["dense/kernel"].astype(np.float64).mean(), rel=1e-6)


def test_a_big_endian_dataset_is_not_read_as_little_endian(tmp_path):
    path = tmp_path / "big.weights.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("layers/dense/vars").create_dataset("0", data=np.full((4, 3), 1.5, dtype=">f4"))
    row = _report("inspect", path, "--stats")["layers"][0]
    assert row["shape"] == [4, 3]
    assert row.get("observed") is None or row["observed"]["mean"] == pytest.approx(1.5)


def test_the_keras_recipe_reads_the_files_own_variable_names(weights_h5):
    """A `.weights.h5` names variables by index (`vars/0`, `vars/1`): Keras' defaults (keras 3.15.1
    `layers/core/embedding.py` `embeddings_initializer="uniform"` = RandomUniform(-0.05, 0.05); Dense
    `bias_initializer="zeros"`; BatchNormalization gamma "ones", beta/moving_mean "zeros", moving_variance
    "ones") are found on them."""
    rows = {row["param"]: row for row in _report("inspect", weights_h5[0], "--all")["layers"]}
    assert rows["layers.embedding.vars.0"]["bound"] == 0.05 and rows["layers.embedding.vars.0"]["recipe"] == "keras"
    assert (rows["layers.dense.vars.1"]["distribution"], rows["layers.dense.vars.1"]["constant"]) == ("constant", 0.0)
    assert rows["layers.batch_normalization.vars.0"]["constant"] == 1.0
    assert rows["layers.batch_normalization.vars.1"]["constant"] == 0.0
    assert rows["layers.batch_normalization.vars.3"]["constant"] == 1.0


def test_header_names_the_keras_convention(weights_h5):
    """The fans columns are Keras' `compute_fans` (not torch's): the table's and the Markdown's header say so."""
    for fmt in ("table", "markdown"):
        result = run("inspect", weights_h5[0], "--format", fmt)
        assert result.code == 0, result.err
        assert "fans: keras" in result.out.splitlines()[0] and "fans: torch" not in result.out


@pytest.mark.parametrize("which", ["weights_h5", "archive"])
def test_rows_in_the_order_keras_wrote_the_layers(which, request):
    """`saving_lib._save_container_state` writes a model's layers in `model.layers` order (MODEL's, here): the rows
    follow it, not HDF5's order of names (batch_normalization, conv2d, …); a layer's variables 0, 1, 2…"""
    rows = [row["param"] for row in _report("inspect", request.getfixturevalue(which)[0], "--all")["layers"]]
    layers = list(dict.fromkeys(param.split(".")[1] for param in rows))
    assert layers == list(dict.fromkeys(group.split("/")[0] for group, _, _ in MODEL))
    assert [param for param in rows if param.startswith("layers.batch_normalization.")] == [
        f"layers.batch_normalization.vars.{index}" for index in range(4)]


def test_lstm_gates_are_along_keras_last_dim(weights_h5):
    """keras 3.15.1 `LSTMCell.call`: `z = ops.matmul(inputs, self.kernel) + ops.matmul(h, self.recurrent_kernel)`,
    then `ops.split(z, 4, axis=1)`: the gates i, f, c, o lie along dim 1 of the kernel [in, 4H] and of the
    recurrent kernel [H, 4H]; no note may send a reader to dim 0, the input's."""
    rows = {row["param"]: row for row in _report("inspect", weights_h5[0], "--all")["layers"]}
    for name in ("layers.lstm.cell.vars.0", "layers.lstm.cell.vars.1"):
        notes = rows[name]["notes"]
        assert not any("dim 0" in note for note in notes), notes
        assert any("4 gates stacked along dim 1" in note for note in notes), notes
        assert rows[name]["effective_fan_out"] == H  # one gate's units


def test_a_damaged_weights_file_is_one_line_never_a_traceback(tmp_path):
    """8 bytes overwritten at every 397th offset of a written file (and where a name is stored): each run reads it or says in one line what is
    wrong (h5py raises RuntimeError, KeyError… from deep in a damaged object header)."""
    good = tmp_path / "good.weights.h5"
    _write_h5(good, np.random.default_rng(0))
    data = good.read_bytes()
    codes = set()
    for offset in [*range(0, len(data) - 8, 397), 23546]:
        bad = tmp_path / f"bad{offset}.weights.h5"
        bad.write_bytes(data[:offset] + b"\xff" * 8 + data[offset + 8:])
        result = run("inspect", bad, "--stats")
        codes.add(result.code)
        assert result.code in (0, 2), (offset, result.err)
        assert result.code == 0 or len(result.err.strip().splitlines()) == 1, (offset, result.err)
    assert 2 in codes


def test_a_variable_named_by_a_non_ascii_digit_is_a_name(tmp_path):
    """`'²'.isdigit()` is True but `int('²')` fails: such a variable is read as a name, not an index."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "odd.weights.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("vars").attrs["name"] = "sequential"
        entry = handle.create_group("layers/dense").create_group("vars")
        entry["0"], entry["²"] = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    result = run("inspect", path, "--all", "-f", "json")
    assert result.code == 0, result.err
    assert [row["param"] for row in json.loads(result.out)["layers"]] == ["layers.dense.vars.0", "layers.dense.vars.²"]


def test_a_grouped_conv_takes_its_groups_from_the_keras_config(tmp_path):
    """Conv2D(filters=8, groups=2) on 8 channels: kernel [3, 3, 4, 8]; each output channel sees in/groups of the
    inputs, each input feeds out/groups of the outputs (the effective fan_out), as torch's grouped conv; its
    ‖W‖₂ is the block-diagonal operator's, the largest of the two groups' [k·in/g, out/g] blocks."""
    kernel = np.random.default_rng(0).standard_normal((3, 3, 4, 8)).astype(np.float32)
    buffer = io.BytesIO()
    h5py = pytest.importorskip("h5py")
    with h5py.File(buffer, "w") as handle:
        handle.create_group("vars").attrs["name"] = "sequential"
        entry = handle.create_group("layers/conv2d").create_group("vars")
        entry["0"], entry["1"] = kernel, np.zeros(8, np.float32)
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"name": "conv2d", "filters": 8, "groups": 2}}]}}
    path = tmp_path / "grouped.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buffer.getvalue())
    (row, _) = _report("inspect", path, "--spectral", "--all", "--fans", "effective")["layers"]
    assert row["structure"]["groups"] == 2
    assert (row["fan_in"], row["effective_fan_out"]) == (4 * 9, 8 // 2 * 9)
    blocks = [np.linalg.norm(kernel[..., g * 4:(g + 1) * 4].reshape(36, 4).astype(np.float64), 2) for g in range(2)]
    assert row["spectral_norm"] == pytest.approx(max(blocks), rel=1e-6)
