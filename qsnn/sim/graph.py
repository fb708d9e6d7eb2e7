"""Simulating a spiking graph (:class:`qsnn.snn.graph.SpikingGraph`), checked image by image.

Time-stepped schemes (NSD, INT): at step t every node passes on what changed in that
step, in execution order: the input gives its pixels at t = 0 and nothing after; a
weighted node (conv, linear, scale) multiplies its input's change by its integer weights
(its bias enters once, at t = 0); pools, additions, concatenations and flattening pass
changes on; a population integrates its input's change into its membranes and fires
by its scheme's neuron model (:data:`qsnn.snn.neurons.NEURON_MODELS`: NSD's negative
spikes, INT's adaptive thresholds and rising encoding), its change being its signed
spikes over 2^k. Every node is linear between populations, so a population's membrane
after the last step is exactly its ANN pre-activation from the counts upstream, and its
count converges to the ANN's. SG: one step, every population's binary neurons fire
against the table (count = #{i : V >= T(i)}).

Each batch is checked against the exact evaluation of the converted model
(:func:`qsnn.snn.graph.exact_ann`): every population's final counts and the predictions.

Synaptic operations (SOPs) are counted as an event-driven implementation does them: for
every weighted node and average pool, the non-zero changes of its input that spikes
caused in the step, times the (output, non-zero weight) pairs each reaches (for a node
fed by a population: its spikes times their fan-out, borders included); additions,
concatenations and flattening are wiring, and what the pixels and biases give at t = 0
is the encoding's, not events.

NSD and INT graphs run on the event engine (:mod:`qsnn.sim.graph_engine`, CPU) unless
``engine="stepwise"`` asks for the dense step-by-step simulation above (any device, any
registered neuron model); the two produce the same record, which the tests check.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qsnn.errors import QsnnError
from qsnn.io import provenance, write_csv, write_json
from qsnn.options import AUTO_MAX_STEPS
from qsnn.sim import graph_engine
from qsnn.sim.graph_engine import GraphProgram
from qsnn.sim.noise import SG_DROPS, NoiseDraws, dropped_spikes, noisy_pixels
from qsnn.sim.run import StepTimes
from qsnn.snn import schemes
from qsnn.snn.graph import (
    LINEAR,
    GraphNode,
    SpikingGraph,
    apply_node,
    exact_ann,
    float32_parts,
    float32_product,
    silent_values,
    tables_ann,
)
from qsnn.snn.neurons import NEURON_MODELS, NeuronModel, Thresholds, target_count

ENGINES = ("auto", "events", "stepwise")
ENGINE_STEPS = 64  # the event engine's first run: steps recorded per image before it looks again


@dataclass
class GraphResult(StepTimes):
    """A spiking graph on a test set: per step (0-based), summed over the images."""

    images: int
    steps: int
    populations: list[str]
    positive: list[list[int]] = field(default_factory=list)  # [population][step]
    negative: list[list[int]] = field(default_factory=list)
    sops: list[int] = field(default_factory=list)  # [step]
    correct: list[int] = field(default_factory=list)  # [step]
    agree: list[int] = field(default_factory=list)  # [step]: predictions equal to the exact ANN's
    count_mismatches: dict[str, int] = field(default_factory=dict)  # final counts unequal to the exact ANN's
    ann_correct: int = 0
    ann_ops: int = 0  # the ANN's multiply-accumulates for these images
    noise: float = 0.0  # NSD, INT: the pixel noise ratio; SG: the spike drop probability
    sg_drop: str | None = None  # SG under noise: where spikes were dropped (SG_DROPS)
    ann_correct_clean: int = 0  # the exact evaluation on the clean images

    @property
    def lossless(self) -> bool:
        return self.agree[-1] == self.images and not any(self.count_mismatches.values())

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct[-1] / self.images

    @property
    def reference(self) -> str:
        """What agreement and the count mismatches were measured against."""
        if self.noise > 0 and self.sg_drop is None:
            return "the converted model's tables on the noisy pixels"
        return "the converted model's exact evaluation on the clean pixels"

    def to_dict(self) -> dict:
        """The summary result.json holds: totals, per population and per step."""
        return {
            "images": self.images, "steps": self.steps, "t_paper": self.t_paper, "t_lossless": self.t_lossless,
            "lossless": self.lossless, "agreement": self.agree[-1], "agreement_fraction": self.agree[-1] / self.images,
            "count_mismatches": self.count_mismatches, "accuracy": self.accuracy,
            "ann_accuracy": 100.0 * self.ann_correct / self.images,
            "ann_accuracy_clean": 100.0 * self.ann_correct_clean / self.images,
            "noise": self.noise, "sg_drop": self.sg_drop, "reference": self.reference,
            "spikes_per_image": (sum(map(sum, self.positive)) + sum(map(sum, self.negative))) / self.images,
            "sops_per_image": sum(self.sops) / self.images, "ann_ops_per_image": self.ann_ops / self.images,
            "populations": self.population_rows(), "per_step": self.step_rows(),
        }


    def step_rows(self) -> list[dict]:
        """One row per time step t = 1..T, as the notation nets' per_step.csv."""
        return [{"step": t + 1, "accuracy": 100.0 * self.correct[t] / self.images, "correct": self.correct[t],
                 "agree": self.agree[t], "agree_fraction": self.agree[t] / self.images, "sops": self.sops[t],
                 "positive": sum(p[t] for p in self.positive), "negative": sum(n[t] for n in self.negative)}
                for t in range(self.steps)]

    def population_rows(self) -> list[dict]:
        return [{"population": name, "positive": sum(self.positive[i]), "negative": sum(self.negative[i]),
                 "count_mismatches": self.count_mismatches[name]} for i, name in enumerate(self.populations)]

    def write(self, folder: str | Path, graph: SpikingGraph, *, seed: int | None = None) -> Path:
        """result.json (the scheme, what the graph came from, its precision, the command,
        versions and seed; ``qsnn plot`` draws its accuracy figure), per_step.csv and
        populations.csv in ``folder``."""
        out = Path(folder)
        write_json(out / "result.json", {
            "kind": "graph", "scheme": graph.scheme, "net": graph.name(), "precision": graph.precision(),
            "dataset": graph.source.get("dataset"), "source": graph.source, "snn_accuracy": self.accuracy,
            **self.to_dict(), "provenance": provenance(seed),
        })
        write_csv(out / "per_step.csv", self.step_rows())
        write_csv(out / "populations.csv", self.population_rows())
        return out


