"""A simulation's summary, as the papers report it (``result.json``).

:func:`summarize` turns a :class:`~qsnn.sim.run.SimulationResult` into one JSON-ready
dict: accuracy per step, agreement with the quantized ANN, T_lossless and the paper's T,
spikes (positive and negative), SOPs against ANN ops, firing sparsity, energy, and the
per-layer breakdown, and beside qsnn's SOPs those of the scheme's original code
(:meth:`qsnn.snn.schemes.Scheme.paper_convention`). :func:`counted` reads the spikes,
SOPs and ratio of a summary under either convention.
"""

from __future__ import annotations

from qsnn.errors import QsnnError
from qsnn.io import provenance
from qsnn.measure.energy import ENERGY_PER_ADD_PJ, ENERGY_PER_MAC_PJ, energy
from qsnn.measure.fanout import layer_costs, nominal_ann_macs, paper_convention
from qsnn.net.quantization import bound_text
from qsnn.sim.run import SimulationResult
from qsnn.snn.model import SpikingNet


def _layer_breakdown(result: SimulationResult, costs: list, positive: list, negative: list, sops: list) -> list[dict]:
    """One entry per spiking layer: its size, its spikes, SOPs and count mismatches per image."""
    images = result.images
    layers = []
    for index, cost in enumerate(costs):
        spikes = positive[index] + negative[index]
        layers.append(
            {
                "layer": cost.name,
                "neurons": cost.neurons,
                "ann_neurons": cost.ann_neurons,
                "synapses_out": cost.synapses_out,
                "positive_spikes_per_image": positive[index] / images,
                "negative_spikes_per_image": negative[index] / images,
                "spikes_per_neuron": spikes / images / cost.neurons,
                "spiking_neurons_per_image": result.spiking_neurons[index] / images,
                "sops_per_image": sops[index] / images,
                "ann_macs": cost.ann_macs,
                "count_mismatches": result.count_mismatches[index],
            }
        )
    return layers


def _step_breakdown(result: SimulationResult) -> list[dict]:
    """One entry per time step t = 1..T: accuracy, agreement with the ANN, spikes and SOPs."""
    images = result.images
    per_step = []
    cumulative_sops = 0
    for t in range(result.steps):
        step_sops = sum(layer[t] for layer in result.sops)
        cumulative_sops += step_sops
        per_step.append(
            {
                "step": t + 1,
                "accuracy": 100.0 * result.correct[t] / images,
                "correct": result.correct[t],
                "agree": result.agree[t],
                "agree_fraction": result.agree[t] / images,
                "positive_spikes": sum(layer[t] for layer in result.positive),
                "negative_spikes": sum(layer[t] for layer in result.negative),
                "sops": step_sops,
                "cumulative_sops_per_image": cumulative_sops / images,
            }
        )
    return per_step


def _is_lossless(result: SimulationResult) -> bool:
    """Whether the SNN equals the quantized ANN: every prediction agrees and no count differs."""
    return (
        result.agree[-1] == result.images
        and sum(result.count_mismatches) == 0
        and sum(result.verified_count_mismatches) == 0
        and result.verified_disagreements == 0
    )


def _image_totals(result: SimulationResult, costs: list, positive: list, negative: list, sops: list) -> dict:
    """The whole net's SOPs, ANN operations, spikes and neurons, per image."""
    images = result.images
    macs = sum(cost.ann_macs for cost in costs)
    neurons = sum(cost.neurons for cost in costs)
    total_spikes = sum(positive) + sum(negative)
    sops_per_image = sum(sops) / images
    return {
        "sops": sops_per_image,
        "ann_macs": macs,
        "ann_ops": 3 * macs,
        "sops_over_ann_ops": sops_per_image / (3 * macs) if macs else None,
        "positive_spikes": sum(positive) / images,
        "negative_spikes": sum(negative) / images,
        "spikes": total_spikes / images,
        "spike_collect": (sum(positive) - sum(negative)) / images,
        "neurons": neurons,
        "spikes_per_neuron": total_spikes / images / neurons,
        "spiking_neurons": sum(result.spiking_neurons) / images,
    }


