"""Simulation results as the papers report them: summary, files, and printed tables.

:func:`summarize` turns a :class:`~qsnn.simulation.SimulationResult` into one JSON-ready
dict (``result.json``): accuracy per step, agreement with the quantized ANN, T_lossless,
spikes (positive and negative), SOPs against ANN ops, firing sparsity, energy, and the
per-layer breakdown, and beside qsnn's SOPs those of the scheme's original code
(:func:`qsnn.metrics.paper_convention`). :func:`write_simulation` saves it with per-step
and per-layer CSVs and the original code's text files, in its layout so that its figure
scripts read them unchanged: one number per line, one line per (batch, step), batch by
batch, every value summed over the batch, in the original's number format:

* ``accuracy.txt``      correct predictions of the batch at step t (int)
* ``spike_num.txt``     spikes since t = 0, sum of |s| over the original's layers (SG: float)
* ``spike_collect.txt`` signed spikes (positive minus negative) since t = 0 (float, "123.0";
  NSD and INT)
* ``sop_num.txt``       synaptic operations since t = 0, the original's convention (SG: float)
* ``abs_spike.txt``, ``sum_spike.txt`` (INT) the spikes of step t alone, |s| and signed
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

from qsnn.conversion import SpikingNet
from qsnn.errors import QsnnError
from qsnn.io import provenance, write_csv, write_json, write_text
from qsnn.metrics import (
    ENERGY_PER_ADD_PJ,
    ENERGY_PER_MAC_PJ,
    PaperConvention,
    energy,
    layer_costs,
    nominal_ann_macs,
    paper_convention,
)
from qsnn.quantization import bound_text
from qsnn.simulation import SimulationResult


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
    macs = sum(cost.ann_macs for cost in costs)
    positive = [sum(layer) for layer in result.positive]
    negative = [sum(layer) for layer in result.negative]
    sops = [sum(layer) for layer in result.sops]
    neurons = sum(cost.neurons for cost in costs)
    total_spikes = sum(positive) + sum(negative)
    agreement = result.agree[-1]
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
    precision = net.spec.precision
    sops_per_image = sum(sops) / images
    paper = paper_convention(net.scheme, net.spec.precision.k, dataset)
    paper_sops = paper.sops(sops) / images
    paper_macs = nominal_ann_macs(net, classifier=paper.classifier)
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
        "lossless": agreement == images and sum(result.count_mismatches) == 0
        and sum(result.verified_count_mismatches) == 0 and result.verified_disagreements == 0,
        "t_lossless": result.t_lossless,
        "t_paper": result.t_paper,
        "per_image": {
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
        },
        "energy": energy(sops_per_image, macs, e_add, e_mac),
        "paper_convention": {  # the scheme's original code's way of counting (qsnn.metrics.paper_convention)
            "sops_per_image": paper_sops,
            "ann_ops_per_image": 3 * paper_macs,
            "sops_over_ann_ops": paper_sops / (3 * paper_macs) if paper_macs else None,
            "spikes_per_image": paper.spikes([p + n for p, n in zip(positive, negative, strict=True)]) / images,
            "energy": energy(paper_sops, paper_macs, e_add, e_mac),
            "encoding_spikes_counted": paper.encoding_spikes,
            "encoding_sop_weight": paper.encoding_weight,
            "accumulator_counted": paper.classifier,
            "factor": paper.factor,
        },
        "layers": layers,
        "per_step": per_step,
        "source": net.source,
        "provenance": provenance(seed),
    }


def write_simulation(out_dir: str | Path, summary: dict, result: SimulationResult) -> Path:
    """Write result.json, per_step.csv, layers.csv and the original code's text files."""
    out = Path(out_dir)
    write_json(out / "result.json", summary)
    write_csv(out / "per_step.csv", summary["per_step"])
    write_csv(out / "layers.csv", summary["layers"])
    convention = paper_convention(summary["scheme"], summary["k"], summary["dataset"])
    for name, lines in original_text_files(result, convention).items():
        write_text(out / name, "".join(f"{line}\n" for line in lines))
    return out


