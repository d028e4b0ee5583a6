"""`--plot FILE.png`: charts (matplotlib, an optional extra) for `propagate` and for trajectories, written
through the same atomic, checked writer as every report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..errors import FancliError

if TYPE_CHECKING:
    from ..checks.trajectory import Trajectory
    from ..propagate import Propagation
    from ..scaling.sweep import WidthSweep


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise FancliError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


#: What `--plot` writes, by the file's suffix: formats matplotlib writes with no outside program (no
#: LaTeX, as `.pgf` needs).
FORMATS = {".png": "png", ".svg": "svg", ".svgz": "svgz", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpeg",
           ".webp": "webp", ".tif": "tif", ".tiff": "tiff", ".eps": "eps", ".ps": "ps"}
#: Characters of a key, a source or a title a chart shows: a 1 MB key would take minutes and a gigabyte to lay
#: out, and no chart has room for it.
LABEL_CHARS = 80


def checked_plot(path: str | Path, others: Iterable[str | Path | None] = ()) -> str:
    """The format a plot at `path` is written in; FancliError (exit 2) where `path` is a file this run reads
    or also writes (`checked_target`), or its suffix names no image format fancli writes."""
    from ..safe_io import checked_target
    from ..text import printable

    checked_target(path, others)
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise FancliError(f"{printable(path)}: --plot writes an image named by its suffix: "
                          f"{', '.join(FORMATS)}, not {printable(suffix) or 'a name without one'}")
    return FORMATS[suffix]


def literal(text: object) -> str:
    """`text` from a file as a chart shows it, as it is: printable, at most LABEL_CHARS (its start and end
    kept), every `$` escaped (matplotlib would read `$…$` as mathtext, and refuse `$\\frac{$`), and a leading
    `_` kept visible (a legend leaves out labels that start with one)."""
    from ..text import printable

    text = str(text)
    if len(text) > LABEL_CHARS:
        half = LABEL_CHARS // 2
        text = f"{text[:half - 1]}…{text[-half:]}"
    text = printable(text).replace("$", "\\$")
    return "\u200b" + text if text.startswith("_") else text


def _save(plt: Any, figure: Any, path: str | Path, others: Iterable[str | Path | None], dpi: int = 120) -> None:
    """Write `figure` to `path` atomically (never over a file the run reads, a device, or a symlink itself);
    a format matplotlib fails to write is one line."""
    from ..loaders.factory import one_line
    from ..safe_io import write_with
    from ..text import printable

    others = list(others)
    fmt = checked_plot(path, others)

    def fill(temp_name: str) -> None:
        try:
            figure.savefig(temp_name, dpi=dpi, format=fmt)
        except OSError:
            raise  # write_with says it: cannot write
        except Exception as error:  # noqa: BLE001 - matplotlib's writers raise ValueError, RuntimeError…
            raise FancliError(f"{printable(path)}: cannot write the plot ({one_line(error)})") from None

    try:
        write_with(path, fill, others, suffix=Path(path).suffix)
    finally:
        plt.close(figure)


def plot_propagation(props: Sequence[Propagation], path: str | Path, title: str | None = None,
                     others: Iterable[str | Path | None] = ()) -> None:
    """Forward and backward variance per layer, one line per mode, on log scales."""
    others = list(others)
    checked_plot(path, others)  # refuse before drawing
    plt = _pyplot()
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
        figure.suptitle(literal(title))
    figure.tight_layout()
    _save(plt, figure, path, others)


#: Past this many lines the legend would hide the chart: it is left out (the table names the groups).
LEGEND_LINES = 16
#: Past this many checkpoints without steps the x axis gives their positions, not their names.
TICK_NAMES = 40


def plot_trajectory(trajectory: "Trajectory", path: str | Path, title: str | None = None,
                    others: Iterable[str | Path | None] = ()) -> None:
    """Observed std against the step (or the checkpoint's position, where names give no steps), one line per
    folded group: the members' median, with a band from their smallest to their largest std. A checkpoint
    without the key leaves a gap. Log-scale y where the stds span more than a factor of 4; a symlog x where
    the steps span more than a factor of 50."""
    import statistics

    others = list(others)
    checked_plot(path, others)
    plt = _pyplot()
    steps = [c.step for c in trajectory.checkpoints]
    xs = steps if None not in steps else list(range(len(steps)))
    figure, axes = plt.subplots(figsize=(8, 4.5))
    everything = []
    groups = trajectory.shown
    for group in groups:
        median, low, high = [], [], []
        for index in range(len(xs)):
            stds = [t.observed[index].std for t in group.rows
                    if t.observed[index] is not None and t.observed[index].std is not None]
            median.append(statistics.median(stds) if stds else float("nan"))  # NaN: matplotlib leaves a gap
            low.append(min(stds) if stds else float("nan"))
            high.append(max(stds) if stds else float("nan"))
            everything += stds
        label = literal(group.pattern) + ("" if group.count == 1 else f" ×{group.count}")
        line, = axes.plot(xs, median, marker=".", label=label)
        if group.count > 1:
            axes.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    positive = [s for s in everything if s > 0]
    if positive and max(positive) > 4 * min(positive):
        axes.set_yscale("log")
    positive_steps = [x for x in xs if x > 0]
    if None not in steps and positive_steps and max(positive_steps) >= 50 * min(positive_steps):
        axes.set_xscale("symlog", linthresh=min(positive_steps))  # early steps apart, step 0 kept
    if None not in steps:
        axes.set_xlabel("step")
    elif len(xs) <= TICK_NAMES:
        axes.set_xlabel("checkpoint")
        axes.set_xticks(xs, [literal(c.source) for c in trajectory.checkpoints], rotation=30, ha="right")
    else:  # thousands of names would take minutes to lay out, and could not be read
        axes.set_xlabel("checkpoint (position in natural order)")
    axes.set_ylabel("observed std")
    if len(groups) <= LEGEND_LINES:
        axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        axes.set_title(literal(title))
    figure.tight_layout()
    _save(plt, figure, path, others, dpi=80)


#: Panels a width sweep's chart draws at most: the first and last steps and ones evenly between.
MAX_PANELS = 8


def plot_scale(sweep: WidthSweep, path: str | Path, title: str | None = None,
               others: Iterable[str | Path | None] = ()) -> None:
    """mup's coordinate-check chart: one panel per step, each module's mean |output| against width, log2
    axes; a flat line scales. A value that is 0 or not finite leaves a gap."""
    import math

    others = list(others)
    checked_plot(path, others)
    plt = _pyplot()
    count = min(sweep.steps + 1, MAX_PANELS)
    steps = sorted({round(i * sweep.steps / max(count - 1, 1)) for i in range(count)})
    figure, axes = plt.subplots(1, len(steps), figsize=(2.2 + 3.2 * len(steps), 3.8), sharey=True, squeeze=False)
    anything = False
    for step, ax in zip(steps, axes[0]):
        for layer in sweep.layers:
            ys = [v if math.isfinite(v) and v > 0 else float("nan") for v in layer.values[step]]
            anything = anything or any(y == y for y in ys)
            ax.plot(sweep.widths, ys, marker=".", label=literal(f"{layer.name} ({layer.kind})"))
        ax.set_xscale("log", base=2)
        ax.set_title(f"step {step}")
        ax.set_xlabel(literal(sweep.width_key))
    if anything:  # a log axis with no positive value would only warn
        axes[0][0].set_yscale("log", base=2)
    axes[0][0].set_ylabel("mean |output|")
    if len(sweep.layers) <= LEGEND_LINES:
        axes[0][-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        figure.suptitle(literal(title))
    figure.tight_layout()
    _save(plt, figure, path, others, dpi=80)
