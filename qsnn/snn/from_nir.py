"""A NIR graph read as a quantized network: the operations of :mod:`qsnn.snn.trace`.

A NIR graph has a quantized meaning when it is read for one time step with the neurons
starting at rest: an ``IF`` node then emits z = [r v > theta] for its input v (NIR's
rule, strictly above), and a ``Threshold`` node z = [v > theta]. Each is a layer of
binary neurons: a population of count level k = 0 and bound B = 1, whose threshold of
its own is kept exactly (``attrs["above"]``, theta / r per channel; qsnn's graph
conversion turns it into an integer shift of the membrane). That is how qsnn's own SG
export writes a network (every level of a channel a binary copy), and how binary
networks of other tools can be written. The imported network converts under any scheme.

Read: ``Input``, ``Output``, ``Conv2d`` (with bias; 'same' padding with odd kernels),
``Linear``, ``Affine``, ``Scale`` (per channel), ``Flatten`` (to a vector),
``SumPool2d``, ``AvgPool2d``, ``IF`` and ``Threshold`` with per-channel parameters. A
node with several incoming edges sums them (NIR's rule). Leaky neurons (``LIF``,
``CubaLIF``, ``LI``) and integrators have no quantized meaning: their output depends on
time constants and the time step; they are refused in one line, as is anything else.

The input is the image's pixels: raw (0..255, as qsnn's NIR export takes them) or scaled
to 0..1 (x = p / 255, as a model of one's own takes them).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.snn.trace import Op, users_of

READ = "Input, Output, Conv2d, Linear, Affine, Scale, Flatten, SumPool2d, AvgPool2d, IF and Threshold"
INPUT_RANGES = ("raw", "unit")  # pixels 0..255, or p / 255


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_nir_file(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file (the container NIR writes) or is named .nir."""
    path = Path(path)
    if path.suffix.lower() == ".nir":
        return True
    try:
        with path.open("rb") as file:
            return file.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def read_nir(path: str | Path):
    """The NIR graph in the file ``path``; one line for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise QsnnError(f"no NIR file at {path}; check the path")
    try:
        import nir
    except ImportError:
        raise QsnnError("reading NIR needs the nir package: pip install 'qsnn[nir]'") from None
    try:
        return nir.read(str(path), type_check=False)  # (shapes are checked as the graph is read)
    except Exception as error:  # h5py and nir raise many types for files that are not NIR graphs
        reason = " ".join(str(error).split())[:160]
        raise QsnnError(f"{path} is not a readable NIR graph ({type(error).__name__}: {reason}); "
                        "give an .nir file written by nir.write") from None


def default_input_range(graph) -> str:
    """'raw' for qsnn's own exports (they take the pixels 0..255), 'unit' for the others."""
    return "raw" if getattr(graph, "metadata", {}).get("format") == "qsnn-nir" else "unit"


