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

import math
from dataclasses import dataclass

import numpy as np
import torch

from qsnn.conversion import SpikingLayer, SpikingNet

ENERGY_PER_ADD_PJ = 0.9
ENERGY_PER_MAC_PJ = 4.6


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
    if net.scheme != "sg" or index >= len(net.layers):
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


@dataclass(frozen=True)
class PaperConvention:
    """How one original code base counts spikes and SOPs (its text files and figures),
    relative to qsnn's SOPs of each layer's spikes (``result.sops[l]``: layer l's spikes
    times their exact fan-out; the last layer's into the output accumulator).

    - ``encoding_spikes``: whether the encoding layer's spikes are in spike_num;
    - ``encoding_weight``: SOPs per synapse of an encoding spike (INT: 2^k, its magnitude);
    - ``classifier``: whether the output accumulator's additions are counted;
    - ``factor``: a multiplier on the total (SG: 2);
    - ``files``: the text files the original writes.
    """

    encoding_spikes: bool
    encoding_weight: int
    classifier: bool
    factor: int
    files: tuple[str, ...]

    def sops(self, per_layer: list[float]) -> float:
        """The original's SOPs from qsnn's SOPs of each layer's spikes."""
        last = len(per_layer) - 1
        total = sum(
            value * (self.encoding_weight if index == 0 else 1)
            for index, value in enumerate(per_layer) if index < last or self.classifier
        )
        return self.factor * total

    def spikes(self, per_layer: list[float]) -> float:
        """The original's spike count from qsnn's spikes of each layer."""
        return sum(value for index, value in enumerate(per_layer) if index > 0 or self.encoding_spikes)


NSD_FILES = ("accuracy.txt", "spike_num.txt", "spike_collect.txt", "sop_num.txt")
CIFAR_LIKE = ("cifar10", "cifar100")


def paper_convention(scheme: str, k: int, dataset: str | None) -> PaperConvention:
    """The convention of the original code of ``scheme`` (ALGORITHMS.md §4), for a net
    with activation level ``k`` on ``dataset``:

    - NSD (Spiking_Networks_with_Negative_Spike_Dynamics): every layer's spikes, the
      encoding layer's included; SOPs as qsnn counts them, accumulator included.
    - SG (Spatio_temporal_SNNs): spikes of every layer; SOPs twice qsnn's, without the
      accumulator; no spike_collect.txt.
    - INT (ALL_INT_SNN): the encoding layer's spikes left out of the spike counts, each
      of them 2^k SOPs per synapse; the accumulator counted for MNIST-sized data, not for
      CIFAR; also abs_spike.txt and sum_spike.txt.
    """
    if scheme == "sg":
        return PaperConvention(True, 1, False, 2, ("accuracy.txt", "spike_num.txt", "sop_num.txt"))
    if scheme == "int":
        return PaperConvention(
            False, 1 << k, dataset not in CIFAR_LIKE, 1, (*NSD_FILES, "abs_spike.txt", "sum_spike.txt"),
        )
    return PaperConvention(True, 1, True, 1, NSD_FILES)


def nominal_ann_macs(net: SpikingNet, classifier: bool = True) -> int:
    """The papers' ANN MACs: every layer after the encoding one, and the classifier when
    ``classifier``, each output neuron times its full fan-in (borders ignored, as the
    original code counts)."""
    total = 0
    for layer in net.layers[1:]:
        fan_in = int(np.prod(layer.weight.shape[1:]))
        total += layer.neurons * fan_in
    return total + (net.classes * net.layers[-1].neurons if classifier else 0)


def energy(sops: float, macs: float, e_add: float = ENERGY_PER_ADD_PJ, e_mac: float = ENERGY_PER_MAC_PJ) -> dict:
    """Energy estimate per image in picojoules: SNN additions against ANN MACs."""
    snn = sops * e_add
    ann = macs * e_mac
    return {
        "energy_per_add_pj": e_add,
        "energy_per_mac_pj": e_mac,
        "snn_pj": snn,
        "ann_pj": ann,
        "ratio": snn / ann if ann else math.nan,
    }
