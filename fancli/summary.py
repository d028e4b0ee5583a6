"""What a report adds up to: tensors, parameters and bytes — the totals every peer prints first.

Counted over unique tensors: loaders report a tied tensor once and list its other keys as `aliases`, so
the parameter count is right where counting every key (as torchinfo does) counts a tie twice. Parameters
are what `sum(p.numel() for p in model.parameters())` counts: a persistent buffer a state_dict holds
(GPT-2's causal masks, rotary `inv_freq`: kind `buffer`) is counted apart. Bytes are the bytes stored,
buffers' too: a packed quantized weight reported with its logical shape counts its stored one
(`Layer.stored_shape`). Computed once per report (`Report.totals`), before tables fold small tensors
away, and only formatted by renderers.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from typing import Iterable

from .layer import Layer, LayerTable
from .records import record
from .weights.dtypes import DTYPES

#: What a source without dtypes (a YAML spec, a factory's shapes) is counted as, and said to be.
ASSUMED_DTYPE = "float32"


@record
class Totals:
    tensors: int
    parameters: int  # elements of the unique tensors but buffers: a tied tensor counts once
    tied_keys: int  # further keys naming a tensor already counted
    bytes_by_dtype: dict[str, int]  # dtype -> bytes (itemsize × elements), dtypes in order of first appearance
    dtype_assumed: bool  # some tensors had no dtype and were counted as ASSUMED_DTYPE
    unsized: tuple[str, ...] = ()  # dtypes whose itemsize fancli does not know: their bytes are not counted
    buffers: int = 0  # elements of the persistent buffers (kind `buffer`), not parameters

    @property
    def bytes(self) -> int | None:
        """All bytes, or None where a dtype's size is unknown (a partial sum would read as the total)."""
        return None if self.unsized else sum(self.bytes_by_dtype.values())


def numel(layer: Layer) -> int:
    return math.prod(layer.shape)


#: What a layer adds to the totals: layers equal in these add alike (`totals` sums each distinct tuple once).
COUNTED = operator.attrgetter("shape", "stored_shape", "dtype", "kind", "copy_of", "aliases")


def totals(layers: Iterable[Layer], alike: list[tuple[tuple, int]] | None = None) -> Totals:
    """The totals of `layers`, summed once per distinct `COUNTED` fields × how many layers have them (in one C
    loop: 92,000 tensors of a MoE checkpoint are a few dozen), in order of first appearance, so dtypes are too.
    `alike`: those fields and counts, where the caller has them (a report's analysis numbers its layers by
    fields that include them), in the layers' order of first appearance."""
    layers = list(layers)
    if alike is None:
        try:
            alike = list(Counter(map(COUNTED, layers)).items())
        except TypeError:  # a loader left a list where a tuple belongs: each layer on its own
            alike = [(key, 1) for key in map(COUNTED, layers)]
    tensors = parameters = buffers = tied = 0
    by_dtype: dict[str, int] = {}
    assumed, unsized = False, []
    # the keys, only where a layer is a copy of one (90,000 keys hashed for none, otherwise)
    present = {layer.param for layer in layers} if any(key[4] is not None for key, _ in alike) else ()
    for (shape, stored_shape, dtype, kind, copy_of, aliases), times in alike:
        count = math.prod(shape)
        tensors += times
        if copy_of in present:  # a tied key stored twice: its tensor's parameters are counted once
            tied += times
        elif kind == "buffer":
            buffers += count * times
        else:
            parameters += count * times
        tied += len(aliases) * times
        assumed = assumed or dtype is None
        dtype = dtype or ASSUMED_DTYPE
        if dtype not in DTYPES:
            unsized += [dtype] if dtype not in unsized else []
            continue
        stored = count if stored_shape is None else math.prod(stored_shape)
        by_dtype[dtype] = by_dtype.get(dtype, 0) + DTYPES[dtype][0] * stored * times
    return Totals(tensors, parameters, tied, by_dtype, assumed, tuple(unsized), buffers)


def layers_totals(layers: Iterable[Layer]) -> Totals:
    """`totals` of a model's layers: a LayerTable's counted once per template × its layers (no Layer made),
    where no template is a copy stored twice (whose count needs every key)."""
    if isinstance(layers, LayerTable) and not any(map(_COPY_OF, layers.templates)):
        counts = Counter(layers.kin)
        return totals(layers.templates, [(COUNTED(layer), counts[number]) for number, layer in
                                         enumerate(layers.templates)])
    return totals(layers)


_COPY_OF = operator.attrgetter("copy_of")
