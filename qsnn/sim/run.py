"""Simulating a converted spiking network, ALGORITHMS.md §3 and §4.

Inputs are presented once: the encoding layer receives the pixels at t = 0 and nothing
afterwards. Spikes travel through all layers within the same step. The output is a
non-spiking accumulator: logits_t = W_out * (cumulative counts of the last hidden layer),
prediction_t = argmax.

:func:`simulate_batch` is the straightforward step-by-step simulator, kept as the
executable definition; it runs on any device (dense float64 tensors holding exact
integers, so a GPU gives the same numbers bit for bit; under pixel noise the encoding
layer's float sums are the one stage that may round differently). :class:`EventSimulator` is the
fast event-driven CPU engine (:mod:`qsnn.sim.engine`); tests compare it with the reference
count for count. :func:`simulate` streams a whole dataset through one of them in
batches and aggregates the statistics into a :class:`SimulationResult`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from qsnn.data.transforms import spiking_input
from qsnn.distributed import check_device
from qsnn.errors import QsnnError, check_seed, integer_in
from qsnn.sim import engine
from qsnn.sim.events import EventSimulator
from qsnn.sim.noise import SG_DROPS, NoiseDraws, noisy_pixels
from qsnn.sim.stepwise import BatchRecord, simulate_batch
from qsnn.sim.verify import VERIFY_CHOICES, ModelCheck, check_against_reference, count_differences
from qsnn.snn.exact import ANNResult
from qsnn.snn.model import SpikingNet
from qsnn.snn.reference import (
    cpu_kernels,
    reference_counts,
)
from qsnn.snn.schemes import SCHEMES


class StepTimes:
    """T (paper) and T_lossless of a result that counts, per time step, its ``correct``
    predictions and those that ``agree`` with the reference, over ``images`` images."""

    correct: list[int]
    agree: list[int]
    images: int

    @property
    def t_paper(self) -> int:
        """The papers' T (1-based): the first step from which the number of correct
        predictions stays at its final value (their figures' and tables' time steps; an
        image may still change its prediction after it, as long as the number of correct
        ones does not change)."""
        first = len(self.correct)
        while first > 1 and self.correct[first - 2] == self.correct[-1]:
            first -= 1
        return first

    @property
    def t_lossless(self) -> int | None:
        """The first step (1-based) from which every image agrees with the reference, or None."""
        first = None
        for t in range(len(self.agree), 0, -1):
            if self.agree[t - 1] != self.images:
                break
            first = t
        return first


@dataclass
class SimulationResult(StepTimes):
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
    # the independent check against the trained model's exact ANN (qsnn.snn.exact.ExactANN):
    verified_images: int = 0  # images evaluated by it (none under noise)
    verified_count_mismatches: list[int] = field(default_factory=list)  # per layer, on those images
    verified_disagreements: int = 0  # of those images, final SNN predictions that differ from it
    sg_drop: str | None = None  # SG under noise: where spikes were dropped (SG_DROPS)

    @property
    def accuracy(self) -> list[float]:
        return [100.0 * c / self.images for c in self.correct]



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

    net = _loaded(net)
    device = check_device(device)
    pixels, labels = checked_inputs(net, pixels, labels)
    _check_options(net, steps, noise, batch_size, seed, sg_drop, verify)
    rules = SCHEMES[net.scheme]
    if verify != "none" and noise > 0:
        verify = "none"  # (the exact ANN is the model's on clean images; under noise the reference is
        # the quantized ANN on the same noisy inputs, by the converted tables)
    verifier = ModelCheck(net)
    if simulator is None:
        simulator = EventSimulator(net) if cpu_kernels(torch.empty(0, device=device)) else simulate_batch
    if progress and isinstance(simulator, EventSimulator) and not engine.compiled_on_disk():
        print("qsnn: compiling the simulator's kernels (first run only, about a minute)", file=sys.stderr, flush=True)
    rank, world = _shard()
    starts = list(range(0, len(pixels), batch_size))[rank::world]  # (batch by batch, round robin)
    bar = tqdm(total=len(pixels), desc=f"simulate {net.scheme}", unit="img", disable=not (progress and rank == 0), leave=False)
    outcomes: list[_BatchOutcome] = []
    checks: list = []  # see EventSimulator.against_ann
    for start in starts:
        batch = slice(start, start + batch_size)
        draws = NoiseDraws(seed, first_image=start, sg_drop=sg_drop)
        outcomes.append(_simulate_one_batch(
            net, simulator, verifier, verify, spiking_input(pixels[batch], net.spec.input_stage).to(device),
            labels[batch].to(device), start, steps, noise, draws, checks,
        ))
        bar.update(min(batch_size, len(pixels) - start))
    bar.close()
    check_against_reference(net, checks)  # (against_ann: the first image of every batch, from scratch)
    verifier.flush()
    verified = (verifier.images, verifier.differing, verifier.disagreements)
    if world > 1:
        outcomes, verified = _gathered(outcomes, verified, world)
    dropped_in = sg_drop if rules.noise == "spikes" and noise > 0 else None
    return _aggregated(net, outcomes, len(pixels), noise, dropped_in, verified)


def _loaded(net) -> SpikingNet:
    """A converted network, loaded when given as the path of the .npz `qsnn convert` wrote."""
    if isinstance(net, str | Path):
        net = SpikingNet.load(net)
    if not isinstance(net, SpikingNet):
        raise QsnnError(
            f"simulate() takes a converted network (qsnn.convert(...), or the path of a .npz that "
            f"`qsnn convert` wrote), got {type(net).__name__}"
        )
    return net


def _check_options(net: SpikingNet, steps, noise, batch_size, seed, sg_drop, verify) -> None:
    """simulate()'s options, each refused with one line naming it and its range."""
    if not isinstance(noise, int | float) or not 0 <= noise <= 1:  # also refuses NaN
        raise QsnnError(f"--noise must be between 0 and 1, got {noise!r}")
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


