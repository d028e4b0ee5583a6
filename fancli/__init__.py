"""fancli: fan_in, fan_out, gain and init std of every layer of a network, exactly as torch computes them.

    >>> import fancli
    >>> report = fancli.inspect("sample_models/lenet5.yaml", scheme="kaiming_normal")
    >>> print(fancli.render(report, "markdown"))
    >>> fancli.inspect(model)              # an nn.Module, a state_dict or an ExportedProgram in memory
    >>> fancli.assert_init(model)          # in a pytest test: the init against fancli.lock.json

Names are imported on first use, so `fancli --help` pays only for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "api", "inspect": "api", "compare": "api", "check_init": "api", "assert_init": "api",
    "diff": "api", "trajectory": "api",
    "CheckResult": "checks.check_result", "Config": "config", "load_config": "config",
    "analyze": "report", "Report": "report", "Row": "report", "Settings": "report",
    "Layer": "layer", "Model": "layer",
    "torch_fans": "analysis.fans", "keras_fans": "analysis.fans", "jax_fans": "analysis.fans",
    "layer_fans": "analysis.fans",
    "calculate_gain": "analysis.gains", "gain": "analysis.gains",
    "SCHEMES": "analysis.schemes", "variance_scaling": "analysis.schemes",
    "observe": "weights.stats", "Observed": "weights.stats",
    "FancliError": "errors", "SettingsError": "errors", "SourceError": "errors",
}
__all__ = sorted(_EXPORTS) + ["render", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, so the two never disagree
        from importlib.metadata import version

        from .errors import DISTRIBUTION

        return version(DISTRIBUTION)
    if name == "render":
        from .renderers import render_text

        return render_text
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'fancli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The API, which `__getattr__` imports lazily, so that tab completion and `dir(fancli)` show it."""
    return sorted(__all__)
