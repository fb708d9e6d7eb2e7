"""The papers' figures, drawn from simulation summaries (``result.json``, ALGORITHMS.md §4).

Every figure function takes a list of summaries (the dicts
:func:`qsnn.reporting.summarize` returns) and an output folder, and writes three files
atomically: ``<name>.png`` (200 dpi), ``<name>.svg`` and ``<name>.csv``, the numbers the
figure shows, so any figure can be re-made or re-styled elsewhere. They return the paths.

* :func:`plot_accuracy` accuracy versus time step, the quantized ANN as a dashed line,
  T_lossless marked on each curve.
* :func:`plot_sops`     synaptic operations per image against the ANN's ops (3 x MACs),
  with the energy estimate in a second panel.
* :func:`plot_sparsity` positive and negative spikes per image against the number of
  neurons, and spikes per neuron layer by layer.
* :func:`plot_noise`    accuracy versus noise ratio, one curve per configuration.
* :func:`plot_runs`     loads result.json files and folders and draws every figure that applies
  (what ``qsnn plot RUN...`` calls).

The figures are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg, no
pyplot; the style is applied with ``rc_context`` only while drawing), in the Okabe-Ito
colour-blind-safe palette with distinct markers, fonts of 9 pt and more at the saved size.
A figure is :func:`figure_size` inches, so its PNG is that times :data:`DPI` pixels. The
PNG and SVG bytes are reproducible (no dates, a fixed SVG id salt).
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import offset_copy

from qsnn.errors import QsnnError
from qsnn.io import write_bytes, write_csv

DPI = 200
FORMATS = ("png", "svg")

# Okabe-Ito, the colour-blind-safe palette; the pale yellow last. The ANN is dark grey, dashed or hatched.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
ANN_COLOR = "#555555"
REQUIRED_KEYS = ("scheme", "net", "precision", "images", "steps", "per_step", "per_image", "energy", "layers")

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "svg.fonttype": "path",
    "svg.hashsalt": "qsnn",
}


# --- labels and colours ------------------------------------------------------------------


def _key(summary: dict) -> tuple:
    """The configuration a run belongs to (everything but noise and steps)."""
    return (
        summary["scheme"],
        summary.get("threshold_scale"),
        summary["net"],
        summary["precision"],
        summary.get("dataset"),
    )


def _scheme_text(summary: dict) -> str:
    scale = summary.get("threshold_scale")
    return summary["scheme"].upper() + ("" if scale is None else f"/{scale}")


def run_labels(summaries: Sequence[dict], *, noise: bool = True) -> list[str]:
    """One short, distinct label per run: scheme and precision, plus what differs between runs.

    The net, the dataset and (with ``noise``) the noise ratio are added only when they
    differ between the runs; runs that still share a label get their step count, noise
    ratio or image count added where that tells them apart, and '#1', '#2' otherwise.
    """

    def varies(field: str) -> bool:
        return len({json.dumps(s.get(field)) for s in summaries}) > 1

    labels = []
    for summary in summaries:
        parts = [_scheme_text(summary), summary["precision"]]
        if varies("net"):
            parts.append(summary["net"])
        if varies("dataset") and summary.get("dataset"):
            parts.append(summary["dataset"])
        if noise and varies("noise"):
            parts.append(f"r={_number(summary.get('noise') or 0.0)}")
        labels.append(" ".join(parts))
    for field, text in (("steps", "{} steps"), ("noise", "r={}"), ("images", "{} images")):
        extended = list(labels)
        for index in _clashes(labels):
            same = [j for j, other in enumerate(labels) if other == labels[index]]
            if len({json.dumps(summaries[j].get(field)) for j in same}) > 1:
                value = summaries[index].get(field)
                extended[index] += " " + text.format(_number(value) if isinstance(value, float) else value)
        labels = extended
    counter: dict[str, int] = {}
    clashes = set(_clashes(labels))
    for index, label in enumerate(list(labels)):
        if index in clashes:
            counter[label] = counter.get(label, 0) + 1
            labels[index] = f"{label} #{counter[label]}"
    return labels


def _clashes(labels: Sequence[str]) -> list[int]:
    """Indices of the labels that occur more than once."""
    return [i for i, label in enumerate(labels) if labels.count(label) > 1]


def _wrap(label: str, width: int = 30) -> str:
    """Break a long label into lines of at most ``width`` characters (legends, bar labels)."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False)) or label


