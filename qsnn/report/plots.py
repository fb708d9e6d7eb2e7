"""The papers' figures, drawn from simulation summaries (``result.json``, ALGORITHMS.md §4).

Every figure function takes a list of summaries (the dicts
:func:`qsnn.report.summary.summarize` returns) and an output folder, and writes three files
atomically: ``<name>.png`` (200 dpi), ``<name>.svg`` and ``<name>.csv``, the numbers the
figure shows, so any figure can be re-made or re-styled elsewhere. They return the paths.

* :func:`plot_accuracy`      accuracy versus time step, the quantized ANN as dashed lines,
  T (paper) and T_lossless marked on each curve; a second panel zoomed on the band of
  the ANN accuracies, each ANN line labelled with its value.
* :func:`plot_sops`          synaptic operations per image against the ANN's ops (3 x MACs),
  with the energy estimate in a second panel.
* :func:`plot_sops_per_step` SOPs per image accumulated over the time steps, one curve per
  run, each net's ANN ops per image as a dashed line.
* :func:`plot_sparsity`      positive and negative spikes per image against the number of
  neurons, and spikes per neuron layer by layer (layers named by what they are).
* :func:`plot_noise`         accuracy versus noise ratio, one curve per configuration.
* :func:`plot_runs`          loads result.json files and folders and draws every figure that
  applies (what ``qsnn plot RUN...`` calls).

:func:`build_figure` draws one of them without saving (the Figure and its CSV rows).

The figures are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg, no
pyplot; the style is applied with ``rc_context`` only while drawing), in the Okabe-Ito
colour-blind-safe palette, one fixed colour per scheme (:func:`scheme_color`; runs of one
scheme differ by marker and line style, bars by shade), fonts of 9 pt and more at the saved
size. After the layout is settled no two tick labels overlap (long ones are turned upright,
crowded ones thinned) and the labels the figures place themselves (T, ANN values) are moved
until none overlaps another. Ratios to the ANN are written by :func:`ratio_text`, as in the
printed tables. A figure is :func:`figure_size` inches, so its PNG is that times :data:`DPI`
pixels. The PNG and SVG bytes are reproducible (no dates, a fixed SVG id salt).
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FixedLocator, Formatter, FuncFormatter, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox, offset_copy

from qsnn.errors import QsnnError
from qsnn.io import write_bytes, write_csv
from qsnn.net.notation import format_items, parse
from qsnn.snn.schemes import SCHEMES

DPI = 200
FORMATS = ("png", "svg")

# Okabe-Ito, the colour-blind-safe palette; the pale yellow last. The ANN is dark grey, dashed or hatched.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
# One colour per scheme, whatever else differs (a threshold scale included); other schemes by name.
SCHEME_COLORS = {"nsd": "#0072B2", "sg": "#009E73", "int": "#D55E00"}
OTHER_COLORS = ("#CC79A7", "#E69F00", "#56B4E9", "#000000")
# Run markers (the filled diamond marks T (paper), the open circle T_lossless).
MARKERS = ("o", "s", "^", "v", "P", "X", "*", "h")
SCHEME_MARKERS = {"nsd": "o", "sg": "^", "int": "s"}
LINESTYLES = ("-", "--", "-.", ":")
ANN_COLOR = "#555555"
ANN_DASHES = (0, (5, 3))
T_PAPER_MARKER = "D"
REQUIRED_KEYS = ("scheme", "net", "precision", "images", "steps", "per_step", "per_image", "energy", "layers")
GRAPH_KEYS = ("scheme", "net", "precision", "images", "steps", "per_step", "ann_accuracy")  # a spiking graph's result

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


def scheme_color(scheme: str) -> str:
    """The fixed colour of a scheme: NSD blue, SG bluish green, INT vermilion; any other
    scheme one of the remaining Okabe-Ito colours, chosen by its name."""
    key = str(scheme).lower()
    if key in SCHEME_COLORS:
        return SCHEME_COLORS[key]
    return OTHER_COLORS[zlib.crc32(key.encode()) % len(OTHER_COLORS)]


def _shade(color: str, rank: int) -> tuple[float, float, float]:
    """``color`` for the ``rank``-th bar of its scheme: itself, then darker, lighter, ..."""
    if rank == 0:
        return mpl.colors.to_rgb(color)
    amount = (0.35, 0.4, 0.55, 0.6)[(rank - 1) % 4] * (0.9 ** ((rank - 1) // 4))
    target = 0.0 if rank % 2 else 1.0
    return tuple(c + (target - c) * amount for c in mpl.colors.to_rgb(color))  # type: ignore[return-value]


def run_styles(summaries: Sequence[dict]) -> list[dict[str, Any]]:
    """How each run is drawn: the colour of its scheme (:func:`scheme_color`); the runs of one
    scheme, in order, take the next marker and line style (curves) or shade (bars)."""
    seen: dict[str, int] = {}
    styles = []
    for summary in summaries:
        scheme = str(summary["scheme"]).lower()
        rank = seen.get(scheme, 0)
        seen[scheme] = rank + 1
        color = scheme_color(scheme)
        first = MARKERS.index(SCHEME_MARKERS.get(scheme, MARKERS[zlib.crc32(scheme.encode()) % len(MARKERS)]))
        styles.append({
            "color": color,
            "marker": MARKERS[(first + rank) % len(MARKERS)],
            "linestyle": LINESTYLES[rank % len(LINESTYLES)],
            "shade": _shade(color, rank),
        })
    return styles


def ratio_text(value: float | None) -> str:
    """A ratio (SNN/ANN energy or ops) to two significant digits: 0.10, 0.53, 0.0046, 1.1, 12.

    The one rounding rule for ratios: the printed tables (``qsnn simulate``, the report) and
    the figures' '× ANN' labels all write them with this, so they always show the same digits.
    None, NaN and infinity are '-'.
    """
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 9.95:  # two significant digits of a number of 10 or more: a whole number
        return f"{float(f'{value:.2g}'):.0f}"
    return f"{value:#.2g}"


def _number(value: float) -> str:
    """A number as short as it can be written without losing it (0.2, 13, 1.5e-05)."""
    return f"{value:g}"


def _si(value: float) -> str:
    """A count in engineering notation: 950, 12.3k, 1.24M, 3.1G."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit * 0.9995:  # 999,999.9 is 1M, not 1e+03k
            scaled = value / limit
            return f"{scaled:.3g}{suffix}"
    return f"{value:.3g}"


