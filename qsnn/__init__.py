"""qsnn: train quantized neural networks and convert them losslessly into spiking networks.

The public API, imported lazily so that ``import qsnn.deploy`` (the pure-NumPy reference
runner) never loads PyTorch::

    from qsnn import build_plan, NetSpec, Precision, QuantizedNet      # networks
    from qsnn import train, TrainConfig, load_checkpoint                # training
    from qsnn import convert, SpikingNet, reference_counts              # conversion
    from qsnn import simulate, summarize                                # simulation
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "QsnnError": "qsnn.errors",
    "PRESETS": "qsnn.notation",
    "Plan": "qsnn.notation",
    "build_plan": "qsnn.notation",
    "parse": "qsnn.notation",
    "Precision": "qsnn.quantization",
    "NetSpec": "qsnn.models",
    "QuantizedNet": "qsnn.models",
    "TrainConfig": "qsnn.training",
    "train": "qsnn.training",
    "evaluate": "qsnn.training",
    "load_checkpoint": "qsnn.training",
    "SpikingNet": "qsnn.conversion",
    "convert": "qsnn.conversion",
    "reference_counts": "qsnn.conversion",
    "ExactANN": "qsnn.exact",
    "evaluate_exact": "qsnn.exact",
    "simulate": "qsnn.simulation",
    "SimulationResult": "qsnn.simulation",
    "summarize": "qsnn.reporting",
    "RunSpec": "qsnn.pipeline",
    "execute": "qsnn.pipeline",
    "export_package": "qsnn.export",
    "export_nir": "qsnn.export",
    "map_cores": "qsnn.mapping",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'qsnn' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
