"""A converted model of one's own: a graph of spiking populations on exact integer grids.

:func:`convert_module` traces a PyTorch model (:mod:`qsnn.snn.trace`) and puts every value
of it on an integer grid: each node's values are integers over the node's own
``denominator`` (a positive integer), so that every operation is exact integer
arithmetic:

- the input is the raw pixels p = 0..255 over 255 (x = p / 255), or over 1 for a NIR
  graph that takes them raw;
- a conv, linear or per-channel scale multiplies by integer weights W_int = W 2^s (the
  folded weights, kept to 24 significant bits as float32 holds them: this defines the
  converted model) and adds its bias on the output's grid;
- an average pool sums its window (its denominator takes the window size);
- ``+`` and ``torch.cat`` bring their inputs to the least common denominator;
- a ``QuantAct(k, B)`` is a population: its membrane is its input V (over d), its count
  n = min(floor(2^k V / d + 1/2), 2^k B) >= 0, and its output n over 2^k. Its
  threshold table is T(i) = ceil(d (2 i + 1) / 2^(k+1)), the least membrane whose count
  is above i: the same for every neuron.

Every integer stays below 2^53 (bounded through the graph; a graph that could exceed it
is refused), so float64 tensors compute them exactly. :func:`exact_ann` evaluates the
converted model exactly from these integers (the counts by the formula above, not by the
tables); :mod:`qsnn.sim.graph` simulates its spiking populations.

:func:`convert_nir` builds the same graph from a NIR file (:mod:`qsnn.snn.from_nir`):
its IF nodes are binary populations (k = 0, B = 1) whose thresholds become integer shifts
of their sources' biases.

Populations fed by the input alone are the encoding populations (INT: rising
thresholds); max pooling is exact only where counts arrive at once (SG).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsnn.errors import QsnnError
from qsnn.io import content_digest, write_sealed_npz
from qsnn.net.models import QuantizedNet
from qsnn.nn import make_model
from qsnn.snn import schemes
from qsnn.snn.exact import _split, float32_is_ieee
from qsnn.snn.from_nir import default_input_range, nir_ops, read_nir
from qsnn.snn.model import COUNT_LIMIT, EXACT_LIMIT, PIXEL_LEVELS
from qsnn.snn.neurons import Thresholds, target_count
from qsnn.snn.trace import Op, net_ops, trace
from qsnn.train.checkpoint import own_model_weights

WEIGHT_BITS = 24  # significant bits kept of each folded weight and bias tensor (float32's)
FORMAT = "qsnn-graph"
FORMAT_VERSION = 1
LINEAR = ("conv", "linear", "scale")


@dataclass
class GraphNode:
    """One node on its integer grid: values = integers / ``denominator``.

    ``weight``: int64 integer weights (conv, linear, scale); ``bias``: int64, on the
    output grid; ``multipliers``: per input, the integer that brings it onto the output
    grid (add, cat; one factor for the weighted ops); ``bound``: the largest integer
    magnitude the node's values reach; ``attrs``: the op's (stride, padding, kernel, k,
    B, ...) and, for a population, ``levels`` (its count limit) and ``role``."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    denominator: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    multipliers: tuple[int, ...] = ()
    bound: float = 0.0
    attrs: dict = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return int(self.attrs["levels"])

    def largest_row(self) -> float:
        """A weighted node's largest sum of |integer weights| into one output."""
        magnitude = np.abs(self.weight)
        return float((magnitude if self.kind == "scale" else magnitude.reshape(len(magnitude), -1).sum(axis=1)).max())


