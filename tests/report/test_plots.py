"""The figures: files written (PNG, SVG, CSV), the numbers in the CSVs, loading runs, errors;
colours per scheme, labels and tick labels that never overlap, y-ranges that show small changes,
and one rounding rule for ratios in tables and figures."""

from __future__ import annotations

import csv
import itertools
import json
import math
import struct
from pathlib import Path

import pytest
import torch

from qsnn.errors import QsnnError
from qsnn.io import write_json
from qsnn.pipeline import markdown_table, report_rows
from qsnn.report import plots
from qsnn.report.summary import summarize
from qsnn.report.tables import summary_table
from qsnn.sim.run import simulate
from qsnn.snn.convert import convert
from tests.helpers import random_net, random_pixels

NET = "6C5-P2-8C3-12"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _summary(model, scheme: str, *, steps: int | None = None, noise: float = 0.0, images: int = 6) -> dict:
    net = convert(model, scheme)
    pixels = random_pixels(images, seed=5)
    labels = torch.randint(0, 10, (images,), generator=torch.Generator().manual_seed(7))
    summary = summarize(simulate(net, pixels, labels, steps=steps, noise=noise), net, dataset="mnist")
    return json.loads(json.dumps(summary))  # as loaded from result.json


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    """NSD, SG and INT summaries of small random nets, plus an NSD noise sweep."""
    binary = random_net(NET, k=1, B=2, seed=1)
    ternary = random_net(NET, k=0, B=None, ternary=True, encoding_k=0, encoding_B=4, seed=2)
    return {
        "nsd": _summary(binary, "nsd"),
        "sg": _summary(binary, "sg"),
        "int": _summary(ternary, "int"),
        "nsd_noisy": _summary(binary, "nsd", steps=6, noise=0.5),
        "nsd_clean6": _summary(binary, "nsd", steps=6, noise=0.0),
    }


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _pixels(name: str, entries: int) -> tuple[int, int]:
    width, height = plots.figure_size(name, entries)
    return round(width * plots.DPI), round(height * plots.DPI)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_files(paths: list[Path], out: Path, name: str, entries: int) -> None:
    assert paths == [out / f"{name}.png", out / f"{name}.svg", out / f"{name}.csv"]
    assert _png_size(paths[0]) == _pixels(name, entries)
    svg = paths[1].read_text(encoding="utf-8")
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_accuracy_figure_and_csv(runs, tmp_path):
    summaries = [runs["nsd"], runs["sg"], runs["int"]]
    paths = plots.plot_accuracy(summaries, tmp_path)
    _check_files(paths, tmp_path, "accuracy", 3)
    rows = _rows(tmp_path / "accuracy.csv")
    expected = [
        (label, s, point)
        for label, s in zip(["NSD k=1 B=2", "SG k=1 B=2", "INT k=0 B=none (encoding k=0 B=4) ternary"], summaries)
        for point in s["per_step"]
    ]
    assert len(rows) == sum(len(s["per_step"]) for s in summaries)
    assert runs["sg"]["steps"] == 1
    for row, (label, summary, point) in zip(rows, expected):
        assert row["run"] == label
        assert row["scheme"] == summary["scheme"]
        assert int(row["step"]) == point["step"]
        assert float(row["accuracy"]) == point["accuracy"]
        assert float(row["ann_accuracy"]) == summary["ann_accuracy"]
        assert row["t_lossless"] == ("" if summary["t_lossless"] is None else str(summary["t_lossless"]))
        assert row["t_paper"] == str(summary["t_paper"])
    assert list(rows[0]) == [
        "run", "scheme", "net", "precision", "dataset", "noise", "step", "accuracy", "agree_fraction",
        "ann_accuracy", "t_paper", "t_lossless",
    ]


def test_sops_figure_one_ann_bar_per_net(runs, tmp_path):
    other = _summary(random_net("4C5-P2-10", k=1, B=2, seed=3), "nsd")
    summaries = [runs["nsd"], runs["sg"], other]
    paths = plots.plot_sops(summaries, tmp_path)
    _check_files(paths, tmp_path, "sops", 5)  # 3 runs + 2 ANN bars
    rows = _rows(tmp_path / "sops.csv")
    assert [r["kind"] for r in rows] == ["snn", "snn", "snn", "ann", "ann"]
    assert [r["bar"] for r in rows] == [
        f"NSD k=1 B=2 {NET}", f"SG k=1 B=2 {NET}", "NSD k=1 B=2 4C5-P2-10",
        f"quantized ANN {NET}", "quantized ANN 4C5-P2-10",
    ]
    for row, summary in zip(rows, summaries):
        assert float(row["ops_per_image"]) == summary["per_image"]["sops"]
        assert float(row["energy_pj"]) == summary["energy"]["snn_pj"]
    assert float(rows[3]["ops_per_image"]) == runs["nsd"]["per_image"]["ann_ops"] == 3 * runs["nsd"]["per_image"]["ann_macs"]
    assert float(rows[4]["energy_pj"]) == other["energy"]["ann_pj"]


