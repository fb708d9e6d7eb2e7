"""What the quantizer costs in training: ms per step, quantized (k=1) vs full precision.

Both nets (the NSD LeNet 20C5-P2-50C5-P2-500 by default) are trained side by side on the
same MNIST batches with :func:`qsnn.train.loop.train_step`, alternating step by step so that
a busy machine slows both alike. The goal is a ratio quantized / full precision <= 1.3.

    python benchmarks/train_overhead.py                  # one MNIST epoch, 2 threads
    python benchmarks/train_overhead.py --steps 50 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from qsnn import data as qdata
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision
from qsnn.train.loop import train_step

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
GOAL = 1.3


def build(notation: str, precision: Precision, seed: int, device: torch.device):
    spec = NetSpec(notation, (1, 28, 28), 10, "valid", precision)
    torch.manual_seed(seed)
    model = QuantizedNet(spec).to(device).train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="20C5-P2-50C5-P2-500")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--data-dir", default=str(SHARED) if SHARED.is_dir() else None,
        help="folder with mnist/ (default: ../shared/datasets if present, else qsnn's)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_set = qdata.load("mnist", "train", args.data_dir)
    steps = args.steps or len(train_set) // args.batch_size
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))

    runs = {
        f"quantized k={args.k}": build(args.net, Precision(k=args.k), 0, device),
        "full precision": build(args.net, Precision(full_precision=True), 0, device),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(args.warmup + steps):
        start = (step * args.batch_size) % (len(train_set) - args.batch_size + 1)
        index = order[start : start + args.batch_size]
        x = qdata.to_float(train_set.images[index]).to(device)
        labels = train_set.labels[index].to(device)
        for name, (model, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            loss, _ = train_step(model, optimizer, x, labels)
            loss.item()  # waits for the step to finish on any device
            if step >= args.warmup:
                times[name].append(time.perf_counter() - began)

    print(
        f"{args.net}, batch {args.batch_size}, {steps} timed steps after {args.warmup}, "
        f"{args.threads} threads, {device}, torch {torch.__version__}"
    )
    print(f"{'model':<16} {'ms/step (mean)':>15} {'ms/step (median)':>17}")
    for name, values in times.items():
        mean, median = 1000 * statistics.fmean(values), 1000 * statistics.median(values)
        print(f"{name:<16} {mean:>15.1f} {median:>17.1f}")
    quantized, full = (statistics.median(values) for values in times.values())
    ratio = quantized / full
    verdict = "ok" if ratio <= GOAL else "OVER the goal"
    print(f"ratio quantized / full precision (medians): {ratio:.3f} (goal <= {GOAL}: {verdict})")


if __name__ == "__main__":
    main()
