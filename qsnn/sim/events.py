"""The fast CPU simulator: batches through the event-driven engine (:mod:`qsnn.sim.engine`).

:class:`EventSimulator` compiles a network once, encodes each batch, runs the engine
window by window within a memory budget, and returns the same :class:`BatchRecord` as
the step-by-step simulator, with the final counts compared to the tables' ANN inside the
run. SG nets, which need one step, run as one exact dense pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.sim import engine
from qsnn.sim.stepwise import AUTO_MAX_STEPS, BatchRecord, scatter_gather_batch
from qsnn.sim.verify import check_against_reference
from qsnn.snn import counting
from qsnn.snn.model import SpikingNet
from qsnn.snn.neurons import (
    target_count,
)
from qsnn.snn.reference import (
    check_input_limit,
    counting_membrane,
    cpu_kernels,
    input_bound,
    layer_counts,
    layer_weight,
    reference_counts,
)
from qsnn.snn.schemes import SCHEMES


def _gathered(index: int, layer, membrane: torch.Tensor) -> torch.Tensor:
    if not cpu_kernels(membrane):
        return target_count(membrane, layer.thresholds().to(membrane.device))
    return torch.from_numpy(counting.gathered_counts(layer.thresholds(), membrane.numpy()))


ENGINE_MEMORY = 256 * 2**20  # bytes of per-step records the engine may hold at once


class EventSimulator:
    """The fast CPU simulator (:mod:`qsnn.sim.engine`) behind the :func:`simulate_batch` interface.

    SG runs as one dense pass (it has a single step); NSD and INT run event-driven.
    Results equal the reference simulator's count for count.
    """

    def __init__(self, net: SpikingNet) -> None:
        self.program = None if SCHEMES[net.scheme].single_step else engine.compile_program(net)
        self._float_weights: dict[int, np.ndarray] = {}

    def _float_weight(self, index: int, layer) -> np.ndarray:
        """Layer ``index``'s weights as float64 (exact: integers below 2^53), made once."""
        if index not in self._float_weights:
            self._float_weights[index] = np.ascontiguousarray(layer.weight, dtype=np.float64)
        return self._float_weights[index]

    def _run(self, first: np.ndarray, cap: int, auto: bool, every_membrane: bool, membranes: bool = True):
        """The engine on images in slices small enough that the per-step records of ``cap``
        steps stay within ENGINE_MEMORY, whatever the batch size and step count; the final
        membranes only if ``membranes`` (see :func:`qsnn.sim.engine.run`)."""
        layers = self.program.geometry.shape[0]
        outputs = self.program.outputs
        per_image = 8 * (3 * layers + 1) * cap + 4 * int(outputs[-1]) + 8 * int(outputs[-1] - outputs[1]) + 8 * layers
        size = max(1, ENGINE_MEMORY // per_image)
        if len(first) <= size:
            return engine.run(self.program, first, cap, auto, every_membrane, membranes=membranes)
        whole = engine.allocate(self.program, len(first), cap, membranes)  # each slice writes its rows: nothing is copied
        for at in range(0, len(first), size):
            rows = engine.EngineRun(*(array[at : at + size] for array in whole))
            engine.run(self.program, first[at : at + size], cap, auto, every_membrane, out=rows, membranes=membranes)
        return whole

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
            found, differing = counting.gathered_counts(
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
        estimate-and-correct of :func:`qsnn.snn.counting.counts`, not the spiking dynamics).
        Images whose spiking counts still differ upstream get the ANN's membrane from the
        spiking one, V + W (ANN counts - spiking counts), adding the weights of the
        differing inputs only (:func:`qsnn.snn.counting.corrected_membranes`). Raw uint8 pixels
        are encoded by the engine itself (:func:`qsnn.sim.engine.encode`). The first image of
        every batch is also evaluated by :func:`qsnn.snn.reference.reference_counts` from
        scratch, as a check: at once, or, given a list as ``checks``, later, with those of
        other batches in one go (the list receives the image and what was read off for
        it; see :func:`check_against_reference`).
        """
        if SCHEMES[net.scheme].single_step:
            ann = reference_counts(net, pixels, keep_membranes=True, check_spiking=True)
            counts, logits, membranes = ann.counts, ann.logits, ann.membranes
            if noise == 0 and all(differing == 0 for differing in ann.spiking_differences):
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
            first = torch.from_numpy(engine.encode(self.program, pixels.numpy())).reshape(len(pixels), *layer.out_shape)
        else:
            membrane = counting_membrane(layer, pixels, largest)
            first = _gathered(0, layer, membrane)
        cap = steps if steps is not None else 32
        # the read-off needs the final membranes where something is unsettled, and, where a
        # layer's ANN tables are not its own, everywhere
        every_membrane = with_ann and any(block.ann_thresholds is not None for block in net.layers)
        while True:
            positive, negative, sops, spiking, predictions, counts, used, final, final_logits, unsettled = self._run(
                first.reshape(first.shape[0], -1).numpy(), cap, steps is None, every_membrane, with_ann
            )  # (the final membranes: only for the read-off)
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
            differing = [engine.row_differences(spiking[0].numpy(), ann[0].numpy())]  # per image
        # the images whose final membranes the engine kept (see qsnn.sim.engine.run)
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
                    exact[upstream] = torch.from_numpy(counting.corrected_membranes(
                        layer, exact[upstream].numpy(), ann[-1][images].numpy(), spiking[index - 1][images].numpy(),
                        self._float_weight(index, layer),
                    ))
                counts[rest] = layer_counts(layer, exact, ann=True).to(counts.dtype)
                found[where] = engine.row_differences(spiking[index][rest].numpy(), counts[rest].numpy())
            ann.append(counts)
            differing.append(found)
        check_input_limit(net.output, input_bound(net, len(net.layers), ann[-1]), len(net.layers))
        logits = torch.from_numpy(final_logits).to(torch.float64)
        same = torch.from_numpy(differing[-1] == 0)
        if not same.all():
            logits[~same] = F.linear(ann[-1][~same].flatten(1).to(torch.float64), layer_weight(net.output, "cpu"))
        return record._replace(mismatches=[int(d.sum()) for d in differing]), ann, logits
