"""A spiking graph (:class:`qsnn.snn.graph.SpikingGraph`) of SG as a NIR graph, exact.

Every value of a spiking graph is an integer on its node's grid, so the NIR graph computes
with those integers (float64 holds them exactly): the raw pixels 0..255 in, integer
weights and biases, integer logits out (the class is their argmax), for ONE time step.

- conv and linear nodes: ``Conv2d`` and ``Affine`` with their integer weights (times the
  node's grid multiplier) and biases; a per-channel scale: a 1x1 ``Conv2d`` with a
  diagonal weight (``Affine`` with one on vectors); an average pool, which sums
  its window on the grid: ``SumPool2d``; flattening: ``Flatten``.
- an addition: NIR sums the edges that enter a node, so each term reaches the addition's
  users directly (through a ``Scale`` by its grid multiplier where that is not 1).
- a population of L = 2^k B levels: a ``Conv2d`` (or ``Linear``) that copies each channel
  L times, an ``IF`` node of binary neurons, copy i of channel c with r = 1, v_reset = 0
  and threshold T(i) - 1/2 (it fires on v > T - 1/2, that is V >= T(i) for the integer
  membrane V), and a ``Conv2d`` (or ``Linear``) that sums the copies back into the count.

Concatenations and max pools have no NIR node and are refused, as are NSD and INT graphs
(standard NIR has no negative spikes and no adapting thresholds), each in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qsnn.deploy.export import NIR_FORMAT, nir_thresholds, write_nir
from qsnn.errors import QsnnError
from qsnn.snn import schemes
from qsnn.snn.graph import GraphNode, SpikingGraph


def graph_nir(graph: SpikingGraph):
    """The NIR graph of an SG spiking graph (see the module docstring)."""
    import nir

    _check_exportable(graph)
    nodes: dict = {}
    edges: list[tuple[str, str]] = []
    sources: dict[str, list[str]] = {}  # per graph node: the NIR nodes whose sum is its value

    def add(name: str, node, inputs: list[str]) -> list[str]:
        nodes[name] = node
        edges.extend((source, name) for source in inputs)
        return [name]

    for node in graph.nodes:
        inputs = [source for name in node.inputs for source in sources[name]]
        shape = tuple(node.shape)
        if node.kind == "input":
            sources[node.name] = add(node.name, nir.Input(input_type=np.array(shape)), [])
        elif node.kind == "conv":
            a = node.attrs
            sources[node.name] = add(node.name, nir.Conv2d(
                input_shape=tuple(graph.by_name[node.inputs[0]].shape[1:]), weight=_weight(node), stride=a["stride"],
                padding=a["padding"], dilation=a["dilation"], groups=a["groups"], bias=node.bias.astype(np.float64),
            ), inputs)
        elif node.kind == "linear":
            sources[node.name] = add(node.name, nir.Affine(weight=_weight(node), bias=node.bias.astype(np.float64)), inputs)
        elif node.kind == "scale":
            sources[node.name] = add(node.name, _channel_affine(nir, node, shape), inputs)
        elif node.kind == "avgpool":
            a = node.attrs
            sources[node.name] = add(node.name, nir.SumPool2d(kernel_size=np.array(a["kernel"]), stride=np.array(a["stride"]),
                                                              padding=np.array(a["padding"])), inputs)
        elif node.kind == "flatten":
            in_shape = np.array(graph.by_name[node.inputs[0]].shape)
            sources[node.name] = add(node.name, nir.Flatten(input_type={"input": in_shape}, start_dim=0, end_dim=-1), inputs)
        elif node.kind == "add":
            sources[node.name] = _terms(nir, graph, node, sources, add)
        elif node.kind == "quant":
            sources[node.name] = _population(nir, graph, node, inputs, add)
        else:  # output
            sources[node.name] = add(node.name, nir.Output(output_type=np.array(shape)), inputs)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(graph), type_check=False)


def _check_exportable(graph: SpikingGraph) -> None:
    rules = schemes.of(graph.scheme)
    if not rules.standard_nir:
        raise QsnnError(f"a {rules.title} graph needs negative spikes and adapting thresholds, which standard NIR "
                        "cannot express; convert the model with scheme sg to export it to NIR")
    refused = next((node for node in graph.nodes if node.kind in ("cat", "maxpool")), None)
    if refused is not None:
        what = "concatenation" if refused.kind == "cat" else "max pooling"
        raise QsnnError(f"node {refused.name!r} is a {what}, which NIR has no node for; this graph cannot be exported to NIR")


def _weight(node: GraphNode) -> np.ndarray:
    return node.weight.astype(np.float64) * float(node.multipliers[0])


def _channel_affine(nir, node: GraphNode, shape: tuple[int, ...]):
    """y = m w x + b per channel: a grouped 1x1 convolution (maps) or a diagonal Affine (vectors)."""
    weight = _weight(node)
    bias = node.bias.astype(np.float64)
    if len(shape) == 3:
        return nir.Conv2d(input_shape=shape[1:], weight=np.diag(weight)[:, :, None, None], stride=1, padding=0,
                          dilation=1, groups=1, bias=bias)
    return nir.Affine(weight=np.diag(weight), bias=bias)


def _terms(nir, graph: SpikingGraph, node: GraphNode, sources: dict[str, list[str]], add) -> list[str]:
    """An addition: its terms' NIR sources, each through a Scale by its multiplier (if not 1)."""
    terms: list[str] = []
    for number, (name, multiplier) in enumerate(zip(node.inputs, node.multipliers, strict=True)):
        if multiplier == 1:
            terms.extend(sources[name])
        else:
            scale = np.full(graph.by_name[name].shape, float(multiplier))
            terms.extend(add(f"{node.name}_term{number}", nir.Scale(scale=scale), sources[name]))
    return terms


