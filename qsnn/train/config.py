"""A training run's configuration: :class:`TrainConfig`, and the two recipes.

"qsnn" is a short schedule (Adam, lr 1e-3 divided by 10 after half the epochs);
"paper" is the original code's per preset (:func:`paper_recipe`): its epochs, batch, lr
and schedule. A config is checked when made (one-line errors naming the field and the
fix) and written to config.json, so a run can be resumed and re-made. It trains a net in
the papers' notation (``net``) or a model of one's own (``model``, ``MODULE:FACTORY``,
:class:`~qsnn.train.model.ModelSpec`), whose own QuantActs set its precision.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsnn import data as qdata
from qsnn.errors import QsnnError, check_seed, integer_in
from qsnn.net.models import NetSpec
from qsnn.net.notation import resolve_net
from qsnn.net.quantization import PRECISION_FIELDS, Precision
from qsnn.nn import factory_name
from qsnn.options import field_option, optional_int
from qsnn.train.model import ModelSpec, Spec

# Options that may change when a run is resumed; every other one must match the saved run.
RESUMABLE_CHANGES = ("epochs", "data_dir", "device", "checkpoint_interval")


# ----------------------------------------------------------------------------- config


RECIPES = ("qsnn", "paper")
NO_DECAY = 1_000_000  # an lr_decay_epoch no run reaches: a constant learning rate
CIFAR_DATA = ("cifar10", "cifar100")
# The original code's epochs per preset (their scripts and READMEs; ALGORITHMS.md §1)
PAPER_EPOCHS = {
    "nsd-lenet": 150, "nsd-fmnist-mlp": 150, "nsd-fmnist-lenet": 100, "nsd-cifar10-cnn1": 200,
    "nsd-cifar10-cnn2": 200, "sg-lenet": 200, "sg-vgg": 400, "int-lenet": 200, "int-cifar10-cnn1": 200,
}


def paper_recipe(net: str, dataset: str) -> dict[str, Any]:
    """How the original code trains ``net`` on ``dataset``: CIFAR with batch 200, Adam at
    1e-3 divided by 10 half-way, and the CIFAR input pipeline (random 24x24 crop, flip,
    brightness 63, contrast 0.2-1.8, per-image standardization; the test images centre-
    cropped and standardized); MNIST-like data with batch 200 (128 for SG's LeNet) and a
    constant Adam lr of 1e-4. Epochs: the preset's (200 for a net given in notation)."""
    _, preset = resolve_net(net)
    epochs = PAPER_EPOCHS.get(preset.name if preset else "", 200)
    if dataset in CIFAR_DATA:
        return {"epochs": epochs, "batch_size": 200, "lr": 1e-3}
    batch = 128 if preset is not None and preset.name == "sg-lenet" else 200
    return {"epochs": epochs, "batch_size": batch, "lr": 1e-4}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Precision):
    """What to train and how: the precision (the fields of :class:`Precision`), the net
    (notation such as ``20C5-P2-50C5-P2-500``, or a preset) or instead a model of one's
    own (``model``, ``MODULE:FACTORY``: no precision fields, no paper recipe), the data and
    the schedule. Each field carries its command-line option (:mod:`qsnn.train.options`)."""

    net: str | None = field_option(default=None, help="notation (20C5-P2-50C5-P2-500) or a preset (qsnn nets)")
    model: str | None = field_option(
        default=None, metavar="MODULE:FACTORY",
        help="instead of --net, a model of your own: FACTORY() from MODULE (importable, e.g. qsnn.nn:small_resnet "
        "or a file of the current folder), built with qsnn.nn modules, whose QuantAct(k, B) set its precision (so "
        "no --k, --B, --ternary, --fp32, --encoding-k/B or --recipe paper). It reads the dataset's images at full "
        "size (CIFAR 3x32x32, trained with flips and shifts of up to 4 pixels) as x = pixels / 255, as qsnn "
        "convert --model takes them, and outputs one logit per class",
    )
    dataset: str = field_option(help="mnist, fashion-mnist, cifar10 or cifar100")
    epochs: int = field_option(default=3, type=int, help="default {default}")
    batch_size: int | None = field_option(  # None: 200 for MNIST-like data, 128 for CIFAR
        default=None, type=optional_int, help="default 200 (MNIST-like) or 128 (CIFAR)",
    )
    lr: float = field_option(default=1e-3, type=float, help="Adam learning rate (default {default})")
    lr_decay_epoch: int | None = field_option(  # None: epochs // 2 (at least 1)
        default=None, type=optional_int, help="epoch from which lr is divided by 10 (default: half the epochs)",
    )
    seed: int = field_option(default=0, type=int, help="random seed (default {default})")
    data_dir: str | None = field_option(default=None, help="dataset folder (default: $QSNN_DATA or the cache)")
    train_limit: int | None = field_option(default=None, type=optional_int, help="only the first N training images")
    test_limit: int | None = field_option(default=None, type=optional_int, help="only the first N test images")
    device: str = field_option(default="cpu", help="cpu, cuda or cuda:N (default {default})")
    checkpoint_interval: float = field_option(
        default=300.0, type=float, help="seconds between mid-epoch checkpoints (default 300)",
    )
    recipe: str = field_option(  # "paper": trained as the original code trains (see paper_recipe)
        default="qsnn", choices=RECIPES,
        help="qsnn: a short schedule (the defaults below); paper: as the original code trains (its epochs, "
        "batch, lr and schedule, and for CIFAR its colour augmentation and per-image standardization), "
        "for what is not given",
    )

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise QsnnError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        super().__post_init__()  # reads B and the encoding values, checks k, B and them
        self._check_net_or_model()
        for name in ("epochs", "batch_size", "lr_decay_epoch", "train_limit", "test_limit"):
            value = getattr(self, name)
            minimum = 0 if name == "lr_decay_epoch" else 1
            if value is not None and not integer_in(value, minimum):
                raise QsnnError(f"{name} must be an integer >= {minimum}, got {value!r}")
        check_seed(self.seed)
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 10):
            raise QsnnError(f"lr must be a number above 0 and at most 10 (the papers: 1e-3), got {self.lr!r}")
        if self.batch_size is not None and self.batch_size > MAX_BATCH:
            raise QsnnError(f"batch_size must be at most {MAX_BATCH:,}, got {self.batch_size:,}")
        if not self.checkpoint_interval >= 0:
            raise QsnnError(
                f"checkpoint_interval must be >= 0 seconds, got {self.checkpoint_interval!r}"
            )

    def _check_net_or_model(self) -> None:
        """One of net and model; a model's own QuantActs set its precision."""
        if (self.net is None) == (self.model is None):
            raise QsnnError(
                "net and model are exclusive: give one of them" if self.net is not None else
                "give a net (notation or a preset) or a model of your own (model, MODULE:FACTORY)"
            )
        if self.model is None:
            return
        factory_name(self.model)
        default = Precision()
        changed = [name for name in PRECISION_FIELDS if getattr(self, name) != getattr(default, name)]
        if self.recipe != "qsnn":
            changed.append("recipe")
        if changed:
            raise QsnnError(
                f"{', '.join(changed)} {'does' if len(changed) == 1 else 'do'} not apply to a model of your own "
                f"({self.model}): its QuantAct(k, B) set its precision, and the papers' recipe is for their nets; "
                f"drop {'it' if len(changed) == 1 else 'them'}"
            )

    def spec(self) -> Spec:
        """The network to build: notation resolved, input shape, classes and padding of the
        data; for a model of one's own, its :class:`ModelSpec` (the model made and checked
        against the data's images and classes)."""
        if self.model is not None:
            return ModelSpec.of(self.model, self.dataset)
        notation, _ = resolve_net(self.net)
        info = qdata.dataset_info(self.dataset)
        spec = NetSpec(
            notation=notation,
            input_shape=tuple(info.input_shape),
            num_classes=info.num_classes,
            padding=info.default_padding,
            precision=self.precision(),
            input_stage="standardize" if self.recipe == "paper" and self.dataset in CIFAR_DATA else "pixels",
        )
        spec.plan()  # raises a QsnnError if the net does not fit the input
        return spec

    def check_memory(self, spec: Spec) -> None:
        """Refuse a batch whose activations alone would not fit in this machine's memory."""
        needed = 4 * 4 * spec.activations() * self.resolved_batch_size()  # float32: values, gradients, masks
        total = _physical_memory()
        if total and needed > total // 2:
            name = spec.notation if isinstance(spec, NetSpec) else spec.factory
            raise QsnnError(
                f"a batch of {self.resolved_batch_size():,} images of {name} needs about "
                f"{needed / 2**30:.1f} GB of activations, over half of this machine's {total / 2**30:.1f} GB; "
                "use a smaller --batch-size"
            )

    def resolved_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 200 if qdata.dataset_info(self.dataset).input_shape[0] == 1 else 128

    def resolved_lr_decay_epoch(self) -> int:
        if self.lr_decay_epoch is not None:
            return self.lr_decay_epoch
        return max(1, self.epochs // 2)

    def lr_at(self, epoch: int) -> float:
        """The papers' schedule: lr, then lr / 10 from epoch ``lr_decay_epoch`` (0-based) on."""
        return self.lr if epoch < self.resolved_lr_decay_epoch() else self.lr / 10

    @classmethod
    def paper(cls, net: str, dataset: str, **given: Any) -> TrainConfig:
        """A config with the original code's recipe (:func:`paper_recipe`) for what
        ``given`` leaves out (None values count as left out)."""
        chosen = {key: value for key, value in given.items() if value is not None}
        values = {**paper_recipe(net, dataset), **chosen}
        if "lr_decay_epoch" not in chosen:  # CIFAR: lr / 10 half-way; MNIST-like: never
            values["lr_decay_epoch"] = None if dataset in CIFAR_DATA else NO_DECAY
        return cls(net=net, dataset=dataset, recipe="paper", **values)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from field values (``recipe`` among them), the recipe's schedule
        filling in what they leave out."""
        values = dict(values)
        recipe = values.pop("recipe", "qsnn")
        if recipe == "paper" and values.get("net") is not None and values.get("model") is None:
            return cls.paper(values.pop("net"), values.pop("dataset"), **values)
        return cls(recipe=recipe, **values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, the net and the dataset first (config.json); for a model of one's
        own the model first and neither the net nor the fields that do not apply to it."""
        values = dataclasses.asdict(self)
        model = values.pop("model")
        if model is None:
            return net_first(values)
        for name in ("net", *PRECISION_FIELDS, "recipe"):
            del values[name]
        return {"model": model, "dataset": values.pop("dataset"), **values}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


# ----------------------------------------------------------------------------- run plumbing


MAX_BATCH = 65536


def _physical_memory() -> int:
    """This machine's memory in bytes (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


FIELDS_ADDED = {"recipe": "qsnn"}  # config fields a run written before them had, in effect


def default_out_dir(config: TrainConfig) -> Path:
    """runs/<dataset>-<net>-<precision>, e.g. runs/mnist-20C5-P2-50C5-P2-500-k1-Bnone; for
    a model of one's own runs/<dataset>-<module>-<factory>."""
    if config.model is not None:
        return Path("runs") / f"{config.dataset}-{config.model.replace(':', '-')}"
    return Path("runs") / f"{config.dataset}-{config.net}-{config.label()}"


def net_first(values: dict[str, Any]) -> dict[str, Any]:
    """A config's or a run's fields with the net and the dataset first, as a reader looks for them."""
    return {"net": values.pop("net"), "dataset": values.pop("dataset"), **values}
