"""The figures: files written (PNG, SVG, CSV), the numbers in the CSVs, loading runs, errors."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import torch

from qsnn import plots
from qsnn.conversion import convert
from qsnn.errors import QsnnError
from qsnn.io import write_json
from qsnn.reporting import summarize
from qsnn.simulation import simulate
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
        f"{name}.{ext}" for name in ("accuracy", "sops", "sparsity") for ext in ("png", "svg", "csv")
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