def _simulate_one_batch(net, simulator, verifier, verify, clean, target, start, steps, noise, draws, checks) -> _BatchOutcome:
    """One batch: the SNN, its reference ANN (the exact ANN with verify="all"), and what
    the batch contributes to the result."""
    rules = SCHEMES[net.scheme]
    against_model = verify == "all"
    inputs = noisy_pixels(clean, noise, draws) if rules.noise == "pixels" and noise > 0 else clean
    noise_here = noise if rules.noise == "spikes" else 0.0  # pixel noise is in ``inputs`` already
    if against_model:  # the reference is the trained model's exact ANN, on every image
        ann = verifier.exact(clean.cpu())
        record = simulator(net, inputs, steps, noise=noise_here, draws=draws)
    elif isinstance(simulator, EventSimulator):
        record, counts, logits = simulator.against_ann(net, inputs, steps, noise=noise_here, draws=draws, checks=checks)
        ann = ANNResult(counts, logits)
    else:
        ann = reference_counts(net, inputs)
        record = simulator(net, inputs, steps, noise=noise_here, draws=draws)
    counts, reference = ann.counts, ann.predictions.to(record.predictions.device)
    if rules.noise == "pixels" and noise > 0:
        clean_logits = reference_counts(net, clean).logits
        ann_clean = int((clean_logits.argmax(dim=1) == target).sum())
    else:
        ann_clean = int((reference == target).sum())
    if record.mismatches is not None and not against_model:  # the simulator compared them as it counted
        mismatches = list(record.mismatches)
    else:
        mismatches = [count_differences(snn, ann) for snn, ann in zip(record.counts, counts, strict=True)]
    if against_model:
        verifier.record(mismatches, int((record.predictions[-1] != reference).sum()), len(clean))
    elif verify == "sample":
        verifier.add(clean[:1], [c[:1] for c in record.counts], record.predictions[-1][:1])
    return _BatchOutcome(
        start, record._replace(counts=[], predictions=record.predictions.cpu()),  # counts checked: dropped
        (record.predictions == target[None]).sum(dim=1).cpu(), (record.predictions == reference[None]).sum(dim=1).cpu(),
        int((reference == target).sum()), ann_clean, mismatches,
    )


def _gathered(outcomes: list, verified: tuple, world: int) -> tuple[list, tuple]:
    """Every rank's batch outcomes, in test-set order, and the verification sums."""
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, (outcomes, verified))
    outcomes = sorted((outcome for part, _ in gathered for outcome in part), key=lambda o: o.start)
    verified = (
        sum(v[0] for _, v in gathered),
        [sum(layer) for layer in zip(*(v[1] for _, v in gathered), strict=True)],
        sum(v[2] for _, v in gathered),
    )
    return outcomes, verified


def _aggregated(net: SpikingNet, outcomes: list, images: int, noise: float, sg_drop: str | None,
                verified: tuple) -> SimulationResult:
    """The batches' outcomes summed into one result (steps padded with each batch's last)."""
    layers = len(net.layers)
    mismatches = [sum(layer) for layer in zip(*(o.mismatches for o in outcomes), strict=True)] if outcomes \
        else [0] * layers
    total_steps = max(o.record.predictions.shape[0] for o in outcomes)
    correct_sum = torch.zeros(total_steps, dtype=torch.int64)
    agree_sum = torch.zeros(total_steps, dtype=torch.int64)
    positive = torch.zeros(layers, total_steps, dtype=torch.int64)
    negative = torch.zeros_like(positive)
    sops = torch.zeros_like(positive)
    spiking = torch.zeros(layers, dtype=torch.int64)
    # per batch: correct per step, and per layer per step the batch's positive and negative
    # spikes and SOPs (step increments; what the original code's text files are made of)
    per_batch: dict[str, list] = {"correct": [], "positive": [], "negative": [], "sops": []}
    for outcome in outcomes:
        record = outcome.record
        have = record.predictions.shape[0]
        pad = total_steps - have
        correct = torch.cat([outcome.correct, outcome.correct[-1:].expand(pad)])
        correct_sum += correct
        agree_sum += torch.cat([outcome.agree, outcome.agree[-1:].expand(pad)])
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
        images=images,
        noise=noise,
        sg_drop=sg_drop,
        correct=correct_sum.tolist(),
        agree=agree_sum.tolist(),
        ann_correct=sum(o.ann_correct for o in outcomes),
        ann_correct_clean=sum(o.ann_correct_clean for o in outcomes),
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
