"""`fancli inspect A B C …`: several SOURCEs make a trajectory (observed statistics per checkpoint).

Several sources imply `--stats` (a trajectory is the weights' statistics; there is nothing else to put
side by side), and refuse the options that only mean something for one report (a scheme, a mode, --infer)
with one line and exit 2, rather than ignore them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .options import SourceArgs

if TYPE_CHECKING:
    from ..report import Request


def run_trajectory(src: SourceArgs, request: Request, fmt: str, output: str | None, show_all: bool, expand: bool,
                   plot_path: str | None) -> None:
    from ..checks.trajectory import natural_order
    from ..errors import SettingsError
    from ..outputs import MACHINE_FORMATS, as_text, formats
    from ..renderers.trajectory_out import without_small_tensors
    from ..safe_io import is_stdout, write_text
    from .run import check_outputs, load_model, terminal_width, write_stdout, wrote

    if len(src.sources) < 2:
        raise SettingsError("--plot draws a trajectory: give several SOURCEs (e.g. run/step-*/)")
    settings = request.settings
    single = {"--infer": request.infer, "--mode": settings.modes, "--scheme": settings.scheme,
              "--nonlinearity": settings.nonlinearity,
              "--param": settings.param is not None, "--fans": settings.fans,
              "--pool-fan-out": settings.pool_fan_out is not None}
    refused = [option for option, given in single.items() if given]
    if refused:
        raise SettingsError(f"{', '.join(refused)}: with several SOURCEs inspect shows each tensor's observed std "
                            "per checkpoint (a trajectory); give one SOURCE for a scheme's numbers")
    if fmt not in formats("trajectory"):
        raise SettingsError(f"--format {fmt}: with several SOURCEs inspect writes a trajectory, as "
                            f"{', '.join(formats('trajectory'))}")
    sources = natural_order(src.sources)
    models = [load_model(replace(src, source=source, sources=(source,)))[0] for source in sources]
    written = output if output and not is_stdout(output) else None
    check_outputs(written, plot_path)  # refused before the weights are read, not after
    found = _read(models, request)
    del models
    if plot_path:
        from ..renderers.plot import plot_trajectory

        shown = found if show_all else without_small_tensors(found)
        plot_trajectory(replace(shown, expanded=expand), plot_path, title="observed std per checkpoint",
                        others=[written])
        wrote(plot_path)
    if fmt not in MACHINE_FORMATS:
        found = without_small_tensors(found) if not show_all else found
        found = replace(found, expanded=expand)
    text = as_text("trajectory", fmt, found, **terminal_width(fmt, output))
    if written:
        write_text(written, text, [plot_path])
        wrote(written)
    else:
        write_stdout(text)



def _read(models: list[Any], request: Request) -> Any:
    """The trajectory, with a progress bar on stderr past PROGRESS_BYTES of weights in all (as inspect's)."""
    from ..checks.trajectory import build
    from ..report import selected
    from .run import nbytes, with_progress

    filters = request.settings.filters
    total = sum(nbytes(layer) for model in models for layer in selected(model, filters) if layer.data is not None)
    return with_progress(total, f"reading {len(models)} checkpoints",
                         lambda on_chunk: build(models, filters, request.jobs, on_chunk=on_chunk,
                                                cluster=request.cluster, spectral=request.spectral))
