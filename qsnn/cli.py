"""The ``qsnn`` command-line tool.

Every subcommand is a thin layer over the Python API; bad input ends in one line
``qsnn: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from qsnn import __version__, data, distributed, pipeline
from qsnn.data.registry import dataset_info
from qsnn.deploy.export import EXPORT_FORMATS, export
from qsnn.deploy.graph_nir import export_graph_nir
from qsnn.deploy.mapping import format_mapping, map_cores, parse_core
from qsnn.distributed import check_device
from qsnn.errors import QsnnError
from qsnn.io import check_target, folder_lock, write_json
from qsnn.measure.energy import ENERGY_PER_ADD_PJ, ENERGY_PER_MAC_PJ
from qsnn.net.notation import PRESETS, build_plan, resolve_net
from qsnn.net.quantization import SAME, parse_bound, precision_fields
from qsnn.nn import check_model
from qsnn.options import (
    Option,
    add_options,
    energy,
    field_options,
    given_values,
    positive_int,
    ratio,
    time_steps,
)
from qsnn.pipeline import RUN_FIELDS, RunSpec, markdown_table, report_rows, write_report
from qsnn.report.plots import default_plot_dir, plot_runs
from qsnn.report.summary import SOP_CONVENTIONS, summarize
from qsnn.report.tables import summary_table, write_simulation
from qsnn.sim.graph import simulate_graph
from qsnn.sim.noise import SG_DROPS
from qsnn.sim.run import simulate
from qsnn.sim.verify import VERIFY_CHOICES
from qsnn.snn.convert import convert
from qsnn.snn.exact import evaluate_exact
from qsnn.snn.from_nir import INPUT_RANGES, is_nir_file
from qsnn.snn.graph import SpikingGraph, is_graph_file, model_from_factory
from qsnn.snn.model import SpikingNet
from qsnn.snn.schemes import SCHEMES
from qsnn.train.checkpoint import load_checkpoint
from qsnn.train.loop import evaluate
from qsnn.train.options import NETWORK_FIELDS, network_values, run_from_args, train_options


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``qsnn train: error: ... (see qsnn train --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _device(text: str) -> str:
    """cpu, cuda or cuda:N, and only a GPU that torch can see."""

    try:
        check_device(text)
    except QsnnError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# --- qsnn nets --------------------------------------------------------------------------


def cmd_nets(args: argparse.Namespace) -> int:

    if args.net:
        notation, preset = resolve_net(args.net)
        dataset = args.dataset or (preset.dataset if preset else "mnist")
        names = [(args.net, notation, dataset, preset)]
    else:
        names = [(p.name, p.notation, args.dataset or p.dataset, p) for p in PRESETS.values()]
    for name, notation, dataset, preset in names:
        info = dataset_info(dataset)
        try:
            plan = build_plan(notation, info.input_shape, info.num_classes, info.default_padding)
        except QsnnError as error:
            if args.net:  # the one net asked for
                raise
            print(f"{name}: {notation} does not fit {dataset} ({error})\n")
            continue
        title = f"{name}: {notation} on {dataset} {'x'.join(map(str, info.input_shape))}"
        if preset is not None:
            title += f"  [{preset.paper} paper: {preset.paper_notation}]"
        print(title)
        if preset is not None and preset.note:
            print(f"  note: {preset.note}")
        print(plan.describe())
        print()
    return 0


# --- qsnn data --------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:

    if args.mirror and args.action != "download":
        raise QsnnError(f"--mirror is for `qsnn data download`, not `qsnn data {args.action}`")
    if args.action == "list":
        if args.name is not None:
            raise QsnnError("`qsnn data list` lists every dataset; drop the name (or use `qsnn data verify NAME`)")
        root = data.data_root(args.data_dir)
        print(f"data root: {root}")
        for name, info in data.DATASETS.items():
            shape = "x".join(map(str, info.input_shape))
            print(f"  {name:14s} {info.num_classes:3d} classes, network input {shape}")
        return 0
    if args.name is None:
        raise QsnnError(f"`qsnn data {args.action}` needs a dataset name: {', '.join(data.DATASETS)}")
    if args.action == "download":
        folder = data.download(args.name, args.data_dir, mirrors=args.mirror, progress=not args.quiet)
        print(f"{args.name}: ready in {folder}")
        return 0
    checks = data.verify(args.name, args.data_dir)
    print(data.format_checks(checks))
    return 0 if all(check.ok for check in checks) else 1


# --- qsnn train ---------------------------------------------------------------------------


def _current_folder_importable() -> None:
    """MODULE of --model MODULE:FACTORY may be a file of the current folder, as for python -m."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def cmd_train(args: argparse.Namespace) -> int:

    if args.model:
        _current_folder_importable()
    return run_from_args(args)


