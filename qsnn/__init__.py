"""qsnn: train quantized neural networks and convert them losslessly into spiking networks.

The public API, imported lazily so that ``import qsnn.deploy.runner`` (the pure-NumPy
reference runner) never loads PyTorch::

    from qsnn import build_plan, NetSpec, Precision, QuantizedNet      # networks
    from qsnn import train, TrainConfig, load_checkpoint                # training
    from qsnn import convert, SpikingNet, reference_counts              # conversion
    from qsnn import simulate, summarize                                # simulation
    from qsnn import SpikingGraph, simulate_graph, model_agreement      # a model of one's own
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "QsnnError": "qsnn.errors",
    "PRESETS": "qsnn.net.notation",
    "Plan": "qsnn.net.notation",
    "build_plan": "qsnn.net.notation",
    "parse": "qsnn.net.notation",
    "Precision": "qsnn.net.quantization",
    "SCHEMES": "qsnn.snn.schemes",
    "Scheme": "qsnn.snn.schemes",
    "NetSpec": "qsnn.net.models",
    "QuantizedNet": "qsnn.net.models",
    "TrainConfig": "qsnn.train.config",
    "train": "qsnn.train.loop",
    "evaluate": "qsnn.train.loop",
    "load_checkpoint": "qsnn.train.checkpoint",
    "SpikingNet": "qsnn.snn.model",
    "convert": "qsnn.snn.convert",
    "reference_counts": "qsnn.snn.reference",
    "ANNResult": "qsnn.snn.exact",
    "ExactANN": "qsnn.snn.exact",
    "evaluate_exact": "qsnn.snn.exact",
    "SpikingGraph": "qsnn.snn.graph",
    "simulate": "qsnn.sim.run",
    "simulate_graph": "qsnn.sim.graph",
    "model_agreement": "qsnn.sim.graph",
    "SimulationResult": "qsnn.sim.run",
    "summarize": "qsnn.report.summary",
    "RunSpec": "qsnn.pipeline",
    "execute": "qsnn.pipeline",
    "export_package": "qsnn.deploy.export",
    "export_nir": "qsnn.deploy.export",
    "map_cores": "qsnn.deploy.mapping",
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