def nir_ops(graph, input_range: str) -> list[Op]:
    """The operations of a NIR graph read for one time step (the module docstring)."""
    import nir

    if input_range not in INPUT_RANGES:
        raise QsnnError(f"the NIR input range is one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    _check_portable(graph)
    nodes = dict(graph.nodes)
    incoming: dict[str, list[str]] = {name: [] for name in nodes}
    for source, target in graph.edges:
        if source not in nodes or target not in nodes:
            raise QsnnError(f"the NIR edge {source} -> {target} names a node the graph lacks "
                            "(subgraphs are not read; flatten the graph)")
        incoming[target].append(source)
    starts = [name for name, node in nodes.items() if isinstance(node, nir.Input)]
    ends = [name for name, node in nodes.items() if isinstance(node, nir.Output)]
    if len(starts) != 1 or len(ends) != 1:
        raise QsnnError(f"a NIR graph to convert has one Input and one Output node; this one has {len(starts)} and {len(ends)}")
    ops: list[Op] = []
    values: dict[str, torch.Tensor] = {}  # a zero example of each node's output, for the shapes
    for name in _execution_order(nodes, incoming, starts[0]):
        node, sources = nodes[name], incoming[name]
        if isinstance(node, nir.Input):
            shape = tuple(int(size) for size in np.asarray(node.input_type["input"]).reshape(-1))
            if len(shape) != 3:
                raise QsnnError(f"the NIR input {name!r} has shape {shape}; qsnn converts images (channels, height, width)")
            ops.append(Op(name, "input", (), shape, attrs={"denominator": 1 if input_range == "raw" else None}))
            values[name] = torch.zeros((1, *shape), dtype=torch.float64)
            continue
        if not sources:
            raise QsnnError(f"the NIR node {name!r} has no incoming edge; every node must be reached from the Input")
        if len(sources) > 1:  # NIR sums a node's inputs
            total = f"{name}_sum"
            ops.append(Op(total, "add", tuple(sources), _same_shape(name, [values[s] for s in sources])))
            values[total] = values[sources[0]]
            sources = [total]
        op = _op(name, node, sources[0], values[sources[0]])
        values[name] = _example(op, values[sources[0]])
        op.shape = tuple(values[name].shape[1:])
        ops.append(op)
    return _exclusive_sources(ops)


def _check_portable(graph) -> None:
    metadata = getattr(graph, "metadata", {}) or {}
    if metadata.get("format") == "qsnn-nir" and not metadata.get("portable", True):
        raise QsnnError(
            f"this NIR file is qsnn's export of a {str(metadata.get('scheme', '')).upper()} network, whose negative "
            "spikes and adapting thresholds standard NIR cannot hold; convert the qsnn network it came from, "
            "or export that network's SG conversion to NIR"
        )


def _execution_order(nodes: dict, incoming: dict[str, list[str]], start: str) -> list[str]:
    """Every node after all its sources; a cycle or an unreachable node is refused."""
    order, placed = [start], {start}
    pending = [name for name in nodes if name != start]
    while pending:
        ready = [name for name in pending if all(source in placed for source in incoming[name])]
        if not ready:
            raise QsnnError(f"the NIR graph has a cycle or nodes not reached from its Input ({', '.join(pending[:4])}); "
                            "qsnn converts feed-forward graphs")
        for name in ready:
            order.append(name)
            placed.add(name)
        pending = [name for name in pending if name not in placed]
    return order


def _same_shape(name: str, examples: list[torch.Tensor]) -> tuple[int, ...]:
    shapes = {tuple(example.shape[1:]) for example in examples}
    if len(shapes) != 1:
        raise QsnnError(f"the NIR node {name!r} sums inputs of different shapes {sorted(shapes)}")
    return shapes.pop()


def _pair(value) -> tuple[int, int]:
    values = [int(v) for v in np.atleast_1d(np.asarray(value)).reshape(-1)]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _float64(array) -> np.ndarray:
    return np.array(array, dtype=np.float64)


def _per_channel(name: str, what: str, values, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` (scalar, per channel, or full shape constant within each channel) per channel."""
    values = _float64(values)
    if values.ndim == 1 and len(shape) > 1 and len(values) == shape[0]:
        values = values.reshape((-1,) + (1,) * (len(shape) - 1))  # (one per channel)
    try:
        array = np.broadcast_to(values, shape)
    except ValueError:
        raise QsnnError(f"the NIR node {name!r} has {what} of shape {values.shape} for outputs of shape {shape}") from None
    flat = array.reshape(shape[0], -1)
    if not (flat == flat[:, :1]).all():
        raise QsnnError(f"the NIR node {name!r} has {what} that differ within a channel; qsnn imports per-channel {what}")
    return flat[:, 0].copy()


def _op(name: str, node, source: str, example: torch.Tensor) -> Op:
    import nir

    shape = tuple(example.shape[1:])
    if isinstance(node, nir.Conv2d):
        weight = _float64(node.weight)
        return Op(name, "conv", (source,), (), weight, _float64(node.bias).reshape(-1) if node.bias is not None
                  else np.zeros(len(weight)), {"stride": _pair(node.stride), "padding": _padding(name, node, weight),
                                              "dilation": _pair(node.dilation), "groups": int(node.groups)})
    if isinstance(node, nir.Linear | nir.Affine):
        weight = _float64(node.weight)
        if weight.ndim != 2 or len(shape) != 1 or weight.shape[1] != shape[0]:
            raise QsnnError(f"the NIR node {name!r} has weights {weight.shape} for an input of shape {shape} "
                            "(qsnn reads 2-D weights on a flat input: flatten before it)")
        bias = _float64(node.bias).reshape(-1) if isinstance(node, nir.Affine) else np.zeros(len(weight))
        return Op(name, "linear", (source,), (), weight, bias)
    if isinstance(node, nir.Scale):
        scale = _per_channel(name, "scales", node.scale, shape)
        return Op(name, "scale", (source,), (), scale, np.zeros_like(scale))
    if isinstance(node, nir.Flatten):
        return Op(name, "flatten", (source,), ())
    if isinstance(node, nir.SumPool2d | nir.AvgPool2d):
        kernel = _pair(node.kernel_size)
        attrs = {"kernel": kernel, "stride": _pair(node.stride), "padding": _pair(node.padding)}
        if isinstance(node, nir.AvgPool2d):
            return Op(name, "avgpool", (source,), (), attrs=attrs)
        channels = shape[0]  # a sum pool: a depthwise convolution with weights 1
        return Op(name, "conv", (source,), (), np.ones((channels, 1, *kernel)), np.zeros(channels),
                  {"stride": attrs["stride"], "padding": attrs["padding"], "dilation": (1, 1), "groups": channels})
    if isinstance(node, nir.IF | nir.Threshold):
        return _binary_population(name, node, source, shape)
    if isinstance(node, nir.Output):
        return Op("output", "output", (source,), ())
    kind = type(node).__name__
    if kind in ("LIF", "CubaLIF", "LI", "CubaLI", "Integrator"):
        raise QsnnError(f"the NIR node {name!r} is a {kind}, which has no quantized meaning (its output depends on "
                        f"time constants and the time step); qsnn reads {READ}")
    raise QsnnError(f"the NIR node {name!r} is a {kind}, which qsnn does not read; qsnn reads {READ}")


def _padding(name: str, node, weight: np.ndarray) -> tuple[int, int]:
    if isinstance(node.padding, str):
        if node.padding == "valid":
            return (0, 0)
        dilation = _pair(node.dilation)
        if any(size % 2 == 0 for size in weight.shape[2:]) or _pair(node.stride) != (1, 1):
            raise QsnnError(f"the NIR node {name!r} pads 'same' with an even kernel or a stride; give the padding as numbers")
        return tuple(d * (size - 1) // 2 for d, size in zip(dilation, weight.shape[2:], strict=True))
    return _pair(node.padding)


def _binary_population(name: str, node, source: str, shape: tuple[int, ...]) -> Op:
    """An IF or Threshold node as a population of k = 0, B = 1 whose neurons fire when
    their input is strictly above ``above`` (theta / r, per channel, exact fractions)."""
    import nir

    if isinstance(node, nir.IF):
        resistance = _per_channel(name, "resistances", node.r, shape)
        theta = _per_channel(name, "thresholds", node.v_threshold, shape)
        if (resistance <= 0).any() or not np.isfinite(resistance).all():
            raise QsnnError(f"the NIR node {name!r} has a resistance r <= 0 or not finite; qsnn reads IF nodes with r > 0")
    else:
        theta = _per_channel(name, "thresholds", node.threshold, shape)
        resistance = np.ones_like(theta)
    if not np.isfinite(theta).all():
        raise QsnnError(f"the NIR node {name!r} has thresholds that are not finite")
    above = tuple(str(Fraction(t) / Fraction(r)) for t, r in zip(theta.tolist(), resistance.tolist(), strict=True))
    return Op(name, "quant", (source,), (), attrs={"k": 0, "B": 1, "module": name, "above": above})


def _example(op: Op, x: torch.Tensor) -> torch.Tensor:
    """A zero output of ``op`` for the zero input ``x``: its shape, and NIR's shape errors as one line."""
    a = op.attrs
    try:
        if op.kind == "conv":
            return F.conv2d(x, torch.from_numpy(op.weight), stride=a["stride"], padding=a["padding"],
                            dilation=a["dilation"], groups=a["groups"])
        if op.kind == "linear":
            return x @ torch.from_numpy(op.weight).T
        if op.kind == "avgpool":
            return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"])
        if op.kind == "flatten":
            return x.flatten(1)
        return x  # scale, quant, output
    except RuntimeError as error:
        problem = " ".join(str(error).split())[:160]
        raise QsnnError(f"the NIR node {op.name!r} does not fit its input of shape {tuple(x.shape[1:])}: {problem}") from None


def _exclusive_sources(ops: list[Op]) -> list[Op]:
    """Each binary population's threshold becomes a shift of the weighted op before it, so
    that op must feed the population alone: where it feeds more, or is no weighted op,
    a per-channel scale of 1 is put between them."""
    users = users_of(ops)
    by_name = {op.name: op for op in ops}
    out: list[Op] = []
    for op in ops:
        source = by_name[op.inputs[0]] if op.inputs else None
        if op.kind == "quant" and (source.kind not in ("conv", "linear", "scale") or users[source.name] > 1):
            channels = op.shape[0]
            shift = Op(f"{op.name}_threshold", "scale", op.inputs, op.shape, np.ones(channels), np.zeros(channels))
            out.append(shift)
            op.inputs = (shift.name,)
        out.append(op)
    return out
