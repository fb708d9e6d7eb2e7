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
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="dataset folder (default for MNIST: the embedded test set)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of ANN-then-SNN timings (the median ratio is kept)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument("--reference-images", type=int, default=200, help="images for the step-by-step reference")
    parser.add_argument("--models", nargs="*", default=None, help="checkpoints (default: the embedded three)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=200, help="images per batch, the same for the ANN and the SNN")
    args = parser.parse_args()

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from qsnn import data
    from qsnn.measure.fanout import total_macs
    from qsnn.pipeline import embedded_runs
    from qsnn.report.tables import format_table
    from qsnn.sim.run import simulate
    from qsnn.sim.stepwise import simulate_batch
    from qsnn.snn.convert import convert
    from qsnn.train.checkpoint import load_checkpoint

    cases = []
    if args.models:
        for path in args.models:
            _, payload = load_checkpoint(path)
            dataset = (payload.get("config") or {}).get("dataset")
            if dataset is None:
                parser.error(f"checkpoint {path} does not name its dataset (it holds no training config)")
            cases.append((Path(path).stem, path, None, dataset))
    else:
        for spec in embedded_runs():
            cases.append((spec.name, spec.checkpoint, spec.schemes[0], "mnist"))
    test_sets = {}

    def test_set(dataset):
        """(test set, uint8 pixels cropped for the net, float pixels for the ANN), loaded once."""
        if dataset not in test_sets:
            if args.data_dir or dataset != "mnist":
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
        if scheme == "nsd":
            step_counts.append(("T=20", 20))
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
            rows.append(
                [
                    name, dataset, scheme.upper(), label, f"{result.steps}",
                    f"{images / ann_seconds:,.0f}", f"{images / seconds:,.0f}", f"{len(subset) / reference:,.0f}",
                    f"{ratio:.2f}", f"{sops:,.0f}", f"{dense:,.0f}",
                    f"{100 * result.agree[-1] / images:.2f}%",
                ]
            )
            print(
                f"  {name} {label}: rounds (ratio, ANN s, SNN s) {[tuple(round(v, 2) for v in r) for r in rounds]}",
                file=sys.stderr, flush=True,
            )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = f"peak host memory {peak_mb:,.0f} MB"
    if args.device.startswith("cuda"):
        peak += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB"
    header = [
        "net", "dataset", "scheme", "steps", "T", "ANN img/s", "SNN img/s", "reference img/s",
        "SNN/ANN time", "SOPs/img", "T x MACs/img", "agreement",
    ]
    print(
        f"{', '.join(f'{len(t):,} {d} test images' for d, (t, _, _) in test_sets.items())}, "
        f"{args.device}, {args.threads} threads, batches of {args.batch_size}, "
        f"median of {args.repeat} rounds; {peak}"
    )
    print(format_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
