"""One command from data to paper tables: train, convert, simulate, plot, report.

A *run* is one network at one precision: it trains (or reuses a checkpoint), converts
under each scheme asked for, simulates the test set (at every noise ratio asked for),
draws the figures and writes a report. Everything lands in one folder::

    RUN/run.json            configuration, provenance, training summary, simulations
    RUN/train/              training output (config, metrics, last.pt, best.pt)
    RUN/<scheme>/net.npz    the converted network
    RUN/<scheme>/sim[-noise<r>]/result.json, per_step.csv, layers.csv, accuracy.txt, ...
    RUN/plots/              accuracy, SOPs, sparsity (and noise) figures: PNG, SVG, CSV
    RUN/report.md, RUN/report.csv

A *sweep* is a grid of runs in one folder, resumable: finished runs are skipped.
:func:`report_rows` builds the papers' table (Quantization, Network, Epochs, ANN, SNN,
Time Steps, as T (paper) beside T_lossless) plus agreement, SOPs and spikes from any number of runs.

A run holds its folder locked (:func:`qsnn.io.folder_lock`) while it works, and a sweep
each cell while it runs it, so the cells of one sweep may run as separate jobs at once
(e.g. one ``qsnn sweep`` per value of k into the same --out), but never one cell twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qsnn import data as qdata
from qsnn.data.readers import embedded_mnist_test
from qsnn.errors import QsnnError, integer_in
from qsnn.io import folder_lock, provenance, read_json, write_csv, write_json, write_text
from qsnn.net.quantization import Precision, parse_bound, precision_fields
from qsnn.options import field_like, field_option, positive_int, time_steps
from qsnn.report.plots import plot_runs, ratio_text
from qsnn.report.summary import counted, summarize
from qsnn.report.tables import write_simulation
from qsnn.sim.run import simulate
from qsnn.snn.convert import applicable_schemes, convert, file_sha256, skipped_schemes
from qsnn.snn.schemes import SCHEMES
from qsnn.train.checkpoint import load_checkpoint, torch_save
from qsnn.train.config import TrainConfig, net_first
from qsnn.train.loop import train

ASSETS = Path(__file__).resolve().parent / "assets"
RESUME_RUN = "run the same command again to resume"  # (run and sweep reuse what is done)
SUMMARY_WAIT = 120.0  # seconds a sweep waits for another to finish writing their folder's report
MODELS = ASSETS / "models"


RUN_FIELDS = ("checkpoint", "schemes", "steps", "noise", "threshold_scale", "test_limit")  # the simulations' options


@dataclass(frozen=True, kw_only=True)
class RunSpec(Precision):
    """What one run trains (or reuses) and how its spiking networks are simulated: the
    precision (the fields of :class:`Precision`), the net and its training (as
    :class:`TrainConfig` names them, None for the recipe's), and the simulations. Each
    field carries its command-line option (`qsnn run`, `qsnn sweep`)."""

    net: str = field_like(TrainConfig, "net", default=dataclasses.MISSING)
    dataset: str = field_like(TrainConfig, "dataset")
    epochs: int | None = field_like(TrainConfig, "epochs", default=None, help="default: the recipe's (qsnn: 3)")
    seed: int = field_like(TrainConfig, "seed")
    batch_size: int | None = field_like(TrainConfig, "batch_size")
    lr: float | None = field_like(TrainConfig, "lr", default=None, help="Adam learning rate (default: the recipe's, qsnn: 1e-3)")
    train_limit: int | None = field_like(TrainConfig, "train_limit")
    recipe: str = field_like(TrainConfig, "recipe")
    checkpoint: str | None = field_option(default=None, help="reuse a trained checkpoint instead of training")
    schemes: list[str] | None = field_option(  # None: every scheme the network allows
        "--scheme", default=None, help="comma-separated schemes (default: every scheme the net allows)",
    )
    steps: int | None = field_option(default=None, type=time_steps, help="time steps, or auto (default)")  # None: until nothing is in flight
    noise: list[float] = field_option(default=[0.0], help="noise ratios, comma-separated (default 0)")
    threshold_scale: int | None = field_option(  # INT: also simulate the original rounded thresholds
        default=None, type=positive_int, help="INT: also simulate thresholds rounded to 1/SCALE",
    )
    test_limit: int | None = field_option("--limit", default=None, type=positive_int, help="only the first N test images")
    name: str | None = None

    def tag(self) -> str:
        return self.name or f"{self.dataset}-{self.net}-{self.label()}"

    def train_config(self, data_dir: str | None, device: str) -> TrainConfig:
        """The TrainConfig of this run's training (the recipe's schedule for what is None)."""
        values = precision_fields(self) | dict(
            net=self.net, dataset=self.dataset, seed=self.seed, recipe=self.recipe,
            train_limit=self.train_limit, data_dir=data_dir, device=device,
        )
        schedule = {key: getattr(self, key) for key in ("epochs", "batch_size", "lr") if getattr(self, key) is not None}
        return TrainConfig.from_values(values | schedule)

    def to_dict(self) -> dict:
        """Every field, the net and the dataset first (run.json)."""
        return net_first(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def _noise_tag(noise: float) -> str:
    return "sim" if noise == 0 else f"sim-noise{noise:g}"


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def execute(
    spec: RunSpec,
    out_dir: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    test_set=None,
    figures: bool = True,
) -> dict:
    """Train (or reuse), convert, simulate, plot and report one run; returns run.json.

    Parts already done (a finished training, an existing simulation result) are reused,
    so an interrupted run continues where it stopped. ``out_dir`` is locked while the run
    works: another process running into it meanwhile is refused (a QsnnError).
    ``figures`` False: no plots/ folder (a caller that draws several runs together).
    """
    with folder_lock(out_dir):
        return _execute(
            spec, Path(out_dir), data_dir=data_dir, device=device, progress=progress, test_set=test_set,
            figures=figures,
        )


def _execute(
    spec: RunSpec, out: Path, *, data_dir: str | None, device: str, progress: bool, test_set=None,
    figures: bool = True,
) -> dict:
    """:func:`execute` in a folder this process holds: 1. the quantized ANN, 2. its spiking
    networks, 3. their simulations, 4. run.json and the figures."""
    started = time.monotonic()
    record: dict = {"spec": spec.to_dict(), "provenance": provenance(spec.seed), "simulations": []}
    model, checkpoint = _trained_model(spec, out, data_dir, device, progress, record)
    if not model.quantized:
        _log(progress, f"[{spec.tag()}] full-precision baseline: no spiking network to convert")
        return _finish(out, record, started, figures)
    if test_set is None:
        test_set = qdata.load(spec.dataset, "test", data_dir)
    if spec.test_limit:
        test_set = test_set.subset(spec.test_limit)
    pixels = qdata.prepare(test_set.images, spec.dataset, train=False)
    source = {
        "checkpoint": str(checkpoint),
        "sha256": file_sha256(checkpoint),
        "dataset": spec.dataset,
        "epochs": record["training"]["epochs"],
        "test_accuracy": record["training"]["test_accuracy"],
    }  # as convert(checkpoint_path, ...) records it; the model is loaded once here
    for scheme, scale in _variants(spec, model):
        folder = out / (scheme if scale is None else f"{scheme}-scale{scale}")
        net = convert(model, scheme, threshold_scale=scale, source=source)
        net.save(folder / "net.npz")
        for noise in spec.noise:
            sim_dir = folder / _noise_tag(noise)
            _simulated(spec, net, scale, noise, pixels, test_set.labels, sim_dir, device, progress)
            record["simulations"].append({
                "scheme": scheme, "threshold_scale": scale, "noise": noise,
                "result": (sim_dir / "result.json").relative_to(out).as_posix(),
            })
    return _finish(out, record, started, figures)


def _trained_model(spec: RunSpec, out: Path, data_dir: str | None, device: str, progress: bool, record: dict):
    """The run's quantized ANN: the given checkpoint, or trained (resumed) into out/train;
    its training recorded in ``record``."""
    if spec.checkpoint:
        checkpoint = Path(spec.checkpoint)
        record["training"] = {"checkpoint": str(checkpoint), "reused": True}
    else:
        config = spec.train_config(data_dir, device)
        train_dir = out / "train"
        resume = (train_dir / "last.pt").exists()
        _log(progress, f"[{spec.tag()}] training {config.net} on {config.dataset} ({config.epochs} epochs)")
        summary = train(config, train_dir, resume=resume, progress=progress, retry=RESUME_RUN)
        checkpoint = train_dir / "last.pt"
        record["training"] = {"checkpoint": str(checkpoint), "reused": False, **summary}
    model, payload = load_checkpoint(checkpoint)
    history = payload.get("metrics") or []
    record["training"].update(
        epochs=payload.get("epoch", len(history)),
        test_accuracy=history[-1]["test_acc"] if history else payload.get("test_acc"),
        net=model.spec.notation,
        precision=model.spec.precision.describe(),
    )
    return model, checkpoint


def _variants(spec: RunSpec, model) -> list[tuple[str, int | None]]:
    """(scheme, threshold scale) of every spiking network the run simulates."""
    schemes = spec.schemes or applicable_schemes(model)
    if not spec.schemes:
        for scheme, reason in skipped_schemes(model).items():
            print(f"[{spec.tag()}] {scheme} skipped: {reason}", file=sys.stderr)
    variants = [(scheme, None) for scheme in schemes]
    if spec.threshold_scale:
        rounding = [scheme for scheme in schemes if SCHEMES[scheme].rounded_thresholds]
        if not rounding:
            raise QsnnError(
                "--threshold-scale compares the INT paper's rounded thresholds, but this run has no "
                f"INT scheme ({', '.join(schemes)}); train with --ternary and a bounded encoding block"
            )
        variants += [(scheme, spec.threshold_scale) for scheme in rounding]
    return variants


def _simulated(spec: RunSpec, net, scale, noise: float, pixels, labels, sim_dir: Path, device: str,
               progress: bool) -> dict:
    """One simulation's summary, written to ``sim_dir``; reused when a result with the same
    fingerprint is there already."""
    scheme = net.scheme
    fingerprint = {
        "checkpoint_sha256": net.source["sha256"], "scheme": scheme, "threshold_scale": scale,
        "noise": noise, "steps": spec.steps, "images": len(pixels), "seed": spec.seed,
        "dataset": spec.dataset, "noise_draws": "per image", "thresholds": "exact tables",
        "reference": "the model's exact ANN on every image",
    }  # (a result whose fingerprint differs in any of these is simulated again)
    previous = _previous_result(sim_dir / "result.json")
    if previous is not None and previous.get("fingerprint") == fingerprint:
        _log(progress, f"[{spec.tag()}] {scheme} noise {noise:g}: done before, reused")
        return previous
    tick = time.monotonic()
    result = simulate(
        net, pixels, labels, steps=None if SCHEMES[scheme].single_step else spec.steps, noise=noise,
        device=device, seed=spec.seed, progress=progress,
    )
    summary = summarize(result, net, dataset=spec.dataset, seed=spec.seed)
    summary["seconds"] = time.monotonic() - tick
    summary["fingerprint"] = fingerprint
    write_simulation(sim_dir, summary, result)
    _log(
        progress,
        f"[{spec.tag()}] {net.describe()}, noise {noise:g}: SNN {summary['snn_accuracy']:.2f}% "
        f"= ANN {summary['ann_accuracy']:.2f}% on {summary['agreement']:,}/{summary['images']:,} "
        f"images, T_lossless {summary['t_lossless']}, {summary['seconds']:.1f} s",
    )
    return summary


def _finish(out: Path, record: dict, started: float, figures: bool) -> dict:

    record["seconds"] = time.monotonic() - started
    write_json(out / "run.json", record)
    if record["simulations"] and figures:
        plot_runs([out], out / "plots")
    write_report(out, [out])
    return record


# --- reports --------------------------------------------------------------------------------


def _runs_under(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise QsnnError(f"{path} does not exist: give run folders written by `qsnn run` or `qsnn sweep`")
        if path.is_file() and path.name == "run.json":
            found.append(path)
        elif path.is_dir():  # (a shell glob may add plots/, report.md, ...: what holds no run is skipped)
            found.extend(sorted(path.rglob("run.json")))
    if not found:
        raise QsnnError(f"no run.json under {', '.join(map(str, paths))}: give folders written by `qsnn run`")
    return sorted(set(found))


def report_rows(paths: list[str | Path], convention: str = "qsnn") -> list[dict]:
    """One row per (run, scheme, noise) in the papers' layout, plus our measurements. SOPs,
    ANN ops and energy counted by ``convention`` ("qsnn", or "paper": each scheme's original
    code, :func:`qsnn.measure.fanout.paper_convention`), the other convention's SOPs beside them."""
    if not paths:
        raise QsnnError("give at least one run folder written by `qsnn run` or `qsnn sweep`")
    rows = []
    for run_file in _runs_under(paths):
        try:
            rows.extend(_run_rows(run_file, convention))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            raise QsnnError(
                f"{run_file} or a result it names is incomplete ({type(error).__name__}: {error}); "
                f"re-run `qsnn run` into {run_file.parent}"
            ) from None
    return rows


