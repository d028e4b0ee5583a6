"""A folder as SOURCE: which of the files in it is the model, from what the folder contains.

Layouts are tried in rank order; the first rank with exactly one candidate is read, as that file would be
given alone (its config.json beside it applies too). Several candidates of one rank (two safetensors
files without an index, two indexes) are ambiguous and nothing is guessed: one line lists them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import SourceError
from ..layer import Model
from . import LoadOptions, load_file, loader
from .links import cache_repo, leads_outside

MAX_ENTRIES = 100_000  # a model folder holds tens of files; a huge directory is not scanned to its end
_SHOWN = 8  # file names an error lists
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DCP_METADATA = ".metadata"

#: (what a rank is called, whether a file name is a candidate of it), in rank order.
RANKS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("a safetensors index", lambda name: name.endswith(".safetensors.index.json")),
    ("a safetensors file", lambda name: name.endswith(".safetensors") and name not in PEFT_WEIGHTS),
    ("a .bin index", lambda name: name.endswith(".bin.index.json")),
    ("pytorch_model.bin", lambda name: name == "pytorch_model.bin"),
)
LOOKED_FOR = ("*.safetensors.index.json, *.safetensors, *.bin.index.json, pytorch_model.bin, a torch.distributed."
              f"checkpoint {DCP_METADATA}, {PEFT_CONFIG} with {' or '.join(PEFT_WEIGHTS)}")


def _files(folder: Path, source: str) -> list[str]:
    """The names of the regular files in `folder` (symlinks to files too: a Hub snapshot is made of them)."""
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES:
                    raise SourceError(f"{source}: a directory of more than {MAX_ENTRIES} entries; give the model file")
                try:
                    if entry.is_file():
                        names.append(entry.name)
                except OSError:
                    continue
    except PermissionError:
        raise SourceError(f"{source}: permission denied") from None
    except OSError as error:
        raise SourceError(f"{source}: cannot read: {error.strerror or error}") from None
    return sorted(names)


def _listing(names: list[str]) -> str:
    if not names:
        return "it holds no files"
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"it holds {', '.join(names[:_SHOWN])}{more}"


def _dcp(folder: Path, source: str, options: LoadOptions) -> Model:
    """A torch.distributed.checkpoint folder, through its own loader where this fancli has one, with the
    folder's own config.json applied (beside `.metadata`, as it is when `.metadata` is the source)."""
    try:
        read = loader("dcp:load_dcp")
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.dcp":
            raise
        raise SourceError(f"{source}: a torch.distributed.checkpoint folder: not readable by this fancli") from None
    from .hf_config import with_config

    return with_config(read(folder, options), folder / DCP_METADATA)


def _with_note(model: Model, source: str, note: str) -> Model:
    return replace(model, source=source, notes=(note, *model.notes))


def load_folder(folder: Path, source: str, options: LoadOptions) -> Model:
    """The model a folder holds, read from the file its layout names; SourceError when none or ambiguous."""
    repo = cache_repo(folder)
    if repo is not None and leads_outside(folder, repo):
        raise SourceError(f"{source}: a Hugging Face cache snapshot that links outside its repo's cache folder "
                          f"({repo}); refused")
    names = _files(folder, source)
    for what, matches in RANKS:
        candidates = [name for name in names if matches(name)]
        if len(candidates) > 1:
            raise SourceError(f"{source}: is a directory with {len(candidates)} candidates of one kind "
                              f"({what}): {', '.join(candidates[:_SHOWN])}; give one of them as SOURCE")
        if candidates:
            return _with_note(load_file(folder / candidates[0], options), source, f"read {candidates[0]} ({what})")
    if DCP_METADATA in names:
        return _dcp(folder, source, options)
    if PEFT_CONFIG in names:
        weights = [name for name in PEFT_WEIGHTS if name in names]
        if weights:  # the safetensors one first, as PEFT itself prefers it
            note = f"a PEFT adapter ({PEFT_CONFIG}): the adapter's weights only, not its base model's"
            return _with_note(load_file(folder / weights[0], options), source, f"read {weights[0]}; {note}")
    raise SourceError(f"{source}: is a directory with no model file fancli reads (looked for {LOOKED_FOR}); "
                      f"{_listing(names)}")
