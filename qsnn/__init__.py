"""qsnn: train quantized neural networks and convert them losslessly into spiking networks."""

__version__ = "0.1.0"

from qsnn.errors import QsnnError
from qsnn.models import NetSpec, QuantizedNet
from qsnn.notation import PRESETS, Plan, build_plan, parse
from qsnn.quantization import Precision

__all__ = [
    "PRESETS",
    "NetSpec",
    "Plan",
    "Precision",
    "QsnnError",
    "QuantizedNet",
    "__version__",
    "build_plan",
    "parse",
]
