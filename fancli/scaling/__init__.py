"""Whether an init keeps working as the model widens: the coordinate check (`sweep`: train a few steps at
several widths, fit each layer's mean |activation| against width), the slopes and verdicts (`slopes`),
and μP's static check from a base-shape file (`base_shapes`). The text and JSON output are
`fancli.renderers.scale`, the chart `fancli.renderers.plot`. Importing `sweep` imports torch; this package's
other modules do not.
"""

from .base_shapes import BaseShapes, ParamScaling, read_base_shapes
from .slopes import FAIL_ON, VERDICTS, fit_slope

__all__ = ["BaseShapes", "ParamScaling", "read_base_shapes", "FAIL_ON", "VERDICTS", "fit_slope"]
