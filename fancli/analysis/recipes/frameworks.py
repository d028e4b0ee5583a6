"""Other frameworks' layer defaults, read from Keras 3.15.1 (`layers/core/dense.py`, `layers/convolutional/
base_conv.py`, `layers/core/embedding.py`, `initializers/random_initializers.py`), Flax 0.12.8
(`linen/linear.py` `default_kernel_init`, `Embed`; jax `nn/initializers.py` `variance_scaling`) and MLX 0.32.4
(`mlx/nn/layers/linear.py`, `convolution.py`, `convolution_transpose.py`, `embedding.py`, `normalization.py`,
`recurrent.py`).

Their kernels are stored `[*k, in, out]` (a spec's or file's `layout: keras`), and their fans are read off
that layout as Keras' `compute_fans` and JAX's `_compute_fans` read them: `args.fan_in`/`fan_out` are those.
"""

from __future__ import annotations

import math

from ..fans import jax_fans
from ..schemes import TRUNCATED_NORMAL_STD, InitValues
from .draws import RecipeArgs, constant, norm_or_bias, normal, uniform

#: MLX's recurrent weights by their keys (`mlx/nn/layers/recurrent.py`): RNN `Wxh`, `Whh`; GRU and LSTM `Wx`, `Wh`.
_MLX_RECURRENT = ("Wxh", "Whh", "Wx", "Wh")
_KERNELS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
#: A norm's scale by the names the frameworks give it: Keras' `gamma` (its `.weights.h5` numbers a
#: LayerNormalization's or BatchNormalization's variables, gamma first: `0`), Flax's `scale`, torch's `weight`.
_NORM_SCALES = ("weight", "gamma", "scale", "0")


def _framework_norm_or_bias(args: RecipeArgs, library: str) -> InitValues | None:
    """A norm's scale 1 and its other 1-D variables 0; a layer's 1-D variable beside its kernel (its bias,
    whatever the file calls it: `bias`, Keras' variable `1`) 0."""
    kind = args.layer.kind
    if len(args.layer.shape) != 1:
        return None
    if kind == "norm":
        if args.leaf in _NORM_SCALES:
            return constant(1.0, f"{library}: a norm's scale")
        return constant(0.0, f"{library}: a norm's offset or moving statistic")
    if kind in _KERNELS or kind == "embedding":
        return constant(0.0, f"{library}: biases (zeros)")
    return None


def _axes_unknown(args: RecipeArgs) -> bool:
    """A Keras EinsumDense or Flax DenseGeneral kernel of ≥3 dims whose input axes its file does not say: its
    initializer saw it by those axes (EinsumDense's einsum axes, DenseGeneral's flattened shape), not as a conv,
    so the fans read off the stored shape are not the ones it drew with. (A Flax Einsum's init reads the stored
    kernel with JAX's default axes: the loader gives them, `fan_axes`.)"""
    layer = args.layer
    return (layer.kind == "linear" and len(layer.shape) >= 3 and "fan_in" in layer.unknown_fans
            and layer.fan_axes is None)


def _keras_lstm(args: RecipeArgs) -> InitValues | None:
    """keras 3.15.1 `layers/rnn/lstm.py` LSTMCell: kernel `glorot_uniform` on its [in, 4H], recurrent kernel
    `orthogonal` (gain 1: [H, 4H] with orthonormal rows, so its values' RMS is exactly 1/√(4H)), bias zeros with
    the forget gate's H ones (`unit_forget_bias=True`), which no one constant or draw is."""
    shape, leaf = args.layer.shape, args.leaf
    if len(shape) == 2 and leaf in ("0", "kernel") and args.fan_in and args.fan_out:
        return uniform(math.sqrt(6.0 / (args.fan_in + args.fan_out)),
                       "Keras LSTM kernel glorot_uniform: VarianceScaling(1, fan_avg, uniform)")
    if len(shape) == 2 and leaf in ("1", "recurrent_kernel"):
        return InitValues(shape[1] ** -0.5, distribution="orthogonal",
                          note=f"Keras LSTM recurrent kernel orthogonal: {shape[0]} orthonormal rows of {shape[1]}, "
                               f"RMS 1/√{shape[1]}")
    if len(shape) == 1:
        return InitValues(None, note="Keras LSTM bias: zeros and the forget gate's ones (unit_forget_bias)")
    return None