def _style(index: int) -> dict[str, Any]:
    return {
        "color": PALETTE[index % len(PALETTE)],
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)],
    }


def _number(value: float) -> str:
    """A number as short as it can be written without losing it (0.2, 13, 1.5e-05)."""
    return f"{value:g}"


def _si(value: float) -> str:
    """A count in engineering notation: 950, 12.3k, 1.24M, 3.1G."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}"
    return f"{value:.3g}"


def _plain(value: float) -> str:
    """A number for an axis or a bar label: 0.07, 3.5, 244, 1,270."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ratio(value: float) -> str:
    """A ratio to the ANN: 0.33×, 1.10×, 0.0046×."""
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _title(summaries: Sequence[dict]) -> str:
    """What the runs were measured on: 'MNIST, 500 test images'."""
    datasets = sorted({str(s.get("dataset")) for s in summaries if s.get("dataset")})
    images = sorted({int(s["images"]) for s in summaries})
    parts = []
    if datasets:
        parts.append(", ".join(DATASET_NAMES.get(d, d) for d in datasets))
    if images:
        count = f"{images[0]:,}" if len(images) == 1 else f"{images[0]:,}–{images[-1]:,}"
        parts.append(f"{count} test images")
    return ", ".join(parts)


# --- figures and saving ----------------------------------------------------------------------


def figure_size(name: str, entries: int) -> tuple[float, float]:
    """The figure's size in inches; the PNG is this times :data:`DPI` pixels.

    ``entries``: for 'accuracy' and 'noise' the number of curves (the legend below grows
    with them), for 'sops' the number of bars, for 'sparsity' the number of runs.
    """
    if name in ("accuracy", "noise"):
        return (6.4, 4.0 + 0.2 * math.ceil((entries + 2) / 2))
    if name == "sops":
        return (10.0, max(3.0, 1.3 + 0.42 * entries))
    if name == "sparsity":
        return (10.0, max(3.8, 1.9 + 0.55 * entries) + 0.2 * math.ceil((entries + 3) / 4))
    raise ValueError(f"unknown figure {name!r}")


def _figure(name: str, entries: int) -> Figure:
    with mpl.rc_context(_STYLE):
        return Figure(figsize=figure_size(name, entries), dpi=DPI, layout="constrained")


def _save(figure: Figure, out_dir: str | os.PathLike, name: str, rows: Sequence[dict]) -> list[Path]:
    """Write ``name``.png, .svg and .csv into ``out_dir`` atomically; return their paths."""
    out = Path(out_dir)
    paths = []
    with mpl.rc_context(_STYLE):
        for fmt in FORMATS:
            buffer = io.BytesIO()
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
            path = out / f"{name}.{fmt}"
            write_bytes(path, buffer.getvalue())
            paths.append(path)
    csv_path = out / f"{name}.csv"
    write_csv(csv_path, rows)
    paths.append(csv_path)
    return paths


def _check(summaries: Sequence[dict], what: str) -> list[dict]:
    summaries = list(summaries)
    if not summaries:
        raise QsnnError(f"nothing to plot: the {what} figure needs at least one simulation result")
    return summaries


def _zoom(values: Iterable[float]) -> tuple[float, float]:
    """Accuracy limits: from a round number a little below the lowest value to 100 %, with a
    2 % margin at both ends so markers at the round number or at 100 % are not clipped."""
    low = max(0.0, 5.0 * math.floor((min(values) - 2.0) / 5.0))
    low = min(low, 90.0)
    margin = (100.0 - low) * 0.02
    return low - margin, 100.0 + margin


def _legend_below(figure: Figure, handles: list, names: list[str], columns: int) -> None:
    figure.legend(handles, [_wrap(n, 36) for n in names], loc="outside lower center",
                  ncols=columns, frameon=False, handlelength=2.4, columnspacing=1.6)


# --- accuracy versus time step -------------------------------------------------------------