def _counted_columns(summary: dict, convention: str) -> dict:
    """SOPs and ANN ops per image by ``convention``, and the other convention's SOPs."""

    other = "paper" if convention == "qsnn" else "qsnn"
    tag = "" if convention == "qsnn" else " (paper)"
    sops, ann_ops, _ = counted(summary, convention)
    beside = round(counted(summary, other)[0]) if "paper_convention" in summary else None  # (older results: N/A)
    return {f"SOPs/img{tag}": round(sops), f"SOPs/img ({other})": beside, f"ANN ops/img{tag}": round(ann_ops)}


def _run_rows(run_file: Path, convention: str = "qsnn") -> list[dict]:
    """The rows of one run.json (see :func:`report_rows`)."""

    tag = "" if convention == "qsnn" else " (paper)"

    run = read_json(run_file)
    if not isinstance(run, dict) or "spec" not in run or "simulations" not in run:
        raise QsnnError(f"{run_file} is not a qsnn run record; give folders written by `qsnn run`")
    training = run.get("training", {})
    base = {
        "Quantization": "Full-precision" if training.get("precision") == "full precision" else training.get("precision"),
        "Network": training.get("net"),
        "Dataset": run["spec"]["dataset"],
        "Epochs": training.get("epochs"),
    }
    if not run["simulations"]:
        return [{
            **base, "Scheme": "-", "ANN": training.get("test_accuracy"), "SNN": None, "T (paper)": None, "T_lossless": None,
        }]
    rows = []
    for sim in run["simulations"]:
        result_path = run_file.parent / sim["result"]  # stored relative to the run folder
        if not result_path.exists():
            raise QsnnError(f"{result_path} is missing: re-run `qsnn run` in {run_file.parent}")
        s = read_json(result_path)
        per_image = s["per_image"]
        scheme = s["scheme"].upper() + ("" if not s.get("threshold_scale") else f" (scale {s['threshold_scale']})")
        rows.append(
            {
                **base,
                "Scheme": scheme,
                "Noise": s["noise"],
                "ANN": s["ann_accuracy_clean"],
                "SNN": s["snn_accuracy"],
                "T (paper)": s.get("t_paper", s["steps"]),
                "T_lossless": s["t_lossless"],
                "Agreement": f"{s['agreement']:,}/{s['images']:,}",
                "Lossless": s["lossless"],
                **_counted_columns(s, convention),
                "Spikes/img (+)": round(per_image["positive_spikes"]),
                "Spikes/img (-)": round(per_image["negative_spikes"]),
                f"Energy SNN/ANN{tag}": ratio_text(counted(s, convention)[2]),  # as the figures write it
            }
        )
    return rows