def _plain(value: float) -> str:
    """A number for an axis or a bar label: 0.07, 3.5, 244, 1,270."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


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

    ``entries``: for 'accuracy', 'sops_per_step' and 'noise' the number of curves (the
    legend below grows with them), for 'sops' the number of bars, for 'sparsity' the
    number of runs.
    """
    if name == "accuracy":
        return (9.6, 4.2 + 0.22 * math.ceil((entries + 3) / 3))
    if name in ("noise", "sops_per_step"):
        return (7.2 if name == "sops_per_step" else 6.4, 4.0 + 0.2 * math.ceil((entries + 2) / 2))
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


def data_limits(values: Iterable[float], *, pad: float = 0.2, min_span: float = 0.5) -> tuple[float, float]:
    """Accuracy limits chosen from the data: the values' range widened by ``pad`` of it on
    each side, at least ``min_span`` percentage points, kept within 0-100 % (plus a margin of
    2 % of the span, so markers at 0 or 100 % are not clipped) by shifting, not shrinking."""
    values = [float(v) for v in values]
    low, high = min(values), max(values)
    span = min(max((high - low) * (1 + 2 * pad), min_span), 104.0)
    edge = 0.02 * min(span, 100.0)
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    if high > 100.0 + edge:
        low, high = low - (high - 100.0 - edge), 100.0 + edge
    if low < -edge:
        low, high = -edge, high + (-edge - low)
    return low, high


def _legend_below(figure: Figure, handles: list, names: list[str], columns: int) -> None:
    """The legend under the axes, in ``columns`` columns or as many fewer as it needs to fit
    the figure's width."""
    width = figure.get_figwidth() * figure.dpi
    for ncols in range(columns, 0, -1):
        legend = figure.legend(handles, [_wrap(n, 36) for n in names], loc="outside lower center",
                               ncols=ncols, frameon=False, handlelength=2.4, columnspacing=1.6)
        if ncols == 1 or legend.get_window_extent().width <= 0.98 * width:
            return
        legend.remove()


# --- tick labels that do not collide ---------------------------------------------------------


class _Thinned(Formatter):
    """Another formatter's labels at the kept tick positions only (the others blank)."""

    def __init__(self, inner: Formatter, keep: Sequence[float]):
        self.inner = inner
        self.keep = list(keep)

    def _kept(self, value: float) -> bool:
        return any(math.isclose(value, k, rel_tol=1e-9, abs_tol=1e-12) for k in self.keep)

    def __call__(self, x, pos=None):
        return self.inner(x, pos) if self._kept(x) else ""

    def format_ticks(self, values):
        labels = self.inner.format_ticks(values)
        return [label if self._kept(v) else "" for v, label in zip(values, labels)]

    def get_offset(self):
        return self.inner.get_offset()

    def set_locs(self, locs):
        self.inner.set_locs(locs)


def tick_labels(axis: Axis) -> list[tuple[float, Text]]:
    """The tick labels ``axis`` draws: (position, label) of every visible, non-empty label of
    a tick inside the view, major and minor, in order of position."""
    axis.get_majorticklabels()  # (these bring the ticks' positions and texts up to date)
    axis.get_minorticklabels()
    low, high = sorted(axis.get_view_interval())
    tolerance = 1e-9 * max(1.0, abs(low), abs(high))
    found = []
    for locs, ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks),
        (axis.get_minorticklocs(), axis.get_minor_ticks),
    ):
        locs = list(locs)
        for loc, tick in zip(locs, ticks(len(locs))):
            if not low - tolerance <= loc <= high + tolerance:
                continue
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip():
                    found.append((float(loc), label))
    return sorted(found, key=lambda item: item[0])


def _overlap(a: Bbox, b: Bbox, pad: float = 0.0) -> bool:
    """Whether two boxes overlap (or come closer than ``pad`` pixels)."""
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def _any_overlap(boxes: Sequence[Bbox], pad: float = 0.0) -> bool:
    return any(_overlap(boxes[i], boxes[j], pad) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def _relieve(axis: Axis, labels: list[tuple[float, Text]]) -> None:
    """One step against colliding labels: minor labels off; category labels (words, set with
    the ticks) on one line, upright on the x axis, wrapped wider on the y axis; then keep
    only every k-th label, the smallest k at which the kept ones no longer collide."""
    minor = axis.get_minor_formatter()
    if set(axis.get_minorticklocs()) & {loc for loc, _ in labels} and not isinstance(minor, NullFormatter):
        axis.set_minor_formatter(NullFormatter())
        return
    formatter = axis.get_major_formatter()
    inner = formatter.inner if isinstance(formatter, _Thinned) else formatter
    locator = axis.get_major_locator()
    if isinstance(locator, FixedLocator) and not getattr(axis, "_qsnn_flat", False):
        locs = list(locator.locs)
        texts = [str(text) for text in inner.format_ticks(locs)]
        if any(char.isalpha() or char == "\n" for text in texts for char in text):
            axis._qsnn_flat = True  # type: ignore[attr-defined]
            flat = [" ".join(text.split("\n")) for text in texts]
            if axis.axis_name == "y":
                flat = [_wrap(text, 60) for text in flat]
            else:
                axis.set_tick_params(labelrotation=90)
            table = dict(zip(locs, flat))
            axis.set_major_formatter(FuncFormatter(lambda value, _pos: table.get(value, "")))
            return
    boxes = [label.get_window_extent() for _, label in labels]
    step = len(labels)
    for candidate in range(2, len(labels)):
        if not _any_overlap(boxes[::candidate], 2.0):
            step = candidate
            break
    axis.set_major_formatter(_Thinned(inner, [loc for loc, _ in labels[::step]]))


def _settle(figure: Figure, rounds: int = 6) -> None:
    """Lay the figure out, relieve colliding tick labels until none overlap, then freeze the
    layout (so the labels placed afterwards, and the saved files, keep these positions).
    Only the layout is computed here, not a whole draw (the saving draws)."""
    engine = figure.get_layout_engine()
    for _ in range(rounds):
        engine.execute(figure)
        crowded = []
        for ax in figure.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = tick_labels(axis)
                if _any_overlap([label.get_window_extent() for _, label in labels], 2.0):
                    crowded.append((axis, labels))
        if not crowded:
            break
        for axis, labels in crowded:
            _relieve(axis, labels)
    figure.set_layout_engine("none")


# --- labels placed by hand -------------------------------------------------------------------


def _text_box(text: Text) -> Bbox:
    """The box of a text alone, where it is now (an annotation's arrow left out)."""
    if isinstance(text, Annotation):
        text.get_window_extent()  # moves the text to the annotation's current offset
    return Text.get_window_extent(text)


def _label_column(ax: Axes, items: Sequence[tuple[float, str, Any]]) -> list[Annotation]:
    """Labels just right of the axes at the data heights of ``items`` (value, text, colour);
    :func:`_stagger` moves them apart once the layout is settled."""
    annotations = []
    for value, text, color in items:
        annotations.append(ax.annotate(
            text, (1.0, value), xycoords=("axes fraction", "data"), xytext=(5, 0), textcoords="offset points",
            ha="left", va="center", fontsize=9, color=color, annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "shrinkA": 0, "shrinkB": 0},
        ))
    return annotations


