"""`fancli propagate --plot FILE.png`: the per-layer variances as a chart (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ..errors import FancliError

if TYPE_CHECKING:
    from ..propagate import Propagation


def plot_propagation(props: Sequence[Propagation], path: str | Path, title: str | None = None,
                     inputs: Iterable[str | Path | None] = ()) -> None:
    """Forward and backward variance per layer, one line per mode, on log scales; written through the same
    atomic, checked writer as every report (never over an input, a device, or a symlink itself)."""
    from ..safe_io import checked_target, write_with
    from ..text import printable

    checked_target(path, inputs)  # refuse before drawing
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise FancliError("--plot needs matplotlib: pip install 'fancli[plot]'") from None
    figure, (forward, backward) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for prop in props:
        depth = range(1, len(prop.layers) + 1)
        forward.plot(depth, [s.forward_var for s in prop.layers], marker=".", label=prop.mode)
        backward.plot(depth, [s.backward_var for s in prop.layers], marker=".", label=prop.mode)
    for axes, what in ((forward, "activation variance (forward)"), (backward, "gradient variance (backward)")):
        axes.set_yscale("log", base=2)
        axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axes.set_xlabel("layer")
        axes.set_title(what)
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    suffix = Path(path).suffix or ".png"

    def fill(temp_name: str) -> None:
        try:
            figure.savefig(temp_name, dpi=120, format=suffix[1:].lower())
        except ValueError as error:  # a format matplotlib does not write, e.g. FILE.xyz
            raise FancliError(f"{printable(path)}: cannot write the plot: {error}") from None

    try:
        write_with(path, fill, inputs, suffix=suffix)
    finally:
        plt.close(figure)