def _cell(value) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, paths: list[str | Path], convention: str = "qsnn") -> Path:
    """report.md and report.csv in ``out_dir`` for the runs under ``paths`` (SOPs counted
    by ``convention``, see :func:`report_rows`)."""
    out = Path(out_dir)
    rows = report_rows(paths, convention)
    figures = sorted(p.name for p in (out / "plots").glob("*.png")) if (out / "plots").exists() else []
    text = [
        "# qsnn report",
        "",
        "ANN: the quantized ANN's test accuracy (evaluated exactly, on clean images). SNN: the",
        "spiking network's accuracy after its last step. T (paper): the papers' time steps, the",
        "first step from which the SNN's accuracy stays at its final value. T_lossless: the first",
        "step from which the SNN predicts like the ANN on every test image (N/A: not within the",
        "steps simulated).",
        "Agreement: images on which SNN and ANN predict the same. SOPs and spikes are per image;",
        "SOPs, ANN ops and energy counted " + (
            "as qsnn counts them (every synapse a spike drives, borders exact, the output accumulator "
            "included), with SOPs/img (paper): as the scheme's original code counts them."
            if convention == "qsnn" else
            "as each scheme's original code counts them (see docs/RESULTS.md), with SOPs/img (qsnn) beside."
        ),
        "",
        markdown_table(rows),
        "",
    ]
    if figures:
        text += ["## Figures", ""] + [f"![{name}](plots/{name})" for name in figures] + [""]
    write_text(out / "report.md", "\n".join(text))
    write_csv(out / "report.csv", rows)
    return out / "report.md"