def keras(args: RecipeArgs) -> InitValues | None:
    """Dense and Conv kernels `glorot_uniform` (VarianceScaling(1, fan_avg, uniform): U(±√(6/(fan_in +
    fan_out)))), biases `zeros`; Embedding `uniform` (RandomUniform(−0.05, 0.05)); LayerNormalization and
    BatchNormalization gamma ones, beta zeros."""
    kind = args.layer.kind
    if kind == "embedding" and len(args.layer.shape) >= 2:
        return uniform(0.05, "Keras Embedding: RandomUniform(-0.05, 0.05)")
    if kind == "lstm":
        return _keras_lstm(args)
    if kind in _KERNELS and len(args.layer.shape) >= 2:
        if not (args.fan_in and args.fan_out) or _axes_unknown(args):
            return InitValues(None, note="Keras glorot_uniform: the fans are not known")
        return uniform(math.sqrt(6.0 / (args.fan_in + args.fan_out)),
                       "Keras glorot_uniform: VarianceScaling(1, fan_avg, uniform)")
    if kind == "norm" and args.leaf == "3":  # BatchNormalization's variables: gamma, beta, moving_mean, then this
        return constant(1.0, "Keras BatchNormalization: moving_variance (ones)")
    return _framework_norm_or_bias(args, "Keras")


def flax(args: RecipeArgs) -> InitValues | None:
    """linen's Dense/Conv kernels `lecun_normal` (variance_scaling(1, fan_in, truncated_normal): cut at ±2σ and
    rescaled, so the values' std is exactly 1/√fan_in), biases `zeros`; Embed
    variance_scaling(1, fan_in, normal, out_axis=0), whose fan_in is the features: N(0, 1/features), uncut;
    norms' scale ones, bias zeros."""
    kind = args.layer.kind
    if kind == "embedding" and len(args.layer.shape) >= 2:
        fan_in, _ = jax_fans(args.layer.shape, out_axis=0)  # [num, features]: in_axis -2 is axis 0 too
        return normal(fan_in ** -0.5, f"Flax Embed: variance_scaling(1, fan_in, normal, out_axis=0), fan_in = "
                                      f"features {fan_in:g}")
    if kind in _KERNELS and len(args.layer.shape) >= 2:
        if not args.fan_in or _axes_unknown(args):
            return InitValues(None, note="Flax lecun_normal: fan_in is not known")
        std = 1.0 / math.sqrt(args.fan_in)
        return InitValues(std, sampling_std=std / TRUNCATED_NORMAL_STD, fan=args.fan_in,
                          distribution="truncated_normal", cut=2.0,
                          note="Flax lecun_normal: variance_scaling(1, fan_in, truncated_normal), cut at ±2σ and "
                               "rescaled")
    return _framework_norm_or_bias(args, "Flax")


def mlx(args: RecipeArgs) -> InitValues | None:
    """mlx.nn's own draws: Linear weight U(±√(1/in)) (its bias the same bound: torch's Linear bias draw, left to
    it); Conv and ConvTranspose weights U(±√(1/(in/groups·k))), read channels last, so 1/√ of torch's fan_in of
    the weight laid out `[out, in, *k]`, their biases zeros; Embedding N(0, 1/dims); RNN (`Wxh [H, in]`,
    `Whh [H, H]`), GRU/LSTM (`Wx [G·H, in]`, `Wh [G·H, H]`, `b`) every tensor U(±1/√hidden); norms' weight
    ones, bias zeros."""
    layer, kind = args.layer, args.layer.kind
    if args.leaf in _MLX_RECURRENT and len(layer.shape) == 2:
        hidden = layer.shape[0] if args.leaf == "Wxh" else layer.shape[1] if args.leaf in ("Whh", "Wh") else None
        if hidden is None:  # Wx [G·H, in]: G is 3 (GRU) or 4 (LSTM), which the key does not tell
            return InitValues(None, note="MLX GRU/LSTM Wx: U(±1/√hidden), hidden = its rows / 3 or 4 gates, "
                                         "which its key does not tell")
        return uniform(hidden ** -0.5, f"MLX RNN/GRU/LSTM: U(±1/√hidden), hidden {hidden}")
    if kind == "embedding" and len(layer.shape) == 2:
        return normal(layer.shape[1] ** -0.5, "MLX Embedding: N(0, 1/dims)")
    if kind in _KERNELS and len(layer.shape) >= 2:
        if not args.fan_in:
            return InitValues(None, note="MLX: the fan_in is not known")
        what = "Linear: U(±√(1/in))" if kind == "linear" else "Conv: U(±√(1/(in/groups·k)))"
        return uniform(math.sqrt(1.0 / args.fan_in), f"MLX {what}")
    if kind == "linear" and args.is_bias:
        return None  # U(±√(1/in)) of its weight's in: torch's Linear bias draw
    return norm_or_bias(args, "MLX")