def _stagger(annotations: Sequence[Annotation], gap: float = 1.5) -> None:
    """Move a column of :func:`_label_column` labels apart vertically until no two overlap,
    the group centred on the lines it labels (a thin line leads from each line's end to its
    label)."""
    if not annotations:
        return
    scale = 72.0 / annotations[0].figure.dpi
    entries = []
    for annotation in annotations:
        ax = annotation.axes
        edge = mpl.transforms.blended_transform_factory(ax.transAxes, ax.transData)
        y = float(edge.transform((1.0, annotation.xy[1]))[1])  # the line's height in pixels
        entries.append((y, _text_box(annotation).height, annotation))
    entries.sort(key=lambda entry: entry[0])

    def spread(targets: list[float]) -> list[float]:
        for i in range(1, len(targets)):
            targets[i] = max(targets[i], targets[i - 1] + (entries[i - 1][1] + entries[i][1]) / 2 + gap)
        return targets

    placed = spread([y for y, _, _ in entries])
    shift = sum(y - p for (y, _, _), p in zip(entries, placed)) / len(entries)
    placed = spread([p + shift for p in placed])
    frame = entries[0][2].axes.get_window_extent()  # within the axes' height (clear of the title)
    over = placed[-1] + entries[-1][1] / 2 - frame.y1
    if over > 0:
        placed = [p - over for p in placed]
    under = frame.y0 - (placed[0] - entries[0][1] / 2)
    if under > 0:
        placed = [p + under for p in placed]
    for (y, _, annotation), target in zip(entries, placed):
        annotation.xyann = (5, (target - y) * scale)


def _place_labels(ax: Axes, marks: Sequence[tuple[float, float, str, Any]], obstacles: Sequence[Bbox] = ()) -> list[Text]:
    """Write each mark's label (x, y, text, colour) near its mark where it overlaps no other
    label, no mark and nothing in ``obstacles``, inside the axes; the nearest such place
    wins (right and below first). A label set away from its mark gets a thin leader line."""
    figure = ax.figure
    scale = figure.dpi / 72.0
    frame = ax.get_window_extent()
    points = [ax.transData.transform((x, y)) for x, y, _, _ in marks]
    radius = 7.0 * scale
    mark_boxes = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius) for px, py in points]
    taken: list[Bbox] = list(obstacles)
    texts: list[Text] = []
    for index, (x, y, text, color) in enumerate(marks):
        others = [box for j, box in enumerate(mark_boxes) if j != index]
        label = ax.annotate(text, (x, y), xytext=(10, -13), textcoords="offset points", ha="left", va="center",
                            color=color, fontsize=9, fontweight="bold", zorder=6, annotation_clip=False,
                            bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none",
                                  "alpha": 0.75})
        best, best_cost = (10.0, -13.0), math.inf
        for dx, dy in _CANDIDATES:
            label.set_horizontalalignment("left" if dx > 0 else "right")
            label.xyann = (dx, dy)
            box = _text_box(label)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            clashes = sum(_overlap(box, other, 3.0) for other in taken) + sum(_overlap(box, m) for m in others)
            cost = clashes * 1000 + (0 if inside else 500) + math.hypot(dx, dy)
            if cost < best_cost:
                best, best_cost = (dx, dy), cost
            if not clashes and inside:
                break
        label.set_horizontalalignment("left" if best[0] > 0 else "right")
        label.xyann = best
        taken.append(_text_box(label))
        if math.hypot(*best) > 24:
            ax.annotate("", (x, y), xytext=best, textcoords="offset points", annotation_clip=False,
                        arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "shrinkA": 2, "shrinkB": 6})
        texts.append(label)
    return texts


# Label offsets (points) from a mark, nearest first, below before above (the curves rise from
# below to a plateau), beside it (on the curve) last; right before left.
_CANDIDATES = sorted(
    ((dx, dy) for dx in (10, -10, 34, -34, 64, -64, 100, -100)
     for dy in [0.0] + [sign * 12.5 * k for k in range(1, 15) for sign in (-1, 1)]),
    key=lambda d: (math.hypot(d[0], d[1]) + (50 if d[1] > 0 else 0) + (120 if d[1] == 0 else 0), d[0] < 0),
)


# --- accuracy versus time step -------------------------------------------------------------


def _accuracy_limits(summaries: Sequence[dict]) -> tuple[float, float]:
    """A y-range zoomed on the interesting part: the ANN lines and every step but the first."""
    values = [float(s["ann_accuracy"]) for s in summaries]
    for summary in summaries:
        steps = summary["per_step"]
        later = [p["accuracy"] for p in steps if p["step"] >= 2]
        values.extend(later if later else [p["accuracy"] for p in steps])
    return _zoom(values)


def ann_band(values: Iterable[float]) -> tuple[float, float]:
    """The zoom panel's accuracy range around the ANN accuracies ``values``: from
    min(95, lowest - 1) to 100 %; when every ANN is above 98 %, from a quarter point at least
    0.25 below the lowest to one at least 0.25 above the highest (at most 100 %)."""
    values = [float(v) for v in values]
    lowest, highest = min(values), max(values)
    if lowest > 98.0:
        low = math.floor(4 * (lowest - 0.25)) / 4
        high = min(100.0, math.ceil(4 * (highest + 0.25)) / 4)
    else:
        low, high = max(0.0, min(95.0, math.floor(lowest - 1.0))), 100.0
    return low, high


def _time_axis(ax: Axes, max_step: int, nbins: int = 10) -> None:
    """Time steps 1..max_step on the x axis (logarithmic from 60 steps)."""
    if max_step >= 60:
        ax.set_xscale("log")
        ax.set_xlim(0.85, max_step * 1.15)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xlim(0.5, max_step + 0.5)
        if max_step <= nbins:
            ax.set_xticks(range(1, max_step + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=nbins))
    ax.grid(axis="x", which="both", alpha=0.15)
    ax.set_xlabel("time step t")


