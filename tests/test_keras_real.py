"""Keras 3's own writers as the oracle: a model saved with `model.save` (`.keras`, legacy `.h5`) and
`save_weights` (`.weights.h5`) on the torch backend; fans from Keras' own `compute_fans` with the axes its
layers give it (EinsumDense's einsum axes), layer-aware fans from the layer's Jacobian (torch autograd through
the Keras layer), totals from `count_params`, statistics from the variables Keras holds. Skipped where keras
is not installed (its import costs seconds: it is in no extra)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import run

pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("these tests build Keras layers on the torch backend", allow_module_level=True)
torch = pytest.importorskip("torch")
from keras.src.initializers.random_initializers import compute_fans  # noqa: E402
from keras.src.layers.core.einsum_dense import _analyze_einsum_string  # noqa: E402

FILES = ("model.keras", "model.weights.h5", "model.h5")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    image, tokens = keras.Input((6, 6, 3)), keras.Input((4,), dtype="int32")
    x = layers.Conv2D(4, 3, padding="same")(image)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = layers.Conv2DTranspose(5, 3, strides=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Reshape((-1, 5))(x)
    x = layers.LSTM(6, return_sequences=True)(x)
    x = layers.MultiHeadAttention(num_heads=2, key_dim=3)(x, x)
    x = layers.Dense(7)(x)
    model = keras.Model([image, tokens], [x, layers.Embedding(20, 6)(tokens)])
    for seed, variable in enumerate(model.weights):  # the BatchNormalization's and biases' constants distinct too
        variable.assign(np.random.default_rng(seed).standard_normal(variable.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("keras_real")
    model.save(folder / "model.keras")
    model.save_weights(folder / "model.weights.h5")
    model.save(folder / "model.h5")
    return folder, model


def _rows(path) -> tuple[dict, list[dict]]:
    result = run("inspect", path, "--all", "--stats", "--format", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    return report, report["layers"]


def _variable_of(row, model):
    """The Keras variable whose values the row's statistics are (each variable's are distinct)."""
    found = [(layer, variable) for layer in _leaf_layers(model) for variable in layer.weights
             if np.prod(variable.shape) == row["observed"]["count"]
             and np.isclose(float(np.mean(variable.numpy())), row["observed"]["mean"], rtol=1e-5, atol=1e-7)]
    assert len(found) == 1, (row["param"], found)
    return found[0]


def _leaf_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False) if layer._trainable_variables
            or layer._non_trainable_variables]


def _jacobian_fans(layer, shape) -> tuple[float, float]:
    """(fan_in, fan_out) off the layer's Jacobian: how many inputs each output reads and how many outputs each
    input feeds, averaged over the inner half of the spatial positions (no padding there; an even span, so a
    stride's pattern is averaged whole)."""
    inputs = torch.randn(shape)
    jacobian = torch.autograd.functional.jacobian(lambda value: layer(value), inputs)
    out_shape = jacobian.shape[: jacobian.dim() - len(shape)]
    nonzero = (jacobian != 0).reshape(int(np.prod(out_shape)), int(np.prod(shape)))

    def inner(dims):
        keep = np.ones(dims, bool)
        for axis, size in enumerate(dims[1:-1], start=1):
            if size < 4:  # not a spatial axis: all kept
                continue
            lo = size // 4
            hi = size - lo - (size - 2 * lo) % 2
            mask = np.zeros(size, bool)
            mask[lo:hi] = True
            keep &= mask.reshape([-1 if i == axis else 1 for i in range(len(dims))])
        return torch.from_numpy(keep.reshape(-1))

    rows, columns = inner(tuple(out_shape)), inner(tuple(shape))
    return (float(nonzero[rows].sum(1).double().mean()), float(nonzero[:, columns].sum(0).double().mean()))


def _einsum_input(layer) -> tuple[int, ...]:
    """An input shape the EinsumDense takes: its kernel's sizes on the letters they share, 1 elsewhere."""
    inputs, rest = layer.equation.split(",")
    sizes = dict(zip(rest.split("->")[0], layer.kernel.shape))
    return tuple(sizes.get(letter, 1) for letter in inputs)


def _keras_fans(layer, variable) -> tuple[int, int]:
    """The fans Keras' initializer reads: `compute_fans` of the shape, with an EinsumDense's einsum axes."""
    if isinstance(layer, keras.layers.EinsumDense) and variable is layer.kernel:
        _, _, _, input_axes, output_axes = _analyze_einsum_string(layer.equation, layer.bias_axes,
                                                                  _einsum_input(layer), layer.partial_output_shape)
        return compute_fans(variable.shape, input_axes, output_axes)
    return compute_fans(variable.shape)


@pytest.mark.parametrize("name", FILES)
def test_files_keras_wrote(saved, name):
    folder, model = saved
    report, rows = _rows(folder / name)
    assert len({row["param"] for row in rows}) == len(rows)
    assert report["summary"]["parameters"] == model.count_params()
    seen = []
    for row in rows:
        layer, variable = _variable_of(row, model)
        values = variable.numpy().astype(np.float64)
        seen.append(variable.path)
        assert row["observed"]["std"] == pytest.approx(values.std(ddof=1), rel=1e-5)
        if len(variable.shape) < 2 or variable.name == "bias":  # an attention bias [H, D] too: no fans
            assert row.get("fan_in") is None and len(row["shape"]) == 1
            continue
        assert (row["fan_in"], row["fan_out"]) == _keras_fans(layer, variable), row["param"]
        effective = (row.get("effective_fan_in") or row["fan_in"], row.get("effective_fan_out") or row["fan_out"])
        assert row["kind"] == _KINDS[type(layer).__name__], row["param"]
        if isinstance(layer, keras.layers.LSTMCell):
            assert effective == (variable.shape[0], layer.units)  # one gate's: each of 4H outputs reads `in`
        elif isinstance(layer, keras.layers.Embedding):
            assert row["shape"] == list(variable.shape)
        elif isinstance(layer, keras.layers.Conv2DTranspose) and name != "model.keras":
            assert effective[1] == _jacobian_fans(layer, (1, 6, 6, variable.shape[-1]))[1]  # [*k, out, in]
            assert row.get("effective_fan_in") is None  # the stride is in no .weights.h5
        else:
            if isinstance(layer, keras.layers.EinsumDense):
                shape = _einsum_input(layer)
                inputs = int(np.prod(shape))
                assert row["shape"] == [inputs, int(np.prod(variable.shape)) // inputs]
            else:
                channels = variable.shape[-1 if isinstance(layer, keras.layers.Conv2DTranspose) else -2]
                shape = (1, 6, 6, channels) if len(variable.shape) == 4 else (1, variable.shape[0])
            assert effective == pytest.approx(_jacobian_fans(layer, shape)), row["param"]
    assert sorted(seen) == sorted(variable.path for variable in model.weights)  # each once
    # in the model's layer order (Keras writes a layer's sublayers in its own order: MultiHeadAttention's by name)
    order = [layer.name for layer in model.layers if layer.weights]
    assert list(dict.fromkeys(path.split("/")[0] for path in seen)) == order


_KINDS = {"Conv2D": "conv2d", "DepthwiseConv2D": "conv2d", "Conv2DTranspose": "conv_transpose2d",
          "LSTMCell": "lstm", "EinsumDense": "linear", "Dense": "linear", "Embedding": "embedding"}


def test_keras_lstm_defaults(tmp_path):
    """An LSTM as Keras initialises it (no values assigned): the kernel's glorot_uniform bound holds every value
    and is nearly reached; the recurrent kernel is orthogonal, [H, 4H] with orthonormal rows, whose values' RMS
    fancli gives; the bias is zeros with the forget gate's ones, which no one std describes."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3, 5)), keras.layers.LSTM(6)])
    model.save_weights(tmp_path / "lstm.weights.h5")
    rows = {row["param"]: row for row in _rows(tmp_path / "lstm.weights.h5")[1]}
    cell = model.layers[0].cell
    kernel, recurrent, bias = (np.asarray(variable.numpy(), np.float64) for variable in cell.weights)
    bound = rows["layers.lstm.cell.vars.0"]["bound"]
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert np.allclose(recurrent @ recurrent.T, np.eye(6), atol=1e-5)  # the premise: orthonormal rows
    assert rows["layers.lstm.cell.vars.1"]["std"] == pytest.approx(np.sqrt(np.mean(recurrent ** 2)), rel=1e-5)
    assert list(bias) == [0] * 6 + [1] * 6 + [0] * 12  # gates i, f, c, o
    assert rows["layers.lstm.cell.vars.2"]["std"] is None