def _accuracy_limits(summaries: Sequence[dict]) -> tuple[float, float]:
    """A y-range zoomed on the interesting part: the ANN lines and every step but the first."""
    values = [float(s["ann_accuracy"]) for s in summaries]
    for summary in summaries:
        steps = summary["per_step"]
        later = [p["accuracy"] for p in steps if p["step"] >= 2]
        values.extend(later if later else [p["accuracy"] for p in steps])
    return _zoom(values)


def plot_accuracy(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Accuracy (%) versus time step, one curve per run, the ANN's accuracy as a dashed line.

    T_lossless (the first step from which every prediction equals the quantized ANN's) is
    circled and labelled 'T=…'. A run with one step (SG) is a single marker. The y-axis is
    zoomed on the steps >= 2 and the ANN lines; a value below it is a triangle on the
    bottom edge, and is written out in the lower right corner.
    CSV: one row per (run, step).
    """
    summaries = _check(summaries, "accuracy")
    labels = run_labels(summaries)
    figure = _figure("accuracy", len(summaries))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        ax = figure.add_subplot()
        low, high = _accuracy_limits(summaries)
        max_step = max(int(p["step"]) for s in summaries for p in s["per_step"])
        marks: list[tuple[int, float, int]] = []
        below: list[tuple[int, str]] = []
        for index, (summary, label) in enumerate(zip(summaries, labels)):
            style = _style(index)
            steps = [int(p["step"]) for p in summary["per_step"]]
            accuracy = [float(p["accuracy"]) for p in summary["per_step"]]
            many = len(steps) > 1
            ax.plot(
                steps, accuracy, label=label, color=style["color"],
                linestyle=style["linestyle"] if many else "none", marker=style["marker"],
                markersize=4.5 if many else 8, linewidth=1.6, markevery=0.04 if len(steps) > 25 else None,
                zorder=3,
            )
            ax.axhline(float(summary["ann_accuracy"]), color=style["color"], linestyle=(0, (5, 3)),
                       linewidth=1.0, alpha=0.85, zorder=2)
            t_lossless = summary.get("t_lossless")
            if t_lossless is not None and t_lossless in steps:
                y = accuracy[steps.index(t_lossless)]
                ax.plot([t_lossless], [max(y, low)], marker="o", markersize=12, markerfacecolor="none",
                        markeredgecolor=style["color"], markeredgewidth=1.5, linestyle="none", zorder=4,
                        clip_on=False)
                marks.append((t_lossless, max(y, low), index))
            hidden = [(step, value) for step, value in zip(steps, accuracy) if value < low]
            shift = offset_copy(ax.transData, figure, x=5.0 * len(below), units="points")  # no overlap
            for step, _value in hidden:
                ax.plot([step], [low], marker="v", color=style["color"], markersize=7, linestyle="none",
                        clip_on=False, zorder=5, transform=shift)
            if hidden:
                shown = ", ".join(f"t={step} {value:.1f}%" for step, value in hidden[:3])
                below.append((index, f"{label}: {shown}{', …' if len(hidden) > 3 else ''}"))
            for step, value, point in zip(steps, accuracy, summary["per_step"]):
                rows.append({
                    "run": label,
                    "scheme": summary["scheme"],
                    "net": summary["net"],
                    "precision": summary["precision"],
                    "dataset": summary.get("dataset"),
                    "noise": summary.get("noise"),
                    "step": step,
                    "accuracy": value,
                    "agree_fraction": point.get("agree_fraction"),
                    "ann_accuracy": summary["ann_accuracy"],
                    "t_lossless": t_lossless,
                })
        ax.set_ylim(low, high)
        if max_step >= 60:
            ax.set_xscale("log")
            ax.set_xlim(0.85, max_step * 1.15)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_xlim(0.5, max_step + 0.5)
            if max_step <= 10:
                ax.set_xticks(range(1, max_step + 1))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        ax.grid(axis="x", which="both", alpha=0.15)
        ax.set_xlabel("time step t")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"SNN accuracy versus time step ({_title(summaries)})")
        _note_below(ax, below)
        handles, names = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color=ANN_COLOR, linestyle=(0, (5, 3)), linewidth=1.0))
        names.append("quantized ANN (dashed)")
        if marks:
            handles.append(Line2D([], [], color=ANN_COLOR, marker="o", markersize=10, markerfacecolor="none",
                                  linestyle="none"))
            names.append("T_lossless (SNN = ANN on every image from here)")
        _legend_below(figure, handles, names, 2)
        figure.draw_without_rendering()
        _label_marks(ax, marks)
        return _save(figure, out_dir, "accuracy", rows)


def _note_below(ax: Axes, below: list[tuple[int, str]]) -> None:
    """List the values under the y-limit in the lower right corner, one line per run."""
    if not below:
        return
    lines = [(ANN_COLOR, "▼ below the axis:")] + [(_style(index)["color"], text) for index, text in below]
    for row, (color, text) in enumerate(reversed(lines)):
        ax.annotate(_wrap(text, 48).replace("\n", " "), (1.0, 0.0), xycoords="axes fraction",
                    xytext=(-4, 4 + 12 * row), textcoords="offset points", ha="right", va="bottom",
                    fontsize=9, color=color,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def _label_marks(ax: Axes, marks: list[tuple[int, float, int]]) -> None:
    """Write 'T=…' beside each T_lossless circle, moving labels that would overlap."""
    placed: list[tuple[float, float]] = []
    scale = 72.0 / ax.figure.dpi
    for step, value, index in marks:
        x, y = ax.transData.transform((step, value)) * scale
        dx, dy = 8.0, -15.0
        for attempt in range(12):
            dy = -15.0 - 11.0 * attempt
            if all(abs(x + dx - px) > 26 or abs(y + dy - py) > 10.5 for px, py in placed):
                break
        placed.append((x + dx, y + dy))
        ax.annotate(f"T={step}", (step, value), xytext=(dx, dy), textcoords="offset points",
                    color=_style(index)["color"], fontsize=9, fontweight="bold", zorder=6,
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})


# --- synaptic operations and energy --------------------------------------------------------


def _bar_scale(ax: Axes, values: Sequence[float], formatter) -> None:
    """Log scale when the bars span more than a factor 30, else linear from zero; room for labels."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 2, max(positive) * 12)
    else:
        ax.set_xlim(0, max(positive, default=1.0) * 1.45)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: formatter(v) if v else "0"))