def _ann_lines(summaries: Sequence[dict], styles: Sequence[dict]) -> list[tuple[float, str, Any]]:
    """One dashed ANN line per distinct ANN accuracy: (value, label, colour), the colour of
    its runs' scheme, dark grey when runs of several schemes share it."""
    lines: dict[str, tuple[float, set]] = {}
    for summary, style in zip(summaries, styles):
        value = float(summary["ann_accuracy"])
        text = f"{value:.2f}"
        lines.setdefault(text, (value, set()))[1].add(style["color"])
    return [
        (value, f"ANN {text}", next(iter(colors)) if len(colors) == 1 else ANN_COLOR)
        for text, (value, colors) in sorted(lines.items(), key=lambda item: item[1][0])
    ]


def _t_marks(ax: Axes, steps: list[int], accuracy: list[float], summary: dict, color, floor: float,
             clip: bool) -> list[tuple[float, float, str, Any]]:
    """Draw T (paper) (a filled diamond) and T_lossless (an open circle) on a curve; return
    the labels to write: (step, accuracy, 'T=..' / 'T_lossless=..' / both at once, colour)."""
    labels = []
    t_paper, t_lossless = summary.get("t_paper"), summary.get("t_lossless")
    for t, marker in ((t_lossless, "lossless"), (t_paper, "paper")):
        if t is None or t not in steps:
            continue
        y = accuracy[steps.index(t)]
        if clip and y < floor:
            continue
        y = max(y, floor)
        if marker == "lossless":
            ax.plot([t], [y], marker="o", markersize=12, markerfacecolor="none", markeredgecolor=color,
                    markeredgewidth=1.5, linestyle="none", zorder=4, clip_on=clip)
        else:
            ax.plot([t], [y], marker=T_PAPER_MARKER, markersize=6.5, color=color, markeredgecolor="white",
                    markeredgewidth=0.7, linestyle="none", zorder=5, clip_on=clip)
    if t_paper is not None and t_paper == t_lossless and t_paper in steps:
        labels.append((t_paper, max(accuracy[steps.index(t_paper)], floor), f"T=T_lossless={t_paper}", color))
    else:
        for t, text in ((t_paper, "T"), (t_lossless, "T_lossless")):
            if t is not None and t in steps:
                labels.append((t, max(accuracy[steps.index(t)], floor), f"{text}={t}", color))
    return labels


def _curve_look(style: dict, steps: Sequence[int]) -> dict[str, Any]:
    """The plot keywords of one run's accuracy curve: its colour, line and marker, a single
    larger marker when the run has one step, markers thinned out beyond 25 steps."""
    many = len(steps) > 1
    return {
        "color": style["color"], "linestyle": style["linestyle"] if many else "none", "marker": style["marker"],
        "markersize": 4.5 if many else 8, "linewidth": 1.6, "zorder": 3,
        "markevery": 0.04 if len(steps) > 25 else None,
    }


def _mark_below(ax: Axes, figure: Figure, steps: Sequence[int], accuracy: Sequence[float], floor: float, color,
                column: int) -> list[tuple[int, float]]:
    """Draw a triangle on the bottom edge of ``ax`` at each step whose accuracy is under
    ``floor``, shifted right by 5 points per ``column`` so that runs do not overlap; return
    those (step, accuracy)."""
    hidden = [(step, value) for step, value in zip(steps, accuracy) if value < floor]
    shift = offset_copy(ax.transData, figure, x=5.0 * column, units="points")
    for step, _value in hidden:
        ax.plot([step], [floor], marker="v", color=color, markersize=7, linestyle="none",
                clip_on=False, zorder=5, transform=shift)
    return hidden


def _below_text(label: str, hidden: Sequence[tuple[int, float]]) -> str:
    """The note on a run's values under the axis: its first three steps and values, '…' if more."""
    shown = ", ".join(f"t={step} {value:.1f}%" for step, value in hidden[:3])
    return f"{label}: {shown}{', …' if len(hidden) > 3 else ''}"


def _accuracy_rows(summary: dict, label: str) -> list[dict]:
    """The CSV rows of one run: one per step, with the run's ANN accuracy, T (paper) and T_lossless."""
    return [
        {
            "run": label,
            "scheme": summary["scheme"],
            "net": summary["net"],
            "precision": summary["precision"],
            "dataset": summary.get("dataset"),
            "noise": summary.get("noise"),
            "step": int(point["step"]),
            "accuracy": float(point["accuracy"]),
            "agree_fraction": point.get("agree_fraction"),
            "ann_accuracy": summary["ann_accuracy"],
            "t_paper": summary.get("t_paper"),
            "t_lossless": summary.get("t_lossless"),
        }
        for point in summary["per_step"]
    ]


def _plot_accuracy_run(main: Axes, zoom: Axes, summary: dict, label: str, style: dict, low: float,
                       band_low: float, column: int) -> tuple[list[tuple[float, float, str, Any]], str | None]:
    """Draw one run's curve and T marks in both panels, with triangles for the values under
    ``low`` in ``main``; return the T labels to place in ``main`` and the note on the values
    under the axis (None when there are none)."""
    color = style["color"]
    steps = [int(p["step"]) for p in summary["per_step"]]
    accuracy = [float(p["accuracy"]) for p in summary["per_step"]]
    look = _curve_look(style, steps)
    main.plot(steps, accuracy, label=label, **look)
    zoom.plot(steps, accuracy, **look)
    marks = _t_marks(main, steps, accuracy, summary, color, low, clip=False)
    _t_marks(zoom, steps, accuracy, summary, color, band_low, clip=True)
    hidden = _mark_below(main, main.figure, steps, accuracy, low, color, column)
    return marks, _below_text(label, hidden) if hidden else None


def _draw_ann_lines(main: Axes, zoom: Axes, ann: Sequence[tuple[float, str, Any]]) -> list[Annotation]:
    """Draw each ANN accuracy as a dashed line across both panels; return its value labels
    at the right of ``zoom``."""
    for value, _, color in ann:
        for ax in (main, zoom):
            ax.axhline(value, color=color, linestyle=ANN_DASHES, linewidth=1.0, alpha=0.85, zorder=2)
    return _label_column(zoom, ann)


def _accuracy_axes(main: Axes, zoom: Axes, limits: tuple[float, float], band: tuple[float, float],
                   max_step: int) -> None:
    """The y-ranges, time axes, labels and titles of the whole-range and zoom panels."""
    main.set_ylim(*limits)
    margin = 0.02 * (band[1] - band[0])
    zoom.set_ylim(band[0] - margin, band[1] + margin)
    _time_axis(main, max_step)
    _time_axis(zoom, max_step, nbins=5)
    zoom.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    main.set_ylabel("test accuracy (%)")
    main.set_title("SNN accuracy versus time step")
    zoom.set_title("zoom on the ANN accuracies")


