"""Simulating a converted spiking network, ALGORITHMS.md §3 and §4.

Inputs are presented once: the encoding layer receives the pixels at t = 0 and nothing
afterwards. Spikes travel through all layers within the same step. The output is a
non-spiking accumulator: logits_t = W_out * (cumulative counts of the last hidden layer),
prediction_t = argmax.

:func:`simulate_batch` is the straightforward step-by-step simulator, kept as the
executable definition; it runs on any device (dense float64 tensors holding exact
integers, so a GPU gives the same numbers bit for bit; under pixel noise the encoding
layer's float sums are the one stage that may round differently). :class:`EventSimulator` is the
fast event-driven CPU engine (:mod:`qsnn.engine`); tests compare it with the reference
count for count. :func:`simulate` streams a whole dataset through one of them in
batches and aggregates the statistics into a :class:`SimulationResult`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from qsnn.conversion import (
    SpikingNet,
    apply_layer,
    check_input_limit,
    counting_membrane,
    cpu_kernels,
    float_stage,
    input_bound,
    layer_counts,
    layer_weight,
    reference_counts,
)
from qsnn.data import spiking_input
from qsnn.errors import QsnnError, check_device, check_seed, integer_in
from qsnn.metrics import fanout_maps, replication
from qsnn.neurons import (
    adaptive_init,
    adaptive_step,
    drop_spikes,
    nsd_init,
    nsd_step,
    rising_threshold_step,
    target_count,
)
from qsnn.schemes import SCHEMES

AUTO_MAX_STEPS = 100_000


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


_MASK64 = 2**64 - 1


def _mix(value: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit words that spreads every input bit."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


SG_DROPS = ("encoding", "every-layer")  # where SG's noise drops spikes; the first is the paper's


class NoiseDraws:
    """The random numbers of a noisy run: one stream per (seed, image, stage), so that an
    image's noise depends on the seed and on its position in the dataset only, never on
    how the images are split into batches. Stage 0 is the pixel noise (NSD, INT); stage
    l + 1 the spikes dropped in SG layer l. ``sg_drop``: the SG layers that drop spikes,
    "encoding" (the SG paper's model: its noise reaches conv1 only) or "every-layer"."""

    def __init__(self, seed: int, first_image: int = 0, sg_drop: str = "encoding") -> None:
        self.seed = seed
        self.first_image = first_image
        self.sg_drop = sg_drop

    def drops_in(self, layer: int) -> bool:
        return self.sg_drop == "every-layer" or layer == 0

    def generator(self, image: int, stage: int) -> torch.Generator:
        """The CPU generator of image ``image`` of this batch (0-based) at ``stage``."""
        word = self.seed & _MASK64
        for part in (self.first_image + image, stage):
            word = _mix(word ^ _mix(part + 0x9E3779B97F4A7C15))
        return torch.Generator().manual_seed(word)


def noisy_pixels(pixels: torch.Tensor, ratio: float, draws: NoiseDraws) -> torch.Tensor:
    """Multiplicative input noise x * (1 + (u - 1/2) * r), u ~ U[0, 1) per pixel (§4)."""
    if ratio <= 0:
        return pixels.to(torch.float64)
    u = torch.stack([
        torch.rand(pixels.shape[1:], generator=draws.generator(image, 0), dtype=torch.float64)
        for image in range(pixels.shape[0])
    ]).to(pixels.device)
    return pixels.to(torch.float64) * (1.0 + (u - 0.5) * ratio)


def _dropped(counts: torch.Tensor, ratio: float, draws: NoiseDraws | None, layer: int) -> torch.Tensor:
    """SG's spike drop, image by image from each image's own stream, in the layers the
    drop model names (the encoding layer only, by default)."""
    draws = draws if draws is not None else NoiseDraws(0)
    if ratio <= 0 or not draws.drops_in(layer):
        return counts
    return torch.cat([
        drop_spikes(counts[image : image + 1], ratio, draws.generator(image, layer + 1))
        for image in range(counts.shape[0])
    ])


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
        from qsnn import engine

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
    (:func:`qsnn.neurons.scatter_gather`), spikes dropped with probability ``noise``.
    ``membrane(index, layer, inputs, largest)`` and ``count(index, layer, membrane)`` say how."""
    stats = _Statistics(net, pixels.device)
    x = pixels
    counts = []
    for index, layer in enumerate(net.layers):
        largest = input_bound(net, index, x)
        check_input_limit(layer, largest, index)
        n = _dropped(count(index, layer, membrane(index, layer, x, largest)), noise, draws, index)
        stats.record_once(index, n)
        counts.append(n)
        x = n
    logits = F.linear(x.flatten(1).to(torch.float64), layer_weight(net.output, x.device))
    positive, negative, sops, spiking = stats.tensors()
    return BatchRecord(logits.argmax(dim=1)[None], positive, negative, sops, spiking, counts)


def _differences(first: torch.Tensor, second: torch.Tensor) -> int:
    """Entries in which two count tensors differ (one pass on the CPU, whatever the dtypes)."""
    if not (cpu_kernels(first) and cpu_kernels(second)):
        return int((first != second.to(first.device)).sum())
    from qsnn import engine

    return engine.differences(first.numpy(), second.numpy())


def _gathered(index: int, layer, membrane: torch.Tensor) -> torch.Tensor:
    from qsnn import engine

    if not cpu_kernels(membrane):
        return target_count(membrane, layer.thresholds().to(membrane.device))
    return torch.from_numpy(engine.gathered_counts(layer.thresholds(), membrane.numpy()))


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
    thresholds = [net.thresholds(i).to(device) for i in range(len(net.layers))]
    stats = _Statistics(net, device)
    check_input_limit(net.layers[0], input_bound(net, 0, pixels), 0)
    batch = pixels.shape[0]

    encoding_current = _dense_membrane(0, net.layers[0], pixels, None)
    states = []
    for index, layer in enumerate(net.layers):
        like = torch.zeros((batch, *layer.out_shape), dtype=torch.float64, device=device)
        if rules.hidden_neuron == "adaptive" and index > 0:
            states.append(adaptive_init(like, thresholds[index]))
        else:
            states.append(nsd_init(like))
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
            if rules.rising_encoding and index == 0:
                state = states[0]
                membrane = state.membrane + current
                spikes = rising_threshold_step(t, membrane, thresholds[0])
                states[0] = state._replace(membrane=membrane, count=state.count + spikes)
            elif rules.hidden_neuron == "adaptive":
                states[index], spikes = adaptive_step(states[index], current, thresholds[index])
            else:
                states[index], spikes = nsd_step(states[index], current, thresholds[index])
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


ENGINE_MEMORY = 256 * 2**20  # bytes of per-step records the engine may hold at once


class EventSimulator:
    """The fast CPU simulator (:mod:`qsnn.engine`) behind the :func:`simulate_batch` interface.

    SG runs as one dense pass (it has a single step); NSD and INT run event-driven.
    Results equal the reference simulator's count for count.
    """

    def __init__(self, net: SpikingNet) -> None:
        from qsnn import engine

        self.engine = engine
        self.program = None if SCHEMES[net.scheme].single_step else engine.compile_program(net)
        self._float_weights: dict[int, np.ndarray] = {}

    def _float_weight(self, index: int, layer) -> np.ndarray:
        """Layer ``index``'s weights as float64 (exact: integers below 2^53), made once."""
        if index not in self._float_weights:
            self._float_weights[index] = np.ascontiguousarray(layer.weight, dtype=np.float64)
        return self._float_weights[index]

    def _run(self, first: np.ndarray, cap: int, auto: bool, every_membrane: bool):
        """The engine on images in slices small enough that the per-step records of ``cap``
        steps stay within ENGINE_MEMORY, whatever the batch size and step count."""
        layers = self.program.geometry.shape[0]
        outputs = self.program.outputs
        per_image = 8 * (3 * layers + 1) * cap + 4 * int(outputs[-1]) + 8 * int(outputs[-1] - outputs[1]) + 8 * layers
        size = max(1, ENGINE_MEMORY // per_image)
        parts = [
            self.engine.run(self.program, first[at : at + size], cap, auto, every_membrane)
            for at in range(0, len(first), size)
        ]
        if len(parts) == 1:
            return parts[0]
        return self.engine.EngineRun(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))

    def _scatter_gather(self, net, pixels, ann_counts, ann_membranes) -> BatchRecord:
        """SG without spike drop, on the CPU, against the reference ANN: each layer's count
        kernel also counts where it differs from the ANN, in the same pass; a layer whose
        inputs equal the ANN's (no difference upstream) reuses the ANN's membrane."""
        mismatches: list[int] = []

        def membrane(index, layer, inputs, largest):
            if index == 0 or mismatches[index - 1] == 0:
                return ann_membranes[index]
            return counting_membrane(layer, inputs, largest)

        def count(index, layer, membrane):
            found, differing = self.engine.gathered_counts(
                layer.thresholds(), membrane.numpy(), ann_counts[index].numpy()
            )
            mismatches.append(differing)
            return torch.from_numpy(found)

        record = scatter_gather_batch(net, pixels, 0.0, None, membrane, count)
        return record._replace(mismatches=mismatches)

    @torch.no_grad()
    def __call__(self, net, pixels, steps, *, noise=0.0, draws=None, reference=None) -> BatchRecord:
        """The :func:`simulate_batch` interface. ``reference``: (counts, membranes) of the
        exact ANN on these same inputs, when the caller has them; SG then reuses the ANN's
        membranes wherever its own inputs are the same (a membrane is a linear function of
        them), but always counts its own spikes, with a different algorithm from the ANN's
        (:func:`_gathered` scans the binary neurons' thresholds), so the agreement it
        reports is a check."""
        if SCHEMES[net.scheme].single_step:
            ann_counts, ann_membranes = reference if reference is not None else (None, None)

            def membrane(index, layer, inputs, largest):
                same = ann_membranes is not None and (index == 0 or torch.equal(inputs, ann_counts[index - 1]))
                return ann_membranes[index] if same else counting_membrane(layer, inputs, largest)

            if ann_counts is None or noise > 0 or not cpu_kernels(pixels):
                return scatter_gather_batch(net, pixels, noise, draws, membrane, _gathered)
            return self._scatter_gather(net, pixels, ann_counts, ann_membranes)
        record, _, _ = self._event_driven(net, pixels, steps)
        return record

    @torch.no_grad()
    def against_ann(self, net, pixels, steps, *, noise=0.0, draws=None, checks: list | None = None):
        """The simulation and the exact quantized ANN on the same inputs, in one go:
        (record with per-layer count mismatches, the ANN's counts per layer (integer tensors: int32
        where read off the engine), its logits).

        NSD and INT read the ANN off the simulation. A hidden layer's membrane is a linear
        function of its inputs and the engine's is exact (integer arithmetic), so wherever
        the spiking layer l - 1 ended with the ANN's counts, the final membrane of layer l
        *is* the ANN's membrane of layer l. Where every count of the layer also sits
        between its two thresholds (the engine reports it), the counts are m(V), the
        ANN's; elsewhere the ANN counts the membrane with its own kernel (the
        estimate-and-correct of :func:`qsnn.engine.counts`, not the spiking dynamics).
        Images whose spiking counts still differ upstream get the ANN's membrane from the
        spiking one, V + W (ANN counts - spiking counts), adding the weights of the
        differing inputs only (:func:`qsnn.engine.corrected_membranes`). Raw uint8 pixels
        are encoded by the engine itself (:func:`qsnn.engine.encode`). The first image of
        every batch is also evaluated by :func:`qsnn.conversion.reference_counts` from
        scratch, as a check: at once, or, given a list as ``checks``, later, with those of
        other batches in one go (the list receives the image and what was read off for
        it; see :func:`check_against_reference`).
        """
        if SCHEMES[net.scheme].single_step:
            membranes: list = []
            checked: list = []
            counts, logits = reference_counts(net, pixels, membranes, checked)
            if noise == 0 and all(differing == 0 for differing in checked):
                # every layer's binary neurons, counted by their own algorithm in the ANN's
                # pass, fired as the ANN counts, so the spiking layers receive the ANN's
                # inputs: the simulation is the ANN's counts
                record = scatter_gather_batch(
                    net, pixels, 0.0, None, lambda index, *_: membranes[index], lambda index, *_: counts[index]
                )
                record = record._replace(mismatches=[0] * len(net.layers))
            else:
                record = self(net, pixels, steps, noise=noise, draws=draws, reference=(counts, membranes))
            return record, counts, logits
        record, counts, logits = self._event_driven(net, pixels, steps, with_ann=True)
        first = (pixels[:1].clone(), [c[:1].clone() for c in counts], logits[:1].clone())  # (not views of the batch)
        if checks is None:
            check_against_reference(net, [first])
        else:
            checks.append(first)
        return record, counts, logits

    def _event_driven(self, net, pixels, steps, with_ann: bool = False):
        """NSD / INT on the engine: (record, ANN counts, ANN logits), the last two None
        unless ``with_ann`` (see :meth:`against_ann`)."""
        layer = net.layers[0]
        largest = input_bound(net, 0, pixels)
        check_input_limit(layer, largest, 0)
        if pixels.dtype == torch.uint8 and layer.ann_thresholds is None:  # raw pixels: the engine encodes them
            membrane = None  # (only needed to count by other tables than the encoding's own)
            first = torch.from_numpy(self.engine.encode(self.program, pixels.numpy())).reshape(len(pixels), *layer.out_shape)
        else:
            membrane = counting_membrane(layer, pixels, largest)
            first = _gathered(0, layer, membrane)
        cap = steps if steps is not None else 32
        # the read-off needs the final membranes where something is unsettled, and, where a
        # layer's ANN tables are not its own, everywhere
        every_membrane = with_ann and any(block.ann_thresholds is not None for block in net.layers)
        while True:
            positive, negative, sops, spiking, predictions, counts, used, final, final_logits, unsettled = self._run(
                first.reshape(first.shape[0], -1).numpy(), cap, steps is None, every_membrane
            )
            if steps is not None or int(used.max()) < cap:
                break
            if cap >= AUTO_MAX_STEPS:
                raise QsnnError(f"the network was still spiking after {AUTO_MAX_STEPS} steps; give --steps")
            cap = min(cap * 4, AUTO_MAX_STEPS)
        total = int(used.max()) if steps is None else steps
        for b, last in enumerate(used):  # pad quiescent images: nothing more happens
            predictions[b, last:total] = predictions[b, last - 1]
        batch = len(first)
        per_layer = []
        at = 0
        for spiking_layer in net.layers:
            flat = counts[:, at : at + spiking_layer.neurons]
            per_layer.append(torch.from_numpy(flat).reshape(batch, *spiking_layer.out_shape))
            at += spiking_layer.neurons
        record = BatchRecord(
            predictions=torch.from_numpy(predictions[:, :total].T.copy()),
            positive=torch.from_numpy(positive[:, :, :total].sum(0)),
            negative=torch.from_numpy(negative[:, :, :total].sum(0)),
            sops=torch.from_numpy(sops[:, :, :total].sum(0)),
            spiking_neurons=torch.from_numpy(spiking.sum(0)),
            counts=per_layer,
        )
        if not with_ann:
            return record, None, None
        return self._ann_read_off(net, record, membrane, first, final, final_logits, unsettled, every_membrane)

    def _ann_read_off(
        self, net, record: BatchRecord, encoding_membrane, encoding_counts, final, final_logits, unsettled, every_membrane,
    ):
        """The exact ANN from the engine's final state (see :meth:`against_ann`): (record
        with the mismatches per layer, ANN counts per layer, ANN logits). The encoding
        layer's counts m(V), all its spikes, are the ANN's where its tables are."""
        spiking = record.counts
        encoding = net.layers[0]
        exact_tables = encoding.ann_thresholds is None
        if exact_tables:  # the spiking counts min(m, steps) differ where the train was cut short
            ann, differing = [encoding_counts], [unsettled[:, 0]]
        else:
            ann = [layer_counts(encoding, encoding_membrane, ann=True)]
            differing = [self.engine.row_differences(spiking[0].numpy(), ann[0].numpy())]  # per image
        # the images whose final membranes the engine kept (see qsnn.engine.run)
        written = unsettled.any(axis=1) | every_membrane
        at = 0
        for index, layer in enumerate(net.layers[1:], start=1):
            largest = input_bound(net, index, ann[-1])
            check_input_limit(layer, largest, index)
            membrane = final[:, at : at + layer.neurons]
            at += layer.neurons
            same = differing[-1] == 0  # layer index - 1 ended with the ANN's counts
            # where, besides, every count of the layer sits between its two thresholds,
            # T(c - 1) <= V < T(c), it is m(V), the ANN's count (when the tables are the ANN's)
            settled = same & (unsettled[:, index] == 0) if layer.ann_thresholds is None else np.zeros_like(same)
            where = np.flatnonzero(~settled)  # the images whose counts are read off the membranes
            rest = torch.from_numpy(where)
            counts = spiking[index]  # the spiking counts (int32), copied only where some differ
            found = np.zeros(len(same), np.int64)
            if len(where):
                counts = counts.clone()
                if not written[where].all():
                    raise QsnnError("internal error: a membrane the ANN is read off was not kept; please report it")
                exact = torch.from_numpy(membrane[where]).reshape(len(rest), *layer.out_shape)
                upstream = torch.from_numpy(~same[where])  # the spiking inputs differ: the ANN's own membrane
                if upstream.any():  # V(ANN counts) = V(spiking counts) + W (ANN counts - spiking counts)
                    exact = exact.to(torch.float64)
                    images = rest[upstream]
                    exact[upstream] = torch.from_numpy(self.engine.corrected_membranes(
                        layer, exact[upstream].numpy(), ann[-1][images].numpy(), spiking[index - 1][images].numpy(),
                        self._float_weight(index, layer),
                    ))
                counts[rest] = layer_counts(layer, exact, ann=True).to(counts.dtype)
                found[where] = self.engine.row_differences(spiking[index][rest].numpy(), counts[rest].numpy())
            ann.append(counts)
            differing.append(found)
        check_input_limit(net.output, input_bound(net, len(net.layers), ann[-1]), len(net.layers))
        logits = torch.from_numpy(final_logits).to(torch.float64)
        same = torch.from_numpy(differing[-1] == 0)
        if not same.all():
            logits[~same] = F.linear(ann[-1][~same].flatten(1).to(torch.float64), layer_weight(net.output, "cpu"))
        return record._replace(mismatches=[int(d.sum()) for d in differing]), ann, logits


def check_against_reference(net: SpikingNet, checks: list) -> None:
    """Evaluate the quantized ANN from scratch on the images of ``checks`` ((pixels,
    counts per layer, logits) read off simulations), all in one batch, and insist on the
    same counts and logits."""
    checks = [check for check in checks if len(check[0])]
    if not checks:
        return
    pixels = torch.cat([check[0] for check in checks])
    counts = [torch.cat([check[1][index] for check in checks]) for index in range(len(net.layers))]
    logits = torch.cat([check[2] for check in checks])
    expected, expected_logits = reference_counts(net, pixels)
    for index, (found, wanted) in enumerate(zip(counts, expected, strict=True)):
        if not torch.equal(found.to(torch.int64), wanted.to(torch.int64)):
            raise QsnnError(
                f"internal error: the ANN read off the simulation differs from the exact ANN in layer {index + 1}; "
                "please report it, with the network"
            )
    if not torch.equal(logits, expected_logits):
        raise QsnnError("internal error: the ANN's logits read off the simulation differ from the exact ANN's; please report it")


@dataclass
class SimulationResult:
    """Aggregated statistics of a simulation over a dataset (all sums over images)."""

    scheme: str
    steps: int
    images: int
    noise: float
    correct: list[int]  # per step
    agree: list[int]  # per step: images whose prediction equals the quantized ANN's
    ann_correct: int  # the quantized ANN (exact reference) on the same inputs
    ann_correct_clean: int  # ... on the clean inputs
    positive: list[list[int]]  # [layer][step]
    negative: list[list[int]]
    sops: list[list[int]]
    spiking_neurons: list[int]  # per layer, summed over images
    count_mismatches: list[int]  # per layer: neurons whose final count differs from the ANN's
    batches: dict[str, list] = field(default_factory=dict)  # per batch (see simulate)
    # the independent check against the trained model's exact ANN (qsnn.exact.ExactANN):
    verified_images: int = 0  # images evaluated by it (none under noise)
    verified_count_mismatches: list[int] = field(default_factory=list)  # per layer, on those images
    verified_disagreements: int = 0  # of those images, final SNN predictions that differ from it
    sg_drop: str | None = None  # SG under noise: where spikes were dropped (SG_DROPS)

    @property
    def accuracy(self) -> list[float]:
        return [100.0 * c / self.images for c in self.correct]

    @property
    def t_paper(self) -> int:
        """The papers' T: the first step from which the accuracy stays at its final value
        (their figures' and tables' time steps; an image may still change its prediction
        after it, as long as the number of correct ones does not change)."""
        first = self.steps
        while first > 1 and self.correct[first - 2] == self.correct[-1]:
            first -= 1
        return first

    @property
    def t_lossless(self) -> int | None:
        """First step from which every image agrees with the ANN, or None."""
        first = None
        for t in range(self.steps, 0, -1):
            if self.agree[t - 1] != self.images:
                break
            first = t
        return first


def checked_inputs(net: SpikingNet, pixels, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images as :func:`simulate` takes them: raw pixel values 0..255 (uint8, or
    integers in any integer or float dtype, returned as uint8) of the network's input
    shape, and one class label per image. Anything else (pixels scaled to [0, 1],
    negative or fractional values, labels out of range) is refused, not simulated."""
    if not isinstance(pixels, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise QsnnError(
            f"pixels and labels must be torch tensors, got {type(pixels).__name__} and {type(labels).__name__}; "
            "use torch.as_tensor"
        )
    if pixels.ndim != 1 + len(net.input_shape) or tuple(pixels.shape[1:]) != tuple(net.input_shape):
        raise QsnnError(
            f"the network expects images of shape {tuple(net.input_shape)}, got {tuple(pixels.shape[1:])}; "
            "use the dataset it was trained on"
        )
    if len(pixels) == 0:
        raise QsnnError("no images to simulate")
    if labels.shape != (len(pixels),):
        raise QsnnError(f"{len(pixels)} images but labels of shape {tuple(labels.shape)}; give one label per image")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise QsnnError(f"labels must be integer class indices, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= net.classes:
        raise QsnnError(
            f"labels must be class indices 0..{net.classes - 1}, got values from {int(labels.min())} to {int(labels.max())}"
        )
    if pixels.dtype == torch.uint8:
        return pixels, labels
    if pixels.dtype == torch.bool or pixels.is_complex():
        raise QsnnError(f"pixels must be raw values 0..255 (uint8), got {pixels.dtype}")
    if pixels.is_floating_point() and bool(pixels.isnan().any()):
        raise QsnnError("pixels must be raw integer values 0..255, got NaN among them")
    low, high = float(pixels.min()), float(pixels.max())
    if pixels.is_floating_point() and low >= 0 and high <= 1 and not torch.equal(pixels, pixels.round()):
        raise QsnnError(
            f"pixels must be raw values 0..255, got {pixels.dtype} in [0, 1]: multiply by 255 and round, "
            "or pass the uint8 images"
        )
    if not (low >= 0 and high <= 255) or not torch.equal(pixels, pixels.round()):  # (NaN fails both)
        raise QsnnError(
            f"pixels must be raw integer values 0..255, got {pixels.dtype} values from {low:g} to {high:g}"
        )
    return pixels.to(torch.uint8), labels


@torch.no_grad()
def simulate(
    net: SpikingNet,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int | None,
    noise: float = 0.0,
    batch_size: int = 200,  # small enough that the caches and the allocator's reuse help
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
    simulator=None,
    verify: str = "all",
    sg_drop: str = "encoding",
) -> SimulationResult:
    """Simulate ``net`` on all images, batch by batch, and aggregate the statistics.

    ``pixels``: uint8 (N, C, H, W) already cropped to the network's input size.
    ``noise``: NSD/INT multiplicative pixel noise ratio r; SG spike-drop probability r,
    in the encoding layer (``sg_drop="encoding"``, the SG paper's model) or in every
    layer (``sg_drop="every-layer"``).
    ``steps``: time steps, or None for "auto" (until nothing is in flight).
    ``verify``: which images the SNN's final counts and prediction are also checked on
    against the exact ANN of the trained model it was converted from (computed from the
    model's own parameters, not from the converted tables): "sample" (the first image of
    every batch), "all", or "none". Clean inputs only (noise 0).
    """
    from tqdm.auto import tqdm

    if isinstance(net, str | Path):
        net = SpikingNet.load(net)
    if not isinstance(net, SpikingNet):
        raise QsnnError(
            f"simulate() takes a converted network (qsnn.convert(...), or the path of a .npz that "
            f"`qsnn convert` wrote), got {type(net).__name__}"
        )
    device = check_device(device)
    if not isinstance(noise, int | float) or not 0 <= noise <= 1:  # also refuses NaN
        raise QsnnError(f"--noise must be between 0 and 1, got {noise}")
    pixels, labels = checked_inputs(net, pixels, labels)
    if steps is not None and not integer_in(steps, 1):
        raise QsnnError(f"steps must be a positive integer or None (until nothing is in flight), got {steps!r}")
    rules = SCHEMES[net.scheme]
    if rules.single_step and steps not in (None, 1):
        raise QsnnError(f"{rules.title} takes one time step; --steps {steps} does not apply to it (drop it)")
    if not integer_in(batch_size, 1):
        raise QsnnError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_seed(seed)
    if sg_drop not in SG_DROPS:
        raise QsnnError(f"sg_drop must be one of {', '.join(SG_DROPS)}, got {sg_drop!r}")
    if verify not in VERIFY_CHOICES:
        raise QsnnError(f"verify must be one of {', '.join(VERIFY_CHOICES)}, got {verify!r}")
    stage = net.spec.input_stage
    if verify != "none" and noise > 0:
        verify = "none"  # (the exact ANN is the model's on clean images; under noise the reference is
        # the quantized ANN on the same noisy inputs, by the converted tables)
    verifier = ModelCheck(net)
    against_model = verify == "all"
    if simulator is None:
        simulator = EventSimulator(net) if cpu_kernels(torch.empty(0, device=device)) else simulate_batch
    if progress and isinstance(simulator, EventSimulator) and not simulator.engine.compiled_on_disk():
        print("qsnn: compiling the simulator's kernels (first run only, about a minute)", file=sys.stderr, flush=True)
    rank, world = _shard()
    starts = list(range(0, len(pixels), batch_size))[rank::world]  # (batch by batch, round robin)
    shown = progress and rank == 0
    bar = tqdm(total=len(pixels), desc=f"simulate {net.scheme}", unit="img", disable=not shown, leave=False)
    outcomes: list[_BatchOutcome] = []
    checks: list = []  # see EventSimulator.against_ann
    for start in starts:
        clean = spiking_input(pixels[start : start + batch_size], stage).to(device)
        target = labels[start : start + batch_size].to(device)
        draws = NoiseDraws(seed, first_image=start, sg_drop=sg_drop)
        inputs = noisy_pixels(clean, noise, draws) if rules.noise == "pixels" and noise > 0 else clean
        noise_here = noise if rules.noise == "spikes" else 0.0  # pixel noise is in ``inputs`` already
        if against_model:  # the reference is the trained model's exact ANN, on every image
            exact = verifier.ann(clean.cpu())
            counts, logits = exact.counts, exact.logits
            record = simulator(net, inputs, steps, noise=noise_here, draws=draws)
        elif isinstance(simulator, EventSimulator):
            record, counts, logits = simulator.against_ann(
                net, inputs, steps, noise=noise_here, draws=draws, checks=checks
            )
        else:
            counts, logits = reference_counts(net, inputs)
            record = simulator(net, inputs, steps, noise=noise_here, draws=draws)
        reference = (exact.predictions if against_model else logits.argmax(dim=1)).to(record.predictions.device)
        if rules.noise == "pixels" and noise > 0:
            _, clean_logits = reference_counts(net, clean)
            ann_clean = int((clean_logits.argmax(dim=1) == target).sum())
        else:
            ann_clean = int((reference == target).sum())
        if record.mismatches is not None and not against_model:  # the simulator compared them as it counted
            mismatches = list(record.mismatches)
        else:
            mismatches = [_differences(snn, ann) for snn, ann in zip(record.counts, counts, strict=True)]
        if against_model:
            verifier.record(mismatches, int((record.predictions[-1] != reference).sum()), len(clean))
        elif verify == "sample":
            verifier.add(clean[:1], [c[:1] for c in record.counts], record.predictions[-1][:1])
        outcomes.append(_BatchOutcome(
            start, record._replace(counts=[], predictions=record.predictions.cpu()),  # counts checked: dropped
            (record.predictions == target[None]).sum(dim=1).cpu(), (record.predictions == reference[None]).sum(dim=1).cpu(),
            int((reference == target).sum()), ann_clean, mismatches,
        ))
        bar.update(len(clean))
    bar.close()
    check_against_reference(net, checks)  # (against_ann: the first image of every batch, from scratch)
    verifier.flush()
    verified = (verifier.images, verifier.differing, verifier.disagreements)
    if world > 1:  # every rank gets every batch's outcome, and puts them in test-set order
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (outcomes, verified))
        outcomes = sorted((outcome for part, _ in gathered for outcome in part), key=lambda o: o.start)
        verified = (
            sum(v[0] for _, v in gathered),
            [sum(layer) for layer in zip(*(v[1] for _, v in gathered), strict=True)],
            sum(v[2] for _, v in gathered),
        )
    records = [(o.record, o.correct, o.agree) for o in outcomes]
    ann_correct = sum(o.ann_correct for o in outcomes)
    ann_correct_clean = sum(o.ann_correct_clean for o in outcomes)
    mismatches = [sum(layer) for layer in zip(*(o.mismatches for o in outcomes), strict=True)] if outcomes \
        else [0] * len(net.layers)
    total_steps = max(r.predictions.shape[0] for r, _, _ in records)
    correct_sum = torch.zeros(total_steps, dtype=torch.int64)
    agree_sum = torch.zeros(total_steps, dtype=torch.int64)
    layers = len(net.layers)
    positive = torch.zeros(layers, total_steps, dtype=torch.int64)
    negative = torch.zeros_like(positive)
    sops = torch.zeros_like(positive)
    spiking = torch.zeros(layers, dtype=torch.int64)
    # per batch: correct per step, and per layer per step the batch's positive and negative
    # spikes and SOPs (step increments; what the original code's text files are made of)
    per_batch: dict[str, list] = {"correct": [], "positive": [], "negative": [], "sops": []}
    for record, correct, agree in records:
        have = record.predictions.shape[0]
        pad = total_steps - have
        correct = torch.cat([correct.cpu(), correct[-1:].cpu().expand(pad)])
        correct_sum += correct
        agree_sum += torch.cat([agree.cpu(), agree[-1:].cpu().expand(pad)])
        positive[:, :have] += record.positive.cpu()
        negative[:, :have] += record.negative.cpu()
        sops[:, :have] += record.sops.cpu()
        spiking += record.spiking_neurons.cpu()
        zeros = [0] * pad
        per_batch["correct"].append(correct.tolist())
        for key, values in (("positive", record.positive), ("negative", record.negative), ("sops", record.sops)):
            per_batch[key].append([row + zeros for row in values.tolist()])
    return SimulationResult(
        scheme=net.scheme,
        steps=total_steps,
        images=len(pixels),
        noise=noise,
        sg_drop=sg_drop if rules.noise == "spikes" and noise > 0 else None,
        correct=correct_sum.tolist(),
        agree=agree_sum.tolist(),
        ann_correct=ann_correct,
        ann_correct_clean=ann_correct_clean,
        positive=positive.tolist(),
        negative=negative.tolist(),
        sops=sops.tolist(),
        spiking_neurons=spiking.tolist(),
        count_mismatches=mismatches,
        batches=per_batch,
        verified_images=verified[0],
        verified_count_mismatches=list(verified[1]),
        verified_disagreements=verified[2],
    )


class _BatchOutcome(NamedTuple):
    """What one batch of :func:`simulate` contributes (moved between ranks as it is)."""

    start: int  # its first image's index in the test set
    record: BatchRecord  # (its counts dropped)
    correct: torch.Tensor  # per step
    agree: torch.Tensor  # per step
    ann_correct: int
    ann_correct_clean: int
    mismatches: list[int]  # per layer


def _shard() -> tuple[int, int]:
    """(rank, number of ranks) when the process group of a torchrun is up, else (0, 1):
    each rank simulates every world-th batch, and the outcomes are gathered in order."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


VERIFY_CHOICES = ("sample", "all", "none")
VERIFY_BATCH = 500


class ModelCheck:
    """SNN results checked against the exact ANN of the trained model (ExactANN, from the
    model's own parameters that ``net`` carries, not from its tables): images checked,
    differing counts per layer, differing final predictions. Either every image, as the
    simulation's reference (:meth:`record`), or a sample added as it comes and evaluated
    in groups of up to VERIFY_BATCH images (:meth:`add`)."""

    def __init__(self, net: SpikingNet) -> None:
        self.net = net
        self._ann = None
        self.pending: list = []
        self.images = self.disagreements = 0
        self.differing = [0] * len(net.layers)

    @property
    def ann(self):
        from qsnn.exact import ExactANN

        if self._ann is None:
            self._ann = ExactANN(self.net.source_model())
        return self._ann

    def record(self, differing: list[int], disagreements: int, images: int) -> None:
        self.differing = [a + b for a, b in zip(self.differing, differing, strict=True)]
        self.disagreements += disagreements
        self.images += images

    def add(self, pixels: torch.Tensor, counts: list, predictions: torch.Tensor) -> None:
        self.pending.append((pixels.cpu().clone(), [c.cpu().clone() for c in counts], predictions.cpu().clone()))
        if sum(len(p[0]) for p in self.pending) >= VERIFY_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        exact = self.ann(torch.cat([p[0] for p in pending]))
        differing = [_differences(torch.cat([p[1][index] for p in pending]), exact.counts[index])
                     for index in range(len(self.differing))]
        disagreements = int((torch.cat([p[2] for p in pending]) != exact.predictions).sum())
        self.record(differing, disagreements, len(exact.predictions))
