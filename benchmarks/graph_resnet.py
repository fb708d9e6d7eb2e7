"""A residual net of one's own, end to end: trained on Fashion-MNIST, converted, simulated.

Trains ``qsnn.nn.small_resnet`` (plain PyTorch with qsnn.nn modules, the user's own loop)
on the first ``--train-images`` Fashion-MNIST training images, converts it under NSD, INT
and SG (``qsnn.convert(model, example_input, scheme)``), simulates the 10,000 test images
with every image and neuron checked against the converted model's exact evaluation, and
compares that evaluation with the trained model itself (float64, batch norms unfolded).
Times each simulation (the exact check of every image included) against the float32
ANN's pass over the same images, and NSD's and INT's event engine against the dense
step-by-step simulation on ``--baseline-images`` of them. Prints a table and writes graph_resnet.json and graph_resnet.csv (with the command,
versions and seed) into ``--out``; the trained weights are kept there and reused.

    python benchmarks/graph_resnet.py [--data-dir ../shared/datasets] [--out runs/graph-resnet]
        [--train-images 20000] [--epochs 2] [--limit 10000] [--threads 2] [--baseline-images 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import torch
import torch.nn.functional as F

from qsnn import data
from qsnn.io import provenance, write_csv, write_json
from qsnn.nn import small_resnet
from qsnn.sim.graph import model_agreement, simulate_graph
from qsnn.snn.convert import convert

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"


def train(args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = small_resnet(k=args.k, B=args.B)
    weights = Path(args.out) / "small_resnet.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights))
        return model.eval()
    images = data.load("fashion-mnist", "train", args.data_dir)
    x, y = images.images[: args.train_images].float() / 255, images.labels[: args.train_images].long()
    optimizer = torch.optim.Adam(model.parameters(), args.lr)
    started = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 100):
            batch = order[start : start + 100]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: {time.time() - started:.0f} s", file=sys.stderr)
    torch.save(model.state_dict(), weights)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--out", default="runs/graph-resnet")
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-images", type=int, default=1000,
                        help="images on which the event engine is timed against the step-by-step simulation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # (the event engine's threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model = train(args)
    test = data.load("fashion-mnist", "test", args.data_dir)
    pixels, labels = test.images[: args.limit].float(), test.labels[: args.limit].long()
    with torch.no_grad():
        float32_correct = int((model(pixels / 255).argmax(dim=1) == labels).sum())
        started = time.time()
        for start in range(0, len(pixels), 1000):
            model(pixels[start : start + 1000] / 255)
        ann_seconds = time.time() - started
    rows = []
    for scheme in ("nsd", "int", "sg"):
        graph = convert(model, pixels[:1] / 255, scheme)
        simulate_graph(graph, pixels[:2], labels[:2])  # (compiles the event engine's kernels once)
        started = time.time()
        result = simulate_graph(graph, pixels, labels, progress=True)
        seconds = time.time() - started
        speedup = None
        if scheme != "sg":  # the event engine against the dense step-by-step simulation, on the same images
            few, few_labels = pixels[: args.baseline_images], labels[: args.baseline_images]
            started = time.time()
            events = simulate_graph(graph, few, few_labels, engine="events")
            middle = time.time()
            stepwise = simulate_graph(graph, few, few_labels, engine="stepwise")
            speedup = round((time.time() - middle) / (middle - started), 2)
            assert (events.positive, events.negative, events.sops) == (stepwise.positive, stepwise.negative, stepwise.sops)
        rows.append({
            "scheme": scheme, "images": result.images, "steps": result.steps,
            "agreement": result.agree[-1], "count_mismatches": sum(result.count_mismatches.values()),
            "snn_accuracy": round(result.accuracy, 2), "exact_ann_accuracy": round(100 * result.ann_correct / result.images, 2),
            "float32_accuracy": round(100 * float32_correct / result.images, 2),
            "spikes_per_image": round(sum(map(sum, result.positive)) / result.images + sum(map(sum, result.negative)) / result.images, 1),
            "negative_spikes_per_image": round(sum(map(sum, result.negative)) / result.images, 1),
            "sops_per_image": round(sum(result.sops) / result.images), "ann_macs_per_image": result.ann_ops // result.images,
            "seconds": round(seconds, 1), "snn_per_ann": round(seconds / ann_seconds, 1),
            "engine_speedup": speedup,
        })
    agreement = model_agreement(model, graph, pixels)
    print(f"{'scheme':6} {'T':>3} {'agree':>11} {'mismatch':>8} {'SNN %':>6} {'float32 %':>9} {'spikes/img':>10} "
          f"{'SOPs/img':>10} {'MACs/img':>10} {'time s':>7} {'SNN/ANN':>7} {'engine x':>8}")
    for row in rows:
        print(f"{row['scheme']:6} {row['steps']:3d} {row['agreement']:5d}/{row['images']:<5d} {row['count_mismatches']:8d} "
              f"{row['snn_accuracy']:6.2f} {row['float32_accuracy']:9.2f} {row['spikes_per_image']:10.1f} "
              f"{row['sops_per_image']:10d} {row['ann_macs_per_image']:10d} {row['seconds']:7.1f} {row['snn_per_ann']:7.1f} "
              f"{'-' if row['engine_speedup'] is None else row['engine_speedup']:>8}")
    print(f"float32 ANN: {ann_seconds:.2f} s for the {len(pixels):,} images; engine x: the dense step-by-step "
          f"simulation's time over the event engine's, on the first {args.baseline_images:,} images (the same records)")
    print(f"trained model (float64, batch norms unfolded) vs the converted model's exact evaluation: "
          f"{agreement.same_predictions:,}/{agreement.images:,} predictions, "
          f"{sum(agreement.count_mismatches.values()):,} counts differ")
    record = {"command": " ".join(sys.argv), "provenance": provenance(args.seed), "settings": vars(args),
              "ann_seconds": round(ann_seconds, 2), "rows": rows,
              "model_agreement": {"images": agreement.images, "same_predictions": agreement.same_predictions,
                                  "count_mismatches": agreement.count_mismatches}}
    write_json(Path(args.out) / "graph_resnet.json", record)
    write_csv(Path(args.out) / "graph_resnet.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