# --- sweeps ---------------------------------------------------------------------------------


def sweep_cells(base: RunSpec, grid: dict[str, list]) -> list[RunSpec]:
    """Every combination of ``grid`` on top of ``base``, each named after its values
    (``k=0-B=1``, its folder's name), in the order the grid's values are given."""
    unknown = [key for key in grid if key not in RunSpec.__dataclass_fields__]
    if unknown:
        raise QsnnError(f"cannot sweep over {', '.join(unknown)}: use fields like k, B, schemes, noise, seed")
    trained = [key for key in grid if key in TRAINING_FIELDS]
    if base.checkpoint and trained:
        raise QsnnError(
            f"--grid {', '.join(trained)} needs training, but --checkpoint fixes the trained net; "
            "sweep over schemes, noise or seed with it, or drop --checkpoint"
        )
    keys = list(grid)
    cells = []
    for values in itertools.product(*(grid[key] for key in keys)):
        name = "-".join(f"{key}={_grid_text(value)}" for key, value in zip(keys, values, strict=True))
        cells.append(dataclasses.replace(base, **dict(zip(keys, values, strict=True)), name=name))
    return cells


def sweep(
    base: RunSpec,
    grid: dict[str, list],
    out_dir: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    cell: int | None = None,
) -> list[dict]:
    """Run every combination of ``grid`` (e.g. {"k": [0, 1], "B": [1, 2, 4]}) on top of
    ``base``; a cell whose run.json exists is skipped, so an interrupted sweep resumes.

    Each cell's folder is locked while it is run or checked: a cell another process is
    running is refused (a QsnnError). The sweep's own files (sweep.json, plots, report)
    are written holding ``out_dir``, waiting up to SUMMARY_WAIT seconds for a sweep that
    writes them at the same time.

    ``cell`` (1-based, :func:`sweep_cells`' order): run that cell alone, as one job of a
    cluster, and write no sweep files; the sweep without ``cell`` then finds every cell
    done and writes them."""
    cells = sweep_cells(base, grid)
    out = Path(out_dir)
    if cell is not None:
        if not integer_in(cell, 1) or cell > len(cells):
            raise QsnnError(f"--cell {cell} is not in the grid: its cells are 1 to {len(cells)}")
        return [_sweep_cell(cells[cell - 1], out, data_dir, device, progress)]
    records = [_sweep_cell(spec, out, data_dir, device, progress) for spec in cells]
    with folder_lock(out, wait=SUMMARY_WAIT):
        write_json(out / "sweep.json", {"base": base.to_dict(), "grid": grid, "runs": [r["spec"] for r in records]})
        plot_runs([out], out / "plots")
        write_report(out, [out])
    return records


