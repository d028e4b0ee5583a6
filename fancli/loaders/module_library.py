"""Which library a model's class says built it. torchvision's and timm's models run their init loop in
`__init__`, and a transformers model carries its config: so the root module's class (a live module's, or
the qualified name a TorchScript archive keeps) tells `analysis.recipes.for_source` the recipe. By name
only: nothing is imported, and nothing of an archive runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..layer import BuiltBy
from .hf_facts import built_by

#: A class's module prefix -> the library whose models it names.
_LIBRARIES = {"torchvision.models": "torchvision", "timm.models": "timm", "torchtitan.models": "torchtitan"}
_SCRIPT = "__torch__."  # TorchScript's prefix; a name scripting made unique has a `___torch_mangle_N` part
_MANGLE = "___torch_mangle_"


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def built_by_class(qualified: str, config: dict[str, Any] | None = None) -> BuiltBy | None:
    """The library a class names by its qualified name (`torchvision.models.resnet.ResNet`, TorchScript's
    `__torch__.torchvision.models.resnet.___torch_mangle_3.ResNet`), with the class's name as its model; a
    transformers class with the model's `config` (a dict) gives that config's facts. None for any other."""
    parts = [part for part in qualified.removeprefix(_SCRIPT).split(".") if not part.startswith(_MANGLE)]
    module, name = ".".join(parts[:-1]), parts[-1]
    where = f"module class {'.'.join(parts)}"
    if _under(module, "transformers") and config is not None and isinstance(config.get("model_type"), str):
        found = built_by(config)
        return replace(found, where=f"{where} ({found.where.replace('config.json', 'its config')})")
    for prefix, library in _LIBRARIES.items():
        if _under(module, prefix):
            return BuiltBy(library, name, (), where)
    return None