def original_text_files(result: SimulationResult, convention: PaperConvention) -> dict[str, list[str]]:
    """The original code's text files as lines (see the module docstring): per batch,
    per step t, the batch's values; spikes and SOPs accumulated since t = 0."""
    as_float = convention.float_counts  # (SG's counts are float arrays: "2442406.0")
    files: dict[str, list[str]] = {name: [] for name in convention.files}
    batches = result.batches
    for correct, positive, negative, sops in zip(
        batches["correct"], batches["positive"], batches["negative"], batches["sops"], strict=True,
    ):
        steps = range(len(correct))
        spikes = [convention.spikes([p[t] + n[t] for p, n in zip(positive, negative, strict=True)]) for t in steps]
        signed = [convention.spikes([p[t] - n[t] for p, n in zip(positive, negative, strict=True)]) for t in steps]
        operations = [convention.sops([layer[t] for layer in sops]) for t in steps]
        values = {
            "accuracy.txt": [str(int(c)) for c in correct],
            "spike_num.txt": [str(float(v) if as_float else int(v)) for v in accumulate(spikes)],
            "spike_collect.txt": [str(float(v)) for v in accumulate(signed)],
            "sop_num.txt": [str(float(v) if as_float else int(v)) for v in accumulate(operations)],
            "abs_spike.txt": [str(int(v)) for v in spikes],
            "sum_spike.txt": [str(int(v)) for v in signed],
        }
        for name in files:
            files[name].extend(values[name])
    return files


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


SOP_CONVENTIONS = ("qsnn", "paper")


def counted(summary: dict, convention: str = "qsnn") -> tuple[float, float, float]:
    """(SOPs per image, ANN ops per image, energy ratio) of a simulation, counted by qsnn's
    rule or by its scheme's original code ("paper", :func:`qsnn.metrics.paper_convention`)."""
    if convention not in SOP_CONVENTIONS:
        raise QsnnError(f"--sop-convention must be one of {', '.join(SOP_CONVENTIONS)}, got {convention!r}")
    if convention == "qsnn":
        return summary["per_image"]["sops"], summary["per_image"]["ann_ops"], summary["energy"]["ratio"]
    paper = summary.get("paper_convention")
    if paper is None:
        raise QsnnError("this result was written before qsnn recorded the papers' conventions; simulate it again")
    return paper["sops_per_image"], paper["ann_ops_per_image"], paper["energy"]["ratio"]


def summary_table(summaries: list[dict], convention: str = "qsnn") -> str:
    """The short table `qsnn simulate` and `qsnn run` print, one row per simulation (the
    energy ratio written as the figures write it, :func:`qsnn.plots.ratio_text`); SOPs,
    ANN ops and energy counted by ``convention`` (see :func:`counted`)."""
    from qsnn.plots import ratio_text  # one rounding rule for ratios; matplotlib only when called

    tag = "" if convention == "qsnn" else " (paper)"
    header = [
        "scheme", "net", "precision", "T", "ANN %", "SNN %", "agree", "T (paper)", "T_lossless",
        f"SOPs/img{tag}", f"ANN ops/img{tag}", "spikes/img (+/-)", f"energy SNN/ANN{tag}",
    ]
    rows = []
    for s in summaries:
        per_image = s["per_image"]
        sops, ann_ops, ratio = counted(s, convention)
        rows.append(
            [
                s["scheme"] + ("" if s.get("threshold_scale") is None else f"/{s['threshold_scale']}"),
                s["net"],
                s["precision"],
                _fmt(s["steps"]),
                _fmt(s["ann_accuracy"]),
                _fmt(s["snn_accuracy"]),
                f"{s['agreement']:,}/{s['images']:,}",
                _fmt(s.get("t_paper")),
                _fmt(s["t_lossless"]),
                _fmt(sops, 0),
                _fmt(ann_ops, 0),
                f"{per_image['positive_spikes']:,.0f}/{per_image['negative_spikes']:,.0f}",
                ratio_text(ratio),
            ]
        )
    return format_table(rows, header)