def _sweep_cell(cell: RunSpec, out: Path, data_dir: str | None, device: str, progress: bool) -> dict:
    """One cell of a sweep, in its own locked folder; its run.json when done before."""
    folder = out / cell.name
    with folder_lock(folder):  # (checked holding it: a cell finished meanwhile is not run again)
        if (folder / "run.json").exists():
            done = read_json(folder / "run.json")
            _check_same_run(folder, done, cell)
            _log(progress, f"[{cell.tag()}] done before, skipped")
            return done
        return _execute(cell, folder, data_dir=data_dir, device=device, progress=progress)


def _grid_text(value) -> str:
    """A grid value as it appears in a cell's folder name: k=0, B=none, noise=0.1, schemes=nsd."""
    if isinstance(value, list):
        return "+".join(_grid_text(v) for v in value)
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


TRAINING_FIELDS = ("k", "B", "ternary", "epochs", "full_precision", "encoding_k", "encoding_B", "lr", "batch_size",
                   "train_limit")


def _check_same_run(folder: Path, done, cell: RunSpec) -> None:
    """A sweep resumes only with the options its finished runs were made with."""
    held = done.get("spec") if isinstance(done, dict) else None
    if not isinstance(held, dict):
        raise QsnnError(f"{folder / 'run.json'} is not a qsnn run record; remove it to run the cell again")
    asked = cell.to_dict()

    def same(key: str) -> bool:
        if key == "checkpoint" and held[key] and asked[key]:  # the same file under another path
            return Path(held[key]).resolve() == Path(asked[key]).resolve()
        return held[key] == asked[key]

    differing = [key for key in asked if key in held and not same(key)]
    if differing:
        said = ", ".join(f"{key}={held[key]!r} (asked {asked[key]!r})" for key in differing)
        raise QsnnError(
            f"{folder} already holds a run made with {said}; resume with the same options or use another --out"
        )