# --- qsnn eval --------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:

    model, payload = load_checkpoint(args.checkpoint, device=args.device)
    if args.net is not None and resolve_net(args.net)[0] != model.spec.notation:
        raise QsnnError(
            f"checkpoint {args.checkpoint} holds the net {model.spec.notation}, not {resolve_net(args.net)[0]}; "
            "give the checkpoint of that net or drop --net"
        )
    dataset = _own_dataset(args.checkpoint, (payload.get("config") or {}).get("dataset"), args.dataset)
    info = data.dataset_info(dataset)
    if tuple(info.input_shape) != tuple(model.spec.input_shape):
        shape = "x".join(map(str, model.spec.input_shape))
        raise QsnnError(
            f"checkpoint {args.checkpoint} was trained on {shape} inputs, but {dataset} gives "
            f"{'x'.join(map(str, info.input_shape))}; evaluate it on the dataset it was trained on"
        )
    test = data.load(dataset, "test", args.data_dir)
    if args.limit:
        test = test.subset(args.limit)
    if not model.quantized:
        accuracy = evaluate(model, test, device=args.device)
        print(f"{model.spec.describe()} on {dataset} test ({len(test):,} images): {accuracy:.2f}%")
        return 0

    pixels = data.prepare(test.images, dataset, train=False)
    result = evaluate_exact(model, pixels, test.labels, progress=not args.quiet)
    print(
        f"{model.spec.describe()} on {dataset} test ({len(test):,} images): {result.accuracy:.2f}% "
        f"(the quantized ANN evaluated exactly)"
    )
    print(
        f"float32 model: {result.float32_accuracy:.2f}%; {result.differing_counts:,} neuron counts on "
        f"{result.differing_images:,} image{'s' if result.differing_images != 1 else ''} differ from the exact ANN "
        "(float32 rounding near a level boundary)"
    )
    return 0


# --- qsnn convert -----------------------------------------------------------------------


def _not_the_input(out: Path, source, option: str = "-o") -> None:
    """Refuse an output file that is the input (it would be overwritten), or that cannot be a file."""

    if out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise QsnnError(f"{option} {out} is the input file, which would be overwritten; choose another output file")
    check_target(out)


def cmd_convert(args: argparse.Namespace) -> int:

    out = Path(args.output or Path(args.checkpoint).with_suffix(f".{args.scheme}.npz"))
    _not_the_input(out, args.checkpoint)
    if is_nir_file(args.checkpoint):
        return _convert_nir(args, out)
    if args.nir_input is not None:
        raise QsnnError(f"--nir-input is for NIR files; {args.checkpoint} is not one")
    if args.graph and (args.model or args.threshold_scale is not None):
        raise QsnnError(f"--graph is for a qsnn checkpoint of a notation net; drop "
                        f"{'--model (a model of your own always converts into a graph)' if args.model else '--threshold-scale'}")
    if args.model:
        return _convert_model(args, out)
    given = [option for option, value in (("--input-shape", args.input_shape), ("--dataset", args.dataset)) if value]
    if given:
        raise QsnnError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a model of your own (--model); "
                        "a qsnn checkpoint knows its input and dataset")
    if args.graph:
        graph = convert(args.checkpoint, args.scheme, graph=True)
        graph.save(out)
        print(f"{graph.describe()}, from the net {graph.source['net']} (batch norms folded)\n  written to {out}")
        return 0
    net = convert(args.checkpoint, args.scheme, threshold_scale=args.threshold_scale)
    net.save(out)
    layers = ", ".join(
        f"{layer.kind}{'x'.join(map(str, layer.out_shape))}" + ("" if layer.levels is None else f"/{layer.levels}")
        for layer in net.layers
    )
    print(f"{net.describe()}\n  layers: {layers}\n  written to {out}")
    return 0