@dataclass
class SpikingGraph:
    """A converted model: its nodes in execution order (input first, output last), the
    scheme, and what it was converted from."""

    scheme: str
    nodes: list[GraphNode]
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {node.name: node for node in self.nodes}

    @property
    def populations(self) -> list[GraphNode]:
        return [node for node in self.nodes if node.kind == "quant"]

    @property
    def classes(self) -> int:
        return self.nodes[-1].shape[0]

    def thresholds(self, node: GraphNode) -> Thresholds:
        """The population's table T(i) = ceil(d (2 i + 1) / 2^(k+1)), i < levels."""
        channels = node.shape[0]
        d = self.by_name[node.inputs[0]].denominator
        ones = np.ones(channels, np.int64)
        return Thresholds.linear(ones * d, ones * 2 * d, 2 << node.attrs["k"], ones * node.levels, -ones)

    def name(self) -> str:
        """What the graph was converted from: the model's factory or class, the notation, or the NIR file."""
        source = self.source
        if source.get("nir"):
            return Path(source["nir"]).name
        return str(source.get("model") or source.get("net") or "graph")

    def precision(self) -> str:
        """Its populations' precision in words: 'k=1 B=2', with the encoding's where it differs."""
        def text(node: GraphNode) -> str:
            return f"k={node.attrs['k']} B={'none' if node.attrs['B'] is None else node.attrs['B']}"

        hidden = sorted({text(node) for node in self.populations if node.attrs["role"] == "hidden"})
        encoding = sorted({text(node) for node in self.populations if node.attrs["role"] == "encoding"})
        words = " / ".join(hidden or encoding)
        extra = [value for value in encoding if value not in hidden]
        return words + (f" (encoding {' / '.join(extra)})" if hidden and extra else "")

    def describe(self) -> str:
        kinds = [node.kind for node in self.nodes]
        return (f"{schemes.of(self.scheme).title} spiking graph: {len(self.populations)} populations, "
                f"{kinds.count('add')} additions, {kinds.count('cat')} concatenations, "
                f"{sum(k in LINEAR for k in kinds)} weighted layers")

    # --- file format ------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for index, node in enumerate(self.nodes):
            meta = {"name": node.name, "kind": node.kind, "inputs": list(node.inputs), "shape": list(node.shape),
                    "denominator": str(node.denominator), "multipliers": [str(m) for m in node.multipliers],
                    "bound": node.bound, "attrs": node.attrs}
            for key in ("weight", "bias"):
                if getattr(node, key) is not None:
                    arrays[f"node{index}.{key}"] = getattr(node, key)
            nodes.append(meta)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "scheme": self.scheme, "source": self.source, "nodes": nodes}
        write_sealed_npz(path, manifest, arrays)

    @classmethod
    def load(cls, path: str | Path) -> SpikingGraph:
        path = Path(path)
        if not path.is_file():
            raise QsnnError(f"no converted graph at {path}: create one with qsnn.convert(model, example_input, scheme)")
        try:
            with np.load(path, allow_pickle=False) as data:
                manifest = json.loads(str(data["manifest"]))
                arrays = {key: data[key] for key in data.files if key != "manifest"}
        except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile) as error:
            raise QsnnError(f"{path} is not a converted qsnn graph or is damaged ({type(error).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise QsnnError(f"{path} is not a qsnn graph of format version {FORMAT_VERSION}; re-create it with qsnn.convert")
        if manifest.get("sha256") != content_digest(manifest, arrays):
            raise QsnnError(f"{path} is damaged: its contents do not match their checksum; re-create it with qsnn.convert")
        nodes = [
            GraphNode(meta["name"], meta["kind"], tuple(meta["inputs"]), tuple(meta["shape"]), int(meta["denominator"]),
                      arrays.get(f"node{index}.weight"), arrays.get(f"node{index}.bias"),
                      tuple(int(m) for m in meta["multipliers"]), float(meta["bound"]), _tuples(meta["attrs"]))
            for index, meta in enumerate(manifest["nodes"])
        ]
        return cls(manifest["scheme"], nodes, manifest["source"])


def _tuples(attrs: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in attrs.items()}


def is_graph_file(path: str | Path) -> bool:
    """Whether ``path`` is a converted graph (a qsnn-graph .npz), from its manifest alone."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "manifest" in data.files and json.loads(str(data["manifest"])).get("format") == FORMAT
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError):
        return False


def model_from_factory(factory: str, weights: str | Path) -> tuple[nn.Module, str | None]:
    """``module.path:function`` called without arguments (:func:`qsnn.nn.make_model`), with
    the weights in ``weights`` loaded into it (a checkpoint of ``qsnn train --model`` of that
    factory, or ``torch.save(model.state_dict(), ...)``); in eval mode, with the dataset
    its checkpoint names (None for a plain state dict)."""
    made = make_model(factory)
    state, dataset = own_model_weights(weights, factory)
    try:
        made.load_state_dict(state)
    except RuntimeError as error:
        problem = " ".join(str(error).split())[:200]
        raise QsnnError(f"{weights} does not match the model {factory}: {problem}") from None
    return made.eval(), dataset


# --- conversion -------------------------------------------------------------------------


def _snap(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` as integers over 2^s: s keeps WEIGHT_BITS significant bits of the largest
    (fewer where every value is exact with fewer, e.g. ternary weights: s = 0)."""
    nonzero = np.abs(values[values != 0])
    if nonzero.size == 0:
        return np.zeros(values.shape, np.int64), 0
    mantissa, exponent = np.frexp(nonzero)
    digits = np.abs(mantissa * 2.0**53).astype(np.int64)
    trailing = np.log2((digits & -digits).astype(np.float64)).round().astype(np.int64)
    exact = int((53 - exponent - trailing).max())
    s = max(0, min(exact, WEIGHT_BITS - int(np.frexp(nonzero.max())[1])))
    return np.rint(values * 2.0**s).astype(np.int64), s


def convert_module(model: nn.Module, example_input: torch.Tensor, scheme: str) -> SpikingGraph:
    """Convert a PyTorch model built with :class:`qsnn.nn.QuantAct` activations into a
    spiking graph under ``scheme`` (see the module docstring)."""
    rules = schemes.of(scheme)
    ops = trace(model, example_input)
    if not any(op.kind == "quant" for op in ops):
        raise QsnnError("the model has no QuantAct: put qsnn.nn.QuantAct(k, B) after each layer that should spike")
    return _graph_of(ops, rules, {"model": type(model).__name__})


def convert_nir(path: str | Path, scheme: str, *, input_range: str | None = None) -> SpikingGraph:
    """Convert a NIR graph read for one time step (:mod:`qsnn.snn.from_nir`: every IF or
    Threshold node a population of binary neurons with its own exact threshold) into a
    spiking graph under ``scheme``. ``input_range``: "raw" (pixels 0..255) or "unit"
    (p / 255); by default raw for qsnn's own NIR exports, unit for the others."""
    rules = schemes.of(scheme)
    nir_graph = read_nir(path)
    input_range = input_range or default_input_range(nir_graph)
    ops = nir_ops(nir_graph, input_range)
    if not any(op.kind == "quant" for op in ops):
        raise QsnnError(f"the NIR graph {path} has no IF or Threshold node: nothing in it spikes")
    return _graph_of(ops, rules, {"nir": str(path), "input_range": input_range})


def convert_net(model: QuantizedNet, scheme: str, source: dict | None = None) -> SpikingGraph:
    """A net in the papers' notation as a spiking graph (:func:`qsnn.snn.trace.net_ops`):
    its batch norms folded into 24-bit weights as for a model of one's own. (The chain
    converter, ``qsnn.convert(net, scheme)``, keeps them exact in its threshold tables.)"""
    rules = schemes.of(scheme)
    return _graph_of(net_ops(model), rules, {"net": model.spec.notation, "precision": model.spec.precision.label(),
                                              **(source or {})})


def _graph_of(ops: list[Op], rules: schemes.Scheme, source: dict) -> SpikingGraph:
    nodes: dict[str, GraphNode] = {}
    for op in ops:
        nodes[op.name] = _integer_node(op, nodes)
    graph = SpikingGraph(rules.name, list(nodes.values()), source)
    _check_scheme(graph, rules)
    return graph


def _integer_node(op: Op, nodes: dict[str, GraphNode]) -> GraphNode:
    inputs = [nodes[name] for name in op.inputs]
    if op.kind == "input":  # the pixels p = 0..255: x = p / 255, or p itself (denominator 1)
        return GraphNode(op.name, "input", (), op.shape, op.attrs.get("denominator") or PIXEL_LEVELS, bound=PIXEL_LEVELS)
    source = inputs[0] if inputs else None
    if op.kind in LINEAR:
        weight, s = _snap(op.weight)
        bias, s_bias = _snap(op.bias)
        product = source.denominator << s
        denominator = math.lcm(product, 1 << s_bias)
        multiplier = denominator // product
        bias = bias * (denominator >> s_bias)
        node = GraphNode(op.name, op.kind, op.inputs, op.shape, denominator, weight, bias, (multiplier,), attrs=dict(op.attrs))
        node.bound = multiplier * node.largest_row() * source.bound + float(np.abs(bias).max(initial=0))
    elif op.kind == "avgpool":
        window = op.attrs["kernel"][0] * op.attrs["kernel"][1]
        node = GraphNode(op.name, op.kind, op.inputs, op.shape, source.denominator * window, bound=source.bound * window,
                         attrs=dict(op.attrs))
    elif op.kind in ("add", "cat"):
        denominator = math.lcm(*(node.denominator for node in inputs))
        multipliers = tuple(denominator // node.denominator for node in inputs)
        combine = sum if op.kind == "add" else max
        bound = combine(m * node.bound for m, node in zip(multipliers, inputs, strict=True))
        node = GraphNode(op.name, op.kind, op.inputs, op.shape, denominator, multipliers=multipliers, bound=bound,
                         attrs=dict(op.attrs))
    elif op.kind in ("flatten", "maxpool", "output"):
        node = GraphNode(op.name, op.kind, op.inputs, op.shape, source.denominator, bound=source.bound, attrs=dict(op.attrs))
    else:  # quant: a population
        if "above" in op.attrs:
            _shift_to_threshold(source, op.attrs["above"])
        k, bound = op.attrs["k"], op.attrs["B"]
        levels = COUNT_LIMIT if bound is None else (1 << k) * bound
        role = "encoding" if _fed_by_input_only(source, nodes) else "hidden"
        node = GraphNode(op.name, "quant", op.inputs, op.shape, 1 << k, bound=levels,
                         attrs={"k": k, "B": bound, "levels": levels, "role": role, "module": op.attrs["module"]})
    if node.bound >= EXACT_LIMIT or (node.kind == "quant" and source.bound * (2 << node.attrs["k"]) >= 2.0**62):
        raise QsnnError(
            f"node {op.name!r} could reach integers of 2^{math.log2(max(node.bound, 1)):.0f} on its exact grid, beyond "
            "float64's exact 2^53; bound the QuantActs before it (B) or use fewer channels"
        )
    return node


def _shift_to_threshold(source: GraphNode, above: tuple[str, ...]) -> None:
    """A binary population (k = 0, B = 1) that fires where its input V / d is strictly
    above theta_c (exact fractions, per channel): [V > theta d] is [V >= floor(theta d) + 1]
    for integer V, and the population fires at V >= ceil(d / 2), so its source's bias is
    shifted by ceil(d / 2) - floor(theta d) - 1 (its source feeds it alone). A threshold
    beyond the source's bound (never or always reached) is clamped to just outside it."""
    d, bound = source.denominator, math.ceil(source.bound)
    least = [min(max(math.floor(Fraction(theta) * d) + 1, -bound), bound + 1) for theta in above]
    shift = np.array([(d + 1) // 2 - value for value in least], dtype=np.int64)
    source.bias = source.bias + shift
    source.bound += float(np.abs(shift).max())
    if source.bound >= EXACT_LIMIT:
        raise QsnnError(f"node {source.name!r} could reach 2^53 on its exact grid with its thresholds; float64 is not exact there")


def _fed_by_input_only(node: GraphNode, nodes: dict[str, GraphNode]) -> bool:
    if node.kind == "quant":
        return False
    if node.kind == "input":
        return True
    return all(_fed_by_input_only(nodes[name], nodes) for name in node.inputs)


def _check_scheme(graph: SpikingGraph, rules: schemes.Scheme) -> None:
    maxpool = next((node for node in graph.nodes if node.kind == "maxpool"), None)
    if maxpool is not None and not rules.single_step:
        raise QsnnError(
            f"node {maxpool.name!r} is a max pool, exact only where counts arrive at once (SG); "
            f"under {rules.title} use AvgPool2d, or convert with scheme='sg'"
        )
    if rules.needs_bounds:
        unbounded = [node.name for node in graph.populations if node.attrs["B"] is None]
        if unbounded:
            raise QsnnError(f"{rules.title} needs an upper bound B on every QuantAct; {', '.join(unbounded)} has none")


# --- evaluation on the integer grid -----------------------------------------------------


def float32_parts(node: GraphNode, input_bound: float) -> tuple[list[torch.Tensor], int] | None:
    """A conv or linear node's integer weights split into parts of ``bits`` bits (W =
    sum_j part_j 2^(bits j)), so narrow that every sum of products with inputs of
    magnitude up to ``input_bound`` stays below 2^24, which float32 adds exactly in any
    order (float32 convolutions are several times faster than float64 ones). None where
    that leaves fewer than 8 bits a part, or float32 products are not IEEE."""
    if node.kind not in ("conv", "linear") or input_bound <= 0 or not float32_is_ieee():
        return None
    room = 2.0**24 / (input_bound * node.weight[0].size)
    bits = math.floor(math.log2(room)) if room >= 2 else 0
    if bits < 8:
        return None
    return [torch.from_numpy(part).to(torch.float32) for part in _split(node.weight, bits)], bits


def float32_product(node: GraphNode, x: torch.Tensor, parts: list[torch.Tensor], bits: int) -> torch.Tensor:
    """The node's weighted input times its multiplier (no bias), exactly, from its float32
    parts (:func:`float32_parts`), as float64."""
    x32 = x.to(torch.float32)
    total = None
    with torch.backends.nnpack.flags(enabled=False):  # (Winograd and FFT convolutions round)
        for j, part in enumerate(parts):
            part = part.to(x.device)
            if node.kind == "conv":
                a = node.attrs
                y = F.conv2d(x32, part, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
            else:
                y = x32 @ part.T
            y = y.to(torch.float64) * float(2 ** (bits * j))
            total = y if total is None else total + y
    return total * float(node.multipliers[0]) if node.multipliers[0] != 1 else total


def apply_node(node: GraphNode, values: list[torch.Tensor], *, with_bias: bool = True,
               input_bound: float | None = None) -> torch.Tensor:
    """A non-population node's integer output from its inputs' integers (float64 tensors
    holding exact integers). ``with_bias``: add the bias (the spiking graph adds it once,
    at the first step, and only the weighted inputs after). ``input_bound``: the largest
    magnitude of the inputs, where known: conv and linear nodes then multiply in float32
    parts where that is exact (:func:`float32_parts`)."""
    kind = node.kind
    if kind in LINEAR:
        x = values[0]
        found = float32_parts(node, input_bound) if input_bound is not None else None
        if found is not None:
            y = float32_product(node, x, *found)
            if with_bias:
                y = y + torch.from_numpy(node.bias).to(x.device, torch.float64).view(1, -1, *([1] * (x.dim() - 2)))
            return y
        weight = torch.from_numpy(node.weight).to(x.device, torch.float64)
        if kind == "conv":
            a = node.attrs
            y = F.conv2d(x, weight, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
        elif kind == "linear":
            y = x @ weight.T
        else:
            y = x * weight.view(1, -1, *([1] * (x.dim() - 2)))
        if node.multipliers[0] != 1:
            y = y * float(node.multipliers[0])
        if with_bias:
            y = y + torch.from_numpy(node.bias).to(x.device, torch.float64).view(1, -1, *([1] * (x.dim() - 2)))
        return y
    if kind == "avgpool":
        a = node.attrs
        return F.avg_pool2d(values[0], a["kernel"], a["stride"], a["padding"], count_include_pad=True, divisor_override=1)
    if kind == "maxpool":
        a = node.attrs
        return F.max_pool2d(values[0], a["kernel"], a["stride"], a["padding"])
    if kind == "add":
        return sum(v * float(m) if m != 1 else v for v, m in zip(values, node.multipliers, strict=True))
    if kind == "cat":
        return torch.cat([v * float(m) if m != 1 else v for v, m in zip(values, node.multipliers, strict=True)], dim=1)
    if kind == "flatten":
        return values[0].flatten(1)
    if kind == "output":
        return values[0]
    raise ValueError(f"apply_node does not compute {kind} nodes")


def population_counts(node: GraphNode, membrane: torch.Tensor, d: int) -> torch.Tensor:
    """n = clamp(floor(2^k V / d + 1/2), 0, 2^k B) for integer membranes V over d, in exact
    integer arithmetic: floor((2^(k+1) V + d) / 2d). An unbounded population counting
    beyond its limit is refused (its spiking neurons could not follow)."""
    k = node.attrs["k"]
    v = membrane.to(torch.int64)
    n = torch.div((v << (k + 1)) + d, 2 * d, rounding_mode="floor").clamp(min=0)
    if node.attrs["B"] is not None:
        return n.clamp(max=node.levels)
    if n.numel() and int(n.max()) > node.levels:
        raise QsnnError(
            f"population {node.name!r} counts up to {int(n.max())}, beyond the {node.levels} an unbounded QuantAct "
            "may reach here; give it an upper bound B"
        )
    return n


def silent_values(graph: SpikingGraph, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's integer value (float64) when every population is silent: what the
    pixels and the biases alone give, the part of each value that is the same at every
    time step of a spiking simulation. (A weighted node of a silent input gives its bias.)"""
    values: dict[str, torch.Tensor] = {}
    zero: set[str] = set()
    integral = bool(torch.equal(pixels, pixels.round()))  # (float32 parts are exact for integer inputs only)
    for node in graph.nodes:
        if node.kind == "input":
            values[node.name] = pixels.to(torch.float64)
            continue
        inputs = [values[name] for name in node.inputs]
        if node.kind == "quant" or (all(name in zero for name in node.inputs) and node.kind not in LINEAR):
            values[node.name] = torch.zeros((len(pixels), *node.shape), dtype=torch.float64, device=pixels.device)
            zero.add(node.name)
        elif node.kind in LINEAR and node.inputs[0] in zero:
            bias = torch.from_numpy(node.bias).to(pixels.device, torch.float64)
            values[node.name] = bias.view(1, -1, *([1] * (len(node.shape) - 1))).expand(len(pixels), *node.shape)
        else:
            values[node.name] = apply_node(node, inputs, input_bound=_bound(graph, node) if integral else None)
    return values


def _bound(graph: SpikingGraph, node: GraphNode) -> float:
    return graph.by_name[node.inputs[0]].bound


@dataclass
class GraphANN:
    """The converted model evaluated exactly: every population's counts (int64), the
    logits (integers over the output's denominator, int64) and the predictions (the
    first among equal logits)."""

    counts: dict[str, torch.Tensor]
    logits: torch.Tensor
    predictions: torch.Tensor


def tables_ann(graph: SpikingGraph, pixels: torch.Tensor) -> GraphANN:
    """The converted model evaluated with its populations' threshold tables, count =
    #{i : V >= T(i)}, on pixels that need not be integers (under input noise): what the
    spiking populations converge to on that input. (On integer pixels it equals
    :func:`exact_ann`, which decides by the count formula instead.) Float64 throughout."""
    values, counts = _evaluated(
        graph, pixels, lambda node, source, v: target_count(v, graph.thresholds(node).to(pixels.device)), bounds=False)
    logits = values[graph.nodes[-1].name]
    return GraphANN(counts, logits, logits.argmax(dim=1))


def exact_ann(graph: SpikingGraph, pixels: torch.Tensor) -> GraphANN:
    """The converted model's exact evaluation on raw 0..255 integer pixels."""
    if pixels.is_floating_point() and not torch.equal(pixels, pixels.round()):
        raise QsnnError("the exact ANN of a graph takes raw integer pixels 0..255")
    values, counts = _evaluated(graph, pixels, lambda node, source, v: population_counts(node, v, source.denominator),
                                bounds=True)
    logits = values[graph.nodes[-1].name].to(torch.int64)
    return GraphANN(counts, logits, logits.argmax(dim=1))


def _evaluated(graph: SpikingGraph, pixels: torch.Tensor, count_of, *, bounds: bool) -> tuple[dict, dict]:
    """Every node's value (float64) and every population's counts, each population counting
    by ``count_of(node, source, membrane)``; ``bounds``: products in float32 parts where the
    integer inputs allow (:func:`float32_parts`)."""
    values: dict[str, torch.Tensor] = {}
    counts = {}
    for node in graph.nodes:
        if node.kind == "input":
            values[node.name] = pixels.to(torch.float64)
        elif node.kind == "quant":
            source = graph.by_name[node.inputs[0]]
            counts[node.name] = n = count_of(node, source, values[source.name])
            values[node.name] = n.to(torch.float64)
        else:
            values[node.name] = apply_node(node, [values[name] for name in node.inputs],
                                           input_bound=_bound(graph, node) if bounds else None)
    return values, counts