def _ann_nets(summaries: Sequence[dict]) -> list[dict]:
    """One representative summary per distinct net (the ANN bars)."""
    nets: dict[str, dict] = {}
    for summary in summaries:
        nets.setdefault(summary["net"], summary)
    return list(nets.values())


def _energy_unit(smallest: float) -> tuple[float, str]:
    """The largest unit in which ``smallest`` picojoules is still >= 1: (pJ per unit, name)."""
    for factor, unit in ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ")):
        if smallest >= factor:
            return factor, unit
    return 1.0, "pJ"


def plot_sops(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Synaptic operations per image of every run against the ANN's ops (3 x MACs) per image.

    Left: SOPs per image, one bar per run and one grey hatched bar per distinct net for
    the ANN; each SNN bar is labelled with its fraction of its net's ANN ops. Right: the
    energy estimate per image (SNN additions against ANN MACs), labelled with the ratio.
    CSV: one row per bar.
    """
    summaries = _check(summaries, "SOPs")
    labels = run_labels(summaries)
    ann = _ann_nets(summaries)
    names = labels + [f"quantized ANN {s['net']}" if len(ann) > 1 else "quantized ANN (3 × MACs)" for s in ann]
    figure = _figure("sops", len(names))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        left, right = figure.subplots(1, 2, sharey=True)
        positions = [float(i) for i in range(len(summaries))] + [len(summaries) + 0.3 + i for i in range(len(ann))]
        colors = [_style(i)["color"] for i in range(len(summaries))] + [ANN_COLOR] * len(ann)
        sops = [float(s["per_image"]["sops"]) for s in summaries] + [float(s["per_image"]["ann_ops"]) for s in ann]
        pj = [float(s["energy"]["snn_pj"]) for s in summaries] + [float(s["energy"]["ann_pj"]) for s in ann]
        factor, unit = _energy_unit(min([v for v in pj if v > 0], default=1.0))
        e_add = summaries[0]["energy"].get("energy_per_add_pj")
        e_mac = summaries[0]["energy"].get("energy_per_mac_pj")
        costs = f"; {_number(e_add)} pJ/add, {_number(e_mac)} pJ/MAC" if e_add is not None and e_mac is not None else ""
        energies = [value / factor for value in pj]
        for ax, values, xlabel, title, text, ops in (
            (left, sops, "operations per image", "synaptic operations vs ANN ops", _si, True),
            (right, energies, f"energy per image ({unit}{costs})", "estimated energy per image", _plain, False),
        ):
            bars = ax.barh(positions, values, color=colors, height=0.68)
            for bar in bars[len(summaries):]:
                bar.set_hatch("///")
                bar.set_edgecolor("white")
                bar.set_linewidth(0)
            _bar_scale(ax, values, text)
            ax.grid(axis="y", visible=False)
            ax.tick_params(axis="y", length=0)
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            for index, (position, value) in enumerate(zip(positions, values)):
                note = text(value) if ops else f"{text(value)} {unit}"
                if index < len(summaries):
                    reference = _reference(summaries[index], ann, ops)
                    if reference:
                        raw = sops[index] if ops else pj[index]
                        note += f"  ({_ratio(raw / reference)} ANN)"
                ax.annotate(note, (value, position), xytext=(4, 0), textcoords="offset points",
                            ha="left", va="center", fontsize=9)
        left.set_yticks(positions, [_wrap(n, 28) for n in names])
        left.invert_yaxis()
        figure.suptitle(f"Operations and energy per image ({_title(summaries)})", fontsize=10.5)
        for summary, label in zip(summaries, labels):
            rows.append({
                "bar": label, "kind": "snn", "scheme": summary["scheme"], "net": summary["net"],
                "precision": summary["precision"], "noise": summary.get("noise"),
                "ops_per_image": summary["per_image"]["sops"],
                "energy_pj": summary["energy"]["snn_pj"],
                "ratio_to_ann_ops": summary["per_image"].get("sops_over_ann_ops"),
                "energy_ratio": summary["energy"].get("ratio"),
            })
        for summary, name in zip(ann, names[len(summaries):]):
            rows.append({
                "bar": name, "kind": "ann", "scheme": "ann", "net": summary["net"],
                "precision": "", "noise": "", "ops_per_image": summary["per_image"]["ann_ops"],
                "energy_pj": summary["energy"]["ann_pj"], "ratio_to_ann_ops": 1.0, "energy_ratio": 1.0,
            })
        return _save(figure, out_dir, "sops", rows)


def _reference(summary: dict, ann: Sequence[dict], ops: bool) -> float | None:
    """The ANN value an SNN bar is compared with: its own net's ops (or energy)."""
    for other in ann:
        if other["net"] == summary["net"]:
            value = other["per_image"]["ann_ops"] if ops else other["energy"]["ann_pj"]
            return float(value) if value else None
    return None


# --- firing sparsity -----------------------------------------------------------------------


def _lighter(color: str, amount: float = 0.6) -> tuple[float, float, float]:
    """``color`` mixed with white (negative spikes are drawn in the lighter shade, hatched)."""
    r, g, b = mpl.colors.to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


NEURON_COLOR = "#333333"


def plot_sparsity(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Firing sparsity: spikes per image against neurons, and spikes per neuron per layer.

    Left: for each run, positive (solid) and negative (light, hatched) spikes per image
    stacked, the number of neurons as a dark bar beneath, labelled with spikes per neuron.
    Right: spikes per neuron in each layer, positive and negative stacked, one bar per run.
    CSV: a 'total' row per run, then one row per (run, layer).
    """
    summaries = _check(summaries, "sparsity")
    labels = run_labels(summaries)
    figure = _figure("sparsity", len(summaries))
    rows: list[list[dict]] = [[] for _ in summaries]  # per run: its total, then its layers
    with mpl.rc_context(_STYLE):
        left, right = figure.subplots(1, 2, width_ratios=[1, 1.25])
        for index, (summary, label) in enumerate(zip(summaries, labels)):
            color = _style(index)["color"]
            per_image = summary["per_image"]
            positive = float(per_image["positive_spikes"])
            negative = float(per_image["negative_spikes"])
            neurons = float(per_image["neurons"])
            left.barh(index - 0.17, positive, 0.34, color=color)
            left.barh(index - 0.17, negative, 0.34, left=positive, color=_lighter(color), hatch="///",
                      edgecolor=color, linewidth=0)
            left.barh(index + 0.17, neurons, 0.34, color=NEURON_COLOR)
            left.annotate(f"{_si(positive + negative)} ({(positive + negative) / neurons:.2f} per neuron)",
                          (positive + negative, index - 0.17), xytext=(4, 0), textcoords="offset points",
                          ha="left", va="center", fontsize=9)
            left.annotate(_si(neurons), (neurons, index + 0.17), xytext=(4, 0), textcoords="offset points",
                          ha="left", va="center", fontsize=9, color=NEURON_COLOR)
            rows[index].append({
                "run": label, "layer": "total", "neurons": per_image["neurons"],
                "positive_spikes_per_image": per_image["positive_spikes"],
                "negative_spikes_per_image": per_image["negative_spikes"],
                "spikes_per_neuron": per_image["spikes_per_neuron"],
                "positive_per_neuron": positive / neurons, "negative_per_neuron": negative / neurons,
                "spiking_neurons_per_image": per_image.get("spiking_neurons"),
            })
        tallest = max(max(float(s["per_image"]["spikes"]), float(s["per_image"]["neurons"])) for s in summaries)
        left.set_xlim(0, tallest * 1.6)
        left.xaxis.set_major_locator(MaxNLocator(nbins=4))
        left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v) if v else "0"))
        left.set_yticks(range(len(summaries)), [_wrap(label, 24) for label in labels])
        left.invert_yaxis()
        left.tick_params(axis="y", length=0)
        left.grid(axis="y", visible=False)
        left.set_xlabel("per image: spikes (+ and −) and neurons")
        left.set_title("spikes per image vs number of neurons")

        layer_names = _layer_names(summaries)
        bar = 0.8 / len(summaries)
        for index, (summary, label) in enumerate(zip(summaries, labels)):
            color = _style(index)["color"]
            for position, layer in enumerate(summary["layers"]):
                neurons = float(layer["neurons"])
                positive = float(layer["positive_spikes_per_image"]) / neurons
                negative = float(layer["negative_spikes_per_image"]) / neurons
                x = position - 0.4 + bar * (index + 0.5)
                right.bar(x, positive, bar * 0.9, color=color)
                right.bar(x, negative, bar * 0.9, bottom=positive, color=_lighter(color), hatch="///",
                          edgecolor=color, linewidth=0)
                rows[index].append({
                    "run": label, "layer": layer["layer"], "neurons": layer["neurons"],
                    "positive_spikes_per_image": layer["positive_spikes_per_image"],
                    "negative_spikes_per_image": layer["negative_spikes_per_image"],
                    "spikes_per_neuron": layer["spikes_per_neuron"],
                    "positive_per_neuron": positive, "negative_per_neuron": negative,
                    "spiking_neurons_per_image": layer.get("spiking_neurons_per_image"),
                })
        right.set_xticks(range(len(layer_names)), layer_names,
                         rotation=0 if len(layer_names) <= 6 else 40,
                         ha="center" if len(layer_names) <= 6 else "right")
        right.tick_params(axis="x", length=0)
        right.grid(axis="x", visible=False)
        right.set_ylim(0, right.get_ylim()[1] * 1.05)
        right.set_xlabel("layer (neurons)" if len({s["net"] for s in summaries}) == 1 else "layer")
        right.set_ylabel("spikes per neuron per image")
        right.set_title("spikes per neuron, layer by layer")

        handles: list[Any] = [Patch(color=_style(i)["color"]) for i in range(len(labels))]
        handles += [
            Patch(facecolor="#8c8c8c"),
            Patch(facecolor=_lighter("#8c8c8c"), hatch="///", edgecolor="#8c8c8c", linewidth=0),
            Patch(color=NEURON_COLOR),
        ]
        names = [*labels, "positive spikes", "negative spikes", "neurons"]
        _legend_below(figure, handles, names, 4)
        figure.suptitle(f"Firing sparsity ({_title(summaries)})", fontsize=10.5)
        return _save(figure, out_dir, "sparsity", [row for run in rows for row in run])


def _layer_text(name: str) -> str:
    """'3:conv16x8x8' -> 'conv\n16×8×8' (kind above shape, so narrow ticks do not collide)."""
    name = name.partition(":")[2] or name
    kind = name.rstrip("0123456789x")
    kind = name[: len(kind)] if kind else name
    shape = name[len(kind):]
    return f"{kind}\n{shape.replace('x', '×')}" if kind and shape else name


def _layer_names(summaries: Sequence[dict]) -> list[str]:
    """Tick labels for the per-layer panel: the layer names when every run has the same net."""
    depth = max(len(s["layers"]) for s in summaries)
    if len({s["net"] for s in summaries}) == 1:
        return [f"{_layer_text(layer['layer'])}\n({_si(float(layer['neurons']))})" for layer in summaries[0]["layers"]]
    return [f"layer {i + 1}" for i in range(depth)]


# --- accuracy versus noise -----------------------------------------------------------------


def noise_groups(summaries: Sequence[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by configuration (scheme, net, precision, dataset), sorted by noise."""
    groups: dict[tuple, list[dict]] = {}
    for summary in summaries:
        groups.setdefault(_key(summary), []).append(summary)
    return {key: sorted(runs, key=lambda s: float(s.get("noise") or 0.0)) for key, runs in groups.items()}


def plot_noise(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """SNN accuracy versus noise ratio, one curve per (scheme, net, precision) group.

    Each group's ANN accuracy on clean input is a dashed line of the same colour; the
    quantized ANN on the same noisy input is a thin dotted line (a lossless SNN lies on it).
    CSV: one row per run.
    """
    summaries = _check(summaries, "noise")
    groups = noise_groups(summaries)
    firsts = [runs[0] for runs in groups.values()]
    labels = run_labels(firsts, noise=False)
    figure = _figure("noise", len(groups))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        ax = figure.add_subplot()
        for index, (runs, label) in enumerate(zip(groups.values(), labels)):
            style = _style(index)
            noise = [float(s.get("noise") or 0.0) for s in runs]
            snn = [float(s["snn_accuracy"]) for s in runs]
            ann = [float(s["ann_accuracy"]) for s in runs]
            clean = float(runs[0]["ann_accuracy_clean"])
            ax.plot(noise, snn, label=label, color=style["color"], marker=style["marker"], markersize=6,
                    linestyle=style["linestyle"], linewidth=1.6, zorder=3)
            ax.plot(noise, ann, color=style["color"], linestyle=":", linewidth=1.0, alpha=0.9, zorder=2)
            ax.axhline(clean, color=style["color"], linestyle=(0, (5, 3)), linewidth=1.0, alpha=0.8, zorder=2)
            for summary in runs:
                rows.append({
                    "group": label, "scheme": summary["scheme"], "net": summary["net"],
                    "precision": summary["precision"], "dataset": summary.get("dataset"),
                    "noise": summary.get("noise") or 0.0, "steps": summary["steps"],
                    "snn_accuracy": summary["snn_accuracy"], "ann_accuracy": summary["ann_accuracy"],
                    "ann_accuracy_clean": summary["ann_accuracy_clean"],
                    "agreement_fraction": summary.get("agreement_fraction"),
                })
        values = [r["snn_accuracy"] for r in rows] + [r["ann_accuracy"] for r in rows]
        values += [r["ann_accuracy_clean"] for r in rows]
        ax.set_ylim(*_zoom(values))
        ax.set_xlabel(_noise_label(summaries))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Robustness to noise ({_title(summaries)})")
        handles, names = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color=ANN_COLOR, linestyle=(0, (5, 3)), linewidth=1.0),
            Line2D([], [], color=ANN_COLOR, linestyle=":", linewidth=1.0),
        ]
        names += ["quantized ANN, clean input", "quantized ANN, same noisy input"]
        _legend_below(figure, handles, names, 2)
        return _save(figure, out_dir, "noise", rows)


def _noise_label(summaries: Sequence[dict]) -> str:
    schemes = {s["scheme"] for s in summaries}
    if schemes == {"sg"}:
        return "noise ratio r (probability that a spike is dropped)"
    if "sg" in schemes:
        return "noise ratio r (NSD/INT: pixel × (1 + (u − ½) r); SG: spike-drop probability)"
    return "noise ratio r (input pixel × (1 + (u − ½) r), u ~ U[0, 1))"


# --- loading runs ----------------------------------------------------------------------------


def find_results(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The result.json files the paths name: files as given, folders searched recursively."""
    if not paths:
        raise QsnnError("no runs given: name result.json files or run folders")
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        path = Path(entry)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(path.rglob("result.json"))
            if not files:
                raise QsnnError(f"no result.json under {path}: give a folder written by 'qsnn simulate' or 'qsnn run'")
        else:
            raise QsnnError(f"{path} does not exist: give result.json files or run folders")
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append(file)
    return found


def load_result(path: str | os.PathLike) -> dict:
    """Read one result.json and check that it is a qsnn simulation summary."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QsnnError(f"{path} is not a qsnn result: not valid JSON ({error})") from None
    except OSError as error:
        raise QsnnError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(data, dict):
        raise QsnnError(f"{path} is not a qsnn result: expected a JSON object written by 'qsnn simulate'")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise QsnnError(f"{path} is not a qsnn result: missing {', '.join(missing)}")
    shapes = {"per_step": list, "layers": list, "per_image": dict, "energy": dict}
    wrong = [key for key, kind in shapes.items() if not isinstance(data[key], kind)]
    if wrong or not all(isinstance(p, dict) and "step" in p and "accuracy" in p for p in data["per_step"]):
        raise QsnnError(f"{path} is not a qsnn result: malformed {', '.join(wrong) or 'per_step'}")
    if not data["per_step"]:
        raise QsnnError(f"{path} is not a qsnn result: it has no time steps")
    return data


def representative(summaries: Sequence[dict]) -> list[dict]:
    """The runs the per-run figures show: from a noise sweep only its least noisy run(s).

    Runs of one configuration with several noise values would crowd the accuracy, SOP and
    sparsity figures (the noise figure shows them); every other run is kept.
    """
    lowest: dict[tuple, float] = {}
    for summary in summaries:
        noise = float(summary.get("noise") or 0.0)
        lowest[_key(summary)] = min(noise, lowest.get(_key(summary), math.inf))
    return [s for s in summaries if float(s.get("noise") or 0.0) == lowest[_key(s)]]


def noise_sweeps(summaries: Sequence[dict]) -> list[dict]:
    """The runs of every configuration simulated at two or more noise values (else none)."""
    return [
        summary
        for runs in noise_groups(summaries).values()
        if len({float(s.get("noise") or 0.0) for s in runs}) >= 2
        for summary in runs
    ]


def default_plot_dir(paths: Sequence[str | os.PathLike]) -> Path:
    """Where ``qsnn plot`` writes without -o: a 'plots' folder in the runs' common folder."""
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
    common = Path(os.path.commonpath([str(f.resolve()) for f in folders])) if folders else Path.cwd()
    return common / "plots"


def plot_runs(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Load result.json files (or folders holding them) and draw every figure that applies.

    Accuracy, SOPs and sparsity are always drawn (from a noise sweep only its least noisy
    run, see :func:`representative`); the noise figure only when some configuration was run
    at two or more noise values. ``out_dir`` None: :func:`default_plot_dir`.
    Returns the files written.
    """
    files = find_results(paths)
    summaries = [load_result(file) for file in files]
    out = Path(out_dir) if out_dir is not None else default_plot_dir(paths)
    runs = representative(summaries)
    written = plot_accuracy(runs, out) + plot_sops(runs, out) + plot_sparsity(runs, out)
    sweeps = noise_sweeps(summaries)
    if sweeps:
        written += plot_noise(sweeps, out)
    return written
