"""What gets counted (ALGORITHMS.md §4): fan-out, synapses, SOPs, ANN ops, energy.

Conventions of the original code:

* SOPs: every spike entering a layer costs one addition per synapse it drives, its exact
  fan-out with border effects. The encoding layer's pixel input is not counted; the
  output accumulator is (last hidden block's spikes times the number of classes).
* SG multiplies neurons and synapses by 2^k*B: a spike drives every copy of its targets.
* ANN ops: MACs of the same layers, a multiplication counted as two additions, so
  ops = 3 * MACs. Energy: SOPs x E_add against MACs x E_mac (0.9 pJ and 4.6 pJ by
  default, the usual 45 nm CMOS figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qsnn.snn import schemes
from qsnn.snn.model import SpikingLayer, SpikingNet
from qsnn.snn.schemes import PaperConvention


def _coverage(size: int, out_size: int, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """For each input position (1-D), how many output positions' windows cover it."""
    cover = torch.zeros(size, dtype=torch.int64)
    for o in range(out_size):
        start = o * stride - padding
        lo, hi = max(start, 0), min(start + kernel, size)
        if hi > lo:
            cover[lo:hi] += 1
    return cover


def fanout_map(receiver: SpikingLayer | None, sender_shape: tuple[int, ...], classes: int) -> torch.Tensor:
    """Synapses leaving each neuron of a layer whose output has ``sender_shape``.

    ``receiver`` is the next spiking layer, or None when the next is the output accumulator.
    """
    if receiver is None:
        return torch.full(sender_shape, classes, dtype=torch.int64)
    if receiver.kind == "dense":
        return torch.full(sender_shape, receiver.neurons, dtype=torch.int64)
    channels, height, width = sender_shape
    out_channels, out_h, out_w = receiver.out_shape
    rows = _coverage(height, out_h, receiver.kernel, receiver.stride, receiver.padding)
    cols = _coverage(width, out_w, receiver.kernel, receiver.stride, receiver.padding)
    plane = out_channels * rows[:, None] * cols[None, :]
    return plane.expand(channels, height, width).clone()


def fanout_maps(net: SpikingNet) -> list[torch.Tensor]:
    """Per spiking layer, the fan-out of each of its neurons (into the next layer)."""
    maps = []
    for index, layer in enumerate(net.layers):
        receiver = net.layers[index + 1] if index + 1 < len(net.layers) else None
        maps.append(fanout_map(receiver, layer.out_shape, net.classes))
    return maps


def replication(net: SpikingNet, index: int) -> int:
    """How many binary neurons stand for one ANN neuron of layer ``index`` (SG: 2^k*B)."""
    if not schemes.of(net.scheme).binary_copies or index >= len(net.layers):
        return 1
    return int(net.layers[index].levels)


@dataclass(frozen=True)
class LayerCost:
    """Static size of one spiking layer under its scheme."""

    name: str
    neurons: int  # spiking neurons (SG: times 2^k*B)
    ann_neurons: int
    synapses_out: int  # synapses leaving the layer (SG: times the receiver's copies)
    ann_macs: int  # MACs of the ANN layer its spikes feed (border-exact)


def layer_costs(net: SpikingNet) -> list[LayerCost]:
    costs = []
    maps = fanout_maps(net)
    for index, layer in enumerate(net.layers):
        copies = replication(net, index)
        receiver_copies = replication(net, index + 1)
        macs = int(maps[index].sum())
        name = f"{index + 1}:{layer.kind}{'x'.join(map(str, layer.out_shape))}"
        costs.append(
            LayerCost(
                name=name,
                neurons=layer.neurons * copies,
                ann_neurons=layer.neurons,
                synapses_out=macs * copies * receiver_copies,
                ann_macs=macs,
            )
        )
    return costs


def ann_macs(net: SpikingNet) -> int:
    """MACs of one ANN forward pass over the layers SOPs are counted for (§4)."""
    return sum(cost.ann_macs for cost in layer_costs(net))


def total_macs(net: SpikingNet) -> int:
    """All MACs of the ANN forward pass, the encoding layer included."""
    return net.spec.plan().macs


def paper_convention(scheme: str, k: int, dataset: str | None) -> PaperConvention:
    """How the original code of ``scheme`` counts, for a net of level ``k`` on ``dataset``
    (:meth:`qsnn.snn.schemes.Scheme.paper_convention`)."""
    return schemes.of(scheme).paper_convention(k, dataset)


def nominal_ann_macs(net: SpikingNet, classifier: bool = True) -> int:
    """The papers' ANN MACs: every layer after the encoding one, and the classifier when
    ``classifier``, each output neuron times its full fan-in (borders ignored, as the
    original code counts)."""
    total = 0
    for layer in net.layers[1:]:
        fan_in = int(np.prod(layer.weight.shape[1:]))
        total += layer.neurons * fan_in
    return total + (net.classes * net.layers[-1].neurons if classifier else 0)