def _accuracy_legend(figure: Figure, main: Axes, summaries: Sequence[dict]) -> None:
    """The legend under the figure: the runs, the ANN line, and T (paper) and T_lossless
    where any run has them."""
    handles, names = main.get_legend_handles_labels()
    handles.append(Line2D([], [], color=ANN_COLOR, linestyle=ANN_DASHES, linewidth=1.0))
    names.append("quantized ANN (dashed; value at the right)")
    if any(s.get("t_paper") is not None for s in summaries):
        handles.append(Line2D([], [], color=ANN_COLOR, marker=T_PAPER_MARKER, markersize=6.5, linestyle="none"))
        names.append("T (paper): accuracy final from here")
    if any(s.get("t_lossless") is not None for s in summaries):
        handles.append(Line2D([], [], color=ANN_COLOR, marker="o", markersize=10, markerfacecolor="none",
                              linestyle="none"))
        names.append("T_lossless: SNN = ANN on every image from here")
    _legend_below(figure, handles, names, 3)


def _accuracy_figure(summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    summaries = _check(summaries, "accuracy")
    labels = run_labels(summaries)
    styles = run_styles(summaries)
    figure = _figure("accuracy", len(summaries))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        main, zoom = figure.subplots(1, 2, width_ratios=[1.85, 1])
        low, high = _accuracy_limits(summaries)
        band = ann_band(float(s["ann_accuracy"]) for s in summaries)
        max_step = max(int(p["step"]) for s in summaries for p in s["per_step"])
        marks: list[tuple[float, float, str, Any]] = []
        below: list[tuple[Any, str]] = []
        for summary, label, style in zip(summaries, labels, styles):
            run_marks, note = _plot_accuracy_run(main, zoom, summary, label, style, low, band[0], len(below))
            marks += run_marks
            if note is not None:
                below.append((style["color"], note))
            rows += _accuracy_rows(summary, label)
        ann_labels = _draw_ann_lines(main, zoom, _ann_lines(summaries, styles))
        _accuracy_axes(main, zoom, (low, high), band, max_step)
        figure.suptitle(f"Accuracy versus time step ({_title(summaries)})", fontsize=10.5)
        notes = _note_below(main, below)
        _accuracy_legend(figure, main, summaries)
        _settle(figure)
        _stagger(ann_labels)
        _place_labels(main, marks, [_text_box(note) for note in notes])
    return figure, rows


def _note_below(ax: Axes, below: list[tuple[Any, str]]) -> list[Text]:
    """List the values under the y-limit in the lower right corner, one line per run."""
    if not below:
        return []
    lines = [(ANN_COLOR, "▼ below the axis:"), *below]
    notes = []
    for row, (color, text) in enumerate(reversed(lines)):
        notes.append(ax.annotate(
            _wrap(text, 48).replace("\n", " "), (1.0, 0.0), xycoords="axes fraction",
            xytext=(-4, 4 + 12 * row), textcoords="offset points", ha="right", va="bottom", fontsize=9, color=color,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        ))
    return notes


def plot_accuracy(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Accuracy (%) versus time step, one curve per run, each ANN accuracy a dashed line.

    Left, the whole range: T (paper) (the first step from which the accuracy stays at its
    final value) is a filled diamond, T_lossless (the first step from which every prediction
    equals the quantized ANN's) an open circle, labelled 'T=..', 'T_lossless=..' (or
    'T=T_lossless=..' where they coincide) where no label overlaps another. A run with one
    step (SG) is a single marker. The y-axis is zoomed on the steps >= 2 and the ANN lines;
    a value below it is a triangle on the bottom edge, written out in the lower right corner.
    Right, narrower: the band of the ANN accuracies (:func:`ann_band`), each ANN line's value
    written at its right end. One colour per scheme (:func:`run_styles`).
    CSV: one row per (run, step), with the run's T (paper) and T_lossless.
    """
    figure, rows = _accuracy_figure(summaries)
    return _save(figure, out_dir, "accuracy", rows)


# --- synaptic operations and energy --------------------------------------------------------


def _bar_scale(
    ax: Axes, values: Sequence[float], formatter, *, axis: str = "x", room: tuple[float, float, float] = (2, 12, 1.45),
    bins: int = 5,
) -> None:
    """Log scale on ``axis`` when the values span more than a factor 30, else linear from
    zero; ``room``: (below the least, above the largest on a log scale, above the largest
    on a linear one), factors that leave space for labels."""
    positive = [v for v in values if v > 0]
    limits, scale = (ax.set_xlim, ax.set_xscale) if axis == "x" else (ax.set_ylim, ax.set_yscale)
    along = ax.xaxis if axis == "x" else ax.yaxis
    if positive and max(positive) / min(positive) > 30:
        scale("log")
        limits(min(positive) / room[0], max(positive) * room[1])
    else:
        limits(0, max(positive, default=1.0) * room[2])
        along.set_major_locator(MaxNLocator(nbins=bins))
    along.set_major_formatter(FuncFormatter(lambda v, _: formatter(v) if v else "0"))


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


def _ratio_to_ann(summary: dict, ann: Sequence[dict], ops: bool) -> float | None:
    """The ratio an SNN bar is labelled with: the summary's own (SOPs over its net's ANN ops,
    or the energy ratio the tables print), computed from the bars only for older results."""
    ratio = summary["per_image"].get("sops_over_ann_ops") if ops else summary["energy"].get("ratio")
    if ratio is not None:
        return float(ratio)
    reference = _reference(summary, ann, ops)
    if not reference:
        return None
    return (float(summary["per_image"]["sops"]) if ops else float(summary["energy"]["snn_pj"])) / reference


def _sops_figure(summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    summaries = _check(summaries, "SOPs")
    labels = run_labels(summaries)
    styles = run_styles(summaries)
    ann = _ann_nets(summaries)
    names = labels + [f"quantized ANN {s['net']}" if len(ann) > 1 else "quantized ANN (3 × MACs)" for s in ann]
    figure = _figure("sops", len(names))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        left, right = figure.subplots(1, 2, sharey=True)
        positions = [float(i) for i in range(len(summaries))] + [len(summaries) + 0.3 + i for i in range(len(ann))]
        colors = [style["shade"] for style in styles] + [mpl.colors.to_rgb(ANN_COLOR)] * len(ann)
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
                    ratio = _ratio_to_ann(summaries[index], ann, ops)
                    if ratio is not None:
                        note += f"  ({ratio_text(ratio)}× ANN)"
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
        _settle(figure)
    return figure, rows


def plot_sops(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Synaptic operations per image of every run against the ANN's ops (3 x MACs) per image.

    Left: SOPs per image, one bar per run and one grey hatched bar per distinct net for
    the ANN; each SNN bar is labelled with its fraction of its net's ANN ops. Right: the
    energy estimate per image (SNN additions against ANN MACs), labelled with the energy
    ratio. Ratios are written by :func:`ratio_text`, as in the printed tables.
    CSV: one row per bar.
    """
    figure, rows = _sops_figure(summaries)
    return _save(figure, out_dir, "sops", rows)


def _reference(summary: dict, ann: Sequence[dict], ops: bool) -> float | None:
    """The ANN value an SNN bar is compared with: its own net's ops (or energy)."""
    for other in ann:
        if other["net"] == summary["net"]:
            value = other["per_image"]["ann_ops"] if ops else other["energy"]["ann_pj"]
            return float(value) if value else None
    return None


# --- SOPs accumulated over the time steps ----------------------------------------------------


def cumulative_sops(summary: dict) -> list[float] | None:
    """SOPs per image accumulated up to each step: the summary's ``cumulative_sops_per_image``,
    or summed from each step's ``sops`` (older results); None when it has neither."""
    per_step = summary["per_step"]
    if all("cumulative_sops_per_image" in p for p in per_step):
        return [float(p["cumulative_sops_per_image"]) for p in per_step]
    if all("sops" in p for p in per_step):
        total, values = 0.0, []
        for point in per_step:
            total += float(point["sops"])
            values.append(total / float(summary["images"]))
        return values
    return None


def _sops_per_step_figure(summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    summaries = _check(summaries, "SOPs per step")
    if all(cumulative_sops(s) is None for s in summaries):
        raise QsnnError("nothing to plot: no result has SOPs per time step (re-run 'qsnn simulate')")
    labels = run_labels(summaries)
    styles = run_styles(summaries)
    figure = _figure("sops_per_step", len(summaries))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        ax = figure.add_subplot()
        values: list[float] = []
        max_step = 1
        for summary, label, style in zip(summaries, labels, styles):
            cumulative = cumulative_sops(summary)
            if cumulative is None:
                continue
            steps = [int(p["step"]) for p in summary["per_step"]]
            max_step = max(max_step, *steps)
            many = len(steps) > 1
            ax.plot(steps, cumulative, label=label, color=style["color"], marker=style["marker"],
                    linestyle=style["linestyle"] if many else "none", markersize=4.5 if many else 8, linewidth=1.6,
                    markevery=0.04 if len(steps) > 25 else None, zorder=3)
            values += cumulative
            for step, total, point in zip(steps, cumulative, summary["per_step"]):
                rows.append({
                    "run": label, "scheme": summary["scheme"], "net": summary["net"],
                    "precision": summary["precision"], "dataset": summary.get("dataset"),
                    "noise": summary.get("noise"), "step": step, "sops": point.get("sops"),
                    "cumulative_sops_per_image": total, "ann_ops_per_image": summary["per_image"].get("ann_ops"),
                })
        nets = _ann_nets(summaries)
        lines = []
        for summary in nets:
            ops = float(summary["per_image"].get("ann_ops") or 0.0)
            if ops <= 0:
                continue
            values.append(ops)
            ax.axhline(ops, color=ANN_COLOR, linestyle=ANN_DASHES, linewidth=1.0, zorder=2)
            text = f"ANN {_si(ops)}" + (f"\n{_wrap(summary['net'], 22)}" if len(nets) > 1 else "")
            lines.append((ops, text, ANN_COLOR))
        ann_labels = _label_column(ax, lines)
        _bar_scale(ax, values, _si, axis="y", room=(1.6, 1.6, 1.08), bins=6)
        _time_axis(ax, max_step)
        ax.set_ylabel("SOPs per image, accumulated to step t")
        ax.set_title(f"Synaptic operations over the time steps ({_title(summaries)})")
        handles, names = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color=ANN_COLOR, linestyle=ANN_DASHES, linewidth=1.0))
        names.append("quantized ANN ops per image (3 × MACs), per net")
        _legend_below(figure, handles, names, 2)
        _settle(figure)
        _stagger(ann_labels)
    return figure, rows


