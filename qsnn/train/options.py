"""The training options of the command line, declared once.

:func:`add_network_options` (the net, dataset, precision and recipe: shared by ``train``,
``run`` and ``sweep``) and :func:`add_arguments` (the rest of ``train``) build the
parsers; :func:`config_from_args` turns the parsed options into a :class:`TrainConfig`.
``python -m qsnn.train`` (and ``torchrun -m qsnn.train``) runs :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from qsnn.errors import QsnnError
from qsnn.net.quantization import SAME, parse_bound
from qsnn.train.config import RECIPES, TrainConfig, default_out_dir
from qsnn.train.loop import TrainingInterrupted, train

# ----------------------------------------------------------------------------- command line


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() == "none" else int(text)


def add_network_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """What to train and how (the options `qsnn train`, `qsnn run` and `qsnn sweep` share):
    the net, the data, its precision, the recipe and the schedule; None where not given."""
    defaults = TrainConfig(net="500", dataset="mnist")
    parser.add_argument("--net", required=required, help="notation (20C5-P2-50C5-P2-500) or a preset (qsnn nets)")
    parser.add_argument("--dataset", required=required, help="mnist, fashion-mnist, cifar10 or cifar100")
    parser.add_argument("--k", type=int, default=None, help=f"quantization level 0..4 (default {defaults.k})")
    parser.add_argument("--B", default=None, help="upper bound: a positive integer or none (default)")
    parser.add_argument("--ternary", action="store_true", help="ternary weights in the hidden blocks")
    parser.add_argument(
        "--fp32", "--full-precision", dest="full_precision", action="store_true",
        help="full-precision baseline: plain ReLU, no quantizer",
    )
    parser.add_argument("--encoding-k", default=SAME, help="k of the first block (default: same as --k)")
    parser.add_argument("--encoding-B", default=SAME, help="B of the first block (default: same as --B)")
    parser.add_argument(
        "--recipe", choices=RECIPES, default="qsnn",
        help="qsnn: a short schedule (the defaults below); paper: as the original code trains (its epochs, "
        "batch, lr and schedule, and for CIFAR its colour augmentation and per-image standardization), "
        "for what is not given",
    )
    parser.add_argument("--epochs", type=int, default=None, help=f"default {defaults.epochs}")
    parser.add_argument("--batch-size", type=_optional_int, default=None, help="default 200 (MNIST-like) or 128 (CIFAR)")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {defaults.lr:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-limit", type=_optional_int, default=None, help="only the first N training images")


def add_arguments(parser: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """The options of :class:`TrainConfig`, plus --out, --resume and --quiet."""
    defaults = TrainConfig(net="500", dataset="mnist")
    add_network_options(parser, required=True)
    parser.add_argument(
        "--lr-decay-epoch", type=_optional_int, default=None,
        help="epoch from which lr is divided by 10 (default: half the epochs)",
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $QSNN_DATA or the cache)")
    parser.add_argument("--test-limit", type=_optional_int, default=None, help="only the first N test images")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--checkpoint-interval", type=float, default=defaults.checkpoint_interval,
        help="seconds between mid-epoch checkpoints (default 300)",
    )
    parser.add_argument("--out", required=out_required, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--save-rank-weights", action="store_true",
        help="every process writes OUT/rank{r}_weights.pt at the end (for checks)",
    )


def check_precision_options(args: argparse.Namespace) -> None:
    """--fp32 with options that quantize (given explicitly: their defaults are None or
    "same") is a contradiction, not something to ignore."""
    if args.full_precision:
        quantizing = [option for option, given in (
            ("--k", args.k is not None), ("--B", args.B not in (None, "none")), ("--ternary", args.ternary),
            ("--encoding-k", args.encoding_k != SAME), ("--encoding-B", args.encoding_B != SAME),
        ) if given]
        if quantizing:
            raise QsnnError(f"--fp32 trains a full-precision baseline; drop {', '.join(quantizing)} (they quantize)")


def network_values(args: argparse.Namespace) -> dict:
    """The fields that :func:`add_network_options` describe, as TrainConfig and RunSpec
    take them: the precision (defaults filled in), seed, recipe, train limit, and the
    schedule's epochs, batch size and lr where given (else the recipe's)."""
    check_precision_options(args)
    values = dict(
        net=args.net, dataset=args.dataset, k=TrainConfig.k if args.k is None else args.k,
        B=parse_bound("none" if args.B is None else args.B), ternary=args.ternary,
        full_precision=args.full_precision, encoding_k=args.encoding_k, encoding_B=args.encoding_B,
        seed=args.seed, train_limit=args.train_limit, recipe=args.recipe,
    )
    schedule = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    return values | {key: value for key, value in schedule.items() if value is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = network_values(args)
    values.update(
        data_dir=args.data_dir, test_limit=args.test_limit, device=args.device,
        checkpoint_interval=args.checkpoint_interval,
    )
    if args.lr_decay_epoch is not None:
        values["lr_decay_epoch"] = args.lr_decay_epoch
    return TrainConfig.from_values(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qsnn.train",
        description="Train a quantized network (torchrun-compatible for data parallelism).",
    )
    add_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Train as the options say and print a one-line summary; shared by `qsnn train`."""
    config = config_from_args(args)
    out = args.out or default_out_dir(config)
    try:
        summary = train(
            config, out, resume=args.resume, progress=not args.quiet,
            save_rank_weights=args.save_rank_weights,
        )
    except TrainingInterrupted as interrupt:
        print(f"qsnn: interrupted; resume with --resume --out {out}", file=sys.stderr)
        return 128 + interrupt.signum
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_test_acc"]
        print(
            f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s, final test accuracy "
            f"{summary['final_test_acc']:.2f}%, best {best:.2f}% (epoch {summary['best_epoch']}); "
            f"checkpoints in {out}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m qsnn.train`` (and ``torchrun -m qsnn.train``) entry point."""
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except QsnnError as error:
        print(f"qsnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