def test_sparsity_figure_and_csv(runs, tmp_path):
    summaries = [runs["nsd"], runs["int"]]
    paths = plots.plot_sparsity(summaries, tmp_path)
    _check_files(paths, tmp_path, "sparsity", 2)
    rows = _rows(tmp_path / "sparsity.csv")
    layers = len(runs["nsd"]["layers"])
    assert len(rows) == 2 * (1 + layers)
    total = rows[0]
    assert total["layer"] == "total"
    assert float(total["positive_spikes_per_image"]) == runs["nsd"]["per_image"]["positive_spikes"]
    assert float(total["negative_spikes_per_image"]) == runs["nsd"]["per_image"]["negative_spikes"]
    assert int(total["neurons"]) == runs["nsd"]["per_image"]["neurons"]
    for row, layer in zip(rows[1 : 1 + layers], runs["nsd"]["layers"]):
        assert row["layer"] == layer["layer"]
        assert float(row["spikes_per_neuron"]) == layer["spikes_per_neuron"]
        assert float(row["negative_spikes_per_image"]) == layer["negative_spikes_per_image"]


def test_noise_figure_groups_by_configuration(runs, tmp_path):
    summaries = [runs["nsd_noisy"], runs["int"], runs["nsd_clean6"]]
    paths = plots.plot_noise(summaries, tmp_path)
    _check_files(paths, tmp_path, "noise", 2)
    rows = _rows(tmp_path / "noise.csv")
    assert [(r["group"], float(r["noise"])) for r in rows] == [
        ("NSD k=1 B=2", 0.0), ("NSD k=1 B=2", 0.5), ("INT k=0 B=none (encoding k=0 B=4) ternary", 0.0),
    ]
    assert float(rows[1]["snn_accuracy"]) == runs["nsd_noisy"]["snn_accuracy"]
    assert float(rows[1]["ann_accuracy_clean"]) == runs["nsd_noisy"]["ann_accuracy_clean"]


def test_labels_are_distinct_and_name_what_differs(runs):
    assert plots.run_labels([runs["nsd"], runs["sg"]]) == ["NSD k=1 B=2", "SG k=1 B=2"]
    auto = runs["nsd"]["steps"]
    assert auto != 6
    assert plots.run_labels([runs["nsd"], runs["nsd_clean6"]]) == [f"NSD k=1 B=2 {auto} steps", "NSD k=1 B=2 6 steps"]
    same = [runs["nsd"], dict(runs["nsd"])]
    assert plots.run_labels(same) == ["NSD k=1 B=2 #1", "NSD k=1 B=2 #2"]
    assert plots.run_labels([runs["nsd_clean6"], runs["nsd_noisy"]]) == ["NSD k=1 B=2 r=0", "NSD k=1 B=2 r=0.5"]


def _write_runs(root: Path, summaries: dict[str, dict]) -> None:
    for name, summary in summaries.items():
        write_json(root / name / "deeper" / "result.json", summary)


def test_plot_runs_draws_the_noise_figure_only_for_a_sweep(runs, tmp_path):
    _write_runs(tmp_path / "runs", {"nsd": runs["nsd"], "sg": runs["sg"], "int": runs["int"]})
    out = tmp_path / "figures"
    written = plots.plot_runs([tmp_path / "runs"], out)
    assert [p.name for p in written] == [
        f"{name}.{ext}" for name in ("accuracy", "sops", "sops_per_step", "sparsity") for ext in ("png", "svg", "csv")
    ]
    accuracy = _rows(out / "accuracy.csv")
    assert [r["run"] for r in accuracy if r["step"] == "1"] == [
        "INT k=0 B=none (encoding k=0 B=4) ternary", "NSD k=1 B=2", "SG k=1 B=2",
    ]  # folders in sorted order

    sweep = tmp_path / "sweep"
    _write_runs(sweep, {"clean": runs["nsd_clean6"], "noisy": runs["nsd_noisy"]})
    written = plots.plot_runs([sweep / "clean" / "deeper" / "result.json", sweep / "noisy"], out)
    assert [p.name for p in written][-3:] == ["noise.png", "noise.svg", "noise.csv"]
    assert _png_size(out / "noise.png") == _pixels("noise", 1)
    steps = {r["noise"] for r in _rows(out / "accuracy.csv")}
    assert steps == {"0.0"}  # the per-run figures show the sweep's clean run only


