"""Trajectories: several checkpoints of one run (`fancli inspect run/step-*/ --stats`), each tensor's
observed statistics per checkpoint, side by side.

Sources are put in natural order (`step-2` before `step-10`, `fancli.loaders.key_order.natural_key`) and
labelled by the step number in their name. Each checkpoint is loaded and its weights read one at a time
(`stats.observe_all`, as `inspect --stats`), and only the statistics are kept: never two models'
weights in memory. Tensors are paired by key; a key missing from a checkpoint is a gap (`None`), not an
error. Folding reuses `fancli.folding.fold`: keys that differ only in their numeric components, of one
kind, shape and dtype, present in the same checkpoints, fold while at every checkpoint their observed stds
(sorted) stay within `folding.STD_ERRORS` standard errors (σ/√(2n)) of each other, as inspect folds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Sequence

if TYPE_CHECKING:
    from ..folding import Group
    from ..layer import Model
    from ..weights.moments import Observed
    from ..weights.spectral import Spectrum

_DIGITS = re.compile(r"[0-9]+")


def natural_order(sources: Iterable[str]) -> list[str]:
    """Sources as a run lists them: `step-2` before `step-10` (digit runs compare as numbers)."""
    from ..loaders.key_order import natural_key

    return sorted(sources, key=natural_key)


def step_of(source: str) -> int | None:
    """The step a checkpoint's name gives: the last number in its last path component, or in the folder of
    a file whose own name has none (`run/step-120/` -> 120, `ckpt_00500.pt` -> 500,
    `run/step-3/model.safetensors` -> 3); None if neither has one."""
    path = PurePath(str(source))
    for part in (path, path.parent) if path.suffix else (path,):
        found = _DIGITS.findall(part.stem if part.suffix else part.name)
        if found:
            return int(found[-1])
    return None


def steps(sources: Sequence[str]) -> list[int | None]:
    """Each source's step, or all None where the names do not give distinct steps (then the names label
    the columns)."""
    found = [step_of(source) for source in sources]
    if None in found or len(set(found)) != len(found):
        return [None] * len(sources)
    return found  # type: ignore[return-value]


@dataclass(frozen=True)
class Checkpoint:
    source: str
    format: str
    step: int | None

    @property
    def label(self) -> str:
        return str(self.step) if self.step is not None else self.source


@dataclass(frozen=True)
class Track:
    """One parameter key across the checkpoints: what it is (from the first checkpoint that has it) and
    its statistics in each (None where the checkpoint lacks the key; a key tied to another tensor there
    has that tensor's)."""

    param: str
    kind: str
    shape: tuple[int, ...]
    dtype: str | None
    observed: tuple["Observed | None", ...]
    spectral: tuple["Spectrum | None", ...] = ()  # with --spectral: ‖W‖₂ and ‖W‖_F² per checkpoint


@dataclass(frozen=True)
class Trajectory:
    checkpoints: tuple[Checkpoint, ...]
    tracks: tuple[Track, ...]
    filters: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    expanded: bool = False  # tables: one row per tensor (--expand)
    spectral: bool = False  # each track's ‖W‖₂ per checkpoint was read (--spectral)

    @property
    def groups(self) -> "list[Group]":
        """The tracks folded as tables show them (every track in exactly one group)."""
        return fold_tracks(self.tracks)

    @property
    def shown(self) -> "list[Group]":
        from ..folding import Group

        if self.expanded:
            return [Group(track.param, (), (track,)) for track in self.tracks]
        return self.groups


def build(models: Sequence["Model"], filters: tuple[str, ...] = (), jobs: int | None = 1,
          observe: Callable[..., dict[str, "Observed"]] | None = None,
          on_chunk: Callable[[int], None] | None = None, cluster: Any = None, spectral: bool = False) -> Trajectory:
    """The trajectory of `models` (in the order given): each one's weights read, one model at a time, with
    `jobs` threads or on a Dask `cluster` as inspect's are; `on_chunk(nbytes)` reports progress. `spectral`
    adds each ≥2-D tensor's ‖W‖₂ and stable rank per checkpoint (`fancli.spectral`)."""
    from ..report import selected_keys

    if spectral:
        from ..spectral import read_spectra
        from ..weights.spectral import require_scipy

        require_scipy()
    spectra: list[dict[str, Any]] = []

    if observe is None:
        from ..weights.stats import observe_all as observe
    labels = steps([model.source for model in models])
    checkpoints = tuple(Checkpoint(model.source, model.format, step) for model, step in zip(models, labels))
    described: dict[str, tuple[str, tuple[int, ...], str | None]] = {}
    per_checkpoint: list[dict[str, Observed]] = []
    notes = []
    reshaped: dict[str, str] = {}  # param -> where its shape first changed
    for model, checkpoint in zip(models, checkpoints):
        keys = selected_keys(model, filters)
        for key, layer in keys:
            first = described.setdefault(key, (layer.kind, tuple(layer.shape), layer.dtype))
            if first[1] != tuple(layer.shape) and key not in reshaped:
                where = checkpoint.source if checkpoint.step is None else f"step {checkpoint.step}"
                reshaped[key] = f"{key}: {list(first[1])} becomes {list(layer.shape)} at {where}"
        layers = list({id(layer): layer for _, layer in keys}.values())  # a tied tensor read once
        found: dict = {}
        read: dict = {}
        if spectral and layers:  # each ≥2-D tensor read once: its statistics from its spectral job's chunks
            found, read = read_spectra(layers, jobs, cluster, on_chunk, (False, False))
        rest = [layer for layer in layers if layer.param not in read]
        read |= observe(rest, on_chunk, jobs=jobs, cluster=cluster) if rest else {}
        if layers and not read:
            notes.append(f"{model.source}: this source ({model.format}) holds no weights to read")
        per_checkpoint.append({key: read[layer.param] for key, layer in keys if layer.param in read})
        if spectral:
            spectra.append({key: found[layer.param].whole for key, layer in keys if layer.param in found})
    if filters and not described:
        from ..errors import SettingsError

        raise SettingsError(f"no layer matches {' or '.join(repr(f) for f in filters)} in any checkpoint")
    tracks = tuple(Track(param, kind, shape, dtype, tuple(read.get(param) for read in per_checkpoint),
                         tuple(found.get(param) for found in spectra))
                   for param, (kind, shape, dtype) in described.items())
    notes += [f"{change} (its statistics on either side are of different tensors)" for change in reshaped.values()]
    gaps = sum(1 for track in tracks if None in track.observed)
    if gaps:
        notes.append(f"{gaps} tensor{'s' * (gaps != 1)} missing from some checkpoints (shown as —)")
    return Trajectory(checkpoints, tracks, filters, tuple(notes), spectral=spectral)


# --- folding ---------------------------------------------------------------------------------------------


def _same(track: Track) -> Hashable:
    """What must be equal for tracks to fold: kind, shape, dtype, which checkpoints hold the key, and the
    NaN/Inf counts (shown where not zero)."""
    return (track.kind, track.shape, track.dtype,
            tuple(o is None for o in track.observed),
            tuple(None if o is None else (o.nonfinite, o.std is None) for o in track.observed))


def _chain(tracks: list[Track], index: int) -> list[list[Track]]:
    """`tracks` parted by their std at checkpoint `index` (`folding.by_std`: inspect's rule)."""
    from ..folding import by_std

    def std_of(track: Track) -> tuple[float | None, int]:
        observed = track.observed[index]
        return (None, 0) if observed is None else (observed.std, observed.count - observed.nonfinite)

    return by_std(tracks, std_of)


def agreeing(tracks: list[Track]) -> list[list[Track]]:
    """Tracks whose observed stds agree at every checkpoint (each checkpoint parts the groups further)."""
    parts = [tracks]
    width = len(tracks[0].observed) if tracks else 0
    for index in range(width):
        parts = [piece for part in parts for piece in _chain(part, index)]
    return parts


def fold_tracks(tracks: Sequence[Track]) -> "list[Group]":
    from ..folding import fold

    return fold(list(tracks), lambda track: track.param, _same, agreeing)
