"""Simulation results written as files and printed tables.

:func:`write_simulation` saves a run's summary (result.json) with per-step and per-layer
CSVs and the original code's text files, in its layout so that its figure scripts read
them unchanged: one number per line, one line per (batch, step), batch by batch, every
value summed over the batch, in the original's number format:

* ``accuracy.txt``      correct predictions of the batch at step t (int)
* ``spike_num.txt``     spikes since t = 0, sum of |s| over the original's layers (SG: float)
* ``spike_collect.txt`` signed spikes (positive minus negative) since t = 0 (float, "123.0";
  NSD and INT)
* ``sop_num.txt``       synaptic operations since t = 0, the original's convention (SG: float)
* ``abs_spike.txt``, ``sum_spike.txt`` (INT) the spikes of step t alone, |s| and signed

:func:`summary_table` prints summaries as the table ``qsnn simulate`` shows.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

from qsnn.io import write_csv, write_json, write_text
from qsnn.measure.fanout import PaperConvention, paper_convention
from qsnn.report.plots import ratio_text
from qsnn.report.summary import counted
from qsnn.sim.run import SimulationResult


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


def summary_table(summaries: list[dict], convention: str = "qsnn") -> str:
    """The short table `qsnn simulate` and `qsnn run` print, one row per simulation (the
    energy ratio written as the figures write it, :func:`qsnn.report.plots.ratio_text`); SOPs,
    ANN ops and energy counted by ``convention`` (see :func:`counted`)."""

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
