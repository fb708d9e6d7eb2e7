"""Spiking simulation speed against the quantized ANN's forward pass, in one process.

For the MNIST nets of the three papers (qsnn's embedded checkpoints by default), on the
10,000 MNIST test images with 2 threads, this times

* the quantized ANN's forward pass (float32, inference mode), and
* the full SNN simulation with every statistic (``qsnn.simulate``: the reference ANN
  for the agreement, spikes, SOPs, per-step accuracy), and, on a subset, the
  straightforward step-by-step reference simulator,

and prints images/s, the ratio SNN time / ANN time, SOPs per image against the dense
equivalent T x MACs, and the process's peak memory (host, and GPU with ``--device
cuda``). Ratios, not absolute times, are the point: both sides run on the same machine
in the same run.

    python benchmarks/simulate.py [--data-dir ../shared/datasets] [--threads 2] [--repeat 3]

Other checkpoints (``--models``) are timed on the test set of the dataset they were
trained on (CIFAR-10 from ``--data-dir``); ``--device cuda`` times both sides on a GPU.

Without CIFAR-10 (no network), ``--synthetic cifar10`` writes a stand-in in CIFAR-10's own
file format (genuine Fashion-MNIST images padded to 32x32x3, :mod:`synthetic_cifar`;
``--data-dir``: the folder holding ``fashion-mnist/``, default ``../shared/datasets``),
trains the three papers' CIFAR presets on it briefly (NSD ``nsd-cifar10-cnn1`` k=1, INT
``int-cifar10-cnn1`` ternary k=0 with encoding k=0 B=4, SG ``sg-vgg`` k=1 B=2; each in
a child process, so that training does not count in the peak memory), and times them as
above on ``--limit`` test images (default 300), adding each row's count mismatches with
the exact ANN; ``--profile`` then times the simulation's stages (see docs/BENCHMARKS.md):

    python benchmarks/simulate.py --synthetic cifar10 [--train-images 2000] [--epochs 1]
        [--train-batch-size 32] [--limit 300] [--profile]
        [--out DIR: keep the files and nets there, and reuse them next time]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"  # (the workspace's datasets, when there)
# --synthetic: the papers' CIFAR-10 presets, each with the precision its scheme needs
# (qsnn.snn.schemes: SG a bound B on every block; INT ternary hidden weights and a
# bounded encoding block, k=0 as the INT paper, encoding k=0 B=4 as its MNIST net)
SYNTHETIC_NETS = (
    ("nsd-cifar10-cnn1-k1", "nsd-cifar10-cnn1", "nsd", {"k": 1, "B": None}),
    ("int-cifar10-cnn1", "int-cifar10-cnn1", "int", {"k": 0, "B": None, "ternary": True, "encoding_k": 0, "encoding_B": 4}),
    ("sg-vgg-k1B2", "sg-vgg", "sg", {"k": 1, "B": 2}),
)
SYNTHETIC_DEFAULTS = {"limit": 300, "repeat": 3, "reference_images": 10}
DEFAULTS = {"limit": None, "repeat": 5, "reference_images": 200}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="dataset folder (default for MNIST: the embedded test set)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds of ANN-then-SNN timings (the median ratio is kept; default 5, --synthetic 3)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images (--synthetic: default 300)")
    parser.add_argument("--reference-images", type=int, default=None,
                        help="images for the step-by-step reference (default 200, --synthetic 10)")
    parser.add_argument("--models", nargs="*", default=None, help="checkpoints (default: the embedded three)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=200, help="images per batch, the same for the ANN and the SNN")
    parser.add_argument("--synthetic", choices=["cifar10"], default=None,
                        help="write a CIFAR-10 from Fashion-MNIST, train the CIFAR presets on it, time them")
    parser.add_argument("--train-images", type=int, default=2000, help="--synthetic: training images per net")
    parser.add_argument("--epochs", type=int, default=1, help="--synthetic: training epochs per net")
    parser.add_argument("--train-batch-size", type=int, default=32,
                        help="--synthetic: training batch (default 32: more Adam steps from few images than CIFAR's 128)")
    parser.add_argument("--out", default=None,
                        help="--synthetic: keep the CIFAR-10 files and trained nets in this folder (default: a temporary one); "
                        "a later run with the same --out reuses them")
    parser.add_argument("--profile", action="store_true",
                        help="--synthetic: also time the simulation's stages, per net (and the embedded MNIST NSD and INT nets)")
    parser.add_argument("--profile-mnist-images", type=int, default=1000, help="--profile: MNIST test images for the LeNets")
    args = parser.parse_args()
    for name, value in (SYNTHETIC_DEFAULTS if args.synthetic else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.synthetic and args.models:
        parser.error("--synthetic trains its own nets; drop --models")
    if not args.synthetic and (args.profile or args.out):
        parser.error("--profile and --out go with --synthetic")

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from qsnn.train.checkpoint import load_checkpoint

    with contextlib.ExitStack() as stack:
        data_dirs: dict[str, str | None] = {}
        if args.synthetic:
            cases, data_dirs["cifar10"] = synthetic_cases(args, stack)
        elif args.models:
            cases = []
            for path in args.models:
                _, payload = load_checkpoint(path)
                dataset = (payload.get("config") or {}).get("dataset")
                if dataset is None:
                    parser.error(f"checkpoint {path} does not name its dataset (it holds no training config)")
                cases.append((Path(path).stem, path, None, dataset))
        else:
            from qsnn.pipeline import embedded_runs

            cases = [(spec.name, spec.checkpoint, spec.schemes[0], "mnist") for spec in embedded_runs()]
        return benchmark(args, cases, data_dirs)


def benchmark(args, cases, data_dirs: dict) -> int:
    """Time every case (name, checkpoint, scheme or None, dataset) and print the table;
    ``data_dirs``: where a dataset's files are, where not ``--data-dir``."""
    import torch

    from qsnn import data
    from qsnn.measure.fanout import total_macs
    from qsnn.report.tables import format_table
    from qsnn.sim.run import simulate
    from qsnn.sim.stepwise import simulate_batch
    from qsnn.snn.convert import convert
    from qsnn.train.checkpoint import load_checkpoint

    test_sets = {}

    def test_set(dataset):
        """(test set, uint8 pixels cropped for the net, float pixels for the ANN), loaded once."""
        if dataset not in test_sets:
            if dataset in data_dirs:
                test = data.load(dataset, "test", data_dirs[dataset])
            elif args.data_dir or dataset != "mnist":
                test = data.load(dataset, "test", args.data_dir)
            else:
                test = data.embedded_mnist_test()
            if args.limit:
                test = test.subset(args.limit)
            pixels = data.prepare(test.images, dataset, train=False)
            test_sets[dataset] = (test, pixels, data.to_float(pixels))
        return test_sets[dataset]

    def timed(function, *arguments, **options) -> float:
        start = time.perf_counter()
        function(*arguments, **options)
        return time.perf_counter() - start

    def ann(model, x) -> None:
        with torch.inference_mode():
            for start in range(0, len(x), args.batch_size):
                model(x[start : start + args.batch_size].to(args.device))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()  # (the simulation's statistics are read back: it waits already)

    rows = []
    lossless = True  # --synthetic: every row agrees with the exact ANN on every image and count
    profiled = []  # --profile: (name, dataset, net, model, pixels, labels, steps)
    for name, checkpoint, scheme, dataset in cases:
        test, pixels, x = test_set(dataset)
        images = len(test)
        model, _ = load_checkpoint(checkpoint)
        scheme = scheme or ("sg" if all(b.bound for b in model.blocks) else "nsd")
        net = convert(model, scheme)
        model.to(args.device)
        ann(model, x)  # warm up
        simulate(net, pixels[:16], test.labels[:16], steps=None, device=args.device)  # compile the kernels
        auto = simulate(net, pixels, test.labels, steps=None, device=args.device)
        step_counts = [("auto", None)] if scheme == "sg" else [(f"T_lossless={auto.t_lossless}", auto.t_lossless)]
        if scheme == "nsd" and not args.synthetic:
            step_counts.append(("T=20", 20))
        if scheme != "sg" and args.synthetic:  # also until quiescent: every count then equals the ANN's
            step_counts.append((f"auto (T={auto.steps})", None))
        subset = pixels[: args.reference_images]
        for label, steps in step_counts:
            # ANN and SNN timed in turn, so that a machine whose speed drifts slows both alike;
            # the ratio reported is the median of the per-round ratios
            rounds = []
            for _ in range(args.repeat):
                ann_seconds = timed(ann, model, x)
                seconds = timed(simulate, net, pixels, test.labels, steps=steps, device=args.device, batch_size=args.batch_size)
                rounds.append((seconds / ann_seconds, ann_seconds, seconds))
            ratio, ann_seconds, seconds = sorted(rounds)[len(rounds) // 2]
            result = simulate(net, pixels, test.labels, steps=steps, device=args.device)
            reference = timed(simulate_batch, net, subset.to(args.device), steps)
            sops = sum(map(sum, result.sops)) / images
            dense = result.steps * total_macs(net)
            row = [
                name, dataset, scheme.upper(), label, f"{result.steps}",
                f"{images / ann_seconds:,.0f}", f"{images / seconds:,.0f}", f"{len(subset) / reference:,.0f}",
                f"{ratio:.2f}", f"{sops:,.0f}", f"{dense:,.0f}",
                f"{100 * result.agree[-1] / images:.2f}%",
            ]
            if args.synthetic:  # (at T_lossless the predictions agree; the counts only once quiescent)
                differing = sum(result.count_mismatches)
                row.append(f"{differing:,}")
                lossless = lossless and result.agree[-1] == images and result.verified_images == images \
                    and result.verified_disagreements == 0 and (steps is not None or differing == 0)
            rows.append(row)
            peak_so_far = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"  {name} {label}: rounds (ratio, ANN s, SNN s) {[tuple(round(v, 2) for v in r) for r in rounds]}"
                + (f"; peak host memory so far {peak_so_far:,.0f} MB" if args.synthetic else ""),
                file=sys.stderr, flush=True,
            )
            if args.profile and label == step_counts[0][0]:  # (T_lossless; SG: its one step)
                profiled.append((name, dataset, net, model, pixels, test.labels, result))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = f"peak host memory {peak_mb:,.0f} MB"
    if args.device.startswith("cuda"):
        peak += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB"
    header = [
        "net", "dataset", "scheme", "steps", "T", "ANN img/s", "SNN img/s", "reference img/s",
        "SNN/ANN time", "SOPs/img", "T x MACs/img", "agreement",
    ]
    if args.synthetic:
        header.append("counts differing")
    print(
        f"{', '.join(f'{len(t):,} {d} test images' for d, (t, _, _) in test_sets.items())}, "
        f"{args.device}, {args.threads} threads, batches of {args.batch_size}, "
        f"median of {args.repeat} rounds; {peak}"
    )
    print(format_table(rows, header))
    if args.synthetic:
        print(
            "(synthetic CIFAR-10: Fashion-MNIST images padded to 32x32x3, centre-cropped to 24x24; "
            f"nets trained {args.epochs} epoch(s) on {args.train_images:,} images in batches of "
            f"{args.train_batch_size}; reference: "
            f"{args.reference_images} images; counts differing: neuron counts that differ from the exact ANN's, "
            "all images and layers: 0 once quiescent (auto), not needed for the predictions to agree at T_lossless)"
        )
    if profiled:
        profile(args, profiled, test_set)
    if not lossless:
        print("benchmark: a simulation differed from the exact ANN (see the table)", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- --synthetic


def synthetic_cases(args, stack: contextlib.ExitStack) -> tuple[list, str]:
    """Write the stand-in CIFAR-10 (or find it in --out), accept its files in this process,
    train the presets (or reuse them from --out); returns the cases and the data root."""
    import synthetic_cifar

    if args.out:
        work = Path(args.out)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qsnn-synthetic-")))
    root = work / "data"
    folder = root / "cifar10" / synthetic_cifar.FOLDER
    if not (folder / "batches.meta").is_file():
        fashion = args.data_dir or (SHARED if SHARED.is_dir() else None)
        started = time.perf_counter()
        synthetic_cifar.from_fashion_mnist(root, fashion)
        print(f"wrote a CIFAR-10 of Fashion-MNIST images into {folder} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    stack.enter_context(synthetic_cifar.accepted(folder))
    cases = []
    spawn = multiprocessing.get_context("spawn")
    for name, preset, scheme, precision in SYNTHETIC_NETS:
        out = work / "runs" / f"{name}-n{args.train_images}-b{args.train_batch_size}"
        started = time.perf_counter()
        with spawn.Pool(1) as pool:  # (a child: training's memory stays out of the peak measured here)
            summary = pool.apply(_train, (str(folder), str(root), str(out), preset, scheme, precision, args.epochs,
                                          args.train_images, args.train_batch_size, args.limit, args.threads))
        print(
            f"{name}: {summary['epochs']} epoch(s) on {args.train_images:,} images, test accuracy "
            f"{summary['final_test_acc']:.2f}% on {args.limit} images, "
            f"{'reused' if summary.get('already_done') else f'trained in {time.perf_counter() - started:.0f} s'} ({out})",
            file=sys.stderr, flush=True,
        )
        cases.append((name, str(out / "last.pt"), scheme, "cifar10"))
    return cases, str(root)


def _train(folder, root, out, preset, scheme, precision, epochs, train_images, batch_size, test_images, threads) -> dict:
    """(In a child process) train ``preset`` on the stand-in CIFAR-10 into ``out``, or
    resume it there; check that the scheme can convert it."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import synthetic_cifar

    from qsnn.errors import QsnnError
    from qsnn.snn.schemes import SCHEMES
    from qsnn.train.checkpoint import load_checkpoint
    from qsnn.train.config import TrainConfig
    from qsnn.train.loop import train

    config = TrainConfig(
        net=preset, dataset="cifar10", epochs=epochs, batch_size=batch_size, train_limit=train_images,
        test_limit=test_images, data_dir=root, **precision,
    )
    with synthetic_cifar.accepted(folder):
        summary = train(config, out, resume=(Path(out) / "last.pt").is_file(), progress=False)
    missing = SCHEMES[scheme].missing(load_checkpoint(Path(out) / "last.pt")[0])
    if missing:
        raise QsnnError(f"{out} cannot be converted by {scheme}: it lacks {', '.join(missing)}")
    return summary


# --------------------------------------------------------------------------- --profile


def profile(args, profiled: list, test_set) -> None:
    """Where the simulation's time goes (docs/BENCHMARKS.md): simulate() as a whole with
    verify "all" and "sample"; its stages (model input, exact ANN, with cProfile, encoding,
    engine, read-off of the tables' ANN, the from-scratch check of one image per batch);
    the engine's time against its synaptic operations and against the neurons it scans."""
    from qsnn import data
    from qsnn.pipeline import embedded_runs
    from qsnn.sim.run import simulate
    from qsnn.snn.convert import convert
    from qsnn.train.checkpoint import load_checkpoint

    if args.profile_mnist_images:  # the MNIST LeNets of the default benchmark, as a yardstick
        mnist = data.embedded_mnist_test().subset(args.profile_mnist_images)
        pixels = data.prepare(mnist.images, "mnist", train=False)
        for spec in embedded_runs():
            if spec.schemes[0] == "sg":
                continue
            model, _ = load_checkpoint(spec.checkpoint)
            net = convert(model, spec.schemes[0])
            result = simulate(net, pixels, mnist.labels, steps=None)
            result = simulate(net, pixels, mnist.labels, steps=result.t_lossless)
            profiled.append((spec.name, "mnist", net, model, pixels, mnist.labels, result))
    summaries = []
    for name, dataset, net, _, pixels, labels, result in profiled:
        print(f"\n== profile: {name} ({dataset}, {net.scheme.upper()}, {len(pixels):,} images, T={result.steps})", flush=True)
        summaries.append(_profile_net(args, name, net, pixels, labels, result, simulate))
    rows = [[name, scheme, f"{images:,}", f"{steps}", f"{sops:,.0f}", f"{scanned:,.0f}", f"{engine_s:.3f}",
             f"{engine_cpu:.3f}", f"{1e9 * engine_s / (sops * images):.3f}", f"{1e9 * engine_cpu / (sops * images):.3f}",
             f"{1e9 * engine_cpu / (scanned * images):.2f}"]
            for name, scheme, images, steps, sops, scanned, engine_s, engine_cpu in summaries if engine_s is not None]
    from qsnn.report.tables import format_table

    print("\n== the engine's time against its work (engine.run alone, same process; fastest of 2)")
    print(format_table(rows, ["net", "scheme", "images", "T", "SOPs/img", "neuron scans/img", "wall s", "CPU s",
                              "ns/SOP (wall)", "ns/SOP (CPU)", "CPU ns/neuron scan"]))


CPU_TIMES: dict = {}  # function -> the least process CPU time of its _best runs (seconds, all threads)


def _best(function, repeat: int = 2) -> float:
    """The fastest of ``repeat`` timings of ``function()`` (wall seconds; its least CPU
    time, which another process on the machine disturbs less, goes to CPU_TIMES)."""
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU_TIMES[function] = min(cpu)
    return min(times)


def _profile_net(args, name, net, pixels, labels, result, simulate):
    """Print one net's profile; returns (name, scheme, images, T, engine SOPs per image,
    neuron scans per image, engine seconds or None for SG)."""
    from qsnn.data.transforms import spiking_input
    from qsnn.sim import engine
    from qsnn.sim.events import EventSimulator
    from qsnn.sim.verify import ModelCheck, check_against_reference
    from qsnn.snn.reference import reference_counts
    from qsnn.snn.schemes import SCHEMES

    steps = None if SCHEMES[net.scheme].single_step else result.steps
    images = len(pixels)
    size = args.batch_size
    batches = [slice(at, at + size) for at in range(0, images, size)]
    stage = net.spec.input_stage
    # (the long stages once, the engine's fastest of two, every path run first on two images,
    # so that no kernel is compiled or loaded from numba's cache while timed)
    check = ModelCheck(net)
    simulator = EventSimulator(net)
    few = spiking_input(pixels[:2], stage)
    for mode in ("all", "sample"):
        simulate(net, pixels[:2], labels[:2], steps=steps, verify=mode, batch_size=size)
    check.ann(few)
    simulator(net, few, steps)
    simulator.against_ann(net, few, steps)
    totals = {mode: _best(lambda mode=mode: simulate(net, pixels, labels, steps=steps, verify=mode, batch_size=size), 1)
              for mode in ("all", "sample")}
    clean = [spiking_input(pixels[part], stage) for part in batches]
    parts = {"model input (spiking_input)": _best(lambda: [spiking_input(pixels[part], stage) for part in batches])}
    started = time.perf_counter()
    ModelCheck(net).ann  # noqa: B018 (builds the exact ANN)
    parts["exact ANN: build (ModelCheck.ann)"] = time.perf_counter() - started
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for x in clean:
        check.ann(x)
    profiler.disable()
    parts["exact ANN: every image (verify=all), under cProfile"] = time.perf_counter() - started
    engine_s = engine_cpu = scanned = engine_sops = None
    parts["simulator alone (EventSimulator.__call__, as verify=all)"] = _best(lambda: [simulator(net, x, steps) for x in clean], 1)
    parts["simulator + tables' ANN (against_ann, as verify=sample)"] = _best(
        lambda: [simulator.against_ann(net, x, steps) for x in clean], 1
    )
    if steps is None:  # SG: one dense pass, the count of every binary neuron
        parts["  of which: tables' ANN, dense (reference_counts)"] = _best(lambda: [reference_counts(net, x) for x in clean], 1)
    else:
        program = simulator.program
        firsts = [engine.encode(program, x.numpy()) for x in clean]
        parts["encode (engine.encode)"] = _best(lambda: [engine.encode(program, x.numpy()) for x in clean])
        every = any(block.ann_thresholds is not None for block in net.layers)
        runs = [engine.run(program, first, steps, False, every) for first in firsts]
        def run_engine():
            return [engine.run(program, first, steps, False, every) for first in firsts]

        engine_s = _best(run_engine)
        engine_cpu = CPU_TIMES[run_engine]
        parts["engine.run"] = engine_s
        firsts_checks = []
        for x in clean:
            simulator.against_ann(net, x, steps, checks=firsts_checks)
        parts["from-scratch check of 1 image per batch (in against_ann)"] = _best(
            lambda: check_against_reference(net, firsts_checks), 1
        )
        engine_sops, scanned = _engine_work(program, runs, steps)
    for mode, seconds in totals.items():
        print(f"  simulate(verify={mode!r}): {seconds:.3f} s ({images / seconds:,.0f} img/s)")
    for part, seconds in parts.items():
        print(f"  {part}: {seconds:.3f} s")
    per_layer = [sum(layer) / images for layer in result.sops]
    spikes = [(sum(p) + sum(n)) / images for p, n in zip(result.positive, result.negative, strict=True)]
    print("  per layer (spikes/img, SOPs/img of its spikes, neurons): " + "; ".join(
        f"L{i} {s:,.0f} / {o:,.0f} / {layer.neurons:,}" for i, (s, o, layer) in enumerate(zip(spikes, per_layer, net.layers, strict=True))
    ))
    if engine_sops is not None:
        print(f"  engine work per image: {engine_sops:,.0f} SOPs, {scanned:,.0f} neuron scans; "
              f"{1e9 * engine_s / (engine_sops * images):.3f} ns per SOP (wall), "
              f"{1e9 * engine_cpu / (engine_sops * images):.3f} ns per SOP (CPU, both threads)")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(10)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    at = next((i for i, line in enumerate(lines) if "tottime" in line), 0)
    print("  cProfile of the exact ANN on every image, by own time:\n    " + "\n    ".join(lines[at : at + 11]))
    return name, net.scheme.upper(), images, result.steps, engine_sops, scanned, engine_s, engine_cpu


def _engine_work(program, runs, steps) -> tuple[float, float]:
    """Per image: the synaptic operations of every layer's spikes (the encoding layer's
    included, which the engine adds once per window of steps, not once per spike) and the neurons its threshold scans visited (a
    layer scans all its neurons in every step in which it receives input or spiked the
    step before; layer 1 also adds the encoding layer's current to each of its neurons
    in every step the encoding layer fires)."""
    import numpy as np

    from qsnn.sim import engine

    geometry = program.geometry
    padded = geometry[:, engine.PADDED_C] * geometry[:, engine.OUT_H] * geometry[:, engine.OUT_W]
    sops = scans = 0.0
    images = 0
    for run in runs:
        images += len(run.used)
        sops += float(run.sops.sum())
        emitted = run.positive + run.negative  # (images, layers, steps)
        for layer in range(1, geometry.shape[0]):
            arriving = emitted[:, layer - 1, :] > 0
            before = np.zeros_like(arriving)
            before[:, 0] = True  # (every layer scans in step 0)
            before[:, 1:] = emitted[:, layer, :-1] > 0
            active = (arriving | before).sum()
            scans += float(active) * float(padded[layer])
            if layer == 1:
                scans += float(arriving.sum()) * float(padded[1])
    return sops / images, scans / images


if __name__ == "__main__":
    sys.exit(main())
