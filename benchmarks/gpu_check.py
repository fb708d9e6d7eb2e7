"""The GPU path checked bit for bit against the CPU, and timed against the GPU's own ANN.

For the three embedded MNIST nets (and any checkpoints given with ``--models``, e.g. the
synthetic-CIFAR CNN 1 that ``benchmarks/simulate.py --synthetic cifar10 --out DIR``
trains), this

* converts each net once,
* simulates the same test images on the CPU (the event engine) and on the GPU (the
  step-by-step simulator on dense float64 tensors holding exact integers),
* requires every number of the two results to be equal: accuracy and agreement per
  step, ANN accuracy, spikes (positive and negative) and SOPs per layer and step,
  neurons that spiked, count mismatches, and the exact-ANN verification,
* and times the GPU simulation against the quantized ANN's forward pass on the same GPU
  (same batches), printing the card's name, images/s and the SNN/ANN ratio.

    python benchmarks/gpu_check.py [--limit 10000] [--batch-size 500] [--models CKPT ...]

It exits 1 if any result differs, 2 if there is no CUDA GPU. One run of the three MNIST
nets on 10,000 images takes a few minutes of GPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CHECKED_FIELDS = (
    "steps", "images", "correct", "agree", "ann_correct", "ann_correct_clean", "positive", "negative", "sops",
    "spiking_neurons", "count_mismatches", "verified_images", "verified_count_mismatches", "verified_disagreements",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10_000, help="test images (default 10,000)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--models", nargs="*", default=[], help="more checkpoints, timed on their own dataset")
    parser.add_argument("--data-dir", default=None, help="dataset folder for --models (MNIST: the embedded test set)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of the GPU ANN and SNN (the best is kept)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of this script")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU: this check needs one (--device cpu for a dry run)", file=sys.stderr)
        return 2
    from qsnn import data
    from qsnn.pipeline import embedded_runs
    from qsnn.report.tables import format_table
    from qsnn.sim.run import simulate
    from qsnn.sim.stepwise import simulate_batch
    from qsnn.snn.convert import applicable_schemes, convert
    from qsnn.train.checkpoint import load_checkpoint

    cases = [(spec.name, spec.checkpoint, spec.schemes[0], "mnist") for spec in embedded_runs()]
    for path in args.models:
        _, payload = load_checkpoint(path)
        cases.append((Path(path).stem, path, None, (payload.get("config") or {})["dataset"]))
    device = torch.device(args.device)
    rows, failures = [], 0
    for name, checkpoint, scheme, dataset in cases:
        model, _ = load_checkpoint(checkpoint)
        schemes = [scheme] if scheme else applicable_schemes(model)
        test = data.load(dataset, "test", args.data_dir if dataset != "mnist" or args.data_dir else None)
        test = test.subset(min(args.limit, len(test)))
        pixels = data.prepare(test.images, dataset, train=False)
        for chosen in schemes:
            net = convert(checkpoint, chosen)
            cpu = simulate(net, pixels, test.labels, steps=None, batch_size=args.batch_size)
            gpu_seconds, gpu = _best(args.repeat, device, lambda net=net, pixels=pixels, labels=test.labels: simulate(
                net, pixels, labels, steps=None, batch_size=args.batch_size, device=device, simulator=simulate_batch,
            ))
            differing = [field for field in CHECKED_FIELDS if getattr(cpu, field) != getattr(gpu, field)]
            failures += bool(differing)
            ann_seconds, _ = _best(args.repeat, device, lambda model=model, pixels=pixels: _ann_pass(model, pixels, args.batch_size, device))
            rows.append([
                f"{name} {chosen}", f"{len(pixels):,}", f"{gpu.steps}",
                f"{len(pixels) / gpu_seconds:,.0f}", f"{len(pixels) / ann_seconds:,.0f}",
                f"{gpu_seconds / ann_seconds:.2f}", "yes" if not differing else "NO: " + ", ".join(differing),
            ])
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (a dry run on the CPU)"
    print(f"GPU: {card}, torch {torch.__version__}")
    print(format_table(rows, ["net", "images", "T", "SNN img/s (GPU)", "ANN img/s (GPU)", "SNN/ANN", "equal to the CPU"]))
    return 1 if failures else 0


def _ann_pass(model, pixels, batch_size: int, device) -> None:
    """The quantized ANN's forward pass over every batch, float32, on ``device``."""
    import torch

    from qsnn.data import model_input

    model = model.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            model(model_input(pixels[start : start + batch_size].to(device), model.spec.input_stage))
    _synchronize(device)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(repeat: int, device, work):
    """The shortest of ``repeat`` timed runs of ``work`` (after one untimed warm-up), and its result."""
    result = work()
    best = float("inf")
    for _ in range(repeat):
        _synchronize(device)
        tick = time.perf_counter()
        result = work()
        _synchronize(device)
        best = min(best, time.perf_counter() - tick)
    return best, result


if __name__ == "__main__":
    sys.exit(main())
