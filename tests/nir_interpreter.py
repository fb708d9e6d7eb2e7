"""A small NumPy interpreter of standard NIR nodes for ONE time step (tests only).

Nodes: Input, Conv2d, Linear, Affine, Flatten, IF, Output. An IF neuron starts at v = 0,
integrates v = r * I over the step and emits a spike (1.0) iff v > v_threshold. NIR
shapes carry no batch dimension; the interpreter runs a batch along a leading axis.
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
    (ph, pw), (sh, sw) = _pair(node.padding), _pair(node.stride)
    if _pair(node.dilation) != (1, 1) or int(node.groups) != 1:
        raise NotImplementedError("dilation or groups")
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = weight.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    out = np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True)
    return out + np.asarray(node.bias, np.float64).reshape(1, -1, 1, 1)


def flatten(node, x: np.ndarray) -> np.ndarray:
    start = int(node.start_dim) + 1  # skip the batch axis
    end = int(node.end_dim)
    end = x.ndim - 1 if end == -1 else end + 1
    return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])


def run_one_step(graph, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Feed ``x`` (batch, *input shape) for one step; returns (output, spikes per IF node)."""
    import nir

    following = {}
    for source, target in graph.edges:
        following.setdefault(source, []).append(target)
    (start,) = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    values, spikes, output = {start: np.asarray(x, np.float64)}, {}, None
    queue = [start]
    while queue:
        name = queue.pop(0)
        for target in following.get(name, []):
            node, value = graph.nodes[target], values[name]
            if isinstance(node, nir.Conv2d):
                result = conv2d(node, value)
            elif isinstance(node, nir.Linear):
                result = value @ np.asarray(node.weight, np.float64).T
            elif isinstance(node, nir.Affine):
                result = value @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
            elif isinstance(node, nir.Flatten):
                result = flatten(node, value)
            elif isinstance(node, nir.IF):
                membrane = np.asarray(node.r, np.float64) * value
                result = (membrane > np.asarray(node.v_threshold, np.float64)).astype(np.float64)
                spikes[target] = result
            elif isinstance(node, nir.Output):
                result = output = value
            else:
                raise NotImplementedError(type(node).__name__)
            values[target] = result
            queue.append(target)
    return output, spikes