def test_a_spiking_graphs_result_joins_the_accuracy_figure(runs, tmp_path):
    """A model of one's own, simulated as a spiking graph, writes a result that `qsnn plot`
    reads: its accuracy per step beside a notation net's, with T (paper) and T_lossless;
    the SOP and sparsity figures keep to the notation nets."""
    from qsnn.sim.graph import simulate_graph
    from tests.snn.test_graph import tie_pixels, tiny_residual

    model = tiny_residual(1, 2, seed=3)
    pixels = tie_pixels(16, seed=4)
    graph = convert(model, pixels[:1] / 255, "nsd")
    graph.source["dataset"] = "mnist"
    result = simulate_graph(graph, pixels, torch.arange(16) % 4)
    result.write(tmp_path / "runs" / "graph", graph, seed=0)
    saved = plots.load_result(tmp_path / "runs" / "graph" / "result.json")
    assert (saved["kind"], saved["net"], saved["precision"], saved["dataset"]) == ("graph", "TinyResidual", "k=1 B=2", "mnist")
    _write_runs(tmp_path / "runs", {"nsd": runs["nsd"]})
    written = plots.plot_runs([tmp_path / "runs"], tmp_path / "figures")
    assert [p.name for p in written] == [
        f"{name}.{ext}" for name in ("accuracy", "sops", "sops_per_step", "sparsity") for ext in ("png", "svg", "csv")
    ]
    rows = [r for r in _rows(tmp_path / "figures" / "accuracy.csv") if r["net"] == "TinyResidual"]
    assert [int(r["step"]) for r in rows] == list(range(1, result.steps + 1))
    assert [float(r["accuracy"]) for r in rows] == [100.0 * c / 16 for c in result.correct]
    assert {(r["t_paper"], r["t_lossless"]) for r in rows} == {(str(result.t_paper), str(result.t_lossless))}
    totals = [r for r in _rows(tmp_path / "figures" / "sparsity.csv") if r["layer"] == "total"]
    assert len(totals) == 1  # (the notation net's alone)
    alone = plots.plot_runs([tmp_path / "runs" / "graph"], tmp_path / "alone")
    assert [p.name for p in alone] == ["accuracy.png", "accuracy.svg", "accuracy.csv"]
    noisy = simulate_graph(graph, pixels, torch.arange(16) % 4, noise=0.5, seed=1)
    noisy.write(tmp_path / "runs" / "graph-noisy", graph)
    written = plots.plot_runs([tmp_path / "runs" / "graph", tmp_path / "runs" / "graph-noisy"], tmp_path / "sweep")
    assert [p.name for p in written] == [f"{name}.{ext}" for name in ("accuracy", "noise") for ext in ("png", "svg", "csv")]
    rows = _rows(tmp_path / "sweep" / "noise.csv")
    assert [(r["noise"], float(r["snn_accuracy"]), float(r["ann_accuracy_clean"])) for r in rows] == [
        ("0.0", result.accuracy, 100.0 * result.ann_correct / 16), ("0.5", noisy.accuracy, 100.0 * result.ann_correct / 16)]


def test_plot_runs_default_folder(runs, tmp_path):
    write_json(tmp_path / "a" / "result.json", runs["nsd"])
    written = plots.plot_runs([tmp_path / "a"])
    assert written[0] == (tmp_path / "a" / "plots" / "accuracy.png").resolve()