def plot_sops_per_step(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """SOPs per image accumulated over the time steps, one curve per run (SG's one step a
    single marker), each distinct net's ANN ops per image (3 x MACs) a dashed line labelled
    with its value. Logarithmic y axis when the values span more than a factor 30.
    CSV: one row per (run, step): the step's SOPs summed over the images, the SOPs per image
    accumulated up to it, and the net's ANN ops per image.
    """
    figure, rows = _sops_per_step_figure(summaries)
    return _save(figure, out_dir, "sops_per_step", rows)


# --- firing sparsity -----------------------------------------------------------------------


def _lighter(color, amount: float = 0.6) -> tuple[float, float, float]:
    """``color`` mixed with white (negative spikes are drawn in the lighter shade, hatched)."""
    r, g, b = mpl.colors.to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


NEURON_COLOR = "#333333"


def _net_items(net: str, count: int) -> list[str] | None:
    """The notation item of each of a net's ``count`` spiking layers ('20C5', 'P2', '500'),
    or None when the notation does not give one item per layer."""

    try:
        items = [format_items([item]) for item in parse(net)]
    except (QsnnError, ValueError, TypeError, AttributeError):
        return None
    return items if len(items) == count else None


def layer_labels(summary: dict, *, neurons: bool = False) -> list[str]:
    """What each layer of a run is: its notation item and its output shape ('20C5' above
    '20×24×24'; a dense layer '500' above 'dense'), from ``summary['net']`` and
    ``summary['layers'][i]['layer']``, with the number of neurons below when ``neurons``."""
    layers = summary["layers"]
    items = _net_items(str(summary["net"]), len(layers))
    texts = []
    for index, layer in enumerate(layers):
        name = str(layer["layer"])
        name = name.partition(":")[2] or name
        kind = name.rstrip("0123456789x")
        shape = name[len(kind):].replace("x", "×")
        if kind == "conv" or not kind:
            lines = [items[index] if items else kind or name, shape if kind else ""]
        else:  # 'dense' (and any other kind): the item is its width already
            lines = [items[index], kind] if items else [f"{kind} {shape}".strip()]
        if neurons:
            lines.append(f"({_si(float(layer['neurons']))})")
        texts.append("\n".join(line for line in lines if line))
    return texts


def _draw_run_total(ax: Axes, index: int, per_image: dict, color) -> None:
    """Row ``index`` of the totals panel: a run's positive and negative spikes per image
    stacked, labelled with their sum and spikes per neuron, and its neurons as a dark bar beneath."""
    positive = float(per_image["positive_spikes"])
    negative = float(per_image["negative_spikes"])
    neurons = float(per_image["neurons"])
    ax.barh(index - 0.17, positive, 0.34, color=color)
    ax.barh(index - 0.17, negative, 0.34, left=positive, color=_lighter(color), hatch="///",
            edgecolor=color, linewidth=0)
    ax.barh(index + 0.17, neurons, 0.34, color=NEURON_COLOR)
    ax.annotate(f"{_si(positive + negative)} ({(positive + negative) / neurons:.2f} per neuron)",
                (positive + negative, index - 0.17), xytext=(4, 0), textcoords="offset points",
                ha="left", va="center", fontsize=9)
    ax.annotate(_si(neurons), (neurons, index + 0.17), xytext=(4, 0), textcoords="offset points",
                ha="left", va="center", fontsize=9, color=NEURON_COLOR)


def _total_sparsity_row(label: str, per_image: dict) -> dict:
    """The CSV row of a run's whole net (layer 'total'): spikes per image and per neuron."""
    neurons = float(per_image["neurons"])
    return {
        "run": label, "layer": "total", "neurons": per_image["neurons"],
        "positive_spikes_per_image": per_image["positive_spikes"],
        "negative_spikes_per_image": per_image["negative_spikes"],
        "spikes_per_neuron": per_image["spikes_per_neuron"],
        "positive_per_neuron": float(per_image["positive_spikes"]) / neurons,
        "negative_per_neuron": float(per_image["negative_spikes"]) / neurons,
        "spiking_neurons_per_image": per_image.get("spiking_neurons"),
    }


def _totals_panel(ax: Axes, summaries: Sequence[dict], labels: Sequence[str], styles: Sequence[dict]) -> list[dict]:
    """The left panel: each run's spikes per image against its neurons, one row per run;
    return each run's 'total' CSV row."""
    rows = []
    for index, (summary, label, style) in enumerate(zip(summaries, labels, styles)):
        _draw_run_total(ax, index, summary["per_image"], style["shade"])
        rows.append(_total_sparsity_row(label, summary["per_image"]))
    tallest = max(max(float(s["per_image"]["spikes"]), float(s["per_image"]["neurons"])) for s in summaries)
    ax.set_xlim(0, tallest * 1.6)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v) if v else "0"))
    ax.set_yticks(range(len(summaries)), [_wrap(label, 24) for label in labels])
    ax.invert_yaxis()
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("per image: spikes (+ and −) and neurons")
    ax.set_title("spikes per image vs number of neurons")
    return rows


