"""torch's own file formats, `torch.save` zips and legacy pickles, TorchScript and torch.export archives:
which reader each gets. Without `--trust` fancli's own readers, which import no torch and run nothing from
the file; with it, torch's loaders, which run the file's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from ..layer import Model
from . import LoadOptions, loader
from .flat import Flat, built


@dataclass(frozen=True)
class ArchiveReaders:
    """An archive kind's readers, each ".module:function" called `(path, archive)`: fancli's own, and
    torch's loader, which runs the archive's code and is used only with --trust."""

    untrusted: str
    trusted: str

    def reader(self, trust: bool) -> str:
        return self.trusted if trust else self.untrusted


#: Archive kind -> its readers.
ARCHIVE_READERS: dict[str, ArchiveReaders] = {
    "torchscript": ArchiveReaders(".torchscript_archive:read_torchscript", ".torch_module:load_torchscript"),
    "torch-export": ArchiveReaders(".export_archive:read_exported", ".export_program:load_exported"),
}
#: A legacy file fancli's own reader cannot list (a torch type outside its allowlist) goes to torch's
#: weights-only loader, which reads every storage into memory: only up to this size without --trust.
MAX_LEGACY_TORCH_LOAD = 256 * 1024 * 1024


def _model(read: Flat | Model) -> Model:
    return built(read) if isinstance(read, Flat) else read


def load_zip(path: Path, options: LoadOptions) -> Model:
    """torch.save, TorchScript and torch.export archives without torch; with --trust, the last two through
    torch's own loaders, which run the archive's code."""
    return _model(read_zip(path, options))


def read_zip(path: Path, options: LoadOptions) -> Flat | Model:
    """A torch.save zip's entries where fancli's own reader lists them; a Model where the archive is a
    module (TorchScript, torch.export, a pickled module with --trust) or torch's weights-only loader read it."""
    from .torch_pickle import UnsafeGlobal, untrusted_message
    from .torch_zip import TorchZip, read_state_dict

    archive = TorchZip(path)
    if archive.kind in ARCHIVE_READERS:
        return loader(ARCHIVE_READERS[archive.kind].reader(options.trust))(path, archive)
    if archive.kind == "zip":
        raise SourceError(f"{path}: a zip archive, but not one written by torch.save (no <name>/data.pkl)")
    try:
        return read_state_dict(path, archive, options.safe_globals)
    except UnsafeGlobal as refused:
        if options.trust:
            from .torch_module import load_pickled_module

            return load_pickled_module(path, trust=True)
        if refused.module.startswith("torch.") and not refused.module.startswith("torch.nn"):
            from .torch_module import load_weights_only

            return load_weights_only(path)  # a tensor type torch's own safe loader knows
        raise SourceError(untrusted_message(path, f"{refused.module}.{refused.name}")) from None


def load_pickle(path: Path, options: LoadOptions) -> Model:
    """A legacy (pre-1.6) torch.save file: read without torch and without its tensor data unless --trust
    asks torch to unpickle a module. Another pickle goes to torch's weights-only loader, which says what
    it is."""
    return _model(read_pickle(path, options))


def read_pickle(path: Path, options: LoadOptions) -> Flat | Model:
    """A legacy torch.save file's entries where fancli's own reader lists them; a Model where torch read it."""
    if options.trust:
        from .torch_module import load_pickled_module

        return load_pickled_module(path, trust=True)
    from .torch_legacy import NotLegacy, read_legacy
    from .torch_pickle import UnsafeGlobal, untrusted_message

    try:
        return read_legacy(path, options.safe_globals)
    except NotLegacy:
        pass
    except UnsafeGlobal as refused:
        name = f"{refused.module}.{refused.name}"
        if not refused.module.startswith("torch.") or refused.module.startswith("torch.nn"):
            raise SourceError(untrusted_message(path, name)) from None
        size = path.stat().st_size
        if size > MAX_LEGACY_TORCH_LOAD:  # torch would read all of it, tensor data included
            raise SourceError(f"{path}: a legacy torch.save file of {size} bytes holding {name!r}, which fancli's "
                              "reader does not list; torch's loader would read all of it into memory, so files "
                              f"over {MAX_LEGACY_TORCH_LOAD >> 20} MiB are refused (re-save it with torch.save's "
                              "default zip format)") from None
    from .torch_module import load_weights_only

    return load_weights_only(path)
