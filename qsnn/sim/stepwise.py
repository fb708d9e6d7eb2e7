"""The step-by-step simulator: the executable definition of the SNN's dynamics.

:func:`simulate_batch` runs a batch through every layer, step by step, with the neuron
steps of :mod:`qsnn.snn.neurons` on dense float64 tensors holding exact integers, on any
device (a GPU gives the same numbers bit for bit). SG's single step is
:func:`scatter_gather_batch`. Both return a :class:`BatchRecord`: predictions per step,
spikes and SOPs per layer and step, and final counts. The fast engine
(:mod:`qsnn.sim.events`) is tested against it count for count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.measure.fanout import fanout_maps, replication
from qsnn.options import AUTO_MAX_STEPS  # (also what --steps accepts)
from qsnn.sim import engine
from qsnn.sim.noise import NoiseDraws, dropped_spikes
from qsnn.snn.model import SpikingNet
from qsnn.snn.neurons import NEURON_MODELS, target_count
from qsnn.snn.reference import (
    apply_layer,
    check_input_limit,
    cpu_kernels,
    float_stage,
    input_bound,
    layer_weight,
)
from qsnn.snn.schemes import SCHEMES


class BatchRecord(NamedTuple):
    """What one batch did, per step t = 1..T (statistics summed over the batch's images)."""

    predictions: torch.Tensor  # (T, B) int64
    positive: torch.Tensor  # (L, T) int64, +1 spikes per layer and step
    negative: torch.Tensor  # (L, T) int64, -1 spikes
    sops: torch.Tensor  # (L, T) int64, synaptic operations caused by layer l's spikes
    spiking_neurons: torch.Tensor  # (L,) int64, neurons (x images) that spiked at least once
    counts: list[torch.Tensor]  # final count of every hidden layer, (B, ...) int64
    # per layer, final counts that differ from the reference ANN's, when the simulator
    # compared them itself (else the caller compares ``counts``)
    mismatches: list[int] | None = None


class _Statistics:
    """Per-step spike and SOP bookkeeping shared by the simulators."""

    def __init__(self, net: SpikingNet, device) -> None:
        self.maps = [m.to(device) for m in fanout_maps(net)]
        self.sop_factor = [replication(net, index + 1) for index in range(len(net.layers))]
        self.positive: list[list[int]] = [[] for _ in net.layers]
        self.negative: list[list[int]] = [[] for _ in net.layers]
        self.sops: list[list[int]] = [[] for _ in net.layers]
        self.spiked: list[torch.Tensor | int | None] = [None for _ in net.layers]

    def record(self, index: int, positive: torch.Tensor, negative: torch.Tensor | None = None) -> None:
        """Record one step of layer ``index``: its positive and negative spikes per neuron
        (SG: the gathered binary spikes, no negative ones)."""
        moved = positive if negative is None else positive + negative
        per_neuron = moved.sum(dim=0)  # over the batch; then each neuron's fan-out
        self.positive[index].append(int(positive.sum()))
        self.negative[index].append(0 if negative is None else int(negative.sum()))
        self.sops[index].append(int((per_neuron * self.maps[index]).sum()) * self.sop_factor[index])
        fired = moved != 0
        self.spiked[index] = fired if self.spiked[index] is None else self.spiked[index] | fired

    def record_once(self, index: int, counts: torch.Tensor) -> None:
        """Record the single step of an SG layer: its gathered (non-negative) counts."""
        if not cpu_kernels(counts):
            self.record(index, counts)
            return
        flat = counts.reshape(counts.shape[0], -1).numpy()
        fanout = self.maps[index].reshape(-1).numpy()
        spikes, sops, spiking = engine.layer_statistics(flat, fanout)
        self.positive[index].append(spikes)
        self.negative[index].append(0)
        self.sops[index].append(sops * self.sop_factor[index])
        self.spiked[index] = spiking

    def drop_last_step(self) -> None:
        for per_layer in (self.positive, self.negative, self.sops):
            for values in per_layer:
                values.pop()

    def tensors(self):
        positive = torch.tensor(self.positive, dtype=torch.int64)
        negative = torch.tensor(self.negative, dtype=torch.int64)
        sops = torch.tensor(self.sops, dtype=torch.int64)
        spiking = torch.tensor([s if isinstance(s, int) else int(s.sum()) for s in self.spiked], dtype=torch.int64)
        return positive, negative, sops, spiking


def _dense_membrane(index: int, layer, inputs: torch.Tensor, largest: float) -> torch.Tensor:
    if inputs.is_floating_point():  # (noisy pixels)
        return float_stage(layer, inputs)
    return apply_layer(layer, inputs.to(torch.float64), layer_weight(layer, inputs.device))


def _count_levels(index: int, layer, membrane: torch.Tensor) -> torch.Tensor:
    return target_count(membrane, layer.thresholds().to(membrane.device))


def scatter_gather_batch(net: SpikingNet, pixels, noise, draws, membrane, count) -> BatchRecord:
    """SG's single step: every layer once, counts gathered from the binary neurons
    (:func:`qsnn.snn.neurons.scatter_gather`), spikes dropped with probability ``noise``.
    ``membrane(index, layer, inputs, largest)`` and ``count(index, layer, membrane)`` say how."""
    stats = _Statistics(net, pixels.device)
    x = pixels
    counts = []
    for index, layer in enumerate(net.layers):
        largest = input_bound(net, index, x)
        check_input_limit(layer, largest, index)
        n = dropped_spikes(count(index, layer, membrane(index, layer, x, largest)), noise, draws, index)
        stats.record_once(index, n)
        counts.append(n)
        x = n
    logits = F.linear(x.flatten(1).to(torch.float64), layer_weight(net.output, x.device))
    positive, negative, sops, spiking = stats.tensors()
    return BatchRecord(logits.argmax(dim=1)[None], positive, negative, sops, spiking, counts)


@torch.no_grad()
def simulate_batch(
    net: SpikingNet,
    pixels: torch.Tensor,
    steps: int | None,
    *,
    noise: float = 0.0,
    draws: NoiseDraws | None = None,
) -> BatchRecord:
    """Run the spiking network step by step on one batch (the reference simulator).

    ``pixels``: (B, C, H, W) raw 0..255 values (already noisy for NSD/INT noise runs).
    ``steps``: number of time steps, or None to stop at the first step in which no neuron
    spikes (from then on nothing is in flight and the output can no longer change).
    ``noise``: SG only, the probability that a binary neuron's spike is dropped, drawn
    from ``draws`` (default: seed 0, the batch being the dataset's first images).
    """
    device = pixels.device
    rules = SCHEMES[net.scheme]
    if rules.single_step:
        return scatter_gather_batch(net, pixels, noise, draws, _dense_membrane, _count_levels)
    weights = [layer_weight(layer, device) for layer in net.layers]
    out_weight = layer_weight(net.output, device)
    thresholds = [net.thresholds(i).to(device).prepared() for i in range(len(net.layers))]
    stats = _Statistics(net, device)
    check_input_limit(net.layers[0], input_bound(net, 0, pixels), 0)
    batch = pixels.shape[0]

    encoding_current = _dense_membrane(0, net.layers[0], pixels, None)
    neurons = [NEURON_MODELS[rules.neuron("encoding" if index == 0 else "hidden")] for index in range(len(net.layers))]
    states = [
        neuron.init(torch.zeros((batch, *layer.out_shape), dtype=torch.float64, device=device), thresholds[index])
        for index, (neuron, layer) in enumerate(zip(neurons, net.layers, strict=True))
    ]
    accumulator = torch.zeros((batch, net.classes), dtype=torch.float64, device=device)
    totals = [torch.zeros((batch, *layer.out_shape), dtype=torch.float64, device=device) for layer in net.layers]
    predictions = []
    limit = steps if steps is not None else AUTO_MAX_STEPS
    for t in range(limit):
        any_spike = False
        spikes = None
        for index, layer in enumerate(net.layers):
            if index == 0:
                current = encoding_current if t == 0 else torch.zeros_like(encoding_current)
            else:
                check_input_limit(layer, input_bound(net, index, totals[index - 1]), index)
                current = apply_layer(layer, spikes.to(torch.float64), weights[index])
            states[index], spikes = neurons[index].step(states[index], current, thresholds[index], t)
            totals[index] += spikes
            stats.record(index, spikes.clamp(min=0), (-spikes).clamp(min=0))
            any_spike = any_spike or bool(spikes.any())
        check_input_limit(net.output, input_bound(net, len(net.layers), totals[-1]), len(net.layers))
        accumulator += F.linear(spikes.to(torch.float64).flatten(1), out_weight)
        predictions.append(accumulator.argmax(dim=1))
        if steps is None and not any_spike:
            if t > 0:  # the silent step only confirms that the output is final
                predictions.pop()
                stats.drop_last_step()
            break
    else:
        if steps is None:
            raise QsnnError(f"the network was still spiking after {AUTO_MAX_STEPS} steps; give --steps")
    positive, negative, sops, spiking = stats.tensors()
    counts = [state.count for state in states]
    return BatchRecord(torch.stack(predictions), positive, negative, sops, spiking, counts)
