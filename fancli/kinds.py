"""Layer kinds: one record per kind, holding what fancli knows of it; loaders, analysis, explain and
propagate read it here.

Adding a kind is one record below (and its tests): the torch classes that are it, how torch stores its
weight, the gates stacked in it, and which of torch's `reset_parameters()` rules initialises it
(`fancli.analysis.torch_defaults` holds each rule's arithmetic and its explanation), and which fan rule reads
its shape (`fancli.analysis.fans.RULES` holds each rule, and refuses at import a record naming none of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerKind:
    name: str
    torch_classes: tuple[str, ...] = ()  # torch.nn class names (and subclasses torch itself defines)
    layout: str = "[out_features, in_features]"  # how torch stores the weight, for `explain`
    torch_default: str = "kaiming_a_sqrt5"  # the reset_parameters() rule: a key of torch_defaults.RULES
    gates: int | None = None  # blocks stacked along dim 0 of the recurrent weights (LSTM 4, GRU 3, RNN 1)
    spatial_dims: int = 0  # a conv's kernel dims
    transposed: bool = False
    cell: bool = False  # one recurrent step (weight_ih, weight_hh), not a stack of layers (weight_ih_l0…)
    runnable: bool = False  # propagate builds it in a spec's stack
    fans: str = "weight"  # the rule that gives its fans: a key of fans.RULES
    fans_note: str | None = None  # what the fans of this kind's weight mean, said on every row

    @property
    def is_conv(self) -> bool:
        return self.spatial_dims > 0

    @property
    def is_recurrent(self) -> bool:
        return self.gates is not None


NORM_CLASSES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
                "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm")
_RECURRENT_LAYOUT = "[gates × hidden_size, input_size] (gates stacked along dim 0)"

KINDS: dict[str, LayerKind] = {
    kind.name: kind
    for kind in (
        LayerKind("linear", ("Linear", "NonDynamicallyQuantizableLinear"), runnable=True),
        LayerKind("bilinear", ("Bilinear",), "[out_features, in1_features, in2_features]", "bilinear"),
        *(LayerKind(f"conv{d}d", (f"Conv{d}d",), "[out_channels, in_channels/groups, {kernel}]", spatial_dims=d,
                    runnable=True) for d in (1, 2, 3)),
        *(LayerKind(f"conv_transpose{d}d", (f"ConvTranspose{d}d",),
                    "[in_channels, out_channels/groups, {kernel}] (a transposed conv's layout)",
                    spatial_dims=d, transposed=True, runnable=True, fans="transposed") for d in (1, 2, 3)),
        LayerKind("embedding", ("Embedding", "EmbeddingBag"), "[num_embeddings, embedding_dim]", "normal_1",
                  fans_note="embedding: fan_in/fan_out of [num, dim] are not meaningful (torch's own init "
                            "draws N(0, 1) whatever they are)"),
        LayerKind("rnn", ("RNN",), _RECURRENT_LAYOUT, "rnn_hidden", gates=1, fans="gates"),
        LayerKind("lstm", ("LSTM",), _RECURRENT_LAYOUT, "rnn_hidden", gates=4, fans="gates"),
        LayerKind("gru", ("GRU",), _RECURRENT_LAYOUT, "rnn_hidden", gates=3, fans="gates"),
        LayerKind("rnn_cell", ("RNNCell",), _RECURRENT_LAYOUT, "rnn_hidden", gates=1, fans="gates", cell=True),
        LayerKind("lstm_cell", ("LSTMCell",), _RECURRENT_LAYOUT, "rnn_hidden", gates=4, fans="gates", cell=True),
        LayerKind("gru_cell", ("GRUCell",), _RECURRENT_LAYOUT, "rnn_hidden", gates=3, fans="gates", cell=True),
        LayerKind("multihead_attention", ("MultiheadAttention",),
                  "[3 × embed_dim, embed_dim] (q, k, v stacked along dim 0)", "attention", fans="qkv"),
        LayerKind("experts", (), "[experts, out, in] (each expert used as F.linear(x, W[e])) or [experts, in, out] "
                  "(x @ W[e]), its biases [experts, out]", "empty", fans="experts"),
        LayerKind("norm", NORM_CLASSES, "[num_features]", "constant", runnable=True),
        # Tensors that are no layer's weight: torch draws none of them, so no scheme gives them a std.
        LayerKind("quant_scale", (), "a quantized weight's scales (per tensor, channel, group or block)", "none",
                  fans_note="a quantization scale, not a layer: the fans of its shape mean nothing"),
        LayerKind("quant_aux", (), "a quantized weight's zero points, group indices or codebook", "none",
                  fans_note="quantization metadata, not a layer: the fans of its shape mean nothing"),
        LayerKind("quant_packed", (), "a quantized weight's packed codes (two to a byte, eight to an int32)",
                  "none",
                  fans_note="packed codes, not the [out, in] weight they stand for: the fans of its shape mean nothing"),
        LayerKind("buffer", (), "a buffer (rotary frequencies, position ids, a causal mask, router biases)", "none",
                  fans_note="a buffer, not a layer's weight: the fans of its shape mean nothing"),
        # transformers' MambaMixer: A_log = log(arange(1, d_state + 1)) per channel, D = ones: set, not drawn.
        LayerKind("ssm_param", (), "a state-space layer's A_log [d_inner, d_state] or D [d_inner] (Mamba)", "none",
                  fans="none", fans_note="a state-space parameter (Mamba's A_log or D), set by a formula "
                                         "(A_log = log(1…d_state), D = 1), not drawn: it has no fans"),
        LayerKind("unknown"),
    )
}
NAMES = tuple(KINDS)
#: Modules that re-initialise their children after the children's reset_parameters(): class name -> the
#: torch_defaults rule they apply (nn.Transformer: xavier_uniform_ on every parameter of 2 or more dims).
REINITIALISING = {"Transformer": "xavier_uniform"}
#: A recurrent parameter's name: weight_ih_l0, bias_hh_l1_reverse… (a layer stack's), weight_ih (a cell's).
RECURRENT_PARAM = re.compile(r"^(weight|bias)_(ih|hh)(_l(\d+)(_reverse)?)?$")
#: torch.nn class name -> kind name.
KIND_OF_CLASS = {cls: kind.name for kind in KINDS.values() for cls in kind.torch_classes}
#: (gate count, is a cell) -> recurrent kind, to tell an LSTM from a GRU by its weights' rows.
KIND_OF_GATES = {(kind.gates, kind.cell): kind.name for kind in KINDS.values() if kind.gates is not None}


def kind(name: str) -> LayerKind:
    """The record of a kind; an unknown name reads as "unknown" (a source may carry any string)."""
    return KINDS.get(name, KINDS["unknown"])


def has_init(name: str) -> bool:
    """Whether any init draws this kind's tensors (not scales, quantization metadata or buffers)."""
    return kind(name).torch_default != "none"


def kind_for_ndim(ndim: int, transposed: bool = False) -> str:
    """What a weight of `ndim` dims is when nothing else says: a Linear's 2, a conv's 3 to 5."""
    if ndim == 2:
        return "linear"
    if 3 <= ndim <= 5:
        return f"conv_transpose{ndim - 2}d" if transposed else f"conv{ndim - 2}d"
    return "unknown"