def ann_ops(graph: SpikingGraph) -> int:
    """Multiply-accumulates of one dense ANN pass (weighted nodes and average pools)."""
    total = 0
    for node in graph.nodes:
        outputs = 1
        for size in node.shape:
            outputs *= size
        if node.kind in ("conv", "linear"):
            total += outputs * (node.weight[0].size)
        elif node.kind == "scale":
            total += outputs
        elif node.kind == "avgpool":
            total += outputs * node.attrs["kernel"][0] * node.attrs["kernel"][1]
    return total


def _synapse_map(node: GraphNode, in_shape: tuple[int, ...], device) -> torch.Tensor:
    """For every input of a weighted node or average pool, how many (output, non-zero
    weight) pairs it reaches: the gradient of the sum of the node's outputs when every
    weight is replaced by 1 where it is non-zero (borders, stride and groups included)."""
    x = torch.zeros((1, *in_shape), dtype=torch.float64, device=device, requires_grad=True)
    a = node.attrs
    if node.kind == "avgpool":
        y = F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], count_include_pad=True, divisor_override=1)
    else:
        synapses = torch.from_numpy(node.weight != 0).to(device, torch.float64)
        if node.kind == "conv":
            y = F.conv2d(x, synapses, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
        elif node.kind == "linear":
            y = x @ synapses.T
        else:
            y = x * synapses.view(1, -1, *([1] * (x.dim() - 2)))
    y.sum().backward()
    return x.grad[0].detach()


def _change_bounds(graph: SpikingGraph) -> dict[str, float]:
    """The largest integer magnitude of each node's change in a step after the first:
    the pixels give none, a population's spikes are +-1, and the rest follows."""
    bounds: dict[str, float] = {}
    for node in graph.nodes:
        inputs = [bounds[name] for name in node.inputs]
        if node.kind == "input":
            bounds[node.name] = 0.0
        elif node.kind == "quant":
            bounds[node.name] = 1.0
        elif node.kind in LINEAR:
            bounds[node.name] = node.multipliers[0] * node.largest_row() * inputs[0]
        elif node.kind == "avgpool":
            bounds[node.name] = inputs[0] * node.attrs["kernel"][0] * node.attrs["kernel"][1]
        elif node.kind == "add":
            bounds[node.name] = sum(m * b for m, b in zip(node.multipliers, inputs, strict=True))
        elif node.kind == "cat":
            bounds[node.name] = max(m * b for m, b in zip(node.multipliers, inputs, strict=True))
        else:
            bounds[node.name] = inputs[0]
    return bounds


def _float32_parts(graph: SpikingGraph, device) -> dict[str, tuple[list[torch.Tensor], int]]:
    """For each conv and linear node whose changes after the first step are small
    integers: its weights in float32 parts (:func:`qsnn.snn.graph.float32_parts`)."""
    bounds = _change_bounds(graph)
    found = {}
    for node in graph.nodes:
        parts = float32_parts(node, bounds[node.inputs[0]]) if node.inputs else None
        if parts is not None:
            found[node.name] = ([part.to(device) for part in parts[0]], parts[1])
    return found


class _Batch:
    """One batch's simulation record."""

    def __init__(self, graph: SpikingGraph) -> None:
        self.positive = [[] for _ in graph.populations]
        self.negative = [[] for _ in graph.populations]
        self.sops: list[int] = []
        self.predictions: list[torch.Tensor] = []
        self.counts: dict[str, torch.Tensor] = {}


class _Setup(NamedTuple):
    """What every batch of one simulation uses, made once: the populations' prepared
    tables and neuron models (time-stepped schemes), the synapse maps of the nodes whose inputs are events (not
    the pixels), and the float32 weight parts."""

    tables: dict[str, Thresholds]
    neurons: dict[str, NeuronModel]
    synapses: dict[str, torch.Tensor]
    parts: dict[str, tuple[list[torch.Tensor], int]]

    @classmethod
    def of(cls, graph: SpikingGraph, device) -> _Setup:
        rules = schemes.of(graph.scheme)
        populations = graph.populations
        return cls(
            {node.name: graph.thresholds(node).to(device).prepared() for node in populations},
            {} if rules.single_step else {node.name: NEURON_MODELS[rules.neuron(node.attrs["role"])] for node in populations},
            {
                node.name: _synapse_map(node, graph.by_name[node.inputs[0]].shape, device)
                for node in graph.nodes
                if node.kind in (*LINEAR, "avgpool") and graph.by_name[node.inputs[0]].kind != "input"
            },
            _float32_parts(graph, device),
        )


def _single_step(graph: SpikingGraph, setup: _Setup, pixels: torch.Tensor, noise: float = 0.0,
                 draws: NoiseDraws | None = None) -> _Batch:
    """SG: every population's binary neurons fire once against its table, in one step;
    under ``noise`` each fired binary neuron's spike is lost with that probability, in the
    encoding populations (the SG paper's model) or in every population (``draws.sg_drop``)."""
    record = _Batch(graph)
    synapses = setup.synapses
    values: dict[str, torch.Tensor] = {}
    sops = 0
    index = 0
    for node in graph.nodes:
        if node.kind == "input":
            values[node.name] = pixels
            continue
        inputs = [values[name] for name in node.inputs]
        if node.name in synapses:
            sops += int(((inputs[0] != 0) * synapses[node.name]).sum())
        if node.kind == "quant":
            counts = target_count(inputs[0], setup.tables[node.name])
            counts = dropped_spikes(counts, noise, draws, index, encoding=node.attrs["role"] == "encoding")
            record.counts[node.name] = counts
            record.positive[index].append(int(counts.sum()))
            record.negative[index].append(0)
            index += 1
            values[node.name] = counts.to(torch.float64)
        else:
            values[node.name] = apply_node(node, inputs)
    record.sops.append(sops)
    record.predictions.append(values[graph.nodes[-1].name].argmax(dim=1))
    return record


def _time_stepped(graph: SpikingGraph, setup: _Setup, pixels: torch.Tensor, steps: int | None) -> _Batch:
    record = _Batch(graph)
    device = pixels.device
    batch = pixels.shape[0]
    populations = graph.populations
    tables, neurons, synapses, parts = setup
    states = {node.name: neurons[node.name].init(torch.zeros((batch, *node.shape), dtype=torch.float64, device=device),
                                                 tables[node.name]) for node in populations}
    logits = torch.zeros((batch, graph.classes), dtype=torch.float64, device=device)
    limit = steps if steps is not None else AUTO_MAX_STEPS
    silent = silent_values(graph, pixels)  # (the part of step 0's changes that no spike caused)
    integral = bool(torch.equal(pixels, pixels.round()))  # (noisy pixels: float64 products, as silent_values)
    for t in range(limit):
        changes: dict[str, torch.Tensor | None] = {}
        spiked, sops, index = False, 0, 0
        for node in graph.nodes:
            if node.kind == "input":
                changes[node.name] = pixels if t == 0 else None
                continue
            inputs = [changes[name] for name in node.inputs]
            if node.kind == "quant":
                source = graph.by_name[node.inputs[0]]
                current = inputs[0] if inputs[0] is not None else torch.zeros((batch, *source.shape), dtype=torch.float64, device=device)
                states[node.name], spikes = neurons[node.name].step(states[node.name], current, tables[node.name], t)
                positive, negative = int((spikes > 0).sum()), int((spikes < 0).sum())
                record.positive[index].append(positive)
                record.negative[index].append(negative)
                index += 1
                spiked = spiked or positive + negative > 0
                changes[node.name] = spikes.to(torch.float64) if positive + negative else None
                continue
            if all(x is None for x in inputs) and (t > 0 or node.kind not in LINEAR):
                changes[node.name] = None
                continue
            filled = [x if x is not None else torch.zeros((batch, *graph.by_name[name].shape), dtype=torch.float64, device=device)
                      for x, name in zip(inputs, node.inputs, strict=True)]
            if node.name in synapses and inputs[0] is not None:
                events = inputs[0] - silent[node.inputs[0]] if t == 0 else inputs[0]
                sops += int(((events != 0) * synapses[node.name]).sum())
            if t > 0 and node.name in parts:
                changes[node.name] = float32_product(node, filled[0], *parts[node.name])
            else:  # (at t = 0 the changes are the values, within the source's bound)
                changes[node.name] = apply_node(node, filled, with_bias=t == 0,
                                                input_bound=graph.by_name[node.inputs[0]].bound if t == 0 and integral else None)
        record.sops.append(sops)
        change = changes[graph.nodes[-1].name]
        if change is not None:
            logits = logits + change
        record.predictions.append(logits.argmax(dim=1))
        if steps is None and not spiked and t > 0:  # the silent step only confirms the output
            record.predictions.pop()
            record.sops.pop()
            for per_step in (*record.positive, *record.negative):
                per_step.pop()
            break
    else:
        if steps is None:
            raise QsnnError(f"the graph was still spiking after {AUTO_MAX_STEPS} steps; give steps")
    record.counts = {name: state.count for name, state in states.items()}
    return record


def _engine_batch(graph: SpikingGraph, program: GraphProgram, pixels: torch.Tensor, steps: int | None) -> _Batch:
    """A batch on the event engine (qsnn.sim.graph_engine), as the step-by-step record.
    Until quiescent: a first run of up to ENGINE_STEPS steps, then the images still
    spiking again with eight times as many, up to AUTO_MAX_STEPS."""
    silent = silent_values(graph, pixels)
    currents, output = graph_engine.static_currents(graph, silent, program)
    if steps is not None:
        runs = [(np.arange(len(pixels)), graph_engine.run(program, currents, output, steps, True))]
    else:
        runs, pending, cap = [], np.arange(len(pixels)), ENGINE_STEPS
        while len(pending):
            run = graph_engine.run(program, currents[pending], output[pending], cap, False)
            done = run.steps > 0
            runs.append((pending[done], graph_engine.EngineRecord(*(part[done] for part in run))))
            pending = pending[~done]
            if len(pending) and cap >= AUTO_MAX_STEPS:
                raise QsnnError(f"the graph was still spiking after {AUTO_MAX_STEPS} steps; give steps")
            cap = min(cap * 8, AUTO_MAX_STEPS)
    length = max(int(run.steps.max(initial=0)) for _, run in runs)
    record = _Batch(graph)
    positive = np.zeros((len(graph.populations), length), np.int64)
    negative, sops = np.zeros_like(positive), np.zeros(length, np.int64)
    predictions = np.zeros((len(pixels), length), np.int64)
    counts = np.zeros((len(pixels), program.state_size), np.int64)
    for images, run in runs:
        width = min(length, run.sops.shape[1])
        positive[:, :width] += run.positive[:, :, :width].sum(axis=0)
        negative[:, :width] += run.negative[:, :, :width].sum(axis=0)
        sops[:width] += run.sops[:, :width].sum(axis=0)
        last = run.predictions[np.arange(len(images)), run.steps - 1]  # (after its last step a prediction stays)
        predictions[images] = last[:, None]
        predictions[images, :width] = np.where(np.arange(width) < run.steps[:, None], run.predictions[:, :width],
                                               last[:, None])
        counts[images] = run.counts
    record.positive, record.negative = positive.tolist(), negative.tolist()
    record.sops = sops.tolist()
    record.predictions = list(torch.from_numpy(predictions).T.to(pixels.device))
    for p, node in enumerate(graph.populations):
        start, size = program.populations[p, graph_engine.P_STATE], program.populations[p, graph_engine.P_SIZE]
        per_neuron = graph_engine.channel_first(counts[:, start:start + size], node.shape)
        record.counts[node.name] = torch.from_numpy(np.ascontiguousarray(per_neuron)).to(pixels.device)
    return record


def _engine_program(graph: SpikingGraph, setup: _Setup, engine: str, device: str) -> GraphProgram | None:
    """The event engine's program where ``engine`` asks for it and it can run the graph."""
    rules = schemes.of(graph.scheme)
    models = {node.name: rules.neuron(node.attrs["role"]) for node in graph.populations} if not rules.single_step else {}
    runnable = not rules.single_step and all(name in graph_engine.ENGINE_MODELS for name in models.values())
    if engine == "events" and not runnable:
        raise QsnnError(f"the event engine runs NSD and INT graphs; simulate this {rules.title} graph with engine='stepwise'")
    if engine == "stepwise" or not runnable or (torch.device(device).type != "cpu" and engine == "auto"):
        return None
    return graph_engine.compile_graph(graph, setup.synapses, models)


def simulate_graph(
    graph: SpikingGraph,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int | None = None,
    batch_size: int = 200,
    device: str = "cpu",
    progress: bool = False,
    engine: str = "auto",
    noise: float = 0.0,
    seed: int = 0,
    sg_drop: str = SG_DROPS[0],
) -> GraphResult:
    """Simulate ``graph`` on raw 0..255 ``pixels`` (N, C, H, W) with ``labels``, each batch
    checked against the exact evaluation of the converted model. ``steps``: time steps,
    or None for until nothing is in flight (time-stepped schemes). ``engine``: "events"
    (:mod:`qsnn.sim.graph_engine`, CPU, NSD and INT), "stepwise" (dense tensors step by
    step, any device and scheme; the two agree record for record), or "auto" (the event
    engine where it can run).

    ``noise`` (drawn image by image from ``seed``, :class:`qsnn.sim.noise.NoiseDraws`):
    NSD and INT multiply every pixel by 1 + (u - 1/2) noise; the pixels are then no longer
    integers, so each image is checked against the converted model's tables on its noisy
    pixels (:func:`qsnn.snn.graph.tables_ann`, float64; its count is what the populations
    converge to), and the exact evaluation gives the clean accuracy. SG loses each fired
    binary neuron's spike with probability ``noise``, in the encoding populations or in
    every population (``sg_drop``), against the exact evaluation on the clean pixels."""
    rules = schemes.of(graph.scheme)
    if rules.single_step and steps not in (None, 1):
        raise QsnnError(f"{rules.title} takes one time step; drop steps={steps}")
    if engine not in ENGINES:
        raise QsnnError(f"engine is one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(noise, int | float) or not 0 <= noise <= 1:  # (also refuses NaN)
        raise QsnnError(f"noise must be between 0 and 1, got {noise!r}")
    if sg_drop not in SG_DROPS:
        raise QsnnError(f"sg_drop is one of {', '.join(SG_DROPS)}, got {sg_drop!r}")
    names = [node.name for node in graph.populations]
    setup = _Setup.of(graph, device)
    program = _engine_program(graph, setup, engine, device)
    batches = []
    bar = tqdm(total=len(pixels), desc=f"{rules.title} graph", unit="img", disable=not progress, leave=False)
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size].to(device, torch.float64)
        y = labels[start : start + batch_size].to(device)
        draws = NoiseDraws(seed, start, sg_drop)
        clean = exact_ann(graph, x)
        ann = clean
        if rules.single_step:
            record = _single_step(graph, setup, x, noise, draws)
        else:
            if noise > 0:
                x = noisy_pixels(x, noise, draws)
                ann = tables_ann(graph, x)
            if program is not None:
                record = _engine_batch(graph, program, x, steps)
            else:
                record = _time_stepped(graph, setup, x, steps)
        batches.append((record, ann, y, int((clean.predictions == y).sum())))
        bar.update(len(x))
    bar.close()
    result = _gathered(graph, names, batches, len(pixels))
    result.noise = float(noise)
    result.sg_drop = sg_drop if rules.single_step and noise > 0 else None
    return result


def _gathered(graph: SpikingGraph, names: list[str], batches: list, images: int) -> GraphResult:
    steps = max(len(record.predictions) for record, _, _, _ in batches)
    result = GraphResult(images, steps, names, ann_ops=ann_ops(graph) * images)
    result.positive = [[0] * steps for _ in names]
    result.negative = [[0] * steps for _ in names]
    result.sops = [0] * steps
    result.correct = [0] * steps
    result.agree = [0] * steps
    result.count_mismatches = dict.fromkeys(names, 0)
    for record, ann, labels, clean_correct in batches:
        result.ann_correct_clean += clean_correct
        for t in range(steps):
            prediction = record.predictions[min(t, len(record.predictions) - 1)]  # (quiescent: final)
            result.correct[t] += int((prediction == labels).sum())
            result.agree[t] += int((prediction == ann.predictions).sum())
            if t < len(record.sops):
                result.sops[t] += record.sops[t]
                for index in range(len(names)):
                    result.positive[index][t] += record.positive[index][t]
                    result.negative[index][t] += record.negative[index][t]
        for name in names:
            result.count_mismatches[name] += int((record.counts[name] != ann.counts[name]).sum())
        result.ann_correct += int((ann.predictions == labels).sum())
    return result


@dataclass
class ModelAgreement:
    """The trained model as PyTorch computes it (float64, batch norms unfolded) against the
    converted graph's exact evaluation: where folding the batch norms and keeping 24
    bits of each folded weight moved a pre-activation across a level boundary."""

    images: int
    same_predictions: int
    count_mismatches: dict[str, int]


def model_agreement(model: nn.Module, graph: SpikingGraph, pixels: torch.Tensor, *, batch_size: int = 500) -> ModelAgreement:
    """Evaluate ``model`` itself in float64 on ``pixels`` / 255 and compare its every
    QuantAct's counts and its predictions with ``graph``'s exact evaluation."""
    reference = copy.deepcopy(model).to("cpu", torch.float64).eval()
    modules = dict(reference.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[node.attrs["module"]].register_forward_hook(
            lambda _m, _i, output, name=node.name, k=node.attrs["k"]: captured.__setitem__(name, torch.round(output * (1 << k)))
        )
        for node in graph.populations
    ]
    names = [node.name for node in graph.populations]
    result = ModelAgreement(len(pixels), 0, dict.fromkeys(names, 0))
    try:
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                x = pixels[start : start + batch_size].to(torch.float64)
                predictions = reference(x / 255).argmax(dim=1)
                ann = exact_ann(graph, x)
                result.same_predictions += int((predictions == ann.predictions).sum())
                for name in names:
                    result.count_mismatches[name] += int((captured[name].to(torch.int64) != ann.counts[name]).sum())
    finally:
        for hook in hooks:
            hook.remove()
    return result
