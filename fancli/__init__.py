"""fancli: fan_in, fan_out, gain and init std of every layer of a network, exactly as torch computes them.

    >>> import fancli
    >>> report = fancli.inspect("sample_models/lenet5.yaml", scheme="kaiming_normal")
    >>> fancli.render(report, "json")
"""

from .analysis.fans import keras_fans, layer_fans, torch_fans
from .analysis.gains import calculate_gain, gain
from .analysis.schemes import SCHEMES, variance_scaling
from .api import compare, inspect, load
from .errors import FancliError, SettingsError, SourceError
from .layer import Layer, Model
from .renderers import render_text as render
from .report import Report, Row, Settings, analyze

__version__ = "0.1.0"

__all__ = [
    "Layer", "Model", "Report", "Row", "Settings", "SCHEMES", "FancliError", "SettingsError", "SourceError",
    "analyze", "calculate_gain", "compare", "gain", "inspect", "keras_fans", "layer_fans", "load", "render",
    "torch_fans", "variance_scaling",
]