def _net_groups(summaries: Sequence[dict]) -> dict[str, list[int]]:
    """The indices of the runs of each distinct net, nets in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, summary in enumerate(summaries):
        groups.setdefault(str(summary["net"]), []).append(index)
    return groups


def _draw_run_layers(ax: Axes, summary: dict, label: str, color, start: float, slot: int, bar: float) -> list[dict]:
    """A run's spikes per neuron in each of its layers, positive and negative stacked: the
    bar of layer i in place ``slot`` (each ``bar`` wide) of the layer at ``start`` + i;
    return the run's per-layer CSV rows."""
    rows = []
    for position, layer in enumerate(summary["layers"]):
        neurons = float(layer["neurons"])
        positive = float(layer["positive_spikes_per_image"]) / neurons
        negative = float(layer["negative_spikes_per_image"]) / neurons
        x = start + position - 0.4 + bar * (slot + 0.5)
        ax.bar(x, positive, bar * 0.9, color=color)
        ax.bar(x, negative, bar * 0.9, bottom=positive, color=_lighter(color), hatch="///", edgecolor=color, linewidth=0)
        rows.append({
            "run": label, "layer": layer["layer"], "neurons": layer["neurons"],
            "positive_spikes_per_image": layer["positive_spikes_per_image"],
            "negative_spikes_per_image": layer["negative_spikes_per_image"],
            "spikes_per_neuron": layer["spikes_per_neuron"],
            "positive_per_neuron": positive, "negative_per_neuron": negative,
            "spiking_neurons_per_image": layer.get("spiking_neurons_per_image"),
        })
    return rows


def _layers_panel(ax: Axes, summaries: Sequence[dict], labels: Sequence[str],
                  styles: Sequence[dict]) -> list[list[dict]]:
    """The right panel: spikes per neuron layer by layer, one group of layers per distinct
    net, the runs of a net side by side in each layer; return each run's per-layer CSV rows."""
    rows: list[list[dict]] = [[] for _ in summaries]
    groups = _net_groups(summaries)
    one_net = len(groups) == 1
    ticks: list[float] = []
    names: list[str] = []
    start = 0.0
    for number, members in enumerate(groups.values()):
        depth = max(len(summaries[i]["layers"]) for i in members)
        first = max(members, key=lambda i: len(summaries[i]["layers"]))
        ticks += [start + position for position in range(depth)]
        names += layer_labels(summaries[first], neurons=one_net)
        bar = 0.8 / len(members)
        for slot, index in enumerate(members):
            rows[index] = _draw_run_layers(ax, summaries[index], labels[index], styles[index]["shade"], start,
                                           slot, bar)
        if number:
            ax.axvline(start - 0.8, color=ANN_COLOR, linewidth=0.8, alpha=0.6)
        start += depth + 0.6
    ax.set_xticks(ticks, names)
    ax.set_xlim(-0.6, start - 1.0)
    ax.tick_params(axis="x", length=0)
    ax.grid(axis="x", visible=False)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    ax.set_xlabel("layer: notation item, output shape (neurons)" if one_net
                  else "layer (notation item, output shape), one group per net")
    ax.set_ylabel("spikes per neuron per image")
    ax.set_title("spikes per neuron, layer by layer")
    return rows


def _sparsity_legend(figure: Figure, labels: Sequence[str], styles: Sequence[dict]) -> None:
    """The legend under the figure: each run's colour, positive and negative spikes, neurons."""
    handles: list[Any] = [Patch(color=style["shade"]) for style in styles]
    handles += [
        Patch(facecolor="#8c8c8c"),
        Patch(facecolor=_lighter("#8c8c8c"), hatch="///", edgecolor="#8c8c8c", linewidth=0),
        Patch(color=NEURON_COLOR),
    ]
    _legend_below(figure, handles, [*labels, "positive spikes", "negative spikes", "neurons"], 4)