def _paper_counts(
    net: SpikingNet,
    dataset: str | None,
    images: int,
    positive: list,
    negative: list,
    sops: list,
    e_add: float,
    e_mac: float,
) -> dict:
    """SOPs, ANN operations, spikes and energy per image as the scheme's original code counts
    them (:func:`qsnn.measure.fanout.paper_convention`), with the rule that was applied."""
    paper = paper_convention(net.scheme, net.spec.precision.k, dataset)
    paper_sops = paper.sops(sops) / images
    paper_macs = nominal_ann_macs(net, classifier=paper.classifier)
    return {
        "sops_per_image": paper_sops,
        "ann_ops_per_image": 3 * paper_macs,
        "sops_over_ann_ops": paper_sops / (3 * paper_macs) if paper_macs else None,
        "spikes_per_image": paper.spikes([p + n for p, n in zip(positive, negative, strict=True)]) / images,
        "energy": energy(paper_sops, paper_macs, e_add, e_mac),
        "encoding_spikes_counted": paper.encoding_spikes,
        "encoding_sop_weight": paper.encoding_weight,
        "accumulator_counted": paper.classifier,
        "factor": paper.factor,
    }


def summarize(
    result: SimulationResult,
    net: SpikingNet,
    *,
    dataset: str | None = None,
    seed: int = 0,
    e_add: float = ENERGY_PER_ADD_PJ,
    e_mac: float = ENERGY_PER_MAC_PJ,
) -> dict:
    """Everything one simulation measured, per image where the papers report per image."""
    images = result.images
    costs = layer_costs(net)
    positive = [sum(layer) for layer in result.positive]
    negative = [sum(layer) for layer in result.negative]
    sops = [sum(layer) for layer in result.sops]
    agreement = result.agree[-1]
    layers = _layer_breakdown(result, costs, positive, negative, sops)
    per_step = _step_breakdown(result)
    paper = _paper_counts(net, dataset, images, positive, negative, sops, e_add, e_mac)
    per_image = _image_totals(result, costs, positive, negative, sops)
    precision = net.spec.precision
    return {
        "scheme": net.scheme,
        "threshold_scale": net.threshold_scale,
        "net": net.spec.notation,
        "precision": precision.describe(),
        "k": precision.k,
        "B": bound_text(precision.B),
        "ternary": precision.ternary,
        "dataset": dataset,
        "images": images,
        "steps": result.steps,
        "noise": result.noise,
        "sg_drop": result.sg_drop,
        "ann_accuracy": 100.0 * result.ann_correct / images,
        "ann_accuracy_clean": 100.0 * result.ann_correct_clean / images,
        "snn_accuracy": result.accuracy[-1],
        "agreement": agreement,
        "agreement_fraction": agreement / images,
        "count_mismatches": sum(result.count_mismatches),
        "verified_images": result.verified_images,
        "verified_count_mismatches": sum(result.verified_count_mismatches),
        "verified_disagreements": result.verified_disagreements,
        "lossless": _is_lossless(result),
        "t_lossless": result.t_lossless,
        "t_paper": result.t_paper,
        "per_image": per_image,
        "energy": energy(per_image["sops"], per_image["ann_macs"], e_add, e_mac),
        "paper_convention": paper,  # the scheme's original code's way of counting
        "layers": layers,
        "per_step": per_step,
        "source": net.source,
        "provenance": provenance(seed),
    }


SOP_CONVENTIONS = ("qsnn", "paper")


def counted(summary: dict, convention: str = "qsnn") -> tuple[float, float, float]:
    """(SOPs per image, ANN ops per image, energy ratio) of a simulation, counted by qsnn's
    rule or by its scheme's original code ("paper", :func:`qsnn.measure.fanout.paper_convention`)."""
    if convention not in SOP_CONVENTIONS:
        raise QsnnError(f"--sop-convention must be one of {', '.join(SOP_CONVENTIONS)}, got {convention!r}")
    if convention == "qsnn":
        return summary["per_image"]["sops"], summary["per_image"]["ann_ops"], summary["energy"]["ratio"]
    paper = summary.get("paper_convention")
    if paper is None:
        raise QsnnError("this result was written before qsnn recorded the papers' conventions; simulate it again")
    return paper["sops_per_image"], paper["ann_ops_per_image"], paper["energy"]["ratio"]
