"""fan_in and fan_out: torch's convention exactly, and the layer-aware fans where it misleads.

torch (`nn.init._calculate_fan_in_and_fan_out`) looks at the shape only. Where the layer's structure
says the shape misleads (grouped and transposed convs, stacked blocks, `[in, out]` storage), the
effective fans are computed too and a note says why they differ.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ..kinds import KINDS, LayerKind, kind
from ..layer import Layer
from ..records import record, replaced
from ..vocab import KERNEL_LAST

Number = int | float


def torch_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Exactly `torch.nn.init._calculate_fan_in_and_fan_out`, including its error for < 2 dims."""
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def keras_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras/JAX convention for `[*kernel, in, out]` kernels and `[in, out]` Dense kernels."""
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def jax_fans(shape: Sequence[int], in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1,
             batch_axis: int | Sequence[int] = ()) -> tuple[float, float]:
    """JAX 0.10.2 `jax.nn.initializers._compute_fans`, what its `variance_scaling(in_axis=, out_axis=,
    batch_axis=)` divides by: the dims off those axes are the receptive field (floats, as JAX's)."""
    def size(axes: int | Sequence[int]) -> int:
        return shape[axes] if isinstance(axes, int) else math.prod(shape[axis] for axis in axes)

    if isinstance(in_axis, int) and in_axis == -2 and len(shape) <= 1:
        raise ValueError(f"Can't compute input and output sizes of a {len(shape)}-dimensional weights tensor "
                         "with default in_axis")
    divisor = size(in_axis) * size(out_axis) * size(batch_axis)
    # JAX's own division (axes may overlap: in_axis = out_axis); a zero-size dim among them, where JAX raises
    # ZeroDivisionError, has no elements and 0 fans
    receptive_field = math.prod(shape) / size(in_axis) / size(out_axis) / size(batch_axis) if divisor else 0.0
    return size(in_axis) * receptive_field, size(out_axis) * receptive_field


def channels_first(shape: Sequence[int], transposed: bool = False) -> tuple[int, ...]:
    """A channels-last weight `[out, *k, in]` (MLX's Conv and ConvTranspose) as torch lays the same weight out:
    `[out, in, *k]`, a transposed conv's `[in, out, *k]`."""
    if len(shape) < 3:
        return tuple(shape)
    return (shape[-1], shape[0], *shape[1:-1]) if transposed else (shape[0], shape[-1], *shape[1:-1])


def convention_of(layer: Layer) -> str:
    """Whose fan function gives this tensor its (non-effective) fans: JAX's `_compute_fans` with the axes a spec
    states, Keras' `compute_fans` or JAX's by the layout, else torch's (a channels-last or `[in, out]` tensor is
    read as torch lays it out)."""
    return "jax" if layer.fan_axes else layer.layout if layer.layout in KERNEL_LAST else "torch"


def layout_fans(shape: Sequence[int], layout: str) -> tuple[int, int]:
    """The fans the framework that owns this layout computes for the tensor as stored (torch's for torch's
    layouts: `_structured` lays a channels-last weight out channels first before it reads them)."""
    return keras_fans(shape) if layout in KERNEL_LAST else torch_fans(shape)


@record
class LayerFans:
    """A layer's fans by its framework's convention, and the effective ones where they differ."""

    fan_in: int | None
    fan_out: int | None
    effective_fan_in: Number | None = None  # None: same as fan_in (or not computable)
    effective_fan_out: Number | None = None
    notes: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()  # effective fans the source cannot show ("fan_in", "fan_out"): None, not a guess

    @property
    def differs(self) -> bool:
        return self.effective_fan_in is not None or self.effective_fan_out is not None or bool(self.unknown)

    def pick(self, effective: bool) -> tuple[Number | None, Number | None]:
        """The (fan_in, fan_out) pair to compute init values from; None where it is unknown."""
        if effective and self.differs:
            return (None if "fan_in" in self.unknown else self.effective_fan_in if self.effective_fan_in is not None
                    else self.fan_in,
                    None if "fan_out" in self.unknown else self.effective_fan_out if self.effective_fan_out is not None
                    else self.fan_out)
        return self.fan_in, self.fan_out


def _exact(value: float) -> Number:
    """Keep fans integral where the division is exact, so 64/1 reads 64, not 64.0."""
    return int(value) if float(value).is_integer() else value


def layer_fans(layer: Layer, pool_fan_out: bool = False) -> LayerFans:
    """torch's fans for the layer's tensor, plus effective fans and notes from its structure: its kind's rule."""
    if layer.fan_axes is not None:
        return _axes_fans(layer)
    record = kind(layer.kind)
    return RULES[record.fans](layer, record, pool_fan_out)


def _axes_fans(layer: Layer) -> LayerFans:
    """The fans JAX's `variance_scaling(in_axis=, out_axis=, batch_axis=)` divides by, with the axes the source
    gives: the layer's own too (a spec's axes say which dims are inputs and outputs), unless it says they are
    unknown (a Flax Einsum, whose equation is not in the file)."""
    in_axis, out_axis, batch_axis = layer.fan_axes
    fan_in, fan_out = jax_fans(layer.shape, in_axis, out_axis, batch_axis)
    return LayerFans(_exact(fan_in), _exact(fan_out), unknown=layer.unknown_fans, notes=(
        f"JAX's _compute_fans with in_axis {list(in_axis)}, out_axis {list(out_axis)}, batch_axis "
        f"{list(batch_axis)}: the dims on none of them are the receptive field, the batch dims count in neither",))


def _as_torch(layer: Layer, transposed: bool) -> tuple[int, ...]:
    """A `[*k, a, b]` Keras or JAX weight as torch stores the same layer: Conv2DTranspose's `[*k, out, in]`
    (Flax's ConvTranspose `[*k, in, out]`) as `[in, out, *k]`, DepthwiseConv2D's `[*k, in, mult]` as
    `[in·mult, 1, *k]`, the rest `[b, a, *k]`."""
    *kernel, a, b = layer.shape
    if transposed:
        return (a, b, *kernel) if layer.layout == "jax" else (b, a, *kernel)
    if layer.groups and layer.groups > 1 and layer.groups == a:
        return (a * b, 1, *kernel)
    return (b, a, *kernel)


def _keras_structured(layer: Layer, record: LayerKind, pool_fan_out: bool, transposed: bool,
                      stacked_note: str) -> LayerFans:
    """A Keras-layout weight: Keras' `compute_fans` on the stored shape as the framework's fans, the layer-aware
    ones from the same layer as torch would store it (Keras' rule misreads depthwise, transposed, gated and
    attention weights, differently from torch's)."""
    fan_in, fan_out = keras_fans(layer.shape)
    view = _structured(replaced(layer, layout="torch", shape=_as_torch(layer, transposed)), record, pool_fan_out,
                       transposed, stacked_note)
    eff_in, eff_out = view.pick(True)
    unknown = view.unknown
    return LayerFans(fan_in, fan_out,
                     effective_fan_in=None if eff_in == fan_in and not unknown or "fan_in" in unknown else eff_in,
                     effective_fan_out=None if eff_out == fan_out and not unknown or "fan_out" in unknown
                     else eff_out, notes=view.notes, unknown=unknown)


def _structured(layer: Layer, record: LayerKind, pool_fan_out: bool, transposed: bool,
                stacked_note: str) -> LayerFans:
    """The fans every weight shares the rules of: its layout, a conv's groups, stride, transposition and
    dilation, blocks stacked along its output dim (what they are: `stacked_note`), the pool after it."""
    shape = layer.shape
    if len(shape) < 2:
        return LayerFans(None, None, notes=(f"{len(shape)}-D tensor: torch defines no fan_in/fan_out below 2 dims",))
    if layer.layout in KERNEL_LAST and (transposed or (layer.groups or 1) > 1 or (layer.stacked or 1) > 1):
        return _keras_structured(layer, record, pool_fan_out, transposed, stacked_note)
    notes: list[str] = []
    if layer.layout == "channels_last" and len(shape) >= 3:
        shape = channels_first(shape, transposed)
        notes.append(f"stored [out, *k, in] (MLX, channels last): the fans are torch's for the same weight laid "
                     f"out {list(shape)}; torch's function on the stored shape would read a kernel dim as in")
    fan_in, fan_out = layout_fans(shape, layer.layout)
    eff_in: float = fan_in
    eff_out: float = fan_out
    unknown = list(layer.unknown_fans)
    rf = math.prod(layer.kernel)
    groups = layer.groups or 1

    if layer.layout == "in_out":
        eff_in, eff_out = shape[0] * rf, shape[1] * rf
        notes.append("stored [in, out] (HF Conv1D, Paddle Linear): torch's function reads the fans swapped")
    elif transposed and layer.groups is None:
        notes.append("transposed conv with unknown groups: torch's fans are swapped, effective fans unknown")
    elif transposed:
        in_channels, out_per_group = shape[0], shape[1]
        eff_out = out_per_group * rf
        eff_in = in_channels // groups * rf
        if layer.stride and math.prod(layer.stride) > 1:
            eff_in /= math.prod(layer.stride)
        notes.append(
            "transposed conv: torch reads [in, out/groups, *k] with the fans swapped; each output sums "
            "(in/groups)·k taps, divided by the stride on average; each input feeds (out/groups)·k outputs"
        )
        if layer.stride is None and rf > 1:
            unknown.append("fan_in")
            notes.append("transposed conv of unknown stride: the effective fan_in is (in/groups)·k divided by "
                         "the stride, which this source does not record; a YAML spec, TorchScript, a factory or "
                         "--trust on a pickled module gives it")
    else:
        if groups > 1:
            eff_out = fan_out / groups
            what = "depthwise conv" if shape[1] == 1 else "grouped conv"
            notes.append(
                f"{what}: torch's fan_out counts all output channels, but each input channel feeds only "
                "out/groups of them (pytorch#23854)"
            )
        if layer.kernel and layer.stride and math.prod(layer.stride) > 1:
            eff_out = eff_out / math.prod(layer.stride)
            notes.append("strided conv: each input falls in k/stride windows on average, so the effective "
                         "fan_out is divided by the stride")

    if layer.stacked and layer.stacked > 1:
        eff_out = eff_out / layer.stacked
        notes.append(stacked_note)

    if layer.dilation and any(d > 1 for d in layer.dilation):
        notes.append("dilated conv: dilation widens the kernel's span, not its taps; the fans are unchanged")

    if pool_fan_out and layer.pool:
        eff_out = eff_out / math.prod(layer.pool)
        notes.append("fan_out divided by the pool area after the conv (LeNet tutorial convention, opt-in)")

    if record.fans_note:
        notes.append(record.fans_note)

    same = (eff_in == fan_in, eff_out == fan_out)
    return LayerFans(
        fan_in,
        fan_out,
        effective_fan_in=None if (all(same) and not unknown) or "fan_in" in unknown else _exact(eff_in),
        effective_fan_out=None if (all(same) and not unknown) or "fan_out" in unknown else _exact(eff_out),
        notes=tuple(notes),
        unknown=tuple(unknown),
    )


def output_dim(layout: str, ndim: int) -> int:
    """The dim a layout stores a weight's outputs along, which stacked parts (q/k/v, gates) split: torch's and
    MLX's dim 0, `in_out`'s dim 1, Keras' and JAX's last (an LSTM's kernel [in, 4H])."""
    return ndim - 1 if layout in KERNEL_LAST else 1 if layout == "in_out" else 0


def _parts_note(layer: Layer) -> str:
    """Parts stacked along a weight's output dim (q, k, v of a fused projection), wherever its layout stores it."""
    return (f"{layer.stacked} parts stacked along dim {output_dim(layer.layout, len(layer.shape))}, its output dim: "
            f"each is a projection of its own, with 1/{layer.stacked} of the outputs (the effective fan_out)")


def _weight_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """A weight read by its own structure (transposed where the source says so)."""
    return _structured(layer, record, pool_fan_out, bool(layer.transposed), _parts_note(layer))


def _transposed_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """A transposed conv: stored [in, out/groups, *k], whatever the source says."""
    return _structured(layer, record, pool_fan_out, True, _parts_note(layer))


def _gate_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """A recurrent weight: its gates stacked along its output dim (torch's dim 0, Keras' last), each hidden_size."""
    whose = {"keras": "Keras'", "jax": "JAX's"}.get(layer.layout, "torch's")
    dim = output_dim(layer.layout, len(layer.shape))
    note = (f"{layer.kind.upper()}: {layer.stacked} gates stacked along dim {dim}, its output dim; {whose} fan_out "
            f"counts all {layer.stacked}, each gate has hidden_size")
    return _structured(layer, record, pool_fan_out, bool(layer.transposed), note)


def _qkv_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """nn.MultiheadAttention's in_proj_weight: q, k and v stacked in one [3E, E] weight."""
    note = "q, k, v stacked in one [3E, E] weight: torch's fan_out counts all three; each has E"
    return _structured(layer, record, pool_fan_out, bool(layer.transposed), note)


def _expert_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """Stacked experts: torch's function reads the whole [E, a, b] tensor (E as out, b as a kernel); each
    expert is its own matrix, whose fans are the effective ones. Their stacked biases [E, out] have none."""
    shape = layer.shape
    if len(shape) not in (2, 3):
        return _weight_fans(layer, record, pool_fan_out)
    if len(shape) == 2:
        return LayerFans(None, None, notes=(f"{shape[0]} experts' biases stacked as [experts, out]: torch defines "
                                            "no fans for a bias",))
    fan_in, fan_out = torch_fans(shape)
    if layer.unknown_fans:
        return LayerFans(fan_in, fan_out, unknown=("fan_in", "fan_out"), notes=(
            f"{shape[0]} experts stacked along dim 0, stored [experts, out, in] or [experts, in, out]: which one is "
            "unknown, so each expert's fans are too",))
    out, inputs = (shape[2], shape[1]) if layer.layout == "in_out" else (shape[1], shape[2])
    note = (f"{shape[0]} experts stacked along dim 0, each an [out, in] = [{out}, {inputs}] matrix: its fans are "
            "the effective ones; torch's function reads the whole tensor (dim 0 as out, dim 2 as a kernel)")
    return LayerFans(fan_in, fan_out, None if inputs == fan_in else inputs, None if out == fan_out else out,
                     notes=(note,))


def _no_fans(layer: Layer, record: LayerKind, pool_fan_out: bool) -> LayerFans:
    """A tensor that is no layer's weight and that no fan-scaled init draws: its shape's fans would mislead."""
    return LayerFans(None, None, notes=(record.fans_note,) if record.fans_note else ())


#: A kind's fan rule (`LayerKind.fans`) -> its function of (layer, its kind's record, pool_fan_out).
RULES: dict[str, Callable[[Layer, LayerKind, bool], LayerFans]] = {
    "weight": _weight_fans,
    "transposed": _transposed_fans,
    "gates": _gate_fans,
    "qkv": _qkv_fans,
    "experts": _expert_fans,
    "none": _no_fans,
}
_UNRULED = sorted(f"{record.name}: {record.fans!r}" for record in KINDS.values() if record.fans not in RULES)
if _UNRULED:  # a kind naming no rule here would fail on its first row; fail at import instead
    raise ImportError(f"fancli.kinds names fan rules that fancli.analysis.fans lacks: {', '.join(_UNRULED)}")
