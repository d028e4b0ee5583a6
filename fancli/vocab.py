"""The closed vocabularies of fancli's options and files, each in one place: `click.Choice`, the spec and
config validators, the analysis and the renderers read them here (as torchinfo keeps its enums.py).

Layer kinds have their own registry (`fancli.kinds`), schemes theirs (`analysis.schemes.SCHEMES`),
activations theirs (`analysis.activations`), output formats theirs, per command (`fancli.outputs`).
"""

from __future__ import annotations

#: Which fan an init divides by: He et al.'s fan_in keeps the forward pass, fan_out the backward.
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")  # fan_geo_avg: JAX's √(fan_in·fan_out)
#: The modes `compare` sets side by side when none are given (the command's and the library's default).
COMPARED_MODES = ("fan_in", "fan_out")
#: Which fans the std is computed from: torch's shape-only rule, or the layer-aware ones.
FAN_CONVENTIONS = ("torch", "effective")
#: How a weight is laid out. torch: `[out, in, *kernel]`; keras: `[*kernel, in, out]` (Dense `[in, out]`,
#: TF; a transposed conv `[*kernel, out, in]`); jax: as keras, but a transposed conv `[*kernel, in, out]` (Flax
#: linen's ConvTranspose); in_out: a torch tensor stored `[in, out]` (HF GPT-2 `Conv1D`, Paddle `Linear`); channels_last:
#: `[out, *kernel, in]` (MLX's Conv and ConvTranspose; its Linear is `[out, in]`, as torch's).
LAYOUTS = ("torch", "keras", "jax", "in_out", "channels_last")
#: The layouts whose fans are read `[*kernel, in, out]` (Keras' `compute_fans`, JAX's `_compute_fans`).
KERNEL_LAST = ("keras", "jax")
#: A spec's `axes` keys: JAX `variance_scaling`'s in_axis, out_axis and batch_axis, in that order.
AXES_ROLES = ("in", "out", "batch")
#: How a scheme draws: the std is exact for each (truncated normal corrects its sampling std).
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")
#: What `propagate` does with norm layers: leave them out (the init alone) or run them in train mode.
NORMS = ("identity", "real")