def _previous_result(path: Path) -> dict | None:
    """A simulation's result.json from an earlier run, if it exists and parses (else it is
    made again)."""
    try:
        previous = read_json(path)
    except (OSError, QsnnError):
        return None
    return previous if isinstance(previous, dict) else None


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes"), ("0", "false", "no")


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["k=0,1,2", "B=1,2,4"]`` -> {"k": [0, 1, 2], "B": [1, 2, 4]}."""
    grid: dict[str, list] = {}
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not values.strip() or not all(parts):
            raise QsnnError(f"bad grid item {item!r}: write NAME=V1,V2 (e.g. k=0,1,2 or B=1,2,none), no empty values")
        if key == "scheme":
            key = "schemes"
        if key in grid:
            raise QsnnError(f"--grid {key} is given twice; give all its values in one item, e.g. {key}=0,1")
        if key == "B":
            grid[key] = [parse_bound(v) for v in parts]
        elif key in ("k", "epochs", "seed"):
            try:
                grid[key] = [int(v) for v in parts]
            except ValueError:
                raise QsnnError(f"bad grid item {item!r}: {key} takes integers") from None
        elif key == "noise":
            try:
                grid[key] = [[float(v)] for v in parts]
            except ValueError:
                raise QsnnError(f"bad grid item {item!r}: noise takes ratios between 0 and 1") from None
        elif key == "schemes":
            grid[key] = [[v.lower()] for v in parts]
        elif key == "ternary":
            words = [v.lower() for v in parts]
            if not all(w in TRUE_WORDS + FALSE_WORDS for w in words):
                raise QsnnError(f"bad grid item {item!r}: ternary takes true or false")
            grid[key] = [w in TRUE_WORDS for w in words]
        else:
            raise QsnnError(f"cannot sweep over {key!r}: use k, B, ternary, schemes, noise, epochs or seed")
        values = [json.dumps(value) for value in grid[key]]
        if len(set(values)) != len(values):
            raise QsnnError(f"bad grid item {item!r}: a value is given twice")
    return grid


# --- the embedded default -------------------------------------------------------------------


def embedded_runs() -> list[RunSpec]:
    """The three papers' MNIST nets, trained by qsnn and shipped inside the package."""
    manifest = read_json(MODELS / "manifest.json")
    runs = []
    for entry in manifest["models"]:
        runs.append(
            RunSpec(
                net=entry["net"], dataset="mnist", checkpoint=str(MODELS / entry["file"]),
                schemes=[entry["scheme"]], name=entry["name"],
            )
        )
    return runs


def run_default(out_dir: str | Path, *, device: str = "cpu", progress: bool = True, test_limit: int | None = None) -> list[dict]:
    """`qsnn run` with no arguments: the embedded nets on the embedded MNIST test set."""

    if not (MODELS / "manifest.json").exists():
        raise QsnnError(f"the embedded models are missing from {MODELS}; reinstall qsnn")
    out = Path(out_dir)
    test_set = embedded_mnist_test()
    records = []
    with folder_lock(out):
        for spec in embedded_runs():
            spec = dataclasses.replace(spec, test_limit=test_limit)
            records.append(execute(
                spec, out / spec.tag(), device=device, progress=progress, test_set=test_set, figures=False,
            ))

        plot_runs([out], out / "plots")
        write_report(out, [out])
    return records


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """A small copy of a checkpoint for shipping: weights, network, config, metrics.

    Ternary hidden weights are stored as their int8 values (the ternarizer maps them to
    themselves, so the converted network is identical) and the optimizer state is dropped.
    """

    model, payload = load_checkpoint(source)
    state = model.state_dict()
    for index, block in enumerate(model.blocks):
        if block.ternary:
            state[f"blocks.{index}.weight"] = block.effective_weight().detach().to(torch.int8)
    keep = ("format", "version", "spec", "config", "provenance", "epoch", "test_acc", "metrics")
    slim = {key: payload[key] for key in keep if key in payload}
    slim["model"] = state
    torch_save(target, slim)
    return Path(target)
