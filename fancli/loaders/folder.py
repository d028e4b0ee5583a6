"""A folder as SOURCE: which of the files in it is the model, from what the folder contains.

Layouts are the registered formats' folder ranks (`formats.FolderRank`), tried in rank order; the first
rank with exactly one candidate is read, as that file would be given alone (its config.json beside it
applies too). Several candidates of one rank (two safetensors
files without an index, two indexes) are ambiguous and nothing is guessed: one line lists them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import SourceError
from ..layer import Model
from . import LoadOptions, load_file
from .formats import folder_ranks
from .links import cache_repo, leads_outside

MAX_ENTRIES = 100_000  # a model folder holds tens of files; a huge directory is not scanned to its end
_SHOWN = 8  # file names an error lists
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _looked_for() -> str:
    """The file names a folder is looked in for, in the order the formats rank them, and a PEFT adapter's."""
    return ", ".join([*(rank.pattern for rank in folder_ranks()), f"{PEFT_CONFIG} with {' or '.join(PEFT_WEIGHTS)}"])


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


def with_note(model: Model, source: str, note: str) -> Model:
    return replace(model, source=source, notes=(note, *model.notes))


def load_folder(folder: Path, source: str, options: LoadOptions) -> Model:
    """The model a folder holds, read from the file its layout names; SourceError when none or ambiguous."""
    repo = cache_repo(folder)
    if repo is not None and leads_outside(folder, repo):
        raise SourceError(f"{source}: a Hugging Face cache snapshot that links outside its repo's cache folder "
                          f"({repo}); refused")
    name, note = model_file(_files(folder, source), source)
    return with_note(load_file(folder / name, options), source, note)


def model_file(names: list[str], source: str) -> tuple[str, str]:
    """Which of a folder's files (`names`, local or remote) is the model, and the note that says so."""
    for rank in folder_ranks():
        candidates = [name for name in names if fnmatchcase(name, rank.pattern) and name not in PEFT_WEIGHTS]
        if len(candidates) > 1:
            raise SourceError(f"{source}: is a directory with {len(candidates)} candidates of one kind "
                              f"({rank.what}): {', '.join(candidates[:_SHOWN])}; give one of them as SOURCE")
        if candidates:
            return candidates[0], f"read {candidates[0]} ({rank.what})"
    if PEFT_CONFIG in names:
        weights = [name for name in PEFT_WEIGHTS if name in names]
        if weights:  # the safetensors one first, as PEFT itself prefers it
            note = f"a PEFT adapter ({PEFT_CONFIG}): the adapter's weights only, not its base model's"
            return weights[0], f"read {weights[0]}; {note}"
    raise SourceError(f"{source}: is a directory with no model file fancli reads (looked for {_looked_for()}); "
                      f"{_listing(names)}")
