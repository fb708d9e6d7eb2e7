"""The training options of the command line, made from TrainConfig's fields.

Each option is declared with the field it fills (:mod:`qsnn.options`).
:data:`NETWORK_FIELDS` (the net, dataset, precision and recipe) are shared by ``train``,
``run`` and ``sweep``; :func:`train_options` lists every option of ``train`` (which also
takes ``--model MODULE:FACTORY``, a model of one's own, instead of ``--net``);
:func:`config_from_args` turns the parsed options into a :class:`TrainConfig`.
``python -m qsnn.train`` (and ``torchrun -m qsnn.train``) runs :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from qsnn.errors import QsnnError
from qsnn.net.quantization import PRECISION_FIELDS, SAME
from qsnn.options import Option, add_options, field_options, given_values
from qsnn.train.config import TrainConfig, default_out_dir
from qsnn.train.loop import TrainingInterrupted, train

# ----------------------------------------------------------------------------- command line

# The TrainConfig fields that `qsnn train`, `qsnn run` and `qsnn sweep` all take: the net,
# the data, its precision, the recipe and the schedule.
NETWORK_FIELDS = (
    "net", "dataset", *PRECISION_FIELDS, "recipe", "epochs", "batch_size", "lr", "seed", "train_limit",
)
# The rest of `qsnn train`'s TrainConfig fields, and its options that fill no field.
TRAIN_FIELDS = ("model", "lr_decay_epoch", "data_dir", "test_limit", "device", "checkpoint_interval")
TRAIN_ONLY = (
    Option.of("--out", required=True, help="output folder"),
    Option.of("--resume", action="store_true", help="continue from OUT/last.pt"),
    Option.of("--quiet", action="store_true", help="no progress output"),
    Option.of(
        "--save-rank-weights", action="store_true",
        help="every process writes OUT/rank{r}_weights.pt at the end (for checks)",
    ),
)


def train_options(*, out_required: bool = True) -> list[Option]:
    """Every option of `qsnn train`: the TrainConfig fields (--model after --net), --out,
    --resume, --quiet and --save-rank-weights."""
    net, *network = field_options(TrainConfig, NETWORK_FIELDS, required=("dataset",))
    model, *rest = field_options(TrainConfig, TRAIN_FIELDS)
    return [
        net, model, *network, *rest,
        *(option.but(required=out_required) if option.flags == ("--out",) else option for option in TRAIN_ONLY),
    ]


def check_precision_options(args: argparse.Namespace) -> None:
    """--fp32 with options that quantize (given explicitly) is a contradiction, not
    something to ignore."""
    if args.full_precision:
        quantizing = [option for option, given in (
            ("--k", args.k is not None), ("--B", args.B not in (None, "none")), ("--ternary", args.ternary),
            ("--encoding-k", args.encoding_k not in (None, SAME)), ("--encoding-B", args.encoding_B not in (None, SAME)),
        ) if given]
        if quantizing:
            raise QsnnError(f"--fp32 trains a full-precision baseline; drop {', '.join(quantizing)} (they quantize)")


def check_model_options(args: argparse.Namespace) -> None:
    """Exactly one of --net and --model; with --model, no option that sets a precision or
    the papers' recipe (the model's own QuantAct(k, B) set its precision)."""
    if (args.net is None) == (args.model is None):
        raise QsnnError(
            "--net and --model are exclusive: give --net for a net in the papers' notation or --model for a model "
            "of your own" if args.net is not None else
            "give --net (a net in the papers' notation, or a preset) or --model MODULE:FACTORY (a model of your own)"
        )
    if args.model is None:
        return
    given = [option for option, value in (
        ("--k", args.k is not None), ("--B", args.B is not None), ("--ternary", args.ternary),
        ("--fp32", args.full_precision), ("--encoding-k", args.encoding_k is not None),
        ("--encoding-B", args.encoding_B is not None), ("--recipe paper", args.recipe == "paper"),
    ) if value]
    if given:
        one = len(given) == 1
        raise QsnnError(
            f"{', '.join(given)} {'does' if one else 'do'} not apply with --model: the model's own QuantAct(k, B) set "
            f"its precision (and --epochs, --lr and --batch-size its schedule); drop {'it' if one else 'them'}"
        )


def network_values(args: argparse.Namespace) -> dict:
    """The fields of :data:`NETWORK_FIELDS` given on the command line, as TrainConfig
    and RunSpec take them (their own defaults, or the recipe's, fill in the rest)."""
    check_precision_options(args)
    return given_values(args, NETWORK_FIELDS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    check_model_options(args)
    return TrainConfig.from_values(network_values(args) | given_values(args, TRAIN_FIELDS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qsnn.train",
        description="Train a quantized network, in the papers' notation (--net) or a model of your own "
        "(--model MODULE:FACTORY); torchrun-compatible for data parallelism.",
    )
    add_options(parser, train_options())
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
