"""A small NumPy interpreter of standard NIR nodes for ONE time step (tests only).

Nodes: Input, Conv2d (stride, padding, dilation, groups), Linear, Affine, Scale,
SumPool2d, Flatten, IF, Output. A node with several incoming edges receives their sum (NIR's
rule). An IF neuron starts at v = 0, integrates v = r * I over the step and emits a spike
(1.0) iff v > v_threshold. NIR shapes carry no batch dimension; the interpreter runs a
batch along a leading axis. It is written from the NIR definitions alone, so that it can
check qsnn's exports independently.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pair(value) -> tuple[int, int]:
    values = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def conv2d(node, x: np.ndarray) -> np.ndarray:
    weight = np.asarray(node.weight, np.float64)
    if isinstance(node.padding, str):
        raise NotImplementedError("string padding")
    (ph, pw), (sh, sw), (dh, dw) = _pair(node.padding), _pair(node.stride), _pair(node.dilation)
    groups = int(node.groups)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out_c, per_group, kh, kw = weight.shape
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    windows = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    outputs = []
    for g in range(groups):
        part = windows[:, g * per_group : (g + 1) * per_group]
        kernel = weight[g * (out_c // groups) : (g + 1) * (out_c // groups)]
        outputs.append(np.einsum("bchwij,ocij->bohw", part, kernel, optimize=True))
    return np.concatenate(outputs, axis=1) + np.asarray(node.bias, np.float64).reshape(1, -1, 1, 1)


def sum_pool(node, x: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw) = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].sum(axis=(4, 5))


def flatten(node, x: np.ndarray) -> np.ndarray:
    start = int(node.start_dim) + 1  # skip the batch axis
    end = int(node.end_dim)
    end = x.ndim - 1 if end == -1 else end + 1
    return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])


def _apply(node, value: np.ndarray) -> np.ndarray:
    import nir

    if isinstance(node, nir.Conv2d):
        return conv2d(node, value)
    if isinstance(node, nir.Linear):
        return value @ np.asarray(node.weight, np.float64).T
    if isinstance(node, nir.Affine):
        return value @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
    if isinstance(node, nir.Scale):
        return value * np.asarray(node.scale, np.float64)
    if isinstance(node, nir.SumPool2d):
        return sum_pool(node, value)
    if isinstance(node, nir.Flatten):
        return flatten(node, value)
    if isinstance(node, nir.IF):
        membrane = np.asarray(node.r, np.float64) * value
        return (membrane > np.asarray(node.v_threshold, np.float64)).astype(np.float64)
    if isinstance(node, nir.Output):
        return value
    raise NotImplementedError(type(node).__name__)


def run_one_step(graph, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Feed ``x`` (batch, *input shape) for one step; returns (output, spikes per IF node)."""
    import nir

    incoming: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for source, target in graph.edges:
        incoming[target].append(source)
    values: dict[str, np.ndarray] = {}
    spikes, output = {}, None
    pending = list(graph.nodes)
    while pending:
        ready = [name for name in pending if all(source in values for source in incoming[name])]
        if not ready:
            raise ValueError(f"nodes not reached from the input: {pending}")
        for name in ready:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = np.asarray(x, np.float64)
            else:
                values[name] = _apply(node, sum(values[source] for source in incoming[name]))
            if isinstance(node, nir.IF):
                spikes[name] = values[name]
            if isinstance(node, nir.Output):
                output = values[name]
            pending.remove(name)
    return output, spikes