def _population(nir, graph: SpikingGraph, node: GraphNode, inputs: list[str], add) -> list[str]:
    """Copies of each channel, an IF node of binary neurons, and the sum of the copies."""
    levels = node.levels
    channels = node.shape[0]
    table = graph.thresholds(node).table[:, :levels].cpu().numpy()  # (one per channel, the same rows)
    copied = (channels * levels, *node.shape[1:])
    theta = np.broadcast_to(nir_thresholds(table.reshape(-1)).reshape((-1,) + (1,) * (len(copied) - 1)), copied)
    copy = np.repeat(np.eye(channels), levels, axis=0)  # (copy c*L + i of channel c)
    if len(node.shape) == 3:  # (dense 1x1 convolutions: NIR's type inference reads no groups)
        spread = nir.Conv2d(input_shape=node.shape[1:], weight=copy[:, :, None, None], stride=1, padding=0, dilation=1,
                            groups=1, bias=np.zeros(channels * levels))
        gather = nir.Conv2d(input_shape=node.shape[1:], weight=copy.T[:, :, None, None].copy(), stride=1, padding=0,
                            dilation=1, groups=1, bias=np.zeros(channels))
    else:
        spread = nir.Linear(weight=copy)
        gather = nir.Linear(weight=copy.T.copy())
    copies = add(f"{node.name}_copies", spread, inputs)
    fired = add(node.name, nir.IF(r=np.ones(copied), v_threshold=np.array(theta), v_reset=np.zeros(copied),
                                  metadata={"qsnn_levels": levels, "qsnn_channels": channels}), copies)
    return add(f"{node.name}_count", gather, fired)


def _metadata(graph: SpikingGraph) -> dict:
    return {
        "format": NIR_FORMAT,
        "scheme": graph.scheme,
        "portable": True,
        "time_steps": 1,
        "note": ("exact in float64: present the raw pixels (0..255) for ONE time step; every IF node is a bank of "
                 "binary neurons (channel c's copies c*L .. c*L+L-1), summed back into counts by the node after it; "
                 "the Output gives integer logits, the class is their argmax"),
        "input": "raw uint8 pixel values 0..255 as float, shape (C, H, W), at t = 0 only",
        "source": json.dumps(graph.source, default=str),
    }


def export_graph_nir(graph: SpikingGraph, path: str | os.PathLike) -> Path:
    """Write an SG spiking graph as a NIR graph (HDF5) to ``path``; needs the optional ``nir`` package."""
    _check_exportable(graph)
    return write_nir(graph_nir, graph, path)
