"""Build the torch modules a YAML spec describes, so torch itself is the oracle for shapes and fans."""

from __future__ import annotations

import yaml
from torch import nn

_NORMS = {"layer_norm": nn.LayerNorm, "layernorm": nn.LayerNorm}


def _module(entry: dict) -> nn.Module | None:
    t = entry.get("type", "raw")
    if t.startswith("conv"):
        dims = int(t[-2])
        cls = getattr(nn, ("ConvTranspose" if "transpose" in t else "Conv") + f"{dims}d")
        return cls(entry["in_channels"], entry["out_channels"], entry["kernel_size"], stride=entry.get("stride", 1),
                   padding=entry.get("padding", 0), dilation=entry.get("dilation", 1), groups=entry.get("groups", 1))
    if t == "linear":
        return nn.Linear(entry["in_features"], entry["out_features"])
    if t == "embedding":
        return nn.Embedding(entry["num_embeddings"], entry["embedding_dim"])
    if t in ("lstm", "gru", "rnn"):
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[t]
        return cls(entry["input_size"], entry["hidden_size"], num_layers=entry.get("num_layers", 1),
                   bidirectional=entry.get("bidirectional", False))
    if t == "multihead_attention":
        return nn.MultiheadAttention(entry["embed_dim"], entry["num_heads"])
    if t.startswith("batchnorm"):
        return getattr(nn, f"BatchNorm{t[-2]}d")(entry["num_features"])
    if t in _NORMS:
        return _NORMS[t](entry["normalized_shape"])
    return None  # raw shapes have no torch module


def build(spec_path) -> nn.Module:
    """A module whose named_parameters() carry the spec's layer names."""
    spec = yaml.safe_load(open(spec_path))
    root = nn.Module()
    for index, entry in enumerate(spec["layers"]):
        module = _module(entry)
        if module is None:
            continue
        *parents, leaf = entry.get("name", f"layers.{index}").split(".")
        owner = root
        for part in parents:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(leaf, module)
    return root