def test_plot_runs_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QsnnError, match=r"^no result\.json under .*empty: give a folder written by 'qsnn simulate'"):
        plots.plot_runs([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(QsnnError, match=r"missing does not exist"):
        plots.plot_runs([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(QsnnError, match=r"no runs given"):
        plots.plot_runs([], tmp_path / "out")
    write_json(tmp_path / "other" / "result.json", {"accuracy": 99.0})
    with pytest.raises(QsnnError, match=r"result\.json is not a qsnn result: missing scheme, net, precision"):
        plots.plot_runs([tmp_path / "other"], tmp_path / "out")
    write_json(tmp_path / "odd.json", {key: [] for key in plots.REQUIRED_KEYS})
    with pytest.raises(QsnnError, match=r"odd\.json is not a qsnn result: malformed per_image, energy"):
        plots.plot_runs([tmp_path / "odd.json"], tmp_path / "out")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(QsnnError, match=r"broken\.json is not a qsnn result: not valid JSON"):
        plots.plot_runs([tmp_path / "broken.json"], tmp_path / "out")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(QsnnError, match=r"list\.json is not a qsnn result: expected a JSON object"):
        plots.plot_runs([tmp_path / "list.json"], tmp_path / "out")
    with pytest.raises(QsnnError, match=r"^nothing to plot: the accuracy figure"):
        plots.plot_accuracy([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_figures_are_reproducible(runs, tmp_path):
    first = plots.plot_sops([runs["nsd"]], tmp_path / "a")
    second = plots.plot_sops([runs["nsd"]], tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_long_run_without_t_lossless(runs, tmp_path):
    """Hand-made: 80 steps (log time axis), never lossless, step 1 far below the zoomed range."""
    long = dict(runs["nsd"], steps=80, t_lossless=None)
    long["per_step"] = [{"step": t, "accuracy": 90.0 if t > 1 else 5.0} for t in range(1, 81)]
    paths = plots.plot_accuracy([long], tmp_path)
    _check_files(paths, tmp_path, "accuracy", 1)
    rows = _rows(tmp_path / "accuracy.csv")
    assert [(int(r["step"]), float(r["accuracy"]), r["t_lossless"]) for r in rows[:2]] == [(1, 5.0, ""), (2, 90.0, "")]
    assert len(rows) == 80


# --- hand-made summaries of varied nets (6 to 12 layers), for the layout checks --------------------

VARIED_NETS = [
    "16C5s-16C5-P2-32C5-P2-256",  # 6 layers
    "32C3s*2-P2-64C3s*2-P2-128-128",  # 8
    "64C3s*3-P2-128C3s*3-P2-512-256",  # 10
    "16C3s*4-P2-32C3s*4-P2-100-100",  # 12
    "20C5-P2-50C5-P2-500-200",  # 6
    "8C3s*3-P2-16C3s*2-P2-64",  # 8
    "12C3s*4-P2-24C3s*2-P2-300",  # 9
    "32C5s*2-P2-64C5s*3-P2-40C3s-P2-400",  # 11
]
SCHEMES = ["nsd", "sg", "int", "nsd", "int", "sg", "nsd", "int"]


def _layers(net: str) -> list[dict]:
    """Plausible per-layer records for ``net`` on 28x28 input (the names as layer_costs writes them)."""
    from qsnn.net.notation import Conv, Dense, Pool, parse

    channels, size, layers = 1, 28, []
    for index, item in enumerate(parse(net)):
        if isinstance(item, Conv):
            channels, size = item.filters, size if item.padding == "same" else size - item.kernel + 1
            shape = f"conv{channels}x{size}x{size}"
        elif isinstance(item, Pool):
            size //= item.size
            shape = f"conv{channels}x{size}x{size}"
        else:
            assert isinstance(item, Dense)
            channels, size = item.units, 1
            shape = f"dense{channels}"
        neurons = channels * size * size
        positive = neurons * (0.2 + 0.07 * index)
        negative = positive * 0.15
        layers.append({
            "layer": f"{index + 1}:{shape}", "neurons": neurons, "positive_spikes_per_image": positive,
            "negative_spikes_per_image": negative, "spikes_per_neuron": (positive + negative) / neurons,
            "spiking_neurons_per_image": neurons * 0.3, "sops_per_image": positive * 9, "ann_macs": neurons * 9,
        })
    return layers


def _made_up(index: int, *, steps: int | None = None, ann: float | None = None, noise: float = 0.0) -> dict:
    """A summary of run ``index``: scheme and net from the lists above, ANN accuracies 0.02 apart."""
    scheme, net = SCHEMES[index % len(SCHEMES)], VARIED_NETS[index % len(VARIED_NETS)]
    ann = 99.10 + 0.02 * index if ann is None else ann
    steps = (1 if scheme == "sg" else [12, 80, 25, 9, 40, 15][index % 6]) if steps is None else steps
    t_paper = max(1, steps // 3 + index % 3)
    accuracy = [round(ann - (ann - 20.0) / t**2, 2) if t < t_paper else ann for t in range(1, steps + 1)]
    ann_ops = 3.0e6 * (1 + index)
    per_step, total = [], 0.0
    for t in range(1, steps + 1):
        step_sops = 100 * ann_ops * 0.4 / t
        total += step_sops
        per_step.append({"step": t, "accuracy": accuracy[t - 1], "agree_fraction": 1.0 if t >= t_paper else 0.9,
                         "sops": step_sops, "cumulative_sops_per_image": total / 100})
    layers = _layers(net)
    neurons = sum(layer["neurons"] for layer in layers)
    positive = sum(layer["positive_spikes_per_image"] for layer in layers)
    negative = sum(layer["negative_spikes_per_image"] for layer in layers)
    sops = total / 100
    return {
        "scheme": scheme, "threshold_scale": None, "net": net, "precision": f"k=1 B={2 + index}",
        "dataset": "mnist", "images": 100, "steps": steps, "noise": noise,
        "ann_accuracy": ann, "ann_accuracy_clean": ann, "snn_accuracy": accuracy[-1],
        "agreement": 100, "agreement_fraction": 1.0, "t_paper": t_paper,
        "t_lossless": None if index % 4 == 3 else t_paper + index % 2,
        "per_step": per_step, "layers": layers,
        "per_image": {
            "sops": sops, "ann_macs": ann_ops / 3, "ann_ops": ann_ops, "sops_over_ann_ops": sops / ann_ops,
            "positive_spikes": positive, "negative_spikes": negative, "spikes": positive + negative,
            "neurons": neurons, "spikes_per_neuron": (positive + negative) / neurons, "spiking_neurons": neurons * 0.3,
        },
        "energy": {"energy_per_add_pj": 0.9, "energy_per_mac_pj": 4.6, "snn_pj": sops * 0.9,
                   "ann_pj": ann_ops / 3 * 4.6, "ratio": sops * 0.9 / (ann_ops / 3 * 4.6)},
    }


def _made_up_runs(count: int) -> list[dict]:
    return [_made_up(i) for i in range(count)]


def _made_up_sweep(count: int) -> list[dict]:
    """``count`` configurations at three noise ratios each (the noise figure's curves)."""
    runs = []
    for i in range(count):
        for j, noise in enumerate((0.0, 0.2, 0.5)):
            summary = _made_up(i, steps=8, noise=noise)
            summary["snn_accuracy"] = summary["ann_accuracy"] - 3.0 * j - 0.5 * i
            summary["ann_accuracy"] -= 2.5 * j
            runs.append(summary)
    return runs


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _drawn_tick_labels(axis) -> list:
    """The boxes of the tick labels drawn on ``axis``: visible, not empty, their tick inside the view."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    boxes = []
    for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks()),
                        (axis.get_minorticklocs(), axis.get_minor_ticks())):
        for loc, tick in zip(locs, ticks):
            if low - slack <= loc <= high + slack:
                boxes += [label.get_window_extent() for label in (tick.label1, tick.label2)
                          if label.get_visible() and label.get_text().strip()]
    return boxes


def _overlapping_tick_labels(figure) -> list[tuple[int, int]]:
    """Pairs of tick labels that overlap, on any axis of the figure or between its axes."""
    figure.draw_without_rendering()
    boxes = [box for ax in figure.axes for axis in (ax.xaxis, ax.yaxis) for box in _drawn_tick_labels(axis)]
    assert boxes, "no tick labels found"
    return [(i, j) for i, j in itertools.combinations(range(len(boxes)), 2) if _boxes_overlap(boxes[i], boxes[j])]


@pytest.mark.parametrize("count", [1, 3, 8])
@pytest.mark.parametrize("name", plots.FIGURES)
def test_no_tick_labels_overlap(name, count):
    summaries = _made_up_sweep(count) if name == "noise" else _made_up_runs(count)
    figure, rows = plots.build_figure(name, summaries)
    assert rows
    assert _overlapping_tick_labels(figure) == []


def test_the_check_finds_overlapping_tick_labels():
    """The test helper above is not blind: crowded labels on a plain figure do overlap."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2), dpi=plots.DPI)
    ax = figure.add_subplot()
    ax.set_xticks(range(20), [f"label {i}" for i in range(20)])
    assert _overlapping_tick_labels(figure)


def test_build_figure_names():
    assert plots.FIGURES == ("accuracy", "sops", "sops_per_step", "sparsity", "noise")
    with pytest.raises(ValueError, match="unknown figure 'pie'"):
        plots.build_figure("pie", [])


# --- SOPs per time step -------------------------------------------------------------------------------


def test_sops_per_step_figure_and_csv(runs, tmp_path):
    other = _summary(random_net("4C5-P2-10", k=1, B=2, seed=3), "nsd")
    summaries = [runs["nsd"], runs["sg"], other]
    paths = plots.plot_sops_per_step(summaries, tmp_path)
    _check_files(paths, tmp_path, "sops_per_step", 3)
    rows = _rows(tmp_path / "sops_per_step.csv")
    assert list(rows[0]) == [
        "run", "scheme", "net", "precision", "dataset", "noise", "step", "sops", "cumulative_sops_per_image",
        "ann_ops_per_image",
    ]
    expected = [(s, p) for s in summaries for p in s["per_step"]]
    assert len(rows) == len(expected) and runs["sg"]["steps"] == 1
    for row, (summary, point) in zip(rows, expected):
        assert row["scheme"] == summary["scheme"]
        assert int(row["step"]) == point["step"]
        assert float(row["sops"]) == point["sops"]
        assert float(row["cumulative_sops_per_image"]) == point["cumulative_sops_per_image"]
        assert float(row["ann_ops_per_image"]) == summary["per_image"]["ann_ops"]
    last = [r for r in rows if r["run"] == rows[0]["run"]][-1]
    assert float(last["cumulative_sops_per_image"]) == pytest.approx(runs["nsd"]["per_image"]["sops"])

    figure, _ = plots.build_figure("sops_per_step", summaries)
    (ax,) = figure.axes
    curves = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(curves) == [row["run"] for row in rows if row["step"] == "1"]
    sg = curves[f"SG k=1 B=2 {NET}"]
    assert sg.get_linestyle() == "None" and sg.get_marker() == "^"  # SG's one step: a marker
    assert list(curves[f"NSD k=1 B=2 {NET}"].get_ydata()) == [p["cumulative_sops_per_image"] for p in runs["nsd"]["per_step"]]
    ann = sorted({float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_label().startswith("_")
                  and line.get_linestyle() == "--"})
    assert ann == sorted({runs["nsd"]["per_image"]["ann_ops"], other["per_image"]["ann_ops"]})
    labels = [text.get_text() for text in ax.texts]
    assert labels == [f"ANN {plots._si(runs['nsd']['per_image']['ann_ops'])}\n{NET}",
                      f"ANN {plots._si(other['per_image']['ann_ops'])}\n4C5-P2-10"]


def test_sops_per_step_log_scale_beyond_a_factor_30():
    wide = [_made_up(0, steps=30), _made_up(1, steps=30)]
    for point in wide[0]["per_step"]:
        point["cumulative_sops_per_image"] = 10.0 * point["step"]  # 10 .. 300 against ANN ops of millions
    figure, _ = plots.build_figure("sops_per_step", wide)
    assert figure.axes[0].get_yscale() == "log"
    figure, _ = plots.build_figure("sops_per_step", [_made_up(0, steps=30)])
    assert figure.axes[0].get_yscale() == "linear" and figure.axes[0].get_ylim()[0] == 0


def test_ann_value_labels_never_overlap():
    """Eight ANN lines 0.02 points apart: their labels at the right are moved apart."""
    for name in ("accuracy", "sops_per_step"):
        summaries = _made_up_runs(8)
        if name == "sops_per_step":
            for summary in summaries:
                summary["per_image"]["ann_ops"] = 3.0e6 + summary["ann_accuracy"]  # all but equal
        figure, _ = plots.build_figure(name, summaries)
        figure.draw_without_rendering()
        ax = figure.axes[-1]
        labels = [text for text in ax.texts if text.get_text().startswith("ANN")]
        assert len(labels) == 8
        boxes = [plots.Text.get_window_extent(label) for label in labels]
        assert not [pair for pair in itertools.combinations(boxes, 2) if _boxes_overlap(*pair)]


# --- accuracy: colours, zoom panel, T marks ---------------------------------------------------------------


def _curves(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_one_colour_per_scheme(runs):
    scaled = dict(runs["int"], threshold_scale=10000)
    summaries = [runs["nsd"], runs["int"], runs["nsd_clean6"], scaled, runs["sg"]]
    figure, rows = plots.build_figure("accuracy", summaries)
    main, zoom = figure.axes
    names = list(dict.fromkeys(row["run"] for row in rows))
    curves = _curves(main)
    assert list(curves) == names
    nsd, int_, nsd6, int_scaled, sg = (curves[name] for name in names)
    assert nsd.get_color() == nsd6.get_color() == plots.scheme_color("nsd") == "#0072B2"
    assert int_.get_color() == int_scaled.get_color() == plots.scheme_color("int") == "#D55E00"
    assert sg.get_color() == plots.scheme_color("sg") == "#009E73"
    assert len({nsd.get_color(), int_.get_color(), sg.get_color()}) == 3
    # runs of one scheme differ by marker and line style
    assert (nsd.get_marker(), nsd.get_linestyle()) != (nsd6.get_marker(), nsd6.get_linestyle())
    assert nsd.get_marker() != nsd6.get_marker() and int_.get_marker() != int_scaled.get_marker()
    # the zoom panel draws every curve again, in the same colours
    assert next(line.get_color() for line in zoom.get_lines() if line.get_marker() == nsd.get_marker()) == "#0072B2"
    # the bars take the scheme's colour too (the second run of a scheme a darker shade of it)
    styles = plots.run_styles(summaries)
    assert [s["color"] for s in styles] == ["#0072B2", "#D55E00", "#0072B2", "#D55E00", "#009E73"]
    assert styles[0]["shade"] != styles[2]["shade"]
    sops, _ = plots.build_figure("sops", summaries)
    bars = sops.axes[0].patches
    assert tuple(bars[0].get_facecolor()[:3]) == pytest.approx(plots.mpl.colors.to_rgb("#0072B2"))
    assert tuple(bars[4].get_facecolor()[:3]) == pytest.approx(plots.mpl.colors.to_rgb("#009E73"))
    assert plots.scheme_color("other") in plots.OTHER_COLORS


def test_accuracy_zoom_panel_on_the_ann_lines():
    summaries = [_made_up(0, ann=99.06), _made_up(1, ann=99.14), _made_up(2, ann=99.22)]
    figure, _ = plots.build_figure("accuracy", summaries)
    main, zoom = figure.axes
    assert zoom.get_position().width < main.get_position().width
    low, high = zoom.get_ylim()
    assert low < 99.06 and 99.22 < high <= 100.1
    assert plots.ann_band([99.06, 99.14, 99.22]) == (98.75, 99.5)  # all above 98: tighter
    assert plots.ann_band([97.3, 99.2]) == (95.0, 100.0)
    assert plots.ann_band([90.4]) == (89.0, 100.0)
    # in the zoom, ANN lines 0.08 points apart are well apart (at least 10 pixels)
    pixels = [zoom.transData.transform((1, value))[1] for value in (99.06, 99.14, 99.22)]
    assert min(b - a for a, b in itertools.pairwise(pixels)) >= 10
    dashed = sorted({line.get_ydata()[0] for line in zoom.get_lines() if line.get_label().startswith("_")
                     and line.get_linestyle() == "--" and len(set(line.get_ydata())) == 1})
    assert dashed == [99.06, 99.14, 99.22]
    assert [text.get_text() for text in zoom.texts] == ["ANN 99.06", "ANN 99.14", "ANN 99.22"]
    colors = [text.get_color() for text in zoom.texts]
    assert colors == [plots.scheme_color(s["scheme"]) for s in summaries]
    # runs of two schemes sharing one ANN accuracy: one grey line, one label
    shared = [_made_up(0, ann=99.1), _made_up(1, ann=99.1)]
    figure, _ = plots.build_figure("accuracy", shared)
    assert [(t.get_text(), t.get_color()) for t in figure.axes[1].texts] == [("ANN 99.10", plots.ANN_COLOR)]


def _t_labels(ax) -> list:
    return [text for text in ax.texts if text.get_text().startswith("T")]


def test_t_paper_and_t_lossless_marked_and_labels_never_overlap():
    for count in (3, 8):
        summaries = _made_up_runs(count)
        for summary in summaries:  # crowd them: every curve reaches its T at the same steps
            sg = summary["scheme"] == "sg"
            summary["t_paper"] = 1 if sg else 2
            summary["t_lossless"] = 1 if sg else 3
        summaries[0]["t_lossless"] = None
        figure, _ = plots.build_figure("accuracy", summaries)
        figure.draw_without_rendering()
        main = figure.axes[0]
        texts = _t_labels(main)
        expected = []
        for summary in summaries:
            t_paper, t_lossless = summary["t_paper"], summary["t_lossless"]
            steps = [p["step"] for p in summary["per_step"]]
            if t_paper == t_lossless:
                expected.append(f"T=T_lossless={t_paper}")
                continue
            if t_paper in steps:
                expected.append(f"T={t_paper}")
            if t_lossless in steps:
                expected.append(f"T_lossless={t_lossless}")
        assert sorted(t.get_text() for t in texts) == sorted(expected)
        boxes = [t.get_window_extent() for t in texts]
        frame = main.get_window_extent()
        assert not [pair for pair in itertools.combinations(boxes, 2) if _boxes_overlap(*pair)]
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        diamonds = [line for line in main.get_lines() if line.get_marker() == plots.T_PAPER_MARKER]
        circles = [line for line in main.get_lines() if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
        assert len(diamonds) == sum(s["t_paper"] is not None for s in summaries)
        assert len(circles) == sum(s["t_lossless"] is not None for s in summaries)


def test_accuracy_labels_on_real_runs(runs):
    summaries = [runs["nsd"], runs["sg"], runs["int"]]
    figure, _ = plots.build_figure("accuracy", summaries)
    texts = [t.get_text() for t in _t_labels(figure.axes[0])]
    for summary in summaries:
        t_paper, t_lossless = summary["t_paper"], summary["t_lossless"]
        if t_paper == t_lossless:
            assert f"T=T_lossless={t_paper}" in texts
        else:
            assert f"T={t_paper}" in texts
            assert t_lossless is None or f"T_lossless={t_lossless}" in texts


# --- sparsity: layers named by what they are -------------------------------------------------------------


def _tick_texts(axis) -> list[str]:
    return [label.get_text() for _, label in plots.tick_labels(axis)]


def test_sparsity_layers_are_named_not_numbered():
    summaries = _made_up_runs(3)  # three nets of 6, 8 and 10 layers
    figure, _ = plots.build_figure("sparsity", summaries)
    right = figure.axes[1]
    texts = _tick_texts(right.xaxis)
    wanted = [" ".join(text.split("\n")) for s in summaries for text in plots.layer_labels(s)]
    assert texts == wanted  # every layer named (turned upright, none left out)
    assert len(texts) == 6 + 8 + 10
    assert not any(text.lower().startswith("layer") for text in texts)
    assert plots.layer_labels(summaries[0]) == [
        "16C5s\n16×28×28", "16C5\n16×24×24", "P2\n16×12×12", "32C5\n32×8×8", "P2\n32×4×4", "256\ndense",
    ]
    # one net: the labels also give each layer's neurons
    same, _ = plots.build_figure("sparsity", [_made_up(0), dict(_made_up(0), scheme="nsd", precision="k=2 B=2")])
    labels = [" ".join(t.split("\n")) for t in plots.layer_labels(summaries[0], neurons=True)]
    assert _tick_texts(same.axes[1].xaxis) in (labels, plots.layer_labels(summaries[0], neurons=True))
    assert plots.layer_labels(summaries[0], neurons=True)[0] == "16C5s\n16×28×28\n(12.5k)"
    # a net whose notation does not give one item per layer: the layer names alone
    odd = dict(summaries[0], net="odd net")
    assert plots.layer_labels(odd)[:2] == ["conv\n16×28×28", "conv\n16×24×24"]
    assert plots.layer_labels(odd)[-1] == "dense 256"


# --- noise: a 0.1-point change shows --------------------------------------------------------------------


def test_noise_y_range_shows_a_tenth_of_a_point(tmp_path):
    sweep = [_made_up(0, steps=8, noise=noise) for noise in (0.0, 0.1)]
    for summary, accuracy in zip(sweep, (99.1, 99.0)):
        summary["snn_accuracy"] = summary["ann_accuracy"] = summary["ann_accuracy_clean"] = accuracy
    sweep[1]["ann_accuracy_clean"] = 99.1
    paths = plots.plot_noise(sweep, tmp_path)
    _check_files(paths, tmp_path, "noise", 1)
    figure, _ = plots.build_figure("noise", sweep)
    (ax,) = figure.axes
    low, high = ax.get_ylim()
    assert low < 99.0 < 99.1 < high
    assert 0.5 <= high - low <= 0.6  # the minimum span, not a 5-point or 0-100 range
    pixels = ax.transData.transform([(0, 99.0), (0, 99.1)])[:, 1]
    assert pixels[1] - pixels[0] >= 10
    assert _overlapping_tick_labels(figure) == []
    assert plots.data_limits([99.0, 99.1]) == pytest.approx((98.8, 99.3))
    assert plots.data_limits([50.0, 60.0]) == pytest.approx((48.0, 62.0))  # padded by 20 %
    low, high = plots.data_limits([99.9, 100.0])
    assert high == pytest.approx(100.01) and high - low == pytest.approx(0.5)  # kept below 100 by shifting
    assert plots.data_limits([5.0, 100.0]) == pytest.approx((-2.0, 102.0))  # at most the whole 0-100 span
    assert plots.data_limits([0.0, 100.0]) == pytest.approx((-2.0, 102.0))


# --- one rounding rule for ratios --------------------------------------------------------------------------


def test_ratio_text_two_significant_digits():
    assert [plots.ratio_text(v) for v in (0.1, 0.53, 0.0046, 1.1, 0.105, 0.1052, 0.3349, 9.96, 12.4, 123.0)] == [
        "0.10", "0.53", "0.0046", "1.1", "0.10", "0.11", "0.33", "10", "12", "120",
    ]
    assert [plots.ratio_text(v) for v in (None, math.nan, math.inf, 0.0)] == ["-", "-", "-", "0"]


@pytest.mark.parametrize("ratio", [0.105, 0.1052, 0.0046])
def test_tables_and_figure_print_the_same_ratio(runs, tmp_path, ratio):
    summary = json.loads(json.dumps(runs["nsd"]))
    summary["energy"]["ratio"] = ratio
    text = plots.ratio_text(ratio)
    # the figure's label
    figure, _ = plots.build_figure("sops", [summary])
    labels = [t.get_text() for t in figure.axes[1].texts if "× ANN" in t.get_text()]
    assert len(labels) == 1 and labels[0].endswith(f"({text}× ANN)")
    # the table qsnn simulate prints
    table = summary_table([summary])
    assert table.splitlines()[0].endswith("energy SNN/ANN")
    assert table.splitlines()[2].endswith(f"  {text}")
    # the report (report.md, qsnn report)
    write_json(tmp_path / "nsd" / "sim" / "result.json", summary)
    write_json(tmp_path / "run.json", {
        "spec": {"dataset": "mnist"}, "training": {"precision": "k=1 B=2", "net": NET, "epochs": 1},
        "simulations": [{"scheme": "nsd", "result": "nsd/sim/result.json"}],
    })
    (row,) = report_rows([tmp_path])
    assert row["Energy SNN/ANN"] == text
    assert markdown_table([row]).splitlines()[-1].endswith(f"| {text} |")