def _convert_model(args: argparse.Namespace, out: Path) -> int:
    """`qsnn convert WEIGHTS --model MODULE:FACTORY`: a model of one's own into a SpikingGraph."""

    if args.threshold_scale is not None:
        raise QsnnError("--threshold-scale is for the INT papers' nets; a model of your own converts with exact thresholds")
    _current_folder_importable()
    model, trained_on = model_from_factory(args.model, args.checkpoint)
    dataset = args.dataset if trained_on is None else _own_dataset(args.checkpoint, trained_on, args.dataset)
    if args.input_shape is None and dataset is None:
        raise QsnnError("give --input-shape C,H,W (or --dataset, whose images the model takes)")
    if args.input_shape is None:  # the dataset's images at full size, as qsnn train --model trains on them
        info = dataset_info(dataset)
        shape = tuple(info.stored_shape)
        check_model(model, args.model, shape, info.num_classes, dataset)
    else:
        shape = _shape(args.input_shape)
    graph = convert(model, torch.zeros((1, *shape)), args.scheme)
    graph.source.update(model=args.model, weights=str(args.checkpoint), dataset=dataset)
    graph.save(out)
    print(f"{graph.describe()}\n  written to {out}")
    return 0


def _convert_nir(args: argparse.Namespace, out: Path) -> int:
    """`qsnn convert FILE.nir`: a NIR graph read for one time step into a SpikingGraph."""

    given = [option for option, value in (("--model", args.model), ("--input-shape", args.input_shape),
                                          ("--threshold-scale", args.threshold_scale)) if value is not None]
    if given:
        raise QsnnError(f"{', '.join(given)} does not apply to a NIR file (it holds its network and input shape); drop it")
    graph = convert(args.checkpoint, args.scheme, nir_input=args.nir_input)
    shape = graph.nodes[0].shape
    if args.dataset is not None and tuple(dataset_info(args.dataset).input_shape) != shape:
        raise QsnnError(f"{args.checkpoint} takes {'x'.join(map(str, shape))} inputs, but {args.dataset} gives "
                        f"{'x'.join(map(str, dataset_info(args.dataset).input_shape))}; give the dataset it was made for")
    graph.source.update(dataset=args.dataset)
    graph.save(out)
    pixels = "raw pixels 0..255" if graph.source["input_range"] == "raw" else "pixels / 255"
    print(f"{graph.describe()}, read for one time step from NIR (input: {pixels})\n  written to {out}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise QsnnError(f"--input-shape takes channels,height,width, e.g. 1,28,28; got {text!r}")
    return shape


# --- qsnn simulate ----------------------------------------------------------------------


def _own_dataset(path, held: str | None, asked: str | None) -> str:
    """The dataset a network file was trained on, which ``asked`` (--dataset) may only
    confirm; the one asked for where the file does not say."""
    if held is None:
        if asked is None:
            raise QsnnError(f"{path} does not name its dataset; give --dataset")
        return asked
    if asked is not None and asked != held:

        dataset_info(asked)  # (an unknown name gets its own message)
        raise QsnnError(f"{path} was trained on {held}, not {asked}; drop --dataset (or give --dataset {held})")
    return held


def load_test_pixels(dataset: str, data_dir: str | None, limit: int | None, shape: tuple[int, ...] | None = None):
    """Test images as the network sees them (uint8; centre-cropped for CIFAR, or whole for a
    network whose input ``shape`` is their full size) and labels."""

    test = data.load(dataset, "test", data_dir)
    if limit:
        test = test.subset(limit)
    return data.prepare(test.images, dataset, train=False, shape=shape), test.labels


def _simulate_graph(args: argparse.Namespace) -> int:
    """`qsnn simulate` of a converted model of one's own: every image checked against the
    converted model's exact evaluation."""

    if args.verify != "all":
        raise QsnnError("--verify does not apply to a converted model of your own (every image is checked against "
                        "the model's exact evaluation); drop it")
    graph = SpikingGraph.load(args.file)
    dataset = _own_dataset(args.file, graph.source.get("dataset"), args.dataset)
    pixels, labels = load_test_pixels(dataset, args.data_dir, args.limit, graph.nodes[0].shape)
    out = Path(args.out or Path(args.file).with_suffix("").as_posix() + "-sim")
    with folder_lock(out):
        result = simulate_graph(graph, pixels, labels, steps=args.steps, batch_size=args.batch_size, device=args.device,
                                progress=not args.quiet, noise=args.noise, seed=args.seed, sg_drop=args.sg_drop)
        result.write(out, graph, seed=args.seed)
    spikes = (sum(map(sum, result.positive)) + sum(map(sum, result.negative))) / result.images
    totals = (f"{spikes:,.0f} spikes and {sum(result.sops) / result.images:,.0f} SOPs per image; results in {out}")
    mismatches = sum(result.count_mismatches.values())
    if result.noise == 0:
        print(
            f"{'LOSSLESS' if result.lossless else 'NOT lossless'}: the spiking graph agrees with the converted model's "
            f"exact evaluation on {result.agree[-1]:,} of {result.images:,} images, {mismatches:,} neuron counts differ; "
            f"accuracy {result.accuracy:.2f}% at T = {result.steps}, {totals}"
        )
        return 0
    dropped = f", spikes dropped in {result.sg_drop}" if result.sg_drop else ", pixel noise"
    print(
        f"noise r = {result.noise:g}{dropped}: accuracy {result.accuracy:.2f}% at T = {result.steps} (the converted "
        f"model {100.0 * result.ann_correct / result.images:.2f}% on these inputs, "
        f"{100.0 * result.ann_correct_clean / result.images:.2f}% on the clean images); the spiking graph agrees with "
        f"{result.reference} on {result.agree[-1]:,} of {result.images:,} images, {mismatches:,} neuron counts "
        f"differ; {totals}"
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:

    if is_graph_file(args.file):
        return _simulate_graph(args)
    net = SpikingNet.load(args.file)
    dataset = _own_dataset(args.file, net.source.get("dataset"), args.dataset)
    pixels, labels = load_test_pixels(dataset, args.data_dir, args.limit)
    out = Path(args.out or Path(args.file).with_suffix("").with_suffix("").as_posix() + f"-{net.scheme}-sim")
    where = distributed.setup(args.device)  # (under torchrun: each rank simulates its share of the batches)
    device = args.device
    if where.active and str(device).startswith("cuda"):  # one GPU per process, as torchrun numbers them

        device = f"cuda:{where.local_rank}"
        torch.cuda.set_device(device)
    try:
        # the folder is held from the start (a second simulation into it is refused at once), by rank 0
        with folder_lock(out) if where.main else contextlib.nullcontext():
            result = simulate(
                net, pixels, labels, steps=args.steps, noise=args.noise, batch_size=args.batch_size,
                device=device, seed=args.seed, progress=not args.quiet, verify=args.verify,
                sg_drop=args.sg_drop,
            )
            if where.main:
                summary = summarize(
                    result, net, dataset=dataset, seed=args.seed, e_add=args.energy_add, e_mac=args.energy_mac
                )
                write_simulation(out, summary, result)
    except BaseException:
        distributed.finish(where, failed=True)
        raise
    distributed.finish(where)
    if not where.main:
        return 0
    print(summary_table([summary], args.sop_convention))
    verdict = "LOSSLESS" if summary["lossless"] else "NOT lossless"
    every = args.verify == "all" and summary["verified_images"] == summary["images"]
    reference = (
        "the exact quantized ANN of the trained model (from its own parameters, not the converted tables)"
        if every else "the quantized ANN of the converted tables"
    )
    print(
        f"{verdict}: SNN agrees with {reference} on {summary['agreement']:,} of "
        f"{summary['images']:,} images ({100 * summary['agreement_fraction']:.2f}%), "
        f"{summary['count_mismatches']:,} neuron counts differ; results in {out}"
    )
    if summary["verified_images"] and not every:
        print(
            f"Checked against the exact ANN of the trained model (its own parameters, not the converted "
            f"tables) on {summary['verified_images']:,} image{'s' if summary['verified_images'] != 1 else ''}: "
            f"{summary['verified_count_mismatches']:,} "
            f"neuron counts and {summary['verified_disagreements']:,} predictions differ"
        )
    return 0


# --- qsnn run, sweep, report --------------------------------------------------------------


def _run_spec(args: argparse.Namespace):
    """The RunSpec that `qsnn run` / `qsnn sweep` options describe: a checkpoint to reuse,
    or a net to train."""

    common = _simulation_options(args)
    if args.checkpoint:
        return _checkpoint_run(args, common)
    if args.net is None or args.dataset is None:
        raise QsnnError("give --net and --dataset (or --checkpoint), or no options at all for the embedded default")
    return RunSpec(**network_values(args) | common)


def _simulation_options(args: argparse.Namespace) -> dict:
    """The RunSpec fields of the simulation options given (--scheme and --noise read and
    checked), and --seed, which also seeds the noise."""

    values = given_values(args, (*RUN_FIELDS, "seed"))
    if args.schemes is not None:
        schemes = [s.strip().lower() for s in args.schemes.split(",")]
        if not all(s in SCHEMES for s in schemes) or len(set(schemes)) != len(schemes):
            raise QsnnError(f"--scheme takes {', '.join(SCHEMES)} separated by commas, each once; got {args.schemes!r}")
        if all(SCHEMES[s].single_step for s in schemes) and args.steps not in (None, 1):
            titles = ", ".join(SCHEMES[s].title for s in schemes)
            raise QsnnError(f"{titles} takes one time step; --steps {args.steps} does not apply to it (drop it)")
        values["schemes"] = schemes
    if args.noise is not None:
        try:
            noise = [float(v) for v in args.noise.split(",")]
        except ValueError:
            noise = [math.nan]
        if len(set(noise)) != len(noise):
            raise QsnnError(f"--noise gives a ratio twice ({args.noise!r}); give each once")
        if not all(0 <= r <= 1 for r in noise):
            raise QsnnError(f"--noise takes ratios between 0 and 1 separated by commas, e.g. 0,0.1,0.2; got {args.noise!r}")
        values["noise"] = noise
    return values


def _checkpoint_run(args: argparse.Namespace, common: dict):
    """The RunSpec reusing --checkpoint: the options that shape training are refused, the
    net's own (--net, --k, --B, --ternary, --fp32) may only confirm what it holds."""

    given = [option for option, value in _training_options(args).items()
             if value and option not in ("--ternary", "--fp32")]  # (those two are compared below)
    if given:
        raise QsnnError(
            f"{', '.join(given)} {'shapes' if len(given) == 1 else 'shape'} training, but --checkpoint reuses a "
            "trained net; drop it (or drop --checkpoint to train)"
        )
    model, payload = load_checkpoint(args.checkpoint)
    spec = model.spec
    precision = spec.precision
    asked = [  # (option, what the user asked, what the checkpoint holds), options given only
        ("--net", resolve_net(args.net)[0], spec.notation) if args.net else None,
        ("--k", args.k, precision.k) if args.k is not None else None,
        ("--B", parse_bound(args.B), precision.B) if args.B is not None else None,
        ("--ternary", True, precision.ternary) if args.ternary else None,
        ("--fp32", True, precision.full_precision) if args.full_precision else None,
    ]
    for option, value, held in filter(None, asked):
        if value != held:
            raise QsnnError(
                f"{args.checkpoint} holds {spec.describe()}, which does not match {option}"
                f"{'' if value is True else ' none' if value is None else f' {value}'}; drop the option "
                "(the checkpoint decides) or give another checkpoint"
            )
    dataset = _own_dataset(args.checkpoint, (payload.get("config") or {}).get("dataset"), args.dataset)
    return RunSpec(net=spec.notation, dataset=dataset, **precision_fields(precision), **common)


def _training_options(args: argparse.Namespace) -> dict[str, bool]:
    """The options of `qsnn run` and `qsnn sweep` that only matter when training: which were given."""

    return {
        "--ternary": args.ternary, "--fp32": args.full_precision,
        "--encoding-k": args.encoding_k not in (None, SAME), "--encoding-B": args.encoding_B not in (None, SAME),
        "--epochs": args.epochs is not None, "--batch-size": args.batch_size is not None,
        "--lr": args.lr is not None, "--train-limit": args.train_limit is not None,
        "--recipe": args.recipe not in (None, "qsnn"),
    }


def _print_report(folder: Path) -> None:

    print(markdown_table(report_rows([folder])))
    print(f"\nreport, figures and results in {folder}")


def cmd_run(args: argparse.Namespace) -> int:

    progress = not args.quiet
    if args.net is None and args.checkpoint is None and args.dataset is None:
        given = [option for option, value in {
            **_training_options(args), "--k": args.k is not None, "--B": args.B is not None,
            "--seed": args.seed not in (None, 0), "--scheme": args.schemes is not None,
            "--steps": args.steps is not None, "--noise": (args.noise or "0").strip() not in ("0", "0.0", "0.", ""),
            "--threshold-scale": args.threshold_scale is not None,
            "--data-dir": args.data_dir is not None,
        }.items() if value]
        if given:
            raise QsnnError(
                f"{', '.join(given)} needs --net and --dataset (or --checkpoint): without them `qsnn run` runs "
                "the shipped demo, which takes only --limit, --device, --out and --quiet"
            )
        out = Path(args.out or "runs/default")
        pipeline.run_default(out, device=args.device, progress=progress, test_limit=args.test_limit)
    else:
        spec = _run_spec(args)
        out = Path(args.out or Path("runs") / spec.tag())
        pipeline.execute(spec, out, data_dir=args.data_dir, device=args.device, progress=progress)
    _print_report(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:

    spec = _run_spec(args)
    grid = pipeline.parse_grid(args.grid)
    out = Path(args.out or Path("runs") / f"sweep-{spec.dataset}-{spec.net}")
    if args.list_cells:  # one command per cell, for a cluster's job array
        command = ["qsnn", *(item for item in args.argv if item != "--list-cells")]
        for number, cell in enumerate(pipeline.sweep_cells(spec, grid), 1):
            print(f"{shlex.join([*command, '--cell', str(number)])}  # {out / cell.name}")
        return 0
    pipeline.sweep(spec, grid, out, data_dir=args.data_dir, device=args.device, progress=not args.quiet, cell=args.cell)
    if args.cell is not None:
        print(f"cell {args.cell} done in {out}; once every cell is, the sweep without --cell writes its report")
        return 0
    _print_report(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:

    if args.out:
        with folder_lock(args.out, option="-o"):
            path = write_report(args.out, args.runs, args.sop_convention)
        print(f"written {path} and {path.with_suffix('.csv')}")
    else:
        print(markdown_table(report_rows(args.runs, args.sop_convention)))
    return 0


# --- qsnn export, map -----------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:

    if args.format == "nir":  # (a qsnn-int package is a folder; export checks it)
        _not_the_input(Path(args.output), args.file)
    if is_graph_file(args.file):
        if args.format != "nir" or args.steps is not None:
            raise QsnnError("a converted model of your own exports to NIR (--format nir, SG, one time step); "
                            "the qsnn-int package holds the notation nets' chain networks")
        path = export_graph_nir(SpikingGraph.load(args.file), args.output)
    else:
        path = export(SpikingNet.load(args.file), args.format, args.output, steps=args.steps)
    print(f"wrote {path}")
    return 0


def cmd_map(args: argparse.Namespace) -> int:

    if args.json:
        _not_the_input(Path(args.json), args.file, "--json")
    report = map_cores(SpikingNet.load(args.file), *parse_core(args.core))
    if args.json:  # written before anything is printed: a path it cannot write fails alone
        write_json(args.json, report.to_dict())
    print(format_mapping(report))
    if args.json:
        print(f"wrote {args.json}")
    return 0


# --- qsnn plot ----------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:

    out = Path(args.out) if args.out else default_plot_dir(args.runs)
    with folder_lock(out, option="-o"):  # (another qsnn writing the same figures is refused)
        written = plot_runs(args.runs, out)
    for path in written:
        print(path)
    return 0


# --- the parser ---------------------------------------------------------------------------


# Options several commands take, declared once; each command below lists its own.
DATA_DIR = Option.of("--data-dir", help="dataset folder (default: $QSNN_DATA, else the per-user cache)")
DEVICE = Option.of("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
LIMIT = Option.of("--limit", type=positive_int, help="only the first N test images")
QUIET = Option.of("--quiet", action="store_true", help="no progress output")
TRAINED_ON = Option.of("--dataset", help="default: the dataset it was trained on")
NET_FILE = Option.of("file", help="a converted network (qsnn convert)")
SOP_CONVENTION = Option.of(
    "--sop-convention", choices=SOP_CONVENTIONS, default=SOP_CONVENTIONS[0],
    help="count SOPs, ANN ops and energy as qsnn does (default: every synapse, borders exact, output "
    "accumulator included) or as each scheme's original code does (paper; see docs/RESULTS.md)",
)
# `qsnn run` and `qsnn sweep`: RunSpec's fields, and where the run goes
RUN_OPTIONS = (
    *field_options(RunSpec, (*NETWORK_FIELDS, *RUN_FIELDS)),
    DATA_DIR, DEVICE, QUIET,
    Option.of("--out", help="run folder (default: runs/<dataset>-<net>-<precision>)"),
)


class Command(NamedTuple):
    """One subcommand: its name, its options, the function that runs it, and add_parser's
    help and description."""

    name: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace], int]
    texts: dict


COMMANDS = [
    Command("nets", (
        Option.of("net", nargs="?", help="a preset name or notation (default: all presets)"),
        Option.of("--dataset", help="resolve against this dataset's input shape"),
    ), cmd_nets, dict(help="list the papers' nets (layers, output shapes, parameters)")),
    Command("data", (
        Option.of("action", choices=["download", "verify", "list"]),
        Option.of("name", nargs="?", help="mnist, fashion-mnist, cifar10 or cifar100"),
        DATA_DIR,
        Option.of(
            "--mirror", action="append", metavar="URL",
            help="download: a base URL (http, https or file) to fetch the files from instead of the official "
            "mirrors; repeat it for several",
        ),
        QUIET,
    ), cmd_data, dict(help="download, verify or list datasets")),
    Command("train", tuple(train_options(out_required=False)), cmd_train, dict(
        help="train a quantized (or full-precision) network, or a model of your own (--model)",
        description="Train with Adam and the papers' schedule a net in their notation (--net) or a model of your "
        "own (--model MODULE:FACTORY); resumable, torchrun-compatible.")),
    Command("eval", (
        Option.of("checkpoint"), TRAINED_ON,
        Option.of("--net", help="the net you expect the checkpoint to hold (checked)"),
        DATA_DIR, LIMIT, DEVICE, QUIET,
    ), cmd_eval, dict(help="test accuracy of a trained checkpoint")),
    Command("convert", (
        Option.of("checkpoint", help="a qsnn checkpoint, a NIR file (.nir: read for one time step, every IF node a "
                  "layer of binary neurons), or with --model the weights of a model of your own: a checkpoint of "
                  "qsnn train --model, or its state_dict() saved with torch.save"),
        Option.of("--scheme", required=True, choices=list(SCHEMES)),
        Option.of("-o", "--output", help="output file (default: CHECKPOINT.SCHEME.npz)"),
        Option.of("--model", metavar="MODULE:FACTORY",
                  help="a model of your own, made by calling FACTORY() from MODULE (importable, e.g. from the current folder), "
                  "with qsnn.nn.QuantAct activations: converted into a spiking graph"),
        Option.of("--input-shape", metavar="C,H,W",
                  help="--model: the images it takes (default: --dataset's at full size, e.g. 3,32,32 for CIFAR)"),
        Option.of("--dataset", help="--model or a NIR file: the dataset it was trained on (recorded for qsnn simulate; "
                  "--model: default the one its qsnn checkpoint names)"),
        Option.of("--nir-input", choices=INPUT_RANGES, default=None,
                  help="a NIR file: the pixels it takes, raw (0..255) or unit (p / 255); default: raw for qsnn's "
                  "own NIR exports, unit for others"),
        Option.of(
            "--threshold-scale", type=positive_int, default=None,
            help="INT only: round thresholds to 1/SCALE like the original code (e.g. 10000) instead of exact",
        ),
        Option.of("--graph", action="store_true",
                  help="a notation net as a spiking graph, its batch norms folded into the weights as for a model of "
                  "your own (default: the chain network, batch norms exact in its threshold tables)"),
    ), cmd_convert, dict(help="convert a checkpoint into a spiking network file")),
    Command("simulate", (
        NET_FILE, TRAINED_ON.but(help="default: the dataset the network was trained on"), DATA_DIR,
        Option.of("--steps", type=time_steps, default=None, help="time steps, or auto (default): until nothing is in flight"),
        Option.of("--noise", type=ratio, default=0.0, help="noise ratio r (NSD/INT: pixel noise; SG: spike drop)"),
        Option.of("--batch-size", type=positive_int, default=200, help="images simulated together (default 200)"),
        LIMIT, DEVICE,
        Option.of("--seed", type=int, default=0, help="seed of the noise"),
        Option.of(
            "--sg-drop", choices=SG_DROPS, default=SG_DROPS[0],
            help="SG under --noise: drop spikes in the encoding layer only (default, the SG paper's model) "
            "or in every layer",
        ),
        SOP_CONVENTION,
        Option.of("--energy-add", type=energy, default=ENERGY_PER_ADD_PJ, help="pJ per addition (SNN)"),
        Option.of("--energy-mac", type=energy, default=ENERGY_PER_MAC_PJ, help="pJ per MAC (ANN)"),
        Option.of(
            "--verify", choices=VERIFY_CHOICES, default="all",
            help="the reference the SNN is compared with: all (default): the exact ANN of the trained model, "
            "computed from its own parameters, on every image; sample: the converted tables' ANN, and the "
            "trained model's exact ANN on the first image of every batch; none: the tables' ANN only",
        ),
        Option.of("--out", help="results folder (default: next to FILE)"),
        QUIET,
    ), cmd_simulate, dict(help="simulate a converted network on a test set")),
    Command("run", RUN_OPTIONS, cmd_run, dict(
        help="train, convert, simulate, plot and report in one folder (no options: the embedded MNIST demo)",
        description="With no options, converts qsnn's embedded MNIST nets and simulates the 10,000 "
        "embedded MNIST test images offline. With --net and --dataset, trains first.")),
    Command("sweep", (
        *RUN_OPTIONS,
        Option.of("--grid", action="append", required=True, help="NAME=V1,V2 over k, B, ternary, scheme, noise, epochs, seed"),
        Option.of("--cell", type=positive_int, default=None, help="run only cell N of the grid (1-based), e.g. as one job of a cluster"),
        Option.of("--list-cells", action="store_true", help="print one command per cell (each with --cell N) and exit"),
    ), cmd_sweep, dict(help="a resumable grid of runs, e.g. --grid k=0,1,2 --grid B=1,2,4")),
    Command("report", (
        Option.of("runs", nargs="+", metavar="RUN", help="run or sweep folders (searched for run.json)"),
        Option.of("-o", "--out", help="write report.md and report.csv into this folder"),
        SOP_CONVENTION,
    ), cmd_report, dict(help="the papers' table (Markdown and CSV) from run folders")),
    Command("export", (
        NET_FILE,
        Option.of("--format", required=True, choices=list(EXPORT_FORMATS)),
        Option.of("-o", "--output", required=True, help="qsnn-int: a folder; nir: a .nir file"),
        Option.of("--steps", type=time_steps, default=None, help="time steps to record in the package (default: until quiescent)"),
    ), cmd_export, dict(help="export a converted network: integer deployment package or NIR")),
    Command("map", (
        NET_FILE,
        Option.of("--core", default="256x256", help="core size AXONSxNEURONS (default 256x256)"),
        Option.of("--json", help="also write the mapping as JSON to this file"),
    ), cmd_map, dict(help="how many crossbar cores each layer of a converted network needs")),
    Command("plot", (
        Option.of("runs", nargs="+", metavar="RUN", help="result.json files or folders holding them (searched recursively)"),
        Option.of("-o", "--out", default=None, help="output folder (default: plots/ in the runs' common folder)"),
    ), cmd_plot, dict(help="draw the papers' figures (PNG, SVG and CSV) from simulation results")),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qsnn",
        description="Train quantized networks and convert them losslessly into spiking networks.",
    )
    parser.add_argument("--version", action="version", version=f"qsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, **command.texts)
        add_options(p, command.options)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # (imports torch: seconds, in which Ctrl-C must not print a traceback)
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        if getattr(args, "quiet", False):
            os.environ.setdefault("TQDM_DISABLE", "1")
        return args.func(args)
    except QsnnError as error:
        print(f"qsnn: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file qsnn was told to read or write
        where = f" {error.filename}" if error.filename else ""
        print(f"qsnn: error: cannot use{where}: {error.strerror or error}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