def _sparsity_figure(summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    summaries = _check(summaries, "sparsity")
    labels = run_labels(summaries)
    styles = run_styles(summaries)
    figure = _figure("sparsity", len(summaries))
    with mpl.rc_context(_STYLE):
        left, right = figure.subplots(1, 2, width_ratios=[1, 1.25])
        totals = _totals_panel(left, summaries, labels, styles)
        layers = _layers_panel(right, summaries, labels, styles)
        _sparsity_legend(figure, labels, styles)
        figure.suptitle(f"Firing sparsity ({_title(summaries)})", fontsize=10.5)
        _settle(figure)
    return figure, [row for total, run in zip(totals, layers) for row in (total, *run)]


def plot_sparsity(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Firing sparsity: spikes per image against neurons, and spikes per neuron per layer.

    Left: for each run, positive (solid) and negative (light, hatched) spikes per image
    stacked, the number of neurons as a dark bar beneath, labelled with spikes per neuron.
    Right: spikes per neuron in each layer, positive and negative stacked, one group of
    layers per distinct net (runs of one net side by side), each layer named by what it is
    (:func:`layer_labels`: '20C5' and its output shape), never by a bare index.
    CSV: a 'total' row per run, then one row per (run, layer).
    """
    figure, rows = _sparsity_figure(summaries)
    return _save(figure, out_dir, "sparsity", rows)


# --- accuracy versus noise -----------------------------------------------------------------


def noise_groups(summaries: Sequence[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by configuration (scheme, net, precision, dataset), sorted by noise."""
    groups: dict[tuple, list[dict]] = {}
    for summary in summaries:
        groups.setdefault(_key(summary), []).append(summary)
    return {key: sorted(runs, key=lambda s: float(s.get("noise") or 0.0)) for key, runs in groups.items()}


def _noise_figure(summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    summaries = _check(summaries, "noise")
    groups = noise_groups(summaries)
    firsts = [runs[0] for runs in groups.values()]
    labels = run_labels(firsts, noise=False)
    styles = run_styles(firsts)
    figure = _figure("noise", len(groups))
    rows: list[dict] = []
    with mpl.rc_context(_STYLE):
        ax = figure.add_subplot()
        for runs, label, style in zip(groups.values(), labels, styles):
            noise = [float(s.get("noise") or 0.0) for s in runs]
            snn = [float(s["snn_accuracy"]) for s in runs]
            ann = [float(s["ann_accuracy"]) for s in runs]
            clean = float(runs[0]["ann_accuracy_clean"])
            ax.plot(noise, snn, label=label, color=style["color"], marker=style["marker"], markersize=6,
                    linestyle=style["linestyle"], linewidth=1.6, zorder=3)
            ax.plot(noise, ann, color=style["color"], linestyle=":", linewidth=1.0, alpha=0.9, zorder=2)
            ax.axhline(clean, color=style["color"], linestyle=ANN_DASHES, linewidth=1.0, alpha=0.8, zorder=2)
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
        ax.set_ylim(*data_limits(values))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
        ax.set_xlabel(_noise_label(summaries))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Robustness to noise ({_title(summaries)})")
        handles, names = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color=ANN_COLOR, linestyle=ANN_DASHES, linewidth=1.0),
            Line2D([], [], color=ANN_COLOR, linestyle=":", linewidth=1.0),
        ]
        names += ["quantized ANN, clean input", "quantized ANN, same noisy input"]
        _legend_below(figure, handles, names, 2)
        _settle(figure)
    return figure, rows


def plot_noise(summaries: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """SNN accuracy versus noise ratio, one curve per (scheme, net, precision) group.

    Each group's ANN accuracy on clean input is a dashed line of the same colour; the
    quantized ANN on the same noisy input is a thin dotted line (a lossless SNN lies on it).
    The y-range comes from the data (:func:`data_limits`: the values' range padded by 20 %,
    at least half a percentage point), so a change of 0.1 points shows.
    CSV: one row per run.
    """
    figure, rows = _noise_figure(summaries)
    return _save(figure, out_dir, "noise", rows)


def _noise_label(summaries: Sequence[dict]) -> str:
    kinds = {SCHEMES[s["scheme"]].noise for s in summaries if s["scheme"] in SCHEMES}
    if kinds == {"spikes"}:
        return "noise ratio r (probability that a spike is dropped)"
    if "spikes" in kinds:
        return "noise ratio r (NSD/INT: pixel × (1 + (u − ½) r); SG: spike-drop probability)"
    return "noise ratio r (input pixel × (1 + (u − ½) r), u ~ U[0, 1))"


# --- any figure by name ----------------------------------------------------------------------


_BUILDERS: dict[str, Callable[[Sequence[dict]], tuple[Figure, list[dict]]]] = {
    "accuracy": _accuracy_figure,
    "sops": _sops_figure,
    "sops_per_step": _sops_per_step_figure,
    "sparsity": _sparsity_figure,
    "noise": _noise_figure,
}
FIGURES = tuple(_BUILDERS)


def build_figure(name: str, summaries: Sequence[dict]) -> tuple[Figure, list[dict]]:
    """Draw figure ``name`` (one of :data:`FIGURES`) without saving it: the Figure, laid out
    (its layout then frozen, tick labels relieved, placed labels moved apart), and its CSV rows."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown figure {name!r}; one of {', '.join(FIGURES)}")
    return _BUILDERS[name](summaries)


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
    required = GRAPH_KEYS if data.get("kind") == "graph" else REQUIRED_KEYS
    missing = [key for key in required if key not in data]
    if missing:
        raise QsnnError(f"{path} is not a qsnn result: missing {', '.join(missing)}")
    shapes = {key: kind for key, kind in {"per_step": list, "layers": list, "per_image": dict, "energy": dict}.items()
              if key in required}
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

    Accuracy, SOPs and sparsity are always drawn, SOPs per time step where the results have
    them (from a noise sweep only its least noisy run, see :func:`representative`); the noise
    figure only when some configuration was run at two or more noise values. A spiking
    graph's result (a model of one's own) takes part in the accuracy and noise figures. ``out_dir`` None: :func:`default_plot_dir`.
    Returns the files written.
    """
    files = find_results(paths)
    summaries = [load_result(file) for file in files]
    out = Path(out_dir) if out_dir is not None else default_plot_dir(paths)
    runs = representative(summaries)
    written = plot_accuracy(runs, out)
    chains = [s for s in runs if s.get("kind") != "graph"]  # (a spiking graph's result: accuracy only)
    if chains:
        written += plot_sops(chains, out)
        if any(cumulative_sops(s) is not None for s in chains):
            written += plot_sops_per_step(chains, out)
        written += plot_sparsity(chains, out)
    sweeps = noise_sweeps(summaries)
    if sweeps:
        written += plot_noise(sweeps, out)
    return written
