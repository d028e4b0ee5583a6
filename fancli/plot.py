"""`fancli propagate --plot FILE.png`: the per-layer variances as a chart (matplotlib, an optional extra)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from .errors import FancliError
from .propagate import Propagation


def plot_propagation(props: Sequence[Propagation], path: str | Path, title: str | None = None) -> None:
    """Forward and backward variance per layer, one line per mode, on log scales; written atomically."""
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
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".png",
                                dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        figure.savefig(temp, dpi=120)
        os.replace(temp, target)
    except OSError as error:
        raise FancliError(f"{target}: cannot write the plot: {error.strerror or error}") from None
    finally:
        plt.close(figure)
        if os.path.exists(temp):
            os.unlink(temp)
