"""`fancli scale FACTORY --width 64,128,256`: the width sweep (coordinate check) and μP's base-shape check.
Exit 0 when every module's curve passes, 1 when one fails (a CI gate), 2 on bad input."""

from __future__ import annotations

import click

from .options import format_option, input_shape, kwargs_option, output_option
from .run import check_outputs, write_stdout, wrote


def _widths(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected sizes separated by commas, e.g. 64,128,256,512") from None
    if len(set(widths)) < 2 or min(widths) < 1:
        raise click.BadParameter(f"{value!r}: give at least two different sizes of at least 1")
    return widths


@click.command()
@click.argument("factory", metavar="FACTORY")
@click.option("--width", "widths", required=True, callback=_widths, metavar="W,W,…",
              help="The widths to build the model at, e.g. 64,128,256,512.")
@click.option("--width-key", default="width", show_default=True, metavar="NAME",
              help="The factory's keyword argument that sets the width.")
@kwargs_option("Other keyword arguments for the factory, as a JSON object (the same at every width).")
@click.option("--steps", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Optimizer steps; activations are recorded at steps 0 (the init) to STEPS.")
@click.option("--optimizer", type=click.Choice(("adam", "sgd")), default="adam", show_default=True)
@click.option("--lr", type=float, help="Learning rate (default: mup's, 1e-3 for adam, 0.1 for sgd). A "
                                       "parameter's `lr_scale` attribute multiplies it.")
@click.option("--batch", type=click.IntRange(min=1), help="Random inputs per step (default 64).")
@click.option("--input-shape", callback=input_shape, metavar="DIMS",
              help="One input's shape without the batch (default: the first Linear's in_features).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Runs averaged per width (seeds SEED, SEED+1, …), as mup's nseeds: steadier curves.")
@click.option("--tolerance", type=float, default=0.2, show_default=True,
              help="Largest |slope| (log2 change of mean |output| per doubling of width) that is flat.")
@click.option("--fail-on", type=click.Choice(("any", "grows")), default="any", show_default=True,
              help="Exit 1 on any slope out of tolerance, or only on growth (and NaN/inf).")
@click.option("--base-shapes", type=click.Path(dir_okay=False), metavar="FILE.bsh",
              help="mup's base-shape file: also check each parameter's init std against μP's rule.")
@format_option("scale")
@output_option()
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw mup's coordinate-check chart: a panel per step, a line per module (matplotlib).")
def scale(factory: str, widths: tuple[int, ...], width_key: str, factory_kwargs: dict | None, steps: int,
          optimizer: str, lr: float | None, batch: int | None, input_shape: tuple[int, ...] | None, seed: int,
          seeds: int, tolerance: float, fail_on: str, base_shapes: str | None, fmt: str, output: str | None,
          plot_path: str | None) -> None:
    """Build FACTORY (pkg.module:callable, your own code) at each width, train a few steps on random inputs
    and fit each module's mean |output| against width: flat curves mean the parametrization scales (μP),
    growing ones that it blows up as the model widens. Exit 1 when a module's slope is out of tolerance."""
    from ..outputs import as_text
    from ..safe_io import is_stdout, write_text
    from ..scaling import read_base_shapes
    from ..scaling.sweep import width_sweep

    base = read_base_shapes(base_shapes) if base_shapes else None
    written = output if output and not is_stdout(output) else None
    check_outputs(written, plot_path)  # refused before the sweep, not after

    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("width sweep", total=len(set(widths)))
        result = width_sweep(factory, widths, width_key=width_key, kwargs=factory_kwargs, steps=steps,
                             optimizer=optimizer, lr=lr, batch=batch, input_shape=input_shape, seed=seed, seeds=seeds,
                             tolerance=tolerance, fail_on=fail_on, base_shapes=base,
                             on_width=lambda index, width: bar.update(task, completed=index,
                                                                      description=f"width {width}"))
    text = as_text("scale", fmt, result)
    if plot_path:
        from ..renderers.plot import plot_scale

        plot_scale(result, plot_path, title=factory, others=[written])
        wrote(plot_path)
    if written:
        write_text(written, text, [plot_path])
    else:
        write_stdout(text)
    if not result.ok:
        raise click.exceptions.Exit(1)
