"""Signal propagation: the direct test of "fan_in keeps the forward pass, fan_out the backward" (He et al. 2015).

For each mode asked for, every weight is drawn with the std (or bound) that fancli's own analysis gives
it, a batch of N(0, 1) inputs goes forward and a N(0, 1) gradient comes back from the output, and each
weight layer reports two numbers:

- ``forward_var``: the variance of the layer's own output y = W·x + b, before any norm or nonlinearity
  that follows it (He et al.'s pre-activation response y_l). Under fan_in it stays constant with depth.
- ``backward_var``: the variance of the gradient with respect to the layer's input, ∂L/∂x (He et al.'s
  Δx_l), for L = Σ g·output with g ~ N(0, 1). Under fan_out it stays constant with depth.

Variances are over every element of the tensor (batch, features, positions), centred, in float64.

Two sources:

- a YAML spec (``Model`` of format "yaml-spec"): fancli builds a sequential stack from the Layer records —
  see `propagate` for how each record becomes a torch module;
- a live ``torch.nn.Module``: a copy of it is re-initialised and run with hooks on its Linear and Conv
  modules; ``input_shape`` is required.

The package: `signals` (what is measured: LayerSignal, Propagation, the drawing and the hooks),
`spec_stack` (a spec as a sequential stack), `module_runner` (a live module), and here the entry point and
the sources; the text and JSON output are `fancli.renderers.propagate`, the chart `fancli.renderers.plot`.

The run is deterministic for a seed and leaves torch's global RNG as it was. This package imports torch;
only ``fancli propagate`` imports it.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import SettingsError
from ..layer import Model
from ..report import Settings, analyze
from ..vocab import NORMS
from .module_runner import ModuleRunner
from .signals import (
    MAX_BYTES,
    LayerSignal,
    PropagateError,
    Propagation,
    Runner,
    combine,
    memory_refused,
)
from .spec_stack import SpecStack

__all__ = [
    "NORMS",
    "MAX_BYTES",
    "MAX_DRAWS",
    "MAX_BATCH",
    "LayerSignal",
    "Propagation",
    "PropagateError",
    "propagate",
    "load_source",
]

#: Default batch: a flat input, an input with positions (each already gives many samples per example).
_BATCH_FLAT, _BATCH_SPATIAL = 256, 32
#: Draws averaged per mode: the mean's spread falls as 1/√draws, so 1,000 leave ~3% of one draw's; more only
#: take longer (each draw is a forward and a backward pass).
MAX_DRAWS = 1000
#: Inputs per pass: 65,536 already estimate a variance to within ~0.6%; more only take time and memory.
MAX_BATCH = 65536


# --- the public entry point ------------------------------------------------------------------------


def propagate(
    model: Model | nn.Module,
    modes: Iterable[str] = ("fan_in", "fan_out"),
    *,
    scheme: str | None = None,
    nonlinearity: str | None = None,
    param: float | None = None,
    fans: str = "torch",
    norms: str = "identity",
    batch: int | None = None,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    draws: int = 4,
) -> list[Propagation]:
    """One Propagation per mode, in the order given.

    Each layer's variances are the mean over ``draws`` independent initialisations (each with its own
    input batch and output gradient): He et al.'s recursion holds for the expectation over the weights,
    while one finite-width draw wanders by a random factor that grows with Σ 1/width over the layers
    (Hanin & Rolnick 2018): a single draw of a 50-layer ReLU MLP of width 512 leaves a factor 2 end to
    end under fan_in in about a quarter of seeds, the mean of 4 draws in a few percent. Each draw's own
    end-to-end ratios are kept (``forward_ratios``, ``backward_ratios``).

    The std of every weight comes from `fancli.report.analyze` with ``Settings(scheme, (mode,),
    nonlinearity, param, fans)``: the numbers `fancli inspect` prints are the ones drawn, normal_(0, std),
    uniform_(±bound) or trunc_normal_ (±2σ) by the scheme's distribution. ``scheme`` None takes each spec
    layer's own scheme, else kaiming_normal (as inspect does); the mode is always the one being run.
    Biases are zero; norm weights 1.

    A YAML spec becomes a sequential stack, in the spec's order:

    - linear → nn.Linear; a Flatten is put in where a conv feeds a linear.
    - conv/conv_transpose Nd → nn.ConvNd/ConvTransposeNd with the record's stride, dilation and groups.
      Layer records carry no padding: a conv with stride 1 gets "same" padding, dilation·(k−1)//2,
      else 0 (a ``padding`` attribute on the Layer, where present, wins).
    - the nonlinearity after each weight layer: ``nonlinearity`` if given, else the layer's, else the one
      the analysis assumed for the gain (kaiming: leaky_relu a=0, i.e. relu; xavier: linear) — the
      network runs the nonlinearity its init was computed for, with the same parameter (``param``, else
      the layer's, else the activation's default: `fancli.analysis.activations.torch_module`), and the
      identity where a scheme needs none (torch_default, lecun). It follows the norms that come right after
      the weight layer (conv → bn → relu); a norm layer's own nonlinearity is ignored.
    - ``pool`` → MaxPoolNd(pool) after the nonlinearity.
    - norm layers: ``norms="identity"`` (default) leaves them out, so the variance measured is the init's
      doing; ``norms="real"`` runs each as a BatchNormNd in train mode over its channels (the record does
      not keep which norm it was; any of them resets the variance to about 1).
    - embedding, rnn/lstm/gru, multihead_attention, bilinear and unknown kinds raise PropagateError (a
      ValueError) naming the layer; so does a layer whose inputs do not match the previous one's outputs.

    The input is N(0, 1) of shape (batch, *input_shape). ``input_shape`` None: in_features for a linear
    first layer; (C, 64), (C, 32, 32), (C, 16, 16, 16) for a conv1d/2d/3d (transposed: 16, 8, 4), or the
    size that makes the first conv-to-linear Flatten match the linear's in_features. ``batch`` None: 256
    for a flat input, 32 when the input has positions.

    A live nn.Module: a deep copy is run (the module is not touched); ``input_shape`` is required. Its
    Linear and Conv modules are re-initialised as above (fancli reads the module's layers with
    `layers_from_module`); other parameters keep their values. ``norms="identity"`` runs the copy in eval
    mode with every norm module passed through; ``"real"`` in train mode (BatchNorm uses batch statistics,
    dropout is active). A module called several times reports its first call; one never called (e.g.
    MultiheadAttention's out_proj, used through F.multi_head_attention_forward) is noted and left out.

    Deterministic for a seed: each mode reseeds, so the modes see the same input and the same draws
    up to scale; torch's global RNG is restored afterwards.
    """
    modes = tuple(modes)
    if not modes:
        raise SettingsError("propagate needs at least one mode")
    if norms not in NORMS:
        raise SettingsError(f"unknown norms {norms!r}; known: {', '.join(NORMS)}")
    source = model.source if isinstance(model, Model) else type(model).__name__
    if not 1 <= draws <= MAX_DRAWS:
        raise SettingsError(f"{source}: draws must be from 1 to {MAX_DRAWS:,}, got {draws:,}")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise SettingsError(f"{source}: batch must be from 1 to {MAX_BATCH:,}, got {batch:,}")
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise SettingsError(f"{source}: input shape must be positive sizes, got {input_shape}")
    settings = [Settings(scheme, (mode,), nonlinearity, param, fans) for mode in modes]

    if isinstance(model, nn.Module):
        if input_shape is None:
            raise PropagateError(f"{type(model).__name__}: a module needs an input shape: --input-shape 3,32,32 (input_shape= in the library)")
        runner: Runner = ModuleRunner(model, norms)
        shape = input_shape
    elif isinstance(model, Model):
        if model.format != "yaml-spec":
            raise PropagateError(
                f"{model.source}: a {model.format} source holds weights but no forward pass; propagate runs "
                "a YAML spec or an nn.Module (a factory pkg.module:callable)"
            )
        stack = SpecStack(model, norms)
        shape = stack.input_shape(input_shape)
        runner = stack
    else:
        raise TypeError(f"propagate takes a fancli Model or a torch.nn.Module, not {type(model).__name__}")
    batch = batch or (_BATCH_FLAT if len(shape) == 1 else _BATCH_SPATIAL)
    runner.check_memory(batch, shape)

    results = []
    for setting in settings:
        rows = {row.layer.param: row for row in analyze(runner.model, setting).rows}
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), memory_refused(runner.model.source):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            runs = [runner.run(setting.modes[0], rows, batch, shape, generator) for _ in range(draws)]
        results.append(combine(setting.modes[0], runs, shape, batch, seed, norms))
    return results


# --- sources -------------------------------------------------------------------------------------


def load_source(source: str, *, kwargs: dict[str, Any] | None = None) -> Model | nn.Module:
    """What propagate can run from a CLI SOURCE: a YAML spec's Model, or the module a factory builds.

    Files that hold weights only (state_dicts, safetensors) raise PropagateError: they have no forward.
    """
    from .. import loaders

    if loaders.is_factory(source):
        from ..loaders.factory import build

        built = build(source, kwargs)
        if not isinstance(built, nn.Module):
            raise PropagateError(f"{source}: returned a {type(built).__name__}, not a torch.nn.Module")
        return built
    model = loaders.load(source)
    if model.format != "yaml-spec":
        raise PropagateError(
            f"{source}: a {model.format} source holds weights but no forward pass; propagate runs a YAML spec "
            "or a factory (pkg.module:callable)"
        )
    return model

